//! The rows a store holds, as plain values.

use kss_policy::Counter;

/// The keyserver's identity. The root secret is sealed: this row alone reveals nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub keyserver_id: String,
    pub sealed_root: Vec<u8>,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("keyserver_id", &self.keyserver_id)
            .field("sealed_root", &"<sealed>")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// Switches shared by every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub enabled: bool,
    /// 0: no policy loaded.
    pub policy_version: u64,
    pub quota_epoch: u64,
}

/// An onboarded profile: public material only (the keyserver's share is derived from the
/// root secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub profile_id: String,
    pub device_id: String,
    pub device_public_key: Vec<u8>,
    pub workstation_share: Vec<u8>,
    pub name: String,
    pub words: Vec<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: u64,
    pub text: String,
    pub sha256: String,
    pub loaded_at_ms: i64,
}

/// What [`crate::Store::add_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyAdded {
    /// The version in force now.
    pub version: u64,
    /// `false`: the text was already the version in force, and nothing was stored.
    pub changed: bool,
}

/// A persistent throttle counter of one (rule id, profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCounter {
    pub rule_id: String,
    pub profile_id: String,
    pub counter: Counter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
        }
    }
}

/// One decision, as recorded. No secret material: no ciphertext, no share, no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at_ms: i64,
    pub instance_id: String,
    /// As claimed by the request; `None` when it could not be read.
    pub profile_id: Option<String>,
    pub device_id: Option<String>,
    pub request_type: String,
    /// The request's metadata as JSON: `[{"meta": "...", "complete": true}]`.
    pub meta: String,
    /// Hex.
    pub cryptographic_id: String,
    pub decision: Decision,
    pub rule_set: Option<u32>,
    /// The deny reason code; `None` for approvals.
    pub reason: Option<String>,
    pub policy_version: Option<u64>,
    /// Only for requests whose signature verified (a nonce is accepted once).
    pub nonce: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub record: AuditRecord,
}

/// Which audit records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub profile_id: Option<String>,
    pub decision: Option<Decision>,
    pub request_type: Option<String>,
    pub since_ms: Option<i64>,
    /// Only records with an id below this (paging).
    pub before_id: Option<u64>,
    pub limit: u32,
}
