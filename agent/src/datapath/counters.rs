//! The kernel's exact counters, summed over CPUs: packets and bytes per
//! (source environment, destination environment, verdict), per rule, and the
//! datapath's statistics. Read by the metrics collector and `status`.

use std::sync::Mutex;

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use envfence_ebpf::{
    counter_index, map_names, rule_counter_index, stat, Counter, COUNTED_RULES, MAX_ENVS,
    NUM_VERDICTS,
};

use super::DatapathError;

/// Exact packet and byte counts of one (src env, dst env, verdict) cell,
/// summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairCount {
    pub src_env: u32,
    pub dst_env: u32,
    pub verdict: u8,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the kernel's per-CPU counters (owned maps, shareable across
/// threads: reads take `&self`).
pub struct CounterReader {
    counters: Mutex<PerCpuArray<MapData, Counter>>,
    rules: Mutex<PerCpuArray<MapData, Counter>>,
    stats: PerCpuArray<MapData, u64>,
}

/// Exact packet and byte counts of one (rule, verdict) cell, summed over
/// CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCount {
    pub rule: u16,
    pub verdict: u8,
    pub packets: u64,
    pub bytes: u64,
}

impl CounterReader {
    pub(super) fn new(counters: Map, rules: Map, stats: Map) -> Result<Self, DatapathError> {
        Ok(Self {
            rules: Mutex::new(
                PerCpuArray::try_from(rules)
                    .map_err(DatapathError::map(map_names::RULE_COUNTERS))?,
            ),
            counters: Mutex::new(
                PerCpuArray::try_from(counters).map_err(DatapathError::map(map_names::COUNTERS))?,
            ),
            stats: PerCpuArray::try_from(stats).map_err(DatapathError::map(map_names::STATS))?,
        })
    }

    /// One cell, summed over CPUs.
    pub fn cell(&self, src_env: u32, dst_env: u32, verdict: u8) -> Result<Counter, DatapathError> {
        let values = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&counter_index(src_env, dst_env, u32::from(verdict)), 0)
            .map_err(DatapathError::map(map_names::COUNTERS))?;
        Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }

    /// Every non-zero cell among environment ids `0..env_count`.
    pub fn pairs(&self, env_count: u32) -> Result<Vec<PairCount>, DatapathError> {
        let n = env_count.min(MAX_ENVS);
        let mut out = Vec::new();
        for src_env in 0..n {
            for dst_env in 0..n {
                for verdict in 0..NUM_VERDICTS as u8 {
                    let c = self.cell(src_env, dst_env, verdict)?;
                    if c.packets != 0 {
                        out.push(PairCount {
                            src_env,
                            dst_env,
                            verdict,
                            packets: c.packets,
                            bytes: c.bytes,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Zeroes every cell of environment `id` (as source or destination), for
    /// an id that starts to name another environment.
    pub(super) fn zero_env(&self, id: u32) -> Result<(), DatapathError> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut cells = Vec::new();
        for other in 0..MAX_ENVS {
            for verdict in 0..NUM_VERDICTS {
                cells.push(counter_index(id, other, verdict));
                cells.push(counter_index(other, id, verdict));
            }
        }
        zero(&mut counters, &cells, map_names::COUNTERS)
    }

    /// Zeroes the cells of rule `id`, for an id that starts to name another
    /// rule (ids past the counted ones share a cell, which is left alone).
    pub(super) fn zero_rule(&self, id: u32) -> Result<(), DatapathError> {
        if id >= COUNTED_RULES - 1 {
            return Ok(());
        }
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let cells: Vec<u32> = (0..NUM_VERDICTS)
            .map(|v| rule_counter_index(id, v))
            .collect();
        zero(&mut rules, &cells, map_names::RULE_COUNTERS)
    }

    /// Every non-zero (rule, verdict) cell among rule ids `0..rule_count`.
    pub fn rules(&self, rule_count: u32) -> Result<Vec<RuleCount>, DatapathError> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for rule in 0..rule_count.min(COUNTED_RULES) {
            for verdict in 0..NUM_VERDICTS as u8 {
                let values = rules
                    .get(&rule_counter_index(rule, u32::from(verdict)), 0)
                    .map_err(DatapathError::map(map_names::RULE_COUNTERS))?;
                let (packets, bytes) = values
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if packets != 0 {
                    out.push(RuleCount {
                        rule: u16::try_from(rule).unwrap_or(u16::MAX),
                        verdict,
                        packets,
                        bytes,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The datapath statistics, indexed by `envfence_ebpf::stat`.
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize], DatapathError> {
        stats_of(&self.stats).map_err(DatapathError::map(map_names::STATS))
    }
}

/// The datapath statistics of the `STATS` map `map` (loaded or pinned),
/// summed over CPUs, indexed by `envfence_ebpf::stat`.
pub(super) fn stats_of(
    map: &PerCpuArray<MapData, u64>,
) -> Result<[u64; stat::COUNT as usize], aya::maps::MapError> {
    let mut out = [0u64; stat::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        *slot = map.get(&index, 0)?.iter().sum();
    }
    Ok(out)
}

fn zero(
    map: &mut PerCpuArray<MapData, Counter>,
    cells: &[u32],
    name: &'static str,
) -> Result<(), DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::Interface {
        ifname: String::from("*"),
        message: format!("counting CPUs ({what}): {e}"),
    })?;
    for &index in cells {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|e| {
            DatapathError::Interface {
                ifname: String::from("*"),
                message: format!("per-CPU zeros: {e}"),
            }
        })?;
        map.set(index, zeros, 0).map_err(DatapathError::map(name))?;
    }
    Ok(())
}
