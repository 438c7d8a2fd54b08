//! Policy files end to end: `load` of the fixtures in `tests/policy-fixtures/`
//! (one bad file per class of error, and one with many errors), and of the
//! example policy.

use std::path::{Path, PathBuf};

use envfence::policy::{self, PolicyError, Verdict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/policy-fixtures")
        .join(name)
}

/// The errors of a fixture that must be refused.
fn load_errors(name: &str) -> (String, Vec<PolicyError>) {
    let path = fixture(name);
    let origin = path.display().to_string();
    match policy::load(&path) {
        Ok(_) => panic!("{name} was accepted"),
        Err(errors) => (origin, errors.0),
    }
}

/// Asserts that `name` is refused with exactly one error, at `line`, about
/// `field` and `value`, displayed as `{path}{rest}`.
fn assert_single(name: &str, line: usize, field: &str, value: &str, rest: &str) {
    let (origin, errors) = load_errors(name);
    assert_eq!(errors.len(), 1, "{name}: {errors:#?}");
    let error = &errors[0];
    assert_eq!(error.origin, origin);
    assert_eq!(
        (error.line, error.field.as_str(), error.value.as_str()),
        (line, field, value),
        "{name}: {error}"
    );
    assert_eq!(error.to_string(), format!("{origin}{rest}"), "{name}");
}

#[test]
fn unknown_environment_in_a_rule() {
    assert_single(
        "unknown-environment.yaml",
        8,
        "rules[0].to[0]",
        "prodution",
        ":8:10: rules[0].to[0]: unknown environment (did you mean production?): it is not \
         defined under environments (world means \"in no environment\") (got \"prodution\")",
    );
}

#[test]
fn bad_cidr() {
    assert_single(
        "bad-cidr.yaml",
        4,
        "environments.test[1]",
        "10.300.0.0/16",
        ":4:26: environments.test[1]: not an IPv4 or IPv6 CIDR: \"10.300.0.0\" is not an IP \
         address (write a network such as 10.10.0.0/16 or fd00:10::/48) (got \"10.300.0.0/16\")",
    );
}

#[test]
fn cidr_in_two_environments() {
    assert_single(
        "cidr-in-two-environments.yaml",
        7,
        "environments.test[1]",
        "fd00:10::/48",
        ":7:7: environments.test[1]: fd00:10::/48 is already in environment production \
         (line 3, environments.production[1]): a CIDR belongs to one environment \
         (got \"fd00:10::/48\")",
    );
}

#[test]
fn conflicting_rules() {
    assert_single(
        "conflicting-rules.yaml",
        13,
        "rules[1].verdict",
        "allow",
        ":13:14: rules[1].verdict: conflicts with rule \"test-to-prod\" (line 6): for \
         test -> production, that rule says drop and this one says allow; an environment \
         pair takes one verdict (got \"allow\")",
    );
}

#[test]
fn unknown_verdict() {
    assert_single(
        "unknown-verdict.yaml",
        9,
        "rules[0].verdict",
        "deny",
        ":9:14: rules[0].verdict: unknown verdict: expected allow, log, audit or drop \
         (got \"deny\")",
    );
}

#[test]
fn yaml_syntax_error() {
    assert_single(
        "yaml-syntax.yaml",
        4,
        "environments.production",
        "test: [\"10.30.0.0/16\"]",
        ":4:3: environments.production: YAML syntax error: invalid indentation \
         (got \"test: [\\\"10.30.0.0/16\\\"]\")",
    );
}

#[test]
fn host_bits_set() {
    assert_single(
        "host-bits.yaml",
        3,
        "environments.production[0]",
        "10.10.1.0/16",
        ":3:16: environments.production[0]: host bits are set: did you mean 10.10.0.0/16? \
         (got \"10.10.1.0/16\")",
    );
}

#[test]
fn port_without_protocol() {
    assert_single(
        "port-without-protocol.yaml",
        9,
        "rules[0].ports[1]",
        "53",
        ":9:23: rules[0].ports[1]: a port needs a protocol: write 53/tcp or 53/udp \
         (got \"53\")",
    );
}

#[test]
fn unknown_key() {
    assert_single(
        "unknown-key.yaml",
        7,
        "rules[0].form",
        "form",
        ":7:5: rules[0].form: unknown key (did you mean from?); expected one of name, from, \
         to, ports, verdict (got \"form\")",
    );
}

#[test]
fn duplicate_rule_name() {
    assert_single(
        "duplicate-rule-name.yaml",
        10,
        "rules[1].name",
        "test-to-prod",
        ":10:11: rules[1].name: duplicate rule name: the rule at line 6 has it already; rule \
         names are unique (got \"test-to-prod\")",
    );
}

#[test]
fn duplicate_key() {
    assert_single(
        "duplicate-key.yaml",
        5,
        "environments.test",
        "test",
        ":5:3: environments.test: duplicate key: already given at line 4; a key may appear \
         once (got \"test\")",
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let (origin, errors) = load_errors("many-errors.yaml");
    let got: Vec<(usize, usize, &str, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.field.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 7, "mode", "enforcing"),
            (5, 26, "environments.test[1]", "10.10.0.0/16"),
            (6, 3, "environments.Dev", "Dev"),
            (6, 9, "environments.Dev[0]", "10.40.1.0/16"),
            (10, 10, "rules[0].to[0]", "prod"),
            (15, 13, "rules[1].ports[0]", "53"),
            (15, 19, "rules[1].ports[1]", "53/icmp"),
            (15, 30, "rules[1].ports[2]", "70000/tcp"),
            (24, 14, "rules[3].verdict", "log"),
            (25, 11, "rules[4].name", "test-to-prod"),
            (28, 14, "rules[4].verdict", "block"),
            (31, 3, "interfaces.exlude", "exlude"),
        ]
    );
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    let expected_starts = [
        "unknown mode (did you mean enforce?)",
        "10.10.0.0/16 is already in environment production (line 4, environments.production[0])",
        "invalid environment name",
        "host bits are set: did you mean 10.40.0.0/16?",
        "unknown environment",
        "a port needs a protocol: write 53/tcp or 53/udp",
        "unknown protocol \"icmp\"",
        "port 70000 is out of range",
        "conflicts with rule \"prod-to-test\" (line 17): for production -> test",
        "duplicate rule name: the rule at line 8 has it already",
        "unknown verdict",
        "unknown key (did you mean exclude?)",
    ];
    for (message, start) in messages.iter().zip(expected_starts) {
        assert!(
            message.starts_with(start),
            "{message:?} should start with {start:?}"
        );
    }

    // Displayed one error per line, each naming the file and place.
    let all = policy::load(&fixture("many-errors.yaml")).unwrap_err();
    let text = all.to_string();
    assert_eq!(text.lines().count(), 12);
    for (line, (l, c, field, value)) in text.lines().zip(&got) {
        let place = format!("{origin}:{l}:{c}: {field}: ");
        assert!(line.starts_with(&place), "{line}");
        assert!(line.ends_with(&format!("(got {value:?})")), "{line}");
    }
}

#[test]
fn every_fixture_is_refused() {
    let dir = fixture("");
    let entries = std::fs::read_dir(&dir).expect("fixture directory");
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("fixture entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            count += 1;
            assert!(
                policy::load(&path).is_err(),
                "{} was accepted",
                path.display()
            );
        }
    }
    assert!(count >= 12, "only {count} fixtures in {}", dir.display());
}

#[test]
fn missing_file_is_an_error_without_place() {
    let path = fixture("no-such-policy.yaml");
    let errors = policy::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.0[0].line, 0);
    let text = errors.to_string();
    let prefix = format!("{}: cannot read the policy file: ", path.display());
    assert!(text.starts_with(&prefix), "{text}");
}

#[test]
fn example_policy_parses_and_compiles() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/example.yaml");
    let from_file = policy::load(&file).expect("example policy file");
    let embedded =
        policy::parse(policy::EXAMPLE_POLICY, policy::EXAMPLE_ORIGIN).expect("embedded example");
    assert_eq!(from_file, embedded);

    let compiled = policy::compile(&embedded);
    assert_eq!(compiled.source_sha256, embedded.source_sha256);
    let test = compiled.env_id("test").expect("test environment");
    let production = compiled
        .env_id("production")
        .expect("production environment");
    let ip = |s: &str| s.parse().expect("address");
    let flow = |dport| {
        compiled.decide_flow(
            ip("10.30.0.9"),
            ip("10.10.0.9"),
            envfence_ebpf::proto::UDP,
            dport,
        )
    };
    let dns = flow(Some(53));
    assert_eq!((dns.src_env, dns.dst_env), (test, production));
    assert_eq!(dns.verdict, Verdict::Allow.as_u8());
    assert_eq!(compiled.rule_name(dns.rule), "test-dns-in-prod");
    let other = flow(Some(5353));
    assert_eq!(other.verdict, Verdict::Drop.as_u8());
    assert_eq!(compiled.rule_name(other.rule), "test-to-prod");
    let fragment = flow(None);
    assert_eq!(fragment.verdict, Verdict::Drop.as_u8());
}
