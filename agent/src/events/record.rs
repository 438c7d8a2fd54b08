//! An event as the agent reports it (`EventRecord`, one JSON line): the
//! kernel's `Event` with names of environments and rules from the policy
//! slot it was judged under.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use envfence_ebpf::{direction, family, proto, source, Event, RULE_SOURCE_CHECK};
use serde::{Deserialize, Serialize};

use crate::policy::CompiledPolicy;

/// The rule name of events whose packet failed the source check.
pub const SOURCE_CHECK_RULE: &str = "source-check";

/// One reported flow, as written to stdout (one JSON object per line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// RFC 3339 UTC time of the packet that triggered the report.
    pub time: String,
    pub node: String,
    pub interface: String,
    pub ifindex: u32,
    pub direction: String,
    pub family: String,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub src_env: String,
    pub dst_env: String,
    pub verdict: String,
    /// The rule that decided (`default` when none did).
    pub rule: String,
    /// Packets and bytes of the flow since its previous report.
    pub packets: u64,
    pub bytes: u64,
    /// What the source check of the ingress interface said, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<SourceCheckRecord>,
}

/// The source check's answer on a reported packet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceCheckRecord {
    /// `route`, `peer-address`, `link-scope`, `unverified` (accepted), or
    /// why it was refused: `route-via-other-interface`, `no-route`,
    /// `local-address`, `forwarding-disabled`, `martian`.
    pub result: String,
    /// The interface the node's route to the claimed source leaves
    /// through, when the route exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_interface: Option<String>,
}

/// Environment and rule names of the policy in one slot.
#[derive(Clone, Debug, Default)]
pub struct SlotNames {
    pub env_names: Vec<String>,
    pub rule_names: Vec<String>,
}

/// What turns a raw event into a record: names of environments, rules (per
/// policy slot: an event read just after a reload names the rule of the
/// policy that judged it) and interfaces, and the node name.
pub struct EventContext {
    pub node: String,
    pub slots: [SlotNames; 2],
    pub interfaces: HashMap<u32, String>,
}

impl EventContext {
    /// A context whose two slots both hold `policy`'s names.
    pub fn from_policy(node: String, policy: &CompiledPolicy) -> Self {
        let names = SlotNames {
            env_names: policy.env_names.clone(),
            rule_names: policy.rule_names.clone(),
        };
        Self {
            node,
            slots: [names.clone(), names],
            interfaces: HashMap::new(),
        }
    }

    /// Records the names of the policy installed in `slot`.
    pub fn set_slot(&mut self, slot: u32, policy: &CompiledPolicy) {
        self.slots[(slot & 1) as usize] = SlotNames {
            env_names: policy.env_names.clone(),
            rule_names: policy.rule_names.clone(),
        };
    }

    /// The name of an interface of this node (`ifN` when unknown).
    fn interface_name(&self, ifindex: u32) -> String {
        self.interfaces
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }

    pub fn record(&self, ev: &Event) -> EventRecord {
        let f = &ev.flow;
        let names = &self.slots[usize::from(ev.slot & 1)];
        let (src, dst) = if f.family == family::V4 {
            (v4(&f.src), v4(&f.dst))
        } else {
            (
                IpAddr::V6(Ipv6Addr::from(f.src)),
                IpAddr::V6(Ipv6Addr::from(f.dst)),
            )
        };
        EventRecord {
            time: wall_clock(ev.ts_ns),
            node: self.node.clone(),
            interface: self.interface_name(ev.ifindex),
            ifindex: ev.ifindex,
            direction: if ev.direction == direction::EGRESS {
                "egress"
            } else {
                "ingress"
            }
            .to_owned(),
            family: if f.family == family::V4 {
                "ipv4"
            } else {
                "ipv6"
            }
            .to_owned(),
            proto: proto_name(f.proto),
            src,
            sport: f.sport,
            dst,
            dport: f.dport,
            src_env: name_of(&names.env_names, usize::from(ev.src_env)),
            dst_env: name_of(&names.env_names, usize::from(ev.dst_env)),
            verdict: envfence_ebpf::verdict::name(f.verdict).to_owned(),
            rule: if ev.rule == RULE_SOURCE_CHECK {
                SOURCE_CHECK_RULE.to_owned()
            } else {
                name_of(&names.rule_names, usize::from(ev.rule))
            },
            packets: ev.packets,
            bytes: ev.bytes,
            source_check: (ev.source_result != source::NOT_CHECKED).then(|| SourceCheckRecord {
                result: source::result_name(ev.source_result).to_owned(),
                route_interface: (ev.route_ifindex != 0)
                    .then(|| self.interface_name(ev.route_ifindex)),
            }),
        }
    }
}

fn v4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

fn name_of(names: &[String], i: usize) -> String {
    match names.get(i) {
        Some(n) if !n.is_empty() => n.clone(),
        _ => format!("unknown({i})"),
    }
}

/// IANA protocol name, or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::ICMP => "icmp".into(),
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        proto::SCTP => "sctp".into(),
        other => other.to_string(),
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clocks used always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Converts a `bpf_ktime_get_ns()` timestamp to RFC 3339 wall-clock time.
fn wall_clock(ktime_ns: u64) -> String {
    let mono_now = clock_ns(libc::CLOCK_MONOTONIC);
    let age = Duration::from_nanos(mono_now.saturating_sub(ktime_ns));
    let when = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(when).to_string()
}
