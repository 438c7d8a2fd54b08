//! The optional key of a keyed chain: records hashed with HMAC-SHA256
//! instead of SHA-256, so that rewriting the chain consistently needs the
//! key (kept in a file, e.g. a Kubernetes Secret).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// What a keyed chain's `file_start` records say in their `mac` field.
pub const MAC_NAME: &str = "hmac-sha256";

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{setting} {path}: cannot read the key file: {error}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{setting} {path}: the key is {len} byte(s); at least {MIN_KEY_BYTES} are needed (e.g. `openssl rand -hex 32 > {path}`)")]
    TooShort {
        setting: &'static str,
        path: PathBuf,
        len: usize,
    },
}

/// An HMAC-SHA256 key.
#[derive(Clone)]
pub struct ChainKey {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey({} bytes)", self.bytes.len())
    }
}

impl ChainKey {
    /// A key of these bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(bytes: Vec<u8>) -> Option<ChainKey> {
        (bytes.len() >= MIN_KEY_BYTES).then_some(ChainKey { bytes })
    }

    /// Reads the key: the file's bytes, one final newline (`\n` or `\r\n`)
    /// removed. `setting` names the option in errors (`--audit-key`).
    pub fn read(path: &Path, setting: &'static str) -> Result<ChainKey, KeyError> {
        let mut bytes = std::fs::read(path).map_err(|error| KeyError::Read {
            setting,
            path: path.to_path_buf(),
            error,
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let len = bytes.len();
        ChainKey::new(bytes).ok_or_else(|| KeyError::TooShort {
            setting,
            path: path.to_path_buf(),
            len,
        })
    }

    /// Hex HMAC-SHA256 of `body`.
    pub fn mac(&self, body: &[u8]) -> String {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.bytes) {
            Ok(mut m) => {
                m.update(body);
                hex::encode(m.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }
}
