//! The capture corpus, `tests/corpus/*.pcap`, replayed packet by packet
//! through the real eBPF programs (BPF_PROG_TEST_RUN, both hooks, the
//! example policy in enforce and in audit mode) and through the reference
//! classifier: they must agree on every packet.
//!
//! - `shapes-*.pcap`: the catalogue of header shapes
//!   (`tests/src/gen/catalog.rs`) for several environment pairs, and every
//!   test -> production frame of it cut at each header boundary;
//!   `shapes-gso.pcapng`: the shapes that need a GSO skb (BIG TCP's
//!   lengths of 0), each packet's comment naming its `gso_size`, replayed
//!   with it set in the `__sk_buff` context. Rewrite them after changing
//!   the catalogue with
//!   `ENVFENCE_WRITE_CORPUS=1 cargo test -p envfence-tests --test corpus synthetic`.
//! - `lab-traffic.pcap`: real traffic captured by tcpdump on the node's
//!   interfaces of a namespace lab (no agent): ping, TCP, UDP, DNS, VLAN
//!   priority tags, fragments, IPv6 extension headers, a real VXLAN tunnel,
//!   and IPIP / GRE / Geneve packets (the bypass scenarios of
//!   `tests/src/gen/wire.rs`). Recapture it with
//!   `cargo test -p envfence-tests --test corpus -- --ignored capture_lab_traffic`.
//!
//! Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use envfence_tests::fixture::root;
use envfence_tests::gen::catalog::{catalog, gso_comment, gso_of_comment};
use envfence_tests::gen::diff::{self, check_frames, regressions_dir, Engine};
use envfence_tests::gen::{pcap, wire};
use envfence_tests::lab::{require_root, Lab, NODE};
use envfence_tests::oracle::describe::stack;

/// Frames larger than this cannot be fed to BPF_PROG_TEST_RUN (about a
/// page); a capture holds none unless GRO merged segments.
const MAX_REPLAY: usize = 3500;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn pcaps() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("listing tests/corpus")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_kernel_equals_reference() {
    root();
    let engine = Engine::new().expect("loading the datapath");
    let files = pcaps();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let corpus = "shapes-l2.pcap shapes-ipv4.pcap shapes-ipv6.pcap shapes-headers.pcap \
        shapes-tunnels.pcap shapes-truncated.pcap shapes-gso.pcapng lab-traffic.pcap";
    for want in corpus.split_whitespace() {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let mut reports = Vec::new();
    let mut total = 0;
    let mut gso_frames = 0;
    for path in &files {
        let cap = pcap::read(path).expect("reading the capture");
        assert_eq!(cap.linktype, pcap::LINKTYPE_ETHERNET, "{}", path.display());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A packet's comment may name its skb's gso_size (shapes-gso).
        let frames: Vec<(String, Vec<u8>, u32)> = cap
            .packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.data.len() <= MAX_REPLAY)
            .map(|(i, p)| {
                let gso = gso_of_comment(p.comment.as_deref());
                (format!("{name} packet #{}", i + 1), p.data.clone(), gso)
            })
            .collect();
        let big = cap.packets.len() - frames.len();
        gso_frames += frames.iter().filter(|f| f.2 != 0).count();
        let (mismatches, compared, refused) =
            check_frames(&engine, &frames).expect("replaying the capture");
        eprintln!(
            "{name}: {} packets, {compared} compared ({refused} of them refused untagged by BPF_PROG_TEST_RUN, so compared behind a VLAN tag), {big} too big to replay, {} mismatches",
            cap.packets.len(),
            mismatches.len()
        );
        assert!(compared > 0, "{name}: nothing compared");
        total += compared;
        for m in mismatches {
            let policy = diff::policy_of(&engine, m.mode);
            if let Ok(p) = m.save(&regressions_dir(), policy) {
                reports.push(format!("saved as {}", p.display()));
            }
            reports.push(m.report(policy));
        }
    }
    assert!(total >= 1000, "only {total} packets compared");
    assert!(gso_frames >= 100, "only {gso_frames} GSO packets replayed");
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

/// The committed `shapes-*` captures are exactly what the catalogue builds
/// (so every catalogued shape is replayed, GSO ones with their
/// `gso_size`); `ENVFENCE_WRITE_CORPUS=1` rewrites them.
#[test]
fn synthetic_pcaps_are_the_catalogue() {
    let write = std::env::var("ENVFENCE_WRITE_CORPUS").is_ok_and(|v| v == "1");
    for (file, named) in catalog() {
        let path = corpus_dir().join(file);
        let ng = file.ends_with(".pcapng");
        assert!(
            ng || named.iter().all(|n| n.gso_size == 0),
            "{file}: GSO shapes need a pcapng (the gso_size is a packet comment)"
        );
        if write {
            let frames = named
                .iter()
                .map(|n| {
                    (
                        n.frame.clone(),
                        ng.then(|| gso_comment(n.gso_size, &n.name)),
                    )
                })
                .collect();
            let format = if ng {
                pcap::Format::PcapNg
            } else {
                pcap::PCAP_US
            };
            let cap = pcap::ethernet_capture(format, frames);
            pcap::write(&path, &cap).expect("writing the corpus");
            eprintln!("wrote {} ({} frames)", path.display(), named.len());
            continue;
        }
        let cap = pcap::read(&path).expect("reading the corpus");
        assert_eq!(
            cap.packets.len(),
            named.len(),
            "{}: stale (ENVFENCE_WRITE_CORPUS=1 rewrites it)",
            path.display()
        );
        for (i, (p, want)) in cap.packets.iter().zip(&named).enumerate() {
            assert!(
                p.data == want.frame && gso_of_comment(p.comment.as_deref()) == want.gso_size,
                "{} frame {} ({}) differs from the catalogue (ENVFENCE_WRITE_CORPUS=1 rewrites it)",
                path.display(),
                i + 1,
                want.name
            );
        }
    }
}

/// The lab capture holds the shapes it is there for.
#[test]
fn lab_capture_has_every_shape() {
    let cap = pcap::read(&corpus_dir().join("lab-traffic.pcap")).expect("reading the capture");
    let stacks: Vec<String> = cap.packets.iter().map(|p| stack(&p.data, false)).collect();
    // (what, words that must all be on one line of a decoded stack)
    let shapes: [(&str, &[&str]); 14] = [
        ("icmp echo", &["icmp type 8"]),
        ("icmpv6 echo", &["icmpv6 type 128"]),
        ("tcp to 8080", &["tcp ", "> 8080"]),
        ("dns", &["udp ", "> 53 len"]),
        ("a frame with four vlan tags", &["vlan #4"]),
        (
            "an ipv4 non-first fragment",
            &["ipv4 ", "NON-FIRST FRAGMENT"],
        ),
        (
            "an ipv6 non-first fragment",
            &["ext #1 fragment", "NON-FIRST FRAGMENT"],
        ),
        ("seven ipv6 extension headers", &["ext #7"]),
        ("vxlan", &["vxlan flags 0x08"]),
        ("geneve", &["geneve version 0"]),
        ("gre", &["gre flags"]),
        ("gre carrying ethernet", &["gre flags", "(teb)"]),
        ("ipip", &["ipip: inner ipv4"]),
        ("ipv6 in ip", &["ipv6-in-ip: inner ipv6"]),
    ];
    for (what, words) in shapes {
        let found = stacks
            .iter()
            .flat_map(|s| s.lines())
            .any(|l| words.iter().all(|w| l.contains(w)));
        assert!(found, "no {what} ({words:?}) in lab-traffic.pcap");
    }
}

/// Captures `tests/corpus/lab-traffic.pcap` (run by hand, see the module
/// docs): tcpdump on the node's veths while the bypass scenarios and plain
/// traffic run without the agent.
#[test]
#[ignore = "rewrites tests/corpus/lab-traffic.pcap; run by hand"]
fn capture_lab_traffic() -> Result<()> {
    require_root()?;
    let lab = Lab::example()?;
    let dir = std::env::temp_dir().join(format!("ef-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ifs: Vec<String> = ["test1", "prod1", "prod2"]
        .iter()
        .map(|p| lab.pod(p).map(|s| s.node_if()))
        .collect::<Result<_>>()?;
    let mut dumps = Vec::new();
    for ifname in &ifs {
        let file = dir.join(format!("{ifname}.pcap"));
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-i", ifname, "-n", "-U", "-s", "0", "-Z", "root", "-w"])
            .arg(&file);
        let p = lab.spawn_in_ns(NODE, cmd)?;
        ensure!(
            p.wait_for_stderr("listening on", Duration::from_secs(10)),
            "tcpdump on {ifname} did not start: {}",
            p.stderr_tail(5)
        );
        dumps.push((p, file));
    }
    // Plain traffic.
    for (from, to) in [("test1", "prod1"), ("prod1", "prod2")] {
        for fam in [envfence_tests::Family::V4, envfence_tests::Family::V6] {
            let dst = lab.pod(to)?.ip(fam);
            lab.ping(from, dst, Duration::from_secs(2))?;
            let _l = lab.tcp_listen(to, dst, 8080)?;
            lab.tcp_connect(from, dst, 8080, Duration::from_secs(2))?;
            lab.udp_send(from, dst, 53, b"\x12\x34\x01\x00\x00\x01", 1)?;
        }
    }
    // The bypass scenarios (each adds to the lab what it needs).
    for make in [
        wire::vlan_scenario,
        wire::ipv6_ext_scenario,
        wire::vxlan_scenario,
        wire::crafted_tunnel_scenario,
        wire::fragment_scenario,
    ] {
        let s = make(&lab)?;
        let arrivals = s.run()?;
        wire::check_phase(&s, &arrivals, false)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut packets = Vec::new();
    for (p, file) in dumps {
        p.terminate(Duration::from_secs(5))?;
        let cap = pcap::read(&file).with_context(|| format!("reading {}", file.display()))?;
        if cap.linktype != pcap::LINKTYPE_ETHERNET {
            bail!("{}: link type {}", file.display(), cap.linktype);
        }
        packets.extend(cap.packets);
    }
    std::fs::remove_dir_all(&dir)?;
    packets.sort_by_key(|p| (p.ts_sec, p.ts_nsec));
    let frames: Vec<Vec<u8>> = packets.into_iter().map(|p| p.data).collect();
    let out = corpus_dir().join("lab-traffic.pcap");
    pcap::write_ethernet(&out, &frames)?;
    eprintln!("wrote {} ({} packets)", out.display(), frames.len());
    drop(lab);
    Ok(())
}
