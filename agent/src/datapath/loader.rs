//! Loading the eBPF object: the programs, their maps (pinned or not), the
//! policy and source-check tables written into them, and the handles the
//! agent keeps (`Datapath`): counters, the event ring, attachments.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use aya::{
    maps::{HashMap, MapData, ProgramArray, RingBuf},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use envfence_ebpf::{globals, map_names, program_names, Config};

use super::{
    attach::{Attachment, Hook},
    counters::CounterReader,
    pins::{PinLayout, PINNED_MAPS},
    policy_maps::{self, typed_map, Installed},
    source_maps, DatapathError, EBPF_OBJECT,
};
use crate::policy::{CompiledPolicy, SourceCheck, SourceChecks};

/// Load-time switches of the eBPF object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Write every decision into `skb->mark` (`envfence_ebpf::tag`): for
    /// tests and benchmarks; it overwrites marks other programs may use.
    pub debug_tag_decision: bool,
    /// Pin maps and links under this bpffs directory (versioned by ABI
    /// inside it), and adopt what a previous agent pinned there. `None`:
    /// nothing is pinned and everything goes with the process.
    pub pin_root: Option<PathBuf>,
    /// Turn the per-CPU verdict cache off (benchmarks compare with it).
    pub no_verdict_cache: bool,
    /// Turn connection tracking off: every packet judged on its own (the
    /// per-packet differential tests, benchmarks' baseline).
    pub no_conntrack: bool,
    /// Capacity of the tracked-flow table (None: `capacity::CONNTRACK`);
    /// tests fill a small one.
    pub conntrack_capacity: Option<u32>,
    /// Datapath log level (aya-log: 0 off, 1 error … 5 trace).
    pub log_level: u8,
    /// Load this eBPF object file instead of the one built into the agent:
    /// another build of the same ABI (the benchmark runs a baseline
    /// revision's object beside this one). `None`: the built-in object.
    pub object: Option<PathBuf>,
}

/// The loaded eBPF object: programs, maps, and the interfaces it is attached
/// to. Dropping it leaves pinned links in place (enforcement goes on);
/// unpinned ones go with it.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    counters: Arc<CounterReader>,
    pub(super) attachments: BTreeMap<String, Attachment>,
    pub(super) pins: Option<PinLayout>,
    was_pinned: bool,
    /// The source checks of the policy in force (the defaults until one is
    /// applied): a newly attached interface gets its mode from here.
    pub(super) source_check: SourceChecks,
}

impl Datapath {
    /// Loads the eBPF object and its programs into the kernel (nothing is
    /// attached yet, nothing pinned).
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// [`Datapath::load`] with options. With a pin root, maps pinned by a
    /// previous agent of this ABI are reopened with their contents (policy,
    /// counters, events not yet read).
    pub fn load_with(options: LoadOptions) -> Result<Self, DatapathError> {
        let tag = u32::from(options.debug_tag_decision);
        let pins = options.pin_root.map(PinLayout::new);
        let was_pinned = pins.as_ref().is_some_and(PinLayout::is_pinned);
        let mut loader = EbpfLoader::new();
        let cache = u32::from(!options.no_verdict_cache);
        loader.override_global(globals::DEBUG_TAG_DECISION, &tag, true);
        loader.override_global(globals::VERDICT_CACHE, &cache, true);
        let conntrack = u32::from(!options.no_conntrack);
        loader.override_global(globals::CONNTRACK, &conntrack, true);
        if let Some(n) = options.conntrack_capacity {
            loader.map_max_entries(map_names::CONNTRACK, n);
        }
        loader.override_global(globals::AYA_LOG_LEVEL, &options.log_level, true);
        if let Some(p) = &pins {
            p.create()?;
            for name in PINNED_MAPS {
                loader.map_pin_path(name, p.map_path(name));
            }
        }
        let from_file;
        let object = match &options.object {
            Some(path) => {
                from_file = std::fs::read(path).map_err(|source| DatapathError::Object {
                    path: path.clone(),
                    source,
                })?;
                &from_file[..]
            }
            None => EBPF_OBJECT,
        };
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [
            program_names::DECIDE,
            program_names::INGRESS,
            program_names::EGRESS,
        ] {
            classifier_mut(&mut ebpf, name)?
                .load()
                .map_err(|e| DatapathError::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        install_stages(&mut ebpf)?;
        let counters = Arc::new(CounterReader::new(
            take_map(&mut ebpf, map_names::COUNTERS)?,
            take_map(&mut ebpf, map_names::RULE_COUNTERS)?,
            take_map(&mut ebpf, map_names::STATS)?,
        )?);
        Ok(Self {
            ebpf,
            counters,
            attachments: BTreeMap::new(),
            pins,
            was_pinned,
            source_check: SourceChecks::default(),
        })
    }

    /// The loaded object (for the map helpers of sibling modules).
    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Whether a previous agent's state (policy, counters, links) was found
    /// pinned and adopted.
    pub fn was_pinned(&self) -> bool {
        self.was_pinned
    }

    /// The pin layout, when pinning.
    pub fn pins(&self) -> Option<&PinLayout> {
        self.pins.as_ref()
    }

    /// The datapath configuration in force (generation, active slot ...).
    pub fn config(&mut self) -> Result<Config, DatapathError> {
        policy_maps::current_config(&mut self.ebpf)
    }

    /// Installs a compiled policy atomically (the inactive slot is written,
    /// then the datapath switches to it). `prior`: the policy in force
    /// before, if known: counters of ids that now name something else are
    /// zeroed first.
    pub fn apply_policy(
        &mut self,
        policy: &CompiledPolicy,
        prior: Option<&CompiledPolicy>,
        report_interval: Duration,
    ) -> Result<Installed, DatapathError> {
        let checks: Vec<(u32, SourceCheck)> = self
            .attachments
            .values()
            .map(|a| (a.ifindex, policy.source_check.for_interface(&a.ifname)))
            .collect();
        let installed = policy_maps::install(
            &mut self.ebpf,
            &self.counters,
            policy,
            prior,
            report_interval,
            &checks,
        )?;
        self.source_check = policy.source_check.clone();
        Ok(installed)
    }

    /// Sets the source check of `ifindex` in both policy slots, whatever
    /// the policy says (tests and benchmarks run TestRun on `lo` and on
    /// lab interfaces they are not attached to). A later
    /// [`Datapath::apply_policy`] sets the attached interfaces' again.
    pub fn set_source_check(
        &mut self,
        ifindex: u32,
        check: SourceCheck,
    ) -> Result<(), DatapathError> {
        source_maps::set_mode(&mut self.ebpf, ifindex, check, &[0, 1])
    }

    /// Takes the source checks of a policy the kernel already holds (an
    /// adopted pinned policy): interfaces attached from now on get them.
    pub fn adopt_source_checks(&mut self, checks: &SourceChecks) {
        self.source_check = checks.clone();
    }

    /// Makes `addrs` the peer addresses of `ifindex` (replacing its set).
    pub fn set_peer_addresses(
        &mut self,
        ifindex: u32,
        addrs: &[IpAddr],
    ) -> Result<(), DatapathError> {
        source_maps::set_peers(&mut self.ebpf, ifindex, addrs)
    }

    /// Adds (`present`) or removes one peer address of `ifindex`.
    pub fn update_peer_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        present: bool,
    ) -> Result<(), DatapathError> {
        source_maps::update_peer(&mut self.ebpf, ifindex, addr, present)
    }

    /// Every peer address the datapath holds: (ifindex, address).
    pub fn peer_addresses(&mut self) -> Result<Vec<(u32, IpAddr)>, DatapathError> {
        Ok(source_maps::peers(&mut self.ebpf)?
            .into_iter()
            .map(|k| (k.ifindex, key_addr(&k)))
            .collect())
    }

    /// The loaded program of a hook (for tests and benchmarks: TestRun).
    pub fn program(&self, hook: Hook) -> Result<&SchedClassifier, DatapathError> {
        classifier(&self.ebpf, hook.program_name())
    }

    /// Empties the stage table: every parsed packet then finds no decision
    /// stage. Fault injection for the tests that prove this fails closed
    /// (`stage_missing`); nothing in the agent calls it.
    pub fn remove_stages(&mut self) -> Result<(), DatapathError> {
        stages(&mut self.ebpf)?
            .clear_index(&envfence_ebpf::STAGE_DECIDE)
            .map_err(DatapathError::map(map_names::STAGES))
    }

    /// How many instructions the verifier walked for each loaded program
    /// (of its budget of one million): how close the datapath is to the
    /// verifier's limit (`kernel_vs_reference::verifier_budget_has_headroom`
    /// holds each under 80 % of it).
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        [
            program_names::INGRESS,
            program_names::EGRESS,
            program_names::DECIDE,
        ]
        .into_iter()
        .map(|name| {
            let count = self
                .ebpf
                .program(name)
                .and_then(|p| <&SchedClassifier>::try_from(p).ok())
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, count)
        })
        .collect()
    }

    /// The datapath's log forwarder (take it once, when logging is on).
    pub fn take_log(&mut self) -> Result<super::logging::DatapathLog, DatapathError> {
        let logger =
            aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, super::logging::TracingLog)
                .map_err(|e| interface_error("*", &format!("datapath log: {e}")))?;
        super::logging::DatapathLog::new(logger)
            .map_err(|e| interface_error("*", &format!("datapath log: {e}")))
    }

    /// The empty baseline program (loaded on first use), for benchmarks.
    pub fn empty_program(&mut self) -> Result<&SchedClassifier, DatapathError> {
        let name = program_names::EMPTY;
        let prog = classifier_mut(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
        }
        classifier(&self.ebpf, name)
    }

    /// The counters, shared with the metrics collector.
    pub fn counters(&self) -> Arc<CounterReader> {
        Arc::clone(&self.counters)
    }

    /// Takes the event ring buffer out of the object. Works once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        RingBuf::try_from(take_map(&mut self.ebpf, map_names::EVENTS)?)
            .map_err(DatapathError::map(map_names::EVENTS))
    }

    /// Entries of the reported-flows LRU map (walks its keys: up to its
    /// capacity in syscalls; call now and then, not per scrape).
    pub fn flow_entries(&mut self) -> Result<usize, DatapathError> {
        let flows: HashMap<&mut MapData, envfence_ebpf::FlowKey, envfence_ebpf::FlowState> =
            typed_map(&mut self.ebpf, map_names::FLOWS)?;
        Ok(flows.keys().filter(Result::is_ok).count())
    }

    /// Bytes the kernel charges for map `name`: `memlock` in its fdinfo
    /// (for hashes allocated on demand, what their entries
    /// take now; for arrays and preallocated hashes, their whole size).
    pub fn map_memory(&self, name: &'static str) -> Result<u64, DatapathError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let missing = DatapathError::Missing { kind: "map", name };
        let data = match self.ebpf.map(name).ok_or(missing)? {
            aya::maps::Map::LpmTrie(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::PerCpuHashMap(d) => d,
            _ => {
                return Err(DatapathError::MapMemory {
                    map: name,
                    message: "not a trie, hash or array map".into(),
                })
            }
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let path = format!("/proc/self/fdinfo/{fd}");
        let info = std::fs::read_to_string(&path).map_err(|e| DatapathError::MapMemory {
            map: name,
            message: format!("{path}: {e}"),
        })?;
        info.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| DatapathError::MapMemory {
                map: name,
                message: format!("{path} has no memlock line"),
            })
    }

    /// The interfaces envfence is attached to.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.values()
    }
}

pub(super) fn interface_error(ifname: &str, message: &str) -> DatapathError {
    DatapathError::Interface {
        ifname: ifname.to_owned(),
        message: message.to_owned(),
    }
}

/// The loaded TC program `name` of the object.
fn classifier<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a SchedClassifier, DatapathError> {
    ebpf.program(name)
        .and_then(|p| <&SchedClassifier>::try_from(p).ok())
        .ok_or(DatapathError::Missing {
            kind: "program",
            name,
        })
}

pub(super) fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(DatapathError::Missing {
            kind: "program",
            name,
        })
}

/// Writes the hooks' second stage into the stage table (a pinned table of
/// a previous agent gets this agent's stage: the same ABI, the same
/// scratch layout).
fn install_stages(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let name = program_names::DECIDE;
    let fd = classifier_mut(ebpf, name)?
        .fd()
        .map_err(|e| DatapathError::Program {
            name,
            source: Box::new(e),
        })?
        .try_clone()
        .map_err(|e| DatapathError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::from(e)),
        })?;
    stages(ebpf)?
        .set(envfence_ebpf::STAGE_DECIDE, &fd, 0)
        .map_err(DatapathError::map(map_names::STAGES))
}

/// The stage table of the loaded object.
fn stages(ebpf: &mut Ebpf) -> Result<ProgramArray<&mut MapData>, DatapathError> {
    let map = ebpf
        .map_mut(map_names::STAGES)
        .ok_or(DatapathError::Missing {
            kind: "map",
            name: map_names::STAGES,
        })?;
    ProgramArray::try_from(map).map_err(DatapathError::map(map_names::STAGES))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or(DatapathError::Missing { kind: "map", name })
}

/// The address of a peer key.
fn key_addr(k: &envfence_ebpf::PeerKey) -> IpAddr {
    if k.family == envfence_ebpf::family::V4 {
        IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
    } else {
        IpAddr::from(k.addr)
    }
}
