//! The agent's state directory (`--state-dir`, tmpfs like bpffs: both go
//! with a reboot): the last good policy, kept next to the pinned state so
//! that a restarted agent, `envfence status`, `explain` and `cleanup` know
//! the names behind the ids in the kernel maps (and a restart keeps every
//! environment's and rule's id), and the node's agent lock file.
//!
//! DESIGN: this sits below daemon/, api/ and cli/ (it needs only policy/):
//! the daemon writes it, everyone else reads it, and "parse the saved source
//! and compile it with the ids it was installed with" is
//! [`SavedPolicy::compile`], written once.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use envfence_ebpf::ABI_VERSION;
use serde::{Deserialize, Serialize};

use crate::policy::{self, CompiledPolicy, Policy, PolicyErrors};

/// Default directory of the agent's state (tmpfs, like bpffs: both go with
/// a reboot).
pub const DEFAULT_STATE_DIR: &str = "/run/envfence";

/// The policy last installed in the kernel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedPolicy {
    pub abi: u32,
    /// Where it came from (a path, or the embedded example).
    pub origin: String,
    /// Its YAML text.
    pub source: String,
    /// Environment names by id as installed.
    pub env_names: Vec<String>,
    /// Rule names by id as installed.
    #[serde(default)]
    pub rule_names: Vec<String>,
    pub generation: u32,
}

impl SavedPolicy {
    /// The record of `compiled` (from `source`, read from `origin`) as
    /// installed in the kernel at `generation`.
    pub fn new(origin: String, source: String, compiled: &CompiledPolicy, generation: u32) -> Self {
        Self {
            abi: ABI_VERSION,
            origin,
            source,
            env_names: compiled.env_names.clone(),
            rule_names: compiled.rule_names.clone(),
            generation,
        }
    }

    /// The saved source, parsed and validated again.
    pub fn parse(&self) -> Result<Policy, PolicyErrors> {
        policy::parse(&self.source, &self.origin)
    }

    /// The saved source, parsed and compiled with the ids it was installed
    /// with (so that its names are the kernel's).
    pub fn compile(&self) -> Result<(Policy, CompiledPolicy), PolicyErrors> {
        let p = self.parse()?;
        let compiled = policy::compile_with_ids(&p, &self.env_names, &self.rule_names);
        Ok((p, compiled))
    }
}

/// Where the saved policy of this ABI version is kept in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(format!("policy-v{ABI_VERSION}.json"))
}

/// The saved policy, if there is a readable one of this ABI.
pub fn load(dir: &Path) -> Option<SavedPolicy> {
    let text = fs::read_to_string(path(dir)).ok()?;
    match serde_json::from_str::<SavedPolicy>(&text) {
        Ok(saved) if saved.abi == ABI_VERSION => Some(saved),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ignoring unreadable state {}: {e}", path(dir).display());
            None
        }
    }
}

/// Saves atomically (write a temporary file, then rename).
pub fn save(dir: &Path, saved: &SavedPolicy) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".policy-v{ABI_VERSION}.json.tmp"));
    let text = serde_json::to_string(saved).map_err(io::Error::other)?;
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path(dir))
}

/// Removes the saved policy of every ABI version (and the lock file) from
/// `dir`.
pub fn remove_all(dir: &Path) -> usize {
    let _ = fs::remove_file(lock_path(dir));
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("policy-v") && n.ends_with(".json"))
        })
        .filter(|p| fs::remove_file(p).is_ok())
        .count()
}

/// The lock file that keeps a second agent from running beside the first
/// (taken by the daemon, `daemon/lock.rs`).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("agent.lock")
}
