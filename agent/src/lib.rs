//! envfence: keeps environments apart on the network, enforced by eBPF.
pub mod policy;
