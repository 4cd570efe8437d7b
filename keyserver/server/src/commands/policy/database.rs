//! `kss policy load` and `kss policy dump --current`: the policy in the keyserver's
//! database. A running server applies a new version within its poll interval.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kss_policy::Policy;
use kss_store::Store;

use crate::audit_log::{self, Actor, admin_record};
use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;
use crate::policy_store::{PolicyLoadError, store_policy};
use crate::rollout;

/// How often `--wait` reads the registry.
const ROLLOUT_POLL: Duration = Duration::from_millis(20);

/// Validates and stores a policy file as a new version; with `wait`, then waits until
/// every online instance applied it (or the version already in force, if unchanged).
/// The policy version row is MACed with the identity's row key: the master key must be
/// readable (`--master-key-file`).
pub async fn load(
    store: &dyn Store,
    data_dir: &DataDir,
    file: &Path,
    wait: Option<Duration>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let started = Instant::now();
    let master = data_dir.read_master_key().with_context(|| {
        format!(
            "a policy version is signed with the keyserver's identity: reading the master key {}",
            data_dir.master_key.display()
        )
    })?;
    let identity = KeyserverIdentity::load(store, &master).await?;
    store.set_audit_key(identity.chain_key());
    // Validated whole before anything is stored: an invalid policy changes nothing.
    let stored = match store_policy(store, identity.row_key(), &text).await {
        Ok(stored) => stored,
        Err(PolicyLoadError::Invalid(e)) => {
            bail!("{}: {e}; the policy in force is unchanged", file.display())
        }
        Err(e) => return Err(e).context("storing the policy"),
    };
    for w in &stored.warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    let detail = serde_json::json!({
        "version": stored.version, "changed": stored.changed, "sha256": stored.sha256,
        "rules": stored.summary.rules,
    });
    audit_log::record(
        store,
        admin_record(
            "cli",
            &Actor::cli(),
            "policy_load",
            None,
            detail,
            stored.version,
        ),
    )
    .await
    .context("the policy is stored, but its audit record could not be written")?;
    if stored.changed {
        println!(
            "policy version {} stored ({})",
            stored.version, stored.summary
        );
    } else {
        println!(
            "policy unchanged (version {} has the same text)",
            stored.version
        );
    }
    match wait {
        Some(timeout) => {
            let timeout = if stored.changed {
                timeout.saturating_sub(started.elapsed())
            } else {
                timeout
            };
            wait_for_rollout(store, stored.version, timeout).await
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
