//! Checks between rules: two rules that give one environment pair (or one
//! port of a pair) different verdicts, and the size of the port table.
//!
//! Rules are taken in file order; a conflict is reported at the later rule
//! and names the earlier one with its line.

use std::collections::{BTreeMap, HashMap};

use envfence_ebpf::capacity;

use super::error::Errors;
use super::model::{PortSpec, Rule, Verdict};
use super::rules::RuleSite;

/// How many environment pairs a conflict message lists before "and N more".
const LISTED_PAIRS: usize = 3;

/// Checks `rules` (all valid, parallel to `sites`) against each other.
pub(super) fn check(rules: &[Rule], sites: &[RuleSite], errors: &mut Errors) {
    let mut pairs = PairClaims::default();
    let mut ports = PortClaims::default();
    for (id, (rule, site)) in rules.iter().zip(sites).enumerate() {
        if rule.ports.is_empty() {
            pairs.claim(rules, id, site, errors);
        } else {
            ports.claim(rules, id, site, errors);
        }
    }
}

/// `a -> b`, `a -> b and c -> d`, `a -> b, c -> d, e -> f and 4 more`.
fn pair_list(pairs: &[(&str, &str)]) -> String {
    let shown: Vec<String> = pairs
        .iter()
        .take(LISTED_PAIRS)
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    let rest = pairs.len().saturating_sub(LISTED_PAIRS);
    match (shown.split_last(), rest) {
        (None, _) => String::new(),
        (Some((last, [])), 0) => last.clone(),
        (Some((last, init)), 0) => format!("{} and {last}", init.join(", ")),
        (Some(_), rest) => format!("{} and {rest} more", shown.join(", ")),
    }
}

/// Which rule first gave each environment pair its verdict.
#[derive(Default)]
struct PairClaims<'r> {
    claims: HashMap<(&'r str, &'r str), (Verdict, usize)>,
}

impl<'r> PairClaims<'r> {
    fn claim(&mut self, rules: &'r [Rule], id: usize, site: &RuleSite, errors: &mut Errors) {
        let rule = &rules[id];
        // Conflicting pairs, by the earlier rule they conflict with.
        let mut conflicts: BTreeMap<usize, Vec<(&str, &str)>> = BTreeMap::new();
        for from in &rule.from {
            for to in &rule.to {
                let key = (from.as_str(), to.as_str());
                match self.claims.get(&key) {
                    Some(&(verdict, other)) if verdict != rule.verdict => {
                        conflicts.entry(other).or_default().push(key);
                    }
                    Some(_) => {}
                    None => {
                        self.claims.insert(key, (rule.verdict, id));
                    }
                }
            }
        }
        for (other, pairs) in conflicts {
            let other = &rules[other];
            errors.push(
                site.verdict,
                format!("rules[{}].verdict", site.index),
                rule.verdict.as_str(),
                format!(
                    "conflicts with rule {:?} (line {}): for {}, that rule says {} and this \
                     one says {}; an environment pair takes one verdict",
                    other.name,
                    other.line,
                    pair_list(&pairs),
                    other.verdict,
                    rule.verdict
                ),
            );
        }
    }
}

/// (from env, to env, protocol).
type PortPair<'r> = (&'r str, &'r str, u8);

/// A port range claimed by a rule: (first, last, verdict, rule index).
type RangeClaim = (u16, u16, Verdict, usize);

/// Which rules gave which port ranges of each (from, to, protocol) their
/// verdict, and how many port entries the datapath will need.
#[derive(Default)]
struct PortClaims<'r> {
    /// The ranges claimed, in claim order.
    claims: HashMap<PortPair<'r>, Vec<RangeClaim>>,
    /// The ports covered, as sorted disjoint ranges.
    covered: HashMap<PortPair<'r>, Vec<(u16, u16)>>,
    /// Number of distinct port entries so far.
    entries: usize,
    /// Whether the capacity error was reported.
    full: bool,
}

/// A conflict of one port spec with one earlier rule.
struct PortConflict<'r> {
    pairs: Vec<(&'r str, &'r str)>,
    overlap: PortSpec,
}

impl<'r> PortClaims<'r> {
    fn claim(&mut self, rules: &'r [Rule], id: usize, site: &RuleSite, errors: &mut Errors) {
        let rule = &rules[id];
        for (index, (spec, (place, text))) in rule.ports.iter().zip(&site.ports).enumerate() {
            let field = format!("rules[{}].ports[{index}]", site.index);
            let mut conflicts: BTreeMap<usize, PortConflict<'r>> = BTreeMap::new();
            for from in &rule.from {
                for to in &rule.to {
                    let key = (from.as_str(), to.as_str(), spec.proto);
                    let claims = self.claims.entry(key).or_default();
                    for &(first, last, verdict, other) in claims.iter() {
                        if verdict == rule.verdict || last < spec.first || spec.last < first {
                            continue;
                        }
                        let overlap = PortSpec {
                            proto: spec.proto,
                            first: first.max(spec.first),
                            last: last.min(spec.last),
                        };
                        let conflict = conflicts.entry(other).or_insert(PortConflict {
                            pairs: Vec::new(),
                            overlap,
                        });
                        if !conflict.pairs.contains(&(key.0, key.1)) {
                            conflict.pairs.push((key.0, key.1));
                        }
                    }
                    claims.push((spec.first, spec.last, rule.verdict, id));
                    let added = cover(self.covered.entry(key).or_default(), spec);
                    self.entries += added;
                    if self.entries > capacity::PORTS as usize && !self.full {
                        self.full = true;
                        errors.push(
                            *place,
                            &field,
                            text.as_str(),
                            format!(
                                "too many port entries: the policy needs more than {} (one per \
                                 source environment, destination environment and port), which \
                                 is all the datapath holds; use fewer or narrower port ranges",
                                capacity::PORTS
                            ),
                        );
                    }
                }
            }
            for (other, conflict) in conflicts {
                let other = &rules[other];
                errors.push(
                    *place,
                    &field,
                    text.as_str(),
                    format!(
                        "conflicts with rule {:?} (line {}): for {} {}, that rule says {} and \
                         this one says {}; a port takes one verdict",
                        other.name,
                        other.line,
                        pair_list(&conflict.pairs),
                        conflict.overlap,
                        other.verdict,
                        rule.verdict
                    ),
                );
            }
        }
    }
}

/// Adds the ports of `spec` to the sorted disjoint `ranges`; returns how
/// many of them were not covered yet.
fn cover(ranges: &mut Vec<(u16, u16)>, spec: &PortSpec) -> usize {
    let size = |ranges: &[(u16, u16)]| -> usize {
        ranges.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    };
    let before = size(ranges);
    ranges.push((spec.first, spec.last));
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for &(first, last) in ranges.iter() {
        match merged.last_mut() {
            Some((_, end)) if u32::from(first) <= u32::from(*end) + 1 => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    *ranges = merged;
    size(ranges) - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_lists() {
        assert_eq!(pair_list(&[("a", "b")]), "a -> b");
        assert_eq!(pair_list(&[("a", "b"), ("c", "d")]), "a -> b and c -> d");
        assert_eq!(
            pair_list(&[("a", "b"), ("c", "d"), ("e", "f")]),
            "a -> b, c -> d and e -> f"
        );
        let five = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h"), ("i", "j")];
        assert_eq!(pair_list(&five), "a -> b, c -> d, e -> f and 2 more");
    }

    #[test]
    fn cover_counts_new_ports() {
        let spec = |first, last| PortSpec {
            proto: 6,
            first,
            last,
        };
        let mut ranges = Vec::new();
        assert_eq!(cover(&mut ranges, &spec(10, 19)), 10);
        assert_eq!(cover(&mut ranges, &spec(15, 24)), 5);
        assert_eq!(cover(&mut ranges, &spec(30, 30)), 1);
        assert_eq!(cover(&mut ranges, &spec(25, 29)), 5);
        assert_eq!(ranges, [(10, 30)]);
        assert_eq!(cover(&mut ranges, &spec(1, 65535)), 65535 - 21);
        assert_eq!(ranges, [(1, 65535)]);
    }
}
