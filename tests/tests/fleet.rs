//! `envfence fleet` against real Prometheus servers (Debian's package): a
//! lab of three "nodes" (three labs, an agent in each node namespace, each
//! joined by a veth to a shared monitoring namespace), a Prometheus there
//! scraping all three every second, a second one federating from it (the
//! ops cluster's shape, with deploy/prometheus/federation.yml) and a third
//! receiving the first one's remote_write (deploy/prometheus/remote-write.yml).
//!
//! Node a runs the example policy, node b the example policy in audit mode,
//! node c another policy (one more rule); each gets different forbidden
//! traffic. The test requires the fleet commands to give exactly the
//! counts of each agent's own /metrics, the three Prometheus servers to
//! agree, drift to be found (against a file, by majority once c reloads
//! the example policy), and a killed agent to be shown down within two
//! scrape intervals. Nothing touches the host's interfaces: Prometheus and
//! the CLI run in the monitoring namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use envfence::fleet::queries;
use envfence_tests::agent::{agent_binary, Agent, AgentOptions};
use envfence_tests::fixture::{serial, workspace};
use envfence_tests::lab::{wait_until, Family, Lab, NODE};
use envfence_tests::netns;
use envfence_tests::prom::{self, Server};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// Scrape (and evaluation) interval of the lab's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
const PROM1: &str = "127.0.0.1:9090";
const PROM2: &str = "127.0.0.1:9091";
const PROM3: &str = "127.0.0.1:9092";
const METRICS_PORT: u16 = 9477;

fn example_policy() -> String {
    envfence::policy::EXAMPLE_POLICY.to_owned()
}

/// The example policy with one more rule: dev -> staging dropped.
fn other_policy() -> Result<String> {
    let text = example_policy();
    let marker = "rules:\n";
    ensure!(text.contains(marker), "no rules: in the example policy");
    Ok(text.replacen(
        marker,
        "rules:\n  - name: dev-to-staging\n    from: [dev]\n    to: [staging]\n    verdict: drop\n",
        1,
    ))
}

fn audit_policy() -> Result<String> {
    let text = example_policy();
    let line = "\nmode: enforce";
    ensure!(text.contains(line), "the example policy has no {line:?}");
    Ok(text.replacen(line, "\nmode: audit  ", 1))
}

/// One node: its lab, its agent, its policy file and monitoring address.
struct Node {
    name: &'static str,
    lab: Lab,
    agent: Agent,
    policy: PathBuf,
    addr: Ipv4Addr,
}

impl Node {
    fn target(&self) -> String {
        format!("{}:{METRICS_PORT}", self.addr)
    }
}

fn start_node(
    name: &'static str,
    index: u8,
    policy_text: &str,
    mon: &Lab,
    dir: &Path,
    bin: &Path,
) -> Result<Node> {
    let lab = Lab::example()?;
    let addr = Ipv4Addr::new(172, 31, index, 2);
    // `fab*` matches none of the policy's interface globs: the monitoring
    // link is not judged, so scrapes do not move the counters.
    lab.link(
        NODE,
        "fab0",
        Ipv4Net::new(addr, 24)?,
        mon,
        NODE,
        &format!("fab{index}"),
        Ipv4Net::new(Ipv4Addr::new(172, 31, index, 1), 24)?,
    )?;
    let pdir = dir.join(name);
    std::fs::create_dir_all(&pdir)?;
    let policy = pdir.join("policy.yaml");
    std::fs::write(&policy, policy_text)?;
    let opts = AgentOptions {
        metrics_addr: format!("0.0.0.0:{METRICS_PORT}"),
        ..AgentOptions::config(&policy)
    };
    let opts = opts.report_every(200).args(["--node-name", name]);
    let agent = Agent::start_with(&lab, bin, &opts)?;
    Ok(Node {
        name,
        lab,
        agent,
        policy,
        addr,
    })
}

fn scrape_config(nodes: &[&Node], extra_jobs: &str) -> String {
    let mut out = format!(
        "  scrape_interval: {s}s\n  scrape_timeout: 900ms\n  evaluation_interval: {s}s\nscrape_configs:\n  - job_name: envfence\n    static_configs:\n",
        s = SCRAPE.as_secs()
    );
    for n in nodes {
        out.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{node: {}}}\n",
            n.target(),
            n.name
        ));
    }
    out.push_str(&format!(
        "  - job_name: prometheus\n    static_configs:\n      - targets: ['{PROM1}']\n{extra_jobs}"
    ));
    out
}

/// The first Prometheus' configuration: deploy/prometheus/remote-write.yml
/// (pointed at the third server) plus the scrape settings and jobs.
fn prom1_config(nodes: &[&Node], extra_jobs: &str) -> Result<String> {
    let example = std::fs::read_to_string(workspace().join("deploy/prometheus/remote-write.yml"))?;
    let url = "https://prometheus.ops.example/api/v1/write";
    ensure!(
        example.contains(url) && example.contains("global:\n"),
        "remote-write.yml changed"
    );
    let mut text = example
        .replace(url, &format!("http://{PROM3}/api/v1/write"))
        .replacen("global:\n", "global:\n__SCRAPE__", 1);
    let scrape = scrape_config(nodes, extra_jobs);
    let (global, jobs) = scrape
        .split_once("scrape_configs:\n")
        .context("scrape config")?;
    text = text.replace("__SCRAPE__", global);
    text.push_str("scrape_configs:\n");
    text.push_str(jobs);
    // Send fast (the default waits up to 5 s per batch).
    text = text.replace(
        "    write_relabel_configs:",
        "    queue_config: {batch_send_deadline: 200ms}\n    write_relabel_configs:",
    );
    Ok(text)
}

/// The federating Prometheus' configuration: deploy/prometheus/federation.yml.
fn prom2_config() -> Result<String> {
    let example = std::fs::read_to_string(workspace().join("deploy/prometheus/federation.yml"))?;
    let target = "prometheus-k8s.monitoring.svc:9090";
    for needle in [target, "scrape_interval: 30s", "scrape_timeout: 20s"] {
        ensure!(example.contains(needle), "federation.yml lost {needle:?}");
    }
    Ok(format!(
        "global:\n  evaluation_interval: 1s\n{}",
        example
            .replace(target, PROM1)
            .replace("scrape_interval: 30s", "scrape_interval: 1s")
            .replace("scrape_timeout: 20s", "scrape_timeout: 900ms")
    ))
}

/// Runs `envfence fleet ARGS` in the monitoring namespace.
fn fleet(mon: &Lab, bin: &Path, url: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(bin);
    cmd.arg("fleet")
        .args(args)
        .env("ENVFENCE_PROMETHEUS_URL", url)
        .env("NO_COLOR", "1");
    let _ns = netns::command_in_netns(mon.node_ns(), &mut cmd)?;
    netns::output_with_timeout(&mut cmd, Duration::from_secs(60))
        .with_context(|| format!("running envfence fleet {args:?}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
/// Both streams, for error messages.
fn both(o: &Output) -> String {
    stdout(o) + &stderr(o)
}

/// `envfence fleet ARGS -o json`, parsed; `codes` are the accepted exit
/// codes.
fn fleet_json(mon: &Lab, bin: &Path, url: &str, args: &[&str], codes: &[i32]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = fleet(mon, bin, url, &all)?;
    let code = out.status.code().unwrap_or(-1);
    ensure!(
        codes.contains(&code),
        "envfence fleet {all:?} exited {code}:\n{}",
        both(&out)
    );
    serde_json::from_str(&stdout(&out))
        .with_context(|| format!("envfence fleet {all:?}: not JSON:\n{}", both(&out)))
}

/// (src_env, dst_env, verdict) -> packets of the agent's violation series.
fn agent_cells(agent: &Agent, metric: &str, key: &[&str]) -> Result<BTreeMap<Vec<String>, u64>> {
    let mut out = BTreeMap::new();
    for s in prom::parse(&agent.metrics()?) {
        let verdict = s.label("verdict").unwrap_or("");
        if s.name == metric && (verdict == "drop" || verdict == "audit") && s.value > 0.0 {
            let k = key
                .iter()
                .map(|l| s.label(l).unwrap_or("").to_owned())
                .collect();
            *out.entry(k).or_default() += s.value as u64;
        }
    }
    Ok(out)
}

/// node -> (cell -> packets or bytes) from a `fleet violations` report.
fn report_cells(
    report: &Value,
    list: &str,
    key: &[&str],
    field: &str,
) -> Result<BTreeMap<String, BTreeMap<Vec<String>, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<Vec<String>, u64>> = BTreeMap::new();
    for c in report[list].as_array().context("cells")? {
        let node = c["node"].as_str().context("node")?.to_owned();
        let k = key
            .iter()
            .map(|l| c[*l].as_str().unwrap_or("").to_owned())
            .collect();
        out.entry(node)
            .or_default()
            .insert(k, c[field].as_u64().context("count")?);
    }
    Ok(out)
}

/// A JSON string's text ("" for anything else).
fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn node_status<'a>(status: &'a Value, node: &str) -> Result<&'a Value> {
    status["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .find(|n| n["node"] == node)
        .with_context(|| format!("{node} missing from fleet status: {status}"))
}

/// The status without what legitimately differs between two servers.
fn comparable_status(v: &Value) -> Value {
    let mut v = v.clone();
    for k in ["prometheus", "at"] {
        v.as_object_mut().map(|o| o.remove(k));
    }
    if let Some(nodes) = v["nodes"].as_array_mut() {
        for n in nodes {
            for k in ["last_scrape", "last_scrape_time"] {
                n.as_object_mut().map(|o| o.remove(k));
            }
        }
    }
    v
}

fn without_url(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().map(|o| o.remove("prometheus"));
    v
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn rfc3339(t: f64) -> String {
    envfence::api::types::unix_to_rfc3339(t)
}

// ------------------------------------------------- one copy of the queries

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn alert_rules_use_the_fleet_queries() -> Result<()> {
    let path = workspace().join("deploy/prometheus/envfence-rules.yml");
    let doc = yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&path)?)?;
    let mut exprs = BTreeMap::new();
    for group in doc[0]["groups"].as_vec().context("groups")? {
        for rule in group["rules"].as_vec().context("rules")? {
            if let (Some(a), Some(e)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                exprs.insert(a.to_owned(), e.to_owned());
            }
        }
    }
    let scope = queries::Scope::rules();
    for (alert, q) in queries::RULES {
        let want = q.render(&scope);
        let got = exprs
            .get(*alert)
            .with_context(|| format!("{} has no alert {alert}", path.display()))?;
        ensure!(
            squash(got) == squash(&want),
            "{alert} in {} is not the query {:?} of agent/src/fleet/queries.rs; it must be:\n{want}",
            path.display(),
            q.name
        );
    }
    Ok(())
}

#[test]
fn dashboard_fleet_tables_use_the_fleet_queries() -> Result<()> {
    let path = workspace().join("deploy/grafana/envfence-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let scope = queries::Scope::grafana();
    for (id, list) in [
        (27, queries::DASHBOARD_FLEET_ROW),
        (28, queries::DASHBOARD_DRIFT),
    ] {
        let panel = dash["panels"]
            .as_array()
            .context("panels")?
            .iter()
            .find(|p| p["id"] == id)
            .with_context(|| format!("{}: no panel {id}", path.display()))?;
        let targets = panel["targets"].as_array().context("targets")?;
        let names: Vec<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        let want: Vec<&str> = list.iter().map(|q| q.name).collect();
        ensure!(names == want, "panel {id} queries {names:?}, want {want:?}");
        for (t, q) in targets.iter().zip(list.iter()) {
            let want = q.render(&scope);
            ensure!(
                t["expr"].as_str() == Some(want.as_str()),
                "panel {id} target {}: not the query of agent/src/fleet/queries.rs; it must be:\n{}",
                q.name,
                serde_json::to_string(&want)?
            );
        }
    }
    Ok(())
}

#[test]
fn readme_documents_every_fleet_query() -> Result<()> {
    let path = workspace().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (start, end) = ("<!-- fleet-queries -->\n", "<!-- /fleet-queries -->");
    let a = text
        .find(start)
        .context("README: no fleet-queries marker")?
        + start.len();
    let b = text.find(end).context("README: no /fleet-queries marker")?;
    let want = queries::markdown_table();
    if text[a..b] != want {
        if std::env::var("ENVFENCE_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, format!("{}{want}{}", &text[..a], &text[b..]))?;
            return Ok(());
        }
        anyhow::bail!(
            "README.md's table of the fleet queries differs from agent/src/fleet/queries.rs: run \
             `ENVFENCE_BLESS=1 cargo test -p envfence-tests --test fleet readme`"
        );
    }
    Ok(())
}

// ------------------------------------------------------ three nodes, for real

#[test]
fn fleet_view_of_three_nodes_through_real_prometheus() -> Result<()> {
    let _g = serial();
    let bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let t0 = unix_now().floor() - 2.0;
    // The monitoring namespace: a lab without pods.
    let mon = Lab::new(&[])?;
    let a = start_node("node-a", 1, &example_policy(), &mon, dir.path(), &bin)?;
    let b = start_node("node-b", 2, &audit_policy()?, &mon, dir.path(), &bin)?;
    let c = start_node("node-c", 3, &other_policy()?, &mon, dir.path(), &bin)?;
    let nodes = [&a, &b, &c];

    // The shipped alert rules, their 15-minute `for` cut to 2 s: the
    // policy-agreement alerts are evaluated on the real scrapes below.
    let rules = dir.path().join("envfence-rules.yml");
    let shipped =
        std::fs::read_to_string(workspace().join("deploy/prometheus/envfence-rules.yml"))?;
    ensure!(
        shipped.contains("for: 15m"),
        "the rules lost their for: 15m"
    );
    std::fs::write(&rules, shipped.replace("for: 15m", "for: 2s"))?;
    let config1 = dir.path().join("prometheus1.yml");
    std::fs::write(
        &config1,
        format!(
            "{}rule_files:\n  - {}\n",
            prom1_config(&nodes, "")?,
            rules.display()
        ),
    )?;
    let config2 = dir.path().join("prometheus2.yml");
    std::fs::write(&config2, prom2_config()?)?;
    let config3 = dir.path().join("prometheus3.yml");
    std::fs::write(&config3, "global:\n  evaluation_interval: 1s\n")?;
    for c in [&config1, &config2] {
        prom::promtool(&["check".as_ref(), "config".as_ref(), c.as_os_str()])?;
    }
    let server = |addr, config: &Path, data: &str, flags: &[&str]| {
        let lookback = ["--query.lookback-delta=5s"];
        let flags = [&lookback[..], flags].concat();
        Server::start(&mon, NODE, addr, config, &dir.path().join(data), &flags)
    };
    let p3 = server(
        PROM3,
        &config3,
        "data3",
        &["--web.enable-remote-write-receiver"],
    )?;
    let p1 = server(PROM1, &config1, "data1", &[])?;
    let p2 = server(PROM2, &config2, "data2", &[])?;
    let all_up = wait_until(Duration::from_secs(20), || {
        p1.scalar(r#"sum(up{job="envfence"})"#)
            .is_ok_and(|v| v == 3.0)
    });
    ensure!(
        all_up,
        "prometheus does not scrape the three agents: {:?}\n{}",
        p1.query("up"),
        p1.process.stderr_tail(20)
    );
    // `envfence fleet` against the first Prometheus: JSON, and the table.
    let json1 = |args: &[&str], codes: &[i32]| fleet_json(&mon, &bin, &p1.url(), args, codes);
    let table1 = |args: &[&str]| fleet(&mon, &bin, &p1.url(), args);

    // Three nodes, three policies: the job disagrees on its policy
    // (EnvfencePolicyHashDisagreement), and no policy is the majority, so
    // EnvfencePolicyDrift names no node (it needs a majority to compare
    // with): the two alerts cover the two cases without firing twice.
    let alert = p1.wait_alert(
        "EnvfencePolicyHashDisagreement",
        &[("job", "envfence")],
        Duration::from_secs(30),
    )?;
    ensure!(
        alert["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("3 different policies")),
        "{alert}"
    );
    ensure!(
        p1.alerts("EnvfencePolicyDrift", "firing", &[])?.is_empty()
            && p1.alerts("EnvfencePolicyDrift", "pending", &[])?.is_empty(),
        "EnvfencePolicyDrift on a tie: {}",
        p1.api("/api/v1/alerts")?
    );

    // Different forbidden traffic on each node. Receivers where packets
    // pass, so that no ICMP error comes back (its count would vary).
    let prod1 = a.lab.pod("prod1")?.ip(Family::V4);
    let staging1 = a.lab.pod("staging1")?.ip(Family::V4);
    let _ra = a.lab.udp_receiver("prod1", prod1, 9000)?;
    a.lab.udp_send("test1", prod1, 9000, b"forbidden", 37)?; // drop
    a.lab.udp_send("staging1", prod1, 9000, b"audited", 5)?; // audit rule
    let rb = b.lab.udp_receiver("prod1", prod1, 9000)?;
    b.lab.udp_send("test1", prod1, 9000, b"forbidden", 23)?; // audit mode
    b.lab.udp_send("dev1", prod1, 9000, b"forbidden", 3)?;
    c.lab
        .udp_send("dev1", staging1, 9000, b"other policy", 13)?; // dev-to-staging
    c.lab.udp_send("test1", prod1, 9000, b"forbidden", 7)?;
    ensure!(
        rb.wait_total(26, Duration::from_secs(5)) == 26,
        "node-b is in audit mode: its 26 datagrams pass"
    );

    // The agents' own counters: the truth the fleet view must equal.
    let pair_key = ["src_env", "dst_env", "verdict"];
    let rule_key = ["rule", "verdict"];
    let want = |metric: &str, key: &[&str]| -> Result<BTreeMap<_, _>> {
        let cells = |n: &&Node| Ok((n.name.to_owned(), agent_cells(&n.agent, metric, key)?));
        nodes.iter().map(cells).collect()
    };
    let want_pairs = want("envfence_packets_total", &pair_key)?;
    let want_bytes = want("envfence_bytes_total", &pair_key)?;
    let want_rules = want("envfence_rule_packets_total", &rule_key)?;
    let cell = |node: &str, k: [&str; 3]| {
        want_pairs[node]
            .get(&k.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .copied()
    };
    assert_eq!(cell("node-a", ["test", "production", "drop"]), Some(37));
    assert_eq!(cell("node-a", ["staging", "production", "audit"]), Some(5));
    assert_eq!(cell("node-b", ["test", "production", "audit"]), Some(23));
    assert_eq!(cell("node-b", ["dev", "production", "audit"]), Some(3));
    assert_eq!(cell("node-c", ["dev", "staging", "drop"]), Some(13));
    assert_eq!(cell("node-c", ["test", "production", "drop"]), Some(7));

    // Wait until Prometheus has scraped it all, then take a fixed range.
    let total: u64 = want_pairs.values().flat_map(|m| m.values()).sum();
    let seen = wait_until(Duration::from_secs(20), || {
        p1.scalar(r#"sum(envfence_packets_total{job="envfence",verdict=~"drop|audit"})"#)
            .is_ok_and(|v| v as u64 == total)
    });
    ensure!(seen, "prometheus never had the {total} violation packets");
    std::thread::sleep(SCRAPE * 2);
    let t1 = unix_now().floor();
    let range = ["--from", &rfc3339(t0), "--to", &rfc3339(t1)];

    // violations: exactly the agents' cells, packets and bytes.
    let args = [&["violations"][..], &range].concat();
    let v1 = json1(&args, &[0])?;
    for (list, key, field, want, what) in [
        ("pairs", &pair_key[..], "packets", &want_pairs, "(packets)"),
        ("pairs", &pair_key, "bytes", &want_bytes, "(bytes)"),
        ("rules", &rule_key, "packets", &want_rules, "by rule"),
    ] {
        let got = report_cells(&v1, list, key, field)?;
        assert_eq!(&got, want, "violations {what} vs the agents' /metrics");
    }
    assert_eq!(v1["total"]["packets"].as_u64(), Some(total));
    let seconds = v1["seconds"].as_u64().context("seconds")?;
    assert_eq!(seconds, (t1 - t0) as u64);
    let first = &v1["pairs"][0];
    assert_eq!(first["node"], "node-a");
    assert_eq!(first["packets"], 37);
    let pps = first["packets_per_second"].as_f64().context("rate")?;
    assert!((pps - 37.0 / seconds as f64).abs() < 1e-9, "{pps}");
    // The table says the same.
    let out = table1(&args)?;
    ensure!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    println!("$ envfence fleet violations\n{table}");
    for needle in [
        "node-a test production drop 37",
        "node-a staging production audit 5",
        "node-b test production audit 23",
        "node-c dev staging drop 13",
        "node-c dev-to-staging drop 13",
    ] {
        ensure!(
            table.lines().any(|l| squash(l).starts_with(needle)),
            "no row {needle:?} in:\n{table}"
        );
    }
    // Only drops.
    let vd = json1(&[&args[..], &["--verdict", "drop"]].concat(), &[0])?;
    assert_eq!(vd["total"]["packets"].as_u64(), Some(37 + 13 + 7));

    // top: by pair over the nodes, by node, by rule.
    let by = |b: &str| json1(&[&["top"][..], &range, &["--by", b]].concat(), &[0]);
    let top_pair = by("pair")?;
    let row0 = &top_pair["rows"][0];
    let row0_fields = ["src_env", "dst_env", "verdict", "packets"].map(|k| &row0[k]);
    let want_row0 = json!(["test", "production", "drop", 37 + 7]);
    assert_eq!(json!(row0_fields), want_row0, "{top_pair}");
    assert_eq!(row0["nodes"], json!(["node-a", "node-c"]));
    let top_node = by("node")?;
    let rows = top_node["rows"].as_array().context("rows")?;
    let per_node: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            let key = format!("{}/{}", text(&r["node"]), text(&r["verdict"]));
            (key, r["packets"].as_u64().unwrap_or(0))
        })
        .collect();
    for n in nodes {
        for verdict in ["drop", "audit"] {
            let want: u64 = want_pairs[n.name]
                .iter()
                .filter(|(k, _)| k[2] == verdict)
                .map(|(_, v)| v)
                .sum();
            let got = per_node
                .get(&format!("{}/{verdict}", n.name))
                .copied()
                .unwrap_or(0);
            assert_eq!(got, want, "top --by node {} {verdict}", n.name);
        }
    }
    let top_rule = by("rule")?;
    let rule_rows = top_rule["rows"].as_array().context("rows")?;
    let dev_to_staging = |r: &Value| r["rule"] == "dev-to-staging" && r["packets"] == 13;
    assert!(rule_rows.iter().any(dev_to_staging), "{top_rule}");

    // status: three agents up, their policies and interfaces.
    let status = json1(&["status"], &[0])?;
    assert_eq!(
        (status["up"].as_u64(), status["down"].as_u64()),
        (Some(3), Some(0))
    );
    for n in nodes {
        let s = node_status(&status, n.name)?;
        assert_eq!(s["state"], "up");
        let sha = n.agent.metrics()?;
        let info = prom::parse(&sha)
            .into_iter()
            .find(|s| s.name == "envfence_policy_info")
            .context("policy info")?;
        assert_eq!(s["policy_sha256"].as_str(), info.label("sha256"));
        assert_eq!(s["mode"].as_str(), info.label("mode"));
        assert_eq!(
            s["attached_interfaces"].as_u64(),
            Some(n.agent.metric("envfence_attached_interfaces", &[])? as u64)
        );
        assert_eq!(s["attached_interfaces"].as_u64(), Some(7));
        assert_eq!(s["events_lost"].as_u64(), Some(0));
        assert_eq!(s["reload_failures"].as_u64(), Some(0));
        let age = unix_now() - s["last_scrape"].as_f64().context("last scrape")?;
        assert!(age < 5.0, "{} last scraped {age:.1}s ago", n.name);
    }
    assert_eq!(node_status(&status, "node-b")?["mode"], "audit");
    let table = table1(&["status"])?;
    println!("$ envfence fleet status\n{}", stdout(&table));
    ensure!(table.status.success(), "{}", stderr(&table));

    // drift against the example file: b (hash, audit) and c (hash).
    let example = workspace().join("agent/policy/example.yaml");
    let example = example.display().to_string();
    let d = json1(&["drift", "--policy", &example], &[3])?;
    // The findings as sorted "node/kind".
    let kinds = |d: &Value| -> Vec<String> {
        let findings = d["findings"].as_array().map(Vec::as_slice);
        let mut v: Vec<_> = findings
            .unwrap_or_default()
            .iter()
            .map(|f| format!("{}/{}", text(&f["node"]), text(&f["kind"])))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        kinds(&d),
        ["node-b/audit", "node-b/policy", "node-c/policy"],
        "{d}"
    );
    // By majority: three policies, no majority (a tie), only the audit.
    let d = json1(&["drift"], &[3])?;
    assert_eq!(d["ties"], json!(["envfence"]), "{d}");
    assert_eq!(kinds(&d), ["node-b/audit"]);
    // c takes the example policy (hot reload): a and c are the majority.
    std::fs::write(&c.policy, example_policy())?;
    let reloaded = wait_until(Duration::from_secs(20), || {
        json1(&["status"], &[0])
            .is_ok_and(|s| node_status(&s, "node-c").is_ok_and(|n| n["policy_generation"] == 2))
    });
    ensure!(reloaded, "node-c never showed generation 2");
    let d = json1(&["drift"], &[3])?;
    assert_eq!(kinds(&d), ["node-b/audit", "node-b/policy"], "{d}");
    let table = stdout(&table1(&["drift"])?);
    println!("$ envfence fleet drift\n{table}");
    ensure!(table.contains("(2 of 3 agents)"), "{table}");

    // The federating and the remote_write-receiving Prometheus answer the
    // same, with the same numbers.
    let same = |url: &str, what: &str| -> Result<()> {
        // The last answer of `url` to `args`, once it equals `first` as
        // `norm` sees them (or when 30 s are up).
        let settle = |args: &[&str], codes: &[i32], first: &Value, norm: fn(&Value) -> Value| {
            let mut last = Value::Null;
            let ok = wait_until(Duration::from_secs(30), || {
                let Ok(v) = fleet_json(&mon, &bin, url, args, codes) else {
                    return false;
                };
                last = v;
                norm(&last) == norm(first)
            });
            (ok, last)
        };
        let (ok, last) = settle(&args, &[0], &v1, without_url);
        ensure!(
            ok,
            "{what} violations differ:\n{last}\nvs the first Prometheus:\n{v1}"
        );
        let first = json1(&["status"], &[0, 3])?;
        let (ok, last) = settle(&["status"], &[0, 3], &first, comparable_status);
        ensure!(ok, "{what} status differs:\n{last}\nvs\n{first}");
        let d2 = fleet_json(&mon, &bin, url, &["drift"], &[3])?;
        assert_eq!(kinds(&d2), kinds(&d), "{what} drift");
        println!("{what}: same violations, status and drift");
        Ok(())
    };
    same(&p2.url(), "the federating Prometheus")?;
    same(&p3.url(), "the remote_write receiver")?;

    // Kill node-c's agent: down within two scrape intervals.
    let killed = Instant::now();
    c.agent
        .process()
        .signal(nix::sys::signal::Signal::SIGKILL)?;
    let mut shown = None;
    while killed.elapsed() < Duration::from_secs(10) {
        let s = json1(&["status"], &[0, 3])?;
        if node_status(&s, "node-c")?["state"] == "down" {
            shown = Some((killed.elapsed(), s));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after, s) = shown.context("node-c never shown down")?;
    println!("node-c shown down {after:.2?} after the kill");
    ensure!(
        after <= SCRAPE * 2,
        "node-c shown down only {after:?} after the kill (scrape interval {SCRAPE:?})"
    );
    assert_eq!((s["up"].as_u64(), s["down"].as_u64()), (Some(2), Some(1)));
    // Its last known policy is still shown.
    assert_eq!(node_status(&s, "node-c")?["policy_generation"], 2);
    let out = table1(&["status"])?;
    let table = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status exits 3 with a node down"
    );
    println!("$ envfence fleet status\n{table}");
    let down = |l: &str| l.starts_with("node-c") && l.contains("DOWN");
    ensure!(table.lines().any(down), "{table}");
    // The federating one too.
    let down2 = wait_until(Duration::from_secs(10), || {
        fleet_json(&mon, &bin, &p2.url(), &["status"], &[3])
            .is_ok_and(|s| node_status(&s, "node-c").is_ok_and(|n| n["state"] == "down"))
    });
    ensure!(down2, "the federating Prometheus never showed node-c down");

    // Errors name what is wrong.
    let err = |url: &str, args: &[&str]| -> Result<String> {
        let out = fleet(&mon, &bin, url, args)?;
        ensure!(
            out.status.code() == Some(1),
            "fleet {args:?} should fail: {}",
            both(&out)
        );
        Ok(stderr(&out))
    };
    let e = err("http://127.0.0.1:1", &["status"])?;
    ensure!(
        e.contains("cannot reach Prometheus at http://127.0.0.1:1"),
        "{e}"
    );
    let e = err(&p1.url(), &["status", "--selector", r#"job=~"(""#])?;
    ensure!(
        e.contains("Prometheus refused the query") && e.contains(r#"query: up{job=~"("}"#),
        "{e}"
    );
    let e = err(&p1.url(), &["status", "--selector", r#"job="nothing""#])?;
    ensure!(e.contains("no envfence scrape target"), "{e}");
    let e = err(
        &p1.url(),
        &["violations", "--selector", r#"job="prometheus""#],
    )?;
    ensure!(e.contains("has no envfence series"), "{e}");
    // A scrape job without the node label.
    p1.reconfigure(&prom1_config(
        &[&a, &b, &c],
        &format!(
            "  - job_name: envfence-unlabelled\n    static_configs:\n      - targets: ['{}']\n",
            a.target()
        ),
    )?)?;
    let labelled = wait_until(Duration::from_secs(20), || {
        p1.scalar(r#"up{job="envfence-unlabelled"}"#)
            .is_ok_and(|v| v == 1.0)
    });
    ensure!(labelled, "the unlabelled job is never scraped");
    let e = err(&p1.url(), &["status"])?;
    println!("missing label: {e}");
    ensure!(
        e.contains("have no `node` label")
            && e.contains("envfence-unlabelled")
            && e.contains("--node-label"),
        "{e}"
    );
    // ... and --node-label instance names nodes by address.
    let args = ["status", "--node-label", "instance"];
    let s = json1(&args, &[3])?;
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(4), "{s}");

    drop((p1, p2, p3));
    drop((a, b, c));
    drop(mon);
    Ok(())
}
