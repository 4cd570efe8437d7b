//! The lifecycle's table: named scenarios with the steps they take, then every
//! combination of what can be observed against the rules that must always hold, each
//! followed through a model of the steps' effects until no step is left.

use super::*;

const A: &str = "ks-a";
const B: &str = "ks-b";
/// The ID the model gives a created identity.
const NEW: &str = "ks-new";

fn obs() -> Observation {
    Observation {
        mode: BootstrapMode::New,
        pinned: None,
        recorded: None,
        master_key: false,
        bootstrap: None,
        backup: BackupSeen::Missing,
        recovery: None,
        instances: Instances::default(),
    }
}

fn backup(id: &str, owner: Owner) -> BackupSeen {
    BackupSeen::Present {
        secret: "demo-backup-key".into(),
        keyserver_id: id.into(),
        owner,
        holders_current: true,
        completed: BTreeMap::new(),
    }
}

fn bootstrap(id: &str, recovery: Option<&str>) -> Option<BootstrapSeen> {
    Some(BootstrapSeen {
        keyserver_id: Some(id.into()),
        opens: true,
        recovery: recovery.map(str::to_string),
    })
}

fn request(id: &str, approvals_present: bool) -> Option<RecoveryRequest> {
    Some(RecoveryRequest {
        id: id.into(),
        approvals_secret: "approvals".into(),
        approvals_present,
        completed_in_status: None,
    })
}

fn refusing(reason: RefusalReason) -> Instances {
    Instances {
        refusal: Some((reason, format!("{reason:?}: from the instance"))),
        ..Instances::default()
    }
}

fn serving() -> Instances {
    Instances {
        serving_ours: true,
        ..Instances::default()
    }
}

/// What performing `step` changes in what the operator observes next (the instances'
/// reports do not change within one reconcile).
fn apply(o: &mut Observation, step: &Step) {
    match step {
        Step::CreateMasterKey => {
            o.master_key = true;
            // Whatever was sealed with the old master key no longer opens.
            if let Some(b) = &mut o.bootstrap {
                b.opens = false;
            }
        }
        Step::CreateIdentity => o.bootstrap = bootstrap(NEW, None),
        Step::DeriveBackup => {
            let id = o
                .bootstrap
                .as_ref()
                .and_then(|b| b.keyserver_id.clone())
                .expect("derived from a bootstrap identity");
            o.backup = backup(&id, Owner::This);
        }
        Step::Pin(id) => o.pinned = Some(id.clone()),
        Step::ClaimBackup => {
            if let BackupSeen::Present { owner, .. } = &mut o.backup {
                *owner = Owner::This;
            }
        }
        Step::DeleteStaleBootstrap | Step::DeleteBootstrap => o.bootstrap = None,
        Step::Recover(r) => {
            let id = o.pinned.clone().expect("recovery of a pinned keyserver");
            o.bootstrap = bootstrap(&id, Some(r));
        }
        Step::CompleteRecovery(r) => {
            if let BackupSeen::Present {
                completed, owner, ..
            } = &mut o.backup
                && !matches!(owner, Owner::Other(_))
            {
                completed.insert(r.clone(), "2026-12-06T00:00:00Z".into());
            }
            if let Some(q) = o.recovery.as_mut().filter(|q| &q.id == r) {
                q.approvals_present = false;
            }
        }
        Step::IssueBackup(_) => {
            let id = o.pinned.clone().expect("issued for a pinned keyserver");
            let completed = match &o.backup {
                BackupSeen::Present { completed, .. } => completed.clone(),
                _ => BTreeMap::new(),
            };
            o.backup = BackupSeen::Present {
                secret: "demo-backup-key".into(),
                keyserver_id: id,
                owner: Owner::This,
                holders_current: true,
                completed,
            };
        }
    }
}

/// Steps until none is left (at most 12), and the last decision.
fn run(mut o: Observation) -> (Vec<Step>, Decision) {
    let mut steps = Vec::new();
    loop {
        let decision = decide(&o);
        let Some(step) = decision.step.clone() else {
            return (steps, decision);
        };
        assert!(steps.len() < 12, "no end: {steps:?} from {o:?}");
        apply(&mut o, &step);
        steps.push(step);
    }
}

fn reason(d: &Decision) -> Option<&str> {
    match &d.standing.identity {
        IdentityState::Refused { reason, .. } | IdentityState::Failed { reason, .. } => {
            Some(reason)
        }
        _ => None,
    }
}

#[test]
fn a_new_cluster_gets_a_master_key_an_identity_a_pin_and_a_backup_key() {
    let (steps, end) = run(obs());
    assert_eq!(
        steps,
        [
            Step::CreateMasterKey,
            Step::CreateIdentity,
            Step::Pin(NEW.into()),
            Step::DeriveBackup
        ]
    );
    assert_eq!(end.standing.identity, IdentityState::Pending);
    assert_eq!(end.standing.keyserver_id.as_deref(), Some(NEW));
}

#[test]
fn a_confirmed_identity_deletes_the_bootstrap_secret() {
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        bootstrap: bootstrap(A, None),
        backup: backup(A, Owner::This),
        instances: serving(),
        ..obs()
    };
    let (steps, end) = run(o);
    assert_eq!(steps, [Step::DeleteBootstrap]);
    assert_eq!(end.standing.identity, IdentityState::Confirmed);
}

#[test]
fn a_recreated_resource_adopts_its_own_retained_backup_key() {
    for owner in [Owner::This, Owner::Unmarked] {
        let claim = owner == Owner::Unmarked;
        let o = Observation {
            master_key: true,
            backup: backup(A, owner),
            ..obs()
        };
        let (steps, end) = run(o);
        let mut expected = vec![Step::Pin(A.into())];
        if claim {
            expected.push(Step::ClaimBackup);
        }
        assert_eq!(steps, expected);
        assert_eq!(end.standing.keyserver_id.as_deref(), Some(A));
    }
}

#[test]
fn a_second_cluster_naming_the_first_ones_backup_secret_is_refused_and_writes_nothing() {
    for master_key in [false, true] {
        let o = Observation {
            master_key,
            backup: backup(A, Owner::Other("first".into())),
            ..obs()
        };
        let (steps, end) = run(o);
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(reason(&end), Some(reasons::BACKUP_KEY_INVALID));
    }
}

#[test]
fn adopting_another_clusters_keyserver_serves_it_and_never_rewrites_its_backup_key() {
    let o = Observation {
        mode: BootstrapMode::Adopt,
        pinned: Some(A.into()),
        master_key: true,
        backup: BackupSeen::Present {
            secret: "first-backup-key".into(),
            keyserver_id: A.into(),
            owner: Owner::Other("first".into()),
            holders_current: false,
            completed: BTreeMap::new(),
        },
        instances: serving(),
        ..obs()
    };
    let (steps, end) = run(o);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(end.standing.identity, IdentityState::Confirmed);
}

#[test]
fn adopt_and_recover_need_the_keyserver_id() {
    for mode in [BootstrapMode::Adopt, BootstrapMode::Recover] {
        let (steps, end) = run(Observation {
            mode,
            master_key: true,
            ..obs()
        });
        assert!(steps.is_empty());
        assert_eq!(reason(&end), Some(reasons::IDENTITY_FAILED));
    }
}

#[test]
fn a_lost_master_key_is_replaced_and_waits_for_a_recovery_request() {
    let o = Observation {
        pinned: Some(A.into()),
        backup: backup(A, Owner::This),
        instances: refusing(RefusalReason::MasterKeyMismatch),
        ..obs()
    };
    let (steps, end) = run(o.clone());
    assert_eq!(steps, [Step::CreateMasterKey]);
    assert_eq!(reason(&end), Some(reasons::MASTER_KEY_MISMATCH));

    // With the holders' approvals: recovered (same ID) and handed to the instances.
    let (steps, end) = run(Observation {
        recovery: request("r1", true),
        ..o
    });
    assert_eq!(steps, [Step::CreateMasterKey, Step::Recover("r1".into())]);
    assert!(matches!(
        end.standing.identity,
        IdentityState::Refused {
            recovering: true,
            ..
        }
    ));
    assert_eq!(end.standing.keyserver_id.as_deref(), Some(A));
}

#[test]
fn a_served_recovery_is_recorded_its_approvals_deleted_then_the_bootstrap() {
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        bootstrap: bootstrap(A, Some("r1")),
        backup: backup(A, Owner::This),
        recovery: request("r1", true),
        instances: serving(),
        ..obs()
    };
    let (steps, end) = run(o);
    assert_eq!(
        steps,
        [Step::CompleteRecovery("r1".into()), Step::DeleteBootstrap]
    );
    assert_eq!(end.standing.identity, IdentityState::Confirmed);
}

#[test]
fn a_completed_recovery_left_in_spec_does_not_rearm_on_a_new_empty_database() {
    let mut done = backup(A, Owner::This);
    if let BackupSeen::Present { completed, .. } = &mut done {
        completed.insert("r1".into(), "2026-12-01T00:00:00Z".into());
    }
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        backup: done,
        // Even if someone re-created the approvals Secret.
        recovery: request("r1", true),
        instances: refusing(RefusalReason::IdentityMissing),
        ..obs()
    };
    let (steps, end) = run(o.clone());
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(reason(&end), Some(reasons::RECOVERY_FAILED));

    // Its completion in status alone (backup-key Secret re-issued) is enough too.
    let mut in_status = request("r1", true);
    if let Some(r) = &mut in_status {
        r.completed_in_status = Some("2026-12-01T00:00:00Z".into());
    }
    let (steps, _) = run(Observation {
        backup: backup(A, Owner::This),
        recovery: in_status,
        ..o.clone()
    });
    assert!(steps.is_empty(), "{steps:?}");

    // A new id runs.
    let (steps, _) = run(Observation {
        recovery: request("r2", true),
        ..o
    });
    assert_eq!(steps, [Step::Recover("r2".into())]);
}

#[test]
fn a_lost_backup_key_is_reissued_by_a_serving_instance_only() {
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        instances: serving(),
        ..obs()
    };
    let (steps, end) = run(o.clone());
    assert_eq!(steps, [Step::IssueBackup(IssueReason::Lost)]);
    assert_eq!(end.standing.identity, IdentityState::Confirmed);
    let (steps, _) = run(Observation {
        instances: Instances::default(),
        ..o
    });
    assert!(steps.is_empty());
}

#[test]
fn changed_holders_get_a_new_backup_key() {
    let mut changed = backup(A, Owner::This);
    if let BackupSeen::Present {
        holders_current, ..
    } = &mut changed
    {
        *holders_current = false;
    }
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        backup: changed,
        instances: serving(),
        ..obs()
    };
    let (steps, _) = run(o.clone());
    assert_eq!(steps, [Step::IssueBackup(IssueReason::HoldersChanged)]);
    // Not without an instance that serves the keyserver.
    let (steps, _) = run(Observation {
        instances: refusing(RefusalReason::IdentityMissing),
        ..o
    });
    assert!(!steps.iter().any(|s| matches!(s, Step::IssueBackup(_))));
}

#[test]
fn an_instance_serving_another_keyserver_is_a_mismatch() {
    let o = Observation {
        pinned: Some(A.into()),
        master_key: true,
        backup: backup(A, Owner::This),
        instances: Instances {
            serving_other: Some(("demo-1".into(), B.into())),
            ..Instances::default()
        },
        ..obs()
    };
    let (steps, end) = run(o);
    assert!(steps.is_empty());
    assert_eq!(reason(&end), Some(reasons::IDENTITY_MISMATCH));
}

#[test]
fn the_pin_wins_over_a_stale_status_and_a_foreign_bootstrap_is_left_alone() {
    let o = Observation {
        pinned: Some(A.into()),
        recorded: Some(B.into()),
        master_key: true,
        backup: backup(A, Owner::This),
        ..obs()
    };
    let (steps, end) = run(o.clone());
    assert!(steps.is_empty());
    assert_eq!(end.standing.keyserver_id.as_deref(), Some(A));
    let (steps, end) = run(Observation {
        bootstrap: bootstrap(B, None),
        ..o
    });
    assert!(steps.is_empty());
    assert_eq!(reason(&end), Some(reasons::IDENTITY_FAILED));
}

// ---------------------------------------------------------------------------------------
// Every combination.

fn all_observations() -> Vec<Observation> {
    let ids = [None, Some(A), Some(B)];
    let bootstraps = [
        None,
        bootstrap(A, None),
        Some(BootstrapSeen {
            keyserver_id: Some(A.into()),
            opens: false,
            recovery: None,
        }),
        bootstrap(A, Some("r1")),
        bootstrap(B, None),
        Some(BootstrapSeen {
            keyserver_id: None,
            opens: false,
            recovery: None,
        }),
    ];
    let mut backups = vec![BackupSeen::Missing, BackupSeen::Unreadable("bad".into())];
    for owner in [Owner::Unmarked, Owner::This, Owner::Other("first".into())] {
        for holders_current in [true, false] {
            for completed in [false, true] {
                backups.push(BackupSeen::Present {
                    secret: "demo-backup-key".into(),
                    keyserver_id: A.into(),
                    owner: owner.clone(),
                    holders_current,
                    completed: if completed {
                        [("r1".to_string(), "2026-12-01T00:00:00Z".to_string())].into()
                    } else {
                        BTreeMap::new()
                    },
                });
            }
        }
    }
    let requests = [
        None,
        request("r1", true),
        request("r1", false),
        request("r2", true),
    ];
    let instances = [
        Instances::default(),
        serving(),
        Instances {
            serving_other: Some(("demo-1".into(), B.into())),
            ..Instances::default()
        },
        refusing(RefusalReason::IdentityMissing),
        refusing(RefusalReason::MasterKeyMismatch),
        refusing(RefusalReason::IdentityMismatch),
        refusing(RefusalReason::Unspecified),
    ];
    let mut all = Vec::new();
    for mode in [
        BootstrapMode::New,
        BootstrapMode::Adopt,
        BootstrapMode::Recover,
    ] {
        for pinned in ids {
            for recorded in ids {
                for master_key in [false, true] {
                    for b in &bootstraps {
                        for k in &backups {
                            for r in &requests {
                                for i in &instances {
                                    all.push(Observation {
                                        mode,
                                        pinned: pinned.map(str::to_string),
                                        recorded: recorded.map(str::to_string),
                                        master_key,
                                        bootstrap: b.clone(),
                                        backup: k.clone(),
                                        recovery: r.clone(),
                                        instances: i.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    all
}

fn backup_owned_by_another(o: &Observation) -> bool {
    matches!(
        &o.backup,
        BackupSeen::Present {
            owner: Owner::Other(_),
            ..
        }
    )
}

/// The rules every decision keeps, whatever was observed.
fn check_rules(o: &Observation, d: &Decision) {
    let nothing_known = o.pinned.is_none()
        && o.recorded.is_none()
        && o.bootstrap.is_none()
        && o.backup == BackupSeen::Missing;
    if let Some(pinned) = &o.pinned {
        assert_eq!(
            d.standing.keyserver_id.as_ref(),
            Some(pinned),
            "the pin names the keyserver: {o:?}"
        );
    }
    let Some(step) = &d.step else { return };
    match step {
        Step::CreateIdentity => {
            assert!(
                nothing_known
                    && o.mode == BootstrapMode::New
                    && o.master_key
                    && o.instances.serving_other.is_none(),
                "a new identity only for a new cluster with nothing known: {o:?}"
            );
        }
        Step::CreateMasterKey => assert!(!o.master_key, "{o:?}"),
        Step::Pin(id) => {
            assert!(o.pinned.is_none(), "a pin never changes: {o:?}");
            if let Some(recorded) = &o.recorded {
                assert_eq!(id, recorded, "{o:?}");
            }
        }
        Step::Recover(r) => {
            let q = o.recovery.as_ref().expect("a request");
            assert_eq!(&q.id, r);
            assert!(q.approvals_present, "{o:?}");
            assert!(q.completed_in_status.is_none(), "{o:?}");
            if let BackupSeen::Present { completed, .. } = &o.backup {
                assert!(!completed.contains_key(r), "runs once: {o:?}");
            } else {
                panic!("a recovery needs the backup key: {o:?}");
            }
            assert!(o.bootstrap.is_none(), "{o:?}");
            assert!(!o.instances.serving_ours, "{o:?}");
            assert!(
                matches!(
                    o.instances.refusal,
                    Some((
                        RefusalReason::IdentityMissing | RefusalReason::MasterKeyMismatch,
                        _
                    ))
                ),
                "only while instances lack an identity they can open: {o:?}"
            );
            assert!(o.pinned.is_some() && o.master_key, "{o:?}");
        }
        Step::DeleteBootstrap => {
            assert!(o.instances.serving_ours, "{o:?}");
            assert!(
                matches!(o.backup, BackupSeen::Present { .. }),
                "never the last copy of the root secret: {o:?}"
            );
        }
        Step::DeleteStaleBootstrap => {
            assert!(o.bootstrap.as_ref().is_some_and(|b| !b.opens), "{o:?}");
        }
        Step::IssueBackup(_) => {
            assert!(o.instances.serving_ours && o.pinned.is_some(), "{o:?}");
            assert!(!backup_owned_by_another(o), "{o:?}");
        }
        Step::ClaimBackup | Step::DeriveBackup => {
            assert!(!backup_owned_by_another(o), "{o:?}");
        }
        // Writes the backup-key Secret only when it is not another cluster's.
        Step::CompleteRecovery(_) => {}
    }
    if backup_owned_by_another(o) && !(o.mode == BootstrapMode::Adopt && o.pinned.is_some()) {
        panic!("another cluster's backup Secret is used only when adopted: {o:?} → {d:?}");
    }
}

#[test]
fn every_observation_keeps_the_rules_and_comes_to_rest() {
    let all = all_observations();
    assert_eq!(all.len(), 3 * 3 * 3 * 2 * 6 * 14 * 4 * 7);
    let mut ends = BTreeMap::<String, usize>::new();
    for o in all {
        let mut current = o.clone();
        let mut steps = 0;
        loop {
            let d = decide(&current);
            check_rules(&current, &d);
            let Some(step) = d.step else {
                let key = match &d.standing.identity {
                    IdentityState::Confirmed => "Confirmed".to_string(),
                    IdentityState::Pending => "Pending".to_string(),
                    IdentityState::Refused { reason, .. } => format!("Refused/{reason}"),
                    IdentityState::Failed { reason, .. } => format!("Failed/{reason}"),
                };
                *ends.entry(key).or_default() += 1;
                break;
            };
            steps += 1;
            assert!(steps <= 8, "no end from {o:?}");
            apply(&mut current, &step);
        }
    }
    // Every kind of end is reached by some observation.
    for end in [
        "Confirmed",
        "Pending",
        "Failed/BackupKeyInvalid",
        "Failed/IdentityFailed",
        "Failed/IdentityMismatch",
        "Refused/IdentityMismatch",
        "Refused/IdentityMissing",
        "Refused/MasterKeyMismatch",
        "Refused/RecoveryFailed",
        "Refused/Refusing",
    ] {
        assert!(ends.contains_key(end), "{end} never reached: {ends:?}");
    }
}
