//! `envfence top` as the real binary against a real agent in the lab.

use anyhow::Result;
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;

/// `top` over the golden traffic and the four datagrams the follow checks
/// send (`cli_flows.rs`): pairs (golden), sources, rules, destinations.
#[test]
fn top_ranks_the_stored_flows() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    traffic(&s)?;
    // The datagrams the follow checks send, each waited for.
    for (from, sport) in [
        ("test1", 40100),
        ("dev1", 40101),
        ("test1", 40102),
        ("dev1", 40104),
    ] {
        s.udp_event(from, sport, "prod2", 9998, 10)?;
    }
    // Over the 9 golden events and the 4 follow ones; "now" is not a time:
    // a clear error.
    let top = s.api(&["top", "--until", "now"])?.code(1)?;
    assert!(top.stderr.contains("--until"), "{}", top.stderr);
    let top = s.api(&["top"])?.ok()?;
    golden("top_pairs.txt", &mask_times(&top.stdout))?;
    let t = s.api(&["top", "--by", "src", "-o", "json"])?.ok()?.json()?;
    let rows = t["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        rows[0]["src"],
        s.lab.pod("test1")?.ipv4().to_string(),
        "{t:#}"
    );
    assert_eq!(rows[0]["packets"], 6);
    assert_eq!(t["verdicts"], serde_json::json!(["drop", "audit"]));
    let t = s.api(&["top", "--by", "rule", "-o", "json", "-n", "1"])?;
    let t = t.ok()?.json()?;
    assert_eq!(t["rows"][0]["rule"], "test-to-prod");
    assert_eq!(t["rows"][0]["packets"], 10);
    assert_eq!(t["rows"].as_array().map_or(0, Vec::len), 1);
    let t = s.api(&["top", "--by", "dst", "--verdict", "log", "-o", "json"])?;
    let t = t.ok()?.json()?;
    assert_eq!(t["rows"][0]["dst"], s.lab.pod("prod1")?.ipv4().to_string());
    assert_eq!(t["rows"][0]["verdicts"]["log"], 1);
    Ok(())
}
