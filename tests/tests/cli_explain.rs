//! `envfence explain` as the real binary against a real agent in the lab,
//! checked against the kernel itself: crafted frames run through the
//! agent's own attached program (BPF_PROG_TEST_RUN on the program id
//! `status` reports), and the counter cell that moved (source env,
//! destination env, verdict) and the rule of the event the agent printed
//! must be what `explain` said, read from the pinned maps.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use envfence_tests::cli::*;
use envfence_tests::fixture::agent_lock;
use envfence_tests::packet::{ip_frame, Ipv4, Packet};
use serde_json::Value;

/// `explain -o json` for a set of packets, then each packet through the
/// agent's own ingress program: the counter cell that moved and the
/// event's rule must be explain's.
#[test]
fn explain_matches_the_kernel() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let sock = s.socket();
    let st = cli_in(&s.lab, &["status", "--socket", &sock, "-o", "json"])?
        .ok()?
        .json()?;
    check_explain_against_the_kernel(&s, &st)
}

/// `explain --config` against a file that differs from what is loaded:
/// the disagreement is shown (golden) and exits 3; a flow the change does
/// not touch still agrees.
#[test]
fn explain_compares_a_file_with_what_is_loaded() -> Result<()> {
    let _g = agent_lock();
    let s = start(&[])?;
    let state = s.state();
    // --- explain against a file that differs from what is loaded
    let other = s.tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        envfence::policy::EXAMPLE_POLICY.replacen("verdict: drop", "verdict: allow", 1),
    )?;
    let other_s = other.display().to_string();
    let agree = explain_5432(
        &s,
        "10.30.1.2",
        &state,
        &s.policy.display().to_string(),
        &[],
    )?
    .ok()?;
    assert!(
        agree.stdout.contains("agrees with the kernel"),
        "{}",
        agree.stdout
    );
    let disagree = explain_5432(&s, "10.30.1.2", &state, &other_s, &[])?.code(3)?;
    golden(
        "explain_disagree.txt",
        &normalize_paths(&disagree.stdout, s.tmp.path()),
    )?;
    assert!(disagree.stderr.contains("DISAGREE"), "{}", disagree.stderr);
    let dj = explain_5432(&s, "10.30.1.2", &state, &other_s, &["-o", "json"])?
        .code(3)?
        .json()?;
    assert_eq!(dj["agree"], false);
    assert_eq!(dj["kernel"]["verdict"], "drop");
    assert_eq!(dj["file"]["verdict"], "allow");
    let diffs: Vec<String> = dj["differences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(diffs, ["verdict: kernel drop, file allow"]);
    // A flow the change does not touch still agrees.
    explain_5432(&s, "10.20.1.2", &state, &other_s, &["--proto", "udp"])?.ok()?;
    Ok(())
}

/// agent's own ingress program; the counter cell that moved and the event's
/// rule must be explain's.
/// `envfence explain SRC 10.10.1.2 --port 5432` in the node namespace,
/// comparing with the policy file `config`, plus `extra` arguments.
fn explain_5432(s: &Setup, src: &str, state: &str, config: &str, extra: &[&str]) -> Result<Run> {
    let mut args = vec![
        "explain",
        src,
        "10.10.1.2",
        "--port",
        "5432",
        "--state-dir",
        state,
        "--config",
        config,
    ];
    args.extend_from_slice(extra);
    cli_in(&s.lab, &args)
}

fn check_explain_against_the_kernel(s: &Setup, status: &Value) -> Result<()> {
    let prog = status["interfaces"][0]["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "ingress"))
        .and_then(|h| h["program_id"].as_u64())
        .ok_or_else(|| anyhow!("no ingress program id in {status:#}"))?;
    let prog = u32::try_from(prog)?;
    let pin_dir = s.pin_dir()?;
    no_source_check_on_lo(&pin_dir)?;
    let state = s.state();
    struct Case {
        src: &'static str,
        dst: &'static str,
        proto: u8,
        port: Option<u16>,
        fragment: bool,
        want: (&'static str, &'static str, &'static str, &'static str),
    }
    let case = |src, dst, proto, port, want| Case {
        src,
        dst,
        proto,
        port,
        fragment: false,
        want,
    };
    let mut cases = vec![
        case(
            "10.30.1.2",
            "10.10.1.2",
            6,
            Some(5432),
            ("test", "production", "drop", "test-to-prod"),
        ),
        case(
            "10.30.1.2",
            "10.10.1.2",
            17,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "10.30.9.9",
            "10.10.200.1",
            6,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "10.20.1.2",
            "10.10.2.2",
            17,
            Some(5432),
            ("staging", "production", "audit", "staging-to-prod"),
        ),
        case(
            "10.0.0.7",
            "10.10.1.2",
            1,
            None,
            ("ops", "production", "log", "ops-to-prod"),
        ),
        case(
            "10.10.1.2",
            "10.40.1.2",
            6,
            Some(22),
            ("production", "dev", "drop", "prod-to-test"),
        ),
        case(
            "192.0.2.1",
            "10.10.1.2",
            6,
            Some(443),
            ("world", "production", "allow", "default"),
        ),
        case(
            "fd00:30:1::2",
            "fd00:10:1::2",
            17,
            Some(53),
            ("test", "production", "allow", "test-dns-in-prod"),
        ),
        case(
            "fd00:40:1::2",
            "fd00:10:1::2",
            6,
            Some(80),
            ("dev", "production", "drop", "test-to-prod"),
        ),
        case(
            "fd00:20:7::2",
            "fd00:10:2::2",
            58,
            None,
            ("staging", "production", "audit", "staging-to-prod"),
        ),
        case(
            "::ffff:10.30.1.2",
            "::ffff:10.10.1.2",
            6,
            Some(8443),
            ("test", "production", "drop", "test-to-prod"),
        ),
        case(
            "fd00:0:0:1::5",
            "fd00:30:1::2",
            17,
            Some(123),
            ("ops", "test", "allow", "default"),
        ),
    ];
    // A non-first fragment of DNS test -> production: the ports cannot be
    // read, so the strictest verdict of the pair (the port rule's allow does
    // not count): drop.
    cases.push(Case {
        fragment: true,
        ..case(
            "10.30.1.3",
            "10.10.1.3",
            17,
            Some(53),
            ("test", "production", "drop", "test-to-prod"),
        )
    });
    for (i, c) in cases.iter().enumerate() {
        let sport = 51000 + u16::try_from(i)?;
        let proto_name = match c.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            _ => bail!("case proto"),
        };
        let mut args = vec![
            "explain".to_owned(),
            c.src.to_owned(),
            c.dst.to_owned(),
            "--proto".to_owned(),
            proto_name.to_owned(),
            "--state-dir".to_owned(),
            state.clone(),
            "-o".to_owned(),
            "json".to_owned(),
        ];
        if let Some(p) = c.port {
            args.extend(["--port".to_owned(), p.to_string()]);
        }
        if c.fragment {
            args.push("--fragment".to_owned());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = cli_in(&s.lab, &argv)?.ok()?.json()?;
        let k = &e["kernel"];
        let said = (
            k["src"]["env"].as_str().unwrap_or(""),
            k["dst"]["env"].as_str().unwrap_or(""),
            k["verdict"].as_str().unwrap_or(""),
            k["rule"].as_str().unwrap_or(""),
        );
        assert_eq!(said, c.want, "explain {argv:?}: {e:#}");
        assert_eq!(e["agree"], true, "the saved copy agrees: {e:#}");

        // The same packet through the agent's program.
        let (src, dst) = (ip(c.src), ip(c.dst));
        let l4 = match (c.proto, c.port) {
            (6, Some(p)) => Packet::syn(sport, p),
            (17, Some(p)) => Packet::data(b"explain").udp(sport, p),
            (1, _) => Packet::echo(false),
            (58, _) => Packet::echo(true),
            _ => bail!("case l4"),
        };
        let data = match (src, dst, c.fragment) {
            (IpAddr::V4(a), IpAddr::V4(b), true) => l4
                .ipv4(&Ipv4 {
                    src: a.octets(),
                    dst: b.octets(),
                    proto: c.proto,
                    frag: 0x0010,
                    ..Ipv4::default()
                })
                .ethernet(&[])
                .into_bytes(),
            _ => ip_frame(src, dst, c.proto, l4),
        };
        let before = counters(&pin_dir)?;
        let action = test_run(prog, &data)?;
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
        let verdict = moved.first().map(|m| verdict_name(m.2));
        assert_eq!(
            moved,
            vec![(
                env_id("src").unwrap_or(99),
                env_id("dst").unwrap_or(99),
                (0..4).find(|v| verdict_name(*v) == c.want.2).unwrap_or(99)
            )],
            "case {argv:?}: the kernel counted {moved:?} (verdict {verdict:?}), explain said {said:?}"
        );
        let dropped = action == 2;
        assert_eq!(
            dropped,
            c.want.2 == "drop",
            "case {argv:?}: TC action {action}"
        );
        if c.want.2 != "allow" {
            // The event the kernel emitted names the rule.
            let want_rule = c.want.3;
            let ev = wait_event(&s.agent, &format!("TestRun {argv:?}"), |ev| {
                let src_ok = ev.src == src || Some(ev.src) == src_unmapped(src);
                src_ok && (c.fragment || ev.proto == 1 || ev.proto == 58 || ev.sport == Some(sport))
            })?;
            assert_eq!(ev.rule, want_rule, "case {argv:?}: event {}", ev.raw);
            assert_eq!(ev.verdict, c.want.2, "case {argv:?}: event {}", ev.raw);
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
