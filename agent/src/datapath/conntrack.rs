//! The tracked-flow table (`EF_CONNTRACK`) seen from userspace: listing it
//! (`status`, tests), removing expired entries (the agent's sweeper: the
//! datapath treats them as absent, the sweeper gives their room back), and
//! rewriting entries (tests age flows this way).

use aya::maps::{HashMap, MapData};
use envfence_ebpf::{map_names, CtEntry, CtKey};

use super::{policy_maps::typed_map, Datapath, DatapathError};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).unwrap_or(0)
        }
        Err(_) => 0,
    }
}

impl Datapath {
    fn conntrack_map(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtEntry>, DatapathError> {
        typed_map(self.ebpf_mut(), map_names::CONNTRACK)
    }

    /// Every entry of the table, expired ones included.
    pub fn conntrack_entries(&mut self) -> Result<Vec<(CtKey, CtEntry)>, DatapathError> {
        let map = self.conntrack_map()?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Writes (or replaces) one entry.
    pub fn set_conntrack_entry(&mut self, key: CtKey, entry: CtEntry) -> Result<(), DatapathError> {
        let mut map = self.conntrack_map()?;
        map.insert(key, entry, 0)
            .map_err(DatapathError::map(map_names::CONNTRACK))
    }

    /// Removes every entry.
    pub fn clear_conntrack(&mut self) -> Result<usize, DatapathError> {
        let mut map = self.conntrack_map()?;
        let keys: Vec<CtKey> = map.keys().filter_map(Result::ok).collect();
        for k in &keys {
            let _ = map.remove(k);
        }
        Ok(keys.len())
    }

    /// Removes the entries that expired before `now_ns`; returns (removed,
    /// live entries left).
    pub fn sweep_conntrack(&mut self, now_ns: u64) -> Result<(usize, usize), DatapathError> {
        let mut map = self.conntrack_map()?;
        let entries: Vec<(CtKey, CtEntry)> = map.iter().filter_map(Result::ok).collect();
        let mut removed = 0;
        for (k, e) in &entries {
            if e.expires_ns <= now_ns && map.remove(k).is_ok() {
                removed += 1;
            }
        }
        Ok((removed, entries.len() - removed))
    }
}
