//! The tables of `envfence fleet`.

use std::fmt::Write as _;

use crate::{
    cli::table::{human_bytes, Align, Cell, Color, Style, Table},
    fleet::{
        drift::{short, Drift},
        status::{FleetStatus, NodeState},
        violations::{Top, TopBy, Violations, Volume},
    },
};

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// "3s ago" from `then` to `now` (Unix seconds).
fn ago(then: f64, now: f64) -> String {
    let secs = (now - then).max(0.0).round() as u64;
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}

fn rate(per_second: f64) -> String {
    if per_second >= 100.0 {
        format!("{per_second:.0}")
    } else if per_second >= 0.1 || per_second == 0.0 {
        format!("{per_second:.1}")
    } else {
        format!("{per_second:.3}")
    }
}

/// `fleet status`.
pub fn status(r: &FleetStatus, s: &Style) -> String {
    let mut t = Table::new(&[
        ("NODE", Align::Left),
        ("STATE", Align::Left),
        ("LAST SCRAPE", Align::Left),
        ("MODE", Align::Left),
        ("GEN", Align::Right),
        ("POLICY", Align::Left),
        ("IFACES", Align::Right),
        ("LOST EVENTS", Align::Right),
        ("RELOAD FAILURES", Align::Right),
        ("VERSION", Align::Left),
        ("INSTANCE", Align::Left),
    ]);
    for n in &r.nodes {
        let state = match n.state {
            NodeState::Up => Cell::colored("up", Color::Green),
            NodeState::Down => Cell::colored("DOWN", Color::Red),
            NodeState::Gone => Cell::colored("GONE", Color::Red),
        };
        let mode = match n.mode.as_deref() {
            Some("audit") => Cell::colored("audit", Color::Yellow),
            Some(m) => Cell::new(m),
            None => Cell::colored("-", Color::Dim),
        };
        let count = |v: Option<u64>| match v {
            Some(0) => Cell::new("0"),
            Some(x) => Cell::colored(x.to_string(), Color::Yellow),
            None => Cell::colored("-", Color::Dim),
        };
        let ifaces = match n.attached_interfaces {
            Some(0) => Cell::colored("0", Color::Red),
            v => Cell::new(opt(&v)),
        };
        t.push(vec![
            Cell::colored(n.node.clone(), Color::Bold),
            state,
            Cell::new(n.last_scrape.map_or("-".to_owned(), |t| ago(t, r.at))),
            mode,
            Cell::new(opt(&n.policy_generation)),
            Cell::new(n.policy_sha256.as_deref().map_or("-", short)),
            ifaces,
            count(n.events_lost),
            count(n.reload_failures),
            Cell::new(opt(&n.version)),
            Cell::colored(format!("{} {}", n.job, n.instance), Color::Dim),
        ]);
    }
    let mut out = t.render(s);
    let _ = writeln!(
        out,
        "{} agent(s): {} up, {}, {} (Prometheus {}, {}; values of down agents are the last known within {}s)",
        r.nodes.len(),
        r.up,
        if r.down > 0 {
            s.red(&format!("{} down", r.down))
        } else {
            "0 down".to_owned()
        },
        if r.gone > 0 {
            s.red(&format!("{} gone", r.gone))
        } else {
            "0 gone".to_owned()
        },
        r.prometheus,
        r.selector,
        r.window_seconds
    );
    out
}

fn verdict_cell(v: &str) -> Cell {
    Cell::colored(v, Color::Verdict)
}

fn volume_cells(v: &Volume) -> Vec<Cell> {
    vec![
        Cell::colored(v.packets.to_string(), Color::Bold),
        Cell::new(human_bytes(v.bytes)),
        Cell::new(rate(v.packets_per_second)),
        Cell::new(human_bytes(v.bytes_per_second.round() as u64)),
    ]
}

const VOLUME_HEADERS: [(&str, Align); 4] = [
    ("PACKETS", Align::Right),
    ("BYTES", Align::Right),
    ("PKT/S", Align::Right),
    ("BYTES/S", Align::Right),
];

fn footer(verdicts: &[String], from: &str, to: &str, seconds: u64) -> String {
    format!(
        "{} traffic from {from} to {to} ({seconds}s; rates are averages over it)",
        verdicts.join(",")
    )
}

/// The last line of a report with nothing in it.
fn empty(verdicts: &[String], from: &str, to: &str, seconds: u64) -> String {
    format!(
        "no {} packets in the window: {}\n",
        verdicts.join(","),
        footer(verdicts, from, to, seconds)
    )
}

/// The last line of a report: its totals and window.
fn totals(total: &Volume, verdicts: &[String], from: &str, to: &str, seconds: u64) -> String {
    format!(
        "{} packets, {} in {}\n",
        total.packets,
        human_bytes(total.bytes),
        footer(verdicts, from, to, seconds)
    )
}

/// `fleet violations`.
pub fn violations(r: &Violations, s: &Style) -> String {
    if r.pairs.is_empty() && r.rules.is_empty() {
        return empty(&r.verdicts, &r.from, &r.to, r.seconds);
    }
    let mut headers = vec![
        ("NODE", Align::Left),
        ("FROM", Align::Left),
        ("TO", Align::Left),
        ("VERDICT", Align::Left),
    ];
    headers.extend(VOLUME_HEADERS);
    let mut t = Table::new(&headers);
    for c in &r.pairs {
        let mut row = vec![
            Cell::new(c.node.clone()),
            Cell::new(c.src_env.clone()),
            Cell::new(c.dst_env.clone()),
            verdict_cell(&c.verdict),
        ];
        row.extend(volume_cells(&c.volume));
        t.push(row);
    }
    let mut out = t.render(s);
    if !r.rules.is_empty() {
        out.push('\n');
        let mut headers = vec![
            ("NODE", Align::Left),
            ("RULE", Align::Left),
            ("VERDICT", Align::Left),
        ];
        headers.extend(VOLUME_HEADERS);
        let mut t = Table::new(&headers);
        for c in &r.rules {
            let mut row = vec![
                Cell::new(c.node.clone()),
                Cell::new(c.rule.clone()),
                verdict_cell(&c.verdict),
            ];
            row.extend(volume_cells(&c.volume));
            t.push(row);
        }
        out.push_str(&t.render(s));
    }
    out.push_str(&totals(&r.total, &r.verdicts, &r.from, &r.to, r.seconds));
    out
}

/// `fleet top`.
pub fn top(r: &Top, s: &Style) -> String {
    if r.rows.is_empty() {
        return empty(&r.verdicts, &r.from, &r.to, r.seconds);
    }
    let mut headers: Vec<(&str, Align)> = VOLUME_HEADERS.to_vec();
    headers.extend_from_slice(match r.by {
        TopBy::Pair => &[("FROM", Align::Left), ("TO", Align::Left)][..],
        TopBy::Node => &[("NODE", Align::Left)][..],
        TopBy::Rule => &[("RULE", Align::Left)][..],
        TopBy::NodePair => &[
            ("NODE", Align::Left),
            ("FROM", Align::Left),
            ("TO", Align::Left),
        ][..],
    });
    headers.push(("VERDICT", Align::Left));
    headers.push(("NODES", Align::Left));
    let mut t = Table::new(&headers);
    for row in &r.rows {
        let mut cells = volume_cells(&row.volume);
        let o = |v: &Option<String>| Cell::new(v.clone().unwrap_or_default());
        match r.by {
            TopBy::Pair => cells.extend([o(&row.src_env), o(&row.dst_env)]),
            TopBy::Node => cells.push(o(&row.node)),
            TopBy::Rule => cells.push(o(&row.rule)),
            TopBy::NodePair => cells.extend([o(&row.node), o(&row.src_env), o(&row.dst_env)]),
        }
        cells.push(verdict_cell(&row.verdict));
        cells.push(Cell::new(row.nodes.join(",")));
        t.push(cells);
    }
    let mut out = t.render(s);
    if r.more > 0 {
        let _ = writeln!(out, "{}", s.dim(&format!("… and {} more (-n)", r.more)));
    }
    out.push_str(&totals(&r.total, &r.verdicts, &r.from, &r.to, r.seconds));
    out
}

/// `fleet drift`.
pub fn drift(r: &Drift, s: &Style) -> String {
    let mut out = String::new();
    match r.reference.file.as_deref() {
        Some(file) => {
            let sha = r
                .reference
                .sha256
                .values()
                .next()
                .map_or("", String::as_str);
            let _ = writeln!(out, "reference: {file} (sha256 {})", short(sha));
        }
        None => {
            for (job, sha) in &r.reference.sha256 {
                let n = r
                    .hashes
                    .iter()
                    .find(|h| &h.job == job && &h.sha256 == sha)
                    .map_or(0, |h| h.agents);
                let of: u64 = r
                    .hashes
                    .iter()
                    .filter(|h| &h.job == job)
                    .map(|h| h.agents)
                    .sum();
                let _ = writeln!(
                    out,
                    "reference: the majority of job {job}: policy {} ({n} of {of} agents)",
                    short(sha)
                );
            }
            for job in &r.ties {
                let _ = writeln!(
                    out,
                    "{} job {job}: no majority, {} policies tie",
                    s.yellow("warning:"),
                    r.hashes.iter().filter(|h| &h.job == job).count()
                );
            }
        }
    }
    if r.findings.is_empty() {
        let _ = writeln!(
            out,
            "{}: the {} agent(s) up agree",
            s.green("no drift"),
            r.agents
        );
        return out;
    }
    let mut t = Table::new(&[
        ("NODE", Align::Left),
        ("DRIFT", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for f in &r.findings {
        t.push(vec![
            Cell::colored(f.node.clone(), Color::Bold),
            Cell::colored(
                f.kind.clone(),
                if f.kind == "audit" {
                    Color::Yellow
                } else {
                    Color::Red
                },
            ),
            Cell::new(f.detail.clone()),
        ]);
    }
    out.push_str(&t.render(s));
    let _ = writeln!(
        out,
        "{} of {} agent(s) up drift; {} agree",
        r.agents - r.agreeing.min(r.agents),
        r.agents,
        r.agreeing
    );
    out
}
