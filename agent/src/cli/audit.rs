use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use crate::audit::{
    discover, head_path, order_by_first_seq, verify_files, HeadCheck, VerifyOptions,
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
    /// Example: envfence audit verify /var/log/envfence/audit.jsonl
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The head file (default: the FILE.head of a given FILE that has
        /// one).
        #[arg(long, value_name = "FILE", conflicts_with = "no_head")]
        head: Option<PathBuf>,
        /// Do not check the end of the chain against a head file (records
        /// cut from the end then go unnoticed).
        #[arg(long)]
        no_head: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            files,
            head,
            no_head,
        } => verify(&files, head, no_head),
    }
}

fn verify(args: &[PathBuf], head: Option<PathBuf>, no_head: bool) -> anyhow::Result<()> {
    let files = if let [base] = args {
        if !base.exists() {
            bail!("{}: no such file", base.display());
        }
        discover(base).map_err(|e| anyhow::anyhow!("listing {}: {e}", base.display()))?
    } else {
        order_by_first_seq(args)
    };
    let head = if no_head {
        None
    } else {
        head.or_else(|| args.iter().map(|f| head_path(f)).find(|p| p.exists()))
    };
    let head_shown = head.as_ref().map(|p| p.display().to_string());
    let report = verify_files(&files, &VerifyOptions { head });
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
