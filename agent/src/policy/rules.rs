//! The `rules` section: each rule on its own. Conflicts between rules are
//! checked in [`super::conflicts`].
#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap};

use super::error::{Errors, Place};
use super::model::{PortSpec, Rule, Verdict};
use super::validate::{fields, join, list, scalar, Fields};
use super::values::{did_you_mean, is_rule_name, port_spec, DEFAULT_RULE, WORLD};
use super::yaml::Node;

const RULE_KEYS: &[&str] = &["name", "from", "to", "ports", "verdict"];

/// Most rules a policy has (rule ids are `u16`, id 0 is the default).
pub const MAX_RULES: usize = u16::MAX as usize;

/// Where the parts of a valid rule were written, for errors that involve
/// several rules.
#[derive(Debug, Clone)]
pub(super) struct RuleSite {
    /// Index of the rule in the file's `rules` list.
    pub index: usize,
    /// Place of the verdict's value.
    pub verdict: Place,
    /// Place and text of each port spec, parallel to [`Rule::ports`].
    pub ports: Vec<(Place, String)>,
}

/// Checks the `rules` list. Returns the rules that have no error (in file
/// order) and where their parts were written.
pub(super) fn check(
    node: &Node,
    environments: &BTreeSet<String>,
    errors: &mut Errors,
) -> (Vec<Rule>, Vec<RuleSite>) {
    let mut rules = Vec::new();
    let mut sites = Vec::new();
    if node.is_null() {
        return (rules, sites);
    }
    let Some(items) = list(node, "rules", "a list of rules", errors) else {
        return (rules, sites);
    };
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("rules[{index}]");
        if index == MAX_RULES {
            errors.push(
                item.place,
                &path,
                "",
                format!("too many rules: a policy has at most {MAX_RULES}"),
            );
        }
        let before = errors.count();
        let what = "a rule: a mapping with the keys name, from, to, ports and verdict";
        let Some(rule) = fields(item, &path, RULE_KEYS, what, errors) else {
            continue;
        };
        let checker = RuleChecker {
            rule: &rule,
            path: &path,
            environments,
        };
        let name = checker.name(&mut names, errors);
        let from = checker.environments("from", "[test]", errors);
        let to = checker.environments("to", "[production]", errors);
        let ports = checker.ports(errors);
        let verdict = checker.verdict(errors);
        if errors.count() != before {
            continue;
        }
        if let (Some(name), Some(from), Some(to), Some((verdict, verdict_place))) =
            (name, from, to, verdict)
        {
            let (ports, port_sites) = ports.into_iter().unzip();
            rules.push(Rule {
                name: name.to_owned(),
                from,
                to,
                ports,
                verdict,
                line: item.place.line,
            });
            sites.push(RuleSite {
                index,
                verdict: verdict_place,
                ports: port_sites,
            });
        }
    }
    (rules, sites)
}

/// Checks the keys of one rule.
struct RuleChecker<'a, 'n> {
    rule: &'a Fields<'n>,
    path: &'a str,
    environments: &'a BTreeSet<String>,
}

impl<'n> RuleChecker<'_, 'n> {
    /// The rule's name: valid, not reserved, not used by an earlier rule.
    fn name(&self, names: &mut HashMap<&'n str, usize>, errors: &mut Errors) -> Option<&'n str> {
        let node = self
            .rule
            .require("name", "test-to-prod", "a unique rule name", errors)?;
        let field = join(self.path, "name");
        let name = scalar(node, &field, "a rule name, such as test-to-prod", errors)?;
        if !is_rule_name(name) {
            errors.push(
                node.place,
                field,
                name,
                "invalid rule name: use 1 to 63 characters of A-Z, a-z, 0-9, _, . and -",
            );
            return None;
        }
        if name == DEFAULT_RULE {
            errors.push(
                node.place,
                field,
                name,
                "default is reserved: it names the policy's default verdict in events",
            );
            return None;
        }
        if let Some(line) = names.get(name) {
            errors.push(
                node.place,
                field,
                name,
                format!("duplicate rule name: the rule at line {line} has it already; rule names are unique"),
            );
            return None;
        }
        names.insert(name, node.place.line);
        Some(name)
    }

    /// `from` or `to`: a non-empty list of defined environments (or world),
    /// without repetitions.
    fn environments(&self, key: &str, example: &str, errors: &mut Errors) -> Option<Vec<String>> {
        let what = "a list of environment names (or world)";
        let node = self.rule.require(key, example, what, errors)?;
        let field = join(self.path, key);
        let items = list(node, &field, &format!("{what}, such as {example}"), errors)?;
        if items.is_empty() {
            errors.push(
                node.place,
                field,
                "[]",
                "must not be empty: name at least one environment (or world)",
            );
            return None;
        }
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let Some(name) = scalar(item, &field, "an environment name", errors) else {
                ok = false;
                continue;
            };
            if name != WORLD && !self.environments.contains(name) {
                ok = false;
                let known = self.environments.iter().map(String::as_str).chain([WORLD]);
                let hint = did_you_mean(name, known);
                errors.push(
                    item.place,
                    field,
                    name,
                    format!(
                        "unknown environment{hint}: it is not defined under environments \
                         (world means \"in no environment\")"
                    ),
                );
                continue;
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        ok.then_some(names)
    }

    /// `ports`: absent (a rule on the environment pair), or a non-empty list
    /// of port specs.
    fn ports(&self, errors: &mut Errors) -> Vec<(PortSpec, (Place, String))> {
        let Some(node) = self.rule.get("ports") else {
            return Vec::new();
        };
        let field = join(self.path, "ports");
        let what = "a non-empty list of ports, such as [\"53/udp\", \"8000-8099/tcp\"] \
                    (leave the key out for a rule on the whole environment pair)";
        let Some(items) = list(node, &field, what, errors) else {
            return Vec::new();
        };
        if items.is_empty() {
            errors.push(node.place, &field, "[]", format!("expected {what}"));
        }
        let mut ports = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let Some(text) = scalar(item, &field, "a port, such as \"53/udp\"", errors) else {
                continue;
            };
            match port_spec(text) {
                Ok(spec) => ports.push((spec, (item.place, text.to_owned()))),
                Err(message) => errors.push(item.place, field, text, message),
            }
        }
        ports
    }

    /// The rule's verdict and where it is written.
    fn verdict(&self, errors: &mut Errors) -> Option<(Verdict, Place)> {
        let expected = "allow, log, audit or drop";
        let node = self.rule.require("verdict", "drop", expected, errors)?;
        let field = join(self.path, "verdict");
        let text = scalar(node, &field, expected, errors)?;
        match text.parse::<Verdict>() {
            Ok(verdict) => Some((verdict, node.place)),
            Err(_) => {
                let names = super::model::Verdict::ALL.map(Verdict::as_str);
                let hint = did_you_mean(text, names);
                errors.push(
                    node.place,
                    field,
                    text,
                    format!("unknown verdict{hint}: expected {expected}"),
                );
                None
            }
        }
    }
}
