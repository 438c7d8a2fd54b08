//! The rtnetlink plumbing both watchers share ([`super::LinkWatcher`] for
//! links, [`super::PeerWatcher`] for peer addresses): the notification
//! socket and the dump socket, reading whole datagrams, splitting them into
//! messages, what a notification datagram asks of a watcher, and reading a
//! dump to its end with retries. Each watcher brings what it watches: the
//! message types, the payload decoder and its own error type (every error
//! here converts into it).

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;

use netlink_packet_core::{NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NLM_F_DUMP_INTR};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{
    getsockopt, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, NetlinkAddr,
};
use nix::sys::time::TimeVal;
use tokio::io::unix::AsyncFd;

use super::DUMP_TIMEOUT;

/// How many times a dump interrupted by a concurrent change
/// (`NLM_F_DUMP_INTR`) is retried before giving up.
pub(super) const MAX_DUMP_ATTEMPTS: u32 = 8;

/// `SOL_NETLINK` (`linux/socket.h`).
const SOL_NETLINK: libc::c_int = 270;
/// `NETLINK_LISTEN_ALL_NSID` (`linux/netlink.h`), also the cmsg type.
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;

/// A netlink socket operation that failed.
#[derive(Debug)]
pub(super) struct SocketError {
    /// What was being done.
    pub op: &'static str,
    pub source: io::Error,
}

/// `SocketError { op, .. }` for an [`io::Error`].
pub(super) fn failed(op: &'static str) -> impl FnOnce(io::Error) -> SocketError {
    move |source| SocketError { op, source }
}

/// The socket that receives the notifications of `groups` (each with the
/// operation's name for errors): receive buffer of `bytes` (returned: the
/// effective size), bound, connected to the kernel so only it can send,
/// non-blocking. `configure` runs after binding and before joining (e.g. to
/// listen to every namespace).
pub(super) fn event_socket<E: From<SocketError>>(
    bytes: usize,
    groups: &[(u32, &'static str)],
    configure: impl FnOnce(&mut Socket) -> Result<(), E>,
) -> Result<(Socket, usize), E> {
    let mut events = Socket::new(NETLINK_ROUTE).map_err(failed("creating the event socket"))?;
    let receive_buffer = set_receive_buffer(&events, bytes)?;
    events
        .bind_auto()
        .map_err(failed("binding the event socket"))?;
    configure(&mut events)?;
    for &(group, op) in groups {
        events.add_membership(group).map_err(failed(op))?;
    }
    events
        .connect(&SocketAddr::new(0, 0))
        .map_err(failed("connecting the event socket to the kernel"))?;
    events
        .set_non_blocking(true)
        .map_err(failed("making the event socket non-blocking"))?;
    Ok((events, receive_buffer))
}

/// A dump socket: subscribed to nothing, connected to the kernel, blocking
/// with [`DUMP_TIMEOUT`]; with strict checking when `strict` (the kernel
/// honours `IFA_TARGET_NETNSID` and the ifindex filter only then).
pub(super) fn dump_socket(strict: bool) -> Result<Socket, SocketError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(failed("creating the dump socket"))?;
    socket
        .bind_auto()
        .map_err(failed("binding the dump socket"))?;
    if strict {
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(failed("enabling NETLINK_GET_STRICT_CHK (Linux 4.20+)"))?;
    }
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(failed("connecting the dump socket to the kernel"))?;
    let timeout = TimeVal::new(
        DUMP_TIMEOUT.as_secs() as libc::time_t,
        libc::suseconds_t::from(DUMP_TIMEOUT.subsec_micros()),
    );
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| failed("setting SO_RCVTIMEO")(e.into()))?;
    Ok(socket)
}

/// A subscription to notifications (a watcher's event socket), with the
/// resynchronisation bookkeeping both watchers keep.
pub(super) struct Subscription {
    /// Subscribed to the watcher's groups; never sends.
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    /// Set when notifications were lost or undecodable; cleared once the
    /// watcher queued its `Resync` ([`Subscription::resynced`]), so an
    /// interrupted resync (error, cancelled future) is redone.
    pub resync_needed: bool,
    /// How many `Resync`s the watcher emitted.
    pub resyncs: u64,
    /// The effective receive buffer, in bytes, as the kernel reports it
    /// (twice the requested size).
    pub receive_buffer: usize,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("resync_needed", &self.resync_needed)
            .field("resyncs", &self.resyncs)
            .field("receive_buffer", &self.receive_buffer)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscription on `socket` (an [`event_socket`] whose receive
    /// buffer is `receive_buffer`), reading datagrams into a buffer of
    /// `capacity` bytes to begin with.
    pub fn new(
        socket: Socket,
        receive_buffer: usize,
        capacity: usize,
    ) -> Result<Subscription, SocketError> {
        Ok(Subscription {
            socket: register(socket).map_err(failed("registering the event socket"))?,
            buf: Vec::with_capacity(capacity),
            cmsg: nix::cmsg_space!(libc::c_int),
            resync_needed: false,
            resyncs: 0,
            receive_buffer,
        })
    }

    /// Waits (without polling) for the next datagram from the kernel and
    /// returns the changes of `kind` it reports, with the nsid the kernel
    /// tagged it with (`None`: the watched namespace). Datagrams from any
    /// other sender are dropped. Lost notifications (`ENOBUFS`) and
    /// undecodable ones set [`Subscription::resync_needed`]. Cancel-safe.
    pub async fn next<T>(
        &mut self,
        kind: &Kind<T>,
    ) -> Result<(Vec<(bool, T)>, Option<i32>), SocketError> {
        loop {
            match recv_tagged(&self.socket, &mut self.buf, &mut self.cmsg).await {
                Ok((0, nsid)) => {
                    let (changes, resync) = kind.changes(&self.buf);
                    self.resync_needed |= resync;
                    return Ok((changes, nsid));
                }
                Ok((port, _)) => {
                    tracing::warn!(port, "dropping a netlink datagram not sent by the kernel");
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(
                        "{} notifications were dropped by the kernel (receive buffer full); \
                         resynchronising",
                        kind.what
                    );
                    self.resync_needed = true;
                    return Ok((Vec::new(), None));
                }
                Err(e) => return Err(failed(kind.receive)(e)),
            }
        }
    }

    /// Discards the queued notifications (before a dump: they may precede
    /// lost ones, which would make them lie); returns how many.
    pub fn drain(&self) -> usize {
        drain(self.socket.get_ref())
    }

    /// The watcher queued a `Resync`.
    pub fn resynced(&mut self) {
        self.resync_needed = false;
        self.resyncs += 1;
    }
}

/// Registers `socket` with the tokio reactor of the current runtime.
pub(super) fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor (it closes it on drop, never
    // earlier), its `as_raw_fd` always returns that same descriptor, and
    // nothing here replaces or closes it while the `AsyncFd` owns it.
    unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
}

/// Sets the receive buffer of `socket` and returns the effective size:
/// `SO_RCVBUFFORCE` (which needs CAP_NET_ADMIN), falling back to
/// `SO_RCVBUF` (capped by `net.core.rmem_max`).
fn set_receive_buffer(socket: &Socket, bytes: usize) -> Result<usize, SocketError> {
    if let Err(errno) = setsockopt(socket, sockopt::RcvBufForce, &bytes) {
        tracing::debug!(%errno, "SO_RCVBUFFORCE refused; using SO_RCVBUF");
        setsockopt(socket, sockopt::RcvBuf, &bytes)
            .map_err(|e| failed("setting SO_RCVBUF")(e.into()))?;
    }
    getsockopt(socket, sockopt::RcvBuf).map_err(|e| failed("reading SO_RCVBUF")(e.into()))
}

/// The next dump sequence number (never 0, which notifications carry).
pub(super) fn next_seq(seq: &mut u32) -> u32 {
    *seq = seq.wrapping_add(1).max(1);
    *seq
}

/// Sends `data` whole on the non-blocking `socket`.
pub(super) async fn send(socket: &AsyncFd<Socket>, data: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = socket.writable().await?;
        match guard.try_io(|s| s.get_ref().send(data, 0)) {
            Ok(result) => return whole(result?, data.len()),
            Err(_would_block) => continue,
        }
    }
}

/// An error unless all `len` bytes were `sent`.
fn whole(sent: usize, len: usize) -> io::Result<()> {
    if sent == len {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::WriteZero,
        format!("sent {sent} of {len} bytes"),
    ))
}

/// Receives one datagram into `buf` (grown to fit it, so nothing is ever
/// truncated) and returns its sender.
pub(super) async fn recv_datagram(
    socket: &AsyncFd<Socket>,
    buf: &mut Vec<u8>,
) -> io::Result<SocketAddr> {
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| recv_whole(s.get_ref(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Peeks at the size of the next datagram, makes room for it in `buf` and
/// reads it.
pub(super) fn recv_whole(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<SocketAddr> {
    let mut probe: &mut [u8] = &mut [];
    let size = socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)?;
    buf.clear();
    buf.reserve(size);
    let (len, from) = socket.recv_from(buf, libc::MSG_TRUNC)?;
    if len > buf.len() {
        // Cannot happen with a single reader; never hand out a partial one.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "netlink datagram truncated ({len} bytes, {} read)",
                buf.len()
            ),
        ));
    }
    Ok(from)
}

/// Reads and discards every queued datagram of the non-blocking `socket`.
/// Returns how many were discarded.
fn drain(socket: &Socket) -> usize {
    let mut scratch: &mut [u8] = &mut [];
    let mut discarded = 0;
    loop {
        match socket.recv(&mut scratch, libc::MSG_TRUNC) {
            Ok(_) => discarded += 1,
            // Another overflow while draining: what it lost is older than
            // the dump that follows.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return discarded, // WouldBlock: empty
        }
    }
}

/// Receives one datagram into `buf` (grown to fit), with the nsid the
/// kernel tagged it with. Returns the sender's port and the nsid (`None`:
/// the watched namespace).
async fn recv_tagged(
    socket: &AsyncFd<Socket>,
    buf: &mut Vec<u8>,
    cmsg: &mut [u8],
) -> io::Result<(u32, Option<i32>)> {
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| recv_tagged_now(s.get_ref(), buf, cmsg)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Non-blocking [`recv_tagged`].
fn recv_tagged_now(
    socket: &Socket,
    buf: &mut Vec<u8>,
    cmsg: &mut [u8],
) -> io::Result<(u32, Option<i32>)> {
    let mut probe: &mut [u8] = &mut [];
    let size = socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)?;
    buf.clear();
    buf.resize(size, 0);
    let mut iov = [IoSliceMut::new(&mut buf[..])];
    let message = recvmsg::<NetlinkAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )
    .map_err(io::Error::from)?;
    if message.bytes > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "netlink datagram truncated ({} bytes, {size} read)",
                message.bytes
            ),
        ));
    }
    let port = message.address.map_or(0, |a| a.pid());
    let mut nsid = None;
    for control in message.cmsgs().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netlink control message truncated: {e}"),
        )
    })? {
        if let ControlMessageOwned::Unknown(unknown) = control {
            if unknown.cmsg_header.cmsg_level == SOL_NETLINK
                && unknown.cmsg_header.cmsg_type == NETLINK_LISTEN_ALL_NSID
            {
                nsid = unknown
                    .data_bytes
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes);
            }
        }
    }
    let bytes = message.bytes;
    buf.truncate(bytes);
    Ok((port, nsid))
}

/// One decoded netlink message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Message<T> {
    pub seq: u32,
    pub flags: u16,
    pub body: Body<T>,
}

/// A message about a `T` (a link, an address), or one of netlink's own.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Body<T> {
    /// It exists now, or changed (`RTM_NEW*`).
    New(T),
    /// It is gone (`RTM_DEL*`).
    Del(T),
    /// `NLMSG_DONE` with its error code (0 or a negative errno).
    Done(i32),
    /// `NLMSG_ERROR`: `None` for an ACK, else the negative errno.
    Error(Option<i32>),
    Overrun,
    /// A message whose header is sound but whose payload is not.
    Malformed(String),
    /// Anything else, and what the decoder leaves out (`Ok(None)`).
    Ignored,
}

/// What a watcher decodes: message types `new` and `del`, whose payload
/// `parse` reads (`Ok(None)`: not of interest).
pub(super) struct Kind<T> {
    pub new: u16,
    pub del: u16,
    pub parse: fn(&[u8]) -> Result<Option<T>, String>,
    /// What the notifications are about ("link", "address"), for the log.
    pub what: &'static str,
    /// The operation of receiving them, for errors.
    pub receive: &'static str,
}

impl<T> Kind<T> {
    /// Decodes the messages of one datagram. A message whose payload
    /// cannot be decoded is [`Body::Malformed`]; if the framing itself is
    /// broken, returns the messages before it and why.
    pub fn parse_datagram(&self, buf: &[u8]) -> (Vec<Message<T>>, Option<String>) {
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let nl = match NetlinkBuffer::new_checked(&buf[offset..]) {
                Ok(nl) => nl,
                Err(e) => return (messages, Some(e.to_string())),
            };
            let length = nl.length() as usize;
            let payload = &buf[offset + 16..offset + length];
            let body = self
                .body(nl.message_type(), payload)
                .unwrap_or_else(Body::Malformed);
            messages.push(Message {
                seq: nl.sequence_number(),
                flags: nl.flags(),
                body,
            });
            // NLMSG_ALIGN; `length` is at least the 16-byte header.
            offset += (length + 3) & !3;
        }
        (messages, None)
    }

    fn body(&self, message_type: u16, payload: &[u8]) -> Result<Body<T>, String> {
        Ok(match message_type {
            t if t == self.new => (self.parse)(payload)?.map_or(Body::Ignored, Body::New),
            t if t == self.del => (self.parse)(payload)?.map_or(Body::Ignored, Body::Del),
            NLMSG_DONE => Body::Done(control_code(message_type, payload)?),
            NLMSG_ERROR => {
                Body::Error(Some(control_code(message_type, payload)?).filter(|&c| c != 0))
            }
            NLMSG_OVERRUN => Body::Overrun,
            _ => Body::Ignored,
        })
    }

    /// The changes a notification datagram reports (`true`: new), and
    /// whether the watcher must resynchronise because some of it could not
    /// be decoded.
    pub fn changes(&self, datagram: &[u8]) -> (Vec<(bool, T)>, bool) {
        let what = self.what;
        let (messages, broken) = self.parse_datagram(datagram);
        let mut changes = Vec::with_capacity(messages.len());
        let mut resync = false;
        for message in messages {
            match message.body {
                Body::New(item) => changes.push((true, item)),
                Body::Del(item) => changes.push((false, item)),
                Body::Malformed(reason) => {
                    tracing::warn!("undecodable {what} notification ({reason}); resynchronising");
                    resync = true;
                }
                Body::Overrun => resync = true,
                Body::Done(_) | Body::Error(_) | Body::Ignored => {}
            }
        }
        if let Some(reason) = broken {
            tracing::warn!("undecodable netlink datagram ({reason}); resynchronising");
            resync = true;
        }
        (changes, resync)
    }
}

/// The error code (0 or a negative errno) of an `NLMSG_DONE` or
/// `NLMSG_ERROR` payload; the kernel may send an empty `NLMSG_DONE`.
fn control_code(message_type: u16, payload: &[u8]) -> Result<i32, String> {
    if message_type == NLMSG_DONE && payload.is_empty() {
        return Ok(0);
    }
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| format!("netlink message type {message_type} shorter than 4 bytes"))
}

/// How a dump ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DumpEnd<T> {
    /// Everything the dump answered, in the kernel's order.
    Complete(Vec<T>),
    /// The kernel flagged the dump as inconsistent (`NLM_F_DUMP_INTR`).
    Interrupted,
    /// The kernel refused it with this (positive) errno.
    Refused(i32),
    /// A message of the dump could not be decoded (or was not the answer
    /// asked for).
    Malformed(String),
}

/// Collects the answer to one dump (sequence number `seq`) from the
/// datagrams fed to it.
pub(super) struct DumpReader<T> {
    seq: u32,
    found: Vec<T>,
    interrupted: bool,
    malformed: Option<String>,
}

impl<T> DumpReader<T> {
    pub fn new(seq: u32) -> DumpReader<T> {
        DumpReader {
            seq,
            found: Vec::new(),
            interrupted: false,
            malformed: None,
        }
    }

    /// Takes one datagram; returns how the dump ended once its end is seen.
    /// `accept` says what to keep of each `RTM_NEW*` message: `Ok(None)`
    /// drops it, an error makes the dump malformed (reported at its end).
    pub fn feed(
        &mut self,
        kind: &Kind<T>,
        datagram: &[u8],
        mut accept: impl FnMut(T) -> Result<Option<T>, String>,
    ) -> Option<DumpEnd<T>> {
        let (messages, broken) = kind.parse_datagram(datagram);
        for message in messages {
            if message.seq != self.seq {
                continue; // the tail of an abandoned earlier dump
            }
            if message.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.body {
                Body::New(item) => match accept(item) {
                    Ok(Some(item)) => self.found.push(item),
                    Ok(None) => {}
                    Err(reason) => {
                        self.malformed.get_or_insert(reason);
                    }
                },
                Body::Malformed(reason) => {
                    // Read on to the end of the dump, then report it.
                    self.malformed.get_or_insert(reason);
                }
                Body::Done(0) | Body::Error(None) => {
                    return Some(match self.malformed.take() {
                        Some(reason) => DumpEnd::Malformed(reason),
                        None if self.interrupted => DumpEnd::Interrupted,
                        None => DumpEnd::Complete(std::mem::take(&mut self.found)),
                    });
                }
                Body::Done(code) | Body::Error(Some(code)) => {
                    return Some(DumpEnd::Refused(code.saturating_neg()));
                }
                Body::Del(_) | Body::Overrun | Body::Ignored => {}
            }
        }
        // The end of the dump may be in what could not be framed: give up
        // on it (a next dump on this socket may then be refused with EBUSY
        // until the kernel is done with this one).
        broken.map(DumpEnd::Malformed)
    }
}

/// How a blocking dump failed.
#[derive(Debug)]
pub(super) enum DumpError {
    Socket(SocketError),
    /// The kernel refused it with this (positive) errno.
    Refused(i32),
    Malformed(String),
    /// Interrupted by concurrent changes this many times in a row.
    Interrupted(u32),
}

impl From<SocketError> for DumpError {
    fn from(e: SocketError) -> DumpError {
        DumpError::Socket(e)
    }
}

/// The operations' names of a blocking dump, for errors and the log.
pub(super) struct DumpOps {
    pub send: &'static str,
    pub receive: &'static str,
}

/// Dumps on the blocking `socket` (a [`dump_socket`]) with the requests
/// `request(seq)` makes, retrying a dump interrupted by a concurrent
/// change up to [`MAX_DUMP_ATTEMPTS`] times; `accept` as for
/// [`DumpReader::feed`].
pub(super) fn dump_blocking<T>(
    socket: &Socket,
    buf: &mut Vec<u8>,
    seq: &mut u32,
    ops: &DumpOps,
    kind: &Kind<T>,
    request: impl Fn(u32) -> Vec<u8>,
    mut accept: impl FnMut(T) -> Result<Option<T>, String>,
) -> Result<Vec<T>, DumpError> {
    for _ in 0..MAX_DUMP_ATTEMPTS {
        let seq = next_seq(seq);
        let request = request(seq);
        socket
            .send(&request, 0)
            .and_then(|sent| whole(sent, request.len()))
            .map_err(failed(ops.send))?;
        let mut reader = DumpReader::new(seq);
        let end = loop {
            let from = recv_whole(socket, buf).map_err(|e| {
                let e = if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {DUMP_TIMEOUT:?}"),
                    )
                } else {
                    e
                };
                failed(ops.receive)(e)
            })?;
            if from.port_number() != 0 {
                continue;
            }
            if let Some(end) = reader.feed(kind, buf, &mut accept) {
                break end;
            }
        };
        match end {
            DumpEnd::Complete(found) => return Ok(found),
            DumpEnd::Interrupted => {
                tracing::debug!(
                    "{} dump interrupted by a concurrent change; retrying",
                    kind.what
                );
            }
            DumpEnd::Refused(errno) => return Err(DumpError::Refused(errno)),
            DumpEnd::Malformed(reason) => return Err(DumpError::Malformed(reason)),
        }
    }
    Err(DumpError::Interrupted(MAX_DUMP_ATTEMPTS))
}

/// Builders of raw netlink messages for the watchers' unit tests.
#[cfg(test)]
pub(super) mod test_frames {
    /// A netlink message of `message_type` around `payload`.
    pub fn frame(message_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&message_type.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        pad(out)
    }

    /// A netlink attribute of `kind` holding `value`.
    pub fn raw_nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        pad(out)
    }

    /// `out` padded to NLMSG_ALIGN / NLA_ALIGN (4 bytes).
    fn pad(mut out: Vec<u8>) -> Vec<u8> {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }
}
