//! Two keyserver processes sharing one MariaDB database (`--db-uri`): one identity, one
//! policy, exact quotas across instances. Needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh);
//! skipped without it, except where `KSS_REQUIRE_MYSQL` is set (CI).
#![allow(clippy::unwrap_used)]

mod common;

use common::{DataDir, Server};
use kss_client::protocol::encrypt_file_key;
use kss_crypto::ids::KeyserverId;
use sqlx::Connection;

/// A fresh database on the test server; dropped by `drop_database`.
async fn fresh_database() -> Option<(String, String)> {
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "KSS_TEST_MYSQL_URL not set but KSS_REQUIRE_MYSQL is"
        );
        eprintln!("SKIPPED cluster test: KSS_TEST_MYSQL_URL not set (scripts/mariadb.sh up)");
        return None;
    };
    let name = format!(
        "kss_cluster_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut conn = sqlx::mysql::MySqlConnection::connect(&url).await.unwrap();
    // The name is ours: digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), ""), |(b, q)| (b, q));
    let prefix = &base[..base.rfind('/').unwrap()];
    let db_url = if query.is_empty() {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}?{query}")
    };
    Some((db_url, name))
}

async fn drop_database(name: &str) {
    let url = std::env::var("KSS_TEST_MYSQL_URL").unwrap();
    let mut conn = sqlx::mysql::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_identity_policy_and_exact_quotas() {
    let Some((db, name)) = fresh_database().await else {
        return;
    };
    let a = DataDir::new();
    let b = DataDir::new();
    let master = a.path().join("master.key");
    let master = master.to_str().unwrap().to_string();
    let shared = [
        "--db-uri",
        db.as_str(),
        "--master-key-file",
        master.as_str(),
    ];

    let id = a
        .kss_ok(
            &[
                &shared[..],
                &["create", "--ignore-security-checks", "--threshold", "1"],
            ]
            .concat(),
        )
        .trim()
        .to_string();
    // The second instance finds the identity in the database: a second create refuses.
    let again = b.kss(
        &[
            &shared[..],
            &["create", "--ignore-security-checks", "--threshold", "1"],
        ]
        .concat(),
    );
    assert!(!again.status.success());
    assert!(common::text(&again.stderr).contains(&id));
    let policy = b.file(
        "policy.yml",
        "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n    - rule: per-profile-throttle-rule\n      per_day: 5\n      persistent: true\n",
    );
    b.kss_ok(&[&shared[..], &["policy", "load", policy.to_str().unwrap()]].concat());

    let server_a = Server::start_with(&a, &shared);
    let server_b = Server::start_with(&b, &shared);
    let client_a = server_a.client(&a).await;
    let client_b = server_b.client(&b).await;
    assert_eq!(client_b.info().await.unwrap().keyserver_id, id);
    assert_eq!(client_b.info().await.unwrap().policy_version, 1);

    // Onboarded through A, served by B.
    let profile = client_a
        .onboard(&id.parse::<KeyserverId>().unwrap(), "batch@host", &[])
        .await
        .unwrap();
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    let via_b = client_b
        .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
        .await
        .unwrap();
    assert_eq!(via_b.file_key().unwrap(), &[4u8; 32][..]);

    // 20 concurrent requests over both instances against per_day 5: 4 more approvals.
    let clients = [client_a.clone(), client_b.clone()];
    let approved =
        common::concurrent_decrypts(&clients, &profile, &ciphertext, "batch/x", 20).await;
    assert_eq!(approved, 4);
    let audit = a.kss_ok(
        &[
            &shared[..],
            &[
                "audit",
                "--json",
                "--decision",
                "approved",
                "--type",
                "decrypt",
            ],
        ]
        .concat(),
    );
    assert_eq!(audit.lines().count(), 5, "{audit}");
    // Both instances decided (and recorded) requests.
    let all = a.kss_ok(&[&shared[..], &["audit", "--json", "--type", "decrypt"]].concat());
    assert_eq!(all.lines().count(), 21, "{all}");
    let instances: std::collections::HashSet<String> = all
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["instance"].to_string())
        .collect();
    assert_eq!(instances.len(), 2, "both instances decided: {all}");

    drop((server_a, server_b));
    drop_database(&name).await;
}
