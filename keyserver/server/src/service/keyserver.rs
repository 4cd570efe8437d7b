//! `kss.v1.KeyServer`: the gRPC face of [`crate::requests::Keyserver`]. It only converts:
//! messages in, answers and [`RequestError`]s out as `Status`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kss_proto::v1 as pb;
use kss_proto::v1::key_server_server::KeyServer;
use tonic::{Request as GrpcRequest, Response, Status};
use tracing::{field, instrument};

use crate::connections::Connections;
use crate::requests::{Approval, Keyserver, Onboarded, RequestError};
use crate::verdict::Verdict;

/// The gRPC service over the keyserver core.
pub struct KeyServerService {
    pub core: Arc<Keyserver>,
    /// The listener's connections: an address whose requests keep being refused before
    /// authentication is slowed down (`None`: not bounded).
    pub connections: Option<Arc<Connections>>,
}

impl KeyServerService {
    /// Waits first while `peer`'s address keeps sending requests that are refused (unless
    /// its connection has sent an authenticated one).
    async fn slow_down(&self, peer: Option<SocketAddr>) {
        let delay = self
            .connections
            .as_ref()
            .zip(peer)
            .and_then(|(connections, peer)| connections.delay_for(peer));
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts a refusal before authentication against `peer`'s address, or marks its
    /// connection as proven.
    fn note_authentication(&self, peer: Option<SocketAddr>, refused: bool) {
        if let (Some(connections), Some(peer)) = (&self.connections, peer) {
            if refused {
                connections.refused(peer);
            } else {
                connections.authenticated(peer);
            }
        }
    }
}

/// Refused before the request's signature verified: what counts against an address.
fn refused_before_authentication(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::InvalidArgument { .. }
            | RequestError::FailedPrecondition(_)
            | RequestError::Unauthenticated(_)
    )
}

fn status_of(e: RequestError) -> Status {
    let message = e.to_string();
    match e {
        RequestError::InvalidArgument { .. } => Status::invalid_argument(message),
        RequestError::FailedPrecondition(_) => Status::failed_precondition(message),
        RequestError::Unauthenticated(_) => Status::unauthenticated(message),
        RequestError::Denied { .. } => Status::permission_denied(message),
        RequestError::ResourceExhausted(_) => Status::resource_exhausted(message),
        RequestError::Unavailable(_) => Status::unavailable(message),
    }
}

/// Logs a sample of the requests refused before they were decided (the decided ones are
/// in the audit log; "shutting down" is not the client's doing).
fn sample_refusal(core: &Keyserver, rpc: &'static str, e: &RequestError) {
    if !matches!(
        e,
        RequestError::Denied { .. } | RequestError::Unavailable(_)
    ) {
        core.reject_log.note(rpc, e.label(), &e.to_string());
    }
}

fn approve_response(a: Approval) -> pb::ApproveResponse {
    let (decision, reason) = a.verdict.codes();
    pb::ApproveResponse {
        decision: decision as i32,
        reason: reason as i32,
        decryption_share: a.decryption_share,
        audit_id: a.audit_id,
        session: a.session.map(|s| pb::SessionParams {
            max_request_count: s.max_request_count,
            max_time_seconds: s.max_time_seconds,
            end_by_time: s.end_by_time.map(|t| t.to_string()).unwrap_or_default(),
        }),
    }
}

fn onboard_response(o: Onboarded) -> pb::OnboardResponse {
    pb::OnboardResponse {
        profile_id: o.profile_id.to_string(),
        device_id: o.device_id.to_string(),
        public_key_set: o.public_keys.to_bytes().to_vec(),
        keyserver_share: o.keyserver_share.to_bytes().to_vec(),
        profile_token: o.profile_token.to_vec(),
        keyserver_share_proof: o.keyserver_share_proof.to_bytes().to_vec(),
        profile_words: o.words,
    }
}

#[tonic::async_trait]
impl KeyServer for KeyServerService {
    #[instrument(skip_all, fields(rpc = "GetInfo"))]
    async fn get_info(
        &self,
        _request: GrpcRequest<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let (enabled, policy_version) = self.core.info();
        Ok(Response::new(pb::GetInfoResponse {
            keyserver_id: self.core.identity.id.to_string(),
            enabled,
            policy_version,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Onboard", profile = field::Empty))]
    async fn onboard(
        &self,
        request: GrpcRequest<pb::SignedMessage>,
    ) -> Result<Response<pb::OnboardResponse>, Status> {
        let started = Instant::now();
        let peer = request.remote_addr();
        self.slow_down(peer).await;
        let msg = request.into_inner();
        let result = self.core.onboard(&msg.body, &msg.signature).await;
        // Onboarding proves possession of a new device key, not a known one: only its
        // refusals count.
        if result.as_ref().is_err_and(refused_before_authentication) {
            self.note_authentication(peer, true);
        }
        let metrics = &self.core.metrics;
        match &result {
            Ok(_) => metrics.request(
                "Onboard",
                "create_profile",
                Verdict::Approved {
                    rule_set: None,
                    session: None,
                },
                started.elapsed(),
            ),
            Err(RequestError::Denied { reason, .. }) => metrics.request(
                "Onboard",
                "create_profile",
                Verdict::Denied(*reason),
                started.elapsed(),
            ),
            Err(e) => {
                metrics.rejected("Onboard", e.label(), started.elapsed());
                sample_refusal(&self.core, "Onboard", e);
            }
        }
        result
            .map(onboard_response)
            .map(Response::new)
            .map_err(status_of)
    }

    #[instrument(skip_all, fields(rpc = "Approve", request_type = field::Empty, profile = field::Empty))]
    async fn approve(
        &self,
        request: GrpcRequest<pb::SignedMessage>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let started = Instant::now();
        let peer = request.remote_addr();
        self.slow_down(peer).await;
        let msg = request.into_inner();
        let result = self.core.approve(&msg.body, &msg.signature).await;
        match &result {
            Ok(approval) => self.note_authentication(peer, approval.unauthenticated),
            Err(e) if refused_before_authentication(e) => self.note_authentication(peer, true),
            Err(_) => {}
        }
        match result {
            Ok(approval) => {
                self.core.metrics.request(
                    "Approve",
                    approval.request_type.as_str(),
                    approval.verdict,
                    started.elapsed(),
                );
                Ok(Response::new(approve_response(approval)))
            }
            Err(e) => {
                self.core
                    .metrics
                    .rejected("Approve", e.label(), started.elapsed());
                sample_refusal(&self.core, "Approve", &e);
                Err(status_of(e))
            }
        }
    }
}
