//! `envfence status`: the agent's state, or what the pinned maps say when
//! it is down.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::Args;

use super::table::{self, Align, Cell, Color, Output, Style, Table};
use crate::{
    api::{
        client::{Client, ClientError, DEFAULT_SOCKET},
        report,
        types::{unix_to_rfc3339, StatusReport},
    },
    datapath::pins::DEFAULT_PIN_ROOT,
    state::DEFAULT_STATE_DIR,
};

/// Exit code of `status` when the agent did not answer (the report then
/// comes from the pinned maps).
pub const EXIT_AGENT_DOWN: i32 = 2;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Exit status: 0 the agent answered; 2 the agent did not answer (what the
pinned maps say is shown instead); 1 an error.

Examples:
  envfence status
  envfence status -o json | jq .interfaces
  envfence status --socket /run/envfence/envfence.sock --pin-root /sys/fs/bpf/envfence")]
pub struct StatusArgs {
    /// The agent's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// bpffs root of the agent's pins (read when the agent is down).
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
    /// The agent's state directory (its saved policy copy).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// No colour, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.socket);
    let report = match client.get_json::<StatusReport>("/v1/status") {
        Ok(r) => r,
        // The agent may well be up: say so rather than "down" (and the
        // pins are root's too).
        Err(e @ ClientError::PermissionDenied { .. }) => return Err(e.into()),
        Err(e) => {
            let mut r = report::from_pins(&args.pin_root, &args.state_dir);
            r.agent_error = Some(e.to_string());
            r.socket = args.socket.display().to_string();
            r
        }
    };
    match args.output {
        Output::Json => table::print_json(&report)?,
        Output::Table => table::print(&render(&report, &Style::for_stdout(args.no_color))),
    }
    if !report.agent_running {
        table::exit(EXIT_AGENT_DOWN);
    }
    Ok(())
}

fn ago(t: f64) -> String {
    if t <= 0.0 || !t.is_finite() {
        return String::new();
    }
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t);
    match SystemTime::now().duration_since(then) {
        Ok(d) => format!(
            " ({} ago)",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(_) => String::new(),
    }
}

/// The status as text.
pub fn render(r: &StatusReport, s: &Style) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
    };
    if r.agent_running {
        line(
            "agent",
            format!("{} (version {}, ABI v{})", s.green("up"), r.version, r.abi),
        );
    } else {
        line(
            "agent",
            format!(
                "{}: {}",
                s.red("DOWN"),
                r.agent_error.as_deref().unwrap_or("not reachable")
            ),
        );
        let attached = r.interfaces.len();
        line(
            "kernel",
            if r.pin_dir.is_empty() {
                s.red("nothing pinned: nothing is enforced on this node")
            } else {
                format!(
                    "still enforcing generation {} on {attached} interface(s) from the pins (shown below)",
                    r.generation
                )
            },
        );
    }
    if !r.node.is_empty() {
        line("node", r.node.clone());
    }
    if r.agent_running {
        line(
            "started",
            format!("{}{}", unix_to_rfc3339(r.started_at), ago(r.started_at)),
        );
        line(
            "ready",
            if r.ready {
                s.green("yes")
            } else {
                format!("{}: {}", s.red("no"), r.not_ready_reason)
            },
        );
    }
    let mode = match r.mode.as_str() {
        "" => s.dim("unknown"),
        "audit" => s.yellow("audit (nothing is dropped; drops are reported as audit)"),
        m => m.to_owned(),
    };
    line("mode", mode);
    let mut policy = format!("generation {}", r.generation);
    if let Some(slot) = r.active_slot {
        let _ = write!(policy, ", active slot {slot}");
    }
    line("policy", policy);
    if !r.policy_origin.is_empty() {
        line("origin", r.policy_origin.clone());
    }
    if !r.policy_sha256.is_empty() {
        line("sha256", r.policy_sha256.clone());
    }
    if r.policy_loaded_at > 0.0 {
        line(
            "loaded",
            format!(
                "{}{}",
                unix_to_rfc3339(r.policy_loaded_at),
                ago(r.policy_loaded_at)
            ),
        );
    }
    if r.agent_running {
        line(
            "last reload",
            match &r.last_reload_error {
                None => s.green("ok"),
                Some(e) => format!(
                    "{} (the previous policy stays in force):\n{}",
                    s.red("FAILED"),
                    indent(e, 14)
                ),
            },
        );
    }
    if !r.environments.is_empty() {
        line("environments", r.environments.join(", "));
    }
    if !r.rules.is_empty() {
        line("rules", r.rules.join(", "));
    }
    line(
        "pin dir",
        if r.pin_dir.is_empty() {
            s.dim("none")
        } else {
            r.pin_dir.clone()
        },
    );
    if !r.metrics_addr.is_empty() {
        line("metrics", format!("http://{}/metrics", r.metrics_addr));
    }
    line("socket", r.socket.clone());
    let lost = if r.events_lost > 0 {
        s.yellow(&format!("{} lost (ring buffer full)", r.events_lost))
    } else {
        "0 lost".to_owned()
    };
    let mut events = format!("{} emitted, {lost}", r.events_emitted);
    if r.agent_running {
        let _ = write!(
            events,
            "; the agent keeps the last {} ({} seen since start)",
            r.events_stored, r.events_seen
        );
    }
    line("events", events);

    out.push('\n');
    let mut t = Table::new(&[
        ("INTERFACE", Align::Left),
        ("IFINDEX", Align::Right),
        ("INGRESS", Align::Left),
        ("EGRESS", Align::Left),
    ]);
    for i in &r.interfaces {
        let hook = |name: &str| -> Cell {
            match i.hooks.iter().find(|h| h.hook == name) {
                Some(h) => match (h.program_id, &h.error) {
                    (Some(id), _) => {
                        let mut text = format!("prog {id}");
                        if let Some(link) = h.link_id {
                            let _ = write!(text, " link {link}");
                        }
                        Cell::new(text)
                    }
                    (None, Some(e)) => Cell::colored(format!("? ({e})"), Color::Yellow),
                    (None, None) => Cell::new("attached"),
                },
                None => Cell::colored("-", Color::Red),
            }
        };
        t.push(vec![
            Cell::new(if i.name.is_empty() { "?" } else { &i.name }),
            Cell::new(i.ifindex.to_string()),
            hook("ingress"),
            hook("egress"),
        ]);
    }
    if t.is_empty() {
        out.push_str(&s.yellow("no interface attached\n"));
    } else {
        out.push_str(&t.render(s));
    }
    for p in &r.pending_interfaces {
        let _ = writeln!(out, "{} {p}", s.red("not attached:"));
    }

    if let Some(c) = &r.counters {
        out.push('\n');
        let mut t = Table::new(&[
            ("VERDICT", Align::Left),
            ("PACKETS", Align::Right),
            ("BYTES", Align::Right),
        ]);
        for v in [
            "allow", "log", "audit", "drop", "spoofed", "reply", "related",
        ] {
            let vol = c.verdicts.get(v).copied().unwrap_or_default();
            t.push(vec![
                Cell::colored(v, Color::Verdict),
                Cell::new(vol.packets.to_string()),
                Cell::new(table::human_bytes(vol.bytes)),
            ]);
        }
        out.push_str(&t.render(s));
        let datapath: Vec<String> = c
            .datapath
            .iter()
            .filter(|(k, _)| !k.starts_with("events_"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "{:<14}{}", "datapath:", datapath.join(", "));
        let tracked: Vec<String> = c
            .tracked_flows
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let tracked = if tracked.is_empty() {
            "none".to_owned()
        } else {
            tracked.join(", ")
        };
        let _ = writeln!(out, "{:<14}{tracked}", "tracked:");
    }
    if !r.warnings.is_empty() {
        out.push('\n');
        for w in &r.warnings {
            let _ = writeln!(out, "{} {w}", s.yellow("warning:"));
        }
    }
    out
}

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}", " ".repeat(n)))
        .collect::<Vec<_>>()
        .join("\n")
}
