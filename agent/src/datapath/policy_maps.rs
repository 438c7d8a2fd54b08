//! Writing a compiled policy into the kernel maps without a moment of mixed
//! verdicts: the maps hold two policy slots; the new policy is written into
//! the slot the datapath does not read, then `active_slot` is flipped with
//! one map update. The slot left behind is cleared at the next install, not
//! right after the flip, so a packet that read the old slot just before the
//! flip still finds all of it.

use std::time::Duration;

use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use envfence_ebpf::{
    config_flags, map_names, slot_pair_index, trie, tunnel_ports_index, Chunk, Config, PairVerdict,
    PortKey, RuleVerdict, TriePrefix, TunnelPorts, TUNNEL_PORTS_PER_ENTRY,
};

use super::{counters::CounterReader, DatapathError};
use crate::policy::classifier::{Classifier, FamilyTables};
use crate::policy::{CompiledPolicy, Mode, NonIp, SourceCheck};

/// What an install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The generation of the policy now in force.
    pub generation: u32,
    /// The slot it is in.
    pub slot: u32,
}

/// The datapath's configuration as the kernel holds it now.
pub(super) fn current_config(ebpf: &mut Ebpf) -> Result<Config, DatapathError> {
    let config: Array<&mut MapData, Config> = typed_map(ebpf, map_names::CONFIG)?;
    config
        .get(&0, 0)
        .map_err(DatapathError::map(map_names::CONFIG))
}

/// Installs `policy` into the inactive slot and flips to it. `prior` is the
/// policy in force (or last in force), so that an environment or rule id
/// that now names something else has its counters zeroed before any packet
/// is counted under the new name. `source_checks`: the new policy's source
/// check of every attached interface, written into the inactive slot too.
pub(super) fn install(
    ebpf: &mut Ebpf,
    counters: &CounterReader,
    policy: &CompiledPolicy,
    prior: Option<&CompiledPolicy>,
    report_interval: Duration,
    source_checks: &[(u32, SourceCheck)],
) -> Result<Installed, DatapathError> {
    let prior_envs: &[String] = prior.map_or(&[], |p| &p.env_names);
    let prior_rules: &[String] = prior.map_or(&[], |p| &p.rule_names);
    let current = current_config(ebpf)?;
    let target = 1 - (current.active_slot & 1);
    clear_slot(ebpf, target)?;
    write_slot(ebpf, policy, target)?;
    for (id, name) in policy.env_names.iter().enumerate().skip(1) {
        let renamed = prior_envs.get(id).is_none_or(|prior| prior != name);
        if !name.is_empty() && renamed {
            counters.zero_env(u32::try_from(id).unwrap_or(u32::MAX))?;
        }
    }
    for (id, name) in policy.rule_names.iter().enumerate() {
        let renamed = prior_rules.get(id).is_none_or(|prior| prior != name);
        if !name.is_empty() && renamed {
            counters.zero_rule(u32::try_from(id).unwrap_or(u32::MAX))?;
        }
    }
    for (ifindex, check) in source_checks {
        super::source_maps::set_mode(ebpf, *ifindex, *check, &[target])?;
    }
    let generation = current.generation.wrapping_add(1);
    let mut next = current;
    next.report_interval_ns = u64::try_from(report_interval.as_nanos()).unwrap_or(u64::MAX);
    next.generation = generation;
    next.slot_generation[target as usize] = generation;
    next.slot_audit_mode[target as usize] = u32::from(policy.mode == Mode::Audit);
    next.slot_flags[target as usize] = if policy.non_ip == NonIp::Drop {
        config_flags::NON_IP_DROP
    } else {
        0
    };
    next.ct_timeout_s = policy.conntrack.config_timeouts();
    let mut config: Array<&mut MapData, Config> = typed_map(ebpf, map_names::CONFIG)?;
    // First the new slot's parameters (the datapath does not read them yet),
    // then the flip.
    config
        .set(0, next, 0)
        .map_err(DatapathError::map(map_names::CONFIG))?;
    next.active_slot = target;
    config
        .set(0, next, 0)
        .map_err(DatapathError::map(map_names::CONFIG))?;
    Ok(Installed {
        generation,
        slot: target,
    })
}

/// Removes every port entry of `slot` (the classifier's tables are
/// overwritten whole: an entry past the new tables' end is unreachable).
fn clear_slot(ebpf: &mut Ebpf, slot: u32) -> Result<(), DatapathError> {
    let s = slot as u8;
    let mut ports: HashMap<&mut MapData, PortKey, RuleVerdict> = typed_map(ebpf, map_names::PORTS)?;
    let stale: Vec<PortKey> = ports
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.slot == s)
        .collect();
    for key in &stale {
        ports
            .remove(key)
            .map_err(DatapathError::map(map_names::PORTS))?;
    }
    Ok(())
}

fn write_slot(ebpf: &mut Ebpf, policy: &CompiledPolicy, slot: u32) -> Result<(), DatapathError> {
    let s = slot as u8;
    let classifier = Classifier::build(policy);
    let families = [
        (&classifier.v4, map_names::ENV_V4, map_names::PREFIX_V4),
        (&classifier.v6, map_names::ENV_V6, map_names::PREFIX_V6),
    ];
    for (tables, chunks, prefixes) in families {
        write_tables(ebpf, tables, slot, chunks, prefixes)?;
    }
    {
        let mut pairs: Array<&mut MapData, PairVerdict> = typed_map(ebpf, map_names::PAIRS)?;
        for (i, pv) in policy.pairs.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| DatapathError::Missing {
                kind: "pair slot",
                name: map_names::PAIRS,
            })?;
            let (src, dst) = (i / envfence_ebpf::MAX_ENVS, i % envfence_ebpf::MAX_ENVS);
            pairs
                .set(slot_pair_index(slot, src, dst), pv, 0)
                .map_err(DatapathError::map(map_names::PAIRS))?;
        }
    }
    {
        // The whole table of the slot is written: nothing stale survives.
        let mut tunnels: Array<&mut MapData, TunnelPorts> =
            typed_map(ebpf, map_names::TUNNEL_PORTS)?;
        for (i, entry) in policy.tunnels.table().iter().enumerate() {
            let first_port = u16::try_from(i * TUNNEL_PORTS_PER_ENTRY as usize).unwrap_or(0);
            tunnels
                .set(tunnel_ports_index(slot, first_port), entry, 0)
                .map_err(DatapathError::map(map_names::TUNNEL_PORTS))?;
        }
    }
    let mut ports: HashMap<&mut MapData, PortKey, RuleVerdict> = typed_map(ebpf, map_names::PORTS)?;
    for (key, value) in &policy.ports {
        let key = PortKey { slot: s, ..*key };
        ports
            .insert(key, value, 0)
            .map_err(DatapathError::map(map_names::PORTS))?;
    }
    Ok(())
}

/// Writes one family's classifier tables into `slot` (the slot the
/// datapath does not read). A policy's tables always fit (see
/// [`envfence_ebpf::trie`]); the check keeps a compiler bug from writing
/// into the other slot.
fn write_tables(
    ebpf: &mut Ebpf,
    tables: &FamilyTables,
    slot: u32,
    chunks: &'static str,
    prefixes: &'static str,
) -> Result<(), DatapathError> {
    let full = |name: &'static str, len: usize, capacity: u32| {
        if u32::try_from(len).is_ok_and(|n| n <= capacity) {
            Ok(())
        } else {
            Err(DatapathError::Capacity {
                name,
                needed: len,
                capacity,
            })
        }
    };
    full(chunks, tables.chunks.len(), trie::CHUNKS)?;
    full(
        prefixes,
        tables.prefixes.len(),
        envfence_ebpf::capacity::ENV_V4,
    )?;
    // Typed once: aya checks the value size against the map's.
    let _: Array<&mut MapData, TriePrefix> = typed_map(ebpf, prefixes)?;
    super::batch::set_array(ebpf, prefixes, trie::prefix_base(slot), &tables.prefixes)?;
    let _: Array<&mut MapData, Chunk> = typed_map(ebpf, chunks)?;
    super::batch::set_array(ebpf, chunks, trie::chunk_base(slot), &tables.chunks)?;
    Ok(())
}

pub(super) fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(DatapathError::map(name))
}
