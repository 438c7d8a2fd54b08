//! What `policy check` says of a valid policy beyond "ok": warnings (a
//! rule that names an environment without CIDRs can never match it) and
//! notes (one environment's prefix carved out of another's: longest prefix
//! wins, which is intended, but worth a line). Neither refuses the policy.

use std::fmt;

use ipnet::IpNet;

use super::model::Policy;
use super::values::WORLD;

/// How many carve-outs are listed before "and N more".
pub const LISTED_CARVE_OUTS: usize = 10;

/// One remark on a valid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remark {
    /// Rule `rule` (at `line`) names `env`, which has no CIDRs: no address
    /// is ever in it, so the rule never matches through it.
    EmptyEnvironment {
        rule: String,
        line: usize,
        env: String,
    },
    /// `inner` (of environment `inner_env`) lies inside `outer` (of
    /// `outer_env`): its addresses are `inner_env`'s.
    CarvedOut {
        inner: IpNet,
        inner_env: String,
        outer: IpNet,
        outer_env: String,
    },
}

impl Remark {
    /// `warning` or `note`.
    pub fn severity(&self) -> &'static str {
        match self {
            Remark::EmptyEnvironment { .. } => "warning",
            Remark::CarvedOut { .. } => "note",
        }
    }

    /// The line in the policy file it is about (0: none).
    pub fn line(&self) -> usize {
        match self {
            Remark::EmptyEnvironment { line, .. } => *line,
            Remark::CarvedOut { .. } => 0,
        }
    }
}

impl fmt::Display for Remark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remark::EmptyEnvironment { rule, env, .. } => write!(
                f,
                "rule {rule:?} names environment {env:?}, which has no CIDRs: the rule never matches it"
            ),
            Remark::CarvedOut {
                inner,
                inner_env,
                outer,
                outer_env,
            } => write!(
                f,
                "{inner} ({inner_env}) is carved out of {outer} ({outer_env}): its addresses are {inner_env} (the longest prefix wins)"
            ),
        }
    }
}

/// The remarks on `policy`: warnings first (in rule order), then every
/// carve-out (in address order).
pub fn remarks(policy: &Policy) -> Vec<Remark> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        let mut named: Vec<&String> = rule.from.iter().chain(&rule.to).collect();
        named.sort();
        named.dedup();
        for env in named {
            let empty = env != WORLD
                && policy
                    .environments
                    .iter()
                    .any(|e| &e.name == env && e.cidrs.is_empty());
            if empty {
                out.push(Remark::EmptyEnvironment {
                    rule: rule.name.clone(),
                    line: rule.line,
                    env: env.clone(),
                });
            }
        }
    }
    out.extend(carve_outs(policy));
    out
}

/// Every CIDR that lies inside another environment's CIDR, with the
/// nearest such enclosing CIDR: one sweep over the CIDRs sorted by address
/// (then shortest prefix first) with a stack of the enclosing ones, so
/// O(n log n) for the 100,000-CIDR policies the datapath holds.
fn carve_outs(policy: &Policy) -> Vec<Remark> {
    let mut all: Vec<(IpNet, &str)> = policy
        .environments
        .iter()
        .flat_map(|e| e.cidrs.iter().map(move |c| (*c, e.name.as_str())))
        .collect();
    all.sort_by(|a, b| {
        (a.0.network(), a.0.prefix_len(), a.1).cmp(&(b.0.network(), b.0.prefix_len(), b.1))
    });
    let mut out = Vec::new();
    let mut stack: Vec<(IpNet, &str)> = Vec::new();
    for (net, env) in all {
        while stack.last().is_some_and(|(outer, _)| !outer.contains(&net)) {
            stack.pop();
        }
        if let Some((outer, outer_env)) = stack.last() {
            if *outer_env != env && *outer != net {
                out.push(Remark::CarvedOut {
                    inner: net,
                    inner_env: env.to_owned(),
                    outer: *outer,
                    outer_env: (*outer_env).to_owned(),
                });
            }
        }
        stack.push((net, env));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn remarks_of(src: &str) -> Vec<String> {
        let p = parse(src, "t.yaml").expect("valid policy");
        remarks(&p)
            .iter()
            .map(|r| format!("{}: {r}", r.severity()))
            .collect()
    }

    #[test]
    fn an_empty_environment_named_by_a_rule_is_a_warning() {
        let got = remarks_of(
            "environments:\n  production: [10.1.0.0/16]\n  test: []\nrules:\n  - name: t-p\n    from: [test]\n    to: [production]\n    verdict: drop\n",
        );
        assert_eq!(
            got,
            ["warning: rule \"t-p\" names environment \"test\", which has no CIDRs: the rule never matches it"]
        );
    }

    #[test]
    fn carve_outs_are_noted_with_the_nearest_enclosing_prefix() {
        let got = remarks_of(
            "environments:\n  production: [10.0.0.0/8, 2001:db8::/32]\n  test: [10.1.0.0/16, 10.2.0.0/16, 2001:db8:1::/48]\n  ops: [10.1.5.0/24, 10.1.6.0/24, 192.168.0.0/24]\n",
        );
        assert_eq!(
            got,
            [
                "note: 10.1.0.0/16 (test) is carved out of 10.0.0.0/8 (production): its addresses are test (the longest prefix wins)",
                "note: 10.1.5.0/24 (ops) is carved out of 10.1.0.0/16 (test): its addresses are ops (the longest prefix wins)",
                "note: 10.1.6.0/24 (ops) is carved out of 10.1.0.0/16 (test): its addresses are ops (the longest prefix wins)",
                "note: 10.2.0.0/16 (test) is carved out of 10.0.0.0/8 (production): its addresses are test (the longest prefix wins)",
                "note: 2001:db8:1::/48 (test) is carved out of 2001:db8::/32 (production): its addresses are test (the longest prefix wins)",
            ]
        );
    }

    #[test]
    fn the_example_policy_has_no_warnings() {
        let p = parse(crate::policy::EXAMPLE_POLICY, crate::policy::EXAMPLE_ORIGIN).unwrap();
        assert!(remarks(&p).iter().all(|r| r.severity() != "warning"));
    }
}
