//! `envfence flows`: recent reported flows from the agent (or from an audit
//! log with `--file`), filtered; `--follow` streams new ones.

use std::{
    io::BufRead as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{bail, Context as _};
use clap::Args;

use super::table::{self, Align, Cell, Color, FlowsOutput, Style, Table};
use crate::{
    api::{
        client::{Client, ClientError, DEFAULT_SOCKET},
        query::{format_time, is_verdict_name, parse_time, FlowFilter, QueryError},
        types::{FlowQuery, FlowsReply, Lagged},
    },
    events::EventRecord,
};

/// The filters shared by `flows` and `top`.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Source environment(s), comma-separated (`world`: in none).
    #[arg(long, value_name = "ENV[,ENV]")]
    pub from_env: Option<String>,
    /// Destination environment(s), comma-separated.
    #[arg(long, value_name = "ENV[,ENV]")]
    pub to_env: Option<String>,
    /// Verdict(s): allow, log, audit, drop, spoofed, reply, related
    /// (comma-separated).
    #[arg(long, value_name = "VERDICT[,VERDICT]", value_parser = parse_verdicts)]
    pub verdict: Option<String>,
    /// An address or CIDR, on either side of the flow.
    #[arg(long, value_name = "ADDR|CIDR")]
    pub ip: Option<String>,
    /// A port, on either side of the flow (TCP, UDP, SCTP).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Protocol(s): tcp, udp, sctp, icmp, icmpv6 (comma-separated).
    #[arg(long, value_name = "PROTO[,PROTO]")]
    pub proto: Option<String>,
    /// The deciding rule(s) (`default`: no rule decided).
    #[arg(long, value_name = "RULE[,RULE]")]
    pub rule: Option<String>,
    /// Only flows reported at or after: a duration ago (30s, 5m, 2h) or an
    /// RFC 3339 time (2026-11-23T02:16:00Z).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only flows reported at or before (as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

fn parse_verdicts(s: &str) -> Result<String, String> {
    for v in s.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        if !is_verdict_name(v) {
            return Err(QueryError::Verdict(v.to_owned()).to_string());
        }
    }
    Ok(s.to_owned())
}

impl FilterArgs {
    /// The query, with relative times made absolute now (so that the agent
    /// and the CLI agree on "5m ago").
    pub fn query(&self, last: Option<usize>) -> anyhow::Result<FlowQuery> {
        let now = SystemTime::now();
        let when = |field: &'static str, v: &Option<String>| -> anyhow::Result<Option<String>> {
            v.as_deref()
                .map(|v| parse_time(field, v, now).map(format_time))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{e}"))
        };
        let q = FlowQuery {
            from_env: self.from_env.clone(),
            to_env: self.to_env.clone(),
            verdict: self.verdict.clone(),
            ip: self.ip.clone(),
            port: self.port.map(|p| p.to_string()),
            proto: self.proto.clone(),
            rule: self.rule.clone(),
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            last: last.map(|n| n.to_string()),
            by: None,
            limit: None,
        };
        // Checked here so that a typo is told before the agent is asked.
        FlowFilter::from_query(&q, now).map_err(|e| anyhow::anyhow!("--{e}"))?;
        Ok(q)
    }
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Flows are the events the agent reported (verdicts log, audit and drop; at
most one per flow per --report-interval-ms, with the packets and bytes since
the previous report). The agent keeps the newest ones in memory (--event-store,
10000 by default); the audit log (--audit-file) keeps them all.

Examples:
  envfence flows --verdict drop --since 10m
  envfence flows --from-env test --to-env production --last 20
  envfence flows --ip 10.30.1.2 --port 5432 -o json
  envfence flows --follow --verdict drop,audit
  envfence flows --file /var/log/envfence/audit.jsonl --rule test-to-prod   # agent down")]
pub struct FlowsArgs {
    /// The agent's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the newest N matching flows.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub last: Option<u64>,
    /// Keep printing new flows as the agent reports them (until Ctrl-C).
    /// With --last or --since, matching stored flows come first.
    #[arg(short = 'f', long, conflicts_with_all = ["until", "file"])]
    pub follow: bool,
    /// Output format (with --follow, json prints one object per line).
    #[arg(short = 'o', long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,
    /// No colour, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
    /// Read this audit log (envfence agent --audit-file) and its rotated
    /// files instead of asking the agent: works with the agent down.
    #[arg(long, value_name = "AUDITFILE")]
    pub file: Option<PathBuf>,
}

pub fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let last = args.last.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let query = args.filter.query(last)?;
    let style = Style::for_stdout(args.no_color);
    if let Some(file) = &args.file {
        let filter = FlowFilter::from_query(&query, SystemTime::now())?;
        let (records, skipped) = read_audit(file)?;
        if skipped > 0 {
            eprintln!(
                "envfence: note: {skipped} line(s) of {} are not event records and were skipped (`envfence audit verify` checks the file)",
                file.display()
            );
        }
        let events = filter.apply(&records);
        let reply = FlowsReply {
            stored: records.len(),
            seen: records.len() as u64,
            events,
        };
        return print_reply(
            &reply,
            args.output,
            &style,
            &format!("in {}", file.display()),
        );
    }
    let client = Client::new(&args.socket);
    let qs = query.to_query_string();
    if args.follow {
        return follow(&client, &qs, args.output, &style);
    }
    let reply: FlowsReply = client
        .get_json(&format!("/v1/flows?{qs}"))
        .map_err(down_hint)?;
    print_reply(&reply, args.output, &style, "kept by the agent")
}

/// Adds the way out to an unreachable-agent error.
pub fn down_hint(e: ClientError) -> anyhow::Error {
    if e.is_unreachable() {
        anyhow::anyhow!(
            "{e}\nwith the agent down, read its audit log instead: envfence flows --file AUDITFILE"
        )
    } else {
        e.into()
    }
}

fn print_reply(
    reply: &FlowsReply,
    output: FlowsOutput,
    style: &Style,
    kept: &str,
) -> anyhow::Result<()> {
    match output {
        FlowsOutput::Json => table::print_json(reply),
        FlowsOutput::Jsonl => {
            let mut text = String::new();
            for e in &reply.events {
                text.push_str(&serde_json::to_string(e)?);
                text.push('\n');
            }
            table::print(&text);
            Ok(())
        }
        FlowsOutput::Table => {
            if reply.events.is_empty() {
                table::print(&format!(
                    "no matching flows ({} events {kept}); widen --since or drop a filter\n",
                    reply.stored
                ));
                return Ok(());
            }
            let mut t = flow_table();
            for e in &reply.events {
                t.push(flow_row(e));
            }
            let mut text = t.render(style);
            text.push_str(&format!(
                "{} flow(s) shown; {} events {kept}\n",
                reply.events.len(),
                reply.stored
            ));
            table::print(&text);
            Ok(())
        }
    }
}

/// The columns of a flows table.
pub fn flow_table() -> Table {
    Table::new(&[
        ("TIME", Align::Left),
        ("VERDICT", Align::Left),
        ("PROTO", Align::Left),
        ("SOURCE", Align::Left),
        ("SRC-ENV", Align::Left),
        ("DESTINATION", Align::Left),
        ("DST-ENV", Align::Left),
        ("RULE", Align::Left),
        ("IFACE", Align::Left),
        ("PKTS", Align::Right),
        ("BYTES", Align::Right),
    ])
}

fn endpoint(ip: IpAddr, port: u16, has_ports: bool) -> String {
    match (ip, has_ports) {
        (IpAddr::V4(a), true) => format!("{a}:{port}"),
        (IpAddr::V6(a), true) => format!("[{a}]:{port}"),
        (ip, false) => ip.to_string(),
    }
}

/// One event as a table row.
pub fn flow_row(e: &EventRecord) -> Vec<Cell> {
    let has_ports = matches!(e.proto.as_str(), "tcp" | "udp" | "sctp");
    let proto = if matches!(e.proto.as_str(), "icmp" | "icmpv6") {
        // The datapath keeps the ICMP type and code in sport and dport.
        format!("{} {}/{}", e.proto, e.sport, e.dport)
    } else {
        e.proto.clone()
    };
    let env_color = |env: &str| {
        if env == "world" {
            Color::Dim
        } else {
            Color::None
        }
    };
    vec![
        Cell::new(e.time.clone()),
        Cell::colored(e.verdict.clone(), Color::Verdict),
        Cell::new(proto),
        Cell::new(endpoint(e.src, e.sport, has_ports)),
        Cell::colored(e.src_env.clone(), env_color(&e.src_env)),
        Cell::new(endpoint(e.dst, e.dport, has_ports)),
        Cell::colored(e.dst_env.clone(), env_color(&e.dst_env)),
        Cell::new(e.rule.clone()),
        Cell::new(format!(
            "{} {}",
            e.interface,
            match e.direction.as_str() {
                "ingress" => "in",
                "egress" => "out",
                other => other,
            }
        )),
        Cell::new(e.packets.to_string()),
        Cell::new(e.bytes.to_string()),
    ]
}

/// Follows the agent's stream: a table is printed row by row (each row
/// aligned on its own), json and jsonl print a line per event.
fn follow(client: &Client, qs: &str, output: FlowsOutput, style: &Style) -> anyhow::Result<()> {
    let mut header_done = false;
    let mut failure: Option<anyhow::Error> = None;
    client
        .stream_lines(&format!("/v1/flows/follow?{qs}"), |line| {
            if let Ok(lag) = serde_json::from_str::<Lagged>(line) {
                eprintln!(
                    "envfence: {} event(s) missed: this reader fell behind the agent",
                    lag.lagged
                );
                return true;
            }
            match output {
                FlowsOutput::Json | FlowsOutput::Jsonl => {
                    table::print(&format!("{line}\n"));
                }
                FlowsOutput::Table => match serde_json::from_str::<EventRecord>(line) {
                    Ok(e) => {
                        let mut t = follow_table();
                        t.push(flow_row(&e));
                        let text = t.render(style);
                        // Line 0 is the header, line 1 the width-setting
                        // row, line 2 the event.
                        let lines: Vec<&str> = text.lines().collect();
                        let mut out = String::new();
                        if !header_done {
                            out.push_str(lines.first().copied().unwrap_or(""));
                            out.push('\n');
                            header_done = true;
                        }
                        out.push_str(lines.last().copied().unwrap_or(""));
                        out.push('\n');
                        table::print(&out);
                    }
                    Err(e) => {
                        failure = Some(anyhow::anyhow!(
                            "the agent sent a line that is not an event ({e}): {line}"
                        ));
                        return false;
                    }
                },
            }
            true
        })
        .map_err(down_hint)?;
    match failure {
        Some(e) => Err(e),
        None => {
            eprintln!("envfence: the agent closed the stream (it is stopping)");
            Ok(())
        }
    }
}

/// The follow table: fixed widths, so that rows printed one by one align.
fn follow_table() -> Table {
    let mut t = flow_table();
    // A header row of the widest usual values fixes the widths; it is
    // dropped when printing (only the real header and the row are kept).
    t.push(
        [
            "2026-11-23T02:16:02.112Z",
            "audit",
            "icmpv6 128/0",
            "[fd00:30:1::2]:40000",
            "production",
            "[fd00:10:1::2]:40000",
            "production",
            "test-to-prod",
            "veth-staging1 in",
            "100000",
            "10000000",
        ]
        .iter()
        .map(|s| Cell::new(*s))
        .collect(),
    );
    t
}

/// Reads the event records of an audit log and its rotated files (oldest
/// first); returns them and the number of lines skipped (meta records are
/// not counted).
pub fn read_audit(base: &Path) -> anyhow::Result<(Vec<EventRecord>, usize)> {
    if !base.exists() {
        bail!(
            "{}: no such audit file (the agent writes it with --audit-file)",
            base.display()
        );
    }
    let files = crate::audit::discover(base)
        .with_context(|| format!("listing the rotated files of {}", base.display()))?;
    let mut records = Vec::new();
    let mut skipped = 0usize;
    for file in files {
        let f = std::fs::File::open(&file)
            .with_context(|| format!("opening the audit file {}", file.display()))?;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.with_context(|| format!("reading {}", file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => {
                    skipped += 1;
                    continue;
                }
            };
            if value.get("audit").is_some() {
                continue;
            }
            match serde_json::from_value::<EventRecord>(value) {
                Ok(r) => records.push(r),
                Err(_) => skipped += 1,
            }
        }
    }
    Ok((records, skipped))
}
