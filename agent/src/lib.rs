//! envfence: keeps environments apart on the network, enforced by eBPF.
pub mod policy;
pub mod datapath;
pub mod events;
pub mod metrics;
pub mod cli;
