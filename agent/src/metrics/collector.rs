//! The kernel's counters as Prometheus metrics: a collector that reads the
//! per-CPU counter maps at every scrape (exact, never sampled) and labels
//! them with the names of the policy in force.

use std::sync::{Arc, Mutex, RwLock};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, Opts,
};

use crate::datapath::CounterReader;

/// Names by id for the labels, replaced on every policy reload.
#[derive(Clone, Debug, Default)]
pub struct PolicyNames {
    /// Environment names by id (0 is `world`; "" for an unused id).
    pub envs: Vec<String>,
    /// Rule names by id (0 is `default`; "" for an unused id).
    pub rules: Vec<String>,
}

/// The shared, replaceable names.
pub type EnvNames = Arc<RwLock<PolicyNames>>;

/// Reads the kernel counters at every scrape.
pub struct DatapathCollector {
    reader: Arc<CounterReader>,
    envs: EnvNames,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    stats: IntCounterVec,
    rule_packets: IntCounterVec,
    rule_bytes: IntCounterVec,
    /// Serialises scrapes: the vectors are refilled from the kernel on each.
    lock: Mutex<()>,
}

/// (stat index, metric label) of the datapath statistics exported.
const STAT_LABELS: [(u32, &str); envfence_ebpf::stat::COUNT as usize] = envfence_ebpf::stat::NAMES;

impl DatapathCollector {
    pub fn new(reader: Arc<CounterReader>, envs: EnvNames) -> Result<Self, prometheus::Error> {
        let labels = ["src_env", "dst_env", "verdict"];
        Ok(Self {
            reader,
            envs,
            packets: IntCounterVec::new(
                Opts::new(
                    "envfence_packets_total",
                    "Packets judged by envfence, by source and destination environment and verdict (exact, from the kernel's per-CPU counters).",
                ),
                &labels,
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "envfence_bytes_total",
                    "Bytes (skb length at TC, L2 header included) judged by envfence, by source and destination environment and verdict.",
                ),
                &labels,
            )?,
            stats: IntCounterVec::new(
                Opts::new(
                    "envfence_datapath_total",
                    "Datapath statistics: events emitted and lost, frames not judged by policy (non_ip passed; malformed and vlan_too_deep dropped in enforce mode), egress packets already judged at an attached ingress.",
                ),
                &["kind"],
            )?,
            rule_packets: IntCounterVec::new(
                Opts::new(
                    "envfence_rule_packets_total",
                    "Packets by the rule that decided them (`default` when no rule did) and verdict; rule ids past 1022 share the series of the rule with id 1023.",
                ),
                &["rule", "verdict"],
            )?,
            rule_bytes: IntCounterVec::new(
                Opts::new(
                    "envfence_rule_bytes_total",
                    "Bytes by the rule that decided them and verdict.",
                ),
                &["rule", "verdict"],
            )?,
            lock: Mutex::new(()),
        })
    }

    fn refresh(&self) -> Result<(), crate::datapath::DatapathError> {
        self.packets.reset();
        self.bytes.reset();
        self.stats.reset();
        self.rule_packets.reset();
        self.rule_bytes.reset();
        let names = self.envs.read().unwrap_or_else(|p| p.into_inner()).clone();
        let envs = &names.envs;
        let env_count = u32::try_from(envs.len()).unwrap_or(u32::MAX);
        let name = |id: u32| envs.get(id as usize).filter(|n| !n.is_empty());
        for cell in self.reader.pairs(env_count)? {
            // Cells of ids no environment holds now (a removed environment)
            // are not exported.
            let (Some(src), Some(dst)) = (name(cell.src_env), name(cell.dst_env)) else {
                continue;
            };
            let verdict = envfence_ebpf::verdict::name(cell.verdict);
            let labels = [src.as_str(), dst.as_str(), verdict];
            self.packets.with_label_values(&labels).inc_by(cell.packets);
            self.bytes.with_label_values(&labels).inc_by(cell.bytes);
        }
        let rule_count = u32::try_from(names.rules.len()).unwrap_or(u32::MAX);
        for cell in self.reader.rules(rule_count)? {
            let Some(rule) = names
                .rules
                .get(usize::from(cell.rule))
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let verdict = envfence_ebpf::verdict::name(cell.verdict);
            let labels = [rule.as_str(), verdict];
            self.rule_packets
                .with_label_values(&labels)
                .inc_by(cell.packets);
            self.rule_bytes
                .with_label_values(&labels)
                .inc_by(cell.bytes);
        }
        let stats = self.reader.stats()?;
        for (index, label) in STAT_LABELS {
            let value = stats.get(index as usize).copied().unwrap_or(0);
            self.stats.with_label_values(&[label]).inc_by(value);
        }
        Ok(())
    }
}

impl DatapathCollector {
    /// Every metric family this collector exports.
    fn families(&self) -> [&IntCounterVec; 5] {
        [
            &self.packets,
            &self.bytes,
            &self.stats,
            &self.rule_packets,
            &self.rule_bytes,
        ]
    }
}

impl Collector for DatapathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.families().into_iter().flat_map(|v| v.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.refresh() {
            // Better no sample than a wrong one: Prometheus sees the series
            // vanish and the error is in the log.
            tracing::error!("reading kernel counters failed: {e}");
            return Vec::new();
        }
        self.families()
            .into_iter()
            .flat_map(|v| v.collect())
            .collect()
    }
}
