//! `kss policy check | dump | eval`: try a policy before it goes live.

pub mod eval;

use std::fs;
use std::io::{self, BufReader, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use kss_policy::{MemoryQuotaStore, Policy};

use crate::cli::PolicyCommand;

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Dump { file, output } => dump(&file, output.as_deref()),
        PolicyCommand::Eval {
            policy,
            requests,
            tz,
        } => eval_command(&policy, requests.as_deref(), &tz),
    }
}

/// Reads and validates a policy file; warnings go to stderr.
pub fn load(path: &Path) -> Result<Policy> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let policy = Policy::load(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for w in policy.warnings() {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok(policy)
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
