//! The on-call CLI (`envfence status | flows | explain | top | policy check
//! | policy diff | completions | man`), each run as the real binary against
//! a real agent in the lab, asserting on its real output: golden files for
//! tables (tests/tests/golden/, volatile fields normalised), parsed JSON for
//! `-o json`.
//!
//! `explain` is checked against the kernel itself: the test runs crafted
//! frames through the agent's own attached program (BPF_PROG_TEST_RUN on
//! the program id `status` reports) and requires the counter cell that
//! moved (source env, destination env, verdict) and the rule of the event
//! the agent printed to be what `explain` said, read from the pinned maps.
//!
//! Every CLI call that needs the agent's view runs inside the lab's node
//! namespace (same network namespace, /sys/fs/bpf = the lab's bpffs
//! directory), with `--socket` and `--state-dir` in the test's temporary
//! directory. Traffic stays inside the lab.
//!
//! `ENVFENCE_UPDATE_GOLDEN=1` rewrites the golden files.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use envfence_ebpf::{counter_index, map_names, Counter, ABI_VERSION, NUM_VERDICTS};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions, FlowEvent};
use envfence_tests::lab::{require_root, wait_until, Lab, NODE};
use envfence_tests::packet::{ip_frame, Ipv4, Packet};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Running the CLI

/// What one CLI run printed.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    fn ok(self) -> Result<Run> {
        ensure!(
            self.code == 0,
            "exit {} (want 0)\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
    fn code(self, want: i32) -> Result<Run> {
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
fn cli_in(lab: &Lab, args: &[&str]) -> Result<Run> {
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
fn cli(args: &[&str]) -> Result<Run> {
    run_cmd(Command::new(agent_binary()?).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<Run> {
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
fn normalize_paths(s: &str, tmp: &Path) -> String {
    s.replace(&tmp.display().to_string(), "<tmp>")
        .replace(&format!("/v{ABI_VERSION}"), "/v<ABI>")
        .replace(&format!("policy-v{ABI_VERSION}"), "policy-v<ABI>")
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name` (or rewrites it with
/// ENVFENCE_UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &str) -> Result<()> {
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
fn mask_times(s: &str) -> String {
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
fn normalize_status(s: &str, tmp: &Path) -> String {
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
fn mask_numbers(w: &str) -> String {
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

struct Setup {
    lab: Lab,
    agent: Agent,
    tmp: tempfile::TempDir,
    socket: PathBuf,
    state: PathBuf,
    audit: PathBuf,
    policy: PathBuf,
}

impl Setup {
    fn socket(&self) -> String {
        self.socket.display().to_string()
    }
    fn state(&self) -> String {
        self.state.display().to_string()
    }
    /// The agent's pin directory as the host sees it.
    fn pin_dir(&self) -> Result<PathBuf> {
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
fn start(extra: &[&str]) -> Result<Setup> {
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

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

/// Sends one UDP datagram from `src` (bound in `pod`) to `dst`.
fn udp(lab: &Lab, pod: &str, src: SocketAddr, dst: SocketAddr, payload_len: usize) -> Result<()> {
    let payload = vec![0x5au8; payload_len];
    lab.in_ns(pod, move || -> Result<()> {
        let s = UdpSocket::bind(src).with_context(|| format!("binding {src}"))?;
        s.send_to(&payload, dst)
            .with_context(|| format!("sending to {dst}"))?;
        Ok(())
    })?
}

/// Waits until the agent printed an event matching `pred`.
fn wait_event(agent: &Agent, what: &str, pred: impl Fn(&FlowEvent) -> bool) -> Result<FlowEvent> {
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
fn traffic(s: &Setup) -> Result<()> {
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
const REPEAT: u32 = 64;

/// BPF_PROG_TEST_RUN of the loaded program `prog_id` on `frame`, REPEAT
/// times; returns the TC action.
fn test_run(prog_id: u32, data: &[u8]) -> Result<u32> {
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
type Cell = ((u32, u32, u32), u64);

fn counters(pin_dir: &Path) -> Result<Vec<Cell>> {
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

fn verdict_name(v: u32) -> &'static str {
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
fn no_source_check_on_lo(pin_dir: &Path) -> Result<()> {
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

/// status, flows, top and explain against one running agent.
#[test]
fn commands_against_a_running_agent() -> Result<()> {
    let s = start(&[])?;
    let sock = s.socket();
    let state = s.state();
    traffic(&s)?;

    // --- status
    let st = cli_in(
        &s.lab,
        &[
            "status",
            "--socket",
            &sock,
            "--state-dir",
            &state,
            "-o",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(st["source"], "agent");
    assert_eq!(st["agent_running"], true);
    assert_eq!(st["ready"], true);
    assert_eq!(st["mode"], "enforce");
    assert_eq!(st["generation"], 1);
    assert_eq!(st["last_reload_error"], Value::Null);
    assert_eq!(st["policy_origin"], s.policy.display().to_string());
    assert_eq!(
        st["pin_dir"],
        format!("/sys/fs/bpf/envfence/v{ABI_VERSION}")
    );
    assert_eq!(st["events_lost"], 0);
    assert!(st["events_emitted"].as_u64().unwrap_or(0) >= 9, "{st:#}");
    assert_eq!(st["events_stored"], 9);
    let ifaces = st["interfaces"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = ifaces.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "veth-dev1",
            "veth-ops1",
            "veth-prod1",
            "veth-prod2",
            "veth-staging1",
            "veth-staging2",
            "veth-test1"
        ]
    );
    // Each hook's program is the one the kernel has in that tcx chain.
    for i in &ifaces {
        let name = i["name"].as_str().unwrap_or("");
        let census = tcx_programs(&s.lab, name)?;
        for h in i["hooks"].as_array().cloned().unwrap_or_default() {
            let hook = h["hook"].as_str().unwrap_or("");
            let id = h["program_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("{name} {hook}: no program id: {h}"))?;
            let want = census.iter().find(|(hk, _, _)| hk == hook);
            assert_eq!(
                Some((id, h["program_name"].as_str().unwrap_or(""))),
                want.map(|(_, id, n)| (u64::from(*id), n.as_str())),
                "{name} {hook}: status says {h}, the kernel {census:?}"
            );
            // The kernel keeps 15 bytes of the name.
            assert!(
                format!("envfence_{hook}").starts_with(h["program_name"].as_str().unwrap_or("-"))
            );
            assert_eq!(census.len(), 2, "{name}: one program per hook: {census:?}");
        }
    }
    let drops = st["counters"]["verdicts"]["drop"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(drops >= 7, "drop packets {drops}: {st:#}");
    let table = cli_in(
        &s.lab,
        &["status", "--socket", &sock, "--state-dir", &state],
    )?
    .ok()?;
    golden(
        "status_running.txt",
        &normalize_status(&table.stdout, s.tmp.path()),
    )?;

    // --- flows
    let all = cli_in(&s.lab, &["flows", "--socket", &sock])?.ok()?;
    golden("flows_all.txt", &mask_times(&all.stdout))?;
    let drops = cli_in(
        &s.lab,
        &[
            "flows",
            "--socket",
            &sock,
            "--verdict",
            "drop",
            "--from-env",
            "test",
        ],
    )?
    .ok()?;
    golden("flows_test_drops.txt", &mask_times(&drops.stdout))?;

    let j = cli_in(&s.lab, &["flows", "--socket", &sock, "-o", "json"])?
        .ok()?
        .json()?;
    let events = j["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 9, "{j:#}");
    assert_eq!(j["stored"], 9);
    let first = &events[0];
    assert_eq!(first["src"], "10.30.1.2");
    assert_eq!(first["sport"], 40001);
    assert_eq!(first["dport"], 9999);
    assert_eq!(first["verdict"], "drop");
    assert_eq!(first["rule"], "test-to-prod");
    assert_eq!(first["interface"], "veth-test1");

    let count = |args: &[&str]| -> Result<usize> {
        let mut a = vec!["flows", "--socket", &sock, "-o", "json"];
        a.extend_from_slice(args);
        let j = cli_in(&s.lab, &a)?.ok()?.json()?;
        Ok(j["events"].as_array().map_or(0, Vec::len))
    };
    assert_eq!(
        count(&["--ip", "10.30.0.0/16"])?,
        5,
        "test addresses on either side"
    );
    assert_eq!(count(&["--ip", "10.10.2.2"])?, 2);
    assert_eq!(count(&["--ip", "fd00:40::/32"])?, 1);
    assert_eq!(count(&["--port", "9999"])?, 4);
    assert_eq!(count(&["--rule", "prod-to-test"])?, 1);
    assert_eq!(count(&["--rule", "staging-to-prod,ops-to-prod"])?, 2);
    assert_eq!(count(&["--verdict", "log"])?, 1);
    assert_eq!(count(&["--to-env", "test"])?, 1);
    assert_eq!(count(&["--proto", "icmp,icmpv6"])?, 2);
    assert_eq!(count(&["--since", "10m"])?, 9);
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"])?, 0);
    assert_eq!(count(&["--since", "2000-01-01T00:00:00+01:00"])?, 9);
    assert_eq!(count(&["--last", "2"])?, 2);
    let jl = cli_in(
        &s.lab,
        &["flows", "--socket", &sock, "-o", "jsonl", "--last", "3"],
    )?
    .ok()?;
    let lines: Vec<Value> = jl
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["proto"], "icmp");
    // A bad filter is named before the agent is asked.
    let bad = cli_in(&s.lab, &["flows", "--socket", &sock, "--ip", "10.0.0.300"])?.code(1)?;
    assert!(bad.stderr.contains("10.0.0.300"), "{}", bad.stderr);
    let bad = cli_in(
        &s.lab,
        &["flows", "--socket", &sock, "--verdict", "dropped"],
    )?
    .code(2)?;
    assert!(bad.stderr.contains("dropped"), "{}", bad.stderr);

    // --- follow: the last stored match first, then a new flow as it comes.
    let mut cmd = Command::new(agent_binary()?);
    cmd.args([
        "flows",
        "--socket",
        &sock,
        "--follow",
        "-o",
        "jsonl",
        "--last",
        "1",
        "--from-env",
        "test",
    ]);
    let follower = s.lab.spawn_in_ns(NODE, cmd)?;
    ensure!(
        wait_until(Duration::from_secs(10), || !follower
            .stdout_lines()
            .is_empty()),
        "no backlog line; stderr: {}",
        follower.stderr_tail(10)
    );
    udp(
        &s.lab,
        "test1",
        SocketAddr::new(ip("10.30.1.2"), 40100),
        SocketAddr::new(ip("10.10.2.2"), 9998),
        10,
    )?;
    // Not from test: must not show.
    udp(
        &s.lab,
        "dev1",
        SocketAddr::new(ip("10.40.1.2"), 40101),
        SocketAddr::new(ip("10.10.2.2"), 9998),
        10,
    )?;
    udp(
        &s.lab,
        "test1",
        SocketAddr::new(ip("10.30.1.2"), 40102),
        SocketAddr::new(ip("10.10.2.2"), 9998),
        10,
    )?;
    ensure!(
        wait_until(Duration::from_secs(10), || follower.stdout_lines().len()
            >= 3),
        "follow printed {:?}; stderr: {}",
        follower.stdout_lines(),
        follower.stderr_tail(10)
    );
    let followed: Vec<Value> = follower
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        followed[0]["proto"], "icmp",
        "the backlog: the newest stored test flow"
    );
    assert_eq!(followed[1]["sport"], 40100);
    assert_eq!(followed[2]["sport"], 40102);
    assert_eq!(followed.len(), 3, "{followed:?}");
    follower.signal(nix::sys::signal::Signal::SIGTERM)?;
    let _ = follower.wait_timeout(Duration::from_secs(5))?;

    // A table follower prints the header, then each row as it comes.
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(["flows", "--socket", &sock, "--follow", "--from-env", "dev"]);
    let table_follower = s.lab.spawn_in_ns(NODE, cmd)?;
    std::thread::sleep(Duration::from_millis(500));
    udp(
        &s.lab,
        "dev1",
        SocketAddr::new(ip("10.40.1.2"), 40104),
        SocketAddr::new(ip("10.10.2.2"), 9998),
        10,
    )?;
    ensure!(
        wait_until(Duration::from_secs(10), || table_follower
            .stdout_lines()
            .len()
            >= 2),
        "table follow printed {:?}; stderr: {}",
        table_follower.stdout_lines(),
        table_follower.stderr_tail(10)
    );
    let lines = table_follower.stdout_lines();
    assert!(lines[0].starts_with("TIME "), "{lines:?}");
    assert!(
        lines[1].contains("10.40.1.2:40104") && lines[1].contains("test-to-prod"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    table_follower.signal(nix::sys::signal::Signal::SIGTERM)?;
    let _ = table_follower.wait_timeout(Duration::from_secs(5))?;

    // The API itself: read-only, clear errors.
    let (code, body) = raw_http(&s.socket, "GET /v1/flows?verdict=nope HTTP/1.1")?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (code, body) = raw_http(&s.socket, "GET /v1/nothing HTTP/1.1")?;
    assert_eq!(code, 404, "{body}");
    let (code, _) = raw_http(&s.socket, "POST /v1/status HTTP/1.1")?;
    assert_eq!(code, 405);
    let (code, body) = raw_http(&s.socket, "GET /v1/top?by=src&limit=1 HTTP/1.1")?;
    assert_eq!(code, 200, "{body}");

    // --- top (over the 9 golden events and the 4 follow ones)
    let top = cli_in(&s.lab, &["top", "--socket", &sock, "--until", "now"]);
    // "now" is not a time: a clear error.
    let top = top?.code(1)?;
    assert!(top.stderr.contains("--until"), "{}", top.stderr);
    let top = cli_in(&s.lab, &["top", "--socket", &sock])?.ok()?;
    golden("top_pairs.txt", &mask_times(&top.stdout))?;
    let t = cli_in(
        &s.lab,
        &["top", "--socket", &sock, "--by", "src", "-o", "json"],
    )?
    .ok()?
    .json()?;
    let rows = t["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows[0]["src"], "10.30.1.2", "{t:#}");
    assert_eq!(rows[0]["packets"], 6);
    assert_eq!(t["verdicts"], serde_json::json!(["drop", "audit"]));
    let t = cli_in(
        &s.lab,
        &[
            "top", "--socket", &sock, "--by", "rule", "-o", "json", "-n", "1",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(t["rows"][0]["rule"], "test-to-prod");
    assert_eq!(t["rows"][0]["packets"], 10);
    assert_eq!(t["rows"].as_array().map_or(0, Vec::len), 1);
    let t = cli_in(
        &s.lab,
        &[
            "top",
            "--socket",
            &sock,
            "--by",
            "dst",
            "--verdict",
            "log",
            "-o",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(t["rows"][0]["dst"], "10.10.1.2");
    assert_eq!(t["rows"][0]["verdicts"]["log"], 1);

    // --- explain = the kernel, for a set of packets
    explain_matches_the_kernel(&s, &st)?;

    // --- explain against a file that differs from what is loaded
    let other = s.tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        envfence::policy::EXAMPLE_POLICY.replacen("verdict: drop", "verdict: allow", 1),
    )?;
    let other_s = other.display().to_string();
    let agree = cli_in(
        &s.lab,
        &[
            "explain",
            "10.30.1.2",
            "10.10.1.2",
            "--port",
            "5432",
            "--state-dir",
            &state,
            "--config",
            &s.policy.display().to_string(),
        ],
    )?
    .ok()?;
    assert!(
        agree.stdout.contains("agrees with the kernel"),
        "{}",
        agree.stdout
    );
    let disagree = cli_in(
        &s.lab,
        &[
            "explain",
            "10.30.1.2",
            "10.10.1.2",
            "--port",
            "5432",
            "--state-dir",
            &state,
            "--config",
            &other_s,
        ],
    )?
    .code(3)?;
    golden(
        "explain_disagree.txt",
        &normalize_paths(&disagree.stdout, s.tmp.path()),
    )?;
    assert!(disagree.stderr.contains("DISAGREE"), "{}", disagree.stderr);
    let dj = cli_in(
        &s.lab,
        &[
            "explain",
            "10.30.1.2",
            "10.10.1.2",
            "--port",
            "5432",
            "--state-dir",
            &state,
            "--config",
            &other_s,
            "-o",
            "json",
        ],
    )?
    .code(3)?
    .json()?;
    assert_eq!(dj["agree"], false);
    assert_eq!(dj["kernel"]["verdict"], "drop");
    assert_eq!(dj["file"]["verdict"], "allow");
    let diffs: Vec<String> = dj["differences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(diffs, ["verdict: kernel drop, file allow"]);
    // A flow the change does not touch still agrees.
    cli_in(
        &s.lab,
        &[
            "explain",
            "10.20.1.2",
            "10.10.1.2",
            "--proto",
            "udp",
            "--port",
            "5432",
            "--state-dir",
            &state,
            "--config",
            &other_s,
        ],
    )?
    .ok()?;

    // A follower still connected does not hold the agent up: it stops in
    // time, and the follower is told and exits 0.
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(["flows", "--socket", &sock, "--follow"]);
    let follower = s.lab.spawn_in_ns(NODE, cmd)?;
    std::thread::sleep(Duration::from_millis(500));
    s.agent.stop(Duration::from_secs(10))?;
    let status = follower
        .wait_timeout(Duration::from_secs(10))?
        .ok_or_else(|| anyhow!("the follower did not end with the agent"))?;
    assert!(status.success(), "{status}: {}", follower.stderr_tail(5));
    assert!(
        follower.stderr_tail(5).contains("closed the stream"),
        "{}",
        follower.stderr_tail(5)
    );
    Ok(())
}

/// Sends one raw HTTP request line to the socket; returns the status code
/// and the body.
fn raw_http(socket: &Path, request_line: &str) -> Result<(u16, String)> {
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
fn tcx_programs(lab: &Lab, ifname: &str) -> Result<Vec<(String, u32, String)>> {
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

/// For each case: `explain -o json`, then the same packet through the
/// agent's own ingress program; the counter cell that moved and the event's
/// rule must be explain's.
fn explain_matches_the_kernel(s: &Setup, status: &Value) -> Result<()> {
    let prog = status["interfaces"][0]["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "ingress"))
        .and_then(|h| h["program_id"].as_u64())
        .ok_or_else(|| anyhow!("no ingress program id in {status:#}"))?;
    let prog = u32::try_from(prog)?;
    let pin_dir = s.pin_dir()?;
    no_source_check_on_lo(&pin_dir)?;
    let state = s.state();
    struct Case {
        src: &'static str,
        dst: &'static str,
        proto: u8,
        port: Option<u16>,
        fragment: bool,
        want: (&'static str, &'static str, &'static str, &'static str),
    }
    let case = |src, dst, proto, port, want| Case {
        src,
        dst,
        proto,
        port,
        fragment: false,
        want,
    };
    let mut cases = vec![
        case(
            "10.30.1.2",
            "10.10.1.2",
            6,
            Some(5432),
            ("test", "production", "drop", "test-to-prod"),
        ),
        case(
            "10.30.1.2",
            "10.10.1.2",
            17,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "10.30.9.9",
            "10.10.200.1",
            6,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "10.20.1.2",
            "10.10.2.2",
            17,
            Some(5432),
            ("staging", "production", "audit", "staging-to-prod"),
        ),
        case(
            "10.0.0.7",
            "10.10.1.2",
            1,
            None,
            ("ops", "production", "log", "ops-to-prod"),
        ),
        case(
            "10.10.1.2",
            "10.40.1.2",
            6,
            Some(22),
            ("production", "dev", "drop", "prod-to-test"),
        ),
        case(
            "192.0.2.1",
            "10.10.1.2",
            6,
            Some(443),
            ("world", "production", "allow", "default"),
        ),
        case(
            "fd00:30:1::2",
            "fd00:10:1::2",
            17,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "fd00:40:1::2",
            "fd00:10:1::2",
            6,
            Some(80),
            ("dev", "production", "drop", "test-to-prod"),
        ),
        case(
            "fd00:20:7::2",
            "fd00:10:2::2",
            58,
            None,
            ("staging", "production", "audit", "staging-to-prod"),
        ),
        case(
            "::ffff:10.30.1.2",
            "::ffff:10.10.1.2",
            6,
            Some(8443),
            ("test", "production", "drop", "test-to-prod"),
        ),
        case(
            "fd00:0:0:1::5",
            "fd00:30:1::2",
            17,
            Some(123),
            ("ops", "test", "allow", "default"),
        ),
    ];
    // A non-first fragment of DNS test -> production: the ports cannot be
    // read, so the strictest verdict of the pair (the port rule's allow does
    // not count): drop.
    cases.push(Case {
        fragment: true,
        ..case(
            "10.30.1.3",
            "10.10.1.3",
            17,
            Some(53),
            ("test", "production", "drop", "test-to-prod"),
        )
    });
    for (i, c) in cases.iter().enumerate() {
        let sport = 51000 + u16::try_from(i)?;
        let proto_name = match c.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            _ => bail!("case proto"),
        };
        let mut args = vec![
            "explain".to_owned(),
            c.src.to_owned(),
            c.dst.to_owned(),
            "--proto".to_owned(),
            proto_name.to_owned(),
            "--state-dir".to_owned(),
            state.clone(),
            "-o".to_owned(),
            "json".to_owned(),
        ];
        if let Some(p) = c.port {
            args.extend(["--port".to_owned(), p.to_string()]);
        }
        if c.fragment {
            args.push("--fragment".to_owned());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = cli_in(&s.lab, &argv)?.ok()?.json()?;
        let k = &e["kernel"];
        let said = (
            k["src"]["env"].as_str().unwrap_or(""),
            k["dst"]["env"].as_str().unwrap_or(""),
            k["verdict"].as_str().unwrap_or(""),
            k["rule"].as_str().unwrap_or(""),
        );
        assert_eq!(said, c.want, "explain {argv:?}: {e:#}");
        assert_eq!(e["agree"], true, "the saved copy agrees: {e:#}");

        // The same packet through the agent's program.
        let (src, dst) = (ip(c.src), ip(c.dst));
        let l4 = match (c.proto, c.port) {
            (6, Some(p)) => Packet::syn(sport, p),
            (17, Some(p)) => Packet::data(b"explain").udp(sport, p),
            (1, _) => Packet::echo(false),
            (58, _) => Packet::echo(true),
            _ => bail!("case l4"),
        };
        let data = match (src, dst, c.fragment) {
            (IpAddr::V4(a), IpAddr::V4(b), true) => l4
                .ipv4(&Ipv4 {
                    src: a.octets(),
                    dst: b.octets(),
                    proto: c.proto,
                    frag: 0x0010,
                    ..Ipv4::default()
                })
                .ethernet(&[])
                .into_bytes(),
            _ => ip_frame(src, dst, c.proto, l4),
        };
        let before = counters(&pin_dir)?;
        let action = test_run(prog, &data)?;
        let after = counters(&pin_dir)?;
        let moved: Vec<(u32, u32, u32)> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 >= b.1 + u64::from(REPEAT))
            .map(|(_, a)| a.0)
            .collect();
        let env_id = |side: &str| {
            k[side]["env_id"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
        };
        let verdict = moved.first().map(|m| verdict_name(m.2));
        assert_eq!(
            moved,
            vec![(
                env_id("src").unwrap_or(99),
                env_id("dst").unwrap_or(99),
                (0..4).find(|v| verdict_name(*v) == c.want.2).unwrap_or(99)
            )],
            "case {argv:?}: the kernel counted {moved:?} (verdict {verdict:?}), explain said {said:?}"
        );
        let dropped = action == 2;
        assert_eq!(
            dropped,
            c.want.2 == "drop",
            "case {argv:?}: TC action {action}"
        );
        if c.want.2 != "allow" {
            // The event the kernel emitted names the rule.
            let want_rule = c.want.3;
            let ev = wait_event(&s.agent, &format!("TestRun {argv:?}"), |ev| {
                let src_ok = ev.src == src || Some(ev.src) == src_unmapped(src);
                src_ok && (c.fragment || ev.proto == 1 || ev.proto == 58 || ev.sport == Some(sport))
            })?;
            assert_eq!(ev.rule, want_rule, "case {argv:?}: event {}", ev.raw);
            assert_eq!(ev.verdict, c.want.2, "case {argv:?}: event {}", ev.raw);
        }
    }
    Ok(())
}

fn src_unmapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

/// The agent is killed with SIGKILL: the kernel keeps enforcing, `status`
/// says the agent is down and shows what the pins say, `explain` still
/// answers, `flows` says where to look (--file), and `--file` reads the
/// audit log.
#[test]
fn status_and_explain_from_the_pins_when_the_agent_is_killed() -> Result<()> {
    let s = start(&[])?;
    let sock = s.socket();
    let state = s.state();
    let src = SocketAddr::new(ip("10.30.1.2"), 40201);
    let dst = SocketAddr::new(ip("10.10.1.2"), 9999);
    udp(&s.lab, "test1", src, dst, 21)?;
    wait_event(&s.agent, "test -> prod", |e| e.sport == Some(40201))?;
    let running = cli_in(&s.lab, &["status", "--socket", &sock, "-o", "json"])?
        .ok()?
        .json()?;

    s.agent
        .process()
        .signal(nix::sys::signal::Signal::SIGKILL)?;
    ensure!(
        s.agent
            .process()
            .wait_timeout(Duration::from_secs(10))?
            .is_some(),
        "the agent did not die"
    );
    // Still enforced: a forbidden datagram does not arrive.
    let rx = s.lab.udp_receiver("prod1", ip("10.10.1.2"), 9997)?;
    udp(
        &s.lab,
        "test1",
        SocketAddr::new(ip("10.30.1.2"), 40202),
        SocketAddr::new(ip("10.10.1.2"), 9997),
        5,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx.total(),
        0,
        "the kernel stopped enforcing with the agent gone"
    );

    let down = cli_in(
        &s.lab,
        &["status", "--socket", &sock, "--state-dir", &state],
    )?
    .code(2)?;
    golden(
        "status_agent_killed.txt",
        &normalize_status(&down.stdout, s.tmp.path()),
    )?;
    assert!(
        down.stdout
            .contains(&format!("DOWN: agent not reachable at {sock}")),
        "{}",
        down.stdout
    );
    let j = cli_in(
        &s.lab,
        &[
            "status",
            "--socket",
            &sock,
            "--state-dir",
            &state,
            "-o",
            "json",
        ],
    )?
    .code(2)?
    .json()?;
    assert_eq!(j["source"], "pins");
    assert_eq!(j["agent_running"], false);
    assert!(
        j["agent_error"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "{j:#}"
    );
    assert_eq!(j["generation"], 1);
    assert_eq!(j["mode"], "enforce");
    assert_eq!(j["pin_dir"], format!("/sys/fs/bpf/envfence/v{ABI_VERSION}"));
    assert_eq!(j["policy_sha256"], running["policy_sha256"]);
    assert!(j["active_slot"].is_u64(), "{j:#}");
    // The same interfaces and programs as when it ran.
    let progs = |v: &Value| -> Vec<(String, Vec<u64>)> {
        v["interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["name"].as_str().unwrap_or("").to_owned(),
                            i["hooks"]
                                .as_array()
                                .map(|h| {
                                    h.iter().filter_map(|h| h["program_id"].as_u64()).collect()
                                })
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(progs(&j), progs(&running));
    assert_eq!(progs(&j).len(), 7);
    assert!(
        j["counters"]["verdicts"]["drop"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{j:#}"
    );

    // explain needs no agent.
    let e = cli_in(
        &s.lab,
        &[
            "explain",
            "10.30.1.2",
            "10.10.1.2",
            "--port",
            "9997",
            "--state-dir",
            &state,
        ],
    )?
    .ok()?;
    golden(
        "explain_drop.txt",
        &normalize_paths(&e.stdout, s.tmp.path()),
    )?;

    // flows points at the audit log, which has the event.
    let f = cli_in(&s.lab, &["flows", "--socket", &sock])?.code(1)?;
    assert!(
        f.stderr.contains(&format!("agent not reachable at {sock}")),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains("--file"), "{}", f.stderr);
    let audit = s.audit.display().to_string();
    let f = cli_in(&s.lab, &["flows", "--file", &audit, "-o", "json"])?
        .ok()?
        .json()?;
    let evs = f["events"].as_array().cloned().unwrap_or_default();
    assert!(
        evs.iter()
            .any(|e| e["sport"] == 40201 && e["rule"] == "test-to-prod"),
        "{f:#}"
    );
    let t = cli_in(&s.lab, &["top", "--file", &audit, "-o", "json"])?
        .ok()?
        .json()?;
    assert_eq!(t["rows"][0]["src_env"], "test", "{t:#}");
    Ok(())
}

/// The socket is root's (and the --api-group's) only: its directory 0750,
/// itself 0660; a user outside the group cannot connect and is told so;
/// a member of the group can.
#[test]
fn api_socket_is_for_root_and_its_group_only() -> Result<()> {
    require_root()?;
    let user = TempUser::create()?;
    let s = start(&["--api-group", &user.name])?;
    let dir = s
        .socket
        .parent()
        .ok_or_else(|| anyhow!("socket without directory"))?;
    let dmeta = std::fs::metadata(dir)?;
    assert_eq!(dmeta.permissions().mode() & 0o777, 0o750);
    assert_eq!((dmeta.uid(), dmeta.gid()), (0, user.gid));
    let smeta = std::fs::symlink_metadata(&s.socket)?;
    assert_eq!(smeta.permissions().mode() & 0o777, 0o660);
    assert_eq!((smeta.uid(), smeta.gid()), (0, user.gid));
    let bin = agent_binary()?;
    let sock = s.socket();

    // Root: fine.
    let f = cli_in(&s.lab, &["flows", "--socket", &sock, "-o", "json"])?.ok()?;
    f.json()?;
    // Another user, not in the group: refused, and told why.
    let outsider = run_cmd(
        Command::new("setpriv")
            .args([
                "--reuid",
                &user.uid.to_string(),
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(&bin)
            .args(["flows", "--socket", &sock]),
    )?
    .code(1)?;
    assert!(
        outsider
            .stderr
            .contains(&format!("permission denied on {sock}")),
        "{}",
        outsider.stderr
    );
    assert!(
        outsider.stderr.contains("--api-group"),
        "{}",
        outsider.stderr
    );
    // status does not call an agent it cannot reach "down".
    let st = run_cmd(
        Command::new("setpriv")
            .args([
                "--reuid",
                &user.uid.to_string(),
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(&bin)
            .args(["status", "--socket", &sock]),
    )?
    .code(1)?;
    assert!(
        st.stderr.contains(&format!("permission denied on {sock}")),
        "{}",
        st.stderr
    );
    assert!(!st.stdout.contains("DOWN"), "{}", st.stdout);
    // The same user with the group: answered.
    let member = run_cmd(
        Command::new("setpriv")
            .args([
                "--reuid",
                &user.uid.to_string(),
                "--regid",
                &user.gid.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(&bin)
            .args(["flows", "--socket", &sock, "-o", "json"]),
    )?
    .ok()?;
    member.json()?;
    Ok(())
}

/// A system user and group made for one test, removed when dropped.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn create() -> Result<TempUser> {
        let name = format!("efcli{}", std::process::id());
        let _ = run_cmd(Command::new("userdel").arg(&name));
        let _ = run_cmd(Command::new("groupdel").arg(&name));
        run_cmd(Command::new("groupadd").args(["--system", &name]))?.ok()?;
        let made = run_cmd(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            &name,
            &name,
        ]))?;
        if made.code != 0 {
            let _ = run_cmd(Command::new("groupdel").arg(&name));
            bail!("useradd {name}: {}", made.stderr);
        }
        let user = nix::unistd::User::from_name(&name)?
            .ok_or_else(|| anyhow!("user {name} was not created"))?;
        Ok(TempUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = run_cmd(Command::new("userdel").arg(&self.name));
        let _ = run_cmd(Command::new("groupdel").arg(&self.name));
    }
}

/// `policy check` gives every error of every file with its place; -o json
/// for CI annotations.
#[test]
fn policy_check_reports_every_error_with_its_position() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bad1 = tmp.path().join("bad1.yaml");
    std::fs::write(
        &bad1,
        "mode: enforcing\ndefault: allow\nenvironments:\n  prod: [\"10.10.0.0/16\"]\n  test: [\"10.30.0.0/33\"]\nrules:\n  - name: t2p\n    from: [test]\n    to: [prodd]\n    verdict: dropp\n",
    )?;
    let bad2 = tmp.path().join("bad2.yaml");
    std::fs::write(
        &bad2,
        "environments:\n  a: [\"10.0.0.0/8\"]\n  b: [\"10.0.0.0/8\"]\nrules:\n  - name: x\n    from: [a]\n    to: [b]\n    verdict: drop\n    ports: [\"99999/tcp\"]\n",
    )?;
    let good = tmp.path().join("good.yaml");
    std::fs::write(&good, envfence::policy::EXAMPLE_POLICY)?;
    let (b1, b2, g) = (
        bad1.display().to_string(),
        bad2.display().to_string(),
        good.display().to_string(),
    );

    let r = cli(&["policy", "check", "-o", "json", &b1, &g, &b2])?.code(1)?;
    let list = r.json()?;
    let errors = list.as_array().cloned().unwrap_or_default();
    let got: Vec<(String, u64, u64, String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap_or("").to_owned(),
                e["line"].as_u64().unwrap_or(0),
                e["column"].as_u64().unwrap_or(0),
                e["field"].as_str().unwrap_or("").to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, u64, u64, String, String)> = [
        (&b1, 1, 7, "mode", "enforcing"),
        (&b1, 5, 10, "environments.test[0]", "10.30.0.0/33"),
        (&b1, 9, 10, "rules[0].to[0]", "prodd"),
        (&b1, 10, 14, "rules[0].verdict", "dropp"),
        // One CIDR in two environments.
        (&b2, 3, 7, "environments.b[0]", "10.0.0.0/8"),
        (&b2, 9, 13, "rules[0].ports[0]", "99999/tcp"),
    ]
    .iter()
    .map(|(f, l, c, field, v)| ((*f).clone(), *l, *c, (*field).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(got, want, "{list:#}");
    for e in &errors {
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{e}");
    }
    // Text: every error on stderr as file:line:column.
    let t = cli(&["policy", "check", &b1, &g, &b2])?.code(1)?;
    assert!(t.stdout.contains(&format!("{g}: ok")), "{}", t.stdout);
    for e in &errors {
        let place = format!(
            "{}:{}:{}: ",
            e["file"].as_str().unwrap_or(""),
            e["line"],
            e["column"]
        );
        assert!(t.stderr.contains(&place), "{place} not in:\n{}", t.stderr);
    }
    // All good: an empty list, exit 0.
    let ok = cli(&["policy", "check", "-o", "json", &g])?.ok()?.json()?;
    assert_eq!(ok, serde_json::json!([]));
    Ok(())
}

/// `policy diff` lists every change of what is enforced; exit 0 for none,
/// 1 for changes, 2 for an invalid file.
#[test]
fn policy_diff_lists_the_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let old = tmp.path().join("old.yaml");
    let new = tmp.path().join("new.yaml");
    let same = tmp.path().join("same.yaml");
    let example = envfence::policy::EXAMPLE_POLICY;
    std::fs::write(&old, example)?;
    // Same meaning, other form.
    std::fs::write(&same, format!("# a comment\n{example}"))?;
    let changed = example
        .replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"53/udp\"]")
        .replace(
            "staging:    [\"10.20.0.0/16\", \"fd00:20::/32\"]",
            "staging:    [\"10.20.0.0/16\", \"fd00:20::/32\", \"10.10.9.0/24\"]\n  qa:         [\"10.50.0.0/16\"]",
        )
        .replace(
            "  - name: ops-to-prod",
            "  - name: qa-to-prod\n    from: [qa]\n    to: [production]\n    verdict: drop\n  - name: ops-to-prod",
        );
    ensure!(changed != example, "the edits did not apply");
    std::fs::write(&new, &changed)?;
    let logged = tmp.path().join("logged.yaml");
    std::fs::write(&logged, example.replace("default: allow", "default: log"))?;
    let (o, n, sm) = (
        old.display().to_string(),
        new.display().to_string(),
        same.display().to_string(),
    );
    let tmp_s = tmp.path().display().to_string();

    let d = cli(&["policy", "diff", &o, &n])?.code(1)?;
    golden("policy_diff.txt", &d.stdout.replace(&tmp_s, "<tmp>"))?;
    let j = cli(&["policy", "diff", &o, &n, "-o", "json"])?
        .code(1)?
        .json()?;
    assert_eq!(j["default"], Value::Null);
    assert_eq!(j["mode"], Value::Null);
    assert_eq!(j["environments_added"], serde_json::json!(["qa"]));
    let cidrs = j["cidrs"].as_array().cloned().unwrap_or_default();
    assert!(cidrs.iter().any(|c| c["cidr"] == "10.10.9.0/24"
        && c["old"] == "production"
        && c["new"] == "staging"
        && c["old_via"] == "10.10.0.0/16"));
    assert!(cidrs
        .iter()
        .any(|c| c["cidr"] == "10.50.0.0/16" && c["old"] == "world" && c["new"] == "qa"));
    let v = j["verdicts"].as_array().cloned().unwrap_or_default();
    let find = |from: &str, to: &str, ports: &str| {
        v.iter()
            .find(|x| x["from"] == from && x["to"] == to && x["ports"] == ports)
            .cloned()
    };
    let dns =
        find("test", "production", "53/tcp").ok_or_else(|| anyhow!("no 53/tcp change: {j:#}"))?;
    assert_eq!(
        dns["old"],
        serde_json::json!({"verdict": "allow", "rule": "test-dns-in-prod"})
    );
    assert_eq!(
        dns["new"],
        serde_json::json!({"verdict": "drop", "rule": "test-to-prod"})
    );
    assert!(
        find("test", "production", "53/udp").is_none(),
        "53/udp does not change"
    );
    let qa = find("qa", "production", "*").ok_or_else(|| anyhow!("no qa change: {j:#}"))?;
    assert_eq!(qa["old"], Value::Null);
    assert_eq!(qa["new"]["verdict"], "drop");
    assert_eq!(v.len(), 2, "{j:#}");
    // default allow -> log: every pair no rule names changes.
    let j = cli(&[
        "policy",
        "diff",
        &o,
        &logged.display().to_string(),
        "-o",
        "json",
    ])?
    .code(1)?
    .json()?;
    assert_eq!(
        j["default"],
        serde_json::json!({"old": "allow", "new": "log"})
    );
    let v = j["verdicts"].as_array().cloned().unwrap_or_default();
    // 6 environments (world included): 36 pairs, 6 of them named by a rule.
    assert_eq!(v.len(), 30, "{j:#}");
    let find = |from: &str, to: &str, ports: &str| {
        v.iter()
            .find(|x| x["from"] == from && x["to"] == to && x["ports"] == ports)
            .cloned()
    };
    let dflt = find("staging", "test", "*").ok_or_else(|| anyhow!("no default change: {j:#}"))?;
    assert_eq!(
        dflt["old"],
        serde_json::json!({"verdict": "allow", "rule": "default"})
    );
    assert_eq!(
        dflt["new"],
        serde_json::json!({"verdict": "log", "rule": "default"})
    );

    let none = cli(&["policy", "diff", &o, &sm])?.ok()?;
    assert!(
        none.stdout.contains("no change in what is enforced"),
        "{}",
        none.stdout
    );
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(&broken, "mode: sometimes\n")?;
    let b = cli(&["policy", "diff", &o, &broken.display().to_string()])?.code(2)?;
    assert!(b.stderr.contains("broken.yaml:1:"), "{}", b.stderr);
    let missing = cli(&["policy", "diff", &o, "/nonexistent/p.yaml"])?.code(2)?;
    assert!(
        missing.stderr.contains("/nonexistent/p.yaml"),
        "{}",
        missing.stderr
    );
    Ok(())
}

/// Completions and man pages come from the clap definitions; every
/// on-call command's --help has examples.
#[test]
fn completions_man_and_help() -> Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let c = cli(&["completions", shell])?.ok()?;
        for word in ["explain", "flows", "from-env", "socket"] {
            assert!(c.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let man = cli(&["man"])?.ok()?;
    assert!(
        man.stdout.contains(".TH envfence"),
        "{}",
        &man.stdout[..man.stdout.len().min(300)]
    );
    assert!(man.stdout.contains("explain"));
    let tmp = tempfile::tempdir()?;
    cli(&["man", "--dir", &tmp.path().display().to_string()])?.ok()?;
    for page in [
        "envfence.1",
        "envfence-explain.1",
        "envfence-flows.1",
        "envfence-status.1",
        "envfence-top.1",
    ] {
        ensure!(tmp.path().join(page).is_file(), "no {page}");
    }
    for cmd in [
        vec!["status"],
        vec!["flows"],
        vec!["explain"],
        vec!["top"],
        vec!["policy", "check"],
        vec!["policy", "diff"],
        vec!["completions"],
        vec!["man"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let h = cli(&args)?.ok()?;
        assert!(
            h.stdout.contains("Examples:"),
            "{cmd:?} --help has no examples:\n{}",
            h.stdout
        );
    }
    Ok(())
}
