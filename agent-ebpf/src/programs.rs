//! The maps and the TC programs: the two hooks (tcx ingress and egress),
//! which walk the headers (`envfence_ebpf::walk`, over [`crate::skb`])
//! into the per-CPU scratch packet, and the decision stage they tail-call,
//! which judges it (`envfence_ebpf::decide` over the policy maps), tracks,
//! counts and reports.

use aya_ebpf::{
    bindings::{tcx_action_base::TCX_NEXT, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use envfence_ebpf::{
    abi_global, abi_map, capacity,
    classify::{walk, walk_pair, Address, TrieTables},
    config_flags, counter_index,
    decide::{decide, Tables},
    direction, parse_limits, rule_counter_index, slot_pair_index, source, stat, tag, trie, verdict,
    verdict_slot,
    walk::{non_ip_stat, Layer, Packet, Reject, ENCAP_MPLS, ENCAP_PPPOE, L4},
    CachedVerdict, Chunk, Config, Counter, Event, FlowKey, FlowState, IfConfig, PairVerdict,
    PeerKey, PortKey, RuleVerdict, TriePrefix, TunnelPorts, VerdictKey, VerdictSlot, COUNTERS_LEN,
    MAX_ENVS, PAIRS_LEN, RULE_COUNTERS_LEN, RULE_SOURCE_CHECK, SLOTS, STAGE_DECIDE,
    TUNNEL_ENTRIES_PER_SLOT,
};

use crate::conntrack::{self, Track};
use crate::skb::{walk::parse, Skb};
use crate::source::Checked;

abi_map!(
    ENV_V4,
    static ENV_V4: Array<Chunk> = Array::with_max_entries(trie::CHUNKS, 0);
);
abi_map!(
    ENV_V6,
    static ENV_V6: Array<Chunk> = Array::with_max_entries(trie::CHUNKS, 0);
);
abi_map!(
    PREFIX_V4,
    static PREFIX_V4: Array<TriePrefix> = Array::with_max_entries(SLOTS * capacity::ENV_V4, 0);
);
abi_map!(
    PREFIX_V6,
    static PREFIX_V6: Array<TriePrefix> = Array::with_max_entries(SLOTS * capacity::ENV_V6, 0);
);
abi_map!(
    CLASSIFY_ARG,
    static CLASSIFY_ARG: PerCpuArray<[u64; 6]> = PerCpuArray::with_max_entries(1, 0);
);
abi_map!(
    PAIRS,
    pub(crate) static PAIRS: Array<PairVerdict> = Array::with_max_entries(SLOTS * PAIRS_LEN, 0);
);
abi_map!(
    PORTS,
    static PORTS: HashMap<PortKey, RuleVerdict> =
        HashMap::with_max_entries(SLOTS * capacity::PORTS, 0);
);
abi_map!(
    COUNTERS,
    static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
);
abi_map!(
    RULE_COUNTERS,
    static RULE_COUNTERS: PerCpuArray<Counter> =
        PerCpuArray::with_max_entries(RULE_COUNTERS_LEN, 0);
);
abi_map!(
    STATS,
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);
);
abi_map!(
    CONFIG,
    pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
);
abi_map!(
    ATTACHED,
    static ATTACHED: HashMap<u32, u32> = HashMap::with_max_entries(capacity::ATTACHED, 0);
);
abi_map!(
    IFCONF,
    static IFCONF: HashMap<u32, IfConfig> = HashMap::with_max_entries(capacity::ATTACHED, 0);
);
abi_map!(
    PEERS,
    pub(crate) static PEERS: HashMap<PeerKey, u32> = HashMap::with_max_entries(capacity::PEERS, 0);
);
abi_map!(
    FLOWS,
    static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(capacity::FLOWS, 0);
);
abi_map!(
    SCRATCH,
    /// Per-CPU scratch space for the parsed packet (too big for the stack).
    static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);
);
abi_map!(
    VERDICTS,
    /// Recent flows' verdicts (see `envfence_ebpf::VerdictSlot`).
    static VERDICTS: PerCpuArray<VerdictSlot> =
        PerCpuArray::with_max_entries(capacity::VERDICTS, 0);
);
abi_map!(
    TUNNEL_PORTS,
    /// Which UDP ports are which tunnel, per policy slot.
    pub(crate) static TUNNEL_PORTS: Array<TunnelPorts> =
        Array::with_max_entries(SLOTS * TUNNEL_ENTRIES_PER_SLOT, 0);
);
abi_map!(
    STAGES,
    /// The hooks' second stage (see `envfence_ebpf::STAGE_DECIDE`).
    static STAGES: ProgramArray = ProgramArray::with_max_entries(1, 0);
);
abi_map!(
    EVENTS,
    static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);
);

abi_global!(
    DEBUG_TAG_DECISION,
    /// Set at load time; see `envfence_ebpf::globals::DEBUG_TAG_DECISION`. Read
    /// from .rodata, so the verifier removes the tagging code when it is 0.
    static DEBUG_TAG_DECISION: u32 = 0;
);

abi_global!(
    VERDICT_CACHE,
    /// Set at load time; see `envfence_ebpf::globals::VERDICT_CACHE`.
    static VERDICT_CACHE: u32 = 1;
);

abi_global!(
    CONNTRACK,
    /// Set at load time; see `envfence_ebpf::globals::CONNTRACK`.
    static CONNTRACK: u32 = 1;
);

#[inline(always)]
fn tag(ctx: &TcContext, mark: u32) {
    // SAFETY: reading a global the loader may have overridden.
    if unsafe { core::ptr::read_volatile(&DEBUG_TAG_DECISION) } != 0 {
        ctx.set_mark(mark);
    }
}

/// `TC_ACT_SHOT` as the program returns it (the bindings' type differs by
/// target architecture).
#[allow(clippy::unnecessary_cast)]
const ACT_SHOT: i32 = TC_ACT_SHOT as i32;

const DEFAULT_REPORT_INTERVAL_NS: u64 = 1_000_000_000;

#[classifier]
pub fn envfence_ingress(ctx: TcContext) -> i32 {
    judge(&ctx, direction::INGRESS)
}

/// Does nothing: the baseline benchmarks compare envfence against.
#[classifier]
pub fn envfence_empty(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

#[classifier]
pub fn envfence_egress(ctx: TcContext) -> i32 {
    // Each packet is judged once per node: a packet that entered through an
    // attached interface was judged at that ingress already.
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if iif != 0 && unsafe { ATTACHED.get(iif) }.is_some() {
        bump_stat(stat::EGRESS_SKIPPED);
        return TCX_NEXT;
    }
    judge(&ctx, direction::EGRESS)
}

#[inline(always)]
pub(crate) fn bump_stat(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, TC programs do not migrate while running.
        unsafe { *p += 1 };
    }
}

/// The policy in force, read once per packet: everything about one packet
/// is decided by one policy.
#[derive(Clone, Copy)]
pub(crate) struct Active {
    pub slot: u32,
    pub audit: bool,
    pub generation: u32,
    pub flags: u32,
}

#[inline(always)]
fn active_policy() -> Active {
    policy_in(CONFIG.get(0).map_or(0, |c| c.active_slot))
}

/// The policy in `slot` (0 or 1).
#[inline(always)]
fn policy_in(slot: u32) -> Active {
    match CONFIG.get(0) {
        Some(c) => {
            let slot = slot & 1;
            let (audit, generation, flags) = if slot == 0 {
                (c.slot_audit_mode[0], c.slot_generation[0], c.slot_flags[0])
            } else {
                (c.slot_audit_mode[1], c.slot_generation[1], c.slot_flags[1])
            };
            Active {
                slot,
                audit: audit != 0,
                generation,
                flags,
            }
        }
        None => Active {
            slot: 0,
            audit: false,
            generation: 0,
            flags: 0,
        },
    }
}

/// The first stage of both hooks: parses the packet into this CPU's scratch
/// slot, decides on what cannot be judged, and tail-calls the decision.
#[inline(always)]
fn judge(ctx: &TcContext, dir: u8) -> i32 {
    let len = ctx.len();
    if ((ctx.data_end() - ctx.data()) as u32) < len.min(parse_limits::PULL_LEN) {
        // Ignore failure: the parser then sees what is linear and decides
        // explicitly on what it cannot read.
        let _ = ctx.pull_data(len.min(parse_limits::PULL_LEN));
    }
    let active = active_policy();
    let (slot, audit) = (active.slot, active.audit);
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        // Unreachable: a one-entry per-CPU array always has its entry.
        return malformed(stat::MALFORMED, audit);
    };
    // SAFETY: this CPU's scratch slot; TC programs do not migrate.
    let pkt = unsafe { &mut *pkt };
    match parse(Skb::new(ctx), pkt, slot) {
        Ok(()) => {}
        Err(Reject::NonIp) => {
            bump_stat(stat::NON_IP);
            bump_stat(non_ip_stat(pkt.l2_type));
            tag(ctx, tag::UNJUDGED | tag::REASON_NON_IP);
            if active.flags & config_flags::NON_IP_DROP != 0 && !audit {
                bump_stat(stat::NON_IP_DROPPED);
                return ACT_SHOT;
            }
            return TCX_NEXT;
        }
        Err(Reject::MplsTooDeep) => {
            tag(ctx, tag::UNJUDGED | tag::REASON_MPLS_TOO_DEEP);
            return malformed(stat::MPLS_TOO_DEEP, audit);
        }
        Err(Reject::Malformed) => {
            tag(ctx, tag::UNJUDGED | tag::REASON_MALFORMED);
            return malformed(stat::MALFORMED, audit);
        }
        Err(Reject::VlanTooDeep) => {
            tag(ctx, tag::UNJUDGED | tag::REASON_VLAN_TOO_DEEP);
            return malformed(stat::VLAN_TOO_DEEP, audit);
        }
        Err(Reject::TunnelTooDeep) => {
            tag(ctx, tag::UNJUDGED | tag::REASON_TUNNEL_TOO_DEEP);
            return malformed(stat::TUNNEL_TOO_DEEP, audit);
        }
    }
    pkt.dir = dir;
    // The decision is a program of its own (`envfence_ebpf::STAGE_DECIDE`
    // says why); it reads the packet from the scratch slot written above.
    // SAFETY: a tail call with this program's own context; it does not
    // return when it succeeds.
    unsafe { STAGES.tail_call(ctx, STAGE_DECIDE) };
    // Only reached when the stage table is empty: fail closed.
    tag(ctx, tag::UNJUDGED | tag::REASON_STAGE_MISSING);
    malformed(stat::STAGE_MISSING, audit)
}

/// The second stage of both hooks: judges the packet the hook parsed into
/// this CPU's scratch slot, under the policy slot the hook parsed it with.
#[classifier]
pub fn envfence_decide(ctx: TcContext) -> i32 {
    decide_parsed(&ctx)
}

#[inline(always)]
fn decide_parsed(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        // Unreachable: a one-entry per-CPU array always has its entry.
        return ACT_SHOT;
    };
    // SAFETY: this CPU's scratch slot, written by the hook that called this
    // stage a moment ago on this CPU (TC programs do not migrate).
    let pkt = unsafe { &*pkt };
    let dir = pkt.dir;
    let active = policy_in(pkt.slot);
    let slot = active.slot;
    // At the ingress of an attached interface the source must be one the
    // node routes back through it; a packet that fails is `spoofed` and is
    // never judged (or counted) under the environment it claims. Only the
    // outer source can be checked: a tunnel's inner source belongs to the
    // tunnel's own address space (the README says what that means).
    let mut checked = Checked {
        result: source::NOT_CHECKED,
        route_ifindex: 0,
    };
    if dir == direction::INGRESS {
        // SAFETY: reading a field of the context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let (mode, trust_peer) = source_mode(ifindex, slot);
        if mode != source::OFF {
            checked = crate::source::check(ctx, &pkt.outer, ifindex, mode, trust_peer);
            if checked.result == source::OK_PEER {
                bump_stat(stat::SOURCE_BY_PEER);
            } else if checked.result == source::OK_UNVERIFIED {
                bump_stat(stat::SOURCE_UNVERIFIED);
            } else if !source::accepted(checked.result) {
                return spoofed(ctx, &pkt.outer, active, mode, checked, len);
            }
        }
    }
    if pkt.encap == ENCAP_MPLS {
        bump_stat(stat::MPLS);
    } else if pkt.encap == ENCAP_PPPOE {
        bump_stat(stat::PPPOE);
    }
    // The outer packet is judged; a tunnel's inner packet too, and the
    // final destination of either's routing header: the strictest verdict
    // applies (the first judged on a tie: outer before inner, current
    // destination before final).
    let mut j = judge_both(&pkt.outer, 0, active, !pkt.has_inner);
    if pkt.has_inner {
        bump_stat(stat::TUNNELED);
        let ji = judge_both(&pkt.inner, walked::INNER, active, false);
        if ji.verdict > j.verdict {
            j = ji;
        }
    }
    // Replies of tracked flows, and ICMP errors quoting their packets,
    // pass (see `crate::conntrack`); tunnelled packets, and packets whose
    // routing header names a final destination, are judged by the policy
    // alone (a tracked tuple never carries a packet on to another hop).
    // The packet's time, read once: by the tracker, else when it is
    // reported (0 until then).
    let mut now = 0u64;
    let mut hit = Track {
        verdict: 0,
        flow_verdict: 0,
        rule: 0,
        src_env: 0,
        dst_env: 0,
    };
    // SAFETY: reading a global the loader may have overridden.
    if !pkt.has_inner
        && !pkt.outer.has_final
        && j.ct != 0
        && unsafe { core::ptr::read_volatile(&CONNTRACK) } != 0
    {
        let judged = conntrack::Policy {
            src_env: j.src_env,
            dst_env: j.dst_env,
            verdict: j.verdict,
            rule: j.rule,
            flags: j.ct,
        };
        // SAFETY: reading the clock.
        now = unsafe { bpf_ktime_get_ns() };
        hit = if conntrack::is_icmp_error(&pkt.outer) {
            conntrack::related(ctx, &pkt.outer, &judged, &active, now)
        } else {
            conntrack::track(ctx, &pkt.outer, &judged, &active, now)
        };
        if hit.verdict != 0 {
            j.verdict = hit.verdict;
            j.rule = hit.rule;
        }
    }
    let (layer, src_env, dst_env, v, rule) = (j.layer, j.src_env, j.dst_env, j.verdict, j.rule);
    tag(ctx, tag::judged(v, src_env, dst_env));
    // Compiled out by the verifier unless the agent runs with
    // `--datapath-log debug` (the level lives in .rodata).
    aya_log_ebpf::debug!(
        ctx,
        "envfence: proto {} dport {} env {} -> {} verdict {} rule {}",
        layer.proto,
        layer.dport,
        src_env,
        dst_env,
        v,
        rule
    );

    count(
        COUNTERS.get_ptr_mut(counter_index(src_env, dst_env, v as u32)),
        len,
    );
    count(
        RULE_COUNTERS.get_ptr_mut(rule_counter_index(rule as u32, v as u32)),
        len,
    );
    if v == verdict::REPLY && hit.flow_verdict == verdict::LOG {
        // A reply of a reported flow is carried in that flow's reports.
        let envs = (u32::from(hit.src_env), u32::from(hit.dst_env));
        if let Some(sc) = conntrack::CT_SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch slot, written by the tracker.
            let fwd = unsafe { (*sc).fwd };
            report_flow(ctx, fwd, envs, rule, (dir, len, slot, now), checked);
        }
    } else if v != verdict::ALLOW && v != verdict::REPLY {
        // Everything but plain allowed packets and replies is reported:
        // a `related` ICMP error (path MTU, unreachable) is reported as
        // itself, under the forward flow's rule.
        report(ctx, &j, (dir, len, slot, now), checked);
    }
    if v == verdict::DROP {
        ACT_SHOT
    } else {
        TCX_NEXT
    }
}

/// The source-check mode of `ifindex` under policy `slot`, and whether a
/// strict check accepts its peer's addresses. An interface without an entry
/// is checked strictly by route alone: fail closed.
#[inline(always)]
fn source_mode(ifindex: u32, slot: u32) -> (u8, bool) {
    // SAFETY: the value is copied out at once.
    match unsafe { IFCONF.get(ifindex) } {
        Some(c) => {
            let i = (slot & 1) as usize;
            (c.mode[i], c.trust_peer[i] != 0)
        }
        None => (source::STRICT, false),
    }
}

/// A packet whose source failed the check: counted under `world` (its
/// claimed environment cannot be trusted) and the real destination's
/// environment with verdict `spoofed`, reported, and dropped unless the
/// policy is in audit mode.
#[inline(always)]
fn spoofed(
    ctx: &TcContext,
    layer: &Layer,
    active: Active,
    mode: u8,
    checked: Checked,
    len: u32,
) -> i32 {
    let dst_env = lookup_env(layer.family, &layer.dst, active.slot);
    tag(ctx, tag::judged(verdict::SPOOFED, 0, dst_env));
    bump_stat(if mode == source::STRICT {
        stat::SPOOFED_STRICT
    } else {
        stat::SPOOFED_LOOSE
    });
    count(
        COUNTERS.get_ptr_mut(counter_index(0, dst_env, verdict::SPOOFED as u32)),
        len,
    );
    let j = Judged {
        layer,
        dst: &layer.dst,
        src_env: 0,
        dst_env,
        verdict: verdict::SPOOFED,
        rule: RULE_SOURCE_CHECK,
        ct: 0,
    };
    report(ctx, &j, (direction::INGRESS, len, active.slot, 0), checked);
    if active.audit {
        TCX_NEXT
    } else {
        ACT_SHOT
    }
}

#[inline(always)]
fn count(cell: Option<*mut Counter>, len: u32) {
    if let Some(c) = cell {
        // SAFETY: per-CPU slot, TC programs do not migrate while running.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// A frame that claims to be IP but cannot be read up to its addresses:
/// no address can be trusted, so it is dropped (a well-formed stack would
/// drop it too), except in audit mode where nothing is dropped.
#[inline(always)]
fn malformed(index: u32, audit: bool) -> i32 {
    bump_stat(index);
    if audit {
        TCX_NEXT
    } else {
        ACT_SHOT
    }
}

/// What the walks read, in this CPU's slot of [`CLASSIFY_ARG`]: the two
/// addresses' (high, low) words (0–1 and 2–3), written by the walk's
/// function first, and where the packet's policy's tables start in the
/// IPv4 and IPv6 pools (4 and 5), written by [`ef_set_tables`] before the
/// walk; read afresh at every step rather than held across the walk's map
/// reads, which keeps the walks' frames small (24 bytes for one address,
/// 56 for a pair): the deepest call chain (decision, tracker, walk) has
/// 512 bytes for all.
type WalkArg = *mut [u64; 6];

/// The address whose words are at `AT` and `AT + 1` of [`WalkArg`].
struct Words<const AT: usize>(WalkArg);

impl<const AT: usize> Address for Words<AT> {
    #[inline(always)]
    fn word(&self, low: bool) -> u64 {
        // SAFETY: this CPU's slot of CLASSIFY_ARG (a map value: valid for
        // the whole program run); the index is below 6.
        unsafe { core::ptr::read_volatile(&(*self.0)[(AT + usize::from(low)) % 6]) }
    }
}

/// The chunks of one family (`V6`: the IPv6 pool) from the packet's
/// policy's base in [`WalkArg`].
struct Pool<const V6: bool>(WalkArg);

impl<const V6: bool> TrieTables for Pool<V6> {
    type Error = core::convert::Infallible;
    type Chunk<'a> = &'a Chunk;

    #[inline(always)]
    fn chunk(&self, index: u32) -> Result<Option<&'static Chunk>, Self::Error> {
        let map = if V6 { &ENV_V6 } else { &ENV_V4 };
        // SAFETY: as in `Words::word`.
        let base = unsafe { core::ptr::read_volatile(&(*self.0)[4 + usize::from(V6)]) };
        Ok(map.get((base as u32).wrapping_add(index)))
    }
}

/// The environment id of `addr` under the policy in `slot`: the
/// classifier's walk (`envfence_ebpf::classify`) over that slot's tables
/// (`::ffff:a.b.c.d` is the IPv4 address it carries).
#[inline(always)]
pub(crate) fn lookup_env(fam: u8, addr: &[u8; 16], slot: u32) -> u32 {
    ef_set_tables(slot);
    let v4 = fam == envfence_ebpf::family::V4 || is_v4_mapped(addr);
    let (hi, lo) = if v4 {
        let off = if fam == envfence_ebpf::family::V4 {
            0
        } else {
            12
        };
        trie::words_v4([addr[off], addr[off + 1], addr[off + 2], addr[off + 3]])
    } else {
        trie::words_v6(addr)
    };
    if v4 {
        ef_classify_v4(hi)
    } else {
        ef_classify_v6(hi, lo)
    }
}

/// Which addresses of the scratch packet [`ef_classify_layer`] walks.
mod walked {
    /// The inner layer's (else the outer's).
    pub const INNER: u32 = 1;
    /// The source and the routing header's final destination (else the
    /// destination).
    pub const FINAL: u32 = 2;
}

/// The environment ids of the source and destination of a layer of this
/// CPU's scratch packet (`which`: [`walked`]), walked in lockstep when
/// both are of one family (see [`ef_classify_pair_v4`]), one after the
/// other otherwise (a mapped address beside a plain IPv6 one): the
/// source's id in bits 0–7, the destination's in bits 8–15. A global
/// function that reads the addresses itself: the decision's frame holds
/// none of their words (its 320 bytes are the most the deepest call chain
/// leaves it).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_classify_layer(which: u32) -> u32 {
    let Some(pkt) = SCRATCH.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, written by the hook that called the
    // decision stage on this CPU.
    let pkt = unsafe { &*pkt };
    // The packet's policy (its `Active::slot`).
    let slot = pkt.slot & 1;
    ef_set_tables(slot);
    let layer = if which & walked::INNER != 0 {
        &pkt.inner
    } else {
        &pkt.outer
    };
    let dst = if which & walked::FINAL != 0 {
        &layer.final_dst
    } else {
        &layer.dst
    };
    let fam = layer.family;
    let v4 = |a: &[u8; 16]| fam == envfence_ebpf::family::V4 || is_v4_mapped(a);
    let (src4, dst4) = (v4(&layer.src), v4(dst));
    if src4 != dst4 {
        return lookup_env(fam, &layer.src, slot) | (lookup_env(fam, dst, slot) << 8);
    }
    if src4 {
        let off = if fam == envfence_ebpf::family::V4 {
            0
        } else {
            12
        };
        let at = |a: &[u8; 16]| trie::words_v4([a[off], a[off + 1], a[off + 2], a[off + 3]]).0;
        ef_classify_pair_v4(at(&layer.src), at(dst))
    } else {
        let (s_hi, s_lo) = trie::words_v6(&layer.src);
        let (d_hi, d_lo) = trie::words_v6(dst);
        ef_classify_pair_v6(s_hi, s_lo, d_hi, d_lo)
    }
}

/// The walk of the IPv4 tables for address `a` (its high word; see
/// [`WalkArg`]): its environment id. A global function: the verifier
/// checks it once, not at each of the decision stage's paths that
/// classify (inlined, it took the decision stage past the
/// one-million-instruction budget).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_classify_v4(a: u64) -> u32 {
    let Some(arg) = CLASSIFY_ARG.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        (*arg)[0] = a;
        (*arg)[1] = 0;
    }
    let Ok(x) = walk::<_, _, { trie::STEPS_V4 }>(&Pool::<false>(arg), &Words::<0>(arg));
    trie::leaf_env(x) & (MAX_ENVS - 1)
}

/// The walk of the IPv6 tables (see [`ef_classify_v4`]).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_classify_v6(a_hi: u64, a_lo: u64) -> u32 {
    let Some(arg) = CLASSIFY_ARG.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        (*arg)[0] = a_hi;
        (*arg)[1] = a_lo;
    }
    let Ok(x) = walk::<_, _, { trie::STEPS_V6 }>(&Pool::<true>(arg), &Words::<0>(arg));
    trie::leaf_env(x) & (MAX_ENVS - 1)
}

/// The walks of the IPv4 tables for addresses `a` and `b` in lockstep
/// (see [`ef_classify_v4`]): `a`'s environment id in bits 0–7, `b`'s in
/// bits 8–15.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_classify_pair_v4(a: u64, b: u64) -> u32 {
    let Some(arg) = CLASSIFY_ARG.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        (*arg)[0] = a;
        (*arg)[1] = 0;
        (*arg)[2] = b;
        (*arg)[3] = 0;
    }
    let Ok((x, y)) = walk_pair::<_, _, _, { trie::STEPS_V4 }>(
        &Pool::<false>(arg),
        &Words::<0>(arg),
        &Words::<2>(arg),
    );
    (trie::leaf_env(x) & (MAX_ENVS - 1)) | ((trie::leaf_env(y) & (MAX_ENVS - 1)) << 8)
}

/// The walks of the IPv6 tables in lockstep (see [`ef_classify_pair_v4`]).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_classify_pair_v6(a_hi: u64, a_lo: u64, b_hi: u64, b_lo: u64) -> u32 {
    let Some(arg) = CLASSIFY_ARG.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        (*arg)[0] = a_hi;
        (*arg)[1] = a_lo;
        (*arg)[2] = b_hi;
        (*arg)[3] = b_lo;
    }
    let Ok((x, y)) = walk_pair::<_, _, _, { trie::STEPS_V6 }>(
        &Pool::<true>(arg),
        &Words::<0>(arg),
        &Words::<2>(arg),
    );
    (trie::leaf_env(x) & (MAX_ENVS - 1)) | ((trie::leaf_env(y) & (MAX_ENVS - 1)) << 8)
}

/// Points this CPU's walks at the tables of policy `slot`: where they
/// start in the IPv4 and IPv6 pools ([`trie::slot_base`] of the slot's
/// `Config::slot_chunks`), into [`CLASSIFY_ARG`]. Called before every
/// walk of a packet ([`lookup_env`], [`ef_classify_layer`]) with the slot
/// its [`Active`] names, so that a packet whose verdict is cached walks
/// nothing and sets nothing; a global function so that its map reads take
/// no room in the decision's frame. Without a config, the pools' start: a
/// zeroed root, every address world.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ef_set_tables(slot: u32) -> u32 {
    let Some(arg) = CLASSIFY_ARG.get_ptr_mut(0) else {
        return 0;
    };
    let len = CONFIG
        .get(0)
        .map_or([0, 0], |c| c.slot_chunks[(slot & 1) as usize]);
    // SAFETY: this CPU's slot.
    unsafe {
        (*arg)[4] = u64::from(trie::slot_base(slot, len[0]));
        (*arg)[5] = u64::from(trie::slot_base(slot, len[1]));
    }
    1
}

/// `::ffff:a.b.c.d` is judged as the IPv4 address it carries.
#[inline(always)]
pub(crate) fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff
}

/// The decision on one IP layer.
struct Judged<'a> {
    layer: &'a Layer,
    /// The destination judged: the layer's, or its routing header's final
    /// destination.
    dst: &'a [u8; 16],
    src_env: u32,
    dst_env: u32,
    verdict: u8,
    rule: u16,
    /// The pair's connection-tracking flags.
    ct: u8,
}

/// One layer judged for its destination and, when a routing header names
/// one, for its final destination: the stricter verdict.
#[inline(always)]
fn judge_both(layer: &Layer, inner: u32, active: Active, cacheable: bool) -> Judged<'_> {
    if layer.fragment {
        bump_stat(stat::FRAGMENTS);
    }
    if layer.ext_too_deep {
        bump_stat(stat::IPV6_EXT_TOO_DEEP);
    }
    if layer.len_from_skb {
        bump_stat(stat::LENGTH_FROM_SKB);
    }
    if layer.jumbo {
        bump_stat(stat::JUMBOGRAMS);
    }
    if !layer.has_final {
        return judge_layer(layer, &layer.dst, inner, active, cacheable);
    }
    bump_stat(stat::ROUTING_FINAL);
    let j = judge_layer(layer, &layer.dst, inner, active, false);
    let jf = judge_layer(
        layer,
        &layer.final_dst,
        inner | walked::FINAL,
        active,
        false,
    );
    if jf.verdict > j.verdict {
        jf
    } else {
        j
    }
}

#[inline(always)]
fn judge_layer<'a>(
    layer: &'a Layer,
    dst: &'a [u8; 16],
    which: u32,
    active: Active,
    cacheable: bool,
) -> Judged<'a> {
    // Simple packets (not tunnelled, ports read or no ports by nature) are
    // decided by their addresses, protocol and destination port alone: a
    // flow's verdict is cached per CPU under the policy generation.
    // SAFETY: reading a global the loader may have overridden.
    let use_cache = cacheable
        && layer.l4 != L4::NoPorts
        && unsafe { core::ptr::read_volatile(&VERDICT_CACHE) } != 0;
    let key = VerdictKey {
        src: layer.src,
        dst: *dst,
        dport: if layer.l4 == L4::Ports {
            layer.dport
        } else {
            0
        },
        proto: layer.proto,
        family: layer.family,
        generation: active.generation,
    };
    // SAFETY: VerdictKey is #[repr(C, align(8))] and 40 bytes: five u64.
    let words: &[u64; 5] = unsafe { &*(&key as *const VerdictKey as *const [u64; 5]) };
    let slot = if use_cache {
        VERDICTS.get_ptr_mut(verdict_slot(words))
    } else {
        None
    };
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot; compared word by word, copied out.
        let s = unsafe { &*slot };
        let cached: &[u64; 5] = unsafe { &*(&s.key as *const VerdictKey as *const [u64; 5]) };
        if s.value.filled != 0
            && cached[0] == words[0]
            && cached[1] == words[1]
            && cached[2] == words[2]
            && cached[3] == words[3]
            && cached[4] == words[4]
        {
            return Judged {
                layer,
                dst,
                src_env: u32::from(s.value.src_env),
                dst_env: u32::from(s.value.dst_env),
                verdict: s.value.verdict,
                rule: s.value.rule,
                ct: s.value.ct,
            };
        }
    }
    // `layer` and `dst` are in the scratch packet, where `which` names them.
    let envs = ef_classify_layer(which);
    let (src_env, dst_env) = (envs & (MAX_ENVS - 1), (envs >> 8) & (MAX_ENVS - 1));
    let dport = if layer.l4 == L4::Ports {
        layer.dport
    } else {
        0
    };
    let (verdict, rule, ct) =
        decide_parts(src_env, dst_env, layer.l4, layer.proto, dport, active.slot);
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot.
        unsafe {
            (*slot).key = key;
            (*slot).value = CachedVerdict {
                src_env: src_env as u8,
                dst_env: dst_env as u8,
                verdict,
                filled: 1,
                rule,
                ct,
                _pad2: 0,
            };
        }
    }
    Judged {
        layer,
        dst,
        src_env,
        dst_env,
        verdict,
        rule,
        ct,
    }
}

/// The kernel's port rules of one slot (`EF_PORTS`).
struct Ports {
    slot: u32,
}

impl Tables for Ports {
    type Error = core::convert::Infallible;
    type Rule<'a> = &'a RuleVerdict;

    #[inline(always)]
    fn port_rule(
        &self,
        src_env: u32,
        dst_env: u32,
        proto: u8,
        port: u16,
    ) -> Result<Option<&RuleVerdict>, Self::Error> {
        let key = PortKey::new(self.slot, src_env, dst_env, proto, port);
        // By value, not `&key`: the reference costs the verifier 6,227
        // instructions in the decision stage (136,295 against 130,068).
        // SAFETY: the value is read at once (by `decide`), not kept.
        Ok(unsafe { PORTS.get(key) })
    }
}

/// The policy's verdict, deciding rule and connection-tracking flags for a
/// packet of `proto` to `dport` (read when `l4` is `Ports`) between two
/// environments ([`envfence_ebpf::decide`]).
#[inline(always)]
pub(crate) fn decide_parts(
    src_env: u32,
    dst_env: u32,
    l4: L4,
    proto: u8,
    dport: u16,
    slot: u32,
) -> (u8, u16, u8) {
    let Some(pair) = PAIRS.get(slot_pair_index(slot, src_env, dst_env)) else {
        // Unreachable (ids are masked below MAX_ENVS); never a way through.
        return (verdict::DROP, envfence_ebpf::RULE_DEFAULT, 0);
    };
    let Ok(d) = decide(&Ports { slot }, pair, src_env, dst_env, l4, proto, dport);
    (d.verdict, d.rule, pair.ct)
}

/// Reports the flow at most once per interval: the LRU map remembers when it
/// was last reported and what it did since. A full ring buffer costs the
/// event (counted as lost), never the verdict, and the packets it carried are
/// kept for the next report.
#[inline(always)]
fn report(ctx: &TcContext, j: &Judged, packet: PacketOf, checked: Checked) {
    let pkt = j.layer;
    let flow = FlowKey {
        src: pkt.src,
        dst: *j.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        verdict: j.verdict,
        _pad: 0,
    };
    report_flow(ctx, flow, (j.src_env, j.dst_env), j.rule, packet, checked);
}

/// What a report says of the packet: its direction, length, policy slot
/// and time (0: not read yet).
type PacketOf = (u8, u32, u32, u64);

/// [`report`] of `flow` (judged between the environments `envs` by `rule`).
#[inline(always)]
fn report_flow(
    ctx: &TcContext,
    flow: FlowKey,
    envs: (u32, u32),
    rule: u16,
    packet: PacketOf,
    checked: Checked,
) {
    let (src_env, dst_env) = envs;
    let (dir, len, slot, now) = packet;
    let now = if now != 0 {
        now
    } else {
        // SAFETY: reading the clock.
        unsafe { bpf_ktime_get_ns() }
    };
    let interval = CONFIG
        .get(0)
        .map_or(DEFAULT_REPORT_INTERVAL_NS, |c| c.report_interval_ns);
    let mut packets = 1u64;
    let mut bytes = len as u64;
    match FLOWS.get_ptr_mut(flow) {
        Some(st) => {
            // SAFETY: pointer to a live map value. Plain (not atomic) updates:
            // two CPUs racing on one flow may misplace a packet between two
            // reports; the exact figures are the per-CPU counters.
            unsafe {
                if now.wrapping_sub((*st).last_report_ns) < interval {
                    (*st).packets += 1;
                    (*st).bytes += len as u64;
                    return;
                }
                (*st).last_report_ns = now;
                packets += (*st).packets;
                bytes += (*st).bytes;
                (*st).packets = 0;
                (*st).bytes = 0;
            }
        }
        None => {
            let st = FlowState {
                last_report_ns: now,
                packets: 0,
                bytes: 0,
            };
            let _ = FLOWS.insert(flow, st, 0);
        }
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                packets,
                bytes,
                flow,
                // SAFETY: reading a field of the context.
                ifindex: unsafe { (*ctx.skb.skb).ifindex },
                rule,
                src_env: src_env as u8,
                dst_env: dst_env as u8,
                direction: dir,
                slot: slot as u8,
                source_result: checked.result,
                _pad: [0; 5],
                route_ifindex: checked.route_ifindex,
                _pad2: 0,
            });
            entry.submit(0);
            bump_stat(stat::EVENTS_EMITTED);
        }
        None => {
            bump_stat(stat::EVENTS_LOST);
            // Keep what this event carried for the flow's next report.
            if let Some(st) = FLOWS.get_ptr_mut(flow) {
                // SAFETY: pointer to a live map value.
                unsafe {
                    (*st).packets += packets;
                    (*st).bytes += bytes;
                    (*st).last_report_ns = 0;
                }
            }
        }
    }
}
