//! The `envfence` command line.

mod agent;
mod anchors;
mod audit;
mod cleanup;
mod completions;
mod explain;
mod explain_pcap;
mod explain_source;
mod fleet;
mod flows;
mod policy;
pub(crate) mod policy_diff;
mod status;
mod table;
mod top;

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
    /// lines on stdout. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
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
    /// Show the agent's state: up or down, mode, policy generation, hash
    /// and load time, last reload error, every attached interface (with its
    /// programs), counters, lost events, pin directory. With the agent
    /// down, shows what the pinned maps say (the kernel keeps enforcing).
    ///
    /// Example: envfence status
    Status(status::StatusArgs),
    /// List recent reported flows (log, audit, drop), filtered; --follow
    /// streams new ones; --file reads the audit log with the agent down.
    ///
    /// Example: envfence flows --verdict drop --since 10m
    Flows(flows::FlowsArgs),
    /// Explain how the kernel judges a flow from SRC to DST: each side's
    /// CIDR and environment, the deciding rule and the verdict, read from
    /// the pinned maps (no agent needed); compared with a policy file.
    /// With --pcap FILE: every packet of a capture, judged the same way.
    ///
    /// Example: envfence explain 10.30.1.2 10.10.1.2 --port 5432
    /// Example: envfence explain --pcap node.pcap --verdict drop
    Explain(explain::ExplainArgs),
    /// The heaviest violating environment pairs, addresses or rules, by
    /// packets.
    ///
    /// Example: envfence top --by src --since 15m
    Top(top::TopArgs),
    /// The whole fleet through Prometheus: every node's agent (status),
    /// forbidden traffic by node, environment pair and rule (violations,
    /// top), policy and mode drift (drift).
    ///
    /// Example: envfence fleet status --prometheus http://prometheus:9090
    Fleet(fleet::FleetArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    ///
    /// Example: envfence completions bash > /etc/bash_completion.d/envfence
    Completions(completions::CompletionsArgs),
    /// Print the man page (or write one per command with --dir).
    ///
    /// Example: envfence man | man -l -
    Man(completions::ManArgs),
}

/// Runs the parsed command line; the error is what `main` prints.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Cleanup(args) => cleanup::run(args),
        Command::Status(args) => status::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Top(args) => top::run(args),
        Command::Fleet(args) => fleet::run(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}
