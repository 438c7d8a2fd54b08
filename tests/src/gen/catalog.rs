//! A named catalogue of header shapes, each built for a few environment
//! pairs of the example policy: the synthetic part of the pcap corpus
//! (`tests/corpus/shapes-*.pcap`, written by `tests/tests/corpus.rs`), so
//! that every shape the datapath decides on explicitly is replayed on every
//! run, whatever the random generator happens to draw.

use std::net::Ipv6Addr;

use super::{
    ethertype, ipproto, mapped, ppp, ExtSpec, FrameSpec, GreSpec, Inner, Ip4Spec, Ip6Spec, Ipv4,
    Ipv6, L3Spec, L4Spec, LenField, MplsSpec, PppoeSpec, UdpBody, GENEVE_PORT, VXLAN_GPE_PORT,
    VXLAN_LINUX_PORT, VXLAN_PORT,
};
use crate::fixture::{pod_v4, pod_v6};

/// One catalogued frame.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub frame: Vec<u8>,
    /// The skb's `gso_size` to replay it with (non-zero: a GSO packet, as
    /// BIG TCP makes them).
    pub gso_size: u32,
}

/// The `gso_size` of the GSO shapes (a TCP MSS).
pub const GSO_SIZE: u32 = 1448;

/// The pcapng comment of a catalogued packet: its `gso_size` (read back
/// by [`gso_of_comment`]) and its name.
pub fn gso_comment(gso_size: u32, name: &str) -> String {
    format!("gso_size={gso_size}; {name}")
}

/// The `gso_size` a packet comment names (`gso_size=N` at its start); 0
/// when it names none.
pub fn gso_of_comment(comment: Option<&str>) -> u32 {
    comment
        .and_then(|c| c.strip_prefix("gso_size="))
        .and_then(|c| c.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An endpoint of a shape, in both families.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub v4: [u8; 4],
    pub v6: [u8; 16],
}

/// The example lab's pod `n` of `env` ([`pod_v4`], [`pod_v6`]).
fn pod(env: &str, n: u8) -> Host {
    Host {
        v4: pod_v4(env, n).octets(),
        v6: pod_v6(env, n).octets(),
    }
}

/// Address pairs each shape is built for: (name, src, dst). `world` is a
/// documentation address (RFC 5737, RFC 3849), in no environment.
pub fn pairs() -> [(&'static str, Host, Host); 5] {
    let (test, prod, prod2) = (pod("test", 1), pod("production", 1), pod("production", 2));
    let world = Host {
        v4: [192, 0, 2, 1],
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets(),
    };
    [
        ("test>prod", test, prod),
        ("prod>prod", prod, prod2),
        ("prod>test", prod, test),
        ("staging>prod", pod("staging", 1), prod),
        ("world>test", world, test),
    ]
}

pub fn eth(vlans: &[(u16, u16)], l3: impl Into<L3Spec>) -> FrameSpec {
    FrameSpec {
        dst_mac: [0x02, 0, 0, 0, 0, 1],
        src_mac: [0x02, 0, 0, 0, 0, 2],
        vlans: vlans.to_vec(),
        l3: l3.into(),
        pad_to: 0,
    }
}

/// An untagged frame.
fn l2(l3: impl Into<L3Spec>) -> FrameSpec {
    eth(&[], l3)
}

pub fn v4(src: [u8; 4], dst: [u8; 4], payload: L4Spec) -> Ip4Spec {
    let id = 0x1234;
    let hdr = Ipv4 {
        src,
        dst,
        id,
        ..Ipv4::default()
    };
    Ip4Spec {
        hdr,
        payload,
        cut: None,
    }
}

pub fn v6(src: [u8; 16], dst: [u8; 16], payload: L4Spec) -> Ip6Spec {
    let hdr = Ipv6 {
        src,
        dst,
        ..Ipv6::default()
    };
    Ip6Spec {
        hdr,
        ext: Vec::new(),
        payload,
        cut: None,
    }
}

fn ip4(s: Host, d: Host, payload: L4Spec) -> Ip4Spec {
    v4(s.v4, d.v4, payload)
}

fn ip6(s: Host, d: Host, payload: L4Spec) -> Ip6Spec {
    v6(s.v6, d.v6, payload)
}

fn with_ext(mut ip: Ip6Spec, ext: Vec<ExtSpec>) -> Ip6Spec {
    ip.ext = ext;
    ip
}

/// BIG TCP's IPv4 total length of 0.
fn big4(s: Host, d: Host, payload: L4Spec) -> Ip4Spec {
    let mut ip = ip4(s, d, payload);
    ip.hdr.tot_len = LenField::Value(0);
    ip
}

/// BIG TCP's IPv6 payload length of 0.
fn big6(s: Host, d: Host, payload: L4Spec) -> Ip6Spec {
    let mut ip = ip6(s, d, payload);
    ip.hdr.payload_len = LenField::Value(0);
    ip
}

pub fn udp(dport: u16, body: UdpBody) -> L4Spec {
    L4Spec::Udp {
        sport: 40000,
        dport,
        body,
        len: LenField::Exact,
    }
}

pub fn dns() -> L4Spec {
    udp(53, UdpBody::Data(b"\x12\x34\x01\x00\x00\x01".to_vec()))
}

pub fn tcp(dport: u16) -> L4Spec {
    tcp_data(dport, 0)
}

fn tcp_data(dport: u16, data: usize) -> L4Spec {
    L4Spec::Tcp {
        sport: 40001,
        dport,
        data,
    }
}

fn dccp(dport: u16) -> L4Spec {
    L4Spec::Dccp {
        sport: 40002,
        dport,
    }
}

/// An echo request (`v6`: ICMPv6).
fn echo(v6: bool) -> L4Spec {
    L4Spec::Icmp {
        v6,
        ty: if v6 { 128 } else { 8 },
        code: 0,
    }
}

fn raw(proto: u8, bytes: &[u8]) -> L4Spec {
    L4Spec::Raw {
        proto,
        bytes: bytes.to_vec(),
    }
}

fn other(ethertype: u16, bytes: &[u8]) -> L3Spec {
    L3Spec::Other {
        ethertype,
        bytes: bytes.to_vec(),
    }
}

fn ext(kind: u8, units: u8, frag: u16) -> ExtSpec {
    ExtSpec::new(kind, units, frag, 0)
}

fn mpls(labels: usize, multicast: bool, bos: bool, payload: impl Into<Inner>) -> L3Spec {
    L3Spec::Mpls(Box::new(MplsSpec {
        multicast,
        labels: (0..labels).map(|i| 1000 + i as u32).collect(),
        bos,
        payload: payload.into(),
    }))
}

fn pppoe(protocol: u16, payload: impl Into<Inner>) -> L3Spec {
    PppoeSpec::session(protocol, payload.into()).into()
}

/// VXLAN (flags 0x08, VNI 42) on `port`.
fn vxlan(port: u16, inner: FrameSpec) -> L4Spec {
    vxlan_vni(port, 42, inner)
}

fn vxlan_vni(port: u16, vni: u32, inner: FrameSpec) -> L4Spec {
    let inner = inner.into();
    udp(
        port,
        UdpBody::Vxlan {
            flags: 0x08,
            vni,
            inner,
        },
    )
}

fn gpe(flags: u8, next: u8, inner: impl Into<Inner>) -> L4Spec {
    let inner = inner.into();
    udp(VXLAN_GPE_PORT, UdpBody::Gpe { flags, next, inner })
}

fn geneve(opt_words: u8, proto: u16, inner: impl Into<Inner>) -> L4Spec {
    let inner = inner.into();
    udp(
        GENEVE_PORT,
        UdpBody::Geneve {
            opt_words,
            proto,
            inner,
        },
    )
}

fn gre(flags: u16, proto: u16, inner: impl Into<Inner>) -> L4Spec {
    let inner = inner.into();
    L4Spec::Gre(Box::new(GreSpec {
        flags,
        proto,
        inner,
    }))
}

/// A shape: a name and how to build it from an address pair.
type Shape = (String, Box<dyn Fn(Host, Host) -> FrameSpec>);

fn shape(name: impl Into<String>, f: impl Fn(Host, Host) -> FrameSpec + 'static) -> Shape {
    (name.into(), Box::new(f))
}

fn l2_shapes() -> Vec<Shape> {
    let q = ethertype::VLAN;
    let ad = ethertype::QINQ;
    let tagged = |tags: Vec<(u16, u16)>| move |s, d| eth(&tags, ip4(s, d, tcp(8080)));
    let arp = [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 30, 1, 2];
    vec![
        shape("untagged tcp", tagged(vec![])),
        shape("802.1Q", tagged(vec![(q, 100)])),
        shape("802.1ad", tagged(vec![(ad, 100)])),
        shape("priority tag vid 0", tagged(vec![(q, 0)])),
        shape("802.1ad + 802.1Q", tagged(vec![(ad, 100), (q, 200)])),
        shape("two priority tags", tagged(vec![(q, 0), (q, 0)])),
        shape("three tags", tagged(vec![(ad, 1), (q, 2), (q, 3)])),
        shape("four tags", tagged(vec![(ad, 1), (ad, 2), (q, 3), (q, 4)])),
        shape("802.1Q ipv6 dns", move |s, d| {
            eth(&[(q, 7)], ip6(s, d, dns()))
        }),
        shape("arp", move |_, _| l2(other(ethertype::ARP, &arp))),
        shape("tagged arp", move |_, _| {
            eth(&[(q, 5), (q, 6)], other(ethertype::ARP, &arp[..8]))
        }),
        shape("lldp", |_, _| {
            l2(other(ethertype::LLDP, &[2, 7, 4, 0, 0, 0, 0, 0, 1]))
        }),
        shape("802.3 length field", |_, _| {
            l2(other(0x0026, &[0x42, 0x42, 3, 0, 0, 0, 0]))
        }),
        shape("padded to 60 bytes", |s, d| {
            let mut f = l2(ip4(s, d, udp(9000, UdpBody::Data(vec![1]))));
            f.pad_to = 60;
            f
        }),
    ]
}

fn v4_shapes() -> Vec<Shape> {
    let with = |f: fn(&mut Ip4Spec)| {
        move |s, d| {
            let mut ip = ip4(s, d, dns());
            f(&mut ip);
            l2(ip)
        }
    };
    vec![
        shape("udp 53", with(|_| {})),
        shape("tcp 53", with(|ip| ip.payload = tcp(53))),
        shape("tcp 8080", with(|ip| ip.payload = tcp(8080))),
        shape(
            "sctp 53",
            with(|ip| {
                ip.payload = L4Spec::Sctp {
                    sport: 1,
                    dport: 53,
                }
            }),
        ),
        shape("icmp echo", with(|ip| ip.payload = echo(false))),
        shape(
            "options 4 bytes",
            with(|ip| ip.hdr.options = vec![1, 1, 1, 0]),
        ),
        shape("options 40 bytes", with(|ip| ip.hdr.options = vec![1; 40])),
        shape("DF", with(|ip| ip.hdr.frag = 0x4000)),
        shape("first fragment (MF)", with(|ip| ip.hdr.frag = 0x2000)),
        shape("non-first fragment of dns", with(|ip| ip.hdr.frag = 185)),
        shape(
            "middle fragment of dns",
            with(|ip| ip.hdr.frag = 0x2000 | 185),
        ),
        shape(
            "non-first fragment of tcp 8080",
            with(|ip| (ip.hdr.frag, ip.payload) = (3, tcp(8080))),
        ),
        shape(
            "non-first fragment of icmp",
            with(|ip| (ip.hdr.frag, ip.payload) = (3, echo(false))),
        ),
        shape("reserved flag", with(|ip| ip.hdr.frag = 0x8000)),
        shape("ihl 4", with(|ip| ip.hdr.ihl = Some(4))),
        shape("ihl 0", with(|ip| ip.hdr.ihl = Some(0))),
        shape("ihl 15, short packet", with(|ip| ip.hdr.ihl = Some(15))),
        shape(
            "tot_len < header",
            with(|ip| ip.hdr.tot_len = LenField::Value(19)),
        ),
        shape(
            "tot_len > frame",
            with(|ip| ip.hdr.tot_len = LenField::Delta(1)),
        ),
        shape(
            "tot_len < frame (trailer)",
            with(|ip| ip.hdr.tot_len = LenField::Delta(-4)),
        ),
        shape(
            "tot_len cuts the udp ports",
            with(|ip| ip.hdr.tot_len = LenField::Value(22)),
        ),
        shape("version 6 in an ipv4 frame", with(|ip| ip.hdr.version = 6)),
        shape(
            "udp header cut (consistent lengths)",
            with(|ip| ip.cut = Some(3)),
        ),
        shape(
            "protocol 0 (hop-by-hop number) in ipv4",
            with(|ip| ip.payload = raw(ipproto::HOPOPTS, &[17, 0, 0, 0, 0, 0, 0, 0])),
        ),
        shape(
            "esp in ipv4",
            with(|ip| ip.payload = raw(ipproto::ESP, &[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb])),
        ),
    ]
}

fn v6_shapes() -> Vec<Shape> {
    use ipproto::{DSTOPTS, FRAGMENT, HOPOPTS, ROUTING};
    let with = |f: fn(&mut Ip6Spec)| {
        move |s, d| {
            let mut ip = ip6(s, d, dns());
            f(&mut ip);
            l2(ip)
        }
    };
    // The addresses' IPv4 forms rewritten by `f`.
    let v4_forms = |f: fn([u8; 4]) -> [u8; 16], payload: fn() -> L4Spec| {
        move |s: Host, d: Host| l2(v6(f(s.v4), f(d.v4), payload()))
    };
    let first6 = [
        ext(HOPOPTS, 0, 0),
        ext(DSTOPTS, 0, 0),
        ext(ROUTING, 0, 0),
        ext(FRAGMENT, 0, 0),
        ext(DSTOPTS, 1, 0),
    ];
    let (mut six, mut seven) = (first6.to_vec(), first6.to_vec());
    six.push(ext(ipproto::MOBILITY, 0, 0));
    seven.extend([ext(ipproto::HIP, 0, 0), ext(ipproto::SHIM6, 0, 0)]);
    vec![
        shape("udp 53", with(|_| {})),
        shape("tcp 8080", with(|ip| ip.payload = tcp(8080))),
        shape("icmpv6 echo", with(|ip| ip.payload = echo(true))),
        shape("hop-by-hop", with(|ip| ip.ext = vec![ext(HOPOPTS, 0, 0)])),
        shape(
            "routing + dest opts",
            with(|ip| ip.ext = vec![ext(ROUTING, 2, 0), ext(DSTOPTS, 1, 0)]),
        ),
        shape(
            "first fragment",
            with(|ip| ip.ext = vec![ext(FRAGMENT, 0, 1)]),
        ),
        shape(
            "non-first fragment of dns",
            with(|ip| ip.ext = vec![ext(FRAGMENT, 0, (100 << 3) | 1)]),
        ),
        shape(
            "non-first fragment of tcp 8080",
            with(|ip| {
                ip.ext = vec![ext(HOPOPTS, 0, 0), ext(FRAGMENT, 0, 100 << 3)];
                ip.payload = tcp(8080);
            }),
        ),
        shape(
            "ah + tcp 53",
            with(|ip| (ip.ext, ip.payload) = (vec![ext(ipproto::AH, 4, 0)], tcp(53))),
        ),
        shape("esp", with(|ip| ip.ext = vec![ext(ipproto::ESP, 0, 0)])),
        shape("six extension headers (the bound)", move |s, d| {
            l2(with_ext(ip6(s, d, dns()), six.clone()))
        }),
        shape("seven extension headers (past the bound)", move |s, d| {
            l2(with_ext(ip6(s, d, dns()), seven.clone()))
        }),
        shape(
            "dest opts pushing udp past the parse window",
            with(|ip| ip.ext = vec![ext(DSTOPTS, 50, 0)]),
        ),
        shape(
            "no next header",
            with(|ip| ip.payload = raw(ipproto::NONE, &[])),
        ),
        shape("ipv4-mapped addresses", v4_forms(mapped, || tcp(8080))),
        shape("ipv4-mapped addresses, dns", v4_forms(mapped, dns)),
        shape(
            "ipv4-compatible (not mapped)",
            v4_forms(|a| compatible(a, [0; 4]), || tcp(8080)),
        ),
        shape(
            "nat64 (not mapped)",
            v4_forms(|a| compatible(a, [0, 0x64, 0xff, 0x9b]), || tcp(8080)),
        ),
        shape(
            "payload_len > frame",
            with(|ip| ip.hdr.payload_len = LenField::Delta(1)),
        ),
        shape("version 4 in an ipv6 frame", with(|ip| ip.hdr.version = 4)),
        shape("udp header cut", with(|ip| ip.cut = Some(2))),
    ]
}

/// `prefix::a.b.c.d` (`::a.b.c.d` IPv4-compatible, `64:ff9b::a.b.c.d`
/// NAT64): IPv4 inside, but not mapped.
fn compatible(a: [u8; 4], prefix: [u8; 4]) -> [u8; 16] {
    let mut x = mapped(a);
    x[..4].copy_from_slice(&prefix);
    x[10..12].copy_from_slice(&[0, 0]);
    x
}

/// An IPv6 packet from `s` to the hop `hop` whose routing header ends at
/// `last` (as [`ExtSpec::routing`] lays it out).
fn routed(s: Host, hop: Host, ext: Vec<ExtSpec>, payload: L4Spec) -> FrameSpec {
    l2(with_ext(ip6(s, hop, payload), ext))
}

/// The shapes of issue 13 that need no GSO skb: MPLS, PPPoE, DCCP, IPv6
/// routing headers with a final destination, and lengths of 0 outside a
/// GSO skb (malformed), IPv4 and IPv6.
fn real_world_shapes() -> Vec<Shape> {
    let i4 = |s, d| ip4(s, d, tcp(8080));
    let i6 = |s, d| ip6(s, d, tcp(8080));
    let session = |f: fn(&mut PppoeSpec)| {
        move |s, d| {
            let mut p = PppoeSpec::session(ppp::IPV4, i4(s, d).into());
            f(&mut p);
            l2(p)
        }
    };
    let srh = |s: Host, d: Host| ExtSpec::routing(4, 1, &[d.v6, s.v6]);
    let mut v: Vec<Shape> = Vec::new();
    for n in [1usize, 2, 3, 6, 7] {
        let deep = if n == 7 { " (too deep)" } else { "" };
        v.push(shape(format!("mpls {n} labels ipv4{deep}"), move |s, d| {
            l2(mpls(n, false, true, i4(s, d)))
        }));
        v.push(shape(format!("mpls {n} labels ipv6{deep}"), move |s, d| {
            l2(mpls(n, false, true, i6(s, d)))
        }));
    }
    v.extend([
        shape("mpls multicast 2 labels ipv4", move |s, d| {
            l2(mpls(2, true, true, i4(s, d)))
        }),
        shape("mpls multicast 1 label ipv6 dns", |s, d| {
            l2(mpls(1, true, true, ip6(s, d, dns())))
        }),
        shape("mpls behind an 802.1Q tag", move |s, d| {
            eth(&[(ethertype::VLAN, 30)], mpls(2, false, true, i4(s, d)))
        }),
        shape("mpls without bottom of stack, frame ends", |_, _| {
            l2(mpls(3, false, false, Inner::Raw(Vec::new())))
        }),
        shape("mpls without bottom of stack, ip follows", move |s, d| {
            l2(mpls(3, false, false, i4(s, d)))
        }),
        shape("mpls pseudowire control word (not ip)", |_, _| {
            let cw = Inner::Raw(vec![0, 0, 0, 1, 0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0]);
            l2(mpls(2, false, true, cw))
        }),
        shape("pppoe session ipv4", move |s, d| {
            l2(pppoe(ppp::IPV4, i4(s, d)))
        }),
        shape("pppoe session ipv6", move |s, d| {
            l2(pppoe(ppp::IPV6, i6(s, d)))
        }),
        shape("pppoe session ipv4 dns", |s, d| {
            l2(pppoe(ppp::IPV4, ip4(s, d, dns())))
        }),
        shape(
            "pppoe session ipv4, compressed protocol",
            session(|p| p.protocol = vec![0x21]),
        ),
        shape("pppoe session behind 802.1ad + 802.1Q", move |s, d| {
            let tags = [(ethertype::QINQ, 10), (ethertype::VLAN, 20)];
            eth(&tags, pppoe(ppp::IPV6, i6(s, d)))
        }),
        shape("pppoe session lcp (not ip)", |_, _| {
            l2(pppoe(ppp::LCP, Inner::Raw(vec![1, 1, 0, 4])))
        }),
        shape("pppoe session bad version", session(|p| p.ver_type = 0x21)),
        shape(
            "pppoe session with a discovery code",
            session(|p| p.code = 0x09),
        ),
        shape(
            "pppoe discovery (not ip)",
            session(|p| (p.discovery, p.code) = (true, 0x09)),
        ),
        shape("dccp 8080 ipv4", |s, d| l2(ip4(s, d, dccp(8080)))),
        shape("dccp 53 ipv4", |s, d| l2(ip4(s, d, dccp(53)))),
        shape("dccp 8080 ipv6", |s, d| l2(ip6(s, d, dccp(8080)))),
        shape("dccp non-first fragment", |s, d| {
            let mut ip = ip4(s, d, dccp(8080));
            ip.hdr.frag = 100;
            l2(ip)
        }),
        shape("dccp header cut", |s, d| {
            let mut ip = ip6(s, d, dccp(8080));
            ip.cut = Some(3);
            l2(ip)
        }),
        shape("routing type 0, hop in the source's environment", |s, d| {
            routed(s, s, vec![ExtSpec::routing(0, 1, &[d.v6])], tcp(8080))
        }),
        shape("routing type 0, two hops", |s, d| {
            let ext = ExtSpec::routing(0, 2, &[s.v6, d.v6]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("srv6, final segment elsewhere", move |s, d| {
            routed(s, s, vec![srh(s, d)], tcp(8080))
        }),
        shape("srv6, final segment elsewhere, dns", |s, d| {
            let ext = ExtSpec::routing(4, 2, &[d.v6, s.v6, s.v6]);
            routed(s, s, vec![ext], dns())
        }),
        shape("srv6 behind hop-by-hop", move |s, d| {
            let ext = vec![ext(ipproto::HOPOPTS, 0, 0), srh(s, d)];
            routed(s, s, ext, tcp(8080))
        }),
        shape("srv6 segments left 0", |s, d| {
            let ext = ExtSpec::routing(4, 0, &[d.v6, s.v6]);
            routed(s, d, vec![ext], tcp(8080))
        }),
        shape("routing type 2 home address", |s, d| {
            routed(s, s, vec![ExtSpec::routing(2, 1, &[d.v6])], tcp(8080))
        }),
        shape("routing type 1 (destination only)", |s, d| {
            routed(s, d, vec![ExtSpec::routing(1, 1, &[s.v6])], tcp(8080))
        }),
        shape("routing type 0 segments left > addresses", |s, d| {
            let ext = ExtSpec::routing(0, 3, &[s.v6, d.v6]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("srv6 segments left > last entry + 1", |s, d| {
            let ext = ExtSpec::routing(4, 3, &[d.v6, s.v6]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("two routing headers with segments left", move |s, d| {
            let ext = vec![srh(s, d), ExtSpec::routing(0, 1, &[d.v6])];
            routed(s, s, ext, tcp(8080))
        }),
        shape("ipv4 total length 0, not gso", |s, d| {
            l2(big4(s, d, tcp(8080)))
        }),
        shape("ipv6 payload length 0, not gso", |s, d| {
            l2(big6(s, d, tcp(8080)))
        }),
        shape("jumbogram longer than the frame", |s, d| {
            l2(with_ext(
                big6(s, d, tcp(8080)),
                vec![ExtSpec::jumbo(70_000)],
            ))
        }),
        shape("jumbo option under 65536", |s, d| {
            l2(with_ext(big6(s, d, tcp(8080)), vec![ExtSpec::jumbo(100)]))
        }),
        shape("jumbo option with the payload length written", |s, d| {
            l2(with_ext(ip6(s, d, tcp(8080)), vec![ExtSpec::jumbo(70_000)]))
        }),
    ]);
    v
}

/// Shapes replayed in a GSO skb (`gso_size` [`GSO_SIZE`]): BIG TCP's
/// lengths of 0, IPv4 and IPv6, bare or behind VLAN, MPLS and PPPoE.
fn gso_shapes() -> Vec<Shape> {
    let data = || tcp_data(8080, 1400);
    vec![
        shape("big tcp ipv4 (total length 0)", move |s, d| {
            l2(big4(s, d, data()))
        }),
        shape("big tcp ipv4 dns", |s, d| l2(big4(s, d, dns()))),
        shape("big tcp ipv6 (payload length 0)", move |s, d| {
            l2(big6(s, d, data()))
        }),
        shape(
            "big tcp ipv6 with a hop-by-hop jumbo option",
            move |s, d| l2(with_ext(big6(s, d, data()), vec![ExtSpec::jumbo(100_000)])),
        ),
        shape("big tcp ipv6 srv6, final segment elsewhere", move |s, d| {
            let srh = ExtSpec::routing(4, 1, &[d.v6, s.v6]);
            l2(with_ext(big6(s, s, data()), vec![srh]))
        }),
        shape("big tcp ipv4 behind an 802.1Q tag", move |s, d| {
            eth(&[(ethertype::VLAN, 5)], big4(s, d, data()))
        }),
        shape("big tcp ipv4 in mpls", move |s, d| {
            l2(mpls(2, false, true, big4(s, d, data())))
        }),
        shape("big tcp ipv6 in pppoe", move |s, d| {
            l2(pppoe(ppp::IPV6, big6(s, d, data())))
        }),
        shape("gso ipv4 with its length written", |s, d| {
            l2(ip4(s, d, tcp(8080)))
        }),
        shape("gso ipv6 with its length written", |s, d| {
            l2(ip6(s, d, tcp(8080)))
        }),
    ]
}

type Pair = (Host, Host);
type TunnelFn = Box<dyn Fn(Pair, Pair) -> FrameSpec>;

fn tunnel(
    name: &'static str,
    f: impl Fn(Pair, Pair) -> FrameSpec + 'static,
) -> (&'static str, TunnelFn) {
    (name, Box::new(f))
}

fn outer4(o: Pair, payload: L4Spec) -> FrameSpec {
    l2(ip4(o.0, o.1, payload))
}

fn outer6(o: Pair, payload: L4Spec) -> FrameSpec {
    l2(ip6(o.0, o.1, payload))
}

fn inner4(i: Pair) -> Ip4Spec {
    ip4(i.0, i.1, tcp(8080))
}

fn inner6(i: Pair) -> Ip6Spec {
    ip6(i.0, i.1, dns())
}

/// The inner IPv6 packet of issue 13's tunnel shapes: TCP 8080 (no port
/// rule of the example policy lets test reach it in production).
fn inner6_tcp(i: Pair) -> Ip6Spec {
    ip6(i.0, i.1, tcp(8080))
}

fn inner_eth(i: Pair) -> FrameSpec {
    let mut e = l2(inner4(i));
    e.src_mac[5] = 7;
    e
}

/// Tunnels inside BIG TCP's lengths of 0 (the bypass issue 13 found: the
/// inner packet was never opened), replayed in a GSO skb.
fn gso_tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    let zero4 = |o: Pair, payload| l2(big4(o.0, o.1, payload));
    let zero6 = |o: Pair, payload, jumbo: bool| {
        let ext = if jumbo {
            vec![ExtSpec::jumbo(100_000)]
        } else {
            Vec::new()
        };
        l2(with_ext(big6(o.0, o.1, payload), ext))
    };
    vec![
        tunnel("vxlan in ipv4 total length 0", move |o, i| {
            zero4(o, vxlan(VXLAN_PORT, inner_eth(i)))
        }),
        tunnel("vxlan 8472 in ipv6 payload length 0", move |o, i| {
            zero6(o, vxlan(VXLAN_LINUX_PORT, inner_eth(i)), false)
        }),
        tunnel(
            "vxlan in ipv6 payload length 0 with a jumbo option",
            move |o, i| zero6(o, vxlan(VXLAN_PORT, inner_eth(i)), true),
        ),
        tunnel("geneve in ipv6 payload length 0", move |o, i| {
            zero6(o, geneve(0, ethertype::TEB, inner_eth(i)), false)
        }),
        tunnel("ipip in ipv4 total length 0", move |o, i| {
            zero4(o, inner4(i).into())
        }),
    ]
}

/// Issue 13's tunnel shapes: VXLAN on 8472, VXLAN-GPE, and MPLS, PPPoE,
/// routing headers and DCCP inside tunnels.
fn real_world_tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    let teb = ethertype::TEB;
    vec![
        tunnel("vxlan on 8472", |o, i| {
            outer4(o, vxlan(VXLAN_LINUX_PORT, inner_eth(i)))
        }),
        tunnel("vxlan on 8472 over ipv6, inner ipv6", |o, i| {
            outer6(o, vxlan(VXLAN_LINUX_PORT, l2(inner6_tcp(i))))
        }),
        tunnel("vxlan-gpe ipv4", |o, i| outer4(o, gpe(0x0c, 1, inner4(i)))),
        tunnel("vxlan-gpe ipv6 over ipv6", |o, i| {
            outer6(o, gpe(0x0c, 2, inner6_tcp(i)))
        }),
        tunnel("vxlan-gpe ethernet", |o, i| {
            outer4(o, gpe(0x0c, 3, inner_eth(i)))
        }),
        tunnel("vxlan-gpe without the P flag (not opened)", |o, i| {
            outer4(o, gpe(0x08, 1, inner4(i)))
        }),
        tunnel("vxlan-gpe nsh (not opened)", |o, i| {
            outer4(o, gpe(0x0c, 4, inner4(i)))
        }),
        tunnel("mpls inside vxlan", |o, i| {
            let m = mpls(2, false, true, inner4(i));
            outer4(o, vxlan(VXLAN_PORT, l2(m)))
        }),
        tunnel("mpls ipv6 inside gre teb", move |o, i| {
            let m = mpls(1, false, true, inner6_tcp(i));
            outer4(o, gre(0, teb, l2(m)))
        }),
        tunnel("mpls over gre (known gap: judged on the outer)", |o, i| {
            outer4(o, gre(0, ethertype::MPLS, inner4(i)))
        }),
        tunnel("pppoe inside vxlan", |o, i| {
            let p = pppoe(ppp::IPV4, inner4(i));
            outer4(o, vxlan(VXLAN_LINUX_PORT, l2(p)))
        }),
        tunnel("pppoe ipv6 inside geneve", move |o, i| {
            let p = pppoe(ppp::IPV6, inner6_tcp(i));
            outer6(o, geneve(0, teb, l2(p)))
        }),
        tunnel("srv6 inside vxlan, inner final segment", |o, i| {
            let srh = ExtSpec::routing(4, 1, &[i.1.v6, i.0.v6]);
            let ip = with_ext(ip6(i.0, i.0, tcp(8080)), vec![srh]);
            outer4(o, vxlan(VXLAN_PORT, l2(ip)))
        }),
        tunnel("routing type 0 inside ipv6 in ipv6", |o, i| {
            let rh = ExtSpec::routing(0, 1, &[i.1.v6]);
            outer6(o, with_ext(ip6(i.0, i.0, dns()), vec![rh]).into())
        }),
        tunnel("outer srv6 around vxlan", |o, i| {
            let srh = ExtSpec::routing(4, 1, &[o.1.v6, o.0.v6]);
            let ip = ip6(o.0, o.0, vxlan(VXLAN_PORT, inner_eth(i)));
            l2(with_ext(ip, vec![srh]))
        }),
        tunnel("dccp inside ipip", |o, i| {
            outer4(o, ip4(i.0, i.1, dccp(8080)).into())
        }),
        tunnel("dccp ipv6 inside geneve", |o, i| {
            let inner = ip6(i.0, i.1, dccp(53));
            outer4(o, geneve(1, ethertype::IPV6, inner))
        }),
    ]
}

/// Tunnels: built for (outer pair, inner pair) combinations.
fn tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    use ethertype::{IPV4, IPV6, TEB};
    vec![
        tunnel("ipip", |o, i| outer4(o, inner4(i).into())),
        tunnel("ipv6 in ipv4", |o, i| outer4(o, inner6(i).into())),
        tunnel("ipv6 in ipv6", |o, i| outer6(o, inner6(i).into())),
        tunnel("ipv4 in ipv6", |o, i| outer6(o, inner4(i).into())),
        tunnel("gre ipv4", |o, i| outer4(o, gre(0, IPV4, inner4(i)))),
        tunnel("gre ipv6", |o, i| outer4(o, gre(0, IPV6, inner6(i)))),
        tunnel("gre with checksum, key, sequence", |o, i| {
            outer4(o, gre(0xb000, IPV4, inner4(i)))
        }),
        tunnel("gre key over ipv6", |o, i| {
            outer6(o, gre(0x2000, IPV4, inner4(i)))
        }),
        tunnel("gre teb (ethernet inside)", |o, i| {
            outer4(o, gre(0, TEB, inner_eth(i)))
        }),
        tunnel("gre version 1 (pptp, not decapsulated)", |o, i| {
            outer4(o, gre(0x2001, ethertype::PPP, inner4(i)))
        }),
        tunnel("gre routing bit (not decapsulated)", |o, i| {
            outer4(o, gre(0x4000, IPV4, inner4(i)))
        }),
        tunnel("vxlan", |o, i| outer4(o, vxlan(VXLAN_PORT, inner_eth(i)))),
        tunnel("vxlan over ipv6, inner vlan-tagged ipv6", |o, i| {
            let mut e = eth(&[(ethertype::VLAN, 9)], inner6(i));
            e.src_mac[5] = 9;
            outer6(o, vxlan(VXLAN_PORT, e))
        }),
        tunnel("vxlan carrying arp", |o, _| {
            let arp = l2(other(ethertype::ARP, &[0, 1, 8, 0, 6, 4, 0, 1]));
            outer4(o, vxlan(VXLAN_PORT, arp))
        }),
        tunnel("geneve", |o, i| outer4(o, geneve(0, TEB, inner_eth(i)))),
        tunnel("geneve with options", |o, i| {
            outer4(o, geneve(5, TEB, inner_eth(i)))
        }),
        tunnel("geneve carrying ipv6 directly", |o, i| {
            outer6(o, geneve(2, IPV6, inner6(i)))
        }),
        tunnel("ipip in gre (tunnel in tunnel)", |o, i| {
            let mid = ip4(o.0, o.1, inner4(i).into());
            outer4(o, gre(0, IPV4, mid))
        }),
        tunnel("vxlan in vxlan", |o, i| {
            let mid = ip4(o.0, o.1, vxlan_vni(VXLAN_PORT, 2, inner_eth(i)));
            outer4(o, vxlan_vni(VXLAN_PORT, 1, l2(mid)))
        }),
        tunnel("non-first fragment of gre", |o, i| {
            let mut ip = ip4(o.0, o.1, gre(0, IPV4, inner4(i)));
            ip.hdr.frag = 100;
            l2(ip)
        }),
        tunnel("vxlan with the inner frame cut", |o, i| {
            let mut ip = ip4(o.0, o.1, vxlan(VXLAN_PORT, inner_eth(i)));
            ip.cut = Some(8 + 8 + 10);
            l2(ip)
        }),
    ]
}

/// The outer and inner address pairs tunnels are built for.
fn tunnel_combos() -> [(&'static str, Pair, Pair); 4] {
    let p = pairs();
    let pair = |i: usize| (p[i].1, p[i].2);
    [
        ("outer prod>prod, inner test>prod", pair(1), pair(0)),
        ("outer test>prod, inner prod>prod", pair(0), pair(1)),
        ("outer prod>prod, inner prod>prod", pair(1), pair(1)),
        ("outer world>test, inner staging>prod", pair(4), pair(3)),
    ]
}

/// `shapes` for every pair of [`pairs`] into `named`, and the test >
/// production frame of each cut at its header boundaries into `cuts`.
fn for_pairs(
    prefix: &str,
    shapes: &[Shape],
    gso_size: u32,
    named: &mut Vec<Named>,
    cuts: &mut Vec<Named>,
) {
    for (shape, build) in shapes {
        for (pair, s, d) in pairs() {
            let (frame, marks) = build(s, d).build_marked();
            if pair == "test>prod" {
                cut_at_marks(cuts, &format!("{prefix} {shape}"), &frame, &marks, gso_size);
            }
            named.push(Named {
                name: format!("{shape} {pair}"),
                frame,
                gso_size,
            });
        }
    }
}
/// `shapes` for every outer/inner combination of [`tunnel_combos`], the
/// first one also cut at its header boundaries into `cuts`.
fn for_combos(
    shapes: &[(&'static str, TunnelFn)],
    gso_size: u32,
    named: &mut Vec<Named>,
    cuts: &mut Vec<Named>,
) {
    for (shape, build) in shapes {
        for (i, (combo, o, inner)) in tunnel_combos().iter().enumerate() {
            let (frame, marks) = build(*o, *inner).build_marked();
            if i == 0 {
                cut_at_marks(cuts, &format!("tunnel {shape}"), &frame, &marks, gso_size);
            }
            named.push(Named {
                name: format!("{shape}: {combo}"),
                frame,
                gso_size,
            });
        }
    }
}

/// The catalogue, by corpus file name: `shapes-l2.pcap`, `shapes-ipv4.pcap`,
/// `shapes-ipv6.pcap`, `shapes-headers.pcap` (issue 13's MPLS, PPPoE,
/// DCCP, routing headers, zero lengths), `shapes-tunnels.pcap`,
/// `shapes-truncated.pcap` (every test > production frame of those cut at
/// each of its header boundaries) and `shapes-gso.pcapng` (the GSO shapes
/// and their cuts: each packet's comment names its `gso_size`, see
/// [`gso_comment`]).
pub fn catalog() -> Vec<(&'static str, Vec<Named>)> {
    let mut files = Vec::new();
    let mut truncated = Vec::new();
    for (file, shapes) in [
        ("shapes-l2.pcap", l2_shapes()),
        ("shapes-ipv4.pcap", v4_shapes()),
        ("shapes-ipv6.pcap", v6_shapes()),
        ("shapes-headers.pcap", real_world_shapes()),
    ] {
        let mut named = Vec::new();
        let stem = file.trim_end_matches(".pcap");
        for_pairs(stem, &shapes, 0, &mut named, &mut truncated);
        files.push((file, named));
    }
    let mut named = Vec::new();
    let mut tunnels = tunnel_shapes();
    tunnels.extend(real_world_tunnel_shapes());
    for_combos(&tunnels, 0, &mut named, &mut truncated);
    files.push(("shapes-tunnels.pcap", named));
    files.push(("shapes-truncated.pcap", truncated));
    let (mut gso, mut gso_cuts) = (Vec::new(), Vec::new());
    for_pairs("gso", &gso_shapes(), GSO_SIZE, &mut gso, &mut gso_cuts);
    for_combos(&gso_tunnel_shapes(), GSO_SIZE, &mut gso, &mut gso_cuts);
    gso.extend(gso_cuts);
    files.push(("shapes-gso.pcapng", gso));
    files
}

fn cut_at_marks(out: &mut Vec<Named>, name: &str, frame: &[u8], marks: &[usize], gso_size: u32) {
    for &m in marks {
        for at in [m.saturating_sub(1), m, m + 2] {
            if at >= super::MIN_FRAME && at < frame.len() {
                out.push(Named {
                    name: format!("{name} cut at {at}"),
                    frame: frame[..at].to_vec(),
                    gso_size,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envfence::policy::reference::{Encap, L4Seen, NonIpKind, Outcome, Skb};
    use envfence::policy::Mode;
    use envfence_ebpf::verdict;

    /// Every catalogued frame by name.
    fn by_name() -> std::collections::BTreeMap<String, Named> {
        catalog()
            .into_iter()
            .flat_map(|(_, named)| named)
            .map(|n| (n.name.clone(), n))
            .collect()
    }

    /// The catalogue's issue-13 shapes are what their names say (the
    /// oracle's reading of them, the reference's the same; the corpus test
    /// holds the kernel to both).
    #[test]
    fn real_world_shapes_are_what_they_say() {
        let policy = crate::gen::diff::example_policy(Mode::Enforce).expect("policy");
        let all = by_name();
        let outcome = |name: &str| -> Outcome {
            let n = all.get(name).unwrap_or_else(|| panic!("no shape {name:?}"));
            let skb = Skb {
                gso_size: n.gso_size,
            };
            crate::oracle::Oracle::held_to_reference(&policy, &n.frame, skb)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"))
        };
        let judged = |name: &str| match outcome(name) {
            Outcome::Judged(j) => j,
            other => panic!("{name}: {other:?}"),
        };
        for n in [1, 2, 3, 6] {
            for fam in ["ipv4", "ipv6"] {
                let j = judged(&format!("mpls {n} labels {fam} test>prod"));
                assert_eq!(
                    (j.verdict, j.encap),
                    (verdict::DROP, Encap::Mpls),
                    "{n} {fam}"
                );
            }
        }
        for fam in ["ipv4", "ipv6"] {
            let name = format!("mpls 7 labels {fam} (too deep) test>prod");
            assert_eq!(outcome(&name), Outcome::MplsTooDeep);
        }
        let j = judged("mpls multicast 2 labels ipv4 test>prod");
        assert_eq!((j.verdict, j.encap), (verdict::DROP, Encap::Mpls));
        let j = judged("mpls multicast 1 label ipv6 dns test>prod");
        assert_eq!((j.verdict, j.dport), (verdict::ALLOW, 53));
        for (name, want) in [
            ("mpls behind an 802.1Q tag", verdict::DROP),
            ("pppoe session ipv4 dns", verdict::ALLOW),
            ("big tcp ipv4 dns", verdict::ALLOW),
        ] {
            assert_eq!(judged(&format!("{name} test>prod")).verdict, want, "{name}");
        }
        use Outcome::{Malformed, MplsTooDeep, NonIp};
        let (mpls, pppoe) = (NonIp(NonIpKind::Mpls), NonIp(NonIpKind::Pppoe));
        for (name, want) in [
            ("mpls without bottom of stack, frame ends", Malformed),
            // The IP header's words read as labels: past the bound.
            ("mpls without bottom of stack, ip follows", MplsTooDeep),
            ("mpls pseudowire control word (not ip)", mpls),
            ("pppoe session lcp (not ip)", pppoe.clone()),
            ("pppoe discovery (not ip)", pppoe),
        ] {
            assert_eq!(outcome(&format!("{name} test>prod")), want, "{name}");
        }
        for name in [
            "pppoe session ipv4",
            "pppoe session ipv6",
            "pppoe session ipv4, compressed protocol",
            "pppoe session behind 802.1ad + 802.1Q",
        ] {
            let j = judged(&format!("{name} test>prod"));
            assert_eq!(
                (j.verdict, j.encap),
                (verdict::DROP, Encap::Pppoe),
                "{name}"
            );
        }
        for name in [
            "pppoe session bad version",
            "pppoe session with a discovery code",
            "ipv4 total length 0, not gso",
            "ipv6 payload length 0, not gso",
            "jumbogram longer than the frame",
            "jumbo option under 65536",
            "routing type 0 segments left > addresses",
            "srv6 segments left > last entry + 1",
            "two routing headers with segments left",
        ] {
            assert_eq!(outcome(&format!("{name} test>prod")), Malformed, "{name}");
        }
        let j = judged("jumbo option with the payload length written test>prod");
        assert_eq!((j.verdict, j.l4), (verdict::DROP, L4Seen::Ports));
        for (name, port) in [
            ("dccp 8080 ipv4", 8080),
            ("dccp 53 ipv4", 53),
            ("dccp 8080 ipv6", 8080),
        ] {
            let j = judged(&format!("{name} test>prod"));
            assert_eq!(
                (j.verdict, j.l4, j.dport),
                (verdict::DROP, L4Seen::Ports, port),
                "{name}"
            );
        }
        assert!(judged("dccp non-first fragment test>prod").fragment);
        assert_eq!(judged("dccp header cut test>prod").l4, L4Seen::NoPorts);
        // Routing headers: the hop is test (test -> test is allowed), the
        // final destination production decides.
        for name in [
            "routing type 0, hop in the source's environment",
            "routing type 0, two hops",
            "srv6, final segment elsewhere",
            "srv6 behind hop-by-hop",
            "routing type 2 home address",
        ] {
            let j = judged(&format!("{name} test>prod"));
            assert!(j.by_final && j.verdict == verdict::DROP, "{name}: {j:?}");
            let j = judged(&format!("{name} prod>prod"));
            assert!(j.routed && j.verdict == verdict::ALLOW, "{name}: {j:?}");
        }
        // The port rule holds for the final destination too.
        let j = judged("srv6, final segment elsewhere, dns test>prod");
        assert!(j.routed && j.verdict == verdict::ALLOW, "{j:?}");
        let j = judged("srv6 segments left 0 test>prod");
        assert!(!j.routed && j.verdict == verdict::DROP, "{j:?}");
        let j = judged("routing type 1 (destination only) test>prod");
        assert!(!j.routed && j.verdict == verdict::DROP, "{j:?}");

        // GSO: judged with the skb's length, the port rule reachable.
        for name in [
            "big tcp ipv4 (total length 0)",
            "big tcp ipv6 (payload length 0)",
            "big tcp ipv6 with a hop-by-hop jumbo option",
            "big tcp ipv4 behind an 802.1Q tag",
            "big tcp ipv4 in mpls",
            "big tcp ipv6 in pppoe",
        ] {
            let j = judged(&format!("{name} test>prod"));
            assert!(j.len_from_skb && j.l4 == L4Seen::Ports, "{name}: {j:?}");
            assert_eq!(j.verdict, verdict::DROP, "{name}");
            assert_eq!(judged(&format!("{name} prod>prod")).verdict, verdict::ALLOW);
        }
        let j = judged("big tcp ipv6 srv6, final segment elsewhere test>prod");
        assert!(j.by_final && j.len_from_skb, "{j:?}");
        let j = judged("gso ipv4 with its length written test>prod");
        assert!(!j.len_from_skb && j.verdict == verdict::DROP);
        // Tunnels: outer prod > prod, inner test > prod is dropped by the
        // inner packet; where it is not opened, the outer decides.
        let inner = "outer prod>prod, inner test>prod";
        for name in [
            "vxlan in ipv4 total length 0",
            "vxlan 8472 in ipv6 payload length 0",
            "vxlan in ipv6 payload length 0 with a jumbo option",
            "geneve in ipv6 payload length 0",
            "ipip in ipv4 total length 0",
            "vxlan on 8472",
            "vxlan on 8472 over ipv6, inner ipv6",
            "vxlan-gpe ipv4",
            "vxlan-gpe ipv6 over ipv6",
            "vxlan-gpe ethernet",
            "mpls inside vxlan",
            "mpls ipv6 inside gre teb",
            "pppoe inside vxlan",
            "pppoe ipv6 inside geneve",
            "srv6 inside vxlan, inner final segment",
            "outer srv6 around vxlan",
            "dccp inside ipip",
        ] {
            let j = judged(&format!("{name}: {inner}"));
            assert!(j.by_inner && j.verdict == verdict::DROP, "{name}: {j:?}");
        }
        // The inner dccp 53 of production is no port rule's: dropped too.
        let j = judged(&format!("dccp ipv6 inside geneve: {inner}"));
        assert!(j.by_inner && j.verdict == verdict::DROP, "{j:?}");
        let j = judged(&format!("routing type 0 inside ipv6 in ipv6: {inner}"));
        assert!(
            j.tunneled && j.routed && j.verdict == verdict::ALLOW,
            "dns: {j:?}"
        );
        for name in [
            "vxlan-gpe without the P flag (not opened)",
            "vxlan-gpe nsh (not opened)",
            "mpls over gre (known gap: judged on the outer)",
        ] {
            let j = judged(&format!("{name}: {inner}"));
            assert!(!j.by_inner && j.verdict == verdict::ALLOW, "{name}: {j:?}");
        }
        // Every shape is cut at its header boundaries, GSO ones with GSO.
        let cuts = all.keys().filter(|k| k.contains(" cut at ")).count();
        assert!(cuts > 1000, "{cuts} cuts");
        assert!(all
            .values()
            .filter(|n| n.name.starts_with("gso big tcp ipv6 in pppoe"))
            .all(|n| n.gso_size == GSO_SIZE));
        assert!(all
            .keys()
            .any(|k| k.starts_with("tunnel vxlan-gpe ethernet cut at")));
        assert!(all
            .keys()
            .any(|k| k.starts_with("shapes-headers mpls 7 labels ipv6")));
    }

    #[test]
    fn gso_comments_round_trip() {
        assert_eq!(gso_of_comment(Some(&gso_comment(1448, "x; y"))), 1448);
        assert_eq!(gso_of_comment(Some("gso_size=0")), 0);
        assert_eq!(gso_of_comment(Some("a comment")), 0);
        assert_eq!(gso_of_comment(None), 0);
    }
}
