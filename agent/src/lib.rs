//! envfence: keeps environments apart on the network, enforced by eBPF.
pub mod audit;
pub mod caps;
pub mod cli;
pub mod datapath;
pub mod events;
pub mod metrics;
pub mod policy;
pub mod netwatch;
pub mod daemon;
pub mod status;
pub mod store;
pub mod api;
