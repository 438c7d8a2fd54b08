//! Turns the YAML tree into a [`Policy`], collecting every error on the way:
//! the top level and the interfaces here, environments and rules in their
//! own modules, cross-rule conflicts in [`super::conflicts`].

use super::conntrack::{self, Conntrack};
use super::error::{Errors, Place};
use super::model::{InterfaceSelector, Mode, Policy, Verdict};
use super::source_check::{self, SourceChecks};
use super::values::did_you_mean;
use super::yaml::{Key, Kind, Node};
use super::{conflicts, environments, frames, rules};

const TOP_KEYS: &[&str] = &[
    "mode",
    "default",
    "environments",
    "rules",
    "interfaces",
    "source_check",
    "tunnels",
    "non_ip",
    "conntrack",
];
const INTERFACE_KEYS: &[&str] = &["include", "exclude"];

/// Checks the whole document. The returned policy is meaningful only when no
/// error was pushed; its `source_sha256` is left empty.
pub(crate) fn validate(root: &Node, errors: &mut Errors) -> Policy {
    let mut policy = Policy {
        mode: Mode::default(),
        default: Verdict::default(),
        environments: Vec::new(),
        rules: Vec::new(),
        interfaces: InterfaceSelector::default(),
        source_check: SourceChecks::default(),
        tunnels: frames::Tunnels::default(),
        non_ip: frames::NonIp::default(),
        conntrack: Conntrack::default(),
        source_sha256: String::new(),
    };
    let Some(top) = fields(
        root,
        "",
        TOP_KEYS,
        "a policy: a mapping with the keys mode, default, environments, rules, interfaces, source_check, tunnels, non_ip and conntrack",
        errors,
    ) else {
        return policy;
    };

    if let Some(node) = top.get("mode") {
        if let Some(mode) = parse_scalar::<Mode>(node, "mode", "mode", "enforce or audit", errors) {
            policy.mode = mode;
        }
    }
    if let Some(node) = top.get("default") {
        let expected = "allow, log, audit or drop";
        if let Some(verdict) = parse_scalar::<Verdict>(node, "default", "verdict", expected, errors)
        {
            policy.default = verdict;
        }
    }

    let environments = match top.require(
        "environments",
        "",
        "a mapping of environment names to lists of CIDRs",
        errors,
    ) {
        Some(node) => environments::check(node, errors),
        None => environments::Environments::default(),
    };
    if let Some(node) = top.get("rules") {
        let (rules, sites) = rules::check(node, &environments.defined, errors);
        conflicts::check(&rules, &sites, errors);
        policy.rules = rules;
    }
    if let Some(node) = top.get("interfaces") {
        policy.interfaces = interfaces(node, errors);
    }
    if let Some(node) = top.get("source_check") {
        policy.source_check = source_check::check(node, errors);
    }
    if let Some(node) = top.get("tunnels") {
        policy.tunnels = frames::check_tunnels(node, errors);
    }
    if let Some(node) = top.get("non_ip") {
        policy.non_ip = frames::check_non_ip(node, errors);
    }
    if let Some(node) = top.get("conntrack") {
        policy.conntrack = conntrack::check(node, errors);
    }
    policy.environments = environments.list;
    policy
}

/// Parses the `interfaces` section; a missing list keeps its default.
fn interfaces(node: &Node, errors: &mut Errors) -> InterfaceSelector {
    let mut selector = InterfaceSelector::default();
    if node.is_null() {
        return selector;
    }
    let what = "a mapping with the keys include and exclude (lists of interface name globs)";
    let Some(section) = fields(node, "interfaces", INTERFACE_KEYS, what, errors) else {
        return selector;
    };
    if let Some(node) = section.get("include") {
        selector.include = patterns(node, "interfaces.include", errors);
    }
    if let Some(node) = section.get("exclude") {
        selector.exclude = patterns(node, "interfaces.exclude", errors);
    }
    selector
}

/// A list of interface name globs.
pub(super) fn patterns(node: &Node, path: &str, errors: &mut Errors) -> Vec<String> {
    let what = "a list of interface name globs, such as [\"eth*\", \"veth*\"]";
    let Some(items) = list(node, path, what, errors) else {
        return Vec::new();
    };
    let mut patterns = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(text) = scalar(
            item,
            &path,
            "an interface name glob, such as \"eth*\"",
            errors,
        ) else {
            continue;
        };
        match glob::Pattern::new(text) {
            Ok(_) => patterns.push(text.to_owned()),
            Err(e) => errors.push(
                item.place,
                path,
                text,
                format!("not a valid glob pattern: {}", e.msg),
            ),
        }
    }
    patterns
}

/// `path.key`, or `key` at the top level.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The keys of a mapping that has a fixed set of keys.
pub(super) struct Fields<'n> {
    place: Place,
    path: String,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, node)| node)
    }

    /// The value of a required `key`; reports it missing otherwise.
    pub fn require(
        &self,
        key: &str,
        example: &str,
        what: &str,
        errors: &mut Errors,
    ) -> Option<&'n Node> {
        let node = self.get(key);
        if node.is_none() {
            let example = if example.is_empty() {
                String::new()
            } else {
                format!(", such as {key}: {example}")
            };
            errors.push(
                self.place,
                join(&self.path, key),
                "",
                format!("missing required key {key}: {what}{example}"),
            );
        }
        node
    }
}

/// The entries of a mapping node with the keys `known`; every other key is
/// reported (a typo must not silently weaken a policy).
pub(super) fn fields<'n>(
    node: &'n Node,
    path: &str,
    known: &[&str],
    what: &str,
    errors: &mut Errors,
) -> Option<Fields<'n>> {
    let Kind::Map(entries) = &node.kind else {
        expected(node, path, what, errors);
        return None;
    };
    for (key, _) in entries {
        if !known.contains(&key.name.as_str()) {
            let hint = did_you_mean(&key.name, known.iter().copied());
            errors.push(
                key.place,
                join(path, &key.name),
                key.name.as_str(),
                format!("unknown key{hint}; expected one of {}", known.join(", ")),
            );
        }
    }
    Some(Fields {
        place: node.place,
        path: path.to_owned(),
        entries,
    })
}

/// The items of a sequence node.
pub(super) fn list<'n>(
    node: &'n Node,
    path: &str,
    what: &str,
    errors: &mut Errors,
) -> Option<&'n [Node]> {
    match &node.kind {
        Kind::Seq(items) => Some(items),
        _ => {
            expected(node, path, what, errors);
            None
        }
    }
}

/// The text of a (non-null) scalar node.
pub(super) fn scalar<'n>(
    node: &'n Node,
    path: &str,
    what: &str,
    errors: &mut Errors,
) -> Option<&'n str> {
    let text = node.as_str();
    if text.is_none() {
        expected(node, path, what, errors);
    }
    text
}

/// A scalar that names one of a few values (a mode, a verdict).
pub(super) fn parse_scalar<T: std::str::FromStr + Copy>(
    node: &Node,
    path: &str,
    noun: &str,
    expected: &str,
    errors: &mut Errors,
) -> Option<T> {
    let text = scalar(node, path, expected, errors)?;
    let value = text.parse().ok();
    if value.is_none() {
        let names = expected
            .split([',', ' '])
            .filter(|w| !w.is_empty() && *w != "or");
        let hint = did_you_mean(text, names);
        errors.push(
            node.place,
            path,
            text,
            format!("unknown {noun}{hint}: expected {expected}"),
        );
    }
    value
}

/// Reports a node of the wrong kind.
pub(super) fn expected(node: &Node, path: &str, what: &str, errors: &mut Errors) {
    if matches!(node.kind, Kind::Invalid) {
        return; // already reported by the YAML reader
    }
    errors.push(
        node.place,
        path,
        node.describe(),
        format!("expected {what}"),
    );
}
