//! [`Registry`] on MySQL: every time is the database server's clock, so instances whose
//! hosts' clocks differ still agree on heartbeats and lease expiry. A claim locks the lease
//! row (`FOR UPDATE`); a fenced write reads it with a shared lock in its own transaction,
//! so a claim and a fenced write never interleave.

use async_trait::async_trait;
use sqlx::{MySql, Row, Transaction};

use super::MysqlStore;
use crate::registry::{
    ClaimStep, InstanceInfo, InstanceList, Lease, LeaseClaim, OFFLINE_AFTER_MS, Registry,
    claim_step, granted, still_held,
};
use crate::rows::{instance_from_row, lease_from_row, to_i64};
use crate::{Result, StoreError};

/// The database's clock in milliseconds since the Unix epoch (sessions run in UTC, set on
/// connect, so no daylight-saving ambiguity).
macro_rules! db_now_ms {
    () => {
        "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"
    };
}

pub(crate) async fn db_now(tx: &mut Transaction<'static, MySql>) -> Result<i64> {
    Ok(sqlx::query_scalar(concat!("SELECT ", db_now_ms!()))
        .fetch_one(&mut **tx)
        .await?)
}

/// Fails with `Fenced` unless `lease` is still held as it was granted; else the database's
/// clock, read with the lease (one round trip). Runs inside the caller's transaction; the
/// shared lock makes a concurrent claim wait for its commit.
pub(crate) async fn check_fence(
    tx: &mut Transaction<'static, MySql>,
    lease: &Lease,
) -> Result<i64> {
    let row = sqlx::query(concat!(
        "SELECT holder, token, expires_at_ms, ",
        db_now_ms!(),
        " AS now_ms FROM leases WHERE name = ? LOCK IN SHARE MODE"
    ))
    .bind(&lease.name)
    .fetch_optional(&mut **tx)
    .await?;
    let now = match &row {
        Some(row) => row.try_get("now_ms")?,
        // No lease row: fenced; the clock only for the error's wording.
        None => db_now(tx).await?,
    };
    let held = row.as_ref().map(lease_from_row).transpose()?;
    still_held(lease, held.as_ref(), now)?;
    Ok(now)
}

#[async_trait]
impl Registry for MysqlStore {
    async fn register_instance(&self, info: &InstanceInfo, applied: u64) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO instances (name, incarnation, hostname, endpoint, kss_version, \
             started_at_ms, heartbeat_ms, applied_policy_version, applied_at_ms, stopped_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ",
            db_now_ms!(),
            ", ?, ",
            db_now_ms!(),
            ", NULL) ON DUPLICATE KEY UPDATE incarnation = VALUES(incarnation), \
             hostname = VALUES(hostname), endpoint = VALUES(endpoint), \
             kss_version = VALUES(kss_version), started_at_ms = VALUES(started_at_ms), \
             heartbeat_ms = VALUES(heartbeat_ms), \
             applied_policy_version = VALUES(applied_policy_version), \
             applied_at_ms = VALUES(applied_at_ms), stopped_at_ms = NULL"
        ))
        .bind(&info.name)
        .bind(&info.incarnation)
        .bind(&info.hostname)
        .bind(&info.endpoint)
        .bind(&info.kss_version)
        .bind(info.started_at_ms)
        .bind(to_i64(applied)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&self, name: &str, incarnation: &str, applied: u64) -> Result<bool> {
        let applied = to_i64(applied)?;
        // Assignments run left to right on the updated row: applied_at_ms compares with
        // the old version before applied_policy_version changes.
        let done = sqlx::query(concat!(
            "UPDATE instances SET heartbeat_ms = ",
            db_now_ms!(),
            ", applied_at_ms = CASE WHEN applied_policy_version <> ? THEN ",
            db_now_ms!(),
            " ELSE applied_at_ms END, applied_policy_version = ?, stopped_at_ms = NULL \
             WHERE name = ? AND incarnation = ?"
        ))
        .bind(applied)
        .bind(applied)
        .bind(name)
        .bind(incarnation)
        .execute(&self.pool)
        .await?;
        // sqlx sets CLIENT_FOUND_ROWS: a matched row counts even when nothing changed.
        Ok(done.rows_affected() == 1)
    }

    async fn mark_stopped(&self, name: &str, incarnation: &str) -> Result<()> {
        sqlx::query(concat!(
            "UPDATE instances SET stopped_at_ms = ",
            db_now_ms!(),
            " WHERE name = ? AND incarnation = ?"
        ))
        .bind(name)
        .bind(incarnation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<InstanceList> {
        let mut tx = self.pool.begin().await?;
        let now_ms = db_now(&mut tx).await?;
        let rows = sqlx::query("SELECT * FROM instances ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(InstanceList {
            now_ms,
            instances: rows.iter().map(instance_from_row).collect::<Result<_>>()?,
        })
    }

    async fn forget_instances(&self, fence: &Lease, offline_for_ms: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        check_fence(&mut tx, fence).await?;
        let done = sqlx::query(concat!(
            "DELETE FROM instances WHERE COALESCE(stopped_at_ms, heartbeat_ms + ?) <= ",
            db_now_ms!(),
            " - ?"
        ))
        .bind(OFFLINE_AFTER_MS + 1)
        .bind(offline_for_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn claim_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<LeaseClaim> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT holder, token, expires_at_ms FROM leases WHERE name = ? FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.as_ref().map(lease_from_row).transpose()?;
        let now = db_now(&mut tx).await?;
        let token = match claim_step(row.as_ref(), holder, now) {
            ClaimStep::Refuse(claim) => return Ok(claim),
            ClaimStep::Insert => {
                // Two first claims at once: the loser's insert fails (duplicate key or
                // deadlock) and it is told to retry, as for any unavailable database.
                sqlx::query(
                    "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES (?, ?, 1, ?)",
                )
                .bind(name)
                .bind(holder)
                .bind(now + ttl_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Unavailable(format!("claiming lease '{name}': {e}")))?;
                1
            }
            ClaimStep::Take { token } => {
                sqlx::query(
                    "UPDATE leases SET holder = ?, token = ?, expires_at_ms = ? WHERE name = ?",
                )
                .bind(holder)
                .bind(to_i64(token)?)
                .bind(now + ttl_ms)
                .bind(name)
                .execute(&mut *tx)
                .await?;
                token
            }
        };
        tx.commit().await?;
        Ok(granted(name, holder, token, now + ttl_ms))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64) -> Result<bool> {
        let done = sqlx::query(concat!(
            "UPDATE leases SET expires_at_ms = ",
            db_now_ms!(),
            " + ? WHERE name = ? AND holder = ? AND token = ? AND expires_at_ms > ",
            db_now_ms!()
        ))
        .bind(ttl_ms)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(to_i64(lease.token)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        // Expire it now rather than delete it: the token keeps growing.
        sqlx::query(
            "UPDATE leases SET expires_at_ms = 0 WHERE name = ? AND holder = ? AND token = ?",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(to_i64(lease.token)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
