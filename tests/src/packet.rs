//! The one packet builder of the test harness (after Cilium's
//! `bpf/tests/pktgen.h`): every frame a test, the generator, the
//! catalogue, the lab's wire shapes, the conversation differential or a
//! benchmark sends is built here, header by header, and every byte of it
//! stays reachable.
//!
//! A [`Packet`] is built from the inside out: start with what the
//! innermost layer carries ([`Packet::data`], [`Packet::new`] for nothing,
//! or a leaf such as [`Packet::icmp`]) and push each header in front of it
//! ([`Packet::tcp`], [`Packet::udp`], [`Packet::ipv4`], [`Packet::ipv6`],
//! [`Packet::gre`], [`Packet::vxlan`], [`Packet::eth`] ...). A header
//! whose length field covers what follows is pushed after what follows
//! exists, so the fields are right by construction, or deliberately wrong
//! with a [`LenField`]. Each push records a header boundary
//! ([`Packet::boundaries`]): where truncations are most interesting
//! ([`Packet::cut`]). Any byte, length or checksum can then be patched
//! ([`Packet::bytes_mut`], [`Packet::set_u16`], [`Packet::fix_ipv4_checksum`],
//! [`Packet::fix_udp6_checksum`]).
//!
//! Checksums: the IPv4 header's is computed; TCP/UDP ones are left 0 (TC
//! programs do not check them) unless a test sends the packet through a
//! real stack and asks for them.
//!
//! The header descriptions of the random generator (`crate::gen`'s
//! `FrameSpec` tree) serialize through this module.

use std::net::IpAddr;

/// EtherTypes: the ones the datapath walks come from the ABI crate, plus
/// others tests emit.
pub mod ethertype {
    use envfence_ebpf::wire;
    pub const IPV4: u16 = wire::ETH_P_IP;
    pub const VLAN: u16 = wire::ETH_P_8021Q;
    pub const QINQ: u16 = wire::ETH_P_8021AD;
    pub const IPV6: u16 = wire::ETH_P_IPV6;
    pub const TEB: u16 = wire::ETH_P_TEB;
    pub const ARP: u16 = wire::ETH_P_ARP;
    pub const LLDP: u16 = wire::ETH_P_LLDP;
    pub const MPLS: u16 = wire::ETH_P_MPLS_UC;
    pub const MPLS_MULTICAST: u16 = wire::ETH_P_MPLS_MC;
    pub const PPPOE_DISCOVERY: u16 = wire::ETH_P_PPP_DISC;
    pub const PPPOE_SESSION: u16 = wire::ETH_P_PPP_SES;
    pub const PPP: u16 = 0x880b;
}

/// PPP protocol numbers a PPPoE session carries.
pub mod ppp {
    pub const IPV4: u16 = envfence_ebpf::wire::PPP_IP;
    pub const IPV6: u16 = envfence_ebpf::wire::PPP_IPV6;
    pub const LCP: u16 = 0xc021;
}

/// IP protocol numbers: the datapath's (ABI crate), plus "no next header".
pub mod ipproto {
    pub use envfence_ebpf::proto::*;
    pub const NONE: u8 = 59;
}

/// TCP flags.
pub mod tcp_flags {
    pub const SYN: u8 = 0x02;
}

/// UDP ports of the tunnels the datapath decapsulates (the policy's
/// defaults: `envfence::policy::TunnelKind::default_ports`).
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN's Linux / flannel / Cilium port.
pub const VXLAN_LINUX_PORT: u16 = 8472;
pub const GENEVE_PORT: u16 = 6081;
pub const VXLAN_GPE_PORT: u16 = 4790;

/// The MAC addresses of [`Packet::eth`] (destination, source).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// A length field: right, or deliberately wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LenField {
    /// What the bytes that follow say.
    #[default]
    Exact,
    /// The right value plus this (may be negative); clamped to 0..=65535.
    Delta(i32),
    /// A fixed value.
    Value(u16),
}

impl LenField {
    /// The value to write when the right one is `exact`.
    pub fn apply(self, exact: usize) -> u16 {
        match self {
            LenField::Exact => exact.min(65535) as u16,
            LenField::Delta(d) => (exact as i64 + i64::from(d)).clamp(0, 65535) as u16,
            LenField::Value(v) => v,
        }
    }
}

/// An IPv4 header (`Default`: version 4, no options, lengths right).
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Options (padded with zeros to a multiple of 4, at most 40 bytes).
    pub options: Vec<u8>,
    /// The raw flags + fragment offset field.
    pub frag: u16,
    /// IHL to write instead of the right one.
    pub ihl: Option<u8>,
    pub version: u8,
    pub tot_len: LenField,
    pub id: u16,
}

impl Default for Ipv4 {
    fn default() -> Ipv4 {
        Ipv4 {
            src: [0; 4],
            dst: [0; 4],
            proto: 0,
            options: Vec::new(),
            frag: 0,
            ihl: None,
            version: 4,
            tot_len: LenField::Exact,
            id: 0,
        }
    }
}

/// An IPv6 fixed header (`Default`: version 6, payload length right).
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The next header.
    pub next: u8,
    pub payload_len: LenField,
    pub version: u8,
}

impl Default for Ipv6 {
    fn default() -> Ipv6 {
        Ipv6 {
            src: [0; 16],
            dst: [0; 16],
            next: 0,
            payload_len: LenField::Exact,
            version: 6,
        }
    }
}

/// The 16-byte form of an address (IPv4: IPv4-mapped).
pub fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Bytes and the offset where each header starts. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    bytes: Vec<u8>,
    /// Header boundaries, innermost last (unsorted: pads and cuts keep
    /// them as they were).
    marks: Vec<usize>,
    /// The EtherType of the outermost IP header pushed (for
    /// [`Packet::ethernet`]).
    l3: Option<u16>,
}

impl Packet {
    /// Nothing yet: an empty payload.
    pub fn new() -> Packet {
        Packet::data(&[])
    }

    /// A payload of `bytes` (one layer).
    pub fn data(bytes: &[u8]) -> Packet {
        Packet {
            bytes: bytes.to_vec(),
            marks: vec![0],
            l3: None,
        }
    }

    /// An ICMP (or ICMPv6) message as one layer: type, code, a zero
    /// checksum, the 4 bytes after it (an echo's id and sequence) and
    /// `data`.
    pub fn icmp(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Packet {
        let mut b = vec![ty, code, 0, 0];
        b.extend_from_slice(&rest);
        b.extend_from_slice(data);
        Packet::data(&b)
    }

    /// An ICMP (`v6`: ICMPv6) echo request, id 1 sequence 1.
    pub fn echo(v6: bool) -> Packet {
        Packet::icmp(if v6 { 128 } else { 8 }, 0, [0, 1, 0, 1], &[])
    }

    /// Puts `header` in front (a new boundary at 0).
    pub fn push(mut self, header: &[u8]) -> Packet {
        let mut bytes = Vec::with_capacity(header.len() + self.bytes.len());
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&self.bytes);
        for m in &mut self.marks {
            *m += header.len();
        }
        self.marks.insert(0, 0);
        self.bytes = bytes;
        self
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, to patch any of them.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The offset of every header boundary, sorted (the end of the packet
    /// is one when the innermost layer is empty).
    pub fn boundaries(&self) -> Vec<usize> {
        let mut m = self.marks.clone();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Keeps the first `n` bytes (and the boundaries within them).
    pub fn cut(&mut self, n: usize) {
        self.bytes.truncate(n);
        self.marks.retain(|m| *m <= n);
    }

    /// Zero-pads to `n` bytes (Ethernet's 60-byte minimum); boundaries stay.
    pub fn pad_to(&mut self, n: usize) {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
    }

    /// Appends `bytes` at the end (a trailer; no boundary).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Overwrites the bytes at `at` (panics past the end: a test bug).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) {
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a big-endian 16-bit field at `at`.
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.patch(at, &v.to_be_bytes());
    }

    /// Recomputes the checksum of the IPv4 header at `at`.
    pub fn fix_ipv4_checksum(&mut self, at: usize) {
        let hlen = usize::from(self.bytes[at] & 0x0f) * 4;
        self.patch(at + 10, &[0, 0]);
        let c = ip_checksum(&self.bytes[at..at + hlen]);
        self.set_u16(at + 10, c);
    }

    /// Writes the UDP checksum (mandatory over IPv6) of the datagram at
    /// `udp_at` to the end of the packet, carried by the IPv6 header at
    /// `ip6_at`.
    pub fn fix_udp6_checksum(&mut self, ip6_at: usize, udp_at: usize) {
        let udp_len = self.bytes.len() - udp_at;
        self.patch(udp_at + 6, &[0, 0]);
        let mut pseudo = Vec::with_capacity(40 + udp_len);
        pseudo.extend_from_slice(&self.bytes[ip6_at + 8..ip6_at + 40]);
        pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ipproto::UDP]);
        pseudo.extend_from_slice(&self.bytes[udp_at..]);
        let c = ip_checksum(&pseudo);
        self.set_u16(udp_at + 6, if c == 0 { 0xffff } else { c });
    }

    // -- L4 ----------------------------------------------------------------

    /// A TCP header (20 bytes: sequence number 1, window 64240, checksum 0)
    /// with `flags` (0x02 SYN, 0x10 ACK, 0x04 RST, 0x01 FIN ...).
    pub fn tcp(self, sport: u16, dport: u16, flags: u8) -> Packet {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..8].copy_from_slice(&1u32.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h[14..16].copy_from_slice(&64240u16.to_be_bytes());
        self.push(&h)
    }

    /// A TCP SYN from `sport` to `dport`.
    pub fn syn(sport: u16, dport: u16) -> Packet {
        Packet::new().tcp(sport, dport, tcp_flags::SYN)
    }

    /// A UDP header, its length right.
    pub fn udp(self, sport: u16, dport: u16) -> Packet {
        self.udp_len(sport, dport, LenField::Exact)
    }

    /// A UDP header with the length field `len`.
    pub fn udp_len(self, sport: u16, dport: u16, len: LenField) -> Packet {
        let mut h = [0u8; 8];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..6].copy_from_slice(&len.apply(8 + self.len()).to_be_bytes());
        self.push(&h)
    }

    /// An SCTP common header (verification tag 0xdeadbeef).
    pub fn sctp(self, sport: u16, dport: u16) -> Packet {
        let mut h = [0u8; 12];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        self.push(&h)
    }

    /// A DCCP generic header (RFC 4340) of a request, 48-bit sequence
    /// numbers; its service code is the payload.
    pub fn dccp(self, sport: u16, dport: u16) -> Packet {
        let mut h = [0u8; 16];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4] = 5; // data offset: 5 words (a request's service code)
        h[8] = 1; // type 0 (request), X = 1: 48-bit sequence numbers
        h[10..16].copy_from_slice(&[0, 0, 0, 0, 0x12, 0x34]);
        self.push(&h)
    }

    // -- tunnels -----------------------------------------------------------

    /// A VXLAN header (flags, 24-bit VNI).
    pub fn vxlan(self, flags: u8, vni: u32) -> Packet {
        let mut h = [flags, 0, 0, 0, 0, 0, 0, 0];
        h[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
        self.push(&h)
    }

    /// A VXLAN-GPE header: flags and next protocol (VNI 42).
    pub fn gpe(self, flags: u8, next: u8) -> Packet {
        self.push(&[flags, 0, 0, next, 0, 0, 0x2a, 0])
    }

    /// A Geneve header (VNI 42) with `opt_words` 4-byte words of options
    /// (class 0x0102, type 0x80) and protocol type `proto`.
    pub fn geneve(self, opt_words: u8, proto: u16) -> Packet {
        let mut h = vec![opt_words & 0x3f, 0, 0, 0, 0, 0, 0x2a, 0];
        h[2..4].copy_from_slice(&proto.to_be_bytes());
        let mut left = usize::from(opt_words & 0x3f);
        while left > 0 {
            let words = left.min(8);
            h.extend_from_slice(&[0x01, 0x02, 0x80, (words - 1) as u8]);
            h.extend(std::iter::repeat_n(0x5a, (words - 1) * 4));
            left -= words;
        }
        self.push(&h)
    }

    /// A GRE header: the first 16 bits (C R K S, recursion, flags,
    /// version), the protocol type and the optional checksum, key and
    /// sequence fields its flags announce.
    pub fn gre(self, flags: u16, proto: u16) -> Packet {
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&proto.to_be_bytes());
        if flags & 0x8000 != 0 {
            h.extend_from_slice(&[0xc5, 0xc5, 0, 0]);
        }
        if flags & 0x2000 != 0 {
            h.extend_from_slice(&[0, 0, 0x30, 0x39]);
        }
        if flags & 0x1000 != 0 {
            h.extend_from_slice(&[0, 0, 0, 7]);
        }
        self.push(&h)
    }

    // -- L3 ----------------------------------------------------------------

    /// An IPv4 header (checksum computed).
    pub fn ipv4(mut self, ip: &Ipv4) -> Packet {
        let mut options = ip.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        options.truncate(40);
        let hlen = 20 + options.len();
        let ihl = ip.ihl.unwrap_or((hlen / 4) as u8);
        let mut h = vec![0u8; 20];
        h[0] = (ip.version << 4) | (ihl & 0x0f);
        let tot = ip.tot_len.apply(hlen + self.len());
        h[2..4].copy_from_slice(&tot.to_be_bytes());
        h[4..6].copy_from_slice(&ip.id.to_be_bytes());
        h[6..8].copy_from_slice(&ip.frag.to_be_bytes());
        h[8] = 64;
        h[9] = ip.proto;
        h[12..16].copy_from_slice(&ip.src);
        h[16..20].copy_from_slice(&ip.dst);
        h.extend_from_slice(&options);
        let csum = ip_checksum(&h);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        self.l3 = Some(ethertype::IPV4);
        self.push(&h)
    }

    /// An IPv6 fixed header (hop limit 64).
    pub fn ipv6(mut self, ip: &Ipv6) -> Packet {
        let mut h = [0u8; 40];
        h[0] = ip.version << 4;
        let plen = ip.payload_len.apply(self.len());
        h[4..6].copy_from_slice(&plen.to_be_bytes());
        h[6] = ip.next;
        h[7] = 64;
        h[8..24].copy_from_slice(&ip.src);
        h[24..40].copy_from_slice(&ip.dst);
        self.l3 = Some(ethertype::IPV6);
        self.push(&h)
    }

    /// An IP header of `src`'s family carrying protocol `proto` (`src` and
    /// `dst` of one family; an IPv4-mapped IPv6 address counts as IPv6).
    pub fn ip(self, src: IpAddr, dst: IpAddr, proto: u8) -> Packet {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(&Ipv4 {
                src: s.octets(),
                dst: d.octets(),
                proto,
                ..Ipv4::default()
            }),
            (s, d) => self.ipv6(&Ipv6 {
                src: v6_octets(s),
                dst: v6_octets(d),
                next: proto,
                ..Ipv6::default()
            }),
        }
    }

    /// An MPLS label stack entry (TTL 64).
    pub fn mpls(self, label: u32, bos: bool) -> Packet {
        let entry = (label & 0xf_ffff) << 12 | u32::from(bos) << 8 | 64;
        self.push(&entry.to_be_bytes())
    }

    /// A PPPoE header whose length covers what follows (the PPP protocol
    /// field is pushed before it, as [`Packet::push`]).
    pub fn pppoe(self, ver_type: u8, code: u8, session: u16) -> Packet {
        let len = u16::try_from(self.len()).unwrap_or(u16::MAX);
        let mut h = vec![ver_type, code];
        h.extend(session.to_be_bytes());
        h.extend(len.to_be_bytes());
        self.push(&h)
    }

    // -- L2 ----------------------------------------------------------------

    /// Ethernet ([`DST_MAC`], [`SRC_MAC`]) with `vlans` tags ((TPID, TCI),
    /// outermost first) in front of `ethertype`.
    pub fn eth(self, vlans: &[(u16, u16)], ethertype: u16) -> Packet {
        self.eth_macs(DST_MAC, SRC_MAC, vlans, ethertype)
    }

    /// [`Packet::eth`] with the EtherType of the IP header pushed last.
    pub fn ethernet(self, vlans: &[(u16, u16)]) -> Packet {
        let et = self.l3.unwrap_or(ethertype::IPV4);
        self.eth(vlans, et)
    }

    /// [`Packet::eth`] with these MAC addresses.
    pub fn eth_macs(
        self,
        dst: [u8; 6],
        src: [u8; 6],
        vlans: &[(u16, u16)],
        ethertype: u16,
    ) -> Packet {
        let mut p = self;
        // Innermost tag first, so the outermost ends up first.
        let mut next = ethertype;
        for (tpid, tci) in vlans.iter().rev() {
            let mut tag = [0u8; 4];
            tag[..2].copy_from_slice(&tci.to_be_bytes());
            tag[2..].copy_from_slice(&next.to_be_bytes());
            p = p.push(&tag);
            next = *tpid;
        }
        let mut h = [0u8; 14];
        h[..6].copy_from_slice(&dst);
        h[6..12].copy_from_slice(&src);
        h[12..].copy_from_slice(&next.to_be_bytes());
        p.push(&h)
    }
}

/// A whole frame: Ethernet (no VLAN) + an IP header of `src`'s family +
/// `l4` as protocol `proto`.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, l4: Packet) -> Vec<u8> {
    l4.ip(src, dst, proto).ethernet(&[]).into_bytes()
}

/// The Internet checksum of `bytes` (an IPv4 header's; right for any
/// even-length header).
pub fn ip_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_pushed_in_front_and_marked() {
        let p = Packet::data(b"x")
            .udp(1, 53)
            .ip(
                "10.30.1.2".parse().unwrap(),
                "10.10.1.2".parse().unwrap(),
                17,
            )
            .ethernet(&[(ethertype::VLAN, 7)]);
        let b = p.bytes();
        assert_eq!(p.boundaries(), vec![0, 14, 18, 38, 46]);
        assert_eq!(&b[12..14], &ethertype::VLAN.to_be_bytes());
        assert_eq!(&b[16..18], &ethertype::IPV4.to_be_bytes());
        assert_eq!(u16::from_be_bytes([b[20], b[21]]), 20 + 8 + 1);
        assert_eq!(ip_checksum(&b[18..38]), 0);
        assert_eq!(u16::from_be_bytes([b[42], b[43]]), 9);
        assert_eq!(b[46], b'x');
    }

    #[test]
    fn cut_keeps_the_boundaries_inside() {
        let mut p = Packet::syn(1, 2).ip(
            "fd00:30:1::2".parse().unwrap(),
            "fd00:10:1::2".parse().unwrap(),
            6,
        );
        assert_eq!(p.boundaries(), vec![0, 40, 60]);
        assert_eq!(u16::from_be_bytes([p.bytes()[4], p.bytes()[5]]), 20);
        p.cut(50);
        assert_eq!(p.boundaries(), vec![0, 40]);
        assert_eq!(p.len(), 50);
    }

    #[test]
    fn udp6_checksum_verifies() {
        let ip = Ipv6 {
            src: [0xfd; 16],
            dst: [0xfe; 16],
            next: ipproto::UDP,
            ..Ipv6::default()
        };
        let mut p = Packet::data(b"abc").udp(5, 6).ipv6(&ip);
        p.fix_udp6_checksum(0, 40);
        let b = p.bytes();
        let mut pseudo = b[8..40].to_vec();
        pseudo.extend_from_slice(&11u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(&b[40..]);
        assert_eq!(ip_checksum(&pseudo), 0);
    }

    #[test]
    fn ipv4_patch_and_fix_checksum() {
        let mut p = Packet::new().ipv4(&Ipv4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            ..Ipv4::default()
        });
        p.set_u16(2, 0);
        assert_ne!(ip_checksum(p.bytes()), 0);
        p.fix_ipv4_checksum(0);
        assert_eq!(ip_checksum(p.bytes()), 0);
    }
}
