//! `kss policy load` and `kss policy dump --current`: the policy in the keyserver's
//! database. A running server applies a new version within its poll interval.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kss_policy::Policy;
use kss_store::Store;
use sha2::{Digest, Sha256};

use crate::identity::now_ms;
use crate::rollout;

/// How often `--wait` reads the registry.
const ROLLOUT_POLL: Duration = Duration::from_millis(20);

/// Validates and stores a policy file as a new version; with `wait`, then waits until
/// every online instance applied it (or the version already in force, if unchanged).
pub async fn load(store: &dyn Store, file: &Path, wait: Option<Duration>) -> Result<()> {
    // Validate whole before storing: an invalid policy changes nothing.
    let (text, policy) = crate::policy_cmd::read(file)
        .map_err(|e| anyhow!("{e:#}; the policy in force is unchanged"))?;
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    if let Some(current) = store.policy(None).await?
        && current.sha256 == sha
    {
        println!(
            "policy unchanged (version {} has the same text)",
            current.version
        );
        return match wait {
            Some(timeout) => wait_for_rollout(store, current.version, timeout).await,
            None => Ok(()),
        };
    }
    let stored = Instant::now();
    let version = store.add_policy(&text, &sha, now_ms()).await?;
    println!("policy version {version} stored ({})", policy.summary());
    match wait {
        Some(timeout) => {
            wait_for_rollout(store, version, timeout.saturating_sub(stored.elapsed())).await
        }
        None => Ok(()),
    }
}

/// Polls the registry until every online instance applied `version` (or a later one).
async fn wait_for_rollout(store: &dyn Store, version: u64, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let report = rollout::instances(store).await?;
        let online: Vec<_> = report.instances.iter().filter(|i| i.online).collect();
        let lagging: Vec<&str> = online
            .iter()
            .filter(|i| i.applied_policy_version < version)
            .map(|i| i.name.as_str())
            .collect();
        if online.is_empty() {
            println!("no instance is online: each applies version {version} when it starts");
            return Ok(());
        }
        if lagging.is_empty() {
            println!(
                "policy version {version} applied by {n}/{n} online instances in {:.3} s",
                started.elapsed().as_secs_f64(),
                n = online.len()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "policy version {version} not applied within {:.1} s by {} of {} online \
                 instances: {}",
                timeout.as_secs_f64(),
                lagging.len(),
                online.len(),
                lagging.join(", ")
            );
        }
        tokio::time::sleep(ROLLOUT_POLL).await;
    }
}

pub async fn dump_current(store: &dyn Store, out: &Path) -> Result<()> {
    let current = store
        .policy(None)
        .await?
        .context("no policy has been loaded (`kss policy load FILE`)")?;
    let policy = Policy::load(&current.text).map_err(|e| {
        anyhow!(
            "stored policy version {} does not load: {e}",
            current.version
        )
    })?;
    std::fs::write(out, policy.dump()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "policy version {} written to {}",
        current.version,
        out.display()
    );
    Ok(())
}
