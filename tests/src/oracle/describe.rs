//! A frame in words, for mismatch reports and for tests that look for a
//! shape in a capture: the oracle's own walk ([`super::window::Limits::NONE`]:
//! no bound on VLAN tags, labels, extension headers or the parse window)
//! leaves one line per header it reads, with its offset and the fields
//! decisions depend on; then a hex dump. Offsets past the datapath's
//! parse window (`MAX_OFFSET`) are flagged, and where the walk stops, why.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use envfence::policy::Tunnels;
use envfence_ebpf::parse_limits::MAX_OFFSET;

use super::window::Window;

/// The decoded header stack followed by a hex dump; `gso`: the skb is a
/// GSO packet.
pub fn describe(frame: &[u8], gso: bool) -> String {
    let mut s = stack(frame, gso);
    s.push_str(&hexdump(frame));
    s
}

/// The decoded header stack alone, one header per line.
pub fn stack(frame: &[u8], gso: bool) -> String {
    let notes = RefCell::new(Vec::new());
    let end = super::read(&Window::describing(frame, gso, &notes), &Tunnels::default());
    let mut out = format!("frame: {} bytes\n", frame.len());
    for n in notes.into_inner() {
        let flag = if n.off > MAX_OFFSET {
            "  [past MAX_OFFSET]"
        } else {
            ""
        };
        let indent = n.depth * 2;
        let _ = writeln!(out, "  {:indent$}@{:<4} {}{flag}", "", n.off, n.text);
    }
    if let Err(stop) = end {
        let _ = writeln!(out, "  stops: {stop:?}");
    }
    out
}

/// 16 bytes a line with offsets.
pub fn hexdump(frame: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in frame.chunks(16).enumerate() {
        let _ = write!(s, "  {:04x}:", i * 16);
        for (j, b) in chunk.iter().enumerate() {
            if j == 8 {
                s.push(' ');
            }
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn mac(m: &[u8; 6]) -> String {
    let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

pub(crate) fn proto_name(p: u8) -> &'static str {
    match p {
        0 => "hop-by-hop",
        1 => "icmp",
        4 => "ipip",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        41 => "ipv6",
        43 => "routing",
        44 => "fragment",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "icmpv6",
        59 => "no-next",
        60 => "dest-opts",
        132 => "sctp",
        135 => "mobility",
        139 => "hip",
        140 => "shim6",
        _ => "?",
    }
}

pub(crate) fn ethertype_name(t: u16) -> &'static str {
    match t {
        0x0800 => "ipv4",
        0x86dd => "ipv6",
        0x8100 => "802.1Q",
        0x88a8 => "802.1ad",
        0x9100 => "QinQ(old)",
        0x0806 => "arp",
        0x6558 => "teb",
        0x88cc => "lldp",
        0x8847 | 0x8848 => "mpls",
        0x8863 | 0x8864 => "pppoe",
        0x880b => "ppp",
        t if t < 0x0600 => "802.3 length",
        _ => "?",
    }
}

fn bracket(notes: &[String]) -> String {
    if notes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", notes.join(", "))
    }
}

/// An IPv4 header's line from its fixed 20 bytes; `avail`: the bytes from
/// its start to the frame's end.
pub(crate) fn ipv4(h: &[u8], avail: usize) -> String {
    let ihl = usize::from(h[0] & 0x0f);
    let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let mut notes = Vec::new();
    if h[0] >> 4 != 4 {
        notes.push(format!("VERSION {}", h[0] >> 4));
    }
    if ihl < 5 {
        notes.push("IHL<5".to_string());
    }
    if tot < ihl * 4 {
        notes.push("TOT_LEN<HEADER".to_string());
    }
    if tot > avail {
        notes.push(format!("TOT_LEN>{avail} AVAILABLE"));
    } else if tot < avail {
        notes.push(format!("{} bytes after tot_len", avail - tot));
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let flags: String = [(0x8000, "RES "), (0x4000, "DF "), (0x2000, "MF ")]
        .iter()
        .filter(|(bit, _)| frag & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    let offset = frag & 0x1fff;
    let non_first = if offset != 0 {
        " NON-FIRST FRAGMENT"
    } else {
        ""
    };
    format!(
        "ipv4 {src} > {dst} proto {} ({}) ihl {ihl} ({} B) tot_len {tot} {flags}frag_off {offset}{non_first}{}",
        h[9],
        proto_name(h[9]),
        ihl * 4,
        bracket(&notes)
    )
}

/// An IPv6 header's line from its fixed 40 bytes; `avail`: the bytes
/// after it.
pub(crate) fn ipv6(h: &[u8], avail: usize) -> String {
    let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let addr = |o: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[o..o + 16]);
        let a = Ipv6Addr::from(a);
        match a.to_ipv4_mapped() {
            Some(v4) => format!("{a} (mapped {v4})"),
            None => a.to_string(),
        }
    };
    let mut notes = Vec::new();
    if h[0] >> 4 != 6 {
        notes.push(format!("VERSION {}", h[0] >> 4));
    }
    if plen > avail {
        notes.push(format!("PAYLOAD_LEN>{avail} AVAILABLE"));
    } else if plen < avail {
        notes.push(format!("{} bytes after payload", avail - plen));
    }
    format!(
        "ipv6 {} > {} next {} ({}) payload_len {plen}{}",
        addr(8),
        addr(24),
        h[6],
        proto_name(h[6]),
        bracket(&notes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ethertype, Ipv4, Packet};

    #[test]
    fn decodes_a_vxlan_stack() {
        // eth / ipv4 10.10.1.2 > 10.10.2.2 udp 4789 / vxlan / eth / vlan /
        // ipv4 10.30.1.2 > 10.10.1.2 tcp 80.
        let ip = |src, dst, proto| Ipv4 {
            src,
            dst,
            proto,
            ..Ipv4::default()
        };
        let f = Packet::syn(1, 80)
            .ipv4(&ip([10, 30, 1, 2], [10, 10, 1, 2], 6))
            .eth(&[(ethertype::VLAN, 5)], ethertype::IPV4)
            .vxlan(0x08, 7)
            .udp(12345, 4789)
            .ipv4(&ip([10, 10, 1, 2], [10, 10, 2, 2], 17))
            .ethernet(&[]);
        let s = stack(f.bytes(), false);
        assert!(s.contains("udp 12345 > 4789"), "{s}");
        assert!(s.contains("vxlan flags 0x08 vni 7"), "{s}");
        assert!(s.contains("vlan #1 pcp 0 vid 5"), "{s}");
        assert!(
            s.contains("ipv4 10.30.1.2 > 10.10.1.2 proto 6 (tcp)"),
            "{s}"
        );
        assert!(s.contains("tcp 1 > 80"), "{s}");
        assert!(describe(f.bytes(), false).contains("0000:"));
    }

    #[test]
    fn flags_truncation_and_bad_lengths() {
        let mut f = vec![0u8; 12];
        f.extend([0x86, 0xdd, 0x60, 0, 0]);
        assert!(stack(&f, false).contains("ipv6: TRUNCATED (3 bytes left"));
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x44, 0, 0, 10]);
        f.extend([0u8; 16]);
        let s = stack(&f, false);
        assert!(s.contains("IHL<5") && s.contains("TOT_LEN<HEADER"), "{s}");
        assert!(s.contains("stops: Malformed"), "{s}");
    }

    #[test]
    fn walks_past_the_datapath_bounds() {
        let tags = [(ethertype::VLAN, 1); 4];
        let s = stack(Packet::syn(1, 2).eth(&tags, ethertype::ARP).bytes(), false);
        assert!(
            s.contains("vlan #4") && s.contains("stops: NonIp(Arp)"),
            "{s}"
        );
    }
}
