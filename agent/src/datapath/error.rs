//! `DatapathError`: what can go wrong between the agent and the kernel
//! (loading, maps, pins, attaching), each with the context to act on it.

use thiserror::Error;

/// What can go wrong between the agent and the kernel.
#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed (are you root, with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON?): {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("reading the eBPF object {path}: {source}")]
    Object {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no {kind} named {name}: it does not match this agent's ABI")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("loading program {name} into the kernel failed: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the classifier needs {needed} entries of map {name}, which holds {capacity} per policy slot: the policy was not installed, the one in force stays")]
    Capacity {
        name: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("the new policy's classifier needs {needed} chunks of map {name}; the policy in force takes {in_use} of its {pool}, and the two must fit side by side until the flip: the policy was not installed, the one in force stays")]
    PoolFull {
        name: &'static str,
        needed: usize,
        in_use: u32,
        pool: u32,
    },
    #[error("writing map {map} in a batch failed after {written} entries: {source}")]
    Batch {
        map: &'static str,
        written: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the kernel memory of map {map} (/proc/self/fdinfo): {message}")]
    MapMemory { map: &'static str, message: String },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "pin root {root}: {at} is on {fs}, not on a bpffs, so envfence cannot pin its maps and links there. \
         Under `ip netns exec` (which remounts /sys and hides the host's bpffs) run it with \
         `nsenter --net=/run/netns/NAME` instead; otherwise mount bpffs (`mount -t bpf bpf /sys/fs/bpf`), \
         pass --pin-root DIR on a bpffs, or --no-pin"
    )]
    NotBpffs {
        root: std::path::PathBuf,
        at: std::path::PathBuf,
        fs: String,
    },
    #[error("interface {ifname:?}: {message}")]
    Interface { ifname: String, message: String },
    #[error("attaching {hook} to interface {ifname:?} failed: {source}")]
    Attach {
        ifname: String,
        hook: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

impl DatapathError {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| DatapathError::Map {
            map,
            source: Box::new(source),
        }
    }
}
