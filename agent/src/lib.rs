//! envfence: keeps environments apart on the network, enforced by eBPF.
pub mod api;
pub mod audit;
pub mod caps;
pub mod capture;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod netwatch;
pub mod policy;
pub mod state;
pub mod status;
pub mod store;
