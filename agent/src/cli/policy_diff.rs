//! `envfence policy diff OLD NEW`: what changes in what is enforced — the
//! review aid for a policy pull request.
//!
//! Compared by meaning, not by text: mode and default, environments, every
//! CIDR whose environment changes (including an address range that a new,
//! narrower prefix takes from another environment), every (from, to, ports)
//! whose verdict changes (with audit mode folded in: `enforce` -> `audit`
//! changes every drop), and the interface selection.

use std::{collections::BTreeSet, fmt::Write as _, path::PathBuf};

use ipnet::IpNet;
use serde::Serialize;

use super::table::{self, Align, Cell, Color, Output, Style, Table};
use crate::policy::{self, CompiledPolicy, Policy, Verdict, L4, WORLD};

/// Exit code of `policy diff` when the policies differ.
pub const EXIT_CHANGED: i32 = 1;
/// Exit code of `policy diff` on an error (a file missing or invalid).
pub const EXIT_ERROR: i32 = 2;

/// A verdict and the rule that gave it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Answer {
    pub verdict: String,
    pub rule: String,
}

/// An environment pair (and ports) whose verdict changes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerdictChange {
    pub from: String,
    pub to: String,
    /// `*`: the pair's own verdict (ports no port rule names, protocols
    /// without ports); else `53/udp`, `8000-8099/tcp`.
    pub ports: String,
    /// `None`: an environment of the pair is not in this file.
    pub old: Option<Answer>,
    pub new: Option<Answer>,
}

/// A CIDR whose environment changes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CidrChange {
    #[serde(serialize_with = "table::ser_display")]
    pub cidr: IpNet,
    /// Environment of the range in each file (`world`: in none).
    pub old: String,
    pub new: String,
    /// The prefix of the old file that put the range in `old`, when it is
    /// not `cidr` itself.
    #[serde(serialize_with = "table::ser_display_opt")]
    pub old_via: Option<IpNet>,
    #[serde(serialize_with = "table::ser_display_opt")]
    pub new_via: Option<IpNet>,
}

/// A setting that changes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub old: String,
    pub new: String,
}

/// Everything that changes between two policies.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PolicyDiff {
    pub old_file: String,
    pub new_file: String,
    pub mode: Option<Change>,
    pub default: Option<Change>,
    pub environments_added: Vec<String>,
    pub environments_removed: Vec<String>,
    pub cidrs: Vec<CidrChange>,
    pub verdicts: Vec<VerdictChange>,
    pub interfaces_include: Option<Change>,
    pub interfaces_exclude: Option<Change>,
}

impl PolicyDiff {
    /// Number of changes.
    pub fn count(&self) -> usize {
        usize::from(self.mode.is_some())
            + usize::from(self.default.is_some())
            + self.environments_added.len()
            + self.environments_removed.len()
            + self.cidrs.len()
            + self.verdicts.len()
            + usize::from(self.interfaces_include.is_some())
            + usize::from(self.interfaces_exclude.is_some())
    }
}

/// Consecutive ports of one protocol with one change: (proto, first,
/// last, old answer, new answer).
type PortRun = (u8, u16, u16, Option<Answer>, Option<Answer>);

fn names(c: &CompiledPolicy) -> Vec<String> {
    c.env_names
        .iter()
        .skip(1)
        .filter(|n| !n.is_empty())
        .cloned()
        .collect()
}

fn answer(c: &CompiledPolicy, from: &str, to: &str, l4: L4) -> Option<Answer> {
    let (s, d) = (c.env_id(from)?, c.env_id(to)?);
    let (v, rule) = c.decide(s, d, l4);
    Some(Answer {
        verdict: Verdict::from_u8(v)
            .map_or("unknown", Verdict::as_str)
            .to_owned(),
        rule: c.rule_name(rule).to_owned(),
    })
}

/// Whether a one-sided answer is worth listing (a rule decides it).
fn by_rule(a: &Option<Answer>) -> bool {
    a.as_ref().is_some_and(|a| a.rule != policy::DEFAULT_RULE)
}

fn changed(old: &Option<Answer>, new: &Option<Answer>) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => a.verdict != b.verdict,
        (None, None) => false,
        _ => by_rule(old) || by_rule(new),
    }
}

/// A prefix as (first address, last address, length), IPv4 in the low
/// 32 bits: the sweep's order and containment.
fn span(net: IpNet) -> (u128, u128, u8) {
    let (first, last) = match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    (first, last, net.prefix_len())
}

/// The environment of each whole range of `nets` (one family, sorted by
/// network, then length) in `c`'s `prefixes` of that family: the longest
/// prefix that holds all of it (`world` when none does). One sweep over
/// both sorted lists with a stack of nested prefixes (prefixes are nested
/// or disjoint), so that a diff of two 100,000-CIDR policies takes
/// milliseconds, not the minutes a scan per range took (it held the
/// agent's loop past SIGTERM's 30 s after such a reload).
fn envs_of_nets(
    c: &CompiledPolicy,
    prefixes: &[(IpNet, u32)],
    nets: &[IpNet],
) -> Vec<(String, Option<IpNet>)> {
    let mut sorted: Vec<((u128, u128, u8), IpNet, u32)> =
        prefixes.iter().map(|&(p, id)| (span(p), p, id)).collect();
    sorted.sort_by_key(|(s, ..)| (s.0, s.2));
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut out = Vec::with_capacity(nets.len());
    for &net in nets {
        let (first, _, len) = span(net);
        while let Some(&(s, ..)) = sorted.get(next) {
            if (s.0, s.2) > (first, len) {
                break;
            }
            while stack.last().is_some_and(|&t| sorted[t].0 .1 < s.0) {
                stack.pop();
            }
            stack.push(next);
            next += 1;
        }
        while stack.last().is_some_and(|&t| sorted[t].0 .1 < first) {
            stack.pop();
        }
        out.push(match stack.last() {
            Some(&t) => (c.env_name(sorted[t].2).to_owned(), Some(sorted[t].1)),
            None => (WORLD.to_owned(), None),
        });
    }
    out
}

/// Compares two validated policies.
pub fn diff(old_file: &str, old: &Policy, new_file: &str, new: &Policy) -> PolicyDiff {
    let (co, cn) = (policy::compile(old), policy::compile(new));
    let (no, nn) = (names(&co), names(&cn));
    let mut all: Vec<String> = vec![WORLD.to_owned()];
    all.extend(no.iter().chain(&nn).cloned().collect::<BTreeSet<_>>());

    let mut verdicts = Vec::new();
    for from in &all {
        for to in &all {
            let o = answer(&co, from, to, L4::Other);
            let n = answer(&cn, from, to, L4::Other);
            if changed(&o, &n) {
                verdicts.push(VerdictChange {
                    from: from.clone(),
                    to: to.clone(),
                    ports: "*".to_owned(),
                    old: o,
                    new: n,
                });
            }
            // Every port a port rule of this pair names, in either file.
            let ports_of = |c: &CompiledPolicy| -> Vec<(u8, u16)> {
                match (c.env_id(from), c.env_id(to)) {
                    (Some(s), Some(d)) => c
                        .ports
                        .iter()
                        .filter(|(k, _)| u32::from(k.src_env) == s && u32::from(k.dst_env) == d)
                        .map(|(k, _)| (k.proto, k.port))
                        .collect(),
                    _ => Vec::new(),
                }
            };
            let keys: BTreeSet<(u8, u16)> =
                ports_of(&co).into_iter().chain(ports_of(&cn)).collect();
            // Runs of consecutive ports with the same change.
            let mut run: Option<PortRun> = None;
            let mut flush = |r: PortRun| {
                verdicts.push(VerdictChange {
                    from: from.clone(),
                    to: to.clone(),
                    ports: ports_text(r.0, r.1, r.2),
                    old: r.3,
                    new: r.4,
                });
            };
            for (proto, port) in keys {
                let l4 = L4::Ports { proto, dport: port };
                let o = answer(&co, from, to, l4);
                let n = answer(&cn, from, to, l4);
                if !changed(&o, &n) {
                    if let Some(r) = run.take() {
                        flush(r);
                    }
                    continue;
                }
                run = match run.take() {
                    Some(r)
                        if r.0 == proto
                            && u32::from(r.2) + 1 == u32::from(port)
                            && r.3 == o
                            && r.4 == n =>
                    {
                        Some((r.0, r.1, port, r.3, r.4))
                    }
                    Some(r) => {
                        flush(r);
                        Some((proto, port, port, o, n))
                    }
                    None => Some((proto, port, port, o, n)),
                };
            }
            if let Some(r) = run {
                flush(r);
            }
        }
    }

    let mut cidrs = Vec::new();
    let v4 = |c: &CompiledPolicy| -> Vec<(IpNet, u32)> {
        c.v4.iter().map(|&(p, id)| (IpNet::V4(p), id)).collect()
    };
    let v6 = |c: &CompiledPolicy| -> Vec<(IpNet, u32)> {
        c.v6.iter().map(|&(p, id)| (IpNet::V6(p), id)).collect()
    };
    for (po, pn) in [(v4(&co), v4(&cn)), (v6(&co), v6(&cn))] {
        let mut nets: Vec<IpNet> = po.iter().chain(&pn).map(|(p, _)| *p).collect();
        nets.sort_by_key(|n| {
            let (first, _, len) = span(*n);
            (first, len)
        });
        nets.dedup();
        let olds = envs_of_nets(&co, &po, &nets);
        let news = envs_of_nets(&cn, &pn, &nets);
        for ((net, (o, ov)), (n, nv)) in nets.into_iter().zip(olds).zip(news) {
            if o != n {
                cidrs.push(CidrChange {
                    cidr: net,
                    old: o,
                    new: n,
                    old_via: ov.filter(|p| *p != net),
                    new_via: nv.filter(|p| *p != net),
                });
            }
        }
    }

    let change = |a: String, b: String| (a != b).then_some(Change { old: a, new: b });
    let list = |v: &[String]| format!("[{}]", v.join(", "));
    PolicyDiff {
        old_file: old_file.to_owned(),
        new_file: new_file.to_owned(),
        mode: change(old.mode.to_string(), new.mode.to_string()),
        default: change(old.default.to_string(), new.default.to_string()),
        environments_added: nn.iter().filter(|n| !no.contains(n)).cloned().collect(),
        environments_removed: no.iter().filter(|n| !nn.contains(n)).cloned().collect(),
        cidrs,
        verdicts,
        interfaces_include: change(list(&old.interfaces.include), list(&new.interfaces.include)),
        interfaces_exclude: change(list(&old.interfaces.exclude), list(&new.interfaces.exclude)),
    }
}

fn ports_text(proto: u8, first: u16, last: u16) -> String {
    let name = policy::proto_name(proto).map_or_else(|| proto.to_string(), str::to_owned);
    if first == last {
        format!("{first}/{name}")
    } else {
        format!("{first}-{last}/{name}")
    }
}

/// Runs `policy diff`: prints the changes; exits 0 (none), 1 (changes) or 2
/// (an error).
pub fn run(old: PathBuf, new: PathBuf, output: Output, no_color: bool) -> anyhow::Result<()> {
    let load = |path: &PathBuf| match policy::load(path) {
        Ok(p) => Some(p),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    };
    let (o, n) = (load(&old), load(&new));
    let (Some(o), Some(n)) = (o, n) else {
        eprintln!(
            "envfence: error: cannot compare: fix the errors above first (exit {EXIT_ERROR})"
        );
        table::exit(EXIT_ERROR);
    };
    let d = diff(
        &old.display().to_string(),
        &o,
        &new.display().to_string(),
        &n,
    );
    match output {
        Output::Json => {
            if let Err(e) = table::print_json(&d) {
                eprintln!("envfence: error: {e}");
                table::exit(EXIT_ERROR);
            }
        }
        Output::Table => table::print(&render(
            &d,
            &Style::for_stdout(no_color),
            o.source_sha256 == n.source_sha256,
        )),
    }
    if d.count() > 0 {
        table::exit(EXIT_CHANGED);
    }
    Ok(())
}

fn answer_cell(a: &Option<Answer>) -> Cell {
    match a {
        Some(a) => Cell::colored(
            format!("{} ({})", a.verdict, a.rule),
            verdict_color(&a.verdict),
        ),
        None => Cell::colored("(no such environment)", Color::Dim),
    }
}

fn verdict_color(v: &str) -> Color {
    match v {
        "drop" => Color::Red,
        "audit" => Color::Yellow,
        "allow" => Color::Green,
        _ => Color::None,
    }
}

/// The diff as text.
pub fn render(d: &PolicyDiff, s: &Style, same_text: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- {}\n+++ {}", d.old_file, d.new_file);
    if d.count() == 0 {
        out.push_str(if same_text {
            "no change: the files are identical\n"
        } else {
            "no change in what is enforced (the files differ only in form: comments, order, spelling)\n"
        });
        return out;
    }
    let arrow = |c: &Change| format!("{} -> {}", c.old, c.new);
    if let Some(c) = &d.mode {
        let _ = writeln!(out, "mode:         {}", s.bold(&arrow(c)));
    }
    if let Some(c) = &d.default {
        let _ = writeln!(out, "default:      {}", s.bold(&arrow(c)));
    }
    if !d.environments_added.is_empty() || !d.environments_removed.is_empty() {
        let mut parts: Vec<String> = d
            .environments_added
            .iter()
            .map(|e| s.green(&format!("+{e}")))
            .collect();
        parts.extend(
            d.environments_removed
                .iter()
                .map(|e| s.red(&format!("-{e}"))),
        );
        let _ = writeln!(out, "environments: {}", parts.join(" "));
    }
    if let Some(c) = &d.interfaces_include {
        let _ = writeln!(out, "interfaces:   include {}", arrow(c));
    }
    if let Some(c) = &d.interfaces_exclude {
        let _ = writeln!(out, "interfaces:   exclude {}", arrow(c));
    }
    if !d.cidrs.is_empty() {
        out.push_str("\nCIDRs that change environment:\n");
        let mut t = Table::new(&[
            ("CIDR", Align::Left),
            ("OLD", Align::Left),
            ("NEW", Align::Left),
        ]);
        for c in &d.cidrs {
            let side = |env: &str, via: &Option<IpNet>| match via {
                Some(p) => format!("{env} (via {p})"),
                None => env.to_owned(),
            };
            t.push(vec![
                Cell::new(c.cidr.to_string()),
                Cell::new(side(&c.old, &c.old_via)),
                Cell::colored(side(&c.new, &c.new_via), Color::Bold),
            ]);
        }
        out.push_str(&t.render(s));
    }
    if !d.verdicts.is_empty() {
        out.push_str("\nverdicts that change (PORTS *: every port no port rule names, and protocols without ports):\n");
        let mut t = Table::new(&[
            ("FROM", Align::Left),
            ("TO", Align::Left),
            ("PORTS", Align::Left),
            ("OLD", Align::Left),
            ("NEW", Align::Left),
        ]);
        for v in &d.verdicts {
            t.push(vec![
                Cell::new(v.from.clone()),
                Cell::new(v.to.clone()),
                Cell::new(v.ports.clone()),
                answer_cell(&v.old),
                answer_cell(&v.new),
            ]);
        }
        out.push_str(&t.render(s));
    }
    let _ = writeln!(out, "\n{} change(s)", d.count());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Policy {
        policy::parse(text, "t.yaml").unwrap()
    }

    #[test]
    fn same_policy_no_change() {
        let a = p(policy::EXAMPLE_POLICY);
        let d = diff("a", &a, "b", &a);
        assert_eq!(d.count(), 0, "{d:#?}");
    }

    #[test]
    fn changes_are_found() {
        let old = p(policy::EXAMPLE_POLICY);
        let text = policy::EXAMPLE_POLICY
            .replace("\"53/udp\", \"53/tcp\"", "\"53/udp\"")
            .replace(
                "staging:    [\"10.20.0.0/16\", \"fd00:20::/32\"]",
                "staging:    [\"10.20.0.0/16\", \"fd00:20::/32\", \"10.10.9.0/24\"]",
            )
            .replace("mode: enforce", "mode: audit");
        let new = p(&text);
        let d = diff("old", &old, "new", &new);
        assert_eq!(
            d.mode,
            Some(Change {
                old: "enforce".into(),
                new: "audit".into()
            })
        );
        assert!(d.cidrs.iter().any(|c| c.cidr.to_string() == "10.10.9.0/24"
            && c.old == "production"
            && c.new == "staging"
            && c.old_via.map(|v| v.to_string()) == Some("10.10.0.0/16".into())));
        // 53/tcp test -> production: allow by the port rule, now the pair's
        // drop, folded to audit.
        assert!(d.verdicts.iter().any(|v| v.from == "test"
            && v.to == "production"
            && v.ports == "53/tcp"
            && v.old.as_ref().map(|a| a.verdict.as_str()) == Some("allow")
            && v.new.as_ref().map(|a| a.verdict.as_str()) == Some("audit")));
        // Audit mode turns every dropped pair into audit.
        assert!(d
            .verdicts
            .iter()
            .any(|v| v.from == "production" && v.to == "test" && v.ports == "*"));
    }

    /// The scan the sweep replaced, kept as the test's oracle: every prefix
    /// of `c` tried against `net`.
    fn scan(c: &CompiledPolicy, net: IpNet) -> String {
        let holds = |p: IpNet| p.prefix_len() <= net.prefix_len() && p.contains(&net.network());
        let all =
            c.v4.iter()
                .map(|&(p, id)| (IpNet::V4(p), id))
                .chain(c.v6.iter().map(|&(p, id)| (IpNet::V6(p), id)));
        all.filter(|&(p, _)| holds(p))
            .max_by_key(|(p, _)| p.prefix_len())
            .map_or(WORLD.to_owned(), |(_, id)| c.env_name(id).to_owned())
    }

    /// A policy of `n` nested random prefixes per family (few top bits
    /// vary, lengths /4–/32 and /4–/128: chains and siblings), drawn
    /// from `seed` over three environments.
    fn nested(seed: u64, n: usize) -> Policy {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut envs: [Vec<String>; 3] = Default::default();
        let mut seen = BTreeSet::new();
        while seen.len() < 2 * n {
            let r = next();
            let v4 = seen.len() % 2 == 0;
            let net = if v4 {
                let len = 4 + (r % 29) as u8;
                let addr = std::net::Ipv4Addr::from(((r >> 8) as u32) & 0xff0f_0f0f);
                IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc())
            } else {
                let len = 4 + (r % 125) as u8;
                let bits = (u128::from(next()) << 64 | u128::from(r)) & 0xff0f_0f0f << 96;
                let addr = std::net::Ipv6Addr::from(bits);
                IpNet::V6(ipnet::Ipv6Net::new(addr, len).unwrap().trunc())
            };
            if seen.insert(net) {
                envs[(next() % 3) as usize].push(format!("\"{net}\""));
            }
        }
        let mut text = String::from("mode: enforce\ndefault: allow\nenvironments:\n");
        for (name, cidrs) in ["production", "staging", "test"].iter().zip(&envs) {
            text.push_str(&format!("  {name}: [{}]\n", cidrs.join(", ")));
        }
        p(&text)
    }

    #[test]
    fn cidr_changes_match_a_scan_of_every_prefix() {
        for seed in [1, 7, 42] {
            let (old, new) = (nested(seed, 400), nested(seed + 1000, 400));
            let d = diff("old", &old, "new", &new);
            let (co, cn) = (policy::compile(&old), policy::compile(&new));
            let nets: BTreeSet<IpNet> = co
                .v4
                .iter()
                .chain(&cn.v4)
                .map(|(p, _)| IpNet::V4(*p))
                .chain(co.v6.iter().chain(&cn.v6).map(|(p, _)| IpNet::V6(*p)))
                .collect();
            let expected: Vec<(IpNet, String, String)> = nets
                .into_iter()
                .map(|n| (n, scan(&co, n), scan(&cn, n)))
                .filter(|(_, o, n)| o != n)
                .collect();
            let got: Vec<(IpNet, String, String)> = d
                .cidrs
                .iter()
                .map(|c| (c.cidr, c.old.clone(), c.new.clone()))
                .collect();
            assert!(expected.len() > 100, "seed {seed}: too few changes to tell");
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}
