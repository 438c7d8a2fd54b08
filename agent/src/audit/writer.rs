//! Appending records to the audit log, with rotation by size.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    chain::{decode_line_with, encode, GENESIS},
    head::{head_path, Head, HeadFile},
    key::{ChainKey, MAC_NAME},
    AuditError,
};
use crate::events::{EventRecord, EventSink};

/// How the audit log is written.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Rotate when the next record would make the file larger than this
    /// (0: never rotate).
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` … `FILE.<keep>`); at least 1.
    pub keep: usize,
    /// Node name written in meta records.
    pub node: String,
    /// Key of a keyed chain (HMAC-SHA256); `None`: SHA-256.
    pub key: Option<ChainKey>,
}

/// `FILE.<n>`.
pub fn rotated_path(base: &Path, n: usize) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[derive(Serialize)]
struct FileStart<'a> {
    audit: &'static str,
    time: String,
    node: &'a str,
    /// Why a new file was begun: `new`, `rotated`, `damaged` (the previous
    /// file was found damaged at start and set aside).
    reason: &'a str,
    /// `hmac-sha256` in a keyed chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'static str>,
}

#[derive(Serialize)]
struct Gap<'a> {
    audit: &'static str,
    time: String,
    node: &'a str,
    missed: u64,
    error: &'a str,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The end of an existing audit file.
enum Tail {
    Missing,
    Empty,
    /// The last line is a complete record with a valid hash.
    Valid {
        seq: u64,
        hash: String,
        size: u64,
    },
    Damaged(String),
}

/// Longest line looked for at the end of an existing file.
const MAX_TAIL: u64 = 1 << 20;

fn read_tail(path: &Path, key: Option<&ChainKey>) -> Result<Tail, AuditError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::Missing),
        Err(e) => return Err(AuditError::io(path)(e)),
    };
    let size = file.metadata().map_err(AuditError::io(path))?.len();
    if size == 0 {
        return Ok(Tail::Empty);
    }
    let start = size.saturating_sub(MAX_TAIL);
    file.seek(SeekFrom::Start(start))
        .map_err(AuditError::io(path))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(AuditError::io(path))?;
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Ok(Tail::Damaged(
            "its last line is incomplete (no newline)".into(),
        ));
    };
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => return Ok(Tail::Damaged("its last line is too long".into())),
    };
    Ok(match decode_line_with(line, key) {
        Ok(d) if d.hash_ok() => Tail::Valid {
            seq: d.seq,
            hash: d.hash,
            size,
        },
        Ok(d) => Tail::Damaged(format!(
            "its last record (seq {}) does not match its hash{}",
            d.seq,
            if key.is_some() {
                " with this key (another key, or an unkeyed chain)"
            } else {
                " (a keyed chain needs its --audit-key)"
            }
        )),
        Err(e) => Tail::Damaged(format!("its last line is not an audit record: {e}")),
    })
}

/// Appends event records to a hash-chained audit file (see the module
/// docs of [`crate::audit`]).
pub struct AuditWriter {
    path: PathBuf,
    opts: AuditOptions,
    /// `None` after a rotation until the new file is opened.
    file: Option<File>,
    size: u64,
    /// Records in the current file (a resumed file counts as holding some).
    records_in_file: u64,
    head: HeadFile,
    next_seq: u64,
    prev: String,
    /// Why the next file is begun (written in its `file_start`).
    start_reason: &'static str,
    /// Records not written since the last record that was.
    missed: u64,
    first_error: Option<String>,
    /// Errors logged so far (the log is rate-limited).
    logged: u64,
    /// Test hook: how many coming writes fail (after writing half the line).
    #[cfg(test)]
    pub(crate) fail_writes: usize,
}

impl AuditWriter {
    /// Opens (or creates) the audit file `path` and continues its chain: from
    /// its last record, else from its head file (the file was rotated or
    /// removed), else from the genesis. A file whose end is damaged or does
    /// not reach its head's record is set aside untouched (rotated to
    /// `FILE.1`, where `verify` will point at the damage) and a new file
    /// continues the chain from the head.
    pub fn open(path: &Path, opts: AuditOptions) -> Result<Self, AuditError> {
        let opts = AuditOptions {
            keep: opts.keep.max(1),
            ..opts
        };
        let head_file = head_path(path);
        let head = Head::read(&head_file)?;
        let mut tail = read_tail(path, opts.key.as_ref())?;
        if let (Tail::Valid { seq, hash, .. }, Some(h)) = (&tail, &head) {
            if *seq < h.seq {
                tail = Tail::Damaged(format!(
                    "it ends at seq {seq} but its head file says the chain reached seq {}",
                    h.seq
                ));
            } else if *seq == h.seq && *hash != h.hash {
                tail = Tail::Damaged(format!(
                    "its last record (seq {seq}) is not the one its head file names"
                ));
            }
        }
        let (next_seq, prev) = match &head {
            Some(h) => (h.seq + 1, h.hash.clone()),
            None => (0, GENESIS.to_owned()),
        };
        let mut w = AuditWriter {
            path: path.to_path_buf(),
            opts,
            file: None,
            size: 0,
            records_in_file: 0,
            head: HeadFile::open(head_file)?,
            next_seq,
            prev,
            start_reason: "new",
            missed: 0,
            first_error: None,
            logged: 0,
            #[cfg(test)]
            fail_writes: 0,
        };
        match tail {
            Tail::Missing | Tail::Empty => {}
            Tail::Valid { seq, hash, size } => {
                w.file = Some(w.open_current()?);
                w.size = size;
                w.records_in_file = 2;
                w.next_seq = seq + 1;
                w.head.write(&Head {
                    seq,
                    hash: hash.clone(),
                })?;
                w.prev = hash;
            }
            Tail::Damaged(why) => {
                tracing::error!(
                    "audit file {} is damaged: {why}; it is kept untouched as {} and a new file continues the chain from {}",
                    path.display(),
                    rotated_path(path, 1).display(),
                    if head.is_some() { "its head file" } else { "the genesis (no head file)" }
                );
                w.shift_files()?;
                w.start_reason = "damaged";
            }
        }
        w.ensure_file()?;
        Ok(w)
    }

    /// The audit file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records that could not be written since the last one that was.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The last record written (`None` before the first).
    pub fn head(&self) -> Option<Head> {
        self.next_seq.checked_sub(1).map(|seq| Head {
            seq,
            hash: self.prev.clone(),
        })
    }

    /// The node name of the records.
    pub fn node(&self) -> &str {
        &self.opts.node
    }

    /// Appends one record (an event record, or a meta record with an
    /// `audit` field). On failure nothing of it stays in the file, and a
    /// `gap` record saying how many were missed is written before the next
    /// record that can be.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<u64, AuditError> {
        let result = self.try_append(record);
        if let Err(e) = &result {
            self.missed += 1;
            self.first_error.get_or_insert_with(|| e.to_string());
        }
        result
    }

    fn try_append<T: Serialize>(&mut self, record: &T) -> Result<u64, AuditError> {
        self.ensure_file()?;
        if self.missed > 0 {
            let error = self.first_error.clone().unwrap_or_default();
            let node = self.opts.node.clone();
            let gap = Gap {
                audit: "gap",
                time: now(),
                node: &node,
                missed: self.missed,
                error: &error,
            };
            self.write_record(&gap)?;
            self.missed = 0;
            self.first_error = None;
        }
        self.write_record(record)
    }

    /// Flushes the file's data and the head to the disk.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(AuditError::io(&self.path))?;
        }
        self.head.sync()
    }

    fn open_current(&self) -> Result<File, AuditError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Readable by auditors without root, written by the agent only.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&self.path)
            .map_err(AuditError::io(&self.path))
    }

    /// Opens the current file when there is none (at start, after a
    /// rotation) and begins it with its `file_start` record.
    fn ensure_file(&mut self) -> Result<(), AuditError> {
        if self.file.is_some() {
            return Ok(());
        }
        let file = self.open_current()?;
        self.size = file.metadata().map_err(AuditError::io(&self.path))?.len();
        self.records_in_file = if self.size > 0 { 2 } else { 0 };
        self.file = Some(file);
        if self.size == 0 {
            let start = FileStart {
                audit: "file_start",
                time: now(),
                node: &self.opts.node,
                reason: self.start_reason,
                mac: self.opts.key.is_some().then_some(MAC_NAME),
            };
            let (line, hash) = encode(self.next_seq, &self.prev, &start, self.opts.key.as_ref())?;
            if let Err(e) = self.write_line(&line, hash) {
                // Begin the file again next time.
                self.file = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Encodes and writes one record, rotating first when it would not fit.
    fn write_record<T: Serialize>(&mut self, content: &T) -> Result<u64, AuditError> {
        let key = self.opts.key.as_ref();
        let (mut line, mut hash) = encode(self.next_seq, &self.prev, content, key)?;
        if self.opts.max_bytes > 0
            && self.records_in_file > 1
            && self.size + line.len() as u64 > self.opts.max_bytes
        {
            self.rotate()?;
            self.ensure_file()?;
            (line, hash) = encode(self.next_seq, &self.prev, content, self.opts.key.as_ref())?;
        }
        self.write_line(&line, hash)
    }

    /// One `write(2)`; on failure the file is cut back to where it was.
    fn write_line(&mut self, line: &[u8], hash: String) -> Result<u64, AuditError> {
        let file = self.file.as_mut().ok_or_else(|| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the audit file is not open"),
        })?;
        #[cfg(test)]
        let written = if self.fail_writes > 0 {
            self.fail_writes -= 1;
            let _ = file.write_all(&line[..line.len() / 2]);
            Err(std::io::Error::other("injected write failure"))
        } else {
            file.write_all(line)
        };
        #[cfg(not(test))]
        let written = file.write_all(line);
        if let Err(e) = written {
            if let Err(e2) = file.set_len(self.size) {
                tracing::error!(
                    "audit file {}: cutting a partly written record failed: {e2}",
                    self.path.display()
                );
            }
            return Err(AuditError::io(&self.path)(e));
        }
        let seq = self.next_seq;
        self.size += line.len() as u64;
        self.records_in_file += 1;
        self.next_seq += 1;
        if let Err(e) = self.head.write(&Head {
            seq,
            hash: hash.clone(),
        }) {
            self.log_error(&e);
        }
        self.prev = hash;
        Ok(seq)
    }

    /// Renames FILE to FILE.1 (FILE.1 to FILE.2 …, dropping the oldest).
    fn rotate(&mut self) -> Result<(), AuditError> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(AuditError::io(&self.path))?;
        }
        self.shift_files()?;
        self.start_reason = "rotated";
        Ok(())
    }

    fn shift_files(&mut self) -> Result<(), AuditError> {
        self.file = None;
        for n in (1..self.opts.keep).rev() {
            let from = rotated_path(&self.path, n);
            match std::fs::rename(&from, rotated_path(&self.path, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AuditError::io(&from)(e)),
            }
        }
        match std::fs::rename(&self.path, rotated_path(&self.path, 1)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io(&self.path)(e)),
        }
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn log_error(&mut self, e: &AuditError) {
        self.logged += 1;
        if self.logged <= 10 || self.logged.is_power_of_two() {
            tracing::error!(
                "audit log: {e} ({} error(s) so far; records not written are announced by a gap record)",
                self.logged
            );
        }
    }
}

/// The agent's audit sink: a record that cannot be written is logged and
/// announced later by a `gap` record; it never stops the agent (enforcement
/// and the exact counters do not depend on the audit log).
impl EventSink for AuditWriter {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        if let Err(e) = self.append(record) {
            self.log_error(&e);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Every record is written when it is appended.
        Ok(())
    }
}
