//! The audit log as evidence, against real `kss serve` and `kss audit` processes on SQLite
//! and on MariaDB: rows edited, deleted, inserted and reordered directly in the database
//! (as someone with write access but without the root secret would) are found by
//! `kss audit verify`, which names the first bad row and exits 1; pruning keeps the chain
//! verifiable and the nonces that still refuse replays; administrative actions are
//! recorded with their actor; the listing escapes control characters while `--json`
//! stays exact. MariaDB runs are skipped (and say so) without a test server, unless
//! `KSS_REQUIRE_MYSQL` is set.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{DataDir, Server, text};
use kss_client::protocol::{
    ApproveOutcome, RequestSpec, build_request, encrypt_file_key, sign_request,
};
use kss_crypto::identity::{Era, SealedIdentity};
use kss_crypto::ids::KeyserverId;
use sqlx::Connection;

const POLICY: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n";

enum Backend {
    Sqlite,
    Mariadb,
}

/// The attacked keyserver's database, reached directly.
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

    async fn int(&self, sql: &str) -> i64 {
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

    /// Keeps a copy of the chain's tables, to undo each attack.
    async fn save(&self) {
        for table in ["audit", "audit_head", "audit_checkpoints"] {
            self.execute(&format!("DROP TABLE IF EXISTS saved_{table}"))
                .await;
            self.execute(&format!(
                "CREATE TABLE saved_{table} AS SELECT * FROM {table}"
            ))
            .await;
        }
    }

    async fn restore(&self) {
        for table in ["audit", "audit_head", "audit_checkpoints"] {
            self.execute(&format!("DELETE FROM {table}")).await;
            self.execute(&format!("INSERT INTO {table} SELECT * FROM saved_{table}"))
                .await;
        }
    }
}

async fn sqlite(path: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

struct Target {
    data: DataDir,
    id: String,
    db: Db,
}

impl Target {
    async fn new(backend: Backend) -> Option<Target> {
        let data = DataDir::new();
        let (id, db) = match backend {
            Backend::Sqlite => (data.create(), Db::Sqlite(data.path().join("kss.db"))),
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

    async fn finish(self) {
        if let Db::Mysql { name, .. } = &self.db {
            common::drop_database(name).await;
        }
    }

    fn verify(&self) -> Output {
        self.data.kss(&["audit", "verify"])
    }

    /// `kss audit verify` fails (exit 1) naming `row`, with `words` in its message.
    fn assert_tampered(&self, attack: &str, row: Option<i64>, words: &str) {
        let out = self.verify();
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{attack}: not detected: {}{stderr}",
            text(&out.stdout)
        );
        assert!(stderr.contains("TAMPERED"), "{attack}: {stderr}");
        if let Some(row) = row {
            assert!(
                stderr.contains(&format!("at row {row}:")),
                "{attack}: {stderr}"
            );
        }
        assert!(stderr.contains(words), "{attack}: {stderr}");
        eprintln!("{attack}: {}", stderr.trim());
    }

    fn assert_intact(&self) -> String {
        let out = self.verify();
        assert!(
            out.status.success(),
            "verify failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains("audit log intact"), "{stdout}");
        stdout
    }

    fn audit_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "--json", "--limit", "1000"];
        all.extend_from_slice(args);
        self.data
            .kss_ok(&all)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
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

/// Decrypts `n` times (approved), as a workstation would.
async fn decrypts(server: &Server, t: &Target, n: usize, path: &str) -> kss_client::Profile {
    decrypts_decided(server, t, n, path, true).await
}

async fn decrypts_decided(
    server: &Server,
    t: &Target,
    n: usize,
    path: &str,
    must_approve: bool,
) -> kss_client::Profile {
    let client = server.client(&t.data).await;
    let id: KeyserverId = t.id.parse().unwrap();
    let profile = client.onboard(&id, "batch@host", None).await.unwrap();
    let ciphertext = encrypt_file_key(&profile, &[5u8; 32]);
    for _ in 0..n {
        let outcome = client
            .decrypt(&profile, &ciphertext, &[path.to_string()])
            .await
            .unwrap();
        assert!(outcome.is_approved() || !must_approve);
    }
    profile
}

// ------------------------------------------------------------------ tampering

on_both_backends!(
    tampering_is_named_by_verify,
    tampering_is_named_by_verify_sqlite,
    tampering_is_named_by_verify_mariadb
);

async fn tampering_is_named_by_verify(t: &Target) {
    t.data.load_policy(POLICY);
    let server = Server::start(&t.data);
    decrypts(&server, t, 8, "batch/report.pdf").await;
    assert!(server.terminate());
    let stdout = t.assert_intact();
    let last = t.db.int("SELECT MAX(id) FROM audit").await;
    let first = t.db.int("SELECT MIN(id) FROM audit").await;
    assert!(last - first >= 9, "{first}..{last}");
    assert!(
        stdout.contains(&format!("ids {first}..={last}")),
        "{stdout}"
    );
    // The decrypts' rows carry the digest of the ciphertext verified.
    let digests = t
        .db
        .int("SELECT COUNT(*) FROM audit WHERE request_type = 'decrypt' AND ciphertext_sha256 IS NOT NULL")
        .await;
    assert_eq!(digests, 8);
    t.db.save().await;
    let mid = first + 4;

    t.db.execute(&format!(
        "UPDATE audit SET meta = REPLACE(meta, 'report', 'r3port') WHERE id = {mid}"
    ))
    .await;
    t.assert_tampered("edited row", Some(mid), "does not verify");
    t.db.restore().await;
    t.assert_intact();

    t.db.execute(&format!(
        "UPDATE audit SET decision = 'denied' WHERE id = {mid}"
    ))
    .await;
    t.assert_tampered("edited decision", Some(mid), "edited");
    t.db.restore().await;

    t.db.execute(&format!("DELETE FROM audit WHERE id = {mid}"))
        .await;
    t.assert_tampered("deleted row", Some(mid), "missing");
    t.db.restore().await;

    t.db.execute(&format!("DELETE FROM audit WHERE id = {last}"))
        .await;
    t.assert_tampered("deleted last row", Some(last), "tail was deleted");
    t.db.restore().await;

    t.db.execute(&format!("DELETE FROM audit WHERE id >= {mid}"))
        .await;
    t.assert_tampered("deleted tail", Some(mid), "tail was deleted");
    t.db.restore().await;

    // A copy of a real row (chain hash and all) appended after the end.
    t.db.execute(&format!(
        "INSERT INTO audit (id, at_ms, instance_id, profile_id, device_id, request_type, \
         meta, cryptographic_id, decision, rule_set, reason, policy_version, nonce, \
         ciphertext_sha256, actor, chain_hash) \
         SELECT {}, at_ms, instance_id, profile_id, device_id, request_type, meta, \
         cryptographic_id, decision, rule_set, reason, policy_version, NULL, \
         ciphertext_sha256, actor, chain_hash FROM audit WHERE id = {mid}",
        last + 1
    ))
    .await;
    t.assert_tampered("inserted row", Some(last + 1), "after the end of the chain");
    t.db.restore().await;

    // Two rows swapped (each keeps its own chain hash).
    t.db.execute(&format!("UPDATE audit SET id = -1 WHERE id = {mid}"))
        .await;
    t.db.execute(&format!(
        "UPDATE audit SET id = {mid} WHERE id = {}",
        mid + 1
    ))
    .await;
    t.db.execute(&format!("UPDATE audit SET id = {} WHERE id = -1", mid + 1))
        .await;
    t.assert_tampered("swapped rows", Some(mid), "moved");
    t.db.restore().await;

    // A row's hash replaced by another's (what recomputing without the key amounts to).
    t.db.execute(&format!(
        "UPDATE audit SET meta = REPLACE(meta, 'report', 'r3port') WHERE id = {mid}"
    ))
    .await;
    t.db.execute(&format!(
        "UPDATE audit SET chain_hash = (SELECT chain_hash FROM saved_audit WHERE id = {}) \
         WHERE id = {mid}",
        mid + 1
    ))
    .await;
    t.assert_tampered("re-hashed row", Some(mid), "does not verify");
    t.db.restore().await;

    // Rows marked as written before the chain.
    t.db.execute(&format!(
        "UPDATE audit SET chain_hash = NULL WHERE id >= {mid}"
    ))
    .await;
    t.assert_tampered("unchained rows", Some(mid), "not in the chain");
    t.db.restore().await;

    t.db.execute("DELETE FROM audit_checkpoints").await;
    t.assert_tampered(
        "deleted checkpoints",
        None,
        "every audit checkpoint is missing",
    );
    t.db.restore().await;

    t.db.execute(&format!("UPDATE audit_head SET last_id = {}", last - 1))
        .await;
    t.assert_tampered("edited head", None, "head");
    t.db.restore().await;

    t.db.execute("UPDATE audit_head SET mac = X'', checkpoint_seq = 0")
        .await;
    t.db.execute("DELETE FROM audit_checkpoints").await;
    t.assert_tampered("reset head", Some(first), "head was reset");
    t.db.restore().await;

    t.db.execute("DELETE FROM audit_head").await;
    t.assert_tampered("deleted head", None, "head row is missing");
    t.db.restore().await;
    t.assert_intact();

    // The head rolled back to an earlier (authentic) state, rows after it left: found.
    // (A whole-database rollback, rows deleted too, is the earlier log: anchor the head
    // that `verify` prints elsewhere.)
    let server = Server::start(&t.data);
    t.db.execute("DROP TABLE IF EXISTS old_head").await;
    t.db.execute("CREATE TABLE old_head AS SELECT * FROM audit_head")
        .await;
    let old_last = t.db.int("SELECT last_id FROM audit_head").await;
    decrypts(&server, t, 2, "batch/later").await;
    assert!(server.terminate());
    t.db.execute("DELETE FROM audit_head").await;
    t.db.execute("INSERT INTO audit_head SELECT * FROM old_head")
        .await;
    t.assert_tampered(
        "rolled-back head",
        Some(old_last + 1),
        "after the end of the chain",
    );

    // A server refuses to extend a chain whose head was rolled back (it would vouch for
    // the rollback).
    let mut spawned = common::spawn_serve(&t.data, &[]);
    let mut exited = None;
    for _ in 0..600 {
        if let Some(status) = spawned.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = spawned.child.kill();
    let log = std::fs::read_to_string(&spawned.log).unwrap_or_default();
    assert!(exited.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("rolled back"), "{log}");

    // The way out, once examined: a new chain after every row, the finding recorded.
    let out = t.data.kss_ok(&["audit", "restart"]);
    assert!(out.contains("restarted"), "{out}");
    let stdout = t.assert_intact();
    assert!(stdout.contains("are not covered"), "{stdout}");
    let restarts = t.audit_json(&["--type", "admin.audit_restart"]);
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0]["meta"]["first_bad_row"], old_last + 1);
    let server = Server::start(&t.data);
    decrypts(&server, t, 1, "batch/after").await;
    assert!(server.terminate());
    t.assert_intact();
    // A chain that verifies is not restarted.
    assert!(!t.data.kss(&["audit", "restart"]).status.success());
}

// ------------------------------------------------------------------ pruning

on_both_backends!(
    prune_keeps_verify_green_and_recent_nonces,
    prune_keeps_verify_green_and_recent_nonces_sqlite,
    prune_keeps_verify_green_and_recent_nonces_mariadb
);

async fn prune_keeps_verify_green_and_recent_nonces(t: &Target) {
    t.data.load_policy(POLICY);
    let skew = "3";
    let server = Server::start_with(&t.data, &["--max-clock-skew", skew]);
    let profile = decrypts(&server, t, 5, "batch/old").await;
    let old_last = t.db.int("SELECT MAX(id) FROM audit").await;
    // Older than twice the skew.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let client = server.client(&t.data).await;
    let ciphertext = encrypt_file_key(&profile, &[6u8; 32]);
    let message = sign_request(
        &profile,
        &build_request(
            &profile,
            &RequestSpec::decrypt(ciphertext, &["batch/new".to_string()]),
        ),
    );
    let first = client.approve_raw(message.clone()).await.unwrap();
    assert!(ApproveOutcome::from_response(first).approved);

    // Everything, as far as the nonces allow: only rows older than twice the skew go.
    let out = t.data.kss_ok(&[
        "audit",
        "prune",
        "--before",
        "2099-01-01",
        "--max-clock-skew",
        skew,
    ]);
    assert!(
        out.contains("pruned") && out.contains("checkpoint"),
        "{out}"
    );
    assert_eq!(t.db.int("SELECT MIN(id) FROM audit").await, old_last + 1);
    // The nonce still refuses its replay.
    let again = client.approve_raw(message).await.unwrap();
    assert_eq!(
        ApproveOutcome::from_response(again)
            .reason_name()
            .as_deref(),
        Some("replayed")
    );
    let stdout = t.assert_intact();
    assert!(stdout.contains("prune checkpoint"), "{stdout}");
    // The prune itself is in the log, with its actor.
    let prunes = t.audit_json(&["--type", "admin.audit_prune"]);
    assert_eq!(prunes.len(), 1);
    assert_eq!(prunes[0]["meta"]["through_id"], old_last);
    assert!(prunes[0]["actor"].as_str().unwrap().ends_with(" cli"));

    // Nothing old enough is left.
    let out = t
        .data
        .kss_ok(&["audit", "prune", "--before", "1h", "--max-clock-skew", skew]);
    assert!(out.contains("nothing to prune"), "{out}");
    assert!(server.terminate());

    // `kss serve --audit-retention` prunes by itself (at start, then hourly).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept_from = t.db.int("SELECT MAX(id) FROM audit").await + 1;
    let server = Server::start_with(
        &t.data,
        &["--audit-retention", "1s", "--max-clock-skew", "1"],
    );
    common::wait_until("the server's own prune", Duration::from_secs(20), || {
        let rows = t.audit_json(&["--type", "admin.audit_prune"]);
        rows.iter().any(|r| r["actor"] == "server")
    });
    assert!(t.db.int("SELECT MIN(id) FROM audit").await >= kept_from);
    t.assert_intact();

    // A tampered row in what a prune would remove: refused, nothing deleted.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = t.db.int("SELECT COUNT(*) FROM audit").await;
    let min = t.db.int("SELECT MIN(id) FROM audit").await;
    t.db.execute(&format!("UPDATE audit SET meta = '[]' WHERE id = {min}"))
        .await;
    let out = t.data.kss(&[
        "audit",
        "prune",
        "--before",
        "2099-01-01",
        "--max-clock-skew",
        skew,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("row {min}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(t.db.int("SELECT COUNT(*) FROM audit").await, before);
    drop(server);
}

// ------------------------------------------------------------------ administrative actions

on_both_backends!(
    admin_actions_are_audited_with_their_actor,
    admin_actions_are_audited_with_their_actor_sqlite,
    admin_actions_are_audited_with_their_actor_mariadb
);

async fn admin_actions_are_audited_with_their_actor(t: &Target) {
    let uid = std::fs::metadata(t.data.path()).unwrap().uid();
    let cli = format!("uid:{uid} cli");
    let socket = format!("uid:{uid} socket");
    t.data.load_policy(POLICY);
    t.data.kss_ok(&["disable"]);
    t.data.kss_ok(&["enable"]);
    let server = Server::start(&t.data);
    let profile = decrypts(&server, t, 1, "batch/a").await;
    let token_out = t
        .data
        .kss_ok(&["enrollment", "create", "--uses", "2", "--json"]);
    let created: serde_json::Value = serde_json::from_str(token_out.trim()).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let profile_id = profile.profile_id().to_hex();
    t.data
        .kss_ok(&["profile", "revoke", &profile_id, "--reason", "lost laptop"]);
    t.data.kss_ok(&["quota", "clear"]);

    let rows = t.audit_json(&[]);
    let actor_of = |action: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["request_type"] == format!("admin.{action}"))
            .map(|r| r["actor"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(actor_of("create"), std::slice::from_ref(&cli));
    assert_eq!(actor_of("policy_load"), std::slice::from_ref(&cli));
    assert_eq!(actor_of("disable"), std::slice::from_ref(&cli));
    assert_eq!(actor_of("enable"), std::slice::from_ref(&cli));
    assert_eq!(actor_of("enrollment_create"), std::slice::from_ref(&socket));
    assert_eq!(actor_of("revoke"), std::slice::from_ref(&socket));
    // Persistent counters by the CLI, in-memory ones by the server it asked.
    let mut clears = actor_of("quota_clear");
    clears.sort();
    assert_eq!(clears, [cli.clone(), socket.clone()]);
    let revoke = rows
        .iter()
        .find(|r| r["request_type"] == "admin.revoke")
        .unwrap();
    assert_eq!(revoke["profile_id"], profile_id.as_str());
    assert_eq!(revoke["meta"]["reason"], "lost laptop");
    // The enrollment's public id only, never its token.
    let enrollment = rows
        .iter()
        .find(|r| r["request_type"] == "admin.enrollment_create")
        .unwrap();
    assert_eq!(enrollment["meta"]["enrollment_id"], created["id"]);
    let everything = t.data.kss_ok(&["audit", "--json", "--limit", "1000"]);
    assert!(!everything.contains(&token));
    // Workstation requests have no actor; admin actions and requests share one chain.
    assert!(
        rows.iter()
            .filter(|r| r["request_type"] == "decrypt")
            .all(|r| r["actor"].is_null())
    );
    assert!(server.terminate());
    t.assert_intact();
}

// ------------------------------------------------------------------ listing

on_both_backends!(
    listing_escapes_control_characters_and_json_is_exact,
    listing_escapes_control_characters_and_json_is_exact_sqlite,
    listing_escapes_control_characters_and_json_is_exact_mariadb
);

async fn listing_escapes_control_characters_and_json_is_exact(t: &Target) {
    t.data.load_policy(POLICY);
    let server = Server::start(&t.data);
    let evil = "batch/x\n    42  2026-01-01T00:00:00Z  approved  fake\u{1b}[2J\r\u{7}\\";
    decrypts_decided(&server, t, 1, evil, false).await;
    assert!(server.terminate());

    let listing = t.data.kss_ok(&["audit", "--type", "decrypt"]);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        !listing.trim_end().contains(['\u{1b}', '\r', '\u{7}']),
        "{listing:?}"
    );
    assert!(listing.contains("batch/x\\n    42"), "{listing}");
    assert!(listing.contains("fake\\u{1b}[2J\\r\\u{7}\\\\"), "{listing}");

    let rows = t.audit_json(&["--type", "decrypt"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["meta"][0]["meta"], evil);
    assert_eq!(rows[0]["ciphertext_sha256"].as_str().unwrap().len(), 64);
}

// ------------------------------------------------------------------ upgrade

on_both_backends!(
    rows_from_before_the_chain_list_and_are_reported,
    rows_from_before_the_chain_list_and_are_reported_sqlite,
    rows_from_before_the_chain_list_and_are_reported_mariadb
);

/// Strips the chain as migration 0004 leaves a database from before it: rows without chain
/// hashes and actors, no checkpoint, a head that has not started.
async fn strip_the_chain(t: &Target) {
    t.db.execute("UPDATE audit SET chain_hash = NULL, actor = NULL, ciphertext_sha256 = NULL")
        .await;
    t.db.execute("DELETE FROM audit_checkpoints").await;
    t.db.execute(
        "UPDATE audit_head SET last_id = 0, last_hash = X'', checkpoint_seq = 0, \
         checkpoint_mac = X'', since_checkpoint = 0, at_ms = 0, mac = X''",
    )
    .await;
}

/// The era the stored identity is sealed in; and, with `reseal`, seals it in that era
/// first (what only the master key's holder can do).
async fn identity_era(t: &Target, reseal: Option<Era>) -> Era {
    let master = std::fs::read_to_string(t.data.path().join("master.key")).unwrap();
    let master = kss_crypto::seal::MasterKey::from_hex(&master).unwrap();
    let id: kss_crypto::ids::KeyserverId = t.id.parse().unwrap();
    let stored = SealedIdentity {
        keyserver_id: id,
        sealed_root: t
            .db
            .blob("SELECT sealed_root FROM identity WHERE singleton = 1")
            .await,
    };
    let (root, era) = stored.open_with_era(&master).unwrap();
    let Some(era) = reseal else { return era };
    let old = SealedIdentity::seal_in(&id, &root, &master, era);
    t.db.execute(&format!(
        "UPDATE identity SET sealed_root = x'{}'",
        hex::encode(&old.sealed_root)
    ))
    .await;
    era
}

/// A database upgraded from a kss without the chain: what migration 0004 leaves, with an
/// identity sealed before the chain (v2).
async fn rows_from_before_the_chain_list_and_are_reported(t: &Target) {
    t.data.load_policy(POLICY);
    let server = Server::start(&t.data);
    decrypts(&server, t, 3, "batch/old").await;
    assert!(server.terminate());
    let old = t.db.int("SELECT COUNT(*) FROM audit").await;
    assert_eq!(identity_era(t, None).await, Era::ChainStarted);
    strip_the_chain(t).await;
    identity_era(t, Some(Era::RowsMacked)).await;

    let out = t.data.kss_ok(&["audit", "verify"]);
    assert!(
        out.contains("not started") && out.contains(&format!("{old} row(s)")),
        "{out}"
    );
    assert_eq!(t.audit_json(&[]).len() as i64, old);

    // The first start writes the genesis after them, and seals the identity in the chain
    // era; new rows are chained.
    let server = Server::start(&t.data);
    decrypts(&server, t, 2, "batch/new").await;
    assert!(server.terminate());
    assert_eq!(identity_era(t, None).await, Era::ChainStarted);
    let stdout = t.assert_intact();
    assert!(
        stdout.contains(&format!(
            "{old} row(s) from before the chain (ids up to {old})"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("genesis checkpoint 1"), "{stdout}");
    let rows = t.audit_json(&[]);
    assert_eq!(rows.len() as i64, old + 3);
    assert_eq!(
        rows.iter().filter(|r| r["chained"] == false).count() as i64,
        old
    );

    // Editing a row from before the chain is not detected (it is not covered), but one
    // after is.
    t.db.execute("UPDATE audit SET meta = '[]' WHERE id = 1")
        .await;
    t.assert_intact();
    t.db.execute(&format!(
        "UPDATE audit SET meta = '[]' WHERE id = {}",
        old + 2
    ))
    .await;
    t.assert_tampered("edited after the genesis", Some(old + 2), "does not verify");
}

on_both_backends!(
    a_stripped_chain_is_not_taken_for_one_from_before_the_chain,
    a_stripped_chain_is_not_taken_for_one_from_before_the_chain_sqlite,
    a_stripped_chain_is_not_taken_for_one_from_before_the_chain_mariadb
);

/// Whoever can write the database strips every chain hash, deletes the checkpoints and
/// resets the head, so that the log looks like one from before the chain (and its rows,
/// edited at will, uncovered). The identity's seal says the chain has started: `kss audit
/// verify` fails, the server refuses to start rather than making a new genesis over the
/// rows, and only `kss audit restart` (audited, with its actor) lets it write again.
async fn a_stripped_chain_is_not_taken_for_one_from_before_the_chain(t: &Target) {
    t.data.load_policy(POLICY);
    let server = Server::start(&t.data);
    decrypts(&server, t, 3, "batch/x").await;
    assert!(server.terminate());
    let rows = t.db.int("SELECT COUNT(*) FROM audit").await;
    strip_the_chain(t).await;
    t.db.execute("UPDATE audit SET meta = '[]' WHERE id = 2")
        .await;

    t.assert_tampered("stripped", Some(1), "says it has started");
    let mut refused = common::spawn_serve(&t.data, &[]);
    let status = refused.child.wait().unwrap();
    let log = std::fs::read_to_string(&refused.log).unwrap();
    assert!(!status.success(), "served over a stripped chain");
    assert!(log.contains("chain was stripped"), "{log}");
    // Nothing was written meanwhile: no genesis, no row.
    assert_eq!(t.db.int("SELECT COUNT(*) FROM audit_checkpoints").await, 0);
    assert_eq!(t.db.int("SELECT COUNT(*) FROM audit").await, rows);

    t.data.kss_ok(&["audit", "restart"]);
    let server = Server::start(&t.data);
    decrypts(&server, t, 1, "batch/x").await;
    assert!(server.terminate());
    t.assert_intact();
}
