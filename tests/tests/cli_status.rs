//! `envfence status` as the real binary against a real agent in the lab:
//! while it runs, and from the pins once it is killed (where `explain` and
//! `flows --file` still answer).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use envfence_ebpf::ABI_VERSION;
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;
use serde_json::Value;

/// `status -o json` and the table against a running agent after the
/// golden traffic: every hook's program is the one the kernel has attached.
#[test]
fn status_of_a_running_agent() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let sock = s.socket();
    let state = s.state();
    traffic(&s)?;
    // --- status
    let st = cli_in(
        &s.lab,
        &[
            "status",
            "--socket",
            &sock,
            "--state-dir",
            &state,
            "-o",
            "json",
        ],
    )?
    .ok()?
    .json()?;
    assert_eq!(st["source"], "agent");
    assert_eq!(st["agent_running"], true);
    assert_eq!(st["ready"], true);
    assert_eq!(st["mode"], "enforce");
    assert_eq!(st["generation"], 1);
    assert_eq!(st["last_reload_error"], Value::Null);
    assert_eq!(st["policy_origin"], s.policy.display().to_string());
    assert_eq!(
        st["pin_dir"],
        format!("/sys/fs/bpf/envfence/v{ABI_VERSION}")
    );
    assert_eq!(st["events_lost"], 0);
    assert!(st["events_emitted"].as_u64().unwrap_or(0) >= 9, "{st:#}");
    assert_eq!(st["events_stored"], 9);
    let ifaces = st["interfaces"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = ifaces.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "veth-dev1",
            "veth-ops1",
            "veth-prod1",
            "veth-prod2",
            "veth-staging1",
            "veth-staging2",
            "veth-test1"
        ]
    );
    // Each hook's program is the one the kernel has in that tcx chain.
    for i in &ifaces {
        let name = i["name"].as_str().unwrap_or("");
        let census = tcx_programs(&s.lab, name)?;
        for h in i["hooks"].as_array().cloned().unwrap_or_default() {
            let hook = h["hook"].as_str().unwrap_or("");
            let id = h["program_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("{name} {hook}: no program id: {h}"))?;
            let want = census.iter().find(|(hk, _, _)| hk == hook);
            assert_eq!(
                Some((id, h["program_name"].as_str().unwrap_or(""))),
                want.map(|(_, id, n)| (u64::from(*id), n.as_str())),
                "{name} {hook}: status says {h}, the kernel {census:?}"
            );
            // The kernel keeps 15 bytes of the name.
            assert!(
                format!("envfence_{hook}").starts_with(h["program_name"].as_str().unwrap_or("-"))
            );
            assert_eq!(census.len(), 2, "{name}: one program per hook: {census:?}");
        }
    }
    let drops = st["counters"]["verdicts"]["drop"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(drops >= 7, "drop packets {drops}: {st:#}");
    let table = cli_in(
        &s.lab,
        &["status", "--socket", &sock, "--state-dir", &state],
    )?
    .ok()?;
    golden(
        "status_running.txt",
        &normalize_status(&table.stdout, s.tmp.path()),
    )?;
    Ok(())
}

/// The agent is killed with SIGKILL: the kernel keeps enforcing, `status`
/// says the agent is down and shows what the pins say, `explain` still
/// answers, `flows` says where to look (--file), and `--file` reads the
/// audit log.
#[test]
fn status_and_explain_from_the_pins_when_the_agent_is_killed() -> Result<()> {
    let s = start(&[])?;
    let sock = s.socket();
    let state = s.state();
    let src = SocketAddr::new(ip("10.30.1.2"), 40201);
    let dst = SocketAddr::new(ip("10.10.1.2"), 9999);
    udp(&s.lab, "test1", src, dst, 21)?;
    wait_event(&s.agent, "test -> prod", |e| e.sport == Some(40201))?;
    let running = cli_in(&s.lab, &["status", "--socket", &sock, "-o", "json"])?
        .ok()?
        .json()?;

    s.agent
        .process()
        .signal(nix::sys::signal::Signal::SIGKILL)?;
    ensure!(
        s.agent
            .process()
            .wait_timeout(Duration::from_secs(10))?
            .is_some(),
        "the agent did not die"
    );
    // Still enforced: a forbidden datagram does not arrive.
    let rx = s.lab.udp_receiver("prod1", ip("10.10.1.2"), 9997)?;
    udp(
        &s.lab,
        "test1",
        SocketAddr::new(ip("10.30.1.2"), 40202),
        SocketAddr::new(ip("10.10.1.2"), 9997),
        5,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx.total(),
        0,
        "the kernel stopped enforcing with the agent gone"
    );

    let down = cli_in(
        &s.lab,
        &["status", "--socket", &sock, "--state-dir", &state],
    )?
    .code(2)?;
    golden(
        "status_agent_killed.txt",
        &normalize_status(&down.stdout, s.tmp.path()),
    )?;
    assert!(
        down.stdout
            .contains(&format!("DOWN: agent not reachable at {sock}")),
        "{}",
        down.stdout
    );
    let j = cli_in(
        &s.lab,
        &[
            "status",
            "--socket",
            &sock,
            "--state-dir",
            &state,
            "-o",
            "json",
        ],
    )?
    .code(2)?
    .json()?;
    assert_eq!(j["source"], "pins");
    assert_eq!(j["agent_running"], false);
    assert!(
        j["agent_error"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "{j:#}"
    );
    assert_eq!(j["generation"], 1);
    assert_eq!(j["mode"], "enforce");
    assert_eq!(j["pin_dir"], format!("/sys/fs/bpf/envfence/v{ABI_VERSION}"));
    assert_eq!(j["policy_sha256"], running["policy_sha256"]);
    assert!(j["active_slot"].is_u64(), "{j:#}");
    // The same interfaces and programs as when it ran.
    let progs = |v: &Value| -> Vec<(String, Vec<u64>)> {
        v["interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["name"].as_str().unwrap_or("").to_owned(),
                            i["hooks"]
                                .as_array()
                                .map(|h| {
                                    h.iter().filter_map(|h| h["program_id"].as_u64()).collect()
                                })
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(progs(&j), progs(&running));
    assert_eq!(progs(&j).len(), 7);
    assert!(
        j["counters"]["verdicts"]["drop"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{j:#}"
    );

    // explain needs no agent.
    let e = cli_in(
        &s.lab,
        &[
            "explain",
            "10.30.1.2",
            "10.10.1.2",
            "--port",
            "9997",
            "--state-dir",
            &state,
        ],
    )?
    .ok()?;
    golden(
        "explain_drop.txt",
        &normalize_paths(&e.stdout, s.tmp.path()),
    )?;

    // flows points at the audit log, which has the event.
    let f = cli_in(&s.lab, &["flows", "--socket", &sock])?.code(1)?;
    assert!(
        f.stderr.contains(&format!("agent not reachable at {sock}")),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains("--file"), "{}", f.stderr);
    let audit = s.audit.display().to_string();
    let f = cli_in(&s.lab, &["flows", "--file", &audit, "-o", "json"])?
        .ok()?
        .json()?;
    let evs = f["events"].as_array().cloned().unwrap_or_default();
    assert!(
        evs.iter()
            .any(|e| e["sport"] == 40201 && e["rule"] == "test-to-prod"),
        "{f:#}"
    );
    let t = cli_in(&s.lab, &["top", "--file", &audit, "-o", "json"])?
        .ok()?
        .json()?;
    assert_eq!(t["rows"][0]["src_env"], "test", "{t:#}");
    Ok(())
}
