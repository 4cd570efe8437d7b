//! Standard conditions (`metav1.Condition` shape) and the reasons the operator sets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observation of the resource's state, in the shape of Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, e.g. `Available`, `Progressing`, `Degraded`, `IdentityReady`,
    /// `BackupKeyReady`, `PolicyApplied`, `TLSReady` (KeyShardCluster) or `Valid`
    /// (KssPolicy).
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase word for the reason of the last transition (the README lists each one
    /// and what to do about it).
    pub reason: String,
    /// A human-readable explanation. Never holds secret material.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition status values.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Condition types.
pub mod types {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const IDENTITY_READY: &str = "IdentityReady";
    pub const BACKUP_KEY_READY: &str = "BackupKeyReady";
    pub const POLICY_APPLIED: &str = "PolicyApplied";
    pub const VALID: &str = "Valid";
    /// True when the phase is `Ready`: for `kubectl wait --for=condition=Ready`, Flux and
    /// Argo CD health checks.
    pub const READY: &str = "Ready";
    /// Whether the instances reach the keyserver's database.
    pub const DATABASE_REACHABLE: &str = "DatabaseReachable";
    /// False while reconciles fail (the error in its message).
    pub const SYNCED: &str = "Synced";
    /// True while `spec.recovery` is armed (it has not completed).
    pub const RECOVERY_REQUESTED: &str = "RecoveryRequested";
    pub const TLS_READY: &str = "TLSReady";
}

/// Condition reasons (the README's troubleshooting table explains each).
pub mod reasons {
    pub const ALL_INSTANCES_READY: &str = "AllInstancesReady";
    pub const INSTANCES_NOT_READY: &str = "InstancesNotReady";
    pub const NO_INSTANCE_READY: &str = "NoInstanceReady";
    pub const SCALING: &str = "Scaling";
    pub const RECONCILED: &str = "Reconciled";
    pub const PAUSED: &str = "ReconciliationPaused";
    pub const IDENTITY_CREATED: &str = "IdentityCreated";
    pub const IDENTITY_PENDING: &str = "WaitingForFirstInstance";
    pub const IDENTITY_CONFIRMED: &str = "IdentityConfirmed";
    pub const IDENTITY_MISMATCH: &str = "IdentityMismatch";
    pub const IDENTITY_MISSING: &str = "IdentityMissing";
    pub const IDENTITY_FAILED: &str = "IdentityFailed";
    pub const MASTER_KEY_MISMATCH: &str = "MasterKeyMismatch";
    /// An instance refuses for a reason this operator does not know (a keyserver older
    /// or newer than it).
    pub const REFUSING: &str = "Refusing";
    pub const RECOVERING: &str = "Recovering";
    pub const RECOVERY_FAILED: &str = "RecoveryFailed";
    pub const BACKUP_KEY_CREATED: &str = "BackupKeyCreated";
    pub const BACKUP_KEY_PRESENT: &str = "BackupKeyPresent";
    pub const BACKUP_KEY_INVALID: &str = "BackupKeyInvalid";
    pub const WEAK_BACKUP_SETUP: &str = "WeakBackupSetup";
    pub const BACKUP_KEY_OUTDATED: &str = "BackupKeyOutdated";
    pub const NO_POLICY: &str = "NoPolicyReferenced";
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    pub const POLICY_INVALID: &str = "PolicyInvalid";
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The StatefulSet's rolling update waits for a pod that does not turn Ready.
    pub const ROLLOUT_STALLED: &str = "RolloutStalled";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const POLICY_REJECTED: &str = "PolicyRejected";
    pub const INSTANCES_UNREACHABLE: &str = "InstancesUnreachable";
    pub const DATABASE_SECRET_MISSING: &str = "DatabaseSecretMissing";
    pub const TLS_SECRET_INVALID: &str = "TlsSecretInvalid";
    pub const VALID_POLICY: &str = "PolicyValid";
    pub const INVALID_POLICY: &str = "PolicyInvalid";
    pub const UPDATING: &str = "Updating";
    pub const DATABASE_REACHABLE: &str = "DatabaseReachable";
    pub const DATABASE_UNREACHABLE: &str = "DatabaseUnreachable";
    pub const NO_INSTANCE_ANSWERED: &str = "NoInstanceAnswered";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const RECOVERY_ARMED: &str = "RecoveryArmed";
    pub const RECOVERY_COMPLETED: &str = "RecoveryCompleted";
    /// `TLSReady` reasons.
    pub const CERTIFICATES_VALID: &str = "CertificatesValid";
    pub const CERTIFICATE_RENEWING: &str = "CertificateRenewing";
    pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";
    pub const CERTIFICATE_EXPIRED: &str = "CertificateExpired";
    /// The leaves' move to a new CA waits for pods that do not trust it yet.
    pub const CA_ROTATION_STALLED: &str = "CaRotationStalled";

    /// The `IdentityReady` reason of an instance's typed refusal: the words the README's
    /// troubleshooting table explains. A bootstrap identity the master key cannot open is
    /// a `MasterKeyMismatch` too (the same fix: the original master-key Secret).
    pub fn of_refusal(reason: kss_proto::v1::RefusalReason) -> &'static str {
        use kss_proto::v1::RefusalReason as R;
        match reason {
            R::IdentityMismatch => IDENTITY_MISMATCH,
            R::IdentityMissing => IDENTITY_MISSING,
            R::MasterKeyMismatch | R::BootstrapKeyMismatch => MASTER_KEY_MISMATCH,
            R::Unspecified => REFUSING,
        }
    }
}

/// Sets `new` in `conditions`: a condition whose status did not change keeps its
/// `lastTransitionTime`; reason, message and generation are always refreshed.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.r#type == new.r#type) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// [`set`] on a list computed afresh: the condition of the same type in `previous` (if
/// the fresh list lacks it) keeps its `lastTransitionTime`.
pub fn set_keeping_previous(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    new: Condition,
) {
    if find(conditions, &new.r#type).is_none()
        && let Some(old) = find(previous, &new.r#type)
    {
        conditions.push(old.clone());
    }
    set(conditions, new);
}

/// The condition of `type_`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == type_)
}

/// Whether the condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Builds a condition stamped `now` for `generation`.
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    Condition {
        r#type: type_.to_string(),
        status: if status { TRUE } else { FALSE }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        last_transition_time: now.to_string(),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kss_proto::v1::RefusalReason;

    #[test]
    fn every_refusal_reason_has_the_documented_word() {
        let expected = [
            (RefusalReason::Unspecified, "Refusing"),
            (RefusalReason::IdentityMismatch, "IdentityMismatch"),
            (RefusalReason::IdentityMissing, "IdentityMissing"),
            (RefusalReason::MasterKeyMismatch, "MasterKeyMismatch"),
            (RefusalReason::BootstrapKeyMismatch, "MasterKeyMismatch"),
        ];
        // Every value the proto defines is in the table (a new one fails here).
        let defined: Vec<RefusalReason> = (0..64)
            .filter_map(|n| RefusalReason::try_from(n).ok())
            .collect();
        assert_eq!(defined, expected.map(|(r, _)| r).to_vec());
        for (reason, word) in expected {
            assert_eq!(reasons::of_refusal(reason), word, "{reason:?}");
        }
        // The words the README's troubleshooting table explains.
        let readme = include_str!("../../../README.md");
        for word in [
            "IdentityMismatch",
            "IdentityMissing",
            "MasterKeyMismatch",
            "Refusing",
        ] {
            assert!(
                readme.contains(&format!("`IdentityReady` `{word}`")),
                "README explains {word}"
            );
        }
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let mut list = vec![new("Available", true, "A", "", Some(1), "t1")];
        set(&mut list, new("Available", true, "B", "m", Some(2), "t2"));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, "t1");
        assert_eq!(list[0].reason, "B");
        assert_eq!(list[0].observed_generation, Some(2));
        set(&mut list, new("Available", false, "C", "", Some(3), "t3"));
        assert_eq!(list[0].last_transition_time, "t3");
        assert!(!is_true(&list, "Available"));
    }
}
