//! `envfence flows` as the real binary against a real agent in the lab:
//! the stored events (golden tables, parsed JSON), filters, `--follow`.

use std::time::Duration;

use anyhow::{anyhow, Result};
use envfence_tests::cli::*;
use envfence_tests::fixture::{agent_lock, env_cidr};
use envfence_tests::lab::Family;
use serde_json::Value;

/// `flows` lists the stored events of the golden traffic (tables, JSON,
/// JSON lines) and filters them; a bad filter is named before the agent is
/// asked.
#[test]
fn flows_lists_and_filters_the_stored_events() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    traffic(&s)?;
    let all = s.api(&["flows"])?.ok()?;
    golden("flows_all.txt", &mask_times(&all.stdout))?;
    let drops = s.api(&["flows", "--verdict", "drop", "--from-env", "test"])?;
    golden("flows_test_drops.txt", &mask_times(&drops.ok()?.stdout))?;

    let j = s.api(&["flows", "-o", "json"])?.ok()?.json()?;
    let events = j["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 9, "{j:#}");
    assert_eq!(j["stored"], 9);
    let first = &events[0];
    assert_eq!(first["src"], s.lab.pod("test1")?.ipv4().to_string());
    assert_eq!(first["sport"], 40001);
    assert_eq!(first["dport"], 9999);
    assert_eq!(first["verdict"], "drop");
    assert_eq!(first["rule"], "test-to-prod");
    assert_eq!(first["interface"], "veth-test1");

    let count = |args: &[&str]| -> Result<usize> {
        let j = s.api(&[&["flows", "-o", "json"], args].concat())?;
        Ok(j.ok()?.json()?["events"].as_array().map_or(0, Vec::len))
    };
    let test_v4 = env_cidr("test", Family::V4);
    assert_eq!(
        count(&["--ip", &test_v4])?,
        5,
        "test addresses on either side"
    );
    assert_eq!(
        count(&["--ip", &s.lab.pod("prod2")?.ipv4().to_string()])?,
        2
    );
    assert_eq!(count(&["--ip", &env_cidr("dev", Family::V6)])?, 1);
    assert_eq!(count(&["--port", "9999"])?, 4);
    assert_eq!(count(&["--rule", "prod-to-test"])?, 1);
    assert_eq!(count(&["--rule", "staging-to-prod,ops-to-prod"])?, 2);
    assert_eq!(count(&["--verdict", "log"])?, 1);
    assert_eq!(count(&["--to-env", "test"])?, 1);
    assert_eq!(count(&["--proto", "icmp,icmpv6"])?, 2);
    assert_eq!(count(&["--since", "10m"])?, 9);
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"])?, 0);
    assert_eq!(count(&["--since", "2000-01-01T00:00:00+01:00"])?, 9);
    assert_eq!(count(&["--last", "2"])?, 2);
    let jl = s.api(&["flows", "-o", "jsonl", "--last", "3"])?.ok()?;
    let lines: Vec<Value> = jl
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["proto"], "icmp");
    // A bad filter is named before the agent is asked.
    let bad = s.api(&["flows", "--ip", "10.0.0.300"])?.code(1)?;
    assert!(bad.stderr.contains("10.0.0.300"), "{}", bad.stderr);
    let bad = s.api(&["flows", "--verdict", "dropped"])?.code(2)?;
    assert!(bad.stderr.contains("dropped"), "{}", bad.stderr);
    Ok(())
}

/// `flows --follow` prints the last stored match first, then each new
/// flow as it comes (JSON lines, and a table with its header).
#[test]
fn flows_follow_prints_the_backlog_then_new_flows() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    traffic(&s)?;
    // The last stored match first, then a new flow as it comes.
    let args = ["flows", "--follow", "-o", "jsonl", "--last", "1"];
    let follower = s.spawn_api(&[&args[..], &["--from-env", "test"]].concat())?;
    wait_lines(&follower, 1)?;
    // The second is not from test: it must not show.
    for (from, sport) in [("test1", 40100), ("dev1", 40101), ("test1", 40102)] {
        udp(&s.lab, from, sport, "prod2", 9998, 10)?;
    }
    let followed: Vec<Value> = wait_lines(&follower, 3)?
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        followed[0]["proto"], "icmp",
        "the backlog: the newest stored test flow"
    );
    assert_eq!(followed[1]["sport"], 40100);
    assert_eq!(followed[2]["sport"], 40102);
    assert_eq!(followed.len(), 3, "{followed:?}");
    stop(&follower)?;

    // A table follower prints the header, then each row as it comes.
    let table_follower = s.spawn_api(&["flows", "--follow", "--from-env", "dev"])?;
    std::thread::sleep(Duration::from_millis(500));
    let (src, _) = udp(&s.lab, "dev1", 40104, "prod2", 9998, 10)?;
    let lines = wait_lines(&table_follower, 2)?;
    assert!(lines[0].starts_with("TIME "), "{lines:?}");
    assert!(
        lines[1].contains(&src.to_string()) && lines[1].contains("test-to-prod"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    stop(&table_follower)?;
    Ok(())
}

/// A follower still connected does not hold the agent up: it stops in
/// time, and the follower is told and exits 0.
#[test]
fn a_follower_does_not_hold_the_agent_up() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let follower = s.spawn_api(&["flows", "--follow"])?;
    std::thread::sleep(Duration::from_millis(500));
    s.agent.stop(Duration::from_secs(10))?;
    let status = follower
        .wait_timeout(Duration::from_secs(10))?
        .ok_or_else(|| anyhow!("the follower did not end with the agent"))?;
    assert!(status.success(), "{status}: {}", follower.stderr_tail(5));
    assert!(
        follower.stderr_tail(5).contains("closed the stream"),
        "{}",
        follower.stderr_tail(5)
    );
    Ok(())
}
