//! `kss clone-db`: copies a standalone keyserver's SQLite database into an empty MySQL
//! database, so that it becomes a cluster with the same identity, profiles, policy
//! versions (with their MACs), persistent quota counters, revocations, enrollment tokens
//! (their hashes and uses left) and audit log (audit ids, the chain's links, checkpoints
//! and head kept: it verifies the same in the copy).
//!
//! The source is read in one read transaction (a consistent snapshot); the target is
//! written in one transaction, so a failed clone leaves the target empty. The caller
//! keeps the standalone server stopped meanwhile (it holds the standalone lease).

use sqlx::Row;

use crate::rows::{
    audit_from_row, checkpoint_from_row, counter_from_row, enrollment_from_row, head_from_row,
    policy_from_row, profile_from_row, revocation_from_row, to_i64,
};
use crate::{AuditEntry, MysqlStore, Result, SqliteStore, StoreError, mysql};

/// Audit rows per page read (each page written in chunks by `mysql::audit::insert_rows`).
const AUDIT_PAGE: i64 = 400;

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneCounts {
    pub keyserver_id: String,
    pub profiles: u64,
    pub policy_versions: u64,
    pub quota_counters: u64,
    pub revocations: u64,
    pub enrollments: u64,
    pub audit_records: u64,
}

/// Copies everything but the instance registry and leases (those describe processes,
/// not the keyserver). Refuses a target that holds any keyserver data.
pub async fn clone_sqlite_into_mysql(
    source: &SqliteStore,
    target: &MysqlStore,
) -> Result<CloneCounts> {
    let mut src = source.pool.begin().await?;
    let mut dst = target.pool.begin().await?;

    let existing: Option<String> =
        sqlx::query_scalar("SELECT keyserver_id FROM identity WHERE singleton = 1 FOR UPDATE")
            .fetch_optional(&mut *dst)
            .await?;
    if let Some(id) = existing {
        return Err(StoreError::AlreadyExists(format!(
            "the target database already holds keyserver {id}"
        )));
    }
    for (table, sql) in [
        ("profiles", "SELECT COUNT(*) FROM profiles"),
        ("policy_versions", "SELECT COUNT(*) FROM policy_versions"),
        ("quota_counters", "SELECT COUNT(*) FROM quota_counters"),
        ("revocations", "SELECT COUNT(*) FROM revocations"),
        ("enrollments", "SELECT COUNT(*) FROM enrollments"),
        ("audit", "SELECT COUNT(*) FROM audit"),
    ] {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *dst).await?;
        if n != 0 {
            return Err(StoreError::AlreadyExists(format!(
                "the target database is not empty ({n} rows in {table})"
            )));
        }
    }

    let identity = sqlx::query(
        "SELECT keyserver_id, sealed_root, created_at_ms FROM identity WHERE singleton = 1",
    )
    .fetch_optional(&mut *src)
    .await?
    .ok_or_else(|| StoreError::NotFound("a keyserver identity in the source".into()))?;
    let keyserver_id: String = identity.try_get("keyserver_id")?;
    sqlx::query(
        "INSERT INTO identity (singleton, keyserver_id, sealed_root, created_at_ms) \
         VALUES (1, ?, ?, ?)",
    )
    .bind(&keyserver_id)
    .bind(identity.try_get::<Vec<u8>, _>("sealed_root")?)
    .bind(identity.try_get::<i64, _>("created_at_ms")?)
    .execute(&mut *dst)
    .await?;

    let mut counts = CloneCounts {
        keyserver_id,
        ..CloneCounts::default()
    };

    for row in sqlx::query("SELECT * FROM policy_versions ORDER BY version")
        .fetch_all(&mut *src)
        .await?
    {
        let p = policy_from_row(&row)?;
        sqlx::query(
            "INSERT INTO policy_versions (version, text, sha256, loaded_at_ms, mac) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(to_i64(p.version)?)
        .bind(&p.text)
        .bind(&p.sha256)
        .bind(p.loaded_at_ms)
        .bind(&p.mac)
        .execute(&mut *dst)
        .await?;
        counts.policy_versions += 1;
    }

    let state = sqlx::query(
        "SELECT enabled, policy_version, quota_epoch, revocation_epoch FROM state \
         WHERE singleton = 1",
    )
    .fetch_one(&mut *src)
    .await?;
    sqlx::query(
        "UPDATE state SET enabled = ?, policy_version = ?, quota_epoch = ?, \
         revocation_epoch = ? WHERE singleton = 1",
    )
    .bind(state.try_get::<i64, _>("enabled")?)
    .bind(state.try_get::<i64, _>("policy_version")?)
    .bind(state.try_get::<i64, _>("quota_epoch")?)
    .bind(state.try_get::<i64, _>("revocation_epoch")?)
    .execute(&mut *dst)
    .await?;

    for row in sqlx::query("SELECT * FROM profiles ORDER BY profile_id")
        .fetch_all(&mut *src)
        .await?
    {
        let p = profile_from_row(&row)?;
        if !mysql::insert_profile(&mut dst, &p).await? {
            return Err(StoreError::AlreadyExists(format!(
                "profile {}",
                p.profile_id
            )));
        }
        counts.profiles += 1;
    }

    let counters = sqlx::query("SELECT * FROM quota_counters ORDER BY profile_id, rule_id")
        .fetch_all(&mut *src)
        .await?
        .iter()
        .map(counter_from_row)
        .collect::<Result<Vec<_>>>()?;
    mysql::upsert_counters(&mut dst, &counters).await?;
    counts.quota_counters = counters.len() as u64;

    for row in
        sqlx::query("SELECT * FROM revocations ORDER BY profile_id, whole_profile, device_id")
            .fetch_all(&mut *src)
            .await?
    {
        let r = revocation_from_row(&row)?;
        sqlx::query(
            "INSERT INTO revocations (profile_id, whole_profile, device_id, revoked_at_ms, \
             reason) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&r.profile_id)
        .bind(i64::from(r.device_id.is_none()))
        .bind(r.device_id.as_deref().unwrap_or(""))
        .bind(r.revoked_at_ms)
        .bind(&r.reason)
        .execute(&mut *dst)
        .await?;
        counts.revocations += 1;
    }

    for row in sqlx::query("SELECT * FROM enrollments ORDER BY id")
        .fetch_all(&mut *src)
        .await?
    {
        mysql::insert_enrollment(&mut dst, &enrollment_from_row(&row)?).await?;
        counts.enrollments += 1;
    }

    let mut after = 0i64;
    loop {
        let page = sqlx::query("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after)
            .bind(AUDIT_PAGE)
            .fetch_all(&mut *src)
            .await?
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<AuditEntry>>>()?;
        let Some(last) = page.last() else { break };
        after = to_i64(last.id)?;
        let rows: Vec<mysql::audit::AuditRow<'_>> = page
            .iter()
            .map(|e| mysql::audit::AuditRow {
                id: e.id,
                record: &e.record,
                chain_hash: e.chain_hash.as_deref(),
            })
            .collect();
        // The ids and chain links are kept (AUTO_INCREMENT then continues after them).
        mysql::audit::insert_rows(&mut dst, &rows).await?;
        counts.audit_records += page.len() as u64;
    }

    for row in sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq")
        .fetch_all(&mut *src)
        .await?
    {
        mysql::audit::insert_checkpoint(&mut dst, &checkpoint_from_row(&row)?).await?;
    }
    if let Some(row) = sqlx::query("SELECT * FROM audit_head WHERE singleton = 1")
        .fetch_optional(&mut *src)
        .await?
    {
        mysql::audit::write_head(&mut dst, &head_from_row(&row)?).await?;
    }

    dst.commit().await?;
    src.commit().await?;
    Ok(counts)
}
