//! Connection tracking in the real programs (BPF_PROG_TEST_RUN, tracking
//! on): the conversation differential against the stateful model
//! (`tests/src/ctdiff.rs`, `tests/src/ctmodel.rs`), and hand-written
//! conversations whose outcome is spelled out here. Needs root.

use envfence::datapath::Hook;
use envfence_ebpf::{stat, tag, verdict};
use envfence_tests::ctdiff;
use envfence_tests::fixture::{env_host, root};
use envfence_tests::lab::Family::V4;
use envfence_tests::packet::{ip_frame, Packet};
use envfence_tests::testrun::{KernelHarness, ACTION_NEXT, ACTION_SHOT};

/// Conversations per `cargo test` run (`ENVFENCE_CT_CONVERSATIONS`
/// overrides; `cargo xtask fuzz` runs more).
const CONVERSATIONS: u64 = 100_000;

fn harness() -> KernelHarness {
    KernelHarness::stateful(ctdiff::first_policy().expect("policy")).expect("loading the datapath")
}

#[test]
fn conversations_kernel_equals_model() {
    root();
    let mut h = harness();
    let n = std::env::var("ENVFENCE_CT_CONVERSATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CONVERSATIONS);
    let seed = 0x00c7_2026_0012;
    let start = std::time::Instant::now();
    let r = ctdiff::run(&mut h, n, seed).expect("differential run");
    eprintln!(
        "conntrack differential: seed {seed:#x}, {} conversations, {} packets ({} replies, {} related), {} reloads, {} aged, {:.1?}",
        r.conversations, r.packets, r.replies, r.related, r.reloads, r.aged, start.elapsed()
    );
    for m in &r.mismatches {
        eprintln!("{m}");
    }
    assert!(r.conversations >= 100_000 || n < 100_000);
    // The run reaches what it is about.
    assert!(r.replies > r.conversations / 10, "{r:?}");
    assert!(r.related > r.conversations / 100, "{r:?}");
    assert!(r.reloads > 10 || n < 10_000, "{r:?}");
    assert!(
        r.mismatches.is_empty(),
        "kernel and model disagree on {} packets",
        r.mismatched_packets
    );
}

/// The differential does see a disagreement: flows aged in the model only
/// make the kernel let replies through that the model refuses, and the
/// tables differ.
#[test]
fn the_differential_sees_a_disagreement() {
    root();
    let mut h = harness();
    let cap = envfence_ebpf::capacity::CONNTRACK;
    let r = ctdiff::run_with(&mut h, 3000, 0x5eed, false, cap).expect("run");
    assert!(r.mismatched_packets > 0, "{r:?}");
    let tables_differ = r.mismatches.iter().any(|m| m.contains("tables differ"));
    assert!(tables_differ, "{r:?}");
}

/// A full table costs the state, never the verdict: with a table of 48
/// flows, new flows beyond it are judged without state (their replies by
/// the policy), counted, and kernel and model still agree on every packet.
#[test]
fn a_full_table_judges_new_flows_without_state() {
    root();
    let mut h = KernelHarness::stateful_with_capacity(ctdiff::first_policy().expect("policy"), 48)
        .expect("loading the datapath");
    let full = h.stat(stat::CONNTRACK_FULL).expect("stat");
    let r = ctdiff::run_with(&mut h, 20_000, 0xf011, true, 48).expect("run");
    for m in &r.mismatches {
        eprintln!("{m}");
    }
    assert!(
        r.mismatches.is_empty(),
        "{} packets disagree",
        r.mismatched_packets
    );
    let filled = h.stat(stat::CONNTRACK_FULL).expect("stat") - full;
    assert!(filled > 100, "the table never filled ({filled})");
}

/// The host `offset` past the start of `env`'s IPv4 network.
fn host(env: &str, offset: u128) -> std::net::IpAddr {
    env_host(env, V4, offset)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    Packet::new().tcp(sport, dport, flags).into_bytes()
}

/// The ids of the test and production environments.
fn test_prod(h: &KernelHarness) -> (u32, u32) {
    let id = |env| h.policy.env_id(env).unwrap_or_else(|| panic!("no {env}"));
    (id("test"), id("production"))
}

/// (action, mark) of `f` at ingress.
fn ingress(h: &KernelHarness, f: &[u8]) -> (u32, u32) {
    h.run_tagged(Hook::Ingress, f, 0).expect("run")
}

/// test -> production TCP 53 (allowed by its port rule): the handshake's
/// replies pass as `reply` though production -> test is dropped; the same
/// server cannot open anything towards test; a RST ends the flow.
#[test]
fn dns_over_tcp_replies_pass_and_nothing_rides_on_them() {
    root();
    let h = harness();
    let (t, p) = (host("test", 5), host("production", 53));
    let (test, prod) = test_prod(&h);
    let run = |src, dst, l4: Vec<u8>| ingress(&h, &ip_frame(src, dst, 6, Packet::data(&l4)));
    let reply = (ACTION_NEXT, tag::judged(verdict::REPLY, prod, test));
    let dropped = (ACTION_SHOT, tag::judged(verdict::DROP, prod, test));
    let allowed = (ACTION_NEXT, tag::judged(verdict::ALLOW, test, prod));
    assert_eq!(run(t, p, tcp(40000, 53, 0x02)), allowed);
    // A SYN from the server side never rides on the flow.
    assert_eq!(run(p, t, tcp(53, 40000, 0x02)), dropped);
    assert_eq!(run(p, t, tcp(53, 40000, 0x12)), reply);
    assert_eq!(run(t, p, tcp(40000, 53, 0x10)), allowed);
    assert_eq!(run(p, t, tcp(53, 40000, 0x18)), reply);
    // Another port of the same hosts is not part of the flow.
    assert_eq!(run(p, t, tcp(53, 40001, 0x18)), dropped);
    assert_eq!(run(p, t, tcp(80, 40000, 0x12)), dropped);
    // The server's RST passes and ends the flow.
    let resets = h.stat(stat::CONNTRACK_RESET).expect("stat");
    assert_eq!(run(p, t, tcp(53, 40000, 0x04)), reply);
    assert_eq!(h.stat(stat::CONNTRACK_RESET).expect("stat"), resets + 1);
    assert_eq!(run(p, t, tcp(53, 40000, 0x10)), dropped);
}

/// A reload that removes the DNS exception ends the flow in both
/// directions at the next packet; one that keeps it refreshes it.
#[test]
fn a_reload_that_forbids_a_flow_ends_it() {
    root();
    let mut h = harness();
    let variants = ctdiff::variants().expect("variants");
    let (t, p) = (host("test", 6), host("production", 53));
    let f = |src, dst, l4: Vec<u8>| ip_frame(src, dst, 17, Packet::data(&l4));
    let q = f(t, p, Packet::data(b"q").udp(41000, 53).into_bytes());
    let a = f(p, t, Packet::data(b"a").udp(53, 41000).into_bytes());
    let (test, prod) = test_prod(&h);
    let reply = (ACTION_NEXT, tag::judged(verdict::REPLY, prod, test));
    assert_eq!(ingress(&h, &q).0, ACTION_NEXT);
    assert_eq!(ingress(&h, &a), reply);
    // Same policy again (a new generation): the flow is judged again, kept.
    h.reload(&variants[0]).expect("reload");
    assert_eq!(ingress(&h, &a), reply);
    // Without the DNS exception: the reply is judged by the policy, and so
    // is the next request.
    let ended = h.stat(stat::CONNTRACK_POLICY_ENDED).expect("stat");
    h.reload(&variants[1]).expect("reload");
    let dropped = (ACTION_SHOT, tag::judged(verdict::DROP, prod, test));
    assert_eq!(ingress(&h, &a), dropped);
    assert_eq!(
        h.stat(stat::CONNTRACK_POLICY_ENDED).expect("stat"),
        ended + 1
    );
    assert_eq!(ingress(&h, &q).0, ACTION_SHOT);
    assert_eq!(ingress(&h, &a).0, ACTION_SHOT);
}

/// A router in production tells a test client its packet of a tracked
/// flow was too big: the error passes as `related` (production -> test is
/// dropped otherwise), is reported as itself under the forward flow's
/// rule (what `envfence flows --verdict related` lists), and an error
/// quoting a packet of no tracked flow is dropped and reported as such.
#[test]
fn related_errors_pass_and_are_reported() {
    use envfence_tests::ctdiff::{icmp_error, quoted_ip};
    root();
    let mut h = harness();
    let (t, p) = (host("test", 5), host("production", 53));
    let router = host("production", 0x0901);
    let (test, prod) = test_prod(&h);
    let run = |src, dst, p, l4: &[u8]| ingress(&h, &ip_frame(src, dst, p, Packet::data(l4)));
    let syn = tcp(40000, 53, 0x02);
    let r = run(t, p, 6, &syn);
    assert_eq!(r, (ACTION_NEXT, tag::judged(verdict::ALLOW, test, prod)));
    let too_big = icmp_error(false, 0, &quoted_ip(t, p, 6, &syn));
    let r = run(router, t, 1, &too_big);
    assert_eq!(r, (ACTION_NEXT, tag::judged(verdict::RELATED, prod, test)));
    let stranger = icmp_error(false, 0, &quoted_ip(t, p, 6, &tcp(40001, 53, 0x02)));
    let r = run(router, t, 1, &stranger);
    assert_eq!(r, (ACTION_SHOT, tag::judged(verdict::DROP, prod, test)));
    let events = h.events().expect("events");
    let related: Vec<_> = events.iter().filter(|e| e.verdict == "related").collect();
    assert_eq!(related.len(), 1, "{events:#?}");
    let e = related[0];
    assert_eq!(
        (e.src, e.dst, e.proto.as_str(), e.sport, e.dport),
        (router, t, "icmp", 3, 4),
        "{e:#?}"
    );
    assert_eq!(
        (e.src_env.as_str(), e.dst_env.as_str()),
        ("production", "test")
    );
    let forward_rule = h.policy.decide_flow(t, p, 6, Some(53)).rule;
    assert_eq!(e.rule, h.policy.rule_name(forward_rule), "{e:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.verdict == "drop" && e.src == router),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.verdict == "reply"),
        "replies of plain allowed flows add no events: {events:#?}"
    );
}
