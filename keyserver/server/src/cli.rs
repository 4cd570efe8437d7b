//! Command-line interface of `kss`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kss — a key shard server: approves M-of-N requests automatically, as a YAML policy allows.
#[derive(Debug, Parser)]
#[command(name = "kss", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with policy files (keyserver.yml) without a running keyserver.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy: exit 0 with a one-line summary, or non-zero with the located error.
    /// Migration warnings (constructs whose meaning differs from the original engine) go to
    /// stderr and do not fail the check.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the canonical YAML of a policy, with every rule_id filled in.
    Dump {
        /// The policy file.
        file: PathBuf,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Show which quota counters survive replacing OLD with NEW: throttle rules are matched
    /// by rule_id, so a throttle whose id changes starts counting from zero.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The policy that would replace it.
        new: PathBuf,
    },
    /// Evaluate requests (JSON lines) against a policy, with quota counters in memory.
    /// Writes one JSON line per input line, in order.
    Eval {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// JSON lines to evaluate (standard input when absent).
        #[arg(long)]
        requests: Option<PathBuf>,
        /// The keyserver's time zone (IANA name): calendar hours and days of quotas,
        /// dates, weekdays and times without an offset.
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
}
