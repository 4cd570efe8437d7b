//! One active standalone server per data directory: the `standalone` lease, as processes.
//!
//! A second `kss serve` on the same data does not serve (no listener, no "serving on")
//! while the first one holds the lease; it takes over at once after a clean stop, and
//! after the lease expired when the first one was killed. A server that lost the lease
//! while it was paused cannot approve anything when it resumes: it is fenced off and
//! stops with an error, and the audit log holds exactly the approvals clients received.
//! The same when it keeps running but its database stalls (another connection holds
//! SQLite's write lock) until after its lease expired.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{Answer, Load};
use common::{DataDir, Server, wait_until};
use kss_client::protocol::{RequestSpec, encrypt_file_key};
use kss_client::{KssClient, Profile};
use kss_crypto::ids::KeyserverId;

const POLICY: &str = "\
decrypt:
  - - rule: meta-rule
      paths: [/batch]
";

const WAITING: &str = "is active on this data; waiting until it stops";

/// A `kss serve` that is not expected to serve right away (it waits for the lease):
/// spawned like `Server::start_with`, without waiting for its "serving on" line.
struct Waiting {
    child: Child,
    port: u16,
    log: PathBuf,
    serving: Arc<AtomicBool>,
    stdout: Arc<Mutex<String>>,
}

impl Waiting {
    fn spawn(data: &DataDir, extra: &[&str]) -> Waiting {
        let common::Spawned {
            mut child,
            port,
            log,
            ..
        } = common::spawn_serve(data, extra);
        let serving = Arc::new(AtomicBool::new(false));
        let stdout = Arc::new(Mutex::new(String::new()));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        std::thread::spawn({
            let (serving, stdout) = (Arc::clone(&serving), Arc::clone(&stdout));
            move || {
                for line in lines.map_while(Result::ok) {
                    let mut out = stdout.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                    if line.contains("serving on") {
                        serving.store(true, Ordering::SeqCst);
                    }
                }
            }
        });
        Waiting {
            child,
            port,
            log,
            serving,
            stdout,
        }
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether anything accepts TCP connections on its gRPC port.
    fn port_open(&self) -> bool {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    fn wait_waiting(&self) {
        wait_until(
            "the second server to say it waits",
            Duration::from_secs(15),
            || self.log_text().contains(WAITING),
        );
    }

    fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.serving() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the waiting server did not serve within {timeout:?}\nstdout:\n{}\nlog:\n{}",
            self.stdout_text(),
            self.log_text()
        );
    }

    /// For `watch`: it neither serves nor listens, and it is still running.
    fn still_waiting(&mut self) {
        assert!(
            !self.serving(),
            "served while another server held the lease:\n{}\n{}",
            self.stdout_text(),
            self.log_text()
        );
        assert!(
            !self.port_open(),
            "port {} accepts connections while another server holds the lease",
            self.port
        );
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the waiting server exited:\n{}",
            self.log_text()
        );
    }

    /// Asserts `still_waiting` throughout `period`.
    fn watch(&mut self, period: Duration) {
        let end = Instant::now() + period;
        while Instant::now() < end {
            self.still_waiting();
            std::thread::sleep(Duration::from_millis(100));
        }
        self.still_waiting();
    }

    async fn client(&self, data: &DataDir) -> KssClient {
        kss_client::install_crypto_provider();
        KssClient::connect(
            &format!("https://127.0.0.1:{}", self.port),
            &data.ca_pem(),
            Some("localhost"),
        )
        .await
        .unwrap()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

async fn onboard(client: &KssClient, id: &str) -> Profile {
    let id: KeyserverId = id.parse().unwrap();
    client.onboard(&id, "batch@host", None).await.unwrap()
}

fn decrypt_spec(ciphertext: &[u8]) -> RequestSpec {
    RequestSpec::decrypt(ciphertext.to_vec(), &["batch/x".to_string()])
}

#[tokio::test(flavor = "multi_thread")]
async fn second_server_waits_and_takes_over_after_a_clean_stop() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let a = Server::start(&data);
    let mut b = Waiting::spawn(&data, &[]);

    // B names the holder (A's instance: host name and process id) and waits.
    b.wait_waiting();
    let log = b.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("another kss server (") && l.contains(WAITING)),
        "{log}"
    );
    assert!(log.contains(&format!("-{}/", a.child.id())), "{log}");
    b.watch(Duration::from_secs(2));

    // A serves meanwhile.
    let client_a = a.client(&data).await;
    let profile = onboard(&client_a, &id).await;
    let file_key = [4u8; 32];
    let ciphertext = encrypt_file_key(&profile, &file_key);
    let via_a = client_a
        .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
        .await
        .unwrap();
    assert!(via_a.is_approved(), "{:?}", via_a.reason_name());
    b.still_waiting();

    // A clean stop releases the lease: B takes over (its claim is retried every 2 s).
    assert!(a.terminate(), "A did not exit cleanly after SIGTERM");
    b.wait_serving(Duration::from_secs(10));
    let line = b.stdout_text();
    assert!(
        line.contains(&format!(
            "kss keyserver {id} serving on https://127.0.0.1:{}",
            b.port
        )),
        "{line}"
    );
    let client_b = b.client(&data).await;
    assert_eq!(client_b.info().await.unwrap().keyserver_id, id);
    // The profile onboarded through A works through B.
    let via_b = client_b
        .decrypt(&profile, &ciphertext, &["batch/x".to_string()])
        .await
        .unwrap();
    assert!(via_b.is_approved(), "{:?}", via_b.reason_name());
    assert_eq!(via_b.file_key().unwrap(), &file_key[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_is_replaced_after_its_lease_expires() {
    let data = DataDir::new();
    let id = data.create();
    let lease = ["--standalone-lease-secs", "4"];
    let a = Server::start_with(&data, &lease);
    let a_pid = a.child.id();
    let mut b = Waiting::spawn(&data, &lease);
    b.wait_waiting();
    // Longer than the lease: A renews it, so B keeps waiting.
    b.watch(Duration::from_secs(6));
    assert_eq!(a.client(&data).await.info().await.unwrap().keyserver_id, id);

    // kill -9: no release; B takes over once the lease expired.
    a.kill9();
    b.wait_serving(Duration::from_secs(30));
    let client_b = b.client(&data).await;
    assert_eq!(client_b.info().await.unwrap().keyserver_id, id);
    // B also took over the admin socket A left behind.
    let status: serde_json::Value =
        serde_json::from_str(&data.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["running"], true, "{status}");
    let instance = status["instance_id"].as_str().unwrap().to_string();
    assert!(
        instance.ends_with(&format!("-{}", b.child.id())),
        "{status}"
    );
    assert!(!instance.ends_with(&format!("-{a_pid}")), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_server_that_lost_its_lease_cannot_approve() {
    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let lease = ["--standalone-lease-secs", "2"];
    let mut a = Server::start_with(&data, &lease);
    let a_pid = a.child.id();
    let client_a = a.client(&data).await;
    let profile = onboard(&client_a, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    let spec = decrypt_spec(&ciphertext);

    // Every approval a client receives, by audit id.
    let mut received = HashSet::new();
    let first = client_a.request(&profile, &spec).await.unwrap();
    assert!(first.approved, "{:?}", first.reason_name());
    received.insert(first.audit_id);

    let b = Waiting::spawn(&data, &lease);
    b.wait_waiting();

    // A pauses for longer than its lease: B takes over. (Should A be stopped in the middle
    // of a write, it holds SQLite's write lock and B cannot claim: let it finish, pause it
    // again.)
    signal(a_pid, "-STOP");
    let mut pauses = 1;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pause_end = Instant::now() + Duration::from_secs(10);
        while !b.serving() && Instant::now() < pause_end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if b.serving() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not take over from the paused A ({pauses} pauses)\nB log:\n{}",
            b.log_text()
        );
        signal(a_pid, "-CONT");
        std::thread::sleep(Duration::from_millis(200));
        signal(a_pid, "-STOP");
        pauses += 1;
    }
    b.wait_serving(Duration::from_secs(1));

    // A request reaches A while it is still paused; then A resumes. Whether its lease
    // keeper notices first (the connection goes) or its decision transaction does (fenced),
    // the request is not approved.
    let pending = tokio::spawn({
        let (client_a, profile, spec) = (client_a.clone(), profile.clone(), spec.clone());
        async move { client_a.request(&profile, &spec).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(a_pid, "-CONT");
    match pending.await.unwrap() {
        Ok(outcome) => {
            assert!(!outcome.approved, "a fenced-off server approved a request");
            assert_eq!(outcome.reason_name().as_deref(), Some("unavailable"));
        }
        Err(e) => eprintln!("request to the fenced-off server failed (acceptable): {e}"),
    }
    // Nor one sent after it resumed.
    match client_a.request(&profile, &spec).await {
        Ok(outcome) => {
            assert!(!outcome.approved, "a fenced-off server approved a request");
            assert_eq!(outcome.reason_name().as_deref(), Some("unavailable"));
        }
        Err(e) => eprintln!("request to the fenced-off server failed (acceptable): {e}"),
    }

    // A stops itself, with an error that says why.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced-off server did not stop:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exited with {status}");
    let log = a.log_text();
    assert!(
        log.contains("lost the standalone lease")
            || log.contains("fenced off")
            || log.contains("could not renew the standalone lease before it expired"),
        "{log}"
    );
    // On its way out it left B's admin socket alone: the CLI still reaches B.
    let status: serde_json::Value =
        serde_json::from_str(&data.kss_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["running"], true, "{status}");

    // B serves the profile.
    let client_b = b.client(&data).await;
    assert_eq!(client_b.info().await.unwrap().keyserver_id, id);
    let via_b = client_b.request(&profile, &spec).await.unwrap();
    assert!(via_b.approved, "{:?}", via_b.reason_name());
    received.insert(via_b.audit_id);

    // The audit log holds exactly the approvals clients received: one by A before it
    // paused, one by B; none by A after it lost the lease.
    let audited = data.audited_approvals();
    let ids: HashSet<u64> = audited.iter().map(|a| a.id).collect();
    assert_eq!(ids, received, "{audited:?}");
    let by_a = audited
        .iter()
        .filter(|a| a.instance.ends_with(&format!("-{a_pid}")))
        .count();
    assert_eq!(by_a, 1, "{audited:?}");
}

/// How long the stall of the database outlasts the holder's lease.
const STALL_PAST_EXPIRY_MS: i64 = 500;

/// A slow database rather than a paused process: another connection holds SQLite's write
/// lock (as a stuck backup tool or a `sqlite3` shell would) until a little after the
/// lease expired, so every write of the holder A waits, its lease renewals included,
/// while A itself runs and keeps taking requests. Once the lease has expired unrenewed A
/// approves nothing more, B takes over, A stops with an error, and the audit log holds
/// exactly the approvals clients received, none by A after its lease expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_whose_database_stalls_past_its_lease_approves_nothing_more() {
    stall_past_the_lease(2000, false).await;
}

/// The same with A waiting up to 5 s on its database (`--db-timeout-ms 5000`): requests
/// it took before its lease expired are still waiting when the stall ends after the
/// expiry, and reach the database then. They are fenced off too.
#[tokio::test(flavor = "multi_thread")]
async fn requests_still_waiting_when_the_lease_expired_are_not_approved() {
    stall_past_the_lease(5000, true).await;
}

/// `straddles`: some request A took before its lease expired must still be waiting when
/// the stall ends (the case the test is about).
async fn stall_past_the_lease(db_timeout_ms: u64, straddles: bool) {
    use sqlx::Connection;

    let data = DataDir::new();
    let id = data.create();
    data.load_policy(POLICY);
    let db_timeout = db_timeout_ms.to_string();
    let lease = [
        "--standalone-lease-secs",
        "2",
        "--db-timeout-ms",
        db_timeout.as_str(),
    ];
    let mut a = Server::start_with(&data, &lease);
    let a_pid = a.child.id();
    let client_a = a.client(&data).await;
    let profile = onboard(&client_a, &id).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    let spec = decrypt_spec(&ciphertext);
    let b = Waiting::spawn(&data, &lease);
    b.wait_waiting();

    // A approves under a little concurrent load.
    let load = Load::start(vec![client_a, a.client(&data).await], &profile, &spec);
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.approved() < 10 {
        assert!(
            Instant::now() < deadline,
            "A approved too little:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The database stalls: the write lock is taken, and A's lease as it stands then is
    // the last A has (nothing else can write until the lock goes).
    let mut holder = data.hold_write_lock().await;
    let (stalled_at, stalled_ms) = (Instant::now(), common::unix_ms());
    let (lease_holder, token, expires_at_ms): (String, i64, i64) =
        sqlx::query_as("SELECT holder, token, expires_at_ms FROM leases WHERE name = 'standalone'")
            .fetch_one(&mut holder)
            .await
            .unwrap();
    assert!(
        lease_holder.contains(&format!("-{a_pid}/")),
        "{lease_holder} holds the lease, not A"
    );
    // A little past the expiry: A has requests in flight still (their deadline is 2 s),
    // which reach the database once the stall ends, after the lease expired.
    while common::unix_ms() < expires_at_ms + STALL_PAST_EXPIRY_MS {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    let released_at = Instant::now();
    println!(
        "the database stalled for {:?}; A's lease (token {token}) expired {} ms into it",
        released_at - stalled_at,
        expires_at_ms - stalled_ms
    );

    // B takes over; A stops by itself, with an error that says why.
    b.wait_serving(Duration::from_secs(20));
    let b_serving_after = released_at.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "A did not stop after losing its lease:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let a_stopped_after = released_at.elapsed();
    println!(
        "after the stall: B served within {b_serving_after:?}, A stopped within \
         {a_stopped_after:?}"
    );
    let samples = load.stop().await;
    assert!(!status.success(), "A exited with {status}");
    let a_log = a.log_text();
    assert!(
        a_log.contains("lost the standalone lease")
            || a_log.contains("fenced off")
            || a_log.contains("could not renew the standalone lease"),
        "{a_log}"
    );

    // Every request to A was answered within its database deadline and a second (it
    // never hung on the stalled database); none sent after A's lease expired was approved.
    let answer_within = Duration::from_millis(db_timeout_ms) + Duration::from_secs(1);
    let mut received = HashSet::new();
    let (mut during, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
    let mut straddling = 0;
    for s in &samples {
        assert!(
            s.took <= answer_within,
            "a request to A waited {:?}: {s:?}\n{a_log}",
            s.took
        );
        if s.sent >= stalled_at && s.sent < released_at {
            during += 1;
            slowest = slowest.max(s.took);
        }
        if s.sent_ms < expires_at_ms && s.sent + s.took > released_at {
            straddling += 1;
        }
        match &s.answer {
            Answer::Approved(audit_id) => {
                assert!(
                    s.sent_ms < expires_at_ms,
                    "A approved a request sent {} ms after its lease expired: {s:?}\n{a_log}",
                    s.sent_ms - expires_at_ms
                );
                received.insert(*audit_id);
            }
            Answer::Denied(reason) => {
                assert_eq!(reason.as_deref(), Some("unavailable"), "{s:?}");
            }
            Answer::Failed(e) => failed.push(e.as_str()),
        }
    }
    println!(
        "requests to A during the stall: {during}, answered within {slowest:?}; {} failed \
         (A stopping or gone), e.g. {:?}",
        failed.len(),
        failed.first()
    );
    println!("requests sent before the expiry and answered after the stall: {straddling}");
    if straddles {
        assert!(
            straddling > 0,
            "no request A took before its lease expired was still waiting when the stall \
             ended: the test did not make its point"
        );
    }

    // B approves.
    let client_b = b.client(&data).await;
    let via_b = client_b.request(&profile, &spec).await.unwrap();
    assert!(via_b.approved, "{:?}", via_b.reason_name());
    received.insert(via_b.audit_id);

    // The audit log holds exactly the approvals clients received; A's were all decided
    // while it held the lease, before B took over.
    let audited = data.audited_approvals();
    let ids: HashSet<u64> = audited.iter().map(|a| a.id).collect();
    assert_eq!(ids, received, "{audited:?}");
    let b_pid = b.child.id();
    let first_by_b = audited
        .iter()
        .filter(|a| a.instance.ends_with(&format!("-{b_pid}")))
        .map(|a| a.id)
        .min()
        .unwrap();
    for common::AuditedApproval {
        id: audit_id,
        instance,
        at_ms,
    } in &audited
    {
        if instance.ends_with(&format!("-{a_pid}")) {
            assert!(
                *at_ms < expires_at_ms,
                "A approved {} ms after its lease expired (audit id {audit_id})\n{a_log}",
                at_ms - expires_at_ms
            );
            assert!(*audit_id < first_by_b, "A approved after B took over");
        } else {
            assert!(instance.ends_with(&format!("-{b_pid}")), "{instance}");
        }
    }
}

/// A server that fails once it holds the lease (its workstation port is taken) goes down
/// the way it does at a signal: it releases the lease (the next server need not wait out
/// the 60 s it was claimed for) and removes its admin socket.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_fails_after_taking_the_lease_releases_it() {
    use sqlx::Connection;
    let data = DataDir::new();
    data.create();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let common::Spawned { mut child, log, .. } = common::spawn_serve_on(
        &data,
        &["--standalone-lease-secs", "60"],
        &[],
        port,
        common::free_port(),
    );
    wait_until("kss serve exits", Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!child.wait().unwrap().success(), "{log}");
    assert!(
        log.contains(&format!("binding 127.0.0.1:{port}")),
        "not the port's error:\n{log}"
    );
    assert!(log.contains("standalone lease acquired"), "{log}");
    assert!(
        !data.path().join("admin.sock").exists(),
        "the admin socket is left:\n{log}"
    );
    let mut db = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        data.path().join("kss.db").display()
    ))
    .await
    .unwrap();
    let expires_at_ms: i64 =
        sqlx::query_scalar("SELECT expires_at_ms FROM leases WHERE name = 'standalone'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(expires_at_ms, 0, "the lease is still held:\n{log}");
    drop(taken);
}
