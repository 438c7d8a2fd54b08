use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    audit::{AuditOptions, AuditWriter},
    daemon::{self, state::DEFAULT_STATE_DIR, DaemonOptions, PolicySource},
    datapath::pins::DEFAULT_PIN_ROOT,
    events::{Optional, Tee},
};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("policy").required(true).args(["config", "example_policy"])))]
pub struct AgentArgs {
    /// Policy file (YAML).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run with the example policy embedded in the binary (`envfence policy
    /// example` prints it).
    #[arg(long)]
    pub example_policy: bool,
    /// Address of the Prometheus metrics endpoint (/metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:9477", value_name = "ADDR:PORT")]
    pub metrics_addr: SocketAddr,
    /// A reported flow is reported again at most once per this many ms.
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub report_interval_ms: u64,
    /// Node name in events (default: $NODE_NAME, else the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Also append every event record to this append-only, hash-chained
    /// audit log (FILE.head is kept next to it; `envfence audit verify FILE`
    /// checks them). Each record is written when it is read, one write(2).
    #[arg(long, value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// Rotate the audit log (FILE to FILE.1 …) before it grows past this
    /// many bytes; 0: never.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES", requires = "audit_file")]
    pub audit_max_bytes: u64,
    /// bpffs directory of envfence's pinned maps and links (a directory per
    /// ABI version inside). Enforcement outlives the process through them.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
    /// Pin nothing: enforcement ends with the process (tests, trials).
    #[arg(long, conflicts_with = "detach_on_exit")]
    pub no_pin: bool,
    /// Directory of the agent's state (the last good policy, so that a
    /// restart knows the names behind the pinned ids).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// On SIGTERM/SIGINT, detach from every interface and remove every pin.
    /// Default: leave the kernel enforcing the last policy.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Do not watch the policy file for changes (SIGHUP still reloads).
    #[arg(long)]
    pub no_watch: bool,
    /// Unix socket of the local read-only API the CLI uses.
    #[arg(
        long,
        default_value = "/run/envfence/envfence.sock",
        value_name = "PATH"
    )]
    pub api_socket: PathBuf,
    /// Group owning the API socket (default: root's group).
    #[arg(long, value_name = "GROUP")]
    pub api_group: Option<String>,
    /// The eBPF programs' own log (aya-log): off, error, warn, info, debug,
    /// trace. Off by default: the statements are then removed from the
    /// datapath by the verifier. Debug logs every decision: never on a busy
    /// node.
    #[arg(long, default_value = "off", value_name = "LEVEL",
          value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
    pub datapath_log: String,
    /// Serve no local API.
    #[arg(long)]
    pub no_api: bool,
    /// Recent events kept in memory for `envfence flows`.
    #[arg(long, default_value_t = crate::store::DEFAULT_CAPACITY, value_name = "N")]
    pub event_store: usize,
    /// Rotated audit files kept (FILE.1 … FILE.N); older ones are deleted.
    #[arg(long, default_value_t = 10, value_name = "N", requires = "audit_file",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub audit_keep: u64,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_agent(args))
}

fn node_name(args: &AgentArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let audit = match &args.audit_file {
        Some(path) => Some(
            AuditWriter::open(
                path,
                AuditOptions {
                    max_bytes: args.audit_max_bytes,
                    keep: usize::try_from(args.audit_keep).unwrap_or(usize::MAX),
                    node: node_name(&args),
                },
            )
            .with_context(|| format!("opening the audit log {}", path.display()))?,
        ),
        None => None,
    };
    let opts = DaemonOptions {
        policy: match &args.config {
            Some(path) => PolicySource::File(path.clone()),
            None => PolicySource::Example,
        },
        metrics_addr: args.metrics_addr,
        report_interval: Duration::from_millis(args.report_interval_ms),
        node: node_name(&args),
        pin_root: (!args.no_pin).then(|| args.pin_root.clone()),
        state_dir: args.state_dir.clone(),
        detach_on_exit: args.detach_on_exit,
        watch_config: !args.no_watch,
        api: (!args.no_api).then(|| crate::api::ApiOptions {
            socket: args.api_socket.clone(),
            group: args.api_group.clone(),
        }),
        event_store_capacity: args.event_store,
        datapath_log: crate::datapath::logging::parse_level(&args.datapath_log).unwrap_or(0),
    };
    // Every record to stdout and to the audit log.
    let sink = Tee {
        first: std::io::stdout(),
        second: Optional(audit),
    };
    let mut sink = daemon::run(opts, sink).await?;
    if let Some(audit) = sink.second.0.as_mut() {
        audit.sync().context("syncing the audit log")?;
    }
    Ok(())
}
