//! Where the keyserver keeps its state: identity, switches, profiles, policy versions,
//! persistent throttle counters, revocations, enrollment tokens and the audit log.
//!
//! The database is not trusted for integrity: profile and policy version rows carry a MAC
//! that the keyserver computes and checks ([`Profile::mac`], [`PolicyVersion::mac`]); the
//! store only keeps it. Enrollment tokens are stored as their SHA-256 only.
//!
//! [`Store`] is the interface the server uses; [`SqliteStore`] is the embedded default
//! (standalone mode). [`MysqlStore`] is the cluster backend (MySQL 8 / MariaDB, shared by
//! several instances); it fills the same trait. Decisions are written in
//! batches through a [`DecisionTx`]: counters are read and written, nonces checked and
//! audit records appended in one transaction, so an approval is never returned without
//! its quota use and its audit record committed.

pub mod audit_chain;
mod clone;
mod error;
mod mysql;
mod registry;
mod rows;
mod sqlite;
mod types;

pub use audit_chain::{
    AuditKey, CHECKPOINT_EVERY, ChainReport, ChainVerdict, Checkpoint, CheckpointKind,
    PruneOutcome, Tampering,
};
pub use clone::{CloneCounts, clone_sqlite_into_mysql};
pub use error::StoreError;
pub use mysql::{MysqlStore, parse_db_uri, parse_db_uri_with_ca};
pub use registry::{
    InstanceInfo, InstanceList, InstanceStatus, Lease, LeaseClaim, OFFLINE_AFTER_MS, Registry,
};
pub use sqlite::{Durability, SqliteStore};
pub use types::{
    AuditEntry, AuditFilter, AuditRecord, Decision, Enrollment, EnrollmentUse, Identity,
    PolicyAdded, PolicyVersion, Profile, Revocation, State, StoredCounter,
};

use std::sync::Arc;

use async_trait::async_trait;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The keyserver's state, wherever it lives.
#[async_trait]
pub trait Store: Registry + Send + Sync + 'static {
    /// The identity, if `kss create` ran.
    async fn identity(&self) -> Result<Option<Identity>>;
    /// Records the identity; `AlreadyExists` if there is one (it is never overwritten).
    async fn create_identity(&self, identity: &Identity) -> Result<()>;
    /// Replaces the sealed root of the keyserver `keyserver_id` if it is still `old` (the
    /// same secret sealed anew, e.g. in a new era); false if it was not.
    async fn reseal_identity(&self, keyserver_id: &str, old: &[u8], new: &[u8]) -> Result<bool>;

    async fn state(&self) -> Result<State>;
    async fn set_enabled(&self, enabled: bool) -> Result<()>;

    /// Stores a new policy version and makes it the one in force, unless `text` (with
    /// `sha256`) is the version in force already: then nothing changes (and `mac` is not
    /// called). Decided in one transaction, so concurrent loads of the same text store it
    /// once. `mac` gets the version number assigned in that transaction and returns the
    /// MAC stored with the version row.
    async fn add_policy(
        &self,
        text: &str,
        sha256: &str,
        at_ms: i64,
        mac: &(dyn Fn(u64) -> Vec<u8> + Send + Sync),
    ) -> Result<PolicyAdded>;
    /// One version, or the one in force (`None`).
    async fn policy(&self, version: Option<u64>) -> Result<Option<PolicyVersion>>;
    /// Every version stored without a MAC (before MACs were introduced), oldest first.
    async fn policies_without_mac(&self) -> Result<Vec<PolicyVersion>>;
    /// Gives a version stored without a MAC its MAC (one-time adoption of old rows).
    /// Changes only a version whose stored MAC is empty; `false` if none did (no such
    /// version, it has a MAC already, or `mac` is empty).
    async fn set_policy_mac(&self, version: u64, mac: &[u8]) -> Result<bool>;

    async fn profile(&self, profile_id: &str) -> Result<Option<Profile>>;
    async fn profile_count(&self) -> Result<u64>;
    /// Profiles by id, ascending: at most `limit` of those whose id sorts (byte for byte)
    /// strictly after `after` (paging: pass the last id of the previous page).
    async fn list_profiles(&self, after: Option<&str>, limit: u32) -> Result<Vec<Profile>>;
    /// Up to `limit` profiles stored without a MAC, by id ascending.
    async fn profiles_without_mac(&self, limit: u32) -> Result<Vec<Profile>>;
    /// Gives a profile stored without a MAC its MAC (one-time adoption of old rows).
    /// Changes only a row whose stored MAC is empty; `false` if none did (no such
    /// profile, it has a MAC already, or `mac` is empty).
    async fn set_profile_mac(&self, profile_id: &str, mac: &[u8]) -> Result<bool>;

    /// Revokes a profile (`device_id: None`) or one device of it, and bumps
    /// [`State::revocation_epoch`], in one transaction. Idempotent: `false`, and nothing
    /// changed (the first revocation's time and reason kept, the epoch not bumped), if
    /// the same (profile, device) is revoked already. A whole-profile revocation and a
    /// device revocation are distinct.
    async fn revoke(&self, revocation: &Revocation) -> Result<bool>;
    /// The revocations of one profile or of every profile: by profile id, the
    /// whole-profile revocation first, then devices by id.
    async fn revocations(&self, profile_id: Option<&str>) -> Result<Vec<Revocation>>;

    /// Stores a new enrollment token (its hash). `AlreadyExists` if its id or its hash is
    /// taken.
    async fn create_enrollment(&self, enrollment: &Enrollment) -> Result<()>;
    /// Every enrollment, newest first (by creation time, then id).
    async fn enrollments(&self) -> Result<Vec<Enrollment>>;

    /// Persistent counters of one profile or of every profile.
    async fn counters(&self, profile_id: Option<&str>) -> Result<Vec<StoredCounter>>;
    /// Deletes persistent counters (one profile or all) and bumps the quota epoch.
    async fn clear_counters(&self, profile_id: Option<&str>) -> Result<u64>;

    /// Recent audit records, newest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
    /// Gives the store the audit chain's key (see [`audit_chain`]): every append, prune and
    /// verification needs it, and fails with [`StoreError::AuditChain`] without it.
    fn set_audit_key(&self, key: Arc<dyn AuditKey>);
    /// Appends audit records (administrative actions) in a transaction of their own,
    /// extending the chain; returns their ids. With no records, only starts the chain if
    /// it has not started (a database from before the chain gets its genesis).
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<Vec<u64>>;
    /// Verifies the whole audit chain in one consistent snapshot.
    async fn verify_audit(&self) -> Result<ChainVerdict>;
    /// Deletes the oldest audit rows: the longest run, from the first row, of rows stamped
    /// before `before_ms`, after verifying them; a prune checkpoint stands for them. The
    /// caller chooses `before_ms` so that nonces still guarding against replays stay.
    async fn prune_audit(&self, before_ms: i64) -> Result<PruneOutcome>;
    /// Starts a new audit chain after every row there is (they are then reported as not
    /// covered), with `record` as its first row: the way out once an operator has examined
    /// a chain that does not verify (nothing is chained to a forged head). Returns its id.
    async fn restart_audit_chain(&self, record: &AuditRecord) -> Result<u64>;
    /// (approved, denied) counts over the whole log.
    async fn audit_counts(&self) -> Result<(u64, u64)>;

    /// Starts a write transaction for a batch of decisions. With a `fence`, the
    /// transaction first checks that this lease is still held (see [`Lease`] on fencing)
    /// and fails with [`StoreError::Fenced`] otherwise.
    async fn begin_decisions(&self, fence: Option<&Lease>) -> Result<Box<dyn DecisionTx>>;

    /// Closes every connection, waiting for those in use.
    async fn close(&self);
}

/// One transaction of decisions: nothing is visible to others until `commit`.
#[async_trait]
pub trait DecisionTx: Send {
    /// The time this transaction's decisions are made at, in milliseconds since the Unix
    /// epoch: the database's clock where instances share the database (so that a quota
    /// window is one window for all of them, whatever their own clocks say), the host's
    /// for an embedded database.
    async fn clock_ms(&mut self) -> Result<i64>;
    /// Persistent counters of these profiles, as of this transaction.
    async fn counters_for(&mut self, profile_ids: &[&str]) -> Result<Vec<StoredCounter>>;
    /// Which of these nonces were already accepted.
    async fn seen_nonces(&mut self, nonces: &[&[u8]]) -> Result<Vec<Vec<u8>>>;
    /// Registers a profile; `false` if one with its id exists (it is left as it is).
    async fn insert_profile(&mut self, profile: &Profile) -> Result<bool>;
    /// Writes counters (insert or replace).
    async fn save_counters(&mut self, counters: &[StoredCounter]) -> Result<()>;
    /// Appends audit records, extending the audit chain (the chain's head stays locked
    /// until this transaction ends, so the chain's order is the commit order); returns
    /// their ids in order.
    async fn append_audit(&mut self, records: &[AuditRecord]) -> Result<Vec<u64>>;
    /// Takes one use of the enrollment whose token hashes to `token_sha256`: `Expired` if
    /// `expires_at_ms <= now_ms`, `UsedUp` if no use is left, else one use fewer and
    /// `Used` with the uses left after it. The row stays locked by this transaction
    /// until it ends (concurrent users of the same token wait, then see its result), and
    /// the use is given back if the transaction is not committed.
    async fn use_enrollment(&mut self, token_sha256: &[u8], now_ms: i64) -> Result<EnrollmentUse>;
    async fn commit(self: Box<Self>) -> Result<()>;
}
