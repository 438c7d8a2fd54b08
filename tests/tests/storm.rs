//! Event storm: the lab floods forbidden traffic test1 -> prod1 over
//! thousands of distinct flows, as fast as several sender threads can, for
//! 10 s, at an agent that also writes its audit log. Then:
//!
//! - the dropped counter equals exactly the datagrams that reached the
//!   node (the senders' successful sends, less what the veth itself
//!   dropped, measured from its counters);
//! - events emitted + lost is what the kernel attempted, at least one per
//!   flow; every emitted event was printed and is in the (verified) audit
//!   log; and after the storm, once every flow reported again, the events'
//!   packet counts add up to the counter: a lost event lost no packet;
//! - the agent's CPU and memory stay bounded, and /metrics keeps answering.
//!
//! The figures are printed (`cargo test --test storm -- --nocapture`).
//!
//! Sender threads are pinned, one per CPU, so that all packets of a flow
//! are judged on one CPU: the kernel's per-flow report state is updated
//! without atomics (documented in the datapath; the counters themselves
//! are exact per-CPU counters either way).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions, FlowEvent, METRICS_ADDR};
use envfence_tests::fixture::example_lab;
use envfence_tests::lab::procfs::{cpu_seconds, status_kib};
use envfence_tests::lab::{http_get_here, wait_until, Family, POD_IF};
use envfence_tests::netns;
use serde_json::Value;

const STORM: Duration = Duration::from_secs(10);
const THREADS: usize = 3;
const SOCKETS_PER_THREAD: usize = 8;
/// Destination ports per socket (none is 53, which a port rule allows).
const DPORTS: u16 = 512;
const DPORT_BASE: u16 = 20000;
const SPORT_BASE: u16 = 30000;
const PAYLOAD: &[u8] = b"envfence storm";
const REPORT_INTERVAL_MS: u64 = 1000;
const MAX_RSS_KIB: u64 = 200 * 1024;

fn flows() -> usize {
    THREADS * SOCKETS_PER_THREAD * usize::from(DPORTS)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu % cpus()).context("cpu set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("pinning a sender thread")
}

fn bind_sockets(thread: usize) -> Result<Vec<UdpSocket>> {
    (0..SOCKETS_PER_THREAD)
        .map(|s| {
            let port = SPORT_BASE + (thread * SOCKETS_PER_THREAD + s) as u16;
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding UDP port {port} in test1"))
        })
        .collect()
}

/// Sends over every flow of `thread` until `deadline` (or exactly one
/// round when `deadline` is `None`); returns (sent, failed) datagrams.
fn send(thread: usize, dst: Ipv4Addr, deadline: Option<Instant>) -> Result<(u64, u64)> {
    pin_to(thread)?;
    let sockets = bind_sockets(thread)?;
    let (mut sent, mut failed) = (0u64, 0u64);
    loop {
        for dport in DPORT_BASE..DPORT_BASE + DPORTS {
            let to = SocketAddr::new(IpAddr::V4(dst), dport);
            for s in &sockets {
                match s.send_to(PAYLOAD, to) {
                    Ok(_) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
            if deadline.is_some_and(|d| dport % 64 == 0 && Instant::now() >= d) {
                return Ok((sent, failed));
            }
        }
        if deadline.is_none() {
            return Ok((sent, failed));
        }
    }
}

/// (tx_packets, tx_dropped, rx_packets, rx_dropped) of `ifname` in `ns`.
fn link_stats(ns: &str, ifname: &str) -> Result<[u64; 4]> {
    let out = netns::ip_output(&["-s", "-j", "-n", ns, "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)?;
    let s = &v[0]["stats64"];
    let n = |dir: &str, k: &str| s[dir][k].as_u64().context("link stat");
    Ok([
        n("tx", "packets")?,
        n("tx", "dropped")?,
        n("rx", "packets")?,
        n("rx", "dropped")?,
    ])
}

const TEST_TO_PROD_DROPPED: [(&str, &str); 3] = [
    ("src_env", "test"),
    ("dst_env", "production"),
    ("verdict", "drop"),
];

struct Counters {
    dropped: u64,
    emitted: u64,
    lost: u64,
}

fn counters(agent: &Agent) -> Result<Counters> {
    let text = agent.metrics()?;
    let v = |name: &str, labels: &[(&str, &str)]| {
        envfence_tests::metric_value(&text, name, labels).unwrap_or(0.0) as u64
    };
    Ok(Counters {
        dropped: v("envfence_packets_total", &TEST_TO_PROD_DROPPED),
        emitted: v("envfence_datapath_total", &[("kind", "events_emitted")]),
        lost: v("envfence_datapath_total", &[("kind", "events_lost")]),
    })
}

fn printed(agent: &Agent) -> u64 {
    let buf = agent.process().stdout_buffer();
    let n = buf.lock().map_or(0, |l| l.len());
    n as u64
}

/// Waits until the agent has printed every event the kernel emitted and
/// the counters stopped moving; returns them.
fn settle(agent: &Agent, printed_before: u64, emitted_before: u64) -> Result<Counters> {
    let mut last = (u64::MAX, u64::MAX);
    let mut now = counters(agent)?;
    let ok = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(300));
        let Ok(c) = counters(agent) else { return false };
        let p = printed(agent) - printed_before;
        let stable = p == c.emitted - emitted_before && (c.emitted, c.dropped) == last;
        last = (c.emitted, c.dropped);
        now = c;
        stable
    });
    ensure!(
        ok,
        "printed events ({}) never caught up with emitted ({})",
        printed(agent) - printed_before,
        now.emitted - emitted_before
    );
    Ok(now)
}

/// The metric families an answer holds, by name, for a failure message.
fn families(text: &str) -> String {
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.join(", ")
}

#[derive(Default)]
struct Poll {
    answers: u64,
    failures: Vec<String>,
    max_latency: Duration,
    max_rss_kib: u64,
}

#[test]
fn event_storm_counts_exactly_and_keeps_the_agent_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let audit = dir.path().join("audit.jsonl");
    let (_g, lab) = example_lab()?;
    let opts = AgentOptions::default()
        .report_every(REPORT_INTERVAL_MS)
        .args(["--audit-file", &audit.display().to_string()])
        .args(["--audit-max-bytes", &(16u64 << 20).to_string()])
        .args(["--audit-keep", "1000"]);
    let agent = Agent::start_with(&lab, &agent_binary()?, &opts)?;
    let pid = agent.process().pid();
    let test1_ns = lab.ns("test1")?.to_string();
    let prod1 = match lab.pod("prod1")?.ip(Family::V4) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => bail!("prod1 has no IPv4 address"),
    };
    let test1 = lab.pod("test1")?.ip(Family::V4);

    let before = counters(&agent)?;
    let printed_before = printed(&agent);
    let link_before = link_stats(&test1_ns, POD_IF)?;
    let cpu_before = cpu_seconds(pid)?;
    let rss_before = status_kib(pid, "VmRSS")?;

    // The storm, with /metrics polled (and the agent's RSS sampled) from
    // inside the node namespace all along.
    let stop = AtomicBool::new(false);
    let poll = Mutex::new(Poll::default());
    let started = Instant::now();
    let deadline = started + STORM;
    let (mut sent, mut failed) = (0u64, 0u64);
    // Filled in once the senders are done; the poller keeps polling until
    // every event of the storm was printed.
    let mut storm_end = None;
    std::thread::scope(|scope| -> Result<()> {
        let poller = scope.spawn(|| {
            lab.in_ns("node", || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let answer = http_get_here(METRICS_ADDR, "/metrics");
                    let latency = t.elapsed();
                    let mut p = poll.lock().unwrap_or_else(|e| e.into_inner());
                    match answer {
                        // The datapath statistics are exported on every
                        // scrape, zero or not, unless reading the kernel
                        // failed (then all its families vanish);
                        // envfence_packets_total has no series until the
                        // first packet is counted, which the first poll can
                        // precede.
                        Ok(text) if text.contains("envfence_datapath_total{") => p.answers += 1,
                        Ok(text) => p.failures.push(format!(
                            "an answer without the kernel's counters ({} bytes, families: {})",
                            text.len(),
                            families(&text)
                        )),
                        Err(e) => p.failures.push(format!("{e:#}")),
                    }
                    p.max_latency = p.max_latency.max(latency);
                    if let Ok(rss) = status_kib(pid, "VmRSS") {
                        p.max_rss_kib = p.max_rss_kib.max(rss);
                    }
                    drop(p);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let lab = &lab;
                scope.spawn(move || lab.in_ns("test1", || send(t, prod1, Some(deadline))))
            })
            .collect();
        for s in senders {
            let (ok, err) = s
                .join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))???;
            sent += ok;
            failed += err;
        }
        let storm_secs = started.elapsed().as_secs_f64();
        let cpu_storm = cpu_seconds(pid)? - cpu_before;
        let measured = (|| -> Result<_> {
            let after_storm = counters(&agent).context("/metrics right after the storm")?;
            let rss_after_storm = status_kib(pid, "VmRSS")?;
            // Every event of the storm printed.
            let settled = settle(&agent, printed_before, before.emitted)?;
            Ok((after_storm, rss_after_storm, settled))
        })();
        let drain_secs = started.elapsed().as_secs_f64();
        let cpu_drain = cpu_seconds(pid)? - cpu_before;
        stop.store(true, Ordering::Relaxed);
        poller
            .join()
            .map_err(|_| anyhow::anyhow!("the poller panicked"))??;
        let p = poll.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(
            p.failures.is_empty(),
            "/metrics failed during the storm or while its events were printed: {:?}",
            p.failures
        );
        drop(p);
        let (after_storm, rss_after_storm, settled) = measured?;
        storm_end = Some((
            storm_secs,
            cpu_storm,
            after_storm,
            rss_after_storm,
            settled,
            drain_secs,
            cpu_drain,
        ));
        Ok(())
    })?;
    let (storm_secs, cpu_storm, after_storm, rss_after_storm, settled, drain_secs, cpu_drain) =
        storm_end.context("the storm did not finish")?;

    // Flush: every flow reports once more (an interval after its last
    // report), until a round loses no event; then each flow's packets have
    // all been reported.
    let mut flush_sent = 0u64;
    let mut rounds = 0;
    let mut c = settled;
    loop {
        rounds += 1;
        std::thread::sleep(Duration::from_millis(REPORT_INTERVAL_MS + 200));
        let lost_before = c.lost;
        for t in 0..THREADS {
            let (ok, err) = lab.in_ns("test1", || send(t, prod1, None))??;
            flush_sent += ok;
            failed += err;
        }
        c = settle(&agent, printed_before, before.emitted)?;
        if c.lost == lost_before {
            break;
        }
        ensure!(rounds < 5, "events still lost after {rounds} flush rounds");
    }
    let link_after = link_stats(&test1_ns, POD_IF)?;
    let rss_hwm = status_kib(pid, "VmHWM")?;
    agent.stop_ok(Duration::from_secs(20))?;

    // --- Figures.
    let storm_emitted = after_storm.emitted - before.emitted;
    let storm_lost = after_storm.lost - before.lost;
    let cpu_storm = cpu_storm / storm_secs * 100.0;
    let cpu_drain = cpu_drain / drain_secs * 100.0;
    let p = poll.into_inner().unwrap_or_else(|e| e.into_inner());
    let veth_dropped = link_after[1] - link_before[1];
    println!("storm figures ({} CPUs, {THREADS} pinned sender threads, {} flows, report interval {REPORT_INTERVAL_MS} ms, audit log on):", cpus(), flows());
    println!(
        "  sent: {sent} datagrams in {storm_secs:.1} s = {:.0} packets/s ({failed} sends failed, {veth_dropped} dropped by the veth)",
        sent as f64 / storm_secs
    );
    println!(
        "  events: {storm_emitted} delivered during the storm = {:.0} events/s; {storm_lost} report attempts lost (ring buffer full; a flow whose report was lost retries with each packet)",
        storm_emitted as f64 / storm_secs
    );
    println!(
        "  agent CPU: {cpu_storm:.1}% during the storm, {cpu_drain:.1}% until every event was printed ({drain_secs:.1} s)"
    );
    println!(
        "  agent RSS: {rss_before} KiB before, {} KiB max sampled, {rss_after_storm} KiB after, {rss_hwm} KiB high-water mark",
        p.max_rss_kib
    );
    println!(
        "  /metrics: {} answers during the storm and until its events were printed, {} failures, slowest {:.0?}",
        p.answers,
        p.failures.len(),
        p.max_latency
    );
    println!("  flush: {rounds} round(s), {flush_sent} datagrams");

    // --- Exact counters: what reached the node's veth, no more, no less.
    let wire = sent + flush_sent - veth_dropped;
    let dropped = c.dropped - before.dropped;
    assert_eq!(
        dropped, wire,
        "envfence_packets_total{{test,production,drop}} grew by {dropped}; the senders put {wire} datagrams on the wire"
    );
    ensure!(sent > flows() as u64, "the storm sent too little: {sent}");

    // --- Events: emitted + lost = attempted; every emitted one printed.
    let attempted = (c.emitted - before.emitted) + (c.lost - before.lost);
    ensure!(
        attempted >= flows() as u64 && attempted <= wire,
        "report attempts {attempted}: at least one per flow ({}), at most one per packet ({wire})",
        flows()
    );
    let lines = agent.process().stdout_lines();
    let events: Vec<FlowEvent> = lines[printed_before as usize..]
        .iter()
        // The agent's policy change records (`"audit":"change"`) share stdout.
        .filter(|l| !l.starts_with("{\"audit\":\"change\""))
        .map(|l| FlowEvent::parse(l).with_context(|| format!("not an event: {l}")))
        .collect::<Result<_>>()?;
    assert_eq!(
        events.len() as u64,
        c.emitted - before.emitted,
        "printed events vs events_emitted"
    );
    // Every packet of every flow is in some event (lost reports carried
    // their packets into the next one).
    let mut reported = 0u64;
    let mut flows_seen = std::collections::HashSet::new();
    for e in &events {
        if e.src == test1 && e.dst == IpAddr::V4(prod1) && e.proto == 17 {
            assert_eq!(
                (e.verdict.as_str(), e.rule.as_str()),
                ("drop", "test-to-prod")
            );
            reported += e.packets;
            flows_seen.insert((e.sport, e.dport));
        }
    }
    assert_eq!(flows_seen.len(), flows(), "flows with an event");
    assert_eq!(
        reported, dropped,
        "packets in the events vs the dropped counter"
    );

    // --- The audit log has them all, and verifies.
    let files = envfence::audit::discover(&audit)?;
    let report = envfence::audit::verify_files(
        &files,
        &envfence::audit::VerifyOptions {
            head: Some(envfence::audit::head_path(&audit)),
            ..Default::default()
        },
    );
    println!(
        "  audit log: {} records in {} file(s), {}",
        report.records,
        files.len(),
        report
            .broken
            .as_ref()
            .map_or("verified".to_string(), |b| b.to_string())
    );
    ensure!(report.ok(), "the audit log does not verify");
    assert_eq!(
        report.events,
        events.len() as u64,
        "audit events vs printed"
    );
    ensure!(report.gaps.is_empty(), "audit gaps: {:?}", report.gaps);

    // --- Bounded agent, /metrics answering throughout.
    ensure!(
        p.failures.is_empty(),
        "/metrics failed during the storm: {:?}",
        p.failures
    );
    ensure!(p.answers >= 10, "only {} /metrics answers", p.answers);
    ensure!(
        p.max_latency < Duration::from_secs(2),
        "/metrics took {:?}",
        p.max_latency
    );
    ensure!(
        rss_hwm < MAX_RSS_KIB,
        "agent RSS high-water mark {rss_hwm} KiB"
    );
    // The agent has two worker threads: it can never use all CPUs; more
    // than 1.5 CPUs would mean it spins.
    ensure!(cpu_storm < 150.0, "agent CPU {cpu_storm:.1}%");
    drop(lab);
    Ok(())
}
