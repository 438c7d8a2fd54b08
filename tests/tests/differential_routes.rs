//! Differential verification of the source check: generated frames of every
//! header shape enter a route lab's interfaces (tests/src/gen/routes.rs:
//! strict with and without peer addresses, loose, off, unconfigured, and
//! interfaces that do not forward; nested, refused and local routes and
//! gaps) through the real eBPF programs (BPF_PROG_TEST_RUN with the context
//! naming the device, so the kernel's own FIB answers) and through the
//! reference classifier with the same routes as its input
//! (`reference::classify_on`, `policy::rpf`), in enforce and audit mode;
//! egress (never checked) for one case in four. The TC action and decision
//! tag must agree on every case, and every result of the check must be met.
//!
//! The seed is fixed (printed); `ENVFENCE_FUZZ_SEED` picks another;
//! `cargo xtask fuzz` runs the same engine longer. Needs root.

use envfence_tests::fixture::root;
use envfence_tests::gen::diff::{self, Engine, Options};
use envfence_tests::gen::routes::{run_on_routes, RouteLab, SOURCE_CLASSES};
use envfence_tests::netns;

/// Cases compared per `cargo test` run.
const CASES: u64 = 250_000;
/// Each source-check class must be hit at least this often.
const MIN_PER_CLASS: u64 = 50;

#[test]
fn generated_frames_on_routed_interfaces_kernel_equals_reference() {
    root();
    let lab = RouteLab::new().expect("building the route lab");
    let seed = diff::seed_from_env();
    eprintln!("differential (routes): seed {seed:#x}, {CASES} cases");
    let ns = lab.node_ns.clone();
    let report = netns::in_netns(&ns, || {
        let mut engine = Engine::new()?;
        lab.install(&mut engine)?;
        let mut opts = Options::new(CASES, seed);
        opts.egress_every = 4;
        let report = run_on_routes(&engine, &lab, &opts)?;
        for m in &report.mismatches {
            eprintln!("{}", m.report(diff::policy_of(&engine, m.mode)));
        }
        anyhow::Ok(report)
    })
    .expect("entering the route lab")
    .expect("differential run");
    eprint!("{}", report.summary());
    let thin = report.thin(SOURCE_CLASSES, MIN_PER_CLASS);
    assert!(
        thin.is_empty(),
        "the route lab barely reaches these results: {}",
        thin.join(", ")
    );
    assert_eq!(
        report.mismatched_cases, 0,
        "kernel and reference disagree on {} of {} cases (seed {seed:#x})",
        report.mismatched_cases, report.cases
    );
    drop(lab);
}
