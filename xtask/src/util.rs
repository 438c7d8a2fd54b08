//! Running commands, timing steps, finding the workspace.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Whether we run under CI (`CI=true`): no colour, no prompts.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// `cargo` with the workspace as working directory and CI's colour setting.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(args);
    if ci() {
        cmd.env("CARGO_TERM_COLOR", "never");
    }
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo build --release` of the envfence-tests binary `bin`.
pub fn build_tests_bin(bin: &str) -> Result<()> {
    run(&mut cargo([
        "build",
        "--release",
        "-p",
        "envfence-tests",
        "--bin",
        bin,
    ]))
}

/// Runs `cmd` with inherited stdio, echoing it first.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", describe(cmd));
    cmd.stdin(Stdio::null())
        .status()
        .with_context(|| format!("running `{}`", describe(cmd)))
}

/// Runs `cmd`, failing unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running `{}`", describe(cmd)))?;
    if !out.status.success() {
        return Err(anyhow!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` runs and exits 0 (quietly).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The outcome of one named step.
pub struct Step {
    pub name: String,
    pub elapsed: Duration,
    pub error: Option<String>,
}

/// Runs named steps, printing a header per step and a summary at the end.
#[derive(Default)]
pub struct Steps {
    pub done: Vec<Step>,
}

impl Steps {
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        eprintln!("\n==> {name}");
        let start = Instant::now();
        let result = f();
        let elapsed = start.elapsed();
        let ok = result.is_ok();
        match &result {
            Ok(()) => eprintln!("==> {name}: ok ({})", secs(elapsed)),
            Err(e) => eprintln!("==> {name}: FAILED ({}): {e:#}", secs(elapsed)),
        }
        self.done.push(Step {
            name: name.to_string(),
            elapsed,
            error: result.err().map(|e| format!("{e:#}")),
        });
        ok
    }

    pub fn failed(&self) -> usize {
        self.done.iter().filter(|s| s.error.is_some()).count()
    }

    pub fn summary(&self, title: &str) {
        eprintln!("\n{title} summary:");
        for s in &self.done {
            let verdict = if s.error.is_some() { "FAIL" } else { "ok" };
            eprintln!("  {verdict:<4} {:<14} {:>8}", s.name, secs(s.elapsed));
            if let Some(e) = &s.error {
                let first = e.lines().next().unwrap_or_default();
                eprintln!("       {first}");
            }
        }
        let total: Duration = self.done.iter().map(|s| s.elapsed).sum();
        eprintln!(
            "  {} step(s), {} failed, {}",
            self.done.len(),
            self.failed(),
            secs(total)
        );
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
