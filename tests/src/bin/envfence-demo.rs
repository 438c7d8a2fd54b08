//! The envfence demo: the example policy enforced in a namespace lab.
//!
//! Builds the example lab, starts the agent in the node namespace with
//! `--example-policy`, sends TCP, UDP and ICMP between the pods (IPv4 for
//! every ordered pair, IPv6 for a few), and prints, per flow, what the policy
//! expects (from the agent's own reference decision), what happened, and the
//! events the agent printed for it. Exits non-zero on any mismatch or if the
//! agent failed. Run it with `cargo xtask demo` (as root).
//!
//! `--lab-up` only builds the long-lived manual lab (`cargo xtask lab up`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use envfence_tests::agent::{proto, Agent, AgentOptions, FlowEvent};
use envfence_tests::expect::{Expected, FlowExpectation, Policy, Probe};
use envfence_tests::lab::{
    require_root, sweep_leftovers, wait_until, Family, Lab, PodSpec, TcpListenHandle, UdpReceiver,
};
use envfence_tests::prom;

#[derive(Parser)]
#[command(
    name = "envfence-demo",
    about = "envfence's example policy, end to end, in a namespace lab"
)]
struct Args {
    /// The agent binary (target/release/envfence).
    #[arg(long, required_unless_present = "lab_up")]
    agent: Option<PathBuf>,
    /// How long a probe of a flow expected to be blocked waits.
    #[arg(long, default_value_t = 1000)]
    blocked_timeout_ms: u64,
    /// The agent's --report-interval-ms.
    #[arg(long, default_value_t = 1000)]
    report_interval_ms: u64,
    /// Build the manual lab (efl-lab-0-*), leave it up, and exit.
    #[arg(long)]
    lab_up: bool,
}

const DEMO_PODS: [&str; 6] = ["prod1", "prod2", "staging1", "test1", "dev1", "ops1"];
const V6_PAIRS: [(&str, &str); 5] = [
    ("test1", "prod1"),
    ("prod1", "test1"),
    ("prod1", "prod2"),
    ("prod2", "prod1"),
    ("staging1", "prod1"),
];
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
const DNS_PORT: u16 = 53;
const UDP_COUNT: usize = 3;
const PASS_TIMEOUT: Duration = Duration::from_secs(3);
const PARALLEL: usize = 24;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.lab_up { lab_up() } else { demo(&args) };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("envfence-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn lab_up() -> Result<bool> {
    require_root()?;
    let lab = Lab::new_persistent(&PodSpec::example_pods())?;
    println!("manual lab {} is up:", lab.id());
    println!("  node  {}", lab.node_ns());
    for pod in lab.pods() {
        println!(
            "  {:<9} {:<22} {:<14} {:<16} {}",
            pod.name,
            lab.ns(&pod.name)?,
            pod.node_if(),
            pod.ipv4(),
            pod.ipv6()
        );
    }
    println!(
        "\nrun the agent:  ip netns exec {} target/release/envfence agent --example-policy",
        lab.node_ns()
    );
    println!(
        "poke:           ip netns exec {}-test1 ping -c1 10.10.1.2",
        lab.id()
    );
    println!("tear down:      cargo xtask lab down");
    Ok(true)
}

/// One probe of the demo.
#[derive(Clone)]
struct Check {
    src: String,
    dst: String,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    probe: Probe,
    expect: FlowExpectation,
}

/// What a probe did.
struct Observed {
    passed: bool,
    /// TCP/UDP client port.
    client_port: Option<u16>,
    note: String,
}

fn demo(args: &Args) -> Result<bool> {
    require_root()?;
    let started = Instant::now();
    let agent_bin = args.agent.clone().context("--agent is required")?;
    if !agent_bin.is_file() {
        bail!("no agent binary at {}", agent_bin.display());
    }
    let swept = sweep_leftovers()?;
    if !swept.is_empty() {
        println!("swept leftovers of earlier runs: {}", swept.join(", "));
    }
    let policy = Policy::example()?;
    let lab = Lab::example()?;
    println!(
        "lab {}: node namespace {} with {} pods",
        lab.id(),
        lab.node_ns(),
        lab.pods().count()
    );
    let opts = AgentOptions {
        report_interval_ms: args.report_interval_ms,
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(&lab, &agent_bin, &opts)?;
    println!(
        "agent {} running in the node namespace (pid {}), ready after {:.1}s",
        agent_bin.display(),
        agent.process().pid(),
        started.elapsed().as_secs_f64()
    );

    let checks = plan(&lab, &policy)?;
    let (_listeners, receivers) = servers(&lab)?;
    let blocked_timeout = Duration::from_millis(args.blocked_timeout_ms);
    let probe_start = Instant::now();
    let mut observed: Vec<Observed> = Vec::new();
    for wave in checks.chunks(PARALLEL) {
        std::thread::scope(|s| {
            let handles: Vec<_> = wave
                .iter()
                .map(|c| s.spawn(|| run_check(&lab, &receivers, c, blocked_timeout)))
                .collect();
            for h in handles {
                let note = match h.join() {
                    Ok(Ok(o)) => {
                        observed.push(o);
                        continue;
                    }
                    Ok(Err(e)) => format!("probe error: {e:#}"),
                    Err(_) => "probe panicked".into(),
                };
                let (passed, client_port) = (false, None);
                observed.push(Observed {
                    passed,
                    client_port,
                    note,
                });
            }
        });
    }
    // The reply of a TCP probe goes to the client's real (ephemeral) port.
    let checks: Vec<Check> = checks
        .into_iter()
        .zip(&observed)
        .map(|(mut c, o)| {
            if matches!(c.probe, Probe::Tcp(_)) {
                c.expect = policy.expect(c.src_ip, c.dst_ip, c.probe, o.client_port);
            }
            c
        })
        .collect();
    println!(
        "{} probes in {:.1}s",
        checks.len(),
        probe_start.elapsed().as_secs_f64()
    );

    // Expected events arrive within a report interval or so.
    let want_events = |events: &[FlowEvent]| {
        checks.iter().zip(&observed).all(|(c, o)| {
            let (fwd, rep) = matching_events(c, o, events);
            (!c.expect.forward.reported() || !fwd.is_empty())
                && (!reply_reported(c) || !rep.is_empty())
        })
    };
    let settle = Duration::from_millis(args.report_interval_ms * 2 + 2000);
    wait_until(settle, || want_events(&agent.events()));
    std::thread::sleep(Duration::from_millis(300));
    let events = agent.events();

    let checked = checks.iter().zip(&observed);
    let mut rows: Vec<Row> = checked.map(|(c, o)| row(c, o, &events)).collect();
    rows.extend(spoof_rows(&lab, &agent)?);
    let mismatches = rows.iter().filter(|r| !r.ok).count();
    print_table(&rows);

    let metrics = agent.metrics();
    println!("\nmetrics (envfence_packets_total, non-zero series):");
    match &metrics {
        Ok(text) => {
            let mut samples: Vec<prom::Sample> = prom::parse(text)
                .into_iter()
                .filter(|s| s.name == "envfence_packets_total")
                .collect();
            let zero = samples.iter().filter(|s| s.value == 0.0).count();
            samples.retain(|s| s.value != 0.0);
            for s in &samples {
                println!(
                    "  envfence_packets_total{{src_env=\"{}\",dst_env=\"{}\",verdict=\"{}\"}} {}",
                    s.label("src_env").unwrap_or("?"),
                    s.label("dst_env").unwrap_or("?"),
                    s.label("verdict").unwrap_or("?"),
                    s.value
                );
            }
            if samples.is_empty() {
                println!("  (none)");
            }
            if zero > 0 {
                println!("  ({zero} zero series not shown)");
            }
        }
        Err(e) => println!("  /metrics failed: {e:#}"),
    }

    // None: the agent exited during the demo.
    let stopped = (agent.process().is_running()).then(|| agent.stop(Duration::from_secs(10)));
    let exited = match &stopped {
        None => Some("during the demo".to_string()),
        Some(Ok(status)) if !status.success() => Some(format!("with {status} on SIGTERM")),
        Some(_) => None,
    };
    if let Some(how) = &exited {
        let tail = agent.process().stderr_tail(30);
        println!("\nthe agent exited {how}; its stderr:\n{tail}");
    }
    if let Some(Err(e)) = &stopped {
        println!("\n{e:#}");
    }
    let agent_ok = metrics.is_ok() && matches!(&stopped, Some(Ok(s)) if s.success());
    drop(receivers);
    drop(lab);
    println!(
        "\n{} flows, {} OK, {} MISMATCH; agent {}; {:.1}s",
        rows.len(),
        rows.len() - mismatches,
        mismatches,
        if agent_ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(mismatches == 0 && agent_ok)
}

fn plan(lab: &Lab, policy: &Policy) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut add = |src: &str, dst: &str, family: Family, probe: Probe| -> Result<()> {
        let src_ip = lab.pod(src)?.ip(family);
        let dst_ip = lab.pod(dst)?.ip(family);
        checks.push(Check {
            src: src.into(),
            dst: dst.into(),
            src_ip,
            dst_ip,
            probe,
            expect: policy.expect(src_ip, dst_ip, probe, None),
        });
        Ok(())
    };
    let probes = [Probe::Tcp(TCP_PORT), Probe::Udp(UDP_PORT), Probe::Icmp];
    for src in DEMO_PODS {
        for dst in DEMO_PODS {
            if src != dst {
                for p in probes {
                    add(src, dst, Family::V4, p)?;
                }
            }
        }
    }
    for (src, dst) in V6_PAIRS {
        for p in probes {
            add(src, dst, Family::V6, p)?;
        }
    }
    add("test1", "prod1", Family::V4, Probe::Udp(DNS_PORT))?;
    add("test1", "prod1", Family::V4, Probe::Tcp(DNS_PORT))?;
    Ok(checks)
}

type Receivers = Vec<((IpAddr, u16), UdpReceiver)>;

/// TCP listeners and UDP receivers on every demo pod (8080, 9000; prod1
/// also 53), IPv4 and IPv6.
fn servers(lab: &Lab) -> Result<(Vec<TcpListenHandle>, Receivers)> {
    let mut listeners = Vec::new();
    let mut receivers = Vec::new();
    for name in DEMO_PODS {
        let pod = lab.pod(name)?;
        for family in [Family::V4, Family::V6] {
            let ip = pod.ip(family);
            let mut ports = vec![(TCP_PORT, UDP_PORT)];
            if name == "prod1" {
                ports.push((DNS_PORT, DNS_PORT));
            }
            for (tcp, udp) in ports {
                listeners.push(lab.tcp_listen(name, ip, tcp)?);
                receivers.push(((ip, udp), lab.udp_receiver(name, ip, udp)?));
            }
        }
    }
    Ok((listeners, receivers))
}

fn run_check(
    lab: &Lab,
    receivers: &Receivers,
    c: &Check,
    blocked_timeout: Duration,
) -> Result<Observed> {
    let timeout = if c.expect.passes() {
        PASS_TIMEOUT
    } else {
        blocked_timeout
    };
    match c.probe {
        Probe::Tcp(port) => {
            let p = lab.tcp_probe(&c.src, c.dst_ip, port, timeout)?;
            Ok(Observed {
                passed: p.connected,
                client_port: Some(p.local_port),
                note: match (&p.error, p.connected) {
                    (Some(e), false) if !e.contains("timed out") => e.clone(),
                    _ => String::new(),
                },
            })
        }
        Probe::Udp(port) => {
            let rx = receivers
                .iter()
                .find(|(k, _)| *k == (c.dst_ip, port))
                .map(|(_, r)| r)
                .context("no UDP receiver for the destination")?;
            let payload = format!("envfence demo {} -> {}", c.src, c.dst);
            let sport = lab.udp_send(&c.src, c.dst_ip, port, payload.as_bytes(), UDP_COUNT)?;
            let from = SocketAddr::new(c.src_ip, sport);
            wait_until(timeout, || rx.count_from_addr(from) >= UDP_COUNT as u64);
            let got = rx.count_from_addr(from);
            Ok(Observed {
                passed: got == UDP_COUNT as u64,
                client_port: Some(sport),
                note: if got > 0 && got < UDP_COUNT as u64 {
                    format!("only {got}/{UDP_COUNT} datagrams delivered")
                } else {
                    String::new()
                },
            })
        }
        Probe::Icmp => Ok(Observed {
            passed: lab.ping(&c.src, c.dst_ip, timeout)?,
            client_port: None,
            note: String::new(),
        }),
    }
}

fn reply_reported(c: &Check) -> bool {
    c.expect.reply_sent() && c.expect.reply.as_ref().is_some_and(Expected::reported)
}

/// Events of the probe's forward packets, and of its replies.
fn matching_events<'e>(
    c: &Check,
    o: &Observed,
    events: &'e [FlowEvent],
) -> (Vec<&'e FlowEvent>, Vec<&'e FlowEvent>) {
    let p = c.probe.proto(c.src_ip);
    let is_icmp = p == proto::ICMP || p == proto::ICMPV6;
    // Echo request and reply types.
    let (request, reply) = if c.src_ip.is_ipv4() {
        (8, 0)
    } else {
        (128, 129)
    };
    // Events from `src` to `dst` whose ports are (server port, client
    // port) in that order, or of ICMP type `ty`.
    let matching = |src,
                    dst,
                    ty: u8,
                    server: fn(&FlowEvent) -> Option<u16>,
                    client: fn(&FlowEvent) -> Option<u16>| {
        let select = move |e: &&FlowEvent| {
            let ports = if is_icmp {
                e.icmp_type.is_none_or(|t| t == ty)
            } else {
                server(e) == c.probe.port()
                    && (o.client_port.is_none() || client(e) == o.client_port)
            };
            e.src == src && e.dst == dst && e.proto == p && ports
        };
        events.iter().filter(select).collect::<Vec<_>>()
    };
    (
        matching(c.src_ip, c.dst_ip, request, |e| e.dport, |e| e.sport),
        matching(c.dst_ip, c.src_ip, reply, |e| e.sport, |e| e.dport),
    )
}

struct Row {
    flow: String,
    envs: String,
    expected: String,
    observed: String,
    events: String,
    ok: bool,
    note: String,
}

fn describe(e: &Expected) -> String {
    format!("{} ({})", e.verdict_name(), e.rule)
}

fn row(c: &Check, o: &Observed, events: &[FlowEvent]) -> Row {
    let expect = &c.expect;
    let pass_word = |p: bool| if p { "pass" } else { "blocked" };
    let mut expected = describe(&expect.forward);
    if let Some(r) = &expect.reply {
        if r.verdict != 0 {
            expected.push_str(&format!(", reply {}", describe(r)));
        }
    }
    expected.push_str(&format!(" => {}", pass_word(expect.passes())));

    let (fwd, rep) = matching_events(c, o, events);
    let mut notes = Vec::new();
    if !o.note.is_empty() {
        notes.push(o.note.clone());
    }
    let mut ok = o.passed == expect.passes();
    let fwd_want = expect.forward.reported();
    let rep_want = reply_reported(c);
    for (what, evs, want) in [("forward", &fwd, fwd_want), ("reply", &rep, rep_want)] {
        if want == evs.is_empty() {
            ok = false;
            let want = if want { ">=1" } else { "0" };
            notes.push(format!("{} {what} events, expected {want}", evs.len()));
        }
    }
    let check_fields =
        |evs: &[&FlowEvent], want: &Expected, what: &str, notes: &mut Vec<String>| {
            let mut good = true;
            for e in evs {
                if e.verdict != want.verdict_name()
                    || e.rule != want.rule
                    || e.src_env != want.src_env
                    || e.dst_env != want.dst_env
                {
                    good = false;
                    notes.push(format!(
                        "{what} event says {} -> {} {} ({}), policy says {} -> {} {} ({})",
                        e.src_env,
                        e.dst_env,
                        e.verdict,
                        e.rule,
                        want.src_env,
                        want.dst_env,
                        want.verdict_name(),
                        want.rule
                    ));
                }
            }
            good
        };
    ok &= check_fields(&fwd, &expect.forward, "forward", &mut notes);
    if let Some(r) = &expect.reply {
        ok &= check_fields(&rep, r, "reply", &mut notes);
    }
    let want = usize::from(fwd_want) + usize::from(rep_want);
    let events_col = format!(
        "{} (want {})",
        fwd.len() + rep.len(),
        if want == 0 {
            "0".to_string()
        } else {
            format!(">={want}")
        }
    );
    Row {
        flow: format!(
            "{} {} -> {} {} {}",
            c.src,
            c.src_ip,
            c.dst,
            c.dst_ip,
            c.probe.label()
        ),
        envs: format!("{} -> {}", expect.forward.src_env, expect.forward.dst_env),
        expected,
        observed: pass_word(o.passed).to_string(),
        events: events_col,
        ok,
        note: notes.join("; "),
    }
}

fn print_table(rows: &[Row]) {
    let head = [
        "FLOW",
        "ENVS",
        "EXPECTED (policy)",
        "OBSERVED",
        "EVENTS",
        "RESULT",
    ];
    let cells = |r: &Row| {
        let result = if r.ok { "OK" } else { "MISMATCH" };
        [
            &r.flow,
            &r.envs,
            &r.expected,
            &r.observed,
            &r.events,
            result,
        ]
        .map(str::to_owned)
    };
    let lines: Vec<[String; 6]> = std::iter::once(head.map(str::to_owned))
        .chain(rows.iter().map(cells))
        .collect();
    let mut widths = [0; 6];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.len());
        }
    }
    println!();
    for (i, l) in lines.iter().enumerate() {
        let s: String = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}  "))
            .collect();
        println!("{}", s.trim_end());
        match i.checked_sub(1).map(|k| &rows[k]) {
            Some(r) if !r.note.is_empty() => println!("    ^ {}", r.note),
            _ => {}
        }
    }
}

/// A test pod that writes a production address it does not own into its
/// packets' source: the source check refuses it (verdict `spoofed`, counted
/// under `world`), whatever the policy says of production -> production.
fn spoof_rows(lab: &Lab, agent: &Agent) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for family in [Family::V4, Family::V6] {
        let prod = envfence_tests::fixture::env_net("production", family);
        let src = envfence_tests::spoof::unowned(&prod);
        let dst = lab.pod("prod1")?.ip(family);
        let arrivals = lab.count_arrivals("prod1", &[src])?;
        lab.spoof_udp("test1", src, SocketAddr::new(dst, 7001), 3)?;
        let reported = wait_until(Duration::from_secs(3), || {
            agent
                .events()
                .iter()
                .any(|e| e.src == src && e.verdict == "spoofed")
        });
        let arrived = arrivals.from(src)?;
        let ok = arrived == 0 && reported;
        rows.push(Row {
            flow: format!("test1 claiming {src} -> prod1 {dst} udp/7001"),
            envs: "world -> production".into(),
            expected: "spoofed (source-check) => blocked".into(),
            observed: if arrived == 0 { "blocked" } else { "pass" }.into(),
            events: format!("{} (want >=1)", u8::from(reported)),
            ok,
            note: if ok {
                String::new()
            } else {
                format!("{arrived} of 3 arrived, reported: {reported}")
            },
        });
    }
    Ok(rows)
}
