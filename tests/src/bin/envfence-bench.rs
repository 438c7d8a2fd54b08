//! envfence's benchmark suite (`cargo xtask bench` builds and runs it as
//! root): per-packet cost by TestRun, lab throughput against nftables and
//! iptables, control-plane load/reload, event storm. Prints every table and,
//! with `--out`, writes them as Markdown (docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use envfence_tests::bench::synth::Shape;
use envfence_tests::bench::{self, Options, Part};
use envfence_tests::lab::{require_root, sweep_leftovers};

#[derive(Parser)]
#[command(
    name = "envfence-bench",
    about = "envfence's benchmark suite (needs root)"
)]
struct Args {
    /// Fewer repeats, sizes and rounds: a smoke run of every part.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (repeatable).
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// The agent binary (default: $ENVFENCE_BIN, else target/<profile>/envfence, built if needed).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The `storm` integration test executable (default: the newest
    /// target/<profile>/deps/storm-*).
    #[arg(long)]
    storm_test: Option<PathBuf>,
    /// Write the report as Markdown here (e.g. docs/benchmarks.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Another build's eBPF object (same ABI) that part a measures
    /// envfence against, side by side (`cargo xtask bench --baseline REV`
    /// builds one).
    #[arg(long)]
    baseline_object: Option<PathBuf>,
    /// What the tables call the baseline (default: the object's path).
    #[arg(long, requires = "baseline_object")]
    baseline_name: Option<String>,
    /// The shape of part a's synthetic policies: mixed lengths (the
    /// published tables), Kubernetes-sized (hosts and one shorter prefix in
    /// a hundred) or adversarial (nested chains of every prefix length).
    #[arg(long, value_enum, default_value_t = Shape::Mixed)]
    shape: Shape,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envfence-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    require_root()?;
    let removed = sweep_leftovers()?;
    if !removed.is_empty() {
        eprintln!(
            "envfence-bench: removed lab leftovers: {}",
            removed.join(", ")
        );
    }
    let agent = match args.agent {
        Some(a) => a,
        None => envfence_tests::agent::agent_binary()?,
    };
    // Absolute: the agent is spawned from other namespaces.
    let agent = std::fs::canonicalize(&agent)
        .with_context(|| format!("no agent binary at {}", agent.display()))?;
    let storm_test = args
        .storm_test
        .map(|t| {
            std::fs::canonicalize(&t).with_context(|| format!("no storm test at {}", t.display()))
        })
        .transpose()?;
    let baseline = args
        .baseline_object
        .map(|object| {
            let object = std::fs::canonicalize(&object)
                .with_context(|| format!("no baseline object at {}", object.display()))?;
            let name = args
                .baseline_name
                .unwrap_or_else(|| object.display().to_string());
            anyhow::Ok(bench::testrun::Baseline { object, name })
        })
        .transpose()?;
    let parts = if args.only.is_empty() {
        Part::ALL.to_vec()
    } else {
        args.only
    };
    let report = bench::run(&Options {
        quick: args.quick,
        parts,
        agent,
        storm_test,
        baseline,
        shape: args.shape,
    });
    print!("{}", report.summary_text());
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, report.markdown())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("envfence-bench: wrote {}", out.display());
        for f in report.figures() {
            let path = out.with_file_name(&f.file);
            std::fs::write(&path, &f.svg).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("envfence-bench: wrote {}", path.display());
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
