//! Privileged integration tests: the lab itself, and the agent enforcing the
//! example policy inside it.
//!
//! They need root (CI runs as root) and fail with a clear message otherwise.
//! The agent binary is `$ENVFENCE_BIN` when set; otherwise
//! `cargo build -p envfence` runs once (a no-op when up to date) and
//! `target/<profile>/envfence` is used (`ENVFENCE_NO_BUILD=1` skips the
//! build). Set `EFL_ECHO=1` to see the agent's stderr.
//!
//! Tests that run an agent hold [`agent_lock`]: one agent at a time, so
//! they never compete for the kernel's attention or for CPU-heavy loading.

use std::net::IpAddr;
use std::sync::MutexGuard;
use std::time::Duration;

use anyhow::Result;
use envfence_tests::agent::{agent_binary, proto, Agent, FlowEvent};
use envfence_tests::fixture::{root, serial};
use envfence_tests::lab::Family::{self, V4};
use envfence_tests::lab::{lab_namespaces, wait_until, Lab, PodSpec};

const BLOCKED: Duration = Duration::from_millis(1000);
const PASSES: Duration = Duration::from_secs(5);

fn ip(lab: &Lab, pod: &str, family: Family) -> IpAddr {
    lab.pod(pod).expect("pod exists").ip(family)
}

/// Namespaces of `lab_id` that still exist.
fn remaining(lab_id: &str) -> Vec<String> {
    lab_namespaces()
        .expect("listing namespaces")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{lab_id}-")))
        .collect()
}

/// Nothing of lab `lab_id` is left.
fn assert_gone(lab_id: &str) {
    let left = remaining(lab_id);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn lab_routes_between_pods_without_agent() -> Result<()> {
    root();
    let lab = Lab::example()?;
    let id = lab.id().to_string();
    assert_eq!(remaining(&id).len(), 8, "node + 7 pods");
    for family in [Family::V4, Family::V6] {
        let (a, b) = (ip(&lab, "test1", family), ip(&lab, "prod1", family));
        for (from, to, ip) in [("test1", "prod1", b), ("ops1", "test1", a)] {
            assert!(
                lab.ping(from, ip, PASSES)?,
                "ping {from} -> {to} {family:?}"
            );
        }
        let _l = lab.tcp_listen("prod1", b, 8080)?;
        assert!(lab.tcp_connect("test1", b, 8080, PASSES)?);
        // Nothing listens on 8081: refused at once, not a timeout.
        assert!(!lab.tcp_connect("test1", b, 8081, PASSES)?);
        let rx = lab.udp_receiver("prod1", b, 9000)?;
        lab.udp_send("test1", b, 9000, b"hello", 5)?;
        assert_eq!(rx.wait_from(a, 5, PASSES), 5);
    }
    // The lab is closed: no route out of it.
    assert!(!lab.ping("test1", "192.0.2.1".parse()?, Duration::from_millis(300))?);
    drop(lab);
    assert_gone(&id);
    Ok(())
}

#[test]
fn lab_is_torn_down_when_a_test_panics() {
    root();
    let mut id = String::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(&PodSpec::example_pods()[..2]).expect("lab");
        id = lab.id().to_string();
        assert_eq!(remaining(&id).len(), 3);
        // A child process that would outlive a careless teardown.
        let mut sleep = std::process::Command::new("sleep");
        sleep.arg("600");
        let child = lab.spawn_in_ns("node", sleep).expect("spawn");
        assert!(child.is_running());
        panic!("deliberate panic with a live lab");
    }));
    assert!(outcome.is_err());
    assert!(!id.is_empty());
    assert_gone(&id);
}

#[test]
fn spawned_process_sees_the_lab_namespace() -> Result<()> {
    root();
    let lab = Lab::new(&PodSpec::example_pods()[..1])?;
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ls /sys/class/net; stat -f -c %T /sys/fs/bpf; mkdir /sys/fs/bpf/probe && echo pinned",
    ]);
    let p = lab.spawn_in_ns("node", cmd)?;
    let status = p.wait_timeout(Duration::from_secs(10))?.expect("sh exits");
    assert!(status.success(), "{}", p.stderr_tail(10));
    let out = p.stdout_lines();
    assert!(out.iter().any(|l| l == "veth-prod1"), "{out:?}");
    assert!(
        !out.iter().any(|l| l == "eth0"),
        "host interface visible: {out:?}"
    );
    assert!(out.iter().any(|l| l == "bpf_fs"), "{out:?}");
    assert!(out.iter().any(|l| l == "pinned"), "{out:?}");
    if let Some(dir) = lab.bpffs_dir() {
        assert!(dir.join("probe").exists(), "pin not in the lab's bpffs dir");
    }
    Ok(())
}

/// A lab of the example pods with the agent running `--example-policy`.
struct Running {
    // Field order = drop order: the agent dies with the lab.
    agent: Agent,
    lab: Lab,
    _guard: MutexGuard<'static, ()>,
}

fn running() -> Result<Running> {
    let guard = serial();
    let bin = agent_binary()?;
    let lab = Lab::example()?;
    let agent = Agent::start(&lab, &bin)?;
    Ok(Running {
        agent,
        lab,
        _guard: guard,
    })
}

impl Running {
    /// Stops the agent (it must exit 0 on SIGTERM), tears the lab down and
    /// checks nothing of it is left.
    fn finish(self) -> Result<()> {
        self.agent.stop_ok(Duration::from_secs(10))?;
        let id = self.lab.id().to_string();
        drop(self.lab);
        assert_gone(&id);
        Ok(())
    }

    /// The agent's events of `src` -> `dst` `proto`/`dport`, once there is
    /// one (none after 5 s).
    fn events_of(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Vec<FlowEvent> {
        let matching = || -> Vec<FlowEvent> {
            let mut events = self.agent.events();
            events.retain(|e| e.matches(src, dst, proto, Some(dport)));
            events
        };
        wait_until(Duration::from_secs(5), || !matching().is_empty());
        matching()
    }
}

#[test]
fn agent_blocks_test_to_production() -> Result<()> {
    let r = running()?;
    for family in [Family::V4, Family::V6] {
        let (test1, prod1) = (ip(&r.lab, "test1", family), ip(&r.lab, "prod1", family));
        let _l = r.lab.tcp_listen("prod1", prod1, 8080)?;
        let rx = r.lab.udp_receiver("prod1", prod1, 9000)?;
        assert!(
            !r.lab.tcp_connect("test1", prod1, 8080, BLOCKED)?,
            "test1 -> prod1 tcp/8080 connected ({family:?})"
        );
        r.lab.udp_send("test1", prod1, 9000, b"forbidden", 5)?;
        assert_eq!(
            rx.wait_from(test1, 1, BLOCKED),
            0,
            "test1 -> prod1 udp/9000 delivered ({family:?})"
        );
        for (proto, port) in [(proto::TCP, 8080), (proto::UDP, 9000)] {
            let events = r.events_of(test1, prod1, proto, port);
            assert!(
                !events.is_empty(),
                "no event for test1 -> prod1 {proto}/{port} ({family:?})"
            );
            for e in events {
                let (verdict, rule) = (e.verdict.as_str(), e.rule.as_str());
                assert_eq!((verdict, rule), ("drop", "test-to-prod"));
                let envs = (e.src_env.as_str(), e.dst_env.as_str());
                assert_eq!(envs, ("test", "production"));
            }
        }
    }
    r.finish()
}

#[test]
fn agent_lets_same_environment_traffic_through() -> Result<()> {
    let r = running()?;
    for family in [Family::V4, Family::V6] {
        for (a, b) in [("prod1", "prod2"), ("staging1", "staging2")] {
            let (ip_a, ip_b) = (ip(&r.lab, a, family), ip(&r.lab, b, family));
            let _l = r.lab.tcp_listen(b, ip_b, 8080)?;
            let rx = r.lab.udp_receiver(b, ip_b, 9000)?;
            assert!(
                r.lab.tcp_connect(a, ip_b, 8080, PASSES)?,
                "{a} -> {b} tcp ({family:?})"
            );
            r.lab.udp_send(a, ip_b, 9000, b"fine", 5)?;
            assert_eq!(
                rx.wait_from(ip_a, 5, PASSES),
                5,
                "{a} -> {b} udp ({family:?})"
            );
            assert!(r.lab.ping(a, ip_b, PASSES)?, "{a} -> {b} ping ({family:?})");
        }
    }
    // Allowed flows are not reported.
    std::thread::sleep(Duration::from_millis(300));
    let reported: Vec<String> = r
        .agent
        .events()
        .iter()
        .filter(|e| e.src_env == e.dst_env)
        .map(|e| e.raw.to_string())
        .collect();
    assert!(reported.is_empty(), "allowed flows reported: {reported:?}");
    r.finish()
}

#[test]
fn agent_audits_staging_to_production() -> Result<()> {
    let r = running()?;
    for family in [Family::V4, Family::V6] {
        let (staging1, prod1) = (ip(&r.lab, "staging1", family), ip(&r.lab, "prod1", family));
        let _l = r.lab.tcp_listen("prod1", prod1, 8080)?;
        assert!(
            r.lab.tcp_connect("staging1", prod1, 8080, PASSES)?,
            "staging1 -> prod1 must pass in audit ({family:?})"
        );
        let events = r.events_of(staging1, prod1, proto::TCP, 8080);
        assert!(!events.is_empty(), "no audit event ({family:?})");
        for e in events {
            assert_eq!(e.verdict, "audit");
            assert_eq!(e.rule, "staging-to-prod");
            let envs = (e.src_env.as_str(), e.dst_env.as_str());
            assert_eq!(envs, ("staging", "production"));
            assert!(e.packets >= 1);
        }
    }
    r.finish()
}

#[test]
fn agent_metrics_count_every_packet_exactly() -> Result<()> {
    const N: u64 = 25;
    const PAYLOAD: usize = 100;
    let r = running()?;
    let (staging1, prod1) = (ip(&r.lab, "staging1", V4), ip(&r.lab, "prod1", V4));
    let rx = r.lab.udp_receiver("prod1", prod1, 9000)?;
    let labels = [
        ("src_env", "staging"),
        ("dst_env", "production"),
        ("verdict", "audit"),
    ];
    let read = || -> Result<(f64, f64)> {
        let text = r.agent.metrics()?;
        let value = |name| envfence_tests::metric_value(&text, name, &labels).unwrap_or(0.0);
        Ok((
            value("envfence_packets_total"),
            value("envfence_bytes_total"),
        ))
    };
    // Warm up (ARP) so nothing but our datagrams moves the counters after.
    r.lab.udp_send("staging1", prod1, 9000, b"warm-up", 1)?;
    assert_eq!(rx.wait_from(staging1, 1, PASSES), 1);
    let mut before = read()?;
    assert!(wait_until(Duration::from_secs(3), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = read().unwrap_or((-1.0, -1.0));
        let stable = now == before;
        before = now;
        stable
    }));
    assert!(before.0 >= 1.0, "warm-up not counted: {before:?}");

    r.lab
        .udp_send("staging1", prod1, 9000, &[0x5a; PAYLOAD], N as usize)?;
    assert_eq!(
        rx.wait_from(staging1, N + 1, PASSES),
        N + 1,
        "audit must deliver"
    );
    let want = (
        before.0 + N as f64,
        before.1 + (N * (14 + 20 + 8 + PAYLOAD as u64)) as f64,
    );
    wait_until(Duration::from_secs(5), || {
        read().is_ok_and(|now| now.0 >= want.0)
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = read()?;
    assert_eq!(
        after.0, want.0,
        "packets: before {before:?}, after {after:?}"
    );
    assert_eq!(after.1, want.1, "bytes: before {before:?}, after {after:?}");
    r.finish()
}
