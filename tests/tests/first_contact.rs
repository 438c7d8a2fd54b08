//! What a new user meets first, each with the message it must get: the
//! agent and the commands that read its pins (`status`, `explain`) run where
//! /sys/fs/bpf is not a bpffs (under `ip netns exec`,
//! which remounts /sys), `policy check` on a file with a huge offending
//! value, and `policy check`'s warnings and notes on a valid policy.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use envfence_tests::agent::agent_binary;
use envfence_tests::cli::{cli, run_cmd};
use envfence_tests::lab::Lab;
use envfence_tests::netns::{output_with_timeout, require_root};

/// Under `ip netns exec` the agent finds sysfs at /sys/fs/bpf: it says so,
/// and how to run it instead, before it touches any interface.
#[test]
fn under_ip_netns_exec_the_agent_names_the_missing_bpffs() -> Result<()> {
    require_root()?;
    let bin = agent_binary()?;
    let lab = Lab::new(&[])?;
    let state = tempfile::tempdir()?;
    let out = output_with_timeout(
        Command::new("ip")
            .args(["netns", "exec", lab.node_ns()])
            .arg(&bin)
            .args([
                "agent",
                "--example-policy",
                "--no-api",
                "--metrics-addr",
                "127.0.0.1:0",
                "--state-dir",
                &state.path().display().to_string(),
            ]),
        Duration::from_secs(30),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the agent started: {err}");
    for want in [
        "pin root /sys/fs/bpf/envfence: /sys/fs/bpf is on sysfs, not on a bpffs",
        "nsenter --net=/run/netns/NAME",
        "mount -t bpf bpf /sys/fs/bpf",
        "--pin-root DIR on a bpffs",
    ] {
        ensure!(err.contains(want), "no {want:?} in:\n{err}");
    }
    ensure!(!err.contains("No such file or directory"), "{err}");

    // The commands that read the pins say the same, not "nothing is pinned".
    for args in [
        &["status", "-o", "json"][..],
        &["explain", "10.30.1.2", "10.10.1.2", "--port", "5432"][..],
    ] {
        let out = run_cmd(
            Command::new("ip")
                .args(["netns", "exec", lab.node_ns()])
                .arg(&bin)
                .args(args),
        )?;
        let said = format!("{}{}", out.stdout, out.stderr);
        for want in [
            "/sys/fs/bpf is on sysfs, not on a bpffs",
            "nsenter --net=/run/netns/NAME",
        ] {
            ensure!(said.contains(want), "{args:?}: no {want:?} in:\n{said}");
        }
        ensure!(!said.contains("nothing is pinned"), "{args:?}: {said}");
    }
    Ok(())
}

/// A 200 KB offending value is named by its line and quoted by a short
/// prefix and its size, in text and in JSON.
#[test]
fn policy_check_quotes_a_huge_value_by_a_short_prefix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("huge.yaml");
    let huge = "9".repeat(200_000);
    std::fs::write(
        &file,
        format!("environments:\n  production: [10.1.0.0/16]\n  test: [{huge}]\n"),
    )?;
    let path = file.display().to_string();
    let run = cli(&["policy", "check", &path])?;
    let err = run.stderr;
    ensure!(run.code != 0, "accepted: {err}");
    ensure!(
        err.len() < 1000,
        "{} bytes of error:\n{}",
        err.len(),
        &err[..1000]
    );
    ensure!(err.contains(&format!("{path}:3:")), "no place in:\n{err}");
    ensure!(err.contains("… (200000 bytes)"), "no size in:\n{err}");
    let json = cli(&["policy", "check", "-o", "json", &path])?.stdout;
    ensure!(json.len() < 1000, "{} bytes of JSON", json.len());
    ensure!(json.contains("(200000 bytes)"), "{json}");
    Ok(())
}

/// A rule naming an environment without CIDRs is a warning (with the
/// rule's line); one environment's prefix inside another's is a note;
/// neither fails the check.
#[test]
fn policy_check_warns_of_empty_environments_and_notes_carve_outs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "environments:\n  production: [10.0.0.0/8]\n  test: [10.9.0.0/16]\n  dev: []\n\
         rules:\n  - name: dev-to-prod\n    from: [dev]\n    to: [production]\n    verdict: drop\n",
    )?;
    let path = file.display().to_string();
    let stdout = cli(&["policy", "check", &path])?.ok()?.stdout;
    let want_warning = format!(
        "{path}:6: warning: rule \"dev-to-prod\" names environment \"dev\", which has no CIDRs: the rule never matches it"
    );
    let want_note = format!(
        "{path}: note: 10.9.0.0/16 (test) is carved out of 10.0.0.0/8 (production): its addresses are test (the longest prefix wins)"
    );
    for want in [&want_warning, &want_note] {
        ensure!(stdout.contains(want.as_str()), "no {want:?} in:\n{stdout}");
    }
    // With -o json, standard output is the (empty) list of errors and the
    // same lines are on standard error.
    let out = cli(&["policy", "check", "-o", "json", &path])?.ok()?;
    ensure!(out.json()? == serde_json::json!([]), "{}", out.stdout);
    for want in [&want_warning, &want_note] {
        ensure!(
            out.stderr.contains(want.as_str()),
            "no {want:?} in:\n{}",
            out.stderr
        );
    }
    Ok(())
}
