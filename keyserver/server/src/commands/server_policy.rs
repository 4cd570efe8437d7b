//! `kss policy load` and `kss policy dump --current`: the policy in the keyserver's
//! database. A running server applies a new version within its poll interval.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kss_crypto::RowKey;
use kss_policy::{LoadError, Policy, Summary};
use kss_store::{Store, StoreError};
use sha2::{Digest, Sha256};

use crate::audit_log::{self, Actor, admin_record};
use crate::clock::now_ms;
use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;
use crate::integrity::{policy_mac, policy_verifies};
use crate::rollout;

/// How often `--wait` reads the registry.
const ROLLOUT_POLL: Duration = Duration::from_millis(20);

/// What [`store_policy`] did.
#[derive(Debug)]
pub struct StoredPolicy {
    /// The version in force afterwards.
    pub version: u64,
    /// Whether a new version was stored (false: the text is the version in force).
    pub changed: bool,
    pub summary: Summary,
    /// Migration warnings (the policy is valid).
    pub warnings: Vec<String>,
    /// SHA-256 of the text (hex).
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The policy does not load: the located error. Nothing was stored.
    #[error("{0}")]
    Invalid(LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates a policy text whole, then stores it as a new version unless it is
/// byte-identical to the version in force. What `kss policy load` and the admin API's
/// `LoadPolicy` both do. The version row carries a MAC under `key` (see
/// [`crate::integrity`]): only a holder of the root secret can install a policy.
pub async fn store_policy(
    store: &dyn Store,
    key: &RowKey,
    text: &str,
) -> Result<StoredPolicy, PolicyLoadError> {
    let policy = Policy::load(text).map_err(PolicyLoadError::Invalid)?;
    let summary = policy.summary();
    let warnings = policy.warnings().iter().map(ToString::to_string).collect();
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let at_ms = now_ms();
    let mac = |version: u64| policy_mac(key, version, text, &sha, at_ms);
    let added = store.add_policy(text, &sha, at_ms, &mac).await?;
    if !added.changed {
        // The same text is in force, but its row may have been edited (its MAC cleared or
        // forged): loading this text again vouches for it, so it gets a valid MAC.
        if let Some(row) = store.policy(Some(added.version)).await?
            && !policy_verifies(key, &row)
        {
            let mac = policy_mac(key, row.version, &row.text, &row.sha256, row.loaded_at_ms);
            store.set_policy_mac(row.version, &mac).await?;
        }
    }
    Ok(StoredPolicy {
        version: added.version,
        changed: added.changed,
        summary,
        warnings,
        sha256: sha,
    })
}

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
