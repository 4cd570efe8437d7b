//! `KssPolicy`: a keyserver policy (the language of `keyserver.yml`) as a resource.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// A keyserver policy. `KeyShardCluster`s reference it by name (`spec.policyRef`); a
/// change becomes a new policy version in each such keyserver's database.
// kube's derive repeats `type_ = ...` in each printcolumn: not a real duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kss.dev",
    version = "v1alpha1",
    kind = "KssPolicy",
    plural = "ksspolicies",
    namespaced,
    shortname = "ksspol",
    category = "kss",
    status = "KssPolicyStatus",
    doc = "A keyserver policy, in the language of keyserver.yml, validated by the keyserver's own engine.",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(name = "Rules", type_ = "integer", json_path = ".status.summary.rules"),
    printcolumn(
        name = "Clusters",
        type_ = "integer",
        json_path = ".status.clusterCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KssPolicySpec {
    /// The policy text, exactly as in a `keyserver.yml` file (YAML 1.1 booleans such as
    /// `yes` keep their meaning because the text is passed on unchanged). Use a literal
    /// block: `policy: |`.
    #[schemars(length(min = 1, max = 262144))]
    pub policy: String,
}

/// Validation result and rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KssPolicyStatus {
    /// SHA-256 of `spec.policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Counts of the valid policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PolicySummary>,
    /// Migration warnings: constructs whose meaning differs from the original engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Clusters referencing this policy and how far it rolled out in each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub clusters: Vec<ClusterRollout>,
    /// Number of clusters referencing this policy.
    #[serde(default)]
    pub cluster_count: i32,
    /// `Valid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What the engine counted in a valid policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// Request types the policy decides (e.g. decrypt, search).
    pub request_types: i32,
    /// Rule sets, over all request types.
    pub rule_sets: i32,
    /// Rules, over all rule sets.
    pub rules: i32,
    /// Throttle (quota) rules.
    pub throttles: i32,
    /// Throttle rules whose counters live in the database.
    pub persistent_throttles: i32,
}

/// The rollout of this policy in one KeyShardCluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRollout {
    /// The KeyShardCluster.
    pub cluster: String,
    /// Whether the cluster enforces this policy's current text.
    pub in_force: bool,
    /// The policy version in the cluster's database.
    #[serde(default)]
    pub version: i64,
    /// Online instances that applied it, of `online`.
    #[serde(default)]
    pub up_to_date: i32,
    /// Online instances of the cluster.
    #[serde(default)]
    pub online: i32,
}
