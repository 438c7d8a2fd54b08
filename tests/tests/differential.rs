//! Differential verification: generated frames of every header shape
//! (tests/src/gen.rs) through the real eBPF programs (BPF_PROG_TEST_RUN),
//! the independent oracle (tests/src/oracle) and the reference classifier,
//! under the example policy in enforce and in audit mode, ingress for every
//! case and egress for one in four. The kernel's TC action and decision tag
//! (verdict, source and destination environment, or why a frame was not
//! judged) must be the oracle's, and the reference's outcome the oracle's.
//!
//! The seed is fixed (printed); `ENVFENCE_FUZZ_SEED=<n or 0xhex>` picks
//! another. A mismatch is printed as hex and as a decoded header stack and
//! saved to `tests/corpus/regressions/<hash>.hex`; every file there is
//! replayed on every run. `cargo xtask fuzz --cases N` runs the same engine
//! longer. Needs root.

use envfence::datapath::Hook;
use envfence::policy::{reference, Mode};
use envfence_tests::fixture::root;
use envfence_tests::gen::diff::{
    self, example_policy, load_regressions, regressions_dir, run_differential, Checked, Engine,
    Options, ALL_CLASSES,
};
use envfence_tests::gen::{kernel_refuses, to_hex};
use envfence_tests::oracle::{self, Oracle};
use envfence_tests::packet::{ethertype, ip_frame, Packet};
use envfence_tests::testrun::KernelHarness;

/// Cases compared per `cargo test` run.
const CASES: u64 = 250_000;
/// Each outcome class must be hit at least this often.
const MIN_PER_CLASS: u64 = 200;

fn seed() -> u64 {
    diff::seed_from_env()
}

#[test]
fn generated_frames_kernel_equals_reference() {
    root();
    let engine = Engine::new().expect("loading the datapath");
    let seed = seed();
    eprintln!("differential: seed {seed:#x} (ENVFENCE_FUZZ_SEED overrides), {CASES} cases");
    let mut opts = Options::new(CASES, seed);
    opts.egress_every = 4;
    opts.save_dir = Some(regressions_dir());
    let report = run_differential(&engine, &opts).expect("differential run");
    eprint!("{}", report.summary());
    for m in &report.mismatches {
        eprintln!("{}", m.report(diff::policy_of(&engine, m.mode)));
    }
    assert!(report.cases >= 200_000, "only {} cases", report.cases);
    let thin = report.thin(ALL_CLASSES, MIN_PER_CLASS);
    assert!(
        thin.is_empty(),
        "the generator barely reaches these outcomes: {}",
        thin.join(", ")
    );
    assert_eq!(
        report.mismatched_cases, 0,
        "kernel, oracle and reference disagree on {} of {} cases (seed {seed:#x}); saved: {:?}",
        report.mismatched_cases, report.cases, report.saved
    );
}

/// Every saved regression case (tests/corpus/regressions/*.hex) agrees now,
/// on both hooks, in both modes.
#[test]
fn regression_cases_kernel_equals_reference() {
    root();
    let engine = Engine::new().expect("loading the datapath");
    let cases = load_regressions(&regressions_dir()).expect("reading the regression cases");
    let mut failures = Vec::new();
    for (path, frame, gso_size) in &cases {
        for foreign_iif in [false, true] {
            match engine.check(frame, true, foreign_iif, None, *gso_size) {
                Ok(Checked::Agreed(_)) | Ok(Checked::Refused) => {}
                Ok(Checked::Mismatched(ms)) => {
                    for mut m in ms {
                        m.origin = path.display().to_string();
                        failures.push(m.report(diff::policy_of(&engine, m.mode)));
                    }
                }
                Err(e) => failures.push(format!("{}: {e:#}", path.display())),
            }
        }
    }
    eprintln!("replayed {} regression cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// BPF_PROG_TEST_RUN refuses exactly the frames `kernel_refuses` predicts
/// (an untagged IPv4 frame shorter than Ethernet + 20, IPv6 shorter than
/// Ethernet + 40): the engine errs on any other EINVAL, so a refused frame
/// is never silently counted as agreement.
#[test]
fn refused_frames_are_exactly_the_predicted_ones() {
    root();
    let engine = Engine::new().expect("loading the datapath");
    let mut refused = 0;
    for (et, tags) in [
        (ethertype::IPV4, 0),
        (ethertype::IPV6, 0),
        (ethertype::IPV4, 1),
        (ethertype::IPV6, 1),
        (ethertype::ARP, 0),
    ] {
        let vlans = vec![(ethertype::VLAN, 5); tags];
        for len in 14..=80 {
            let mut f = Packet::new().eth(&vlans, et).into_bytes();
            f.resize(len.max(f.len()), 0x45);
            match engine.check(&f, true, false, None, 0) {
                Ok(Checked::Refused) => {
                    assert!(kernel_refuses(&f));
                    refused += 1;
                }
                Ok(_) => assert!(!kernel_refuses(&f)),
                Err(e) => panic!("len {len} ethertype {et:#x} tags {tags}: {e:#}"),
            }
        }
    }
    // 34 - 14 IPv4 lengths and 54 - 14 IPv6 lengths.
    assert_eq!(refused, 20 + 40);
}

/// The engine does see a disagreement: a datapath loaded with the enforce
/// policy, compared with the oracle and the reference under the audit
/// policy, disagrees on test -> production, and the report says the kernel
/// is the odd one out and, like the saved file, carries the frame.
#[test]
fn engine_reports_a_disagreement() {
    root();
    let mut lying = KernelHarness::new(example_policy(Mode::Enforce).expect("policy"))
        .expect("loading the datapath");
    lying.policy = example_policy(Mode::Audit).expect("policy");
    let engine = Engine {
        enforce: lying,
        audit: KernelHarness::new(example_policy(Mode::Audit).expect("policy"))
            .expect("loading the datapath"),
    };
    let f = ip_frame(
        "10.30.1.2".parse().expect("ip"),
        "10.10.1.2".parse().expect("ip"),
        6,
        Packet::syn(1234, 8080),
    );
    let Checked::Mismatched(ms) = engine.check(&f, true, false, None, 0).expect("check") else {
        panic!("no mismatch found");
    };
    assert_eq!(
        ms.len(),
        2,
        "ingress and egress of the lying datapath: {ms:?}"
    );
    // Reported under the mode the oracle and reference were given.
    assert!(ms.iter().all(|m| m.mode == Mode::Audit));
    assert!(ms
        .iter()
        .all(|m| m.disagreement() == "the kernel disagrees with the oracle and the reference"));
    assert!(ms.iter().any(|m| m.hook == Hook::Egress));
    let text = ms[0].report(&engine.audit.policy);
    assert!(text.contains(&to_hex(&f)), "{text}");
    assert!(
        text.contains("ipv4 10.30.1.2 > 10.10.1.2 proto 6 (tcp)"),
        "{text}"
    );
    assert!(text.contains("judged audit test -> production"), "{text}");
    assert!(text.contains("judged drop test -> production"), "{text}");
    assert!(
        text.contains("the kernel disagrees with the oracle and the reference"),
        "{text}"
    );
    let dir = std::env::temp_dir().join(format!("ef-regress-{}", std::process::id()));
    let path = ms[0].save(&dir, &engine.audit.policy).expect("save");
    let loaded = load_regressions(&dir).expect("load");
    assert_eq!(loaded, vec![(path, f.clone(), 0)]);
    // A GSO case keeps its gso_size through the file.
    let mut gso_case = ms[0].clone();
    gso_case.gso_size = 1448;
    gso_case.frame.push(0);
    let path = gso_case.save(&dir, &engine.audit.policy).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("# gso_size=1448"), "{text}");
    let loaded = load_regressions(&dir).expect("load");
    assert!(
        loaded.contains(&(path, gso_case.frame.clone(), 1448)),
        "{loaded:?}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
    // The oracle and the reference agree with the honest kernel.
    let o = reference::classify(&f, &engine.audit.policy);
    let said = Oracle::of(&engine.audit.policy)
        .expect("the policy's model")
        .classify(&f);
    assert_eq!(said, o);
    assert_eq!(
        engine.audit.run_tagged(Hook::Ingress, &f, 0).expect("run"),
        diff::expected(&said, &engine.audit.policy)
    );
}

/// The kernel's per-flow verdict cache never outlives a policy: the same
/// frames (same seed, so the same flows, cached under the old policy) are
/// judged by the new policy at once after a reload.
#[test]
fn cached_verdicts_follow_a_reload() {
    root();
    let mut engine = Engine::new().expect("loading the datapath");
    let opts = Options::new(30_000, seed() ^ 0x5eed);
    let before = run_differential(&engine, &opts).expect("differential run");
    assert_eq!(before.mismatched_cases, 0, "{}", before.summary());
    // Another matrix: every pair no rule names is now dropped, and the two
    // datapaths swap modes.
    let strict = envfence::policy::EXAMPLE_POLICY.replacen("default: allow", "default: drop", 1);
    assert_ne!(strict, envfence::policy::EXAMPLE_POLICY);
    let parse = |src: &str| oracle::parse(src, "reloaded").expect("valid policy");
    engine
        .enforce
        .reload(&parse(&strict.replacen("mode: enforce", "mode: audit", 1)))
        .expect("reload");
    engine.audit.reload(&parse(&strict)).expect("reload");
    assert_eq!(engine.enforce.policy.mode, Mode::Audit);
    let after = run_differential(&engine, &opts).expect("differential run");
    eprint!(
        "before the reload: {}after: {}",
        before.summary(),
        after.summary()
    );
    for m in &after.mismatches {
        eprintln!("{}", m.report(&engine.audit.policy));
    }
    assert_eq!(after.mismatched_cases, 0, "stale verdicts after a reload");
    // The reload did change the verdicts of these very frames.
    assert_ne!(
        before.classes.get("verdict-allow"),
        after.classes.get("verdict-allow")
    );
}
