//! A named catalogue of header shapes, each built for a few environment
//! pairs of the example policy: the synthetic part of the pcap corpus
//! (`tests/corpus/shapes-*.pcap`, written by `tests/tests/corpus.rs`), so
//! that every shape the datapath decides on explicitly is replayed on every
//! run, whatever the random generator happens to draw.

use super::{
    ethertype, ipproto, mapped, ppp, ExtSpec, FrameSpec, GreSpec, Inner, Ip4Spec, Ip6Spec, L3Spec,
    L4Spec, LenField, MplsSpec, PppoeSpec, UdpBody, GENEVE_PORT, VXLAN_GPE_PORT, VXLAN_LINUX_PORT,
    VXLAN_PORT,
};

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

/// Address pairs each shape is built for: (name, src, dst), IPv4.
pub const PAIRS4: [(&str, [u8; 4], [u8; 4]); 5] = [
    ("test>prod", [10, 30, 1, 2], [10, 10, 1, 2]),
    ("prod>prod", [10, 10, 1, 2], [10, 10, 2, 2]),
    ("prod>test", [10, 10, 1, 2], [10, 30, 1, 2]),
    ("staging>prod", [10, 20, 1, 2], [10, 10, 1, 2]),
    ("world>test", [192, 0, 2, 1], [10, 30, 1, 2]),
];

/// The IPv6 form of an IPv4 pair address: 10.B.C.D is fd00:<B as the
/// same decimal digits>:<C>::<D> (10.30.1.2 is fd00:30:1::2, in the
/// example policy's test environment like 10.30.1.2), anything else
/// 2001:db8::<D>.
pub fn six(a: [u8; 4]) -> [u8; 16] {
    if a[0] != 10 {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        x[15] = a[3];
        return x;
    }
    let mut x = [0u8; 16];
    x[0] = 0xfd;
    // The decimal digits as hex digits (30 -> 0x30); B <= 99.
    x[2] = a[1] / 100;
    x[3] = ((a[1] / 10 % 10) << 4) | (a[1] % 10);
    x[5] = a[2];
    x[15] = a[3];
    x
}

pub fn eth(vlans: &[(u16, u16)], l3: L3Spec) -> FrameSpec {
    FrameSpec {
        dst_mac: [0x02, 0, 0, 0, 0, 1],
        src_mac: [0x02, 0, 0, 0, 0, 2],
        vlans: vlans.to_vec(),
        l3,
        pad_to: 0,
    }
}

pub fn v4(src: [u8; 4], dst: [u8; 4], payload: L4Spec) -> Ip4Spec {
    Ip4Spec {
        src,
        dst,
        options: Vec::new(),
        frag: 0,
        ihl: None,
        version: 4,
        tot_len: LenField::Exact,
        id: 0x1234,
        payload,
        cut: None,
    }
}

pub fn v6(src: [u8; 16], dst: [u8; 16], payload: L4Spec) -> Ip6Spec {
    Ip6Spec {
        src,
        dst,
        ext: Vec::new(),
        payload_len: LenField::Exact,
        version: 6,
        payload,
        cut: None,
    }
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
    L4Spec::Tcp {
        sport: 40001,
        dport,
        data: 0,
    }
}

fn ext(kind: u8, units: u8, frag: u16) -> ExtSpec {
    ExtSpec::new(kind, units, frag, 0)
}

fn l2v4(ip: Ip4Spec) -> FrameSpec {
    eth(&[], L3Spec::V4(Box::new(ip)))
}

fn l2v6(ip: Ip6Spec) -> FrameSpec {
    eth(&[], L3Spec::V6(Box::new(ip)))
}

/// A shape: a name and how to build it from an address pair.
type Shape = (String, Box<dyn Fn([u8; 4], [u8; 4]) -> FrameSpec>);

fn shape(name: impl Into<String>, f: impl Fn([u8; 4], [u8; 4]) -> FrameSpec + 'static) -> Shape {
    (name.into(), Box::new(f))
}

fn l2_shapes() -> Vec<Shape> {
    let q = ethertype::VLAN;
    let ad = ethertype::QINQ;
    let tagged =
        |tags: Vec<(u16, u16)>| move |s, d| eth(&tags, L3Spec::V4(Box::new(v4(s, d, tcp(8080)))));
    vec![
        shape("untagged tcp", tagged(vec![])),
        shape("802.1Q", tagged(vec![(q, 100)])),
        shape("802.1ad", tagged(vec![(ad, 100)])),
        shape("priority tag vid 0", tagged(vec![(q, 0)])),
        shape("802.1ad + 802.1Q", tagged(vec![(ad, 100), (q, 200)])),
        shape("two priority tags", tagged(vec![(q, 0), (q, 0)])),
        shape("three tags", tagged(vec![(ad, 1), (q, 2), (q, 3)])),
        shape("four tags", tagged(vec![(ad, 1), (ad, 2), (q, 3), (q, 4)])),
        shape("802.1Q ipv6 dns", |s, d| {
            eth(
                &[(ethertype::VLAN, 7)],
                L3Spec::V6(Box::new(v6(six(s), six(d), dns()))),
            )
        }),
        shape("arp", |_, _| {
            eth(
                &[],
                L3Spec::Other {
                    ethertype: ethertype::ARP,
                    bytes: vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 30, 1, 2],
                },
            )
        }),
        shape("tagged arp", |_, _| {
            eth(
                &[(ethertype::VLAN, 5), (ethertype::VLAN, 6)],
                L3Spec::Other {
                    ethertype: ethertype::ARP,
                    bytes: vec![0, 1, 8, 0, 6, 4, 0, 1],
                },
            )
        }),
        shape("lldp", |_, _| {
            eth(
                &[],
                L3Spec::Other {
                    ethertype: ethertype::LLDP,
                    bytes: vec![2, 7, 4, 0, 0, 0, 0, 0, 1],
                },
            )
        }),
        shape("802.3 length field", |_, _| {
            eth(
                &[],
                L3Spec::Other {
                    ethertype: 0x0026,
                    bytes: vec![0x42, 0x42, 3, 0, 0, 0, 0],
                },
            )
        }),
        shape("padded to 60 bytes", |s, d| {
            let mut f = l2v4(v4(s, d, udp(9000, UdpBody::Data(vec![1]))));
            f.pad_to = 60;
            f
        }),
    ]
}

fn v4_shapes() -> Vec<Shape> {
    let with = |f: fn(&mut Ip4Spec)| {
        move |s, d| {
            let mut ip = v4(s, d, dns());
            f(&mut ip);
            l2v4(ip)
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
        shape(
            "icmp echo",
            with(|ip| {
                ip.payload = L4Spec::Icmp {
                    v6: false,
                    ty: 8,
                    code: 0,
                }
            }),
        ),
        shape("options 4 bytes", with(|ip| ip.options = vec![1, 1, 1, 0])),
        shape(
            "options 40 bytes",
            with(|ip| {
                ip.options = vec![1; 40];
            }),
        ),
        shape("DF", with(|ip| ip.frag = 0x4000)),
        shape("first fragment (MF)", with(|ip| ip.frag = 0x2000)),
        shape("non-first fragment of dns", with(|ip| ip.frag = 185)),
        shape("middle fragment of dns", with(|ip| ip.frag = 0x2000 | 185)),
        shape(
            "non-first fragment of tcp 8080",
            with(|ip| {
                ip.frag = 3;
                ip.payload = tcp(8080);
            }),
        ),
        shape(
            "non-first fragment of icmp",
            with(|ip| {
                ip.frag = 3;
                ip.payload = L4Spec::Icmp {
                    v6: false,
                    ty: 8,
                    code: 0,
                };
            }),
        ),
        shape("reserved flag", with(|ip| ip.frag = 0x8000)),
        shape("ihl 4", with(|ip| ip.ihl = Some(4))),
        shape("ihl 0", with(|ip| ip.ihl = Some(0))),
        shape("ihl 15, short packet", with(|ip| ip.ihl = Some(15))),
        shape(
            "tot_len < header",
            with(|ip| ip.tot_len = LenField::Value(19)),
        ),
        shape(
            "tot_len > frame",
            with(|ip| ip.tot_len = LenField::Delta(1)),
        ),
        shape(
            "tot_len < frame (trailer)",
            with(|ip| ip.tot_len = LenField::Delta(-4)),
        ),
        shape(
            "tot_len cuts the udp ports",
            with(|ip| ip.tot_len = LenField::Value(22)),
        ),
        shape("version 6 in an ipv4 frame", with(|ip| ip.version = 6)),
        shape(
            "udp header cut (consistent lengths)",
            with(|ip| ip.cut = Some(3)),
        ),
        shape(
            "protocol 0 (hop-by-hop number) in ipv4",
            with(|ip| {
                ip.payload = L4Spec::Raw {
                    proto: ipproto::HOPOPTS,
                    bytes: vec![17, 0, 0, 0, 0, 0, 0, 0],
                }
            }),
        ),
        shape(
            "esp in ipv4",
            with(|ip| {
                ip.payload = L4Spec::Raw {
                    proto: ipproto::ESP,
                    bytes: vec![0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb],
                }
            }),
        ),
    ]
}

fn v6_shapes() -> Vec<Shape> {
    let with = |f: fn(&mut Ip6Spec)| {
        move |s, d| {
            let mut ip = v6(six(s), six(d), dns());
            f(&mut ip);
            l2v6(ip)
        }
    };
    vec![
        shape("udp 53", with(|_| {})),
        shape("tcp 8080", with(|ip| ip.payload = tcp(8080))),
        shape(
            "icmpv6 echo",
            with(|ip| {
                ip.payload = L4Spec::Icmp {
                    v6: true,
                    ty: 128,
                    code: 0,
                }
            }),
        ),
        shape(
            "hop-by-hop",
            with(|ip| ip.ext = vec![ext(ipproto::HOPOPTS, 0, 0)]),
        ),
        shape(
            "routing + dest opts",
            with(|ip| ip.ext = vec![ext(ipproto::ROUTING, 2, 0), ext(ipproto::DSTOPTS, 1, 0)]),
        ),
        shape(
            "first fragment",
            with(|ip| ip.ext = vec![ext(ipproto::FRAGMENT, 0, 1)]),
        ),
        shape(
            "non-first fragment of dns",
            with(|ip| ip.ext = vec![ext(ipproto::FRAGMENT, 0, (100 << 3) | 1)]),
        ),
        shape(
            "non-first fragment of tcp 8080",
            with(|ip| {
                ip.ext = vec![
                    ext(ipproto::HOPOPTS, 0, 0),
                    ext(ipproto::FRAGMENT, 0, 100 << 3),
                ];
                ip.payload = tcp(8080);
            }),
        ),
        shape(
            "ah + tcp 53",
            with(|ip| {
                ip.ext = vec![ext(ipproto::AH, 4, 0)];
                ip.payload = tcp(53);
            }),
        ),
        shape("esp", with(|ip| ip.ext = vec![ext(ipproto::ESP, 0, 0)])),
        shape(
            "six extension headers (the bound)",
            with(|ip| {
                ip.ext = vec![
                    ext(ipproto::HOPOPTS, 0, 0),
                    ext(ipproto::DSTOPTS, 0, 0),
                    ext(ipproto::ROUTING, 0, 0),
                    ext(ipproto::FRAGMENT, 0, 0),
                    ext(ipproto::DSTOPTS, 1, 0),
                    ext(ipproto::MOBILITY, 0, 0),
                ]
            }),
        ),
        shape(
            "seven extension headers (past the bound)",
            with(|ip| {
                ip.ext = vec![
                    ext(ipproto::HOPOPTS, 0, 0),
                    ext(ipproto::DSTOPTS, 0, 0),
                    ext(ipproto::ROUTING, 0, 0),
                    ext(ipproto::FRAGMENT, 0, 0),
                    ext(ipproto::DSTOPTS, 1, 0),
                    ext(ipproto::HIP, 0, 0),
                    ext(ipproto::SHIM6, 0, 0),
                ]
            }),
        ),
        shape(
            "dest opts pushing udp past the parse window",
            with(|ip| ip.ext = vec![ext(ipproto::DSTOPTS, 50, 0)]),
        ),
        shape(
            "no next header",
            with(|ip| {
                ip.payload = L4Spec::Raw {
                    proto: ipproto::NONE,
                    bytes: vec![],
                }
            }),
        ),
        shape("ipv4-mapped addresses", |s, d| {
            l2v6(v6(mapped(s), mapped(d), tcp(8080)))
        }),
        shape("ipv4-mapped addresses, dns", |s, d| {
            l2v6(v6(mapped(s), mapped(d), dns()))
        }),
        shape("ipv4-compatible (not mapped)", |s, d| {
            let (mut a, mut b) = (mapped(s), mapped(d));
            a[10] = 0;
            a[11] = 0;
            b[10] = 0;
            b[11] = 0;
            l2v6(v6(a, b, tcp(8080)))
        }),
        shape("nat64 (not mapped)", |s, d| {
            let (mut a, mut b) = (mapped(s), mapped(d));
            a[..4].copy_from_slice(&[0, 0x64, 0xff, 0x9b]);
            b[..4].copy_from_slice(&[0, 0x64, 0xff, 0x9b]);
            a[10] = 0;
            a[11] = 0;
            b[10] = 0;
            b[11] = 0;
            l2v6(v6(a, b, tcp(8080)))
        }),
        shape(
            "payload_len > frame",
            with(|ip| ip.payload_len = LenField::Delta(1)),
        ),
        shape("version 4 in an ipv6 frame", with(|ip| ip.version = 4)),
        shape("udp header cut", with(|ip| ip.cut = Some(2))),
    ]
}

fn mpls(labels: usize, multicast: bool, bos: bool, payload: Inner) -> L3Spec {
    L3Spec::Mpls(Box::new(MplsSpec {
        multicast,
        labels: (0..labels).map(|i| 1000 + i as u32).collect(),
        bos,
        payload,
    }))
}

fn pppoe(protocol: u16, payload: Inner) -> L3Spec {
    L3Spec::Pppoe(Box::new(PppoeSpec::session(protocol, payload)))
}

fn dccp(dport: u16) -> L4Spec {
    L4Spec::Dccp {
        sport: 40002,
        dport,
    }
}

/// An IPv6 packet from `s` to the hop `hop` whose routing header ends at
/// `last` (as [`ExtSpec::routing`] lays it out).
fn routed(s: [u8; 4], hop: [u8; 4], ext: Vec<ExtSpec>, payload: L4Spec) -> FrameSpec {
    let mut ip = v6(six(s), six(hop), payload);
    ip.ext = ext;
    l2v6(ip)
}

/// The shapes of issue 13 that need no GSO skb: MPLS, PPPoE, DCCP, IPv6
/// routing headers with a final destination, and lengths of 0 outside a
/// GSO skb (malformed), IPv4 and IPv6.
fn real_world_shapes() -> Vec<Shape> {
    let i4 = |s, d| Inner::Ip4(Box::new(v4(s, d, tcp(8080))));
    let i6 = |s, d| Inner::Ip6(Box::new(v6(six(s), six(d), tcp(8080))));
    let mut v: Vec<Shape> = Vec::new();
    for n in [1usize, 2, 3, 6, 7] {
        let deep = if n == 7 { " (too deep)" } else { "" };
        v.push(shape(format!("mpls {n} labels ipv4{deep}"), move |s, d| {
            eth(&[], mpls(n, false, true, i4(s, d)))
        }));
        v.push(shape(format!("mpls {n} labels ipv6{deep}"), move |s, d| {
            eth(&[], mpls(n, false, true, i6(s, d)))
        }));
    }
    v.extend([
        shape("mpls multicast 2 labels ipv4", move |s, d| {
            eth(&[], mpls(2, true, true, i4(s, d)))
        }),
        shape("mpls multicast 1 label ipv6 dns", |s, d| {
            let ip = v6(six(s), six(d), dns());
            eth(&[], mpls(1, true, true, Inner::Ip6(Box::new(ip))))
        }),
        shape("mpls behind an 802.1Q tag", move |s, d| {
            eth(&[(ethertype::VLAN, 30)], mpls(2, false, true, i4(s, d)))
        }),
        shape("mpls without bottom of stack, frame ends", |_, _| {
            eth(&[], mpls(3, false, false, Inner::Raw(Vec::new())))
        }),
        shape("mpls without bottom of stack, ip follows", move |s, d| {
            eth(&[], mpls(3, false, false, i4(s, d)))
        }),
        shape("mpls pseudowire control word (not ip)", |_, _| {
            let cw = Inner::Raw(vec![0, 0, 0, 1, 0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0]);
            eth(&[], mpls(2, false, true, cw))
        }),
        shape("pppoe session ipv4", move |s, d| {
            eth(&[], pppoe(ppp::IPV4, i4(s, d)))
        }),
        shape("pppoe session ipv6", move |s, d| {
            eth(&[], pppoe(ppp::IPV6, i6(s, d)))
        }),
        shape("pppoe session ipv4 dns", |s, d| {
            let ip = Inner::Ip4(Box::new(v4(s, d, dns())));
            eth(&[], pppoe(ppp::IPV4, ip))
        }),
        shape("pppoe session ipv4, compressed protocol", move |s, d| {
            let mut p = PppoeSpec::session(ppp::IPV4, i4(s, d));
            p.protocol = vec![0x21];
            eth(&[], L3Spec::Pppoe(Box::new(p)))
        }),
        shape("pppoe session behind 802.1ad + 802.1Q", move |s, d| {
            eth(
                &[(ethertype::QINQ, 10), (ethertype::VLAN, 20)],
                pppoe(ppp::IPV6, i6(s, d)),
            )
        }),
        shape("pppoe session lcp (not ip)", |_, _| {
            eth(&[], pppoe(ppp::LCP, Inner::Raw(vec![1, 1, 0, 4])))
        }),
        shape("pppoe session bad version", move |s, d| {
            let mut p = PppoeSpec::session(ppp::IPV4, i4(s, d));
            p.ver_type = 0x21;
            eth(&[], L3Spec::Pppoe(Box::new(p)))
        }),
        shape("pppoe session with a discovery code", move |s, d| {
            let mut p = PppoeSpec::session(ppp::IPV4, i4(s, d));
            p.code = 0x09;
            eth(&[], L3Spec::Pppoe(Box::new(p)))
        }),
        shape("pppoe discovery (not ip)", move |s, d| {
            let mut p = PppoeSpec::session(ppp::IPV4, i4(s, d));
            p.discovery = true;
            p.code = 0x09;
            eth(&[], L3Spec::Pppoe(Box::new(p)))
        }),
        shape("dccp 8080 ipv4", |s, d| l2v4(v4(s, d, dccp(8080)))),
        shape("dccp 53 ipv4", |s, d| l2v4(v4(s, d, dccp(53)))),
        shape("dccp 8080 ipv6", |s, d| {
            l2v6(v6(six(s), six(d), dccp(8080)))
        }),
        shape("dccp non-first fragment", |s, d| {
            let mut ip = v4(s, d, dccp(8080));
            ip.frag = 100;
            l2v4(ip)
        }),
        shape("dccp header cut", |s, d| {
            let mut ip = v6(six(s), six(d), dccp(8080));
            ip.cut = Some(3);
            l2v6(ip)
        }),
        shape("routing type 0, hop in the source's environment", |s, d| {
            routed(s, s, vec![ExtSpec::routing(0, 1, &[six(d)])], tcp(8080))
        }),
        shape("routing type 0, two hops", |s, d| {
            let ext = ExtSpec::routing(0, 2, &[six(s), six(d)]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("srv6, final segment elsewhere", |s, d| {
            let ext = ExtSpec::routing(4, 1, &[six(d), six(s)]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("srv6, final segment elsewhere, dns", |s, d| {
            let ext = ExtSpec::routing(4, 2, &[six(d), six(s), six(s)]);
            routed(s, s, vec![ext], dns())
        }),
        shape("srv6 behind hop-by-hop", |s, d| {
            let ext = vec![
                ext(ipproto::HOPOPTS, 0, 0),
                ExtSpec::routing(4, 1, &[six(d), six(s)]),
            ];
            routed(s, s, ext, tcp(8080))
        }),
        shape("srv6 segments left 0", |s, d| {
            let ext = ExtSpec::routing(4, 0, &[six(d), six(s)]);
            routed(s, d, vec![ext], tcp(8080))
        }),
        shape("routing type 2 home address", |s, d| {
            routed(s, s, vec![ExtSpec::routing(2, 1, &[six(d)])], tcp(8080))
        }),
        shape("routing type 1 (destination only)", |s, d| {
            routed(s, d, vec![ExtSpec::routing(1, 1, &[six(s)])], tcp(8080))
        }),
        shape("routing type 0 segments left > addresses", |s, d| {
            let ext = ExtSpec::routing(0, 3, &[six(s), six(d)]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("srv6 segments left > last entry + 1", |s, d| {
            let ext = ExtSpec::routing(4, 3, &[six(d), six(s)]);
            routed(s, s, vec![ext], tcp(8080))
        }),
        shape("two routing headers with segments left", |s, d| {
            let ext = vec![
                ExtSpec::routing(4, 1, &[six(d), six(s)]),
                ExtSpec::routing(0, 1, &[six(d)]),
            ];
            routed(s, s, ext, tcp(8080))
        }),
        shape("ipv4 total length 0, not gso", |s, d| {
            let mut ip = v4(s, d, tcp(8080));
            ip.tot_len = LenField::Value(0);
            l2v4(ip)
        }),
        shape("ipv6 payload length 0, not gso", |s, d| {
            let mut ip = v6(six(s), six(d), tcp(8080));
            ip.payload_len = LenField::Value(0);
            l2v6(ip)
        }),
        shape("jumbogram longer than the frame", |s, d| {
            let mut ip = v6(six(s), six(d), tcp(8080));
            ip.ext = vec![ExtSpec::jumbo(70_000)];
            ip.payload_len = LenField::Value(0);
            l2v6(ip)
        }),
        shape("jumbo option under 65536", |s, d| {
            let mut ip = v6(six(s), six(d), tcp(8080));
            ip.ext = vec![ExtSpec::jumbo(100)];
            ip.payload_len = LenField::Value(0);
            l2v6(ip)
        }),
        shape("jumbo option with the payload length written", |s, d| {
            let mut ip = v6(six(s), six(d), tcp(8080));
            ip.ext = vec![ExtSpec::jumbo(70_000)];
            l2v6(ip)
        }),
    ]);
    v
}

/// Shapes replayed in a GSO skb (`gso_size` [`GSO_SIZE`]): BIG TCP's
/// lengths of 0, IPv4 and IPv6, bare or behind VLAN, MPLS and PPPoE.
fn gso_shapes() -> Vec<Shape> {
    let big4 = |s, d, payload| {
        let mut ip = v4(s, d, payload);
        ip.tot_len = LenField::Value(0);
        ip
    };
    let big6 = |s, d, payload| {
        let mut ip = v6(six(s), six(d), payload);
        ip.payload_len = LenField::Value(0);
        ip
    };
    let data = || L4Spec::Tcp {
        sport: 40001,
        dport: 8080,
        data: 1400,
    };
    vec![
        shape("big tcp ipv4 (total length 0)", move |s, d| {
            l2v4(big4(s, d, data()))
        }),
        shape("big tcp ipv4 dns", move |s, d| l2v4(big4(s, d, dns()))),
        shape("big tcp ipv6 (payload length 0)", move |s, d| {
            l2v6(big6(s, d, data()))
        }),
        shape(
            "big tcp ipv6 with a hop-by-hop jumbo option",
            move |s, d| {
                let mut ip = big6(s, d, data());
                ip.ext = vec![ExtSpec::jumbo(100_000)];
                l2v6(ip)
            },
        ),
        shape("big tcp ipv6 srv6, final segment elsewhere", move |s, d| {
            let mut ip = big6(s, s, data());
            ip.ext = vec![ExtSpec::routing(4, 1, &[six(d), six(s)])];
            l2v6(ip)
        }),
        shape("big tcp ipv4 behind an 802.1Q tag", move |s, d| {
            eth(
                &[(ethertype::VLAN, 5)],
                L3Spec::V4(Box::new(big4(s, d, data()))),
            )
        }),
        shape("big tcp ipv4 in mpls", move |s, d| {
            eth(
                &[],
                mpls(2, false, true, Inner::Ip4(Box::new(big4(s, d, data())))),
            )
        }),
        shape("big tcp ipv6 in pppoe", move |s, d| {
            eth(
                &[],
                pppoe(ppp::IPV6, Inner::Ip6(Box::new(big6(s, d, data())))),
            )
        }),
        shape("gso ipv4 with its length written", |s, d| {
            l2v4(v4(s, d, tcp(8080)))
        }),
        shape("gso ipv6 with its length written", |s, d| {
            l2v6(v6(six(s), six(d), tcp(8080)))
        }),
    ]
}

/// Tunnels inside BIG TCP's lengths of 0 (the bypass issue 13 found: the
/// inner packet was never opened), replayed in a GSO skb.
fn gso_tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    let zero4 = |o: Pair, payload| {
        let mut ip = v4(o.0, o.1, payload);
        ip.tot_len = LenField::Value(0);
        l2v4(ip)
    };
    let zero6 = |o: Pair, payload, jumbo: bool| {
        let mut ip = v6(six(o.0), six(o.1), payload);
        ip.payload_len = LenField::Value(0);
        if jumbo {
            ip.ext = vec![ExtSpec::jumbo(100_000)];
        }
        l2v6(ip)
    };
    vec![
        (
            "vxlan in ipv4 total length 0",
            Box::new(move |o, i| zero4(o, vxlan(VXLAN_PORT, inner_eth(i)))),
        ),
        (
            "vxlan 8472 in ipv6 payload length 0",
            Box::new(move |o, i| zero6(o, vxlan(VXLAN_LINUX_PORT, inner_eth(i)), false)),
        ),
        (
            "vxlan in ipv6 payload length 0 with a jumbo option",
            Box::new(move |o, i| zero6(o, vxlan(VXLAN_PORT, inner_eth(i)), true)),
        ),
        (
            "geneve in ipv6 payload length 0",
            Box::new(move |o, i| {
                let g = udp(
                    GENEVE_PORT,
                    UdpBody::Geneve {
                        opt_words: 0,
                        proto: ethertype::TEB,
                        inner: Inner::Eth(Box::new(inner_eth(i))),
                    },
                );
                zero6(o, g, false)
            }),
        ),
        (
            "ipip in ipv4 total length 0",
            Box::new(move |o, i| zero4(o, L4Spec::Ip4(Box::new(inner4(i))))),
        ),
    ]
}

fn vxlan(port: u16, inner: FrameSpec) -> L4Spec {
    udp(
        port,
        UdpBody::Vxlan {
            flags: 0x08,
            vni: 42,
            inner: Inner::Eth(Box::new(inner)),
        },
    )
}

fn gpe(flags: u8, next: u8, inner: Inner) -> L4Spec {
    udp(VXLAN_GPE_PORT, UdpBody::Gpe { flags, next, inner })
}

/// Issue 13's tunnel shapes: VXLAN on 8472, VXLAN-GPE, and MPLS, PPPoE,
/// routing headers and DCCP inside tunnels.
fn real_world_tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    vec![
        (
            "vxlan on 8472",
            Box::new(|o, i| outer4(o, vxlan(VXLAN_LINUX_PORT, inner_eth(i)))),
        ),
        (
            "vxlan on 8472 over ipv6, inner ipv6",
            Box::new(|o, i| {
                let e = eth(&[], L3Spec::V6(Box::new(inner6_tcp(i))));
                outer6(o, vxlan(VXLAN_LINUX_PORT, e))
            }),
        ),
        (
            "vxlan-gpe ipv4",
            Box::new(|o, i| outer4(o, gpe(0x0c, 1, Inner::Ip4(Box::new(inner4(i)))))),
        ),
        (
            "vxlan-gpe ipv6 over ipv6",
            Box::new(|o, i| outer6(o, gpe(0x0c, 2, Inner::Ip6(Box::new(inner6_tcp(i)))))),
        ),
        (
            "vxlan-gpe ethernet",
            Box::new(|o, i| outer4(o, gpe(0x0c, 3, Inner::Eth(Box::new(inner_eth(i)))))),
        ),
        (
            "vxlan-gpe without the P flag (not opened)",
            Box::new(|o, i| outer4(o, gpe(0x08, 1, Inner::Ip4(Box::new(inner4(i)))))),
        ),
        (
            "vxlan-gpe nsh (not opened)",
            Box::new(|o, i| outer4(o, gpe(0x0c, 4, Inner::Ip4(Box::new(inner4(i)))))),
        ),
        (
            "mpls inside vxlan",
            Box::new(|o, i| {
                let m = mpls(2, false, true, Inner::Ip4(Box::new(inner4(i))));
                outer4(o, vxlan(VXLAN_PORT, eth(&[], m)))
            }),
        ),
        (
            "mpls ipv6 inside gre teb",
            Box::new(|o, i| {
                let m = mpls(1, false, true, Inner::Ip6(Box::new(inner6_tcp(i))));
                outer4(o, gre(0, ethertype::TEB, Inner::Eth(Box::new(eth(&[], m)))))
            }),
        ),
        (
            "mpls over gre (known gap: judged on the outer)",
            Box::new(|o, i| outer4(o, gre(0, ethertype::MPLS, Inner::Ip4(Box::new(inner4(i)))))),
        ),
        (
            "pppoe inside vxlan",
            Box::new(|o, i| {
                let p = pppoe(ppp::IPV4, Inner::Ip4(Box::new(inner4(i))));
                outer4(o, vxlan(VXLAN_LINUX_PORT, eth(&[], p)))
            }),
        ),
        (
            "pppoe ipv6 inside geneve",
            Box::new(|o, i| {
                let p = pppoe(ppp::IPV6, Inner::Ip6(Box::new(inner6_tcp(i))));
                let g = UdpBody::Geneve {
                    opt_words: 0,
                    proto: ethertype::TEB,
                    inner: Inner::Eth(Box::new(eth(&[], p))),
                };
                outer6(o, udp(GENEVE_PORT, g))
            }),
        ),
        (
            "srv6 inside vxlan, inner final segment",
            Box::new(|o, i| {
                let mut ip = v6(six(i.0), six(i.0), tcp(8080));
                ip.ext = vec![ExtSpec::routing(4, 1, &[six(i.1), six(i.0)])];
                outer4(o, vxlan(VXLAN_PORT, l2v6(ip)))
            }),
        ),
        (
            "routing type 0 inside ipv6 in ipv6",
            Box::new(|o, i| {
                let mut ip = v6(six(i.0), six(i.0), dns());
                ip.ext = vec![ExtSpec::routing(0, 1, &[six(i.1)])];
                outer6(o, L4Spec::Ip6(Box::new(ip)))
            }),
        ),
        (
            "outer srv6 around vxlan",
            Box::new(|o, i| {
                let mut ip = v6(six(o.0), six(o.0), vxlan(VXLAN_PORT, inner_eth(i)));
                ip.ext = vec![ExtSpec::routing(4, 1, &[six(o.1), six(o.0)])];
                l2v6(ip)
            }),
        ),
        (
            "dccp inside ipip",
            Box::new(|o, i| outer4(o, L4Spec::Ip4(Box::new(v4(i.0, i.1, dccp(8080)))))),
        ),
        (
            "dccp ipv6 inside geneve",
            Box::new(|o, i| {
                let g = UdpBody::Geneve {
                    opt_words: 1,
                    proto: ethertype::IPV6,
                    inner: Inner::Ip6(Box::new(v6(six(i.0), six(i.1), dccp(53)))),
                };
                outer4(o, udp(GENEVE_PORT, g))
            }),
        ),
    ]
}

/// Tunnels: built for (outer pair, inner pair) combinations.
fn tunnel_shapes() -> Vec<(&'static str, TunnelFn)> {
    vec![
        (
            "ipip",
            Box::new(|o, i| outer4(o, L4Spec::Ip4(Box::new(inner4(i))))),
        ),
        (
            "ipv6 in ipv4",
            Box::new(|o, i| outer4(o, L4Spec::Ip6(Box::new(inner6(i))))),
        ),
        (
            "ipv6 in ipv6",
            Box::new(|o, i| outer6(o, L4Spec::Ip6(Box::new(inner6(i))))),
        ),
        (
            "ipv4 in ipv6",
            Box::new(|o, i| outer6(o, L4Spec::Ip4(Box::new(inner4(i))))),
        ),
        (
            "gre ipv4",
            Box::new(|o, i| outer4(o, gre(0, ethertype::IPV4, Inner::Ip4(Box::new(inner4(i)))))),
        ),
        (
            "gre ipv6",
            Box::new(|o, i| outer4(o, gre(0, ethertype::IPV6, Inner::Ip6(Box::new(inner6(i)))))),
        ),
        (
            "gre with checksum, key, sequence",
            Box::new(|o, i| {
                outer4(
                    o,
                    gre(0xb000, ethertype::IPV4, Inner::Ip4(Box::new(inner4(i)))),
                )
            }),
        ),
        (
            "gre key over ipv6",
            Box::new(|o, i| {
                outer6(
                    o,
                    gre(0x2000, ethertype::IPV4, Inner::Ip4(Box::new(inner4(i)))),
                )
            }),
        ),
        (
            "gre teb (ethernet inside)",
            Box::new(|o, i| {
                outer4(
                    o,
                    gre(0, ethertype::TEB, Inner::Eth(Box::new(inner_eth(i)))),
                )
            }),
        ),
        (
            "gre version 1 (pptp, not decapsulated)",
            Box::new(|o, i| {
                outer4(
                    o,
                    gre(0x2001, ethertype::PPP, Inner::Ip4(Box::new(inner4(i)))),
                )
            }),
        ),
        (
            "gre routing bit (not decapsulated)",
            Box::new(|o, i| {
                outer4(
                    o,
                    gre(0x4000, ethertype::IPV4, Inner::Ip4(Box::new(inner4(i)))),
                )
            }),
        ),
        (
            "vxlan",
            Box::new(|o, i| {
                outer4(
                    o,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 42,
                            inner: Inner::Eth(Box::new(inner_eth(i))),
                        },
                    ),
                )
            }),
        ),
        (
            "vxlan over ipv6, inner vlan-tagged ipv6",
            Box::new(|o, i| {
                let mut e = eth(&[(ethertype::VLAN, 9)], L3Spec::V6(Box::new(inner6(i))));
                e.src_mac[5] = 9;
                outer6(
                    o,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 42,
                            inner: Inner::Eth(Box::new(e)),
                        },
                    ),
                )
            }),
        ),
        (
            "vxlan carrying arp",
            Box::new(|o, _| {
                outer4(
                    o,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 42,
                            inner: Inner::Eth(Box::new(eth(
                                &[],
                                L3Spec::Other {
                                    ethertype: ethertype::ARP,
                                    bytes: vec![0, 1, 8, 0, 6, 4, 0, 1],
                                },
                            ))),
                        },
                    ),
                )
            }),
        ),
        (
            "geneve",
            Box::new(|o, i| {
                outer4(
                    o,
                    udp(
                        GENEVE_PORT,
                        UdpBody::Geneve {
                            opt_words: 0,
                            proto: ethertype::TEB,
                            inner: Inner::Eth(Box::new(inner_eth(i))),
                        },
                    ),
                )
            }),
        ),
        (
            "geneve with options",
            Box::new(|o, i| {
                outer4(
                    o,
                    udp(
                        GENEVE_PORT,
                        UdpBody::Geneve {
                            opt_words: 5,
                            proto: ethertype::TEB,
                            inner: Inner::Eth(Box::new(inner_eth(i))),
                        },
                    ),
                )
            }),
        ),
        (
            "geneve carrying ipv6 directly",
            Box::new(|o, i| {
                outer6(
                    o,
                    udp(
                        GENEVE_PORT,
                        UdpBody::Geneve {
                            opt_words: 2,
                            proto: ethertype::IPV6,
                            inner: Inner::Ip6(Box::new(inner6(i))),
                        },
                    ),
                )
            }),
        ),
        (
            "ipip in gre (tunnel in tunnel)",
            Box::new(|o, i| {
                let mid = v4(o.0, o.1, L4Spec::Ip4(Box::new(inner4(i))));
                outer4(o, gre(0, ethertype::IPV4, Inner::Ip4(Box::new(mid))))
            }),
        ),
        (
            "vxlan in vxlan",
            Box::new(|o, i| {
                let mid = v4(
                    o.0,
                    o.1,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 2,
                            inner: Inner::Eth(Box::new(inner_eth(i))),
                        },
                    ),
                );
                outer4(
                    o,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 1,
                            inner: Inner::Eth(Box::new(eth(&[], L3Spec::V4(Box::new(mid))))),
                        },
                    ),
                )
            }),
        ),
        (
            "non-first fragment of gre",
            Box::new(|o, i| {
                let mut ip = v4(
                    o.0,
                    o.1,
                    gre(0, ethertype::IPV4, Inner::Ip4(Box::new(inner4(i)))),
                );
                ip.frag = 100;
                l2v4(ip)
            }),
        ),
        (
            "vxlan with the inner frame cut",
            Box::new(|o, i| {
                let mut ip = v4(
                    o.0,
                    o.1,
                    udp(
                        VXLAN_PORT,
                        UdpBody::Vxlan {
                            flags: 0x08,
                            vni: 42,
                            inner: Inner::Eth(Box::new(inner_eth(i))),
                        },
                    ),
                );
                ip.cut = Some(8 + 8 + 10);
                l2v4(ip)
            }),
        ),
    ]
}

type Pair = ([u8; 4], [u8; 4]);
type TunnelFn = Box<dyn Fn(Pair, Pair) -> FrameSpec>;

fn outer4(o: Pair, payload: L4Spec) -> FrameSpec {
    l2v4(v4(o.0, o.1, payload))
}

fn outer6(o: Pair, payload: L4Spec) -> FrameSpec {
    l2v6(v6(six(o.0), six(o.1), payload))
}

fn inner4(i: Pair) -> Ip4Spec {
    v4(i.0, i.1, tcp(8080))
}

fn inner6(i: Pair) -> Ip6Spec {
    v6(six(i.0), six(i.1), dns())
}

/// The inner IPv6 packet of issue 13's tunnel shapes: TCP 8080 (no port
/// rule of the example policy lets test reach it in production).
fn inner6_tcp(i: Pair) -> Ip6Spec {
    v6(six(i.0), six(i.1), tcp(8080))
}

fn inner_eth(i: Pair) -> FrameSpec {
    let mut e = eth(&[], L3Spec::V4(Box::new(inner4(i))));
    e.src_mac[5] = 7;
    e
}

fn gre(flags: u16, proto: u16, inner: Inner) -> L4Spec {
    L4Spec::Gre(Box::new(GreSpec {
        flags,
        proto,
        inner,
    }))
}

/// The outer and inner address pairs tunnels are built for.
fn tunnel_combos() -> [(&'static str, Pair, Pair); 4] {
    [
        (
            "outer prod>prod, inner test>prod",
            (PAIRS4[1].1, PAIRS4[1].2),
            (PAIRS4[0].1, PAIRS4[0].2),
        ),
        (
            "outer test>prod, inner prod>prod",
            (PAIRS4[0].1, PAIRS4[0].2),
            (PAIRS4[1].1, PAIRS4[1].2),
        ),
        (
            "outer prod>prod, inner prod>prod",
            (PAIRS4[1].1, PAIRS4[1].2),
            (PAIRS4[1].1, PAIRS4[1].2),
        ),
        (
            "outer world>test, inner staging>prod",
            (PAIRS4[4].1, PAIRS4[4].2),
            (PAIRS4[3].1, PAIRS4[3].2),
        ),
    ]
}

/// `shapes` for every pair of [`PAIRS4`] into `named`, and the test >
/// production frame of each cut at its header boundaries into `cuts`.
fn for_pairs(
    prefix: &str,
    shapes: &[Shape],
    gso_size: u32,
    named: &mut Vec<Named>,
    cuts: &mut Vec<Named>,
) {
    for (shape, build) in shapes {
        for (pair, s, d) in PAIRS4 {
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
        assert_eq!(
            judged("mpls behind an 802.1Q tag test>prod").verdict,
            verdict::DROP
        );
        assert_eq!(
            outcome("mpls without bottom of stack, frame ends test>prod"),
            Outcome::Malformed
        );
        // The IP header's words read as labels: past the bound.
        assert_eq!(
            outcome("mpls without bottom of stack, ip follows test>prod"),
            Outcome::MplsTooDeep
        );
        assert_eq!(
            outcome("mpls pseudowire control word (not ip) test>prod"),
            Outcome::NonIp(NonIpKind::Mpls)
        );
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
        assert_eq!(
            judged("pppoe session ipv4 dns test>prod").verdict,
            verdict::ALLOW
        );
        for name in ["pppoe session lcp (not ip)", "pppoe discovery (not ip)"] {
            let o = outcome(&format!("{name} test>prod"));
            assert_eq!(o, Outcome::NonIp(NonIpKind::Pppoe), "{name}");
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
            assert_eq!(
                outcome(&format!("{name} test>prod")),
                Outcome::Malformed,
                "{name}"
            );
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
        assert_eq!(judged("big tcp ipv4 dns test>prod").verdict, verdict::ALLOW);
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
