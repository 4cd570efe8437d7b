//! Where the keyserver keeps its state: identity, switches, profiles, policy versions,
//! persistent throttle counters and the audit log.
//!
//! [`Store`] is the interface the server uses; [`SqliteStore`] is the embedded default
//! (standalone mode). [`MysqlStore`] is the cluster backend (MySQL 8 / MariaDB, shared by
//! several instances); it fills the same trait. Decisions are written in
//! batches through a [`DecisionTx`]: counters are read and written, nonces checked and
//! audit records appended in one transaction, so an approval is never returned without
//! its quota use and its audit record committed.

mod clone;
mod error;
mod mysql;
mod registry;
mod rows;
mod sqlite;
mod types;

pub use clone::{CloneCounts, clone_sqlite_into_mysql};
pub use error::StoreError;
pub use mysql::{MysqlStore, parse_db_uri};
pub use registry::{
    InstanceInfo, InstanceList, InstanceStatus, Lease, LeaseClaim, OFFLINE_AFTER_MS, Registry,
};
pub use sqlite::{Durability, SqliteStore};
pub use types::{
    AuditEntry, AuditFilter, AuditRecord, Decision, Identity, PolicyAdded, PolicyVersion, Profile,
    State, StoredCounter,
};

use async_trait::async_trait;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The keyserver's state, wherever it lives.
#[async_trait]
pub trait Store: Registry + Send + Sync + 'static {
    /// The identity, if `kss create` ran.
    async fn identity(&self) -> Result<Option<Identity>>;
    /// Records the identity; `AlreadyExists` if there is one (it is never overwritten).
    async fn create_identity(&self, identity: &Identity) -> Result<()>;

    async fn state(&self) -> Result<State>;
    async fn set_enabled(&self, enabled: bool) -> Result<()>;

    /// Stores a new policy version and makes it the one in force, unless `text` (with
    /// `sha256`) is the version in force already: then nothing changes. Decided in one
    /// transaction, so concurrent loads of the same text store it once.
    async fn add_policy(&self, text: &str, sha256: &str, at_ms: i64) -> Result<PolicyAdded>;
    /// One version, or the one in force (`None`).
    async fn policy(&self, version: Option<u64>) -> Result<Option<PolicyVersion>>;

    async fn profile(&self, profile_id: &str) -> Result<Option<Profile>>;
    async fn profile_count(&self) -> Result<u64>;

    /// Persistent counters of one profile or of every profile.
    async fn counters(&self, profile_id: Option<&str>) -> Result<Vec<StoredCounter>>;
    /// Deletes persistent counters (one profile or all) and bumps the quota epoch.
    async fn clear_counters(&self, profile_id: Option<&str>) -> Result<u64>;

    /// Recent audit records, newest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
    /// (approved, denied) counts over the whole log.
    async fn audit_counts(&self) -> Result<(u64, u64)>;

    /// Starts a write transaction for a batch of decisions. With a `fence`, the
    /// transaction first checks that this lease is still held (see [`registry`]'s
    /// fencing) and fails with [`StoreError::Fenced`] otherwise.
    async fn begin_decisions(&self, fence: Option<&Lease>) -> Result<Box<dyn DecisionTx>>;

    /// Closes every connection, waiting for those in use.
    async fn close(&self);
}

/// One transaction of decisions: nothing is visible to others until `commit`.
#[async_trait]
pub trait DecisionTx: Send {
    /// Persistent counters of these profiles, as of this transaction.
    async fn counters_for(&mut self, profile_ids: &[&str]) -> Result<Vec<StoredCounter>>;
    /// Which of these nonces were already accepted.
    async fn seen_nonces(&mut self, nonces: &[&[u8]]) -> Result<Vec<Vec<u8>>>;
    /// Registers a profile; `false` if one with its id exists (it is left as it is).
    async fn insert_profile(&mut self, profile: &Profile) -> Result<bool>;
    /// Writes counters (insert or replace).
    async fn save_counters(&mut self, counters: &[StoredCounter]) -> Result<()>;
    /// Appends audit records; returns their ids in order.
    async fn append_audit(&mut self, records: &[AuditRecord]) -> Result<Vec<u64>>;
    async fn commit(self: Box<Self>) -> Result<()>;
}
