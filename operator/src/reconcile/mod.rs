//! One reconcile of each resource kind, and what they share.

pub mod cluster;
pub mod policy;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::Recorder;

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
