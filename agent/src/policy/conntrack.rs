//! The policy's `conntrack` section: how long a tracked flow lets its
//! replies through after its last packet, per protocol and state.
//!
//! ```yaml
//! conntrack:
//!   timeouts:                 # every key is optional; defaults below
//!     tcp_syn: 60s            # a SYN was sent, no reply yet
//!     tcp_established: 6h     # a reply was seen
//!     tcp_fin_wait: 120s      # one side sent a FIN
//!     tcp_closed: 10s         # both sides sent a FIN (last ACKs)
//!     udp: 60s
//!     sctp: 300s
//!     icmp: 30s               # ICMP / ICMPv6 echo
//! ```
//!
//! A timeout is a whole number of seconds, minutes, hours or days (`45s`,
//! `5m`, `6h`, `1d`, or a bare number of seconds), from one second to seven
//! days: zero would make tracking useless, a negative or absurd value is a
//! typo. A TCP RST ends a flow at once, whatever the timeouts.

use envfence_ebpf::ct;

use super::error::Errors;
use super::validate::{fields, scalar};
use super::yaml::Node;

/// The section, resolved: every timeout in seconds, indexed by `ct::T_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    pub timeouts_s: [u32; ct::TIMEOUTS],
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            timeouts_s: ct::DEFAULT_TIMEOUT_S,
        }
    }
}

impl Conntrack {
    /// The timeouts as the datapath's configuration holds them.
    pub fn config_timeouts(&self) -> [u32; 8] {
        let mut out = [0u32; 8];
        out[..ct::TIMEOUTS].copy_from_slice(&self.timeouts_s);
        out
    }

    /// `name: value` of every timeout, in `ct::TIMEOUT_NAMES` order.
    pub fn describe(&self) -> Vec<(&'static str, u32)> {
        ct::TIMEOUT_NAMES
            .iter()
            .copied()
            .zip(self.timeouts_s.iter().copied())
            .collect()
    }
}

/// Parses a timeout: `N`, `Ns`, `Nm`, `Nh` or `Nd`, within bounds.
pub fn parse_timeout(text: &str) -> Result<u32, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err("a timeout cannot be negative".to_owned());
    }
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let mult: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(
                "not a timeout: expected a whole number with s, m, h or d, such as 60s or 6h"
                    .to_owned(),
            )
        }
    };
    if digits.is_empty() {
        return Err("not a timeout: expected a whole number with s, m, h or d".to_owned());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("timeout {t} is too large (at most 7d)"))?;
    let secs = n.saturating_mul(mult);
    if secs == 0 {
        return Err("a timeout of zero would end every flow at once; at least 1s".to_owned());
    }
    if secs > u64::from(ct::MAX_TIMEOUT_S) {
        return Err(format!("timeout {t} is too large (at most 7d)"));
    }
    u32::try_from(secs).map_err(|_| format!("timeout {t} is too large (at most 7d)"))
}

/// Parses the `conntrack` section.
pub(super) fn check(node: &Node, errors: &mut Errors) -> Conntrack {
    let mut out = Conntrack::default();
    if node.is_null() {
        return out;
    }
    let what = "a mapping with the key timeouts";
    let Some(section) = fields(node, "conntrack", &["timeouts"], what, errors) else {
        return out;
    };
    let Some(timeouts) = section.get("timeouts") else {
        return out;
    };
    if timeouts.is_null() {
        return out;
    }
    let what = "a mapping of timeouts: tcp_syn, tcp_established, tcp_fin_wait, tcp_closed, udp, sctp, icmp";
    let Some(t) = fields(
        timeouts,
        "conntrack.timeouts",
        &ct::TIMEOUT_NAMES,
        what,
        errors,
    ) else {
        return out;
    };
    for (i, name) in ct::TIMEOUT_NAMES.iter().enumerate() {
        let Some(n) = t.get(name) else {
            continue;
        };
        let path = format!("conntrack.timeouts.{name}");
        let Some(text) = scalar(n, &path, "a timeout such as 60s or 6h", errors) else {
            continue;
        };
        match parse_timeout(text) {
            Ok(secs) => out.timeouts_s[i] = secs,
            Err(msg) => errors.push(n.place, path, text, msg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units_and_bounds() {
        assert_eq!(parse_timeout("45"), Ok(45));
        assert_eq!(parse_timeout("45s"), Ok(45));
        assert_eq!(parse_timeout("5m"), Ok(300));
        assert_eq!(parse_timeout("6h"), Ok(21_600));
        assert_eq!(parse_timeout("7d"), Ok(604_800));
        for bad in [
            "0",
            "0s",
            "-5s",
            "8d",
            "99999999999999999999",
            "5x",
            "s",
            "1.5h",
            "",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_timeouts_are_positioned_errors() {
        let src = format!(
            "{}conntrack:\n  timeouts:\n    udp: 0s\n    tcp_syn: -1\n    icmp: 30d\n    tcp_establish: 1h\n",
            crate::policy::EXAMPLE_POLICY
        );
        let errs = crate::policy::parse(&src, "p.yaml").expect_err("invalid");
        let text = errs.to_string();
        let base = crate::policy::EXAMPLE_POLICY.lines().count();
        for (line, what) in [
            (base + 3, "zero"),
            (base + 4, "negative"),
            (base + 5, "too large"),
            (base + 6, "unknown key"),
        ] {
            assert!(
                text.contains(&format!("p.yaml:{line}:")) && text.contains(what),
                "{what} at line {line}: {text}"
            );
        }
        let ok = format!(
            "{}conntrack:\n  timeouts:\n    udp: 2m\n",
            crate::policy::EXAMPLE_POLICY
        );
        let p = crate::policy::parse(&ok, "p.yaml").expect("valid");
        assert_eq!(p.conntrack.timeouts_s[envfence_ebpf::ct::T_UDP], 120);
        assert_eq!(
            p.conntrack.timeouts_s[envfence_ebpf::ct::T_TCP_ESTABLISHED],
            envfence_ebpf::ct::DEFAULT_TIMEOUT_S[envfence_ebpf::ct::T_TCP_ESTABLISHED]
        );
    }
}
