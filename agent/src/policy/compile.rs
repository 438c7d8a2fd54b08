//! Compiles a validated [`Policy`] into the entries of the datapath's maps,
//! and answers "which verdict, by which rule" from them with the kernel's
//! own decision (`envfence_ebpf::decide`, over the compiled tables).
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, OnceLock};

use envfence_ebpf::decide::{self, Decided, Tables};
use envfence_ebpf::{
    pair_index, PairVerdict, PortKey, RuleVerdict, MAX_ENVS, PAIRS_LEN, RULE_DEFAULT,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::model::{proto_has_ports, InterfaceSelector, Mode, Policy, Verdict};
use super::values::{DEFAULT_RULE, WORLD};

/// A policy as the datapath holds it.
///
/// Everything that could fail was checked by [`super::parse`]; `compile`
/// of a policy built by hand takes the first of conflicting rules and skips
/// environments it does not define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Global mode (already folded into `pairs` and `ports`).
    pub mode: Mode,
    /// The policy's `default` verdict as written (in audit mode, a `drop`
    /// default is `audit` in `pairs`).
    pub default: Verdict,
    /// Environment names by id: `[0]` is `world` (in no environment), then
    /// the policy's environments sorted by name.
    pub env_names: Vec<String>,
    /// Rule names by id: `[0]` is `default`, then the rules in file order.
    pub rule_names: Vec<String>,
    /// IPv4 prefix -> environment id, sorted by prefix.
    pub v4: Vec<(Ipv4Net, u32)>,
    /// IPv6 prefix -> environment id, sorted by prefix.
    pub v6: Vec<(Ipv6Net, u32)>,
    /// [`PAIRS_LEN`] entries, indexed by [`pair_index`]`(src, dst)`.
    pub pairs: Vec<PairVerdict>,
    /// The port rules, sorted by (src env, dst env, proto, port).
    pub ports: Vec<(PortKey, RuleVerdict)>,
    /// The interfaces to attach to.
    pub interfaces: InterfaceSelector,
    /// The source check of each attached interface.
    pub source_check: super::SourceChecks,
    /// Which UDP ports are which tunnel.
    pub tunnels: super::Tunnels,
    /// What frames that are not IP get (`drop` is folded to pass in audit
    /// mode by the datapath, like malformed frames).
    pub non_ip: super::NonIp,
    /// Connection-tracking timeouts.
    pub conntrack: super::Conntrack,
    /// SHA-256 of the policy source, lowercase hex.
    pub source_sha256: String,
}

/// What a packet carries above IP, as far as the verdict is concerned: the
/// question a caller asks ([`CompiledPolicy::decide`], the pinned maps'
/// `decide`), with the protocol and port the answer depends on. The walk's
/// and the decision's own enum is [`envfence_ebpf::L4`]; [`L4::parts`]
/// gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP or SCTP with a readable destination port: the port rule for
    /// (src, dst, proto, port) if there is one, else the pair's verdict.
    Ports {
        /// IP protocol number.
        proto: u8,
        /// Destination port, host byte order.
        dport: u16,
    },
    /// TCP, UDP or SCTP whose ports cannot be read (a non-first fragment, a
    /// truncated header): the pair's `no_port_verdict`.
    NoPorts,
    /// A protocol without ports (ICMP, ...): the pair's verdict.
    Other,
}

impl L4 {
    /// The L4 case of a packet of IP protocol `proto` whose destination port
    /// is `dport` (`None`: not readable).
    pub fn of(proto: u8, dport: Option<u16>) -> Self {
        match (proto_has_ports(proto), dport) {
            (true, Some(dport)) => L4::Ports { proto, dport },
            (true, None) => L4::NoPorts,
            (false, _) => L4::Other,
        }
    }

    /// The decision's arguments: (what is known of the L4 header, protocol,
    /// destination port); protocol and port are 0 unless ports were read.
    pub fn parts(self) -> (envfence_ebpf::L4, u8, u16) {
        match self {
            L4::Ports { proto, dport } => (envfence_ebpf::L4::Ports, proto, dport),
            L4::NoPorts => (envfence_ebpf::L4::NoPorts, 0, 0),
            L4::Other => (envfence_ebpf::L4::Other, 0, 0),
        }
    }
}

/// How a flow is judged, with the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Environment id of the source (0: world).
    pub src_env: u32,
    /// Environment id of the destination (0: world).
    pub dst_env: u32,
    /// The prefix that put the source in its environment.
    pub src_cidr: Option<IpNet>,
    /// The prefix that put the destination in its environment.
    pub dst_cidr: Option<IpNet>,
    /// The verdict ([`envfence_ebpf::verdict`]), audit mode folded in.
    pub verdict: u8,
    /// The rule that decided ([`RULE_DEFAULT`] for the default).
    pub rule: u16,
}

/// Compiles a validated policy, numbering its environments afresh
/// (`world` = 0, then the names sorted).
pub fn compile(policy: &Policy) -> CompiledPolicy {
    compile_with_ids(policy, &[], &[])
}

/// Compiles a validated policy keeping the environment and rule ids of the
/// policy compiled before it (`prior_envs`, `prior_rules`: its `env_names`
/// and `rule_names`): an environment or rule keeps its id across reloads and
/// restarts, a new one takes the lowest id nothing current holds. Ids of
/// environments and rules that are gone stay as empty strings until reused.
/// (Counters are kept per id: stable ids keep them meaningful.)
pub fn compile_with_ids(
    policy: &Policy,
    prior_envs: &[String],
    prior_rules: &[String],
) -> CompiledPolicy {
    let env_names = stable_names(&env_names(policy), prior_envs, WORLD);
    let ids: HashMap<&str, u32> = env_names
        .iter()
        .enumerate()
        .filter(|(_, name)| !name.is_empty())
        .filter_map(|(id, name)| Some((name.as_str(), u32::try_from(id).ok()?)))
        .collect();
    let (v4, v6) = prefixes(policy, &ids);
    let in_file: Vec<String> = std::iter::once(DEFAULT_RULE.to_owned())
        .chain(policy.rules.iter().map(|r| r.name.clone()))
        .collect();
    let rule_names = stable_names(&in_file, prior_rules, DEFAULT_RULE);
    // The id of each rule, in file order.
    let rule_ids: Vec<u16> = policy
        .rules
        .iter()
        .map(|r| {
            rule_names
                .iter()
                .position(|n| *n == r.name)
                .and_then(|i| u16::try_from(i).ok())
                .unwrap_or(u16::MAX)
        })
        .collect();
    let (pairs, ports) = verdicts(policy, &ids, &rule_ids);
    CompiledPolicy {
        mode: policy.mode,
        default: policy.default,
        env_names,
        rule_names,
        v4,
        v6,
        pairs,
        ports,
        interfaces: policy.interfaces.clone(),
        source_check: policy.source_check.clone(),
        tunnels: policy.tunnels.clone(),
        non_ip: policy.non_ip,
        conntrack: policy.conntrack,
        source_sha256: policy.source_sha256.clone(),
    }
}

/// `world`, then the policy's environment names sorted (at most
/// `MAX_ENVS - 1` of them).
fn env_names(policy: &Policy) -> Vec<String> {
    let mut names: Vec<&str> = policy
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .filter(|name| *name != WORLD)
        .collect();
    names.sort_unstable();
    names.dedup();
    names.truncate(MAX_ENVS as usize - 1);
    std::iter::once(WORLD)
        .chain(names)
        .map(str::to_owned)
        .collect()
}

/// Lays `names` (`zero`, the name of id 0, first) out by id, keeping the
/// ids of `prior`; new names take the lowest free ids, in the given order.
fn stable_names(names: &[String], prior: &[String], zero: &str) -> Vec<String> {
    let sorted = names;
    let mut out: Vec<String> = vec![String::new(); prior.len().max(1)];
    out[0] = zero.to_owned();
    let mut fresh = Vec::new();
    for name in sorted.iter().skip(1) {
        match prior.iter().skip(1).position(|p| p == name) {
            Some(i) => out[i + 1] = name.clone(),
            None => fresh.push(name.clone()),
        }
    }
    for name in fresh {
        match out.iter().skip(1).position(String::is_empty) {
            Some(i) => out[i + 1] = name,
            None => out.push(name),
        }
    }
    // Trailing retired ids carry nothing.
    while out.len() > 1 && out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

type Prefixes = (Vec<(Ipv4Net, u32)>, Vec<(Ipv6Net, u32)>);

/// The classifier's prefixes, sorted; of two equal prefixes the first kept.
fn prefixes(policy: &Policy, ids: &HashMap<&str, u32>) -> Prefixes {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for env in &policy.environments {
        let Some(&id) = ids.get(env.name.as_str()).filter(|id| **id != 0) else {
            continue;
        };
        for net in &env.cidrs {
            match net.trunc() {
                IpNet::V4(net) => v4.push((net, id)),
                IpNet::V6(net) => v6.push((net, id)),
            }
        }
    }
    v4.sort_by_key(|(net, _)| *net);
    v4.dedup_by_key(|(net, _)| *net);
    v6.sort_by_key(|(net, _)| *net);
    v6.dedup_by_key(|(net, _)| *net);
    (v4, v6)
}

/// A verdict and the rule that gave it, before audit folding.
type Claim = (Verdict, u16);

/// The pair table and the port entries.
fn verdicts(
    policy: &Policy,
    ids: &HashMap<&str, u32>,
    rule_ids: &[u16],
) -> (Vec<PairVerdict>, Vec<(PortKey, RuleVerdict)>) {
    let mut pair_claims: Vec<Option<Claim>> = vec![None; PAIRS_LEN as usize];
    let mut port_claims: BTreeMap<(u8, u8, u8, u16), Claim> = BTreeMap::new();
    for (rule, &rule_id) in policy.rules.iter().zip(rule_ids) {
        let claim = (rule.verdict, rule_id);
        for from in rule.from.iter().filter_map(|name| ids.get(name.as_str())) {
            for to in rule.to.iter().filter_map(|name| ids.get(name.as_str())) {
                if rule.ports.is_empty() {
                    let slot = &mut pair_claims[pair_index(*from, *to) as usize];
                    slot.get_or_insert(claim);
                    continue;
                }
                // Environment ids are below MAX_ENVS, so they fit in a u8.
                let (Ok(src), Ok(dst)) = (u8::try_from(*from), u8::try_from(*to)) else {
                    continue;
                };
                for spec in &rule.ports {
                    for port in spec.first..=spec.last {
                        port_claims
                            .entry((src, dst, spec.proto, port))
                            .or_insert(claim);
                    }
                }
            }
        }
    }

    // The strictest port verdict of each pair; of equals, the rule first in
    // the file.
    let file_order = |id: u16| rule_ids.iter().position(|&r| r == id).unwrap_or(usize::MAX);
    let mut strictest: Vec<Option<Claim>> = vec![None; PAIRS_LEN as usize];
    for (&(src, dst, _, _), &(verdict, rule)) in &port_claims {
        let slot = &mut strictest[pair_index(src.into(), dst.into()) as usize];
        let better = match *slot {
            None => true,
            Some((v, r)) => verdict > v || (verdict == v && file_order(rule) < file_order(r)),
        };
        if better {
            *slot = Some((verdict, rule));
        }
    }

    let fold = |verdict: Verdict| fold_audit(policy.mode, verdict).as_u8();
    let default = (policy.default, RULE_DEFAULT);
    let mut pairs: Vec<PairVerdict> = pair_claims
        .iter()
        .zip(&strictest)
        .map(|(claim, port_max)| {
            let (verdict, rule) = claim.unwrap_or(default);
            let (no_port_verdict, no_port_rule) = match *port_max {
                Some((v, r)) if v > verdict => (v, r),
                _ => (verdict, rule),
            };
            PairVerdict {
                verdict: fold(verdict),
                no_port_verdict: fold(no_port_verdict),
                has_port_rules: u8::from(port_max.is_some()),
                ct: 0,
                rule,
                no_port_rule,
            }
        })
        .collect();
    mark_tracked(&mut pairs);
    let ports = port_claims
        .into_iter()
        .map(|((src_env, dst_env, proto, port), (verdict, rule))| {
            // The datapath sets the slot it writes the entry into.
            let key = PortKey::new(0, src_env.into(), dst_env.into(), proto, port);
            let value = RuleVerdict {
                verdict: fold(verdict),
                _pad: 0,
                rule,
            };
            (key, value)
        })
        .collect();
    (pairs, ports)
}

/// Sets the connection-tracking flags of every pair: a pair not allowed
/// for every packet may carry replies (`ct::REPLIES`), and its reverse pair's
/// allowed packets open tracked flows (`ct::OPENS`). Pairs allowed both
/// ways are never tracked.
fn mark_tracked(pairs: &mut [PairVerdict]) {
    let all_allow = |p: &PairVerdict| {
        p.verdict == envfence_ebpf::verdict::ALLOW
            && p.no_port_verdict == envfence_ebpf::verdict::ALLOW
    };
    let restricted: Vec<bool> = pairs.iter().map(|p| !all_allow(p)).collect();
    for src in 0..MAX_ENVS {
        for dst in 0..MAX_ENVS {
            let i = pair_index(src, dst) as usize;
            let reverse = pair_index(dst, src) as usize;
            let mut flags = 0;
            if restricted[i] {
                flags |= envfence_ebpf::ct::REPLIES;
            }
            if restricted[reverse] {
                flags |= envfence_ebpf::ct::OPENS;
            }
            pairs[i].ct = flags;
        }
    }
}

/// In audit mode nothing is dropped: `drop` becomes `audit`.
pub fn fold_audit(mode: Mode, verdict: Verdict) -> Verdict {
    match (mode, verdict) {
        (Mode::Audit, Verdict::Drop) => Verdict::Audit,
        _ => verdict,
    }
}

impl CompiledPolicy {
    /// The id of the environment called `name` (`world` is 0).
    pub fn env_id(&self, name: &str) -> Option<u32> {
        if name == WORLD {
            return Some(0);
        }
        if name.is_empty() {
            return None;
        }
        let index = self.env_names.iter().position(|n| n == name)?;
        u32::try_from(index).ok()
    }

    /// The name of environment `id`: `world` for 0, `unknown(N)` for an id
    /// the policy does not have.
    pub fn env_name(&self, id: u32) -> &str {
        match usize::try_from(id).ok().and_then(|i| self.env_names.get(i)) {
            Some(name) if !name.is_empty() => name,
            Some(_) => unknown_name(id),
            None if id == 0 => WORLD,
            None => unknown_name(id),
        }
    }

    /// The id of the rule called `name` (`default` is 0).
    pub fn rule_id(&self, name: &str) -> Option<u16> {
        if name == DEFAULT_RULE {
            return Some(RULE_DEFAULT);
        }
        let index = self.rule_names.iter().position(|n| n == name)?;
        u16::try_from(index).ok()
    }

    /// The name of rule `id`: `default` for 0, `unknown(N)` for an id the
    /// policy does not have.
    pub fn rule_name(&self, id: u16) -> &str {
        match self.rule_names.get(usize::from(id)) {
            Some(name) => name,
            None if id == RULE_DEFAULT => DEFAULT_RULE,
            None => unknown_name(u32::from(id)),
        }
    }

    /// The environment of `ip` by longest-prefix match, and the prefix that
    /// matched; `(0, None)` when it is in no environment. An IPv4-mapped
    /// IPv6 address (`::ffff:a.b.c.d`) is looked up as the IPv4 address.
    pub fn lookup_env(&self, ip: IpAddr) -> (u32, Option<IpNet>) {
        match ip {
            IpAddr::V4(addr) => self.lookup_v4(addr),
            IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
                Some(v4) => self.lookup_v4(v4),
                None => self.lookup_v6(addr),
            },
        }
    }

    fn lookup_v4(&self, addr: Ipv4Addr) -> (u32, Option<IpNet>) {
        self.v4
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or((0, None), |(net, id)| (*id, Some(IpNet::V4(*net))))
    }

    fn lookup_v6(&self, addr: Ipv6Addr) -> (u32, Option<IpNet>) {
        self.v6
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or((0, None), |(net, id)| (*id, Some(IpNet::V6(*net))))
    }

    /// The pair entry of (src, dst), if both ids are in range.
    pub fn pair(&self, src_env: u32, dst_env: u32) -> Option<&PairVerdict> {
        if src_env >= MAX_ENVS || dst_env >= MAX_ENVS {
            return None;
        }
        self.pairs.get(pair_index(src_env, dst_env) as usize)
    }

    /// The verdict ([`envfence_ebpf::verdict`]) and deciding rule id for a
    /// packet from environment `src_env` to `dst_env`, as the datapath
    /// decides it.
    pub fn decide(&self, src_env: u32, dst_env: u32, l4: L4) -> (u8, u16) {
        let (l4, proto, dport) = l4.parts();
        let d = self.decided(src_env, dst_env, l4, proto, dport);
        (d.verdict, d.rule)
    }

    /// The kernel's decision ([`envfence_ebpf::decide::decide`]) over this
    /// policy's tables; `proto` and `dport` are read when `l4` is `Ports`.
    /// A pair out of range stands for the policy's default (audit mode
    /// folded in).
    pub fn decided(
        &self,
        src_env: u32,
        dst_env: u32,
        l4: envfence_ebpf::L4,
        proto: u8,
        dport: u16,
    ) -> Decided {
        let Some(pair) = self.pair(src_env, dst_env) else {
            return Decided {
                verdict: fold_audit(self.mode, self.default).as_u8(),
                rule: RULE_DEFAULT,
                by: decide::By::Pair,
            };
        };
        match decide::decide(self, pair, src_env, dst_env, l4, proto, dport) {
            Ok(d) => d,
            Err(never) => match never {},
        }
    }

    /// Looks up both environments and decides. `dport` is `None` when a
    /// port-bearing protocol's ports cannot be read (ignored for other
    /// protocols).
    pub fn decide_flow(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: Option<u16>) -> Decision {
        let (src_env, src_cidr) = self.lookup_env(src);
        let (dst_env, dst_cidr) = self.lookup_env(dst);
        let (verdict, rule) = self.decide(src_env, dst_env, L4::of(proto, dport));
        Decision {
            src_env,
            dst_env,
            src_cidr,
            dst_cidr,
            verdict,
            rule,
        }
    }
}

/// The compiled port rules, as [`envfence_ebpf::decide`] reads them.
impl Tables for CompiledPolicy {
    type Error = std::convert::Infallible;
    type Rule<'a> = &'a RuleVerdict;

    fn port_rule(
        &self,
        src_env: u32,
        dst_env: u32,
        proto: u8,
        port: u16,
    ) -> Result<Option<&RuleVerdict>, Self::Error> {
        // In no slot yet (0); sorted by (src env, dst env, proto, port).
        let key = PortKey::new(0, src_env, dst_env, proto, port);
        let order = |k: &PortKey| (k.src_env, k.dst_env, k.proto, k.port);
        let index = self
            .ports
            .binary_search_by_key(&order(&key), |(k, _)| order(k));
        Ok(index
            .ok()
            .and_then(|i| self.ports.get(i))
            .map(|(_, value)| value))
    }
}

/// `unknown(N)` for ids up to `u16::MAX` (every rule id, every environment
/// id the datapath can hold), `unknown` beyond. Interned: each distinct N is
/// allocated once for the life of the process, so at most 65536 of them.
fn unknown_name(id: u32) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<u32, &'static str>>> = OnceLock::new();
    if id > u32::from(u16::MAX) {
        return "unknown";
    }
    let names = NAMES.get_or_init(Default::default);
    let mut names = names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    names
        .entry(id)
        .or_insert_with(|| Box::leak(format!("unknown({id})").into_boxed_str()))
}

#[cfg(test)]
mod tests;
