//! The policy in force read from the pinned maps, as the userspace
//! classifier judges by it ([`PolicyTables`]): the active slot of `CONFIG`
//! read once, its tunnel ports read once, and environment lookups and
//! decisions asked of the pinned maps (the datapath's own lookups and
//! decision, `datapath::inspect`), remembered so that a capture of a few
//! flows costs a few syscalls, not a few per packet. Nothing here writes:
//! explaining counts nothing and reports nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

use envfence_ebpf::{config_flags, decide::Decided, Config, L4};

use super::inspect::{InspectError, PinnedState};
use crate::policy::reference::PolicyTables;

/// Remembered answers at most, each kind (then forgotten and asked again).
const CACHED: usize = 65_536;

/// A decision's key: environments, what is known of L4, protocol, port.
type DecisionKey = (u32, u32, L4, u8, u16);

/// The pinned maps of the slot the datapath judges with.
pub struct PinnedTables<'a> {
    state: &'a PinnedState,
    config: Config,
    slot: u32,
    tunnels: Vec<u8>,
    envs: RefCell<HashMap<IpAddr, u32>>,
    decisions: RefCell<HashMap<DecisionKey, (Decided, u8)>>,
}

impl<'a> PinnedTables<'a> {
    /// The policy `state` enforces now.
    pub fn new(state: &'a PinnedState) -> Result<Self, InspectError> {
        let config = state.config()?;
        let slot = config.active_slot & 1;
        Ok(Self {
            tunnels: state.tunnel_kinds(slot)?,
            state,
            config,
            slot,
            envs: RefCell::new(HashMap::new()),
            decisions: RefCell::new(HashMap::new()),
        })
    }

    /// The configuration read at the start.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The active slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The policy in force is in audit mode.
    pub fn audit(&self) -> bool {
        self.config.slot_audit_mode[self.slot as usize] != 0
    }

    /// The policy in force says `non_ip: drop`.
    pub fn non_ip_drop(&self) -> bool {
        self.config.slot_flags[self.slot as usize] & config_flags::NON_IP_DROP != 0
    }

    fn decision(&self, key: DecisionKey) -> Result<(Decided, u8), InspectError> {
        if let Some(d) = self.decisions.borrow().get(&key) {
            return Ok(*d);
        }
        let (s, d, l4, proto, dport) = key;
        let (decided, pair) = self.state.decided(self.slot, s, d, l4, proto, dport)?;
        let out = (decided, pair.ct);
        let mut cache = self.decisions.borrow_mut();
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(key, out);
        Ok(out)
    }
}

impl PolicyTables for PinnedTables<'_> {
    type Error = InspectError;

    fn env_of(&self, ip: IpAddr) -> Result<u32, InspectError> {
        if let Some(id) = self.envs.borrow().get(&ip) {
            return Ok(*id);
        }
        let id = self.state.env_id(ip, self.slot)?;
        let mut cache = self.envs.borrow_mut();
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(ip, id);
        Ok(id)
    }

    fn decided(
        &self,
        src_env: u32,
        dst_env: u32,
        l4: L4,
        proto: u8,
        dport: u16,
    ) -> Result<Decided, InspectError> {
        // The decision reads `proto` and `dport` only with ports.
        let (proto, dport) = if l4 == L4::Ports {
            (proto, dport)
        } else {
            (0, 0)
        };
        Ok(self.decision((src_env, dst_env, l4, proto, dport))?.0)
    }

    fn pair_ct(&self, src_env: u32, dst_env: u32) -> Result<u8, InspectError> {
        Ok(self.decision((src_env, dst_env, L4::Other, 0, 0))?.1)
    }

    fn tunnel_kind(&self, port: u16) -> u8 {
        self.tunnels.get(usize::from(port)).copied().unwrap_or(0)
    }
}
