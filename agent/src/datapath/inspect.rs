//! Reading envfence's state straight from the maps pinned in bpffs, without
//! the agent process: what `envfence explain` decides from, and what
//! `envfence status` shows when the agent is down. Nothing here writes.
//!
//! The decision is the datapath's own (`envfence_ebpf::decide`, over the
//! pinned `PAIRS` and `PORTS` of the active slot of `CONFIG`), after the
//! classifier's walk of each address through the slot's tables in
//! `ENV_V4`/`ENV_V6` (`envfence_ebpf::classify`, the datapath's walk; the
//! prefix it ends at from `PREFIX_V4`/`PREFIX_V6`; an IPv4-mapped IPv6
//! address is looked up as IPv4).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use envfence_ebpf::classify::{walk_v4, walk_v6, TrieTables};
use envfence_ebpf::{
    counter_index,
    decide::{self, By, Tables},
    map_names, slot_pair_index, stat, trie, Chunk, Config, Counter, IfConfig, PairVerdict, PeerKey,
    PortKey, RuleVerdict, TriePrefix, TunnelPorts, MAX_ENVS, NUM_VERDICTS, TUNNEL_ENTRIES_PER_SLOT,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{pins, Hook};
use crate::policy::L4;

/// Why the pinned state cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "nothing is pinned at {} (no envfence agent of ABI v{} ran on this node since boot, it runs with --no-pin, or its pins are elsewhere: --pin-root; is bpffs mounted at /sys/fs/bpf?)",
        .dir.display(),
        envfence_ebpf::ABI_VERSION
    )]
    NotPinned { dir: PathBuf },
    /// The pin root is not on a bpffs (e.g. under `ip netns exec`, which
    /// remounts /sys): nothing pinned can be seen from here.
    #[error(transparent)]
    NotBpffs(Box<super::DatapathError>),
    #[error(
        "opening the pinned map {}: permission denied (reading the kernel's maps needs root)",
        .path.display()
    )]
    Permission { path: PathBuf },
    #[error("opening the pinned map {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("reading the pinned map {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

fn read_error(map: &'static str) -> impl FnOnce(MapError) -> InspectError {
    move |source| InspectError::Read {
        map,
        source: Box::new(source),
    }
}

/// The maps of one pinned envfence, opened.
pub struct PinnedState {
    dir: PathBuf,
    config: Array<MapData, Config>,
    v4: PinnedTrie,
    v6: PinnedTrie,
    pairs: Array<MapData, PairVerdict>,
    ports: HashMap<MapData, PortKey, RuleVerdict>,
    attached: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, Counter>,
    ifconf: HashMap<MapData, u32, IfConfig>,
    peers: HashMap<MapData, PeerKey, u32>,
    conntrack: HashMap<MapData, envfence_ebpf::CtKey, envfence_ebpf::CtEntry>,
    tunnel_ports: Array<MapData, TunnelPorts>,
}

/// The environment an address is in, as the kernel's classifier says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvMatch {
    /// Environment id (0: `world`, in none).
    pub id: u32,
    /// The longest pinned prefix of the active slot holding the address.
    pub prefix: Option<IpNet>,
}

/// What decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A port rule: (protocol, destination port).
    PortRule { proto: u8, port: u16 },
    /// The pair's verdict (no port rule matched, or no ports).
    Pair,
    /// The pair's strictest verdict (ports unreadable).
    NoPorts,
}

/// A decision read from the pinned maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelDecision {
    pub config: Config,
    /// The slot the datapath judges with now.
    pub slot: u32,
    pub src: EnvMatch,
    pub dst: EnvMatch,
    /// The verdict ([`envfence_ebpf::verdict`]), audit mode folded in.
    pub verdict: u8,
    /// The rule id that decided.
    pub rule: u16,
    pub by: DecidedBy,
    /// The pair's entry.
    pub pair: PairVerdict,
}

/// One of envfence's pinned tcx links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReport {
    pub hook: &'static str,
    pub path: PathBuf,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub program_name: Option<String>,
    /// Why the link could not be read.
    pub error: Option<String>,
}

/// Packets and bytes of one verdict, summed over environments and CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictTotals {
    pub packets: [u64; NUM_VERDICTS as usize],
    pub bytes: [u64; NUM_VERDICTS as usize],
}

/// (stat index, name) of the datapath statistics, named as in the metrics.
pub const STAT_NAMES: [(u32, &str); stat::COUNT as usize] = stat::NAMES;

impl PinnedState {
    /// Opens the maps pinned under `pin_root` (this ABI's directory in it).
    pub fn open(pin_root: &Path) -> Result<Self, InspectError> {
        let layout = pins::PinLayout::new(pin_root);
        let dir = layout.dir();
        if !layout.is_pinned() {
            pins::check_bpffs(pin_root).map_err(|e| InspectError::NotBpffs(Box::new(e)))?;
            return Err(InspectError::NotPinned { dir });
        }
        Ok(Self {
            config: open_typed(&layout, map_names::CONFIG)?,
            v4: PinnedTrie::open(&layout, [map_names::ENV_V4, map_names::PREFIX_V4])?,
            v6: PinnedTrie::open(&layout, [map_names::ENV_V6, map_names::PREFIX_V6])?,
            pairs: open_typed(&layout, map_names::PAIRS)?,
            ports: open_typed(&layout, map_names::PORTS)?,
            attached: open_typed(&layout, map_names::ATTACHED)?,
            stats: open_typed(&layout, map_names::STATS)?,
            counters: open_typed(&layout, map_names::COUNTERS)?,
            ifconf: open_typed(&layout, map_names::IFCONF)?,
            peers: open_typed(&layout, map_names::PEERS)?,
            conntrack: open_typed(&layout, map_names::CONNTRACK)?,
            tunnel_ports: open_typed(&layout, map_names::TUNNEL_PORTS)?,
            dir,
        })
    }

    /// The directory of the pins (`<root>/v<ABI>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The datapath configuration in force.
    pub fn config(&self) -> Result<Config, InspectError> {
        self.config
            .get(&0, 0)
            .map_err(read_error(map_names::CONFIG))
    }

    /// The ifindexes envfence is attached to (the `ATTACHED` map), sorted.
    pub fn attached(&self) -> Result<Vec<u32>, InspectError> {
        let mut out = Vec::new();
        for key in self.attached.keys() {
            out.push(key.map_err(read_error(map_names::ATTACHED))?);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The source check of `ifindex` under policy `slot` (None: no entry;
    /// the datapath then checks strictly by routes alone).
    pub fn source_check(
        &self,
        ifindex: u32,
        slot: u32,
    ) -> Result<Option<crate::policy::rpf::IfaceCheck>, InspectError> {
        let i = (slot & 1) as usize;
        match self.ifconf.get(&ifindex, 0) {
            Ok(c) => Ok(Some(crate::policy::rpf::IfaceCheck {
                mode: c.mode[i],
                trust_peer: c.trust_peer[i] != 0,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read_error(map_names::IFCONF)(e)),
        }
    }

    /// Whether `addr` is a peer address of `ifindex` (`EF_PEERS`).
    pub fn is_peer(&self, ifindex: u32, addr: IpAddr) -> Result<bool, InspectError> {
        match self
            .peers
            .get(&super::source_maps::peer_key(ifindex, addr), 0)
        {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(read_error(map_names::PEERS)(e)),
        }
    }

    /// The tcx links pinned for `ifindex`, with their program ids.
    pub fn links(&self, ifindex: u32) -> Vec<LinkReport> {
        Hook::ALL
            .iter()
            .map(|&hook| read_link(&pins::link_path_in(&self.dir, ifindex, hook), hook))
            .collect()
    }

    /// The environment of `ip` in policy slot `slot`, and the prefix that
    /// put it there.
    pub fn lookup_env(&self, ip: IpAddr, slot: u32) -> Result<EnvMatch, InspectError> {
        let s = slot & 1;
        let (leaf, prefix) = match self.walk(ip, s)? {
            Walked::V4(leaf) => (
                leaf,
                self.v4.prefix(leaf, s)?.and_then(|p| {
                    let [a, b, c, d, ..] = p.addr;
                    Ipv4Net::new(Ipv4Addr::new(a, b, c, d), p.len)
                        .ok()
                        .map(IpNet::V4)
                }),
            ),
            Walked::V6(leaf) => (
                leaf,
                self.v6.prefix(leaf, s)?.and_then(|p| {
                    Ipv6Net::new(Ipv6Addr::from(p.addr), p.len)
                        .ok()
                        .map(IpNet::V6)
                }),
            ),
        };
        Ok(EnvMatch {
            id: trie::leaf_env(leaf),
            prefix,
        })
    }

    /// The environment id of `ip` in policy slot `slot`, as the datapath
    /// looks it up (one walk; [`PinnedState::lookup_env`] also names the
    /// prefix).
    pub fn env_id(&self, ip: IpAddr, slot: u32) -> Result<u32, InspectError> {
        let (Walked::V4(leaf) | Walked::V6(leaf)) = self.walk(ip, slot & 1)?;
        Ok(trie::leaf_env(leaf))
    }

    /// The datapath's walk of `ip` through the tables of `slot` (an
    /// IPv4-mapped IPv6 address walks the IPv4 tables, as in the kernel).
    fn walk(&self, ip: IpAddr, slot: u32) -> Result<Walked, InspectError> {
        // Where the slot's tables start in the family's pool, as the
        // datapath reads it.
        let base = |family: usize| -> Result<u32, InspectError> {
            let len = self.config()?.slot_chunks[(slot & 1) as usize][family];
            Ok(trie::slot_base(slot, len))
        };
        let v4 = match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        match (v4, ip) {
            (Some(a), _) | (None, IpAddr::V4(a)) => walk_v4(&self.v4.at(base(0)?), a.octets())
                .map(Walked::V4)
                .map_err(self.v4.error()),
            (None, IpAddr::V6(a)) => walk_v6(&self.v6.at(base(1)?), &a.octets())
                .map(Walked::V6)
                .map_err(self.v6.error()),
        }
    }

    /// The [`envfence_ebpf::tunnel`] kind of every UDP port (indexed by
    /// port) in policy slot `slot` (`EF_TUNNEL_PORTS`).
    pub fn tunnel_kinds(&self, slot: u32) -> Result<Vec<u8>, InspectError> {
        let mut out = Vec::with_capacity(65_536);
        for i in 0..TUNNEL_ENTRIES_PER_SLOT {
            let e = self
                .tunnel_ports
                .get(&envfence_ebpf::tunnel_ports_index(slot, (i << 8) as u16), 0)
                .map_err(read_error(map_names::TUNNEL_PORTS))?;
            out.extend_from_slice(&e.kind);
        }
        Ok(out)
    }

    /// The decision of a packet between two environments in `slot`, as
    /// the datapath decides it ([`envfence_ebpf::decide::decide`]), and the
    /// pair's entry.
    pub fn decided(
        &self,
        slot: u32,
        src_env: u32,
        dst_env: u32,
        l4: envfence_ebpf::L4,
        proto: u8,
        dport: u16,
    ) -> Result<(decide::Decided, PairVerdict), InspectError> {
        let pair = self.pair(slot, src_env, dst_env)?;
        let tables = SlotTables {
            state: self,
            slot: slot & 1,
        };
        let d = decide::decide(&tables, &pair, src_env, dst_env, l4, proto, dport)?;
        Ok((d, pair))
    }

    /// The pair entry of (src, dst) in `slot`.
    pub fn pair(&self, slot: u32, src_env: u32, dst_env: u32) -> Result<PairVerdict, InspectError> {
        self.pairs
            .get(
                &slot_pair_index(slot & 1, src_env & (MAX_ENVS - 1), dst_env & (MAX_ENVS - 1)),
                0,
            )
            .map_err(read_error(map_names::PAIRS))
    }

    /// The port rule of (src, dst, proto, port) in `slot`, if there is one.
    pub fn port_rule(
        &self,
        slot: u32,
        src_env: u32,
        dst_env: u32,
        proto: u8,
        port: u16,
    ) -> Result<Option<RuleVerdict>, InspectError> {
        let (src_env, dst_env) = (src_env & (MAX_ENVS - 1), dst_env & (MAX_ENVS - 1));
        match self
            .ports
            .get(&PortKey::new(slot & 1, src_env, dst_env, proto, port), 0)
        {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read_error(map_names::PORTS)(e)),
        }
    }

    /// Every port rule of the pair (src, dst) in `slot`, sorted by
    /// (protocol, port).
    pub fn port_rules_of(
        &self,
        slot: u32,
        src_env: u32,
        dst_env: u32,
    ) -> Result<Vec<(PortKey, RuleVerdict)>, InspectError> {
        let mut out = Vec::new();
        for item in self.ports.iter() {
            let (k, v) = item.map_err(read_error(map_names::PORTS))?;
            if u32::from(k.slot) == (slot & 1)
                && u32::from(k.src_env) == src_env
                && u32::from(k.dst_env) == dst_env
            {
                out.push((k, v));
            }
        }
        out.sort_by_key(|(k, _)| (k.proto, k.port));
        Ok(out)
    }

    /// Decides a flow from `src` to `dst` with the policy the datapath uses
    /// now, exactly as the datapath does.
    pub fn decide(&self, src: IpAddr, dst: IpAddr, l4: L4) -> Result<KernelDecision, InspectError> {
        let config = self.config()?;
        let slot = config.active_slot & 1;
        let s = self.lookup_env(src, slot)?;
        let d = self.lookup_env(dst, slot)?;
        let (kind, proto, dport) = l4.parts();
        let (decided, pair) = self.decided(slot, s.id, d.id, kind, proto, dport)?;
        let by = match decided.by {
            By::PortRule => DecidedBy::PortRule { proto, port: dport },
            By::Pair => DecidedBy::Pair,
            By::NoPorts => DecidedBy::NoPorts,
        };
        let (verdict, rule) = (decided.verdict, decided.rule);
        Ok(KernelDecision {
            config,
            slot,
            src: s,
            dst: d,
            verdict,
            rule,
            by,
            pair,
        })
    }

    /// Live (not expired at `now_ns`) tracked flows by state name.
    pub fn tracked_flows(&self, now_ns: u64) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for (k, e) in self.conntrack.iter().filter_map(Result::ok) {
            if e.expires_ns > now_ns {
                *out.entry(envfence_ebpf::ct::state_name(k.proto, e.state).to_owned())
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// The datapath statistics, summed over CPUs, indexed by
    /// [`envfence_ebpf::stat`].
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize], InspectError> {
        super::counters::stats_of(&self.stats).map_err(read_error(map_names::STATS))
    }

    /// Packets and bytes judged, by verdict, over environment ids
    /// `0..env_count` (every id when `env_count` is 0 or too large).
    pub fn verdict_totals(&self, env_count: u32) -> Result<VerdictTotals, InspectError> {
        let n = if env_count == 0 || env_count > MAX_ENVS {
            MAX_ENVS
        } else {
            env_count
        };
        let mut out = VerdictTotals::default();
        for src in 0..n {
            for dst in 0..n {
                for v in 0..NUM_VERDICTS {
                    let values = self
                        .counters
                        .get(&counter_index(src, dst, v), 0)
                        .map_err(read_error(map_names::COUNTERS))?;
                    for c in values.iter() {
                        out.packets[v as usize] += c.packets;
                        out.bytes[v as usize] += c.bytes;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The pinned port rules of one slot, as [`envfence_ebpf::decide`] reads
/// them.
struct SlotTables<'a> {
    state: &'a PinnedState,
    slot: u32,
}

impl Tables for SlotTables<'_> {
    type Error = InspectError;
    type Rule<'a>
        = RuleVerdict
    where
        Self: 'a;

    fn port_rule(
        &self,
        src_env: u32,
        dst_env: u32,
        proto: u8,
        port: u16,
    ) -> Result<Option<RuleVerdict>, InspectError> {
        self.state
            .port_rule(self.slot, src_env, dst_env, proto, port)
    }
}

/// The leaf a walk ended at, by the family's tables it walked.
enum Walked {
    V4(u32),
    V6(u32),
}

/// One family's pinned classifier tables ([`envfence_ebpf::trie`]).
struct PinnedTrie {
    chunks: Array<MapData, Chunk>,
    prefixes: Array<MapData, TriePrefix>,
    names: [&'static str; 2],
}

/// A [`PinnedTrie`] read in one slot.
struct SlotTrie<'a> {
    trie: &'a PinnedTrie,
    base: u32,
}

impl PinnedTrie {
    fn open(layout: &pins::PinLayout, names: [&'static str; 2]) -> Result<Self, InspectError> {
        Ok(PinnedTrie {
            chunks: open_typed(layout, names[0])?,
            prefixes: open_typed(layout, names[1])?,
            names,
        })
    }

    /// The tables of the slot whose classifier starts at `base`.
    fn at(&self, base: u32) -> SlotTrie<'_> {
        SlotTrie { trie: self, base }
    }

    /// The error of a failed walk.
    fn error(&self) -> impl FnOnce(MapError) -> InspectError {
        read_error(self.names[0])
    }

    /// The prefix `leaf` names in `slot`.
    fn prefix(&self, leaf: u32, slot: u32) -> Result<Option<TriePrefix>, InspectError> {
        let Some(index) = trie::leaf_prefix(leaf).checked_sub(1) else {
            return Ok(None);
        };
        match self.prefixes.get(&(trie::prefix_base(slot) + index), 0) {
            Ok(p) => Ok(Some(p)),
            Err(MapError::OutOfBounds { .. }) => Ok(None),
            Err(e) => Err(read_error(self.names[1])(e)),
        }
    }
}

impl TrieTables for SlotTrie<'_> {
    type Error = MapError;
    type Chunk<'b>
        = Chunk
    where
        Self: 'b;

    fn chunk(&self, index: u32) -> Result<Option<Chunk>, MapError> {
        let Some(i) = index.checked_add(self.base) else {
            return Ok(None);
        };
        match self.trie.chunks.get(&i, 0) {
            Ok(c) => Ok(Some(c)),
            Err(MapError::OutOfBounds { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn open_typed<T>(layout: &pins::PinLayout, name: &'static str) -> Result<T, InspectError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = layout.map_path(name);
    let data = MapData::from_pin(&path).map_err(|e| open_error(&path, e))?;
    let map = Map::from_map_data(data).map_err(|e| open_error(&path, e))?;
    T::try_from(map).map_err(|e| open_error(&path, e))
}

fn open_error(path: &Path, e: MapError) -> InspectError {
    if let MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) = &e {
        if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            return InspectError::Permission {
                path: path.to_path_buf(),
            };
        }
    }
    InspectError::Open {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

/// Reads the link pinned at `path` (its id, its program's id and name).
pub fn read_link(path: &Path, hook: Hook) -> LinkReport {
    let mut out = LinkReport {
        hook: hook.as_str(),
        path: path.to_path_buf(),
        link_id: None,
        program_id: None,
        program_name: None,
        error: None,
    };
    if !path.exists() {
        out.error = Some("not pinned".to_owned());
        return out;
    }
    let link = match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(l) => aya::programs::links::FdLink::from(l),
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    match link.info() {
        Ok(info) => {
            out.link_id = Some(info.id());
            out.program_id = Some(info.program_id());
            out.program_name = program_name(info.program_id());
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

/// The name of the loaded program with id `id`.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}
