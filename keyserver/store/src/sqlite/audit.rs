//! The audit chain on SQLite: appends (under the write lock every decision transaction
//! takes with `BEGIN IMMEDIATE`), verification in a read snapshot, and pruning.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::audit_chain::{
    self, AuditKey, ChainHead, ChainReader, ChainVerdict, Checkpoint, Extension, MAX_INSERT_BYTES,
    PruneOutcome, Surroundings,
};
use crate::rows::{audit_from_row, checkpoint_from_row, head_from_row, to_i64, to_u64};
use crate::{AuditEntry, AuditRecord, Result, StoreError};

use super::MAX_BINDS_PER_STATEMENT;

/// Bound parameters per audit row.
const AUDIT_COLUMNS: usize = 16;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The columns of [`LockedHead`], from `audit_head` (as `h`) and `audit`, for `concat!`.
macro_rules! locked_head_columns {
    () => {
        "h.last_id, h.last_hash, h.checkpoint_seq, h.checkpoint_mac, h.since_checkpoint, \
         h.at_ms, h.mac, (SELECT COALESCE(MAX(id), 0) FROM audit) AS max_id"
    };
}
pub(super) use locked_head_columns;

/// The chain's head as the write lock found it, and the table's largest id.
pub(super) struct LockedHead {
    head: ChainHead,
    max_id: u64,
}

impl LockedHead {
    /// From a row with [`locked_head_columns`], `None` if the head row is missing.
    pub(super) fn from_row(row: Option<&SqliteRow>) -> Result<Self> {
        let row = row.ok_or_else(|| {
            StoreError::AuditChain(
                "the audit chain's head row is missing: the audit log was tampered with".into(),
            )
        })?;
        Ok(LockedHead {
            head: head_from_row(row)?,
            max_id: to_u64(row.try_get("max_id")?)?,
        })
    }
}

/// The head, and the table's largest id. The caller holds the write lock.
async fn locked_head(conn: &mut SqliteConnection) -> Result<LockedHead> {
    let row = sqlx::query(concat!(
        "SELECT ",
        locked_head_columns!(),
        " FROM audit_head h WHERE h.singleton = 1"
    ))
    .fetch_optional(&mut *conn)
    .await?;
    LockedHead::from_row(row.as_ref())
}

/// Whether the chain left any trace (a checkpoint or a chained row).
async fn chain_traces(conn: &mut SqliteConnection) -> Result<bool> {
    let traces: i64 = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM audit_checkpoints) \
         OR EXISTS (SELECT 1 FROM audit WHERE chain_hash IS NOT NULL)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(traces != 0)
}

/// Whether a chained row exists after `id`.
async fn chained_after(conn: &mut SqliteConnection, id: u64) -> Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE id > ? AND chain_hash IS NOT NULL")
            .bind(to_i64(id)?)
            .fetch_one(&mut *conn)
            .await?;
    Ok(n > 0)
}

async fn write_head(conn: &mut SqliteConnection, h: &ChainHead) -> Result<()> {
    sqlx::query(
        "UPDATE audit_head SET last_id = ?, last_hash = ?, checkpoint_seq = ?, \
         checkpoint_mac = ?, since_checkpoint = ?, at_ms = ?, mac = ? WHERE singleton = 1",
    )
    .bind(to_i64(h.last_id)?)
    .bind(&h.last_hash)
    .bind(to_i64(h.checkpoint_seq)?)
    .bind(&h.checkpoint_mac)
    .bind(to_i64(h.since_checkpoint)?)
    .bind(h.at_ms)
    .bind(&h.mac)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_checkpoint(conn: &mut SqliteConnection, c: &Checkpoint) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, kind, last_id, last_hash, at_ms, prev_mac, mac) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(to_i64(c.seq)?)
    .bind(c.kind.as_str())
    .bind(to_i64(c.last_id)?)
    .bind(&c.last_hash)
    .bind(c.at_ms)
    .bind(&c.prev_mac)
    .bind(&c.mac)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends `records` to the chain; the caller holds the write lock until it commits.
pub(super) async fn append(
    conn: &mut SqliteConnection,
    key: &dyn AuditKey,
    records: &[AuditRecord],
) -> Result<Vec<u64>> {
    let locked = locked_head(conn).await?;
    append_at(conn, key, locked, records).await
}

/// Appends `records` after `locked`, the head this transaction read under the write lock
/// it still holds.
pub(super) async fn append_at(
    conn: &mut SqliteConnection,
    key: &dyn AuditKey,
    locked: LockedHead,
    records: &[AuditRecord],
) -> Result<Vec<u64>> {
    let LockedHead { head, max_id } = locked;
    let around = Surroundings {
        max_id,
        genesis_allowed: head.mac.is_empty() && !chain_traces(conn).await?,
        chained_after_head: max_id > head.last_id && chained_after(conn, head.last_id).await?,
        restart: false,
    };
    let ext = audit_chain::extend(key, &head, around, records, now_ms())?;
    write(conn, records, &ext).await
}

/// Writes what an append or a restart planned.
async fn write(
    conn: &mut SqliteConnection,
    records: &[AuditRecord],
    ext: &Extension,
) -> Result<Vec<u64>> {
    if ext.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(&AuditRecord, &(u64, [u8; 32]))> = records.iter().zip(&ext.rows).collect();
    for chunk in audit_chain::chunks(
        &rows,
        MAX_BINDS_PER_STATEMENT / AUDIT_COLUMNS,
        MAX_INSERT_BYTES,
        |(r, _)| audit_chain::record_bytes(r),
    ) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO audit (id, at_ms, instance_id, profile_id, device_id, request_type, \
             meta, cryptographic_id, decision, rule_set, reason, policy_version, nonce, \
             ciphertext_sha256, actor, chain_hash) ",
        );
        let mut failed = None;
        q.push_values(chunk, |mut row, (r, (id, hash))| {
            let id = to_i64(*id).unwrap_or_else(|e| {
                failed = Some(e);
                0
            });
            row.push_bind(id)
                .push_bind(r.at_ms)
                .push_bind(r.instance_id.clone())
                .push_bind(r.profile_id.clone())
                .push_bind(r.device_id.clone())
                .push_bind(r.request_type.clone())
                .push_bind(r.meta.clone())
                .push_bind(r.cryptographic_id.clone())
                .push_bind(r.decision.as_str())
                .push_bind(r.rule_set.map(i64::from))
                .push_bind(r.reason.clone())
                .push_bind(r.policy_version.and_then(|v| i64::try_from(v).ok()))
                .push_bind(r.nonce.clone())
                .push_bind(r.ciphertext_sha256.clone())
                .push_bind(r.actor.clone())
                .push_bind(hash.to_vec());
        });
        if let Some(e) = failed {
            return Err(e);
        }
        q.build().execute(&mut *conn).await?;
    }
    for c in &ext.checkpoints {
        insert_checkpoint(conn, c).await?;
    }
    write_head(conn, &ext.head).await?;
    Ok(ext.rows.iter().map(|(id, _)| *id).collect())
}

/// The chain as of one read transaction.
struct Reader {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl ChainReader for Reader {
    async fn head(&mut self) -> Result<Option<ChainHead>> {
        let row = sqlx::query("SELECT * FROM audit_head WHERE singleton = 1")
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(head_from_row).transpose()
    }

    async fn checkpoints(&mut self) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn count_through(&mut self, id: u64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE id <= ?")
            .bind(to_i64(id)?)
            .fetch_one(&mut *self.tx)
            .await?;
        to_u64(n)
    }

    async fn page(&mut self, after: u64, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?")
            .bind(to_i64(after)?)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn first_id_since(&mut self, at_ms: i64) -> Result<Option<u64>> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MIN(id) FROM audit WHERE at_ms >= ?")
            .bind(at_ms)
            .fetch_one(&mut *self.tx)
            .await?;
        id.map(to_u64).transpose()
    }
}

async fn reader(pool: &SqlitePool) -> Result<Reader> {
    // A deferred transaction: its first read fixes the snapshot (WAL), which later
    // commits do not change.
    Ok(Reader {
        tx: pool.begin().await?,
    })
}

pub(super) async fn verify(pool: &SqlitePool, key: &dyn AuditKey) -> Result<ChainVerdict> {
    let mut reader = reader(pool).await?;
    let verdict = audit_chain::verify(&mut reader, key, None).await?;
    reader.tx.rollback().await?;
    Ok(verdict)
}

pub(super) async fn prune(
    pool: &SqlitePool,
    writer: &SqlitePool,
    key: &dyn AuditKey,
    before_ms: i64,
) -> Result<PruneOutcome> {
    let plan = {
        let mut reader = reader(pool).await?;
        let plan = audit_chain::plan_prune(&mut reader, key, before_ms).await?;
        reader.tx.rollback().await?;
        match plan {
            Err(tampering) => return Ok(PruneOutcome::Refused(tampering)),
            Ok(None) => return Ok(PruneOutcome::Nothing),
            Ok(Some(plan)) => plan,
        }
    };
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let head = locked_head(&mut tx).await?.head;
    let through = to_i64(plan.through)?;
    if let Some(hash) = &plan.hash {
        // The row verified then is still there as it was (not pruned meanwhile).
        let stored: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT chain_hash FROM audit WHERE id = ?")
                .bind(through)
                .fetch_optional(&mut *tx)
                .await?;
        if stored.flatten().as_ref() != Some(hash) {
            return Ok(PruneOutcome::Nothing);
        }
    }
    let write = audit_chain::prune_write(key, &head, plan.through, plan.hash.as_deref(), now_ms())?;
    if let Some(c) = &write.checkpoint {
        insert_checkpoint(&mut tx, c).await?;
        write_head(&mut tx, &write.head).await?;
        sqlx::query("DELETE FROM audit_checkpoints WHERE seq < ?")
            .bind(to_i64(c.seq)?)
            .execute(&mut *tx)
            .await?;
    }
    let deleted = sqlx::query("DELETE FROM audit WHERE id <= ?")
        .bind(through)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(PruneOutcome::Pruned {
        through: plan.through,
        rows: deleted,
        checkpoint: write.checkpoint.map(|c| c.seq),
    })
}

/// Starts a new chain after every row there is, whatever the state of the old one: every
/// checkpoint goes, the head is rewritten, `record` is the first row.
pub(super) async fn restart(
    writer: &SqlitePool,
    key: &dyn AuditKey,
    record: &AuditRecord,
) -> Result<u64> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    // The head row (if any) first: the lock every append takes.
    sqlx::query("DELETE FROM audit_head")
        .execute(&mut *tx)
        .await?;
    let max_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM audit")
        .fetch_one(&mut *tx)
        .await?;
    let ext = audit_chain::restart(key, to_u64(max_id)?, record, now_ms())?;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO audit_head (singleton, last_id, last_hash, checkpoint_seq, \
         checkpoint_mac, since_checkpoint, at_ms, mac) VALUES (1, 0, X'', 0, X'', 0, 0, X'')",
    )
    .execute(&mut *tx)
    .await?;
    let ids = write(&mut tx, std::slice::from_ref(record), &ext).await?;
    tx.commit().await?;
    ids.first()
        .copied()
        .ok_or_else(|| StoreError::AuditChain("the restart wrote no row".into()))
}
