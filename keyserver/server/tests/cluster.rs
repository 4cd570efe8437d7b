//! Cluster mode: keyserver processes sharing one MariaDB database. Creating a cluster
//! (`kss create --db-uri`, both address forms), joining instances (`kss initialize` with
//! the cluster's master key), the instance registry and policy rollout, exact quotas
//! across instances under 100,000 requests, `kss clone-db` from a standalone keyserver,
//! and recovery from the backup key into a new, empty cluster database.
//!
//! Needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh); skipped without it, except where
//! `KSS_REQUIRE_MYSQL` is set (CI).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{DataDir, Server};
use kss_client::protocol::{RequestSpec, encrypt_file_key};
use kss_client::{KssClient, Profile};
use kss_crypto::ids::KeyserverId;
use kss_proto::v1::ListInstancesRequest;
use serde_json::Value;
use sqlx::Connection;

const POLICY: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n    - rule: per-profile-throttle-rule\n      per_day: 5\n      persistent: true\n";

/// The product's `mysql:host=H,port=P,user=U,password=W,database=D` form of a URL.
fn key_value_form(url: &str) -> String {
    let o = kss_store::parse_db_uri(url).unwrap();
    let password = password_of(url).replace('\\', "\\\\").replace(',', "\\,");
    format!(
        "mysql:host={},port={},user={},password={password},database={},ssl-mode=DISABLED",
        o.get_host(),
        o.get_port(),
        o.get_username(),
        o.get_database().unwrap()
    )
}

/// The password of a `mysql://user:password@host/...` URL, percent-decoded.
fn password_of(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").unwrap();
    let (userinfo, _) = rest.rsplit_once('@').unwrap();
    percent_decode(userinfo.split_once(':').map(|(_, p)| p).unwrap_or(""))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn create_args(db: &str) -> Vec<&str> {
    vec![
        "--db-uri",
        db,
        "create",
        "--ignore-security-checks",
        "--threshold",
        "1",
    ]
}

/// `kss instance list --json`, parsed.
fn instance_list(data: &DataDir) -> Value {
    serde_json::from_str(&data.kss_ok(&["instance", "list", "--json"])).unwrap()
}

fn instance<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {list}"))
}

async fn onboard(client: &KssClient, id: &str) -> Profile {
    client
        .onboard(&id.parse::<KeyserverId>().unwrap(), "batch@host", None)
        .await
        .unwrap()
}

async fn approved_decrypts(db: &str) -> i64 {
    let mut conn = sqlx::mysql::MySqlConnection::connect(db).await.unwrap();
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit WHERE decision = 'approved' AND request_type = 'decrypt'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_join_register_and_apply_every_policy_version() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let (a, b, c) = (DataDir::new(), DataDir::new(), DataDir::new());

    // Created with the product's key=value address; the address is saved for later.
    let kv = key_value_form(&db);
    let id = a.kss_ok(&create_args(&kv)).trim().to_string();
    assert!(a.path().join("db-uri").exists());
    // The database has its keyserver: a second create refuses, naming it.
    let again = b.kss(&create_args(&db));
    assert!(!again.status.success());
    assert!(common::text(&again.stderr).contains(&id));

    // Joining needs the cluster's master key...
    let no_key = b.kss(&["--db-uri", &db, "initialize"]);
    assert!(!no_key.status.success());
    assert!(common::text(&no_key.stderr).contains("master key"));
    // ...and refuses one that does not open this keyserver's secret.
    let stranger = DataDir::new();
    stranger.kss_ok(&["create", "--ignore-security-checks", "--threshold", "1"]);
    common::share_master_key(&stranger, &b);
    let wrong = b.kss(&["--db-uri", &db, "initialize"]);
    assert!(!wrong.status.success());
    assert!(
        common::text(&wrong.stderr).contains(&format!("cannot open keyserver {id}")),
        "{}",
        common::text(&wrong.stderr)
    );
    std::fs::remove_file(b.path().join("master.key")).unwrap();
    for joiner in [&b, &c] {
        common::share_master_key(&a, joiner);
        let joined = joiner.kss_ok(&["--db-uri", &db, "initialize"]);
        assert_eq!(joined.trim(), id);
    }
    // A database without a keyserver cannot be joined.
    let Some((empty_db, empty_name)) = common::fresh_database().await else {
        return;
    };
    let empty = DataDir::new();
    common::share_master_key(&a, &empty);
    let none = empty.kss(&["--db-uri", &empty_db, "initialize"]);
    assert!(common::text(&none.stderr).contains("holds no keyserver"));
    common::drop_database(&empty_name).await;

    // Instances start from their saved address (no --db-uri).
    let server_a = Server::start_with(&a, &["--instance-name", "a"]);
    common::share_tls(&a, &b);
    common::share_tls(&a, &c);
    let server_b = Server::start_with(&b, &["--instance-name", "b"]);
    let server_c = Server::start_with(&c, &["--instance-name", "c"]);
    let list = instance_list(&b);
    assert_eq!(list["online"], 3, "{list}");
    assert_eq!(list["policy_version"], 0);

    // A policy loaded through any instance's data dir reaches every instance.
    let policy = b.file("policy.yml", POLICY);
    let loaded = b.kss_ok(&["policy", "load", policy.to_str().unwrap(), "--wait", "10"]);
    assert!(
        loaded.contains("policy version 1 applied by 3/3 online instances"),
        "{loaded}"
    );
    let list = instance_list(&c);
    for n in ["a", "b", "c"] {
        assert_eq!(instance(&list, n)["applied_policy_version"], 1, "{list}");
        assert_eq!(instance(&list, n)["online"], true);
    }
    let status: Value = serde_json::from_str(&a.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["keyserver_id"], id.as_str());
    assert_eq!(status["instances"].as_array().unwrap().len(), 3);
    // The admin API (what the operator reads) gives the same per-instance versions.
    let data_dir = kss_server::data_dir::DataDir {
        root: a.path(),
        master_key: a.path().join("master.key"),
        db_uri: None,
        db_ca_file: None,
        given_db_uri_file: None,
    };
    let mut admin = kss_server::commands::admin_client::connect(&data_dir)
        .await
        .unwrap();
    let report = admin
        .list_instances(ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.policy_version, 1);
    assert_eq!((report.online, report.up_to_date), (3, 3));
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.applied_policy_version == 1)
    );

    // One identity, one policy, one quota across instances.
    let clients = [
        server_a.client(&a).await,
        server_b.client(&a).await,
        server_c.client(&a).await,
    ];
    assert_eq!(clients[1].info().await.unwrap().keyserver_id, id);
    let profile = onboard(&clients[0], &id).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    let via_b = clients[1]
        .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
        .await
        .unwrap();
    assert_eq!(via_b.file_key().unwrap(), &[4u8; 32][..]);
    let approved =
        common::concurrent_decrypts(&clients, &profile, &ciphertext, "batch/x", 30).await;
    assert_eq!(approved, 4);
    assert_eq!(approved_decrypts(&db).await, 5);
    let all = a.kss_ok(&["audit", "--json", "--type", "decrypt"]);
    let deciders: std::collections::HashSet<String> = all
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["instance"].to_string())
        .collect();
    assert_eq!(deciders.len(), 3, "every instance decided: {all}");

    // A stopped instance shows offline at once, a killed one once its heartbeat is stale.
    assert!(server_c.terminate());
    let list = instance_list(&a);
    assert_eq!(instance(&list, "c")["online"], false, "{list}");
    server_b.kill9();
    let killed_at_ms = common::unix_ms();
    let started = std::time::Instant::now();
    // Polled with slack for a loaded machine; the 10 s bound is checked on the registry's
    // own answer (last heartbeat + OFFLINE_AFTER_MS).
    common::wait_until("b offline", Duration::from_secs(30), || {
        instance(&instance_list(&a), "b")["online"] == false
    });
    let list = instance_list(&a);
    let shown_after = common::shown_offline_after(instance(&list, "b"), killed_at_ms);
    println!(
        "killed instance shown offline {shown_after:?} after the kill (seen by the poll after {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(shown_after <= Duration::from_secs(10), "{list}");
    assert_eq!(instance(&list, "a")["online"], true);
    assert_eq!(list["online"], 1);

    drop(server_a);
    common::drop_database(&name).await;
}

/// 3 instances, 100,000 concurrent requests spread over them against `per_day: N`
/// (persistent): exactly N approvals per profile, and the audit holds exactly those.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_address_can_come_from_a_private_file_and_stays_out_of_the_process() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let password = password_of(&db);
    let (a, b) = (DataDir::new(), DataDir::new());
    // A Secret's file: the trailing newline of `kubectl create secret --from-file`.
    let uri_file = a.file("db-uri-secret", &format!("{db}\n"));
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uri_file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    set_mode(0o600);
    let file_arg = uri_file.to_str().unwrap();
    let mut create = vec!["--db-uri-file", file_arg];
    create.extend_from_slice(&create_args(&db)[2..]);
    let id = a.kss_ok(&create).trim().to_string();
    // Read, not copied: no saved address in the data directory.
    assert!(!a.path().join("db-uri").exists());

    // A file other users can read is refused, naming it and not its contents.
    set_mode(0o644);
    common::share_master_key(&a, &b);
    let open = b.kss(&["--db-uri-file", file_arg, "initialize"]);
    let stderr = common::text(&open.stderr);
    assert!(!open.status.success());
    assert!(
        stderr.contains(file_arg) && stderr.contains("open to other users"),
        "{stderr}"
    );
    assert!(!stderr.contains(&password), "{stderr}");
    set_mode(0o600);
    // Given twice, by the flag and the file, it is refused: which one would be meant?
    let twice = b.kss(&["--db-uri", &db, "--db-uri-file", file_arg, "initialize"]);
    let stderr = common::text(&twice.stderr);
    assert!(!twice.status.success());
    assert!(stderr.contains("given twice"), "{stderr}");
    assert!(!stderr.contains(&password), "{stderr}");
    // An empty file and a missing one are named.
    let empty = b.file("empty-uri", "\n");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let none = b.kss(&["--db-uri-file", empty.to_str().unwrap(), "initialize"]);
    assert!(common::text(&none.stderr).contains("holds no database address"));
    let missing = b.kss(&["--db-uri-file", "/nonexistent/db-uri", "initialize"]);
    assert!(common::text(&missing.stderr).contains("/nonexistent/db-uri"));

    // An instance joins from the file, and saves nothing.
    let joined = b.kss_ok(&["--db-uri-file", file_arg, "initialize"]);
    assert_eq!(joined.trim(), id);
    assert!(!b.path().join("db-uri").exists());

    // Served from the file given by the environment, as the operator's pods are: the
    // password is in neither the process's arguments nor its environment, and the
    // instance serves the cluster's keyserver.
    let server = Server::start_env(
        &b,
        &["--instance-name", "b"],
        &[("KSS_DB_URI_FILE".to_string(), file_arg.to_string())],
    );
    let pid = server.child.id();
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&password),
            "the password is in /proc/{pid}/{what}"
        );
    }
    let client = server.client(&b).await;
    onboard(&client, &id).await;
    let status: Value =
        serde_json::from_str(&b.kss_ok(&["--db-uri-file", file_arg, "status", "--json"])).unwrap();
    assert_eq!(status["keyserver_id"], id.as_str());
    assert!(!server.log_text().contains(&password));
    drop(server);
    common::drop_database(&name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_are_exact_across_three_instances_under_100k_requests() {
    const PER_DAY: u64 = 1000;
    const PROFILES: u64 = 4;
    const REQUESTS: u64 = 100_000;
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let dirs = [DataDir::new(), DataDir::new(), DataDir::new()];
    let id = dirs[0].kss_ok(&create_args(&db)).trim().to_string();
    dirs[0].load_policy(&POLICY.replace("per_day: 5", &format!("per_day: {PER_DAY}")));
    let first = Server::start(&dirs[0]);
    let mut servers = vec![first];
    for d in &dirs[1..] {
        common::share_master_key(&dirs[0], d);
        d.kss_ok(&["--db-uri", &db, "initialize"]);
        common::share_tls(&dirs[0], d);
        servers.push(Server::start(d));
    }
    let ca = dirs[0].path().join("tls/ca.pem");
    let out = dirs[0].kss_ok(&[
        "loadgen",
        "--endpoint",
        &servers[0].endpoint(),
        "--also-endpoint",
        &servers[1].endpoint(),
        "--also-endpoint",
        &servers[2].endpoint(),
        "--ca",
        ca.to_str().unwrap(),
        "--keyserver-id",
        &id,
        "--profiles",
        &PROFILES.to_string(),
        "--requests",
        &REQUESTS.to_string(),
        "--concurrency",
        "192",
        "--connections",
        "6",
        "--distinct-ciphertexts",
        "1",
        "--repeat-share",
        "1.0",
        "--path",
        "batch/x",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    println!(
        "100k requests over 3 instances: {} approved, {} denied, {} errors, {:.0} req/s",
        report["approved"], report["denied"], report["errors"], report["throughput"]
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["sent"], REQUESTS);
    assert_eq!(report["approved"], PROFILES * PER_DAY, "{report}");
    assert_eq!(
        report["denied_by_reason"]["quota"],
        REQUESTS - PROFILES * PER_DAY,
        "{report}"
    );
    assert_eq!(approved_decrypts(&db).await as u64, PROFILES * PER_DAY);
    // Each instance took a share of the approvals.
    let mut conn = sqlx::mysql::MySqlConnection::connect(db.as_str())
        .await
        .unwrap();
    let per_instance: Vec<i64> = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit WHERE request_type = 'decrypt' GROUP BY instance_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(per_instance.len(), 3, "{per_instance:?}");
    let counters: Vec<i64> = sqlx::query_scalar("SELECT day_used FROM quota_counters")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(counters, vec![PER_DAY as i64; PROFILES as usize]);
    drop(servers);
    common::drop_database(&name).await;
}

/// A standalone keyserver with profiles, policy versions, used quota and audit becomes a
/// cluster: same ID, nothing lost, the old SQLite file retired, and new instances join.
#[tokio::test(flavor = "multi_thread")]
async fn clone_db_turns_a_standalone_keyserver_into_a_cluster() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let a = DataDir::new();
    let id = a.create();
    a.load_policy("decrypt: []\n");
    a.load_policy(POLICY);
    let server = Server::start(&a);
    let client = server.client(&a).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[6u8; 32]);
    for _ in 0..3 {
        assert!(
            client
                .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
                .await
                .unwrap()
                .is_approved()
        );
    }
    // Refused while the server runs: no decision may be made during the copy.
    let busy = a.kss(&["clone-db", &db]);
    assert!(!busy.status.success());
    assert!(common::text(&busy.stderr).contains("stop it first"));
    assert!(server.terminate());
    let audit_before = a.kss_ok(&["audit", "--json"]);

    let cloned = a.kss_ok(&["clone-db", &key_value_form(&db)]);
    assert_eq!(cloned.trim(), id);
    assert!(a.path().join("kss.db.cloned").exists());
    assert!(!a.path().join("kss.db").exists());
    // From now on this data directory is the cluster's.
    assert_eq!(a.kss_ok(&["audit", "--json"]), audit_before);
    let status: Value = serde_json::from_str(&a.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["policy_version"], 2);
    assert_eq!(status["profiles"], 1);
    // A second clone into the same database is refused.
    let again = DataDir::new();
    again.create();
    let refused = again.kss(&["clone-db", &db]);
    assert!(common::text(&refused.stderr).contains(&id));

    let b = DataDir::new();
    common::share_master_key(&a, &b);
    b.kss_ok(&["--db-uri", &db, "initialize"]);
    let server_a = Server::start(&a);
    common::share_tls(&a, &b);
    let server_b = Server::start(&b);
    // The same workstation keeps working through either instance; the quota used before
    // the clone still counts (5 a day, 3 used).
    let clients = [server_a.client(&a).await, server_b.client(&a).await];
    let approved =
        common::concurrent_decrypts(&clients, &profile, &ciphertext, "batch/x", 10).await;
    assert_eq!(approved, 2);
    assert_eq!(approved_decrypts(&db).await, 5);
    drop((server_a, server_b));
    common::drop_database(&name).await;
}

/// The cluster database is lost: the backup key and its holder's approval restore the
/// identity into a new, empty database, and the same workstation decrypts again.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_into_a_new_cluster_database_keeps_workstations_working() {
    let Some((db, name)) = common::fresh_database().await else {
        return;
    };
    let a = DataDir::new();
    let backup = a.dir.path().join("backup.json");
    let mut args = create_args(&db);
    args.extend(["--backup-path", backup.to_str().unwrap()]);
    let id = a.kss_ok(&args).trim().to_string();
    a.load_policy(POLICY);
    let server = Server::start(&a);
    let client = server.client(&a).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[8u8; 32]);
    assert!(
        client
            .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
            .await
            .unwrap()
            .is_approved()
    );
    server.kill9();
    // The database is destroyed, and the instance's master key with it.
    common::drop_database(&name).await;
    std::fs::remove_file(a.path().join("master.key")).unwrap();

    let Some((new_db, new_name)) = common::fresh_database().await else {
        return;
    };
    let approval = a.dir.path().join("holder.approval");
    a.kss_ok(&[
        "backup",
        "approve",
        "--backup",
        backup.to_str().unwrap(),
        "--admin-key",
        &format!("{}.admin.key", backup.display()),
        "--out",
        approval.to_str().unwrap(),
    ]);
    let b = DataDir::new();
    let recovered = b.kss_ok(&[
        "--db-uri",
        &new_db,
        "recovery-ingest-key",
        backup.to_str().unwrap(),
        "--approval",
        approval.to_str().unwrap(),
    ]);
    assert_eq!(recovered.trim(), id);
    b.load_policy(POLICY);
    let server = Server::start(&b);
    let client = server.client(&b).await;
    // The workstation's profile was onboarded before: unknown to the new database until
    // the workstation presents its registration token, then it decrypts again.
    let plain = client
        .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
        .await
        .unwrap();
    assert_eq!(plain.reason_name().as_deref(), Some("unknown_profile"));
    let mut spec = RequestSpec::decrypt(ciphertext.clone(), &["batch/x".to_string()]);
    spec.include_registration = true;
    let again = client.decrypt_with(&profile, spec).await.unwrap();
    assert_eq!(again.file_key().unwrap(), &[8u8; 32][..]);
    drop(server);
    common::drop_database(&new_name).await;
}
