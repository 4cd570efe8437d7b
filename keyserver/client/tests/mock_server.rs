//! The client against an in-process mock keyserver (TLS, the real generated gRPC service,
//! kss-crypto for the keyserver's side). The real server's tests come with the server.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use kss_client::cli::{ClientCommand, CommandStatus, execute};
use kss_client::protocol::{OnboardRequest, RequestSpec, build_request, sign_onboard};
use kss_client::{ClientError, KssClient, LoadgenArgs, Profile, sign_request};
use kss_crypto::{
    DeviceId, DevicePublicKey, KeyserverId, PossessionProof, ProfileClaims, ProfileId, RootSecret,
    SignDomain, WorkstationPublicShare,
};
use kss_proto::v1::key_server_server::{KeyServer, KeyServerServer};
use kss_proto::v1::{
    ApproveResponse, Decision, DenyReason, GetInfoRequest, GetInfoResponse, OnboardBody,
    OnboardResponse, RequestBody, RequestType, SignedMessage,
};
use prost::Message;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

struct MockKeyserver {
    id: KeyserverId,
    root: RootSecret,
    profiles: Mutex<HashMap<ProfileId, DevicePublicKey>>,
    nonces: Mutex<HashSet<Vec<u8>>>,
    audit: AtomicU64,
}

fn deny(reason: DenyReason, audit_id: u64) -> Response<ApproveResponse> {
    Response::new(ApproveResponse {
        decision: Decision::Denied as i32,
        reason: reason as i32,
        decryption_share: Vec::new(),
        audit_id,
        session: None,
    })
}

#[tonic::async_trait]
impl KeyServer for MockKeyserver {
    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        Ok(Response::new(GetInfoResponse {
            keyserver_id: self.id.to_hex(),
            enabled: true,
            policy_version: 3,
            server_version: "mock".into(),
        }))
    }

    async fn onboard(
        &self,
        request: Request<SignedMessage>,
    ) -> Result<Response<OnboardResponse>, Status> {
        let message = request.into_inner();
        let body = OnboardBody::decode(message.body.as_slice())
            .map_err(|_| Status::invalid_argument("body"))?;
        let device_pk = DevicePublicKey::from_bytes(&body.device_public_key)
            .map_err(|_| Status::invalid_argument("device public key"))?;
        device_pk
            .verify(SignDomain::Onboard, &message.body, &message.signature)
            .map_err(|_| Status::unauthenticated("signature"))?;
        if body.keyserver_id != self.id.to_hex() {
            return Err(Status::failed_precondition(format!(
                "this keyserver is {}, not {}",
                self.id, body.keyserver_id
            )));
        }
        if !self.nonces.lock().unwrap().insert(body.nonce.clone()) {
            return Err(Status::already_exists("replayed"));
        }
        let ws = WorkstationPublicShare::from_bytes(&body.workstation_share)
            .map_err(|_| Status::invalid_argument("share"))?;
        let proof = PossessionProof::from_bytes(&body.possession_proof)
            .map_err(|_| Status::invalid_argument("proof"))?;
        let profile_id = ProfileId::random();
        let (keys, kss) =
            kss_crypto::onboard(&self.root, &self.id, &profile_id, &device_pk, &ws, &proof)
                .map_err(|_| Status::invalid_argument("proof of possession"))?;
        let token = self.root.token_key(&self.id).issue(&ProfileClaims {
            keyserver: self.id,
            profile: profile_id,
            device_public_key: device_pk,
            workstation_share: ws,
        });
        self.profiles.lock().unwrap().insert(profile_id, device_pk);
        Ok(Response::new(OnboardResponse {
            profile_id: profile_id.to_hex(),
            device_id: DeviceId::of(&device_pk).to_hex(),
            public_key_set: keys.to_bytes().to_vec(),
            keyserver_share: kss.public().to_bytes().to_vec(),
            profile_token: token.to_vec(),
        }))
    }

    async fn approve(
        &self,
        request: Request<SignedMessage>,
    ) -> Result<Response<ApproveResponse>, Status> {
        let audit_id = self.audit.fetch_add(1, Ordering::Relaxed) + 1;
        let message = request.into_inner();
        let body = RequestBody::decode(message.body.as_slice())
            .map_err(|_| Status::invalid_argument("body"))?;
        let Ok(profile_id) = body.profile_id.parse::<ProfileId>() else {
            return Ok(deny(DenyReason::UnknownProfile, audit_id));
        };
        let Some(device_pk) = self.profiles.lock().unwrap().get(&profile_id).copied() else {
            return Ok(deny(DenyReason::UnknownProfile, audit_id));
        };
        if body.device_id != DeviceId::of(&device_pk).to_hex() {
            return Ok(deny(DenyReason::UnknownProfile, audit_id));
        }
        if device_pk
            .verify(SignDomain::Request, &message.body, &message.signature)
            .is_err()
        {
            return Ok(deny(DenyReason::Signature, audit_id));
        }
        if body.keyserver_id != self.id.to_hex() {
            return Ok(deny(DenyReason::WrongKeyserver, audit_id));
        }
        if (body.timestamp_ms - kss_client::protocol::now_ms()).abs() > 60_000 {
            return Ok(deny(DenyReason::Stale, audit_id));
        }
        if body.nonce.len() != 16 || !self.nonces.lock().unwrap().insert(body.nonce.clone()) {
            return Ok(deny(DenyReason::Replayed, audit_id));
        }
        // The policy: nothing under secret/, and only complete metadata.
        if body
            .auth_meta
            .iter()
            .any(|m| m.meta.starts_with("secret/") || !m.complete)
        {
            return Ok(deny(DenyReason::Policy, audit_id));
        }
        let mut decryption_share = Vec::new();
        if body.request_type == RequestType::Decrypt as i32 {
            let Ok(verified) = kss_crypto::ciphertext::verify(&body.ciphertext) else {
                return Ok(deny(DenyReason::InvalidCiphertext, audit_id));
            };
            let share = self
                .root
                .profile_share(&self.id, &profile_id)
                .decryption_share(&verified);
            decryption_share = share.to_bytes().to_vec();
        }
        Ok(Response::new(ApproveResponse {
            decision: Decision::Approved as i32,
            reason: DenyReason::Unspecified as i32,
            decryption_share,
            audit_id,
            session: None,
        }))
    }
}

struct Mock {
    addr: SocketAddr,
    id: KeyserverId,
    ca_pem: String,
    _dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
}

impl Mock {
    fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn client(&self) -> KssClient {
        KssClient::connect(&self.endpoint(), self.ca_pem.as_bytes(), Some("localhost"))
            .await
            .unwrap()
    }

    fn connect_flags(&self) -> Vec<String> {
        vec![
            "--endpoint".into(),
            self.endpoint(),
            "--ca".into(),
            self.ca_path.display().to_string(),
            "--server-name".into(),
            "localhost".into(),
        ]
    }
}

/// A CA and a certificate for "localhost" signed by it.
fn make_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kss test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

async fn start_mock() -> Mock {
    kss_client::install_crypto_provider();
    let (ca_pem, cert_pem, key_pem) = make_pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = KeyserverId::random();
    let service = MockKeyserver {
        id,
        root: RootSecret::generate(),
        profiles: Mutex::new(HashMap::new()),
        nonces: Mutex::new(HashSet::new()),
        audit: AtomicU64::new(0),
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(KeyServerServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    Mock {
        addr,
        id,
        ca_pem,
        _dir: dir,
        ca_path,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboard_request_decrypt_over_tls() {
    let mock = start_mock().await;
    let client = mock.client().await;

    let info = client.info().await.unwrap();
    assert_eq!(info.keyserver_id, mock.id.to_hex());
    assert!(info.enabled);
    assert_eq!(info.policy_version, 3);

    let words = vec!["humble".to_owned(), "busy".to_owned()];
    let profile = client.onboard(&mock.id, "alice@ws", &words).await.unwrap();
    assert_eq!(*profile.keyserver_id(), mock.id);

    // Decrypt: approved gives the key back; a denied one says why.
    let key = [9u8; 32];
    let ct = kss_client::encrypt_file_key(&profile, &key);
    let outcome = client
        .decrypt(&profile, &ct, &["batch/file.txt".to_owned()])
        .await
        .unwrap();
    assert_eq!(outcome.file_key().unwrap(), &key);
    let outcome = client
        .decrypt(&profile, &ct, &["secret/file.txt".to_owned()])
        .await
        .unwrap();
    assert!(!outcome.is_approved());
    assert_eq!(outcome.reason_name().as_deref(), Some("policy"));

    // A tampered ciphertext is refused locally, before any request.
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        client.decrypt(&profile, &bad, &[]).await,
        Err(ClientError::InvalidCiphertext(_))
    ));

    // Plain requests.
    let spec = RequestSpec::new(RequestType::Search).with_path("batch/x", true);
    let outcome = client.request(&profile, &spec).await.unwrap();
    assert!(outcome.approved);
    assert!(outcome.audit_id > 0);
    let spec = RequestSpec::new(RequestType::Search).with_path("batch/x", false);
    let outcome = client.request(&profile, &spec).await.unwrap();
    assert_eq!(outcome.reason_name().as_deref(), Some("policy"));
    assert!(matches!(
        client
            .request(&profile, &RequestSpec::new(RequestType::Decrypt))
            .await,
        Err(ClientError::InvalidRequest(_))
    ));

    // Replay, tampering and forgery through the raw call.
    let body = build_request(
        &profile,
        &RequestSpec::new(RequestType::Search).with_path("batch/x", true),
    );
    let message = sign_request(&profile, &body);
    let first = client.approve_raw(message.clone()).await.unwrap();
    assert_eq!(first.decision, Decision::Approved as i32);
    let replay = client.approve_raw(message.clone()).await.unwrap();
    assert_eq!(replay.reason, DenyReason::Replayed as i32);
    let mut tampered = message.clone();
    tampered.body = {
        let mut b = body.clone();
        b.auth_meta[0].meta = "batch/y".into();
        b.encode_to_vec()
    };
    let answer = client.approve_raw(tampered).await.unwrap();
    assert_eq!(answer.reason, DenyReason::Signature as i32);
    let other = client.onboard(&mock.id, "mallory", &[]).await.unwrap();
    let mut forged_body = build_request(&profile, &RequestSpec::new(RequestType::Search));
    forged_body.nonce = kss_client::protocol::fresh_nonce();
    let forged = sign_request(&other, &forged_body);
    let answer = client.approve_raw(forged).await.unwrap();
    assert_eq!(answer.reason, DenyReason::Signature as i32);

    // Onboarding with another keyserver id: the gRPC error comes through, clearly.
    let err = client
        .onboard(&KeyserverId::random(), "alice@ws", &[])
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::FailedPrecondition));
    let text = err.to_string();
    assert!(text.contains("Onboard failed"), "{text}");
    assert!(text.contains(&mock.id.to_hex()), "{text}");

    // A replayed onboarding message is refused by the keyserver.
    let request = OnboardRequest::new(&mock.id, "carol", &[]);
    let message = request.signed_message();
    client.onboard_raw(message.clone()).await.unwrap();
    assert!(client.onboard_raw(message).await.is_err());
    // Re-signing for the wrong domain is refused.
    let wrong = kss_client::protocol::sign_body(
        request.device_key(),
        SignDomain::Request,
        request.body().encode_to_vec(),
    );
    assert!(client.onboard_raw(wrong).await.is_err());
    let _ = sign_onboard(request.device_key(), request.body());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_checked() {
    let mock = start_mock().await;
    // Another CA.
    let (other_ca, _, _) = make_pki();
    let err = KssClient::connect(&mock.endpoint(), other_ca.as_bytes(), Some("localhost"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    // A name the certificate is not for.
    let err = KssClient::connect(
        &mock.endpoint(),
        mock.ca_pem.as_bytes(),
        Some("other.example"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    // No TLS, no CA, bad endpoints.
    let err = KssClient::connect(
        &format!("http://{}", mock.addr),
        mock.ca_pem.as_bytes(),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err}");
    let err = KssClient::connect(&mock.endpoint(), b"not a pem", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidCa(_)), "{err}");
    let err = KssClient::connect("not a uri at all", mock.ca_pem.as_bytes(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err}");
    // The endpoint's host is the default server name: 127.0.0.1 is not in the certificate.
    let err = KssClient::connect(&mock.endpoint(), mock.ca_pem.as_bytes(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ClientCommand,
}

fn parse(args: &[String]) -> ClientCommand {
    Cli::try_parse_from(std::iter::once("client".to_owned()).chain(args.iter().cloned()))
        .unwrap()
        .cmd
}

fn args(list: &[&str], extra: Vec<String>) -> Vec<String> {
    list.iter().map(|s| s.to_string()).chain(extra).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.json");
    let ct = dir.path().join("ct.bin");
    let p = profile.display().to_string();
    let c = ct.display().to_string();

    let status = execute(parse(&args(&["info"], mock.connect_flags())))
        .await
        .unwrap();
    assert_eq!(status, CommandStatus::Success);

    let onboard = args(
        &[
            "onboard",
            "--keyserver-id",
            &mock.id.to_hex(),
            "--profile",
            &p,
            "--name",
            "alice@ws",
            "--words",
            "humble busy much cactus",
        ],
        mock.connect_flags(),
    );
    execute(parse(&onboard)).await.unwrap();
    let loaded = Profile::load(&profile).unwrap();
    assert_eq!(loaded.name(), "alice@ws");
    assert_eq!(loaded.words().len(), 4);
    // Never overwrites.
    assert!(execute(parse(&onboard)).await.is_err());
    // A malformed keyserver id is refused before connecting.
    let bad = args(
        &[
            "onboard",
            "--keyserver-id",
            "xyz",
            "--profile",
            "/nonexistent/q.json",
        ],
        mock.connect_flags(),
    );
    assert!(execute(parse(&bad)).await.is_err());

    let key_hex = hex::encode([5u8; 32]);
    execute(parse(&args(
        &["encrypt", "--profile", &p, "--out", &c, "--key", &key_hex],
        vec![],
    )))
    .await
    .unwrap();
    let bytes = std::fs::read(&ct).unwrap();
    kss_crypto::ciphertext::verify(&bytes).unwrap();

    let decrypt = |path: &str| {
        args(
            &[
                "decrypt",
                "--profile",
                &p,
                "--ciphertext",
                &c,
                "--path",
                path,
            ],
            mock.connect_flags(),
        )
    };
    let status = execute(parse(&decrypt("batch/a"))).await.unwrap();
    assert_eq!(status, CommandStatus::Success);
    let status = execute(parse(&decrypt("secret/a"))).await.unwrap();
    assert_eq!(status, CommandStatus::Denied);
    // Hex ciphertext files work too.
    std::fs::write(&ct, hex::encode(&bytes)).unwrap();
    assert_eq!(
        kss_client::cli::read_ciphertext(&ct).unwrap(),
        bytes,
        "hex file"
    );
    let status = execute(parse(&decrypt("batch/a"))).await.unwrap();
    assert_eq!(status, CommandStatus::Success);

    for kind in ["search", "rename", "create-profile", "decrypt"] {
        let status = execute(parse(&args(
            &[
                "request",
                "--profile",
                &p,
                "--type",
                kind,
                "--path",
                "batch/a",
                "--ciphertext",
                &c,
                "--registration",
            ],
            mock.connect_flags(),
        )))
        .await
        .unwrap();
        assert_eq!(status, CommandStatus::Success);
    }
}

#[derive(clap::Parser)]
struct LoadCli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn load_args(mock: &Mock, extra: &[&str]) -> LoadgenArgs {
    let argv = std::iter::once("loadgen".to_owned())
        .chain(mock.connect_flags())
        .chain(extra.iter().map(|s| s.to_string()));
    LoadCli::try_parse_from(argv).unwrap().args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_counts_and_verifies() {
    let mock = start_mock().await;

    let args = load_args(
        &mock,
        &[
            "--profiles",
            "3",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--requests",
            "120",
            "--distinct-ciphertexts",
            "4",
            "--repeat-share",
            "0.5",
            "--verify",
        ],
    );
    assert!(args.keyserver_id.is_none());
    let report = kss_client::loadgen::run_load(&args).await.unwrap();
    assert_eq!(report.keyserver_id, mock.id.to_hex());
    assert_eq!(report.sent, 120);
    assert_eq!(report.approved, 120);
    assert_eq!(report.verified, 120);
    assert_eq!(report.verify_failures, 0);
    assert_eq!(report.errors, 0);
    assert!(report.latency_ms.max >= report.latency_ms.p50);
    assert!(report.throughput > 0.0);
    let table = report.to_string();
    println!("{table}");
    assert!(table.contains("approved"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["approved"], 120);

    // Denials are counted by reason; paced runs stop at the duration.
    let args = load_args(
        &mock,
        &[
            "--keyserver-id",
            &mock.id.to_hex(),
            "--profiles",
            "2",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--rate",
            "50",
            "--type",
            "search",
            "--path",
            "secret/x",
        ],
    );
    let report = kss_client::loadgen::run_load(&args).await.unwrap();
    assert_eq!(report.approved, 0);
    assert!(report.sent >= 40 && report.sent <= 51, "{}", report.sent);
    assert_eq!(report.denied_by_reason.get("policy"), Some(&report.sent));
    assert!(report.elapsed_seconds >= 0.95);

    // Bad arguments are refused.
    let args = load_args(&mock, &["--repeat-share", "1.5"]);
    assert!(kss_client::loadgen::run_load(&args).await.is_err());
}

#[test]
fn loadgen_defaults() {
    let args = LoadCli::try_parse_from(["loadgen", "--ca", "ca.pem"])
        .unwrap()
        .args;
    assert_eq!(args.connect.endpoint, "https://127.0.0.1:7443");
    assert_eq!(args.connect.server_name, "localhost");
    assert_eq!(args.profiles, 16);
    assert_eq!(args.concurrency, 64);
    assert_eq!(args.connections, 4);
    assert_eq!(args.distinct_ciphertexts, 256);
    assert_eq!(args.repeat_share, 0.0);
    assert_eq!(args.rate, 0.0);
    assert_eq!(args.path, "batch/file.txt");
    assert!(!args.verify && !args.json);
    assert!(
        LoadCli::try_parse_from(["loadgen", "--ca", "x", "--duration", "1", "--requests", "5"])
            .is_err()
    );
}
