//! A source address that cannot lie, with real traffic: in the namespace lab
//! of the example policy, a pod that writes another environment's address
//! into its packets' source (UDP datagrams and TCP SYNs, IPv4 and IPv6)
//! never reaches its target with the agent, and does without it (the lab
//! really forwards spoofed packets: Linux's own reverse-path filter is off
//! in the lab, as in most pod networks). Honest flows keep working. Both
//! routing shapes a CNI can give the node are tried: a route per pod on the
//! pod's veth (the routing table is the truth) and one bridge for every pod
//! (the routing table names the bridge; the truth is the addresses on the
//! other end of each veth).
//!
//! Needs root; the agent binary is found as in `tests/tests/lab.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use envfence_tests::agent::{agent_binary, Agent};
use envfence_tests::cli::cli_in;
use envfence_tests::fixture::{env_net, serial};
use envfence_tests::lab::{wait_until, Family, Lab, PodSpec, Routing};
use envfence_tests::spoof::unowned;

/// An address of the example policy's environment `env` (family `fam`)
/// that no pod holds.
fn claimed(env: &str, fam: Family) -> Result<IpAddr> {
    Ok(unowned(&env_net(env, fam)))
}

/// One spoofing attempt: `from` claims `src` towards `to`'s address.
struct Attempt {
    from: &'static str,
    to: &'static str,
    src: IpAddr,
    dst: IpAddr,
}

fn attempts(lab: &Lab) -> Result<Vec<Attempt>> {
    let mut out = Vec::new();
    for fam in [Family::V4, Family::V6] {
        // A test pod claims production (it would be judged prod -> prod);
        // a production pod claims test, to send data into test.
        for (from, to, env) in [("test1", "prod1", "production"), ("prod1", "test1", "test")] {
            let (src, dst) = (claimed(env, fam)?, lab.pod(to)?.ip(fam));
            out.push(Attempt { from, to, src, dst });
        }
    }
    Ok(out)
}

const UDP_PORT: u16 = 7001;
const TCP_PORT: u16 = 7002;
const DATAGRAMS: usize = 5;

/// Sends every attempt (UDP datagrams and a TCP SYN); returns, per attempt,
/// how many packets arrived at the target.
fn send_all(lab: &Lab, list: &[Attempt]) -> Result<Vec<u64>> {
    let mut counters = Vec::new();
    for a in list {
        counters.push(lab.count_arrivals(a.to, &[a.src])?);
    }
    for a in list {
        lab.spoof_udp(a.from, a.src, SocketAddr::new(a.dst, UDP_PORT), DATAGRAMS)?;
        lab.spoof_syn(
            a.from,
            a.src,
            SocketAddr::new(a.dst, TCP_PORT),
            Duration::from_millis(300),
        )?;
    }
    std::thread::sleep(Duration::from_millis(200));
    list.iter()
        .zip(&counters)
        .map(|(a, c)| c.from(a.src))
        .collect()
}

/// Honest flows of the example policy still pass: production to
/// production, and the DNS exception from test to production.
fn honest_flows_pass(lab: &Lab) -> Result<()> {
    for fam in [Family::V4, Family::V6] {
        let prod1 = lab.pod("prod1")?.ip(fam);
        for (from, port) in [("prod2", 7100), ("test1", 53)] {
            let rx = lab.udp_receiver("prod1", prod1, port)?;
            lab.udp_send(from, prod1, port, b"honest", 3)?;
            let got = rx.wait_total(3, Duration::from_secs(2));
            ensure!(
                got == 3,
                "{from} -> prod1 {prod1}:{port}/udp: {got} of 3 arrived"
            );
        }
        let _listener = lab.tcp_listen("prod1", prod1, 7200)?;
        ensure!(
            lab.tcp_connect("prod2", prod1, 7200, Duration::from_secs(2))?,
            "prod2 -> prod1 {prod1}:7200/tcp did not connect"
        );
    }
    Ok(())
}

fn spoofing_is_refused(routing: Routing) -> Result<()> {
    let _g = serial();
    let lab = Lab::new_shaped(&PodSpec::example_pods(), routing)?;
    let list = attempts(&lab)?;

    // Honest traffic first: a new bridge port may take a moment to forward
    // (neighbours are resolved on the way).
    wait_until(Duration::from_secs(5), || honest_flows_pass(&lab).is_ok());
    honest_flows_pass(&lab).context("without the agent")?;
    let without = send_all(&lab, &list)?;
    for (a, n) in list.iter().zip(&without) {
        ensure!(
            *n > DATAGRAMS as u64,
            "without the agent, {} claiming {} -> {}: only {n} packets arrived (the lab must forward spoofed packets for this test to mean anything)",
            a.from, a.src, a.dst
        );
    }

    let agent = Agent::start(&lab, &agent_binary()?)?;
    let with = send_all(&lab, &list)?;
    for (a, n) in list.iter().zip(&with) {
        ensure!(
            *n == 0,
            "{routing:?}: {} claiming {} -> {}: {n} packets arrived with the agent",
            a.from,
            a.src,
            a.dst
        );
    }
    honest_flows_pass(&lab).context("with the agent")?;

    // Counted as spoofed, never under the claimed environment.
    let per_attempt = DATAGRAMS as f64 + 1.0;
    for (dst_env, n) in [("production", 2.0), ("test", 2.0)] {
        let got = agent.packets("world", dst_env, "spoofed")?;
        ensure!(
            got >= n * per_attempt,
            "world -> {dst_env} spoofed: {got}, expected at least {}",
            n * per_attempt
        );
    }
    let strict = agent.datapath_stat("spoofed_strict")?;
    ensure!(strict >= 4.0 * per_attempt, "spoofed_strict = {strict}");
    // A claimed source is never counted under its environment: no packet
    // of production's spoofed address shows as production -> production.
    for e in agent.events() {
        if list.iter().any(|a| a.src == e.src) {
            ensure!(
                e.verdict == "spoofed" && e.rule == "source-check" && e.src_env == "world",
                "event of a spoofed source: {}",
                e.raw
            );
            ensure!(
                e.raw["source_check"]["result"].is_string(),
                "event without the source check's result: {}",
                e.raw
            );
        }
    }
    let spoofed_events = wait_until(Duration::from_secs(3), || {
        let ev = agent.events();
        list.iter()
            .all(|a| ev.iter().any(|e| e.src == a.src && e.verdict == "spoofed"))
    });
    ensure!(spoofed_events, "not every spoofed flow was reported");
    explain_says_what_the_kernel_did(&lab, &list, &agent, routing)?;
    if routing == Routing::Bridged {
        let peer = agent.datapath_stat("source_by_peer_address")?;
        ensure!(
            peer > 0.0,
            "bridged lab: no packet accepted by a peer address"
        );
    }
    agent.stop_ok(Duration::from_secs(10))?;
    drop(lab);
    Ok(())
}

/// `envfence explain SRC DST --iif VETH -o json` in the node namespace.
fn explain_iif(lab: &Lab, src: IpAddr, dst: IpAddr, iif: &str) -> Result<serde_json::Value> {
    let state = std::env::temp_dir().join(format!("{}-agent", lab.node_ns()));
    let (src, dst, port) = (src.to_string(), dst.to_string(), UDP_PORT.to_string());
    let state = state.display().to_string();
    let args = ["explain", &src, &dst, "--proto", "udp", "--port", &port];
    let args = [
        &args[..],
        &["--iif", iif, "-o", "json", "--state-dir", &state],
    ]
    .concat();
    cli_in(lab, &args)?.ok()?.json()
}

/// `explain --iif` says of every spoofing attempt what the kernel did with
/// it (refused, with the result its event carries), and accepts the pods'
/// own addresses on their veths (by route, or by peer address on a bridge).
fn explain_says_what_the_kernel_did(
    lab: &Lab,
    list: &[Attempt],
    agent: &Agent,
    routing: Routing,
) -> Result<()> {
    let events = agent.events();
    for a in list {
        let iif = lab.pod(a.from)?.node_if();
        let got = explain_iif(lab, a.src, a.dst, &iif)?;
        let c = &got["source_check"];
        let event = events
            .iter()
            .find(|e| e.src == a.src && e.verdict == "spoofed")
            .context("no event of the attempt")?;
        let kernel_result = &event.raw["source_check"]["result"];
        ensure!(
            c["accepted"] == false && &c["result"] == kernel_result,
            "explain {} {} --iif {iif}: {c}; the kernel's event says {kernel_result}",
            a.src,
            a.dst
        );
        eprintln!(
            "{routing:?}: explain {} --iif {iif}: {} ({})",
            a.src, c["result"], c["why"]
        );
    }
    let own = if routing == Routing::Bridged {
        "peer-address"
    } else {
        "route"
    };
    for fam in [Family::V4, Family::V6] {
        let (test1, prod1) = (lab.pod("test1")?, lab.pod("prod1")?);
        let got = explain_iif(lab, test1.ip(fam), prod1.ip(fam), &test1.node_if())?;
        let c = &got["source_check"];
        ensure!(
            c["accepted"] == true && c["result"] == own && c["attached"] == true,
            "{routing:?}: test1's own address on its veth: {c}"
        );
        // The same address entering another pod's veth is refused.
        let got = explain_iif(lab, test1.ip(fam), prod1.ip(fam), &prod1.node_if())?;
        ensure!(
            got["source_check"]["accepted"] == false,
            "{routing:?}: test1's address on prod1's veth: {}",
            got["source_check"]
        );
    }
    Ok(())
}

/// Per-pod routes (the routing table names each pod's veth).
#[test]
fn spoofed_sources_never_arrive_per_pod_routes() -> Result<()> {
    spoofing_is_refused(Routing::PerPod)
}

/// One bridge for every pod (the routing table names the bridge): the
/// peer's addresses are the truth.
#[test]
fn spoofed_sources_never_arrive_bridged() -> Result<()> {
    spoofing_is_refused(Routing::Bridged)
}

/// Sends 3 datagrams from `from` with source `src` to staging1 (IPv4)
/// and tells how many arrived.
fn arrived(lab: &Lab, from: &str, src: IpAddr) -> Result<u64> {
    let dst = lab.pod("staging1")?.ip(Family::V4);
    let c = lab.count_arrivals("staging1", &[src])?;
    lab.spoof_udp(from, src, SocketAddr::new(dst, UDP_PORT), 3)?;
    std::thread::sleep(Duration::from_millis(50));
    c.from(src)
}

/// Whether [`arrived`] gives `n` within `timeout`.
fn arrives(lab: &Lab, from: &str, src: IpAddr, n: u64, timeout: Duration) -> bool {
    wait_until(timeout, || {
        arrived(lab, from, src).is_ok_and(|got| got == n)
    })
}

/// An address that moves from one pod to another (a pod deleted, its IP
/// given to a new one) is accepted on the new pod's veth and refused on
/// the old one within a second: no stale state lets the old pod keep it.
fn moved_address_follows(routing: Routing) -> Result<()> {
    let _g = serial();
    let lab = Lab::new_shaped(&PodSpec::example_pods(), routing)?;
    wait_until(Duration::from_secs(5), || honest_flows_pass(&lab).is_ok());
    let agent = Agent::start(&lab, &agent_binary()?)?;
    let o = lab.pod("prod1")?.ipv4().octets();
    let moving = IpAddr::from([o[0], o[1], o[2], 77]);
    let ip_in = |who: &str, args: &str| -> Result<()> {
        envfence_tests::netns::ip_batch(lab.ns(who)?, &[args.to_owned()])
    };
    ip_in("prod1", &format!("addr add {moving}/32 dev pod0"))?;
    ensure!(
        arrives(&lab, "prod1", moving, 3, Duration::from_secs(1)),
        "{routing:?}: {moving} on prod1 is not accepted from prod1"
    );
    ensure!(
        arrived(&lab, "prod2", moving)? == 0,
        "{routing:?}: {moving} accepted from prod2 before it moved there"
    );
    // The move: off prod1, onto prod2 (and, with per-pod routes, the
    // CNI's /32 route to it through prod2's veth).
    ip_in("prod1", &format!("addr del {moving}/32 dev pod0"))?;
    ip_in("prod2", &format!("addr add {moving}/32 dev pod0"))?;
    if routing == Routing::PerPod {
        envfence_tests::netns::ip_batch(
            lab.node_ns(),
            &[format!("route add {moving}/32 dev veth-prod2")],
        )?;
    }
    let moved = std::time::Instant::now();
    let new_ok = arrives(&lab, "prod2", moving, 3, Duration::from_secs(1));
    let new_after = moved.elapsed();
    let left = Duration::from_secs(1).saturating_sub(moved.elapsed());
    let old_refused = arrives(&lab, "prod1", moving, 0, left);
    let old_after = moved.elapsed();
    eprintln!("{routing:?}: accepted on the new veth after {new_after:?}, refused on the old after {old_after:?}");
    ensure!(
        new_ok,
        "{routing:?}: {moving} not accepted from prod2 within 1 s of the move"
    );
    ensure!(
        old_refused && old_after <= Duration::from_secs(1),
        "{routing:?}: {moving} still accepted from prod1 {old_after:?} after the move"
    );
    agent.stop_ok(Duration::from_secs(10))?;
    drop(lab);
    Ok(())
}

#[test]
fn moved_address_follows_per_pod_routes() -> Result<()> {
    moved_address_follows(Routing::PerPod)
}

#[test]
fn moved_address_follows_bridged() -> Result<()> {
    moved_address_follows(Routing::Bridged)
}
