//! What a `KeyShardCluster` should own, as pure functions of the resource: names, labels,
//! the StatefulSet, the Services, the PodDisruptionBudget and the NetworkPolicy. Secrets whose content is
//! generated are in [`crate::secrets`].

mod disruption;
mod network;
mod network_policy;
mod workload;

pub use disruption::pod_disruption_budget;
pub use network::{headless_service, service};
pub use network_policy::{OperatorPods, network_policy, network_policy_enabled};
pub use workload::{DEFAULT_IMAGE, statefulset};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::KeyShardCluster;

/// Container ports of a keyserver instance.
pub mod ports {
    /// gRPC over TLS for workstations.
    pub const GRPC: i32 = 8443;
    /// The admin API over mutual TLS (the operator).
    pub const ADMIN: i32 = 9443;
    /// grpc.health.v1 in plain text (kubelet probes).
    pub const HEALTH: i32 = 8081;
    /// Prometheus metrics.
    pub const METRICS: i32 = 9464;
}

/// Label naming the KeyShardCluster an object belongs to.
pub const CLUSTER_LABEL: &str = "kss.dev/cluster";
/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "kss-operator";

/// Names of every object of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &KeyShardCluster) -> Option<Self> {
        Some(Names {
            cluster: cluster.name_any(),
            namespace: cluster.namespace()?,
        })
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    pub fn service(&self) -> String {
        self.cluster.clone()
    }
    pub fn headless_service(&self) -> String {
        format!("{}-headless", self.cluster)
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    pub fn network_policy(&self) -> String {
        self.cluster.clone()
    }
    pub fn master_key_secret(&self) -> String {
        format!("{}-master-key", self.cluster)
    }
    pub fn bootstrap_secret(&self) -> String {
        format!("{}-bootstrap", self.cluster)
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    pub fn generated_tls_secret(&self) -> String {
        format!("{}-tls", self.cluster)
    }
    pub fn admin_tls_secret(&self) -> String {
        format!("{}-admin-tls", self.cluster)
    }
    /// The workstation TLS Secret: the user's, or the generated one.
    pub fn tls_secret(&self, cluster: &KeyShardCluster) -> String {
        cluster
            .spec
            .tls
            .as_ref()
            .map(|t| t.secret_name.clone())
            .unwrap_or_else(|| self.generated_tls_secret())
    }
    pub fn backup_secret(&self, cluster: &KeyShardCluster) -> String {
        cluster
            .spec
            .backup
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-backup-key", self.cluster))
    }
    /// Where workstations reach one pod (DNS of the headless Service).
    pub fn pod_endpoint(&self, pod: &str) -> String {
        format!(
            "{pod}.{}.{}.svc:{}",
            self.headless_service(),
            self.namespace,
            ports::GRPC
        )
    }
}

/// Labels that select a cluster's pods.
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kss".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names.cluster.clone(),
        ),
    ])
}

/// Labels of every object the operator creates for a cluster.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names);
    labels.insert(
        "app.kubernetes.io/component".to_string(),
        "keyserver".to_string(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "kss-operator".to_string(),
    );
    labels.insert(CLUSTER_LABEL.to_string(), names.cluster.clone());
    labels
}

/// The label selector string of a cluster's pods.
pub fn selector_string(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: name, namespace, labels, and the controller reference
/// that makes deletion cascade.
pub fn owned_meta(cluster: &KeyShardCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: owner_reference(cluster).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Metadata of an object that outlives the cluster (retained Secrets): no owner, and
/// [`retained_labels`].
pub fn retained_meta(names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(retained_labels(names)),
        ..ObjectMeta::default()
    }
}

/// Labels of the retained Secrets (master key, backup key, CA): the operator's own and
/// [`crate::guards::GUARDED_LABEL`] (the admission policy's match), but not
/// `app.kubernetes.io/instance`, Argo CD's default tracking label: a Secret without an
/// owner carrying it would be pruned by an Argo CD application of the same name. Nothing
/// is copied from the KeyShardCluster's own labels (Flux's
/// `kustomize.toolkit.fluxcd.io/*`, Argo CD's, Helm's).
pub fn retained_labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = labels(names);
    labels.remove(RETAINED_WITHOUT);
    labels.insert(crate::guards::GUARDED_LABEL.to_string(), "true".to_string());
    labels
}

/// The label retained Secrets do not carry (see [`retained_labels`]).
pub const RETAINED_WITHOUT: &str = "app.kubernetes.io/instance";

pub fn owner_reference(cluster: &KeyShardCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// A resource and its names for the tests of what it should own.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Names;
    use crate::crd::{KeyShardCluster, KeyShardClusterSpec};

    /// `KeyShardCluster` `ns/demo` of the spec `yaml`.
    pub fn cluster(yaml: &str) -> KeyShardCluster {
        let spec: KeyShardClusterSpec = serde_saphyr::from_str(yaml).expect("spec");
        let mut c = KeyShardCluster::new("demo", spec);
        c.metadata.namespace = Some("ns".to_string());
        c.metadata.uid = Some("uid-1".to_string());
        c
    }

    pub fn names() -> Names {
        Names {
            cluster: "demo".into(),
            namespace: "ns".into(),
        }
    }
}
