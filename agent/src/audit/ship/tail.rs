//! Reading the audit file set in seq order from any seq, following the
//! writer: across rotations (FILE -> FILE.1 …) and as records are appended.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::audit::{decode_line, discover, verify::first_seq_of};

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

/// How often [`Tail::seek`] looks again while the files are being rotated.
const SEEK_TRIES: usize = 100;

/// The audit files (oldest first, as [`discover`] lists them) with their
/// inodes (0 for one that is gone already).
fn listing(base: &Path) -> Vec<(PathBuf, u64)> {
    discover(base)
        .unwrap_or_else(|_| vec![base.to_path_buf()])
        .into_iter()
        .map(|p| {
            let ino = ino_of(&p).unwrap_or(0);
            (p, ino)
        })
        .collect()
}

/// Opens the file of `files` that holds record `want`: the newest whose
/// first record is not after it; `true` with it when it is one (it may end
/// before `want`: the reader then goes on to the next file).
///
/// The writer may rotate while we look (FILE.1 -> FILE.2, FILE -> FILE.1,
/// a new FILE): a name can hold a newer file by the time it is opened,
/// never an older one. So each file is judged by what the *opened* file
/// begins with, newest first; a name that now holds a newer file is passed
/// over. (Judged by name and opened afterwards, a rotation in between made
/// the shipper open the newer file and skip a whole file of records.)
///
/// When every file begins after `want` (it was rotated away, or moved
/// under a name this listing lacks), the oldest there is, `false`; when no
/// file has a record yet, the current one, `false`.
fn open_holding(files: &[(PathBuf, u64)], want: u64) -> Option<(File, bool)> {
    let mut oldest_after = None;
    let mut current = None;
    for (path, _) in files.iter().rev() {
        let Ok(file) = File::open(path) else { continue };
        match first_seq_of(&file) {
            Some(s) if s <= want => return rewound(file).map(|f| (f, true)),
            Some(_) => oldest_after = Some(file),
            None => {
                if current.is_none() {
                    current = Some(file);
                }
            }
        }
    }
    oldest_after
        .or(current)
        .and_then(rewound)
        .map(|f| (f, false))
}

/// `file` with its offset back at the start.
fn rewound(mut file: File) -> Option<File> {
    file.seek(SeekFrom::Start(0)).ok()?;
    Some(file)
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
    ///
    /// A file that begins at or before `want` is right at once (see
    /// [`open_holding`]). Any other answer — every file begins after `want`,
    /// or there is none — is only taken from a listing that did not change
    /// while we looked: a rotation in between can move the file that holds
    /// `want` to a name the listing does not have yet.
    pub fn seek(&mut self, want: u64) {
        self.want = want;
        self.partial.clear();
        self.reader = None;
        let mut found = None;
        for _ in 0..SEEK_TRIES {
            let files = listing(&self.base);
            let opened = open_holding(&files, want);
            let holds = opened.as_ref().is_some_and(|(_, holds)| *holds);
            found = opened.map(|(file, _)| file);
            if holds || listing(&self.base) == files {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(file) = found {
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

    fn writer(base: &Path, max_bytes: u64) -> AuditWriter {
        AuditWriter::open(
            base,
            AuditOptions {
                max_bytes,
                keep: 1000,
                node: "n".into(),
                key: None,
            },
        )
        .unwrap()
    }

    /// A listing made before a rotation: the listed name of the file that
    /// holds the record now holds a newer file; the record is still found,
    /// under the file's new name.
    #[test]
    fn a_stale_listing_still_finds_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("audit.jsonl");
        let mut w = writer(&base, 2000);
        let rec = |n| Rec {
            n,
            pad: "x".repeat(100),
        };
        for n in 0..30 {
            w.append(&rec(n)).unwrap();
        }
        let stale = listing(&base);
        let want = crate::audit::verify::first_seq(&base).unwrap();
        let files_before = stale.len();
        let mut n = 30;
        while discover(&base).unwrap().len() < files_before + 2 {
            w.append(&rec(n)).unwrap();
            n += 1;
        }
        assert!(crate::audit::verify::first_seq(&base).unwrap() > want);
        let (file, holds) = open_holding(&stale, want).expect("a file");
        assert!(holds);
        let first = first_seq_of(&file).unwrap();
        assert!(
            first <= want,
            "opened a file beginning at {first} for {want}"
        );
        let mut t = Tail::open(&base, want);
        assert_eq!(t.next_record().unwrap().map(|r| r.0), Some(want));
        assert_eq!(t.take_skipped(), 0);
    }

    /// Seeking back while the writer rotates every few records never
    /// skips a record that is still on disk (it once skipped a whole file
    /// when a rotation fell between looking at a file and opening it).
    #[test]
    fn seeking_back_during_rotations_never_skips() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("audit.jsonl");
        let mut w = writer(&base, 1500);
        let head = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let writing = {
            let (head, done) = (Arc::clone(&head), Arc::clone(&done));
            std::thread::spawn(move || {
                for n in 0..1_500u64 {
                    w.append(&Rec {
                        n,
                        pad: "y".repeat(100),
                    })
                    .unwrap();
                    head.store(w.head().unwrap().seq, Ordering::Relaxed);
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        let mut t = Tail::open(&base, 0);
        let (mut seeks, mut k) = (0u64, 7u64);
        while !done.load(Ordering::Relaxed) {
            let h = head.load(Ordering::Relaxed);
            // 0..40 records back: always within the kept files.
            k = (k * 7919 + 104_729) % 1_000_003;
            let want = h.saturating_sub(k % 40);
            t.seek(want);
            if let Some((seq, _)) = t.next_record().unwrap() {
                assert_eq!(seq, want, "seek {seeks}: asked for {want}");
                seeks += 1;
            }
            assert_eq!(t.take_skipped(), 0, "seek {seeks}: skipped records");
        }
        writing.join().unwrap();
        assert!(seeks > 100, "only {seeks} seeks");
    }
}
