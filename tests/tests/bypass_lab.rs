//! Bypass classes with real traffic: in the namespace lab of the example
//! policy, a forbidden flow (test -> production) stays forbidden in every
//! shape this kernel lets us send, and allowed flows of the same shapes go
//! through. Each test is named after the bypass class; the scenarios are in
//! `tests/src/gen/wire.rs`.
//!
//! Every test first runs its probes without the agent: each of them must
//! arrive, so the shape is really deliverable and a datapath that let it
//! through would fail the test. Then it starts the agent in the node
//! namespace (`--example-policy`, attached to the node's `veth-*`) and runs
//! them again: exactly the allowed probes arrive, and the datapath's
//! counters say why the others did not. The lab (and everything the
//! scenario added to it) is torn down when the test ends, failed or not.
//!
//! This kernel has no 802.1Q, IPIP or GRE devices (only VXLAN), so VLAN
//! tags travel as raw frames (priority tags, which Linux strips and
//! delivers however many there are) and IPIP / GRE / Geneve packets are
//! written to raw and UDP sockets and counted where they arrive.
//!
//! Needs root; the agent binary is found as in `tests/tests/lab.rs`.

use std::time::Duration;

use anyhow::Result;
use envfence_tests::agent::{agent_binary, Agent};
use envfence_tests::fixture::example_lab;
use envfence_tests::gen::wire::{self, check_phase, table, Scenario};
use envfence_tests::lab::Lab;

/// In a lab of the example pods: runs the scenario `make` builds without
/// and with the agent, then `check`s the running agent's counters against
/// it; the agent must then exit 0 on SIGTERM.
fn bypass(
    make: impl FnOnce(&Lab) -> Result<Scenario>,
    check: impl FnOnce(&Agent, &Scenario),
) -> Result<()> {
    let (_g, lab) = example_lab()?;
    let scenario = make(&lab)?;
    let without = scenario.run()?;
    eprintln!("{} without the agent:\n{}", scenario.name, table(&without));
    check_phase(&scenario, &without, false)?;
    let agent = Agent::start(&lab, &agent_binary()?)?;
    let with = scenario.run()?;
    eprintln!("{} with the agent:\n{}", scenario.name, table(&with));
    check_phase(&scenario, &with, true)?;
    check(&agent, &scenario);
    agent.stop_ok(Duration::from_secs(10))
}

fn datapath(agent: &Agent, kind: &str) -> f64 {
    agent
        .datapath_stat(kind)
        .unwrap_or_else(|e| panic!("reading /metrics: {e:#}"))
}

fn packets(agent: &Agent, src: &str, dst: &str, verdict: &str) -> f64 {
    agent
        .packets(src, dst, verdict)
        .unwrap_or_else(|e| panic!("reading /metrics: {e:#}"))
}

/// How many of the scenario's probes have `any` of these in their names.
fn probes_named(scenario: &Scenario, any: &[&str]) -> f64 {
    scenario
        .probes
        .iter()
        .filter(|p| any.iter().any(|n| p.name.contains(n)))
        .count() as f64
}

/// VLAN tags (0 to 5 priority tags in front of test1 -> prod1 and allowed
/// flows): never a way past the policy; past the parser's depth, dropped
/// as `vlan_too_deep`.
#[test]
fn bypass_vlan_tags() -> Result<()> {
    bypass(wire::vlan_scenario, |agent, scenario| {
        let too_deep = probes_named(scenario, &["4 tags", "5 tags"]);
        assert!(too_deep >= 6.0);
        assert!(
            datapath(agent, "vlan_too_deep") >= too_deep,
            "vlan_too_deep did not count the frames with 3+ tags in the data"
        );
        assert!(packets(agent, "test", "production", "drop") >= 5.0);
    })
}

/// Fragments: a port rule (test -> production DNS) is no way around the
/// pair rule. Non-first fragments carry no ports and get the pair's
/// strictest verdict, so a fragmented DNS datagram never arrives, a small
/// one does, and fragmented production -> production traffic does.
#[test]
fn bypass_fragments() -> Result<()> {
    bypass(wire::fragment_scenario, |agent, _| {
        assert!(
            datapath(agent, "fragments") >= 4.0,
            "non-first fragments were not counted"
        );
        assert!(packets(agent, "test", "production", "drop") >= 4.0);
    })
}

/// A real VXLAN tunnel between two production pods carrying test ->
/// production inside: the inner packet is judged too, the stricter verdict
/// wins; production -> production inside the same tunnel goes through.
#[test]
fn bypass_tunnel_vxlan() -> Result<()> {
    bypass(wire::vxlan_scenario, |agent, _| {
        assert!(datapath(agent, "tunneled") >= 4.0);
        assert!(packets(agent, "test", "production", "drop") >= 2.0);
    })
}

/// IPIP, IPv6-in-IPv4, IPv6-in-IPv6, IPv4-in-IPv6, GRE (plain, with key
/// and sequence, over IPv6, carrying Ethernet), Geneve and VXLAN over
/// IPv6, all between two production pods: test -> production inside is
/// dropped, production -> production inside goes through, and a tunnel
/// inside a tunnel is dropped whatever it carries.
#[test]
fn bypass_tunnel_ipip_gre_geneve() -> Result<()> {
    bypass(wire::crafted_tunnel_scenario, |agent, scenario| {
        let forbidden_inner = probes_named(scenario, &["inner test -> production"]);
        assert!(forbidden_inner >= 9.0);
        assert!(packets(agent, "test", "production", "drop") >= forbidden_inner);
        assert!(datapath(agent, "tunnel_too_deep") >= 1.0);
    })
}

/// IPv6 extension headers in front of test -> production: walked while
/// the chain is within the parser's bound (DNS goes through), strictest
/// verdict past it (DNS is dropped), and udp/9000 never arrives.
#[test]
fn bypass_ipv6_extension_headers() -> Result<()> {
    bypass(wire::ipv6_ext_scenario, |agent, _| {
        assert!(datapath(agent, "ipv6_ext_too_deep") >= 2.0);
    })
}
