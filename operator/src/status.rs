//! A `KeyShardCluster`'s conditions and phase, computed from what a reconcile observed
//! (pure: no I/O, so each case is unit-tested).

use std::collections::BTreeMap;
use std::time::Duration;

use kss_proto::v1::RefusalReason;

use crate::admin::Probe;
use crate::crd::cluster::{InstanceStatus, Phase};
use crate::crd::condition::{self, Condition, reasons, types};

/// Whether the instances reach the database, as they answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseState {
    /// No instance serving this keyserver answered.
    Unknown,
    Reachable,
    /// Every instance that answered cannot reach it (their names).
    Unreachable(Vec<String>),
}

impl DatabaseState {
    /// From the serving instances' answers: reachable if any of them reaches it.
    pub fn of(serving: &[(&str, bool)]) -> DatabaseState {
        if serving.is_empty() {
            DatabaseState::Unknown
        } else if serving.iter().any(|(_, reachable)| *reachable) {
            DatabaseState::Reachable
        } else {
            DatabaseState::Unreachable(serving.iter().map(|(n, _)| n.to_string()).collect())
        }
    }
}

/// Where the keyserver identity stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityState {
    /// An instance serves this cluster's keyserver ID.
    Confirmed,
    /// Created (or adopted); no instance has confirmed it yet.
    Pending,
    /// An instance refuses: the database holds another keyserver, no identity, or one the
    /// master key cannot open. `recovering`: the operator supplied a recovered identity.
    Refused {
        reason: String,
        message: String,
        recovering: bool,
    },
    /// The operator could not create, adopt or recover it.
    Failed { reason: String, message: String },
}

/// Where the policy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    /// No `spec.policyRef`.
    None,
    /// Not known yet (no instance serving).
    Unknown,
    NotFound {
        name: String,
    },
    /// The KssPolicy does not validate; the version in force stays.
    Invalid {
        name: String,
        message: String,
    },
    /// The keyserver rejected it.
    Rejected {
        name: String,
        message: String,
    },
    Rollout {
        name: String,
        version: i64,
        up_to_date: i32,
        online: i32,
    },
}

/// What one reconcile observed.
#[derive(Debug, Clone)]
pub struct Observed {
    pub generation: Option<i64>,
    pub paused: bool,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub identity: IdentityState,
    /// `Err((reason, message))` when the backup key is unusable.
    pub backup: Result<BackupNote, (String, String)>,
    pub policy: PolicyState,
    /// Something that keeps pods from starting (e.g. a missing Secret): (reason, message).
    pub blocker: Option<(String, String)>,
    /// The StatefulSet is rolling out a new revision or scaling.
    pub updating: bool,
    /// The rolling update stopped at a pod that does not turn Ready (message).
    pub stalled: Option<String>,
    pub database: DatabaseState,
    /// `spec.recovery`, if set.
    pub recovery_request: Option<RequestedRecovery>,
}

/// A `spec.recovery` request and whether it has completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedRecovery {
    pub id: String,
    pub approvals_secret: String,
    /// When it completed (RFC 3339; empty if not recorded); `None`: not yet.
    pub completed_at: Option<String>,
}

/// How the backup key came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupNote {
    Created,
    Present,
    /// Weaker than 3 of 5 (`ignoreSecurityChecks`).
    Weak,
    /// For other holders or another threshold than `spec.backup`'s: a new one is issued
    /// once an instance serves the keyserver.
    HoldersChanged,
}

/// The conditions (merged into `previous`, keeping transition times) and the phase.
pub fn compute(observed: &Observed, previous: &[Condition], now: &str) -> (Vec<Condition>, Phase) {
    let generation = observed.generation;
    let mut conditions = previous.to_vec();
    // Whether a recovery request is armed: while it is, an empty database is restored
    // from the backup key with the approvals it names.
    match &observed.recovery_request {
        None => conditions.retain(|c| c.r#type != types::RECOVERY_REQUESTED),
        Some(r) => {
            let (armed, reason, message) = match &r.completed_at {
                None => (
                    true,
                    reasons::RECOVERY_ARMED,
                    format!(
                        "spec.recovery {} is set: a database without an identity is restored \
                         from the backup key with the approvals in Secret {} (once)",
                        r.id, r.approvals_secret
                    ),
                ),
                Some(at) => (
                    false,
                    reasons::RECOVERY_COMPLETED,
                    format!(
                        "recovery {} completed at {at} and does not run again; remove \
                         spec.recovery",
                        r.id
                    ),
                ),
            };
            condition::set(
                &mut conditions,
                condition::new(
                    types::RECOVERY_REQUESTED,
                    armed,
                    reason,
                    message,
                    generation,
                    now,
                ),
            );
        }
    }
    if observed.paused {
        condition::set(
            &mut conditions,
            condition::new(
                types::PROGRESSING,
                false,
                reasons::PAUSED,
                "spec.paused is set: the operator changes nothing until it is cleared",
                generation,
                now,
            ),
        );
        return (conditions, Phase::Paused);
    }
    match &observed.database {
        DatabaseState::Unknown => condition::set(
            &mut conditions,
            Condition {
                status: condition::UNKNOWN.to_string(),
                ..condition::new(
                    types::DATABASE_REACHABLE,
                    false,
                    reasons::NO_INSTANCE_ANSWERED,
                    "no instance serving this keyserver answered",
                    generation,
                    now,
                )
            },
        ),
        DatabaseState::Reachable => condition::set(
            &mut conditions,
            condition::new(
                types::DATABASE_REACHABLE,
                true,
                reasons::DATABASE_REACHABLE,
                "the instances reach the database",
                generation,
                now,
            ),
        ),
        DatabaseState::Unreachable(names) => condition::set(
            &mut conditions,
            condition::new(
                types::DATABASE_REACHABLE,
                false,
                reasons::DATABASE_UNREACHABLE,
                format!(
                    "{} cannot reach the database: requests are denied (unavailable) until it answers",
                    names.join(", ")
                ),
                generation,
                now,
            ),
        ),
    }
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        condition::set(
            &mut conditions,
            condition::new(type_, status, reason, message, generation, now),
        );
    };

    // Identity.
    let identity_reason = match &observed.identity {
        IdentityState::Refused { reason, .. } | IdentityState::Failed { reason, .. } => {
            Some(reason.clone())
        }
        _ => None,
    };
    let (identity_ok, identity_failed) = match &observed.identity {
        IdentityState::Confirmed => {
            set(
                types::IDENTITY_READY,
                true,
                reasons::IDENTITY_CONFIRMED,
                "an instance serves this keyserver ID".into(),
            );
            (true, false)
        }
        IdentityState::Pending => {
            set(
                types::IDENTITY_READY,
                false,
                reasons::IDENTITY_PENDING,
                "waiting for the first instance to store or confirm the keyserver identity".into(),
            );
            (false, false)
        }
        IdentityState::Refused {
            reason,
            message,
            recovering,
        } => {
            let reason = if *recovering {
                reasons::RECOVERING
            } else {
                reason.as_str()
            };
            set(types::IDENTITY_READY, false, reason, message.clone());
            (false, !*recovering)
        }
        IdentityState::Failed { reason, message } => {
            set(types::IDENTITY_READY, false, reason, message.clone());
            (false, true)
        }
    };

    // Backup key.
    let backup_failed = match &observed.backup {
        Ok(note) => {
            let (ready, reason, message) = match note {
                BackupNote::Created => (
                    true,
                    reasons::BACKUP_KEY_CREATED,
                    "backup key written; copy it off the cluster (README: backup and recovery)",
                ),
                BackupNote::Present => (true, reasons::BACKUP_KEY_PRESENT, "backup key present"),
                BackupNote::Weak => (
                    true,
                    reasons::WEAK_BACKUP_SETUP,
                    "backup key present, but weaker than 3 of 5 holders (ignoreSecurityChecks)",
                ),
                // Not what the spec asks yet, but not a failure: the old key still works.
                BackupNote::HoldersChanged => (
                    false,
                    reasons::BACKUP_KEY_OUTDATED,
                    "spec.backup names other holders or another threshold than the backup \
                     key's: a new backup key is issued once an instance serves the keyserver",
                ),
            };
            set(types::BACKUP_KEY_READY, ready, reason, message.into());
            false
        }
        Err((reason, message)) => {
            set(types::BACKUP_KEY_READY, false, reason, message.clone());
            true
        }
    };

    // Policy.
    let rolling_out = match &observed.policy {
        PolicyState::None => {
            set(
                types::POLICY_APPLIED,
                false,
                reasons::NO_POLICY,
                "no spec.policyRef: every request is denied".into(),
            );
            false
        }
        PolicyState::Unknown => false,
        PolicyState::NotFound { name } => {
            set(
                types::POLICY_APPLIED,
                false,
                reasons::POLICY_NOT_FOUND,
                format!("KssPolicy {name} not found; the policy in force stays"),
            );
            false
        }
        PolicyState::Invalid { name, message } => {
            set(
                types::POLICY_APPLIED,
                false,
                reasons::POLICY_INVALID,
                format!("KssPolicy {name} is invalid ({message}); the policy in force stays"),
            );
            false
        }
        PolicyState::Rejected { name, message } => {
            set(
                types::POLICY_APPLIED,
                false,
                reasons::POLICY_REJECTED,
                format!(
                    "the keyserver rejected KssPolicy {name}: {message}; the policy in force stays"
                ),
            );
            false
        }
        PolicyState::Rollout {
            name,
            version,
            up_to_date,
            online,
        } => {
            let done = *online > 0 && up_to_date == online;
            set(
                types::POLICY_APPLIED,
                done,
                if done {
                    reasons::ROLLED_OUT
                } else {
                    reasons::ROLLING_OUT
                },
                format!(
                    "KssPolicy {name}: version {version} applied by {up_to_date}/{online} online instances"
                ),
            );
            !done
        }
    };

    let desired = observed.desired_replicas;
    let ready = observed.ready_replicas;
    let failed = identity_failed || backup_failed || observed.blocker.is_some();
    let available = identity_ok && ready > 0;
    set(
        types::AVAILABLE,
        available,
        if available {
            reasons::ALL_INSTANCES_READY
        } else {
            reasons::NO_INSTANCE_READY
        },
        format!("{ready}/{desired} instances ready"),
    );
    if available && ready < desired {
        set(
            types::AVAILABLE,
            true,
            reasons::INSTANCES_NOT_READY,
            format!("{ready}/{desired} instances ready"),
        );
    }
    let progressing = !failed && (ready != desired || rolling_out || !identity_ok);
    let progressing = progressing && observed.stalled.is_none();
    let (p_reason, p_message) = if let Some((reason, message)) = &observed.blocker {
        (reason.as_str(), message.clone())
    } else if let Some(message) = &observed.stalled {
        (reasons::ROLLOUT_STALLED, message.clone())
    } else if !identity_ok {
        (reasons::IDENTITY_PENDING, "waiting for the identity".into())
    } else if ready != desired {
        (
            reasons::SCALING,
            format!("{ready}/{desired} instances ready"),
        )
    } else if rolling_out {
        (reasons::ROLLING_OUT, "policy rollout in progress".into())
    } else {
        (reasons::RECONCILED, "every object matches the spec".into())
    };
    set(types::PROGRESSING, progressing, p_reason, p_message);

    let database_down = matches!(observed.database, DatabaseState::Unreachable(_));
    let phase = if failed {
        Phase::Failed
    } else if !identity_ok {
        Phase::Initializing
    } else if database_down || observed.stalled.is_some() {
        Phase::Degraded
    } else if ready == desired && !rolling_out {
        Phase::Ready
    } else if observed.updating || rolling_out {
        Phase::Updating
    } else if ready > 0 {
        Phase::Degraded
    } else {
        Phase::Pending
    };
    let degraded = matches!(phase, Phase::Failed | Phase::Degraded);
    let d_reason = if let Some((reason, _)) = &observed.blocker {
        reason.clone()
    } else if let Some(reason) = identity_reason.filter(|_| identity_failed) {
        reason
    } else if backup_failed {
        reasons::BACKUP_KEY_INVALID.to_string()
    } else if database_down {
        reasons::DATABASE_UNREACHABLE.to_string()
    } else if observed.stalled.is_some() {
        reasons::ROLLOUT_STALLED.to_string()
    } else if degraded {
        reasons::INSTANCES_NOT_READY.to_string()
    } else {
        reasons::RECONCILED.to_string()
    };
    let d_message = match (&observed.blocker, &observed.stalled) {
        (Some((_, m)), _) => m.clone(),
        (None, Some(m)) if !database_down && !identity_failed && !backup_failed => m.clone(),
        _ if degraded => format!("phase {phase:?}: see the other conditions"),
        _ => "healthy".into(),
    };
    set(types::DEGRADED, degraded, &d_reason, d_message);

    let ready_message = match phase {
        Phase::Ready => format!("{ready}/{desired} instances ready, the policy rolled out"),
        _ => format!("phase {phase:?}: see the other conditions"),
    };
    set(
        types::READY,
        phase == Phase::Ready,
        &format!("{phase:?}"),
        ready_message,
    );
    set(
        types::SYNCED,
        true,
        reasons::RECONCILED,
        "the last reconcile succeeded".into(),
    );
    (conditions, phase)
}

/// The conditions after a reconcile that failed with `error`: `Synced` false, the rest as
/// they were.
pub fn reconcile_failed(
    previous: &[Condition],
    error: &str,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut conditions = previous.to_vec();
    condition::set(
        &mut conditions,
        condition::new(
            types::SYNCED,
            false,
            reasons::RECONCILE_ERROR,
            error.to_string(),
            generation,
            now,
        ),
    );
    conditions
}

/// `status.instances`: the registry's entries, each with what its pod answered (the
/// keyserver it serves, or why it refuses, its version), and the pods that answered but
/// are not registered (a refusing pod never registers).
pub fn instances(
    registry: Vec<InstanceStatus>,
    probes: &[(String, Probe)],
    our_id: Option<&str>,
) -> Vec<InstanceStatus> {
    let mut by_name: BTreeMap<String, InstanceStatus> =
        registry.into_iter().map(|i| (i.name.clone(), i)).collect();
    for (pod, probe) in probes {
        let entry = by_name
            .entry(pod.clone())
            .or_insert_with(|| InstanceStatus {
                name: pod.clone(),
                online: false,
                applied_policy_version: 0,
                endpoint: None,
                keyserver_id: None,
                refusal_reason: None,
                kss_version: None,
                database_reachable: None,
            });
        match probe {
            Probe::Serving(s) => {
                entry.keyserver_id = Some(s.keyserver_id.clone());
                entry.refusal_reason = (Some(s.keyserver_id.as_str()) != our_id)
                    .then(|| reasons::of_refusal(RefusalReason::IdentityMismatch).to_string());
                entry.kss_version = (!s.kss_version.is_empty()).then(|| s.kss_version.clone());
                entry.database_reachable = Some(s.database_reachable);
            }
            Probe::Refusing {
                reason,
                kss_version,
                ..
            } => {
                entry.keyserver_id = None;
                entry.refusal_reason = Some(reasons::of_refusal(*reason).to_string());
                entry.kss_version = (!kss_version.is_empty()).then(|| kss_version.clone());
                entry.database_reachable = None;
            }
            Probe::Unreachable(_) => {}
        }
    }
    by_name.into_values().collect()
}

/// When to look at a cluster again if nothing it watches changes first (a spec change,
/// its StatefulSet's status, its Secrets): a Ready cluster every minute; one that is
/// getting somewhere every 3 s; one whose conditions have not moved for a minute (stuck:
/// waiting for an instance that does not answer, a missing Secret, a stalled rollout)
/// every 15 s, so that a hundred stuck clusters do not keep the API server busy.
pub fn requeue_after(phase: Phase, conditions: &[Condition], now: jiff::Timestamp) -> Duration {
    if phase == Phase::Ready {
        return Duration::from_secs(60);
    }
    let last_change = conditions
        .iter()
        .filter_map(|c| c.last_transition_time.parse::<jiff::Timestamp>().ok())
        .max();
    let unchanged = last_change.map_or(Duration::ZERO, |t| {
        Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO)
    });
    if unchanged >= Duration::from_secs(60) {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        Observed {
            generation: Some(2),
            paused: false,
            desired_replicas: 3,
            ready_replicas: 3,
            identity: IdentityState::Confirmed,
            backup: Ok(BackupNote::Present),
            policy: PolicyState::Rollout {
                name: "p".into(),
                version: 4,
                up_to_date: 3,
                online: 3,
            },
            blocker: None,
            stalled: None,
            updating: false,
            database: DatabaseState::Reachable,
            recovery_request: None,
        }
    }

    fn reason(conds: &[Condition], t: &str) -> (String, String) {
        let c = condition::find(conds, t).expect("condition present");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn all_ready_and_rolled_out_is_ready() {
        let (conds, phase) = compute(&observed(), &[], "now");
        assert_eq!(phase, Phase::Ready);
        assert_eq!(reason(&conds, "Ready"), ("True".into(), "Ready".into()));
        assert_eq!(
            reason(&conds, "DatabaseReachable"),
            ("True".into(), "DatabaseReachable".into())
        );
        assert_eq!(
            reason(&conds, "Synced"),
            ("True".into(), "Reconciled".into())
        );
        assert_eq!(
            reason(&conds, "Available"),
            ("True".into(), "AllInstancesReady".into())
        );
        assert_eq!(reason(&conds, "Progressing").0, "False");
        assert_eq!(reason(&conds, "Degraded").0, "False");
        assert_eq!(
            reason(&conds, "PolicyApplied"),
            ("True".into(), "RolledOut".into())
        );
        assert!(conds.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn a_pod_rollout_is_updating_and_an_unready_pod_outside_one_is_degraded() {
        let mut o = observed();
        o.ready_replicas = 2;
        o.updating = true;
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Updating);
        assert_eq!(reason(&conds, "Degraded").0, "False");
        assert_eq!(reason(&conds, "Progressing").0, "True");
        assert_eq!(reason(&conds, "Available").0, "True");
        assert_eq!(reason(&conds, "Ready").0, "False");

        o.updating = false;
        let (conds, phase) = compute(&o, &conds, "later");
        assert_eq!(phase, Phase::Degraded);
        assert_eq!(
            reason(&conds, "Degraded"),
            ("True".into(), "InstancesNotReady".into())
        );
    }

    #[test]
    fn a_database_outage_is_degraded_and_named_not_waiting() {
        let mut o = observed();
        o.ready_replicas = 0;
        o.database = DatabaseState::of(&[("kss-0", false), ("kss-1", false)]);
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Degraded);
        assert_eq!(
            reason(&conds, "Degraded"),
            ("True".into(), "DatabaseUnreachable".into())
        );
        let c = condition::find(&conds, "DatabaseReachable").expect("DatabaseReachable");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DatabaseUnreachable")
        );
        assert!(c.message.contains("kss-0, kss-1"), "{}", c.message);
        assert_eq!(reason(&conds, "Ready").0, "False");
        // One instance that reaches it is enough: the database answers.
        assert_eq!(
            DatabaseState::of(&[("kss-0", false), ("kss-1", true)]),
            DatabaseState::Reachable
        );
        o.database = DatabaseState::Unknown;
        let (conds, _) = compute(&o, &conds, "later");
        assert_eq!(
            reason(&conds, "DatabaseReachable"),
            ("Unknown".into(), "NoInstanceAnswered".into())
        );
    }

    #[test]
    fn a_failed_reconcile_is_not_synced_and_keeps_the_rest() {
        let (conds, _) = compute(&observed(), &[], "now");
        let failed = reconcile_failed(&conds, "applying StatefulSet kss: forbidden", Some(3), "t");
        let synced = condition::find(&failed, "Synced").expect("Synced");
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "ReconcileError")
        );
        assert_eq!(synced.message, "applying StatefulSet kss: forbidden");
        assert_eq!(synced.last_transition_time, "t");
        for c in conds.iter().filter(|c| c.r#type != "Synced") {
            assert_eq!(condition::find(&failed, &c.r#type), Some(c));
        }
        // The next successful reconcile clears it.
        let (again, _) = compute(&observed(), &failed, "t2");
        assert_eq!(reason(&again, "Synced").0, "True");
    }

    #[test]
    fn every_pod_shows_what_it_serves_or_why_it_refuses() {
        use kss_proto::v1::StatusResponse;
        let registry = vec![
            InstanceStatus {
                name: "kss-0".into(),
                online: true,
                applied_policy_version: 4,
                ..InstanceStatus::default()
            },
            InstanceStatus {
                name: "kss-old".into(),
                online: false,
                ..InstanceStatus::default()
            },
        ];
        let serving = |id: &str| {
            Probe::Serving(StatusResponse {
                keyserver_id: id.into(),
                kss_version: "0.1.0".into(),
                database_reachable: true,
                ..StatusResponse::default()
            })
        };
        let probes = vec![
            ("kss-0".to_string(), serving("K1")),
            ("kss-1".to_string(), serving("K2")),
            (
                "kss-2".to_string(),
                Probe::Refusing {
                    reason: RefusalReason::IdentityMissing,
                    message: "IdentityMissing: the database holds no identity".into(),
                    kss_version: "0.1.0".into(),
                },
            ),
            ("kss-3".to_string(), Probe::Unreachable("connecting".into())),
        ];
        let out = instances(registry, &probes, Some("K1"));
        let names: Vec<&str> = out.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["kss-0", "kss-1", "kss-2", "kss-3", "kss-old"]);
        let by = |n: &str| out.iter().find(|i| i.name == n).expect("listed");
        assert_eq!(by("kss-0").keyserver_id.as_deref(), Some("K1"));
        assert_eq!(by("kss-0").refusal_reason, None);
        assert_eq!(by("kss-0").applied_policy_version, 4);
        assert_eq!(by("kss-0").kss_version.as_deref(), Some("0.1.0"));
        assert_eq!(by("kss-0").database_reachable, Some(true));
        assert_eq!(by("kss-1").keyserver_id.as_deref(), Some("K2"));
        assert_eq!(
            by("kss-1").refusal_reason.as_deref(),
            Some("IdentityMismatch")
        );
        assert_eq!(
            by("kss-2").refusal_reason.as_deref(),
            Some("IdentityMissing")
        );
        assert_eq!(by("kss-2").keyserver_id, None);
        assert!(!by("kss-2").online);
        assert_eq!(
            by("kss-3"),
            &InstanceStatus {
                name: "kss-3".into(),
                ..InstanceStatus::default()
            }
        );
        assert!(!by("kss-old").online);
    }

    #[test]
    fn a_recovery_request_is_armed_until_it_completes_then_says_remove_it() {
        let mut o = observed();
        o.recovery_request = Some(RequestedRecovery {
            id: "r1".into(),
            approvals_secret: "approvals".into(),
            completed_at: None,
        });
        let (conds, _) = compute(&o, &[], "now");
        let c = condition::find(&conds, "RecoveryRequested").expect("RecoveryRequested");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RecoveryArmed")
        );
        assert!(c.message.contains("Secret approvals"), "{}", c.message);

        o.recovery_request = Some(RequestedRecovery {
            completed_at: Some("2026-12-04T22:00:00Z".into()),
            ..o.recovery_request.clone().expect("set")
        });
        let (conds, _) = compute(&o, &conds, "later");
        let c = condition::find(&conds, "RecoveryRequested").expect("RecoveryRequested");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RecoveryCompleted")
        );
        assert!(c.message.contains("remove spec.recovery"), "{}", c.message);

        o.recovery_request = None;
        let (conds, _) = compute(&o, &conds, "after");
        assert!(condition::find(&conds, "RecoveryRequested").is_none());
    }

    #[test]
    fn a_cluster_whose_conditions_stand_still_is_polled_less_often() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("time");
        let now = at("2026-12-07T12:00:00Z");
        let (conds, phase) = compute(&observed(), &[], "2026-12-07T11:00:00Z");
        assert_eq!(requeue_after(phase, &conds, now), Duration::from_secs(60));
        let mut o = observed();
        o.identity = IdentityState::Pending;
        let (conds, phase) = compute(&o, &[], "2026-12-07T11:59:30Z");
        assert_eq!(requeue_after(phase, &conds, now), Duration::from_secs(3));
        let (conds, phase) = compute(&o, &[], "2026-12-07T11:58:59Z");
        assert_eq!(requeue_after(phase, &conds, now), Duration::from_secs(15));
        // One condition that moved recently is enough to keep looking closely.
        let mut moved = conds.clone();
        moved[0].last_transition_time = "2026-12-07T11:59:50Z".into();
        assert_eq!(requeue_after(phase, &moved, now), Duration::from_secs(3));
        assert_eq!(requeue_after(phase, &[], now), Duration::from_secs(3));
    }

    #[test]
    fn a_stalled_pod_rollout_is_degraded_and_no_longer_progressing() {
        let mut o = observed();
        o.ready_replicas = 2;
        o.updating = true;
        o.stalled = Some("rolling update stopped: pod c-2 ...".into());
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Degraded);
        assert_eq!(
            reason(&conds, "Progressing"),
            ("False".into(), "RolloutStalled".into())
        );
        assert_eq!(
            reason(&conds, "Degraded"),
            ("True".into(), "RolloutStalled".into())
        );
        let degraded = condition::find(&conds, "Degraded").expect("Degraded");
        assert!(degraded.message.contains("pod c-2"), "{}", degraded.message);
        // Still serving: the previous revision's pods stay Available.
        assert_eq!(reason(&conds, "Available").0, "True");
        // Once the pod turns Ready (or the spec is rolled back) it is an ordinary rollout.
        o.stalled = None;
        let (conds, phase) = compute(&o, &conds, "later");
        assert_eq!(phase, Phase::Updating);
        assert_eq!(reason(&conds, "Progressing").0, "True");
    }

    #[test]
    fn a_lagging_instance_keeps_the_rollout_progressing() {
        let mut o = observed();
        o.policy = PolicyState::Rollout {
            name: "p".into(),
            version: 5,
            up_to_date: 2,
            online: 3,
        };
        let (conds, phase) = compute(&o, &[], "now");
        // A normal rollout: progressing, not degraded.
        assert_eq!(phase, Phase::Updating);
        assert_eq!(reason(&conds, "Degraded").0, "False");
        assert_eq!(reason(&conds, "Ready"), ("False".into(), "Updating".into()));
        assert_eq!(
            reason(&conds, "PolicyApplied"),
            ("False".into(), "RollingOut".into())
        );
        assert_eq!(
            reason(&conds, "Progressing"),
            ("True".into(), "RollingOut".into())
        );
    }

    #[test]
    fn another_keyservers_database_fails_with_the_instances_reason() {
        let mut o = observed();
        o.identity = IdentityState::Refused {
            reason: "IdentityMismatch".into(),
            message: "IdentityMismatch: the database holds keyserver X".into(),
            recovering: false,
        };
        o.ready_replicas = 0;
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            reason(&conds, "IdentityReady"),
            ("False".into(), "IdentityMismatch".into())
        );
        assert_eq!(
            reason(&conds, "Degraded"),
            ("True".into(), "IdentityMismatch".into())
        );
        assert_eq!(reason(&conds, "Available").0, "False");
    }

    #[test]
    fn recovery_in_progress_is_initializing_not_failed() {
        let mut o = observed();
        o.identity = IdentityState::Refused {
            reason: "IdentityMissing".into(),
            message: "m".into(),
            recovering: true,
        };
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Initializing);
        assert_eq!(reason(&conds, "IdentityReady").1, "Recovering");
    }

    #[test]
    fn an_invalid_policy_keeps_the_cluster_serving() {
        let mut o = observed();
        o.policy = PolicyState::Invalid {
            name: "p".into(),
            message: "line 3: unknown rule".into(),
        };
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Ready);
        let c = condition::find(&conds, "PolicyApplied").expect("policy condition");
        assert_eq!(c.reason, "PolicyInvalid");
        assert!(c.message.contains("line 3") && c.message.contains("stays"));
    }

    #[test]
    fn a_rejected_policy_keeps_the_cluster_serving_and_says_why() {
        let mut o = observed();
        o.policy = PolicyState::Rejected {
            name: "p".into(),
            message: "decrypt: rule set 0 (line 2): unknown rule 'x'".into(),
        };
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Ready);
        let c = condition::find(&conds, "PolicyApplied").expect("policy condition");
        assert_eq!(c.reason, "PolicyRejected");
        assert_eq!(
            c.message,
            "the keyserver rejected KssPolicy p: decrypt: rule set 0 (line 2): unknown rule 'x'; \
             the policy in force stays"
        );
    }

    #[test]
    fn paused_changes_nothing_else() {
        let mut o = observed();
        o.paused = true;
        let (conds, phase) = compute(&o, &[], "now");
        assert_eq!(phase, Phase::Paused);
        assert_eq!(conds.len(), 1);
    }
}
