//! envfence-tests: the network-namespace lab, the helpers that drive the
//! agent inside it, and the demo (`src/bin/envfence-demo.rs`).
//!
//! Everything here needs root (namespaces, veths, eBPF); see `tests/tests/`
//! for the privileged integration tests and `cargo xtask demo`.

pub mod agent;
pub mod audit_rewrite;
pub mod bench;
pub mod cli;
pub mod ctdiff;
pub mod ctmodel;
pub mod expect;
pub mod fixture;
pub mod lab;
pub mod lifecycle;
pub mod netns;
pub mod oracle;
pub mod packet;
pub mod prom;
pub mod rng;
pub mod rsyslog;
pub mod spoof;
pub mod testrun;

pub use lab::{http_get, sweep_leftovers, wait_until, Family, Lab, PodSpec};
pub use prom::metric_value;
pub mod gen;
