//! The source check in the real programs (BPF_PROG_TEST_RUN), against the
//! real routing table of a lab node: frames "arrive" on the node's veths
//! (the TestRun context names the device) and each case says, by hand, what
//! a reverse-path check must answer — an oracle written from the rules in
//! the README, not from the kernel code. Every case runs in enforce and in
//! audit mode; the decision tag, the TC action, the statistics and the
//! event's `source_check.result` are all checked.
//!
//! Needs root.

use std::net::IpAddr;

use anyhow::{ensure, Context as _, Result};
use envfence::datapath::Hook;
use envfence::policy::{Mode, SourceCheck, SourceMode};
use envfence_ebpf::{stat, tag, verdict};
use envfence_tests::fixture::{env_host, pod_addr};
use envfence_tests::gen::diff::example_policy;
use envfence_tests::lab::Family::{V4, V6};
use envfence_tests::lab::{require_root, Lab};
use envfence_tests::packet::{ip_frame, v6_octets, Packet};
use envfence_tests::testrun::{KernelHarness, ACTION_NEXT, ACTION_SHOT};

/// What the check must answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Accepted: the packet is judged by the policy.
    Accepted,
    /// Refused with this `source_check.result`.
    Spoofed(&'static str),
}

/// (the node's interface the frame arrives on, its check, whether it
/// trusts peer addresses, source, destination, the answer).
type Case = (&'static str, SourceMode, bool, IpAddr, IpAddr, Want);

use SourceMode::{Loose, Off, Strict};
use Want::{Accepted, Spoofed};

/// The production host `offset` past the network's start (IPv4).
fn prod_host(offset: u128) -> IpAddr {
    env_host("production", V4, offset)
}

/// The blackhole route the test adds: a /24 of production no pod uses.
fn blackhole() -> String {
    format!("{}/24", prod_host(0x0800))
}

/// The address peers claim: a production host behind `veth-test1`.
fn peer() -> IpAddr {
    prod_host(0x0163)
}

/// The lab node routes each pod's /24 and /64 through its veth (test1's
/// through `veth-test1`, prod1's through `veth-prod1` ...); the test adds
/// the [`blackhole`] route and [`peer`] as a peer address of `veth-test1`
/// and `veth-prod1`.
fn cases() -> Vec<Case> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("a literal address");
    let mapped = |a: IpAddr| IpAddr::V6(v6_octets(a).into());
    let [[t4, p4, q4], [t6, p6, q6]] = [V4, V6].map(|fam| {
        [("test", 1), ("production", 1), ("production", 2)].map(|(env, n)| pod_addr(env, fam, n))
    });
    let t1 = "veth-test1";
    // Production hosts no route covers, one behind the blackhole route,
    // and the node's own address on prod1's link.
    let (unrouted4, unrouted6) = (prod_host(0x0909), env_host("production", V6, 0x9_0009));
    let (blackholed, node) = (prod_host(0x0808), prod_host(0x0101));
    let via_other = Spoofed("route-via-other-interface");
    let (no_unicast, martian) = (Spoofed("no-unicast-route"), Spoofed("martian"));
    vec![
        // The pod's own addresses, routed back through its veth.
        (t1, Strict, false, t4, p4, Accepted),
        (t1, Strict, false, t6, p6, Accepted),
        (t1, Strict, false, mapped(t4), mapped(p4), Accepted),
        // Another pod's address: its route leaves through another veth.
        (t1, Strict, false, p4, q4, via_other),
        (t1, Strict, false, p6, q6, via_other),
        (t1, Strict, false, mapped(p4), mapped(q4), via_other),
        // An address of an environment that no route covers.
        (t1, Strict, false, unrouted4, p4, no_unicast),
        (t1, Strict, false, unrouted6, p6, no_unicast),
        // A blackhole route.
        (t1, Strict, false, blackholed, p4, Spoofed("no-route")),
        (t1, Loose, false, blackholed, p4, Spoofed("no-route")),
        // A node address claimed from outside.
        (t1, Loose, false, node, q4, no_unicast),
        // Loose: any unicast route will do.
        (t1, Loose, false, p4, q4, Accepted),
        (t1, Loose, false, p6, q6, Accepted),
        (t1, Loose, false, unrouted4, p4, no_unicast),
        // Peer addresses: accepted on the veth they sit behind, only when the
        // interface trusts them.
        (t1, Strict, true, peer(), q4, Accepted),
        (t1, Strict, false, peer(), q4, via_other),
        ("veth-prod1", Strict, true, peer(), q4, Accepted),
        ("veth-prod2", Strict, true, peer(), q4, via_other),
        // Off: nothing checked.
        (t1, Off, false, unrouted4, p4, Accepted),
        // Scope rules, decided before any route.
        (
            t1,
            Strict,
            false,
            ip("0.0.0.0"),
            ip("255.255.255.255"),
            Accepted,
        ),
        (t1, Strict, false, ip("0.0.0.0"), ip("224.0.0.22"), Accepted),
        (t1, Strict, false, ip("0.0.0.0"), p4, martian),
        (t1, Strict, false, ip("::"), ip("ff02::1:ff00:2"), Accepted),
        (t1, Strict, false, ip("::"), p6, martian),
        (t1, Strict, false, ip("fe80::1"), ip("ff02::2"), Accepted),
        (t1, Strict, false, ip("fe80::1"), ip("fe80::2"), Accepted),
        (t1, Strict, false, ip("fe80::1"), p6, martian),
        (t1, Loose, false, ip("224.0.0.1"), p4, martian),
        (t1, Loose, false, ip("255.255.255.255"), p4, martian),
        (t1, Loose, false, ip("127.0.0.1"), p4, martian),
        (t1, Loose, false, ip("ff02::1"), p6, martian),
        (t1, Loose, false, ip("::1"), p6, martian),
        // A global source towards a multicast group (neighbour solicitation
        // from a global address) is checked by route like any other.
        (t1, Strict, false, t6, ip("ff02::1:ff00:1"), Accepted),
    ]
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("ifindex of {name}"))
}

/// A UDP datagram; `sport` tells cases apart (one event per flow and
/// report interval).
fn udp(src: IpAddr, dst: IpAddr, sport: u16) -> Vec<u8> {
    ip_frame(src, dst, 17, Packet::data(b"x").udp(sport, 7001))
}

fn run_cases(mode: Mode) -> Result<()> {
    let policy = example_policy(mode)?;
    let dst_env = |dst: IpAddr| policy.lookup_env(dst).0;
    let mut h = KernelHarness::new(policy.clone())?;
    for iface in ["veth-test1", "veth-prod1"] {
        h.datapath_mut()
            .set_peer_addresses(ifindex(iface)?, &[peer()])?;
    }
    let mut failures = Vec::new();
    let cases = cases();
    for (i, &(iface, check_mode, peers, src, dst, want)) in cases.iter().enumerate() {
        let check = SourceCheck {
            mode: check_mode,
            peer_addresses: peers,
            entry: None,
        };
        let idx = ifindex(iface)?;
        h.datapath_mut().set_source_check(idx, check)?;
        let spoofed_before = h.stat(stat::SPOOFED_STRICT)? + h.stat(stat::SPOOFED_LOOSE)?;
        let (action, mark) = h.run_on(Hook::Ingress, &udp(src, dst, 40000 + i as u16), 0, idx)?;
        let spoofed_moved =
            h.stat(stat::SPOOFED_STRICT)? + h.stat(stat::SPOOFED_LOOSE)? - spoofed_before;
        let events = h.events()?;
        let what = format!(
            "{mode:?} {iface} {check_mode:?}{} {src} -> {dst}",
            if peers { "+peer" } else { "" }
        );
        match want {
            Spoofed(result) => {
                let want_mark = tag::judged(verdict::SPOOFED, 0, dst_env(dst));
                let want_action = if mode == Mode::Audit {
                    ACTION_NEXT
                } else {
                    ACTION_SHOT
                };
                let ev = events
                    .iter()
                    .find(|e| e.src == src && e.verdict == "spoofed");
                let got_result = ev
                    .and_then(|e| e.source_check.as_ref())
                    .map(|s| s.result.as_str());
                if mark != want_mark
                    || action != want_action
                    || spoofed_moved != 1
                    || got_result != Some(result)
                {
                    failures.push(format!(
                        "{what}: want spoofed ({result}); mark {mark:#x} (want {want_mark:#x}), action {action:#x}, spoofed stat +{spoofed_moved}, event result {got_result:?}"
                    ));
                }
            }
            Accepted => {
                let judged = mark & 0xff00_0000 == tag::JUDGED;
                let v = ((mark >> 16) & 0xff) as u8;
                if !judged || v == verdict::SPOOFED || spoofed_moved != 0 {
                    failures.push(format!(
                        "{what}: want accepted; mark {mark:#x}, spoofed stat +{spoofed_moved}"
                    ));
                }
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Every case of [`cases`], in enforce and audit mode.
#[test]
fn source_check_against_the_node_routes() -> Result<()> {
    require_root()?;
    let lab = Lab::example()?;
    envfence_tests::netns::ip_batch(
        lab.node_ns(),
        &[format!("route add blackhole {}", blackhole())],
    )?;
    for mode in [Mode::Enforce, Mode::Audit] {
        lab.in_ns("node", || run_cases(mode))??;
    }
    drop(lab);
    Ok(())
}

/// A strict check on an interface that does not forward cannot ask the
/// FIB: it refuses (fail closed); a loose one passes, counted unverified.
#[test]
fn no_forwarding_strict_refuses_loose_counts_unverified() -> Result<()> {
    require_root()?;
    let lab = Lab::example()?;
    lab.in_ns("node", || -> Result<()> {
        std::fs::write("/proc/sys/net/ipv4/conf/veth-test1/forwarding", "0")?;
        let policy = example_policy(Mode::Enforce)?;
        let mut h = KernelHarness::new(policy)?;
        let idx = ifindex("veth-test1")?;
        let (test, prod) = (pod_addr("test", V4, 1), pod_addr("production", V4, 1));
        let f = udp(test, prod, 40000);
        let strict = SourceCheck {
            mode: Strict,
            peer_addresses: false,
            entry: None,
        };
        h.datapath_mut().set_source_check(idx, strict)?;
        let (action, mark) = h.run_on(Hook::Ingress, &f, 0, idx)?;
        ensure!(
            action == ACTION_SHOT && (mark >> 16) & 0xff == u32::from(verdict::SPOOFED),
            "strict: action {action:#x} mark {mark:#x}"
        );
        let ev = h.events()?;
        ensure!(
            ev.iter().any(|e| e
                .source_check
                .as_ref()
                .is_some_and(|s| s.result == "forwarding-disabled")),
            "no forwarding-disabled event: {ev:?}"
        );
        let loose = SourceCheck {
            mode: Loose,
            ..strict
        };
        h.datapath_mut().set_source_check(idx, loose)?;
        let before = h.stat(stat::SOURCE_UNVERIFIED)?;
        let (_, mark) = h.run_on(Hook::Ingress, &f, 0, idx)?;
        ensure!(
            (mark >> 16) & 0xff != u32::from(verdict::SPOOFED),
            "loose: mark {mark:#x}"
        );
        ensure!(
            h.stat(stat::SOURCE_UNVERIFIED)? == before + 1,
            "source_unverified not counted"
        );
        Ok(())
    })??;
    drop(lab);
    Ok(())
}
