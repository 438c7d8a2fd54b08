//! L2/L3/L4 header walk with direct packet access, bounded and
//! verifier-friendly. Every outcome is explicit: a frame is either not IP,
//! malformed, too deep, or an IP packet with addresses and what is known of
//! its L4 header. The reference classifier (`agent/src/policy/reference.rs`)
//! mirrors this file decision for decision.

use aya_ebpf::programs::TcContext;
use envfence_ebpf::{family, proto};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;

/// What is known of the L4 header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or SCTP with readable ports.
    Ports,
    /// A port-bearing protocol (or an IPv6 extension header chain this
    /// parser does not walk) whose ports cannot be read.
    NoPorts,
    /// A protocol without ports (ICMP, ...); ICMP type/code are in
    /// sport/dport when readable.
    Other,
}

pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

pub enum Parsed {
    NonIp,
    Malformed,
    VlanTooDeep,
    Ip(Packet),
}

/// A reference to `N` bytes at `off` of the linear packet data, or None when
/// the packet is shorter.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &TcContext, off: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { &*((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*b)
}

#[inline(always)]
fn is_port_bearing(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

/// IPv6 extension headers (and ESP) that hide the upper-layer protocol.
#[inline(always)]
fn is_ipv6_ext(p: u8) -> bool {
    matches!(p, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

/// Reads ports (or ICMP type/code) at `off`.
#[inline(always)]
fn l4_at(ctx: &TcContext, off: usize, pkt: &mut Packet) {
    if is_port_bearing(pkt.proto) {
        match bytes_at::<4>(ctx, off) {
            Some(h) => {
                pkt.sport = u16::from_be_bytes([h[0], h[1]]);
                pkt.dport = u16::from_be_bytes([h[2], h[3]]);
                pkt.l4 = L4::Ports;
            }
            None => pkt.l4 = L4::NoPorts,
        }
    } else {
        pkt.l4 = L4::Other;
        if pkt.proto == proto::ICMP || pkt.proto == proto::ICMPV6 {
            if let Some(h) = bytes_at::<2>(ctx, off) {
                pkt.sport = h[0] as u16;
                pkt.dport = h[1] as u16;
            }
        }
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Some(eth) = bytes_at::<ETH_HLEN>(ctx, 0) else {
        return Parsed::NonIp;
    };
    let mut ethertype = be16(&[eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner), unrolled.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, l3) else {
            return Parsed::Malformed;
        };
        ethertype = be16(&[tag[2], tag[3]]);
        l3 += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, l3) else {
                return Parsed::Malformed;
            };
            ethertype = be16(&[tag[2], tag[3]]);
            l3 += VLAN_HLEN;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Parsed::VlanTooDeep;
            }
        }
    }
    match ethertype {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, l3: usize) -> Parsed {
    let Some(h) = bytes_at::<20>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let version = h[0] >> 4;
    let ihl = (h[0] & 0x0f) as usize;
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if version != 4 || ihl < 5 || tot_len < ihl * 4 {
        return Parsed::Malformed;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let mut pkt = Packet {
        family: family::V4,
        proto: h[9],
        l4: L4::Other,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
    };
    pkt.src[..4].copy_from_slice(&h[12..16]);
    pkt.dst[..4].copy_from_slice(&h[16..20]);
    let l4_off = l3 + ihl * 4;
    if frag & 0x1fff != 0 {
        // Non-first fragment: no L4 header.
        pkt.l4 = if is_port_bearing(pkt.proto) {
            L4::NoPorts
        } else {
            L4::Other
        };
    } else if tot_len < ihl * 4 + 4 && is_port_bearing(pkt.proto) {
        // The IP length leaves no room for the ports.
        pkt.l4 = L4::NoPorts;
    } else {
        l4_at(ctx, l4_off, &mut pkt);
    }
    Parsed::Ip(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, l3: usize) -> Parsed {
    let Some(h) = bytes_at::<IPV6_HLEN>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut pkt = Packet {
        family: family::V6,
        proto: h[6],
        l4: L4::Other,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
    };
    pkt.src.copy_from_slice(&h[8..24]);
    pkt.dst.copy_from_slice(&h[24..40]);
    if is_ipv6_ext(pkt.proto) {
        // Extension headers are not walked yet: the ports are unknown, so
        // the pair's strictest verdict applies.
        pkt.l4 = L4::NoPorts;
    } else {
        l4_at(ctx, l3 + IPV6_HLEN, &mut pkt);
    }
    Parsed::Ip(pkt)
}
