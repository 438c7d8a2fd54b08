//! Tests of `parse`: the example policy, defaults, and one case per kind of
//! error (the fixture files in `agent/tests/` check messages end to end).

use super::*;

fn errors(source: &str) -> Vec<PolicyError> {
    match parse(source, "t.yaml") {
        Ok(policy) => panic!("expected errors, got {policy:?}"),
        Err(errors) => errors.0,
    }
}

/// (line, field, value) of every error.
fn places(source: &str) -> Vec<(usize, String, String)> {
    errors(source)
        .into_iter()
        .map(|e| (e.line, e.field, e.value))
        .collect()
}

fn place(line: usize, field: &str, value: &str) -> (usize, String, String) {
    (line, field.to_owned(), value.to_owned())
}

#[test]
fn example_policy_parses() {
    let policy = parse(EXAMPLE_POLICY, EXAMPLE_ORIGIN).expect("example policy");
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.default, Verdict::Allow);
    let names: Vec<&str> = policy
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["dev", "ops", "production", "staging", "test"]);
    let production = policy.environment("production").unwrap();
    assert_eq!(production.cidrs.len(), 2);
    assert_eq!(
        production.cidrs[0],
        "10.10.0.0/16".parse::<ipnet::IpNet>().unwrap()
    );
    assert!(production.cidrs[1].contains(&"fd00:10::1".parse::<std::net::IpAddr>().unwrap()));
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test-to-prod",
            "prod-to-test",
            "staging-to-prod",
            "test-dns-in-prod",
            "ops-to-prod"
        ]
    );
    let dns = policy.rule("test-dns-in-prod").unwrap();
    assert_eq!(dns.line, 24);
    assert_eq!(dns.verdict, Verdict::Allow);
    assert_eq!(
        dns.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["53/udp", "53/tcp"]
    );
    assert!(policy.interfaces.matches("eth0"));
    assert!(policy.interfaces.matches("lxc1234"));
    assert!(!policy.interfaces.matches("lo"));
    assert!(!policy.interfaces.matches("docker0"));
    assert_eq!(policy.source_sha256.len(), 64);
    assert_eq!(policy.source_sha256, sha256_hex(EXAMPLE_POLICY));
}

#[test]
fn sha256_is_of_the_source() {
    assert_eq!(
        sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn defaults() {
    let policy = parse("environments:\n  a: [\"10.0.0.0/8\"]\n", "t.yaml").unwrap();
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.default, Verdict::Allow);
    assert!(policy.rules.is_empty());
    assert_eq!(policy.interfaces, InterfaceSelector::default());
    let policy = parse(
        "mode: audit\ndefault: drop\nenvironments: {}\nrules:\ninterfaces:\n  include: [\"eth*\"]\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!((policy.mode, policy.default), (Mode::Audit, Verdict::Drop));
    assert_eq!(policy.interfaces.include, ["eth*"]);
    assert_eq!(policy.interfaces.exclude, ["lo"]);
}

#[test]
fn file_order_does_not_matter() {
    let a = "environments:\n  b: [\"10.2.0.0/16\"]\n  a: [\"10.1.0.0/16\"]\n";
    let b = "environments:\n  a: [\"10.1.0.0/16\"]\n  b: [\"10.2.0.0/16\"]\n";
    let (a, b) = (parse(a, "a").unwrap(), parse(b, "b").unwrap());
    assert_eq!(a.environments, b.environments);
}

#[test]
fn environments_are_required() {
    assert_eq!(places("mode: audit\n"), [place(1, "environments", "")]);
    assert_eq!(places(""), [place(1, "environments", "")]);
    assert_eq!(places("- a\n"), [place(1, "", "a list")]);
}

#[test]
fn environment_errors() {
    let source = "\
environments:
  world: [\"10.0.0.0/8\"]
  Prod: [\"10.1.0.0/16\"]
  a: \"10.2.0.0/16\"
  b: [\"10.3.0.0/16\", \"10.3.0.0/16\", [x]]
  c:
";
    assert_eq!(
        places(source),
        [
            place(2, "environments.world", "world"),
            place(3, "environments.Prod", "Prod"),
            place(4, "environments.a", "10.2.0.0/16"),
            place(5, "environments.b[1]", "10.3.0.0/16"),
            place(5, "environments.b[2]", "a list"),
            place(6, "environments.c", "null"),
        ]
    );
}

#[test]
fn too_many_environments() {
    let mut source = String::from("environments:\n");
    for i in 0..64 {
        source.push_str(&format!("  e{i:02}: [\"10.{i}.0.0/16\"]\n"));
    }
    let errors = errors(&source);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].line, errors[0].field.as_str()),
        (65, "environments.e63")
    );
    assert!(errors[0].message.contains("at most 63"));
}

#[test]
fn rule_errors() {
    let source = "\
environments:
  test: [\"10.30.0.0/16\"]
  production: [\"10.10.0.0/16\"]
rules:
  - name: a b
    from: []
    to: test
    verdict: deny
  - from: [prodution]
    to: [world]
    ports: []
  - name: default
    form: [test]
    from: [test]
    to: [production]
    ports: [\"0/tcp\", \"53/icmp\"]
    verdict: [drop]
  - just a string
";
    let errors = errors(source);
    let got: Vec<(usize, &str, &str)> = errors
        .iter()
        .map(|e| (e.line, e.field.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (5, "rules[0].name", "a b"),
            (6, "rules[0].from", "[]"),
            (7, "rules[0].to", "test"),
            (8, "rules[0].verdict", "deny"),
            (9, "rules[1].name", ""),
            (9, "rules[1].verdict", ""),
            (9, "rules[1].from[0]", "prodution"),
            (11, "rules[1].ports", "[]"),
            (12, "rules[2].name", "default"),
            (13, "rules[2].form", "form"),
            (16, "rules[2].ports[0]", "0/tcp"),
            (16, "rules[2].ports[1]", "53/icmp"),
            (17, "rules[2].verdict", "a list"),
            (18, "rules[3]", "just a string"),
        ]
    );
    assert!(errors[6].message.contains("did you mean production?"));
    assert!(errors[9].message.contains("did you mean from?"));
}

#[test]
fn conflicts_are_reported_at_the_later_rule() {
    let source = "\
environments:
  a: [\"10.1.0.0/16\"]
  b: [\"10.2.0.0/16\"]
rules:
  - name: one
    from: [a]
    to: [b, world]
    verdict: drop
  - name: same
    from: [a]
    to: [b]
    verdict: drop
  - name: two
    from: [a]
    to: [world, b]
    verdict: allow
  - name: p1
    from: [a]
    to: [b]
    ports: [\"1000-2000/tcp\", \"53/udp\"]
    verdict: allow
  - name: p2
    from: [a]
    to: [b]
    ports: [\"1500-2500/tcp\", \"2000/udp\", \"53/udp\"]
    verdict: log
";
    let errors = errors(source);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        (errors[0].line, errors[0].field.as_str()),
        (16, "rules[2].verdict")
    );
    assert_eq!(
        errors[0].message,
        "conflicts with rule \"one\" (line 5): for a -> world and a -> b, that rule says \
         drop and this one says allow; an environment pair takes one verdict"
    );
    assert_eq!(
        (errors[1].line, errors[1].field.as_str()),
        (25, "rules[4].ports[0]")
    );
    assert!(
        errors[1].message.contains("for a -> b 1500-2000/tcp"),
        "{}",
        errors[1]
    );
    assert_eq!(errors[2].field, "rules[4].ports[2]");
    assert!(
        errors[2].message.contains("rule \"p1\" (line 17)"),
        "{}",
        errors[2]
    );
}

#[test]
fn too_many_port_entries() {
    let source = "\
environments:
  a: [\"10.1.0.0/16\"]
rules:
  - name: all-tcp
    from: [a]
    to: [a]
    ports: [\"1-65535/tcp\"]
    verdict: allow
  - name: all-udp
    from: [a, world]
    to: [a]
    ports: [\"1-65535/udp\"]
    verdict: allow
";
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "rules[1].ports[0]");
    assert!(errors[0].message.contains("too many port entries"));
}

#[test]
fn interface_errors() {
    let source = "\
environments: {}
interfaces:
  include: [\"eth[\"]
  exclude: lo
  only: [x]
";
    assert_eq!(
        places(source),
        [
            place(3, "interfaces.include[0]", "eth["),
            place(4, "interfaces.exclude", "lo"),
            place(5, "interfaces.only", "only"),
        ]
    );
}

#[test]
fn top_level_errors() {
    let source = "\
mode: enforcing
default: Drop
environments: []
rulez: []
";
    let errors = errors(source);
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, "mode"),
            (2, "default"),
            (3, "environments"),
            (4, "rulez")
        ]
    );
    assert!(errors[1].message.contains("did you mean drop?"));
    assert!(errors[3].message.contains("did you mean rules?"));
}

#[test]
fn yaml_problems_are_errors() {
    let errors = errors("environments:\n  a: [\"10.0.0.0/8\"\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.starts_with("YAML syntax error"));
    let dup = places("environments:\n  a: []\n  a: []\nmode: audit\nmode: enforce\n");
    assert_eq!(
        dup,
        [place(3, "environments.a", "a"), place(5, "mode", "mode")]
    );
}

#[test]
fn load_reports_io_errors_without_place() {
    let path = Path::new("/nonexistent/envfence/policy.yaml");
    let errors = load(path).unwrap_err();
    assert_eq!(errors.len(), 1);
    let text = errors.to_string();
    assert!(
        text.starts_with("/nonexistent/envfence/policy.yaml: cannot read the policy file: "),
        "{text}"
    );
}

#[test]
fn odd_documents_are_errors_not_panics() {
    let sources = [
        "---", "...", "---\n...\n", "[]", "~", "a", "{", "}", "- - -", "? a", "? [a]\n: b",
        "a: &x [*x]", "&a a: b", "*a", "a: !tag b", "\t", "environments:\n\t a: []",
        "environments:\n  é: [\"10.0.0.0/8\"]", "environments:\n  a: [*x]",
        "environments: &e {a: []}\nrules: *e", "environments: {a: [1, 2.5, true, null]}",
        "environments: {a: [{b: c}]}\nrules: [{name: [x], from: {a: b}, to: [[a]]}]",
        "environments: {}\nrules: [{name: r, from: [world], to: [world], ports: 53/udp, verdict: drop}]",
        "environments: {}\nrules: [{name: r, from: [world], to: [world], ports: [\"\"], verdict: ~}]",
        "environments: {}\ninterfaces: [eth0]",
        "environments: {}\ninterfaces: {include: [[x]], exclude: ~}",
        "a: 1\n---\nb: 2\n---\nc: 3",
        "environments:\r\n  a: [\"10.0.0.0/8\"]\r\nmode: nope\r\n",
    ];
    for source in sources {
        if let Err(errors) = parse(source, "t.yaml") {
            assert!(!errors.is_empty(), "{source:?}");
            for error in &errors {
                assert!(error.line >= 1 && error.column >= 1, "{source:?}: {error}");
            }
        }
    }
    // An empty file, or an empty document, lacks only the environments.
    for source in ["", "---\n", "~\n", "# nothing\n"] {
        assert_eq!(places(source), [place(1, "environments", "")], "{source:?}");
    }
}

#[test]
fn tunnels_and_non_ip_defaults() {
    let p = parse("environments:\n  prod: [\"10.10.0.0/16\"]\n", "t.yaml").unwrap();
    for (port, kind) in [
        (4789, TunnelKind::Vxlan),
        (8472, TunnelKind::Vxlan),
        (6081, TunnelKind::Geneve),
        (4790, TunnelKind::VxlanGpe),
    ] {
        assert_eq!(p.tunnels.kind(port), Some(kind), "{port}");
    }
    assert_eq!(p.tunnels.kind(53), None);
    assert_eq!(p.non_ip, NonIp::Pass);
    let p = parse(
        "environments:\n  prod: [\"10.10.0.0/16\"]\ntunnels:\n  vxlan: [4789, 9999]\nnon_ip: drop\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(p.tunnels.kind(9999), Some(TunnelKind::Vxlan));
    assert_eq!(
        p.tunnels.kind(8472),
        None,
        "a listed kind replaces its defaults"
    );
    assert_eq!(p.tunnels.kind(6081), Some(TunnelKind::Geneve));
    assert_eq!(p.non_ip, NonIp::Drop);
}

#[test]
fn tunnel_and_non_ip_errors_have_places() {
    let src = "environments:\n  prod: [\"10.10.0.0/16\"]\ntunnels:\n  vxlan: [4789, 8472]\n  geneve: [6081, 8472, 6081]\n  vxlan-gpe: [0, x, 70000]\n  nvgre: [1]\nnon_ip: maybe\n";
    let got: Vec<(usize, usize, String)> = errors(src)
        .into_iter()
        .map(|e| (e.line, e.column, e.field))
        .collect();
    assert_eq!(
        got,
        [
            (5, 18, "tunnels.geneve[1]".to_owned()),
            (5, 24, "tunnels.geneve[2]".to_owned()),
            (6, 15, "tunnels.vxlan-gpe[0]".to_owned()),
            (6, 18, "tunnels.vxlan-gpe[1]".to_owned()),
            (6, 21, "tunnels.vxlan-gpe[2]".to_owned()),
            (7, 3, "tunnels.nvgre".to_owned()),
            (8, 9, "non_ip".to_owned()),
        ]
    );
    let msgs: Vec<String> = errors(src).into_iter().map(|e| e.message).collect();
    assert!(
        msgs[0].contains("cannot be two tunnels") && msgs[0].contains("vxlan at line 4"),
        "{msgs:?}"
    );
    assert!(msgs[1].contains("listed twice"), "{msgs:?}");
    // A port another kind has by default.
    let e = errors("environments:\n  prod: [\"10.10.0.0/16\"]\ntunnels:\n  geneve: [8472]\n");
    assert_eq!((e.len(), e[0].line), (1, 4));
    assert!(
        e[0].message.contains("vxlan by default"),
        "{}",
        e[0].message
    );
}
