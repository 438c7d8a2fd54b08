//! `cargo xtask bench --baseline REV`: the eBPF object of another revision,
//! built from `git archive REV` the way `agent/build.rs` (aya-build) builds
//! this tree's, and cached under `target/bench-baseline/<commit>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{output, root, run, target_dir};

/// A revision's eBPF object, ready for `envfence-bench --baseline-object`.
pub struct BaselineObject {
    pub object: PathBuf,
    /// The short commit, as the tables name it.
    pub name: String,
}

/// Resolves `rev`, exports its tree and builds its eBPF object (once).
pub fn build(rev: &str) -> Result<BaselineObject> {
    let commit = output(
        Command::new("git")
            .current_dir(root())
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{rev}^{{commit}}")),
    )
    .with_context(|| format!("--baseline {rev:?}: not a commit of this repository"))?;
    let commit = commit.trim().to_string();
    let name = commit.get(..10).unwrap_or(&commit).to_string();
    let dir = target_dir().join("bench-baseline").join(&commit);
    let object = dir
        .join("target")
        .join("bpfel-unknown-none")
        .join("release")
        .join("envfence-ebpf");
    if object.is_file() {
        eprintln!("xtask bench: baseline {name}: cached {}", object.display());
        return Ok(BaselineObject { object, name });
    }
    let src = dir.join("src");
    export(&commit, &src)?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(src.join("agent-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "envfence-ebpf",
        ])
        .args(["--bins", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(dir.join("target"))
        // What aya-build passes for a BPF build on x86_64.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    // `cargo xtask` runs under the stable toolchain; let nightly choose.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd).with_context(|| format!("building the eBPF object of baseline {name}"))?;
    if !object.is_file() {
        bail!(
            "baseline {name}: the build left no object at {}",
            object.display()
        );
    }
    Ok(BaselineObject { object, name })
}

/// `git archive COMMIT | tar -x -C DIR`, into a fresh `dir`.
fn export(commit: &str, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut archive = Command::new("git")
        .current_dir(root())
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let git = archive.wait().context("waiting for git archive")?;
    if !git.success() || !tar.success() {
        bail!(
            "exporting {commit} into {} failed (git archive {git}, tar {tar})",
            dir.display()
        );
    }
    Ok(())
}
