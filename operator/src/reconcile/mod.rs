//! One reconcile of each resource kind, and what they share.

mod certificates;
pub mod cluster;
mod identity;
pub mod policy;

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The keyserver image deployed when a cluster names none.
    pub default_image: String,
    /// The images `spec.image` may name.
    pub images: crate::guards::ImageAllowlist,
    /// Validity of the certificates the operator issues.
    pub validity: crate::pki::Validity,
    /// How long a new revision's pod may stay not Ready before the rollout is stalled.
    pub rollout_deadline: std::time::Duration,
    /// The operator's own pods, the only ones the keyservers' admin ports admit (any
    /// source when unknown).
    pub operator_pods: Option<crate::desired::OperatorPods>,
}

/// The time now, RFC 3339, for conditions.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// SHA-256 of a policy text, hex.
pub fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Applies `status` to `object` as field manager `manager`, only if `object` is still at
/// the resourceVersion this reconcile read (`resource_version`, default the object's):
/// a reconcile that worked from a stale cache gets [`Error::Stale`] and runs again on the
/// fresh object, instead of writing an old view over a newer status.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    object: &K,
    resource_version: Option<&str>,
    manager: &str,
    status: &S,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let resource_version = resource_version
        .map(str::to_string)
        .or_else(|| object.meta().resource_version.clone());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "resourceVersion": resource_version },
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Stale {
            what: format!("{} {name}", K::kind(&())),
        }),
        Err(e) => Err(e.into()),
    }
}
