//! `envfence explain` as the real binary against a real agent in the lab,
//! checked against the kernel itself: crafted frames run through the
//! agent's own attached program (BPF_PROG_TEST_RUN on the program id
//! `status` reports), and the counter cell that moved (source env,
//! destination env, verdict) and the rule of the event the agent printed
//! must be what `explain` said, read from the pinned maps.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use envfence_ebpf::verdict;
use envfence_tests::cli::*;
use envfence_tests::fixture::{addr_word, agent_lock};
use envfence_tests::lab::pins::Pins;
use envfence_tests::packet::{ip_frame, Ipv4, Packet};
use envfence_tests::testrun::{program_of_id, test_run, ACTION_SHOT};
use serde_json::Value;

/// `explain -o json` for a set of packets, then each packet through the
/// agent's own ingress program: the counter cell that moved and the
/// event's rule must be explain's.
#[test]
fn explain_matches_the_kernel() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let st = s.api(&["status", "-o", "json"])?.ok()?.json()?;
    check_explain_against_the_kernel(&s, &st)
}

/// `explain --config` against a file that differs from what is loaded:
/// the disagreement is shown (golden) and exits 3; a flow the change does
/// not touch still agrees.
#[test]
fn explain_compares_a_file_with_what_is_loaded() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let other = s.tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        envfence::policy::EXAMPLE_POLICY.replacen("verdict: drop", "verdict: allow", 1),
    )?;
    let (loaded, other) = (s.policy.display().to_string(), other.display().to_string());
    let agree = explain_5432(&s, "test1", &loaded, &[])?.ok()?;
    assert!(
        agree.stdout.contains("agrees with the kernel"),
        "{}",
        agree.stdout
    );
    let disagree = explain_5432(&s, "test1", &other, &[])?.code(3)?;
    golden(
        "explain_disagree.txt",
        &normalize_paths(&disagree.stdout, s.tmp.path()),
    )?;
    assert!(disagree.stderr.contains("DISAGREE"), "{}", disagree.stderr);
    let dj = explain_5432(&s, "test1", &other, &["-o", "json"])?
        .code(3)?
        .json()?;
    assert_eq!(dj["agree"], false);
    assert_eq!(dj["kernel"]["verdict"], "drop");
    assert_eq!(dj["file"]["verdict"], "allow");
    assert_eq!(
        dj["differences"],
        serde_json::json!(["verdict: kernel drop, file allow"])
    );
    // A flow the change does not touch still agrees.
    explain_5432(&s, "staging1", &other, &["--proto", "udp"])?.ok()?;
    Ok(())
}

/// `envfence explain <pod src> <prod1> --port 5432` in the node namespace,
/// comparing with the policy file `config`, plus `extra` arguments.
fn explain_5432(s: &Setup, src: &str, config: &str, extra: &[&str]) -> Result<Run> {
    let src = s.lab.pod(src)?.ipv4().to_string();
    let dst = s.lab.pod("prod1")?.ipv4().to_string();
    let state = s.state();
    let args = ["explain", &src, &dst, "--port", "5432"];
    let files = ["--state-dir", &state, "--config", config];
    cli_in(&s.lab, &[&args[..], &files, extra].concat())
}

/// The cases: source, destination, protocol, port (`-`: none), and what
/// explain and the kernel must say: source env, destination env, verdict,
/// rule; the addresses are [`addr_word`]s. `fragment`: a non-first fragment of DNS test ->
/// production, whose ports cannot be read: the strictest verdict of the
/// pair (the port rule's allow does not count), drop.
const CASES: [&str; 13] = [
    "v4:test:1 v4:production:1 tcp 5432 test production drop test-to-prod",
    "v4:test:1 v4:production:1 udp 53 test production allow test-dns-in-prod",
    "v4:test:9 v4:production:200 tcp 53 test production allow test-dns-in-prod",
    "v4:staging:1 v4:production:2 udp 5432 staging production audit staging-to-prod",
    "v4:ops:0 v4:production:1 icmp - ops production log ops-to-prod",
    "v4:production:1 v4:dev:1 tcp 22 production dev drop prod-to-test",
    "192.0.2.1 v4:production:1 tcp 443 world production allow default",
    "v6:test:1 v6:production:1 udp 53 test production allow test-dns-in-prod",
    "v6:dev:1 v6:production:1 tcp 80 dev production drop test-to-prod",
    "v6:staging:7 v6:production:2 icmpv6 - staging production audit staging-to-prod",
    "mapped:test:1 mapped:production:1 tcp 8443 test production drop test-to-prod",
    "v6:ops:0 v6:test:1 udp 123 ops test allow default",
    "v4:test:3 v4:production:3 udp 53 test production drop test-to-prod fragment",
];

fn check_explain_against_the_kernel(s: &Setup, status: &Value) -> Result<()> {
    let prog = status["interfaces"][0]["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "ingress"))
        .and_then(|h| h["program_id"].as_u64())
        .ok_or_else(|| anyhow!("no ingress program id in {status:#}"))?;
    let prog = program_of_id(u32::try_from(prog)?)?;
    let pin_dir = Pins::of(&s.lab)?.dir();
    no_source_check_on_lo(&pin_dir)?;
    let state = s.state();
    for (i, case) in CASES.iter().enumerate() {
        let w: Vec<&str> = case.split(' ').collect();
        let [src, dst, proto_name, port, want @ ..] = &w[..] else {
            bail!("case {case:?}");
        };
        let want = (want[0], want[1], want[2], want[3]);
        let fragment = w.len() == 9 && w[8] == "fragment";
        let (src, dst) = (addr_word(src)?, addr_word(dst)?);
        let port: Option<u16> = port.parse().ok();
        let sport = 51000 + u16::try_from(i)?;
        let (src_s, dst_s) = (src.to_string(), dst.to_string());
        let mut argv = vec!["explain", &src_s, &dst_s, "--proto", proto_name];
        argv.extend(["--state-dir", &state, "-o", "json"]);
        let port_s = port.map(|p| p.to_string());
        if let Some(p) = &port_s {
            argv.extend(["--port", p]);
        }
        if fragment {
            argv.push("--fragment");
        }
        let e = cli_in(&s.lab, &argv)?.ok()?.json()?;
        let k = &e["kernel"];
        let said = (
            k["src"]["env"].as_str().unwrap_or(""),
            k["dst"]["env"].as_str().unwrap_or(""),
            k["verdict"].as_str().unwrap_or(""),
            k["rule"].as_str().unwrap_or(""),
        );
        assert_eq!(said, want, "explain {argv:?}: {e:#}");
        assert_eq!(e["agree"], true, "the saved copy agrees: {e:#}");

        // The same packet through the agent's program.
        let (l4, proto) = match (*proto_name, port) {
            ("tcp", Some(p)) => (Packet::syn(sport, p), 6),
            ("udp", Some(p)) => (Packet::data(b"explain").udp(sport, p), 17),
            ("icmp", _) => (Packet::echo(false), 1),
            ("icmpv6", _) => (Packet::echo(true), 58),
            _ => bail!("case l4"),
        };
        let data = match (src, dst, fragment) {
            (IpAddr::V4(a), IpAddr::V4(b), true) => l4
                .ipv4(&Ipv4 {
                    src: a.octets(),
                    dst: b.octets(),
                    proto,
                    frag: 0x0010,
                    ..Ipv4::default()
                })
                .ethernet(&[])
                .into_bytes(),
            _ => ip_frame(src, dst, proto, l4),
        };
        let before = counters(&pin_dir)?;
        let action = test_run(&prog, &data, None, REPEAT)?.action;
        let after = counters(&pin_dir)?;
        let moved: Vec<(u32, u32, u32)> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 >= b.1 + u64::from(REPEAT))
            .map(|(_, a)| a.0)
            .collect();
        let env_id = |side: &str| {
            k[side]["env_id"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
        };
        let name = |v: u32| verdict::name(u8::try_from(v).unwrap_or(u8::MAX));
        let verdict = moved.first().map(|m| name(m.2));
        assert_eq!(
            moved,
            vec![(
                env_id("src").unwrap_or(99),
                env_id("dst").unwrap_or(99),
                (0..4).find(|v| name(*v) == want.2).unwrap_or(99)
            )],
            "case {argv:?}: the kernel counted {moved:?} (verdict {verdict:?}), explain said {said:?}"
        );
        let dropped = action == ACTION_SHOT;
        assert_eq!(
            dropped,
            want.2 == "drop",
            "case {argv:?}: TC action {action}"
        );
        if want.2 != "allow" {
            // The event the kernel emitted names the rule.
            let ev = wait_event(&s.agent, &format!("TestRun {argv:?}"), |ev| {
                let src_ok = ev.src == src || Some(ev.src) == src_unmapped(src);
                src_ok && (fragment || ev.proto == 1 || ev.proto == 58 || ev.sport == Some(sport))
            })?;
            assert_eq!(ev.rule, want.3, "case {argv:?}: event {}", ev.raw);
            assert_eq!(ev.verdict, want.2, "case {argv:?}: event {}", ev.raw);
        }
    }
    Ok(())
}

fn src_unmapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}
