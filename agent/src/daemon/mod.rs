//! The node agent's life: start (adopting what a previous agent pinned),
//! reload policies atomically, follow interfaces as they come and go, and
//! stop without lifting enforcement (unless asked to).
//!
//! DESIGN: [`run`] is four steps, each a function of this file: start-up
//! (`start`: read the policy, take the lock, load the datapath, make the
//! `Agent`, follow interfaces, install or adopt the first policy), the
//! tasks (`Tasks::spawn`: metrics server, local API, event reader), the
//! loop (`main_loop`: signals, file changes, link and peer events, the
//! retry timer) and shutdown (`shutdown`: stop the tasks, hand the sink
//! back, detach and clean up if asked). What the agent does with a policy
//! or a link is in `agent.rs`; its saved policy in [`crate::state`].

mod agent;
pub mod changes;
mod lock;
mod peers;
mod watch;

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::watch as tokio_watch,
    task::JoinHandle,
};

use crate::{
    datapath::{logging::DatapathLog, Datapath, LoadOptions},
    events::{EventContext, EventSink, EventStream, Tee},
    metrics,
    netwatch::LinkWatcher,
    policy::{self, Policy, PolicyErrors},
    state::{self, SavedPolicy},
    store::{EventStore, StoreSink},
};
use agent::Agent;

/// Where the policy comes from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    File(PathBuf),
    /// The example embedded in the binary.
    Example,
}

impl PolicySource {
    fn origin(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Example => policy::EXAMPLE_ORIGIN.to_owned(),
        }
    }

    /// The policy's text.
    fn text(&self) -> Result<String, PolicyErrors> {
        match self {
            PolicySource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                PolicyErrors::from(policy::PolicyError::without_place(
                    path.display().to_string(),
                    format!("cannot read the policy file: {e}"),
                ))
            }),
            PolicySource::Example => Ok(policy::EXAMPLE_POLICY.to_owned()),
        }
    }

    /// Reads and validates the policy: (policy, source text).
    fn read(&self) -> Result<(Policy, String), PolicyErrors> {
        let text = self.text()?;
        let p = policy::parse(&text, &self.origin())?;
        Ok((p, text))
    }
}

/// Everything the agent is started with.
pub struct DaemonOptions {
    pub policy: PolicySource,
    pub metrics_addr: SocketAddr,
    pub report_interval: Duration,
    pub node: String,
    /// bpffs root of the pins; `None`: pin nothing (enforcement ends with
    /// the process).
    pub pin_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// On SIGTERM/SIGINT, detach and remove every pin (default: leave
    /// enforcement running in the kernel).
    pub detach_on_exit: bool,
    /// Reload when the policy file changes (SIGHUP always reloads).
    pub watch_config: bool,
    /// The local API (Unix socket) for the CLI; `None`: no API.
    pub api: Option<crate::api::ApiOptions>,
    /// Events kept in memory for `envfence flows`.
    pub event_store_capacity: usize,
    /// Datapath (aya-log) level, 0 = off.
    pub datapath_log: u8,
    /// The audit trail: the shared audit log (change records go into it),
    /// the shipper's state, the policy revision.
    pub audit: AuditHooks,
}

/// What the daemon needs of the audit trail (issue 16).
#[derive(Clone, Default)]
pub struct AuditHooks {
    pub log: Option<crate::audit::SharedAudit>,
    pub ship: Option<Arc<crate::audit::ship::ShipState>>,
    pub revision: changes::Revision,
}

/// How often interfaces that failed to attach are retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until SIGTERM or SIGINT. `sink` receives every event;
/// it is handed back at the end, flushed.
pub async fn run<S>(opts: DaemonOptions, sink: S) -> anyhow::Result<S>
where
    S: EventSink + Send + 'static,
{
    // Signals first: a SIGHUP or SIGTERM during start-up waits for the loop
    // instead of killing the process.
    let mut signals = Signals::install()?;
    let Started {
        mut agent,
        lock,
        mut watcher,
        events,
        datapath_log,
        store,
    } = start(opts).await?;
    let tasks = Tasks::spawn(&agent, events, store, sink).await?;
    let reason = main_loop(
        &mut agent,
        &mut signals,
        &mut watcher,
        datapath_log,
        tasks.bound,
    )
    .await;
    let sink = shutdown(agent, tasks, reason).await;
    // The lock goes last: the next agent starts after the clean-up.
    drop(lock);
    sink
}

/// The signals the agent answers.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// What start-up hands to the tasks and the loop.
struct Started {
    agent: Agent,
    /// The node's agent lock, held until the end.
    lock: nix::fcntl::Flock<fs::File>,
    watcher: LinkWatcher,
    events: EventStream,
    datapath_log: Option<DatapathLog>,
    store: Arc<EventStore>,
}

/// Start-up: reads the policy (a bad one is fatal only when nothing is
/// pinned), takes the node's lock, loads (or adopts) the datapath, makes the
/// agent, follows interfaces, installs the policy (or adopts the pinned
/// one), attaches and removes stale pins.
async fn start(opts: DaemonOptions) -> anyhow::Result<Started> {
    let origin = opts.policy.origin();
    let first = opts.policy.read();
    let saved = state::load(&opts.state_dir);
    refuse_without_policy(&opts, &first, saved.as_ref())?;
    // Name a missing capability before the kernel answers a bare EPERM.
    crate::caps::preflight()?;
    // One agent at a time per node: two installing at once could write the
    // same policy slot.
    let lock = lock::lock(&opts.state_dir).await?;
    let dp = Datapath::load_with(LoadOptions {
        debug_tag_decision: false,
        pin_root: opts.pin_root.clone(),
        no_verdict_cache: false,
        no_conntrack: false,
        conntrack_capacity: None,
        log_level: opts.datapath_log,
        object: None,
    })
    .context("loading envfence's eBPF programs")?;
    if dp.was_pinned() {
        tracing::info!(
            "adopting the state a previous agent pinned under {}",
            dp.pins()
                .map_or_else(String::new, |p| p.dir().display().to_string())
        );
    }
    let mut agent = Agent::new(opts, dp, saved.as_ref())?;
    let store = EventStore::new(agent.opts.event_store_capacity);
    let events =
        EventStream::new(agent.dp.take_events()?).context("watching the event ring buffer")?;
    let datapath_log = if agent.opts.datapath_log > 0 {
        Some(agent.dp.take_log()?)
    } else {
        None
    };
    let watcher = agent.follow_interfaces()?;
    agent.load_first(first, saved, &origin)?;
    agent.reconcile();
    let removed = if agent.current.is_some() {
        agent.dp.remove_stale()
    } else {
        0
    };
    if removed > 0 {
        tracing::info!(
            "removed {removed} stale pinned link(s) of interfaces gone or no longer selected"
        );
    }
    Ok(Started {
        agent,
        lock,
        watcher,
        events,
        datapath_log,
        store,
    })
}

/// A bad first policy: reported; fatal when no policy is pinned from a
/// previous run to keep enforcing.
fn refuse_without_policy(
    opts: &DaemonOptions,
    first: &Result<(Policy, String), PolicyErrors>,
    saved: Option<&SavedPolicy>,
) -> anyhow::Result<()> {
    let Err(errors) = first else {
        return Ok(());
    };
    let origin = opts.policy.origin();
    eprintln!("{errors}");
    let pinned_before = opts
        .pin_root
        .as_ref()
        .is_some_and(|r| crate::datapath::pins::PinLayout::new(r).is_pinned());
    if !pinned_before {
        bail!(
            "policy {origin} has {} error(s); nothing was loaded (no policy is pinned from a previous run to keep enforcing)",
            errors.0.len()
        );
    }
    tracing::error!(
        "policy {origin} has {} error(s): keeping the policy pinned in the kernel (generation {}) and waiting for a good file",
        errors.0.len(),
        saved.map_or(0, |s| s.generation)
    );
    Ok(())
}

/// The tasks beside the loop: the metrics server, the local API and the
/// event reader, all stopped by one channel.
struct Tasks<S> {
    stop: tokio_watch::Sender<bool>,
    /// The metrics server's address.
    bound: SocketAddr,
    server: JoinHandle<()>,
    api: Option<JoinHandle<()>>,
    events: JoinHandle<std::io::Result<Tee<S, StoreSink>>>,
}

impl<S: EventSink + Send + 'static> Tasks<S> {
    async fn spawn(
        agent: &Agent,
        events: EventStream,
        store: Arc<EventStore>,
        sink: S,
    ) -> anyhow::Result<Self> {
        let (stop, stop_rx) = tokio_watch::channel(false);
        let (bound, server) = metrics::serve(
            agent.opts.metrics_addr,
            Arc::clone(&agent.metrics),
            Arc::clone(&agent.health),
            stopped(stop_rx.clone()),
        )
        .await?;
        let sink = Tee {
            first: sink,
            second: StoreSink(Arc::clone(&store)),
        };
        let api = match agent.opts.api.clone() {
            Some(api_opts) => {
                let ctx = crate::api::ApiContext {
                    status: Arc::clone(&agent.status),
                    store,
                    pin_root: agent.opts.pin_root.clone(),
                };
                Some(
                    crate::api::serve(api_opts, ctx, stopped(stop_rx.clone()))
                        .await
                        .context("starting the local API")?,
                )
            }
            None => None,
        };
        let events = tokio::spawn(read_events(events, Arc::clone(&agent.ctx), sink, stop_rx));
        Ok(Self {
            stop,
            bound,
            server,
            api,
            events,
        })
    }
}

/// Resolves when the stop channel fires (or its sender is gone).
async fn stopped(mut stop: tokio_watch::Receiver<bool>) {
    let _ = stop.changed().await;
}

/// The loop: until SIGTERM or SIGINT (the reason returned), reloads on
/// SIGHUP and file changes, follows links and peers, forwards the datapath
/// log, and retries and refreshes on a timer.
async fn main_loop(
    agent: &mut Agent,
    signals: &mut Signals,
    watcher: &mut LinkWatcher,
    mut datapath_log: Option<DatapathLog>,
    bound: SocketAddr,
) -> &'static str {
    let mut config_watch = match (&agent.opts.policy, agent.opts.watch_config) {
        (PolicySource::File(path), true) => match watch::watch(path) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "not watching {} for changes ({e}); SIGHUP reloads",
                    path.display()
                );
                None
            }
        },
        _ => None,
    };
    let mut retry = tokio::time::interval(RETRY_EVERY);
    let mut ticks: u64 = 0;
    tracing::info!(
        metrics = %bound,
        interfaces = agent.dp.attachments().count(),
        pending = agent.pending.len(),
        generation = agent.metrics.generation.get(),
        pinned = agent.dp.pins().is_some(),
        "envfence ready"
    );
    loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy");
                agent.reload(true);
            }
            Some(()) = next_change(&mut config_watch) => {
                // Let a burst of changes (a ConfigMap swap) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(w) = config_watch.as_mut() {
                    while w.changes.try_recv().is_ok() {}
                }
                agent.reload(false);
            }
            event = peers::next_peer_event(&mut agent.peers) => match event {
                Ok(event) => agent.on_peer_event(event),
                Err(e) => {
                    tracing::error!("peer address watch failed: {e}; strict source checks now accept routes only");
                    agent.peers = None;
                }
            },
            event = watcher.next() => match event {
                Ok(event) => agent.on_link_event(event),
                Err(e) => {
                    tracing::error!("interface watch failed: {e}; re-listing interfaces");
                    agent.resync_links();
                    // Do not spin on an error that repeats.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            r = next_log(&mut datapath_log) => {
                if let Err(e) = r {
                    tracing::warn!("datapath log: {e}; no longer forwarded");
                    datapath_log = None;
                }
            }
            _ = retry.tick() => {
                ticks += 1;
                agent.on_tick(ticks);
            }
        }
    }
}

/// Shutdown: records the stop, detaches if asked, stops the tasks and
/// hands the sink back; then removes every pin and the saved policy if
/// asked (else the kernel keeps enforcing).
async fn shutdown<S>(agent: Agent, tasks: Tasks<S>, reason: &str) -> anyhow::Result<S> {
    let mut agent = agent;
    tracing::info!("{reason}: stopping");
    agent.changes.stop(reason);
    if agent.opts.detach_on_exit {
        for e in agent.dp.detach_all() {
            tracing::error!("detaching: {e}");
        }
    }
    let _ = tasks.stop.send(true);
    let sink = tasks
        .events
        .await
        .context("the event reader task failed")?
        .context("reading events")?
        .first;
    let _ = tasks.server.await;
    if let Some(task) = tasks.api {
        let _ = task.await;
    }
    let pin_root = agent.dp.pins().map(|p| p.root().to_path_buf());
    let state_dir = agent.opts.state_dir.clone();
    let detach = agent.opts.detach_on_exit;
    drop(agent);
    match (detach, pin_root) {
        (true, Some(root)) => {
            let done = crate::datapath::pins::cleanup(&root);
            state::remove_all(&state_dir);
            tracing::info!(
                "detached and removed every pin ({} links, {} pins)",
                done.links_detached,
                done.files_removed
            );
            for e in done.errors {
                tracing::warn!("cleanup: {e}");
            }
        }
        (true, None) => tracing::info!("detached (nothing was pinned)"),
        (false, Some(root)) => tracing::info!(
            "exiting: the kernel keeps enforcing the policy pinned under {} (`envfence cleanup` removes it)",
            root.display()
        ),
        (false, None) => tracing::info!("exiting: nothing was pinned, enforcement ends with the process"),
    }
    Ok(sink)
}

async fn next_log(log: &mut Option<DatapathLog>) -> std::io::Result<()> {
    match log {
        Some(l) => l.forward().await,
        None => std::future::pending().await,
    }
}

async fn next_change(w: &mut Option<watch::ConfigWatch>) -> Option<()> {
    match w {
        Some(w) => w.changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads events until told to stop, then drains what is left and hands the
/// sink back.
async fn read_events<S: EventSink + Send>(
    mut events: EventStream,
    ctx: Arc<RwLock<EventContext>>,
    mut sink: S,
    mut stop: tokio_watch::Receiver<bool>,
) -> std::io::Result<S> {
    loop {
        tokio::select! {
            r = events.next_batch(&ctx, &mut sink) => { r?; }
            _ = stop.changed() => break,
        }
    }
    {
        let ctx = ctx.read().unwrap_or_else(|p| p.into_inner());
        events.drain_now(&ctx, &mut sink)?;
    }
    EventSink::flush(&mut sink)?;
    Ok(sink)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
