//! Where a cluster's keyserver identity stands, and the one step that moves it on: a
//! pure function over what the operator observes (the spec's request, the status, the
//! Secrets, each instance's report). The reconcile observes, asks [`decide`], performs the
//! step, and observes again until no step is left; the last decision's [`Standing`] is
//! what status says.
//!
//! The rules, in the order [`decide`] applies them:
//! - **The keyserver ID** is the pinned one (`spec.bootstrap.keyserverId`), else the one
//!   status records, else (mode `New` only) the one of this cluster's own backup-key
//!   Secret or bootstrap identity. Once known it is pinned, and a pinned cluster never
//!   creates a new identity: lost pieces are recovered, never replaced.
//! - **A fresh identity** is created only in mode `New` with nothing known and nothing
//!   retained: master key, then bootstrap identity, then the backup key derived from it.
//! - **A backup-key Secret** must hold this keyserver's backup key, and must not be
//!   another cluster's (its `kss.dev/cluster` annotation), unless mode `Adopt` names
//!   that keyserver: a second cluster naming the first one's Secret is refused and never
//!   writes to it.
//! - **A lost master key** (ID known): a new one is created; instances then refuse
//!   (`MasterKeyMismatch` on an intact database, `IdentityMissing` on an empty one) until
//!   a recovery request re-seals the identity with it.
//! - **A recovery request** runs once: only while instances refuse for want of an
//!   identity the master key opens, only if its id has not completed, and only with its
//!   approvals Secret present. It completes when an instance serves the keyserver: the
//!   completion is recorded with the backup key (in status only when the backup key is
//!   another cluster's, adopted) and the approvals Secret is deleted.
//! - **A confirmed identity** (an instance serves it): the bootstrap Secret is deleted; a
//!   lost backup-key Secret is re-issued by that instance for the current holders; a
//!   change of holders or threshold issues a new backup key (never during a recovery).

use std::collections::BTreeMap;

use kss_proto::v1::RefusalReason;

use crate::crd::cluster::BootstrapMode;
use crate::crd::condition::reasons;
use crate::status::IdentityState;

/// What the operator observed, read for one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub mode: BootstrapMode,
    /// `spec.bootstrap.keyserverId`.
    pub pinned: Option<String>,
    /// `status.keyserverId` (may be lost or stale: the pin wins).
    pub recorded: Option<String>,
    /// Whether the master-key Secret exists.
    pub master_key: bool,
    pub bootstrap: Option<BootstrapSeen>,
    pub backup: BackupSeen,
    /// `spec.recovery`.
    pub recovery: Option<RecoveryRequest>,
    pub instances: Instances,
}

/// The bootstrap Secret (the root secret sealed with the master key, for an empty
/// database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSeen {
    /// `None`: not a bootstrap identity.
    pub keyserver_id: Option<String>,
    /// Whether the master key opens it.
    pub opens: bool,
    /// The recovery request that made it.
    pub recovery: Option<String>,
}

/// The backup-key Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSeen {
    Missing,
    /// Not a backup key (the message says why).
    Unreadable(String),
    Present {
        secret: String,
        keyserver_id: String,
        /// Whose it is, by its `kss.dev/cluster` annotation.
        owner: Owner,
        /// Whether its holders and threshold are those of `spec.backup`.
        holders_current: bool,
        /// Recoveries completed with it: id → when (RFC 3339).
        completed: BTreeMap<String, String>,
    },
}

/// Whose a retained Secret is, by its `kss.dev/cluster` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No annotation (made by an older operator, or by hand).
    Unmarked,
    /// This cluster's (same name, same namespace).
    This,
    /// Another cluster's, by name.
    Other(String),
}

/// A `spec.recovery` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    pub id: String,
    pub approvals_secret: String,
    pub approvals_present: bool,
    /// When status last recorded it completed (the backup key's record comes first).
    pub completed_in_status: Option<String>,
}

/// What the instances said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instances {
    /// Some instance serves this keyserver (the pinned or known ID).
    pub serving_ours: bool,
    /// An instance serving another keyserver: (pod, its ID).
    pub serving_other: Option<(String, String)>,
    /// The first refusal: (reason, the instance's message).
    pub refusal: Option<(RefusalReason, String)>,
}

/// The one step to take next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateMasterKey,
    /// A fresh keyserver identity, sealed with the master key, in the bootstrap Secret.
    CreateIdentity,
    /// The backup key, derived from the bootstrap identity, for `spec.backup`'s holders.
    DeriveBackup,
    /// Writes `spec.bootstrap.keyserverId`.
    Pin(String),
    /// Writes this cluster's name on its backup-key Secret.
    ClaimBackup,
    /// The bootstrap Secret is stale (sealed with a master key that is gone): deleted.
    DeleteStaleBootstrap,
    /// Recovery request `id`: the root secret from the backup key and the approvals,
    /// sealed with the master key into the bootstrap Secret.
    Recover(String),
    /// Recovery `id` is served: recorded with the backup key, approvals Secret deleted.
    CompleteRecovery(String),
    /// The identity is in the database: the bootstrap Secret is deleted.
    DeleteBootstrap,
    /// A serving instance issues a new backup key for `spec.backup`'s holders.
    IssueBackup(IssueReason),
}

/// Why a backup key is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    /// The backup-key Secret is gone; the database is intact.
    Lost,
    /// `spec.backup`'s holders or threshold changed.
    HoldersChanged,
}

/// The keyserver ID (once known) and where the identity stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub keyserver_id: Option<String>,
    pub identity: IdentityState,
}

/// The next step, if any, and where things stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub step: Option<Step>,
    pub standing: Standing,
}

fn failed(id: Option<&str>, reason: &str, message: String) -> Decision {
    Decision {
        step: None,
        standing: Standing {
            keyserver_id: id.map(str::to_string),
            identity: IdentityState::Failed {
                reason: reason.to_string(),
                message,
            },
        },
    }
}

fn step(id: Option<&str>, step: Step) -> Decision {
    Decision {
        step: Some(step),
        standing: Standing {
            keyserver_id: id.map(str::to_string),
            identity: IdentityState::Pending,
        },
    }
}

fn stand(id: &str, identity: IdentityState) -> Decision {
    Decision {
        step: None,
        standing: Standing {
            keyserver_id: Some(id.to_string()),
            identity,
        },
    }
}

fn refused(id: &str, reason: &str, message: String, recovering: bool) -> Decision {
    stand(
        id,
        IdentityState::Refused {
            reason: reason.to_string(),
            message,
            recovering,
        },
    )
}

/// The next step for what was observed.
pub fn decide(o: &Observation) -> Decision {
    let known = o.pinned.as_deref().or(o.recorded.as_deref());
    let adopting = |id: &str| o.mode == BootstrapMode::Adopt && o.pinned.as_deref() == Some(id);

    // The backup-key Secret: this keyserver's, and not another cluster's.
    let mut backup_id = None;
    match &o.backup {
        BackupSeen::Missing => {}
        BackupSeen::Unreadable(message) => {
            return failed(known, reasons::BACKUP_KEY_INVALID, message.clone());
        }
        BackupSeen::Present {
            secret,
            keyserver_id,
            owner,
            ..
        } => {
            if let Some(id) = known
                && id != keyserver_id
            {
                return failed(
                    known,
                    reasons::BACKUP_KEY_INVALID,
                    format!(
                        "backup-key Secret {secret} belongs to keyserver {keyserver_id}, not to \
                         this cluster's keyserver {id}; nothing was changed"
                    ),
                );
            }
            if let Owner::Other(owner) = owner
                && !adopting(keyserver_id)
            {
                return failed(
                    known,
                    reasons::BACKUP_KEY_INVALID,
                    format!(
                        "backup-key Secret {secret} is the backup key of cluster {owner} \
                         (keyserver {keyserver_id}); nothing was changed: name another Secret in \
                         spec.backup.secretName, or adopt that keyserver with \
                         spec.bootstrap.mode Adopt and keyserverId {keyserver_id}"
                    ),
                );
            }
            backup_id = Some(keyserver_id.as_str());
        }
    }
    let bootstrap_id = o.bootstrap.as_ref().and_then(|b| b.keyserver_id.as_deref());
    if let Some(b) = &o.bootstrap
        && b.keyserver_id.is_none()
    {
        return failed(
            known,
            reasons::IDENTITY_FAILED,
            "the bootstrap Secret holds no bootstrap identity".to_string(),
        );
    }
    if let (Some(id), Some(b)) = (known.or(backup_id), bootstrap_id)
        && id != b
    {
        return failed(
            known,
            reasons::IDENTITY_FAILED,
            format!(
                "the bootstrap Secret holds keyserver {b}, not this cluster's keyserver {id}; \
                 nothing was changed: delete that Secret"
            ),
        );
    }

    // The keyserver ID.
    let id = match known.or(backup_id).or(bootstrap_id) {
        Some(id) => id,
        None if o.mode != BootstrapMode::New => {
            return failed(
                None,
                reasons::IDENTITY_FAILED,
                format!(
                    "spec.bootstrap.mode {:?} needs spec.bootstrap.keyserverId: the keyserver \
                     to serve",
                    o.mode
                ),
            );
        }
        // Nothing known, but the pods serve a keyserver: not replaced by a new one.
        None if o.instances.serving_other.is_some() => {
            let (pod, other) = o.instances.serving_other.clone().unwrap_or_default();
            return failed(
                None,
                reasons::IDENTITY_MISMATCH,
                format!(
                    "instance {pod} serves keyserver {other}, but this cluster records no \
                     keyserver and holds none of its Secrets: to keep serving it, set \
                     spec.bootstrap.mode Adopt with keyserverId {other} and restore its \
                     backup-key and master-key Secrets; nothing was created"
                ),
            );
        }
        // Nothing known, nothing retained: a new keyserver.
        None if !o.master_key => return step(None, Step::CreateMasterKey),
        None => return step(None, Step::CreateIdentity),
    };
    // Known, so pinned: from now on no new identity, ever.
    if o.pinned.is_none() {
        return step(Some(id), Step::Pin(id.to_string()));
    }
    if !o.master_key {
        return step(Some(id), Step::CreateMasterKey);
    }
    if let Some(b) = &o.bootstrap
        && !b.opens
    {
        return step(Some(id), Step::DeleteStaleBootstrap);
    }
    if o.backup == BackupSeen::Missing && o.bootstrap.is_some() {
        return step(Some(id), Step::DeriveBackup);
    }
    if let BackupSeen::Present {
        owner: Owner::Unmarked,
        ..
    } = &o.backup
    {
        return step(Some(id), Step::ClaimBackup);
    }

    let recovery_done = |r: &RecoveryRequest| -> Option<String> {
        match &o.backup {
            BackupSeen::Present { completed, .. } => completed.get(&r.id).cloned(),
            _ => None,
        }
        .or_else(|| r.completed_in_status.clone())
    };

    if o.instances.serving_ours {
        if let Some(r) = o.bootstrap.as_ref().and_then(|b| b.recovery.as_ref()) {
            // Recorded with the backup key; never on another cluster's Secret (adopted):
            // then status alone records it.
            let recorded = match &o.backup {
                BackupSeen::Present {
                    owner: Owner::Other(_),
                    ..
                } => true,
                BackupSeen::Present { completed, .. } => completed.contains_key(r),
                _ => false,
            };
            let approvals_left = o
                .recovery
                .as_ref()
                .is_some_and(|q| &q.id == r && q.approvals_present);
            if !recorded || approvals_left {
                return step(Some(id), Step::CompleteRecovery(r.clone()));
            }
        }
        if o.bootstrap.is_some() && o.backup != BackupSeen::Missing {
            return step(Some(id), Step::DeleteBootstrap);
        }
        if o.backup == BackupSeen::Missing {
            return step(Some(id), Step::IssueBackup(IssueReason::Lost));
        }
        // Never rewritten when it is another cluster's (adopted) Secret.
        if let BackupSeen::Present {
            holders_current: false,
            owner: Owner::This | Owner::Unmarked,
            ..
        } = &o.backup
        {
            return step(Some(id), Step::IssueBackup(IssueReason::HoldersChanged));
        }
        return stand(id, IdentityState::Confirmed);
    }
    if let Some((pod, other)) = &o.instances.serving_other {
        return refused(
            id,
            reasons::IDENTITY_MISMATCH,
            format!("instance {pod} serves keyserver {other}, not this cluster's keyserver {id}"),
            false,
        );
    }
    let Some((reason, message)) = &o.instances.refusal else {
        return stand(id, IdentityState::Pending);
    };
    let needs_recovery = matches!(
        reason,
        RefusalReason::IdentityMissing | RefusalReason::MasterKeyMismatch
    );
    if !needs_recovery {
        return refused(id, reasons::of_refusal(*reason), message.clone(), false);
    }
    if let Some(b) = &o.bootstrap {
        // Handed to the instances: they store (or re-seal) it at their next check.
        return match &b.recovery {
            Some(r) => refused(
                id,
                reasons::of_refusal(*reason),
                format!(
                    "recovery {r}: the recovered identity is handed to the instances, which \
                     store it at their next check"
                ),
                true,
            ),
            None => refused(id, reasons::of_refusal(*reason), message.clone(), false),
        };
    }
    let hint = if *reason == RefusalReason::MasterKeyMismatch {
        "the master key cannot open the identity in the database: restore the master-key \
         Secret, or give the holders' approvals in spec.recovery to re-seal the identity with \
         the current master key"
    } else {
        "the database holds no keyserver identity: restore it from the backup key by giving \
         the holders' approvals in spec.recovery (README: backup and recovery)"
    };
    let Some(request) = &o.recovery else {
        return refused(id, reasons::of_refusal(*reason), hint.to_string(), false);
    };
    if let Some(at) = recovery_done(request) {
        return refused(
            id,
            reasons::RECOVERY_FAILED,
            format!(
                "recovery {} completed at {at}; a request runs once, so it does not restore \
                 this database: give spec.recovery a new id and fresh approvals",
                request.id
            ),
            false,
        );
    }
    if o.backup == BackupSeen::Missing {
        return refused(
            id,
            reasons::RECOVERY_FAILED,
            "no backup-key Secret to recover from".to_string(),
            false,
        );
    }
    if !request.approvals_present {
        return refused(
            id,
            reasons::RECOVERY_FAILED,
            format!(
                "recovery {}: approvals Secret {} not found",
                request.id, request.approvals_secret
            ),
            false,
        );
    }
    step(Some(id), Step::Recover(request.id.clone()))
}

#[cfg(test)]
mod tests;
