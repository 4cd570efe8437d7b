//! The keyserver's identity: its ID and root secret, sealed at rest with the master key.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use kss_crypto::identity::{Era, SealedIdentity};
use kss_crypto::ids::{KeyserverId, ProfileId};
use kss_crypto::profile::KssShare;
use kss_crypto::root::{RootSecret, RowKey, TokenKey};
use kss_crypto::seal::MasterKey;
use kss_store::{Identity, Store};

/// The keyserver's ID and root secret, unsealed in memory.
pub struct KeyserverIdentity {
    pub id: KeyserverId,
    root: RootSecret,
    token_key: TokenKey,
    row_key: RowKey,
    audit_key: Arc<RowKey>,
    /// The era its stored seal is of (what it says of the database beside it).
    era: Era,
}

impl std::fmt::Debug for KeyserverIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyserverIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyserverIdentity {
    pub fn new(id: KeyserverId, root: RootSecret) -> Self {
        let token_key = root.token_key(&id);
        let row_key = root.row_key(&id);
        let audit_key = Arc::new(root.audit_key(&id));
        KeyserverIdentity {
            id,
            root,
            token_key,
            row_key,
            audit_key,
            era: Era::ChainStarted,
        }
    }

    /// The same identity, as opened from a seal of `era`.
    pub fn sealed_in(mut self, era: Era) -> Self {
        self.era = era;
        self
    }

    /// The era of the stored seal this identity was opened from ([`Era::ChainStarted`]
    /// for a new one).
    pub fn era(&self) -> Era {
        self.era
    }

    /// A fresh identity: a random ID and root secret.
    pub fn generate() -> Self {
        Self::new(KeyserverId::random(), RootSecret::generate())
    }

    pub fn root(&self) -> &RootSecret {
        &self.root
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
    }

    /// The key of the MACs on the rows this keyserver writes (profiles, policy versions).
    pub fn row_key(&self) -> &RowKey {
        &self.row_key
    }

    /// The audit chain's key, for the store (see [`crate::audit_log::ChainKey`]).
    pub fn chain_key(&self) -> Arc<dyn kss_store::AuditKey> {
        Arc::new(crate::audit_log::ChainKey {
            key: Arc::clone(&self.audit_key),
            started: self.era.chain_started(),
        })
    }

    /// Loads the identity of `store` with the data directory's master key and gives the
    /// store the audit chain's key: what a CLI command that records an administrative
    /// action needs.
    pub async fn load_for_audit(
        store: &dyn Store,
        data_dir: &crate::data_dir::DataDir,
    ) -> Result<Self> {
        let master = data_dir.read_master_key().with_context(|| {
            format!(
                "an administrative action is recorded in the audit log, whose chain is keyed \
                 by the keyserver's identity: reading the master key {}",
                data_dir.master_key.display()
            )
        })?;
        let identity = Self::load(store, &master).await?;
        store.set_audit_key(identity.chain_key());
        Ok(identity)
    }

    /// This keyserver's share of a profile (derived from the root secret).
    pub fn profile_share(&self, profile: &ProfileId) -> KssShare {
        self.root.profile_share(&self.id, profile)
    }

    /// The row to store: the root secret sealed with the master key.
    pub fn sealed(&self, master: &MasterKey, now_ms: i64) -> Identity {
        identity_row(&SealedIdentity::seal(&self.id, &self.root, master), now_ms)
    }

    /// Opens a stored identity with the master key.
    pub fn unseal(row: &Identity, master: &MasterKey) -> Result<Self> {
        let sealed = sealed_of(row)?;
        let id = sealed.keyserver_id;
        let (root, era) = sealed.open_with_era(master).with_context(|| {
            format!(
                "cannot open keyserver {id}'s secret with this master key \
                 (wrong --master-key-file, or the database belongs to another keyserver)"
            )
        })?;
        Ok(Self::new(id, root).sealed_in(era))
    }

    /// Loads the identity of the store, failing with the next step to take if there is none.
    pub async fn load(store: &dyn Store, master: &MasterKey) -> Result<Self> {
        let row = store
            .identity()
            .await
            .context("reading the keyserver identity")?
            .ok_or_else(|| {
                anyhow!("this data directory has no keyserver identity: run `kss create` first")
            })?;
        Self::unseal(&row, master)
    }
}

/// The database row of a sealed identity.
pub fn identity_row(sealed: &SealedIdentity, now_ms: i64) -> Identity {
    Identity {
        keyserver_id: sealed.keyserver_id.to_string(),
        sealed_root: sealed.sealed_root.clone(),
        created_at_ms: now_ms,
    }
}

/// The sealed identity of a database row.
pub fn sealed_of(row: &Identity) -> Result<SealedIdentity> {
    let keyserver_id = KeyserverId::from_str(&row.keyserver_id)
        .map_err(|e| anyhow!("stored keyserver ID '{}': {e}", row.keyserver_id))?;
    Ok(SealedIdentity {
        keyserver_id,
        sealed_root: row.sealed_root.clone(),
    })
}
