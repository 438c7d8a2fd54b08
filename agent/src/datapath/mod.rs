//! The kernel side, seen from userspace: load the eBPF object, write the
//! compiled policy into its maps, attach its programs with tcx links, and
//! read its counters.

mod attach;
mod batch;
mod conntrack;
mod counters;
mod error;
pub mod inspect;
mod loader;
pub mod logging;
pub mod pinned_tables;
pub mod pins;
mod policy_maps;
mod source_maps;

pub use attach::{list_interfaces, Attachment, Hook};
pub use conntrack::monotonic_ns;
pub use counters::{CounterReader, PairCount, RuleCount};
pub use error::DatapathError;
pub use loader::{Datapath, LoadOptions};
pub use policy_maps::Installed;
pub use source_maps::peer_key;

/// The compiled eBPF object (built by `build.rs`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/envfence-ebpf"));

/// (map, max entries) of the maps whose fill is exported. The classifier's
/// chunk maps count the chunks of their pool that both slots take (a
/// reload whose tables do not fit in the rest is refused); the prefix
/// maps count prefixes.
pub const MAP_CAPACITIES: [(&str, u32); 11] = [
    (
        envfence_ebpf::map_names::ENV_V4,
        envfence_ebpf::trie::CHUNKS,
    ),
    (
        envfence_ebpf::map_names::ENV_V6,
        envfence_ebpf::trie::CHUNKS,
    ),
    (
        envfence_ebpf::map_names::PREFIX_V4,
        envfence_ebpf::SLOTS * envfence_ebpf::capacity::ENV_V4,
    ),
    (
        envfence_ebpf::map_names::PREFIX_V6,
        envfence_ebpf::SLOTS * envfence_ebpf::capacity::ENV_V6,
    ),
    (
        envfence_ebpf::map_names::PORTS,
        envfence_ebpf::SLOTS * envfence_ebpf::capacity::PORTS,
    ),
    (
        envfence_ebpf::map_names::PAIRS,
        envfence_ebpf::SLOTS * envfence_ebpf::PAIRS_LEN,
    ),
    (
        envfence_ebpf::map_names::ATTACHED,
        envfence_ebpf::capacity::ATTACHED,
    ),
    (
        envfence_ebpf::map_names::PEERS,
        envfence_ebpf::capacity::PEERS,
    ),
    (
        envfence_ebpf::map_names::FLOWS,
        envfence_ebpf::capacity::FLOWS,
    ),
    (
        envfence_ebpf::map_names::VERDICTS,
        envfence_ebpf::capacity::VERDICTS,
    ),
    (
        envfence_ebpf::map_names::CONNTRACK,
        envfence_ebpf::capacity::CONNTRACK,
    ),
];
