//! Attaching envfence to interfaces: the two tcx hooks ([`Hook`]), the
//! pair of links on one interface ([`Attachment`]), and the [`Datapath`]'s
//! attach, adopt, detach and stale-pin code.
//!
//! DESIGN: a link a previous agent pinned (of this ABI or another) is never
//! detached first: it is adopted and switched to this agent's program with
//! `bpf_link_update`, so an interface is never without envfence and never
//! has two envfence programs on one hook. A pin that cannot be adopted stays
//! until a fresh link runs first in the chain. The object, its maps and
//! loading are in `loader.rs`.

use std::{fs, path::PathBuf};

use aya::{
    maps::{HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, TcAttachType,
    },
};
use envfence_ebpf::{map_names, program_names};

use super::{
    loader::{classifier_mut, interface_error},
    pins,
    policy_maps::typed_map,
    source_maps, Datapath, DatapathError,
};

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

/// envfence's two tcx links on one interface.
#[derive(Debug)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    pub(super) ingress: FdLink,
    pub(super) egress: FdLink,
}

/// Every interface of the current network namespace: (name, ifindex).
pub fn list_interfaces() -> Result<Vec<(String, u32)>, DatapathError> {
    let list = nix::net::if_::if_nameindex().map_err(|e| DatapathError::Interface {
        ifname: String::from("*"),
        message: format!("listing interfaces failed: {e}"),
    })?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

impl Datapath {
    /// Attaches both programs to `ifname`, first in each tcx chain. With
    /// pinning, a link a previous agent pinned for this interface (of this
    /// ABI or another) is adopted and switched to this agent's program
    /// atomically (`bpf_link_update`): the interface is never without
    /// envfence, and never has two.
    pub fn attach(&mut self, ifname: &str) -> Result<&Attachment, DatapathError> {
        if self.attachments.contains_key(ifname) {
            return self
                .attachments
                .get(ifname)
                .ok_or_else(|| interface_error(ifname, "vanished"));
        }
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| interface_error(ifname, &format!("no such interface ({e})")))?;
        // The source check is in place before the first packet is judged.
        let check = self.source_check.for_interface(ifname);
        source_maps::set_mode(&mut self.ebpf, ifindex, check, &[0, 1])?;
        let ingress = self.attach_hook(ifname, ifindex, Hook::Ingress)?;
        let egress = match self.attach_hook(ifname, ifindex, Hook::Egress) {
            Ok(link) => link,
            Err(e) => {
                self.release_link(ifindex, Hook::Ingress, ingress);
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

    fn attach_hook(
        &mut self,
        ifname: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<FdLink, DatapathError> {
        let pins = self.pins.clone();
        if let Some(pins) = &pins {
            let mine = pins.link_path(ifindex, hook);
            let candidates = std::iter::once(mine.clone()).chain(
                pins.other_versions()
                    .into_iter()
                    .map(|dir| pins::link_path_in(&dir, ifindex, hook)),
            );
            // Pins that could not be adopted stay in place (their links keep
            // enforcing with the older program) until a fresh link is up.
            let mut unadoptable = Vec::new();
            for pin in candidates.filter(|p| p.exists()) {
                match self.adopt(&pin, hook) {
                    Ok(link) => {
                        if pin != mine {
                            // Migrated from another ABI: re-pin under ours.
                            let _ = fs::remove_file(&mine);
                            let link = link.pin(&mine).map_err(|e| {
                                pins::pin_error(&mine, &std::io::Error::other(e.to_string()))
                            })?;
                            let _ = fs::remove_file(&pin);
                            return Ok(FdLink::from(link));
                        }
                        return Ok(link);
                    }
                    Err(e) => {
                        tracing::warn!(
                            "pinned link {} could not be adopted ({e}); attaching a new one first",
                            pin.display()
                        );
                        unadoptable.push(pin);
                    }
                }
            }
            if !unadoptable.is_empty() {
                let link = self.attach_fresh(ifname, hook)?;
                // The new link runs (first in the chain); now the old ones go.
                for pin in &unadoptable {
                    let _ = pins::force_detach(pin);
                    let _ = fs::remove_file(pin);
                }
                let pinned = link
                    .pin(&mine)
                    .map_err(|e| pins::pin_error(&mine, &std::io::Error::other(e.to_string())))?;
                return Ok(FdLink::from(pinned));
            }
        }
        let link = self.attach_fresh(ifname, hook)?;
        match &pins {
            Some(pins) => {
                let path = pins.link_path(ifindex, hook);
                let pinned = link
                    .pin(&path)
                    .map_err(|e| pins::pin_error(&path, &std::io::Error::other(e.to_string())))?;
                Ok(FdLink::from(pinned))
            }
            None => Ok(link),
        }
    }

    /// A new tcx link of `hook`'s program on `ifname`, first in the chain.
    fn attach_fresh(&mut self, ifname: &str, hook: Hook) -> Result<FdLink, DatapathError> {
        let attach_error = |e| DatapathError::Attach {
            ifname: ifname.to_owned(),
            hook: hook.as_str(),
            source: Box::new(e),
        };
        let prog = classifier_mut(&mut self.ebpf, hook.program_name())?;
        let id = prog
            .attach_with_options(
                ifname,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(attach_error)?;
        FdLink::try_from(prog.take_link(id).map_err(attach_error)?)
            .map_err(|e| interface_error(ifname, &format!("tcx link: {e}")))
    }

    /// Switches the pinned link at `pin` to this agent's program.
    fn adopt(&mut self, pin: &std::path::Path, hook: Hook) -> Result<FdLink, String> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
        let link =
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
        let prog =
            classifier_mut(&mut self.ebpf, hook.program_name()).map_err(|e| e.to_string())?;
        let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        FdLink::try_from(link).map_err(|e| e.to_string())
    }

    /// Detaches one of our links: through its pin when pinned (so that no
    /// other holder keeps it alive), by dropping the last fd otherwise.
    fn release_link(&mut self, ifindex: u32, hook: Hook, link: FdLink) {
        if let Some(pins) = &self.pins {
            let pin = pins.link_path(ifindex, hook);
            if let Err(e) = pins::force_detach(&pin) {
                if e.raw_os_error() != Some(libc::ENOLINK) {
                    tracing::warn!("detaching {}: {e}", pin.display());
                }
            }
            let _ = fs::remove_file(&pin);
        }
        drop(link);
    }

    /// Detaches from `ifname` and removes its pins (a no-op when not
    /// attached).
    pub fn detach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let Some(att) = self.attachments.remove(ifname) else {
            return Ok(());
        };
        let mut attached: HashMap<&mut MapData, u32, u32> =
            typed_map(&mut self.ebpf, map_names::ATTACHED)?;
        // The interface may be gone already; then so is its entry's purpose.
        let _ = attached.remove(&att.ifindex);
        self.release_link(att.ifindex, Hook::Ingress, att.ingress);
        self.release_link(att.ifindex, Hook::Egress, att.egress);
        // After the links: until then the interface keeps its check.
        source_maps::forget(&mut self.ebpf, att.ifindex)
    }

    /// Forgets an interface that is gone: its links went with it; removes
    /// the pins and the `ATTACHED` entry.
    pub fn forget(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let names: Vec<String> = self
            .attachments
            .values()
            .filter(|a| a.ifindex == ifindex)
            .map(|a| a.ifname.clone())
            .collect();
        for name in names {
            self.detach(&name)?;
        }
        if let Some(pins) = &self.pins {
            for hook in Hook::ALL {
                let _ = fs::remove_file(pins.link_path(ifindex, hook));
            }
        }
        let mut attached: HashMap<&mut MapData, u32, u32> =
            typed_map(&mut self.ebpf, map_names::ATTACHED)?;
        let _ = attached.remove(&ifindex);
        source_maps::forget(&mut self.ebpf, ifindex)
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

    /// Pinned links of interfaces this agent did not attach (gone, or no
    /// longer matching): (ifindex, hook, path).
    pub fn stale_pins(&self) -> Vec<std::path::PathBuf> {
        let Some(pins) = &self.pins else {
            return Vec::new();
        };
        let ours: Vec<PathBuf> = self
            .attachments
            .values()
            .flat_map(|a| Hook::ALL.map(|h| pins.link_path(a.ifindex, h)))
            .collect();
        let mut dirs = vec![pins.dir()];
        dirs.extend(pins.other_versions());
        dirs.iter()
            .filter_map(|d| fs::read_dir(d.join("links")).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| !ours.contains(p))
            .collect()
    }

    /// Detaches and unpins the links [`Datapath::stale_pins`] lists, and
    /// removes other ABI versions' directories once they hold no link.
    /// First removes the `ATTACHED` entries of interfaces this agent did not
    /// attach (deselected or gone while no agent ran): an entry left behind
    /// would make egress skip, as judged at ingress, packets that entered
    /// through an interface nothing judges any more. Removing it before the
    /// link means such packets are judged twice for a moment, never zero
    /// times.
    pub fn remove_stale(&mut self) -> usize {
        let ours: Vec<u32> = self.attachments.values().map(|a| a.ifindex).collect();
        if let Ok(mut attached) =
            typed_map::<HashMap<&mut MapData, u32, u32>>(&mut self.ebpf, map_names::ATTACHED)
        {
            let stale: Vec<u32> = attached
                .keys()
                .filter_map(Result::ok)
                .filter(|i| !ours.contains(i))
                .collect();
            for ifindex in stale {
                let _ = attached.remove(&ifindex);
            }
        }
        let stale = self.stale_pins();
        for pin in &stale {
            let _ = pins::force_detach(pin);
            let _ = fs::remove_file(pin);
        }
        // Source-check state of interfaces no link serves any more.
        if let Ok(configured) = source_maps::configured(&mut self.ebpf) {
            for ifindex in configured.into_iter().filter(|i| !ours.contains(i)) {
                let _ = source_maps::forget(&mut self.ebpf, ifindex);
            }
        }
        if let Some(pins) = &self.pins {
            for dir in pins.other_versions() {
                let _ = pins::cleanup_version_dir(&dir);
            }
        }
        stale.len()
    }
}
