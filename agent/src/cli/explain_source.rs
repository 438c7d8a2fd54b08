//! `envfence explain SRC DST --iif IFACE`: would the source check accept
//! SRC entering IFACE, and why. The interface's mode and peer addresses
//! come from the pinned maps (what the datapath uses), the route from the
//! kernel's routing table of this network namespace (rtnetlink, the table
//! the datapath's `bpf_fib_lookup` asks), and the decision from the same
//! rules the differential suite holds equal to the kernel's
//! (`policy::rpf`).

use std::net::IpAddr;

use anyhow::Context as _;
use envfence_ebpf::source;
use serde::Serialize;

use crate::datapath::inspect::PinnedState;
use crate::netwatch::route_query;
use crate::policy::rpf::{self, IfaceCheck, RouteAnswer};

/// What the source check says, for `explain -o json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SourceAnswer {
    pub interface: String,
    pub ifindex: u32,
    /// Whether envfence is attached to the interface (else nothing checks
    /// packets entering it; the rest says what the check would answer).
    pub attached: bool,
    /// `strict`, `loose` or `off`.
    pub mode: String,
    /// Whether a strict check accepts the peer's addresses.
    pub peer_addresses: bool,
    /// Whether the interface has a setting in the datapath (else strict by
    /// routes alone: fail closed).
    pub configured: bool,
    /// The check's result (`route`, `peer-address`, ... as in events).
    pub result: String,
    pub accepted: bool,
    /// The result's code (`envfence_ebpf::source`).
    #[serde(skip)]
    pub code: u8,
    /// The route to the source, in `ip route` words (None: not asked).
    pub route: Option<String>,
    /// The interface that route leaves through.
    pub route_interface: Option<String>,
    /// Why, in words.
    pub why: String,
}

fn if_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("ifindex {ifindex}"))
}

/// Whether `iface` forwards packets of `src`'s family (the FIB helper
/// answers only for interfaces that do).
fn forwards(iface: &str, src: IpAddr) -> anyhow::Result<bool> {
    let fam = if src.is_ipv4() { "ipv4" } else { "ipv6" };
    let path = format!("/proc/sys/net/{fam}/conf/{iface}/forwarding");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim() != "0")
}

/// The source check of `src` → `dst` entering `iface` under policy `slot`.
pub fn answer(
    state: &PinnedState,
    slot: u32,
    iface: &str,
    src: IpAddr,
    dst: IpAddr,
) -> anyhow::Result<SourceAnswer> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| {
        anyhow::anyhow!(
            "--iif {iface}: no such interface in this network namespace ({e}); run explain in \
             the node's namespace (in Kubernetes: kubectl exec into the agent's pod)"
        )
    })?;
    let attached = state.attached()?.contains(&ifindex);
    let setting = state.source_check(ifindex, slot)?;
    let check = setting.unwrap_or(IfaceCheck::UNCONFIGURED);
    let mut out = SourceAnswer {
        interface: iface.to_owned(),
        ifindex,
        attached,
        mode: source::mode_name(check.mode).to_owned(),
        peer_addresses: check.trust_peer,
        configured: setting.is_some(),
        result: String::new(),
        accepted: true,
        code: source::NOT_CHECKED,
        route: None,
        route_interface: None,
        why: String::new(),
    };
    let finish = |mut out: SourceAnswer, result: u8, why: String| {
        out.result = source::result_name(result).to_owned();
        out.accepted = source::accepted(result);
        out.code = result;
        out.why = why;
        out
    };
    if check.mode == source::OFF {
        let why = format!("the policy's source_check turns the check off for {iface}");
        return Ok(finish(out, source::NOT_CHECKED, why));
    }
    let s = rpf::unmapped(src);
    let d = if s.is_ipv4() { rpf::unmapped(dst) } else { dst };
    if let Some(result) = rpf::scope_rule(s, d) {
        let why = if result == source::OK_LINK_SCOPE {
            format!("{s} -> {d} never leaves the link (no route can verify it; accepted)")
        } else {
            format!("no honest packet carries {s} as its source towards {d}")
        };
        return Ok(finish(out, result, why));
    }
    let route = route_query::route_for(s)?;
    let forwarding = forwards(iface, s)?;
    let answer = if forwarding {
        route.answer
    } else {
        RouteAnswer::ForwardingDisabled
    };
    let is_peer = state.is_peer(ifindex, s)?;
    let found = rpf::decide(check.mode, check.trust_peer, ifindex, answer, is_peer);
    out.route = Some(route.text.clone());
    if found.route_ifindex != 0 {
        out.route_interface = Some(if_name(found.route_ifindex));
    }
    let r = &route.text;
    let why = match found.result {
        source::OK_ROUTE if check.mode == source::STRICT => {
            format!("the route to {s} ({r}) leaves through {iface}")
        }
        source::OK_ROUTE => format!("loose: {s} is routable ({r})"),
        source::OK_PEER => format!(
            "{s} is an address of {iface}'s peer (the far end of the veth); the route alone \
             ({r}) would not accept it"
        ),
        source::OK_UNVERIFIED => format!(
            "{iface} does not forward, so the kernel's FIB cannot answer: a loose check \
             passes it unverified (counted as source_unverified)"
        ),
        source::OTHER_INTERFACE => format!(
            "the route to {s} ({r}) leaves through {}, not {iface}",
            out.route_interface
                .as_deref()
                .unwrap_or("another interface")
        ),
        source::NO_ROUTE => format!("the route to {s} is {r}"),
        source::NOT_FORWARDABLE => {
            format!("the node has no unicast route it would forward to {s} ({r})")
        }
        source::FORWARDING_DISABLED => format!(
            "{iface} does not forward, so the kernel's FIB cannot answer: strict refuses \
             (fail closed)"
        ),
        _ => format!("route {r}"),
    };
    Ok(finish(out, found.result, why))
}

/// The answer as text lines (label, value) for `explain`'s table.
pub fn lines(a: &SourceAnswer, audit: bool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let setting = if a.configured {
        format!(
            "{}{}",
            a.mode,
            if a.mode == "strict" && a.peer_addresses {
                " (peer addresses accepted)"
            } else {
                ""
            }
        )
    } else {
        "strict by routes alone (no setting for this interface: fail closed)".to_owned()
    };
    out.push((
        "interface",
        format!(
            "{} (ifindex {}): source check {setting}",
            a.interface, a.ifindex
        ),
    ));
    let verdict = if a.accepted {
        format!("{}: accepted, {}", a.result, a.why)
    } else {
        format!(
            "{}: REFUSED, {}; the packet is spoofed: {} (counted under world -> the \
             destination's environment, reported with rule source-check)",
            a.result,
            a.why,
            if audit {
                "passed and reported (audit mode)"
            } else {
                "dropped"
            }
        )
    };
    out.push(("source check", verdict));
    if !a.attached {
        out.push((
            "note",
            format!(
                "envfence is not attached to {}: nothing checks packets entering it (above is \
                 what the check would say)",
                a.interface
            ),
        ));
    }
    out
}
