//! Packet generator for the differential suite: every header shape the
//! datapath has to decide on, with addresses drawn from the example policy's
//! environments and from outside them.
//!
//! A packet is first described as a [`FrameSpec`] (a tree: Ethernet, VLAN
//! tags, IPv4 / IPv6 with options and extension headers, L4, tunnels with
//! their own inner packets), then serialized with [`FrameSpec::build`],
//! which also records every header boundary. [`Gen`] draws random specs and
//! turns some of the frames into truncations (at a header boundary),
//! byte-level mutations of valid frames and pure random bytes.
//!
//! The bytes are written by [`crate::packet`] (the one packet builder);
//! this module only describes and draws. Everything is deterministic for
//! a seed ([`crate::rng`]), so a seed printed by a failing run reproduces
//! it.
//!
//! [`diff`] is the differential engine (kernel vs reference) used by
//! `tests/tests/differential.rs` and the `envfence-fuzz` binary; [`pcap`]
//! reads and writes the capture files of `tests/corpus/`.

pub mod catalog;
pub mod diff;
pub mod pcap;
pub mod routes;
pub mod wire;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::fixture::{env_net, pod_v4, pod_v6};
use crate::lab::Family;
pub use crate::packet::{
    ethertype, ip_checksum, ipproto, ppp, LenField, GENEVE_PORT, VXLAN_GPE_PORT, VXLAN_LINUX_PORT,
    VXLAN_PORT,
};
use crate::packet::{tcp_flags, Packet};
pub use crate::packet::{Ipv4, Ipv6};
pub use crate::rng::{seeded, Draw, Rng};

/// Largest frame the generator produces (an Ethernet MTU frame).
pub const MAX_FRAME: usize = 1500;
/// Smallest frame BPF_PROG_TEST_RUN accepts at all.
pub const MIN_FRAME: usize = 14;

// ---------------------------------------------------------------------------
// Packet descriptions

/// An Ethernet frame.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags, outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    pub l3: L3Spec,
    /// Zero-pad the frame to this length (Ethernet's 60-byte minimum).
    pub pad_to: usize,
}

/// What the Ethernet frame carries.
#[derive(Clone, Debug)]
pub enum L3Spec {
    V4(Box<Ip4Spec>),
    V6(Box<Ip6Spec>),
    /// An MPLS label stack (EtherType 0x8847, or 0x8848 multicast).
    Mpls(Box<MplsSpec>),
    /// A PPPoE frame (0x8864 session, 0x8863 discovery).
    Pppoe(Box<PppoeSpec>),
    /// Any other EtherType with raw bytes (ARP, LLDP, an 802.3 length ...).
    Other {
        ethertype: u16,
        bytes: Vec<u8>,
    },
}

/// An MPLS label stack and what it carries (no type field: the payload's
/// first nibble tells IPv4 from IPv6).
#[derive(Clone, Debug)]
pub struct MplsSpec {
    /// EtherType 0x8848 instead of 0x8847.
    pub multicast: bool,
    /// The 20-bit labels, outermost first.
    pub labels: Vec<u32>,
    /// Set the bottom-of-stack bit on the last label (false: on none).
    pub bos: bool,
    pub payload: Inner,
}

/// A PPPoE frame: version/type, code, session id, the PPP protocol field
/// (1 or 2 bytes, as written) and what follows; the length field covers
/// the protocol and the payload.
#[derive(Clone, Debug)]
pub struct PppoeSpec {
    /// EtherType 0x8863 (discovery) instead of 0x8864 (session).
    pub discovery: bool,
    pub ver_type: u8,
    pub code: u8,
    pub session: u16,
    pub protocol: Vec<u8>,
    pub payload: Inner,
}

impl PppoeSpec {
    /// A session frame carrying `payload` as PPP protocol `protocol`.
    pub fn session(protocol: u16, payload: Inner) -> PppoeSpec {
        PppoeSpec {
            discovery: false,
            ver_type: 0x11,
            code: 0,
            session: 0x0007,
            protocol: protocol.to_be_bytes().to_vec(),
            payload,
        }
    }
}

/// An IPv4 packet: its header (the protocol field is the payload's) and
/// what it carries.
#[derive(Clone, Debug)]
pub struct Ip4Spec {
    pub hdr: Ipv4,
    pub payload: L4Spec,
    /// Keep only this many bytes of the payload (the length fields follow:
    /// a consistent truncation of the L4 header or what is tunnelled).
    pub cut: Option<usize>,
}

/// An IPv6 packet: its fixed header (the next header field is the first
/// extension header's or the payload's), extension headers and payload.
#[derive(Clone, Debug)]
pub struct Ip6Spec {
    pub hdr: Ipv6,
    pub ext: Vec<ExtSpec>,
    pub payload: L4Spec,
    /// As [`Ip4Spec::cut`], applied to everything after the fixed header.
    pub cut: Option<usize>,
}

/// One IPv6 extension header.
#[derive(Clone, Debug)]
pub struct ExtSpec {
    /// Its protocol number (hop-by-hop, routing, fragment, dest opts, AH,
    /// ESP, mobility, HIP, shim6).
    pub kind: u8,
    /// The header's length field (8-byte units past the first 8, AH: 4-byte
    /// units minus 2); ignored for the fragment header and ESP.
    pub units: u8,
    /// Fragment header: offset (in 8-byte units) << 3 | M flag.
    pub frag: u16,
    pub fill: u8,
    /// What follows the header's first two bytes, instead of what `kind`,
    /// `units` and `fill` make (the length field follows it).
    pub body: Option<Vec<u8>>,
}

impl ExtSpec {
    /// A header of `kind` with `units` and `fill` (see the fields).
    pub fn new(kind: u8, units: u8, frag: u16, fill: u8) -> ExtSpec {
        ExtSpec {
            kind,
            units,
            frag,
            fill,
            body: None,
        }
    }

    /// A routing header of type `rtype` with `left` segments left and
    /// `addrs` (type 0: the hops, the last one final; type 4, segment
    /// routing: segment list\[0\] first, the final one, and the last entry
    /// field set to `addrs.len() - 1`).
    pub fn routing(rtype: u8, left: u8, addrs: &[[u8; 16]]) -> ExtSpec {
        let mut body = vec![rtype, left];
        let last = u8::try_from(addrs.len().saturating_sub(1)).unwrap_or(u8::MAX);
        body.extend(if rtype == 4 { [last, 0, 0, 0] } else { [0; 4] });
        for a in addrs {
            body.extend(a);
        }
        ExtSpec {
            body: Some(body),
            ..ExtSpec::new(ipproto::ROUTING, 0, 0, 0)
        }
    }

    /// A hop-by-hop header opening with an RFC 2675 Jumbo Payload option
    /// of `len` (the 4n+2 alignment puts it right after the two header
    /// bytes, where Linux writes it).
    pub fn jumbo(len: u32) -> ExtSpec {
        let mut body = vec![0xc2, 4];
        body.extend(len.to_be_bytes());
        ExtSpec {
            body: Some(body),
            ..ExtSpec::new(ipproto::HOPOPTS, 0, 0, 0)
        }
    }
}

/// What an IP packet carries.
#[derive(Clone, Debug)]
pub enum L4Spec {
    Tcp {
        sport: u16,
        dport: u16,
        data: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
        body: UdpBody,
        /// The UDP length field.
        len: LenField,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// DCCP (RFC 4340): a generic header with 48-bit sequence numbers.
    Dccp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        v6: bool,
        ty: u8,
        code: u8,
    },
    /// IPv4 inside (protocol 4).
    Ip4(Box<Ip4Spec>),
    /// IPv6 inside (protocol 41).
    Ip6(Box<Ip6Spec>),
    Gre(Box<GreSpec>),
    /// Any protocol number with raw bytes.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

/// A UDP payload.
#[derive(Clone, Debug)]
pub enum UdpBody {
    Data(Vec<u8>),
    /// VXLAN (flags, VNI) and an Ethernet frame.
    Vxlan {
        flags: u8,
        vni: u32,
        inner: Inner,
    },
    /// VXLAN-GPE (RFC draft): flags (0x0c: I and P), next protocol (1
    /// IPv4, 2 IPv6, 3 Ethernet, 4 NSH) and what follows.
    Gpe {
        flags: u8,
        next: u8,
        inner: Inner,
    },
    /// Geneve with `opt_words` 4-byte words of options, protocol type and
    /// what follows.
    Geneve {
        opt_words: u8,
        proto: u16,
        inner: Inner,
    },
}

/// GRE: the first 16 bits (C R K S, recursion, flags, version), the
/// protocol type, and what follows the optional fields.
#[derive(Clone, Debug)]
pub struct GreSpec {
    pub flags: u16,
    pub proto: u16,
    pub inner: Inner,
}

/// What a tunnel carries.
#[derive(Clone, Debug)]
pub enum Inner {
    Eth(Box<FrameSpec>),
    Ip4(Box<Ip4Spec>),
    Ip6(Box<Ip6Spec>),
    Raw(Vec<u8>),
}

/// `From` for the boxed variants, so that a description nests with
/// `.into()`.
macro_rules! boxed_from {
    ($($from:ty => $to:ident::$var:ident),* $(,)?) => {$(
        impl From<$from> for $to {
            fn from(x: $from) -> $to {
                $to::$var(Box::new(x))
            }
        }
    )*};
}

boxed_from!(
    Ip4Spec => L3Spec::V4,
    Ip6Spec => L3Spec::V6,
    Ip4Spec => L4Spec::Ip4,
    Ip6Spec => L4Spec::Ip6,
    Ip4Spec => Inner::Ip4,
    Ip6Spec => Inner::Ip6,
    FrameSpec => Inner::Eth,
    MplsSpec => L3Spec::Mpls,
    PppoeSpec => L3Spec::Pppoe,
);

impl FrameSpec {
    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        self.packet().into_bytes()
    }

    /// The frame's bytes and the offset of every header boundary in it
    /// (where truncations are most interesting).
    pub fn build_marked(&self) -> (Vec<u8>, Vec<usize>) {
        let p = self.packet();
        let marks = p.boundaries();
        (p.into_bytes(), marks)
    }

    /// The frame as a [`Packet`]: its bytes and header boundaries.
    pub fn packet(&self) -> Packet {
        let (ethertype, body) = match &self.l3 {
            L3Spec::V4(ip) => (ethertype::IPV4, ip.packet()),
            L3Spec::V6(ip) => (ethertype::IPV6, ip.packet()),
            L3Spec::Mpls(m) => m.packet(),
            L3Spec::Pppoe(p) => p.packet(),
            L3Spec::Other { ethertype, bytes } => (*ethertype, Packet::data(bytes)),
        };
        let mut p = body.eth_macs(self.dst_mac, self.src_mac, &self.vlans, ethertype);
        p.pad_to(self.pad_to);
        p
    }
}

impl MplsSpec {
    /// The EtherType and the label stack with its payload.
    fn packet(&self) -> (u16, Packet) {
        let mut p = self.payload.packet();
        let n = self.labels.len();
        for (i, label) in self.labels.iter().enumerate().rev() {
            p = p.mpls(*label, self.bos && i + 1 == n);
        }
        let et = if self.multicast {
            ethertype::MPLS_MULTICAST
        } else {
            ethertype::MPLS
        };
        (et, p)
    }
}

impl PppoeSpec {
    /// The EtherType and the PPPoE header with its payload.
    fn packet(&self) -> (u16, Packet) {
        let p = self.payload.packet().push(&self.protocol).pppoe(
            self.ver_type,
            self.code,
            self.session,
        );
        let et = if self.discovery {
            ethertype::PPPOE_DISCOVERY
        } else {
            ethertype::PPPOE_SESSION
        };
        (et, p)
    }
}

impl Ip4Spec {
    /// The packet (IP header included) as a [`Packet`].
    pub fn packet(&self) -> Packet {
        let mut body = self.payload.packet();
        if let Some(n) = self.cut {
            body.cut(n);
        }
        body.ipv4(&Ipv4 {
            proto: self.payload.proto(),
            ..self.hdr.clone()
        })
    }
}

impl Ip6Spec {
    /// The packet (IP header included) as a [`Packet`].
    pub fn packet(&self) -> Packet {
        let mut p = self.payload.packet();
        let mut next = self.payload.proto();
        for e in self.ext.iter().rev() {
            p = p.push(&e.bytes(next));
            next = e.kind;
        }
        if let Some(n) = self.cut {
            p.cut(n);
        }
        p.ipv6(&Ipv6 {
            next,
            ..self.hdr.clone()
        })
    }
}

impl ExtSpec {
    /// The header's bytes, with `next` as its next header.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        if let Some(body) = &self.body {
            let mut h = vec![next, 0];
            h.extend(body);
            if self.kind == ipproto::AH {
                while !h.len().is_multiple_of(4) {
                    h.push(0);
                }
                h[1] = u8::try_from(h.len() / 4).unwrap_or(2).saturating_sub(2);
            } else {
                // PadN (or Pad1) to a multiple of 8.
                let pad = (8 - h.len() % 8) % 8;
                match pad {
                    0 => {}
                    1 => h.push(0),
                    n => {
                        h.extend([1, (n - 2) as u8]);
                        h.extend(std::iter::repeat_n(0, n - 2));
                    }
                }
                h[1] = u8::try_from(h.len() / 8 - 1).unwrap_or(u8::MAX);
            }
            return h;
        }
        match self.kind {
            ipproto::FRAGMENT => {
                let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
                h[2..4].copy_from_slice(&self.frag.to_be_bytes());
                h[4..8].copy_from_slice(&[0x12, 0x34, 0x56, self.fill]);
                h
            }
            ipproto::ESP => {
                // SPI and sequence number; what follows is "encrypted".
                vec![0, 0, 0x10, self.fill, 0, 0, 0, 1]
            }
            ipproto::AH => {
                let len = (usize::from(self.units) + 2) * 4;
                let mut h = vec![self.fill; len];
                h[0] = next;
                h[1] = self.units;
                h
            }
            ipproto::ROUTING => {
                // Routing type 0, 2, 4 (segment routing) or 1, segments
                // left 0 to 3, and addresses of the example policy's
                // environments (the final destination is judged too).
                let len = (usize::from(self.units) + 1) * 8;
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = self.units;
                h[2] = [0u8, 2, 4, 1][usize::from(self.fill % 4)];
                h[3] = (self.fill / 4) % 4;
                h[4] = (self.units / 2).saturating_sub(1);
                let n = (len - 8) / 16;
                for (i, chunk) in h[8..].chunks_mut(16).enumerate() {
                    // The final segment (first of an SRH, last of type 0)
                    // is often in production, where test must not go.
                    let last = i == 0 || i + 1 == n;
                    let env = if last && self.fill & 1 == 0 {
                        Env::Production
                    } else {
                        Env::ALL[(usize::from(self.fill) + i) % Env::ALL.len()]
                    };
                    let a = v6_pool(env, (i % 3) as u8);
                    chunk.copy_from_slice(&a[..chunk.len()]);
                }
                h
            }
            _ => {
                let len = (usize::from(self.units) + 1) * 8;
                // PadN options so the contents look real.
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = self.units;
                if len > 2 {
                    h[2] = 1;
                    h[3] = (len - 4) as u8;
                    for b in h.iter_mut().skip(4) {
                        *b = self.fill;
                    }
                }
                h
            }
        }
    }
}

impl L4Spec {
    /// The IP protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            L4Spec::Tcp { .. } => ipproto::TCP,
            L4Spec::Udp { .. } => ipproto::UDP,
            L4Spec::Sctp { .. } => ipproto::SCTP,
            L4Spec::Dccp { .. } => ipproto::DCCP,
            L4Spec::Icmp { v6: false, .. } => ipproto::ICMP,
            L4Spec::Icmp { v6: true, .. } => ipproto::ICMPV6,
            L4Spec::Ip4(_) => ipproto::IPIP,
            L4Spec::Ip6(_) => ipproto::IPV6,
            L4Spec::Gre(_) => ipproto::GRE,
            L4Spec::Raw { proto, .. } => *proto,
        }
    }

    /// What the IP header carries, as a [`Packet`].
    pub fn packet(&self) -> Packet {
        match self {
            L4Spec::Tcp { sport, dport, data } => {
                Packet::data(&vec![0x61; *data]).tcp(*sport, *dport, tcp_flags::SYN)
            }
            L4Spec::Udp {
                sport,
                dport,
                body,
                len,
            } => body.packet().udp_len(*sport, *dport, *len),
            // An INIT chunk.
            L4Spec::Sctp { sport, dport } => Packet::data(&[
                1, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1,
            ])
            .sctp(*sport, *dport),
            // A request's service code.
            L4Spec::Dccp { sport, dport } => Packet::data(&[0, 0, 0, 0x35]).dccp(*sport, *dport),
            L4Spec::Icmp { ty, code, .. } => Packet::icmp(*ty, *code, [0x12, 0x34, 0, 1], b"abcd"),
            L4Spec::Ip4(ip) => ip.packet(),
            L4Spec::Ip6(ip) => ip.packet(),
            L4Spec::Gre(g) => g.packet(),
            L4Spec::Raw { bytes, .. } => Packet::data(bytes),
        }
    }
}

impl UdpBody {
    /// The UDP payload (tunnel header included) as a [`Packet`].
    pub fn packet(&self) -> Packet {
        match self {
            UdpBody::Data(d) => Packet::data(d),
            UdpBody::Vxlan { flags, vni, inner } => inner.packet().vxlan(*flags, *vni),
            UdpBody::Gpe { flags, next, inner } => inner.packet().gpe(*flags, *next),
            UdpBody::Geneve {
                opt_words,
                proto,
                inner,
            } => inner.packet().geneve(*opt_words, *proto),
        }
    }
}

impl GreSpec {
    /// The GRE header and what it carries, as a [`Packet`].
    pub fn packet(&self) -> Packet {
        self.inner.packet().gre(self.flags, self.proto)
    }
}

impl Inner {
    /// What the tunnel carries, as a [`Packet`].
    pub fn packet(&self) -> Packet {
        match self {
            Inner::Eth(f) => f.packet(),
            Inner::Ip4(ip) => ip.packet(),
            Inner::Ip6(ip) => ip.packet(),
            Inner::Raw(b) => Packet::data(b),
        }
    }
}

// ---------------------------------------------------------------------------
// Addresses

/// The example policy's environments (agent/policy/example.yaml), as the
/// generator draws from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    Production,
    Staging,
    Test,
    Dev,
    Ops,
    /// In no environment.
    World,
}

impl Env {
    pub const ALL: [Env; 6] = [
        Env::Production,
        Env::Staging,
        Env::Test,
        Env::Dev,
        Env::Ops,
        Env::World,
    ];

    /// Its name in the example policy (None: `World`).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Env::Production => Some("production"),
            Env::Staging => Some("staging"),
            Env::Test => Some("test"),
            Env::Dev => Some("dev"),
            Env::Ops => Some("ops"),
            Env::World => None,
        }
    }

    /// Its networks in the example policy ([`env_net`]; None: `World`).
    fn nets(self) -> Option<(Ipv4Net, Ipv6Net)> {
        static NETS: OnceLock<Vec<(Ipv4Net, Ipv6Net)>> = OnceLock::new();
        let all = NETS.get_or_init(|| {
            Env::ALL
                .iter()
                .filter_map(|e| e.name())
                .map(
                    |name| match (env_net(name, Family::V4), env_net(name, Family::V6)) {
                        (IpNet::V4(a), IpNet::V6(b)) => (a, b),
                        other => unreachable!("env_net keeps the family: {other:?}"),
                    },
                )
                .collect()
        });
        all.get(self as usize).copied()
    }

    fn net4(self) -> Option<Ipv4Net> {
        self.nets().map(|n| n.0)
    }

    fn net6(self) -> Option<Ipv6Net> {
        self.nets().map(|n| n.1)
    }
}

/// The address of `net`'s `n`-th neighbour of its size (0: `net` itself)
/// whose host bits are `host`'s.
fn beside4(net: Ipv4Net, n: i64, host: u32) -> [u8; 4] {
    let size = i64::from(!u32::from(net.netmask())) + 1;
    let start = (i64::from(u32::from(net.network())) + n * size) as u32;
    (start | (host & u32::from(net.hostmask()))).to_be_bytes()
}

/// [`beside4`] of IPv6 (`host`: the bytes whose host bits are taken).
fn beside6(net: Ipv6Net, n: u128, host: [u8; 16]) -> [u8; 16] {
    let size = !u128::from(net.netmask()) + 1;
    let start = u128::from(net.network()) + n * size;
    (start | (u128::from_be_bytes(host) & u128::from(net.hostmask()))).to_be_bytes()
}

/// An IPv4 address of `env` (World: one of several near misses and
/// unrelated addresses).
pub fn v4_in(rng: &mut Rng, env: Env) -> [u8; 4] {
    let (a, b) = (rng.u8(), rng.u8());
    let ab = u32::from(a) << 8 | u32::from(b);
    if let Some(net) = env.net4() {
        return beside4(net, 0, ab);
    }
    let net = |e: Env| {
        e.net4()
            .unwrap_or_else(|| unreachable!("{e:?} has a network"))
    };
    match rng.below(9) {
        // A link-local multicast group (mDNS).
        8 => [224, 0, 0, 251],
        // Just past ops, production and test.
        0 => beside4(net(Env::Ops), 1 + i64::from(rng.below(255) as u8), ab),
        1 => beside4(net(Env::Production), 1, ab),
        2 => beside4(net(Env::Test), 1, ab),
        3 => [192, 0, 2, b],
        4 => [0, 0, 0, 0],
        5 => [255, 255, 255, 255],
        // Just before production.
        6 => beside4(net(Env::Production), -1, u32::MAX),
        _ => {
            let x = rng.u32();
            // Anything outside 10/8, which holds every environment.
            let x = if x >> 24 == 10 { x ^ 0x8000_0000 } else { x };
            Ipv4Addr::from(x).octets()
        }
    }
}

/// An IPv6 address of `env` (sometimes IPv4-mapped, which the datapath
/// judges as the IPv4 address; World: near misses, IPv4-compatible and
/// NAT64 forms that must *not* be judged as IPv4, and random ones).
pub fn v6_in(rng: &mut Rng, env: Env) -> [u8; 16] {
    if env != Env::World && rng.chance(15) {
        return mapped(v4_in(rng, env));
    }
    let mut a = [0u8; 16];
    for b in a.iter_mut().skip(4) {
        *b = rng.u8();
    }
    if let Some(net) = env.net6() {
        return beside6(net, 0, a);
    }
    let net = |e: Env| {
        e.net6()
            .unwrap_or_else(|| unreachable!("{e:?} has a network"))
    };
    let env = rng.pick(&Env::ALL);
    let v4 = v4_in(rng, env);
    let with_v4 = |prefix: &[u8]| {
        let mut x = [0u8; 16];
        x[..prefix.len()].copy_from_slice(prefix);
        x[12..].copy_from_slice(&v4);
        x
    };
    match rng.below(11) {
        // Just past ops, production and test.
        0 => beside6(net(Env::Ops), 1, a),
        1 => beside6(net(Env::Production), 1, a),
        2 => beside6(net(Env::Test), 1, a),
        // Link-local (neighbour discovery's sources).
        9 => {
            a[..8].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
            a
        }
        10 => {
            // All-nodes or a solicited-node group.
            let mut x = [0u8; 16];
            x[..2].copy_from_slice(&[0xff, 0x02]);
            if rng.chance(50) {
                x[15] = 1;
            } else {
                x[11] = 1;
                x[12] = 0xff;
                x[13..].copy_from_slice(&a[13..]);
            }
            x
        }
        // ::ffff:0:a.b.c.d (SIIT), not mapped.
        3 => with_v4(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]),
        // ::a.b.c.d (IPv4-compatible), not mapped.
        4 => with_v4(&[]),
        // 64:ff9b::a.b.c.d (NAT64).
        5 => with_v4(&[0, 0x64, 0xff, 0x9b]),
        6 => {
            // ::fffe:a.b.c.d: one bit off mapped.
            let mut x = mapped(v4);
            x[11] = 0xfe;
            x
        }
        7 => {
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a
        }
        _ => {
            for b in a.iter_mut().take(4) {
                *b = rng.u8();
            }
            a
        }
    }
}

/// The `i`-th of a few fixed IPv4 addresses of `env`: flows repeat, so the
/// datapath's per-flow verdict cache is hit by frames of other shapes.
/// They are pods 1 to 3 of the example lab ([`pod_v4`]); ops, whose
/// network holds one pod, has its hosts 2 to 4.
pub fn v4_pool(env: Env, i: u8) -> [u8; 4] {
    let pool = pools()[env as usize].0.get(usize::from(i)).copied();
    pool.unwrap_or_else(|| pool4(env, i))
}

/// The `i`-th of a few fixed IPv6 addresses of `env` (see [`v4_pool`]):
/// host 2 + `i` of pod 1's network (ops: pod 0's).
pub fn v6_pool(env: Env, i: u8) -> [u8; 16] {
    let pool = pools()[env as usize].1.get(usize::from(i)).copied();
    pool.unwrap_or_else(|| pool6(env, i))
}

/// The first three of [`v4_pool`] and [`v6_pool`] of each environment.
type Pools = [([[u8; 4]; 3], [[u8; 16]; 3]); 6];

/// [`Pools`], worked out once.
fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        Env::ALL.map(|e| {
            (
                [0, 1, 2].map(|i| pool4(e, i)),
                [0, 1, 2].map(|i| pool6(e, i)),
            )
        })
    })
}

fn pool4(env: Env, i: u8) -> [u8; 4] {
    match env.name() {
        None => [192, 0, 2, 1 + i],
        Some(name) if env == Env::Ops => (u32::from(pod_v4(name, 0)) + u32::from(i)).to_be_bytes(),
        Some(name) => pod_v4(name, i + 1).octets(),
    }
}

fn pool6(env: Env, i: u8) -> [u8; 16] {
    let pod = match env.name() {
        None => return Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2 + u16::from(i)).octets(),
        Some(name) => pod_v6(name, u8::from(env != Env::Ops)),
    };
    (u128::from(pod) + u128::from(i)).to_be_bytes()
}

/// `::ffff:a.b.c.d`.
pub fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

/// An address of `env`: half of the time one of a few fixed ones.
fn addr4(rng: &mut Rng, env: Env) -> [u8; 4] {
    if rng.chance(50) {
        let i = rng.below(3) as u8;
        v4_pool(env, i)
    } else {
        v4_in(rng, env)
    }
}

/// An IPv6 address of `env`: half of the time one of a few fixed ones
/// (sometimes the IPv4-mapped form of a fixed IPv4 address).
fn addr6(rng: &mut Rng, env: Env) -> [u8; 16] {
    if rng.chance(50) {
        let i = rng.below(3) as u8;
        if env != Env::World && rng.chance(15) {
            mapped(v4_pool(env, i))
        } else {
            v6_pool(env, i)
        }
    } else {
        v6_in(rng, env)
    }
}

/// Environments weighted toward the pair the policy cares most about.
fn draw_env(rng: &mut Rng) -> Env {
    rng.weighted(&[
        (30, Env::Test),
        (30, Env::Production),
        (8, Env::Staging),
        (8, Env::Dev),
        (8, Env::Ops),
        (16, Env::World),
    ])
}

/// A destination port that often hits the policy's port rules (53) and the
/// tunnel ports.
fn draw_port(rng: &mut Rng) -> u16 {
    let any = rng.u16();
    rng.weighted(&[
        (35, 53u16),
        (10, 80),
        (5, 443),
        (5, 8080),
        (5, VXLAN_PORT),
        (4, VXLAN_LINUX_PORT),
        (3, VXLAN_GPE_PORT),
        (5, GENEVE_PORT),
        (3, 0),
        (3, 54),
        (3, 52),
        (3, 65535),
        (23, any),
    ])
}

// ---------------------------------------------------------------------------
// The generator

/// What kind of case a generated frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A frame built from a spec (which may itself be deliberately
    /// inconsistent: wrong lengths, IHL < 5, cut headers ...).
    Built,
    /// A built frame cut at (or next to) a header boundary.
    Truncated,
    /// A built frame with bytes flipped, replaced, inserted or removed.
    Mutated,
    /// Random bytes.
    Random,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Built, Kind::Truncated, Kind::Mutated, Kind::Random];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Built => "built",
            Kind::Truncated => "truncated",
            Kind::Mutated => "mutated",
            Kind::Random => "random",
        }
    }
}

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Case {
    pub frame: Vec<u8>,
    pub kind: Kind,
    /// The skb's `gso_size` (non-zero: a GSO packet, BIG TCP).
    pub gso_size: u32,
}

/// Random packets of every shape. See the module docs.
pub struct Gen {
    pub rng: Rng,
}

/// Deepest tunnel nesting generated (3 = a tunnel in a tunnel in a tunnel).
const MAX_DEPTH: u32 = 3;

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen { rng: seeded(seed) }
    }

    /// The next case.
    pub fn case(&mut self) -> Case {
        let kind = self.rng.weighted(&[
            (55, Kind::Built),
            (15, Kind::Truncated),
            (22, Kind::Mutated),
            (8, Kind::Random),
        ]);
        let frame = match kind {
            Kind::Built => self.frame(),
            Kind::Truncated => {
                let (f, marks) = self.frame_marked();
                self.truncate(f, &marks)
            }
            Kind::Mutated => {
                let (f, marks) = self.frame_marked();
                self.mutate(f, &marks)
            }
            Kind::Random => self.random_bytes(),
        };
        // One case in ten is a GSO packet; most of those carry the zero
        // length BIG TCP writes into the outer IP header.
        let mut frame = frame;
        let gso_size = if self.rng.chance(10) { 1448 } else { 0 };
        if gso_size != 0 && self.rng.chance(60) {
            zero_outer_length(&mut frame);
        }
        Case {
            frame,
            kind,
            gso_size,
        }
    }

    /// A frame from a random spec, at most [`MAX_FRAME`] bytes.
    pub fn frame(&mut self) -> Vec<u8> {
        self.frame_marked().0
    }

    fn frame_marked(&mut self) -> (Vec<u8>, Vec<usize>) {
        loop {
            let spec = self.frame_spec(0);
            let (f, marks) = spec.build_marked();
            if f.len() <= MAX_FRAME {
                return (f, marks);
            }
        }
    }

    /// A random Ethernet frame spec; `depth` is the number of tunnels
    /// around it.
    pub fn frame_spec(&mut self, depth: u32) -> FrameSpec {
        let r = &mut self.rng;
        let tags = r.weighted(&[(55, 0usize), (18, 1), (17, 2), (7, 3), (3, 4)]);
        let vlans = (0..tags)
            .map(|_| {
                let tpid =
                    r.weighted(&[(60, ethertype::VLAN), (35, ethertype::QINQ), (5, 0x9100u16)]);
                let tci = if r.chance(20) { 0 } else { r.u16() };
                (tpid, tci)
            })
            .collect();
        let mut dst_mac = [0x02, 0, 0, 0, 0, 1];
        let mut src_mac = [0x02, 0, 0, 0, 0, 2];
        if r.chance(10) {
            dst_mac = [0xff; 6];
        } else if r.chance(10) {
            dst_mac = [0x01, 0x00, 0x5e, 0, 0, 0xfb];
        }
        src_mac[5] = r.u8();
        dst_mac[4] = r.u8() & 0x0f;
        let pad_to = if r.chance(30) { 60 } else { 0 };
        let mut l3 = self.l3(depth);
        if depth == 0 && self.rng.chance(10) {
            // Push what follows the IPv6 header to the edge of the parser's
            // window (MAX_OFFSET): a destination-options header sized so
            // the next header starts somewhere in 384..=472.
            if let L3Spec::V6(ip) = &mut l3 {
                let l3_off = 14 + 4 * tags;
                let target = self.rng.range(384, 472);
                let units = ((target - (l3_off + 40)) / 8).saturating_sub(1);
                ip.ext.insert(
                    0,
                    ExtSpec::new(ipproto::DSTOPTS, units.min(255) as u8, 0, 0),
                );
            }
        }
        FrameSpec {
            dst_mac,
            src_mac,
            vlans,
            l3,
            pad_to,
        }
    }

    fn l3(&mut self, depth: u32) -> L3Spec {
        match self
            .rng
            .weighted(&[(43, 4u8), (43, 6), (5, 1), (4, 2), (5, 0)])
        {
            4 => L3Spec::V4(Box::new(self.ip4(depth))),
            6 => L3Spec::V6(Box::new(self.ip6(depth))),
            1 => self.mpls(depth),
            2 => self.pppoe(depth),
            _ => {
                let r = &mut self.rng;
                let ethertype = r.weighted(&[
                    (40, ethertype::ARP),
                    (15, ethertype::LLDP),
                    (10, ethertype::MPLS),
                    (10, 0x0060u16),
                    (10, ethertype::TEB),
                    (15, 0x1234),
                ]);
                let n = r.range(0, 60);
                L3Spec::Other {
                    ethertype,
                    bytes: r.bytes(n),
                }
            }
        }
    }

    /// IPv4 / IPv6 / other bytes for a link layer without a type field.
    fn ip_inner(&mut self, depth: u32) -> Inner {
        match self.rng.weighted(&[(45, 4u8), (45, 6), (10, 0)]) {
            4 => Inner::Ip4(Box::new(self.ip4(depth))),
            6 => Inner::Ip6(Box::new(self.ip6(depth))),
            _ => Inner::Raw(self.rng.bytes_below(40)),
        }
    }

    /// An MPLS label stack (1 to 8 labels, bottom-of-stack usually on the
    /// last) and what it carries.
    fn mpls(&mut self, depth: u32) -> L3Spec {
        let r = &mut self.rng;
        let multicast = r.chance(20);
        let n = r.weighted(&[
            (30, 1usize),
            (20, 2),
            (10, 3),
            (5, 4),
            (5, 5),
            (15, 6),
            (10, 7),
            (5, 8),
        ]);
        let bos = !r.chance(5);
        let labels = (0..n).map(|_| r.u32() & 0xf_ffff).collect();
        let payload = self.ip_inner(depth);
        L3Spec::Mpls(Box::new(MplsSpec {
            multicast,
            labels,
            bos,
            payload,
        }))
    }

    /// A PPPoE frame: a session (IPv4, IPv6, compressed, LCP), sometimes
    /// with a bad version or code, or a discovery frame.
    fn pppoe(&mut self, depth: u32) -> L3Spec {
        let r = &mut self.rng;
        let discovery = r.chance(10);
        let ver_type = if r.chance(95) { 0x11 } else { r.u8() };
        let code = if discovery || r.chance(5) { r.u8() } else { 0 };
        let session = r.u16();
        let (protocol, want): (Vec<u8>, u8) = match r.below(6) {
            0 | 1 => (ppp::IPV4.to_be_bytes().to_vec(), 4),
            2 | 3 => (ppp::IPV6.to_be_bytes().to_vec(), 6),
            4 => (vec![0x21], 4),
            _ => (ppp::LCP.to_be_bytes().to_vec(), 0),
        };
        let payload = match want {
            4 => Inner::Ip4(Box::new(self.ip4(depth))),
            6 => Inner::Ip6(Box::new(self.ip6(depth))),
            _ => Inner::Raw(self.rng.bytes_below(20)),
        };
        L3Spec::Pppoe(Box::new(PppoeSpec {
            discovery,
            ver_type,
            code,
            session,
            protocol,
            payload,
        }))
    }

    /// A random IPv4 packet.
    pub fn ip4(&mut self, depth: u32) -> Ip4Spec {
        let r = &mut self.rng;
        let (se, de) = (draw_env(r), draw_env(r));
        let src = addr4(r, se);
        let dst = addr4(r, de);
        let options = if r.chance(15) {
            let words = r.range(1, 10);
            let mut o = Vec::with_capacity(words * 4);
            for _ in 0..words * 4 {
                let any = r.u8();
                o.push(r.weighted(&[(40, 1u8), (20, 0), (40, any)]));
            }
            o
        } else {
            Vec::new()
        };
        let (off1, off2, any) = (
            r.range(1, 0x1fff) as u16,
            r.range(1, 0x1fff) as u16,
            r.u16(),
        );
        let frag = r.weighted(&[
            (45, 0u16),
            (25, 0x4000),
            (8, 0x2000),
            (8, 0x2000 | off1),
            (8, off2),
            (3, 0x8000),
            (3, any),
        ]);
        let ihl = if r.chance(3) {
            Some(r.below(5) as u8)
        } else if r.chance(2) {
            Some(r.range(5, 15) as u8)
        } else {
            None
        };
        let version = if r.chance(2) { r.below(16) as u8 } else { 4 };
        let tot_len = self.len_field();
        let payload = self.l4(depth, false);
        let cut = self.cut();
        let id = self.rng.u16();
        let hdr = Ipv4 {
            src,
            dst,
            options,
            frag,
            ihl,
            version,
            tot_len,
            id,
            ..Ipv4::default()
        };
        Ip4Spec { hdr, payload, cut }
    }

    /// A random IPv6 packet.
    pub fn ip6(&mut self, depth: u32) -> Ip6Spec {
        let r = &mut self.rng;
        let (se, de) = (draw_env(r), draw_env(r));
        let src = addr6(r, se);
        let dst = addr6(r, de);
        let n_ext = if r.chance(45) {
            r.weighted(&[
                (30, 1usize),
                (20, 2),
                (10, 3),
                (8, 4),
                (6, 5),
                (8, 6),
                (10, 7),
                (8, 8),
            ])
        } else {
            0
        };
        let mut ext: Vec<ExtSpec> = (0..n_ext).map(|_| self.ext()).collect();
        // An RFC 2675 Jumbo Payload option opening a hop-by-hop header,
        // usually with the payload length of 0 it goes with (judged when
        // the skb is GSO; else malformed: no frame here exceeds 65535).
        let jumbo = self.rng.chance(4);
        if jumbo {
            let r = &mut self.rng;
            let any = r.u32();
            let len = r.weighted(&[(40, 70_000u32), (20, 65_535), (20, 1000), (20, any)]);
            ext.insert(0, ExtSpec::jumbo(len));
        }
        let version = if self.rng.chance(2) {
            self.rng.below(16) as u8
        } else {
            6
        };
        // A segment-routing or type 0 header whose hop is in the source's
        // environment and whose final destination may be anywhere.
        if self.rng.chance(4) {
            let r = &mut self.rng;
            let (hop_env, final_env) = (draw_env(r), draw_env(r));
            let rtype = r.pick(&[0u8, 4]);
            let hop = addr6(r, hop_env);
            let last = addr6(r, final_env);
            let addrs: Vec<[u8; 16]> = if rtype == 4 {
                vec![last, hop]
            } else {
                vec![last]
            };
            let pos = r.below(ext.len() + 1);
            ext.insert(pos, ExtSpec::routing(rtype, 1, &addrs));
        }
        let mut payload_len = self.len_field();
        if jumbo && self.rng.chance(80) {
            payload_len = LenField::Value(0);
        }
        let payload = self.l4(depth, true);
        let cut = self.cut();
        let hdr = Ipv6 {
            src,
            dst,
            payload_len,
            version,
            ..Ipv6::default()
        };
        Ip6Spec {
            hdr,
            ext,
            payload,
            cut,
        }
    }

    fn ext(&mut self) -> ExtSpec {
        let r = &mut self.rng;
        let kind = r.weighted(&[
            (20, ipproto::HOPOPTS),
            (30, ipproto::ROUTING),
            (20, ipproto::DSTOPTS),
            (20, ipproto::FRAGMENT),
            (10, ipproto::AH),
            (5, ipproto::ESP),
            (4, ipproto::MOBILITY),
            (3, ipproto::HIP),
            (3, ipproto::SHIM6),
        ]);
        let units = if r.chance(5) {
            r.range(8, 60) as u8
        } else {
            r.below(4) as u8
        };
        let frag = match r.below(4) {
            0 => 0,
            1 => 1,
            _ => ((r.range(1, 0x1fff) as u16) << 3) | (r.below(2) as u16),
        };
        ExtSpec::new(kind, units, frag, r.u8())
    }

    fn len_field(&mut self) -> LenField {
        let r = &mut self.rng;
        match r.below(100) {
            // What BIG TCP writes (judged only in a GSO skb, else malformed).
            0..=1 => LenField::Value(0),
            2..=92 => LenField::Exact,
            93..=95 => LenField::Delta(r.range(0, 16) as i32 - 8),
            96..=97 => LenField::Delta(-(r.range(1, 60) as i32)),
            _ => LenField::Value(r.u16()),
        }
    }

    /// A consistent truncation of a layer's payload, sometimes.
    fn cut(&mut self) -> Option<usize> {
        if self.rng.chance(6) {
            let r = &mut self.rng;
            let (a, b, c) = (r.below(4), r.below(12), r.below(60));
            Some(r.weighted(&[(30, a), (30, b), (40, c)]))
        } else {
            None
        }
    }

    fn l4(&mut self, depth: u32, v6: bool) -> L4Spec {
        let tunnel_weight = match depth {
            0 => 28,
            1 => 10,
            d if d < MAX_DEPTH => 4,
            _ => 0,
        };
        let choice = self.rng.weighted(&[
            (20, 0u8),
            (28, 1),
            (6, 2),
            (10, 3),
            (tunnel_weight, 4),
            (6, 5),
            (4, 6),
        ]);
        let r = &mut self.rng;
        match choice {
            6 => L4Spec::Dccp {
                sport: r.u16(),
                dport: draw_port(r),
            },
            0 => L4Spec::Tcp {
                sport: r.u16(),
                dport: draw_port(r),
                data: if r.chance(70) { 0 } else { r.below(40) },
            },
            1 => {
                let sport = if r.chance(5) { VXLAN_PORT } else { r.u16() };
                let dport = draw_port(r);
                let tunnel_port = [VXLAN_PORT, VXLAN_LINUX_PORT, VXLAN_GPE_PORT, GENEVE_PORT];
                let body = if tunnel_port.contains(&dport) {
                    if r.chance(85) {
                        self.udp_tunnel(depth, dport)
                    } else {
                        let n = self.rng.below(24);
                        UdpBody::Data(self.rng.bytes(n))
                    }
                } else {
                    let n = r.below(32);
                    UdpBody::Data(r.bytes(n))
                };
                let len = if self.rng.chance(5) {
                    LenField::Value(self.rng.u16())
                } else {
                    LenField::Exact
                };
                L4Spec::Udp {
                    sport,
                    dport,
                    body,
                    len,
                }
            }
            2 => L4Spec::Sctp {
                sport: r.u16(),
                dport: draw_port(r),
            },
            3 => L4Spec::Icmp {
                v6: if r.chance(90) { v6 } else { !v6 },
                ty: if r.chance(90) {
                    r.pick(&[8u8, 0, 3, 11, 128, 129, 135, 136])
                } else {
                    r.u8()
                },
                code: if r.chance(80) { 0 } else { r.u8() },
            },
            4 => self.ip_tunnel(depth),
            _ => {
                let any = r.u8();
                let proto = r.weighted(&[
                    (30, any),
                    (10, ipproto::ESP),
                    (10, ipproto::AH),
                    (10, ipproto::HOPOPTS),
                    (10, ipproto::FRAGMENT),
                    (10, ipproto::NONE),
                    (10, ipproto::ROUTING),
                    (10, ipproto::DCCP),
                    (10, 2u8),
                ]);
                let n = r.below(40);
                L4Spec::Raw {
                    proto,
                    bytes: r.bytes(n),
                }
            }
        }
    }

    /// IPIP, IPv6-in-IP or GRE around a random inner packet.
    fn ip_tunnel(&mut self, depth: u32) -> L4Spec {
        match self.rng.weighted(&[(25, 0u8), (25, 1), (50, 2)]) {
            0 => L4Spec::Ip4(Box::new(self.ip4(depth + 1))),
            1 => L4Spec::Ip6(Box::new(self.ip6(depth + 1))),
            _ => {
                let r = &mut self.rng;
                let mut flags = 0u16;
                for bit in [0x8000u16, 0x2000, 0x1000] {
                    if r.chance(35) {
                        flags |= bit;
                    }
                }
                if r.chance(5) {
                    flags |= 0x4000; // routing present: not decapsulated
                }
                if r.chance(8) {
                    flags |= 1; // version 1 (PPTP)
                } else if r.chance(3) {
                    flags |= r.range(2, 7) as u16;
                }
                if r.chance(5) {
                    flags |= (r.u16() & 0x0ff8) | 0x0100;
                }
                let any = r.u16();
                let proto = r.weighted(&[
                    (35, ethertype::IPV4),
                    (25, ethertype::IPV6),
                    (25, ethertype::TEB),
                    (5, ethertype::PPP),
                    (5, ethertype::VLAN),
                    (5, any),
                ]);
                let inner = self.inner_for(proto, depth + 1);
                L4Spec::Gre(Box::new(GreSpec {
                    flags,
                    proto,
                    inner,
                }))
            }
        }
    }

    fn udp_tunnel(&mut self, depth: u32, dport: u16) -> UdpBody {
        if dport == VXLAN_GPE_PORT {
            let r = &mut self.rng;
            let flags = if r.chance(85) { 0x0c } else { r.u8() };
            let next = r.weighted(&[(35, 1u8), (35, 2), (20, 3), (10, 4)]);
            let inner = match next {
                1 => Inner::Ip4(Box::new(self.ip4(depth + 1))),
                2 => Inner::Ip6(Box::new(self.ip6(depth + 1))),
                3 => Inner::Eth(Box::new(self.frame_spec(depth + 1))),
                _ => Inner::Raw(self.rng.bytes_below(30)),
            };
            return UdpBody::Gpe { flags, next, inner };
        }
        if dport == VXLAN_PORT || dport == VXLAN_LINUX_PORT {
            let flags = if self.rng.chance(90) {
                0x08
            } else {
                self.rng.u8()
            };
            let vni = self.rng.u32() & 0xff_ffff;
            let inner = if self.rng.chance(95) {
                Inner::Eth(Box::new(self.frame_spec(depth + 1)))
            } else {
                Inner::Raw(self.rng.bytes_below(20))
            };
            UdpBody::Vxlan { flags, vni, inner }
        } else {
            let r = &mut self.rng;
            let (few, many, any) = (r.range(1, 8) as u8, r.range(9, 63) as u8, r.u16());
            let opt_words = r.weighted(&[(50, 0u8), (30, few), (20, many)]);
            let proto = r.weighted(&[
                (60, ethertype::TEB),
                (15, ethertype::IPV4),
                (15, ethertype::IPV6),
                (10, any),
            ]);
            let inner = self.inner_for(proto, depth + 1);
            UdpBody::Geneve {
                opt_words,
                proto,
                inner,
            }
        }
    }

    /// A packet of the kind `proto` (an EtherType) announces, usually.
    fn inner_for(&mut self, proto: u16, depth: u32) -> Inner {
        if self.rng.chance(7) {
            return Inner::Raw(self.rng.bytes_below(48));
        }
        match proto {
            ethertype::IPV4 => Inner::Ip4(Box::new(self.ip4(depth))),
            ethertype::IPV6 => Inner::Ip6(Box::new(self.ip6(depth))),
            ethertype::TEB => Inner::Eth(Box::new(self.frame_spec(depth))),
            _ => Inner::Raw(self.rng.bytes_below(48)),
        }
    }

    /// Cuts `frame` at a header boundary, give or take a few bytes.
    pub fn truncate(&mut self, mut frame: Vec<u8>, marks: &[usize]) -> Vec<u8> {
        let r = &mut self.rng;
        let base = if marks.is_empty() || r.chance(10) {
            r.below(frame.len().max(1))
        } else {
            r.pick(marks)
        };
        let step = r.range(1, 4) as i64;
        let delta = r.weighted(&[(50, 0i64), (30, step), (20, -step)]);
        let at = (base as i64 + delta).clamp(MIN_FRAME as i64, frame.len() as i64) as usize;
        frame.truncate(at);
        frame
    }

    /// Changes a few bytes of `frame` (mostly in the headers).
    pub fn mutate(&mut self, mut frame: Vec<u8>, marks: &[usize]) -> Vec<u8> {
        let r = &mut self.rng;
        let rounds = r.range(1, 4);
        for _ in 0..rounds {
            if frame.is_empty() {
                break;
            }
            let hot = frame.len().min(160);
            let at = if !marks.is_empty() && r.chance(50) {
                (r.pick(marks) + r.below(4)).min(frame.len() - 1)
            } else if r.chance(80) {
                r.below(hot)
            } else {
                r.below(frame.len())
            };
            match r.below(6) {
                0 => frame[at] ^= 1 << r.below(8),
                1 => frame[at] = r.u8(),
                2 => {
                    frame[at] = r.pick(&[
                        0u8, 0xff, 0x45, 0x46, 0x4f, 0x60, 0x81, 0x88, 0xa8, 0x86, 0xdd, 0x08,
                        0x11, 0x06, 0x2f, 0x04, 0x29, 0x2c, 0x32, 0x33, 0x3c, 0x12, 0xb5, 0x17,
                        0xc1,
                    ])
                }
                3 => {
                    // A 4-byte insert: often a whole extra VLAN tag.
                    let ins: Vec<u8> = if r.chance(50) {
                        vec![0x81, 0x00, 0, r.u8()]
                    } else {
                        r.bytes(4)
                    };
                    let at = at.min(frame.len());
                    frame.splice(at..at, ins);
                }
                4 => {
                    let n = r.range(1, 8).min(frame.len() - at);
                    frame.drain(at..at + n);
                }
                _ => {
                    // Swap in an EtherType / next-header value.
                    if at + 1 < frame.len() {
                        let v = r.pick(&[
                            ethertype::IPV4,
                            ethertype::IPV6,
                            ethertype::VLAN,
                            ethertype::QINQ,
                            ethertype::TEB,
                            VXLAN_PORT,
                            GENEVE_PORT,
                            53,
                        ]);
                        frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
        if frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        frame.truncate(MAX_FRAME);
        frame
    }

    /// Random bytes, often behind an IP or VLAN EtherType so that the
    /// parser gets past Ethernet.
    pub fn random_bytes(&mut self) -> Vec<u8> {
        let r = &mut self.rng;
        let n = if r.chance(90) {
            r.range(MIN_FRAME, 200)
        } else {
            r.range(MIN_FRAME, MAX_FRAME)
        };
        let mut f = r.bytes(n);
        if r.chance(70) {
            let et = r.pick(&[
                ethertype::IPV4,
                ethertype::IPV6,
                ethertype::VLAN,
                ethertype::QINQ,
            ]);
            f[12..14].copy_from_slice(&et.to_be_bytes());
            if f.len() > 14 && r.chance(60) {
                f[14] = match et {
                    ethertype::IPV4 => 0x40 | (f[14] & 0x0f),
                    ethertype::IPV6 => 0x60 | (f[14] & 0x0f),
                    _ => f[14],
                };
            }
        }
        f
    }
}

/// Writes 0 into the length field of an untagged frame's IPv4 / IPv6
/// header (what the stack writes into a BIG TCP packet).
pub fn zero_outer_length(frame: &mut [u8]) {
    let at = match frame.get(12..14) {
        Some([0x08, 0x00]) => 14 + 2,
        Some([0x86, 0xdd]) => 14 + 4,
        _ => return,
    };
    if let Some(field) = frame.get_mut(at..at + 2) {
        field.copy_from_slice(&[0, 0]);
    }
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` (EINVAL) before the program
/// runs: shorter than Ethernet, or an untagged IPv4 / IPv6 frame too short
/// for the IP header (the kernel pulls it into the linear area first).
pub fn kernel_refuses(frame: &[u8]) -> bool {
    if frame.len() < MIN_FRAME {
        return true;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ethertype::IPV4 => frame.len() < 14 + 20,
        ethertype::IPV6 => frame.len() < 14 + 40,
        _ => false,
    }
}

/// FNV-1a (64 bits) of `bytes`: names regression files.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string (whitespace ignored).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_and_reproducible() {
        let mut g = Gen::new(1);
        let mut h = Gen::new(1);
        for _ in 0..5000 {
            let c = g.case();
            assert!(c.frame.len() >= MIN_FRAME && c.frame.len() <= MAX_FRAME);
            assert_eq!(c.frame, h.case().frame);
        }
    }

    #[test]
    fn vlan_tags_in_order() {
        let spec = FrameSpec {
            dst_mac: [1; 6],
            src_mac: [2; 6],
            vlans: vec![(ethertype::QINQ, 5), (ethertype::VLAN, 6)],
            l3: L3Spec::Other {
                ethertype: ethertype::ARP,
                bytes: vec![9],
            },
            pad_to: 0,
        };
        let f = spec.build();
        assert_eq!(
            &f[12..],
            &[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 6, 0x08, 0x06, 9]
        );
    }

    #[test]
    fn ipv4_checksum_verifies() {
        let hdr = Ipv4 {
            src: [10, 30, 1, 2],
            dst: [10, 10, 1, 2],
            options: vec![1, 1, 1, 0],
            id: 1,
            ..Ipv4::default()
        };
        let ip = Ip4Spec {
            hdr,
            payload: L4Spec::Icmp {
                v6: false,
                ty: 8,
                code: 0,
            },
            cut: None,
        };
        let b = ip.packet().into_bytes();
        assert_eq!(b[0], 0x46);
        assert_eq!(ip_checksum(&b[..24]), 0);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize, b.len());
    }

    #[test]
    fn hex_round_trip() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&b)).unwrap(), b);
        assert_eq!(from_hex("00 01\nab ff").unwrap(), b);
        assert!(from_hex("abc").is_none());
    }
}
