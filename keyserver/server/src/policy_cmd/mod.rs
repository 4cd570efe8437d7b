//! `kss policy`: try a policy before it goes live (`check`, `dump`, `diff`, `eval`,
//! offline), and the policy in the keyserver's database (`load`, `dump --current`).

pub mod eval;

use std::fs;
use std::io::{self, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use kss_policy::{MemoryQuotaStore, Policy};

use crate::cli::PolicyCommand;
use crate::commands::server_policy;
use crate::data_dir::DataDir;
use crate::runtime::block_on;

pub fn run(command: PolicyCommand, data_dir: &DataDir) -> Result<()> {
    match command {
        PolicyCommand::Check { file } => check(&file),
        // `dump FILE` of a FILE that does not exist is the policy in force, written there.
        PolicyCommand::Dump { file, current, .. } if current || !file.exists() => block_on(async {
            let store = data_dir.open_store().await?;
            server_policy::dump_current(store.as_ref(), &file).await
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
                server_policy::load(store.as_ref(), data_dir, &file, wait).await
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
