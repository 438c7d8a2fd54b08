//! `envfence fleet`: the whole fleet's agents through Prometheus (status,
//! violations, top, drift). The connection options and the dispatch; the
//! queries are in [`crate::fleet`], the tables in `render`.

mod render;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};

use super::table::{self, Output, Style};
use crate::{
    api::query::parse_time,
    fleet::{
        client::{ClientOptions, PromClient},
        drift, queries, status,
        violations::{self, TopBy, Window},
        Fleet,
    },
};

/// Exit code of `fleet status` when an agent is down or gone, and of
/// `fleet drift` when there is drift.
pub const EXIT_FINDINGS: i32 = 3;

/// How to reach Prometheus, and what selects the agents. Every option may
/// come before or after the subcommand.
#[derive(Debug, Args)]
pub struct Connection {
    /// Prometheus' base URL (the one whose /api/v1/query answers): the
    /// cluster's or the ops cluster's (federation, remote_write, Thanos
    /// Query, Mimir's Prometheus API).
    #[arg(
        long,
        global = true,
        env = "ENVFENCE_PROMETHEUS_URL",
        value_name = "URL",
        default_value = ""
    )]
    pub prometheus: String,
    /// Send `Authorization: Bearer` with the token in this file.
    #[arg(
        long,
        global = true,
        env = "ENVFENCE_PROMETHEUS_BEARER_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth: USER, or USER:PASSWORD (the password may also come from
    /// --basic-auth-password-file or ENVFENCE_PROMETHEUS_PASSWORD).
    #[arg(
        long,
        global = true,
        env = "ENVFENCE_PROMETHEUS_BASIC_AUTH",
        value_name = "USER[:PASSWORD]"
    )]
    pub basic_auth: Option<String>,
    /// The basic auth password, read from this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify Prometheus' TLS certificate with.
    #[arg(
        long,
        global = true,
        env = "ENVFENCE_PROMETHEUS_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --key-file.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client certificate key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Do not verify Prometheus' TLS certificate.
    #[arg(long, global = true)]
    pub insecure_skip_verify: bool,
    /// Timeout of each query.
    #[arg(long, global = true, default_value = "30s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// PromQL label matchers that select the agents' series.
    #[arg(long, global = true, env = "ENVFENCE_FLEET_SELECTOR", value_name = "MATCHERS",
          default_value = queries::DEFAULT_SELECTOR)]
    pub selector: String,
    /// The label that names the node on the agents' series.
    #[arg(long, global = true, default_value = queries::DEFAULT_NODE_LABEL, value_name = "LABEL")]
    pub node_label: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// No colour, even on a terminal.
    #[arg(long, global = true)]
    pub no_color: bool,
}

/// `envfence fleet`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Asks Prometheus (--prometheus URL or ENVFENCE_PROMETHEUS_URL), which scrapes
every node's agent, and prints one table (or -o json). The PromQL of every
answer is in the README (\"Fleet view\") and shared with the shipped alerts
and dashboard.

Exit status: 0 fine; 3 an agent is down or gone (status), drift found
(drift); 1 an error (Prometheus unreachable, a query refused, no envfence
series, a label missing); 2 bad usage.

Examples:
  export ENVFENCE_PROMETHEUS_URL=http://prometheus.monitoring:9090
  envfence fleet status
  envfence fleet violations --since 1h
  envfence fleet top --by node --since 15m
  envfence fleet top --by pair --from 2026-12-01T22:00:00Z --to 2026-12-01T23:00:00Z
  envfence fleet drift --policy my-envfence/policy.yaml
  envfence fleet status -o json --bearer-token-file /var/run/secrets/token \\
      --ca-file ca.pem --prometheus https://prometheus.ops.example:9090")]
pub struct FleetArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// The time range of `violations` and `top`.
#[derive(Debug, Args, Clone)]
pub struct RangeArgs {
    /// The window: a duration back from now (15m, 1h, 2d) or an RFC 3339
    /// time.
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "1h",
        conflicts_with = "from"
    )]
    pub since: String,
    /// Start of an explicit range (RFC 3339 time, or a duration ago).
    #[arg(long, value_name = "WHEN", requires = "to")]
    pub from: Option<String>,
    /// End of an explicit range (RFC 3339 time, or a duration ago).
    #[arg(long, value_name = "WHEN", requires = "from")]
    pub to: Option<String>,
    /// The verdicts counted, comma-separated: drop, audit (forbidden),
    /// log, allow.
    #[arg(long, value_name = "VERDICT[,VERDICT]", default_value = "drop,audit",
          value_parser = parse_verdicts)]
    pub verdict: String,
}

/// `fleet top --by`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// Environment pair (and verdict), summed over the nodes.
    #[default]
    Pair,
    /// Node.
    Node,
    /// Deciding rule, summed over the nodes.
    Rule,
    /// Node and environment pair.
    NodePair,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every node's agent: up, down or gone (no longer scraped), last
    /// scrape, mode, policy generation and hash, attached interfaces, lost
    /// events, reload failures.
    ///
    /// Example: envfence fleet status
    Status {
        /// Look back this far for nodes that disappeared and for the last
        /// known values of down agents.
        #[arg(long, value_name = "DURATION", default_value = "1h",
              value_parser = humantime::parse_duration)]
        since: Duration,
    },
    /// Forbidden traffic by node × environment pair × verdict and by node ×
    /// rule in the window: exact packets and bytes, average rates.
    ///
    /// Example: envfence fleet violations --since 1h
    Violations {
        #[command(flatten)]
        range: RangeArgs,
    },
    /// The heaviest groups of forbidden traffic in the window.
    ///
    /// Example: envfence fleet top --by node --since 15m
    Top {
        #[command(flatten)]
        range: RangeArgs,
        /// What to group by.
        #[arg(long, value_enum, default_value_t = By::Pair)]
        by: By,
        /// How many rows.
        #[arg(short = 'n', long, default_value_t = 10, value_name = "ROWS",
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
    },
    /// Agents whose policy differs from the majority's (or from --policy
    /// FILE), agents in audit mode where enforce is expected, agents with
    /// an unattached interface.
    ///
    /// Example: envfence fleet drift --policy policy.yaml
    Drift {
        /// Compare with this policy file (its SHA-256, as the agents export
        /// it) instead of the majority.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

fn parse_verdicts(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for v in s.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let verdict = v
            .parse::<crate::policy::Verdict>()
            .map_err(|e| e.to_string())?;
        out.push(verdict.as_str().to_owned());
    }
    if out.is_empty() {
        return Err("no verdict given".to_owned());
    }
    Ok(out.join(","))
}

fn read_secret(what: &str, path: &PathBuf) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{what} {}", path.display()))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        bail!("{what} {}: the file is empty", path.display());
    }
    Ok(text)
}

impl Connection {
    fn fleet(&self) -> anyhow::Result<Fleet> {
        let bearer_token = self
            .bearer_token_file
            .as_ref()
            .map(|p| read_secret("--bearer-token-file", p))
            .transpose()?;
        let basic_auth = match &self.basic_auth {
            None => None,
            Some(s) => {
                let (user, inline) = match s.split_once(':') {
                    Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
                    None => (s.clone(), None),
                };
                let password = match (&self.basic_auth_password_file, inline) {
                    (Some(p), _) => read_secret("--basic-auth-password-file", p)?,
                    (None, Some(p)) => p,
                    (None, None) => {
                        std::env::var("ENVFENCE_PROMETHEUS_PASSWORD").with_context(|| {
                            format!(
                                "--basic-auth {user}: no password (give USER:PASSWORD, \
                                 --basic-auth-password-file or ENVFENCE_PROMETHEUS_PASSWORD)"
                            )
                        })?
                    }
                };
                Some((user, password))
            }
        };
        if self.selector.trim().is_empty() {
            bail!("--selector: empty (default: {})", queries::DEFAULT_SELECTOR);
        }
        if self.node_label.trim().is_empty() {
            bail!("--node-label: empty");
        }
        let client = PromClient::new(&ClientOptions {
            url: self.prometheus.clone(),
            bearer_token,
            basic_auth,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
            timeout: self.timeout,
        })?;
        Ok(Fleet {
            client,
            scope: queries::Scope {
                selector: self.selector.trim().to_owned(),
                node_label: self.node_label.trim().to_owned(),
                ..queries::Scope::default()
            },
        })
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RangeArgs {
    fn window(&self, now: SystemTime) -> anyhow::Result<Window> {
        let (from, to) = match (&self.from, &self.to) {
            (Some(f), Some(t)) => (parse_time("from", f, now)?, parse_time("to", t, now)?),
            _ => (parse_time("since", &self.since, now)?, now),
        };
        let w = Window {
            from: unix(from),
            to: unix(to),
        };
        if w.to <= w.from {
            bail!(
                "the range ends before it starts (--from {:?} --to {:?})",
                self.from.as_deref().unwrap_or(&self.since),
                self.to.as_deref().unwrap_or("now")
            );
        }
        Ok(w)
    }

    fn verdicts(&self) -> Vec<String> {
        self.verdict.split(',').map(str::to_owned).collect()
    }
}

pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let c = &args.connection;
    let fleet = c.fleet()?;
    let style = Style::for_stdout(c.no_color);
    let now = SystemTime::now();
    match args.command {
        FleetCommand::Status { since } => {
            let report = status::status(&fleet, unix(now), since.as_secs().max(1))?;
            match c.output {
                Output::Json => table::print_json(&report)?,
                Output::Table => table::print(&render::status(&report, &style)),
            }
            if report.down + report.gone > 0 {
                table::exit(EXIT_FINDINGS);
            }
        }
        FleetCommand::Violations { range } => {
            let report = violations::violations(&fleet, &range.window(now)?, &range.verdicts())?;
            match c.output {
                Output::Json => table::print_json(&report)?,
                Output::Table => table::print(&render::violations(&report, &style)),
            }
        }
        FleetCommand::Top { range, by, limit } => {
            let v = violations::violations(&fleet, &range.window(now)?, &range.verdicts())?;
            let by = match by {
                By::Pair => TopBy::Pair,
                By::Node => TopBy::Node,
                By::Rule => TopBy::Rule,
                By::NodePair => TopBy::NodePair,
            };
            let report = violations::top(&v, by, usize::try_from(limit).unwrap_or(usize::MAX));
            match c.output {
                Output::Json => table::print_json(&report)?,
                Output::Table => table::print(&render::top(&report, &style)),
            }
        }
        FleetCommand::Drift { policy } => {
            let file = match &policy {
                Some(path) => {
                    let p = crate::policy::load(path).map_err(|e| {
                        anyhow::anyhow!("--policy {}: not a valid policy:\n{e}", path.display())
                    })?;
                    Some(drift::PolicyFile {
                        path: path.display().to_string(),
                        sha256: p.source_sha256,
                    })
                }
                None => None,
            };
            let report = drift::drift(&fleet, file.as_ref())?;
            match c.output {
                Output::Json => table::print_json(&report)?,
                Output::Table => table::print(&render::drift(&report, &style)),
            }
            if !report.findings.is_empty() {
                table::exit(EXIT_FINDINGS);
            }
        }
    }
    Ok(())
}
