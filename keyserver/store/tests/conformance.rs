//! One conformance suite for every `Store` backend.
//!
//! Each check is written once against `Arc<dyn Store>` and runs against:
//! * SQLite, in a fresh temporary directory;
//! * MySQL/MariaDB through `KSS_TEST_MYSQL_URL` (skipped, and passing, when unset);
//! * MySQL/MariaDB through `KSS_TEST_MYSQL_TLS_URL` (TLS, same checks; skipped when unset).
//!
//! Every MySQL test runs in a database of its own, `kss_conf_<pid>_<time>_<n>`, created
//! before and dropped after the test (the test user needs CREATE/DROP on `kss_%`).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kss_policy::{Counter, QuotaWindow};
use kss_store::{
    AuditEntry, AuditFilter, AuditKey, AuditRecord, CHECKPOINT_EVERY, ChainVerdict, Decision,
    DecisionTx, Enrollment, EnrollmentUse, Identity, InstanceInfo, Lease, LeaseClaim, MysqlStore,
    OFFLINE_AFTER_MS, PolicyAdded, Profile, PruneOutcome, Revocation, SqliteStore, State, Store,
    StoreError, StoredCounter, clone_sqlite_into_mysql, parse_db_uri, parse_db_uri_with_ca,
};
use sqlx::{Connection, Executor, Row};

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
type Check = fn(Arc<dyn Store>) -> BoxFut;

// ------------------------------------------------------------------ backends

/// The audit chain's key, as the server would derive it from its root secret.
struct TestAuditKey([u8; 32]);

impl AuditKey for TestAuditKey {
    fn mac(&self, domain: &str, fields: &[&[u8]]) -> [u8; 32] {
        use hmac::{Mac, digest::KeyInit};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0).unwrap();
        for f in std::iter::once(domain.as_bytes()).chain(fields.iter().copied()) {
            mac.update(&(f.len() as u64).to_be_bytes());
            mac.update(f);
        }
        mac.finalize().into_bytes().into()
    }
}

fn audit_key() -> Arc<dyn AuditKey> {
    Arc::new(TestAuditKey([7; 32]))
}

async fn with_sqlite(check: Check) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kss.db")).await.unwrap();
    store.set_audit_key(audit_key());
    check(Arc::new(store.clone())).await;
    store.close().await;
}

fn unique_db_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "kss_conf_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn with_mysql(var: &str, check: Check) {
    in_scratch_mysql(var, |store| check(Arc::new(store))).await;
}

/// Runs `test` on a fresh, migrated database of the server at `$var` (skipped when unset,
/// unless KSS_REQUIRE_MYSQL), dropped afterwards even if the test fails.
async fn in_scratch_mysql<F, Fut>(var: &str, test: F)
where
    F: FnOnce(MysqlStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(url) = std::env::var(var) else {
        // CI sets KSS_REQUIRE_MYSQL: there a missing database is a failure, not a skip.
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "{var} not set but KSS_REQUIRE_MYSQL is"
        );
        skipped(&format!("mysql test: {var} not set"));
        return;
    };
    let base = parse_db_uri(&url).unwrap();
    let name = unique_db_name();
    let mut admin = sqlx::mysql::MySqlConnection::connect_with(&base)
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await
        .unwrap();
    let store = MysqlStore::connect(base.clone().database(&name))
        .await
        .unwrap();
    store.set_audit_key(audit_key());
    // Run in a task so that a failed test still drops the database.
    let result = tokio::spawn(test(store.clone())).await;
    store.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_sqlite(|s| Box::pin(super::$name(s))).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_mysql("KSS_TEST_MYSQL_URL", |s| Box::pin(super::$name(s)))
                        .await;
                }
            )*
        }
        mod mysql_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_mysql("KSS_TEST_MYSQL_TLS_URL", |s| Box::pin(super::$name(s)))
                        .await;
                }
            )*
        }
    };
}

conformance!(
    identity_is_created_once,
    identity_reseal_races_one_winner,
    state_defaults_and_enabled,
    policy_versions,
    policy_versions_concurrent,
    profiles,
    counters_save_read_clear,
    audit_ids_in_order,
    audit_filters_and_counts,
    nonce_accepted_once,
    dropped_tx_leaves_nothing,
    concurrent_decisions_known_profile,
    concurrent_decisions_unknown_profile,
    policy_mac_gets_the_assigned_version,
    policy_macs_adopted_once,
    profile_macs_stored_and_adopted_once,
    list_profiles_pages_in_byte_order,
    revocations_are_idempotent_and_bump_the_epoch,
    revocations_concurrent,
    enrollments_created_once_and_listed_newest_first,
    use_enrollment_counts_down_and_refuses,
    use_enrollment_rolled_back_with_its_transaction,
    use_enrollment_second_transaction_waits_for_the_first,
    use_enrollment_second_transaction_takes_a_use_given_back,
    use_enrollment_one_use_two_at_once,
    use_enrollment_many_concurrent,
    instances_register_heartbeat_and_stop,
    a_stopped_instance_is_forgotten_at_once,
    leases_grant_refuse_and_take_over,
    fenced_writes_fail_after_a_takeover,
    fenced_decisions_fail_on_an_expired_or_missing_lease,
    audit_chain_verifies_with_checkpoints,
    audit_appends_twice_in_one_decision_transaction,
    audit_chain_needs_its_key,
    audit_admin_records_share_the_chain,
    audit_rows_chunked_by_bytes,
    audit_prune_keeps_the_chain_verifiable,
    concurrent_prunes_keep_the_chain_verifiable,
);

// ------------------------------------------------------------------ silent sessions

/// A session that locked a profile's rows and then went silent, as an instance whose
/// network to the database drops everything does, loses its transaction and its locks
/// within seconds: MariaDB closes a session idle inside any transaction after 5 s, MySQL 8
/// any idle session after 10 s. The transaction here has only locked rows (a decision's
/// first statements), which MariaDB counts as read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_a_silent_session_holding_locks_loses_them_within_seconds() {
    in_scratch_mysql("KSS_TEST_MYSQL_URL", |store| async move {
        let s: Arc<dyn Store> = Arc::new(store.clone());
        let mut tx = s.begin_decisions(None).await.unwrap();
        assert!(tx.insert_profile(&profile("p1", "x")).await.unwrap());
        tx.save_counters(&[counter("p1", "r1", 1)]).await.unwrap();
        tx.commit().await.unwrap();

        let mut silent = s.begin_decisions(None).await.unwrap();
        assert_eq!(silent.counters_for(&["p1"]).await.unwrap().len(), 1);
        let silent_since = std::time::Instant::now();
        let mut lock_waits = 0;
        loop {
            let mut tx = s.begin_decisions(None).await.unwrap();
            match tx.counters_for(&["p1"]).await {
                Ok(counters) => {
                    assert_eq!(counters, [counter("p1", "r1", 1)]);
                    break;
                }
                Err(e) => assert!(retryable(&e), "{e}"),
            }
            lock_waits += 1;
            assert!(
                lock_waits < 15,
                "the silent session's locks were never freed"
            );
        }
        let freed_after = silent_since.elapsed();
        let url = std::env::var("KSS_TEST_MYSQL_URL").unwrap();
        let mut conn = sqlx::mysql::MySqlConnection::connect_with(&parse_db_uri(&url).unwrap())
            .await
            .unwrap();
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        // The session limit, plus at most one lock wait (2 s) that began just before it.
        let limit_secs = if version.contains("MariaDB") { 5 } else { 10 };
        println!("{version}: locks freed after {freed_after:?} ({lock_waits} lock waits)");
        assert!(lock_waits >= 1, "the locking read took no lock");
        assert!(
            freed_after < std::time::Duration::from_secs(limit_secs + 3),
            "{version}: the silent session kept its locks for {freed_after:?}"
        );
        // The silent session is gone, and its transaction with it.
        assert!(silent.commit().await.is_err());
    })
    .await;
}

/// Every TCP connection to the database has TCP_NODELAY: with Nagle's algorithm on, a
/// statement written right after one the server does not answer (the COM_STMT_CLOSE of a
/// statement evicted from the cache) waits for the server's delayed ACK, ~40 ms, and a
/// decision transaction of ten statements stalls on it (sqlx 0.9.0 left it off: one
/// instance decided ~2,200 searches/s instead of ~6,000, p99 226 ms instead of 9 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connections_do_not_wait_for_delayed_acks() {
    in_scratch_mysql("KSS_TEST_MYSQL_URL", |store| async move {
        let url = std::env::var("KSS_TEST_MYSQL_URL").unwrap();
        let port = parse_db_uri(&url).unwrap().get_port();
        let s: Arc<dyn Store> = Arc::new(store.clone());
        // A few decisions, so that the pool holds open connections.
        for i in 0..4 {
            let mut tx = s.begin_decisions(None).await.unwrap();
            tx.counters_for(&[format!("p{i}").as_str()]).await.unwrap();
            tx.commit().await.unwrap();
        }
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        let mut checked = 0;
        for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
            let entry = entry.unwrap();
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let fd = entry.file_name().to_string_lossy().parse::<i32>();
            let (true, Ok(fd)) = (is_socket, fd) else {
                continue;
            };
            let Ok(socket) =
                rustix::process::pidfd_getfd(&me, fd, rustix::process::PidfdGetfdFlags::empty())
            else {
                continue; // closed meanwhile
            };
            let peer = rustix::net::getpeername(&socket)
                .ok()
                .flatten()
                .and_then(|a| std::net::SocketAddr::try_from(a).ok());
            if peer.is_some_and(|p| p.port() == port) {
                assert!(
                    rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
                    "a connection to the database ({peer:?}) has Nagle's algorithm on"
                );
                checked += 1;
            }
        }
        if checked == 0 {
            // A UNIX socket URL has no TCP connection to check.
            skipped("mysql TCP_NODELAY test: no TCP connection to the database's port");
        }
        println!("{checked} connections to port {port} have TCP_NODELAY");
    })
    .await;
}

// ------------------------------------------------------------------ TLS

/// The values of `names`, or `None` after printing why the test is skipped (a failure
/// instead when KSS_REQUIRE_MYSQL is set: CI runs these against scripts/mariadb.sh).
fn tls_env(test: &str, names: &[&str]) -> Option<Vec<String>> {
    let mut values = Vec::new();
    for name in names {
        match std::env::var(name) {
            Ok(v) => values.push(v),
            Err(_) => {
                assert!(
                    std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
                    "{test}: {name} not set but KSS_REQUIRE_MYSQL is \
                     (eval \"$(bash scripts/mariadb.sh up)\")"
                );
                skipped(&format!(
                    "{test}: {name} not set (eval \"$(bash scripts/mariadb.sh up)\")"
                ));
                return None;
            }
        }
    }
    Some(values)
}

/// An address without its query: no ssl-mode, no ssl-ca.
fn bare(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// The raw password of a `mysql://user:password@...` URL (to check it is not leaked).
fn url_password(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").unwrap();
    let (userinfo, _) = rest.rsplit_once('@').unwrap();
    userinfo.split_once(':').unwrap().1.to_string()
}

async fn session_cipher(options: &sqlx::mysql::MySqlConnectOptions) -> String {
    let mut conn = sqlx::mysql::MySqlConnection::connect_with(options)
        .await
        .unwrap();
    let row = conn
        .fetch_one("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap();
    let cipher: String = row.try_get(1).unwrap();
    conn.close().await.unwrap();
    cipher
}

/// The TLS URL (it names the CA, no ssl-mode) really gives an encrypted, verified
/// connection.
#[tokio::test]
async fn mysql_tls_connection_is_encrypted() {
    let Some(v) = tls_env(
        "mysql_tls_connection_is_encrypted",
        &["KSS_TEST_MYSQL_TLS_URL"],
    ) else {
        return;
    };
    let options = parse_db_uri(&v[0]).unwrap();
    assert!(matches!(
        options.get_ssl_mode(),
        sqlx::mysql::MySqlSslMode::VerifyIdentity
    ));
    let cipher = session_cipher(&options).await;
    println!("TLS cipher: {cipher}");
    assert!(!cipher.is_empty());
}

/// No ssl-mode and the right CA from a CA file (`kss serve --db-ca-file`): the server's
/// certificate and name are verified and the session is encrypted, through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tls_default_mode_with_the_ca_file_is_verified_and_encrypted() {
    let test = "mysql_tls_default_mode_with_the_ca_file_is_verified_and_encrypted";
    let Some(v) = tls_env(
        test,
        &[
            "KSS_TEST_MYSQL_TLS_URL",
            "KSS_TEST_MYSQL_CA",
            "KSS_TEST_MYSQL_WRONG_CA",
        ],
    ) else {
        return;
    };
    let (url, ca, wrong_ca) = (
        &v[0],
        std::path::Path::new(&v[1]),
        std::path::Path::new(&v[2]),
    );
    let options = parse_db_uri_with_ca(bare(url), Some(ca)).unwrap();
    assert!(matches!(
        options.get_ssl_mode(),
        sqlx::mysql::MySqlSslMode::VerifyIdentity
    ));
    let cipher = session_cipher(&options).await;
    println!("TLS cipher (CA file): {cipher}");
    assert!(!cipher.is_empty());
    // By name too: the certificate names localhost as well as 127.0.0.1.
    assert!(
        !session_cipher(&options.clone().host("localhost"))
            .await
            .is_empty()
    );
    // The address's own ssl-ca wins over the CA file.
    let own = parse_db_uri_with_ca(url, Some(wrong_ca)).unwrap();
    assert!(!session_cipher(&own).await.is_empty());

    // The store itself, on a scratch database of its own.
    let name = unique_db_name();
    let mut admin = sqlx::mysql::MySqlConnection::connect_with(&options)
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await
        .unwrap();
    let connected = MysqlStore::connect(options.clone().database(&name)).await;
    let checked = match &connected {
        Ok(store) => store.state().await.map(|_| ()),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    };
    if let Ok(store) = &connected {
        store.close().await;
    }
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .await
        .unwrap();
    checked.unwrap();
}

/// No ssl-mode and no CA, or a CA that did not sign the server's certificate: refused,
/// saying the certificate is not trusted (and never with the password).
#[tokio::test]
async fn mysql_tls_default_mode_refuses_an_untrusted_server() {
    let test = "mysql_tls_default_mode_refuses_an_untrusted_server";
    let Some(v) = tls_env(test, &["KSS_TEST_MYSQL_TLS_URL", "KSS_TEST_MYSQL_WRONG_CA"]) else {
        return;
    };
    let (url, wrong_ca) = (&v[0], std::path::Path::new(&v[1]));
    let password = url_password(url);
    for (what, options) in [
        ("no CA", parse_db_uri(bare(url)).unwrap()),
        (
            "a wrong CA file",
            parse_db_uri_with_ca(bare(url), Some(wrong_ca)).unwrap(),
        ),
        (
            "a wrong ssl-ca",
            parse_db_uri(&format!(
                "{}?ssl-ca={}",
                bare(url),
                wrong_ca.display().to_string().replace('/', "%2F")
            ))
            .unwrap(),
        ),
    ] {
        let e = MysqlStore::connect(options).await.unwrap_err();
        let msg = e.to_string();
        println!("{what}: {msg}");
        assert!(matches!(e, StoreError::Unavailable(_)), "{what}: {e:?}");
        assert!(msg.contains("certificate is not trusted"), "{what}: {msg}");
        assert!(!msg.contains(&password), "{what}: {msg} leaks the password");
    }
}

/// `ssl-mode=DISABLED`: plaintext, as asked (the user that must use TLS is refused).
#[tokio::test]
async fn mysql_ssl_mode_disabled_connects_in_plaintext() {
    let test = "mysql_ssl_mode_disabled_connects_in_plaintext";
    let Some(v) = tls_env(test, &["KSS_TEST_MYSQL_URL", "KSS_TEST_MYSQL_TLS_URL"]) else {
        return;
    };
    let options = parse_db_uri(&format!("{}?ssl-mode=DISABLED", bare(&v[0]))).unwrap();
    assert!(matches!(
        options.get_ssl_mode(),
        sqlx::mysql::MySqlSslMode::Disabled
    ));
    assert_eq!(session_cipher(&options).await, "");
    let tls_user = parse_db_uri(&format!("{}?ssl-mode=DISABLED", bare(&v[1]))).unwrap();
    let e = sqlx::mysql::MySqlConnection::connect_with(&tls_user)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Access denied"), "{e}");
}

// ------------------------------------------------------------- migration of old data

/// A database as kss wrote it before `0003_integrity`: migrations 0001 and 0002 only.
async fn legacy_migrator(backend: &str) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    for name in ["0001_init.sql", "0002_registry.sql"] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

/// Rows in the 0002 schema (SQL both backends read alike).
const LEGACY_ROWS: &[&str] = &[
    "INSERT INTO identity (singleton, keyserver_id, sealed_root, created_at_ms) \
     VALUES (1, 'abababababababababababababababab', X'0707', 5)",
    "INSERT INTO profiles (profile_id, device_id, device_public_key, workstation_share, name, \
     words, created_at_ms) VALUES ('legacy', 'dev-legacy', X'0102', X'0909', 'old', \
     'alpha bravo', 7)",
    "INSERT INTO policy_versions (version, text, sha256, loaded_at_ms) \
     VALUES (1, 'decrypt: []', 'h1', 8)",
    "UPDATE state SET policy_version = 1, quota_epoch = 3 WHERE singleton = 1",
];

/// After the migration: the old rows, with empty MACs, ready to adopt.
async fn check_migrated_legacy_rows(s: Arc<dyn Store>) {
    assert_eq!(
        s.state().await.unwrap(),
        State {
            enabled: true,
            policy_version: 1,
            quota_epoch: 3,
            revocation_epoch: 0,
        }
    );
    let old = Profile {
        profile_id: "legacy".into(),
        device_id: "dev-legacy".into(),
        device_public_key: vec![1, 2],
        workstation_share: vec![9, 9],
        name: "old".into(),
        words: vec!["alpha".into(), "bravo".into()],
        created_at_ms: 7,
        mac: Vec::new(),
    };
    assert_eq!(s.profile("legacy").await.unwrap(), Some(old.clone()));
    assert_eq!(s.profiles_without_mac(10).await.unwrap(), [old]);
    let policy = s.policy(None).await.unwrap().unwrap();
    assert!(policy.mac.is_empty());
    assert_eq!(s.policies_without_mac().await.unwrap(), [policy]);
    assert!(
        s.set_profile_mac("legacy", &profile_mac("legacy"))
            .await
            .unwrap()
    );
    assert!(s.set_policy_mac(1, &mac_of(1)).await.unwrap());
    assert!(s.profiles_without_mac(10).await.unwrap().is_empty());
    assert!(s.policies_without_mac().await.unwrap().is_empty());
    assert!(s.revocations(None).await.unwrap().is_empty());
    assert!(s.enrollments().await.unwrap().is_empty());
    assert!(s.revoke(&revocation("legacy", None, 9)).await.unwrap());
    assert_eq!(s.state().await.unwrap().revocation_epoch, 1);
    // The next version continues the numbering.
    let added = s.add_policy("search: []", "h2", 10, &mac_of).await.unwrap();
    assert_eq!(
        added,
        PolicyAdded {
            version: 2,
            changed: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_of_the_previous_version_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kss.db");
    let (_migrations, legacy) = legacy_migrator("sqlite").await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    legacy.run(&pool).await.unwrap();
    for sql in LEGACY_ROWS {
        pool.execute(*sql).await.unwrap();
    }
    pool.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    check_migrated_legacy_rows(Arc::new(store.clone())).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_database_of_the_previous_version_migrates() {
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "KSS_TEST_MYSQL_URL not set but KSS_REQUIRE_MYSQL is"
        );
        skipped("mysql test: KSS_TEST_MYSQL_URL not set");
        return;
    };
    let base = parse_db_uri(&url).unwrap();
    let name = unique_db_name();
    let mut admin = sqlx::mysql::MySqlConnection::connect_with(&base)
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await
        .unwrap();
    let options = base.clone().database(&name);
    let (_migrations, legacy) = legacy_migrator("mysql").await;
    let mut conn = sqlx::mysql::MySqlConnection::connect_with(&options)
        .await
        .unwrap();
    legacy.run(&mut conn).await.unwrap();
    for sql in LEGACY_ROWS {
        conn.execute(*sql).await.unwrap();
    }
    conn.close().await.unwrap();
    let store = MysqlStore::connect(options).await.unwrap();
    let result = tokio::spawn(check_migrated_legacy_rows(Arc::new(store.clone()))).await;
    store.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

// ------------------------------------------------------------------ helpers

fn profile(id: &str, name: &str) -> Profile {
    Profile {
        profile_id: id.to_string(),
        device_id: format!("dev-{id}"),
        device_public_key: vec![1, 2, 3, 0, 255],
        workstation_share: vec![9; 33],
        name: name.to_string(),
        words: vec!["alpha".into(), "bravo".into(), "charlie".into()],
        created_at_ms: 1_700_000_000_000,
        mac: profile_mac(id),
    }
}

/// A stand-in for the keyserver's HMAC of a profile row (32 bytes).
fn profile_mac(id: &str) -> Vec<u8> {
    let mut mac = vec![0xa5; 32];
    for (m, b) in mac.iter_mut().zip(id.bytes()) {
        *m ^= b;
    }
    mac
}

/// A stand-in for the keyserver's HMAC of a policy version row: names the version.
fn mac_of(version: u64) -> Vec<u8> {
    let mut mac = vec![0x5a; 32];
    mac[..8].copy_from_slice(&version.to_be_bytes());
    mac
}

/// `add_policy` storing no MAC, as versions written before MACs were.
fn no_mac(_version: u64) -> Vec<u8> {
    Vec::new()
}

fn window() -> QuotaWindow {
    QuotaWindow {
        day: jiff::civil::date(2026, 3, 14),
        hour: 15,
    }
}

fn counter(profile_id: &str, rule_id: &str, used: u64) -> StoredCounter {
    StoredCounter {
        rule_id: rule_id.to_string(),
        profile_id: profile_id.to_string(),
        counter: Counter {
            window: window(),
            hour_used: used,
            day_used: used + 10,
        },
    }
}

fn record(
    profile_id: Option<&str>,
    decision: Decision,
    request_type: &str,
    at_ms: i64,
    nonce: Option<Vec<u8>>,
) -> AuditRecord {
    AuditRecord {
        at_ms,
        instance_id: "instance-1".into(),
        profile_id: profile_id.map(str::to_string),
        device_id: profile_id.map(|p| format!("dev-{p}")),
        request_type: request_type.into(),
        meta: r#"[{"meta": "m", "complete": true}]"#.into(),
        cryptographic_id: "00ff".into(),
        decision,
        rule_set: (decision == Decision::Approved).then_some(2),
        reason: (decision == Decision::Denied).then(|| "quota".to_string()),
        policy_version: Some(1),
        nonce,
        ciphertext_sha256: (request_type == "decrypt").then(|| vec![0xcd; 32]),
        actor: request_type
            .starts_with("admin.")
            .then(|| "uid:0 cli".to_string()),
    }
}

fn all() -> AuditFilter {
    AuditFilter {
        limit: 10_000,
        ..AuditFilter::default()
    }
}

fn ids(entries: &[AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.id).collect()
}

fn nonce(a: u64, b: u64) -> Vec<u8> {
    format!("{a:08}{b:08}").into_bytes()
}

/// Deadlock (1213), lock wait timeout (1205), or SQLite busy: the errors to retry.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(m) => {
            m.contains("1213") || m.contains("1205") || m.contains("database is locked")
        }
        _ => false,
    }
}

// ------------------------------------------------------------------ checks

async fn identity_is_created_once(s: Arc<dyn Store>) {
    assert_eq!(s.identity().await.unwrap(), None);
    let id = Identity {
        keyserver_id: "0123456789abcdef0123456789abcdef".into(),
        sealed_root: vec![7; 80],
        created_at_ms: 42,
    };
    s.create_identity(&id).await.unwrap();
    assert_eq!(s.identity().await.unwrap(), Some(id.clone()));
    let other = Identity {
        keyserver_id: "ffffffffffffffffffffffffffffffff".into(),
        sealed_root: vec![1],
        created_at_ms: 43,
    };
    let e = s.create_identity(&other).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
    assert_eq!(s.identity().await.unwrap(), Some(id.clone()));

    // Resealed only from the sealed root read, and only for the same keyserver.
    let resealed = vec![9; 80];
    assert!(
        !s.reseal_identity(&id.keyserver_id, &[1], &resealed)
            .await
            .unwrap()
    );
    assert!(
        !s.reseal_identity(&other.keyserver_id, &id.sealed_root, &resealed)
            .await
            .unwrap()
    );
    assert_eq!(s.identity().await.unwrap(), Some(id.clone()));
    assert!(
        s.reseal_identity(&id.keyserver_id, &id.sealed_root, &resealed)
            .await
            .unwrap()
    );
    assert!(
        !s.reseal_identity(&id.keyserver_id, &id.sealed_root, &[3; 80])
            .await
            .unwrap()
    );
    let now = s.identity().await.unwrap().unwrap();
    assert_eq!(
        (now.keyserver_id, now.sealed_root, now.created_at_ms),
        (id.keyserver_id, resealed, 42)
    );
}

/// Instances resealing the same stored identity at once (after a lost master key, each
/// with its own new seal): exactly one swap lands, the others change nothing, and what is
/// stored is the winner's seal; its stale old value then changes nothing either.
async fn identity_reseal_races_one_winner(s: Arc<dyn Store>) {
    let id = Identity {
        keyserver_id: "0123456789abcdef0123456789abcdef".into(),
        sealed_root: vec![7; 80],
        created_at_ms: 42,
    };
    s.create_identity(&id).await.unwrap();
    let racers: Vec<_> = (0u8..8)
        .map(|i| {
            let (s, id) = (Arc::clone(&s), id.clone());
            tokio::spawn(async move {
                let new = vec![100 + i; 80];
                let won = s
                    .reseal_identity(&id.keyserver_id, &id.sealed_root, &new)
                    .await
                    .unwrap();
                (won, new)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (won, new) = racer.await.unwrap();
        if won {
            winners.push(new);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one reseal swaps");
    let stored = s.identity().await.unwrap().unwrap();
    assert_eq!(stored.sealed_root, winners[0]);
    assert_eq!(
        (stored.keyserver_id.as_str(), stored.created_at_ms),
        (id.keyserver_id.as_str(), 42)
    );
    // A racer that read the old row late: its old value is stale, nothing changes.
    assert!(
        !s.reseal_identity(&id.keyserver_id, &id.sealed_root, &[1; 80])
            .await
            .unwrap()
    );
    // The winner's seal is the one to swap from now.
    assert!(
        s.reseal_identity(&id.keyserver_id, &winners[0], &[2; 80])
            .await
            .unwrap()
    );
    assert_eq!(
        s.identity().await.unwrap().unwrap().sealed_root,
        vec![2; 80]
    );
}

async fn state_defaults_and_enabled(s: Arc<dyn Store>) {
    assert_eq!(
        s.state().await.unwrap(),
        State {
            enabled: true,
            policy_version: 0,
            quota_epoch: 0,
            revocation_epoch: 0,
        }
    );
    s.set_enabled(false).await.unwrap();
    assert!(!s.state().await.unwrap().enabled);
    s.set_enabled(false).await.unwrap();
    assert!(!s.state().await.unwrap().enabled);
    s.set_enabled(true).await.unwrap();
    assert!(s.state().await.unwrap().enabled);
}

async fn policy_versions(s: Arc<dyn Store>) {
    assert_eq!(s.policy(None).await.unwrap(), None);
    let added = |version, changed| PolicyAdded { version, changed };
    assert_eq!(
        s.add_policy("text one", "sha1", 100, &mac_of)
            .await
            .unwrap(),
        added(1, true)
    );
    assert_eq!(s.state().await.unwrap().policy_version, 1);
    assert_eq!(
        s.add_policy("text two ✓", "sha2", 200, &mac_of)
            .await
            .unwrap(),
        added(2, true)
    );
    assert_eq!(s.state().await.unwrap().policy_version, 2);
    // The version in force again: nothing is stored.
    assert_eq!(
        s.add_policy("text two ✓", "sha2", 300, &mac_of)
            .await
            .unwrap(),
        added(2, false)
    );
    // An older version's text is a change: it is stored again, as a new version.
    assert_eq!(
        s.add_policy("text one", "sha1", 400, &mac_of)
            .await
            .unwrap(),
        added(3, true)
    );
    assert_eq!(
        s.add_policy("text two ✓", "sha2", 500, &mac_of)
            .await
            .unwrap(),
        added(4, true)
    );
    assert_eq!(s.state().await.unwrap().policy_version, 4);
    let latest = s.policy(None).await.unwrap().unwrap();
    assert_eq!(latest.version, 4);
    assert_eq!(latest.text, "text two ✓");
    assert_eq!(latest.sha256, "sha2");
    assert_eq!(latest.loaded_at_ms, 500);
    // Each version's MAC was computed for the number it was given.
    assert_eq!(latest.mac, mac_of(4));
    for v in 1..=4 {
        assert_eq!(s.policy(Some(v)).await.unwrap().unwrap().mac, mac_of(v));
    }
    let first = s.policy(Some(1)).await.unwrap().unwrap();
    assert_eq!((first.version, first.text.as_str()), (1, "text one"));
    assert_eq!(s.policy(Some(5)).await.unwrap(), None);
}

async fn policy_versions_concurrent(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.add_policy(&format!("p{i}"), "x", i, &mac_of).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        let added = t.await.unwrap().unwrap();
        assert!(added.changed);
        versions.push(added.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
    assert_eq!(s.state().await.unwrap().policy_version, 8);
    assert_eq!(s.policy(None).await.unwrap().unwrap().version, 8);

    // The same text loaded 8 times at once (an operator rolling out to every instance):
    // stored once, and every load answers that one version.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.add_policy("same text", "same", 100 + i, &mac_of).await })
        })
        .collect();
    let mut changed = 0;
    for t in tasks {
        let added = t.await.unwrap().unwrap();
        assert_eq!(added.version, 9);
        changed += usize::from(added.changed);
    }
    assert_eq!(changed, 1);
    assert_eq!(s.state().await.unwrap().policy_version, 9);
    assert_eq!(s.policy(Some(10)).await.unwrap(), None);
}

async fn profiles(s: Arc<dyn Store>) {
    assert_eq!(s.profile_count().await.unwrap(), 0);
    assert_eq!(s.profile("p1").await.unwrap(), None);
    let p1 = profile("p1", "first");
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.insert_profile(&p1).await.unwrap());
    assert!(!tx.insert_profile(&profile("p1", "again")).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(s.profile("p1").await.unwrap(), Some(p1.clone()));
    assert_eq!(s.profile_count().await.unwrap(), 1);

    // A duplicate leaves the row as it is, and the transaction goes on.
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(!tx.insert_profile(&profile("p1", "other")).await.unwrap());
    assert!(tx.insert_profile(&profile("p2", "second")).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(s.profile("p1").await.unwrap(), Some(p1));
    assert_eq!(s.profile("p2").await.unwrap().unwrap().name, "second");
    assert_eq!(s.profile_count().await.unwrap(), 2);
    // Ids compare exactly.
    assert_eq!(s.profile("P1").await.unwrap(), None);
}

async fn counters_save_read_clear(s: Arc<dyn Store>) {
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.counters_for(&["p1", "p2"]).await.unwrap().is_empty());
    tx.save_counters(&[
        counter("p1", "r2", 5),
        counter("p1", "r1", 3),
        counter("p2", "r1", 7),
    ])
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        s.counters(Some("p1")).await.unwrap(),
        vec![counter("p1", "r1", 3), counter("p1", "r2", 5)]
    );
    assert_eq!(
        s.counters(None).await.unwrap(),
        vec![
            counter("p1", "r1", 3),
            counter("p1", "r2", 5),
            counter("p2", "r1", 7)
        ]
    );

    // counters_for sees them, and a save replaces.
    let mut tx = s.begin_decisions(None).await.unwrap();
    let mut seen = tx.counters_for(&["p1", "nobody"]).await.unwrap();
    seen.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
    assert_eq!(seen, vec![counter("p1", "r1", 3), counter("p1", "r2", 5)]);
    let mut next = counter("p1", "r1", 4);
    next.counter.window.hour = 16;
    tx.save_counters(std::slice::from_ref(&next)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.counters(Some("p1")).await.unwrap(),
        vec![next.clone(), counter("p1", "r2", 5)]
    );

    assert_eq!(s.clear_counters(Some("p1")).await.unwrap(), 2);
    assert_eq!(s.state().await.unwrap().quota_epoch, 1);
    assert_eq!(
        s.counters(None).await.unwrap(),
        vec![counter("p2", "r1", 7)]
    );
    assert_eq!(s.clear_counters(Some("p1")).await.unwrap(), 0);
    assert_eq!(s.state().await.unwrap().quota_epoch, 2);
    assert_eq!(s.clear_counters(None).await.unwrap(), 1);
    assert_eq!(s.state().await.unwrap().quota_epoch, 3);
    assert!(s.counters(None).await.unwrap().is_empty());
}

async fn audit_ids_in_order(s: Arc<dyn Store>) {
    let first: Vec<AuditRecord> = (0..3)
        .map(|i| {
            record(
                Some("p1"),
                Decision::Approved,
                "unlock",
                i,
                Some(nonce(0, i as u64)),
            )
        })
        .collect();
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.append_audit(&[]).await.unwrap().is_empty());
    let a = tx.append_audit(&first).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");

    // A large batch: several statements (chunks) in one transaction.
    let many: Vec<AuditRecord> = (0..1200)
        .map(|i| {
            let d = if i % 3 == 0 {
                Decision::Denied
            } else {
                Decision::Approved
            };
            record(Some(&format!("q{}", i % 7)), d, "sign", 1000 + i, None)
        })
        .collect();
    let mut tx = s.begin_decisions(None).await.unwrap();
    let b = tx.append_audit(&many).await.unwrap();
    let c = tx
        .append_audit(&[record(None, Decision::Denied, "x", 5, None)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(b.len(), 1200);
    assert!(b.windows(2).all(|w| w[0] < w[1]));
    assert!(a[2] < b[0] && b[1199] < c[0]);

    // The ids returned are the ids stored, for the records given, in order.
    let listed = s.audit(&all()).await.unwrap();
    let mut expected_ids: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
    expected_ids.reverse();
    assert_eq!(ids(&listed), expected_ids);
    let mut expected_records: Vec<AuditRecord> = first
        .iter()
        .chain(&many)
        .cloned()
        .chain([record(None, Decision::Denied, "x", 5, None)])
        .collect();
    expected_records.reverse();
    let got: Vec<AuditRecord> = listed.into_iter().map(|e| e.record).collect();
    assert_eq!(got, expected_records);
}

async fn audit_filters_and_counts(s: Arc<dyn Store>) {
    assert_eq!(s.audit_counts().await.unwrap(), (0, 0));
    assert!(s.audit(&all()).await.unwrap().is_empty());
    let recs = [
        record(
            Some("p1"),
            Decision::Approved,
            "unlock",
            1000,
            Some(nonce(1, 1)),
        ),
        record(
            Some("p1"),
            Decision::Denied,
            "sign",
            2000,
            Some(nonce(1, 2)),
        ),
        record(Some("p2"), Decision::Approved, "sign", 3000, None),
        record(None, Decision::Denied, "unlock", 4000, None),
    ];
    let mut tx = s.begin_decisions(None).await.unwrap();
    let id = tx.append_audit(&recs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.audit_counts().await.unwrap(), (2, 2));

    let q = |f: AuditFilter| {
        let s = s.clone();
        async move { ids(&s.audit(&AuditFilter { limit: 100, ..f }).await.unwrap()) }
    };
    assert_eq!(
        q(AuditFilter::default()).await,
        vec![id[3], id[2], id[1], id[0]]
    );
    let by_profile = AuditFilter {
        profile_id: Some("p1".into()),
        ..AuditFilter::default()
    };
    assert_eq!(q(by_profile.clone()).await, vec![id[1], id[0]]);
    let denied = AuditFilter {
        decision: Some(Decision::Denied),
        ..AuditFilter::default()
    };
    assert_eq!(q(denied).await, vec![id[3], id[1]]);
    let sign = AuditFilter {
        request_type: Some("sign".into()),
        ..AuditFilter::default()
    };
    assert_eq!(q(sign).await, vec![id[2], id[1]]);
    let since = AuditFilter {
        since_ms: Some(2500),
        ..AuditFilter::default()
    };
    assert_eq!(q(since).await, vec![id[3], id[2]]);
    let since_exact = AuditFilter {
        since_ms: Some(2000),
        ..AuditFilter::default()
    };
    assert_eq!(q(since_exact).await, vec![id[3], id[2], id[1]]);
    let before = AuditFilter {
        before_id: Some(id[2]),
        ..AuditFilter::default()
    };
    assert_eq!(q(before).await, vec![id[1], id[0]]);
    let combined = AuditFilter {
        decision: Some(Decision::Approved),
        ..by_profile
    };
    assert_eq!(q(combined).await, vec![id[0]]);
    let nobody = AuditFilter {
        profile_id: Some("P1".into()),
        ..AuditFilter::default()
    };
    assert!(q(nobody).await.is_empty());
    let limited = s
        .audit(&AuditFilter {
            limit: 2,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&limited), vec![id[3], id[2]]);
    assert_eq!(limited[0].record, recs[3]);
    let zero = s.audit(&AuditFilter::default()).await.unwrap();
    assert!(zero.is_empty());
}

async fn nonce_accepted_once(s: Arc<dyn Store>) {
    let n = nonce(7, 7);
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.seen_nonces(&[&n]).await.unwrap().is_empty());
    tx.append_audit(&[record(
        Some("p"),
        Decision::Approved,
        "unlock",
        1,
        Some(n.clone()),
    )])
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let other = nonce(8, 8);
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert_eq!(
        tx.seen_nonces(&[&n, &other]).await.unwrap(),
        vec![n.clone()]
    );
    let e = tx
        .append_audit(&[record(
            Some("p"),
            Decision::Approved,
            "unlock",
            2,
            Some(n.clone()),
        )])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
    drop(tx);
    assert_eq!(s.audit(&all()).await.unwrap().len(), 1);
    assert_eq!(s.audit_counts().await.unwrap(), (1, 0));
}

async fn dropped_tx_leaves_nothing(s: Arc<dyn Store>) {
    let n = nonce(9, 9);
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.insert_profile(&profile("p1", "x")).await.unwrap());
    tx.save_counters(&[counter("p1", "r1", 1)]).await.unwrap();
    tx.append_audit(&[record(
        Some("p1"),
        Decision::Approved,
        "unlock",
        1,
        Some(n.clone()),
    )])
    .await
    .unwrap();
    drop(tx);

    assert_eq!(s.profile_count().await.unwrap(), 0);
    assert!(s.counters(None).await.unwrap().is_empty());
    assert!(s.audit(&all()).await.unwrap().is_empty());
    assert_eq!(s.audit_counts().await.unwrap(), (0, 0));

    // The nonce was not taken, nor the profile id.
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.seen_nonces(&[&n]).await.unwrap().is_empty());
    assert!(tx.insert_profile(&profile("p1", "x")).await.unwrap());
    tx.append_audit(&[record(Some("p1"), Decision::Approved, "unlock", 1, Some(n))])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.audit_counts().await.unwrap(), (1, 0));
}

const TASKS: u64 = 8;
const ROUNDS: u64 = 50;

/// One decision: read the counter under the transaction's lock, add one use, save it,
/// append its audit record, commit.
async fn one_use(s: &Arc<dyn Store>, p: &str, task: u64, round: u64) -> Result<(), StoreError> {
    let mut tx = s.begin_decisions(None).await?;
    let current = tx.counters_for(&[p]).await?;
    let previous = current
        .into_iter()
        .find(|c| c.rule_id == "rule")
        .map(|c| c.counter);
    let next = Counter::after_uses(previous, window(), 1);
    tx.save_counters(&[StoredCounter {
        rule_id: "rule".into(),
        profile_id: p.into(),
        counter: next,
    }])
    .await?;
    let n = nonce(task, round);
    tx.append_audit(&[record(Some(p), Decision::Approved, "unlock", 1, Some(n))])
        .await?;
    tx.commit().await
}

async fn concurrent_decisions(s: Arc<dyn Store>, p: &'static str, label: &str) {
    let retries = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let s = s.clone();
            let retries = retries.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    loop {
                        match one_use(&s, p, task, round).await {
                            Ok(()) => break,
                            Err(e) if retryable(&e) => {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("task {task} round {round}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "{label}: {} retried transactions (deadlock / lock wait timeout / busy)",
        retries.load(Ordering::Relaxed)
    );
    let counters = s.counters(Some(p)).await.unwrap();
    assert_eq!(counters.len(), 1);
    assert_eq!(counters[0].counter.day_used, TASKS * ROUNDS);
    assert_eq!(counters[0].counter.hour_used, TASKS * ROUNDS);
    assert_eq!(s.audit(&all()).await.unwrap().len() as u64, TASKS * ROUNDS);
    assert_eq!(s.audit_counts().await.unwrap(), (TASKS * ROUNDS, 0));
}

async fn concurrent_decisions_known_profile(s: Arc<dyn Store>) {
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert!(tx.insert_profile(&profile("p", "x")).await.unwrap());
    tx.commit().await.unwrap();
    concurrent_decisions(s, "p", "known profile").await;
}

async fn concurrent_decisions_unknown_profile(s: Arc<dyn Store>) {
    concurrent_decisions(s, "ghost", "unknown profile").await;
}

// ------------------------------------------------------------- integrity: MACs

async fn policy_mac_gets_the_assigned_version(s: Arc<dyn Store>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = {
        let seen = seen.clone();
        move |v: u64| {
            seen.lock().unwrap().push(v);
            mac_of(v)
        }
    };
    assert!(s.add_policy("a", "ha", 1, &record).await.unwrap().changed);
    assert!(s.add_policy("b", "hb", 2, &record).await.unwrap().changed);
    // Already in force: nothing stored, no MAC asked for.
    let again = s.add_policy("b", "hb", 3, &record).await.unwrap();
    assert_eq!(
        again,
        PolicyAdded {
            version: 2,
            changed: false
        }
    );
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
    assert_eq!(s.policy(Some(1)).await.unwrap().unwrap().mac, mac_of(1));
    assert_eq!(s.policy(None).await.unwrap().unwrap().mac, mac_of(2));

    // Concurrent loads: each MAC is computed for the number its row got.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.add_policy(&format!("c{i}"), "x", i, &mac_of).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for v in 1..=8 {
        let p = s.policy(Some(v)).await.unwrap().unwrap();
        assert_eq!(p.mac, mac_of(v), "version {v}");
    }
}

async fn policy_macs_adopted_once(s: Arc<dyn Store>) {
    assert!(s.policies_without_mac().await.unwrap().is_empty());
    s.add_policy("old one", "h1", 1, &no_mac).await.unwrap();
    s.add_policy("new", "h2", 2, &mac_of).await.unwrap();
    s.add_policy("old two", "h3", 3, &no_mac).await.unwrap();
    let bare = s.policies_without_mac().await.unwrap();
    assert_eq!(
        bare.iter()
            .map(|p| (p.version, p.text.as_str()))
            .collect::<Vec<_>>(),
        [(1, "old one"), (3, "old two")]
    );
    assert!(bare.iter().all(|p| p.mac.is_empty()));

    assert!(s.set_policy_mac(1, &mac_of(1)).await.unwrap());
    // Once only: a MAC already there is never replaced.
    assert!(!s.set_policy_mac(1, &[0xee; 32]).await.unwrap());
    assert!(!s.set_policy_mac(2, &[0xee; 32]).await.unwrap());
    // No such version; an empty MAC changes nothing.
    assert!(!s.set_policy_mac(99, &mac_of(99)).await.unwrap());
    assert!(!s.set_policy_mac(3, &[]).await.unwrap());
    assert_eq!(s.policy(Some(1)).await.unwrap().unwrap().mac, mac_of(1));
    assert_eq!(s.policy(Some(2)).await.unwrap().unwrap().mac, mac_of(2));
    assert_eq!(
        s.policies_without_mac()
            .await
            .unwrap()
            .iter()
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        [3]
    );
    assert!(s.set_policy_mac(3, &mac_of(3)).await.unwrap());
    assert!(s.policies_without_mac().await.unwrap().is_empty());
    // The rest of the row is untouched.
    let p3 = s.policy(Some(3)).await.unwrap().unwrap();
    assert_eq!(
        (p3.text.as_str(), p3.sha256.as_str(), p3.loaded_at_ms),
        ("old two", "h3", 3)
    );
}

async fn profile_macs_stored_and_adopted_once(s: Arc<dyn Store>) {
    let with_mac = profile("p-mac", "has one");
    let mut legacy = profile("p-old", "legacy");
    legacy.mac = Vec::new();
    let mut legacy2 = profile("p-old2", "legacy too");
    legacy2.mac = Vec::new();
    let mut tx = s.begin_decisions(None).await.unwrap();
    for p in [&legacy2, &with_mac, &legacy] {
        assert!(tx.insert_profile(p).await.unwrap());
    }
    tx.commit().await.unwrap();
    assert_eq!(s.profile("p-mac").await.unwrap(), Some(with_mac.clone()));
    assert_eq!(s.profile("p-old").await.unwrap(), Some(legacy.clone()));

    let bare = s.profiles_without_mac(10).await.unwrap();
    assert_eq!(bare, [legacy.clone(), legacy2.clone()]);
    assert_eq!(s.profiles_without_mac(1).await.unwrap(), [legacy.clone()]);

    assert!(
        s.set_profile_mac("p-old", &profile_mac("p-old"))
            .await
            .unwrap()
    );
    assert!(!s.set_profile_mac("p-old", &[0xee; 32]).await.unwrap());
    assert!(!s.set_profile_mac("p-mac", &[0xee; 32]).await.unwrap());
    assert!(!s.set_profile_mac("nobody", &[0xee; 32]).await.unwrap());
    assert!(!s.set_profile_mac("p-old2", &[]).await.unwrap());
    let mut adopted = legacy.clone();
    adopted.mac = profile_mac("p-old");
    assert_eq!(s.profile("p-old").await.unwrap(), Some(adopted));
    assert_eq!(s.profile("p-mac").await.unwrap(), Some(with_mac));
    assert_eq!(s.profiles_without_mac(10).await.unwrap(), [legacy2]);
    assert!(
        s.set_profile_mac("p-old2", &profile_mac("p-old2"))
            .await
            .unwrap()
    );
    assert!(s.profiles_without_mac(10).await.unwrap().is_empty());
}

async fn list_profiles_pages_in_byte_order(s: Arc<dyn Store>) {
    assert!(s.list_profiles(None, 10).await.unwrap().is_empty());
    // Inserted out of order; upper case sorts before lower case byte for byte.
    let mut ids: Vec<String> = (0..23).map(|i| format!("p{:02}", (i * 7) % 23)).collect();
    ids.extend(["B".to_string(), "a".to_string(), "Z9".to_string()]);
    let mut tx = s.begin_decisions(None).await.unwrap();
    for id in &ids {
        assert!(tx.insert_profile(&profile(id, "n")).await.unwrap());
    }
    tx.commit().await.unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(&expected[..3], ["B", "Z9", "a"]);

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_profiles(after.as_deref(), 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = Some(last.profile_id.clone());
        seen.extend(page.iter().map(|p| p.profile_id.clone()));
        // Whole rows, MAC included.
        assert!(page.iter().all(|p| *p == profile(&p.profile_id, "n")));
    }
    assert_eq!(seen, expected);
    // Strictly after: an id itself, or one between two ids.
    let page = s.list_profiles(Some("p05"), 3).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|p| p.profile_id.as_str())
            .collect::<Vec<_>>(),
        ["p06", "p07", "p08"]
    );
    let page = s.list_profiles(Some("p055"), 2).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|p| p.profile_id.as_str())
            .collect::<Vec<_>>(),
        ["p06", "p07"]
    );
    assert!(s.list_profiles(Some("zzz"), 10).await.unwrap().is_empty());
    assert!(s.list_profiles(None, 0).await.unwrap().is_empty());
}

// ------------------------------------------------------------- revocations

fn revocation(profile_id: &str, device_id: Option<&str>, at_ms: i64) -> Revocation {
    Revocation {
        profile_id: profile_id.into(),
        device_id: device_id.map(str::to_string),
        revoked_at_ms: at_ms,
        reason: format!("lost laptop ({at_ms})"),
    }
}

async fn revocations_are_idempotent_and_bump_the_epoch(s: Arc<dyn Store>) {
    assert!(s.revocations(None).await.unwrap().is_empty());
    let epoch = || async { s.state().await.unwrap().revocation_epoch };
    assert_eq!(epoch().await, 0);

    let device = revocation("p1", Some("d1"), 10);
    assert!(s.revoke(&device).await.unwrap());
    assert_eq!(epoch().await, 1);
    // Again, even with another time and reason: nothing changes.
    assert!(!s.revoke(&revocation("p1", Some("d1"), 11)).await.unwrap());
    assert_eq!(epoch().await, 1);
    assert_eq!(
        s.revocations(Some("p1")).await.unwrap(),
        std::slice::from_ref(&device)
    );

    // The whole profile is a revocation of its own, as is another device.
    let whole = revocation("p1", None, 20);
    assert!(s.revoke(&whole).await.unwrap());
    assert!(!s.revoke(&revocation("p1", None, 21)).await.unwrap());
    let other_device = revocation("p1", Some("d0"), 30);
    assert!(s.revoke(&other_device).await.unwrap());
    let other_profile = revocation("p0", Some("d1"), 40);
    assert!(s.revoke(&other_profile).await.unwrap());
    assert_eq!(epoch().await, 4);
    // Other switches are left alone.
    let state = s.state().await.unwrap();
    assert_eq!((state.enabled, state.quota_epoch), (true, 0));

    assert_eq!(
        s.revocations(Some("p1")).await.unwrap(),
        [whole.clone(), other_device.clone(), device.clone()]
    );
    assert_eq!(
        s.revocations(None).await.unwrap(),
        [other_profile, whole, other_device, device]
    );
    assert!(s.revocations(Some("P1")).await.unwrap().is_empty());
}

async fn revocations_concurrent(s: Arc<dyn Store>) {
    // The same revocation 8 times at once: stored once, the epoch bumped once.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.revoke(&revocation("p", Some("d"), i)).await })
        })
        .collect();
    let mut revoked = 0;
    for t in tasks {
        revoked += usize::from(t.await.unwrap().unwrap());
    }
    assert_eq!(revoked, 1);
    assert_eq!(s.state().await.unwrap().revocation_epoch, 1);
    assert_eq!(s.revocations(None).await.unwrap().len(), 1);

    // 8 different ones at once: every one counts.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let device = format!("d{i}");
                s.revoke(&revocation("q", Some(&device), i)).await
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_eq!(s.state().await.unwrap().revocation_epoch, 9);
    assert_eq!(s.revocations(Some("q")).await.unwrap().len(), 8);
}

// ------------------------------------------------------------- enrollments

/// A token hash for tests: 32 bytes naming `n`.
fn token_hash(n: u8) -> Vec<u8> {
    let mut h = vec![0x11; 32];
    h[0] = n;
    h
}

fn enrollment(n: u8, uses: u32, expires_at_ms: i64, created_at_ms: i64) -> Enrollment {
    Enrollment {
        id: format!("{n:02x}").repeat(16),
        token_sha256: token_hash(n),
        uses_total: uses,
        uses_left: uses,
        expires_at_ms,
        created_at_ms,
        note: format!("batch job {n} ✓"),
    }
}

/// Far in the future: the tokens below expire only where a test says so.
const LATER: i64 = 4_000_000_000_000;
const NOW: i64 = 1_800_000_000_000;

async fn use_once(s: &Arc<dyn Store>, n: u8, now_ms: i64) -> EnrollmentUse {
    let mut tx = s.begin_decisions(None).await.unwrap();
    let used = tx.use_enrollment(&token_hash(n), now_ms).await.unwrap();
    tx.commit().await.unwrap();
    used
}

async fn enrollments_created_once_and_listed_newest_first(s: Arc<dyn Store>) {
    assert!(s.enrollments().await.unwrap().is_empty());
    let first = enrollment(1, 3, LATER, 100);
    let second = enrollment(2, 1, LATER, 300);
    let third = enrollment(3, 5, LATER, 200);
    for e in [&first, &second, &third] {
        s.create_enrollment(e).await.unwrap();
    }
    // The same id, or the same token hash under another id: refused.
    let mut same_id = enrollment(4, 1, LATER, 400);
    same_id.id = first.id.clone();
    let mut same_hash = enrollment(5, 1, LATER, 500);
    same_hash.token_sha256 = token_hash(2);
    for dup in [&first, &same_id, &same_hash] {
        let e = s.create_enrollment(dup).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
    }
    assert_eq!(
        s.enrollments().await.unwrap(),
        [second.clone(), third.clone(), first.clone()]
    );
    // Same creation time: by id, highest first.
    let tie = enrollment(9, 1, LATER, 300);
    s.create_enrollment(&tie).await.unwrap();
    assert_eq!(s.enrollments().await.unwrap(), [tie, second, third, first]);
}

async fn use_enrollment_counts_down_and_refuses(s: Arc<dyn Store>) {
    s.create_enrollment(&enrollment(1, 2, LATER, 1))
        .await
        .unwrap();
    s.create_enrollment(&enrollment(2, 5, NOW, 1))
        .await
        .unwrap();
    s.create_enrollment(&enrollment(3, 0, LATER, 1))
        .await
        .unwrap();

    assert_eq!(use_once(&s, 9, NOW).await, EnrollmentUse::Unknown);
    assert_eq!(
        use_once(&s, 1, NOW).await,
        EnrollmentUse::Used { uses_left: 1 }
    );
    assert_eq!(
        use_once(&s, 1, NOW).await,
        EnrollmentUse::Used { uses_left: 0 }
    );
    assert_eq!(use_once(&s, 1, NOW).await, EnrollmentUse::UsedUp);
    assert_eq!(use_once(&s, 3, NOW).await, EnrollmentUse::UsedUp);
    // Expired at expires_at_ms itself; a millisecond before, still good.
    assert_eq!(use_once(&s, 2, NOW).await, EnrollmentUse::Expired);
    assert_eq!(use_once(&s, 2, NOW + 1).await, EnrollmentUse::Expired);
    assert_eq!(
        use_once(&s, 2, NOW - 1).await,
        EnrollmentUse::Used { uses_left: 4 }
    );
    // Expired wins over used up.
    assert_eq!(use_once(&s, 1, LATER).await, EnrollmentUse::Expired);

    let left: Vec<(u32, u32)> = s
        .enrollments()
        .await
        .unwrap()
        .iter()
        .map(|e| (e.uses_total, e.uses_left))
        .collect();
    // Newest first: all created at 1, so by id descending (3, 2, 1).
    assert_eq!(left, [(0, 0), (5, 4), (2, 0)]);
}

async fn use_enrollment_rolled_back_with_its_transaction(s: Arc<dyn Store>) {
    s.create_enrollment(&enrollment(1, 1, LATER, 1))
        .await
        .unwrap();
    let mut tx = s.begin_decisions(None).await.unwrap();
    assert_eq!(
        tx.use_enrollment(&token_hash(1), NOW).await.unwrap(),
        EnrollmentUse::Used { uses_left: 0 }
    );
    // Within the transaction the use is taken.
    assert_eq!(
        tx.use_enrollment(&token_hash(1), NOW).await.unwrap(),
        EnrollmentUse::UsedUp
    );
    drop(tx);
    assert_eq!(s.enrollments().await.unwrap()[0].uses_left, 1);
    assert_eq!(
        use_once(&s, 1, NOW).await,
        EnrollmentUse::Used { uses_left: 0 }
    );
    assert_eq!(s.enrollments().await.unwrap()[0].uses_left, 0);
}

/// A second transaction using the token while the first holds its use is spawned and
/// must not finish before the first one ends.
async fn second_use_while_first_open(s: &Arc<dyn Store>, commit_first: bool) -> EnrollmentUse {
    s.create_enrollment(&enrollment(1, 1, LATER, 1))
        .await
        .unwrap();
    let mut first = s.begin_decisions(None).await.unwrap();
    assert_eq!(
        first.use_enrollment(&token_hash(1), NOW).await.unwrap(),
        EnrollmentUse::Used { uses_left: 0 }
    );
    let second = {
        let s = s.clone();
        tokio::spawn(async move {
            // SQLite: waits at BEGIN IMMEDIATE; MySQL: at SELECT ... FOR UPDATE.
            let mut tx = s.begin_decisions(None).await?;
            let used = tx.use_enrollment(&token_hash(1), NOW).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(used)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !second.is_finished(),
        "the second transaction did not wait for the first"
    );
    if commit_first {
        first.commit().await.unwrap();
    } else {
        drop(first);
    }
    second.await.unwrap().unwrap()
}

async fn use_enrollment_second_transaction_waits_for_the_first(s: Arc<dyn Store>) {
    assert_eq!(
        second_use_while_first_open(&s, true).await,
        EnrollmentUse::UsedUp
    );
    assert_eq!(s.enrollments().await.unwrap()[0].uses_left, 0);
}

async fn use_enrollment_second_transaction_takes_a_use_given_back(s: Arc<dyn Store>) {
    assert_eq!(
        second_use_while_first_open(&s, false).await,
        EnrollmentUse::Used { uses_left: 0 }
    );
    assert_eq!(s.enrollments().await.unwrap()[0].uses_left, 0);
}

/// One transaction's attempt at a use; retried on deadlock / busy.
async fn try_use(s: &Arc<dyn Store>, n: u8, hold_ms: u64) -> EnrollmentUse {
    loop {
        let attempt = async {
            let mut tx = s.begin_decisions(None).await?;
            let used = tx.use_enrollment(&token_hash(n), NOW).await?;
            // Keep the transaction open a while, so that others pile up behind it.
            tokio::time::sleep(std::time::Duration::from_millis(hold_ms)).await;
            tx.commit().await?;
            Ok::<_, StoreError>(used)
        };
        match attempt.await {
            Ok(used) => return used,
            Err(e) if retryable(&e) => continue,
            Err(e) => panic!("use_enrollment: {e}"),
        }
    }
}

async fn use_enrollment_one_use_two_at_once(s: Arc<dyn Store>) {
    for round in 0..5u8 {
        s.create_enrollment(&enrollment(round, 1, LATER, 1))
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    try_use(&s, round, 50).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            results,
            [EnrollmentUse::Used { uses_left: 0 }, EnrollmentUse::UsedUp],
            "round {round}"
        );
    }
}

async fn use_enrollment_many_concurrent(s: Arc<dyn Store>) {
    const USES: u32 = 5;
    const TASKS: usize = 12;
    s.create_enrollment(&enrollment(7, USES, LATER, 1))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { try_use(&s, 7, 5).await })
        })
        .collect();
    let mut left = Vec::new();
    let mut used_up = 0;
    for t in tasks {
        match t.await.unwrap() {
            EnrollmentUse::Used { uses_left } => left.push(uses_left),
            EnrollmentUse::UsedUp => used_up += 1,
            other => panic!("{other:?}"),
        }
    }
    left.sort_unstable();
    // Each use saw the one before it: every count from 4 down to 0, once.
    assert_eq!(left, (0..USES).collect::<Vec<_>>());
    assert_eq!(used_up, TASKS - USES as usize);
    assert_eq!(s.enrollments().await.unwrap()[0].uses_left, 0);
}

// ------------------------------------------------------------- registry, leases

fn instance(name: &str, incarnation: &str) -> InstanceInfo {
    InstanceInfo {
        name: name.into(),
        incarnation: incarnation.into(),
        hostname: "host".into(),
        endpoint: format!("https://{name}:7443"),
        kss_version: "test".into(),
        started_at_ms: 1,
    }
}

async fn instances_register_heartbeat_and_stop(s: Arc<dyn Store>) {
    s.register_instance(&instance("a", "a1"), 0).await.unwrap();
    s.register_instance(&instance("b", "b1"), 3).await.unwrap();
    let list = s.instances().await.unwrap();
    assert_eq!(
        list.instances
            .iter()
            .map(|i| (i.info.name.as_str(), i.applied_policy_version))
            .collect::<Vec<_>>(),
        [("a", 0), ("b", 3)]
    );
    assert!(list.instances.iter().all(|i| i.online(list.now_ms)));
    let b_applied_at = list.instances[1].applied_at_ms;

    // A heartbeat records the version applied, and when it changed.
    assert!(s.heartbeat("a", "a1", 2).await.unwrap());
    assert!(s.heartbeat("b", "b1", 3).await.unwrap());
    let list = s.instances().await.unwrap();
    assert_eq!(list.instances[0].applied_policy_version, 2);
    assert_eq!(list.instances[1].applied_at_ms, b_applied_at);

    // A restart under the same name takes the row over: the old process's heartbeats fail.
    s.register_instance(&instance("a", "a2"), 2).await.unwrap();
    assert!(!s.heartbeat("a", "a1", 2).await.unwrap());
    assert!(s.heartbeat("a", "a2", 2).await.unwrap());

    // A clean stop shows offline at once; a stale heartbeat after OFFLINE_AFTER_MS.
    s.mark_stopped("b", "b1").await.unwrap();
    let list = s.instances().await.unwrap();
    assert!(list.instances[0].online(list.now_ms));
    assert!(!list.instances[1].online(list.now_ms));
    assert!(!list.instances[0].online(list.now_ms + OFFLINE_AFTER_MS + 1_000));

    // Forgetting offline instances needs the lease it is fenced by.
    let LeaseClaim::Granted { lease, .. } =
        s.claim_lease("maintenance", "a2", 10_000).await.unwrap()
    else {
        panic!("free lease refused")
    };
    // Stopped just now: not yet offline for a minute, but offline for 0 ms, even
    // within the same millisecond as the stop.
    assert_eq!(s.forget_instances(&lease, 60_000).await.unwrap(), 0);
    assert_eq!(s.forget_instances(&lease, 0).await.unwrap(), 1);
    let names: Vec<String> = s
        .instances()
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.info.name)
        .collect();
    assert_eq!(names, ["a"]);
}

// A stop and a forget within the same millisecond of the store's clock: the instance
// has been offline for 0 ms, so it goes. (CI once saw 0 deleted here.)
async fn a_stopped_instance_is_forgotten_at_once(s: Arc<dyn Store>) {
    let lease = granted(&s, "a", 10_000).await;
    for round in 0..50 {
        let incarnation = format!("x{round}");
        s.register_instance(&instance("x", &incarnation), 0)
            .await
            .unwrap();
        s.mark_stopped("x", &incarnation).await.unwrap();
        assert_eq!(
            s.forget_instances(&lease, 0).await.unwrap(),
            1,
            "round {round}"
        );
    }
}

async fn granted(s: &Arc<dyn Store>, holder: &str, ttl_ms: i64) -> Lease {
    match s.claim_lease("standalone", holder, ttl_ms).await.unwrap() {
        LeaseClaim::Granted { lease, .. } => lease,
        other => panic!("{holder}: {other:?}"),
    }
}

async fn leases_grant_refuse_and_take_over(s: Arc<dyn Store>) {
    // Long leases while the test needs them held, so a slow commit cannot expire one.
    let a = granted(&s, "a", 60_000).await;
    assert_eq!(a.token, 1);
    // Held: refused, with the holder named.
    match s.claim_lease("standalone", "b", 400).await.unwrap() {
        LeaseClaim::HeldBy {
            holder,
            expires_in_ms,
        } => {
            assert_eq!(holder, "a");
            assert!(
                expires_in_ms > 0 && expires_in_ms <= 60_000,
                "{expires_in_ms}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Renewed while held; claimed again by its holder without a new token, this time
    // for 400 ms.
    assert!(s.renew_lease(&a, 60_000).await.unwrap());
    assert_eq!(granted(&s, "a", 400).await.token, 1);

    // Expired: another takes it with the next token, and the old holder cannot renew.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let b = granted(&s, "b", 10_000).await;
    assert_eq!(b.token, 2);
    assert!(!s.renew_lease(&a, 400).await.unwrap());
    // Released: free at once, next token.
    s.release_lease(&b).await.unwrap();
    assert_eq!(granted(&s, "c", 10_000).await.token, 3);
    // Releasing a lease no longer held changes nothing.
    s.release_lease(&a).await.unwrap();
    assert!(matches!(
        s.claim_lease("standalone", "d", 10_000).await.unwrap(),
        LeaseClaim::HeldBy { .. }
    ));
}

async fn fenced_writes_fail_after_a_takeover(s: Arc<dyn Store>) {
    let a = granted(&s, "a", 300).await;
    let mut tx = s.begin_decisions(Some(&a)).await.unwrap();
    tx.append_audit(&[record(Some("p"), Decision::Approved, "unlock", 1, None)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // "a" is cut off long enough for its lease to expire; "b" takes over.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let b = granted(&s, "b", 10_000).await;
    match s.begin_decisions(Some(&a)).await {
        Err(StoreError::Fenced(msg)) => assert!(msg.contains("token 2"), "{msg}"),
        Err(e) => panic!("expected Fenced, got {e}"),
        Ok(_) => panic!("a stale lease opened a decision transaction"),
    }
    assert!(matches!(
        s.forget_instances(&a, 0).await,
        Err(StoreError::Fenced(_))
    ));
    // The new holder writes; the old one wrote nothing more.
    let mut tx = s.begin_decisions(Some(&b)).await.unwrap();
    tx.append_audit(&[record(Some("p"), Decision::Approved, "unlock", 1, None)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.audit_counts().await.unwrap(), (2, 0));
}

async fn fenced_decisions_fail_on_an_expired_or_missing_lease(s: Arc<dyn Store>) {
    let fenced = |r: Result<Box<dyn DecisionTx>, StoreError>| match r {
        Err(StoreError::Fenced(msg)) => msg,
        Err(e) => panic!("expected Fenced, got {e}"),
        Ok(_) => panic!("a lease not held opened a decision transaction"),
    };
    // Expired, and nobody took it over: its row is still there, but it no longer fences.
    let a = granted(&s, "a", 300).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let msg = fenced(s.begin_decisions(Some(&a)).await);
    assert!(msg.contains("expired"), "{msg}");
    // A lease without a row (never granted under that name).
    let ghost = Lease {
        name: "no-such-lease".into(),
        ..a.clone()
    };
    let msg = fenced(s.begin_decisions(Some(&ghost)).await);
    assert!(msg.contains("no longer exists"), "{msg}");
    // Unfenced transactions are not affected, and nothing was written by the refused ones.
    let mut tx = s.begin_decisions(None).await.unwrap();
    tx.append_audit(&[record(Some("p"), Decision::Approved, "unlock", 1, None)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.audit_counts().await.unwrap(), (1, 0));
}

// ------------------------------------------------------------------ clone-db

/// A standalone SQLite keyserver's data copied into an empty MySQL database: every row
/// (audit ids too), and the target refuses a second clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_sqlite_into_mysql_copies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteStore::open(&dir.path().join("kss.db")).await.unwrap();
    source.set_audit_key(audit_key());
    let src: Arc<dyn Store> = Arc::new(source.clone());
    src.create_identity(&Identity {
        keyserver_id: "ab".repeat(16),
        sealed_root: vec![7; 72],
        created_at_ms: 5,
    })
    .await
    .unwrap();
    // One version stored before MACs (empty), two with.
    src.add_policy("decrypt: []\n", "h1", 10, &no_mac)
        .await
        .unwrap();
    src.add_policy("search: []\n", "h2", 11, &mac_of)
        .await
        .unwrap();
    src.add_policy("rename: []\n", "h3", 12, &mac_of)
        .await
        .unwrap();
    src.set_enabled(false).await.unwrap();
    src.clear_counters(None).await.unwrap();
    for r in [
        revocation("p1", Some("d1"), 20),
        revocation("p1", None, 21),
        revocation("p3", Some("d3"), 22),
    ] {
        assert!(src.revoke(&r).await.unwrap());
    }
    src.create_enrollment(&enrollment(1, 3, LATER, 30))
        .await
        .unwrap();
    src.create_enrollment(&enrollment(2, 1, NOW, 31))
        .await
        .unwrap();
    let mut legacy = profile("p3", "three, before MACs");
    legacy.mac = Vec::new();
    let mut tx = src.begin_decisions(None).await.unwrap();
    tx.insert_profile(&profile("p1", "one")).await.unwrap();
    tx.insert_profile(&profile("p2", "two")).await.unwrap();
    tx.insert_profile(&legacy).await.unwrap();
    // A use taken: the clone keeps the uses left.
    assert_eq!(
        tx.use_enrollment(&token_hash(1), NOW).await.unwrap(),
        EnrollmentUse::Used { uses_left: 2 }
    );
    tx.save_counters(&[counter("p1", "r", 3), counter("p2", "r", 1)])
        .await
        .unwrap();
    // More than one page of audit records.
    let records: Vec<AuditRecord> = (0..1000)
        .map(|i| {
            record(
                Some("p1"),
                if i % 3 == 0 {
                    Decision::Denied
                } else {
                    Decision::Approved
                },
                "decrypt",
                1,
                Some(nonce(1, i)),
            )
        })
        .collect();
    tx.append_audit(&records).await.unwrap();
    tx.commit().await.unwrap();

    in_scratch_mysql("KSS_TEST_MYSQL_URL", |target| {
        async move {
            let counts = clone_sqlite_into_mysql(&source, &target).await.unwrap();
            assert_eq!(
                (
                    counts.profiles,
                    counts.policy_versions,
                    counts.quota_counters,
                    counts.revocations,
                    counts.enrollments,
                    counts.audit_records
                ),
                (3, 3, 2, 3, 2, 1000)
            );
            let dst: Arc<dyn Store> = Arc::new(target.clone());
            let src: Arc<dyn Store> = Arc::new(source.clone());
            assert_eq!(dst.identity().await.unwrap(), src.identity().await.unwrap());
            let state = dst.state().await.unwrap();
            assert_eq!(state, src.state().await.unwrap());
            assert_eq!((state.revocation_epoch, state.quota_epoch), (3, 1));
            for v in [Some(1), Some(2), Some(3), None] {
                assert_eq!(dst.policy(v).await.unwrap(), src.policy(v).await.unwrap());
            }
            assert_eq!(dst.policy(Some(3)).await.unwrap().unwrap().mac, mac_of(3));
            assert_eq!(
                dst.policies_without_mac().await.unwrap(),
                src.policies_without_mac().await.unwrap()
            );
            assert_eq!(dst.policies_without_mac().await.unwrap().len(), 1);
            assert_eq!(
                dst.list_profiles(None, 100).await.unwrap(),
                src.list_profiles(None, 100).await.unwrap()
            );
            assert_eq!(
                dst.profile("p1").await.unwrap().unwrap().mac,
                profile_mac("p1")
            );
            assert_eq!(
                dst.profiles_without_mac(10).await.unwrap(),
                [legacy.clone()]
            );
            assert_eq!(
                dst.revocations(None).await.unwrap(),
                src.revocations(None).await.unwrap()
            );
            assert_eq!(dst.revocations(None).await.unwrap().len(), 3);
            let enrollments = dst.enrollments().await.unwrap();
            assert_eq!(enrollments, src.enrollments().await.unwrap());
            assert_eq!(
                enrollments.iter().map(|e| e.uses_left).collect::<Vec<_>>(),
                [1, 2]
            );
            // The copied token works on the target, from the uses left.
            let mut tx = dst.begin_decisions(None).await.unwrap();
            assert_eq!(
                tx.use_enrollment(&token_hash(1), NOW).await.unwrap(),
                EnrollmentUse::Used { uses_left: 1 }
            );
            drop(tx);
            assert_eq!(
                dst.counters(None).await.unwrap(),
                src.counters(None).await.unwrap()
            );
            let everything = AuditFilter {
                limit: 5000,
                ..AuditFilter::default()
            };
            assert_eq!(
                dst.audit(&everything).await.unwrap(),
                src.audit(&everything).await.unwrap()
            );
            assert_eq!(dst.audit_counts().await.unwrap(), (666, 334));
            // The chain came along: the copy verifies as the source does.
            assert_eq!(dst.verify_audit().await.unwrap(), src.verify_audit().await.unwrap());
            assert!(matches!(dst.verify_audit().await.unwrap(), ChainVerdict::Intact(r) if r.rows == 1000));
            // New records continue after the copied ids.
            let mut tx = dst.begin_decisions(None).await.unwrap();
            let ids = tx
                .append_audit(&[record(Some("p2"), Decision::Approved, "decrypt", 1, None)])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(ids, [1001]);
            assert!(matches!(dst.verify_audit().await.unwrap(), ChainVerdict::Intact(r) if r.rows == 1001));
            // A second clone into the same database is refused, naming the keyserver.
            match clone_sqlite_into_mysql(&source, &target).await {
                Err(StoreError::AlreadyExists(msg)) => assert!(msg.contains(&"ab".repeat(16))),
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

// ------------------------------------------------------------------ audit chain

fn intact(v: ChainVerdict) -> kss_store::ChainReport {
    match v {
        ChainVerdict::Intact(r) => r,
        ChainVerdict::Tampered(t) => panic!("tampered: {t}"),
    }
}

async fn append_committed(s: &Arc<dyn Store>, records: &[AuditRecord]) -> Vec<u64> {
    let mut tx = s.begin_decisions(None).await.unwrap();
    let ids = tx.append_audit(records).await.unwrap();
    tx.commit().await.unwrap();
    ids
}

async fn audit_appends_twice_in_one_decision_transaction(s: Arc<dyn Store>) {
    append_committed(
        &s,
        &[record(Some("p1"), Decision::Approved, "decrypt", 1, None)],
    )
    .await;
    // The second append extends the first one's rows, not the head the transaction began
    // with (a backend that read the head once for the transaction would reuse its ids).
    let mut tx = s.begin_decisions(None).await.unwrap();
    let first = tx
        .append_audit(&[record(Some("p1"), Decision::Approved, "decrypt", 2, None)])
        .await
        .unwrap();
    let second = tx
        .append_audit(&[record(Some("p1"), Decision::Denied, "decrypt", 3, None)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((first, second), (vec![2], vec![3]));
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!((r.rows, r.first_id, r.last_id), (3, Some(1), Some(3)));
}

async fn audit_chain_verifies_with_checkpoints(s: Arc<dyn Store>) {
    // A fresh database: the chain has not started, nothing to cover.
    let r = intact(s.verify_audit().await.unwrap());
    assert!(!r.started);
    assert_eq!((r.rows, r.uncovered), (0, 0));

    let batch = |n: u64, from: i64| -> Vec<AuditRecord> {
        (0..n)
            .map(|i| {
                record(
                    Some("p1"),
                    Decision::Approved,
                    "decrypt",
                    from + i as i64,
                    None,
                )
            })
            .collect()
    };
    let first = append_committed(&s, &batch(10, 0)).await;
    assert_eq!(first, (1..=10).collect::<Vec<_>>());
    let r = intact(s.verify_audit().await.unwrap());
    assert!(r.started);
    assert_eq!(
        (r.rows, r.first_id, r.last_id, r.checkpoints),
        (10, Some(1), Some(10), 1)
    );
    assert_eq!(r.anchor.unwrap().kind, kss_store::CheckpointKind::Genesis);

    // Crossing the checkpoint cadence writes a periodic checkpoint.
    append_committed(&s, &batch(CHECKPOINT_EVERY, 100)).await;
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!((r.rows, r.checkpoints), (CHECKPOINT_EVERY + 10, 2));

    // A rolled-back transaction leaves neither rows nor a gap in the chain.
    let mut tx = s.begin_decisions(None).await.unwrap();
    tx.append_audit(&batch(3, 5000)).await.unwrap();
    drop(tx);
    let ids = append_committed(&s, &batch(1, 6000)).await;
    assert_eq!(ids, [CHECKPOINT_EVERY + 11]);
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!(r.rows, CHECKPOINT_EVERY + 11);
}

async fn audit_chain_needs_its_key(s: Arc<dyn Store>) {
    append_committed(&s, &[record(None, Decision::Denied, "x", 1, None)]).await;
    // Another key: the head does not verify, so nothing is chained to it and verification
    // says so.
    s.set_audit_key(Arc::new(TestAuditKey([8; 32])));
    let mut tx = s.begin_decisions(None).await.unwrap();
    match tx
        .append_audit(&[record(None, Decision::Denied, "x", 2, None)])
        .await
    {
        Err(StoreError::AuditChain(why)) => assert!(why.contains("does not verify"), "{why}"),
        other => panic!("{other:?}"),
    }
    drop(tx);
    assert!(matches!(
        s.verify_audit().await.unwrap(),
        ChainVerdict::Tampered(_)
    ));
    s.set_audit_key(audit_key());
    intact(s.verify_audit().await.unwrap());
    assert_eq!(s.audit(&all()).await.unwrap().len(), 1);
}

async fn audit_admin_records_share_the_chain(s: Arc<dyn Store>) {
    append_committed(
        &s,
        &[record(Some("p"), Decision::Approved, "decrypt", 1, None)],
    )
    .await;
    let ids = s
        .append_audit(&[record(None, Decision::Approved, "admin.disable", 2, None)])
        .await
        .unwrap();
    assert_eq!(ids, [2]);
    append_committed(
        &s,
        &[record(Some("p"), Decision::Denied, "decrypt", 3, None)],
    )
    .await;
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!(r.rows, 3);
    let listed = s.audit(&all()).await.unwrap();
    assert_eq!(listed[1].record.actor.as_deref(), Some("uid:0 cli"));
    assert_eq!(
        listed[0].record.ciphertext_sha256.as_deref(),
        Some(&[0xcd; 32][..])
    );
    assert!(
        listed
            .iter()
            .all(|e| e.chain_hash.as_ref().is_some_and(|h| h.len() == 32))
    );
    // No records: nothing changes.
    assert!(s.append_audit(&[]).await.unwrap().is_empty());
    assert_eq!(intact(s.verify_audit().await.unwrap()).rows, 3);
}

async fn audit_rows_chunked_by_bytes(s: Arc<dyn Store>) {
    // Twenty rows of ~1 MB of metadata in one transaction: more than a 16 MiB packet.
    let meta = format!(
        r#"[{{"meta": "{}", "complete": true}}]"#,
        "m".repeat(1_000_000)
    );
    let records: Vec<AuditRecord> = (0..20)
        .map(|i| AuditRecord {
            meta: meta.clone(),
            ..record(
                Some("p"),
                Decision::Approved,
                "decrypt",
                i,
                Some(nonce(9, i as u64)),
            )
        })
        .collect();
    let ids = append_committed(&s, &records).await;
    assert_eq!(ids.len(), 20);
    let listed = s.audit(&all()).await.unwrap();
    assert!(listed.iter().all(|e| e.record.meta == meta));
    assert_eq!(intact(s.verify_audit().await.unwrap()).rows, 20);
}

/// Instances prune on their own clocks: two prunes with different cuts at once. Whatever
/// the order they commit in, the log verifies after them (neither deletes rows the
/// other's checkpoint does not stand for).
async fn concurrent_prunes_keep_the_chain_verifiable(s: Arc<dyn Store>) {
    for round in 0..30u64 {
        let base = i64::try_from(round).unwrap() * 1_000;
        let records: Vec<AuditRecord> = (0..200)
            .map(|i| record(None, Decision::Denied, "x", base + i, None))
            .collect();
        append_committed(&s, &records).await;
        let (a, b) = (Arc::clone(&s), Arc::clone(&s));
        let (first, second) = tokio::join!(
            tokio::spawn(async move { a.prune_audit(base + 60).await }),
            tokio::spawn(async move { b.prune_audit(base + 160).await }),
        );
        first.unwrap().unwrap();
        second.unwrap().unwrap();
        let verdict = s.verify_audit().await.unwrap();
        assert!(
            matches!(verdict, ChainVerdict::Intact(_)),
            "round {round}: after two prunes at once: {verdict:?}"
        );
    }
}

async fn audit_prune_keeps_the_chain_verifiable(s: Arc<dyn Store>) {
    // Rows stamped 0..100, then one stamped 50 again (another instance's clock), then more.
    let mut records: Vec<AuditRecord> = (0..100)
        .map(|i| {
            record(
                Some("p"),
                Decision::Approved,
                "unlock",
                i,
                Some(nonce(3, i as u64)),
            )
        })
        .collect();
    records.push(record(None, Decision::Denied, "x", 50, None));
    records.extend((0..10).map(|i| record(None, Decision::Denied, "x", 200 + i, None)));
    append_committed(&s, &records).await;
    assert_eq!(s.prune_audit(0).await.unwrap(), PruneOutcome::Nothing);

    // Every row stamped before 60 that no later-stamped row precedes: rows 1..=60.
    match s.prune_audit(60).await.unwrap() {
        PruneOutcome::Pruned {
            through,
            rows,
            checkpoint,
        } => {
            assert_eq!((through, rows), (60, 60));
            assert_eq!(checkpoint, Some(2));
        }
        other => panic!("{other:?}"),
    }
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!(
        (r.rows, r.first_id, r.last_id, r.checkpoints),
        (51, Some(61), Some(111), 1)
    );
    assert_eq!(
        r.anchor.as_ref().unwrap().kind,
        kss_store::CheckpointKind::Prune
    );
    assert_eq!(r.anchor.unwrap().last_id, 60);

    // Nonces of the rows kept still refuse a replay.
    let mut tx = s.begin_decisions(None).await.unwrap();
    let seen = tx
        .seen_nonces(&[&nonce(3, 1), &nonce(3, 70)])
        .await
        .unwrap();
    assert_eq!(seen, [nonce(3, 70)]);
    drop(tx);

    // The chain goes on after the prune; a second prune starts from the first's checkpoint.
    append_committed(&s, &[record(None, Decision::Denied, "x", 300, None)]).await;
    match s.prune_audit(250).await.unwrap() {
        PruneOutcome::Pruned { through, rows, .. } => assert_eq!((through, rows), (111, 51)),
        other => panic!("{other:?}"),
    }
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!((r.rows, r.first_id, r.last_id), (1, Some(112), Some(112)));
    // Everything old: the last row goes too, and the checkpoint alone stands for the chain.
    assert!(matches!(
        s.prune_audit(i64::MAX).await.unwrap(),
        PruneOutcome::Pruned { through: 112, .. }
    ));
    let r = intact(s.verify_audit().await.unwrap());
    assert_eq!((r.rows, r.first_id), (0, None));
    let ids = append_committed(&s, &[record(None, Decision::Denied, "x", 400, None)]).await;
    assert_eq!(ids, [113]);
    assert_eq!(intact(s.verify_audit().await.unwrap()).rows, 1);
}

/// Says that a test skipped a part, and why, and appends the line to `$KSS_SKIP_LOG`
/// (scripts/test.sh counts them in its last lines).
fn skipped(what: &str) {
    eprintln!("SKIPPED {what}");
    if let Some(log) = std::env::var_os("KSS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = f.write_all(format!("{what}\n").as_bytes());
        }
    }
}
