//! `kss serve` as the operator runs it in a pod: plaintext gRPC health for the kubelet's
//! probes (`--health-listen`), the admin API over mutual TLS (`--admin-listen`), policy
//! loading through it (`LoadPolicy`), and the bootstrap identity (`--bootstrap-identity`)
//! with the refusing mode: real `kss` processes, real TLS, certificates made with rcgen.
//!
//! The cluster test needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh); it is skipped without
//! it, except where `KSS_REQUIRE_MYSQL` is set (CI).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DataDir, free_port, path_of, spawn_serve_env};
use kss_crypto::backup::{self, AdminKey, BackupKey};
use kss_crypto::identity::SealedIdentity;
use kss_crypto::ids::KeyserverId;
use kss_crypto::root::RootSecret;
use kss_crypto::seal::MasterKey;
use kss_proto::details;
use kss_proto::v1::admin_client::AdminClient;
use kss_proto::v1::{
    BackupHolder, IssueBackupKeyRequest, IssueBackupKeyResponse, ListInstancesRequest,
    LoadPolicyRequest, LoadPolicyResponse, PolicyErrorKind, PolicyRejection, Refusal,
    RefusalReason, StatusRequest, StatusResponse,
};
use kss_store::{Registry, Store};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const READY: &str = "kss.v1.KeyServer";

const POLICY: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n    - rule: per-profile-throttle-rule\n      per_day: 5\n      persistent: true\n  - - rule: approve-rule\nsearch:\n  - - rule: reject-rule\n";
const POLICY_2: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/other]\n";
const BAD_POLICY: &str = "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_days: 5\n";

// ------------------------------------------------------------------ certificates

/// A CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM).
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let sans = if purpose == ExtendedKeyUsagePurpose::ServerAuth {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The admin listener's TLS material: a CA that signs the server's certificate and the
/// operator's client certificate, and a rogue client certificate from another CA.
struct AdminPki {
    dir: tempfile::TempDir,
    ca: String,
    client: (String, String),
    rogue: (String, String),
    /// The CA that issued `rogue`.
    other_ca: String,
}

impl AdminPki {
    fn new() -> AdminPki {
        let ca = Ca::new("kss admin CA");
        let other = Ca::new("some other CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue("kss admin listener", ExtendedKeyUsagePurpose::ServerAuth);
        std::fs::write(dir.path().join("admin.pem"), cert).unwrap();
        std::fs::write(dir.path().join("admin.key"), key).unwrap();
        std::fs::write(dir.path().join("client-ca.pem"), ca.pem()).unwrap();
        AdminPki {
            ca: ca.pem(),
            client: ca.issue("kss-operator", ExtendedKeyUsagePurpose::ClientAuth),
            rogue: other.issue("kss-operator", ExtendedKeyUsagePurpose::ClientAuth),
            other_ca: other.pem(),
            dir,
        }
    }

    fn file(&self, name: &str) -> String {
        path_of(&self.dir.path().join(name)).to_string()
    }

    /// A channel to the admin listener, presenting `client` (or no certificate).
    async fn channel(
        &self,
        port: u16,
        client: Option<&(String, String)>,
    ) -> Result<Channel, String> {
        kss_client::install_crypto_provider();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// Whether a new connection presenting `client` (or no certificate) gets an answer to
    /// `Status`.
    async fn admits(&self, port: u16, client: Option<&(String, String)>) -> bool {
        match self.channel(port, client).await {
            Err(_) => false,
            Ok(channel) => AdminClient::new(channel)
                .status(StatusRequest {})
                .await
                .is_ok(),
        }
    }

    async fn admin(&self, port: u16) -> AdminClient<Channel> {
        AdminClient::new(self.channel(port, Some(&self.client)).await.unwrap())
    }
}

// ------------------------------------------------------------------ a pod-like server

/// `kss serve` with the pod listeners; stdout collected, stderr in `log`.
struct PodServer {
    child: Child,
    port: u16,
    health_port: u16,
    admin_port: u16,
    log: PathBuf,
    stdout: Arc<Mutex<String>>,
}

impl PodServer {
    /// Starts `kss serve` on `data` (self-signed TLS for workstations) with `extra` flags,
    /// and waits until its admin listener answers (serving or refusing).
    async fn start(data: &DataDir, pki: &AdminPki, extra: &[&str]) -> PodServer {
        Self::start_env(data, pki, extra, &[]).await
    }

    /// [`PodServer::start`] with more environment variables for the process.
    async fn start_env(
        data: &DataDir,
        pki: &AdminPki,
        extra: &[&str],
        env: &[(String, String)],
    ) -> PodServer {
        let health_port = free_port();
        let admin_port = free_port();
        let health = format!("127.0.0.1:{health_port}");
        let admin = format!("127.0.0.1:{admin_port}");
        let (cert, key, ca) = (
            pki.file("admin.pem"),
            pki.file("admin.key"),
            pki.file("client-ca.pem"),
        );
        let mut args = vec![
            "--health-listen",
            &health,
            "--admin-listen",
            &admin,
            "--admin-tls-cert",
            &cert,
            "--admin-tls-key",
            &key,
            "--admin-client-ca",
            &ca,
        ];
        args.extend_from_slice(extra);
        let spawned = spawn_serve_env(data, &args, env);
        let mut child = spawned.child;
        let stdout = Arc::new(Mutex::new(String::new()));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let mut server = PodServer {
            child,
            port: spawned.port,
            health_port,
            admin_port,
            log: spawned.log,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("kss serve exited ({status}):\n{}", server.log_text());
            }
            if let Ok(channel) = pki.channel(admin_port, Some(&pki.client)).await {
                let answer = AdminClient::new(channel).status(StatusRequest {}).await;
                match answer {
                    Ok(_) => break,
                    Err(s) if s.code() == Code::FailedPrecondition => break,
                    Err(_) => {}
                }
            }
            assert!(
                Instant::now() < deadline,
                "the admin listener did not answer:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn workstation_port_open(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.health_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let answer = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(answer.status).unwrap()
    }

    /// Waits until the workstation listener serves (after leaving the refusing mode).
    async fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stdout_text().contains("serving on") {
            assert!(
                Instant::now() < deadline,
                "kss serve did not start serving:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; returns the exit status's success and how long the exit took.
    /// SIGTERM, then waits for the exit (30 s at most): whether it exited with success.
    fn terminate(mut self) -> bool {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!("kss serve stopped {:?} after SIGTERM", started.elapsed());
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kss serve did not stop after SIGTERM:\n{}", self.log_text());
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ helpers

async fn status(admin: &mut AdminClient<Channel>) -> Result<StatusResponse, tonic::Status> {
    admin.status(StatusRequest {}).await.map(|r| r.into_inner())
}

async fn load_policy(
    admin: &mut AdminClient<Channel>,
    source: &str,
) -> Result<LoadPolicyResponse, tonic::Status> {
    admin
        .load_policy(LoadPolicyRequest {
            source: source.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Writes a file with `mode`.
fn write_mode(path: &Path, contents: &str, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What the operator makes: a master key and a bootstrap identity sealed with it, as a
/// Kubernetes Secret volume with an fsGroup shows them (mode 0440). Returns the ID.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn master_key_file(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    fn write_master_key(&self, master: &MasterKey) {
        let path = self.master_key_file();
        let _ = std::fs::remove_file(&path);
        write_mode(&path, &format!("{}\n", *master.to_hex()), 0o440);
    }

    /// A fresh identity sealed with `master`, written to `name`.
    fn write_identity(&self, name: &str, master: &MasterKey) -> (KeyserverId, PathBuf) {
        let id = KeyserverId::random();
        let sealed = SealedIdentity::seal(&id, &RootSecret::generate(), master);
        let path = self.dir.path().join(name);
        write_mode(&path, &sealed.to_json(), 0o440);
        (id, path)
    }
}

async fn sqlite_identity(data: &DataDir) -> kss_store::Identity {
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    let identity = store.identity().await.unwrap().unwrap();
    store.close().await;
    identity
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// How many times the log says `what`.
fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

// ------------------------------------------------------------------ tests

/// Health over plaintext gRPC, the admin API over mutual TLS (Status, ListInstances,
/// LoadPolicy), clients without a certificate of the admin CA refused, the admin socket
/// still working.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_admin_api_over_mutual_tls() {
    let data = DataDir::new();
    let id = data.create();
    let pki = AdminPki::new();
    let server = PodServer::start(&data, &pki, &[]).await;
    server.wait_serving(Duration::from_secs(10)).await;

    assert_eq!(server.health("").await, ServingStatus::Serving);
    assert_eq!(server.health(READY).await, ServingStatus::Serving);

    let mut admin = pki.admin(server.admin_port).await;
    let st = status(&mut admin).await.unwrap();
    assert_eq!(st.keyserver_id, id);
    assert_eq!(st.mode, "standalone");
    assert_eq!(st.policy_version, 0);
    let instances = admin
        .list_instances(ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(instances.online, 1, "{instances:?}");
    assert_eq!(instances.instances[0].name, st.instance_id);

    // LoadPolicy: a new version, then idempotent.
    let first = load_policy(&mut admin, POLICY).await.unwrap();
    assert_eq!((first.version, first.changed, first.rules), (1, true, 4));
    let again = load_policy(&mut admin, POLICY).await.unwrap();
    assert_eq!((again.version, again.changed, again.rules), (1, false, 4));
    // Invalid: the located error, nothing stored.
    let bad = load_policy(&mut admin, BAD_POLICY).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message()
            .contains("decrypt: rule set 0, rule 0 (per-profile-throttle-rule), argument 'per_days' (line 3): unknown argument"),
        "{}",
        bad.message()
    );
    assert!(bad.message().contains("the policy in force is unchanged"));
    // Typed: the error's kind and location, read without parsing the message.
    let rejection = details::find::<PolicyRejection>(&bad).expect("a PolicyRejection detail");
    let [error] = rejection.errors.as_slice() else {
        panic!("one error: {rejection:?}");
    };
    assert_eq!(error.kind(), PolicyErrorKind::UnknownArgument);
    let at = error.location.clone().expect("a location");
    assert_eq!(
        (
            at.request_type.as_str(),
            at.rule_set,
            at.rule,
            at.argument.as_str(),
            at.line
        ),
        ("decrypt", Some(0), Some(0), "per_days", 3)
    );
    assert_eq!(at.rule_name, "per-profile-throttle-rule");
    assert!(
        error
            .message
            .starts_with("unknown argument (per-profile-throttle-rule takes ")
    );
    // Not YAML: its own kind.
    let yaml = load_policy(&mut admin, "decrypt:\n  - [a\n  b: c\n")
        .await
        .unwrap_err();
    assert_eq!(yaml.code(), Code::InvalidArgument);
    let rejection = details::find::<PolicyRejection>(&yaml).expect("a PolicyRejection detail");
    assert_eq!(
        rejection.errors[0].kind(),
        PolicyErrorKind::Yaml,
        "{rejection:?}"
    );
    let at = rejection.errors[0].location.clone().expect("a location");
    assert!(at.line >= 1 && at.column >= 1, "{rejection:?}");
    let still = load_policy(&mut admin, POLICY).await.unwrap();
    assert_eq!((still.version, still.changed), (1, false));
    // The same text as the CLI stores: `kss policy load` of it changes nothing either.
    let cli = data.load_policy(POLICY);
    assert!(cli.contains("policy unchanged (version 1"), "{cli}");
    // A different text: a new version, applied by the running server.
    let second = load_policy(&mut admin, POLICY_2).await.unwrap();
    assert_eq!((second.version, second.changed, second.rules), (2, true, 1));
    common::wait_until("policy version 2 applied", Duration::from_secs(10), || {
        futures_block(status(&mut admin.clone())).is_ok_and(|s| s.policy_version == 2)
    });
    data.kss_ok(&[
        "policy",
        "dump",
        "--current",
        path_of(&data.dir.path().join("current.yml")),
    ]);
    assert_eq!(
        std::fs::read_to_string(data.dir.path().join("current.yml")).unwrap(),
        kss_policy::Policy::load(POLICY_2).unwrap().dump()
    );

    // Without a client certificate, or with one of another CA: refused in the handshake
    // (with TLS 1.3 the client learns it at its first call).
    for (what, client) in [("no certificate", None), ("another CA", Some(&pki.rogue))] {
        assert!(!pki.admits(server.admin_port, client).await, "{what}");
    }
    let log = server.log_text();
    assert!(!log.contains("BEGIN"), "no key material in the log");
    // The legitimate client still works after the refused handshakes.
    assert_eq!(status(&mut admin).await.unwrap().keyserver_id, id);

    // The admin socket keeps working as before.
    let cli_status: serde_json::Value =
        serde_json::from_str(&data.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(cli_status["running"], true);
    assert_eq!(cli_status["applied_policy_version"], 2);

    // The audit names who loaded the policy, oldest first: the admin client
    // certificate's subject for the loads over mutual TLS (the refused one is not a row),
    // the CLI's uid for the CLI's.
    let rows: Vec<serde_json::Value> = data
        .kss_ok(&["audit", "--json", "--limit", "1000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loads: Vec<(&str, bool)> = rows
        .iter()
        .rev()
        .filter(|r| r["request_type"] == "admin.policy_load")
        .map(|r| {
            let actor = r["actor"].as_str().unwrap();
            let changed = r["meta"]["changed"].as_bool().unwrap();
            (
                if actor.starts_with("uid:") {
                    "cli"
                } else {
                    actor
                },
                changed,
            )
        })
        .collect();
    let tls = "tls:CN=kss-operator";
    assert_eq!(
        loads,
        [
            (tls, true),
            (tls, false),
            (tls, false),
            ("cli", false),
            (tls, true)
        ],
        "{rows:?}"
    );

    assert!(server.terminate());
}

/// The admin listener's client CA replaced on disk (as a Secret update does): new
/// connections are checked against the new CA without a restart, a connection made before
/// keeps working, and a file that is not a CA leaves the CA in use.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_admin_client_ca_applies_without_a_restart() {
    let data = DataDir::new();
    let id = data.create();
    let pki = AdminPki::new();
    let server = PodServer::start(&data, &pki, &["--tls-reload-secs", "1"]).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut before = pki.admin(server.admin_port).await;
    assert!(!pki.admits(server.admin_port, Some(&pki.rogue)).await);

    // Not a certificate: refused, named in the log, the CA in use stays.
    let ca_file = pki.dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    common::wait_until(
        "the bad CA file is refused",
        Duration::from_secs(20),
        || {
            server
                .log_text()
                .contains("client-ca.pem: no certificate in the client CA file")
        },
    );
    assert!(pki.admits(server.admin_port, Some(&pki.client)).await);

    std::fs::write(&ca_file, &pki.other_ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pki.admits(server.admin_port, Some(&pki.rogue)).await {
        assert!(
            Instant::now() < deadline,
            "the new client CA was not taken up:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!pki.admits(server.admin_port, Some(&pki.client)).await);
    assert_eq!(status(&mut before).await.unwrap().keyserver_id, id);
    let log = server.log_text();
    assert!(
        log.contains("TLS files changed: new connections use the new certificate"),
        "{log}"
    );
    assert!(!log.contains("BEGIN"), "no key material in the log");
}

fn futures_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Bootstrap on SQLite: a data directory with only a master key and a bootstrap identity
/// file; stored on the first start, left alone on the next; another identity is refused
/// without changing anything; SIGTERM stops a refusing server at once.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_identity_then_restart_then_mismatch() {
    let data = DataDir::new();
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let master = MasterKey::generate();
    // The master key in the data directory, as a Secret volume shows it (group-readable).
    std::fs::create_dir_all(data.path()).unwrap();
    write_mode(
        &data.path().join("master.key"),
        &format!("{}\n", *master.to_hex()),
        0o440,
    );
    let (id, bootstrap) = secrets.write_identity("identity.json", &master);
    let flag = ["--bootstrap-identity", path_of(&bootstrap)];

    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    assert_eq!(
        status(&mut admin).await.unwrap().keyserver_id,
        id.to_string()
    );
    let log = server.log_text();
    assert!(
        log.contains(&format!("keyserver {id} bootstrapped into the database")),
        "{log}"
    );
    // A workstation reaches it under that ID.
    let ca = data.ca_pem();
    let client = kss_client::KssClient::connect(&server.endpoint(), &ca, Some("localhost"))
        .await
        .unwrap();
    assert_eq!(client.info().await.unwrap().keyserver_id, id.to_string());
    assert!(server.terminate());
    let stored = sqlite_identity(&data).await;

    // Restart with the same file: same ID, nothing rewritten.
    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    assert_eq!(
        status(&mut admin).await.unwrap().keyserver_id,
        id.to_string()
    );
    assert!(!server.log_text().contains("bootstrapped"));
    assert!(server.terminate());
    let after = sqlite_identity(&data).await;
    assert_eq!(
        (&after.keyserver_id, &after.sealed_root, after.created_at_ms),
        (
            &stored.keyserver_id,
            &stored.sealed_root,
            stored.created_at_ms
        )
    );

    // Another identity: refusing mode.
    let (other, other_file) = secrets.write_identity("other.json", &master);
    let server =
        PodServer::start(&data, &pki, &["--bootstrap-identity", path_of(&other_file)]).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_refused_as_mismatch(&refused, &id, &other);
    // Every admin RPC refuses the same way, LoadPolicy included (nothing stored).
    let load = load_policy(&mut admin, POLICY).await.unwrap_err();
    assert_refused_as_mismatch(&load, &id, &other);
    let list = admin
        .list_instances(ListInstancesRequest {})
        .await
        .unwrap_err();
    assert_eq!(list.code(), Code::FailedPrecondition);
    // Live, not ready; no workstation listener.
    assert_eq!(server.health("").await, ServingStatus::Serving);
    assert_eq!(server.health(READY).await, ServingStatus::NotServing);
    assert!(!server.workstation_port_open());
    // The admin socket answers the same.
    let mut socket = kss_server::commands::admin_client::connect(&kss_server::data_dir::DataDir {
        root: data.path(),
        master_key: data.path().join("master.key"),
        db_uri: None,
        db_ca_file: None,
        given_db_uri_file: None,
    })
    .await
    .unwrap();
    let via_socket = socket.status(StatusRequest {}).await.unwrap_err();
    assert_refused_as_mismatch(&via_socket, &id, &other);
    // `kss status` shows the typed reason.
    let cli_status: serde_json::Value =
        serde_json::from_str(&data.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(cli_status["running"], false);
    assert_eq!(
        cli_status["refusal_reason"],
        "REFUSAL_REASON_IDENTITY_MISMATCH"
    );
    assert_eq!(cli_status["refusing"], via_socket.message());
    // Checked again every 2 s, logged every time.
    common::wait_until("two more identity checks", Duration::from_secs(30), || {
        count(
            &server.log_text(),
            "IdentityMismatch: the database holds keyserver",
        ) >= 3
    });
    let log = server.log_text();
    assert!(log.contains("ERROR"), "{log}");
    assert!(!server.workstation_port_open());
    assert!(!server.stdout_text().contains("serving on"));
    assert!(server.terminate());
    // Nothing was changed.
    let after = sqlite_identity(&data).await;
    assert_eq!(
        (&after.keyserver_id, &after.sealed_root, after.created_at_ms),
        (
            &stored.keyserver_id,
            &stored.sealed_root,
            stored.created_at_ms
        )
    );
    let policy = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    assert!(policy.policy(None).await.unwrap().is_none());
    policy.close().await;
}

/// An empty database and no bootstrap file: IdentityMissing; the instance leaves the
/// refusing mode by itself, in the same process, once the file appears.
#[tokio::test(flavor = "multi_thread")]
async fn missing_identity_refuses_until_a_bootstrap_identity_appears() {
    let data = DataDir::new();
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let master = MasterKey::generate();
    secrets.write_master_key(&master);
    let absent = secrets.dir.path().join("bootstrap").join("identity.json");
    let server = PodServer::start(
        &data,
        &pki,
        &[
            "--master-key-file",
            path_of(&secrets.master_key_file()),
            "--bootstrap-identity",
            path_of(&absent),
        ],
    )
    .await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "IdentityMissing: the database holds no keyserver identity and no bootstrap identity \
         was given; restore it with kss recovery-ingest-key"
    );
    assert_eq!(refusal_of(&refused), RefusalReason::IdentityMissing);
    assert_eq!(server.health(READY).await, ServingStatus::NotServing);
    assert!(!server.workstation_port_open());

    // The operator creates the Secret: the file appears.
    std::fs::create_dir_all(absent.parent().unwrap()).unwrap();
    let id = KeyserverId::random();
    let sealed = SealedIdentity::seal(&id, &RootSecret::generate(), &master);
    write_mode(&absent, &sealed.to_json(), 0o440);
    server.wait_serving(Duration::from_secs(10)).await;
    assert_eq!(
        status(&mut admin).await.unwrap().keyserver_id,
        id.to_string()
    );
    assert_eq!(server.health(READY).await, ServingStatus::Serving);
    assert!(server.workstation_port_open());
    let log = server.log_text();
    assert!(
        log.contains(&format!("keyserver {id} bootstrapped into the database")),
        "{log}"
    );
    assert!(server.terminate());
}

/// A master key that cannot open the stored identity: MasterKeyMismatch; fixing the key
/// file (the Secret) lets the instance serve without a restart. A bootstrap identity sealed
/// with another key is refused before anything is stored.
#[tokio::test(flavor = "multi_thread")]
async fn master_key_mismatch_refuses_until_the_key_is_fixed() {
    let data = DataDir::new();
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let right = MasterKey::generate();
    let wrong = MasterKey::generate();
    secrets.write_master_key(&wrong);
    let (id, bootstrap) = secrets.write_identity("identity.json", &right);
    let key_file = secrets.master_key_file();
    let args = [
        "--master-key-file",
        path_of(&key_file),
        "--bootstrap-identity",
        path_of(&bootstrap),
    ];
    // Empty database, a bootstrap identity the key cannot open: nothing is stored.
    let server = PodServer::start(&data, &pki, &args).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().starts_with(&format!(
            "MasterKeyMismatch: the master key cannot open keyserver {id}'s secret in the bootstrap identity"
        )),
        "{}",
        refused.message()
    );
    assert_eq!(refusal_of(&refused), RefusalReason::BootstrapKeyMismatch);
    assert!(server.terminate());
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    assert!(store.identity().await.unwrap().is_none());
    store.close().await;

    // The identity is stored (with the right key), then served with the wrong one.
    secrets.write_master_key(&right);
    let server = PodServer::start(&data, &pki, &args).await;
    server.wait_serving(Duration::from_secs(10)).await;
    assert!(server.terminate());
    secrets.write_master_key(&wrong);
    let server = PodServer::start(&data, &pki, &args).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        format!(
            "MasterKeyMismatch: the master key cannot open keyserver {id}'s secret in the database"
        )
    );
    assert_eq!(refusal_of(&refused), RefusalReason::MasterKeyMismatch);
    assert_eq!(server.health(READY).await, ServingStatus::NotServing);
    // The Secret is fixed: served within a re-check, same process.
    secrets.write_master_key(&right);
    server.wait_serving(Duration::from_secs(10)).await;
    assert_eq!(
        status(&mut admin).await.unwrap().keyserver_id,
        id.to_string()
    );
    assert_eq!(server.health(READY).await, ServingStatus::Serving);
    let log = server.log_text();
    assert!(!log.contains(&*right.to_hex()) && !log.contains(&*wrong.to_hex()));
    assert!(server.terminate());
}

/// Cluster mode as a pod runs it: `--db-uri` to a fresh database, an empty data directory,
/// the master key and bootstrap identity from Secret volumes (mode 0440), no
/// `kss initialize`. Two pods bootstrap at once (one stores the identity); a third joins
/// with the bootstrap file gone; a pod configured for another keyserver refuses.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_pods_bootstrap_join_and_refuse_another_identity() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let master = MasterKey::generate();
    secrets.write_master_key(&master);
    let (id, bootstrap) = secrets.write_identity("identity.json", &master);
    let key_file = secrets.master_key_file();
    let pod_args = |bootstrap: &Path| {
        vec![
            "--db-uri".to_string(),
            db.clone(),
            "--master-key-file".to_string(),
            path_of(&key_file).to_string(),
            "--bootstrap-identity".to_string(),
            path_of(bootstrap).to_string(),
        ]
    };

    // Two pods start at once on the empty database, both with the bootstrap identity:
    // one stores it, the other finds it stored; both serve it.
    let (first_dir, racer_dir) = (DataDir::new(), DataDir::new());
    let first_args = pod_args(&bootstrap);
    let first_flags = strs(&first_args);
    let (first, racer) = tokio::join!(
        PodServer::start(&first_dir, &pki, &first_flags),
        PodServer::start(&racer_dir, &pki, &first_flags),
    );
    first.wait_serving(Duration::from_secs(15)).await;
    racer.wait_serving(Duration::from_secs(15)).await;
    let mut admin = pki.admin(first.admin_port).await;
    let st = status(&mut admin).await.unwrap();
    assert_eq!(st.keyserver_id, id.to_string());
    assert_eq!(st.mode, "cluster");
    let mut racer_admin = pki.admin(racer.admin_port).await;
    assert_eq!(
        status(&mut racer_admin).await.unwrap().keyserver_id,
        id.to_string()
    );
    let bootstrapped = format!("keyserver {id} bootstrapped into the database");
    assert_eq!(
        count(&first.log_text(), &bootstrapped) + count(&racer.log_text(), &bootstrapped),
        1
    );
    assert_eq!(first.health(READY).await, ServingStatus::Serving);
    // The data directory holds only what kss made itself.
    let mut made: Vec<String> = std::fs::read_dir(first_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["admin.sock", "tls"], "{made:?}");
    let loaded = load_policy(&mut admin, POLICY).await.unwrap();
    assert_eq!((loaded.version, loaded.changed), (1, true));

    // The operator deleted the bootstrap Secret: a second pod joins the same keyserver.
    let second_dir = DataDir::new();
    let gone = secrets.dir.path().join("deleted.json");
    let second_args = pod_args(&gone);
    let second = PodServer::start(&second_dir, &pki, &strs(&second_args)).await;
    second.wait_serving(Duration::from_secs(15)).await;
    let mut admin2 = pki.admin(second.admin_port).await;
    let st2 = status(&mut admin2).await.unwrap();
    assert_eq!(st2.keyserver_id, id.to_string());
    assert_eq!(st2.policy_version, 1);
    let again = load_policy(&mut admin2, POLICY).await.unwrap();
    assert_eq!((again.version, again.changed), (1, false));
    common::wait_until("three instances online", Duration::from_secs(10), || {
        futures_block(admin2.clone().list_instances(ListInstancesRequest {}))
            .is_ok_and(|r| r.into_inner().online == 3)
    });

    // A pod configured for another keyserver: refuses, writes nothing.
    let (other, other_file) = secrets.write_identity("other.json", &master);
    let third_dir = DataDir::new();
    let third_args = pod_args(&other_file);
    let third = PodServer::start(&third_dir, &pki, &strs(&third_args)).await;
    let mut admin3 = pki.admin(third.admin_port).await;
    let refused = status(&mut admin3).await.unwrap_err();
    assert_refused_as_mismatch(&refused, &id, &other);
    assert_eq!(third.health(READY).await, ServingStatus::NotServing);
    assert!(!third.workstation_port_open());
    // Not registered: the registry still lists the three serving instances only.
    let list = admin2
        .list_instances(ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.instances.len(), 3, "{list:?}");
    assert!(third.terminate());

    assert!(second.terminate());
    assert!(racer.terminate());
    assert!(first.terminate());
    let store = kss_store::MysqlStore::connect(kss_store::parse_db_uri(&db).unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.identity().await.unwrap().unwrap().keyserver_id,
        id.to_string()
    );
    store.close().await;
    common::drop_database(&name).await;
}

/// Secret files may be group-readable (Kubernetes Secret volumes with an fsGroup), never
/// open to others or group-writable.
#[test]
fn check_private_accepts_group_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    for mode in [0o600, 0o400, 0o640, 0o440] {
        write_mode(&path, "x", mode);
        kss_server::data_dir::check_private(&path)
            .unwrap_or_else(|e| panic!("mode {mode:o} refused: {e}"));
        std::fs::remove_file(&path).unwrap();
    }
    for mode in [0o604, 0o460, 0o620, 0o644, 0o666, 0o601] {
        write_mode(&path, "x", mode);
        let e = kss_server::data_dir::check_private(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("mode {mode:o}")), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}

/// The pod flags' misconfigurations stop `kss serve` at once, saying what is missing.
#[test]
fn admin_listen_needs_its_tls_files() {
    let data = DataDir::new();
    data.create();
    let out = data.kss(&[
        "serve",
        "--self-signed-tls",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(
        err.contains("--admin-listen")
            && err.contains("missing: --admin-tls-cert, --admin-tls-key, --admin-client-ca"),
        "{err}"
    );
    let pki = AdminPki::new();
    let out = data.kss(&[
        "serve",
        "--self-signed-tls",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-tls-cert",
        &pki.file("admin.pem"),
        "--admin-tls-key",
        &pki.file("admin.key"),
        "--admin-client-ca",
        &pki.file("admin.key"),
    ]);
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(
        err.contains("the admin listener's TLS files")
            && err.contains("admin.key: no certificate in the client CA file"),
        "{err}"
    );
    let out = data.kss(&["serve", "--dev", "--bootstrap-identity", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("cannot be used with"));
}

/// The admin API's answer of an instance whose database holds keyserver `stored` while
/// it was configured for `configured`.
fn assert_refused_as_mismatch(
    refused: &tonic::Status,
    stored: &impl std::fmt::Display,
    configured: &impl std::fmt::Display,
) {
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        format!(
            "IdentityMismatch: the database holds keyserver {stored}; this instance was \
             configured for keyserver {configured}; nothing was changed"
        )
    );
    assert_eq!(refusal_of(refused), RefusalReason::IdentityMismatch);
}

/// The typed reason of a refusing instance's answer (its `kss.v1.Refusal` detail, whose
/// message is the status's).
fn refusal_of(refused: &tonic::Status) -> RefusalReason {
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refusal = details::find::<Refusal>(refused).expect("a Refusal detail");
    assert_eq!(refusal.message, refused.message());
    refusal.reason()
}

// ------------------------------------------------------------------ the keyserver ID pin

/// The master key file of a data directory, replaced (as a Secret volume shows it).
fn write_data_master_key(data: &DataDir, master: &MasterKey) {
    std::fs::create_dir_all(data.path()).unwrap();
    let path = data.path().join("master.key");
    let _ = std::fs::remove_file(&path);
    write_mode(&path, &format!("{}\n", *master.to_hex()), 0o440);
}

/// What a refusing instance must leave as it is: the identity, the policy, the audit log,
/// the registry.
#[derive(Debug, PartialEq)]
struct Snapshot {
    identity: Option<kss_store::Identity>,
    policy: Option<u64>,
    audit: Vec<u64>,
    instances: Vec<String>,
}

async fn snapshot(store: &dyn Store) -> Snapshot {
    let audit = store
        .audit(&kss_store::AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    Snapshot {
        identity: store.identity().await.unwrap(),
        policy: store.policy(None).await.unwrap().map(|p| p.version),
        audit: audit.iter().map(|e| e.id).collect(),
        instances: store
            .instances()
            .await
            .unwrap()
            .instances
            .into_iter()
            .map(|i| format!("{} {} {:?}", i.info.name, i.heartbeat_ms, i.stopped_at_ms))
            .collect(),
    }
}

async fn sqlite_snapshot(data: &DataDir) -> Snapshot {
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    let snap = snapshot(&store).await;
    store.close().await;
    snap
}

fn admin_keys(n: usize) -> Vec<AdminKey> {
    (0..n).map(|_| AdminKey::generate()).collect()
}

fn holders_of(keys: &[AdminKey]) -> Vec<BackupHolder> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| BackupHolder {
            name: format!("holder-{i}"),
            public_key: k.public().to_hex(),
        })
        .collect()
}

/// `--keyserver-id` takes exactly the canonical form; anything else stops `kss serve` at
/// once, naming the flag (from the environment too).
#[test]
fn a_malformed_keyserver_id_pin_is_a_startup_error() {
    let data = DataDir::new();
    data.create();
    let id = KeyserverId::random().to_string();
    for bad in [
        id.to_uppercase(),
        format!(" {id}"),
        id[..31].to_string(),
        format!("{id}0"),
        format!("0x{}", &id[2..]),
    ] {
        let out = data.kss(&["serve", "--self-signed-tls", "--keyserver-id", &bad]);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = common::text(&out.stderr);
        assert!(err.contains("--keyserver-id"), "{bad:?}: {err}");
        let out = std::process::Command::new(common::kss_bin())
            .arg("--data-dir")
            .arg(data.path())
            .args(["serve", "--self-signed-tls"])
            .env("KSS_KEYSERVER_ID", &bad)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{bad:?} accepted from the environment"
        );
        let err = common::text(&out.stderr);
        assert!(err.contains("--keyserver-id"), "{bad:?}: {err}");
    }
}

/// A pinned instance serves its keyserver only: a database of another keyserver, or an
/// empty one with a bootstrap identity of another, is refused (IdentityMismatch) and
/// nothing is written; an empty database and no file is IdentityMissing; the pinned
/// keyserver is served (from the environment, as the operator passes it).
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_instance_never_serves_another_keyserver() {
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let master = MasterKey::generate();

    // A database of keyserver A, pinned to B: refused, nothing written.
    let data = DataDir::new();
    let a = data.create();
    data.load_policy(POLICY);
    let b = KeyserverId::random();
    let before = sqlite_snapshot(&data).await;
    let server = PodServer::start(&data, &pki, &["--keyserver-id", &b.to_string()]).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_refused_as_mismatch(&refused, &a, &b);
    let issue = admin
        .issue_backup_key(IssueBackupKeyRequest {
            holders: holders_of(&admin_keys(1)),
            threshold: 1,
            allow_weak: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refusal_of(&issue), RefusalReason::IdentityMismatch);
    assert_eq!(server.health(READY).await, ServingStatus::NotServing);
    assert!(!server.workstation_port_open());
    assert!(server.terminate());
    assert_eq!(sqlite_snapshot(&data).await, before);
    // Pinned to A (by the environment): served.
    let env = [("KSS_KEYSERVER_ID".to_string(), a.clone())];
    let server = PodServer::start_env(&data, &pki, &[], &env).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    assert_eq!(status(&mut admin).await.unwrap().keyserver_id, a);
    assert!(server.terminate());

    // An empty database, a bootstrap identity of C, pinned to B: refused, nothing stored.
    let empty = DataDir::new();
    write_data_master_key(&empty, &master);
    let (c, file) = secrets.write_identity("c.json", &master);
    let env = [("KSS_KEYSERVER_ID".to_string(), b.to_string())];
    let server = PodServer::start_env(
        &empty,
        &pki,
        &["--bootstrap-identity", path_of(&file)],
        &env,
    )
    .await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refusal_of(&refused), RefusalReason::IdentityMismatch);
    assert_eq!(
        refused.message(),
        format!(
            "IdentityMismatch: the bootstrap identity {} is of keyserver {c}; this instance is \
             pinned to keyserver {b} (--keyserver-id); nothing was changed",
            file.display()
        )
    );
    assert!(!server.workstation_port_open());
    assert!(server.terminate());
    let snap = sqlite_snapshot(&empty).await;
    assert_eq!(snap.identity, None);
    assert!(snap.audit.is_empty() && snap.policy.is_none(), "{snap:?}");

    // Pinned, an empty database and no bootstrap identity: IdentityMissing.
    let server = PodServer::start_env(&empty, &pki, &[], &env).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refusal_of(&refused), RefusalReason::IdentityMissing);
    assert!(server.terminate());
    assert_eq!(sqlite_snapshot(&empty).await.identity, None);

    // Pinned to C with C's bootstrap identity: stored and served.
    let server = PodServer::start(
        &empty,
        &pki,
        &[
            "--keyserver-id",
            &c.to_string(),
            "--bootstrap-identity",
            path_of(&file),
        ],
    )
    .await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    assert_eq!(
        status(&mut admin).await.unwrap().keyserver_id,
        c.to_string()
    );
    assert!(server.terminate());
}

// ------------------------------------------------------------------ reseal

/// A bootstrap identity of `id` and `root`, sealed with `master`, written to `name`.
fn write_sealed(
    secrets: &Secrets,
    name: &str,
    id: &KeyserverId,
    root: &[u8; 32],
    master: &MasterKey,
) -> PathBuf {
    let sealed = SealedIdentity::seal(id, &RootSecret::from_bytes(root).unwrap(), master);
    let path = secrets.dir.path().join(name);
    write_mode(&path, &sealed.to_json(), 0o440);
    path
}

/// Audit records of one action (`admin.<action>`), oldest first.
async fn audit_of(store: &dyn Store, action: &str) -> Vec<kss_store::AuditEntry> {
    let mut rows = store
        .audit(&kss_store::AuditFilter {
            request_type: Some(format!("admin.{action}")),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    rows.reverse();
    rows
}

/// The master key is lost; the database stays. A bootstrap identity with the database's ID
/// and root, sealed with the new key, reseals the stored identity (compare-and-swap,
/// audited, logged) and the instance serves the same keyserver with its rows; one with the
/// right ID but another root is refused and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_master_key_is_resealed_only_with_the_databases_root() {
    let data = DataDir::new();
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let old = MasterKey::generate();
    write_data_master_key(&data, &old);
    let id = KeyserverId::random();
    let root = *RootSecret::generate().expose_bytes();
    let first = write_sealed(&secrets, "identity.json", &id, &root, &old);
    let server = PodServer::start(&data, &pki, &["--bootstrap-identity", path_of(&first)]).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    assert_eq!(load_policy(&mut admin, POLICY).await.unwrap().version, 1);
    assert!(server.terminate());

    // The master key is lost: a new one in its place.
    let new = MasterKey::generate();
    write_data_master_key(&data, &new);
    let before = sqlite_snapshot(&data).await;
    // No bootstrap identity (the operator deleted it): MasterKeyMismatch, as before.
    let absent = secrets.dir.path().join("deleted.json");
    let server = PodServer::start(&data, &pki, &["--bootstrap-identity", path_of(&absent)]).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refusal_of(&refused), RefusalReason::MasterKeyMismatch);
    assert!(server.terminate());
    // The right ID, another root: refused as not the database's, nothing written.
    let forged_root = *RootSecret::generate().expose_bytes();
    let forged = write_sealed(&secrets, "forged.json", &id, &forged_root, &new);
    let server = PodServer::start(&data, &pki, &["--bootstrap-identity", path_of(&forged)]).await;
    let mut admin = pki.admin(server.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_eq!(refusal_of(&refused), RefusalReason::IdentityMismatch);
    let message = refused.message();
    assert!(
        message.starts_with(&format!(
            "IdentityMismatch: the master key cannot open keyserver {id}'s secret in the \
             database, and the bootstrap identity {} has its ID but not its root secret",
            forged.display()
        )),
        "{message}"
    );
    assert!(message.contains("policy version"), "{message}");
    assert!(server.terminate());
    assert_eq!(sqlite_snapshot(&data).await, before);

    // The database's root, sealed with the new key: resealed, then served.
    let recovered = write_sealed(&secrets, "recovered.json", &id, &root, &new);
    let flag = ["--bootstrap-identity", path_of(&recovered)];
    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let mut admin = pki.admin(server.admin_port).await;
    let st = status(&mut admin).await.unwrap();
    assert_eq!((st.keyserver_id, st.policy_version), (id.to_string(), 1));
    let log = server.log_text();
    assert_eq!(count(&log, "resealed with a new master key"), 1, "{log}");
    for secret in [
        new.to_hex().to_string(),
        old.to_hex().to_string(),
        hex::encode(root),
    ] {
        assert!(!log.contains(&secret));
    }
    assert!(server.terminate());
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    let stored = store.identity().await.unwrap().unwrap();
    let file = SealedIdentity::from_json(&std::fs::read_to_string(&recovered).unwrap()).unwrap();
    let was = before.identity.unwrap();
    assert_eq!(
        (
            &stored.keyserver_id,
            &stored.sealed_root,
            stored.created_at_ms
        ),
        (&was.keyserver_id, &file.sealed_root, was.created_at_ms)
    );
    let resealed = audit_of(&store, "identity_reseal").await;
    assert_eq!(resealed.len(), 1, "{resealed:?}");
    assert_eq!(resealed[0].record.actor.as_deref(), Some("server"));
    assert!(
        resealed[0]
            .record
            .meta
            .contains("identity resealed with a new master key"),
        "{}",
        resealed[0].record.meta
    );
    store.close().await;

    // Restarted: opened, not resealed again.
    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    assert!(!server.log_text().contains("resealed"));
    assert!(server.terminate());
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    assert_eq!(audit_of(&store, "identity_reseal").await.len(), 1);
    // The audit chain, resealed rows and all, verifies under the same root.
    store.set_audit_key(
        kss_server::identity::KeyserverIdentity::new(id, RootSecret::from_bytes(&root).unwrap())
            .chain_key(),
    );
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        kss_store::ChainVerdict::Intact(_)
    ));
    store.close().await;
}

/// A data directory (master key `new`) whose SQLite database holds keyserver `id`'s
/// identity sealed with a lost master key, and `profiles`.
async fn lost_key_database(
    data: &DataDir,
    id: &KeyserverId,
    root: &[u8; 32],
    new: &MasterKey,
    profiles: &[kss_store::Profile],
) {
    write_data_master_key(data, new);
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    let lost = MasterKey::generate();
    let sealed = SealedIdentity::seal(id, &RootSecret::from_bytes(root).unwrap(), &lost);
    store
        .create_identity(&kss_server::identity::identity_row(&sealed, 1))
        .await
        .unwrap();
    let mut tx = store.begin_decisions(None).await.unwrap();
    for p in profiles {
        assert!(tx.insert_profile(p).await.unwrap());
    }
    tx.commit().await.unwrap();
    store.close().await;
}

/// A profile row, MACed under `root`'s row key (`None`: no MAC).
fn profile_row(id: &KeyserverId, root: Option<&[u8; 32]>) -> kss_store::Profile {
    let mut row = kss_store::Profile {
        profile_id: kss_crypto::ids::ProfileId::random().to_string(),
        device_id: kss_crypto::ids::DeviceId::random().to_string(),
        device_public_key: vec![1; 32],
        workstation_share: vec![2; 48],
        name: "batch".into(),
        words: vec!["alpha".into(), "bravo".into()],
        created_at_ms: 1_700_000_000_000,
        mac: Vec::new(),
    };
    if let Some(root) = root {
        let key = RootSecret::from_bytes(root).unwrap().row_key(id);
        row.mac = kss_server::integrity::profile_mac(&key, &row);
    }
    row
}

/// A reseal needs the database's rows to prove the bootstrap identity's root: a profile
/// MACed under it proves it; one MACed under another root refuses (IdentityMismatch); rows
/// without a MAC prove nothing (MasterKeyMismatch); a database with no row at all has
/// nothing to lose (resealed). Nothing is written when refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_reseal_needs_a_proof_by_the_databases_rows() {
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let new = MasterKey::generate();
    let id = KeyserverId::random();
    let root = *RootSecret::generate().expose_bytes();
    let other_root = *RootSecret::generate().expose_bytes();
    let file = write_sealed(&secrets, "recovered.json", &id, &root, &new);
    let flag = ["--bootstrap-identity", path_of(&file)];

    // A profile MACed under another root, and one without a MAC: refused.
    for (profiles, reason, says) in [
        (
            vec![profile_row(&id, Some(&other_root))],
            RefusalReason::IdentityMismatch,
            "1 MACed profile row(s)",
        ),
        (
            vec![profile_row(&id, None)],
            RefusalReason::MasterKeyMismatch,
            "nothing proves that the bootstrap identity",
        ),
    ] {
        let data = DataDir::new();
        lost_key_database(&data, &id, &root, &new, &profiles).await;
        let before = sqlite_snapshot(&data).await;
        let server = PodServer::start(&data, &pki, &flag).await;
        let mut admin = pki.admin(server.admin_port).await;
        let refused = status(&mut admin).await.unwrap_err();
        assert_eq!(refusal_of(&refused), reason, "{}", refused.message());
        assert!(refused.message().contains(says), "{}", refused.message());
        assert!(!server.workstation_port_open());
        assert!(server.terminate());
        assert_eq!(sqlite_snapshot(&data).await, before);
    }

    // A profile MACed under the root (beside a forged one): proven, resealed.
    let data = DataDir::new();
    let rows = [
        profile_row(&id, Some(&other_root)),
        profile_row(&id, Some(&root)),
    ];
    lost_key_database(&data, &id, &root, &new, &rows).await;
    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    let log = server.log_text();
    assert!(
        log.contains("a profile row verifies under its root"),
        "{log}"
    );
    assert!(server.terminate());

    // Nothing but the identity: resealed.
    let data = DataDir::new();
    lost_key_database(&data, &id, &root, &new, &[]).await;
    let server = PodServer::start(&data, &pki, &flag).await;
    server.wait_serving(Duration::from_secs(10)).await;
    assert!(
        server
            .log_text()
            .contains("the database holds no profile, policy version or audit row")
    );
    assert!(server.terminate());
    let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
        .await
        .unwrap();
    let sealed =
        kss_server::identity::sealed_of(&store.identity().await.unwrap().unwrap()).unwrap();
    assert_eq!(sealed.open(&new).unwrap().expose_bytes(), &root);
    store.close().await;
}

// ------------------------------------------------------------------ IssueBackupKey

async fn issue(
    admin: &mut AdminClient<Channel>,
    holders: Vec<BackupHolder>,
    threshold: u32,
    allow_weak: bool,
) -> Result<IssueBackupKeyResponse, tonic::Status> {
    admin
        .issue_backup_key(IssueBackupKeyRequest {
            holders,
            threshold,
            allow_weak,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The backup key of an answer, and the root its holders' approvals (`approvers`)
/// recover.
fn recovered_root(
    answer: &IssueBackupKeyResponse,
    keys: &[AdminKey],
    approvers: &[usize],
) -> Result<[u8; 32], kss_crypto::CryptoError> {
    let backup = BackupKey::from_json(&answer.backup_json).unwrap();
    let approvals: Vec<_> = approvers
        .iter()
        .map(|&i| backup::approve(&backup, &keys[i]).unwrap())
        .collect();
    backup::recover(&backup, &approvals).map(|r| *r.expose_bytes())
}

/// IssueBackupKey on a serving instance: the key recovers the instance's root with the
/// threshold of approvals (and not with fewer, nor with another key's approvals); every
/// invalid request is refused with what is wrong; each issue is audited with the actor,
/// the holders' names and the threshold; `kss backup issue` does the same through the
/// admin socket, and its key restores the keyserver into an empty database.
async fn issue_backup_keys(db: Option<&str>) {
    let data = DataDir::new();
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let master = MasterKey::generate();
    write_data_master_key(&data, &master);
    let id = KeyserverId::random();
    let root = *RootSecret::generate().expose_bytes();
    let file = write_sealed(&secrets, "identity.json", &id, &root, &master);
    let mut args = vec!["--bootstrap-identity", path_of(&file)];
    if let Some(db) = db {
        args.extend(["--db-uri", db]);
    }
    let server = PodServer::start(&data, &pki, &args).await;
    server.wait_serving(Duration::from_secs(15)).await;
    let mut admin = pki.admin(server.admin_port).await;

    let keys = admin_keys(5);
    let first = issue(&mut admin, holders_of(&keys), 3, false)
        .await
        .unwrap();
    assert_eq!(
        (first.keyserver_id.as_str(), first.holders, first.threshold),
        (id.to_string().as_str(), 5, 3)
    );
    assert_eq!(
        BackupKey::from_json(&first.backup_json)
            .unwrap()
            .keyserver_id(),
        &id
    );
    assert_eq!(recovered_root(&first, &keys, &[0, 2, 4]).unwrap(), root);
    assert_eq!(recovered_root(&first, &keys, &[1, 2, 3]).unwrap(), root);
    assert!(recovered_root(&first, &keys, &[0, 1]).is_err());
    assert!(!first.backup_json.contains(&hex::encode(root)));

    // New holders and threshold: a new key; old and new approvals do not mix.
    // Three holders stay (the same keys), four are new.
    let mut second_keys: Vec<AdminKey> = keys[..3]
        .iter()
        .map(|k| AdminKey::from_bytes(&*k.to_bytes()).unwrap())
        .collect();
    second_keys.extend(admin_keys(4));
    let second = issue(&mut admin, holders_of(&second_keys), 4, false)
        .await
        .unwrap();
    assert_eq!((second.holders, second.threshold), (7, 4));
    assert_eq!(
        recovered_root(&second, &second_keys, &[0, 3, 5, 6]).unwrap(),
        root
    );
    let old = BackupKey::from_json(&first.backup_json).unwrap();
    let new = BackupKey::from_json(&second.backup_json).unwrap();
    // The same administrators' approvals of the new key do not open the old one, nor
    // the other way round.
    let new_approvals: Vec<_> = (0..3)
        .map(|i| backup::approve(&new, &second_keys[i]).unwrap())
        .collect();
    assert!(backup::recover(&old, &new_approvals).is_err());
    let old_approvals: Vec<_> = (0..3)
        .map(|i| backup::approve(&old, &keys[i]).unwrap())
        .collect();
    let mut mixed = old_approvals.clone();
    mixed.push(backup::approve(&new, &second_keys[3]).unwrap());
    assert!(backup::recover(&new, &mixed).is_err());
    assert!(backup::recover(&new, &old_approvals).is_err());

    // Every invalid request, with what is wrong.
    let holder = |name: &str, key: &str| BackupHolder {
        name: name.into(),
        public_key: key.into(),
    };
    let five = holders_of(&keys);
    let mut dup_name = five.clone();
    dup_name[3].name = dup_name[1].name.clone();
    let mut dup_key = five.clone();
    dup_key[4].public_key = dup_key[0].public_key.clone();
    let mut not_hex = five.clone();
    not_hex[2].public_key = "zz".repeat(48);
    let mut not_a_point = five.clone();
    not_a_point[2].public_key = "00".repeat(48);
    let mut secret_not_public = five.clone();
    secret_not_public[2].public_key = keys[2].to_hex().to_string();
    let mut long_name = five.clone();
    long_name[1].name = "n".repeat(257);
    let mut empty_name = five.clone();
    empty_name[1].name = String::new();
    let too_many = holders_of(&admin_keys(65));
    let cases: Vec<(Vec<BackupHolder>, u32, bool, &str)> = vec![
        (Vec::new(), 1, true, "holders: none given"),
        (
            dup_name,
            3,
            false,
            "holders[3].name: \"holder-1\" is also the name of holders[1]",
        ),
        (
            dup_key,
            3,
            false,
            "holders[4].public_key: the same administrator key as holders[0]",
        ),
        (
            not_hex,
            3,
            false,
            "holders[2].public_key: not an administrator public key",
        ),
        (
            not_a_point,
            3,
            false,
            "holders[2].public_key: not an administrator public key",
        ),
        (
            secret_not_public,
            3,
            false,
            "holders[2].public_key: not an administrator public key",
        ),
        (
            long_name,
            3,
            false,
            "holders[1].name: 257 bytes, at most 256 allowed",
        ),
        (empty_name, 3, false, "holders[1].name: empty"),
        (too_many, 3, false, "holders: 65 given, at most 64 allowed"),
        (five.clone(), 0, true, "threshold: 0 needs between 1 and 5"),
        (five.clone(), 6, true, "threshold: 6 needs between 1 and 5"),
        (
            five.clone(),
            2,
            false,
            "refusing a weak backup key: 5 holder(s) with threshold 2",
        ),
        (
            five[..4].to_vec(),
            3,
            false,
            "refusing a weak backup key: 4 holder(s) with threshold 3",
        ),
        (
            vec![holder("solo", &five[0].public_key)],
            1,
            false,
            "refusing a weak backup key",
        ),
    ];
    let before = audit_count(db, &data).await;
    for (holders, threshold, allow_weak, says) in cases {
        let refused = issue(&mut admin, holders, threshold, allow_weak)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{says}: {refused:?}");
        assert!(
            refused.message().starts_with(says),
            "{says}: {}",
            refused.message()
        );
        assert!(!refused.message().contains(&*keys[2].to_hex()));
    }
    assert_eq!(
        audit_count(db, &data).await,
        before,
        "a refused request is not audited"
    );
    // A weak setup, allowed.
    let solo = issue(
        &mut admin,
        vec![holder("solo", &five[0].public_key)],
        1,
        true,
    )
    .await
    .unwrap();
    assert_eq!(recovered_root(&solo, &keys, &[0]).unwrap(), root);

    // `kss backup issue` through the admin socket (the CLI's mirror).
    let prefix = data.dir.path().join("cli-admin");
    data.kss_ok(&[
        "admin-key",
        "generate",
        "--out",
        path_of(&prefix),
        "--name",
        "from-file",
    ]);
    let out = data.dir.path().join("cli-backup.json");
    let cli = data.kss_ok(&[
        "backup",
        "issue",
        "--holder",
        &format!("from-flag={}", five[1].public_key),
        "--admin-key",
        &format!("{}.pub", path_of(&prefix)),
        "--threshold",
        "1",
        "--allow-weak",
        "-o",
        path_of(&out),
    ]);
    assert!(cli.contains(&id.to_string()), "{cli}");
    let refused = data.kss(&[
        "backup",
        "issue",
        "--holder",
        &format!("a={}", five[1].public_key),
        "--threshold",
        "1",
        "-o",
        path_of(&data.dir.path().join("weak.json")),
    ]);
    assert!(!refused.status.success());
    assert!(common::text(&refused.stderr).contains("refusing a weak backup key"));
    assert!(!data.dir.path().join("weak.json").exists());
    let approval = data.dir.path().join("cli.approval");
    data.kss_ok(&[
        "backup",
        "approve",
        "--backup",
        path_of(&out),
        "--admin-key",
        &format!("{}.key", path_of(&prefix)),
        "--out",
        path_of(&approval),
    ]);
    assert!(server.terminate());

    // The audit: one record per key issued, with the actor, names and threshold, never
    // the key.
    let records = match db {
        Some(db) => {
            let store = kss_store::MysqlStore::connect(kss_store::parse_db_uri(db).unwrap())
                .await
                .unwrap();
            let r = audit_of(&store, "backup_key_issue").await;
            store.close().await;
            r
        }
        None => {
            let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
                .await
                .unwrap();
            let r = audit_of(&store, "backup_key_issue").await;
            store.close().await;
            r
        }
    };
    assert_eq!(records.len(), 4, "{records:?}");
    let actors: Vec<&str> = records
        .iter()
        .map(|r| r.record.actor.as_deref().unwrap())
        .collect();
    assert!(
        actors[..3]
            .iter()
            .all(|a| a.starts_with("tls:") && a.contains("kss-operator")),
        "{actors:?}"
    );
    assert!(
        actors[3].starts_with("uid:") && actors[3].ends_with("socket"),
        "{actors:?}"
    );
    let meta: serde_json::Value = serde_json::from_str(&records[1].record.meta).unwrap();
    assert_eq!(meta["threshold"], 4);
    assert_eq!(meta["holders"].as_array().unwrap().len(), 7);
    assert_eq!(meta["holders"][6], "holder-6");
    let cli_meta: serde_json::Value = serde_json::from_str(&records[3].record.meta).unwrap();
    assert_eq!(
        cli_meta["holders"],
        serde_json::json!(["from-flag", "from-file"])
    );
    for r in &records {
        assert!(
            !r.record.meta.contains("root_ciphertext")
                && !r.record.meta.contains("encrypted_share")
        );
    }

    // The CLI's backup key restores the same keyserver into an empty database.
    let restored = DataDir::new();
    let printed = restored.kss_ok(&[
        "recovery-ingest-key",
        path_of(&out),
        "--approval",
        path_of(&approval),
    ]);
    assert_eq!(printed.trim(), id.to_string());
    let store = kss_store::SqliteStore::open(&restored.path().join("kss.db"))
        .await
        .unwrap();
    let row = store.identity().await.unwrap().unwrap();
    store.close().await;
    let restored_master = MasterKey::from_hex(
        std::fs::read_to_string(restored.path().join("master.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let sealed = kss_server::identity::sealed_of(&row).unwrap();
    assert_eq!(sealed.keyserver_id, id);
    assert_eq!(sealed.open(&restored_master).unwrap().expose_bytes(), &root);
}

/// How many audit records the keyserver's database holds.
async fn audit_count(db: Option<&str>, data: &DataDir) -> usize {
    let filter = kss_store::AuditFilter {
        limit: 100_000,
        ..Default::default()
    };
    match db {
        Some(db) => {
            let store = kss_store::MysqlStore::connect(kss_store::parse_db_uri(db).unwrap())
                .await
                .unwrap();
            let n = store.audit(&filter).await.unwrap().len();
            store.close().await;
            n
        }
        None => {
            // The server holds the SQLite database: read through a second connection.
            let store = kss_store::SqliteStore::open(&data.path().join("kss.db"))
                .await
                .unwrap();
            let n = store.audit(&filter).await.unwrap().len();
            store.close().await;
            n
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_backup_key_on_sqlite() {
    issue_backup_keys(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_backup_key_on_mariadb() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    issue_backup_keys(Some(&db)).await;
    common::drop_database(&name).await;
}

/// Cluster mode, as the operator runs it: every pod pinned by `KSS_KEYSERVER_ID`. The
/// master key is lost; two pods reseal at once with the recovered bootstrap identity: one
/// swaps, both serve, one reseal is recorded. A pod pinned to another keyserver refuses
/// and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_pods_pinned_reseal_at_once_and_refuse_another_pin() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let pki = AdminPki::new();
    let secrets = Secrets::new();
    let old = MasterKey::generate();
    secrets.write_master_key(&old);
    let key_file = secrets.master_key_file();
    let id = KeyserverId::random();
    let root = *RootSecret::generate().expose_bytes();
    let first_file = write_sealed(&secrets, "identity.json", &id, &root, &old);
    let pod_args = |bootstrap: &Path| {
        vec![
            "--db-uri".to_string(),
            db.clone(),
            "--master-key-file".to_string(),
            path_of(&key_file).to_string(),
            "--bootstrap-identity".to_string(),
            path_of(bootstrap).to_string(),
        ]
    };
    let pin = |id: &KeyserverId| [("KSS_KEYSERVER_ID".to_string(), id.to_string())];
    let first_dir = DataDir::new();
    let first_args = pod_args(&first_file);
    let first = PodServer::start_env(&first_dir, &pki, &strs(&first_args), &pin(&id)).await;
    first.wait_serving(Duration::from_secs(15)).await;
    let mut admin = pki.admin(first.admin_port).await;
    assert_eq!(load_policy(&mut admin, POLICY).await.unwrap().version, 1);
    assert!(first.terminate());

    // The master key is lost; the operator re-seals the root (from the backup key) with a
    // new one. Two pods start at once.
    let new = MasterKey::generate();
    secrets.write_master_key(&new);
    let recovered = write_sealed(&secrets, "recovered.json", &id, &root, &new);
    let args = pod_args(&recovered);
    let (a_dir, b_dir) = (DataDir::new(), DataDir::new());
    let (flags, env) = (strs(&args), pin(&id));
    let (a, b) = tokio::join!(
        PodServer::start_env(&a_dir, &pki, &flags, &env),
        PodServer::start_env(&b_dir, &pki, &flags, &env),
    );
    a.wait_serving(Duration::from_secs(20)).await;
    b.wait_serving(Duration::from_secs(20)).await;
    for server in [&a, &b] {
        let mut admin = pki.admin(server.admin_port).await;
        let st = status(&mut admin).await.unwrap();
        assert_eq!((st.keyserver_id, st.policy_version), (id.to_string(), 1));
    }
    let resealed = "resealed with a new master key";
    assert_eq!(
        count(&a.log_text(), resealed) + count(&b.log_text(), resealed),
        1,
        "{}\n{}",
        a.log_text(),
        b.log_text()
    );
    let store = kss_store::MysqlStore::connect(kss_store::parse_db_uri(&db).unwrap())
        .await
        .unwrap();
    assert_eq!(audit_of(&store, "identity_reseal").await.len(), 1);
    let stored = store.identity().await.unwrap().unwrap();
    let file = SealedIdentity::from_json(&std::fs::read_to_string(&recovered).unwrap()).unwrap();
    assert_eq!(stored.sealed_root, file.sealed_root);

    // A pod pinned to another keyserver (with the same files): refused, nothing written.
    let other = KeyserverId::random();
    let before = snapshot(&store).await;
    let c_dir = DataDir::new();
    let c = PodServer::start_env(&c_dir, &pki, &strs(&args), &pin(&other)).await;
    let mut admin = pki.admin(c.admin_port).await;
    let refused = status(&mut admin).await.unwrap_err();
    assert_refused_as_mismatch(&refused, &id, &other);
    assert!(!c.workstation_port_open());
    assert!(c.terminate());
    // Heartbeats of the serving pods move on: compare without them.
    assert!(b.terminate());
    assert!(a.terminate());
    let mut after = snapshot(&store).await;
    let mut before = before;
    for snap in [&mut before, &mut after] {
        snap.instances.clear();
    }
    assert_eq!(before.identity, after.identity);
    assert_eq!(before.policy, after.policy);
    let registered: Vec<String> = store
        .instances()
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.info.name)
        .collect();
    assert_eq!(
        registered.len(),
        3,
        "the refusing pod never registered: {registered:?}"
    );
    // Every audit record is of a registered (serving) instance's.
    let audit = store
        .audit(&kss_store::AuditFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    for e in &audit {
        assert!(
            registered.contains(&e.record.instance_id),
            "{e:?} by {registered:?}"
        );
    }
    store.close().await;
    common::drop_database(&name).await;
}
