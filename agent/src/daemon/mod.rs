//! The node agent's life: start (adopting what a previous agent pinned),
//! reload policies atomically, follow interfaces as they come and go, and
//! stop without lifting enforcement (unless asked to).

pub mod changes;
mod peers;
pub mod state;
mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch as tokio_watch,
};

use crate::audit::change::ChangeKind;
use crate::{
    datapath::{list_interfaces, Datapath, LoadOptions},
    events::Tee,
    events::{EventContext, EventSink, EventStream},
    metrics::{self, DatapathCollector, Health, Metrics, PolicyNames},
    netwatch::{Link, LinkEvent, LinkWatcher},
    policy::{self, CompiledPolicy, Policy, PolicyErrors},
    status::{InterfaceStatus, Status},
    store::{EventStore, StoreSink},
};
use state::SavedPolicy;

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
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let origin = opts.policy.origin();
    let first = opts.policy.read();
    let saved = state::load(&opts.state_dir);
    let pinned_before = opts
        .pin_root
        .as_ref()
        .is_some_and(|r| crate::datapath::pins::PinLayout::new(r).is_pinned());
    if let Err(errors) = &first {
        eprintln!("{errors}");
        if !pinned_before {
            bail!(
                "policy {origin} has {} error(s); nothing was loaded (no policy is pinned from a previous run to keep enforcing)",
                errors.0.len()
            );
        }
        tracing::error!(
            "policy {origin} has {} error(s): keeping the policy pinned in the kernel (generation {}) and waiting for a good file",
            errors.0.len(),
            saved.as_ref().map_or(0, |s| s.generation)
        );
    }

    // Name a missing capability before the kernel answers a bare EPERM.
    crate::caps::preflight()?;
    // One agent at a time per node: two installing at once could write the
    // same policy slot.
    let _lock = state::lock(&opts.state_dir).await?;
    let mut dp = Datapath::load_with(LoadOptions {
        debug_tag_decision: false,
        pin_root: opts.pin_root.clone(),
        no_verdict_cache: false,
        no_conntrack: false,
        conntrack_capacity: None,
        log_level: opts.datapath_log,
    })
    .context("loading envfence's eBPF programs")?;
    if dp.was_pinned() {
        tracing::info!(
            "adopting the state a previous agent pinned under {}",
            dp.pins()
                .map_or_else(String::new, |p| p.dir().display().to_string())
        );
    }
    let counters = dp.counters();
    let env_names = Arc::new(RwLock::new(PolicyNames {
        envs: vec![policy::WORLD.to_owned()],
        rules: vec![policy::DEFAULT_RULE.to_owned()],
    }));
    let metrics = Arc::new(Metrics::new(DatapathCollector::new(
        Arc::clone(&counters),
        Arc::clone(&env_names),
    )?)?);
    let health = Arc::new(Health::new(Some(Arc::clone(&counters))));
    // Audit trail: head and shipping metrics, the change log.
    let mut change_log = audit_hooks(&opts, &metrics, saved.as_ref())?;
    change_log.start();
    let status = Arc::new(Status::default());
    let store = EventStore::new(opts.event_store_capacity);
    status.update(|s| {
        s.version = env!("CARGO_PKG_VERSION").to_owned();
        s.abi = envfence_ebpf::ABI_VERSION;
        s.node = opts.node.clone();
        s.started_at = unix_now();
        s.pin_dir = dp
            .pins()
            .map_or_else(String::new, |p| p.dir().display().to_string());
        s.metrics_addr = opts.metrics_addr.to_string();
    });

    let events = EventStream::new(dp.take_events()?).context("watching the event ring buffer")?;
    let mut datapath_log = if opts.datapath_log > 0 {
        Some(dp.take_log()?)
    } else {
        None
    };
    let mut agent = Agent {
        dp,
        opts,
        current: None,
        ctx: Arc::new(RwLock::new(EventContext {
            node: String::new(),
            slots: Default::default(),
            interfaces: HashMap::new(),
        })),
        env_names,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        links: BTreeMap::new(),
        pending: BTreeMap::new(),
        last_text: None,
        status: Arc::clone(&status),
        counters,
        peers: None,
        changes: change_log,
    };
    agent.ctx_mut().node = agent.opts.node.clone();

    // Peer addresses before any interface is attached (see daemon/peers.rs).
    agent.peers = match crate::netwatch::PeerWatcher::new() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "{} ({e}): strict source checks accept routes only",
                crate::caps::PEERS_NOT_FOLLOWED
            );
            None
        }
    };
    // Watch links first, so that nothing appearing from now on is missed.
    let (mut watcher, links) =
        LinkWatcher::new().context("watching network interfaces (netlink)")?;
    agent.links = links.into_iter().map(|l| (l.ifindex, l)).collect();
    for (name, ifindex) in list_interfaces()? {
        agent.ctx_mut().interfaces.insert(ifindex, name);
    }

    match first {
        Ok((p, text)) => {
            let prior: Option<CompiledPolicy> = saved.as_ref().and_then(compile_saved);
            agent.last_text = Some(policy_text_digest(&text));
            agent.install(&p, text, prior.as_ref())?;
            let generation = agent.generation();
            agent
                .changes
                .loaded(ChangeKind::Load, &origin, &p, generation);
        }
        Err(_) => {
            agent.last_text = agent
                .opts
                .policy
                .text()
                .ok()
                .map(|t| policy_text_digest(&t));
            agent.metrics.reloads.with_label_values(&["failure"]).inc();
            if let Err(errors) = &first {
                let text = errors.to_string();
                let sha = agent
                    .opts
                    .policy
                    .text()
                    .ok()
                    .map(|t| policy::sha256_hex(&t));
                let pinned = saved.as_ref().map(|s| u64::from(s.generation));
                agent.changes.refused(&origin, sha, text.clone(), pinned);
                agent.status.update(|s| s.last_reload_error = Some(text));
            }
            let saved_policy = saved
                .as_ref()
                .and_then(|s| policy::parse(&s.source, &s.origin).ok());
            agent.adopt_saved(saved)?;
            let generation = agent.generation();
            agent
                .changes
                .adopted(&origin, saved_policy.as_ref(), generation);
        }
    }
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

    let (stop_tx, stop_rx) = tokio_watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let (bound, server) = metrics::serve(
        agent.opts.metrics_addr,
        Arc::clone(&metrics),
        Arc::clone(&health),
        async move {
            let _ = server_stop.changed().await;
        },
    )
    .await?;
    let sink = Tee {
        first: sink,
        second: StoreSink(Arc::clone(&store)),
    };
    let api_task = match agent.opts.api.clone() {
        Some(api_opts) => {
            let mut api_stop = stop_rx.clone();
            let ctx = crate::api::ApiContext {
                status: Arc::clone(&status),
                store: Arc::clone(&store),
                pin_root: agent.opts.pin_root.clone(),
            };
            Some(
                crate::api::serve(api_opts, ctx, async move {
                    let _ = api_stop.changed().await;
                })
                .await
                .context("starting the local API")?,
            )
        }
        None => None,
    };
    let event_task = tokio::spawn(read_events(events, Arc::clone(&agent.ctx), sink, stop_rx));

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

    let reason = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
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
                if !agent.pending.is_empty() {
                    agent.reconcile();
                }
                ticks += 1;
                if ticks % 10 == 1 {
                    agent.publish_status();
                    if let Ok(n) = agent.dp.flow_entries() {
                        agent
                            .metrics
                            .map_entries
                            .with_label_values(&[envfence_ebpf::map_names::FLOWS])
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                    // Expired tracked flows give their room back (the
                    // datapath already treats them as absent).
                    match agent.dp.sweep_conntrack(crate::datapath::monotonic_ns()) {
                        Ok((_, live)) => agent
                            .metrics
                            .map_entries
                            .with_label_values(&[envfence_ebpf::map_names::CONNTRACK])
                            .set(i64::try_from(live).unwrap_or(i64::MAX)),
                        Err(e) => tracing::warn!("sweeping the tracked-flow table: {e}"),
                    }
                }
            }
        }
    };
    tracing::info!("{reason}: stopping");
    agent.changes.stop(reason);
    if agent.opts.detach_on_exit {
        for e in agent.dp.detach_all() {
            tracing::error!("detaching: {e}");
        }
    }
    let _ = stop_tx.send(true);
    let sink = event_task
        .await
        .context("the event reader task failed")?
        .context("reading events")?
        .first;
    let _ = server.await;
    if let Some(task) = api_task {
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

async fn next_log(log: &mut Option<crate::datapath::logging::DatapathLog>) -> std::io::Result<()> {
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

struct Agent {
    dp: Datapath,
    opts: DaemonOptions,
    /// The policy in force, when this agent knows it.
    current: Option<CompiledPolicy>,
    ctx: Arc<RwLock<EventContext>>,
    env_names: crate::metrics::EnvNames,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Every interface of the namespace, by ifindex.
    links: BTreeMap<u32, Link>,
    /// Selected interfaces that failed to attach: ifindex -> last error.
    pending: BTreeMap<u32, String>,
    /// Digest of the policy text last tried.
    last_text: Option<u64>,
    status: Arc<Status>,
    counters: Arc<crate::datapath::CounterReader>,
    /// Follows the addresses on the other end of attached veths (the
    /// strict source check's peer addresses); `None` when it cannot run.
    peers: Option<crate::netwatch::PeerWatcher>,
    changes: changes::ChangeLog,
}

impl Agent {
    fn ctx_mut(&self) -> std::sync::RwLockWriteGuard<'_, EventContext> {
        self.ctx.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles (keeping environment ids) and installs a checked policy.
    /// `prior`: the policy in force before, if known (its ids are kept).
    fn install(
        &mut self,
        p: &Policy,
        source: String,
        prior: Option<&CompiledPolicy>,
    ) -> anyhow::Result<()> {
        let compiled = policy::compile_with_ids(
            p,
            prior.map_or(&[][..], |c| &c.env_names),
            prior.map_or(&[][..], |c| &c.rule_names),
        );
        let installed = self
            .dp
            .apply_policy(&compiled, prior, self.opts.report_interval)
            .context("writing the policy into the kernel maps")?;
        self.ctx_mut().set_slot(installed.slot, &compiled);
        *self.env_names.write().unwrap_or_else(|p| p.into_inner()) = PolicyNames {
            envs: compiled.env_names.clone(),
            rules: compiled.rule_names.clone(),
        };
        self.metrics
            .set_policy(u64::from(installed.generation), &compiled);
        self.metrics.reloads.with_label_values(&["success"]).inc();
        self.metrics.last_reload.set(unix_now());
        let saved = SavedPolicy {
            abi: envfence_ebpf::ABI_VERSION,
            origin: self.opts.policy.origin(),
            source,
            env_names: compiled.env_names.clone(),
            rule_names: compiled.rule_names.clone(),
            generation: installed.generation,
        };
        if let Err(e) = state::save(&self.opts.state_dir, &saved) {
            tracing::warn!(
                "could not save the policy state in {}: {e} (a restart with a bad file would not know the names)",
                self.opts.state_dir.display()
            );
        }
        let both = |f: fn(&CompiledPolicy) -> usize| {
            let n = f(&compiled) + prior.map_or(0, f);
            i64::try_from(n).unwrap_or(i64::MAX)
        };
        let entries = &self.metrics.map_entries;
        entries
            .with_label_values(&[envfence_ebpf::map_names::ENV_V4])
            .set(both(|c| c.v4.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::ENV_V6])
            .set(both(|c| c.v6.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PORTS])
            .set(both(|c| c.ports.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PAIRS])
            .set(i64::from(envfence_ebpf::SLOTS * envfence_ebpf::PAIRS_LEN));
        self.status.update(|s| {
            s.mode = compiled.mode.to_string();
            s.generation = installed.generation;
            s.policy_origin = self.opts.policy.origin();
            s.policy_sha256 = compiled.source_sha256.clone();
            s.policy_loaded_at = unix_now();
            s.last_reload_error = None;
            s.environments = compiled
                .env_names
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect();
            s.rules = compiled.rule_names.clone();
        });
        tracing::info!(
            generation = installed.generation,
            slot = installed.slot,
            mode = %compiled.mode,
            sha256 = %compiled.source_sha256,
            "policy installed"
        );
        self.current = Some(compiled);
        Ok(())
    }

    /// Starting with a bad file over pinned state: the kernel keeps the
    /// pinned policy; names come from the saved copy.
    fn adopt_saved(&mut self, saved: Option<SavedPolicy>) -> anyhow::Result<()> {
        let config = self.dp.config()?;
        let Some(saved) = saved else {
            tracing::warn!("no saved copy of the pinned policy: names in metrics and events are ids until a good policy is loaded; links are left as they are");
            self.metrics.generation.set(i64::from(config.generation));
            return Ok(());
        };
        let compiled = compile_saved(&saved)
            .ok_or_else(|| anyhow::anyhow!("the saved policy {} no longer parses", saved.origin))?;
        for slot in 0..2 {
            self.ctx_mut().set_slot(slot, &compiled);
        }
        self.dp.adopt_source_checks(&compiled.source_check);
        *self.env_names.write().unwrap_or_else(|p| p.into_inner()) = PolicyNames {
            envs: compiled.env_names.clone(),
            rules: compiled.rule_names.clone(),
        };
        self.metrics
            .set_policy(u64::from(config.generation), &compiled);
        self.status.update(|s| {
            s.mode = compiled.mode.to_string();
            s.generation = config.generation;
            s.policy_origin = format!("{} (saved copy of the pinned policy)", saved.origin);
            s.policy_sha256 = compiled.source_sha256.clone();
            s.environments = compiled
                .env_names
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect();
            s.rules = compiled.rule_names.clone();
        });
        self.current = Some(compiled);
        Ok(())
    }

    /// Re-reads the policy; a bad file changes nothing in the kernel. A
    /// file-change reload of text already tried (good or bad) does nothing;
    /// SIGHUP always tries.
    fn reload(&mut self, forced: bool) {
        let text = self.opts.policy.text();
        if let Ok(text) = &text {
            let seen = Some(policy_text_digest(text));
            if !forced && seen == self.last_text {
                return;
            }
            self.last_text = seen;
        }
        let parsed = text
            .and_then(|text| policy::parse(&text, &self.opts.policy.origin()).map(|p| (p, text)));
        let (p, text) = match parsed {
            Ok(x) => x,
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!("policy reload refused, the policy in force stays:\n{errors}");
                let sha = self.opts.policy.text().ok().map(|t| policy::sha256_hex(&t));
                let generation = self.generation();
                self.changes.refused(
                    &self.opts.policy.origin(),
                    sha,
                    errors.to_string(),
                    Some(generation),
                );
                self.status
                    .update(|s| s.last_reload_error = Some(errors.to_string()));
                return;
            }
        };
        let prior = self.current.clone();
        let sha = policy::sha256_hex(&text);
        if let Err(e) = self.install(&p, text, prior.as_ref()) {
            self.metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!("policy reload failed, the policy in force stays: {e:#}");
            let generation = self.generation();
            self.changes.refused(
                &self.opts.policy.origin(),
                Some(sha),
                format!("{e:#}"),
                Some(generation),
            );
            self.status
                .update(|s| s.last_reload_error = Some(format!("{e:#}")));
            return;
        }
        let generation = self.generation();
        self.changes.loaded(
            ChangeKind::Reload,
            &self.opts.policy.origin(),
            &p,
            generation,
        );
        self.reconcile();
    }

    /// Generation of the policy in force.
    fn generation(&self) -> u64 {
        u64::try_from(self.metrics.generation.get()).unwrap_or(0)
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Added(link) => {
                self.ctx_mut()
                    .interfaces
                    .insert(link.ifindex, link.name.clone());
                // A rename: the old name's attachment moves with the ifindex.
                if let Some(old) = self.links.insert(link.ifindex, link.clone()) {
                    if old.name != link.name {
                        let _ = self.dp.detach(&old.name);
                    }
                }
                self.reconcile();
            }
            LinkEvent::Removed { name, ifindex } => {
                self.links.remove(&ifindex);
                self.pending.remove(&ifindex);
                self.ctx_mut().interfaces.remove(&ifindex);
                self.untrack_peer(ifindex);
                if let Err(e) = self.dp.forget(ifindex) {
                    tracing::warn!("forgetting {name} ({ifindex}): {e}");
                } else {
                    tracing::info!(interface = %name, ifindex, "interface gone: detached");
                }
                self.reconcile();
            }
            LinkEvent::Resync(links) => {
                self.links = links.into_iter().map(|l| (l.ifindex, l)).collect();
                self.forget_vanished();
                self.reconcile();
            }
        }
    }

    fn resync_links(&mut self) {
        match list_interfaces() {
            Ok(list) => {
                self.links = list
                    .into_iter()
                    .map(|(name, ifindex)| {
                        (
                            ifindex,
                            Link {
                                name,
                                ifindex,
                                up: true,
                                peer: None,
                            },
                        )
                    })
                    .collect();
                self.forget_vanished();
                self.reconcile();
            }
            Err(e) => tracing::error!("listing interfaces: {e}"),
        }
    }

    fn forget_vanished(&mut self) {
        let gone: Vec<u32> = self
            .dp
            .attachments()
            .map(|a| a.ifindex)
            .filter(|i| !self.links.contains_key(i))
            .collect();
        for ifindex in gone {
            self.untrack_peer(ifindex);
            let _ = self.dp.forget(ifindex);
        }
    }

    /// Publishes the agent's state for `envfence status`.
    fn publish_status(&self) {
        let (ready, why) = self.health.ready();
        let interfaces = self
            .dp
            .attachments()
            .map(|a| InterfaceStatus {
                name: a.ifname.clone(),
                ifindex: a.ifindex,
                hooks: vec!["ingress".into(), "egress".into()],
            })
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|(i, e)| {
                let name = self.links.get(i).map_or("?", |l| l.name.as_str());
                format!("{name} ({i}): {e}")
            })
            .collect();
        let stats = self.counters.stats().ok();
        self.status.update(|s| {
            s.ready = ready;
            s.not_ready_reason = if ready {
                String::new()
            } else {
                why.trim().to_owned()
            };
            s.interfaces = interfaces;
            s.pending_interfaces = pending;
            if let Some(st) = stats {
                s.events_emitted = st[envfence_ebpf::stat::EVENTS_EMITTED as usize];
                s.events_lost = st[envfence_ebpf::stat::EVENTS_LOST as usize];
            }
        });
    }

    /// Attaches to every selected interface, detaches from the others,
    /// updates readiness and the published status.
    fn reconcile(&mut self) {
        self.reconcile_links();
        self.publish_status();
    }

    fn reconcile_links(&mut self) {
        let Some(current) = &self.current else {
            self.health.set_ready(
                false,
                "no policy known to this agent (the pinned one is enforced)",
            );
            return;
        };
        let selector = current.interfaces.clone();
        let attached: Vec<(String, u32)> = self
            .dp
            .attachments()
            .map(|a| (a.ifname.clone(), a.ifindex))
            .collect();
        for (name, ifindex) in attached {
            let still = self
                .links
                .get(&ifindex)
                .is_some_and(|l| l.name == name && selector.matches(&name));
            if !still {
                self.untrack_peer(ifindex);
                if let Err(e) = self.dp.detach(&name) {
                    tracing::warn!("detaching {name}: {e}");
                } else {
                    tracing::info!(interface = %name, "no longer selected: detached");
                }
            }
        }
        self.pending.clear();
        let wanted: Vec<Link> = self
            .links
            .values()
            .filter(|l| selector.matches(&l.name))
            .cloned()
            .collect();
        for link in wanted {
            if self.dp.attachments().any(|a| a.ifindex == link.ifindex) {
                continue;
            }
            self.track_peer(&link);
            match self.dp.attach(&link.name) {
                Ok(att) => tracing::info!(
                    interface = %att.ifname,
                    ifindex = att.ifindex,
                    "attached (tcx ingress and egress, first in chain)"
                ),
                Err(e) => {
                    self.metrics.attach_failures.inc();
                    tracing::error!("{e} (retrying every {RETRY_EVERY:?})");
                    self.pending.insert(link.ifindex, e.to_string());
                }
            }
        }
        let count = self.dp.attachments().count();
        self.metrics
            .attached_interfaces
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.metrics
            .map_entries
            .with_label_values(&[envfence_ebpf::map_names::ATTACHED])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if self.pending.is_empty() {
            self.health.set_ready(true, "");
        } else {
            let why = self
                .pending
                .iter()
                .map(|(i, e)| format!("ifindex {i}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            self.health.set_ready(false, format!("not attached: {why}"));
        }
    }
}

/// Registers the audit metrics and makes the change log (which knows the
/// policy a previous agent saved, to diff the first load against it).
fn audit_hooks(
    opts: &DaemonOptions,
    metrics: &Metrics,
    saved: Option<&SavedPolicy>,
) -> anyhow::Result<changes::ChangeLog> {
    let hooks = &opts.audit;
    if let Some(log) = &hooks.log {
        let collector =
            crate::audit::metrics::AuditCollector::new(log.clone(), hooks.ship.clone())?;
        metrics.registry.register(Box::new(collector))?;
    }
    let mut change_log = changes::ChangeLog::new(
        &opts.node,
        hooks.revision.clone(),
        hooks.log.clone(),
        &metrics.registry,
    )?;
    if let Some(s) = saved {
        if let Ok(p) = policy::parse(&s.source, &s.origin) {
            change_log.set_prior(s.origin.clone(), p);
        }
    }
    Ok(change_log)
}

/// The saved policy, compiled with its own ids.
fn compile_saved(saved: &SavedPolicy) -> Option<CompiledPolicy> {
    let p = policy::parse(&saved.source, &saved.origin).ok()?;
    Some(policy::compile_with_ids(
        &p,
        &saved.env_names,
        &saved.rule_names,
    ))
}

fn policy_text_digest(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
