//! A decoded header stack of a frame, for mismatch reports: one line per
//! header with its offset and the fields the datapath's decisions depend
//! on, then a hex dump.
//!
//! It is written independently of the parser and of the reference
//! classifier (no limit on VLAN tags or extension headers, nothing
//! decided): it says what the bytes are, so that a reader can tell which of
//! the two classifiers is wrong. Offsets past the datapath's parse window
//! (`MAX_OFFSET`) are flagged.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use envfence_ebpf::parse_limits::MAX_OFFSET;

use crate::gen::{GENEVE_PORT, VXLAN_LINUX_PORT, VXLAN_PORT};

const MAX_TAGS: usize = 8;
const MAX_EXT: usize = 16;
const MAX_DEPTH: usize = 4;

/// The decoded header stack followed by a hex dump.
pub fn describe(frame: &[u8]) -> String {
    let mut s = stack(frame);
    s.push_str(&hexdump(frame));
    s
}

/// The decoded header stack alone, one header per line.
pub fn stack(frame: &[u8]) -> String {
    let mut d = Decoder {
        f: frame,
        out: String::new(),
    };
    let _ = writeln!(d.out, "frame: {} bytes", frame.len());
    d.eth(0, 0);
    d.out
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

struct Decoder<'a> {
    f: &'a [u8],
    out: String,
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn proto_name(p: u8) -> &'static str {
    match p {
        0 => "hop-by-hop",
        1 => "icmp",
        4 => "ipip",
        6 => "tcp",
        17 => "udp",
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

fn ethertype_name(t: u16) -> &'static str {
    match t {
        0x0800 => "ipv4",
        0x86dd => "ipv6",
        0x8100 => "802.1Q",
        0x88a8 => "802.1ad",
        0x9100 => "QinQ(old)",
        0x0806 => "arp",
        0x6558 => "teb",
        0x88cc => "lldp",
        0x8847 => "mpls",
        0x880b => "ppp",
        t if t < 0x0600 => "802.3 length",
        _ => "?",
    }
}

impl Decoder<'_> {
    fn line(&mut self, depth: usize, off: usize, text: String) {
        let flag = if off > MAX_OFFSET {
            "  [past MAX_OFFSET]"
        } else {
            ""
        };
        let _ = writeln!(
            self.out,
            "  {:indent$}@{off:<4} {text}{flag}",
            "",
            indent = depth * 2
        );
    }

    fn short(&mut self, depth: usize, off: usize, what: &str, need: usize) {
        let have = self.f.len().saturating_sub(off);
        self.line(
            depth,
            off,
            format!("{what}: TRUNCATED ({have} bytes left, header needs {need})"),
        );
    }

    fn eth(&mut self, off: usize, depth: usize) {
        if self.f.len() < off + 14 {
            self.short(depth, off, "ethernet", 14);
            return;
        }
        let mac = |o: usize| {
            self.f[o..o + 6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut t = be16(self.f, off + 12);
        self.line(
            depth,
            off,
            format!(
                "ethernet {} > {} type {t:#06x} ({})",
                mac(off + 6),
                mac(off),
                ethertype_name(t)
            ),
        );
        let mut l3 = off + 14;
        let mut tags = 0;
        while matches!(t, 0x8100 | 0x88a8 | 0x9100) && tags < MAX_TAGS {
            if self.f.len() < l3 + 4 {
                self.short(depth, l3, "vlan tag", 4);
                return;
            }
            let tci = be16(self.f, l3);
            let next = be16(self.f, l3 + 2);
            tags += 1;
            self.line(
                depth,
                l3,
                format!(
                    "vlan #{tags} pcp {} vid {} type {next:#06x} ({})",
                    tci >> 13,
                    tci & 0x0fff,
                    ethertype_name(next)
                ),
            );
            t = next;
            l3 += 4;
        }
        self.l3(t, l3, depth);
    }

    fn l3(&mut self, t: u16, off: usize, depth: usize) {
        match t {
            0x0800 => self.ipv4(off, depth),
            0x86dd => self.ipv6(off, depth),
            0x6558 => self.eth(off, depth),
            _ => {
                let n = self.f.len().saturating_sub(off);
                self.line(depth, off, format!("payload ({n} bytes, not IP)"));
            }
        }
    }

    fn ipv4(&mut self, off: usize, depth: usize) {
        let f = self.f;
        if f.len() < off + 20 {
            self.short(depth, off, "ipv4", 20);
            return;
        }
        let h = &f[off..off + 20];
        let ihl = usize::from(h[0] & 0x0f);
        let tot = usize::from(be16(h, 2));
        let frag = be16(h, 6);
        let avail = f.len() - off;
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
        let flags = format!(
            "{}{}{}",
            if frag & 0x8000 != 0 { "RES " } else { "" },
            if frag & 0x4000 != 0 { "DF " } else { "" },
            if frag & 0x2000 != 0 { "MF " } else { "" }
        );
        let offset = frag & 0x1fff;
        self.line(
            depth,
            off,
            format!(
                "ipv4 {src} > {dst} proto {} ({}) ihl {ihl} ({} B) tot_len {tot} {flags}frag_off {offset}{}{}",
                h[9],
                proto_name(h[9]),
                ihl * 4,
                if offset != 0 { " NON-FIRST FRAGMENT" } else { "" },
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                }
            ),
        );
        if ihl < 5 || offset != 0 {
            return;
        }
        if ihl > 5 {
            let end = (off + ihl * 4).min(f.len());
            let opts: Vec<String> = f[off + 20..end]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            self.line(depth, off + 20, format!("ipv4 options {}", opts.join("")));
        }
        let l4_end = (off + tot.max(ihl * 4)).min(f.len());
        self.l4(h[9], off + ihl * 4, l4_end, depth);
    }

    fn ipv6(&mut self, off: usize, depth: usize) {
        let f = self.f;
        if f.len() < off + 40 {
            self.short(depth, off, "ipv6", 40);
            return;
        }
        let h = &f[off..off + 40];
        let plen = usize::from(be16(h, 4));
        let avail = f.len() - off - 40;
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
        let mut next = h[6];
        self.line(
            depth,
            off,
            format!(
                "ipv6 {} > {} next {next} ({}) payload_len {plen}{}",
                addr(8),
                addr(24),
                proto_name(next),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                }
            ),
        );
        let end = (off + 40 + plen).min(f.len());
        let mut o = off + 40;
        let mut n = 0;
        while matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140) && n < MAX_EXT {
            n += 1;
            if next == 50 {
                self.line(depth, o, format!("ext #{n} esp (encrypted from here)"));
                return;
            }
            if f.len() < o + 8 {
                self.short(depth, o, &format!("ext #{n} {}", proto_name(next)), 8);
                return;
            }
            let e = &f[o..o + 8];
            let len = match next {
                44 => 8,
                51 => (usize::from(e[1]) + 2) * 4,
                _ => (usize::from(e[1]) + 1) * 8,
            };
            if next == 44 {
                let fo = be16(e, 2);
                self.line(
                    depth,
                    o,
                    format!(
                        "ext #{n} fragment next {} ({}) offset {} M {}{}",
                        e[0],
                        proto_name(e[0]),
                        fo >> 3,
                        fo & 1,
                        if fo >> 3 != 0 {
                            " NON-FIRST FRAGMENT"
                        } else {
                            ""
                        }
                    ),
                );
                if fo >> 3 != 0 {
                    return;
                }
            } else {
                self.line(
                    depth,
                    o,
                    format!(
                        "ext #{n} {} next {} ({}) len {len}",
                        proto_name(next),
                        e[0],
                        proto_name(e[0])
                    ),
                );
            }
            next = e[0];
            o += len;
        }
        self.l4(next, o, end.max(o.min(f.len())), depth);
    }

    /// The L4 header of protocol `p` at `off`; the IP layer ends at `end`.
    fn l4(&mut self, p: u8, off: usize, end: usize, depth: usize) {
        let f = self.f;
        let room = end.saturating_sub(off);
        match p {
            6 | 17 | 132 => {
                let name = proto_name(p);
                if f.len() < off + 4 || room < 4 {
                    self.short(depth, off, name, 4);
                    return;
                }
                let (sport, dport) = (be16(f, off), be16(f, off + 2));
                let extra = if p == 17 && f.len() >= off + 6 {
                    format!(" len {}", be16(f, off + 4))
                } else {
                    String::new()
                };
                self.line(depth, off, format!("{name} {sport} > {dport}{extra}"));
                if p == 17 && depth < MAX_DEPTH {
                    if dport == VXLAN_PORT || dport == VXLAN_LINUX_PORT {
                        self.vxlan(off + 8, depth);
                    } else if dport == GENEVE_PORT {
                        self.geneve(off + 8, depth);
                    }
                }
            }
            1 | 58 => {
                if f.len() < off + 2 || room < 2 {
                    self.short(depth, off, proto_name(p), 2);
                    return;
                }
                self.line(
                    depth,
                    off,
                    format!("{} type {} code {}", proto_name(p), f[off], f[off + 1]),
                );
            }
            4 if depth < MAX_DEPTH => {
                self.line(depth, off, "ipip: inner ipv4".to_string());
                self.ipv4(off, depth + 1);
            }
            41 if depth < MAX_DEPTH => {
                self.line(depth, off, "ipv6-in-ip: inner ipv6".to_string());
                self.ipv6(off, depth + 1);
            }
            47 if depth < MAX_DEPTH => self.gre(off, depth),
            _ => self.line(
                depth,
                off,
                format!("{} ({}) payload, {room} bytes", p, proto_name(p)),
            ),
        }
    }

    fn gre(&mut self, off: usize, depth: usize) {
        let f = self.f;
        if f.len() < off + 4 {
            self.short(depth, off, "gre", 4);
            return;
        }
        let flags = be16(f, off);
        let t = be16(f, off + 2);
        let hlen = 4
            + if flags & 0x8000 != 0 { 4 } else { 0 }
            + if flags & 0x2000 != 0 { 4 } else { 0 }
            + if flags & 0x1000 != 0 { 4 } else { 0 };
        let names: Vec<&str> = [(0x8000, "C"), (0x4000, "R"), (0x2000, "K"), (0x1000, "S")]
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        self.line(
            depth,
            off,
            format!(
                "gre flags [{}] version {} type {t:#06x} ({}) header {hlen} B",
                names.join(""),
                flags & 7,
                ethertype_name(t)
            ),
        );
        if flags & 0x4007 != 0 {
            self.line(
                depth,
                off,
                "gre: routing or version != 0, not decapsulated".into(),
            );
            return;
        }
        self.l3(t, off + hlen, depth + 1);
    }

    fn vxlan(&mut self, off: usize, depth: usize) {
        let f = self.f;
        if f.len() < off + 8 {
            self.short(depth, off, "vxlan", 8);
            return;
        }
        let vni = u32::from_be_bytes([0, f[off + 4], f[off + 5], f[off + 6]]);
        self.line(depth, off, format!("vxlan flags {:#04x} vni {vni}", f[off]));
        self.eth(off + 8, depth + 1);
    }

    fn geneve(&mut self, off: usize, depth: usize) {
        let f = self.f;
        if f.len() < off + 8 {
            self.short(depth, off, "geneve", 8);
            return;
        }
        let opt = usize::from(f[off] & 0x3f) * 4;
        let t = be16(f, off + 2);
        self.line(
            depth,
            off,
            format!(
                "geneve version {} options {opt} B type {t:#06x} ({})",
                f[off] >> 6,
                ethertype_name(t)
            ),
        );
        self.l3(t, off + 8 + opt, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_vxlan_stack() {
        // eth / ipv4 10.10.1.2 > 10.10.2.2 udp 4789 / vxlan / eth / vlan /
        // ipv4 10.30.1.2 > 10.10.1.2 tcp 80.
        let mut inner = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0, 0, 5, 0x08, 0];
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 30, 1, 2, 10, 10, 1, 2,
        ];
        ip.extend([0, 1, 0, 80]);
        ip.extend([0u8; 16]);
        inner.extend(ip);
        let mut udp = vec![0x30, 0x39, 0x12, 0xb5, 0, 0, 0, 0];
        udp.extend([0x08, 0, 0, 0, 0, 0, 7, 0]);
        udp.extend(inner);
        let tot = (20 + udp.len()) as u16;
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0];
        f.extend([
            0x45,
            0,
            (tot >> 8) as u8,
            tot as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend([10, 10, 1, 2, 10, 10, 2, 2]);
        f.extend(udp);
        let s = stack(&f);
        assert!(s.contains("udp 12345 > 4789"), "{s}");
        assert!(s.contains("vxlan flags 0x08 vni 7"), "{s}");
        assert!(s.contains("vlan #1 pcp 0 vid 5"), "{s}");
        assert!(
            s.contains("ipv4 10.30.1.2 > 10.10.1.2 proto 6 (tcp)"),
            "{s}"
        );
        assert!(s.contains("tcp 1 > 80"), "{s}");
        assert!(describe(&f).contains("0000:"));
    }

    #[test]
    fn flags_truncation_and_bad_lengths() {
        let mut f = vec![0u8; 12];
        f.extend([0x86, 0xdd, 0x60, 0, 0]);
        assert!(stack(&f).contains("ipv6: TRUNCATED (3 bytes left"));
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x44, 0, 0, 10]);
        f.extend([0u8; 16]);
        let s = stack(&f);
        assert!(s.contains("IHL<5") && s.contains("TOT_LEN<HEADER"), "{s}");
    }
}
