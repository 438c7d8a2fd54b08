//! Watching the network interfaces of a namespace over rtnetlink.
//!
//! [`LinkWatcher`] subscribes to the kernel's `RTNLGRP_LINK` multicast group
//! (the `RTM_NEWLINK` / `RTM_DELLINK` notifications) and turns them into
//! [`LinkEvent`]s. Nothing is polled: the watcher sleeps in the tokio reactor
//! until the kernel queues a notification.
//!
//! # Guarantees
//!
//! * **Nothing is missed between the snapshot and the stream.** [`LinkWatcher::new`]
//!   subscribes first and dumps the current links second, so a link that
//!   appears while the dump runs is in the dump, in the stream, or in both.
//!   Duplicates are harmless because every event is idempotent (below).
//! * **Nothing is silently lost.** When the kernel could not queue a
//!   notification (the socket's receive buffer overflowed, `ENOBUFS`) or a
//!   notification could not be decoded, the watcher discards what is still
//!   queued, dumps the links again and emits [`LinkEvent::Resync`] with the
//!   complete current set: the consumer reconciles against it. Events that
//!   follow a `Resync` may predate it; applied in order they converge to the
//!   kernel's state.
//! * **Events are idempotent.** The kernel sends `RTM_NEWLINK` for every
//!   change of a link (creation, up/down, rename, MTU, carrier, master, …),
//!   so [`LinkEvent::Added`] repeats for the same ifindex. A rename shows as
//!   `Added` carrying the **new** name and the **same** ifindex. Consumers key
//!   their state by ifindex and treat `Added` as "insert or update".
//! * **Only the kernel is listened to.** Both sockets are connected to the
//!   kernel (port 0), so the kernel refuses unicasts to them from other
//!   processes, and datagrams from any other sender are dropped as well: a
//!   local process cannot forge a `RTM_DELLINK` to make the agent detach.
//!
//! # Network namespace
//!
//! Netlink sockets belong to the network namespace of the thread that
//! creates them. [`LinkWatcher::new`] creates both of its sockets, so it
//! watches the namespace its calling thread is in at that moment; the
//! watcher may be moved to and polled from any thread afterwards.
//!
//! # Peers
//!
//! A veth (or netkit) link reports the other end of its pair in
//! [`Link::peer`]: its ifindex and, when it lives in another namespace, that
//! namespace's nsid as seen from the watched one. [`peers::PeerWatcher`]
//! follows the addresses configured on those other ends.

mod netlink;
pub mod peers;
pub mod route_query;
pub use peers::{PeerEvent, PeerWatcher};

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;

use netlink::{
    next_seq, recv_datagram, register, send, DumpEnd, DumpError, DumpOps, DumpReader, Kind,
    SocketError, Subscription, MAX_DUMP_ATTEMPTS,
};

/// Receive buffer requested for the notification socket, in bytes (the
/// kernel doubles it for bookkeeping). About 2 000 link notifications fit
/// before the kernel has to drop one; a drop is not a loss (see
/// [`LinkEvent::Resync`]), only a more expensive path.
pub const DEFAULT_RECEIVE_BUFFER: usize = 4 << 20;

/// How long the initial (blocking) dump may wait for the kernel.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// `RTM_NEWLINK` (`linux/rtnetlink.h`).
const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK` (`linux/rtnetlink.h`).
const RTM_DELLINK: u16 = 17;
/// `RTNLGRP_LINK` (`linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;
/// `IFLA_IFNAME` (`linux/if_link.h`).
const IFLA_IFNAME: u16 = 3;
/// `IFF_UP` (`linux/if.h`).
const IFF_UP: u32 = 1;
/// `IFLA_LINK` (`linux/if_link.h`).
const IFLA_LINK: u16 = 5;
/// `IFLA_LINKINFO`.
const IFLA_LINKINFO: u16 = 18;
/// `IFLA_INFO_KIND`, nested in `IFLA_LINKINFO`.
const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_LINK_NETNSID`.
const IFLA_LINK_NETNSID: u16 = 37;
/// Length of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// Link kinds (`IFLA_INFO_KIND`) whose `IFLA_LINK` is the other end of a
/// pair, not a lower device (as for vlan, macvlan or tunnels).
const PAIR_KINDS: [&str; 2] = ["veth", "netkit"];

/// A network interface as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// Interface name (`IFLA_IFNAME`). A name that is not UTF-8 (Linux
    /// allows it) is converted lossily; key state by [`Link::ifindex`].
    pub name: String,
    /// Interface index, unique in its namespace while the link exists (the
    /// kernel may reuse it for a later link).
    pub ifindex: u32,
    /// Administratively up (`IFF_UP`), whether or not it has a carrier.
    pub up: bool,
    /// The other end of the pair, for veth and netkit links that report it
    /// (`IFLA_LINK`); `None` for every other kind of link (a vlan's or a
    /// tunnel's `IFLA_LINK` is its lower device, not a peer).
    pub peer: Option<PeerRef>,
}

/// Where the other end of a veth or netkit pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRef {
    /// The nsid, in the watched namespace, of the namespace the peer lives
    /// in (`IFLA_LINK_NETNSID`); `None` when the peer is in the watched
    /// namespace itself. The kernel allocates the nsid when it reports the
    /// link; a negative value means the peer namespace is being destroyed.
    pub nsid: Option<i32>,
    /// The peer's ifindex in its own namespace (`IFLA_LINK`).
    pub ifindex: u32,
}

/// A change of the namespace's links. See the [module docs](self) for the
/// idempotence and ordering rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was created or changed (`RTM_NEWLINK`): up/down, renamed (new
    /// name, same ifindex), or any other attribute. Repeats for the same
    /// ifindex; treat as "insert or update".
    Added(Link),
    /// A link was deleted (`RTM_DELLINK`), or moved to another namespace.
    Removed {
        /// Its last name.
        name: String,
        /// Its ifindex (which the kernel may later reuse).
        ifindex: u32,
    },
    /// Notifications were lost (receive buffer overflow) or undecodable:
    /// this is the complete set of links after the loss, sorted by ifindex.
    /// Replace the consumer's view with it: links known to the consumer
    /// but absent here are gone.
    Resync(Vec<Link>),
}

/// Errors of the link watcher.
#[derive(Debug, thiserror::Error)]
pub enum NetwatchError {
    /// [`LinkWatcher::new`] was called outside a tokio runtime.
    #[error("the link watcher must be created inside a tokio runtime")]
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
    /// The kernel refused the link dump request.
    #[error("the kernel refused the link dump: {0}")]
    DumpRefused(#[source] io::Error),
    /// The link dump kept being interrupted by concurrent link changes.
    #[error("the link dump was interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// Dumps attempted.
        attempts: u32,
    },
    /// The kernel sent a link dump message that cannot be decoded.
    #[error("undecodable link dump message: {0}")]
    Malformed(String),
}

fn socket_error(op: &'static str) -> impl FnOnce(io::Error) -> NetwatchError {
    move |source| NetwatchError::Socket { op, source }
}

impl From<SocketError> for NetwatchError {
    fn from(SocketError { op, source }: SocketError) -> NetwatchError {
        NetwatchError::Socket { op, source }
    }
}

impl From<DumpError> for NetwatchError {
    fn from(e: DumpError) -> NetwatchError {
        match e {
            DumpError::Socket(e) => e.into(),
            DumpError::Refused(errno) => {
                NetwatchError::DumpRefused(io::Error::from_raw_os_error(errno))
            }
            DumpError::Malformed(reason) => NetwatchError::Malformed(reason),
            DumpError::Interrupted(attempts) => NetwatchError::DumpInterrupted { attempts },
        }
    }
}

/// What the link watcher decodes: `RTM_NEWLINK` and `RTM_DELLINK`.
const LINKS: Kind<Link> = Kind {
    new: RTM_NEWLINK,
    del: RTM_DELLINK,
    parse: parse_link,
    what: "link",
    receive: "receiving link notifications",
};

/// The names of the link dump's operations.
const LINK_DUMP: DumpOps = DumpOps {
    send: "sending the link dump request",
    receive: "receiving the link dump",
};

/// Watches the links of one network namespace. See the [module docs](self).
pub struct LinkWatcher {
    /// To `RTNLGRP_LINK`.
    events: Subscription,
    /// Sends the `RTM_GETLINK` dumps; subscribed to nothing.
    dumper: AsyncFd<Socket>,
    dump_buf: Vec<u8>,
    /// Decoded events not yet returned by [`LinkWatcher::next`].
    pending: VecDeque<LinkEvent>,
    /// Sequence number of a dump whose answer was not read to the end
    /// (cancelled or failed); it is read out before the next dump, since
    /// the kernel runs one dump per socket at a time.
    dump_in_flight: Option<u32>,
    seq: u32,
}

impl std::fmt::Debug for LinkWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatcher")
            .field("pending", &self.pending.len())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl LinkWatcher {
    /// Subscribes to the link notifications of the calling thread's network
    /// namespace, then dumps its links, with the
    /// [default receive buffer](DEFAULT_RECEIVE_BUFFER). Returns the watcher
    /// and the current links, sorted by ifindex.
    ///
    /// Must be called inside a tokio runtime whose I/O driver is enabled
    /// (tokio panics otherwise), by a thread that is in the namespace to
    /// watch: both sockets are created during this call. The initial dump
    /// blocks the calling thread while the kernel answers from memory (a few
    /// milliseconds for hundreds of links; given up after
    /// [`DUMP_TIMEOUT`]).
    pub fn new() -> Result<(LinkWatcher, Vec<Link>), NetwatchError> {
        LinkWatcher::with_receive_buffer(DEFAULT_RECEIVE_BUFFER)
    }

    /// Like [`LinkWatcher::new`] with a receive buffer of `bytes` for the
    /// notification socket. Set with `SO_RCVBUFFORCE` (which needs
    /// CAP_NET_ADMIN), falling back to `SO_RCVBUF` (capped by
    /// `net.core.rmem_max`).
    pub fn with_receive_buffer(bytes: usize) -> Result<(LinkWatcher, Vec<Link>), NetwatchError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetwatchError::NoRuntime);
        }
        // Subscribe first: from here on every change is queued for us.
        let (events, receive_buffer) =
            netlink::event_socket(bytes, &[(RTNLGRP_LINK, "joining RTNLGRP_LINK")], |_| {
                Ok::<_, NetwatchError>(())
            })?;
        // Then dump, on a socket of its own (blocking for this first dump).
        let dumper = netlink::dump_socket(false)?;
        let mut seq = 0;
        let mut dump_buf = Vec::with_capacity(64 << 10);
        let links = netlink::dump_blocking(
            &dumper,
            &mut dump_buf,
            &mut seq,
            &LINK_DUMP,
            &LINKS,
            dump_request,
            |link| Ok(Some(link)),
        )?;
        dumper
            .set_non_blocking(true)
            .map_err(socket_error("making the dump socket non-blocking"))?;

        let watcher = LinkWatcher {
            events: Subscription::new(events, receive_buffer, 64 << 10)?,
            dumper: register(dumper).map_err(socket_error("registering the dump socket"))?,
            dump_buf,
            pending: VecDeque::new(),
            dump_in_flight: None,
            seq,
        };
        Ok((watcher, by_ifindex(links)))
    }

    /// The next link event. Waits (without polling) until there is one.
    ///
    /// Cancel-safe: dropping the future (as `tokio::select!` and
    /// `tokio::time::timeout` do) loses nothing; an interrupted resync is
    /// redone by the next call. An error is not fatal either: a failed
    /// resync is retried by the next call.
    pub async fn next(&mut self) -> Result<LinkEvent, NetwatchError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.events.resync_needed {
                self.resync().await?;
                continue;
            }
            let (changes, _) = self.events.next(&LINKS).await?;
            self.pending
                .extend(changes.into_iter().map(|(new, link)| match new {
                    true => LinkEvent::Added(link),
                    false => LinkEvent::Removed {
                        name: link.name,
                        ifindex: link.ifindex,
                    },
                }));
        }
    }

    /// How many [`LinkEvent::Resync`]s this watcher has emitted.
    pub fn resyncs(&self) -> u64 {
        self.events.resyncs
    }

    /// The effective receive buffer of the notification socket, in bytes, as
    /// the kernel reports it (twice the requested size).
    pub fn receive_buffer(&self) -> usize {
        self.events.receive_buffer
    }

    /// Discards the queued notifications (they may precede lost ones, which
    /// would make them lie), dumps the links and queues the `Resync`.
    async fn resync(&mut self) -> Result<(), NetwatchError> {
        let discarded = self.events.drain();
        let links = self.dump().await?;
        tracing::info!(
            discarded,
            links = links.len(),
            "link watcher resynchronised"
        );
        self.events.resynced();
        self.pending.push_back(LinkEvent::Resync(links));
        Ok(())
    }

    /// Dumps the links, retrying dumps interrupted by concurrent changes.
    async fn dump(&mut self) -> Result<Vec<Link>, NetwatchError> {
        if let Some(seq) = self.dump_in_flight {
            // Read out the abandoned dump: the kernel runs one per socket.
            self.read_dump(seq).await?;
        }
        for _ in 0..MAX_DUMP_ATTEMPTS {
            let seq = next_seq(&mut self.seq);
            send(&self.dumper, &dump_request(seq))
                .await
                .map_err(socket_error(LINK_DUMP.send))?;
            self.dump_in_flight = Some(seq);
            match self.read_dump(seq).await? {
                DumpEnd::Complete(links) => return Ok(by_ifindex(links)),
                DumpEnd::Interrupted => {
                    tracing::debug!("link dump interrupted by a concurrent change; retrying");
                }
                DumpEnd::Refused(errno) => {
                    return Err(NetwatchError::DumpRefused(io::Error::from_raw_os_error(
                        errno,
                    )))
                }
                DumpEnd::Malformed(reason) => return Err(NetwatchError::Malformed(reason)),
            }
        }
        Err(NetwatchError::DumpInterrupted {
            attempts: MAX_DUMP_ATTEMPTS,
        })
    }

    /// Reads the answer to dump `seq` up to its end.
    async fn read_dump(&mut self, seq: u32) -> Result<DumpEnd<Link>, NetwatchError> {
        let mut reader = DumpReader::new(seq);
        loop {
            let from = recv_datagram(&self.dumper, &mut self.dump_buf)
                .await
                .map_err(socket_error(LINK_DUMP.receive))?;
            if from.port_number() != 0 {
                continue;
            }
            if let Some(end) = reader.feed(&LINKS, &self.dump_buf, |link| Ok(Some(link))) {
                self.dump_in_flight = None;
                return Ok(end);
            }
        }
    }
}

/// A dump's links sorted by ifindex, the last message about each kept.
fn by_ifindex(links: Vec<Link>) -> Vec<Link> {
    let sorted: BTreeMap<u32, Link> = links.into_iter().map(|l| (l.ifindex, l)).collect();
    sorted.into_values().collect()
}

/// The `RTM_GETLINK` dump request with sequence number `seq`.
fn dump_request(seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// Decodes an `RTM_NEWLINK`/`RTM_DELLINK` payload with netlink-packet-route;
/// if that fails (an attribute it does not understand), decodes only the
/// header and `IFLA_IFNAME`, so a link event is never lost to an exotic
/// attribute. `None` for families other than `AF_UNSPEC`.
fn parse_link(payload: &[u8]) -> Result<Option<Link>, String> {
    let typed_error = match LinkMessage::parse(payload) {
        Ok(message) => {
            if message.header.interface_family != AddressFamily::Unspec {
                return Ok(None);
            }
            let name = message.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            let mut link_attr = None;
            let mut netnsid = None;
            let mut pair = false;
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::Link(index) => link_attr = Some(*index),
                    LinkAttribute::LinkNetNsId(id) => netnsid = Some(*id),
                    LinkAttribute::LinkInfo(infos) => {
                        pair = infos.iter().any(|info| {
                            matches!(info, LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit))
                        })
                    }
                    _ => {}
                }
            }
            return match name {
                Some(name) => Ok(Some(Link {
                    name,
                    ifindex: message.header.index,
                    up: message.header.flags.contains(LinkFlags::Up),
                    peer: peer_ref(pair, link_attr, netnsid),
                })),
                None => Err(format!(
                    "link message for ifindex {} without IFLA_IFNAME",
                    message.header.index
                )),
            };
        }
        Err(e) => e.to_string(),
    };
    match parse_link_minimal(payload) {
        Ok(link) => {
            tracing::debug!(
                error = %typed_error,
                "link message decoded from its header and name only"
            );
            Ok(link)
        }
        Err(e) => Err(format!("{typed_error}; minimal decode: {e}")),
    }
}

/// `struct ifinfomsg` and `IFLA_IFNAME`, nothing else.
fn parse_link_minimal(payload: &[u8]) -> Result<Option<Link>, String> {
    let header = payload
        .get(..IFINFOMSG_LEN)
        .ok_or_else(|| format!("link message of {} bytes", payload.len()))?;
    if header[0] != libc::AF_UNSPEC as u8 {
        return Ok(None);
    }
    let word = |at: usize| {
        u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let ifindex = word(4);
    let flags = word(8);
    let mut name = None;
    let mut link_attr = None;
    let mut netnsid = None;
    let mut pair = false;
    for nla in NlasIterator::new(&payload[IFINFOMSG_LEN..]) {
        let nla = nla.map_err(|e| e.to_string())?;
        let value = nla.value();
        match nla.kind() {
            IFLA_IFNAME => name = Some(c_string(value)),
            IFLA_LINK => link_attr = ne_word(value).map(u32::from_ne_bytes),
            IFLA_LINK_NETNSID => netnsid = ne_word(value).map(i32::from_ne_bytes),
            IFLA_LINKINFO => {
                // A nested attribute that cannot be read only costs the peer.
                pair = NlasIterator::new(value).flatten().any(|info| {
                    info.kind() == IFLA_INFO_KIND
                        && PAIR_KINDS.contains(&c_string(info.value()).as_str())
                });
            }
            _ => {}
        }
    }
    match name {
        Some(name) => Ok(Some(Link {
            name,
            ifindex,
            up: flags & IFF_UP != 0,
            peer: peer_ref(pair, link_attr, netnsid),
        })),
        None => Err(format!(
            "link message for ifindex {ifindex} without IFLA_IFNAME"
        )),
    }
}

/// A NUL-terminated (or not) attribute string, converted lossily.
fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// The first four bytes of an attribute value, if it has them.
fn ne_word(value: &[u8]) -> Option<[u8; 4]> {
    value.get(..4).and_then(|b| b.try_into().ok())
}

/// The peer of a link of a pair kind (`pair`) that reported `IFLA_LINK`.
fn peer_ref(pair: bool, link: Option<u32>, netnsid: Option<i32>) -> Option<PeerRef> {
    match link {
        Some(ifindex) if pair && ifindex != 0 => Some(PeerRef {
            nsid: netnsid,
            ifindex,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::netlink::test_frames::{frame, raw_nla};
    use super::netlink::Body;
    use super::*;
    use netlink_packet_core::{
        Emitable, NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR, NLM_F_MULTIPART,
    };
    use netlink_packet_route::link::LinkHeader;

    fn link_payload(family: AddressFamily, index: u32, up: bool, name: &str) -> Vec<u8> {
        let header = LinkHeader {
            interface_family: family,
            index,
            flags: if up {
                LinkFlags::Up | LinkFlags::Running
            } else {
                LinkFlags::empty()
            },
            ..LinkHeader::default()
        };
        let mut message = LinkMessage::default();
        message.header = header;
        message.attributes = vec![
            LinkAttribute::Mtu(1500),
            LinkAttribute::IfName(name.to_string()),
        ];
        let mut buf = vec![0; message.buffer_len()];
        message.emit(&mut buf);
        buf
    }

    fn link(name: &str, ifindex: u32, up: bool) -> Link {
        Link {
            name: name.to_string(),
            ifindex,
            up,
            peer: None,
        }
    }

    #[test]
    fn new_and_del_link_notifications() {
        let mut datagram = frame(
            RTM_NEWLINK,
            0,
            0,
            &link_payload(AddressFamily::Unspec, 7, true, "veth0"),
        );
        datagram.extend(frame(
            RTM_DELLINK,
            0,
            0,
            &link_payload(AddressFamily::Unspec, 8, false, "veth1"),
        ));
        let (messages, malformed) = LINKS.parse_datagram(&datagram);
        assert_eq!(malformed, None);
        let bodies: Vec<Body<_>> = messages.into_iter().map(|m| m.body).collect();
        assert_eq!(
            bodies,
            vec![
                Body::New(link("veth0", 7, true)),
                Body::Del(link("veth1", 8, false)),
            ]
        );
    }

    #[test]
    fn bridge_port_messages_are_ignored() {
        // `RTM_DELLINK` with AF_BRIDGE: a port left a bridge, the link lives.
        let datagram = frame(
            RTM_DELLINK,
            0,
            0,
            &link_payload(AddressFamily::Bridge, 9, true, "veth2"),
        );
        let (messages, malformed) = LINKS.parse_datagram(&datagram);
        assert_eq!(malformed, None);
        assert_eq!(messages[0].body, Body::Ignored);
    }

    #[test]
    fn undecodable_attribute_falls_back_to_header_and_name() {
        // IFLA_MTU (4) with 2 bytes instead of 4: netlink-packet-route
        // rejects the message, the minimal decoder still finds the link.
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&42u32.to_ne_bytes());
        payload[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
        payload.extend(raw_nla(4, &[1, 2]));
        payload.extend(raw_nla(IFLA_IFNAME, b"eth9\0"));
        assert!(LinkMessage::parse(&payload[..]).is_err());
        let (messages, malformed) = LINKS.parse_datagram(&frame(RTM_NEWLINK, 0, 0, &payload));
        assert_eq!(malformed, None);
        assert_eq!(messages[0].body, Body::New(link("eth9", 42, true)));
    }

    fn link_with(index: u32, attributes: Vec<LinkAttribute>) -> Vec<u8> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = attributes;
        let mut buf = vec![0; message.buffer_len()];
        message.emit(&mut buf);
        buf
    }

    fn parsed(payload: &[u8]) -> Link {
        let (messages, broken) = LINKS.parse_datagram(&frame(RTM_NEWLINK, 0, 0, payload));
        assert_eq!(broken, None);
        match &messages[0].body {
            Body::New(link) => link.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn veth_and_netkit_links_report_their_peer() {
        let kind = |k| LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]);
        let name = || LinkAttribute::IfName("lxc1".into());
        // In another namespace: IFLA_LINK and IFLA_LINK_NETNSID.
        let veth = link_with(
            7,
            vec![
                name(),
                LinkAttribute::Link(2),
                LinkAttribute::LinkNetNsId(3),
                kind(InfoKind::Veth),
            ],
        );
        assert_eq!(
            parsed(&veth).peer,
            Some(PeerRef {
                nsid: Some(3),
                ifindex: 2
            })
        );
        // In the same namespace: no nsid.
        let netkit = link_with(
            7,
            vec![name(), LinkAttribute::Link(8), kind(InfoKind::Netkit)],
        );
        assert_eq!(
            parsed(&netkit).peer,
            Some(PeerRef {
                nsid: None,
                ifindex: 8
            })
        );
        // A vlan's IFLA_LINK is its lower device, not a peer.
        let vlan = link_with(
            7,
            vec![name(), LinkAttribute::Link(2), kind(InfoKind::Vlan)],
        );
        assert_eq!(parsed(&vlan).peer, None);
        // A veth whose peer is being deleted reports IFLA_LINK 0.
        let orphan = link_with(
            7,
            vec![name(), LinkAttribute::Link(0), kind(InfoKind::Veth)],
        );
        assert_eq!(parsed(&orphan).peer, None);
        // No IFLA_LINK: no peer.
        assert_eq!(
            parsed(&link_with(7, vec![name(), kind(InfoKind::Veth)])).peer,
            None
        );
    }

    #[test]
    fn minimal_decoder_reports_the_peer_too() {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&42u32.to_ne_bytes());
        payload.extend(raw_nla(4, &[1, 2])); // a bad IFLA_MTU
        payload.extend(raw_nla(IFLA_IFNAME, b"lxc9\0"));
        payload.extend(raw_nla(IFLA_LINK, &11u32.to_ne_bytes()));
        payload.extend(raw_nla(IFLA_LINK_NETNSID, &5i32.to_ne_bytes()));
        payload.extend(raw_nla(IFLA_LINKINFO, &raw_nla(IFLA_INFO_KIND, b"veth\0")));
        assert!(LinkMessage::parse(&payload[..]).is_err());
        assert_eq!(
            parsed(&payload).peer,
            Some(PeerRef {
                nsid: Some(5),
                ifindex: 11
            })
        );
        // The same as a vxlan: no peer.
        let cut = payload.len() - 16;
        payload.truncate(cut);
        payload.extend(raw_nla(IFLA_LINKINFO, &raw_nla(IFLA_INFO_KIND, b"vxlan\0")));
        assert_eq!(parsed(&payload).peer, None);
    }

    #[test]
    fn truly_malformed_messages_are_reported() {
        // No name at all.
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&5u32.to_ne_bytes());
        let good = frame(
            RTM_NEWLINK,
            0,
            0,
            &link_payload(AddressFamily::Unspec, 1, true, "lo"),
        );
        let mut datagram = good.clone();
        datagram.extend(frame(RTM_NEWLINK, 0, 0, &payload));
        datagram.extend(good.clone());
        let (messages, broken) = LINKS.parse_datagram(&datagram);
        assert_eq!(broken, None);
        assert_eq!(
            messages.len(),
            3,
            "the messages around the bad one are kept"
        );
        assert_eq!(messages[0].body, Body::New(link("lo", 1, true)));
        assert!(matches!(&messages[1].body, Body::Malformed(m) if m.contains("IFLA_IFNAME")));
        assert_eq!(messages[2].body, Body::New(link("lo", 1, true)));

        // A length field beyond the datagram.
        let mut cut = good.clone();
        cut.truncate(good.len() - 8);
        let (messages, malformed) = LINKS.parse_datagram(&cut);
        assert!(messages.is_empty());
        assert!(malformed.is_some());

        // A link header cut short.
        let (messages, broken) = LINKS.parse_datagram(&frame(RTM_DELLINK, 0, 0, &[0; 8]));
        assert_eq!(broken, None);
        assert!(matches!(messages[0].body, Body::Malformed(_)));
    }

    #[test]
    fn done_error_and_dump_flags() {
        let mut datagram = frame(
            RTM_NEWLINK,
            NLM_F_DUMP_INTR,
            5,
            &link_payload(AddressFamily::Unspec, 1, true, "lo"),
        );
        datagram.extend(frame(NLMSG_DONE, 0, 5, &0i32.to_ne_bytes()));
        datagram.extend(frame(NLMSG_DONE, 0, 6, &[]));
        datagram.extend(frame(NLMSG_DONE, 0, 7, &(-libc::EBUSY).to_ne_bytes()));
        datagram.extend(frame(NLMSG_ERROR, 0, 8, &[0; 20]));
        let mut nack = (-libc::EPERM).to_ne_bytes().to_vec();
        nack.extend([0; 16]);
        datagram.extend(frame(NLMSG_ERROR, 0, 9, &nack));
        let (messages, malformed) = LINKS.parse_datagram(&datagram);
        assert_eq!(malformed, None);
        assert_eq!(messages[0].seq, 5);
        assert_ne!(messages[0].flags & NLM_F_DUMP_INTR, 0);
        let bodies: Vec<Body<_>> = messages.into_iter().skip(1).map(|m| m.body).collect();
        assert_eq!(
            bodies,
            vec![
                Body::Done(0),
                Body::Done(0),
                Body::Done(-libc::EBUSY),
                Body::Error(None),
                Body::Error(Some(-libc::EPERM)),
            ]
        );
    }

    #[test]
    fn dump_request_is_a_getlink_dump() {
        let request = dump_request(77);
        let nl = NetlinkBuffer::new_checked(&request[..]).expect("valid request");
        assert_eq!(nl.message_type(), 18); // RTM_GETLINK
        assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(nl.sequence_number(), 77);
        assert_eq!(nl.length() as usize, request.len());
    }

    #[tokio::test]
    async fn works_in_a_runtime_and_refuses_outside_one() {
        // Inside a runtime it works without privileges (any user may read
        // the links of its namespace) and sees at least `lo`.
        let (_watcher, links) = LinkWatcher::new().expect("watcher");
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        let outside = std::thread::spawn(LinkWatcher::new).join().expect("thread");
        assert!(matches!(outside, Err(NetwatchError::NoRuntime)));
    }

    fn keep(link: Link) -> Result<Option<Link>, String> {
        Ok(Some(link))
    }

    #[test]
    fn dump_reader_outcomes() {
        let lo = frame(
            RTM_NEWLINK,
            NLM_F_MULTIPART,
            3,
            &link_payload(AddressFamily::Unspec, 1, true, "lo"),
        );
        let eth = frame(
            RTM_NEWLINK,
            NLM_F_MULTIPART,
            3,
            &link_payload(AddressFamily::Unspec, 2, false, "eth0"),
        );
        let stale = frame(
            RTM_NEWLINK,
            NLM_F_MULTIPART,
            2,
            &link_payload(AddressFamily::Unspec, 9, false, "old"),
        );
        let done = frame(NLMSG_DONE, NLM_F_MULTIPART, 3, &0i32.to_ne_bytes());

        // Two datagrams, a stale part of an earlier dump skipped.
        let mut reader = DumpReader::new(3);
        let mut first = stale.clone();
        first.extend(eth.clone());
        assert!(reader.feed(&LINKS, &first, keep).is_none());
        let mut second = lo.clone();
        second.extend(done.clone());
        let DumpEnd::Complete(links) = reader.feed(&LINKS, &second, keep).expect("end") else {
            panic!("the dump did not complete");
        };
        assert_eq!(
            by_ifindex(links),
            vec![link("lo", 1, true), link("eth0", 2, false)]
        );

        // NLM_F_DUMP_INTR on any part.
        let mut reader = DumpReader::new(3);
        let mut datagram = frame(
            RTM_NEWLINK,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
            3,
            &link_payload(AddressFamily::Unspec, 1, true, "lo"),
        );
        datagram.extend(done.clone());
        let outcome = reader.feed(&LINKS, &datagram, keep).expect("end");
        assert_eq!(outcome, DumpEnd::Interrupted);

        // A refusal.
        let mut reader = DumpReader::new(3);
        let refused = frame(
            NLMSG_DONE,
            NLM_F_MULTIPART,
            3,
            &(-libc::EBUSY).to_ne_bytes(),
        );
        assert_eq!(
            reader.feed(&LINKS, &refused, keep),
            Some(DumpEnd::Refused(libc::EBUSY))
        );

        // A malformed part is reported once the end is read.
        let mut reader = DumpReader::new(3);
        let mut datagram = frame(RTM_NEWLINK, NLM_F_MULTIPART, 3, &[0; 8]);
        datagram.extend(lo);
        assert!(reader.feed(&LINKS, &datagram, keep).is_none());
        assert!(matches!(
            reader.feed(&LINKS, &done, keep),
            Some(DumpEnd::Malformed(_))
        ));
    }
}
