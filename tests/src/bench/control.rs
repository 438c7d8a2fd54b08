//! c. Control plane: how long a policy of N CIDRs takes to load and to
//! reload, whether any packet sees a wrong verdict meanwhile, and the
//! agent's memory.
//!
//! In process (the library the agent uses): `Datapath::load` +
//! `apply_policy` is the load; a second `apply_policy` of another policy
//! of the same size (other random prefixes and environments) is the reload.
//! During the reload a thread runs probe packets (IPv4 and IPv6, one
//! allowed and one dropped flow whose verdict both policies share) through
//! the ingress program with BPF_PROG_TEST_RUN without pause, and counts any
//! wrong verdict.
//!
//! The agent binary: started in a lab with the policy file, the time until
//! it is ready (parse, compile, load, attach, /metrics answering) and its
//! RSS; then the file is replaced by the other policy and SIGHUP sent, the
//! time until /metrics shows the new generation, and its RSS.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use envfence::datapath::Hook;
use envfence::policy;
use nix::sys::signal::Signal;

use super::synth::SynthPolicy;
use super::table::{thousands, Table};
use super::{client_server, load, measured_at, start_agent, Goal, Part, Section};
use crate::fixture::pod_addr;
use crate::lab::{wait_until, Family, Lab};
use crate::packet::{ip_frame, Packet};
use crate::testrun::{self, ACTION_NEXT, ACTION_SHOT};

#[derive(Clone, Debug)]
pub struct Params {
    pub sizes: Vec<usize>,
    pub seed: u64,
}

impl Params {
    pub fn full() -> Params {
        Params {
            sizes: vec![1_000, 10_000, 100_000],
            seed: 11,
        }
    }
    pub fn quick() -> Params {
        Params {
            sizes: vec![1_000, 10_000],
            ..Params::full()
        }
    }
}

/// Probe frames and the action each must get in both policies: staging
/// -> production (allowed) and test -> production (dropped), IPv4 and IPv6.
fn probes() -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let prod = pod_addr("production", family, 1);
        for (env, action) in [("staging", ACTION_NEXT), ("test", ACTION_SHOT)] {
            let tcp = Packet::syn(40000, 8080);
            out.push((ip_frame(pod_addr(env, family, 1), prod, 6, tcp), action));
        }
    }
    out
}

#[derive(Clone, Debug, Default)]
struct Row {
    cidrs: usize,
    parse: Duration,
    load_programs: Duration,
    load_policy: Duration,
    reload: Duration,
    probes: u64,
    wrong: u64,
    agent_ready: Option<Duration>,
    agent_rss_kib: Option<u64>,
    agent_reload: Option<Duration>,
    agent_rss_reload_kib: Option<u64>,
    agent_error: Option<String>,
}

fn in_process(row: &mut Row, a: &SynthPolicy, b: &SynthPolicy) -> Result<()> {
    let t = Instant::now();
    let mut dp = load(false, false)?;
    row.load_programs = t.elapsed();
    let interval = Duration::from_secs(1);
    let t = Instant::now();
    dp.apply_policy(&a.compiled, None, interval)?;
    row.load_policy = t.elapsed();
    let probes = probes();
    // A handle of the prober's own: the main thread holds the datapath
    // mutably for the reload.
    let prog = testrun::handle(dp.program(Hook::Ingress)?)?;
    let action = |f: &[u8]| testrun::test_run(&prog, f, None, 1).map(|r| r.action);
    for (f, want) in &probes {
        let got = action(f)?;
        if got != *want {
            bail!("probe before the reload: action {got:#x}, expected {want:#x}");
        }
    }
    let stop = AtomicBool::new(false);
    let (runs, wrong) = (AtomicU64::new(0), AtomicU64::new(0));
    let reload = std::thread::scope(|s| -> Result<Duration> {
        let prober = s.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                for (f, want) in &probes {
                    let got = action(f)?;
                    runs.fetch_add(1, Ordering::Relaxed);
                    if got != *want {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        });
        // Let the prober get going.
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        let result = dp.apply_policy(&b.compiled, Some(&a.compiled), interval);
        let took = t.elapsed();
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        prober
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
            .context("probe TestRun")?;
        result?;
        Ok(took)
    })?;
    row.reload = reload;
    row.probes = runs.load(Ordering::Relaxed);
    row.wrong = wrong.load(Ordering::Relaxed);
    Ok(())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

fn with_agent(
    row: &mut Row,
    lab: &Lab,
    agent_bin: &Path,
    dir: &Path,
    a: &SynthPolicy,
    b: &SynthPolicy,
) -> Result<()> {
    let path = dir.join(format!("policy-{}.yaml", a.cidrs));
    std::fs::write(&path, &a.yaml)?;
    let state = dir.join(format!("state-{}", a.cidrs));
    let t = Instant::now();
    let agent = start_agent(lab, agent_bin, &path, &state, Duration::from_secs(300))?;
    row.agent_ready = Some(t.elapsed());
    let pid = agent.process().pid();
    row.agent_rss_kib = status_kib(pid, "VmRSS");
    let generation = agent.metric("envfence_policy_generation", &[])?;
    // Replace the file atomically, then SIGHUP.
    let tmp = dir.join("next.yaml");
    std::fs::write(&tmp, &b.yaml)?;
    std::fs::rename(&tmp, &path)?;
    let t = Instant::now();
    agent.process().signal(Signal::SIGHUP)?;
    let reloaded = wait_until(Duration::from_secs(300), || {
        agent
            .metric("envfence_policy_generation", &[])
            .is_ok_and(|g| g > generation)
            || !agent.process().is_running()
    });
    let took = t.elapsed();
    if !reloaded || !agent.process().is_running() {
        bail!(
            "the agent did not reload within 300 s; its stderr:\n{}",
            agent.process().stderr_tail(20)
        );
    }
    row.agent_reload = Some(took);
    // Let the old policy's memory go back before reading RSS.
    std::thread::sleep(Duration::from_millis(200));
    row.agent_rss_reload_kib = status_kib(pid, "VmRSS");
    agent.stop(Duration::from_secs(30))?;
    Ok(())
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", thousands(ms))
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

pub fn section(p: &Params, agent_bin: &Path, log: &mut dyn FnMut(&str)) -> Result<Section> {
    crate::lab::require_root()?;
    let dir = tempfile::tempdir()?;
    let lab = Lab::new(&client_server())?;
    let mut rows = Vec::new();
    for &n in &p.sizes {
        let a = SynthPolicy::generate(n, p.seed)?;
        let b = SynthPolicy::generate(n, p.seed + 1)?;
        let t = Instant::now();
        let parsed = policy::parse(&a.yaml, "<bench>")
            .map_err(|e| anyhow::anyhow!("the synthetic policy does not validate: {e}"))?;
        let compiled = policy::compile(&parsed);
        let parse = t.elapsed();
        if compiled != a.compiled {
            bail!("compiling the policy twice gave two results");
        }
        let mut row = Row {
            cidrs: n,
            parse,
            ..Row::default()
        };
        in_process(&mut row, &a, &b)?;
        if let Err(e) = with_agent(&mut row, &lab, agent_bin, dir.path(), &a, &b) {
            row.agent_error = Some(format!("{e:#}"));
        }
        log(&format!(
            "control: {:>7} CIDRs  load {} + {}  reload {} ({} probes, {} wrong)  agent ready {}  RSS {}  reload {}  RSS {}{}",
            thousands(n as f64),
            ms(row.load_programs),
            ms(row.load_policy),
            ms(row.reload),
            row.probes,
            row.wrong,
            row.agent_ready.map_or("—".into(), ms),
            mib(row.agent_rss_kib),
            row.agent_reload.map_or("—".into(), ms),
            mib(row.agent_rss_reload_kib),
            row.agent_error.as_deref().map_or(String::new(), |e| format!("  agent error: {e}")),
        ));
        rows.push(row);
    }
    drop(lab);

    let mut lib = Table::new(
        "c1. Load and reload in process (the agent's datapath library)",
        "CIDRs per family | prefixes | parse + compile | load programs | load policy | reload policy | probe packets during reload | wrong verdicts",
    );
    let mut agent = Table::new(
        "c2. The agent binary (in a lab, attached to 2 veths)",
        "CIDRs per family | start → ready | RSS after load | reload: SIGHUP → new generation | RSS after reload",
    );
    for r in &rows {
        lib.row(vec![
            thousands(r.cidrs as f64),
            thousands((2 * r.cidrs) as f64),
            ms(r.parse),
            ms(r.load_programs),
            ms(r.load_policy),
            ms(r.reload),
            thousands(r.probes as f64),
            r.wrong.to_string(),
        ]);
        agent.row(vec![
            thousands(r.cidrs as f64),
            r.agent_ready.map_or("—".into(), ms),
            mib(r.agent_rss_kib),
            r.agent_reload.map_or("—".into(), ms),
            mib(r.agent_rss_reload_kib),
        ]);
        if let Some(e) = &r.agent_error {
            agent.note(format!("{} CIDRs: {e}", thousands(r.cidrs as f64)));
        }
    }
    lib.note("parse + compile: the YAML text (validated, every error collected) to map entries. Load programs: `Datapath::load` (the eBPF object, verifier included). Load policy / reload policy: `Datapath::apply_policy` into the inactive slot, then the flip. The reload installs another policy of the same size (other random prefixes and environments).");
    lib.note("Probe packets: IPv4 and IPv6, one allowed and one dropped flow whose verdict both policies share, run through the ingress program by a second thread without pause during the reload (it keeps one core busy, which slows the reload); a wrong verdict is any other TC action.");
    agent.note("start → ready: from spawning the agent until it printed `envfence ready` and /metrics answered (parse, compile, load, attach). Reload: the policy file replaced, SIGHUP, until /metrics shows the next generation (parse, compile, install; polled every ~10 ms).");
    let mut s = Section::new(Part::Control);
    s.tables = vec![lib, agent];
    if let Some(r) = rows.iter().max_by_key(|r| r.cidrs) {
        let at = measured_at(r.cidrs);
        let load = r.load_programs + r.load_policy;
        s.goals.push(Goal::new(
            format!("a 100,000-CIDR policy loads in under 1 s{at} (programs + policy)"),
            ms(load),
            load < Duration::from_secs(1),
        ));
        s.goals.push(Goal::new(
            format!("a 100,000-CIDR policy reloads in under 1 s{at} (apply_policy)"),
            ms(r.reload),
            r.reload < Duration::from_secs(1),
        ));
        s.goals.push(Goal::new(
            format!("no wrong verdict during the reload{at}"),
            format!(
                "{} of {} probe packets",
                r.wrong,
                thousands(r.probes as f64)
            ),
            r.wrong == 0 && r.probes > 0,
        ));
        if let Some(d) = r.agent_reload {
            s.goals.push(Goal::new(
                format!("the agent reloads a 100,000-CIDR policy file in under 1 s{at} (parse, compile, install)"),
                ms(d),
                d < Duration::from_secs(1),
            ));
        }
    }
    Ok(s)
}
