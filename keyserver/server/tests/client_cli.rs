//! `kss client` and `kss loadgen` against a real keyserver process.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{DataDir, Server, kss_bin, text};

fn client(server: &Server, data: &DataDir, args: &[&str]) -> Output {
    Command::new(kss_bin())
        .args(["client"])
        .args(args)
        .args(["--endpoint", &server.endpoint(), "--ca"])
        .arg(data.path().join("tls/ca.pem"))
        .output()
        .unwrap()
}

#[test]
fn client_commands_onboard_encrypt_and_decrypt() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy("decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n");
    let server = Server::start(&data);
    let profile = data.dir.path().join("profile.json");
    let ct = data.dir.path().join("file.ct");

    let info = client(&server, &data, &["info"]);
    assert!(text(&info.stdout).contains(&id), "{}", text(&info.stderr));

    let out = client(
        &server,
        &data,
        &[
            "onboard",
            "--keyserver-id",
            &id,
            "--profile",
            profile.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The words a person compares: the workstation's view (offline) is the keyserver's.
    let onboarded: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let shown = Command::new(kss_bin())
        .args(["client", "info", "--profile", profile.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown: serde_json::Value = serde_json::from_str(&text(&shown.stdout)).unwrap();
    let profile_id = onboarded["profile_id"].as_str().unwrap();
    let on_server: serde_json::Value =
        serde_json::from_str(&data.kss_ok(&["profile", "show", profile_id, "--json"])).unwrap();
    assert_eq!(shown["profile_id"], profile_id);
    assert_eq!(shown["words"].as_array().unwrap().len(), 12);
    assert_eq!(shown["words"], on_server["words"]);

    // Offline: no connection flags.
    let out = Command::new(kss_bin())
        .args([
            "client",
            "encrypt",
            "--profile",
            profile.to_str().unwrap(),
            "--out",
            ct.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64, "{key}");

    let approved = client(
        &server,
        &data,
        &[
            "decrypt",
            "--profile",
            profile.to_str().unwrap(),
            "--ciphertext",
            ct.to_str().unwrap(),
            "--path",
            "batch/report.csv",
        ],
    );
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}",
        text(&approved.stderr)
    );
    assert!(text(&approved.stdout).contains(&key));

    let denied = client(
        &server,
        &data,
        &[
            "decrypt",
            "--profile",
            profile.to_str().unwrap(),
            "--ciphertext",
            ct.to_str().unwrap(),
            "--path",
            "home/notes.txt",
        ],
    );
    assert_eq!(denied.status.code(), Some(2));
    let all = format!("{}{}", text(&denied.stdout), text(&denied.stderr));
    assert!(all.contains("policy") && !all.contains(&key), "{all}");

    // Onboarding with a wrong keyserver ID: a clear error, no profile file left behind.
    let other = data.dir.path().join("other.json");
    let out = client(
        &server,
        &data,
        &[
            "onboard",
            "--keyserver-id",
            "00000000000000000000000000000000",
            "--profile",
            other.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("wrong keyserver ID"),
        "{}",
        text(&out.stderr)
    );
    assert!(!other.exists());
}

#[test]
fn client_refuses_a_server_it_does_not_trust() {
    let data = DataDir::new();
    data.create();
    let server = Server::start(&data);
    // Another keyserver's CA.
    let stranger = DataDir::new();
    stranger.create();
    let _other = Server::start(&stranger);
    let out = Command::new(kss_bin())
        .args(["client", "info", "--endpoint", &server.endpoint(), "--ca"])
        .arg(stranger.path().join("tls/ca.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    // The right CA but a name the certificate is not for.
    let out = Command::new(kss_bin())
        .args([
            "client",
            "info",
            "--endpoint",
            &server.endpoint(),
            "--server-name",
            "kss.example.com",
            "--ca",
        ])
        .arg(data.path().join("tls/ca.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn loadgen_reports_verified_approvals_and_quota_denials() {
    let data = DataDir::new();
    data.create();
    data.load_policy(
        "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n    - rule: per-profile-throttle-rule\n      per_day: 10\n      persistent: true\n",
    );
    let server = Server::start(&data);
    let out = Command::new(kss_bin())
        .args(["loadgen", "--endpoint", &server.endpoint(), "--ca"])
        .arg(data.path().join("tls/ca.pem"))
        .args(["--profiles", "4", "--requests", "80", "--concurrency", "8"])
        .args(["--distinct-ciphertexts", "4", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    // 4 profiles × per_day 10: exactly 40 approved, every share verified and combined.
    assert_eq!(report["approved"], 40, "{report}");
    assert_eq!(report["verified"], 40, "{report}");
    assert_eq!(report["verify_failures"], 0, "{report}");
    assert_eq!(report["denied_by_reason"]["quota"], 40, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

/// `kss loadgen --type` drives the decision path without ciphertexts: every request type
/// but decrypt is decided by the policy and its quotas alone (what `bench/cluster.sh`
/// measures as the database ceiling). Searches under an exact persistent throttle, and a
/// type the policy does not name (denied by default).
#[test]
fn loadgen_drives_non_decrypt_request_types() {
    let data = DataDir::new();
    data.create();
    data.load_policy(
        "search:\n  - - rule: per-profile-throttle-rule\n      per_day: 10\n      persistent: true\nrename:\n  - - rule: approve-rule\n",
    );
    let server = Server::start(&data);
    let run = |kind: &str| {
        let out = Command::new(kss_bin())
            .args(["loadgen", "--endpoint", &server.endpoint(), "--ca"])
            .arg(data.path().join("tls/ca.pem"))
            .args(["--profiles", "4", "--requests", "60", "--concurrency", "8"])
            .args(["--type", kind, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(report["request_type"], kind, "{report}");
        assert_eq!(report["distinct_ciphertexts"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["sent"], 60, "{report}");
        report
    };
    // 4 profiles × per_day 10: exactly 40 approved, the rest denied by the quota.
    let search = run("search");
    assert_eq!(search["approved"], 40, "{search}");
    assert_eq!(search["denied_by_reason"]["quota"], 20, "{search}");
    let rename = run("rename");
    assert_eq!(rename["approved"], 60, "{rename}");
    let export = run("secure_export");
    assert_eq!(export["approved"], 0, "{export}");
    assert_eq!(export["denied"], 60, "{export}");
    // Each run's requests are audited under their own type.
    assert_eq!(
        data.kss_ok(&["audit", "--json", "--type", "search", "--limit", "1000"])
            .lines()
            .count(),
        60
    );
}
