//! `envfence policy check` and `policy diff` as the real binary on policy
//! files (no agent, no lab).

use anyhow::{anyhow, ensure, Result};
use envfence_tests::cli::*;
use envfence_tests::fixture::{env_cidr, pod_addr};
use envfence_tests::lab::Family::V4;
use ipnet::IpNet;
use serde_json::{json, Value};

/// `policy check` gives every error of every file with its place; -o json
/// for CI annotations.
#[test]
fn policy_check_reports_every_error_with_its_position() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let b1 = file(
        &tmp,
        "bad1.yaml",
        "mode: enforcing\ndefault: allow\nenvironments:\n  prod: [\"10.10.0.0/16\"]\n  test: [\"10.30.0.0/33\"]\nrules:\n  - name: t2p\n    from: [test]\n    to: [prodd]\n    verdict: dropp\n",
    )?;
    let b2 = file(
        &tmp,
        "bad2.yaml",
        "environments:\n  a: [\"10.0.0.0/8\"]\n  b: [\"10.0.0.0/8\"]\nrules:\n  - name: x\n    from: [a]\n    to: [b]\n    verdict: drop\n    ports: [\"99999/tcp\"]\n",
    )?;
    let g = file(&tmp, "good.yaml", envfence::policy::EXAMPLE_POLICY)?;

    let r = cli(&["policy", "check", "-o", "json", &b1, &g, &b2])?.code(1)?;
    let list = r.json()?;
    let errors = list.as_array().cloned().unwrap_or_default();
    // file:line:column field = value
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_owned();
    let got: Vec<String> = errors
        .iter()
        .map(|e| {
            let (file, field, value) = (text(e, "file"), text(e, "field"), text(e, "value"));
            format!("{file}:{}:{} {field} = {value}", e["line"], e["column"])
        })
        .collect();
    let want = [
        format!("{b1}:1:7 mode = enforcing"),
        format!("{b1}:5:10 environments.test[0] = 10.30.0.0/33"),
        format!("{b1}:9:10 rules[0].to[0] = prodd"),
        format!("{b1}:10:14 rules[0].verdict = dropp"),
        // One CIDR in two environments.
        format!("{b2}:3:7 environments.b[0] = 10.0.0.0/8"),
        format!("{b2}:9:13 rules[0].ports[0] = 99999/tcp"),
    ];
    assert_eq!(got, want, "{list:#}");
    for e in &errors {
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{e}");
    }
    // Text: every error on stderr as file:line:column.
    let t = cli(&["policy", "check", &b1, &g, &b2])?.code(1)?;
    assert!(t.stdout.contains(&format!("{g}: ok")), "{}", t.stdout);
    for e in &errors {
        let place = format!("{}:{}:{}: ", text(e, "file"), e["line"], e["column"]);
        assert!(t.stderr.contains(&place), "{place} not in:\n{}", t.stderr);
    }
    // All good: an empty list, exit 0.
    let ok = cli(&["policy", "check", "-o", "json", &g])?.ok()?.json()?;
    assert_eq!(ok, json!([]));
    Ok(())
}

/// `policy diff` lists every change of what is enforced; exit 0 for none,
/// 1 for changes, 2 for an invalid file.
#[test]
fn policy_diff_lists_the_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let example = envfence::policy::EXAMPLE_POLICY;
    let o = file(&tmp, "old.yaml", example)?;
    // Same meaning, other form.
    let sm = file(&tmp, "same.yaml", &format!("# a comment\n{example}"))?;
    // A /24 of production moves to staging; qa (in no environment before)
    // is new, with a rule; DNS over TCP loses its port rule.
    let (prod, staging) = (env_cidr("production", V4), env_cidr("staging", V4));
    let moved = IpNet::new(pod_addr("production", V4, 9), 24)?
        .trunc()
        .to_string();
    let qa = "10.50.0.0/16";
    let changed = edit(
        example,
        r#"ports: ["53/udp", "53/tcp"]"#,
        r#"ports: ["53/udp"]"#,
    )?;
    let changed = edit(
        &changed,
        &format!("\"{staging}\""),
        &format!("\"{staging}\", \"{moved}\""),
    )?;
    let changed = edit(
        &changed,
        "\n  test:",
        &format!("\n  qa: [\"{qa}\"]\n  test:"),
    )?;
    let changed = edit(
        &changed,
        "  - name: ops-to-prod",
        "  - name: qa-to-prod\n    from: [qa]\n    to: [production]\n    verdict: drop\n  - name: ops-to-prod",
    )?;
    let n = file(&tmp, "new.yaml", &changed)?;
    let logged = file(
        &tmp,
        "logged.yaml",
        &edit(example, "default: allow", "default: log")?,
    )?;
    let tmp_s = tmp.path().display().to_string();

    let d = cli(&["policy", "diff", &o, &n])?.code(1)?;
    golden("policy_diff.txt", &d.stdout.replace(&tmp_s, "<tmp>"))?;
    let j = cli(&["policy", "diff", &o, &n, "-o", "json"])?
        .code(1)?
        .json()?;
    assert_eq!(j["default"], Value::Null);
    assert_eq!(j["mode"], Value::Null);
    assert_eq!(j["environments_added"], json!(["qa"]));
    let cidrs = j["cidrs"].as_array().cloned().unwrap_or_default();
    assert!(cidrs.iter().any(|c| c["cidr"] == moved.as_str()
        && c["old"] == "production"
        && c["new"] == "staging"
        && c["old_via"] == prod.as_str()));
    assert!(cidrs
        .iter()
        .any(|c| c["cidr"] == qa && c["old"] == "world" && c["new"] == "qa"));
    let find = |from, to, ports| verdict_change(&j, from, to, ports);
    let verdict = |v: &str, rule: &str| json!({"verdict": v, "rule": rule});
    let dns = find("test", "production", "53/tcp")?;
    assert_eq!(dns["old"], verdict("allow", "test-dns-in-prod"));
    assert_eq!(dns["new"], verdict("drop", "test-to-prod"));
    assert!(
        find("test", "production", "53/udp").is_err(),
        "53/udp does not change"
    );
    let qa = find("qa", "production", "*")?;
    assert_eq!(qa["old"], Value::Null);
    assert_eq!(qa["new"]["verdict"], "drop");
    assert_eq!(j["verdicts"].as_array().map_or(0, Vec::len), 2, "{j:#}");
    // default allow -> log: every pair no rule names changes.
    let j = cli(&["policy", "diff", &o, &logged, "-o", "json"])?
        .code(1)?
        .json()?;
    assert_eq!(j["default"], json!({"old": "allow", "new": "log"}));
    // 6 environments (world included): 36 pairs, 6 of them named by a rule.
    assert_eq!(j["verdicts"].as_array().map_or(0, Vec::len), 30, "{j:#}");
    let dflt = verdict_change(&j, "staging", "test", "*")?;
    assert_eq!(dflt["old"], verdict("allow", "default"));
    assert_eq!(dflt["new"], verdict("log", "default"));

    let none = cli(&["policy", "diff", &o, &sm])?.ok()?;
    assert!(
        none.stdout.contains("no change in what is enforced"),
        "{}",
        none.stdout
    );
    let broken = file(&tmp, "broken.yaml", "mode: sometimes\n")?;
    let b = cli(&["policy", "diff", &o, &broken])?.code(2)?;
    assert!(b.stderr.contains("broken.yaml:1:"), "{}", b.stderr);
    let missing = cli(&["policy", "diff", &o, "/nonexistent/p.yaml"])?.code(2)?;
    assert!(
        missing.stderr.contains("/nonexistent/p.yaml"),
        "{}",
        missing.stderr
    );
    Ok(())
}

/// Writes `text` to `name` in `dir`; returns its path.
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> Result<String> {
    let path = dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// `text` with its one `from` replaced by `to`.
fn edit(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(
        text.matches(from).count() == 1,
        "{from:?} is not once in the policy"
    );
    Ok(text.replacen(from, to, 1))
}

/// The change of `policy diff -o json` output `j` for (from, to, ports).
fn verdict_change(j: &Value, from: &str, to: &str, ports: &str) -> Result<Value> {
    let v = j["verdicts"].as_array().into_iter().flatten();
    v.into_iter()
        .find(|x| x["from"] == from && x["to"] == to && x["ports"] == ports)
        .cloned()
        .ok_or_else(|| anyhow!("no change of {from} -> {to} {ports}: {j:#}"))
}
