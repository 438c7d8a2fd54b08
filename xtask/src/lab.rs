//! Lab namespaces from xtask's side: finding and sweeping `efl-*`
//! leftovers (the same naming as tests/src/netns.rs: `efl-<owner>-<seq>-<role>`,
//! owner = pid of the creating process or `lab` for the manual lab).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{output, run};

pub const PREFIX: &str = "efl-";
const NETNS_DIR: &str = "/run/netns";
const BPFFS_DIR: &str = "/sys/fs/bpf";

/// Which lab namespaces to remove.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Those whose owner process is gone (not the manual lab).
    Dead,
    /// The manual lab (`efl-lab-*`) only.
    Manual,
    /// Every `efl-*` namespace.
    All,
}

fn owner(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.split('-').next()
}

fn selected(name: &str, which: Which) -> bool {
    let owner = owner(name).unwrap_or_default();
    match which {
        Which::All => true,
        Which::Manual => owner == "lab",
        Which::Dead => owner != "lab" && !owner.parse::<u32>().is_ok_and(pid_alive),
    }
}

/// Whether process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn list(dir: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {dir}")),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// Every `efl-*` namespace now.
pub fn namespaces() -> Result<Vec<String>> {
    list(NETNS_DIR)
}

/// Removes the selected namespaces (killing what runs in them) and bpffs
/// directories; returns what was removed.
pub fn sweep(which: Which) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in namespaces()? {
        if !selected(&ns, which) {
            continue;
        }
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", &ns])) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        run(Command::new("ip").args(["netns", "delete", &ns]))?;
        removed.push(ns);
    }
    for dir in list(BPFFS_DIR)? {
        if selected(&dir, which) {
            let path = Path::new(BPFFS_DIR).join(&dir);
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
            removed.push(path.display().to_string());
        }
    }
    // Lab agents' state directories (tests/src/agent.rs: `<tmp>/efl-…-agent`).
    let tmp = std::env::temp_dir();
    for dir in list(&tmp.display().to_string())? {
        if dir.ends_with("-agent") && selected(&dir, which) {
            let path = tmp.join(&dir);
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}
