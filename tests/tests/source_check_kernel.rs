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
use envfence_tests::gen::diff::example_policy;
use envfence_tests::lab::{require_root, Lab};
use envfence_tests::packet::{ip_frame, Packet};
use envfence_tests::testrun::{KernelHarness, ACTION_NEXT, ACTION_SHOT};

/// What the check must answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Accepted: the packet is judged by the policy.
    Accepted,
    /// Refused with this `source_check.result`.
    Spoofed(&'static str),
}

struct Case {
    /// The node's interface the frame arrives on.
    iface: &'static str,
    mode: SourceMode,
    peer: bool,
    src: &'static str,
    dst: &'static str,
    want: Want,
}

const fn case(
    iface: &'static str,
    mode: SourceMode,
    peer: bool,
    src: &'static str,
    dst: &'static str,
    want: Want,
) -> Case {
    Case {
        iface,
        mode,
        peer,
        src,
        dst,
        want,
    }
}

use SourceMode::{Loose, Off, Strict};
use Want::{Accepted, Spoofed};

/// The lab node routes 10.30.1.0/24 and fd00:30:1::/64 through
/// `veth-test1`, 10.10.1.0/24 and fd00:10:1::/64 through `veth-prod1`; the
/// test adds a blackhole route for 10.10.8.0/24 and `10.10.1.99` as a peer
/// address of `veth-test1`.
const CASES: &[Case] = &[
    // The pod's own addresses, routed back through its veth.
    case(
        "veth-test1",
        Strict,
        false,
        "10.30.1.2",
        "10.10.1.2",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "fd00:30:1::2",
        "fd00:10:1::2",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "::ffff:10.30.1.2",
        "::ffff:10.10.1.2",
        Accepted,
    ),
    // Another pod's address: its route leaves through another veth.
    case(
        "veth-test1",
        Strict,
        false,
        "10.10.1.2",
        "10.10.2.2",
        Spoofed("route-via-other-interface"),
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "fd00:10:1::2",
        "fd00:10:2::2",
        Spoofed("route-via-other-interface"),
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "::ffff:10.10.1.2",
        "::ffff:10.10.2.2",
        Spoofed("route-via-other-interface"),
    ),
    // An address of an environment that no route covers.
    case(
        "veth-test1",
        Strict,
        false,
        "10.10.9.9",
        "10.10.1.2",
        Spoofed("no-unicast-route"),
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "fd00:10::9:9",
        "fd00:10:1::2",
        Spoofed("no-unicast-route"),
    ),
    // A blackhole route.
    case(
        "veth-test1",
        Strict,
        false,
        "10.10.8.8",
        "10.10.1.2",
        Spoofed("no-route"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "10.10.8.8",
        "10.10.1.2",
        Spoofed("no-route"),
    ),
    // A node address claimed from outside.
    case(
        "veth-test1",
        Loose,
        false,
        "10.10.1.1",
        "10.10.2.2",
        Spoofed("no-unicast-route"),
    ),
    // Loose: any unicast route will do.
    case(
        "veth-test1",
        Loose,
        false,
        "10.10.1.2",
        "10.10.2.2",
        Accepted,
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "fd00:10:1::2",
        "fd00:10:2::2",
        Accepted,
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "10.10.9.9",
        "10.10.1.2",
        Spoofed("no-unicast-route"),
    ),
    // Peer addresses: accepted on the veth they sit behind, only when the
    // interface trusts them.
    case(
        "veth-test1",
        Strict,
        true,
        "10.10.1.99",
        "10.10.2.2",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "10.10.1.99",
        "10.10.2.2",
        Spoofed("route-via-other-interface"),
    ),
    case(
        "veth-prod1",
        Strict,
        true,
        "10.10.1.99",
        "10.10.2.2",
        Accepted,
    ),
    case(
        "veth-prod2",
        Strict,
        true,
        "10.10.1.99",
        "10.10.2.2",
        Spoofed("route-via-other-interface"),
    ),
    // Off: nothing checked.
    case("veth-test1", Off, false, "10.10.9.9", "10.10.1.2", Accepted),
    // Scope rules, decided before any route.
    case(
        "veth-test1",
        Strict,
        false,
        "0.0.0.0",
        "255.255.255.255",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "0.0.0.0",
        "224.0.0.22",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "0.0.0.0",
        "10.10.1.2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "::",
        "ff02::1:ff00:2",
        Accepted,
    ),
    case(
        "veth-test1",
        Strict,
        false,
        "::",
        "fd00:10:1::2",
        Spoofed("martian"),
    ),
    case("veth-test1", Strict, false, "fe80::1", "ff02::2", Accepted),
    case("veth-test1", Strict, false, "fe80::1", "fe80::2", Accepted),
    case(
        "veth-test1",
        Strict,
        false,
        "fe80::1",
        "fd00:10:1::2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "224.0.0.1",
        "10.10.1.2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "255.255.255.255",
        "10.10.1.2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "127.0.0.1",
        "10.10.1.2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "ff02::1",
        "fd00:10:1::2",
        Spoofed("martian"),
    ),
    case(
        "veth-test1",
        Loose,
        false,
        "::1",
        "fd00:10:1::2",
        Spoofed("martian"),
    ),
    // A global source towards a multicast group (neighbour solicitation
    // from a global address) is checked by route like any other.
    case(
        "veth-test1",
        Strict,
        false,
        "fd00:30:1::2",
        "ff02::1:ff00:1",
        Accepted,
    ),
];

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
    let peer: IpAddr = "10.10.1.99".parse()?;
    for iface in ["veth-test1", "veth-prod1"] {
        h.datapath_mut()
            .set_peer_addresses(ifindex(iface)?, &[peer])?;
    }
    let mut failures = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let src: IpAddr = c.src.parse()?;
        let dst: IpAddr = c.dst.parse()?;
        let check = SourceCheck {
            mode: c.mode,
            peer_addresses: c.peer,
            entry: None,
        };
        let idx = ifindex(c.iface)?;
        h.datapath_mut().set_source_check(idx, check)?;
        let spoofed_before = h.stat(stat::SPOOFED_STRICT)? + h.stat(stat::SPOOFED_LOOSE)?;
        let (action, mark) = h.run_on(Hook::Ingress, &udp(src, dst, 40000 + i as u16), 0, idx)?;
        let spoofed_moved =
            h.stat(stat::SPOOFED_STRICT)? + h.stat(stat::SPOOFED_LOOSE)? - spoofed_before;
        let events = h.events()?;
        let what = format!(
            "{mode:?} {} {:?}{} {src} -> {dst}",
            c.iface,
            c.mode,
            if c.peer { "+peer" } else { "" }
        );
        match c.want {
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
        CASES.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Every case of [`CASES`], in enforce and audit mode.
#[test]
fn source_check_against_the_node_routes() -> Result<()> {
    require_root()?;
    let lab = Lab::example()?;
    envfence_tests::netns::ip_batch(
        lab.node_ns(),
        &["route add blackhole 10.10.8.0/24".to_owned()],
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
        let f = udp("10.30.1.2".parse()?, "10.10.1.2".parse()?, 40000);
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
