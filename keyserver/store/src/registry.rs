//! Cluster membership and leases: which instances serve this keyserver (heartbeats, the
//! policy version each applied), and leases with fencing tokens for what only one
//! instance may do (see [`Lease`]).
//!
//! Times are the database's clock where the database has one (MySQL: every instance of a
//! cluster reads the same clock), the local clock for SQLite (one host).

use async_trait::async_trait;

use crate::{Result, StoreError};

/// How long without a heartbeat before an instance counts as offline.
pub const OFFLINE_AFTER_MS: i64 = 5_000;

/// What an instance says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Stable across restarts where the platform gives one (a StatefulSet pod's name).
    pub name: String,
    /// Random per process start.
    pub incarnation: String,
    pub hostname: String,
    /// Where workstations reach it (its gRPC address).
    pub endpoint: String,
    pub kss_version: String,
    pub started_at_ms: i64,
}

/// One row of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub info: InstanceInfo,
    pub heartbeat_ms: i64,
    /// 0: none applied yet.
    pub applied_policy_version: u64,
    /// When it applied that version.
    pub applied_at_ms: i64,
    /// Set when it stopped cleanly.
    pub stopped_at_ms: Option<i64>,
}

impl InstanceStatus {
    /// Online: heartbeat within [`OFFLINE_AFTER_MS`] of `now_ms` and not stopped.
    pub fn online(&self, now_ms: i64) -> bool {
        self.stopped_at_ms.is_none() && now_ms - self.heartbeat_ms <= OFFLINE_AFTER_MS
    }
}

/// The registry as of one moment of the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceList {
    pub now_ms: i64,
    /// By name.
    pub instances: Vec<InstanceStatus>,
}

/// A lease this process holds.
///
/// A lease is held until it expires unless renewed; every change of holder increments its
/// `token`. A write made under a lease passes the `Lease` it holds, and the store checks,
/// inside the write's own transaction and under a lock the claimer also needs, that the
/// lease still has that holder and token; otherwise the write fails with
/// [`StoreError::Fenced`] and changes nothing. So an instance that lost its lease while cut
/// off (a dropped connection, a pause) cannot act on it when it comes back, whatever it
/// believes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// The fencing token: grows at every change of holder.
    pub token: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseClaim {
    Granted {
        lease: Lease,
        expires_at_ms: i64,
    },
    /// Someone else holds it, for this long yet unless renewed.
    HeldBy {
        holder: String,
        expires_in_ms: i64,
    },
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// Registers an instance (a restarted one takes its name's row over).
    async fn register_instance(
        &self,
        info: &InstanceInfo,
        applied_policy_version: u64,
    ) -> Result<()>;
    /// Records a heartbeat and the policy version applied. `false` when the row now belongs
    /// to another incarnation (another process registered under this name).
    async fn heartbeat(
        &self,
        name: &str,
        incarnation: &str,
        applied_policy_version: u64,
    ) -> Result<bool>;
    /// Marks a clean stop (the instance shows offline at once).
    async fn mark_stopped(&self, name: &str, incarnation: &str) -> Result<()>;
    async fn instances(&self) -> Result<InstanceList>;
    /// Deletes instances offline for at least `offline_for_ms`, under `fence`. A stopped
    /// instance is offline from `stopped_at_ms`; a silent one from the first moment
    /// [`InstanceStatus::online`] says so (`OFFLINE_AFTER_MS` after its last heartbeat).
    async fn forget_instances(&self, fence: &Lease, offline_for_ms: i64) -> Result<u64>;

    /// Claims a lease for `ttl_ms`: granted if free, expired or already this holder's.
    async fn claim_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<LeaseClaim>;
    /// Extends a held lease; `false` if it changed hands (it is lost).
    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64) -> Result<bool>;
    /// Gives a lease up (others may claim it at once); nothing if it is no longer held.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
}

/// A lease row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub holder: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

/// What a claim does to the lease row (decided the same way by every backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimStep {
    /// No row yet: insert one with token 1.
    Insert,
    /// Expired, or ours: write this holder, this token, a new expiry.
    Take { token: u64 },
    /// Someone else's, still valid.
    Refuse(LeaseClaim),
}

pub(crate) fn claim_step(row: Option<&LeaseRow>, holder: &str, now_ms: i64) -> ClaimStep {
    match row {
        None => ClaimStep::Insert,
        Some(r) if r.holder == holder => ClaimStep::Take { token: r.token },
        Some(r) if r.expires_at_ms <= now_ms => ClaimStep::Take { token: r.token + 1 },
        Some(r) => ClaimStep::Refuse(LeaseClaim::HeldBy {
            holder: r.holder.clone(),
            expires_in_ms: r.expires_at_ms - now_ms,
        }),
    }
}

/// `Ok` if `lease` is held as it was granted and has not expired at `now_ms` (row and
/// clock read inside the fenced write's transaction, under a lock a claim must wait for),
/// else `Fenced`. An expired lease fences its holder even before anyone claims it: from
/// its expiry, whoever claims it next may be serving already.
pub(crate) fn still_held(lease: &Lease, row: Option<&LeaseRow>, now_ms: i64) -> Result<()> {
    match row {
        Some(r) if r.holder == lease.holder && r.token == lease.token => {
            if r.expires_at_ms > now_ms {
                Ok(())
            } else {
                Err(StoreError::Fenced(format!(
                    "lease '{}' (token {}) expired {} ms ago unrenewed",
                    lease.name,
                    lease.token,
                    now_ms - r.expires_at_ms
                )))
            }
        }
        Some(r) => Err(StoreError::Fenced(format!(
            "lease '{}' now has token {} (held by {}); this instance holds token {}",
            lease.name, r.token, r.holder, lease.token
        ))),
        None => Err(StoreError::Fenced(format!(
            "lease '{}' no longer exists",
            lease.name
        ))),
    }
}

/// The lease after `step` (not `Refuse`).
pub(crate) fn granted(name: &str, holder: &str, token: u64, expires_at_ms: i64) -> LeaseClaim {
    LeaseClaim::Granted {
        lease: Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
        },
        expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: &str, token: u64, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            holder: holder.into(),
            token,
            expires_at_ms,
        }
    }

    #[test]
    fn claims_follow_expiry_and_bump_the_token_on_takeover() {
        assert_eq!(claim_step(None, "a", 0), ClaimStep::Insert);
        assert_eq!(
            claim_step(Some(&row("a", 3, 100)), "a", 50),
            ClaimStep::Take { token: 3 }
        );
        assert_eq!(
            claim_step(Some(&row("a", 3, 100)), "b", 50),
            ClaimStep::Refuse(LeaseClaim::HeldBy {
                holder: "a".into(),
                expires_in_ms: 50
            })
        );
        assert_eq!(
            claim_step(Some(&row("a", 3, 100)), "b", 100),
            ClaimStep::Take { token: 4 }
        );
    }

    #[test]
    fn a_lease_fences_its_holder_once_taken_over_or_expired() {
        let lease = Lease {
            name: "standalone".into(),
            holder: "a".into(),
            token: 3,
        };
        assert!(still_held(&lease, Some(&row("a", 3, 100)), 99).is_ok());
        // Expired and not yet claimed by anyone: fenced all the same.
        assert!(matches!(
            still_held(&lease, Some(&row("a", 3, 100)), 100),
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            still_held(&lease, Some(&row("b", 4, 200)), 50),
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(
            still_held(&lease, None, 50),
            Err(StoreError::Fenced(_))
        ));
    }

    #[test]
    fn offline_after_a_stale_heartbeat_or_a_clean_stop() {
        let mut s = InstanceStatus {
            info: InstanceInfo {
                name: "a".into(),
                incarnation: "x".into(),
                hostname: "h".into(),
                endpoint: "e".into(),
                kss_version: "v".into(),
                started_at_ms: 0,
            },
            heartbeat_ms: 1_000,
            applied_policy_version: 0,
            applied_at_ms: 0,
            stopped_at_ms: None,
        };
        assert!(s.online(1_000 + OFFLINE_AFTER_MS));
        assert!(!s.online(1_001 + OFFLINE_AFTER_MS));
        s.stopped_at_ms = Some(1_000);
        assert!(!s.online(1_000));
    }
}
