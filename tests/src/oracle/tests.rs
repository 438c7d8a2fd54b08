//! The oracle against frames whose outcome is known by hand: hex written
//! from the RFC header layouts, outcomes from the README's table and the
//! example policy (environments by id: dev 1, ops 2, production 3,
//! staging 4, test 5; rules: test-to-prod 1, prod-to-test 2,
//! staging-to-prod 3, test-dns-in-prod 4, ops-to-prod 5). Several frames
//! per outcome class, so a wrong line in the oracle fails here without a
//! kernel.

use envfence::policy::reference::{Encap, L4Seen, NonIpKind, Outcome, Skb};
use envfence::policy::Mode;
use envfence_ebpf::verdict::{ALLOW, AUDIT, DROP, LOG};

use super::Oracle;

const DEV: u32 = 1;
const OPS: u32 = 2;
const PROD: u32 = 3;
const STAGING: u32 = 4;
const TEST: u32 = 5;

fn oracle(mode: Mode) -> Oracle {
    let policy = crate::gen::diff::example_policy(mode).expect("the example policy is valid");
    Oracle::clone(&Oracle::of(&policy).expect("its model"))
}

/// The bytes of hex parts (spaces ignored).
fn frame(parts: &[&str]) -> Vec<u8> {
    crate::gen::from_hex(&parts.concat()).expect("hex")
}

const MACS: &str = "02 00 00 00 00 01 02 00 00 00 00 02";
const TEST4: &str = "0a 1e 01 02";
const PROD4: &str = "0a 0a 01 02";
const STAGING4: &str = "0a 14 01 02";
const OPS4: &str = "0a 00 00 02";
const DEV4: &str = "0a 28 07 09";
const WORLD4: &str = "c0 00 02 01";
/// fd00:30:1::2 and fd00:10:1::2.
const TEST6: &str = "fd 00 00 30 00 01 00 00 00 00 00 00 00 00 00 02";
const PROD6: &str = "fd 00 00 10 00 01 00 00 00 00 00 00 00 00 00 02";
/// TCP header, 40000 -> 8080, SYN, 20 bytes.
const TCP_8080: &str = "9c 40 1f 90 00 00 00 01 00 00 00 00 50 02 ff ff 00 00 00 00";
/// TCP 40000 -> 53.
const TCP_53: &str = "9c 40 00 35 00 00 00 01 00 00 00 00 50 02 ff ff 00 00 00 00";
/// UDP 40000 -> 53, 8 bytes, no payload.
const UDP_53: &str = "9c 40 00 35 00 08 00 00";
/// A VXLAN header (flags 0x08, VNI 1).
const VXLAN_VNI_1: &str = "08 00 00 00 00 00 01 00";
/// ICMP echo request, 8 bytes.
const ECHO: &str = "08 00 f7 ff 00 00 00 00";

/// An IPv4 header of 20 bytes: total length, flags+offset, protocol.
fn v4(total: u16, frag: u16, proto: u8, src: &str, dst: &str) -> String {
    format!("45 00 {total:04x} 0000 {frag:04x} 40 {proto:02x} 0000 {src} {dst}")
}

fn v6(payload: u16, next: u8, src: &str, dst: &str) -> String {
    format!("60 00 00 00 {payload:04x} {next:02x} 40 {src} {dst}")
}

/// An IPv4 frame: [`v4`]'s header, then `rest`.
fn v4f(total: u16, frag: u16, proto: u8, src: &str, dst: &str, rest: &[&str]) -> Vec<u8> {
    frame(&[&[MACS, "08 00", &v4(total, frag, proto, src, dst)], rest].concat())
}

/// An IPv6 frame: [`v6`]'s header, then `rest`.
fn v6f(payload: u16, next: u8, src: &str, dst: &str, rest: &[&str]) -> Vec<u8> {
    frame(&[&[MACS, "86 dd", &v6(payload, next, src, dst)], rest].concat())
}

fn judged(o: &Outcome) -> &envfence::policy::reference::Judgement {
    match o {
        Outcome::Judged(j) => j,
        other => panic!("not judged: {other:?}"),
    }
}

/// (verdict, src env, dst env, rule) of a judged outcome.
fn vsdr(o: &Outcome) -> (u8, u32, u32, u16) {
    let j = judged(o);
    (j.verdict, j.src_env, j.dst_env, j.rule)
}

#[test]
fn non_ip_frames_by_kind() {
    let o = oracle(Mode::Enforce);
    let cases = [
        (
            frame(&[MACS, "08 06", "00 01 08 00 06 04 00 01"]),
            NonIpKind::Arp,
        ),
        (frame(&[MACS, "88 cc", "02 07 04"]), NonIpKind::Lldp),
        (
            frame(&[MACS, "88 63", "11 09 00 00 00 00"]),
            NonIpKind::Pppoe,
        ),
        (frame(&[MACS, "12 34", "00 00"]), NonIpKind::Other),
        // 13 bytes: not even an Ethernet header.
        (frame(&[MACS, "08"]), NonIpKind::Other),
        // MPLS, one label (S set), then a pseudowire control word (nibble 0).
        (
            frame(&[MACS, "88 47", "00 01 01 40", "00 00 00 00"]),
            NonIpKind::Mpls,
        ),
        // PPPoE session carrying LCP (0xc021).
        (
            frame(&[MACS, "88 64", "11 00 00 01 00 04", "c0 21 01 01"]),
            NonIpKind::Pppoe,
        ),
        // A VLAN tag, then ARP.
        (
            frame(&[MACS, "81 00", "00 05 08 06", "00 01"]),
            NonIpKind::Arp,
        ),
    ];
    for (f, kind) in cases {
        assert_eq!(o.classify(&f), Outcome::NonIp(kind), "{f:02x?}");
    }
}

#[test]
fn malformed_frames() {
    let o = oracle(Mode::Enforce);
    let cases = [
        // IHL 4.
        frame(&[
            MACS,
            "08 00",
            "44 00 00 28 0000 0000 40 06 0000",
            TEST4,
            PROD4,
            TCP_8080,
        ]),
        // Total length 100 in a 40-byte packet.
        frame(&[MACS, "08 00", &v4(100, 0, 6, TEST4, PROD4), TCP_8080]),
        // Total length 0 and not a GSO skb.
        frame(&[MACS, "08 00", &v4(0, 0, 6, TEST4, PROD4), TCP_8080]),
        // Version 6 behind EtherType IPv4.
        frame(&[
            MACS,
            "08 00",
            "65 00 00 28 0000 0000 40 06 0000",
            TEST4,
            PROD4,
            TCP_8080,
        ]),
        // IPv6 payload length 64 with 20 bytes there.
        frame(&[MACS, "86 dd", &v6(64, 6, TEST6, PROD6), TCP_8080]),
        // A VLAN tag cut after two bytes.
        frame(&[MACS, "81 00", "00 05"]),
        // PPPoE session with code 0x09.
        frame(&[MACS, "88 64", "11 09 00 01 00 16", "00 21"]),
        // MPLS label without bottom of stack, then the frame ends.
        frame(&[MACS, "88 47", "00 01 00 40"]),
        // VXLAN (UDP 4789) whose inner Ethernet frame is missing.
        v4f(
            36,
            0,
            17,
            TEST4,
            PROD4,
            &["9c 40 12 b5 00 10 00 00", VXLAN_VNI_1],
        ),
    ];
    for f in cases {
        assert_eq!(o.classify(&f), Outcome::Malformed, "{f:02x?}");
    }
}

#[test]
fn limits_too_deep() {
    let o = oracle(Mode::Enforce);
    let ip = v4(40, 0, 6, TEST4, PROD4);
    let three_tags = frame(&[
        MACS,
        "81 00",
        "00 01 81 00",
        "00 02 81 00",
        "00 03 08 00",
        &ip,
    ]);
    assert_eq!(o.classify(&three_tags), Outcome::VlanTooDeep);
    let two_tags = frame(&[MACS, "88 a8", "00 01 81 00", "00 02 08 00", &ip, TCP_8080]);
    assert_eq!(vsdr(&o.classify(&two_tags)), (DROP, TEST, PROD, 1));
    let seven = frame(&[MACS, "88 47", &"00 01 00 40 ".repeat(7), &ip, TCP_8080]);
    assert_eq!(o.classify(&seven), Outcome::MplsTooDeep);
    let six = frame(&[
        MACS,
        "88 47",
        &"00 01 00 40 ".repeat(5),
        "00 01 01 40",
        &ip,
        TCP_8080,
    ]);
    let j = o.classify(&six);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert_eq!(judged(&j).encap, Encap::Mpls);
    // IPIP inside IPIP.
    let inner = v4(40, 0, 6, TEST4, PROD4);
    let middle = v4(60, 0, 4, OPS4, PROD4);
    let nested = v4f(80, 0, 4, DEV4, PROD4, &[&middle, &inner, TCP_8080]);
    assert_eq!(o.classify(&nested), Outcome::TunnelTooDeep);
}

#[test]
fn judged_by_the_example_policy() {
    let o = oracle(Mode::Enforce);
    let tcp = |src, dst, l4| frame(&[MACS, "08 00", &v4(40, 0, 6, src, dst), l4]);
    for (src, dst, l4, want) in [
        (TEST4, PROD4, TCP_8080, (DROP, TEST, PROD, 1)),
        (TEST4, PROD4, TCP_53, (ALLOW, TEST, PROD, 4)),
        (DEV4, PROD4, TCP_53, (DROP, DEV, PROD, 1)),
        (STAGING4, PROD4, TCP_8080, (AUDIT, STAGING, PROD, 3)),
        (OPS4, PROD4, TCP_8080, (LOG, OPS, PROD, 5)),
        (PROD4, WORLD4, TCP_8080, (ALLOW, PROD, 0, 0)),
    ] {
        let got = vsdr(&o.classify(&tcp(src, dst, l4)));
        assert_eq!(got, want, "{src} > {dst} {l4}");
    }
    let udp = frame(&[MACS, "08 00", &v4(28, 0, 17, TEST4, PROD4), UDP_53]);
    let j = o.classify(&udp);
    assert_eq!(vsdr(&j), (ALLOW, TEST, PROD, 4));
    assert_eq!(
        (judged(&j).sport, judged(&j).dport, judged(&j).l4),
        (40000, 53, L4Seen::Ports)
    );
    let echo = frame(&[MACS, "08 00", &v4(28, 0, 1, TEST4, PROD4), ECHO]);
    let j = o.classify(&echo);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert_eq!((judged(&j).sport, judged(&j).l4), (8, L4Seen::Other));
    // IPv6 and an IPv4-mapped address.
    let six = frame(&[MACS, "86 dd", &v6(20, 6, TEST6, PROD6), TCP_53]);
    assert_eq!(vsdr(&o.classify(&six)), (ALLOW, TEST, PROD, 4));
    let mapped_test = "00 00 00 00 00 00 00 00 00 00 ff ff 0a 1e 01 02";
    let mapped = frame(&[MACS, "86 dd", &v6(20, 6, mapped_test, PROD6), TCP_8080]);
    assert_eq!(vsdr(&o.classify(&mapped)), (DROP, TEST, PROD, 1));
    // Audit mode folds drop into audit, nothing else.
    let a = oracle(Mode::Audit);
    assert_eq!(
        vsdr(&a.classify(&tcp(TEST4, PROD4, TCP_8080))),
        (AUDIT, TEST, PROD, 1)
    );
    assert_eq!(
        vsdr(&a.classify(&tcp(OPS4, PROD4, TCP_8080))),
        (LOG, OPS, PROD, 5)
    );
}

#[test]
fn hidden_ports_get_the_strictest_verdict() {
    let o = oracle(Mode::Enforce);
    // A non-first fragment (offset 8 units) of UDP test -> production:
    // drop (rule 1), though UDP 53 alone would be allowed.
    let frag = frame(&[MACS, "08 00", &v4(28, 1, 17, TEST4, PROD4), UDP_53]);
    let j = o.classify(&frag);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).fragment);
    assert_eq!(judged(&j).l4, L4Seen::NoPorts);
    // A TCP header cut to 2 bytes by the IP length.
    let cut = frame(&[MACS, "08 00", &v4(22, 0, 6, TEST4, PROD4), "9c 40"]);
    assert_eq!(judged(&o.classify(&cut)).l4, L4Seen::NoPorts);
    // IPv6 fragment header with offset 1: no ports, test -> production.
    let frag6 = v6f(16, 44, TEST6, PROD6, &["11 00 00 08 00 00 00 01", UDP_53]);
    let j = o.classify(&frag6);
    assert_eq!(
        (judged(&j).proto, judged(&j).l4, judged(&j).verdict),
        (17, L4Seen::NoPorts, DROP)
    );
    // ESP: no ports.
    let esp = v6f(8, 50, TEST6, PROD6, &["00 00 00 01 00 00 00 01"]);
    assert_eq!(judged(&o.classify(&esp)).l4, L4Seen::NoPorts);
    // Seven destination-options headers: too deep.
    let dst_opts = "3c 00 01 04 00 00 00 00 ".repeat(6) + "06 00 01 04 00 00 00 00";
    let deep = frame(&[MACS, "86 dd", &v6(76, 60, TEST6, PROD6), &dst_opts, TCP_53]);
    let j = o.classify(&deep);
    assert!(judged(&j).ext_too_deep);
    assert_eq!(judged(&j).verdict, DROP);
    // Six are walked: the ports are read.
    let six_opts = "3c 00 01 04 00 00 00 00 ".repeat(5) + "06 00 01 04 00 00 00 00";
    let walked = frame(&[MACS, "86 dd", &v6(68, 60, TEST6, PROD6), &six_opts, TCP_53]);
    assert_eq!(vsdr(&o.classify(&walked)), (ALLOW, TEST, PROD, 4));
}

#[test]
fn lengths_of_zero() {
    let o = oracle(Mode::Enforce);
    let big = frame(&[MACS, "08 00", &v4(0, 0, 6, TEST4, PROD4), TCP_53]);
    let j = o.classify_skb(&big, Skb { gso_size: 1448 });
    assert_eq!(vsdr(&j), (ALLOW, TEST, PROD, 4));
    assert!(judged(&j).len_from_skb);
    let big6 = frame(&[MACS, "86 dd", &v6(0, 6, TEST6, PROD6), TCP_8080]);
    let j = o.classify_skb(&big6, Skb { gso_size: 1448 });
    assert!(judged(&j).len_from_skb);
    assert_eq!(judged(&j).verdict, DROP);
    // A jumbo option under 65536 without GSO: malformed.
    let jumbo = v6f(0, 0, TEST6, PROD6, &["06 00 c2 04 00 00 ff ff", TCP_8080]);
    assert_eq!(o.classify(&jumbo), Outcome::Malformed);
}

#[test]
fn tunnels_and_routing_headers() {
    let o = oracle(Mode::Enforce);
    // ops -> production (log) carrying test -> production TCP 8080 (drop):
    // the inner decides.
    let ipip = v4f(
        60,
        0,
        4,
        OPS4,
        PROD4,
        &[&v4(40, 0, 6, TEST4, PROD4), TCP_8080],
    );
    let j = o.classify(&ipip);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).tunneled && judged(&j).by_inner);
    // GRE with a key (flags 0x2000), IPv4 inside, ops -> prod inside a
    // test -> prod outer: the outer (drop) decides.
    let gre = v4f(
        68,
        0,
        47,
        TEST4,
        PROD4,
        &[
            "20 00 08 00 00 00 00 07",
            &v4(40, 0, 6, OPS4, PROD4),
            TCP_8080,
        ],
    );
    let j = o.classify(&gre);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).tunneled && !judged(&j).by_inner);
    // GRE version 1 (PPTP): judged on the outer alone.
    let pptp = v4f(28, 0, 47, OPS4, PROD4, &["30 01 88 0b 00 00 00 00"]);
    let j = o.classify(&pptp);
    assert_eq!(
        (vsdr(&j), judged(&j).tunneled),
        ((LOG, OPS, PROD, 5), false)
    );
    // VXLAN on 8472 carrying test -> prod TCP 8080.
    let inner = frame(&[MACS, "08 00", &v4(40, 0, 6, TEST4, PROD4), TCP_8080]);
    let mut vxlan = v4f(
        20 + 8 + 8 + 54,
        0,
        17,
        OPS4,
        PROD4,
        &["9c 40 21 18 00 46 00 00", "08 00 00 00 00 00 01 00"],
    );
    vxlan.extend(&inner);
    let j = o.classify(&vxlan);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).by_inner);
    // Routing header type 2 (home address in production) from test to an
    // address in world: the final destination decides.
    let world6 = "20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01";
    let rh2 = format!("06 02 02 01 00 00 00 00 {PROD6}");
    let routed = frame(&[MACS, "86 dd", &v6(44, 43, TEST6, world6), &rh2, TCP_8080]);
    let j = o.classify(&routed);
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).routed && judged(&j).by_final);
    // Type 2 with segments left 2: inconsistent, malformed.
    let bad = format!("06 02 02 02 00 00 00 00 {PROD6}");
    let f = frame(&[MACS, "86 dd", &v6(44, 43, TEST6, world6), &bad, TCP_8080]);
    assert_eq!(o.classify(&f), Outcome::Malformed);
}

#[test]
fn the_window_ends_at_448_bytes() {
    let o = oracle(Mode::Enforce);
    // A destination-options header of 384 bytes and one of 16 put the TCP
    // header at 14 + 40 + 384 + 16 = 454: past the window, no ports.
    let big_opts = format!("3c 2f {}", "00 ".repeat(382));
    let small = "06 01 01 0c 00 00 00 00 00 00 00 00 00 00 00 00";
    let payload = 384 + 16 + 20;
    let f = v6f(payload, 60, TEST6, PROD6, &[&big_opts, small, TCP_53]);
    let j = o.classify(&f);
    assert_eq!(judged(&j).l4, L4Seen::NoPorts, "{j:?}");
    assert_eq!(judged(&j).verdict, DROP);
}

/// A read may start at byte 448 and not after: a VXLAN packet whose inner
/// IPv6 TCP header starts at exactly 448 (14 + 20 + 8 + 8 + 14 + 40 + 344)
/// has its inner ports read; eight bytes further, they are not.
#[test]
fn a_read_may_start_at_byte_448() {
    let o = oracle(Mode::Enforce);
    let shape = |units: usize| {
        let opts = 8 * (units + 1);
        let inner_payload = opts + 20;
        let udp_len = 8 + 8 + 14 + 40 + inner_payload;
        let total = u16::try_from(20 + udp_len).expect("fits");
        let header = format!("06 {units:02x} {}", "00 ".repeat(opts - 2));
        frame(&[
            MACS,
            "08 00",
            &v4(total, 0, 17, OPS4, PROD4),
            &format!("9c 40 12 b5 {udp_len:04x} 00 00"),
            "08 00 00 00 00 00 01 00",
            MACS,
            "86 dd",
            &v6(
                u16::try_from(inner_payload).expect("fits"),
                60,
                TEST6,
                PROD6,
            ),
            &header,
            TCP_53,
        ])
    };
    let at_448 = shape(42);
    assert_eq!(&at_448[448..452], &frame(&["9c 40 00 35"])[..]);
    let j = o.classify(&at_448);
    // Inner test -> production TCP 53: allowed; the outer ops ->
    // production (log) is stricter and decides.
    assert_eq!(vsdr(&j), (LOG, OPS, PROD, 5));
    assert!(judged(&j).tunneled && !judged(&j).by_inner);
    let at_456 = shape(43);
    let j = o.classify(&at_456);
    // Inner ports unread: the strictest verdict of test -> production.
    assert_eq!(vsdr(&j), (DROP, TEST, PROD, 1));
    assert!(judged(&j).by_inner);
    assert_eq!(judged(&j).l4, L4Seen::NoPorts);
}
