//! A streaming reader of capture files, on the `pcap-parser` crate's block
//! parsers: classic pcap (what `tcpdump -w` writes: microsecond or
//! nanosecond timestamps, either byte order, the "modified" variant) and
//! pcapng (sections of either byte order, several interfaces, `if_name`,
//! `if_tsresol` / `if_tsoffset`, enhanced and simple packet blocks, packet
//! comments).
//!
//! It holds one record at a time: the length of each record (or block) is
//! read from its header and checked against [`MAX_RECORD`] before its bytes
//! are read, so memory stays bounded by the largest record whatever the
//! file's size, and a record claiming an absurd length is an error, not an
//! allocation. What it adds to the crate's parsers, which hand out the raw
//! fields: timestamps turned into seconds and nanoseconds without overflow
//! (a fraction at or past one second, which some writers produce, is
//! carried into the seconds), the link type taken from the low 16 bits of
//! the pcap header's field (the bits above carry the FCS length, returned
//! apart), and errors naming the packet and the byte offset where a file is
//! cut short or wrong, never a panic.

use std::io::{self, Read};
use std::sync::Arc;

use pcap_parser::nom;
use pcap_parser::pcapng::{parse_block_be, parse_block_le, Block, BOM_MAGIC, SHB_MAGIC};
use pcap_parser::{
    parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified, parse_pcap_header,
    OptionCode, PcapNGOption,
};

/// Bit 26 of a pcap header's link-type field: the FCS length (bits 28-31)
/// is present.
pub const FCS_PRESENT: u32 = 0x0400_0000;
pub const MAGIC_US: u32 = 0xa1b2_c3d4;
pub const MAGIC_NS: u32 = 0xa1b2_3c4d;
pub const MAGIC_MODIFIED: u32 = 0xa1b2_cd34;
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// The largest record (pcap record, pcapng block) read: 16 MiB, far above
/// any packet Linux builds (BIG TCP GSO packets stay under 512 KiB).
pub const MAX_RECORD: usize = 16 << 20;
/// Bytes asked of the file at a time.
const CHUNK: usize = 64 << 10;
const EPB_MAGIC: u32 = 0x0000_0006;
const SPB_MAGIC: u32 = 0x0000_0003;

/// What a capture file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap: nanosecond or microsecond timestamps, byte order, the
    /// "modified" (Kuznetsov) record header.
    Pcap {
        nanos: bool,
        big_endian: bool,
        modified: bool,
    },
    /// pcapng.
    PcapNg,
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Its place in the file: 1 for the first packet.
    pub index: u64,
    /// The byte offset of its record (or block) in the file.
    pub offset: u64,
    /// Seconds since 1970 and the sub-second nanoseconds (< 10^9).
    pub ts_sec: u64,
    pub ts_nsec: u32,
    /// Length on the wire (may exceed `data.len()` when the capture was
    /// cut by the snap length).
    pub orig_len: u32,
    /// The link type of the packet's interface (low 16 bits).
    pub linktype: u32,
    /// pcapng: the name of the packet's interface (`if_name`), when given.
    pub if_name: Option<Arc<str>>,
    pub data: Vec<u8>,
    /// pcapng's `opt_comment` (the first one).
    pub comment: Option<String>,
}

impl Packet {
    /// The `gso_size` of the skb the packet was, when its comment names one
    /// (`gso_size=N` at the comment's start, what envfence's corpus writes
    /// for the GSO packets it replays: `tests/corpus/shapes-gso.pcapng`);
    /// 0 otherwise (no comment, another comment, not a number).
    pub fn gso_size(&self) -> u32 {
        let Some(rest) = self
            .comment
            .as_deref()
            .and_then(|c| c.strip_prefix("gso_size="))
        else {
            return 0;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[..digits].parse().unwrap_or(0)
    }
}

/// What can go wrong reading a capture file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("reading the capture: {0}")]
    Io(#[from] io::Error),
    #[error("not a capture file (magic {0:#010x} is neither pcap nor pcapng)")]
    NotACapture(u32),
    #[error("truncated capture: the file ends inside {what} (at byte {offset}; {missing} more bytes wanted)")]
    Truncated {
        what: String,
        offset: u64,
        missing: u64,
    },
    #[error("invalid capture: {what} at byte {offset}: {why}")]
    Invalid {
        what: String,
        offset: u64,
        why: String,
    },
}

type Result<T> = std::result::Result<T, CaptureError>;

/// The bytes of the file not consumed yet, read on demand into a buffer
/// the size of the largest record (at least [`CHUNK`]).
struct Source<R> {
    inner: R,
    buf: Vec<u8>,
    /// `buf[pos..end]` is read and not consumed.
    pos: usize,
    end: usize,
    /// The file offset of `buf[pos]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> Source<R> {
    fn new(inner: R) -> Self {
        Source {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    fn available(&self) -> usize {
        self.end - self.pos
    }

    /// Reads until `need` bytes are available or the file ends; whether
    /// they are.
    fn ensure(&mut self, need: usize) -> io::Result<bool> {
        while self.available() < need {
            if self.eof {
                return Ok(false);
            }
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            let size = need.max(CHUNK);
            if self.buf.len() < size {
                self.buf.resize(size, 0);
            }
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            self.end += n;
            self.eof |= n == 0;
        }
        Ok(true)
    }

    fn bytes(&self, n: usize) -> &[u8] {
        &self.buf[self.pos..self.pos + n]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// `need` bytes for `what` at the current offset, or why not.
    fn want(&mut self, need: usize, what: impl Fn() -> String) -> Result<()> {
        if self.ensure(need)? {
            return Ok(());
        }
        let have = self.available();
        Err(CaptureError::Truncated {
            what: what(),
            offset: self.offset + have as u64,
            missing: (need - have) as u64,
        })
    }
}

/// What a pcapng section says of one of its interfaces.
struct Interface {
    linktype: u32,
    snaplen: u32,
    /// Timestamp ticks per second.
    per_sec: u64,
    /// Seconds added to every timestamp.
    offset: i64,
    name: Option<Arc<str>>,
}

enum State {
    Pcap {
        linktype: u32,
        per_sec: u64,
        big_endian: bool,
        modified: bool,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<Interface>,
        blocks: u64,
    },
}

/// Reads a pcap or pcapng stream one packet at a time ([`Iterator`]); an
/// error ends the stream.
pub struct CaptureReader<R> {
    src: Source<R>,
    state: State,
    format: Format,
    /// pcap: the header's link type; pcapng: the first interface's.
    linktype: Option<u32>,
    fcs_len: Option<u8>,
    snaplen: u32,
    packets: u64,
    failed: bool,
}

impl CaptureReader<io::BufReader<std::fs::File>> {
    /// Opens the capture file at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let f = std::fs::File::open(path)?;
        Self::new(io::BufReader::with_capacity(0, f))
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header of the capture `inner`.
    pub fn new(inner: R) -> Result<Self> {
        let mut src = Source::new(inner);
        src.want(4, || "the file header (before packet 1)".into())?;
        let m = src.bytes(4);
        let magic = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        if magic == SHB_MAGIC {
            return Ok(Self {
                src,
                state: State::PcapNg {
                    big_endian: false,
                    interfaces: Vec::new(),
                    blocks: 0,
                },
                format: Format::PcapNg,
                linktype: None,
                fcs_len: None,
                snaplen: 0,
                packets: 0,
                failed: false,
            });
        }
        let known = [MAGIC_US, MAGIC_NS, MAGIC_MODIFIED];
        if !known.iter().any(|m| *m == magic || m.swap_bytes() == magic) {
            return Err(CaptureError::NotACapture(magic));
        }
        src.want(24, || "the pcap file header (before packet 1)".into())?;
        let (_, h) =
            parse_pcap_header(src.bytes(24)).map_err(|_| CaptureError::NotACapture(magic))?;
        src.consume(24);
        let field = h.network.0 as u32;
        let linktype = field & 0xffff;
        // The FCS length is written in 16-bit units.
        let fcs_len = (field & FCS_PRESENT != 0).then_some(((field >> 28) as u8) * 2);
        let (nanos, big_endian, modified) = (
            h.is_nanosecond_precision(),
            h.is_bigendian(),
            h.is_modified_format(),
        );
        Ok(Self {
            src,
            state: State::Pcap {
                linktype,
                per_sec: if nanos { NANOS_PER_SEC } else { 1_000_000 },
                big_endian,
                modified,
            },
            format: Format::Pcap {
                nanos,
                big_endian,
                modified,
            },
            linktype: Some(linktype),
            fcs_len,
            snaplen: h.snaplen,
            packets: 0,
            failed: false,
        })
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// pcap: the header's link type; pcapng: the first interface's, once
    /// read.
    pub fn linktype(&self) -> Option<u32> {
        self.linktype
    }

    /// The FCS length in bytes a pcap header's link-type field announces
    /// (bits 28-31, in 16-bit words, when bit 26 is set); pcapng: None.
    pub fn fcs_len(&self) -> Option<u8> {
        self.fcs_len
    }

    /// pcap: the header's snap length; pcapng: 0.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Bytes of the file consumed so far.
    pub fn offset(&self) -> u64 {
        self.src.offset
    }

    /// Packets read so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet, None at the end of the file.
    pub fn next_packet(&mut self) -> Result<Option<Packet>> {
        if self.failed {
            return Ok(None);
        }
        let out = match self.state {
            State::Pcap { .. } => self.next_classic(),
            State::PcapNg { .. } => self.next_ng(),
        };
        self.failed = out.is_err();
        out
    }

    fn next_classic(&mut self) -> Result<Option<Packet>> {
        let State::Pcap {
            linktype,
            per_sec,
            big_endian,
            modified,
        } = self.state
        else {
            return Ok(None);
        };
        if !self.src.ensure(1)? {
            return Ok(None);
        }
        let n = self.packets + 1;
        let offset = self.src.offset;
        let what = || format!("packet {n} (record at byte {offset})");
        let hlen = if modified { 24 } else { 16 };
        self.src.want(hlen, what)?;
        let h = self.src.bytes(hlen);
        let c = [h[8], h[9], h[10], h[11]];
        let caplen = if big_endian {
            u32::from_be_bytes(c)
        } else {
            u32::from_le_bytes(c)
        } as usize;
        if caplen > MAX_RECORD {
            return Err(invalid(
                what(),
                offset,
                format!(
                    "captured length {caplen} is absurd (the snap length is {}; at most {MAX_RECORD} bytes are read)",
                    self.snaplen
                ),
            ));
        }
        self.src.want(hlen + caplen, what)?;
        let rec = self.src.bytes(hlen + caplen);
        let parsed = if modified {
            parse_pcap_frame_modified(rec)
        } else if big_endian {
            parse_pcap_frame_be(rec)
        } else {
            parse_pcap_frame(rec)
        };
        let b = match parsed {
            Ok((_, b)) => b,
            Err(e) => return Err(invalid(what(), offset, nom_why(e))),
        };
        let (ts_sec, ts_nsec) = timestamp(u64::from(b.ts_sec), u64::from(b.ts_usec), per_sec)
            .ok_or_else(|| invalid(what(), offset, "timestamp out of range".into()))?;
        let packet = Packet {
            index: n,
            offset,
            ts_sec,
            ts_nsec,
            orig_len: b.origlen,
            linktype,
            if_name: None,
            data: b.data.to_vec(),
            comment: None,
        };
        self.src.consume(hlen + caplen);
        self.packets = n;
        Ok(Some(packet))
    }

    fn next_ng(&mut self) -> Result<Option<Packet>> {
        loop {
            if !self.src.ensure(1)? {
                return Ok(None);
            }
            if let Some(p) = self.next_block()? {
                return Ok(Some(p));
            }
        }
    }

    /// Reads one pcapng block: the packet it carries, if any.
    fn next_block(&mut self) -> Result<Option<Packet>> {
        let State::PcapNg {
            big_endian, blocks, ..
        } = self.state
        else {
            return Ok(None);
        };
        let (b, n, offset) = (blocks + 1, self.packets + 1, self.src.offset);
        let before = move || format!("block {b} (at byte {offset}, before packet {n})");
        self.src.want(8, before)?;
        let h = self.src.bytes(8);
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let is_shb = kind == SHB_MAGIC;
        // A section header says its own byte order (its byte-order magic).
        let be = if is_shb {
            self.src.want(12, before)?;
            let m = self.src.bytes(12);
            u32::from_le_bytes([m[8], m[9], m[10], m[11]]) != BOM_MAGIC
        } else {
            big_endian
        };
        let h = self.src.bytes(8);
        let word = |i: usize| {
            let w = [h[i], h[i + 1], h[i + 2], h[i + 3]];
            if be {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        let (kind, len) = (word(0), word(4) as usize);
        let carries = kind == EPB_MAGIC || kind == SPB_MAGIC;
        let what = move || {
            if carries {
                format!("packet {n} (block {b} at byte {offset})")
            } else {
                before()
            }
        };
        if len < 12 || len % 4 != 0 || len > MAX_RECORD {
            return Err(invalid(
                what(),
                offset,
                format!(
                    "block length {len} (a block is 12 bytes to {MAX_RECORD}, a multiple of 4)"
                ),
            ));
        }
        self.src.want(len, what)?;
        let bytes = self.src.bytes(len);
        let parsed = if be {
            parse_block_be(bytes)
        } else {
            parse_block_le(bytes)
        };
        let block = match parsed {
            Ok((_, block)) => block,
            Err(e) => return Err(invalid(what(), offset, nom_why(e))),
        };
        let State::PcapNg {
            big_endian,
            interfaces,
            blocks,
        } = &mut self.state
        else {
            return Ok(None);
        };
        *blocks = b;
        let inv = |why: String| invalid(what(), offset, why);
        let mut packet = None;
        match block {
            Block::SectionHeader(shb) => {
                *big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => {
                let per_sec = ticks_per_sec(idb.if_tsresol)
                    .ok_or_else(|| inv(format!("if_tsresol {:#04x}", idb.if_tsresol)))?;
                let linktype = (idb.linktype.0 as u32) & 0xffff;
                self.linktype.get_or_insert(linktype);
                let name = idb
                    .options
                    .iter()
                    .find(|o| o.code == OptionCode::IfName)
                    .and_then(|o| o.as_bytes().ok())
                    .map(|b| Arc::from(String::from_utf8_lossy(trim_nul(b)).as_ref()));
                interfaces.push(Interface {
                    linktype,
                    snaplen: idb.snaplen,
                    per_sec,
                    offset: ts_offset(&idb.options, *big_endian).unwrap_or(idb.if_tsoffset),
                    name,
                });
            }
            Block::EnhancedPacket(epb) => {
                let count = interfaces.len();
                let iface = interfaces.get(epb.if_id as usize).ok_or_else(|| {
                    inv(format!(
                        "packet of interface {} (the section describes {count})",
                        epb.if_id
                    ))
                })?;
                let data = epb.data.get(..epb.caplen as usize).ok_or_else(|| {
                    inv(format!(
                        "captured length {} > the block's {} data bytes",
                        epb.caplen,
                        epb.data.len()
                    ))
                })?;
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let (sec, nsec) = timestamp(0, ticks, iface.per_sec)
                    .ok_or_else(|| inv("timestamp out of range".into()))?;
                let sec = sec
                    .checked_add_signed(iface.offset)
                    .ok_or_else(|| inv(format!("timestamp offset {}", iface.offset)))?;
                let comment = epb
                    .options
                    .iter()
                    .find(|o| o.code == OptionCode::Comment)
                    .and_then(|o| o.as_bytes().ok())
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                packet = Some(Packet {
                    index: n,
                    offset,
                    ts_sec: sec,
                    ts_nsec: nsec,
                    orig_len: epb.origlen,
                    linktype: iface.linktype,
                    if_name: iface.name.clone(),
                    data: data.to_vec(),
                    comment,
                });
            }
            Block::SimplePacket(spb) => {
                let iface = interfaces
                    .first()
                    .ok_or_else(|| inv("simple packet before any interface".into()))?;
                let snap = if iface.snaplen == 0 {
                    u32::MAX
                } else {
                    iface.snaplen
                };
                let caplen = (spb.origlen.min(snap) as usize).min(spb.data.len());
                packet = Some(Packet {
                    index: n,
                    offset,
                    ts_sec: 0,
                    ts_nsec: 0,
                    orig_len: spb.origlen,
                    linktype: iface.linktype,
                    if_name: iface.name.clone(),
                    data: spb.data[..caplen].to_vec(),
                    comment: None,
                });
            }
            _ => {}
        }
        self.src.consume(len);
        if packet.is_some() {
            self.packets = n;
        }
        Ok(packet)
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<Packet>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_packet().transpose()
    }
}

fn invalid(what: String, offset: u64, why: String) -> CaptureError {
    CaptureError::Invalid { what, offset, why }
}

/// Why the crate refused a complete record.
fn nom_why(e: nom::Err<pcap_parser::PcapError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "its fields claim more bytes than its length".into(),
        nom::Err::Error(e) | nom::Err::Failure(e) => match e {
            pcap_parser::PcapError::NomError(_, kind) => format!("unreadable ({kind:?})"),
            other => format!("unreadable ({other:?})"),
        },
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    &b[..end]
}

/// Seconds and nanoseconds of `ticks` at `per_sec` ticks a second, after
/// `sec` seconds; exact, whatever the values (`ticks` >= `per_sec` is
/// carried into the seconds).
fn timestamp(sec: u64, ticks: u64, per_sec: u64) -> Option<(u64, u32)> {
    if per_sec == 0 {
        return None;
    }
    let sec = sec.checked_add(ticks / per_sec)?;
    let nsec = u128::from(ticks % per_sec) * u128::from(NANOS_PER_SEC) / u128::from(per_sec);
    Some((sec, u32::try_from(nsec).ok()?))
}

/// Timestamp units per second of a pcapng `if_tsresol`: 10^n, or 2^n when
/// the top bit is set. (Not `pcap_parser::build_ts_resolution`, which
/// refuses every 2^n resolution: it compares the value with the flag bit
/// still set against 63.)
fn ticks_per_sec(tsresol: u8) -> Option<u64> {
    let n = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(n)
    } else {
        1u64.checked_shl(n).filter(|_| n < 64)
    }
}

/// A pcapng `if_tsoffset` in the section's byte order (the crate's
/// `if_tsoffset` field reads it little-endian whatever the section's).
fn ts_offset(options: &[PcapNGOption], big_endian: bool) -> Option<i64> {
    let o = options.iter().find(|o| o.code == OptionCode::IfTsoffset)?;
    let b: [u8; 8] = o.value().get(..8)?.try_into().ok()?;
    Some(if big_endian {
        i64::from_be_bytes(b)
    } else {
        i64::from_le_bytes(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_names_the_gso_size() {
        let with = |c: Option<&str>| Packet {
            index: 1,
            offset: 0,
            ts_sec: 0,
            ts_nsec: 0,
            orig_len: 0,
            linktype: 1,
            if_name: None,
            data: Vec::new(),
            comment: c.map(str::to_owned),
        };
        for (c, want) in [
            (Some("gso_size=1448; big tcp ipv4 (total length 0)"), 1448),
            (Some("gso_size=65536"), 65536),
            (Some("gso_size=0; plain"), 0),
            (Some("gso_size=; none"), 0),
            (Some("gso_size=99999999999"), 0),
            (Some("a comment, gso_size=1448"), 0),
            (None, 0),
        ] {
            assert_eq!(with(c).gso_size(), want, "{c:?}");
        }
    }

    /// A classic pcap header and records, little- or big-endian.
    pub(crate) fn classic(
        magic: u32,
        snaplen: u32,
        linktype: u32,
        records: &[(u32, &[u8])],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [magic, 0x0004_0002, 0, 0, snaplen, linktype] {
            b.extend(v.to_le_bytes());
        }
        for (caplen, data) in records {
            for v in [1u32, 2, *caplen, data.len() as u32] {
                b.extend(v.to_le_bytes());
            }
            b.extend_from_slice(data);
        }
        b
    }

    /// A reader that hands out at most 7 bytes a read, counting the
    /// largest buffer it was asked to fill.
    struct Trickle<'a> {
        data: &'a [u8],
        asked: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked.set(self.asked.get().max(buf.len()));
            let n = buf.len().min(7).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Thousands of packets stream through a buffer the size of one
    /// record plus one chunk: the reader never holds the file.
    #[test]
    fn streams_in_bounded_memory() {
        let frame = [0x5au8; 1500];
        let records: Vec<(u32, &[u8])> = (0..5000).map(|_| (1500u32, &frame[..])).collect();
        let file = classic(MAGIC_US, 65535, 1, &records);
        assert!(file.len() > 7_000_000);
        let asked = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut r = CaptureReader::new(Trickle {
            data: &file,
            asked: asked.clone(),
        })
        .expect("header");
        let mut n = 0u64;
        let mut peak = 0;
        while let Some(p) = r.next_packet().expect("packet") {
            n += 1;
            assert_eq!(p.index, n);
            assert_eq!(p.data.len(), 1500);
            peak = peak.max(r.src.buf.capacity());
        }
        assert_eq!(n, 5000);
        assert_eq!(r.offset(), file.len() as u64);
        assert!(peak <= CHUNK, "buffer grew to {peak}");
        assert!(asked.get() <= CHUNK, "asked {}", asked.get());
    }

    /// A record claiming gigabytes is refused before anything is read or
    /// allocated, naming the packet.
    #[test]
    fn absurd_lengths_are_refused() {
        let file = classic(
            MAGIC_US,
            u32::MAX,
            1,
            &[(60, &[0; 60]), (0x7fff_0000, &[0; 60])],
        );
        let mut r = CaptureReader::new(&file[..]).expect("header");
        assert!(r.next_packet().expect("first").is_some());
        let e = r.next_packet().expect_err("absurd").to_string();
        assert!(
            e.contains("packet 2 (record at byte 100)") && e.contains("absurd"),
            "{e}"
        );
        // The stream ends after an error.
        assert!(r.next_packet().expect("ended").is_none());
        // pcapng: a block length that is not one.
        let mut ng = Vec::new();
        for v in [SHB_MAGIC, 28, BOM_MAGIC, 1, u32::MAX, u32::MAX, 28] {
            ng.extend(v.to_le_bytes());
        }
        ng.truncate(24);
        ng.extend(28u32.to_le_bytes());
        for v in [EPB_MAGIC, 0x4000_0000] {
            ng.extend(v.to_le_bytes());
        }
        let mut r = CaptureReader::new(&ng[..]).expect("header");
        let e = r.next_packet().expect_err("block length").to_string();
        assert!(
            e.contains("packet 1 (block 2 at byte 28)") && e.contains("block length 1073741824"),
            "{e}"
        );
        let e = CaptureReader::new(&b""[..])
            .err()
            .expect("empty")
            .to_string();
        assert_eq!(
            e,
            "truncated capture: the file ends inside the file header (before packet 1) (at byte 0; 4 more bytes wanted)"
        );
    }

    /// Every byte of a pcap and a pcapng set to 0, 0x7f, 0x80 and 0xff in
    /// turn, and every cut: an error or packets, never a panic, and an
    /// error names a packet or the file header.
    #[test]
    fn damaged_files_never_panic() {
        let frame = [0x11u8; 61];
        let files = [
            classic(MAGIC_US, 65535, 1, &[(61, &frame[..]), (61, &frame[..])]),
            pcapng_with_names(),
        ];
        for file in files {
            for i in 0..file.len() {
                for v in [0u8, 0x7f, 0x80, 0xff] {
                    let mut f = file.clone();
                    f[i] = v;
                    check(&f);
                }
                check(&file[..i]);
            }
        }
        fn check(bytes: &[u8]) {
            let r = CaptureReader::new(bytes).and_then(|r| r.collect::<Result<Vec<_>>>());
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains("packet ") || text.contains("magic"), "{text}");
            }
        }
    }

    /// A pcapng: an interface named `lxc1`, one 3-byte packet.
    fn pcapng_with_names() -> Vec<u8> {
        let mut ng = Vec::new();
        for v in [
            SHB_MAGIC,
            28,
            BOM_MAGIC,
            0x0000_0001,
            u32::MAX,
            u32::MAX,
            28,
        ] {
            ng.extend(v.to_le_bytes());
        }
        // IDB: Ethernet, if_name "lxc1" (option 2, 4 bytes), end of options.
        let mut idb = Vec::new();
        idb.extend(1u16.to_le_bytes());
        idb.extend([0, 0]);
        idb.extend(0u32.to_le_bytes());
        idb.extend(2u16.to_le_bytes());
        idb.extend(4u16.to_le_bytes());
        idb.extend(b"lxc1");
        idb.extend([0; 4]);
        let len = 12 + idb.len() as u32;
        ng.extend(1u32.to_le_bytes());
        ng.extend(len.to_le_bytes());
        ng.extend(&idb);
        ng.extend(len.to_le_bytes());
        // EPB of 3 bytes (padded to 4).
        let mut epb = Vec::new();
        for v in [0u32, 0, 5, 3, 3] {
            epb.extend(v.to_le_bytes());
        }
        epb.extend([1, 2, 3, 0]);
        let len = 12 + epb.len() as u32;
        ng.extend(EPB_MAGIC.to_le_bytes());
        ng.extend(len.to_le_bytes());
        ng.extend(&epb);
        ng.extend(len.to_le_bytes());
        ng
    }

    #[test]
    fn pcapng_interface_names() {
        let ng = pcapng_with_names();
        let packets: Vec<Packet> = CaptureReader::new(&ng[..])
            .expect("header")
            .collect::<Result<_>>()
            .expect("packets");
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].if_name.as_deref(), Some("lxc1"));
        assert_eq!(packets[0].data, [1, 2, 3]);
        assert_eq!(packets[0].offset, 28 + 32);
    }
}
