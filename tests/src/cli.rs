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
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use envfence_ebpf::{counter_index, map_names, Counter, ABI_VERSION, NUM_VERDICTS};
use serde_json::Value;

use crate::agent::{agent_binary, Agent, AgentOptions, FlowEvent};
use crate::lab::{require_root, wait_until, Lab, LabProcess, NODE};
use crate::testrun::LO_IFINDEX;

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
        self.code(0)
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
    finish(&spawn_in(lab, args)?, args)
}

/// `envfence ARGS` started inside the lab's node namespace.
fn spawn_in(lab: &Lab, args: &[&str]) -> Result<LabProcess> {
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(args).env_remove("NO_COLOR");
    lab.spawn_in_ns(NODE, cmd)
}

/// What the started `envfence ARGS` printed once it exited.
fn finish(p: &LabProcess, args: &[&str]) -> Result<Run> {
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

/// Compares `actual` with the golden file `name` (or rewrites it with
/// ENVFENCE_UPDATE_GOLDEN=1).
pub fn golden(name: &str, actual: &str) -> Result<()> {
    // Trailing blanks (a masked time in the last column) do not count.
    let actual: String = actual
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    let actual = actual.as_str();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
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
            .filter(|w| !w.is_empty())
            .map(|w| {
                if w.len() == 64 && w.bytes().all(|c| c.is_ascii_hexdigit()) {
                    "<sha256>".to_owned()
                } else {
                    mask_numbers(w)
                }
            })
            .collect();
        lines.push(words.join(" "));
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
    /// `envfence CMD --socket <the agent's socket> ARGS...` (`args` = CMD,
    /// ARGS...) in the node namespace.
    pub fn api(&self, args: &[&str]) -> Result<Run> {
        finish(&self.spawn_api(args)?, args)
    }
    /// [`Setup::api`] started, not waited for.
    pub fn spawn_api(&self, args: &[&str]) -> Result<LabProcess> {
        let sock = self.socket();
        let (cmd, rest) = args.split_first().ok_or_else(|| anyhow!("no command"))?;
        spawn_in(&self.lab, &[&[*cmd, "--socket", &sock], rest].concat())
    }
    /// `envfence status --state-dir <state> -o json` against the agent,
    /// exiting `code`.
    pub fn status_json(&self, code: i32) -> Result<Value> {
        self.api(&["status", "--state-dir", &self.state(), "-o", "json"])?
            .code(code)?
            .json()
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
    let paths = [
        ("--api-socket", &socket),
        ("--state-dir", &state),
        ("--audit-file", &audit),
    ];
    let mut extra_args: Vec<String> = paths
        .iter()
        .flat_map(|(flag, p)| [flag.to_string(), p.display().to_string()])
        .collect();
    let more = ["--no-watch", "--node-name", "lab-node"]
        .iter()
        .chain(extra);
    extra_args.extend(more.map(|s| s.to_string()));
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

/// Sends one UDP datagram of `len` bytes from pod `from`'s IPv4 address,
/// port `sport`, to pod `to`'s, port `dport`; returns (source, destination).
pub fn udp(
    lab: &Lab,
    from: &str,
    sport: u16,
    to: &str,
    dport: u16,
    len: usize,
) -> Result<(SocketAddr, SocketAddr)> {
    let src = SocketAddr::new(lab.pod(from)?.ipv4().into(), sport);
    let dst = SocketAddr::new(lab.pod(to)?.ipv4().into(), dport);
    let payload = vec![0x5au8; len];
    lab.in_ns(from, move || -> Result<()> {
        let s = UdpSocket::bind(src).with_context(|| format!("binding {src}"))?;
        s.send_to(&payload, dst)
            .with_context(|| format!("sending to {dst}"))?;
        Ok(())
    })??;
    Ok((src, dst))
}

/// Waits (10 s at most) until `p` printed `n` lines; its lines.
pub fn wait_lines(p: &LabProcess, n: usize) -> Result<Vec<String>> {
    ensure!(
        wait_until(Duration::from_secs(10), || p.stdout_lines().len() >= n),
        "want {n} lines, {:?} printed; stderr: {}",
        p.stdout_lines(),
        p.stderr_tail(10)
    );
    Ok(p.stdout_lines())
}

/// Stops `p` with SIGTERM (waits 5 s at most).
pub fn stop(p: &LabProcess) -> Result<()> {
    p.signal(nix::sys::signal::Signal::SIGTERM)?;
    p.wait_timeout(Duration::from_secs(5))?;
    Ok(())
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

impl Setup {
    /// [`udp`], then waits for the agent's event of that datagram.
    pub fn udp_event(
        &self,
        from: &str,
        sport: u16,
        to: &str,
        dport: u16,
        len: usize,
    ) -> Result<()> {
        let (src, dst) = udp(&self.lab, from, sport, to, dport, len)?;
        wait_event(&self.agent, &format!("{src} -> {dst}"), |e| {
            e.src == src.ip() && e.sport == Some(sport) && e.dst == dst.ip()
        })?;
        Ok(())
    }
}

/// The traffic of the golden tables: each flow sent once, in order, each
/// waited for (so the agent's store holds them in this order).
pub fn traffic(s: &Setup) -> Result<()> {
    let lab = &s.lab;
    let v4 = |pod: &str| -> Result<IpAddr> { Ok(lab.pod(pod)?.ipv4().into()) };
    let v6 = |pod: &str| -> Result<IpAddr> { Ok(lab.pod(pod)?.ipv6().into()) };
    // Receivers where packets pass, so that no ICMP error comes back.
    let _r1 = lab.udp_receiver("prod2", v4("prod2")?, 5432)?;
    let _r2 = lab.udp_receiver("prod1", v4("prod1")?, 8080)?;
    let dns = lab.udp_receiver("prod1", v4("prod1")?, 53)?;
    // (from, source port, to, destination port, length): each reported.
    let reported = [
        ("test1", 40001, "prod1", 9999, 11),
        ("test1", 40002, "prod1", 9999, 12),
        ("test1", 40003, "prod2", 9999, 13),
        ("dev1", 40004, "prod1", 9999, 14),
        ("prod1", 40006, "test1", 7000, 16),
        ("staging1", 40007, "prod2", 5432, 27),
        ("ops1", 40008, "prod1", 8080, 18),
    ];
    for (i, (from, sport, to, dport, len)) in reported.into_iter().enumerate() {
        s.udp_event(from, sport, to, dport, len)?;
        if i == 3 {
            // An ICMPv6 echo dev1 -> prod2 (dropped: test-to-prod).
            let (src, dst) = (v6("dev1")?, v6("prod2")?);
            ensure!(!lab.ping("dev1", dst, Duration::from_millis(500))?);
            wait_event(&s.agent, "icmpv6 dev1 -> prod2", |e| {
                e.dst == dst && e.src == src
            })?;
        }
    }
    // Allowed by the port rule test-dns-in-prod: no event.
    let (src, _) = udp(lab, "test1", 40009, "prod1", 53, 19)?;
    ensure!(
        dns.wait_from(src.ip(), 1, Duration::from_secs(5)) == 1,
        "the allowed DNS datagram did not arrive"
    );
    // An ICMP echo test1 -> prod1 (dropped).
    let (src, dst) = (v4("test1")?, v4("prod1")?);
    ensure!(!lab.ping("test1", dst, Duration::from_millis(500))?);
    wait_event(&s.agent, "icmp test1 -> prod1", |e| {
        e.dst == dst && e.src == src && e.proto == 1
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernel checks

/// Runs of each frame through the program: the cell that moves by at least
/// this much is the frame's (lab background traffic, such as neighbour
/// discovery, moves cells by a few packets at most).
pub const REPEAT: u32 = 64;

/// A counter cell (src env, dst env, verdict) and its packets.
pub type Cell = ((u32, u32, u32), u64);

/// The agent's map pinned in `pin_dir` as `name`.
fn pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// The agent's pinned counters of environment ids below 8, summed over
/// CPUs.
pub fn counters(pin_dir: &Path) -> Result<Vec<Cell>> {
    let map = PerCpuArray::<MapData, Counter>::try_from(pinned(pin_dir, map_names::COUNTERS)?)?;
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

/// TestRun frames enter through `lo`, which the agent does not attach to:
/// turn its source check off in the agent's pinned map, so that these
/// checks judge the policy (the source check has tests of its own).
pub fn no_source_check_on_lo(pin_dir: &Path) -> Result<()> {
    let mut map = aya::maps::HashMap::<MapData, u32, envfence_ebpf::IfConfig>::try_from(pinned(
        pin_dir,
        map_names::IFCONF,
    )?)?;
    map.insert(LO_IFINDEX, envfence_ebpf::IfConfig::default(), 0)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The API socket

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
