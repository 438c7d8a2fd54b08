//! Change records: every policy load, reload, refused file, adoption of a
//! pinned policy, and agent start and stop, as one record of the audit
//! chain (and one JSON line on stdout). The summary of what changed comes
//! from the same diff as `envfence policy diff`.

use serde::{Deserialize, Serialize};

use crate::cli::policy_diff;
use crate::policy::Policy;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The agent started (before its policy is loaded).
    Start,
    /// The policy was loaded at start.
    Load,
    /// The policy was reloaded (file change or SIGHUP).
    Reload,
    /// A policy file was refused; the policy in force stays.
    Refused,
    /// At start, the policy a previous agent pinned was adopted as it is
    /// (the file could not be loaded).
    Adopt,
    /// The agent stopped.
    Stop,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Start => "start",
            ChangeKind::Load => "load",
            ChangeKind::Reload => "reload",
            ChangeKind::Refused => "refused",
            ChangeKind::Adopt => "adopt",
            ChangeKind::Stop => "stop",
        }
    }
}

/// A setting before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    pub old: String,
    pub new: String,
}

/// What a load changed in what is enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// One line for people: `mode enforce -> audit; rules +a -b ~c; …`.
    pub text: String,
    /// Changes the diff found (as `envfence policy diff` counts them).
    pub changes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Before>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Before>,
    /// Environments of the new policy.
    pub environments: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments_removed: Vec<String>,
    /// CIDRs of the new policy.
    pub cidrs: usize,
    /// CIDRs whose environment changes.
    pub cidrs_changed: usize,
    /// Rules of the new policy.
    pub rules: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_removed: Vec<String>,
    /// Rules of both whose from, to, ports or verdict differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_changed: Vec<String>,
    /// (from, to, ports) whose verdict changes.
    pub verdicts_changed: usize,
    /// The interface selection changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interfaces_changed: bool,
}

/// One change record (the audit line without its chain fields, and the
/// JSON line on stdout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Always `change`.
    pub audit: String,
    /// [`ChangeKind::as_str`].
    pub change: String,
    pub time: String,
    pub node: String,
    /// Generation of the policy in force after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_sha256: Option<String>,
    /// The new policy's sha256 (refused: the sha256 of the refused file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_sha256: Option<String>,
    /// The policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The revision the deployment gives (e.g. the Git commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Mode of the policy in force after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ChangeSummary>,
    /// Why a file was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Start: the agent's version; stop: why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ChangeRecord {
    pub fn new(kind: ChangeKind, node: &str) -> Self {
        ChangeRecord {
            audit: "change".to_owned(),
            change: kind.as_str().to_owned(),
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            node: node.to_owned(),
            ..ChangeRecord::default()
        }
    }

    /// Whether the policy's content changed (a load or reload to another
    /// sha256).
    pub fn changes_policy(&self) -> bool {
        matches!(self.change.as_str(), "load" | "reload" | "adopt")
            && self.old_sha256 != self.new_sha256
    }
}

fn cidr_count(p: &Policy) -> usize {
    p.environments.iter().map(|e| e.cidrs.len()).sum()
}

/// Summarizes `new` against `old` (`None`: the first policy of this node).
pub fn summarize(old: Option<(&str, &Policy)>, new_origin: &str, new: &Policy) -> ChangeSummary {
    let rule_names =
        |p: &Policy| -> Vec<String> { p.rules.iter().map(|r| r.name.clone()).collect() };
    let mut s = ChangeSummary {
        environments: new.environments.len(),
        cidrs: cidr_count(new),
        rules: new.rules.len(),
        ..ChangeSummary::default()
    };
    let Some((old_origin, old)) = old else {
        s.environments_added = new.environments.iter().map(|e| e.name.clone()).collect();
        s.rules_added = rule_names(new);
        s.changes = s.environments_added.len() + s.rules_added.len();
        s.text = format!(
            "first policy: mode {}, {} environment(s), {} CIDR(s), {} rule(s)",
            new.mode, s.environments, s.cidrs, s.rules
        );
        return s;
    };
    let d = policy_diff::diff(old_origin, old, new_origin, new);
    let before = |c: &policy_diff::Change| Before {
        old: c.old.clone(),
        new: c.new.clone(),
    };
    s.changes = d.count();
    s.mode = d.mode.as_ref().map(before);
    s.default = d.default.as_ref().map(before);
    s.environments_added = d.environments_added.clone();
    s.environments_removed = d.environments_removed.clone();
    s.cidrs_changed = d.cidrs.len();
    s.verdicts_changed = d.verdicts.len();
    s.interfaces_changed = d.interfaces_include.is_some() || d.interfaces_exclude.is_some();
    let same = |a: &crate::policy::Rule, b: &crate::policy::Rule| {
        a.from == b.from && a.to == b.to && a.ports == b.ports && a.verdict == b.verdict
    };
    for r in &new.rules {
        match old.rule(&r.name) {
            None => s.rules_added.push(r.name.clone()),
            Some(o) if !same(o, r) => s.rules_changed.push(r.name.clone()),
            Some(_) => {}
        }
    }
    s.rules_removed = old
        .rules
        .iter()
        .filter(|r| new.rule(&r.name).is_none())
        .map(|r| r.name.clone())
        .collect();
    s.text = summary_text(&s, old, new);
    s
}

fn summary_text(s: &ChangeSummary, old: &Policy, new: &Policy) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &s.mode {
        parts.push(format!("mode {} -> {}", m.old, m.new));
    }
    if let Some(m) = &s.default {
        parts.push(format!("default {} -> {}", m.old, m.new));
    }
    if !s.environments_added.is_empty() || !s.environments_removed.is_empty() {
        let mut e: Vec<String> = s
            .environments_added
            .iter()
            .map(|n| format!("+{n}"))
            .collect();
        e.extend(s.environments_removed.iter().map(|n| format!("-{n}")));
        parts.push(format!("environments {}", e.join(" ")));
    }
    let (oc, nc) = (cidr_count(old), cidr_count(new));
    if oc != nc || s.cidrs_changed > 0 {
        parts.push(format!(
            "CIDRs {oc} -> {nc} ({} change environment)",
            s.cidrs_changed
        ));
    }
    if !s.rules_added.is_empty() || !s.rules_removed.is_empty() || !s.rules_changed.is_empty() {
        let mut r: Vec<String> = s.rules_added.iter().map(|n| format!("+{n}")).collect();
        r.extend(s.rules_removed.iter().map(|n| format!("-{n}")));
        r.extend(s.rules_changed.iter().map(|n| format!("~{n}")));
        parts.push(format!("rules {}", r.join(" ")));
    }
    if s.verdicts_changed > 0 {
        parts.push(format!("{} verdict(s) change", s.verdicts_changed));
    }
    if s.interfaces_changed {
        parts.push("interface selection changes".to_owned());
    }
    if parts.is_empty() {
        if old.source_sha256 == new.source_sha256 {
            "no change: the same file".to_owned()
        } else {
            "no change in what is enforced (the file differs only in form)".to_owned()
        }
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, EXAMPLE_POLICY};

    fn p(text: &str) -> Policy {
        policy::parse(text, "t.yaml").unwrap()
    }

    #[test]
    fn summary_of_a_mode_change_and_a_rule_edit() {
        let old = p(EXAMPLE_POLICY);
        let new = p(&EXAMPLE_POLICY
            .replace("mode: enforce", "mode: audit")
            .replace("\"53/udp\", \"53/tcp\"", "\"53/udp\""));
        let s = summarize(Some(("a", &old)), "b", &new);
        assert_eq!(
            s.mode,
            Some(Before {
                old: "enforce".into(),
                new: "audit".into()
            })
        );
        assert_eq!(s.rules_changed.len(), 1, "{s:?}");
        assert!(
            s.text.starts_with("mode enforce -> audit; rules ~"),
            "{}",
            s.text
        );
        assert!(s.verdicts_changed > 0);
        let same = summarize(Some(("a", &old)), "a", &old);
        assert_eq!(same.changes, 0);
        assert_eq!(same.text, "no change: the same file");
        let first = summarize(None, "a", &old);
        assert!(
            first.text.starts_with("first policy: mode enforce"),
            "{}",
            first.text
        );
    }

    #[test]
    fn record_json_omits_what_is_not_known() {
        let r = ChangeRecord::new(ChangeKind::Start, "n1");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["audit"], "change");
        assert_eq!(v["change"], "start");
        assert!(v.get("summary").is_none());
        let back: ChangeRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
