//! The validated policy: what [`super::parse`] returns and
//! [`super::compile`] turns into map entries.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use envfence_ebpf::{proto, verdict};
use ipnet::IpNet;

/// A value given as text (a mode, verdict or port) that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseValueError(pub String);

/// Global enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Verdicts are what the rules say: `drop` drops.
    #[default]
    Enforce,
    /// Nothing is dropped: every `drop` becomes `audit` (pass and report).
    Audit,
}

impl Mode {
    /// The name used in policy files: `enforce` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            _ => Err(ParseValueError(format!(
                "unknown mode {s:?}: expected enforce or audit"
            ))),
        }
    }
}

/// What happens to a packet. Ordered by strictness:
/// `Allow < Log < Audit < Drop`; the values are those of
/// [`envfence_ebpf::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Verdict {
    /// Pass, no event.
    #[default]
    Allow = verdict::ALLOW,
    /// Pass and report the flow.
    Log = verdict::LOG,
    /// Would drop: pass and report the flow.
    Audit = verdict::AUDIT,
    /// Drop and report the flow.
    Drop = verdict::DROP,
}

impl Verdict {
    /// Every verdict, from the most permissive to the strictest.
    pub const ALL: [Verdict; 4] = [Verdict::Allow, Verdict::Log, Verdict::Audit, Verdict::Drop];

    /// The datapath value ([`envfence_ebpf::verdict`]).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The verdict of a datapath value, if it is one.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            verdict::ALLOW => Some(Verdict::Allow),
            verdict::LOG => Some(Verdict::Log),
            verdict::AUDIT => Some(Verdict::Audit),
            verdict::DROP => Some(Verdict::Drop),
            _ => None,
        }
    }

    /// The name used in policy files, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Log => "log",
            Verdict::Audit => "audit",
            Verdict::Drop => "drop",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                ParseValueError(format!(
                    "unknown verdict {s:?}: expected allow, log, audit or drop"
                ))
            })
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Global mode (`enforce` when the file does not say).
    pub mode: Mode,
    /// Verdict of environment pairs that no rule names (`allow` when the
    /// file does not say).
    pub default: Verdict,
    /// The environments, sorted by name: environment id `i + 1` is
    /// `environments[i]` (id 0 is `world`).
    pub environments: Vec<Environment>,
    /// The rules in file order: rule id `i + 1` is `rules[i]` (id 0 is the
    /// default).
    pub rules: Vec<Rule>,
    /// The interfaces to attach to.
    pub interfaces: InterfaceSelector,
    /// The source check of each attached interface.
    pub source_check: super::source_check::SourceChecks,
    /// Which UDP ports are which tunnel.
    pub tunnels: super::frames::Tunnels,
    /// What frames that are not IP get.
    pub non_ip: super::frames::NonIp,
    /// Connection-tracking timeouts (`conntrack` section).
    pub conntrack: super::conntrack::Conntrack,
    /// SHA-256 of the policy source text, lowercase hex.
    pub source_sha256: String,
}

impl Policy {
    /// The environment called `name`, if the policy defines it.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The rule called `name`, if the policy has it.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// A named set of networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `[a-z0-9][a-z0-9_-]{0,62}`, never `world`.
    pub name: String,
    /// Its networks, in file order; no host bits set.
    pub cidrs: Vec<IpNet>,
}

/// One rule of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, `[A-Za-z0-9_.-]{1,63}`.
    pub name: String,
    /// Source environments (`world` included), without repetitions.
    pub from: Vec<String>,
    /// Destination environments (`world` included), without repetitions.
    pub to: Vec<String>,
    /// Destination ports; empty for a rule on the environment pair itself.
    pub ports: Vec<PortSpec>,
    /// The verdict of matching packets.
    pub verdict: Verdict,
    /// Line of the rule in the policy file (1-based).
    pub line: usize,
}

/// A destination port range of one protocol: `53/udp`, `8000-8099/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// IP protocol: [`proto::TCP`], [`proto::UDP`] or [`proto::SCTP`].
    pub proto: u8,
    /// First port of the range, `1..=65535`.
    pub first: u16,
    /// Last port of the range, `first..=65535`.
    pub last: u16,
}

impl PortSpec {
    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.last.saturating_sub(self.first)) + 1
    }

    /// Whether the range holds no port (never, for a validated spec).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether the range holds `port`.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)?;
        } else {
            write!(f, "{}-{}", self.first, self.last)?;
        }
        match proto_name(self.proto) {
            Some(name) => write!(f, "/{name}"),
            None => write!(f, "/{}", self.proto),
        }
    }
}

impl FromStr for PortSpec {
    type Err = ParseValueError;

    /// Parses `N/proto` or `N-M/proto` (`tcp`, `udp` or `sctp`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::values::port_spec(s).map_err(ParseValueError)
    }
}

/// The name of an IP protocol the datapath knows (`tcp`, `udp`, `sctp`,
/// `icmp`, `icmpv6`).
pub fn proto_name(number: u8) -> Option<&'static str> {
    match number {
        proto::TCP => Some("tcp"),
        proto::UDP => Some("udp"),
        proto::SCTP => Some("sctp"),
        proto::DCCP => Some("dccp"),
        proto::ICMP => Some("icmp"),
        proto::ICMPV6 => Some("icmpv6"),
        _ => None,
    }
}

/// Whether an IP protocol carries ports the datapath reads (TCP, UDP, SCTP,
/// DCCP).
pub fn proto_has_ports(number: u8) -> bool {
    matches!(number, proto::TCP | proto::UDP | proto::SCTP | proto::DCCP)
}

/// Which network interfaces envfence attaches to, by glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSelector {
    /// An interface is attached to when some pattern matches its name...
    pub include: Vec<String>,
    /// ... and none of these does.
    pub exclude: Vec<String>,
}

impl Default for InterfaceSelector {
    /// Every interface except `lo`.
    fn default() -> Self {
        InterfaceSelector {
            include: vec!["*".to_owned()],
            exclude: vec!["lo".to_owned()],
        }
    }
}

impl InterfaceSelector {
    /// Whether the interface called `ifname` is selected: matched by some
    /// include pattern and by no exclude pattern. (A pattern that is not a
    /// valid glob, which validation rejects, matches only its own text.)
    pub fn matches(&self, ifname: &str) -> bool {
        let hit = |pattern: &String| match glob::Pattern::new(pattern) {
            Ok(glob) => glob.matches(ifname),
            Err(_) => pattern == ifname,
        };
        self.include.iter().any(hit) && !self.exclude.iter().any(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_match_the_abi_and_order_by_strictness() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_u8(v.as_u8()), Some(v));
            assert_eq!(v.as_str().parse::<Verdict>(), Ok(v));
            assert_eq!(v.to_string(), v.as_str());
        }
        assert_eq!(Verdict::Drop.as_u8(), verdict::DROP);
        assert_eq!(Verdict::Allow.as_u8(), verdict::ALLOW);
        assert!(Verdict::Allow < Verdict::Log);
        assert!(Verdict::Log < Verdict::Audit);
        assert!(Verdict::Audit < Verdict::Drop);
        assert_eq!(Verdict::from_u8(4), None);
        assert!("Drop".parse::<Verdict>().is_err());
    }

    #[test]
    fn modes() {
        assert_eq!("audit".parse::<Mode>(), Ok(Mode::Audit));
        assert_eq!("enforce".parse::<Mode>(), Ok(Mode::Enforce));
        assert_eq!(Mode::Audit.to_string(), "audit");
        assert!("permissive".parse::<Mode>().is_err());
        assert_eq!(Mode::default(), Mode::Enforce);
    }

    #[test]
    fn port_specs() {
        let spec: PortSpec = "8000-8099/tcp".parse().unwrap();
        assert_eq!(
            (spec.proto, spec.first, spec.last),
            (proto::TCP, 8000, 8099)
        );
        assert_eq!(spec.len(), 100);
        assert!(spec.contains(8050) && !spec.contains(8100));
        assert_eq!(spec.to_string(), "8000-8099/tcp");
        assert_eq!("53/udp".parse::<PortSpec>().unwrap().to_string(), "53/udp");
        assert!("53".parse::<PortSpec>().is_err());
    }

    #[test]
    fn interface_selector() {
        let sel = InterfaceSelector {
            include: vec!["eth*".into(), "veth*".into()],
            exclude: vec!["eth9".into()],
        };
        assert!(sel.matches("eth0"));
        assert!(sel.matches("veth12ab"));
        assert!(!sel.matches("eth9"));
        assert!(!sel.matches("lo"));
        assert!(!sel.matches("wlan0"));
        let default = InterfaceSelector::default();
        assert!(default.matches("ens3"));
        assert!(!default.matches("lo"));
    }
}
