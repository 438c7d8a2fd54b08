//! The reference source check: what a reverse-path check answers for a
//! source entering an interface, computed in plain Rust from a route list,
//! the interface's settings and the peer addresses — written from the rules
//! (README, "How envfence handles …", and the kernel's documented FIB
//! semantics), not from the datapath code (`agent-ebpf/src/source.rs`,
//! which asks the kernel's FIB with `bpf_fib_lookup`). The differential
//! suite (`tests/tests/differential_routes.rs`) holds the two equal on a
//! node whose routes it sets up itself and states here.
//!
//! [`decide`] (a route answer, the mode, the peer set → a result) and
//! [`scope_rule`] are also what `envfence explain --iif` applies to the
//! kernel's own route answer (asked over rtnetlink).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envfence_ebpf::source;
use ipnet::IpNet;

/// What a route says about a destination (the checked source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// Forwarded through an interface.
    Unicast,
    /// One of the node's own addresses (the local table: local, broadcast,
    /// anycast, multicast): never forwarded.
    Local,
    /// `blackhole`, `unreachable` or `prohibit`.
    Refused,
}

/// One route of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub net: IpNet,
    pub kind: RouteKind,
    /// The interface a unicast route leaves through (0 otherwise).
    pub ifindex: u32,
}

/// What the node's routing answers for an address looked up from an
/// interface (the FIB's answer, reduced to what the check needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAnswer {
    /// A unicast route through this interface.
    Via(u32),
    /// An unreachable, blackhole or prohibit route.
    Refused,
    /// No route, or one the node does not forward (its own address).
    NotForwarded,
    /// The interface the packet entered does not forward: no answer.
    ForwardingDisabled,
}

/// The node's routes: the local table is consulted before the main table,
/// the longest prefix wins within each (the default policy rules).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    local: Vec<Route>,
    main: Vec<Route>,
}

impl Routes {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Routes {
        let (local, main) = routes.into_iter().partition(|r| r.kind == RouteKind::Local);
        Routes { local, main }
    }

    /// The longest-prefix route covering `addr`, local table first.
    pub fn lookup(&self, addr: IpAddr) -> Option<Route> {
        let best = |table: &[Route]| {
            table
                .iter()
                .filter(|r| r.net.contains(&addr))
                .max_by_key(|r| r.net.prefix_len())
                .copied()
        };
        best(&self.local).or_else(|| best(&self.main))
    }

    /// The answer for `addr` looked up from an interface that forwards
    /// (`forwarding`) or not.
    pub fn answer(&self, addr: IpAddr, forwarding: bool) -> RouteAnswer {
        if !forwarding {
            return RouteAnswer::ForwardingDisabled;
        }
        match self.lookup(addr) {
            Some(Route {
                kind: RouteKind::Unicast,
                ifindex,
                ..
            }) => RouteAnswer::Via(ifindex),
            Some(Route {
                kind: RouteKind::Refused,
                ..
            }) => RouteAnswer::Refused,
            Some(Route {
                kind: RouteKind::Local,
                ..
            })
            | None => RouteAnswer::NotForwarded,
        }
    }
}

/// How one interface checks sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceCheck {
    /// `envfence_ebpf::source::{OFF, LOOSE, STRICT}`.
    pub mode: u8,
    /// Strict: the peer's addresses are accepted too.
    pub trust_peer: bool,
}

impl IfaceCheck {
    /// An interface the datapath has no setting for: strict by routes
    /// alone (fail closed).
    pub const UNCONFIGURED: IfaceCheck = IfaceCheck {
        mode: source::STRICT,
        trust_peer: false,
    };
}

/// Everything the check depends on, for a whole node.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub routes: Routes,
    /// Settings per ifindex (missing: [`IfaceCheck::UNCONFIGURED`]).
    pub ifaces: BTreeMap<u32, IfaceCheck>,
    /// Interfaces that do not forward IPv4 / IPv6.
    pub no_forwarding_v4: BTreeSet<u32>,
    pub no_forwarding_v6: BTreeSet<u32>,
    /// Peer addresses per interface (IPv4 ones as IPv4).
    pub peers: BTreeSet<(u32, IpAddr)>,
}

/// What the check found: a `envfence_ebpf::source` result, and where the
/// route to the source leaves (0: no route, or not asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFound {
    pub result: u8,
    pub route_ifindex: u32,
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
pub fn unmapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Sources whose scope decides without any route: `Some(result)`, or None
/// (ask the routes). `src` and `dst` as the check sees them ([`unmapped`]).
pub fn scope_rule(src: IpAddr, dst: IpAddr) -> Option<u8> {
    // A group of the source's own family: an IPv4 source towards an IPv6
    // group (or the reverse) is no link-scope exchange.
    let to_group = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(d)) => d.is_multicast() || d.is_broadcast(),
        (IpAddr::V6(_), IpAddr::V6(d)) => d.is_multicast(),
        _ => false,
    };
    match src {
        IpAddr::V4(s) => {
            if s.is_unspecified() {
                Some(if to_group {
                    source::OK_LINK_SCOPE
                } else {
                    source::MARTIAN
                })
            } else if s.is_multicast() || s.is_broadcast() || s.is_loopback() {
                Some(source::MARTIAN)
            } else {
                None
            }
        }
        IpAddr::V6(s) => {
            let link_local = |a: std::net::Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
            // An IPv6 destination when the source is IPv6 (a mapped
            // destination with an IPv6 source is a global destination).
            let dst_link_local = matches!(dst, IpAddr::V6(d) if link_local(d));
            if s.is_unspecified() {
                Some(if to_group {
                    source::OK_LINK_SCOPE
                } else {
                    source::MARTIAN
                })
            } else if s.is_multicast() || s.is_loopback() {
                Some(source::MARTIAN)
            } else if link_local(s) {
                Some(if to_group || dst_link_local {
                    source::OK_LINK_SCOPE
                } else {
                    source::MARTIAN
                })
            } else {
                None
            }
        }
    }
}

/// The result of a routed check: the route's answer under `mode` on
/// `ifindex`, then (strict, refused, `trust_peer`) the peer set.
pub fn decide(
    mode: u8,
    trust_peer: bool,
    ifindex: u32,
    answer: RouteAnswer,
    is_peer: bool,
) -> SourceFound {
    let found = |result, route_ifindex| SourceFound {
        result,
        route_ifindex,
    };
    let strict = mode == source::STRICT;
    let by_route = match answer {
        RouteAnswer::Via(out) if !strict || out == ifindex => found(source::OK_ROUTE, out),
        RouteAnswer::Via(out) => found(source::OTHER_INTERFACE, out),
        RouteAnswer::ForwardingDisabled if !strict => found(source::OK_UNVERIFIED, 0),
        RouteAnswer::ForwardingDisabled => found(source::FORWARDING_DISABLED, 0),
        RouteAnswer::Refused => found(source::NO_ROUTE, 0),
        RouteAnswer::NotForwarded => found(source::NOT_FORWARDABLE, 0),
    };
    if strict && trust_peer && is_peer && !source::accepted(by_route.result) {
        return found(source::OK_PEER, by_route.route_ifindex);
    }
    by_route
}

impl Node {
    /// The settings of `ifindex`.
    pub fn iface(&self, ifindex: u32) -> IfaceCheck {
        self.ifaces
            .get(&ifindex)
            .copied()
            .unwrap_or(IfaceCheck::UNCONFIGURED)
    }

    /// The check of a packet from `src` to `dst` entering `ifindex`; None
    /// when the interface's mode is `off`.
    pub fn check(&self, ifindex: u32, src: IpAddr, dst: IpAddr) -> Option<SourceFound> {
        let c = self.iface(ifindex);
        if c.mode == source::OFF {
            return None;
        }
        let src = unmapped(src);
        // The destination is unmapped only with the source: a mapped
        // destination of a native IPv6 source stays IPv6.
        let dst = if src.is_ipv4() { unmapped(dst) } else { dst };
        if let Some(result) = scope_rule(src, dst) {
            return Some(SourceFound {
                result,
                route_ifindex: 0,
            });
        }
        let forwarding = match src {
            IpAddr::V4(_) => !self.no_forwarding_v4.contains(&ifindex),
            IpAddr::V6(_) => !self.no_forwarding_v6.contains(&ifindex),
        };
        let answer = self.routes.answer(src, forwarding);
        let is_peer = self.peers.contains(&(ifindex, src));
        Some(decide(c.mode, c.trust_peer, ifindex, answer, is_peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node() -> Node {
        let r = |net: &str, kind, ifindex| Route {
            net: net.parse().unwrap(),
            kind,
            ifindex,
        };
        let mut n = Node {
            routes: Routes::new([
                r("10.10.0.0/16", RouteKind::Unicast, 3),
                r("10.10.1.0/24", RouteKind::Unicast, 2),
                r("10.10.1.9/32", RouteKind::Local, 0),
                r("10.20.0.0/16", RouteKind::Refused, 0),
                r("fd00::/16", RouteKind::Unicast, 2),
            ]),
            ..Node::default()
        };
        n.ifaces.insert(
            2,
            IfaceCheck {
                mode: source::STRICT,
                trust_peer: true,
            },
        );
        n.ifaces.insert(
            4,
            IfaceCheck {
                mode: source::LOOSE,
                trust_peer: false,
            },
        );
        n.ifaces.insert(
            5,
            IfaceCheck {
                mode: source::OFF,
                trust_peer: false,
            },
        );
        n.peers.insert((2, ip("10.10.2.5")));
        n.no_forwarding_v4.insert(4);
        n
    }

    #[test]
    fn longest_prefix_and_local_first() {
        let n = node();
        assert_eq!(n.routes.answer(ip("10.10.1.2"), true), RouteAnswer::Via(2));
        assert_eq!(n.routes.answer(ip("10.10.2.2"), true), RouteAnswer::Via(3));
        assert_eq!(
            n.routes.answer(ip("10.10.1.9"), true),
            RouteAnswer::NotForwarded
        );
        assert_eq!(n.routes.answer(ip("10.20.1.1"), true), RouteAnswer::Refused);
        assert_eq!(
            n.routes.answer(ip("192.0.2.1"), true),
            RouteAnswer::NotForwarded
        );
    }

    #[test]
    fn each_result() {
        use source::*;
        let n = node();
        // (interface, source, destination, result; None: not checked).
        let cases: &[(u32, &str, &str, Option<u8>)] = &[
            (2, "10.10.1.2", "10.30.1.2", Some(OK_ROUTE)),
            (2, "::ffff:10.10.1.2", "::ffff:10.30.1.2", Some(OK_ROUTE)),
            (2, "10.10.3.3", "10.30.1.2", Some(OTHER_INTERFACE)),
            (2, "10.10.2.5", "10.30.1.2", Some(OK_PEER)),
            // Unconfigured: strict, peers not trusted.
            (9, "10.10.2.5", "10.30.1.2", Some(OTHER_INTERFACE)),
            (2, "10.20.1.1", "10.30.1.2", Some(NO_ROUTE)),
            (2, "10.10.1.9", "10.30.1.2", Some(NOT_FORWARDABLE)),
            (4, "10.10.3.3", "10.30.1.2", Some(OK_UNVERIFIED)),
            (4, "fd00::1", "fd00::2", Some(OK_ROUTE)),
            (5, "10.20.1.1", "10.30.1.2", None),
            (2, "0.0.0.0", "255.255.255.255", Some(OK_LINK_SCOPE)),
            (2, "0.0.0.0", "10.10.1.2", Some(MARTIAN)),
            (2, "127.0.0.1", "10.10.1.2", Some(MARTIAN)),
            (2, "fe80::1", "ff02::1", Some(OK_LINK_SCOPE)),
            (2, "fe80::1", "fe80::2", Some(OK_LINK_SCOPE)),
            (2, "fe80::1", "fd00::2", Some(MARTIAN)),
            (2, "::1", "fd00::2", Some(MARTIAN)),
            (2, "::ffff:0.0.0.0", "ff02::1", Some(MARTIAN)),
            (
                2,
                "::ffff:0.0.0.0",
                "::ffff:255.255.255.255",
                Some(OK_LINK_SCOPE),
            ),
        ];
        for &(ifindex, src, dst, want) in cases {
            let got = n.check(ifindex, ip(src), ip(dst)).map(|f| f.result);
            assert_eq!(got, want, "{src} -> {dst} on {ifindex}");
        }
    }
}
