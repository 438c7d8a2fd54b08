//! Encoding and decoding one chained line.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::key::ChainKey;

/// `prev` of the first record ever (seq 0): 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What precedes the hash at the end of every line.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// Length of `,"hash":"<64 hex>"}`.
const SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// Field names the chain adds to a record; content must not use them.
pub const RESERVED_FIELDS: [&str; 4] = ["seq", "prev", "hash", "audit"];

#[derive(Serialize)]
struct Chained<'a, T: Serialize> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    content: &'a T,
}

/// The hash of a record's body: SHA-256, or HMAC-SHA256 with a key.
pub(crate) fn digest(body: &[u8], key: Option<&ChainKey>) -> String {
    match key {
        Some(k) => k.mac(body),
        None => hex::encode(Sha256::digest(body)),
    }
}

/// Encodes `content` (which must serialize as a JSON object) as the record
/// `seq` chained to `prev`. Returns the line (newline included) and its
/// hash (keyed with `key`).
pub(crate) fn encode<T: Serialize>(
    seq: u64,
    prev: &str,
    content: &T,
    key: Option<&ChainKey>,
) -> Result<(Vec<u8>, String), serde_json::Error> {
    let mut line = serde_json::to_vec(&Chained { seq, prev, content })?;
    let hash = digest(&line, key);
    // `line` is a JSON object with at least `seq` and `prev`: it ends in `}`.
    line.pop();
    line.extend_from_slice(HASH_KEY);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

/// A meta record's kind (the `audit` field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaKind {
    /// The first record of every file.
    FileStart,
    /// The writer could not write `missed` records before this one.
    Gap { missed: u64 },
    /// A policy or agent change (`change`: load, reload, refused, adopt,
    /// start, stop).
    Change { change: String },
    /// A kind this version does not know.
    Other(String),
}

/// One line, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub seq: u64,
    pub prev: String,
    /// The hash the line carries.
    pub hash: String,
    /// The hash of the line's content, computed now.
    pub computed: String,
    /// `None` for an event record.
    pub meta: Option<MetaKind>,
}

impl Decoded {
    /// Whether the stored hash is the hash of the content.
    pub fn hash_ok(&self) -> bool {
        self.hash == self.computed
    }
}

/// Why a line is not an audit record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("it does not end with a \"hash\" field of 64 hex digits")]
    NoHash,
    #[error("it is not a JSON object: {0}")]
    BadJson(String),
    #[error("field {0:?} is missing or malformed")]
    BadField(&'static str),
}

fn is_hex64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decodes one line (without its newline) and recomputes its (unkeyed)
/// hash.
pub fn decode_line(line: &[u8]) -> Result<Decoded, LineError> {
    decode_line_with(line, None)
}

/// Decodes one line (without its newline) and recomputes its hash, keyed
/// with `key` when given.
pub fn decode_line_with(line: &[u8], key: Option<&ChainKey>) -> Result<Decoded, LineError> {
    let n = line.len();
    if n < SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(LineError::NoHash);
    }
    let cut = n - SUFFIX_LEN;
    let (body_head, suffix) = line.split_at(cut);
    if !suffix.starts_with(HASH_KEY) {
        return Err(LineError::NoHash);
    }
    let hash = &suffix[HASH_KEY.len()..HASH_KEY.len() + 64];
    if !is_hex64(hash) {
        return Err(LineError::NoHash);
    }
    let mut body = Vec::with_capacity(cut + 1);
    body.extend_from_slice(body_head);
    body.push(b'}');
    let computed = digest(&body, key);
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| LineError::BadJson(e.to_string()))?;
    let seq = object
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or(LineError::BadField("seq"))?;
    let prev = object
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .filter(|p| is_hex64(p.as_bytes()))
        .ok_or(LineError::BadField("prev"))?
        .to_owned();
    let meta = match object.get("audit") {
        None => None,
        Some(serde_json::Value::String(kind)) => Some(match kind.as_str() {
            "file_start" => MetaKind::FileStart,
            "gap" => MetaKind::Gap {
                missed: object
                    .get("missed")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or(LineError::BadField("missed"))?,
            },
            "change" => MetaKind::Change {
                change: object
                    .get("change")
                    .and_then(serde_json::Value::as_str)
                    .ok_or(LineError::BadField("change"))?
                    .to_owned(),
            },
            other => MetaKind::Other(other.to_owned()),
        }),
        Some(_) => return Err(LineError::BadField("audit")),
    };
    Ok(Decoded {
        seq,
        prev,
        // Checked to be ASCII hex above.
        hash: String::from_utf8_lossy(hash).into_owned(),
        computed,
        meta,
    })
}
