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
    /// Bumped by every [`crate::Store::revoke`] that revoked something: instances poll
    /// the state and drop cached profiles when it moves.
    pub revocation_epoch: u64,
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
    /// The keyserver's HMAC over the row (32 bytes), so that a row written or changed by
    /// anyone but the keyserver is detected. Empty for rows written before the MAC was
    /// introduced (until adopted, see [`crate::Store::set_profile_mac`]). The store keeps
    /// it as given and never computes or checks it.
    pub mac: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: u64,
    pub text: String,
    pub sha256: String,
    pub loaded_at_ms: i64,
    /// The keyserver's HMAC over the version (32 bytes); empty for versions stored
    /// before the MAC was introduced. Kept as given, like [`Profile::mac`].
    pub mac: Vec<u8>,
}

/// What [`crate::Store::add_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyAdded {
    /// The version in force now.
    pub version: u64,
    /// `false`: the text was already the version in force, and nothing was stored.
    pub changed: bool,
}

/// A revoked profile, or one revoked device of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub profile_id: String,
    /// `None`: the whole profile. A whole-profile revocation and a device revocation of
    /// the same profile are distinct rows.
    pub device_id: Option<String>,
    pub revoked_at_ms: i64,
    pub reason: String,
}

/// An enrollment token, as stored: only its SHA-256 is kept, never the token, so this
/// row (and its `Debug`) reveals nothing that lets anyone enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// 32 lower-case hex characters: the token's public handle (listing, revoking).
    pub id: String,
    /// SHA-256 of the token (32 bytes).
    pub token_sha256: Vec<u8>,
    pub uses_total: u32,
    pub uses_left: u32,
    /// The token is refused from this time on (`expires_at_ms <= now`).
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub note: String,
}

/// What [`crate::DecisionTx::use_enrollment`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentUse {
    /// One use taken; this many are left.
    Used { uses_left: u32 },
    /// No enrollment has this token.
    Unknown,
    /// The token has expired (nothing taken).
    Expired,
    /// Every use was taken already.
    UsedUp,
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

/// One decision or administrative action, as recorded. No secret material: no ciphertext,
/// no share, no key, no token.
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
    /// SHA-256 of the ciphertext the keyserver verified (decrypts that got that far).
    pub ciphertext_sha256: Option<Vec<u8>>,
    /// Who did an administrative action (`tls:<certificate subject>`, `uid:<n> socket`,
    /// `uid:<n> cli`); `None` for workstation requests.
    pub actor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub record: AuditRecord,
    /// The row's link in the audit chain (see [`crate::audit_chain`]); `None` for rows
    /// written before the chain existed.
    pub chain_hash: Option<Vec<u8>>,
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
