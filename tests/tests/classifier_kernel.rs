//! The classifier in the kernel against the longest-prefix scan of the
//! compiled policy (`CompiledPolicy::lookup_env`, which reads the prefix
//! list and knows nothing of the trie), on policies of every shape the
//! bench measures, and across reloads from one shape to the next: every
//! probe's source and destination environment, as the decision tag
//! carries them, must be the scan's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Result};
use envfence::datapath::Hook;
use envfence::policy;
use envfence_ebpf::tag;
use envfence_tests::bench::synth::{Shape, SynthPolicy};
use envfence_tests::fixture::root;
use envfence_tests::packet::{ip_frame, Packet};
use envfence_tests::rng::{seeded, Rng};
use envfence_tests::testrun::KernelHarness;
use rand::Rng as _;

/// CIDRs per family of every policy.
const CIDRS: usize = 4_000;
/// Probes per policy.
const PROBES: usize = 3_000;

/// An address inside a prefix of `p` (its first, its last or a random
/// one), or anywhere; IPv4 or IPv6.
fn draw(rng: &mut Rng, p: &SynthPolicy) -> IpAddr {
    let v4 = rng.random_bool(0.5);
    let pick = rng.random_range(0..4u8);
    let any: u128 = rng.random();
    // The prefix's first address and length, in an address of `width` bits.
    let (base, len, width) = if v4 {
        let (net, _) = p.v4[rng.random_range(0..p.v4.len())];
        (u128::from(u32::from(net.network())), net.prefix_len(), 32)
    } else {
        let (net, _) = p.v6[rng.random_range(0..p.v6.len())];
        (u128::from(net.network()), net.prefix_len(), 128)
    };
    let all = u128::MAX >> (128 - width);
    let host = all.checked_shr(u32::from(len)).unwrap_or(0);
    let a = match pick {
        0 => base,
        1 => base | host,
        2 => base | (host & any),
        _ => any & all,
    };
    if v4 {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// Probes `h` with packets between addresses of `p`; the number checked.
fn probe(h: &KernelHarness, p: &SynthPolicy, rng: &mut Rng, what: &str) -> Result<usize> {
    let mut checked = 0;
    for i in 0..PROBES {
        let src = draw(rng, p);
        // The same family: a packet has one.
        let dst = loop {
            let d = draw(rng, p);
            if d.is_ipv4() == src.is_ipv4() {
                break d;
            }
        };
        let frame = ip_frame(
            src,
            dst,
            17,
            Packet::data(b"x").udp(10_000 + i as u16, 7001),
        );
        let (_, mark) = h.run_tagged(Hook::Egress, &frame, 0)?;
        let want_src = h.policy.lookup_env(src).0;
        let want_dst = h.policy.lookup_env(dst).0;
        ensure!(
            mark & 0xff00_0000 == tag::JUDGED
                && (mark >> 8) & 0xff == want_src
                && mark & 0xff == want_dst,
            "{what}: {src} -> {dst}: the kernel tagged {mark:#010x}, the scan says \
             src env {want_src} ({}), dst env {want_dst} ({})",
            h.policy.env_name(want_src),
            h.policy.env_name(want_dst),
        );
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn every_shape_and_every_reload_between_shapes_classify_as_the_scan() -> Result<()> {
    root();
    let order = [
        Shape::Mixed,
        Shape::Adversarial,
        Shape::Kubernetes,
        Shape::Mixed,
        Shape::Kubernetes,
        Shape::Adversarial,
    ];
    let mut rng = seeded(0x5eed_c1a5);
    let first = SynthPolicy::generate_shape(CIDRS, order[0], 1)?;
    let mut h = KernelHarness::new(first.compiled.clone())?;
    let mut checked = probe(&h, &first, &mut rng, "mixed, first load")?;
    for (round, shape) in order.iter().enumerate().skip(1) {
        let p = SynthPolicy::generate_shape(CIDRS, *shape, 1 + round as u64)?;
        let parsed = policy::parse(&p.yaml, "<synthetic>")
            .map_err(|e| anyhow::anyhow!("the synthetic policy does not validate: {e}"))?;
        h.reload(&parsed)?;
        checked += probe(&h, &p, &mut rng, &format!("{shape:?} after reload {round}"))?;
    }
    ensure!(checked == order.len() * PROBES);
    Ok(())
}
