//! `envfence top` as the real binary against a real agent in the lab.

use std::net::SocketAddr;

use anyhow::Result;
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;

/// `top` over the golden traffic and the four datagrams the follow checks
/// send (`cli_flows.rs`): pairs (golden), sources, rules, destinations.
#[test]
fn top_ranks_the_stored_flows() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let sock = s.socket();
    traffic(&s)?;
    // The datagrams the follow checks send, each waited for.
    let prod2 = s.lab.pod("prod2")?.ipv4();
    for (pod, sport) in [
        ("test1", 40100),
        ("dev1", 40101),
        ("test1", 40102),
        ("dev1", 40104),
    ] {
        let src = SocketAddr::new(s.lab.pod(pod)?.ipv4().into(), sport);
        let dst = SocketAddr::new(prod2.into(), 9998);
        udp(&s.lab, pod, src, dst, 10)?;
        wait_event(&s.agent, &format!("{src} -> {dst}"), |e| {
            e.src == src.ip() && e.sport == Some(sport)
        })?;
    }
    // --- top (over the 9 golden events and the 4 follow ones)
    let top = cli_in(&s.lab, &["top", "--socket", &sock, "--until", "now"]);
    // "now" is not a time: a clear error.
    let top = top?.code(1)?;
    assert!(top.stderr.contains("--until"), "{}", top.stderr);
    let top = cli_in(&s.lab, &["top", "--socket", &sock])?.ok()?;
    golden("top_pairs.txt", &mask_times(&top.stdout))?;
    let t = cli_in(
        &s.lab,
        &["top", "--socket", &sock, "--by", "src", "-o", "json"],
    )?
    .ok()?
    .json()?;
    let rows = t["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows[0]["src"], "10.30.1.2", "{t:#}");
    assert_eq!(rows[0]["packets"], 6);
    assert_eq!(t["verdicts"], serde_json::json!(["drop", "audit"]));
    let t = cli_in(
        &s.lab,
        &[
            "top", "--socket", &sock, "--by", "rule", "-o", "json", "-n", "1",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(t["rows"][0]["rule"], "test-to-prod");
    assert_eq!(t["rows"][0]["packets"], 10);
    assert_eq!(t["rows"].as_array().map_or(0, Vec::len), 1);
    let t = cli_in(
        &s.lab,
        &[
            "top",
            "--socket",
            &sock,
            "--by",
            "dst",
            "--verdict",
            "log",
            "-o",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(t["rows"][0]["dst"], "10.10.1.2");
    assert_eq!(t["rows"][0]["verdicts"]["log"], 1);
    Ok(())
}
