//! The benchmark's TestRun part (tests/src/bench/testrun.rs) with the
//! smallest parameters: every code path of `cargo xtask bench --only
//! testrun` runs (policies, flows, both datapaths, the empty program, the
//! TC action of every packet checked, tables, goals). No timing is asserted:
//! figures are only checked to be figures.

use anyhow::Result;
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
    // A goal per (family, kind, measure: hot, working set, spread) and goal
    // kind at the largest size.
    assert_eq!(results.goals().len(), 2 * 2 * 3 * 2);
    Ok(())
}
