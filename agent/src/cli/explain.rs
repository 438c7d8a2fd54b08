//! `envfence explain SRC DST`: how the kernel judges a flow, read from the
//! pinned maps (no agent needed), and whether a policy file agrees.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Args;
use envfence_ebpf::{proto, Config, RULE_DEFAULT};
use ipnet::IpNet;
use serde::Serialize;

use super::explain_source::{self, SourceAnswer};
use super::table::{self, PacketsOutput, Style};
use crate::{
    datapath::{
        inspect::{DecidedBy, KernelDecision, PinnedState},
        pins::DEFAULT_PIN_ROOT,
    },
    policy::{self, proto_has_ports, CompiledPolicy, Policy, Verdict, L4},
    state::{self, DEFAULT_STATE_DIR},
};

/// Exit code of `explain` when the kernel and the policy file disagree.
pub const EXIT_DISAGREE: i32 = 3;

#[derive(Debug, Args)]
#[command(after_long_help = "\
The answer comes from the maps pinned in bpffs (the policy the kernel
enforces now), not from the agent: it works with the agent down. Names of
environments and rules come from the agent's saved policy copy
(STATE_DIR/policy-v<ABI>.json). With --config, or else with that saved copy,
the file's answer is computed too and compared with the kernel's.

Exit status: 0 the kernel's answer (and the file's, if any, which agrees);
3 the kernel and the policy file DISAGREE; 1 an error.

With --pcap FILE (pcap or pcapng as `tcpdump -w` writes them: Ethernet,
Linux cooked SLL and SLL2 of `-i any`, raw IP), every packet of the capture
instead: time, interface (pcapng if_name, SLL2 ifindex), the tuple as the
datapath reads it (outer and inner of tunnels), environments, deciding rule,
verdict, what the datapath does (pass/drop) and why when it is not a plain
rule (non-ip, malformed, fragment, spoofed, reply ...), then a summary.
Decided by the kernel's own header walk and decision over the pinned maps
(or over --policy FILE, where no agent ever ran); explaining counts and
reports nothing. Replies: the flows the capture's own packets open are
tracked as the kernel tracks them, so their replies say `reply`; a packet
that may answer a flow opened before the capture says so in its reason
(`would pass as reply if ...`) and keeps the policy's verdict, and so do
ICMP errors that may be `related`; timeouts are not modelled. The source
check is asked (pinned maps and this namespace's routes) for packets entering
a named interface envfence is attached to; otherwise the line says `not
checked` and why. A capture streams: memory stays bounded whatever its size;
progress is shown on stderr when it is a terminal. With `tcpdump -i any` a
forwarded packet is captured twice (in, then out): both lines say what the
datapath does, which judges it once. A bad capture (cut short,
bad block length, absurd captured length, unknown link type) is an error
naming the packet.

Examples:
  envfence explain 10.30.1.2 10.10.1.2 --port 5432
  envfence explain 10.30.1.2 10.10.1.2 --proto udp --port 53
  envfence explain fd00:30::7 fd00:10::1 --proto icmp
  envfence explain 10.10.9.9 10.10.1.2 --proto udp --port 53 --iif lxc12ab
  envfence explain 10.30.1.2 10.10.1.2 --port 443 --config /etc/envfence/policy.yaml
  envfence explain --pcap node.pcap --verdict drop
  envfence explain --pcap node.pcapng --env test -o jsonl
  envfence explain --pcap lab.pcap --policy policy.yaml")]
pub struct ExplainArgs {
    /// Source address.
    #[arg(required_unless_present = "pcap")]
    pub src: Option<IpAddr>,
    /// Destination address.
    #[arg(required_unless_present = "pcap")]
    pub dst: Option<IpAddr>,
    /// Judge every packet of this capture (pcap or pcapng) instead of one
    /// flow.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["src", "dst", "proto", "port", "sport", "fragment", "iif", "config"])]
    pub pcap: Option<PathBuf>,
    /// With --pcap: judge by this policy file, not by the pinned maps.
    #[arg(long, value_name = "FILE", requires = "pcap")]
    pub policy: Option<PathBuf>,
    /// With --pcap: show only packets with this verdict (allow, log, audit,
    /// drop, reply, spoofed, pass, related; drop: every packet the
    /// datapath drops, whatever the reason). Repeatable.
    #[arg(long, value_name = "VERDICT", requires = "pcap")]
    pub verdict: Vec<String>,
    /// With --pcap: show only packets from or to this environment.
    /// Repeatable.
    #[arg(long, value_name = "ENV", requires = "pcap")]
    pub env: Vec<String>,
    /// Protocol: tcp, udp, sctp, icmp, icmpv6 or a number (default: tcp
    /// with --port, else a protocol without ports).
    #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
    pub proto: Option<u8>,
    /// Destination port (TCP, UDP, SCTP).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Source port (shown; the verdict does not depend on it).
    #[arg(long, value_name = "N")]
    pub sport: Option<u16>,
    /// Judge it as a packet whose ports cannot be read (a non-first
    /// fragment): the strictest verdict of the pair.
    #[arg(long)]
    pub fragment: bool,
    /// The interface the packet enters: also say whether the source check
    /// of that interface accepts SRC, and why (run in the node's network
    /// namespace: the route comes from its routing table).
    #[arg(long, value_name = "IFACE")]
    pub iif: Option<String>,
    /// Compare with this policy file (default: the agent's saved copy).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// bpffs root of the agent's pins.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
    /// The agent's state directory (its saved policy copy).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Output format (jsonl: one line per packet with --pcap; the one
    /// record on one line without).
    #[arg(short = 'o', long, value_enum, default_value_t = PacketsOutput::Table)]
    pub output: PacketsOutput,
    /// No colour, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
}

fn parse_proto(s: &str) -> Result<u8, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        "icmp" => proto::ICMP,
        "icmpv6" | "icmp6" | "ipv6-icmp" => proto::ICMPV6,
        other => other
            .parse()
            .map_err(|_| format!("{s:?}: expected tcp, udp, sctp, icmp, icmpv6 or a number"))?,
    })
}

/// One side of the flow as one source sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    pub ip: IpAddr,
    pub env_id: Option<u32>,
    pub env: String,
    #[serde(serialize_with = "table::ser_display_opt")]
    pub cidr: Option<IpNet>,
}

/// A port rule of the pair.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortRuleOut {
    pub ports: String,
    pub verdict: String,
    pub rule: String,
}

/// The kernel's answer.
#[derive(Clone, Debug, Serialize)]
pub struct KernelAnswer {
    pub pin_dir: String,
    pub generation: u32,
    pub active_slot: u32,
    pub mode: String,
    pub src: Side,
    pub dst: Side,
    pub verdict: String,
    pub rule_id: u16,
    pub rule: String,
    /// `port_rule`, `pair`, `pair_default`, `no_ports`.
    pub decided_by: String,
    /// What the rule's own verdict is (before audit mode), when known.
    pub rule_verdict: Option<String>,
    pub port_rules: Vec<PortRuleOut>,
    /// Where the names come from.
    pub names_from: Option<String>,
    /// What a reply of this flow (destination -> source) gets.
    pub reply: String,
}

/// What a reply of a flow judged `verdict` in a pair with connection-
/// tracking flags `ct` gets.
fn reply_text(verdict: u8, ct: u8) -> String {
    use envfence_ebpf::verdict as v;
    let let_through = verdict == v::ALLOW || verdict == v::LOG;
    if let_through && ct & envfence_ebpf::ct::OPENS != 0 {
        "passes as `reply` of this tracked flow (the reverse pair is not allowed for every packet); ICMP errors quoting it pass as `related`".to_owned()
    } else if let_through {
        "judged by the reverse pair, which allows every packet (not tracked: fast path)".to_owned()
    } else {
        "no state: this flow is not let through, so packets back are judged by the policy like any packet".to_owned()
    }
}

/// A policy file's answer.
#[derive(Clone, Debug, Serialize)]
pub struct FileAnswer {
    pub path: String,
    pub src: Side,
    pub dst: Side,
    pub verdict: String,
    pub rule: String,
}

/// What `explain -o json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Option<String>,
    pub port: Option<u16>,
    pub sport: Option<u16>,
    pub fragment: bool,
    pub kernel: KernelAnswer,
    /// With `--iif`: the source check of that interface.
    pub source_check: Option<SourceAnswer>,
    pub file: Option<FileAnswer>,
    /// `None` when there was nothing to compare with.
    pub agree: Option<bool>,
    pub differences: Vec<String>,
    pub notes: Vec<String>,
}

/// The names of the kernel's ids: the saved policy, compiled with the ids
/// it was installed with.
pub(super) fn saved_names(state_dir: &Path) -> Option<(Policy, CompiledPolicy, u32, String)> {
    let saved = state::load(state_dir)?;
    let (p, compiled) = saved.compile().ok()?;
    Some((
        p,
        compiled,
        saved.generation,
        state::path(state_dir).display().to_string(),
    ))
}

fn verdict_name(v: u8) -> String {
    Verdict::from_u8(v).map_or_else(|| format!("unknown({v})"), |v| v.as_str().to_owned())
}

fn ports_text(proto: u8, first: u16, last: u16) -> String {
    let name = policy::proto_name(proto).map_or_else(|| proto.to_string(), str::to_owned);
    if first == last {
        format!("{first}/{name}")
    } else {
        format!("{first}-{last}/{name}")
    }
}

/// The l4 case of the flow asked about.
fn l4_of(proto: Option<u8>, port: Option<u16>, fragment: bool) -> L4 {
    match proto {
        Some(p) if proto_has_ports(p) => match (fragment, port) {
            (true, _) => L4::NoPorts,
            (false, Some(dport)) => L4::Ports { proto: p, dport },
            // No port given: the pair's own verdict (port rules listed).
            (false, None) => L4::Other,
        },
        _ => L4::Other,
    }
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let (src, dst) = match (&args.pcap, args.src, args.dst) {
        (Some(file), _, _) => {
            return super::explain_pcap::run(super::explain_pcap::PcapArgs {
                file,
                policy: args.policy.as_deref(),
                pin_root: &args.pin_root,
                state_dir: &args.state_dir,
                verdicts: &args.verdict,
                envs: &args.env,
                output: args.output,
                no_color: args.no_color,
            })
        }
        (None, Some(src), Some(dst)) => (src, dst),
        _ => anyhow::bail!("explain needs SRC and DST, or --pcap FILE"),
    };
    // An IPv4-mapped IPv6 address goes with either family.
    let v6_only = |ip: IpAddr| matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_none());
    if (src.is_ipv4() && v6_only(dst)) || (dst.is_ipv4() && v6_only(src)) {
        anyhow::bail!("{} and {} are of different address families", src, dst);
    }
    let proto = args.proto.or(args.port.map(|_| proto::TCP));
    if args.port.is_some() && proto.is_some_and(|p| !proto_has_ports(p)) {
        anyhow::bail!("--port needs a protocol with ports (tcp, udp, sctp)");
    }
    let l4 = l4_of(proto, args.port, args.fragment);
    let state = PinnedState::open(&args.pin_root)?;
    let k = state.decide(src, dst, l4)?;
    let names = saved_names(&args.state_dir);
    let mut notes = Vec::new();
    if proto.is_some_and(proto_has_ports) && args.port.is_none() && !args.fragment {
        notes.push(
            "no --port given: this is the pair's verdict; a port rule listed below wins for its ports"
                .to_owned(),
        );
    }
    if let Some((_, _, generation, path)) = &names {
        if *generation != k.config.generation {
            notes.push(format!(
                "the saved policy copy {path} is generation {generation} but the kernel runs generation {}: names may be wrong",
                k.config.generation
            ));
        }
    } else {
        notes.push(format!(
            "no saved policy copy at {}: environments and rules are shown by id",
            state::path(&args.state_dir).display()
        ));
    }
    let kernel = kernel_answer(&state, &k, src, dst, names.as_ref())?;
    let source_check = match &args.iif {
        Some(iface) => Some(explain_source::answer(&state, k.slot, iface, src, dst)?),
        None => None,
    };

    // The file to compare with: --config, else the saved copy.
    let file = match &args.config {
        Some(path) => {
            let p = policy::load(path)
                .map_err(|e| anyhow::anyhow!("{e}\n{}: not a valid policy file", path.display()))?;
            Some((path.display().to_string(), p))
        }
        None => names
            .as_ref()
            .map(|(p, _, _, path)| (format!("{path} (the agent's saved copy)"), p.clone())),
    };
    let (file, differences) = match file {
        Some((path, p)) => {
            let compiled = policy::compile(&p);
            let answer = file_answer(&compiled, &path, src, dst, l4);
            let diffs = compare(&kernel, &answer, names.is_some());
            (Some(answer), diffs)
        }
        None => (None, Vec::new()),
    };
    let agree = file.as_ref().map(|_| differences.is_empty());
    let explanation = Explanation {
        src,
        dst,
        proto: proto.map(|p| policy::proto_name(p).map_or_else(|| p.to_string(), str::to_owned)),
        port: args.port,
        sport: args.sport,
        fragment: args.fragment,
        kernel,
        source_check,
        file,
        agree,
        differences,
        notes,
    };
    match args.output {
        PacketsOutput::Json => table::print_json(&explanation)?,
        PacketsOutput::Jsonl => println!("{}", serde_json::to_string(&explanation)?),
        PacketsOutput::Table => {
            table::print(&render(&explanation, &Style::for_stdout(args.no_color)))
        }
    }
    if explanation.agree == Some(false) {
        eprintln!(
            "envfence: the kernel and the policy file DISAGREE on this flow (exit {EXIT_DISAGREE})"
        );
        table::exit(EXIT_DISAGREE);
    }
    Ok(())
}

fn mode_of(config: &Config, slot: u32) -> &'static str {
    if config.slot_audit_mode[(slot & 1) as usize] != 0 {
        "audit"
    } else {
        "enforce"
    }
}

fn kernel_answer(
    state: &PinnedState,
    k: &KernelDecision,
    src: IpAddr,
    dst: IpAddr,
    names: Option<&(Policy, CompiledPolicy, u32, String)>,
) -> anyhow::Result<KernelAnswer> {
    let n = super::explain_pcap::Names(names.map(|(_, c, _, _)| c.clone()));
    let env = |id: u32| n.env(id);
    let rule = |id: u16| n.rule(id);
    let rule_name = rule(k.rule);
    let rule_verdict = names.and_then(|(p, _, _, _)| {
        if k.rule == RULE_DEFAULT {
            Some(p.default.as_str().to_owned())
        } else {
            p.rule(&rule_name).map(|r| r.verdict.as_str().to_owned())
        }
    });
    let decided_by = match k.by {
        DecidedBy::PortRule { .. } => "port_rule",
        DecidedBy::Pair if k.rule == RULE_DEFAULT => "pair_default",
        DecidedBy::Pair => "pair",
        DecidedBy::NoPorts => "no_ports",
    };
    let mut port_rules: Vec<PortRuleOut> = Vec::new();
    if k.pair.has_port_rules != 0 {
        let entries = state
            .port_rules_of(k.slot, k.src.id, k.dst.id)
            .context("listing the pair's port rules")?;
        // Consecutive ports of one protocol, verdict and rule as one range.
        let mut run: Option<(u8, u16, u16, u8, u16)> = None;
        let flush = |r: (u8, u16, u16, u8, u16), out: &mut Vec<PortRuleOut>| {
            out.push(PortRuleOut {
                ports: ports_text(r.0, r.1, r.2),
                verdict: verdict_name(r.3),
                rule: rule(r.4),
            });
        };
        for (key, v) in entries {
            run = match run {
                Some(r)
                    if r.0 == key.proto
                        && u32::from(r.2) + 1 == u32::from(key.port)
                        && r.3 == v.verdict
                        && r.4 == v.rule =>
                {
                    Some((r.0, r.1, key.port, r.3, r.4))
                }
                Some(r) => {
                    flush(r, &mut port_rules);
                    Some((key.proto, key.port, key.port, v.verdict, v.rule))
                }
                None => Some((key.proto, key.port, key.port, v.verdict, v.rule)),
            };
        }
        if let Some(r) = run {
            flush(r, &mut port_rules);
        }
    }
    Ok(KernelAnswer {
        pin_dir: state.dir().display().to_string(),
        generation: k.config.generation,
        active_slot: k.slot,
        mode: mode_of(&k.config, k.slot).to_owned(),
        src: Side {
            ip: src,
            env_id: Some(k.src.id),
            env: env(k.src.id),
            cidr: k.src.prefix,
        },
        dst: Side {
            ip: dst,
            env_id: Some(k.dst.id),
            env: env(k.dst.id),
            cidr: k.dst.prefix,
        },
        verdict: verdict_name(k.verdict),
        rule_id: k.rule,
        rule: rule_name,
        decided_by: decided_by.to_owned(),
        rule_verdict,
        port_rules,
        names_from: names.map(|(_, _, _, path)| path.clone()),
        reply: reply_text(k.verdict, k.pair.ct),
    })
}

fn file_answer(c: &CompiledPolicy, path: &str, src: IpAddr, dst: IpAddr, l4: L4) -> FileAnswer {
    let (s, s_cidr) = c.lookup_env(src);
    let (d, d_cidr) = c.lookup_env(dst);
    let (verdict, rule) = c.decide(s, d, l4);
    FileAnswer {
        path: path.to_owned(),
        src: Side {
            ip: src,
            env_id: None,
            env: c.env_name(s).to_owned(),
            cidr: s_cidr,
        },
        dst: Side {
            ip: dst,
            env_id: None,
            env: c.env_name(d).to_owned(),
            cidr: d_cidr,
        },
        verdict: verdict_name(verdict),
        rule: c.rule_name(rule).to_owned(),
    }
}

/// The differences between the kernel's and the file's answers (names are
/// compared only when the kernel's ids could be named).
fn compare(k: &KernelAnswer, f: &FileAnswer, named: bool) -> Vec<String> {
    let show = |c: &Option<IpNet>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
    let mut out = Vec::new();
    if k.verdict != f.verdict {
        out.push(format!("verdict: kernel {}, file {}", k.verdict, f.verdict));
    }
    if named && k.rule != f.rule {
        out.push(format!("rule: kernel {}, file {}", k.rule, f.rule));
    }
    if named && k.src.env != f.src.env {
        out.push(format!(
            "source environment: kernel {}, file {}",
            k.src.env, f.src.env
        ));
    }
    if named && k.dst.env != f.dst.env {
        out.push(format!(
            "destination environment: kernel {}, file {}",
            k.dst.env, f.dst.env
        ));
    }
    if k.src.cidr != f.src.cidr {
        out.push(format!(
            "source CIDR: kernel {}, file {}",
            show(&k.src.cidr),
            show(&f.src.cidr)
        ));
    }
    if k.dst.cidr != f.dst.cidr {
        out.push(format!(
            "destination CIDR: kernel {}, file {}",
            show(&k.dst.cidr),
            show(&f.dst.cidr)
        ));
    }
    out
}

fn side_text(s: &Side) -> String {
    match s.cidr {
        Some(c) => format!("{} in {} ({c})", s.ip, s.env),
        None => format!("{} in {} (in no environment's CIDR)", s.ip, s.env),
    }
}

fn meaning(verdict: &str) -> &'static str {
    match verdict {
        "allow" => "passes, not reported",
        "log" => "passes and is reported",
        "audit" => "passes and is reported as a would-be drop",
        "drop" => "dropped and reported",
        _ => "unknown",
    }
}

/// The explanation as text.
pub fn render(e: &Explanation, s: &Style) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<13}{value}", label);
    };
    let k = &e.kernel;
    let ep = |ip: IpAddr, port: Option<u16>| match (ip, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let mut flow = format!(
        "{} {} -> {}",
        e.proto.as_deref().unwrap_or("ip"),
        ep(e.src, e.sport),
        ep(e.dst, e.port)
    );
    if e.fragment {
        flow.push_str(" (ports unreadable: a non-first fragment)");
    }
    line("flow", flow);
    line(
        "kernel",
        format!(
            "generation {}, slot {}, mode {} ({})",
            k.generation, k.active_slot, k.mode, k.pin_dir
        ),
    );
    line("source", side_text(&k.src));
    line("destination", side_text(&k.dst));
    let spoofed = e.source_check.as_ref().is_some_and(|c| !c.accepted);
    if let Some(c) = &e.source_check {
        for (label, value) in explain_source::lines(c, k.mode == "audit") {
            line(label, value);
        }
    }
    let pair = format!("{} -> {}", k.src.env, k.dst.env);
    let by = match k.decided_by.as_str() {
        "port_rule" => format!(
            "rule {} (a port rule of {pair}: beats the pair's rule)",
            k.rule
        ),
        "pair_default" => format!("the default (no rule names {pair})"),
        "no_ports" => format!(
            "rule {} (ports unreadable: the strictest verdict of {pair} and its port rules)",
            k.rule
        ),
        _ => format!("rule {} ({pair})", k.rule),
    };
    line("decided by", by);
    let mut verdict = format!(
        "{}: {}",
        s.verdict(&k.verdict.to_uppercase()),
        meaning(&k.verdict)
    );
    if k.verdict == "audit" && k.mode == "audit" && k.rule_verdict.as_deref() == Some("drop") {
        verdict.push_str(&format!(
            " ({} says drop; mode audit turns every drop into audit)",
            if k.rule == policy::DEFAULT_RULE {
                "the default"
            } else {
                "the rule"
            }
        ));
    }
    if spoofed {
        line(
            "verdict",
            format!("{verdict} (only if the source were genuine)"),
        );
    } else {
        line("verdict", verdict);
    }
    line("reply", k.reply.clone());
    if !k.port_rules.is_empty() {
        let rules: Vec<String> = k
            .port_rules
            .iter()
            .map(|r| format!("{} {} ({})", r.ports, s.verdict(&r.verdict), r.rule))
            .collect();
        line("port rules", format!("{pair}: {}", rules.join(", ")));
    }
    if let Some(from) = &k.names_from {
        line("names", format!("from {from}"));
    }
    for n in &e.notes {
        line("note", n.clone());
    }
    if let Some(f) = &e.file {
        out.push('\n');
        let summary = format!(
            "{} by {} ({} {} -> {} {})",
            f.verdict,
            f.rule,
            f.src.env,
            f.src.cidr.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            f.dst.env,
            f.dst.cidr.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        );
        if e.differences.is_empty() {
            let _ = writeln!(
                out,
                "{:<13}{}: {summary}: {}",
                "policy file",
                f.path,
                s.green("agrees with the kernel")
            );
        } else {
            let _ = writeln!(
                out,
                "{}",
                s.red(&format!(
                    "!!! DISAGREEMENT: the kernel and {} judge this flow differently",
                    f.path
                ))
            );
            let _ = writeln!(out, "{:<13}{summary}", "  file says");
            for d in &e.differences {
                let _ = writeln!(out, "  - {d}");
            }
            let _ = writeln!(
                out,
                "  The kernel enforces another policy than this file: did a reload fail\n  (envfence status: last reload), or does the agent read another file?"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn reply_of_the_example_dns_flow_is_tracked() {
        let p = policy::parse(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN).expect("policy");
        let c = policy::compile(&p);
        let (t, pr) = (
            c.env_id("test").expect("test"),
            c.env_id("production").expect("prod"),
        );
        let dns = L4::Ports {
            proto: envfence_ebpf::proto::TCP,
            dport: 53,
        };
        let (v, _) = c.decide(t, pr, dns);
        let ct = c.pair(t, pr).expect("pair").ct;
        assert!(reply_text(v, ct).starts_with("passes as `reply`"));
        let (v, _) = c.decide(pr, t, dns);
        let ct = c.pair(pr, t).expect("pair").ct;
        assert!(reply_text(v, ct).starts_with("no state"));
        let (v, _) = c.decide(pr, pr, dns);
        let ct = c.pair(pr, pr).expect("pair").ct;
        assert!(reply_text(v, ct).contains("not tracked"));
    }

    use super::*;

    #[test]
    fn l4_cases() {
        assert_eq!(
            l4_of(Some(proto::TCP), Some(53), false),
            L4::Ports {
                proto: proto::TCP,
                dport: 53
            }
        );
        assert_eq!(l4_of(Some(proto::UDP), None, false), L4::Other);
        assert_eq!(l4_of(Some(proto::UDP), Some(53), true), L4::NoPorts);
        assert_eq!(l4_of(Some(proto::ICMP), None, true), L4::Other);
        assert_eq!(l4_of(None, None, false), L4::Other);
        assert_eq!(parse_proto("ICMP"), Ok(proto::ICMP));
        assert_eq!(parse_proto("47"), Ok(47));
        assert!(parse_proto("gre").is_err());
    }
}
