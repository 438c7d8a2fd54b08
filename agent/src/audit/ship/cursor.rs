//! `FILE.shipped`: the last seq the receiver confirmed having read, so that
//! a restarted agent resumes shipping after it (at-least-once).

use std::path::{Path, PathBuf};

const MAGIC: &str = "envfence-audit-shipped v1";

/// `FILE.shipped` for the audit file `FILE`.
pub fn cursor_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".shipped");
    PathBuf::from(name)
}

/// Reads the cursor: `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<u64>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let seq = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.trim().strip_prefix("seq="))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "{}: not a shipping cursor (expected {MAGIC:?} seq=N)",
                path.display()
            )
        })?;
    Ok(Some(seq))
}

/// Writes the cursor atomically (a temporary file renamed over it).
pub fn write(path: &Path, seq: u64) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{MAGIC} seq={seq}\n"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = cursor_path(&dir.path().join("audit.jsonl"));
        assert_eq!(read(&p), Ok(None));
        write(&p, 41).unwrap();
        assert_eq!(read(&p), Ok(Some(41)));
        std::fs::write(&p, "garbage").unwrap();
        assert!(read(&p).unwrap_err().contains("not a shipping cursor"));
    }
}
