//! Connection tracking with real sockets in the namespace lab, the agent
//! enforcing the example policy: DNS from test to production works over
//! TCP and UDP (the replies pass though production -> test is dropped),
//! production still cannot open anything towards test, and a reload that
//! removes the DNS exception stops an established connection in both
//! directions. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions};
use envfence_tests::lab::{require_root, wait_until, Family, Lab};

static AGENT_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    AGENT_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

const BLOCKED: Duration = Duration::from_millis(1000);

fn ip(lab: &Lab, pod: &str, family: Family) -> IpAddr {
    lab.pod(pod).expect("pod").ip(family)
}

/// A TCP echo server on `addr` in `pod` (one connection at a time).
fn tcp_echo(lab: &Lab, pod: &str, addr: SocketAddr) -> Result<()> {
    let l = lab
        .in_ns(pod, || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr}"))?;
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Sends `msg` on `s` and waits for it to come back.
fn echoed(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

fn connect(lab: &Lab, pod: &str, to: SocketAddr, timeout: Duration) -> Result<Option<TcpStream>> {
    let s = lab.in_ns(pod, || TcpStream::connect_timeout(&to, timeout))?;
    Ok(match s {
        Ok(s) => {
            s.set_read_timeout(Some(BLOCKED))?;
            Some(s)
        }
        Err(_) => None,
    })
}

fn udp_query(lab: &Lab, from: &str, server: &str, to: SocketAddr) -> Result<bool> {
    let srv = lab.in_ns(server, || UdpSocket::bind(to))??;
    srv.set_read_timeout(Some(BLOCKED))?;
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let cli = lab.in_ns(from, || UdpSocket::bind(any))??;
    cli.set_read_timeout(Some(BLOCKED))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((n, peer)) = srv.recv_from(&mut buf) {
            let _ = srv.send_to(&buf[..n], peer);
        }
    });
    cli.send_to(b"dns?", to)?;
    let mut buf = [0u8; 512];
    let got = matches!(cli.recv_from(&mut buf), Ok((4, _)));
    let _ = echo.join();
    Ok(got)
}

fn start(lab: &Lab, opts: &AgentOptions) -> Result<Agent> {
    Agent::start_with(lab, &agent_binary()?, opts)
}

#[test]
fn dns_from_test_works_and_production_still_cannot_open_towards_test() -> Result<()> {
    require_root()?;
    let _g = lock();
    let lab = Lab::example()?;
    let agent = start(&lab, &AgentOptions::default())?;
    for family in [Family::V4, Family::V6] {
        let (t, p) = (ip(&lab, "test1", family), ip(&lab, "prod1", family));
        tcp_echo(&lab, "prod1", SocketAddr::new(p, 53))?;
        let mut s = connect(
            &lab,
            "test1",
            SocketAddr::new(p, 53),
            Duration::from_secs(5),
        )?
        .with_context(|| format!("test1 -> prod1 tcp/53 did not connect ({family:?})"))?;
        assert!(echoed(&mut s, b"query and answer"), "{family:?}");
        assert!(
            udp_query(&lab, "test1", "prod1", SocketAddr::new(p, 53))?,
            "udp {family:?}"
        );
        // Production still opens nothing towards test: TCP (same port as
        // the tracked flow's, too) and UDP.
        tcp_echo(&lab, "test1", SocketAddr::new(t, 8053))?;
        assert!(
            connect(&lab, "prod1", SocketAddr::new(t, 8053), BLOCKED)?.is_none(),
            "prod1 -> test1 tcp connected ({family:?})"
        );
        assert!(
            !udp_query(&lab, "prod1", "test1", SocketAddr::new(t, 5353))?,
            "prod1 -> test1 udp answered ({family:?})"
        );
        // Other ports from test to production stay dropped.
        tcp_echo(&lab, "prod1", SocketAddr::new(p, 8080))?;
        assert!(connect(&lab, "test1", SocketAddr::new(p, 8080), BLOCKED)?.is_none());
    }
    let m = agent.metrics()?;
    let replies = envfence_tests::metric_value(
        &m,
        "envfence_packets_total",
        &[
            ("src_env", "production"),
            ("dst_env", "test"),
            ("verdict", "reply"),
        ],
    )
    .unwrap_or(0.0);
    assert!(replies >= 4.0, "replies counted: {replies}");
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn a_reload_without_the_dns_exception_stops_an_established_connection() -> Result<()> {
    require_root()?;
    let _g = lock();
    let lab = Lab::example()?;
    let dir = std::env::temp_dir().join(format!("{}-ctpolicy", lab.node_ns()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policy.yaml");
    std::fs::write(&file, envfence::policy::EXAMPLE_POLICY)?;
    let opts = AgentOptions {
        policy_args: vec!["--config".into(), file.display().to_string()],
        ..AgentOptions::default()
    };
    let agent = start(&lab, &opts)?;
    let p = ip(&lab, "prod1", Family::V4);
    tcp_echo(&lab, "prod1", SocketAddr::new(p, 53))?;
    let mut s = connect(
        &lab,
        "test1",
        SocketAddr::new(p, 53),
        Duration::from_secs(5),
    )?
    .context("test1 -> prod1 tcp/53 did not connect")?;
    assert!(echoed(&mut s, b"before the reload"));
    let generation = |a: &Agent| {
        a.metrics()
            .ok()
            .and_then(|m| envfence_tests::metric_value(&m, "envfence_policy_generation", &[]))
            .unwrap_or(0.0)
    };
    let before = generation(&agent);
    let without = envfence::policy::EXAMPLE_POLICY
        .replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"54/udp\"]");
    assert_ne!(without, envfence::policy::EXAMPLE_POLICY);
    std::fs::write(&file, without)?;
    agent.process().signal(nix::sys::signal::Signal::SIGHUP)?;
    assert!(
        wait_until(Duration::from_secs(10), || generation(&agent) > before),
        "the reload did not happen"
    );
    // Neither direction passes any more: the client's data is dropped
    // (no echo), and so would the server's.
    assert!(
        !echoed(&mut s, b"after the reload"),
        "the connection survived the reload"
    );
    agent.stop(Duration::from_secs(10))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// kill -9 of the agent in the middle of a long TCP transfer from a tracked
/// flow's server (production -> test, all of it replies): the transfer goes
/// on (the pinned table and links keep enforcing), and nothing forbidden
/// passes while no agent runs.
#[test]
fn kill_9_in_the_middle_of_a_transfer_keeps_it_and_nothing_forbidden_passes() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    require_root()?;
    let _g = lock();
    let lab = Lab::example()?;
    let agent = start(&lab, &AgentOptions::default())?;
    let (t, p) = (ip(&lab, "test1", Family::V4), ip(&lab, "prod1", Family::V4));
    // A server that streams until the client goes away.
    let l = lab.in_ns("prod1", || TcpListener::bind(SocketAddr::new(p, 53)))??;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let chunk = [0x5au8; 1024];
                while !stop.load(Ordering::Relaxed) && c.write_all(&chunk).is_ok() {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    }
    let mut s = connect(
        &lab,
        "test1",
        SocketAddr::new(p, 53),
        Duration::from_secs(5),
    )?
    .context("test1 -> prod1 tcp/53 did not connect")?;
    let got = Arc::new(AtomicU64::new(0));
    let reader = {
        let got = got.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = got.load(Ordering::Relaxed);
    assert!(
        before > 50_000,
        "the transfer did not start ({before} bytes)"
    );
    agent.process().signal(nix::sys::signal::Signal::SIGKILL)?;
    agent
        .process()
        .wait_timeout(Duration::from_secs(10))?
        .context("the agent survived SIGKILL")?;
    let at_kill = got.load(Ordering::Relaxed);
    // Nothing forbidden passes without an agent.
    tcp_echo(&lab, "prod1", SocketAddr::new(p, 8080))?;
    assert!(connect(&lab, "test1", SocketAddr::new(p, 8080), BLOCKED)?.is_none());
    tcp_echo(&lab, "test1", SocketAddr::new(t, 8053))?;
    assert!(connect(&lab, "prod1", SocketAddr::new(t, 8053), BLOCKED)?.is_none());
    std::thread::sleep(Duration::from_secs(1));
    let after = got.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    assert!(
        after > at_kill + 50_000,
        "the transfer stalled after kill -9: {at_kill} -> {after} bytes"
    );
    Ok(())
}

/// ops -> production scrapes work while production -> ops is dropped (the
/// example policy plus a `prod-to-ops` drop rule): the scrape's answers
/// are replies of the ops flow.
#[test]
fn ops_scrapes_production_while_production_to_ops_stays_blocked() -> Result<()> {
    require_root()?;
    let _g = lock();
    let lab = Lab::example()?;
    let dir = std::env::temp_dir().join(format!("{}-ctops", lab.node_ns()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policy.yaml");
    let policy = envfence::policy::EXAMPLE_POLICY.replace(
        "interfaces:\n",
        "  - name: prod-to-ops\n    from: [production]\n    to: [ops]\n    verdict: drop\ninterfaces:\n",
    );
    assert_ne!(policy, envfence::policy::EXAMPLE_POLICY);
    std::fs::write(&file, policy)?;
    let opts = AgentOptions {
        policy_args: vec!["--config".into(), file.display().to_string()],
        ..AgentOptions::default()
    };
    let agent = start(&lab, &opts)?;
    for family in [Family::V4, Family::V6] {
        let (o, p) = (ip(&lab, "ops1", family), ip(&lab, "prod1", family));
        tcp_echo(&lab, "prod1", SocketAddr::new(p, 9100))?;
        let mut s = connect(
            &lab,
            "ops1",
            SocketAddr::new(p, 9100),
            Duration::from_secs(5),
        )?
        .with_context(|| format!("ops1 -> prod1 tcp/9100 did not connect ({family:?})"))?;
        assert!(echoed(&mut s, b"GET /metrics"), "{family:?}");
        tcp_echo(&lab, "ops1", SocketAddr::new(o, 9101))?;
        assert!(
            connect(&lab, "prod1", SocketAddr::new(o, 9101), BLOCKED)?.is_none(),
            "prod1 -> ops1 connected ({family:?})"
        );
    }
    agent.stop(Duration::from_secs(10))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
