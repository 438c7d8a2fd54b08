//! The `environments` section: names and their CIDRs.
#![warn(missing_docs)]

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use envfence_ebpf::{capacity, MAX_ENVS};
use ipnet::IpNet;

use super::error::{Errors, Place};
use super::model::Environment;
use super::validate::{expected, list, scalar};
use super::values::{cidr, is_env_name, WORLD};
use super::yaml::{Kind, Node};

/// Most environments a policy defines (id 0 is `world`).
pub const MAX_DEFINED_ENVS: usize = MAX_ENVS as usize - 1;

/// The checked `environments` section.
#[derive(Debug, Default)]
pub(super) struct Environments {
    /// The valid environments, sorted by name (environment id = index + 1).
    pub list: Vec<Environment>,
    /// Every name the section defines, valid or not: rules naming one of
    /// these are not reported again for it.
    pub defined: BTreeSet<String>,
}

/// Where a CIDR was first written.
struct FirstSeen {
    env: String,
    field: String,
    place: Place,
}

/// Counts prefixes of one address family against the datapath's capacity.
struct FamilyCount {
    family: &'static str,
    count: usize,
    capacity: usize,
}

impl FamilyCount {
    /// Counts one more prefix; an error the first time the capacity is
    /// exceeded.
    fn add(&mut self) -> Option<String> {
        self.count += 1;
        (self.count == self.capacity + 1).then(|| {
            format!(
                "too many {} prefixes: the datapath holds at most {}",
                self.family, self.capacity
            )
        })
    }
}

/// Checks the `environments` mapping.
pub(super) fn check(node: &Node, errors: &mut Errors) -> Environments {
    let mut result = Environments::default();
    let Kind::Map(entries) = &node.kind else {
        expected(
            node,
            "environments",
            "a mapping of environment names to lists of CIDRs, such as \
             production: [\"10.10.0.0/16\"]",
            errors,
        );
        return result;
    };
    let mut seen: HashMap<IpNet, FirstSeen> = HashMap::new();
    let mut v4 = FamilyCount {
        family: "IPv4",
        count: 0,
        capacity: capacity::ENV_V4 as usize,
    };
    let mut v6 = FamilyCount {
        family: "IPv6",
        count: 0,
        capacity: capacity::ENV_V6 as usize,
    };
    let mut valid_names = 0usize;

    for (key, value) in entries {
        let name = key.name.as_str();
        let path = format!("environments.{name}");
        result.defined.insert(name.to_owned());
        let mut valid = true;
        if name == WORLD {
            valid = false;
            errors.push(
                key.place,
                &path,
                name,
                "world is reserved: it means \"in no environment\"; rules may name it, \
                 but a policy cannot define it",
            );
        } else if !is_env_name(name) {
            valid = false;
            errors.push(
                key.place,
                &path,
                name,
                "invalid environment name: use 1 to 63 characters of a-z, 0-9, _ and -, \
                 starting with a letter or a digit",
            );
        } else {
            valid_names += 1;
            if valid_names == MAX_DEFINED_ENVS + 1 {
                errors.push(
                    key.place,
                    &path,
                    name,
                    format!("too many environments: a policy defines at most {MAX_DEFINED_ENVS}"),
                );
            }
        }

        let what = "a list of CIDRs, such as [\"10.10.0.0/16\", \"fd00:10::/48\"]";
        let Some(items) = list(value, &path, what, errors) else {
            continue;
        };
        let mut cidrs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("{path}[{i}]");
            let what = "a CIDR, such as \"10.10.0.0/16\"";
            let Some(text) = scalar(item, &field, what, errors) else {
                continue;
            };
            let net = match cidr(text) {
                Ok(net) => net,
                Err(message) => {
                    errors.push(item.place, &field, text, message);
                    continue;
                }
            };
            match seen.entry(net) {
                Entry::Occupied(first) => {
                    let first = first.get();
                    let message = if first.env == name {
                        format!(
                            "{net} is listed twice in environment {name} (first at line {}, {})",
                            first.place.line, first.field
                        )
                    } else {
                        format!(
                            "{net} is already in environment {} (line {}, {}): \
                             a CIDR belongs to one environment",
                            first.env, first.place.line, first.field
                        )
                    };
                    errors.push(item.place, &field, text, message);
                }
                Entry::Vacant(slot) => {
                    slot.insert(FirstSeen {
                        env: name.to_owned(),
                        field: field.clone(),
                        place: item.place,
                    });
                    let counter = match net {
                        IpNet::V4(_) => &mut v4,
                        IpNet::V6(_) => &mut v6,
                    };
                    if let Some(message) = counter.add() {
                        errors.push(item.place, &field, text, message);
                    }
                    cidrs.push(net);
                }
            }
        }
        if valid {
            result.list.push(Environment {
                name: name.to_owned(),
                cidrs,
            });
        }
    }
    result.list.sort_by(|a, b| a.name.cmp(&b.name));
    result
}
