//! Real traffic of the shapes that try to walk around the policy, in the
//! namespace lab of the example policy: raw Ethernet frames sent from a
//! pod (AF_PACKET), raw IP packets (SOCK_RAW, the kernel adds the outer
//! header), real sockets over a real VXLAN device, datagrams that the
//! sender's stack fragments, and a sniffer that counts marked frames as
//! they arrive in a pod.
//!
//! Each bypass class is a [`Scenario`]: a set of [`Probe`]s, each sending
//! one shape of one flow and telling whether it arrived. A probe is
//! `forbidden` when the example policy must stop it (test -> production
//! other than DNS, a frame the datapath cannot read, ...). The bypass lab
//! tests run every scenario without the agent (every probe must arrive:
//! the shape is really deliverable, so the test can fail) and with it
//! (exactly the allowed probes arrive); `tests/tests/corpus.rs` captures
//! the same traffic with tcpdump for the pcap corpus.
//!
//! Everything happens inside the lab's namespaces; what a scenario adds
//! (MTUs, VXLAN devices, addresses) goes away with them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::catalog::{eth, v4, v6};
use super::{
    ethertype, ipproto, ExtSpec, GreSpec, L4Spec, LenField, UdpBody, GENEVE_PORT, VXLAN_PORT,
};
use crate::fixture::env_host;
use crate::lab::{Family, Lab, UdpReceiver, NODE, POD_IF};
use crate::netns;

/// How long a probe that must arrive may take.
pub const ARRIVES_WITHIN: Duration = Duration::from_secs(5);
/// How long nothing may arrive for a probe that must not.
pub const QUIET_FOR: Duration = Duration::from_millis(1200);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ns_of(lab: &Lab, who: &str) -> Result<String> {
    Ok(lab.ns(who)?.to_string())
}

/// The MAC address of `ifname` in `who`'s namespace.
pub fn mac_of(lab: &Lab, who: &str, ifname: &str) -> Result<[u8; 6]> {
    let ns = ns_of(lab, who)?;
    let text = netns::ip_output(&["-n", &ns, "-o", "link", "show", "dev", ifname])?;
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC for {ifname} in {ns}: {text}"))?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {mac}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {mac}"))
}

/// `ip -n <ns> -batch` for `who`.
pub fn ip_batch(lab: &Lab, who: &str, lines: &[String]) -> Result<()> {
    netns::ip_batch(&ns_of(lab, who)?, lines)
}

fn last_os_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// An AF_PACKET socket of the calling thread's namespace bound to `ifname`;
/// `proto` is the EtherType to receive (0: send only).
fn packet_socket(ifname: &str, proto: u16) -> Result<OwnedFd> {
    let idx = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("if_nametoindex({ifname})"))?;
    let proto_be = i32::from(proto.to_be());
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto_be) };
    if fd < 0 {
        return Err(last_os_error("socket(AF_PACKET)"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = idx as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!("bind(AF_PACKET, {ifname})")));
    }
    Ok(fd)
}

/// Counts, per marker, the frames arriving at an interface that contain
/// it (frames the namespace itself sends are ignored). Stops when dropped.
pub struct Sniffer {
    counts: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    /// Starts sniffing `ifname` in `who`'s namespace for `markers`.
    pub fn start(lab: &Lab, who: &str, ifname: &str, markers: Vec<Vec<u8>>) -> Result<Sniffer> {
        let ifname = ifname.to_string();
        let fd = lab.in_ns(who, move || -> Result<OwnedFd> {
            let fd = packet_socket(&ifname, libc::ETH_P_ALL as u16)?;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            // SAFETY: a timeval of the right size for SO_RCVTIMEO.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            if rc != 0 {
                return Err(last_os_error("SO_RCVTIMEO"));
            }
            Ok(fd)
        })??;
        let counts: Arc<Mutex<HashMap<Vec<u8>, u64>>> =
            Arc::new(Mutex::new(markers.iter().map(|m| (m.clone(), 0)).collect()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let counts = counts.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: sockaddr_ll is plain data.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: buf and from are valid for the sizes given.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut from as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        )
                    };
                    if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    let frame = &buf[..n as usize];
                    let mut counts = lock(&counts);
                    for (m, c) in counts.iter_mut() {
                        if frame.windows(m.len()).any(|w| w == m.as_slice()) {
                            *c += 1;
                        }
                    }
                }
            })
        };
        Ok(Sniffer {
            counts,
            stop,
            thread: Some(thread),
        })
    }

    /// Frames seen so far carrying `marker`.
    pub fn count(&self, marker: &[u8]) -> u64 {
        lock(&self.counts).get(marker).copied().unwrap_or(0)
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One shape of one flow: how to send it and how to tell it arrived.
pub struct Probe {
    pub name: String,
    /// The example policy (enforce mode) must stop it.
    pub forbidden: bool,
    send: Box<dyn Fn() -> Result<()>>,
    seen: Box<dyn Fn() -> u64>,
}

impl Probe {
    pub fn new(
        name: impl Into<String>,
        forbidden: bool,
        send: impl Fn() -> Result<()> + 'static,
        seen: impl Fn() -> u64 + 'static,
    ) -> Probe {
        Probe {
            name: name.into(),
            forbidden,
            send: Box::new(send),
            seen: Box::new(seen),
        }
    }
}

/// A bypass class: its probes, and what keeps them working (receivers,
/// sniffers) while they run.
pub struct Scenario {
    pub name: &'static str,
    pub probes: Vec<Probe>,
}

/// What one probe did in a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub name: String,
    pub forbidden: bool,
    pub arrived: bool,
}

impl Scenario {
    /// Sends every probe, then waits until every probe arrived or
    /// [`ARRIVES_WITHIN`] passed, and at least [`QUIET_FOR`].
    pub fn run(&self) -> Result<Vec<Arrival>> {
        let before: Vec<u64> = self.probes.iter().map(|p| (p.seen)()).collect();
        for p in &self.probes {
            (p.send)().with_context(|| format!("sending probe {}", p.name))?;
        }
        let start = Instant::now();
        let arrived = |i: usize, p: &Probe| (p.seen)() > before[i];
        loop {
            let all = self.probes.iter().enumerate().all(|(i, p)| arrived(i, p));
            let el = start.elapsed();
            if (all && el >= QUIET_FOR) || el >= ARRIVES_WITHIN {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| Arrival {
                name: p.name.clone(),
                forbidden: p.forbidden,
                arrived: arrived(i, p),
            })
            .collect())
    }
}

/// Formats a phase's arrivals for an assertion message.
pub fn table(arrivals: &[Arrival]) -> String {
    arrivals
        .iter()
        .map(|a| {
            let must = if a.forbidden { "stop" } else { "pass" };
            let did = if a.arrived { "ARRIVED" } else { "stopped" };
            format!("  {:<60} must {must} {did}", a.name)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn v4_of(lab: &Lab, pod: &str) -> Result<[u8; 4]> {
    Ok(lab.pod(pod)?.ipv4().octets())
}

fn v6_of(lab: &Lab, pod: &str) -> Result<[u8; 16]> {
    Ok(lab.pod(pod)?.ipv6().octets())
}

fn udp_l4(sport: u16, dport: u16, data: &[u8]) -> L4Spec {
    L4Spec::Udp {
        sport,
        dport,
        body: UdpBody::Data(data.to_vec()),
        len: LenField::Exact,
    }
}

/// VLAN tags the node must not be walked around with: test1 sends UDP
/// datagrams to prod1 (port 9000: forbidden; port 53: allowed by the DNS
/// port rule) and to staging1 (allowed) as raw frames with 0 to 5 priority
/// tags (VLAN id 0). Linux strips any number of such tags and delivers the
/// packet, so every shape is deliverable. At the node's ingress the first
/// tag is already in the skb's metadata (the receive path moves it there
/// before tc runs), the others are in the frame: 4 tags on the wire are 3
/// in the data, past the parser's two, and are dropped as `vlan_too_deep`
/// (enforce mode), allowed flows included.
pub fn vlan_scenario(lab: &Lab) -> Result<Scenario> {
    use ethertype::{QINQ, VLAN};
    let node_mac = mac_of(lab, NODE, &lab.pod("test1")?.node_if())?;
    let test_mac = mac_of(lab, "test1", POD_IF)?;
    let test1 = v4_of(lab, "test1")?;
    let prod1 = v4_of(lab, "prod1")?;
    let staging1 = v4_of(lab, "staging1")?;
    let (prod1_ip, staging1_ip) = (IpAddr::from(prod1), IpAddr::from(staging1));
    let rx_forbidden = Arc::new(lab.udp_receiver("prod1", prod1_ip, 9000)?);
    let rx_dns = Arc::new(lab.udp_receiver("prod1", prod1_ip, 53)?);
    let rx_staging = Arc::new(lab.udp_receiver("staging1", staging1_ip, 9000)?);
    let ns = ns_of(lab, "test1")?;
    let mut probes = Vec::new();
    let tag_sets: [(&str, Vec<u16>); 7] = [
        ("no tag", vec![]),
        ("1 tag (802.1Q)", vec![VLAN]),
        ("1 tag (802.1ad)", vec![QINQ]),
        ("2 tags (802.1ad, 802.1Q)", vec![QINQ, VLAN]),
        ("3 tags", vec![QINQ, VLAN, VLAN]),
        ("4 tags", vec![QINQ, VLAN, VLAN, VLAN]),
        ("5 tags", vec![VLAN; 5]),
    ];
    for (i, (tags_name, tpids)) in tag_sets.iter().enumerate() {
        let too_deep = tpids.len() >= 4;
        for (to, dst, dport, rx, forbidden) in [
            ("prod1", prod1, 9000u16, &rx_forbidden, true),
            ("prod1", prod1, 53, &rx_dns, too_deep),
            ("staging1", staging1, 9000, &rx_staging, too_deep),
        ] {
            let sport = 41000 + i as u16;
            let ip = v4(
                test1,
                dst,
                udp_l4(sport, dport, format!("vlan {tags_name}").as_bytes()),
            );
            let mut f = eth(&[], ip);
            f.dst_mac = node_mac;
            f.src_mac = test_mac;
            f.vlans = tpids.iter().map(|t| (*t, 0u16)).collect();
            let frame = f.build();
            let key = SocketAddr::new(IpAddr::from(test1), sport);
            let (lab_ns, rx) = (ns.clone(), Arc::clone(rx));
            probes.push(Probe::new(
                format!("test1 -> {to} udp/{dport}, {tags_name}"),
                forbidden,
                move || send_frames_ns(&lab_ns, POD_IF, std::slice::from_ref(&frame)),
                move || rx.count_from_addr(key),
            ));
        }
    }
    Ok(Scenario {
        name: "vlan tags",
        probes,
    })
}

/// Sends raw Ethernet `frames` out of `ifname` in namespace `ns`.
pub fn send_frames_ns(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let ifname = ifname.to_string();
    let frames = frames.to_vec();
    netns::in_netns(ns, move || -> Result<()> {
        let fd = packet_socket(&ifname, 0)?;
        for f in &frames {
            // SAFETY: f is a valid buffer of f.len() bytes.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if n < 0 || n as usize != f.len() {
                return Err(last_os_error(&format!("send on {ifname}")));
            }
        }
        Ok(())
    })?
}

fn send_udp_ns(ns: &str, bind: SocketAddr, dst: SocketAddr, size: usize) -> Result<()> {
    netns::in_netns(ns, move || -> Result<()> {
        let s = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
        s.send_to(&vec![0x5a; size], dst)
            .with_context(|| format!("sending {size} bytes {bind} -> {dst}"))?;
        Ok(())
    })?
}

/// The MTU every fragment scenario link gets (IPv6's minimum).
pub const SMALL_MTU: u32 = 1280;

/// Fragments: test1, prod1 and prod2 get a 1280-byte MTU on both ends of
/// their links, so a 3000-byte datagram leaves the sender as three
/// fragments and reaches the node as such. test1 -> prod1 DNS (udp/53,
/// allowed by a port rule) arrives when small; large, its non-first
/// fragments carry no ports, get the pair's strictest verdict (drop), and
/// the datagram is never reassembled. test1 -> prod1 udp/9000 never
/// arrives; a large prod1 -> prod2 datagram (allowed) does. IPv4 and IPv6.
pub fn fragment_scenario(lab: &Lab) -> Result<Scenario> {
    let mtu = SMALL_MTU.to_string();
    let mut node_cmds = Vec::new();
    for pod in ["test1", "prod1", "prod2"] {
        ip_batch(lab, pod, &[format!("link set {POD_IF} mtu {mtu}")])?;
        node_cmds.push(format!("link set {} mtu {mtu}", lab.pod(pod)?.node_if()));
    }
    ip_batch(lab, NODE, &node_cmds)?;
    let mut probes = Vec::new();
    let mut receivers: Vec<Arc<UdpReceiver>> = Vec::new();
    for (fam, family, base) in [("ipv4", Family::V4, 42000), ("ipv6", Family::V6, 42100)] {
        let ip = |pod: &str| -> Result<IpAddr> { Ok(lab.pod(pod)?.ip(family)) };
        let (prod1, prod2) = (ip("prod1")?, ip("prod2")?);
        let rx_dns = Arc::new(lab.udp_receiver("prod1", prod1, 53)?);
        let rx_9000 = Arc::new(lab.udp_receiver("prod1", prod1, 9000)?);
        let rx_prod2 = Arc::new(lab.udp_receiver("prod2", prod2, 9000)?);
        receivers.extend([rx_dns.clone(), rx_9000.clone(), rx_prod2.clone()]);
        for (i, (from, to, port, rx, size, forbidden)) in [
            ("test1", "prod1", 53, &rx_dns, 100, false),
            ("test1", "prod1", 53, &rx_dns, 3000, true),
            ("test1", "prod1", 9000, &rx_9000, 3000, true),
            ("prod1", "prod2", 9000, &rx_prod2, 3000, false),
        ]
        .into_iter()
        .enumerate()
        {
            let shape = if size > SMALL_MTU as usize {
                "fragments"
            } else {
                "one packet"
            };
            let bind = SocketAddr::new(ip(from)?, base + i as u16);
            let dst = SocketAddr::new(ip(to)?, port);
            let (ns, rx) = (ns_of(lab, from)?, Arc::clone(rx));
            probes.push(Probe::new(
                format!("{from} -> {to} udp/{port}, {size} B ({shape}) {fam}"),
                forbidden,
                move || send_udp_ns(&ns, bind, dst, size),
                move || rx.count_from_addr(bind),
            ));
        }
    }
    Ok(Scenario {
        name: "fragments",
        probes,
    })
}

/// The VXLAN scenarios' inner addresses, hosts of the example policy's
/// environments that no pod holds: prod1's VXLAN device holds a test
/// address and a production one, prod2's a production one.
#[derive(Clone, Copy, Debug)]
pub struct VxlanAddrs {
    pub test4: Ipv4Addr,
    pub prod4: Ipv4Addr,
    pub peer4: Ipv4Addr,
    pub test6: Ipv6Addr,
    pub prod6: Ipv6Addr,
    pub peer6: Ipv6Addr,
}

impl VxlanAddrs {
    /// test x.x.99.1, production x.x.98.1 and x.x.99.2 (IPv6: the same in
    /// the third group).
    pub fn example() -> Result<VxlanAddrs> {
        let v4 = |env: &str, off: u128| -> Result<Ipv4Addr> {
            match env_host(env, Family::V4, off) {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(a) => bail!("{a} is not IPv4"),
            }
        };
        let v6 = |env: &str, off: u128| -> Result<Ipv6Addr> {
            match env_host(env, Family::V6, (off >> 8) << 80 | (off & 0xff)) {
                IpAddr::V6(a) => Ok(a),
                IpAddr::V4(a) => bail!("{a} is not IPv6"),
            }
        };
        Ok(VxlanAddrs {
            test4: v4("test", 0x6301)?,
            prod4: v4("production", 0x6201)?,
            peer4: v4("production", 0x6302)?,
            test6: v6("test", 0x9901)?,
            prod6: v6("production", 0x9801)?,
            peer6: v6("production", 0x9902)?,
        })
    }
}

/// A real VXLAN tunnel (UDP 4789, VNI 42) between prod1 and prod2: the
/// outer packets are production -> production (allowed), the inner ones
/// test -> production (forbidden) or production -> production (allowed),
/// over IPv4 and IPv6 inside. Neighbours are static, so nothing but the
/// datapath decides.
pub fn vxlan_scenario(lab: &Lab) -> Result<Scenario> {
    vxlan_scenario_on(lab, "vx0", VXLAN_PORT)
}

/// [`vxlan_scenario`] with the device `dev` on UDP port `port` (8472: the
/// Linux and flannel default).
pub fn vxlan_scenario_on(lab: &Lab, dev: &str, port: u16) -> Result<Scenario> {
    let a = VxlanAddrs::example()?;
    let p1 = lab.pod("prod1")?.ipv4();
    let p2 = lab.pod("prod2")?.ipv4();
    let (mac1, mac2) = ("02:00:00:00:99:01", "02:00:00:00:99:02");
    let link = |local: Ipv4Addr, remote: Ipv4Addr, mac: &str| {
        format!("link add {dev} address {mac} type vxlan id 42 local {local} remote {remote} dstport {port} dev {POD_IF}")
    };
    let route = |a: &dyn std::fmt::Display, len: u8| format!("route add {a}/{len} dev {dev}");
    let neigh = |a: &dyn std::fmt::Display, mac: &str| {
        format!("neigh add {a} lladdr {mac} dev {dev} nud permanent")
    };
    let up = format!("link set {dev} mtu 1400 up");
    let mut prod1 = vec![link(p1, p2, mac1), up.clone()];
    prod1.extend([a.test4, a.prod4].map(|x| format!("addr add {x}/32 dev {dev}")));
    prod1.extend([a.test6, a.prod6].map(|x| format!("addr add {x}/128 dev {dev} nodad")));
    prod1.extend([route(&a.peer4, 32), route(&a.peer6, 128)]);
    prod1.extend([neigh(&a.peer4, mac2), neigh(&a.peer6, mac2)]);
    ip_batch(lab, "prod1", &prod1)?;
    let mut prod2 = vec![link(p2, p1, mac2), up];
    prod2.push(format!("addr add {}/32 dev {dev}", a.peer4));
    prod2.push(format!("addr add {}/128 dev {dev} nodad", a.peer6));
    prod2.extend([route(&a.test4, 32), route(&a.prod4, 32)]);
    prod2.extend([route(&a.test6, 128), route(&a.prod6, 128)]);
    prod2.extend([neigh(&a.test4, mac1), neigh(&a.prod4, mac1)]);
    prod2.extend([neigh(&a.test6, mac1), neigh(&a.prod6, mac1)]);
    ip_batch(lab, "prod2", &prod2)?;
    let rx4 = Arc::new(lab.udp_receiver("prod2", a.peer4.into(), 9000)?);
    let rx6 = Arc::new(lab.udp_receiver("prod2", a.peer6.into(), 9000)?);
    let ns = ns_of(lab, "prod1")?;
    let mut probes = Vec::new();
    let (peer4, peer6) = (IpAddr::from(a.peer4), IpAddr::from(a.peer6));
    for (i, (env, src, dst, rx, forbidden)) in [
        ("test", IpAddr::from(a.test4), peer4, &rx4, true),
        ("production", a.prod4.into(), peer4, &rx4, false),
        ("test", a.test6.into(), peer6, &rx6, true),
        ("production", a.prod6.into(), peer6, &rx6, false),
    ]
    .into_iter()
    .enumerate()
    {
        let fam = if src.is_ipv4() { "ipv4" } else { "ipv6" };
        let bind = SocketAddr::new(src, 43000 + i as u16);
        let dst = SocketAddr::new(dst, 9000);
        let (ns, rx) = (ns.clone(), Arc::clone(rx));
        probes.push(Probe::new(
            format!("vxlan/{port} prod1 -> prod2, inner {env} -> production ({fam})"),
            forbidden,
            move || send_udp_ns(&ns, bind, dst, 200),
            move || rx.count_from_addr(bind),
        ));
    }
    Ok(Scenario {
        name: if port == VXLAN_PORT {
            "vxlan tunnel"
        } else {
            "vxlan tunnel (another port)"
        },
        probes,
    })
}

/// Tunnels this kernel has no devices for (IPIP, IPv6-in-IPv4,
/// IPv4/IPv6-in-IPv6, GRE with and without key, GRE carrying Ethernet,
/// Geneve, and a GRE packet carrying IPIP), sent from prod1 to prod2 through
/// raw and UDP sockets (the outer header is the kernel's: production ->
/// production, allowed) and counted as they arrive on prod2's interface.
/// The inner packet is test1 -> prod1 (forbidden) or prod1 -> prod2
/// (allowed); a tunnel inside a tunnel is dropped whatever it carries.
pub fn crafted_tunnel_scenario(lab: &Lab) -> Result<Scenario> {
    let (t4, p4, q4) = (
        v4_of(lab, "test1")?,
        v4_of(lab, "prod1")?,
        v4_of(lab, "prod2")?,
    );
    let (t6, p6, q6) = (
        v6_of(lab, "test1")?,
        v6_of(lab, "prod1")?,
        v6_of(lab, "prod2")?,
    );
    let (prod2_v4, prod2_v6) = (IpAddr::from(q4), IpAddr::from(q6));
    let ns = ns_of(lab, "prod1")?;
    let mut list: Vec<(String, IpAddr, Vec<u8>, u8, bool)> = Vec::new(); // (name, outer dst, payload, proto, forbidden)
    let mut markers = Vec::new();
    let mut n = 0u32;
    let mut mark = |what: &str| {
        n += 1;
        let m = format!("EFMARK{n:03}:{what}").into_bytes();
        markers.push(m.clone());
        m
    };
    let inner4 = |src: [u8; 4], dst: [u8; 4], m: &[u8]| v4(src, dst, udp_l4(44000, 9000, m));
    let inner6 = |src: [u8; 16], dst: [u8; 16], m: &[u8]| {
        let mut p = v6(src, dst, udp_l4(44000, 9000, m)).packet();
        p.fix_udp6_checksum(0, 40);
        p.into_bytes()
    };
    for (inner_name, forbidden, (s4, d4), (s6, d6)) in [
        ("inner test -> production", true, (t4, p4), (t6, p6)),
        ("inner production -> production", false, (p4, q4), (p6, q6)),
    ] {
        // IP in IP: the protocol says which inner packet (IPIP: IPv4).
        for (what, name, outer, proto) in [
            ("ipip", "ipip", prod2_v4, ipproto::IPIP),
            ("6in4", "ipv6 in ipv4", prod2_v4, ipproto::IPV6),
            ("6in6", "ipv6 in ipv6", prod2_v6, ipproto::IPV6),
            ("4in6", "ipv4 in ipv6", prod2_v6, ipproto::IPIP),
        ] {
            let m = mark(&format!("{what} {inner_name}"));
            let payload = if proto == ipproto::IPV6 {
                inner6(s6, d6, &m)
            } else {
                inner4(s4, d4, &m).packet().into_bytes()
            };
            let name = format!("{name}, {inner_name}");
            list.push((name, outer, payload, proto, forbidden));
        }
        for (gname, flags, outer) in [
            ("gre", 0u16, prod2_v4),
            ("gre with key and sequence", 0x3000, prod2_v4),
            ("gre over ipv6", 0x2000, prod2_v6),
        ] {
            let m = mark(&format!("{gname} {inner_name}"));
            let inner = inner4(s4, d4, &m).into();
            let g = GreSpec {
                flags,
                proto: ethertype::IPV4,
                inner,
            };
            let name = format!("{gname}, {inner_name}");
            let payload = g.packet().into_bytes();
            list.push((name, outer, payload, ipproto::GRE, forbidden));
        }
        let m = mark(&format!("gre-teb {inner_name}"));
        let g = GreSpec {
            flags: 0,
            proto: ethertype::TEB,
            inner: eth(&[], inner4(s4, d4, &m)).into(),
        };
        let name = format!("gre carrying ethernet, {inner_name}");
        let payload = g.packet().into_bytes();
        list.push((name, prod2_v4, payload, ipproto::GRE, forbidden));
        // Geneve and VXLAN ride on UDP: sent with IPPROTO_UDP raw sockets
        // would need checksums; a UDP socket does it (see below).
        let m = mark(&format!("geneve {inner_name}"));
        let geneve = UdpBody::Geneve {
            opt_words: 2,
            proto: ethertype::TEB,
            inner: eth(&[], inner4(s4, d4, &m)).into(),
        };
        let name = format!("geneve, {inner_name}");
        list.push((name, prod2_v4, geneve.packet().into_bytes(), 0, forbidden));
        let m = mark(&format!("vxlan-crafted {inner_name}"));
        let vx = UdpBody::Vxlan {
            flags: 0x08,
            vni: 7,
            inner: eth(&[], v6(s6, d6, udp_l4(44000, 9000, &m))).into(),
        };
        let name = format!("vxlan (crafted) over ipv6, {inner_name}");
        list.push((name, prod2_v6, vx.packet().into_bytes(), 1, forbidden));
    }
    // A tunnel in a tunnel: GRE carrying IPIP, every address production.
    let m = mark("gre-ipip nested");
    let g = GreSpec {
        flags: 0,
        proto: ethertype::IPV4,
        inner: v4(p4, q4, inner4(p4, q4, &m).into()).into(),
    };
    let name = "gre carrying ipip, all production (tunnel too deep)".to_owned();
    let payload = g.packet().into_bytes();
    list.push((name, prod2_v4, payload, ipproto::GRE, true));
    let sniffer = Arc::new(Sniffer::start(lab, "prod2", POD_IF, markers)?);
    let mut probes = Vec::new();
    for (i, (name, dst, payload, proto, forbidden)) in list.into_iter().enumerate() {
        let marker = payload_marker(&payload).context("probe without a marker")?;
        let ns = ns.clone();
        let sniffer = sniffer.clone();
        let send: Box<dyn Fn() -> Result<()>> = match proto {
            // UDP tunnels: 0 = Geneve, 1 = VXLAN, from a UDP socket.
            0 | 1 => {
                let port = if proto == 0 { GENEVE_PORT } else { VXLAN_PORT };
                let src = if dst.is_ipv4() {
                    IpAddr::from(p4)
                } else {
                    IpAddr::from(p6)
                };
                let bind = SocketAddr::new(src, 45000 + i as u16);
                let to = SocketAddr::new(dst, port);
                Box::new(move || {
                    netns::in_netns(&ns, {
                        let payload = payload.clone();
                        move || -> Result<()> {
                            let s = UdpSocket::bind(bind)?;
                            s.send_to(&payload, to)?;
                            Ok(())
                        }
                    })?
                })
            }
            _ => Box::new(move || send_ip_ns(&ns, dst, proto, &payload)),
        };
        probes.push(Probe {
            name: format!("prod1 -> prod2 {name}"),
            forbidden,
            send,
            seen: Box::new(move || sniffer.count(&marker)),
        });
    }
    Ok(Scenario {
        name: "crafted tunnels",
        probes,
    })
}

/// The marker (`EFMARK...` up to the end) inside a probe's payload.
fn payload_marker(payload: &[u8]) -> Option<Vec<u8>> {
    let start = payload.windows(6).position(|w| w == b"EFMARK")?;
    Some(payload[start..].to_vec())
}

fn send_ip_ns(ns: &str, dst: IpAddr, proto: u8, payload: &[u8]) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let payload = payload.to_vec();
    netns::in_netns(ns, move || -> Result<()> {
        let domain = Domain::for_address(SocketAddr::new(dst, 0));
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(proto))))
            .context("raw socket")?;
        s.send_to(&payload, &SocketAddr::new(dst, 0).into())
            .with_context(|| format!("sending protocol {proto} to {dst}"))?;
        Ok(())
    })?
}

/// IPv6 extension headers: test1 sends UDP to prod1 as raw frames with 0
/// to 7 extension headers (hop-by-hop, then destination options), which
/// Linux accepts. DNS (allowed by the port rule) arrives while the parser
/// can walk the chain (up to six headers); past that the ports are unknown,
/// the pair's strictest verdict applies and it is dropped. udp/9000 never
/// arrives.
pub fn ipv6_ext_scenario(lab: &Lab) -> Result<Scenario> {
    let node_mac = mac_of(lab, NODE, &lab.pod("test1")?.node_if())?;
    let test_mac = mac_of(lab, "test1", POD_IF)?;
    let (t6, p6) = (v6_of(lab, "test1")?, v6_of(lab, "prod1")?);
    let prod1 = IpAddr::from(p6);
    // The node must know prod1's and test1's MACs: one ping each way.
    lab.ping("test1", prod1, ARRIVES_WITHIN)?;
    let rx_dns = Arc::new(lab.udp_receiver("prod1", prod1, 53)?);
    let rx_9000 = Arc::new(lab.udp_receiver("prod1", prod1, 9000)?);
    let ns = ns_of(lab, "test1")?;
    let mut probes = Vec::new();
    for (i, n_ext) in [0usize, 1, 2, 6, 7].into_iter().enumerate() {
        let too_deep = n_ext > envfence_ebpf::parse_limits::MAX_IPV6_EXT;
        for (dport, rx, forbidden) in [
            (53u16, rx_dns.clone(), too_deep),
            (9000, rx_9000.clone(), true),
        ] {
            let sport = 46000 + i as u16;
            let data = format!("ext {n_ext}").into_bytes();
            let mut ip = v6(t6, p6, udp_l4(sport, dport, &data));
            ip.ext = (0..n_ext)
                .map(|k| {
                    let kind = if k == 0 {
                        ipproto::HOPOPTS
                    } else {
                        ipproto::DSTOPTS
                    };
                    ExtSpec::new(kind, 0, 0, 0)
                })
                .collect();
            let mut packet = ip.packet();
            let udp_at = packet.len() - (8 + data.len());
            packet.fix_udp6_checksum(0, udp_at);
            let frame = packet
                .eth_macs(node_mac, test_mac, &[], ethertype::IPV6)
                .into_bytes();
            let key = SocketAddr::new(IpAddr::from(t6), sport);
            let ns = ns.clone();
            probes.push(Probe::new(
                format!("test1 -> prod1 udp/{dport} with {n_ext} extension headers"),
                forbidden,
                move || send_frames_ns(&ns, POD_IF, std::slice::from_ref(&frame)),
                move || rx.count_from_addr(key),
            ));
        }
    }
    Ok(Scenario {
        name: "ipv6 extension headers",
        probes,
    })
}

/// Checks a phase: without the agent every probe arrives; with it exactly
/// the allowed ones do.
pub fn check_phase(scenario: &Scenario, arrivals: &[Arrival], agent: bool) -> Result<()> {
    let wrong: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| a.arrived != (!agent || !a.forbidden))
        .collect();
    if !wrong.is_empty() {
        bail!(
            "{} ({}): {} probe(s) not as expected:\n{}",
            scenario.name,
            if agent {
                "with the agent"
            } else {
                "without the agent"
            },
            wrong.len(),
            table(arrivals)
        );
    }
    Ok(())
}
