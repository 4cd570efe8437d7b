//! Approvals: decode → bounds → identity → signature → freshness → ciphertext → decision.

use std::sync::Arc;

use kss_crypto::ids::{DeviceId, KeyserverId, ProfileId};
use kss_crypto::profile::WorkstationPublicShare;
use kss_crypto::root::ProfileClaims;
use kss_crypto::signing::{DevicePublicKey, SignDomain};
use kss_policy::{Request, RequestType, SessionParams};
use kss_proto::v1 as pb;
use kss_store::Profile;
use prost::Message;
use tracing::{Span, field, info, warn};

use super::profiles::{KnownProfile, Lookup};
use super::verifier::NotVerified;
use super::{Keyserver, RequestError, fields};
use crate::clock::now_ms;
use crate::decider::{AuditDraft, Job};
use crate::integrity::profile_mac;
use crate::verdict::{Reason, Verdict};

/// The keyserver's answer to an approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub request_type: RequestType,
    pub verdict: Verdict,
    /// The audit record; 0 when the request was refused before it was authenticated
    /// (nothing of it is stored) or the database failed.
    pub audit_id: u64,
    /// For an approved decrypt: this keyserver's decryption share.
    pub decryption_share: Vec<u8>,
    pub session: Option<SessionParams>,
    /// Denied before its signature verified (nothing of it was stored).
    pub unauthenticated: bool,
}

impl Approval {
    fn unauthenticated(request_type: RequestType, reason: Reason) -> Self {
        Approval {
            request_type,
            verdict: Verdict::Denied(reason),
            audit_id: 0,
            decryption_share: Vec::new(),
            session: None,
            unauthenticated: true,
        }
    }
}

/// An approval request's fields after decoding and bounds: typed, canonical.
#[derive(Debug)]
pub struct ApprovalFields {
    pub body: pb::RequestBody,
    pub request_type: RequestType,
    pub keyserver: KeyserverId,
    pub profile: ProfileId,
    pub device: DeviceId,
}

fn meta_json(meta: &[pb::MetaInfo]) -> String {
    let entries: Vec<serde_json::Value> = meta
        .iter()
        .map(|m| serde_json::json!({"meta": m.meta, "complete": m.complete}))
        .collect();
    serde_json::Value::Array(entries).to_string()
}

/// Decodes a `RequestBody` and checks every field (ids canonical, nonce, bounds) before any
/// other work is done.
pub fn parse_approval(body: &[u8]) -> Result<ApprovalFields, RequestError> {
    let body = pb::RequestBody::decode(body)
        .map_err(|e| RequestError::invalid("body", format!("not a RequestBody: {e}")))?;
    let request_type = fields::request_type(body.request_type)?;
    let keyserver = fields::canonical_id("keyserver_id", &body.keyserver_id)?;
    let profile = fields::canonical_id("profile_id", &body.profile_id)?;
    let device = fields::canonical_id("device_id", &body.device_id)?;
    fields::nonce(&body.nonce)?;
    fields::request_bounds(&body)?;
    if request_type == RequestType::Decrypt && body.ciphertext.is_empty() {
        return Err(RequestError::invalid(
            "ciphertext",
            "a decrypt request needs one",
        ));
    }
    Ok(ApprovalFields {
        body,
        request_type,
        keyserver,
        profile,
        device,
    })
}

/// Identity and signature: the profile the request names, proven by its device's signature.
enum Proven {
    Yes {
        profile: Arc<KnownProfile>,
        register: Option<Box<Profile>>,
    },
    /// Refused before it was authenticated: nothing of it is stored.
    No(Reason),
}

impl Keyserver {
    /// Decides one signed approval request.
    pub async fn approve(&self, body: &[u8], signature: &[u8]) -> Result<Approval, RequestError> {
        let parsed = parse_approval(body)?;
        let request_type = parsed.request_type;
        let span = Span::current();
        span.record("request_type", request_type.as_str());
        span.record("profile", field::display(&parsed.profile));

        // One deadline for all of this request's waits on the database.
        let deadline = self.db_deadline.from_now();
        let (profile, register) = match self.prove(&parsed, body, signature, deadline).await {
            Proven::Yes { profile, register } => (profile, register),
            Proven::No(reason) => {
                self.refused(
                    "Approve",
                    reason.as_str(),
                    "denied before its signature verified",
                );
                return Ok(Approval::unauthenticated(request_type, reason));
            }
        };
        let body = parsed.body;
        let mut audit = AuditDraft {
            profile_id: Some(profile.id),
            device_id: Some(profile.device_id),
            request_type: request_type.as_str().to_string(),
            meta: meta_json(&body.auth_meta),
            cryptographic_id: hex::encode(&body.cryptographic_id),
            nonce: None,
            ciphertext_sha256: None,
        };
        if !self.within_skew(body.timestamp_ms) {
            return Ok(self
                .deny(request_type, Reason::Stale, audit, deadline)
                .await);
        }
        if profile.revoked {
            return Ok(self
                .deny(request_type, Reason::Revoked, audit, deadline)
                .await);
        }
        audit.nonce = Some(body.nonce.clone());
        if !self.switches.borrow().enabled {
            return Ok(self
                .deny(request_type, Reason::Disabled, audit, deadline)
                .await);
        }
        // A share is released only for a verified ciphertext: verify before deciding, so
        // that an invalid one consumes no quota.
        let verified = if request_type == RequestType::Decrypt {
            let checked = match self
                .verifier
                .verify(profile.id.as_ref(), body.ciphertext)
                .await
            {
                Ok(Ok(verified)) => Ok(verified),
                Ok(Err(_)) => Err(Reason::InvalidCiphertext),
                // Refused at once rather than queued without limit.
                Err(NotVerified::QueueFull) => Err(Reason::Unavailable),
                Err(NotVerified::ShuttingDown) => {
                    return Err(RequestError::Unavailable("shutting down"));
                }
            };
            match checked {
                Ok(verified) => {
                    // What was verified, beside what the client claims (cryptographic_id).
                    audit.ciphertext_sha256 = Some(*verified.digest());
                    Some(verified)
                }
                Err(reason) => {
                    // Not decided on: the nonce is not used up.
                    audit.nonce = None;
                    return Ok(self.deny(request_type, reason, audit, deadline).await);
                }
            }
        } else {
            None
        };
        let request = Request {
            request_type,
            profile_id: profile.id.as_bytes().to_vec(),
            profile_words: profile.words.clone(),
            device_id: profile.device_id.as_bytes().to_vec(),
            auth_meta: fields::policy_meta(body.auth_meta),
            cryptographic_id: body.cryptographic_id,
        };
        let outcome = self
            .decider
            .decide_by(
                Job::Evaluate {
                    profile: profile.id,
                    request,
                    register: register.map(|p| *p),
                    audit,
                },
                deadline,
            )
            .await;
        let Verdict::Approved { session, .. } = outcome.verdict else {
            return Ok(Approval {
                request_type,
                verdict: outcome.verdict,
                audit_id: outcome.audit_id.unwrap_or(0),
                decryption_share: Vec::new(),
                session: None,
                unauthenticated: false,
            });
        };
        let decryption_share = verified
            .map(|ct| {
                self.shares
                    .decryption_share(profile.id, &profile.share, &ct)
                    .to_vec()
            })
            .unwrap_or_default();
        Ok(Approval {
            request_type,
            verdict: outcome.verdict,
            audit_id: outcome.audit_id.unwrap_or(0),
            decryption_share,
            session,
            unauthenticated: false,
        })
    }

    async fn deny(
        &self,
        request_type: RequestType,
        reason: Reason,
        audit: AuditDraft,
        deadline: tokio::time::Instant,
    ) -> Approval {
        let outcome = self
            .decider
            .decide_by(Job::Deny { reason, audit }, deadline)
            .await;
        Approval {
            request_type,
            verdict: outcome.verdict,
            audit_id: outcome.audit_id.unwrap_or(0),
            decryption_share: Vec::new(),
            session: None,
            unauthenticated: false,
        }
    }

    async fn prove(
        &self,
        parsed: &ApprovalFields,
        body: &[u8],
        signature: &[u8],
        deadline: tokio::time::Instant,
    ) -> Proven {
        if parsed.keyserver != self.identity.id {
            return Proven::No(Reason::WrongKeyserver);
        }
        self.profiles
            .follow_epoch(self.switches.borrow().revocation_epoch);
        let (profile, register) = match self.profiles.get_until(&parsed.profile, deadline).await {
            Ok(Lookup::Known(p)) => (p, None),
            Ok(Lookup::Unknown) => {
                match self
                    .reregister(&parsed.profile, parsed.body.registration.as_ref(), deadline)
                    .await
                {
                    Ok(Some((p, row))) => {
                        // Recorded with this request's decision: read from the store next.
                        self.profiles.forget_unknown(&parsed.profile);
                        (p, Some(Box::new(row)))
                    }
                    Ok(None) => return Proven::No(Reason::UnknownProfile),
                    Err(reason) => return Proven::No(reason),
                }
            }
            Err(e) => {
                self.metrics.db_error("profile");
                warn!(error = %e, "reading a profile failed");
                return Proven::No(Reason::Unavailable);
            }
        };
        if parsed.device != profile.device_id {
            return Proven::No(Reason::UnknownProfile);
        }
        if profile
            .device_key
            .verify(SignDomain::Request, body, signature)
            .is_err()
        {
            return Proven::No(Reason::Signature);
        }
        Proven::Yes { profile, register }
    }

    /// Learns a profile this database does not hold from a valid registration token (after a
    /// recovery into a new database). The words are derived, never taken from the
    /// registration; a revoked profile is never re-registered.
    async fn reregister(
        &self,
        profile_id: &ProfileId,
        registration: Option<&pb::ProfileRegistration>,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(Arc<KnownProfile>, Profile)>, Reason> {
        let Some(reg) = registration else {
            return Ok(None);
        };
        let (Ok(device_key), Ok(ws)) = (
            DevicePublicKey::from_bytes(&reg.device_public_key),
            WorkstationPublicShare::from_bytes(&reg.workstation_share),
        ) else {
            return Ok(None);
        };
        let claims = ProfileClaims {
            keyserver: self.identity.id,
            profile: *profile_id,
            device_public_key: device_key,
            workstation_share: ws,
        };
        if self
            .identity
            .token_key()
            .verify(&claims, &reg.profile_token)
            .is_err()
        {
            return Ok(None);
        }
        let device_id = DeviceId::of(&claims.device_public_key);
        match self
            .profiles
            .is_revoked(profile_id, &device_id, deadline)
            .await
        {
            Ok(false) => {}
            Ok(true) => return Err(Reason::Revoked),
            Err(e) => {
                self.metrics.db_error("revocations");
                warn!(error = %e, "reading revocations failed");
                return Err(Reason::Unavailable);
            }
        }
        let mut row = Profile {
            profile_id: profile_id.to_string(),
            device_id: device_id.to_string(),
            device_public_key: claims.device_public_key.to_bytes().to_vec(),
            workstation_share: ws.to_bytes().to_vec(),
            name: reg.profile_name.clone(),
            words: Vec::new(),
            created_at_ms: now_ms(),
            mac: Vec::new(),
        };
        let known = self
            .profiles
            .from_row(&row, &[])
            .map_err(|_| Reason::UnknownProfile)?;
        row.words = known.words.clone();
        row.mac = profile_mac(self.identity.row_key(), &row);
        info!(profile = %profile_id, "profile re-registered from its token");
        Ok(Some((Arc::new(known), row)))
    }
}
