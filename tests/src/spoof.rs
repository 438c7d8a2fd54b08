//! Spoofed traffic in the lab: packets a pod sends with a source address it
//! does not own (IP_TRANSPARENT sockets: nothing is configured on the pod,
//! so the address is not one of its peer addresses either), and counters of
//! what arrives at a destination pod, by source (nftables in the pod's
//! namespace: TCP SYNs count too, though their handshake cannot complete).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::Lab;
use crate::netns;

fn transparent_socket(src: IpAddr, kind: Type, proto: Protocol) -> Result<Socket> {
    let domain = if src.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, kind, Some(proto)).context("creating a socket")?;
    if src.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    }
    .context("IP_TRANSPARENT (root needed)")?;
    socket
        .bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .with_context(|| format!("binding to the spoofed source {src}"))?;
    Ok(socket)
}

impl Lab {
    /// Sends `count` UDP datagrams from pod `from` to `to` with source
    /// address `src` (which `from` does not own).
    pub fn spoof_udp(&self, from: &str, src: IpAddr, to: SocketAddr, count: usize) -> Result<()> {
        self.in_ns(from, || -> Result<()> {
            let socket = transparent_socket(src, Type::DGRAM, Protocol::UDP)?;
            let socket: UdpSocket = socket.into();
            for i in 0..count {
                socket
                    .send_to(format!("spoofed {i}").as_bytes(), to)
                    .with_context(|| format!("sending UDP {src} -> {to}"))?;
            }
            Ok(())
        })?
    }

    /// Starts a TCP connection from pod `from` to `to` with source address
    /// `src` and gives up after `wait` (the SYN, and its retransmissions,
    /// are what a test counts: the answer goes to the spoofed address).
    pub fn spoof_syn(&self, from: &str, src: IpAddr, to: SocketAddr, wait: Duration) -> Result<()> {
        self.in_ns(from, || -> Result<()> {
            let socket = transparent_socket(src, Type::STREAM, Protocol::TCP)?;
            // Refused, timed out or (never, here) connected: the SYN left.
            let _ = socket.connect_timeout(&SockAddr::from(to), wait);
            Ok(())
        })?
    }

    /// Counts, in pod `pod`'s namespace, the packets arriving from each of
    /// `sources` (nftables, before anything else of the pod sees them).
    pub fn count_arrivals(&self, pod: &str, sources: &[IpAddr]) -> Result<Arrivals> {
        let ns = self.ns(pod)?.to_owned();
        // A fresh table: counters start at 0.
        let mut script =
            String::from("table inet efspoof\ndelete table inet efspoof\ntable inet efspoof {\n");
        for (i, _) in sources.iter().enumerate() {
            script.push_str(&format!("  counter c{i} {{}}\n"));
        }
        script.push_str(
            "  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n",
        );
        for (i, s) in sources.iter().enumerate() {
            let fam = if s.is_ipv4() { "ip" } else { "ip6" };
            script.push_str(&format!("    {fam} saddr {s} counter name c{i}\n"));
        }
        script.push_str("  }\n}\n");
        nft(&ns, &["-f", "-"], Some(&script))?;
        Ok(Arrivals {
            ns,
            sources: sources.to_vec(),
        })
    }
}

/// nftables counters of arrivals by source in one pod (they go with the
/// pod's namespace).
pub struct Arrivals {
    ns: String,
    sources: Vec<IpAddr>,
}

impl Arrivals {
    /// Packets that arrived from each source so far.
    pub fn read(&self) -> Result<BTreeMap<IpAddr, u64>> {
        let out = nft(&self.ns, &["-j", "list", "table", "inet", "efspoof"], None)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
        let mut counts = BTreeMap::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let Some(c) = item.get("counter") else {
                continue;
            };
            let (Some(name), Some(packets)) = (c["name"].as_str(), c["packets"].as_u64()) else {
                continue;
            };
            let Some(i) = name.strip_prefix('c').and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            if let Some(src) = self.sources.get(i) {
                counts.insert(*src, packets);
            }
        }
        Ok(counts)
    }

    /// Packets that arrived from `src` so far.
    pub fn from(&self, src: IpAddr) -> Result<u64> {
        Ok(self.read()?.get(&src).copied().unwrap_or(0))
    }
}

fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    let out = netns::output_with_stdin(&mut cmd, stdin.map(str::as_bytes), "nft (nftables)")?;
    if !out.status.success() {
        bail!(
            "nft {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An address of `family` inside `net`'s environment that no pod holds:
/// the `.9.9` host of the first /16 (IPv4) or `::9:9` (IPv6) of a CIDR.
pub fn unowned(cidr: &ipnet::IpNet) -> IpAddr {
    match cidr {
        ipnet::IpNet::V4(n) => {
            let o = n.network().octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], 9, 9))
        }
        ipnet::IpNet::V6(n) => {
            let mut s = n.network().segments();
            s[6] = 9;
            s[7] = 9;
            IpAddr::V6(Ipv6Addr::from(s))
        }
    }
}
