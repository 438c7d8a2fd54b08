//! What a flow query means: checking a [`FlowQuery`] into a [`FlowFilter`],
//! matching event records, the "top" aggregation, and the time and address
//! forms a query takes. The same code runs in the agent (over its event
//! store) and in the CLI (over an audit file, `--file`), so both answer
//! alike.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use super::types::{FlowQuery, TopBy, TopReply, TopRow};
use crate::events::EventRecord;

/// A filter or query value that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("ip {0:?}: not an IP address or CIDR (e.g. 10.30.1.2 or 10.30.0.0/16)")]
    Ip(String),
    #[error("verdict {0:?}: expected allow, log, audit, drop, spoofed, reply or related")]
    Verdict(String),
    #[error("port {0:?}: expected a number 0-65535")]
    Port(String),
    #[error("{field} {value:?}: expected an RFC 3339 time (2026-11-23T02:16:00Z) or a duration ago (30s, 5m, 2h, 1d)")]
    Time { field: &'static str, value: String },
    #[error("last {0:?}: expected a positive number")]
    Last(String),
    #[error("limit {0:?}: expected a positive number")]
    Limit(String),
    #[error("by {0:?}: expected pair, src, dst or rule")]
    By(String),
}

/// Verdicts `top` counts when the query names none: the violations.
pub const TOP_DEFAULT_VERDICTS: &str = "drop,audit";
/// Rows `top` shows when the query says nothing.
pub const TOP_DEFAULT_LIMIT: usize = 10;

/// Parses a time: RFC 3339 (`2026-11-23T02:16:00Z`, fractions allowed), or
/// a duration (`30s`, `5m`, `1h30m`, `2d`) meaning that long before `now`.
pub fn parse_time(
    field: &'static str,
    value: &str,
    now: SystemTime,
) -> Result<SystemTime, QueryError> {
    let v = value.trim();
    if let Some(t) = parse_rfc3339(v) {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(v) {
        return Ok(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    Err(QueryError::Time {
        field,
        value: value.to_owned(),
    })
}

/// Parses RFC 3339 with `Z` or a numeric offset (`+01:00`), fractions of a
/// second allowed; a time without zone is taken as UTC.
pub fn parse_rfc3339(v: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Some(t);
    }
    // `...+HH:MM` / `...-HH:MM` after the seconds.
    let (head, tail) = v.split_at_checked(v.len().checked_sub(6)?)?;
    let sign = match tail.as_bytes().first()? {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let (hh, mm) = tail[1..].split_once(':')?;
    let offset = hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60;
    if !head.contains('T') && !head.contains(' ') {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(head).ok()?;
    let secs = u64::try_from(offset.abs()).ok()?;
    // Local time = UTC + offset.
    if sign * offset >= 0 {
        local.checked_sub(Duration::from_secs(secs))
    } else {
        local.checked_add(Duration::from_secs(secs))
    }
}

/// RFC 3339 UTC with milliseconds, as events carry.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time of an event record, if it is readable.
pub fn record_time(r: &EventRecord) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&r.time).ok()
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses an address or CIDR (an address is its own /32 or /128).
pub fn parse_ip_or_cidr(s: &str) -> Result<IpNet, QueryError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| QueryError::Ip(s.to_owned()))
}

/// A checked [`FlowQuery`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowFilter {
    pub from_env: Vec<String>,
    pub to_env: Vec<String>,
    pub verdicts: Vec<String>,
    pub ip: Option<IpNet>,
    pub port: Option<u16>,
    pub proto: Vec<String>,
    pub rule: Vec<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub last: Option<usize>,
}

/// Whether `name` is a verdict the datapath counts or reports: the
/// policy's four, `spoofed` (the source check) and `reply` / `related`
/// (connection tracking).
pub fn is_verdict_name(name: &str) -> bool {
    (0..envfence_ebpf::NUM_VERDICTS)
        .any(|v| u8::try_from(v).is_ok_and(|v| envfence_ebpf::verdict::name(v) == name))
}

impl FlowFilter {
    /// Checks a query; relative times are taken from `now`.
    pub fn from_query(q: &FlowQuery, now: SystemTime) -> Result<Self, QueryError> {
        let verdicts = list(&q.verdict);
        for v in &verdicts {
            if !is_verdict_name(v) {
                return Err(QueryError::Verdict(v.clone()));
            }
        }
        let port = q
            .port
            .as_deref()
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| QueryError::Port(p.to_owned()))
            })
            .transpose()?;
        let last = q
            .last
            .as_deref()
            .map(|n| positive(n, QueryError::Last))
            .transpose()?;
        Ok(Self {
            from_env: list(&q.from_env),
            to_env: list(&q.to_env),
            verdicts,
            ip: q.ip.as_deref().map(parse_ip_or_cidr).transpose()?,
            port,
            proto: list(&q.proto)
                .into_iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            rule: list(&q.rule),
            since: q
                .since
                .as_deref()
                .map(|s| parse_time("since", s, now))
                .transpose()?,
            until: q
                .until
                .as_deref()
                .map(|s| parse_time("until", s, now))
                .transpose()?,
            last,
        })
    }

    /// Whether `r` passes every condition (`last` is applied by
    /// [`FlowFilter::apply`]).
    pub fn matches(&self, r: &EventRecord) -> bool {
        let any =
            |wanted: &[String], have: &str| wanted.is_empty() || wanted.iter().any(|w| w == have);
        if !any(&self.from_env, &r.src_env)
            || !any(&self.to_env, &r.dst_env)
            || !any(&self.verdicts, &r.verdict)
            || !any(&self.rule, &r.rule)
            || !any(&self.proto, &r.proto)
        {
            return false;
        }
        if let Some(net) = &self.ip {
            if !net.contains(&unmap(r.src)) && !net.contains(&unmap(r.dst)) {
                return false;
            }
        }
        if let Some(port) = self.port {
            let has_ports = matches!(r.proto.as_str(), "tcp" | "udp" | "sctp");
            if !has_ports || (r.sport != port && r.dport != port) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = record_time(r) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    /// The matching records, oldest first, cut to the newest `last`.
    pub fn apply<'a, I>(&self, records: I) -> Vec<EventRecord>
    where
        I: IntoIterator<Item = &'a EventRecord>,
    {
        let mut out: Vec<EventRecord> = records
            .into_iter()
            .filter(|r| self.matches(r))
            .cloned()
            .collect();
        if let Some(n) = self.last {
            let cut = out.len().saturating_sub(n);
            out.drain(..cut);
        }
        out
    }
}

/// A count of at least 1 (`n`, as written), else the error `bad` makes
/// of it.
fn positive(n: &str, bad: fn(String) -> QueryError) -> Result<usize, QueryError> {
    match n.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(bad(n.to_owned())),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address (as the datapath judges
/// it).
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::str::FromStr for TopBy {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pair" => Ok(TopBy::Pair),
            "src" => Ok(TopBy::Src),
            "dst" => Ok(TopBy::Dst),
            "rule" => Ok(TopBy::Rule),
            other => Err(QueryError::By(other.to_owned())),
        }
    }
}

/// Groups matching records by `by` and sums their packets and bytes;
/// heaviest (by packets, then bytes) first, `limit` rows.
pub fn top(records: &[EventRecord], by: TopBy, limit: usize) -> (Vec<TopRow>, u64, u64) {
    type GroupKey = (String, String, Option<IpAddr>, Option<IpAddr>, String);
    let mut groups: BTreeMap<GroupKey, TopRow> = BTreeMap::new();
    let (mut events, mut packets) = (0u64, 0u64);
    for r in records {
        events += 1;
        packets += r.packets;
        let key: GroupKey = match by {
            TopBy::Pair => (
                r.src_env.clone(),
                r.dst_env.clone(),
                None,
                None,
                String::new(),
            ),
            TopBy::Src => (
                r.src_env.clone(),
                String::new(),
                Some(r.src),
                None,
                String::new(),
            ),
            TopBy::Dst => (
                String::new(),
                r.dst_env.clone(),
                None,
                Some(r.dst),
                String::new(),
            ),
            TopBy::Rule => (String::new(), String::new(), None, None, r.rule.clone()),
        };
        let row = groups.entry(key).or_insert_with(|| TopRow {
            src_env: matches!(by, TopBy::Pair | TopBy::Src).then(|| r.src_env.clone()),
            dst_env: matches!(by, TopBy::Pair | TopBy::Dst).then(|| r.dst_env.clone()),
            src: (by == TopBy::Src).then_some(r.src),
            dst: (by == TopBy::Dst).then_some(r.dst),
            rule: (by == TopBy::Rule).then(|| r.rule.clone()),
            first_seen: r.time.clone(),
            last_seen: r.time.clone(),
            ..TopRow::default()
        });
        row.packets += r.packets;
        row.bytes += r.bytes;
        row.events += 1;
        *row.verdicts.entry(r.verdict.clone()).or_default() += r.packets;
        if by != TopBy::Rule && !row.rules.contains(&r.rule) {
            row.rules.push(r.rule.clone());
        }
        // RFC 3339 UTC strings of one format order like the times.
        if r.time < row.first_seen {
            row.first_seen = r.time.clone();
        }
        if r.time > row.last_seen {
            row.last_seen = r.time.clone();
        }
    }
    let mut rows: Vec<TopRow> = groups.into_values().collect();
    rows.sort_by(|a, b| b.packets.cmp(&a.packets).then(b.bytes.cmp(&a.bytes)));
    rows.truncate(limit);
    (rows, events, packets)
}

/// The answer of a `top` query over `records` (every record the reader
/// keeps: the agent's store, or an audit file).
pub fn top_reply(
    q: &FlowQuery,
    records: &[EventRecord],
    now: SystemTime,
) -> Result<TopReply, QueryError> {
    let (by, limit, filter) = top_query(q, now)?;
    let matched = filter.apply(records);
    let (rows, events, packets) = top(&matched, by, limit);
    Ok(TopReply {
        by,
        verdicts: filter.verdicts,
        rows,
        events,
        packets,
        stored: records.len(),
    })
}

/// Checks the `top`-specific part of a query: (by, limit, filter with the
/// default verdicts when none is named).
pub fn top_query(q: &FlowQuery, now: SystemTime) -> Result<(TopBy, usize, FlowFilter), QueryError> {
    let by =
        q.by.as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();
    let limit = q
        .limit
        .as_deref()
        .map(|n| positive(n, QueryError::Limit))
        .transpose()?
        .unwrap_or(TOP_DEFAULT_LIMIT);
    let mut q = q.clone();
    if q.verdict.is_none() {
        q.verdict = Some(TOP_DEFAULT_VERDICTS.to_owned());
    }
    let filter = FlowFilter::from_query(&q, now)?;
    Ok((by, limit, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time: &str, src: &str, dst: &str, verdict: &str, packets: u64) -> EventRecord {
        EventRecord {
            time: time.into(),
            node: "n".into(),
            interface: "veth-test1".into(),
            ifindex: 3,
            direction: "ingress".into(),
            family: "ipv4".into(),
            proto: "udp".into(),
            src: src.parse().unwrap(),
            sport: 40000,
            dst: dst.parse().unwrap(),
            dport: 53,
            src_env: "test".into(),
            dst_env: "production".into(),
            verdict: verdict.into(),
            rule: "test-to-prod".into(),
            packets,
            bytes: packets * 100,
            source_check: None,
        }
    }

    /// test -> production: a drop at 02:10 (1 packet), an audit from
    /// another address at 02:18 (`audit_packets`), a drop to another
    /// address at 02:19 (3 packets).
    fn three_flows(audit_packets: u64) -> [EventRecord; 3] {
        [
            record(
                "2026-11-23T02:10:00.000Z",
                "10.30.1.2",
                "10.10.1.2",
                "drop",
                1,
            ),
            record(
                "2026-11-23T02:18:00.000Z",
                "10.30.1.3",
                "10.10.1.2",
                "audit",
                audit_packets,
            ),
            record(
                "2026-11-23T02:19:00.000Z",
                "10.30.1.2",
                "10.10.2.2",
                "drop",
                3,
            ),
        ]
    }

    #[test]
    fn every_datapath_verdict_filters_and_nothing_else() {
        let now = humantime::parse_rfc3339("2026-11-23T02:20:00Z").unwrap();
        let rs = [
            record(
                "2026-11-23T02:10:00.000Z",
                "10.10.9.1",
                "10.30.1.2",
                "related",
                1,
            ),
            record(
                "2026-11-23T02:11:00.000Z",
                "10.30.1.2",
                "10.10.1.2",
                "spoofed",
                1,
            ),
        ];
        for (v, n) in [("related", 1), ("spoofed", 1), ("reply", 0), ("drop", 0)] {
            let q = FlowQuery {
                verdict: Some(v.into()),
                ..Default::default()
            };
            assert_eq!(
                FlowFilter::from_query(&q, now).unwrap().apply(&rs).len(),
                n,
                "{v}"
            );
        }
        for bad in ["unknown", "Drop", "replies"] {
            let q = FlowQuery {
                verdict: Some(bad.into()),
                ..Default::default()
            };
            assert_eq!(
                FlowFilter::from_query(&q, now).err(),
                Some(QueryError::Verdict(bad.into()))
            );
        }
    }

    #[test]
    fn filters() {
        let now = humantime::parse_rfc3339("2026-11-23T02:20:00Z").unwrap();
        let rs = three_flows(2);
        let f = |q: FlowQuery| FlowFilter::from_query(&q, now).unwrap().apply(&rs);
        assert_eq!(f(FlowQuery::default()).len(), 3);
        let q = FlowQuery {
            since: Some("5m".into()),
            ..Default::default()
        };
        assert_eq!(f(q).len(), 2);
        let q = FlowQuery {
            ip: Some("10.10.2.0/24".into()),
            ..Default::default()
        };
        assert_eq!(f(q)[0].packets, 3);
        let q = FlowQuery {
            verdict: Some("audit".into()),
            ..Default::default()
        };
        assert_eq!(f(q)[0].packets, 2);
        let q = FlowQuery {
            last: Some("1".into()),
            port: Some("53".into()),
            ..Default::default()
        };
        assert_eq!(f(q)[0].packets, 3);
        let q = FlowQuery {
            until: Some("2026-11-23T02:15:00Z".into()),
            ..Default::default()
        };
        assert_eq!(f(q)[0].packets, 1);
        for bad in [
            FlowQuery {
                ip: Some("10.0.0.300".into()),
                ..Default::default()
            },
            FlowQuery {
                verdict: Some("dropped".into()),
                ..Default::default()
            },
            FlowQuery {
                since: Some("yesterday".into()),
                ..Default::default()
            },
            FlowQuery {
                last: Some("0".into()),
                ..Default::default()
            },
        ] {
            assert!(FlowFilter::from_query(&bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn top_groups_and_sorts() {
        let rs = three_flows(5);
        let (rows, events, packets) = top(&rs, TopBy::Src, 10);
        assert_eq!((events, packets), (3, 9));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].src, Some("10.30.1.3".parse().unwrap()));
        assert_eq!(rows[1].packets, 4);
        assert_eq!(rows[1].first_seen, "2026-11-23T02:10:00.000Z");
        assert_eq!(rows[1].last_seen, "2026-11-23T02:19:00.000Z");
        let (rows, _, _) = top(&rs, TopBy::Pair, 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].packets, 9);
        assert_eq!(rows[0].verdicts.get("drop"), Some(&4));
    }

    #[test]
    fn times() {
        let now = humantime::parse_rfc3339("2026-11-23T02:20:00Z").unwrap();
        let t = |s: &str| format_time(parse_time("since", s, now).unwrap());
        assert_eq!(t("2026-11-23T02:10:00Z"), "2026-11-23T02:10:00.000Z");
        assert_eq!(t("2026-11-23T03:10:00+01:00"), "2026-11-23T02:10:00.000Z");
        assert_eq!(t("2026-11-23T01:10:00.5-01:00"), "2026-11-23T02:10:00.500Z");
        assert_eq!(t("10m"), "2026-11-23T02:10:00.000Z");
        assert_eq!(t("1h 10m"), "2026-11-23T01:10:00.000Z");
        assert!(parse_time("since", "soon", now).is_err());
    }
}
