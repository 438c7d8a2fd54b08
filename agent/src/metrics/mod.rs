//! Prometheus metrics. Packet and byte counters are read from the kernel's
//! per-CPU maps at scrape time, so they are exact whatever happens to events.

mod collector;
mod health;
mod server;

pub use collector::{DatapathCollector, EnvNames, PolicyNames};
pub use health::Health;
pub use server::serve;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::policy::CompiledPolicy;

/// The agent's registry and the gauges it sets itself.
pub struct Metrics {
    pub registry: Registry,
    pub attached_interfaces: IntGauge,
    /// Interface attach attempts that failed (retried).
    pub attach_failures: IntCounter,
    /// Policy loads and reloads by result (`success`, `failure`).
    pub reloads: IntCounterVec,
    /// Unix time of the last successful policy load.
    pub last_reload: Gauge,
    /// Generation of the policy in force.
    pub generation: IntGauge,
    /// Entries in each kernel map.
    pub map_entries: IntGaugeVec,
    /// Capacity (max entries) of each kernel map.
    pub map_capacity: IntGaugeVec,
    policy_info: IntGaugeVec,
}

/// Errors setting up metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric failed: {0}")]
    Register(#[from] prometheus::Error),
}

impl Metrics {
    pub fn new(collector: DatapathCollector) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        registry.register(Box::new(collector))?;
        let attached_interfaces = IntGauge::new(
            "envfence_attached_interfaces",
            "Interfaces envfence's programs are attached to (ingress and egress).",
        )?;
        registry.register(Box::new(attached_interfaces.clone()))?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "envfence_policy_info",
                "The policy loaded in the kernel (value 1): generation, mode and SHA-256 of the file.",
            ),
            &["generation", "mode", "sha256"],
        )?;
        registry.register(Box::new(policy_info.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new("envfence_build_info", "envfence build (value 1)."),
            &["version", "abi"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &envfence_ebpf::ABI_VERSION.to_string(),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        let attach_failures = IntCounter::new(
            "envfence_interface_attach_failures_total",
            "Attempts to attach to an interface that failed (each is retried).",
        )?;
        registry.register(Box::new(attach_failures.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "envfence_policy_reloads_total",
                "Policy loads and reloads by result: success, or failure (the file was refused and the policy in force kept).",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(reloads.clone()))?;
        let last_reload = Gauge::new(
            "envfence_policy_last_reload_success_timestamp_seconds",
            "Unix time of the last policy load or reload that succeeded.",
        )?;
        registry.register(Box::new(last_reload.clone()))?;
        let generation = IntGauge::new(
            "envfence_policy_generation",
            "Generation of the policy in force (grows by one per reload; kept across restarts).",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let map_entries = IntGaugeVec::new(
            Opts::new(
                "envfence_map_entries",
                "Entries in each kernel map (policy maps: both policy slots).",
            ),
            &["map"],
        )?;
        registry.register(Box::new(map_entries.clone()))?;
        let map_capacity = IntGaugeVec::new(
            Opts::new("envfence_map_capacity", "Capacity of each kernel map."),
            &["map"],
        )?;
        registry.register(Box::new(map_capacity.clone()))?;
        for (map, cap) in crate::datapath::MAP_CAPACITIES {
            map_capacity.with_label_values(&[map]).set(i64::from(cap));
        }
        Ok(Self {
            registry,
            map_entries,
            map_capacity,
            attached_interfaces,
            attach_failures,
            reloads,
            last_reload,
            generation,
            policy_info,
        })
    }

    /// Records the policy now loaded in the kernel.
    pub fn set_policy(&self, generation: u64, policy: &CompiledPolicy) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[
                generation.to_string().as_str(),
                &policy.mode.to_string(),
                &policy.source_sha256,
            ])
            .set(1);
    }
}
