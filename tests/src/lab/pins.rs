//! The agent's pins as the host sees them (`<lab bpffs dir>/envfence`),
//! the programs that use a map, and the tcx programs attached to a lab
//! namespace's interfaces (one envfence program per hook).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifier, TcAttachType};
use envfence_ebpf::{map_names, Config, ABI_VERSION};

use crate::lab::Lab;
use crate::netns;

/// The ABI version of the agent under test (its pins live in `v<ABI>`).
pub const ABI: u32 = ABI_VERSION;
/// The two tcx hooks, as the agent names its link pins.
pub const HOOKS: [&str; 2] = ["ingress", "egress"];

/// The agent's pins as the host sees them: `<lab bpffs dir>/envfence`.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// The pins of the agent running with the default pin root in `lab`.
    pub fn of(lab: &Lab) -> Result<Pins> {
        let dir = lab
            .bpffs_dir()
            .ok_or_else(|| anyhow!("the host has no bpffs at /sys/fs/bpf: no pins to check"))?;
        Ok(Pins {
            root: dir.join("envfence"),
        })
    }

    /// The pin root on the host (what `envfence cleanup --pin-root` takes).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of ABI `abi`.
    pub fn version_dir(&self, abi: u32) -> PathBuf {
        self.root.join(format!("v{abi}"))
    }

    /// The directory of the agent's ABI.
    pub fn dir(&self) -> PathBuf {
        self.version_dir(ABI)
    }

    /// The link pin of `ifindex`/`hook` under ABI `abi`.
    pub fn link_pin_in(&self, abi: u32, ifindex: u32, hook: &str) -> PathBuf {
        self.version_dir(abi)
            .join("links")
            .join(format!("if{ifindex}-{hook}"))
    }

    /// The link pin of `ifindex`/`hook` under the agent's ABI.
    pub fn link_pin(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.link_pin_in(ABI, ifindex, hook)
    }

    /// Whether both link pins of `ifindex` exist.
    pub fn attached(&self, ifindex: u32) -> bool {
        HOOKS.iter().all(|h| self.link_pin(ifindex, h).exists())
    }

    /// The names in `links/` of ABI `abi`, sorted.
    pub fn link_pins_in(&self, abi: u32) -> Vec<String> {
        list_names(&self.version_dir(abi).join("links"))
    }

    /// The names in `links/` of the agent's ABI, sorted.
    pub fn link_pins(&self) -> Vec<String> {
        self.link_pins_in(ABI)
    }

    /// Every path under the root, relative to it, sorted (empty when the
    /// root does not exist).
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }

    /// The keys of the pinned `ATTACHED` map (ifindexes envfence judges
    /// ingress on).
    pub fn attached_entries(&self) -> Result<Vec<u32>> {
        let path = self.dir().join(map_names::ATTACHED);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        let map = BpfHashMap::<MapData, u32, u32>::try_from(Map::from_map_data(data)?)?;
        let mut keys: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
        keys.sort();
        Ok(keys)
    }

    /// The datapath configuration in the pinned `CONFIG` map.
    pub fn config(&self) -> Result<Config> {
        let path = self.dir().join(map_names::CONFIG);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        let map = Array::<MapData, Config>::try_from(Map::from_map_data(data)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// The kernel id of the pinned `CONFIG` map of ABI `abi`.
    pub fn config_map_id(&self, abi: u32) -> Result<u32> {
        let path = self.version_dir(abi).join(map_names::CONFIG);
        let data =
            MapData::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
        Ok(data.info()?.id())
    }

    /// (link id, program id) of the link pinned at `ifindex`/`hook` under
    /// ABI `abi`.
    pub fn link_info_in(&self, abi: u32, ifindex: u32, hook: &str) -> Result<(u32, u32)> {
        let path = self.link_pin_in(abi, ifindex, hook);
        let link = FdLink::from(
            PinnedLink::from_pin(&path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?,
        );
        let info = link.info()?;
        Ok((info.id(), info.program_id()))
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(if is_dir { format!("{rel}/") } else { rel });
        if is_dir {
            walk(root, &path, out);
        }
    }
}

/// The programs the kernel counts as loaded whose name starts with
/// `envfence_` and that use the map with id `map_id` (the programs of one
/// lab's agents, attached or not): (program id, name).
pub fn programs_using_map(map_id: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
        let name = info.name_as_str().unwrap_or("").to_string();
        if !name.starts_with("envfence_") {
            continue;
        }
        if let Ok(Some(ids)) = info.map_ids() {
            if ids.contains(&map_id) {
                out.push((info.id(), name));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// tcx programs on interfaces

/// The tcx programs on one interface: (program id, name) per hook.
#[derive(Clone, Debug, Default)]
pub struct TcxChain {
    pub ifname: String,
    pub ifindex: u32,
    pub ingress: Vec<(u32, String)>,
    pub egress: Vec<(u32, String)>,
}

impl TcxChain {
    /// The chain of `hook` ("ingress" or "egress").
    pub fn hook(&self, hook: &str) -> &[(u32, String)] {
        if hook == "ingress" {
            &self.ingress
        } else {
            &self.egress
        }
    }
    /// How many programs named `envfence_*` are in the chain of `hook`.
    pub fn envfence(&self, hook: &str) -> usize {
        self.hook(hook)
            .iter()
            .filter(|(_, n)| n.starts_with("envfence_"))
            .count()
    }
}

/// Every interface of namespace `ns` with its tcx chains (asked with
/// `BPF_PROG_QUERY` from a thread inside the namespace).
pub fn tcx_census(ns: &str) -> Result<Vec<TcxChain>> {
    netns::in_netns(ns, || -> Result<Vec<TcxChain>> {
        let list = nix::net::if_::if_nameindex().context("listing interfaces")?;
        let mut out = Vec::new();
        for i in list.iter() {
            let ifname = i.name().to_string_lossy().into_owned();
            let mut chain = TcxChain {
                ifname: ifname.clone(),
                ifindex: i.index(),
                ..TcxChain::default()
            };
            for (hook, ty) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                let progs = match SchedClassifier::query_tcx(&ifname, ty) {
                    Ok((_, progs)) => progs,
                    // Gone while we looked.
                    Err(_) if nix::net::if_::if_nametoindex(ifname.as_str()).is_err() => Vec::new(),
                    Err(e) => bail!("query_tcx {ifname} {hook}: {e}"),
                };
                let progs = progs
                    .iter()
                    .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                    .collect();
                if hook == "ingress" {
                    chain.ingress = progs;
                } else {
                    chain.egress = progs;
                }
            }
            out.push(chain);
        }
        Ok(out)
    })?
}

/// Checks that every interface of `ns` whose name starts with one of
/// `selected` has exactly one `envfence_*` program per hook and no other
/// program, and that the other interfaces have none. Returns the selected
/// chains by name.
pub fn check_one_program_per_hook(
    ns: &str,
    selected: &[&str],
) -> Result<BTreeMap<String, TcxChain>> {
    let mut problems = Vec::new();
    let mut found = BTreeMap::new();
    for chain in tcx_census(ns)? {
        let wanted = selected.iter().any(|p| chain.ifname.starts_with(p));
        for hook in HOOKS {
            let total = chain.hook(hook).len();
            let ours = chain.envfence(hook);
            let ok = if wanted {
                ours == 1 && total == 1
            } else {
                total == 0
            };
            if !ok {
                problems.push(format!(
                    "{} {hook}: {:?} (want {})",
                    chain.ifname,
                    chain.hook(hook),
                    if wanted {
                        "exactly one envfence program"
                    } else {
                        "nothing"
                    }
                ));
            }
        }
        if wanted {
            found.insert(chain.ifname.clone(), chain);
        }
    }
    if !problems.is_empty() {
        bail!("tcx chains are wrong: {}", problems.join("; "));
    }
    Ok(found)
}
