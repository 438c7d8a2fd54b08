//! The `envfence` binary refuses bad policy files before touching the
//! kernel: non-zero exit, and every error named with file:line:column.
//! (No root needed: validation comes before loading anything.)

use std::{path::PathBuf, process::Command};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/policy-fixtures")
        .join(name)
}

fn envfence(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_envfence"))
        .args(args)
        .output()
        .expect("running envfence");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (fixture, the place and value its first error must name).
const BAD: &[(&str, &str)] = &[
    ("unknown-environment.yaml", "unknown-environment.yaml:"),
    ("bad-cidr.yaml", "bad-cidr.yaml:"),
    (
        "cidr-in-two-environments.yaml",
        "cidr-in-two-environments.yaml:",
    ),
    (
        "conflicting-rules.yaml",
        "conflicting-rules.yaml:13:14: rules[1].verdict",
    ),
    ("unknown-verdict.yaml", "unknown-verdict.yaml:"),
    ("yaml-syntax.yaml", "yaml-syntax.yaml:"),
    ("host-bits.yaml", "host-bits.yaml:"),
    ("port-without-protocol.yaml", "port-without-protocol.yaml:"),
    ("unknown-key.yaml", "unknown-key.yaml:"),
    (
        "duplicate-rule-name.yaml",
        "duplicate-rule-name.yaml:10:11: rules[1].name",
    ),
    (
        "duplicate-key.yaml",
        "duplicate-key.yaml:5:3: environments.test",
    ),
];

#[test]
fn agent_refuses_every_bad_file_with_its_place() {
    for (name, place) in BAD {
        let path = fixture(name);
        let path = path.to_str().expect("utf-8 path");
        let (code, stdout, stderr) = envfence(&["agent", "--config", path]);
        assert_ne!(code, 0, "{name}: agent accepted a bad policy\n{stderr}");
        assert!(stdout.is_empty(), "{name}: stdout {stdout}");
        assert!(
            stderr.contains(place),
            "{name}: stderr lacks {place:?}:\n{stderr}"
        );
        // Each error line is `file:line:column: ...`.
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(path)).collect();
        assert!(!error_lines.is_empty(), "{name}: no error line:\n{stderr}");
        for l in error_lines {
            let mut place = l[path.len()..].split(':');
            let numbers = (place.next(), place.next(), place.next());
            assert!(
                matches!(numbers, (Some(""), Some(line), Some(col))
                    if line.parse::<usize>().is_ok_and(|n| n > 0) && col.parse::<usize>().is_ok_and(|n| n > 0)),
                "{name}: error without line:column: {l}"
            );
        }
        assert!(
            stderr.contains("nothing was loaded"),
            "{name}: no summary:\n{stderr}"
        );
    }
}

#[test]
fn policy_check_reports_all_errors_and_exit_status() {
    let many = fixture("many-errors.yaml");
    let (code, _, stderr) = envfence(&["policy", "check", many.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    let errors = stderr
        .lines()
        .filter(|l| l.contains("many-errors.yaml:"))
        .count();
    assert_eq!(errors, 12, "{stderr}");

    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy/example.yaml");
    let (code, stdout, stderr) = envfence(&["policy", "check", example.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(": ok (5 environments, 5 rules, mode enforce"),
        "{stdout}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, stderr) = envfence(&["agent", "--config", "/nonexistent/policy.yaml"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/policy.yaml"), "{stderr}");
}

#[test]
fn example_is_printed_as_shipped() {
    let (code, stdout, _) = envfence(&["policy", "example"]);
    assert_eq!(code, 0);
    let shipped = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy/example.yaml"),
    )
    .expect("example file");
    assert_eq!(stdout, shipped);
}
