//! The differential engine: frames through the real eBPF programs
//! (BPF_PROG_TEST_RUN, one syscall each), through the independent oracle
//! (`crate::oracle`: etherparse and tables, the decision from the policy
//! model) and through the reference classifier (`policy::reference`, which
//! `explain` uses), under the example policy in enforce and in audit mode.
//! The kernel's TC action and decision tag (verdict, source and destination
//! environment, or why the frame was not judged) must be the oracle's, and
//! the reference's outcome must be the oracle's, field by field; a mismatch
//! says which of the three disagree.
//!
//! Used by `tests/tests/differential.rs` (a fixed number of cases every
//! `cargo test`, and every saved regression case), `tests/tests/corpus.rs`
//! (the pcap corpus) and the `envfence-fuzz` binary (`cargo xtask fuzz`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use envfence::datapath::Hook;
use envfence::policy::{self, reference, rpf, CompiledPolicy, Mode};
use envfence_ebpf::{tag, verdict};

use super::{fnv1a, from_hex, kernel_refuses, to_hex, Gen, Kind};
use crate::oracle::{self, describe::describe, Oracle};
use crate::testrun::{KernelHarness, KernelResult, ACTION_NEXT, ACTION_SHOT};

/// Seed of a run when none is given (`ENVFENCE_FUZZ_SEED` overrides it in
/// the tests).
pub const DEFAULT_SEED: u64 = 0x00ef_2026_0003;

/// The seed of a test run: `ENVFENCE_FUZZ_SEED` (decimal or 0x-hex), else
/// [`DEFAULT_SEED`].
pub fn seed_from_env() -> u64 {
    match std::env::var("ENVFENCE_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("ENVFENCE_FUZZ_SEED={s:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// Where regression cases live: `tests/corpus/regressions/`.
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/regressions")
}

/// The example policy compiled in `mode` (its model remembered for
/// [`Oracle::of`]).
pub fn example_policy(mode: Mode) -> Result<CompiledPolicy> {
    let src = match mode {
        Mode::Enforce => policy::EXAMPLE_POLICY.to_owned(),
        Mode::Audit => policy::EXAMPLE_POLICY.replacen("mode: enforce", "mode: audit", 1),
    };
    let p = oracle::parse(&src, policy::EXAMPLE_ORIGIN)?;
    if p.mode != mode {
        bail!("the example policy did not switch to {mode} mode");
    }
    Ok(policy::compile(&p))
}

/// The (action, tag) the kernel must produce for `outcome` under `mode`.
pub fn expected(outcome: &reference::Outcome, policy: &CompiledPolicy) -> (u32, u32) {
    let action = if outcome.passes(policy) {
        ACTION_NEXT
    } else {
        ACTION_SHOT
    };
    let t = match outcome {
        reference::Outcome::Judged(j) => tag::judged(j.verdict, j.src_env, j.dst_env),
        reference::Outcome::NonIp(_) => tag::UNJUDGED | tag::REASON_NON_IP,
        reference::Outcome::MplsTooDeep => tag::UNJUDGED | tag::REASON_MPLS_TOO_DEEP,
        reference::Outcome::Malformed => tag::UNJUDGED | tag::REASON_MALFORMED,
        reference::Outcome::VlanTooDeep => tag::UNJUDGED | tag::REASON_VLAN_TOO_DEEP,
        reference::Outcome::TunnelTooDeep => tag::UNJUDGED | tag::REASON_TUNNEL_TOO_DEEP,
        reference::Outcome::Spoofed(s) => tag::judged(verdict::SPOOFED, 0, s.dst_env),
    };
    (action, t)
}

/// The oracle's outcome of `frame` in a skb of `gso_size` (the reference
/// held to it) and what the kernel did with it on each hook, ingress
/// first: `Err` unless every run ended in the action and decision tag the
/// outcome means ([`expected`]).
pub fn held_on_both_hooks(
    h: &KernelHarness,
    frame: &[u8],
    gso_size: u32,
) -> Result<(reference::Outcome, Vec<KernelResult>)> {
    let skb = reference::Skb { gso_size };
    let outcome = Oracle::held_to_reference(&h.policy, frame, skb)?;
    let want = expected(&outcome, &h.policy);
    let mut runs = Vec::new();
    for hook in Hook::ALL {
        let got = h.run_gso(hook, frame, gso_size)?;
        ensure!(
            (got.action, got.mark) == want,
            "on {}, the oracle's {outcome:?} means (action, tag) {want:?}; kernel {got:?}",
            hook.as_str()
        );
        runs.push(got);
    }
    Ok((outcome, runs))
}

fn action_name(a: u32) -> String {
    match a {
        ACTION_NEXT => "TCX_NEXT (pass)".into(),
        ACTION_SHOT => "TC_ACT_SHOT (drop)".into(),
        other => format!("{other:#x} (?)"),
    }
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOW => "allow",
        verdict::LOG => "log",
        verdict::AUDIT => "audit",
        verdict::DROP => "drop",
        verdict::SPOOFED => "spoofed",
        _ => "?",
    }
}

/// A decision tag in words, with the policy's environment names.
pub fn describe_tag(t: u32, policy: &CompiledPolicy) -> String {
    match t & 0xff00_0000 {
        tag::JUDGED => {
            let v = ((t >> 16) & 0xff) as u8;
            let (s, d) = ((t >> 8) & 0xff, t & 0xff);
            format!(
                "{t:#010x} judged {} {} -> {}",
                verdict_name(v),
                policy.env_name(s),
                policy.env_name(d)
            )
        }
        tag::UNJUDGED => {
            let reason = match t & 0xff {
                tag::REASON_NON_IP => "non-ip",
                tag::REASON_MALFORMED => "malformed",
                tag::REASON_VLAN_TOO_DEEP => "vlan-too-deep",
                tag::REASON_TUNNEL_TOO_DEEP => "tunnel-too-deep",
                tag::REASON_MPLS_TOO_DEEP => "mpls-too-deep",
                _ => "unknown reason",
            };
            format!("{t:#010x} not judged: {reason}")
        }
        _ => format!("{t:#010x} (no decision tag written)"),
    }
}

/// A frame on which kernel, oracle and reference do not all agree.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub frame: Vec<u8>,
    /// How it was generated (None: a corpus or regression frame).
    pub kind: Option<Kind>,
    /// Where it came from (seed and case number, a file, a pcap packet).
    pub origin: String,
    pub mode: Mode,
    pub hook: Hook,
    pub ingress_ifindex: u32,
    /// The device the frame entered (0: `lo`, no source check).
    pub ifindex: u32,
    /// The skb's `gso_size` (0: not a GSO packet).
    pub gso_size: u32,
    /// What the oracle says: (action, tag).
    pub expected: (u32, u32),
    /// What the reference says: (action, tag).
    pub reference: (u32, u32),
    /// What the kernel did: (action, tag).
    pub got: (u32, u32),
    /// The oracle's outcome, `Debug`-printed.
    pub outcome: String,
    /// The reference's outcome, `Debug`-printed.
    pub reference_outcome: String,
}

impl Mismatch {
    /// Which of kernel, oracle and reference disagree, in words.
    pub fn disagreement(&self) -> &'static str {
        let outcomes_equal = self.outcome == self.reference_outcome;
        match (self.got == self.expected, outcomes_equal) {
            (false, true) => "the kernel disagrees with the oracle and the reference",
            (true, false) if self.reference == self.got => {
                "the reference's outcome differs from the oracle's (same action and tag as the kernel)"
            }
            (true, false) => "the reference disagrees with the kernel and the oracle",
            (false, false) if self.reference == self.got => {
                "the oracle disagrees with the kernel and the reference"
            }
            (false, false) => "kernel, oracle and reference all disagree",
            (true, true) => "no disagreement",
        }
    }

    /// Everything a reader needs: what differs, the frame in hex and as a
    /// decoded header stack.
    pub fn report(&self, policy: &CompiledPolicy) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "MISMATCH ({}) {} mode, {} hook (ingress_ifindex {}, on ifindex {}), {} bytes{}",
            self.origin,
            self.mode,
            self.hook.as_str(),
            self.ingress_ifindex,
            self.ifindex,
            self.frame.len(),
            self.kind
                .map(|k| format!(", {} case", k.name()))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "  {}", self.disagreement());
        for (who, (action, t)) in [
            ("oracle:   ", self.expected),
            ("reference:", self.reference),
            ("kernel:   ", self.got),
        ] {
            let (action, t) = (action_name(action), describe_tag(t, policy));
            let _ = writeln!(s, "  {who} {action} / {t}");
        }
        if self.gso_size != 0 {
            let _ = writeln!(s, "  a GSO skb: gso_size {}", self.gso_size);
        }
        let _ = writeln!(s, "  oracle outcome:    {}", self.outcome);
        if self.reference_outcome != self.outcome {
            let _ = writeln!(s, "  reference outcome: {}", self.reference_outcome);
        }
        let _ = writeln!(s, "  hex: {}", to_hex(&self.frame));
        s.push_str(&describe(&self.frame, self.gso_size != 0));
        s
    }

    /// Saves the frame as `<dir>/<fnv1a of the frame>.hex` with the report
    /// as `#` comments (kept as is when the file exists). Returns the path.
    pub fn save(&self, dir: &Path, policy: &CompiledPolicy) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{:016x}.hex", fnv1a(&self.frame)));
        if path.exists() {
            return Ok(path);
        }
        let mut text = String::from(
            "# envfence differential regression case: kernel, oracle and reference disagreed.\n",
        );
        for line in self.report(policy).lines() {
            let _ = writeln!(text, "# {line}");
        }
        if self.gso_size != 0 {
            let _ = writeln!(text, "# {GSO_KEY}{}", self.gso_size);
        }
        for chunk in self.frame.chunks(32) {
            let _ = writeln!(text, "{}", to_hex(chunk));
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// How a regression file names the skb's `gso_size` (a `# gso_size=N`
/// line; none: 0).
const GSO_KEY: &str = "gso_size=";

/// A saved regression case: its file, the frame and the skb's `gso_size`.
pub type Regression = (PathBuf, Vec<u8>, u32);

/// Reads every `*.hex` regression case of `dir` (sorted by name): lines
/// starting with `#` are comments (`# gso_size=N` gives the skb's
/// `gso_size`), the rest is the frame in hex.
pub fn load_regressions(dir: &Path) -> Result<Vec<Regression>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "hex") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let hex: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        let frame = from_hex(&hex).with_context(|| format!("{}: not hex", path.display()))?;
        let gso = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .find_map(|l| l.trim().strip_prefix(GSO_KEY))
            .map(|n| n.trim().parse::<u32>())
            .transpose()
            .with_context(|| format!("{}: bad {GSO_KEY} line", path.display()))?;
        out.push((path, frame, gso.unwrap_or(0)));
    }
    out.sort();
    Ok(out)
}

/// What one frame did.
#[derive(Debug)]
pub enum Checked {
    /// Kernel, oracle and reference agree on every run; the oracle's
    /// outcome under the enforce policy.
    Agreed(reference::Outcome),
    /// BPF_PROG_TEST_RUN refused the frame (EINVAL), as predicted by
    /// [`kernel_refuses`]: nothing to compare.
    Refused,
    Mismatched(Vec<Mismatch>),
}

/// Whether `err` is the EINVAL of a refused BPF_PROG_TEST_RUN.
fn is_einval(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::EINVAL))
}

/// The example policy loaded twice into the real programs: in enforce mode
/// and in audit mode.
pub struct Engine {
    pub enforce: KernelHarness,
    pub audit: KernelHarness,
}

impl Engine {
    /// Loads both datapaths. Needs root.
    pub fn new() -> Result<Engine> {
        Ok(Engine {
            enforce: KernelHarness::new(example_policy(Mode::Enforce)?)?,
            audit: KernelHarness::new(example_policy(Mode::Audit)?)?,
        })
    }

    /// Runs `frame` through the ingress program of both modes, and through
    /// egress too when `egress` (with `ingress_ifindex` 0 or, when
    /// `foreign_iif`, an interface envfence is not attached to: judged
    /// either way), in a skb of `gso_size` (non-zero: a GSO packet, as BIG
    /// TCP makes them). With `on` (`Some((node, ifindex))`; the calling
    /// thread must be in that node's namespace) the frame enters device
    /// `ifindex` of `node`: the ingress runs check its source against the
    /// node's routes, in the kernel and in the reference
    /// ([`reference::classify_on`]). `Err` is reserved for failures of the
    /// harness itself, including an EINVAL the prediction did not expect or
    /// a predicted refusal the kernel did not make.
    pub fn check(
        &self,
        frame: &[u8],
        egress: bool,
        foreign_iif: bool,
        on: Option<(&rpf::Node, u32)>,
        gso_size: u32,
    ) -> Result<Checked> {
        let skb = reference::Skb { gso_size };
        if kernel_refuses(frame) {
            match self.enforce.run_tagged(Hook::Ingress, frame, 0) {
                Err(e) if is_einval(&e) => return Ok(Checked::Refused),
                Err(e) => return Err(e),
                Ok(r) => bail!(
                    "BPF_PROG_TEST_RUN accepted a frame predicted to be refused (result {r:?}): {}",
                    to_hex(frame)
                ),
            }
        }
        let ifindex = on.map_or(0, |(_, i)| i);
        // Ingress checks the source on the node; egress never does.
        let ingress = |policy: &CompiledPolicy, o: &Oracle| match on {
            Some((node, i)) => (
                o.classify_on(frame, node, i),
                reference::classify_on(frame, policy, node, i),
            ),
            None => (
                o.classify_skb(frame, skb),
                reference::classify_skb(frame, skb, policy),
            ),
        };
        let mut mismatches = Vec::new();
        let mut agreed = None;
        for h in [&self.enforce, &self.audit] {
            let oracle = Oracle::of(&h.policy)?;
            let mode = h.policy.mode;
            let inbound = ingress(&h.policy, &oracle);
            let mut runs = vec![(Hook::Ingress, 0u32, inbound.clone())];
            if egress {
                let outbound = match on {
                    Some(_) => (
                        oracle.classify_skb(frame, skb),
                        reference::classify_skb(frame, skb, &h.policy),
                    ),
                    None => inbound.clone(),
                };
                runs.push((Hook::Egress, if foreign_iif { 7 } else { 0 }, outbound));
            }
            for (hook, iif, (said, ref_said)) in runs {
                let want = expected(&said, &h.policy);
                let on_dev = if hook == Hook::Ingress { ifindex } else { 0 };
                let got = match h.run_ctx(hook, frame, iif, on_dev, gso_size) {
                    Ok(got) => got,
                    Err(e) if is_einval(&e) => bail!(
                        "BPF_PROG_TEST_RUN refused (EINVAL) a frame not predicted to be refused: {}",
                        to_hex(frame)
                    ),
                    Err(e) => return Err(e),
                };
                if got != want || said != ref_said {
                    mismatches.push(Mismatch {
                        frame: frame.to_vec(),
                        kind: None,
                        origin: String::new(),
                        mode,
                        hook,
                        ingress_ifindex: iif,
                        ifindex: on_dev,
                        gso_size,
                        expected: want,
                        reference: expected(&ref_said, &h.policy),
                        got,
                        outcome: format!("{said:?}"),
                        reference_outcome: format!("{ref_said:?}"),
                    });
                }
            }
            // The first datapath's (normally enforce) ingress outcome.
            if agreed.is_none() {
                agreed = Some(inbound.0);
            }
        }
        Ok(match agreed {
            Some(outcome) if mismatches.is_empty() => Checked::Agreed(outcome),
            _ => Checked::Mismatched(mismatches),
        })
    }
}

/// Coverage classes of the oracle's outcome (enforce mode): the suite
/// requires every one of them to be hit, so that zero mismatches cannot come
/// from a generator that misses a shape.
pub fn outcome_classes(o: &reference::Outcome) -> Vec<&'static str> {
    use reference::{L4Seen, Outcome};
    match o {
        Outcome::NonIp(reference::NonIpKind::Mpls) => vec!["non-ip", "non-ip-mpls"],
        Outcome::NonIp(reference::NonIpKind::Pppoe) => vec!["non-ip", "non-ip-pppoe"],
        Outcome::NonIp(_) => vec!["non-ip"],
        Outcome::MplsTooDeep => vec!["mpls-too-deep"],
        Outcome::Malformed => vec!["malformed"],
        Outcome::VlanTooDeep => vec!["vlan-too-deep"],
        Outcome::TunnelTooDeep => vec!["tunnel-too-deep"],
        Outcome::Spoofed(_) => vec!["spoofed"],
        Outcome::Judged(j) => {
            let mut c = vec![match j.verdict {
                verdict::ALLOW => "verdict-allow",
                verdict::LOG => "verdict-log",
                verdict::AUDIT => "verdict-audit",
                _ => "verdict-drop",
            }];
            c.push(match j.l4 {
                L4Seen::Ports => "l4-ports",
                L4Seen::NoPorts => "l4-no-ports",
                L4Seen::Other => "l4-other",
            });
            let v4 = j.family == envfence_ebpf::family::V4;
            c.push(if v4 { "ipv4" } else { "ipv6" });
            let mapped = |a: &std::net::IpAddr| match a {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
                _ => false,
            };
            let ports = j.l4 == L4Seen::Ports;
            let flags = [
                (j.fragment, "fragment"),
                (j.ext_too_deep, "ipv6-ext-too-deep"),
                (j.tunneled, "tunneled"),
                (j.by_inner, "decided-by-inner"),
                (j.encap == reference::Encap::Mpls, "mpls"),
                (j.encap == reference::Encap::Pppoe, "pppoe"),
                (j.len_from_skb, "length-from-skb"),
                // The issue-13 bypass: a tunnel inside a length of 0.
                (j.len_from_skb && j.tunneled, "tunnel-in-length-from-skb"),
                (j.proto == envfence_ebpf::proto::DCCP && ports, "dccp-ports"),
                (j.routed, "routing-final"),
                (j.by_final, "decided-by-final-destination"),
                (mapped(&j.src) || mapped(&j.dst), "v4-mapped"),
                (
                    ports && j.dport == 53 && j.src_env != j.dst_env,
                    "port-53-across-envs",
                ),
            ];
            c.extend(flags.into_iter().filter(|f| f.0).map(|f| f.1));
            c
        }
    }
}

/// Every class [`outcome_classes`] can return.
pub const ALL_CLASSES: &str = "non-ip non-ip-mpls non-ip-pppoe malformed vlan-too-deep \
    tunnel-too-deep verdict-allow verdict-log verdict-audit verdict-drop l4-ports l4-no-ports l4-other \
    ipv4 ipv6 fragment ipv6-ext-too-deep tunneled decided-by-inner mpls mpls-too-deep \
    pppoe length-from-skb tunnel-in-length-from-skb dccp-ports routing-final \
    decided-by-final-destination v4-mapped port-53-across-envs";

/// How to run [`run_differential`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Cases to compare (refused frames do not count).
    pub cases: u64,
    pub seed: u64,
    /// Run the egress program too for one case in this many.
    pub egress_every: u64,
    /// Save mismatches here (None: do not save).
    pub save_dir: Option<PathBuf>,
    /// Keep at most this many mismatches in the report (all are counted and
    /// saved).
    pub keep: usize,
    /// Print a progress line to stderr this often.
    pub progress: Option<Duration>,
}

impl Options {
    pub fn new(cases: u64, seed: u64) -> Options {
        Options {
            cases,
            seed,
            egress_every: 8,
            save_dir: None,
            keep: 20,
            progress: None,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Cases compared.
    pub cases: u64,
    /// Frames generated (compared + refused).
    pub generated: u64,
    /// Frames BPF_PROG_TEST_RUN refused (as predicted).
    pub skipped: u64,
    /// BPF_PROG_TEST_RUN calls that were compared.
    pub kernel_runs: u64,
    pub elapsed: Duration,
    /// Cases with at least one disagreeing run.
    pub mismatched_cases: u64,
    /// The first [`Options::keep`] mismatches.
    pub mismatches: Vec<Mismatch>,
    /// Files written for mismatches.
    pub saved: Vec<PathBuf>,
    /// Compared cases per generator kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Compared cases per outcome class (see [`outcome_classes`]).
    pub classes: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn cases_per_sec(&self) -> f64 {
        self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The classes of `classes` hit fewer than `min` times, as
    /// `class (count)`.
    pub fn thin(&self, classes: &str, min: u64) -> Vec<String> {
        classes
            .split_whitespace()
            .filter_map(|c| {
                let n = self.classes.get(c).copied().unwrap_or(0);
                (n < min).then(|| format!("{c} ({n})"))
            })
            .collect()
    }

    /// The classes of `classes` (see [`ALL_CLASSES`]) never hit.
    pub fn missing(&self, classes: &'static str) -> Vec<&'static str> {
        let hit = |c: &&str| self.classes.get(*c).is_some_and(|n| *n > 0);
        classes.split_whitespace().filter(|c| !hit(c)).collect()
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {:#x}: {} cases compared ({} kernel runs) in {:.1?} = {:.0} cases/s; {} skipped (refused by BPF_PROG_TEST_RUN); {} mismatches",
            self.seed,
            self.cases,
            self.kernel_runs,
            self.elapsed,
            self.cases_per_sec(),
            self.skipped,
            self.mismatched_cases
        );
        let counts = |m: &BTreeMap<&str, u64>| {
            let counts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            counts.join(", ")
        };
        let _ = writeln!(s, "  by kind: {}", counts(&self.by_kind));
        let _ = writeln!(s, "  outcomes: {}", counts(&self.classes));
        s
    }
}

/// The differential run: `opts.cases` generated frames compared.
pub fn run_differential(engine: &Engine, opts: &Options) -> Result<Report> {
    let mut gen = Gen::new(opts.seed);
    let mut report = Report {
        seed: opts.seed,
        ..Report::default()
    };
    let start = Instant::now();
    let mut last_progress = start;
    let egress_every = opts.egress_every.max(1);
    while report.cases < opts.cases {
        let case = gen.case();
        let n = report.generated;
        report.generated += 1;
        let egress = n.is_multiple_of(egress_every);
        let foreign = (n / egress_every) % 2 == 1;
        match engine.check(&case.frame, egress, foreign, None, case.gso_size)? {
            Checked::Refused => {
                report.skipped += 1;
                continue;
            }
            Checked::Agreed(outcome) => {
                for c in outcome_classes(&outcome) {
                    *report.classes.entry(c).or_default() += 1;
                }
            }
            Checked::Mismatched(ms) => {
                report.mismatched_cases += 1;
                for mut m in ms {
                    m.kind = Some(case.kind);
                    m.origin = format!("seed {:#x} case {n}", opts.seed);
                    if let Some(dir) = &opts.save_dir {
                        let p = m.save(dir, policy_of(engine, m.mode))?;
                        if !report.saved.contains(&p) {
                            report.saved.push(p);
                        }
                    }
                    if report.mismatches.len() < opts.keep {
                        report.mismatches.push(m);
                    }
                }
            }
        }
        report.cases += 1;
        report.kernel_runs += if egress { 4 } else { 2 };
        *report.by_kind.entry(case.kind.name()).or_default() += 1;
        if let Some(every) = opts.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                let el = start.elapsed().as_secs_f64();
                eprintln!(
                    "  {} / {} cases, {:.0} cases/s, {} skipped, {} mismatches",
                    report.cases,
                    opts.cases,
                    report.cases as f64 / el.max(1e-9),
                    report.skipped,
                    report.mismatched_cases
                );
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The compiled policy of `mode`'s datapath.
pub fn policy_of(engine: &Engine, mode: Mode) -> &CompiledPolicy {
    match mode {
        Mode::Enforce => &engine.enforce.policy,
        Mode::Audit => &engine.audit.policy,
    }
}

/// `frame` with an 802.1Q tag (VLAN 0) after the MAC addresses: what
/// BPF_PROG_TEST_RUN refuses untagged (an IP header shorter than its fixed
/// part) it accepts behind a tag, and the parser still meets the same IP
/// bytes after walking the tag.
pub fn wrap_in_vlan(frame: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x00]);
    f.extend_from_slice(&frame[12..]);
    f
}

/// Checks a list of frames from a corpus (both hooks, both modes), each
/// with its skb's `gso_size`; a frame
/// BPF_PROG_TEST_RUN refuses is counted as refused and checked again
/// wrapped in a VLAN tag ([`wrap_in_vlan`]). Returns the mismatches, how
/// many frames were compared (wrapped ones included) and how many refused.
pub fn check_frames(
    engine: &Engine,
    frames: &[(String, Vec<u8>, u32)],
) -> Result<(Vec<Mismatch>, u64, u64)> {
    let mut mismatches = Vec::new();
    let (mut compared, mut refused) = (0, 0);
    for (origin, frame, gso_size) in frames {
        let mut checked = engine.check(frame, true, false, None, *gso_size)?;
        let mut origin = origin.clone();
        let mut frame_seen = frame.clone();
        if let Checked::Refused = checked {
            refused += 1;
            if frame.len() < 14 {
                continue;
            }
            frame_seen = wrap_in_vlan(frame);
            origin.push_str(" (refused untagged; wrapped in an 802.1Q tag)");
            checked = engine.check(&frame_seen, true, false, None, *gso_size)?;
        }
        match checked {
            Checked::Refused => bail!("{origin}: refused even behind a VLAN tag"),
            Checked::Agreed(_) => compared += 1,
            Checked::Mismatched(ms) => {
                compared += 1;
                for mut m in ms {
                    m.origin.clone_from(&origin);
                    debug_assert_eq!(m.frame, frame_seen);
                    mismatches.push(m);
                }
            }
        }
    }
    Ok((mismatches, compared, refused))
}
