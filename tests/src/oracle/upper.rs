//! Above IP, as one table of IANA protocol numbers: which carry ports in
//! their first four bytes (TCP RFC 9293, UDP RFC 768, DCCP RFC 4340 5.1,
//! SCTP RFC 9260), which carry a type and code (ICMP RFC 792, ICMPv6 RFC
//! 4443), which carry another IP packet (IPIP RFC 2003, IPv6 RFC 2473, GRE
//! RFC 2784/2890); and the UDP tunnels on the policy's tunnel ports
//! (VXLAN RFC 7348, Geneve RFC 8926, VXLAN-GPE draft-ietf-nvo3-vxlan-gpe).
//! Only the bytes a decision needs are read: etherparse's TCP/UDP/ICMP
//! slices want whole headers, which the datapath never requires.

use envfence::policy::reference::L4Seen;
use envfence::policy::{TunnelKind, Tunnels};

use super::describe::{ethertype_name, proto_name};
use super::window::Window;
use super::{Inner, Layer, Net};

/// What an upper-layer protocol gives the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upper {
    /// Source and destination port, 16 bits each, first.
    Ports,
    /// ICMP type and code, a byte each, first.
    TypeCode,
    /// Another IP packet right here.
    Encapsulates(u8),
    /// A GRE header, then what its protocol type says.
    Gre,
}

const UPPER: [(u8, Upper); 9] = [
    (6, Upper::Ports),   // TCP
    (17, Upper::Ports),  // UDP
    (33, Upper::Ports),  // DCCP
    (132, Upper::Ports), // SCTP
    (1, Upper::TypeCode),
    (58, Upper::TypeCode),
    (4, Upper::Encapsulates(4)),  // IPv4 in IP
    (41, Upper::Encapsulates(6)), // IPv6 in IP
    (47, Upper::Gre),
];

const UDP: u8 = 17;
const UDP_HEADER: usize = 8;
/// Every UDP tunnel header here is 8 bytes before its options / payload.
const TUNNEL_HEADER: usize = 8;

fn upper(proto: u8) -> Option<Upper> {
    UPPER.iter().find(|(p, _)| *p == proto).map(|(_, u)| *u)
}

/// EtherType-named payloads of GRE and Geneve.
const ETHERTYPE_PAYLOADS: [(u16, Payload); 3] = [
    (0x0800, Payload::Ip4),
    (0x86dd, Payload::Ip6),
    (0x6558, Payload::Ethernet), // transparent Ethernet bridging
];

/// VXLAN-GPE next protocols.
const GPE_PAYLOADS: [(u8, Payload); 3] =
    [(1, Payload::Ip4), (2, Payload::Ip6), (3, Payload::Ethernet)];

/// GPE flags: the P bit (next protocol present).
const GPE_P: u8 = 0x04;

/// GRE flag bits (RFC 2784 2.; RFC 2890 keys and sequence numbers; the
/// routing bit and version of RFC 1701/2637).
const GRE_CHECKSUM: u16 = 0x8000;
const GRE_ROUTING: u16 = 0x4000;
const GRE_KEY: u16 = 0x2000;
const GRE_SEQUENCE: u16 = 0x1000;
const GRE_VERSION: u16 = 0x0007;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    Ip4,
    Ip6,
    Ethernet,
}

fn inner_at(p: Payload, off: usize) -> Inner {
    match p {
        Payload::Ip4 => Inner::Ip(Net::V4(off)),
        Payload::Ip6 => Inner::Ip(Net::V6(off)),
        Payload::Ethernet => Inner::Ethernet(off),
    }
}

fn by_ethertype(t: u16) -> Option<Payload> {
    ETHERTYPE_PAYLOADS
        .iter()
        .find(|(e, _)| *e == t)
        .map(|(_, p)| *p)
}

/// A layer whose upper header is not in this packet (a non-first
/// fragment): ports unknown for protocols that have them, or that carry a
/// tunnel; nothing for the rest.
pub(crate) fn not_here(layer: &mut Layer) {
    layer.fragment = true;
    layer.l4 = match upper(layer.proto) {
        Some(Upper::Ports | Upper::Encapsulates(_) | Upper::Gre) => L4Seen::NoPorts,
        _ => L4Seen::Other,
    };
}

/// Reads the upper layer at `off`; `len` is what the IP length leaves it.
pub(crate) fn read(w: &Window, off: usize, len: usize, layer: &mut Layer, tunnels: &Tunnels) {
    layer.l4 = L4Seen::Other;
    let name = proto_name(layer.proto);
    match upper(layer.proto) {
        Some(Upper::Ports) => {
            let Some(ports) = w.take(off, 4).filter(|_| len >= 4) else {
                w.cut(off, name, 4, super::Stop::Malformed);
                layer.l4 = L4Seen::NoPorts;
                return;
            };
            layer.sport = u16::from_be_bytes([ports[0], ports[1]]);
            layer.dport = u16::from_be_bytes([ports[2], ports[3]]);
            layer.l4 = L4Seen::Ports;
            w.note(off, || {
                let udp_len = w.take(off + 4, 2).filter(|_| layer.proto == UDP);
                let udp_len = udp_len.map_or(String::new(), |l| {
                    format!(" len {}", u16::from_be_bytes([l[0], l[1]]))
                });
                format!("{name} {} > {}{udp_len}", layer.sport, layer.dport)
            });
            if layer.proto == UDP {
                if let Some(kind) = tunnels.kind(layer.dport) {
                    layer.inner = udp_tunnel(w, off + UDP_HEADER, kind);
                }
            }
        }
        Some(Upper::TypeCode) => {
            if let Some(tc) = w.take(off, 2).filter(|_| len >= 2) {
                layer.sport = u16::from(tc[0]);
                layer.dport = u16::from(tc[1]);
                w.note(off, || format!("{name} type {} code {}", tc[0], tc[1]));
            }
        }
        Some(Upper::Encapsulates(4)) => {
            w.note(off, || "ipip: inner ipv4".into());
            layer.inner = Some(Inner::Ip(Net::V4(off)));
        }
        Some(Upper::Encapsulates(_)) => {
            w.note(off, || "ipv6-in-ip: inner ipv6".into());
            layer.inner = Some(Inner::Ip(Net::V6(off)));
        }
        Some(Upper::Gre) => layer.inner = gre(w, off),
        None => w.note(off, || {
            format!("{} ({name}) payload, {len} bytes", layer.proto)
        }),
    }
}

/// A GRE version-0 header without routing: 4 bytes, plus 4 for each of
/// checksum, key and sequence number. Anything else is not decapsulated.
fn gre(w: &Window, off: usize) -> Option<Inner> {
    let h = w.take(off, 4)?;
    let (flags, protocol) = (
        u16::from_be_bytes([h[0], h[1]]),
        u16::from_be_bytes([h[2], h[3]]),
    );
    let optional = [GRE_CHECKSUM, GRE_KEY, GRE_SEQUENCE]
        .iter()
        .filter(|bit| flags & **bit != 0)
        .count();
    w.note(off, || {
        let bits = [
            (GRE_CHECKSUM, 'C'),
            (GRE_ROUTING, 'R'),
            (GRE_KEY, 'K'),
            (GRE_SEQUENCE, 'S'),
        ];
        let set: String = bits
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, c)| c)
            .collect();
        let (version, name) = (flags & GRE_VERSION, ethertype_name(protocol));
        let len = 4 + 4 * optional;
        format!("gre flags [{set}] version {version} type {protocol:#06x} ({name}) header {len} B")
    });
    if flags & (GRE_ROUTING | GRE_VERSION) != 0 {
        return None;
    }
    Some(inner_at(by_ethertype(protocol)?, off + 4 + 4 * optional))
}

/// What the tunnel header at `header` (right after UDP) carries: `None`
/// when it names nothing envfence decapsulates (judged on the outer).
fn udp_tunnel(w: &Window, header: usize, kind: TunnelKind) -> Option<Inner> {
    let payload = header + TUNNEL_HEADER;
    w.note(header, || match (kind, w.take(header, TUNNEL_HEADER)) {
        (_, None) => format!("{kind:?}: TRUNCATED"),
        (TunnelKind::Vxlan, Some(h)) => {
            let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
            format!("vxlan flags {:#04x} vni {vni}", h[0])
        }
        (TunnelKind::Geneve, Some(h)) => {
            let t = u16::from_be_bytes([h[2], h[3]]);
            let (version, options) = (h[0] >> 6, usize::from(h[0] & 0x3f) * 4);
            let name = ethertype_name(t);
            format!("geneve version {version} options {options} B type {t:#06x} ({name})")
        }
        (TunnelKind::VxlanGpe, Some(h)) => {
            format!("vxlan-gpe flags {:#04x} next protocol {}", h[0], h[3])
        }
    });
    let Some(g) = w.take(header, 4) else {
        // VXLAN reads nothing of its header; the others cannot tell.
        return Some(match kind {
            TunnelKind::Vxlan => Inner::Ethernet(payload),
            _ => Inner::Unreadable,
        });
    };
    match kind {
        TunnelKind::Vxlan => Some(Inner::Ethernet(payload)),
        TunnelKind::Geneve => {
            let options = usize::from(g[0] & 0x3f) * 4;
            by_ethertype(u16::from_be_bytes([g[2], g[3]])).map(|p| inner_at(p, payload + options))
        }
        TunnelKind::VxlanGpe if g[0] & GPE_P == 0 => None,
        TunnelKind::VxlanGpe => GPE_PAYLOADS
            .iter()
            .find(|(n, _)| *n == g[3])
            .map(|(_, p)| inner_at(*p, payload)),
    }
}
