use std::{collections::BTreeMap, time::Duration};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, RingBuf},
    programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use envfence_ebpf::{globals, map_names, program_names, Config, PairVerdict, PortKey, RuleVerdict};

use super::{attach::Attachment, counters::CounterReader, DatapathError, EBPF_OBJECT};
use crate::policy::{CompiledPolicy, Mode};

/// The two tcx hooks envfence attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    pub fn program_name(self) -> &'static str {
        match self {
            Hook::Ingress => program_names::INGRESS,
            Hook::Egress => program_names::EGRESS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

/// Load-time switches of the eBPF object.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Write every decision into `skb->mark` (`envfence_ebpf::tag`): for
    /// tests and benchmarks; it overwrites marks other programs may use.
    pub debug_tag_decision: bool,
}

/// The loaded eBPF object: programs, maps, and the interfaces it is attached
/// to. Dropping it detaches everything.
pub struct Datapath {
    ebpf: Ebpf,
    attachments: BTreeMap<String, Attachment>,
}

impl Datapath {
    /// Loads the eBPF object and its programs into the kernel (nothing is
    /// attached yet).
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// [`Datapath::load`] with options.
    pub fn load_with(options: LoadOptions) -> Result<Self, DatapathError> {
        let tag = u32::from(options.debug_tag_decision);
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::DEBUG_TAG_DECISION, &tag, true)
            .load(EBPF_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for hook in Hook::ALL {
            let name = hook.program_name();
            classifier_mut(&mut ebpf, name)?
                .load()
                .map_err(|e| DatapathError::Program {
                    name,
                    source: Box::new(e),
                })?;
        }
        Ok(Self {
            ebpf,
            attachments: BTreeMap::new(),
        })
    }

    /// Writes a compiled policy into freshly loaded maps.
    pub fn apply_policy(
        &mut self,
        policy: &CompiledPolicy,
        report_interval: Duration,
    ) -> Result<(), DatapathError> {
        {
            let mut v4: LpmTrie<&mut MapData, [u8; 4], u32> =
                typed_map(&mut self.ebpf, map_names::ENV_V4)?;
            for (net, id) in &policy.v4 {
                v4.insert(
                    &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    id,
                    0,
                )
                .map_err(DatapathError::map(map_names::ENV_V4))?;
            }
        }
        {
            let mut v6: LpmTrie<&mut MapData, [u8; 16], u32> =
                typed_map(&mut self.ebpf, map_names::ENV_V6)?;
            for (net, id) in &policy.v6 {
                v6.insert(
                    &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    id,
                    0,
                )
                .map_err(DatapathError::map(map_names::ENV_V6))?;
            }
        }
        {
            let mut pairs: Array<&mut MapData, PairVerdict> =
                typed_map(&mut self.ebpf, map_names::PAIRS)?;
            for (i, pv) in policy.pairs.iter().enumerate() {
                let index = u32::try_from(i).map_err(|_| DatapathError::Missing {
                    kind: "pair slot",
                    name: map_names::PAIRS,
                })?;
                pairs
                    .set(index, pv, 0)
                    .map_err(DatapathError::map(map_names::PAIRS))?;
            }
        }
        {
            let mut ports: HashMap<&mut MapData, PortKey, RuleVerdict> =
                typed_map(&mut self.ebpf, map_names::PORTS)?;
            for (key, value) in &policy.ports {
                ports
                    .insert(key, value, 0)
                    .map_err(DatapathError::map(map_names::PORTS))?;
            }
        }
        let mut config: Array<&mut MapData, Config> = typed_map(&mut self.ebpf, map_names::CONFIG)?;
        let cfg = Config {
            report_interval_ns: u64::try_from(report_interval.as_nanos()).unwrap_or(u64::MAX),
            generation: 1,
            audit_mode: u32::from(policy.mode == Mode::Audit),
        };
        config
            .set(0, cfg, 0)
            .map_err(DatapathError::map(map_names::CONFIG))
    }

    /// The loaded program of a hook (for tests and benchmarks: TestRun).
    pub fn program(&self, hook: Hook) -> Result<&SchedClassifier, DatapathError> {
        let name = hook.program_name();
        self.ebpf
            .program(name)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or(DatapathError::Missing {
                kind: "program",
                name,
            })
    }

    /// Takes the counter maps out of the object, for the metrics collector.
    /// Works once.
    pub fn take_counters(&mut self) -> Result<CounterReader, DatapathError> {
        CounterReader::new(
            take_map(&mut self.ebpf, map_names::COUNTERS)?,
            take_map(&mut self.ebpf, map_names::STATS)?,
        )
    }

    /// Takes the event ring buffer out of the object. Works once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        RingBuf::try_from(take_map(&mut self.ebpf, map_names::EVENTS)?)
            .map_err(DatapathError::map(map_names::EVENTS))
    }

    /// Attaches both programs to `ifname`, first in each tcx chain.
    pub fn attach(&mut self, ifname: &str) -> Result<&Attachment, DatapathError> {
        if self.attachments.contains_key(ifname) {
            return self
                .attachments
                .get(ifname)
                .ok_or_else(|| interface_error(ifname, "vanished"));
        }
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| interface_error(ifname, &format!("no such interface ({e})")))?;
        let ingress = attach_hook(&mut self.ebpf, ifname, Hook::Ingress)?;
        let egress = match attach_hook(&mut self.ebpf, ifname, Hook::Egress) {
            Ok(id) => id,
            Err(e) => {
                let _ = classifier_mut(&mut self.ebpf, Hook::Ingress.program_name())
                    .map(|p| p.detach(ingress));
                return Err(e);
            }
        };
        let mut attached: HashMap<&mut MapData, u32, u32> =
            typed_map(&mut self.ebpf, map_names::ATTACHED)?;
        attached
            .insert(ifindex, 1, 0)
            .map_err(DatapathError::map(map_names::ATTACHED))?;
        let att = Attachment {
            ifname: ifname.to_owned(),
            ifindex,
            ingress,
            egress,
        };
        Ok(self.attachments.entry(ifname.to_owned()).or_insert(att))
    }

    /// Detaches from `ifname` (a no-op when not attached).
    pub fn detach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let Some(att) = self.attachments.remove(ifname) else {
            return Ok(());
        };
        let mut attached: HashMap<&mut MapData, u32, u32> =
            typed_map(&mut self.ebpf, map_names::ATTACHED)?;
        // The interface may be gone already; then so is its entry's purpose.
        let _ = attached.remove(&att.ifindex);
        for (hook, id) in [(Hook::Ingress, att.ingress), (Hook::Egress, att.egress)] {
            let name = hook.program_name();
            classifier_mut(&mut self.ebpf, name)?
                .detach(id)
                .map_err(|e| DatapathError::Attach {
                    ifname: ifname.to_owned(),
                    hook: hook.as_str(),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Detaches from every interface; returns the errors it met (it keeps
    /// going past them).
    pub fn detach_all(&mut self) -> Vec<DatapathError> {
        let names: Vec<String> = self.attachments.keys().cloned().collect();
        names
            .iter()
            .filter_map(|name| self.detach(name).err())
            .collect()
    }

    /// The interfaces envfence is attached to.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.values()
    }
}

fn interface_error(ifname: &str, message: &str) -> DatapathError {
    DatapathError::Interface {
        ifname: ifname.to_owned(),
        message: message.to_owned(),
    }
}

fn attach_hook(
    ebpf: &mut Ebpf,
    ifname: &str,
    hook: Hook,
) -> Result<aya::programs::tc::SchedClassifierLinkId, DatapathError> {
    classifier_mut(ebpf, hook.program_name())?
        .attach_with_options(
            ifname,
            hook.attach_type(),
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(|e| DatapathError::Attach {
            ifname: ifname.to_owned(),
            hook: hook.as_str(),
            source: Box::new(e),
        })
}

fn classifier_mut<'a>(
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

fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(DatapathError::map(name))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or(DatapathError::Missing { kind: "map", name })
}
