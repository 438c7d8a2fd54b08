//! The kernel side, seen from userspace: load the eBPF object, write the
//! compiled policy into its maps, attach its programs with tcx links, and
//! read its counters.

mod attach;
mod counters;
mod error;
mod loader;
pub mod pins;
mod policy_maps;

pub use attach::{list_interfaces, Attachment};
pub use counters::{CounterReader, PairCount};
pub use error::DatapathError;
pub use loader::{Datapath, Hook, LoadOptions};
pub use policy_maps::Installed;

/// The compiled eBPF object (built by `build.rs`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/envfence-ebpf"));
