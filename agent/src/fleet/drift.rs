//! `fleet drift`: agents whose policy differs from the majority's (or from
//! a file's), agents in audit mode where enforce is expected, agents with
//! unattached interfaces.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{count, queries, target_key, Fleet, FleetError, TargetKey};

/// What the agents' policy is compared with.
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    /// `majority` or `file`.
    pub source: String,
    /// The file's hash, or the hash most agents of each job run.
    pub sha256: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// How many agents of a job run a policy.
#[derive(Clone, Debug, Serialize)]
pub struct HashCount {
    pub job: String,
    pub sha256: String,
    pub agents: u64,
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub node: String,
    pub job: String,
    pub instance: String,
    /// `policy`, `audit` or `interfaces`.
    pub kind: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `fleet drift`.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    pub prometheus: String,
    pub selector: String,
    pub reference: Reference,
    pub hashes: Vec<HashCount>,
    /// Jobs where two or more hashes tie for the most agents: no majority.
    pub ties: Vec<String>,
    pub findings: Vec<Finding>,
    /// Agents with no finding.
    pub agreeing: usize,
    /// Agents looked at (those up now).
    pub agents: usize,
}

/// A policy file's identity as the agents export it.
pub struct PolicyFile {
    pub path: String,
    pub sha256: String,
}

/// Queries the drift now.
pub fn drift(fleet: &Fleet, policy: Option<&PolicyFile>) -> Result<Drift, FleetError> {
    let scope = queries::Scope {
        window: "5m".to_owned(),
        sha256: policy.map(|p| p.sha256.clone()).unwrap_or_default(),
        ..fleet.scope.clone()
    };
    let up = fleet.preflight(&scope, None)?;
    let node_label = scope.node_label.clone();
    let agents = up.iter().filter(|s| s.value >= 1.0).count();
    let mut hashes: Vec<HashCount> = fleet
        .run(&queries::POLICY_HASHES, &scope, None)?
        .iter()
        .map(|s| HashCount {
            job: s.label("job").to_owned(),
            sha256: s.label("sha256").to_owned(),
            agents: count(s.value),
        })
        .collect();
    hashes.sort_by(|a, b| {
        (&a.job, std::cmp::Reverse(a.agents), &a.sha256).cmp(&(
            &b.job,
            std::cmp::Reverse(b.agents),
            &b.sha256,
        ))
    });
    let mut majority: BTreeMap<String, String> = BTreeMap::new();
    let mut ties = Vec::new();
    for h in &hashes {
        let best = hashes
            .iter()
            .filter(|x| x.job == h.job)
            .map(|x| x.agents)
            .max()
            .unwrap_or(0);
        let at_best = hashes
            .iter()
            .filter(|x| x.job == h.job && x.agents == best)
            .count();
        if h.agents == best {
            if at_best == 1 {
                majority.insert(h.job.clone(), h.sha256.clone());
            } else if !ties.contains(&h.job) {
                ties.push(h.job.clone());
            }
        }
    }
    let mut findings = Vec::new();
    let finding = |s: &super::client::Sample, kind: &str, detail: String| Finding {
        node: s.label(&node_label).to_owned(),
        job: s.label("job").to_owned(),
        instance: s.label("instance").to_owned(),
        kind: kind.to_owned(),
        detail,
        sha256: Some(s.label("sha256").to_owned()).filter(|h| !h.is_empty()),
        generation: s.label("generation").parse().ok(),
    };
    let reference = match policy {
        Some(p) => {
            for s in fleet.run(&queries::POLICY_NOT_FILE, &scope, None)? {
                findings.push(finding(
                    &s,
                    "policy",
                    format!(
                        "runs policy {} (generation {}, {}), not {}",
                        short(s.label("sha256")),
                        s.label("generation"),
                        s.label("mode"),
                        p.path
                    ),
                ));
            }
            Reference {
                source: "file".to_owned(),
                sha256: BTreeMap::from([(String::new(), p.sha256.clone())]),
                file: Some(p.path.clone()),
            }
        }
        None => {
            for s in fleet.run(&queries::POLICY_DRIFT, &scope, None)? {
                let most = majority.get(s.label("job")).map_or("?", |h| short(h));
                findings.push(finding(
                    &s,
                    "policy",
                    format!(
                        "runs policy {} (generation {}, {}); most agents of job {} run {most}",
                        short(s.label("sha256")),
                        s.label("generation"),
                        s.label("mode"),
                        s.label("job")
                    ),
                ));
            }
            Reference {
                source: "majority".to_owned(),
                sha256: majority,
                file: None,
            }
        }
    };
    for s in fleet.run(&queries::AUDIT_UNEXPECTED, &scope, None)? {
        findings.push(finding(
            &s,
            "audit",
            "runs in audit mode (nothing is dropped) where enforce is expected; label the target \
             envfence_expected_mode=\"audit\" if that is intended"
                .to_owned(),
        ));
    }
    for s in fleet.run(&queries::NO_INTERFACE, &scope, None)? {
        let mut f = finding(&s, "interfaces", "attached to no interface".to_owned());
        f.sha256 = None;
        findings.push(f);
    }
    for s in fleet.run(&queries::ATTACH_FAILING, &scope, None)? {
        let mut f = finding(
            &s,
            "interfaces",
            format!(
                "{} failed attach attempt(s) in 5 minutes: an interface is left unattached \
                 (`envfence status` on the node names it)",
                count(s.value)
            ),
        );
        f.sha256 = None;
        findings.push(f);
    }
    findings.sort_by(|a, b| (&a.node, &a.kind).cmp(&(&b.node, &b.kind)));
    let with_findings: std::collections::BTreeSet<TargetKey> = findings
        .iter()
        .map(|f| (f.job.clone(), f.instance.clone()))
        .collect();
    let agreeing = up
        .iter()
        .filter(|s| s.value >= 1.0 && !with_findings.contains(&target_key(s)))
        .count();
    Ok(Drift {
        prometheus: fleet.client.url().to_owned(),
        selector: scope.selector.clone(),
        reference,
        hashes,
        ties,
        findings,
        agreeing,
        agents,
    })
}

/// The first 12 hex digits of a hash.
pub fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}
