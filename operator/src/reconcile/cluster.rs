//! Reconcile of a `KeyShardCluster`: Secrets (CA, TLS, master key, bootstrap identity,
//! backup key), the Services, the PodDisruptionBudget and the StatefulSet by server-side
//! apply; then the instances' own word, over the admin API, on the identity and the
//! policy; then the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, instrument, warn};

use super::certificates::{self, ensure_pki, tls_report};
use super::{Context, digest, now_rfc3339};
use crate::admin::{self, AdminTls, Instance, Probe};
use crate::crd::cluster::{
    DatabaseSpec, InstanceStatus, Phase, PolicyRollout, RecoveryState, RecoveryStatus,
    is_plain_file_name,
};
use crate::crd::condition::{self, reasons, types};
use crate::crd::{KeyShardCluster, KeyShardClusterStatus, KssPolicy};
use crate::desired::{self, FIELD_MANAGER, Names};
use crate::error::{Error, Result};
use crate::pki;
use crate::rollout::{self, Rollout};
use crate::secrets;
use crate::status::{
    self, BackupNote, DatabaseState, IdentityState, Observed, PolicyState, RequestedRecovery,
};

/// Keys of the Secrets the operator writes.
pub(super) mod keys {
    pub const MASTER_KEY: &str = "master.key";
    pub const IDENTITY: &str = "identity.json";
    pub const BACKUP: &str = "backup-key.json";
    pub const KEYSERVER_ID: &str = "keyserver-id";
    pub const ADMIN_KEY: &str = "admin.key";
    pub const TLS_CRT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
}

#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<KeyShardCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = match reconcile_inner(&cluster, &ctx).await {
        // Worked from a stale cache: nothing written, run again on the fresh object.
        Err(Error::Stale { what }) => {
            info!(%what, "stale; reconciling again");
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        result => result,
    };
    ctx.metrics
        .observe("KeyShardCluster", started.elapsed(), result.as_ref().err());
    if let Err(e) = &result {
        report_failure(&cluster, &ctx, e).await;
    }
    result
}

/// The field manager of the `Synced` condition a failed reconcile writes.
const FAILURE_FIELD_MANAGER: &str = "kss-operator-reconcile-error";

/// A failed reconcile shows: `Synced` false with the error, and a Warning event when it
/// starts failing (not at every retry). Best effort: the error is what is returned.
async fn report_failure(cluster: &KeyShardCluster, ctx: &Context, error: &Error) {
    let previous = cluster.status.clone().unwrap_or_default();
    let message = error.to_string();
    let conditions = status::reconcile_failed(
        &previous.conditions,
        &message,
        cluster.metadata.generation,
        &now_rfc3339(),
    );
    if conditions == previous.conditions {
        return;
    }
    let was_failing = condition::find(&previous.conditions, types::SYNCED)
        .is_some_and(|c| c.status == condition::FALSE);
    if !was_failing {
        event(ctx, cluster, true, reasons::RECONCILE_ERROR, message).await;
    }
    let Some(namespace) = cluster.namespace() else {
        return;
    };
    let synced: Vec<_> = conditions
        .iter()
        .filter(|c| c.r#type == types::SYNCED)
        .collect();
    let api: Api<KeyShardCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    // Only this condition, under a field manager of its own: an apply by the reconcile's
    // manager without the rest of the status would remove it.
    let status = json!({ "conditions": synced });
    if let Err(e) = super::apply_status(&api, cluster, None, FAILURE_FIELD_MANAGER, &status).await {
        warn!(error = %e, "could not record the failed reconcile in status");
    }
}

/// Events are best effort: a failure to record one never fails the reconcile.
pub(super) async fn event(
    ctx: &Context,
    cluster: &KeyShardCluster,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        warn!(error = %e, reason, "could not record an event");
    }
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?)
}

/// Deletes the cluster's NetworkPolicy (`spec.networkPolicy.enabled: false`), if there
/// is one and it is this cluster's (a policy of that name someone else made is left).
async fn remove_network_policy(
    policies: &Api<NetworkPolicy>,
    cluster: &KeyShardCluster,
    names: &Names,
) -> Result<()> {
    let Some(policy) = policies.get_opt(&names.network_policy()).await? else {
        return Ok(());
    };
    let ours = policy
        .metadata
        .owner_references
        .unwrap_or_default()
        .iter()
        .any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref());
    if ours {
        policies
            .delete(&names.network_policy(), &Default::default())
            .await?;
    }
    Ok(())
}

/// The owner of the Secrets kept by default when the resource is deleted (CA, master
/// key, backup key): none while `spec.backup.retainOnDelete`.
pub(super) fn retained_owner(
    cluster: &KeyShardCluster,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    if cluster.spec.backup.retain_on_delete {
        None
    } else {
        desired::owner_reference(cluster)
    }
}

/// The pods of the cluster with an IP, by name.
pub(super) async fn pods(ctx: &Context, names: &Names) -> Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let list = api
        .list(&ListParams::default().labels(&desired::selector_string(names)))
        .await?;
    let mut pods: Vec<(String, String)> = list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.name_any(), ip))
        })
        .collect();
    pods.sort();
    Ok(pods)
}

/// What keeps the pods from using `spec.database` (the message of `Degraded`
/// `DatabaseSecretMissing`), from the Secrets it names: the address, and the CA
/// certificate when one is named (`ca_secret` is that Secret, `None` if absent).
fn database_problem(
    db: &DatabaseSpec,
    uri_secret: Option<&Secret>,
    ca_secret: Option<&Secret>,
) -> Option<String> {
    let uri = &db.secret_ref;
    if uri_secret.is_none_or(|s| secrets::text(s, &uri.key).is_err()) {
        return Some(format!(
            "Secret {} with key {:?} (the database address) not found",
            uri.name, uri.key
        ));
    }
    let ca = db.ca_secret_ref.as_ref()?;
    if !is_plain_file_name(&ca.key) {
        return Some(format!(
            "spec.database.caSecretRef.key {:?} is not a plain file name",
            ca.key
        ));
    }
    match ca_secret.map(|s| secrets::text(s, &ca.key)) {
        None | Some(Err(_)) => Some(format!(
            "Secret {} with key {:?} (the database's CA certificate) not found",
            ca.name, ca.key
        )),
        Some(Ok(pem)) if !pem.contains("-----BEGIN CERTIFICATE-----") => Some(format!(
            "Secret {} key {:?} (the database's CA certificate) holds no PEM certificate",
            ca.name, ca.key
        )),
        Some(Ok(_)) => None,
    }
}

async fn reconcile_inner(cluster: &KeyShardCluster, ctx: &Context) -> Result<Action> {
    let names = Names::of(cluster).ok_or_else(|| Error::NoNamespace {
        what: format!("KeyShardCluster {}", cluster.name_any()),
    })?;
    let api: Api<KeyShardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let previous = cluster.status.clone().unwrap_or_default();
    let now = now_rfc3339();
    let generation = cluster.metadata.generation;

    if cluster.spec.paused {
        let observed = Observed {
            generation,
            paused: true,
            desired_replicas: cluster.spec.replicas,
            ready_replicas: previous.ready_replicas,
            identity: IdentityState::Pending,
            backup: Ok(BackupNote::Present),
            policy: PolicyState::Unknown,
            blocker: None,
            stalled: None,
            updating: false,
            database: DatabaseState::Unknown,
            recovery_request: requested_recovery(cluster, previous.recovery.as_ref()),
        };
        let mut status = previous.clone();
        let (conditions, phase) = status::compute(&observed, &previous.conditions, &now);
        status.conditions = conditions;
        status.phase = Some(phase);
        write_status(&api, cluster, None, status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    // What the operator refuses (an image outside --allowed-images, a Secret name that
    // is not one): said in status, nothing deployed or changed.
    if let Some(refusal) = crate::guards::refusal(cluster, &ctx.images) {
        return crate::guards::refuse(ctx, cluster, &api, &previous, refusal, &now).await;
    }
    let mut previous = previous;
    previous.conditions = crate::guards::admitted(previous.conditions, generation, &now);

    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut blocker = None;
    let mut certs_seen = certificates::Seen::default();
    let ca = match ensure_pki(ctx, cluster, &names, &secrets_api, &mut certs_seen).await? {
        Ok(ca) => Some(ca),
        Err(problem) => {
            blocker = Some(problem);
            None
        }
    };
    if let Some(db) = cluster
        .spec
        .database
        .as_ref()
        .filter(|_| cluster.is_cluster())
    {
        let uri_secret = secrets::get(&secrets_api, &db.secret_ref.name).await?;
        let ca_secret = match &db.ca_secret_ref {
            Some(ca) if ca.name == db.secret_ref.name => uri_secret.clone(),
            Some(ca) => secrets::get(&secrets_api, &ca.name).await?,
            None => None,
        };
        if let Some(problem) = database_problem(db, uri_secret.as_ref(), ca_secret.as_ref()) {
            blocker = Some((reasons::DATABASE_SECRET_MISSING.to_string(), problem));
        }
    }
    // What the instances say (the pods there are now), then the identity's steps.
    let pods = pods(ctx, &names).await?;
    let mut probes: Vec<(String, Probe, Option<Instance>)> = Vec::new();
    if let Some(ca) = &ca {
        let client_cert = ca.operator_client()?;
        let tls = AdminTls::new(
            ca.trust_pem(),
            &client_cert,
            &pki::admin_server_name(&names.cluster, &names.namespace),
        );
        let results = join_all(pods.iter().map(|(pod, ip)| admin::probe(pod, ip, &tls))).await;
        for ((pod, _), (probe, instance)) in pods.iter().zip(results) {
            probes.push((pod.clone(), probe, instance));
        }
    }
    let outcome = match super::identity::reconcile(cluster, &names, ctx, &mut probes, &now).await {
        Ok(outcome) => outcome,
        // A spec the identity cannot be made from (e.g. a holder's key that is not a
        // public key), a recovery that cannot run: said in status, retried.
        Err(Error::Identity(message)) => {
            warn!(%message, "keyserver identity");
            event(
                ctx,
                cluster,
                true,
                reasons::IDENTITY_FAILED,
                message.clone(),
            )
            .await;
            let observed = Observed {
                generation,
                paused: false,
                desired_replicas: cluster.spec.replicas,
                ready_replicas: previous.ready_replicas,
                identity: IdentityState::Failed {
                    reason: reasons::IDENTITY_FAILED.to_string(),
                    message,
                },
                backup: Err((
                    reasons::BACKUP_KEY_INVALID.to_string(),
                    "no backup key without an identity".to_string(),
                )),
                policy: PolicyState::Unknown,
                blocker,
                stalled: None,
                updating: false,
                database: DatabaseState::Unknown,
                recovery_request: requested_recovery(cluster, previous.recovery.as_ref()),
            };
            let mut status = previous.clone();
            let (conditions, phase) = status::compute(&observed, &previous.conditions, &now);
            status.conditions = conditions;
            status.phase = Some(phase);
            status.observed_generation = generation;
            write_status(&api, cluster, None, status).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(e) => return Err(e),
    };
    let our_id = outcome.standing.keyserver_id.clone();
    let identity = outcome.standing.identity.clone();
    let recovery = outcome.recovery.clone();
    let previous_identity_ready = previous
        .conditions
        .iter()
        .any(|c| c.r#type == types::IDENTITY_READY && c.status == condition::TRUE);
    match &identity {
        IdentityState::Confirmed if !previous_identity_ready => {
            event(
                ctx,
                cluster,
                false,
                "IdentityConfirmed",
                format!(
                    "an instance serves keyserver {}",
                    our_id.clone().unwrap_or_default()
                ),
            )
            .await;
        }
        IdentityState::Refused {
            reason,
            message,
            recovering: false,
        } if previous_identity_ready => {
            event(ctx, cluster, true, reason, message.clone()).await;
        }
        _ => {}
    }

    // The workload, for the pinned keyserver.
    let mut pinned_cluster = cluster.clone();
    pinned_cluster.spec.bootstrap.keyserver_id = outcome.pinned.clone();
    let cluster_for_pods = &pinned_cluster;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &names.namespace);
    apply(
        &services,
        &names.headless_service(),
        &desired::headless_service(cluster_for_pods, &names),
    )
    .await?;
    apply(
        &services,
        &names.service(),
        &desired::service(cluster_for_pods, &names),
    )
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &names.namespace);
    apply(
        &pdbs,
        &names.pdb(),
        &desired::pod_disruption_budget(cluster_for_pods, &names),
    )
    .await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &names.namespace);
    match desired::network_policy(cluster_for_pods, &names, ctx.operator_pods.as_ref()) {
        Some(policy) => {
            apply(&policies, &names.network_policy(), &policy).await?;
        }
        None => remove_network_policy(&policies, cluster, &names).await?,
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let sts = apply(
        &statefulsets,
        &names.statefulset(),
        &desired::statefulset(cluster_for_pods, &names, &ctx.default_image),
    )
    .await?;
    let sts_status = sts.status.unwrap_or_default();
    let pod_rollout = assess_rollout(ctx, &names, &sts_status).await?;

    // What each pod answered, for status.instances and DatabaseReachable.
    let answers: Vec<(String, Probe)> = probes
        .iter()
        .map(|(pod, p, _)| (pod.clone(), p.clone()))
        .collect();
    let database = DatabaseState::of(
        &answers
            .iter()
            .filter_map(|(pod, p)| match p {
                Probe::Serving(s) if Some(&s.keyserver_id) == our_id.as_ref() => {
                    Some((pod.as_str(), s.database_reachable))
                }
                _ => None,
            })
            .collect::<Vec<_>>(),
    );
    // The policy, through the first instance that serves this keyserver.
    let mut serving: Vec<Instance> = probes
        .into_iter()
        .filter_map(|(_, p, i)| match p {
            Probe::Serving(s) if Some(&s.keyserver_id) == our_id.as_ref() => i,
            _ => None,
        })
        .collect();
    let (policy, rollout, instances) =
        policy_and_rollout(cluster, ctx, &names, serving.first_mut()).await?;
    if let (Some(r), Some(old)) = (&rollout, &previous.policy)
        && r.version != old.version
    {
        event(
            ctx,
            cluster,
            false,
            "PolicyVersionStored",
            format!(
                "KssPolicy {} stored as policy version {}",
                r.name, r.version
            ),
        )
        .await;
    }

    let observed = Observed {
        generation,
        paused: false,
        desired_replicas: cluster.spec.replicas,
        ready_replicas: sts_status.ready_replicas.unwrap_or(0),
        identity: identity.clone(),
        backup: outcome.backup.clone().map(|(note, _)| note),
        policy,
        blocker,
        updating: statefulset_updating(&sts_status, sts.metadata.generation),
        stalled: match &pod_rollout {
            Rollout::Stalled {
                stall,
                previous_revision_pods,
            } => Some(stall.message(*previous_revision_pods)),
            _ => None,
        },
        database,
        recovery_request: requested_recovery(cluster, recovery.as_ref()),
    };
    let (mut conditions, phase) = status::compute(&observed, &previous.conditions, &now);
    let was_stalled = previous
        .conditions
        .iter()
        .any(|c| c.r#type == types::PROGRESSING && c.reason == reasons::ROLLOUT_STALLED);
    if let (Some(message), false) = (&observed.stalled, was_stalled) {
        warn!(%message, "rolling update stalled");
        event(
            ctx,
            cluster,
            true,
            reasons::ROLLOUT_STALLED,
            message.clone(),
        )
        .await;
    }
    let (tls_status, (tls_ok, tls_reason, tls_message), renewal_in) =
        tls_report(&certs_seen, pki::unix_now());
    let (tls_ok, tls_reason, tls_message) = match &observed.blocker {
        Some((reason, message)) if reason == reasons::TLS_SECRET_INVALID => {
            (false, reasons::TLS_SECRET_INVALID, message.clone())
        }
        _ => (tls_ok, tls_reason, tls_message),
    };
    condition::set_keeping_previous(
        &mut conditions,
        &previous.conditions,
        condition::new(
            condition::types::TLS_READY,
            tls_ok,
            tls_reason,
            tls_message,
            generation,
            &now,
        ),
    );
    let ready = sts_status.ready_replicas.unwrap_or(0);
    let status = KeyShardClusterStatus {
        phase: Some(phase),
        keyserver_id: our_id.clone(),
        replicas: sts_status.replicas,
        ready_replicas: ready,
        ready: Some(format!("{ready}/{}", cluster.spec.replicas)),
        selector: Some(desired::selector_string(&names)),
        policy_version: rollout
            .as_ref()
            .map(|r| r.version)
            .or(previous.policy_version),
        policy: rollout.or(previous.policy.clone()),
        instances: status::instances(
            instances.unwrap_or(previous.instances.clone()),
            &answers,
            our_id.as_deref(),
        ),
        backup: outcome.backup.ok().map(|(_, b)| b),
        recovery,
        conditions,
        observed_generation: generation,
        tls: Some(tls_status),
    };
    if previous.phase != Some(phase) {
        info!(?phase, "phase changed");
        let warning = matches!(phase, Phase::Failed | Phase::Degraded);
        event(
            ctx,
            cluster,
            warning,
            &format!("{phase:?}"),
            format!(
                "phase {phase:?}: {ready}/{} instances ready",
                cluster.spec.replicas
            ),
        )
        .await;
    }
    let requeue = status::requeue_after(phase, &status.conditions, jiff::Timestamp::now());
    write_status(&api, cluster, outcome.resource_version.as_deref(), status).await?;
    // Back at the next certificate's renewal moment, or when a rollout that has not
    // moved would count as stalled, if that comes first.
    let stall_in = match pod_rollout {
        Rollout::InProgress { left } => Some(left + Duration::from_secs(1)),
        _ => None,
    };
    Ok(Action::requeue(
        [renewal_in, stall_in]
            .into_iter()
            .flatten()
            .fold(requeue, Duration::min),
    ))
}

/// The rolling update's progress, from the StatefulSet's status and its pods.
async fn assess_rollout(
    ctx: &Context,
    names: &Names,
    sts_status: &k8s_openapi::api::apps::v1::StatefulSetStatus,
) -> Result<Rollout> {
    if sts_status.current_revision == sts_status.update_revision {
        return Ok(Rollout::Settled);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let pods = api
        .list(&ListParams::default().labels(&desired::selector_string(names)))
        .await?
        .items;
    let now = jiff::Timestamp::now().as_second();
    Ok(rollout::assess(
        sts_status,
        &pods,
        now,
        ctx.rollout_deadline,
    ))
}

/// `spec.recovery`, if set, and whether it has completed (by `recovery`, the last one
/// acted on).
fn requested_recovery(
    cluster: &KeyShardCluster,
    recovery: Option<&RecoveryStatus>,
) -> Option<RequestedRecovery> {
    cluster
        .spec
        .recovery
        .as_ref()
        .map(|spec| RequestedRecovery {
            id: spec.id.clone(),
            approvals_secret: spec.approvals_secret_name.clone(),
            completed_at: recovery
                .filter(|r| r.id == spec.id && r.state == RecoveryState::Completed)
                .map(|r| r.completed_at.clone().unwrap_or_default()),
        })
}

/// Whether the StatefulSet is rolling out a revision or scaling (not yet settled).
fn statefulset_updating(
    status: &k8s_openapi::api::apps::v1::StatefulSetStatus,
    generation: Option<i64>,
) -> bool {
    let behind = status
        .observed_generation
        .is_some_and(|o| Some(o) < generation);
    let revisions = match (&status.current_revision, &status.update_revision) {
        (Some(current), Some(update)) => current != update,
        _ => false,
    };
    let updated = status.updated_replicas.unwrap_or(0) < status.replicas;
    behind || revisions || updated
}

/// Stores the referenced policy (idempotent) and reads the rollout from the registry.
async fn policy_and_rollout(
    cluster: &KeyShardCluster,
    ctx: &Context,
    names: &Names,
    instance: Option<&mut Instance>,
) -> Result<(
    PolicyState,
    Option<PolicyRollout>,
    Option<Vec<InstanceStatus>>,
)> {
    let Some(instance) = instance else {
        let state = if cluster.spec.policy_ref.is_some() {
            PolicyState::Unknown
        } else {
            PolicyState::None
        };
        return Ok((state, None, None));
    };
    let mut state = PolicyState::None;
    let mut stored: Option<(String, String)> = None;
    if let Some(policy_ref) = &cluster.spec.policy_ref {
        let api: Api<KssPolicy> = Api::namespaced(ctx.client.clone(), &names.namespace);
        let name = policy_ref.name.clone();
        state = match api.get_opt(&name).await? {
            None => PolicyState::NotFound { name },
            Some(policy) => match super::policy::validate(&policy.spec.policy) {
                Err(message) => PolicyState::Invalid { name, message },
                Ok(_) => match instance.load_policy(&policy.spec.policy).await {
                    Ok(resp) => {
                        if resp.changed {
                            info!(policy = %name, version = resp.version, "stored a new policy version");
                        }
                        stored = Some((name.clone(), digest(&policy.spec.policy)));
                        PolicyState::Unknown
                    }
                    Err(Ok(rejection)) => PolicyState::Rejected {
                        name,
                        message: admin::rejection_text(&rejection),
                    },
                    Err(Err(e)) => return Err(e),
                },
            },
        };
    }
    let list = instance.list_instances().await?;
    let instances: Vec<InstanceStatus> = list
        .instances
        .iter()
        .map(|i| InstanceStatus {
            name: i.name.clone(),
            online: i.online,
            applied_policy_version: i64::try_from(i.applied_policy_version).unwrap_or(i64::MAX),
            endpoint: (!i.endpoint.is_empty()).then(|| i.endpoint.clone()),
            ..InstanceStatus::default()
        })
        .collect();
    // Deduplicate by name (the registry's key is the instance name already).
    let instances: Vec<InstanceStatus> = instances
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect();
    let version = i64::try_from(list.policy_version).unwrap_or(i64::MAX);
    let up_to_date = i32::try_from(list.up_to_date).unwrap_or(i32::MAX);
    let online = i32::try_from(list.online).unwrap_or(i32::MAX);
    let rollout = stored.map(|(name, digest)| PolicyRollout {
        name,
        digest: Some(digest),
        version,
        up_to_date,
        online,
    });
    if let Some(r) = &rollout {
        state = PolicyState::Rollout {
            name: r.name.clone(),
            version,
            up_to_date,
            online,
        };
    }
    Ok((state, rollout, Some(instances)))
}

async fn write_status(
    api: &Api<KeyShardCluster>,
    cluster: &KeyShardCluster,
    resource_version: Option<&str>,
    status: KeyShardClusterStatus,
) -> Result<()> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    super::apply_status(api, cluster, resource_version, FIELD_MANAGER, &status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    fn database(yaml: &str) -> DatabaseSpec {
        serde_saphyr::from_str(yaml).expect("database spec")
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_database_secrets_must_hold_the_address_and_the_ca() {
        let uri = secret("db", &[("uri", "mysql://kss@db/kss")]);
        let plain = database("secretRef: {name: db}\n");
        assert_eq!(database_problem(&plain, Some(&uri), None), None);
        let missing = database_problem(&plain, None, None).expect("no address");
        assert!(missing.contains("Secret db with key \"uri\""), "{missing}");

        let with_ca = database("secretRef: {name: db}\ncaSecretRef: {name: db-ca}\n");
        assert_eq!(
            with_ca.ca_secret_ref.as_ref().map(|c| c.key.as_str()),
            Some("ca.crt"),
            "the default key"
        );
        let ca = secret("db-ca", &[("ca.crt", PEM)]);
        assert_eq!(database_problem(&with_ca, Some(&uri), Some(&ca)), None);
        let absent = database_problem(&with_ca, Some(&uri), None).expect("no CA Secret");
        assert!(
            absent.contains("Secret db-ca with key \"ca.crt\" (the database's CA certificate)"),
            "{absent}"
        );
        let other_key = secret("db-ca", &[("tls.crt", PEM)]);
        assert!(database_problem(&with_ca, Some(&uri), Some(&other_key)).is_some());
        let not_pem = secret("db-ca", &[("ca.crt", "hello")]);
        let problem = database_problem(&with_ca, Some(&uri), Some(&not_pem)).expect("not PEM");
        assert!(problem.contains("holds no PEM certificate"), "{problem}");
        // The address is checked first: one message at a time.
        let problem = database_problem(&with_ca, None, Some(&ca)).expect("no address");
        assert!(problem.contains("(the database address)"), "{problem}");
    }

    #[test]
    fn a_ca_key_that_is_not_a_plain_file_name_is_refused() {
        let uri = secret("db", &[("uri", "mysql://kss@db/kss")]);
        for key in ["../ca.crt", "..ca", "a/b", ".", ".."] {
            let db = DatabaseSpec {
                ca_secret_ref: Some(crate::crd::cluster::CaSecretKeyRef {
                    name: "db".to_string(),
                    key: key.to_string(),
                }),
                ..database("secretRef: {name: db}\n")
            };
            let problem = database_problem(&db, Some(&uri), Some(&uri)).expect(key);
            assert!(
                problem.contains("not a plain file name"),
                "{key}: {problem}"
            );
        }
    }
}
