//! `envfence top`: the heaviest violating pairs, addresses or rules, by
//! packets, over the flows the agent reported.

use std::{path::PathBuf, time::SystemTime};

use clap::{Args, ValueEnum};

use super::{
    flows::{down_hint, read_audit, FilterArgs},
    table::{self, Align, Cell, Color, Output, Style, Table},
};
use crate::api::{
    client::{Client, DEFAULT_SOCKET},
    query::{self, TOP_DEFAULT_VERDICTS},
    types::{TopBy, TopReply},
};

/// `--by`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// (source environment, destination environment).
    #[default]
    Pair,
    /// Source address.
    Src,
    /// Destination address.
    Dst,
    /// The deciding rule.
    Rule,
}

impl From<By> for TopBy {
    fn from(b: By) -> Self {
        match b {
            By::Pair => TopBy::Pair,
            By::Src => TopBy::Src,
            By::Dst => TopBy::Dst,
            By::Rule => TopBy::Rule,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Counts the packets of the flows the agent reported (drop and audit by
default: the violations; --verdict to choose), from the events it keeps in
memory, or from an audit log with --file.

Examples:
  envfence top                       # heaviest violating environment pairs
  envfence top --by src --since 15m  # who sends the most forbidden traffic
  envfence top --by rule -n 5 -o json
  envfence top --by dst --verdict drop --file /var/log/envfence/audit.jsonl")]
pub struct TopArgs {
    /// The agent's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// What to group by.
    #[arg(long, value_enum, default_value_t = By::Pair)]
    pub by: By,
    /// How many rows.
    #[arg(short = 'n', long, default_value_t = query::TOP_DEFAULT_LIMIT as u64, value_name = "ROWS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Count only the newest N matching events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub last: Option<u64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// No colour, even on a terminal.
    #[arg(long)]
    pub no_color: bool,
    /// Read this audit log (and its rotated files) instead of asking the
    /// agent.
    #[arg(long, value_name = "AUDITFILE")]
    pub file: Option<PathBuf>,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let last = args.last.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut query = args.filter.query(last)?;
    query.by = Some(TopBy::from(args.by).as_str().to_owned());
    query.limit = Some(args.limit.to_string());
    let reply = match &args.file {
        Some(file) => {
            let (records, _) = read_audit(file)?;
            query::top_reply(&query, &records, SystemTime::now())?
        }
        None => Client::new(&args.socket)
            .get_json(&format!("/v1/top?{}", query.to_query_string()))
            .map_err(down_hint)?,
    };
    match args.output {
        Output::Json => table::print_json(&reply)?,
        Output::Table => table::print(&render(&reply, &Style::for_stdout(args.no_color))),
    }
    Ok(())
}

/// The top table.
pub fn render(r: &TopReply, s: &Style) -> String {
    let verdicts = if r.verdicts.is_empty() {
        TOP_DEFAULT_VERDICTS.to_owned()
    } else {
        r.verdicts.join(",")
    };
    if r.rows.is_empty() {
        return format!(
            "no {verdicts} flows among the {} events kept; widen --since or drop a filter\n",
            r.stored
        );
    }
    let mut headers: Vec<(&str, Align)> = vec![
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
        ("EVENTS", Align::Right),
    ];
    headers.extend_from_slice(match r.by {
        TopBy::Pair => &[("FROM", Align::Left), ("TO", Align::Left)][..],
        TopBy::Src => &[("SOURCE", Align::Left), ("ENV", Align::Left)][..],
        TopBy::Dst => &[("DESTINATION", Align::Left), ("ENV", Align::Left)][..],
        TopBy::Rule => &[("RULE", Align::Left)][..],
    });
    headers.push(("VERDICTS", Align::Left));
    if r.by != TopBy::Rule {
        headers.push(("RULES", Align::Left));
    }
    headers.push(("LAST SEEN", Align::Left));
    let mut t = Table::new(&headers);
    for row in &r.rows {
        let mut cells = vec![
            Cell::colored(row.packets.to_string(), Color::Bold),
            Cell::new(table::human_bytes(row.bytes)),
            Cell::new(row.events.to_string()),
        ];
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        match r.by {
            TopBy::Pair => {
                cells.push(Cell::new(opt(&row.src_env)));
                cells.push(Cell::new(opt(&row.dst_env)));
            }
            TopBy::Src => {
                cells.push(Cell::new(
                    row.src.map(|a| a.to_string()).unwrap_or_default(),
                ));
                cells.push(Cell::new(opt(&row.src_env)));
            }
            TopBy::Dst => {
                cells.push(Cell::new(
                    row.dst.map(|a| a.to_string()).unwrap_or_default(),
                ));
                cells.push(Cell::new(opt(&row.dst_env)));
            }
            TopBy::Rule => cells.push(Cell::new(opt(&row.rule))),
        }
        // Strictest first.
        let mut vs: Vec<(&String, &u64)> = row.verdicts.iter().collect();
        vs.sort_by_key(|(v, _)| std::cmp::Reverse(verdict_rank(v)));
        let verdict_text = vs
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let strictest = vs.first().map_or("", |(v, _)| v.as_str());
        cells.push(Cell::colored(
            verdict_text,
            match strictest {
                "drop" => Color::Red,
                "audit" => Color::Yellow,
                _ => Color::None,
            },
        ));
        if r.by != TopBy::Rule {
            cells.push(Cell::new(row.rules.join(",")));
        }
        cells.push(Cell::new(row.last_seen.clone()));
        t.push(cells);
    }
    let mut out = t.render(s);
    out.push_str(&format!(
        "{} packets in {} {verdicts} events (of {} kept)\n",
        r.packets, r.events, r.stored
    ));
    out
}

fn verdict_rank(v: &str) -> u8 {
    v.parse::<crate::policy::Verdict>().map_or(0, |v| v.as_u8())
}
