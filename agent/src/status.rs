//! The agent's state as `envfence status` shows it, kept up to date by the
//! daemon and served by the local API.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// One attached interface.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// "ingress", "egress".
    pub hooks: Vec<String>,
}

/// A snapshot of the agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusSnapshot {
    pub version: String,
    pub abi: u32,
    pub node: String,
    /// Unix time the agent started.
    pub started_at: f64,
    pub ready: bool,
    pub not_ready_reason: String,
    /// "enforce" or "audit"; empty when no policy is known to the agent.
    pub mode: String,
    pub generation: u32,
    pub policy_origin: String,
    pub policy_sha256: String,
    /// Unix time of the last successful load or reload.
    pub policy_loaded_at: f64,
    pub last_reload_error: Option<String>,
    pub environments: Vec<String>,
    pub rules: Vec<String>,
    pub interfaces: Vec<InterfaceStatus>,
    /// Interfaces selected but not attached, with the error.
    pub pending_interfaces: Vec<String>,
    /// bpffs directory of the pins; empty when nothing is pinned.
    pub pin_dir: String,
    pub metrics_addr: String,
    /// Events the kernel emitted, and lost (ring buffer full).
    pub events_emitted: u64,
    pub events_lost: u64,
}

/// The shared, updatable snapshot.
#[derive(Default)]
pub struct Status {
    inner: RwLock<StatusSnapshot>,
}

impl Status {
    pub fn get(&self) -> StatusSnapshot {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        let mut s = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}
