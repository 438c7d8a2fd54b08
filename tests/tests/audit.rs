//! The audit log of a real agent: every event it prints is in the
//! hash-chained audit file, the file (rotated several times) verifies with
//! `envfence audit verify`, a restarted agent continues the chain, and
//! editing, deleting, reordering or truncating records in a copy is
//! reported at the right file, line and seq.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions};
use envfence_tests::lab::{require_root, wait_until, Family, Lab};
use serde_json::Value;

const AUDIT_MAX_BYTES: u64 = 8192;

fn audit_args(base: &Path) -> Vec<String> {
    vec![
        "--audit-file".into(),
        base.display().to_string(),
        "--audit-max-bytes".into(),
        AUDIT_MAX_BYTES.to_string(),
        "--audit-keep".into(),
        "1000".into(),
    ]
}

/// Sends one forbidden datagram from each of `flows` fresh sockets (one
/// flow, so one event, each) test1 -> prod1, and staging1 -> prod1 (audit).
fn make_events(lab: &Lab, flows: usize) -> Result<()> {
    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    for i in 0..flows {
        let from = if i % 4 == 3 { "staging1" } else { "test1" };
        lab.udp_send(from, prod1, 9000 + (i % 7) as u16, b"audit me", 1)?;
    }
    Ok(())
}

fn emitted(agent: &Agent) -> Result<u64> {
    Ok(agent.metric("envfence_datapath_total", &[("kind", "events_emitted")])? as u64)
}

/// Waits until the agent printed as many events as the kernel emitted since
/// `since`, and that number stopped moving; returns it.
fn settle(agent: &Agent, since: u64) -> Result<u64> {
    let mut last = u64::MAX;
    let ok = wait_until(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(300));
        let emitted = emitted(agent).map_or(u64::MAX, |e| e - since);
        let printed = agent.events().len() as u64;
        let stable = emitted == printed && emitted == last;
        last = emitted;
        stable
    });
    ensure!(ok, "events printed never caught up with events emitted");
    Ok(last)
}

/// `envfence audit verify ARGS`: (success, stdout + stderr).
fn verify(bin: &Path, args: &[&Path]) -> Result<(bool, String)> {
    let out = Command::new(bin)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .context("running envfence audit verify")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The records of an audit set, oldest first: (file, line number, JSON).
fn records(files: &[PathBuf]) -> Result<Vec<(PathBuf, usize, Value)>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for (i, line) in text.lines().enumerate() {
            out.push((f.clone(), i + 1, serde_json::from_str(line)?));
        }
    }
    Ok(out)
}

/// The audit set of `base`, oldest first.
fn audit_files(base: &Path) -> Result<Vec<PathBuf>> {
    Ok(envfence::audit::discover(base)?)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(std::fs::write(path, text)?)
}

/// A copy of the audit set (and head) of `base` in a fresh directory;
/// returns the copy's base path.
fn copy_set(base: &Path, into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    let dir = base.parent().context("base has a directory")?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        std::fs::copy(entry.path(), into.join(entry.file_name()))?;
    }
    Ok(into.join(base.file_name().context("base has a name")?))
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .expect("a record with a seq")
}

/// Runs verify on a tampered copy and checks it fails at `file:line` with
/// `seq` and a message containing `what`.
fn expect_break(
    bin: &Path,
    base: &Path,
    case: &str,
    file: &Path,
    line: usize,
    seq: Option<u64>,
    what: &str,
) -> Result<()> {
    let (ok, out) = verify(bin, &[base])?;
    println!("--- {case}:\n{out}");
    ensure!(!ok, "{case}: verify passed:\n{out}");
    let mut want = format!("BROKEN: {}:{line}: ", file.display());
    if let Some(seq) = seq {
        want.push_str(&format!("seq {seq}: "));
    }
    ensure!(out.contains(&want), "{case}: expected {want:?} in:\n{out}");
    ensure!(out.contains(what), "{case}: expected {what:?} in:\n{out}");
    Ok(())
}

#[test]
fn a_real_audit_log_verifies_and_every_tampering_is_found() -> Result<()> {
    require_root()?;
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs)?;
    let base = logs.join("audit.jsonl");
    let lab = Lab::example()?;
    let opts = AgentOptions {
        report_interval_ms: 100,
        extra_args: audit_args(&base),
        ..AgentOptions::default()
    };

    // A first agent, then a second one continuing the same chain.
    let mut printed: Vec<Value> = Vec::new();
    for (round, flows) in [(1, 60), (2, 40)] {
        let agent = Agent::start_with(&lab, &bin, &opts)?;
        let since = emitted(&agent)?;
        make_events(&lab, flows)?;
        let emitted = settle(&agent, since)?;
        ensure!(
            emitted >= flows as u64,
            "round {round}: {emitted} events for {flows} flows"
        );
        let status = agent.stop(Duration::from_secs(10))?;
        ensure!(status.success(), "agent exit {status}");
        printed.extend(agent.events().into_iter().map(|e| e.raw));
    }

    // Every printed event is in the audit log, in order, unchanged.
    let files = audit_files(&base)?;
    ensure!(
        files.len() >= 3,
        "expected rotations at {AUDIT_MAX_BYTES} bytes: {files:?}"
    );
    let all = records(&files)?;
    let mut audited = Vec::new();
    for (file, line, mut v) in all.clone() {
        let obj = v.as_object_mut().context("object")?;
        for f in ["seq", "prev", "hash"] {
            ensure!(obj.remove(f).is_some(), "{}:{line}: no {f}", file.display());
        }
        if obj.contains_key("audit") {
            continue; // file_start
        }
        audited.push(v);
    }
    assert_eq!(
        audited.len(),
        printed.len(),
        "audit records vs stdout events"
    );
    assert!(
        audited == printed,
        "audit records differ from stdout events"
    );
    for (i, (_, _, v)) in all.iter().enumerate() {
        assert_eq!(v["seq"].as_u64(), Some(i as u64), "seq runs from 0, +1");
    }
    for f in &files {
        let len = std::fs::metadata(f)?.len();
        ensure!(len <= AUDIT_MAX_BYTES, "{} is {len} bytes", f.display());
    }

    // Untouched: OK with the record count.
    let (ok, out) = verify(&bin, &[&base])?;
    println!("--- untouched:\n{out}");
    ensure!(ok, "untouched log does not verify:\n{out}");
    ensure!(
        out.contains(&format!(
            "OK: {} records ({} events)",
            all.len(),
            printed.len()
        )),
        "{out}"
    );
    ensure!(out.contains("names seq"), "head not checked:\n{out}");
    // The same files given one by one, in any order.
    let mut shuffled: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    shuffled.reverse();
    let (ok, out) = verify(&bin, &shuffled)?;
    ensure!(ok, "files given in reverse order:\n{out}");

    let newest = files.last().context("files")?.clone();
    let middle = files[files.len() / 2].clone();
    let name = |p: &Path| p.file_name().map(|n| n.to_owned()).context("file name");
    let mut n = 0;
    let mut case_dir = || {
        n += 1;
        dir.path().join(format!("case{n}"))
    };

    // 1. A field edited in a rotated file.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&middle)?);
        let mut lines = read_lines(&target)?;
        let k = lines.len() / 2;
        let seq = seq_of(&lines[k]);
        ensure!(lines[k].contains("\"packets\":"), "{}", lines[k]);
        lines[k] = lines[k].replacen("\"packets\":", "\"packets\":1", 1);
        write_lines(&target, &lines)?;
        expect_break(
            &bin,
            &copy,
            "edited field",
            &target,
            k + 1,
            Some(seq),
            "edited",
        )?;
    }
    // 2. A record deleted.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&middle)?);
        let mut lines = read_lines(&target)?;
        let k = lines.len() / 2;
        let seq = seq_of(&lines[k]);
        lines.remove(k);
        write_lines(&target, &lines)?;
        expect_break(
            &bin,
            &copy,
            "deleted record",
            &target,
            k + 1,
            Some(seq + 1),
            &format!("record seq {seq} is missing"),
        )?;
    }
    // 3. Two records swapped.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&newest)?);
        let mut lines = read_lines(&target)?;
        ensure!(lines.len() >= 4, "newest file too short");
        let k = 1;
        let seq = seq_of(&lines[k]);
        lines.swap(k, k + 1);
        write_lines(&target, &lines)?;
        expect_break(
            &bin,
            &copy,
            "swapped records",
            &target,
            k + 1,
            Some(seq + 1),
            "reordered",
        )?;
    }
    // 4. Truncated in the middle of the last record.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&newest)?);
        let bytes = std::fs::read(&target)?;
        let lines = read_lines(&target)?;
        std::fs::write(&target, &bytes[..bytes.len() - 40])?;
        expect_break(
            &bin,
            &copy,
            "truncated mid-record",
            &target,
            lines.len(),
            Some(seq_of(&lines[lines.len() - 1])),
            "cut short",
        )?;
    }
    // 5. Whole records cut from the end of the newest file.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&newest)?);
        let mut lines = read_lines(&target)?;
        ensure!(lines.len() >= 4, "newest file too short");
        let keep = lines.len() - 2;
        let last_kept = seq_of(&lines[keep - 1]);
        lines.truncate(keep);
        write_lines(&target, &lines)?;
        expect_break(
            &bin,
            &copy,
            "records cut from the end",
            &target,
            keep + 1,
            None,
            &format!("the chain ends at seq {last_kept}"),
        )?;
    }
    // 6. A rotated file deleted from the middle of the set.
    {
        let copy = copy_set(&base, &case_dir())?;
        let victim = copy.with_file_name(name(&middle)?);
        let idx = files.iter().position(|f| *f == middle).context("middle")?;
        let next = copy.with_file_name(name(&files[idx + 1])?);
        let next_first = seq_of(&read_lines(&next)?[0]);
        std::fs::remove_file(&victim)?;
        expect_break(
            &bin,
            &copy,
            "rotated file deleted",
            &next,
            1,
            Some(next_first),
            "missing",
        )?;
    }
    // 7. The first records of the oldest file deleted.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&files[0])?);
        let mut lines = read_lines(&target)?;
        let seq = seq_of(&lines[2]);
        lines.drain(..2);
        write_lines(&target, &lines)?;
        expect_break(
            &bin,
            &copy,
            "beginning deleted",
            &target,
            1,
            Some(seq),
            "file_start",
        )?;
    }
    // And the original is still intact.
    let (ok, out) = verify(&bin, &[&base])?;
    ensure!(ok, "{out}");
    drop(lab);
    Ok(())
}
