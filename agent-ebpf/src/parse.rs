//! L2/L3/L4 header walk with direct packet access, bounded and
//! verifier-friendly. Every outcome is explicit: a frame is either not IP,
//! malformed, too deep, or an IP packet with its addresses, what is known of
//! its L4 header, and — for IPIP, IPv6-in-IP, GRE, VXLAN and Geneve — the
//! inner packet's addresses too. The reference classifier
//! (`agent/src/policy/reference.rs`) mirrors this file decision for
//! decision.

use aya_ebpf::programs::TcContext;
use envfence_ebpf::{family, parse_limits as lim, proto};

use envfence_ebpf::wire::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, IPV6_HLEN, VLAN_HLEN,
};

/// What is known of the L4 header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or SCTP with readable ports.
    Ports,
    /// A port-bearing protocol (or an IPv6 extension header chain) whose
    /// ports cannot be read.
    NoPorts,
    /// A protocol without ports (ICMP, ...); ICMP type/code are in
    /// sport/dport when readable.
    Other,
}

/// Where a tunnel's inner packet starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tunnel {
    None,
    Ip4(usize),
    Ip6(usize),
    Eth(usize),
}

/// One IP layer.
#[derive(Clone, Copy)]
pub struct Layer {
    pub family: u8,
    pub proto: u8,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// A non-first fragment.
    pub fragment: bool,
    /// The IPv6 extension header chain was longer than the parser walks.
    pub ext_too_deep: bool,
    /// Offset of the L4 header in the frame (0 when none was reached); the
    /// connection tracker reads TCP flags, ICMP echo ids and ICMP errors'
    /// quoted headers from here (`crate::conntrack`, `crate::quote`).
    pub l4_off: usize,
    tunnel: Tunnel,
}

/// The parsed packet. Lives in a per-CPU scratch map, not on the 512-byte
/// BPF stack.
pub struct Packet {
    pub outer: Layer,
    /// The encapsulated packet of a tunnel, when `has_inner`.
    pub inner: Layer,
    pub has_inner: bool,
}

/// Why a frame is not judged by policy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NonIp,
    Malformed,
    VlanTooDeep,
    TunnelTooDeep,
}

/// A reference to `N` bytes at `off` of the linear packet data, or None when
/// the packet is shorter (or `off` is past what the parser reads).
#[inline(always)]
pub(crate) fn bytes_at<const N: usize>(ctx: &TcContext, off: usize) -> Option<&[u8; N]> {
    if off > lim::MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { &*((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

#[inline(always)]
fn is_port_bearing(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Parses a frame into `pkt`: its IP layer(s), or why it is not judged by
/// policy.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Reject> {
    pkt.has_inner = false;
    let (ethertype, l3) = parse_eth(ctx, 0)?;
    if !parse_ip(ctx, ethertype, l3, &mut pkt.outer)? {
        return Err(Reject::NonIp);
    }
    let inner_start = match pkt.outer.tunnel {
        Tunnel::None => return Ok(()),
        Tunnel::Ip4(off) => Ok((ETH_P_IP, off)),
        Tunnel::Ip6(off) => Ok((ETH_P_IPV6, off)),
        Tunnel::Eth(off) => parse_eth(ctx, off),
    };
    let (inner_type, inner_l3) = match inner_start {
        Ok(x) => x,
        // The tunnel says a frame follows but it cannot be read: a real
        // decapsulator would discard it too.
        Err(Reject::NonIp) => return Err(Reject::Malformed),
        Err(r) => return Err(r),
    };
    // Non-IP inside an Ethernet tunnel (ARP ...): judged on the outer.
    pkt.has_inner = parse_ip(ctx, inner_type, inner_l3, &mut pkt.inner)?;
    if pkt.has_inner && pkt.inner.tunnel != Tunnel::None {
        return Err(Reject::TunnelTooDeep);
    }
    Ok(())
}

/// Ethernet at `off` with up to two VLAN tags: (ethertype, L3 offset).
#[inline(always)]
fn parse_eth(ctx: &TcContext, off: usize) -> Result<(u16, usize), Reject> {
    let Some(eth) = bytes_at::<ETH_HLEN>(ctx, off) else {
        return Err(Reject::NonIp);
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut l3 = off + ETH_HLEN;
    if is_vlan(ethertype) {
        let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, l3) else {
            return Err(Reject::Malformed);
        };
        ethertype = be16(tag[2], tag[3]);
        l3 += VLAN_HLEN;
        if is_vlan(ethertype) {
            let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, l3) else {
                return Err(Reject::Malformed);
            };
            ethertype = be16(tag[2], tag[3]);
            l3 += VLAN_HLEN;
            if is_vlan(ethertype) {
                return Err(Reject::VlanTooDeep);
            }
        }
    }
    Ok((ethertype, l3))
}

/// The IP layer at `l3` into `layer`: Ok(false) when `ethertype` is not IP.
#[inline(always)]
fn parse_ip(ctx: &TcContext, ethertype: u16, l3: usize, layer: &mut Layer) -> Result<bool, Reject> {
    match ethertype {
        ETH_P_IP => parse_v4(ctx, l3, layer).map(|()| true),
        ETH_P_IPV6 => parse_v6(ctx, l3, layer).map(|()| true),
        _ => Ok(false),
    }
}

#[inline(always)]
fn reset_layer(layer: &mut Layer, fam: u8, p: u8) {
    layer.family = fam;
    layer.proto = p;
    layer.l4 = L4::Other;
    layer.sport = 0;
    layer.dport = 0;
    layer.src = [0; 16];
    layer.dst = [0; 16];
    layer.fragment = false;
    layer.ext_too_deep = false;
    layer.l4_off = 0;
    layer.tunnel = Tunnel::None;
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, l3: usize, layer: &mut Layer) -> Result<(), Reject> {
    let Some(h) = bytes_at::<20>(ctx, l3) else {
        return Err(Reject::Malformed);
    };
    let ihl = (h[0] & 0x0f) as usize;
    let tot_len = be16(h[2], h[3]) as usize;
    let avail = (ctx.len() as usize).saturating_sub(l3);
    if h[0] >> 4 != 4 || ihl < 5 || tot_len < ihl * 4 || tot_len > avail {
        return Err(Reject::Malformed);
    }
    reset_layer(layer, family::V4, h[9]);
    layer.src[..4].copy_from_slice(&h[12..16]);
    layer.dst[..4].copy_from_slice(&h[16..20]);
    let frag = be16(h[6], h[7]);
    if frag & 0x1fff != 0 {
        no_l4_header(layer);
    } else {
        let l4_len = tot_len - ihl * 4;
        l4_at(ctx, l3 + ihl * 4, l4_len, layer);
    }
    Ok(())
}

/// A non-first fragment: no L4 header, no tunnel header.
#[inline(always)]
fn no_l4_header(layer: &mut Layer) {
    layer.fragment = true;
    layer.l4 = if is_port_bearing(layer.proto) || is_tunnel_proto(layer.proto) {
        L4::NoPorts
    } else {
        L4::Other
    };
}

#[inline(always)]
fn is_tunnel_proto(p: u8) -> bool {
    p == proto::IPIP || p == proto::IPV6 || p == proto::GRE
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, l3: usize, layer: &mut Layer) -> Result<(), Reject> {
    let Some(h) = bytes_at::<IPV6_HLEN>(ctx, l3) else {
        return Err(Reject::Malformed);
    };
    let payload = be16(h[4], h[5]) as usize;
    let avail = (ctx.len() as usize).saturating_sub(l3 + IPV6_HLEN);
    if h[0] >> 4 != 6 || payload > avail {
        return Err(Reject::Malformed);
    }
    reset_layer(layer, family::V6, h[6]);
    layer.src.copy_from_slice(&h[8..24]);
    layer.dst.copy_from_slice(&h[24..40]);
    let end = l3 + IPV6_HLEN + payload;
    let mut off = l3 + IPV6_HLEN;
    // Walk the extension headers, a bounded number of them.
    let mut walked = 0;
    while walked < lim::MAX_IPV6_EXT && is_ipv6_ext(layer.proto) {
        walked += 1;
        if layer.proto == proto::ESP {
            // Encrypted from here on.
            layer.l4 = L4::NoPorts;
            return Ok(());
        }
        let Some(e) = bytes_at::<8>(ctx, off) else {
            layer.l4 = L4::NoPorts;
            return Ok(());
        };
        let next = e[0];
        let len = if layer.proto == proto::FRAGMENT {
            8
        } else if layer.proto == proto::AH {
            (e[1] as usize + 2) * 4
        } else {
            (e[1] as usize + 1) * 8
        };
        if layer.proto == proto::FRAGMENT && be16(e[2], e[3]) & 0xfff8 != 0 {
            layer.proto = next;
            no_l4_header(layer);
            return Ok(());
        }
        layer.proto = next;
        off += len;
    }
    if is_ipv6_ext(layer.proto) {
        layer.ext_too_deep = true;
        layer.l4 = L4::NoPorts;
        return Ok(());
    }
    l4_at(ctx, off, end.saturating_sub(off), layer);
    Ok(())
}

/// IPv6 extension headers the parser walks (and ESP, which ends the walk).
#[inline(always)]
fn is_ipv6_ext(p: u8) -> bool {
    p == proto::HOPOPTS
        || p == proto::ROUTING
        || p == proto::FRAGMENT
        || p == proto::DSTOPTS
        || p == proto::AH
        || p == proto::ESP
        || p == proto::MOBILITY
        || p == proto::HIP
        || p == proto::SHIM6
}

/// Reads the L4 header at `off` (`len` bytes of it by the IP header):
/// ports, ICMP type/code, or where a tunnel's inner packet starts.
#[inline(always)]
fn l4_at(ctx: &TcContext, off: usize, len: usize, layer: &mut Layer) {
    let p = layer.proto;
    layer.l4_off = off;
    if is_port_bearing(p) {
        let Some(h) = bytes_at::<4>(ctx, off).filter(|_| len >= 4) else {
            layer.l4 = L4::NoPorts;
            return;
        };
        layer.sport = be16(h[0], h[1]);
        layer.dport = be16(h[2], h[3]);
        layer.l4 = L4::Ports;
        if p == proto::UDP {
            udp_tunnel(ctx, off, layer);
        }
        return;
    }
    layer.l4 = L4::Other;
    if p == proto::ICMP || p == proto::ICMPV6 {
        if let Some(h) = bytes_at::<2>(ctx, off).filter(|_| len >= 2) {
            layer.sport = h[0] as u16;
            layer.dport = h[1] as u16;
        }
    } else if p == proto::IPIP {
        layer.tunnel = Tunnel::Ip4(off);
    } else if p == proto::IPV6 {
        layer.tunnel = Tunnel::Ip6(off);
    } else if p == proto::GRE {
        gre(ctx, off, layer);
    }
}

#[inline(always)]
fn tunnel_for(ethertype: u16, off: usize) -> Tunnel {
    match ethertype {
        ETH_P_IP => Tunnel::Ip4(off),
        ETH_P_IPV6 => Tunnel::Ip6(off),
        ETH_P_TEB => Tunnel::Eth(off),
        _ => Tunnel::None,
    }
}

/// GRE version 0 (RFC 2784/2890): checksum, key and sequence are optional
/// 4-byte fields. Version 1 (PPTP) and source-routed GRE are not
/// decapsulated by Linux and carry no inner packet we judge.
#[inline(always)]
fn gre(ctx: &TcContext, off: usize, layer: &mut Layer) {
    let Some(h) = bytes_at::<4>(ctx, off) else {
        // A GRE packet too short for its header: nothing inside to judge,
        // judged on the outer addresses like any unknown protocol.
        return;
    };
    let flags = be16(h[0], h[1]);
    if flags & 0x4007 != 0 {
        return;
    }
    let mut hlen = 4;
    if flags & 0x8000 != 0 {
        hlen += 4;
    }
    if flags & 0x2000 != 0 {
        hlen += 4;
    }
    if flags & 0x1000 != 0 {
        hlen += 4;
    }
    layer.tunnel = tunnel_for(be16(h[2], h[3]), off + hlen);
}

/// VXLAN (UDP 4789) and Geneve (UDP 6081), recognised by destination port.
#[inline(always)]
fn udp_tunnel(ctx: &TcContext, off: usize, layer: &mut Layer) {
    if layer.dport == lim::VXLAN_PORT {
        layer.tunnel = Tunnel::Eth(off + 8 + 8);
    } else if layer.dport == lim::GENEVE_PORT {
        match bytes_at::<4>(ctx, off + 8) {
            Some(g) => {
                let opt_len = (g[0] & 0x3f) as usize * 4;
                layer.tunnel = tunnel_for(be16(g[2], g[3]), off + 8 + 8 + opt_len);
            }
            // A Geneve header that is not there: the inner frame cannot be
            // read, which parse() treats as malformed.
            None => layer.tunnel = Tunnel::Eth(off + 8 + 8),
        }
    }
}
