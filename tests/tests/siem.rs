//! Shipping the audit log to a real rsyslog: an event storm while the
//! receiver is stopped and started again in the middle; afterwards the
//! receiver's file verifies (`envfence audit verify --siem`) and holds
//! every seq of the node's chain exactly once after dedup by seq, each line
//! identical to the node's record; the agent kept enforcing and printing
//! events while the receiver was down. Over plain TCP and over TLS (a test
//! CA, a client certificate). Bad settings are named and cost nothing.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use envfence::audit::{decode_line, head_path, Head};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions};
use envfence_tests::cli::cli;
use envfence_tests::fixture::example_lab;
use envfence_tests::lab::{wait_until, Family, Lab};
use envfence_tests::rsyslog::{Rsyslog, TestCa};

const CONNECTED: &str = "envfence_audit_ship_connected";
const BACKLOG: &str = "envfence_audit_ship_backlog_records";

/// Sends one datagram test1 -> prod1 to each of `n` ports from `base`: `n`
/// new flows, so `n` events.
fn storm(lab: &Lab, base: u16, n: u16) -> Result<()> {
    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    lab.in_ns("test1", move || -> Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for p in base..base + n {
            s.send_to(b"storm", SocketAddr::new(prod1, p))?;
        }
        Ok(())
    })?
}

/// Waits until every event the kernel emitted (since `since`: the
/// counter is pinned, it outlives an agent) was printed.
fn printed_all(agent: &Agent, since: u64, at_least: u64) -> Result<u64> {
    let mut n = 0;
    let ok = wait_until(Duration::from_secs(20), || {
        let e = agent.events_emitted().map_or(u64::MAX, |e| e - since);
        n = agent.events().len() as u64;
        e == n && n >= at_least
    });
    ensure!(ok, "printed {n} events, want {at_least} and all emitted");
    Ok(n)
}

fn audit_args(base: &Path, rsyslog: &str) -> Vec<String> {
    [
        "--audit-file",
        &base.display().to_string(),
        "--syslog-addr",
        rsyslog,
        "--syslog-checkpoint",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `envfence audit verify ARGS`: (success, stdout + stderr).
fn verify(args: &[&str]) -> Result<(bool, String)> {
    let run = cli(&[&["audit", "verify"][..], args].concat())?;
    Ok((run.code == 0, run.stdout + &run.stderr))
}

/// The node's records by seq.
fn node_records(base: &Path) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for f in envfence::audit::discover(base)? {
        for line in std::fs::read_to_string(&f)?.lines() {
            let d = decode_line(line.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(d.seq, line.to_owned());
        }
    }
    Ok(out)
}

/// The whole scenario; `tls` selects the transport.
fn storm_with_a_receiver_restart(tls: bool) -> Result<()> {
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let (_g, lab) = example_lab()?;
    let ca = if tls {
        Some(TestCa::make(&dir.path().join("ca"), "siem")?)
    } else {
        None
    };
    let mut rs = Rsyslog::start(&lab, &dir.path().join("rsyslog"), ca.as_ref())?;
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs)?;
    let base = logs.join("audit.jsonl");
    let mut extra = audit_args(&base, &rs.addr());
    extra.extend(["--audit-max-bytes", "65536", "--audit-keep", "1000"].map(String::from));
    if let Some(ca) = &ca {
        for (k, v) in [
            ("--syslog-ca", &ca.ca),
            ("--syslog-cert", &ca.client_cert),
            ("--syslog-key", &ca.client_key),
        ] {
            extra.push(k.into());
            extra.push(v.display().to_string());
        }
        extra.insert(0, "--syslog-tls".into());
    }
    let agent = Agent::start_with(
        &lab,
        &bin,
        &AgentOptions::default().report_every(100).args(extra),
    )?;
    let connected = agent.wait_metric(CONNECTED, &[], Duration::from_secs(10), |v| v == 1.0);
    ensure!(
        connected,
        "never connected: {}",
        agent.process().stderr_tail(20)
    );

    // Storm, receiver up.
    const N: u16 = 1500;
    storm(&lab, 20000, N)?;
    let before_down = printed_all(&agent, 0, u64::from(N))?;
    // The receiver stops in the middle of the storm.
    storm(&lab, 21500, N)?;
    rs.stop()?;
    let stopped_at = Instant::now();
    storm(&lab, 23000, N)?;
    // Enforcement and events go on while it is down.
    let during = printed_all(&agent, 0, before_down + 2 * u64::from(N))?;
    let drops = agent.packets("test", "production", "drop")?;
    ensure!(drops >= f64::from(3 * N), "drops {drops}");
    let behind = wait_until(Duration::from_secs(10), || {
        agent.metric(CONNECTED, &[]).is_ok_and(|v| v == 0.0)
            && agent.metric(BACKLOG, &[]).is_ok_and(|v| v > 0.0)
    });
    ensure!(behind, "no backlog while the receiver is down");
    println!(
        "receiver down for {:.1?}: {during} events printed, backlog {}",
        stopped_at.elapsed(),
        agent.metric(BACKLOG, &[])?
    );
    rs.restart()?;
    storm(&lab, 24500, N)?;
    let total_events = printed_all(&agent, 0, during + u64::from(N))?;
    // Caught up: nothing left to send.
    let caught_up = agent.wait_metric(BACKLOG, &[], Duration::from_secs(20), |v| v == 0.0);
    ensure!(
        caught_up,
        "backlog never drained: {}",
        agent.process().stderr_tail(20)
    );
    let resent = agent.metric("envfence_audit_ship_resent_records_total", &[])?;
    agent.stop_ok(Duration::from_secs(15))?;

    // Everything up to the last record (the stop record) reached rsyslog.
    let head = Head::read(&head_path(&base))?.context("head file")?;
    ensure!(
        rs.wait_for_seq(head.seq, Duration::from_secs(20)),
        "rsyslog never got seq {}; its stderr:\n{}",
        head.seq,
        rs.stderr()
    );
    rs.stop()?;
    let node = node_records(&base)?;
    let bytes: usize = node.values().map(|l| l.len() + 1).sum();
    println!(
        "audit log: {} records, {bytes} bytes, {:.0} bytes per record",
        node.len(),
        bytes as f64 / node.len() as f64
    );
    let lines = rs.lines();
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    for l in &lines {
        let d = decode_line(l.as_bytes()).map_err(|e| anyhow::anyhow!("{e}: {l}"))?;
        ensure!(
            node.get(&d.seq) == Some(l),
            "seq {}: the receiver's line differs from the node's",
            d.seq
        );
        *got.entry(d.seq).or_default() += 1;
    }
    let missing: Vec<u64> = (0..=head.seq).filter(|s| !got.contains_key(s)).collect();
    let dups: usize = got.values().map(|n| n - 1).sum();
    println!(
        "{} records in the chain, {} lines at the receiver, {dups} duplicates (resent {resent}), {} lost, {total_events} events",
        head.seq + 1,
        lines.len(),
        missing.len()
    );
    ensure!(missing.is_empty(), "lost at the receiver: {missing:?}");
    ensure!(got.len() as u64 == head.seq + 1);
    // The SIEM copy verifies on its own, up to the node's head.
    let out = rs.out.display().to_string();
    let head_file = head_path(&base).display().to_string();
    let (ok, text) = verify(&["--siem", &out, "--head", &head_file])?;
    println!("{text}");
    ensure!(ok, "the SIEM copy does not verify:\n{text}");
    ensure!(
        text.contains(&format!("{dups} duplicate(s) skipped")),
        "{text}"
    );
    // An edited line in the SIEM copy is found.
    let mut edited = lines.clone();
    let k = edited.len() / 2;
    edited[k] = edited[k].replacen("\"dport\":", "\"dport\":1", 1);
    let copy = dir.path().join("edited.log");
    std::fs::write(&copy, edited.join("\n") + "\n")?;
    let (ok, text) = verify(&["--siem", &copy.display().to_string()])?;
    ensure!(
        !ok && text.contains("BROKEN"),
        "edited copy passed:\n{text}"
    );
    drop(lab);
    Ok(())
}

#[test]
fn a_storm_reaches_rsyslog_over_tcp_across_a_receiver_restart_with_nothing_lost() -> Result<()> {
    storm_with_a_receiver_restart(false)
}

#[test]
fn a_storm_reaches_rsyslog_over_tls_across_a_receiver_restart_with_nothing_lost() -> Result<()> {
    storm_with_a_receiver_restart(true)
}

/// Bad shipping settings: each is named, and the agent enforces and
/// prints events anyway.
#[test]
fn bad_receiver_settings_are_named_and_cost_nothing() -> Result<()> {
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let (_g, lab) = example_lab()?;
    let good = TestCa::make(&dir.path().join("good"), "good")?;
    let other = TestCa::make(&dir.path().join("other"), "other")?;
    let mut rs = Rsyslog::start(&lab, &dir.path().join("rsyslog"), Some(&good))?;
    let missing = dir.path().join("no-such-ca.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n")?;
    let tls = |ca: &PathBuf| -> Vec<String> {
        vec![
            "--syslog-tls".into(),
            "--syslog-ca".into(),
            ca.display().to_string(),
            "--syslog-cert".into(),
            good.client_cert.display().to_string(),
            "--syslog-key".into(),
            good.client_key.display().to_string(),
        ]
    };
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "unreachable receiver",
            vec![],
            "--syslog-addr 127.0.0.1:1".into(),
        ),
        (
            "missing CA file",
            tls(&missing),
            format!("--syslog-ca {}", missing.display()),
        ),
        (
            "CA file not PEM",
            tls(&not_pem),
            format!("--syslog-ca {}", not_pem.display()),
        ),
        ("another CA", tls(&other.ca), "--syslog-ca".into()),
    ];
    for (i, (case, tls_args, want)) in cases.into_iter().enumerate() {
        let logs = dir.path().join(format!("log{i}"));
        std::fs::create_dir(&logs)?;
        let addr = if case == "unreachable receiver" {
            "127.0.0.1:1".to_owned()
        } else {
            rs.addr()
        };
        let mut extra = audit_args(&logs.join("audit.jsonl"), &addr);
        extra.extend(tls_args);
        let opts = AgentOptions::default().report_every(100).args(extra);
        let agent = Agent::start_with(&lab, &bin, &opts)?;
        let since = agent.events_emitted()?;
        storm(&lab, 20000 + 100 * i as u16, 50)?;
        printed_all(&agent, since, 50)?;
        ensure!(
            agent
                .process()
                .wait_for_stderr(&want, Duration::from_secs(10)),
            "{case}: no error naming {want:?}; stderr:\n{}",
            agent.process().stderr_tail(20)
        );
        let err = agent
            .process()
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains(&want))
            .unwrap_or_default();
        println!("{case}: {err}");
        agent.stop(Duration::from_secs(10))?;
    }
    // Nothing reached the receiver from a refused connection.
    ensure!(rs.lines().is_empty(), "{:?}", rs.lines());
    rs.stop()?;
    // A missing key file: the agent refuses to start, naming the setting
    // (before it loads anything: a pinned policy would stay enforced).
    let mut cmd = Command::new(&bin);
    cmd.args([
        "agent",
        "--example-policy",
        "--no-pin",
        "--no-api",
        "--audit-file",
    ])
    .arg(dir.path().join("k.jsonl"))
    .arg("--audit-key")
    .arg(dir.path().join("no-such-key"));
    let p = lab.spawn_in_ns(envfence_tests::lab::NODE, cmd)?;
    let status = p
        .wait_timeout(Duration::from_secs(10))?
        .context("still running")?;
    let err = p.stderr_tail(5);
    ensure!(!status.success() && err.contains("--audit-key"), "{err}");
    println!("missing key: {}", err.trim());
    drop(lab);
    Ok(())
}
