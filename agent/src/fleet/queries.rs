//! The PromQL of the fleet view, in one place. `envfence fleet` runs these
//! expressions; the shipped alerting rules (deploy/prometheus) and the
//! dashboard's fleet row (deploy/grafana) use exactly the same ones
//! ([`RULES`], [`DASHBOARD_FLEET_ROW`], [`DASHBOARD_DRIFT`]), and the
//! README's table of them is [`markdown_table`]: tests/tests/fleet.rs fails
//! when a copy differs (`ENVFENCE_BLESS=1` rewrites the README's).
//!
//! A query is a template with four placeholders, filled by [`Scope`]:
//! `<sel>` the label matchers that select the agents' series
//! (`job=~".*envfence.*"` by default, `job=~"$job", instance=~"$instance"` in
//! Grafana), `<node>` the label naming the node (`node`), `<window>` the
//! range (`3600s`, `$__range`) and `<verdicts>` the verdict regex of the
//! violation queries (`drop|audit`). `<sha256>` is the policy hash of
//! [`POLICY_NOT_FILE`]. `<policy_info>` stands for [`CURRENT_POLICY_INFO`].

/// One named PromQL expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// Its name: a JSON key, a Grafana `refId`, the README's table row.
    pub name: &'static str,
    /// What it answers (the README's documentation of the query).
    pub help: &'static str,
    /// The template (see the module docs).
    pub template: &'static str,
}

/// What fills a query's placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Label matchers selecting the agents' series (never empty).
    pub selector: String,
    /// The label that names the node.
    pub node_label: String,
    /// A PromQL duration.
    pub window: String,
    /// Verdict regex of the violation queries.
    pub verdicts: String,
    /// Policy hash of [`POLICY_NOT_FILE`].
    pub sha256: String,
}

/// The selector the shipped rules use and the CLI defaults to: the agents'
/// scrape job has `envfence` in its name (deploy/prometheus/README.md).
pub const DEFAULT_SELECTOR: &str = r#"job=~".*envfence.*""#;
/// The label the ServiceMonitor sets to the node's name.
pub const DEFAULT_NODE_LABEL: &str = "node";
/// The violation verdicts: dropped, and forbidden but passed (audit).
pub const DEFAULT_VERDICTS: &str = "drop|audit";

impl Default for Scope {
    fn default() -> Self {
        Scope {
            selector: DEFAULT_SELECTOR.to_owned(),
            node_label: DEFAULT_NODE_LABEL.to_owned(),
            window: "1h".to_owned(),
            verdicts: DEFAULT_VERDICTS.to_owned(),
            sha256: String::new(),
        }
    }
}

impl Scope {
    /// The scope of the shipped alerting rules.
    pub fn rules() -> Self {
        Scope {
            window: "5m".to_owned(),
            ..Scope::default()
        }
    }

    /// The scope of the Grafana dashboard (its `job` and `instance`
    /// variables, the selected time range).
    pub fn grafana() -> Self {
        Scope {
            selector: r#"job=~"$job", instance=~"$instance""#.to_owned(),
            window: "$__range".to_owned(),
            ..Scope::default()
        }
    }
}

/// Each agent's policy series, only the newest per target. A reload
/// replaces the series (a new `generation` label); Prometheus marks the old
/// one stale at once, but a federating (or remote_write-receiving) one
/// that receives explicit timestamps gets no staleness marker and keeps
/// showing it for the lookback (5 minutes by default). Dropping every
/// series older than its target's newest keeps drift queries exact there.
pub const CURRENT_POLICY_INFO: &str = "(envfence_policy_info{<sel>} unless on (job, instance, generation) (timestamp(envfence_policy_info{<sel>}) < on (job, instance) group_left max by (job, instance) (timestamp(envfence_policy_info{<sel>}))))";

impl Query {
    /// The expression with `scope`'s values in its placeholders.
    pub fn render(&self, scope: &Scope) -> String {
        self.template
            .replace("<policy_info>", CURRENT_POLICY_INFO)
            .replace("<sel>", &scope.selector)
            .replace("<node>", &scope.node_label)
            .replace("<window>", &scope.window)
            .replace("<verdicts>", &scope.verdicts)
            .replace("<sha256>", &scope.sha256)
    }
}

// ------------------------------------------------------------ fleet status

/// Every agent target: 1 up, 0 down (the scrape failed).
pub const UP: Query = Query {
    name: "up",
    help: "every agent's scrape target: 1 up, 0 down (Prometheus could not scrape it)",
    template: "up{<sel>}",
};

/// When each target was last scraped.
pub const LAST_SCRAPE: Query = Query {
    name: "last_scrape",
    help: "Unix time of each target's last scrape",
    template: "timestamp(up{<sel>})",
};

/// When each target seen in the window was last scraped: the targets not
/// in [`UP`] any more are the nodes that disappeared.
pub const LAST_SEEN: Query = Query {
    name: "last_seen",
    help: "Unix time each target seen in the window was last scraped (a target missing from `up` disappeared)",
    template: "max_over_time(timestamp(up{<sel>})[<window>:])",
};

/// The loaded policy (generation, mode, sha256), last known in the window.
pub const POLICY: Query = Query {
    name: "policy",
    help: "the policy each agent runs (labels generation, mode, sha256), last known in the window",
    template: "last_over_time(envfence_policy_info{<sel>}[<window>])",
};

/// Agent version, last known in the window.
pub const BUILD: Query = Query {
    name: "build",
    help: "each agent's version (label version), last known in the window",
    template: "last_over_time(envfence_build_info{<sel>}[<window>])",
};

/// Attached interfaces, last known in the window.
pub const ATTACHED: Query = Query {
    name: "attached",
    help: "interfaces each agent is attached to, last known in the window",
    template: "last_over_time(envfence_attached_interfaces{<sel>}[<window>])",
};

/// Flow events lost since the counters were created.
pub const EVENTS_LOST: Query = Query {
    name: "events_lost",
    help: "flow events each node's kernel could not hand to its agent (ring buffer full), in total",
    template: r#"last_over_time(envfence_datapath_total{kind="events_lost", <sel>}[<window>])"#,
};

/// Policy reloads refused since the agent started.
pub const RELOAD_FAILURES: Query = Query {
    name: "reload_failures",
    help: "policy reloads each agent refused since it started",
    template: r#"last_over_time(envfence_policy_reloads_total{result="failure", <sel>}[<window>])"#,
};

// -------------------------------------------------------------- violations

/// Exact packets of each (node, source env, destination env, verdict) in
/// the window: the counter's growth, or its whole value for a series born
/// (or reset) in the window. Unlike `increase()` nothing is extrapolated.
pub const VIOLATION_PACKETS: Query = Query {
    name: "violation_packets",
    help: "packets by node × environment pair × verdict in the window (exact: the counter's growth, its whole value for a series born or reset in the window)",
    template: r#"sum by (job, instance, <node>, src_env, dst_env, verdict) (
  (
    last_over_time(envfence_packets_total{verdict=~"<verdicts>", <sel>}[<window>])
    - envfence_packets_total{verdict=~"<verdicts>", <sel>} offset <window>
  ) >= 0
  or last_over_time(envfence_packets_total{verdict=~"<verdicts>", <sel>}[<window>])
) > 0"#,
};

/// Bytes of the same cells as [`VIOLATION_PACKETS`].
pub const VIOLATION_BYTES: Query = Query {
    name: "violation_bytes",
    help: "bytes of the same cells",
    template: r#"sum by (job, instance, <node>, src_env, dst_env, verdict) (
  (
    last_over_time(envfence_bytes_total{verdict=~"<verdicts>", <sel>}[<window>])
    - envfence_bytes_total{verdict=~"<verdicts>", <sel>} offset <window>
  ) >= 0
  or last_over_time(envfence_bytes_total{verdict=~"<verdicts>", <sel>}[<window>])
) > 0"#,
};

/// Exact packets by (node, deciding rule, verdict) in the window.
pub const RULE_PACKETS: Query = Query {
    name: "rule_packets",
    help: "packets by node × deciding rule × verdict in the window (exact, as above)",
    template: r#"sum by (job, instance, <node>, rule, verdict) (
  (
    last_over_time(envfence_rule_packets_total{verdict=~"<verdicts>", <sel>}[<window>])
    - envfence_rule_packets_total{verdict=~"<verdicts>", <sel>} offset <window>
  ) >= 0
  or last_over_time(envfence_rule_packets_total{verdict=~"<verdicts>", <sel>}[<window>])
) > 0"#,
};

/// Bytes of the same cells as [`RULE_PACKETS`].
pub const RULE_BYTES: Query = Query {
    name: "rule_bytes",
    help: "bytes of the same cells",
    template: r#"sum by (job, instance, <node>, rule, verdict) (
  (
    last_over_time(envfence_rule_bytes_total{verdict=~"<verdicts>", <sel>}[<window>])
    - envfence_rule_bytes_total{verdict=~"<verdicts>", <sel>} offset <window>
  ) >= 0
  or last_over_time(envfence_rule_bytes_total{verdict=~"<verdicts>", <sel>}[<window>])
) > 0"#,
};

// ------------------------------------------------------------------- drift

/// How many agents of each job run each policy hash.
pub const POLICY_HASHES: Query = Query {
    name: "policy_hashes",
    help: "how many agents of each job run each policy (sha256)",
    template: "count by (job, sha256) (<policy_info>)",
};

/// Agents whose policy hash is not the one most agents of their job run
/// (none while two hashes tie for the most).
pub const POLICY_DRIFT: Query = Query {
    name: "policy_drift",
    help: "agents whose policy (sha256) differs from the one most agents of their job run (none while two hashes tie)",
    template: r#"<policy_info>
and on (job, sha256)
(
  count by (job, sha256) (<policy_info>)
  < on (job) group_left
  max by (job) (count by (job, sha256) (<policy_info>))
)"#,
};

/// Agents whose policy hash is not the given file's (`fleet drift --policy`).
pub const POLICY_NOT_FILE: Query = Query {
    name: "policy_not_file",
    help: "agents whose policy is not the file given with `fleet drift --policy` (its sha256)",
    template: r#"envfence_policy_info{sha256!="<sha256>", <sel>} and on (job, instance, generation) <policy_info>"#,
};

/// Agents in audit mode where enforce is expected (targets without the
/// label `envfence_expected_mode="audit"`).
pub const AUDIT_UNEXPECTED: Query = Query {
    name: "audit_unexpected",
    help: r#"agents in audit mode whose target is not labelled envfence_expected_mode="audit""#,
    template: r#"envfence_policy_info{mode="audit", envfence_expected_mode!="audit", <sel>} == 1
and on (job, instance, generation) <policy_info>"#,
};

/// Agents attached to no interface at all.
pub const NO_INTERFACE: Query = Query {
    name: "no_interface",
    help: "agents attached to no interface",
    template: "envfence_attached_interfaces{<sel>} == 0",
};

/// Agents retrying an interface that fails to attach (each failed attempt
/// is counted, one a second).
pub const ATTACH_FAILING: Query = Query {
    name: "attach_failing",
    help: "agents that failed to attach to an interface in the last 5 minutes (an interface is left unattached and retried)",
    template: "increase(envfence_interface_attach_failures_total{<sel>}[5m]) > 0",
};

/// Agents whose scrape fails.
pub const AGENT_DOWN: Query = Query {
    name: "agent_down",
    help: "agents Prometheus cannot scrape",
    template: "up{<sel>} == 0",
};

/// Every query, in the README's order.
pub const ALL: &[Query] = &[
    UP,
    LAST_SCRAPE,
    LAST_SEEN,
    POLICY,
    BUILD,
    ATTACHED,
    EVENTS_LOST,
    RELOAD_FAILURES,
    VIOLATION_PACKETS,
    VIOLATION_BYTES,
    RULE_PACKETS,
    RULE_BYTES,
    POLICY_HASHES,
    POLICY_DRIFT,
    POLICY_NOT_FILE,
    AUDIT_UNEXPECTED,
    NO_INTERFACE,
    ATTACH_FAILING,
    AGENT_DOWN,
];

/// The alerting rules of deploy/prometheus/envfence-rules.yml whose `expr`
/// is a query of this module, rendered with [`Scope::rules`].
pub const RULES: &[(&str, Query)] = &[
    ("EnvfenceAgentDown", AGENT_DOWN),
    ("EnvfenceNoInterfaceAttached", NO_INTERFACE),
    ("EnvfenceAuditModeUnexpected", AUDIT_UNEXPECTED),
    ("EnvfencePolicyDrift", POLICY_DRIFT),
];

/// The targets of the dashboard's per-node fleet table (panel 27; refId =
/// query name), rendered with [`Scope::grafana`].
pub const DASHBOARD_FLEET_ROW: &[Query] =
    &[UP, POLICY, BUILD, ATTACHED, EVENTS_LOST, RELOAD_FAILURES];

/// The targets of the dashboard's drift table (panel 28).
pub const DASHBOARD_DRIFT: &[Query] = &[POLICY_DRIFT, AUDIT_UNEXPECTED, NO_INTERFACE];

/// The query named `name`.
pub fn by_name(name: &str) -> Option<Query> {
    ALL.iter().copied().find(|q| q.name == name)
}

/// The README's table of the queries (between its `fleet-queries` markers).
pub fn markdown_table() -> String {
    let mut out = String::from("| name | answers | PromQL (`<sel>` = `--selector`, `<node>` = `--node-label`, `<window>` = `--since`/`--from`…`--to`) |\n|---|---|---|\n");
    for q in ALL {
        let expr = q
            .template
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | `{}` |\n",
            q.name,
            q.help.replace('|', "\\|"),
            expr
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_placeholder_is_filled() {
        let mut names: Vec<&str> = ALL.iter().map(|q| q.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        let scope = Scope {
            sha256: "abc".into(),
            ..Scope::default()
        };
        for q in ALL {
            let e = q.render(&scope);
            for token in [
                "<sel>",
                "<node>",
                "<window>",
                "<verdicts>",
                "<sha256>",
                "<policy_info>",
            ] {
                assert!(!e.contains(token), "{}: {e}", q.name);
            }
            assert!(by_name(q.name).is_some());
        }
        assert_eq!(UP.render(&scope), r#"up{job=~".*envfence.*"}"#);
        assert!(AUDIT_UNEXPECTED.render(&Scope::grafana()).starts_with(
            r#"envfence_policy_info{mode="audit", envfence_expected_mode!="audit", job=~"$job", instance=~"$instance"} == 1"#
        ));
        assert!(VIOLATION_PACKETS
            .render(&scope)
            .contains("sum by (job, instance, node, src_env, dst_env, verdict)"));
        assert!(markdown_table().contains("`policy_drift`"));
    }
}
