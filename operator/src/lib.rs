//! kss-operator: reconciles `KeyShardCluster` and `KssPolicy` resources into keyserver
//! pods that share one keyserver ID.
//!
//! - [`crd`]: the resource types and the condition vocabulary;
//! - [`desired`]: pure functions from a resource to the objects it should own;
//! - [`pki`], [`identity`]: certificates and the keyserver identity the operator creates;
//! - [`lifecycle`]: where the identity stands and the next step (a pure function);
//! - [`admin`]: the mTLS client of the keyserver's admin API;
//! - [`reconcile`]: one reconcile of each kind; [`controller`]: watches and wiring;
//! - [`leader`], [`metrics`]: leader election and Prometheus metrics;
//! - [`guards`]: what the operator refuses (images, Secret names) and the guarded labels.

pub mod admin;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod desired;
pub mod error;
pub mod guards;
pub mod identity;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod pki;
pub mod reconcile;
pub mod rollout;
pub mod secrets;
pub mod status;
