//! `cargo xtask fuzz --cases N [--seed S]`: the differential engine of
//! `tests/tests/differential.rs` (generated frames through the real eBPF
//! programs and through the reference classifier) for as many cases as
//! asked, built in release. Prints cases, cases/s, skipped frames and
//! mismatches; mismatches are saved to `tests/corpus/regressions/`, which
//! `cargo test` replays. Then the connection-tracking differential
//! (`tests/src/ctdiff.rs`) for cases / 2 conversations. Needs root (it loads eBPF programs).

use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::{setup, util};

pub fn fuzz(cases: u64, seed: Option<&str>) -> Result<ExitCode> {
    setup::setup()?;
    util::run(&mut util::cargo([
        "build",
        "--release",
        "-p",
        "envfence-tests",
        "--bin",
        "envfence-fuzz",
    ]))?;
    let mut cmd = Command::new(util::target_dir().join("release").join("envfence-fuzz"));
    cmd.arg("--cases").arg(cases.to_string());
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed);
    }
    let status = util::status(&mut cmd)?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => {
            eprintln!("xtask fuzz: envfence-fuzz exited {code} (1: mismatches found)");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        None => {
            eprintln!("xtask fuzz: envfence-fuzz was killed ({status})");
            ExitCode::FAILURE
        }
    })
}
