//! The cluster backend: one MySQL 8 (or MariaDB 10.11) database shared by several
//! keyserver processes.
//!
//! # Concurrency
//!
//! Every read-modify-write runs in one InnoDB transaction at `REPEATABLE READ` (set on
//! every connection, whatever the server's default), with locking reads:
//!
//! * A decision transaction ([`DecisionTx`]) locks, in `counters_for`, the profile rows and
//!   the counter rows of its profiles (`SELECT ... FOR UPDATE`, one statement each, so rows
//!   are locked in index order). Two instances deciding for the same profile at once
//!   therefore serialize on those rows: the second waits until the first commits and then
//!   reads its counters. Counters that do not exist yet are covered by the next-key (gap)
//!   locks that `FOR UPDATE` takes at `REPEATABLE READ`, and `save_counters` upserts
//!   (`INSERT ... ON DUPLICATE KEY UPDATE`) inside the same transaction. When the profile
//!   row does not exist either, two transactions that both found no counter can deadlock
//!   on their inserts; InnoDB then rolls one back (error 1213), which surfaces as
//!   [`StoreError::Unavailable`], the error to retry.
//! * `add_policy` locks the `state` row before computing `MAX(version) + 1`.
//! * `clear_counters` deletes and bumps `quota_epoch` in one transaction; `revoke` inserts
//!   and bumps `revocation_epoch` in one transaction (a concurrent duplicate waits on the
//!   first one's key lock, then finds it).
//! * `use_enrollment` reads the token's row with `SELECT ... FOR UPDATE`: a second
//!   transaction using the same token waits until the first one ends, then reads the
//!   uses it left (a locking read sees the latest committed row, not its snapshot). A
//!   decision transaction that also locks profile or counter rows may then deadlock with
//!   one that takes the same locks in another order; InnoDB rolls one back
//!   ([`StoreError::Unavailable`], to retry), and its use of the token with it.
//!
//! # The audit chain
//!
//! Every append locks the chain's head row (`audit_head`, `SELECT ... FOR UPDATE`) as the
//! last lock of its transaction and holds it until commit: appends from every instance
//! run one after the other there, so the chain's order is the commit order and two
//! instances never fork it. Rows take explicit ids (the largest id so far plus one) so
//! that each row's chained MAC covers its id in the same INSERT (see
//! [`crate::audit_chain`]). Inserts are chunked by rows and by bytes (a request's row can
//! hold ~1 MB of metadata; `max_allowed_packet` is 16 MiB on MariaDB by default).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Executor, MySql, QueryBuilder, Row, Transaction};

use crate::audit_chain::{AuditKey, ChainVerdict, KeySlot, PruneOutcome};
use crate::rows::{
    audit_from_row, counter_from_row, enrollment_from_row, policy_from_row, profile_from_row,
    revocation_from_row, state_from_row, to_i64, to_u32, to_u64,
};
use crate::{
    AuditEntry, AuditFilter, AuditRecord, DecisionTx, Enrollment, EnrollmentUse, Identity, Lease,
    PolicyAdded, PolicyVersion, Profile, Result, Revocation, State, Store, StoreError,
    StoredCounter,
};

pub(crate) mod audit;
mod registry;
mod uri;

pub use uri::{parse_db_uri, parse_db_uri_with_ca};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// MySQL's limit on placeholders in one statement is 65535; stay far below it.
const MAX_BINDS_PER_STATEMENT: usize = 6000;

/// Connections per process.
const POOL_SIZE: u32 = 8;

/// How long a caller waits for a connection before the database counts as unavailable
/// (requests are then denied, never queued behind an outage).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an unused pooled connection is kept (below [`session_limits`]'s `wait_timeout`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// The server-side limits of kss's sessions, so that the server frees what a vanished or
/// cut-off instance held within seconds rather than hours: row-lock waits of 2 s (the
/// decision transaction is retried), a session idle for 10 s is closed (with its
/// transaction and locks: MySQL 8's only such limit), on MariaDB a session idle inside
/// any transaction for 5 s too, and a statement is stopped after 65 s (a backstop above
/// the migration lock's 60 s wait; requests have their own, shorter client-side deadline).
/// "Any transaction", not `idle_write_transaction_timeout`: a decision's first statement
/// is a locking read, and MariaDB counts a transaction that has only locked rows as
/// read-only, so a session cut off right after it would keep its locks for 10 s.
fn session_limits(version: &str) -> &'static str {
    if version.contains("MariaDB") {
        "SET SESSION innodb_lock_wait_timeout = 2, SESSION wait_timeout = 10, \
         SESSION idle_transaction_timeout = 5, SESSION max_statement_time = 65"
    } else {
        "SET SESSION innodb_lock_wait_timeout = 2, SESSION wait_timeout = 10, \
         SESSION max_execution_time = 65000"
    }
}

/// MySQL error numbers.
const ER_DUP_ENTRY: u16 = 1062;

/// How long a process waits for another one's migrations (seconds).
const MIGRATION_LOCK_WAIT_SECS: i64 = 60;
/// A named lock per database (`GET_LOCK` names are limited to 64 characters).
const MIGRATION_LOCK: &str = "CONCAT('kss_migrations_', MD5(DATABASE()))";

/// A MySQL (or MariaDB) database, migrated on connect.
#[derive(Clone)]
pub struct MysqlStore {
    pub(crate) pool: MySqlPool,
    audit_key: KeySlot,
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The options hold the password: print none of them.
        f.debug_struct("MysqlStore").finish_non_exhaustive()
    }
}

impl MysqlStore {
    /// Connects (a pool of 8 connections) and applies pending migrations. Several
    /// processes may connect at once: migrations run under a named database lock, so they
    /// run once.
    pub async fn connect(options: MySqlConnectOptions) -> Result<Self> {
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Closed here before the server's `wait_timeout` closes them there.
            .idle_timeout(POOL_IDLE_TIMEOUT)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // The locking described in the module documentation relies on
                    // next-key locks, which READ COMMITTED would not take.
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        .await?;
                    // Registry times are the server's clock in UTC (no daylight saving).
                    conn.execute("SET time_zone = '+00:00'").await?;
                    let version: String = sqlx::query_scalar("SELECT VERSION()")
                        .fetch_one(&mut *conn)
                        .await?;
                    conn.execute(session_limits(&version)).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        Ok(MysqlStore {
            pool,
            audit_key: KeySlot::default(),
        })
    }
}

/// Applies pending migrations while holding a named lock, so that processes connecting at
/// once to a new database (pods starting together) do not run them twice. sqlx's own
/// migration lock is `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once instead
/// of waiting; this one waits up to [`MIGRATION_LOCK_WAIT_SECS`] on both.
async fn migrate(pool: &MySqlPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT GET_LOCK({MIGRATION_LOCK}, ?)"
    )))
    .bind(MIGRATION_LOCK_WAIT_SECS)
    .fetch_one(&mut *conn)
    .await?;
    if locked != Some(1) {
        return Err(StoreError::Migration(format!(
            "another process held the migration lock for {MIGRATION_LOCK_WAIT_SECS} s"
        )));
    }
    let migrated = MIGRATIONS.run(&mut *conn).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT RELEASE_LOCK({MIGRATION_LOCK})"
    )))
    .execute(&mut *conn)
    .await;
    migrated.map_err(StoreError::from)
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == ER_DUP_ENTRY),
        _ => false,
    }
}

#[async_trait]
impl Store for MysqlStore {
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
        // A plain INSERT: the primary key refuses a second row (INSERT IGNORE would also
        // turn strict-mode errors such as truncation into warnings).
        let done = sqlx::query(
            "INSERT INTO identity (singleton, keyserver_id, sealed_root, created_at_ms) \
             VALUES (1, ?, ?, ?)",
        )
        .bind(&identity.keyserver_id)
        .bind(&identity.sealed_root)
        .bind(identity.created_at_ms)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                Err(StoreError::AlreadyExists("a keyserver identity".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn reseal_identity(&self, keyserver_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE identity SET sealed_root = ? \
             WHERE singleton = 1 AND keyserver_id = ? AND sealed_root = ?",
        )
        .bind(new)
        .bind(keyserver_id)
        .bind(old)
        .execute(&self.pool)
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
            .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The state row is the lock: concurrent add_policy calls (from any process) run
        // one after the other.
        let in_force: i64 =
            sqlx::query_scalar("SELECT policy_version FROM state WHERE singleton = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let current: Option<(String, String)> =
            sqlx::query_as("SELECT sha256, text FROM policy_versions WHERE version = ?")
                .bind(in_force)
                .fetch_optional(&mut *tx)
                .await?;
        if current.is_some_and(|(sha, current_text)| sha == sha256 && current_text == text) {
            tx.commit().await?;
            return Ok(PolicyAdded {
                version: to_u64(in_force)?,
                changed: false,
            });
        }
        let version: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS SIGNED) FROM policy_versions \
             FOR UPDATE",
        )
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
             WHERE LENGTH(mac) = 0 ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn set_policy_mac(&self, version: u64, mac: &[u8]) -> Result<bool> {
        if mac.is_empty() {
            return Ok(false);
        }
        // With CLIENT_FOUND_ROWS (sqlx sets it) the count is of matched rows; a matched
        // row had an empty MAC and gets a non-empty one, so it changed.
        let done =
            sqlx::query("UPDATE policy_versions SET mac = ? WHERE version = ? AND LENGTH(mac) = 0")
                .bind(mac)
                .bind(to_i64(version)?)
                .execute(&self.pool)
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
        // profile_id is utf8mb4_bin: compared and sorted byte for byte, as in SQLite.
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
            sqlx::query("SELECT * FROM profiles WHERE LENGTH(mac) = 0 ORDER BY profile_id LIMIT ?")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(profile_from_row).collect()
    }

    async fn set_profile_mac(&self, profile_id: &str, mac: &[u8]) -> Result<bool> {
        if mac.is_empty() {
            return Ok(false);
        }
        // Matched rows (CLIENT_FOUND_ROWS) are changed rows here: see set_policy_mac.
        let done =
            sqlx::query("UPDATE profiles SET mac = ? WHERE profile_id = ? AND LENGTH(mac) = 0")
                .bind(mac)
                .bind(profile_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(&self, r: &Revocation) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // A plain INSERT, a duplicate key read as "revoked already" (see insert_profile).
        let done = sqlx::query(
            "INSERT INTO revocations (profile_id, whole_profile, device_id, revoked_at_ms, \
             reason) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&r.profile_id)
        .bind(i64::from(r.device_id.is_none()))
        .bind(r.device_id.as_deref().unwrap_or(""))
        .bind(r.revoked_at_ms)
        .bind(&r.reason)
        .execute(&mut *tx)
        .await;
        match done {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
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
        insert_enrollment(&mut *self.pool.acquire().await?, e).await
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
        let mut tx = self.pool.begin().await?;
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
        let mut q: QueryBuilder<MySql> = QueryBuilder::new("SELECT * FROM audit WHERE 1 = 1");
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
        let mut tx = self.pool.begin().await?;
        let ids = audit::append(&mut tx, key.as_ref(), records).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn verify_audit(&self) -> Result<ChainVerdict> {
        audit::verify(&self.pool, self.audit_key.get()?.as_ref()).await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<PruneOutcome> {
        audit::prune(&self.pool, self.audit_key.get()?.as_ref(), before_ms).await
    }

    async fn restart_audit_chain(&self, record: &AuditRecord) -> Result<u64> {
        audit::restart(&self.pool, self.audit_key.get()?.as_ref(), record).await
    }

    async fn audit_counts(&self) -> Result<(u64, u64)> {
        // SUM yields DECIMAL in MySQL: cast back to BIGINT.
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(decision = 'approved'), 0) AS SIGNED) AS approved, \
                    CAST(COALESCE(SUM(decision = 'denied'), 0) AS SIGNED) AS denied FROM audit",
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
    }

    async fn begin_decisions(&self, fence: Option<&Lease>) -> Result<Box<dyn DecisionTx>> {
        let mut tx = self.pool.begin().await?;
        // The clock is read once, at the start (with the lease when fenced): every
        // statement is a round trip to the database.
        let now_ms = match fence {
            Some(lease) => registry::check_fence(&mut tx, lease).await?,
            None => registry::db_now(&mut tx).await?,
        };
        Ok(Box::new(MysqlDecisionTx {
            tx,
            audit_key: self.audit_key.clone(),
            now_ms,
        }))
    }
}

struct MysqlDecisionTx {
    tx: Transaction<'static, MySql>,
    audit_key: KeySlot,
    /// The database's clock when the transaction started.
    now_ms: i64,
}

#[async_trait]
impl DecisionTx for MysqlDecisionTx {
    async fn clock_ms(&mut self) -> Result<i64> {
        Ok(self.now_ms)
    }

    async fn counters_for(&mut self, profile_ids: &[&str]) -> Result<Vec<StoredCounter>> {
        // Sorted and deduplicated: every transaction asks for its locks in the same order.
        let mut ids: Vec<&str> = profile_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_BINDS_PER_STATEMENT) {
            // The profile rows first: one lock per profile serializes its deciders before
            // they touch its counters (no insert-insert deadlock on first use).
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("SELECT profile_id FROM profiles WHERE profile_id IN (");
            let mut list = q.separated(", ");
            for p in chunk {
                list.push_bind(*p);
            }
            q.push(") ORDER BY profile_id FOR UPDATE");
            q.build().fetch_all(&mut *self.tx).await?;

            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("SELECT * FROM quota_counters WHERE profile_id IN (");
            let mut list = q.separated(", ");
            for p in chunk {
                list.push_bind(*p);
            }
            q.push(") ORDER BY profile_id, rule_id FOR UPDATE");
            for row in q.build().fetch_all(&mut *self.tx).await? {
                out.push(counter_from_row(&row)?);
            }
        }
        Ok(out)
    }

    async fn seen_nonces(&mut self, nonces: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        // The UNIQUE key on audit.nonce is what refuses a replay (AlreadyExists at
        // append_audit); this read lets the caller deny it politely.
        let mut out = Vec::new();
        for chunk in nonces.chunks(MAX_BINDS_PER_STATEMENT) {
            let mut q: QueryBuilder<MySql> =
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
        insert_profile(&mut self.tx, p).await
    }

    async fn use_enrollment(&mut self, token_sha256: &[u8], now_ms: i64) -> Result<EnrollmentUse> {
        // Locks the row until this transaction ends (see the module documentation).
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, uses_left, expires_at_ms FROM enrollments WHERE token_sha256 = ? \
             FOR UPDATE",
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
        upsert_counters(&mut self.tx, counters).await
    }

    async fn append_audit(&mut self, records: &[AuditRecord]) -> Result<Vec<u64>> {
        let key = self.audit_key.get()?;
        audit::append(&mut self.tx, key.as_ref(), records).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Inserts a profile; `false` if one with its id exists (left as it is). Shared by
/// decisions and `clone-db`.
pub(crate) async fn insert_profile(conn: &mut MySqlConnection, p: &Profile) -> Result<bool> {
    // A plain INSERT, with a duplicate key read as "exists": InnoDB rolls back only
    // the failed statement, the transaction goes on. (INSERT IGNORE would also
    // downgrade strict-mode errors, e.g. truncation, to warnings; and with sqlx's
    // CLIENT_FOUND_ROWS, ON DUPLICATE KEY UPDATE could not tell the two cases apart.)
    let done = sqlx::query(
        "INSERT INTO profiles (profile_id, device_id, device_public_key, workstation_share, \
         name, words, created_at_ms, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&p.profile_id)
    .bind(&p.device_id)
    .bind(&p.device_public_key)
    .bind(&p.workstation_share)
    .bind(&p.name)
    .bind(p.words.join(" "))
    .bind(p.created_at_ms)
    .bind(&p.mac)
    .execute(&mut *conn)
    .await;
    match done {
        Ok(d) => Ok(d.rows_affected() == 1),
        Err(e) if is_duplicate(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Inserts an enrollment; `AlreadyExists` if its id or token hash is taken. Shared by
/// `create_enrollment` and `clone-db`.
pub(crate) async fn insert_enrollment(conn: &mut MySqlConnection, e: &Enrollment) -> Result<()> {
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
    .execute(&mut *conn)
    .await;
    match done {
        Ok(_) => Ok(()),
        Err(err) if is_duplicate(&err) => Err(StoreError::AlreadyExists(format!(
            "enrollment {} (or its token)",
            e.id
        ))),
        Err(err) => Err(err.into()),
    }
}

/// Writes counters (insert or replace). Shared by decisions and `clone-db`.
pub(crate) async fn upsert_counters(
    conn: &mut MySqlConnection,
    counters: &[StoredCounter],
) -> Result<()> {
    for chunk in counters.chunks(MAX_BINDS_PER_STATEMENT / 6) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO quota_counters \
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
        // VALUES(col) works on MariaDB and MySQL 8 (deprecated there, not removed).
        q.push(
            " ON DUPLICATE KEY UPDATE day = VALUES(day), hour = VALUES(hour), \
             hour_used = VALUES(hour_used), day_used = VALUES(day_used)",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
