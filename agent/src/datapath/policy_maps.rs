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
    config_flags, map_names, slot_pair_index, trie, tunnel_ports_index, Config, PairVerdict,
    PortKey, RuleVerdict, TunnelPorts, TUNNEL_PORTS_PER_ENTRY,
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
    /// Chunks of each family's classifier pool (IPv4, IPv6) that both
    /// slots' tables take now: the next install needs its own tables'
    /// worth of the rest.
    pub chunks_in_use: [u32; 2],
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
    let classifier = Classifier::build(policy);
    // Placed before anything is written: a policy whose tables do not fit
    // beside the one in force is refused with the maps untouched.
    let placed = place(&classifier, &current, target)?;
    clear_slot(ebpf, target)?;
    write_slot(ebpf, policy, &classifier, &placed, target)?;
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
    next.slot_chunks[target as usize] = placed.map(|p| p.len);
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
    let chunks_in_use = [0, 1].map(|f| next.slot_chunks[0][f] + next.slot_chunks[1][f]);
    Ok(Installed {
        generation,
        slot: target,
        chunks_in_use,
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

/// Where one family's tables go in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placed {
    base: u32,
    len: u32,
}

/// Places both families' tables of `classifier` for slot `target` beside
/// the other slot's (as `current` records their lengths; each slot's base
/// follows from its length, [`trie::slot_base`]), or says which family's
/// do not fit and how many chunks the other slot takes.
fn place(
    classifier: &Classifier,
    current: &Config,
    target: u32,
) -> Result<[Placed; 2], DatapathError> {
    let other = (1 - target) as usize;
    let families = [
        (&classifier.v4, map_names::ENV_V4, map_names::PREFIX_V4),
        (&classifier.v6, map_names::ENV_V6, map_names::PREFIX_V6),
    ];
    let mut placed = [Placed { base: 0, len: 0 }; 2];
    for (f, (tables, chunks, prefixes)) in families.into_iter().enumerate() {
        let in_use = current.slot_chunks[other][f];
        let refused = || DatapathError::PoolFull {
            name: chunks,
            needed: tables.chunks.len(),
            in_use,
            pool: trie::CHUNKS,
        };
        let len = u32::try_from(tables.chunks.len()).map_err(|_| refused())?;
        if u64::from(len) + u64::from(in_use) > u64::from(trie::CHUNKS) {
            return Err(refused());
        }
        let base = trie::slot_base(target, len);
        if u32::try_from(tables.prefixes.len())
            .map_or(true, |n| n > envfence_ebpf::capacity::ENV_V4)
        {
            return Err(DatapathError::Capacity {
                name: prefixes,
                needed: tables.prefixes.len(),
                capacity: envfence_ebpf::capacity::ENV_V4,
            });
        }
        placed[f] = Placed { base, len };
    }
    Ok(placed)
}

fn write_slot(
    ebpf: &mut Ebpf,
    policy: &CompiledPolicy,
    classifier: &Classifier,
    placed: &[Placed; 2],
    slot: u32,
) -> Result<(), DatapathError> {
    let s = slot as u8;
    let families = [
        (&classifier.v4, map_names::ENV_V4, map_names::PREFIX_V4),
        (&classifier.v6, map_names::ENV_V6, map_names::PREFIX_V6),
    ];
    for ((tables, chunks, prefixes), at) in families.into_iter().zip(placed) {
        write_tables(ebpf, tables, slot, at.base, chunks, prefixes)?;
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

/// Writes one family's classifier tables for `slot` (the slot the
/// datapath does not read) at `base` of the pool, where [`place`] put
/// them, and its prefixes into the slot's part of the prefix map.
fn write_tables(
    ebpf: &mut Ebpf,
    tables: &FamilyTables,
    slot: u32,
    base: u32,
    chunks: &'static str,
    prefixes: &'static str,
) -> Result<(), DatapathError> {
    super::batch::set_array(ebpf, prefixes, trie::prefix_base(slot), &tables.prefixes)?;
    super::batch::set_array(ebpf, chunks, base, &tables.chunks)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use envfence_ebpf::Chunk;

    fn tables(v4: u32, v6: u32) -> Classifier {
        let family = |n: u32| FamilyTables {
            chunks: vec![Chunk::default(); n as usize],
            prefixes: Vec::new(),
        };
        Classifier {
            v4: family(v4),
            v6: family(v6),
        }
    }

    /// The config of a datapath whose slot `slot` holds tables of `len`
    /// chunks (both families), at `trie::slot_base`.
    fn holding(slot: usize, len: u32) -> Config {
        let mut c = Config {
            active_slot: slot as u32,
            ..Config::default()
        };
        c.slot_chunks[slot] = [len, len];
        c
    }

    #[test]
    fn slot_zero_starts_the_pool_and_slot_one_ends_it() {
        let fresh = Config::default();
        let p = place(&tables(5_000, 7_000), &fresh, 1).expect("fits an empty pool");
        assert_eq!(
            p[0],
            Placed {
                base: trie::CHUNKS - 5_000,
                len: 5_000
            }
        );
        assert_eq!(
            p[1],
            Placed {
                base: trie::CHUNKS - 7_000,
                len: 7_000
            }
        );
        let in_force = holding(1, 5_000);
        let p = place(&tables(9_000, 9_000), &in_force, 0).expect("fits beside it");
        assert_eq!(
            p,
            [Placed {
                base: 0,
                len: 9_000
            }; 2]
        );
    }

    #[test]
    fn a_worst_case_policy_fits_beside_any_of_up_to_the_rest_of_the_pool() {
        let rest = trie::CHUNKS - trie::SLOT_CHUNKS;
        assert_eq!(rest, trie::ROOT_CHUNKS + envfence_ebpf::capacity::ENV_V4);
        for slot in [0, 1] {
            let base = if slot == 0 { 0 } else { trie::CHUNKS - rest };
            let in_force = holding(slot, rest);
            let target = 1 - slot as u32;
            let p = place(
                &tables(trie::SLOT_CHUNKS, trie::SLOT_CHUNKS),
                &in_force,
                target,
            )
            .expect("a worst-case policy fits");
            let end = u64::from(p[0].base) + u64::from(p[0].len);
            assert!(end <= u64::from(trie::CHUNKS));
            assert!(p[0].base >= base + rest || end <= u64::from(base));
        }
    }

    #[test]
    fn tables_that_do_not_fit_beside_the_policy_in_force_are_refused_by_name() {
        let in_use = trie::CHUNKS / 2 + 1;
        let in_force = holding(0, in_use);
        let err =
            place(&tables(10, trie::CHUNKS / 2), &in_force, 1).expect_err("one chunk too many");
        match &err {
            DatapathError::PoolFull {
                name,
                needed,
                in_use: used,
                pool,
            } => {
                assert_eq!(*name, map_names::ENV_V6, "the IPv4 tables fit: {err}");
                assert_eq!(*needed, (trie::CHUNKS / 2) as usize);
                assert_eq!((*used, *pool), (in_use, trie::CHUNKS));
            }
            other => panic!("not PoolFull: {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("EF_ENV_V6") && text.contains("the one in force stays"),
            "{text}"
        );
        // One chunk less fits exactly against it.
        let p = place(&tables(10, trie::CHUNKS / 2 - 1), &in_force, 1).expect("fits exactly");
        assert_eq!(p[1].base, in_use);
    }
}
