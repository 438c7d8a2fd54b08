//! The decision, from the policy model (`envfence::policy::Policy`) as the
//! README states it, not from the compiled tables: an address belongs to
//! the environment of the longest of its CIDRs (a linear scan; an
//! IPv4-mapped IPv6 address is the IPv4 address; none: `world`), and a
//! packet gets, in this order:
//! 1. with readable ports, the first rule in the file that names the pair
//!    and a port range holding (protocol, destination port);
//! 2. with ports that cannot be read, the strictest of the pair's verdict
//!    and every port rule of the pair (the pair's on a tie, then the
//!    earlier rule), so hiding the ports never helps;
//! 3. else the first port-less rule that names the pair, else `default`;
//!
//! then, in audit mode, `drop` becomes `audit`. Ids are the model's
//! numbering: environment `i + 1` is `environments[i]` (sorted by name),
//! rule `i + 1` is `rules[i]` (file order), 0 is `world` / `default`.

use std::net::IpAddr;

use envfence::policy::reference::L4Seen;
use envfence::policy::{Mode, Policy, Rule, Verdict, WORLD};
use ipnet::IpNet;

/// A policy's environments and rules, as the oracle decides with them.
#[derive(Clone, Debug)]
pub struct Rules {
    mode: Mode,
    default: Verdict,
    /// (network, environment name, environment id), in no useful order.
    networks: Vec<(IpNet, String, u32)>,
    rules: Vec<Rule>,
}

/// What the decision knows of a packet's upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Port { proto: u8, dport: u16 },
    Hidden,
    Portless,
}

impl Seen {
    pub(crate) fn of(l4: L4Seen, proto: u8, dport: u16) -> Seen {
        match l4 {
            L4Seen::Ports => Seen::Port { proto, dport },
            L4Seen::NoPorts => Seen::Hidden,
            L4Seen::Other => Seen::Portless,
        }
    }
}

impl Rules {
    pub fn new(policy: &Policy) -> Rules {
        let mut networks = Vec::new();
        for (i, env) in policy.environments.iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            for net in &env.cidrs {
                networks.push((net.trunc(), env.name.clone(), id));
            }
        }
        Rules {
            mode: policy.mode,
            default: policy.default,
            networks,
            rules: policy.rules.clone(),
        }
    }

    /// The environment (name, id) of `ip`.
    pub fn environment(&self, ip: IpAddr) -> (&str, u32) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut best: Option<&(IpNet, String, u32)> = None;
        for entry in &self.networks {
            if entry.0.contains(&ip) && best.is_none_or(|b| entry.0.prefix_len() > b.0.prefix_len())
            {
                best = Some(entry);
            }
        }
        best.map_or((WORLD, 0), |(_, name, id)| (name.as_str(), *id))
    }

    /// (verdict, rule id) of a packet from environment `src` to `dst`.
    pub(crate) fn decide(&self, src: &str, dst: &str, seen: Seen) -> (u8, u16) {
        let names = |r: &Rule| r.from.iter().any(|n| n == src) && r.to.iter().any(|n| n == dst);
        let numbered = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (u16::try_from(i + 1).unwrap_or(u16::MAX), r))
            .filter(|(_, r)| names(r));
        let pair = numbered
            .clone()
            .find(|(_, r)| r.ports.is_empty())
            .map_or((self.default, 0), |(id, r)| (r.verdict, id));
        let mut port_rules = numbered.filter(|(_, r)| !r.ports.is_empty());
        let (verdict, rule) = match seen {
            Seen::Portless => pair,
            Seen::Port { proto, dport } => port_rules
                .find(|(_, r)| {
                    r.ports
                        .iter()
                        .any(|p| p.proto == proto && p.contains(dport))
                })
                .map_or(pair, |(id, r)| (r.verdict, id)),
            Seen::Hidden => port_rules.fold(pair, |best, (id, r)| {
                if r.verdict > best.0 {
                    (r.verdict, id)
                } else {
                    best
                }
            }),
        };
        let verdict = match (self.mode, verdict) {
            (Mode::Audit, Verdict::Drop) => Verdict::Audit,
            (_, v) => v,
        };
        (verdict.as_u8(), rule)
    }
}
