//! The keyserver as a process: real TLS, real gRPC clients, SQLite on disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{DataDir, Server, text, wait_until};
use kss_client::protocol::{RequestSpec, build_request, encrypt_file_key, sign_request};
use kss_client::{KssClient, Profile};
use kss_crypto::ids::KeyserverId;
use kss_crypto::signing::{DeviceKey, SignDomain};
use kss_proto::v1::{RequestType, SignedMessage};
use prost::Message;

const POLICY: &str = "\
decrypt:
  - - rule: meta-rule
      paths: [/batch]
    - rule: per-profile-throttle-rule
      per_day: 5
      persistent: true
search:
  - - rule: per-profile-throttle-rule
      per_hour: 100000
";

async fn onboard(client: &KssClient, id: &str) -> Profile {
    let id: KeyserverId = id.parse().unwrap();
    client.onboard(&id, "batch@host", None).await.unwrap()
}

/// Signs `body` with the profile's device key, sends it, and returns the deny reason.
async fn signed_reason(
    client: &KssClient,
    profile: &Profile,
    body: &kss_proto::v1::RequestBody,
) -> Option<String> {
    let response = client
        .approve_raw(sign_request(profile, body))
        .await
        .unwrap();
    kss_client::protocol::ApproveOutcome::from_response(response).reason_name()
}

fn paths(p: &str) -> Vec<String> {
    vec![p.to_string()]
}

/// The issue's proof: a file key encrypted to the profile's public key set comes back only
/// through an approved request; a denied one yields no share.
#[tokio::test(flavor = "multi_thread")]
async fn file_key_is_recovered_only_through_an_approved_request() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    assert_eq!(client.info().await.unwrap().keyserver_id, id);

    let profile = onboard(&client, &id).await;
    let file_key = [7u8; 32];
    let ciphertext = encrypt_file_key(&profile, &file_key);

    let denied = client
        .decrypt(&profile, &ciphertext, &paths("home/secret.txt"))
        .await
        .unwrap();
    assert!(!denied.is_approved());
    assert_eq!(denied.reason_name().as_deref(), Some("policy"));
    // The raw response of a denial carries no share.
    let spec = RequestSpec::decrypt(ciphertext.clone(), &paths("home/secret.txt"));
    let raw = client.request(&profile, &spec).await.unwrap();
    assert!(!raw.approved && raw.decryption_share.is_empty());

    let approved = client
        .decrypt(&profile, &ciphertext, &paths("batch/file.txt"))
        .await
        .unwrap();
    assert!(approved.is_approved(), "{:?}", approved.reason_name());
    assert_eq!(approved.file_key().unwrap(), &file_key[..]);

    // The workstation's own share alone cannot decrypt: the keyserver's is needed.
    let verified = kss_crypto::ciphertext::verify(&ciphertext).unwrap();
    let own = profile.workstation_share().decryption_share(&verified);
    assert!(
        profile
            .public_keys()
            .combine(&own, &own, &verified)
            .map(|k| k != file_key)
            .unwrap_or(true)
    );

    // Audited: both denials and the approval, with the request type and the path.
    let audit = data.kss_ok(&[
        "audit",
        "--json",
        "--type",
        "decrypt",
        "--profile",
        &profile.profile_id().to_hex(),
    ]);
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{audit}");
    assert_eq!(lines[0]["decision"], "approved");
    assert_eq!(lines[0]["meta"][0]["meta"], "batch/file.txt");
    assert_eq!(lines[1]["reason"], "policy");
    assert!(!audit.contains(&hex::encode(&ciphertext)));
}

/// Valid and tampered ciphertexts sent at once, so that they are verified in shared
/// batches: every tampered one is denied as invalid and gets no share, every valid one
/// recovers its own file key with the share it gets.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_valid_and_tampered_ciphertexts_are_told_apart() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy("decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n");
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let file_key = [i; 32];
        let mut ciphertext = encrypt_file_key(&profile, &file_key);
        let tampered = i % 4 == 1;
        if tampered {
            let last = ciphertext.len() - 1;
            ciphertext[last] ^= 1;
        }
        let (client, profile) = (client.clone(), profile.clone());
        tasks.spawn(async move {
            if tampered {
                let spec = RequestSpec::decrypt(ciphertext, &paths("batch/f"));
                let outcome = client.request(&profile, &spec).await.unwrap();
                assert_eq!(
                    outcome.reason_name().as_deref(),
                    Some("invalid_ciphertext"),
                    "ciphertext {i}"
                );
                assert!(outcome.decryption_share.is_empty());
            } else {
                let outcome = client
                    .decrypt(&profile, &ciphertext, &paths("batch/f"))
                    .await
                    .unwrap();
                assert_eq!(outcome.file_key().unwrap(), &file_key[..], "ciphertext {i}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_quota_is_exact_and_survives_a_restart() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[1u8; 32]);

    // 12 concurrent requests against per_day: 5.
    let approved = common::concurrent_decrypts(
        std::slice::from_ref(&client),
        &profile,
        &ciphertext,
        "batch/a",
        12,
    )
    .await;
    assert_eq!(approved, 5);
    let list = data.kss_ok(&["quota", "list", "--json"]);
    assert!(list.contains(&profile.profile_id().to_hex()), "{list}");
    assert!(list.contains("\"at_quota\":true"), "{list}");

    // Restart: identity, profile, policy and the used quota are all still there.
    assert!(server.terminate(), "graceful shutdown");
    let server = Server::start(&data);
    let client = server.client(&data).await;
    assert_eq!(client.info().await.unwrap().policy_version, 1);
    let again = client
        .request(
            &profile,
            &RequestSpec::decrypt(ciphertext.clone(), &paths("batch/a")),
        )
        .await
        .unwrap();
    assert_eq!(again.reason_name().as_deref(), Some("quota"));

    // quota clear resets it.
    data.kss_ok(&[
        "quota",
        "clear",
        "--profile",
        &profile.profile_id().to_hex(),
    ]);
    let cleared = client
        .decrypt(&profile, &ciphertext, &paths("batch/a"))
        .await
        .unwrap();
    assert!(cleared.is_approved());
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_and_malformed_requests_are_rejected_and_the_server_keeps_serving() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[3u8; 32]);
    let spec = RequestSpec::decrypt(ciphertext.clone(), &paths("batch/x"));
    let reason = |r: kss_proto::v1::ApproveResponse| {
        kss_client::protocol::ApproveOutcome::from_response(r).reason_name()
    };

    // Forged: signed by another key.
    let body = build_request(&profile, &spec).encode_to_vec();
    let other = DeviceKey::generate();
    let forged = SignedMessage {
        signature: other.sign(SignDomain::Request, &body).to_vec(),
        body: body.clone(),
    };
    assert_eq!(
        reason(client.approve_raw(forged).await.unwrap()).as_deref(),
        Some("signature")
    );

    // Signed for another purpose (onboarding).
    let cross = SignedMessage {
        signature: profile
            .device_key()
            .sign(SignDomain::Onboard, &body)
            .to_vec(),
        body: body.clone(),
    };
    assert_eq!(
        reason(client.approve_raw(cross).await.unwrap()).as_deref(),
        Some("signature")
    );

    // Tampered after signing: another path.
    let mut tampered_body = build_request(&profile, &spec);
    let signed = sign_request(&profile, &tampered_body);
    tampered_body.auth_meta[0].meta = "batch/other".into();
    let tampered = SignedMessage {
        body: tampered_body.encode_to_vec(),
        signature: signed.signature,
    };
    assert_eq!(
        reason(client.approve_raw(tampered).await.unwrap()).as_deref(),
        Some("signature")
    );

    // Replay: the same signed message twice.
    let message = sign_request(&profile, &build_request(&profile, &spec));
    let first = client.approve_raw(message.clone()).await.unwrap();
    assert_eq!(reason(first), None);
    assert_eq!(
        reason(client.approve_raw(message).await.unwrap()).as_deref(),
        Some("replayed")
    );

    // Stale: a timestamp an hour old.
    let mut old = build_request(&profile, &spec);
    old.timestamp_ms -= 3_600_000;
    assert_eq!(
        signed_reason(&client, &profile, &old).await.as_deref(),
        Some("stale")
    );

    // Unknown profile, wrong keyserver.
    let mut unknown = build_request(&profile, &spec);
    unknown.profile_id = "00112233445566778899aabbccddeeff".into();
    assert_eq!(
        signed_reason(&client, &profile, &unknown).await.as_deref(),
        Some("unknown_profile")
    );
    let mut wrong = build_request(&profile, &spec);
    wrong.keyserver_id = "ffeeddccbbaa99887766554433221100".into();
    assert_eq!(
        signed_reason(&client, &profile, &wrong).await.as_deref(),
        Some("wrong_keyserver")
    );

    // A ciphertext that fails verification: denied, no quota used.
    let mut bad_ct = ciphertext.clone();
    let last = bad_ct.len() - 1;
    bad_ct[last] ^= 1;
    let bad = client
        .request(&profile, &RequestSpec::decrypt(bad_ct, &paths("batch/x")))
        .await
        .unwrap();
    assert_eq!(bad.reason_name().as_deref(), Some("invalid_ciphertext"));
    assert!(bad.decryption_share.is_empty());

    // Ciphertexts a raw client crafts, signed like any other: W = identity, U with x ≥ p,
    // and U a point on the curve outside the prime-order subgroup (its small-order part
    // would make a share leak the secret modulo that order). Each is denied as invalid,
    // with no share.
    let mut w_identity = ciphertext.clone();
    w_identity[48..144].fill(0);
    w_identity[48] = 0xc0;
    let mut x_too_large = ciphertext.clone();
    x_too_large[..48].fill(0xff);
    x_too_large[0] = 0x9f;
    let off_subgroup_u = (0..=u8::MAX)
        .map(|x| {
            let mut u = [0u8; 48];
            u[0] = 0x80;
            u[47] = x;
            u
        })
        .find(|u| bool::from(kss_crypto::blsttc::G1Affine::from_compressed_unchecked(u).is_some()))
        .unwrap();
    assert!(bool::from(
        kss_crypto::blsttc::G1Affine::from_compressed(&off_subgroup_u).is_none()
    ));
    let mut outside_u = ciphertext.clone();
    outside_u[..48].copy_from_slice(&off_subgroup_u);
    for (what, crafted) in [
        ("W = identity", w_identity),
        ("x ≥ p", x_too_large),
        ("U outside G1", outside_u),
    ] {
        let outcome = client
            .request(&profile, &RequestSpec::decrypt(crafted, &paths("batch/x")))
            .await
            .unwrap();
        assert_eq!(
            outcome.reason_name().as_deref(),
            Some("invalid_ciphertext"),
            "{what}"
        );
        assert!(outcome.decryption_share.is_empty(), "{what}");
    }

    // Malformed body and oversize message: gRPC errors.
    let garbage = SignedMessage {
        body: vec![0xff; 40],
        signature: vec![0; 64],
    };
    let err = client.approve_raw(garbage).await.unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::InvalidArgument), "{err}");
    let huge = SignedMessage {
        body: vec![0; 200 * 1024],
        signature: vec![0; 64],
    };
    let err = client.approve_raw(huge).await.unwrap_err();
    assert!(
        matches!(
            err.grpc_code(),
            Some(tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
        ),
        "{err}"
    );

    // Wrong keyserver ID at onboarding: a clear error.
    let err = client
        .onboard(&KeyserverId::random(), "x", None)
        .await
        .unwrap_err();
    assert_eq!(err.grpc_code(), Some(tonic::Code::FailedPrecondition));
    assert!(err.to_string().contains("wrong keyserver ID"), "{err}");

    // Still serving: one approval used above (the replayed one's first), then this one.
    let ok = client
        .decrypt(&profile, &ciphertext, &paths("batch/x"))
        .await
        .unwrap();
    assert!(ok.is_approved(), "{:?}", ok.reason_name());
    let audit = data.kss_ok(&[
        "audit",
        "--json",
        "--decision",
        "approved",
        "--type",
        "decrypt",
    ]);
    assert_eq!(audit.lines().count(), 2, "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_load_applies_without_restart_and_invalid_policy_changes_nothing() {
    let data = DataDir::new();
    let id = data.create();
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let search = RequestSpec::new(RequestType::Search);

    // No policy: search denied.
    assert!(!client.request(&profile, &search).await.unwrap().approved);
    data.load_policy(POLICY);
    wait_until("policy version 1 applied", Duration::from_secs(5), || {
        futures_lite_block(client.info()).policy_version == 1
    });
    assert!(client.request(&profile, &search).await.unwrap().approved);

    // An invalid policy is rejected whole, with its location; version 1 stays.
    let bad = data.file(
        "bad.yml",
        "decrypt:\n  - - rule: meta-rule\n      pathz: [/x]\n",
    );
    let out = data.kss(&["policy", "load", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 3") || err.contains("pathz"), "{err}");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(client.info().await.unwrap().policy_version, 1);
    assert!(client.request(&profile, &search).await.unwrap().approved);

    // dump writes the policy in force.
    let out = data.dir.path().join("current.yml");
    data.kss_ok(&["policy", "dump", "--current", out.to_str().unwrap()]);
    let dumped = std::fs::read_to_string(&out).unwrap();
    assert!(
        dumped.contains("meta-rule") && dumped.contains("rule_id"),
        "{dumped}"
    );

    // Disable: every request denied as disabled; enable: back.
    data.kss_ok(&["disable"]);
    wait_until("disabled", Duration::from_secs(5), || {
        !futures_lite_block(client.info()).enabled
    });
    let r = client.request(&profile, &search).await.unwrap();
    assert_eq!(r.reason_name().as_deref(), Some("disabled"));
    data.kss_ok(&["enable"]);
    wait_until("enabled", Duration::from_secs(5), || {
        futures_lite_block(client.info()).enabled
    });
    assert!(client.request(&profile, &search).await.unwrap().approved);

    let status = data.kss_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["keyserver_id"], id.as_str());
    assert_eq!(status["running"], true);
    assert_eq!(status["policy_version"], 1);
    assert_eq!(status["profiles"], 1);

    // Metrics count requests by type and decision.
    let metrics = server.metrics();
    assert!(
        metrics.contains(
            "kss_requests_total{rpc=\"Approve\",request_type=\"search\",decision=\"approved\""
        ),
        "{metrics}"
    );
}

/// Blocks on a client call from a synchronous polling closure.
fn futures_lite_block<T>(f: impl std::future::Future<Output = kss_client::Result<T>>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).unwrap()
}

/// kill -9 under load, then restart: every approval a client received is in the audit log
/// and counted in the persistent quota.
#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_under_load_loses_no_returned_approval() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(
        "search:\n  - - rule: per-profile-throttle-rule\n      per_day: 100000\n      persistent: true\n",
    );
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;

    let approved_ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, profile, ids) = (client.clone(), profile.clone(), approved_ids.clone());
        tasks.push(tokio::spawn(async move {
            let spec = RequestSpec::new(RequestType::Search);
            while let Ok(outcome) = client.request(&profile, &spec).await {
                if outcome.approved {
                    ids.lock().unwrap().push(outcome.audit_id);
                }
            }
        }));
    }
    // Killed mid-load, once a fair number of approvals has been returned.
    let returned = approved_ids.clone();
    tokio::task::spawn_blocking(move || {
        common::wait_until("50 approvals returned", Duration::from_secs(60), || {
            returned.lock().unwrap().len() > 50
        })
    })
    .await
    .unwrap();
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let approved: Vec<u64> = approved_ids.lock().unwrap().clone();
    assert!(approved.len() > 50, "load too light: {}", approved.len());

    let server = Server::start(&data);
    let audit = data.kss_ok(&[
        "audit",
        "--json",
        "--decision",
        "approved",
        "--type",
        "search",
        "--limit",
        "1000000",
    ]);
    let in_audit: std::collections::HashSet<u64> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for id in &approved {
        assert!(
            in_audit.contains(id),
            "approval {id} returned but not in the audit log"
        );
    }
    let quotas = data.kss_ok(&["quota", "list", "--all", "--json"]);
    let day_used: u64 = quotas
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["day_used"]
                .as_u64()
                .unwrap()
        })
        .sum();
    // Counted exactly as audited (both committed in one transaction), and at least
    // everything a client saw.
    assert_eq!(day_used, in_audit.len() as u64, "{quotas}");
    assert!(day_used >= approved.len() as u64);
    drop(server);
}

/// The identity is restored from the backup key and its holders' approvals into a new,
/// empty database; the workstation onboarded before decrypts again.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_from_backup_key_keeps_onboarded_workstations_working() {
    let data = DataDir::new();
    let keys = data.dir.path().join("keys");
    let mut admin_args = Vec::new();
    for name in ["ada", "bob", "cy", "dee", "eve"] {
        let prefix = keys.join(name);
        data.kss_ok(&[
            "admin-key",
            "generate",
            "--name",
            name,
            "--out",
            prefix.to_str().unwrap(),
        ]);
        admin_args.push("--admin-key".to_string());
        admin_args.push(format!("{}.pub", prefix.display()));
    }
    let backup = data.dir.path().join("backup.json");
    let mut args = vec![
        "create".to_string(),
        "--backup-path".into(),
        backup.display().to_string(),
    ];
    args.extend(admin_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = data.kss_ok(&args).trim().to_string();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[9u8; 32]);
    assert!(
        client
            .decrypt(&profile, &ciphertext, &paths("batch/r"))
            .await
            .unwrap()
            .is_approved()
    );
    server.kill9();

    // The database and master key are lost.
    std::fs::remove_dir_all(data.path()).unwrap();

    let mut approvals = Vec::new();
    for name in ["ada", "cy", "eve"] {
        let out = data.dir.path().join(format!("{name}.approval"));
        data.kss_ok(&[
            "backup",
            "approve",
            "--backup",
            backup.to_str().unwrap(),
            "--admin-key",
            &format!("{}.key", keys.join(name).display()),
            "--out",
            out.to_str().unwrap(),
        ]);
        approvals.push(out);
    }
    // Two approvals are not enough.
    let two = data.kss(&[
        "recovery-ingest-key",
        backup.to_str().unwrap(),
        "--approval",
        approvals[0].to_str().unwrap(),
        "--approval",
        approvals[1].to_str().unwrap(),
    ]);
    assert!(!two.status.success());
    let recovered = data.kss_ok(&[
        "recovery-ingest-key",
        backup.to_str().unwrap(),
        "--approval",
        approvals[0].to_str().unwrap(),
        "--approval",
        approvals[1].to_str().unwrap(),
        "--approval",
        approvals[2].to_str().unwrap(),
    ]);
    assert_eq!(recovered.trim(), id);
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;

    // Unknown until the workstation presents its registration token; then it works.
    let plain = client
        .decrypt(&profile, &ciphertext, &paths("batch/r"))
        .await
        .unwrap();
    assert_eq!(plain.reason_name().as_deref(), Some("unknown_profile"));
    let mut spec = RequestSpec::decrypt(ciphertext.clone(), &paths("batch/r"));
    spec.include_registration = true;
    let again = client.decrypt_with(&profile, spec).await.unwrap();
    assert_eq!(again.file_key().unwrap(), &[9u8; 32][..]);

    // A registration with a forged token is refused.
    let stranger = onboard(&client, &id).await;
    let mut forged = build_request(&stranger, &RequestSpec::new(RequestType::Search));
    forged.profile_id = "0123456789abcdef0123456789abcdef".into();
    forged.registration = Some(kss_client::protocol::registration(&stranger));
    let r = client
        .approve_raw(sign_request(&stranger, &forged))
        .await
        .unwrap();
    assert_ne!(r.decision, kss_proto::v1::Decision::Approved as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_refuses_a_weak_backup_and_a_second_identity() {
    let data = DataDir::new();
    let out = data.kss(&["create"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing a weak backup key") && err.contains("--ignore-security-checks"),
        "{err}"
    );
    let id = data.create();
    let out = data.kss(&["create", "--ignore-security-checks", "--threshold", "1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(&id));
    // Secrets at rest: the master key that seals them is not in the database.
    let master = std::fs::read_to_string(data.path().join("master.key")).unwrap();
    let db = std::fs::read(data.path().join("kss.db")).unwrap();
    assert!(!db.windows(32).any(|w| hex::encode(w) == master.trim()));
}

/// Non-persistent throttles count in memory: exact while the server runs, listed and
/// cleared through the admin socket, and gone after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn in_memory_quota_counts_until_restart() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy("search:\n  - - rule: per-profile-throttle-rule\n      per_hour: 2\n");
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let search = RequestSpec::new(RequestType::Search);
    let mut reasons = Vec::new();
    for _ in 0..3 {
        reasons.push(
            client
                .request(&profile, &search)
                .await
                .unwrap()
                .reason_name(),
        );
    }
    assert_eq!(reasons, vec![None, None, Some("quota".to_string())]);
    let list = data.kss_ok(&["quota", "list", "--json"]);
    assert!(
        list.contains("\"persistent\":false") && list.contains("\"at_quota\":true"),
        "{list}"
    );
    let cleared = data.kss_ok(&["quota", "clear"]);
    assert!(cleared.contains("1 in-memory"), "{cleared}");
    assert!(client.request(&profile, &search).await.unwrap().approved);
    assert!(client.request(&profile, &search).await.unwrap().approved);
    assert!(!client.request(&profile, &search).await.unwrap().approved);

    // Nothing of it was written to the database: a restart starts from zero.
    assert!(server.terminate());
    let server = Server::start(&data);
    let client = server.client(&data).await;
    assert!(client.request(&profile, &search).await.unwrap().approved);
}

/// SIGTERM under load: the server stops accepting, answers what is in flight (no request
/// is cut off mid-way), commits those decisions, and exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_finishes_in_flight_requests() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[5u8; 32]);

    let approved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, profile, ct, approved) = (
            client.clone(),
            profile.clone(),
            ciphertext.clone(),
            approved.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Searches (no quota) and decrypts (each verifies a ciphertext) interleaved.
            let specs = [
                RequestSpec::new(RequestType::Search),
                RequestSpec::decrypt(ct, &paths("batch/t")),
            ];
            let mut n = 0usize;
            loop {
                match client.request(&profile, &specs[n % 2]).await {
                    Ok(outcome) if outcome.approved => {
                        approved.lock().unwrap().push(outcome.audit_id)
                    }
                    Ok(_) => {}
                    Err(e) => return e,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let clean = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(clean, "kss serve did not exit 0 after SIGTERM");
    // Each loop ends when its connection goes: refused, closed, or a stream the server
    // refused after its GOAWAY (gRPC codes vary: Unavailable, Cancelled, Internal). What
    // matters is below: no decision made and left unanswered.
    for t in tasks {
        let _ = t.await.unwrap();
    }
    // Every decision the server made was answered, and every answer was recorded: the
    // approvals in the audit log are exactly those the clients received.
    let approved: std::collections::HashSet<u64> =
        approved.lock().unwrap().iter().copied().collect();
    assert!(!approved.is_empty());
    let audit = data.kss_ok(&[
        "audit",
        "--json",
        "--decision",
        "approved",
        "--limit",
        "100000",
    ]);
    let in_audit: std::collections::HashSet<u64> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        // Workstation decisions only (administrative actions have an actor).
        .filter(|v| v["request_type"] != "create_profile" && v["actor"].is_null())
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(in_audit, approved);
}

/// `kss save-backup-key` writes a fresh backup key that restores the same identity.
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_backup_key_restores_the_same_keyserver() {
    let data = DataDir::new();
    let id = data.create();
    let backup = data.dir.path().join("fresh-backup.json");
    let backup = backup.to_str().unwrap();
    // Weak setups are refused here too, with the reason.
    let weak = data.kss(&["save-backup-key", backup]);
    assert!(!weak.status.success());
    assert!(text(&weak.stderr).contains("refusing a weak backup key"));
    data.kss_ok(&[
        "save-backup-key",
        backup,
        "--ignore-security-checks",
        "--threshold",
        "1",
    ]);
    let admin_key = format!("{backup}.admin.key");
    let approval = data.dir.path().join("a.approval");
    data.kss_ok(&[
        "backup",
        "approve",
        "--backup",
        backup,
        "--admin-key",
        &admin_key,
        "--out",
        approval.to_str().unwrap(),
    ]);
    let elsewhere = DataDir::new();
    let restored = elsewhere.kss_ok(&[
        "recovery-ingest-key",
        backup,
        "--approval",
        approval.to_str().unwrap(),
    ]);
    assert_eq!(restored.trim(), id);
}

/// The admin socket is 0600 from the start (no staging directory is left behind) and
/// serves only its own user (and root): another user is refused even when the file has
/// been opened up to everyone.
#[test]
fn the_admin_socket_serves_only_its_own_user() {
    use std::os::unix::fs::PermissionsExt;
    let data = DataDir::new();
    data.create();
    let server = Server::start(&data);
    let socket = data.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".a"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    data.kss_ok(&["profile", "list"]);

    if !rustix::process::geteuid().is_root() {
        common::skipped(
            "the other-user half of the admin socket test: needs root to run a client as another user",
        );
        return;
    }
    for dir in [data.dir.path().to_path_buf(), data.path()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::kss_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["profile", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "served: {}", text(&out.stdout));
    wait_until("the refusal logged", Duration::from_secs(10), || {
        server
            .log_text()
            .contains("a connection from another user refused")
    });
    assert!(
        server.log_text().contains("uid=65534"),
        "{}",
        server.log_text()
    );
    // Its own user still is.
    data.kss_ok(&["profile", "list"]);
}

/// SQLite held by another process (an exclusive transaction on the same file, as a stuck
/// backup tool or a `sqlite3` shell would hold it): every request is denied `unavailable`
/// within 3 s instead of waiting for the lock, nothing is approved, and the keyserver
/// approves again by itself within 5 s of the lock's release.
#[tokio::test(flavor = "multi_thread")]
async fn a_locked_sqlite_database_denies_within_3s_then_recovers_within_5s() {
    use std::time::Instant;

    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let server = Server::start(&data);
    let client = server.client(&data).await;
    let profile = onboard(&client, &id).await;
    let search = RequestSpec::new(RequestType::Search);
    let reason = |outcome: kss_client::ApproveOutcome| outcome.reason_name();
    assert_eq!(
        reason(client.request(&profile, &search).await.unwrap()),
        None
    );

    let mut holder = data.hold_write_lock().await;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let sent = Instant::now();
        let outcome = client.request(&profile, &search).await.unwrap();
        waits.push(sent.elapsed());
        assert_eq!(reason(outcome).as_deref(), Some("unavailable"));
    }
    println!("answers while the database was locked: {waits:?}");
    for wait in &waits {
        assert!(
            *wait <= Duration::from_secs(3),
            "a request waited {wait:?} on a locked database:\n{}",
            server.log_text()
        );
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    let released = Instant::now();
    let mut approved_after = None;
    while released.elapsed() < Duration::from_secs(15) {
        if reason(client.request(&profile, &search).await.unwrap()).is_none() {
            approved_after = Some(released.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("approved again {approved_after:?} after the lock was released");
    let after = approved_after.expect("approved again after the lock was released");
    assert!(
        after <= Duration::from_secs(5),
        "approved again only {after:?} after the lock was released:\n{}",
        server.log_text()
    );
}
