//! `FILE.head`: the seq and hash of the last record written, so that records
//! cut from the end of the chain are detected.

use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use super::AuditError;

const MAGIC: &str = "envfence-audit-head v1";

/// The last record of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// `FILE.head` for the audit file `FILE`.
pub fn head_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

impl Head {
    /// One fixed-length line (seq zero-padded), so that rewriting it in
    /// place always covers the previous content.
    pub fn encode(&self) -> String {
        format!("{MAGIC} seq={:020} hash={}\n", self.seq, self.hash)
    }

    pub fn parse(text: &str) -> Result<Head, String> {
        let rest = text
            .strip_prefix(MAGIC)
            .ok_or_else(|| format!("it does not start with {MAGIC:?}"))?;
        let mut seq = None;
        let mut hash = None;
        for field in rest.split_whitespace() {
            if let Some(v) = field.strip_prefix("seq=") {
                seq = Some(v.parse::<u64>().map_err(|e| format!("seq {v:?}: {e}"))?);
            } else if let Some(v) = field.strip_prefix("hash=") {
                if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("hash {v:?} is not 64 hex digits"));
                }
                hash = Some(v.to_ascii_lowercase());
            } else {
                return Err(format!("unknown field {field:?}"));
            }
        }
        Ok(Head {
            seq: seq.ok_or("no seq")?,
            hash: hash.ok_or("no hash")?,
        })
    }

    /// Reads a head file; `None` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<Head>, AuditError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Head::parse(&text)
                .map(Some)
                .map_err(|reason| AuditError::BadHead {
                    path: path.to_path_buf(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AuditError::io(path)(e)),
        }
    }
}

/// The head file, open for rewriting in place.
pub(crate) struct HeadFile {
    path: PathBuf,
    file: File,
    /// Whether the file's length was set since it was opened.
    sized: bool,
}

impl HeadFile {
    pub(crate) fn open(path: PathBuf) -> Result<Self, AuditError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(AuditError::io(&path))?;
        Ok(Self {
            path,
            file,
            sized: false,
        })
    }

    pub(crate) fn write(&mut self, head: &Head) -> Result<(), AuditError> {
        let text = head.encode();
        self.file
            .write_all_at(text.as_bytes(), 0)
            .map_err(AuditError::io(&self.path))?;
        if !self.sized {
            // Same length every time: only what was there before we opened
            // it can be longer.
            self.file
                .set_len(text.len() as u64)
                .map_err(AuditError::io(&self.path))?;
            self.sized = true;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(AuditError::io(&self.path))
    }
}
