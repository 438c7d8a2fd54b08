//! The policy's `source_check` section: which source check (reverse-path
//! filter) each attached interface gets, by interface-name glob.
//!
//! ```yaml
//! source_check:                 # first entry whose glob matches wins
//!   - interfaces: ["lxc*", "cali*", "veth*"]
//!     mode: strict              # strict | loose | off
//!     peer_addresses: true      # strict also accepts the peer's addresses
//!   - interfaces: ["*"]
//!     mode: loose
//! ```
//!
//! Without the section the [defaults](SourceChecks::default) apply: strict
//! on pod-facing veths, loose everywhere else. An attached interface that
//! no entry matches is checked strictly by route (fail closed).

use std::fmt;
use std::str::FromStr;

use envfence_ebpf::source;

use super::error::Errors;
use super::model::ParseValueError;
use super::validate::{fields, list, parse_scalar, patterns, scalar};
use super::yaml::Node;

/// A source-check mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceMode {
    /// No check.
    Off,
    /// The source must be routable at all (any interface).
    Loose,
    /// The best route to the source must leave through the interface the
    /// packet entered (or the source is one of the peer's addresses).
    Strict,
}

impl SourceMode {
    /// The datapath value ([`envfence_ebpf::source`]).
    pub fn as_u8(self) -> u8 {
        match self {
            SourceMode::Off => source::OFF,
            SourceMode::Loose => source::LOOSE,
            SourceMode::Strict => source::STRICT,
        }
    }

    /// The name used in policy files, metrics and `status`.
    pub fn as_str(self) -> &'static str {
        source::mode_name(self.as_u8())
    }
}

impl fmt::Display for SourceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SourceMode {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(SourceMode::Strict),
            "loose" => Ok(SourceMode::Loose),
            "off" => Ok(SourceMode::Off),
            _ => Err(ParseValueError(format!(
                "unknown source-check mode {}: expected strict, loose or off",
                super::error::quoted(s)
            ))),
        }
    }
}

/// One entry of `source_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCheckRule {
    /// Interface-name globs.
    pub interfaces: Vec<String>,
    pub mode: SourceMode,
    /// Strict only: also accept the addresses configured on the other end of
    /// the interface (a veth's peer), for CNIs whose routes do not name the
    /// pod's veth. `true` unless the file says otherwise.
    pub peer_addresses: bool,
    /// Line in the policy file (0 for the built-in defaults).
    pub line: usize,
}

/// What one interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCheck {
    pub mode: SourceMode,
    pub peer_addresses: bool,
    /// Index of the deciding entry; `None`: no entry matched (strict by
    /// route, fail closed).
    pub entry: Option<usize>,
}

impl SourceCheck {
    /// No check (tests and benchmarks that judge frames on `lo`).
    pub const OFF: SourceCheck = SourceCheck {
        mode: SourceMode::Off,
        peer_addresses: false,
        entry: None,
    };
}

/// The whole `source_check` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChecks {
    pub rules: Vec<SourceCheckRule>,
    /// Whether the rules come from the file (false: built-in defaults).
    pub from_file: bool,
}

/// Pod-facing interface names of common CNIs: one workload behind each.
pub const POD_FACING: &[&str] = &[
    "lxc*", "cali*", "veth*", "tap*", "gke*", "eni*", "azv*", "antrea-*", "vxlan-*",
];

impl Default for SourceChecks {
    /// Strict (peer addresses trusted) on [`POD_FACING`] names, loose on
    /// every other interface.
    fn default() -> Self {
        SourceChecks {
            rules: vec![
                SourceCheckRule {
                    interfaces: POD_FACING.iter().map(|s| (*s).to_owned()).collect(),
                    mode: SourceMode::Strict,
                    peer_addresses: true,
                    line: 0,
                },
                SourceCheckRule {
                    interfaces: vec!["*".to_owned()],
                    mode: SourceMode::Loose,
                    peer_addresses: false,
                    line: 0,
                },
            ],
            from_file: false,
        }
    }
}

impl SourceChecks {
    /// The check of the interface called `ifname`: the first entry with a
    /// matching glob, else strict by route.
    pub fn for_interface(&self, ifname: &str) -> SourceCheck {
        for (i, rule) in self.rules.iter().enumerate() {
            let hit = rule.interfaces.iter().any(|p| match glob::Pattern::new(p) {
                Ok(g) => g.matches(ifname),
                Err(_) => p == ifname,
            });
            if hit {
                return SourceCheck {
                    mode: rule.mode,
                    peer_addresses: rule.mode == SourceMode::Strict && rule.peer_addresses,
                    entry: Some(i),
                };
            }
        }
        SourceCheck {
            mode: SourceMode::Strict,
            peer_addresses: false,
            entry: None,
        }
    }

    /// One line saying what an interface (or an include glob, taken as a
    /// name) gets and why; for `policy check`.
    pub fn explain(&self, ifname: &str) -> String {
        let c = self.for_interface(ifname);
        let peer = if c.peer_addresses {
            " (routes or the peer's addresses)"
        } else if c.mode == SourceMode::Strict {
            " (routes only)"
        } else {
            ""
        };
        match c.entry.and_then(|i| self.rules.get(i)) {
            Some(rule) if rule.line > 0 => format!(
                "{ifname}: source check {}{peer}, by source_check[{}] (line {}, {})",
                c.mode,
                c.entry.unwrap_or(0),
                rule.line,
                rule.interfaces.join(", ")
            ),
            Some(rule) => format!(
                "{ifname}: source check {}{peer}, by the default for {}",
                c.mode,
                rule.interfaces.join(", ")
            ),
            None => format!(
                "{ifname}: source check strict (routes only): no source_check entry matches (fail closed)"
            ),
        }
    }
}

const ENTRY_KEYS: &[&str] = &["interfaces", "mode", "peer_addresses"];

/// Parses the `source_check` section.
pub(super) fn check(node: &Node, errors: &mut Errors) -> SourceChecks {
    let mut out = SourceChecks {
        rules: Vec::new(),
        from_file: true,
    };
    if node.is_null() {
        return out;
    }
    let what =
        "a list of {interfaces: [globs], mode: strict|loose|off, peer_addresses: true|false}";
    let Some(items) = list(node, "source_check", what, errors) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("source_check[{i}]");
        let Some(entry) = fields(item, &path, ENTRY_KEYS, what, errors) else {
            continue;
        };
        let interfaces = match entry.require(
            "interfaces",
            "[\"veth*\"]",
            "a list of interface name globs",
            errors,
        ) {
            Some(n) => patterns(n, &format!("{path}.interfaces"), errors),
            None => Vec::new(),
        };
        let mode = entry
            .require("mode", "strict", "strict, loose or off", errors)
            .and_then(|n| {
                parse_scalar::<SourceMode>(
                    n,
                    &format!("{path}.mode"),
                    "source-check mode",
                    "strict, loose or off",
                    errors,
                )
            });
        let mut peer_addresses = true;
        if let Some(n) = entry.get("peer_addresses") {
            let p = format!("{path}.peer_addresses");
            if let Some(text) = scalar(n, &p, "true or false", errors) {
                match text {
                    "true" => peer_addresses = true,
                    "false" => peer_addresses = false,
                    other => errors.push(n.place, p, other, "expected true or false".to_owned()),
                }
            }
        }
        if let Some(mode) = mode {
            out.rules.push(SourceCheckRule {
                interfaces,
                mode,
                peer_addresses,
                line: item.place.line,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_strict_on_pod_veths_and_loose_elsewhere() {
        let d = SourceChecks::default();
        for name in ["lxc12ab", "cali0f3", "veth9", "tap0"] {
            let c = d.for_interface(name);
            assert_eq!(
                (c.mode, c.peer_addresses),
                (SourceMode::Strict, true),
                "{name}"
            );
        }
        for name in ["eth0", "ens5", "cilium_host", "cni0"] {
            assert_eq!(d.for_interface(name).mode, SourceMode::Loose, "{name}");
        }
    }

    #[test]
    fn unmatched_interfaces_fail_closed() {
        let s = SourceChecks {
            rules: vec![SourceCheckRule {
                interfaces: vec!["eth*".into()],
                mode: SourceMode::Off,
                peer_addresses: true,
                line: 3,
            }],
            from_file: true,
        };
        assert_eq!(s.for_interface("eth1").mode, SourceMode::Off);
        let c = s.for_interface("veth1");
        assert_eq!(
            (c.mode, c.peer_addresses, c.entry),
            (SourceMode::Strict, false, None)
        );
        assert!(s.explain("veth1").contains("fail closed"));
        assert!(s.explain("eth1").contains("line 3"));
    }

    #[test]
    fn modes_round_trip_with_the_abi() {
        for m in [SourceMode::Off, SourceMode::Loose, SourceMode::Strict] {
            assert_eq!(m.as_str().parse::<SourceMode>().ok(), Some(m));
        }
        assert!("Strict".parse::<SourceMode>().is_err());
    }
}
