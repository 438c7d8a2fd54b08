//! Replies within a capture: the flows the capture's own packets open, so
//! that a later packet of the other side is told `reply` as the kernel's
//! connection tracker would tell it, under its rules (README "Connection
//! tracking"): only packets that are not tunnelled, carry no routing
//! header's final destination and are not non-first fragments, with
//! readable ports (TCP with its flags) or an ICMP echo identifier; only in
//! pairs whose connection-tracking flags say so (`ct::OPENS` to open,
//! `ct::REPLIES` to answer); a TCP SYN or an echo request is never a
//! reply; a RST ends a flow; a packet of the opener the policy no longer
//! passes ends it.
//!
//! What it does not model, and says so instead of guessing: flows opened
//! before the capture began (the kernel's live table is not consulted), the
//! timeouts (a capture spans minutes; the shortest timeout is 10 s after a
//! close), and ICMP errors quoting a tracked flow (`related`). The kernel's
//! tracker works on the skb in the kernel and has no userspace
//! instantiation to share.

use std::collections::HashMap;

use envfence_ebpf::{ct, family, proto, verdict, walk::Layer, L4};

/// Flows remembered at most: the kernel table's default capacity (then new
/// ones are not tracked, like in a full kernel table: their replies are
/// judged by the policy). Bounds the memory a capture of many flows takes.
const MAX_FLOWS: usize = envfence_ebpf::capacity::CONNTRACK as usize;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

type End = ([u8; 16], u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    a: End,
    b: End,
    proto: u8,
    family: u8,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    opener: End,
    rule: u16,
    opened_by: u64,
}

/// What the tracker says of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// The policy's verdict stands.
    Policy,
    /// A reply of the flow packet `opened_by` opened (allowed by `rule`).
    Reply { opened_by: u64, rule: u16 },
    /// Could be a reply of a flow opened before the capture: from the
    /// answering side, not opening, in a pair that lets replies through.
    MaybeReply,
    /// An ICMP error in a pair that lets related errors through: passes as
    /// `related` if it quotes a flow the kernel tracks.
    MaybeRelated,
}

/// The flows of one capture.
#[derive(Default)]
pub struct Tracker {
    flows: HashMap<Key, Flow>,
}

/// What the tracker reads of a packet.
pub struct Seen<'a> {
    /// The Ethernet frame (for TCP flags and ICMP echo identifiers).
    pub frame: &'a [u8],
    /// The outer layer (the one the kernel tracks).
    pub layer: &'a Layer,
    /// Tunnelled, or with a routing header's final destination: never
    /// tracked.
    pub untracked: bool,
    /// The policy's verdict and rule.
    pub verdict: u8,
    pub rule: u16,
    /// The pair's connection-tracking flags.
    pub ct: u8,
}

fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff
}

fn icmp_of_family(fam: u8, p: u8) -> bool {
    (p == proto::ICMP && fam == family::V4) || (p == proto::ICMPV6 && fam == family::V6)
}

fn is_icmp_error(l: &Layer) -> bool {
    let t = l.sport;
    if l.proto == proto::ICMP {
        t == 3 || t == 11 || t == 12
    } else {
        (1..=4).contains(&t)
    }
}

impl Tracker {
    /// Looks `s` up, packet `index` of the capture, and updates its flow.
    pub fn track(&mut self, index: u64, s: &Seen) -> Tracked {
        let l = s.layer;
        if s.untracked || s.ct == 0 {
            return Tracked::Policy;
        }
        let passes = s.verdict == verdict::ALLOW || s.verdict == verdict::LOG;
        if icmp_of_family(l.family, l.proto) && is_icmp_error(l) {
            return if s.ct & ct::REPLIES != 0 && !passes && !l.fragment {
                Tracked::MaybeRelated
            } else {
                Tracked::Policy
            };
        }
        if l.fragment || l.ext_too_deep {
            return Tracked::Policy;
        }
        let p = l.proto;
        let (mut flags, mut opening) = (0u8, false);
        let (sport, dport) = if p == proto::TCP || p == proto::UDP || p == proto::SCTP {
            if l.l4 != L4::Ports {
                return Tracked::Policy;
            }
            if p == proto::TCP {
                let Some(f) = s.frame.get(l.l4_off + 13) else {
                    return Tracked::Policy;
                };
                flags = *f;
                opening = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
            }
            (l.sport, l.dport)
        } else if icmp_of_family(l.family, p) {
            let Some(h) = s.frame.get(l.l4_off..l.l4_off + 8) else {
                return Tracked::Policy;
            };
            let echo = [
                ICMP_ECHO_REQUEST,
                ICMP_ECHO_REPLY,
                ICMPV6_ECHO_REQUEST,
                ICMPV6_ECHO_REPLY,
            ];
            if !echo.contains(&h[0]) {
                return Tracked::Policy;
            }
            opening = h[0] == ICMP_ECHO_REQUEST || h[0] == ICMPV6_ECHO_REQUEST;
            let id = u16::from_be_bytes([h[4], h[5]]);
            (id, id)
        } else {
            return Tracked::Policy;
        };
        let rst = p == proto::TCP && flags & TCP_RST != 0;
        let (mut src, mut dst, mut fam) = (l.src, l.dst, l.family);
        if fam == family::V6 && is_v4_mapped(&src) && is_v4_mapped(&dst) {
            let (s4, d4) = (src, dst);
            src = [0; 16];
            dst = [0; 16];
            src[..4].copy_from_slice(&s4[12..]);
            dst[..4].copy_from_slice(&d4[12..]);
            fam = family::V4;
        }
        let (me, them) = ((src, sport), (dst, dport));
        let key = if me <= them {
            Key {
                a: me,
                b: them,
                proto: p,
                family: fam,
            }
        } else {
            Key {
                a: them,
                b: me,
                proto: p,
                family: fam,
            }
        };
        let opens = passes && s.ct & ct::OPENS != 0;
        match self.flows.get(&key).copied() {
            Some(f) if f.opener != me => {
                if opening || s.ct & ct::REPLIES == 0 {
                    return Tracked::Policy;
                }
                if rst {
                    self.flows.remove(&key);
                }
                Tracked::Reply {
                    opened_by: f.opened_by,
                    rule: f.rule,
                }
            }
            Some(f) => {
                if !opens || rst {
                    self.flows.remove(&key);
                } else {
                    self.flows.insert(key, Flow { rule: s.rule, ..f });
                }
                Tracked::Policy
            }
            None => {
                if opens && !rst {
                    if self.flows.len() < MAX_FLOWS {
                        self.flows.insert(
                            key,
                            Flow {
                                opener: me,
                                rule: s.rule,
                                opened_by: index,
                            },
                        );
                    }
                    Tracked::Policy
                } else if s.ct & ct::REPLIES != 0 && !opening && !passes {
                    Tracked::MaybeReply
                } else {
                    Tracked::Policy
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: u8, dst: u8, sport: u16, dport: u16, flags: u8) -> (Vec<u8>, Layer) {
        let mut frame = vec![0u8; 54];
        frame[34 + 13] = flags;
        let mut l = Layer {
            family: family::V4,
            proto: proto::TCP,
            l4: L4::Ports,
            sport,
            dport,
            l4_off: 34,
            ..Layer::default()
        };
        l.src[..4].copy_from_slice(&[10, 0, 0, src]);
        l.dst[..4].copy_from_slice(&[10, 0, 0, dst]);
        (frame, l)
    }

    fn seen<'a>(f: &'a (Vec<u8>, Layer), v: u8, ct: u8) -> Seen<'a> {
        Seen {
            frame: &f.0,
            layer: &f.1,
            untracked: false,
            verdict: v,
            rule: 7,
            ct,
        }
    }

    #[test]
    fn replies_of_flows_opened_in_the_capture() {
        let mut t = Tracker::default();
        let both = ct::OPENS | ct::REPLIES;
        let syn = tcp(1, 2, 40000, 53, TCP_SYN);
        let synack = tcp(2, 1, 53, 40000, TCP_SYN | TCP_ACK);
        let back_syn = tcp(2, 1, 53, 40000, TCP_SYN);
        // A reply before its flow was seen: maybe.
        assert_eq!(
            t.track(1, &seen(&synack, verdict::DROP, both)),
            Tracked::MaybeReply
        );
        assert_eq!(
            t.track(2, &seen(&syn, verdict::ALLOW, both)),
            Tracked::Policy
        );
        assert_eq!(
            t.track(3, &seen(&synack, verdict::DROP, both)),
            Tracked::Reply {
                opened_by: 2,
                rule: 7
            }
        );
        // A SYN of the other side opens nothing of its own.
        assert_eq!(
            t.track(4, &seen(&back_syn, verdict::DROP, both)),
            Tracked::Policy
        );
        // A RST reply passes and ends the flow.
        let rst = tcp(2, 1, 53, 40000, TCP_RST | TCP_ACK);
        assert!(matches!(
            t.track(5, &seen(&rst, verdict::DROP, both)),
            Tracked::Reply { .. }
        ));
        assert_eq!(
            t.track(6, &seen(&synack, verdict::DROP, both)),
            Tracked::MaybeReply
        );
        // A pair without flags is never looked at.
        let mut t = Tracker::default();
        t.track(1, &seen(&syn, verdict::ALLOW, 0));
        assert_eq!(
            t.track(2, &seen(&synack, verdict::DROP, 0)),
            Tracked::Policy
        );
    }
}
