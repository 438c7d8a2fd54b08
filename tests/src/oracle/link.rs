//! The link layers, from the IEEE and IETF texts: Ethernet II (IEEE 802.3)
//! and up to two VLAN tags (802.1Q, 802.1ad) read with etherparse, then
//! what etherparse does not walk, written as tables here: an MPLS label
//! stack (RFC 3032, the payload's first nibble saying IPv4 or IPv6, RFC
//! 4385) and a PPPoE session (RFC 2516, PPP protocol field per RFC 1661,
//! compressed when its first byte is odd).
//!
//! Limits ([`Limits::DATAPATH`](super::window::Limits)): two VLAN tags,
//! a third is `VlanTooDeep`; six MPLS labels, a seventh without
//! bottom-of-stack is `MplsTooDeep`.

use envfence::policy::reference::{Encap, NonIpKind};
use etherparse::{Ethernet2HeaderSlice, SingleVlanHeaderSlice};

use super::describe::{ethertype_name, mac};
use super::window::Window;
use super::{Net, Stop};

/// What an EtherType leads the walk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Tag,
    Ipv4,
    Ipv6,
    Mpls,
    PppoeSession,
    /// Counted as non-IP of this kind.
    Other(NonIpKind),
}

/// The IEEE EtherType registry, as far as envfence cares; any other type
/// is non-IP of kind `Other`.
const ETHERTYPES: [(u16, Next); 10] = [
    (0x8100, Next::Tag),  // 802.1Q customer tag
    (0x88a8, Next::Tag),  // 802.1ad service tag
    (0x0800, Next::Ipv4), // RFC 894
    (0x86dd, Next::Ipv6), // RFC 2464
    (0x8847, Next::Mpls), // RFC 3032 unicast
    (0x8848, Next::Mpls), // RFC 3032 multicast
    (0x8864, Next::PppoeSession),
    (0x8863, Next::Other(NonIpKind::Pppoe)), // PPPoE discovery
    (0x0806, Next::Other(NonIpKind::Arp)),
    (0x88cc, Next::Other(NonIpKind::Lldp)),
];

fn next_of(ethertype: u16) -> Next {
    ETHERTYPES
        .iter()
        .find(|(t, _)| *t == ethertype)
        .map_or(Next::Other(NonIpKind::Other), |(_, n)| *n)
}

/// An MPLS payload by its first nibble (no type field, RFC 3032 2.1;
/// nibbles 0 and 1 are pseudowire control words, RFC 4385).
const MPLS_PAYLOADS: [(u8, Next); 2] = [(4, Next::Ipv4), (6, Next::Ipv6)];

/// PPP protocol numbers (RFC 1332 IPCP's 0x0021, RFC 5072's 0x0057).
const PPP_PROTOCOLS: [(u16, Next); 2] = [(0x0021, Next::Ipv4), (0x0057, Next::Ipv6)];

/// RFC 2516 5.: version and type 1, code 0 in a session packet.
const PPPOE_SESSION_VER_TYPE: u8 = 0x11;
/// The PPPoE header before the PPP protocol field.
const PPPOE_LEN: usize = 6;

/// What a link layer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carries {
    Ip(Net),
    NotIp(NonIpKind),
}

/// The link layers of the Ethernet frame at `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub carries: Carries,
    /// How the IP packet travelled (meaningful only for [`Carries::Ip`]).
    pub encap: Encap,
}

fn ip_at(next: Next, off: usize) -> Option<Net> {
    match next {
        Next::Ipv4 => Some(Net::V4(off)),
        Next::Ipv6 => Some(Net::V6(off)),
        _ => None,
    }
}

/// Walks the Ethernet frame starting at `off`. [`Stop::NoFrame`] when not
/// even the Ethernet header can be read.
pub(crate) fn ethernet(w: &Window, off: usize) -> Result<Link, Stop> {
    let eth = w
        .from(off)
        .and_then(|s| Ethernet2HeaderSlice::from_slice(s).ok())
        .ok_or_else(|| w.cut(off, "ethernet", 14, Stop::NoFrame))?;
    let mut at = off + eth.slice().len();
    let mut ethertype = eth.ether_type().0;
    w.note(off, || {
        let (src, dst) = (mac(&eth.source()), mac(&eth.destination()));
        format!(
            "ethernet {src} > {dst} type {ethertype:#06x} ({})",
            ethertype_name(ethertype)
        )
    });
    let mut tags = 0;
    while next_of(ethertype) == Next::Tag {
        if tags == w.limits.vlan_tags {
            return Err(Stop::VlanTooDeep);
        }
        let tag = w
            .from(at)
            .and_then(|s| SingleVlanHeaderSlice::from_slice(s).ok())
            .ok_or_else(|| w.cut(at, "vlan tag", 4, Stop::Malformed))?;
        ethertype = tag.ether_type().0;
        tags += 1;
        w.note(at, || {
            let tci = u16::from_be_bytes([tag.slice()[0], tag.slice()[1]]);
            let (pcp, vid, name) = (tci >> 13, tci & 0x0fff, ethertype_name(ethertype));
            format!("vlan #{tags} pcp {pcp} vid {vid} type {ethertype:#06x} ({name})")
        });
        at += tag.slice().len();
    }
    let plain = |carries| Link {
        carries,
        encap: Encap::Ethernet,
    };
    Ok(match next_of(ethertype) {
        Next::Mpls => mpls(w, at)?,
        Next::PppoeSession => pppoe(w, at)?,
        Next::Other(kind) => {
            w.note(at, || format!("payload ({} bytes, not IP)", w.left(at)));
            plain(Carries::NotIp(kind))
        }
        n => plain(ip_at(n, at).map_or(Carries::NotIp(NonIpKind::Other), Carries::Ip)),
    })
}

/// RFC 3032 label stack entries (label 20 bits, TC 3, S 1, TTL 8) until
/// the one with S set.
fn mpls(w: &Window, start: usize) -> Result<Link, Stop> {
    const ENTRY: usize = 4;
    const BOTTOM_OF_STACK: u32 = 1 << 8;
    for n in 0..w.limits.mpls_labels {
        let at = start + n * ENTRY;
        let entry = w
            .take(at, ENTRY)
            .ok_or_else(|| w.cut(at, "mpls label", ENTRY, Stop::Malformed))?;
        let word = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let bottom = word & BOTTOM_OF_STACK != 0;
        w.note(at, || {
            format!("mpls #{} label {} bottom {bottom}", n + 1, word >> 12)
        });
        if !bottom {
            continue;
        }
        let payload = at + ENTRY;
        let nibble = w.byte(payload).ok_or(Stop::Malformed)? >> 4;
        let next = MPLS_PAYLOADS
            .iter()
            .find(|(v, _)| *v == nibble)
            .map(|(_, n)| *n);
        return Ok(match next.and_then(|n| ip_at(n, payload)) {
            Some(net) => Link {
                carries: Carries::Ip(net),
                encap: Encap::Mpls,
            },
            None => Link {
                carries: Carries::NotIp(NonIpKind::Mpls),
                encap: Encap::Ethernet,
            },
        });
    }
    Err(Stop::MplsTooDeep)
}

/// RFC 2516 session header (ver/type, code, session id, length), then the
/// PPP protocol field: one byte when its first byte is odd (RFC 1661 6.5
/// protocol-field compression), else two.
fn pppoe(w: &Window, start: usize) -> Result<Link, Stop> {
    let head = w
        .take(start, PPPOE_LEN + 1)
        .ok_or_else(|| w.cut(start, "pppoe", PPPOE_LEN + 1, Stop::Malformed))?;
    w.note(start, || {
        let session = u16::from_be_bytes([head[2], head[3]]);
        format!(
            "pppoe ver/type {:#04x} code {} session {session}",
            head[0], head[1]
        )
    });
    if head[0] != PPPOE_SESSION_VER_TYPE || head[1] != 0 {
        return Err(Stop::Malformed);
    }
    let field_len = if head[PPPOE_LEN] & 1 == 1 { 1 } else { 2 };
    let field = w
        .take(start, PPPOE_LEN + field_len)
        .ok_or(Stop::Malformed)?[PPPOE_LEN..]
        .iter()
        .fold(0u16, |acc, b| (acc << 8) | u16::from(*b));
    let payload = start + PPPOE_LEN + field_len;
    let next = PPP_PROTOCOLS
        .iter()
        .find(|(p, _)| *p == field)
        .map(|(_, n)| *n);
    Ok(match next.and_then(|n| ip_at(n, payload)) {
        Some(net) => Link {
            carries: Carries::Ip(net),
            encap: Encap::Pppoe,
        },
        None => Link {
            carries: Carries::NotIp(NonIpKind::Pppoe),
            encap: Encap::Ethernet,
        },
    })
}
