//! Building, signing and checking protocol messages. Everything here is offline (no network):
//! [`crate::KssClient`] sends what these functions build.

use std::time::{SystemTime, UNIX_EPOCH};

use kss_crypto::profile::{KSS_INDEX, PossessionProof, verify_keyserver_share};
use kss_crypto::words::profile_words;
use kss_crypto::{
    DecryptionShareBytes, DeviceId, DeviceKey, KeyserverId, KssPublicShare, ProfileId,
    ProfilePublicKeys, SignDomain, VerifiedCiphertext, WorkstationShare, Zeroizing,
};
use kss_proto::v1::{
    ApproveResponse, Decision, DenyReason, MetaInfo, OnboardBody, OnboardResponse,
    ProfileRegistration, RequestBody, RequestType, SessionParams, SignedMessage,
};
use prost::Message;
use rand::RngCore;

use crate::error::{ClientError, Result};
use crate::profile::{Profile, ProfileParts};

/// Length of the random nonce in every signed body.
pub const NONCE_LEN: usize = 16;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// 16 fresh random bytes (the thread-local CSPRNG, seeded from the OS).
pub fn fresh_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

/// Signs an encoded body: `SignedMessage { body, signature: key.sign(domain, body) }`.
pub fn sign_body(key: &DeviceKey, domain: SignDomain, body: Vec<u8>) -> SignedMessage {
    let signature = key.sign(domain, &body).to_vec();
    SignedMessage { body, signature }
}

/// Encodes `body` and signs it with the profile's device key for [`SignDomain::Request`].
pub fn sign_request(profile: &Profile, body: &RequestBody) -> SignedMessage {
    sign_body(
        profile.device_key(),
        SignDomain::Request,
        body.encode_to_vec(),
    )
}

/// Encodes `body` and signs it with `key` for [`SignDomain::Onboard`].
pub fn sign_onboard(key: &DeviceKey, body: &OnboardBody) -> SignedMessage {
    sign_body(key, SignDomain::Onboard, body.encode_to_vec())
}

/// What to ask the keyserver to approve. `nonce` and `timestamp_ms` are not here: every
/// request built from a spec gets fresh ones ([`build_request`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    /// The operation.
    pub request_type: RequestType,
    /// Authenticated metadata: `(path, complete)` pairs.
    pub auth_meta: Vec<(String, bool)>,
    /// The cryptographic id of the object (may be empty).
    pub cryptographic_id: Vec<u8>,
    /// For decrypt: the file key's ciphertext.
    pub ciphertext: Option<Vec<u8>>,
    /// Whether to send the profile registration (device key, share, name, words, token) so a
    /// keyserver recovered from backup re-learns the profile.
    pub include_registration: bool,
}

impl RequestSpec {
    /// A request of `request_type` with nothing else set.
    pub fn new(request_type: RequestType) -> Self {
        RequestSpec {
            request_type,
            auth_meta: Vec::new(),
            cryptographic_id: Vec::new(),
            ciphertext: None,
            include_registration: false,
        }
    }

    /// A decrypt of `ciphertext` for the complete paths `paths`; the cryptographic id is the
    /// ciphertext's SHA-256 digest (see [`ciphertext_id`]).
    pub fn decrypt(ciphertext: Vec<u8>, paths: &[String]) -> Self {
        RequestSpec {
            request_type: RequestType::Decrypt,
            auth_meta: paths.iter().map(|p| (p.clone(), true)).collect(),
            cryptographic_id: ciphertext_id(&ciphertext).to_vec(),
            ciphertext: Some(ciphertext),
            include_registration: false,
        }
    }

    /// Adds `(path, complete)` metadata.
    pub fn with_path(mut self, path: impl Into<String>, complete: bool) -> Self {
        self.auth_meta.push((path.into(), complete));
        self
    }
}

/// The cryptographic id the client sends for a decrypt: SHA-256 of the encoded ciphertext
/// (`kss_crypto::ciphertext::ciphertext_digest`), so audit records name the file key.
pub fn ciphertext_id(ciphertext: &[u8]) -> [u8; 32] {
    kss_crypto::ciphertext::ciphertext_digest(ciphertext)
}

/// The registration a recovered keyserver needs to re-learn `profile`.
pub fn registration(profile: &Profile) -> ProfileRegistration {
    ProfileRegistration {
        device_public_key: profile.device_public_key().to_bytes().to_vec(),
        workstation_share: profile.workstation_share().public().to_bytes().to_vec(),
        profile_name: profile.name().to_owned(),
        profile_words: profile.words().to_vec(),
        profile_token: profile.profile_token().to_vec(),
    }
}

/// The request body for `spec`, with the current time and a fresh nonce.
pub fn build_request(profile: &Profile, spec: &RequestSpec) -> RequestBody {
    RequestBody {
        keyserver_id: profile.keyserver_id().to_hex(),
        profile_id: profile.profile_id().to_hex(),
        device_id: profile.device_id().to_hex(),
        request_type: spec.request_type as i32,
        auth_meta: spec
            .auth_meta
            .iter()
            .map(|(meta, complete)| MetaInfo {
                meta: meta.clone(),
                complete: *complete,
            })
            .collect(),
        cryptographic_id: spec.cryptographic_id.clone(),
        ciphertext: spec.ciphertext.clone().unwrap_or_default(),
        timestamp_ms: now_ms(),
        nonce: fresh_nonce(),
        registration: spec.include_registration.then(|| registration(profile)),
    }
}

/// A started onboarding: the new device key and workstation share, and the signed
/// `OnboardBody` to send. [`OnboardRequest::finish`] checks the keyserver's answer and makes
/// the [`Profile`].
pub struct OnboardRequest {
    keyserver_id: KeyserverId,
    device_key: DeviceKey,
    workstation_share: WorkstationShare,
    name: String,
    body: OnboardBody,
}

impl std::fmt::Debug for OnboardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnboardRequest")
            .field("keyserver_id", &self.keyserver_id)
            .field("device_public_key", &self.device_key.public())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OnboardRequest {
    /// Generates a device key and a workstation share and builds the onboarding body for
    /// `keyserver_id` (current time, fresh nonce), with an enrollment token if the
    /// keyserver requires one.
    pub fn new(keyserver_id: &KeyserverId, name: &str, enrollment_token: Option<&str>) -> Self {
        Self::with_keys(
            keyserver_id,
            DeviceKey::generate(),
            WorkstationShare::generate(),
            name,
            enrollment_token,
        )
    }

    /// As [`OnboardRequest::new`] with given keys.
    pub fn with_keys(
        keyserver_id: &KeyserverId,
        device_key: DeviceKey,
        workstation_share: WorkstationShare,
        name: &str,
        enrollment_token: Option<&str>,
    ) -> Self {
        let device_pk = device_key.public();
        let body = OnboardBody {
            keyserver_id: keyserver_id.to_hex(),
            device_public_key: device_pk.to_bytes().to_vec(),
            workstation_share: workstation_share.public().to_bytes().to_vec(),
            possession_proof: workstation_share
                .proof_of_possession(keyserver_id, &device_pk)
                .to_bytes()
                .to_vec(),
            profile_name: name.to_owned(),
            // The keyserver derives the words; none are claimed.
            profile_words: Vec::new(),
            timestamp_ms: now_ms(),
            nonce: fresh_nonce(),
            enrollment_token: enrollment_token.unwrap_or_default().to_owned(),
        };
        OnboardRequest {
            keyserver_id: *keyserver_id,
            device_key,
            workstation_share,
            name: name.to_owned(),
            body,
        }
    }

    /// The body that is signed and sent.
    pub fn body(&self) -> &OnboardBody {
        &self.body
    }

    /// The new device key.
    pub fn device_key(&self) -> &DeviceKey {
        &self.device_key
    }

    /// The new workstation share.
    pub fn workstation_share(&self) -> &WorkstationShare {
        &self.workstation_share
    }

    /// The signed message for `KeyServer/Onboard`.
    pub fn signed_message(&self) -> SignedMessage {
        sign_onboard(&self.device_key, &self.body)
    }

    /// Checks the keyserver's answer and makes the profile: the device id must be
    /// `DeviceId::of(our device public key)`, the keyserver must prove possession of its
    /// share over the onboarding transcript (so that it cannot pick a rogue share that gives
    /// it the whole key), the public key set must be exactly the one through our public
    /// share (index 0) and the keyserver's share (index 1), and the verification words must
    /// be the ones derived from that key set.
    pub fn finish(self, response: OnboardResponse) -> Result<Profile> {
        let expected = DeviceId::of(&self.device_key.public());
        let got: DeviceId = response.device_id.parse().map_err(|e| {
            ClientError::MalformedResponse(format!("onboard response device_id: {e}"))
        })?;
        if got != expected {
            return Err(ClientError::DeviceIdMismatch {
                expected: expected.to_hex(),
                got: got.to_hex(),
            });
        }
        let profile_id: ProfileId = response.profile_id.parse().map_err(|e| {
            ClientError::MalformedResponse(format!("onboard response profile_id: {e}"))
        })?;
        let keyserver_share =
            KssPublicShare::from_bytes(&response.keyserver_share).map_err(|e| {
                ClientError::MalformedResponse(format!("onboard response keyserver_share: {e}"))
            })?;
        let received = ProfilePublicKeys::from_bytes(&response.public_key_set).map_err(|e| {
            ClientError::MalformedResponse(format!("onboard response public_key_set: {e}"))
        })?;
        let proof = PossessionProof::from_bytes(&response.keyserver_share_proof)
            .map_err(|_| ClientError::KeyserverShareUnproven)?;
        verify_keyserver_share(
            &self.keyserver_id,
            &profile_id,
            &self.device_key.public(),
            &self.workstation_share.public(),
            &keyserver_share,
            &proof,
        )
        .map_err(|_| ClientError::KeyserverShareUnproven)?;
        let expected_keys =
            ProfilePublicKeys::from_shares(&self.workstation_share.public(), &keyserver_share);
        if received.to_bytes() != expected_keys.to_bytes() || received.validate().is_err() {
            return Err(ClientError::PublicKeySetMismatch);
        }
        let words = profile_words(&self.keyserver_id, &profile_id, &received);
        if response.profile_words != words {
            return Err(ClientError::WordsMismatch);
        }
        Profile::new(ProfileParts {
            keyserver_id: self.keyserver_id,
            profile_id,
            device_key: self.device_key,
            workstation_share: self.workstation_share,
            public_keys: received,
            keyserver_share,
            profile_token: response.profile_token,
            name: self.name,
            words,
        })
    }
}

/// The keyserver's decision on one request.
#[derive(Clone, Debug, PartialEq)]
pub struct ApproveOutcome {
    /// Whether the request was approved (`DECISION_APPROVED`).
    pub approved: bool,
    /// The decision as sent (an unknown value reads as `Unspecified`).
    pub decision: Decision,
    /// Why it was denied; `None` when approved.
    pub reason: Option<DenyReason>,
    /// The raw `reason` value as sent (for values this client does not know).
    pub reason_code: i32,
    /// The audit record of the decision.
    pub audit_id: u64,
    /// For an approved decrypt: the keyserver's decryption share (not yet verified).
    pub decryption_share: Vec<u8>,
    /// Session bounds, when a session-params-rule applied.
    pub session: Option<SessionParams>,
}

impl ApproveOutcome {
    /// Reads a response.
    pub fn from_response(response: ApproveResponse) -> Self {
        let decision = Decision::try_from(response.decision).unwrap_or(Decision::Unspecified);
        let approved = decision == Decision::Approved;
        ApproveOutcome {
            approved,
            decision,
            reason: (!approved)
                .then(|| DenyReason::try_from(response.reason).unwrap_or(DenyReason::Unspecified)),
            reason_code: response.reason,
            audit_id: response.audit_id,
            decryption_share: response.decryption_share,
            session: response.session,
        }
    }

    /// The short name of the denial reason (`"policy"`, `"quota"`, ...), `None` if approved.
    pub fn reason_name(&self) -> Option<String> {
        if self.approved {
            return None;
        }
        Some(deny_reason_name(self.reason_code))
    }

    /// The outcome as JSON: `{"decision":"approved"|"denied","reason":..,"audit_id":..,
    /// "decryption_share":hex|null,"session":{..}|null}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "decision": decision_name(self.decision),
            "reason": self.reason_name(),
            "audit_id": self.audit_id,
            "decryption_share": (!self.decryption_share.is_empty())
                .then(|| hex::encode(&self.decryption_share)),
            "session": self.session.as_ref().map(|s| serde_json::json!({
                "max_request_count": s.max_request_count,
                "max_time_seconds": s.max_time_seconds,
                "end_by_time": s.end_by_time,
            })),
        })
    }
}

/// `"approved"`, `"denied"` or `"unspecified"`.
pub fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Approved => "approved",
        Decision::Denied => "denied",
        Decision::Unspecified => "unspecified",
    }
}

/// The short name of a `DenyReason` value: `"policy"`, `"quota"`, `"disabled"`,
/// `"signature"`, `"unknown_profile"`, `"unavailable"`, `"stale"`, `"replayed"`,
/// `"invalid_ciphertext"`, `"wrong_keyserver"`, `"revoked"`, `"enrollment"`, `"unspecified"`,
/// or `"reason_N"` for a value
/// this client does not know.
pub fn deny_reason_name(code: i32) -> String {
    match DenyReason::try_from(code) {
        Ok(reason) => reason
            .as_str_name()
            .trim_start_matches("DENY_REASON_")
            .to_ascii_lowercase(),
        Err(_) => format!("reason_{code}"),
    }
}

/// Verifies the keyserver's decryption share (index 1) of `ct`, makes the workstation's own
/// (index 0), and combines them: the plaintext (the file key).
pub fn combine_file_key(
    profile: &Profile,
    ct: &VerifiedCiphertext,
    keyserver_share: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let kss_share =
        DecryptionShareBytes::from_bytes(keyserver_share).map_err(ClientError::InvalidShare)?;
    profile
        .public_keys()
        .verify_share(KSS_INDEX, &kss_share, ct)
        .map_err(ClientError::InvalidShare)?;
    let ws_share = profile.workstation_share().decryption_share(ct);
    let key = profile
        .public_keys()
        .combine(&ws_share, &kss_share, ct)
        .map_err(ClientError::crypto("combining decryption shares"))?;
    Ok(Zeroizing::new(key))
}

/// Encrypts a file key to the profile's public key set: the ciphertext bytes.
pub fn encrypt_file_key(profile: &Profile, key: &[u8]) -> Vec<u8> {
    profile.public_keys().encrypt(key).into_vec()
}

/// Verifies a ciphertext locally (as the keyserver will) before asking for a share of it.
pub fn verify_ciphertext(ciphertext: &[u8]) -> Result<VerifiedCiphertext> {
    kss_crypto::ciphertext::verify(ciphertext).map_err(ClientError::InvalidCiphertext)
}

/// The outcome of a decrypt.
pub enum DecryptOutcome {
    /// Approved: the file key, recovered from two verified shares.
    Approved {
        /// The plaintext file key (secret).
        file_key: Zeroizing<Vec<u8>>,
        /// The audit record of the approval.
        audit_id: u64,
    },
    /// Denied.
    Denied {
        /// Why (`DenyReason` value; see [`deny_reason_name`]).
        reason_code: i32,
        /// The audit record of the denial.
        audit_id: u64,
    },
}

impl DecryptOutcome {
    /// Whether the decrypt was approved.
    pub fn is_approved(&self) -> bool {
        matches!(self, DecryptOutcome::Approved { .. })
    }

    /// The file key, if approved.
    pub fn file_key(&self) -> Option<&[u8]> {
        match self {
            DecryptOutcome::Approved { file_key, .. } => Some(file_key),
            DecryptOutcome::Denied { .. } => None,
        }
    }

    /// The denial reason's short name, if denied.
    pub fn reason_name(&self) -> Option<String> {
        match self {
            DecryptOutcome::Approved { .. } => None,
            DecryptOutcome::Denied { reason_code, .. } => Some(deny_reason_name(*reason_code)),
        }
    }

    /// The audit id.
    pub fn audit_id(&self) -> u64 {
        match self {
            DecryptOutcome::Approved { audit_id, .. } | DecryptOutcome::Denied { audit_id, .. } => {
                *audit_id
            }
        }
    }
}

impl std::fmt::Debug for DecryptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecryptOutcome::Approved { file_key, audit_id } => f
                .debug_struct("Approved")
                .field(
                    "file_key",
                    &format_args!("<{} bytes redacted>", file_key.len()),
                )
                .field("audit_id", audit_id)
                .finish(),
            DecryptOutcome::Denied {
                reason_code,
                audit_id,
            } => f
                .debug_struct("Denied")
                .field("reason", &deny_reason_name(*reason_code))
                .field("audit_id", audit_id)
                .finish(),
        }
    }
}

/// Turns an approval of a decrypt of `ct` into a [`DecryptOutcome`]: an approval must carry a
/// decryption share that verifies.
pub fn finish_decrypt(
    profile: &Profile,
    ct: &VerifiedCiphertext,
    outcome: &ApproveOutcome,
) -> Result<DecryptOutcome> {
    if !outcome.approved {
        return Ok(DecryptOutcome::Denied {
            reason_code: outcome.reason_code,
            audit_id: outcome.audit_id,
        });
    }
    if outcome.decryption_share.is_empty() {
        return Err(ClientError::MalformedResponse(
            "an approved decrypt carries no decryption share".into(),
        ));
    }
    let file_key = combine_file_key(profile, ct, &outcome.decryption_share)?;
    Ok(DecryptOutcome::Approved {
        file_key,
        audit_id: outcome.audit_id,
    })
}
