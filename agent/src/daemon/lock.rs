//! One agent at a time per node: two installing at once could write the
//! same policy slot. The lock is a `flock` on a file of the state directory
//! ([`crate::state::lock_path`]).

use std::{fs, path::Path};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

use crate::state::lock_path;

/// Takes the node's agent lock (`<dir>/agent.lock`), waiting for another
/// agent that holds it to exit (a rolling update's old pod).
pub async fn lock(dir: &Path) -> anyhow::Result<Flock<fs::File>> {
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
