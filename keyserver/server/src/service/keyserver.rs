//! `kss.v1.KeyServer`: onboarding and approvals for workstations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kss_crypto::ids::{DeviceId, ProfileId};
use kss_crypto::profile::{PossessionProof, WorkstationPublicShare};
use kss_crypto::root::ProfileClaims;
use kss_crypto::signing::{DevicePublicKey, SignDomain};
use kss_policy::{MetaInfo, Request, RequestType};
use kss_proto::v1 as pb;
use kss_proto::v1::key_server_server::KeyServer;
use kss_store::{Profile, Store};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request as GrpcRequest, Response, Status};
use tracing::{Span, field, info, instrument, warn};

use super::profiles::{KnownProfile, ProfileCache};
use super::shares::ShareCache;
use super::verifier::{NotVerified, Verifier};
use crate::decider::{AuditDraft, Decider, Job, Outcome, Reason, Verdict};
use crate::identity::{KeyserverIdentity, now_ms};
use crate::metrics::Metrics;
use crate::switches::Switches;

/// Nonces are 16 random bytes.
const NONCE_LEN: usize = 16;

pub struct KeyServerService {
    pub identity: Arc<KeyserverIdentity>,
    pub store: Arc<dyn Store>,
    pub decider: Decider,
    pub switches: watch::Receiver<Arc<Switches>>,
    pub profiles: ProfileCache,
    pub verifier: Verifier,
    pub shares: ShareCache,
    pub metrics: Arc<Metrics>,
    /// How far a request's timestamp may be from this server's clock.
    pub max_clock_skew: Duration,
}

fn request_type_of(t: i32) -> Result<RequestType, Status> {
    let t = pb::RequestType::try_from(t)
        .map_err(|_| Status::invalid_argument(format!("unknown request_type {t}")))?;
    Ok(match t {
        pb::RequestType::Unspecified => {
            return Err(Status::invalid_argument("request_type is required"));
        }
        pb::RequestType::Decrypt => RequestType::Decrypt,
        pb::RequestType::Search => RequestType::Search,
        pb::RequestType::CreateProfile => RequestType::CreateProfile,
        pb::RequestType::CreateLocation => RequestType::CreateLocation,
        pb::RequestType::Rename => RequestType::Rename,
        pb::RequestType::SecureExport => RequestType::SecureExport,
        pb::RequestType::StartSession => RequestType::StartSession,
        pb::RequestType::ChangeProfile => RequestType::ChangeProfile,
    })
}

fn reason_code(reason: Reason) -> pb::DenyReason {
    match reason {
        Reason::Policy => pb::DenyReason::Policy,
        Reason::Quota => pb::DenyReason::Quota,
        Reason::Disabled => pb::DenyReason::Disabled,
        Reason::Signature => pb::DenyReason::Signature,
        Reason::UnknownProfile => pb::DenyReason::UnknownProfile,
        Reason::Unavailable => pb::DenyReason::Unavailable,
        Reason::Stale => pb::DenyReason::Stale,
        Reason::Replayed => pb::DenyReason::Replayed,
        Reason::InvalidCiphertext => pb::DenyReason::InvalidCiphertext,
        Reason::WrongKeyserver => pb::DenyReason::WrongKeyserver,
    }
}

fn meta_json(meta: &[pb::MetaInfo]) -> String {
    let entries: Vec<serde_json::Value> = meta
        .iter()
        .map(|m| serde_json::json!({"meta": m.meta, "complete": m.complete}))
        .collect();
    serde_json::Value::Array(entries).to_string()
}

fn denied(outcome: Outcome) -> pb::ApproveResponse {
    let reason = match outcome.verdict {
        Verdict::Denied(r) => reason_code(r),
        Verdict::Approved { .. } => pb::DenyReason::Unspecified,
    };
    pb::ApproveResponse {
        decision: pb::Decision::Denied as i32,
        reason: reason as i32,
        audit_id: outcome.audit_id.unwrap_or(0),
        ..Default::default()
    }
}

fn session_of(session: Option<kss_policy::SessionParams>) -> Option<pb::SessionParams> {
    session.map(|s| pb::SessionParams {
        max_request_count: s.max_request_count,
        max_time_seconds: s.max_time_seconds,
        end_by_time: s.end_by_time.map(|t| t.to_string()).unwrap_or_default(),
    })
}

/// The checks of a request before policy: what it claims, and whether it proves it.
enum Checked {
    Ready {
        profile: Arc<KnownProfile>,
        register: Option<Box<Profile>>,
        request: Box<Request>,
    },
    Denied(Reason),
}

impl KeyServerService {
    fn within_skew(&self, timestamp_ms: i64) -> bool {
        let skew = i64::try_from(self.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        (now_ms() - timestamp_ms).abs() <= skew
    }

    async fn record(&self, job: Job) -> Outcome {
        self.decider.decide(job).await
    }

    /// Finds the profile a request names, or learns it from a valid registration token.
    async fn find_profile(
        &self,
        profile_id: &ProfileId,
        registration: Option<&pb::ProfileRegistration>,
    ) -> Result<Option<(Arc<KnownProfile>, Option<Profile>)>, Reason> {
        match self.profiles.get(profile_id).await {
            Ok(Some(p)) => return Ok(Some((p, None))),
            Ok(None) => {}
            Err(e) => {
                self.metrics.db_error("profile");
                warn!(error = %e, "reading a profile failed");
                return Err(Reason::Unavailable);
            }
        }
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
        let row = Profile {
            profile_id: profile_id.to_string(),
            device_id: DeviceId::of(&claims.device_public_key).to_string(),
            device_public_key: claims.device_public_key.to_bytes().to_vec(),
            workstation_share: ws.to_bytes().to_vec(),
            name: reg.profile_name.clone(),
            words: reg.profile_words.clone(),
            created_at_ms: now_ms(),
        };
        let known = self
            .profiles
            .from_row(&row)
            .map_err(|_| Reason::UnknownProfile)?;
        info!(profile = %profile_id, "profile re-registered from its token");
        Ok(Some((Arc::new(known), Some(row))))
    }

    async fn check(
        &self,
        msg: &pb::SignedMessage,
        body: &pb::RequestBody,
        request_type: RequestType,
    ) -> Checked {
        if body.keyserver_id != self.identity.id.to_string() {
            return Checked::Denied(Reason::WrongKeyserver);
        }
        let Ok(profile_id) = body.profile_id.parse::<ProfileId>() else {
            return Checked::Denied(Reason::UnknownProfile);
        };
        let (profile, register) = match self
            .find_profile(&profile_id, body.registration.as_ref())
            .await
        {
            Ok(Some(found)) => found,
            Ok(None) => return Checked::Denied(Reason::UnknownProfile),
            Err(reason) => return Checked::Denied(reason),
        };
        if body.device_id != profile.device_id.to_string() {
            return Checked::Denied(Reason::UnknownProfile);
        }
        if profile
            .device_key
            .verify(SignDomain::Request, &msg.body, &msg.signature)
            .is_err()
        {
            return Checked::Denied(Reason::Signature);
        }
        if !self.within_skew(body.timestamp_ms) {
            return Checked::Denied(Reason::Stale);
        }
        let request = Request {
            request_type,
            profile_id: profile_id.as_bytes().to_vec(),
            profile_words: profile.words.clone(),
            device_id: profile.device_id.as_bytes().to_vec(),
            auth_meta: body
                .auth_meta
                .iter()
                .map(|m| MetaInfo {
                    meta: m.meta.clone(),
                    complete: m.complete,
                })
                .collect(),
            cryptographic_id: body.cryptographic_id.clone(),
        };
        Checked::Ready {
            profile,
            register: register.map(Box::new),
            request: Box::new(request),
        }
    }

    async fn approve_signed(
        &self,
        msg: pb::SignedMessage,
    ) -> Result<(RequestType, pb::ApproveResponse), Status> {
        let body = pb::RequestBody::decode(msg.body.as_slice())
            .map_err(|e| Status::invalid_argument(format!("request body: {e}")))?;
        let request_type = request_type_of(body.request_type)?;
        if body.nonce.len() != NONCE_LEN {
            return Err(Status::invalid_argument(format!(
                "nonce must be {NONCE_LEN} bytes, got {}",
                body.nonce.len()
            )));
        }
        let is_decrypt = request_type == RequestType::Decrypt;
        if is_decrypt && body.ciphertext.is_empty() {
            return Err(Status::invalid_argument(
                "a decrypt request needs a ciphertext",
            ));
        }
        let span = Span::current();
        span.record("request_type", request_type.as_str());
        span.record("profile", field::display(&body.profile_id));
        let mut audit = AuditDraft {
            profile_id: Some(body.profile_id.clone()).filter(|p| !p.is_empty()),
            device_id: Some(body.device_id.clone()).filter(|d| !d.is_empty()),
            request_type: request_type.as_str().to_string(),
            meta: meta_json(&body.auth_meta),
            cryptographic_id: hex::encode(&body.cryptographic_id),
            nonce: None,
        };
        let (profile, register, request) = match self.check(&msg, &body, request_type).await {
            Checked::Ready {
                profile,
                register,
                request,
            } => (profile, register, request),
            Checked::Denied(reason) => {
                let outcome = self.record(Job::Deny { reason, audit }).await;
                return Ok((request_type, denied(outcome)));
            }
        };
        audit.nonce = Some(body.nonce.clone());
        if !self.switches.borrow().enabled {
            let outcome = self
                .record(Job::Deny {
                    reason: Reason::Disabled,
                    audit,
                })
                .await;
            return Ok((request_type, denied(outcome)));
        }
        // A share is released only for a verified ciphertext: verify before deciding, so
        // that an invalid one consumes no quota.
        let verified = if is_decrypt {
            let checked = match self.verifier.verify(body.ciphertext).await {
                Ok(Ok(verified)) => Ok(verified),
                Ok(Err(_)) => Err(Reason::InvalidCiphertext),
                // Refused at once rather than queued without limit.
                Err(NotVerified::QueueFull) => Err(Reason::Unavailable),
                Err(NotVerified::ShuttingDown) => return Err(Status::unavailable("shutting down")),
            };
            match checked {
                Ok(verified) => Some(verified),
                Err(reason) => {
                    // Not decided on: the nonce is not used up.
                    audit.nonce = None;
                    let outcome = self.record(Job::Deny { reason, audit }).await;
                    return Ok((request_type, denied(outcome)));
                }
            }
        } else {
            None
        };
        let outcome = self
            .record(Job::Evaluate {
                request: *request,
                register: register.map(|p| *p),
                audit,
            })
            .await;
        let Verdict::Approved { session, .. } = outcome.verdict else {
            return Ok((request_type, denied(outcome)));
        };
        let decryption_share = verified
            .map(|ct| {
                self.shares
                    .decryption_share(profile.id, &profile.share, &ct)
                    .to_vec()
            })
            .unwrap_or_default();
        let response = pb::ApproveResponse {
            decision: pb::Decision::Approved as i32,
            reason: pb::DenyReason::Unspecified as i32,
            decryption_share,
            audit_id: outcome.audit_id.unwrap_or(0),
            session: session_of(session),
        };
        Ok((request_type, response))
    }

    async fn onboard_signed(&self, msg: pb::SignedMessage) -> Result<pb::OnboardResponse, Status> {
        let body = pb::OnboardBody::decode(msg.body.as_slice())
            .map_err(|e| Status::invalid_argument(format!("onboarding body: {e}")))?;
        let my_id = self.identity.id.to_string();
        if body.keyserver_id != my_id {
            return Err(Status::failed_precondition(format!(
                "wrong keyserver ID: this is keyserver {my_id}, the request is for '{}'",
                body.keyserver_id
            )));
        }
        let device_key = DevicePublicKey::from_bytes(&body.device_public_key)
            .map_err(|e| Status::invalid_argument(format!("device_public_key: {e}")))?;
        device_key
            .verify(SignDomain::Onboard, &msg.body, &msg.signature)
            .map_err(|_| {
                Status::unauthenticated("the signature does not verify with device_public_key")
            })?;
        if !self.within_skew(body.timestamp_ms) {
            return Err(Status::failed_precondition(
                "the request's timestamp is too far from the keyserver's clock",
            ));
        }
        if body.nonce.len() != NONCE_LEN {
            return Err(Status::invalid_argument(format!(
                "nonce must be {NONCE_LEN} bytes, got {}",
                body.nonce.len()
            )));
        }
        let ws = WorkstationPublicShare::from_bytes(&body.workstation_share)
            .map_err(|e| Status::invalid_argument(format!("workstation_share: {e}")))?;
        let proof = PossessionProof::from_bytes(&body.possession_proof)
            .map_err(|e| Status::invalid_argument(format!("possession_proof: {e}")))?;
        let profile_id = ProfileId::random();
        let (keys, share) = kss_crypto::profile::onboard(
            self.identity.root(),
            &self.identity.id,
            &profile_id,
            &device_key,
            &ws,
            &proof,
        )
        .map_err(|e| Status::invalid_argument(format!("possession_proof: {e}")))?;
        let device_id = DeviceId::of(&device_key);
        Span::current().record("profile", field::display(&profile_id));
        let row = Profile {
            profile_id: profile_id.to_string(),
            device_id: device_id.to_string(),
            device_public_key: device_key.to_bytes().to_vec(),
            workstation_share: ws.to_bytes().to_vec(),
            name: body.profile_name.clone(),
            words: body.profile_words.clone(),
            created_at_ms: now_ms(),
        };
        let mut request = Request::new(RequestType::CreateProfile);
        request.profile_id = profile_id.as_bytes().to_vec();
        request.profile_words = body.profile_words.clone();
        request.device_id = device_id.as_bytes().to_vec();
        let audit = AuditDraft {
            profile_id: Some(profile_id.to_string()),
            device_id: Some(device_id.to_string()),
            request_type: RequestType::CreateProfile.as_str().to_string(),
            meta: "[]".to_string(),
            cryptographic_id: String::new(),
            nonce: Some(body.nonce.clone()),
        };
        let outcome = self
            .record(Job::Onboard {
                request,
                profile: row,
                audit,
            })
            .await;
        if let Verdict::Denied(reason) = outcome.verdict {
            return Err(Status::permission_denied(format!(
                "onboarding denied: {}",
                reason.as_str()
            )));
        }
        let claims = ProfileClaims {
            keyserver: self.identity.id,
            profile: profile_id,
            device_public_key: device_key,
            workstation_share: ws,
        };
        info!(profile = %profile_id, "profile onboarded");
        Ok(pb::OnboardResponse {
            profile_id: profile_id.to_string(),
            device_id: device_id.to_string(),
            public_key_set: keys.to_bytes().to_vec(),
            keyserver_share: share.public().to_bytes().to_vec(),
            profile_token: self.identity.token_key().issue(&claims).to_vec(),
        })
    }
}

fn verdict_of_response(r: &pb::ApproveResponse) -> Verdict {
    if r.decision == pb::Decision::Approved as i32 {
        return Verdict::Approved {
            rule_set: None,
            session: None,
        };
    }
    let reason = pb::DenyReason::try_from(r.reason).unwrap_or(pb::DenyReason::Unspecified);
    Verdict::Denied(
        Reason::ALL
            .into_iter()
            .find(|x| reason_code(*x) == reason)
            .unwrap_or(Reason::Unavailable),
    )
}

#[tonic::async_trait]
impl KeyServer for KeyServerService {
    #[instrument(skip_all, fields(rpc = "GetInfo"))]
    async fn get_info(
        &self,
        _request: GrpcRequest<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let switches = Arc::clone(&self.switches.borrow());
        Ok(Response::new(pb::GetInfoResponse {
            keyserver_id: self.identity.id.to_string(),
            enabled: switches.enabled,
            policy_version: switches.policy.version,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Onboard", profile = field::Empty))]
    async fn onboard(
        &self,
        request: GrpcRequest<pb::SignedMessage>,
    ) -> Result<Response<pb::OnboardResponse>, Status> {
        let started = Instant::now();
        let result = self.onboard_signed(request.into_inner()).await;
        let verdict = match &result {
            Ok(_) => Some(Verdict::Approved {
                rule_set: None,
                session: None,
            }),
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                Some(Verdict::Denied(Reason::Policy))
            }
            Err(_) => None,
        };
        match verdict {
            Some(v) => self
                .metrics
                .request("Onboard", "create_profile", v, started.elapsed()),
            None => self.metrics.rejected("Onboard", started.elapsed()),
        }
        result.map(Response::new)
    }

    #[instrument(skip_all, fields(rpc = "Approve", request_type = field::Empty, profile = field::Empty))]
    async fn approve(
        &self,
        request: GrpcRequest<pb::SignedMessage>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let started = Instant::now();
        match self.approve_signed(request.into_inner()).await {
            Ok((request_type, response)) => {
                self.metrics.request(
                    "Approve",
                    request_type.as_str(),
                    verdict_of_response(&response),
                    started.elapsed(),
                );
                Ok(Response::new(response))
            }
            Err(status) => {
                self.metrics.rejected("Approve", started.elapsed());
                Err(status)
            }
        }
    }
}
