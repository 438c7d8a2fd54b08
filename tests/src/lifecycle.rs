//! Helpers of the lifecycle lab tests (`tests/tests/lifecycle.rs`): policy
//! files (plain and Kubernetes-ConfigMap style), continuous TCP probers that
//! timestamp every connection attempt, the agent's pins as the host sees
//! them (`<lab bpffs dir>/envfence`), the tcx programs attached to a
//! namespace's interfaces, and metric polling inside the node namespace.
//!
//! Everything that touches the network runs inside the lab's namespaces;
//! the pins are files on the host's bpffs under the lab's own directory.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachType};
use envfence_ebpf::{map_names, Config, ABI_VERSION};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::agent::AgentOptions;
use crate::lab::Lab;
use crate::netns;
use crate::prom;

/// The ABI version of the agent under test (its pins live in `v<ABI>`).
pub const ABI: u32 = ABI_VERSION;
/// The two tcx hooks, as the agent names its link pins.
pub const HOOKS: [&str; 2] = ["ingress", "egress"];

// ---------------------------------------------------------------------------
// Policies

/// The environments of the lab's example pods, and a drop of test ->
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
  production: ["10.10.0.0/16", "fd00:10::/32"]
  staging: ["10.20.0.0/16", "fd00:20::/32"]
  test: ["10.30.0.0/16", "fd00:30::/32"]
  dev: ["10.40.0.0/16", "fd00:40::/32"]
  ops: ["10.0.0.0/24", "fd00:0:0:1::/64"]
rules:
  - name: test-to-prod
    from: [test]
    to: [production]
    verdict: drop
{extra_rules}interfaces:
  include: [{include}]
  exclude: ["lo"]
"#
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
// Probes

/// What one connection attempt gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed.
    Connected,
    /// No answer within the probe's timeout (the SYN was dropped).
    TimedOut,
    /// Another error (a refusal means the SYN reached the destination).
    Error(String),
}

impl Outcome {
    pub fn connected(&self) -> bool {
        matches!(self, Outcome::Connected)
    }
    /// Whether the SYN demonstrably reached the destination (a handshake, or
    /// a refusal from the destination's stack).
    pub fn reached(&self) -> bool {
        match self {
            Outcome::Connected => true,
            Outcome::Error(e) => e.contains("refused"),
            Outcome::TimedOut => false,
        }
    }
}

/// One connection attempt.
#[derive(Clone, Debug)]
pub struct ProbeRecord {
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

/// A flow to probe: TCP connects from namespace `from_ns` to `dst`.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// A label for reports (e.g. `test1->prod1`).
    pub name: String,
    /// The full namespace name of the client.
    pub from_ns: String,
    pub dst: SocketAddr,
    /// Give up on an attempt after this long.
    pub timeout: Duration,
}

impl ProbeSpec {
    /// A probe from pod `from` to pod `to`'s IPv4 (or IPv6) `port`.
    pub fn between(
        lab: &Lab,
        from: &str,
        to: &str,
        v6: bool,
        port: u16,
        timeout: Duration,
    ) -> Result<ProbeSpec> {
        let pod = lab.pod(to)?;
        let ip: IpAddr = if v6 {
            pod.ipv6().into()
        } else {
            pod.ipv4().into()
        };
        Ok(ProbeSpec {
            name: format!("{from}->{to}{}", if v6 { "/v6" } else { "" }),
            from_ns: lab.ns(from)?.to_string(),
            dst: SocketAddr::new(ip, port),
            timeout,
        })
    }
}

/// Probers running in the background: one thread per [`ProbeSpec`] that
/// starts a non-blocking TCP connect every `interval` (several may be in
/// flight) and records each attempt's start, end and outcome.
pub struct Prober {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    specs: Vec<ProbeSpec>,
    logs: Vec<Arc<Mutex<Vec<ProbeRecord>>>>,
}

impl Prober {
    pub fn start(specs: Vec<ProbeSpec>, interval: Duration) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut logs = Vec::new();
        for spec in &specs {
            let log: Arc<Mutex<Vec<ProbeRecord>>> = Arc::default();
            logs.push(log.clone());
            let (spec, stop) = (spec.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let ns = spec.from_ns.clone();
                netns::in_netns(&ns, move || probe_loop(&spec, interval, &stop, &log))?
            }));
        }
        let prober = Prober {
            stop,
            threads,
            specs,
            logs,
        };
        // Fail early when a thread could not even start (setns, sockets).
        std::thread::sleep(Duration::from_millis(50));
        if let Some(i) = prober.threads.iter().position(|t| t.is_finished()) {
            let mut prober = prober;
            let t = prober.threads.remove(i);
            let err = match t.join() {
                Ok(Ok(())) => anyhow!("prober {} stopped at once", prober.specs[i].name),
                Ok(Err(e)) => e.context(format!("prober {}", prober.specs[i].name)),
                Err(_) => anyhow!("prober {} panicked", prober.specs[i].name),
            };
            return Err(err);
        }
        Ok(prober)
    }

    pub fn specs(&self) -> &[ProbeSpec] {
        &self.specs
    }

    /// The records of probe `i` so far (finished attempts only).
    pub fn records(&self, i: usize) -> Vec<ProbeRecord> {
        self.logs[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Finished attempts of every probe so far.
    pub fn total(&self) -> usize {
        (0..self.specs.len()).map(|i| self.records(i).len()).sum()
    }

    /// Stops the probers (in-flight attempts are finished first) and returns
    /// every record, by probe.
    pub fn finish(mut self) -> Result<Vec<(ProbeSpec, Vec<ProbeRecord>)>> {
        self.halt()?;
        Ok(self
            .specs
            .iter()
            .cloned()
            .zip(
                self.logs
                    .iter()
                    .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner()))),
            )
            .collect())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for (i, t) in self.threads.drain(..).enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{}: {e:#}", self.specs[i].name)),
                Err(_) => errors.push(format!("{}: panicked", self.specs[i].name)),
            }
        }
        if !errors.is_empty() {
            bail!("probers failed: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

struct InFlight {
    socket: Socket,
    start: Instant,
}

fn probe_loop(
    spec: &ProbeSpec,
    interval: Duration,
    stop: &AtomicBool,
    log: &Mutex<Vec<ProbeRecord>>,
) -> Result<()> {
    let domain = if spec.dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let dst = SockAddr::from(spec.dst);
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && inflight.is_empty() {
            return Ok(());
        }
        if !stopping && now >= next {
            next += interval;
            if next < now {
                next = now + interval;
            }
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                .context("creating a TCP socket")?;
            socket.set_nonblocking(true)?;
            let start = Instant::now();
            match socket.connect(&dst) {
                Ok(()) => record(log, start, Outcome::Connected),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                    inflight.push(InFlight { socket, start })
                }
                Err(e) => record(log, start, Outcome::Error(e.to_string())),
            }
        }
        // Expire attempts past their timeout.
        let now = Instant::now();
        inflight.retain(|f| {
            if now.duration_since(f.start) >= spec.timeout {
                record(log, f.start, Outcome::TimedOut);
                false
            } else {
                true
            }
        });
        // Wait for a socket to become writable, the next start, or the
        // nearest timeout.
        let mut wake = if stopping {
            now + Duration::from_millis(50)
        } else {
            next
        };
        for f in &inflight {
            wake = wake.min(f.start + spec.timeout);
        }
        let wait_ms = wake
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(0, 1000) as libc::c_int;
        let mut fds: Vec<libc::pollfd> = inflight
            .iter()
            .map(|f| libc::pollfd {
                fd: f.socket.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
            continue;
        }
        if n == 0 {
            continue;
        }
        let mut done = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents != 0 {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let f = inflight.swap_remove(i);
            let outcome = match f.socket.take_error() {
                Ok(None) => Outcome::Connected,
                Ok(Some(e)) | Err(e) => Outcome::Error(e.to_string()),
            };
            record(log, f.start, outcome);
        }
    }
}

fn record(log: &Mutex<Vec<ProbeRecord>>, start: Instant, outcome: Outcome) {
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ProbeRecord {
            start,
            end: Instant::now(),
            outcome,
        });
}

/// Counts of a set of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub attempts: usize,
    pub connected: usize,
    pub timed_out: usize,
    pub errors: usize,
}

impl Tally {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a ProbeRecord>) -> Tally {
        let mut t = Tally::default();
        for r in records {
            t.attempts += 1;
            match r.outcome {
                Outcome::Connected => t.connected += 1,
                Outcome::TimedOut => t.timed_out += 1,
                Outcome::Error(_) => t.errors += 1,
            }
        }
        t
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} attempts: {} connected, {} timed out, {} other errors",
            self.attempts, self.connected, self.timed_out, self.errors
        )
    }
}

// ---------------------------------------------------------------------------
// Pins

/// The agent's pins as the host sees them: `<lab bpffs dir>/envfence`.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// The pins of the agent running with the default pin root in `lab`.
    pub fn of(lab: &Lab) -> Result<Pins> {
        let dir = lab
            .bpffs_dir()
            .ok_or_else(|| anyhow!("the host has no bpffs at /sys/fs/bpf: no pins to check"))?;
        Ok(Pins {
            root: dir.join("envfence"),
        })
    }

    /// The pin root on the host (what `envfence cleanup --pin-root` takes).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of ABI `abi`.
    pub fn version_dir(&self, abi: u32) -> PathBuf {
        self.root.join(format!("v{abi}"))
    }

    /// The directory of the agent's ABI.
    pub fn dir(&self) -> PathBuf {
        self.version_dir(ABI)
    }

    /// The link pin of `ifindex`/`hook` under ABI `abi`.
    pub fn link_pin_in(&self, abi: u32, ifindex: u32, hook: &str) -> PathBuf {
        self.version_dir(abi)
            .join("links")
            .join(format!("if{ifindex}-{hook}"))
    }

    /// The link pin of `ifindex`/`hook` under the agent's ABI.
    pub fn link_pin(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.link_pin_in(ABI, ifindex, hook)
    }

    /// Whether both link pins of `ifindex` exist.
    pub fn attached(&self, ifindex: u32) -> bool {
        HOOKS.iter().all(|h| self.link_pin(ifindex, h).exists())
    }

    /// The names in `links/` of ABI `abi`, sorted.
    pub fn link_pins_in(&self, abi: u32) -> Vec<String> {
        list_names(&self.version_dir(abi).join("links"))
    }

    /// The names in `links/` of the agent's ABI, sorted.
    pub fn link_pins(&self) -> Vec<String> {
        self.link_pins_in(ABI)
    }

    /// Every path under the root, relative to it, sorted (empty when the
    /// root does not exist).
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }

    /// The keys of the pinned `ATTACHED` map (ifindexes envfence judges
    /// ingress on).
    pub fn attached_entries(&self) -> Result<Vec<u32>> {
        let path = self.dir().join(map_names::ATTACHED);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        let map = BpfHashMap::<MapData, u32, u32>::try_from(Map::from_map_data(data)?)?;
        let mut keys: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
        keys.sort();
        Ok(keys)
    }

    /// The datapath configuration in the pinned `CONFIG` map.
    pub fn config(&self) -> Result<Config> {
        let path = self.dir().join(map_names::CONFIG);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        let map = Array::<MapData, Config>::try_from(Map::from_map_data(data)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// The kernel id of the pinned `CONFIG` map of ABI `abi`.
    pub fn config_map_id(&self, abi: u32) -> Result<u32> {
        let path = self.version_dir(abi).join(map_names::CONFIG);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        Ok(data.info()?.id())
    }

    /// (link id, program id) of the link pinned at `ifindex`/`hook` under
    /// ABI `abi`.
    pub fn link_info_in(&self, abi: u32, ifindex: u32, hook: &str) -> Result<(u32, u32)> {
        let path = self.link_pin_in(abi, ifindex, hook);
        let link = FdLink::from(
            PinnedLink::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?,
        );
        let info = link.info()?;
        Ok((info.id(), info.program_id()))
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(if is_dir { format!("{rel}/") } else { rel });
        if is_dir {
            walk(root, &path, out);
        }
    }
}

/// The programs the kernel counts as loaded whose name starts with
/// `envfence_` and that use the map with id `map_id` (the programs of one
/// lab's agents, attached or not): (program id, name).
pub fn programs_using_map(map_id: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
        let name = info.name_as_str().unwrap_or("").to_string();
        if !name.starts_with("envfence_") {
            continue;
        }
        if let Ok(Some(ids)) = info.map_ids() {
            if ids.contains(&map_id) {
                out.push((info.id(), name));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// tcx programs on interfaces

/// The tcx programs on one interface: (program id, name) per hook.
#[derive(Clone, Debug, Default)]
pub struct TcxChain {
    pub ifname: String,
    pub ifindex: u32,
    pub ingress: Vec<(u32, String)>,
    pub egress: Vec<(u32, String)>,
}

impl TcxChain {
    /// The chain of `hook` ("ingress" or "egress").
    pub fn hook(&self, hook: &str) -> &[(u32, String)] {
        if hook == "ingress" {
            &self.ingress
        } else {
            &self.egress
        }
    }
    /// How many programs named `envfence_*` are in the chain of `hook`.
    pub fn envfence(&self, hook: &str) -> usize {
        self.hook(hook)
            .iter()
            .filter(|(_, n)| n.starts_with("envfence_"))
            .count()
    }
}

/// Every interface of namespace `ns` with its tcx chains (asked with
/// `BPF_PROG_QUERY` from a thread inside the namespace).
pub fn tcx_census(ns: &str) -> Result<Vec<TcxChain>> {
    netns::in_netns(ns, || -> Result<Vec<TcxChain>> {
        let list = nix::net::if_::if_nameindex().context("listing interfaces")?;
        let mut out = Vec::new();
        for i in list.iter() {
            let ifname = i.name().to_string_lossy().into_owned();
            let mut chain = TcxChain {
                ifname: ifname.clone(),
                ifindex: i.index(),
                ..TcxChain::default()
            };
            for (hook, ty) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                let progs = match SchedClassifier::query_tcx(&ifname, ty) {
                    Ok((_, progs)) => progs,
                    // Gone while we looked.
                    Err(_) if nix::net::if_::if_nametoindex(ifname.as_str()).is_err() => Vec::new(),
                    Err(e) => bail!("query_tcx {ifname} {hook}: {e}"),
                };
                let progs = progs
                    .iter()
                    .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                    .collect();
                if hook == "ingress" {
                    chain.ingress = progs;
                } else {
                    chain.egress = progs;
                }
            }
            out.push(chain);
        }
        Ok(out)
    })?
}

/// Checks that every interface of `ns` whose name starts with one of
/// `selected` has exactly one `envfence_*` program per hook and no other
/// program, and that the other interfaces have none. Returns the selected
/// chains by name.
pub fn check_one_program_per_hook(
    ns: &str,
    selected: &[&str],
) -> Result<BTreeMap<String, TcxChain>> {
    let mut problems = Vec::new();
    let mut found = BTreeMap::new();
    for chain in tcx_census(ns)? {
        let wanted = selected.iter().any(|p| chain.ifname.starts_with(p));
        for hook in HOOKS {
            let total = chain.hook(hook).len();
            let ours = chain.envfence(hook);
            let ok = if wanted {
                ours == 1 && total == 1
            } else {
                total == 0
            };
            if !ok {
                problems.push(format!(
                    "{} {hook}: {:?} (want {})",
                    chain.ifname,
                    chain.hook(hook),
                    if wanted {
                        "exactly one envfence program"
                    } else {
                        "nothing"
                    }
                ));
            }
        }
        if wanted {
            found.insert(chain.ifname.clone(), chain);
        }
    }
    if !problems.is_empty() {
        bail!("tcx chains are wrong: {}", problems.join("; "));
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// Metrics inside the node namespace

/// One metric of the agent at `addr` in namespace `ns` (None when the series
/// does not exist).
pub fn metric_in(ns: &str, addr: &str, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
    let text = crate::lab::http_get(ns, addr, "/metrics")?;
    Ok(prom::metric_value(&text, name, labels))
}

/// Polls metric `name` (every 2 ms, from one thread inside `ns`) until
/// `done(value)` holds; returns the value and the moment it was seen, or
/// `None` after `timeout`.
pub fn wait_metric(
    ns: &str,
    addr: &str,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    done: impl Fn(f64) -> bool + Send,
) -> Result<Option<(f64, Instant)>> {
    netns::in_netns(ns, move || {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = crate::lab::http_get_here(addr, "/metrics") {
                if let Some(v) = prom::metric_value(&text, name, labels) {
                    if done(v) {
                        return Some((v, Instant::now()));
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// `GET path` in `ns`: (HTTP status code, body), whatever the status.
pub fn http_status(ns: &str, addr: &str, path: &str) -> Result<(u16, String)> {
    let addr = addr.to_string();
    let path = path.to_string();
    netns::in_netns(ns, move || -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let sock: SocketAddr = addr.parse().context("metrics address")?;
        let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("malformed answer to GET {path}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })?
}

// ---------------------------------------------------------------------------
// Statistics

/// (median, max) of `values` (zero when empty).
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    if values.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut v = values.to_vec();
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

// ---------------------------------------------------------------------------
// UDP

/// Sends one numbered UDP datagram every `interval` from namespace
/// `from_ns` to `dst` until finished (for flows that must never get
/// through: a receiver counts what does).
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl UdpStream {
    pub fn start(from_ns: &str, dst: SocketAddr, interval: Duration) -> Result<UdpStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = from_ns.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                netns::in_netns(&ns, move || -> Result<u64> {
                    let any: SocketAddr = if dst.is_ipv4() {
                        "0.0.0.0:0".parse()?
                    } else {
                        "[::]:0".parse()?
                    };
                    let socket = std::net::UdpSocket::bind(any).context("binding UDP")?;
                    let mut sent = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        socket
                            .send_to(&sent.to_be_bytes(), dst)
                            .with_context(|| format!("sending UDP to {dst}"))?;
                        sent += 1;
                        std::thread::sleep(interval);
                    }
                    Ok(sent)
                })?
            })
        };
        Ok(UdpStream {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sending; returns how many datagrams were sent.
    pub fn finish(mut self) -> Result<u64> {
        self.halt()
    }

    fn halt(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("UDP sender panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        let _ = self.halt();
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
