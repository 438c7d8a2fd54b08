use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    datapath::{list_interfaces, Datapath},
    events::{EventContext, EventStream},
    metrics::{self, DatapathCollector, Metrics},
    policy::{self, CompiledPolicy},
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
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let policy = load_policy(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_agent(args, policy))
}

fn load_policy(args: &AgentArgs) -> anyhow::Result<CompiledPolicy> {
    let (parsed, origin) = match &args.config {
        Some(path) => (policy::load(path), path.display().to_string()),
        None => (
            policy::parse(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN),
            policy::EXAMPLE_ORIGIN.to_owned(),
        ),
    };
    match parsed {
        Ok(p) => Ok(policy::compile(&p)),
        Err(errors) => {
            eprintln!("{errors}");
            bail!(
                "policy {origin} has {} error(s); nothing was loaded",
                errors.0.len()
            )
        }
    }
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

async fn run_agent(args: AgentArgs, compiled: CompiledPolicy) -> anyhow::Result<()> {
    let interval = Duration::from_millis(args.report_interval_ms);
    let mut dp = Datapath::load().context("loading envfence's eBPF programs")?;
    dp.apply_policy(&compiled, interval)
        .context("writing the policy into the kernel maps")?;
    let counters = Arc::new(dp.take_counters()?);
    let mut events =
        EventStream::new(dp.take_events()?).context("watching the event ring buffer")?;

    let collector = DatapathCollector::new(counters, Arc::new(compiled.env_names.clone()))?;
    let metrics = Arc::new(Metrics::new(collector)?);
    metrics.set_policy(1, &compiled);

    let mut ctx = EventContext::from_policy(node_name(&args), &compiled);
    let mut failures = 0usize;
    for (name, ifindex) in list_interfaces()? {
        ctx.interfaces.insert(ifindex, name.clone());
        if !compiled.interfaces.matches(&name) {
            continue;
        }
        match dp.attach(&name) {
            Ok(att) => {
                tracing::info!(interface = %att.ifname, ifindex = att.ifindex, "attached (tcx ingress and egress, first in chain)")
            }
            Err(e) => {
                failures += 1;
                tracing::error!("{e}");
            }
        }
    }
    let attached = dp.attachments().count();
    metrics
        .attached_interfaces
        .set(i64::try_from(attached).unwrap_or(i64::MAX));
    if attached == 0 {
        tracing::warn!("no interface matches the policy's include/exclude globs (or all failed): nothing is enforced");
    }

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (bound, server) = metrics::serve(args.metrics_addr, Arc::clone(&metrics), async move {
        let _ = stop_rx.changed().await;
    })
    .await?;

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!(
        metrics = %bound,
        interfaces = attached,
        failed = failures,
        mode = %compiled.mode,
        policy_sha256 = %compiled.source_sha256,
        "envfence ready"
    );

    let mut stdout = std::io::stdout();
    let outcome = tokio::select! {
        r = events.run(&ctx, &mut stdout) => r.context("reading events"),
        _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching and exiting"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT: detaching and exiting"); Ok(()) }
    };
    for e in dp.detach_all() {
        tracing::error!("detaching: {e}");
    }
    if let Err(e) = events.drain_now(&ctx, &mut stdout) {
        tracing::error!("writing the last events: {e}");
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    outcome
}
