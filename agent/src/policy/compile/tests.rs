//! Tests of `compile` and of the decisions it answers.

use envfence_ebpf::{proto, verdict};

use super::*;
use crate::policy::{parse, EXAMPLE_ORIGIN, EXAMPLE_POLICY};

fn example() -> CompiledPolicy {
    compile(&parse(EXAMPLE_POLICY, EXAMPLE_ORIGIN).expect("example policy"))
}

fn compiled(source: &str) -> CompiledPolicy {
    compile(&parse(source, "t.yaml").expect("valid policy"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("IP address")
}

#[test]
fn example_env_and_rule_ids() {
    let p = example();
    assert_eq!(
        p.env_names,
        ["world", "dev", "ops", "production", "staging", "test"]
    );
    assert_eq!(p.env_id("world"), Some(0));
    assert_eq!(p.env_id("production"), Some(3));
    assert_eq!(p.env_id("test"), Some(5));
    assert_eq!(p.env_id("nope"), None);
    assert_eq!(p.env_name(0), "world");
    assert_eq!(p.env_name(5), "test");
    assert_eq!(p.env_name(42), "unknown(42)");
    assert_eq!(
        p.rule_names,
        [
            "default",
            "test-to-prod",
            "prod-to-test",
            "staging-to-prod",
            "test-dns-in-prod",
            "ops-to-prod"
        ]
    );
    assert_eq!(p.rule_name(0), "default");
    assert_eq!(p.rule_name(4), "test-dns-in-prod");
    assert_eq!(p.rule_name(999), "unknown(999)");
    assert_eq!(p.rule_id("ops-to-prod"), Some(5));
    assert_eq!(p.rule_id("default"), Some(0));
    assert_eq!(p.pairs.len(), PAIRS_LEN as usize);
    assert_eq!(p.v4.len(), 5);
    assert_eq!(p.v6.len(), 5);
    assert_eq!(p.source_sha256.len(), 64);
}

#[test]
fn example_test_to_production() {
    let p = example();
    let (test, prod) = (5, 3);
    let pair = p.pairs[pair_index(test, prod) as usize];
    assert_eq!(
        pair,
        PairVerdict {
            verdict: verdict::DROP,
            no_port_verdict: verdict::DROP,
            has_port_rules: 1,
            ct: envfence_ebpf::ct::OPENS | envfence_ebpf::ct::REPLIES,
            rule: 1,
            no_port_rule: 1,
        }
    );
    // DNS is allowed by its port rule, other ports are dropped by the pair.
    let dns_udp = L4::Ports {
        proto: proto::UDP,
        dport: 53,
    };
    assert_eq!(p.decide(test, prod, dns_udp), (verdict::ALLOW, 4));
    let dns_tcp = L4::Ports {
        proto: proto::TCP,
        dport: 53,
    };
    assert_eq!(p.decide(test, prod, dns_tcp), (verdict::ALLOW, 4));
    let https = L4::Ports {
        proto: proto::TCP,
        dport: 443,
    };
    assert_eq!(p.decide(test, prod, https), (verdict::DROP, 1));
    let sctp_dns = L4::Ports {
        proto: proto::SCTP,
        dport: 53,
    };
    assert_eq!(p.decide(test, prod, sctp_dns), (verdict::DROP, 1));
    assert_eq!(p.decide(test, prod, L4::NoPorts), (verdict::DROP, 1));
    assert_eq!(p.decide(test, prod, L4::Other), (verdict::DROP, 1));
    // dev -> production has no port rules: DNS is dropped too.
    let dev = 1;
    assert_eq!(p.decide(dev, prod, dns_udp), (verdict::DROP, 1));
    assert_eq!(p.pairs[pair_index(dev, prod) as usize].has_port_rules, 0);

    let key = PortKey {
        src_env: 5,
        dst_env: 3,
        proto: proto::UDP,
        slot: 0,
        port: 53,
        _pad2: 0,
    };
    let value = RuleVerdict {
        verdict: verdict::ALLOW,
        _pad: 0,
        rule: 4,
    };
    assert_eq!(p.ports.len(), 2);
    assert!(p.ports.contains(&(key, value)));
}

#[test]
fn example_other_pairs() {
    let p = example();
    let (dev, ops, prod, staging, test) = (1, 2, 3, 4, 5);
    assert_eq!(p.decide(prod, test, L4::Other), (verdict::DROP, 2));
    assert_eq!(p.decide(prod, dev, L4::Other), (verdict::DROP, 2));
    assert_eq!(p.decide(staging, prod, L4::Other), (verdict::AUDIT, 3));
    assert_eq!(p.decide(ops, prod, L4::NoPorts), (verdict::LOG, 5));
    // Pairs no rule names take the default.
    assert_eq!(p.decide(test, staging, L4::Other), (verdict::ALLOW, 0));
    assert_eq!(p.decide(0, prod, L4::Other), (verdict::ALLOW, 0));
    assert_eq!(p.decide(prod, prod, L4::Other), (verdict::ALLOW, 0));
    // Ids out of range take the default too.
    assert_eq!(p.decide(64, prod, L4::Other), (verdict::ALLOW, 0));
}

#[test]
fn no_port_verdict_is_the_strictest() {
    let p = compiled(
        "\
environments:
  a: [\"10.1.0.0/16\"]
  b: [\"10.2.0.0/16\"]
  c: [\"10.3.0.0/16\"]
rules:
  - name: a-b-log
    from: [a]
    to: [b]
    verdict: log
  - name: a-b-ssh
    from: [a]
    to: [b]
    ports: [\"22/tcp\"]
    verdict: drop
  - name: a-b-web
    from: [a]
    to: [b]
    ports: [\"80/tcp\"]
    verdict: drop
  - name: a-c-ssh-log
    from: [a]
    to: [c]
    ports: [\"22/tcp\"]
    verdict: log
  - name: a-c
    from: [a]
    to: [c]
    verdict: log
  - name: b-c-dns
    from: [b]
    to: [c]
    ports: [\"53/udp\"]
    verdict: allow
",
    );
    let (a, b, c) = (1, 2, 3);
    // Port rule stricter than the pair: the port rule (lowest id) wins.
    let ab = p.pairs[pair_index(a, b) as usize];
    assert_eq!((ab.verdict, ab.rule), (verdict::LOG, 1));
    assert_eq!((ab.no_port_verdict, ab.no_port_rule), (verdict::DROP, 2));
    assert_eq!(ab.has_port_rules, 1);
    assert_eq!(p.decide(a, b, L4::NoPorts), (verdict::DROP, 2));
    // A tie keeps the pair's rule.
    let ac = p.pairs[pair_index(a, c) as usize];
    assert_eq!((ac.no_port_verdict, ac.no_port_rule), (verdict::LOG, 5));
    // More permissive port rule: the pair's (default) verdict stays.
    let bc = p.pairs[pair_index(b, c) as usize];
    assert_eq!((bc.verdict, bc.rule), (verdict::ALLOW, 0));
    assert_eq!((bc.no_port_verdict, bc.no_port_rule), (verdict::ALLOW, 0));
    assert_eq!(bc.has_port_rules, 1);
}

#[test]
fn default_drop_makes_no_port_verdict_strict() {
    let p = compiled(
        "\
default: drop
environments:
  a: [\"10.1.0.0/16\"]
rules:
  - name: web
    from: [world]
    to: [a]
    ports: [\"443/tcp\"]
    verdict: allow
",
    );
    let https = L4::Ports {
        proto: proto::TCP,
        dport: 443,
    };
    assert_eq!(p.decide(0, 1, https), (verdict::ALLOW, 1));
    assert_eq!(p.decide(0, 1, L4::NoPorts), (verdict::DROP, 0));
    assert_eq!(p.decide(0, 1, L4::Other), (verdict::DROP, 0));
}

#[test]
fn audit_mode_folds_drops() {
    let source = EXAMPLE_POLICY.replace("mode: enforce", "mode: audit");
    let p = compiled(&source);
    assert_eq!(p.mode, Mode::Audit);
    let (test, prod) = (5, 3);
    let pair = p.pairs[pair_index(test, prod) as usize];
    assert_eq!((pair.verdict, pair.rule), (verdict::AUDIT, 1));
    assert_eq!(
        (pair.no_port_verdict, pair.no_port_rule),
        (verdict::AUDIT, 1)
    );
    let dns = L4::Ports {
        proto: proto::UDP,
        dport: 53,
    };
    assert_eq!(p.decide(test, prod, dns), (verdict::ALLOW, 4));
    assert!(p
        .pairs
        .iter()
        .all(|pair| pair.verdict != verdict::DROP && pair.no_port_verdict != verdict::DROP));

    let p = compiled(
        "\
mode: audit
default: drop
environments:
  a: [\"10.1.0.0/16\"]
rules:
  - name: ssh
    from: [a]
    to: [a]
    ports: [\"22/tcp\"]
    verdict: drop
",
    );
    assert_eq!(p.default, Verdict::Drop);
    assert!(p.pairs.iter().all(|pair| pair.verdict == verdict::AUDIT));
    assert!(p.ports.iter().all(|(_, v)| v.verdict == verdict::AUDIT));
    assert_eq!(p.decide(0, 99, L4::Other), (verdict::AUDIT, 0));
}

#[test]
fn lookup_longest_prefix_mapped_and_world() {
    let p = compiled(
        "\
environments:
  production: [\"10.10.0.0/16\", \"fd00:10::/48\"]
  prod-db: [\"10.10.5.0/24\", \"fd00:10:0:5::/64\", \"10.10.5.7\"]
  everything: [\"0.0.0.0/0\"]
",
    );
    let (everything, prod_db, production) = (1, 2, 3);
    let net = |t: &str| Some(t.parse::<IpNet>().unwrap());
    assert_eq!(
        p.lookup_env(ip("10.10.6.1")),
        (production, net("10.10.0.0/16"))
    );
    assert_eq!(
        p.lookup_env(ip("10.10.5.1")),
        (prod_db, net("10.10.5.0/24"))
    );
    assert_eq!(
        p.lookup_env(ip("10.10.5.7")),
        (prod_db, net("10.10.5.7/32"))
    );
    assert_eq!(p.lookup_env(ip("8.8.8.8")), (everything, net("0.0.0.0/0")));
    assert_eq!(
        p.lookup_env(ip("::ffff:10.10.5.1")),
        (prod_db, net("10.10.5.0/24"))
    );
    assert_eq!(
        p.lookup_env(ip("fd00:10:0:5::1")),
        (prod_db, net("fd00:10:0:5::/64"))
    );
    assert_eq!(
        p.lookup_env(ip("fd00:10:0:6::1")),
        (production, net("fd00:10::/48"))
    );
    // No IPv6 default route: IPv6 outside the prefixes is world.
    assert_eq!(p.lookup_env(ip("2001:db8::1")), (0, None));
}

#[test]
fn decide_flow() {
    let p = example();
    let d = p.decide_flow(ip("10.30.1.1"), ip("10.10.2.2"), proto::UDP, Some(53));
    assert_eq!(
        d,
        Decision {
            src_env: 5,
            dst_env: 3,
            src_cidr: Some("10.30.0.0/16".parse().unwrap()),
            dst_cidr: Some("10.10.0.0/16".parse().unwrap()),
            verdict: verdict::ALLOW,
            rule: 4,
        }
    );
    // The same flow with its ports hidden (a non-first fragment) is dropped.
    let d = p.decide_flow(ip("10.30.1.1"), ip("10.10.2.2"), proto::UDP, None);
    assert_eq!((d.verdict, d.rule), (verdict::DROP, 1));
    // ICMP between test and production: dropped by the pair rule.
    let d = p.decide_flow(ip("::ffff:10.30.1.1"), ip("fd00:10::5"), proto::ICMP, None);
    assert_eq!(
        (d.src_env, d.dst_env, d.verdict, d.rule),
        (5, 3, verdict::DROP, 1)
    );
    // From the world: the default.
    let d = p.decide_flow(ip("192.0.2.1"), ip("10.10.2.2"), proto::TCP, Some(443));
    assert_eq!(
        (d.src_env, d.src_cidr, d.verdict, d.rule),
        (0, None, verdict::ALLOW, 0)
    );
}

#[test]
fn world_in_rules() {
    let p = compiled(
        "\
default: allow
environments:
  production: [\"10.10.0.0/16\"]
rules:
  - name: no-internet
    from: [production]
    to: [world]
    verdict: drop
  - name: web-in
    from: [world]
    to: [production]
    ports: [\"443/tcp\"]
    verdict: log
",
    );
    let d = p.decide_flow(ip("10.10.0.1"), ip("1.1.1.1"), proto::TCP, Some(443));
    assert_eq!((d.dst_env, d.verdict, d.rule), (0, verdict::DROP, 1));
    let d = p.decide_flow(ip("1.1.1.1"), ip("10.10.0.1"), proto::TCP, Some(443));
    assert_eq!((d.verdict, d.rule), (verdict::LOG, 2));
    let d = p.decide_flow(ip("1.1.1.1"), ip("10.10.0.1"), proto::TCP, Some(80));
    assert_eq!((d.verdict, d.rule), (verdict::ALLOW, 0));
    let d = p.decide_flow(ip("1.1.1.1"), ip("10.10.0.1"), proto::TCP, None);
    assert_eq!((d.verdict, d.rule), (verdict::LOG, 2));
}

#[test]
fn port_ranges_expand_and_first_rule_keeps_its_id() {
    let p = compiled(
        "\
environments:
  a: [\"10.1.0.0/16\"]
rules:
  - name: r1
    from: [a]
    to: [a]
    ports: [\"8000-8009/tcp\"]
    verdict: log
  - name: r2
    from: [a]
    to: [a]
    ports: [\"8005-8019/tcp\"]
    verdict: log
",
    );
    assert_eq!(p.ports.len(), 20);
    assert!(p.ports.windows(2).all(|w| w[0].0.port < w[1].0.port));
    let tcp = |dport| L4::Ports {
        proto: proto::TCP,
        dport,
    };
    assert_eq!(p.decide(1, 1, tcp(8005)), (verdict::LOG, 1));
    assert_eq!(p.decide(1, 1, tcp(8019)), (verdict::LOG, 2));
    assert_eq!(p.decide(1, 1, tcp(8020)), (verdict::ALLOW, 0));
}

#[test]
fn environment_ids_follow_names_not_file_order() {
    let a = compiled("environments:\n  zeta: [\"10.2.0.0/16\"]\n  alpha: [\"10.1.0.0/16\"]\n");
    assert_eq!(a.env_names, ["world", "alpha", "zeta"]);
    assert_eq!(a.lookup_env(ip("10.2.0.1")).0, 2);
}

#[test]
fn l4_of() {
    assert_eq!(
        L4::of(proto::TCP, Some(22)),
        L4::Ports {
            proto: proto::TCP,
            dport: 22
        }
    );
    assert_eq!(L4::of(proto::SCTP, None), L4::NoPorts);
    assert_eq!(L4::of(proto::ICMP, Some(3)), L4::Other);
    assert_eq!(L4::of(proto::ICMPV6, None), L4::Other);
}

#[test]
fn environment_ids_are_stable_across_recompiles() {
    let first = crate::policy::parse(
        "environments:\n  production: [10.10.0.0/16]\n  staging: [10.20.0.0/16]\n  test: [10.30.0.0/16]\n",
        "a",
    )
    .expect("valid");
    let a = compile(&first);
    assert_eq!(a.env_names, ["world", "production", "staging", "test"]);
    // staging goes, aaa and zzz come: production and test keep their ids,
    // aaa takes the freed id, zzz a new one.
    let second = crate::policy::parse(
        "environments:\n  aaa: [10.1.0.0/16]\n  production: [10.10.0.0/16]\n  test: [10.30.0.0/16]\n  zzz: [10.9.0.0/16]\n",
        "b",
    )
    .expect("valid");
    let b = crate::policy::compile_with_ids(&second, &a.env_names, &a.rule_names);
    assert_eq!(b.env_names, ["world", "production", "aaa", "test", "zzz"]);
    assert_eq!(b.lookup_env("10.30.1.1".parse().expect("ip")).0, 3);
    assert_eq!(b.lookup_env("10.1.1.1".parse().expect("ip")).0, 2);
    // Only test left: a gap where production was, and no trailing gaps.
    let third =
        crate::policy::parse("environments:\n  test: [10.30.0.0/16]\n", "c").expect("valid");
    let c = crate::policy::compile_with_ids(&third, &b.env_names, &b.rule_names);
    assert_eq!(c.env_names, ["world", "", "", "test"]);
    assert_eq!(c.env_id(""), None);
    assert_eq!(c.env_name(1), "unknown(1)");
    assert_eq!(c.env_id("test"), Some(3));
}

#[test]
fn rule_ids_are_stable_across_recompiles() {
    let env = "environments:\n  a: [10.1.0.0/16]\n  b: [10.2.0.0/16]\n  c: [10.3.0.0/16]\n";
    let first = crate::policy::parse(
        &format!("{env}rules:\n  - {{name: one, from: [a], to: [b], verdict: drop}}\n  - {{name: two, from: [b], to: [a], verdict: log}}\n"),
        "a",
    )
    .expect("valid");
    let a = compile(&first);
    assert_eq!(a.rule_names, ["default", "one", "two"]);
    // `one` goes, `three` comes first in the file: `two` keeps id 2, `three`
    // takes the freed id 1.
    let second = crate::policy::parse(
        &format!("{env}rules:\n  - {{name: three, from: [c], to: [a], verdict: audit}}\n  - {{name: two, from: [b], to: [a], verdict: log}}\n"),
        "b",
    )
    .expect("valid");
    let b = crate::policy::compile_with_ids(&second, &a.env_names, &a.rule_names);
    assert_eq!(b.rule_names, ["default", "three", "two"]);
    let (ea, eb, ec) = (
        b.env_id("a").expect("a"),
        b.env_id("b").expect("b"),
        b.env_id("c").expect("c"),
    );
    assert_eq!(
        b.decide(eb, ea, L4::Other),
        (crate::policy::Verdict::Log.as_u8(), 2)
    );
    assert_eq!(
        b.decide(ec, ea, L4::Other),
        (crate::policy::Verdict::Audit.as_u8(), 1)
    );
}
