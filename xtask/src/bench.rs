//! `cargo xtask bench`: setup, release builds of the agent, the bench and
//! the storm test (and `--baseline REV`'s eBPF object), then
//! `target/release/envfence-bench` as root.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, root, run, status, target_dir};

/// What `cargo xtask bench` was asked for.
pub struct BenchArgs {
    pub quick: bool,
    pub only: Vec<String>,
    /// Write docs/benchmarks.md even for a --quick or --only run.
    pub write: bool,
    /// A revision whose eBPF object the TestRun part measures beside this
    /// tree's, in the same rounds (table a6).
    pub baseline: Option<String>,
    /// The shape of the TestRun part's synthetic policies (default mixed).
    pub shape: Option<String>,
}

pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    crate::setup::setup()?;
    let baseline = args
        .baseline
        .as_deref()
        .map(crate::baseline::build)
        .transpose()?;
    run(&mut cargo(["build", "--release", "-p", "envfence"]))?;
    crate::util::build_tests_bin("envfence-bench")?;
    let release = target_dir().join("release");
    let mut cmd = bench_command(&release.join("envfence-bench"))?;
    cmd.arg("--agent").arg(release.join("envfence"));
    let wants_storm = args.only.is_empty() || args.only.iter().any(|p| p == "storm");
    if wants_storm {
        cmd.arg("--storm-test").arg(storm_test()?);
    }
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(b) = &baseline {
        cmd.arg("--baseline-object").arg(&b.object);
        cmd.args(["--baseline-name", &b.name]);
    }
    for part in &args.only {
        cmd.args(["--only", part]);
    }
    if let Some(shape) = &args.shape {
        cmd.args(["--shape", shape]);
    }
    let published = args.shape.as_deref().is_none_or(|s| s == "mixed");
    if args.write || (!args.quick && args.only.is_empty() && published) {
        cmd.arg("--out")
            .arg(root().join("docs").join("benchmarks.md"));
    } else {
        eprintln!("xtask bench: a --quick, --only or --shape run does not rewrite docs/benchmarks.md (--write does)");
    }
    let st = status(&mut cmd)?;
    Ok(match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!("xtask: envfence-bench was killed ({st})");
            ExitCode::FAILURE
        }
    })
}

/// `envfence-bench` as root: directly when we are root, else through sudo.
fn bench_command(bin: &std::path::Path) -> Result<Command> {
    if is_root() {
        Ok(Command::new(bin))
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(bin);
        Ok(cmd)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Builds the `storm` integration test in release and returns its
/// executable (from cargo's JSON messages).
fn storm_test() -> Result<PathBuf> {
    let out = cargo([
        "test",
        "--release",
        "-p",
        "envfence-tests",
        "--test",
        "storm",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(std::process::Stdio::inherit())
    .output()
    .context("building the storm test")?;
    if !out.status.success() {
        bail!("building the storm test failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"name\":\"storm\"")
        {
            continue;
        }
        if let Some(exe) = json_string(line, "executable") {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report the storm test's executable")
}

/// The string value of `"key":"…"` in one JSON line (no escapes expected
/// in a path).
fn json_string(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')?;
    Some(line[start..start + end].replace("\\\\", "\\"))
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn finds_the_executable() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"storm","kind":["test"]},"executable":"/w/target/release/deps/storm-abc","fresh":true}"#;
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some("/w/target/release/deps/storm-abc")
        );
        assert_eq!(json_string(r#"{"executable":null}"#, "executable"), None);
    }
}
