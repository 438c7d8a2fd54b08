//! Watches the policy file for changes, including the way Kubernetes
//! updates a mounted ConfigMap: the file is a symlink through `..data`,
//! which is swapped atomically by a rename in the file's directory. The
//! directory is watched, and any change there that could change what the
//! path resolves to is reported.

use std::path::{Path, PathBuf};

use notify::{
    event::{AccessKind, AccessMode},
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
};
use tokio::sync::mpsc;

/// A running watch; dropping it stops the watching.
pub struct ConfigWatch {
    _watcher: RecommendedWatcher,
    pub changes: mpsc::UnboundedReceiver<()>,
}

/// Starts watching the directory of `file`.
pub fn watch(file: &Path) -> notify::Result<ConfigWatch> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = file.file_name().map(|n| n.to_os_string());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // On an error (queue overflow ...), check the file anyway.
            let _ = tx.send(());
            return;
        };
        // Opening or reading the file changes nothing, and the agent opens
        // it itself on every reload: reacting to that made every reload
        // trigger the next one, re-reading the file every 100 ms forever
        // (and catching in-place writers between truncate and write). Only
        // the end of a write counts among the access events.
        if let EventKind::Access(kind) = event.kind {
            if kind != AccessKind::Close(AccessMode::Write) {
                return;
            }
        }
        let relevant = event.paths.iter().any(|p| {
            let n = p.file_name();
            n == name.as_deref()
                || n.and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("..data"))
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(ConfigWatch {
        _watcher: watcher,
        changes: rx,
    })
}
