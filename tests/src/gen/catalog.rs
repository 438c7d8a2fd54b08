//! A named catalogue of header shapes, each built for a few environment
//! pairs of the example policy: the synthetic part of the pcap corpus
//! (`tests/corpus/shapes-*.pcap`, written by `tests/tests/corpus.rs`), so
//! that every shape the datapath decides on explicitly is replayed on every
//! run, whatever the random generator happens to draw.

use super::{
    ethertype, ipproto, mapped, ExtSpec, FrameSpec, GreSpec, Inner, Ip4Spec, Ip6Spec, L3Spec,
    L4Spec, LenField, UdpBody, GENEVE_PORT, VXLAN_PORT,
};

/// One catalogued frame.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub frame: Vec<u8>,
}

/// Address pairs each shape is built for: (name, src, dst), IPv4.
pub const PAIRS4: [(&str, [u8; 4], [u8; 4]); 5] = [
    ("test>prod", [10, 30, 1, 2], [10, 10, 1, 2]),
    ("prod>prod", [10, 10, 1, 2], [10, 10, 2, 2]),
    ("prod>test", [10, 10, 1, 2], [10, 30, 1, 2]),
    ("staging>prod", [10, 20, 1, 2], [10, 10, 1, 2]),
    ("world>test", [192, 0, 2, 1], [10, 30, 1, 2]),
];

/// The IPv6 form of an IPv4 pair address (fd00:<a.b>:<c>::<d>).
pub fn six(a: [u8; 4]) -> [u8; 16] {
    if a[0] != 10 {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        x[15] = a[3];
        return x;
    }
    let mut x = [0u8; 16];
    x[0] = 0xfd;
    x[3] = a[1];
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
    ExtSpec {
        kind,
        units,
        frag,
        fill: 0,
    }
}

fn l2v4(ip: Ip4Spec) -> FrameSpec {
    eth(&[], L3Spec::V4(Box::new(ip)))
}

fn l2v6(ip: Ip6Spec) -> FrameSpec {
    eth(&[], L3Spec::V6(Box::new(ip)))
}

/// A shape: a name and how to build it from an address pair.
type Shape = (&'static str, Box<dyn Fn([u8; 4], [u8; 4]) -> FrameSpec>);

fn shape(name: &'static str, f: impl Fn([u8; 4], [u8; 4]) -> FrameSpec + 'static) -> Shape {
    (name, Box::new(f))
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

/// The catalogue, by pcap file stem: `shapes-l2`, `shapes-ipv4`,
/// `shapes-ipv6`, `shapes-tunnels`, and `shapes-truncated` (every test >
/// production frame of the others cut at each of its header boundaries).
pub fn catalog() -> Vec<(&'static str, Vec<Named>)> {
    let mut files = Vec::new();
    let mut truncated = Vec::new();
    for (stem, shapes) in [
        ("shapes-l2", l2_shapes()),
        ("shapes-ipv4", v4_shapes()),
        ("shapes-ipv6", v6_shapes()),
    ] {
        let mut named = Vec::new();
        for (shape, build) in &shapes {
            for (pair, s, d) in PAIRS4 {
                let (frame, marks) = build(s, d).build_marked();
                if pair == "test>prod" {
                    cut_at_marks(&mut truncated, &format!("{stem} {shape}"), &frame, &marks);
                }
                named.push(Named {
                    name: format!("{shape} {pair}"),
                    frame,
                });
            }
        }
        files.push((stem, named));
    }
    let mut named = Vec::new();
    let combos = [
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
    ];
    for (shape, build) in tunnel_shapes() {
        for (i, (combo, o, inner)) in combos.iter().enumerate() {
            let (frame, marks) = build(*o, *inner).build_marked();
            if i == 0 {
                cut_at_marks(&mut truncated, &format!("tunnel {shape}"), &frame, &marks);
            }
            named.push(Named {
                name: format!("{shape}: {combo}"),
                frame,
            });
        }
    }
    files.push(("shapes-tunnels", named));
    files.push(("shapes-truncated", truncated));
    files
}

fn cut_at_marks(out: &mut Vec<Named>, name: &str, frame: &[u8], marks: &[usize]) {
    for &m in marks {
        for at in [m.saturating_sub(1), m, m + 2] {
            if at >= super::MIN_FRAME && at < frame.len() {
                out.push(Named {
                    name: format!("{name} cut at {at}"),
                    frame: frame[..at].to_vec(),
                });
            }
        }
    }
}
