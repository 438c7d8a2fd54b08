//! Connection tracking: flows the policy let through, so that their
//! replies pass where the reverse direction's rule says otherwise, and
//! nothing else rides on them.
//!
//! The rules (the README's "Connection tracking" section says the same for
//! users; `tests/src/ctmodel.rs` models them independently):
//! - Only packets that are not tunnelled, carry no IPv6 routing header with
//!   a final destination, are not non-first fragments and whose
//!   ports (TCP with readable flags, UDP, SCTP) or ICMP echo identifier are
//!   readable are tracked; everything else is judged by the policy alone.
//! - A packet is looked at only when its environment pair is not allowed
//!   for every packet (`ct::REPLIES`) or may open a tracked flow
//!   (`ct::OPENS`): pairs allowed both ways keep the fast path.
//! - A packet the policy passes with `allow` or `log` in a pair that
//!   `OPENS` creates or refreshes its flow, as its opener (a TCP RST never
//!   opens and ends the flow). A packet from the opener's side that the
//!   policy in force no longer passes ends the flow.
//! - A packet from the other side of a live flow is a reply (verdict
//!   `reply`, passed) unless it could open a connection itself (a TCP SYN
//!   without ACK, an ICMP echo request): those are judged by the policy.
//!   A RST reply passes and ends the flow; FINs move it to closing.
//! - An ICMP error quoting a packet of a live flow, sent to that packet's
//!   source, is `related` (passed); other errors are judged by the policy.
//! - An entry judged under another policy generation is judged again by
//!   the policy in force (its opener's packet as the policy would see it)
//!   before it lets anything through: a reload that forbids the flow ends
//!   it, one that keeps it allowed refreshes it.
//! - An entry expires `ct_timeout_s[timeout_index(proto, state)]` after its
//!   last refresh; an expired entry is treated as absent.
//! - A full table costs the state, never the verdict: the flow is judged
//!   without state (its replies by the policy) and counted.

use aya_ebpf::{
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use envfence_ebpf::ct_rules::{self, TCP_ACK, TCP_FIN, TCP_SYN};
use envfence_ebpf::{
    abi_map, capacity, ct, family, proto, quote, slot_pair_index, stat, verdict,
    walk::{Layer, L4},
    CtEntry, CtKey, FlowKey,
};

use crate::programs::{bump_stat, decide_parts, is_v4_mapped, lookup_env, Active, CONFIG, PAIRS};
use crate::skb::{
    walk::{bytes_at, quoted},
    Skb,
};

abi_map!(
    CONNTRACK,
    static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(capacity::CONNTRACK, 0);
);

/// Per-CPU scratch space of the tracker (the BPF stack is shared with the
/// calling program: 512 bytes for the whole call chain).
pub struct Scratch {
    pub key: CtKey,
    /// The packet's addresses as keyed.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// What an ICMP error quotes.
    pub quoted: quote::Quoted,
    /// The forward flow of a reply of a `log` flow, as its reports name it.
    pub fwd: FlowKey,
}

abi_map!(
    CT_SCRATCH,
    pub static CT_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
);

/// `BPF_NOEXIST`: insert only a new key (a full table then fails).
const BPF_NOEXIST: u64 = 1;

/// What the tracker says about a packet: the policy's verdict stands, or
/// the packet is a reply or related to a tracked flow.
#[derive(Clone, Copy)]
pub struct Track {
    /// `verdict::REPLY`, `verdict::RELATED`, or 0 (the policy's verdict
    /// stands).
    pub verdict: u8,
    /// The flow's forward verdict (`allow` or `log`).
    pub flow_verdict: u8,
    /// The rule that allowed the flow.
    pub rule: u16,
    /// The environments of the flow's opener and responder.
    pub src_env: u8,
    pub dst_env: u8,
}

impl Track {
    const POLICY: Track = Track {
        verdict: 0,
        flow_verdict: 0,
        rule: 0,
        src_env: 0,
        dst_env: 0,
    };

    #[inline(always)]
    fn hit(v: u8, e: &CtEntry) -> Track {
        Track {
            verdict: v,
            flow_verdict: e.verdict,
            rule: e.rule,
            src_env: e.src_env,
            dst_env: e.dst_env,
        }
    }
}

/// The policy's judgement of the packet, as the tracker needs it.
#[derive(Clone, Copy)]
pub struct Policy {
    pub src_env: u32,
    pub dst_env: u32,
    pub verdict: u8,
    pub rule: u16,
    /// The pair's `ct` flags.
    pub flags: u8,
}

/// An endpoint pair as the table keys it, into `out`: IPv4-mapped IPv6
/// addresses (both of them) as IPv4. Returns the keyed family.
#[inline(always)]
fn normalized(fam: u8, src: &[u8; 16], dst: &[u8; 16], out: (&mut [u8; 16], &mut [u8; 16])) -> u8 {
    let (s, d) = out;
    if fam == family::V6 && is_v4_mapped(src) && is_v4_mapped(dst) {
        *s = [0u8; 16];
        *d = [0u8; 16];
        s[..4].copy_from_slice(&src[12..16]);
        d[..4].copy_from_slice(&dst[12..16]);
        return family::V4;
    }
    *s = *src;
    *d = *dst;
    fam
}

#[inline(always)]
fn words(a: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// The key of a packet from (`src`, `sport`) to (`dst`, `dport`), and
/// whether the packet comes from endpoint `a`.
#[inline(always)]
fn key_of(
    key: &mut CtKey,
    fam: u8,
    p: u8,
    ends: (&[u8; 16], &[u8; 16]),
    sport: u16,
    dport: u16,
) -> bool {
    let (src, dst) = ends;
    let (s0, s1) = words(src);
    let (d0, d1) = words(dst);
    let from_a = if s0 != d0 {
        s0 < d0
    } else if s1 != d1 {
        s1 < d1
    } else {
        sport <= dport
    };
    if from_a {
        key.a = *src;
        key.b = *dst;
        key.port_a = sport;
        key.port_b = dport;
    } else {
        key.a = *dst;
        key.b = *src;
        key.port_a = dport;
        key.port_b = sport;
    }
    key.proto = p;
    key.family = fam;
    key._pad = [0; 2];
    from_a
}

/// When an entry of `p` in `state`, refreshed `now`, expires.
#[inline(always)]
fn expiry(now: u64, p: u8, state: u8) -> u64 {
    let i = ct::timeout_index(p, state) & 7;
    let secs = CONFIG.get(0).map_or(0, |c| c.ct_timeout_s[i]);
    now + u64::from(secs) * 1_000_000_000
}

/// The state after a packet from the opener with TCP flags `f`.
#[inline(always)]
fn after_opener(p: u8, state: u8, f: u8) -> u8 {
    if p != proto::TCP {
        return state;
    }
    if f & TCP_SYN != 0 && f & TCP_ACK == 0 {
        return ct::TCP_SYN_SENT;
    }
    if f & TCP_FIN != 0 {
        return state | ct::FIN_OPENER;
    }
    state
}

/// The state after a reply with TCP flags `f`.
#[inline(always)]
fn after_reply(p: u8, state: u8, f: u8) -> u8 {
    if p != proto::TCP {
        return ct::REPLIED;
    }
    let mut s = state;
    if s & ct::BASE_MASK == ct::TCP_SYN_SENT {
        s = ct::TCP_ESTABLISHED | (s & !ct::BASE_MASK);
    }
    if f & TCP_FIN != 0 {
        s |= ct::FIN_RESPONDER;
    }
    s
}

/// Whether ICMP (`p`, in a packet of family `fam`) is the ICMP of that
/// family.
#[inline(always)]
fn icmp_of_family(fam: u8, p: u8) -> bool {
    (p == proto::ICMP && fam == family::V4) || (p == proto::ICMPV6 && fam == family::V6)
}

/// The flow's opener side of `key`: (src, sport, dst, dport).
#[inline(always)]
fn opener_side<'k>(key: &'k CtKey, e: &CtEntry) -> (&'k [u8; 16], u16, &'k [u8; 16], u16) {
    if e.opener == ct::SIDE_A {
        (&key.a, key.port_a, &key.b, key.port_b)
    } else {
        (&key.b, key.port_b, &key.a, key.port_a)
    }
}

/// The flow as its forward packets' reports name it.
#[inline(always)]
fn forward_flow(key: &CtKey, e: &CtEntry, out: &mut FlowKey) {
    let (src, sport, dst, dport) = opener_side(key, e);
    let (sport, dport) = if key.proto == proto::ICMP {
        (u16::from(quote::ICMP_ECHO_REQUEST), 0)
    } else if key.proto == proto::ICMPV6 {
        (u16::from(quote::ICMPV6_ECHO_REQUEST), 0)
    } else {
        (sport, dport)
    };
    out.src = *src;
    out.dst = *dst;
    out.sport = sport;
    out.dport = dport;
    out.proto = key.proto;
    out.family = key.family;
    out.verdict = e.verdict;
    out._pad = 0;
}

/// Judges the flow of `e` again under the policy in force (its opener's
/// packet as the policy sees it): true, and the entry updated, when it is
/// still allowed and still tracked.
#[inline(always)]
fn rejudge(key: &CtKey, e: &mut CtEntry, active: &Active) -> bool {
    let (src, _, dst, dport) = opener_side(key, e);
    let s = lookup_env(key.family, src, active.slot);
    let d = lookup_env(key.family, dst, active.slot);
    let l4 = if key.proto == proto::TCP || key.proto == proto::UDP || key.proto == proto::SCTP {
        L4::Ports
    } else {
        L4::Other
    };
    let (v, rule, _) = decide_parts(s, d, l4, key.proto, dport, active.slot);
    let flags = PAIRS
        .get(slot_pair_index(active.slot, s, d))
        .map_or(0, |p| p.ct);
    if (v != verdict::ALLOW && v != verdict::LOG) || flags & ct::OPENS == 0 {
        return false;
    }
    e.generation = active.generation;
    e.rule = rule;
    e.verdict = v;
    e.src_env = s as u8;
    e.dst_env = d as u8;
    true
}

#[inline(always)]
fn remove(key: &CtKey, why: u32) {
    let _ = CONNTRACK.remove(key);
    bump_stat(why);
}

/// Looks the packet `layer` up and updates its flow; `judged` is what the
/// policy says of it, `now` the packet's time (`bpf_ktime_get_ns`, read
/// once per packet: its report uses it too). For a reply or related
/// packet of a `log` flow, `fwd` is set to the flow as its reports name
/// it.
#[inline(never)]
pub fn track(ctx: &TcContext, layer: &Layer, judged: &Policy, active: &Active, now: u64) -> Track {
    let active = *active;
    let frame = Skb::new(ctx);
    let Some(sc) = CT_SCRATCH.get_ptr_mut(0) else {
        return Track::POLICY;
    };
    // SAFETY: this CPU's scratch slot; TC programs do not migrate.
    let sc = unsafe { &mut *sc };
    if layer.fragment || layer.ext_too_deep {
        return Track::POLICY;
    }
    let p = layer.proto;
    let mut tcp_flags = 0u8;
    let mut icmp_type = 0u8;
    let (sport, dport) = if p == proto::TCP || p == proto::UDP || p == proto::SCTP {
        if layer.l4 != L4::Ports {
            return Track::POLICY;
        }
        if p == proto::TCP {
            let Some(h) = bytes_at::<2>(frame, layer.l4_off + 12) else {
                return Track::POLICY;
            };
            tcp_flags = h[1];
        }
        (layer.sport, layer.dport)
    } else if icmp_of_family(layer.family, p) {
        let Some(h) = bytes_at::<8>(frame, layer.l4_off) else {
            return Track::POLICY;
        };
        if !quote::is_echo(p, h[0]) {
            return Track::POLICY;
        }
        icmp_type = h[0];
        let id = u16::from_be_bytes([h[4], h[5]]);
        (id, id)
    } else {
        return Track::POLICY;
    };
    let fam = normalized(
        layer.family,
        &layer.src,
        &layer.dst,
        (&mut sc.src, &mut sc.dst),
    );
    let from_a = key_of(&mut sc.key, fam, p, (&sc.src, &sc.dst), sport, dport);
    let key = &sc.key;
    let rst = ct_rules::is_rst(p, tcp_flags);
    let existing = CONNTRACK.get_ptr_mut(key);
    let mut live_from_opener = false;
    if let Some(e) = existing {
        // SAFETY: a live map value; plain updates (two CPUs racing on one
        // flow may lose a refresh, never a decision of the policy).
        let e = unsafe { &mut *e };
        let live = now < e.expires_ns;
        let from_opener = from_a == (e.opener == ct::SIDE_A);
        if !live {
            bump_stat(stat::CONNTRACK_EXPIRED);
        } else if !from_opener {
            let opening = if p == proto::TCP {
                tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
            } else if p == proto::ICMP || p == proto::ICMPV6 {
                icmp_type == quote::ICMP_ECHO_REQUEST || icmp_type == quote::ICMPV6_ECHO_REQUEST
            } else {
                false
            };
            if opening || judged.flags & ct::REPLIES == 0 {
                return Track::POLICY;
            }
            if e.generation != active.generation && !rejudge(key, e, &active) {
                remove(key, stat::CONNTRACK_POLICY_ENDED);
                return Track::POLICY;
            }
            if e.verdict == verdict::LOG {
                forward_flow(key, e, &mut sc.fwd);
            }
            let hit = Track::hit(verdict::REPLY, e);
            if rst {
                remove(key, stat::CONNTRACK_RESET);
                return hit;
            }
            e.state = after_reply(p, e.state, tcp_flags);
            e.last_seen_ns = now;
            e.expires_ns = expiry(now, p, e.state);
            return hit;
        } else {
            live_from_opener = true;
        }
        let v = judged.verdict;
        let opens = ct_rules::opens(v, judged.flags);
        if !opens || rst {
            // The flow ends: the policy in force no longer lets its opener
            // through, or a RST closes it (an expired entry just goes).
            let _ = CONNTRACK.remove(key);
            if live_from_opener {
                bump_stat(if opens {
                    stat::CONNTRACK_RESET
                } else {
                    stat::CONNTRACK_POLICY_ENDED
                });
            }
            return Track::POLICY;
        }
        if live_from_opener {
            e.state = after_opener(p, e.state, tcp_flags);
        } else {
            // An expired entry is reused in place by its flow's new opener.
            e.state = initial_state(p, tcp_flags);
            e.opener = if from_a { ct::SIDE_A } else { ct::SIDE_B };
            bump_stat(stat::CONNTRACK_NEW);
        }
        e.generation = active.generation;
        e.rule = judged.rule;
        e.verdict = v;
        e.src_env = judged.src_env as u8;
        e.dst_env = judged.dst_env as u8;
        e.last_seen_ns = now;
        e.expires_ns = expiry(now, p, e.state);
        return Track::POLICY;
    }
    let v = judged.verdict;
    if !ct_rules::opens(v, judged.flags) || rst {
        return Track::POLICY;
    }
    let state = initial_state(p, tcp_flags);
    let entry = CtEntry {
        last_seen_ns: now,
        expires_ns: expiry(now, p, state),
        generation: active.generation,
        rule: judged.rule,
        verdict: v,
        state,
        opener: if from_a { ct::SIDE_A } else { ct::SIDE_B },
        src_env: judged.src_env as u8,
        dst_env: judged.dst_env as u8,
        _pad: 0,
        _pad2: 0,
    };
    if CONNTRACK.insert(key, entry, BPF_NOEXIST).is_ok() {
        bump_stat(stat::CONNTRACK_NEW);
    } else {
        bump_stat(stat::CONNTRACK_FULL);
    }
    Track::POLICY
}

/// The state of a flow opened by a packet with TCP flags `f`.
#[inline(always)]
fn initial_state(p: u8, f: u8) -> u8 {
    if p == proto::TCP {
        after_opener(p, ct::TCP_ESTABLISHED, f)
    } else {
        ct::NEW
    }
}

/// Whether the tracker handles `layer` as an ICMP error ([`related`]).
#[inline(always)]
pub fn is_icmp_error(layer: &Layer) -> bool {
    icmp_of_family(layer.family, layer.proto) && quote::is_error(layer)
}

/// An ICMP error: related when it quotes a packet of a live flow and goes
/// back to that packet's source (`now`: as in [`track`]).
#[inline(never)]
pub fn related(
    ctx: &TcContext,
    layer: &Layer,
    judged: &Policy,
    active: &Active,
    now: u64,
) -> Track {
    let active = *active;
    if judged.flags & ct::REPLIES == 0 || layer.fragment || layer.ext_too_deep {
        return Track::POLICY;
    }
    let Some(sc) = CT_SCRATCH.get_ptr_mut(0) else {
        return Track::POLICY;
    };
    // SAFETY: this CPU's scratch slot; TC programs do not migrate.
    let sc = unsafe { &mut *sc };
    if quoted(Skb::new(ctx), layer, &mut sc.quoted).is_none() {
        return Track::POLICY;
    }
    // The error's destination, as keyed (compared as two words: a 16-byte
    // compare would be lowered to 128-bit operations the BPF backend cannot
    // emit).
    let ofam = normalized(
        layer.family,
        &layer.src,
        &layer.dst,
        (&mut sc.src, &mut sc.dst),
    );
    let odst = words(&sc.dst);
    let q = &sc.quoted;
    let qfam = normalized(layer.family, &q.src, &q.dst, (&mut sc.src, &mut sc.dst));
    if ofam != qfam || odst != words(&sc.src) {
        return Track::POLICY;
    }
    let q = &sc.quoted;
    key_of(
        &mut sc.key,
        qfam,
        q.proto,
        (&sc.src, &sc.dst),
        q.sport,
        q.dport,
    );
    let key = &sc.key;
    let Some(e) = CONNTRACK.get_ptr_mut(key) else {
        return Track::POLICY;
    };
    // SAFETY: a live map value.
    let e = unsafe { &mut *e };
    if now >= e.expires_ns {
        return Track::POLICY;
    }
    if e.generation != active.generation && !rejudge(key, e, &active) {
        remove(key, stat::CONNTRACK_POLICY_ENDED);
        return Track::POLICY;
    }
    if e.verdict == verdict::LOG {
        forward_flow(key, e, &mut sc.fwd);
    }
    Track::hit(verdict::RELATED, e)
}
