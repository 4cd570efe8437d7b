//! `kss policy`: try a policy before it goes live (`check`, `dump`, `diff`, `eval`,
//! offline), and the policy in the keyserver's database (`load`, `dump --current`).

mod database;
pub mod eval;

use std::fs;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use kss_policy::{MemoryQuotaStore, Policy};

use crate::data_dir::DataDir;
use crate::runtime::block_on;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy: exit 0 with a one-line summary, or non-zero with the located error.
    /// Migration warnings (constructs whose meaning differs from the original engine) go to
    /// stderr and do not fail the check.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the canonical YAML of a policy file, with every rule_id filled in. With
    /// --current (or when FILE does not exist), write the keyserver's policy in force to
    /// FILE instead.
    Dump {
        /// The policy file (or, with --current, where to write).
        file: PathBuf,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write the policy in force in the keyserver's database to FILE.
        #[arg(long)]
        current: bool,
    },
    /// Validate a policy file and store it as a new version in the keyserver's database;
    /// a running server applies it without a restart. Invalid: nothing changes.
    Load {
        /// The policy file.
        file: PathBuf,
        /// Then wait (up to SECS, default 10) until every online instance applied it, and
        /// print how long the rollout took; fails naming the instances that lag.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "10")]
        wait: Option<f64>,
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

pub fn run(command: PolicyCommand, data_dir: &DataDir) -> Result<()> {
    match command {
        PolicyCommand::Check { file } => check(&file),
        // `dump FILE` of a FILE that does not exist is the policy in force, written there.
        PolicyCommand::Dump { file, current, .. } if current || !file.exists() => block_on(async {
            let store = data_dir.open_store().await?;
            database::dump_current(store.as_ref(), &file).await
        }),
        PolicyCommand::Dump { file, output, .. } => dump(&file, output.as_deref()),
        PolicyCommand::Load { file, wait } => {
            let wait = wait
                .map(|secs| {
                    Duration::try_from_secs_f64(secs)
                        .map_err(|_| anyhow!("--wait {secs}: give seconds, 0 or more"))
                })
                .transpose()?;
            block_on(async {
                let store = data_dir.open_store().await?;
                database::load(store.as_ref(), data_dir, &file, wait).await
            })
        }
        PolicyCommand::Diff { old, new } => diff(&old, &new),
        PolicyCommand::Eval {
            policy,
            requests,
            tz,
        } => eval_command(&policy, requests.as_deref(), &tz),
    }
}

/// Reads and validates a policy file; warnings go to stderr.
pub fn load(path: &Path) -> Result<Policy> {
    read(path).map(|(_, policy)| policy)
}

/// Reads and validates a policy file, keeping its text; warnings go to stderr.
pub fn read(path: &Path) -> Result<(String, Policy)> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let policy = Policy::load(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for w in policy.warnings() {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok((text, policy))
}

fn check(path: &Path) -> Result<()> {
    let policy = load(path)?;
    println!("{}: valid: {}", path.display(), policy.summary());
    Ok(())
}

fn dump(path: &Path, output: Option<&Path>) -> Result<()> {
    let yaml = load(path)?.dump();
    match output {
        Some(out) => {
            fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))
        }
        None => io::stdout()
            .write_all(yaml.as_bytes())
            .context("cannot write to standard output"),
    }
}

/// Throttles of NEW whose counters carry over from OLD (same rule id), start from zero,
/// or are discarded.
fn diff(old: &Path, new: &Path) -> Result<()> {
    let old_policy = load(old)?;
    let new_policy = load(new)?;
    let throttles = |p: &'_ Policy| -> Vec<(String, String, bool)> {
        p.rules()
            .into_iter()
            .filter(|r| r.name == kss_policy::THROTTLE)
            .map(|r| {
                let place = format!(
                    "{}: rule set {}, rule {}",
                    r.request_type, r.rule_set, r.rule
                );
                (r.id.to_string(), place, r.persistent)
            })
            .collect()
    };
    let (before, after) = (throttles(&old_policy), throttles(&new_policy));
    let has = |list: &[(String, String, bool)], id: &str| list.iter().any(|(i, _, _)| i == id);
    let kind = |persistent: bool| {
        if persistent {
            "persistent"
        } else {
            "in memory"
        }
    };
    let (mut kept, mut fresh, mut dropped) = (0, 0, 0);
    for (id, place, persistent) in &after {
        if has(&before, id) {
            kept += 1;
            println!(
                "kept     {place}  {id}  ({}): counters carry over",
                kind(*persistent)
            );
        } else {
            fresh += 1;
            println!(
                "new      {place}  {id}  ({}): counters start from zero",
                kind(*persistent)
            );
        }
    }
    for (id, place, persistent) in before.iter().filter(|(id, _, _)| !has(&after, id)) {
        dropped += 1;
        println!(
            "dropped  {place} (old)  {id}  ({}): counters are discarded",
            kind(*persistent)
        );
    }
    println!("{kept} kept, {fresh} new, {dropped} dropped");
    if dropped > 0 && fresh > 0 {
        println!(
            "hint: to keep an edited rule's counters, write its old rule_id in the new file \
             (`kss policy dump OLD` shows every id)"
        );
    }
    Ok(())
}

fn eval_command(policy: &Path, requests: Option<&Path>, tz: &str) -> Result<()> {
    let tz = kss_policy::time_zone(tz).map_err(|e| anyhow!("--tz: {e}"))?;
    let policy = load(policy)?;
    let store = MemoryQuotaStore::new();
    let stdout = io::stdout().lock();
    let mut evaluator = eval::Evaluator::new(&policy, &tz, &store);
    match requests {
        Some(path) => {
            let file =
                fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            evaluator.run(BufReader::with_capacity(1 << 17, file), stdout)
        }
        None => evaluator.run(
            BufReader::with_capacity(1 << 17, io::stdin().lock()),
            stdout,
        ),
    }
    .context("evaluation stopped")
}
