//! The reference classifier: the kernel's verdict, computed in plain Rust
//! from the frame's bytes and the compiled policy. It mirrors
//! `agent-ebpf/src/parse.rs` and `agent-ebpf/src/programs.rs` decision for
//! decision; the differential tests hold the two equal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envfence_ebpf::{family, parse_limits as lim, proto, verdict};

use super::{rpf, CompiledPolicy, Mode, L4};

use envfence_ebpf::wire::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, IPV6_HLEN, VLAN_HLEN,
};

/// What the datapath does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6: passed, counted as non-IP.
    NonIp,
    /// Claims to be IP (or a tunnel) but cannot be read up to its
    /// addresses: dropped in enforce mode, passed in audit mode; counted as
    /// malformed.
    Malformed,
    /// More VLAN tags than the parser walks: handled like malformed.
    VlanTooDeep,
    /// A tunnel inside a tunnel: handled like malformed.
    TunnelTooDeep,
    /// An IP packet, judged by the policy.
    Judged(Judgement),
    /// Its outer source failed the source check of the interface it
    /// entered: counted under `world` and the destination's environment,
    /// dropped in enforce mode, passed in audit mode.
    Spoofed(Spoofed),
}

/// A packet refused by the source check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spoofed {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_env: u32,
    /// What the check found (`envfence_ebpf::source`).
    pub found: rpf::SourceFound,
}

/// What is known of the L4 header of a judged packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Seen {
    /// TCP/UDP/SCTP ports were read.
    Ports,
    /// A port-bearing protocol (or an IPv6 extension-header chain, or a
    /// tunnel in a non-first fragment) whose ports could not be read.
    NoPorts,
    /// A protocol without ports.
    Other,
}

/// The verdict on one IP packet, from the layer that decided it: the outer
/// packet, or a tunnel's inner packet when its verdict is stricter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub family: u8,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports, or ICMP type and code; 0 when unknown.
    pub sport: u16,
    pub dport: u16,
    pub l4: L4Seen,
    pub src_env: u32,
    pub dst_env: u32,
    pub verdict: u8,
    pub rule: u16,
    /// The packet carried a tunnelled IP packet (judged too).
    pub tunneled: bool,
    /// The inner packet's verdict decided.
    pub by_inner: bool,
    /// The deciding layer is a non-first fragment.
    pub fragment: bool,
    /// The deciding layer's IPv6 extension-header chain was too long.
    pub ext_too_deep: bool,
}

impl Outcome {
    /// Whether the datapath lets the frame through under `mode`.
    pub fn passes(&self, mode: Mode) -> bool {
        match self {
            Outcome::NonIp => true,
            Outcome::Malformed | Outcome::VlanTooDeep | Outcome::TunnelTooDeep => {
                mode == Mode::Audit
            }
            Outcome::Judged(j) => j.verdict != verdict::DROP,
            Outcome::Spoofed(_) => mode == Mode::Audit,
        }
    }
}

/// Where a tunnel's inner packet starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tunnel {
    None,
    Ip4(usize),
    Ip6(usize),
    Eth(usize),
}

#[derive(Clone, Debug)]
struct Layer {
    family: u8,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    l4: L4Seen,
    fragment: bool,
    ext_too_deep: bool,
    tunnel: Tunnel,
}

/// `n` bytes at `off`, as the kernel's bounded reads see them.
fn bytes_at(frame: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    if off > lim::MAX_OFFSET {
        return None;
    }
    frame.get(off..off.checked_add(n)?)
}

fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

fn is_port_bearing(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

fn is_tunnel_proto(p: u8) -> bool {
    p == proto::IPIP || p == proto::IPV6 || p == proto::GRE
}

fn is_ipv6_ext(p: u8) -> bool {
    matches!(
        p,
        proto::HOPOPTS
            | proto::ROUTING
            | proto::FRAGMENT
            | proto::DSTOPTS
            | proto::AH
            | proto::ESP
            | proto::MOBILITY
            | proto::HIP
            | proto::SHIM6
    )
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Classifies one Ethernet frame as the kernel program does on an
/// interface without a source check (egress, or mode `off`).
pub fn classify(frame: &[u8], policy: &CompiledPolicy) -> Outcome {
    match parse(frame) {
        Ok((outer, inner)) => judge_all(&outer, inner.as_ref(), policy),
        Err(outcome) => outcome,
    }
}

/// Classifies one Ethernet frame entering interface `ifindex` of `node`:
/// a frame the parser can read up to its addresses has its outer source
/// checked first ([`rpf::Node::check`]); a refused one is
/// [`Outcome::Spoofed`], never judged under the environment it claims.
pub fn classify_on(
    frame: &[u8],
    policy: &CompiledPolicy,
    node: &rpf::Node,
    ifindex: u32,
) -> Outcome {
    let (outer, inner) = match parse(frame) {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    if let Some(found) = node.check(ifindex, outer.src, outer.dst) {
        if !envfence_ebpf::source::accepted(found.result) {
            return Outcome::Spoofed(Spoofed {
                src: outer.src,
                dst: outer.dst,
                dst_env: policy.lookup_env(outer.dst).0,
                found,
            });
        }
    }
    judge_all(&outer, inner.as_ref(), policy)
}

/// The outer packet's (source, destination), when the frame can be read up
/// to its addresses: what the source check looks at.
pub fn outer_addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    parse(frame).ok().map(|(outer, _)| (outer.src, outer.dst))
}

/// The outer layer judged, a tunnel's inner one too: the stricter verdict.
fn judge_all(outer: &Layer, inner: Option<&Layer>, policy: &CompiledPolicy) -> Outcome {
    let mut best = judge(outer, policy);
    let tunneled = inner.is_some();
    let mut by_inner = false;
    if let Some(inner) = inner {
        let j = judge(inner, policy);
        if j.verdict > best.verdict {
            best = j;
            by_inner = true;
        }
    }
    best.tunneled = tunneled;
    best.by_inner = by_inner;
    Outcome::Judged(best)
}

fn judge(layer: &Layer, policy: &CompiledPolicy) -> Judgement {
    let (src_env, _) = policy.lookup_env(layer.src);
    let (dst_env, _) = policy.lookup_env(layer.dst);
    let l4 = match layer.l4 {
        L4Seen::Ports => L4::Ports {
            proto: layer.proto,
            dport: layer.dport,
        },
        L4Seen::NoPorts => L4::NoPorts,
        L4Seen::Other => L4::Other,
    };
    let (verdict, rule) = policy.decide(src_env, dst_env, l4);
    Judgement {
        family: layer.family,
        proto: layer.proto,
        src: layer.src,
        dst: layer.dst,
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
    }
}

fn parse(frame: &[u8]) -> Result<(Layer, Option<Layer>), Outcome> {
    let (ethertype, l3) = parse_eth(frame, 0)?;
    let Some(outer) = parse_ip(frame, ethertype, l3)? else {
        return Err(Outcome::NonIp);
    };
    let inner_start = match outer.tunnel {
        Tunnel::None => return Ok((outer, None)),
        Tunnel::Ip4(off) => Ok((ETH_P_IP, off)),
        Tunnel::Ip6(off) => Ok((ETH_P_IPV6, off)),
        Tunnel::Eth(off) => parse_eth(frame, off),
    };
    let (inner_type, inner_l3) = match inner_start {
        Ok(x) => x,
        Err(Outcome::NonIp) => return Err(Outcome::Malformed),
        Err(o) => return Err(o),
    };
    match parse_ip(frame, inner_type, inner_l3)? {
        Some(inner) if inner.tunnel != Tunnel::None => Err(Outcome::TunnelTooDeep),
        Some(inner) => Ok((outer, Some(inner))),
        None => Ok((outer, None)),
    }
}

/// Ethernet at `off` with up to two VLAN tags: (ethertype, L3 offset).
fn parse_eth(frame: &[u8], off: usize) -> Result<(u16, usize), Outcome> {
    let eth = bytes_at(frame, off, ETH_HLEN).ok_or(Outcome::NonIp)?;
    let mut ethertype = be16(eth[12], eth[13]);
    let mut l3 = off + ETH_HLEN;
    for depth in 0..3 {
        if !is_vlan(ethertype) {
            break;
        }
        if depth == 2 {
            return Err(Outcome::VlanTooDeep);
        }
        let tag = bytes_at(frame, l3, VLAN_HLEN).ok_or(Outcome::Malformed)?;
        ethertype = be16(tag[2], tag[3]);
        l3 += VLAN_HLEN;
    }
    Ok((ethertype, l3))
}

fn parse_ip(frame: &[u8], ethertype: u16, l3: usize) -> Result<Option<Layer>, Outcome> {
    match ethertype {
        ETH_P_IP => parse_v4(frame, l3).map(Some),
        ETH_P_IPV6 => parse_v6(frame, l3).map(Some),
        _ => Ok(None),
    }
}

fn new_layer(family: u8, proto: u8, src: IpAddr, dst: IpAddr) -> Layer {
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
        tunnel: Tunnel::None,
    }
}

fn no_l4_header(layer: &mut Layer) {
    layer.fragment = true;
    layer.l4 = if is_port_bearing(layer.proto) || is_tunnel_proto(layer.proto) {
        L4Seen::NoPorts
    } else {
        L4Seen::Other
    };
}

fn parse_v4(frame: &[u8], l3: usize) -> Result<Layer, Outcome> {
    let h = bytes_at(frame, l3, 20).ok_or(Outcome::Malformed)?;
    let ihl = usize::from(h[0] & 0x0f);
    let tot_len = usize::from(be16(h[2], h[3]));
    let avail = frame.len().saturating_sub(l3);
    if h[0] >> 4 != 4 || ihl < 5 || tot_len < ihl * 4 || tot_len > avail {
        return Err(Outcome::Malformed);
    }
    let mut layer = new_layer(
        family::V4,
        h[9],
        IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
    );
    if be16(h[6], h[7]) & 0x1fff != 0 {
        no_l4_header(&mut layer);
    } else {
        l4_at(frame, l3 + ihl * 4, tot_len - ihl * 4, &mut layer);
    }
    Ok(layer)
}

fn parse_v6(frame: &[u8], l3: usize) -> Result<Layer, Outcome> {
    let h = bytes_at(frame, l3, IPV6_HLEN).ok_or(Outcome::Malformed)?;
    let payload = usize::from(be16(h[4], h[5]));
    let avail = frame.len().saturating_sub(l3 + IPV6_HLEN);
    if h[0] >> 4 != 6 || payload > avail {
        return Err(Outcome::Malformed);
    }
    let addr = |off: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[off..off + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let mut layer = new_layer(family::V6, h[6], addr(8), addr(24));
    let end = l3 + IPV6_HLEN + payload;
    let mut off = l3 + IPV6_HLEN;
    let mut walked = 0;
    while walked < lim::MAX_IPV6_EXT && is_ipv6_ext(layer.proto) {
        walked += 1;
        if layer.proto == proto::ESP {
            layer.l4 = L4Seen::NoPorts;
            return Ok(layer);
        }
        let Some(e) = bytes_at(frame, off, 8) else {
            layer.l4 = L4Seen::NoPorts;
            return Ok(layer);
        };
        let next = e[0];
        let len = if layer.proto == proto::FRAGMENT {
            8
        } else if layer.proto == proto::AH {
            (usize::from(e[1]) + 2) * 4
        } else {
            (usize::from(e[1]) + 1) * 8
        };
        if layer.proto == proto::FRAGMENT && be16(e[2], e[3]) & 0xfff8 != 0 {
            layer.proto = next;
            no_l4_header(&mut layer);
            return Ok(layer);
        }
        layer.proto = next;
        off += len;
    }
    if is_ipv6_ext(layer.proto) {
        layer.ext_too_deep = true;
        layer.l4 = L4Seen::NoPorts;
        return Ok(layer);
    }
    l4_at(frame, off, end.saturating_sub(off), &mut layer);
    Ok(layer)
}

fn l4_at(frame: &[u8], off: usize, len: usize, layer: &mut Layer) {
    let p = layer.proto;
    if is_port_bearing(p) {
        let Some(h) = bytes_at(frame, off, 4).filter(|_| len >= 4) else {
            layer.l4 = L4Seen::NoPorts;
            return;
        };
        layer.sport = be16(h[0], h[1]);
        layer.dport = be16(h[2], h[3]);
        layer.l4 = L4Seen::Ports;
        if p == proto::UDP {
            udp_tunnel(frame, off, layer);
        }
        return;
    }
    layer.l4 = L4Seen::Other;
    if p == proto::ICMP || p == proto::ICMPV6 {
        if let Some(h) = bytes_at(frame, off, 2).filter(|_| len >= 2) {
            layer.sport = u16::from(h[0]);
            layer.dport = u16::from(h[1]);
        }
    } else if p == proto::IPIP {
        layer.tunnel = Tunnel::Ip4(off);
    } else if p == proto::IPV6 {
        layer.tunnel = Tunnel::Ip6(off);
    } else if p == proto::GRE {
        gre(frame, off, layer);
    }
}

fn tunnel_for(ethertype: u16, off: usize) -> Tunnel {
    match ethertype {
        ETH_P_IP => Tunnel::Ip4(off),
        ETH_P_IPV6 => Tunnel::Ip6(off),
        ETH_P_TEB => Tunnel::Eth(off),
        _ => Tunnel::None,
    }
}

fn gre(frame: &[u8], off: usize, layer: &mut Layer) {
    let Some(h) = bytes_at(frame, off, 4) else {
        return;
    };
    let flags = be16(h[0], h[1]);
    if flags & 0x4007 != 0 {
        return;
    }
    let hlen = 4
        + if flags & 0x8000 != 0 { 4 } else { 0 }
        + if flags & 0x2000 != 0 { 4 } else { 0 }
        + if flags & 0x1000 != 0 { 4 } else { 0 };
    layer.tunnel = tunnel_for(be16(h[2], h[3]), off + hlen);
}

fn udp_tunnel(frame: &[u8], off: usize, layer: &mut Layer) {
    if layer.dport == lim::VXLAN_PORT {
        layer.tunnel = Tunnel::Eth(off + 16);
    } else if layer.dport == lim::GENEVE_PORT {
        layer.tunnel = match bytes_at(frame, off + 8, 4) {
            Some(g) => tunnel_for(be16(g[2], g[3]), off + 16 + usize::from(g[0] & 0x3f) * 4),
            None => Tunnel::Eth(off + 16),
        };
    }
}
