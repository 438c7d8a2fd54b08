//! The policy's settings for frames the datapath has to recognise before
//! it can judge them: which UDP ports carry which tunnel (`tunnels`), and
//! what frames that are not IP get (`non_ip`).
//!
//! ```yaml
//! tunnels:                      # a kind left out keeps its defaults
//!   vxlan: [4789, 8472]         # IANA / Calico, Antrea; Linux, flannel, Cilium
//!   geneve: [6081]              # Cilium, Antrea, OVN
//!   vxlan-gpe: [4790]
//! non_ip: pass                  # pass (default) | drop (strict nodes)
//! ```
//!
//! A port in two lists, a port listed twice, port 0 or a value that is not
//! a port is an error at its place in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use envfence_ebpf::{tunnel, TunnelPorts, TUNNEL_ENTRIES_PER_SLOT, TUNNEL_PORTS_PER_ENTRY};

use super::error::Errors;
use super::model::ParseValueError;
use super::validate::{fields, list, parse_scalar, scalar};
use super::yaml::Node;

/// A UDP tunnel the datapath opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelKind {
    /// VXLAN (RFC 7348): Ethernet inside.
    Vxlan,
    /// Geneve (RFC 8926).
    Geneve,
    /// VXLAN-GPE: IPv4, IPv6 or Ethernet inside, by next protocol.
    VxlanGpe,
}

impl TunnelKind {
    /// Every kind, in the order of the policy keys.
    pub const ALL: [TunnelKind; 3] = [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::VxlanGpe];

    /// The datapath value ([`envfence_ebpf::tunnel`]).
    pub fn as_u8(self) -> u8 {
        match self {
            TunnelKind::Vxlan => tunnel::VXLAN,
            TunnelKind::Geneve => tunnel::GENEVE,
            TunnelKind::VxlanGpe => tunnel::VXLAN_GPE,
        }
    }

    /// The key in policy files (`vxlan`, `geneve`, `vxlan-gpe`).
    pub fn as_str(self) -> &'static str {
        tunnel::name(self.as_u8())
    }

    /// The ports used when the policy does not list the kind: what Linux
    /// (`ip link add type vxlan` without `dstport` uses 8472), flannel,
    /// Cilium (8472 VXLAN, 6081 Geneve), Calico (4789), Antrea (6081
    /// Geneve, 4789 VXLAN) and the IANA assignments use.
    pub fn default_ports(self) -> &'static [u16] {
        match self {
            TunnelKind::Vxlan => &[4789, 8472],
            TunnelKind::Geneve => &[6081],
            TunnelKind::VxlanGpe => &[4790],
        }
    }
}

impl fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The UDP destination ports of each tunnel kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnels {
    /// Port -> kind.
    pub ports: BTreeMap<u16, TunnelKind>,
}

impl Default for Tunnels {
    /// Every kind's [`TunnelKind::default_ports`].
    fn default() -> Self {
        let mut ports = BTreeMap::new();
        for kind in TunnelKind::ALL {
            for &p in kind.default_ports() {
                ports.insert(p, kind);
            }
        }
        Tunnels { ports }
    }
}

impl Tunnels {
    /// The tunnel on UDP destination port `port`, if any.
    pub fn kind(&self, port: u16) -> Option<TunnelKind> {
        self.ports.get(&port).copied()
    }

    /// The ports of `kind`, ascending.
    pub fn ports_of(&self, kind: TunnelKind) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The datapath's table of one policy slot
    /// ([`envfence_ebpf::map_names::TUNNEL_PORTS`]):
    /// [`TUNNEL_ENTRIES_PER_SLOT`] entries of 256 ports each.
    pub fn table(&self) -> Vec<TunnelPorts> {
        let mut table = vec![TunnelPorts::default(); TUNNEL_ENTRIES_PER_SLOT as usize];
        for (&port, kind) in &self.ports {
            let per = TUNNEL_PORTS_PER_ENTRY as usize;
            let (entry, byte) = (usize::from(port) / per, usize::from(port) % per);
            table[entry].kind[byte] = kind.as_u8();
        }
        table
    }
}

/// What frames that are not IP get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NonIp {
    /// Passed (and counted by kind): ARP, LLDP, ... keep working.
    #[default]
    Pass,
    /// Dropped in enforce mode (passed in audit mode), counted.
    Drop,
}

impl NonIp {
    /// The name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            NonIp::Pass => "pass",
            NonIp::Drop => "drop",
        }
    }
}

impl fmt::Display for NonIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NonIp {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pass" => Ok(NonIp::Pass),
            "drop" => Ok(NonIp::Drop),
            _ => Err(ParseValueError(format!(
                "unknown non-IP action {}: expected pass or drop",
                super::error::quoted(s)
            ))),
        }
    }
}

/// Checks the `non_ip` value.
pub(super) fn check_non_ip(node: &Node, errors: &mut Errors) -> NonIp {
    parse_scalar::<NonIp>(node, "non_ip", "non-IP action", "pass or drop", errors)
        .unwrap_or_default()
}

/// Checks the `tunnels` section; kinds it does not name keep their
/// defaults.
pub(super) fn check_tunnels(node: &Node, errors: &mut Errors) -> Tunnels {
    let mut out = Tunnels::default();
    if node.is_null() {
        return out;
    }
    let keys: Vec<&str> = TunnelKind::ALL.iter().map(|k| k.as_str()).collect();
    let what = "a mapping with the keys vxlan, geneve and vxlan-gpe (lists of UDP ports)";
    let Some(section) = fields(node, "tunnels", &keys, what, errors) else {
        return out;
    };
    // The kinds the file lists replace their defaults.
    let given: Vec<(TunnelKind, &Node)> = TunnelKind::ALL
        .iter()
        .filter_map(|k| section.get(k.as_str()).map(|n| (*k, n)))
        .collect();
    out.ports.retain(|_, k| !given.iter().any(|(g, _)| g == k));
    // Where each port was given (None: a default).
    let mut sites: BTreeMap<u16, (TunnelKind, Option<(usize, usize)>)> =
        out.ports.iter().map(|(p, k)| (*p, (*k, None))).collect();
    for (kind, node) in given {
        let path = format!("tunnels.{kind}");
        let Some(items) = list(
            node,
            &path,
            "a list of UDP ports, such as [4789, 8472]",
            errors,
        ) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("{path}[{i}]");
            let Some(text) = scalar(item, &path, "a UDP port, 1 to 65535", errors) else {
                continue;
            };
            let Some(port) = text.parse::<u16>().ok().filter(|p| *p != 0) else {
                errors.push(
                    item.place,
                    path,
                    text,
                    "not a UDP port: write a number from 1 to 65535",
                );
                continue;
            };
            match sites.get(&port) {
                Some((other, place)) => {
                    let whose = match place {
                        Some((line, column)) => {
                            format!("{other} at line {line}, column {column}")
                        }
                        None => format!("{other} by default (list {other} to change that)"),
                    };
                    let message = if *other == kind && place.is_some() {
                        format!("port {port} is listed twice: already given at {whose}")
                    } else {
                        format!(
                            "port {port} cannot be two tunnels: it is already {whose}; a UDP port is one tunnel kind"
                        )
                    };
                    errors.push(item.place, path, text, message);
                }
                None => {
                    sites.insert(port, (kind, Some((item.place.line, item.place.column))));
                    out.ports.insert(port, kind);
                }
            }
        }
    }
    out
}
