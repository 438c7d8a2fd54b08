//! Reading the audit file set in seq order from any seq, following the
//! writer: across rotations (FILE -> FILE.1 …) and as records are appended.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::audit::{decode_line, discover, verify::first_seq};

/// The audit records from some seq on.
pub struct Tail {
    base: PathBuf,
    reader: Option<BufReader<File>>,
    /// Inode of the open file.
    ino: u64,
    /// A line read up to the end of the file, not yet complete.
    partial: Vec<u8>,
    /// The seq the next record returned must have.
    want: u64,
    /// Records that were not there when they were wanted (rotated away
    /// before they were shipped), since the last call of
    /// [`Tail::take_skipped`].
    skipped: u64,
}

fn ino_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Tail {
    /// Reads from record `want` on.
    pub fn open(base: &Path, want: u64) -> Tail {
        let mut t = Tail {
            base: base.to_path_buf(),
            reader: None,
            ino: 0,
            partial: Vec::new(),
            want,
            skipped: 0,
        };
        t.seek(want);
        t
    }

    /// The seq of the next record returned.
    pub fn want(&self) -> u64 {
        self.want
    }

    /// Records found missing since the last call.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// Goes (back or forth) to record `want`: opens the file that holds it
    /// (the newest whose first record is not after it).
    pub fn seek(&mut self, want: u64) {
        self.want = want;
        self.partial.clear();
        self.reader = None;
        let files = discover(&self.base).unwrap_or_else(|_| vec![self.base.clone()]);
        let mut chosen = None;
        for f in &files {
            match first_seq(f) {
                Some(s) if s <= want => chosen = Some(f.clone()),
                Some(_) => {
                    if chosen.is_none() {
                        // Everything from `want` on was rotated away up
                        // to here: begin with the oldest there is.
                        chosen = Some(f.clone());
                    }
                    break;
                }
                None => {}
            }
        }
        let Some(path) = chosen.or_else(|| files.last().cloned()) else {
            return;
        };
        if let Ok(file) = File::open(&path) {
            self.ino = file.metadata().map_or(0, |m| m.ino());
            self.reader = Some(BufReader::with_capacity(1 << 16, file));
        }
    }

    /// The next record (seq, line without its newline); `None` when there
    /// is none yet.
    pub fn next_record(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        loop {
            if self.reader.is_none() {
                self.seek(self.want);
                if self.reader.is_none() {
                    return Ok(None);
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            reader.read_until(b'\n', &mut self.partial)?;
            if !self.partial.ends_with(b"\n") {
                // The end of this file for now. Rotated? Then what is left
                // of it is final: read it to its end, then go on in the
                // file holding the next record.
                if ino_of(&self.base) == Some(self.ino) {
                    return Ok(None);
                }
                reader.read_until(b'\n', &mut self.partial)?;
                if !self.partial.ends_with(b"\n") {
                    let old = self.ino;
                    self.seek(self.want);
                    if self.ino == old {
                        // The next file is not there yet.
                        return Ok(None);
                    }
                    continue;
                }
            }
            let line = std::mem::take(&mut self.partial);
            let body = &line[..line.len() - 1];
            let Ok(d) = decode_line(body) else {
                tracing::warn!(
                    "audit shipping: skipping a line of {} that is not an audit record",
                    self.base.display()
                );
                continue;
            };
            if d.seq < self.want {
                continue;
            }
            if d.seq > self.want {
                self.skipped += d.seq - self.want;
            }
            self.want = d.seq + 1;
            return Ok(Some((d.seq, body.to_vec())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, AuditWriter};

    #[derive(serde::Serialize)]
    struct Rec {
        n: u64,
        pad: String,
    }

    #[test]
    fn follows_appends_and_rotations_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::open(
            &base,
            AuditOptions {
                max_bytes: 2000,
                keep: 100,
                node: "n".into(),
                key: None,
            },
        )
        .unwrap();
        let rec = |n| Rec {
            n,
            pad: "x".repeat(100),
        };
        for n in 0..30 {
            w.append(&rec(n)).unwrap();
        }
        let mut t = Tail::open(&base, 5);
        let mut seen = Vec::new();
        while let Some((seq, _)) = t.next_record().unwrap() {
            seen.push(seq);
        }
        // Appends and rotations while reading.
        for n in 30..60 {
            w.append(&rec(n)).unwrap();
            if n % 7 == 0 {
                while let Some((seq, _)) = t.next_record().unwrap() {
                    seen.push(seq);
                }
            }
        }
        while let Some((seq, _)) = t.next_record().unwrap() {
            seen.push(seq);
        }
        let last = w.head().unwrap().seq;
        assert!(discover(&base).unwrap().len() > 3, "rotated");
        assert_eq!(seen, (5..=last).collect::<Vec<_>>());
        // Back to an earlier seq.
        t.seek(2);
        assert_eq!(t.next_record().unwrap().map(|r| r.0), Some(2));
        assert_eq!(t.take_skipped(), 0);
    }
}
