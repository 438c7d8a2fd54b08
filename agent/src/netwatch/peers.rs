//! Watching the addresses configured on the other end of veth and netkit
//! pairs ("peer addresses").
//!
//! A pod's veth on the node says nothing about the addresses behind it when
//! the CNI routes a whole pod CIDR through one device (bridge CNIs, Cilium's
//! `cilium_host`); the addresses configured on the pod's end of the pair do.
//! [`PeerWatcher`] follows them: for every tracked local link it knows the
//! host addresses (IPv4 and IPv6, link-local `fe80::` included; tentative,
//! optimistic, deprecated or DAD-failed IPv6 addresses count: they are
//! configured) of its peer, and reports each change as a [`PeerEvent`].
//!
//! It listens to `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR` on one
//! socket with `NETLINK_LISTEN_ALL_NSID`, so the address notifications of
//! every namespace that has an nsid in the watched one arrive there, each
//! tagged by the kernel with that nsid (same-namespace notifications carry
//! none). Peers are dumped with `RTM_GETADDR`, filtered by the kernel to the
//! peer's ifindex, in the peer's namespace (`IFA_TARGET_NETNSID`). Nothing
//! is polled: the watcher sleeps in the tokio reactor until the kernel
//! queues a notification.
//!
//! # Guarantees
//!
//! * **Nothing is missed between the dump and the stream.** The notification
//!   socket is subscribed in [`PeerWatcher::new`], before any peer is dumped
//!   by [`PeerWatcher::track`], so a change made while the dump runs is in
//!   the dump, in the stream, or in both.
//! * **Events are changes of the tracked set, and idempotent.** The watcher
//!   keeps every tracked peer's addresses and emits [`PeerEvent::Added`] only
//!   for an address that was not there and [`PeerEvent::Removed`] only for
//!   one that was; repeated kernel notifications (an IPv6 address leaving
//!   the tentative state, lifetime updates) emit nothing. An IPv4 address
//!   configured twice with different prefixes is removed when its last
//!   instance goes. Applied in order, as set insert and remove, the events
//!   converge to the kernel's state; notifications queued before a dump may
//!   replay a change the dump already contains (an address added and
//!   removed just before it shows as `Added` then `Removed`).
//! * **Nothing is silently lost.** When the kernel could not queue a
//!   notification (`ENOBUFS`: the receive buffer overflowed, which a burst
//!   in *any* namespace with an nsid can cause) or a notification cannot be
//!   decoded, the watcher discards what is still queued, dumps every tracked
//!   peer again and emits [`PeerEvent::Resync`] with the complete set: the
//!   consumer replaces its view with it.
//! * **Only the kernel is listened to.** Both sockets are connected to the
//!   kernel, and any datagram whose sender port is not 0 is dropped: a
//!   process (also one with `CAP_NET_ADMIN` in a pod, which may send to its
//!   own namespace's multicast groups) cannot forge an address change. The
//!   nsid comes from the kernel's control message, never from the payload.
//!   Every dump answer in another namespace must carry the kernel's
//!   `IFA_TARGET_NETNSID` echo, so a kernel that ignored the target (and
//!   answered with the watched namespace's interface of the same ifindex)
//!   is an error, never a wrong answer.
//!
//! One limit: a namespace that was given an nsid *for itself* (`ip netns set`
//! on its own handle, which no CNI or container runtime does) gets its own
//! notifications tagged with that nsid, and same-namespace peers (`nsid:
//! None`) would then only be refreshed by a resync.
//!
//! What the peer addresses are worth is what the peer's namespace says: a
//! workload that may configure its own interface (`CAP_NET_ADMIN` in its
//! namespace) can add any address there, and this watcher reports it.
//!
//! # Capabilities
//!
//! * `CAP_NET_BROADCAST` in the user namespace owning the watched network
//!   namespace: the kernel refuses `NETLINK_LISTEN_ALL_NSID` without it, and
//!   [`PeerWatcher::new`] fails with [`PeerError::MissingCapability`]. The
//!   kernel also drops, silently, every other-namespace notification unless
//!   the socket's opener has `CAP_NET_BROADCAST` in the user namespace owning
//!   the peer's namespace; a capability held in a user namespace holds in all
//!   its descendants, and [`PeerWatcher::track`] has proven (below) that the
//!   watcher is privileged over the peer's namespace, so with the watcher in
//!   the same or an ancestor user namespace (any agent not itself in a user
//!   namespace) the notifications are delivered.
//! * `CAP_NET_ADMIN` in the user namespace owning the peer's namespace, for
//!   the dump of a peer in another namespace (the kernel answers `EACCES`
//!   without it): [`PeerWatcher::track`] fails with
//!   [`PeerError::MissingCapability`]. Same-namespace peers need nothing.
//!
//! # Network namespace and threads
//!
//! [`PeerWatcher::new`] creates both sockets, so it watches from the network
//! namespace its calling thread is in; the watcher may be moved to and
//! polled from any thread afterwards. [`PeerWatcher::track`] and a resync
//! dump synchronously, blocking the calling thread while the kernel answers
//! from memory (two short dumps per peer; given up after [`DUMP_TIMEOUT`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;

use super::netlink::{self, DumpError, DumpOps, Kind, SocketError, Subscription};
use super::{NetwatchError, PeerRef, DEFAULT_RECEIVE_BUFFER};

/// `RTM_NEWADDR` (`linux/rtnetlink.h`).
const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR`.
const RTM_DELADDR: u16 = 21;
/// `RTNLGRP_IPV4_IFADDR`.
const RTNLGRP_IPV4_IFADDR: u32 = 5;
/// `RTNLGRP_IPV6_IFADDR`.
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// `IFA_ADDRESS` (`linux/if_addr.h`).
const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`.
const IFA_LOCAL: u16 = 2;
/// `IFA_TARGET_NETNSID`.
const IFA_TARGET_NETNSID: u16 = 10;
/// Length of `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;

/// A change of the addresses behind a tracked link. See the
/// [module docs](self) for the idempotence and ordering rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// `addr` is now configured on the peer of local link `ifindex`.
    Added {
        /// The tracked local link.
        ifindex: u32,
        /// The host address (no prefix).
        addr: IpAddr,
    },
    /// `addr` is no longer configured on the peer of local link `ifindex`.
    Removed {
        /// The tracked local link.
        ifindex: u32,
        /// The host address.
        addr: IpAddr,
    },
    /// Notifications were lost or undecodable: every tracked link with the
    /// complete, sorted addresses of its peer (empty for a peer that is
    /// gone). Replace the consumer's view with it.
    Resync(BTreeMap<u32, Vec<IpAddr>>),
}

/// Errors of the peer address watcher.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// [`PeerWatcher::new`] was called outside a tokio runtime.
    #[error("the peer address watcher must be created inside a tokio runtime")]
    NoRuntime,
    /// A netlink socket operation failed.
    #[error("netlink: {op}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an operation for want of a capability.
    #[error("{capability} is needed for {needed_for}: {source}")]
    MissingCapability {
        /// The capability, as the kernel's headers spell it.
        capability: &'static str,
        /// What it is needed for.
        needed_for: String,
        /// The kernel's refusal.
        #[source]
        source: io::Error,
    },
    /// The peer (its interface or its namespace) no longer exists.
    #[error("the peer of link {ifindex} (ifindex {} in {}) is gone", .peer.ifindex, nsid_name(.peer.nsid))]
    PeerGone {
        /// The local link.
        ifindex: u32,
        /// Where its peer was.
        peer: PeerRef,
    },
    /// The kernel refused the dump of a peer's addresses.
    #[error("the kernel refused the address dump of the peer of link {ifindex} (ifindex {} in {}): {source}", .peer.ifindex, nsid_name(.peer.nsid))]
    DumpRefused {
        /// The local link.
        ifindex: u32,
        /// Its peer.
        peer: PeerRef,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The dump kept being interrupted by concurrent address changes.
    #[error("the address dump was interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// Dumps attempted.
        attempts: u32,
    },
    /// The kernel sent a dump message that cannot be decoded or is not the
    /// answer asked for.
    #[error("undecodable address dump message: {0}")]
    Malformed(String),
}

fn nsid_name(nsid: Option<i32>) -> String {
    match nsid {
        Some(id) => format!("the namespace of nsid {id}"),
        None => "this namespace".to_string(),
    }
}

fn socket_error(op: &'static str) -> impl FnOnce(io::Error) -> PeerError {
    move |source| PeerError::Socket { op, source }
}

impl From<SocketError> for PeerError {
    fn from(SocketError { op, source }: SocketError) -> PeerError {
        PeerError::Socket { op, source }
    }
}

/// What the peer watcher decodes: `RTM_NEWADDR` and `RTM_DELADDR`.
const ADDRS: Kind<Addr> = Kind {
    new: RTM_NEWADDR,
    del: RTM_DELADDR,
    parse: parse_addr,
    what: "address",
    receive: "receiving address notifications",
};

/// The names of an address dump's operations.
const ADDR_DUMP: DumpOps = DumpOps {
    send: "sending the address dump request",
    receive: "receiving the address dump",
};

impl From<NetwatchError> for PeerError {
    fn from(e: NetwatchError) -> PeerError {
        match e {
            NetwatchError::Socket { op, source } => PeerError::Socket { op, source },
            other => PeerError::Malformed(other.to_string()),
        }
    }
}

/// The instances of one address on a peer: IPv4 allows the same local
/// address with several prefixes (and peer addresses); IPv6 one per device.
type Instances = BTreeSet<(u8, Option<IpAddr>)>;

/// A tracked link: its peer and the peer's addresses.
#[derive(Debug)]
struct Tracked {
    peer: PeerRef,
    addrs: BTreeMap<IpAddr, Instances>,
}

impl Tracked {
    fn sorted(&self) -> Vec<IpAddr> {
        self.addrs.keys().copied().collect()
    }
}

/// Watches the addresses of the peers of tracked links. See the
/// [module docs](self).
pub struct PeerWatcher {
    /// To the address groups of every namespace.
    events: Subscription,
    /// Blocking (with a timeout), strict checking, subscribed to nothing.
    dumper: Socket,
    dump_buf: Vec<u8>,
    /// By local ifindex.
    tracked: BTreeMap<u32, Tracked>,
    /// Peer -> local ifindex.
    by_peer: BTreeMap<PeerRef, u32>,
    /// Decoded events not yet returned by [`PeerWatcher::next`].
    pending: VecDeque<PeerEvent>,
    seq: u32,
}

impl std::fmt::Debug for PeerWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerWatcher")
            .field("tracked", &self.tracked.len())
            .field("pending", &self.pending.len())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl PeerWatcher {
    /// Subscribes to the address notifications of every namespace that has
    /// an nsid in the calling thread's namespace, with the
    /// [default receive buffer](DEFAULT_RECEIVE_BUFFER). Tracks nothing yet.
    ///
    /// Must be called inside a tokio runtime whose I/O driver is enabled,
    /// by a thread in the namespace to watch from. Fails with
    /// [`PeerError::MissingCapability`] naming `CAP_NET_BROADCAST` when the
    /// kernel refuses `NETLINK_LISTEN_ALL_NSID`.
    pub fn new() -> Result<PeerWatcher, PeerError> {
        PeerWatcher::with_receive_buffer(DEFAULT_RECEIVE_BUFFER)
    }

    /// Like [`PeerWatcher::new`] with a receive buffer of `bytes` for the
    /// notification socket (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
    pub fn with_receive_buffer(bytes: usize) -> Result<PeerWatcher, PeerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PeerError::NoRuntime);
        }
        let groups = [
            (RTNLGRP_IPV4_IFADDR, "joining RTNLGRP_IPV4_IFADDR"),
            (RTNLGRP_IPV6_IFADDR, "joining RTNLGRP_IPV6_IFADDR"),
        ];
        let (events, receive_buffer) = netlink::event_socket(bytes, &groups, |events| {
            events.set_listen_all_namespaces(true).map_err(|source| {
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    PeerError::MissingCapability {
                        capability: "CAP_NET_BROADCAST",
                        needed_for: "NETLINK_LISTEN_ALL_NSID (address notifications of the \
                                     pods' namespaces)"
                            .to_string(),
                        source,
                    }
                } else {
                    socket_error("setting NETLINK_LISTEN_ALL_NSID")(source)
                }
            })
        })?;
        Ok(PeerWatcher {
            events: Subscription::new(events, receive_buffer, 8 << 10)?,
            dumper: netlink::dump_socket(true)?,
            dump_buf: Vec::with_capacity(32 << 10),
            tracked: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            pending: VecDeque::new(),
            seq: 0,
        })
    }

    /// Starts tracking local link `ifindex`, whose peer is `peer` (from
    /// [`Link::peer`](super::Link::peer)), and returns the peer's current
    /// addresses, sorted. Tracking an already tracked link again (its peer
    /// moved: a new [`Link::peer`](super::Link::peer)) replaces it; a link
    /// previously tracked with the same peer is untracked. On error the link
    /// is not tracked ([`PeerError::PeerGone`]: the peer vanished, its link
    /// is about to be removed too).
    pub fn track(&mut self, ifindex: u32, peer: PeerRef) -> Result<Vec<IpAddr>, PeerError> {
        self.untrack(ifindex);
        let addrs = self.dump_peer(ifindex, peer)?;
        if let Some(other) = self.by_peer.insert(peer, ifindex) {
            tracing::warn!(
                ifindex,
                other,
                "two links claim the same peer; the older one is no longer tracked"
            );
            self.tracked.remove(&other);
            self.forget_pending(other, None);
        }
        let tracked = Tracked { peer, addrs };
        let sorted = tracked.sorted();
        self.forget_pending(ifindex, Some(&sorted));
        self.tracked.insert(ifindex, tracked);
        Ok(sorted)
    }

    /// Stops tracking local link `ifindex` (nothing if it is not tracked);
    /// no event for it is returned afterwards.
    pub fn untrack(&mut self, ifindex: u32) {
        if let Some(tracked) = self.tracked.remove(&ifindex) {
            if self.by_peer.get(&tracked.peer) == Some(&ifindex) {
                self.by_peer.remove(&tracked.peer);
            }
        }
        self.forget_pending(ifindex, None);
    }

    /// The peer addresses of tracked link `ifindex`, as the watcher knows
    /// them now (sorted); `None` if it is not tracked.
    pub fn addresses(&self, ifindex: u32) -> Option<Vec<IpAddr>> {
        self.tracked.get(&ifindex).map(Tracked::sorted)
    }

    /// The next change for a tracked link. Waits (without polling) until
    /// there is one.
    ///
    /// Cancel-safe: dropping the future (as `tokio::select!` and
    /// `tokio::time::timeout` do) loses nothing. An error is not fatal: a
    /// failed resync is retried by the next call.
    pub async fn next(&mut self) -> Result<PeerEvent, PeerError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.events.resync_needed {
                self.resync()?;
                continue;
            }
            let (changes, nsid) = self.events.next(&ADDRS).await?;
            for (present, addr) in changes {
                self.apply(nsid, &addr, present);
            }
        }
    }

    /// How many [`PeerEvent::Resync`]s this watcher has emitted.
    pub fn resyncs(&self) -> u64 {
        self.events.resyncs
    }

    /// The effective receive buffer of the notification socket, in bytes, as
    /// the kernel reports it (twice the requested size).
    pub fn receive_buffer(&self) -> usize {
        self.events.receive_buffer
    }

    /// Applies one notification from namespace `nsid` (`None`: ours).
    fn apply(&mut self, nsid: Option<i32>, addr: &Addr, present: bool) {
        let peer = PeerRef {
            nsid,
            ifindex: addr.index,
        };
        let Some(&ifindex) = self.by_peer.get(&peer) else {
            return; // not a tracked peer
        };
        let Some(tracked) = self.tracked.get_mut(&ifindex) else {
            return;
        };
        if present {
            let instances = tracked.addrs.entry(addr.addr).or_default();
            let new = instances.is_empty();
            instances.insert(addr.instance());
            if new {
                self.pending.push_back(PeerEvent::Added {
                    ifindex,
                    addr: addr.addr,
                });
            }
        } else if let Some(instances) = tracked.addrs.get_mut(&addr.addr) {
            instances.remove(&addr.instance());
            if instances.is_empty() {
                tracked.addrs.remove(&addr.addr);
                self.pending.push_back(PeerEvent::Removed {
                    ifindex,
                    addr: addr.addr,
                });
            } else {
                // Another instance is said to remain: trust only the kernel.
                tracing::debug!(ifindex, addr = %addr.addr, "instance removed; re-dumping the peer");
                self.redump(ifindex);
            }
        }
    }

    /// Replaces the addresses of tracked link `ifindex` with a fresh dump
    /// and queues the differences; a failure makes a full resync.
    fn redump(&mut self, ifindex: u32) {
        let Some(peer) = self.tracked.get(&ifindex).map(|t| t.peer) else {
            return;
        };
        let fresh = match self.dump_peer(ifindex, peer) {
            Ok(fresh) => fresh,
            Err(PeerError::PeerGone { .. }) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!("{e}; resynchronising");
                self.events.resync_needed = true;
                return;
            }
        };
        let Some(tracked) = self.tracked.get_mut(&ifindex) else {
            return;
        };
        for &addr in tracked.addrs.keys() {
            if !fresh.contains_key(&addr) {
                self.pending.push_back(PeerEvent::Removed { ifindex, addr });
            }
        }
        for &addr in fresh.keys() {
            if !tracked.addrs.contains_key(&addr) {
                self.pending.push_back(PeerEvent::Added { ifindex, addr });
            }
        }
        tracked.addrs = fresh;
    }

    /// Drops queued events of `ifindex`; in queued resyncs, replaces its
    /// entry with `now` (or removes it).
    fn forget_pending(&mut self, ifindex: u32, now: Option<&Vec<IpAddr>>) {
        self.pending.retain_mut(|event| match event {
            PeerEvent::Added { ifindex: i, .. } | PeerEvent::Removed { ifindex: i, .. } => {
                *i != ifindex
            }
            PeerEvent::Resync(map) => {
                match now {
                    Some(addrs) => {
                        map.insert(ifindex, addrs.clone());
                    }
                    None => {
                        map.remove(&ifindex);
                    }
                }
                true
            }
        });
    }

    /// Discards the queued notifications, dumps every tracked peer and
    /// queues the `Resync`.
    fn resync(&mut self) -> Result<(), PeerError> {
        let discarded = self.events.drain();
        let started = std::time::Instant::now();
        let mut fresh = BTreeMap::new();
        let links: Vec<(u32, PeerRef)> = self.tracked.iter().map(|(&i, t)| (i, t.peer)).collect();
        for (ifindex, peer) in links {
            let addrs = match self.dump_peer(ifindex, peer) {
                Ok(addrs) => addrs,
                // Its link goes too; the link watcher says so.
                Err(PeerError::PeerGone { .. }) => BTreeMap::new(),
                Err(e) => return Err(e),
            };
            fresh.insert(ifindex, addrs);
        }
        let mut snapshot = BTreeMap::new();
        for (ifindex, addrs) in fresh {
            if let Some(tracked) = self.tracked.get_mut(&ifindex) {
                tracked.addrs = addrs;
                snapshot.insert(ifindex, tracked.sorted());
            }
        }
        tracing::info!(
            discarded,
            peers = snapshot.len(),
            took = ?started.elapsed(),
            "peer address watcher resynchronised"
        );
        self.events.resynced();
        self.pending.push_back(PeerEvent::Resync(snapshot));
        Ok(())
    }

    /// Dumps the IPv4 and IPv6 addresses of `peer`, the peer of `ifindex`.
    fn dump_peer(
        &mut self,
        ifindex: u32,
        peer: PeerRef,
    ) -> Result<BTreeMap<IpAddr, Instances>, PeerError> {
        if peer.nsid.is_some_and(|id| id < 0) {
            // NETNSA_NSID_NOT_ASSIGNED: the namespace is being destroyed.
            return Err(PeerError::PeerGone { ifindex, peer });
        }
        let mut addrs: BTreeMap<IpAddr, Instances> = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let found = match self.dump_family(ifindex, peer, family) {
                Ok(found) => found,
                Err(e) => {
                    if matches!(
                        e,
                        PeerError::Socket { .. }
                            | PeerError::Malformed(_)
                            | PeerError::DumpInterrupted { .. }
                    ) {
                        // The socket may still hold a part of the dump.
                        self.dumper = netlink::dump_socket(true)?;
                    }
                    return Err(e);
                }
            };
            for addr in found {
                addrs.entry(addr.addr).or_default().insert(addr.instance());
            }
        }
        Ok(addrs)
    }

    /// One family's dump, retried when interrupted by a concurrent change.
    fn dump_family(
        &mut self,
        ifindex: u32,
        peer: PeerRef,
        family: AddressFamily,
    ) -> Result<Vec<Addr>, PeerError> {
        let found = netlink::dump_blocking(
            &self.dumper,
            &mut self.dump_buf,
            &mut self.seq,
            &ADDR_DUMP,
            &ADDRS,
            |seq| dump_request(seq, family, peer),
            |addr| answer_of(peer, addr),
        );
        found.map_err(|e| match e {
            DumpError::Socket(e) => e.into(),
            DumpError::Refused(errno) => refusal(ifindex, peer, errno),
            DumpError::Malformed(reason) => PeerError::Malformed(reason),
            DumpError::Interrupted(attempts) => PeerError::DumpInterrupted { attempts },
        })
    }
}

/// What a dump of `peer`'s addresses keeps of `addr`: it, when it is on the
/// peer; an error when the kernel answered from another namespace than
/// the one asked (it did not honour `IFA_TARGET_NETNSID`).
fn answer_of(peer: PeerRef, addr: Addr) -> Result<Option<Addr>, String> {
    if addr.target_nsid != peer.nsid {
        return Err(format!(
            "the answer to a dump in {} came from {} (IFA_TARGET_NETNSID {:?}): the kernel \
             did not honour the target namespace",
            nsid_name(peer.nsid),
            nsid_name(addr.target_nsid),
            addr.target_nsid
        ));
    }
    Ok((addr.index == peer.ifindex).then_some(addr))
}

/// What a refused dump of `peer` means.
fn refusal(ifindex: u32, peer: PeerRef, errno: i32) -> PeerError {
    let source = io::Error::from_raw_os_error(errno);
    match (errno, peer.nsid) {
        // The peer's interface is gone.
        (libc::ENODEV, _) => PeerError::PeerGone { ifindex, peer },
        // No namespace has that nsid (any more).
        (libc::EINVAL, Some(_)) => PeerError::PeerGone { ifindex, peer },
        (libc::EACCES | libc::EPERM, Some(nsid)) => PeerError::MissingCapability {
            capability: "CAP_NET_ADMIN",
            needed_for: format!(
                "dumping the addresses of a peer in another namespace (IFA_TARGET_NETNSID \
                 {nsid}, peer of link {ifindex}), in the user namespace that owns it"
            ),
            source,
        },
        _ => PeerError::DumpRefused {
            ifindex,
            peer,
            source,
        },
    }
}

/// The `RTM_GETADDR` dump of `family` for `peer`'s ifindex, in its
/// namespace.
fn dump_request(seq: u32, family: AddressFamily, peer: PeerRef) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut body = AddressMessage::default();
    body.header.family = family;
    body.header.index = peer.ifindex;
    if let Some(nsid) = peer.nsid {
        body.attributes.push(AddressAttribute::TargetNetNsId(nsid));
    }
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetAddress(body)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// One address of an address message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr {
    /// `ifa_index`: the interface, in the namespace the message is about.
    index: u32,
    /// The host address: `IFA_LOCAL`, else `IFA_ADDRESS`.
    addr: IpAddr,
    prefix_len: u8,
    /// `IFA_ADDRESS` when it differs from `addr` (a point-to-point peer).
    remote: Option<IpAddr>,
    /// `IFA_TARGET_NETNSID`: set by the kernel in answers to a dump in
    /// another namespace.
    target_nsid: Option<i32>,
}

impl Addr {
    /// What tells two configurations of the same address apart.
    fn instance(&self) -> (u8, Option<IpAddr>) {
        match self.addr {
            IpAddr::V4(_) => (self.prefix_len, self.remote),
            IpAddr::V6(_) => (0, None),
        }
    }
}

/// Decodes an `RTM_NEWADDR`/`RTM_DELADDR` payload with netlink-packet-route;
/// if that fails (an attribute it does not understand), decodes only the
/// header and the attributes needed, so a change is never lost to an exotic
/// attribute. `None` for families other than IPv4 and IPv6.
fn parse_addr(payload: &[u8]) -> Result<Option<Addr>, String> {
    let family = *payload
        .first()
        .ok_or_else(|| "empty address message".to_string())?;
    if !matches!(i32::from(family), libc::AF_INET | libc::AF_INET6) {
        return Ok(None);
    }
    let typed_error = match AddressMessage::parse(payload) {
        Ok(message) => {
            let mut local = None;
            let mut address = None;
            let mut target_nsid = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::TargetNetNsId(id) => target_nsid = Some(*id),
                    _ => {}
                }
            }
            return addr_of(
                message.header.index,
                message.header.prefix_len,
                local,
                address,
                target_nsid,
            )
            .map(Some);
        }
        Err(e) => e.to_string(),
    };
    match parse_addr_minimal(payload) {
        Ok(addr) => {
            tracing::debug!(
                error = %typed_error,
                "address message decoded from its header and addresses only"
            );
            Ok(Some(addr))
        }
        Err(e) => Err(format!("{typed_error}; minimal decode: {e}")),
    }
}

/// `struct ifaddrmsg`, `IFA_LOCAL`, `IFA_ADDRESS` and `IFA_TARGET_NETNSID`.
fn parse_addr_minimal(payload: &[u8]) -> Result<Addr, String> {
    let header = payload
        .get(..IFADDRMSG_LEN)
        .ok_or_else(|| format!("address message of {} bytes", payload.len()))?;
    let prefix_len = header[1];
    let index = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let ip = |value: &[u8]| -> Option<IpAddr> {
        match value.len() {
            4 => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
            _ => None,
        }
    };
    let (mut local, mut address, mut target_nsid) = (None, None, None);
    for nla in NlasIterator::new(&payload[IFADDRMSG_LEN..]) {
        let nla = nla.map_err(|e| e.to_string())?;
        let value = nla.value();
        match nla.kind() {
            IFA_LOCAL => local = Some(ip(value).ok_or("IFA_LOCAL of a bad length")?),
            IFA_ADDRESS => address = Some(ip(value).ok_or("IFA_ADDRESS of a bad length")?),
            IFA_TARGET_NETNSID => {
                target_nsid = Some(
                    value
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(i32::from_ne_bytes)
                        .ok_or("IFA_TARGET_NETNSID of a bad length")?,
                )
            }
            _ => {}
        }
    }
    addr_of(index, prefix_len, local, address, target_nsid)
}

fn addr_of(
    index: u32,
    prefix_len: u8,
    local: Option<IpAddr>,
    address: Option<IpAddr>,
    target_nsid: Option<i32>,
) -> Result<Addr, String> {
    let addr = local.or(address).ok_or_else(|| {
        format!("address message for ifindex {index} without IFA_LOCAL or IFA_ADDRESS")
    })?;
    Ok(Addr {
        index,
        addr,
        prefix_len,
        remote: address.filter(|&a| a != addr),
        target_nsid,
    })
}

#[cfg(test)]
mod tests {
    use super::super::netlink::test_frames::{frame, raw_nla};
    use super::super::netlink::{Body, DumpEnd, DumpReader};
    use super::*;
    use netlink_packet_core::{
        Emitable, NetlinkBuffer, NLMSG_DONE, NLM_F_DUMP_INTR, NLM_F_MULTIPART,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn addr_payload(
        family: AddressFamily,
        index: u32,
        prefix_len: u8,
        attributes: Vec<AddressAttribute>,
    ) -> Vec<u8> {
        let mut message = AddressMessage::default();
        message.header.family = family;
        message.header.index = index;
        message.header.prefix_len = prefix_len;
        message.attributes = attributes;
        let mut buf = vec![0; message.buffer_len()];
        message.emit(&mut buf);
        buf
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7));

    fn addr(index: u32, addr: IpAddr, prefix_len: u8, target_nsid: Option<i32>) -> Addr {
        Addr {
            index,
            addr,
            prefix_len,
            remote: None,
            target_nsid,
        }
    }

    #[test]
    fn new_and_del_address_notifications() {
        let mut datagram = frame(
            RTM_NEWADDR,
            0,
            0,
            &addr_payload(
                AddressFamily::Inet,
                4,
                24,
                vec![
                    AddressAttribute::Address(V4),
                    AddressAttribute::Local(V4),
                    AddressAttribute::Label("pod0".into()),
                ],
            ),
        );
        // IPv6 has IFA_ADDRESS only.
        datagram.extend(frame(
            RTM_DELADDR,
            0,
            0,
            &addr_payload(
                AddressFamily::Inet6,
                4,
                64,
                vec![AddressAttribute::Address(V6)],
            ),
        ));
        let (messages, broken) = ADDRS.parse_datagram(&datagram);
        assert_eq!(broken, None);
        let bodies: Vec<Body<_>> = messages.into_iter().map(|m| m.body).collect();
        assert_eq!(
            bodies,
            vec![
                Body::New(addr(4, V4, 24, None)),
                Body::Del(addr(4, V6, 64, None)),
            ]
        );
    }

    #[test]
    fn point_to_point_local_is_the_host_address() {
        let remote = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4));
        let payload = addr_payload(
            AddressFamily::Inet,
            9,
            32,
            vec![
                AddressAttribute::Local(V4),
                AddressAttribute::Address(remote),
            ],
        );
        let (messages, _) = ADDRS.parse_datagram(&frame(RTM_NEWADDR, 0, 0, &payload));
        let Body::New(a) = &messages[0].body else {
            panic!("{messages:?}");
        };
        assert_eq!(a.addr, V4);
        assert_eq!(a.remote, Some(remote));
        assert_eq!(a.instance(), (32, Some(remote)));
    }

    #[test]
    fn other_families_are_ignored() {
        // AF_MCTP (45) addresses are one byte; never an IP address.
        let mut payload = vec![45u8, 0, 0, 0];
        payload.extend(3u32.to_ne_bytes());
        payload.extend(raw_nla(IFA_LOCAL, &[8]));
        let (messages, broken) = ADDRS.parse_datagram(&frame(RTM_NEWADDR, 0, 0, &payload));
        assert_eq!(broken, None);
        assert_eq!(messages[0].body, Body::Ignored);
    }

    #[test]
    fn undecodable_attribute_falls_back_to_the_addresses() {
        // IFA_CACHEINFO (6) of 3 bytes: netlink-packet-route rejects it.
        let mut payload = vec![libc::AF_INET6 as u8, 64, 0, 0];
        payload.extend(11u32.to_ne_bytes());
        payload.extend(raw_nla(6, &[1, 2, 3]));
        payload.extend(raw_nla(
            IFA_ADDRESS,
            &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        ));
        payload.extend(raw_nla(IFA_TARGET_NETNSID, &5i32.to_ne_bytes()));
        assert!(AddressMessage::parse(&payload[..]).is_err());
        let (messages, _) = ADDRS.parse_datagram(&frame(RTM_NEWADDR, 0, 0, &payload));
        assert_eq!(messages[0].body, Body::New(addr(11, V6, 64, Some(5))));
    }

    #[test]
    fn malformed_address_messages_are_reported() {
        // No address attribute at all.
        let payload = addr_payload(AddressFamily::Inet, 3, 24, vec![]);
        let (messages, _) = ADDRS.parse_datagram(&frame(RTM_NEWADDR, 0, 0, &payload));
        assert!(
            matches!(&messages[0].body, Body::Malformed(m) if m.contains("IFA_LOCAL")),
            "{messages:?}"
        );
        // An address of 5 bytes.
        let mut payload = vec![libc::AF_INET as u8, 24, 0, 0];
        payload.extend(3u32.to_ne_bytes());
        payload.extend(raw_nla(IFA_LOCAL, &[1, 2, 3, 4, 5]));
        let (messages, _) = ADDRS.parse_datagram(&frame(RTM_DELADDR, 0, 0, &payload));
        assert!(matches!(&messages[0].body, Body::Malformed(_)));
        // A header cut short.
        let (messages, _) =
            ADDRS.parse_datagram(&frame(RTM_DELADDR, 0, 0, &[libc::AF_INET as u8, 0]));
        assert!(matches!(&messages[0].body, Body::Malformed(_)));
    }

    #[test]
    fn dump_request_targets_the_peer() {
        let peer = PeerRef {
            nsid: Some(3),
            ifindex: 2,
        };
        let request = dump_request(41, AddressFamily::Inet6, peer);
        let nl = NetlinkBuffer::new_checked(&request[..]).expect("valid request");
        assert_eq!(nl.message_type(), 22); // RTM_GETADDR
        assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(nl.sequence_number(), 41);
        let payload = &request[16..];
        let message = AddressMessage::parse(payload).expect("address message");
        assert_eq!(message.header.family, AddressFamily::Inet6);
        assert_eq!(message.header.index, 2);
        // Strict checking refuses a prefix, flags or scope in a dump request.
        assert_eq!(message.header.prefix_len, 0);
        assert_eq!(payload[2], 0);
        assert_eq!(payload[3], 0);
        assert_eq!(message.attributes, vec![AddressAttribute::TargetNetNsId(3)]);
        // A same-namespace peer: no target attribute.
        let request = dump_request(42, AddressFamily::Inet, PeerRef { nsid: None, ..peer });
        let message = AddressMessage::parse(&request[16..]).expect("address message");
        assert!(message.attributes.is_empty());
    }

    fn dump_part(seq: u32, index: u32, ip: IpAddr, target: Option<i32>) -> Vec<u8> {
        let mut attributes = vec![AddressAttribute::Address(ip)];
        if let Some(id) = target {
            attributes.push(AddressAttribute::TargetNetNsId(id));
        }
        let family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        frame(
            RTM_NEWADDR,
            NLM_F_MULTIPART,
            seq,
            &addr_payload(family, index, 24, attributes),
        )
    }

    #[test]
    fn dump_reader_outcomes() {
        let peer = PeerRef {
            nsid: Some(2),
            ifindex: 5,
        };
        let done = frame(NLMSG_DONE, NLM_F_MULTIPART, 7, &0i32.to_ne_bytes());

        // Stale parts and other interfaces are skipped.
        let mut reader = DumpReader::new(7);
        let mut first = dump_part(6, 5, V6, Some(2));
        first.extend(dump_part(7, 5, V4, Some(2)));
        first.extend(dump_part(7, 6, V6, Some(2)));
        assert!(reader
            .feed(&ADDRS, &first, |a| answer_of(peer, a))
            .is_none());
        let outcome = reader
            .feed(&ADDRS, &done, |a| answer_of(peer, a))
            .expect("end");
        assert_eq!(outcome, DumpEnd::Complete(vec![addr(5, V4, 24, Some(2))]));

        // An answer without the target echo is not trusted.
        let mut reader = DumpReader::new(7);
        let mut datagram = dump_part(7, 5, V4, None);
        datagram.extend(done.clone());
        assert!(matches!(
            reader.feed(&ADDRS, &datagram, |a| answer_of(peer, a)),
            Some(DumpEnd::Malformed(m)) if m.contains("did not honour")
        ));

        // Interrupted.
        let mut reader = DumpReader::new(7);
        let mut datagram = frame(
            NLMSG_DONE,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
            7,
            &0i32.to_ne_bytes(),
        );
        datagram.extend(done.clone());
        assert_eq!(
            reader.feed(&ADDRS, &datagram, |a| answer_of(peer, a)),
            Some(DumpEnd::Interrupted)
        );

        // Refused.
        let mut reader = DumpReader::new(7);
        let refused = frame(
            NLMSG_DONE,
            NLM_F_MULTIPART,
            7,
            &(-libc::EACCES).to_ne_bytes(),
        );
        assert_eq!(
            reader.feed(&ADDRS, &refused, |a| answer_of(peer, a)),
            Some(DumpEnd::Refused(libc::EACCES))
        );
    }

    #[test]
    fn refusals_name_their_cause() {
        let other = PeerRef {
            nsid: Some(4),
            ifindex: 2,
        };
        let same = PeerRef {
            nsid: None,
            ifindex: 2,
        };
        assert!(matches!(
            refusal(9, other, libc::EACCES),
            PeerError::MissingCapability {
                capability: "CAP_NET_ADMIN",
                ..
            }
        ));
        assert!(matches!(
            refusal(9, other, libc::ENODEV),
            PeerError::PeerGone { .. }
        ));
        assert!(matches!(
            refusal(9, other, libc::EINVAL),
            PeerError::PeerGone { .. }
        ));
        assert!(matches!(
            refusal(9, same, libc::EINVAL),
            PeerError::DumpRefused { .. }
        ));
        let message = refusal(9, other, libc::EACCES).to_string();
        assert!(
            message.contains("CAP_NET_ADMIN") && message.contains("link 9"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn works_in_a_runtime_and_refuses_outside_one() {
        // Outside a runtime: a clear error, before any socket.
        let outside = std::thread::spawn(PeerWatcher::new).join().expect("thread");
        assert!(matches!(outside, Err(PeerError::NoRuntime)));
        // Inside, a same-namespace peer needs no privilege: `lo` (ifindex 1)
        // stands in for one and has 127.0.0.1.
        match PeerWatcher::new() {
            Ok(mut watcher) => {
                let addrs = watcher
                    .track(
                        1,
                        PeerRef {
                            nsid: None,
                            ifindex: 1,
                        },
                    )
                    .expect("dump of lo");
                assert!(
                    addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    "{addrs:?}"
                );
                assert_eq!(watcher.addresses(1), Some(addrs));
                watcher.untrack(1);
                assert_eq!(watcher.addresses(1), None);
            }
            // Unprivileged test run: the error names the capability.
            Err(PeerError::MissingCapability { capability, .. }) => {
                assert_eq!(capability, "CAP_NET_BROADCAST")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
