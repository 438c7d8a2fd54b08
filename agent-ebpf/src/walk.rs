//! The header walk: L2/L3/L4, bounded and verifier-friendly, written once
//! for the kernel programs and for userspace. It reads a [`Frame`] (the
//! packet's length, bounded byte reads, what the skb says, the policy's
//! tunnel ports) and is instantiated for each side's concrete frame with
//! [`crate::walk_for!`]: the eBPF programs for the `TcContext` with direct packet
//! access (`src/skb.rs`), the agent for a byte slice and the compiled
//! policy (`agent/src/policy/reference.rs`, the userspace classifier
//! `explain` and the tests use). Cilium serves skb and XDP from one
//! library the same way (`bpf/lib/overloadable.h`, also by macro). The
//! parsed [`Packet`] and its [`Layer`]s are defined here once.
//!
//! Every outcome is explicit: a frame is either not IP, malformed, too
//! deep, or an IP packet with its addresses, what is known of its L4 header,
//! and — for IPIP, IPv6-in-IP, GRE, VXLAN, VXLAN-GPE and Geneve — the inner
//! packet's addresses too. IP is found behind VLAN tags, MPLS label stacks
//! and PPPoE sessions; IPv6 routing headers give a final destination that
//! is judged too; a length field of 0 is taken from the skb in a GSO packet
//! (BIG TCP) and from the Jumbo Payload option in an RFC 2675 jumbogram.
//!
//! Because userspace runs this very code, it cannot catch the walk's own
//! bugs: only a decoder written independently of it (the differential
//! tests' oracle in `tests/`) can.
//! Everything here is `#[inline(always)]` and keeps the kernel's bounds
//! checks, so the verifier sees what it saw before the walk was shared
//! (ingress 397,046, egress 383,348 instructions).

use crate::stat;

/// A packet the walk reads: what the kernel's `__sk_buff` gives the
/// programs, or a byte slice and what is known of its skb in userspace.
pub trait Frame {
    /// The packet's length (`skb->len`): the lengths its headers claim are
    /// checked against it. May exceed the bytes [`Frame::bytes`] reaches
    /// (a non-linear skb).
    fn packet_len(&self) -> usize;
    /// The `N` bytes at `off`, or None when they are not readable. The
    /// walk reads only within [`crate::parse_limits::MAX_OFFSET`] (see `bytes_at` in [`crate::walk_for!`]).
    fn bytes<const N: usize>(&self, off: usize) -> Option<&[u8; N]>;
    /// The byte at `off` (the kernel reads single bytes with a helper: the
    /// verifier grants no range to a one-byte direct read).
    fn byte(&self, off: usize) -> Option<u8>;
    /// The skb is a GSO packet (`gso_size` != 0): a length field of 0
    /// means "as long as the skb" (BIG TCP).
    fn gso(&self) -> bool;
    /// The [`crate::tunnel`] kind of UDP destination port `port` under policy
    /// `slot` ([`crate::map_names::TUNNEL_PORTS`]); None when the table
    /// cannot say (taken as [`crate::tunnel::NONE`]).
    fn tunnel_kind(&self, slot: u32, port: u16) -> Option<u8>;
}

/// What is known of the L4 header: the one L4 enum of the kernel's parsed
/// layer, the userspace classifier's judgement and [`crate::decide`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP or SCTP with readable ports.
    Ports,
    /// A port-bearing protocol (or an IPv6 extension header chain) whose
    /// ports cannot be read.
    NoPorts,
    /// A protocol without ports (ICMP, ...); ICMP type/code are in
    /// sport/dport when readable.
    #[default]
    Other,
}

/// Where a tunnel's inner packet starts (the walk's own; public for
/// [`crate::walk_for!`]'s expansion only).
#[doc(hidden)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Tunnel {
    #[default]
    None,
    Ip4(usize),
    Ip6(usize),
    Eth(usize),
}

/// One IP layer.
#[derive(Clone, Copy, Default)]
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
    /// The length field was 0 and the length came from the skb (GSO).
    pub len_from_skb: bool,
    /// An IPv6 jumbogram (length from the Jumbo Payload option).
    pub jumbo: bool,
    /// A routing header names a final destination other than `dst`
    /// (segments left > 0): `final_dst` is judged too.
    pub has_final: bool,
    pub final_dst: [u8; 16],
    /// Offset of the L4 header in the frame (0 when none was reached); the
    /// connection tracker reads TCP flags, ICMP echo ids and ICMP errors'
    /// quoted headers from here (`crate::conntrack`, `crate::quote`).
    pub l4_off: usize,
    #[doc(hidden)]
    pub tunnel: Tunnel,
}

/// The frame carried its outer IP packet in MPLS (see [`Packet::encap`]).
pub const ENCAP_MPLS: u8 = 1;
/// ... or in a PPPoE session.
pub const ENCAP_PPPOE: u8 = 2;

/// The parsed packet. In the kernel it lives in a per-CPU scratch map
/// ([`crate::map_names::SCRATCH`]), not on the 512-byte BPF stack.
#[derive(Default)]
pub struct Packet {
    pub outer: Layer,
    /// The encapsulated packet of a tunnel, when `has_inner`.
    pub inner: Layer,
    pub has_inner: bool,
    /// [`ENCAP_MPLS`] / [`ENCAP_PPPOE`] of the outer layer, or 0.
    pub encap: u8,
    /// The EtherType (after VLAN tags) of a frame rejected as non-IP; for
    /// MPLS and PPPoE whose payload is not IP, theirs.
    pub l2_type: u16,
    /// The skb is a GSO packet (`gso_size` != 0): a length field of 0 means
    /// "as long as the skb" (BIG TCP).
    #[doc(hidden)]
    pub gso: bool,
    /// The policy slot in force (tunnel ports); the decision stage judges
    /// with the same slot.
    pub slot: u32,
    /// The hook that parsed the packet (`envfence_ebpf::direction`), for
    /// the decision stage.
    pub dir: u8,
}

// A hook of one agent and the decision stage of the next share the pinned
// scratch packet: its layout is part of the ABI.
const _: () = assert!(core::mem::size_of::<Packet>() == crate::SCRATCH_PACKET_BYTES);

/// Why a frame is not judged by policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    NonIp,
    Malformed,
    VlanTooDeep,
    TunnelTooDeep,
    MplsTooDeep,
}

/// Defines the header walk for one concrete [`Frame`] type, in the module
/// it is invoked in: `pub fn parse(frame: &$frame, pkt, slot)`, `pub fn
/// bytes_at::<N>(frame, off)` and the ICMP quote reader `pub fn
/// quoted(frame, layer, q)` ([`crate::quote_for!`]). The walk is written once, here; each side
/// instantiates it for its frame (the kernel for the skb, the agent for a
/// byte slice). Why a macro and not generic functions: the same code made
/// generic over `F: Frame` costs the verifier 21,000 more instructions on
/// the ingress hook (rustc's MIR inliner cannot see through the trait
/// calls of a generic body, and LLVM then shapes the branches otherwise);
/// instantiated for a concrete type it is the code the hooks always ran.
#[macro_export]
macro_rules! walk_for {
    ($frame:ty) => {
        #[allow(unused_imports)]
        use $crate::walk::{
            Frame as _, Layer, Packet, Reject, Tunnel, ENCAP_MPLS, ENCAP_PPPOE, L4,
        };
        #[allow(unused_imports)]
        use $crate::wire::{
            ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_MPLS_MC,
            ETH_P_MPLS_UC, ETH_P_PPP_SES, ETH_P_TEB, GPE_ETHERNET, GPE_IPV4, GPE_IPV6, IPV6_HLEN,
            IPV6_OPT_JUMBO, MPLS_HLEN, PPPOE_HLEN, PPP_IP, PPP_IPV6, VLAN_HLEN,
        };
        #[allow(unused_imports)]
        use $crate::{family, parse_limits as lim, proto, tunnel};

        /// A reference to `N` bytes at `off` of the frame, or None when the frame
        /// is shorter (or `off` is past what the parser reads).
        #[inline(always)]
        #[allow(dead_code)]
        pub fn bytes_at<'f, const N: usize>(f: &'f $frame, off: usize) -> Option<&'f [u8; N]> {
            if off > lim::MAX_OFFSET {
                return None;
            }
            f.bytes::<N>(off)
        }

        #[inline(always)]
        fn be16(a: u8, b: u8) -> u16 {
            u16::from_be_bytes([a, b])
        }

        #[inline(always)]
        fn is_port_bearing(p: u8) -> bool {
            p == proto::TCP || p == proto::UDP || p == proto::SCTP || p == proto::DCCP
        }

        #[inline(always)]
        fn is_vlan(ethertype: u16) -> bool {
            ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
        }

        /// Parses a frame into `pkt`: its IP layer(s), or why it is not judged by
        /// policy. `slot` is the policy in force (its tunnel ports).
        #[inline(always)]
        pub fn parse(frame: &$frame, pkt: &mut Packet, slot: u32) -> Result<(), Reject> {
            pkt.has_inner = false;
            pkt.encap = 0;
            pkt.l2_type = 0;
            pkt.slot = slot;
            pkt.gso = frame.gso();
            let (ethertype, l3, encap) = parse_eth(frame, 0)?;
            pkt.encap = encap;
            if !parse_ip(frame, pkt, ethertype, l3, false)? {
                pkt.l2_type = ethertype;
                return Err(Reject::NonIp);
            }
            let inner_start = match pkt.outer.tunnel {
                Tunnel::None => return Ok(()),
                Tunnel::Ip4(off) => Ok((ETH_P_IP, off, 0)),
                Tunnel::Ip6(off) => Ok((ETH_P_IPV6, off, 0)),
                Tunnel::Eth(off) => parse_eth(frame, off),
            };
            let (inner_type, inner_l3, _) = match inner_start {
                Ok(x) => x,
                // The tunnel says a frame follows but it cannot be read: a real
                // decapsulator would discard it too.
                Err(Reject::NonIp) => return Err(Reject::Malformed),
                Err(r) => return Err(r),
            };
            // Non-IP inside an Ethernet tunnel (ARP ...): judged on the outer.
            pkt.has_inner = parse_ip(frame, pkt, inner_type, inner_l3, true)?;
            if pkt.has_inner && pkt.inner.tunnel != Tunnel::None {
                return Err(Reject::TunnelTooDeep);
            }
            Ok(())
        }

        /// Ethernet at `off` with up to two VLAN tags, then an MPLS label stack or
        /// a PPPoE session header: (ethertype of what follows, its offset, the
        /// [`ENCAP_MPLS`] / [`ENCAP_PPPOE`] it came through). MPLS and PPPoE
        /// carrying IP give `ETH_P_IP` / `ETH_P_IPV6`; carrying anything else,
        /// their own EtherType (non-IP).
        #[inline(always)]
        fn parse_eth(frame: &$frame, off: usize) -> Result<(u16, usize, u8), Reject> {
            let (ethertype, l3) = parse_vlans(frame, off)?;
            if ethertype == ETH_P_MPLS_UC || ethertype == ETH_P_MPLS_MC {
                return parse_mpls(frame, ethertype, l3);
            }
            if ethertype == ETH_P_PPP_SES {
                return parse_pppoe(frame, l3);
            }
            Ok((ethertype, l3, 0))
        }

        /// The label stack down to bottom-of-stack (at most `MAX_MPLS_LABELS`
        /// labels), then the payload's first nibble: 4 IPv4, 6 IPv6, anything else
        /// (a pseudowire control word, OAM) not IP.
        #[inline(always)]
        fn parse_mpls(
            frame: &$frame,
            ethertype: u16,
            l3: usize,
        ) -> Result<(u16, usize, u8), Reject> {
            let mut off = l3;
            let mut i = 0;
            loop {
                if i == lim::MAX_MPLS_LABELS {
                    return Err(Reject::MplsTooDeep);
                }
                let Some(label) = bytes_at::<MPLS_HLEN>(frame, off) else {
                    return Err(Reject::Malformed);
                };
                off += MPLS_HLEN;
                i += 1;
                if label[2] & 1 != 0 {
                    break;
                }
            }
            // One byte: read with the helper (the verifier grants no range to a
            // one-byte direct read checked as `p < data_end`). Within MAX_OFFSET the
            // linear area holds the frame (pulled to PULL_LEN), so this sees what
            // bytes_at would.
            let first: u8 = if off > lim::MAX_OFFSET {
                return Err(Reject::Malformed);
            } else {
                match frame.byte(off) {
                    Some(b) => b,
                    None => return Err(Reject::Malformed),
                }
            };
            match first >> 4 {
                4 => Ok((ETH_P_IP, off, ENCAP_MPLS)),
                6 => Ok((ETH_P_IPV6, off, ENCAP_MPLS)),
                _ => Ok((ethertype, off, 0)),
            }
        }

        /// A PPPoE session header (version 1, type 1, code 0) and the PPP protocol
        /// field (2 bytes, or 1 when compressed: an odd first byte).
        #[inline(always)]
        fn parse_pppoe(frame: &$frame, l3: usize) -> Result<(u16, usize, u8), Reject> {
            let Some(h) = bytes_at::<{ PPPOE_HLEN + 1 }>(frame, l3) else {
                return Err(Reject::Malformed);
            };
            if h[0] != 0x11 || h[1] != 0 {
                return Err(Reject::Malformed);
            }
            let (ppp, off) = if h[6] & 1 != 0 {
                (h[6] as u16, l3 + PPPOE_HLEN + 1)
            } else {
                let Some(h) = bytes_at::<{ PPPOE_HLEN + 2 }>(frame, l3) else {
                    return Err(Reject::Malformed);
                };
                (be16(h[6], h[7]), l3 + PPPOE_HLEN + 2)
            };
            if ppp == PPP_IP {
                Ok((ETH_P_IP, off, ENCAP_PPPOE))
            } else if ppp == PPP_IPV6 {
                Ok((ETH_P_IPV6, off, ENCAP_PPPOE))
            } else {
                Ok((ETH_P_PPP_SES, off, 0))
            }
        }

        /// Ethernet at `off` with up to two VLAN tags: (ethertype, L3 offset).
        #[inline(always)]
        fn parse_vlans(frame: &$frame, off: usize) -> Result<(u16, usize), Reject> {
            let Some(eth) = bytes_at::<ETH_HLEN>(frame, off) else {
                return Err(Reject::NonIp);
            };
            let mut ethertype = be16(eth[12], eth[13]);
            let mut l3 = off + ETH_HLEN;
            if is_vlan(ethertype) {
                let Some(tag) = bytes_at::<VLAN_HLEN>(frame, l3) else {
                    return Err(Reject::Malformed);
                };
                ethertype = be16(tag[2], tag[3]);
                l3 += VLAN_HLEN;
                if is_vlan(ethertype) {
                    let Some(tag) = bytes_at::<VLAN_HLEN>(frame, l3) else {
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

        /// The IP layer at `l3` into the outer (or `inner`) layer of `pkt`:
        /// Ok(false) when `ethertype` is not IP.
        #[inline(always)]
        fn parse_ip(
            frame: &$frame,
            pkt: &mut Packet,
            ethertype: u16,
            l3: usize,
            inner: bool,
        ) -> Result<bool, Reject> {
            let (gso, slot) = (pkt.gso, pkt.slot);
            let layer = if inner {
                &mut pkt.inner
            } else {
                &mut pkt.outer
            };
            match ethertype {
                ETH_P_IP => parse_v4(frame, l3, layer, gso, slot).map(|()| true),
                ETH_P_IPV6 => parse_v6(frame, l3, layer, gso, slot).map(|()| true),
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
            layer.len_from_skb = false;
            layer.jumbo = false;
            layer.has_final = false;
            layer.l4_off = 0;
            layer.tunnel = Tunnel::None;
        }

        #[inline(always)]
        fn parse_v4(
            frame: &$frame,
            l3: usize,
            layer: &mut Layer,
            gso: bool,
            slot: u32,
        ) -> Result<(), Reject> {
            let Some(h) = bytes_at::<20>(frame, l3) else {
                return Err(Reject::Malformed);
            };
            let ihl = (h[0] & 0x0f) as usize;
            let mut tot_len = be16(h[2], h[3]) as usize;
            let avail = frame.packet_len().saturating_sub(l3);
            // BIG TCP: the stack writes total length 0 into a GSO packet longer
            // than 64 KiB; the skb says how long it is.
            let from_skb = tot_len == 0 && gso;
            if from_skb {
                tot_len = avail;
            }
            if h[0] >> 4 != 4 || ihl < 5 || tot_len < ihl * 4 || tot_len > avail {
                return Err(Reject::Malformed);
            }
            reset_layer(layer, family::V4, h[9]);
            layer.len_from_skb = from_skb;
            layer.src[..4].copy_from_slice(&h[12..16]);
            layer.dst[..4].copy_from_slice(&h[16..20]);
            let frag = be16(h[6], h[7]);
            if frag & 0x1fff != 0 {
                no_l4_header(layer);
            } else {
                let l4_len = tot_len - ihl * 4;
                l4_at(frame, l3 + ihl * 4, l4_len, layer, slot);
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
        fn parse_v6(
            frame: &$frame,
            l3: usize,
            layer: &mut Layer,
            gso: bool,
            slot: u32,
        ) -> Result<(), Reject> {
            let Some(h) = bytes_at::<IPV6_HLEN>(frame, l3) else {
                return Err(Reject::Malformed);
            };
            let mut payload = be16(h[4], h[5]) as usize;
            let avail = frame.packet_len().saturating_sub(l3 + IPV6_HLEN);
            if h[0] >> 4 != 6 {
                return Err(Reject::Malformed);
            }
            let (mut from_skb, mut jumbo) = (false, false);
            if payload == 0 {
                if gso {
                    // BIG TCP (with or without a hop-by-hop Jumbo option).
                    payload = avail;
                    from_skb = true;
                } else {
                    payload = jumbo_len(frame, l3, h[6]).ok_or(Reject::Malformed)?;
                    jumbo = true;
                }
            }
            if payload > avail {
                return Err(Reject::Malformed);
            }
            reset_layer(layer, family::V6, h[6]);
            layer.len_from_skb = from_skb;
            layer.jumbo = jumbo;
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
                let Some(e) = bytes_at::<8>(frame, off) else {
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
                if layer.proto == proto::ROUTING && e[3] != 0 {
                    final_destination(frame, off, e, layer)?;
                }
                layer.proto = next;
                off += len;
            }
            if is_ipv6_ext(layer.proto) {
                layer.ext_too_deep = true;
                layer.l4 = L4::NoPorts;
                return Ok(());
            }
            l4_at(frame, off, end.saturating_sub(off), layer, slot);
            Ok(())
        }

        /// The length of an RFC 2675 jumbogram: the packet's first extension
        /// header is hop-by-hop and its first option is Jumbo Payload (type 0xC2,
        /// 4 bytes; where RFC 2675's 4n+2 alignment and Linux put it), with a
        /// length over 65535. None: not a jumbogram.
        #[inline(always)]
        fn jumbo_len(frame: &$frame, l3: usize, next: u8) -> Option<usize> {
            if next != proto::HOPOPTS {
                return None;
            }
            let o = bytes_at::<8>(frame, l3 + IPV6_HLEN)?;
            if o[2] != IPV6_OPT_JUMBO || o[3] != 4 {
                return None;
            }
            let len = u32::from_be_bytes([o[4], o[5], o[6], o[7]]) as usize;
            if len <= 65535 {
                return None;
            }
            Some(len)
        }

        /// A routing header with segments left (`e`: its first 8 bytes at `off`):
        /// the final destination of type 0 (the last address), type 2 (the home
        /// address) and type 4 (segment routing: segment list\[0\]). A header
        /// that is inconsistent, whose final destination cannot be read, or a
        /// second one with segments left, is malformed; other types are judged on
        /// the destination alone (Linux discards them when segments are left).
        #[inline(always)]
        fn final_destination(
            frame: &$frame,
            off: usize,
            e: &[u8; 8],
            layer: &mut Layer,
        ) -> Result<(), Reject> {
            let (units, kind, left) = (e[1] as usize, e[2], e[3] as usize);
            let at = if kind == 0 {
                let n = units / 2;
                if units == 0 || units % 2 != 0 || left > n {
                    return Err(Reject::Malformed);
                }
                off + 8 + (n - 1) * 16
            } else if kind == 2 {
                if units != 2 || left != 1 {
                    return Err(Reject::Malformed);
                }
                off + 8
            } else if kind == 4 {
                let last = e[4] as usize;
                if (last + 1) * 2 > units || left > last + 1 {
                    return Err(Reject::Malformed);
                }
                off + 8
            } else {
                return Ok(());
            };
            if layer.has_final {
                return Err(Reject::Malformed);
            }
            let Some(a) = bytes_at::<16>(frame, at) else {
                return Err(Reject::Malformed);
            };
            layer.final_dst = *a;
            layer.has_final = true;
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
        fn l4_at(frame: &$frame, off: usize, len: usize, layer: &mut Layer, slot: u32) {
            let p = layer.proto;
            layer.l4_off = off;
            if is_port_bearing(p) {
                let Some(h) = bytes_at::<4>(frame, off).filter(|_| len >= 4) else {
                    layer.l4 = L4::NoPorts;
                    return;
                };
                layer.sport = be16(h[0], h[1]);
                layer.dport = be16(h[2], h[3]);
                layer.l4 = L4::Ports;
                if p == proto::UDP {
                    udp_tunnel(frame, off, layer, slot);
                }
                return;
            }
            layer.l4 = L4::Other;
            if p == proto::ICMP || p == proto::ICMPV6 {
                if let Some(h) = bytes_at::<2>(frame, off).filter(|_| len >= 2) {
                    layer.sport = h[0] as u16;
                    layer.dport = h[1] as u16;
                }
            } else if p == proto::IPIP {
                layer.tunnel = Tunnel::Ip4(off);
            } else if p == proto::IPV6 {
                layer.tunnel = Tunnel::Ip6(off);
            } else if p == proto::GRE {
                gre(frame, off, layer);
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
        fn gre(frame: &$frame, off: usize, layer: &mut Layer) {
            let Some(h) = bytes_at::<4>(frame, off) else {
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

        /// VXLAN, VXLAN-GPE and Geneve, recognised by destination port: the
        /// policy's tunnel ports ([`Frame::tunnel_kind`]).
        #[inline(always)]
        fn udp_tunnel(frame: &$frame, off: usize, layer: &mut Layer, slot: u32) {
            let Some(kind) = frame.tunnel_kind(slot, layer.dport) else {
                return;
            };
            if kind == tunnel::NONE {
                return;
            }
            // A tunnel header that is not there: the inner frame cannot be read,
            // which parse() treats as malformed.
            let unreadable = Tunnel::Eth(off + 8 + 8);
            if kind == tunnel::VXLAN {
                layer.tunnel = Tunnel::Eth(off + 8 + 8);
            } else if kind == tunnel::GENEVE {
                match bytes_at::<4>(frame, off + 8) {
                    Some(g) => {
                        let opt_len = (g[0] & 0x3f) as usize * 4;
                        layer.tunnel = tunnel_for(be16(g[2], g[3]), off + 8 + 8 + opt_len);
                    }
                    None => layer.tunnel = unreadable,
                }
            } else if kind == tunnel::VXLAN_GPE {
                match bytes_at::<4>(frame, off + 8) {
                    // Next protocol applies only with the P flag (0x04); Linux
                    // discards the packet otherwise: nothing inside to judge.
                    Some(g) if g[0] & 0x04 == 0 => {}
                    Some(g) => {
                        let inner = off + 8 + 8;
                        layer.tunnel = if g[3] == GPE_IPV4 {
                            Tunnel::Ip4(inner)
                        } else if g[3] == GPE_IPV6 {
                            Tunnel::Ip6(inner)
                        } else if g[3] == GPE_ETHERNET {
                            Tunnel::Eth(inner)
                        } else {
                            Tunnel::None
                        };
                    }
                    None => layer.tunnel = unreadable,
                }
            }
        }

        // The packet an ICMP error quotes, read with this walk's bounds.
        $crate::quote_for!($frame);
    };
}

/// The statistic of a non-IP frame's kind, from [`Packet::l2_type`].
#[inline(always)]
pub fn non_ip_stat(l2_type: u16) -> u32 {
    use crate::wire;
    match l2_type {
        wire::ETH_P_ARP => stat::NON_IP_ARP,
        wire::ETH_P_LLDP => stat::NON_IP_LLDP,
        wire::ETH_P_MPLS_UC | wire::ETH_P_MPLS_MC => stat::NON_IP_MPLS,
        wire::ETH_P_PPP_SES | wire::ETH_P_PPP_DISC => stat::NON_IP_PPPOE,
        _ => stat::NON_IP_OTHER,
    }
}
