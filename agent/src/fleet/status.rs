//! `fleet status`: every agent, up or down, its last scrape, mode, policy,
//! interfaces, lost events and reload failures; targets that disappeared.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{count, queries, target_key, Fleet, FleetError, TargetKey};
use crate::api::types::unix_to_rfc3339;

/// Up, down (the scrape fails), or gone (no longer scraped at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
    Gone,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Gone => "gone",
        }
    }
}

/// One agent. Policy, interfaces and counters are the last values
/// Prometheus has in the window (for a down agent: from before it went
/// down).
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub job: String,
    pub instance: String,
    pub state: NodeState,
    /// Unix time of the last scrape (failed or not).
    pub last_scrape: Option<f64>,
    pub last_scrape_time: Option<String>,
    pub mode: Option<String>,
    pub policy_generation: Option<u64>,
    pub policy_sha256: Option<String>,
    pub attached_interfaces: Option<u64>,
    pub events_lost: Option<u64>,
    pub reload_failures: Option<u64>,
    pub version: Option<String>,
}

/// The fleet's status.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub prometheus: String,
    pub selector: String,
    /// Unix time the queries were evaluated at.
    pub at: f64,
    pub window_seconds: u64,
    pub up: usize,
    pub down: usize,
    pub gone: usize,
    pub nodes: Vec<NodeStatus>,
}

/// Queries Prometheus for the fleet's status at `at` (Unix seconds),
/// looking back `window_seconds` for last-known values and disappeared
/// targets.
pub fn status(fleet: &Fleet, at: f64, window_seconds: u64) -> Result<FleetStatus, FleetError> {
    let scope = queries::Scope {
        window: format!("{window_seconds}s"),
        ..fleet.scope.clone()
    };
    let time = Some(at);
    let up = fleet.preflight(&scope, time)?;
    let node_label = &scope.node_label;
    let mut nodes: BTreeMap<TargetKey, NodeStatus> = BTreeMap::new();
    let blank = |s: &super::client::Sample, state| NodeStatus {
        node: s.label(node_label).to_owned(),
        job: s.label("job").to_owned(),
        instance: s.label("instance").to_owned(),
        state,
        last_scrape: None,
        last_scrape_time: None,
        mode: None,
        policy_generation: None,
        policy_sha256: None,
        attached_interfaces: None,
        events_lost: None,
        reload_failures: None,
        version: None,
    };
    for s in fleet.run(&queries::UP, &scope, time)? {
        let state = if s.value >= 1.0 {
            NodeState::Up
        } else {
            NodeState::Down
        };
        nodes.insert(target_key(&s), blank(&s, state));
    }
    for s in fleet.run(&queries::LAST_SEEN, &scope, time)? {
        let n = nodes
            .entry(target_key(&s))
            .or_insert_with(|| blank(&s, NodeState::Gone));
        if n.state == NodeState::Gone {
            n.last_scrape = Some(s.value);
        }
    }
    drop(up);
    for s in fleet.run(&queries::LAST_SCRAPE, &scope, time)? {
        if let Some(n) = nodes.get_mut(&target_key(&s)) {
            n.last_scrape = Some(s.value);
        }
    }
    // Several policy series of one target within the window (it
    // reloaded): the newest generation is the one in force.
    for s in fleet.run(&queries::POLICY, &scope, time)? {
        let Some(n) = nodes.get_mut(&target_key(&s)) else {
            continue;
        };
        let generation = s.label("generation").parse::<u64>().ok();
        if n.policy_generation.is_none() || generation > n.policy_generation {
            n.policy_generation = generation;
            n.mode = Some(s.label("mode").to_owned());
            n.policy_sha256 = Some(s.label("sha256").to_owned());
        }
    }
    for s in fleet.run(&queries::BUILD, &scope, time)? {
        if let Some(n) = nodes.get_mut(&target_key(&s)) {
            n.version = Some(s.label("version").to_owned());
        }
    }
    let mut set = |q: &queries::Query, f: fn(&mut NodeStatus, u64)| -> Result<(), FleetError> {
        for s in fleet.run(q, &scope, time)? {
            if let Some(n) = nodes.get_mut(&target_key(&s)) {
                f(n, count(s.value));
            }
        }
        Ok(())
    };
    set(&queries::ATTACHED, |n, v| n.attached_interfaces = Some(v))?;
    set(&queries::EVENTS_LOST, |n, v| {
        n.events_lost = Some(n.events_lost.unwrap_or(0) + v)
    })?;
    set(&queries::RELOAD_FAILURES, |n, v| {
        n.reload_failures = Some(n.reload_failures.unwrap_or(0) + v)
    })?;
    let mut nodes: Vec<NodeStatus> = nodes.into_values().collect();
    for n in &mut nodes {
        n.last_scrape_time = n.last_scrape.map(unix_to_rfc3339);
    }
    nodes.sort_by(|a, b| (&a.node, &a.job, &a.instance).cmp(&(&b.node, &b.job, &b.instance)));
    let tally = |s: NodeState| nodes.iter().filter(|n| n.state == s).count();
    Ok(FleetStatus {
        prometheus: fleet.client.url().to_owned(),
        selector: scope.selector.clone(),
        at,
        window_seconds,
        up: tally(NodeState::Up),
        down: tally(NodeState::Down),
        gone: tally(NodeState::Gone),
        nodes,
    })
}
