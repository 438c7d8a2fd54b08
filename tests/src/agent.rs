//! Driving the `envfence` agent binary inside a lab: finding (or building)
//! it, starting it in the node namespace, waiting for readiness, reading its
//! JSON flow events and its metrics, stopping it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::lab::{wait_until, Lab, LabProcess, NODE};
use crate::prom;

/// The stderr line the agent prints once it has attached.
pub const READY_LINE: &str = "envfence ready";
/// Default metrics address of an agent in a lab (the node namespace's own
/// loopback, so parallel labs never collide).
pub const METRICS_ADDR: &str = "127.0.0.1:9477";

/// Finds the agent binary, building it first when needed:
///
/// 1. `$ENVFENCE_BIN`, when set, is used as is (it must exist);
/// 2. otherwise `cargo build -p envfence` runs once per process, in the
///    profile of the running executable (`--release` for
///    `target/release/...`), so the binary is never stale, and
///    `target/<profile>/envfence` next to the running executable is used.
///    With `ENVFENCE_NO_BUILD=1` the build is skipped.
pub fn agent_binary() -> Result<PathBuf> {
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVFENCE_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("ENVFENCE_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let profile_dir = profile_dir()?;
    let bin = profile_dir.join("envfence");
    if std::env::var_os("ENVFENCE_NO_BUILD").is_none_or(|v| v == "0") {
        let workspace = crate::fixture::workspace();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace).args(["build", "-p", "envfence"]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        eprintln!("envfence-tests: building the agent: {cmd:?}");
        let status = cmd
            .status()
            .with_context(|| format!("running {cmd:?} (set ENVFENCE_BIN to skip the build)"))?;
        if !status.success() {
            bail!("{cmd:?} failed ({status})");
        }
    }
    if !bin.is_file() {
        bail!(
            "no agent binary at {} (run `cargo build -p envfence` or set ENVFENCE_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `target/<profile>` of the running executable (a test in `deps/`, or a
/// binary such as the demo).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Policy arguments, e.g. `["--example-policy"]` or `["--config", FILE]`.
    pub policy_args: Vec<String>,
    pub metrics_addr: String,
    pub report_interval_ms: u64,
    /// Extra arguments appended after the others.
    pub extra_args: Vec<String>,
    /// How long to wait for the ready line and /metrics.
    pub ready_timeout: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            policy_args: vec!["--example-policy".into()],
            metrics_addr: METRICS_ADDR.into(),
            report_interval_ms: 1000,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl AgentOptions {
    /// The default options with the policy file `path` (`--config`).
    pub fn config(path: &Path) -> AgentOptions {
        AgentOptions {
            policy_args: vec!["--config".into(), path.display().to_string()],
            ..AgentOptions::default()
        }
    }

    /// These options with a report every `ms` milliseconds.
    pub fn report_every(self, ms: u64) -> AgentOptions {
        AgentOptions {
            report_interval_ms: ms,
            ..self
        }
    }

    /// `bin agent` with these options, as [`Agent::start_with`] runs it in
    /// `lab` (its own state directory and API socket unless given).
    pub fn command(&self, lab: &Lab, bin: &Path) -> Result<Command> {
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args(&self.policy_args)
            .args(["--metrics-addr", &self.metrics_addr])
            .args(["--report-interval-ms", &self.report_interval_ms.to_string()])
            .args(&self.extra_args)
            .env("NO_COLOR", "1");
        // Agents of parallel labs must not share the host-wide defaults
        // (/run/envfence): each lab gets its own state dir and API socket
        // unless the caller chose them. It lives as long as the lab's
        // namespaces (restarted agents find their saved policy); the sweep
        // removes it once the lab's process is gone.
        let given = |flag: &str| self.extra_args.iter().any(|a| a == flag);
        if !given("--state-dir") || !given("--api-socket") {
            let dir = std::env::temp_dir().join(format!("{}-agent", lab.node_ns()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if !given("--state-dir") {
                cmd.arg("--state-dir").arg(&dir);
            }
            if !given("--api-socket") && !given("--no-api") {
                cmd.arg("--api-socket").arg(dir.join("envfence.sock"));
            }
        }
        Ok(cmd)
    }

    /// These options with `args` appended to the extra arguments.
    pub fn args<S: ToString>(mut self, args: impl IntoIterator<Item = S>) -> AgentOptions {
        self.extra_args
            .extend(args.into_iter().map(|a| a.to_string()));
        self
    }
}

/// An agent running in a lab's node namespace. The lab kills it when it is
/// dropped; [`Agent::stop`] stops it gracefully.
pub struct Agent {
    process: LabProcess,
    node_ns: String,
    metrics_addr: String,
}

impl Agent {
    /// Starts `bin agent --example-policy` in the node namespace and waits
    /// until it is ready.
    pub fn start(lab: &Lab, bin: &Path) -> Result<Agent> {
        Agent::start_with(lab, bin, &AgentOptions::default())
    }

    /// Starts the agent with `opts` and waits until it printed the ready line
    /// and answers on /metrics.
    pub fn start_with(lab: &Lab, bin: &Path, opts: &AgentOptions) -> Result<Agent> {
        let process = lab.spawn_in_ns(NODE, opts.command(lab, bin)?)?;
        let agent = Agent {
            process,
            node_ns: lab.node_ns().to_string(),
            metrics_addr: opts.metrics_addr.clone(),
        };
        if !agent
            .process
            .wait_for_stderr(READY_LINE, opts.ready_timeout)
        {
            let status = agent.process.try_wait().ok().flatten();
            bail!(
                "the agent did not print {READY_LINE:?} within {:?} ({}); its stderr:\n{}",
                opts.ready_timeout,
                status.map_or("still running".to_string(), |s| s.to_string()),
                agent.process.stderr_tail(40)
            );
        }
        let answered = wait_until(Duration::from_secs(10), || {
            agent.metrics().is_ok() || !agent.process.is_running()
        });
        if !answered || !agent.process.is_running() {
            bail!(
                "the agent is ready but /metrics on {} does not answer: {:#}; its stderr:\n{}",
                agent.metrics_addr,
                agent
                    .metrics()
                    .err()
                    .unwrap_or_else(|| anyhow!("agent exited")),
                agent.process.stderr_tail(40)
            );
        }
        Ok(agent)
    }

    /// The agent's process.
    pub fn process(&self) -> &LabProcess {
        &self.process
    }

    /// Every flow event printed so far (stdout lines that are JSON objects).
    pub fn events(&self) -> Vec<FlowEvent> {
        self.process
            .stdout_lines()
            .iter()
            .filter_map(|l| FlowEvent::parse(l))
            .collect()
    }

    /// The text of /metrics.
    pub fn metrics(&self) -> Result<String> {
        let addr = self.metrics_addr.clone();
        crate::netns::in_netns(&self.node_ns, move || {
            crate::lab::http_get_here(&addr, "/metrics")
        })?
    }

    /// One metric value (see [`prom::metric_value`]); 0 when the series does
    /// not exist yet.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(prom::metric_value(&self.metrics()?, name, labels).unwrap_or(0.0))
    }

    /// `envfence_datapath_total{kind}` (0 when the series does not exist).
    pub fn datapath_stat(&self, kind: &str) -> Result<f64> {
        self.metric("envfence_datapath_total", &[("kind", kind)])
    }

    /// `envfence_packets_total{src_env, dst_env, verdict}`.
    pub fn packets(&self, src_env: &str, dst_env: &str, verdict: &str) -> Result<f64> {
        self.metric(
            "envfence_packets_total",
            &[
                ("src_env", src_env),
                ("dst_env", dst_env),
                ("verdict", verdict),
            ],
        )
    }

    /// `envfence_datapath_total{kind="events_emitted"}`: the events the
    /// kernel emitted (the counter is pinned: it outlives an agent).
    pub fn events_emitted(&self) -> Result<u64> {
        Ok(self.datapath_stat("events_emitted")? as u64)
    }

    /// Polls metric `name{labels}` (0 while it does not exist) until
    /// `done(value)` holds; false after `timeout`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> bool {
        wait_until(timeout, || self.metric(name, labels).is_ok_and(&done))
    }

    /// SIGKILL, and waits (10 s) for it to be gone: the kernel goes on
    /// enforcing what the agent pinned.
    pub fn kill(&self) -> Result<()> {
        self.process.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.process
            .wait_timeout(Duration::from_secs(10))?
            .ok_or_else(|| anyhow!("the agent survived SIGKILL"))?;
        Ok(())
    }

    /// [`Agent::stop`], failing unless the agent exited successfully.
    pub fn stop_ok(&self, grace: Duration) -> Result<()> {
        let status = self.stop(grace)?;
        if !status.success() {
            bail!(
                "agent exit {status}; its stderr:\n{}",
                self.process.stderr_tail(20)
            );
        }
        Ok(())
    }

    /// SIGTERM and wait (up to `grace`, then SIGKILL). Returns the exit
    /// status; fails if it had to be killed.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        let (status, killed) = self.process.terminate(grace)?;
        if killed {
            bail!(
                "the agent did not exit within {grace:?} of SIGTERM; its stderr:\n{}",
                self.process.stderr_tail(20)
            );
        }
        Ok(status)
    }
}

/// Protocol numbers (the ABI's) and their names (the agent's table,
/// `envfence::policy::proto_name`).
pub mod proto {
    pub use envfence_ebpf::proto::{ICMP, ICMPV6, SCTP, TCP, UDP};

    /// The number of a protocol name as events print it (a name of the
    /// agent's table, or a number).
    pub fn from_name(name: &str) -> Option<u8> {
        let name = name.to_ascii_lowercase();
        (0..=u8::MAX)
            .find(|p| envfence::policy::proto_name(*p) == Some(name.as_str()))
            .or_else(|| name.parse().ok())
    }
}

/// One flow event line of the agent.
#[derive(Clone, Debug)]
pub struct FlowEvent {
    pub interface: String,
    pub direction: String,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP type (from `icmp_type`, else the `sport` field for ICMP flows,
    /// which is where the datapath keeps it).
    pub icmp_type: Option<u8>,
    pub src_env: String,
    pub dst_env: String,
    pub verdict: String,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
    pub raw: Value,
}

impl FlowEvent {
    /// Parses one stdout line; `None` when it is not a flow event.
    pub fn parse(line: &str) -> Option<FlowEvent> {
        let raw: Value = serde_json::from_str(line.trim()).ok()?;
        let s = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let n = |k: &str| raw.get(k).and_then(Value::as_u64);
        let proto = match raw.get("proto")? {
            Value::String(p) => proto::from_name(p)?,
            Value::Number(p) => u8::try_from(p.as_u64()?).ok()?,
            _ => return None,
        };
        let port = |k: &str| n(k).and_then(|v| u16::try_from(v).ok());
        let is_icmp = proto == proto::ICMP || proto == proto::ICMPV6;
        let icmp_type = n("icmp_type")
            .or_else(|| if is_icmp { n("sport") } else { None })
            .and_then(|v| u8::try_from(v).ok());
        Some(FlowEvent {
            interface: s("interface"),
            direction: s("direction"),
            proto,
            src: raw.get("src")?.as_str()?.parse().ok()?,
            dst: raw.get("dst")?.as_str()?.parse().ok()?,
            sport: port("sport"),
            dport: port("dport"),
            icmp_type,
            src_env: s("src_env"),
            dst_env: s("dst_env"),
            verdict: s("verdict"),
            rule: s("rule"),
            packets: n("packets").unwrap_or(0),
            bytes: n("bytes").unwrap_or(0),
            raw,
        })
    }

    /// Whether the event is about packets from `src` to `dst` with protocol
    /// `proto` and (when given) destination port `dport`.
    pub fn matches(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: Option<u16>) -> bool {
        self.src == src
            && self.dst == dst
            && self.proto == proto
            && (dport.is_none() || self.dport == dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let line = r#"{"time":"2026-11-23T02:30:00.123Z","node":"host","interface":"veth-test1","ifindex":5,"direction":"ingress","family":"ipv4","proto":"tcp","src":"10.30.1.2","sport":40000,"dst":"10.10.1.2","dport":8080,"src_env":"test","dst_env":"production","verdict":"drop","rule":"test-to-prod","packets":1,"bytes":74}"#;
        let e = FlowEvent::parse(line).unwrap();
        assert_eq!(e.proto, proto::TCP);
        assert_eq!(e.sport, Some(40000));
        assert_eq!(e.dport, Some(8080));
        assert_eq!(e.verdict, "drop");
        assert_eq!(e.rule, "test-to-prod");
        assert_eq!(e.bytes, 74);
        assert!(e.matches(
            "10.30.1.2".parse().unwrap(),
            "10.10.1.2".parse().unwrap(),
            proto::TCP,
            Some(8080)
        ));
        assert!(FlowEvent::parse("not json").is_none());
        assert!(FlowEvent::parse("{}").is_none());
    }
}
