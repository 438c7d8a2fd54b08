//! Helpers of the lifecycle lab tests (`tests/tests/lifecycle.rs`): policy
//! files (plain and Kubernetes-ConfigMap style, their environments the
//! example policy's), the agent's options, and an inotify count of the
//! policy file's opens. The probers, pins, tcx census and metric polling
//! they use are the lab's ([`crate::lab::probe`], [`crate::lab::pins`],
//! [`crate::lab::metrics`]).
//!
//! Everything that touches the network runs inside the lab's namespaces;
//! the pins are files on the host's bpffs under the lab's own directory.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::agent::AgentOptions;

// ---------------------------------------------------------------------------
// Policies

/// The environments of the lab's example pods (the example policy's,
/// [`crate::fixture::environments_yaml`]), and a drop of test ->
/// production; `extra_rules` are appended (YAML list items, indented by 2).
/// Interfaces: `veth*`. Only one direction of test/production is dropped,
/// so a forbidden TCP connect fails exactly when its SYN is dropped (the
/// SYN-ACK would pass): a connect that succeeds proves a gap.
pub fn policy(extra_rules: &str) -> String {
    policy_on(extra_rules, &["veth*"])
}

/// [`policy`] attaching to the interfaces matching `include` only.
pub fn policy_on(extra_rules: &str, include: &[&str]) -> String {
    let include = include
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"mode: enforce
default: allow
environments:
{environments}rules:
  - name: test-to-prod
    from: [test]
    to: [production]
    verdict: drop
{extra_rules}interfaces:
  include: [{include}]
  exclude: ["lo"]
"#,
        environments = crate::fixture::environments_yaml()
    )
}

/// The base policy ([`policy`] without extra rules).
pub fn base_policy() -> String {
    policy("")
}

/// One of two policies that differ on two pairs, in opposite senses:
/// `staging_blocked` drops staging -> production and allows dev ->
/// production; otherwise the reverse. A packet judged by a mix of the two
/// would show as both allowed or both dropped.
pub fn flip_policy(staging_blocked: bool) -> String {
    let (staging, dev) = if staging_blocked {
        ("drop", "allow")
    } else {
        ("allow", "drop")
    };
    policy(&format!(
        "  - name: staging-to-prod\n    from: [staging]\n    to: [production]\n    verdict: {staging}\n  - name: dev-to-prod\n    from: [dev]\n    to: [production]\n    verdict: {dev}\n"
    ))
}

/// A policy with two errors (an unknown environment and a misspelt
/// verdict), each reported with `file:line:column`.
pub fn bad_policy() -> String {
    policy("  - name: broken\n    from: [nosuch]\n    to: [production]\n    verdict: dropp\n")
}

/// Writes `text` to `path` atomically (a temporary file renamed over it,
/// as most tools and editors do).
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy")
    ));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A policy file laid out the way the kubelet mounts a ConfigMap:
///
/// ```text
/// dir/..2026_11_23_02_16_02.000000001/policy.yaml
/// dir/..data -> ..2026_11_23_02_16_02.000000001
/// dir/policy.yaml -> ..data/policy.yaml
/// ```
///
/// An update writes a new timestamped directory, points a `..data_tmp`
/// symlink at it, renames `..data_tmp` over `..data` (the atomic switch)
/// and removes the old directory.
pub struct ConfigMapDir {
    dir: PathBuf,
    key: String,
    current: String,
    seq: u32,
}

impl ConfigMapDir {
    /// Creates the layout in `dir` (which must exist) with `key` holding
    /// `text`.
    pub fn create(dir: &Path, key: &str, text: &str) -> Result<ConfigMapDir> {
        let mut cm = ConfigMapDir {
            dir: dir.to_path_buf(),
            key: key.to_string(),
            current: String::new(),
            seq: 0,
        };
        let data = cm.write_version(text)?;
        std::os::unix::fs::symlink(&data, dir.join("..data")).context("creating ..data")?;
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key))
            .with_context(|| format!("creating the {key} symlink"))?;
        cm.current = data;
        Ok(cm)
    }

    fn write_version(&mut self, text: &str) -> Result<String> {
        self.seq += 1;
        let name = format!("..2026_11_23_02_16_{:02}.{:09}", self.seq % 60, self.seq);
        let path = self.dir.join(&name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(path.join(&self.key), text)
            .with_context(|| format!("writing {}/{}", path.display(), self.key))?;
        Ok(name)
    }

    /// The kubelet's update: new directory, `..data_tmp`, rename over
    /// `..data`, old directory removed.
    pub fn update(&mut self, text: &str) -> Result<()> {
        let data = self.write_version(text)?;
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).context("creating ..data_tmp")?;
        std::fs::rename(&tmp, self.dir.join("..data"))
            .context("renaming ..data_tmp over ..data")?;
        let old = std::mem::replace(&mut self.current, data);
        std::fs::remove_dir_all(self.dir.join(&old))
            .with_context(|| format!("removing the old version {old}"))?;
        Ok(())
    }

    /// The path the agent is given (`dir/<key>`, a symlink through `..data`).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.key)
    }
}

/// Options to start the agent with a policy file, its own state directory
/// and its own API socket next to it (never the host's /run/envfence, which
/// agents of other labs may use), plus `extra` flags.
pub fn agent_options(config: &Path, state_dir: &Path, extra: &[&str]) -> AgentOptions {
    let mut extra_args = vec![
        "--state-dir".to_string(),
        state_dir.display().to_string(),
        "--api-socket".to_string(),
        state_dir.with_file_name("api.sock").display().to_string(),
    ];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    AgentOptions {
        policy_args: vec!["--config".into(), config.display().to_string()],
        extra_args,
        ..AgentOptions::default()
    }
}

// ---------------------------------------------------------------------------
// File opens

/// Counts how often `file` is opened (by anyone) during `during`, with an
/// inotify `IN_OPEN` watch on its directory. An agent with nothing to
/// reload has no reason to open its policy file.
pub fn count_opens(file: &Path, during: Duration) -> Result<usize> {
    let dir = file
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", file.display()))?;
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", file.display()))?
        .as_encoded_bytes()
        .to_vec();
    let cdir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: plain syscalls; the fd is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("inotify_init1");
    }
    // SAFETY: a fresh fd.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(owned.as_raw_fd(), cdir.as_ptr(), libc::IN_OPEN) } < 0 {
        return Err(std::io::Error::last_os_error()).context("inotify_add_watch");
    }
    let deadline = Instant::now() + during;
    let mut opens = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(opens);
        }
        let mut pfd = libc::pollfd {
            fd: owned.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reading into an owned buffer of the given length.
        let len = unsafe { libc::read(owned.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if len <= 0 {
            continue;
        }
        let mut off = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while off + header <= len as usize {
            // SAFETY: the kernel wrote a whole inotify_event at `off`.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let name_bytes = &buf[off + header..off + header + ev.len as usize];
            let end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            if ev.mask & libc::IN_OPEN != 0 && name_bytes[..end] == name[..] {
                opens += 1;
            }
            off += header + ev.len as usize;
        }
    }
}
