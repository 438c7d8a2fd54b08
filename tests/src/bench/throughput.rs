//! b. Throughput across the lab's veth path: a "client" pod (staging,
//! 10.20.1.2) sends through the node namespace, which forwards, to a
//! "server" pod (production, 10.10.1.2), with iperf3: TCP with 1 and 4
//! streams, and 64-byte UDP from several iperf3 processes at once (one
//! iperf3 process is sender-bound), reporting packets received per second.
//!
//! Variants, all on the node namespace only:
//! - no filter;
//! - envfence: the agent (release build) with a synthetic policy of N
//!   CIDRs, attached to the node's veths; the flow is allowed;
//! - nftables: the same CIDRs in interval sets (one per environment and
//!   family) and a rule on the forward hook dropping test → production;
//! - iptables: the naive equivalent, one rule per IPv4 CIDR in FORWARD
//!   (`-s CIDR -j <env chain>`), the lab's subnets last, so each packet
//!   walks O(N) rules; the test chain drops what goes to a production
//!   CIDR, every env chain ends in ACCEPT.
//!
//! Variants run round robin (the starting variant rotates each round);
//! each figure is the median over rounds, each ratio the median of the
//! per-round ratios to the no-filter run of the same round.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::synth::{SynthPolicy, ENVS, PRODUCTION, TEST};
use super::table::{fmt, median, ratio, thousands, Table};
use super::{client_server, start_agent, Goal, Part, Section, CLIENT, SERVER};
use crate::agent::Agent;
use crate::lab::{wait_until, Family, Lab};
use crate::netns;

const TCP_PORT: u16 = 5201;
const UDP_PORT_BASE: u16 = 5301;
/// iperf3 `-A client,server` CPUs.
const AFFINITY: &str = "0,1";

#[derive(Clone, Debug)]
pub struct Params {
    /// Policy sizes (CIDRs per family) of the filtering variants.
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// Seconds per iperf3 run.
    pub secs: u32,
    /// iperf3 client processes of the UDP test, and streams of each.
    pub udp_procs: usize,
    pub udp_streams: usize,
    pub seed: u64,
}

impl Params {
    pub fn full() -> Params {
        Params {
            sizes: vec![10, 10_000],
            rounds: 4,
            secs: 2,
            udp_procs: 3,
            udp_streams: 4,
            seed: 1,
        }
    }
    pub fn quick() -> Params {
        Params {
            rounds: 1,
            secs: 1,
            ..Params::full()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    None,
    Envfence,
    Nft,
    Iptables,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Envfence => "envfence",
            Filter::Nft => "nftables (interval sets)",
            Filter::Iptables => "iptables (a rule per CIDR)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    filter: Filter,
    cidrs: usize,
}

impl Variant {
    /// The table cells naming the variant: filter, CIDRs.
    fn cells(self) -> Vec<String> {
        let cidrs = match self.filter {
            Filter::None => "—".into(),
            _ => thousands(self.cidrs as f64),
        };
        vec![self.filter.name().to_string(), cidrs]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Tcp1,
    Tcp4,
    Udp,
}

impl Test {
    const ALL: [Test; 3] = [Test::Tcp1, Test::Tcp4, Test::Udp];
}

/// Figures of one variant: per test, per round (NaN when a run failed).
struct Figures {
    variant: Variant,
    values: [Vec<f64>; 3],
    /// Each run's ratio to the mean of the no-filter runs just before and
    /// just after it.
    ratios: [Vec<f64>; 3],
}

/// A filter in force in the node namespace.
enum Active {
    None,
    Agent(Agent),
    Nft,
    Iptables,
}

struct Bench<'a> {
    lab: Lab,
    agent_bin: &'a Path,
    dir: tempfile::TempDir,
    policies: Vec<SynthPolicy>,
    p: &'a Params,
}

/// Runs `program args` in the lab namespace `ns`, failing with its stderr.
fn in_ns(ns: &str, program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let _handle = netns::command_in_netns(ns, &mut cmd)?;
    let out = netns::output_with_timeout(&mut cmd, timeout)
        .with_context(|| format!("running {program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` in {ns} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.contains("\"error\""))
                .unwrap_or("")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Bench<'_> {
    fn policy(&self, cidrs: usize) -> Result<&SynthPolicy> {
        self.policies
            .iter()
            .find(|p| p.cidrs == cidrs)
            .ok_or_else(|| anyhow!("no policy of {cidrs} CIDRs"))
    }

    /// `program args` in the node namespace (see [`in_ns`]).
    fn in_node(&self, program: &str, args: &[&str], secs: u64) -> Result<String> {
        in_ns(self.lab.node_ns(), program, args, Duration::from_secs(secs))
    }

    /// Writes `text` to `name` in the bench's directory; returns its path.
    fn file(&self, name: &str, text: &str) -> Result<String> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    }

    fn setup(&self, v: Variant) -> Result<Active> {
        match v.filter {
            Filter::None => Ok(Active::None),
            Filter::Envfence => {
                let policy = self.file(
                    &format!("policy-{}.yaml", v.cidrs),
                    &self.policy(v.cidrs)?.yaml,
                )?;
                let state = self.dir.path().join("state");
                let timeout = Duration::from_secs(120);
                let agent =
                    start_agent(&self.lab, self.agent_bin, policy.as_ref(), &state, timeout)?;
                let attached = agent.metric("envfence_attached_interfaces", &[])?;
                if attached < 2.0 {
                    bail!("the agent attached to {attached} interfaces, not the lab's 2");
                }
                Ok(Active::Agent(agent))
            }
            Filter::Nft => {
                let rules = nft_ruleset(self.policy(v.cidrs)?);
                let path = self.file(&format!("nft-{}.conf", v.cidrs), &rules)?;
                self.in_node("nft", &["-f", &path], 120)?;
                Ok(Active::Nft)
            }
            Filter::Iptables => {
                let rules = iptables_rules(self.policy(v.cidrs)?);
                let path = self.file(&format!("iptables-{}.rules", v.cidrs), &rules)?;
                self.in_node("iptables-restore", &[&path], 300)?;
                Ok(Active::Iptables)
            }
        }
    }

    /// Removes the filter; checks it saw the traffic where it can tell.
    fn teardown(&self, active: Active) -> Result<()> {
        match active {
            Active::None => Ok(()),
            Active::Agent(agent) => {
                let labels = [
                    ("src_env", "staging"),
                    ("dst_env", "production"),
                    ("verdict", "allow"),
                ];
                let allowed = agent.metric("envfence_packets_total", &labels);
                agent.stop(Duration::from_secs(20))?;
                if allowed? < 1.0 {
                    bail!("the agent judged none of the benchmark's packets");
                }
                Ok(())
            }
            Active::Nft => {
                self.in_node("nft", &["delete", "table", "inet", "efbench"], 60)?;
                Ok(())
            }
            Active::Iptables => {
                let counters = self.in_node("iptables", &["-w", "-nvxL", "efb-staging"], 60);
                let empty = self.file("iptables-empty.rules", IPTABLES_EMPTY)?;
                self.in_node("iptables-restore", &[&empty], 60)?;
                let seen = counters?
                    .lines()
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum::<u64>();
                if seen == 0 {
                    bail!("no packet went through the iptables rules");
                }
                Ok(())
            }
        }
    }

    fn server_ip(&self) -> Result<String> {
        Ok(self.lab.pod(SERVER)?.ipv4().to_string())
    }

    /// One iperf3 client run in the client pod with `args` (words split
    /// at spaces); the parsed JSON.
    fn iperf(&self, args: &str) -> Result<Value> {
        let ns = self.lab.ns(CLIENT)?.to_string();
        let server = self.server_ip()?;
        let secs = self.p.secs.to_string();
        let mut all = vec![
            "-c",
            &server,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
            all.extend(["-A", AFFINITY]);
        }
        all.extend(args.split(' '));
        let timeout = Duration::from_secs(u64::from(self.p.secs) + 20);
        let mut last = None;
        for _attempt in 0..2 {
            match in_ns(&ns, "iperf3", &all, timeout).and_then(|out| {
                let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    bail!("iperf3: {e}");
                }
                Ok(v)
            }) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("iperf3 did not run")))
    }

    /// Gb/s received by the server.
    fn tcp(&self, streams: usize) -> Result<f64> {
        let v = self.iperf(&format!("-p {TCP_PORT} -P {streams}"))?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second in iperf3's answer")?;
        Ok(bps / 1e9)
    }

    /// Packets per second received by the server, over every process.
    fn udp(&self) -> Result<f64> {
        let results: Vec<Result<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.p.udp_procs)
                .map(|i| {
                    s.spawn(move || -> Result<f64> {
                        let port = UDP_PORT_BASE + i as u16;
                        let streams = self.p.udp_streams;
                        let v = self.iperf(&format!("-p {port} -u -b 0 -l 64 -P {streams}"))?;
                        let sum = &v["end"]["sum"];
                        let packets = sum["packets"].as_f64().context("end.sum.packets")?;
                        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
                        let secs = sum["seconds"].as_f64().context("end.sum.seconds")?;
                        Ok((packets - lost).max(0.0) / secs.max(1e-3))
                    })
                })
                .collect();
            let joined = handles.into_iter().map(|h| h.join());
            joined
                .map(|r| r.unwrap_or_else(|_| Err(anyhow!("a UDP client thread panicked"))))
                .collect()
        });
        results.into_iter().sum()
    }

    fn measure(&self, test: Test) -> Result<f64> {
        match test {
            Test::Tcp1 => self.tcp(1),
            Test::Tcp4 => self.tcp(4),
            Test::Udp => self.udp(),
        }
    }
}

/// The nftables equivalent: interval sets per environment, a drop rule.
fn nft_ruleset(p: &SynthPolicy) -> String {
    let mut s = String::from("table inet efbench {\n");
    for (i, env) in ENVS.iter().enumerate() {
        for (fam, ty, family) in [
            ("v4", "ipv4_addr", Family::V4),
            ("v6", "ipv6_addr", Family::V6),
        ] {
            let elems: Vec<String> = p
                .prefixes_of(family, i)
                .iter()
                .map(|n| n.to_string())
                .collect();
            s.push_str(&format!(
                "  set env_{env}_{fam} {{\n    type {ty}\n    flags interval\n    auto-merge\n"
            ));
            if !elems.is_empty() {
                s.push_str("    elements = { ");
                s.push_str(&elems.join(", "));
                s.push_str(" }\n");
            }
            s.push_str("  }\n");
        }
    }
    let (test, prod) = (ENVS[TEST], ENVS[PRODUCTION]);
    s.push_str(&format!(
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
         ip saddr @env_{test}_v4 ip daddr @env_{prod}_v4 drop\n    \
         ip6 saddr @env_{test}_v6 ip6 daddr @env_{prod}_v6 drop\n  }}\n}}\n"
    ));
    s
}

/// The naive iptables equivalent: a rule per IPv4 CIDR in FORWARD.
fn iptables_rules(p: &SynthPolicy) -> String {
    let chain = |i: usize| format!("efb-{}", ENVS[i]);
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..ENVS.len() {
        s.push_str(&format!(":{} - [0:0]\n", chain(i)));
    }
    // The random prefixes first, the lab's (the first ones) last: a lab
    // packet walks past every rule before its own.
    let fixed =
        p.v4.iter()
            .take_while(|(n, _)| n.addr().octets()[0] == 10)
            .count();
    for (net, env) in p.v4.iter().skip(fixed).chain(p.v4.iter().take(fixed)) {
        s.push_str(&format!("-A FORWARD -s {net} -j {}\n", chain(*env)));
    }
    for (net, env) in &p.v4 {
        if *env == PRODUCTION {
            s.push_str(&format!("-A {} -d {net} -j DROP\n", chain(TEST)));
        }
    }
    for i in 0..ENVS.len() {
        s.push_str(&format!("-A {} -j ACCEPT\n", chain(i)));
    }
    s.push_str("COMMIT\n");
    s
}

const IPTABLES_EMPTY: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

fn start_servers(lab: &Lab, p: &Params) -> Result<()> {
    let ip = lab.pod(SERVER)?.ipv4();
    let ports: Vec<u16> = std::iter::once(TCP_PORT)
        .chain((0..p.udp_procs).map(|i| UDP_PORT_BASE + i as u16))
        .collect();
    let mut procs = Vec::new();
    for port in &ports {
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-s",
            "--forceflush",
            "-B",
            &ip.to_string(),
            "-p",
            &port.to_string(),
        ]);
        procs.push(lab.spawn_in_ns(SERVER, cmd)?);
    }
    let listening = wait_until(Duration::from_secs(10), || {
        procs.iter().all(|p| {
            p.stdout_lines()
                .iter()
                .any(|l| l.contains("Server listening"))
        })
    });
    if !listening {
        bail!(
            "iperf3 servers did not start: {}",
            procs
                .iter()
                .map(|p| p.stderr_tail(3))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn variants(p: &Params) -> Vec<Variant> {
    let mut v = vec![Variant {
        filter: Filter::None,
        cidrs: 0,
    }];
    for &n in &p.sizes {
        for filter in [Filter::Envfence, Filter::Nft, Filter::Iptables] {
            v.push(Variant { filter, cidrs: n });
        }
    }
    v
}

fn label(v: Variant) -> String {
    match v.filter {
        Filter::None => "no filter".into(),
        f => format!("{} {}", f.name(), thousands(v.cidrs as f64)),
    }
}

/// Sets a variant up, runs the three tests, tears it down; NaN for what
/// failed (and the failure in `problems`).
fn run_variant(
    bench: &Bench,
    v: Variant,
    round: usize,
    problems: &mut Vec<String>,
    log: &mut dyn FnMut(&str),
) -> [f64; 3] {
    let mut values = [f64::NAN; 3];
    let what = format!("round {}: {}", round + 1, label(v));
    let active = match bench.setup(v) {
        Ok(a) => a,
        Err(e) => {
            problems.push(format!("{what}: setup failed: {e:#}"));
            log(problems.last().map_or("", String::as_str));
            return values;
        }
    };
    let mut line = format!("throughput: round {} {:<34}", round + 1, label(v));
    for (t, test) in Test::ALL.iter().enumerate() {
        values[t] = bench.measure(*test).unwrap_or_else(|e| {
            problems.push(format!("{what}: {test:?}: {e:#}"));
            f64::NAN
        });
        line.push_str(&match test {
            Test::Udp => format!("  udp {:.0} kpps", values[t] / 1e3),
            _ => format!("  {test:?} {:.2} Gb/s", values[t]),
        });
    }
    log(&line);
    if let Err(e) = bench.teardown(active) {
        problems.push(format!("{what}: {e:#}"));
        log(problems.last().map_or("", String::as_str));
    }
    values
}

fn measure(
    p: &Params,
    agent_bin: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(Vec<Figures>, Vec<String>)> {
    crate::lab::require_root()?;
    let policies = p
        .sizes
        .iter()
        .map(|&n| SynthPolicy::generate(n, p.seed))
        .collect::<Result<Vec<_>>>()?;
    let dir = tempfile::tempdir()?;
    let lab = Lab::new(&client_server())?;
    start_servers(&lab, p)?;
    let bench = Bench {
        lab,
        agent_bin,
        dir,
        policies,
        p,
    };
    let variants = variants(p);
    let mut figures: Vec<Figures> = variants
        .iter()
        .map(|&variant| Figures {
            variant,
            values: Default::default(),
            ratios: Default::default(),
        })
        .collect();
    let mut problems = Vec::new();
    let base = 0;
    let filtered: Vec<usize> = (1..variants.len()).collect();
    for round in 0..p.rounds {
        // Filters in a rotating order, each between two no-filter runs.
        let mut order = filtered.clone();
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left(round % n);
        }
        let mut seq = vec![base];
        for i in order {
            seq.extend([i, base]);
        }
        let mut before: Option<[f64; 3]> = None;
        let mut pending: Option<(usize, [f64; 3])> = None;
        for idx in seq {
            let v = variants[idx];
            let values = run_variant(&bench, v, round, &mut problems, log);
            for (t, value) in values.iter().enumerate() {
                figures[idx].values[t].push(*value);
            }
            if idx != base {
                pending = Some((idx, values));
                continue;
            }
            if let (Some(b), Some((i, vals))) = (before, pending.take()) {
                for t in 0..3 {
                    figures[i].ratios[t].push(vals[t] / ((b[t] + values[t]) / 2.0));
                }
            }
            before = Some(values);
        }
    }
    // Leave the node namespace as clean as it came (it is deleted next).
    bench.in_node("nft", &["flush", "ruleset"], 60)?;
    let left = bench.in_node("nft", &["list", "ruleset"], 60)?;
    if !left.trim().is_empty() {
        problems.push(format!("nft state left in the node namespace: {left}"));
    }
    drop(bench);
    Ok((figures, problems))
}

pub fn section(p: &Params, agent_bin: &Path, log: &mut dyn FnMut(&str)) -> Result<Section> {
    let (figures, problems) = measure(p, agent_bin, log)?;
    let ratio_of = |f: &Figures, t: usize| -> f64 {
        if f.variant.filter == Filter::None {
            1.0
        } else {
            median(&f.ratios[t])
        }
    };
    let mut table = Table::new(
        format!(
            "b. Throughput client pod → node (forwarding) → server pod, iperf3, {} s per run, {} rounds, medians",
            p.secs, p.rounds
        ),
        &format!(
            "filter | CIDRs | TCP 1 stream Gb/s | ratio | TCP 4 streams Gb/s | ratio | UDP 64 B ({}×{} streams) kpps | ratio",
            p.udp_procs, p.udp_streams
        ),
    );
    for f in &figures {
        let mut row = f.variant.cells();
        for t in 0..3 {
            let m = median(&f.values[t]);
            row.push(if t == 2 { fmt(m / 1e3, 0) } else { fmt(m, 2) });
            row.push(ratio(ratio_of(f, t)));
        }
        table.row(row);
    }
    table.note("Each filter's run sits between two no-filter runs; its ratio is to the mean of those two, and the table gives the median of these ratios over the rounds (the figures themselves are medians too). iperf3 clients run on CPU 0, servers on CPU 1 (`-A 0,1`), which steadies the figures on a small machine.");
    table.note("The flow is allowed by every variant (staging → production). nftables: one interval set per environment and family, `ip saddr @test ip daddr @production drop` on the forward hook. iptables: one `-s CIDR -j <env chain>` rule per IPv4 CIDR in FORWARD, the lab's subnets last (each packet walks every rule), iptables' own backend as installed.");
    table.note("TCP segments are GSO/GRO aggregates: per-packet cost hides in TCP throughput; the small-packet UDP rate and the TestRun figures show it. Sender, forwarding and receiver share the machine's cores.");
    let mut runs = Table::new(
        "b2. Every run, in order (no filter: before the first filter and after each), to show the spread",
        "filter | CIDRs | TCP 1 stream Gb/s | TCP 4 streams Gb/s | UDP kpps",
    );
    for f in &figures {
        let mut row = f.variant.cells();
        for t in 0..3 {
            row.push(
                f.values[t]
                    .iter()
                    .map(|v| if t == 2 { fmt(v / 1e3, 0) } else { fmt(*v, 1) })
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        runs.row(row);
    }
    let mut s = Section::new(Part::Throughput);
    s.intro.push("A lab of network namespaces: a client pod and a server pod, each joined by a veth pair to a node namespace that routes between them (as a CNI does). Every filter lives in the node namespace only and is removed after its run; nothing touches the host's interfaces.".into());
    s.tables.push(table);
    s.tables.push(runs);
    for prob in &problems {
        s.verbatim.push(format!("problem: {prob}"));
    }
    if !problems.is_empty() {
        s.error = Some(format!(
            "{} run(s) failed or could not be checked (listed below); their figures are missing",
            problems.len()
        ));
    }
    let find = |filter: Filter, cidrs: usize| {
        figures
            .iter()
            .find(|f| f.variant.filter == filter && f.variant.cidrs == cidrs)
    };
    for &n in &p.sizes {
        if let Some(e) = find(Filter::Envfence, n) {
            for (t, name) in [(0, "TCP 1 stream"), (1, "TCP 4 streams")] {
                let r = ratio_of(e, t);
                s.goals.push(Goal::new(
                    format!(
                        "lab {name} with envfence ≥ 97% of no filter, {} CIDRs",
                        thousands(n as f64)
                    ),
                    percent(r),
                    r >= 0.97,
                ));
            }
        }
    }
    let largest = p.sizes.iter().max().copied().unwrap_or(0);
    if let (Some(e), Some(n)) = (find(Filter::Envfence, largest), find(Filter::Nft, largest)) {
        for (t, name) in [(0, "TCP 1 stream"), (1, "TCP 4 streams")] {
            let (re, rn) = (ratio_of(e, t), ratio_of(n, t));
            s.goals.push(Goal::new(
                format!(
                    "lab {name} with envfence ≥ nftables at {} CIDRs",
                    thousands(largest as f64)
                ),
                format!("{} vs {} of no filter", percent(re), percent(rn)),
                re >= rn,
            ));
        }
    }
    Ok(s)
}

fn percent(r: f64) -> String {
    if r.is_finite() {
        format!("{:.2}%", r * 100.0)
    } else {
        "not measured".into()
    }
}
