//! The keyserver identity's part of a cluster reconcile: observes the Secrets, the
//! spec's request and the instances' reports, asks [`lifecycle::decide`] for the next
//! step and performs it, until no step is left. The decisions are the lifecycle's; this
//! module only reads and writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kss_crypto::backup::AdminPublicKey;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::admin::{Instance, Probe};
use crate::crd::cluster::{BackupStatus, KeyShardCluster, RecoveryState, RecoveryStatus};
use crate::crd::condition::reasons;
use crate::desired::{self, CLUSTER_LABEL, Names};
use crate::error::{Error, Result};
use crate::identity;
use crate::lifecycle::{
    self, BackupSeen, BootstrapSeen, Decision, Instances, IssueReason, Observation, Owner,
    RecoveryRequest, Standing, Step,
};
use crate::reconcile::Context;
use crate::secrets;
use crate::status::{BackupNote, IdentityState};

use super::cluster::{event, keys, retained_owner};

/// The bootstrap Secret's annotation naming the recovery request that made it.
const RECOVERY_ID: &str = "kss.dev/recovery-id";
/// The backup-key Secret's annotation recording the recoveries that completed with it
/// (a JSON object: id → RFC 3339 time). It travels with the backup key, so that a request
/// runs once even if the resource's status is lost or stale.
const COMPLETED_RECOVERIES: &str = "kss.dev/completed-recoveries";
/// The backup-key Secret's annotation saying when and why its backup key was issued.
const ISSUED: &str = "kss.dev/backup-issued";

/// What the identity's reconcile leaves for the rest of the reconcile and for status.
pub struct Outcome {
    pub standing: Standing,
    /// The pinned keyserver ID (the pods are given it).
    pub pinned: Option<String>,
    /// The backup key's status, or why it is unusable: (reason, message).
    pub backup: std::result::Result<(BackupNote, BackupStatus), (String, String)>,
    /// The last recovery request acted on.
    pub recovery: Option<RecoveryStatus>,
    /// The resource's resourceVersion after this reconcile's own writes to it (the pin).
    pub resource_version: Option<String>,
}

/// The most steps one reconcile takes (a new cluster takes four).
const MAX_STEPS: usize = 10;

/// Runs the lifecycle until it rests. `probes` are this reconcile's answers of the
/// cluster's pods; a backup key is issued through the first that serves the keyserver.
pub async fn reconcile(
    cluster: &KeyShardCluster,
    names: &Names,
    ctx: &Context,
    probes: &mut [(String, Probe, Option<Instance>)],
    now: &str,
) -> Result<Outcome> {
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut pinned = cluster.spec.bootstrap.keyserver_id.clone();
    let mut resource_version = cluster.metadata.resource_version.clone();
    let mut performed: Vec<Step> = Vec::new();
    let mut recovery = cluster.status.as_ref().and_then(|s| s.recovery.clone());
    let mut stopped = None;
    let (decision, seen) = loop {
        let seen = observe(cluster, names, &secrets_api, probes, pinned.clone()).await?;
        let decision = lifecycle::decide(&seen.observation);
        let Some(step) = decision.step.clone().filter(|_| stopped.is_none()) else {
            break (decision, seen);
        };
        if performed.contains(&step) || performed.len() >= MAX_STEPS {
            return Err(Error::Identity(format!(
                "the identity's lifecycle does not settle: {step:?} again after {performed:?}"
            )));
        }
        info!(?step, "identity step");
        stopped = perform(
            &step,
            cluster,
            names,
            ctx,
            &secrets_api,
            &seen,
            probes,
            now,
            &mut pinned,
            &mut recovery,
            &mut resource_version,
        )
        .await?;
        performed.push(step);
    };
    let Decision { mut standing, .. } = decision;
    if let Some(identity) = stopped {
        standing.identity = identity;
    }

    // Retained Secrets follow spec.backup.retainOnDelete (only this cluster's own).
    let owner = retained_owner(cluster);
    if let Some(master) = &seen.master_secret {
        secrets::set_owner(&secrets_api, master, owner.clone()).await?;
    }
    if let (
        Some(backup),
        BackupSeen::Present {
            owner: Owner::This, ..
        },
    ) = (&seen.backup_secret, &seen.observation.backup)
    {
        secrets::set_owner(&secrets_api, backup, owner).await?;
    }

    // Where the last recovery stands, from the Secrets (durable) before the status.
    if let Some(r) = seen
        .observation
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.clone())
    {
        recovery = Some(RecoveryStatus {
            id: r,
            state: RecoveryState::InProgress,
            completed_at: None,
        });
    } else if let (Some(spec), BackupSeen::Present { completed, .. }) =
        (&cluster.spec.recovery, &seen.observation.backup)
        && let Some(at) = completed.get(&spec.id)
    {
        recovery = Some(RecoveryStatus {
            id: spec.id.clone(),
            state: RecoveryState::Completed,
            completed_at: Some(at.clone()),
        });
    }

    let created = performed
        .iter()
        .any(|s| matches!(s, Step::DeriveBackup | Step::IssueBackup(_)));
    let mut backup = backup_report(names, cluster, &seen, created);
    // A backup key the lifecycle refuses (another keyserver's, another cluster's) is not
    // this cluster's backup key, whatever it holds.
    if let IdentityState::Failed { reason, message } = &standing.identity
        && reason == reasons::BACKUP_KEY_INVALID
    {
        backup = Err((reason.clone(), message.clone()));
    }
    Ok(Outcome {
        standing,
        pinned,
        backup,
        recovery,
        resource_version,
    })
}

/// What one observation read, beside the [`Observation`] itself.
struct Seen {
    observation: Observation,
    master_secret: Option<Secret>,
    master_hex: Option<Zeroizing<String>>,
    bootstrap_json: Option<Zeroizing<String>>,
    backup_secret: Option<Secret>,
}

/// Reads what the lifecycle decides on.
async fn observe(
    cluster: &KeyShardCluster,
    names: &Names,
    secrets_api: &Api<Secret>,
    probes: &[(String, Probe, Option<Instance>)],
    pinned: Option<String>,
) -> Result<Seen> {
    let master_secret = secrets::get(secrets_api, &names.master_key_secret()).await?;
    let master_hex = match &master_secret {
        Some(s) => Some(Zeroizing::new(secrets::text(s, keys::MASTER_KEY)?)),
        None => None,
    };
    let bootstrap_secret = secrets::get(secrets_api, &names.bootstrap_secret()).await?;
    let bootstrap_json = match &bootstrap_secret {
        Some(s) => secrets::text(s, keys::IDENTITY).ok().map(Zeroizing::new),
        None => None,
    };
    let bootstrap = bootstrap_secret.as_ref().map(|s| {
        let json = bootstrap_json.as_deref().map(String::as_str);
        BootstrapSeen {
            keyserver_id: json.and_then(|j| identity::bootstrap_keyserver_id(j).ok()),
            opens: match (json, &master_hex) {
                (Some(j), Some(m)) => identity::bootstrap_opens(j, m),
                _ => false,
            },
            recovery: s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RECOVERY_ID).cloned()),
        }
    });

    let backup_name = names.backup_secret(cluster);
    let backup_secret = secrets::get(secrets_api, &backup_name).await?;
    let backup = match &backup_secret {
        None => BackupSeen::Missing,
        Some(s) => match secrets::text(s, keys::BACKUP).and_then(|t| identity::parse_backup(&t)) {
            Err(e) => BackupSeen::Unreadable(format!("backup-key Secret {backup_name}: {e}")),
            Ok(key) => BackupSeen::Present {
                secret: backup_name.clone(),
                keyserver_id: key.keyserver_id().to_string(),
                owner: match s.labels().get(CLUSTER_LABEL) {
                    None => Owner::Unmarked,
                    Some(c) if *c == names.cluster => Owner::This,
                    Some(c) => Owner::Other(c.clone()),
                },
                holders_current: holders_current(cluster, &key),
                completed: completed_recoveries(s),
            },
        },
    };

    let recovery = match &cluster.spec.recovery {
        None => None,
        Some(spec) => Some(RecoveryRequest {
            id: spec.id.clone(),
            approvals_secret: spec.approvals_secret_name.clone(),
            approvals_present: secrets::get(secrets_api, &spec.approvals_secret_name)
                .await?
                .is_some(),
            completed_in_status: cluster
                .status
                .as_ref()
                .and_then(|s| s.recovery.as_ref())
                .filter(|r| r.id == spec.id && r.state == RecoveryState::Completed)
                .map(|r| r.completed_at.clone().unwrap_or_default()),
        }),
    };

    let recorded = cluster.status.as_ref().and_then(|s| s.keyserver_id.clone());
    let candidate = pinned
        .clone()
        .or_else(|| recorded.clone())
        .or_else(|| match &backup {
            BackupSeen::Present { keyserver_id, .. } => Some(keyserver_id.clone()),
            _ => None,
        })
        .or_else(|| bootstrap.as_ref().and_then(|b| b.keyserver_id.clone()));
    let observation = Observation {
        mode: cluster.spec.bootstrap.mode,
        pinned,
        recorded,
        master_key: master_hex.is_some(),
        bootstrap,
        backup,
        recovery,
        instances: instances(probes, candidate.as_deref()),
    };
    Ok(Seen {
        observation,
        master_secret,
        master_hex,
        bootstrap_json,
        backup_secret,
    })
}

/// The instances' reports, relative to keyserver `id`.
fn instances(probes: &[(String, Probe, Option<Instance>)], id: Option<&str>) -> Instances {
    let mut seen = Instances::default();
    for (pod, probe, _) in probes {
        match probe {
            Probe::Serving(s) if Some(s.keyserver_id.as_str()) == id => seen.serving_ours = true,
            Probe::Serving(s) => {
                seen.serving_other
                    .get_or_insert_with(|| (pod.clone(), s.keyserver_id.clone()));
            }
            Probe::Refusing {
                reason, message, ..
            } => {
                seen.refusal
                    .get_or_insert_with(|| (*reason, message.clone()));
            }
            Probe::Unreachable(_) => {}
        }
    }
    seen
}

/// Whether the backup key is for `spec.backup`'s holders and threshold (always, with no
/// holders given: the generated administrator key of a demo).
fn holders_current(cluster: &KeyShardCluster, key: &kss_crypto::backup::BackupKey) -> bool {
    let spec = &cluster.spec.backup;
    if spec.holders.is_empty() {
        return true;
    }
    let wanted: BTreeMap<String, String> = spec
        .holders
        .iter()
        .map(|h| {
            let hex = AdminPublicKey::from_hex(&h.public_key)
                .map(|k| k.to_hex())
                .unwrap_or_else(|_| h.public_key.to_lowercase());
            (h.name.clone(), hex)
        })
        .collect();
    let have: BTreeMap<String, String> = key
        .holders()
        .iter()
        .map(|h| (h.name().to_string(), h.admin_public_key().to_hex()))
        .collect();
    wanted == have && usize::try_from(spec.threshold).ok() == Some(key.threshold())
}

/// The recoveries recorded as completed on the backup-key Secret.
fn completed_recoveries(backup: &Secret) -> BTreeMap<String, String> {
    backup
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETED_RECOVERIES))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Performs one step. `Some(state)`: the step could not be taken for a reason status
/// shows (a recovery whose approvals do not open the backup key), and no further step is
/// taken in this reconcile.
#[allow(clippy::too_many_arguments)]
async fn perform(
    step: &Step,
    cluster: &KeyShardCluster,
    names: &Names,
    ctx: &Context,
    secrets_api: &Api<Secret>,
    seen: &Seen,
    probes: &mut [(String, Probe, Option<Instance>)],
    now: &str,
    pinned: &mut Option<String>,
    recovery: &mut Option<RecoveryStatus>,
    resource_version: &mut Option<String>,
) -> Result<Option<IdentityState>> {
    let master = || {
        seen.master_hex
            .as_ref()
            .ok_or_else(|| Error::Identity("no master-key Secret".into()))
    };
    let bootstrap = || {
        seen.bootstrap_json
            .as_ref()
            .ok_or_else(|| Error::Identity("no bootstrap identity".into()))
    };
    match step {
        Step::CreateMasterKey => {
            let key = identity::new_master_key();
            let mut meta = desired::retained_meta(names, names.master_key_secret());
            meta.owner_references = retained_owner(cluster).map(|o| vec![o]);
            let secret = secrets::build(meta, "Opaque", &[(keys::MASTER_KEY, &key)]);
            secrets::create_if_missing(secrets_api, secret).await?;
            if let Some(id) = pinned.as_deref() {
                warn!(keyserver_id = %id, "master-key Secret missing: a new master key is created");
                event(
                    ctx,
                    cluster,
                    true,
                    "MasterKeyCreated",
                    format!(
                        "the master-key Secret of keyserver {id} was missing: a new master key \
                         is created; instances that cannot open the identity wait for a \
                         recovery request (spec.recovery) to re-seal it"
                    ),
                )
                .await;
            }
        }
        Step::CreateIdentity => {
            let (id, json) = identity::new_bootstrap(master()?)?;
            let secret = secrets::build(
                desired::owned_meta(cluster, names, names.bootstrap_secret()),
                "Opaque",
                &[(keys::IDENTITY, &json)],
            );
            if secrets::create_if_missing(secrets_api, secret).await?.1 {
                info!(keyserver_id = %id, "created a new keyserver identity");
                event(
                    ctx,
                    cluster,
                    false,
                    "IdentityCreated",
                    format!("keyserver {id} created"),
                )
                .await;
            }
        }
        Step::DeriveBackup => {
            let material =
                identity::backup_from_bootstrap(bootstrap()?, master()?, &cluster.spec.backup)?;
            write_backup(cluster, names, secrets_api, None, &material, "derived", now).await?;
            event(
                ctx,
                cluster,
                false,
                "BackupKeyCreated",
                format!(
                    "backup key of keyserver {} in Secret {} ({} of {} holders)",
                    material.keyserver_id,
                    names.backup_secret(cluster),
                    material.threshold,
                    material.holders
                ),
            )
            .await;
        }
        Step::Pin(id) => {
            let api: Api<KeyShardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
            // Only if the resource is still as read (else: stale, reconciled again).
            let patch = json!({
                "metadata": { "resourceVersion": resource_version },
                "spec": { "bootstrap": { "keyserverId": id } },
            });
            let patched = match api
                .patch(
                    &names.cluster,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(patched) => patched,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Err(Error::Stale {
                        what: format!("KeyShardCluster {}", names.cluster),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            *resource_version = patched.metadata.resource_version;
            *pinned = Some(id.clone());
            info!(keyserver_id = %id, "keyserver ID pinned");
            event(
                ctx,
                cluster,
                false,
                "KeyserverPinned",
                format!("spec.bootstrap.keyserverId set to {id}: every instance serves it only"),
            )
            .await;
        }
        Step::ClaimBackup => {
            let name = names.backup_secret(cluster);
            let patch = json!({ "metadata": { "labels": { CLUSTER_LABEL: names.cluster } } });
            secrets_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Step::DeleteStaleBootstrap => {
            secrets::delete(secrets_api, &names.bootstrap_secret()).await?;
            warn!("bootstrap Secret sealed with a master key that is gone: deleted");
        }
        Step::DeleteBootstrap => {
            secrets::delete(secrets_api, &names.bootstrap_secret()).await?;
            info!("identity confirmed by an instance; bootstrap Secret deleted");
        }
        Step::Recover(id) => {
            let spec = cluster
                .spec
                .recovery
                .as_ref()
                .filter(|r| &r.id == id)
                .ok_or_else(|| Error::Identity(format!("recovery {id} is not requested")))?;
            let outcome = recover_bootstrap(seen, secrets_api, &spec.approvals_secret_name).await;
            let json = match outcome {
                Ok(json) => json,
                Err(message) => {
                    warn!(recovery = %id, %message, "recovery failed");
                    event(
                        ctx,
                        cluster,
                        true,
                        reasons::RECOVERY_FAILED,
                        message.clone(),
                    )
                    .await;
                    return Ok(Some(IdentityState::Refused {
                        reason: reasons::RECOVERY_FAILED.to_string(),
                        message: format!("recovery {id}: {message}"),
                        recovering: false,
                    }));
                }
            };
            let mut meta = desired::owned_meta(cluster, names, names.bootstrap_secret());
            meta.annotations = Some([(RECOVERY_ID.to_string(), id.clone())].into());
            let secret = secrets::build(meta, "Opaque", &[(keys::IDENTITY, &json)]);
            secrets::create_if_missing(secrets_api, secret).await?;
            *recovery = Some(RecoveryStatus {
                id: id.clone(),
                state: RecoveryState::InProgress,
                completed_at: None,
            });
            event(
                ctx,
                cluster,
                false,
                "RecoveryStarted",
                format!("recovery {id}: the identity recovered from the backup key is handed to the instances"),
            )
            .await;
        }
        Step::CompleteRecovery(id) => {
            let backup = seen
                .backup_secret
                .as_ref()
                .ok_or_else(|| Error::Identity("no backup-key Secret".into()))?;
            // Never written when it is another cluster's (adopted): status records it.
            if !matches!(
                seen.observation.backup,
                BackupSeen::Present {
                    owner: Owner::Other(_),
                    ..
                }
            ) {
                record_completed_recovery(secrets_api, backup, id, now).await?;
            }
            if let Some(spec) = cluster.spec.recovery.as_ref().filter(|r| &r.id == id) {
                secrets::delete(secrets_api, &spec.approvals_secret_name).await?;
            }
            *recovery = Some(RecoveryStatus {
                id: id.clone(),
                state: RecoveryState::Completed,
                completed_at: Some(now.to_string()),
            });
            info!(recovery = %id, "recovery completed; approvals Secret deleted");
            event(
                ctx,
                cluster,
                false,
                "RecoveryCompleted",
                format!(
                    "recovery {id} completed: an instance serves the recovered keyserver; the \
                     approvals Secret is deleted; remove spec.recovery"
                ),
            )
            .await;
        }
        Step::IssueBackup(why) => {
            let id = pinned.clone().unwrap_or_default();
            let instance = probes
                .iter_mut()
                .find_map(|(_, p, i)| match p {
                    Probe::Serving(s) if s.keyserver_id == id => i.as_mut(),
                    _ => None,
                })
                .ok_or_else(|| Error::Identity("no instance serves the keyserver".into()))?;
            let request = identity::backup_request(&cluster.spec.backup)?;
            let issued = instance
                .issue_backup_key(
                    request.holders.clone(),
                    request.threshold,
                    request.allow_weak,
                )
                .await?;
            let material = identity::BackupMaterial {
                keyserver_id: issued.keyserver_id,
                backup_json: issued.backup_json,
                holders: request.holders.len(),
                threshold: usize::try_from(request.threshold).unwrap_or(usize::MAX),
                generated_admin_key: request.generated_admin_key,
            };
            if material.keyserver_id != id {
                return Err(Error::Identity(format!(
                    "instance {} issued a backup key of keyserver {}, not {id}",
                    instance.pod, material.keyserver_id
                )));
            }
            let why_text = match why {
                IssueReason::Lost => "lost",
                IssueReason::HoldersChanged => "holders-changed",
            };
            write_backup(
                cluster,
                names,
                secrets_api,
                seen.backup_secret.as_ref(),
                &material,
                why_text,
                now,
            )
            .await?;
            let message = match why {
                IssueReason::Lost => format!(
                    "the backup-key Secret {} was missing: instance {} issued a new backup key \
                     of keyserver {id} for the current holders ({} of {})",
                    names.backup_secret(cluster),
                    instance.pod,
                    material.threshold,
                    material.holders
                ),
                IssueReason::HoldersChanged => format!(
                    "spec.backup changed: instance {} issued a new backup key of keyserver {id} \
                     for {} of {} holders; approvals made for the previous backup key no longer \
                     work with it",
                    instance.pod, material.threshold, material.holders
                ),
            };
            info!(reason = why_text, "backup key issued");
            event(ctx, cluster, false, "BackupKeyIssued", message).await;
        }
    }
    Ok(None)
}

/// The recovered bootstrap identity, or why there is none (for status; never a secret).
async fn recover_bootstrap(
    seen: &Seen,
    secrets_api: &Api<Secret>,
    approvals_secret: &str,
) -> std::result::Result<Zeroizing<String>, String> {
    let approvals = match secrets::get(secrets_api, approvals_secret).await {
        Ok(Some(s)) => secrets::all_text(&s).map_err(|e| e.to_string())?,
        Ok(None) => {
            return Err(format!(
                "recovery approvals Secret {approvals_secret} not found"
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let backup_json = seen
        .backup_secret
        .as_ref()
        .ok_or("no backup-key Secret to recover from")
        .and_then(|s| secrets::text(s, keys::BACKUP).map_err(|_| "backup-key Secret unreadable"))
        .map_err(str::to_string)?;
    let backup = identity::parse_backup(&backup_json).map_err(|e| e.to_string())?;
    let master = seen.master_hex.as_ref().ok_or("no master-key Secret")?;
    identity::recover_bootstrap(&backup, &approvals, master).map_err(|e| e.to_string())
}

/// Writes a backup key into the backup-key Secret: created, or (`existing`) its data
/// replaced, keeping the record of completed recoveries.
async fn write_backup(
    cluster: &KeyShardCluster,
    names: &Names,
    secrets_api: &Api<Secret>,
    existing: Option<&Secret>,
    material: &identity::BackupMaterial,
    why: &str,
    now: &str,
) -> Result<()> {
    let name = names.backup_secret(cluster);
    let mut data = vec![
        (keys::BACKUP, material.backup_json.as_str()),
        (keys::KEYSERVER_ID, material.keyserver_id.as_str()),
    ];
    if let Some(admin) = &material.generated_admin_key {
        data.push((keys::ADMIN_KEY, admin.as_str()));
    }
    let issued = json!({ "at": now, "reason": why }).to_string();
    match existing {
        None => {
            let mut meta = desired::retained_meta(names, name);
            meta.owner_references = retained_owner(cluster).map(|o| vec![o]);
            meta.annotations = Some([(ISSUED.to_string(), issued)].into());
            let secret = secrets::build(meta, "Opaque", &data);
            secrets::create_if_missing(secrets_api, secret).await?;
        }
        // Every key written (a generated administrator key of the previous backup key
        // removed), only if the Secret is still as read. Its cluster label is already
        // this cluster's: an unmarked Secret is claimed before a backup key is issued.
        Some(secret) => {
            let admin = material.generated_admin_key.as_ref().map(|k| k.as_str());
            secrets::patch_if_unchanged(
                secrets_api,
                secret,
                &[
                    (keys::BACKUP, Some(material.backup_json.as_str())),
                    (keys::KEYSERVER_ID, Some(material.keyserver_id.as_str())),
                    (keys::ADMIN_KEY, admin),
                ],
                &[(ISSUED, Some(issued))],
            )
            .await?;
        }
    }
    Ok(())
}

/// Records on the backup-key Secret that recovery `id` completed at `at`.
async fn record_completed_recovery(
    secrets_api: &Api<Secret>,
    backup: &Secret,
    id: &str,
    at: &str,
) -> Result<()> {
    let mut completed = completed_recoveries(backup);
    completed.insert(id.to_string(), at.to_string());
    let patch = json!({
        "metadata": {"annotations": {COMPLETED_RECOVERIES: json!(completed).to_string()}}
    });
    secrets_api
        .patch(
            &backup.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The backup key's status from the last observation.
fn backup_report(
    names: &Names,
    cluster: &KeyShardCluster,
    seen: &Seen,
    created: bool,
) -> std::result::Result<(BackupNote, BackupStatus), (String, String)> {
    let name = names.backup_secret(cluster);
    let (secret, holders_current, owner) = match (&seen.observation.backup, &seen.backup_secret) {
        (
            BackupSeen::Present {
                holders_current,
                owner,
                ..
            },
            Some(secret),
        ) => (secret, *holders_current, owner),
        (BackupSeen::Unreadable(message), _) => {
            return Err((reasons::BACKUP_KEY_INVALID.to_string(), message.clone()));
        }
        _ => {
            return Err((
                reasons::BACKUP_KEY_INVALID.to_string(),
                format!(
                    "backup-key Secret {name} not found: it is re-issued for the current \
                     holders once an instance serves the keyserver"
                ),
            ));
        }
    };
    let key = secrets::text(secret, keys::BACKUP)
        .and_then(|t| identity::parse_backup(&t))
        .map_err(|e| (reasons::BACKUP_KEY_INVALID.to_string(), e.to_string()))?;
    let holders = key.holders().len();
    let note = if created {
        BackupNote::Created
    } else if !holders_current && !matches!(owner, Owner::Other(_)) {
        BackupNote::HoldersChanged
    } else if holders < 5 || key.threshold() < 3 {
        BackupNote::Weak
    } else {
        BackupNote::Present
    };
    let issued: Option<serde_json::Value> = secret
        .annotations()
        .get(ISSUED)
        .and_then(|j| serde_json::from_str(j).ok());
    Ok((
        note,
        BackupStatus {
            secret_name: name,
            created_at: issued
                .as_ref()
                .and_then(|v| v.get("at")?.as_str().map(str::to_string))
                .or_else(|| {
                    secret
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                }),
            holders: i32::try_from(holders).unwrap_or(i32::MAX),
            threshold: i32::try_from(key.threshold()).unwrap_or(i32::MAX),
        },
    ))
}
