//! `envfence explain --pcap FILE`: what the datapath does with every packet
//! of a capture (`tcpdump -w`, pcap or pcapng; Ethernet, Linux cooked SLL
//! and SLL2, raw IP), decided by the kernel's own header walk and decision
//! (`policy::reference`) over the maps pinned in bpffs
//! (`datapath::pinned_tables`) or over a policy file. Read-only: nothing is
//! counted or reported by explaining. Streams: one packet in memory at a
//! time, whatever the capture's size.

mod track;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use envfence_ebpf::{family, proto, source, verdict, RULE_DEFAULT, RULE_SOURCE_CHECK};
use serde::Serialize;

use self::track::{Seen, Tracked, Tracker};
use super::explain_source;
use super::table::{PacketsOutput, Style};
use crate::capture::{self, link, CaptureReader, Direction};
use crate::datapath::{inspect::PinnedState, pinned_tables::PinnedTables};
use crate::events::SOURCE_CHECK_RULE;
use crate::policy::reference::{self, Layer, Outcome, PolicyTables, Skb};
use crate::policy::rpf::SourceFound;
use crate::policy::{self, CompiledPolicy, Mode, NonIp, DEFAULT_RULE, WORLD};

/// Frames longer than this (the largest IP packet a length field can say,
/// and an Ethernet header with two VLAN tags) are GSO packets.
const GSO_ABOVE: usize = 65_535 + 14 + 8;

/// What `explain --pcap` was asked.
pub struct PcapArgs<'a> {
    pub file: &'a Path,
    /// Judge by this policy file instead of the pinned maps.
    pub policy: Option<&'a Path>,
    pub pin_root: &'a Path,
    pub state_dir: &'a Path,
    /// Show only packets with these verdicts (`drop`: every dropped one).
    pub verdicts: &'a [String],
    /// Show only packets from or to these environments.
    pub envs: &'a [String],
    pub output: PacketsOutput,
    pub no_color: bool,
}

/// Whether `--verdict` takes `v`: a verdict the datapath counts
/// ([`crate::api::query::is_verdict_name`]), or `pass` (a frame the policy
/// does not judge, passed).
fn is_filter_verdict(v: &str) -> bool {
    v == "pass" || crate::api::query::is_verdict_name(v)
}

/// One side of a packet as the datapath reads it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Tuple {
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// An IPv6 routing header's final destination.
    pub final_dst: Option<IpAddr>,
}

/// One packet explained (a line of `-o jsonl`).
#[derive(Clone, Debug, Serialize)]
pub struct PacketLine {
    /// 1 for the capture's first packet.
    pub index: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub direction: Option<Direction>,
    /// The frame's length as the datapath counts it (Ethernet header
    /// included), and how much of it the capture holds.
    pub len: usize,
    pub captured: usize,
    pub outer: Option<Tuple>,
    /// A tunnel's inner packet.
    pub inner: Option<Tuple>,
    pub src_env: Option<String>,
    pub dst_env: Option<String>,
    pub src_env_id: Option<u32>,
    pub dst_env_id: Option<u32>,
    pub rule: Option<String>,
    /// allow, log, audit, drop, reply, related, spoofed; pass or drop for frames
    /// the policy does not judge (see `reason`).
    pub verdict: String,
    /// What the datapath does: `pass` or `drop`.
    pub action: &'static str,
    /// Why, when it is not a plain rule.
    pub reason: Option<String>,
    /// The source check: `not checked (...)`, `accepted (...)`, `refused
    /// (...)`.
    pub source_check: String,
}

/// The summary of the packets shown.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Packets in the capture.
    pub packets: u64,
    /// Packets shown (after the filters).
    pub shown: u64,
    pub by_verdict: BTreeMap<String, u64>,
    pub by_action: BTreeMap<String, u64>,
    /// Judged packets by (source env, destination env, verdict, rule).
    pub pairs: Vec<PairCount>,
    /// Packets not judged by the policy, by reason.
    pub unjudged: BTreeMap<String, u64>,
    /// Seconds explaining took, and packets a second.
    pub seconds: f64,
    pub packets_per_second: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PairCount {
    pub src_env: String,
    pub dst_env: String,
    pub verdict: String,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Environment and rule names: a compiled policy's (the kernel's ids as
/// installed), or ids.
pub(super) struct Names(pub Option<CompiledPolicy>);

impl Names {
    pub(super) fn env(&self, id: u32) -> String {
        match &self.0 {
            Some(c) => c.env_name(id).to_owned(),
            None if id == 0 => WORLD.to_owned(),
            None => format!("#{id}"),
        }
    }

    pub(super) fn rule(&self, id: u16) -> String {
        match &self.0 {
            _ if id == RULE_SOURCE_CHECK => SOURCE_CHECK_RULE.to_owned(),
            Some(c) => c.rule_name(id).to_owned(),
            None if id == RULE_DEFAULT => DEFAULT_RULE.to_owned(),
            None => format!("#{id}"),
        }
    }
}

/// Source-check answers remembered at most (then forgotten and asked
/// again): a capture of many sources stays in bounded memory.
const MAX_ANSWERS: usize = 65_536;

/// A source check's (accepted, result code, why), or why it could not be
/// asked.
type Answer = Result<(bool, u8, String), String>;

/// The source check of packets entering a named interface, from the
/// pinned maps and this namespace's routes; answers remembered.
struct SourceChecker<'a> {
    state: Option<&'a PinnedState>,
    slot: u32,
    attached: Vec<u32>,
    answers: BTreeMap<(String, IpAddr, IpAddr), Answer>,
}

impl SourceChecker<'_> {
    /// The check of `src` -> `dst` entering `iface`: (found when refused or
    /// accepted, what to say).
    fn check(
        &mut self,
        iface: Option<&str>,
        direction: Option<Direction>,
        src: IpAddr,
        dst: IpAddr,
    ) -> (Option<SourceFound>, String) {
        let Some(state) = self.state else {
            return (None, "not checked (judged by a policy file)".into());
        };
        if direction == Some(Direction::Out) {
            return (None, "not checked (an outgoing packet)".into());
        }
        let Some(iface) = iface else {
            return (
                None,
                "not checked (the capture does not say which interface)".into(),
            );
        };
        let Ok(ifindex) = nix::net::if_::if_nametoindex(iface) else {
            return (
                None,
                format!("not checked ({iface} is not an interface of this network namespace)"),
            );
        };
        if !self.attached.contains(&ifindex) {
            return (
                None,
                format!("not checked (envfence is not attached to {iface})"),
            );
        }
        let slot = self.slot;
        if self.answers.len() >= MAX_ANSWERS {
            self.answers.clear();
        }
        let answer = self
            .answers
            .entry((iface.to_owned(), src, dst))
            .or_insert_with(|| {
                explain_source::answer(state, slot, iface, src, dst)
                    .map(|a| (a.accepted, a.code, format!("{}: {}", a.result, a.why)))
                    .map_err(|e| format!("{e:#}"))
            });
        match answer {
            Ok((_, code, why)) if *code == source::NOT_CHECKED => {
                (None, format!("not checked ({why})"))
            }
            Ok((accepted, code, why)) => (
                Some(SourceFound {
                    result: *code,
                    route_ifindex: 0,
                }),
                format!("{} ({why})", if *accepted { "accepted" } else { "refused" }),
            ),
            Err(e) => (None, format!("not checked ({e})")),
        }
    }
}

fn proto_name(p: u8) -> String {
    match p {
        proto::IPIP => "ipip".to_owned(),
        proto::IPV6 => "ipv6".to_owned(),
        proto::GRE => "gre".to_owned(),
        _ => policy::proto_name(p).map_or_else(|| p.to_string(), str::to_owned),
    }
}

fn address(fam: u8, a: &[u8; 16]) -> IpAddr {
    if fam == family::V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn tuple(l: &Layer) -> Tuple {
    let ports = l.l4 == envfence_ebpf::L4::Ports;
    let icmp = (l.proto == proto::ICMP || l.proto == proto::ICMPV6) && l.l4_off != 0;
    Tuple {
        proto: proto_name(l.proto),
        src: address(l.family, &l.src),
        dst: address(l.family, &l.dst),
        sport: ports.then_some(l.sport),
        dport: ports.then_some(l.dport),
        icmp_type: icmp.then_some(l.sport as u8),
        icmp_code: icmp.then_some(l.dport as u8),
        final_dst: l.has_final.then(|| address(l.family, &l.final_dst)),
    }
}

fn time_of(p: &capture::Packet) -> String {
    let t = UNIX_EPOCH + Duration::new(p.ts_sec, p.ts_nsec);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Judges the capture at `args.file`, printing as it goes (a reader that
/// stops reading, such as `head`, ends it quietly).
pub fn run(args: PcapArgs) -> anyhow::Result<()> {
    match run_inner(args) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn run_inner(args: PcapArgs) -> anyhow::Result<()> {
    for v in args.verdicts {
        if !is_filter_verdict(v) {
            let known: Vec<&str> = (0..envfence_ebpf::NUM_VERDICTS as u8)
                .map(verdict::name)
                .chain(["pass"])
                .collect();
            anyhow::bail!("--verdict {v}: expected one of {}", known.join(", "));
        }
    }
    let file = args.file;
    let reader = CaptureReader::open(file)
        .with_context(|| format!("{}: not a capture explain can read", file.display()))?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    match args.policy {
        Some(path) => {
            let p = policy::load(path)
                .map_err(|e| anyhow::anyhow!("{e}\n{}: not a valid policy file", path.display()))?;
            let compiled = policy::compile(&p);
            let (audit, non_ip_drop) =
                (compiled.mode == Mode::Audit, compiled.non_ip == NonIp::Drop);
            let names = Names(Some(compiled.clone()));
            let checker = SourceChecker {
                state: None,
                slot: 0,
                attached: Vec::new(),
                answers: BTreeMap::new(),
            };
            let from = format!("policy file {}", path.display());
            explain_all(
                reader,
                size,
                &args,
                &compiled,
                (audit, non_ip_drop),
                &names,
                checker,
                &from,
            )
        }
        None => {
            let state = PinnedState::open(args.pin_root)?;
            let tables = PinnedTables::new(&state)?;
            let names = Names(super::explain::saved_names(args.state_dir).map(|n| n.1));
            let checker = SourceChecker {
                state: Some(&state),
                slot: tables.slot(),
                attached: state.attached()?,
                answers: BTreeMap::new(),
            };
            let from = format!(
                "the pinned maps {} (generation {}, slot {})",
                state.dir().display(),
                tables.config().generation,
                tables.slot()
            );
            let modes = (tables.audit(), tables.non_ip_drop());
            explain_all(reader, size, &args, &tables, modes, &names, checker, &from)
        }
    }
}

/// Progress on stderr, only when it is a terminal.
struct Progress {
    on: bool,
    last: Instant,
    size: u64,
}

impl Progress {
    fn tick(&mut self, packets: u64, offset: u64) {
        if !self.on || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let pct = if self.size > 0 {
            offset as f64 * 100.0 / self.size as f64
        } else {
            0.0
        };
        eprint!("\renvfence explain: {packets} packets, {pct:.0}% of the capture");
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn explain_all<R: std::io::Read, T: PolicyTables>(
    mut reader: CaptureReader<R>,
    size: u64,
    args: &PcapArgs,
    tables: &T,
    (audit, non_ip_drop): (bool, bool),
    names: &Names,
    mut checker: SourceChecker,
    from: &str,
) -> anyhow::Result<()>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let style = Style::for_stdout(args.no_color);
    let mut summary = Summary::default();
    let mut pairs: BTreeMap<(String, String, String, String), (u64, u64)> = BTreeMap::new();
    let mut tracker = Tracker::default();
    let mut progress = Progress {
        on: std::io::stderr().is_terminal(),
        last: Instant::now(),
        size,
    };
    let file = args.file.display().to_string();
    match args.output {
        PacketsOutput::Json => write!(
            out,
            "{{\"capture\":{},\"decided_by\":{},\"packets\":[",
            serde_json::to_string(&file)?,
            serde_json::to_string(from)?
        )?,
        PacketsOutput::Table => {
            writeln!(out, "{}", style.dim(&format!("# {file}: judged by {from}")))?
        }
        PacketsOutput::Jsonl => {}
    }
    let mut first = true;
    loop {
        let p = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                progress.done();
                out.flush()?;
                return Err(anyhow::Error::new(e).context(file.clone()));
            }
        };
        progress.tick(p.index, reader.offset());
        summary.packets += 1;
        let l = link::decode(p.linktype, &p.data, p.orig_len).map_err(|e| {
            anyhow::anyhow!("{file}: packet {} (at byte {}): {e}", p.index, p.offset)
        })?;
        let line = explain_one(
            &p,
            &l,
            tables,
            (audit, non_ip_drop),
            names,
            &mut checker,
            &mut tracker,
        )
        .map_err(|e| anyhow::Error::new(e).context(format!("{file}: packet {}", p.index)))?;
        if !shown(&line, args) {
            continue;
        }
        summary.shown += 1;
        *summary.by_verdict.entry(line.verdict.clone()).or_insert(0) += 1;
        *summary.by_action.entry(line.action.to_owned()).or_insert(0) += 1;
        match (&line.src_env, &line.dst_env, &line.rule) {
            (Some(s), Some(d), Some(r)) => {
                let c = pairs
                    .entry((s.clone(), d.clone(), line.verdict.clone(), r.clone()))
                    .or_insert((0, 0));
                c.0 += 1;
                c.1 += line.len as u64;
            }
            _ => {
                let why = line.reason.clone().unwrap_or_else(|| "unjudged".into());
                let kind = why
                    .split([' ', ':'])
                    .next()
                    .unwrap_or("unjudged")
                    .to_owned();
                *summary.unjudged.entry(kind).or_insert(0) += 1;
            }
        }
        match args.output {
            PacketsOutput::Jsonl => writeln!(out, "{}", serde_json::to_string(&line)?)?,
            PacketsOutput::Json => {
                if !first {
                    out.write_all(b",")?;
                }
                out.write_all(serde_json::to_string(&line)?.as_bytes())?;
            }
            PacketsOutput::Table => writeln!(out, "{}", render_line(&line, &style))?,
        }
        first = false;
    }
    progress.done();
    summary.pairs = pairs
        .into_iter()
        .map(
            |((src_env, dst_env, verdict, rule), (packets, bytes))| PairCount {
                src_env,
                dst_env,
                verdict,
                rule,
                packets,
                bytes,
            },
        )
        .collect();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.packets_per_second = if summary.seconds > 0.0 {
        summary.packets as f64 / summary.seconds
    } else {
        0.0
    };
    match args.output {
        PacketsOutput::Json => {
            writeln!(out, "],\"summary\":{}}}", serde_json::to_string(&summary)?)?
        }
        PacketsOutput::Table => write!(out, "{}", render_summary(&summary, &style))?,
        PacketsOutput::Jsonl => {}
    }
    out.flush()?;
    Ok(())
}

fn shown(line: &PacketLine, args: &PcapArgs) -> bool {
    let verdict_ok = args.verdicts.is_empty()
        || args
            .verdicts
            .iter()
            .any(|v| *v == line.verdict || (v == "drop" && line.action == "drop"));
    let env_ok = args.envs.is_empty()
        || args.envs.iter().any(|e| {
            line.src_env.as_deref() == Some(e.as_str())
                || line.dst_env.as_deref() == Some(e.as_str())
        });
    verdict_ok && env_ok
}

/// One packet through the walk, the source check, the decision and the
/// capture's flows.
fn explain_one<T: PolicyTables>(
    p: &capture::Packet,
    l: &link::Link,
    tables: &T,
    (audit, non_ip_drop): (bool, bool),
    names: &Names,
    checker: &mut SourceChecker,
    tracker: &mut Tracker,
) -> Result<PacketLine, T::Error> {
    let interface = p.if_name.as_deref().map(str::to_owned).or_else(|| {
        l.ifindex.and_then(|i| {
            nix::net::if_::if_indextoname(i)
                .ok()
                .map(|n| n.to_string_lossy().into_owned())
        })
    });
    let mut line = PacketLine {
        index: p.index,
        time: time_of(p),
        interface: interface.clone(),
        ifindex: l.ifindex,
        direction: l.direction,
        len: l.wire_len,
        captured: l.frame.len(),
        outer: None,
        inner: None,
        src_env: None,
        dst_env: None,
        src_env_id: None,
        dst_env_id: None,
        rule: None,
        verdict: String::new(),
        action: "pass",
        reason: None,
        source_check: "not checked (not an IP packet)".into(),
    };
    let mut reasons: Vec<String> = Vec::new();
    if l.frame.len() < l.wire_len {
        reasons.push(format!(
            "captured {} of {} bytes: judged on what was captured",
            l.frame.len(),
            l.wire_len
        ));
    }
    // The skb's gso_size as the packet's comment names it (envfence's
    // corpus records it so); else an IP packet longer than any IP length
    // field can say is a GSO packet (BIG TCP writes length 0 into it).
    let skb = Skb {
        gso_size: match p.gso_size() {
            0 => u32::from(l.wire_len > GSO_ABOVE),
            n => n,
        },
    };
    let walked = reference::walk(&l.frame, l.wire_len, skb, tables);
    let outcome = match &walked {
        Err(o) => o.clone(),
        Ok(pkt) => {
            line.outer = Some(tuple(&pkt.outer));
            line.inner = pkt.has_inner.then(|| tuple(&pkt.inner));
            let (src, dst) = reference::outer_of(pkt);
            let (found, said) = checker.check(interface.as_deref(), l.direction, src, dst);
            line.source_check = said;
            reference::judge_walked(pkt, tables, &mut |_, _| found)?
        }
    };
    let pass_word = |passes: bool| if passes { "pass" } else { "drop" };
    let passes = outcome.passes_under(audit, non_ip_drop);
    line.action = pass_word(passes);
    match &outcome {
        Outcome::NonIp(kind) => {
            line.verdict = pass_word(passes).into();
            reasons.insert(0, format!("non-ip ({kind:?})").to_lowercase());
        }
        Outcome::Malformed => {
            line.verdict = pass_word(passes).into();
            reasons.insert(
                0,
                "malformed: claims to be IP but cannot be read up to its addresses".into(),
            );
        }
        Outcome::VlanTooDeep => {
            line.verdict = pass_word(passes).into();
            reasons.insert(
                0,
                "vlan-too-deep: more VLAN tags than the datapath walks".into(),
            );
        }
        Outcome::TunnelTooDeep => {
            line.verdict = pass_word(passes).into();
            reasons.insert(0, "tunnel-too-deep: a tunnel inside a tunnel".into());
        }
        Outcome::MplsTooDeep => {
            line.verdict = pass_word(passes).into();
            reasons.insert(
                0,
                "mpls-too-deep: more MPLS labels than the datapath walks".into(),
            );
        }
        Outcome::Spoofed(s) => {
            line.verdict = verdict::name(verdict::SPOOFED).into();
            line.src_env = Some(names.env(0));
            line.dst_env = Some(names.env(s.dst_env));
            line.src_env_id = Some(0);
            line.dst_env_id = Some(s.dst_env);
            line.rule = Some(names.rule(RULE_SOURCE_CHECK));
            reasons.insert(
                0,
                format!("spoofed: {}", source::result_name(s.found.result)),
            );
        }
        Outcome::Judged(j) => {
            let mut v = j.verdict;
            let mut rule = j.rule;
            if j.fragment {
                reasons.push("fragment: a non-first fragment, its ports unreadable (the pair's strictest verdict)".into());
            } else if j.ext_too_deep {
                reasons.push(
                    "ipv6-ext-too-deep: ports unreadable (the pair's strictest verdict)".into(),
                );
            } else if j.l4 == envfence_ebpf::L4::NoPorts {
                reasons.push("no-ports: ports unreadable (the pair's strictest verdict)".into());
            }
            if j.by_inner {
                reasons.push("by-inner: the tunnel's inner packet decided".into());
            }
            if j.by_final {
                reasons.push("by-final: the routing header's final destination decided".into());
            }
            if let Ok(pkt) = &walked {
                let ct = tables.pair_ct(j.src_env, j.dst_env)?;
                let seen = Seen {
                    frame: &l.frame,
                    layer: &pkt.outer,
                    untracked: pkt.has_inner || pkt.outer.has_final,
                    verdict: j.verdict,
                    rule: j.rule,
                    ct,
                };
                match tracker.track(p.index, &seen) {
                    Tracked::Policy => {}
                    Tracked::Reply { opened_by, rule: r } => {
                        v = verdict::REPLY;
                        rule = r;
                        reasons.push(format!(
                            "reply: of the flow packet {opened_by} opened (tracked within the capture)"
                        ));
                    }
                    Tracked::MaybeReply => {
                        if reverse_opens(tables, j)? {
                            reasons.push("would pass as reply if the kernel tracks the flow it answers (opened before the capture)".into());
                        }
                    }
                    Tracked::Related { opened_by, rule: r } => {
                        v = verdict::RELATED;
                        rule = r;
                        reasons.push(format!(
                            "related: an ICMP error quoting the flow packet {opened_by} opened (tracked within the capture)"
                        ));
                    }
                    Tracked::MaybeRelated => reasons.push(
                        "icmp-error: would pass as related if the kernel tracks the flow it quotes (opened before the capture)".into(),
                    ),
                }
            }
            line.verdict = verdict::name(v).into();
            line.action = pass_word(v != verdict::DROP);
            line.src_env = Some(names.env(j.src_env));
            line.dst_env = Some(names.env(j.dst_env));
            line.src_env_id = Some(j.src_env);
            line.dst_env_id = Some(j.dst_env);
            line.rule = Some(names.rule(rule));
        }
    }
    if !reasons.is_empty() {
        line.reason = Some(reasons.join("; "));
    }
    Ok(line)
}

/// Whether the packet's reverse (its destination to its source, to its
/// source port) is a flow the policy lets through and tracks: then the
/// packet may be its reply.
fn reverse_opens<T: PolicyTables>(tables: &T, j: &reference::Judgement) -> Result<bool, T::Error> {
    let d = tables.decided(j.dst_env, j.src_env, j.l4, j.proto, j.sport)?;
    let ct = tables.pair_ct(j.dst_env, j.src_env)?;
    Ok((d.verdict == verdict::ALLOW || d.verdict == verdict::LOG)
        && ct & envfence_ebpf::ct::OPENS != 0)
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

fn tuple_text(t: &Tuple) -> String {
    let mut s = format!(
        "{} {} -> {}",
        t.proto,
        endpoint(t.src, t.sport),
        endpoint(t.dst, t.dport)
    );
    if let (Some(ty), Some(code)) = (t.icmp_type, t.icmp_code) {
        s.push_str(&format!(" type {ty} code {code}"));
    }
    if let Some(f) = t.final_dst {
        s.push_str(&format!(" (final {f})"));
    }
    s
}

/// One packet as a line of text.
pub fn render_line(l: &PacketLine, s: &Style) -> String {
    let time = l.time.get(11..26).unwrap_or(&l.time);
    let mut out = format!("{:>6} {time}", l.index);
    match (&l.interface, l.direction) {
        (Some(i), Some(d)) => out.push_str(&format!(
            " {i} {}",
            if d == Direction::In { "in" } else { "out" }
        )),
        (Some(i), None) => out.push_str(&format!(" {i}")),
        (None, Some(d)) => out.push_str(&format!(
            " {}",
            if d == Direction::In { "in" } else { "out" }
        )),
        (None, None) => {}
    }
    match &l.outer {
        Some(t) => out.push_str(&format!("  {}", tuple_text(t))),
        None => out.push_str(&format!("  ({} bytes)", l.len)),
    }
    if let Some(t) = &l.inner {
        out.push_str(&format!(" [inner {}]", tuple_text(t)));
    }
    if let (Some(se), Some(de)) = (&l.src_env, &l.dst_env) {
        out.push_str(&format!("  {se} -> {de}"));
    }
    if let Some(r) = &l.rule {
        out.push_str(&format!("  {r}"));
    }
    out.push_str(&format!("  {}", s.verdict(&l.verdict.to_uppercase())));
    if l.verdict == "spoofed" {
        out.push_str(&format!(" ({})", l.action));
    }
    if let Some(r) = &l.reason {
        out.push_str(&format!("  ({r})"));
    }
    if l.source_check.starts_with("refused") {
        out.push_str(&format!("  source check {}", l.source_check));
    }
    out
}

/// The summary as text.
pub fn render_summary(sum: &Summary, s: &Style) -> String {
    use super::table::{Align, Cell, Table};
    let mut out = format!(
        "\n{} packets, {} shown ({:.0} packets/s)\n",
        sum.packets, sum.shown, sum.packets_per_second
    );
    let counts = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!("by verdict: {}\n", counts(&sum.by_verdict)));
    out.push_str(&format!("by action:  {}\n", counts(&sum.by_action)));
    if !sum.unjudged.is_empty() {
        out.push_str(&format!("not judged: {}\n", counts(&sum.unjudged)));
    }
    if !sum.pairs.is_empty() {
        let mut t = Table::new(&[
            ("SOURCE ENV", Align::Left),
            ("DEST ENV", Align::Left),
            ("VERDICT", Align::Left),
            ("RULE", Align::Left),
            ("PACKETS", Align::Right),
            ("BYTES", Align::Right),
        ]);
        for p in &sum.pairs {
            t.push(vec![
                Cell::new(p.src_env.clone()),
                Cell::new(p.dst_env.clone()),
                Cell::new(p.verdict.clone()),
                Cell::new(p.rule.clone()),
                Cell::new(p.packets.to_string()),
                Cell::new(p.bytes.to_string()),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render(s));
    }
    out
}
