//! Attacks on identity and quotas, made as an attacker would make them: a raw client that
//! builds and signs its messages itself (prost bodies, ed25519 over the purpose prefix, the
//! gRPC stub; not `kss-client`'s happy path), against real `kss serve` processes over TLS,
//! on SQLite and on MariaDB. Each attack is one scenario run on both backends; the MariaDB
//! runs are skipped (and say so) when no test server is configured, unless
//! `KSS_REQUIRE_MYSQL` is set.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DataDir, Server, text, wait_until};
use kss_crypto::ids::KeyserverId;
use kss_crypto::profile::WorkstationShare;
use kss_crypto::signing::{DeviceKey, SignDomain};
use kss_proto::v1 as pb;
use kss_proto::v1::key_server_client::KeyServerClient;
use prost::Message;
use sqlx::Connection;
use tonic::Code;
use tonic::transport::Channel;

// ------------------------------------------------------------------ the keyserver attacked

enum Backend {
    Sqlite,
    Mariadb,
}

/// Where the attacked keyserver keeps its state, for the attacker's direct reads and writes.
enum Db {
    Sqlite(PathBuf),
    Mysql { url: String, name: String },
}

impl Db {
    async fn execute(&self, sql: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Db::Sqlite(path) => {
                let mut c = sqlite(path).await;
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Db::Mysql { url, .. } => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Db::Sqlite(path) => {
                let mut c = sqlite(path).await;
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Db::Mysql { url, .. } => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }

    /// One text column (NULL as empty), compared in Rust: MySQL's default collation would
    /// call `ABC` and `abc` equal.
    async fn strings(&self, sql: &str) -> Vec<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        let rows: Vec<Option<String>> = match self {
            Db::Sqlite(path) => {
                let mut c = sqlite(path).await;
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
            Db::Mysql { url, .. } => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
            }
        };
        rows.into_iter().map(Option::unwrap_or_default).collect()
    }

    async fn blob(&self, sql: &str) -> Vec<u8> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Db::Sqlite(path) => {
                let mut c = sqlite(path).await;
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Db::Mysql { url, .. } => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

async fn sqlite(path: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

/// A keyserver made with `kss create` (one backup holder) on the backend.
struct Target {
    data: DataDir,
    id: String,
    db: Db,
}

impl Target {
    async fn new(backend: Backend) -> Option<Target> {
        let data = DataDir::new();
        let (id, db) = match backend {
            Backend::Sqlite => {
                let id = data.create();
                (id, Db::Sqlite(data.path().join("kss.db")))
            }
            Backend::Mariadb => {
                let (url, name) = common::fresh_database().await?;
                let id = data.kss_ok(&[
                    "--db-uri",
                    &url,
                    "create",
                    "--ignore-security-checks",
                    "--threshold",
                    "1",
                ]);
                (id.trim().to_string(), Db::Mysql { url, name })
            }
        };
        Some(Target { data, id, db })
    }

    fn is_cluster(&self) -> bool {
        matches!(self.db, Db::Mysql { .. })
    }

    /// A second instance on the same MariaDB database (same master key and TLS files).
    fn join(&self) -> DataDir {
        let Db::Mysql { url, .. } = &self.db else {
            panic!("a second instance needs the shared database");
        };
        let other = DataDir::new();
        common::share_master_key(&self.data, &other);
        common::share_tls(&self.data, &other);
        other.kss_ok(&["--db-uri", url, "initialize"]);
        other
    }

    async fn finish(self) {
        if let Db::Mysql { name, .. } = &self.db {
            common::drop_database(name).await;
        }
    }

    async fn audit_rows(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM audit").await
    }

    async fn profile_rows(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM profiles").await
    }
}

macro_rules! on_both_backends {
    ($scenario:ident, $sqlite:ident, $mariadb:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $sqlite() {
            if let Some(t) = Target::new(Backend::Sqlite).await {
                $scenario(&t).await;
                t.finish().await;
            }
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $mariadb() {
            if let Some(t) = Target::new(Backend::Mariadb).await {
                $scenario(&t).await;
                t.finish().await;
            }
        }
    };
}

// ------------------------------------------------------------------ the raw client

struct Raw {
    grpc: KeyServerClient<Channel>,
}

/// What a workstation keeps after onboarding, as the raw client sees it.
struct Workstation {
    key: DeviceKey,
    share: WorkstationShare,
    profile_id: String,
    device_id: String,
    words: Vec<String>,
    token: Vec<u8>,
}

impl Raw {
    async fn connect(server: &Server, data: &DataDir) -> Raw {
        let channel =
            kss_client::connect_channel(&server.endpoint(), &data.ca_pem(), Some("localhost"))
                .await
                .unwrap();
        Raw {
            grpc: KeyServerClient::new(channel),
        }
    }

    async fn onboard_body(
        &self,
        key: &DeviceKey,
        body: &pb::OnboardBody,
    ) -> Result<pb::OnboardResponse, tonic::Status> {
        let bytes = body.encode_to_vec();
        let signature = key.sign(SignDomain::Onboard, &bytes).to_vec();
        self.grpc
            .clone()
            .onboard(pb::SignedMessage {
                body: bytes,
                signature,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Onboards a new workstation, claiming `words` and giving `token` as the body allows.
    async fn onboard_claiming(
        &self,
        keyserver_id: &str,
        words: &[String],
        token: Option<&str>,
    ) -> Result<Workstation, tonic::Status> {
        self.onboard_naming(&keyserver_id.parse().unwrap(), keyserver_id, words, token)
            .await
    }

    /// As `onboard_claiming`, with the proof of possession for `ks` and the body naming the
    /// keyserver as `named` (another spelling of it, or something else).
    async fn onboard_naming(
        &self,
        ks: &KeyserverId,
        named: &str,
        words: &[String],
        token: Option<&str>,
    ) -> Result<Workstation, tonic::Status> {
        let key = DeviceKey::generate();
        let share = WorkstationShare::generate();
        let body = onboard_body(named, &key, &share, ks, words, token);
        let response = self.onboard_body(&key, &body).await?;
        Ok(Workstation {
            key,
            share,
            profile_id: response.profile_id,
            device_id: response.device_id,
            words: response.profile_words,
            token: response.profile_token,
        })
    }

    async fn onboard(&self, keyserver_id: &str, token: Option<&str>) -> Workstation {
        self.onboard_claiming(keyserver_id, &[], token)
            .await
            .unwrap()
    }

    async fn approve(
        &self,
        key: &DeviceKey,
        body: &pb::RequestBody,
    ) -> Result<pb::ApproveResponse, tonic::Status> {
        let bytes = body.encode_to_vec();
        let signature = key.sign(SignDomain::Request, &bytes).to_vec();
        self.grpc
            .clone()
            .approve(pb::SignedMessage {
                body: bytes,
                signature,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A search as `ws`, decided: `Ok(None)` approved, `Ok(Some(reason))` denied.
    async fn search(&self, keyserver_id: &str, ws: &Workstation) -> Option<pb::DenyReason> {
        let body = search_body(keyserver_id, &ws.profile_id, &ws.device_id);
        decided(self.approve(&ws.key, &body).await.unwrap())
    }

    /// A search as `ws` that may fail at the transport (a connection closed under it).
    async fn try_search(
        &self,
        keyserver_id: &str,
        ws: &Workstation,
    ) -> Result<Option<pb::DenyReason>, tonic::Status> {
        let body = search_body(keyserver_id, &ws.profile_id, &ws.device_id);
        self.approve(&ws.key, &body).await.map(decided)
    }
}

fn onboard_body(
    keyserver_id: &str,
    key: &DeviceKey,
    share: &WorkstationShare,
    ks: &KeyserverId,
    words: &[String],
    token: Option<&str>,
) -> pb::OnboardBody {
    let device = key.public();
    pb::OnboardBody {
        keyserver_id: keyserver_id.to_string(),
        device_public_key: device.to_bytes().to_vec(),
        workstation_share: share.public().to_bytes().to_vec(),
        possession_proof: share.proof_of_possession(ks, &device).to_bytes().to_vec(),
        profile_name: "attacker@ws".to_string(),
        profile_words: words.to_vec(),
        timestamp_ms: common::unix_ms(),
        nonce: rand::random::<[u8; 16]>().to_vec(),
        enrollment_token: token.unwrap_or_default().to_string(),
    }
}

fn search_body(keyserver_id: &str, profile_id: &str, device_id: &str) -> pb::RequestBody {
    pb::RequestBody {
        keyserver_id: keyserver_id.to_string(),
        profile_id: profile_id.to_string(),
        device_id: device_id.to_string(),
        request_type: pb::RequestType::Search as i32,
        timestamp_ms: common::unix_ms(),
        nonce: rand::random::<[u8; 16]>().to_vec(),
        ..Default::default()
    }
}

/// The registration a recovered keyserver would re-learn `ws` from, claiming `words`.
fn registration(ws: &Workstation, words: &[String]) -> pb::ProfileRegistration {
    pb::ProfileRegistration {
        device_public_key: ws.key.public().to_bytes().to_vec(),
        workstation_share: ws.share.public().to_bytes().to_vec(),
        profile_name: "attacker@ws".to_string(),
        profile_words: words.to_vec(),
        profile_token: ws.token.clone(),
    }
}

fn decided(r: pb::ApproveResponse) -> Option<pb::DenyReason> {
    match pb::Decision::try_from(r.decision).unwrap() {
        pb::Decision::Approved => None,
        pb::Decision::Denied => Some(pb::DenyReason::try_from(r.reason).unwrap()),
        pb::Decision::Unspecified => panic!("no decision: {r:?}"),
    }
}

/// `id` with every other letter upper-cased (and at least one letter changed).
fn mixed_case(id: &str) -> String {
    let mixed: String = id
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if mixed == id {
        // All digits at even positions: change the first letter anywhere.
        let i = id.find(|c: char| c.is_ascii_alphabetic()).unwrap();
        format!("{}{}{}", &id[..i], id[i..=i].to_uppercase(), &id[i + 1..])
    } else {
        mixed
    }
}

fn metric(server: &Server, line_start: &str) -> f64 {
    server
        .metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------ quotas

const QUOTA_POLICY: &str = "search:
  - - rule: per-profile-throttle-rule
      rule_id: daily
      per_day: 3
      persistent: true
    - rule: per-profile-throttle-rule
      rule_id: hourly
      per_hour: 3
";

/// The measurement: 10 searches, 6 of them spelling the profile id (and the device
/// id, and the keyserver id) in upper or mixed case, against `per_day: 3` persistent plus
/// `per_hour: 3` in memory. Exactly 3 approvals, every other spelling refused before
/// anything is decided or stored, every audit row and counter under the canonical id.
async fn mixed_case_ids_never_bypass_quotas(t: &Target) {
    t.data.load_policy(QUOTA_POLICY);
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let canonical = search_body(&t.id, &ws.profile_id, &ws.device_id);

    let mut approved = 0;
    let mut quota_denied = 0;
    for i in 0..10 {
        let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
        let field = match i % 5 {
            0 => {
                body.profile_id = ws.profile_id.to_uppercase();
                Some("profile_id")
            }
            1 => {
                body.profile_id = mixed_case(&ws.profile_id);
                body.device_id = ws.device_id.to_uppercase();
                Some("profile_id")
            }
            2 => {
                body.device_id = mixed_case(&ws.device_id);
                Some("device_id")
            }
            3 => None,
            _ => {
                if i == 4 {
                    body.keyserver_id = t.id.to_uppercase();
                    Some("keyserver_id")
                } else {
                    None
                }
            }
        };
        let answer = raw.approve(&ws.key, &body).await;
        match field {
            Some(field) => {
                let status = answer.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(status.message().starts_with(field), "{status:?}");
            }
            None => match decided(answer.unwrap()) {
                None => approved += 1,
                Some(pb::DenyReason::Quota) => quota_denied += 1,
                Some(other) => panic!("denied as {other:?}"),
            },
        }
    }
    // 3 canonical searches got decisions... and a fourth and fifth: 10 = 7 refused + 3.
    assert_eq!((approved, quota_denied), (3, 0));
    for _ in 0..2 {
        let body = search_body(&t.id, &ws.profile_id, &ws.device_id);
        assert_eq!(
            decided(raw.approve(&ws.key, &body).await.unwrap()),
            Some(pb::DenyReason::Quota)
        );
    }

    // Every audit row is under the canonical ids; the refused requests left none.
    let profiles =
        t.db.strings("SELECT profile_id FROM audit WHERE request_type = 'search'")
            .await;
    assert_eq!(profiles.len(), 5, "{profiles:?}");
    assert!(profiles.iter().all(|p| *p == ws.profile_id), "{profiles:?}");
    // Workstation requests' rows (administrative actions have an actor and no device).
    let devices =
        t.db.strings("SELECT device_id FROM audit WHERE actor IS NULL")
            .await;
    assert!(devices.iter().all(|d| *d == ws.device_id), "{devices:?}");
    let counters = t.db.strings("SELECT profile_id FROM quota_counters").await;
    assert_eq!(counters.as_slice(), std::slice::from_ref(&ws.profile_id));
    assert_eq!(
        t.db.count("SELECT day_used FROM quota_counters").await,
        3,
        "the persistent counter"
    );

    // After a restart the memory counter is empty; the persistent one still says 3.
    drop(raw);
    server.terminate();
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let mut upper = canonical.clone();
    upper.profile_id = ws.profile_id.to_uppercase();
    upper.nonce = rand::random::<[u8; 16]>().to_vec();
    upper.timestamp_ms = common::unix_ms();
    assert_eq!(
        raw.approve(&ws.key, &upper).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(raw.search(&t.id, &ws).await, Some(pb::DenyReason::Quota));
    assert_eq!(t.db.count("SELECT day_used FROM quota_counters").await, 3);

    if t.is_cluster() {
        // A second instance shares the persistent counter and its row lock.
        let other = t.join();
        let second = Server::start(&other);
        let raw2 = Raw::connect(&second, &other).await;
        assert_eq!(raw2.search(&t.id, &ws).await, Some(pb::DenyReason::Quota));
        let mut mixed = search_body(&t.id, &mixed_case(&ws.profile_id), &ws.device_id);
        mixed.timestamp_ms = common::unix_ms();
        assert_eq!(
            raw2.approve(&ws.key, &mixed).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}

on_both_backends!(
    mixed_case_ids_never_bypass_quotas,
    mixed_case_ids_never_bypass_quotas_sqlite,
    mixed_case_ids_never_bypass_quotas_mariadb
);

// ------------------------------------------------------------------ id forms

/// Every field that names an id takes its canonical form only, and names itself in the
/// error; nothing of a refused request is stored (its nonce stays unused).
async fn non_canonical_ids_are_invalid_arguments(t: &Target) {
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let audit_before = t.audit_rows().await;

    let forms = |id: &str| -> Vec<(String, &'static str)> {
        vec![
            (format!(" {id}"), "leading space"),
            (format!("{id} "), "trailing space"),
            (format!("{id}\n"), "trailing newline"),
            (id.to_uppercase(), "upper case"),
            (mixed_case(id), "mixed case"),
            (id[..31].to_string(), "31 characters"),
            (format!("{id}0"), "33 characters"),
            (format!("{}g", &id[..31]), "non-hex"),
            (format!("0x{}", &id[2..]), "0x prefix"),
            (String::new(), "empty"),
            (format!("{}\u{ff10}", &id[..31]), "a full-width digit"),
            (id.repeat(100), "3200 characters"),
        ]
    };
    let mut nonce_of_a_refused_request = Vec::new();
    for field in ["keyserver_id", "profile_id", "device_id"] {
        let good = match field {
            "keyserver_id" => t.id.clone(),
            "profile_id" => ws.profile_id.clone(),
            _ => ws.device_id.clone(),
        };
        for (bad, what) in forms(&good) {
            let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
            match field {
                "keyserver_id" => body.keyserver_id = bad.clone(),
                "profile_id" => body.profile_id = bad.clone(),
                _ => body.device_id = bad.clone(),
            }
            let status = raw.approve(&ws.key, &body).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field} {what}");
            assert!(
                status.message().starts_with(field),
                "{field} {what}: {}",
                status.message()
            );
            nonce_of_a_refused_request = body.nonce.clone();
        }
    }
    // Onboarding: the keyserver id in another form is refused the same way.
    for (bad, what) in forms(&t.id) {
        let status = raw
            .onboard_naming(&t.id.parse().unwrap(), &bad, &[], None)
            .await;
        let status = match status {
            Err(s) => s,
            Ok(_) => panic!("onboarded with keyserver_id {what}"),
        };
        assert_eq!(status.code(), Code::InvalidArgument, "onboard {what}");
        assert!(status.message().starts_with("keyserver_id"), "{status:?}");
    }
    assert_eq!(
        t.audit_rows().await,
        audit_before,
        "refused requests audited"
    );
    assert_eq!(t.profile_rows().await, 1, "refused onboardings stored");

    // The nonce of a refused request was not used up: the same nonce, canonical, passes.
    let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
    body.nonce = nonce_of_a_refused_request;
    assert_eq!(decided(raw.approve(&ws.key, &body).await.unwrap()), None);
    assert_eq!(
        decided(raw.approve(&ws.key, &body).await.unwrap()),
        Some(pb::DenyReason::Replayed)
    );
}

on_both_backends!(
    non_canonical_ids_are_invalid_arguments,
    non_canonical_ids_are_invalid_arguments_sqlite,
    non_canonical_ids_are_invalid_arguments_mariadb
);

// ------------------------------------------------------------------ words

/// A second workstation that claims the first one's words (at onboarding and in a
/// registration) gets its own derived words, and a phrase rule for the first does not
/// approve it.
async fn claimed_words_are_not_granted(t: &Target) {
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let alice = raw.onboard(&t.id, None).await;
    assert_eq!(alice.words.len(), 12);
    let phrase = alice.words[..4].join(" ");
    t.data.load_policy(&format!(
        "search:\n  - - rule: profile-id-rule\n      profile_ids: [{phrase}]\n"
    ));
    let client = server.client(&t.data).await;
    for _ in 0..100 {
        if client.info().await.unwrap().policy_version == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.info().await.unwrap().policy_version, 1);

    let mallory = raw
        .onboard_claiming(&t.id, &alice.words, None)
        .await
        .unwrap();
    assert_ne!(mallory.words, alice.words, "claimed words granted");
    assert_eq!(mallory.words.len(), 12);
    let stored =
        t.db.strings(&format!(
            "SELECT words FROM profiles WHERE profile_id = '{}'",
            mallory.profile_id
        ))
        .await;
    assert_eq!(stored, [mallory.words.join(" ")]);

    assert_eq!(raw.search(&t.id, &alice).await, None);
    assert_eq!(
        raw.search(&t.id, &mallory).await,
        Some(pb::DenyReason::Policy)
    );
    // A registration claiming Alice's words changes nothing either.
    let mut body = search_body(&t.id, &mallory.profile_id, &mallory.device_id);
    body.registration = Some(registration(&mallory, &alice.words));
    assert_eq!(
        decided(raw.approve(&mallory.key, &body).await.unwrap()),
        Some(pb::DenyReason::Policy)
    );
    // Nor does naming Alice's profile with Mallory's device, or Alice's device.
    for device in [&mallory.device_id, &alice.device_id] {
        let body = search_body(&t.id, &alice.profile_id, device);
        assert_ne!(
            decided(raw.approve(&mallory.key, &body).await.unwrap()),
            None,
            "Mallory approved as Alice"
        );
    }
    // Mallory's words are the ones derived from its key set, which the client checks.
    let info = t
        .data
        .kss_ok(&["profile", "show", &mallory.profile_id, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["words"], serde_json::json!(mallory.words));
}

on_both_backends!(
    claimed_words_are_not_granted,
    claimed_words_are_not_granted_sqlite,
    claimed_words_are_not_granted_mariadb
);

// ------------------------------------------------------------------ revocation

/// A revoked profile, or a revoked device, is denied on every instance within the poll
/// interval; its registration token cannot bring it back, even once its row is gone.
async fn revoked_profiles_stay_revoked(t: &Target) {
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let (other_dir, other) = if t.is_cluster() {
        let dir = t.join();
        let server = Server::start(&dir);
        (Some(dir), Some(server))
    } else {
        (None, None)
    };
    let raw_other = match (&other, &other_dir) {
        (Some(s), Some(d)) => Some(Raw::connect(s, d).await),
        _ => None,
    };
    let alice = raw.onboard(&t.id, None).await;
    let bob = raw.onboard(&t.id, None).await;
    for r in std::iter::once(&raw).chain(raw_other.as_ref()) {
        assert_eq!(r.search(&t.id, &alice).await, None);
    }

    let out = t.data.kss_ok(&[
        "profile",
        "revoke",
        &alice.profile_id,
        "--reason",
        "laptop lost",
    ]);
    assert!(out.contains("revoked"), "{out}");
    for r in std::iter::once(&raw).chain(raw_other.as_ref()) {
        let mut last = None;
        for _ in 0..100 {
            last = r.search(&t.id, &alice).await;
            if last == Some(pb::DenyReason::Revoked) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, Some(pb::DenyReason::Revoked), "not revoked in time");
        assert_eq!(r.search(&t.id, &bob).await, None, "Bob revoked too");
    }
    // The registration token does not bring it back.
    let mut body = search_body(&t.id, &alice.profile_id, &alice.device_id);
    body.registration = Some(registration(&alice, &[]));
    assert_eq!(
        decided(raw.approve(&alice.key, &body).await.unwrap()),
        Some(pb::DenyReason::Revoked)
    );
    // Not even when its row is gone (a database that lost it, or an attacker deleting it
    // hoping for a re-registration): the revocation is kept apart from the profile.
    assert_eq!(
        t.db.execute(&format!(
            "DELETE FROM profiles WHERE profile_id = '{}'",
            alice.profile_id
        ))
        .await,
        1
    );
    drop(raw);
    server.terminate();
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let mut body = search_body(&t.id, &alice.profile_id, &alice.device_id);
    body.registration = Some(registration(&alice, &[]));
    assert_eq!(
        decided(raw.approve(&alice.key, &body).await.unwrap()),
        Some(pb::DenyReason::Revoked)
    );
    assert_eq!(
        t.db.count(&format!(
            "SELECT COUNT(*) FROM profiles WHERE profile_id = '{}'",
            alice.profile_id
        ))
        .await,
        0,
        "a revoked profile re-registered"
    );

    // One device of a profile: that device is denied.
    t.data.kss_ok(&[
        "profile",
        "revoke",
        &bob.profile_id,
        "--device",
        &bob.device_id,
    ]);
    let mut last = None;
    for _ in 0..100 {
        last = raw.search(&t.id, &bob).await;
        if last == Some(pb::DenyReason::Revoked) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, Some(pb::DenyReason::Revoked));
    let shown = t
        .data
        .kss_ok(&["profile", "show", &bob.profile_id, "--json"]);
    assert!(
        shown.contains(&bob.device_id) && shown.contains("revoked"),
        "{shown}"
    );

    // The CLI names what is wrong with an id, and an unknown profile.
    let upper = t
        .data
        .kss(&["profile", "revoke", &bob.profile_id.to_uppercase()]);
    assert!(!upper.status.success());
    assert!(
        text(&upper.stderr).contains("profile"),
        "{}",
        text(&upper.stderr)
    );
    // A profile this database does not know can be revoked ahead (after a recovery into a
    // new database, revocations are applied again before workstations re-register).
    let ahead = t
        .data
        .kss_ok(&["profile", "revoke", "0123456789abcdef0123456789abcdef"]);
    assert!(ahead.contains("revoked"), "{ahead}");
}

on_both_backends!(
    revoked_profiles_stay_revoked,
    revoked_profiles_stay_revoked_sqlite,
    revoked_profiles_stay_revoked_mariadb
);

// ------------------------------------------------------------------ the database edited

/// Whoever can write the database swaps a profile's device key for their own, installs a
/// policy of their own, and clears every MAC hoping for an adoption: all refused, counted,
/// logged once.
async fn rows_edited_in_the_database_are_refused(t: &Target) {
    t.data.load_policy("search:\n  - - rule: reject-rule\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let alice = raw.onboard(&t.id, None).await;
    let mallory = raw.onboard(&t.id, None).await;
    assert_eq!(
        raw.search(&t.id, &alice).await,
        Some(pb::DenyReason::Policy)
    );

    // A policy version of the attacker's: approve everything.
    let version = t.db.count("SELECT MAX(version) FROM policy_versions").await;
    t.db.execute(&format!(
        "INSERT INTO policy_versions (version, text, sha256, loaded_at_ms, mac) \
         VALUES ({}, 'search:\n  - []\n', 'x', 0, x'{}')",
        version + 1,
        "00".repeat(32)
    ))
    .await;
    t.db.execute(&format!(
        "UPDATE state SET policy_version = {}",
        version + 1
    ))
    .await;
    wait_until("the forged policy refused", Duration::from_secs(10), || {
        metric(
            &server,
            "kss_integrity_failures_total{table=\"policy_versions\"}",
        ) >= 1.0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        raw.search(&t.id, &alice).await,
        Some(pb::DenyReason::Policy),
        "the forged policy applied"
    );

    // Mallory's device key and id in Alice's profile row.
    drop(raw);
    server.terminate();
    t.db.execute(&format!(
        "DELETE FROM policy_versions WHERE version = {}",
        version + 1
    ))
    .await;
    t.db.execute(&format!("UPDATE state SET policy_version = {version}"))
        .await;
    t.data.load_policy("search:\n  - []\n");
    let mallory_key =
        t.db.blob(&format!(
            "SELECT device_public_key FROM profiles WHERE profile_id = '{}'",
            mallory.profile_id
        ))
        .await;
    t.db.execute(&format!(
        "UPDATE profiles SET device_public_key = x'{}', device_id = '{}' WHERE profile_id = '{}'",
        hex::encode(&mallory_key),
        mallory.device_id,
        alice.profile_id
    ))
    .await;
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    assert_eq!(raw.search(&t.id, &mallory).await, None, "the real Mallory");
    for (key, device) in [
        (&mallory.key, &mallory.device_id),
        (&alice.key, &alice.device_id),
    ] {
        for _ in 0..2 {
            let body = search_body(&t.id, &alice.profile_id, device);
            assert_eq!(
                decided(raw.approve(key, &body).await.unwrap()),
                Some(pb::DenyReason::UnknownProfile),
                "the edited row was used"
            );
        }
    }
    assert!(metric(&server, "kss_integrity_failures_total{table=\"profiles\"}") >= 1.0);
    let logged = server
        .log_text()
        .matches("fails its integrity check")
        .count();
    assert_eq!(logged, 1, "{}", server.log_text());

    // Every MAC cleared, hoping the keyserver adopts the rows as written before MACs: the
    // identity is sealed in the MAC era, so nothing is adopted.
    drop(raw);
    server.terminate();
    t.db.execute("UPDATE profiles SET mac = x''").await;
    t.db.execute("UPDATE policy_versions SET mac = x''").await;
    let mut refused = common::spawn_serve(&t.data, &[]);
    let status = refused.child.wait().unwrap();
    let log = std::fs::read_to_string(&refused.log).unwrap();
    assert!(!status.success(), "served a policy with no MAC");
    assert!(log.contains("fails its integrity check"), "{log}");
    // The administrator loads the policy again; the profile rows stay refused.
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    assert_eq!(
        raw.search(&t.id, &mallory).await,
        Some(pb::DenyReason::UnknownProfile)
    );
    assert!(
        !server.log_text().contains("adopted"),
        "{}",
        server.log_text()
    );
}

on_both_backends!(
    rows_edited_in_the_database_are_refused,
    rows_edited_in_the_database_are_refused_sqlite,
    rows_edited_in_the_database_are_refused_mariadb
);

/// A database written before row MACs (its identity sealed in the old era, rows without
/// MACs) is adopted once on the first start; after that, a cleared MAC is refused.
async fn rows_written_before_macs_are_adopted_once(t: &Target) {
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let alice = raw.onboard(&t.id, None).await;
    drop(raw);
    server.terminate();

    // What the previous release left: a v1-sealed root, no MACs.
    let master = std::fs::read_to_string(t.data.path().join("master.key")).unwrap();
    let master = kss_crypto::seal::MasterKey::from_hex(&master).unwrap();
    let sealed =
        t.db.blob("SELECT sealed_root FROM identity WHERE singleton = 1")
            .await;
    let id: KeyserverId = t.id.parse().unwrap();
    let root = kss_crypto::identity::SealedIdentity {
        keyserver_id: id,
        sealed_root: sealed,
    }
    .open(&master)
    .unwrap();
    let mut aad = b"kss root secret v1\0".to_vec();
    aad.extend_from_slice(id.as_bytes());
    let old = kss_crypto::seal::seal(&master, &aad, root.expose_bytes());
    t.db.execute(&format!(
        "UPDATE identity SET sealed_root = x'{}'",
        hex::encode(&old)
    ))
    .await;
    t.db.execute("UPDATE profiles SET mac = x''").await;
    t.db.execute("UPDATE policy_versions SET mac = x''").await;

    let server = Server::start(&t.data);
    assert!(
        server.log_text().contains("adopted"),
        "{}",
        server.log_text()
    );
    let raw = Raw::connect(&server, &t.data).await;
    assert_eq!(raw.search(&t.id, &alice).await, None);
    let (_, era) = kss_crypto::identity::SealedIdentity {
        keyserver_id: id,
        sealed_root: t
            .db
            .blob("SELECT sealed_root FROM identity WHERE singleton = 1")
            .await,
    }
    .open_with_era(&master)
    .unwrap();
    // Adopted (v2), then the chain era (v3): its chain had started already.
    assert_eq!(era, kss_crypto::identity::Era::ChainStarted);
    assert_eq!(
        t.db.count("SELECT COUNT(*) FROM profiles WHERE mac = x''")
            .await,
        0
    );

    // Adopted once: a MAC cleared now is a forged row.
    drop(raw);
    server.terminate();
    t.db.execute("UPDATE profiles SET mac = x''").await;
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    assert_eq!(
        raw.search(&t.id, &alice).await,
        Some(pb::DenyReason::UnknownProfile)
    );
}

on_both_backends!(
    rows_written_before_macs_are_adopted_once,
    rows_written_before_macs_are_adopted_once_sqlite,
    rows_written_before_macs_are_adopted_once_mariadb
);

// ------------------------------------------------------------------ enrollment

fn create_token(data: &DataDir, uses: &str, ttl: &str) -> String {
    data.kss_ok(&["enrollment", "create", "--uses", uses, "--ttl", ttl])
        .trim()
        .to_string()
}

/// With `--require-enrollment-token`: no token, a malformed one, an unknown one, a used-up
/// one and an expired one are all refused and store nothing; a token is never stored in
/// the clear; on two instances a single-use token raced from both onboards once.
async fn enrollment_tokens_gate_onboarding(t: &Target) {
    let server = Server::start_with(&t.data, &["--require-enrollment-token"]);
    let raw = Raw::connect(&server, &t.data).await;

    let none = raw.onboard_claiming(&t.id, &[], None).await.err().unwrap();
    assert_eq!(none.code(), Code::PermissionDenied);
    assert!(
        none.message().contains("requires an enrollment token"),
        "{none:?}"
    );
    let malformed = raw
        .onboard_claiming(&t.id, &[], Some("kssenroll_nothex"))
        .await
        .err()
        .unwrap();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().starts_with("enrollment_token"),
        "{malformed:?}"
    );
    let unknown = format!("kssenroll_{}", "ab".repeat(32));
    let unknown = raw
        .onboard_claiming(&t.id, &[], Some(&unknown))
        .await
        .err()
        .unwrap();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert!(unknown.message().contains("unknown, expired or used up"));

    let token = create_token(&t.data, "2", "10m");
    assert!(token.starts_with("kssenroll_"), "{token}");
    raw.onboard(&t.id, Some(&token)).await;
    raw.onboard(&t.id, Some(&token)).await;
    let used_up = raw
        .onboard_claiming(&t.id, &[], Some(&token))
        .await
        .err()
        .unwrap();
    assert_eq!(used_up.code(), Code::PermissionDenied);

    let short = create_token(&t.data, "5", "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = raw
        .onboard_claiming(&t.id, &[], Some(&short))
        .await
        .err()
        .unwrap();
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert_eq!(t.profile_rows().await, 2);
    // Counted for what they were denied for: no token, unknown, used up, expired.
    let metrics = server.metrics();
    let denied = |reason: &str| {
        let series = format!(
            "kss_requests_total{{rpc=\"Onboard\",request_type=\"create_profile\",decision=\"denied\",reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|n| n.trim().to_string())
    };
    assert_eq!(denied("enrollment").as_deref(), Some("4"), "{metrics}");
    assert_eq!(denied("policy"), None, "{metrics}");

    // Only the token's digest is stored.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    assert_eq!(
        t.db.count(&format!(
            "SELECT COUNT(*) FROM enrollments WHERE token_sha256 = x'{digest}'"
        ))
        .await,
        1
    );
    if let Db::Sqlite(path) = &t.db {
        let bytes = std::fs::read(path).unwrap();
        let secret = &token.as_bytes()["kssenroll_".len()..];
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the token is in the database file"
        );
    }
    let listed = t.data.kss_ok(&["enrollment", "list", "--json"]);
    assert!(!listed.contains(&token[10..]), "{listed}");

    if t.is_cluster() {
        // Single-use tokens raced from two instances: each onboards exactly once.
        let other = t.join();
        let second = Server::start_with(&other, &["--require-enrollment-token"]);
        let raw2 = Raw::connect(&second, &other).await;
        for _ in 0..5 {
            let token = create_token(&t.data, "1", "10m");
            let (a, b) = tokio::join!(
                raw.onboard_claiming(&t.id, &[], Some(&token)),
                raw2.onboard_claiming(&t.id, &[], Some(&token))
            );
            assert_eq!(
                u8::from(a.is_ok()) + u8::from(b.is_ok()),
                1,
                "{:?} {:?}",
                a.err(),
                b.err()
            );
        }
        assert_eq!(t.profile_rows().await, 7);
    }
}

on_both_backends!(
    enrollment_tokens_gate_onboarding,
    enrollment_tokens_gate_onboarding_sqlite,
    enrollment_tokens_gate_onboarding_mariadb
);

/// Mass enrollment cannot fill the database: past the per-minute limit an onboarding is
/// refused before anything is stored.
async fn onboarding_is_rate_limited(t: &Target) {
    let server = Server::start_with(&t.data, &["--max-onboard-per-minute", "3"]);
    let raw = Raw::connect(&server, &t.data).await;
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..8 {
        match raw.onboard_claiming(&t.id, &[], None).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (3, 5));
    assert_eq!(t.profile_rows().await, 3);
    assert_eq!(metric(&server, "kss_onboard_rate_limited_total"), 5.0);
    // A bad signature is refused before it costs the limit anything... and stores nothing.
    let key = DeviceKey::generate();
    let share = WorkstationShare::generate();
    let ks: KeyserverId = t.id.parse().unwrap();
    let body = onboard_body(&t.id, &key, &share, &ks, &[], None);
    let status = raw
        .onboard_body(&DeviceKey::generate(), &body)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(t.profile_rows().await, 3);
}

on_both_backends!(
    onboarding_is_rate_limited,
    onboarding_is_rate_limited_sqlite,
    onboarding_is_rate_limited_mariadb
);

// ------------------------------------------------------------------ a lying keyserver

mod forger {
    //! A keyserver that answers onboardings with a share of its own choosing.
    use kss_crypto::ids::{DeviceId, KeyserverId, ProfileId};
    use kss_crypto::profile::{ProfilePublicKeys, WorkstationPublicShare};
    use kss_crypto::root::RootSecret;
    use kss_crypto::signing::DevicePublicKey;
    use kss_crypto::words::profile_words;
    use kss_proto::v1 as pb;
    use prost::Message;
    use tonic::{Request, Response, Status};

    #[derive(Clone, Copy, Debug)]
    pub enum Lie {
        /// A share with no proof at all (what the keyserver sent before proofs).
        NoProof,
        /// A share the forger does not hold for this transcript: a genuine proof, but over
        /// another workstation's share.
        ProofOverAnotherTranscript,
        /// A rogue share (another root's), key set consistent with it, proof over nothing
        /// of ours.
        RogueShare,
        /// Honest crypto, words of its choosing.
        ChosenWords,
    }

    pub struct Forger {
        pub id: KeyserverId,
        pub root: RootSecret,
        pub lie: Lie,
    }

    #[tonic::async_trait]
    impl pb::key_server_server::KeyServer for Forger {
        async fn get_info(
            &self,
            _: Request<pb::GetInfoRequest>,
        ) -> Result<Response<pb::GetInfoResponse>, Status> {
            Ok(Response::new(pb::GetInfoResponse {
                keyserver_id: self.id.to_hex(),
                enabled: true,
                policy_version: 1,
                server_version: "forged".into(),
            }))
        }

        async fn onboard(
            &self,
            request: Request<pb::SignedMessage>,
        ) -> Result<Response<pb::OnboardResponse>, Status> {
            let body = pb::OnboardBody::decode(request.into_inner().body.as_slice())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let device = DevicePublicKey::from_bytes(&body.device_public_key).unwrap();
            let ws = WorkstationPublicShare::from_bytes(&body.workstation_share).unwrap();
            let profile = ProfileId::random();
            let mut share = self.root.profile_share(&self.id, &profile);
            let mut proof = share.onboarding_proof(&self.id, &profile, &device, &ws);
            match self.lie {
                Lie::NoProof | Lie::ChosenWords => {}
                Lie::ProofOverAnotherTranscript => {
                    let other = kss_crypto::profile::WorkstationShare::generate().public();
                    proof = share.onboarding_proof(&self.id, &profile, &device, &other);
                }
                Lie::RogueShare => {
                    let rogue = RootSecret::generate();
                    share = rogue.profile_share(&self.id, &profile);
                    let other = kss_crypto::profile::WorkstationShare::generate().public();
                    proof = share.onboarding_proof(&self.id, &profile, &device, &other);
                }
            }
            let keys = ProfilePublicKeys::from_shares(&ws, &share.public());
            let mut words = profile_words(&self.id, &profile, &keys);
            if let Lie::ChosenWords = self.lie {
                words = ["humble", "busy", "much", "cactus"]
                    .map(String::from)
                    .to_vec();
            }
            Ok(Response::new(pb::OnboardResponse {
                profile_id: profile.to_hex(),
                device_id: DeviceId::of(&device).to_hex(),
                public_key_set: keys.to_bytes().to_vec(),
                keyserver_share: share.public().to_bytes().to_vec(),
                profile_token: vec![0; 32],
                keyserver_share_proof: match self.lie {
                    Lie::NoProof => Vec::new(),
                    _ => proof.to_bytes().to_vec(),
                },
                profile_words: words,
            }))
        }

        async fn approve(
            &self,
            _: Request<pb::SignedMessage>,
        ) -> Result<Response<pb::ApproveResponse>, Status> {
            Err(Status::unimplemented("forger"))
        }
    }
}

/// `kss client onboard` against a keyserver that lies about its share (or the words):
/// refused with an error that says so, and no profile file is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_onboarding_answer_is_refused_and_leaves_no_profile() {
    use forger::{Forger, Lie};
    let dir = tempfile::tempdir().unwrap();
    let files = kss_server::tls::self_signed(dir.path(), &[]).unwrap();
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&files.cert).unwrap(),
        std::fs::read(&files.key).unwrap(),
    );
    for (lie, expected) in [
        (Lie::NoProof, "prove"),
        (Lie::ProofOverAnotherTranscript, "prove"),
        (Lie::RogueShare, "prove"),
        (Lie::ChosenWords, "words"),
    ] {
        let id = KeyserverId::random();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let forger = Forger {
            id,
            root: kss_crypto::root::RootSecret::generate(),
            lie,
        };
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity.clone()))
                .unwrap()
                .add_service(pb::key_server_server::KeyServerServer::new(forger))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let profile = dir.path().join(format!("{lie:?}.json"));
        let mut onboard = std::process::Command::new(common::kss_bin());
        onboard
            .args(["client", "onboard", "--endpoint"])
            .arg(format!("https://127.0.0.1:{port}"))
            .arg("--ca")
            .arg(&files.ca)
            .args(["--server-name", "localhost", "--keyserver-id", &id.to_hex()])
            .arg("--profile")
            .arg(&profile);
        let out = tokio::task::spawn_blocking(move || onboard.output().unwrap())
            .await
            .unwrap();
        serving.abort();
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{lie:?} accepted: {}",
            text(&out.stdout)
        );
        assert!(stderr.contains(expected), "{lie:?}: {stderr}");
        assert!(!profile.exists(), "{lie:?}: a profile file was left");
    }
}

// ------------------------------------------------------------------ field bounds

/// Every variable field has a bound: one over it is `INVALID_ARGUMENT` naming the field
/// and the limit, before the signature is checked and with nothing stored; at the bound
/// the request is decided. (On MariaDB, an oversized `cryptographic_id` used to fail its
/// whole decision batch.)
async fn oversized_fields_are_refused_by_name(t: &Target) {
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let audit_before = t.audit_rows().await;
    let meta = |n: usize, len: usize| -> Vec<pb::MetaInfo> {
        (0..n)
            .map(|_| pb::MetaInfo {
                meta: "m".repeat(len),
                complete: true,
            })
            .collect()
    };
    type Edit = Box<dyn Fn(&mut pb::RequestBody)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "auth_meta",
            "at most 256",
            Box::new(move |b| b.auth_meta = meta(257, 1)),
        ),
        (
            "auth_meta.meta",
            "at most 4096",
            Box::new(move |b| b.auth_meta = meta(1, 4097)),
        ),
        (
            "cryptographic_id",
            "at most 64",
            Box::new(|b| b.cryptographic_id = vec![7; 65]),
        ),
        (
            "ciphertext",
            "at most 4096",
            Box::new(|b| b.ciphertext = vec![7; 4097]),
        ),
        (
            "registration.profile_name",
            "at most 256",
            Box::new(|b| {
                b.registration = Some(pb::ProfileRegistration {
                    profile_name: "n".repeat(257),
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, limit, edit) in &cases {
        let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
        edit(&mut body);
        let status = raw.approve(&ws.key, &body).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(&format!("{field}:")) && status.message().contains(limit),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(
        t.audit_rows().await,
        audit_before,
        "refused requests audited"
    );

    // At the bounds: decided (and audited).
    let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
    body.auth_meta = meta(256, 100);
    body.cryptographic_id = vec![7; 64];
    assert_eq!(decided(raw.approve(&ws.key, &body).await.unwrap()), None);
    let mut body = search_body(&t.id, &ws.profile_id, &ws.device_id);
    body.auth_meta = meta(1, 4096);
    assert_eq!(decided(raw.approve(&ws.key, &body).await.unwrap()), None);
    assert_eq!(t.audit_rows().await, audit_before + 2);

    // Onboarding: a name over 256 bytes, more than 24 claimed words.
    let key = DeviceKey::generate();
    let share = WorkstationShare::generate();
    let ks: KeyserverId = t.id.parse().unwrap();
    let mut body = onboard_body(&t.id, &key, &share, &ks, &[], None);
    body.profile_name = "n".repeat(257);
    let status = raw.onboard_body(&key, &body).await.unwrap_err();
    assert!(status.message().starts_with("profile_name:"), "{status:?}");
    let words = vec!["abandon".to_string(); 25];
    let status = raw
        .onboard_claiming(&t.id, &words, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("profile_words:"), "{status:?}");
    assert_eq!(t.profile_rows().await, 1);
}

on_both_backends!(
    oversized_fields_are_refused_by_name,
    oversized_fields_are_refused_by_name_sqlite,
    oversized_fields_are_refused_by_name_mariadb
);

// ------------------------------------------------------------------ one bad row, one answer

/// The same signed body sent to two instances at once, each time with 200 other requests
/// in flight at both: the copy that loses the race is denied as replayed on its own (its
/// nonce was committed by the other instance while this one decided), and every other
/// request of its batch is decided normally. Before isolation, the losing batch's
/// transaction failed whole and all its requests were denied as unavailable.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_to_two_instances_is_replayed_alone() {
    let Some(t) = Target::new(Backend::Mariadb).await else {
        return;
    };
    t.data.load_policy("search:\n  - []\n");
    let one = Server::start(&t.data);
    let second = t.join();
    let two = Server::start(&second);
    let raw_one = Raw::connect(&one, &t.data).await;
    let raw_two = Raw::connect(&two, &t.data).await;
    let ws = raw_one.onboard(&t.id, None).await;
    let signed = |body: &pb::RequestBody| {
        let bytes = body.encode_to_vec();
        let signature = ws.key.sign(SignDomain::Request, &bytes).to_vec();
        pb::SignedMessage {
            body: bytes,
            signature,
        }
    };
    const ROUNDS: usize = 10;
    const OTHERS: usize = 200;
    for round in 0..ROUNDS {
        let twice = signed(&search_body(&t.id, &ws.profile_id, &ws.device_id));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..OTHERS {
            let grpc = if i % 2 == 0 { &raw_one } else { &raw_two }.grpc.clone();
            let message = signed(&search_body(&t.id, &ws.profile_id, &ws.device_id));
            tasks.spawn(async move { (false, grpc.clone().approve(message).await) });
            if i == OTHERS / 2 {
                for raw in [&raw_one, &raw_two] {
                    let mut grpc = raw.grpc.clone();
                    let message = twice.clone();
                    tasks.spawn(async move { (true, grpc.approve(message).await) });
                }
            }
        }
        let mut copies = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (is_copy, answer) = done.unwrap();
            let answer = decided(answer.unwrap().into_inner());
            if is_copy {
                copies.push(answer);
            } else {
                assert_eq!(
                    answer, None,
                    "round {round}: another request was not approved"
                );
            }
        }
        copies.sort_by_key(|a| a.map(|r| r as i32));
        assert_eq!(
            copies,
            vec![None, Some(pb::DenyReason::Replayed)],
            "round {round}: the body sent twice"
        );
    }
    let splits = metric(&one, "kss_db_errors_total{operation=\"decide_split\"}")
        + metric(&two, "kss_db_errors_total{operation=\"decide_split\"}");
    println!("batches split after a refused row: {splits} in {ROUNDS} rounds");
    // The onboarding, every approval and each replayed copy are recorded (administrative
    // actions, with an actor, are rows too: not counted here).
    let request_rows =
        t.db.count("SELECT COUNT(*) FROM audit WHERE actor IS NULL")
            .await;
    assert_eq!(request_rows as usize, 1 + ROUNDS * (OTHERS + 2));
    drop((one, two));
    t.finish().await;
}

// ------------------------------------------------------------------ junk costs nothing

/// Bytes of the files under `dir` (the SQLite database and its journal).
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The measurement: 10,000 unauthenticated requests, each carrying 60 KiB of
/// escape-heavy text (quotes, backslashes, control characters, non-ASCII), refused for a
/// made-up profile, a bad signature or another keyserver: the database grows by less than
/// 1 MB (SQLite: its files; both: no audit or profile row), every refusal is counted, the
/// log holds only a sample, and a valid request afterwards is approved. (The refusal
/// budget is off here: with it, the junk would take its 0.5-1.5 s each, which the stream
/// flood test measures; this one is about what is stored.)
async fn unauthenticated_junk_stores_nothing(t: &Target) {
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start_with(&t.data, &["--refusals-per-address", "0"]);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let audit_before = t.audit_rows().await;
    let bytes_before = bytes_under(&t.data.path());
    let mut nasty = String::new();
    for c in "\"\\\n\t\u{1}\u{7f}é€<'>\u{0}".chars().cycle() {
        if nasty.len() + c.len_utf8() > 4000 {
            break;
        }
        nasty.push(c);
    }
    let meta: Vec<pb::MetaInfo> = (0..15)
        .map(|_| pb::MetaInfo {
            meta: nasty.clone(),
            complete: false,
        })
        .collect();
    let other_keyserver = "0123456789abcdef0123456789abcdef";
    const JUNK: usize = 10_000;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < JUNK {
        while tasks.len() < 32 && sent < JUNK {
            let mut body = match sent % 3 {
                0 => search_body(&t.id, &unknown_profile_id(sent), &ws.device_id),
                1 => search_body(&t.id, &ws.profile_id, &ws.device_id),
                _ => search_body(other_keyserver, &ws.profile_id, &ws.device_id),
            };
            body.auth_meta = meta.clone();
            let bytes = body.encode_to_vec();
            assert!(bytes.len() > 60_000);
            // Signed by a key that is not the profile's.
            let signature = DeviceKey::generate()
                .sign(SignDomain::Request, &bytes)
                .to_vec();
            let mut grpc = raw.grpc.clone();
            tasks.spawn(async move {
                grpc.approve(pb::SignedMessage {
                    body: bytes,
                    signature,
                })
                .await
                .map(tonic::Response::into_inner)
            });
            sent += 1;
        }
        let answer = tasks.join_next().await.unwrap().unwrap().unwrap();
        assert_ne!(decided(answer), None, "junk approved");
    }
    while let Some(answer) = tasks.join_next().await {
        assert_ne!(decided(answer.unwrap().unwrap()), None, "junk approved");
    }

    assert_eq!(t.audit_rows().await, audit_before, "junk was stored");
    assert_eq!(t.profile_rows().await, 1);
    let grown = bytes_under(&t.data.path()).saturating_sub(bytes_before);
    println!("data directory grew by {grown} bytes for {JUNK} junk requests");
    assert!(grown < 1_000_000, "grew by {grown} bytes");
    let rejected: f64 = ["unknown_profile", "signature", "wrong_keyserver"]
        .iter()
        .map(|r| metric(&server, &format!("kss_rejected_total{{reason=\"{r}\"}}")))
        .sum();
    assert_eq!(rejected, JUNK as f64);
    let logged = server
        .log_text()
        .matches("refused before authentication")
        .count();
    println!("{logged} log lines for {JUNK} refusals");
    assert!(logged < JUNK / 10, "{logged} log lines");

    assert_eq!(raw.search(&t.id, &ws).await, None);
    assert_eq!(t.audit_rows().await, audit_before + 1);
}

/// A well-formed profile id that is not onboarded (differs for each `n`).
fn unknown_profile_id(n: usize) -> String {
    format!("{n:032x}")
}

on_both_backends!(
    unauthenticated_junk_stores_nothing,
    unauthenticated_junk_stores_nothing_sqlite,
    unauthenticated_junk_stores_nothing_mariadb
);

// ------------------------------------------------------------------ transport floods

/// p99 of `n` searches over `raw`'s open connection, in microseconds.
async fn search_p99(raw: &Raw, keyserver_id: &str, ws: &Workstation, n: usize) -> u128 {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        assert_eq!(raw.search(keyserver_id, ws).await, None);
        took.push(started.elapsed().as_micros());
    }
    took.sort_unstable();
    took[(n * 99 / 100).min(n - 1)]
}

/// Connections that never finish their TLS handshake hold at most `--max-handshakes`
/// slots: past them the listener accepts nothing more (counted in
/// `kss_transport_limited_total{limit="handshakes"}`), a client on an open connection is
/// served throughout, and once the flood goes new clients are accepted again. The p99 of
/// the well-behaved client, unloaded and under a full-handshake flood, is printed (a
/// figure for the README, not an assertion).
#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_flood_is_bounded_and_open_connections_are_served() {
    let Some(t) = Target::new(Backend::Sqlite).await else {
        return;
    };
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start_with(&t.data, &["--max-handshakes", "4"]);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let unloaded = search_p99(&raw, &t.id, &ws, P99_SAMPLES).await;

    // Silent connections: each holds a handshake until it times out or goes away.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        );
    }
    wait_until(
        "the handshake limit is reached",
        Duration::from_secs(10),
        || metric(&server, "kss_transport_limited_total{limit=\"handshakes\"}") >= 1.0,
    );
    // The open connection is still served.
    for _ in 0..20 {
        assert_eq!(raw.search(&t.id, &ws).await, None);
    }
    // A new client waits while the slots are held...
    let endpoint = server.endpoint();
    let ca = t.data.ca_pem();
    let connecting = tokio::spawn(async move {
        kss_client::connect_channel(&endpoint, &ca, Some("localhost")).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !connecting.is_finished(),
        "accepted past the handshake limit"
    );
    // ...and is accepted once they go.
    drop(silent);
    let channel = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("not accepted after the flood")
        .unwrap()
        .unwrap();
    let late = Raw {
        grpc: KeyServerClient::new(channel),
    };
    assert_eq!(late.search(&t.id, &ws).await, None);

    // A flood of full handshakes from another process (`kss flood`, 8 workers making new
    // TLS connections back to back), run at the lowest CPU priority: the attacker's CPU
    // is not the keyserver's, and on this one machine it would otherwise be.
    let flood = start_flood(
        &server,
        &t.data,
        &["--kind", "handshakes", "--concurrency", "8"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = search_p99(&raw, &t.id, &ws, P99_SAMPLES).await;
    let report = flood.finish();
    assert!(report["completed"].as_u64().unwrap() > 0, "{report}");
    println!(
        "search p99 unloaded {unloaded} µs, under a flood of {} TLS handshakes {flooded} µs \
         ({:.2}×)",
        report["completed"],
        flooded as f64 / unloaded.max(1) as f64
    );
    drop(server);
    t.finish().await;
}

/// A `kss flood` run in a child process at the lowest CPU priority (`nice -n 19`).
struct Flood(std::process::Child);

/// How long each flood runs: long enough for 200 searches under it.
const FLOOD_SECS: &str = "8";

/// Searches per p99 measurement (the p99 is then the 6th slowest: 200 made it the 2nd,
/// and one scheduling hiccup decided the figure).
const P99_SAMPLES: usize = 600;

fn start_flood(server: &Server, data: &DataDir, args: &[&str]) -> Flood {
    let ca = data.path().join("tls/ca.pem");
    let child = std::process::Command::new("nice")
        .args(["-n", "19", common::kss_bin(), "flood", "--endpoint"])
        .arg(server.endpoint())
        .arg("--ca")
        .arg(&ca)
        .args(["--duration", FLOOD_SECS])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nice and kss flood run");
    Flood(child)
}

/// 512 made-up requests in flight over 8 connections, and `extra` flags.
fn stream_flood(server: &Server, data: &DataDir, extra: &[&str]) -> Flood {
    let mut args = vec![
        "--kind",
        "streams",
        "--connections",
        "8",
        "--concurrency",
        "512",
    ];
    args.extend_from_slice(extra);
    start_flood(server, data, &args)
}

impl Flood {
    /// Waits for the flood to end and returns its report.
    fn finish(self) -> serde_json::Value {
        let out = self.0.wait_with_output().unwrap();
        assert!(out.status.success(), "kss flood failed: {out:?}");
        serde_json::from_str(text(&out.stdout).trim()).unwrap()
    }
}

/// 512 refused requests kept in flight over 8 connections (each at its 64-stream limit),
/// every one a made-up profile with a made-up signature: none is approved or stored, all
/// are counted as rejected, and a well-behaved client on its own connection is served
/// throughout. Its p99, unloaded and under the flood, is printed (a figure for the
/// README, not an assertion).
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_is_refused_cheaply_and_others_are_served() {
    let Some(t) = Target::new(Backend::Sqlite).await else {
        return;
    };
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start(&t.data);
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let unloaded = search_p99(&raw, &t.id, &ws, P99_SAMPLES).await;
    let audit_before = t.db.count("SELECT COUNT(*) FROM audit").await;

    let flood = stream_flood(&server, &t.data, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = search_p99(&raw, &t.id, &ws, P99_SAMPLES).await;
    let report = flood.finish();
    let refused = report["completed"].as_u64().unwrap();
    assert!(refused > 0, "{report}");
    assert_eq!(report["approved"], 0, "{report}");
    // Refused before anything is stored: the audit holds the searches only.
    assert_eq!(
        t.db.count("SELECT COUNT(*) FROM audit").await,
        audit_before + P99_SAMPLES as i64
    );
    let rejected: f64 = server
        .metrics()
        .lines()
        .filter(|l| l.starts_with("kss_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(rejected >= refused as f64, "{rejected} < {refused}");
    let delayed = server
        .metrics()
        .lines()
        .find(|l| l.starts_with("kss_transport_limited_total{limit=\"refusals\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // The flooding connections spent their refusal budgets: their requests were delayed.
    assert!(delayed > 0.0, "no flooding request was delayed");

    // A sender that moves to a new connection before its budget is spent: every 32
    // requests, a new TLS handshake.
    let rotating = stream_flood(&server, &t.data, &["--requests-per-connection", "32"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded_rotating = search_p99(&raw, &t.id, &ws, P99_SAMPLES).await;
    let rotating_report = rotating.finish();
    assert_eq!(rotating_report["approved"], 0, "{rotating_report}");
    assert_eq!(
        t.db.count("SELECT COUNT(*) FROM audit").await,
        audit_before + 2 * P99_SAMPLES as i64
    );
    println!(
        "search p99 under a flood moving to a new connection every 32 requests: \
         {flooded_rotating} µs ({:.2}×); flood report {rotating_report}",
        flooded_rotating as f64 / unloaded.max(1) as f64
    );
    println!(
        "search p99 unloaded {unloaded} µs, under a flood of {refused} refused requests \
         ({} s, 8 connections × 64 streams) {flooded} µs ({:.2}×); {delayed} requests of \
         the flooding connections delayed; flood report {report}",
        FLOOD_SECS,
        flooded as f64 / unloaded.max(1) as f64
    );
    drop(server);
    t.finish().await;
}

/// A TCP connection from 127.0.0.`host` to the server (silent: it sends nothing).
async fn connect_from(host: u8, server: &Server) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, host], 0)))
        .unwrap();
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], server.port)))
        .await
        .unwrap()
}

/// Whether the server closed `stream` (rather than waiting for its handshake).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent bytes before a ClientHello"),
        Err(_) => false,
    }
}

/// `--max-connections-per-address` and `--max-connections` hold: a connection over
/// either is closed at once (counted by limit), connections already open are served, and
/// a slot given back is taken again.
#[tokio::test(flavor = "multi_thread")]
async fn connections_are_bounded_in_all_and_per_address() {
    let Some(t) = Target::new(Backend::Sqlite).await else {
        return;
    };
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start_with(
        &t.data,
        &[
            "--max-connections",
            "6",
            "--max-connections-per-address",
            "3",
        ],
    );
    // One well-behaved connection from 127.0.0.1, then two silent ones: 3 from it.
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    let mut held = vec![
        connect_from(1, &server).await,
        connect_from(1, &server).await,
    ];
    let mut over = connect_from(1, &server).await;
    assert!(closed_by_server(&mut over).await, "a 4th from 127.0.0.1");
    assert!(
        metric(
            &server,
            "kss_transport_limited_total{limit=\"connections_per_address\"}"
        ) >= 1.0
    );
    // Another address still gets in, up to 6 in all.
    for _ in 0..3 {
        let mut c = connect_from(2, &server).await;
        assert!(!closed_by_server(&mut c).await, "within the limits");
        held.push(c);
    }
    let mut sixth = connect_from(3, &server).await;
    assert!(closed_by_server(&mut sixth).await, "a 7th connection");
    assert!(
        metric(
            &server,
            "kss_transport_limited_total{limit=\"connections\"}"
        ) >= 1.0
    );
    // The open connection is served throughout.
    assert_eq!(raw.search(&t.id, &ws).await, None);
    // A slot given back is taken again.
    drop(held.remove(0));
    wait_until("a freed slot is taken", Duration::from_secs(10), || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            rt.block_on(async {
                let mut c = connect_from(3, &server).await;
                !closed_by_server(&mut c).await
            })
        })
    });
    drop(server);
    t.finish().await;
}

/// `--idle-timeout-secs`: a connection with no request for that long is closed (counted),
/// one with requests more often is not, and a closed one's client reconnects.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let Some(t) = Target::new(Backend::Sqlite).await else {
        return;
    };
    t.data.load_policy("search:\n  - []\n");
    let server = Server::start_with(&t.data, &["--idle-timeout-secs", "1"]);
    let idle_closed = |server: &Server| {
        metric(
            server,
            "kss_transport_limited_total{limit=\"idle_timeout\"}",
        )
    };
    let raw = Raw::connect(&server, &t.data).await;
    let ws = raw.onboard(&t.id, None).await;
    // Busy: a request every 300 ms for 3 s keeps the connection open.
    for _ in 0..10 {
        assert_eq!(raw.search(&t.id, &ws).await, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(idle_closed(&server), 0.0, "a busy connection was closed");
    // Idle: closed after about a second.
    wait_until(
        "the idle connection is closed",
        Duration::from_secs(10),
        || idle_closed(&server) >= 1.0,
    );
    // The client reconnects on its next request.
    let mut answered = false;
    for _ in 0..3 {
        if raw.try_search(&t.id, &ws).await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered, "the client did not reconnect");
    drop(server);
    t.finish().await;
}
