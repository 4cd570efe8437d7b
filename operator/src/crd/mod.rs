//! The custom resources: `KeyShardCluster` and `KssPolicy` (API group `kss.dev`, version
//! `v1alpha1`), their status and condition vocabulary.

pub mod cluster;
pub mod condition;
pub mod policy;

pub use cluster::{KeyShardCluster, KeyShardClusterSpec, KeyShardClusterStatus};
pub use condition::Condition;
pub use policy::{KssPolicy, KssPolicySpec, KssPolicyStatus};

/// The API group of every kss resource.
pub const GROUP: &str = "kss.dev";
