//! The PodDisruptionBudget: voluntary evictions take at most one instance at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, selector_labels};
use crate::crd::KeyShardCluster;

/// At most one instance down by eviction. (A standalone keyserver has one pod: a budget
/// of zero would block every node drain forever, so it too allows one.)
pub fn pod_disruption_budget(cluster: &KeyShardCluster, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cluster, names, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
