//! Running the `envfence` CLI in tests (`tests/tests/cli_*.rs`, one file
//! per command): the binary run in the lab's node namespace or here, its
//! output compared with golden files (tests/tests/golden/, volatile fields
//! normalised) or parsed as JSON; an agent of the example policy with its
//! socket, state and audit log in a temporary directory; the traffic of the
//! golden tables; and the kernel checks `explain` is held to (the agent's
//! own program run on a frame, its pinned counters).
//!
//! Every CLI call that needs the agent's view runs inside the lab's node
//! namespace (same network namespace, /sys/fs/bpf = the lab's bpffs
//! directory). Traffic stays inside the lab.
//!
//! `ENVFENCE_UPDATE_GOLDEN=1` rewrites the golden files.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use envfence_ebpf::{counter_index, map_names, Counter, ABI_VERSION, NUM_VERDICTS};
use serde_json::Value;

use crate::agent::{agent_binary, Agent, AgentOptions, FlowEvent};
use crate::lab::{require_root, wait_until, Lab, NODE};

// ---------------------------------------------------------------------------
// Running the CLI

/// What one CLI run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(self) -> Result<Run> {
        ensure!(
            self.code == 0,
            "exit {} (want 0)\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
    pub fn code(self, want: i32) -> Result<Run> {
        ensure!(
            self.code == want,
            "exit {} (want {want})\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// Runs `envfence ARGS` inside the lab's node namespace.
pub fn cli_in(lab: &Lab, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(args).env_remove("NO_COLOR");
    let p = lab.spawn_in_ns(NODE, cmd)?;
    let status = p
        .wait_timeout(Duration::from_secs(60))?
        .ok_or_else(|| anyhow!("envfence {args:?} did not exit within 60 s"))?;
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout: p.stdout_lines().iter().map(|l| format!("{l}\n")).collect(),
        stderr: p.stderr_lines().iter().map(|l| format!("{l}\n")).collect(),
    })
}

/// Runs `envfence ARGS` here (no namespace: commands that read files).
pub fn cli(args: &[&str]) -> Result<Run> {
    run_cmd(Command::new(agent_binary()?).args(args))
}

pub fn run_cmd(cmd: &mut Command) -> Result<Run> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

// ---------------------------------------------------------------------------
// Golden files

/// Paths that name the ABI version (`/v4`, `policy-v4.json`) with `<ABI>`,
/// and the temporary directory as `<tmp>`.
pub fn normalize_paths(s: &str, tmp: &Path) -> String {
    s.replace(&tmp.display().to_string(), "<tmp>")
        .replace(&format!("/v{ABI_VERSION}"), "/v<ABI>")
        .replace(&format!("policy-v{ABI_VERSION}"), "policy-v<ABI>")
}

pub fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name` (or rewrites it with
/// ENVFENCE_UPDATE_GOLDEN=1).
pub fn golden(name: &str, actual: &str) -> Result<()> {
    // Trailing blanks (a masked time in the last column) do not count.
    let actual: String = actual
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    let actual = actual.as_str();
    let path = golden_path(name);
    if std::env::var_os("ENVFENCE_UPDATE_GOLDEN").is_some_and(|v| v != "0") {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(&path, actual).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (ENVFENCE_UPDATE_GOLDEN=1 writes it); actual output:\n{actual}",
            path.display()
        )
    })?;
    if expected != actual {
        let mut diff = String::new();
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            let (x, y) = (e.get(i).copied(), a.get(i).copied());
            if x != y {
                diff.push_str(&format!(
                    "line {}:\n  golden: {}\n  actual: {}\n",
                    i + 1,
                    x.unwrap_or("<none>"),
                    y.unwrap_or("<none>")
                ));
            }
        }
        bail!(
            "output differs from golden file {} (ENVFENCE_UPDATE_GOLDEN=1 rewrites it):\n{diff}\nactual:\n{actual}",
            path.display()
        );
    }
    Ok(())
}

/// Replaces every RFC 3339 time (`2026-11-23T02:16:02.112Z`, or without
/// fraction) with a placeholder of the same length, so that columns stay
/// aligned.
pub fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let fits = b.len() - i >= shape.len()
            && shape.iter().zip(&b[i..]).all(|(p, c)| match p {
                b'd' => c.is_ascii_digit(),
                other => other == c,
            });
        if fits {
            let mut j = i + shape.len();
            if b.get(j) == Some(&b'.') {
                j += 1;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
            }
            if b.get(j) == Some(&b'Z') {
                j += 1;
            }
            let n = j - i;
            let placeholder = "<time>";
            out.push_str(placeholder);
            out.push_str(&" ".repeat(n.saturating_sub(placeholder.len())));
            i = j;
            continue;
        }
        // Copy one UTF-8 character.
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// Normalises a status table: paths, times, hashes, every number; runs of
/// spaces collapse (column widths follow the numbers).
pub fn normalize_status(s: &str, tmp: &Path) -> String {
    let s = normalize_paths(s, tmp);
    let s = mask_times(&s);
    let mut lines = Vec::new();
    for line in s.lines() {
        // "(3m 12s ago)" -> "(<ago>)"
        let line = match (line.find(" ago)"), line.rfind('(')) {
            (Some(end), Some(start)) if start < end => {
                format!("{}(<ago>){}", &line[..start], &line[end + 5..])
            }
            _ => line.to_owned(),
        };
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                if w.len() == 64 && w.bytes().all(|c| c.is_ascii_hexdigit()) {
                    "<sha256>".to_owned()
                } else {
                    mask_numbers(w)
                }
            })
            .collect();
        let joined = words.join(" ");
        let mut collapsed = String::new();
        for part in joined.split(' ').filter(|p| !p.is_empty()) {
            if !collapsed.is_empty() {
                collapsed.push(' ');
            }
            collapsed.push_str(part);
        }
        lines.push(collapsed);
    }
    lines.join("\n") + "\n"
}

/// Every number (`12`, `1.5K`) as `N`.
pub fn mask_numbers(w: &str) -> String {
    let mut out = String::new();
    let mut chars = w.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                chars.next();
            }
            if chars.peek().is_some_and(|c| "KMGTP".contains(*c)) {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The agent under test

pub struct Setup {
    pub lab: Lab,
    pub agent: Agent,
    pub tmp: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub audit: PathBuf,
    pub policy: PathBuf,
}

impl Setup {
    pub fn socket(&self) -> String {
        self.socket.display().to_string()
    }
    pub fn state(&self) -> String {
        self.state.display().to_string()
    }
    /// The agent's pin directory as the host sees it.
    pub fn pin_dir(&self) -> Result<PathBuf> {
        Ok(self
            .lab
            .bpffs_dir()
            .ok_or_else(|| anyhow!("the host has no bpffs at /sys/fs/bpf"))?
            .join("envfence")
            .join(format!("v{ABI_VERSION}")))
    }
}

/// A lab of the example pods and an agent running the example policy from
/// a file, with its socket, state and audit log in a temporary directory.
pub fn start(extra: &[&str]) -> Result<Setup> {
    require_root()?;
    let bin = agent_binary()?;
    let lab = Lab::example()?;
    let tmp = tempfile::tempdir()?;
    // Traversable by others: the permission test must be stopped by the
    // socket's own directory, not by this one.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = tmp.path().join("envfence").join("envfence.sock");
    let state = tmp.path().join("state");
    let audit = tmp.path().join("audit.jsonl");
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, envfence::policy::EXAMPLE_POLICY)?;
    let mut extra_args: Vec<String> = vec![
        "--api-socket".into(),
        socket.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--audit-file".into(),
        audit.display().to_string(),
        "--no-watch".into(),
        "--node-name".into(),
        "lab-node".into(),
    ];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    let agent = Agent::start_with(
        &lab,
        &bin,
        &AgentOptions {
            policy_args: vec!["--config".into(), policy.display().to_string()],
            extra_args,
            ..AgentOptions::default()
        },
    )?;
    ensure!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "the agent did not create its socket {}",
        socket.display()
    );
    Ok(Setup {
        lab,
        agent,
        tmp,
        socket,
        state,
        audit,
        policy,
    })
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// Sends one UDP datagram from `src` (bound in `pod`) to `dst`.
pub fn udp(
    lab: &Lab,
    pod: &str,
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
) -> Result<()> {
    let payload = vec![0x5au8; payload_len];
    lab.in_ns(pod, move || -> Result<()> {
        let s = UdpSocket::bind(src).with_context(|| format!("binding {src}"))?;
        s.send_to(&payload, dst)
            .with_context(|| format!("sending to {dst}"))?;
        Ok(())
    })?
}

/// Waits until the agent printed an event matching `pred`.
pub fn wait_event(
    agent: &Agent,
    what: &str,
    pred: impl Fn(&FlowEvent) -> bool,
) -> Result<FlowEvent> {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        found = agent.events().into_iter().find(|e| pred(e));
        found.is_some()
    });
    found.ok_or_else(|| {
        anyhow!(
            "no event for {what}; events so far: {:?}",
            agent
                .events()
                .iter()
                .map(|e| e.raw.to_string())
                .collect::<Vec<_>>()
        )
    })
}

/// The traffic of the golden tables: each flow sent once, in order, each
/// waited for (so the agent's store holds them in this order).
pub fn traffic(s: &Setup) -> Result<()> {
    let lab = &s.lab;
    let sa = |a: &str, p: u16| SocketAddr::new(ip(a), p);
    // Receivers where packets pass, so that no ICMP error comes back.
    let _r1 = lab.udp_receiver("prod2", ip("10.10.2.2"), 5432)?;
    let _r2 = lab.udp_receiver("prod1", ip("10.10.1.2"), 8080)?;
    let r3 = lab.udp_receiver("prod1", ip("10.10.1.2"), 53)?;
    let udp_flows: [(&str, SocketAddr, SocketAddr, usize); 8] = [
        ("test1", sa("10.30.1.2", 40001), sa("10.10.1.2", 9999), 11),
        ("test1", sa("10.30.1.2", 40002), sa("10.10.1.2", 9999), 12),
        ("test1", sa("10.30.1.2", 40003), sa("10.10.2.2", 9999), 13),
        ("dev1", sa("10.40.1.2", 40004), sa("10.10.1.2", 9999), 14),
        ("prod1", sa("10.10.1.2", 40006), sa("10.30.1.2", 7000), 16),
        (
            "staging1",
            sa("10.20.1.2", 40007),
            sa("10.10.2.2", 5432),
            27,
        ),
        ("ops1", sa("10.0.0.2", 40008), sa("10.10.1.2", 8080), 18),
        // Allowed by the port rule test-dns-in-prod: no event.
        ("test1", sa("10.30.1.2", 40009), sa("10.10.1.2", 53), 19),
    ];
    for (i, (pod, src, dst, len)) in udp_flows.iter().enumerate() {
        udp(lab, pod, *src, *dst, *len)?;
        if i == 7 {
            ensure!(
                r3.wait_from(src.ip(), 1, Duration::from_secs(5)) == 1,
                "the allowed DNS datagram did not arrive"
            );
            continue;
        }
        wait_event(&s.agent, &format!("{src} -> {dst}"), |e| {
            e.src == src.ip() && e.sport == Some(src.port()) && e.dst == dst.ip()
        })?;
        if i == 3 {
            // An ICMPv6 echo dev1 -> prod2 (dropped: test-to-prod).
            ensure!(!lab.ping("dev1", ip("fd00:10:2::2"), Duration::from_millis(500))?);
            wait_event(&s.agent, "icmpv6 dev1 -> prod2", |e| {
                e.dst == ip("fd00:10:2::2") && e.src == ip("fd00:40:1::2")
            })?;
        }
    }
    // An ICMP echo test1 -> prod1 (dropped).
    ensure!(!lab.ping("test1", ip("10.10.1.2"), Duration::from_millis(500))?);
    wait_event(&s.agent, "icmp test1 -> prod1", |e| {
        e.dst == ip("10.10.1.2") && e.src == ip("10.30.1.2") && e.proto == 1
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernel checks

/// Runs of each frame through the program: the cell that moves by at least
/// this much is the frame's (lab background traffic, such as neighbour
/// discovery, moves cells by a few packets at most).
pub const REPEAT: u32 = 64;

/// BPF_PROG_TEST_RUN of the loaded program `prog_id` on `frame`, REPEAT
/// times; returns the TC action.
pub fn test_run(prog_id: u32, data: &[u8]) -> Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let info = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| anyhow!("no loaded program with id {prog_id}"))?;
    let fd = info.fd()?;
    let mut attr = TestAttr {
        prog_fd: u32::try_from(fd.as_fd().as_raw_fd())?,
        data_size_in: u32::try_from(data.len())?,
        data_in: data.as_ptr() as u64,
        repeat: REPEAT,
        ..TestAttr::default()
    };
    // SAFETY: bpf(2) BPF_PROG_TEST_RUN with a `union bpf_attr.test` whose
    // input buffer outlives the call; no output buffer is given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// The agent's pinned counters of environment ids below 8, summed over
/// CPUs: (src, dst, verdict) -> packets.
/// A counter cell (src env, dst env, verdict) and its packets.
pub type Cell = ((u32, u32, u32), u64);

pub fn counters(pin_dir: &Path) -> Result<Vec<Cell>> {
    let path = pin_dir.join(map_names::COUNTERS);
    let data = MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    let map = PerCpuArray::<MapData, Counter>::try_from(Map::from_map_data(data)?)?;
    let mut out = Vec::new();
    for s in 0..8 {
        for d in 0..8 {
            for v in 0..NUM_VERDICTS {
                let values = map.get(&counter_index(s, d, v), 0)?;
                out.push(((s, d, v), values.iter().map(|c| c.packets).sum()));
            }
        }
    }
    Ok(out)
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "allow",
        1 => "log",
        2 => "audit",
        3 => "drop",
        4 => "spoofed",
        _ => "?",
    }
}

/// TestRun frames enter through `lo` (ifindex 1), which the agent does not
/// attach to: turn its source check off in the agent's pinned map, so that
/// these checks judge the policy (the source check has tests of its own).
pub fn no_source_check_on_lo(pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(map_names::IFCONF);
    let data = MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    let mut map = aya::maps::HashMap::<MapData, u32, envfence_ebpf::IfConfig>::try_from(
        Map::from_map_data(data)?,
    )?;
    map.insert(1, envfence_ebpf::IfConfig::default(), 0)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The tests

/// Sends one raw HTTP request line to the socket; returns the status code
/// and the body.
pub fn raw_http(socket: &Path, request_line: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::os::unix::net::UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}

/// (hook, program id, name) of the tcx chains of `ifname` in the node.
pub fn tcx_programs(lab: &Lab, ifname: &str) -> Result<Vec<(String, u32, String)>> {
    use aya::programs::{tc::SchedClassifier, TcAttachType};
    let ifname = ifname.to_owned();
    lab.in_ns(NODE, move || -> Result<Vec<(String, u32, String)>> {
        let mut out = Vec::new();
        for (hook, ty) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            let (_, progs) = SchedClassifier::query_tcx(&ifname, ty)?;
            for p in progs {
                out.push((
                    hook.to_owned(),
                    p.id(),
                    p.name_as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        Ok(out)
    })?
}
