//! The link watcher (`envfence::netwatch`) against the real kernel, inside a
//! lab namespace (never the host's): 100 veth pairs appear and disappear,
//! one pair at a time with a watcher that keeps up, and in bursts that
//! overflow a tiny receive buffer so the watcher must resynchronise.
//!
//! Needs root (CI runs as root) and fails with a clear message otherwise.
//! Every interface is created in the lab's namespace, which the lab deletes
//! when it is dropped (also on panic); a killed run's namespace is swept by
//! the next one (`efl-<pid>-...`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use envfence::netwatch::{Link, LinkEvent, LinkWatcher, PeerRef};
use envfence_tests::fixture::serial;
use envfence_tests::lab::probe::median_max;
use envfence_tests::lab::watch::{Feed, NsWatcher};
use envfence_tests::lab::Lab;
use envfence_tests::netns;

/// veth pairs created (so twice as many links).
const PAIRS: usize = 100;
/// Each event must arrive within this of the command that caused it.
const DEADLINE: Duration = Duration::from_secs(1);

/// A [`LinkWatcher`] in a lab namespace (see [`NsWatcher`]).
type Watcher = NsWatcher<Vec<Link>, LinkEvent>;

/// Starts the watcher in `ns` (with a receive buffer of `rcvbuf` bytes
/// when given) and returns it with its initial dump.
fn start(ns: &str, rcvbuf: Option<usize>) -> Result<(Watcher, Vec<Link>)> {
    NsWatcher::start(ns, move |feed| watch(feed, rcvbuf))
}

fn resyncs(watcher: &Watcher) -> usize {
    watcher.count(|e| matches!(e, LinkEvent::Resync(_)))
}

/// The watcher thread's body (already in the namespace).
async fn watch(feed: Feed<Vec<Link>, LinkEvent>, rcvbuf: Option<usize>) -> Result<()> {
    let t0 = Instant::now();
    let (mut watcher, links) = match rcvbuf {
        Some(bytes) => LinkWatcher::with_receive_buffer(bytes)?,
        None => LinkWatcher::new()?,
    };
    eprintln!(
        "netwatch: LinkWatcher::new took {:?} (receive buffer {} bytes)",
        t0.elapsed(),
        watcher.receive_buffer()
    );
    if !feed.started(links) {
        return Ok(());
    }
    while !feed.stopping() {
        if feed.held().await {
            continue;
        }
        // `next()` is cancel-safe; the timeout only lets us see `stop`.
        match tokio::time::timeout(Duration::from_millis(50), watcher.next()).await {
            Err(_elapsed) => {}
            Ok(Ok(event)) => {
                if !feed.event(event) {
                    return Ok(());
                }
            }
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("LinkWatcher::next")),
        }
    }
    Ok(())
}

fn veth_names(i: usize) -> (String, String) {
    (format!("nwa{i}"), format!("nwb{i}"))
}

/// The first `Added` of `name`: when it arrived and the link.
fn first_added<'a>(events: &'a [(Instant, LinkEvent)], name: &str) -> Option<(Instant, &'a Link)> {
    events.iter().find_map(|(at, e)| match e {
        LinkEvent::Added(link) if link.name == name => Some((*at, link)),
        _ => None,
    })
}

/// The first `Removed` of `name`: when it arrived and the ifindex.
fn first_removed(events: &[(Instant, LinkEvent)], name: &str) -> Option<(Instant, u32)> {
    events.iter().find_map(|(at, e)| match e {
        LinkEvent::Removed { name: n, ifindex } if n == name => Some((*at, *ifindex)),
        _ => None,
    })
}

/// Latency of each name's event relative to its command's start; fails
/// listing the names with no event or a late one.
fn latencies(
    started: &HashMap<String, Instant>,
    arrived: impl Fn(&str) -> Option<Instant>,
    what: &str,
) -> Vec<Duration> {
    let mut missing = Vec::new();
    let mut late = Vec::new();
    let mut all = Vec::new();
    for (name, t0) in started {
        match arrived(name) {
            None => missing.push(name.clone()),
            Some(at) => {
                let latency = at.saturating_duration_since(*t0);
                if latency > DEADLINE {
                    late.push(format!("{name}: {latency:?}"));
                }
                all.push(latency);
            }
        }
    }
    missing.sort();
    late.sort();
    assert!(
        missing.is_empty(),
        "no {what} event for {} links: {missing:?}",
        missing.len()
    );
    assert!(
        late.is_empty(),
        "{what} events later than {DEADLINE:?}: {late:?}"
    );
    all.sort();
    all
}

/// Waits (up to [`DEADLINE`]) for the `what` event of every name of
/// `started`, found by `arrived`; their [`latencies`].
fn arrivals(
    watcher: &mut Watcher,
    started: &HashMap<String, Instant>,
    arrived: impl Fn(&[(Instant, LinkEvent)], &str) -> Option<Instant>,
    what: &str,
) -> Vec<Duration> {
    let all = watcher
        .wait_for(DEADLINE, |events| {
            started.keys().all(|n| arrived(events, n).is_some())
        })
        .expect("watching");
    let all_latencies = latencies(started, |n| arrived(&watcher.events, n), what);
    assert!(all, "not every {what} arrived");
    all_latencies
}

/// Whether `want` arrives within [`DEADLINE`] (or came already).
fn saw(watcher: &mut Watcher, want: &LinkEvent) -> bool {
    let seen = |events: &[(Instant, LinkEvent)]| events.iter().any(|(_, e)| e == want);
    watcher.wait_for(DEADLINE, seen).expect("watching")
}

fn summary(what: &str, sorted: &[Duration]) {
    let (median, max) = median_max(sorted);
    eprintln!(
        "netwatch: {what}: {} events, median {median:?}, max {max:?} \
         (from the start of the `ip` command)",
        sorted.len()
    );
}

/// A consumer's view of the links: ifindex -> (name, up).
type View = BTreeMap<u32, (String, bool)>;

fn view_of(links: &[Link]) -> View {
    links
        .iter()
        .map(|l| (l.ifindex, (l.name.clone(), l.up)))
        .collect()
}

/// Applies `event` to a consumer's view.
fn apply(view: &mut View, event: &LinkEvent) {
    match event {
        LinkEvent::Added(link) => {
            view.insert(link.ifindex, (link.name.clone(), link.up));
        }
        LinkEvent::Removed { ifindex, .. } => {
            view.remove(ifindex);
        }
        LinkEvent::Resync(links) => *view = view_of(links),
    }
}

/// The links of `ns` according to `ip`.
fn ip_links(ns: &str) -> Result<View> {
    let mut links = BTreeMap::new();
    for line in netns::ip_output(&["-n", ns, "-o", "link", "show"])?.lines() {
        // "7: nwa3@nwb3: <BROADCAST,MULTICAST,UP> mtu ..."
        let mut fields = line.splitn(3, ": ");
        let (Some(index), Some(name), Some(rest)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("unexpected `ip link` line: {line}");
        };
        let index: u32 = index
            .trim()
            .parse()
            .with_context(|| format!("ifindex in {line}"))?;
        let name = name.split('@').next().unwrap_or(name);
        let flags = rest
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(flags, _)| flags)
            .with_context(|| format!("flags in {line}"))?;
        let up = flags.split(',').any(|f| f == "UP");
        links.insert(index, (name.to_string(), up));
    }
    Ok(links)
}

#[test]
fn hundred_veth_pairs_are_seen_within_a_second() {
    let _serial = serial();
    let lab = Lab::new(&[]).expect("lab");
    let ns = lab.node_ns().to_string();
    let (mut watcher, initial) = start(&ns, None).expect("watcher");

    let lo = initial
        .iter()
        .find(|l| l.name == "lo")
        .unwrap_or_else(|| panic!("initial dump without lo: {initial:?}"));
    assert!(lo.up, "lo is up in a lab namespace: {lo:?}");
    assert_eq!(
        initial.len(),
        1,
        "a fresh namespace has only lo: {initial:?}"
    );

    // Creation, one pair per command, as a CNI does it.
    let mut created = HashMap::new();
    for i in 0..PAIRS {
        let (a, b) = veth_names(i);
        let t0 = Instant::now();
        lab.add_veth(&ns, &a, &b).expect("ip link add");
        created.insert(a, t0);
        created.insert(b, t0);
    }
    let added = |ev: &[_], n: &str| first_added(ev, n).map(|(at, _)| at);
    let added = arrivals(&mut watcher, &created, added, "Added");
    summary("Added after `ip link add`", &added);

    let mut ifindex: HashMap<String, u32> = HashMap::new();
    for name in created.keys() {
        let (_, link) = first_added(&watcher.events, name).expect("seen above");
        assert!(!link.up, "a new veth is down: {link:?}");
        ifindex.insert(name.clone(), link.ifindex);
    }
    let mut distinct: Vec<u32> = ifindex.values().copied().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2 * PAIRS, "ifindexes are distinct");
    assert_eq!(
        ip_links(&ns).expect("ip link").len(),
        2 * PAIRS + 1,
        "every pair exists"
    );

    // A rename is an Added with the new name and the same ifindex; so is up.
    let (a0, _) = veth_names(0);
    let renamed = "nwr0";
    let index0 = ifindex[&a0];
    netns::ip(&["-n", &ns, "link", "set", "dev", &a0, "name", renamed]).expect("rename");
    // Both ends are in the lab's namespace: the peer carries no nsid.
    let (_, b0) = veth_names(0);
    let want = Link {
        name: renamed.to_string(),
        ifindex: index0,
        up: false,
        peer: Some(PeerRef {
            nsid: None,
            ifindex: ifindex[&b0],
        }),
    };
    assert!(
        saw(&mut watcher, &LinkEvent::Added(want.clone())),
        "no Added for the rename of {a0} (ifindex {index0}) to {renamed}"
    );
    netns::ip(&["-n", &ns, "link", "set", "dev", renamed, "up"]).expect("set up");
    let want = Link { up: true, ..want };
    assert!(
        saw(&mut watcher, &LinkEvent::Added(want)),
        "no Added with up=true for {renamed}"
    );
    ifindex.remove(&a0);
    ifindex.insert(renamed.to_string(), index0);

    // Deletion: deleting one end deletes its peer; both must be reported.
    let mut deleted = HashMap::new();
    for i in 0..PAIRS {
        let (a, b) = veth_names(i);
        let a = if i == 0 { renamed.to_string() } else { a };
        let t0 = Instant::now();
        netns::ip(&["-n", &ns, "link", "del", &a]).expect("ip link del");
        deleted.insert(a, t0);
        deleted.insert(b, t0);
    }
    let removed = |ev: &[_], n: &str| first_removed(ev, n).map(|(at, _)| at);
    let removed = arrivals(&mut watcher, &deleted, removed, "Removed");
    summary("Removed after `ip link del`", &removed);
    for name in deleted.keys() {
        let (_, index) = first_removed(&watcher.events, name).expect("seen above");
        assert_eq!(
            index, ifindex[name],
            "Removed carries the ifindex of {name}"
        );
    }

    assert_eq!(
        resyncs(&watcher),
        0,
        "no notification may be dropped with the default receive buffer"
    );
    // Replaying everything over the initial dump gives the kernel's view.
    let mut view = view_of(&initial);
    watcher
        .wait_quiet(Duration::from_millis(200))
        .expect("watching");
    for (_, event) in &watcher.events {
        apply(&mut view, event);
    }
    assert_eq!(view, ip_links(&ns).expect("ip link"));
    eprintln!(
        "netwatch: {} events in all, 0 resyncs",
        watcher.events.len()
    );
}

#[test]
fn overflow_is_resynchronised_not_lost() {
    let _serial = serial();
    let lab = Lab::new(&[]).expect("lab");
    let ns = lab.node_ns().to_string();
    // The smallest buffer the kernel allows: a burst cannot fit.
    let (mut watcher, initial) = start(&ns, Some(1)).expect("watcher");
    let mut view = view_of(&initial);

    // A burst of creations while the watcher does not read.
    watcher.pause().expect("pause");
    let lines: Vec<String> = (0..PAIRS)
        .map(|i| {
            let (a, b) = veth_names(i);
            format!("link add {a} type veth peer name {b}")
        })
        .collect();
    netns::ip_batch(&ns, &lines).expect("ip -batch link add");
    // Half of them up, so some links change after their creation.
    let lines: Vec<String> = (0..PAIRS)
        .step_by(2)
        .map(|i| format!("link set {} up", veth_names(i).0))
        .collect();
    netns::ip_batch(&ns, &lines).expect("ip -batch link set up");
    watcher.resume();
    watcher
        .wait_quiet(Duration::from_millis(500))
        .expect("watching");
    for (_, event) in &watcher.events {
        apply(&mut view, event);
    }
    let after_add = resyncs(&watcher);
    assert!(
        after_add >= 1,
        "a burst of {} notifications into a tiny buffer must overflow and resync",
        4 * PAIRS
    );
    let kernel = ip_links(&ns).expect("ip link");
    assert_eq!(kernel.len(), 2 * PAIRS + 1);
    assert_eq!(
        kernel.values().filter(|(_, up)| *up).count(),
        PAIRS / 2 + 1,
        "lo and half of the nwa* are up"
    );
    assert_eq!(
        view, kernel,
        "the consumer's view (names and up) after the burst"
    );
    // A burst of deletions.
    watcher.pause().expect("pause");
    let lines: Vec<String> = (0..PAIRS)
        .map(|i| format!("link del {}", veth_names(i).0))
        .collect();
    netns::ip_batch(&ns, &lines).expect("ip -batch link del");
    let from = watcher.events.len();
    watcher.resume();
    watcher
        .wait_quiet(Duration::from_millis(500))
        .expect("watching");
    for (_, event) in &watcher.events[from..] {
        apply(&mut view, event);
    }
    assert!(
        resyncs(&watcher) > after_add,
        "the deletion burst must overflow and resync too"
    );
    let kernel = ip_links(&ns).expect("ip link");
    assert_eq!(kernel.len(), 1, "only lo is left: {kernel:?}");
    assert_eq!(view, kernel, "the consumer's view after the deletions");

    // After the resyncs the watcher still follows the kernel. With a buffer
    // this small even one pair may overflow it, so a Resync listing the new
    // links counts as well as their Added.
    let from = watcher.events.len();
    let t0 = Instant::now();
    lab.add_veth(&ns, "nwx", "nwy").expect("ip link add");
    let both = watcher
        .wait_for(DEADLINE, |events| {
            ["nwx", "nwy"].iter().all(|n| {
                events[from..].iter().any(|(_, e)| match e {
                    LinkEvent::Added(link) => link.name == *n,
                    LinkEvent::Resync(links) => links.iter().any(|l| l.name == *n),
                    LinkEvent::Removed { .. } => false,
                })
            })
        })
        .expect("watching");
    assert!(both, "nwx and nwy seen after the resyncs");
    eprintln!(
        "netwatch: after the resyncs, a new pair was seen in {:?}",
        t0.elapsed()
    );
    eprintln!(
        "netwatch: overflow: {} events, {} resyncs",
        watcher.events.len(),
        resyncs(&watcher)
    );
}
