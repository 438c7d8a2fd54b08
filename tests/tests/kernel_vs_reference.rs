//! The real eBPF programs, loaded into the running kernel and driven with
//! BPF_PROG_TEST_RUN, against the independent oracle (`envfence_tests::
//! oracle`): same verdict, same environments, exactly one packet counted in
//! exactly that cell, and an event naming the rule for every reported
//! verdict; the reference classifier's outcome must be the oracle's. Needs
//! root.

use std::net::IpAddr;

use envfence::{
    datapath::Hook,
    policy::{self, reference, CompiledPolicy, Mode},
};
use envfence_ebpf::{proto, stat, tag, verdict};
use envfence_tests::gen::catalog::catalog;
use envfence_tests::gen::diff::wrap_in_vlan;
use envfence_tests::gen::kernel_refuses;
use envfence_tests::oracle::{self, Oracle};
use envfence_tests::packet::{ethertype, flat};
use envfence_tests::testrun::{KernelHarness, KernelResult, ACTION_NEXT, ACTION_SHOT};

fn compiled(mode: Mode) -> CompiledPolicy {
    let src = match mode {
        Mode::Enforce => policy::EXAMPLE_POLICY.to_owned(),
        Mode::Audit => policy::EXAMPLE_POLICY.replacen("mode: enforce", "mode: audit", 1),
    };
    let p = oracle::parse(&src, "example").expect("example policy is valid");
    assert_eq!(p.mode, mode);
    policy::compile(&p)
}

fn harness(mode: Mode) -> KernelHarness {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests load eBPF programs into the kernel: run them as root (cargo xtask test does)"
    );
    KernelHarness::new(compiled(mode)).expect("loading the datapath")
}

/// Addresses in every environment of the example policy and outside all.
fn addresses() -> Vec<(&'static str, IpAddr)> {
    [
        ("production", "10.10.1.2"),
        ("production", "fd00:10:1::2"),
        ("staging", "10.20.1.2"),
        ("staging", "fd00:20:1::2"),
        ("test", "10.30.1.2"),
        ("test", "fd00:30:1::2"),
        ("dev", "10.40.7.9"),
        ("dev", "fd00:40::9"),
        ("ops", "10.0.0.2"),
        ("ops", "fd00:0:0:1::2"),
        ("world", "192.0.2.1"),
        ("world", "2001:db8::1"),
        ("test", "::ffff:10.30.1.2"),
        ("production", "::ffff:10.10.1.2"),
    ]
    .into_iter()
    .map(|(env, a)| (env, a.parse().expect("valid address")))
    .collect()
}

/// (proto, l4 bytes) for a family.
fn l4s(v6: bool) -> Vec<(u8, Vec<u8>)> {
    vec![
        (proto::TCP, flat::tcp_syn(40000, 8080)),
        (proto::TCP, flat::tcp_syn(40001, 53)),
        (proto::UDP, flat::udp(40002, 53, b"dns?")),
        (proto::UDP, flat::udp(40003, 9000, b"hello")),
        (if v6 { proto::ICMPV6 } else { proto::ICMP }, flat::echo(v6)),
    ]
}

fn expected_action(outcome: &reference::Outcome, policy: &CompiledPolicy) -> u32 {
    if outcome.passes(policy) {
        ACTION_NEXT
    } else {
        ACTION_SHOT
    }
}

fn expected_tag(outcome: &reference::Outcome) -> u32 {
    match outcome {
        reference::Outcome::Judged(j) => tag::judged(j.verdict, j.src_env, j.dst_env),
        reference::Outcome::NonIp(_) => tag::UNJUDGED | tag::REASON_NON_IP,
        reference::Outcome::MplsTooDeep => tag::UNJUDGED | tag::REASON_MPLS_TOO_DEEP,
        reference::Outcome::Malformed => tag::UNJUDGED | tag::REASON_MALFORMED,
        reference::Outcome::VlanTooDeep => tag::UNJUDGED | tag::REASON_VLAN_TOO_DEEP,
        reference::Outcome::TunnelTooDeep => tag::UNJUDGED | tag::REASON_TUNNEL_TOO_DEEP,
        reference::Outcome::Spoofed(s) => tag::judged(verdict::SPOOFED, 0, s.dst_env),
    }
}

/// Asserts kernel == reference for one frame on both hooks.
fn check(h: &KernelHarness, mode: Mode, what: &str, f: &[u8]) -> reference::Outcome {
    check_gso(h, mode, what, f, 0)
}

/// [`check`] of a frame whose skb has `gso_size` (non-zero: a GSO packet,
/// set through the `__sk_buff` context).
fn check_gso(
    h: &KernelHarness,
    mode: Mode,
    what: &str,
    f: &[u8],
    gso_size: u32,
) -> reference::Outcome {
    assert_eq!(h.policy.mode, mode, "{what}: harness in the wrong mode");
    let skb = reference::Skb { gso_size };
    let outcome =
        Oracle::held_to_reference(&h.policy, f, skb).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    for hook in Hook::ALL {
        let got: KernelResult = h.run_gso(hook, f, gso_size).expect("test run");
        let ctx = format!("{what} on {} ({outcome:?}): kernel {got:?}", hook.as_str());
        assert_eq!(
            got.action,
            expected_action(&outcome, &h.policy),
            "action: {ctx}"
        );
        assert_eq!(got.mark, expected_tag(&outcome), "decision tag: {ctx}");
        match &outcome {
            reference::Outcome::Judged(j) => {
                assert_eq!(
                    got.moved,
                    vec![(j.src_env, j.dst_env, j.verdict, 1, f.len() as u64)],
                    "counters: {ctx}"
                );
            }
            other => {
                assert!(got.moved.is_empty(), "unjudged frame counted: {ctx}");
                let index = match other {
                    reference::Outcome::NonIp(_) => stat::NON_IP,
                    reference::Outcome::MplsTooDeep => stat::MPLS_TOO_DEEP,
                    reference::Outcome::Malformed => stat::MALFORMED,
                    reference::Outcome::TunnelTooDeep => stat::TUNNEL_TOO_DEEP,
                    _ => stat::VLAN_TOO_DEEP,
                };
                assert!(
                    got.stats_moved.contains(&(index, 1)),
                    "statistic {index} did not move by 1: {ctx}"
                );
            }
        }
    }
    outcome
}

fn every_pair(mode: Mode) {
    let mut h = harness(mode);
    let addrs = addresses();
    let mut reported = Vec::new();
    let mut judged = 0;
    for (src_env, src) in &addrs {
        for (dst_env, dst) in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for (p, l4) in l4s(src.is_ipv6()) {
                let f = flat::ip_frame(*src, *dst, p, &l4);
                let what = format!("{src} ({src_env}) -> {dst} ({dst_env}) proto {p}");
                let outcome = check(&h, mode, &what, &f);
                let reference::Outcome::Judged(j) = outcome else {
                    panic!("{what} was not judged: {outcome:?}");
                };
                assert_eq!(h.policy.env_name(j.src_env), *src_env, "{what}");
                assert_eq!(h.policy.env_name(j.dst_env), *dst_env, "{what}");
                if j.verdict != verdict::ALLOW {
                    reported.push(j);
                }
                judged += 1;
            }
        }
    }
    assert!(judged > 400, "only {judged} frames judged");
    // Every reported flow produced an event naming its verdict and rule.
    let events = h.events().expect("events");
    for j in &reported {
        let found = events.iter().any(|e| {
            e.src == j.src
                && e.dst == j.dst
                && e.dport == j.dport
                && e.verdict == policy::Verdict::from_u8(j.verdict).map_or("?", |v| v.as_str())
                && e.rule == h.policy.rule_name(j.rule)
                && e.packets >= 1
        });
        assert!(found, "no event for {j:?}");
    }
    // One event per reported flow: the egress run of the same frame falls
    // inside the report interval.
    assert_eq!(events.len(), reported.len(), "events: {events:?}");
}

#[test]
fn every_env_pair_enforce() {
    every_pair(Mode::Enforce);
}

#[test]
fn every_env_pair_audit() {
    every_pair(Mode::Audit);
}

/// Named cases of the example policy, checked against the expectation a
/// reader of the policy has (not only against the reference).
#[test]
fn example_policy_cases() {
    let h = harness(Mode::Enforce);
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let cases: Vec<(&str, Vec<u8>, u8, &str)> = vec![
        (
            "test -> production tcp/8080",
            flat::ip_frame(
                ip("10.30.1.2"),
                ip("10.10.1.2"),
                proto::TCP,
                &flat::tcp_syn(1234, 8080),
            ),
            verdict::DROP,
            "test-to-prod",
        ),
        (
            "test -> production udp/53 (port rule)",
            flat::ip_frame(
                ip("10.30.1.2"),
                ip("10.10.1.2"),
                proto::UDP,
                &flat::udp(1234, 53, b"q"),
            ),
            verdict::ALLOW,
            "test-dns-in-prod",
        ),
        (
            "test -> production tcp/53 over IPv6 (port rule)",
            flat::ip_frame(
                ip("fd00:30::5"),
                ip("fd00:10::5"),
                proto::TCP,
                &flat::tcp_syn(1234, 53),
            ),
            verdict::ALLOW,
            "test-dns-in-prod",
        ),
        (
            "dev -> production udp/53 (the port rule is for test only)",
            flat::ip_frame(
                ip("10.40.1.2"),
                ip("10.10.1.2"),
                proto::UDP,
                &flat::udp(1234, 53, b"q"),
            ),
            verdict::DROP,
            "test-to-prod",
        ),
        (
            "production -> test icmp",
            flat::ip_frame(
                ip("10.10.1.2"),
                ip("10.30.1.2"),
                proto::ICMP,
                &flat::echo(false),
            ),
            verdict::DROP,
            "prod-to-test",
        ),
        (
            "staging -> production (audit)",
            flat::ip_frame(
                ip("10.20.1.2"),
                ip("10.10.1.2"),
                proto::TCP,
                &flat::tcp_syn(1234, 443),
            ),
            verdict::AUDIT,
            "staging-to-prod",
        ),
        (
            "ops -> production (log)",
            flat::ip_frame(
                ip("10.0.0.2"),
                ip("10.10.1.2"),
                proto::TCP,
                &flat::tcp_syn(1234, 22),
            ),
            verdict::LOG,
            "ops-to-prod",
        ),
        (
            "production -> production",
            flat::ip_frame(
                ip("10.10.1.2"),
                ip("10.10.2.2"),
                proto::TCP,
                &flat::tcp_syn(1234, 5432),
            ),
            verdict::ALLOW,
            "default",
        ),
        (
            "v4-mapped test -> production is judged as IPv4",
            flat::ip_frame(
                ip("::ffff:10.30.1.2"),
                ip("::ffff:10.10.1.2"),
                proto::TCP,
                &flat::tcp_syn(1234, 80),
            ),
            verdict::DROP,
            "test-to-prod",
        ),
    ];
    for (what, f, want_verdict, want_rule) in cases {
        let outcome = check(&h, Mode::Enforce, what, &f);
        let reference::Outcome::Judged(j) = outcome else {
            panic!("{what}: not judged");
        };
        assert_eq!(j.verdict, want_verdict, "{what}");
        assert_eq!(h.policy.rule_name(j.rule), want_rule, "{what}");
    }
}

/// Every frame of the shape catalogue (`tests/src/gen/catalog.rs`: the
/// corpus' synthetic captures, issue 13's MPLS, PPPoE, DCCP, routing
/// headers, VXLAN 8472 / VXLAN-GPE and GSO shapes included, and their cuts
/// at every header boundary), in both modes and on both hooks: the
/// reference's verdict, exactly one packet in exactly its counter cell (or
/// the statistic of why it was not judged). GSO shapes run with their
/// `gso_size` in the `__sk_buff` context. A frame BPF_PROG_TEST_RUN
/// refuses untagged runs behind a VLAN tag.
#[test]
fn catalogue_shapes_counted_exactly() {
    let (mut frames, mut gso, mut tagged) = (0, 0, 0);
    for mode in [Mode::Enforce, Mode::Audit] {
        let h = harness(mode);
        for (file, named) in catalog() {
            for n in named {
                let mut f = n.frame.clone();
                if kernel_refuses(&f) {
                    f = wrap_in_vlan(&f);
                    tagged += 1;
                }
                check_gso(&h, mode, &format!("{file}: {}", n.name), &f, n.gso_size);
                frames += 1;
                gso += usize::from(n.gso_size != 0);
            }
        }
    }
    eprintln!("{frames} catalogue frames ({gso} GSO, {tagged} behind a VLAN tag) in 2 modes");
    assert!(frames > 4000 && gso > 300, "{frames} frames, {gso} GSO");
}

/// Header shapes the foundation parser handles explicitly.
#[test]
fn header_shapes() {
    for mode in [Mode::Enforce, Mode::Audit] {
        let h = harness(mode);
        let test4 = [10, 30, 1, 2];
        let prod4 = [10, 10, 1, 2];
        let dns = flat::udp(1234, 53, b"q");

        // ARP passes, counted as non-IP.
        let mut arp = flat::eth(&[], ethertype::ARP);
        arp.extend([0u8; 28]);
        let o = check(&h, mode, "arp", &arp);
        assert_eq!(o, reference::Outcome::NonIp(reference::NonIpKind::Arp));

        // One and two VLAN tags are walked; three are too deep.
        for tags in [
            vec![(ethertype::VLAN, 10)],
            vec![(ethertype::QINQ, 10), (ethertype::VLAN, 20)],
        ] {
            let mut f = flat::eth(&tags, ethertype::IPV4);
            f.extend(flat::ipv4(
                test4,
                prod4,
                proto::TCP,
                &[],
                0,
                &flat::tcp_syn(1, 80),
            ));
            let o = check(&h, mode, "vlan-tagged test->prod", &f);
            assert!(
                matches!(o, reference::Outcome::Judged(ref j) if j.src_env != 0 && j.dst_env != 0)
            );
        }
        let mut f = flat::eth(
            &[
                (ethertype::QINQ, 1),
                (ethertype::VLAN, 2),
                (ethertype::VLAN, 3),
            ],
            ethertype::IPV4,
        );
        f.extend(flat::ipv4(
            test4,
            prod4,
            proto::TCP,
            &[],
            0,
            &flat::tcp_syn(1, 80),
        ));
        assert_eq!(
            check(&h, mode, "triple vlan", &f),
            reference::Outcome::VlanTooDeep
        );

        // IPv4 options: the ports are found after them (port rule applies).
        let mut f = flat::eth(&[], ethertype::IPV4);
        f.extend(flat::ipv4(test4, prod4, proto::UDP, &[1, 1, 1, 0], 0, &dns));
        let o = check(&h, mode, "ipv4 with options, dns", &f);
        assert!(matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::ALLOW));

        // Non-first fragment of DNS: no ports, so the strictest verdict of
        // the pair applies (a port rule is no way around a pair rule).
        let mut f = flat::eth(&[], ethertype::IPV4);
        f.extend(flat::ipv4(test4, prod4, proto::UDP, &[], 185, &dns));
        let o = check(&h, mode, "non-first fragment", &f);
        let strict = if mode == Mode::Audit {
            verdict::AUDIT
        } else {
            verdict::DROP
        };
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict),
            "{o:?}"
        );

        // IHL < 5 and truncated headers are malformed. (BPF_PROG_TEST_RUN
        // refuses an untagged IP frame shorter than its IP header, so the
        // truncated ones travel behind a VLAN tag, which the kernel does not
        // look into.)
        let vlan = [(ethertype::VLAN, 7)];
        let mut f = flat::eth(&[], ethertype::IPV4);
        let mut ip = flat::ipv4(test4, prod4, proto::TCP, &[], 0, &flat::tcp_syn(1, 80));
        ip[0] = 0x44;
        f.extend(ip);
        assert_eq!(check(&h, mode, "ihl 4", &f), reference::Outcome::Malformed);
        let mut f = flat::eth(&vlan, ethertype::IPV4);
        f.extend(&flat::ipv4(test4, prod4, proto::TCP, &[], 0, &[])[..12]);
        assert_eq!(
            check(&h, mode, "truncated ipv4", &f),
            reference::Outcome::Malformed
        );
        let mut f = flat::eth(&vlan, ethertype::IPV6);
        f.extend([0x60u8; 30]);
        assert_eq!(
            check(&h, mode, "truncated ipv6", &f),
            reference::Outcome::Malformed
        );

        // Truncated L4: ports unknown -> strictest verdict.
        let mut f = flat::eth(&[], ethertype::IPV4);
        f.extend(flat::ipv4(test4, prod4, proto::UDP, &[], 0, &[0, 53]));
        let o = check(&h, mode, "truncated udp", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict),
            "{o:?}"
        );

        // IPv6 extension headers are walked: DNS behind hop-by-hop and
        // destination options still meets the port rule.
        let t6: std::net::Ipv6Addr = "fd00:30::2".parse().expect("v6");
        let p6: std::net::Ipv6Addr = "fd00:10::2".parse().expect("v6");
        let mut chain = vec![60u8, 0, 0, 0, 0, 0, 0, 0];
        chain.extend([proto::UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend(&dns);
        let mut f = flat::eth(&[], ethertype::IPV6);
        f.extend(flat::ipv6(t6.octets(), p6.octets(), 0, &chain));
        let o = check(&h, mode, "ipv6 hop-by-hop + dstopts, dns", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && j.dport == 53),
            "{o:?}"
        );

        // A chain longer than the walk bound: strictest verdict.
        let mut chain = Vec::new();
        for _ in 0..7 {
            chain.extend([60u8, 0, 0, 0, 0, 0, 0, 0]);
        }
        let last = chain.len() - 8;
        chain[last] = proto::UDP;
        chain.extend(&dns);
        let mut f = flat::eth(&[], ethertype::IPV6);
        f.extend(flat::ipv6(t6.octets(), p6.octets(), 60, &chain));
        let o = check(&h, mode, "ipv6 chain too deep", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict && j.ext_too_deep),
            "{o:?}"
        );

        // IPv6 non-first fragment of DNS: strictest verdict.
        let mut fragment = vec![proto::UDP, 0, 0x05, 0x00, 0, 0, 0, 1];
        fragment.extend(&dns);
        let mut f = flat::eth(&[], ethertype::IPV6);
        f.extend(flat::ipv6(
            t6.octets(),
            p6.octets(),
            proto::FRAGMENT,
            &fragment,
        ));
        let o = check(&h, mode, "ipv6 non-first fragment", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict && j.fragment),
            "{o:?}"
        );

        // Headers past byte 448 are not read: DNS behind a 480-byte
        // hop-by-hop header gets the strictest verdict.
        let mut chain = vec![proto::UDP, 59];
        chain.resize(480, 0);
        chain.extend(&dns);
        let mut f = flat::eth(&[], ethertype::IPV6);
        f.extend(flat::ipv6(t6.octets(), p6.octets(), 0, &chain));
        let o = check(&h, mode, "l4 past the read limit", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict && j.l4 == reference::L4Seen::NoPorts),
            "{o:?}"
        );

        tunnels(&h, mode);
    }
}

/// Tunnels whose outer addresses are allowed (production to production)
/// carrying test -> production: the inner verdict, stricter, applies.
fn tunnels(h: &KernelHarness, mode: Mode) {
    let strict = if mode == Mode::Audit {
        verdict::AUDIT
    } else {
        verdict::DROP
    };
    let prod_a = [10, 10, 1, 2];
    let prod_b = [10, 10, 2, 2];
    let inner4 = flat::ipv4(
        [10, 30, 1, 2],
        [10, 10, 1, 2],
        proto::TCP,
        &[],
        0,
        &flat::tcp_syn(5, 22),
    );
    let t6: std::net::Ipv6Addr = "fd00:30::2".parse().expect("v6");
    let p6: std::net::Ipv6Addr = "fd00:10::2".parse().expect("v6");
    let inner6 = flat::ipv6(t6.octets(), p6.octets(), proto::TCP, &flat::tcp_syn(5, 22));
    let mut inner_eth = flat::eth(&[], ethertype::IPV4);
    inner_eth.extend(&inner4);
    let allowed_inner = flat::ipv4(
        [10, 10, 3, 3],
        [10, 10, 4, 4],
        proto::TCP,
        &[],
        0,
        &flat::tcp_syn(5, 22),
    );

    let outer4 = |p: u8, payload: &[u8]| {
        let mut f = flat::eth(&[], ethertype::IPV4);
        f.extend(flat::ipv4(prod_a, prod_b, p, &[], 0, payload));
        f
    };
    let gre = |flags: u16, ethertype: u16, extra: usize, payload: &[u8]| {
        let mut g = flags.to_be_bytes().to_vec();
        g.extend(ethertype.to_be_bytes());
        g.extend(vec![0u8; extra]);
        g.extend(payload);
        g
    };
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
    vxlan.extend(&inner_eth);
    let mut geneve = vec![0x01, 0, 0x65, 0x58, 0, 0, 0x2a, 0, 0, 0, 0, 0];
    geneve.extend(&inner_eth);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ipip", outer4(proto::IPIP, &inner4)),
        ("ipv6 in ipv4", outer4(proto::IPV6, &inner6)),
        (
            "gre ipv4",
            outer4(proto::GRE, &gre(0, ethertype::IPV4, 0, &inner4)),
        ),
        (
            "gre key+seq ipv6",
            outer4(proto::GRE, &gre(0x3000, ethertype::IPV6, 8, &inner6)),
        ),
        (
            "gre teb",
            outer4(proto::GRE, &gre(0x8000, 0x6558, 4, &inner_eth)),
        ),
        ("vxlan", outer4(proto::UDP, &flat::udp(1000, 4789, &vxlan))),
        (
            "geneve with options",
            outer4(proto::UDP, &flat::udp(1000, 6081, &geneve)),
        ),
        ("ipv4 in ipv6", {
            let a: std::net::Ipv6Addr = "fd00:10::a".parse().expect("v6");
            let b: std::net::Ipv6Addr = "fd00:10::b".parse().expect("v6");
            let mut f = flat::eth(&[], ethertype::IPV6);
            f.extend(flat::ipv6(a.octets(), b.octets(), proto::IPIP, &inner4));
            f
        }),
    ];
    for (what, f) in cases {
        let o = check(h, mode, what, &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == strict && j.by_inner && j.tunneled),
            "{what}: {o:?}"
        );
    }
    // Allowed inside allowed: passes, judged on the outer.
    let o = check(
        h,
        mode,
        "ipip allowed",
        &outer4(proto::IPIP, &allowed_inner),
    );
    assert!(
        matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && j.tunneled && !j.by_inner),
        "{o:?}"
    );
    // GRE version 1 and non-IP inside VXLAN carry nothing Linux would
    // decapsulate into IP: judged on the outer packet.
    let o = check(
        h,
        mode,
        "gre v1",
        &outer4(proto::GRE, &gre(0x0001, ethertype::IPV4, 0, &inner4)),
    );
    assert!(
        matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && !j.tunneled),
        "{o:?}"
    );
    let mut arp_in_vxlan = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
    arp_in_vxlan.extend(flat::eth(&[], ethertype::ARP));
    arp_in_vxlan.extend([0u8; 28]);
    let o = check(
        h,
        mode,
        "arp in vxlan",
        &outer4(proto::UDP, &flat::udp(1000, 4789, &arp_in_vxlan)),
    );
    assert!(
        matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && !j.tunneled),
        "{o:?}"
    );
    // A tunnel in a tunnel is not walked: handled like malformed.
    let mut nested = flat::ipv4(prod_a, prod_b, proto::IPIP, &[], 0, &inner4);
    nested = flat::ipv4(prod_a, prod_b, proto::IPIP, &[], 0, &nested);
    let mut f = flat::eth(&[], ethertype::IPV4);
    f.extend(nested);
    assert_eq!(
        check(h, mode, "ipip in ipip", &f),
        reference::Outcome::TunnelTooDeep
    );
    // A tunnel whose inner header is cut short is malformed.
    let o = check(
        h,
        mode,
        "truncated vxlan",
        &outer4(proto::UDP, &flat::udp(1000, 4789, &vxlan[..20])),
    );
    assert_eq!(o, reference::Outcome::Malformed);
}

/// The mode's effect on malformed frames is what the README documents.
#[test]
fn malformed_dropped_only_in_enforce() {
    for (mode, action) in [(Mode::Enforce, ACTION_SHOT), (Mode::Audit, ACTION_NEXT)] {
        let h = harness(mode);
        let mut f = flat::eth(&[(ethertype::VLAN, 7)], ethertype::IPV4);
        f.extend([0x45u8, 0, 0]);
        let before = h.stat(stat::MALFORMED).expect("stat");
        let got = h.run(Hook::Ingress, &f).expect("run");
        assert_eq!(got.action, action, "{mode}");
        assert_eq!(h.stat(stat::MALFORMED).expect("stat"), before + 1);
    }
}

/// Egress judges what did not come through an attached interface: a packet
/// whose ingress interface is not one envfence is attached to (here: none
/// is attached at all) is judged and counted at egress.
#[test]
fn egress_judges_packets_from_unattached_interfaces() {
    let h = harness(Mode::Enforce);
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let f = flat::ip_frame(
        ip("10.30.1.2"),
        ip("10.10.1.2"),
        proto::TCP,
        &flat::tcp_syn(9, 80),
    );
    let (action, mark) = h.run_tagged(Hook::Egress, &f, 1).expect("run");
    assert_eq!(action, ACTION_SHOT);
    let (test, prod) = (
        h.policy.env_id("test").expect("test"),
        h.policy.env_id("production").expect("production"),
    );
    assert_eq!(mark, tag::judged(verdict::DROP, test, prod));
}

/// A reload takes effect at once for flows already seen: the verdict cache
/// is keyed by the policy generation.
#[test]
fn reload_invalidates_cached_verdicts() {
    let mut h = harness(Mode::Enforce);
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let f = flat::ip_frame(
        ip("10.20.1.2"),
        ip("10.10.1.2"),
        proto::TCP,
        &flat::tcp_syn(7, 443),
    );
    for _ in 0..3 {
        let o = check(&h, Mode::Enforce, "staging -> production before", &f);
        assert!(matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::AUDIT));
    }
    let stricter = policy::EXAMPLE_POLICY.replacen(
        "    to: [production]\n    verdict: audit",
        "    to: [production]\n    verdict: drop",
        1,
    );
    assert_ne!(
        stricter,
        policy::EXAMPLE_POLICY,
        "the example changed: update this test"
    );
    h.reload(&oracle::parse(&stricter, "stricter").expect("valid"))
        .expect("reload");
    for _ in 0..3 {
        let o = check(&h, Mode::Enforce, "staging -> production after", &f);
        assert!(
            matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::DROP),
            "{o:?}"
        );
    }
    // And back: the older generation's cache entries are not revived.
    h.reload(&oracle::parse(policy::EXAMPLE_POLICY, "example").expect("valid"))
        .expect("reload");
    let o = check(&h, Mode::Enforce, "staging -> production restored", &f);
    assert!(matches!(o, reference::Outcome::Judged(ref j) if j.verdict == verdict::AUDIT));
}

/// A parsed packet whose decision stage cannot be called (the stage table
/// emptied) is never passed unjudged: dropped and counted in enforce mode,
/// passed (counted) in audit mode; frames rejected before the decision are
/// unaffected.
#[test]
fn a_missing_decision_stage_fails_closed() {
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    // production -> production: allowed, so only the missing stage drops it.
    let f = flat::ip_frame(
        ip("10.10.1.2"),
        ip("10.10.2.2"),
        proto::TCP,
        &flat::tcp_syn(7, 443),
    );
    for (mode, action) in [(Mode::Enforce, ACTION_SHOT), (Mode::Audit, ACTION_NEXT)] {
        let mut h = harness(mode);
        for hook in Hook::ALL {
            let before = h.run(hook, &f).expect("run");
            assert_eq!(
                before.action, ACTION_NEXT,
                "{mode:?} {hook:?} with the stage"
            );
        }
        h.datapath_mut()
            .remove_stages()
            .expect("emptying the stage table");
        for hook in Hook::ALL {
            let r = h.run(hook, &f).expect("run");
            assert_eq!(r.action, action, "{mode:?} {hook:?} without the stage");
            assert_eq!(
                r.mark,
                tag::UNJUDGED | tag::REASON_STAGE_MISSING,
                "{mode:?} {hook:?}"
            );
            assert_eq!(r.stats_moved, vec![(stat::STAGE_MISSING, 1)], "{mode:?}");
            assert!(r.moved.is_empty(), "nothing counted as judged: {r:?}");
        }
    }
}

/// Every program of the datapath, as the agent loads it (tracking on),
/// stays under 80 % of the verifier's one-million-instruction budget: a
/// new header shape or decision path that nears the limit fails here, not
/// at an agent's start on a node.
#[test]
fn verifier_budget_has_headroom() {
    let h = KernelHarness::stateful(compiled(Mode::Enforce)).expect("loading the datapath");
    let counts = h.datapath().verified_instructions();
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in counts {
        let n =
            n.unwrap_or_else(|| panic!("{name}: the kernel reports no verified instruction count"));
        println!("{name}: {n} instructions verified");
        assert!(
            n < 800_000,
            "{name}: {n} of 1,000,000 verifier instructions"
        );
    }
}
