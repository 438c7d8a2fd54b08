//! `envfence agent`: the node agent's command line, turned into the
//! daemon's options (policy source, pins, state directory, local API, audit
//! log and its shipping); the daemon itself is `crate::daemon`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    audit::{
        ship::{addr_host, ShipOptions, Shipper, TlsOptions},
        AuditOptions, AuditWriter, ChainKey, SharedAudit,
    },
    daemon::{self, changes::Revision, AuditHooks, DaemonOptions, PolicySource},
    datapath::pins::DEFAULT_PIN_ROOT,
    events::{Optional, Tee},
    state::DEFAULT_STATE_DIR,
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
    /// Key the audit chain: every record's hash is the HMAC-SHA256 with the
    /// key in this file (e.g. a Kubernetes Secret; at least 16 bytes, a
    /// final newline is not part of it), so that rewriting the chain needs
    /// the key. `envfence audit verify --key FILE` checks it.
    #[arg(long, value_name = "FILE", requires = "audit_file")]
    pub audit_key: Option<PathBuf>,
    /// The revision of the policy (e.g. the Git commit of its ConfigMap),
    /// written in every change record. From the downward API:
    /// env ENVFENCE_POLICY_REVISION from a pod annotation.
    #[arg(long, value_name = "REV", env = "ENVFENCE_POLICY_REVISION")]
    pub policy_revision: Option<String>,
    /// A file holding the policy's revision, read at every load (e.g. a
    /// `revision` key of the ConfigMap of the policy, so that it changes
    /// with it); wins over --policy-revision when it is readable.
    #[arg(long, value_name = "FILE")]
    pub policy_revision_file: Option<PathBuf>,
    /// Ship every audit record, in order, to this syslog receiver
    /// (HOST:PORT; RFC 5424 messages, octet-counting framing over TCP, TLS
    /// with --syslog-tls). At least once: shipping resumes after the last
    /// record the receiver confirmed (FILE.shipped), whatever happened.
    #[arg(long, value_name = "HOST:PORT", requires = "audit_file")]
    pub syslog_addr: Option<String>,
    /// Ship over TLS (needs --syslog-ca).
    #[arg(long, requires_all = ["syslog_addr", "syslog_ca"])]
    pub syslog_tls: bool,
    /// The CA certificate(s) (PEM) that signed the receiver's certificate.
    #[arg(long, value_name = "FILE", requires = "syslog_tls")]
    pub syslog_ca: Option<PathBuf>,
    /// Client certificate (PEM) for receivers that ask for one.
    #[arg(long, value_name = "FILE", requires_all = ["syslog_tls", "syslog_key"])]
    pub syslog_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "syslog_cert")]
    pub syslog_key: Option<PathBuf>,
    /// The name the receiver's certificate must carry (default: the host
    /// of --syslog-addr).
    #[arg(long, value_name = "NAME", requires = "syslog_tls")]
    pub syslog_server_name: Option<String>,
    /// How often the receiver's reading is confirmed (the stream is ended,
    /// the receiver closes it, a new one begins); after a broken
    /// connection, at most this much is sent again.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub syslog_checkpoint: Duration,
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

/// Starts shipping the audit log; a setting that cannot be used is an
/// error naming it, logged: enforcement and the audit file go on without
/// shipping.
fn start_shipper(args: &AgentArgs, base: &std::path::Path) -> Option<Shipper> {
    let addr = args.syslog_addr.clone()?;
    let tls = if args.syslog_tls {
        let server_name = args
            .syslog_server_name
            .clone()
            .or_else(|| addr_host(&addr).map(str::to_owned))
            .unwrap_or_default();
        Some(TlsOptions {
            ca: args.syslog_ca.clone().unwrap_or_default(),
            client: args.syslog_cert.clone().zip(args.syslog_key.clone()),
            server_name,
        })
    } else {
        None
    };
    let opts = ShipOptions {
        addr,
        tls,
        hostname: node_name(args),
        checkpoint: args.syslog_checkpoint,
    };
    match Shipper::start(base, opts) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("audit shipping is OFF: {e} (the audit file is still written; fix the setting and restart)");
            None
        }
    }
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let key = args
        .audit_key
        .as_ref()
        .map(|p| ChainKey::read(p, "--audit-key"))
        .transpose()?;
    let audit = match &args.audit_file {
        Some(path) => Some(SharedAudit::new(
            AuditWriter::open(
                path,
                AuditOptions {
                    max_bytes: args.audit_max_bytes,
                    keep: usize::try_from(args.audit_keep).unwrap_or(usize::MAX),
                    node: node_name(&args),
                    key,
                },
            )
            .with_context(|| format!("--audit-file: opening the audit log {}", path.display()))?,
        )),
        None => None,
    };
    let shipper = args
        .audit_file
        .as_ref()
        .and_then(|base| start_shipper(&args, base));
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
        audit: AuditHooks {
            log: audit.clone(),
            ship: shipper.as_ref().map(|s| std::sync::Arc::clone(&s.state)),
            revision: Revision {
                fixed: args.policy_revision.clone().filter(|r| !r.is_empty()),
                file: args.policy_revision_file.clone(),
            },
        },
    };
    // Every record to stdout and to the audit log.
    let sink = Tee {
        first: std::io::stdout(),
        second: Optional(audit),
    };
    let result = daemon::run(opts, sink).await;
    if let Ok(sink) = &result {
        if let Some(audit) = &sink.second.0 {
            audit.sync().context("syncing the audit log")?;
        }
    }
    // The last records (the stop record among them) go out before exit.
    if let Some(s) = shipper {
        tokio::task::spawn_blocking(move || s.stop()).await.ok();
    }
    result.map(|_| ())
}
