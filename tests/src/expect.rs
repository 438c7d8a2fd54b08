//! What the policy says should happen to lab traffic, from the agent's own
//! reference decision (`envfence::policy`), so the tests and the demo never
//! restate the policy by hand.
//!
//! The datapath tracks flows: a TCP handshake completes when the SYN
//! (src -> dst, dport) passes and the SYN-ACK (dst -> src, dport = the
//! client's ephemeral port) passes, either by the reverse pair's verdict or
//! as a `reply` of a flow the policy allowed (`allow` or `log`) towards a
//! pair whose reverse is not allowed for every packet; an ICMP echo needs
//! the request and the reply likewise; UDP one-way delivery needs only the
//! forward packets. Passing means any verdict but drop.

use std::net::IpAddr;

use anyhow::{anyhow, Result};
use envfence::policy::{self, CompiledPolicy};

use crate::agent::proto;

/// The verdicts, as the agent names them.
pub const VERDICT_NAMES: [&str; 7] = [
    "allow", "log", "audit", "drop", "spoofed", "reply", "related",
];

/// One direction's decision, with names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub src_env: String,
    pub dst_env: String,
    /// 0 allow, 1 log, 2 audit, 3 drop.
    pub verdict: u8,
    pub rule: String,
}

impl Expected {
    pub fn verdict_name(&self) -> &'static str {
        VERDICT_NAMES
            .get(usize::from(self.verdict))
            .copied()
            .unwrap_or("?")
    }
    /// Whether the packet gets through.
    pub fn passes(&self) -> bool {
        self.verdict != envfence_ebpf::verdict::DROP
    }
    /// Whether the agent reports the flow (log, audit, drop, spoofed;
    /// replies are carried in their flow's reports, if any).
    pub fn reported(&self) -> bool {
        use envfence_ebpf::verdict;
        !matches!(
            self.verdict,
            verdict::ALLOW | verdict::REPLY | verdict::RELATED
        )
    }
}

/// The kind of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Probe {
    /// IP protocol number of the probe for addresses like `ip`.
    pub fn proto(self, ip: IpAddr) -> u8 {
        match self {
            Probe::Tcp(_) => proto::TCP,
            Probe::Udp(_) => proto::UDP,
            Probe::Icmp if ip.is_ipv4() => proto::ICMP,
            Probe::Icmp => proto::ICMPV6,
        }
    }
    pub fn port(self) -> Option<u16> {
        match self {
            Probe::Tcp(p) | Probe::Udp(p) => Some(p),
            Probe::Icmp => None,
        }
    }
    pub fn label(self) -> String {
        match self {
            Probe::Tcp(p) => format!("tcp/{p}"),
            Probe::Udp(p) => format!("udp/{p}"),
            Probe::Icmp => "icmp".into(),
        }
    }
}

/// Expected outcome of a probe.
#[derive(Clone, Debug)]
pub struct FlowExpectation {
    pub forward: Expected,
    /// The answer's decision (TCP, ICMP); `None` for UDP.
    pub reply: Option<Expected>,
}

impl FlowExpectation {
    /// Whether the probe should succeed.
    pub fn passes(&self) -> bool {
        self.forward.passes() && self.reply.as_ref().is_none_or(Expected::passes)
    }
    /// Whether the reply is actually sent (the forward packet arrived).
    pub fn reply_sent(&self) -> bool {
        self.reply.is_some() && self.forward.passes()
    }
}

/// The compiled policy the agent enforces.
pub struct Policy {
    compiled: CompiledPolicy,
}

impl Policy {
    /// The example policy the agent runs with `--example-policy`.
    pub fn example() -> Result<Policy> {
        Policy::from_source(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN)
    }

    pub fn from_source(source: &str, origin: &str) -> Result<Policy> {
        let parsed = policy::parse(source, origin).map_err(|e| anyhow!("{e}"))?;
        Ok(Policy {
            compiled: policy::compile(&parsed),
        })
    }

    pub fn compiled(&self) -> &CompiledPolicy {
        &self.compiled
    }

    /// The decision for packets `src -> dst` of `proto` to `dport`.
    pub fn decide(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: Option<u16>) -> Expected {
        let d = self.compiled.decide_flow(src, dst, proto, dport);
        Expected {
            src_env: self.compiled.env_name(d.src_env).to_string(),
            dst_env: self.compiled.env_name(d.dst_env).to_string(),
            verdict: d.verdict,
            rule: self.compiled.rule_name(d.rule).to_string(),
        }
    }

    /// What should happen to `probe` from `src` to `dst`; `client_port` is
    /// the TCP client's source port (the reply's destination port).
    pub fn expect(
        &self,
        src: IpAddr,
        dst: IpAddr,
        probe: Probe,
        client_port: Option<u16>,
    ) -> FlowExpectation {
        let p = probe.proto(src);
        let forward = self.decide(src, dst, p, probe.port());
        let reply = match probe {
            Probe::Udp(_) => None,
            Probe::Tcp(_) => Some(self.decide(dst, src, p, Some(client_port.unwrap_or(40000)))),
            Probe::Icmp => Some(self.decide(dst, src, p, None)),
        };
        // A reply of a flow the policy let through, towards a pair that is
        // not allowed for every packet, is a tracked `reply`.
        let (se, _) = self.compiled.lookup_env(src);
        let (de, _) = self.compiled.lookup_env(dst);
        let tracked = self
            .compiled
            .pair(se, de)
            .is_some_and(|pv| pv.ct & envfence_ebpf::ct::OPENS != 0);
        let allowed = forward.verdict == envfence_ebpf::verdict::ALLOW
            || forward.verdict == envfence_ebpf::verdict::LOG;
        let reply = reply.map(|r| {
            if tracked && allowed {
                Expected {
                    verdict: envfence_ebpf::verdict::REPLY,
                    rule: forward.rule.clone(),
                    ..r
                }
            } else {
                r
            }
        });
        FlowExpectation { forward, reply }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn example_policy_expectations() {
        let p = Policy::example().unwrap();
        let e = p.expect(
            ip("10.30.1.2"),
            ip("10.10.1.2"),
            Probe::Tcp(8080),
            Some(40000),
        );
        assert_eq!(e.forward.verdict_name(), "drop");
        assert_eq!(e.forward.rule, "test-to-prod");
        assert!(!e.passes());
        let e = p.expect(ip("10.30.1.2"), ip("10.10.1.2"), Probe::Udp(53), None);
        assert_eq!(e.forward.rule, "test-dns-in-prod");
        assert!(e.passes());
        // TCP 53 passes forward, and the answer (production -> test) passes
        // as a reply of the flow.
        let e = p.expect(
            ip("10.30.1.2"),
            ip("10.10.1.2"),
            Probe::Tcp(53),
            Some(40000),
        );
        assert!(e.forward.passes());
        assert_eq!(e.reply.as_ref().unwrap().verdict_name(), "reply");
        assert_eq!(e.reply.as_ref().unwrap().rule, "test-dns-in-prod");
        assert!(e.passes());
        let e = p.expect(ip("10.20.1.2"), ip("10.10.1.2"), Probe::Icmp, None);
        assert_eq!(e.forward.verdict_name(), "audit");
        assert_eq!(e.forward.src_env, "staging");
        assert_eq!(e.forward.dst_env, "production");
        assert!(e.passes());
        let e = p.expect(ip("fd00:10:1::2"), ip("fd00:0:0:1::2"), Probe::Icmp, None);
        assert_eq!(e.forward.verdict_name(), "allow");
        // The echo reply ops -> production (a `log` pair) is a reply of the
        // production -> ops flow, not a new ops -> production flow.
        assert_eq!(e.reply.as_ref().unwrap().verdict_name(), "reply");
        assert_eq!(e.reply.as_ref().unwrap().rule, "default");
        assert!(e.passes());
    }
}
