//! `cargo xtask bench`: envfence's benchmark suite.
//!
//! - a. per-packet cost by `BPF_PROG_TEST_RUN` against an empty program
//!   ([`testrun`]);
//! - b. throughput across the lab's veth path with no filter, envfence,
//!   nftables and iptables ([`throughput`]);
//! - c. control plane: load and reload times, memory ([`control`]);
//! - d. event storm ([`storm`], the `storm` integration test's figures);
//! - e. the source check per packet, on vs off ([`source`]).
//!
//! Every table is printed to stdout; [`Report::markdown`] is what
//! docs/benchmarks.md holds. Everything that touches the network runs in
//! lab namespaces and is torn down on every path.

pub mod conntrack;
pub mod control;
pub mod machine;
pub mod plot;
pub mod source;
pub mod storm;
pub mod synth;
pub mod table;
pub mod testrun;
pub mod throughput;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envfence::datapath::{Datapath, LoadOptions};
use envfence::policy::SourceCheck;
use table::{pass, Table};

use crate::agent::{Agent, AgentOptions};
use crate::lab::{Lab, PodSpec};

/// One goal of the issue and how the run fared.
#[derive(Clone, Debug)]
pub struct Goal {
    pub goal: String,
    pub figure: String,
    pub met: bool,
}

impl Goal {
    pub fn new(goal: impl Into<String>, figure: impl Into<String>, met: bool) -> Goal {
        Goal {
            goal: goal.into(),
            figure: figure.into(),
            met,
        }
    }
}

/// One part of the report.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub heading: String,
    pub intro: Vec<String>,
    pub tables: Vec<Table>,
    pub goals: Vec<Goal>,
    /// Charts, shown after the tables and written beside the Markdown.
    pub figures: Vec<plot::Figure>,
    /// Verbatim lines (e.g. another program's output).
    pub verbatim: Vec<String>,
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Section {
    pub fn new(part: Part) -> Section {
        Section {
            heading: part.heading().into(),
            ..Section::default()
        }
    }

    fn goals_table(&self) -> Option<Table> {
        goals_table(format!("Goals ({})", self.heading), &self.goals)
    }

    /// The section as terminal text.
    pub fn to_text(&self) -> String {
        let mut out = format!("\n=== {} ===\n", self.heading);
        if let Some(e) = &self.error {
            out.push_str(&format!("FAILED: {e}\n"));
        }
        for t in &self.tables {
            out.push('\n');
            out.push_str(&t.to_text());
        }
        if !self.verbatim.is_empty() {
            out.push('\n');
            for l in &self.verbatim {
                out.push_str(&format!("  | {l}\n"));
            }
        }
        if let Some(g) = self.goals_table() {
            out.push('\n');
            out.push_str(&g.to_text());
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!("## {}\n\n", self.heading);
        for p in &self.intro {
            out.push_str(p);
            out.push_str("\n\n");
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("**This part failed:** `{e}`\n\n"));
        }
        for t in &self.tables {
            out.push_str(&t.to_markdown());
            out.push('\n');
        }
        for f in &self.figures {
            out.push_str(&format!("![{}]({})\n\n", f.alt, f.file));
        }
        if !self.verbatim.is_empty() {
            out.push_str("```\n");
            for l in &self.verbatim {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("```\n\n");
        }
        if let Some(g) = self.goals_table() {
            out.push_str(&g.to_markdown());
            out.push('\n');
        }
        out.push_str(&format!(
            "_This part took {:.0} s._\n\n",
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Testrun,
    Throughput,
    Control,
    Storm,
    Source,
    Conntrack,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::Testrun,
        Part::Throughput,
        Part::Control,
        Part::Storm,
        Part::Source,
        Part::Conntrack,
    ];

    /// The heading of the part's section.
    pub fn heading(self) -> &'static str {
        match self {
            Part::Testrun => "a. Per-packet cost (BPF_PROG_TEST_RUN)",
            Part::Throughput => "b. Throughput across the lab's veth path",
            Part::Control => "c. Control plane: load, reload, memory",
            Part::Storm => "d. Event storm",
            Part::Source => "e. The source check per packet (BPF_PROG_TEST_RUN)",
            Part::Conntrack => "f. Connection tracking per packet (BPF_PROG_TEST_RUN)",
        }
    }
}

/// The goals as a table (None: no goals).
fn goals_table<'a>(title: String, goals: impl IntoIterator<Item = &'a Goal>) -> Option<Table> {
    let mut t = Table::new(title, "goal | figure | result");
    for g in goals {
        t.row(vec![g.goal.clone(), g.figure.clone(), pass(g.met)]);
    }
    (!t.rows.is_empty()).then_some(t)
}

/// What a goal stated at 100,000 CIDRs says when measured at `largest`.
fn measured_at(largest: usize) -> String {
    if largest == 100_000 {
        String::new()
    } else {
        format!(
            " (measured at {}, not 100,000)",
            table::thousands(largest as f64)
        )
    }
}

/// `quick()` or `full()` parameters.
fn pick<P>(quick: bool, q: fn() -> P, f: fn() -> P) -> P {
    if quick {
        q()
    } else {
        f()
    }
}

/// A datapath as the bench loads it: decision tag compiled out, `lo`
/// without a source check.
fn load(no_verdict_cache: bool, no_conntrack: bool) -> anyhow::Result<Datapath> {
    load_with(LoadOptions {
        no_verdict_cache,
        no_conntrack,
        ..LoadOptions::default()
    })
}

/// [`load`] of another build's object file (a baseline).
fn load_object(object: &Path) -> anyhow::Result<Datapath> {
    load_with(LoadOptions {
        object: Some(object.to_path_buf()),
        ..LoadOptions::default()
    })
    .with_context(|| format!("the baseline object {}", object.display()))
}

fn load_with(options: LoadOptions) -> anyhow::Result<Datapath> {
    let mut dp = Datapath::load_with(options).context("loading the eBPF programs (root needed)")?;
    dp.set_source_check(crate::testrun::LO_IFINDEX, SourceCheck::OFF)?;
    Ok(dp)
}

/// The bench labs' pods: a client in staging and a server in production,
/// at the example lab's staging1 and prod1 addresses.
pub const CLIENT: &str = "client";
pub const SERVER: &str = "server";

fn client_server() -> Vec<PodSpec> {
    let example = PodSpec::example_pods();
    let like = |name: &str, pod: &str| {
        let p = example.iter().find(|p| p.name == pod);
        p.map(|p| PodSpec::new(name, p.ipv4(), p.ipv6()))
    };
    [like(CLIENT, "staging1"), like(SERVER, "prod1")]
        .into_iter()
        .flatten()
        .collect()
}

/// The agent `bin` started in `lab` on the policy file `policy`, without
/// pins or file watching, its state in `state`.
fn start_agent(
    lab: &Lab,
    bin: &Path,
    policy: &Path,
    state: &Path,
    ready_timeout: Duration,
) -> anyhow::Result<Agent> {
    Agent::start_with(
        lab,
        bin,
        &AgentOptions {
            policy_args: vec!["--config".into(), policy.display().to_string()],
            extra_args: vec![
                "--no-pin".into(),
                "--no-watch".into(),
                "--state-dir".into(),
                state.display().to_string(),
            ],
            ready_timeout,
            ..AgentOptions::default()
        },
    )
}

/// How to run the suite.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub parts: Vec<Part>,
    /// The agent binary (release build).
    pub agent: PathBuf,
    /// The `storm` integration test executable (part d), if built.
    pub storm_test: Option<PathBuf>,
    /// Another build's eBPF object that part a measures envfence against.
    pub baseline: Option<testrun::Baseline>,
    /// The shape of part a's synthetic policies.
    pub shape: synth::Shape,
}

/// The whole run.
pub struct Report {
    pub machine: machine::Machine,
    pub quick: bool,
    pub sections: Vec<Section>,
    pub load_at_end: String,
    pub elapsed: Duration,
}

/// Runs the selected parts, printing each section as it completes. A part
/// that fails is reported as such; the others still run.
pub fn run(opts: &Options) -> Report {
    let started = Instant::now();
    let machine = machine::Machine::detect();
    print!("{}", machine.table().to_text());
    let mut sections = Vec::new();
    let mut log = |line: &str| eprintln!("{line}");
    for part in &opts.parts {
        let t = Instant::now();
        let q = opts.quick;
        let result = match part {
            Part::Testrun => testrun::section(
                &testrun::Params {
                    baseline: opts.baseline.clone(),
                    shape: opts.shape,
                    ..pick(q, testrun::Params::quick, testrun::Params::full)
                },
                &mut log,
            ),
            Part::Throughput => {
                let p = pick(q, throughput::Params::quick, throughput::Params::full);
                throughput::section(&p, &opts.agent, &mut log)
            }
            Part::Control => {
                let p = pick(q, control::Params::quick, control::Params::full);
                control::section(&p, &opts.agent, &mut log)
            }
            Part::Storm => storm::section(opts.storm_test.as_deref(), &opts.agent, &mut log),
            Part::Source => source::section(
                &pick(q, source::Params::quick, source::Params::full),
                &mut log,
            ),
            Part::Conntrack => {
                let p = pick(q, conntrack::Params::quick, conntrack::Params::full);
                conntrack::section(&p, &mut log)
            }
        };
        let mut section = result.unwrap_or_else(|e| {
            let mut s = Section::new(*part);
            s.error = Some(format!("{e:#}"));
            s
        });
        section.elapsed = t.elapsed();
        print!("{}", section.to_text());
        sections.push(section);
    }
    Report {
        machine,
        quick: opts.quick,
        sections,
        load_at_end: machine::load_average(),
        elapsed: started.elapsed(),
    }
}

impl Report {
    /// Whether every part ran to the end (goals may still be missed).
    pub fn ok(&self) -> bool {
        self.sections.iter().all(|s| s.error.is_none())
    }

    /// Every goal of every part.
    pub fn goals(&self) -> Vec<&Goal> {
        self.sections.iter().flat_map(|s| &s.goals).collect()
    }

    /// The summary printed last.
    pub fn summary_text(&self) -> String {
        let goals = self.goals();
        let met = goals.iter().filter(|g| g.met).count();
        let mut out = format!(
            "\nenvfence-bench: {} part(s) in {:.0} s, {} failed; goals: {met} of {} met; load average at start {}, at end {}\n",
            self.sections.len(),
            self.elapsed.as_secs_f64(),
            self.sections.iter().filter(|s| s.error.is_some()).count(),
            goals.len(),
            self.machine.load_at_start,
            self.load_at_end
        );
        for g in goals.iter().filter(|g| !g.met) {
            out.push_str(&format!("  MISS  {}: {}\n", g.goal, g.figure));
        }
        out
    }

    /// Every section's charts (written beside docs/benchmarks.md).
    pub fn figures(&self) -> impl Iterator<Item = &plot::Figure> {
        self.sections.iter().flat_map(|s| s.figures.iter())
    }

    /// docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# envfence benchmarks\n\n");
        out.push_str(&format!(
            "Generated by `cargo xtask bench`{} on {} — do not edit by hand; run it again. \
             The whole run took {:.0} s. Figures on a shared virtual machine move by ±20% \
             between runs: compare the ratios and differences taken within one run (every \
             comparison below is interleaved in one run), not absolute figures across runs.\n\n",
            if self.quick { " --quick" } else { "" },
            self.machine.date,
            self.elapsed.as_secs_f64()
        ));
        out.push_str(&self.machine.table().to_markdown());
        out.push_str(&format!(
            "\nLoad average at the end: {}. Other builds and tests may have been running on the machine at the same time; a load average above the core count means the figures carry that noise.\n\n",
            self.load_at_end
        ));
        if let Some(t) = goals_table("Goals of the performance issue".into(), self.goals()) {
            out.push_str("## Summary\n\n");
            out.push_str(&t.to_markdown());
            out.push('\n');
        }
        for s in &self.sections {
            out.push_str(&s.to_markdown());
        }
        out.push_str(METHOD);
        out
    }
}

const METHOD: &str = "## How to reproduce\n\n\
```sh\n\
cargo xtask bench            # everything (about 10–15 minutes), writes this file\n\
cargo xtask bench --quick    # a smoke run of every part, fewer repeats and sizes (prints only)\n\
cargo xtask bench --only testrun|throughput|control|storm|conntrack\n\
cargo xtask bench --only testrun --baseline REV   # this tree's datapath against REV's, side by side\n\
cargo xtask bench --only testrun --shape kubernetes|adversarial   # other policy shapes (table a8: classifier memory)\n\
```\n\n\
`cargo xtask bench` runs `cargo xtask setup`, builds the agent and `envfence-bench` in release, \
and runs `target/release/envfence-bench` as root. The code is in `tests/src/bench/`. \
Synthetic policies (`tests/src/bench/synth.rs`) are deterministic: a policy of N CIDRs holds \
N IPv4 and N IPv6 prefixes (mixed lengths /16–/32 and /32–/128) over five environments \
(production, staging, test, dev, ops) with a rule dropping test → production (53/udp excepted); \
the lab's pod subnets are among them, and the random prefixes stay out of 10/8 and fd00::/8. \
`--shape kubernetes` makes them host addresses (/32, /128) with one shorter prefix in a hundred; \
`--shape adversarial` nested chains of every prefix length (/1–/32, /1–/128).\n\n\
For scale: a throwaway naive classifier (two `ctx.load` copies and two LPM trie lookups per \
packet, not envfence) measured with the same TestRun method on this kind of machine went from \
174 to 371 ns hot and from 330 to 2,558 ns spread between 10 and 100,000 CIDRs (empty program: \
43 ns hot, about 100–120 ns spread).\n";
