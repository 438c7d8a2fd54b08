//! Policy: the YAML model, its validation, and its compilation to map entries.
//!
//! [`parse`] (or [`load`]) reads a policy file and checks all of it, returning
//! every problem at once with its place in the file; [`compile`] turns the
//! checked [`Policy`] into the datapath's map entries ([`CompiledPolicy`]),
//! which also answers "which verdict, by which rule" for a flow.
//!
//! Semantics are deterministic and order-free: a port rule beats a pair rule
//! beats `default`; two rules giving one pair (or one port of a pair)
//! different verdicts, or one CIDR in two environments, are errors.

pub mod classifier;
mod compile;
mod conflicts;
mod conntrack;
mod environments;
mod error;
mod frames;
mod model;
mod notes;
pub mod reference;
pub mod rpf;
mod rules;
mod source_check;
mod validate;
mod values;
mod yaml;

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

pub use compile::{compile, compile_with_ids, fold_audit, CompiledPolicy, Decision, L4};
pub use conntrack::{parse_timeout, Conntrack};
pub use environments::MAX_DEFINED_ENVS;
pub use error::{PolicyError, PolicyErrors};
pub use frames::{NonIp, TunnelKind, Tunnels};
pub use model::{
    proto_has_ports, proto_name, Environment, InterfaceSelector, Mode, ParseValueError, Policy,
    PortSpec, Rule, Verdict,
};
pub use notes::{remarks, Remark, LISTED_CARVE_OUTS};
pub use rules::MAX_RULES;
pub use source_check::{SourceCheck, SourceCheckRule, SourceChecks, SourceMode, POD_FACING};
pub use values::{DEFAULT_RULE, WORLD};

/// The example policy (`agent/policy/example.yaml`), embedded in the binary.
pub const EXAMPLE_POLICY: &str = include_str!("../../policy/example.yaml");

/// The origin named in errors of [`EXAMPLE_POLICY`].
pub const EXAMPLE_ORIGIN: &str = "<embedded example policy>";

/// Parses and validates a policy. `origin` (a path, or a name such as
/// [`EXAMPLE_ORIGIN`]) is what errors name as the file.
///
/// Every problem is reported at once, in file order; a YAML syntax error
/// stops the reading of the file, so it comes alone.
pub fn parse(source: &str, origin: &str) -> Result<Policy, PolicyErrors> {
    let mut errors = error::Errors::new(origin);
    let policy =
        yaml::parse(source, &mut errors).map(|root| validate::validate(&root, &mut errors));
    match policy {
        Some(mut policy) if errors.is_empty() => {
            policy.source_sha256 = sha256_hex(source);
            Ok(policy)
        }
        _ => Err(PolicyErrors(errors.into_sorted())),
    }
}

/// Reads the policy file at `path` and [`parse`]s it; errors name the path.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => parse(&source, &origin),
        Err(e) => Err(PolicyError::without_place(
            origin,
            format!("cannot read the policy file: {e}"),
        )
        .into()),
    }
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(2 * digest.len());
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests;
