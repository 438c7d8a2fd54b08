//! `audit verify --anchors URL`: the chain heads a Prometheus server
//! recorded for a node (`envfence_audit_head_seq` and
//! `envfence_audit_head_hash`, scraped together), read over its HTTP API.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::audit::{
    metrics::{hash_from_parts, HASH_PARTS, HEAD_HASH, HEAD_SEQ},
    Anchor,
};

/// GET `path?query=…` of the server at `url` (http or https; the same
/// HTTP client as `envfence fleet`).
fn get(url: &str, path: &str, query: &str) -> anyhow::Result<String> {
    let full = format!("{}{path}", url.trim_end_matches('/'));
    let mut resp = ureq::get(&full)
        .query("query", query)
        .header("Accept", "application/json")
        .call()
        .with_context(|| format!("--anchors {url}: GET {path}"))?;
    resp.body_mut()
        .read_to_string()
        .with_context(|| format!("--anchors {url}: reading the answer"))
}

/// A series' labels and its (timestamp, value) samples.
type Series = (Value, Vec<(f64, f64)>);

/// Every series of a range query result.
fn samples(url: &str, query: &str) -> anyhow::Result<Vec<Series>> {
    let body = get(url, "/api/v1/query", query)?;
    let v: Value = serde_json::from_str(&body)
        .with_context(|| format!("--anchors {url}: not a Prometheus API answer: {body}"))?;
    if v["status"] != "success" {
        bail!("--anchors {url}: query {query}: {}", v["error"]);
    }
    let mut out = Vec::new();
    for series in v["data"]["result"].as_array().into_iter().flatten() {
        let mut points = Vec::new();
        for p in series["values"].as_array().into_iter().flatten() {
            let t = p[0].as_f64().unwrap_or(0.0);
            let val: f64 = p[1].as_str().unwrap_or("nan").parse().unwrap_or(f64::NAN);
            points.push((t, val));
        }
        out.push((series["metric"].clone(), points));
    }
    Ok(out)
}

fn selector(node: &str) -> String {
    format!(
        "{{node=\"{}\"}}",
        node.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// Every head Prometheus recorded for `node` in the last `range` (a
/// PromQL duration such as `90d`): one anchor per scrape, deduplicated.
pub fn fetch(url: &str, node: &str, range: &str) -> anyhow::Result<Vec<Anchor>> {
    let sel = selector(node);
    let seqs = samples(url, &format!("{HEAD_SEQ}{sel}[{range}]"))?;
    let parts = samples(url, &format!("{HEAD_HASH}{sel}[{range}]"))?;
    // timestamp (ms) -> seq, and -> hash parts.
    let mut by_time: BTreeMap<i64, (Option<u64>, [Option<u64>; HASH_PARTS])> = BTreeMap::new();
    let ms = |t: f64| (t * 1000.0).round() as i64;
    for (_, points) in &seqs {
        for (t, v) in points {
            by_time.entry(ms(*t)).or_default().0 = Some(*v as u64);
        }
    }
    for (labels, points) in &parts {
        let Some(part) = labels["part"]
            .as_str()
            .and_then(|p| p.parse::<usize>().ok())
        else {
            continue;
        };
        if part >= HASH_PARTS {
            continue;
        }
        for (t, v) in points {
            by_time.entry(ms(*t)).or_default().1[part] = Some(*v as u64);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (t, (seq, parts)) in by_time {
        let (Some(seq), Some(parts)) = (seq, parts.iter().copied().collect::<Option<Vec<u64>>>())
        else {
            continue;
        };
        let Some(hash) = hash_from_parts(&parts) else {
            continue;
        };
        if seen.insert((seq, hash.clone())) {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(t).unwrap_or(0)),
            );
            out.push(Anchor {
                seq,
                hash,
                at: format!("by {url} at {when}"),
            });
        }
    }
    Ok(out)
}
