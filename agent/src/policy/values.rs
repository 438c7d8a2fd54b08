//! Parsers and checks for single values of a policy: names, CIDRs, ports.
//! Each returns a message that says what is wrong and how to write it.
#![warn(missing_docs)]

use std::net::IpAddr;

use envfence_ebpf::proto;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::model::PortSpec;

/// The reserved name of "in no environment" (environment id 0).
pub const WORLD: &str = "world";

/// The name of rule id 0, the policy's `default` verdict.
pub const DEFAULT_RULE: &str = "default";

/// Longest environment or rule name.
const MAX_NAME_LEN: usize = 63;

/// Whether `name` is a valid environment name: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn is_env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let lower_or_digit = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && lower_or_digit(&bytes[0])
        && bytes[1..]
            .iter()
            .all(|b| lower_or_digit(b) || *b == b'_' || *b == b'-')
}

/// Whether `name` is a valid rule name: `[A-Za-z0-9_.-]{1,63}`.
pub fn is_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a CIDR (`10.10.0.0/16`, `fd00:10::/48`) or a plain address
/// (a /32 or /128). Host bits must be clear, and IPv4-mapped IPv6 prefixes
/// are refused (such addresses are judged as the IPv4 address).
pub fn cidr(text: &str) -> Result<IpNet, String> {
    let net = match text.split_once('/') {
        None => IpNet::from(address(text)?),
        Some((addr, len)) => {
            let addr = address(addr)?;
            let max = match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            let len = digits(len)
                .and_then(|n| u8::try_from(n).ok())
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    format!("not a CIDR: the prefix length after '/' must be 0 to {max}")
                })?;
            IpNet::new(addr, len).map_err(|e| format!("not a CIDR: {e}"))?
        }
    };
    if net.trunc() != net {
        return Err(format!("host bits are set: did you mean {}?", net.trunc()));
    }
    if let IpNet::V6(v6) = net {
        if let Some(v4) = mapped_v4(v6) {
            return Err(format!(
                "IPv4-mapped IPv6 addresses are judged as IPv4 addresses, so this prefix \
                 would never match: write {v4}"
            ));
        }
    }
    Ok(net)
}

fn address(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "not an IPv4 or IPv6 CIDR: {} is not an IP address \
             (write a network such as 10.10.0.0/16 or fd00:10::/48)",
            super::error::quoted(text)
        )
    })
}

/// The IPv4 network an IPv6 prefix inside `::ffff:0:0/96` stands for.
fn mapped_v4(net: Ipv6Net) -> Option<Ipv4Net> {
    let len = net.prefix_len().checked_sub(96)?;
    let v4 = net.network().to_ipv4_mapped()?;
    Ipv4Net::new(v4, len).ok()
}

/// Parses a non-empty string of ASCII digits (no sign, no spaces).
fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a destination port spec: `N/proto` or `N-M/proto`, with proto
/// `tcp`, `udp`, `sctp` or `dccp` and `1 <= N <= M <= 65535`.
pub fn port_spec(text: &str) -> Result<PortSpec, String> {
    const FORM: &str = "write N/proto or N-M/proto, such as 53/udp or 8000-8099/tcp";
    let Some((range, proto_text)) = text.split_once('/') else {
        return Err(if port_range(text).is_ok() {
            format!("a port needs a protocol: write {text}/tcp or {text}/udp")
        } else {
            format!("not a port: {FORM}")
        });
    };
    let proto = match proto_text.to_ascii_lowercase().as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        "dccp" => proto::DCCP,
        _ => {
            return Err(format!(
                "unknown protocol {}: port rules are for tcp, udp, sctp or dccp",
                super::error::quoted(proto_text)
            ))
        }
    };
    let (first, last) =
        port_range(range).map_err(|e| e.unwrap_or_else(|| format!("not a port: {FORM}")))?;
    Ok(PortSpec { proto, first, last })
}

/// Parses `N` or `N-M`. `Err(None)` when it is not of that form,
/// `Err(Some(message))` when it is but the numbers are wrong.
fn port_range(text: &str) -> Result<(u16, u16), Option<String>> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (digits(a).ok_or(None)?, digits(b).ok_or(None)?),
        None => {
            let n = digits(text).ok_or(None)?;
            (n, n)
        }
    };
    let port = |n: u32| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Some(format!("port {n} is out of range: ports are 1 to 65535")))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(Some(format!(
            "the range {first}-{last} is backwards: write {last}-{first}"
        )));
    }
    Ok((first, last))
}

/// The candidate closest to `word`, when it is close enough to be a likely
/// typo (an edit distance of at most a third of the word, and at least 1).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance in characters, counting a swap of two neighbours as one
/// edit (optimal string alignment), so that `form` is close to `from`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    // d[i * width + j]: distance between a[..i] and b[..j].
    let mut d: Vec<usize> = vec![0; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// `" (did you mean x?)"` when there is a likely candidate, else nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates)
        .map(|c| format!(" (did you mean {c}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["production", "a", "0", "dev-2", "x_y", &"a".repeat(63)] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "Prod", "-a", "_a", "a.b", "a b", &"a".repeat(64)] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn rule_names() {
        assert!(is_rule_name("Test-to.prod_1"));
        assert!(!is_rule_name(""));
        assert!(!is_rule_name("a b"));
        assert!(!is_rule_name(&"r".repeat(64)));
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.10.0.0/16").unwrap().to_string(), "10.10.0.0/16");
        assert_eq!(cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(cidr("fd00:10::/48").unwrap().to_string(), "fd00:10::/48");
        assert_eq!(cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        let host_bits = cidr("10.10.1.0/16").unwrap_err();
        assert!(
            host_bits.contains("did you mean 10.10.0.0/16?"),
            "{host_bits}"
        );
        assert!(cidr("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(cidr("fd00::/129").unwrap_err().contains("0 to 128"));
        assert!(cidr("10.0.0.0/+8").is_err());
        assert!(cidr("10.300.0.0/16")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(cidr("production").is_err());
        assert!(cidr("").is_err());
        let mapped = cidr("::ffff:10.0.0.0/104").unwrap_err();
        assert!(mapped.contains("write 10.0.0.0/8"), "{mapped}");
        assert!(cidr("::/0").is_ok());
    }

    #[test]
    fn port_specs() {
        let spec = port_spec("53/udp").unwrap();
        assert_eq!((spec.proto, spec.first, spec.last), (proto::UDP, 53, 53));
        let spec = port_spec("1-65535/sctp").unwrap();
        assert_eq!((spec.proto, spec.first, spec.last), (proto::SCTP, 1, 65535));
        assert_eq!(port_spec("443/TCP").unwrap().proto, proto::TCP);
        assert_eq!(
            port_spec("53").unwrap_err(),
            "a port needs a protocol: write 53/tcp or 53/udp"
        );
        assert!(port_spec("0/tcp").unwrap_err().contains("1 to 65535"));
        assert!(port_spec("65536/tcp").unwrap_err().contains("1 to 65535"));
        assert!(port_spec("90-80/tcp").unwrap_err().contains("backwards"));
        assert!(port_spec("53/icmp")
            .unwrap_err()
            .contains("unknown protocol"));
        assert!(port_spec("dns/udp").unwrap_err().starts_with("not a port"));
        assert!(port_spec("/udp").is_err());
        assert!(port_spec("dns").unwrap_err().starts_with("not a port"));
    }

    #[test]
    fn suggestions() {
        let envs = ["production", "staging", "test"];
        assert_eq!(suggest("prodution", envs), Some("production"));
        assert_eq!(suggest("tst", envs), Some("test"));
        assert_eq!(suggest("tset", envs), Some("test"));
        assert_eq!(suggest("ops", envs), None);
        assert_eq!(
            did_you_mean("form", ["from", "to"]),
            " (did you mean from?)"
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("form", "from"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
    }
}
