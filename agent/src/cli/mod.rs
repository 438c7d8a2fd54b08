//! The `envfence` command line.

mod agent;
mod audit;
mod cleanup;
mod policy;

use clap::{Parser, Subcommand};

pub use agent::AgentArgs;
pub use audit::AuditCommand;
pub use cleanup::CleanupArgs;
pub use policy::PolicyCommand;

/// envfence: keeps environments apart on the network, enforced by eBPF.
#[derive(Debug, Parser)]
#[command(name = "envfence", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: load the policy into the kernel, attach to the
    /// matching interfaces, serve metrics, print violation events as JSON
    /// lines on stdout. Needs root (CAP_BPF, CAP_NET_ADMIN).
    ///
    /// Example: envfence agent --config /etc/envfence/policy.yaml --metrics-addr 0.0.0.0:9477
    Agent(AgentArgs),
    /// Validate or print policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check the hash-chained audit log the agent writes (--audit-file).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Remove everything envfence pinned or attached on this node: detach
    /// every pinned tcx link, remove every pinned map (all ABI versions) and
    /// the saved policy. Nothing else is touched. Stop the agent first.
    ///
    /// Example: envfence cleanup
    Cleanup(CleanupArgs),
}

/// Runs the parsed command line; the error is what `main` prints.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Cleanup(args) => cleanup::run(args),
    }
}
