//! A stateful reference model of envfence's connection tracking: a sequence
//! of frames in, a verdict per frame out. Written from the rules in the
//! README ("Connection tracking"), not from the kernel code: it walks the
//! frame's headers itself (for TCP flags, ICMP echo identifiers and the
//! packets ICMP errors quote), takes each packet's policy verdict from the
//! stateless reference classifier (`envfence::policy::reference`), and
//! decides "tracked pair" from the policy's verdicts (is every packet of
//! the pair allowed?), not from the compiled flags.
//!
//! Time is whatever the caller passes (`CLOCK_MONOTONIC` nanoseconds, the
//! kernel's clock); the differential tests age flows explicitly
//! ([`Model::age`]) and mirror the change in the kernel's table.

use std::collections::HashMap;
use std::net::IpAddr;

use envfence::policy::{reference, CompiledPolicy, L4};
use envfence_ebpf::{proto, verdict};

/// One endpoint: (address bytes, IPv4 in the first 4; port).
type End = ([u8; 16], u16);

/// A flow's key: both endpoints, smaller first, protocol and family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub a: End,
    pub b: End,
    pub proto: u8,
    pub v4: bool,
}

/// TCP state as the README names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Non-TCP: only the opener has sent.
    New,
    /// Non-TCP: a reply was seen.
    Replied,
    SynSent,
    Established,
}

/// A tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The opener's endpoint.
    pub opener: End,
    pub state: State,
    pub fin_opener: bool,
    pub fin_responder: bool,
    pub expires: u64,
    pub last_seen: u64,
    /// Model generation the flow was judged under.
    pub generation: u64,
    pub rule: u16,
    pub verdict: u8,
    pub src_env: u32,
    pub dst_env: u32,
}

/// What the model says of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    /// Passed.
    pub pass: bool,
    /// Verdict, source and destination environment (None: not judged).
    pub judged: Option<(u8, u32, u32)>,
    pub rule: u16,
}

/// Statistics the kernel counts too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub new: u64,
    pub full: u64,
    pub policy_ended: u64,
    pub reset: u64,
    pub expired: u64,
    pub replies: u64,
    pub related: u64,
}

/// The model.
pub struct Model {
    pub flows: HashMap<FlowId, Flow>,
    /// Timeouts in seconds: tcp_syn, tcp_established, tcp_fin_wait,
    /// tcp_closed, udp, sctp, icmp.
    pub timeouts: [u32; 7],
    pub capacity: usize,
    pub generation: u64,
    pub stats: Stats,
}

/// What the model reads of a packet above IP.
struct Above {
    /// TCP flags (TCP only).
    tcp_flags: Option<u8>,
    /// ICMP type and, for echo, its identifier.
    icmp: Option<(u8, Option<u16>)>,
    /// Offset of the L4 header.
    off: usize,
}

const MAX_OFFSET: usize = 448;

fn read(frame: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    if off > MAX_OFFSET {
        return None;
    }
    frame.get(off..off + n)
}

/// The L4 header's offset, walking Ethernet, VLAN tags, IPv4 options and
/// IPv6 extension headers (None: not a frame this model tracks).
fn l4_offset(frame: &[u8]) -> Option<usize> {
    let mut off = 12;
    let mut et = u16::from_be_bytes(read(frame, off, 2)?.try_into().ok()?);
    off += 2;
    let mut tags = 0;
    while et == 0x8100 || et == 0x88a8 {
        tags += 1;
        if tags > 2 {
            return None;
        }
        et = u16::from_be_bytes(read(frame, off + 2, 2)?.try_into().ok()?);
        off += 4;
    }
    match et {
        0x0800 => {
            let h = read(frame, off, 20)?;
            Some(off + usize::from(h[0] & 0x0f) * 4)
        }
        0x86dd => {
            let h = read(frame, off, 40)?;
            let mut next = h[6];
            off += 40;
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        let e = read(frame, off, 8)?;
                        next = e[0];
                        off += (usize::from(e[1]) + 1) * 8;
                    }
                    44 => {
                        let e = read(frame, off, 8)?;
                        next = e[0];
                        off += 8;
                    }
                    51 => {
                        let e = read(frame, off, 8)?;
                        next = e[0];
                        off += (usize::from(e[1]) + 2) * 4;
                    }
                    _ => return Some(off),
                }
            }
            None
        }
        _ => None,
    }
}

fn above(frame: &[u8], j: &reference::Judgement) -> Option<Above> {
    let off = l4_offset(frame)?;
    let icmp_proto = if j.family == envfence_ebpf::family::V4 {
        proto::ICMP
    } else {
        proto::ICMPV6
    };
    if j.proto == proto::TCP {
        let f = read(frame, off + 12, 2)?;
        return Some(Above {
            tcp_flags: Some(f[1]),
            icmp: None,
            off,
        });
    }
    if j.proto == icmp_proto {
        let h = read(frame, off, 8)?;
        let echo = is_echo(icmp_proto, h[0]);
        return Some(Above {
            tcp_flags: None,
            icmp: Some((h[0], echo.then(|| u16::from_be_bytes([h[4], h[5]])))),
            off,
        });
    }
    Some(Above {
        tcp_flags: None,
        icmp: None,
        off,
    })
}

fn is_echo(icmp: u8, t: u8) -> bool {
    if icmp == proto::ICMP {
        t == 8 || t == 0
    } else {
        t == 128 || t == 129
    }
}

fn is_echo_request(t: u8) -> bool {
    t == 8 || t == 128
}

fn is_error(icmp: u8, t: u8) -> bool {
    if icmp == proto::ICMP {
        matches!(t, 3 | 11 | 12)
    } else {
        (1..=4).contains(&t)
    }
}

/// Address bytes as the table keys them (IPv4-mapped pairs as IPv4).
fn keyed(src: IpAddr, dst: IpAddr) -> ([u8; 16], [u8; 16], bool) {
    let b = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(&v.octets());
            (x, true)
        }
        IpAddr::V6(v) => (v.octets(), false),
    };
    let mapped = |a: IpAddr| match a {
        IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4),
        _ => None,
    };
    if let (Some(s), Some(d)) = (mapped(src), mapped(dst)) {
        let ((s, _), (d, _)) = (b(s), b(d));
        return (s, d, true);
    }
    let ((s, v4), (d, _)) = (b(src), b(dst));
    (s, d, v4)
}

/// The flow id of a packet from `src` to `dst`, and whether the packet
/// comes from endpoint `a`.
pub fn flow_id(src: End, dst: End, proto: u8, v4: bool) -> (FlowId, bool) {
    if src <= dst {
        (
            FlowId {
                a: src,
                b: dst,
                proto,
                v4,
            },
            true,
        )
    } else {
        (
            FlowId {
                a: dst,
                b: src,
                proto,
                v4,
            },
            false,
        )
    }
}

impl Model {
    pub fn new(timeouts: [u32; 7], capacity: usize) -> Model {
        Model {
            flows: HashMap::new(),
            timeouts,
            capacity,
            generation: 1,
            stats: Stats::default(),
        }
    }

    /// A policy change: every flow is judged again at its next packet.
    pub fn reloaded(&mut self) {
        self.generation += 1;
    }

    /// Makes `id` expired (the tests rewrite the kernel's entry likewise).
    pub fn age(&mut self, id: &FlowId) {
        if let Some(f) = self.flows.get_mut(id) {
            f.expires = 1;
        }
    }

    /// Records the judgement `j` of the opener's packet at `now` in `f`.
    fn stamp(&self, f: &mut Flow, j: &reference::Judgement, now: u64) {
        f.generation = self.generation;
        (f.rule, f.verdict) = (j.rule, j.verdict);
        (f.src_env, f.dst_env) = (j.src_env, j.dst_env);
        f.last_seen = now;
        f.expires = now + self.timeout(j.proto, f);
    }

    fn timeout(&self, p: u8, f: &Flow) -> u64 {
        let i = if p == proto::TCP {
            if f.fin_opener && f.fin_responder {
                3
            } else if f.fin_opener || f.fin_responder {
                2
            } else if f.state == State::SynSent {
                0
            } else {
                1
            }
        } else if p == proto::UDP {
            4
        } else if p == proto::SCTP {
            5
        } else {
            6
        };
        u64::from(self.timeouts[i]) * 1_000_000_000
    }

    /// Whether every packet from `s` to `d` is allowed by `policy`.
    fn all_allowed(policy: &CompiledPolicy, s: u32, d: u32) -> bool {
        if policy.decide(s, d, L4::Other).0 != verdict::ALLOW
            || policy.decide(s, d, L4::NoPorts).0 != verdict::ALLOW
        {
            return false;
        }
        policy
            .ports
            .iter()
            .filter(|(k, _)| u32::from(k.src_env) == s && u32::from(k.dst_env) == d)
            .all(|(_, v)| v.verdict == verdict::ALLOW)
    }

    /// The policy's judgement of the flow from `opener` to `responder`:
    /// Some((verdict, rule, src env, dst env)) when it is still allowed and
    /// still tracked.
    fn rejudge(policy: &CompiledPolicy, id: &FlowId, f: &Flow) -> Option<(u8, u16, u32, u32)> {
        let other = if f.opener == id.a { id.b } else { id.a };
        let addr = |e: End| -> IpAddr {
            if id.v4 {
                IpAddr::from([e.0[0], e.0[1], e.0[2], e.0[3]])
            } else {
                IpAddr::from(e.0)
            }
        };
        let (s, _) = policy.lookup_env(addr(f.opener));
        let (d, _) = policy.lookup_env(addr(other));
        let l4 = if matches!(id.proto, proto::TCP | proto::UDP | proto::SCTP) {
            L4::Ports {
                proto: id.proto,
                dport: other.1,
            }
        } else {
            L4::Other
        };
        let (v, rule) = policy.decide(s, d, l4);
        let ok = (v == verdict::ALLOW || v == verdict::LOG) && !Self::all_allowed(policy, d, s);
        ok.then_some((v, rule, s, d))
    }

    /// Re-judges flow `id` when the policy changed since it was last
    /// judged: false when the new policy ends it (removed and counted).
    fn still_allowed(&mut self, policy: &CompiledPolicy, id: &FlowId, f: &mut Flow) -> bool {
        if f.generation == self.generation {
            return true;
        }
        let Some((v, rule, se, de)) = Self::rejudge(policy, id, f) else {
            self.flows.remove(id);
            self.stats.policy_ended += 1;
            return false;
        };
        f.generation = self.generation;
        (f.verdict, f.rule, f.src_env, f.dst_env) = (v, rule, se, de);
        true
    }

    /// Judges one frame at time `now`.
    pub fn judge(&mut self, frame: &[u8], policy: &CompiledPolicy, now: u64) -> Said {
        let outcome = reference::classify(frame, policy);
        let pass_of = |v: u8| v != verdict::DROP;
        let j = match &outcome {
            reference::Outcome::Judged(j) => j.clone(),
            other => {
                return Said {
                    pass: other.passes(policy),
                    judged: None,
                    rule: 0,
                }
            }
        };
        let policy_said = Said {
            pass: pass_of(j.verdict),
            judged: Some((j.verdict, j.src_env, j.dst_env)),
            rule: j.rule,
        };
        if j.tunneled || j.fragment || j.ext_too_deep || j.routed {
            return policy_said;
        }
        let replies = !Self::all_allowed(policy, j.src_env, j.dst_env);
        let opens_pair = !Self::all_allowed(policy, j.dst_env, j.src_env);
        if !replies && !opens_pair {
            return policy_said;
        }
        let Some(ab) = above(frame, &j) else {
            return policy_said;
        };
        let icmp_proto = if j.family == envfence_ebpf::family::V4 {
            proto::ICMP
        } else {
            proto::ICMPV6
        };
        let (sport, dport) = if matches!(j.proto, proto::TCP | proto::UDP | proto::SCTP) {
            if j.l4 != reference::L4Seen::Ports || (j.proto == proto::TCP && ab.tcp_flags.is_none())
            {
                return policy_said;
            }
            (j.sport, j.dport)
        } else if j.proto == icmp_proto {
            match ab.icmp {
                Some((t, _)) if is_error(icmp_proto, t) => {
                    if !replies {
                        return policy_said;
                    }
                    return self.related(frame, &j, &ab, policy, now, policy_said);
                }
                Some((_, Some(id))) => (id, id),
                _ => return policy_said,
            }
        } else {
            return policy_said;
        };
        let (s, d, v4) = keyed(j.src, j.dst);
        let (id, _) = flow_id((s, sport), (d, dport), j.proto, v4);
        let me: End = (s, sport);
        let flags = ab.tcp_flags.unwrap_or(0);
        let rst = j.proto == proto::TCP && flags & 0x04 != 0;
        let syn_only = j.proto == proto::TCP && flags & 0x02 != 0 && flags & 0x10 == 0;
        let fin = j.proto == proto::TCP && flags & 0x01 != 0;
        let opens = (j.verdict == verdict::ALLOW || j.verdict == verdict::LOG) && opens_pair;

        if let Some(f) = self.flows.get(&id).copied() {
            let live = now < f.expires;
            let from_opener = f.opener == me;
            if !live {
                self.stats.expired += 1;
            } else if !from_opener {
                let opening = syn_only || matches!(ab.icmp, Some((t, _)) if is_echo_request(t));
                if opening || !replies {
                    return policy_said;
                }
                let mut f = f;
                if !self.still_allowed(policy, &id, &mut f) {
                    return policy_said;
                }
                self.stats.replies += 1;
                let said = Said {
                    pass: true,
                    judged: Some((verdict::REPLY, j.src_env, j.dst_env)),
                    rule: f.rule,
                };
                if rst {
                    self.flows.remove(&id);
                    self.stats.reset += 1;
                    return said;
                }
                if j.proto == proto::TCP {
                    if f.state == State::SynSent {
                        f.state = State::Established;
                    }
                    if fin {
                        f.fin_responder = true;
                    }
                } else {
                    f.state = State::Replied;
                }
                f.last_seen = now;
                f.expires = now + self.timeout(j.proto, &f);
                self.flows.insert(id, f);
                return said;
            }
            // From the opener, or the entry expired.
            if !opens || rst {
                self.flows.remove(&id);
                if live {
                    if opens {
                        self.stats.reset += 1;
                    } else {
                        self.stats.policy_ended += 1;
                    }
                }
                return policy_said;
            }
            let mut f = f;
            if live {
                self.opener_packet(&mut f, j.proto, syn_only, fin);
            } else {
                f = self.fresh(me, j.proto, syn_only, fin);
                self.stats.new += 1;
            }
            self.stamp(&mut f, &j, now);
            self.flows.insert(id, f);
            return policy_said;
        }
        if !opens || rst {
            return policy_said;
        }
        if self.flows.len() >= self.capacity {
            self.stats.full += 1;
            return policy_said;
        }
        let mut f = self.fresh(me, j.proto, syn_only, fin);
        self.stamp(&mut f, &j, now);
        self.flows.insert(id, f);
        self.stats.new += 1;
        policy_said
    }

    fn fresh(&self, me: End, p: u8, syn_only: bool, fin: bool) -> Flow {
        let mut f = Flow {
            opener: me,
            state: if p == proto::TCP {
                State::Established
            } else {
                State::New
            },
            fin_opener: false,
            fin_responder: false,
            expires: 0,
            last_seen: 0,
            generation: 0,
            rule: 0,
            verdict: 0,
            src_env: 0,
            dst_env: 0,
        };
        self.opener_packet(&mut f, p, syn_only, fin);
        f
    }

    fn opener_packet(&self, f: &mut Flow, p: u8, syn_only: bool, fin: bool) {
        if p != proto::TCP {
            return;
        }
        if syn_only {
            f.state = State::SynSent;
            f.fin_opener = false;
            f.fin_responder = false;
        } else if fin {
            f.fin_opener = true;
        }
    }

    fn related(
        &mut self,
        frame: &[u8],
        j: &reference::Judgement,
        ab: &Above,
        policy: &CompiledPolicy,
        now: u64,
        policy_said: Said,
    ) -> Said {
        let q = ab.off + 8;
        let v4 = j.family == envfence_ebpf::family::V4;
        let (qsrc, qdst, qproto, l4) = if v4 {
            let Some(h) = read(frame, q, 20) else {
                return policy_said;
            };
            let ihl = usize::from(h[0] & 0x0f);
            if h[0] >> 4 != 4 || ihl < 5 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return policy_said;
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap_or_default();
            let d: [u8; 4] = h[16..20].try_into().unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), h[9], q + ihl * 4)
        } else {
            let Some(h) = read(frame, q, 40) else {
                return policy_said;
            };
            if h[0] >> 4 != 6 {
                return policy_said;
            }
            let s: [u8; 16] = h[8..24].try_into().unwrap_or_default();
            let d: [u8; 16] = h[24..40].try_into().unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), h[6], q + 40)
        };
        let icmp_proto = if v4 { proto::ICMP } else { proto::ICMPV6 };
        let (sp, dp) = if matches!(qproto, proto::TCP | proto::UDP | proto::SCTP) {
            let Some(p) = read(frame, l4, 4) else {
                return policy_said;
            };
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        } else if qproto == icmp_proto {
            let Some(e) = read(frame, l4, 8) else {
                return policy_said;
            };
            if !is_echo(icmp_proto, e[0]) {
                return policy_said;
            }
            let id = u16::from_be_bytes([e[4], e[5]]);
            (id, id)
        } else {
            return policy_said;
        };
        let (qs, qd, qv4) = keyed(qsrc, qdst);
        let (_, od, ov4) = keyed(j.src, j.dst);
        if qv4 != ov4 || od != qs {
            return policy_said;
        }
        let (id, _) = flow_id((qs, sp), (qd, dp), qproto, qv4);
        let Some(mut f) = self.flows.get(&id).copied() else {
            return policy_said;
        };
        if now >= f.expires {
            return policy_said;
        }
        if !self.still_allowed(policy, &id, &mut f) {
            return policy_said;
        }
        self.flows.insert(id, f);
        self.stats.related += 1;
        Said {
            pass: true,
            judged: Some((verdict::RELATED, j.src_env, j.dst_env)),
            rule: f.rule,
        }
    }
}
