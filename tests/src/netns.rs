//! Low-level network-namespace helpers: naming, running code and commands
//! inside a namespace, and sweeping the leftovers of killed runs.
//!
//! Every lab namespace is named `efl-<owner>-<seq>-<role>`: `<owner>` is the
//! pid of the process that created it (or `lab` for the manual lab of
//! `cargo xtask lab up`), `<seq>` counts the labs of that process and
//! `<role>` is `node` or a pod name. A namespace whose owner process is gone
//! is a leftover, and [`sweep_leftovers`] removes it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Prefix of every namespace (and bpffs directory) the lab creates.
pub const PREFIX: &str = "efl-";
/// Owner field of the long-lived manual lab (`cargo xtask lab up`).
pub const MANUAL_OWNER: &str = "lab";
/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Where the host's bpffs is expected.
pub const BPFFS_DIR: &str = "/sys/fs/bpf";

/// Path of the handle of the named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Opens the handle of the named namespace.
fn open_ns(ns: &str) -> Result<File> {
    let path = netns_path(ns);
    File::open(&path).with_context(|| format!("opening namespace {}", path.display()))
}

/// Whether this process runs as root (the lab needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "the envfence lab needs root (network namespaces, veths, eBPF): \
             run as root, e.g. `sudo -E cargo test -p envfence-tests` or `cargo xtask test`"
        );
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns`
/// (a name under /run/netns), so every socket it creates lives there. A panic
/// in `f` is propagated to the caller.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let handle = open_ns(ns)?;
    std::thread::scope(|scope| {
        let joined = scope
            .spawn(move || -> Result<T> {
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {ns}"))?;
                drop(handle);
                Ok(f())
            })
            .join();
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Prepares `cmd` to run in the network namespace `ns` (setns in the child
/// before exec; the mount namespace stays the host's) and to be killed when
/// the thread that spawns it dies. Returns the namespace handle, which must
/// stay open until the command is spawned.
pub fn command_in_netns(ns: &str, cmd: &mut Command) -> Result<File> {
    let handle = open_ns(ns)?;
    let fd = handle.as_raw_fd();
    // SAFETY: the closure only makes async-signal-safe system calls on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(handle)
}

/// Like [`command_in_netns`], and gives the process a private mount
/// namespace in which /sys is a sysfs of `ns` (so /sys/class/net shows the
/// namespace's interfaces, as `ip netns exec` does) and /sys/fs/bpf is
/// `bpffs_dir` (a directory on the host's bpffs, bind-mounted) or, when
/// `None`, a fresh bpffs instance.
pub fn command_in_netns_with_mounts(
    ns: &str,
    bpffs_dir: Option<&Path>,
    cmd: &mut Command,
) -> Result<File> {
    let handle = open_ns(ns)?;
    let fd = handle.as_raw_fd();
    let bind_src = bpffs_dir
        .map(|d| CString::new(d.as_os_str().as_encoded_bytes()))
        .transpose()
        .context("bpffs directory path contains NUL")?;
    // SAFETY: the closure only makes async-signal-safe system calls (prctl,
    // setns, unshare, open, mount, snprintf-free string handling on a stack
    // buffer) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here propagates back to the host.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ))?;
            // The bpffs directory is looked up before /sys is covered.
            let src_fd = match &bind_src {
                Some(src) => {
                    let dfd = libc::open(
                        src.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    if dfd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Some(dfd)
                }
                None => None,
            };
            check(libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            match src_fd {
                Some(dfd) => {
                    let mut buf = [0u8; 40];
                    let src = fd_path(&mut buf, dfd);
                    check(libc::mount(
                        src,
                        c"/sys/fs/bpf".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                    libc::close(dfd);
                }
                None => check(libc::mount(
                    c"bpf".as_ptr(),
                    c"/sys/fs/bpf".as_ptr(),
                    c"bpf".as_ptr(),
                    0,
                    std::ptr::null(),
                ))?,
            }
            Ok(())
        });
    }
    Ok(handle)
}

/// Writes `/proc/self/fd/<fd>` NUL-terminated into `buf` without allocating.
fn fd_path(buf: &mut [u8; 40], fd: libc::c_int) -> *const libc::c_char {
    const HEAD: &[u8] = b"/proc/self/fd/";
    buf[..HEAD.len()].copy_from_slice(HEAD);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[HEAD.len() + i] = digits[len - 1 - i];
    }
    buf[HEAD.len() + len] = 0;
    buf.as_ptr().cast()
}

/// Runs `cmd` (already prepared) to completion, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out_thread = drain(child.stdout.take());
    let err_thread = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().context("reaping killed child")?;
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `ip ARGS`, failing with its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<()> {
    run_ip(args, None).map(drop)
}

/// [`ip`] of the words of `line` (`ip_line(&format!("-n {ns} link del {name}"))`).
pub fn ip_line(line: &str) -> Result<()> {
    ip(&line.split_whitespace().collect::<Vec<_>>())
}

/// [`ip`], returning what it printed.
pub fn ip_output(args: &[&str]) -> Result<String> {
    run_ip(args, None)
}

/// Runs `ip -n NS -batch -` with `lines` on stdin.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let script = lines.join("\n") + "\n";
    run_ip(&["-n", ns, "-batch", "-"], Some(script.as_bytes())).map(drop)
}

/// Runs `cmd` with `stdin` on its standard input (none when `None`) and
/// its output captured; `what` names it in errors.
pub fn output_with_stdin(cmd: &mut Command, stdin: Option<&[u8]>, what: &str) -> Result<Output> {
    use std::io::Write;
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {what}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .with_context(|| format!("writing to {what}"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))
}

fn run_ip(args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
    let what = "`ip` (is iproute2 installed? `cargo xtask setup`)";
    let out = output_with_stdin(Command::new("ip").args(args), stdin, what)?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of every lab namespace (`efl-*`) that exists now.
pub fn lab_namespaces() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        if let Some(name) = entry.file_name().to_str() {
            if name.starts_with(PREFIX) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The owner field of a lab name (`efl-<owner>-...`).
pub fn owner_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.split('-').next()
}

/// Whether the run that created `name` is still alive (its owner pid
/// exists), or `name` belongs to the manual lab.
pub fn owner_alive(name: &str) -> bool {
    match owner_of(name) {
        Some(MANUAL_OWNER) => true,
        Some(owner) => match owner.parse::<u32>() {
            Ok(pid) => pid_alive(pid),
            Err(_) => false,
        },
        None => false,
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Kills every process that lives in namespace `ns` (SIGKILL) and deletes
/// the namespace.
pub fn delete_namespace(ns: &str) -> Result<()> {
    kill_processes_in(ns);
    if netns_path(ns).exists() {
        ip(&["netns", "delete", ns])?;
    }
    Ok(())
}

/// SIGKILLs the processes `ip netns pids` lists for `ns` (best effort).
pub fn kill_processes_in(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let own = std::process::id();
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if pid as u32 != own {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether the host's /sys/fs/bpf is a mounted bpffs.
pub fn host_bpffs_mounted() -> bool {
    nix::sys::statfs::statfs(BPFFS_DIR)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Deletes the lab namespaces (and their bpffs directories) whose owner
/// process is gone: the leftovers of killed runs. Namespaces of live runs
/// (parallel tests) and of the manual lab are kept. Returns what it removed.
pub fn sweep_leftovers() -> Result<Vec<String>> {
    sweep(false)
}

/// Like [`sweep_leftovers`]; with `all`, also removes namespaces of live runs
/// and of the manual lab.
pub fn sweep(all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for ns in lab_namespaces()? {
        if !all && owner_alive(&ns) {
            continue;
        }
        match delete_namespace(&ns) {
            Ok(()) => removed.push(ns),
            Err(e) => errors.push(format!("{ns}: {e:#}")),
        }
    }
    // The bpffs directories, and the agents' state directories (see
    // `agent::Agent::start_with`).
    let dirs = [
        (PathBuf::from(BPFFS_DIR), ""),
        (std::env::temp_dir(), "-agent"),
    ];
    for (dir, suffix) in dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && name.ends_with(suffix) && (all || !owner_alive(&name)) {
                let path = entry.path().display().to_string();
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => removed.push(path),
                    Err(e) => errors.push(format!("{path}: {e}")),
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("sweeping lab leftovers failed: {}", errors.join("; "));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_parsing() {
        assert_eq!(owner_of("efl-123-0-node"), Some("123"));
        assert_eq!(owner_of("efl-lab-0-prod1"), Some("lab"));
        assert_eq!(owner_of("other"), None);
        assert!(owner_alive(&format!("efl-{}-0-node", std::process::id())));
        assert!(owner_alive("efl-lab-0-node"));
        assert!(!owner_alive("efl-notapid-0-node"));
    }

    #[test]
    fn fd_paths() {
        let mut buf = [0u8; 40];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(&mut buf, fd);
            // SAFETY: fd_path NUL-terminates inside buf.
            let s = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(s.to_str().unwrap(), want);
        }
    }
}

/// The GSO and GRO size limits of a link (`ip -d link` shows the first
/// two; iproute2 6.1 cannot set the IPv4 ones, Linux 6.3's BIG TCP for
/// IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GsoSizes {
    pub gso_max_size: u32,
    pub gro_max_size: u32,
    pub gso_ipv4_max_size: u32,
    pub gro_ipv4_max_size: u32,
}

impl GsoSizes {
    /// All four limits at `size`.
    pub fn all(size: u32) -> GsoSizes {
        GsoSizes {
            gso_max_size: size,
            gro_max_size: size,
            gso_ipv4_max_size: size,
            gro_ipv4_max_size: size,
        }
    }
}

/// Sets the GSO / GRO size limits of `ifname` in namespace `ns`
/// (RTM_SETLINK; what `ip link set IF gso_max_size N gro_max_size N
/// gso_ipv4_max_size N gro_ipv4_max_size N` does with a newer iproute2)
/// and reads them back.
pub fn set_gso_sizes(ns: &str, ifname: &str, sizes: GsoSizes) -> Result<GsoSizes> {
    use netlink_packet_route::link::LinkAttribute;
    let attrs = vec![
        LinkAttribute::GsoMaxSize(sizes.gso_max_size),
        LinkAttribute::GroMaxSize(sizes.gro_max_size),
        LinkAttribute::GsoIpv4MaxSize(sizes.gso_ipv4_max_size),
        LinkAttribute::GroIpv4MaxSize(sizes.gro_ipv4_max_size),
    ];
    let ifname = ifname.to_owned();
    in_netns(ns, move || -> Result<GsoSizes> {
        let index = if_index(&ifname)?;
        link_request(index, attrs)
            .with_context(|| format!("setting the GSO/GRO sizes of {ifname}"))?;
        link_sizes(index).with_context(|| format!("reading the GSO/GRO sizes of {ifname}"))
    })?
}

fn if_index(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

fn rtnetlink_socket() -> Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
        .context("creating a netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    let tv = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .context("setting a receive timeout")?;
    Ok(socket)
}

/// Sends one rtnetlink request about link `index` (RTM_SETLINK with
/// `attrs`, or RTM_GETLINK when `attrs` is empty) and returns the answer.
fn link_exchange(
    index: u32,
    attrs: Vec<netlink_packet_route::link::LinkAttribute>,
) -> Result<netlink_packet_core::NetlinkPayload<netlink_packet_route::RouteNetlinkMessage>> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::RouteNetlinkMessage;
    const SEQ: u32 = 0xe13;
    let socket = rtnetlink_socket()?;
    let mut link = LinkMessage::default();
    link.header.index = index;
    let get = attrs.is_empty();
    link.attributes = attrs;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if get { 0 } else { NLM_F_ACK };
    header.sequence_number = SEQ;
    let inner = if get {
        RouteNetlinkMessage::GetLink(link)
    } else {
        RouteNetlinkMessage::SetLink(link)
    };
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0).context("sending the request")?;
    let mut answer = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut answer[..], 0)
            .context("receiving the answer")?;
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n])
            .map_err(|e| anyhow::anyhow!("decoding the answer: {e}"))?;
        if m.header.sequence_number == SEQ {
            return Ok(m.payload);
        }
    }
}

fn link_request(index: u32, attrs: Vec<netlink_packet_route::link::LinkAttribute>) -> Result<()> {
    use netlink_packet_core::NetlinkPayload;
    match link_exchange(index, attrs)? {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(std::io::Error::from_raw_os_error(-e.raw_code()).into()),
        NetlinkPayload::Done(_) => Ok(()),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn link_sizes(index: u32) -> Result<GsoSizes> {
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::RouteNetlinkMessage;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
        link_exchange(index, Vec::new())?
    else {
        bail!("no link {index} in the answer");
    };
    let mut s = GsoSizes::default();
    for a in link.attributes {
        match a {
            LinkAttribute::GsoMaxSize(n) => s.gso_max_size = n,
            LinkAttribute::GroMaxSize(n) => s.gro_max_size = n,
            LinkAttribute::GsoIpv4MaxSize(n) => s.gso_ipv4_max_size = n,
            LinkAttribute::GroIpv4MaxSize(n) => s.gro_ipv4_max_size = n,
            _ => {}
        }
    }
    Ok(s)
}
