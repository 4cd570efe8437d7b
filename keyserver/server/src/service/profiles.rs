//! Onboarded profiles in memory: the registered device key and this keyserver's share,
//! derived once from the root secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kss_crypto::ids::{DeviceId, ProfileId};
use kss_crypto::profile::KssShare;
use kss_crypto::signing::DevicePublicKey;
use kss_store::{Profile, Store, StoreError};

use crate::identity::KeyserverIdentity;

/// A profile ready to check requests.
pub struct KnownProfile {
    pub id: ProfileId,
    pub device_id: DeviceId,
    pub device_key: DevicePublicKey,
    pub words: Vec<String>,
    pub share: KssShare,
}

/// Profiles by id, filled from the store on first use.
pub struct ProfileCache {
    identity: Arc<KeyserverIdentity>,
    store: Arc<dyn Store>,
    known: Mutex<HashMap<ProfileId, Arc<KnownProfile>>>,
}

/// Past this many entries the cache starts over (profiles are re-read on demand).
const MAX_CACHED: usize = 200_000;

impl ProfileCache {
    pub fn new(identity: Arc<KeyserverIdentity>, store: Arc<dyn Store>) -> Self {
        ProfileCache {
            identity,
            store,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProfileId, Arc<KnownProfile>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The profile, from memory or the store; `Ok(None)` if it is not onboarded here.
    pub async fn get(&self, id: &ProfileId) -> Result<Option<Arc<KnownProfile>>, StoreError> {
        if let Some(p) = self.lock().get(id) {
            return Ok(Some(Arc::clone(p)));
        }
        let Some(row) = self.store.profile(&id.to_string()).await? else {
            return Ok(None);
        };
        let known = Arc::new(self.from_row(&row)?);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(*id, Arc::clone(&known));
        Ok(Some(known))
    }

    /// Builds the in-memory form of a stored profile.
    pub fn from_row(&self, row: &Profile) -> Result<KnownProfile, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("profile {}: {what}: {e}", row.profile_id))
        };
        let id: ProfileId = row.profile_id.parse().map_err(|e| corrupt("id", &e))?;
        let device_key = DevicePublicKey::from_bytes(&row.device_public_key)
            .map_err(|e| corrupt("device key", &e))?;
        Ok(KnownProfile {
            id,
            device_id: DeviceId::of(&device_key),
            device_key,
            words: row.words.clone(),
            share: self.identity.profile_share(&id),
        })
    }
}
