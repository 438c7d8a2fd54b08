//! The benchmark's TestRun part (tests/src/bench/testrun.rs) with the
//! smallest parameters: every code path of `cargo xtask bench --only
//! testrun` runs (policies, flows, both datapaths, the empty program, the
//! TC action of every packet checked, tables, goals). No timing is asserted:
//! figures are only checked to be figures.

use anyhow::Result;
use envfence_tests::bench::synth::Shape;
use envfence_tests::bench::testrun::{self, Params};
use envfence_tests::lab::require_root;

#[test]
fn testrun_part_runs_and_tabulates() -> Result<()> {
    require_root()?;
    let p = Params::smoke();
    let mut lines = Vec::new();
    let results = testrun::measure(&p, &mut |l| lines.push(l.to_string()))?;
    // Every (size, family, kind) measured, each figure a positive number.
    assert_eq!(results.rows.len(), p.sizes.len() * 2 * 2);
    assert_eq!(lines.len(), results.rows.len());
    for r in &results.rows {
        // Hot, working set, spread of 3 programs; 2 first-packet figures.
        let figures: Vec<f64> = r.ns.iter().flatten().chain(&r.first).copied().collect();
        assert_eq!(figures.len(), 11);
        for v in figures {
            assert!(v.is_finite() && v > 0.0, "not a figure: {r:?}");
        }
    }
    let tables = results.tables();
    assert_eq!(tables.len(), 4);
    for t in &tables {
        assert_eq!(t.rows.len(), results.rows.len());
        assert!(t.rows.iter().all(|row| row.len() == t.headers.len()));
        assert!(t.to_markdown().contains(&t.title));
    }
    // Three goals per (family, kind) at the largest size: 20,000 flows
    // against the smallest size and against a bound, hot against a bound.
    assert_eq!(results.goals().len(), 2 * 2 * 3);
    // Two charts (hot, spread), a line per family, packet and variant.
    let figures = results.figures(Shape::Mixed);
    assert_eq!(figures.len(), 2);
    for f in &figures {
        assert!(f.file.ends_with("-mixed.svg"), "{}", f.file);
        assert_eq!(f.svg.matches("<polyline").count(), 2 * 2 * 2, "{}", f.file);
        let sizes = p.sizes.len();
        assert_eq!(
            f.svg.matches("<circle").count(),
            2 * 2 * 2 * sizes,
            "{}",
            f.file
        );
    }
    Ok(())
}

/// `cargo xtask bench --baseline REV`: the same object loaded as the
/// baseline (an A/A run) gives table a6, a row per size, family, kind and
/// measure, and one goal per measure; the ratios are figures near 1.
#[test]
fn testrun_part_compares_a_baseline_build() -> Result<()> {
    require_root()?;
    let dir = tempfile::tempdir()?;
    let object = dir.path().join("envfence-ebpf");
    std::fs::write(&object, envfence::datapath::EBPF_OBJECT)?;
    let mut p = Params::smoke();
    p.baseline = Some(testrun::Baseline {
        object,
        name: "same".into(),
    });
    let mut lines = Vec::new();
    let results = testrun::measure(&p, &mut |l| lines.push(l.to_string()))?;
    // A versus line after every row's line.
    assert_eq!(lines.len(), 2 * results.rows.len());
    for r in &results.rows {
        let v = r.versus.as_ref().expect("a baseline was loaded");
        for k in 0..4 {
            assert!(v.baseline[k].is_finite() && v.baseline[k] > 0.0, "{r:?}");
            let [q, lo, hi] = v.ratio[k];
            assert!(lo <= q && q <= hi, "{r:?}");
            // The same object on both sides: well inside a factor of 3.
            assert!(q > 0.33 && q < 3.0, "A/A ratio {q} in {r:?}");
        }
    }
    let tables = results.tables();
    assert_eq!(tables.len(), 5);
    let a6 = &tables[4];
    assert!(a6.title.starts_with("a6."), "{}", a6.title);
    assert_eq!(a6.rows.len(), results.rows.len() * 4);
    assert!(a6.to_markdown().contains("baseline same"));
    let goals = results.goals();
    // The same object verifies to the same count on both sides.
    assert_eq!(results.verified.len(), 3);
    for (name, env, base) in &results.verified {
        assert!(env.is_some_and(|n| n > 0), "{name}: {env:?}");
        assert_eq!(env, base, "{name}: the same object verified differently");
    }
    let a7 = results.verified_table().expect("a7 with a baseline");
    assert_eq!(a7.rows.len(), 3);
    // The plain test's goals plus one per measure against the baseline.
    assert_eq!(goals.len(), 2 * 2 * 3 + 3);
    Ok(())
}

/// `envfence-bench --shape`: the Kubernetes-sized and adversarial policies
/// run through the same part; table a8's classifier tables grow with the
/// policy and fit in half the maps (one slot of two), whose kernel memory,
/// read from the kernel, is the same at every size (preallocated arrays).
#[test]
fn testrun_part_measures_every_policy_shape() -> Result<()> {
    require_root()?;
    for shape in [Shape::Kubernetes, Shape::Adversarial] {
        let mut p = Params::smoke();
        p.shape = shape;
        let results = testrun::measure(&p, &mut |_| {})?;
        assert_eq!(results.rows.len(), p.sizes.len() * 2 * 2, "{shape:?}");
        assert_eq!(results.memory.len(), p.sizes.len(), "{shape:?}");
        for (n, [v4, v6, v4_maps, v6_maps]) in &results.memory {
            assert!(*v4 > 0 && *v6 > 0, "{shape:?} at {n}: {v4} {v6}");
            assert!(
                2 * v4 <= *v4_maps,
                "{shape:?} at {n}: IPv4 {v4} of {v4_maps}"
            );
            assert!(
                2 * v6 <= *v6_maps,
                "{shape:?} at {n}: IPv6 {v6} of {v6_maps}"
            );
        }
        let (small, large) = (results.memory[0].1, results.memory[1].1);
        assert!(
            large[0] > small[0] && large[1] > small[1],
            "{shape:?}: {small:?} {large:?}"
        );
        assert_eq!(
            small[2..],
            large[2..],
            "{shape:?}: the maps are preallocated"
        );
    }
    Ok(())
}
