//! Preflight check of the Linux capabilities the agent needs.
//!
//! The agent runs with exactly [`REQUIRED`] and [`WANTED`] in production
//! (the DaemonSet drops every capability and adds these:
//! `deploy/capabilities.txt`). When a required one is missing the kernel
//! refuses somewhere deep in loading, with an `EPERM` or a verifier message
//! that does not say which capability it wanted; [`preflight`] says it first,
//! naming each missing capability, why the agent needs it, and what the
//! process has. A wanted one costs a feature, never enforcement: without it
//! the agent starts, enforces, and warns naming it and what is lost (the
//! lost feature itself fails closed).
//!
//! The check reads the effective set (`CapEff` of `/proc/self/status`) and
//! accepts what the kernel accepts: `CAP_SYS_ADMIN` stands in for each of the
//! three (the kernel's `bpf_capable()`, `perfmon_capable()` and
//! `bpf_net_capable()` all take it), so a process that is plain root, or a
//! `privileged: true` container, passes.
//!
//! `tests/tests/caps.rs` proves the set in a lab: the agent enforces with
//! exactly these capabilities, without any required one it fails, both with
//! this check and (the check skipped) in the kernel, and without a wanted one
//! it warns and the kernel refuses what the capability is for.

use std::fmt;

use thiserror::Error;

/// `CAP_NET_BROADCAST` (capability number, `include/uapi/linux/capability.h`).
pub const CAP_NET_BROADCAST: u8 = 11;
/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: u8 = 12;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u8 = 21;
/// `CAP_PERFMON` (Linux 5.8+).
pub const CAP_PERFMON: u8 = 38;
/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u8 = 39;

/// Setting this environment variable to `1` skips [`preflight`] (with a
/// warning): an escape hatch should the check ever refuse a configuration a
/// kernel accepts; the tests use it to show what the kernel itself says.
pub const SKIP_ENV: &str = "ENVFENCE_SKIP_CAPS_CHECK";

/// Names of capabilities 0..=40, as the kernel's headers spell them.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The name of capability `cap` (`CAP_BPF`), or `cap_N` for a number this
/// build does not know.
pub fn name(cap: u8) -> String {
    NAMES
        .get(usize::from(cap))
        .map_or_else(|| format!("cap_{cap}"), |n| (*n).to_owned())
}

/// The number of a capability name: `CAP_BPF`, `BPF` (Kubernetes' spelling)
/// and `cap_bpf` all give 39.
pub fn from_name(name: &str) -> Option<u8> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|n| *n == full)
        .and_then(|i| u8::try_from(i).ok())
}

/// One capability the agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Its number.
    pub capability: u8,
    /// What the agent does with it (what fails without it).
    pub why: &'static str,
    /// Capabilities the kernel accepts in its place.
    pub substitutes: &'static [u8],
}

/// The capabilities the agent cannot enforce without. With [`WANTED`], kept
/// equal to `deploy/capabilities.txt` by a test.
pub const REQUIRED: &[Requirement] = &[
    Requirement {
        capability: CAP_BPF,
        why: "to create the eBPF maps and load the programs and their BTF with bpf(2); \
              without it the first map creation fails with EPERM",
        substitutes: &[CAP_SYS_ADMIN],
    },
    Requirement {
        capability: CAP_NET_ADMIN,
        why: "to load tc (sched_cls) programs and attach them to the interfaces with tcx \
              links; without it BPF_PROG_LOAD of the tc programs fails with EPERM",
        substitutes: &[CAP_SYS_ADMIN],
    },
    Requirement {
        capability: CAP_PERFMON,
        why: "for the verifier to accept the programs' packet-pointer arithmetic \
              (data_end - data); without it the verifier refuses them with \
              \"pointer -= pointer prohibited\"",
        substitutes: &[CAP_SYS_ADMIN],
    },
];

/// What the kernel says when a [`WANTED`] capability is missing, as the
/// agent logs it (the lab test looks for it with the check skipped).
pub const PEERS_NOT_FOLLOWED: &str = "peer addresses are not followed";

/// The capabilities a feature needs: without one the agent still enforces,
/// and warns at start naming it and what it costs.
pub const WANTED: &[Requirement] = &[Requirement {
    capability: CAP_NET_BROADCAST,
    why: "to follow the addresses configured on the far end of each veth \
          (rtnetlink notifications of every network namespace, \
          NETLINK_LISTEN_ALL_NSID) for strict source checks with \
          `peer_addresses: true`; without it strict checks accept routes only, \
          which refuses pods on bridge CNIs and on Cilium without endpoint routes",
    substitutes: &[],
}];

/// A set of capabilities (bit N = capability N), as `/proc/*/status` prints
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The effective set of this process (`CapEff` in `/proc/self/status`).
    pub fn current() -> Result<CapSet, CapsError> {
        const PATH: &str = "/proc/self/status";
        let text = std::fs::read_to_string(PATH)
            .map_err(|source| CapsError::Read { path: PATH, source })?;
        CapSet::from_status(&text, "CapEff")
    }

    /// The set on the line `field` (`CapEff`, `CapPrm`, `CapBnd` …) of a
    /// `/proc/*/status` text.
    pub fn from_status(status: &str, field: &str) -> Result<CapSet, CapsError> {
        let value = status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|rest| rest.strip_prefix(':'))
            })
            .ok_or_else(|| CapsError::NoField {
                field: field.to_owned(),
            })?;
        u64::from_str_radix(value.trim(), 16)
            .map(CapSet)
            .map_err(|_| CapsError::BadField {
                field: field.to_owned(),
                value: value.trim().to_owned(),
            })
    }

    /// The set of these capabilities.
    pub fn of(caps: &[u8]) -> CapSet {
        CapSet(
            caps.iter()
                .filter(|&&c| c < 64)
                .fold(0, |acc, &c| acc | (1u64 << c)),
        )
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: u8) -> bool {
        cap < 64 && self.0 & (1u64 << cap) != 0
    }

    /// The capability numbers in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0u8..64).filter(move |&c| self.contains(c))
    }
}

impl fmt::Display for CapSet {
    /// `CAP_NET_ADMIN, CAP_PERFMON`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let names: Vec<String> = self.iter().map(name).collect();
        f.write_str(&names.join(", "))
    }
}

/// Why the preflight check failed.
#[derive(Debug, Error)]
pub enum CapsError {
    #[error("reading {path} to check the agent's capabilities: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/self/status has no {field} line: cannot check the agent's capabilities")]
    NoField { field: String },
    #[error("/proc/self/status: {field} is {value:?}, not a hexadecimal capability set")]
    BadField { field: String, value: String },
    #[error("{}", missing_message(missing, *have))]
    Missing {
        missing: Vec<&'static Requirement>,
        have: CapSet,
    },
}

fn missing_message(missing: &[&Requirement], have: CapSet) -> String {
    let mut lines: Vec<String> = missing
        .iter()
        .map(|r| {
            let subs: Vec<String> = r.substitutes.iter().map(|&c| name(c)).collect();
            let also = if subs.is_empty() {
                String::new()
            } else {
                format!("; {} also grants it", subs.join(" or "))
            };
            format!(
                "envfence needs capability {} ({}{also}); it has: {have}",
                name(r.capability),
                r.why
            )
        })
        .collect();
    lines.push(format!(
        "run it as root, or in Kubernetes with securityContext.capabilities.add: [{}] \
         (deploy/capabilities.txt)",
        deployed_names().join(", ")
    ));
    lines.join("\n")
}

/// The DaemonSet's capabilities in Kubernetes' spelling (`NET_ADMIN`):
/// [`REQUIRED`], then [`WANTED`].
fn deployed_names() -> Vec<String> {
    REQUIRED
        .iter()
        .chain(WANTED)
        .map(|r| name(r.capability).trim_start_matches("CAP_").to_owned())
        .collect()
}

/// The warning for a [`WANTED`] capability `r` the process lacks.
fn lacking_message(r: &Requirement, have: CapSet) -> String {
    format!(
        "envfence lacks capability {} ({}); it has: {have}; add {} to the DaemonSet's \
         securityContext.capabilities.add (deploy/capabilities.txt)",
        name(r.capability),
        r.why,
        name(r.capability).trim_start_matches("CAP_"),
    )
}

/// The requirements `have` does not meet (neither the capability nor a
/// substitute), in [`REQUIRED`] order.
pub fn missing(have: CapSet) -> Vec<&'static Requirement> {
    unmet(REQUIRED, have)
}

/// The [`WANTED`] capabilities `have` lacks: one warning line each.
pub fn lacking(have: CapSet) -> Vec<String> {
    unmet(WANTED, have)
        .into_iter()
        .map(|r| lacking_message(r, have))
        .collect()
}

fn unmet(set: &'static [Requirement], have: CapSet) -> Vec<&'static Requirement> {
    set.iter()
        .filter(|r| {
            !have.contains(r.capability) && !r.substitutes.iter().any(|&s| have.contains(s))
        })
        .collect()
}

/// Fails with [`CapsError::Missing`] unless `have` meets every requirement.
pub fn check(have: CapSet) -> Result<(), CapsError> {
    let missing = missing(have);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing { missing, have })
    }
}

/// Checks this process's effective capabilities before anything is loaded
/// (fails on a missing [`REQUIRED`] one, warns on each missing [`WANTED`]
/// one); skipped (with a warning) when [`SKIP_ENV`] is `1`.
pub fn preflight() -> Result<(), CapsError> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        tracing::warn!("{SKIP_ENV}=1: the capability check is skipped");
        return Ok(());
    }
    let have = CapSet::current()?;
    check(have)?;
    for line in lacking(have) {
        tracing::warn!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tenvfence\nCapInh:\t0000000000000000\n\
                          CapPrm:\t000000c000001000\nCapEff:\t000000c000001000\n\
                          CapBnd:\t000000c000001000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn names_round_trip() {
        for (i, n) in NAMES.iter().enumerate() {
            let cap = u8::try_from(i).unwrap();
            assert_eq!(name(cap), *n);
            assert_eq!(from_name(n), Some(cap));
            assert_eq!(from_name(n.trim_start_matches("CAP_")), Some(cap));
        }
        assert_eq!(from_name("net_admin"), Some(CAP_NET_ADMIN));
        assert_eq!(from_name("NOPE"), None);
        assert_eq!(name(63), "cap_63");
    }

    #[test]
    fn reads_the_status_lines() {
        let eff = CapSet::from_status(STATUS, "CapEff").unwrap();
        assert_eq!(eff, CapSet::of(&[CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF]));
        assert_eq!(eff.to_string(), "CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF");
        assert_eq!(
            CapSet::from_status(STATUS, "CapInh").unwrap().to_string(),
            "none"
        );
        assert!(matches!(
            CapSet::from_status("Name: x\n", "CapEff"),
            Err(CapsError::NoField { .. })
        ));
        assert!(matches!(
            CapSet::from_status("CapEff:\tzz\n", "CapEff"),
            Err(CapsError::BadField { .. })
        ));
        // `CapEffX:` is not `CapEff:`.
        assert!(CapSet::from_status("CapEffX:\t1\n", "CapEff").is_err());
    }

    #[test]
    fn exactly_the_required_set_passes() {
        let set = CapSet::of(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        check(set).unwrap();
        // Full root, and CAP_SYS_ADMIN alone (the kernel accepts it for all
        // three), pass too.
        check(CapSet(u64::MAX)).unwrap();
        check(CapSet(0x0000_01ff_feff_ffff)).unwrap();
        check(CapSet::of(&[CAP_SYS_ADMIN])).unwrap();
    }

    #[test]
    fn each_missing_capability_is_named_alone() {
        let all = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];
        for gone in all {
            let left: Vec<u8> = all.iter().copied().filter(|&c| c != gone).collect();
            let err = check(CapSet::of(&left)).unwrap_err();
            let msg = err.to_string();
            let first = msg.lines().next().unwrap();
            assert!(
                first.starts_with(&format!("envfence needs capability {} (", name(gone))),
                "{msg}"
            );
            assert!(
                first.ends_with(&format!("it has: {}", CapSet::of(&left))),
                "{msg}"
            );
            for other in &left {
                assert!(
                    !msg.contains(&format!("needs capability {}", name(*other))),
                    "{msg}"
                );
            }
            assert_eq!(msg.matches("envfence needs capability").count(), 1);
        }
    }

    #[test]
    fn nothing_names_all_three() {
        let msg = check(CapSet(0)).unwrap_err().to_string();
        for r in REQUIRED {
            assert!(msg.contains(&format!("needs capability {} (", name(r.capability))));
        }
        assert!(msg.contains("it has: none"), "{msg}");
        assert!(
            msg.contains("capabilities.add: [BPF, NET_ADMIN, PERFMON, NET_BROADCAST]"),
            "{msg}"
        );
    }

    /// A wanted capability is a warning, never a refusal; SYS_ADMIN does not
    /// stand in for it (the kernel checks CAP_NET_BROADCAST itself).
    #[test]
    fn a_wanted_capability_warns() {
        let set = CapSet::of(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        check(set).unwrap();
        let lines = lacking(set);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("envfence lacks capability CAP_NET_BROADCAST ("),
            "{lines:?}"
        );
        assert!(lines[0].contains("it has: CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF"));
        assert_eq!(lacking(CapSet::of(&[CAP_SYS_ADMIN])).len(), 1);
        assert!(lacking(CapSet::of(&[CAP_NET_BROADCAST])).is_empty());
        assert!(lacking(CapSet(u64::MAX)).is_empty());
    }

    /// The DaemonSet's set (`deploy/capabilities.txt`, also read by the
    /// manifest tests and the lab test) is exactly [`REQUIRED`] and
    /// [`WANTED`].
    #[test]
    fn required_is_the_deployed_set() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/capabilities.txt");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut deployed: Vec<u8> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| from_name(l).unwrap_or_else(|| panic!("{path}: unknown capability {l}")))
            .collect();
        deployed.sort_unstable();
        let mut required: Vec<u8> = REQUIRED
            .iter()
            .chain(WANTED)
            .map(|r| r.capability)
            .collect();
        required.sort_unstable();
        assert_eq!(deployed, required, "{path} differs from caps::REQUIRED");
    }
}
