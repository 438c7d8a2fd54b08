//! The lab: a simulated node made of network namespaces.
//!
//! One "node" namespace routes between "pod" namespaces, each joined to it by
//! a veth pair (`veth-<pod>` on the node, `pod0` in the pod), like a CNI
//! does. Every pod has its own /24 and /64, the node side holds `.1`/`::1`
//! and is the pod's default gateway; only the node forwards. Nothing in the
//! lab has a route out of it, and nothing outside the lab's namespaces is
//! touched. Dropping a [`Lab`] kills the processes it started and deletes its
//! namespaces, also when a test panics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use nix::sys::signal::Signal;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub mod metrics;
pub mod pins;
pub mod probe;
pub mod procfs;
pub mod watch;

use crate::netns::{self, MANUAL_OWNER};
pub use crate::netns::{
    in_netns, is_root, lab_namespaces, require_root, sweep, sweep_leftovers, BPFFS_DIR, PREFIX,
};

/// Longest pod name: `veth-<pod>` must fit the kernel's 15-byte limit.
pub const MAX_POD_NAME: usize = 10;
/// The interface name of every pod's end of its veth pair.
pub const POD_IF: &str = "pod0";
/// The role name of the node namespace in [`Lab::ns`].
pub const NODE: &str = "node";

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Locks a mutex, ignoring poisoning (a panicking test must still tear down).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// One pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name (at most [`MAX_POD_NAME`] chars of `[a-z0-9]`).
    pub name: String,
    /// The pod's IPv4 address and prefix; the node side is the first host.
    pub v4: Ipv4Net,
    /// The pod's IPv6 address and prefix; the node side is the first host.
    pub v6: Ipv6Net,
}

impl PodSpec {
    /// A pod with `v4`/24 and `v6`/64.
    pub fn new(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            v4: Ipv4Net::new(v4, 24).expect("24 is a valid IPv4 prefix length"),
            v6: Ipv6Net::new(v6, 64).expect("64 is a valid IPv6 prefix length"),
        }
    }

    /// The pods of the example policy (agent/policy/example.yaml), at the
    /// addresses [`crate::fixture::pod_addr`] derives from it.
    pub fn example_pods() -> Vec<PodSpec> {
        use crate::fixture::pod_addr;
        let p = |name: &str, env: &str, n: u8| {
            let (IpAddr::V4(v4), IpAddr::V6(v6)) =
                (pod_addr(env, Family::V4, n), pod_addr(env, Family::V6, n))
            else {
                unreachable!("pod_addr gives the family asked for")
            };
            PodSpec::new(name, v4, v6)
        };
        vec![
            p("prod1", "production", 1),
            p("prod2", "production", 2),
            p("staging1", "staging", 1),
            p("staging2", "staging", 2),
            p("test1", "test", 1),
            p("dev1", "dev", 1),
            p("ops1", "ops", 0),
        ]
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.v4.addr()
    }
    /// The pod's IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.v6.addr()
    }
    /// The pod's address of `family`.
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ipv4().into(),
            Family::V6 => self.ipv6().into(),
        }
    }
    /// The node side (gateway) IPv4 address: the first host of the subnet.
    pub fn gw_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.v4.network()) + 1)
    }
    /// The node side (gateway) IPv6 address: the first host of the subnet.
    pub fn gw_v6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.v6.network()) + 1)
    }
    /// The name of the pod's veth on the node.
    pub fn node_if(&self) -> String {
        format!("veth-{}", self.name)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty()
                && self.name.len() <= MAX_POD_NAME
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "pod name {:?}: 1-{MAX_POD_NAME} chars of [a-z0-9]",
            self.name
        );
        ensure!(self.name != NODE, "pod name {NODE:?} is reserved");
        ensure!(
            self.v4.prefix_len() <= 30 && self.ipv4() != self.gw_v4(),
            "pod {}: {} leaves no room for the gateway {}",
            self.name,
            self.v4,
            self.gw_v4()
        );
        ensure!(
            self.v6.prefix_len() <= 126 && self.ipv6() != self.gw_v6(),
            "pod {}: {} leaves no room for the gateway {}",
            self.name,
            self.v6,
            self.gw_v6()
        );
        Ok(())
    }
}

struct LabPod {
    spec: PodSpec,
    ns: String,
}

/// A running lab. See the module docs.
pub struct Lab {
    id: String,
    node_ns: String,
    pods: Vec<LabPod>,
    /// Every namespace created so far (torn down in reverse order).
    created: Vec<String>,
    procs: Mutex<Vec<Arc<ProcShared>>>,
    bpffs_dir: Option<PathBuf>,
    persistent: bool,
}

/// How the node routes to its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Each pod's subnet is a connected route on the pod's own veth (like
    /// Calico's per-pod routes): the routing table names the pod's veth.
    PerPod,
    /// Every pod's veth is a port of one bridge ([`BRIDGE`]) that holds
    /// the gateway addresses (like bridge CNIs, or Cilium's one route
    /// through `cilium_host`): the routing table names the bridge, never a
    /// pod's veth.
    Bridged,
}

/// The node's bridge in a [`Routing::Bridged`] lab.
pub const BRIDGE: &str = "efbr0";

impl Lab {
    /// Builds a lab with one namespace per pod and a node namespace. On
    /// failure everything created so far is removed again.
    pub fn new(pods: &[PodSpec]) -> Result<Lab> {
        Lab::new_shaped(pods, Routing::PerPod)
    }

    /// [`Lab::new`] with the node's routes in the given shape.
    pub fn new_shaped(pods: &[PodSpec], routing: Routing) -> Result<Lab> {
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        Lab::build(
            &format!("{PREFIX}{}-{seq}", std::process::id()),
            pods,
            routing,
        )
    }

    /// The example policy's lab ([`PodSpec::example_pods`]).
    pub fn example() -> Result<Lab> {
        Lab::new(&PodSpec::example_pods())
    }

    /// Builds the manual lab (`efl-lab-0-*`) that outlives this process, for
    /// `cargo xtask lab up`. Remove it with [`sweep`]`(true)` or
    /// `cargo xtask lab down`.
    pub fn new_persistent(pods: &[PodSpec]) -> Result<Lab> {
        let mut lab = Lab::build(&format!("{PREFIX}{MANUAL_OWNER}-0"), pods, Routing::PerPod)?;
        lab.persistent = true;
        Ok(lab)
    }

    fn build(id: &str, pods: &[PodSpec], routing: Routing) -> Result<Lab> {
        netns::require_root()?;
        for (i, p) in pods.iter().enumerate() {
            p.validate()?;
            ensure!(
                !pods[..i].iter().any(|q| q.name == p.name),
                "pod {} listed twice",
                p.name
            );
        }
        let mut lab = Lab {
            id: id.to_string(),
            node_ns: format!("{id}-{NODE}"),
            pods: pods
                .iter()
                .map(|spec| LabPod {
                    spec: spec.clone(),
                    ns: format!("{id}-{}", spec.name),
                })
                .collect(),
            created: Vec::new(),
            procs: Mutex::new(Vec::new()),
            bpffs_dir: None,
            persistent: false,
        };
        // From here on, `?` drops `lab`, which tears down what exists.
        let node_ns = lab.node_ns.clone();
        lab.add_namespace(&node_ns, true)?;
        let pod_names: Vec<String> = lab.pods.iter().map(|p| p.ns.clone()).collect();
        for ns in &pod_names {
            lab.add_namespace(ns, false)?;
        }
        let mut node_cmds = Vec::new();
        if routing == Routing::Bridged {
            node_cmds.push(format!("link add {BRIDGE} type bridge"));
            node_cmds.push(format!("link set {BRIDGE} up"));
        }
        for pod in &lab.pods {
            let s = &pod.spec;
            let node_if = s.node_if();
            // Per pod: the gateway addresses (and so the connected routes)
            // on the pod's veth; bridged: on the bridge, the veth a port.
            let gw_if = match routing {
                Routing::PerPod => node_if.clone(),
                Routing::Bridged => BRIDGE.to_owned(),
            };
            let (node_ns, pod_ns) = (&lab.node_ns, &pod.ns);
            netns::ip_line(&format!(
                "link add {node_if} netns {node_ns} type veth peer name {POD_IF} netns {pod_ns}"
            ))
            .with_context(|| format!("creating the veth pair of pod {}", s.name))?;
            node_cmds.push(format!(
                "addr add {}/{} dev {gw_if}",
                s.gw_v4(),
                s.v4.prefix_len()
            ));
            node_cmds.push(format!(
                "addr add {}/{} dev {gw_if} nodad",
                s.gw_v6(),
                s.v6.prefix_len()
            ));
            if routing == Routing::Bridged {
                node_cmds.push(format!("link set {node_if} master {BRIDGE}"));
            }
            node_cmds.push(format!("link set {node_if} up"));
            netns::ip_batch(
                &pod.ns,
                &[
                    format!("addr add {} dev {POD_IF}", s.v4),
                    format!("addr add {} dev {POD_IF} nodad", s.v6),
                    format!("link set {POD_IF} up"),
                    format!("route add default via {} dev {POD_IF}", s.gw_v4()),
                    format!("route add ::/0 via {} dev {POD_IF}", s.gw_v6()),
                ],
            )
            .with_context(|| format!("configuring pod {}", s.name))?;
        }
        if !node_cmds.is_empty() {
            netns::ip_batch(&lab.node_ns, &node_cmds).context("configuring the node")?;
        }
        if netns::host_bpffs_mounted() {
            let dir = Path::new(BPFFS_DIR).join(&lab.id);
            match std::fs::create_dir(&dir) {
                Ok(()) => lab.bpffs_dir = Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    lab.bpffs_dir = Some(dir)
                }
                Err(e) => return Err(e).context(format!("creating {}", dir.display())),
            }
        }
        Ok(lab)
    }

    fn add_namespace(&mut self, ns: &str, node: bool) -> Result<()> {
        if netns::netns_path(ns).exists() {
            // A leftover with our name (a reused pid): replace it.
            netns::delete_namespace(ns)?;
        }
        netns::ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        let mut sysctls = vec![
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv6/conf/all/accept_ra", "0"),
            ("net/ipv6/conf/default/accept_ra", "0"),
        ];
        if node {
            sysctls.push(("net/ipv4/ip_forward", "1"));
            sysctls.push(("net/ipv6/conf/all/forwarding", "1"));
        }
        netns::in_netns(ns, || -> Result<()> {
            for (key, value) in &sysctls {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
            }
            Ok(())
        })??;
        netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The lab's id (`efl-<pid>-<seq>`), the prefix of all its namespaces.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The node namespace's name.
    pub fn node_ns(&self) -> &str {
        &self.node_ns
    }
    /// All namespaces of the lab (node first).
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.node_ns.clone())
            .chain(self.pods.iter().map(|p| p.ns.clone()))
            .collect()
    }
    /// The pods, in the order given.
    pub fn pods(&self) -> impl Iterator<Item = &PodSpec> {
        self.pods.iter().map(|p| &p.spec)
    }
    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Result<&PodSpec> {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .map(|p| &p.spec)
            .ok_or_else(|| anyhow!("lab {} has no pod {name:?}", self.id))
    }
    /// The namespace of `who`: [`NODE`], a pod name, or a full namespace name
    /// of this lab.
    pub fn ns(&self, who: &str) -> Result<&str> {
        if who == NODE || who == self.node_ns {
            return Ok(&self.node_ns);
        }
        let host = format!("{}-{who}", self.id);
        self.pods
            .iter()
            .find(|p| p.spec.name == who || p.ns == who)
            .map(|p| p.ns.as_str())
            .or_else(|| {
                self.created
                    .iter()
                    .find(|ns| **ns == host || *ns == who)
                    .map(String::as_str)
            })
            .ok_or_else(|| anyhow!("lab {} has no namespace for {who:?}", self.id))
    }

    /// Adds a namespace `who` that is not connected to the node: a host
    /// behind a pod, joined to it with [`Lab::link`]. Torn down with the
    /// lab; [`Lab::ns`] and [`Lab::in_ns`] know it by `who`.
    pub fn add_host(&mut self, who: &str) -> Result<()> {
        ensure!(
            self.ns(who).is_err(),
            "lab {} already has a namespace for {who:?}",
            self.id
        );
        let ns = format!("{}-{who}", self.id);
        self.add_namespace(&ns, false)
    }
    /// Creates a veth pair `name` - `peer`, both ends (down) in `who`'s
    /// namespace: interfaces appearing on a node, as a CNI adds them.
    pub fn add_veth(&self, who: &str, name: &str, peer: &str) -> Result<()> {
        let ns = self.ns(who)?;
        netns::ip_line(&format!(
            "-n {ns} link add {name} type veth peer name {peer}"
        ))
        .with_context(|| format!("creating the veth pair {name} - {peer} in {ns}"))
    }

    /// Where the agent's /sys/fs/bpf lives on the host (a per-lab directory
    /// of the host's bpffs), when the host has a bpffs.
    pub fn bpffs_dir(&self) -> Option<&Path> {
        self.bpffs_dir.as_deref()
    }

    /// Runs `f` on a fresh thread inside `who`'s namespace (see [`Lab::ns`]).
    pub fn in_ns<T, F>(&self, who: &str, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        netns::in_netns(self.ns(who)?, f)
    }

    /// Starts a TCP listener on `ip:port` in `pod` that accepts (and closes)
    /// connections on a background thread until the handle is dropped.
    pub fn tcp_listen(&self, pod: &str, ip: IpAddr, port: u16) -> Result<TcpListenHandle> {
        let addr = SocketAddr::new(ip, port);
        let listener = self
            .in_ns(pod, || TcpListener::bind(addr))?
            .with_context(|| format!("binding TCP {addr} in {pod}"))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let accepted = Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        let thread = Background::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                    }
                    // Nothing to accept (non-blocking) or a failed accept.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(TcpListenHandle {
            addr,
            accepted,
            _thread: thread,
        })
    }

    /// Tries a TCP connection from `from` to `to:port`: true when the
    /// handshake completes within `timeout`.
    pub fn tcp_connect(
        &self,
        from: &str,
        to: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<bool> {
        Ok(self.tcp_probe(from, to, port, timeout)?.connected)
    }

    /// Like [`Lab::tcp_connect`], and tells the client's (ephemeral) port.
    pub fn tcp_probe(
        &self,
        from: &str,
        to: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpProbe> {
        let dst = SocketAddr::new(to, port);
        self.in_ns(from, || -> Result<TcpProbe> {
            let domain = if to.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                .context("creating a TCP socket")?;
            socket
                .bind(&unspecified(to).into())
                .context("binding the TCP client")?;
            let local_port = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.port())
                .unwrap_or(0);
            let started = Instant::now();
            let result = socket.connect_timeout(&SockAddr::from(dst), timeout);
            Ok(TcpProbe {
                connected: result.is_ok(),
                local_port,
                elapsed: started.elapsed(),
                error: result.err().map(|e| e.to_string()),
            })
        })?
    }

    /// Binds a UDP receiver on `ip:port` in `pod` that counts datagrams per
    /// source on a background thread until dropped.
    pub fn udp_receiver(&self, pod: &str, ip: IpAddr, port: u16) -> Result<UdpReceiver> {
        let addr = SocketAddr::new(ip, port);
        let socket = self
            .in_ns(pod, || UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {pod}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .context("setting the UDP read timeout")?;
        let seen: Arc<Mutex<HashMap<SocketAddr, (u64, u64)>>> = Arc::default();
        let counts = seen.clone();
        let thread = Background::spawn(move |stop| {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let mut seen = lock(&counts);
                    let e = seen.entry(from).or_default();
                    e.0 += 1;
                    e.1 += n as u64;
                }
            }
        });
        Ok(UdpReceiver {
            addr,
            seen,
            _thread: thread,
        })
    }

    /// Sends `count` datagrams of `payload` from `from` to `to:port` from one
    /// socket; returns its source port.
    pub fn udp_send(
        &self,
        from: &str,
        to: IpAddr,
        port: u16,
        payload: &[u8],
        count: usize,
    ) -> Result<u16> {
        let dst = SocketAddr::new(to, port);
        self.in_ns(from, || -> Result<u16> {
            let socket = UdpSocket::bind(unspecified(to)).context("binding the UDP sender")?;
            for _ in 0..count {
                socket
                    .send_to(payload, dst)
                    .with_context(|| format!("sending UDP to {dst}"))?;
            }
            Ok(socket.local_addr().context("UDP sender address")?.port())
        })?
    }

    /// One ICMP (v4 or v6) echo from `from` to `to`: true when the reply
    /// comes back within `timeout` (rounded up to 10 ms; runs `ping`).
    pub fn ping(&self, from: &str, to: IpAddr, timeout: Duration) -> Result<bool> {
        let ns = self.ns(from)?;
        let secs = format!("{:.2}", timeout.as_secs_f64().max(0.01));
        let mut cmd = Command::new("ping");
        if to.is_ipv6() {
            cmd.arg("-6");
        }
        cmd.args(["-n", "-q", "-c", "1", "-W", &secs, &to.to_string()]);
        let _handle = netns::command_in_netns(ns, &mut cmd)?;
        let out = netns::output_with_timeout(&mut cmd, timeout + Duration::from_secs(2))
            .context("running ping (iputils-ping; `cargo xtask setup`)")?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "ping {to} from {from} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Starts `cmd` inside `who`'s namespace with stdout and stderr captured
    /// line by line. The process gets a private mount namespace in which
    /// /sys belongs to the network namespace and /sys/fs/bpf is the lab's own
    /// bpffs directory (so agents of parallel labs never share pins). The lab
    /// kills and reaps it when dropped; the process is also killed if the
    /// thread that spawned it exits, so spawn from the thread owning the lab.
    ///
    /// Set `EFL_ECHO=1` to copy its stderr to this process's stderr.
    pub fn spawn_in_ns(&self, who: &str, mut cmd: Command) -> Result<LabProcess> {
        let ns = self.ns(who)?;
        let name = format!("{:?}", cmd.get_program());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let handle = netns::command_in_netns_with_mounts(ns, self.bpffs_dir(), &mut cmd)?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {cmd:?} in {ns}"))?;
        drop(handle);
        let stdout_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let echo = std::env::var_os("EFL_ECHO").is_some_and(|v| v != "0");
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(read_lines(out, stdout_lines.clone(), None));
        }
        if let Some(err) = child.stderr.take() {
            let prefix = echo.then(|| format!("[{ns} {name}] "));
            readers.push(read_lines(err, stderr_lines.clone(), prefix));
        }
        let shared = Arc::new(ProcShared {
            pid: child.id(),
            name,
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout: stdout_lines,
            stderr: stderr_lines,
            readers: Mutex::new(readers),
        });
        lock(&self.procs).push(shared.clone());
        Ok(LabProcess { shared })
    }

    /// `GET path` from inside `who`'s namespace (e.g. the agent's
    /// `127.0.0.1:9477` `/metrics`); returns the body of a 200 answer.
    pub fn http_get(&self, who: &str, addr: &str, path: &str) -> Result<String> {
        let addr = addr.to_string();
        let path = path.to_string();
        self.in_ns(who, move || http_get_here(&addr, &path))?
    }

    /// Joins `who`'s namespace to `peer_who`'s namespace of lab `peer` (this
    /// lab or another) by a veth pair: `if_name` with `addr` here, `peer_if`
    /// with `peer_addr` there (one subnet), both up. Labs built as separate
    /// "nodes" of a cluster reach a shared namespace (a monitoring network)
    /// this way. Deleting either namespace removes the pair.
    #[allow(clippy::too_many_arguments)]
    pub fn link(
        &self,
        who: &str,
        if_name: &str,
        addr: Ipv4Net,
        peer: &Lab,
        peer_who: &str,
        peer_if: &str,
        peer_addr: Ipv4Net,
    ) -> Result<()> {
        let (ns, peer_ns) = (self.ns(who)?, peer.ns(peer_who)?);
        ensure!(ns != peer_ns, "a link needs two namespaces, not {ns} twice");
        netns::ip_line(&format!(
            "link add {if_name} netns {ns} type veth peer name {peer_if} netns {peer_ns}"
        ))
        .with_context(|| format!("creating the veth pair {ns}/{if_name} - {peer_ns}/{peer_if}"))?;
        for (ns, ifc, a) in [(ns, if_name, addr), (peer_ns, peer_if, peer_addr)] {
            let lines = [
                format!("addr add {a} dev {ifc}"),
                format!("link set {ifc} up"),
            ];
            netns::ip_batch(ns, &lines).with_context(|| format!("configuring {ns}/{ifc}"))?;
        }
        Ok(())
    }

    /// Keeps the lab's namespaces when dropped (processes are still killed).
    pub fn persist(&mut self) {
        self.persistent = true;
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for p in lock(&self.procs).drain(..) {
            p.kill_and_reap();
        }
        if self.persistent {
            return errors;
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = netns::delete_namespace(&ns) {
                errors.push(format!("{ns}: {e:#}"));
            }
        }
        if let Some(dir) = self.bpffs_dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        // The agents' state directory (see `agent::Agent::start_with`).
        let state = std::env::temp_dir().join(format!("{}-agent", self.node_ns()));
        if let Err(e) = std::fs::remove_dir_all(&state) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {e}", state.display()));
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let errors = self.teardown();
        if !errors.is_empty() {
            eprintln!(
                "envfence lab {}: teardown incomplete ({}); `cargo xtask lab down` sweeps it",
                self.id,
                errors.join("; ")
            );
        }
    }
}

fn read_lines<R: Read + Send + 'static>(
    stream: R,
    sink: Arc<Mutex<Vec<String>>>,
    echo_prefix: Option<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(prefix) = &echo_prefix {
                eprintln!("{prefix}{line}");
            }
            lock(&sink).push(line);
        }
    })
}

/// Result of [`Lab::tcp_probe`].
#[derive(Clone, Debug)]
pub struct TcpProbe {
    pub connected: bool,
    /// The client's source port.
    pub local_port: u16,
    pub elapsed: Duration,
    pub error: Option<String>,
}

/// A thread that runs until the flag is set, which dropping does (and
/// waits for it).
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `body(stop)` on a thread.
    fn spawn(body: impl FnOnce(&AtomicBool) + Send + 'static) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = Some(std::thread::spawn(move || body(&flag)));
        Background { stop, thread }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP listener running in a pod; stops when dropped.
pub struct TcpListenHandle {
    addr: SocketAddr,
    accepted: Arc<AtomicU32>,
    _thread: Background,
}

impl TcpListenHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A UDP socket in a pod counting what it receives; stops when dropped.
pub struct UdpReceiver {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<SocketAddr, (u64, u64)>>>,
    _thread: Background,
}

impl UdpReceiver {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Datagrams received so far from any source.
    pub fn total(&self) -> u64 {
        lock(&self.seen).values().map(|v| v.0).sum()
    }
    /// Datagrams received so far from address `ip` (any port).
    pub fn count_from(&self, ip: IpAddr) -> u64 {
        lock(&self.seen)
            .iter()
            .filter(|(k, _)| k.ip() == ip)
            .map(|(_, v)| v.0)
            .sum()
    }
    /// Datagrams received so far from exactly `src`.
    pub fn count_from_addr(&self, src: SocketAddr) -> u64 {
        lock(&self.seen).get(&src).map(|v| v.0).unwrap_or(0)
    }
    /// Waits until `n` datagrams came from `ip` or `timeout` passes;
    /// returns the count then.
    pub fn wait_from(&self, ip: IpAddr, n: u64, timeout: Duration) -> u64 {
        wait_until(timeout, || self.count_from(ip) >= n);
        self.count_from(ip)
    }
    /// Waits until `n` datagrams came in total or `timeout` passes; returns
    /// the count then.
    pub fn wait_total(&self, n: u64, timeout: Duration) -> u64 {
        wait_until(timeout, || self.total() >= n);
        self.total()
    }
}

struct ProcShared {
    pid: u32,
    name: String,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl ProcShared {
    fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut status = lock(&self.status);
        if status.is_none() {
            *status = lock(&self.child)
                .try_wait()
                .with_context(|| format!("waiting for {} (pid {})", self.name, self.pid))?;
        }
        Ok(*status)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        // The child is not reaped while `status` is None, so its pid is ours.
        let status = lock(&self.status);
        if status.is_none() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig)
                .with_context(|| format!("sending {sig} to {} (pid {})", self.name, self.pid))?;
        }
        Ok(())
    }

    fn kill_and_reap(&self) {
        let mut status = lock(&self.status);
        if status.is_none() {
            let mut child = lock(&self.child);
            let _ = child.kill();
            *status = child.wait().ok();
        }
        drop(status);
        for r in lock(&self.readers).drain(..) {
            let _ = r.join();
        }
    }
}

/// A process started by [`Lab::spawn_in_ns`]. Dropping the handle does not
/// stop it; the lab does when it is dropped.
#[derive(Clone)]
pub struct LabProcess {
    shared: Arc<ProcShared>,
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }
    /// The stdout lines read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.shared.stdout).clone()
    }
    /// The shared buffer the stdout lines are appended to.
    pub fn stdout_buffer(&self) -> Arc<Mutex<Vec<String>>> {
        self.shared.stdout.clone()
    }
    /// The stderr lines read so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        lock(&self.shared.stderr).clone()
    }
    /// The last `n` stderr lines, joined (for error messages).
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = lock(&self.shared.stderr);
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
    /// Exit status, if it has exited.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        self.shared.try_wait()
    }
    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }
    /// Sends a signal (no-op once it has exited).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.shared.signal(sig)
    }
    /// Waits until a stderr line contains `needle`; false on timeout or if
    /// the process exits first.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            lock(&self.shared.stderr).iter().any(|l| l.contains(needle)) || !self.is_running()
        });
        lock(&self.shared.stderr).iter().any(|l| l.contains(needle))
    }
    /// Waits for the exit for at most `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                for r in lock(&self.shared.readers).drain(..) {
                    let _ = r.join();
                }
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    /// Returns the exit status and whether it had to be killed.
    pub fn terminate(&self, grace: Duration) -> Result<(ExitStatus, bool)> {
        self.signal(Signal::SIGTERM)?;
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok((s, false));
        }
        self.shared.kill_and_reap();
        let status = (*lock(&self.shared.status)).ok_or_else(|| {
            anyhow!(
                "{} (pid {}) could not be reaped",
                self.shared.name,
                self.shared.pid
            )
        })?;
        Ok((status, true))
    }
}

/// The unspecified address of `to`'s family, any port: what a client
/// binds to.
pub fn unspecified(to: IpAddr) -> SocketAddr {
    match to {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes
/// (false; `cond` is checked one last time).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET path` from inside the network namespace `ns` (a full name under
/// /run/netns), e.g. `http_get(lab.node_ns(), "127.0.0.1:9477", "/metrics")`.
pub fn http_get(ns: &str, addr: &str, path: &str) -> Result<String> {
    netns::in_netns(ns, || http_get_here(addr, path))?
}

/// `GET path` from the current namespace, HTTP/1.1 with `Connection: close`;
/// returns the body of a 200 answer (chunked bodies are decoded).
pub fn http_get_here(addr: &str, path: &str) -> Result<String> {
    let (status_line, head, body) = http_exchange(addr, path)?;
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{addr}{path}: {status_line}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        decode_chunked(&body)
    } else {
        Ok(body)
    }
}

/// `GET path` from the current namespace: the answer's status line, its
/// headers and its raw body.
pub fn http_exchange(addr: &str, path: &str) -> Result<(String, String, String)> {
    use std::io::Write;
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("bad address {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("bad address {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .context("setting a read timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )
    .with_context(|| format!("sending the request to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer from {addr} to GET {path}: {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    Ok((status_line, head.to_owned(), body.to_owned()))
}

fn decode_chunked(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size, "truncated chunk");
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_pods_and_gateways() {
        let pods = PodSpec::example_pods();
        assert_eq!(pods.len(), 7);
        for p in &pods {
            p.validate().unwrap();
            assert!(p.node_if().len() <= 15);
        }
        let ops = pods.iter().find(|p| p.name == "ops1").unwrap();
        assert_eq!(ops.gw_v4(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ops.gw_v6(), "fd00:0:0:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ops.ipv6(), "fd00:0:0:1::2".parse::<Ipv6Addr>().unwrap());
        let prod1 = &pods[0];
        assert_eq!(prod1.gw_v4(), Ipv4Addr::new(10, 10, 1, 1));
        assert_eq!(prod1.gw_v6(), "fd00:10:1::1".parse::<Ipv6Addr>().unwrap());
        assert!(PodSpec::new(
            "toolongname",
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv6Addr::LOCALHOST
        )
        .validate()
        .is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            decode_chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
    }

    #[test]
    fn wait_until_times_out() {
        let t = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(wait_until(Duration::from_secs(5), || true));
    }
}
