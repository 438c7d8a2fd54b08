//! What the local API serves, as the CLI reads it (the wire types): the
//! query of the flow endpoints, the flows and "top" replies, the status
//! report. What a query means (checking it, filtering and grouping events)
//! is in [`super::query`].

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::events::EventRecord;

/// The query of `/v1/flows`, `/v1/flows/follow` and `/v1/top`, as sent in
/// the URL (every field a string; lists are comma-separated).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowQuery {
    /// Source environment names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
    /// Destination environment names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_env: Option<String>,
    /// Verdicts (allow, log, audit, drop, spoofed, reply, related).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// An address or CIDR, matched against either side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A port, matched against either side (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Protocol names (tcp, udp, icmp ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Rule names (`default` for flows no rule decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Only events at or after: RFC 3339, or a duration ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only events at or before: RFC 3339, or a duration ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only the newest N matching events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// `/v1/top`: what to group by (pair, src, dst, rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `/v1/top`: how many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl FlowQuery {
    /// The URL query string (`a=b&c=d`, percent-encoded), empty when no
    /// field is set.
    pub fn to_query_string(&self) -> String {
        let fields: [(&str, &Option<String>); 12] = [
            ("from_env", &self.from_env),
            ("to_env", &self.to_env),
            ("verdict", &self.verdict),
            ("ip", &self.ip),
            ("port", &self.port),
            ("proto", &self.proto),
            ("rule", &self.rule),
            ("since", &self.since),
            ("until", &self.until),
            ("last", &self.last),
            ("by", &self.by),
            ("limit", &self.limit),
        ];
        fields
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/' | b',')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The answer of `/v1/flows`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FlowsReply {
    /// Matching events, oldest first.
    pub events: Vec<EventRecord>,
    /// Events the agent keeps now (the newest of everything it saw).
    pub stored: usize,
    /// Events the agent has seen since it started.
    pub seen: u64,
}

/// A line of `/v1/flows/follow` that is not an event: events were missed
/// because the reader fell behind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lagged {
    pub lagged: u64,
}

/// What `top` groups by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopBy {
    /// (source environment, destination environment).
    #[default]
    Pair,
    /// Source address.
    Src,
    /// Destination address.
    Dst,
    /// The deciding rule.
    Rule,
}

impl TopBy {
    pub fn as_str(self) -> &'static str {
        match self {
            TopBy::Pair => "pair",
            TopBy::Src => "src",
            TopBy::Dst => "dst",
            TopBy::Rule => "rule",
        }
    }
}

/// One row of `top`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TopRow {
    /// Source environment (by pair, by src).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_env: Option<String>,
    /// Destination environment (by pair, by dst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_env: Option<String>,
    /// Source address (by src).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// Destination address (by dst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// Rule (by rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Event records summed.
    pub events: u64,
    /// Packets by verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Rules that decided these packets (by pair, src, dst).
    pub rules: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// The answer of `/v1/top`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TopReply {
    pub by: TopBy,
    /// The verdicts counted.
    pub verdicts: Vec<String>,
    pub rows: Vec<TopRow>,
    /// Matching events summed (over every row, shown or not).
    pub events: u64,
    pub packets: u64,
    /// Events the agent keeps now.
    pub stored: usize,
}

/// One hook of an attached interface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HookReport {
    /// "ingress" or "egress".
    pub hook: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u32>,
    /// Why the program could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One interface envfence is attached to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct InterfaceReport {
    /// Empty when the name cannot be found (another network namespace).
    pub name: String,
    pub ifindex: u32,
    pub hooks: Vec<HookReport>,
}

/// Packets and bytes of one verdict.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub packets: u64,
    pub bytes: u64,
}

/// The kernel's counters, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CountersReport {
    /// Packets and bytes judged, by verdict (allow, log, audit, drop).
    pub verdicts: BTreeMap<String, Volume>,
    /// Datapath statistics by name (as in `envfence_datapath_total`).
    pub datapath: BTreeMap<String, u64>,
    /// Live tracked flows by state (`tcp-established`, `replied` ...).
    pub tracked_flows: BTreeMap<String, u64>,
}

/// What `envfence status` shows, from the agent or, when it is down, from
/// the pinned maps and the saved policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusReport {
    /// Where this report comes from: `agent` (the API) or `pins` (the agent
    /// did not answer; read from bpffs and the state directory).
    pub source: String,
    /// Whether the agent answered on its socket.
    pub agent_running: bool,
    /// Why the agent did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    pub socket: String,
    pub version: String,
    pub abi: u32,
    pub node: String,
    /// Unix time the agent started (0: unknown).
    pub started_at: f64,
    pub ready: bool,
    pub not_ready_reason: String,
    /// "enforce", "audit", or empty when unknown.
    pub mode: String,
    pub generation: u32,
    /// The policy slot the datapath judges with (from CONFIG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_slot: Option<u32>,
    pub policy_origin: String,
    pub policy_sha256: String,
    /// Unix time of the last successful load (0: unknown).
    pub policy_loaded_at: f64,
    pub last_reload_error: Option<String>,
    pub environments: Vec<String>,
    pub rules: Vec<String>,
    pub interfaces: Vec<InterfaceReport>,
    /// Selected interfaces not attached, with the error.
    pub pending_interfaces: Vec<String>,
    pub pin_dir: String,
    pub metrics_addr: String,
    /// Kernel counters (absent when the maps cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<CountersReport>,
    pub events_emitted: u64,
    pub events_lost: u64,
    /// Events in the agent's store, and seen since it started.
    pub events_stored: usize,
    pub events_seen: u64,
    /// Things the reader should know (a saved policy that does not match
    /// the kernel's generation, maps that could not be read ...).
    pub warnings: Vec<String>,
}

/// Formats a Unix time for humans (RFC 3339, seconds), `-` for 0.
pub fn unix_to_rfc3339(t: f64) -> String {
    if t <= 0.0 || !t.is_finite() {
        return "-".to_owned();
    }
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t);
    humantime::format_rfc3339_seconds(when).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_string() {
        let q = FlowQuery {
            since: Some("2026-11-23T02:10:00+01:00".into()),
            ip: Some("fd00:30::/32".into()),
            ..Default::default()
        };
        assert_eq!(
            q.to_query_string(),
            "ip=fd00:30::/32&since=2026-11-23T02:10:00%2B01:00"
        );
    }
}
