//! Onboarding: decode → bounds → keyserver → signature → freshness → rate limit →
//! enrollment → proof of possession → decision.

use kss_crypto::ids::{DeviceId, KeyserverId, ProfileId};
use kss_crypto::profile::{
    KssPublicShare, PossessionProof, ProfilePublicKeys, WorkstationPublicShare,
};
use kss_crypto::root::{ProfileClaims, TOKEN_LEN};
use kss_crypto::signing::{DevicePublicKey, SignDomain};
use kss_crypto::words::profile_words;
use kss_policy::{Request, RequestType};
use kss_proto::v1 as pb;
use kss_store::Profile;
use prost::Message;
use tracing::{Span, field, info};

use super::onboarding::{token_digest, well_formed};
use super::{Keyserver, RequestError, fields};
use crate::clock::now_ms;
use crate::decider::{AuditDraft, Job};
use crate::integrity::profile_mac;
use crate::verdict::{Reason, Verdict};

/// A new profile, as the workstation is told of it.
#[derive(Debug)]
pub struct Onboarded {
    pub profile_id: ProfileId,
    pub device_id: DeviceId,
    pub public_keys: ProfilePublicKeys,
    pub keyserver_share: KssPublicShare,
    pub keyserver_share_proof: PossessionProof,
    pub profile_token: [u8; TOKEN_LEN],
    pub words: Vec<String>,
}

/// An onboarding's fields after decoding and bounds: typed, keys decoded and validated.
#[derive(Debug)]
pub struct OnboardFields {
    pub body: pb::OnboardBody,
    pub keyserver: KeyserverId,
    pub device_key: DevicePublicKey,
    pub workstation_share: WorkstationPublicShare,
    pub proof: PossessionProof,
    /// The digest of the enrollment token, when one was given.
    pub enrollment: Option<[u8; 32]>,
}

/// Decodes an `OnboardBody` and checks every field before any other work is done.
pub fn parse_onboard(body: &[u8]) -> Result<OnboardFields, RequestError> {
    let decoded = pb::OnboardBody::decode(body)
        .map_err(|e| RequestError::invalid("body", format!("not an OnboardBody: {e}")))?;
    let keyserver: KeyserverId = fields::canonical_id("keyserver_id", &decoded.keyserver_id)?;
    fields::nonce(&decoded.nonce)?;
    fields::onboard_bounds(&decoded)?;
    let device_key = DevicePublicKey::from_bytes(&decoded.device_public_key)
        .map_err(|e| RequestError::invalid("device_public_key", e.to_string()))?;
    let workstation_share = WorkstationPublicShare::from_bytes(&decoded.workstation_share)
        .map_err(|e| RequestError::invalid("workstation_share", e.to_string()))?;
    let proof = PossessionProof::from_bytes(&decoded.possession_proof)
        .map_err(|e| RequestError::invalid("possession_proof", e.to_string()))?;
    let enrollment = match decoded.enrollment_token.as_str() {
        "" => None,
        token if well_formed(token) => Some(token_digest(token)),
        _ => {
            return Err(RequestError::invalid(
                "enrollment_token",
                "not an enrollment token (kss enrollment create prints one)",
            ));
        }
    };
    Ok(OnboardFields {
        body: decoded,
        keyserver,
        device_key,
        workstation_share,
        proof,
        enrollment,
    })
}

impl Keyserver {
    /// Onboards a new profile from a signed `OnboardBody`.
    pub async fn onboard(&self, body: &[u8], signature: &[u8]) -> Result<Onboarded, RequestError> {
        let OnboardFields {
            body: decoded,
            keyserver,
            device_key,
            workstation_share: ws,
            proof,
            enrollment,
        } = parse_onboard(body)?;
        if keyserver != self.identity.id {
            return Err(RequestError::FailedPrecondition(format!(
                "wrong keyserver ID: this is keyserver {}, the request is for {keyserver}",
                self.identity.id
            )));
        }
        device_key
            .verify(SignDomain::Onboard, body, signature)
            .map_err(|_| {
                RequestError::Unauthenticated(
                    "the signature does not verify with device_public_key",
                )
            })?;
        if !self.within_skew(decoded.timestamp_ms) {
            return Err(RequestError::FailedPrecondition(
                "the request's timestamp is too far from the keyserver's clock".into(),
            ));
        }
        if enrollment.is_none() && self.onboarding.require_token {
            return Err(RequestError::Denied {
                reason: Reason::Enrollment,
                why: "this keyserver requires an enrollment token (kss enrollment create)",
            });
        }
        if !self.onboarding.admit() {
            self.metrics.onboard_rate_limited();
            return Err(RequestError::ResourceExhausted(format!(
                "onboarding is limited to {} per minute on this instance: try again later",
                self.onboarding.per_minute()
            )));
        }
        let profile_id = ProfileId::random();
        // The pairing check runs on a verification thread, in their bounded queue (after
        // the rate limit, which bounds it further).
        let identity = std::sync::Arc::clone(&self.identity);
        let (keys, share) = self
            .verifier
            .run(move || {
                kss_crypto::profile::onboard(
                    identity.root(),
                    &identity.id,
                    &profile_id,
                    &device_key,
                    &ws,
                    &proof,
                )
            })
            .await
            .map_err(|why| RequestError::Unavailable(why.as_str()))?
            .map_err(|e| RequestError::invalid("possession_proof", e.to_string()))?;
        let device_id = DeviceId::of(&device_key);
        Span::current().record("profile", field::display(&profile_id));
        let words = profile_words(&self.identity.id, &profile_id, &keys);
        let mut row = Profile {
            profile_id: profile_id.to_string(),
            device_id: device_id.to_string(),
            device_public_key: device_key.to_bytes().to_vec(),
            workstation_share: ws.to_bytes().to_vec(),
            name: decoded.profile_name.clone(),
            words: words.clone(),
            created_at_ms: now_ms(),
            mac: Vec::new(),
        };
        row.mac = profile_mac(self.identity.row_key(), &row);
        let mut request = Request::new(RequestType::CreateProfile);
        request.profile_id = profile_id.as_bytes().to_vec();
        request.profile_words = words.clone();
        request.device_id = device_id.as_bytes().to_vec();
        let audit = AuditDraft {
            profile_id: Some(profile_id),
            device_id: Some(device_id),
            request_type: RequestType::CreateProfile.as_str().to_string(),
            meta: "[]".to_string(),
            cryptographic_id: String::new(),
            ciphertext_sha256: None,
            nonce: Some(decoded.nonce.clone()),
        };
        let outcome = self
            .decider
            .decide(Job::Onboard {
                request,
                profile: row,
                enrollment,
                audit,
            })
            .await;
        if let Verdict::Denied(reason) = outcome.verdict {
            let why = match reason {
                Reason::Enrollment => "the enrollment token is unknown, expired or used up",
                Reason::Policy => "the policy's create_profile rules do not allow it",
                Reason::Quota => "the policy's create_profile quota is used up",
                other => other.as_str(),
            };
            return Err(RequestError::Denied { reason, why });
        }
        let claims = ProfileClaims {
            keyserver: self.identity.id,
            profile: profile_id,
            device_public_key: device_key,
            workstation_share: ws,
        };
        self.profiles.forget_unknown(&profile_id);
        info!(profile = %profile_id, "profile onboarded");
        Ok(Onboarded {
            profile_id,
            device_id,
            keyserver_share: share.public(),
            keyserver_share_proof: share.onboarding_proof(
                &self.identity.id,
                &profile_id,
                &device_key,
                &ws,
            ),
            public_keys: keys,
            profile_token: self.identity.token_key().issue(&claims),
            words,
        })
    }
}
