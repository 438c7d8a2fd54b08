//! ICMP and ICMPv6 errors: which packet an error quotes, written once for
//! the kernel's connection tracker (`src/conntrack.rs`) and for userspace
//! (`envfence explain --pcap`). Destination unreachable (fragmentation
//! needed included), time exceeded and parameter problem (ICMP types 3, 11,
//! 12), and destination unreachable, packet too big, time exceeded and
//! parameter problem (ICMPv6 types 1 to 4) carry the start of the packet
//! that caused them after their 8-byte header. The quoted IP header is read
//! bounded, like every header (the walk's `bytes_at`): an IPv4 header
//! (with options) that is not a non-first fragment, or an IPv6 header whose
//! next header is the L4 protocol itself (no extension headers), then the
//! first bytes of its TCP/UDP/SCTP header (ports) or its ICMP echo header
//! (identifier). Anything else quotes nothing the connection tracker can
//! use, and the error is judged by the policy like any packet.
//!
//! The reader, `quoted(frame, layer, q)`, is defined by [`crate::quote_for!`]
//! beside the header walk in every [`crate::walk_for!`] instantiation (the
//! kernel's skb, userspace's byte slice), for the reason the walk is a
//! macro: generic code over [`crate::walk::Frame`] costs the verifier
//! thousands of instructions.

use crate::proto;
use crate::walk::Layer;

/// ICMP error types (IPv4).
pub const ICMP_DEST_UNREACH: u16 = 3;
pub const ICMP_TIME_EXCEEDED: u16 = 11;
pub const ICMP_PARAMETER_PROBLEM: u16 = 12;
/// ICMP echo request and reply (IPv4).
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request and reply.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quoted {
    pub proto: u8,
    /// IPv4 addresses in the first 4 bytes, the rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports; for ICMP echo both are the identifier.
    pub sport: u16,
    pub dport: u16,
    /// For a quoted ICMP packet, its type; 0 otherwise.
    pub icmp_type: u8,
}

/// Whether `layer` (an ICMP or ICMPv6 packet whose type is in `sport`) is
/// an error that quotes a packet.
#[inline(always)]
pub fn is_error(layer: &Layer) -> bool {
    if layer.proto == proto::ICMP {
        let t = layer.sport;
        t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETER_PROBLEM
    } else if layer.proto == proto::ICMPV6 {
        (1..=4).contains(&layer.sport)
    } else {
        false
    }
}

/// Whether `t` is an ICMP (`p`) echo request or reply type.
#[inline(always)]
pub fn is_echo(p: u8, t: u8) -> bool {
    if p == proto::ICMP {
        t == ICMP_ECHO_REQUEST || t == ICMP_ECHO_REPLY
    } else {
        t == ICMPV6_ECHO_REQUEST || t == ICMPV6_ECHO_REPLY
    }
}

/// Defines the quote reader for one concrete [`crate::walk::Frame`] type,
/// in the module it is invoked in, beside that frame's header walk (it
/// reads with the walk's `bytes_at`): `pub fn quoted(frame: &$frame, layer,
/// q) -> Option<()>`, the packet quoted by the ICMP error `layer` into `q`
/// (None: nothing usable). [`crate::walk_for!`] invokes it.
#[macro_export]
macro_rules! quote_for {
    ($frame:ty) => {
        /// The packet quoted by the ICMP error `layer`, into `q` (None:
        /// nothing usable). See `envfence_ebpf::quote`.
        #[inline(always)]
        #[allow(dead_code)]
        pub fn quoted(
            frame: &$frame,
            layer: &$crate::walk::Layer,
            q: &mut $crate::quote::Quoted,
        ) -> Option<()> {
            use $crate::{family, proto};
            let off = layer.l4_off + 8;
            q.src = [0; 16];
            q.dst = [0; 16];
            q.icmp_type = 0;
            let l4 = if layer.family == family::V4 {
                let h = bytes_at::<20>(frame, off)?;
                let ihl = (h[0] & 0x0f) as usize;
                if h[0] >> 4 != 4 || ihl < 5 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                    return None;
                }
                q.proto = h[9];
                q.src[..4].copy_from_slice(&h[12..16]);
                q.dst[..4].copy_from_slice(&h[16..20]);
                off + ihl * 4
            } else {
                let h = bytes_at::<40>(frame, off)?;
                if h[0] >> 4 != 6 {
                    return None;
                }
                q.proto = h[6];
                q.src.copy_from_slice(&h[8..24]);
                q.dst.copy_from_slice(&h[24..40]);
                off + 40
            };
            let icmp = if layer.family == family::V4 {
                proto::ICMP
            } else {
                proto::ICMPV6
            };
            if q.proto == proto::TCP || q.proto == proto::UDP || q.proto == proto::SCTP {
                let p = bytes_at::<4>(frame, l4)?;
                q.sport = u16::from_be_bytes([p[0], p[1]]);
                q.dport = u16::from_be_bytes([p[2], p[3]]);
                return Some(());
            }
            if q.proto == icmp {
                let e = bytes_at::<8>(frame, l4)?;
                if !$crate::quote::is_echo(icmp, e[0]) {
                    return None;
                }
                q.icmp_type = e[0];
                let id = u16::from_be_bytes([e[4], e[5]]);
                q.sport = id;
                q.dport = id;
                return Some(());
            }
            None
        }
    };
}
