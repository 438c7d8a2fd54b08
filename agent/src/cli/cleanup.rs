//! `envfence cleanup`: for a stopped agent, detach every envfence link and
//! remove every pin (every ABI version's) and the saved policy, nothing else.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::{
    datapath::pins::{self, DEFAULT_PIN_ROOT},
    state::{self, DEFAULT_STATE_DIR},
};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs directory of envfence's pins.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
    /// Directory of the agent's saved state.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
}

pub fn run(args: CleanupArgs) -> anyhow::Result<()> {
    if !args.pin_root.exists() {
        println!("nothing pinned under {}", args.pin_root.display());
    }
    let done = pins::cleanup(&args.pin_root);
    let states = state::remove_all(&args.state_dir);
    println!(
        "detached {} link(s), removed {} pin(s) under {} and {} saved polic{} in {}",
        done.links_detached,
        done.files_removed,
        args.pin_root.display(),
        states,
        if states == 1 { "y" } else { "ies" },
        args.state_dir.display()
    );
    let real_errors: Vec<&String> = done
        .errors
        .iter()
        .filter(|e| !e.contains("No such file or directory"))
        .collect();
    for e in &real_errors {
        eprintln!("envfence cleanup: {e}");
    }
    if !real_errors.is_empty() {
        bail!("{} item(s) could not be removed", real_errors.len());
    }
    Ok(())
}
