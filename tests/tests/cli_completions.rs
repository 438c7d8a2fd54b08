//! `envfence completions`, `man` and every on-call command's `--help`, as
//! the real binary.

use anyhow::{ensure, Result};
use envfence_tests::cli::*;

/// Completions and man pages come from the clap definitions; every
/// on-call command's --help has examples.
#[test]
fn completions_man_and_help() -> Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let c = cli(&["completions", shell])?.ok()?;
        for word in ["explain", "flows", "from-env", "socket"] {
            assert!(c.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let man = cli(&["man"])?.ok()?;
    assert!(
        man.stdout.contains(".TH envfence"),
        "{}",
        &man.stdout[..man.stdout.len().min(300)]
    );
    assert!(man.stdout.contains("explain"));
    let tmp = tempfile::tempdir()?;
    cli(&["man", "--dir", &tmp.path().display().to_string()])?.ok()?;
    for page in [
        "envfence.1",
        "envfence-explain.1",
        "envfence-flows.1",
        "envfence-status.1",
        "envfence-top.1",
    ] {
        ensure!(tmp.path().join(page).is_file(), "no {page}");
    }
    for cmd in [
        vec!["status"],
        vec!["flows"],
        vec!["explain"],
        vec!["top"],
        vec!["policy", "check"],
        vec!["policy", "diff"],
        vec!["completions"],
        vec!["man"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let h = cli(&args)?.ok()?;
        assert!(
            h.stdout.contains("Examples:"),
            "{cmd:?} --help has no examples:\n{}",
            h.stdout
        );
    }
    Ok(())
}
