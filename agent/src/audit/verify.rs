//! Checking a chain of audit files: the first record where an edit,
//! deletion, reordering or truncation breaks it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::File,
    io::{BufRead as _, BufReader, Seek as _},
    path::{Path, PathBuf},
};

use super::{
    chain::{decode_line, decode_line_with, LineError, MetaKind, GENESIS},
    head::Head,
    key::{ChainKey, MAC_NAME},
};

/// A chain head recorded off the node (e.g. by Prometheus): the chain must
/// hold record `seq` with this `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// Where and when it was recorded, for messages.
    pub at: String,
}

/// What to check besides the files.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The head file the chain must reach (`None`: the end is not checked,
    /// so records cut from the end cannot be detected).
    pub head: Option<PathBuf>,
    /// The key of a keyed chain (HMAC-SHA256).
    pub key: Option<ChainKey>,
    /// Heads recorded elsewhere that must all be in the chain.
    pub anchors: Vec<Anchor>,
    /// The files are a SIEM's copy: each line may begin with the
    /// receiver's own prefix before the record, lines without a record are
    /// skipped, a record may appear again (at-least-once delivery resends;
    /// same seq and hash), and the copy may begin and end anywhere.
    pub siem: bool,
}

/// What the head check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// No head file was given or found.
    NotChecked,
    /// The chain ends with the head's record.
    Matches { seq: u64 },
    /// The chain holds the head's record and `after` more records (written
    /// after the head's last update: a crash between the two writes, or a
    /// head file that could not be updated).
    Behind { seq: u64, after: u64 },
}

/// One file of a verified chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Where and how the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    /// 1-based line number (for a missing end: the line after the last).
    pub line: u64,
    /// The seq of the record there, when it could be read.
    pub seq: Option<u64>,
    pub problem: Problem,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// What is wrong at a [`Break`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Unreadable(String),
    BadHead(String),
    EmptyFile,
    /// The file ends in the middle of a line.
    Truncated,
    NotARecord(LineError),
    HashMismatch {
        stored: String,
        computed: String,
    },
    /// Records `expected..found` are not there.
    Missing {
        expected: u64,
        found: u64,
    },
    /// A later seq, and the expected one further down the file, at `line`.
    Reordered {
        expected: u64,
        found: u64,
        line: u64,
    },
    /// A seq at or below one already seen.
    OutOfOrder {
        expected: u64,
        found: u64,
    },
    /// `prev` is not the hash of the record before.
    PrevMismatch {
        before: String,
    },
    NoFileStart,
    FileStartInside,
    BadGenesis,
    /// The chain ends before the head's record.
    EndsBeforeHead {
        head_seq: u64,
        last_seq: Option<u64>,
    },
    /// The record the head names has another hash.
    HeadHashMismatch {
        head_hash: String,
    },
    /// The head names a record before the first one in the files.
    HeadBeforeFiles {
        head_seq: u64,
    },
    /// A keyed chain checked without its key.
    NeedsKey,
    /// The record an anchor names has another hash here.
    AnchorMismatch {
        anchor: Anchor,
    },
    /// The chain ends before the record an anchor names.
    EndsBeforeAnchor {
        anchor: Anchor,
        last_seq: Option<u64>,
    },
    /// SIEM copy: the same seq twice with different content.
    Conflicting {
        first: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable(e) => write!(f, "cannot be read: {e}"),
            Problem::BadHead(e) => write!(f, "bad head file: {e}"),
            Problem::EmptyFile => write!(
                f,
                "the file is empty: its records (at least its file_start) were deleted"
            ),
            Problem::Truncated => write!(
                f,
                "the record is cut short (the file ends inside it): the file was truncated"
            ),
            Problem::NotARecord(e) => {
                write!(f, "not an audit record ({e}): edited or corrupted")
            }
            Problem::HashMismatch { stored, computed } => write!(
                f,
                "the record was edited: it carries hash {stored} but its content hashes to {computed}"
            ),
            Problem::Missing { expected, found } => {
                let n = found - expected;
                if n == 1 {
                    write!(
                        f,
                        "record seq {expected} is missing before this one: it was deleted"
                    )
                } else {
                    write!(
                        f,
                        "records seq {expected}..={} are missing before this one: {n} records were deleted",
                        found - 1
                    )
                }
            }
            Problem::Reordered {
                expected,
                found,
                line,
            } => write!(
                f,
                "seq {found} where seq {expected} was expected, which is further down at line {line}: records were reordered"
            ),
            Problem::OutOfOrder { expected, found } => write!(
                f,
                "seq {found} where seq {expected} was expected: records were reordered or duplicated"
            ),
            Problem::PrevMismatch { before } => write!(
                f,
                "its prev is not the hash of the record before it ({before}): that record was replaced, or rehashed after an edit"
            ),
            Problem::NoFileStart => write!(
                f,
                "the file does not begin with its file_start record: records were deleted from its beginning"
            ),
            Problem::FileStartInside => write!(
                f,
                "a file_start record inside a file: records of another file were moved here"
            ),
            Problem::BadGenesis => write!(
                f,
                "only seq 0 chains to the genesis, and seq 0 must: the beginning of the chain was rewritten"
            ),
            Problem::EndsBeforeHead { head_seq, last_seq } => match last_seq {
                Some(last) => write!(
                    f,
                    "the chain ends at seq {last} but the head file says it reached seq {head_seq}: records seq {}..={head_seq} were cut from the end",
                    last + 1
                ),
                None => write!(
                    f,
                    "no record, but the head file says the chain reached seq {head_seq}"
                ),
            },
            Problem::HeadHashMismatch { head_hash } => write!(
                f,
                "this is not the record the head file names (hash {head_hash}): the end of the chain was rewritten"
            ),
            Problem::HeadBeforeFiles { head_seq } => write!(
                f,
                "the head file names seq {head_seq}, which is before the first record of these files"
            ),
            Problem::NeedsKey => write!(
                f,
                "the chain is keyed ({MAC_NAME}): its hashes can only be checked with its key (--key FILE)"
            ),
            Problem::AnchorMismatch { anchor } => write!(
                f,
                "the head recorded {} (seq {}, hash {}) is not in this chain: here seq {} has another hash, so the chain was rewritten from seq {} or earlier",
                anchor.at, anchor.seq, anchor.hash, anchor.seq, anchor.seq
            ),
            Problem::EndsBeforeAnchor { anchor, last_seq } => write!(
                f,
                "the head recorded {} (seq {}, hash {}) is not in this chain: it ends at seq {}, records were cut from the end",
                anchor.at,
                anchor.seq,
                anchor.hash,
                last_seq.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
            ),
            Problem::Conflicting { first } => write!(
                f,
                "this seq was seen before ({first}) with another hash: one of the two was edited"
            ),
        }
    }
}

/// The outcome of [`verify_files`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files, oldest first, as far as they were read.
    pub files: Vec<FileReport>,
    /// Records verified (event and meta records) before any break.
    pub records: u64,
    /// Change records (policy loads, reloads, refusals, agent start/stop).
    pub changes: u64,
    /// Whether the chain is keyed (its file_start records say so).
    pub keyed: bool,
    /// Anchors found in the chain.
    pub anchors_matched: u64,
    /// Anchors older than the first record of the files (rotated away).
    pub anchors_before: u64,
    /// SIEM copy: records seen again (same seq, same hash) and skipped.
    pub duplicates: u64,
    /// SIEM copy: lines without an audit record, skipped.
    pub other_lines: u64,
    /// Event records among them.
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether the chain starts at seq 0 (else older files were rotated
    /// away).
    pub from_genesis: bool,
    /// (seq, missed) of every `gap` record: records the agent announced it
    /// could not write.
    pub gaps: Vec<(u64, u64)>,
    pub head: Option<HeadCheck>,
    /// The first break; `None` when the chain verifies.
    pub broken: Option<Break>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// The files of the rotated set of `base`, oldest first: `base.N` …
/// `base.1`, `base` (numbers as found on disk; a hole shows up as a break).
pub fn discover(base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = base
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file", base.display())))?
        .to_string_lossy()
        .into_owned();
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = file_name.strip_prefix(&prefix) {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0') {
                if let Ok(n) = n.parse::<u64>() {
                    rotated.push((n, base.with_file_name(&file_name)));
                }
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(base.to_path_buf());
    Ok(files)
}

/// Orders files of one chain by the seq of their first record (files whose
/// first line cannot be read come first, so that their break is reported).
pub fn order_by_first_seq(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(Option<u64>, usize, PathBuf)> = files
        .iter()
        .enumerate()
        .map(|(i, p)| (first_seq(p), i, p.clone()))
        .collect();
    keyed.sort_by_key(|(seq, i, _)| (*seq, *i));
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

/// The seq of the first record of `path`, when it can be read.
pub(crate) fn first_seq(path: &Path) -> Option<u64> {
    first_seq_of(&File::open(path).ok()?)
}

/// The seq of the first record of an open file, when it can be read (read
/// from the file's start; the file offset is left after the first line).
pub(crate) fn first_seq_of(file: &File) -> Option<u64> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(file);
    reader.seek(std::io::SeekFrom::Start(0)).ok()?;
    reader.read_until(b'\n', &mut line).ok()?;
    decode_line(line.strip_suffix(b"\n")?).ok().map(|d| d.seq)
}

/// What a keyed chain's file_start line holds.
const MAC_MARK: &[u8] = b"\"mac\":\"hmac-sha256\"";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The seq a damaged line claims, when it still begins like a record.
fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Reads on in `reader` for the record `seq`; returns how many lines
/// further it is.
fn find_seq(reader: &mut impl std::io::BufRead, seq: u64) -> Option<u64> {
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).ok()? == 0 {
            return None;
        }
        n += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if decode_line(line).is_ok_and(|d| d.seq == seq) {
            return Some(n);
        }
    }
}

/// Verifies `files` (oldest first) as one chain, and its end against the
/// head file of `opts`.
pub fn verify_files(files: &[PathBuf], opts: &VerifyOptions) -> VerifyReport {
    let mut v = Verifier {
        key: opts.key.clone(),
        siem: opts.siem,
        ..Verifier::default()
    };
    for a in &opts.anchors {
        v.anchors.entry(a.seq).or_default().push(a.clone());
    }
    if let Some(head_path) = &opts.head {
        match Head::read(head_path) {
            Ok(head) => v.head = head,
            Err(e) => {
                v.report.broken = Some(Break {
                    file: head_path.clone(),
                    line: 1,
                    seq: None,
                    problem: Problem::BadHead(e.to_string()),
                });
                return v.report;
            }
        }
    }
    for path in files {
        if let Err(b) = v.file(path) {
            v.report.broken = Some(b);
            return v.report;
        }
    }
    if let Err(b) = v.check_head().and_then(|()| v.check_anchors_after()) {
        v.report.broken = Some(b);
    }
    v.report
}

/// Where a record starts in a SIEM line: at its `{"seq":`.
fn record_start(line: &[u8]) -> Option<usize> {
    const START: &[u8] = b"{\"seq\":";
    line.windows(START.len()).position(|w| w == START)
}

#[derive(Default)]
struct Verifier {
    report: VerifyReport,
    /// (next seq, hash of the last record) after the last record.
    last: Option<(u64, String)>,
    /// Where the last record is.
    last_place: Option<(PathBuf, u64)>,
    head: Option<Head>,
    /// (hash, file, line) of the record whose seq the head names.
    head_seen: Option<(String, PathBuf, u64)>,
    key: Option<ChainKey>,
    /// Anchors by seq, removed as they are checked.
    anchors: BTreeMap<u64, Vec<Anchor>>,
    siem: bool,
    /// SIEM copy: (hash, file:line) of every record seen, by seq.
    seen: HashMap<u64, (String, String)>,
}

impl Verifier {
    fn file(&mut self, path: &Path) -> Result<(), Break> {
        let at = |line: u64, seq: Option<u64>, problem: Problem| Break {
            file: path.to_path_buf(),
            line,
            seq,
            problem,
        };
        let file = File::open(path).map_err(|e| at(0, None, Problem::Unreadable(e.to_string())))?;
        let mut reader = BufReader::new(file);
        let mut report = FileReport {
            path: path.to_path_buf(),
            records: 0,
            first_seq: None,
            last_seq: None,
        };
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| at(line_no + 1, None, Problem::Unreadable(e.to_string())))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let Some(mut line) = buf.strip_suffix(b"\n") else {
                return Err(at(line_no, leading_seq(&buf), Problem::Truncated));
            };
            if self.siem {
                let line_end = line.strip_suffix(b"\r").unwrap_or(line);
                match record_start(line_end) {
                    Some(i) => line = &line_end[i..],
                    None => {
                        self.report.other_lines += 1;
                        continue;
                    }
                }
            }
            let d = decode_line_with(line, self.key.as_ref())
                .map_err(|e| at(line_no, leading_seq(line), Problem::NotARecord(e)))?;
            let here = |p: Problem| at(line_no, Some(d.seq), p);
            let is_start = d.meta == Some(MetaKind::FileStart);
            if is_start && contains(line, MAC_MARK) {
                self.report.keyed = true;
            }
            if !d.hash_ok() {
                if self.key.is_none() && self.report.keyed {
                    return Err(here(Problem::NeedsKey));
                }
                return Err(here(Problem::HashMismatch {
                    stored: d.hash.clone(),
                    computed: d.computed.clone(),
                }));
            }
            if self.siem {
                if let Some((hash, place)) = self.seen.get(&d.seq) {
                    if *hash == d.hash {
                        self.report.duplicates += 1;
                        continue;
                    }
                    return Err(here(Problem::Conflicting {
                        first: place.clone(),
                    }));
                }
                self.seen.insert(
                    d.seq,
                    (d.hash.clone(), format!("{}:{line_no}", path.display())),
                );
            } else {
                if line_no == 1 && !is_start {
                    return Err(here(Problem::NoFileStart));
                }
                if line_no > 1 && is_start {
                    return Err(here(Problem::FileStartInside));
                }
            }
            if let Some(anchors) = self.anchors.remove(&d.seq) {
                for anchor in anchors {
                    if anchor.hash != d.hash {
                        return Err(here(Problem::AnchorMismatch { anchor }));
                    }
                    self.report.anchors_matched += 1;
                }
            }
            match &self.last {
                None => {
                    // The first record available: the genesis, or the first
                    // record kept after older files were rotated away.
                    if (d.seq == 0) != (d.prev == GENESIS) {
                        return Err(here(Problem::BadGenesis));
                    }
                    // Anchors before it were rotated away.
                    let before: Vec<u64> = self.anchors.range(..d.seq).map(|(s, _)| *s).collect();
                    for s in before {
                        let n = self.anchors.remove(&s).map_or(0, |v| v.len());
                        self.report.anchors_before += n as u64;
                    }
                    self.report.from_genesis = d.seq == 0;
                    self.report.first_seq = Some(d.seq);
                }
                Some((expected, prev)) => {
                    if d.seq > *expected {
                        let expected = *expected;
                        // Deleted, or further down (reordered)?
                        let later = find_seq(&mut reader, expected).map(|l| line_no + l);
                        return Err(here(match later {
                            Some(line) => Problem::Reordered {
                                expected,
                                found: d.seq,
                                line,
                            },
                            None => Problem::Missing {
                                expected,
                                found: d.seq,
                            },
                        }));
                    }
                    if d.seq < *expected {
                        return Err(here(Problem::OutOfOrder {
                            expected: *expected,
                            found: d.seq,
                        }));
                    }
                    if d.prev != *prev {
                        let before = self
                            .last_place
                            .as_ref()
                            .map(|(f, l)| format!("{}:{l}", f.display()))
                            .unwrap_or_default();
                        return Err(here(Problem::PrevMismatch { before }));
                    }
                }
            }
            match &d.meta {
                None => self.report.events += 1,
                Some(MetaKind::Gap { missed }) => self.report.gaps.push((d.seq, *missed)),
                Some(MetaKind::Change { .. }) => self.report.changes += 1,
                Some(_) => {}
            }
            self.report.records += 1;
            self.report.last_seq = Some(d.seq);
            report.records += 1;
            report.first_seq.get_or_insert(d.seq);
            report.last_seq = Some(d.seq);
            if self.head.as_ref().is_some_and(|h| h.seq == d.seq) {
                self.head_seen = Some((d.hash.clone(), path.to_path_buf(), line_no));
            }
            self.last = Some((d.seq + 1, d.hash));
            self.last_place = Some((path.to_path_buf(), line_no));
        }
        self.report.files.push(report);
        if line_no == 0 {
            return Err(at(1, None, Problem::EmptyFile));
        }
        Ok(())
    }

    /// Anchors after the end of the chain: records cut from its end (or
    /// a rewritten chain that is shorter).
    fn check_anchors_after(&mut self) -> Result<(), Break> {
        let Some((_, anchors)) = self.anchors.pop_first() else {
            return Ok(());
        };
        let (file, line) = self.last_place.clone().unwrap_or_default();
        Err(Break {
            file,
            line: line + 1,
            seq: None,
            problem: Problem::EndsBeforeAnchor {
                anchor: anchors[0].clone(),
                last_seq: self.report.last_seq,
            },
        })
    }

    fn check_head(&mut self) -> Result<(), Break> {
        let Some(head) = self.head.take() else {
            self.report.head = Some(HeadCheck::NotChecked);
            return Ok(());
        };
        let last = self.report.last_seq;
        if last.is_none_or(|l| l < head.seq) {
            let (file, line) = self.last_place.clone().unwrap_or_default();
            return Err(Break {
                file,
                line: line + 1,
                seq: None,
                problem: Problem::EndsBeforeHead {
                    head_seq: head.seq,
                    last_seq: last,
                },
            });
        }
        let Some((hash, file, line)) = self.head_seen.take() else {
            let file = self.report.files.first().map(|f| f.path.clone());
            return Err(Break {
                file: file.unwrap_or_default(),
                line: 1,
                seq: self.report.first_seq,
                problem: Problem::HeadBeforeFiles { head_seq: head.seq },
            });
        };
        if hash != head.hash {
            return Err(Break {
                file,
                line,
                seq: Some(head.seq),
                problem: Problem::HeadHashMismatch {
                    head_hash: head.hash,
                },
            });
        }
        let after = last.unwrap_or(head.seq) - head.seq;
        self.report.head = Some(if after == 0 {
            HeadCheck::Matches { seq: head.seq }
        } else {
            HeadCheck::Behind {
                seq: head.seq,
                after,
            }
        });
        Ok(())
    }
}
