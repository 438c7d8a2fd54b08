//! Building the status report: from the agent's snapshot plus the pinned
//! maps (in the agent), or from the pinned maps and the saved policy alone
//! (in the CLI, when the agent is down).

use std::path::Path;

use envfence_ebpf::NUM_VERDICTS;

use super::types::{CountersReport, HookReport, InterfaceReport, StatusReport, Volume};
use crate::{
    datapath::{
        inspect::{self, PinnedState, STAT_NAMES},
        pins::PinLayout,
        Hook,
    },
    state,
    status::StatusSnapshot,
};

/// The report of a running agent's snapshot (kernel parts not filled).
pub fn from_snapshot(s: StatusSnapshot) -> StatusReport {
    StatusReport {
        source: "agent".to_owned(),
        agent_running: true,
        agent_error: None,
        socket: String::new(),
        version: s.version,
        abi: s.abi,
        node: s.node,
        started_at: s.started_at,
        ready: s.ready,
        not_ready_reason: s.not_ready_reason,
        mode: s.mode,
        generation: s.generation,
        active_slot: None,
        policy_origin: s.policy_origin,
        policy_sha256: s.policy_sha256,
        policy_loaded_at: s.policy_loaded_at,
        last_reload_error: s.last_reload_error,
        environments: s
            .environments
            .into_iter()
            .filter(|e| e != crate::policy::WORLD)
            .collect(),
        rules: s
            .rules
            .into_iter()
            .filter(|r| !r.is_empty() && r != crate::policy::DEFAULT_RULE)
            .collect(),
        interfaces: s
            .interfaces
            .into_iter()
            .map(|i| InterfaceReport {
                name: i.name,
                ifindex: i.ifindex,
                hooks: i
                    .hooks
                    .into_iter()
                    .map(|hook| HookReport {
                        hook,
                        ..HookReport::default()
                    })
                    .collect(),
            })
            .collect(),
        pending_interfaces: s.pending_interfaces,
        pin_dir: s.pin_dir,
        metrics_addr: s.metrics_addr,
        counters: None,
        events_emitted: s.events_emitted,
        events_lost: s.events_lost,
        events_stored: 0,
        events_seen: 0,
        warnings: Vec::new(),
    }
}

/// The kernel's counters.
pub fn counters(state: &PinnedState) -> Result<CountersReport, inspect::InspectError> {
    let totals = state.verdict_totals(0)?;
    let stats = state.stats()?;
    let mut out = CountersReport::default();
    for v in 0..NUM_VERDICTS as u8 {
        let name = envfence_ebpf::verdict::name(v);
        out.verdicts.insert(
            name.to_owned(),
            Volume {
                packets: totals.packets[usize::from(v)],
                bytes: totals.bytes[usize::from(v)],
            },
        );
    }
    for (index, name) in STAT_NAMES {
        if let Some(v) = stats.get(index as usize) {
            out.datapath.insert(name.to_owned(), *v);
        }
    }
    out.tracked_flows = state.tracked_flows(crate::datapath::monotonic_ns());
    Ok(out)
}

/// Adds what the pinned maps say to a report: active slot, counters, live
/// event statistics, and each hook's program.
pub fn add_kernel_state(report: &mut StatusReport, state: &PinnedState) {
    match state.config() {
        Ok(config) => {
            report.active_slot = Some(config.active_slot & 1);
            if report.agent_running
                && report.generation != 0
                && config.generation != report.generation
            {
                report.warnings.push(format!(
                    "the agent reports generation {} but the kernel's CONFIG holds {}",
                    report.generation, config.generation
                ));
            }
        }
        Err(e) => report.warnings.push(e.to_string()),
    }
    match counters(state) {
        Ok(c) => {
            report.events_emitted = c.datapath.get("events_emitted").copied().unwrap_or(0);
            report.events_lost = c.datapath.get("events_lost").copied().unwrap_or(0);
            report.counters = Some(c);
        }
        Err(e) => report.warnings.push(e.to_string()),
    }
    for iface in &mut report.interfaces {
        let links = state.links(iface.ifindex);
        iface.hooks = links.into_iter().map(hook_report).collect();
    }
}

fn hook_report(link: inspect::LinkReport) -> HookReport {
    HookReport {
        hook: link.hook.to_owned(),
        program_id: link.program_id,
        program_name: link.program_name,
        link_id: link.link_id,
        error: link.error,
    }
}

/// Each hook's program found with a tcx query of the interface (for an
/// agent that pins nothing): the first program named `envfence_<hook>`.
pub fn query_hooks(iface: &mut InterfaceReport) {
    use aya::programs::{tc::SchedClassifier, TcAttachType};
    let mut hooks = Vec::new();
    for (hook, ty) in [
        (Hook::Ingress, TcAttachType::Ingress),
        (Hook::Egress, TcAttachType::Egress),
    ] {
        let mut h = HookReport {
            hook: hook.as_str().to_owned(),
            ..HookReport::default()
        };
        match SchedClassifier::query_tcx(&iface.name, ty) {
            Ok((_, progs)) => {
                // The kernel keeps 15 bytes of a program's name.
                let want = &hook.program_name()[..hook.program_name().len().min(15)];
                match progs.iter().find(|p| p.name_as_str() == Some(want)) {
                    Some(p) => {
                        h.program_id = Some(p.id());
                        h.program_name = p.name_as_str().map(str::to_owned);
                    }
                    None => h.error = Some("no envfence program in the tcx chain".to_owned()),
                }
            }
            Err(e) => h.error = Some(e.to_string()),
        }
        hooks.push(h);
    }
    iface.hooks = hooks;
}

/// The report of a node whose agent did not answer: from the pinned maps
/// under `pin_root` and the policy saved in `state_dir`.
pub fn from_pins(pin_root: &Path, state_dir: &Path) -> StatusReport {
    let layout = PinLayout::new(pin_root);
    let mut report = StatusReport {
        source: "pins".to_owned(),
        abi: envfence_ebpf::ABI_VERSION,
        pin_dir: layout.dir().display().to_string(),
        ..StatusReport::default()
    };
    let state = match PinnedState::open(pin_root) {
        Ok(s) => s,
        Err(e) => {
            report.pin_dir = String::new();
            report.warnings.push(e.to_string());
            return report;
        }
    };
    let config = match state.config() {
        Ok(c) => Some(c),
        Err(e) => {
            report.warnings.push(e.to_string());
            None
        }
    };
    if let Some(c) = config {
        let slot = (c.active_slot & 1) as usize;
        report.active_slot = Some(c.active_slot & 1);
        report.generation = c.generation;
        report.mode = if c.slot_audit_mode[slot] != 0 {
            "audit"
        } else {
            "enforce"
        }
        .to_owned();
    }
    match state.attached() {
        Ok(ifindexes) => {
            report.interfaces = ifindexes
                .into_iter()
                .map(|ifindex| InterfaceReport {
                    name: nix::net::if_::if_indextoname(ifindex)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    ifindex,
                    hooks: Vec::new(),
                })
                .collect();
            // As the agent lists them.
            report
                .interfaces
                .sort_by(|a, b| (&a.name, a.ifindex).cmp(&(&b.name, b.ifindex)));
        }
        Err(e) => report.warnings.push(e.to_string()),
    }
    add_kernel_state(&mut report, &state);
    if report.interfaces.iter().any(|i| i.name.is_empty()) {
        report.warnings.push(
            "some attached interfaces have no name here: run this in the agent's network namespace to see them"
                .to_owned(),
        );
    }
    match state::load(state_dir) {
        Some(saved) => {
            report.policy_origin = format!("{} (saved copy)", saved.origin);
            match saved.parse() {
                Ok(p) => {
                    report.rules = p.rules.iter().map(|r| r.name.clone()).collect();
                    report.policy_sha256 = p.source_sha256;
                }
                Err(e) => report
                    .warnings
                    .push(format!("the saved policy copy does not parse: {e}")),
            }
            report.environments = saved
                .env_names
                .iter()
                .skip(1)
                .filter(|n| !n.is_empty())
                .cloned()
                .collect();
            if config.is_some_and(|c| c.generation != saved.generation) {
                report.warnings.push(format!(
                    "the saved policy copy {} is generation {} but the kernel runs generation {}: its names may be wrong",
                    state::path(state_dir).display(),
                    saved.generation,
                    report.generation
                ));
            }
        }
        None => report.warnings.push(format!(
            "no saved policy copy at {} (environment and rule names unknown)",
            state::path(state_dir).display()
        )),
    }
    report
}
