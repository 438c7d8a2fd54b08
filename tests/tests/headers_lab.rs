//! Issue 13's real-world headers with real traffic in the namespace lab of
//! the example policy, where Linux can make them:
//!
//! - **BIG TCP**: every veth on the way from prod1 through the node to
//!   prod2 gets `gso_max_size`, `gro_max_size`, `gso_ipv4_max_size` and
//!   `gro_ipv4_max_size` 185000 (set over rtnetlink: iproute2 6.1 knows
//!   only the first two). A 100 MB TCP transfer prod1 -> prod2 (allowed:
//!   production -> production), IPv4 and IPv6, must complete byte for byte
//!   without the agent and with it; tcpdump on the node's `veth-prod1`
//!   proves that packets over 64 KiB crossed the interface the agent judges
//!   them at (IPv4 total length 0, IPv6 payload length 0: BIG TCP's mark),
//!   and the agent's `ip_length_from_skb` statistic that it judged them as
//!   such, none dropped.
//! - **VXLAN on UDP 8472** (the Linux and flannel port) with real vxlan
//!   devices in prod1 and prod2: test -> production inside the tunnel
//!   arrives without the agent and is dropped with it; production ->
//!   production inside still arrives (`tests/src/gen/wire.rs`'s VXLAN
//!   scenario on another port).
//!
//! Each test first proves the shape reaches its target without the agent.
//! Addresses come from the lab's pods and the example policy's
//! environments (`expect`, `wire::VxlanAddrs`), never restated here. Needs
//! root; the agent binary is found as in `tests/tests/lab.rs`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use envfence_tests::agent::{agent_binary, proto, Agent};
use envfence_tests::expect::Policy;
use envfence_tests::fixture::{example_lab, serial};
use envfence_tests::gen::wire::{self, check_phase, table};
use envfence_tests::gen::{pcap, VXLAN_LINUX_PORT};
use envfence_tests::lab::{Family, Lab, PodSpec, NODE, POD_IF};
use envfence_tests::netns::{self, set_gso_sizes, GsoSizes};

/// BIG TCP's size limit on every veth of the path (what Cilium and the
/// kernel's selftests use).
const BIG: u32 = 185_000;
/// Bytes each transfer sends.
const TRANSFER: usize = 100 * 1024 * 1024;
const PORT: u16 = 5201;

/// A lab of the example policy's two production pods.
fn prod_lab() -> Result<Lab> {
    let pods: Vec<PodSpec> = PodSpec::example_pods()
        .into_iter()
        .filter(|p| p.name == "prod1" || p.name == "prod2")
        .collect();
    ensure!(pods.len() == 2, "the example pods have no prod1 and prod2");
    Lab::new(&pods)
}

/// Raises the GSO / GRO limits of every veth end prod1 -> node -> prod2.
fn enable_big_tcp(lab: &Lab) -> Result<()> {
    let ends = [
        ("prod1", POD_IF.to_string()),
        (NODE, lab.pod("prod1")?.node_if()),
        (NODE, lab.pod("prod2")?.node_if()),
        ("prod2", POD_IF.to_string()),
    ];
    for (who, ifname) in ends {
        let got = set_gso_sizes(lab.ns(who)?, &ifname, GsoSizes::all(BIG))?;
        ensure!(
            got == GsoSizes::all(BIG),
            "{who}/{ifname}: the kernel kept {got:?} (BIG TCP needs Linux 6.3+)"
        );
    }
    // Linux (6.18) sends an IPv6 BIG TCP packet with a hop-by-hop Jumbo
    // Payload header of 8 bytes that its MSS does not count (a NIC driver
    // strips it; a veth does not), and a router refuses such a packet
    // whose segments would then exceed the next link's MTU (Packet Too
    // Big, `Ip6InTooBigErrors`), with or without envfence. A pod MTU 8
    // bytes under the node's leaves that room.
    netns::ip_batch(lab.ns("prod1")?, &[format!("link set {POD_IF} mtu 1492")])?;
    Ok(())
}

/// What one transfer did.
struct Transfer {
    received: usize,
    elapsed: Duration,
}

/// Sends [`TRANSFER`] bytes over TCP from prod1 to prod2's address of
/// `fam`; returns what prod2 read.
fn transfer(lab: &Lab, fam: Family) -> Result<Transfer> {
    let dst = SocketAddr::new(lab.pod("prod2")?.ip(fam), PORT);
    let listener = lab
        .in_ns("prod2", || TcpListener::bind(dst))?
        .with_context(|| format!("binding {dst} in prod2"))?;
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut conn, _) = listener.accept().context("accepting")?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match conn.read(&mut buf).context("reading")? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let start = Instant::now();
    let sent = lab.in_ns("prod1", move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .with_context(|| format!("connecting to {dst}"))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = TRANSFER;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).context("writing")?;
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })?;
    // The listener thread ends on EOF or its read timeout in any case.
    let received = server
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
    sent?;
    Ok(Transfer {
        received,
        elapsed: start.elapsed(),
    })
}

/// What tcpdump saw of prod1's packets on the node.
#[derive(Debug, Default)]
struct Seen {
    packets: usize,
    /// Packets longer than 65535 bytes (their IP length field cannot hold
    /// them), and how many of those carry BIG TCP's 0 there.
    over_64k: usize,
    zero_length: usize,
    /// IPv6 packets over 64 KiB whose first extension header is a
    /// hop-by-hop header opening with a Jumbo Payload option (the form
    /// Linux 6.18 sends).
    jumbo_option: usize,
    largest: u32,
}

fn seen_in(cap: &pcap::Capture, fam: Family) -> Seen {
    let mut s = Seen::default();
    for p in &cap.packets {
        let d = &p.data;
        let (et, len_at) = match fam {
            Family::V4 => ([0x08, 0x00], 14 + 2),
            Family::V6 => ([0x86, 0xdd], 14 + 4),
        };
        if d.get(12..14) != Some(&et[..]) {
            continue;
        }
        s.packets += 1;
        s.largest = s.largest.max(p.orig_len);
        if p.orig_len > 65535 {
            s.over_64k += 1;
            if d.get(len_at..len_at + 2) == Some(&[0, 0][..]) {
                s.zero_length += 1;
            }
            if fam == Family::V6 && d.get(20) == Some(&0) && d.get(56..58) == Some(&[0xc2, 4][..]) {
                s.jumbo_option += 1;
            }
        }
    }
    s
}

/// Runs `f` while tcpdump captures what enters the node's `veth-prod1`
/// (`filter`, 128 bytes of each packet); returns `f`'s result and the
/// capture.
fn capture<T>(
    lab: &Lab,
    dir: &Path,
    name: &str,
    filter: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, pcap::Capture)> {
    let ifname = lab.pod("prod1")?.node_if();
    let file = dir.join(format!("{ifname}-{name}.pcap"));
    let mut cmd = Command::new("tcpdump");
    let args = format!("-i {ifname} -n -U --immediate-mode -s 128 -Z root");
    cmd.args(args.split(' ')).arg("-w").arg(&file).args(filter);
    let dump = lab.spawn_in_ns(NODE, cmd)?;
    ensure!(
        dump.wait_for_stderr("listening on", Duration::from_secs(10)),
        "tcpdump on {ifname} did not start: {}",
        dump.stderr_tail(5)
    );
    let result = f();
    std::thread::sleep(Duration::from_millis(300));
    dump.terminate(Duration::from_secs(5))?;
    let result = result?;
    let cap = pcap::read(&file)?;
    ensure!(
        cap.linktype == pcap::LINKTYPE_ETHERNET,
        "{}: link type {}",
        file.display(),
        cap.linktype
    );
    Ok((result, cap))
}

/// Runs one transfer of `fam` with tcpdump on the node's `veth-prod1`.
fn captured_transfer(lab: &Lab, fam: Family, dir: &Path) -> Result<(Transfer, Seen)> {
    // By address: `tcp port N` would miss the IPv6 packets whose next
    // header is the hop-by-hop Jumbo Payload header.
    let host = lab.pod("prod2")?.ip(fam).to_string();
    let (t, cap) = capture(lab, dir, fam.name(), &["host", &host], || {
        transfer(lab, fam)
    })?;
    Ok((t, seen_in(&cap, fam)))
}

/// BIG TCP between two production pods: the 100 MB transfers complete,
/// with packets over 64 KiB (length field 0) on the wire the agent judges,
/// without and with the agent; with it they are judged with the skb's
/// length (`ip_length_from_skb`), allowed, none malformed or dropped.
#[test]
fn big_tcp_transfers_complete_with_the_agent() -> Result<()> {
    let _g = serial();
    let lab = prod_lab()?;
    let policy = Policy::example()?;
    for fam in [Family::V4, Family::V6] {
        let (p1, p2) = (lab.pod("prod1")?.ip(fam), lab.pod("prod2")?.ip(fam));
        let e = policy.decide(p1, p2, proto::TCP, Some(PORT));
        let back = policy.decide(p2, p1, proto::TCP, Some(40000));
        ensure!(
            e.passes() && back.passes() && e.src_env == e.dst_env,
            "prod1 -> prod2 must be an allowed flow within one environment: {e:?} / {back:?}"
        );
    }
    enable_big_tcp(&lab)?;
    let dir = tempfile::tempdir()?;
    let mut big_packets = 0;
    for agent_on in [false, true] {
        let agent = if agent_on {
            Some(Agent::start(&lab, &agent_binary()?)?)
        } else {
            None
        };
        for fam in [Family::V4, Family::V6] {
            let (t, seen) = captured_transfer(&lab, fam, dir.path())?;
            let mbps = t.received as f64 * 8.0 / t.elapsed.as_secs_f64() / 1e6;
            eprintln!(
                "{} {}: {} of {TRANSFER} bytes in {:.2?} ({mbps:.0} Mbit/s); on veth-prod1: {} packets, {} over 64 KiB ({} with length field 0, {} with a jumbo option), largest {} bytes",
                if agent_on { "with the agent" } else { "without the agent" },
                fam.name(),
                t.received,
                t.elapsed,
                seen.packets,
                seen.over_64k,
                seen.zero_length,
                seen.jumbo_option,
                seen.largest
            );
            ensure!(
                t.received == TRANSFER,
                "{}: the transfer stopped after {} of {TRANSFER} bytes (agent running: {agent_on})",
                fam.name(),
                t.received
            );
            ensure!(
                seen.over_64k >= 10 && seen.zero_length == seen.over_64k,
                "{}: no BIG TCP on veth-prod1 (agent running: {agent_on}): {seen:?}",
                fam.name()
            );
            if agent_on {
                big_packets += seen.over_64k;
            }
        }
        if let Some(agent) = agent {
            let from_skb = agent.datapath_stat("ip_length_from_skb")?;
            let allowed = agent.packets("production", "production", "allow")?;
            eprintln!(
                "agent: ip_length_from_skb {from_skb}, production -> production allowed {allowed}"
            );
            ensure!(
                from_skb >= big_packets as f64,
                "ip_length_from_skb {from_skb} < the {big_packets} packets over 64 KiB tcpdump saw"
            );
            ensure!(allowed >= from_skb, "allowed {allowed} < {from_skb}");
            let malformed = agent.datapath_stat("malformed")?;
            ensure!(malformed == 0.0, "{malformed} packets malformed");
            let dropped = agent.packets("production", "production", "drop")?;
            ensure!(dropped == 0.0, "{dropped} production packets dropped");
            agent.stop_ok(Duration::from_secs(10))?;
        }
    }
    drop(lab);
    Ok(())
}

/// VXLAN on UDP 8472 with real vxlan devices between prod1 and prod2:
/// inner test -> production arrives without the agent and is dropped with
/// it; inner production -> production arrives both times; IPv4 and IPv6
/// inside.
#[test]
fn vxlan_8472_test_to_production_inside_is_dropped() -> Result<()> {
    let (_g, lab) = example_lab()?;
    let policy = Policy::example()?;
    let a = wire::VxlanAddrs::example()?;
    // The scenario's inner flows are what the policy says they are.
    let inner = [
        (IpAddr::from(a.test4), IpAddr::from(a.peer4), false),
        (a.prod4.into(), a.peer4.into(), true),
        (a.test6.into(), a.peer6.into(), false),
        (a.prod6.into(), a.peer6.into(), true),
    ];
    for (src, dst, passes) in inner {
        let e = policy.decide(src, dst, proto::UDP, Some(9000));
        ensure!(e.passes() == passes, "{src} -> {dst}: {e:?}");
    }
    let (p1, p2) = (lab.pod("prod1")?.ipv4(), lab.pod("prod2")?.ipv4());
    let outer = policy.decide(p1.into(), p2.into(), proto::UDP, Some(VXLAN_LINUX_PORT));
    ensure!(outer.passes(), "the outer flow must be allowed: {outer:?}");

    let scenario = wire::vxlan_scenario_on(&lab, "e13vx0", VXLAN_LINUX_PORT)?;
    ensure!(
        scenario.probes.iter().filter(|p| p.forbidden).count() == 2,
        "two forbidden inner flows expected"
    );
    // Without the agent every probe arrives, and the tunnel really is on
    // 8472: the node sees VXLAN (flags 0x08, VNI 42) to that port.
    let dir = tempfile::tempdir()?;
    let port = VXLAN_LINUX_PORT.to_string();
    let (without, cap) = capture(
        &lab,
        dir.path(),
        "vxlan",
        &["udp", "dst", "port", &port],
        || scenario.run(),
    )?;
    eprintln!("{} without the agent:\n{}", scenario.name, table(&without));
    check_phase(&scenario, &without, false)?;
    let vxlan = cap
        .packets
        .iter()
        .filter(|p| {
            let d = &p.data;
            // Ethernet, IPv4 without options, UDP to the port, VXLAN.
            d.get(12..14) == Some(&[0x08, 0x00][..])
                && d.get(23) == Some(&17)
                && d.get(36..38) == Some(&VXLAN_LINUX_PORT.to_be_bytes()[..])
                && d.get(42..50) == Some(&[0x08, 0, 0, 0, 0, 0, 42, 0][..])
        })
        .count();
    ensure!(
        vxlan >= scenario.probes.len(),
        "{vxlan} VXLAN datagrams to {VXLAN_LINUX_PORT} seen on the node, {} probes sent",
        scenario.probes.len()
    );
    let agent = Agent::start(&lab, &agent_binary()?)?;
    let with = scenario.run()?;
    eprintln!("{} with the agent:\n{}", scenario.name, table(&with));
    check_phase(&scenario, &with, true)?;
    let tunneled = agent.datapath_stat("tunneled")?;
    let dropped = agent.packets("test", "production", "drop")?;
    eprintln!("agent: tunneled {tunneled}, test -> production dropped {dropped}");
    ensure!(tunneled >= 4.0, "tunneled {tunneled}");
    ensure!(dropped >= 2.0, "test -> production dropped {dropped}");
    agent.stop_ok(Duration::from_secs(10))?;
    drop(lab);
    Ok(())
}
