//! Forging an audit log the way an attacker with write access to the files
//! would: the whole chain rewritten consistently (content edited, every
//! `prev` and `hash` recomputed, the head file rewritten), so that the
//! files alone verify. What the off-node defences must catch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use envfence::audit::{decode_line, Head, GENESIS};
use sha2::{Digest, Sha256};

/// A keyed hash of a record's body (hex).
pub type Mac = dyn Fn(&[u8]) -> String;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrites `files` (oldest first) and `head` in place: every record's
/// `time` and every event's `dport` change, and the chain is recomputed with plain SHA-256, or
/// with `hmac` (a function of the body) when given.
pub fn rewrite_chain(files: &[PathBuf], head: &Path, hmac: Option<&Mac>) -> Result<()> {
    let mut prev = GENESIS.to_owned();
    let mut last = None;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let seq = decode_line(line.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
                .seq;
            let cut = line
                .rfind(",\"hash\":\"")
                .context("a record ends with its hash")?;
            let body = &line[..cut];
            let at = body.find("\"prev\":\"").context("a record has a prev")? + 8;
            let mut body = format!("{}{}{}", &body[..at], prev, &body[at + 64..]);
            // Every record's time (a year earlier), and every event's port.
            body = body.replacen("\"time\":\"2", "\"time\":\"1", 1);
            body = body.replacen("\"dport\":", "\"dport\":1", 1);
            body.push('}');
            let hash = match hmac {
                Some(mac) => mac(body.as_bytes()),
                None => hex(&Sha256::digest(body.as_bytes())),
            };
            body.pop();
            out.push_str(&format!("{body},\"hash\":\"{hash}\"}}\n"));
            prev = hash;
            last = Some(seq);
        }
        std::fs::write(f, out)?;
    }
    if let Some(seq) = last {
        std::fs::write(head, Head { seq, hash: prev }.encode())?;
    }
    Ok(())
}
