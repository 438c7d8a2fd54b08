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
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
        PolicyCommand::Check { files } => {
            let mut failed = 0usize;
            for file in &files {
                match policy::load(file) {
                    Ok(p) => println!(
                        "{}: ok ({} environments, {} rules, mode {}, sha256 {})",
                        file.display(),
                        p.environments.len(),
                        p.rules.len(),
                        p.mode,
                        p.source_sha256
                    ),
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
