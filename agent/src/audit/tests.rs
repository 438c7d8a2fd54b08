//! Unit tests of the audit trail: writing, rotation, the hash chain and its
//! verification, and tampering found by `verify`.

use std::path::{Path, PathBuf};

use super::*;
use crate::events::EventRecord;

fn event(i: u64) -> EventRecord {
    EventRecord {
        time: format!("2026-11-23T02:16:{:02}.112Z", i % 60),
        node: "node-1".into(),
        interface: "veth-test1".into(),
        ifindex: 3,
        direction: "ingress".into(),
        family: "ipv4".into(),
        proto: "udp".into(),
        src: "10.30.1.2".parse().unwrap(),
        sport: 40000 + (i % 1000) as u16,
        dst: "10.10.1.2".parse().unwrap(),
        dport: 9000,
        src_env: "test".into(),
        dst_env: "production".into(),
        verdict: "drop".into(),
        rule: "test-to-prod".into(),
        packets: 1 + i,
        bytes: 74 * (1 + i),
        source_check: None,
    }
}

fn opts(max_bytes: u64, keep: usize) -> AuditOptions {
    AuditOptions {
        max_bytes,
        keep,
        node: "node-1".into(),
        key: None,
    }
}

/// Writes `n` event records to `dir/audit.jsonl`; returns the base path.
fn write_log(dir: &Path, n: u64, max_bytes: u64, keep: usize) -> PathBuf {
    let base = dir.join("audit.jsonl");
    let mut w = AuditWriter::open(&base, opts(max_bytes, keep)).unwrap();
    for i in 0..n {
        w.append(&event(i)).unwrap();
    }
    w.sync().unwrap();
    base
}

fn verify(base: &Path) -> VerifyReport {
    let files = discover(base).unwrap();
    verify_files(
        &files,
        &VerifyOptions {
            head: Some(head_path(base)),
            ..VerifyOptions::default()
        },
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn broken(report: &VerifyReport) -> &Break {
    report
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("expected a break: {report:?}"))
}

#[test]
fn records_carry_the_event_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 3, 0, 3);
    let l = lines(&base);
    assert_eq!(l.len(), 4, "file_start + 3 events");
    let first: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(first["audit"], "file_start");
    assert_eq!(first["seq"], 0);
    assert_eq!(first["prev"], GENESIS);
    for (i, line) in l.iter().enumerate().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let prev: serde_json::Value = serde_json::from_str(&l[i - 1]).unwrap();
        assert_eq!(v["seq"], i as u64);
        assert_eq!(v["prev"], prev["hash"]);
        // The event record's fields are all there, unchanged.
        let rec: EventRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(rec, event(i as u64 - 1));
        // The hash is SHA-256 of the line without its hash field.
        let hash = v["hash"].as_str().unwrap();
        let body = line.replace(&format!(",\"hash\":\"{hash}\""), "");
        use sha2::Digest as _;
        assert_eq!(hex::encode(sha2::Sha256::digest(body.as_bytes())), hash);
    }
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.records, r.events), (4, 3));
    assert_eq!(r.head, Some(HeadCheck::Matches { seq: 3 }));
    assert!(r.from_genesis);
}

#[test]
fn event_records_do_not_use_the_chain_fields() {
    let v = serde_json::to_value(event(0)).unwrap();
    for f in super::chain::RESERVED_FIELDS {
        assert!(v.get(f).is_none(), "EventRecord has a field {f:?}");
    }
}

#[test]
fn an_edited_field_is_found_at_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let mut l = lines(&base);
    l[5] = l[5].replace("\"verdict\":\"drop\"", "\"verdict\":\"allow\"");
    write_lines(&base, &l);
    let r = verify(&base);
    let b = broken(&r);
    assert_eq!((b.line, b.seq), (6, Some(5)));
    assert!(matches!(b.problem, Problem::HashMismatch { .. }), "{b}");
    assert_eq!(r.records, 5, "records before the break");
}

#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let mut l = lines(&base);
    // Rewrite record 4 consistently (new content, its own valid hash).
    let d = decode_line(l[4].as_bytes()).unwrap();
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&l[4]).unwrap();
    v.remove("hash");
    v.insert("packets".into(), 999.into());
    let rec: EventRecord = serde_json::from_value(v.into()).unwrap();
    let (line, _) = super::chain::encode(d.seq, &d.prev, &rec, None).unwrap();
    l[4] = String::from_utf8(line).unwrap().trim_end().to_owned();
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (6, Some(5)), "{b}");
    assert!(matches!(b.problem, Problem::PrevMismatch { .. }), "{b}");
}

#[test]
fn a_deleted_record_is_found_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let mut l = lines(&base);
    l.remove(3);
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (4, Some(4)), "{b}");
    assert_eq!(
        b.problem,
        Problem::Missing {
            expected: 3,
            found: 4
        }
    );
}

#[test]
fn swapped_records_are_found_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let mut l = lines(&base);
    l.swap(6, 7);
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (7, Some(7)), "{b}");
    assert_eq!(
        b.problem,
        Problem::Reordered {
            expected: 6,
            found: 7,
            line: 8
        }
    );
    // A record moved back (duplicated or moved later) reads as out of order.
    let mut l = lines(&base);
    l.swap(6, 7);
    let dup = l[3].clone();
    l.insert(5, dup);
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (6, Some(3)), "{b}");
    assert_eq!(
        b.problem,
        Problem::OutOfOrder {
            expected: 5,
            found: 3
        }
    );
}

#[test]
fn truncation_mid_record_and_at_the_end_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let full = std::fs::read(&base).unwrap();
    // Mid-record: cut inside the last line.
    std::fs::write(&base, &full[..full.len() - 30]).unwrap();
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (11, Some(10)), "{b}");
    assert_eq!(b.problem, Problem::Truncated);
    // Whole records cut from the end: only the head can tell.
    std::fs::write(&base, &full).unwrap();
    let mut l = lines(&base);
    l.truncate(8);
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!(b.line, 9, "{b}");
    assert_eq!(
        b.problem,
        Problem::EndsBeforeHead {
            head_seq: 10,
            last_seq: Some(7)
        }
    );
    // Without the head the same file verifies (and says the end is
    // unchecked).
    let r = verify_files(&discover(&base).unwrap(), &VerifyOptions::default());
    assert!(r.ok());
    assert_eq!(r.head, Some(HeadCheck::NotChecked));
    // Emptied: no file_start.
    std::fs::write(&base, b"").unwrap();
    assert_eq!(broken(&verify(&base)).problem, Problem::EmptyFile);
}

#[test]
fn records_cut_from_the_beginning_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let mut l = lines(&base);
    l.drain(..3);
    write_lines(&base, &l);
    let b = broken(&verify(&base)).clone();
    assert_eq!((b.line, b.seq), (1, Some(3)));
    assert_eq!(b.problem, Problem::NoFileStart);
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 200, 4096, 100);
    let files = discover(&base).unwrap();
    assert!(files.len() > 5, "{files:?}");
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 4096,
            "{}",
            f.display()
        );
        let first: serde_json::Value = serde_json::from_str(&lines(f)[0]).unwrap();
        assert_eq!(first["audit"], "file_start", "{}", f.display());
    }
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.events, 200);
    assert_eq!(r.records, 200 + files.len() as u64);
    // Files given in any order are put back in chain order.
    let mut shuffled = files.clone();
    shuffled.reverse();
    assert_eq!(order_by_first_seq(&shuffled), files);
    // A rotated file deleted from the middle: found at the next file.
    std::fs::remove_file(&files[2]).unwrap();
    let mut rest = files.clone();
    rest.remove(2);
    let b = broken(&verify_files(
        &rest,
        &VerifyOptions {
            head: Some(head_path(&base)),
            ..VerifyOptions::default()
        },
    ))
    .clone();
    assert_eq!((b.file.clone(), b.line), (files[3].clone(), 1), "{b}");
    assert!(matches!(b.problem, Problem::Missing { .. }), "{b}");
}

#[test]
fn rotation_drops_the_oldest_and_the_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 200, 4096, 2);
    let files = discover(&base).unwrap();
    assert_eq!(
        files,
        vec![rotated_path(&base, 2), rotated_path(&base, 1), base.clone()]
    );
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert!(!r.from_genesis);
    assert!(r.first_seq.unwrap() > 0);
}

#[test]
fn a_reopened_log_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 5, 0, 3);
    let mut w = AuditWriter::open(&base, opts(0, 3)).unwrap();
    assert_eq!(w.next_seq(), 6);
    w.append(&event(5)).unwrap();
    drop(w);
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.records, r.events), (7, 6));
    assert_eq!(lines(&base).len(), 7, "one file_start only");
    // The file removed (the head remains): a new file chains to the head.
    let old = lines(&base);
    std::fs::rename(&base, rotated_path(&base, 1)).unwrap();
    let mut w = AuditWriter::open(&base, opts(0, 3)).unwrap();
    w.append(&event(6)).unwrap();
    drop(w);
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.events, 7);
    assert_eq!(lines(&rotated_path(&base, 1)), old);
}

#[test]
fn a_damaged_log_is_set_aside_and_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 5, 0, 3);
    let full = std::fs::read(&base).unwrap();
    std::fs::write(&base, &full[..full.len() - 10]).unwrap();
    let damaged = std::fs::read(&base).unwrap();
    let mut w = AuditWriter::open(&base, opts(0, 3)).unwrap();
    w.append(&event(5)).unwrap();
    drop(w);
    assert_eq!(std::fs::read(rotated_path(&base, 1)).unwrap(), damaged);
    let b = broken(&verify(&base)).clone();
    assert_eq!(
        (b.file, b.line, b.problem),
        (rotated_path(&base, 1), 6, Problem::Truncated)
    );
}

#[test]
fn failed_writes_leave_no_partial_line_and_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&base, opts(0, 3)).unwrap();
    w.append(&event(0)).unwrap();
    w.fail_writes = 2;
    assert!(w.append(&event(1)).is_err());
    assert!(w.append(&event(2)).is_err());
    assert_eq!(w.missed(), 2);
    w.append(&event(3)).unwrap();
    drop(w);
    let r = verify(&base);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.gaps, vec![(2, 2)]);
    assert_eq!(r.events, 2);
    let l = lines(&base);
    let gap: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
    assert_eq!(gap["audit"], "gap");
    assert_eq!(gap["missed"], 2);
}

#[test]
fn head_files_round_trip_and_reject_garbage() {
    let h = Head {
        seq: 42,
        hash: "ab".repeat(32),
    };
    assert_eq!(Head::parse(&h.encode()).unwrap(), h);
    assert_eq!(
        h.encode().len(),
        Head {
            seq: u64::MAX,
            hash: h.hash.clone()
        }
        .encode()
        .len()
    );
    assert!(Head::parse("garbage").is_err());
    assert!(Head::parse("envfence-audit-head v1 seq=1 hash=xyz").is_err());
}

#[test]
fn lines_that_are_not_records_are_rejected() {
    assert_eq!(decode_line(b"{}"), Err(LineError::NoHash));
    assert_eq!(decode_line(b"hello"), Err(LineError::NoHash));
    let (line, _) = super::chain::encode(0, GENESIS, &event(0), None).unwrap();
    let line = &line[..line.len() - 1];
    assert!(decode_line(line).unwrap().hash_ok());
    let no_brace = String::from_utf8_lossy(line).replacen('{', "[", 1);
    assert!(matches!(
        decode_line(no_brace.as_bytes()),
        Err(LineError::BadJson(_))
    ));
}

fn keyed(max_bytes: u64, key: &ChainKey) -> AuditOptions {
    AuditOptions {
        key: Some(key.clone()),
        ..opts(max_bytes, 3)
    }
}

#[test]
fn a_keyed_chain_needs_its_key_and_an_unkeyed_rewrite_fails() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("audit.jsonl");
    let key = ChainKey::new(b"0123456789abcdef0123".to_vec()).unwrap();
    let mut w = AuditWriter::open(&base, keyed(0, &key)).unwrap();
    for i in 0..5 {
        w.append(&event(i)).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    assert!(lines(&base)[0].contains("\"mac\":\"hmac-sha256\""));
    let files = discover(&base).unwrap();
    let with = |key: Option<ChainKey>| {
        verify_files(
            &files,
            &VerifyOptions {
                head: Some(head_path(&base)),
                key,
                ..VerifyOptions::default()
            },
        )
    };
    assert!(
        with(Some(key.clone())).ok(),
        "{:?}",
        with(Some(key.clone()))
    );
    assert_eq!(broken(&with(None)).problem, Problem::NeedsKey);
    let other = ChainKey::new(b"another key, 16+ bytes".to_vec()).unwrap();
    assert!(matches!(
        broken(&with(Some(other))).problem,
        Problem::HashMismatch { .. }
    ));
    // Rewritten without the key (a consistent unkeyed chain and head):
    // verifies unkeyed, fails with the key at its first record.
    let forged = dir.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let fbase = write_log(&forged, 5, 0, 3);
    let r = verify_files(
        &discover(&fbase).unwrap(),
        &VerifyOptions {
            head: Some(head_path(&fbase)),
            key: Some(key),
            ..VerifyOptions::default()
        },
    );
    let b = broken(&r);
    assert_eq!((b.line, b.seq), (1, Some(0)));
    assert!(matches!(b.problem, Problem::HashMismatch { .. }));
}

#[test]
fn a_siem_copy_with_prefixes_and_resent_records_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 20, 0, 3);
    let l = lines(&base);
    // Shipping began at seq 3; records 8..=12 were sent twice; other
    // messages in between.
    let mut copy: Vec<String> = Vec::new();
    for (i, line) in l.iter().enumerate().skip(3) {
        copy.push(format!("2026-12-02T07:00:00Z node-1 envfence {line}"));
        if i == 12 {
            for again in &l[8..=12] {
                copy.push(format!("2026-12-02T07:00:01Z node-1 envfence {again}"));
            }
            copy.push("2026-12-02T07:00:01Z node-1 sshd something else".into());
        }
    }
    let siem = dir.path().join("siem.log");
    write_lines(&siem, &copy);
    let opts = VerifyOptions {
        siem: true,
        head: Some(head_path(&base)),
        ..VerifyOptions::default()
    };
    let r = verify_files(std::slice::from_ref(&siem), &opts);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.duplicates, r.other_lines), (5, 1));
    assert_eq!((r.first_seq, r.last_seq), (Some(3), Some(20)));
    // A record missing from the copy is found.
    let mut gap = copy.clone();
    gap.remove(4);
    write_lines(&siem, &gap);
    let r = verify_files(std::slice::from_ref(&siem), &opts);
    assert!(
        matches!(broken(&r).problem, Problem::Missing { expected: 7, .. }),
        "{r:?}"
    );
    // A resent record that differs is an edit.
    let mut edited = copy.clone();
    edited[11] = edited[11].replacen("\"packets\":", "\"packets\":9", 1);
    write_lines(&siem, &edited);
    let r = verify_files(std::slice::from_ref(&siem), &opts);
    assert!(!r.ok());
}

#[test]
fn anchors_find_a_consistent_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_log(dir.path(), 10, 0, 3);
    let heads: Vec<Anchor> = lines(&base)
        .iter()
        .map(|l| decode_line(l.as_bytes()).unwrap())
        .map(|d| Anchor {
            seq: d.seq,
            hash: d.hash,
            at: format!("test {}", d.seq),
        })
        .collect();
    let files = discover(&base).unwrap();
    let check = |anchors: Vec<Anchor>, files: &[PathBuf]| {
        verify_files(
            files,
            &VerifyOptions {
                anchors,
                ..VerifyOptions::default()
            },
        )
    };
    let r = check(heads.clone(), &files);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.anchors_matched, 11);
    // The chain rewritten consistently from seq 5 on (other content,
    // recomputed hashes): it verifies alone, but the anchors are not in it.
    let forged = dir.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let fbase = forged.join("audit.jsonl");
    let l = lines(&base);
    let mut fl = l[..5].to_vec();
    let mut prev = decode_line(l[4].as_bytes()).unwrap().hash;
    for seq in 5..=10 {
        let mut e = event(seq - 1);
        e.packets += 1;
        let (line, h) = super::chain::encode(seq, &prev, &e, None).unwrap();
        fl.push(String::from_utf8(line).unwrap().trim_end().to_owned());
        prev = h;
    }
    write_lines(&fbase, &fl);
    assert!(check(Vec::new(), &discover(&fbase).unwrap()).ok());
    let ffiles = discover(&fbase).unwrap();
    let r = check(heads.clone(), &ffiles);
    let b = broken(&r);
    assert_eq!(b.seq, Some(5), "{b}");
    assert!(b.to_string().contains("test 5"), "{b}");
    // Cut short: the last anchors are after its end.
    let short = dir.path().join("short");
    std::fs::create_dir(&short).unwrap();
    let sbase = short.join("audit.jsonl");
    write_lines(&sbase, &lines(&base)[..7]);
    let r = check(heads, &discover(&sbase).unwrap());
    assert!(
        matches!(broken(&r).problem, Problem::EndsBeforeAnchor { ref anchor, .. } if anchor.seq == 7)
    );
}
