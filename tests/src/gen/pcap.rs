//! Classic pcap files (what `tcpdump -w` writes): enough to write the
//! corpus and to read it back, microsecond and nanosecond timestamps, both
//! byte orders.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Seconds and sub-second nanoseconds.
    pub ts_sec: u32,
    pub ts_nsec: u32,
    /// Length on the wire (may exceed `data.len()` when the capture was
    /// cut by the snap length).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// A pcap file's link type and packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub linktype: u32,
    pub packets: Vec<Packet>,
}

/// Writes Ethernet `frames` as a microsecond pcap, one millisecond apart.
pub fn write_ethernet(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC_US.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        let ts = 1_700_000_000u64 * 1_000_000 + i as u64 * 1000;
        out.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        let len = u32::try_from(f.len()).context("frame too long")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Reads a pcap file.
pub fn read(path: &Path) -> Result<Capture> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Parses the bytes of a pcap file.
pub fn parse(bytes: &[u8]) -> Result<Capture> {
    ensure!(bytes.len() >= 24, "shorter than a pcap header");
    let magic_le = u32::from_le_bytes(bytes[0..4].try_into()?);
    let magic_be = u32::from_be_bytes(bytes[0..4].try_into()?);
    let (le, nanos) = match (magic_le, magic_be) {
        (MAGIC_US, _) => (true, false),
        (MAGIC_NS, _) => (true, true),
        (_, MAGIC_US) => (false, false),
        (_, MAGIC_NS) => (false, true),
        _ => bail!("not a pcap file (magic {magic_le:#010x}; pcapng is not read)"),
    };
    let u32_at = |off: usize| -> Result<u32> {
        let b: [u8; 4] = bytes
            .get(off..off + 4)
            .context("truncated pcap")?
            .try_into()?;
        Ok(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = u32_at(20)? & 0x0fff_ffff;
    let mut packets = Vec::new();
    let mut off = 24;
    while off < bytes.len() {
        let ts_sec = u32_at(off)?;
        let frac = u32_at(off + 4)?;
        let incl = u32_at(off + 8)? as usize;
        let orig_len = u32_at(off + 12)?;
        off += 16;
        let data = bytes
            .get(off..off + incl)
            .with_context(|| format!("packet {} truncated", packets.len()))?
            .to_vec();
        off += incl;
        packets.push(Packet {
            ts_sec,
            ts_nsec: if nanos { frac } else { frac * 1000 },
            orig_len,
            data,
        });
    }
    Ok(Capture { linktype, packets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("efpcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pcap");
        let frames = vec![vec![1u8; 60], vec![2u8; 14], vec![3u8; 1500]];
        write_ethernet(&path, &frames).unwrap();
        let cap = read(&path).unwrap();
        assert_eq!(cap.linktype, LINKTYPE_ETHERNET);
        let got: Vec<Vec<u8>> = cap.packets.iter().map(|p| p.data.clone()).collect();
        assert_eq!(got, frames);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn big_endian_nanosecond_header() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_NS.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0, 4]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&262144u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&5u32.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&[0xaa, 0xbb]);
        let cap = parse(&b).unwrap();
        assert_eq!(cap.packets.len(), 1);
        assert_eq!(cap.packets[0].ts_nsec, 7);
        assert_eq!(cap.packets[0].orig_len, 9);
        assert_eq!(cap.packets[0].data, vec![0xaa, 0xbb]);
        assert!(parse(&b[..30]).is_err());
    }
}
