//! RFC 5424 messages in RFC 6587 octet-counting frames: `LEN SP MSG`.

/// Facility 13 (log audit), severity 6 (informational).
pub const PRI: u8 = 13 * 8 + 6;
/// Private enterprise number of the structured data id (RFC 5612's
/// number for documentation examples).
pub const SD_ID: &str = "envfence@32473";

/// A HOSTNAME or APP-NAME field: printable US-ASCII without spaces, at most
/// `max` characters; `-` when empty.
pub fn header_field(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".to_owned()
    } else {
        clean
    }
}

/// The frame of one audit record (`line` without its newline): the record
/// is the MSG, unchanged, so that the receiver's copy verifies.
pub fn frame(line: &[u8], seq: u64, timestamp: &str, hostname: &str) -> Vec<u8> {
    let head = format!("<{PRI}>1 {timestamp} {hostname} envfence - audit [{SD_ID} seq=\"{seq}\"] ");
    let len = head.len() + line.len();
    let mut out = Vec::with_capacity(len + 12);
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_counted_rfc5424() {
        let f = frame(b"{\"seq\":7}", 7, "2026-12-02T07:00:00.000000Z", "node-1");
        let text = String::from_utf8(f).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<110>1 2026-12-02T07:00:00.000000Z node-1 envfence - audit [envfence@32473 seq=\"7\"] {\"seq\":7}"
        );
        assert_eq!(header_field("a b\u{e9}c", 255), "abc");
        assert_eq!(header_field("", 255), "-");
    }
}
