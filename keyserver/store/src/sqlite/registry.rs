//! [`Registry`] on SQLite: one host, so its clock is the store's clock. Writes take the
//! database's write lock (`BEGIN IMMEDIATE`), which serializes claims, renewals and every
//! fenced write.

use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};

use super::SqliteStore;
use crate::Result;
use crate::registry::{
    ClaimStep, InstanceInfo, InstanceList, Lease, LeaseClaim, OFFLINE_AFTER_MS, Registry,
    claim_step, granted, still_held,
};
use crate::rows::{instance_from_row, lease_from_row, to_i64};

pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Fails with `Fenced` unless `lease` is still held as it was granted. Runs inside the
/// caller's write transaction.
pub(crate) async fn check_fence(
    tx: &mut Transaction<'static, Sqlite>,
    lease: &Lease,
) -> Result<()> {
    let row = sqlx::query("SELECT holder, token, expires_at_ms FROM leases WHERE name = ?")
        .bind(&lease.name)
        .fetch_optional(&mut **tx)
        .await?;
    let row = row.as_ref().map(lease_from_row).transpose()?;
    still_held(lease, row.as_ref(), now_ms())
}

#[async_trait]
impl Registry for SqliteStore {
    async fn register_instance(&self, info: &InstanceInfo, applied: u64) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT OR REPLACE INTO instances (name, incarnation, hostname, endpoint, \
             kss_version, started_at_ms, heartbeat_ms, applied_policy_version, applied_at_ms, \
             stopped_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(&info.name)
        .bind(&info.incarnation)
        .bind(&info.hostname)
        .bind(&info.endpoint)
        .bind(&info.kss_version)
        .bind(info.started_at_ms)
        .bind(now)
        .bind(to_i64(applied)?)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn heartbeat(&self, name: &str, incarnation: &str, applied: u64) -> Result<bool> {
        let now = now_ms();
        let applied = to_i64(applied)?;
        let done = sqlx::query(
            "UPDATE instances SET heartbeat_ms = ?, \
             applied_at_ms = CASE WHEN applied_policy_version <> ? THEN ? ELSE applied_at_ms END, \
             applied_policy_version = ?, stopped_at_ms = NULL \
             WHERE name = ? AND incarnation = ?",
        )
        .bind(now)
        .bind(applied)
        .bind(now)
        .bind(applied)
        .bind(name)
        .bind(incarnation)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_stopped(&self, name: &str, incarnation: &str) -> Result<()> {
        sqlx::query("UPDATE instances SET stopped_at_ms = ? WHERE name = ? AND incarnation = ?")
            .bind(now_ms())
            .bind(name)
            .bind(incarnation)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<InstanceList> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(InstanceList {
            now_ms: now_ms(),
            instances: rows.iter().map(instance_from_row).collect::<Result<_>>()?,
        })
    }

    async fn forget_instances(&self, fence: &Lease, offline_for_ms: i64) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        check_fence(&mut tx, fence).await?;
        let done = sqlx::query(
            "DELETE FROM instances WHERE COALESCE(stopped_at_ms, heartbeat_ms + ?) <= ?",
        )
        .bind(OFFLINE_AFTER_MS + 1)
        .bind(now_ms() - offline_for_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn claim_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<LeaseClaim> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let row = sqlx::query("SELECT holder, token, expires_at_ms FROM leases WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let row = row.as_ref().map(lease_from_row).transpose()?;
        let token = match claim_step(row.as_ref(), holder, now) {
            ClaimStep::Refuse(claim) => return Ok(claim),
            ClaimStep::Insert => 1,
            ClaimStep::Take { token } => token,
        };
        sqlx::query(
            "INSERT OR REPLACE INTO leases (name, holder, token, expires_at_ms) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(holder)
        .bind(to_i64(token)?)
        .bind(now + ttl_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(granted(name, holder, token, now + ttl_ms))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64) -> Result<bool> {
        // The clock is read once the write lock is held: a renewal that waited for it
        // past the expiry does not revive the lease.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE leases SET expires_at_ms = ? \
             WHERE name = ? AND holder = ? AND token = ? AND expires_at_ms > ?",
        )
        .bind(now + ttl_ms)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(to_i64(lease.token)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        // Expire it now rather than delete it: the token keeps growing.
        self.set_lease_expiry(lease, 0).await.map(drop)
    }
}

impl SqliteStore {
    /// Moves a lease's expiry if it is still held as granted; `false` if not.
    async fn set_lease_expiry(&self, lease: &Lease, expires_at_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at_ms = ? WHERE name = ? AND holder = ? AND token = ?",
        )
        .bind(expires_at_ms)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(to_i64(lease.token)?)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
