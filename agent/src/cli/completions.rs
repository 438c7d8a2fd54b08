//! `envfence completions SHELL` and `envfence man`: generated from the clap
//! definitions, so they always match the binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  envfence completions bash > /etc/bash_completion.d/envfence
  envfence completions zsh > \"${fpath[1]}/_envfence\"
  envfence completions fish > ~/.config/fish/completions/envfence.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  envfence man | man -l -
  envfence man --dir /usr/local/share/man/man1   # envfence.1, envfence-status.1 ...")]
pub struct ManArgs {
    /// Write one page per command (envfence.1, envfence-flows.1 ...) into
    /// this directory instead of printing envfence(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "envfence", &mut out);
    super::table::print(&String::from_utf8_lossy(&out));
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            super::table::print(&String::from_utf8_lossy(&out));
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            eprintln!("envfence: man pages written into {}", dir.display());
        }
    }
    Ok(())
}
