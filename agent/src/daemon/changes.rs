//! The daemon's change records: each policy load, reload, refused file,
//! adoption, and the agent's start and stop, as one record in the audit
//! chain, one JSON line on stdout (for the cluster's log pipeline) and, for
//! a change of the policy's content, `envfence_policy_changes_total`.

use std::{io::Write as _, path::PathBuf};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::{
    audit::{
        change::{summarize, ChangeKind, ChangeRecord},
        SharedAudit,
    },
    policy::Policy,
};

/// Where the revision of the policy comes from.
#[derive(Clone, Debug, Default)]
pub struct Revision {
    /// `--policy-revision` (or `$ENVFENCE_POLICY_REVISION`).
    pub fixed: Option<String>,
    /// `--policy-revision-file`: read at every change (e.g. a key of the
    /// ConfigMap holding the policy, so it changes with it).
    pub file: Option<PathBuf>,
}

impl Revision {
    fn current(&self) -> Option<String> {
        if let Some(path) = &self.file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let t = text.trim();
                    if !t.is_empty() {
                        return Some(t.to_owned());
                    }
                }
                Err(e) => tracing::warn!(
                    "--policy-revision-file {}: {e} (the change record has no revision from it)",
                    path.display()
                ),
            }
        }
        self.fixed.clone()
    }
}

/// Records changes.
pub struct ChangeLog {
    node: String,
    revision: Revision,
    audit: Option<SharedAudit>,
    /// The policy in force (origin, policy), when known.
    last: Option<(String, Policy)>,
    changes: IntCounterVec,
}

impl ChangeLog {
    pub fn new(
        node: &str,
        revision: Revision,
        audit: Option<SharedAudit>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let changes = IntCounterVec::new(
            Opts::new(
                "envfence_policy_changes_total",
                "Loads and reloads that changed the policy's content (another sha256 than the policy in force before), by node: a deployment.",
            ),
            &["node"],
        )?;
        changes.with_label_values(&[node]);
        registry.register(Box::new(changes.clone()))?;
        Ok(ChangeLog {
            node: node.to_owned(),
            revision,
            audit,
            last: None,
            changes,
        })
    }

    /// The policy in force before this agent (a previous agent's, saved).
    pub fn set_prior(&mut self, origin: String, policy: Policy) {
        self.last = Some((origin, policy));
    }

    pub fn start(&mut self) {
        let mut r = ChangeRecord::new(ChangeKind::Start, &self.node);
        r.detail = Some(format!(
            "envfence {} (ABI {})",
            env!("CARGO_PKG_VERSION"),
            envfence_ebpf::ABI_VERSION
        ));
        self.emit(r);
    }

    pub fn stop(&mut self, reason: &str) {
        let mut r = ChangeRecord::new(ChangeKind::Stop, &self.node);
        r.detail = Some(reason.to_owned());
        r.new_sha256 = self.last.as_ref().map(|(_, p)| p.source_sha256.clone());
        self.emit(r);
    }

    /// A policy was installed (`Load` at start, `Reload`).
    pub fn loaded(&mut self, kind: ChangeKind, origin: &str, policy: &Policy, generation: u64) {
        let mut r = self.base(kind, origin, Some(generation));
        r.new_sha256 = Some(policy.source_sha256.clone());
        r.mode = Some(policy.mode.to_string());
        r.summary = Some(summarize(
            self.last.as_ref().map(|(o, p)| (o.as_str(), p)),
            origin,
            policy,
        ));
        self.last = Some((origin.to_owned(), policy.clone()));
        self.emit(r);
    }

    /// A policy file was refused; the policy in force stays. `sha256`: of
    /// the refused file, when it could be read.
    pub fn refused(
        &mut self,
        origin: &str,
        sha256: Option<String>,
        error: String,
        generation: Option<u64>,
    ) {
        let mut r = self.base(ChangeKind::Refused, origin, generation);
        r.new_sha256 = sha256;
        r.mode = self.last.as_ref().map(|(_, p)| p.mode.to_string());
        r.error = Some(error);
        self.emit(r);
    }

    /// The policy a previous agent pinned was adopted as it is.
    pub fn adopted(&mut self, origin: &str, policy: Option<&Policy>, generation: u64) {
        let mut r = self.base(ChangeKind::Adopt, origin, Some(generation));
        r.new_sha256 = policy.map(|p| p.source_sha256.clone());
        r.mode = policy.map(|p| p.mode.to_string());
        r.detail = Some(match policy {
            Some(_) => {
                "the kernel keeps enforcing the pinned policy (its saved copy gives the names)"
                    .to_owned()
            }
            None => "the kernel keeps enforcing the pinned policy (no saved copy: names unknown)"
                .to_owned(),
        });
        self.emit(r);
    }

    fn base(&self, kind: ChangeKind, origin: &str, generation: Option<u64>) -> ChangeRecord {
        let mut r = ChangeRecord::new(kind, &self.node);
        r.generation = generation;
        r.old_sha256 = self.last.as_ref().map(|(_, p)| p.source_sha256.clone());
        r.source = Some(origin.to_owned());
        r.revision = self.revision.current();
        r
    }

    fn emit(&mut self, r: ChangeRecord) {
        if r.changes_policy() {
            self.changes.with_label_values(&[&self.node]).inc();
        }
        match serde_json::to_vec(&r) {
            Ok(mut line) => {
                line.push(b'\n');
                // One write of the whole line: never interleaved with events.
                let _ = std::io::stdout().lock().write_all(&line);
            }
            Err(e) => tracing::error!("encoding a change record: {e}"),
        }
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.append(&r) {
                tracing::error!("audit log: the {} change record: {e}", r.change);
            }
        }
    }
}
