//! Connection tracking with real sockets in the namespace lab, the agent
//! enforcing the example policy: DNS from test to production works over
//! TCP and UDP (the replies pass though production -> test is dropped),
//! production still cannot open anything towards test, and a reload that
//! removes the DNS exception stops an established connection in both
//! directions. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use envfence_tests::agent::{agent_binary, Agent, AgentOptions};
use envfence_tests::fixture::{example_lab, host_addr, serial};
use envfence_tests::lab::{unspecified, Family, Lab};

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

/// A TCP connection `from` -> `to` that must open (within 5 s).
fn open(lab: &Lab, from: &str, to: SocketAddr) -> Result<TcpStream> {
    connect(lab, from, to, Duration::from_secs(5))?
        .with_context(|| format!("{from} -> {to} tcp did not connect"))
}

/// Whether `from` fails to connect (within [`BLOCKED`]) to a TCP echo
/// server started on `to` in `server`.
fn blocked(lab: &Lab, server: &str, from: &str, to: SocketAddr) -> Result<bool> {
    tcp_echo(lab, server, to)?;
    Ok(connect(lab, from, to, BLOCKED)?.is_none())
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
    let cli = lab.in_ns(from, || UdpSocket::bind(unspecified(to.ip())))??;
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

/// The agent on the policy `text`, written to `policy.yaml` in `dir`
/// (rewrite it and SIGHUP to reload).
fn start_on(lab: &Lab, dir: &Path, text: &str) -> Result<(Agent, PathBuf)> {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, text)?;
    Ok((start(lab, &AgentOptions::config(&file))?, file))
}

#[test]
fn dns_from_test_works_and_production_still_cannot_open_towards_test() -> Result<()> {
    let (_g, lab) = example_lab()?;
    let agent = start(&lab, &AgentOptions::default())?;
    for family in [Family::V4, Family::V6] {
        let (t, p) = (ip(&lab, "test1", family), ip(&lab, "prod1", family));
        tcp_echo(&lab, "prod1", SocketAddr::new(p, 53))?;
        let mut s = open(&lab, "test1", SocketAddr::new(p, 53))?;
        assert!(echoed(&mut s, b"query and answer"), "{family:?}");
        assert!(
            udp_query(&lab, "test1", "prod1", SocketAddr::new(p, 53))?,
            "udp {family:?}"
        );
        // Production still opens nothing towards test: TCP (same port as
        // the tracked flow's, too) and UDP.
        assert!(
            blocked(&lab, "test1", "prod1", SocketAddr::new(t, 8053))?,
            "prod1 -> test1 tcp connected ({family:?})"
        );
        assert!(
            !udp_query(&lab, "prod1", "test1", SocketAddr::new(t, 5353))?,
            "prod1 -> test1 udp answered ({family:?})"
        );
        // Other ports from test to production stay dropped.
        assert!(blocked(&lab, "prod1", "test1", SocketAddr::new(p, 8080))?);
    }
    let replies = agent.packets("production", "test", "reply")?;
    assert!(replies >= 4.0, "replies counted: {replies}");
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn a_reload_without_the_dns_exception_stops_an_established_connection() -> Result<()> {
    let (_g, lab) = example_lab()?;
    let dir = tempfile::tempdir()?;
    let (agent, file) = start_on(&lab, dir.path(), envfence::policy::EXAMPLE_POLICY)?;
    let p = ip(&lab, "prod1", Family::V4);
    tcp_echo(&lab, "prod1", SocketAddr::new(p, 53))?;
    let mut s = open(&lab, "test1", SocketAddr::new(p, 53))?;
    assert!(echoed(&mut s, b"before the reload"));
    const GENERATION: &str = "envfence_policy_generation";
    let before = agent.metric(GENERATION, &[])?;
    let without = envfence::policy::EXAMPLE_POLICY
        .replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"54/udp\"]");
    assert_ne!(without, envfence::policy::EXAMPLE_POLICY);
    std::fs::write(&file, without)?;
    agent.process().signal(nix::sys::signal::Signal::SIGHUP)?;
    assert!(
        agent.wait_metric(GENERATION, &[], Duration::from_secs(10), |g| g > before),
        "the reload did not happen"
    );
    // Neither direction passes any more: the client's data is dropped
    // (no echo), and so would the server's.
    assert!(
        !echoed(&mut s, b"after the reload"),
        "the connection survived the reload"
    );
    agent.stop(Duration::from_secs(10))?;
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
    let (_g, lab) = example_lab()?;
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
    let mut s = open(&lab, "test1", SocketAddr::new(p, 53))?;
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
    agent.kill()?;
    let at_kill = got.load(Ordering::Relaxed);
    // Nothing forbidden passes without an agent.
    assert!(blocked(&lab, "prod1", "test1", SocketAddr::new(p, 8080))?);
    assert!(blocked(&lab, "test1", "prod1", SocketAddr::new(t, 8053))?);
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
    let (_g, lab) = example_lab()?;
    let dir = tempfile::tempdir()?;
    let policy = envfence::policy::EXAMPLE_POLICY.replace(
        "interfaces:\n",
        "  - name: prod-to-ops\n    from: [production]\n    to: [ops]\n    verdict: drop\ninterfaces:\n",
    );
    assert_ne!(policy, envfence::policy::EXAMPLE_POLICY);
    let (agent, _) = start_on(&lab, dir.path(), &policy)?;
    for family in [Family::V4, Family::V6] {
        let (o, p) = (ip(&lab, "ops1", family), ip(&lab, "prod1", family));
        tcp_echo(&lab, "prod1", SocketAddr::new(p, 9100))?;
        let mut s = open(&lab, "ops1", SocketAddr::new(p, 9100))?;
        assert!(echoed(&mut s, b"GET /metrics"), "{family:?}");
        assert!(
            blocked(&lab, "ops1", "prod1", SocketAddr::new(o, 9101))?,
            "prod1 -> ops1 connected ({family:?})"
        );
    }
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}

/// Path MTU discovery across environments: test1 sends a large stream to a
/// production server behind a production router (prod1) whose route to
/// the server has a smaller MTU. The router's "fragmentation needed" /
/// "packet too big" (production -> test, a pair the policy drops) quotes
/// a packet of the tracked test -> production flow and passes as
/// `related`, so the transfer completes. First without the agent (the
/// shape works), then with it, IPv4 and IPv6.
#[test]
fn path_mtu_discovery_works_across_environments() -> Result<()> {
    use envfence_tests::netns;
    let _g = serial();
    let mut lab = Lab::example()?;
    lab.add_host("prodsrv")?;
    let router = "prod1";
    let (r4, r6) = (lab.pod(router)?.ipv4(), lab.pod(router)?.ipv6());
    // The server's subnet behind the router (production addresses, the
    // router at host 1): one address per family for the run without the
    // agent, one for the run with it (a path MTU, once learnt, is kept per
    // destination).
    let behind = |family, host| host_addr("production", family, 201, host);
    let servers: [(IpAddr, IpAddr); 2] = [
        (behind(Family::V4, 2), behind(Family::V4, 3)),
        (behind(Family::V6, 2), behind(Family::V6, 3)),
    ];
    let (gw4, gw6) = (behind(Family::V4, 1), behind(Family::V6, 1));
    let all = [servers[0].0, servers[0].1, servers[1].0, servers[1].1];
    let policy = envfence_tests::expect::Policy::example()?;
    let t4 = ip(&lab, "test1", Family::V4);
    let t6 = ip(&lab, "test1", Family::V6);
    for srv in all {
        let (t, r) = if srv.is_ipv4() {
            (t4, IpAddr::V4(r4))
        } else {
            (t6, IpAddr::V6(r6))
        };
        // The premise: the stream is allowed, the router's ICMP error on
        // its own would be dropped.
        let fwd = policy.decide(t, srv, 6, Some(53));
        assert!(fwd.passes() && fwd.dst_env == "production", "{fwd:?}");
        let icmp = if t.is_ipv4() { 1 } else { 58 };
        let err = policy.decide(r, t, icmp, None);
        assert!(!err.passes() && err.src_env == "production", "{err:?}");
    }
    lab.link(
        router,
        "pmtu0",
        format!("{gw4}/24").parse()?,
        &lab,
        "prodsrv",
        "pmtu1",
        format!("{}/24", servers[0].0).parse()?,
    )?;
    let (rns, sns, node) = (
        lab.ns(router)?.to_owned(),
        lab.ns("prodsrv")?.to_owned(),
        lab.node_ns().to_owned(),
    );
    netns::ip_batch(&rns, &[format!("addr add {gw6}/64 dev pmtu0 nodad")])?;
    // Smaller MTU on the way to the server (both ends of the veth stay at
    // 1500, so the router must say "too big").
    let mtu_routes: Vec<String> = all
        .iter()
        .map(|a| match a {
            IpAddr::V4(a) => format!("route add {a}/32 dev pmtu0 mtu lock 1280"),
            IpAddr::V6(a) => format!("route add {a}/128 dev pmtu0 mtu lock 1280"),
        })
        .collect();
    netns::ip_batch(&rns, &mtu_routes)?;
    netns::ip_batch(
        &sns,
        &[
            format!("addr add {}/24 dev pmtu1", servers[0].1),
            format!("addr add {}/64 dev pmtu1 nodad", servers[1].0),
            format!("addr add {}/64 dev pmtu1 nodad", servers[1].1),
            format!("route add default via {gw4}"),
            format!("route add default via {gw6}"),
        ],
    )?;
    lab.in_ns(router, || -> Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        Ok(())
    })??;
    netns::ip_batch(
        &node,
        &[
            format!("route add {}/24 via {r4}", behind(Family::V4, 0)),
            format!("route add {}/64 via {r6}", behind(Family::V6, 0)),
        ],
    )?;
    // A server that counts what it receives and answers with the count.
    for srv in all {
        let l = lab
            .in_ns("prodsrv", || TcpListener::bind(SocketAddr::new(srv, 53)))?
            .with_context(|| format!("binding {srv}:53"))?;
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let mut total: u64 = 0;
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = c.write_all(&total.to_be_bytes());
                });
            }
        });
    }
    const STREAM: usize = 2 * 1024 * 1024;
    let transfer = |srv: IpAddr| -> Result<Option<u64>> {
        let Some(mut s) = connect(
            &lab,
            "test1",
            SocketAddr::new(srv, 53),
            Duration::from_secs(5),
        )?
        else {
            return Ok(None);
        };
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut sent = 0;
        while sent < STREAM {
            if s.write_all(&chunk).is_err() {
                return Ok(None);
            }
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut n = [0u8; 8];
        Ok(s.read_exact(&mut n).ok().map(|()| u64::from_be_bytes(n)))
    };
    for (srv, _) in servers {
        assert_eq!(
            transfer(srv)?,
            Some(STREAM as u64),
            "without the agent, to {srv}"
        );
    }
    let agent = start(&lab, &AgentOptions::default())?;
    for (_, srv) in servers {
        assert_eq!(
            transfer(srv)?,
            Some(STREAM as u64),
            "with the agent, to {srv}"
        );
    }
    let related = agent.packets("production", "test", "related")?;
    assert!(
        related >= 2.0,
        "the router's too-big errors were not judged related: {related}"
    );
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}
