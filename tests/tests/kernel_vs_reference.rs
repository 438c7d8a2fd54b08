//! The real eBPF programs, loaded into the running kernel and driven with
//! BPF_PROG_TEST_RUN, against the independent oracle (`envfence_tests::
//! oracle`): same verdict, same environments, exactly one packet counted in
//! exactly that cell, and an event naming the rule for every reported
//! verdict; the reference classifier's outcome must be the oracle's. Needs
//! root.

use std::net::IpAddr;

use envfence::datapath::Hook;
use envfence::policy::reference::{L4Seen, NonIpKind, Outcome};
use envfence::policy::{self, Mode};
use envfence_ebpf::{proto, stat, tag, verdict};
use envfence_tests::fixture::{addr_word, pod_addr, pod_v4, pod_v6, root};
use envfence_tests::gen::catalog::catalog;
use envfence_tests::gen::diff::{example_policy, held_on_both_hooks, wrap_in_vlan};
use envfence_tests::gen::kernel_refuses;
use envfence_tests::lab::Family::{V4, V6};
use envfence_tests::oracle;
use envfence_tests::packet::{ethertype, ip_frame, v6_octets, Ipv4, Ipv6, Packet};
use envfence_tests::testrun::{KernelHarness, ACTION_NEXT, ACTION_SHOT};

fn harness(mode: Mode) -> KernelHarness {
    root();
    KernelHarness::new(example_policy(mode).expect("the example policy"))
        .expect("loading the datapath")
}

/// `a` as an IPv4-mapped IPv6 address.
fn mapped(a: IpAddr) -> IpAddr {
    IpAddr::V6(v6_octets(a).into())
}

/// Addresses in every environment of the example policy and outside all.
fn addresses() -> Vec<(&'static str, IpAddr)> {
    let mut all = Vec::new();
    for (env, n) in [
        ("production", 1),
        ("staging", 1),
        ("test", 1),
        ("dev", 7),
        ("ops", 0),
    ] {
        all.extend([(env, pod_addr(env, V4, n)), (env, pod_addr(env, V6, n))]);
    }
    all.extend([
        ("world", "192.0.2.1".parse().expect("address")),
        ("world", "2001:db8::1".parse().expect("address")),
        ("test", mapped(pod_addr("test", V4, 1))),
        ("production", mapped(pod_addr("production", V4, 1))),
    ]);
    all
}

/// (proto, L4 header) for a family.
fn l4s(v6: bool) -> [(u8, Packet); 5] {
    [
        (proto::TCP, Packet::syn(40000, 8080)),
        (proto::TCP, Packet::syn(40001, 53)),
        (proto::UDP, Packet::data(b"dns?").udp(40002, 53)),
        (proto::UDP, Packet::data(b"hello").udp(40003, 9000)),
        (
            if v6 { proto::ICMPV6 } else { proto::ICMP },
            Packet::echo(v6),
        ),
    ]
}

/// Asserts kernel == reference for one frame on both hooks.
fn check(h: &KernelHarness, mode: Mode, what: &str, f: &[u8]) -> Outcome {
    check_gso(h, mode, what, f, 0)
}

/// [`check`] of a frame whose skb has `gso_size` (non-zero: a GSO packet,
/// set through the `__sk_buff` context), with the counters: exactly one
/// packet in exactly the judged cell, or the statistic of why it was not
/// judged.
fn check_gso(h: &KernelHarness, mode: Mode, what: &str, f: &[u8], gso_size: u32) -> Outcome {
    assert_eq!(h.policy.mode, mode, "{what}: harness in the wrong mode");
    let (outcome, runs) =
        held_on_both_hooks(h, f, gso_size).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    for got in runs {
        let ctx = format!("{what} ({outcome:?}): kernel {got:?}");
        match &outcome {
            Outcome::Judged(j) => {
                let cell = (j.src_env, j.dst_env, j.verdict, 1, f.len() as u64);
                assert_eq!(got.moved, vec![cell], "counters: {ctx}");
            }
            other => {
                assert!(got.moved.is_empty(), "unjudged frame counted: {ctx}");
                let index = match other {
                    Outcome::NonIp(_) => stat::NON_IP,
                    Outcome::MplsTooDeep => stat::MPLS_TOO_DEEP,
                    Outcome::Malformed => stat::MALFORMED,
                    Outcome::TunnelTooDeep => stat::TUNNEL_TOO_DEEP,
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
                let f = ip_frame(*src, *dst, p, l4);
                let what = format!("{src} ({src_env}) -> {dst} ({dst_env}) proto {p}");
                let outcome = check(&h, mode, &what, &f);
                let Outcome::Judged(j) = outcome else {
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
    // what | source, destination ([`addr_word`]), protocol, port, verdict, rule
    let cases = [
        "test -> production tcp/8080 | v4:test:1 v4:production:1 tcp 8080 drop test-to-prod",
        "test -> production udp/53 (port rule) | v4:test:1 v4:production:1 udp 53 allow \
         test-dns-in-prod",
        "test -> production tcp/53 over IPv6 (port rule) | v6:test:1 v6:production:1 tcp 53 \
         allow test-dns-in-prod",
        "dev -> production udp/53 (the port rule is for test only) | v4:dev:1 v4:production:1 \
         udp 53 drop test-to-prod",
        "production -> test icmp | v4:production:1 v4:test:1 icmp - drop prod-to-test",
        "staging -> production (audit) | v4:staging:1 v4:production:1 tcp 443 audit \
         staging-to-prod",
        "ops -> production (log) | v4:ops:0 v4:production:1 tcp 22 log ops-to-prod",
        "production -> production | v4:production:1 v4:production:2 tcp 5432 allow default",
        "v4-mapped test -> production is judged as IPv4 | mapped:test:1 mapped:production:1 \
         tcp 80 drop test-to-prod",
    ];
    for case in cases {
        let (what, rest) = case.split_once(" | ").expect("what | case");
        let w: Vec<&str> = rest.split(' ').collect();
        let [src, dst, proto, port, want_verdict, want_rule] = w[..] else {
            panic!("case {case:?}");
        };
        let (src, dst, port) = (addr_word(src), addr_word(dst), port.parse().ok());
        let (src, dst) = (src.expect("source"), dst.expect("destination"));
        let (p, l4) = match (proto, port) {
            ("tcp", Some(port)) => (proto::TCP, Packet::syn(1234, port)),
            ("udp", Some(port)) => (proto::UDP, Packet::data(b"q").udp(1234, port)),
            ("icmp", None) => (proto::ICMP, Packet::echo(false)),
            _ => panic!("{what}: l4 {proto} {port:?}"),
        };
        let outcome = check(&h, Mode::Enforce, what, &ip_frame(src, dst, p, l4));
        let Outcome::Judged(j) = outcome else {
            panic!("{what}: not judged");
        };
        assert_eq!(verdict::name(j.verdict), want_verdict, "{what}");
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

/// An IPv4 header from `src` to `dst` in front of `l4`.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], frag: u16, l4: Packet) -> Packet {
    l4.ipv4(&Ipv4 {
        src,
        dst,
        proto,
        options: options.to_vec(),
        frag,
        ..Ipv4::default()
    })
}

/// An IPv6 header from pod `src` to pod `dst` (environment, n), next
/// header `next`.
fn ipv6(src: (&str, u8), dst: (&str, u8), next: u8) -> Ipv6 {
    let (src, dst) = (pod_v6(src.0, src.1).octets(), pod_v6(dst.0, dst.1).octets());
    Ipv6 {
        src,
        dst,
        next,
        ..Ipv6::default()
    }
}

/// An untagged test -> production IPv6 frame: next header `next`, then
/// `rest`.
fn test_to_prod6(next: u8, rest: &[u8]) -> Vec<u8> {
    let ip = ipv6(("test", 1), ("production", 1), next);
    Packet::data(rest).ipv6(&ip).ethernet(&[]).into_bytes()
}

/// The strictest verdict of `mode` (what hidden ports get).
fn strictest(mode: Mode) -> u8 {
    if mode == Mode::Audit {
        verdict::AUDIT
    } else {
        verdict::DROP
    }
}

/// Header shapes the foundation parser handles explicitly.
#[test]
fn header_shapes() {
    use ethertype::{IPV4, IPV6, QINQ, VLAN};
    for mode in [Mode::Enforce, Mode::Audit] {
        let h = harness(mode);
        let (t4, p4) = (pod_v4("test", 1).octets(), pod_v4("production", 1).octets());
        let ip4 = |p, options: &[u8], frag, l4| ipv4(t4, p4, p, options, frag, l4);
        let dns = || Packet::data(b"q").udp(1234, 53);
        let frame = |p: Packet| p.eth(&[], IPV4).into_bytes();
        let strict = strictest(mode);

        // ARP passes, counted as non-IP.
        let arp = Packet::data(&[0u8; 28]).eth(&[], ethertype::ARP);
        let o = check(&h, mode, "arp", arp.bytes());
        assert_eq!(o, Outcome::NonIp(NonIpKind::Arp));

        // One and two VLAN tags are walked; three are too deep.
        for tags in [vec![(VLAN, 10)], vec![(QINQ, 10), (VLAN, 20)]] {
            let f = ip4(proto::TCP, &[], 0, Packet::syn(1, 80)).eth(&tags, IPV4);
            let o = check(&h, mode, "vlan-tagged test->prod", f.bytes());
            assert!(matches!(o, Outcome::Judged(ref j) if j.src_env != 0 && j.dst_env != 0));
        }
        let f = ip4(proto::TCP, &[], 0, Packet::syn(1, 80))
            .eth(&[(QINQ, 1), (VLAN, 2), (VLAN, 3)], IPV4);
        let o = check(&h, mode, "triple vlan", f.bytes());
        assert_eq!(o, Outcome::VlanTooDeep);

        // IPv4 options: the ports are found after them (port rule applies).
        let f = frame(ip4(proto::UDP, &[1, 1, 1, 0], 0, dns()));
        let o = check(&h, mode, "ipv4 with options, dns", &f);
        assert!(matches!(o, Outcome::Judged(ref j) if j.verdict == verdict::ALLOW));

        // Non-first fragment of DNS: no ports, so the strictest verdict of
        // the pair applies (a port rule is no way around a pair rule).
        let f = frame(ip4(proto::UDP, &[], 185, dns()));
        let o = check(&h, mode, "non-first fragment", &f);
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict),
            "{o:?}"
        );

        // IHL < 5 and truncated headers are malformed. (BPF_PROG_TEST_RUN
        // refuses an untagged IP frame shorter than its IP header, so the
        // truncated ones travel behind a VLAN tag, which the kernel does not
        // look into.)
        let vlan = [(VLAN, 7)];
        let mut f = frame(ip4(proto::TCP, &[], 0, Packet::syn(1, 80)));
        f[14] = 0x44;
        assert_eq!(check(&h, mode, "ihl 4", &f), Outcome::Malformed);
        let mut ip = ip4(proto::TCP, &[], 0, Packet::new());
        ip.cut(12);
        for (what, f) in [
            ("truncated ipv4", ip.eth(&vlan, IPV4)),
            (
                "truncated ipv6",
                Packet::data(&[0x60u8; 30]).eth(&vlan, IPV6),
            ),
        ] {
            assert_eq!(check(&h, mode, what, f.bytes()), Outcome::Malformed);
        }

        // Truncated L4: ports unknown -> strictest verdict.
        let f = frame(ip4(proto::UDP, &[], 0, Packet::data(&[0, 53])));
        let o = check(&h, mode, "truncated udp", &f);
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict),
            "{o:?}"
        );

        // IPv6 extension headers are walked: DNS behind hop-by-hop and
        // destination options still meets the port rule.
        let mut chain = vec![60u8, 0, 0, 0, 0, 0, 0, 0];
        chain.extend([proto::UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend(dns().bytes());
        let f = test_to_prod6(0, &chain);
        let o = check(&h, mode, "ipv6 hop-by-hop + dstopts, dns", &f);
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && j.dport == 53),
            "{o:?}"
        );

        // A chain longer than the walk bound: strictest verdict.
        let mut chain = [60u8, 0, 0, 0, 0, 0, 0, 0].repeat(7);
        let last = chain.len() - 8;
        chain[last] = proto::UDP;
        chain.extend(dns().bytes());
        let o = check(&h, mode, "ipv6 chain too deep", &test_to_prod6(60, &chain));
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict && j.ext_too_deep),
            "{o:?}"
        );

        // IPv6 non-first fragment of DNS: strictest verdict.
        let mut fragment = vec![proto::UDP, 0, 0x05, 0x00, 0, 0, 0, 1];
        fragment.extend(dns().bytes());
        let f = test_to_prod6(proto::FRAGMENT, &fragment);
        let o = check(&h, mode, "ipv6 non-first fragment", &f);
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict && j.fragment),
            "{o:?}"
        );

        // Headers past byte 448 are not read: DNS behind a 480-byte
        // hop-by-hop header gets the strictest verdict.
        let mut chain = vec![proto::UDP, 59];
        chain.resize(480, 0);
        chain.extend(dns().bytes());
        let o = check(
            &h,
            mode,
            "l4 past the read limit",
            &test_to_prod6(0, &chain),
        );
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict && j.l4 == L4Seen::NoPorts),
            "{o:?}"
        );

        tunnels(&h, mode);
    }
}

/// Tunnels whose outer addresses are allowed (production to production)
/// carrying test -> production: the inner verdict, stricter, applies.
fn tunnels(h: &KernelHarness, mode: Mode) {
    use ethertype::{ARP, IPV4, IPV6, TEB};
    let strict = strictest(mode);
    let prod = |n| pod_v4("production", n).octets();
    let (prod_a, prod_b) = (prod(1), prod(2));
    let syn = || Packet::syn(5, 22);
    let inner4 = ipv4(
        pod_v4("test", 1).octets(),
        prod_a,
        proto::TCP,
        &[],
        0,
        syn(),
    );
    let inner6 = syn().ipv6(&ipv6(("test", 1), ("production", 1), proto::TCP));
    let inner_eth = inner4.clone().eth(&[], IPV4);
    let allowed_inner = ipv4(prod(3), prod(4), proto::TCP, &[], 0, syn());
    let outer4 = |p, payload| ipv4(prod_a, prod_b, p, &[], 0, payload).eth(&[], IPV4);
    let vxlan = |inner: Packet| inner.vxlan(0x08, 42);
    let udp = |port, payload: Packet| outer4(proto::UDP, payload.udp(1000, port));
    let ipv4_in_ipv6 = inner4
        .clone()
        .ipv6(&ipv6(("production", 1), ("production", 2), proto::IPIP))
        .eth(&[], IPV6);
    let gre = proto::GRE;
    let cases = [
        ("ipip", outer4(proto::IPIP, inner4.clone())),
        ("ipv6 in ipv4", outer4(proto::IPV6, inner6.clone())),
        ("gre ipv4", outer4(proto::GRE, inner4.clone().gre(0, IPV4))),
        ("gre key+seq ipv6", outer4(gre, inner6.gre(0x3000, IPV6))),
        ("gre teb", outer4(gre, inner_eth.clone().gre(0x8000, TEB))),
        ("vxlan", udp(4789, vxlan(inner_eth.clone()))),
        (
            "geneve with options",
            udp(6081, inner_eth.clone().geneve(1, TEB)),
        ),
        ("ipv4 in ipv6", ipv4_in_ipv6),
    ];
    for (what, f) in cases {
        let o = check(h, mode, what, f.bytes());
        assert!(
            matches!(o, Outcome::Judged(ref j) if j.verdict == strict && j.by_inner && j.tunneled),
            "{what}: {o:?}"
        );
    }
    // Allowed inside allowed: passes, judged on the outer.
    let f = outer4(proto::IPIP, allowed_inner);
    let o = check(h, mode, "ipip allowed", f.bytes());
    assert!(
        matches!(o, Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && j.tunneled && !j.by_inner),
        "{o:?}"
    );
    // GRE version 1 and non-IP inside VXLAN carry nothing Linux would
    // decapsulate into IP: judged on the outer packet.
    let f = outer4(proto::GRE, inner4.clone().gre(0x0001, IPV4));
    let o = check(h, mode, "gre v1", f.bytes());
    assert!(
        matches!(o, Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && !j.tunneled),
        "{o:?}"
    );
    let arp = Packet::data(&[0u8; 28]).eth(&[], ARP);
    let o = check(h, mode, "arp in vxlan", udp(4789, vxlan(arp)).bytes());
    assert!(
        matches!(o, Outcome::Judged(ref j) if j.verdict == verdict::ALLOW && !j.tunneled),
        "{o:?}"
    );
    // A tunnel in a tunnel is not walked: handled like malformed.
    let nested = ipv4(prod_a, prod_b, proto::IPIP, &[], 0, inner4);
    let f = outer4(proto::IPIP, nested);
    let o = check(h, mode, "ipip in ipip", f.bytes());
    assert_eq!(o, Outcome::TunnelTooDeep);
    // A tunnel whose inner header is cut short is malformed.
    let mut cut = vxlan(inner_eth);
    cut.cut(20);
    let o = check(h, mode, "truncated vxlan", udp(4789, cut).bytes());
    assert_eq!(o, Outcome::Malformed);
}

/// A test -> production TCP SYN to `dport`, IPv4.
fn test_to_prod(sport: u16, dport: u16) -> Vec<u8> {
    let (test, prod) = (pod_addr("test", V4, 1), pod_addr("production", V4, 1));
    ip_frame(test, prod, proto::TCP, Packet::syn(sport, dport))
}

/// The mode's effect on malformed frames is what the README documents.
#[test]
fn malformed_dropped_only_in_enforce() {
    for (mode, action) in [(Mode::Enforce, ACTION_SHOT), (Mode::Audit, ACTION_NEXT)] {
        let h = harness(mode);
        let f = Packet::data(&[0x45, 0, 0]).eth(&[(ethertype::VLAN, 7)], ethertype::IPV4);
        let before = h.stat(stat::MALFORMED).expect("stat");
        let got = h.run(Hook::Ingress, f.bytes()).expect("run");
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
    let (action, mark) = h
        .run_tagged(Hook::Egress, &test_to_prod(9, 80), 1)
        .expect("run");
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
    let (staging, prod) = (pod_addr("staging", V4, 1), pod_addr("production", V4, 1));
    let f = ip_frame(staging, prod, proto::TCP, Packet::syn(7, 443));
    let verdict_now = |h: &KernelHarness, what: &str| match check(h, Mode::Enforce, what, &f) {
        Outcome::Judged(j) => j.verdict,
        o => panic!("{what}: {o:?}"),
    };
    for _ in 0..3 {
        assert_eq!(verdict_now(&h, "staging -> production"), verdict::AUDIT);
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
        assert_eq!(
            verdict_now(&h, "staging -> production, stricter"),
            verdict::DROP
        );
    }
    // And back: the older generation's cache entries are not revived.
    h.reload(&oracle::parse(policy::EXAMPLE_POLICY, "example").expect("valid"))
        .expect("reload");
    assert_eq!(
        verdict_now(&h, "staging -> production again"),
        verdict::AUDIT
    );
}

/// A parsed packet whose decision stage cannot be called (the stage table
/// emptied) is never passed unjudged: dropped and counted in enforce mode,
/// passed (counted) in audit mode; frames rejected before the decision are
/// unaffected.
#[test]
fn a_missing_decision_stage_fails_closed() {
    // production -> production: allowed, so only the missing stage drops it.
    let (a, b) = (pod_addr("production", V4, 1), pod_addr("production", V4, 2));
    let f = ip_frame(a, b, proto::TCP, Packet::syn(7, 443));
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
    root();
    let policy = example_policy(Mode::Enforce).expect("the example policy");
    let h = KernelHarness::stateful(policy).expect("loading the datapath");
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
