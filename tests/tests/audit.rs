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
use envfence_tests::cli::cli;
use envfence_tests::fixture::{env_cidr, example_lab, host_addr};
use envfence_tests::lab::{wait_until, Family, Lab};
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

/// Waits until the agent printed as many events as the kernel emitted since
/// `since`, and that number stopped moving; returns it.
fn settle(agent: &Agent, since: u64) -> Result<u64> {
    let mut last = u64::MAX;
    let ok = wait_until(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(300));
        let emitted = agent.events_emitted().map_or(u64::MAX, |e| e - since);
        let printed = agent.events().len() as u64;
        let stable = emitted == printed && emitted == last;
        last = emitted;
        stable
    });
    ensure!(ok, "events printed never caught up with events emitted");
    Ok(last)
}

/// `envfence audit verify FILES.. ARGS..`: (success, stdout + stderr).
fn verify(files: &[&Path], args: &[&str]) -> Result<(bool, String)> {
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut all = vec!["audit", "verify"];
    all.extend(files.iter().map(String::as_str));
    all.extend(args);
    let run = cli(&all)?;
    Ok((run.code == 0, run.stdout + &run.stderr))
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
    base: &Path,
    case: &str,
    file: &Path,
    line: usize,
    seq: Option<u64>,
    what: &str,
) -> Result<()> {
    let (ok, out) = verify(&[base], &[])?;
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
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs)?;
    let base = logs.join("audit.jsonl");
    let (_g, lab) = example_lab()?;
    let opts = AgentOptions::default()
        .report_every(100)
        .args(audit_args(&base));

    // A first agent, then a second one continuing the same chain.
    let mut printed: Vec<Value> = Vec::new();
    for (round, flows) in [(1, 60), (2, 40)] {
        let agent = Agent::start_with(&lab, &bin, &opts)?;
        let since = agent.events_emitted()?;
        make_events(&lab, flows)?;
        let emitted = settle(&agent, since)?;
        ensure!(
            emitted >= flows as u64,
            "round {round}: {emitted} events for {flows} flows"
        );
        agent.stop_ok(Duration::from_secs(10))?;
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
    let (ok, out) = verify(&[&base], &[])?;
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
    let (ok, out) = verify(&shuffled, &[])?;
    ensure!(ok, "files given in reverse order:\n{out}");

    let newest = files.last().context("files")?.clone();
    let middle = files[files.len() / 2].clone();
    let name = |p: &Path| p.file_name().map(|n| n.to_owned()).context("file name");
    let mut n = 0;
    let mut case_dir = || {
        n += 1;
        dir.path().join(format!("case{n}"))
    };

    // Cases that edit the lines of one file of a copy: `edit` returns
    // where verify must report the break (line, seq) and what it says.
    type Edit = fn(&mut Vec<String>) -> Result<(usize, Option<u64>, String)>;
    let line_cases: [(&str, &Path, Edit); 5] = [
        // 1. A field edited in a rotated file.
        ("edited field", &middle, |lines| {
            let k = lines.len() / 2;
            let seq = seq_of(&lines[k]);
            ensure!(lines[k].contains("\"packets\":"), "{}", lines[k]);
            lines[k] = lines[k].replacen("\"packets\":", "\"packets\":1", 1);
            Ok((k + 1, Some(seq), "edited".into()))
        }),
        // 2. A record deleted.
        ("deleted record", &middle, |lines| {
            let k = lines.len() / 2;
            let seq = seq_of(&lines[k]);
            lines.remove(k);
            Ok((k + 1, Some(seq + 1), format!("record seq {seq} is missing")))
        }),
        // 3. Two records swapped (in a rotated file: the newest may hold
        // only a record or two, depending on where the last rotation fell).
        ("swapped records", &middle, |lines| {
            ensure!(lines.len() >= 4, "middle file too short");
            let seq = seq_of(&lines[1]);
            lines.swap(1, 2);
            Ok((2, Some(seq + 1), "reordered".into()))
        }),
        // 5. Whole records cut from the end of the newest file (it may
        // hold only a few records: cut up to two, keep at least one).
        ("records cut from the end", &newest, |lines| {
            ensure!(lines.len() >= 2, "newest file too short");
            let keep = lines.len() - (lines.len() - 1).min(2);
            let last_kept = seq_of(&lines[keep - 1]);
            lines.truncate(keep);
            Ok((keep + 1, None, format!("the chain ends at seq {last_kept}")))
        }),
        // 7. The first records of the oldest file deleted.
        ("beginning deleted", &files[0], |lines| {
            let seq = seq_of(&lines[2]);
            lines.drain(..2);
            Ok((1, Some(seq), "file_start".into()))
        }),
    ];
    for (case, file, edit) in line_cases {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(file)?);
        let mut lines = read_lines(&target)?;
        let (line, seq, what) = edit(&mut lines)?;
        write_lines(&target, &lines)?;
        expect_break(&copy, case, &target, line, seq, &what)?;
    }
    // 4. Truncated in the middle of the last record.
    {
        let copy = copy_set(&base, &case_dir())?;
        let target = copy.with_file_name(name(&newest)?);
        let bytes = std::fs::read(&target)?;
        let lines = read_lines(&target)?;
        std::fs::write(&target, &bytes[..bytes.len() - 40])?;
        expect_break(
            &copy,
            "truncated mid-record",
            &target,
            lines.len(),
            Some(seq_of(&lines[lines.len() - 1])),
            "cut short",
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
            &copy,
            "rotated file deleted",
            &next,
            1,
            Some(next_first),
            "missing",
        )?;
    }
    // And the original is still intact.
    let (ok, out) = verify(&[&base], &[])?;
    ensure!(ok, "{out}");
    drop(lab);
    Ok(())
}

/// The stdout change lines of an agent.
fn change_lines(agent: &Agent) -> Vec<Value> {
    agent
        .process()
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["audit"] == "change")
        .collect()
}

/// Replaces the policy file atomically (as a ConfigMap update does).
fn put(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    Ok(std::fs::rename(&tmp, path)?)
}

#[test]
fn every_policy_change_is_one_keyed_change_record_with_its_summary() -> Result<()> {
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs)?;
    let base = logs.join("audit.jsonl");
    let policy = dir.path().join("policy.yaml");
    let revision = dir.path().join("revision");
    let key = dir.path().join("audit.key");
    std::fs::write(&key, "a test key of thirty-two bytes!!\n")?;
    let example = envfence::policy::EXAMPLE_POLICY;
    std::fs::write(&policy, example)?;
    std::fs::write(&revision, "rev-1\n")?;
    let (_g, lab) = example_lab()?;
    let opts = AgentOptions::config(&policy).args([
        "--audit-file",
        &base.display().to_string(),
        "--audit-key",
        &key.display().to_string(),
        "--policy-revision-file",
        &revision.display().to_string(),
    ]);
    let agent = Agent::start_with(&lab, &bin, &opts)?;
    let wait_changes = |n: usize| {
        let ok = wait_until(Duration::from_secs(10), || change_lines(&agent).len() >= n);
        std::thread::sleep(Duration::from_millis(300));
        ok
    };
    ensure!(wait_changes(2), "no start and load records");
    // 1. A good change: a CIDR moves to staging, a rule's ports change.
    std::fs::write(&revision, "rev-2\n")?;
    // A /24 of production moves to staging.
    let staging = format!(
        "staging:    [{:?}, {:?}",
        env_cidr("staging", Family::V4),
        env_cidr("staging", Family::V6)
    );
    let moved = format!("{}/24", host_addr("production", Family::V4, 9, 0));
    let good = example
        .replace(&format!("{staging}]"), &format!("{staging}, {moved:?}]"))
        .replace("\"53/udp\", \"53/tcp\"", "\"53/udp\"");
    ensure!(
        good != example,
        "the example policy changed: update this test"
    );
    put(&policy, &good)?;
    ensure!(wait_changes(3), "no record of the good reload");
    // 2. A bad file: refused.
    put(&policy, "mode: [\n")?;
    ensure!(wait_changes(4), "no record of the refused file");
    // 3. A mode change.
    std::fs::write(&revision, "rev-3\n")?;
    put(&policy, &good.replace("mode: enforce", "mode: audit"))?;
    ensure!(wait_changes(5), "no record of the mode change");
    let changes_metric = agent.metric("envfence_policy_changes_total", &[])?;
    agent.stop_ok(Duration::from_secs(10))?;
    let printed = change_lines(&agent);

    // Exactly one record per change, in the chain and on stdout.
    let base_arg = base.display().to_string();
    let shown = cli(&["audit", "show", "--changes", "-o", "json", &base_arg])?.ok()?;
    let shown: Vec<Value> = serde_json::from_str(&shown.stdout)?;
    let kinds: Vec<&str> = shown
        .iter()
        .map(|c| c["change"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        ["start", "load", "reload", "refused", "reload", "stop"],
        "{shown:#?}"
    );
    assert_eq!(printed.len(), shown.len(), "stdout lines vs records");
    for (p, s) in printed.iter().zip(&shown) {
        let mut s = s.clone();
        s.as_object_mut().context("object")?.remove("seq");
        assert_eq!(p, &s, "stdout and audit record differ");
    }
    let (load, good_r, refused, mode_r) = (&shown[1], &shown[2], &shown[3], &shown[4]);
    let node = load["node"].as_str().unwrap_or("");
    ensure!(!node.is_empty(), "{load}");
    assert_eq!(load["revision"], "rev-1");
    assert_eq!(load["source"], policy.display().to_string());
    assert!(
        load["old_sha256"].is_null(),
        "first load on a fresh node: {load}"
    );
    assert!(load["summary"]["text"]
        .as_str()
        .unwrap_or("")
        .starts_with("first policy"));
    // The good reload: the diff `envfence policy diff` makes.
    assert_eq!(good_r["revision"], "rev-2");
    assert_eq!(good_r["old_sha256"], load["new_sha256"]);
    assert_ne!(good_r["new_sha256"], load["new_sha256"]);
    assert_eq!(
        good_r["generation"].as_u64(),
        load["generation"].as_u64().map(|g| g + 1)
    );
    let s = &good_r["summary"];
    assert_eq!(s["cidrs_changed"], 1, "{s}");
    assert_eq!(s["rules_changed"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(s["mode"].is_null(), "{s}");
    let text = s["text"].as_str().unwrap_or("");
    assert!(
        text.contains("(1 change environment)") && text.contains("rules ~"),
        "{text}"
    );
    // The same diff as `envfence policy diff`.
    std::fs::write(dir.path().join("old.yaml"), example)?;
    std::fs::write(dir.path().join("new.yaml"), &good)?;
    let (old, new) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    let (old, new) = (old.display().to_string(), new.display().to_string());
    let diff: Value = cli(&["policy", "diff", "-o", "json", &old, &new])?.json()?;
    assert_eq!(diff["cidrs"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        diff["verdicts"].as_array().map(Vec::len),
        s["verdicts_changed"].as_u64().map(|n| n as usize)
    );
    // The refused file: the error names the place, the policy stays.
    assert_eq!(refused["generation"], good_r["generation"]);
    assert_eq!(refused["old_sha256"], good_r["new_sha256"]);
    let err = refused["error"].as_str().unwrap_or("");
    assert!(err.contains(&policy.display().to_string()), "{err}");
    // The mode change.
    assert_eq!(mode_r["revision"], "rev-3");
    assert_eq!(mode_r["mode"], "audit");
    assert_eq!(mode_r["summary"]["mode"]["old"], "enforce");
    assert_eq!(mode_r["summary"]["mode"]["new"], "audit");
    assert!(mode_r["summary"]["text"]
        .as_str()
        .unwrap_or("")
        .starts_with("mode enforce -> audit"));
    // Content changes: the first load, the two reloads.
    assert_eq!(changes_metric, 3.0);

    // The keyed chain verifies with its key only; rewritten without the
    // key (consistently, unkeyed), it fails with the key.
    let key_arg = ["--key", &key.display().to_string()];
    let (ok, text) = verify(&[&base], &key_arg)?;
    ensure!(ok && text.contains("keyed"), "{text}");
    ensure!(text.contains("6 change record(s)"), "{text}");
    let (ok, text) = verify(&[&base], &[])?;
    ensure!(!ok && text.contains("--key FILE"), "{text}");
    let copy = copy_set(&base, &dir.path().join("forged"))?;
    envfence_tests::audit_rewrite::rewrite_chain(
        &audit_files(&copy)?,
        &envfence::audit::head_path(&copy),
        None,
    )?;
    let (ok, text) = verify(&[&copy], &key_arg)?;
    println!("--- rewritten without the key:\n{text}");
    ensure!(
        !ok && text.contains(":1: seq 0: the record was edited"),
        "{text}"
    );
    // An auditor reads and verifies without root (uid 65534, no groups):
    // nothing is written anywhere.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    for args in [
        vec![
            "audit".to_owned(),
            "verify".into(),
            base.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
        vec![
            "audit".to_owned(),
            "show".into(),
            "--changes".into(),
            base.display().to_string(),
        ],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(&args)
            .output()
            .context("running setpriv (util-linux)")?;
        ensure!(
            out.status.success(),
            "as uid 65534: envfence {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in std::fs::read_dir(&logs)? {
        let mode = f?.metadata()?.permissions().mode() & 0o777;
        ensure!(mode == 0o644, "audit files are mode {mode:o}");
    }
    // The human table lists them too.
    let table = cli(&["audit", "show", "--changes", &base_arg])?.stdout;
    println!("{table}");
    ensure!(
        table.contains("6 change record(s)") && table.contains("rev-3"),
        "{table}"
    );
    drop(lab);
    Ok(())
}
