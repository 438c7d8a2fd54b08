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

/// The lock file that keeps a second agent from running beside the first.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("agent.lock")
}

/// Takes the node's agent lock (`<dir>/agent.lock`), waiting for another
/// agent that holds it to exit (a rolling update's old pod).
pub async fn lock(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    use anyhow::Context as _;
    use nix::fcntl::{Flock, FlockArg};
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    let path = lock_path(dir);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::warn!(
                "another envfence agent holds {}: waiting for it to exit",
                path.display()
            );
            tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                .await
                .context("waiting for the agent lock")?
                .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
        }
        Err((_, e)) => Err(anyhow::anyhow!("locking {}: {e}", path.display())),
    }
}
