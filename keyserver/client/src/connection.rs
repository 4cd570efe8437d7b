//! The TLS connection to a keyserver and the calls made over it.

use std::time::Duration;

use kss_crypto::KeyserverId;
use kss_proto::v1::key_server_client::KeyServerClient;
use kss_proto::v1::{ApproveResponse, GetInfoRequest, OnboardResponse, RequestType, SignedMessage};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{ClientError, Result};
use crate::profile::Profile;
use crate::protocol::{
    ApproveOutcome, DecryptOutcome, OnboardRequest, RequestSpec, build_request, finish_decrypt,
    sign_request, verify_ciphertext,
};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs rustls' ring crypto provider as the process default, if no provider is installed
/// yet. Call once at startup (binaries and tests); calling again is harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The error and its causes, joined with ": " (tonic's transport errors say little at the top).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Checks that `ca_pem` holds at least one parsable certificate; returns how many.
fn check_ca(ca_pem: &[u8]) -> Result<usize> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        cert.map_err(|e| ClientError::InvalidCa(format!("cannot parse PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ClientError::InvalidCa(
            "no CERTIFICATE block in the PEM data".into(),
        ));
    }
    Ok(count)
}

/// Opens one TLS (HTTP/2) connection. `ca_pem` holds the only trusted root(s); the server
/// certificate must be valid for `server_name` (default: the endpoint's host).
pub async fn connect_channel(
    endpoint: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
) -> Result<Channel> {
    install_crypto_provider();
    let invalid = |detail: String| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        detail,
    };
    let ep = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| invalid(error_chain(&e)))?;
    if ep.uri().scheme_str() != Some("https") {
        return Err(invalid(
            "the keyserver is only reachable over TLS: use https://host:port".into(),
        ));
    }
    let host = ep
        .uri()
        .host()
        .ok_or_else(|| invalid("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    check_ca(ca_pem)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name.unwrap_or(&host).to_owned());
    let connect_err = |e: tonic::transport::Error| ClientError::Connect {
        endpoint: endpoint.to_owned(),
        detail: error_chain(&e),
    };
    ep.tls_config(tls)
        .map_err(connect_err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(connect_err)
}

/// What `KeyServer/GetInfo` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerInfo {
    /// The keyserver's id (hex, as sent).
    pub keyserver_id: String,
    /// Whether it serves requests (false after `kss disable`).
    pub enabled: bool,
    /// The version of the policy in force.
    pub policy_version: u64,
    /// The kss version serving the request.
    pub server_version: String,
}

/// A client of one keyserver over one HTTP/2 connection. Cheap to clone; clones share the
/// connection and calls on it are multiplexed.
#[derive(Clone, Debug)]
pub struct KssClient {
    inner: KeyServerClient<Channel>,
}

/// Another name for [`KssClient`].
pub type Connection = KssClient;

impl KssClient {
    /// Connects over TLS; see [`connect_channel`].
    pub async fn connect(endpoint: &str, ca_pem: &[u8], server_name: Option<&str>) -> Result<Self> {
        Ok(Self::from_channel(
            connect_channel(endpoint, ca_pem, server_name).await?,
        ))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        KssClient {
            inner: KeyServerClient::new(channel),
        }
    }

    /// The generated gRPC client (for calls this type does not wrap).
    pub fn grpc(&self) -> KeyServerClient<Channel> {
        self.inner.clone()
    }

    /// `KeyServer/GetInfo`.
    pub async fn info(&self) -> Result<ServerInfo> {
        let response = self
            .inner
            .clone()
            .get_info(GetInfoRequest {})
            .await
            .map_err(|s| ClientError::rpc("GetInfo", s))?
            .into_inner();
        Ok(ServerInfo {
            keyserver_id: response.keyserver_id,
            enabled: response.enabled,
            policy_version: response.policy_version,
            server_version: response.server_version,
        })
    }

    /// Onboards a new profile with the keyserver `keyserver_id` (which must be this
    /// keyserver's id, learned out of band; a keyserver with another id refuses with a gRPC
    /// error, surfaced as [`ClientError::Rpc`]). Generates the device key and workstation
    /// share, checks the answer (see [`OnboardRequest::finish`]) and returns the profile; the
    /// caller saves it.
    pub async fn onboard(
        &self,
        keyserver_id: &KeyserverId,
        name: &str,
        enrollment_token: Option<&str>,
    ) -> Result<Profile> {
        let request = OnboardRequest::new(keyserver_id, name, enrollment_token);
        let response = self.onboard_raw(request.signed_message()).await?;
        request.finish(response)
    }

    /// `KeyServer/Onboard` with a message as given (for tests that forge or replay).
    pub async fn onboard_raw(&self, message: SignedMessage) -> Result<OnboardResponse> {
        Ok(self
            .inner
            .clone()
            .onboard(message)
            .await
            .map_err(|s| ClientError::rpc("Onboard", s))?
            .into_inner())
    }

    /// `KeyServer/Approve` with a message as given (for tests that forge, replay or tamper).
    pub async fn approve_raw(&self, message: SignedMessage) -> Result<ApproveResponse> {
        Ok(self
            .inner
            .clone()
            .approve(message)
            .await
            .map_err(|s| ClientError::rpc("Approve", s))?
            .into_inner())
    }

    /// Builds (fresh nonce and timestamp), signs and sends a request; the decision as is (a
    /// decryption share in it is not verified: see [`KssClient::decrypt`]).
    pub async fn request(&self, profile: &Profile, spec: &RequestSpec) -> Result<ApproveOutcome> {
        if spec.request_type == RequestType::Decrypt && spec.ciphertext.is_none() {
            return Err(ClientError::InvalidRequest(
                "a decrypt request needs a ciphertext".into(),
            ));
        }
        let body = build_request(profile, spec);
        let response = self.approve_raw(sign_request(profile, &body)).await?;
        Ok(ApproveOutcome::from_response(response))
    }

    /// Decrypts a file key: verifies `ciphertext` locally, asks for approval with `paths` as
    /// complete metadata, verifies the keyserver's decryption share and combines it with the
    /// workstation's own.
    pub async fn decrypt(
        &self,
        profile: &Profile,
        ciphertext: &[u8],
        paths: &[String],
    ) -> Result<DecryptOutcome> {
        let spec = RequestSpec::decrypt(ciphertext.to_vec(), paths);
        self.decrypt_with(profile, spec).await
    }

    /// As [`KssClient::decrypt`] with a full spec (partial metadata, registration, ...).
    /// `spec.ciphertext` must be set; `spec.request_type` is forced to decrypt.
    pub async fn decrypt_with(
        &self,
        profile: &Profile,
        mut spec: RequestSpec,
    ) -> Result<DecryptOutcome> {
        spec.request_type = RequestType::Decrypt;
        let ciphertext = spec.ciphertext.as_deref().ok_or_else(|| {
            ClientError::InvalidRequest("a decrypt request needs a ciphertext".into())
        })?;
        let verified = verify_ciphertext(ciphertext)?;
        let outcome = self.request(profile, &spec).await?;
        finish_decrypt(profile, &verified, &outcome)
    }
}
