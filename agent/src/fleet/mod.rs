//! The fleet view: every agent of a cluster (or of many) seen through
//! Prometheus, which already holds their exact counters. No aggregation
//! service of our own: `envfence fleet` is a client of the Prometheus API,
//! and its PromQL lives in [`queries`], shared with the shipped alerting
//! rules and the dashboard.

pub mod client;
pub mod drift;
pub mod queries;
pub mod status;
pub mod violations;

use client::{PromClient, PromError, Sample};
use queries::{Query, Scope};

/// Errors of the fleet view.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Prom(#[from] PromError),
    #[error(
        "no envfence scrape target in Prometheus at {url}: `{query}` is empty.\n  \
         Is the agents' scrape job named like `envfence` (the ServiceMonitor of deploy/monitoring \
         gives job=\"envfence\")? Otherwise select it with --selector 'job=\"NAME\"'."
    )]
    NoTargets { url: String, query: String },
    #[error(
        "the envfence targets have no `{label}` label ({missing} of {total}, e.g. {example}): the \
         scrape config must set it to the node's name (the ServiceMonitor of deploy/monitoring \
         relabels __meta_kubernetes_pod_node_name to `node`), or name the label that does with \
         --node-label (--node-label instance uses the target address)"
    )]
    MissingLabel {
        label: String,
        missing: usize,
        total: usize,
        example: String,
    },
    #[error(
        "Prometheus at {url} scrapes {targets} target(s) matching {selector} but has no envfence \
         series from them (`{query}` is empty): the targets are not envfence agents (wrong port \
         or path?), or none was ever scraped successfully"
    )]
    NoEnvfenceSeries {
        url: String,
        targets: usize,
        selector: String,
        query: String,
    },
}

/// A Prometheus server and what selects the agents in it.
pub struct Fleet {
    pub client: PromClient,
    pub scope: Scope,
}

/// A target: (job, instance).
pub type TargetKey = (String, String);

impl Fleet {
    /// Runs `q` with the fleet's scope (and `window`, when given) at `time`.
    pub fn run(
        &self,
        q: &Query,
        scope: &Scope,
        time: Option<f64>,
    ) -> Result<Vec<Sample>, FleetError> {
        Ok(self.client.query(&q.render(scope), time)?)
    }

    /// The checks every command makes first: some target matches, every
    /// target exports envfence series (in the window), and every target has
    /// the node label.
    /// Returns the `up` samples.
    pub fn preflight(&self, scope: &Scope, time: Option<f64>) -> Result<Vec<Sample>, FleetError> {
        let mut up = self.run(&queries::UP, scope, time)?;
        if up.is_empty() {
            // A target that disappeared within the window still counts.
            up = self.run(&queries::LAST_SEEN, scope, time)?;
        }
        if up.is_empty() {
            return Err(FleetError::NoTargets {
                url: self.client.url().to_owned(),
                query: queries::UP.render(scope),
            });
        }
        if self.run(&queries::BUILD, scope, time)?.is_empty() {
            return Err(FleetError::NoEnvfenceSeries {
                url: self.client.url().to_owned(),
                targets: up.len(),
                selector: scope.selector.clone(),
                query: queries::BUILD.render(scope),
            });
        }
        let missing: Vec<&Sample> = up
            .iter()
            .filter(|s| s.label(&scope.node_label).is_empty())
            .collect();
        if let Some(first) = missing.first() {
            return Err(FleetError::MissingLabel {
                label: scope.node_label.clone(),
                missing: missing.len(),
                total: up.len(),
                example: format!(
                    "up{{job={:?}, instance={:?}}}",
                    first.label("job"),
                    first.label("instance")
                ),
            });
        }
        Ok(up)
    }
}

/// The (job, instance) of a sample.
pub fn target_key(s: &Sample) -> TargetKey {
    (s.label("job").to_owned(), s.label("instance").to_owned())
}

/// A counter or gauge value as a count (they are integers; NaN and
/// negatives are 0).
pub fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}
