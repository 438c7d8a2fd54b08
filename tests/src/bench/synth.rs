//! Synthetic policies of N CIDRs and packets spread over them.
//!
//! A policy of N CIDRs holds N IPv4 and N IPv6 prefixes (2N entries in
//! all) over five environments, in one of three [`Shape`]s: mixed lengths
//! (/16–/32 for IPv4, /32–/128 for IPv6: the default), Kubernetes-sized
//! (host addresses, /32 and /128, plus one shorter prefix in a hundred) or
//! adversarial (nested chains using every prefix length, /1–/32 and
//! /1–/128). The first five prefixes of each family are fixed: the
//! example policy's networks of the five environments (where the lab's
//! pods are: [`crate::fixture::env_net`]), so a lab's flows have known
//! environments; the others are drawn at random from addresses outside
//! 10/8 and fd00::/8, so only the adversarial shape's shortest prefixes
//! cover the lab's (which are longer, so they still win). Rules: test →
//! production is dropped, except 53/udp; everything else is allowed (the
//! default).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use envfence::policy::{self, CompiledPolicy};
use envfence_ebpf::verdict;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::fixture::env_net;
use crate::lab::Family;
use crate::packet::{ip_frame, Packet};
use crate::rng::{seeded, Draw as _, Rng};
use rand::Rng as _;

/// The environments, in the order their prefixes are dealt.
pub const ENVS: [&str; 5] = ["production", "staging", "test", "dev", "ops"];
pub const PRODUCTION: usize = 0;
pub const TEST: usize = 2;

/// A synthetic policy: its YAML text, compiled form, and prefixes by
/// environment index ([`ENVS`]).
#[derive(Clone, Debug)]
pub struct SynthPolicy {
    /// CIDRs per family.
    pub cidrs: usize,
    pub yaml: String,
    pub compiled: CompiledPolicy,
    pub v4: Vec<(Ipv4Net, usize)>,
    pub v6: Vec<(Ipv6Net, usize)>,
}

impl SynthPolicy {
    /// A policy of `n` (≥ 5) CIDRs per family; `seed` chooses the random
    /// ones and their environments.
    pub fn generate(n: usize, seed: u64) -> Result<SynthPolicy> {
        SynthPolicy::generate_shape(n, Shape::Mixed, seed)
    }

    /// A policy of `n` (≥ 5) CIDRs per family of `shape`.
    pub fn generate_shape(n: usize, shape: Shape, seed: u64) -> Result<SynthPolicy> {
        let (v4, v6) = prefixes(n, shape, seed)?;
        let yaml = yaml(&v4, &v6);
        let parsed = policy::parse(&yaml, &format!("<synthetic policy of {n} CIDRs>"))
            .map_err(|e| anyhow::anyhow!("the synthetic policy does not validate: {e}"))?;
        let compiled = policy::compile(&parsed);
        Ok(SynthPolicy {
            cidrs: n,
            yaml,
            compiled,
            v4,
            v6,
        })
    }

    /// Every prefix of `family` with its environment.
    pub fn nets(&self, family: Family) -> Vec<(IpNet, usize)> {
        match family {
            Family::V4 => self.v4.iter().map(|(n, e)| (IpNet::V4(*n), *e)).collect(),
            Family::V6 => self.v6.iter().map(|(n, e)| (IpNet::V6(*n), *e)).collect(),
        }
    }

    /// The prefixes of environment `env` of `family`.
    pub fn prefixes_of(&self, family: Family, env: usize) -> Vec<IpNet> {
        let nets = self.nets(family).into_iter();
        nets.filter(|(_, e)| *e == env).map(|(n, _)| n).collect()
    }

    fn all(&self, family: Family) -> Vec<IpNet> {
        self.nets(family).into_iter().map(|(n, _)| n).collect()
    }
}

/// Which prefixes a synthetic policy holds (besides the five fixed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Shape {
    /// Random prefixes of random lengths: /16–/32, /32–/128.
    #[default]
    Mixed,
    /// Host addresses (/32, /128), and one prefix in a hundred shorter
    /// (/16–/31, /32–/127): at 100,000 CIDRs, 98,995 hosts and 1,000
    /// prefixes per family.
    Kubernetes,
    /// Nested chains: the prefixes of every length (/1–/32, /1–/128) of
    /// one random address after another, each of a random environment.
    Adversarial,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Mixed, Shape::Kubernetes, Shape::Adversarial];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Mixed => "mixed",
            Shape::Kubernetes => "kubernetes",
            Shape::Adversarial => "adversarial",
        }
    }
}

/// A random address outside 10/8 and 127/8 (first octet 11–223).
fn v4_addr(rng: &mut Rng) -> u32 {
    let first = loop {
        let f = rng.range(11, 223) as u32;
        if f != 127 {
            break f;
        }
    };
    (first << 24) | (rng.random::<u32>() & 0x00ff_ffff)
}

/// A random global unicast address (2000::/3).
fn v6_addr(rng: &mut Rng) -> u128 {
    (rng.random::<u128>() & !(0b111u128 << 125)) | (0b001u128 << 125)
}

/// The random prefixes of one family in a shape, as (address, length)
/// before truncation.
struct Draws<A> {
    shape: Shape,
    /// The family's address width.
    bits: u8,
    address: fn(&mut Rng) -> A,
    /// Prefixes drawn so far.
    drawn: usize,
    /// Adversarial: the current chain's address and the length its next
    /// prefix takes (0: the chain is done).
    chain: (A, u8),
}

impl<A: Copy + Default> Draws<A> {
    fn new(shape: Shape, bits: u8, address: fn(&mut Rng) -> A) -> Self {
        Draws {
            shape,
            bits,
            address,
            drawn: 0,
            chain: (A::default(), 0),
        }
    }

    fn next(&mut self, rng: &mut Rng) -> (A, u8) {
        self.drawn += 1;
        let shortest = if self.bits == 32 { 16 } else { 32 };
        let (lo, hi) = match self.shape {
            Shape::Adversarial => {
                // One length after another (the longest first), and a new
                // address when the chain is done.
                if self.chain.1 == 0 {
                    self.chain = ((self.address)(rng), self.bits);
                }
                self.chain.1 -= 1;
                return (self.chain.0, self.chain.1 + 1);
            }
            Shape::Kubernetes if self.drawn % 100 != 99 => (self.bits, self.bits),
            Shape::Kubernetes => (shortest, self.bits - 1),
            Shape::Mixed => (shortest, self.bits),
        };
        // The length first, then the address: the mixed shape's draws, in
        // the order they always were.
        let len = rng.range(usize::from(lo), usize::from(hi)) as u8;
        ((self.address)(rng), len)
    }
}

/// `n` IPv4 and `n` IPv6 prefixes with their environments: the fixed lab
/// ones first, then random distinct ones of `shape`.
#[allow(clippy::type_complexity)]
fn prefixes(
    n: usize,
    shape: Shape,
    seed: u64,
) -> Result<(Vec<(Ipv4Net, usize)>, Vec<(Ipv6Net, usize)>)> {
    if n < ENVS.len() {
        bail!("a synthetic policy needs at least {} CIDRs", ENVS.len());
    }
    let fixed = |family| {
        ENVS.iter()
            .enumerate()
            .map(move |(i, e)| (env_net(e, family), i))
    };
    let fixed_v4 = fixed(Family::V4).filter_map(|(n, i)| match n {
        IpNet::V4(n) => Some((n, i)),
        IpNet::V6(_) => None,
    });
    let fixed_v6 = fixed(Family::V6).filter_map(|(n, i)| match n {
        IpNet::V6(n) => Some((n, i)),
        IpNet::V4(_) => None,
    });
    let mut rng = seeded(seed);
    let mut draws = Draws::new(shape, 32, v4_addr);
    let v4 = deal(fixed_v4.collect(), n, &mut rng, |rng| {
        let (addr, len) = draws.next(rng);
        Ok(Ipv4Net::new(Ipv4Addr::from(addr), len)?.trunc())
    })?;
    let mut draws = Draws::new(shape, 128, v6_addr);
    let v6 = deal(fixed_v6.collect(), n, &mut rng, |rng| {
        let (addr, len) = draws.next(rng);
        Ok(Ipv6Net::new(Ipv6Addr::from(addr), len)?.trunc())
    })?;
    Ok((v4, v6))
}

/// The `fixed` prefixes, then distinct ones of `draw` up to `n`, each of a
/// random environment.
fn deal<N: Copy + Eq + std::hash::Hash>(
    mut out: Vec<(N, usize)>,
    n: usize,
    rng: &mut Rng,
    mut draw: impl FnMut(&mut Rng) -> Result<N>,
) -> Result<Vec<(N, usize)>> {
    let mut seen: HashSet<N> = out.iter().map(|(n, _)| *n).collect();
    while out.len() < n {
        let net = draw(rng)?;
        if seen.insert(net) {
            out.push((net, rng.below(ENVS.len())));
        }
    }
    Ok(out)
}

fn yaml(v4: &[(Ipv4Net, usize)], v6: &[(Ipv6Net, usize)]) -> String {
    let mut y = String::with_capacity(24 * (v4.len() + v6.len()) + 1024);
    y.push_str("# synthetic benchmark policy (envfence-bench)\nmode: enforce\ndefault: allow\nenvironments:\n");
    for (i, env) in ENVS.iter().enumerate() {
        y.push_str(&format!("  {env}:\n"));
        for (net, _) in v4.iter().filter(|(_, e)| *e == i) {
            y.push_str(&format!("    - \"{net}\"\n"));
        }
        for (net, _) in v6.iter().filter(|(_, e)| *e == i) {
            y.push_str(&format!("    - \"{net}\"\n"));
        }
    }
    y.push_str(
        "rules:\n\
         \x20 - name: test-to-prod\n\
         \x20   from: [test]\n\
         \x20   to: [production]\n\
         \x20   verdict: drop\n\
         \x20 - name: test-dns-in-prod\n\
         \x20   from: [test]\n\
         \x20   to: [production]\n\
         \x20   ports: [\"53/udp\"]\n\
         \x20   verdict: allow\n\
         interfaces:\n\
         \x20 include: [\"veth*\"]\n\
         \x20 exclude: [\"lo\"]\n",
    );
    y
}

/// A random address inside `net`.
pub fn addr_in(net: IpNet, rng: &mut Rng) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0);
            let a = u32::from(n.network()) | (rng.random::<u32>() & host);
            IpAddr::V4(Ipv4Addr::from(a))
        }
        IpNet::V6(n) => {
            let host = u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            let a = u128::from(n.network()) | (rng.random::<u128>() & host);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

/// Which packets a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Allowed: any environment pair but test → production.
    Allowed,
    /// Dropped: test → production (TCP, not port 53).
    Dropped,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Allowed, Kind::Dropped];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Allowed => "allowed",
            Kind::Dropped => "dropped",
        }
    }
    /// The verdict the reference gives every packet of the set.
    pub fn verdict(self) -> u8 {
        match self {
            Kind::Allowed => verdict::ALLOW,
            Kind::Dropped => verdict::DROP,
        }
    }
}

/// One packet of a flow: a TCP SYN frame.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub frame: Vec<u8>,
}

/// `k` distinct TCP flows of `kind` and `family` whose addresses are drawn
/// from random prefixes of the whole table (allowed: any pair the policy
/// allows; dropped: test → production), each labelled by the reference
/// decision so that longest-prefix overlaps never mislabel one.
pub fn flows(
    policy: &SynthPolicy,
    family: Family,
    kind: Kind,
    k: usize,
    seed: u64,
) -> Result<Vec<Flow>> {
    let mut rng = seeded(seed ^ (u64::from(family == Family::V6) << 40) ^ ((kind as u64) << 41));
    let (srcs, dsts) = match kind {
        Kind::Allowed => (policy.all(family), policy.all(family)),
        Kind::Dropped => (
            policy.prefixes_of(family, TEST),
            policy.prefixes_of(family, PRODUCTION),
        ),
    };
    let mut out = Vec::with_capacity(k);
    let mut seen = HashSet::with_capacity(k);
    let mut attempts = 0usize;
    while out.len() < k {
        attempts += 1;
        if attempts > 100 * k + 10_000 {
            bail!(
                "could not draw {k} {} {} flows from the policy of {} CIDRs",
                kind.name(),
                family.name(),
                policy.cidrs
            );
        }
        let src = addr_in(srcs[rng.below(srcs.len())], &mut rng);
        let dst = addr_in(dsts[rng.below(dsts.len())], &mut rng);
        let sport = rng.range(1024, 65535) as u16;
        let dport = rng.range(1024, 65535) as u16;
        let d = policy.compiled.decide_flow(src, dst, 6, Some(dport));
        if d.verdict != kind.verdict() || !seen.insert((src, dst, sport, dport)) {
            continue;
        }
        let frame = ip_frame(src, dst, 6, Packet::syn(sport, dport));
        out.push(Flow {
            src,
            dst,
            sport,
            dport,
            frame,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_flows() {
        let p = SynthPolicy::generate(200, 7).unwrap();
        assert_eq!(p.v4.len(), 200);
        assert_eq!(p.v6.len(), 200);
        assert_eq!(p.compiled.v4.len(), 200);
        assert_eq!(p.compiled.v6.len(), 200);
        for fam in [Family::V4, Family::V6] {
            for kind in Kind::ALL {
                let f = flows(&p, fam, kind, 50, 1).unwrap();
                assert_eq!(f.len(), 50);
                for fl in &f {
                    assert_eq!(Family::of(fl.src), fam);
                    let d = p.compiled.decide_flow(fl.src, fl.dst, 6, Some(fl.dport));
                    assert_eq!(d.verdict, kind.verdict());
                }
            }
        }
        // Deterministic.
        let q = SynthPolicy::generate(200, 7).unwrap();
        assert_eq!(p.yaml, q.yaml);
        // The lab's addresses keep their environments.
        let (env, _) = p.compiled.lookup_env("10.30.1.2".parse().unwrap());
        assert_eq!(p.compiled.env_name(env), "test");
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;
    use std::collections::BTreeSet;

    fn lengths_of(p: &SynthPolicy, family: Family) -> Vec<u8> {
        p.nets(family).iter().map(|(n, _)| n.prefix_len()).collect()
    }

    #[test]
    fn kubernetes_shape_is_hosts_and_one_shorter_prefix_in_a_hundred() {
        let p = SynthPolicy::generate_shape(1_005, Shape::Kubernetes, 3).unwrap();
        for (family, bits) in [(Family::V4, 32), (Family::V6, 128)] {
            let lens = lengths_of(&p, family);
            assert_eq!(lens.len(), 1_005);
            // Beyond the five fixed prefixes: the 99th, 199th, ... drawn
            // prefix is shorter, every other one a host.
            let shorter = lens[5..].iter().filter(|&&l| l < bits).count();
            assert_eq!(shorter, 10, "{family:?}: {shorter} shorter prefixes");
            let shortest = if bits == 32 { 16 } else { 32 };
            assert!(lens[5..].iter().all(|l| (shortest..=bits).contains(l)));
        }
        // The lab's addresses keep their environments.
        let (env, _) = p.compiled.lookup_env("10.30.1.2".parse().unwrap());
        assert_eq!(p.compiled.env_name(env), "test");
    }

    #[test]
    fn adversarial_shape_uses_every_prefix_length_nested() {
        let p = SynthPolicy::generate_shape(400, Shape::Adversarial, 3).unwrap();
        for (family, bits) in [(Family::V4, 32u8), (Family::V6, 128)] {
            let lens: BTreeSet<u8> = lengths_of(&p, family)[5..].iter().copied().collect();
            assert_eq!(lens, (1..=bits).collect::<BTreeSet<u8>>(), "{family:?}");
            // The first chain: the longest prefix's address is inside
            // every prefix drawn after it until the chain ends.
            let nets = p.nets(family);
            let host = nets[5].0;
            assert_eq!(host.prefix_len(), bits);
            for (net, _) in &nets[6..usize::from(bits) + 5] {
                assert!(net.contains(&host.addr()), "{net} does not hold {host}");
            }
        }
        // Longer prefixes still win: the lab's addresses keep their
        // environments under the /1s and /2s.
        for (addr, env) in [("10.30.1.2", "test"), ("10.10.1.2", "production")] {
            let (id, _) = p.compiled.lookup_env(addr.parse().unwrap());
            assert_eq!(p.compiled.env_name(id), env, "{addr}");
        }
    }

    #[test]
    fn the_mixed_shape_is_the_default() {
        let a = SynthPolicy::generate(300, 9).unwrap();
        let b = SynthPolicy::generate_shape(300, Shape::Mixed, 9).unwrap();
        assert_eq!(a.yaml, b.yaml);
        let lens = lengths_of(&a, Family::V4);
        assert!(lens[5..].iter().all(|l| (16..=32).contains(l)));
    }
}
