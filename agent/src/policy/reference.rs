//! The reference classifier: the kernel's verdict, computed in plain Rust
//! from the frame's bytes and the compiled policy. It mirrors
//! `agent-ebpf/src/parse.rs` and `agent-ebpf/src/programs.rs` decision for
//! decision; the differential tests hold the two equal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envfence_ebpf::{family, proto, verdict};

use super::{CompiledPolicy, Mode, L4};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;

/// What the datapath does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6: passed, counted as non-IP.
    NonIp,
    /// Claims to be IP but cannot be read up to its addresses: dropped in
    /// enforce mode, passed in audit mode; counted as malformed.
    Malformed,
    /// More VLAN tags than the parser walks: handled like malformed.
    VlanTooDeep,
    /// An IP packet, judged by the policy.
    Judged(Judgement),
}

/// What is known of the L4 header of a judged packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Seen {
    /// TCP/UDP/SCTP ports were read.
    Ports,
    /// A port-bearing protocol whose ports could not be read.
    NoPorts,
    /// A protocol without ports.
    Other,
}

/// The verdict on one IP packet and what it was based on.
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
}

impl Outcome {
    /// Whether the datapath lets the frame through under `mode`.
    pub fn passes(&self, mode: Mode) -> bool {
        match self {
            Outcome::NonIp => true,
            Outcome::Malformed | Outcome::VlanTooDeep => mode == Mode::Audit,
            Outcome::Judged(j) => j.verdict != verdict::DROP,
        }
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn is_port_bearing(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

fn is_ipv6_ext(p: u8) -> bool {
    matches!(p, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

struct Parsed {
    family: u8,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    l4: L4Seen,
}

/// Classifies one Ethernet frame as the kernel program does.
pub fn classify(frame: &[u8], policy: &CompiledPolicy) -> Outcome {
    let parsed = match parse(frame) {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let (src_env, _) = policy.lookup_env(parsed.src);
    let (dst_env, _) = policy.lookup_env(parsed.dst);
    let l4 = match parsed.l4 {
        L4Seen::Ports => L4::Ports {
            proto: parsed.proto,
            dport: parsed.dport,
        },
        L4Seen::NoPorts => L4::NoPorts,
        L4Seen::Other => L4::Other,
    };
    let (verdict, rule) = policy.decide(src_env, dst_env, l4);
    Outcome::Judged(Judgement {
        family: parsed.family,
        proto: parsed.proto,
        src: parsed.src,
        dst: parsed.dst,
        sport: parsed.sport,
        dport: parsed.dport,
        l4: parsed.l4,
        src_env,
        dst_env,
        verdict,
        rule,
    })
}

fn parse(frame: &[u8]) -> Result<Parsed, Outcome> {
    if frame.len() < ETH_HLEN {
        return Err(Outcome::NonIp);
    }
    let mut ethertype = be16(frame, 12).ok_or(Outcome::NonIp)?;
    let mut l3 = ETH_HLEN;
    for depth in 0..3 {
        if !is_vlan(ethertype) {
            break;
        }
        if depth == 2 {
            return Err(Outcome::VlanTooDeep);
        }
        if frame.len() < l3 + VLAN_HLEN {
            return Err(Outcome::Malformed);
        }
        ethertype = be16(frame, l3 + 2).ok_or(Outcome::Malformed)?;
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_v4(frame, l3),
        ETH_P_IPV6 => parse_v6(frame, l3),
        _ => Err(Outcome::NonIp),
    }
}

fn parse_v4(frame: &[u8], l3: usize) -> Result<Parsed, Outcome> {
    let h = frame.get(l3..l3 + 20).ok_or(Outcome::Malformed)?;
    let version = h[0] >> 4;
    let ihl = usize::from(h[0] & 0x0f);
    let tot_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if version != 4 || ihl < 5 || tot_len < ihl * 4 {
        return Err(Outcome::Malformed);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let mut p = Parsed {
        family: family::V4,
        proto: h[9],
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        sport: 0,
        dport: 0,
        l4: L4Seen::Other,
    };
    if frag & 0x1fff != 0 {
        p.l4 = if is_port_bearing(p.proto) {
            L4Seen::NoPorts
        } else {
            L4Seen::Other
        };
    } else if tot_len < ihl * 4 + 4 && is_port_bearing(p.proto) {
        p.l4 = L4Seen::NoPorts;
    } else {
        l4_at(frame, l3 + ihl * 4, &mut p);
    }
    Ok(p)
}

fn parse_v6(frame: &[u8], l3: usize) -> Result<Parsed, Outcome> {
    let h = frame.get(l3..l3 + IPV6_HLEN).ok_or(Outcome::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Outcome::Malformed);
    }
    let addr = |off: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[off..off + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let mut p = Parsed {
        family: family::V6,
        proto: h[6],
        src: addr(8),
        dst: addr(24),
        sport: 0,
        dport: 0,
        l4: L4Seen::Other,
    };
    if is_ipv6_ext(p.proto) {
        p.l4 = L4Seen::NoPorts;
    } else {
        l4_at(frame, l3 + IPV6_HLEN, &mut p);
    }
    Ok(p)
}

fn l4_at(frame: &[u8], off: usize, p: &mut Parsed) {
    if is_port_bearing(p.proto) {
        match (be16(frame, off), be16(frame, off + 2)) {
            (Some(s), Some(d)) => {
                p.sport = s;
                p.dport = d;
                p.l4 = L4Seen::Ports;
            }
            _ => p.l4 = L4Seen::NoPorts,
        }
    } else {
        p.l4 = L4Seen::Other;
        if p.proto == proto::ICMP || p.proto == proto::ICMPV6 {
            if let (Some(t), Some(c)) = (frame.get(off), frame.get(off + 1)) {
                p.sport = u16::from(*t);
                p.dport = u16::from(*c);
            }
        }
    }
}
