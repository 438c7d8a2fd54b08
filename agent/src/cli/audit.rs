//! `envfence audit`: verify the chain (the node's files, a SIEM's copy,
//! with a key, against the anchors Prometheus keeps) and show its change
//! records. Read-only: needs read access to the files and nothing else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;

use super::table::{self, Align, Cell, Output, Style, Table};
use crate::audit::{
    change::ChangeRecord, discover, head_path, order_by_first_seq, verify_files, ChainKey,
    HeadCheck, VerifyOptions,
};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a hash-chained audit log (written with `envfence agent
    /// --audit-file FILE`): every record's hash, every link of the chain,
    /// across rotated files, and that the chain reaches the record named by
    /// FILE.head. Prints OK and the record count, or the first record where
    /// an edit, deletion, reordering or truncation breaks the chain
    /// (file:line, seq, what is wrong) and exits 1.
    ///
    /// With one FILE, its rotated files (FILE.1, FILE.2 …) and FILE.head are
    /// found next to it. With several, exactly those files are checked, as
    /// one chain, in the order of their records.
    ///
    /// A SIEM's copy (--siem) is a file of the lines the receiver wrote:
    /// the record may follow the receiver's own prefix, records sent again
    /// (at-least-once delivery) are skipped when they are identical, and
    /// the copy may begin and end anywhere (give the node's head with
    /// --head to check that it reaches it).
    ///
    /// Example: envfence audit verify /var/log/envfence/audit.jsonl
    /// --anchors http://prometheus:9090
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The key of a keyed chain (the agent's --audit-key file).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A Prometheus server that scrapes the agent: every chain head it
        /// recorded for the node (envfence_audit_head_seq and
        /// envfence_audit_head_hash) must be in the files' chain, which
        /// detects a consistent rewrite of the whole chain (http://HOST:PORT).
        #[arg(long, value_name = "URL")]
        anchors: Option<String>,
        /// The node whose anchors are checked (default: the node the
        /// records name).
        #[arg(long, value_name = "NAME", requires = "anchors")]
        node: Option<String>,
        /// How far back anchors are read (a PromQL duration).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "90d",
            requires = "anchors"
        )]
        anchors_range: String,
        /// The files are a SIEM's copy (see above).
        #[arg(long)]
        siem: bool,
        /// The head file (default: the FILE.head of a given FILE that has
        /// one).
        #[arg(long, value_name = "FILE", conflicts_with = "no_head")]
        head: Option<PathBuf>,
        /// Do not check the end of the chain against a head file (records
        /// cut from the end then go unnoticed).
        #[arg(long)]
        no_head: bool,
    },
    /// Show the records of an audit log: with --changes, its change
    /// records (policy loads, reloads, refused files, adoptions, agent
    /// start and stop: time, generation, old and new sha256, source,
    /// revision, what changed).
    ///
    /// Example: envfence audit show --changes /var/log/envfence/audit.jsonl
    Show {
        /// The audit file (its rotated files are read too, oldest first).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Only the change records.
        #[arg(long)]
        changes: bool,
        /// Output format (json: one JSON document of the change records).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            files,
            head,
            no_head,
            key,
            anchors,
            node,
            anchors_range,
            siem,
        } => {
            let key = key
                .as_ref()
                .map(|p| ChainKey::read(p, "--key"))
                .transpose()?;
            let anchors = match &anchors {
                Some(url) => {
                    let node = match node {
                        Some(n) => n,
                        None => node_of(&files).with_context(|| {
                            "no record names its node: give --node NAME".to_owned()
                        })?,
                    };
                    let got = super::anchors::fetch(url, &node, &anchors_range)?;
                    println!(
                        "anchors: {} head(s) recorded by {url} for node {node} in the last {anchors_range}",
                        got.len()
                    );
                    if got.is_empty() {
                        bail!("--anchors {url}: no envfence_audit_head_seq{{node=\"{node}\"}} samples: nothing to check against (is the agent scraped, is --node right?)");
                    }
                    got
                }
                None => Vec::new(),
            };
            verify(
                &files,
                head,
                no_head || siem,
                VerifyOptions {
                    head: None,
                    key,
                    anchors,
                    siem,
                },
            )
        }
        AuditCommand::Show {
            file,
            changes,
            output,
        } => show(&file, changes, output),
    }
}

/// The node of the first record that names one.
fn node_of(files: &[PathBuf]) -> Option<String> {
    use std::io::BufRead as _;
    for f in files {
        let Ok(file) = std::fs::File::open(f) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().take(1000) {
            let Ok(line) = line else { break };
            let start = line.find("{\"seq\":").unwrap_or(0);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[start..]) {
                if let Some(n) = v["node"].as_str() {
                    return Some(n.to_owned());
                }
            }
        }
    }
    None
}

fn audit_set(base: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !base.exists() {
        bail!("{}: no such file", base.display());
    }
    discover(base).map_err(|e| anyhow::anyhow!("listing {}: {e}", base.display()))
}

fn show(base: &Path, changes_only: bool, output: Output) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let files = audit_set(base)?;
    let mut changes: Vec<(u64, ChangeRecord)> = Vec::new();
    for f in &files {
        let file = std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            if !changes_only {
                println!("{line}");
                continue;
            }
            if !line.contains("\"audit\":\"change\"") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a JSON record", f.display(), i + 1))?;
            let seq = v["seq"].as_u64().unwrap_or(0);
            let rec: ChangeRecord = serde_json::from_value(v)
                .with_context(|| format!("{}:{}: not a change record", f.display(), i + 1))?;
            changes.push((seq, rec));
        }
    }
    if !changes_only {
        return Ok(());
    }
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = changes
                .iter()
                .map(|(seq, r)| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["seq"] = (*seq).into();
                    v
                })
                .collect();
            table::print_json(&list)
        }
        Output::Table => {
            let short = |s: &Option<String>| {
                s.as_deref()
                    .map_or_else(|| "-".to_owned(), |h| h.chars().take(12).collect())
            };
            let mut t = Table::new(&[
                ("SEQ", Align::Right),
                ("TIME", Align::Left),
                ("CHANGE", Align::Left),
                ("GEN", Align::Right),
                ("OLD SHA256", Align::Left),
                ("NEW SHA256", Align::Left),
                ("REVISION", Align::Left),
                ("WHAT", Align::Left),
            ]);
            for (seq, r) in &changes {
                let what = match (&r.summary, &r.error, &r.detail) {
                    (Some(s), _, _) => s.text.clone(),
                    (None, Some(e), _) => e.lines().next().unwrap_or("").to_owned(),
                    (None, None, Some(d)) => d.clone(),
                    _ => String::new(),
                };
                t.push(vec![
                    Cell::new(seq.to_string()),
                    Cell::new(r.time.clone()),
                    Cell::new(r.change.clone()),
                    Cell::new(
                        r.generation
                            .map_or_else(|| "-".to_owned(), |g| g.to_string()),
                    ),
                    Cell::new(short(&r.old_sha256)),
                    Cell::new(short(&r.new_sha256)),
                    Cell::new(r.revision.clone().unwrap_or_else(|| "-".to_owned())),
                    Cell::new(what),
                ]);
            }
            table::print(&t.render(&Style::for_stdout(false)));
            println!(
                "{} change record(s) in {} file(s)",
                changes.len(),
                files.len()
            );
            Ok(())
        }
    }
}

fn verify(
    args: &[PathBuf],
    head: Option<PathBuf>,
    no_head: bool,
    mut opts: VerifyOptions,
) -> anyhow::Result<()> {
    let files = if opts.siem {
        args.to_vec()
    } else if let [base] = args {
        if !base.exists() {
            bail!("{}: no such file", base.display());
        }
        discover(base).map_err(|e| anyhow::anyhow!("listing {}: {e}", base.display()))?
    } else {
        order_by_first_seq(args)
    };
    let head = if no_head {
        head
    } else {
        head.or_else(|| args.iter().map(|f| head_path(f)).find(|p| p.exists()))
    };
    let head_shown = head.as_ref().map(|p| p.display().to_string());
    opts.head = head;
    let anchors = opts.anchors.len();
    let report = verify_files(&files, &opts);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    match &report.broken {
        None => {
            let range = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!("seq {a}..={b}"),
                _ => "no records".to_owned(),
            };
            println!(
                "OK: {} records ({} events), {range}, in {} file(s): {}",
                report.records,
                report.events,
                files.len(),
                names.join(", ")
            );
            if !report.from_genesis {
                println!(
                    "note: the chain starts at seq {} (older files were rotated away)",
                    report.first_seq.unwrap_or(0)
                );
            }
            match (&report.head, head_shown) {
                (Some(HeadCheck::Matches { seq }), Some(p)) => {
                    println!("head: {p} names seq {seq}, the last record")
                }
                (Some(HeadCheck::Behind { seq, after }), Some(p)) => println!(
                    "head: {p} names seq {seq}; {after} record(s) after it (written after its last update)"
                ),
                _ => println!(
                    "warning: no head file checked: records cut from the end of the chain would go unnoticed"
                ),
            }
            if report.changes > 0 {
                println!(
                    "{} change record(s) (envfence audit show --changes)",
                    report.changes
                );
            }
            if report.keyed || opts.key.is_some() {
                println!("keyed: every record's HMAC-SHA256 matches the key");
            }
            if opts.siem {
                println!(
                    "SIEM copy: {} duplicate(s) skipped (same seq and hash, sent again), {} other line(s) skipped",
                    report.duplicates, report.other_lines
                );
            }
            if anchors > 0 {
                println!(
                    "anchors: {} of {anchors} recorded head(s) are in the chain; {} are older than its first record (rotated away)",
                    report.anchors_matched, report.anchors_before
                );
            }
            for (seq, missed) in &report.gaps {
                println!(
                    "warning: seq {seq}: the agent announced {missed} record(s) it could not write"
                );
            }
            Ok(())
        }
        Some(b) => {
            println!("BROKEN: {b}");
            println!(
                "{} record(s) before it verified ({})",
                report.records,
                names.join(", ")
            );
            bail!(
                "the audit chain is broken at {}:{}",
                b.file.display(),
                b.line
            )
        }
    }
}
