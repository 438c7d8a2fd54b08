//! `envfence policy`: check and diff policy files and print the example
//! policy, without an agent or a kernel.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use crate::policy;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: every error of every file, with file:line:column,
    /// field and value. Exits 1 if any file has an error.
    ///
    /// Example: envfence policy check deploy/policy.yaml
    #[command(after_long_help = "\
With -o json, prints one JSON list of every error of every file, each
{\"file\", \"line\", \"column\", \"field\", \"value\", \"message\"} (line and column
are 1-based; 0 for an error with no place, such as an unreadable file): what
CI annotations need. The list is empty when every file is valid.

Examples:
  envfence policy check deploy/policy.yaml
  envfence policy check -o json policies/*.yaml | jq -r '.[] | \"::error file=\\(.file),line=\\(.line),col=\\(.column)::\\(.message)\"'")]
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format: table (one line per error, on stderr) or json (on
        /// stdout).
        #[arg(short = 'o', long, value_enum, default_value_t = super::table::Output::Table)]
        output: super::table::Output,
    },
    /// Show what changes in what is enforced between two policy files:
    /// mode and default, environments added or removed, every CIDR that
    /// changes environment, every (from, to, ports) whose verdict changes,
    /// the interface selection. The review aid for a policy pull request.
    #[command(after_long_help = "\
Exit status: 0 no change in what is enforced; 1 changes (listed); 2 an error
(a file is missing or invalid: its errors are printed).

Examples:
  envfence policy diff /etc/envfence/policy.yaml new-policy.yaml
  git show main:deploy/policy.yaml > /tmp/old.yaml && envfence policy diff /tmp/old.yaml deploy/policy.yaml
  envfence policy diff old.yaml new.yaml -o json")]
    Diff {
        /// The policy in force (or the base of the change).
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = super::table::Output::Table)]
        output: super::table::Output,
        /// No colour, even on a terminal.
        #[arg(long)]
        no_color: bool,
    },
    /// Print the example policy embedded in this binary.
    Example,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Example => {
            print!("{}", policy::EXAMPLE_POLICY);
            Ok(())
        }
        PolicyCommand::Diff {
            old,
            new,
            output,
            no_color,
        } => super::policy_diff::run(old, new, output, no_color),
        PolicyCommand::Check {
            files,
            output: super::table::Output::Json,
        } => check_json(&files),
        PolicyCommand::Check { files, .. } => {
            let mut failed = 0usize;
            for file in &files {
                match policy::load(file) {
                    Ok(p) => {
                        println!(
                            "{}: ok ({} environments, {} rules, mode {}, sha256 {})",
                            file.display(),
                            p.environments.len(),
                            p.rules.len(),
                            p.mode,
                            p.source_sha256
                        );
                        // What each include pattern gets (a glob taken as
                        // a name: `veth*` is what a `veth…` interface gets).
                        for pattern in &p.interfaces.include {
                            println!("  {}", p.source_check.explain(pattern));
                        }
                        for line in remark_lines(file, &p) {
                            println!("  {line}");
                        }
                    }
                    Err(errors) => {
                        failed += 1;
                        eprintln!("{errors}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} policy files have errors", files.len());
            }
            Ok(())
        }
    }
}

/// The warnings and notes on a valid policy (`policy::remarks`), one line
/// each (`FILE[:LINE]: warning|note: ...`), at most
/// [`policy::LISTED_CARVE_OUTS`] carve-outs.
fn remark_lines(file: &std::path::Path, p: &policy::Policy) -> Vec<String> {
    let mut lines = Vec::new();
    let remarks = policy::remarks(p);
    let carve_outs = remarks
        .iter()
        .filter(|r| matches!(r, policy::Remark::CarvedOut { .. }))
        .count();
    let mut listed = 0usize;
    for r in &remarks {
        if matches!(r, policy::Remark::CarvedOut { .. }) {
            listed += 1;
            if listed > policy::LISTED_CARVE_OUTS {
                continue;
            }
        }
        lines.push(match r.line() {
            0 => format!("{}: {}: {r}", file.display(), r.severity()),
            line => format!("{}:{line}: {}: {r}", file.display(), r.severity()),
        });
    }
    if carve_outs > policy::LISTED_CARVE_OUTS {
        lines.push(format!(
            "{}: note: and {} more carve-outs",
            file.display(),
            carve_outs - policy::LISTED_CARVE_OUTS
        ));
    }
    lines
}

/// One error of `policy check -o json`.
#[derive(Debug, serde::Serialize)]
struct JsonError<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    field: &'a str,
    value: String,
    message: &'a str,
}

fn check_json(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut all: Vec<policy::PolicyError> = Vec::new();
    let mut failed = 0usize;
    for file in files {
        match policy::load(file) {
            // Standard output stays the JSON list of errors; the warnings
            // and notes go to standard error, as lines.
            Ok(p) => {
                for line in remark_lines(file, &p) {
                    eprintln!("{line}");
                }
            }
            Err(errors) => {
                failed += 1;
                all.extend(errors);
            }
        }
    }
    let list: Vec<JsonError<'_>> = all
        .iter()
        .map(|e| JsonError {
            file: &e.origin,
            line: e.line,
            column: e.column,
            field: &e.field,
            value: e.quoted_value(),
            message: &e.message,
        })
        .collect();
    super::table::print_json(&list)?;
    if failed > 0 {
        bail!("{failed} of {} policy files have errors", files.len());
    }
    Ok(())
}
