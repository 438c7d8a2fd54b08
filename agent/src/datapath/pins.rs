//! Where envfence's state lives in bpffs, and how it is removed.
//!
//! `<root>/v<ABI>/<MAP>` holds each map, `<root>/v<ABI>/links/if<N>-<hook>`
//! each tcx link. The directory is versioned by the ABI because a pinned map
//! is reopened without any check of its layout.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use envfence_ebpf::{map_names, ABI_VERSION};

use super::{attach::Hook, DatapathError};

/// Default bpffs root of envfence's pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/envfence";

/// The maps that are pinned (all of them but the verdict cache and the
/// tracker's scratch space). The stage table is pinned so that pinned hooks
/// keep their second stage while no agent runs, and the parsed-packet
/// scratch so that a hook of one agent and the stage of the next (written
/// into the table when it loads, before it takes the links over) read the
/// same packet.
pub const PINNED_MAPS: [&str; 19] = [
    map_names::ENV_V4,
    map_names::ENV_V6,
    map_names::PREFIX_V4,
    map_names::PREFIX_V6,
    map_names::PAIRS,
    map_names::PORTS,
    map_names::COUNTERS,
    map_names::RULE_COUNTERS,
    map_names::STATS,
    map_names::CONFIG,
    map_names::ATTACHED,
    map_names::IFCONF,
    map_names::PEERS,
    map_names::FLOWS,
    map_names::EVENTS,
    map_names::TUNNEL_PORTS,
    map_names::CONNTRACK,
    map_names::STAGES,
    map_names::SCRATCH,
];

/// The pin layout under one root.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This ABI's directory.
    pub fn dir(&self) -> PathBuf {
        version_dir(&self.root, ABI_VERSION)
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.dir().join(map)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }

    pub fn link_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        link_path_in(&self.dir(), ifindex, hook)
    }

    /// Whether this ABI's state is pinned (a previous agent ran).
    pub fn is_pinned(&self) -> bool {
        self.map_path(map_names::CONFIG).exists()
    }

    /// Directories of other ABI versions under the root.
    pub fn other_versions(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mine = self.dir();
        let mut out: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p != &mine && is_version_dir(p))
            .collect();
        out.sort();
        out
    }

    pub(super) fn create(&self) -> Result<(), DatapathError> {
        check_bpffs(&self.root)?;
        fs::create_dir_all(self.links_dir()).map_err(|e| pin_error(&self.links_dir(), &e))
    }
}

/// The link pin of `ifindex`/`hook` under a version directory.
pub fn link_path_in(version_dir: &Path, ifindex: u32, hook: Hook) -> PathBuf {
    version_dir
        .join("links")
        .join(format!("if{ifindex}-{}", hook.as_str()))
}

fn version_dir(root: &Path, abi: u32) -> PathBuf {
    root.join(format!("v{abi}"))
}

fn is_version_dir(p: &Path) -> bool {
    p.is_dir()
        && p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// `f_type` of a bpffs in statfs(2) (`BPF_FS_MAGIC`, linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A few other `f_type`s, to name what the pin root is on instead.
const FS_NAMES: [(i64, &str); 8] = [
    (0x6265_6572, "sysfs"),
    (0x0102_1994, "tmpfs"),
    (0xef53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683e, "btrfs"),
    (0x794c_7630, "overlayfs"),
    (0x9fa0, "procfs"),
    (0x0102_1997, "9p"),
];

/// Checks that the pin root is (or, created, would be) on a bpffs: the
/// nearest directory of it that exists must be on one. Pins anywhere else
/// fail with ENOENT or EPERM deep in the loader; this names the cause.
pub fn check_bpffs(root: &Path) -> Result<(), DatapathError> {
    let mut at = root;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(()),
        }
    }
    let magic = match nix::sys::statfs::statfs(at) {
        // `__fsword_t` is i64 here, narrower on some targets.
        #[allow(clippy::useless_conversion)]
        Ok(st) => i64::from(st.filesystem_type().0),
        // Unreadable: the loader's own error says more.
        Err(_) => return Ok(()),
    };
    if magic == BPF_FS_MAGIC {
        return Ok(());
    }
    let fs = FS_NAMES.iter().find(|(m, _)| *m == magic).map_or_else(
        || format!("a filesystem of type {magic:#x}"),
        |(_, n)| (*n).to_owned(),
    );
    Err(DatapathError::NotBpffs {
        root: root.to_path_buf(),
        at: at.to_path_buf(),
        fs,
    })
}

pub(super) fn pin_error(path: &Path, e: &io::Error) -> DatapathError {
    DatapathError::Interface {
        ifname: String::from("*"),
        message: format!(
            "bpffs {}: {e} (is bpffs mounted at /sys/fs/bpf?)",
            path.display()
        ),
    }
}

/// Detaches the tcx link pinned at `pin` with BPF_LINK_DETACH, whoever else
/// holds it (the pin itself stays; remove it after).
pub fn force_detach(pin: &Path) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("path with a NUL byte"))?;
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: bpf(2) BPF_OBJ_GET with `union bpf_attr` { pathname, bpf_fd=0,
    // file_flags=0 }; `path` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: a fresh fd the kernel just gave us; OwnedFd closes it.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut attr = [0u32; 16];
    attr[0] = u32::try_from(owned.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
    // SAFETY: bpf(2) BPF_LINK_DETACH with `union bpf_attr.link_detach`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `cleanup` removed.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub links_detached: usize,
    pub files_removed: usize,
    pub errors: Vec<String>,
}

/// Removes everything envfence pinned under `root`, of every ABI version:
/// detaches each pinned link, removes each pin, then the directories.
/// Touches nothing outside `root`.
pub fn cleanup(root: &Path) -> Cleanup {
    let mut out = Cleanup::default();
    let Ok(entries) = fs::read_dir(root) else {
        return out;
    };
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        if !is_version_dir(&dir) {
            out.errors.push(format!(
                "{}: not an envfence version directory, left alone",
                dir.display()
            ));
            continue;
        }
        let part = cleanup_version_dir(&dir);
        out.links_detached += part.links_detached;
        out.files_removed += part.files_removed;
        out.errors.extend(part.errors);
    }
    if let Err(e) = fs::remove_dir(root) {
        out.errors.push(format!("{}: {e}", root.display()));
    }
    out
}

/// Removes one version directory: detaches its pinned links, removes its
/// pins and the directory.
pub fn cleanup_version_dir(dir: &Path) -> Cleanup {
    let mut out = Cleanup::default();
    {
        let links = dir.join("links");
        if let Ok(entries) = fs::read_dir(&links) {
            for pin in entries.filter_map(Result::ok).map(|e| e.path()) {
                match force_detach(&pin) {
                    Ok(()) => out.links_detached += 1,
                    // A link whose interface is gone is already detached.
                    Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
                    Err(e) => out.errors.push(format!("{}: detach: {e}", pin.display())),
                }
                remove(&pin, &mut out);
            }
            if let Err(e) = fs::remove_dir(&links) {
                out.errors.push(format!("{}: {e}", links.display()));
            }
        }
        if let Ok(entries) = fs::read_dir(dir) {
            for pin in entries.filter_map(Result::ok).map(|e| e.path()) {
                remove(&pin, &mut out);
            }
        }
        if let Err(e) = fs::remove_dir(dir) {
            out.errors.push(format!("{}: {e}", dir.display()));
        }
    }
    out
}

fn remove(path: &Path, out: &mut Cleanup) {
    match fs::remove_file(path) {
        Ok(()) => out.files_removed += 1,
        Err(e) => out.errors.push(format!("{}: {e}", path.display())),
    }
}
