//! Two keyserver processes sharing one MariaDB database (`--db-uri`): one identity, one
//! policy, exact quotas across instances. Needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh);
//! skipped without it, except where `KSS_REQUIRE_MYSQL` is set (CI).
#![allow(clippy::unwrap_used)]

mod common;

use common::{DataDir, Server};
use kss_client::protocol::encrypt_file_key;
use kss_crypto::ids::KeyserverId;

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_identity_policy_and_exact_quotas() {
    let Some((db, name)) = common::fresh_database().await else {
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
    common::drop_database(&name).await;
}
