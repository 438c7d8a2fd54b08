//! `envfence-fuzz`: the differential engine of `tests/tests/differential.rs`
//! for as many cases as asked. Generated frames go through the real eBPF
//! programs (BPF_PROG_TEST_RUN) under the example policy in enforce and in
//! audit mode, through the independent oracle (`envfence_tests::oracle`)
//! and through the reference classifier; every disagreement (which of the
//! three differ) is printed (hex and decoded header stack) and saved as a
//! regression case in `tests/corpus/regressions/`, which the test suite
//! replays on every run.
//! Then the route lab's run (`tests/tests/differential_routes.rs`'s engine:
//! the source check against a node's real routes) for `--route-cases`.
//!
//! Run it with `cargo xtask fuzz --cases N [--seed S]` (needs root). Exits 1
//! when a mismatch was found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use envfence_tests::gen::diff::{self, Engine, Options};
use envfence_tests::gen::routes::{run_on_routes, RouteLab, SOURCE_CLASSES};
use envfence_tests::oracle::describe::describe;

#[derive(Parser)]
#[command(
    name = "envfence-fuzz",
    about = "kernel datapath vs independent oracle and reference classifier on generated frames"
)]
struct Args {
    /// Cases to compare (frames BPF_PROG_TEST_RUN refuses do not count).
    #[arg(long, default_value_t = 1_000_000)]
    cases: u64,
    /// Seed (decimal or 0x-hex); the same seed generates the same frames.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Cases run afterwards on the route lab (tests/src/gen/routes.rs):
    /// frames entering interfaces with different source checks and routes
    /// (default: a quarter of --cases).
    #[arg(long)]
    route_cases: Option<u64>,
    /// Run the egress program too for one case in this many.
    #[arg(long, default_value_t = 8)]
    egress_every: u64,
    /// Where to save mismatches (default: tests/corpus/regressions).
    #[arg(long)]
    save_dir: Option<PathBuf>,
    /// Do not save mismatches.
    #[arg(long)]
    no_save: bool,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
    /// Conversations of the connection-tracking differential (stateful
    /// kernel vs `ctmodel`) run after the frames (default: cases / 2).
    #[arg(long)]
    conversations: Option<u64>,
    /// Only print this many generated frames (decoded, with the reference's
    /// outcome under the enforce policy) and exit; no kernel needed.
    #[arg(long)]
    show: Option<usize>,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad seed {s:?}: {e}"))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("envfence-fuzz: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if let Some(n) = args.show {
        let policy = diff::example_policy(envfence::policy::Mode::Enforce)?;
        let mut gen = envfence_tests::gen::Gen::new(args.seed.unwrap_or(diff::DEFAULT_SEED));
        for i in 0..n {
            let case = gen.case();
            let skb = envfence::policy::reference::Skb {
                gso_size: case.gso_size,
            };
            let outcome =
                envfence_tests::oracle::Oracle::of(&policy)?.classify_skb(&case.frame, skb);
            let reference = envfence::policy::reference::classify_skb(&case.frame, skb, &policy);
            println!("#{i} {} case: {outcome:?}", case.kind.name());
            if reference != outcome {
                println!("  the reference differs: {reference:?}");
            }
            let gso = case.gso_size != 0;
            print!("{}", describe(&case.frame, gso));
        }
        return Ok(true);
    }
    envfence_tests::lab::require_root()?;
    let seed = args.seed.unwrap_or_else(|| {
        // A fresh seed per run unless one is given: a long run should
        // explore, and the seed is printed to reproduce it.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(diff::DEFAULT_SEED)
    });
    let engine = Engine::new().context("loading the datapath")?;
    let mut opts = Options::new(args.cases, seed);
    opts.egress_every = args.egress_every;
    opts.save_dir = if args.no_save {
        None
    } else {
        Some(args.save_dir.unwrap_or_else(diff::regressions_dir))
    };
    opts.progress = (args.progress_secs > 0).then(|| Duration::from_secs(args.progress_secs));
    eprintln!(
        "envfence-fuzz: {} cases, seed {seed:#x} (reproduce with --seed {seed:#x}), egress for 1 in {}",
        args.cases, opts.egress_every
    );
    let report = diff::run_differential(&engine, &opts)?;
    for m in &report.mismatches {
        println!("{}", m.report(diff::policy_of(&engine, m.mode)));
    }
    for p in &report.saved {
        println!("saved {}", p.display());
    }
    print!("{}", report.summary());
    println!(
        "cases {} | cases/s {:.0} | skipped {} | mismatches {}",
        report.cases,
        report.cases_per_sec(),
        report.skipped,
        report.mismatched_cases
    );
    let missing = report.missing(diff::ALL_CLASSES);
    if !missing.is_empty() {
        println!("outcome classes not hit: {}", missing.join(", "));
    }
    let conversations = args.conversations.unwrap_or(args.cases / 2);
    let mut ct_ok = true;
    if conversations > 0 {
        let mut h = envfence_tests::testrun::KernelHarness::stateful(
            envfence_tests::ctdiff::first_policy()?,
        )
        .context("loading the datapath with tracking on")?;
        let started = std::time::Instant::now();
        let r = envfence_tests::ctdiff::run(&mut h, conversations, seed)?;
        for m in &r.mismatches {
            println!("{m}");
        }
        println!(
            "conversations {} | packets {} | replies {} | related {} | reloads {} | aged {} | {:.1} s | mismatched packets {} | other mismatches {}",
            r.conversations,
            r.packets,
            r.replies,
            r.related,
            r.reloads,
            r.aged,
            started.elapsed().as_secs_f64(),
            r.mismatched_packets,
            r.mismatches.len()
        );
        ct_ok = r.mismatches.is_empty();
    }
    let route_cases = args.route_cases.unwrap_or(args.cases / 4);
    if route_cases == 0 {
        return Ok(report.mismatched_cases == 0 && ct_ok);
    }
    drop(engine);
    let routes = route_run(route_cases, seed, args.egress_every)?;
    Ok(report.mismatched_cases == 0 && ct_ok && routes.mismatched_cases == 0)
}

/// The route lab's run: the source check against a node's routes.
fn route_run(cases: u64, seed: u64, egress_every: u64) -> Result<diff::Report> {
    let lab = RouteLab::new().context("building the route lab")?;
    eprintln!("envfence-fuzz: route lab, {cases} cases, seed {seed:#x}");
    let ns = lab.node_ns.clone();
    let report = envfence_tests::netns::in_netns(&ns, || -> Result<diff::Report> {
        let mut engine = Engine::new().context("loading the datapath")?;
        lab.install(&mut engine)?;
        let mut opts = Options::new(cases, seed);
        opts.egress_every = egress_every;
        let report = run_on_routes(&engine, &lab, &opts)?;
        for m in &report.mismatches {
            println!("{}", m.report(diff::policy_of(&engine, m.mode)));
        }
        Ok(report)
    })??;
    print!("route lab: {}", report.summary());
    println!(
        "route cases {} | cases/s {:.0} | skipped {} | mismatches {}",
        report.cases,
        report.cases_per_sec(),
        report.skipped,
        report.mismatched_cases
    );
    let thin = report.missing(SOURCE_CLASSES);
    if !thin.is_empty() {
        println!("source-check results not hit: {}", thin.join(", "));
    }
    Ok(report)
}
