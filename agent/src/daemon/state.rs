//! The last good policy, kept next to the pinned state so that a restarted
//! agent knows the names behind the ids in the kernel maps and keeps every
//! environment's id.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use envfence_ebpf::ABI_VERSION;
use serde::{Deserialize, Serialize};

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

/// Removes the saved policy of every ABI version from `dir`.
pub fn remove_all(dir: &Path) -> usize {
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
