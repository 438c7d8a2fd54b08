//! What every integration test of `tests/tests/` starts from: the root
//! check, the agent lock, and the example policy's addresses as the agent
//! itself parses them (`agent/policy/example.yaml`), so that no test
//! restates a CIDR of the policy.
//!
//! The example lab's pods (see [`crate::lab::PodSpec::example_pods`]) sit
//! at host 2 of the n-th /24 (IPv4) or /48 (IPv6) of their environment's
//! network: [`pod_addr`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use envfence::policy::{self, Policy};
use ipnet::IpNet;

use crate::lab::{Family, Lab};

/// Panics with the reason unless the test runs as root (every test of
/// `tests/tests/` needs namespaces or eBPF).
pub fn root() {
    if let Err(e) = crate::netns::require_root() {
        panic!("{e:#}");
    }
}

/// The workspace's root directory (the one above tests/).
pub fn workspace() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

static AGENT_LOCK: Mutex<()> = Mutex::new(());

/// One agent (or one timing-sensitive test) at a time within a test
/// binary: loading is CPU-heavy on a 2-CPU machine, and latencies are
/// measured on an otherwise idle lab. A panicking holder does not poison it.
pub fn agent_lock() -> MutexGuard<'static, ()> {
    AGENT_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`root`], then [`agent_lock`]: how a test that runs an agent begins
/// (hold the guard until the end).
pub fn serial() -> MutexGuard<'static, ()> {
    root();
    agent_lock()
}

/// [`serial`] and a lab of the example pods ([`Lab::example`]). Bind the
/// guard first, so that the lab goes before it.
pub fn example_lab() -> anyhow::Result<(MutexGuard<'static, ()>, Lab)> {
    let guard = serial();
    Ok((guard, Lab::example()?))
}

/// The embedded example policy, parsed by the agent's own parser.
pub fn example_policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        policy::parse(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN)
            .unwrap_or_else(|e| panic!("the example policy does not parse: {e}"))
    })
}

/// The example policy's network of `family` for environment `env` (its
/// first CIDR of that family).
pub fn env_net(env: &str, family: Family) -> IpNet {
    let e = example_policy()
        .environments
        .iter()
        .find(|e| e.name == env)
        .unwrap_or_else(|| panic!("the example policy has no environment {env:?}"));
    e.cidrs
        .iter()
        .copied()
        .find(|c| Family::of(c.addr()) == family)
        .unwrap_or_else(|| panic!("environment {env:?} has no {} network", family.name()))
}

/// [`env_net`] as text (`10.30.0.0/16`), for command lines.
pub fn env_cidr(env: &str, family: Family) -> String {
    env_net(env, family).to_string()
}

/// The host `offset` past the start of [`env_net`] (panics past its end).
pub fn env_host(env: &str, family: Family, offset: u128) -> IpAddr {
    let net = env_net(env, family);
    let addr = match net {
        IpNet::V4(v4) => {
            let offset = u32::try_from(offset).unwrap_or(u32::MAX);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()).wrapping_add(offset)))
        }
        IpNet::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6.network()).wrapping_add(offset),
        )),
    };
    assert!(
        net.contains(&addr),
        "host {offset:#x} of {env:?} ({addr}) is outside {net}"
    );
    addr
}

/// Host 2 of the `n`-th /24 (IPv4) or /48 (IPv6) of environment `env`:
/// the address of the example lab's pod `n` of that environment (`n` = 0
/// where the environment's network is that small itself, as `ops`'s).
pub fn pod_addr(env: &str, family: Family, n: u8) -> IpAddr {
    host_addr(env, family, n, 2)
}

/// An address written as a word: `v4:ENV:N` / `v6:ENV:N` is
/// [`pod_addr`], `mapped:ENV:N` its IPv4 form mapped into IPv6; anything
/// else a literal address.
pub fn addr_word(word: &str) -> anyhow::Result<IpAddr> {
    let pod = |fam, env, n: &str| -> anyhow::Result<IpAddr> { Ok(pod_addr(env, fam, n.parse()?)) };
    Ok(match word.split(':').collect::<Vec<_>>()[..] {
        ["v4", env, n] => pod(Family::V4, env, n)?,
        ["v6", env, n] => pod(Family::V6, env, n)?,
        ["mapped", env, n] => match pod(Family::V4, env, n)? {
            IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
            v6 => v6,
        },
        _ => word.parse()?,
    })
}

/// Host `host` of the `n`-th /24 (IPv4) or /48 (IPv6) of environment
/// `env` (see [`pod_addr`]): addresses of the environment the lab has no
/// pod at, for hosts a test adds.
pub fn host_addr(env: &str, family: Family, n: u8, host: u8) -> IpAddr {
    let shift = match family {
        Family::V4 => 8,
        Family::V6 => 80,
    };
    env_host(env, family, (u128::from(n) << shift) + u128::from(host))
}

/// [`pod_addr`] of IPv4.
pub fn pod_v4(env: &str, n: u8) -> Ipv4Addr {
    match pod_addr(env, Family::V4, n) {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => unreachable!("{a} is IPv6"),
    }
}

/// [`pod_addr`] of IPv6.
pub fn pod_v6(env: &str, n: u8) -> Ipv6Addr {
    match pod_addr(env, Family::V6, n) {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => unreachable!("{a} is IPv4"),
    }
}

/// The example policy's `environments:` entries as YAML lines (`  name:
/// ["cidr", ...]`), for test policies over the same networks.
pub fn environments_yaml() -> String {
    example_policy()
        .environments
        .iter()
        .map(|e| {
            let cidrs: Vec<String> = e
                .cidrs
                .iter()
                .map(|c| format!("{:?}", c.to_string()))
                .collect();
            format!("  {}: [{}]\n", e.name, cidrs.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_the_labs() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("a literal address");
        assert_eq!(pod_addr("production", Family::V4, 1), ip("10.10.1.2"));
        assert_eq!(pod_addr("production", Family::V6, 2), ip("fd00:10:2::2"));
        assert_eq!(pod_addr("ops", Family::V4, 0), ip("10.0.0.2"));
        assert_eq!(pod_addr("ops", Family::V6, 0), ip("fd00:0:0:1::2"));
        assert_eq!(env_cidr("test", Family::V4), "10.30.0.0/16");
        assert_eq!(
            host_addr("production", Family::V4, 201, 3),
            ip("10.10.201.3")
        );
        assert!(environments_yaml().contains("  ops: [\"10.0.0.0/24\", \"fd00:0:0:1::/64\"]\n"));
        assert_eq!(
            env_host("production", Family::V6, 0x9_0009),
            ip("fd00:10::9:9")
        );
    }
}
