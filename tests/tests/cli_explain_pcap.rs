//! `envfence explain --pcap FILE` as the real binary, held to the kernel:
//! the corpus' frames (the catalogue's shapes and the lab's real traffic)
//! written as pcap, pcapng and Linux cooked SLL / SLL2 captures (the GSO
//! shapes in the pcapng ones only, each packet's comment naming its
//! `gso_size`), each frame
//! run through the real ingress program (BPF_PROG_TEST_RUN, connection
//! tracking on as the agent runs, maps pinned under a temporary bpffs
//! root), and explain's line for it compared with what the kernel did (TC
//! action, the decision tag's verdict and environments) and explain's
//! summary with the counters' deltas per verdict; the same from `--policy
//! FILE`; the counters unchanged by explaining. Also: corrupt captures fail
//! with one line naming the packet, the filters and output shapes, and a
//! large capture streams in bounded memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use envfence::datapath::{inspect::PinnedState, Datapath, Hook, LoadOptions};
use envfence::policy::{self, SourceCheck};
use envfence::state::{self, SavedPolicy};
use envfence_ebpf::{tag, verdict};
use envfence_tests::agent::{Agent, AgentOptions};
use envfence_tests::cli::{cli, cli_in, run_cmd, Run};
use envfence_tests::fixture::{agent_lock, pod_addr, root};
use envfence_tests::gen::catalog::gso_of_comment;
use envfence_tests::gen::kernel_refuses;
use envfence_tests::gen::pcap::{self, Capture, Format, Packet};
use envfence_tests::lab::{Family, Lab, NODE};
use envfence_tests::packet::{ip_frame, Packet as Pkt};
use envfence_tests::testrun::{test_run, SkbCtx, ACTION_SHOT, LO_IFINDEX};
use serde_json::Value;

const SLL: u32 = 113;
const SLL2: u32 = 276;
/// Frames BPF_PROG_TEST_RUN takes (about a page).
const MAX_REPLAY: usize = 3500;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn example_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy::EXAMPLE_POLICY)?;
    Ok(path)
}

/// The Ethernet frames of the corpus' pcap files (not the GSO shapes,
/// [`gso_frames`]; not those BPF_PROG_TEST_RUN refuses), in file order.
fn corpus_frames() -> Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let cap = pcap::read(&f)?;
        ensure!(cap.linktype == pcap::LINKTYPE_ETHERNET, "{}", f.display());
        out.extend(
            cap.packets
                .into_iter()
                .map(|p| p.data)
                .filter(|d| !kernel_refuses(d) && d.len() <= MAX_REPLAY),
        );
    }
    Ok(out)
}

/// A frame, its pcapng comment and its skb's `gso_size`.
type GsoFrame = (Vec<u8>, Option<String>, u32);

/// The corpus' GSO shapes (`shapes-gso.pcapng`, those BPF_PROG_TEST_RUN
/// takes): each frame, its packet comment (naming its `gso_size`) and the
/// `gso_size` the comment names, read by the corpus' own convention
/// ([`gso_of_comment`]).
fn gso_frames() -> Result<Vec<GsoFrame>> {
    let f = corpus().join("shapes-gso.pcapng");
    let cap = pcap::read(&f)?;
    ensure!(cap.linktype == pcap::LINKTYPE_ETHERNET, "{}", f.display());
    Ok(cap
        .packets
        .into_iter()
        .filter(|p| !kernel_refuses(&p.data) && p.data.len() <= MAX_REPLAY)
        .map(|p| {
            let gso = gso_of_comment(p.comment.as_deref());
            (p.data, p.comment, gso)
        })
        .collect())
}

/// Flows the example policy lets through and tracks (test -> production
/// DNS), their replies (production -> test: dropped without the flow), a
/// reply with no flow, ICMP errors quoting a tracked flow and an untracked
/// one, and a SYN the other way: the kernel's connection tracker and
/// explain's tracking within the capture must agree.
fn flows_and_replies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for fam in [Family::V4, Family::V6] {
        let (t, p) = (pod_addr("test", fam, 1), pod_addr("production", fam, 1));
        // A reply before its flow: dropped (explain says it would pass if
        // the kernel tracked a flow opened before the capture).
        out.push(ip_frame(p, t, 17, Pkt::data(b"early").udp(53, 41000)));
        out.push(ip_frame(t, p, 17, Pkt::data(b"query").udp(41000, 53)));
        out.push(ip_frame(p, t, 17, Pkt::data(b"answer").udp(53, 41000)));
        // ICMP errors back to the query's source: one quoting the query
        // (related), one quoting a query never sent (judged by the policy).
        let (icmp, unreachable) = match fam {
            Family::V4 => (1, [3, 3]),
            Family::V6 => (58, [1, 4]),
        };
        for sport in [41000, 41999] {
            let quoted = Pkt::data(b"query").udp(sport, 53).ip(t, p, 17).into_bytes();
            let error = Pkt::icmp(unreachable[0], unreachable[1], [0; 4], &quoted);
            out.push(ip_frame(p, t, icmp, error));
        }
        out.push(ip_frame(t, p, 6, Pkt::syn(41001, 53)));
        out.push(ip_frame(p, t, 6, Pkt::new().tcp(53, 41001, 0x12)));
        out.push(ip_frame(t, p, 6, Pkt::new().tcp(41001, 53, 0x10)));
        out.push(ip_frame(p, t, 6, Pkt::new().tcp(53, 41001, 0x14)));
        // After the RST: no flow any more.
        out.push(ip_frame(p, t, 6, Pkt::new().tcp(53, 41001, 0x10)));
        // A SYN from production to test is never a reply.
        out.push(ip_frame(p, t, 6, Pkt::syn(53, 41000)));
    }
    out
}

/// A Linux cooked header for the Ethernet frame `f` (its EtherType as the
/// protocol; packet type "to us").
fn cooked(linktype: u32, f: &[u8]) -> Vec<u8> {
    let (ethertype, payload) = (&f[12..14], &f[14..]);
    let mut out = Vec::new();
    if linktype == SLL {
        out.extend([0, 0, 0, 1, 0, 6]);
        out.extend(&f[6..12]);
        out.extend([0, 0]);
        out.extend(ethertype);
    } else {
        out.extend(ethertype);
        out.extend([0, 0]);
        out.extend(7u32.to_be_bytes());
        out.extend([0, 1, 0, 6]);
        out.extend(&f[6..12]);
        out.extend([0, 0]);
    }
    out.extend(payload);
    out
}

/// The frames (each with its pcapng comment) as a capture of `format` and
/// `linktype`.
fn capture(format: Format, linktype: u32, frames: &[(Vec<u8>, Option<String>)]) -> Capture {
    let mut cap = pcap::ethernet_capture(format, frames.to_vec());
    if linktype != pcap::LINKTYPE_ETHERNET {
        cap.linktype = linktype;
        for p in &mut cap.packets {
            p.data = cooked(linktype, &p.data);
            p.orig_len = u32::try_from(p.data.len()).unwrap_or(u32::MAX);
            p.linktype = linktype;
        }
    }
    cap
}

fn jsonl(run: &Run) -> Result<Vec<Value>> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The arguments `explain --pcap FILE ARGS... -o jsonl`.
fn explain_args<'a>(file: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["explain", "--pcap", file], args, &["-o", "jsonl"]].concat()
}

/// `envfence explain --pcap FILE ARGS... -o jsonl`, a JSON value a line.
fn explain_jsonl(file: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let file = file.display().to_string();
    jsonl(&cli(&explain_args(&file, args))?.ok()?)
}

/// A bpffs directory of this test's own, removed at the end.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new(name: &str) -> Result<Self> {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/envfence-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(PinRoot(p))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Packets counted by verdict name, every environment pair.
fn counted(pins: &Path) -> Result<BTreeMap<String, u64>> {
    let st = PinnedState::open(pins)?;
    let t = st.verdict_totals(0)?;
    Ok(t.packets
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(v, n)| (verdict::name(v as u8).to_owned(), *n))
        .collect())
}

/// What the kernel did with one frame: drop?, and (verdict, src, dst) when
/// it judged it.
type Kernel = (bool, Option<(u8, u32, u32)>);

#[test]
fn explain_pcap_matches_the_kernel_packet_by_packet() -> Result<()> {
    root();
    let _g = agent_lock();
    let tmp = tempfile::tempdir()?;
    let pins = PinRoot::new("pcap")?;
    let mut frames = corpus_frames()?;
    ensure!(frames.len() > 500, "only {} corpus frames", frames.len());
    frames.extend(flows_and_replies());
    // Then the GSO shapes, last: replayed with their gso_size, and in the
    // pcapng captures only (a packet comment names the gso_size; a pcap
    // cannot say it), so the frames before them are judged alike in all.
    let gso = gso_frames()?;
    ensure!(
        gso.len() >= 100 && gso.iter().all(|g| g.2 != 0),
        "{} GSO frames, not all with a gso_size",
        gso.len()
    );
    let plain = frames.len();

    // The real programs, pinned, with the example policy.
    let p = policy::parse(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN)?;
    let compiled = policy::compile(&p);
    let mut dp = Datapath::load_with(LoadOptions {
        debug_tag_decision: true,
        pin_root: Some(pins.0.clone()),
        no_verdict_cache: false,
        no_conntrack: false,
        conntrack_capacity: None,
        log_level: 0,
        object: None,
    })?;
    dp.apply_policy(&compiled, None, Duration::from_secs(3600))?;
    dp.set_source_check(LO_IFINDEX, SourceCheck::OFF)?;
    let state_dir = tmp.path().join("state");
    let generation = PinnedState::open(&pins.0)?.config()?.generation;
    state::save(
        &state_dir,
        &SavedPolicy::new(
            policy::EXAMPLE_ORIGIN.into(),
            policy::EXAMPLE_POLICY.into(),
            &compiled,
            generation,
        ),
    )?;

    // Every frame through the kernel, in capture order.
    let before = counted(&pins.0)?;
    let prog = dp.program(Hook::Ingress)?;
    let mut kernel: Vec<Kernel> = Vec::new();
    let mut after_plain = before.clone();
    let replayed = frames
        .iter()
        .map(|f| (f, 0))
        .chain(gso.iter().map(|g| (&g.0, g.2)));
    for (i, (f, gso_size)) in replayed.enumerate() {
        if i == plain {
            after_plain = counted(&pins.0)?;
        }
        let ctx = SkbCtx {
            gso_size,
            gso_segs: if gso_size != 0 { 2 } else { 0 },
            ..SkbCtx::default()
        };
        let out = test_run(prog, f, Some(ctx), 1)?;
        let mark = out.ctx.map_or(0, |c| c.mark);
        let judged = (mark & 0xff00_0000 == tag::JUDGED).then_some((
            ((mark >> 16) & 0xff) as u8,
            (mark >> 8) & 0xff,
            mark & 0xff,
        ));
        kernel.push((out.action == ACTION_SHOT, judged));
    }
    let after = counted(&pins.0)?;
    let delta_of = |from: &BTreeMap<String, u64>, to: &BTreeMap<String, u64>| {
        let mut delta: BTreeMap<String, u64> = BTreeMap::new();
        for (v, n) in to {
            let d = n - from.get(v).copied().unwrap_or(0);
            if d > 0 {
                delta.insert(v.clone(), d);
            }
        }
        delta
    };
    let (delta_plain, delta) = (delta_of(&before, &after_plain), delta_of(&before, &after));
    ensure!(
        delta_plain != delta,
        "the GSO frames changed no counter: {delta:?}"
    );
    let plain_frames: Vec<(Vec<u8>, Option<String>)> =
        frames.iter().map(|f| (f.clone(), None)).collect();
    let all_frames: Vec<(Vec<u8>, Option<String>)> = plain_frames
        .iter()
        .cloned()
        .chain(gso.iter().map(|g| (g.0.clone(), g.1.clone())))
        .collect();

    let example = example_file(tmp.path())?.display().to_string();
    let (pin_root, state_s) = (
        pins.0.display().to_string(),
        state_dir.display().to_string(),
    );
    let mut hedged = 0;
    for (name, format, linktype) in [
        ("eth.pcap", pcap::PCAP_US, pcap::LINKTYPE_ETHERNET),
        ("eth.pcapng", Format::PcapNg, pcap::LINKTYPE_ETHERNET),
        ("sll.pcap", pcap::PCAP_US, SLL),
        ("sll2.pcapng", Format::PcapNg, SLL2),
    ] {
        let file = tmp.path().join(name);
        let (frames, delta) = if format == Format::PcapNg {
            (&all_frames, &delta)
        } else {
            (&plain_frames, &delta_plain)
        };
        pcap::write(&file, &capture(format, linktype, frames))?;
        let started = std::time::Instant::now();
        let lines = explain_jsonl(&file, &["--pin-root", &pin_root, "--state-dir", &state_s])?;
        eprintln!(
            "{name}: {} packets explained from the pinned maps in {:.2?}",
            frames.len(),
            started.elapsed()
        );
        ensure!(
            lines.len() == frames.len(),
            "{name}: {} lines for {} frames",
            lines.len(),
            frames.len()
        );
        let mut judged_by_verdict: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (line, (dropped, judged))) in lines.iter().zip(&kernel).enumerate() {
            let ctx = || {
                format!(
                    "{name} packet {}: explain {line}, kernel dropped {dropped} judged {judged:?}",
                    i + 1
                )
            };
            ensure!(line["index"] == i as u64 + 1, "{}", ctx());
            let action = if *dropped { "drop" } else { "pass" };
            let reason = line["reason"].as_str().unwrap_or("");
            // Only a reply may be hedged: an ICMP error the kernel found
            // related quotes a flow opened within the capture (the kernel's
            // table starts empty), and explain must say `related` exactly.
            let hedge = reason.contains("would pass as reply");
            let said_verdict = line["verdict"].as_str().unwrap_or("");
            match judged {
                Some((v, s, d)) => {
                    let kv = verdict::name(*v);
                    // A hedged line keeps the policy's verdict and says
                    // what it would be if the kernel tracks the flow: it
                    // counts as what it says it would be.
                    let counted_as = if hedge && kv == "reply" {
                        hedged += 1;
                        kv
                    } else {
                        ensure!(said_verdict == kv, "verdict: {}", ctx());
                        ensure!(line["action"] == action, "action: {}", ctx());
                        said_verdict
                    };
                    ensure!(
                        line["src_env_id"] == *s && line["dst_env_id"] == *d,
                        "environments: {}",
                        ctx()
                    );
                    *judged_by_verdict.entry(counted_as.to_owned()).or_insert(0) += 1;
                }
                None => {
                    ensure!(
                        line["src_env_id"].is_null(),
                        "judged by explain only: {}",
                        ctx()
                    );
                    ensure!(line["action"] == action, "action: {}", ctx());
                }
            }
        }
        ensure!(
            judged_by_verdict == *delta,
            "{name}: explain's verdicts {judged_by_verdict:?}, the kernel counted {delta:?}"
        );
        // The comparison holds errors the kernel found related (to a flow
        // the capture opened), each said `related` by explain itself.
        ensure!(
            delta.get("related").is_some_and(|n| *n > 0),
            "no related ICMP error among the frames: {delta:?}"
        );
        // The policy file gives the same answers, names included.
        let file_lines = explain_jsonl(&file, &["--policy", &example])?;
        ensure!(
            file_lines.len() == lines.len(),
            "{name}: --policy gave {} lines",
            file_lines.len()
        );
        for (a, b) in lines.iter().zip(&file_lines) {
            for k in [
                "verdict", "action", "src_env", "dst_env", "rule", "reason", "outer", "inner",
            ] {
                ensure!(a[k] == b[k], "{name}: {k}: pinned {a}, file {b}");
            }
        }
        // Explaining counted nothing.
        ensure!(
            counted(&pins.0)? == after,
            "{name}: explaining moved the counters"
        );
    }
    eprintln!(
        "{plain} frames x 4 captures and {} GSO frames x 2 pcapng captures agree with the kernel ({hedged} hedged lines); counters {delta:?}",
        gso.len()
    );
    Ok(())
}

/// A pcap of `records` (caplen, bytes) with link type `linktype`.
fn classic(snaplen: u32, linktype: u32, records: &[(u32, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, snaplen, linktype] {
        b.extend(v.to_le_bytes());
    }
    for (caplen, data) in records {
        for v in [1u32, 2, *caplen, data.len() as u32] {
            b.extend(v.to_le_bytes());
        }
        b.extend_from_slice(data);
    }
    b
}

#[test]
fn corrupt_captures_fail_with_the_packet_index() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let example = example_file(tmp.path())?.display().to_string();
    let frame = ip_frame(
        pod_addr("test", Family::V4, 1),
        pod_addr("production", Family::V4, 1),
        6,
        Pkt::syn(40000, 5432),
    );
    let rec = (frame.len() as u32, frame.as_slice());
    let good = classic(65535, 1, &[rec, rec]);
    let ng = pcap::encode(&pcap::ethernet_capture(
        Format::PcapNg,
        vec![(frame.clone(), None); 3],
    ))?;
    // pcapng: spoil the third packet's block length (blocks: SHB, IDB,
    // then one EPB per packet).
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 8 <= ng.len() {
        starts.push(at);
        at += u32::from_le_bytes([ng[at + 4], ng[at + 5], ng[at + 6], ng[at + 7]]) as usize;
    }
    ensure!(starts.len() == 5, "blocks at {starts:?}");
    let third = starts[4];
    let mut bad_len = ng.clone();
    bad_len[third + 4..third + 8].copy_from_slice(&7u32.to_le_bytes());
    let sll = classic(65535, SLL, &[rec, (10, &[0u8; 10])]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut-in-header.pcap",
            good[..24 + 16 + frame.len() + 9].to_vec(),
            "packet 2",
        ),
        (
            "cut-in-file-header.pcap",
            good[..20].to_vec(),
            "before packet 1",
        ),
        ("bad-block-length.pcapng", bad_len, "packet 3"),
        (
            "absurd-snaplen.pcap",
            classic(u32::MAX, 1, &[rec, (0xfff0_0000, &frame)]),
            "packet 2",
        ),
        ("unknown-link.pcap", classic(65535, 147, &[rec]), "packet 1"),
        ("short-cooked.pcap", sll, "packet 2"),
        ("empty.pcap", Vec::new(), "before packet 1"),
        (
            "not-a-capture.pcap",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "not a capture",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, &bytes)?;
        let p = path.display().to_string();
        let run = cli(&explain_args(&p, &["--policy", &example]))?.code(1)?;
        let err = run.stderr.trim_end();
        ensure!(!err.contains("panicked"), "{name}: {err}");
        ensure!(
            err.lines().count() == 1,
            "{name}: more than one line: {err}"
        );
        ensure!(
            err.starts_with("envfence: error: ") && err.contains(want),
            "{name}: want {want:?} in {err}"
        );
        ensure!(err.contains(name), "{name}: the file is not named: {err}");
    }
    Ok(())
}

#[test]
fn filters_summary_and_json_shape() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let example = example_file(tmp.path())?.display().to_string();
    let file = corpus().join("lab-traffic.pcap").display().to_string();
    let base = [
        "explain",
        "--pcap",
        file.as_str(),
        "--policy",
        example.as_str(),
    ];
    let with = |extra: &[&str]| -> Result<Run> { cli(&[&base[..], extra].concat())?.ok() };
    let all = jsonl(&with(&["-o", "jsonl"])?)?;
    let drops = jsonl(&with(&["-o", "jsonl", "--verdict", "drop"])?)?;
    let want: Vec<&Value> = all.iter().filter(|l| l["action"] == "drop").collect();
    ensure!(!want.is_empty(), "the lab traffic has drops");
    ensure!(
        drops.iter().collect::<Vec<_>>() == want,
        "--verdict drop: {} lines, {} dropped",
        drops.len(),
        want.len()
    );
    let test = jsonl(&with(&["-o", "jsonl", "--env", "test"])?)?;
    ensure!(
        !test.is_empty() && test.len() < all.len(),
        "--env test: {} of {}",
        test.len(),
        all.len()
    );
    ensure!(
        test.iter()
            .all(|l| l["src_env"] == "test" || l["dst_env"] == "test"),
        "--env test"
    );
    let allow_test = jsonl(&with(&[
        "-o",
        "jsonl",
        "--env",
        "test",
        "--verdict",
        "allow",
    ])?)?;
    ensure!(
        allow_test.iter().all(|l| l["verdict"] == "allow"),
        "two filters"
    );
    // -o json: the records and the summary.
    let doc = with(&["-o", "json"])?.json()?;
    let packets = doc["packets"].as_array().context("packets")?;
    ensure!(packets.len() == all.len(), "json packets");
    ensure!(
        doc["capture"]
            .as_str()
            .is_some_and(|c| c.ends_with("lab-traffic.pcap")),
        "{}",
        doc["capture"]
    );
    let sum = &doc["summary"];
    ensure!(
        sum["packets"] == all.len() as u64 && sum["shown"] == all.len() as u64,
        "{sum}"
    );
    let by_action_drop = sum["by_action"]["drop"].as_u64().unwrap_or(0);
    ensure!(by_action_drop == want.len() as u64, "{sum}");
    let pairs_total: u64 = sum["pairs"]
        .as_array()
        .context("pairs")?
        .iter()
        .filter_map(|p| p["packets"].as_u64())
        .sum();
    let unjudged: u64 = sum["unjudged"]
        .as_object()
        .context("unjudged")?
        .values()
        .filter_map(Value::as_u64)
        .sum();
    ensure!(pairs_total + unjudged == all.len() as u64, "{sum}");
    for key in [
        "index",
        "time",
        "interface",
        "direction",
        "len",
        "outer",
        "inner",
        "src_env",
        "dst_env",
        "rule",
        "verdict",
        "action",
        "reason",
        "source_check",
    ] {
        ensure!(packets[0].get(key).is_some(), "no {key} in {}", packets[0]);
    }
    // The table: a line per packet, then the summary table.
    let table = with(&["--verdict", "drop"])?.stdout;
    ensure!(
        table.contains("SOURCE ENV") && table.contains(&format!("{} shown", want.len())),
        "{table}"
    );
    ensure!(
        table.lines().filter(|l| l.contains("DROP")).count() == want.len(),
        "{table}"
    );
    // A reply within the capture: a flow the capture opens, answered.
    let replies: Vec<&Value> = all.iter().filter(|l| l["verdict"] == "reply").collect();
    for r in &replies {
        ensure!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("tracked within the capture")),
            "{r}"
        );
    }
    eprintln!(
        "lab traffic: {} packets, {} dropped, {} replies",
        all.len(),
        want.len(),
        replies.len()
    );
    Ok(())
}

/// Peak RSS (KiB) and wall seconds of `args` under /usr/bin/time -v.
fn measured(args: &[&str]) -> Result<(u64, f64, Run)> {
    let bin = envfence_tests::agent::agent_binary()?;
    let run = run_cmd(Command::new("/usr/bin/time").arg("-v").arg(bin).args(args))?;
    let field = |name: &str| -> Option<String> {
        run.stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let rss = field("Maximum resident set size (kbytes):")
        .and_then(|v| v.parse().ok())
        .context("no peak RSS from /usr/bin/time")?;
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):").unwrap_or_default();
    let secs = wall
        .split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
    Ok((rss, secs, run))
}

/// 200,000 packets stream: peak RSS stays that of a 2,000-packet capture
/// (plus a little), far below the capture's size.
#[test]
fn a_large_capture_streams_in_bounded_memory() -> Result<()> {
    if !Path::new("/usr/bin/time").exists() {
        bail!("/usr/bin/time is needed to measure the peak RSS");
    }
    let tmp = tempfile::tempdir()?;
    let example = example_file(tmp.path())?.display().to_string();
    let mut shapes = Vec::new();
    for (i, (s, d)) in [
        ("test", "production"),
        ("production", "test"),
        ("staging", "production"),
        ("dev", "test"),
    ]
    .iter()
    .enumerate()
    {
        for fam in [Family::V4, Family::V6] {
            shapes.push(ip_frame(
                pod_addr(s, fam, 1),
                pod_addr(d, fam, 1),
                17,
                Pkt::data(&[0u8; 400]).udp(40000 + i as u16, 53 + i as u16),
            ));
        }
    }
    let mut sizes = Vec::new();
    for n in [2_000usize, 200_000] {
        let path = tmp.path().join(format!("big-{n}.pcap"));
        let cap = Capture {
            format: pcap::PCAP_US,
            linktype: pcap::LINKTYPE_ETHERNET,
            fcs_len: None,
            packets: (0..n)
                .map(|i| {
                    Packet::ethernet(
                        1_700_000_000 + (i / 1000) as u64,
                        0,
                        shapes[i % shapes.len()].clone(),
                    )
                })
                .collect(),
        };
        pcap::write(&path, &cap)?;
        let bytes = std::fs::metadata(&path)?.len();
        let p = path.display().to_string();
        let (rss, secs, run) =
            measured(&["explain", "--pcap", &p, "--policy", &example, "-o", "jsonl"])?;
        ensure!(run.code == 0, "explain failed: {}", run.stderr);
        let lines = run.stdout.lines().count();
        ensure!(lines == n, "{lines} lines for {n} packets");
        eprintln!(
            "explain --pcap: {n} packets ({} MiB): peak RSS {} KiB, {secs:.2} s, {:.0} packets/s",
            bytes >> 20,
            rss,
            n as f64 / secs.max(0.01)
        );
        sizes.push((n, bytes, rss));
    }
    let (small, large) = (sizes[0].2, sizes[1].2);
    ensure!(
        large < small + 8 * 1024,
        "peak RSS grew from {small} KiB to {large} KiB with the capture"
    );
    ensure!(
        large * 1024 < sizes[1].1,
        "peak RSS {large} KiB is not below the capture's {} bytes",
        sizes[1].1
    );
    Ok(())
}

/// What tcpdump (`-i any`: Linux cooked SLL2) wrote in the node namespace
/// while `f` ran.
fn tcpdump_any<T>(lab: &Lab, file: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut cmd = Command::new("tcpdump");
    cmd.args([
        "-i",
        "any",
        "-n",
        "-U",
        "--immediate-mode",
        "-Z",
        "root",
        "-w",
    ])
    .arg(file)
    .args(["udp", "and", "portrange", "5400-5499"]);
    let dump = lab.spawn_in_ns(NODE, cmd)?;
    ensure!(
        dump.wait_for_stderr("listening on", Duration::from_secs(10)),
        "tcpdump did not start: {}",
        dump.stderr_tail(5)
    );
    let result = f();
    std::thread::sleep(Duration::from_millis(300));
    dump.terminate(Duration::from_secs(5))?;
    result
}

/// Lab traffic captured by tcpdump without the agent: the flows explain
/// says the agent drops are exactly those not delivered once the agent
/// runs; the capture taken with the agent, explained from its pinned maps
/// in the node's namespace (interfaces named by the cooked header, so the
/// source check is asked), says the same of every packet.
#[test]
fn lab_capture_predicts_what_the_agent_drops() -> Result<()> {
    root();
    let _g = agent_lock();
    let lab = Lab::example()?;
    let tmp = tempfile::tempdir()?;
    let example = example_file(tmp.path())?;
    // (from, to, port): test -> production is dropped, staging ->
    // production audited (passed), production -> production allowed.
    let flows = [
        ("test1", "prod1", 5432u16),
        ("staging1", "prod1", 5433),
        ("prod2", "prod1", 5434),
        ("test1", "prod2", 5435),
    ];
    let mut receivers = Vec::new();
    for (_, to, port) in flows {
        receivers.push(lab.udp_receiver(to, lab.pod(to)?.ip(Family::V4), port)?);
    }
    let send = |round: &str| -> Result<Vec<u64>> {
        let before: Vec<u64> = receivers.iter().map(|r| r.total()).collect();
        for (from, to, port) in flows {
            lab.udp_send(from, lab.pod(to)?.ip(Family::V4), port, round.as_bytes(), 3)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(receivers
            .iter()
            .zip(before)
            .map(|(r, b)| r.total() - b)
            .collect())
    };
    let without = tmp.path().join("without-agent.pcap");
    let delivered = tcpdump_any(&lab, &without, || send("without"))?;
    ensure!(
        delivered == vec![3, 3, 3, 3],
        "without the agent: delivered {delivered:?}"
    );
    let lines = explain_jsonl(&without, &["--policy", &example.display().to_string()])?;
    let of_flow = |lines: &[Value], port: u16| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["outer"]["dport"] == port)
            .cloned()
            .collect()
    };
    let mut predicted = Vec::new();
    for (_, _, port) in flows {
        let ls = of_flow(&lines, port);
        ensure!(!ls.is_empty(), "port {port}: not in the capture");
        let drops = ls.iter().filter(|l| l["action"] == "drop").count();
        ensure!(
            drops == 0 || drops == ls.len(),
            "port {port}: some dropped: {ls:?}"
        );
        predicted.push(drops > 0);
    }
    ensure!(
        predicted.contains(&true) && predicted.contains(&false),
        "{predicted:?}"
    );

    // With the agent.
    let state = tmp.path().join("state");
    let agent = Agent::start_with(
        &lab,
        &envfence_tests::agent::agent_binary()?,
        &AgentOptions {
            policy_args: vec!["--config".into(), example.display().to_string()],
            extra_args: vec![
                "--state-dir".into(),
                state.display().to_string(),
                "--no-watch".into(),
            ],
            ..AgentOptions::default()
        },
    )?;
    let with = tmp.path().join("with-agent.pcap");
    let delivered = tcpdump_any(&lab, &with, || send("with"))?;
    let lost: Vec<bool> = delivered.iter().map(|n| *n == 0).collect();
    ensure!(
        delivered.iter().all(|n| *n == 0 || *n == 3),
        "with the agent: delivered {delivered:?}"
    );
    ensure!(
        lost == predicted,
        "explain of the capture without the agent predicted drops {predicted:?}; with the agent delivered {delivered:?}"
    );
    // The capture with the agent, explained from the agent's pinned maps.
    let (with_s, state_s) = (with.display().to_string(), state.display().to_string());
    let run = cli_in(&lab, &explain_args(&with_s, &["--state-dir", &state_s]))?.ok()?;
    let lines = jsonl(&run)?;
    let mut checked = 0;
    for (i, (_, _, port)) in flows.iter().enumerate() {
        for l in of_flow(&lines, *port) {
            ensure!(
                (l["action"] == "drop") == predicted[i],
                "port {port}: {l} (predicted drop {})",
                predicted[i]
            );
            ensure!(l["interface"].is_string(), "no interface: {l}");
            if l["direction"] == "in"
                && l["source_check"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("accepted"))
            {
                checked += 1;
            }
        }
    }
    ensure!(checked > 0, "no packet had its source checked: {lines:?}");
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}
