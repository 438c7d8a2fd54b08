//! Asking the kernel's routing table about one address (`RTM_GETROUTE` with
//! `RTM_F_FIB_MATCH`, as `ip route get ADDR fibmatch` does), for
//! `envfence explain --iif`: the route a source check meets, from the
//! calling process's network namespace, reduced to what the check needs
//! ([`rpf::RouteAnswer`]) and described for a reader.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::policy::rpf::RouteAnswer;

/// How long the kernel may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the routing table could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum RouteQueryError {
    #[error("asking the routing table (rtnetlink) about {addr}: {what}: {source}")]
    Socket {
        addr: IpAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's answer about {addr} cannot be read: {detail}")]
    Decode { addr: IpAddr, detail: String },
}

/// The route the kernel's FIB matches for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// What the source check makes of it (forwarding assumed: the caller
    /// checks the ingress interface's setting).
    pub answer: RouteAnswer,
    /// The route in `ip route` words: `10.30.1.0/24 dev veth-test1`,
    /// `blackhole 10.10.8.0/24`, `local 10.10.1.1`, or `no route`.
    pub text: String,
}

/// The kernel's route for `addr` (an IPv4 address for an IPv4-mapped one).
pub fn route_for(addr: IpAddr) -> Result<KernelRoute, RouteQueryError> {
    let sock_err = |what| move |source| RouteQueryError::Socket { addr, what, source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err("creating the socket"))?;
    socket.bind_auto().map_err(sock_err("binding the socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(sock_err("connecting to the kernel"))?;
    let tv = TimeVal::new(TIMEOUT.as_secs() as i64, 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &tv)
        .map_err(|e| sock_err("setting a receive timeout")(e.into()))?;
    let request = request(addr);
    socket
        .send(&request, 0)
        .map_err(sock_err("sending the request"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(sock_err("receiving the answer"))?;
        let message =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n]).map_err(|e| {
                RouteQueryError::Decode {
                    addr,
                    detail: e.to_string(),
                }
            })?;
        if message.header.sequence_number != SEQ {
            continue;
        }
        return match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                Ok(describe(&route))
            }
            NetlinkPayload::Error(e) => Ok(from_errno(-e.raw_code())),
            other => Err(RouteQueryError::Decode {
                addr,
                detail: format!("unexpected answer {other:?}"),
            }),
        };
    }
}

const SEQ: u32 = 1;

fn request(addr: IpAddr) -> Vec<u8> {
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        },
        destination_prefix_length: if addr.is_ipv4() { 32 } else { 128 },
        flags: RouteFlags::FibMatch,
        ..RouteHeader::default()
    };
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = SEQ;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(route)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// An answer that is an error: the output lookup fails on refusing routes
/// (the kernel's `fib_props`: blackhole EINVAL, unreachable EHOSTUNREACH,
/// prohibit EACCES) and on no route at all (ENETUNREACH).
fn from_errno(errno: i32) -> KernelRoute {
    let (answer, text) = match errno {
        libc::ENETUNREACH => (RouteAnswer::NotForwarded, "no route".to_owned()),
        libc::EINVAL => (RouteAnswer::Refused, "a blackhole route".to_owned()),
        libc::EHOSTUNREACH => (RouteAnswer::Refused, "an unreachable route".to_owned()),
        libc::EACCES => (RouteAnswer::Refused, "a prohibit route".to_owned()),
        other => (
            RouteAnswer::NotForwarded,
            format!("no usable route ({})", io::Error::from_raw_os_error(other)),
        ),
    };
    KernelRoute { answer, text }
}

fn describe(route: &RouteMessage) -> KernelRoute {
    let mut dst = None;
    let mut oif = None;
    let mut gateway = None;
    for a in &route.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let prefix = match dst {
        Some(d) => format!("{d}/{}", route.header.destination_prefix_length),
        None => "default".to_owned(),
    };
    let dev = oif.map(|i| {
        nix::net::if_::if_indextoname(i)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("ifindex {i}"))
    });
    let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let on_dev = dev
        .as_ref()
        .map(|d| format!(" dev {d}"))
        .unwrap_or_default();
    let (answer, text) = match route.header.kind {
        RouteType::Unicast => (
            RouteAnswer::Via(oif.unwrap_or(0)),
            format!("{prefix}{via}{on_dev}"),
        ),
        RouteType::BlackHole => (RouteAnswer::Refused, format!("blackhole {prefix}")),
        RouteType::Unreachable => (RouteAnswer::Refused, format!("unreachable {prefix}")),
        RouteType::Prohibit => (RouteAnswer::Refused, format!("prohibit {prefix}")),
        RouteType::Local => (RouteAnswer::NotForwarded, format!("local {prefix}{on_dev}")),
        RouteType::Broadcast => (
            RouteAnswer::NotForwarded,
            format!("broadcast {prefix}{on_dev}"),
        ),
        other => (
            RouteAnswer::NotForwarded,
            format!("{other:?} {prefix}{on_dev}").to_lowercase(),
        ),
    };
    KernelRoute { answer, text }
}
