//! `fleet violations` and `fleet top`: forbidden traffic by node ×
//! environment pair × verdict and by node × rule over a window, exact
//! packets and bytes with average rates, and its heaviest groups.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{count, queries, Fleet, FleetError};
use crate::api::types::unix_to_rfc3339;

/// The time range of a report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Unix seconds.
    pub from: f64,
    pub to: f64,
}

impl Window {
    /// Whole seconds, at least 1.
    pub fn seconds(&self) -> u64 {
        count((self.to - self.from).max(1.0))
    }
}

/// Packets and bytes of one cell, with their average rates in the window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Volume {
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
}

impl Volume {
    fn add(&mut self, other: &Volume) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.packets_per_second += other.packets_per_second;
        self.bytes_per_second += other.bytes_per_second;
    }
}

/// Packets of one (node, source environment, destination environment,
/// verdict).
#[derive(Clone, Debug, Serialize)]
pub struct PairCell {
    pub node: String,
    pub job: String,
    pub instance: String,
    pub src_env: String,
    pub dst_env: String,
    pub verdict: String,
    #[serde(flatten)]
    pub volume: Volume,
}

/// Packets of one (node, deciding rule, verdict).
#[derive(Clone, Debug, Serialize)]
pub struct RuleCell {
    pub node: String,
    pub job: String,
    pub instance: String,
    pub rule: String,
    pub verdict: String,
    #[serde(flatten)]
    pub volume: Volume,
}

/// The violations of a window.
#[derive(Clone, Debug, Serialize)]
pub struct Violations {
    pub prometheus: String,
    pub selector: String,
    pub from: String,
    pub to: String,
    pub seconds: u64,
    /// The verdicts counted (regex alternatives).
    pub verdicts: Vec<String>,
    /// Heaviest first.
    pub pairs: Vec<PairCell>,
    pub rules: Vec<RuleCell>,
    pub total: Volume,
}

type Key = Vec<String>;

/// Runs a packets and a bytes query and joins them by `labels`.
fn cells(
    fleet: &Fleet,
    scope: &queries::Scope,
    window: &Window,
    packets: &queries::Query,
    bytes: &queries::Query,
    labels: &[&str],
) -> Result<BTreeMap<Key, Volume>, FleetError> {
    let secs = window.seconds() as f64;
    let key = |s: &super::client::Sample| -> Key {
        labels.iter().map(|l| s.label(l).to_owned()).collect()
    };
    let mut out: BTreeMap<Key, Volume> = BTreeMap::new();
    for s in fleet.run(packets, scope, Some(window.to))? {
        let v = out.entry(key(&s)).or_default();
        v.packets += count(s.value);
        v.packets_per_second = v.packets as f64 / secs;
    }
    for s in fleet.run(bytes, scope, Some(window.to))? {
        let v = out.entry(key(&s)).or_default();
        v.bytes += count(s.value);
        v.bytes_per_second = v.bytes as f64 / secs;
    }
    Ok(out)
}

/// Queries the violations of `window` with `verdicts` (e.g. `drop|audit`).
pub fn violations(
    fleet: &Fleet,
    window: &Window,
    verdicts: &[String],
) -> Result<Violations, FleetError> {
    let scope = queries::Scope {
        window: format!("{}s", window.seconds()),
        verdicts: verdicts.join("|"),
        ..fleet.scope.clone()
    };
    fleet.preflight(&scope, Some(window.to))?;
    let node = scope.node_label.as_str();
    let pair_labels = [node, "job", "instance", "src_env", "dst_env", "verdict"];
    let mut pairs: Vec<PairCell> = cells(
        fleet,
        &scope,
        window,
        &queries::VIOLATION_PACKETS,
        &queries::VIOLATION_BYTES,
        &pair_labels,
    )?
    .into_iter()
    .map(|(k, volume)| PairCell {
        node: k[0].clone(),
        job: k[1].clone(),
        instance: k[2].clone(),
        src_env: k[3].clone(),
        dst_env: k[4].clone(),
        verdict: k[5].clone(),
        volume,
    })
    .collect();
    pairs.sort_by(|a, b| {
        b.volume
            .packets
            .cmp(&a.volume.packets)
            .then_with(|| a.node.cmp(&b.node))
    });
    let rule_labels = [node, "job", "instance", "rule", "verdict"];
    let mut rules: Vec<RuleCell> = cells(
        fleet,
        &scope,
        window,
        &queries::RULE_PACKETS,
        &queries::RULE_BYTES,
        &rule_labels,
    )?
    .into_iter()
    .map(|(k, volume)| RuleCell {
        node: k[0].clone(),
        job: k[1].clone(),
        instance: k[2].clone(),
        rule: k[3].clone(),
        verdict: k[4].clone(),
        volume,
    })
    .collect();
    rules.sort_by(|a, b| {
        b.volume
            .packets
            .cmp(&a.volume.packets)
            .then_with(|| a.node.cmp(&b.node))
    });
    let mut total = Volume::default();
    for p in &pairs {
        total.add(&p.volume);
    }
    Ok(Violations {
        prometheus: fleet.client.url().to_owned(),
        selector: scope.selector.clone(),
        from: unix_to_rfc3339(window.from),
        to: unix_to_rfc3339(window.to),
        seconds: window.seconds(),
        verdicts: verdicts.to_vec(),
        pairs,
        rules,
        total,
    })
}

/// What `fleet top` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopBy {
    /// Environment pair and verdict, summed over the nodes.
    Pair,
    /// Node and verdict.
    Node,
    /// Deciding rule and verdict, summed over the nodes.
    Rule,
    /// Node, environment pair and verdict (the cells themselves).
    NodePair,
}

/// One group of `fleet top`.
#[derive(Clone, Debug, Serialize)]
pub struct TopRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub verdict: String,
    #[serde(flatten)]
    pub volume: Volume,
    /// The nodes the group's packets were counted on.
    pub nodes: Vec<String>,
}

/// `fleet top`.
#[derive(Clone, Debug, Serialize)]
pub struct Top {
    pub by: TopBy,
    pub from: String,
    pub to: String,
    pub seconds: u64,
    pub verdicts: Vec<String>,
    pub rows: Vec<TopRow>,
    /// Groups beyond the limit.
    pub more: usize,
    pub total: Volume,
}

/// The `limit` heaviest groups of `v` by `by`.
pub fn top(v: &Violations, by: TopBy, limit: usize) -> Top {
    let mut groups: BTreeMap<Vec<String>, TopRow> = BTreeMap::new();
    let mut add = |key: Vec<String>, make: &dyn Fn() -> TopRow, node: &str, vol: &Volume| {
        let row = groups.entry(key).or_insert_with(make);
        row.volume.add(vol);
        if !row.nodes.iter().any(|n| n == node) {
            row.nodes.push(node.to_owned());
            row.nodes.sort();
        }
    };
    let empty = |verdict: &str| TopRow {
        node: None,
        src_env: None,
        dst_env: None,
        rule: None,
        verdict: verdict.to_owned(),
        volume: Volume::default(),
        nodes: Vec::new(),
    };
    match by {
        TopBy::Rule => {
            for c in &v.rules {
                add(
                    vec![c.rule.clone(), c.verdict.clone()],
                    &|| TopRow {
                        rule: Some(c.rule.clone()),
                        ..empty(&c.verdict)
                    },
                    &c.node,
                    &c.volume,
                );
            }
        }
        _ => {
            for c in &v.pairs {
                let (key, row) = match by {
                    TopBy::Pair => (
                        vec![c.src_env.clone(), c.dst_env.clone(), c.verdict.clone()],
                        TopRow {
                            src_env: Some(c.src_env.clone()),
                            dst_env: Some(c.dst_env.clone()),
                            ..empty(&c.verdict)
                        },
                    ),
                    TopBy::Node => (
                        vec![c.node.clone(), c.verdict.clone()],
                        TopRow {
                            node: Some(c.node.clone()),
                            ..empty(&c.verdict)
                        },
                    ),
                    _ => (
                        vec![
                            c.node.clone(),
                            c.src_env.clone(),
                            c.dst_env.clone(),
                            c.verdict.clone(),
                        ],
                        TopRow {
                            node: Some(c.node.clone()),
                            src_env: Some(c.src_env.clone()),
                            dst_env: Some(c.dst_env.clone()),
                            ..empty(&c.verdict)
                        },
                    ),
                };
                add(key, &|| row.clone(), &c.node, &c.volume);
            }
        }
    }
    let mut rows: Vec<TopRow> = groups.into_values().collect();
    rows.sort_by(|a, b| {
        b.volume
            .packets
            .cmp(&a.volume.packets)
            .then_with(|| b.volume.bytes.cmp(&a.volume.bytes))
    });
    let more = rows.len().saturating_sub(limit);
    rows.truncate(limit);
    Top {
        by,
        from: v.from.clone(),
        to: v.to.clone(),
        seconds: v.seconds,
        verdicts: v.verdicts.clone(),
        rows,
        more,
        total: v.total.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(node: &str, src: &str, dst: &str, verdict: &str, packets: u64) -> PairCell {
        PairCell {
            node: node.into(),
            job: "envfence".into(),
            instance: format!("{node}:9477"),
            src_env: src.into(),
            dst_env: dst.into(),
            verdict: verdict.into(),
            volume: Volume {
                packets,
                bytes: packets * 100,
                packets_per_second: packets as f64 / 10.0,
                bytes_per_second: packets as f64 * 10.0,
            },
        }
    }

    #[test]
    fn top_groups_and_limits() {
        let v = Violations {
            prometheus: String::new(),
            selector: String::new(),
            from: String::new(),
            to: String::new(),
            seconds: 10,
            verdicts: vec!["drop".into()],
            pairs: vec![
                cell("a", "test", "production", "drop", 5),
                cell("b", "test", "production", "drop", 7),
                cell("b", "dev", "production", "drop", 3),
            ],
            rules: Vec::new(),
            total: Volume::default(),
        };
        let t = top(&v, TopBy::Pair, 10);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0].volume.packets, 12);
        assert_eq!(t.rows[0].nodes, vec!["a", "b"]);
        let t = top(&v, TopBy::Node, 1);
        assert_eq!(t.rows[0].node.as_deref(), Some("b"));
        assert_eq!(t.rows[0].volume.packets, 10);
        assert_eq!(t.more, 1);
        assert_eq!(top(&v, TopBy::NodePair, 10).rows.len(), 3);
        assert_eq!(
            Window {
                from: 100.0,
                to: 100.2
            }
            .seconds(),
            1
        );
    }
}
