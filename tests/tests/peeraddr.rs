//! The peer address watcher (`envfence::netwatch::peers`) against the real
//! kernel, in a lab: a node namespace joined by veths to two pod namespaces.
//! The watcher runs in the node namespace, fed by the link watcher as the
//! agent will be (a link with a peer is tracked, a removed link untracked),
//! and must follow what `ip` does inside the pods: the initial addresses
//! (IPv4, IPv6, link-local), additions and removals, an address moving from
//! one pod to another, a pod namespace deleted, and a flood into a tiny
//! receive buffer (a resync to the exact final set). It also measures the
//! latency from `ip addr add`/`del` to the event, and proves which
//! capabilities the watcher needs by dropping them from its thread.
//!
//! Needs root (CI runs as root). Every namespace is the lab's
//! (`efl-<pid>-...`), deleted when the lab is dropped, also on panic; a
//! killed run's namespaces are swept by the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use envfence::netwatch::peers::{PeerError, PeerEvent, PeerWatcher};
use envfence::netwatch::{LinkEvent, LinkWatcher, PeerRef};
use envfence_tests::fixture::serial;
use envfence_tests::lab::probe::median_max;
use envfence_tests::lab::watch::{Feed, NsWatcher};
use envfence_tests::lab::{Lab, PodSpec, POD_IF};
use envfence_tests::netns;

/// Each event must arrive within this of the command that caused it.
const DEADLINE: Duration = Duration::from_secs(1);
/// Changes timed one at a time.
const TIMED: usize = 50;

/// Pods a and b: 10.71.N.2 and fd00:71:N::2 (N = 1, 2).
fn pods() -> Vec<PodSpec> {
    let pod = |name, n: u8| {
        let v6 = Ipv6Addr::new(0xfd00, 0x71, n.into(), 0, 0, 0, 0, 2);
        PodSpec::new(name, Ipv4Addr::new(10, 71, n, 2), v6)
    };
    vec![pod("a", 1), pod("b", 2)]
}

/// The links tracked at the start: name -> (ifindex, peer, addresses).
type Started = BTreeMap<String, (u32, PeerRef, Vec<IpAddr>)>;

/// What `PeerWatcher::new` and then `track` gave.
type Outcome = Result<Result<Vec<IpAddr>, PeerError>, PeerError>;

/// What the watcher thread observed.
#[derive(Debug, Clone)]
enum Seen {
    Peer(PeerEvent),
    Link(LinkEvent),
    /// A link was (re)tracked with these addresses.
    Tracked(u32, Vec<IpAddr>),
}

/// The link watcher and the peer watcher in the node namespace (see
/// [`NsWatcher`]).
type Watcher = NsWatcher<Started, Seen>;

fn start(ns: &str, rcvbuf: Option<usize>) -> Result<(Watcher, Started)> {
    NsWatcher::start(ns, move |feed| watch(feed, rcvbuf))
}

/// What the peer tests ask of the [`Watcher`].
trait PeerWatch {
    fn resyncs(&self) -> usize;
    /// When the first event `want` arrived after position `from`.
    fn arrival(&self, from: usize, want: &PeerEvent) -> Option<Instant>;
    /// Waits for `want` (after position `from`); its arrival time.
    fn expect(&mut self, from: usize, want: &PeerEvent) -> Result<Instant>;
    /// Waits up to `timeout` for an event after position `from` that `is`;
    /// whether one came.
    fn saw(&mut self, from: usize, timeout: Duration, is: impl Fn(&Seen) -> bool) -> Result<bool>;
}

impl PeerWatch for Watcher {
    fn resyncs(&self) -> usize {
        self.count(|s| matches!(s, Seen::Peer(PeerEvent::Resync(_))))
    }

    fn arrival(&self, from: usize, want: &PeerEvent) -> Option<Instant> {
        self.events[from..].iter().find_map(|(at, s)| match s {
            Seen::Peer(e) if e == want => Some(*at),
            _ => None,
        })
    }

    fn expect(&mut self, from: usize, want: &PeerEvent) -> Result<Instant> {
        self.saw(from, DEADLINE, |s| matches!(s, Seen::Peer(e) if e == want))?;
        self.arrival(from, want)
            .with_context(|| format!("no {want:?} within {DEADLINE:?}"))
    }

    fn saw(&mut self, from: usize, timeout: Duration, is: impl Fn(&Seen) -> bool) -> Result<bool> {
        self.wait_for(timeout, |seen| seen[from..].iter().any(|(_, s)| is(s)))
    }
}

/// What one turn of the watcher loop got.
enum Got {
    Peer(Result<PeerEvent, PeerError>),
    Link(Result<LinkEvent, envfence::netwatch::NetwatchError>),
    Idle,
}

/// The watcher thread's body (already in the namespace): the agent's
/// integration in miniature.
async fn watch(feed: Feed<Started, Seen>, rcvbuf: Option<usize>) -> Result<()> {
    // The link dump allocates the pods' nsids; the peer watcher
    // subscribes before any peer is dumped (in track).
    let (mut links, initial) = LinkWatcher::new()?;
    let mut peers = match rcvbuf {
        Some(bytes) => PeerWatcher::with_receive_buffer(bytes)?,
        None => PeerWatcher::new()?,
    };
    let mut tracked: BTreeMap<u32, PeerRef> = BTreeMap::new();
    let mut started = BTreeMap::new();
    let t0 = Instant::now();
    for link in initial {
        if let Some(peer) = link.peer {
            let addrs = peers.track(link.ifindex, peer)?;
            tracked.insert(link.ifindex, peer);
            started.insert(link.name, (link.ifindex, peer, addrs));
        }
    }
    eprintln!(
        "peeraddr: tracking {} peers took {:?} (receive buffer {} bytes)",
        started.len(),
        t0.elapsed(),
        peers.receive_buffer()
    );
    if !feed.started(started) {
        return Ok(());
    }
    while !feed.stopping() {
        if feed.held().await {
            continue;
        }
        // Both `next()`s are cancel-safe.
        let got = tokio::select! {
            e = peers.next() => Got::Peer(e),
            e = links.next() => Got::Link(e),
            _ = tokio::time::sleep(Duration::from_millis(50)) => Got::Idle,
        };
        let seen = match got {
            Got::Idle => continue,
            Got::Peer(e) => Seen::Peer(e.context("PeerWatcher::next")?),
            Got::Link(e) => {
                let event = e.context("LinkWatcher::next")?;
                match &event {
                    LinkEvent::Added(link) => {
                        if let Some(peer) = link.peer {
                            if tracked.get(&link.ifindex) != Some(&peer) {
                                match peers.track(link.ifindex, peer) {
                                    Ok(addrs) => {
                                        tracked.insert(link.ifindex, peer);
                                        feed.event(Seen::Tracked(link.ifindex, addrs));
                                    }
                                    Err(PeerError::PeerGone { .. }) => {}
                                    Err(e) => return Err(e.into()),
                                }
                            }
                        }
                    }
                    LinkEvent::Removed { ifindex, .. } => {
                        peers.untrack(*ifindex);
                        tracked.remove(ifindex);
                    }
                    LinkEvent::Resync(_) => {}
                }
                Seen::Link(event)
            }
        };
        if !feed.event(seen) {
            return Ok(());
        }
    }
    Ok(())
}

/// A consumer's view: tracked ifindex -> addresses.
type View = BTreeMap<u32, BTreeSet<IpAddr>>;

fn view_of(started: &Started) -> View {
    started
        .values()
        .map(|(i, _, a)| (*i, a.iter().copied().collect()))
        .collect()
}

fn apply(view: &mut View, seen: &Seen) {
    match seen {
        Seen::Peer(PeerEvent::Added { ifindex, addr }) => {
            view.entry(*ifindex).or_default().insert(*addr);
        }
        Seen::Peer(PeerEvent::Removed { ifindex, addr }) => {
            if let Some(set) = view.get_mut(ifindex) {
                set.remove(addr);
            }
        }
        Seen::Peer(PeerEvent::Resync(all)) => {
            *view = all
                .iter()
                .map(|(i, a)| (*i, a.iter().copied().collect()))
                .collect();
        }
        Seen::Tracked(ifindex, addrs) => {
            view.insert(*ifindex, addrs.iter().copied().collect());
        }
        Seen::Link(LinkEvent::Removed { ifindex, .. }) => {
            view.remove(ifindex);
        }
        Seen::Link(_) => {}
    }
}

/// Every `addr_info` entry of `pod0` in `ns` according to `ip -j`.
fn ip_addr_info(ns: &str) -> Result<Vec<serde_json::Value>> {
    let out = netns::ip_output(&["-n", ns, "-j", "addr", "show", "dev", POD_IF])?;
    let json: serde_json::Value =
        serde_json::from_str(&out).context("parsing `ip -j addr` output")?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .collect())
}

/// The addresses of `pod0` in `ns` according to `ip -j`.
fn ip_addrs(ns: &str) -> Result<BTreeSet<IpAddr>> {
    let mut addrs = BTreeSet::new();
    for info in ip_addr_info(ns)? {
        let local = info["local"]
            .as_str()
            .with_context(|| format!("addr_info without local: {info}"))?;
        addrs.insert(local.parse().with_context(|| format!("address {local}"))?);
    }
    Ok(addrs)
}

/// The boolean `flag` (`tentative`, `deprecated`) of `addr` on pod0 in
/// `ns` per `ip -j` (`None` when absent, as `ip` omits false flags).
fn ip_flag(ns: &str, addr: IpAddr, flag: &str) -> Result<Option<bool>> {
    let info = ip_addr_info(ns)?
        .into_iter()
        .find(|info| info["local"].as_str() == Some(addr.to_string().as_str()))
        .with_context(|| format!("{addr} is not on {POD_IF} in {ns}"))?;
    Ok(info[flag].as_bool())
}

fn peer_added(ifindex: u32, addr: IpAddr) -> PeerEvent {
    PeerEvent::Added { ifindex, addr }
}

fn peer_removed(ifindex: u32, addr: IpAddr) -> PeerEvent {
    PeerEvent::Removed { ifindex, addr }
}

/// `ip -n NS addr VERB ADDR [ARGS] dev pod0`: `args` = `[VERB, ADDR, ARGS..]`.
fn pod_ip_addr(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns, "addr", args[0], args[1], "dev", POD_IF];
    full.extend_from_slice(&args[2..]);
    netns::ip(&full)
}

fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Waits until pod0 in `ns` has its link-local address (the kernel adds it
/// once the pair has a carrier).
fn wait_link_local(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ip_addrs(ns)?.iter().any(is_link_local) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{POD_IF} in {ns} got no link-local address within 5 s")
}

fn summary(what: &str, all: Vec<Duration>) {
    let (median, max) = median_max(&all);
    eprintln!(
        "peeraddr: {what}: {} events, median {median:?}, max {max:?}",
        all.len()
    );
}

fn tracked_ifindex(started: &Started, name: &str) -> u32 {
    started
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not tracked: {started:?}"))
        .0
}

/// The lab of [`pods`] with its link-local addresses in place, and a
/// watcher in its node namespace. Destructure it binding `lab` first, so
/// the watcher (dropped earlier) stops before the lab goes.
struct Setup {
    watcher: Watcher,
    started: Started,
    node: String,
    ns_a: String,
    ns_b: String,
    lab: Lab,
}

impl Setup {
    fn new(rcvbuf: Option<usize>) -> Result<Setup> {
        let lab = Lab::new(&pods())?;
        let node = lab.node_ns().to_string();
        let (ns_a, ns_b) = (lab.ns("a")?.to_string(), lab.ns("b")?.to_string());
        wait_link_local(&ns_a)?;
        wait_link_local(&ns_b)?;
        let (watcher, started) = start(&node, rcvbuf)?;
        Ok(Setup {
            watcher,
            started,
            node,
            ns_a,
            ns_b,
            lab,
        })
    }
}

#[test]
fn peer_addresses_follow_the_pods() -> Result<()> {
    let _serial = serial();
    let Setup {
        lab,
        node,
        ns_a,
        ns_b,
        mut watcher,
        started,
    } = Setup::new(None)?;

    // The initial dump: every address of each pod, v4, v6 and link-local,
    // on the right veth; nothing else is tracked (the node has only lo).
    assert_eq!(
        started.keys().collect::<Vec<_>>(),
        ["veth-a", "veth-b"],
        "{started:?}"
    );
    let (a, b) = (
        tracked_ifindex(&started, "veth-a"),
        tracked_ifindex(&started, "veth-b"),
    );
    for (name, ns, pod) in [("veth-a", &ns_a, "a"), ("veth-b", &ns_b, "b")] {
        let (_, peer, addrs) = &started[name];
        assert!(peer.nsid.is_some(), "{name}'s peer is in another namespace");
        let got: BTreeSet<IpAddr> = addrs.iter().copied().collect();
        let spec = lab.pod(pod)?;
        assert!(got.contains(&IpAddr::V4(spec.ipv4())), "{name}: {got:?}");
        assert!(got.contains(&IpAddr::V6(spec.ipv6())), "{name}: {got:?}");
        assert!(got.iter().any(is_link_local), "{name}: {got:?}");
        assert_eq!(got, ip_addrs(ns)?, "{name}: the dump is what `ip` shows");
    }
    // The two pods' interfaces may well have the same ifindex in their own
    // namespaces: the nsid tells them apart.
    let (peer_a, peer_b) = (started["veth-a"].1, started["veth-b"].1);
    assert_ne!(peer_a.nsid, peer_b.nsid, "{peer_a:?} {peer_b:?}");
    eprintln!("peeraddr: peers {peer_a:?} and {peer_b:?}");
    let mut view = view_of(&started);

    // Add and remove, one at a time, timed; IPv4 and IPv6 alternately.
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut ip_took = Vec::new();
    let mut after_exit = Vec::new();
    for i in 0..TIMED {
        let (addr, arg) = if i % 2 == 0 {
            let v4 = Ipv4Addr::new(10, 71, 1, 100 + i as u8);
            (IpAddr::V4(v4), format!("{v4}/32"))
        } else {
            let v6 = Ipv6Addr::new(0xfd00, 0x71, 1, 0, 0, 0, 0x77, i as u16);
            (IpAddr::V6(v6), format!("{v6}/128"))
        };
        for (args, want, took) in [
            (&["add", &arg, "nodad"][..], peer_added(a, addr), &mut added),
            (&["del", &arg], peer_removed(a, addr), &mut removed),
        ] {
            let from = watcher.events.len();
            let t0 = Instant::now();
            pod_ip_addr(&ns_a, args)?;
            let done = Instant::now();
            ip_took.push(done - t0);
            let at = watcher.expect(from, &want)?;
            took.push(at.saturating_duration_since(t0));
            after_exit.push(at.saturating_duration_since(done));
        }
    }
    summary("Added after the start of `ip addr add`", added);
    summary("Removed after the start of `ip addr del`", removed);
    summary("the `ip` command itself", ip_took);
    summary("event after `ip` exited (0 when it came first)", after_exit);

    // A tentative IPv6 address (duplicate address detection running) and a
    // deprecated one count as configured, from the first notification; the
    // end of DAD changes nothing.
    netns::in_netns(&ns_a, || {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{POD_IF}/accept_dad"), "1")
    })??;
    let from = watcher.events.len();
    let tentative: IpAddr = "fd00:71:1::7e".parse()?;
    pod_ip_addr(&ns_a, &["add", "fd00:71:1::7e/128"])?;
    watcher.expect(from, &peer_added(a, tentative))?;
    assert_eq!(
        ip_flag(&ns_a, tentative, "tentative")?,
        Some(true),
        "{tentative} is still tentative when its Added has arrived"
    );
    let deprecated: IpAddr = "fd00:71:1::de".parse()?;
    pod_ip_addr(
        &ns_a,
        &["add", "fd00:71:1::de/128", "nodad", "preferred_lft", "0"],
    )?;
    watcher.expect(from, &peer_added(a, deprecated))?;
    assert_eq!(ip_flag(&ns_a, deprecated, "deprecated")?, Some(true));
    // DAD takes a second (one probe, RetransTimer 1 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while ip_flag(&ns_a, tentative, "tentative")? == Some(true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ip_flag(&ns_a, tentative, "tentative")?,
        None,
        "DAD of {tentative} completed"
    );
    watcher.wait_quiet(Duration::from_millis(200))?;
    let after: Vec<&Seen> = watcher.events[from..]
        .iter()
        .map(|(_, s)| s)
        .filter(|s| matches!(s, Seen::Peer(_)))
        .collect();
    assert_eq!(
        after.len(),
        2,
        "only the two Added, nothing when DAD ends: {after:?}"
    );

    // An address moves from pod a to pod b, as when a pod is deleted and
    // its IP given to a new one: Removed on a's veth, then Added on b's.
    let moving: IpAddr = "10.71.9.9".parse()?;
    pod_ip_addr(&ns_a, &["add", "10.71.9.9/32"])?;
    watcher.expect(0, &peer_added(a, moving))?;
    let from = watcher.events.len();
    pod_ip_addr(&ns_a, &["del", "10.71.9.9/32"])?;
    pod_ip_addr(&ns_b, &["add", "10.71.9.9/32"])?;
    let gone = watcher.expect(from, &peer_removed(a, moving))?;
    let came = watcher.expect(from, &peer_added(b, moving))?;
    assert!(gone <= came, "Removed on a arrives before Added on b");

    // The same address twice on one interface (two IPv4 prefixes): it stays
    // until its last instance goes.
    let twice: IpAddr = "10.71.1.50".parse()?;
    pod_ip_addr(&ns_a, &["add", "10.71.1.50/32"])?;
    pod_ip_addr(&ns_a, &["add", "10.71.1.50/28"])?;
    watcher.expect(0, &peer_added(a, twice))?;
    let from = watcher.events.len();
    pod_ip_addr(&ns_a, &["del", "10.71.1.50/32"])?;
    watcher.wait_quiet(Duration::from_millis(300))?;
    let gone = peer_removed(a, twice);
    assert!(
        watcher.arrival(from, &gone).is_none(),
        "one instance of {twice} is left, so it is not removed"
    );
    pod_ip_addr(&ns_a, &["del", "10.71.1.50/28"])?;
    watcher.expect(from, &gone)?;

    // The consumer's view agrees with `ip` in both pods.
    watcher.wait_quiet(Duration::from_millis(200))?;
    for (_, seen) in &watcher.events {
        apply(&mut view, seen);
    }
    assert_eq!(view[&a], ip_addrs(&ns_a)?, "pod a");
    assert_eq!(view[&b], ip_addrs(&ns_b)?, "pod b");
    assert_eq!(watcher.resyncs(), 0, "no resync with the default buffer");

    // A pair with both ends in the node itself: the peer has no nsid and its
    // notifications no nsid tag; it is tracked when it appears.
    let from = watcher.events.len();
    lab.add_veth(&node, "pxa", "pxb")?;
    netns::ip(&["-n", &node, "addr", "add", "10.73.0.1/32", "dev", "pxb"])?;
    let appeared = watcher.saw(from, DEADLINE, |s| {
        matches!(s, Seen::Link(LinkEvent::Added(l))
            if l.name == "pxa" && l.peer.is_some_and(|p| p.nsid.is_none()))
    })?;
    assert!(appeared, "pxa appears with a same-namespace peer");
    let pxa = watcher.events[from..]
        .iter()
        .find_map(|(_, s)| match s {
            Seen::Link(LinkEvent::Added(l)) if l.name == "pxa" => Some(l.ifindex),
            _ => None,
        })
        .context("pxa seen above")?;
    let local: IpAddr = "10.73.0.1".parse()?;
    let known = watcher.saw(from, DEADLINE, |s| match s {
        Seen::Tracked(i, addrs) => *i == pxa && addrs.contains(&local),
        Seen::Peer(PeerEvent::Added { ifindex, addr }) => *ifindex == pxa && *addr == local,
        _ => false,
    })?;
    assert!(known, "{local} on pxb is known as pxa's peer address");
    let from = watcher.events.len();
    netns::ip(&["-n", &node, "addr", "del", "10.73.0.1/32", "dev", "pxb"])?;
    watcher.expect(from, &peer_removed(pxa, local))?;
    netns::ip(&["-n", &node, "link", "del", "pxa"])?;

    // Pod b's namespace is deleted: its veth vanishes from the node, the
    // watcher untracks it and carries on without an error.
    let from = watcher.events.len();
    netns::delete_namespace(&ns_b)?;
    let vanished = watcher.saw(
        from,
        Duration::from_secs(5),
        |s| matches!(s, Seen::Link(LinkEvent::Removed { ifindex, .. }) if *ifindex == b),
    )?;
    assert!(vanished, "veth-b is removed when pod b's namespace goes");
    let from = watcher.events.len();
    pod_ip_addr(&ns_a, &["add", "10.71.1.99/32"])?;
    watcher.expect(from, &peer_added(a, "10.71.1.99".parse()?))?;
    watcher.wait_quiet(Duration::from_millis(200))?;
    assert!(
        watcher.events[from..].iter().all(|(_, s)| match s {
            Seen::Peer(PeerEvent::Added { ifindex, .. } | PeerEvent::Removed { ifindex, .. }) =>
                *ifindex == a,
            Seen::Peer(PeerEvent::Resync(map)) => !map.contains_key(&b),
            _ => true,
        }),
        "nothing more about the untracked veth-b"
    );
    eprintln!(
        "peeraddr: {} events in all, {} resyncs",
        watcher.events.len(),
        watcher.resyncs()
    );
    Ok(())
}

#[test]
fn a_flood_into_a_small_buffer_resyncs_to_the_exact_set() -> Result<()> {
    let _serial = serial();
    // The smallest buffer the kernel allows.
    let Setup {
        lab,
        ns_a,
        ns_b,
        mut watcher,
        started,
        ..
    } = Setup::new(Some(1))?;
    let (a, b) = (
        tracked_ifindex(&started, "veth-a"),
        tracked_ifindex(&started, "veth-b"),
    );
    let mut view = view_of(&started);

    // A burst in both pods while the watcher does not read: 200 addresses
    // added in a, every third removed again; 100 in b; b's own pod address
    // removed.
    watcher.pause()?;
    let from = watcher.events.len();
    let mut lines_a: Vec<String> = (0..200u32)
        .map(|i| format!("addr add 10.72.{}.{}/32 dev {POD_IF}", i / 200, 1 + i % 200))
        .collect();
    lines_a.extend(
        (0..200u32)
            .step_by(3)
            .map(|i| format!("addr del 10.72.{}.{}/32 dev {POD_IF}", i / 200, 1 + i % 200)),
    );
    netns::ip_batch(&ns_a, &lines_a)?;
    let mut lines_b: Vec<String> = (0..100u32)
        .map(|i| format!("addr add fd00:72::{:x}/128 dev {POD_IF} nodad", i + 1))
        .collect();
    lines_b.push(format!("addr del {} dev {POD_IF}", lab.pod("b")?.v4));
    netns::ip_batch(&ns_b, &lines_b)?;
    let t0 = Instant::now();
    watcher.resume();
    watcher.wait_quiet(Duration::from_millis(500))?;
    assert!(
        watcher.resyncs() >= 1,
        "a burst of {} notifications into a tiny buffer must overflow and resync",
        lines_a.len() + lines_b.len()
    );
    if let Some((at, _)) = watcher.events[from..]
        .iter()
        .find(|(_, s)| matches!(s, Seen::Peer(PeerEvent::Resync(_))))
    {
        eprintln!(
            "peeraddr: first resync {:?} after reading resumed",
            at.saturating_duration_since(t0)
        );
    }
    for (_, seen) in &watcher.events {
        apply(&mut view, seen);
    }
    let (want_a, want_b) = (ip_addrs(&ns_a)?, ip_addrs(&ns_b)?);
    assert_eq!(want_a.len(), 3 + 200 - 67, "pod a's addresses per `ip`");
    assert_eq!(want_b.len(), 2 + 100, "pod b's addresses per `ip`");
    assert_eq!(view[&a], want_a, "pod a after the flood");
    assert_eq!(view[&b], want_b, "pod b after the flood");

    // After the resyncs the watcher still follows the kernel (with a buffer
    // this small, a resync listing the address counts as well).
    let from = watcher.events.len();
    pod_ip_addr(&ns_b, &["add", "10.71.2.77/32"])?;
    let want: IpAddr = "10.71.2.77".parse()?;
    let seen = watcher.saw(from, DEADLINE, |s| match s {
        Seen::Peer(PeerEvent::Added { ifindex, addr }) => *ifindex == b && *addr == want,
        Seen::Peer(PeerEvent::Resync(map)) => map.get(&b).is_some_and(|v| v.contains(&want)),
        _ => false,
    })?;
    assert!(seen, "{want} seen on veth-b after the resyncs");
    eprintln!(
        "peeraddr: flood: {} events, {} resyncs",
        watcher.events.len(),
        watcher.resyncs()
    );
    Ok(())
}

/// `struct __user_cap_header_struct` (`linux/capability.h`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;
const CAP_NET_BROADCAST: u32 = 11;
const CAP_NET_ADMIN: u32 = 12;

/// Drops `cap` from the calling thread's effective set (capabilities are
/// per thread; nothing else in the process is affected).
fn drop_effective(cap: u32) -> Result<()> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two `__user_cap_data_struct`s (version 3) into
    // `data`, which has room for exactly two, and reads `header`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    // SAFETY: capset reads `header` and two data structs from `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// In the node namespace, on a thread without `cap`: the first veth's peer
/// and what creating a watcher and tracking that peer give.
fn without(lab: &Lab, cap: u32) -> Result<(PeerRef, Outcome)> {
    netns::in_netns(lab.node_ns(), move || -> Result<_> {
        drop_effective(cap)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (_links, initial) = LinkWatcher::new()?;
            let link = initial
                .into_iter()
                .find(|l| l.peer.is_some())
                .context("no veth with a peer in the node")?;
            let peer = link.peer.context("checked")?;
            let outcome = PeerWatcher::new().map(|mut w| w.track(link.ifindex, peer));
            Ok((peer, outcome))
        })
    })?
}

#[test]
fn missing_capabilities_are_named() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new(&pods()[..1])?;

    let (_, outcome) = without(&lab, CAP_NET_BROADCAST)?;
    match outcome {
        Err(
            e @ PeerError::MissingCapability {
                capability: "CAP_NET_BROADCAST",
                ..
            },
        ) => eprintln!("peeraddr: without CAP_NET_BROADCAST: {e}"),
        Err(e) => panic!("without CAP_NET_BROADCAST: {e}"),
        Ok(_) => panic!("without CAP_NET_BROADCAST the watcher must not start"),
    }

    let (peer, outcome) = without(&lab, CAP_NET_ADMIN)?;
    assert!(peer.nsid.is_some());
    match outcome {
        Ok(Err(
            e @ PeerError::MissingCapability {
                capability: "CAP_NET_ADMIN",
                ..
            },
        )) => eprintln!("peeraddr: without CAP_NET_ADMIN: {e}"),
        Ok(Err(e)) => panic!("without CAP_NET_ADMIN: {e}"),
        Ok(Ok(addrs)) => panic!("without CAP_NET_ADMIN the dump must be refused: {addrs:?}"),
        Err(e) => panic!("without CAP_NET_ADMIN the watcher itself should start: {e}"),
    }
    Ok(())
}
