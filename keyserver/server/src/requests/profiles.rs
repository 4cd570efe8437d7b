//! Onboarded profiles in memory: the registered device key, the verification words and this
//! keyserver's share, derived once from the root secret. Only rows that pass their integrity
//! check are used; revocations are read with the row, and the cache starts over whenever
//! the database's revocation epoch moves (polled with the switches), so a revocation
//! reaches every instance within the poll interval. An id the store does not hold is
//! remembered as unknown for [`UNKNOWN_FOR`], so that requests naming made-up profiles do
//! not cost a database read each, and at most [`COLD_READS`] reads of ids not in memory
//! run at once: a flood of made-up ids waits here, not in the database pool where the
//! decisions of known profiles would queue behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kss_crypto::ids::{DeviceId, ProfileId};
use kss_crypto::profile::{KssShare, ProfilePublicKeys, WorkstationPublicShare};
use kss_crypto::signing::DevicePublicKey;
use kss_crypto::words::profile_words;
use kss_store::{Profile, Revocation, Store, StoreError};

use crate::db_deadline::DbDeadline;
use crate::identity::KeyserverIdentity;
use crate::integrity::RowChecker;
use crate::metrics::Metrics;

/// A profile ready to check requests.
pub struct KnownProfile {
    pub id: ProfileId,
    pub device_id: DeviceId,
    pub device_key: DevicePublicKey,
    /// Derived from the key set (never the stored or a client's words).
    pub words: Vec<String>,
    pub share: KssShare,
    /// Whether the profile, or its device, is revoked.
    pub revoked: bool,
}

/// What the cache knows of a profile id.
pub enum Lookup {
    Known(Arc<KnownProfile>),
    /// Not onboarded here (or its row fails its integrity check).
    Unknown,
}

/// Profiles by id, filled from the store on first use.
pub struct ProfileCache {
    identity: Arc<KeyserverIdentity>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// How long a read of the store may take.
    deadline: DbDeadline,
    checker: RowChecker,
    known: Mutex<HashMap<ProfileId, Arc<KnownProfile>>>,
    /// Ids the store did not hold, and when it was asked.
    unknown: Mutex<HashMap<ProfileId, Instant>>,
    /// The revocation epoch the cached entries were read under.
    epoch: AtomicU64,
    /// Permits for reads of ids not in memory.
    cold_reads: tokio::sync::Semaphore,
}

/// Reads of profiles not in memory that run at once.
pub const COLD_READS: usize = 2;

/// Past this many entries the cache starts over (profiles are re-read on demand).
const MAX_CACHED: usize = 200_000;

/// How long an id the store does not hold is answered as unknown without asking again.
/// Short: a profile onboarded at another instance is known here at most this long after.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(1);

/// Past this many remembered unknown ids the list starts over.
const MAX_UNKNOWN: usize = 100_000;

impl ProfileCache {
    pub fn new(
        identity: Arc<KeyserverIdentity>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        deadline: DbDeadline,
    ) -> Self {
        ProfileCache {
            identity,
            store,
            metrics,
            deadline,
            checker: RowChecker::default(),
            known: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            cold_reads: tokio::sync::Semaphore::new(COLD_READS),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProfileId, Arc<KnownProfile>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, HashMap<ProfileId, Instant>> {
        self.unknown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` was asked of the store within [`UNKNOWN_FOR`] and not found.
    fn recently_unknown(&self, id: &ProfileId) -> bool {
        self.unknown()
            .get(id)
            .is_some_and(|asked| asked.elapsed() < UNKNOWN_FOR)
    }

    fn remember_unknown(&self, id: &ProfileId) {
        let mut unknown = self.unknown();
        if unknown.len() >= MAX_UNKNOWN {
            unknown.retain(|_, asked| asked.elapsed() < UNKNOWN_FOR);
            if unknown.len() >= MAX_UNKNOWN {
                unknown.clear();
            }
        }
        unknown.insert(*id, Instant::now());
    }

    /// Forgets that `id` was unknown (it was just onboarded here).
    pub fn forget_unknown(&self, id: &ProfileId) {
        self.unknown().remove(id);
    }

    /// Drops every cached profile if the revocation epoch moved since they were read.
    pub fn follow_epoch(&self, epoch: u64) {
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.lock().clear();
        }
    }

    /// The profile, from memory or the store (within the deadline).
    pub async fn get(&self, id: &ProfileId) -> Result<Lookup, StoreError> {
        self.get_until(id, self.deadline.from_now()).await
    }

    /// [`ProfileCache::get`], reading the store until `deadline` at most.
    pub async fn get_until(
        &self,
        id: &ProfileId,
        deadline: tokio::time::Instant,
    ) -> Result<Lookup, StoreError> {
        if let Some(known) = self.in_memory(id) {
            return Ok(known);
        }
        self.deadline
            .run_until(deadline, "reading a profile", self.read(id))
            .await
    }

    async fn read(&self, id: &ProfileId) -> Result<Lookup, StoreError> {
        // The semaphore is never closed.
        let _permit = self.cold_reads.acquire().await.ok();
        // Read meanwhile by the request that held the permit?
        if let Some(known) = self.in_memory(id) {
            return Ok(known);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let key = id.to_string();
        let Some(row) = self.store.profile(&key).await? else {
            self.remember_unknown(id);
            return Ok(Lookup::Unknown);
        };
        if !self
            .checker
            .profile_ok(self.identity.row_key(), &self.metrics, &row)
        {
            return Ok(Lookup::Unknown);
        }
        let revocations = self.store.revocations(Some(&key)).await?;
        let known = Arc::new(self.from_row(&row, &revocations)?);
        let mut cache = self.lock();
        // A revocation polled in the meantime: do not cache what was read before it.
        if self.epoch.load(Ordering::Acquire) == epoch {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(*id, Arc::clone(&known));
        }
        Ok(Lookup::Known(known))
    }

    /// What memory says of `id`, if anything.
    fn in_memory(&self, id: &ProfileId) -> Option<Lookup> {
        if let Some(p) = self.lock().get(id) {
            return Some(Lookup::Known(Arc::clone(p)));
        }
        self.recently_unknown(id).then_some(Lookup::Unknown)
    }

    /// Whether a profile (or this device of it) is revoked, read from the store until
    /// `deadline` at most (the request's).
    pub async fn is_revoked(
        &self,
        id: &ProfileId,
        device: &DeviceId,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StoreError> {
        let revocations = self
            .deadline
            .run_until(
                deadline,
                "reading revocations",
                self.store.revocations(Some(&id.to_string())),
            )
            .await?;
        Ok(revoked_by(&revocations, device))
    }

    /// Builds the in-memory form of a stored profile.
    pub fn from_row(
        &self,
        row: &Profile,
        revocations: &[Revocation],
    ) -> Result<KnownProfile, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("profile {}: {what}: {e}", row.profile_id))
        };
        let id: ProfileId = row.profile_id.parse().map_err(|e| corrupt("id", &e))?;
        let device_key = DevicePublicKey::from_bytes(&row.device_public_key)
            .map_err(|e| corrupt("device key", &e))?;
        let ws = WorkstationPublicShare::from_bytes(&row.workstation_share)
            .map_err(|e| corrupt("workstation share", &e))?;
        let share = self.identity.profile_share(&id);
        let keys = ProfilePublicKeys::from_shares(&ws, &share.public());
        let device_id = DeviceId::of(&device_key);
        Ok(KnownProfile {
            id,
            device_id,
            device_key,
            words: profile_words(&self.identity.id, &id, &keys),
            share,
            revoked: revoked_by(revocations, &device_id),
        })
    }
}

fn revoked_by(revocations: &[Revocation], device: &DeviceId) -> bool {
    let device = device.to_string();
    revocations
        .iter()
        .any(|r| r.device_id.as_deref().is_none_or(|d| d == device))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kss_crypto::profile::WorkstationShare;
    use kss_crypto::signing::DeviceKey;
    use kss_store::SqliteStore;

    /// An unknown id is answered from memory for [`UNKNOWN_FOR`]: a profile stored in the
    /// meantime (as by another instance) is found only once that has passed, or at once
    /// after `forget_unknown` (onboarded here).
    #[tokio::test]
    async fn unknown_ids_are_remembered_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("kss.db")).await.unwrap());
        let identity = Arc::new(KeyserverIdentity::generate());
        let cache = ProfileCache::new(
            Arc::clone(&identity),
            Arc::clone(&store),
            Arc::new(Metrics::new()),
            DbDeadline::default(),
        );
        let store_profile = |id: ProfileId| {
            let store = Arc::clone(&store);
            let identity = Arc::clone(&identity);
            async move {
                let device = DeviceKey::generate().public();
                let mut row = Profile {
                    profile_id: id.to_string(),
                    device_id: DeviceId::of(&device).to_string(),
                    device_public_key: device.to_bytes().to_vec(),
                    workstation_share: WorkstationShare::generate().public().to_bytes().to_vec(),
                    name: "test".into(),
                    words: Vec::new(),
                    created_at_ms: 0,
                    mac: Vec::new(),
                };
                row.mac = crate::integrity::profile_mac(identity.row_key(), &row);
                let mut tx = store.begin_decisions(None).await.unwrap();
                assert!(tx.insert_profile(&row).await.unwrap());
                tx.commit().await.unwrap();
            }
        };
        let known = |l: Lookup| matches!(l, Lookup::Known(_));

        let late = ProfileId::random();
        assert!(!known(cache.get(&late).await.unwrap()));
        store_profile(late).await;
        assert!(
            !known(cache.get(&late).await.unwrap()),
            "read the store again"
        );
        tokio::time::sleep(UNKNOWN_FOR + Duration::from_millis(50)).await;
        assert!(known(cache.get(&late).await.unwrap()));

        let onboarded = ProfileId::random();
        assert!(!known(cache.get(&onboarded).await.unwrap()));
        store_profile(onboarded).await;
        cache.forget_unknown(&onboarded);
        assert!(known(cache.get(&onboarded).await.unwrap()));
    }
}
