//! The running agent's state and what changes it: the policy in force
//! (installed, reloaded, or adopted from the pins), and the interfaces it is
//! attached to, kept in step with the links of the namespace.
//!
//! DESIGN: a policy reaches the rest of the agent through one step,
//! [`Agent::publish`]: the event context's slot names, the names the metrics
//! use, the policy metrics, the published status and `current`. An install
//! (first load or reload) and an adoption (a bad file over pinned state) both
//! go through it; what only an install does (count the reload, save the
//! policy in the state directory, size the maps) is the `Installed` case.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use anyhow::Context as _;

use super::{changes, unix_now, DaemonOptions, RETRY_EVERY};
use crate::{
    audit::change::ChangeKind,
    datapath::{list_interfaces, Datapath},
    events::EventContext,
    metrics::{DatapathCollector, Health, Metrics, PolicyNames},
    netwatch::{Link, LinkEvent, LinkWatcher},
    policy::{self, CompiledPolicy, Policy, PolicyErrors},
    state::{self, SavedPolicy},
    status::{InterfaceStatus, Status},
};

pub(super) struct Agent {
    pub(super) dp: Datapath,
    pub(super) opts: DaemonOptions,
    /// The policy in force, when this agent knows it.
    pub(super) current: Option<CompiledPolicy>,
    pub(super) ctx: Arc<RwLock<EventContext>>,
    env_names: crate::metrics::EnvNames,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// Every interface of the namespace, by ifindex.
    links: BTreeMap<u32, Link>,
    /// Selected interfaces that failed to attach: ifindex -> last error.
    pub(super) pending: BTreeMap<u32, String>,
    /// Digest of the policy text last tried.
    last_text: Option<u64>,
    pub(super) status: Arc<Status>,
    counters: Arc<crate::datapath::CounterReader>,
    /// Follows the addresses on the other end of attached veths (the
    /// strict source check's peer addresses); `None` when it cannot run.
    pub(super) peers: Option<crate::netwatch::PeerWatcher>,
    pub(super) changes: changes::ChangeLog,
}

/// How a policy came to be in force, for [`Agent::publish`].
enum Publish<'a> {
    /// This agent wrote it into `slot` (read from the policy source as
    /// `source`); `prior` was in force before, if known.
    Installed {
        slot: u32,
        source: String,
        prior: Option<&'a CompiledPolicy>,
        /// Chunks of each classifier pool both slots take now.
        chunks_in_use: [u32; 2],
    },
    /// A previous agent's policy, still pinned, named by the saved copy
    /// read from `origin`.
    Adopted { origin: &'a str },
}

impl Agent {
    /// The agent over a loaded datapath: metrics, health, the audit hooks
    /// (the change log starts here) and the first status. `saved`: what a
    /// previous agent saved (the change log diffs the first load against it).
    pub(super) fn new(
        opts: DaemonOptions,
        dp: Datapath,
        saved: Option<&SavedPolicy>,
    ) -> anyhow::Result<Self> {
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
        let mut change_log = audit_hooks(&opts, &metrics, saved)?;
        change_log.start();
        let status = Arc::new(Status::default());
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
        let ctx = Arc::new(RwLock::new(EventContext {
            node: opts.node.clone(),
            slots: Default::default(),
            interfaces: HashMap::new(),
        }));
        Ok(Self {
            dp,
            opts,
            current: None,
            ctx,
            env_names,
            metrics,
            health,
            links: BTreeMap::new(),
            pending: BTreeMap::new(),
            last_text: None,
            status,
            counters,
            peers: None,
            changes: change_log,
        })
    }

    pub(super) fn ctx_mut(&self) -> std::sync::RwLockWriteGuard<'_, EventContext> {
        self.ctx.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following the namespace's interfaces: peer addresses first
    /// (before any interface is attached, see daemon/peers.rs), then links,
    /// so that nothing appearing from now on is missed.
    pub(super) fn follow_interfaces(&mut self) -> anyhow::Result<LinkWatcher> {
        self.peers = match crate::netwatch::PeerWatcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "{} ({e}): strict source checks accept routes only",
                    crate::caps::PEERS_NOT_FOLLOWED
                );
                None
            }
        };
        let (watcher, links) =
            LinkWatcher::new().context("watching network interfaces (netlink)")?;
        self.links = links.into_iter().map(|l| (l.ifindex, l)).collect();
        for (name, ifindex) in list_interfaces()? {
            self.ctx_mut().interfaces.insert(ifindex, name);
        }
        Ok(watcher)
    }

    /// The first policy: the file's when it is good (keeping the ids of the
    /// saved policy), else the pinned one, named by the saved copy.
    pub(super) fn load_first(
        &mut self,
        first: Result<(Policy, String), PolicyErrors>,
        saved: Option<SavedPolicy>,
        origin: &str,
    ) -> anyhow::Result<()> {
        match first {
            Ok((p, text)) => {
                let prior = saved
                    .as_ref()
                    .and_then(|s| s.compile().ok())
                    .map(|(_, compiled)| compiled);
                self.last_text = Some(policy_text_digest(&text));
                self.install(&p, text, prior.as_ref())?;
                let generation = self.generation();
                self.changes
                    .loaded(ChangeKind::Load, origin, &p, generation);
            }
            Err(errors) => {
                let text = self.opts.policy.text().ok();
                self.last_text = text.as_deref().map(policy_text_digest);
                let sha = text.as_deref().map(policy::sha256_hex);
                let pinned = saved.as_ref().map(|s| u64::from(s.generation));
                self.count_failure();
                self.refused(sha, errors.to_string(), pinned);
                let saved_policy = self.adopt_saved(saved)?;
                let generation = self.generation();
                self.changes
                    .adopted(origin, saved_policy.as_ref(), generation);
            }
        }
        Ok(())
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
        self.publish(
            compiled,
            installed.generation,
            Publish::Installed {
                slot: installed.slot,
                source,
                prior,
                chunks_in_use: installed.chunks_in_use,
            },
        );
        // The classifier's build tables are freed by now.
        release_freed_memory();
        Ok(())
    }

    /// Starting with a bad file over pinned state: the kernel keeps the
    /// pinned policy; names come from the saved copy. Returns the saved
    /// policy, parsed (`None` when there is no saved copy).
    fn adopt_saved(&mut self, saved: Option<SavedPolicy>) -> anyhow::Result<Option<Policy>> {
        let config = self.dp.config()?;
        let Some(saved) = saved else {
            tracing::warn!("no saved copy of the pinned policy: names in metrics and events are ids until a good policy is loaded; links are left as they are");
            self.metrics.generation.set(i64::from(config.generation));
            return Ok(None);
        };
        let (p, compiled) = saved
            .compile()
            .map_err(|_| anyhow::anyhow!("the saved policy {} no longer parses", saved.origin))?;
        self.dp.adopt_source_checks(&compiled.source_check);
        self.publish(
            compiled,
            config.generation,
            Publish::Adopted {
                origin: &saved.origin,
            },
        );
        Ok(Some(p))
    }

    /// Makes `compiled` (in force in the kernel at `generation`) the policy
    /// of the whole agent: the names of events and metrics, the policy
    /// metrics, the published status, `current`; for an install also the
    /// reload metrics, the saved copy and the map fill.
    fn publish(&mut self, compiled: CompiledPolicy, generation: u32, how: Publish<'_>) {
        match &how {
            Publish::Installed { slot, .. } => self.ctx_mut().set_slot(*slot, &compiled),
            // The pinned policy may be in either slot.
            Publish::Adopted { .. } => {
                for slot in 0..2 {
                    self.ctx_mut().set_slot(slot, &compiled);
                }
            }
        }
        *self.env_names.write().unwrap_or_else(|p| p.into_inner()) = PolicyNames {
            envs: compiled.env_names.clone(),
            rules: compiled.rule_names.clone(),
        };
        self.metrics.set_policy(u64::from(generation), &compiled);
        if let Publish::Installed {
            source,
            prior,
            chunks_in_use,
            ..
        } = &how
        {
            self.metrics.reloads.with_label_values(&["success"]).inc();
            self.metrics.last_reload.set(unix_now());
            self.save(&compiled, source, generation);
            self.set_map_entries(&compiled, *prior, *chunks_in_use);
        }
        let origin = match &how {
            Publish::Installed { .. } => self.opts.policy.origin(),
            Publish::Adopted { origin } => format!("{origin} (saved copy of the pinned policy)"),
        };
        self.status.update(|s| {
            s.mode = compiled.mode.to_string();
            s.generation = generation;
            s.policy_origin = origin;
            s.policy_sha256 = compiled.source_sha256.clone();
            if matches!(how, Publish::Installed { .. }) {
                s.policy_loaded_at = unix_now();
                s.last_reload_error = None;
            }
            s.environments = compiled
                .env_names
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect();
            s.rules = compiled.rule_names.clone();
        });
        if let Publish::Installed { slot, .. } = how {
            tracing::info!(
                generation,
                slot,
                mode = %compiled.mode,
                sha256 = %compiled.source_sha256,
                "policy installed"
            );
        }
        self.current = Some(compiled);
    }

    /// Saves the installed policy in the state directory (a restart with a
    /// bad file then knows the names behind the ids).
    fn save(&self, compiled: &CompiledPolicy, source: &str, generation: u32) {
        let saved = SavedPolicy::new(
            self.opts.policy.origin(),
            source.to_owned(),
            compiled,
            generation,
        );
        if let Err(e) = state::save(&self.opts.state_dir, &saved) {
            tracing::warn!(
                "could not save the policy state in {}: {e} (a restart with a bad file would not know the names)",
                self.opts.state_dir.display()
            );
        }
    }

    /// The policy maps' fill: both slots (the new policy and the one before).
    fn set_map_entries(
        &self,
        compiled: &CompiledPolicy,
        prior: Option<&CompiledPolicy>,
        chunks_in_use: [u32; 2],
    ) {
        let both = |f: fn(&CompiledPolicy) -> usize| {
            let n = f(compiled) + prior.map_or(0, f);
            i64::try_from(n).unwrap_or(i64::MAX)
        };
        let entries = &self.metrics.map_entries;
        entries
            .with_label_values(&[envfence_ebpf::map_names::ENV_V4])
            .set(i64::from(chunks_in_use[0]));
        entries
            .with_label_values(&[envfence_ebpf::map_names::ENV_V6])
            .set(i64::from(chunks_in_use[1]));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PREFIX_V4])
            .set(both(|c| c.v4.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PREFIX_V6])
            .set(both(|c| c.v6.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PORTS])
            .set(both(|c| c.ports.len()));
        entries
            .with_label_values(&[envfence_ebpf::map_names::PAIRS])
            .set(i64::from(envfence_ebpf::SLOTS * envfence_ebpf::PAIRS_LEN));
    }

    /// Counts a policy that could not be loaded.
    fn count_failure(&self) {
        self.metrics.reloads.with_label_values(&["failure"]).inc();
    }

    /// A policy file refused (`error`; `sha`: its text's digest when it
    /// could be read); `pinned`: the generation that stays in force.
    /// (The caller counts the failure first.)
    fn refused(&mut self, sha: Option<String>, error: String, pinned: Option<u64>) {
        self.changes
            .refused(&self.opts.policy.origin(), sha, error.clone(), pinned);
        self.status.update(|s| s.last_reload_error = Some(error));
    }

    /// Re-reads the policy; a bad file changes nothing in the kernel. A
    /// file-change reload of text already tried (good or bad) does nothing;
    /// SIGHUP always tries.
    pub(super) fn reload(&mut self, forced: bool) {
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
                self.count_failure();
                tracing::error!("policy reload refused, the policy in force stays:\n{errors}");
                let sha = self.opts.policy.text().ok().map(|t| policy::sha256_hex(&t));
                let generation = self.generation();
                self.refused(sha, errors.to_string(), Some(generation));
                return;
            }
        };
        let prior = self.current.clone();
        let sha = policy::sha256_hex(&text);
        if let Err(e) = self.install(&p, text, prior.as_ref()) {
            self.count_failure();
            tracing::error!("policy reload failed, the policy in force stays: {e:#}");
            let generation = self.generation();
            self.refused(Some(sha), format!("{e:#}"), Some(generation));
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
        drop(prior);
        release_freed_memory();
    }

    /// Generation of the policy in force.
    pub(super) fn generation(&self) -> u64 {
        u64::try_from(self.metrics.generation.get()).unwrap_or(0)
    }

    pub(super) fn on_link_event(&mut self, event: LinkEvent) {
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

    pub(super) fn resync_links(&mut self) {
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

    /// The retry timer's tick number `ticks` (every [`RETRY_EVERY`], the
    /// first is 1): retries interfaces that failed to attach; every tenth
    /// tick also publishes the status and the flow table's fill, and sweeps
    /// the tracked-flow table.
    pub(super) fn on_tick(&mut self, ticks: u64) {
        if !self.pending.is_empty() {
            self.reconcile();
        }
        if ticks % 10 != 1 {
            return;
        }
        self.publish_status();
        if let Ok(n) = self.dp.flow_entries() {
            self.metrics
                .map_entries
                .with_label_values(&[envfence_ebpf::map_names::FLOWS])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // Expired tracked flows give their room back (the datapath already
        // treats them as absent).
        match self.dp.sweep_conntrack(crate::datapath::monotonic_ns()) {
            Ok((_, live)) => self
                .metrics
                .map_entries
                .with_label_values(&[envfence_ebpf::map_names::CONNTRACK])
                .set(i64::try_from(live).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!("sweeping the tracked-flow table: {e}"),
        }
    }

    /// Publishes the agent's state for `envfence status`.
    pub(super) fn publish_status(&self) {
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
    pub(super) fn reconcile(&mut self) {
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
        if let Ok(p) = s.parse() {
            change_log.set_prior(s.origin.clone(), p);
        }
    }
    Ok(change_log)
}

fn policy_text_digest(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Gives the heap's free pages back to the kernel after a reload: the old
/// policy, its copy and the new classifier's build tables are freed by
/// then, but glibc keeps freed memory (and raises its mmap threshold after
/// freeing large blocks), so that without this the RSS after a reload of
/// 100,000 CIDRs was nearly twice the RSS after the first load.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
