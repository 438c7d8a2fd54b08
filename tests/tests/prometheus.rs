//! The alerting rules (deploy/prometheus) and the dashboard (deploy/grafana):
//! checked statically (promtool check + unit tests, the metrics every
//! expression uses), and end to end against a real Prometheus (Debian's
//! package) that scrapes a real agent in the lab.
//!
//! The end-to-end test runs the Prometheus server inside the lab's node
//! namespace, on that namespace's loopback, where the agent's metrics
//! endpoint is; its API is queried from inside the namespace too. Nothing
//! touches the host's interfaces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions, METRICS_ADDR};
use envfence_tests::cli::cli_in;
use envfence_tests::fixture::{example_lab, workspace};
use envfence_tests::lab::{wait_until, Family, Lab, NODE};
use envfence_tests::prom::{promtool, Server as Prometheus};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Every metric the agent exports (agent/src/metrics/). The end-to-end
/// test checks that each one is really on /metrics.
const EXPORTED: &str = "envfence_packets_total envfence_bytes_total envfence_rule_packets_total \
    envfence_rule_bytes_total envfence_datapath_total envfence_attached_interfaces \
    envfence_interface_attach_failures_total envfence_policy_info envfence_policy_generation \
    envfence_policy_reloads_total envfence_policy_last_reload_success_timestamp_seconds \
    envfence_map_entries envfence_map_capacity envfence_build_info envfence_policy_changes_total";
/// Metrics Prometheus itself makes for every target.
const PROMETHEUS_MADE: &str = "up";

/// The alerts deploy/prometheus/envfence-rules.yml must have.
const ALERTS: &str = "EnvfenceForbiddenFlowDropped EnvfenceForbiddenFlowPassedInAudit \
    EnvfenceAgentDown EnvfenceAgentAbsent EnvfenceEventsLost EnvfenceConntrackFull \
    EnvfencePolicyReloadFailing EnvfenceNoInterfaceAttached EnvfenceAuditModeUnexpected \
    EnvfencePolicyDrift EnvfencePolicyChanged EnvfencePolicyHashDisagreement";

/// The metrics a query may use: the exported ones and Prometheus' own.
fn allowed_metrics() -> BTreeSet<&'static str> {
    EXPORTED
        .split_whitespace()
        .chain(PROMETHEUS_MADE.split_whitespace())
        .collect()
}

fn rules_file() -> PathBuf {
    workspace().join("deploy/prometheus/envfence-rules.yml")
}

fn rule_tests() -> Result<Vec<PathBuf>> {
    let dir = workspace().join("deploy/prometheus/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no promtool tests in {}", dir.display());
    Ok(files)
}

fn load_yaml(path: &Path) -> Result<Yaml> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs =
        YamlLoader::load_from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(docs.len() == 1, "{}: one YAML document", path.display());
    Ok(docs.remove(0))
}

/// (alert name, rule) of every alerting rule.
fn alert_rules() -> Result<Vec<(String, Yaml)>> {
    let doc = load_yaml(&rules_file())?;
    let mut out = Vec::new();
    for group in doc["groups"].as_vec().context("no groups")? {
        for rule in group["rules"].as_vec().context("group without rules")? {
            let name = rule["alert"]
                .as_str()
                .context("a rule without `alert` (recording rules are not expected)")?;
            out.push((name.to_string(), rule.clone()));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Metric names in PromQL.

/// Words before a label list (`by (…)`), and PromQL keywords and
/// aggregation operators (`sum by (x) (…)`: no parenthesis right after).
const GROUPING: &str = "by without on ignoring group_left group_right";
const KEYWORDS: &str = "offset bool and or unless atan2 inf nan sum min max avg group \
                        stddev stdvar count count_values bottomk topk quantile limitk limit_ratio";

/// The metric names a PromQL expression (or a Grafana `label_values(…)`
/// query) selects. Strings, label matchers, ranges, Grafana variables,
/// function names, keywords and grouping label lists are not metric names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        // label_values(selector, label): only the selector names metrics.
        let selector = inner.rsplit_once(',').map_or(inner, |(sel, _)| sel);
        return metric_names(selector);
    }
    // Blank out strings, {…} and […].
    let mut clean = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                clean.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            '$' => {
                // A Grafana variable: $name or ${name}.
                while chars
                    .peek()
                    .is_some_and(|d| d.is_alphanumeric() || "_{}:".contains(*d))
                {
                    chars.next();
                }
                clean.push(' ');
            }
            _ => clean.push(c),
        }
    }
    let bytes: Vec<char> = clean.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() || (c == '.' && bytes.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (5m, 1e3, 0.5).
            while i < bytes.len() && (bytes[i].is_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let j = next_non_space(i);
            let paren = bytes.get(j) == Some(&'(');
            if GROUPING.split_whitespace().any(|g| g == word) {
                if paren {
                    // Skip the label list.
                    while i < bytes.len() && bytes[i] != ')' {
                        i += 1;
                    }
                }
            } else if paren
                || KEYWORDS
                    .split_whitespace()
                    .any(|k| k == word.to_ascii_lowercase())
            {
                // A function or an operator keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"sum by (src_env, dst_env) (increase(envfence_packets_total{verdict="drop"}[5m])) > 0
               or sum by (job) (envfence_packets_total{verdict="drop"} unless envfence_packets_total offset 5m)"#,
            &["envfence_packets_total"],
        ),
        (
            r#"topk(10, sum without(instance) (rate(envfence_bytes_total{job=~"$job", x="a{b}"}[$__rate_interval]))) / on(job) group_left(mode) envfence_policy_info"#,
            &["envfence_bytes_total", "envfence_policy_info"],
        ),
        (r#"count(up{job=~"$job"} == 0) or vector(0)"#, &["up"]),
        (r#"absent(up{job=~".*envfence.*"})"#, &["up"]),
        (
            r#"label_values(envfence_build_info{job=~"$job"}, instance)"#,
            &["envfence_build_info"],
        ),
        (
            "node_cpu_seconds_total * 1e3 + something_else",
            &["node_cpu_seconds_total", "something_else"],
        ),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

// ---------------------------------------------------------------------------
// Static checks.

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let rules = rules_file();
    let out = promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()])?;
    println!("{out}");
    ensure!(
        out.contains(&format!(
            "SUCCESS: {} rules found",
            ALERTS.split_whitespace().count()
        )),
        "{out}"
    );
    ensure!(
        !out.to_ascii_lowercase().contains("warning"),
        "promtool warns:\n{out}"
    );
    let tests = rule_tests()?;
    let mut args: Vec<&std::ffi::OsStr> = vec!["test".as_ref(), "rules".as_ref()];
    args.extend(tests.iter().map(|p| p.as_os_str()));
    let out = promtool(&args)?;
    println!("{out}");
    ensure!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

#[test]
fn every_alert_is_labelled_annotated_and_unit_tested() -> Result<()> {
    let rules = alert_rules()?;
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ALERTS.split_whitespace().collect::<BTreeSet<_>>());
    let allowed = allowed_metrics();
    for (name, rule) in &rules {
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["info", "warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or("");
        let description = rule["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            !summary.is_empty() && !description.is_empty(),
            "{name}: summary and description"
        );
        let expr = rule["expr"].as_str().context("expr")?;
        if expr.contains("envfence_packets_total") {
            for label in ["src_env", "dst_env"] {
                assert!(
                    expr.contains("by (job, instance, src_env, dst_env)")
                        && summary.contains(&format!("$labels.{label}"))
                        && description.contains(&format!("$labels.{label}")),
                    "{name}: keeps and names {label}"
                );
            }
        }
        for metric in metric_names(expr) {
            assert!(
                allowed.contains(metric.as_str()),
                "{name}: {metric} is not a metric the agent exports"
            );
        }
    }
    // Each alert: a promtool case where it fires and one where it does not.
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for file in rule_tests()? {
        let doc = load_yaml(&file)?;
        for test in doc["tests"].as_vec().context("tests")? {
            for case in test["alert_rule_test"].as_vec().into_iter().flatten() {
                let alert = case["alertname"].as_str().context("alertname")?.to_string();
                if case["exp_alerts"].as_vec().is_some_and(|v| !v.is_empty()) {
                    fires.insert(alert);
                } else {
                    silent.insert(alert);
                }
            }
        }
    }
    for alert in ALERTS.split_whitespace() {
        assert!(
            fires.contains(alert),
            "no promtool case where {alert} fires"
        );
        assert!(
            silent.contains(alert),
            "no promtool case where {alert} stays silent"
        );
    }
    Ok(())
}

/// deploy/grafana's dashboard.
fn dashboard() -> Result<Value> {
    let path = workspace().join("deploy/grafana/envfence-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("dashboard JSON")
}

/// Every `expr` of the dashboard's panels and every query of its variables.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_parses_and_uses_only_exported_metrics() -> Result<()> {
    let dash = dashboard()?;
    ensure!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = dash["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    for p in panels {
        ensure!(
            ids.insert(p["id"].as_u64().context("panel id")?),
            "duplicate panel id"
        );
        if p["type"] != "row" {
            ensure!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {} has no query",
                p["title"]
            );
        }
    }
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let allowed = allowed_metrics();
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        ensure!(!names.is_empty(), "query names no metric: {q}");
        for name in names {
            ensure!(
                allowed.contains(name.as_str()),
                "dashboard query uses {name}, which the agent does not export: {q}"
            );
            used.insert(name);
        }
    }
    println!(
        "{} queries over {} panels, metrics: {used:?}",
        queries.len(),
        panels.len()
    );
    // What the dashboard is for: verdicts by pair, lost events, health.
    let needed =
        "envfence_packets_total envfence_rule_packets_total envfence_policy_reloads_total \
                  envfence_datapath_total envfence_attached_interfaces envfence_policy_info up";
    for needed in needed.split_whitespace() {
        ensure!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    ensure!(
        queries.iter().any(
            |q| q.contains("src_env, dst_env, verdict") && q.contains("envfence_packets_total")
        ),
        "no panel of verdicts by environment pair"
    );
    ensure!(
        queries
            .iter()
            .any(|q| q.contains("topk") && q.contains("envfence_rule_packets_total")),
        "no panel of top rules"
    );
    ensure!(
        queries.iter().any(|q| q.contains("events_lost")),
        "no panel of lost events"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// End to end with a real Prometheus.

/// Port of the Prometheus server on the node namespace's loopback.
const PROM_ADDR: &str = "127.0.0.1:9090";
/// What the test copy of the rules uses for every `for:` (the real ones wait
/// minutes).
const TEST_FOR: &str = "1s";

fn prometheus_config(rules: &Path, scrape_agent: bool) -> String {
    let scrape = if scrape_agent {
        format!(
            "scrape_configs:\n  - job_name: envfence\n    static_configs:\n      - targets: ['{METRICS_ADDR}']\n"
        )
    } else {
        "scrape_configs: []\n".to_string()
    };
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n  - {}\n{scrape}",
        rules.display()
    )
}

/// The deploy rules with every `for:` set to [`TEST_FOR`].
fn test_copy_of_rules() -> Result<String> {
    let text = std::fs::read_to_string(rules_file())?;
    let mut out = String::new();
    let mut changed = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("for: ") {
            ensure!(!rest.trim().is_empty(), "empty for: {line}");
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}for: {TEST_FOR}\n"));
            changed += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(changed >= 2, "expected `for:` in the down and absent rules");
    Ok(out)
}

/// A Prometheus in the lab's node namespace scraping the agent there
/// every second with the test copy of the rules (written to `dir`, as
/// its data), once it has scraped the agent; and the rules file. A target
/// removed from the configuration gets no staleness marker: its last `up`
/// sample would stay visible for the lookback (5 min by default) and
/// absent() would wait that long, so the lookback is 5 s.
fn scraping<'a>(lab: &'a Lab, dir: &Path) -> Result<(Prometheus<'a>, PathBuf)> {
    let rules = dir.join("envfence-rules.yml");
    std::fs::write(&rules, test_copy_of_rules()?)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&rules, true))?;
    let data = dir.join("data");
    let lookback = ["--query.lookback-delta=5s"];
    let prom = Prometheus::start(lab, NODE, PROM_ADDR, &config, &data, &lookback)?;
    let scraped = wait_until(Duration::from_secs(20), || {
        prom.scalar(r#"up{job="envfence"}"#).is_ok_and(|v| v == 1.0)
    });
    ensure!(scraped, "prometheus never scraped the agent");
    Ok((prom, rules))
}

#[test]
fn real_prometheus_counts_every_dropped_packet_and_alerts() -> Result<()> {
    const N: usize = 37;
    let dir = tempfile::tempdir()?;
    let (_g, lab) = example_lab()?;
    let opts = AgentOptions::default().report_every(200);
    let agent = Agent::start_with(&lab, &agent_binary()?, &opts)?;
    let (prom, rules) = scraping(&lab, dir.path())?;
    promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()])?;

    let series = r#"envfence_packets_total{job="envfence",src_env="test",dst_env="production",verdict="drop"}"#;
    let before = prom.scalar(series)?;
    ensure!(
        before == 0.0,
        "test -> production drops before anything was sent: {before}"
    );
    // Exactly N packets test1 -> prod1: UDP gets no answer, and the node
    // drops them at the ingress of veth-test1.
    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    lab.udp_send("test1", prod1, 9000, b"forbidden", N)?;
    let start = Instant::now();
    let counted = wait_until(Duration::from_secs(20), || {
        prom.scalar(series).is_ok_and(|v| v >= N as f64)
    });
    ensure!(
        counted,
        "prometheus has {} for {series}, want {N}",
        prom.scalar(series)?
    );
    println!(
        "prometheus has the {N} dropped packets after {:.1?}",
        start.elapsed()
    );
    // Several more scrapes: still exactly N (nothing else, nothing late).
    std::thread::sleep(Duration::from_secs(3));
    let got = prom.scalar(series)?;
    assert_eq!(
        got, N as f64,
        "Prometheus' dropped test -> production series"
    );
    assert_eq!(
        agent.packets("test", "production", "drop")?,
        N as f64,
        "the agent's own /metrics"
    );

    // The exported list is the truth: every metric in it is on /metrics
    // (the traffic counters once there was traffic).
    let text = agent.metrics()?;
    if std::env::var_os("EFL_DUMP_METRICS").is_some() {
        println!("{text}");
    }
    for m in EXPORTED.split_whitespace() {
        ensure!(
            text.lines().any(|l| l.starts_with(&format!("# TYPE {m} "))),
            "{m} is not on /metrics:\n{text}"
        );
    }

    // Every dashboard query is valid PromQL for this Prometheus, and the
    // main panels have data.
    let mut queries = Vec::new();
    dashboard_queries(&dashboard()?, &mut queries);
    let mut with_data = 0;
    for q in queries.iter().filter(|q| !q.starts_with("label_values(")) {
        let q = q
            .replace("$job", ".*envfence.*")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "10s")
            .replace("$__range", "1m");
        let result = prom
            .query(&q)
            .with_context(|| format!("dashboard query {q}"))?;
        if !result.is_empty() {
            with_data += 1;
        }
    }
    println!(
        "{with_data} of {} dashboard queries have data",
        queries.len()
    );
    ensure!(
        with_data * 2 > queries.len(),
        "most dashboard panels are empty"
    );

    let alert = prom.wait_alert(
        "EnvfenceForbiddenFlowDropped",
        &[("src_env", "test"), ("dst_env", "production")],
        Duration::from_secs(20),
    )?;
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["instance"], METRICS_ADDR);
    let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
    assert!(summary.contains("test -> production"), "{summary}");
    // Negative controls while the agent runs.
    let quiet = "EnvfenceAgentDown EnvfenceAgentAbsent EnvfenceNoInterfaceAttached \
                 EnvfenceAuditModeUnexpected EnvfenceEventsLost EnvfenceConntrackFull";
    for quiet in quiet.split_whitespace() {
        let firing = prom.alerts(quiet, "firing", &[])?;
        assert!(firing.is_empty(), "{quiet} fires: {firing:?}");
    }
    assert!(prom
        .alerts(
            "EnvfenceForbiddenFlowPassedInAudit",
            "firing",
            &[("src_env", "test")]
        )?
        .is_empty());

    // The agent stops: its target is down.
    agent.stop_ok(Duration::from_secs(10))?;
    let down = prom.wait_alert(
        "EnvfenceAgentDown",
        &[("job", "envfence"), ("instance", METRICS_ADDR)],
        Duration::from_secs(30),
    )?;
    assert_eq!(down["labels"]["severity"], "critical");
    // No target at all any more: absent.
    prom.reconfigure(&prometheus_config(&rules, false))?;
    prom.wait_alert("EnvfenceAgentAbsent", &[], Duration::from_secs(30))?;
    drop(prom);
    drop(lab);
    Ok(())
}

// ---------------------------------------------------------------------------
// The audit trail's anchors (issue 16): the chain head Prometheus keeps.

#[test]
fn prometheus_anchors_reveal_a_rewritten_chain_and_a_policy_change_alerts() -> Result<()> {
    use envfence_tests::audit_rewrite::rewrite_chain;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, envfence::policy::EXAMPLE_POLICY)?;
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs)?;
    let base = logs.join("audit.jsonl");

    let (_g, lab) = example_lab()?;
    let base_arg = base.display().to_string();
    let opts = AgentOptions::config(&policy).report_every(100).args([
        "--audit-file",
        &base_arg,
        "--node-name",
        "anchor-node",
    ]);
    let agent = Agent::start_with(&lab, &agent_binary()?, &opts)?;
    let (prom, _) = scraping(&lab, dir.path())?;
    // Events in rounds, so that scrapes see several heads.
    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    for round in 0..4u16 {
        for i in 0..20u16 {
            lab.udp_send("test1", prod1, 9000 + round * 100 + i, b"anchor", 1)?;
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    // A deployment: the policy's content changes (to audit mode).
    let next = dir.path().join("policy.yaml.new");
    std::fs::write(
        &next,
        envfence::policy::EXAMPLE_POLICY.replace("mode: enforce", "mode: audit"),
    )?;
    std::fs::rename(&next, &policy)?;
    let alert = prom.wait_alert(
        "EnvfencePolicyChanged",
        &[("node", "anchor-node")],
        Duration::from_secs(30),
    )?;
    assert_eq!(alert["labels"]["severity"], "info");
    let heads = prom.scalar(r#"changes(envfence_audit_head_seq{node="anchor-node"}[10m])"#)?;
    ensure!(heads >= 3.0, "only {heads} head changes recorded");
    let first_anchor =
        prom.scalar(r#"min_over_time(envfence_audit_head_seq{node="anchor-node"}[10m])"#)? as u64;
    agent.stop_ok(Duration::from_secs(10))?;

    let url = format!("http://{PROM_ADDR}");
    // In the node namespace, where Prometheus listens: (success, output).
    let verify = |file: &Path, anchors: bool| -> Result<(bool, String)> {
        let file = file.display().to_string();
        let mut args = vec!["audit", "verify", &file];
        if anchors {
            args.extend(["--anchors", &url]);
        }
        let run = cli_in(&lab, &args)?;
        Ok((run.code == 0, format!("{}\n{}", run.stdout, run.stderr)))
    };
    // Untouched: every recorded head is in the chain.
    let (ok, out) = verify(&base, true)?;
    println!("--- untouched:\n{out}");
    ensure!(ok, "{out}");
    ensure!(out.contains("recorded head(s) are in the chain"), "{out}");

    // The whole chain rewritten consistently (unkeyed: recomputed hashes,
    // and the head file): the files alone verify, the anchors do not.
    let forged = dir.path().join("forged");
    std::fs::create_dir(&forged)?;
    for e in std::fs::read_dir(&logs)? {
        let e = e?;
        std::fs::copy(e.path(), forged.join(e.file_name()))?;
    }
    let fbase = forged.join("audit.jsonl");
    rewrite_chain(
        &envfence::audit::discover(&fbase)?,
        &envfence::audit::head_path(&fbase),
        None,
    )?;
    let (ok, out) = verify(&fbase, false)?;
    println!("--- rewritten, files only:\n{out}");
    ensure!(
        ok,
        "a consistent rewrite should verify without anchors:\n{out}"
    );
    let (ok, out) = verify(&fbase, true)?;
    println!("--- rewritten, with anchors:\n{out}");
    ensure!(!ok, "the rewrite passed the anchors:\n{out}");
    ensure!(
        out.contains(&format!("the head recorded by {url}"))
            && out.contains(&format!("(seq {first_anchor}, hash "))
            && out.contains("is not in this chain"),
        "expected the first missing head, seq {first_anchor}:\n{out}"
    );
    drop(prom);
    drop(lab);
    Ok(())
}
