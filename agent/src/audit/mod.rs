//! The audit log: an append-only, hash-chained JSON-lines file of every
//! event record, that `envfence audit verify` checks.
//!
//! # Format
//!
//! One JSON object per line. An event line is the event record
//! ([`crate::events::EventRecord`]) with three more fields:
//!
//! ```text
//! {"seq":41,"prev":"<64 hex>","time":"…","node":"…",…,"bytes":74,"hash":"<64 hex>"}
//! ```
//!
//! - `seq`: the record's place in the chain, 0 for the first record ever,
//!   +1 for each record, across rotated files and agent restarts.
//! - `prev`: the `hash` of the record before it ([`GENESIS`], 64 zeros, for
//!   seq 0).
//! - `hash`: hex SHA-256 of the line's own bytes without the hash field,
//!   i.e. of the line cut before `,"hash":"` and closed with `}`. So the hash
//!   covers `seq`, `prev` and every byte of the content, and each record
//!   commits to every record before it.
//!
//! Besides event lines, the chain holds a few meta records, told apart by an
//! `"audit"` field: `file_start` (the first line of every file: a file that
//! does not begin with one lost its beginning), `gap` (the agent could not
//! write N records, e.g. a full disk; written as soon as it can write again,
//! so a hole in the log is never silent) and `change` (a policy load,
//! reload, refused file or adoption, agent start and stop: see
//! [`change`]).
//!
//! With a key (`--audit-key FILE`), `hash` is the HMAC-SHA256 of the same
//! bytes instead of their SHA-256, and every `file_start` says
//! `"mac":"hmac-sha256"`: rewriting the chain consistently then needs the
//! key.
//!
//! # Files
//!
//! `FILE` is the file being written. With a size limit, when the next line
//! would make it larger, it is renamed to `FILE.1` (`FILE.1` to `FILE.2` …,
//! keeping `keep` rotated files; the oldest is deleted) and a new `FILE`
//! begins with a `file_start` record that chains to the last record of
//! `FILE.1`: the chain is unbroken across files.
//!
//! `FILE.head` holds the seq and hash of the last record written,
//! rewritten in place after every record. A chain alone cannot tell that
//! whole records were cut from its end; the head can: `verify` requires the
//! chain to reach the head's record.
//!
//! # Durability
//!
//! Each record is one `write(2)` on an `O_APPEND` file descriptor (nothing
//! is buffered in the agent: a crashed agent loses no record it reported),
//! then the head is updated. Data are `fdatasync`ed when a file is rotated
//! and when the agent exits, not per record (that would bound the event rate
//! by the disk's flush latency): a power loss can cost the records of the
//! last seconds, which `verify` then reports as a truncation.
//!
//! # What is detected
//!
//! Editing any byte of a record (its hash no longer matches), deleting
//! records (a seq is missing), reordering or duplicating them (a seq goes
//! back), truncating a record (a line that is not a complete record),
//! cutting records from the start of a file (no `file_start`) or from the
//! end of the chain (the head names a record that is not there). Not
//! detected by the files alone: someone who rewrites the whole chain from
//! some record on and the head with it, when the hashes are not keyed. What
//! makes that visible: the key; the SIEM's copy ([`ship`]); and the anchors,
//! the head exported as metrics ([`metrics`]) that Prometheus keeps off the
//! node, which `envfence audit verify --anchors URL` checks.

mod chain;
pub mod change;
mod head;
pub mod key;
pub mod metrics;
mod shared;
pub mod ship;
pub(crate) mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use chain::{
    decode_line, decode_line_with, Decoded, LineError, MetaKind, GENESIS, RESERVED_FIELDS,
};
pub use head::{head_path, Head};
pub use key::{ChainKey, KeyError};
pub use shared::SharedAudit;
pub use verify::{
    discover, order_by_first_seq, verify_files, Anchor, Break, HeadCheck, Problem, VerifyOptions,
    VerifyReport,
};
pub use writer::{rotated_path, AuditOptions, AuditWriter};

/// Errors of the audit log writer and of reading audit files.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding an audit record failed: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: not an audit head file ({reason})")]
    BadHead {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl AuditError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
        move |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
