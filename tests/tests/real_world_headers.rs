//! Real-world header shapes through the real eBPF programs
//! (BPF_PROG_TEST_RUN), the independent oracle and the reference
//! classifier: BIG TCP and jumbograms (a length field of 0, with the skb's
//! `gso_size` set through the `__sk_buff` context or not), MPLS label
//! stacks, PPPoE sessions, the policy's tunnel ports (VXLAN on 8472,
//! VXLAN-GPE), IPv6 routing headers (type 0, 2 and segment routing), DCCP
//! ports and `non_ip: drop`. Each case asserts what the kernel did (action,
//! decision tag, the statistic that moved), that it is what the oracle
//! says, that the reference says the same, and the verdict the README
//! promises. Needs root.

use std::sync::LazyLock;

use envfence::policy::{self, reference, CompiledPolicy, Mode};
use envfence_ebpf::{proto, stat, verdict};
use envfence_tests::fixture::{pod_v4, pod_v6, root};
use envfence_tests::gen::diff::held_on_both_hooks;
use envfence_tests::gen::{zero_outer_length, ExtSpec};
use envfence_tests::oracle;
use envfence_tests::packet::{ethertype, Ipv4, Ipv6, Packet};
use envfence_tests::testrun::KernelHarness;

const GSO: u32 = 1448;

// The example lab's test1, prod1 and prod2.
static TEST4: LazyLock<[u8; 4]> = LazyLock::new(|| pod_v4("test", 1).octets());
static PROD4: LazyLock<[u8; 4]> = LazyLock::new(|| pod_v4("production", 1).octets());
static PROD4B: LazyLock<[u8; 4]> = LazyLock::new(|| pod_v4("production", 2).octets());
static TEST6: LazyLock<[u8; 16]> = LazyLock::new(|| pod_v6("test", 1).octets());
static PROD6: LazyLock<[u8; 16]> = LazyLock::new(|| pod_v6("production", 1).octets());
static PROD6B: LazyLock<[u8; 16]> = LazyLock::new(|| pod_v6("production", 2).octets());

fn harness_with(src: &str) -> KernelHarness {
    root();
    let p = oracle::parse(src, "example").expect("valid policy");
    KernelHarness::new(policy::compile(&p)).expect("loading the datapath")
}

fn harness() -> KernelHarness {
    harness_with(policy::EXAMPLE_POLICY)
}

/// Kernel == oracle on both hooks, reference == oracle; returns the outcome and the
/// statistics that moved on ingress.
fn check(h: &KernelHarness, what: &str, f: &[u8], gso: u32) -> (reference::Outcome, Vec<u32>) {
    let (outcome, runs) = held_on_both_hooks(h, f, gso).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let stats = runs[0].stats_moved.iter().map(|(i, _)| *i).collect();
    (outcome, stats)
}

fn judged(o: &reference::Outcome, what: &str) -> reference::Judgement {
    match o {
        reference::Outcome::Judged(j) => j.clone(),
        other => panic!("{what}: not judged: {other:?}"),
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4], p: u8, l4: &[u8]) -> Packet {
    Packet::data(l4).ipv4(&Ipv4 {
        src,
        dst,
        proto: p,
        ..Ipv4::default()
    })
}

fn ipv6(src: [u8; 16], dst: [u8; 16], p: u8, rest: &[u8]) -> Packet {
    Packet::data(rest).ipv6(&Ipv6 {
        src,
        dst,
        next: p,
        ..Ipv6::default()
    })
}

fn v4_frame(src: [u8; 4], dst: [u8; 4], p: u8, l4: &[u8]) -> Vec<u8> {
    ipv4(src, dst, p, l4).ethernet(&[]).into_bytes()
}

fn v6_frame(src: [u8; 16], dst: [u8; 16], p: u8, rest: &[u8]) -> Vec<u8> {
    ipv6(src, dst, p, rest).ethernet(&[]).into_bytes()
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    Packet::syn(sport, dport).into_bytes()
}

fn tcp_data(dport: u16, n: usize) -> Vec<u8> {
    let mut t = tcp_syn(40000, dport);
    t.extend(vec![0x61; n]);
    t
}

#[test]
fn big_tcp_ipv4_total_length_zero() {
    let h = harness();
    for (what, src, dst, want) in [
        ("test -> prod", *TEST4, *PROD4, verdict::DROP),
        ("prod -> prod", *PROD4, *PROD4B, verdict::ALLOW),
    ] {
        let mut f = v4_frame(src, dst, proto::TCP, &tcp_data(8080, 1400));
        zero_outer_length(&mut f);
        // A GSO packet: judged with the skb's length, counted.
        let (o, stats) = check(&h, &format!("big tcp v4 {what}"), &f, GSO);
        let j = judged(&o, what);
        assert_eq!(j.verdict, want, "{what}");
        assert!(
            j.len_from_skb && j.l4 == reference::L4Seen::Ports,
            "{what}: {j:?}"
        );
        assert!(stats.contains(&stat::LENGTH_FROM_SKB), "{what}: {stats:?}");
        // The same bytes in a packet that is not GSO: malformed.
        let (o, stats) = check(&h, &format!("tot_len 0 not gso {what}"), &f, 0);
        assert_eq!(o, reference::Outcome::Malformed, "{what}");
        assert!(stats.contains(&stat::MALFORMED));
    }
}

#[test]
fn ipv6_payload_length_zero_gso_and_jumbograms() {
    let h = harness();
    // BIG TCP IPv6 without a hop-by-hop header.
    let mut f = v6_frame(*TEST6, *PROD6, proto::TCP, &tcp_data(8080, 1400));
    zero_outer_length(&mut f);
    let (o, stats) = check(&h, "big tcp v6", &f, GSO);
    assert_eq!(judged(&o, "big tcp v6").verdict, verdict::DROP);
    assert!(stats.contains(&stat::LENGTH_FROM_SKB));
    let (o, _) = check(&h, "v6 plen 0 not gso", &f, 0);
    assert_eq!(o, reference::Outcome::Malformed);

    // With the hop-by-hop Jumbo Payload option (Linux 6.0-6.x BIG TCP).
    let mut hbh = vec![proto::TCP, 0, 0xc2, 4];
    hbh.extend(70_000u32.to_be_bytes());
    hbh.extend(tcp_data(8080, 100));
    let mut f = v6_frame(*TEST6, *PROD6, proto::HOPOPTS, &hbh);
    zero_outer_length(&mut f);
    let (o, _) = check(&h, "jumbo hbh, gso", &f, GSO);
    let j = judged(&o, "jumbo hbh gso");
    assert_eq!((j.verdict, j.l4), (verdict::DROP, reference::L4Seen::Ports));
    // Not GSO: an RFC 2675 jumbogram longer than the frame is truncated.
    let (o, _) = check(&h, "jumbogram longer than the frame", &f, 0);
    assert_eq!(o, reference::Outcome::Malformed);
    // A jumbo length under 65536 is no jumbogram.
    f[14 + 40 + 4..14 + 40 + 8].copy_from_slice(&100u32.to_be_bytes());
    let (o, _) = check(&h, "jumbo option with a small length", &f, 0);
    assert_eq!(o, reference::Outcome::Malformed);

    // The bypass of the issue: VXLAN inside IPv6 with payload length 0,
    // outer prod -> prod, inner test -> prod: opened and dropped.
    let udp = ipv4(*TEST4, *PROD4, proto::TCP, &tcp_data(8080, 0))
        .ethernet(&[])
        .vxlan(0x08, 42)
        .udp(40000, 4789);
    let mut f = v6_frame(*PROD6, *PROD6B, proto::UDP, udp.bytes());
    zero_outer_length(&mut f);
    let (o, _) = check(&h, "vxlan in big tcp v6", &f, GSO);
    let j = judged(&o, "vxlan in plen 0");
    assert!(j.by_inner && j.verdict == verdict::DROP, "{j:?}");
}

fn mpls_frame(ethertype: u16, labels: usize, bos: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Packet::data(payload);
    for i in (0..labels).rev() {
        f = f.mpls(100 + i as u32, i + 1 == labels && bos);
    }
    f.eth(&[], ethertype).into_bytes()
}

#[test]
fn mpls_label_stacks() {
    let h = harness();
    let ip4 = ipv4(*TEST4, *PROD4, proto::TCP, &tcp_syn(1, 8080)).into_bytes();
    let ip6 = ipv6(*TEST6, *PROD6, proto::TCP, &tcp_syn(1, 8080)).into_bytes();
    for (et, n) in [(0x8847u16, 1usize), (0x8847, 3), (0x8848, 2), (0x8847, 6)] {
        for (fam, ip) in [("v4", &ip4), ("v6", &ip6)] {
            let what = format!("mpls {et:#x} {n} labels {fam}");
            let f = mpls_frame(et, n, true, ip);
            let (o, stats) = check(&h, &what, &f, 0);
            let j = judged(&o, &what);
            assert_eq!(j.verdict, verdict::DROP, "{what}");
            assert_eq!(j.encap, reference::Encap::Mpls, "{what}");
            assert!(stats.contains(&stat::MPLS), "{what}: {stats:?}");
        }
    }
    // Seven labels: deeper than the parser walks.
    let (o, stats) = check(&h, "7 labels", &mpls_frame(0x8847, 7, true, &ip4), 0);
    assert_eq!(o, reference::Outcome::MplsTooDeep);
    assert!(stats.contains(&stat::MPLS_TOO_DEEP));
    // No bottom of stack within the frame: malformed.
    let no_bos = mpls_frame(0x8847, 3, false, &[]);
    let (o, _) = check(&h, "no bottom of stack", &no_bos, 0);
    assert_eq!(o, reference::Outcome::Malformed);
    // A pseudowire control word (first nibble 0): not IP, passed, counted.
    let pw = mpls_frame(0x8847, 2, true, &[0, 0, 0, 1, 0x02, 0, 0, 0, 0, 1]);
    let (o, stats) = check(&h, "pseudowire", &pw, 0);
    assert_eq!(o, reference::Outcome::NonIp(reference::NonIpKind::Mpls));
    assert!(stats.contains(&stat::NON_IP_MPLS));
}

fn pppoe_frame(ver_type: u8, code: u8, ppp: &[u8], payload: &[u8]) -> Vec<u8> {
    Packet::data(payload)
        .push(ppp)
        .pppoe(ver_type, code, 0x1234)
        .eth(&[], ethertype::PPPOE_SESSION)
        .into_bytes()
}

#[test]
fn pppoe_sessions() {
    let h = harness();
    let udp = Packet::data(b"x").udp(1, 9000).into_bytes();
    let ip4 = ipv4(*TEST4, *PROD4, proto::UDP, &udp).into_bytes();
    let ip6 = ipv6(*TEST6, *PROD6, proto::UDP, &udp).into_bytes();
    for (what, ppp, ip) in [
        ("ipv4", &[0x00u8, 0x21][..], &ip4),
        ("ipv6", &[0x00, 0x57][..], &ip6),
        ("ipv4, compressed protocol", &[0x21][..], &ip4),
    ] {
        let (o, stats) = check(&h, what, &pppoe_frame(0x11, 0, ppp, ip), 0);
        let j = judged(&o, what);
        assert_eq!(
            (j.verdict, j.encap),
            (verdict::DROP, reference::Encap::Pppoe)
        );
        assert!(stats.contains(&stat::PPPOE), "{what}");
    }
    let lcp = pppoe_frame(0x11, 0, &[0xc0, 0x21], &[1, 1, 0, 4]);
    let (o, stats) = check(&h, "lcp", &lcp, 0);
    assert_eq!(o, reference::Outcome::NonIp(reference::NonIpKind::Pppoe));
    assert!(stats.contains(&stat::NON_IP_PPPOE));
    for (what, ver_type, code) in [("bad version", 0x21, 0), ("discovery code", 0x11, 9)] {
        let (o, _) = check(&h, what, &pppoe_frame(ver_type, code, &[0, 0x21], &ip4), 0);
        assert_eq!(o, reference::Outcome::Malformed, "{what}");
    }
}

fn vxlan_frame(port: u16, header: [u8; 8], inner: &[u8]) -> Vec<u8> {
    let udp = Packet::data(inner).push(&header).udp(40000, port);
    v4_frame(*PROD4, *PROD4B, proto::UDP, udp.bytes())
}

#[test]
fn policy_tunnel_ports_and_vxlan_gpe() {
    let h = harness();
    let ip_inner = ipv4(*TEST4, *PROD4, proto::TCP, &tcp_syn(1, 8080));
    let eth_inner = ip_inner.clone().ethernet(&[]).into_bytes();
    let ip_inner = ip_inner.into_bytes();
    let vx = [0x08, 0, 0, 0, 0, 0, 42, 0];
    for port in [4789u16, 8472] {
        let (o, _) = check(&h, "vxlan", &vxlan_frame(port, vx, &eth_inner), 0);
        let j = judged(&o, "vxlan");
        assert!(
            j.by_inner && j.verdict == verdict::DROP,
            "vxlan on {port}: {j:?}"
        );
    }
    for (what, np, inner, opened) in [
        ("gpe ipv4", 1u8, &ip_inner, true),
        ("gpe ethernet", 3, &eth_inner, true),
        ("gpe nsh", 4, &ip_inner, false),
    ] {
        let gpe = [0x0c, 0, 0, np, 0, 0, 42, 0];
        let (o, _) = check(&h, what, &vxlan_frame(4790, gpe, inner), 0);
        let j = judged(&o, what);
        assert_eq!(j.by_inner, opened, "{what}: {j:?}");
    }
    // Without the P flag nothing is decapsulated.
    let no_p = vxlan_frame(4790, [0x08, 0, 0, 1, 0, 0, 1, 0], &ip_inner);
    let (o, _) = check(&h, "gpe no P", &no_p, 0);
    assert!(!judged(&o, "gpe no P").tunneled);
    // A port the policy does not list is plain UDP; one it lists is opened.
    let src = policy::EXAMPLE_POLICY.replacen(
        "mode: enforce",
        "mode: enforce\ntunnels:\n  vxlan: [4789, 9999]\n",
        1,
    );
    let h2 = harness_with(&src);
    let (o, _) = check(&h2, "vxlan on 9999", &vxlan_frame(9999, vx, &eth_inner), 0);
    assert!(judged(&o, "9999").by_inner);
    let f = vxlan_frame(8472, vx, &eth_inner);
    let (o, _) = check(&h2, "8472 no longer vxlan", &f, 0);
    assert!(!judged(&o, "8472").tunneled);
}

/// A routing header ([`ExtSpec::routing`]) of `rtype` with `left`
/// segments left and `addrs`, then next header `next`.
fn routing(rtype: u8, left: u8, addrs: &[[u8; 16]], next: u8) -> Vec<u8> {
    ExtSpec::routing(rtype, left, addrs).bytes(next)
}

#[test]
fn ipv6_routing_headers_final_destination() {
    let h = harness();
    let tcp = tcp_syn(1, 8080);
    let (prod, prod_b, test) = (*PROD6, *PROD6B, *TEST6);
    // test -> prod (hop) ... ending in test: allowed? test->test; and
    // test -> test hop ending in prod: must be dropped.
    let (drop, allow) = (verdict::DROP, verdict::ALLOW);
    for (what, rtype, left, addrs, want) in [
        ("srh hop test, final prod", 4u8, 1u8, vec![prod, test], drop),
        ("srh all in test", 4, 1, vec![test, test], allow),
        ("type 0 hop test, final prod", 0, 2, vec![test, prod], drop),
        ("type 2 home address prod", 2, 1, vec![prod], drop),
        ("srh segments left 0", 4, 0, vec![prod, test], allow),
    ] {
        let mut rest = routing(rtype, left, &addrs, proto::TCP);
        rest.extend(&tcp);
        let f = v6_frame(test, test, proto::ROUTING, &rest);
        let (o, stats) = check(&h, what, &f, 0);
        let j = judged(&o, what);
        assert_eq!(j.verdict, want, "{what}: {j:?}");
        assert_eq!(
            stats.contains(&stat::ROUTING_FINAL),
            left > 0,
            "{what}: {stats:?}"
        );
    }
    // Inconsistent headers are malformed.
    for (what, rtype, left, addrs) in [
        ("type 0 segments left > n", 0u8, 3u8, vec![prod, prod_b]),
        ("type 2 two addresses", 2, 1, vec![prod, prod_b]),
        ("srh segments left > last + 1", 4, 3, vec![prod, prod_b]),
    ] {
        let mut rest = routing(rtype, left, &addrs, proto::TCP);
        rest.extend(&tcp);
        let (o, _) = check(&h, what, &v6_frame(test, test, proto::ROUTING, &rest), 0);
        assert_eq!(o, reference::Outcome::Malformed, "{what}");
    }
}

#[test]
fn dccp_ports_are_read() {
    let h = harness();
    let mut d = tcp_syn(5000, 53);
    d.truncate(16);
    let (o, _) = check(&h, "dccp", &v4_frame(*TEST4, *PROD4, proto::DCCP, &d), 0);
    let j = judged(&o, "dccp");
    assert_eq!(
        (j.l4, j.sport, j.dport),
        (reference::L4Seen::Ports, 5000, 53)
    );
}

#[test]
fn non_ip_pass_or_drop() {
    let arp = Packet::data(&[0u8; 28])
        .eth(&[], ethertype::ARP)
        .into_bytes();
    let lldp = Packet::data(&[0u8; 30])
        .eth(&[], ethertype::LLDP)
        .into_bytes();
    let h = harness();
    let (o, stats) = check(&h, "arp, default", &arp, 0);
    assert!(o.passes(&h.policy));
    assert!(stats.contains(&stat::NON_IP_ARP) && stats.contains(&stat::NON_IP));
    let strict = policy::EXAMPLE_POLICY.replacen("mode: enforce", "mode: enforce\nnon_ip: drop", 1);
    let h = harness_with(&strict);
    for (what, f, kind) in [
        ("arp", &arp, stat::NON_IP_ARP),
        ("lldp", &lldp, stat::NON_IP_LLDP),
    ] {
        let (o, stats) = check(&h, what, f, 0);
        assert!(!o.passes(&h.policy), "{what}");
        assert!(
            stats.contains(&kind) && stats.contains(&stat::NON_IP_DROPPED),
            "{what}"
        );
    }
    // Audit mode drops nothing.
    let audit = strict.replacen("mode: enforce", "mode: audit", 1);
    let h = harness_with(&audit);
    assert_eq!(h.policy.mode, Mode::Audit);
    let (o, _) = check(&h, "arp audit", &arp, 0);
    assert!(o.passes(&h.policy));
    let _: &CompiledPolicy = &h.policy;
}
