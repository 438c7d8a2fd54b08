//! The reference classifier: the kernel's verdict, computed in plain Rust
//! from the frame's bytes, what the skb says of it ([`Skb`]) and the
//! compiled policy. It reaches the decisions of `agent-ebpf/src/parse.rs`
//! and `agent-ebpf/src/programs.rs` on its own: the link layers (MPLS,
//! PPPoE), lengths of zero (BIG TCP, jumbograms), routing headers and the
//! policy's tunnel ports are written from the RFCs and the README's rules,
//! not from the kernel code; the differential tests hold the two equal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envfence_ebpf::{family, parse_limits as lim, proto, verdict, wire};

use super::{rpf, CompiledPolicy, Mode, NonIp, TunnelKind, L4};

use envfence_ebpf::wire::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_TEB, IPV6_HLEN, VLAN_HLEN,
};

/// What the skb says of a frame beyond its bytes (BPF_PROG_TEST_RUN sets
/// it through the `__sk_buff` context).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skb {
    /// `skb_shinfo(skb)->gso_size`: non-zero for a GSO / GRO packet, the
    /// only kind the stack gives an IP length of 0 (BIG TCP).
    pub gso_size: u32,
}

/// What a frame that is not IP is, as counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NonIpKind {
    Arp,
    Lldp,
    /// MPLS whose payload is neither IPv4 nor IPv6.
    Mpls,
    /// PPPoE discovery, or a session carrying neither IPv4 nor IPv6.
    Pppoe,
    Other,
}

impl NonIpKind {
    /// The datapath statistic that counts the kind.
    pub fn stat(self) -> u32 {
        use envfence_ebpf::stat;
        match self {
            NonIpKind::Arp => stat::NON_IP_ARP,
            NonIpKind::Lldp => stat::NON_IP_LLDP,
            NonIpKind::Mpls => stat::NON_IP_MPLS,
            NonIpKind::Pppoe => stat::NON_IP_PPPOE,
            NonIpKind::Other => stat::NON_IP_OTHER,
        }
    }
}

/// How the outer IP packet travelled in its Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Right after the Ethernet header (and VLAN tags).
    Ethernet,
    /// Under an MPLS label stack.
    Mpls,
    /// In a PPPoE session.
    Pppoe,
}

/// What the datapath does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6: counted as non-IP and by kind; passed unless the
    /// policy says `non_ip: drop` (and is in enforce mode).
    NonIp(NonIpKind),
    /// Claims to be IP (or a tunnel) but cannot be read up to its
    /// addresses: dropped in enforce mode, passed in audit mode; counted as
    /// malformed.
    Malformed,
    /// More VLAN tags than the parser walks: handled like malformed.
    VlanTooDeep,
    /// A tunnel inside a tunnel: handled like malformed.
    TunnelTooDeep,
    /// More MPLS labels than the parser walks: handled like malformed.
    MplsTooDeep,
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
    /// How the outer packet travelled.
    pub encap: Encap,
    /// Some layer's length field was 0 and its length came from the skb.
    pub len_from_skb: bool,
    /// Some layer was an IPv6 jumbogram.
    pub jumbo: bool,
    /// Some layer had a routing header with a final destination.
    pub routed: bool,
    /// The verdict is that of a routing header's final destination (`dst`
    /// is that destination).
    pub by_final: bool,
}

impl Outcome {
    /// Whether the datapath lets the frame through under `policy`.
    pub fn passes(&self, policy: &CompiledPolicy) -> bool {
        let audit = policy.mode == Mode::Audit;
        match self {
            Outcome::NonIp(_) => policy.non_ip == NonIp::Pass || audit,
            Outcome::Malformed
            | Outcome::VlanTooDeep
            | Outcome::TunnelTooDeep
            | Outcome::MplsTooDeep => audit,
            Outcome::Judged(j) => j.verdict != verdict::DROP,
            Outcome::Spoofed(_) => audit,
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
    len_from_skb: bool,
    jumbo: bool,
    /// Where a routing header says the packet ends up (segments left).
    final_dst: Option<IpAddr>,
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

/// Protocols whose first four bytes are the source and destination ports:
/// TCP, UDP, SCTP and DCCP (RFC 4340 5.1).
fn is_port_bearing(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP | proto::DCCP)
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

/// Classifies one Ethernet frame as the kernel program does, for a frame
/// that is not a GSO packet.
pub fn classify(frame: &[u8], policy: &CompiledPolicy) -> Outcome {
    classify_skb(frame, Skb::default(), policy)
}

/// Classifies one Ethernet frame whose skb says `skb`.
pub fn classify_skb(frame: &[u8], skb: Skb, policy: &CompiledPolicy) -> Outcome {
    classify_full(frame, skb, policy, None)
}

/// Classifies one Ethernet frame (not a GSO packet) entering interface
/// `ifindex` of `node`: a frame the parser can read up to its addresses
/// has its outer source checked first ([`rpf::Node::check`]); a refused
/// one is [`Outcome::Spoofed`], never judged under the environment it
/// claims.
pub fn classify_on(
    frame: &[u8],
    policy: &CompiledPolicy,
    node: &rpf::Node,
    ifindex: u32,
) -> Outcome {
    classify_full(frame, Skb::default(), policy, Some((node, ifindex)))
}

/// The outer packet's (source, destination), when the frame (not a GSO
/// packet) can be read up to its addresses: what the source check looks at.
pub fn outer_addresses(frame: &[u8], policy: &CompiledPolicy) -> Option<(IpAddr, IpAddr)> {
    let walk = Walk {
        frame,
        gso: false,
        policy,
    };
    walk.parse()
        .ok()
        .map(|(outer, _, _)| (outer.src, outer.dst))
}

fn classify_full(
    frame: &[u8],
    skb: Skb,
    policy: &CompiledPolicy,
    on: Option<(&rpf::Node, u32)>,
) -> Outcome {
    let walk = Walk {
        frame,
        gso: skb.gso_size != 0,
        policy,
    };
    let (outer, inner, encap) = match walk.parse() {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    if let Some((node, ifindex)) = on {
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
    }
    let tunneled = inner.is_some();
    let mut judged = judge_all(&outer, policy);
    let mut by_inner = false;
    if let Some(inner) = &inner {
        let j = judge_all(inner, policy);
        if j.verdict > judged.verdict {
            judged = j;
            by_inner = true;
        }
    }
    let layers = std::iter::once(&outer).chain(inner.as_ref());
    let (mut len_from_skb, mut jumbo, mut routed) = (false, false, false);
    for l in layers {
        len_from_skb |= l.len_from_skb;
        jumbo |= l.jumbo;
        routed |= l.final_dst.is_some();
    }
    judged.tunneled = tunneled;
    judged.by_inner = by_inner;
    judged.encap = encap;
    judged.len_from_skb = len_from_skb;
    judged.jumbo = jumbo;
    judged.routed = routed;
    Outcome::Judged(judged)
}

/// A layer judged for where it is going now and, with a routing header,
/// for where it ends up: the stricter verdict, the current destination's on
/// a tie.
fn judge_all(layer: &Layer, policy: &CompiledPolicy) -> Judgement {
    let now = judge(layer, layer.dst, policy);
    match layer.final_dst {
        Some(end) => {
            let mut last = judge(layer, end, policy);
            if last.verdict > now.verdict {
                last.by_final = true;
                last
            } else {
                now
            }
        }
        None => now,
    }
}

fn judge(layer: &Layer, dst: IpAddr, policy: &CompiledPolicy) -> Judgement {
    let (src_env, _) = policy.lookup_env(layer.src);
    let (dst_env, _) = policy.lookup_env(dst);
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
        dst,
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
        encap: Encap::Ethernet,
        len_from_skb: false,
        jumbo: false,
        routed: false,
        by_final: false,
    }
}

/// One frame being walked: its bytes, whether the skb is GSO, and the
/// policy (its tunnel ports).
struct Walk<'a> {
    frame: &'a [u8],
    gso: bool,
    policy: &'a CompiledPolicy,
}

/// Where a link layer left off: what it carries and where.
enum Payload {
    Ip4(usize),
    Ip6(usize),
    NotIp(NonIpKind),
}

impl Walk<'_> {
    fn parse(&self) -> Result<(Layer, Option<Layer>, Encap), Outcome> {
        let (payload, encap) = self.link(0)?;
        let outer = match payload {
            Payload::Ip4(off) => self.ipv4(off)?,
            Payload::Ip6(off) => self.ipv6(off)?,
            Payload::NotIp(kind) => return Err(Outcome::NonIp(kind)),
        };
        let inner = match outer.tunnel {
            Tunnel::None => return Ok((outer, None, encap)),
            Tunnel::Ip4(off) => Some(self.ipv4(off)?),
            Tunnel::Ip6(off) => Some(self.ipv6(off)?),
            Tunnel::Eth(off) => match self.link(off) {
                Ok((Payload::Ip4(l3), _)) => Some(self.ipv4(l3)?),
                Ok((Payload::Ip6(l3), _)) => Some(self.ipv6(l3)?),
                // Non-IP inside an Ethernet tunnel: judged on the outer.
                Ok((Payload::NotIp(_), _)) => None,
                Err(e) => return Err(e),
            },
        };
        match inner {
            Some(i) if i.tunnel != Tunnel::None => Err(Outcome::TunnelTooDeep),
            inner => Ok((outer, inner, encap)),
        }
    }

    /// The Ethernet frame at `off`: VLAN tags, then MPLS (RFC 3032) or a
    /// PPPoE session (RFC 2516), then what is carried. A tunnel's inner
    /// Ethernet header that is not there makes the packet malformed.
    fn link(&self, off: usize) -> Result<(Payload, Encap), Outcome> {
        let (ethertype, l3) = match parse_eth(self.frame, off) {
            Err(Outcome::NonIp(_)) if off > 0 => return Err(Outcome::Malformed),
            r => r?,
        };
        Ok(match ethertype {
            ETH_P_IP => (Payload::Ip4(l3), Encap::Ethernet),
            ETH_P_IPV6 => (Payload::Ip6(l3), Encap::Ethernet),
            wire::ETH_P_MPLS_UC | wire::ETH_P_MPLS_MC => self.mpls(l3)?,
            wire::ETH_P_PPP_SES => self.pppoe(l3)?,
            wire::ETH_P_PPP_DISC => (Payload::NotIp(NonIpKind::Pppoe), Encap::Ethernet),
            wire::ETH_P_ARP => (Payload::NotIp(NonIpKind::Arp), Encap::Ethernet),
            wire::ETH_P_LLDP => (Payload::NotIp(NonIpKind::Lldp), Encap::Ethernet),
            _ => (Payload::NotIp(NonIpKind::Other), Encap::Ethernet),
        })
    }

    /// RFC 3032: 4-byte label stack entries (label 20 bits, TC 3, S 1, TTL
    /// 8) until the S (bottom of stack) bit; the payload has no type field,
    /// so its IP version nibble says what it is (RFC 4385: a first nibble
    /// of 0 or 1 is a pseudowire control word / G-ACh, not IP). At most
    /// `MAX_MPLS_LABELS` entries are walked.
    fn mpls(&self, start: usize) -> Result<(Payload, Encap), Outcome> {
        let mut at = start;
        for _ in 0..lim::MAX_MPLS_LABELS {
            let entry = bytes_at(self.frame, at, wire::MPLS_HLEN).ok_or(Outcome::Malformed)?;
            at += wire::MPLS_HLEN;
            let bottom_of_stack = entry[2] & 0x01 == 0x01;
            if bottom_of_stack {
                let version = bytes_at(self.frame, at, 1).ok_or(Outcome::Malformed)?[0] >> 4;
                return Ok(match version {
                    4 => (Payload::Ip4(at), Encap::Mpls),
                    6 => (Payload::Ip6(at), Encap::Mpls),
                    _ => (Payload::NotIp(NonIpKind::Mpls), Encap::Ethernet),
                });
            }
        }
        Err(Outcome::MplsTooDeep)
    }

    /// RFC 2516 session stage: VER 1, TYPE 1, CODE 0, session id, length;
    /// then the PPP protocol field (RFC 1661: two bytes, or one when
    /// compressed, which an odd first byte says): 0x0021 IPv4, 0x0057
    /// IPv6. A header that is cut or not version 1 / type 1 / code 0 is
    /// malformed.
    fn pppoe(&self, start: usize) -> Result<(Payload, Encap), Outcome> {
        let hdr = bytes_at(self.frame, start, wire::PPPOE_HLEN + 1).ok_or(Outcome::Malformed)?;
        let (ver, ty, code) = (hdr[0] >> 4, hdr[0] & 0x0f, hdr[1]);
        if (ver, ty, code) != (1, 1, 0) {
            return Err(Outcome::Malformed);
        }
        let (protocol, data) = if hdr[6] % 2 == 1 {
            (u16::from(hdr[6]), start + wire::PPPOE_HLEN + 1)
        } else {
            // The PPPoE header and its PPP protocol field are one header
            // for the parser's 448-byte window (a read that starts in it).
            let f = bytes_at(self.frame, start, wire::PPPOE_HLEN + 2).ok_or(Outcome::Malformed)?;
            (be16(f[6], f[7]), start + wire::PPPOE_HLEN + 2)
        };
        Ok(match protocol {
            wire::PPP_IP => (Payload::Ip4(data), Encap::Pppoe),
            wire::PPP_IPV6 => (Payload::Ip6(data), Encap::Pppoe),
            _ => (Payload::NotIp(NonIpKind::Pppoe), Encap::Ethernet),
        })
    }
}

/// Ethernet at `off` with up to two VLAN tags (802.1Q, 802.1ad):
/// (ethertype, offset of what follows).
fn parse_eth(frame: &[u8], off: usize) -> Result<(u16, usize), Outcome> {
    let eth = bytes_at(frame, off, ETH_HLEN).ok_or(Outcome::NonIp(NonIpKind::Other))?;
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
        len_from_skb: false,
        jumbo: false,
        final_dst: None,
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

impl Walk<'_> {
    /// RFC 791. A total length of 0 is the stack's mark of a GSO packet
    /// over 64 KiB (Linux BIG TCP, `iph_totlen()`): in a GSO skb the
    /// packet runs to the end of the skb; anywhere else it is malformed
    /// (shorter than its own header).
    fn ipv4(&self, l3: usize) -> Result<Layer, Outcome> {
        let frame = self.frame;
        let h = bytes_at(frame, l3, 20).ok_or(Outcome::Malformed)?;
        let ihl = usize::from(h[0] & 0x0f);
        let header_len = ihl * 4;
        let in_skb = frame.len().saturating_sub(l3);
        let written = usize::from(be16(h[2], h[3]));
        let big = written == 0 && self.gso;
        let total = if big { in_skb } else { written };
        let consistent = h[0] >> 4 == 4 && ihl >= 5 && header_len <= total && total <= in_skb;
        if !consistent {
            return Err(Outcome::Malformed);
        }
        let mut layer = new_layer(
            family::V4,
            h[9],
            IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        );
        layer.len_from_skb = big;
        if be16(h[6], h[7]) & 0x1fff != 0 {
            no_l4_header(&mut layer);
        } else {
            self.l4(l3 + header_len, total - header_len, &mut layer);
        }
        Ok(layer)
    }

    /// RFC 8200. A payload length of 0 means, in a GSO skb, "to the end of
    /// the skb" (Linux BIG TCP, with or without a hop-by-hop Jumbo option);
    /// otherwise the packet must be an RFC 2675 jumbogram whose first
    /// option (hop-by-hop header first) is a Jumbo Payload over 65535, and
    /// anything else with length 0 is malformed.
    fn ipv6(&self, l3: usize) -> Result<Layer, Outcome> {
        let frame = self.frame;
        let h = bytes_at(frame, l3, IPV6_HLEN).ok_or(Outcome::Malformed)?;
        if h[0] >> 4 != 6 {
            return Err(Outcome::Malformed);
        }
        let in_skb = frame.len().saturating_sub(l3 + IPV6_HLEN);
        let written = usize::from(be16(h[4], h[5]));
        let (payload, big, jumbo) = match written {
            0 if self.gso => (in_skb, true, false),
            0 => (
                rfc2675_length(frame, l3, h[6]).ok_or(Outcome::Malformed)?,
                false,
                true,
            ),
            n => (n, false, false),
        };
        if payload > in_skb {
            return Err(Outcome::Malformed);
        }
        let addr = |off: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&h[off..off + 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        let mut layer = new_layer(family::V6, h[6], addr(8), addr(24));
        layer.len_from_skb = big;
        layer.jumbo = jumbo;
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
            if layer.proto == proto::ROUTING {
                if let Some(end_dst) = routing_final(frame, off)? {
                    if layer.final_dst.replace(end_dst).is_some() {
                        // Two routing headers with segments left.
                        return Err(Outcome::Malformed);
                    }
                }
            }
            layer.proto = next;
            off += len;
        }
        if is_ipv6_ext(layer.proto) {
            layer.ext_too_deep = true;
            layer.l4 = L4Seen::NoPorts;
            return Ok(layer);
        }
        self.l4(off, end.saturating_sub(off), &mut layer);
        Ok(layer)
    }

    fn l4(&self, off: usize, len: usize, layer: &mut Layer) {
        let frame = self.frame;
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
                if let Some(kind) = self.policy.tunnels.kind(layer.dport) {
                    layer.tunnel = udp_tunnel(frame, off, kind);
                }
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
}

/// RFC 2675: the payload length of a jumbogram, from a Jumbo Payload
/// option (type 0xC2, length 4) that opens the hop-by-hop header (its
/// 4n+2 alignment puts it right after the header's two bytes, where Linux
/// writes it). Only lengths over 65535 are jumbo.
fn rfc2675_length(frame: &[u8], l3: usize, next_header: u8) -> Option<usize> {
    if next_header != proto::HOPOPTS {
        return None;
    }
    let hbh = bytes_at(frame, l3 + IPV6_HLEN, 8)?;
    let (opt_type, opt_len) = (hbh[2], hbh[3]);
    if opt_type != wire::IPV6_OPT_JUMBO || opt_len != 4 {
        return None;
    }
    let jumbo = u32::from_be_bytes([hbh[4], hbh[5], hbh[6], hbh[7]]);
    usize::try_from(jumbo).ok().filter(|&n| n > 65535)
}

/// The final destination named by the routing header at `off`, when it
/// still has segments left (with none left, the destination is already
/// the final one):
/// - type 0 (RFC 2460 / 5095): Hdr Ext Len is twice the number of
///   addresses, n >= 1, Segments Left <= n; the last address is final.
/// - type 2 (RFC 6275 6.4): Hdr Ext Len 2, Segments Left 1; the home
///   address is final.
/// - type 4, segment routing (RFC 8754): the segment list, Last Entry + 1
///   addresses, fits the header and Segments Left <= Last Entry + 1;
///   Segment List\[0\] is the final segment.
///
/// A header of these types that breaks its rules, or whose final address
/// lies past the bytes the parser reads, is malformed. Other types name no
/// final destination the parser knows (Linux discards them).
fn routing_final(frame: &[u8], off: usize) -> Result<Option<IpAddr>, Outcome> {
    let h = bytes_at(frame, off, 8).ok_or(Outcome::Malformed)?;
    let (hdr_ext_len, routing_type, segments_left) = (h[1], h[2], h[3]);
    if segments_left == 0 {
        return Ok(None);
    }
    let (units, left) = (usize::from(hdr_ext_len), usize::from(segments_left));
    let address_at = match routing_type {
        0 => {
            let addresses = units / 2;
            if units % 2 == 1 || addresses == 0 || left > addresses {
                return Err(Outcome::Malformed);
            }
            off + 8 + 16 * (addresses - 1)
        }
        2 => {
            if units != 2 || left != 1 {
                return Err(Outcome::Malformed);
            }
            off + 8
        }
        4 => {
            let segments = usize::from(h[4]) + 1;
            if 16 * segments > 8 * units || left > segments {
                return Err(Outcome::Malformed);
            }
            off + 8
        }
        _ => return Ok(None),
    };
    let a = bytes_at(frame, address_at, 16).ok_or(Outcome::Malformed)?;
    let mut octets = [0u8; 16];
    octets.copy_from_slice(a);
    Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
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

/// What follows the UDP header at `udp` on a tunnel port of `kind`. Each
/// tunnel header is 8 bytes; one that is not there leaves an inner frame
/// that cannot be read (malformed).
fn udp_tunnel(frame: &[u8], udp: usize, kind: TunnelKind) -> Tunnel {
    let header = udp + 8;
    let after = header + 8;
    let unreadable = Tunnel::Eth(after);
    match kind {
        // RFC 7348: an Ethernet frame follows.
        TunnelKind::Vxlan => Tunnel::Eth(after),
        // RFC 8926: Opt Len (6 bits, 4-byte words) of options, then the
        // Protocol Type's payload.
        TunnelKind::Geneve => match bytes_at(frame, header, 4) {
            Some(g) => tunnel_for(be16(g[2], g[3]), after + usize::from(g[0] & 0x3f) * 4),
            None => unreadable,
        },
        // draft-ietf-nvo3-vxlan-gpe: flags byte with P (0x04) = next
        // protocol present; the next protocol in byte 3. Without P, or with
        // a protocol other than IPv4 (1), IPv6 (2), Ethernet (3), nothing
        // is decapsulated (Linux drops it): judged on the outer packet.
        TunnelKind::VxlanGpe => match bytes_at(frame, header, 4) {
            None => unreadable,
            Some(g) if g[0] & 0x04 == 0 => Tunnel::None,
            Some(g) => match g[3] {
                wire::GPE_IPV4 => Tunnel::Ip4(after),
                wire::GPE_IPV6 => Tunnel::Ip6(after),
                wire::GPE_ETHERNET => Tunnel::Eth(after),
                _ => Tunnel::None,
            },
        },
    }
}
