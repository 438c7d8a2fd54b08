//! Enforcement that never gaps (issue 4), proved in the namespace lab with
//! real traffic: the agent killed, restarted, reloaded, its pins migrated
//! from another ABI, interfaces coming and going by the hundred, and
//! everything removed again.
//!
//! Every test builds its own lab (so its own bpffs directory: pins are never
//! shared), gives the agent its own policy file and state directory (never
//! the host's /run/envfence), and runs with [`serial`] held: one agent-heavy
//! test at a time, so latencies are measured on a machine these tests do
//! not themselves overload. Each prints the figures it measured (run with
//! `--nocapture` to see them).
//!
//! They need root (CI runs as root) and fail with a clear message otherwise.
//! The agent binary is `$ENVFENCE_BIN` when set; otherwise
//! `cargo build -p envfence` runs once and `target/<profile>/envfence` is
//! used. Set `EFL_ECHO=1` to see the agents' stderr.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, ensure, Context, Result};
use envfence_tests::agent::{agent_binary, Agent};
use envfence_tests::fixture::serial;
use envfence_tests::lab::metrics::{http_status, wait_metric};
use envfence_tests::lab::pins::{
    check_one_program_per_hook, programs_using_map, tcx_census, Pins, ABI, HOOKS,
};
use envfence_tests::lab::probe::{
    median_max, Outcome, ProbeRecord, ProbeSpec, Prober, Tally, UdpStream,
};
use envfence_tests::lab::{wait_until, Lab, TcpListenHandle, UdpReceiver, NODE};
use envfence_tests::lifecycle::{
    agent_options, bad_policy, base_policy, count_opens, flip_policy, policy_on, write_atomically,
    ConfigMapDir,
};
use envfence_tests::netns;
use nix::sys::signal::Signal;

const METRICS: &str = envfence_tests::agent::METRICS_ADDR;
const GENERATION: &str = "envfence_policy_generation";
const RELOADS: &str = "envfence_policy_reloads_total";
const PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
/// Every probe starts a connection this often.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// A forbidden connect is given up after this (its SYN was dropped).
const FORBIDDEN_TIMEOUT: Duration = Duration::from_millis(200);
/// An allowed connect must complete within this (a dropped SYN is
/// retransmitted after 1 s, so a cut flow cannot pass for an allowed one).
const ALLOWED_TIMEOUT: Duration = Duration::from_millis(900);
/// The lab's interfaces the policies select (`veth*`).
const LAB_IFACES: &[&str] = &["veth-"];

/// One test's world: a lab of the example pods, a directory with the policy
/// file and the agent's state directory, the agent binary, and the pins as
/// the host sees them. Field order is drop order: the lab (and the agents in
/// it) goes first, then the files, then the lock.
struct World {
    lab: Lab,
    dir: tempfile::TempDir,
    bin: PathBuf,
    pins: Pins,
    _serial: MutexGuard<'static, ()>,
}

/// [`world`] with `policy` written to [`World::config`].
fn world_on(policy: &str) -> Result<World> {
    let w = world()?;
    write_atomically(&w.config(), policy)?;
    Ok(w)
}

fn world() -> Result<World> {
    let serial = serial();
    let bin = agent_binary()?;
    let lab = Lab::example()?;
    let pins = Pins::of(&lab)?;
    let dir = tempfile::Builder::new()
        .prefix("envfence-lifecycle-")
        .tempdir()?;
    std::fs::create_dir(dir.path().join("state"))?;
    Ok(World {
        lab,
        dir,
        bin,
        pins,
        _serial: serial,
    })
}

impl World {
    fn config(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn node_ns(&self) -> &str {
        self.lab.node_ns()
    }

    /// Starts the agent on [`World::config`] and waits until it is ready.
    fn start(&self, extra: &[&str]) -> Result<Agent> {
        self.start_on(&self.config(), extra)
    }

    fn start_on(&self, config: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start_with(
            &self.lab,
            &self.bin,
            &agent_options(config, &self.state_dir(), extra),
        )
    }

    fn ip(&self, pod: &str) -> IpAddr {
        self.lab.pod(pod).expect("pod exists").ipv4().into()
    }
    fn ip6(&self, pod: &str) -> IpAddr {
        self.lab.pod(pod).expect("pod exists").ipv6().into()
    }

    /// TCP listeners on `PORT` of the given pods (IPv4 and IPv6), and, as
    /// long as no agent runs, one connect from every client pod of these
    /// tests to each of them. In a fresh lab the first IPv6 SYNs across the
    /// node can be lost while neighbours are being resolved (seen without
    /// any agent: the first ~150 ms of connects, each then retransmitted
    /// after 1 s); probes must measure envfence, not that.
    fn listeners(&self, pods: &[&str]) -> Result<Vec<TcpListenHandle>> {
        let mut out = Vec::new();
        for pod in pods {
            out.push(self.lab.tcp_listen(pod, self.ip(pod), PORT)?);
            out.push(self.lab.tcp_listen(pod, self.ip6(pod), PORT)?);
        }
        for to in pods {
            for from in ["prod1", "test1", "staging1", "dev1"] {
                if from == *to {
                    continue;
                }
                for ip in [self.ip(to), self.ip6(to)] {
                    ensure!(
                        self.lab
                            .tcp_connect(from, ip, PORT, Duration::from_secs(5))?,
                        "lab without agent: {from} -> {to} ({ip}) does not connect"
                    );
                }
            }
        }
        Ok(out)
    }

    /// [`World::listeners`] on prod1 and prod2, and a UDP receiver on
    /// prod1's `UDP_PORT` (it counts what test1 gets through).
    fn traffic(&self) -> Result<(Vec<TcpListenHandle>, UdpReceiver)> {
        let listeners = self.listeners(&["prod1", "prod2"])?;
        let rx = self.lab.udp_receiver("prod1", self.ip("prod1"), UDP_PORT)?;
        Ok((listeners, rx))
    }

    fn probe(&self, from: &str, to: &str, v6: bool, timeout: Duration) -> Result<ProbeSpec> {
        ProbeSpec::between(&self.lab, from, to, v6, PORT, timeout)
    }

    /// Probers on `probes` ((from, to, IPv6?, forbidden?); a forbidden one
    /// given up after [`FORBIDDEN_TIMEOUT`], an allowed one after
    /// [`ALLOWED_TIMEOUT`]) and a forbidden UDP stream test1 -> prod1.
    fn guard(&self, probes: &[(&str, &str, bool, bool)]) -> Result<Guard> {
        let mut specs = Vec::new();
        for &(from, to, v6, forbidden) in probes {
            let timeout = if forbidden {
                FORBIDDEN_TIMEOUT
            } else {
                ALLOWED_TIMEOUT
            };
            specs.push(self.probe(from, to, v6, timeout)?);
        }
        Ok(Guard {
            prober: Prober::start(specs, PROBE_EVERY)?,
            udp: UdpStream::start(
                self.lab.ns("test1")?,
                SocketAddr::new(self.ip("prod1"), UDP_PORT),
                PROBE_EVERY,
            )?,
            forbidden: probes.iter().map(|p| p.3).collect(),
            test1: self.ip("test1"),
        })
    }

    /// Waits (up to 5 s) until the agent's metric `name{labels}` reaches
    /// `want`; the value and when it was seen.
    fn reached(
        &self,
        agent: &Agent,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        what: &str,
    ) -> Result<(f64, Instant)> {
        wait_metric(
            self.node_ns(),
            METRICS,
            name,
            labels,
            Duration::from_secs(5),
            move |v| v >= want,
        )?
        .ok_or_else(|| {
            anyhow!(
                "{what}: {name} did not reach {want} within 5 s; agent stderr:\n{}",
                agent.process().stderr_tail(20)
            )
        })
    }

    /// [`World::reached`] for the policy generation `want`.
    fn generation_reached(&self, agent: &Agent, want: u64, what: &str) -> Result<(f64, Instant)> {
        self.reached(agent, GENERATION, &[], want as f64, what)
    }

    /// [`World::reached`] for `n` failed reloads.
    fn failures_reached(&self, agent: &Agent, n: f64, what: &str) -> Result<(f64, Instant)> {
        self.reached(agent, RELOADS, &[("result", "failure")], n, what)
    }

    /// One connect `from` -> `to`:PORT (IPv4).
    fn connects(&self, from: &str, to: &str, timeout: Duration) -> Result<bool> {
        self.lab.tcp_connect(from, self.ip(to), PORT, timeout)
    }

    /// [`flip_policy`]`(staging_blocked)` is in force: staging1 -> prod1
    /// is dropped and dev1 -> prod1 passes when `staging_blocked`, the
    /// reverse otherwise.
    fn flip_in_force(&self, staging_blocked: bool, what: &str) -> Result<()> {
        for (from, blocked) in [("staging1", staging_blocked), ("dev1", !staging_blocked)] {
            let (timeout, wrong) = if blocked {
                (Duration::from_millis(500), "connected")
            } else {
                (Duration::from_secs(2), "failed")
            };
            ensure!(
                self.connects(from, "prod1", timeout)? != blocked,
                "{what}: {from} -> prod1 {wrong}"
            );
        }
        Ok(())
    }

    /// test1 -> prod1 is dropped (TCP and UDP) and prod1 -> prod2 passes.
    fn assert_enforcing(&self, rx: &UdpReceiver, what: &str) -> Result<()> {
        ensure!(
            !self.connects("test1", "prod1", Duration::from_millis(500))?,
            "{what}: test1 -> prod1 tcp/{PORT} connected: enforcement is gone"
        );
        let before = rx.count_from(self.ip("test1"));
        self.lab
            .udp_send("test1", self.ip("prod1"), UDP_PORT, b"forbidden", 3)?;
        std::thread::sleep(Duration::from_millis(200));
        ensure!(
            rx.count_from(self.ip("test1")) == before,
            "{what}: test1 -> prod1 udp/{UDP_PORT} delivered: enforcement is gone"
        );
        ensure!(
            self.connects("prod1", "prod2", Duration::from_secs(2))?,
            "{what}: prod1 -> prod2 tcp/{PORT} failed: an allowed flow is cut"
        );
        Ok(())
    }

    /// Nothing of envfence left: no pin root, no program on any interface of
    /// the node, test1 -> prod1 flows again.
    fn assert_nothing_left(&self, what: &str) -> Result<()> {
        ensure!(
            !self.pins.root().exists(),
            "{what}: {} still exists: {:?}",
            self.pins.root().display(),
            self.pins.tree()
        );
        for chain in tcx_census(self.node_ns())? {
            for hook in HOOKS {
                ensure!(
                    chain.hook(hook).is_empty(),
                    "{what}: {} {hook} still has {:?}",
                    chain.ifname,
                    chain.hook(hook)
                );
            }
        }
        ensure!(
            self.connects("test1", "prod1", Duration::from_secs(2))?,
            "{what}: test1 -> prod1 still blocked: enforcement is not gone"
        );
        Ok(())
    }

    /// The agent's `path` answers with HTTP status `want`.
    fn expect_status(&self, path: &str, want: u16) -> Result<()> {
        let (code, body) = http_status(self.node_ns(), METRICS, path)?;
        ensure!(code == want, "{path} {code}: {body}");
        Ok(())
    }

    /// The lab interfaces' ifindexes by name (`veth-*` in the node).
    fn lab_ifindexes(&self) -> Result<BTreeMap<String, u32>> {
        Ok(tcx_census(self.node_ns())?
            .into_iter()
            .filter(|c| c.ifname.starts_with("veth-"))
            .map(|c| (c.ifname, c.ifindex))
            .collect())
    }

    /// (link id, program id) of every pinned link of the lab's interfaces.
    fn link_ids(&self) -> Result<BTreeMap<String, (u32, u32)>> {
        let mut out = BTreeMap::new();
        for (name, ifindex) in self.lab_ifindexes()? {
            for hook in HOOKS {
                out.insert(
                    format!("{name}/{hook}"),
                    self.pins.link_info_in(ABI, ifindex, hook)?,
                );
            }
        }
        Ok(out)
    }
}

/// The two probes most tests keep running: test1 -> prod1 (forbidden)
/// and prod1 -> prod2 (allowed), IPv4.
const GUARDED: &[(&str, &str, bool, bool)] = &[
    ("test1", "prod1", false, true),
    ("prod1", "prod2", false, false),
];

/// Probers and a forbidden UDP stream running while a test changes
/// something ([`World::guard`]).
struct Guard {
    prober: Prober,
    udp: UdpStream,
    forbidden: Vec<bool>,
    test1: IpAddr,
}

/// What a [`Guard`] saw: every probe's records (and whether it was
/// forbidden), their violations, the UDP datagrams sent and delivered.
struct Guarded {
    results: Vec<(ProbeSpec, Vec<ProbeRecord>, bool)>,
    problems: Vec<String>,
    sent: u64,
    leaked: u64,
}

impl Guard {
    /// Stops probing and sending; `rx` counts what test1 got through.
    fn finish(self, rx: &UdpReceiver) -> Result<Guarded> {
        let results = self.prober.finish()?;
        let sent = self.udp.finish()?;
        let mut problems = Vec::new();
        let results: Vec<_> = results
            .into_iter()
            .zip(self.forbidden)
            .map(|((spec, records), forbidden)| {
                problems.extend(violations(&spec, forbidden, &records));
                (spec, records, forbidden)
            })
            .collect();
        Ok(Guarded {
            results,
            problems,
            sent,
            leaked: rx.count_from(self.test1),
        })
    }
}

impl Guarded {
    /// Prints every probe's tally.
    fn print_tallies(&self) {
        for (spec, records, _) in &self.results {
            println!("  {:<16} {}", spec.name, Tally::of(records));
        }
    }

    /// No probe was wrong and no forbidden datagram was delivered.
    fn check(&self) -> Result<()> {
        println!(
            "  udp test1->prod1: {} sent, {} delivered (forbidden)",
            self.sent, self.leaked
        );
        ensure!(self.problems.is_empty(), "gaps: {:#?}", self.problems);
        ensure!(
            self.leaked == 0,
            "{} of {} forbidden datagrams delivered",
            self.leaked,
            self.sent
        );
        Ok(())
    }
}

/// Every pinned link of `after` is `before`'s (adopted, not replaced) and
/// runs another program (the new agent's).
fn adopted(
    before: &BTreeMap<String, (u32, u32)>,
    after: &BTreeMap<String, (u32, u32)>,
    what: &str,
) -> Result<()> {
    for (key, (link, prog)) in after {
        let (link0, prog0) = before[key];
        ensure!(
            *link == link0,
            "{what}: {key} has link {link}, was {link0}: the link was replaced, not adopted"
        );
        ensure!(
            *prog != prog0,
            "{what}: {key} still runs the old program {prog}"
        );
    }
    Ok(())
}

fn sigterm(agent: &Agent) -> Result<()> {
    agent.stop_ok(Duration::from_secs(15))
}

/// `envfence_policy_reloads_total{result}`.
fn reloads(agent: &Agent, result: &str) -> Result<f64> {
    agent.metric(RELOADS, &[("result", result)])
}

fn generation(agent: &Agent) -> Result<u64> {
    Ok(agent.metric(GENERATION, &[])? as u64)
}

fn stderr_has(agent: &Agent, needle: &str) -> bool {
    agent
        .process()
        .stderr_lines()
        .iter()
        .any(|l| l.contains(needle))
}

/// Records of probes whose expectation is fixed: forbidden ones must never
/// reach their destination, allowed ones must always connect. Returns the
/// violations.
fn violations(spec: &ProbeSpec, forbidden: bool, records: &[ProbeRecord]) -> Vec<String> {
    let Some(first) = records.first().map(|r| r.start) else {
        return vec![format!("{}: no probe at all", spec.name)];
    };
    records
        .iter()
        .filter(|r| {
            if forbidden {
                r.outcome.reached()
            } else {
                !r.outcome.connected()
            }
        })
        .map(|r| {
            format!(
                "{}: {:?} after {:?}, started {:?} after the first probe",
                spec.name,
                r.outcome,
                r.end - r.start,
                r.start - first
            )
        })
        .collect()
}

/// Phase of a probe by when it started.
fn phase(r: &ProbeRecord, marks: &[(Instant, &'static str)]) -> &'static str {
    let mut name = "before";
    for (at, n) in marks {
        if r.start >= *at {
            name = n;
        }
    }
    name
}

// ---------------------------------------------------------------------------

/// kill -9 under probes: zero forbidden connections succeed, zero allowed
/// ones fail, before, during (no agent at all) and after the restart; the
/// kernel counters continue across it.
#[test]
fn kill_9_under_probes_never_gaps() -> Result<()> {
    let w = world_on(&base_policy())?;
    let (_l, rx) = w.traffic()?;
    let agent = w.start(&[])?;
    let gen0 = generation(&agent)?;

    let began = Instant::now();
    let guard = w.guard(&[
        ("test1", "prod1", false, true),
        ("test1", "prod1", true, true),
        ("prod1", "prod2", false, false),
        ("prod1", "prod2", true, false),
    ])?;

    std::thread::sleep(Duration::from_secs(3));
    let drop_labels = [
        ("src_env", "test"),
        ("dst_env", "production"),
        ("verdict", "drop"),
    ];
    let dropped_before = agent.metric("envfence_packets_total", &drop_labels)?;
    let killed = Instant::now();
    agent.kill()?;
    std::thread::sleep(Duration::from_secs(2));
    let restarting = Instant::now();
    let agent = w.start(&[])?;
    let ready = Instant::now();
    let startup = ready - restarting;
    // At least 10 s of probing, and 3 s after the restart.
    while began.elapsed() < Duration::from_secs(10) || ready.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut guarded = guard.finish(&rx)?;
    let dropped_after = agent.metric("envfence_packets_total", &drop_labels)?;
    let gen1 = generation(&agent)?;

    let marks = [(killed, "during"), (ready, "after")];
    let mut problems = Vec::new();
    let mut during_forbidden = 0;
    println!(
        "kill -9: probed {:?}; no agent for {:?} (killed, 2 s, restart took {startup:?})",
        began.elapsed(),
        ready - killed
    );
    for (spec, records, forbidden) in &guarded.results {
        for p in ["before", "during", "after"] {
            let in_phase: Vec<&ProbeRecord> =
                records.iter().filter(|r| phase(r, &marks) == p).collect();
            let t = Tally::of(in_phase.iter().copied());
            println!(
                "  {:<16} {:<6} {} ({})",
                spec.name,
                p,
                t,
                if *forbidden { "forbidden" } else { "allowed" }
            );
            if t.attempts < 20 {
                problems.push(format!("{} {p}: only {} attempts", spec.name, t.attempts));
            }
            if *forbidden && p == "during" {
                during_forbidden += t.attempts;
            }
        }
    }
    println!(
        "  kernel counter test->production drop: {dropped_before} before the kill, {dropped_after} after the restart; generation {gen0} -> {gen1}"
    );
    guarded.problems.extend(problems);
    guarded.check()?;
    ensure!(
        guarded.sent > 100,
        "udp test1 -> prod1: only {} sent",
        guarded.sent
    );
    // The new agent adopted the pinned counters, which the kernel kept
    // incrementing while no agent ran.
    ensure!(
        dropped_after >= dropped_before + during_forbidden as f64,
        "counters did not continue: {dropped_before} -> {dropped_after} with {during_forbidden} forbidden SYNs dropped meanwhile"
    );
    ensure!(gen1 == gen0 + 1, "generation {gen0} -> {gen1}");
    check_one_program_per_hook(w.node_ns(), LAB_IFACES)?;
    sigterm(&agent)
}

/// 50 reloads alternating two policies that differ on two pairs in opposite
/// senses, under continuous probes of those pairs and of two control pairs.
#[test]
fn fifty_reloads_under_probes_are_atomic() -> Result<()> {
    let w = world_on(&flip_policy(true))?;
    let _l = w.listeners(&["prod1", "prod2"])?;
    let agent = w.start(&[])?;
    let gen0 = generation(&agent)?;
    let specs = vec![
        w.probe("staging1", "prod1", false, FORBIDDEN_TIMEOUT)?,
        w.probe("dev1", "prod1", false, FORBIDDEN_TIMEOUT)?,
        w.probe("test1", "prod1", false, FORBIDDEN_TIMEOUT)?,
        w.probe("prod1", "prod2", false, ALLOWED_TIMEOUT)?,
    ];
    let started = Instant::now();
    let prober = Prober::start(specs, PROBE_EVERY)?;
    // (staging blocked?, in force from, until the next write)
    let mut windows: Vec<(bool, Instant, Instant)> = Vec::new();
    let mut from = started;
    let mut latencies = Vec::new();
    const RELOADS_N: u64 = 50;
    for i in 1..=RELOADS_N {
        std::thread::sleep(Duration::from_millis(200));
        let staging_blocked = i % 2 == 0;
        let text = flip_policy(staging_blocked);
        let written = Instant::now();
        windows.push((!staging_blocked, from, written));
        if i % 2 == 0 {
            write_atomically(&w.config(), &text)?;
        } else {
            // In place, as `echo >` or a ConfigMap-less editor does.
            std::fs::write(w.config(), &text)?;
        }
        let want = gen0 + i;
        let (value, at) = w.generation_reached(&agent, want, &format!("reload {i}"))?;
        ensure!(
            value == want as f64,
            "reload {i}: generation {value}, want {want}"
        );
        latencies.push(at - written);
        from = at;
    }
    std::thread::sleep(Duration::from_millis(400));
    let end = Instant::now();
    windows.push((RELOADS_N.is_multiple_of(2), from, end));
    let results = prober.finish()?;

    // Varying pairs: staging1 (blocked when `staging_blocked`), dev1 (the
    // reverse). Probes entirely inside a window must match its policy; the
    // others must match one of the two (connect or time out, nothing else).
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut straddling = 0;
    for (k, (spec, records)) in results.iter().enumerate() {
        match k {
            0 | 1 => {
                for r in records {
                    if !matches!(r.outcome, Outcome::Connected | Outcome::TimedOut) {
                        problems.push(format!(
                            "{}: {:?} matches neither policy",
                            spec.name, r.outcome
                        ));
                        continue;
                    }
                    let window = windows
                        .iter()
                        .find(|(_, from, until)| r.start >= *from && r.end <= *until);
                    match window {
                        Some((staging_blocked, ..)) => {
                            checked += 1;
                            // staging1 (k = 0) is blocked with staging, dev1 the reverse.
                            let blocked = *staging_blocked == (k == 0);
                            if r.outcome.connected() == blocked {
                                problems.push(format!(
                                    "{}: {:?} {:?} after the start, while the policy {} it was in force",
                                    spec.name,
                                    r.outcome,
                                    r.start - started,
                                    if blocked { "dropping" } else { "allowing" }
                                ));
                            }
                        }
                        None => straddling += 1,
                    }
                }
            }
            2 => problems.extend(violations(spec, true, records)),
            _ => problems.extend(violations(spec, false, records)),
        }
    }
    let (median, max) = median_max(&latencies);
    println!(
        "50 reloads (file change: in place and by rename) in {:?}: reload latency (write -> generation metric) median {median:?}, max {max:?}",
        end - started
    );
    for (spec, records) in &results {
        println!("  {:<16} {}", spec.name, Tally::of(records));
    }
    println!(
        "  varying pairs: {checked} probes checked against the policy in force, {straddling} straddled a reload"
    );
    ensure!(problems.is_empty(), "mismatches: {problems:#?}");
    ensure!(checked >= 200, "only {checked} probes fell inside a window");
    // Nothing changes any more: the agent has no reason to read the file.
    let opens = count_opens(&w.config(), Duration::from_secs(1))?;
    ensure!(
        opens == 0,
        "the idle agent opened its policy file {opens} times in 1 s"
    );

    // After the last reload: the last policy (staging blocked, dev allowed).
    w.flip_in_force(true, "after the last reload")?;
    let success = reloads(&agent, "success")?;
    let failure = reloads(&agent, "failure")?;
    ensure!(
        success == (RELOADS_N + 1) as f64 && failure == 0.0,
        "reloads: {success} successes, {failure} failures"
    );
    ensure!(generation(&agent)? == gen0 + RELOADS_N);
    sigterm(&agent)
}

/// A bad file on SIGHUP (errors, then a missing file) changes nothing in
/// the kernel, is counted and logged with its errors; the next good file is
/// applied. Also measures the SIGHUP reload latency.
#[test]
fn bad_file_on_sighup_keeps_the_policy() -> Result<()> {
    let w = world_on(&flip_policy(true))?;
    let (_l, rx) = w.traffic()?;
    let agent = w.start(&["--no-watch"])?;
    let gen0 = generation(&agent)?;
    let hup = || agent.process().signal(Signal::SIGHUP);

    let mut latencies = Vec::new();
    for i in 1..=10u64 {
        write_atomically(&w.config(), &flip_policy(i % 2 == 0))?;
        let sent = Instant::now();
        hup()?;
        let (_, at) = w.generation_reached(&agent, gen0 + i, &format!("SIGHUP reload {i}"))?;
        latencies.push(at - sent);
    }
    let (median, max) = median_max(&latencies);
    println!(
        "10 SIGHUP reloads: latency (signal -> generation metric) median {median:?}, max {max:?}"
    );
    let good_gen = gen0 + 10;
    // In force: staging blocked, dev allowed.
    let in_force = |what: &str| -> Result<()> {
        w.flip_in_force(true, what)?;
        w.assert_enforcing(&rx, what)
    };
    in_force("before the bad file")?;

    // A file with two errors.
    write_atomically(&w.config(), &bad_policy())?;
    let sent = Instant::now();
    hup()?;
    let seen = w.failures_reached(&agent, 1.0, "the bad file as a failed reload")?;
    println!("bad file refused after {:?}", seen.1 - sent);
    ensure!(
        generation(&agent)? == good_gen,
        "a bad file changed the generation"
    );
    let config = w.pins.config()?;
    ensure!(
        u64::from(config.generation) == good_gen,
        "the kernel's generation moved: {}",
        config.generation
    );
    in_force("after the bad file")?;
    let file = w.config().display().to_string();
    ensure!(
        wait_until(Duration::from_secs(2), || stderr_has(
            &agent,
            "policy reload refused"
        )),
        "no refusal in the log:\n{}",
        agent.process().stderr_tail(20)
    );
    // Both errors, each with file:line:column.
    let errs = agent.process().stderr_lines();
    for needle in ["unknown environment", "unknown verdict"] {
        ensure!(
            errs.iter()
                .any(|l| l.contains(needle) && l.contains(&format!("{file}:"))),
            "the log does not name {needle:?} with its place in {file}:\n{}",
            agent.process().stderr_tail(20)
        );
    }

    // The file gone.
    std::fs::remove_file(w.config())?;
    hup()?;
    w.failures_reached(&agent, 2.0, "the missing file as a failed reload")?;
    ensure!(wait_until(Duration::from_secs(2), || stderr_has(
        &agent,
        "cannot read the policy file"
    )));
    in_force("with the file gone")?;
    ensure!(generation(&agent)? == good_gen);
    w.expect_status("/readyz", 200)?;

    // A good file again.
    write_atomically(&w.config(), &flip_policy(false))?;
    hup()?;
    w.generation_reached(&agent, good_gen + 1, "the good file")?;
    w.flip_in_force(false, "the good file again")?;
    ensure!(reloads(&agent, "failure")? == 2.0);
    ensure!(reloads(&agent, "success")? == 12.0);
    sigterm(&agent)
}

/// The way the kubelet updates a mounted ConfigMap (`..data` swapped by a
/// rename) is picked up; a bad version swapped in is refused and counted.
#[test]
fn configmap_data_swap_reloads() -> Result<()> {
    let w = world()?;
    let cm_dir = w.dir.path().join("configmap");
    std::fs::create_dir(&cm_dir)?;
    let mut cm = ConfigMapDir::create(&cm_dir, "policy.yaml", &flip_policy(true))?;
    let _l = w.listeners(&["prod1", "prod2"])?;
    let agent = w.start_on(&cm.path(), &[])?;
    let gen0 = generation(&agent)?;
    ensure!(!w.connects("staging1", "prod1", Duration::from_millis(500))?);

    let swap = |cm: &mut ConfigMapDir, text: &str, want: f64, name: &str| -> Result<Duration> {
        let before = Instant::now();
        cm.update(text)?;
        let labels: &[(&str, &str)] = if name == RELOADS {
            &[("result", "failure")]
        } else {
            &[]
        };
        let (_, at) = w.reached(&agent, name, labels, want, "the ..data swap")?;
        Ok(at - before)
    };
    let l1 = swap(&mut cm, &flip_policy(false), (gen0 + 1) as f64, GENERATION)?;
    w.flip_in_force(false, "the swapped-in policy (staging allowed)")?;
    let l2 = swap(&mut cm, &bad_policy(), 1.0, RELOADS)?;
    ensure!(generation(&agent)? == gen0 + 1);
    ensure!(
        w.connects("staging1", "prod1", Duration::from_secs(2))?,
        "a bad ConfigMap version changed the policy"
    );
    let l3 = swap(&mut cm, &flip_policy(true), (gen0 + 2) as f64, GENERATION)?;
    w.flip_in_force(true, "swapped back")?;
    println!(
        "ConfigMap ..data swaps: applied after {l1:?} and {l3:?}; bad version refused after {l2:?}"
    );
    ensure!(reloads(&agent, "failure")? == 1.0);
    ensure!(reloads(&agent, "success")? == 3.0);
    let ts = agent.metric("envfence_policy_last_reload_success_timestamp_seconds", &[])?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    ensure!(
        ts > now - 30.0 && ts <= now + 1.0,
        "last reload timestamp {ts} (now {now})"
    );
    sigterm(&agent)
}

/// One veth the churn test created.
#[derive(Clone, Debug)]
struct Churned {
    name: String,
    /// `ip link add` started.
    created: Instant,
    /// `ip link add` returned (the interface exists).
    exists: Option<Instant>,
    ifindex: Option<u32>,
    attached: Option<Instant>,
    deleted: Option<Instant>,
    unpinned: Option<Instant>,
}

/// 100 veths appear one after the other in the node: each is attached
/// within 1 s (its link pins exist; both hooks hold exactly envfence); then
/// all are removed: no link pin, no ATTACHED entry, no count remains.
#[test]
fn hundred_veths_attached_within_a_second_and_forgotten() -> Result<()> {
    const N: usize = 100;
    let w = world_on(&base_policy())?;
    let agent = w.start(&[])?;
    let lab_links = w.pins.link_pins();
    ensure!(lab_links.len() == 14, "lab link pins: {lab_links:?}");
    let baseline = agent.metric("envfence_attached_interfaces", &[])?;
    ensure!(baseline == 7.0, "attached interfaces at start: {baseline}");

    // A watcher inside the node namespace: ifindexes of the new veths, and
    // when their pins appear and disappear.
    let churn: Arc<Mutex<Vec<Churned>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the watcher on every path out of the test.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop_watcher = StopOnDrop(stop.clone());
    let watcher = {
        let (churn, stop, pins, ns) = (
            churn.clone(),
            stop.clone(),
            w.pins.clone(),
            w.node_ns().to_string(),
        );
        std::thread::spawn(move || {
            netns::in_netns(&ns, move || {
                while !stop.load(Ordering::SeqCst) {
                    {
                        let mut churn = churn.lock().unwrap_or_else(|p| p.into_inner());
                        let now = Instant::now();
                        for c in churn.iter_mut() {
                            if c.ifindex.is_none() {
                                c.ifindex = nix::net::if_::if_nametoindex(c.name.as_str()).ok();
                            }
                            let Some(ifindex) = c.ifindex else { continue };
                            if c.attached.is_none() && pins.attached(ifindex) {
                                c.attached = Some(now);
                            }
                            if c.deleted.is_some()
                                && c.unpinned.is_none()
                                && HOOKS.iter().all(|h| !pins.link_pin(ifindex, h).exists())
                            {
                                c.unpinned = Some(now);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
    };
    let churned = || churn.lock().unwrap_or_else(|p| p.into_inner());
    let snapshot = || churned().clone();
    let began = Instant::now();
    for i in 0..N {
        let name = format!("vethc{i}");
        churned().push(Churned {
            name: name.clone(),
            created: Instant::now(),
            exists: None,
            ifindex: None,
            attached: None,
            deleted: None,
            unpinned: None,
        });
        // The peer's name (pc*) matches no include pattern.
        w.lab.add_veth(NODE, &name, &format!("pc{i}"))?;
        churned()[i].exists = Some(Instant::now());
        if i % 2 == 0 {
            netns::ip(&["-n", w.node_ns(), "link", "set", &name, "up"])?;
        }
    }
    let created_in = began.elapsed();
    let all_attached = wait_until(Duration::from_secs(3), || {
        snapshot().iter().all(|c| c.attached.is_some())
    });
    let list = snapshot();
    let latencies: Vec<Duration> = list
        .iter()
        .filter_map(|c| c.attached.map(|a| a - c.created))
        .collect();
    let from_exit: Vec<Duration> = list
        .iter()
        .filter_map(|c| Some(c.attached?.saturating_duration_since(c.exists?)))
        .collect();
    let (median, max) = median_max(&latencies);
    let (median_exit, max_exit) = median_max(&from_exit);
    println!(
        "{N} veths created in {created_in:?}: attach latency (both link pins exist, polled every 2 ms) from `ip link add` started: median {median:?}, max {max:?}; from `ip link add` returned: median {median_exit:?}, max {max_exit:?}"
    );
    ensure!(
        all_attached,
        "never attached: {:?}",
        list.iter()
            .filter(|c| c.attached.is_none())
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    let late: Vec<String> = list
        .iter()
        .filter(|c| {
            c.attached
                .is_some_and(|a| a - c.created > Duration::from_secs(1))
        })
        .map(|c| format!("{} after {:?}", c.name, c.attached.map(|a| a - c.created)))
        .collect();
    ensure!(late.is_empty(), "attached later than 1 s: {late:?}");
    ensure!(
        wait_until(Duration::from_secs(2), || {
            agent.metric("envfence_attached_interfaces", &[]).ok() == Some(7.0 + N as f64)
        }),
        "envfence_attached_interfaces is not {}",
        7 + N
    );
    let ifindexes: Vec<u32> = list.iter().filter_map(|c| c.ifindex).collect();
    let entries = w.pins.attached_entries()?;
    let missing: Vec<&u32> = ifindexes.iter().filter(|i| !entries.contains(i)).collect();
    ensure!(
        missing.is_empty(),
        "no ATTACHED entry for ifindexes {missing:?}"
    );
    check_one_program_per_hook(w.node_ns(), &["veth-", "vethc"])?;
    let (code, body) = http_status(w.node_ns(), METRICS, "/readyz")?;
    ensure!(code == 200, "/readyz with {N} new veths: {code} {body}");

    // All removed.
    let began = Instant::now();
    for i in 0..N {
        let name = format!("vethc{i}");
        churned()[i].deleted = Some(Instant::now());
        netns::ip(&["-n", w.node_ns(), "link", "del", &name])?;
    }
    let removed_in = began.elapsed();
    let all_gone = wait_until(Duration::from_secs(5), || {
        snapshot().iter().all(|c| c.unpinned.is_some())
    });
    stop.store(true, Ordering::SeqCst);
    watcher
        .join()
        .map_err(|_| anyhow!("the pin watcher panicked"))??;
    let list = snapshot();
    let gone: Vec<Duration> = list
        .iter()
        .filter_map(|c| Some(c.unpinned? - c.deleted?))
        .collect();
    let (median, max) = median_max(&gone);
    println!(
        "{N} veths removed in {removed_in:?}: link pins gone after median {median:?}, max {max:?}"
    );
    ensure!(
        all_gone,
        "link pins of removed veths remain: {:?}",
        w.pins.link_pins()
    );
    ensure!(
        wait_until(Duration::from_secs(2), || w.pins.link_pins() == lab_links),
        "link pins are {:?}, want the lab's {:?}",
        w.pins.link_pins(),
        lab_links
    );
    let entries = w.pins.attached_entries()?;
    let left: Vec<&u32> = ifindexes.iter().filter(|i| entries.contains(i)).collect();
    ensure!(left.is_empty(), "ATTACHED entries left for {left:?}");
    ensure!(entries.len() == 7, "ATTACHED entries: {entries:?}");
    ensure!(
        wait_until(Duration::from_secs(2), || {
            agent.metric("envfence_attached_interfaces", &[]).ok() == Some(7.0)
        }),
        "envfence_attached_interfaces did not come back to 7"
    );
    check_one_program_per_hook(w.node_ns(), LAB_IFACES)?;
    ensure!(
        agent.process().is_running(),
        "the agent died: {}",
        agent.process().stderr_tail(20)
    );
    sigterm(&agent)
}

/// 20 restarts, alternating SIGTERM and SIGKILL, under probes: after each,
/// exactly one envfence program per hook on every interface (the same
/// pinned links, switched to the new agent's programs), no probe ever
/// wrong, and no old program left loaded.
#[test]
fn twenty_restarts_one_program_per_hook() -> Result<()> {
    const RESTARTS: usize = 20;
    let w = world_on(&base_policy())?;
    let (_l, rx) = w.traffic()?;
    let mut agent = w.start(&[])?;
    let links0 = w.link_ids()?;
    let guard = w.guard(GUARDED)?;
    let began = Instant::now();
    let mut startups = Vec::new();
    let mut links_before = links0;
    for r in 0..RESTARTS {
        let how = if r % 2 == 0 { "SIGTERM" } else { "SIGKILL" };
        if r % 2 == 0 {
            sigterm(&agent)?;
        } else {
            agent.kill()?;
        }
        let t = Instant::now();
        agent = w
            .start(&[])
            .with_context(|| format!("restart {} (after {how})", r + 1))?;
        startups.push(t.elapsed());
        let chains = check_one_program_per_hook(w.node_ns(), LAB_IFACES)
            .with_context(|| format!("after restart {} ({how})", r + 1))?;
        ensure!(chains.len() == 7, "lab interfaces: {:?}", chains.keys());
        let links = w.link_ids()?;
        adopted(&links_before, &links, &format!("restart {}", r + 1))?;
        for (key, (_, prog)) in &links {
            let (ifname, hook) = key.split_once('/').unwrap_or_default();
            let attached = &chains[ifname].hook(hook)[0];
            ensure!(
                attached.0 == *prog,
                "{key}: tcx runs program {:?}, the pinned link {prog}",
                attached
            );
        }
        links_before = links;
    }
    let probed = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let guarded = guard.finish(&rx)?;
    let (median, max) = median_max(&startups);
    println!(
        "{RESTARTS} restarts (SIGTERM/SIGKILL alternately) in {probed:?}: agent start to ready median {median:?}, max {max:?}"
    );
    guarded.print_tallies();
    guarded.check()?;
    w.assert_enforcing(&rx, "after 20 restarts")?;

    // Only the live agent's three programs (the two hooks and their
    // decision stage) use the lab's maps: every old agent's hooks were
    // released when their links switched, its stage when the new agent's
    // replaced it in the pinned stage table.
    let config_id = w.pins.config_map_id(ABI)?;
    let mut progs = Vec::new();
    let only_live = wait_until(Duration::from_secs(5), || {
        progs = programs_using_map(config_id);
        let mut names: Vec<&str> = progs.iter().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        // The kernel keeps 15 characters of a program's name.
        names == ["envfence_decide", "envfence_egress", "envfence_ingres"]
    });
    ensure!(only_live, "programs using the lab's maps: {progs:?}");
    sigterm(&agent)
}

/// Starting with an invalid policy: with nothing pinned the agent refuses
/// to start; over a pinned policy it keeps enforcing it, is ready, and
/// counts the failure; without the saved copy of the pinned policy it
/// still enforces it but is not ready.
#[test]
fn startup_with_an_invalid_policy() -> Result<()> {
    // Nothing pinned: refuse, load nothing.
    let w = world_on(&bad_policy())?;
    let (_l, rx) = w.traffic()?;
    let opts = agent_options(&w.config(), &w.state_dir(), &[]);
    let proc = w.lab.spawn_in_ns(NODE, opts.command(&w.lab, &w.bin)?)?;
    let status = proc
        .wait_timeout(Duration::from_secs(30))?
        .ok_or_else(|| anyhow!("the agent with an invalid policy did not exit"))?;
    let stderr = proc.stderr_lines().join("\n");
    println!("refused: {status}; stderr:\n{stderr}");
    ensure!(
        !status.success(),
        "the agent started with an invalid policy"
    );
    let file = w.config().display().to_string();
    for needle in [
        "nothing was loaded",
        "unknown environment",
        "unknown verdict",
        &format!("{file}:"),
    ] {
        ensure!(stderr.contains(needle), "stderr lacks {needle:?}");
    }
    ensure!(
        w.pins.tree().is_empty(),
        "pins were created: {:?}",
        w.pins.tree()
    );
    for chain in tcx_census(w.node_ns())? {
        ensure!(chain.ingress.is_empty() && chain.egress.is_empty());
    }
    ensure!(
        w.connects("test1", "prod1", Duration::from_secs(2))?,
        "test1 -> prod1 blocked with no agent"
    );

    // A good policy pinned, then the agent restarted on a bad file.
    write_atomically(&w.config(), &base_policy())?;
    let agent = w.start(&[])?;
    let good_gen = generation(&agent)?;
    let before = w.link_ids()?;
    sigterm(&agent)?;
    write_atomically(&w.config(), &bad_policy())?;
    let agent = w.start(&[])?;
    ensure!(stderr_has(&agent, "keeping the policy pinned"));
    ensure!(stderr_has(&agent, "unknown environment"));
    w.assert_enforcing(&rx, "invalid policy over a pinned one")?;
    w.expect_status("/readyz", 200)?;
    w.expect_status("/healthz", 200)?;
    ensure!(reloads(&agent, "failure")? == 1.0);
    ensure!(reloads(&agent, "success")? == 0.0);
    ensure!(generation(&agent)? == good_gen, "generation changed");
    ensure!(agent.metric("envfence_attached_interfaces", &[])? == 7.0);
    check_one_program_per_hook(w.node_ns(), LAB_IFACES)?;
    adopted(&before, &w.link_ids()?, "invalid policy over a pinned one")?;
    // The file fixed: picked up by the watch.
    write_atomically(&w.config(), &base_policy())?;
    w.generation_reached(&agent, good_gen + 1, "the fixed file")?;
    ensure!(reloads(&agent, "success")? == 1.0);
    w.assert_enforcing(&rx, "after fixing the file")?;

    // Pinned, but the saved copy lost: still enforcing, not ready.
    agent.kill()?;
    std::fs::remove_dir_all(w.state_dir())?;
    write_atomically(&w.config(), &bad_policy())?;
    let agent = w.start(&[])?;
    w.assert_enforcing(&rx, "invalid policy, pinned one unknown")?;
    let (code, body) = http_status(w.node_ns(), METRICS, "/readyz")?;
    println!("without the saved policy: /readyz {code} {}", body.trim());
    ensure!(code == 503, "/readyz {code}: {body}");
    ensure!(reloads(&agent, "failure")? == 1.0);
    check_one_program_per_hook(w.node_ns(), LAB_IFACES)?;
    sigterm(&agent)
}

/// `--detach-on-exit`, then `envfence cleanup` after a SIGKILL: nothing of
/// envfence stays in the lab's bpffs directory, on any interface or in the
/// state directory, traffic test -> production flows again, and what is not
/// envfence's is left alone.
#[test]
fn detach_on_exit_and_cleanup_leave_nothing() -> Result<()> {
    let w = world_on(&base_policy())?;
    let (_l, rx) = w.traffic()?;
    let bpffs = w
        .lab
        .bpffs_dir()
        .ok_or_else(|| anyhow!("no bpffs"))?
        .to_path_buf();
    // Neighbours that are not envfence's.
    let other = bpffs.join("not-envfence");
    std::fs::create_dir(&other)?;
    let keep = w.state_dir().join("keep.txt");
    std::fs::write(&keep, "not envfence's")?;
    let saved = w.state_dir().join(format!("policy-v{ABI}.json"));
    let left_alone = || -> Result<()> {
        ensure!(!saved.exists(), "the saved policy stays");
        ensure!(
            other.is_dir() && keep.is_file(),
            "something not envfence's was removed"
        );
        Ok(())
    };

    let agent = w.start(&["--detach-on-exit"])?;
    w.assert_enforcing(&rx, "with --detach-on-exit")?;
    ensure!(saved.exists() && w.pins.link_pins().len() == 14);
    sigterm(&agent)?;
    w.assert_nothing_left("after --detach-on-exit")?;
    left_alone()?;

    let agent = w.start(&[])?;
    w.assert_enforcing(&rx, "before the kill")?;
    agent.kill()?;
    w.assert_enforcing(&rx, "killed, before the cleanup")?;
    let out = netns::output_with_timeout(
        Command::new(&w.bin).args([
            "cleanup",
            "--pin-root",
            &w.pins.root().display().to_string(),
            "--state-dir",
            &w.state_dir().display().to_string(),
        ]),
        Duration::from_secs(30),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "envfence cleanup: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "cleanup failed: {}", out.status);
    w.assert_nothing_left("after envfence cleanup")?;
    left_alone()
}

/// A pinned layout of the previous ABI (the agent's pins moved from
/// v<ABI> to v<ABI-1>, its saved state renamed likewise) is adopted by a
/// new agent without a window: its links are switched to the new programs,
/// re-pinned under v<ABI>, and v<ABI-1> is removed.
#[test]
fn previous_abi_layout_is_migrated_without_a_window() -> Result<()> {
    let w = world_on(&base_policy())?;
    let (_l, rx) = w.traffic()?;
    let agent = w.start(&[])?;
    let ifaces = w.lab_ifindexes()?;
    let before = w.link_ids()?;
    sigterm(&agent)?;
    let old_abi = ABI - 1;
    let old_config_map = w.pins.config_map_id(ABI)?;

    let guard = w.guard(GUARDED)?;
    std::thread::sleep(Duration::from_millis(500));
    // The previous ABI's layout: rename(2) works on bpffs.
    std::fs::rename(w.pins.dir(), w.pins.version_dir(old_abi))
        .context("renaming the version directory on bpffs")?;
    std::fs::rename(
        w.state_dir().join(format!("policy-v{ABI}.json")),
        w.state_dir().join(format!("policy-v{old_abi}.json")),
    )?;
    let old_links = w.pins.link_pins_in(old_abi);
    ensure!(old_links.len() == 14, "old layout links: {old_links:?}");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let agent = w.start(&[])?;
    let startup = t.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let guarded = guard.finish(&rx)?;
    println!("v{old_abi} -> v{ABI} migration: agent ready after {startup:?}");
    guarded.print_tallies();
    guarded.check()?;

    // The final layout: only v<ABI>, with its maps and one pin per
    // interface and hook.
    let tree = w.pins.tree();
    println!("  layout: {tree:?}");
    ensure!(
        !w.pins.version_dir(old_abi).exists(),
        "v{old_abi} remains: {tree:?}"
    );
    let mut want: Vec<String> = vec![format!("v{ABI}/"), format!("v{ABI}/links/")];
    for map in envfence::datapath::pins::PINNED_MAPS {
        want.push(format!("v{ABI}/{map}"));
    }
    for ifindex in ifaces.values() {
        for hook in HOOKS {
            want.push(format!("v{ABI}/links/if{ifindex}-{hook}"));
        }
    }
    want.sort();
    ensure!(tree == want, "layout {tree:?}, want {want:?}");
    adopted(&before, &w.link_ids()?, "after the migration")?;
    check_one_program_per_hook(w.node_ns(), LAB_IFACES)?;
    w.assert_enforcing(&rx, "after the migration")?;
    // The old ABI's maps are no longer used by any program.
    let mut left = Vec::new();
    ensure!(
        wait_until(Duration::from_secs(5), || {
            left = programs_using_map(old_config_map);
            left.is_empty()
        }),
        "programs still use the old layout's maps: {left:?}"
    );
    ensure!(agent.process().is_running());
    sigterm(&agent)
}

/// Interfaces deselected or removed while no agent ran: the next agent
/// leaves no link pin and no `ATTACHED` entry for them. An entry left for
/// a deselected interface would make the egress program skip packets that
/// entered there as "already judged at ingress" although nothing judges
/// them any more: test1 -> prod1 would pass once veth-test1 is deselected.
#[test]
fn restart_with_fewer_interfaces_leaves_no_stale_entry() -> Result<()> {
    let w = world_on(&base_policy())?;
    let (_l, rx) = w.traffic()?;
    let agent = w.start(&[])?;
    w.lab.add_veth(NODE, "vethgone", "pgone")?;
    let gone = netns::in_netns(w.node_ns(), || nix::net::if_::if_nametoindex("vethgone"))??;
    ensure!(
        wait_until(Duration::from_secs(2), || w.pins.attached(gone)),
        "vethgone was not attached"
    );
    let ifaces = w.lab_ifindexes()?;
    let test1 = ifaces["veth-test1"];
    sigterm(&agent)?;

    // While no agent runs: one interface removed, the selection narrowed.
    netns::ip(&["-n", w.node_ns(), "link", "del", "vethgone"])?;
    let narrow = ["veth-prod*", "veth-staging*", "veth-dev*", "veth-ops*"];
    let narrow_policy = policy_on("", &narrow);
    write_atomically(&w.config(), &narrow_policy)?;
    let agent = w.start(&[])?;
    let selected: Vec<u32> = ifaces
        .iter()
        .filter(|(n, _)| *n != "veth-test1")
        .map(|(_, i)| *i)
        .collect();
    let mut want = selected.clone();
    want.sort();
    let stale_pin =
        |p: &String| p.starts_with(&format!("if{test1}-")) || p.starts_with(&format!("if{gone}-"));
    let check = |what: &str| -> Result<()> {
        // The generation metric moves before the interfaces are reconciled.
        wait_until(Duration::from_secs(2), || {
            w.pins.attached_entries().ok().as_ref() == Some(&want)
                && !w.pins.link_pins().iter().any(stale_pin)
        });
        let entries = w.pins.attached_entries()?;
        ensure!(
            entries == want,
            "{what}: ATTACHED holds {entries:?}, want {want:?} (veth-test1 is {test1}, vethgone was {gone})"
        );
        let pins = w.pins.link_pins();
        ensure!(
            !pins.iter().any(stale_pin),
            "{what}: stale link pins: {pins:?}"
        );
        ensure!(
            pins.len() == 2 * selected.len(),
            "{what}: link pins {pins:?}"
        );
        check_one_program_per_hook(w.node_ns(), &narrow.map(|p| p.trim_end_matches('*')))?;
        ensure!(agent.metric("envfence_attached_interfaces", &[])? == selected.len() as f64);
        // test1's packets are now judged at prod1's egress.
        w.assert_enforcing(&rx, what)
    };
    check("restarted with a narrower selection")?;

    // The same by reloads while running: wide, then narrow again.
    let g = generation(&agent)?;
    write_atomically(&w.config(), &base_policy())?;
    w.generation_reached(&agent, g + 1, "reload to veth*")?;
    ensure!(
        wait_until(Duration::from_secs(2), || w.pins.attached(test1)),
        "veth-test1 not attached again"
    );
    write_atomically(&w.config(), &narrow_policy)?;
    w.generation_reached(&agent, g + 2, "reload to the narrow selection")?;
    check("reloaded to a narrower selection")?;
    sigterm(&agent)
}

/// The classifier's fill on /metrics: `envfence_map_entries` of
/// `EF_ENV_V4`/`EF_ENV_V6` are the chunks both slots' tables take, out of
/// `envfence_map_capacity`, the pool (a reload needs its tables' worth of
/// the rest); `EF_PFX_*` count both slots' prefixes. After the first load
/// one slot holds tables (a root and a few chunks), after a reload both.
#[test]
fn map_fill_counts_the_classifier_pool_of_both_slots() -> Result<()> {
    use envfence_ebpf::trie;
    let w = world_on(&flip_policy(true))?;
    let agent = w.start(&[])?;
    const ENTRIES: &str = "envfence_map_entries";
    let root = f64::from(trie::ROOT_CHUNKS);
    for map in ["EF_ENV_V4", "EF_ENV_V6"] {
        let cap = agent.metric("envfence_map_capacity", &[("map", map)])?;
        ensure!(cap == f64::from(trie::CHUNKS), "{map}: capacity {cap}");
        let first = agent.metric(ENTRIES, &[("map", map)])?;
        ensure!(
            first > root && first < 2.0 * root,
            "{map}: {first} chunks after the first load (one slot: a root of {root} and a few)"
        );
    }
    let prefixes_first = agent.metric(ENTRIES, &[("map", "EF_PFX_V4")])?;
    ensure!(prefixes_first >= 1.0, "EF_PFX_V4: {prefixes_first}");
    let gen0 = generation(&agent)?;
    write_atomically(&w.config(), &flip_policy(false))?;
    w.generation_reached(&agent, gen0 + 1, "the reload")?;
    for map in ["EF_ENV_V4", "EF_ENV_V6"] {
        let both = agent.metric(ENTRIES, &[("map", map)])?;
        ensure!(
            both > 2.0 * root && both < 4.0 * root,
            "{map}: {both} chunks after a reload (two slots)"
        );
    }
    // The two policies have the same CIDRs: twice the prefixes.
    let prefixes_both = agent.metric(ENTRIES, &[("map", "EF_PFX_V4")])?;
    ensure!(
        prefixes_both == 2.0 * prefixes_first,
        "EF_PFX_V4: {prefixes_both} after the reload, {prefixes_first} before"
    );
    agent.stop_ok(Duration::from_secs(15))
}
