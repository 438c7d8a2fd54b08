//! The IP layer: IPv4 (RFC 791) and IPv6 (RFC 8200) fixed headers read
//! with etherparse, then, in tables of this module, what the datapath adds:
//! lengths of 0 (BIG TCP in a GSO skb; an RFC 2675 Jumbo Payload option
//! opening the hop-by-hop header), the extension-header walk (at most
//! `MAX_IPV6_EXT` headers, each known by its number and the way it states
//! its length; only its first 8 bytes need to be in the window), non-first
//! fragments, and the final destination a routing header names (type 0
//! RFC 5095, type 2 RFC 6275 6.4, type 4 segment routing RFC 8754).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envfence::policy::reference::L4Seen;
use envfence::policy::Tunnels;
use etherparse::{Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice};

use super::describe::{self, proto_name};
use super::upper;
use super::window::Window;
use super::{Layer, Net, Stop};

/// How an IPv6 extension header says how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtSize {
    /// Hdr Ext Len in 8-octet units, not counting the first 8.
    Units8,
    /// RFC 4302 AH: Payload Len in 4-octet units, minus 2.
    Units4,
    /// The fragment header: always 8 bytes.
    Fragment,
    /// ESP: nothing after it can be read.
    Opaque,
}

/// The IANA "IPv6 Extension Header Types" the walk steps over.
const EXTENSION_HEADERS: [(u8, ExtSize); 9] = [
    (0, ExtSize::Units8),  // hop-by-hop options
    (43, ExtSize::Units8), // routing
    (44, ExtSize::Fragment),
    (50, ExtSize::Opaque),  // ESP
    (51, ExtSize::Units4),  // AH
    (60, ExtSize::Units8),  // destination options
    (135, ExtSize::Units8), // mobility
    (139, ExtSize::Units8), // HIP
    (140, ExtSize::Units8), // shim6
];

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
/// RFC 2675 Jumbo Payload option: type and data length.
const JUMBO_OPTION: (u8, u8) = (0xc2, 4);
const IPV6_FIXED: usize = 40;

fn extension(next: u8) -> Option<ExtSize> {
    EXTENSION_HEADERS
        .iter()
        .find(|(n, _)| *n == next)
        .map(|(_, s)| *s)
}

/// The IP packet at `net`, with what its upper layer says.
pub(crate) fn packet(w: &Window, net: Net, tunnels: &Tunnels) -> Result<Layer, Stop> {
    match net {
        Net::V4(l3) => ipv4(w, l3, tunnels),
        Net::V6(l3) => ipv6(w, l3, tunnels),
    }
}

fn ipv4(w: &Window, l3: usize, tunnels: &Tunnels) -> Result<Layer, Stop> {
    match w.take(l3, 20) {
        Some(fixed) => w.note(l3, || describe::ipv4(fixed, w.left(l3))),
        None => return Err(w.cut(l3, "ipv4", 20, Stop::Malformed)),
    }
    let h = w
        .from(l3)
        .and_then(|s| Ipv4HeaderSlice::from_slice(s).ok())
        .ok_or(Stop::Malformed)?;
    let header = usize::from(h.ihl()) * 4;
    let in_skb = w.left(l3);
    let from_skb = h.total_len() == 0 && w.gso;
    let total = if from_skb {
        in_skb
    } else {
        usize::from(h.total_len())
    };
    if total < header || total > in_skb {
        return Err(Stop::Malformed);
    }
    let mut layer = Layer::new(
        4,
        h.protocol().0,
        IpAddr::V4(Ipv4Addr::from(h.source())),
        IpAddr::V4(Ipv4Addr::from(h.destination())),
    );
    layer.len_from_skb = from_skb;
    if h.fragments_offset().value() != 0 {
        upper::not_here(&mut layer);
    } else {
        upper::read(w, l3 + header, total - header, &mut layer, tunnels);
    }
    Ok(layer)
}

/// The payload length of an IPv6 packet whose header says 0: the skb's in
/// a GSO packet, else an RFC 2675 jumbogram's (the Jumbo Payload option
/// first in a leading hop-by-hop header, over 65535), else none.
fn zero_length(w: &Window, l3: usize, next: u8) -> Result<(usize, bool, bool), Stop> {
    if w.gso {
        return Ok((w.left(l3 + IPV6_FIXED), true, false));
    }
    if next != HOP_BY_HOP {
        return Err(Stop::Malformed);
    }
    let hbh = w.take(l3 + IPV6_FIXED, 8).ok_or(Stop::Malformed)?;
    if (hbh[2], hbh[3]) != JUMBO_OPTION {
        return Err(Stop::Malformed);
    }
    let length = u32::from_be_bytes([hbh[4], hbh[5], hbh[6], hbh[7]]);
    match usize::try_from(length) {
        Ok(n) if n > usize::from(u16::MAX) => Ok((n, false, true)),
        _ => Err(Stop::Malformed),
    }
}

fn ipv6(w: &Window, l3: usize, tunnels: &Tunnels) -> Result<Layer, Stop> {
    match w.take(l3, IPV6_FIXED) {
        Some(fixed) => w.note(l3, || describe::ipv6(fixed, w.left(l3 + IPV6_FIXED))),
        None => return Err(w.cut(l3, "ipv6", IPV6_FIXED, Stop::Malformed)),
    }
    let h = w
        .from(l3)
        .and_then(|s| Ipv6HeaderSlice::from_slice(s).ok())
        .ok_or(Stop::Malformed)?;
    let (payload, from_skb, jumbo) = match h.payload_length() {
        0 => zero_length(w, l3, h.next_header().0)?,
        n => (usize::from(n), false, false),
    };
    if payload > w.left(l3 + IPV6_FIXED) {
        return Err(Stop::Malformed);
    }
    let mut layer = Layer::new(
        6,
        h.next_header().0,
        IpAddr::V6(Ipv6Addr::from(h.source())),
        IpAddr::V6(Ipv6Addr::from(h.destination())),
    );
    layer.len_from_skb = from_skb;
    layer.jumbo = jumbo;
    let end = l3 + IPV6_FIXED + payload;
    let mut at = l3 + IPV6_FIXED;
    for n in 1..=w.limits.ipv6_ext {
        let Some(size) = extension(layer.proto) else {
            upper::read(w, at, end.saturating_sub(at), &mut layer, tunnels);
            return Ok(layer);
        };
        let name = proto_name(layer.proto);
        let fixed = match (size, w.take(at, 8)) {
            (ExtSize::Opaque, _) | (_, None) => {
                w.note(at, || {
                    format!("ext #{n} {name}: nothing after it can be read")
                });
                layer.l4 = L4Seen::NoPorts;
                return Ok(layer);
            }
            (_, Some(fixed)) => fixed,
        };
        let length = match size {
            ExtSize::Units8 => (usize::from(fixed[1]) + 1) * 8,
            ExtSize::Units4 => (usize::from(fixed[1]) + 2) * 4,
            _ => 8,
        };
        w.note(at, || {
            let next = format!("next {} ({})", fixed[0], proto_name(fixed[0]));
            match size {
                ExtSize::Fragment => {
                    let fo = u16::from_be_bytes([fixed[2], fixed[3]]);
                    let non_first = if fo >> 3 != 0 {
                        " NON-FIRST FRAGMENT"
                    } else {
                        ""
                    };
                    format!(
                        "ext #{n} fragment {next} offset {} M {}{non_first}",
                        fo >> 3,
                        fo & 1
                    )
                }
                _ => format!("ext #{n} {name} {next} len {length}"),
            }
        });
        if size == ExtSize::Fragment {
            let frag = Ipv6FragmentHeaderSlice::from_slice(fixed).map_err(|_| Stop::Malformed)?;
            if frag.fragment_offset().value() != 0 {
                layer.proto = frag.next_header().0;
                upper::not_here(&mut layer);
                return Ok(layer);
            }
        }
        if layer.proto == ROUTING {
            if let Some(last) = final_destination(w, at)? {
                if layer.final_dst.is_some() {
                    // A second routing header still routing: which one is
                    // the packet's path cannot be told.
                    return Err(Stop::Malformed);
                }
                w.note(at, || format!("routing: final destination {last}"));
                layer.final_dst = Some(last);
            }
        }
        layer.proto = fixed[0];
        at += length;
    }
    if extension(layer.proto).is_some() {
        w.note(at, || "extension headers past the walk's bound".into());
        layer.ext_too_deep = true;
        layer.l4 = L4Seen::NoPorts;
        return Ok(layer);
    }
    upper::read(w, at, end.saturating_sub(at), &mut layer, tunnels);
    Ok(layer)
}

/// Where a routing header's final address sits, by routing type, and
/// whether the header is consistent: `(hdr_ext_len, segments_left, byte 4)
/// -> offset of the final address after the 8 fixed bytes`, `Err` when
/// inconsistent, `Ok(None)` for a type whose final destination envfence
/// does not know.
type FinalAddress = fn(usize, usize, usize) -> Result<Option<usize>, ()>;

const ROUTING_TYPES: [(u8, FinalAddress); 3] = [
    // RFC 5095 (type 0): n addresses, Hdr Ext Len 2n; the last is final.
    (0, |units, left, _| {
        let n = units / 2;
        if units % 2 == 1 || n == 0 || left > n {
            Err(())
        } else {
            Ok(Some(16 * (n - 1)))
        }
    }),
    // RFC 6275 6.4 (type 2): one home address.
    (2, |units, left, _| {
        if units == 2 && left == 1 {
            Ok(Some(0))
        } else {
            Err(())
        }
    }),
    // RFC 8754 (segment routing): Last Entry + 1 segments; Segment
    // List[0] is the final segment.
    (4, |units, left, last_entry| {
        let segments = last_entry + 1;
        if 16 * segments > 8 * units || left > segments {
            Err(())
        } else {
            Ok(Some(0))
        }
    }),
];

/// The final destination of the routing header at `at`, when it still
/// has segments left.
fn final_destination(w: &Window, at: usize) -> Result<Option<IpAddr>, Stop> {
    let h = w.take(at, 8).ok_or(Stop::Malformed)?;
    let (units, kind, left) = (usize::from(h[1]), h[2], usize::from(h[3]));
    if left == 0 {
        return Ok(None);
    }
    let Some((_, place)) = ROUTING_TYPES.iter().find(|(t, _)| *t == kind) else {
        return Ok(None);
    };
    let Some(offset) = place(units, left, usize::from(h[4])).map_err(|()| Stop::Malformed)? else {
        return Ok(None);
    };
    let address = w.take(at + 8 + offset, 16).ok_or(Stop::Malformed)?;
    let octets: [u8; 16] = address.try_into().map_err(|_| Stop::Malformed)?;
    Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
}
