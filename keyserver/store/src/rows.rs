//! Rows → values, written once for every backend: the schemas name and type their
//! columns alike (text, blobs, 64-bit integers).

use std::str::FromStr;

use jiff::civil::Date;
use kss_policy::{Counter, QuotaWindow};
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use crate::audit_chain::{ChainHead, Checkpoint, CheckpointKind};
use crate::registry::{InstanceInfo, InstanceStatus, LeaseRow};
use crate::{
    AuditEntry, AuditRecord, Decision, Enrollment, PolicyVersion, Profile, Result, Revocation,
    State, StoreError, StoredCounter,
};

/// A column type a backend decodes (for any row lifetime).
pub(crate) trait Decodes<DB: Database>: for<'r> Decode<'r, DB> + Type<DB> {}
impl<DB: Database, T> Decodes<DB> for T where T: for<'r> Decode<'r, DB> + Type<DB> {}

pub(crate) fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

pub(crate) fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("count {v} out of range")))
}

pub(crate) fn to_u32(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("count {v} out of range")))
}

pub(crate) fn state_from_row<R>(row: &R) -> Result<State>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decodes<R::Database>,
{
    Ok(State {
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        policy_version: to_u64(row.try_get("policy_version")?)?,
        quota_epoch: to_u64(row.try_get("quota_epoch")?)?,
        revocation_epoch: to_u64(row.try_get("revocation_epoch")?)?,
    })
}

pub(crate) fn policy_from_row<R>(row: &R) -> Result<PolicyVersion>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
{
    Ok(PolicyVersion {
        version: to_u64(row.try_get("version")?)?,
        text: row.try_get("text")?,
        sha256: row.try_get("sha256")?,
        loaded_at_ms: row.try_get("loaded_at_ms")?,
        mac: row.try_get("mac")?,
    })
}

/// `whole_profile` (1: the whole profile, `device_id` is '') says which kind of
/// revocation a row is.
pub(crate) fn revocation_from_row<R>(row: &R) -> Result<Revocation>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
{
    let whole: i64 = row.try_get("whole_profile")?;
    let device_id: String = row.try_get("device_id")?;
    let device_id = match (whole, device_id) {
        (1, d) if d.is_empty() => None,
        (0, d) => Some(d),
        (w, d) => {
            return Err(StoreError::Corrupt(format!(
                "revocation whole_profile={w} with device '{d}'"
            )));
        }
    };
    Ok(Revocation {
        profile_id: row.try_get("profile_id")?,
        device_id,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        reason: row.try_get("reason")?,
    })
}

pub(crate) fn enrollment_from_row<R>(row: &R) -> Result<Enrollment>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
{
    Ok(Enrollment {
        id: row.try_get("id")?,
        token_sha256: row.try_get("token_sha256")?,
        uses_total: to_u32(row.try_get("uses_total")?)?,
        uses_left: to_u32(row.try_get("uses_left")?)?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        note: row.try_get("note")?,
    })
}

pub(crate) fn counter_from_row<R>(row: &R) -> Result<StoredCounter>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
{
    let day: String = row.try_get("day")?;
    let day = Date::from_str(&day)
        .map_err(|e| StoreError::Corrupt(format!("quota counter day '{day}': {e}")))?;
    let hour: i64 = row.try_get("hour")?;
    let hour = i8::try_from(hour)
        .ok()
        .filter(|h| (0..24).contains(h))
        .ok_or_else(|| StoreError::Corrupt(format!("quota counter hour {hour}")))?;
    Ok(StoredCounter {
        rule_id: row.try_get("rule_id")?,
        profile_id: row.try_get("profile_id")?,
        counter: Counter {
            window: QuotaWindow { day, hour },
            hour_used: to_u64(row.try_get("hour_used")?)?,
            day_used: to_u64(row.try_get("day_used")?)?,
        },
    })
}

pub(crate) fn profile_from_row<R>(row: &R) -> Result<Profile>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
{
    let words: String = row.try_get("words")?;
    Ok(Profile {
        profile_id: row.try_get("profile_id")?,
        device_id: row.try_get("device_id")?,
        device_public_key: row.try_get("device_public_key")?,
        workstation_share: row.try_get("workstation_share")?,
        name: row.try_get("name")?,
        words: words.split_whitespace().map(str::to_string).collect(),
        created_at_ms: row.try_get("created_at_ms")?,
        mac: row.try_get("mac")?,
    })
}

pub(crate) fn audit_from_row<R>(row: &R) -> Result<AuditEntry>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Option<String>: Decodes<R::Database>,
    Option<i64>: Decodes<R::Database>,
    Option<Vec<u8>>: Decodes<R::Database>,
{
    let decision: String = row.try_get("decision")?;
    let decision = match decision.as_str() {
        "approved" => Decision::Approved,
        "denied" => Decision::Denied,
        other => return Err(StoreError::Corrupt(format!("audit decision '{other}'"))),
    };
    let rule_set: Option<i64> = row.try_get("rule_set")?;
    let policy_version: Option<i64> = row.try_get("policy_version")?;
    Ok(AuditEntry {
        id: to_u64(row.try_get("id")?)?,
        record: AuditRecord {
            at_ms: row.try_get("at_ms")?,
            instance_id: row.try_get("instance_id")?,
            profile_id: row.try_get("profile_id")?,
            device_id: row.try_get("device_id")?,
            request_type: row.try_get("request_type")?,
            meta: row.try_get("meta")?,
            cryptographic_id: row.try_get("cryptographic_id")?,
            decision,
            rule_set: rule_set.and_then(|r| u32::try_from(r).ok()),
            reason: row.try_get("reason")?,
            policy_version: policy_version.map(to_u64).transpose()?,
            nonce: row.try_get("nonce")?,
            ciphertext_sha256: row.try_get("ciphertext_sha256")?,
            actor: row.try_get("actor")?,
        },
        chain_hash: row.try_get("chain_hash")?,
    })
}

pub(crate) fn checkpoint_from_row<R>(row: &R) -> Result<Checkpoint>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    Ok(Checkpoint {
        seq: to_u64(row.try_get("seq")?)?,
        kind: CheckpointKind::parse(&kind)?,
        last_id: to_u64(row.try_get("last_id")?)?,
        last_hash: row.try_get("last_hash")?,
        at_ms: row.try_get("at_ms")?,
        prev_mac: row.try_get("prev_mac")?,
        mac: row.try_get("mac")?,
    })
}

pub(crate) fn head_from_row<R>(row: &R) -> Result<ChainHead>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
{
    Ok(ChainHead {
        last_id: to_u64(row.try_get("last_id")?)?,
        last_hash: row.try_get("last_hash")?,
        checkpoint_seq: to_u64(row.try_get("checkpoint_seq")?)?,
        checkpoint_mac: row.try_get("checkpoint_mac")?,
        since_checkpoint: to_u64(row.try_get("since_checkpoint")?)?,
        at_ms: row.try_get("at_ms")?,
        mac: row.try_get("mac")?,
    })
}

pub(crate) fn instance_from_row<R>(row: &R) -> Result<InstanceStatus>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
    Option<i64>: Decodes<R::Database>,
{
    Ok(InstanceStatus {
        info: InstanceInfo {
            name: row.try_get("name")?,
            incarnation: row.try_get("incarnation")?,
            hostname: row.try_get("hostname")?,
            endpoint: row.try_get("endpoint")?,
            kss_version: row.try_get("kss_version")?,
            started_at_ms: row.try_get("started_at_ms")?,
        },
        heartbeat_ms: row.try_get("heartbeat_ms")?,
        applied_policy_version: to_u64(row.try_get("applied_policy_version")?)?,
        applied_at_ms: row.try_get("applied_at_ms")?,
        stopped_at_ms: row.try_get("stopped_at_ms")?,
    })
}

pub(crate) fn lease_from_row<R>(row: &R) -> Result<LeaseRow>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decodes<R::Database>,
    i64: Decodes<R::Database>,
{
    Ok(LeaseRow {
        holder: row.try_get("holder")?,
        token: to_u64(row.try_get("token")?)?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}
