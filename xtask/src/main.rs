//! `cargo xtask`: setup, build, test, demo and lab for envfence.

mod baseline;
mod bench;
mod fuzz;
mod lab;
mod setup;
mod util;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use util::{cargo, run, Steps};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "envfence's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (Debian packages, nightly
    /// with rust-src, bpf-linker, bpffs). Idempotent and fast when done.
    Setup,
    /// Build the agent (release; its build.rs builds the eBPF programs) and
    /// the demo.
    Build,
    /// What CI runs: setup, fmt, clippy (host and eBPF), the tests, and a
    /// check that no lab namespace was left behind.
    Test {
        /// Stop at the first failing step.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Build in release and run the end-to-end demo in a namespace lab.
    Demo,
    /// Run the benchmark suite as root (TestRun per-packet cost, lab
    /// throughput against nftables/iptables, control plane, event storm,
    /// the source check on vs off);
    /// prints tables and writes docs/benchmarks.md.
    Bench {
        /// Fewer repeats, sizes and rounds: a smoke run of every part.
        #[arg(long)]
        quick: bool,
        /// Run only this part (repeatable).
        #[arg(long, value_parser = ["testrun", "throughput", "control", "storm", "source"])]
        only: Vec<String>,
        /// Also write docs/benchmarks.md for a --quick or --only run.
        #[arg(long)]
        write: bool,
        /// Measure this revision's eBPF object beside this tree's in the
        /// same TestRun rounds (table a6, ratios pair by pair).
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
        /// The shape of the TestRun part's synthetic policies (table a8
        /// gives their classifier memory); a shape other than mixed does
        /// not rewrite docs/benchmarks.md unless --write.
        #[arg(long, value_parser = ["mixed", "kubernetes", "adversarial"])]
        shape: Option<String>,
    },
    /// The kernel-vs-reference differential engine on N generated frames
    /// (release build; needs root). Mismatches land in
    /// tests/corpus/regressions/.
    Fuzz {
        /// Cases to compare.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// Seed (decimal or 0x-hex); a fresh one, printed, by default.
        #[arg(long)]
        seed: Option<String>,
    },
    /// A long-lived lab of the example pods for manual poking.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Create the manual lab (namespaces efl-lab-0-*).
    Up,
    /// Remove the manual lab.
    Down {
        /// Remove every efl-* namespace, also those of running tests.
        #[arg(long)]
        all: bool,
    },
    /// List the lab namespaces.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Cmd::Build => build().map(|()| ExitCode::SUCCESS),
        Cmd::Test { fail_fast } => test(fail_fast),
        Cmd::Demo => demo(),
        Cmd::Bench {
            quick,
            only,
            write,
            baseline,
            shape,
        } => bench::bench(bench::BenchArgs {
            quick,
            only,
            write,
            baseline,
            shape,
        }),
        Cmd::Fuzz { cases, seed } => fuzz::fuzz(cases, seed.as_deref()),
        Cmd::Lab { action } => lab_cmd(action).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<()> {
    run(&mut cargo(["build", "--release", "-p", "envfence"]))?;
    util::build_tests_bin("envfence-demo")
}

type StepFn = Box<dyn FnOnce() -> Result<()>>;

fn test(fail_fast: bool) -> Result<ExitCode> {
    let mut steps = Steps::default();
    if !steps.run("setup", setup::setup) {
        steps.summary("xtask test");
        return Ok(ExitCode::FAILURE);
    }
    let agent_bin = util::target_dir().join("debug").join("envfence");
    let plan: Vec<(&str, StepFn)> = vec![
        (
            "fmt",
            Box::new(|| run(&mut cargo(["fmt", "--all", "--", "--check"]))),
        ),
        (
            "clippy",
            Box::new(|| {
                run(&mut cargo([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ),
        ("clippy-ebpf", Box::new(clippy_ebpf)),
        (
            "build-agent",
            Box::new(|| run(&mut cargo(["build", "-p", "envfence"]))),
        ),
        (
            "test",
            Box::new(move || {
                // The tests use this agent instead of building their own.
                run(cargo(["test", "--workspace"]).env("ENVFENCE_BIN", &agent_bin))
            }),
        ),
        ("sweep", Box::new(sweep_check)),
    ];
    for (name, step) in plan {
        if !steps.run(name, step) && fail_fast {
            break;
        }
    }
    steps.summary("xtask test");
    Ok(if steps.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Clippy on the eBPF crate, for the BPF target, with nightly's build-std.
fn clippy_ebpf() -> Result<()> {
    let mut cmd = cargo([
        "+nightly",
        "clippy",
        "-p",
        "envfence-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    // `cargo xtask` runs under the default toolchain; let `+nightly` choose.
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(&mut cmd)
}

/// Removes lab namespaces whose owner is gone; fails if there were any (a
/// test did not tear its lab down).
fn sweep_check() -> Result<()> {
    let removed = lab::sweep(lab::Which::Dead)?;
    if !removed.is_empty() {
        bail!("lab leftovers found (and removed): {}", removed.join(", "));
    }
    eprintln!("no lab leftovers");
    Ok(())
}

fn demo() -> Result<ExitCode> {
    setup::setup()?;
    build()?;
    let dir = util::target_dir().join("release");
    let mut cmd = std::process::Command::new(dir.join("envfence-demo"));
    cmd.arg("--agent").arg(dir.join("envfence"));
    let status = util::status(&mut cmd)?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!("xtask: the demo was killed ({status})");
            ExitCode::FAILURE
        }
    })
}

fn lab_cmd(action: LabAction) -> Result<()> {
    match action {
        LabAction::Up => {
            util::build_tests_bin("envfence-demo")?;
            let demo = util::target_dir().join("release").join("envfence-demo");
            run(std::process::Command::new(demo).arg("--lab-up"))
        }
        LabAction::Down { all } => {
            let which = if all {
                lab::Which::All
            } else {
                lab::Which::Manual
            };
            let removed = lab::sweep(which)?;
            if removed.is_empty() {
                eprintln!("nothing to remove");
            }
            for r in removed {
                eprintln!("removed {r}");
            }
            Ok(())
        }
        LabAction::List => {
            for ns in lab::namespaces()? {
                println!("{ns}");
            }
            Ok(())
        }
    }
}
