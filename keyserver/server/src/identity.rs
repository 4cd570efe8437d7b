//! The keyserver's identity: its ID and root secret, sealed at rest with the master key.

use std::str::FromStr;

use anyhow::{Context, Result, anyhow};
use kss_crypto::ids::{KeyserverId, ProfileId};
use kss_crypto::profile::KssShare;
use kss_crypto::root::{RootSecret, TokenKey};
use kss_crypto::seal::{self, MasterKey};
use kss_store::{Identity, Store};

/// The keyserver's ID and root secret, unsealed in memory.
pub struct KeyserverIdentity {
    pub id: KeyserverId,
    root: RootSecret,
    token_key: TokenKey,
}

impl std::fmt::Debug for KeyserverIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyserverIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Binds a sealed root secret to its keyserver ID (a row copied under another ID fails).
fn seal_aad(id: &KeyserverId) -> Vec<u8> {
    let mut aad = b"kss root secret v1\0".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

impl KeyserverIdentity {
    pub fn new(id: KeyserverId, root: RootSecret) -> Self {
        let token_key = root.token_key(&id);
        KeyserverIdentity {
            id,
            root,
            token_key,
        }
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

    /// This keyserver's share of a profile (derived from the root secret).
    pub fn profile_share(&self, profile: &ProfileId) -> KssShare {
        self.root.profile_share(&self.id, profile)
    }

    /// The row to store: the root secret sealed with the master key.
    pub fn sealed(&self, master: &MasterKey, now_ms: i64) -> Identity {
        Identity {
            keyserver_id: self.id.to_string(),
            sealed_root: seal::seal(master, &seal_aad(&self.id), self.root.expose_bytes()),
            created_at_ms: now_ms,
        }
    }

    /// Opens a stored identity with the master key.
    pub fn unseal(row: &Identity, master: &MasterKey) -> Result<Self> {
        let id = KeyserverId::from_str(&row.keyserver_id)
            .map_err(|e| anyhow!("stored keyserver ID '{}': {e}", row.keyserver_id))?;
        let bytes = seal::open(master, &seal_aad(&id), &row.sealed_root).with_context(|| {
            format!(
                "cannot open keyserver {id}'s secret with this master key \
                 (wrong --master-key-file, or the database belongs to another keyserver)"
            )
        })?;
        let root = RootSecret::from_bytes(&bytes).context("stored root secret")?;
        Ok(Self::new(id, root))
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
