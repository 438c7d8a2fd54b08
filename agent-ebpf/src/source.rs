//! The source check: at the ingress of an attached interface, is the
//! packet's source one the node reaches back through that interface?
//!
//! The routing table is the kernel's own, asked per packet with
//! `bpf_fib_lookup` from the ingress perspective (destination = the claimed
//! source, on the interface the packet entered), so the answer is never
//! stale. For CNIs that route a whole pod CIDR through another device
//! (bridges, Cilium's `cilium_host`) the strict check also accepts the
//! addresses configured on the other end of the interface, which the agent
//! keeps in `EF_PEERS`. Everything the check says is one of the results of
//! `envfence_ebpf::source`; the userspace classifier
//! (`agent/src/policy/reference.rs`, with `policy/rpf.rs`) models the same
//! rules from a route list.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::generated::bpf_fib_lookup,
    programs::TcContext,
};
use envfence_ebpf::{family, source, walk::Layer, PeerKey};

use crate::programs::{is_v4_mapped, PEERS};

/// `AF_INET` / `AF_INET6`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the check found.
#[derive(Clone, Copy)]
pub struct Checked {
    /// An `envfence_ebpf::source` result.
    pub result: u8,
    /// Where the FIB routes the source (0: no route, or not asked).
    pub route_ifindex: u32,
}

const fn found(result: u8, route_ifindex: u32) -> Checked {
    Checked {
        result,
        route_ifindex,
    }
}

/// Checks `layer`'s source as entering `ifindex` under `mode`
/// (`source::LOOSE` or `source::STRICT`).
#[inline(always)]
pub fn check(ctx: &TcContext, layer: &Layer, ifindex: u32, mode: u8, trust_peer: bool) -> Checked {
    // An IPv4-mapped IPv6 address is checked as the IPv4 address it carries.
    let (fam, src, dst) = effective(layer);
    if let Some(r) = scope_rule(fam, &src, &dst) {
        return found(r, 0);
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    p.l4_protocol = layer.proto;
    // The lookup's own source hint stays empty: the answer must not depend
    // on the packet's destination (a neighbour solicitation to a multicast
    // group would make the IPv6 lookup refuse to answer).
    if fam == family::V4 {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = words(&src);
    }
    // SAFETY: the helper reads and writes `p` (its size is passed) and
    // reads the skb's namespace.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS as i64
        || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64
        || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    let verdict = if routed {
        if mode == source::LOOSE || p.ifindex == ifindex {
            return found(source::OK_ROUTE, p.ifindex);
        }
        found(source::OTHER_INTERFACE, p.ifindex)
    } else if rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        if mode == source::LOOSE {
            return found(source::OK_UNVERIFIED, 0);
        }
        found(source::FORWARDING_DISABLED, 0)
    } else if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        found(source::NOT_FORWARDABLE, 0)
    } else if rc == BPF_FIB_LKUP_RET_BLACKHOLE as i64
        || rc == BPF_FIB_LKUP_RET_UNREACHABLE as i64
        || rc == BPF_FIB_LKUP_RET_PROHIBIT as i64
    {
        found(source::NO_ROUTE, 0)
    } else {
        // A lightweight-tunnel route, an error: nothing verified.
        found(source::NO_ROUTE, 0)
    };
    if mode == source::STRICT && trust_peer {
        let key = PeerKey {
            ifindex,
            family: fam,
            _pad: [0; 3],
            addr: src,
        };
        // SAFETY: the value is not kept.
        if unsafe { PEERS.get(key) }.is_some() {
            return found(source::OK_PEER, verdict.route_ifindex);
        }
    }
    verdict
}

/// The family and addresses the check works on: an IPv4-mapped IPv6 source
/// is checked as IPv4 (the destination then too when it is mapped, else
/// the lookup's source hint is left empty).
#[inline(always)]
fn effective(layer: &Layer) -> (u8, [u8; 16], [u8; 16]) {
    if layer.family == family::V6 && is_v4_mapped(&layer.src) {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&layer.src[12..16]);
        let mut dst = [0u8; 16];
        if is_v4_mapped(&layer.dst) {
            dst[..4].copy_from_slice(&layer.dst[12..16]);
        }
        return (family::V4, src, dst);
    }
    (layer.family, layer.src, layer.dst)
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Sources no route can verify, decided by their scope alone (None: ask
/// the FIB). See `envfence_ebpf::source::OK_LINK_SCOPE` and `MARTIAN`.
#[inline(always)]
fn scope_rule(fam: u8, src: &[u8; 16], dst: &[u8; 16]) -> Option<u8> {
    if fam == family::V4 {
        let multicast_dst = dst[0] & 0xf0 == 0xe0 || dst[..4] == [0xff; 4];
        if src[..4] == [0; 4] {
            return Some(if multicast_dst {
                source::OK_LINK_SCOPE
            } else {
                source::MARTIAN
            });
        }
        if src[0] & 0xf0 == 0xe0 || src[..4] == [0xff; 4] || src[0] == 127 {
            return Some(source::MARTIAN);
        }
        return None;
    }
    let multicast_dst = dst[0] == 0xff;
    let link_local_dst = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    if *src == [0u8; 16] {
        return Some(if multicast_dst {
            source::OK_LINK_SCOPE
        } else {
            source::MARTIAN
        });
    }
    let loopback = src[..15] == [0u8; 15] && src[15] == 1;
    if src[0] == 0xff || loopback {
        return Some(source::MARTIAN);
    }
    if src[0] == 0xfe && src[1] & 0xc0 == 0x80 {
        return Some(if multicast_dst || link_local_dst {
            source::OK_LINK_SCOPE
        } else {
            source::MARTIAN
        });
    }
    None
}
