//! A policy version stored: validated whole first, then written with its MAC, so that an
//! invalid policy changes nothing and only a holder of the root secret installs one.

use kss_crypto::RowKey;
use kss_policy::{LoadError, Policy, Summary};
use kss_store::{Store, StoreError};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::integrity::{policy_mac, policy_verifies};

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
