//! The controllers: `KeyShardCluster` (owning Secrets, Services, the StatefulSet, the
//! PodDisruptionBudget and the NetworkPolicy, and watching the pods and referenced policies) and `KssPolicy`
//! (watching the clusters that reference it). Errors requeue with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::crd::{KeyShardCluster, KssPolicy};
use crate::desired::CLUSTER_LABEL;
use crate::error::Error;
use crate::reconcile::{self, Context};

/// Which namespaces to watch: all, or one.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Backoff per object: 1 s, 2 s, 4 s … up to 5 min, reset by a success.
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    fn key<K: ResourceExt>(obj: &K) -> String {
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
    }

    fn next<K: ResourceExt>(&self, obj: &K) -> Duration {
        let Ok(mut map) = self.failures.lock() else {
            return Duration::from_secs(5);
        };
        let n = map.entry(Self::key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    fn reset<K: ResourceExt>(&self, obj: &K) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&Self::key(obj));
        }
    }
}

/// The delay after `failures` consecutive failures.
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// Wraps a reconcile so that a success resets the object's backoff.
fn reconciler<K, F, Fut>(
    backoff: Arc<Backoff>,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> BoxFuture<'static, Result<Action, Error>>
where
    K: ResourceExt + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let backoff = Arc::clone(&backoff);
        Box::pin(async move {
            let result = reconcile(Arc::clone(&obj), ctx).await;
            if result.is_ok() {
                backoff.reset(obj.as_ref());
            }
            result
        })
    }
}

/// A failed reconcile is retried after the object's next backoff delay.
fn error_policy<K: ResourceExt>(
    backoff: Arc<Backoff>,
    kind: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, error, _ctx| {
        let delay = backoff.next(obj.as_ref());
        warn!(kind, name = %obj.name_any(), %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

/// Logs what the controller stream reports besides reconcile results (watch errors).
async fn log_outcome<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        warn!(error = %e, "controller");
    }
}

/// Runs both controllers until the stream ends (shutdown signal): over all namespaces
/// when `namespaces` is empty, else one pair of controllers per namespace, whose watches
/// and clients are namespaced (so that the operator needs RBAC in those namespaces only).
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>) {
    if namespaces.is_empty() {
        run_in(ctx, None).await;
    } else {
        info!(namespaces = %namespaces.join(","), "watching only these namespaces");
        futures::future::join_all(
            namespaces
                .into_iter()
                .map(|ns| run_in(Arc::clone(&ctx), Some(ns))),
        )
        .await;
    }
}

/// Both controllers over one namespace, or all (`None`).
async fn run_in(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kss-operator");
    let clusters = api::<KeyShardCluster>(&client, ns);
    let backoff = Arc::new(Backoff::default());

    let cluster_controller = Controller::new(clusters.clone(), watcher::Config::default());
    let store = cluster_controller.store();
    let policy_store = store.clone();
    let clusters_done = cluster_controller
        .owns(api::<StatefulSet>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<Secret>(&client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(api::<NetworkPolicy>(&client, ns), owned.clone())
        .watches(api::<Pod>(&client, ns), owned.clone(), |pod| {
            let cluster = pod.labels().get(CLUSTER_LABEL)?.clone();
            Some(ObjectRef::<KeyShardCluster>::new(&cluster).within(&pod.namespace()?))
        })
        .watches(
            api::<KssPolicy>(&client, ns),
            watcher::Config::default(),
            move |policy| {
                let name = policy.name_any();
                let namespace = policy.namespace();
                policy_store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == namespace
                            && c.spec.policy_ref.as_ref().is_some_and(|r| r.name == name)
                    })
                    .map(|c| ObjectRef::from(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            reconciler(Arc::clone(&backoff), reconcile::cluster::reconcile),
            error_policy(backoff, "KeyShardCluster"),
            Arc::clone(&ctx),
        )
        .for_each(log_outcome);

    let policy_backoff = Arc::new(Backoff::default());
    let policies_done = Controller::new(api::<KssPolicy>(&client, ns), watcher::Config::default())
        .watches(clusters, watcher::Config::default(), |cluster| {
            let name = cluster.spec.policy_ref.as_ref()?.name.clone();
            Some(ObjectRef::<KssPolicy>::new(&name).within(&cluster.namespace()?))
        })
        .shutdown_on_signal()
        .run(
            reconciler(Arc::clone(&policy_backoff), reconcile::policy::reconcile),
            error_policy(policy_backoff, "KssPolicy"),
            Arc::clone(&ctx),
        )
        .for_each(log_outcome);

    ctx.metrics.set_ready();
    info!("controllers running");
    futures::join!(clusters_done, policies_done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
    }
}
