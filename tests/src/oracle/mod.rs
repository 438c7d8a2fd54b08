//! The oracle: an independent classifier the differential suite holds the
//! kernel (and `envfence::policy::reference`) to. It answers with the
//! reference's types ([`Outcome`]) but shares none of its code: the
//! headers etherparse knows (Ethernet II, VLAN, IPv4, IPv6, the IPv6
//! fragment header) are read with etherparse, the rest is written here
//! from the RFCs and the README's table "How envfence handles ...", as
//! tables of numbers and what they lead to ([`link`], [`net`], [`upper`]);
//! the decision comes from the policy model, not the compiled maps
//! ([`decide`]); the parse window and the walk's other bounds are stated
//! once ([`window`]). The same walk without bounds describes a frame for
//! a reader, header by header ([`describe`]): the harness's one decoder.
//!
//! The walk: the outer frame's link layers, its IP packet and upper layer;
//! when that carries a tunnel (IPIP, IPv6-in-IP, GRE, a UDP tunnel port),
//! the inner packet the same way, which must not carry another. Each IP
//! layer is judged for its destination and, with a routing header, its
//! final destination (the stricter decides, the current one on a tie);
//! the inner layer decides when it is stricter than the outer.
//!
//! An [`Oracle`] is built from a parsed [`Policy`]; [`parse`] parses and
//! remembers the model so that [`Oracle::of`] finds it again from a
//! [`CompiledPolicy`] (by its source's SHA-256), which is all a
//! `KernelHarness` keeps.

mod decide;
pub mod describe;
mod link;
mod net;
mod upper;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, Result};
use envfence::policy::reference::{Encap, Judgement, L4Seen, NonIpKind, Outcome, Skb, Spoofed};
use envfence::policy::{self, rpf, CompiledPolicy, Policy, Tunnels};

pub use decide::Rules;
use decide::Seen;
use link::Carries;
use window::Window;

/// Where an IP packet starts, and its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Net {
    V4(usize),
    V6(usize),
}

/// What an IP layer carries as a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inner {
    Ip(Net),
    /// An Ethernet frame at this offset.
    Ethernet(usize),
    /// A tunnel port whose own header cannot be read.
    Unreadable,
}

/// Why a frame is not judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Not even an Ethernet header.
    NoFrame,
    NonIp(NonIpKind),
    Malformed,
    VlanTooDeep,
    MplsTooDeep,
    TunnelTooDeep,
}

impl Stop {
    fn outcome(self) -> Outcome {
        match self {
            Stop::NoFrame => Outcome::NonIp(NonIpKind::Other),
            Stop::NonIp(kind) => Outcome::NonIp(kind),
            Stop::Malformed => Outcome::Malformed,
            Stop::VlanTooDeep => Outcome::VlanTooDeep,
            Stop::MplsTooDeep => Outcome::MplsTooDeep,
            Stop::TunnelTooDeep => Outcome::TunnelTooDeep,
        }
    }
}

/// One IP packet as read.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub family: u8,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4Seen,
    pub fragment: bool,
    pub ext_too_deep: bool,
    pub len_from_skb: bool,
    pub jumbo: bool,
    /// A routing header's final destination (segments left).
    pub final_dst: Option<IpAddr>,
    pub inner: Option<Inner>,
}

impl Layer {
    pub(crate) fn new(family: u8, proto: u8, src: IpAddr, dst: IpAddr) -> Layer {
        Layer {
            family,
            proto,
            src,
            dst,
            sport: 0,
            dport: 0,
            l4: L4Seen::Other,
            fragment: false,
            ext_too_deep: false,
            len_from_skb: false,
            jumbo: false,
            final_dst: None,
            inner: None,
        }
    }
}

/// A frame read to the end of what decides: the outer packet, how it
/// travelled, and the tunnelled one.
struct Read {
    outer: Layer,
    encap: Encap,
    inner: Option<Layer>,
}

/// Reads a frame to the end of what decides: its link layers, its IP
/// packet and, when that carries a tunnel, the inner packet, which must
/// not carry another.
fn read(w: &Window, tunnels: &Tunnels) -> std::result::Result<Read, Stop> {
    let frame = link::ethernet(w, 0)?;
    let Carries::Ip(at) = frame.carries else {
        let Carries::NotIp(kind) = frame.carries else {
            unreachable!("Carries has two variants");
        };
        return Err(Stop::NonIp(kind));
    };
    let outer = net::packet(w, at, tunnels)?;
    let w = &w.inner();
    let inner_at = match outer.inner {
        None => None,
        Some(Inner::Unreadable) => return Err(Stop::Malformed),
        Some(Inner::Ip(net)) => Some(net),
        Some(Inner::Ethernet(off)) => match link::ethernet(w, off) {
            Ok(l) => match l.carries {
                Carries::Ip(net) => Some(net),
                // Not IP inside: the outer packet alone is judged.
                Carries::NotIp(_) => None,
            },
            Err(Stop::NoFrame) => return Err(Stop::Malformed),
            Err(stop) => return Err(stop),
        },
    };
    let inner = inner_at
        .map(|net| net::packet(w, net, tunnels))
        .transpose()?;
    if inner.as_ref().is_some_and(|i| i.inner.is_some()) {
        return Err(Stop::TunnelTooDeep);
    }
    Ok(Read {
        outer,
        encap: frame.encap,
        inner,
    })
}

/// The independent classifier of one policy.
#[derive(Clone, Debug)]
pub struct Oracle {
    rules: Rules,
    tunnels: Tunnels,
}

/// Models parsed through [`parse`], by their source's SHA-256.
fn models() -> &'static Mutex<HashMap<String, Arc<Oracle>>> {
    static MODELS: OnceLock<Mutex<HashMap<String, Arc<Oracle>>>> = OnceLock::new();
    MODELS.get_or_init(Default::default)
}

/// [`envfence::policy::parse`], remembering the model for [`Oracle::of`].
pub fn parse(source: &str, origin: &str) -> Result<Policy> {
    let model = policy::parse(source, origin).map_err(|e| anyhow!("{origin}: {e}"))?;
    remember(&model);
    Ok(model)
}

/// Remembers `model` for [`Oracle::of`].
pub fn remember(model: &Policy) {
    let oracle = Arc::new(Oracle::new(model));
    models()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(model.source_sha256.clone(), oracle);
}

impl Oracle {
    pub fn new(model: &Policy) -> Oracle {
        Oracle {
            rules: Rules::new(model),
            tunnels: model.tunnels.clone(),
        }
    }

    /// The oracle of the model `compiled` was compiled from (parsed with
    /// [`parse`] or given to [`remember`]).
    pub fn of(compiled: &CompiledPolicy) -> Result<Arc<Oracle>> {
        models()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&compiled.source_sha256)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "no policy model for source {}: parse it with envfence_tests::oracle::parse",
                    compiled.source_sha256
                )
            })
    }

    /// The oracle's outcome of a frame under `compiled`, and `Err` when
    /// the reference classifier's differs: what the kernel tests assert
    /// the kernel against, with the reference held to it.
    pub fn held_to_reference(compiled: &CompiledPolicy, frame: &[u8], skb: Skb) -> Result<Outcome> {
        let said = Oracle::of(compiled)?.classify_skb(frame, skb);
        let reference = envfence::policy::reference::classify_skb(frame, skb, compiled);
        if reference != said {
            return Err(anyhow!(
                "the reference differs from the oracle:\n  oracle:    {said:?}\n  reference: {reference:?}"
            ));
        }
        Ok(said)
    }

    /// The environment decisions and rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The outcome of a frame that is not a GSO packet.
    pub fn classify(&self, frame: &[u8]) -> Outcome {
        self.classify_skb(frame, Skb::default())
    }

    /// The outcome of a frame whose skb says `skb`.
    pub fn classify_skb(&self, frame: &[u8], skb: Skb) -> Outcome {
        match read(&Window::new(frame, skb.gso_size != 0), &self.tunnels) {
            Ok(read) => self.judge(read),
            Err(stop) => stop.outcome(),
        }
    }

    /// The outcome of a frame (not GSO) entering `ifindex` of `node`: a
    /// readable packet whose outer source the node's routes refuse is
    /// [`Outcome::Spoofed`].
    pub fn classify_on(&self, frame: &[u8], node: &rpf::Node, ifindex: u32) -> Outcome {
        let read = match read(&Window::new(frame, false), &self.tunnels) {
            Ok(read) => read,
            Err(stop) => return stop.outcome(),
        };
        let (src, dst) = (read.outer.src, read.outer.dst);
        match node.check(ifindex, src, dst) {
            Some(found) if !envfence_ebpf::source::accepted(found.result) => {
                Outcome::Spoofed(Spoofed {
                    src,
                    dst,
                    dst_env: self.rules.environment(dst).1,
                    found,
                })
            }
            _ => self.judge(read),
        }
    }

    /// The outer (source, destination) of a frame (not GSO) read up to a
    /// judgement: what the source check looks at.
    pub fn outer_addresses(&self, frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
        let read = read(&Window::new(frame, false), &self.tunnels).ok()?;
        Some((read.outer.src, read.outer.dst))
    }

    /// The judgement of one layer towards `dst`.
    fn towards(&self, layer: &Layer, dst: IpAddr) -> Judgement {
        let (src_name, src_env) = self.rules.environment(layer.src);
        let (dst_name, dst_env) = self.rules.environment(dst);
        let seen = Seen::of(layer.l4, layer.proto, layer.dport);
        let (verdict, rule) = self.rules.decide(src_name, dst_name, seen);
        Judgement {
            family: layer.family,
            proto: layer.proto,
            src: layer.src,
            dst,
            sport: layer.sport,
            dport: layer.dport,
            l4: layer.l4,
            src_env,
            dst_env,
            verdict,
            rule,
            tunneled: false,
            by_inner: false,
            fragment: layer.fragment,
            ext_too_deep: layer.ext_too_deep,
            encap: Encap::Ethernet,
            len_from_skb: false,
            jumbo: false,
            routed: false,
            by_final: false,
        }
    }

    /// One layer: its current destination's judgement, or its final
    /// destination's when that is stricter.
    fn layer(&self, layer: &Layer) -> Judgement {
        let now = self.towards(layer, layer.dst);
        let Some(last) = layer.final_dst else {
            return now;
        };
        let at_end = self.towards(layer, last);
        if at_end.verdict > now.verdict {
            Judgement {
                by_final: true,
                ..at_end
            }
        } else {
            now
        }
    }

    fn judge(&self, read: Read) -> Outcome {
        let outer = self.layer(&read.outer);
        let inner = read.inner.as_ref().map(|l| self.layer(l));
        let tunneled = inner.is_some();
        let (mut j, by_inner) = match inner {
            Some(i) if i.verdict > outer.verdict => (i, true),
            _ => (outer, false),
        };
        let layers = || std::iter::once(&read.outer).chain(read.inner.as_ref());
        j.tunneled = tunneled;
        j.by_inner = by_inner;
        j.encap = read.encap;
        j.len_from_skb = layers().any(|l| l.len_from_skb);
        j.jumbo = layers().any(|l| l.jumbo);
        j.routed = layers().any(|l| l.final_dst.is_some());
        Outcome::Judged(j)
    }
}
