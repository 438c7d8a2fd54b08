//! `envfence status` as the real binary against a real agent in the lab:
//! while it runs, and from the pins once it is killed (where `explain` and
//! `flows --file` still answer).

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use envfence_ebpf::ABI_VERSION;
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;
use envfence_tests::lab::pins::tcx_census;
use serde_json::Value;

/// `status -o json` and the table against a running agent after the
/// golden traffic: every hook's program is the one the kernel has attached.
#[test]
fn status_of_a_running_agent() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    traffic(&s)?;
    let st = s.status_json(0)?;
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
    // Every pod's veth on the node, by name.
    let mut veths: Vec<String> = s.lab.pods().map(|p| p.node_if()).collect();
    veths.sort();
    assert_eq!(names, veths);
    assert_eq!(names.len(), 7);
    // Each hook's program is the one the kernel has in that tcx chain.
    let census = tcx_census(s.lab.node_ns())?;
    for i in &ifaces {
        let name = i["name"].as_str().unwrap_or("");
        let chain = census
            .iter()
            .find(|c| c.ifname == name)
            .ok_or_else(|| anyhow!("no interface {name} in the node: {census:?}"))?;
        for h in i["hooks"].as_array().cloned().unwrap_or_default() {
            let hook = h["hook"].as_str().unwrap_or("");
            let id = h["program_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("{name} {hook}: no program id: {h}"))?;
            assert_eq!(
                Some((id, h["program_name"].as_str().unwrap_or(""))),
                chain
                    .hook(hook)
                    .first()
                    .map(|(id, n)| (u64::from(*id), n.as_str())),
                "{name} {hook}: status says {h}, the kernel {chain:?}"
            );
            // The kernel keeps 15 bytes of the name.
            assert!(
                format!("envfence_{hook}").starts_with(h["program_name"].as_str().unwrap_or("-"))
            );
            let programs = chain.ingress.len() + chain.egress.len();
            assert_eq!(programs, 2, "{name}: one program per hook: {chain:?}");
        }
    }
    assert!(drop_packets(&st) >= 7, "{st:#}");
    let table = s.api(&["status", "--state-dir", &s.state()])?.ok()?;
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
    let (sock, state) = (s.socket(), s.state());
    s.udp_event("test1", 40201, "prod1", 9999, 21)?;
    let running = s.api(&["status", "-o", "json"])?.ok()?.json()?;

    let agent = s.agent.process();
    agent.signal(nix::sys::signal::Signal::SIGKILL)?;
    let died = agent.wait_timeout(Duration::from_secs(10))?.is_some();
    ensure!(died, "the agent did not die");
    // Still enforced: a forbidden datagram does not arrive.
    let rx = s
        .lab
        .udp_receiver("prod1", s.lab.pod("prod1")?.ipv4().into(), 9997)?;
    let (src, dst) = udp(&s.lab, "test1", 40202, "prod1", 9997, 5)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx.total(),
        0,
        "the kernel stopped enforcing with the agent gone"
    );

    let down = s.api(&["status", "--state-dir", &state])?.code(2)?;
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
    let j = s.status_json(2)?;
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
        let ifaces = v["interfaces"].as_array().into_iter().flatten();
        ifaces
            .map(|i| {
                let hooks = i["hooks"].as_array().into_iter().flatten();
                let ids = hooks.filter_map(|h| h["program_id"].as_u64()).collect();
                (i["name"].as_str().unwrap_or("").to_owned(), ids)
            })
            .collect()
    };
    assert_eq!(progs(&j), progs(&running));
    assert_eq!(progs(&j).len(), 7);
    assert!(drop_packets(&j) >= 2, "{j:#}");

    // explain needs no agent.
    let (src, dst) = (src.ip().to_string(), dst.ip().to_string());
    let args = ["explain", &src, &dst, "--port", "9997", "--state-dir"];
    let e = cli_in(&s.lab, &[&args[..], &[&state]].concat())?.ok()?;
    golden(
        "explain_drop.txt",
        &normalize_paths(&e.stdout, s.tmp.path()),
    )?;

    // flows points at the audit log, which has the event.
    let f = s.api(&["flows"])?.code(1)?;
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

/// The dropped packets `status -o json` counts.
fn drop_packets(status: &Value) -> u64 {
    status["counters"]["verdicts"]["drop"]["packets"]
        .as_u64()
        .unwrap_or(0)
}
