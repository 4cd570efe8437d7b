//! The embedded default: one SQLite file in the data directory (WAL mode).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::audit_chain::{AuditKey, ChainVerdict, KeySlot, PruneOutcome};
use crate::registry::still_held;
use crate::rows::{
    audit_from_row, counter_from_row, enrollment_from_row, lease_from_row, policy_from_row,
    profile_from_row, revocation_from_row, state_from_row, to_i64, to_u32, to_u64,
};
use crate::{
    AuditEntry, AuditFilter, AuditRecord, DecisionTx, Enrollment, EnrollmentUse, Identity, Lease,
    PolicyAdded, PolicyVersion, Profile, Result, Revocation, State, Store, StoreError,
    StoredCounter,
};

mod audit;
mod registry;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// When a commit is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced at every commit: a returned approval survives a power loss.
    Full,
    /// Written at every commit, synced at checkpoints (WAL, `synchronous=NORMAL`): survives
    /// a crash of the process (kill -9), not a power loss of the host.
    Normal,
}

/// A SQLite database file, created and migrated on first open.
///
/// Two pools on the one file: `pool` for reads (WAL: readers never wait for the writer),
/// and `writer`, one connection, for every write and every transaction that writes.
/// SQLite lets one connection write at a time: writers of this process queue for the one
/// connection and are woken as soon as it is free, and SQLite's busy handler only waits
/// for other processes. (With several writing connections, a writer that found the lock
/// held polled for it in the busy handler, sleeping 1, 2, 5, 10 ... 100 ms between tries
/// however soon it was free: the once-a-second heartbeat made decision batches sleep.)
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    writer: SqlitePool,
    audit_key: KeySlot,
}

/// How long SQLite waits for a write lock another process holds, and a writer of this
/// process for the writing connection.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and applies migrations, with
    /// every commit synced to disk.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::Full).await
    }

    /// Opens with the given durability.
    pub async fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        Self::open_with_busy_timeout(path, durability, LOCK_TIMEOUT).await
    }

    /// `busy_timeout`: how long SQLite waits for a write lock held by another connection.
    async fn open_with_busy_timeout(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // Statement journals (a multi-row statement inside a transaction) in memory:
            // otherwise each larger one creates, writes and unlinks a temporary file.
            .pragma("temp_store", "memory");
        let writer = pool_options(1)
            .acquire_timeout(LOCK_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&writer).await?;
        let pool = pool_options(4).connect_with(options).await?;
        Ok(SqliteStore {
            pool,
            writer,
            audit_key: KeySlot::default(),
        })
    }
}

fn pool_options(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        // No ping before each use: the connection is a thread of this process, not a
        // socket that can be cut, and the ping would be one more round trip to it.
        .test_before_acquire(false)
        // sqlx counts a transaction that SQLite rolled back by itself (a statement or
        // COMMIT that failed with SQLITE_FULL, SQLITE_IOERR, ...) as still open: its
        // ROLLBACK then fails, and every later BEGIN on that connection is refused
        // ("non-zero transaction depth"). Such a connection is closed, not reused.
        // A connection with no transaction open goes back as it is. Otherwise the ping
        // first: the ROLLBACK queued when the transaction was dropped runs before it.
        // (Nothing queued can open one: a BEGIN whose caller went away is rolled back by
        // sqlx's worker before it runs the next command.)
        .after_release(|conn, _meta| {
            Box::pin(async move {
                if !sqlx::Connection::is_in_transaction(&*conn) {
                    return Ok(true);
                }
                sqlx::Connection::ping(&mut *conn).await?;
                Ok(!sqlx::Connection::is_in_transaction(&*conn))
            })
        })
}

#[async_trait]
impl Store for SqliteStore {
    async fn identity(&self) -> Result<Option<Identity>> {
        let row = sqlx::query(
            "SELECT keyserver_id, sealed_root, created_at_ms FROM identity WHERE singleton = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Identity {
                keyserver_id: r.try_get("keyserver_id")?,
                sealed_root: r.try_get("sealed_root")?,
                created_at_ms: r.try_get("created_at_ms")?,
            })
        })
        .transpose()
    }

    async fn create_identity(&self, identity: &Identity) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO identity (singleton, keyserver_id, sealed_root, created_at_ms) \
             VALUES (1, ?, ?, ?) ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(&identity.keyserver_id)
        .bind(&identity.sealed_root)
        .bind(identity.created_at_ms)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists("a keyserver identity".into()));
        }
        Ok(())
    }

    async fn reseal_identity(&self, keyserver_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE identity SET sealed_root = ? \
             WHERE singleton = 1 AND keyserver_id = ? AND sealed_root = ?",
        )
        .bind(new)
        .bind(keyserver_id)
        .bind(old)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn state(&self) -> Result<State> {
        let row = sqlx::query(
            "SELECT enabled, policy_version, quota_epoch, revocation_epoch FROM state \
             WHERE singleton = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        state_from_row(&row)
    }

    async fn set_enabled(&self, enabled: bool) -> Result<()> {
        sqlx::query("UPDATE state SET enabled = ? WHERE singleton = 1")
            .bind(i64::from(enabled))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn add_policy(
        &self,
        text: &str,
        sha256: &str,
        at_ms: i64,
        mac: &(dyn Fn(u64) -> Vec<u8> + Send + Sync),
    ) -> Result<PolicyAdded> {
        // IMMEDIATE: the write lock first, so no other load can slip in between the look
        // at the version in force and the insert.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let in_force: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT p.version, p.sha256, p.text FROM state s \
             JOIN policy_versions p ON p.version = s.policy_version WHERE s.singleton = 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((version, in_force_sha, in_force_text)) = in_force
            && in_force_sha == sha256
            && in_force_text == text
        {
            tx.commit().await?;
            return Ok(PolicyAdded {
                version: to_u64(version)?,
                changed: false,
            });
        }
        // The write lock is held: nobody else can take this number meanwhile.
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions")
                .fetch_one(&mut *tx)
                .await?;
        let row_mac = mac(to_u64(version)?);
        sqlx::query(
            "INSERT INTO policy_versions (version, text, sha256, loaded_at_ms, mac) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(version)
        .bind(text)
        .bind(sha256)
        .bind(at_ms)
        .bind(row_mac)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE state SET policy_version = ? WHERE singleton = 1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(PolicyAdded {
            version: to_u64(version)?,
            changed: true,
        })
    }

    async fn policy(&self, version: Option<u64>) -> Result<Option<PolicyVersion>> {
        let version = match version {
            Some(v) => to_i64(v)?,
            None => {
                let v: i64 =
                    sqlx::query_scalar("SELECT policy_version FROM state WHERE singleton = 1")
                        .fetch_one(&self.pool)
                        .await?;
                if v == 0 {
                    return Ok(None);
                }
                v
            }
        };
        let row = sqlx::query(
            "SELECT version, text, sha256, loaded_at_ms, mac FROM policy_versions \
             WHERE version = ?",
        )
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn policies_without_mac(&self) -> Result<Vec<PolicyVersion>> {
        let rows = sqlx::query(
            "SELECT version, text, sha256, loaded_at_ms, mac FROM policy_versions \
             WHERE length(mac) = 0 ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn set_policy_mac(&self, version: u64, mac: &[u8]) -> Result<bool> {
        if mac.is_empty() {
            return Ok(false);
        }
        let done =
            sqlx::query("UPDATE policy_versions SET mac = ? WHERE version = ? AND length(mac) = 0")
                .bind(mac)
                .bind(to_i64(version)?)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn profile(&self, profile_id: &str) -> Result<Option<Profile>> {
        let row = sqlx::query("SELECT * FROM profiles WHERE profile_id = ?")
            .bind(profile_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(profile_from_row).transpose()
    }

    async fn profile_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM profiles")
            .fetch_one(&self.pool)
            .await?;
        to_u64(n)
    }

    async fn list_profiles(&self, after: Option<&str>, limit: u32) -> Result<Vec<Profile>> {
        // TEXT compares with the BINARY collation: byte for byte, as in MySQL's _bin.
        let rows = match after {
            Some(a) => {
                sqlx::query(
                    "SELECT * FROM profiles WHERE profile_id > ? ORDER BY profile_id LIMIT ?",
                )
                .bind(a)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT * FROM profiles ORDER BY profile_id LIMIT ?")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(profile_from_row).collect()
    }

    async fn profiles_without_mac(&self, limit: u32) -> Result<Vec<Profile>> {
        let rows =
            sqlx::query("SELECT * FROM profiles WHERE length(mac) = 0 ORDER BY profile_id LIMIT ?")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(profile_from_row).collect()
    }

    async fn set_profile_mac(&self, profile_id: &str, mac: &[u8]) -> Result<bool> {
        if mac.is_empty() {
            return Ok(false);
        }
        let done =
            sqlx::query("UPDATE profiles SET mac = ? WHERE profile_id = ? AND length(mac) = 0")
                .bind(mac)
                .bind(profile_id)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(&self, r: &Revocation) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "INSERT INTO revocations (profile_id, whole_profile, device_id, revoked_at_ms, \
             reason) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (profile_id, whole_profile, device_id) DO NOTHING",
        )
        .bind(&r.profile_id)
        .bind(i64::from(r.device_id.is_none()))
        .bind(r.device_id.as_deref().unwrap_or(""))
        .bind(r.revoked_at_ms)
        .bind(&r.reason)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE state SET revocation_epoch = revocation_epoch + 1 WHERE singleton = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revocations(&self, profile_id: Option<&str>) -> Result<Vec<Revocation>> {
        let rows = match profile_id {
            Some(p) => {
                sqlx::query(
                    "SELECT * FROM revocations WHERE profile_id = ? \
                     ORDER BY whole_profile DESC, device_id",
                )
                .bind(p)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM revocations \
                     ORDER BY profile_id, whole_profile DESC, device_id",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(revocation_from_row).collect()
    }

    async fn create_enrollment(&self, e: &Enrollment) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO enrollments (id, token_sha256, uses_total, uses_left, expires_at_ms, \
             created_at_ms, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(&e.token_sha256)
        .bind(i64::from(e.uses_total))
        .bind(i64::from(e.uses_left))
        .bind(e.expires_at_ms)
        .bind(e.created_at_ms)
        .bind(&e.note)
        .execute(&self.writer)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(
                StoreError::AlreadyExists(format!("enrollment {} (or its token)", e.id)),
            ),
            Err(err) => Err(err.into()),
        }
    }

    async fn enrollments(&self) -> Result<Vec<Enrollment>> {
        let rows = sqlx::query("SELECT * FROM enrollments ORDER BY created_at_ms DESC, id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(enrollment_from_row).collect()
    }

    async fn counters(&self, profile_id: Option<&str>) -> Result<Vec<StoredCounter>> {
        let rows = match profile_id {
            Some(p) => {
                sqlx::query("SELECT * FROM quota_counters WHERE profile_id = ? ORDER BY rule_id")
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM quota_counters ORDER BY profile_id, rule_id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(counter_from_row).collect()
    }

    async fn clear_counters(&self, profile_id: Option<&str>) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = match profile_id {
            Some(p) => {
                sqlx::query("DELETE FROM quota_counters WHERE profile_id = ?")
                    .bind(p)
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM quota_counters")
                    .execute(&mut *tx)
                    .await?
            }
        };
        sqlx::query("UPDATE state SET quota_epoch = quota_epoch + 1 WHERE singleton = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM audit WHERE 1 = 1");
        if let Some(p) = &filter.profile_id {
            q.push(" AND profile_id = ").push_bind(p.clone());
        }
        if let Some(d) = filter.decision {
            q.push(" AND decision = ").push_bind(d.as_str());
        }
        if let Some(t) = &filter.request_type {
            q.push(" AND request_type = ").push_bind(t.clone());
        }
        if let Some(s) = filter.since_ms {
            q.push(" AND at_ms >= ").push_bind(s);
        }
        if let Some(b) = filter.before_id {
            q.push(" AND id < ").push_bind(to_i64(b)?);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(audit_from_row).collect()
    }

    fn set_audit_key(&self, key: Arc<dyn AuditKey>) {
        self.audit_key.set(key);
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<Vec<u64>> {
        let key = self.audit_key.get()?;
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids = audit::append(&mut tx, key.as_ref(), records).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn verify_audit(&self) -> Result<ChainVerdict> {
        audit::verify(&self.pool, self.audit_key.get()?.as_ref()).await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<PruneOutcome> {
        audit::prune(
            &self.pool,
            &self.writer,
            self.audit_key.get()?.as_ref(),
            before_ms,
        )
        .await
    }

    async fn restart_audit_chain(&self, record: &AuditRecord) -> Result<u64> {
        audit::restart(&self.writer, self.audit_key.get()?.as_ref(), record).await
    }

    async fn audit_counts(&self) -> Result<(u64, u64)> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(decision = 'approved'), 0) AS approved, \
                    COALESCE(SUM(decision = 'denied'), 0) AS denied FROM audit",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            to_u64(row.try_get("approved")?)?,
            to_u64(row.try_get("denied")?)?,
        ))
    }

    async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    async fn begin_decisions(&self, fence: Option<&Lease>) -> Result<Box<dyn DecisionTx>> {
        // IMMEDIATE: take the write lock now, so counters read here cannot change before
        // this transaction writes them (and no claim can move the lease meanwhile).
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // One statement for the chain's head (which this transaction's audit rows extend)
        // and the fencing lease: every statement is a round trip to the connection's
        // thread. The lease's columns are NULL when it has no row, or no fence is asked.
        let row = sqlx::query(concat!(
            "SELECT ",
            audit::locked_head_columns!(),
            ", l.holder, l.token, l.expires_at_ms FROM audit_head h \
             LEFT JOIN leases l ON l.name = ? WHERE h.singleton = 1"
        ))
        .bind(fence.map(|l| l.name.as_str()))
        .fetch_optional(&mut *tx)
        .await?;
        let head = audit::LockedHead::from_row(row.as_ref())?;
        if let Some(lease) = fence {
            let held = match &row {
                Some(r) if r.try_get::<Option<String>, _>("holder")?.is_some() => {
                    Some(lease_from_row(r)?)
                }
                _ => None,
            };
            still_held(lease, held.as_ref(), registry::now_ms())?;
        }
        Ok(Box::new(SqliteDecisionTx {
            tx,
            audit_key: self.audit_key.clone(),
            head: Some(head),
        }))
    }
}

struct SqliteDecisionTx {
    tx: Transaction<'static, Sqlite>,
    audit_key: KeySlot,
    /// The chain's head as read when the write lock was taken, until the first append.
    head: Option<audit::LockedHead>,
}

/// SQLite's limit on bound parameters is 32766; stay far below it.
const MAX_BINDS_PER_STATEMENT: usize = 900;

#[async_trait]
impl DecisionTx for SqliteDecisionTx {
    async fn clock_ms(&mut self) -> Result<i64> {
        Ok(registry::now_ms())
    }

    async fn counters_for(&mut self, profile_ids: &[&str]) -> Result<Vec<StoredCounter>> {
        let mut out = Vec::new();
        for chunk in profile_ids.chunks(MAX_BINDS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT * FROM quota_counters WHERE profile_id IN (");
            let mut list = q.separated(", ");
            for p in chunk {
                list.push_bind(*p);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *self.tx).await? {
                out.push(counter_from_row(&row)?);
            }
        }
        Ok(out)
    }

    async fn seen_nonces(&mut self, nonces: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for chunk in nonces.chunks(MAX_BINDS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT nonce FROM audit WHERE nonce IN (");
            let mut list = q.separated(", ");
            for n in chunk {
                list.push_bind(*n);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *self.tx).await? {
                out.push(row.try_get("nonce")?);
            }
        }
        Ok(out)
    }

    async fn insert_profile(&mut self, p: &Profile) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO profiles (profile_id, device_id, device_public_key, workstation_share, \
             name, words, created_at_ms, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (profile_id) DO NOTHING",
        )
        .bind(&p.profile_id)
        .bind(&p.device_id)
        .bind(&p.device_public_key)
        .bind(&p.workstation_share)
        .bind(&p.name)
        .bind(p.words.join(" "))
        .bind(p.created_at_ms)
        .bind(&p.mac)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_enrollment(&mut self, token_sha256: &[u8], now_ms: i64) -> Result<EnrollmentUse> {
        // The transaction holds SQLite's write lock (BEGIN IMMEDIATE): no other can read
        // this row's uses and take one meanwhile.
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, uses_left, expires_at_ms FROM enrollments WHERE token_sha256 = ?",
        )
        .bind(token_sha256)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some((id, uses_left, expires_at_ms)) = row else {
            return Ok(EnrollmentUse::Unknown);
        };
        if expires_at_ms <= now_ms {
            return Ok(EnrollmentUse::Expired);
        }
        let uses_left = to_u32(uses_left)?;
        if uses_left == 0 {
            return Ok(EnrollmentUse::UsedUp);
        }
        let done = sqlx::query(
            "UPDATE enrollments SET uses_left = uses_left - 1 WHERE id = ? AND uses_left = ?",
        )
        .bind(&id)
        .bind(i64::from(uses_left))
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Corrupt(format!(
                "enrollment {id} changed while locked"
            )));
        }
        Ok(EnrollmentUse::Used {
            uses_left: uses_left - 1,
        })
    }

    async fn save_counters(&mut self, counters: &[StoredCounter]) -> Result<()> {
        for chunk in counters.chunks(MAX_BINDS_PER_STATEMENT / 6) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR REPLACE INTO quota_counters \
                 (rule_id, profile_id, day, hour, hour_used, day_used) ",
            );
            let mut failed = None;
            q.push_values(chunk, |mut row, c| {
                let (hour_used, day_used) =
                    match (to_i64(c.counter.hour_used), to_i64(c.counter.day_used)) {
                        (Ok(h), Ok(d)) => (h, d),
                        (Err(e), _) | (_, Err(e)) => {
                            failed = Some(e);
                            (0, 0)
                        }
                    };
                row.push_bind(c.rule_id.clone())
                    .push_bind(c.profile_id.clone())
                    .push_bind(c.counter.window.day.to_string())
                    .push_bind(i64::from(c.counter.window.hour))
                    .push_bind(hour_used)
                    .push_bind(day_used);
            });
            if let Some(e) = failed {
                return Err(e);
            }
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn append_audit(&mut self, records: &[AuditRecord]) -> Result<Vec<u64>> {
        let key = self.audit_key.get()?;
        match self.head.take() {
            Some(head) => audit::append_at(&mut self.tx, key.as_ref(), head, records).await,
            None => audit::append(&mut self.tx, key.as_ref(), records).await,
        }
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{InstanceInfo, Registry};
    use kss_policy::{Counter, QuotaWindow};

    fn counter(profile_id: &str, used: u64) -> StoredCounter {
        StoredCounter {
            rule_id: "rule".into(),
            profile_id: profile_id.into(),
            counter: Counter {
                window: QuotaWindow {
                    day: jiff::civil::date(2026, 12, 7),
                    hour: 9,
                },
                hour_used: used,
                day_used: used,
            },
        }
    }

    /// The database is not trusted: with the audit chain's head row deleted, a decision
    /// transaction is refused as an audit-chain fault (not as a fencing one, with or
    /// without a lease), and nothing is written.
    #[tokio::test]
    async fn a_deleted_chain_head_refuses_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("kss.db")).await.unwrap();
        let lease = match store.claim_lease("standalone", "i0", 60_000).await.unwrap() {
            crate::LeaseClaim::Granted { lease, .. } => lease,
            other => panic!("lease not granted: {other:?}"),
        };
        sqlx::query("DELETE FROM audit_head")
            .execute(&store.writer)
            .await
            .unwrap();
        for fence in [None, Some(&lease)] {
            match store.begin_decisions(fence).await {
                Err(StoreError::AuditChain(msg)) => assert!(msg.contains("head row is missing")),
                Err(e) => panic!("fence {fence:?}: expected an audit-chain fault, got {e}"),
                Ok(_) => panic!("fence {fence:?}: a decision transaction opened without the head"),
            }
        }
        assert_eq!(store.audit_counts().await.unwrap(), (0, 0));
        store.close().await;
    }

    /// With SQLite's busy handler off, a writer that finds the write lock held by another
    /// connection fails at once ("database is locked"). Decision batches, heartbeats,
    /// lease renewals and administrative writes all at once then succeed only if this
    /// process's writers never meet on the lock: they wait for the one writing
    /// connection instead (with several writing connections this fails on the first
    /// collision).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_of_one_process_queue_instead_of_meeting_on_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with_busy_timeout(
            &dir.path().join("kss.db"),
            Durability::Normal,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let info = InstanceInfo {
            name: "i0".into(),
            incarnation: "a".into(),
            hostname: "host".into(),
            endpoint: "https://i0:7443".into(),
            kss_version: "test".into(),
            started_at_ms: 1,
        };
        store.register_instance(&info, 0).await.unwrap();
        let lease = match store.claim_lease("standalone", "i0", 60_000).await.unwrap() {
            crate::LeaseClaim::Granted { lease, .. } => lease,
            other => panic!("lease not granted: {other:?}"),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..4u64 {
            let (store, lease) = (store.clone(), lease.clone());
            tasks.spawn(async move {
                for round in 0..50 {
                    let mut tx = store.begin_decisions(Some(&lease)).await?;
                    let profile = format!("p{task}");
                    tx.counters_for(&[&profile]).await?;
                    tokio::task::yield_now().await;
                    tx.save_counters(&[counter(&profile, round)]).await?;
                    tx.commit().await?;
                }
                Ok::<_, StoreError>(())
            });
        }
        let (s, l) = (store.clone(), lease.clone());
        tasks.spawn(async move {
            for _ in 0..50 {
                assert!(s.heartbeat("i0", "a", 0).await?);
                assert!(s.renew_lease(&l, 60_000).await?);
            }
            Ok(())
        });
        let s = store.clone();
        tasks.spawn(async move {
            for round in 0..50 {
                s.set_enabled(round % 2 == 0).await?;
                s.clear_counters(Some("nobody")).await?;
            }
            Ok(())
        });
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let counters = store.counters(None).await.unwrap();
        assert_eq!(counters.len(), 4);
        assert!(counters.iter().all(|c| c.counter.hour_used == 49));
        store.close().await;
    }
}
