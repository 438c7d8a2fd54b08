//! Replies within a capture: the flows the capture's own packets open, so
//! that a later packet of the other side is told `reply`, and an ICMP
//! error quoting one of them `related`, as the kernel's connection tracker
//! would tell them, under its rules (README "Connection tracking"): only
//! packets that are not tunnelled, carry no routing header's final
//! destination and are not non-first fragments, with readable ports (TCP
//! with its flags) or an ICMP echo identifier; only in pairs whose
//! connection-tracking flags say so (`ct::OPENS` to open, `ct::REPLIES` to
//! answer or be related); a TCP SYN or an echo request is never a reply; a
//! RST ends a flow; a packet of the opener the policy no longer passes ends
//! it; an ICMP error is related when the packet it quotes (read by the
//! kernel's own quote reader, `envfence_ebpf::quote_for!`, instantiated
//! for a byte slice in `policy::reference::walked`) is of a tracked flow,
//! either direction, and its source is the error's destination.
//!
//! What it does not model, and says so instead of guessing: flows opened
//! before the capture began (the kernel's live table is not consulted:
//! a reply or an error quoting such a flow is hedged), and the timeouts (a
//! capture spans minutes; the shortest timeout is 10 s after a close). The
//! transition rules are the kernel's (`agent-ebpf/src/conntrack.rs`),
//! which verdict opens or keeps a flow and the RST that ends it shared
//! with it (`envfence_ebpf::ct_rules`); the rest of them (a SYN or echo
//! request is never a reply, the order they are asked in) is written
//! again here over a map of this capture's flows: as a shared function it
//! costs the kernel's verifier (see `ct_rules`).

use std::collections::HashMap;

use envfence_ebpf::ct_rules::{self, TCP_ACK, TCP_SYN};
use envfence_ebpf::quote::{self, Quoted};
use envfence_ebpf::{ct, family, proto, tunnel, verdict, walk::Layer, L4};

use crate::policy::reference::{walked, Skb, SliceFrame};

/// Flows remembered at most: the kernel table's default capacity (then new
/// ones are not tracked, like in a full kernel table: their replies are
/// judged by the policy). Bounds the memory a capture of many flows takes.
const MAX_FLOWS: usize = envfence_ebpf::capacity::CONNTRACK as usize;

type End = ([u8; 16], u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    a: End,
    b: End,
    proto: u8,
    family: u8,
}

impl Key {
    /// The key of a packet from `me` to `them`, as the kernel keys it
    /// (the lower endpoint first).
    fn of(family: u8, proto: u8, me: End, them: End) -> Key {
        let (a, b) = if me <= them { (me, them) } else { (them, me) };
        Key {
            a,
            b,
            proto,
            family,
        }
    }
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
    /// An ICMP error quoting a packet of the flow packet `opened_by`
    /// opened (allowed by `rule`), sent back to that packet's source.
    Related { opened_by: u64, rule: u16 },
    /// An ICMP error the policy does not pass, quoting a packet of a flow
    /// not seen in the capture, sent back to that packet's source, in a
    /// pair that lets related errors through: passes as `related` if the
    /// kernel tracks that flow (opened before the capture).
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

/// An endpoint pair as the kernel keys it: IPv4-mapped IPv6 addresses
/// (both of them) as IPv4. Returns (family, src, dst).
fn normalized(fam: u8, src: &[u8; 16], dst: &[u8; 16]) -> (u8, [u8; 16], [u8; 16]) {
    if fam == family::V6 && is_v4_mapped(src) && is_v4_mapped(dst) {
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s[..4].copy_from_slice(&src[12..]);
        d[..4].copy_from_slice(&dst[12..]);
        return (family::V4, s, d);
    }
    (fam, *src, *dst)
}

impl Tracker {
    /// Looks `s` up, packet `index` of the capture, and updates its flow.
    pub fn track(&mut self, index: u64, s: &Seen) -> Tracked {
        let l = s.layer;
        if s.untracked || s.ct == 0 {
            return Tracked::Policy;
        }
        let passes = s.verdict == verdict::ALLOW || s.verdict == verdict::LOG;
        if icmp_of_family(l.family, l.proto) && quote::is_error(l) {
            return self.related(s, passes);
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
            if !quote::is_echo(p, h[0]) {
                return Tracked::Policy;
            }
            opening = h[0] == quote::ICMP_ECHO_REQUEST || h[0] == quote::ICMPV6_ECHO_REQUEST;
            let id = u16::from_be_bytes([h[4], h[5]]);
            (id, id)
        } else {
            return Tracked::Policy;
        };
        let rst = ct_rules::is_rst(p, flags);
        let (fam, src, dst) = normalized(l.family, &l.src, &l.dst);
        let (me, them) = ((src, sport), (dst, dport));
        let key = Key::of(fam, p, me, them);
        let opens = ct_rules::opens(s.verdict, s.ct);
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

    /// The ICMP error `s` (`passes`: by the policy), as the kernel's
    /// `conntrack::related` judges it: in a pair that lets related errors
    /// through, not a fragment, the packet it quotes readable, that
    /// packet's source the error's destination (same family, as keyed),
    /// and its flow tracked (either direction).
    fn related(&self, s: &Seen, passes: bool) -> Tracked {
        let l = s.layer;
        if s.ct & ct::REPLIES == 0 || l.fragment || l.ext_too_deep {
            return Tracked::Policy;
        }
        let no_tunnels = |_: u16| tunnel::NONE;
        let frame = SliceFrame::new(s.frame, Skb::default(), &no_tunnels);
        let mut q = Quoted::default();
        if walked::quoted(&frame, l, &mut q).is_none() {
            return Tracked::Policy;
        }
        let (fam, _, to) = normalized(l.family, &l.src, &l.dst);
        let (qfam, qsrc, qdst) = normalized(l.family, &q.src, &q.dst);
        if fam != qfam || to != qsrc {
            return Tracked::Policy;
        }
        let key = Key::of(qfam, q.proto, (qsrc, q.sport), (qdst, q.dport));
        match self.flows.get(&key) {
            Some(f) => Tracked::Related {
                opened_by: f.opened_by,
                rule: f.rule,
            },
            None if !passes => Tracked::MaybeRelated,
            None => Tracked::Policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envfence_ebpf::ct_rules::TCP_RST;

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

    /// An IPv4 ICMP error (type 3) from `src` to `dst` at offset 34 of an
    /// Ethernet frame, quoting a TCP header of `q` (src, dst, sport,
    /// dport).
    fn icmp_error(src: u8, dst: u8, q: (u8, u8, u16, u16)) -> (Vec<u8>, Layer) {
        let mut frame = vec![0u8; 34 + 8 + 20 + 8];
        let inner = 34 + 8;
        frame[inner] = 0x45;
        frame[inner + 9] = proto::TCP;
        frame[inner + 12..inner + 16].copy_from_slice(&[10, 0, 0, q.0]);
        frame[inner + 16..inner + 20].copy_from_slice(&[10, 0, 0, q.1]);
        frame[inner + 20..inner + 22].copy_from_slice(&q.2.to_be_bytes());
        frame[inner + 22..inner + 24].copy_from_slice(&q.3.to_be_bytes());
        let mut l = Layer {
            family: family::V4,
            proto: proto::ICMP,
            l4: L4::Other,
            sport: 3,
            dport: 3,
            l4_off: 34,
            ..Layer::default()
        };
        l.src[..4].copy_from_slice(&[10, 0, 0, src]);
        l.dst[..4].copy_from_slice(&[10, 0, 0, dst]);
        (frame, l)
    }

    #[test]
    fn icmp_errors_quoting_flows_opened_in_the_capture() {
        let mut t = Tracker::default();
        let both = ct::OPENS | ct::REPLIES;
        let syn = tcp(1, 2, 40000, 53, TCP_SYN);
        // Before the flow: it may be the kernel's (opened before).
        let to_opener = icmp_error(9, 1, (1, 2, 40000, 53));
        assert_eq!(
            t.track(1, &seen(&to_opener, verdict::DROP, both)),
            Tracked::MaybeRelated
        );
        t.track(2, &seen(&syn, verdict::ALLOW, both));
        // Quoting the opener's packet, back to the opener: related.
        assert_eq!(
            t.track(3, &seen(&to_opener, verdict::DROP, both)),
            Tracked::Related {
                opened_by: 2,
                rule: 7
            }
        );
        // ... also when the policy passes it (the kernel says related).
        assert_eq!(
            t.track(4, &seen(&to_opener, verdict::ALLOW, both)),
            Tracked::Related {
                opened_by: 2,
                rule: 7
            }
        );
        // Quoting the responder's packet, back to the responder: related.
        let to_responder = icmp_error(9, 2, (2, 1, 53, 40000));
        assert!(matches!(
            t.track(5, &seen(&to_responder, verdict::DROP, both)),
            Tracked::Related { opened_by: 2, .. }
        ));
        // Not sent to the quoted packet's source: judged by the policy.
        let elsewhere = icmp_error(9, 2, (1, 2, 40000, 53));
        assert_eq!(
            t.track(6, &seen(&elsewhere, verdict::DROP, both)),
            Tracked::Policy
        );
        // Quoting another flow: maybe the kernel's, when dropped.
        let other = icmp_error(9, 1, (1, 2, 40001, 53));
        assert_eq!(
            t.track(7, &seen(&other, verdict::DROP, both)),
            Tracked::MaybeRelated
        );
        assert_eq!(
            t.track(8, &seen(&other, verdict::ALLOW, both)),
            Tracked::Policy
        );
        // A pair that lets no reply through, or a quote cut short.
        assert_eq!(
            t.track(9, &seen(&to_opener, verdict::DROP, ct::OPENS)),
            Tracked::Policy
        );
        let mut cut = icmp_error(9, 1, (1, 2, 40000, 53));
        cut.0.truncate(34 + 8 + 20 + 2);
        assert_eq!(
            t.track(10, &seen(&cut, verdict::DROP, both)),
            Tracked::Policy
        );
    }
}
