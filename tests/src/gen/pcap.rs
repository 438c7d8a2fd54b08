//! Capture files for the tests: read whole with the product's streaming
//! reader (`envfence::capture`, the one `explain --pcap` uses: classic pcap
//! and pcapng, timestamps without overflow, the link type apart from the
//! FCS bits, positioned errors), and written with the `pcap-parser`
//! crate's serializers (only tests write captures).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use envfence::capture::reader::{FCS_PRESENT, MAGIC_NS, MAGIC_US};
use envfence::capture::{CaptureError, CaptureReader};
use pcap_parser::pcapng::{
    EnhancedPacketBlock, InterfaceDescriptionBlock, SectionHeaderBlock, BOM_MAGIC, SHB_MAGIC,
};
use pcap_parser::{LegacyPcapBlock, Linktype, OptionCode, PcapHeader, PcapNGOption, ToVec};

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
const NANOS_PER_SEC: u64 = 1_000_000_000;

pub use envfence::capture::Format;

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Seconds since 1970 and the sub-second nanoseconds (< 10^9).
    pub ts_sec: u64,
    pub ts_nsec: u32,
    /// Length on the wire (may exceed `data.len()` when the capture was
    /// cut by the snap length).
    pub orig_len: u32,
    /// The link type of the packet's interface (low 16 bits).
    pub linktype: u32,
    pub data: Vec<u8>,
    /// pcapng's `opt_comment` (the first one).
    pub comment: Option<String>,
}

impl Packet {
    /// An Ethernet packet captured at `ts_sec` + `ts_nsec`.
    pub fn ethernet(ts_sec: u64, ts_nsec: u32, data: Vec<u8>) -> Packet {
        Packet {
            ts_sec,
            ts_nsec,
            orig_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            linktype: LINKTYPE_ETHERNET,
            data,
            comment: None,
        }
    }
}

/// A capture file's format, link type and packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub format: Format,
    /// The link type (low 16 bits of the field; pcapng: the first
    /// interface's).
    pub linktype: u32,
    /// The FCS length in bytes the pcap header's link-type field announces
    /// (bits 28-31, in 16-bit words, when bit 26 is set); pcapng: None
    /// (not read, not written).
    pub fcs_len: Option<u8>,
    pub packets: Vec<Packet>,
}

/// What can go wrong with a capture file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<PcapError>,
    },
    /// What the reader said.
    #[error(transparent)]
    Read(#[from] CaptureError),
    #[error("cannot write the capture: {0}")]
    Write(String),
}

type Result<T> = std::result::Result<T, PcapError>;

/// Reads a pcap or pcapng file.
pub fn read(path: &Path) -> Result<Capture> {
    let file = std::fs::File::open(path).map_err(|source| PcapError::Io {
        path: path.to_owned(),
        source,
    })?;
    collect(std::io::BufReader::new(file)).map_err(|e| PcapError::File {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Parses the bytes of a pcap or pcapng file.
pub fn parse(bytes: &[u8]) -> Result<Capture> {
    collect(bytes)
}

/// Every packet of a capture.
fn collect(r: impl std::io::Read) -> Result<Capture> {
    let mut reader = CaptureReader::new(r)?;
    let mut packets = Vec::new();
    while let Some(p) = reader.next_packet()? {
        packets.push(Packet {
            ts_sec: p.ts_sec,
            ts_nsec: p.ts_nsec,
            orig_len: p.orig_len,
            linktype: p.linktype,
            data: p.data,
            comment: p.comment,
        });
    }
    Ok(Capture {
        format: reader.format(),
        linktype: reader.linktype().unwrap_or(0),
        fcs_len: reader.fcs_len(),
        packets,
    })
}

/// The microsecond, little-endian classic pcap format.
pub const PCAP_US: Format = Format::Pcap {
    nanos: false,
    big_endian: false,
    modified: false,
};

/// A capture of Ethernet frames (each with an optional pcapng comment),
/// one millisecond apart from 2023-11-14T22:13:20Z: the corpus' files.
pub fn ethernet_capture(format: Format, frames: Vec<(Vec<u8>, Option<String>)>) -> Capture {
    let packets = frames
        .into_iter()
        .enumerate()
        .map(|(i, (f, comment))| {
            let ms = i as u64;
            let mut p = Packet::ethernet(
                1_700_000_000 + ms / 1000,
                ((ms % 1000) * 1_000_000) as u32,
                f,
            );
            p.comment = comment;
            p
        })
        .collect();
    Capture {
        format,
        linktype: LINKTYPE_ETHERNET,
        fcs_len: None,
        packets,
    }
}

/// Writes Ethernet `frames` as a little-endian microsecond pcap, one
/// millisecond apart (the corpus' format).
pub fn write_ethernet(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    let frames = frames.iter().map(|f| (f.clone(), None)).collect();
    write(path, &ethernet_capture(PCAP_US, frames))
}

/// Writes `cap` to `path` (see [`encode`]).
pub fn write(path: &Path, cap: &Capture) -> Result<()> {
    let bytes = encode(cap)?;
    std::fs::write(path, bytes).map_err(|source| PcapError::Io {
        path: path.to_owned(),
        source,
    })
}

fn gen_err(e: impl std::fmt::Debug) -> PcapError {
    PcapError::Write(format!("{e:?}"))
}

/// The bytes of `cap` in its format: little-endian pcap (micro- or
/// nanoseconds; every packet must have the capture's link type) or pcapng
/// (one interface per link type, nanosecond timestamps, comments kept).
pub fn encode(cap: &Capture) -> Result<Vec<u8>> {
    let longest = cap.packets.iter().map(|p| p.data.len()).max().unwrap_or(0);
    let snaplen = u32::try_from(longest.max(65535))
        .map_err(|_| PcapError::Write(format!("a packet of {longest} bytes")))?;
    let len_of = |p: &Packet| -> Result<(u32, u32)> {
        let caplen = u32::try_from(p.data.len())
            .map_err(|_| PcapError::Write(format!("a packet of {} bytes", p.data.len())))?;
        if p.ts_nsec >= NANOS_PER_SEC as u32 {
            return Err(PcapError::Write(format!("ts_nsec {}", p.ts_nsec)));
        }
        Ok((caplen, p.orig_len.max(caplen)))
    };
    match cap.format {
        Format::Pcap {
            big_endian: true, ..
        }
        | Format::Pcap { modified: true, .. } => Err(PcapError::Write(
            "only little-endian, unmodified pcap is written".into(),
        )),
        Format::Pcap { nanos, .. } => {
            let mut field = cap.linktype & 0xffff;
            if let Some(fcs) = cap.fcs_len {
                field |= FCS_PRESENT | (u32::from(fcs / 2) & 0xf) << 28;
            }
            let header = PcapHeader {
                magic_number: if nanos { MAGIC_NS } else { MAGIC_US },
                version_major: 2,
                version_minor: 4,
                thiszone: 0,
                sigfigs: 0,
                snaplen,
                network: Linktype(field as i32),
            };
            let mut out = header.to_vec_raw().map_err(gen_err)?;
            for (i, p) in cap.packets.iter().enumerate() {
                if p.linktype != cap.linktype {
                    return Err(PcapError::Write(format!(
                        "packet {} has link type {} in a pcap of link type {}",
                        i + 1,
                        p.linktype,
                        cap.linktype
                    )));
                }
                let (caplen, origlen) = len_of(p)?;
                let ts_sec = u32::try_from(p.ts_sec)
                    .map_err(|_| PcapError::Write(format!("ts_sec {} in a pcap", p.ts_sec)))?;
                let block = LegacyPcapBlock {
                    ts_sec,
                    ts_usec: if nanos { p.ts_nsec } else { p.ts_nsec / 1000 },
                    caplen,
                    origlen,
                    data: &p.data,
                };
                out.extend(block.to_vec_raw().map_err(gen_err)?);
            }
            Ok(out)
        }
        Format::PcapNg => {
            let mut shb = SectionHeaderBlock {
                block_type: SHB_MAGIC,
                block_len1: 0,
                bom: BOM_MAGIC,
                major_version: 1,
                minor_version: 0,
                section_len: -1,
                options: Vec::new(),
                block_len2: 0,
            };
            let mut out = shb.to_vec().map_err(gen_err)?;
            let mut links: Vec<u32> = Vec::new();
            for p in &cap.packets {
                if !links.contains(&p.linktype) {
                    links.push(p.linktype);
                }
            }
            if links.is_empty() {
                links.push(cap.linktype);
            }
            for &link in &links {
                let mut idb = InterfaceDescriptionBlock {
                    block_type: 0,
                    block_len1: 0,
                    linktype: Linktype(link as i32),
                    reserved: 0,
                    snaplen,
                    options: Vec::new(),
                    block_len2: 0,
                    if_tsresol: 9,
                    if_tsoffset: 0,
                };
                out.extend(idb.to_vec().map_err(gen_err)?);
            }
            for p in &cap.packets {
                let (caplen, origlen) = len_of(p)?;
                let ticks =
                    u128::from(p.ts_sec) * u128::from(NANOS_PER_SEC) + u128::from(p.ts_nsec);
                let ticks = u64::try_from(ticks)
                    .map_err(|_| PcapError::Write(format!("ts_sec {}", p.ts_sec)))?;
                let mut options = Vec::new();
                if let Some(c) = &p.comment {
                    let len = u16::try_from(c.len())
                        .map_err(|_| PcapError::Write("a comment over 64 KiB".into()))?;
                    options.push(PcapNGOption {
                        code: OptionCode::Comment,
                        len,
                        value: Cow::Borrowed(c.as_bytes()),
                    });
                }
                let if_id = links.iter().position(|l| *l == p.linktype).unwrap_or(0) as u32;
                let mut epb = EnhancedPacketBlock {
                    block_type: 0,
                    block_len1: 0,
                    if_id,
                    ts_high: (ticks >> 32) as u32,
                    ts_low: ticks as u32,
                    caplen,
                    origlen,
                    data: &p.data,
                    options,
                    block_len2: 0,
                };
                out.extend(epb.to_vec().map_err(gen_err)?);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classic(magic: u32, linktype: u32, records: &[(u32, u32, &[u8])], be: bool) -> Vec<u8> {
        let w = |b: &mut Vec<u8>, v: u32| {
            b.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        let mut b = Vec::new();
        w(&mut b, magic);
        w(&mut b, 0x0004_0002u32.rotate_left(if be { 16 } else { 0 }));
        w(&mut b, 0);
        w(&mut b, 0);
        w(&mut b, 262_144);
        w(&mut b, linktype);
        for (sec, frac, data) in records {
            w(&mut b, *sec);
            w(&mut b, *frac);
            w(&mut b, data.len() as u32);
            w(&mut b, data.len() as u32 + 4);
            b.extend_from_slice(data);
        }
        b
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pcap");
        let frames = vec![vec![1u8; 60], vec![2u8; 14], vec![3u8; 1500]];
        write_ethernet(&path, &frames).unwrap();
        let cap = read(&path).unwrap();
        assert_eq!(cap.linktype, LINKTYPE_ETHERNET);
        assert_eq!(cap.fcs_len, None);
        let got: Vec<Vec<u8>> = cap.packets.iter().map(|p| p.data.clone()).collect();
        assert_eq!(got, frames);
        assert_eq!(
            (cap.packets[2].ts_sec, cap.packets[2].ts_nsec),
            (1_700_000_000, 2_000_000)
        );
        // The exact bytes of the corpus' format.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], &MAGIC_US.to_le_bytes());
        assert_eq!(&bytes[16..24], &[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        assert_eq!(bytes.len(), 24 + 3 * 16 + 60 + 14 + 1500);
    }

    #[test]
    fn big_endian_nanosecond_header() {
        let b = classic(MAGIC_NS, 1, &[(5, 7, &[0xaa, 0xbb])], true);
        let cap = parse(&b).unwrap();
        assert_eq!(
            cap.format,
            Format::Pcap {
                nanos: true,
                big_endian: true,
                modified: false
            }
        );
        assert_eq!(cap.packets.len(), 1);
        assert_eq!((cap.packets[0].ts_sec, cap.packets[0].ts_nsec), (5, 7));
        assert_eq!(cap.packets[0].orig_len, 6);
        assert_eq!(cap.packets[0].data, vec![0xaa, 0xbb]);
    }

    /// Microseconds 999,999 with the largest seconds, and fractions at or
    /// past one second (the old reader's `frac * 1000` overflowed from
    /// 4,294,968 on): exact, carried into the seconds.
    #[test]
    fn timestamps_do_not_overflow() {
        let recs: [(u32, u32, &[u8]); 4] = [
            (u32::MAX, 999_999, &[1]),
            (1_700_000_000, 4_294_968, &[2]),
            (u32::MAX, u32::MAX, &[3]),
            (0, 1_000_000, &[4]),
        ];
        for be in [false, true] {
            let cap = parse(&classic(MAGIC_US, 1, &recs, be)).unwrap();
            let ts: Vec<(u64, u32)> = cap.packets.iter().map(|p| (p.ts_sec, p.ts_nsec)).collect();
            assert_eq!(
                ts,
                vec![
                    (4_294_967_295, 999_999_000),
                    (1_700_000_004, 294_968_000),
                    (4_294_967_295 + 4294, 967_295_000),
                    (1, 0),
                ],
                "big endian {be}"
            );
        }
        // Nanoseconds past a second are carried too.
        let cap = parse(&classic(MAGIC_NS, 1, &[(9, 1_500_000_000, &[1])], false)).unwrap();
        assert_eq!(
            (cap.packets[0].ts_sec, cap.packets[0].ts_nsec),
            (10, 500_000_000)
        );
        // Written back, 999,999 us and a large second survive.
        let mut cap = parse(&classic(MAGIC_US, 1, &recs[..1], false)).unwrap();
        let again = parse(&encode(&cap).unwrap()).unwrap();
        assert_eq!(again.packets, cap.packets);
        cap.format = Format::Pcap {
            nanos: true,
            big_endian: false,
            modified: false,
        };
        let again = parse(&encode(&cap).unwrap()).unwrap();
        assert_eq!(again.packets, cap.packets);
    }

    /// The FCS flag (bit 26) and length (bits 28-31) sit above the link
    /// type: an Ethernet capture with them is still Ethernet.
    #[test]
    fn fcs_bits_leave_the_link_type_alone() {
        for (field, fcs) in [
            (0x0400_0001u32, Some(0)),
            (0x1400_0001, Some(2)),
            (0x2400_0001, Some(4)),
            (0x1000_0001, None),
            (0xf400_0001, Some(30)),
        ] {
            for be in [false, true] {
                let cap = parse(&classic(MAGIC_US, field, &[(1, 2, &[9; 20])], be)).unwrap();
                assert_eq!(cap.linktype, LINKTYPE_ETHERNET, "{field:#x}");
                assert_eq!(cap.packets[0].linktype, LINKTYPE_ETHERNET, "{field:#x}");
                assert_eq!(cap.fcs_len, fcs, "{field:#x}");
            }
        }
        // Written with the FCS length and read back.
        let mut cap = parse(&classic(MAGIC_US, 0x2400_0001, &[(1, 2, &[9; 20])], false)).unwrap();
        let bytes = encode(&cap).unwrap();
        assert_eq!(&bytes[20..24], &0x2400_0001u32.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap(), cap);
        cap.format = Format::PcapNg;
        let ng = parse(&encode(&cap).unwrap()).unwrap();
        assert_eq!(
            (ng.linktype, &ng.packets),
            (LINKTYPE_ETHERNET, &cap.packets)
        );
        // Another link type stays what it is (LINKTYPE_LINUX_SLL2).
        let cap = parse(&classic(MAGIC_US, 276, &[(1, 2, &[9; 20])], false)).unwrap();
        assert_eq!(cap.linktype, 276);
    }

    #[test]
    fn pcapng_round_trip_with_comments() {
        let mut p1 = Packet::ethernet(1_700_000_000, 123_456_789, vec![7u8; 90]);
        p1.comment = Some("gso_size=1448".into());
        let mut p2 = Packet::ethernet(u64::from(u32::MAX) + 10, 999_999_999, vec![8u8; 200_000]);
        p2.orig_len = 250_000;
        let mut p3 = Packet::ethernet(5, 0, vec![1, 2, 3]);
        p3.linktype = 276;
        let cap = Capture {
            format: Format::PcapNg,
            linktype: LINKTYPE_ETHERNET,
            fcs_len: None,
            packets: vec![p1, p2, p3],
        };
        let bytes = encode(&cap).unwrap();
        assert_eq!(&bytes[..4], &SHB_MAGIC.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap(), cap);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pcapng");
        write(&path, &cap).unwrap();
        assert_eq!(read(&path).unwrap(), cap);
    }

    /// Microsecond (the default if_tsresol), 2^-n and offset interfaces, a
    /// simple packet block, a big-endian section after a little-endian one.
    #[test]
    fn pcapng_resolutions_offsets_and_sections() {
        fn block(be: bool, kind: u32, body: &[u8]) -> Vec<u8> {
            let w = |v: u32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let mut body = body.to_vec();
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
            let len = 12 + body.len() as u32;
            let mut b = Vec::new();
            b.extend(w(kind));
            b.extend(w(len));
            b.extend(body);
            b.extend(w(len));
            b
        }
        fn section(be: bool) -> Vec<u8> {
            let mut out = Vec::new();
            let w32 = |v: u32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let w16 = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let mut shb = w32(BOM_MAGIC).to_vec();
            shb.extend(w16(1));
            shb.extend(w16(0));
            shb.extend([0xff; 8]);
            out.extend(block(be, SHB_MAGIC, &shb));
            // Interface 0: Ethernet, no if_tsresol (microseconds).
            let mut idb = w16(1).to_vec();
            idb.extend([0, 0]);
            idb.extend(w32(0));
            out.extend(block(be, 1, &idb));
            // Interface 1: raw IP, 2^-10 s, offset 100 s.
            let mut idb = w16(101).to_vec();
            idb.extend([0, 0]);
            idb.extend(w32(0));
            idb.extend(w16(9));
            idb.extend(w16(1));
            idb.extend([0x80 | 10, 0, 0, 0]);
            idb.extend(w16(14));
            idb.extend(w16(8));
            idb.extend(if be {
                100i64.to_be_bytes()
            } else {
                100i64.to_le_bytes()
            });
            idb.extend([0; 4]);
            out.extend(block(be, 1, &idb));
            let epb = |iface: u32, ticks: u64, data: &[u8]| {
                let mut e = w32(iface).to_vec();
                e.extend(w32((ticks >> 32) as u32));
                e.extend(w32(ticks as u32));
                e.extend(w32(data.len() as u32));
                e.extend(w32(data.len() as u32));
                e.extend(data);
                block(be, 6, &e)
            };
            out.extend(epb(0, 1_700_000_000_999_999, &[1; 14]));
            out.extend(epb(1, 3 * 1024 + 512, &[2; 20]));
            let mut spb = w32(5).to_vec();
            spb.extend([3; 5]);
            out.extend(block(be, 3, &spb));
            out
        }
        let mut bytes = section(false);
        bytes.extend(section(true));
        let cap = parse(&bytes).unwrap();
        assert_eq!(cap.format, Format::PcapNg);
        let got: Vec<(u64, u32, u32, usize)> = cap
            .packets
            .iter()
            .map(|p| (p.ts_sec, p.ts_nsec, p.linktype, p.data.len()))
            .collect();
        let one = [
            (1_700_000_000, 999_999_000, 1, 14),
            (103, 500_000_000, 101, 20),
            (0, 0, 1, 5),
        ];
        assert_eq!(got, [one, one].concat());
    }

    /// A file cut anywhere is an error naming where, never a panic; so are
    /// garbage and an EPB naming an interface that does not exist.
    #[test]
    fn truncated_files_are_clear_errors() {
        let mut ng = Packet::ethernet(1, 2, vec![5u8; 61]);
        ng.comment = Some("x".into());
        let ng = encode(&Capture {
            format: Format::PcapNg,
            linktype: 1,
            fcs_len: None,
            packets: vec![ng.clone(), ng],
        })
        .unwrap();
        let classic = classic(MAGIC_US, 1, &[(1, 2, &[7; 61]), (3, 4, &[8; 10])], false);
        for (name, full) in [("pcap", &classic), ("pcapng", &ng)] {
            assert_eq!(parse(full).unwrap().packets.len(), 2, "{name}");
            for cut in 0..full.len() {
                let Err(e) = parse(&full[..cut]) else {
                    // Cut exactly between two records: a shorter file.
                    let n = parse(&full[..cut]).unwrap().packets.len();
                    assert!(n < 2, "{name} cut at {cut}");
                    continue;
                };
                let text = e.to_string();
                assert!(
                    matches!(e, PcapError::Read(CaptureError::Truncated { .. })),
                    "{name} cut at {cut}: {text}"
                );
                assert!(
                    text.starts_with("truncated capture: the file ends inside "),
                    "{text}"
                );
            }
        }
        let e = parse(&classic[..40]).unwrap_err().to_string();
        assert!(e.contains("packet 1 (record at byte 24)"), "{e}");
        let e = parse(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]).unwrap_err();
        assert!(
            matches!(e, PcapError::Read(CaptureError::NotACapture(0x7856_3412))),
            "{e}"
        );
        let e = parse(&[0x12; 30]).unwrap_err();
        assert!(
            matches!(e, PcapError::Read(CaptureError::NotACapture(_))),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcap");
        std::fs::write(&path, &classic[..50]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("cut.pcap: truncated capture"), "{e}");
        assert!(read(&dir.path().join("none.pcap")).is_err());
    }
}
