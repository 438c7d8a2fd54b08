//! A route lab for the differential suite: a node namespace with seven
//! veths whose source checks, forwarding and routes differ, the same node
//! stated as the reference's input ([`rpf::Node`]), and the loop that sends
//! generated frames in through a different interface each time.
//!
//! The routes cover the generator's address pools (tests/src/gen.rs) with
//! nested prefixes through different interfaces, blackhole, unreachable and
//! prohibit routes, a local address, and gaps with no route at all, so that
//! every result of the check is met; the table below is what both sides
//! get: `ip` configures the kernel from it, and the reference reads it as
//! written (it never reads the kernel's routes back).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use envfence::policy::rpf::{self, IfaceCheck, Route, RouteKind, Routes};
use envfence::policy::{SourceCheck, SourceMode};
use envfence_ebpf::source;
use ipnet::IpNet;

use super::diff::{outcome_classes, Checked, Engine, Options, Report};
use super::{seeded, Draw as _, Gen, Rng};
use crate::fixture::{env_host, env_net, pod_addr};
use crate::lab::Family;
use crate::netns::{self, PREFIX};
use crate::packet::{ip_frame, Packet};

/// One interface of the node: its name, check and forwarding.
struct Iface {
    name: &'static str,
    /// None: no setting written (the datapath's default, strict by routes).
    check: Option<(SourceMode, bool)>,
    forwarding_v4: bool,
    forwarding_v6: bool,
}

const fn iface(
    name: &'static str,
    check: Option<(SourceMode, bool)>,
    forwarding_v4: bool,
    forwarding_v6: bool,
) -> Iface {
    Iface {
        name,
        check,
        forwarding_v4,
        forwarding_v6,
    }
}

use SourceMode::{Loose, Off, Strict};

const IFACES: &[Iface] = &[
    iface("efr0", Some((Strict, true)), true, true),
    iface("efr1", Some((Strict, false)), true, true),
    iface("efr2", Some((Loose, false)), true, true),
    iface("efr3", Some((Off, false)), true, true),
    iface("efr4", None, true, true),
    iface("efr5", Some((Strict, true)), false, false),
    iface("efr6", Some((Loose, false)), false, true),
];

/// Where a route lab prefix sits in an environment of the example policy
/// ([`env_net`]), in each family.
#[derive(Clone, Copy)]
enum At {
    /// The environment's network.
    Env,
    /// Pod `n`'s /24 (IPv4) or /48 (IPv6), as [`pod_addr`] lays them out.
    Pod(u8),
    /// Pod `n`'s address alone.
    Host(u8),
}

use At::{Env, Host, Pod};

/// (environment, prefix, what, interface), in both families: `dev`
/// routes, `blackhole` / `unreachable` / `prohibit` routes, and `local`
/// addresses (an address on the interface).
const ROUTES: &[(&str, At, &str, &str)] = &[
    ("production", Pod(1), "dev", "efr0"),
    ("production", Env, "dev", "efr1"),
    ("production", Host(3), "local", "efr1"),
    ("test", Pod(1), "dev", "efr2"),
    ("test", Env, "dev", "efr0"),
    ("test", Pod(3), "blackhole", ""),
    ("staging", Env, "dev", "efr4"),
    ("staging", Pod(2), "dev", "efr5"),
    ("staging", Pod(3), "prohibit", ""),
    ("dev", Env, "dev", "efr6"),
    ("dev", Pod(3), "unreachable", ""),
    ("ops", Env, "dev", "efr3"),
];

/// The documentation prefixes (in no environment) and their interfaces,
/// IPv4 then IPv6.
const WORLD: [(&str, &str); 2] = [("192.0.2.0/24", "efr2"), ("2001:db8::/32", "efr5")];

/// The prefix of `at` in `env`'s network of `family`.
fn prefix(env: &str, at: At, family: Family) -> Result<IpNet> {
    let (pod_bits, host_len) = match family {
        Family::V4 => (8, 32),
        Family::V6 => (80, 128),
    };
    let (addr, len) = match at {
        Env => return Ok(env_net(env, family)),
        Pod(n) => (
            env_host(env, family, u128::from(n) << pod_bits),
            host_len - pod_bits,
        ),
        Host(n) => (pod_addr(env, family, n), host_len),
    };
    IpNet::new(addr, len).with_context(|| format!("{addr}/{len}"))
}

/// (interface, address): addresses configured on the far end of a veth;
/// only interfaces that trust their peer accept them.
fn peer_addresses() -> [(&'static str, IpAddr); 9] {
    use Family::{V4, V6};
    [
        ("efr0", pod_addr("production", V4, 2)),
        ("efr0", pod_addr("test", V4, 3)),
        ("efr0", IpAddr::from([192, 0, 2, 2])),
        ("efr0", pod_addr("production", V6, 2)),
        ("efr0", pod_addr("test", V6, 3)),
        ("efr1", pod_addr("production", V4, 1)),
        ("efr1", pod_addr("production", V6, 1)),
        ("efr5", pod_addr("staging", V4, 2)),
        // Host 3 of test pod 1's /24, next to the pod.
        ("efr5", env_host("test", V4, 0x0103)),
    ]
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The route lab: a node namespace and a namespace holding the veths' far
/// ends, removed again on drop.
pub struct RouteLab {
    pub node_ns: String,
    peer_ns: String,
    /// The interfaces' ifindexes in the node namespace, in [`IFACES`] order.
    pub ifindexes: Vec<u32>,
    /// The same node as the reference sees it.
    pub node: rpf::Node,
}

impl Drop for RouteLab {
    fn drop(&mut self) {
        for ns in [&self.node_ns, &self.peer_ns] {
            if let Err(e) = netns::delete_namespace(ns) {
                eprintln!("route lab: removing {ns}: {e:#}");
            }
        }
    }
}

impl RouteLab {
    /// Builds the namespaces, veths, forwarding settings and routes. Needs
    /// root.
    pub fn new() -> Result<RouteLab> {
        netns::require_root()?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-r{seq}", std::process::id());
        let mut lab = RouteLab {
            node_ns: format!("{id}-node"),
            peer_ns: format!("{id}-peer"),
            ifindexes: Vec::new(),
            node: rpf::Node::default(),
        };
        netns::ip(&["netns", "add", &lab.node_ns])?;
        netns::ip(&["netns", "add", &lab.peer_ns])?;
        let mut node = vec!["link set lo up".to_owned()];
        let mut peer = vec!["link set lo up".to_owned()];
        for (i, f) in IFACES.iter().enumerate() {
            let (node_ns, peer_ns, name) = (&lab.node_ns, &lab.peer_ns, f.name);
            netns::ip_line(&format!(
                "-n {node_ns} link add {name} type veth peer name efp{i} netns {peer_ns}"
            ))?;
            node.push(format!("link set {} up", f.name));
            peer.push(format!("link set efp{i} up"));
        }
        netns::ip_batch(&lab.peer_ns, &peer)?;
        netns::ip_batch(&lab.node_ns, &node)?;
        lab.configure()?;
        Ok(lab)
    }

    fn configure(&mut self) -> Result<()> {
        let ns = self.node_ns.clone();
        let ifindexes = netns::in_netns(&ns, || -> Result<Vec<u32>> {
            sysctl("net/ipv4/conf/all/forwarding", "1")?;
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
            let mut out = Vec::new();
            for f in IFACES {
                sysctl(
                    &format!("net/ipv4/conf/{}/forwarding", f.name),
                    if f.forwarding_v4 { "1" } else { "0" },
                )?;
                sysctl(
                    &format!("net/ipv6/conf/{}/forwarding", f.name),
                    if f.forwarding_v6 { "1" } else { "0" },
                )?;
                out.push(
                    nix::net::if_::if_nametoindex(f.name)
                        .with_context(|| format!("ifindex of {}", f.name))?,
                );
            }
            Ok(out)
        })??;
        let index_of = |name: &str| -> Result<u32> {
            IFACES
                .iter()
                .position(|f| f.name == name)
                .map(|i| ifindexes[i])
                .with_context(|| format!("no interface {name} in the route lab"))
        };
        let mut lines = Vec::new();
        let mut routes = Vec::new();
        let mut table = Vec::new();
        for (family, (world, world_dev)) in [Family::V4, Family::V6].into_iter().zip(WORLD) {
            for &(env, at, what, dev) in ROUTES {
                table.push((prefix(env, at, family)?, what, dev));
            }
            table.push((world.parse().context("a world prefix")?, "dev", world_dev));
        }
        for (net, what, dev) in table {
            let (line, kind, ifindex) = match what {
                "dev" => (
                    format!("route add {net} dev {dev}"),
                    RouteKind::Unicast,
                    index_of(dev)?,
                ),
                "local" => (
                    // No duplicate address detection: usable at once.
                    format!(
                        "addr add {net} dev {dev}{}",
                        if net.addr().is_ipv6() { " nodad" } else { "" }
                    ),
                    RouteKind::Local,
                    0,
                ),
                refused => (format!("route add {refused} {net}"), RouteKind::Refused, 0),
            };
            lines.push(line);
            routes.push(Route { net, kind, ifindex });
        }
        netns::ip_batch(&self.node_ns, &lines)?;
        let mut node = rpf::Node {
            routes: Routes::new(routes),
            ..rpf::Node::default()
        };
        for (f, &idx) in IFACES.iter().zip(&ifindexes) {
            if let Some((mode, trust_peer)) = f.check {
                node.ifaces.insert(
                    idx,
                    IfaceCheck {
                        mode: mode.as_u8(),
                        trust_peer,
                    },
                );
            }
            if !f.forwarding_v4 {
                node.no_forwarding_v4.insert(idx);
            }
            if !f.forwarding_v6 {
                node.no_forwarding_v6.insert(idx);
            }
        }
        let mut peers = BTreeSet::new();
        for (dev, addr) in peer_addresses() {
            peers.insert((index_of(dev)?, addr));
        }
        node.peers = peers;
        self.ifindexes = ifindexes;
        self.node = node;
        Ok(())
    }

    /// Writes the interfaces' checks and the peer addresses into both of
    /// `engine`'s datapaths.
    pub fn install(&self, engine: &mut Engine) -> Result<()> {
        self.install_into(engine.enforce.datapath_mut())?;
        self.install_into(engine.audit.datapath_mut())
    }

    /// The ifindex of the lab's interface `name` (`efr0` … `efr6`).
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        IFACES
            .iter()
            .position(|f| f.name == name)
            .map(|i| self.ifindexes[i])
    }

    /// Writes the interfaces' checks and the peer addresses into `dp`.
    pub fn install_into(&self, dp: &mut envfence::datapath::Datapath) -> Result<()> {
        for (f, &idx) in IFACES.iter().zip(&self.ifindexes) {
            if let Some((mode, peer_addresses)) = f.check {
                dp.set_source_check(
                    idx,
                    SourceCheck {
                        mode,
                        peer_addresses,
                        entry: None,
                    },
                )?;
            }
            let addrs: Vec<IpAddr> = self
                .node
                .peers
                .iter()
                .filter(|(i, _)| *i == idx)
                .map(|(_, a)| *a)
                .collect();
            if !addrs.is_empty() {
                dp.set_peer_addresses(idx, &addrs)?;
            }
        }
        Ok(())
    }
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).with_context(|| format!("writing {value} to {full}"))
}

/// Coverage classes of the source check (what [`RouteLab`] must produce):
/// `source-<result>` for each result of `envfence_ebpf::source`.
pub fn source_class(found: Option<rpf::SourceFound>) -> &'static str {
    match found.map(|f| f.result) {
        None => "source-not-checked",
        Some(source::OK_ROUTE) => "source-route",
        Some(source::OK_PEER) => "source-peer-address",
        Some(source::OK_LINK_SCOPE) => "source-link-scope",
        Some(source::OK_UNVERIFIED) => "source-unverified",
        Some(source::OTHER_INTERFACE) => "source-route-via-other-interface",
        Some(source::NO_ROUTE) => "source-no-route",
        Some(source::NOT_FORWARDABLE) => "source-no-unicast-route",
        Some(source::FORWARDING_DISABLED) => "source-forwarding-disabled",
        Some(source::MARTIAN) => "source-martian",
        Some(_) => "source-unknown",
    }
}

/// Every class [`source_class`] returns for a known result, and `spoofed`.
pub const SOURCE_CLASSES: &str =
    "source-not-checked source-route source-peer-address source-link-scope \
    source-unverified source-route-via-other-interface source-no-route \
    source-no-unicast-route source-forwarding-disabled source-martian spoofed";

/// The differential run on the route lab: `opts.cases` generated frames,
/// each entering one of the lab's interfaces (drawn from the seed),
/// compared with the kernel's routes in the loop. Call it on a thread in
/// `lab.node_ns` (see [`netns::in_netns`]).
pub fn run_on_routes(engine: &Engine, lab: &RouteLab, opts: &Options) -> Result<Report> {
    let mut gen = Gen::new(opts.seed);
    let mut pick = seeded(opts.seed ^ 0x05ee_d0f1_face);
    let mut report = Report {
        seed: opts.seed,
        ..Report::default()
    };
    let start = Instant::now();
    let egress_every = opts.egress_every.max(1);
    while report.cases < opts.cases {
        let n = report.generated;
        report.generated += 1;
        // One case in sixteen is a scope case: the generator's addresses
        // rarely pair a link-scope source with a group destination.
        let (frame, kind) = if n % 16 == 15 {
            (scope_frame(&mut pick), "scope")
        } else {
            let case = gen.case();
            (case.frame, case.kind.name())
        };
        let idx = pick.pick(&lab.ifindexes);
        let egress = n.is_multiple_of(egress_every);
        match engine.check(&frame, egress, false, Some((&lab.node, idx)), 0)? {
            Checked::Refused => {
                report.skipped += 1;
                continue;
            }
            Checked::Agreed(outcome) => {
                for c in outcome_classes(&outcome) {
                    *report.classes.entry(c).or_default() += 1;
                }
                if let Some(class) =
                    checked_class(&frame, &engine.enforce.policy, &lab.node, idx, &outcome)
                {
                    *report.classes.entry(class).or_default() += 1;
                }
            }
            Checked::Mismatched(ms) => {
                report.mismatched_cases += 1;
                for mut m in ms {
                    m.origin = format!("routes seed {:#x} case {n} ({kind})", opts.seed);
                    if report.mismatches.len() < opts.keep {
                        report.mismatches.push(m);
                    }
                }
            }
        }
        report.cases += 1;
        report.kernel_runs += if egress { 4 } else { 2 };
        *report.by_kind.entry(kind).or_default() += 1;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// A UDP datagram whose source or destination has a scope of its own
/// (unspecified, link-local, loopback, multicast, broadcast, IPv4-mapped
/// forms of them), towards a group, a link-local or a unicast address.
fn scope_frame(rng: &mut Rng) -> Vec<u8> {
    const V4_SRC: &str = "0.0.0.0 127.0.0.1 224.0.0.5 255.255.255.255 10.10.1.2 169.254.1.1";
    const V4_DST: &str = "255.255.255.255 224.0.0.251 239.1.2.3 10.10.1.2 10.30.1.255";
    const V6_SRC: &str = ":: fe80::1 febf::2 fec0::1 ::1 ff02::1 \
        ::ffff:0.0.0.0 ::ffff:127.0.0.1 ::ffff:10.10.1.2 fd00:10:1::2";
    const V6_DST: &str = "ff02::1 ff02::1:ff00:2 fe80::2 fd00:10:1::2 \
        ::ffff:255.255.255.255 ::ffff:224.0.0.251 ::ffff:10.30.1.2";
    let (srcs, dsts) = if rng.chance(40) {
        (V4_SRC, V4_DST)
    } else {
        (V6_SRC, V6_DST)
    };
    let (srcs, dsts): (Vec<&str>, Vec<&str>) = (
        srcs.split_whitespace().collect(),
        dsts.split_whitespace().collect(),
    );
    let parse = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 4]));
    let (src, dst) = (parse(rng.pick(&srcs)), parse(rng.pick(&dsts)));
    let sport = rng.u16();
    ip_frame(
        src,
        dst,
        envfence_ebpf::proto::UDP,
        Packet::data(b"scope").udp(sport, 5353),
    )
}

/// The source-check class of a judged or spoofed frame (None: the frame
/// was not read up to its addresses, nothing checked).
fn checked_class(
    frame: &[u8],
    policy: &envfence::policy::CompiledPolicy,
    node: &rpf::Node,
    ifindex: u32,
    outcome: &envfence::policy::reference::Outcome,
) -> Option<&'static str> {
    use envfence::policy::reference::Outcome;
    match outcome {
        Outcome::Spoofed(s) => Some(source_class(Some(s.found))),
        Outcome::Judged(_) => {
            // The outer addresses, as the check saw them.
            let (src, dst) = crate::oracle::Oracle::of(policy)
                .ok()?
                .outer_addresses(frame)?;
            Some(source_class(node.check(ifindex, src, dst)))
        }
        _ => None,
    }
}
