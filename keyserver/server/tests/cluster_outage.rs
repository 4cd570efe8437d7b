//! Cluster mode under failures, with real `kss serve` processes sharing one MariaDB
//! database and a steady load of concurrent decrypt requests spread over the instances:
//!
//! * The database is stopped (`scripts/mariadb.sh stop-db`) and started again, or it hangs
//!   (`freeze-db`: mariadbd stopped with SIGSTOP, every socket open, no answer) and resumes
//!   (`thaw-db`): meanwhile no request is approved, every request sent is denied as
//!   `unavailable` within 3 s and health reports NOT_SERVING; once the database answers
//!   again, every instance approves again within 5 s by itself. The same when mariadbd is
//!   killed (`kill-db`, SIGKILL) and restarted (InnoDB crash recovery): no approval a
//!   client received is missing from the recovered database.
//! * One instance of three is killed with SIGKILL: the two others keep approving, requests
//!   to the dead one fail at the transport level, and `kss instance list` shows it offline
//!   within 10 s.
//! * The same with a small persistent quota that the load exhausts: exactly the quota is
//!   approved across the cluster, the killed instance included.
//!
//! After each scenario the database is checked against what the clients received, request
//! by request (each request's nonce and the audit id of its answer): every approval a
//! client received is the approved audit record it names and is counted in the persistent
//! quota counter (approvals received ≤ approved audit records == the counter's
//! `day_used`); an approved record whose client got no approval is only ever a request
//! whose answer could be lost (in flight to the killed instance, or in flight when the
//! database stopped: its commit landed, the acknowledgement did not); no nonce was
//! accepted twice.
//!
//! Needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh); skipped without it, except where
//! `KSS_REQUIRE_MYSQL` is set (CI). The tests of this file stop the shared test database,
//! so they run one at a time (`SERIAL`), and the database is started again even when an
//! assertion fails ([`RestartDbOnDrop`]).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Launch, health, instance_list, instance_online};
use common::eventually;
use common::faults::{FakeClock, RestartDbOnDrop, Toxiproxy, db_port, mariadb_async};
use kss_client::protocol::{RequestSpec, build_request, encrypt_file_key, sign_request};
use kss_client::{ApproveOutcome, KssClient, Profile};
use serde_json::Value;
use sqlx::Connection;
use tonic_health::pb::health_check_response::ServingStatus;

/// The tests of this file take turns: one of them stops the database they all use.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An approved decrypt record of the audit.
#[derive(Debug)]
struct ApprovedRecord {
    id: u64,
    instance: String,
    nonce: Vec<u8>,
}

/// What the database says about the decrypt approvals of one profile.
#[derive(Debug)]
struct Recorded {
    approved: Vec<ApprovedRecord>,
    /// The persistent throttle counter's `day_used` for the profile.
    day_used: i64,
    /// Audit records carrying a nonce, and how many distinct nonces they carry.
    nonces: (i64, i64),
}

impl Recorded {
    fn approved(&self) -> i64 {
        i64::try_from(self.approved.len()).unwrap()
    }

    fn approved_by_instance(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for r in &self.approved {
            *out.entry(r.instance.as_str()).or_default() += 1;
        }
        out
    }
}

async fn recorded(db: &str, profile: &Profile) -> Recorded {
    let mut conn = sqlx::mysql::MySqlConnection::connect(db).await.unwrap();
    let rows: Vec<(i64, String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, instance_id, nonce FROM audit \
         WHERE decision = 'approved' AND request_type = 'decrypt' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let counters: Vec<i64> =
        sqlx::query_scalar("SELECT day_used FROM quota_counters WHERE profile_id = ?")
            .bind(profile.profile_id().to_string())
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(counters.len(), 1, "one persistent counter: {counters:?}");
    let nonces: (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT nonce) FROM audit WHERE nonce IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    Recorded {
        approved: rows
            .into_iter()
            .map(|(id, instance, nonce)| ApprovedRecord {
                id: u64::try_from(id).unwrap(),
                instance,
                nonce: nonce.expect("an approved decrypt without its nonce"),
            })
            .collect(),
        day_used: counters[0],
        nonces,
    }
}

/// The guarantee between what clients received and what the database holds:
///
/// * every approval a client received is the approved audit record it names (same id,
///   same nonce, same instance);
/// * every approved record is of a request of the load, and where the client did not
///   receive that approval, its answer was lost in a way `lost` allows;
/// * the persistent counter counts exactly the approved records;
/// * no nonce was accepted twice.
///
/// Returns how many approvals were recorded without reaching their client.
fn check_received_against_recorded(
    names: &[String],
    samples: &[Sample],
    db: &Recorded,
    lost: impl Fn(&Sample) -> bool,
) -> usize {
    let by_nonce: HashMap<&[u8], &Sample> =
        samples.iter().map(|s| (s.nonce.as_slice(), s)).collect();
    let records: HashMap<&[u8], &ApprovedRecord> = db
        .approved
        .iter()
        .map(|r| (r.nonce.as_slice(), r))
        .collect();
    let received = samples
        .iter()
        .filter(|s| s.answer == Answer::Approved)
        .count();
    println!(
        "received {received} approvals; the audit holds {} ({:?}); counter day_used {}",
        db.approved.len(),
        db.approved_by_instance(),
        db.day_used
    );
    for s in samples.iter().filter(|s| s.answer == Answer::Approved) {
        let record = records
            .get(s.nonce.as_slice())
            .unwrap_or_else(|| panic!("an approval received without its audit record: {s:?}"));
        assert_eq!(record.id, s.audit_id, "{s:?} {record:?}");
        assert_eq!(record.instance, names[s.instance], "{s:?} {record:?}");
    }
    let mut not_received = 0;
    for r in &db.approved {
        let s = by_nonce
            .get(r.nonce.as_slice())
            .unwrap_or_else(|| panic!("an approved record of no request sent: {r:?}"));
        if s.answer != Answer::Approved {
            assert!(
                lost(s),
                "approved in the audit ({r:?}) but the client got no approval: {s:?}"
            );
            not_received += 1;
        }
    }
    assert!(received <= db.approved.len());
    assert_eq!(db.approved(), db.day_used, "counter vs audit");
    assert_eq!(
        db.nonces.0, db.nonces.1,
        "a nonce accepted twice: {:?}",
        db.nonces
    );
    println!("{not_received} approvals recorded whose answer was lost");
    not_received
}

// ---------------------------------------------------------------------------- load

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Approved,
    /// Denied, with the reason's name.
    Denied(String),
    /// No answer: the call failed (transport error, gRPC status).
    Failed(String),
}

/// One request of the load: to which instance, when sent, when answered, and the answer.
#[derive(Debug, Clone)]
struct Sample {
    instance: usize,
    /// Which of the load's request specs it was sent.
    kind: usize,
    nonce: Vec<u8>,
    start: Instant,
    end: Instant,
    answer: Answer,
    /// The audit record the answer names (0 if none).
    audit_id: u64,
}

/// What the workers have received so far, per instance.
struct Live {
    approved: Vec<AtomicUsize>,
    unavailable: Vec<AtomicUsize>,
    /// `unavailable` answers to requests sent at or after `mark`.
    unavailable_since_mark: Vec<AtomicUsize>,
    quota: Vec<AtomicUsize>,
    /// The nonces of the requests answered `unavailable`, in the order answered.
    unavailable_nonces: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Set by the test (e.g. when the database is down).
    mark: std::sync::OnceLock<Instant>,
}

impl Live {
    fn approved(&self, i: usize) -> usize {
        self.approved[i].load(Ordering::SeqCst)
    }

    fn unavailable(&self, i: usize) -> usize {
        self.unavailable[i].load(Ordering::SeqCst)
    }

    fn unavailable_since_mark(&self, i: usize) -> usize {
        self.unavailable_since_mark[i].load(Ordering::SeqCst)
    }

    fn quota(&self, i: usize) -> usize {
        self.quota[i].load(Ordering::SeqCst)
    }

    fn total_approved(&self) -> usize {
        (0..self.approved.len()).map(|i| self.approved(i)).sum()
    }
}

/// Workers looping decrypt requests, worker `w` on instance `w % instances`.
struct Load {
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
    started: Instant,
}

impl Load {
    /// `pause`: how long each worker waits between two requests (after a failed call, at
    /// least 20 ms, so that a dead instance is not hammered).
    fn start(
        clients: &[KssClient],
        profile: &Profile,
        ciphertext: &[u8],
        workers: usize,
        pause: Duration,
    ) -> Load {
        let spec = RequestSpec::decrypt(ciphertext.to_vec(), &["batch/x".to_string()]);
        Load::start_specs(clients, profile, &[spec], workers, pause)
    }

    /// As [`Load::start`], worker `w` sending `specs[(w / instances) % specs.len()]`, so
    /// that every instance is sent every spec.
    fn start_specs(
        clients: &[KssClient],
        profile: &Profile,
        specs: &[RequestSpec],
        workers: usize,
        pause: Duration,
    ) -> Load {
        let n = clients.len();
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live {
            approved: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            unavailable: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            unavailable_since_mark: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            mark: std::sync::OnceLock::new(),
            quota: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            unavailable_nonces: std::sync::Mutex::new(Vec::new()),
        });
        let workers = (0..workers)
            .map(|w| {
                let instance = w % n;
                let kind = (w / n) % specs.len();
                let (client, profile, spec) = (
                    clients[instance].clone(),
                    profile.clone(),
                    specs[kind].clone(),
                );
                let (stop, live) = (Arc::clone(&stop), Arc::clone(&live));
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let body = build_request(&profile, &spec);
                        let message = sign_request(&profile, &body);
                        let start = Instant::now();
                        let (answer, audit_id) = match client.approve_raw(message).await {
                            Ok(response) => {
                                let o = ApproveOutcome::from_response(response);
                                if o.approved {
                                    assert!(
                                        !o.decryption_share.is_empty(),
                                        "approved without a share"
                                    );
                                    live.approved[instance].fetch_add(1, Ordering::SeqCst);
                                    (Answer::Approved, o.audit_id)
                                } else {
                                    let reason = o.reason_name().unwrap();
                                    if reason == "unavailable" {
                                        live.unavailable[instance].fetch_add(1, Ordering::SeqCst);
                                        live.unavailable_nonces
                                            .lock()
                                            .unwrap()
                                            .push(body.nonce.clone());
                                        if live.mark.get().is_some_and(|m| start >= *m) {
                                            live.unavailable_since_mark[instance]
                                                .fetch_add(1, Ordering::SeqCst);
                                        }
                                    } else if reason == "quota" {
                                        live.quota[instance].fetch_add(1, Ordering::SeqCst);
                                    }
                                    (Answer::Denied(reason), o.audit_id)
                                }
                            }
                            Err(e) => (Answer::Failed(e.to_string()), 0),
                        };
                        let failed = matches!(answer, Answer::Failed(_));
                        samples.push(Sample {
                            instance,
                            kind,
                            nonce: body.nonce,
                            start,
                            end: Instant::now(),
                            answer,
                            audit_id,
                        });
                        let wait = if failed {
                            pause.max(Duration::from_millis(20))
                        } else {
                            pause
                        };
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            live,
            workers,
            started: Instant::now(),
        }
    }

    /// Stops the workers (each finishes its request in flight) and returns every sample.
    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples = Vec::new();
        for w in self.workers {
            samples.extend(w.await.unwrap());
        }
        samples.sort_by_key(|s| s.end);
        samples
    }

    /// Seconds since the load started, for printing.
    fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64()
    }
}

/// Counts of answers: approved, denied by reason, failed by message.
#[derive(Debug, Default)]
struct Tally {
    approved: usize,
    denied: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
}

impl Tally {
    fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Tally {
        let mut t = Tally::default();
        for s in samples {
            match &s.answer {
                Answer::Approved => t.approved += 1,
                Answer::Denied(r) => *t.denied.entry(r.clone()).or_default() += 1,
                Answer::Failed(m) => *t.failed.entry(shorten(m)).or_default() += 1,
            }
        }
        t
    }

    fn denied(&self) -> usize {
        self.denied.values().sum()
    }

    fn failed(&self) -> usize {
        self.failed.values().sum()
    }
}

/// The start of an error message, enough to group similar ones.
fn shorten(m: &str) -> String {
    m.chars().take(100).collect()
}

fn print_tallies(
    title: &str,
    names: &[String],
    samples: &[Sample],
    keep: impl Fn(&Sample) -> bool,
) {
    println!("{title}:");
    for (i, name) in names.iter().enumerate() {
        let t = Tally::of(samples.iter().filter(|s| s.instance == i && keep(s)));
        println!(
            "  {name}: {} approved, {} denied {:?}, {} failed {:?}",
            t.approved,
            t.denied(),
            t.denied,
            t.failed(),
            t.failed
        );
    }
}

// --------------------------------------------------------------------------- tests

/// How the database goes away and comes back (`scripts/mariadb.sh` commands).
struct Outage {
    begin: &'static str,
    end: &'static str,
}

/// The longest a request sent during an outage may wait for its answer (`kss serve
/// --db-timeout-ms` 2000 for all of its waits on the database, and 250 ms of grace).
const ANSWER_DURING_OUTAGE_WITHIN: Duration = Duration::from_secs(3);

/// Two instances under load; the database stops for a few seconds and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_restart_under_load_denies_then_recovers_within_5s() {
    outage_under_load(Outage {
        begin: "stop-db",
        end: "start-db",
    })
    .await;
}

/// Two instances under load; the database hangs (SIGSTOP: its sockets stay open and
/// nothing answers) for a few seconds and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_hang_under_load_denies_within_3s_then_recovers_within_5s() {
    outage_under_load(Outage {
        begin: "freeze-db",
        end: "thaw-db",
    })
    .await;
}

/// Two instances under load; mariadbd is killed with SIGKILL (no clean shutdown: the
/// commits in flight are lost or recovered by InnoDB) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_crash_under_load_loses_no_returned_approval() {
    outage_under_load(Outage {
        begin: "kill-db",
        end: "start-db",
    })
    .await;
}

async fn outage_under_load(outage: Outage) {
    const WORKERS: usize = 16;
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(2, 100_000).await else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let health_clients = cluster.health_clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    for h in &health_clients {
        assert_eq!(health(h).await, Some(ServingStatus::Serving));
    }

    let load = Load::start(&clients, &profile, &ciphertext, WORKERS, Duration::ZERO);
    let every_instance_approved = eventually(Duration::from_secs(30), async || {
        (0..names.len()).all(|i| load.live.approved(i) > 0)
    })
    .await;
    assert!(
        every_instance_approved,
        "an instance approved nothing before the outage:\n{}",
        cluster.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The outage. From here on, the database is started again whatever happens.
    let restart_guard = RestartDbOnDrop;
    let stop_called = Instant::now();
    mariadb_async(outage.begin).await;
    let stop_returned = Instant::now();
    println!(
        "{} at {:.2} s, returned at {:.2} s",
        outage.begin,
        load.at(stop_called),
        load.at(stop_returned)
    );
    load.live.mark.set(stop_returned).unwrap();
    let approved_at_stop: Vec<usize> = (0..names.len()).map(|i| load.live.approved(i)).collect();
    // Away for at least 6 s (so that requests sent in its first 3 s are bounded below), and until every instance both reports NOT_SERVING and has
    // answered `unavailable` to a request sent after the outage began (bounded: a hang
    // fails the assertions below).
    let mut not_serving_after: Vec<Option<Duration>> = vec![None; names.len()];
    let mut unavailable_after: Vec<Option<Duration>> = vec![None; names.len()];
    let mut unavailable_to_new_after: Vec<Option<Duration>> = vec![None; names.len()];
    let outage_deadline = stop_returned + Duration::from_secs(45);
    loop {
        for i in 0..names.len() {
            if not_serving_after[i].is_none()
                && health(&health_clients[i]).await == Some(ServingStatus::NotServing)
            {
                not_serving_after[i] = Some(stop_returned.elapsed());
            }
            if unavailable_after[i].is_none() && load.live.unavailable(i) > 0 {
                unavailable_after[i] = Some(stop_returned.elapsed());
            }
            if unavailable_to_new_after[i].is_none() && load.live.unavailable_since_mark(i) > 0 {
                unavailable_to_new_after[i] = Some(stop_returned.elapsed());
            }
        }
        let all_seen = not_serving_after.iter().all(Option::is_some)
            && unavailable_to_new_after.iter().all(Option::is_some);
        if (all_seen && stop_returned.elapsed() >= Duration::from_secs(6))
            || Instant::now() >= outage_deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, name) in names.iter().enumerate() {
        println!(
            "instance {name} (times from stop-db returning): NOT_SERVING after {:?}, first `unavailable` \
             answer after {:?}, first to a request sent after the outage began after {:?}",
            not_serving_after[i], unavailable_after[i], unavailable_to_new_after[i]
        );
    }
    let approved_during_outage: Vec<usize> = (0..names.len())
        .map(|i| load.live.approved(i) - approved_at_stop[i])
        .collect();

    let start_called = Instant::now();
    mariadb_async(outage.end).await;
    let start_returned = Instant::now();
    println!(
        "{} at {:.2} s, returned at {:.2} s (database away {:.2} s)",
        outage.end,
        load.at(start_called),
        load.at(start_returned),
        start_called.duration_since(stop_returned).as_secs_f64()
    );
    // Approving again, and SERVING again, on every instance.
    let approved_at_start: Vec<usize> = (0..names.len()).map(|i| load.live.approved(i)).collect();
    let live = Arc::clone(&load.live);
    let recovered = eventually(Duration::from_secs(15), async || {
        (0..names.len()).all(|i| live.approved(i) > approved_at_start[i])
    })
    .await;
    let mut serving_after = vec![None; names.len()];
    for (i, h) in health_clients.iter().enumerate() {
        if eventually(Duration::from_secs(15), async || {
            health(h).await == Some(ServingStatus::Serving)
        })
        .await
        {
            serving_after[i] = Some(start_returned.elapsed());
        }
    }
    // The registry too: both instances online again (their heartbeats resumed).
    let dir = cluster.dirs[0].path();
    let mut last_list = Value::Null;
    let listed_online = eventually(Duration::from_secs(10), async || {
        last_list = instance_list(dir.clone()).await;
        last_list["online"] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    drop(restart_guard);
    assert!(listed_online, "instances not online again: {last_list}");

    print_tallies("before the outage", &names, &samples, |s| {
        s.end < stop_called
    });
    print_tallies(
        "sent and answered while the database was down",
        &names,
        &samples,
        |s| s.start >= stop_returned && s.end <= start_called,
    );
    print_tallies(
        "answered while the database was down",
        &names,
        &samples,
        |s| s.end >= stop_returned && s.end <= start_called,
    );
    print_tallies("answered after start-db", &names, &samples, |s| {
        s.end > start_called
    });
    let unavailable_latency = samples
        .iter()
        .filter(|s| s.answer == Answer::Denied("unavailable".into()))
        .map(|s| s.end - s.start)
        .max();
    println!("slowest `unavailable` answer: {unavailable_latency:?}");

    // While the database was down: nothing approved, every instance said `unavailable`
    // (or the call failed), and health said NOT_SERVING.
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start >= stop_returned && s.end <= start_called)
        .collect();
    let mut waits: Vec<Duration> = during.iter().map(|s| s.end - s.start).collect();
    waits.sort();
    if !waits.is_empty() {
        println!(
            "{} requests sent and answered while the database was down: answered in {:?} (min), {:?} (median), {:?} (max)",
            waits.len(),
            waits[0],
            waits[waits.len() / 2],
            waits[waits.len() - 1]
        );
    }
    for s in &during {
        assert!(
            matches!(&s.answer, Answer::Denied(r) if r == "unavailable")
                || matches!(s.answer, Answer::Failed(_)),
            "while the database was down, {} answered {:?}",
            names[s.instance],
            s.answer
        );
        assert!(
            s.end - s.start <= ANSWER_DURING_OUTAGE_WITHIN,
            "while the database was away, {} took {:?} to answer (at most {:?}):\n{}",
            names[s.instance],
            s.end - s.start,
            ANSWER_DURING_OUTAGE_WITHIN,
            cluster.logs()
        );
    }
    // Every request sent while the database was away is answered within the bound, also
    // those still waiting when it came back (a request held until then would miss it).
    let bound_applies_until = start_called
        .checked_sub(ANSWER_DURING_OUTAGE_WITHIN)
        .unwrap_or(stop_returned);
    let slowest = samples
        .iter()
        .filter(|s| s.start >= stop_returned && s.start <= bound_applies_until)
        .max_by_key(|s| s.end - s.start);
    if let Some(s) = slowest {
        println!(
            "slowest answer to a request sent during the outage: {:?}",
            s.end - s.start
        );
        assert!(
            s.end - s.start <= ANSWER_DURING_OUTAGE_WITHIN,
            "a request sent during the outage waited {:?} for {} (at most {:?}):\n{}",
            s.end - s.start,
            names[s.instance],
            ANSWER_DURING_OUTAGE_WITHIN,
            cluster.logs()
        );
    }
    // An approval answered after the outage began was committed before; it can only be
    // the answer of a request sent before.
    for s in samples
        .iter()
        .filter(|s| s.answer == Answer::Approved && s.end > stop_returned && s.end <= start_called)
    {
        assert!(
            s.start < stop_returned,
            "approval of a request sent while the database was down: {s:?}"
        );
    }
    for i in 0..names.len() {
        assert!(
            approved_during_outage[i] <= WORKERS,
            "instance {} approved {} requests while the database was down",
            names[i],
            approved_during_outage[i]
        );
        assert!(
            unavailable_to_new_after[i].is_some(),
            "instance {} never answered `unavailable` while the database was down:\n{}",
            names[i],
            cluster.logs()
        );
        assert!(
            not_serving_after[i].is_some(),
            "instance {} never reported NOT_SERVING while the database was down",
            names[i]
        );
    }

    // Back within 5 s of the database, on every instance.
    assert!(
        recovered,
        "not every instance approved again:\n{}",
        cluster.logs()
    );
    for i in 0..names.len() {
        let first = samples
            .iter()
            .filter(|s| s.instance == i && s.answer == Answer::Approved && s.end > start_called)
            .map(|s| s.end)
            .min()
            .unwrap();
        let after = first.saturating_duration_since(start_returned);
        println!(
            "instance {}: first approval {:.3} s after the database was back ({:.3} s after it was called); SERVING after {:?}",
            names[i],
            after.as_secs_f64(),
            first.duration_since(start_called).as_secs_f64(),
            serving_after[i]
        );
        assert!(
            after <= Duration::from_secs(5),
            "instance {} approved again only {after:?} after the database returned:\n{}",
            names[i],
            cluster.logs()
        );
        assert!(
            serving_after[i].is_some(),
            "instance {} did not report SERVING again",
            names[i]
        );
    }

    // Whatever a client received is recorded and counted; denials were only `unavailable`
    // (or `replayed`: a retried batch whose commit had landed unacknowledged).
    let all = Tally::of(&samples);
    for reason in all.denied.keys() {
        assert!(
            reason == "unavailable" || reason == "replayed",
            "unexpected denials: {:?}",
            all.denied
        );
    }
    // An approval can be recorded without reaching its client only for a request in flight
    // when the database stopped (its commit landed, the acknowledgement did not).
    let db = recorded(&cluster.db, &profile).await;
    let lost = check_received_against_recorded(&names, &samples, &db, |s| {
        s.start < stop_returned && s.end > stop_called
    });
    assert!(lost <= WORKERS, "{lost} approvals lost");
    cluster.finish().await;
}

/// Three instances under load; one is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_instance_under_load_leaves_the_others_approving() {
    const WORKERS: usize = 18;
    const KILLED: usize = 2;
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(3, 100_000).await else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);
    let list = instance_list(cluster.dirs[0].path()).await;
    assert_eq!(list["online"], 3, "{list}");

    let load = Load::start(&clients, &profile, &ciphertext, WORKERS, Duration::ZERO);
    let every_instance_approved = eventually(Duration::from_secs(30), async || {
        (0..names.len()).all(|i| load.live.approved(i) > 0)
    })
    .await;
    assert!(every_instance_approved, "an instance approved nothing");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kill_called = Instant::now();
    cluster.kill9(KILLED);
    let killed = Instant::now();
    let killed_at_ms = common::unix_ms();
    println!(
        "killed instance {} at {:.2} s",
        names[KILLED],
        load.at(killed)
    );

    // Shown offline within 10 s (heartbeats stop), through a survivor's data dir. The
    // poll itself may lag on a loaded machine; the bound is checked on the registry's
    // own answer below.
    let survivor_dir = cluster.dirs[0].path();
    let mut last_list = Value::Null;
    let offline = eventually(Duration::from_secs(30), async || {
        last_list = instance_list(survivor_dir.clone()).await;
        !instance_online(&last_list, &names[KILLED])
    })
    .await;
    let seen_after = killed.elapsed();
    let shown_after = last_list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == names[KILLED])
        .map(|i| common::shown_offline_after(i, killed_at_ms));
    println!(
        "instance {} shown offline {shown_after:?} after the kill (seen by the poll after {:.1} s)",
        names[KILLED],
        seen_after.as_secs_f64()
    );
    let remaining = Duration::from_secs(3).saturating_sub(killed.elapsed());
    tokio::time::sleep(remaining).await;
    let samples = load.finish().await;
    print_tallies("before the kill", &names, &samples, |s| s.end < kill_called);
    print_tallies("sent after the kill", &names, &samples, |s| {
        s.start >= killed
    });

    assert!(
        offline,
        "instance {} still online: {last_list}",
        names[KILLED]
    );
    let shown_after = shown_after.unwrap();
    assert!(
        shown_after <= Duration::from_secs(10),
        "shown offline only {shown_after:?} after the kill: {last_list}"
    );
    assert_eq!(last_list["online"], 2, "{last_list}");
    for (i, name) in names.iter().enumerate() {
        if i != KILLED {
            assert!(instance_online(&last_list, name), "{last_list}");
        }
    }
    // The survivors keep approving; the dead one answers nothing.
    for (i, name) in names.iter().enumerate() {
        let after = Tally::of(
            samples
                .iter()
                .filter(|s| s.instance == i && s.start >= killed),
        );
        if i == KILLED {
            assert_eq!(after.approved + after.denied(), 0, "{name}: {after:?}");
            assert!(after.failed() > 0, "{name}: {after:?}");
        } else {
            assert!(
                after.approved > 0,
                "{name} approved nothing after the kill: {after:?}"
            );
            assert_eq!(after.failed(), 0, "{name}: {after:?}");
            assert_eq!(after.denied(), 0, "{name}: {after:?}");
        }
    }

    // Every received approval is recorded and counted. Only the killed instance can have
    // committed approvals whose answer was lost: at most one per worker on it.
    let db = recorded(&cluster.db, &profile).await;
    let lost = check_received_against_recorded(&names, &samples, &db, |s| {
        s.instance == KILLED && matches!(s.answer, Answer::Failed(_)) && s.start < killed
    });
    assert!(
        lost <= WORKERS.div_ceil(names.len()),
        "{lost} approvals lost"
    );
    cluster.finish().await;
}

/// Three instances under load against a small persistent quota; one is killed with
/// SIGKILL halfway through: the cluster still approves exactly the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_instance_under_load_keeps_a_small_quota_exact() {
    const PER_DAY: i64 = 300;
    const WORKERS: usize = 12;
    const KILLED: usize = 1;
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(3, PER_DAY as u64).await else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[4u8; 32]);

    // Paced, so that the kill lands while the quota is being used.
    let load = Load::start(
        &clients,
        &profile,
        &ciphertext,
        WORKERS,
        Duration::from_millis(20),
    );
    let live = Arc::clone(&load.live);
    let halfway = eventually(Duration::from_secs(30), async || {
        live.total_approved() >= (PER_DAY / 3) as usize
    })
    .await;
    assert!(halfway, "the load did not get going:\n{}", cluster.logs());
    cluster.kill9(KILLED);
    let killed = Instant::now();
    let approved_at_kill = live.total_approved();
    println!(
        "killed instance {} at {:.2} s, {approved_at_kill} approvals received",
        names[KILLED],
        load.at(killed)
    );
    // Until every survivor is refused for quota, then a little more.
    let exhausted = eventually(Duration::from_secs(30), async || {
        (0..names.len())
            .filter(|i| *i != KILLED)
            .all(|i| live.quota(i) > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    print_tallies("whole run", &names, &samples, |_| true);
    print_tallies("sent after the kill", &names, &samples, |s| {
        s.start >= killed
    });
    assert!(exhausted, "the quota was never exhausted");
    assert!(
        approved_at_kill < PER_DAY as usize,
        "the quota was used up before the kill"
    );

    // Exactly the quota, the approvals decided by the killed instance included; only its
    // requests in flight at the kill can have been approved without their answer.
    let db = recorded(&cluster.db, &profile).await;
    let lost = check_received_against_recorded(&names, &samples, &db, |s| {
        s.instance == KILLED && matches!(s.answer, Answer::Failed(_)) && s.start < killed
    });
    assert_eq!(db.approved(), PER_DAY, "{:?}", db.approved_by_instance());
    assert_eq!(db.day_used, PER_DAY);
    assert!(
        lost <= WORKERS.div_ceil(names.len()),
        "{lost} approvals lost"
    );
    // After the kill: the survivors answered (approved, then quota), the dead one did not.
    for (i, name) in names.iter().enumerate() {
        let after = Tally::of(
            samples
                .iter()
                .filter(|s| s.instance == i && s.start >= killed),
        );
        if i == KILLED {
            assert_eq!(after.approved + after.denied(), 0, "{name}: {after:?}");
        } else {
            assert_eq!(after.failed(), 0, "{name}: {after:?}");
            assert!(
                after.denied.keys().all(|r| r == "quota"),
                "{name}: {after:?}"
            );
        }
    }
    cluster.finish().await;
}

/// Two instances under load on one profile with a persistent quota (every decision locks
/// its counter row); instance a's traffic to the database is blackholed (nothing passes,
/// no connection closes) while it holds row locks. The database frees a's locks when its
/// session has been idle inside a transaction for 5 s (`idle_transaction_timeout`),
/// so b approves again within 8 s; a answers `unavailable` within 3 s the whole time; once
/// healed, a approves again within 5 s; every approval a client received is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_instance_holding_locks_does_not_stop_the_others() {
    const WORKERS: usize = 16;
    let _serial = SERIAL.lock().await;
    let Some(toxi) = Toxiproxy::start() else {
        return;
    };
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(std::env::var_os("KSS_REQUIRE_MYSQL").is_none());
        common::skipped("blackhole test: KSS_TEST_MYSQL_URL not set");
        return;
    };
    let upstream = db_port(&url);
    let proxied = toxi.proxy("kss-a", upstream);
    let Some(cluster) = Cluster::start_via(2, 1_000_000, |i, db| {
        if i == 0 {
            db.replacen(&format!(":{upstream}/"), &format!(":{proxied}/"), 1)
        } else {
            db.to_string()
        }
    })
    .await
    else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[6u8; 32]);
    let load = Load::start(&clients, &profile, &ciphertext, WORKERS, Duration::ZERO);
    let both_approved = eventually(Duration::from_secs(30), async || {
        (0..names.len()).all(|i| load.live.approved(i) > 0)
    })
    .await;
    assert!(both_approved, "not both approving:\n{}", cluster.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // From when the toxics are in place (the CLI may take a while on a loaded machine).
    toxi.blackhole("kss-a");
    let cut = Instant::now();
    let approved_b_at_cut = load.live.approved(1);
    let b_back = eventually(Duration::from_secs(15), async || {
        load.live.approved(1) > approved_b_at_cut + 10
    })
    .await;
    let b_back_after = cut.elapsed();
    // What the operator asks a meanwhile: its admin Status still answers, in time, and
    // says that the database is not reachable.
    let a_dir = kss_server::data_dir::DataDir {
        root: cluster.dirs[0].path(),
        master_key: cluster.dirs[0].path().join("master.key"),
        db_uri: None,
        db_ca_file: None,
        given_db_uri_file: None,
    };
    let mut admin = kss_server::commands::admin_client::connect(&a_dir)
        .await
        .expect("a's admin socket");
    let asked = Instant::now();
    let a_status = admin
        .status(kss_proto::v1::StatusRequest {})
        .await
        .expect("a's admin Status during the cut")
        .into_inner();
    let status_took = asked.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healed = Instant::now();
    toxi.heal("kss-a");
    let approved_a_at_heal = load.live.approved(0);
    let a_back = eventually(Duration::from_secs(15), async || {
        load.live.approved(0) > approved_a_at_heal
    })
    .await;
    let a_back_after = healed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    print_tallies("while a was cut off", &names, &samples, |s| {
        s.start >= cut && s.end <= healed
    });
    println!(
        "b approving again {b_back_after:?} after a was cut off; a approving again {a_back_after:?} after the heal"
    );
    assert!(
        b_back,
        "b did not approve again while a was cut off:\n{}",
        cluster.logs()
    );
    assert!(
        b_back_after <= Duration::from_secs(8),
        "b approved again only {b_back_after:?} after a was cut off"
    );
    assert!(
        !a_status.database_reachable && a_status.profiles == 0,
        "a's Status during the cut: {a_status:?}"
    );
    assert!(
        status_took <= ANSWER_DURING_OUTAGE_WITHIN,
        "a's Status took {status_took:?} during the cut"
    );
    assert!(
        a_back,
        "a did not approve again after the heal:\n{}",
        cluster.logs()
    );
    assert!(
        a_back_after <= Duration::from_secs(5),
        "a approved again only {a_back_after:?} after the heal"
    );
    // While cut off, a approved nothing it had not committed before, and answered in time.
    for s in samples
        .iter()
        .filter(|s| s.instance == 0 && s.start >= cut && s.end <= healed)
    {
        assert!(
            matches!(&s.answer, Answer::Denied(r) if r == "unavailable"),
            "a answered {:?} while cut off",
            s.answer
        );
        assert!(
            s.end - s.start <= ANSWER_DURING_OUTAGE_WITHIN,
            "a took {:?} to answer while cut off",
            s.end - s.start
        );
    }
    let db = recorded(&cluster.db, &profile).await;
    let lost = check_received_against_recorded(&names, &samples, &db, |s| {
        s.instance == 0 && s.start < cut && s.end > cut
    });
    assert!(lost <= WORKERS, "{lost} approvals lost");
    cluster.finish().await;
}

/// How many of `nonces` the audit holds as approved.
async fn approved_among(db: &str, nonces: &[Vec<u8>]) -> usize {
    if nonces.is_empty() {
        return 0;
    }
    let mut conn = sqlx::mysql::MySqlConnection::connect(db).await.unwrap();
    let mut approved = 0;
    for chunk in nonces.chunks(500) {
        let mut q = sqlx::QueryBuilder::new(
            "SELECT COUNT(*) FROM audit WHERE decision = 'approved' AND nonce IN (",
        );
        let mut list = q.separated(", ");
        for n in chunk {
            list.push_bind(n.as_slice());
        }
        q.push(")");
        let n: i64 = q.build_query_scalar().fetch_one(&mut conn).await.unwrap();
        approved += usize::try_from(n).unwrap();
    }
    approved
}

/// Three instances under load on a persistent quota, each reaching the database through
/// its own toxiproxy; what they receive from it is cut (downstream only) for 2.5 s at a
/// time while what they send still arrives, so that a commit can land with its
/// acknowledgement lost (when the cut falls while a COMMIT is in flight: one statement
/// of a transaction's ten or so, hence three instances cut at once, and as many cuts as it
/// takes). Such a request is answered `unavailable` within 3 s (never approved), its
/// approval is audited and counted in the quota counter (over-counting, never
/// under-counting), and every instance approves again within 5 s of each heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_commit_acknowledgement_is_audited_counted_and_answered_unavailable() {
    const INSTANCES: usize = 3;
    const WORKERS: usize = 18;
    const MAX_CUTS: usize = 30;
    let _serial = SERIAL.lock().await;
    let Some(toxi) = Toxiproxy::start() else {
        return;
    };
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(std::env::var_os("KSS_REQUIRE_MYSQL").is_none());
        common::skipped("lost acknowledgement test: KSS_TEST_MYSQL_URL not set");
        return;
    };
    let upstream = db_port(&url);
    let proxy_names: Vec<String> = (0..INSTANCES)
        .map(|i| format!("kss-{}", char::from(b'a' + u8::try_from(i).unwrap())))
        .collect();
    let proxied: Vec<u16> = proxy_names
        .iter()
        .map(|name| toxi.proxy(name, upstream))
        .collect();
    let Some(cluster) = Cluster::start_via(INSTANCES, 1_000_000, |i, db| {
        db.replacen(&format!(":{upstream}/"), &format!(":{}/", proxied[i]), 1)
    })
    .await
    else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[8u8; 32]);
    let load = Load::start(&clients, &profile, &ciphertext, WORKERS, Duration::ZERO);
    let all_approved = eventually(Duration::from_secs(30), async || {
        (0..INSTANCES).all(|i| load.live.approved(i) > 0)
    })
    .await;
    assert!(all_approved, "not all approving:\n{}", cluster.logs());

    let mut cuts = Vec::new();
    let mut lost_acks = 0;
    let mut back_after = Vec::new();
    while lost_acks == 0 && cuts.len() < MAX_CUTS {
        for name in &proxy_names {
            toxi.cut_downstream(name);
        }
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let healed = Instant::now();
        for name in &proxy_names {
            toxi.heal_downstream(name);
        }
        cuts.push((cut, healed));
        let approved_at_heal: Vec<usize> = (0..INSTANCES).map(|i| load.live.approved(i)).collect();
        let back = eventually(Duration::from_secs(15), async || {
            (0..INSTANCES).all(|i| load.live.approved(i) > approved_at_heal[i])
        })
        .await;
        assert!(
            back,
            "not every instance approved again after the heal:\n{}",
            cluster.logs()
        );
        back_after.push(healed.elapsed());
        let unavailable = load.live.unavailable_nonces.lock().unwrap().clone();
        lost_acks = approved_among(&cluster.db, &unavailable).await;
    }
    let samples = load.finish().await;
    let during_a_cut = |s: &Sample| cuts.iter().any(|(c, h)| s.start >= *c && s.end <= *h);
    print_tallies(
        "while the acknowledgements were cut",
        &names,
        &samples,
        during_a_cut,
    );
    println!(
        "{} cuts; {lost_acks} approvals committed while their client was told unavailable; all back after {back_after:?}",
        cuts.len()
    );
    assert!(
        lost_acks > 0,
        "no commit landed with its acknowledgement lost in {MAX_CUTS} cuts"
    );
    for after in &back_after {
        assert!(
            *after <= Duration::from_secs(5),
            "approving again only {after:?} after a heal"
        );
    }
    for s in samples.iter().filter(|s| during_a_cut(s)) {
        assert!(
            s.answer == Answer::Approved
                || matches!(&s.answer, Answer::Denied(r) if r == "unavailable"),
            "answered {:?} while the acknowledgements were cut",
            s.answer
        );
        assert!(
            s.end - s.start <= ANSWER_DURING_OUTAGE_WITHIN,
            "{:?} to answer while the acknowledgements were cut",
            s.end - s.start
        );
    }
    // Recorded but not received: only requests told `unavailable` (the lost
    // acknowledgements, and commits that landed just as their deadline passed); the
    // counter counts every approved record.
    let db = recorded(&cluster.db, &profile).await;
    let lost = check_received_against_recorded(
        &names,
        &samples,
        &db,
        |s| matches!(&s.answer, Answer::Denied(r) if r == "unavailable"),
    );
    assert!(lost >= lost_acks, "{lost} < {lost_acks}");
    cluster.finish().await;
}

/// Approved decrypts of the audit by (rule set, hour of the database's clock).
async fn approvals_by_rule_set_and_hour(db: &str) -> BTreeMap<(i64, i64), i64> {
    let mut conn = sqlx::mysql::MySqlConnection::connect(db).await.unwrap();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT rule_set, at_ms DIV 3600000 AS hour, COUNT(*) FROM audit \
         WHERE decision = 'approved' AND request_type = 'decrypt' \
         GROUP BY rule_set, hour",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|(r, h, n)| ((r, h), n)).collect()
}

/// Two instances on persistent hourly quotas: one small (`/small`, exhausted first), one
/// too large to reach (`/big`). Instance a's clock starts a minute before the end of its
/// hour and jumps 90 s forward, across the hour boundary, while b's and the database's
/// stay in the hour; later it jumps back. Quota windows follow the database's clock, so:
/// a approves no `/small` in "its" new hour (no over-approval), b keeps approving `/big`
/// although a wrote the counters meanwhile (no window stuck denying), a approves `/big`
/// before and after jumping back, and the audit holds exactly the small quota per hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_jump_across_an_hour_boundary_neither_over_approves_nor_sticks() {
    const SMALL_PER_HOUR: i64 = 30;
    const WORKERS: usize = 8;
    let _serial = SERIAL.lock().await;
    let clock_dir = tempfile::tempdir().unwrap();
    // a's clock: a minute before the end of the real hour (a negative offset in the last
    // minute of one), so that the jump crosses into the next hour.
    let now_s = common::unix_ms() / 1000;
    let before_end = 3600 - now_s.rem_euclid(3600) - 60;
    let Some(clock) = FakeClock::new(clock_dir.path(), before_end) else {
        return;
    };
    let policy = format!(
        "decrypt:\n  - - rule: meta-rule\n      paths: [/small]\n    - rule: per-profile-throttle-rule\n      per_hour: {SMALL_PER_HOUR}\n      persistent: true\n  - - rule: meta-rule\n      paths: [/big]\n    - rule: per-profile-throttle-rule\n      per_hour: 1000000\n      persistent: true\n"
    );
    let Some(cluster) = Cluster::launch(2, &policy, |i, db| Launch {
        db: db.to_string(),
        // a's clock is up to an hour from its clients'.
        extra: vec!["--max-clock-skew".into(), "7200".into()],
        // a logs its heartbeats (every second): its log's timestamps show its clock.
        env: if i == 0 {
            let mut env = clock.env();
            env.push((
                "RUST_LOG".into(),
                "info,kss_server::membership=debug".into(),
            ));
            env
        } else {
            Vec::new()
        },
    })
    .await
    else {
        return;
    };
    let names = cluster.names.clone();
    let clients = cluster.clients().await;
    let profile = cluster.onboard(&clients[0]).await;
    let ciphertext = encrypt_file_key(&profile, &[7u8; 32]);
    let small = RequestSpec::decrypt(ciphertext.clone(), &["small/x".to_string()]);
    let big = RequestSpec::decrypt(ciphertext, &["big/x".to_string()]);
    let load = Load::start_specs(&clients, &profile, &[small, big], WORKERS, Duration::ZERO);
    let exhausted = eventually(Duration::from_secs(30), async || {
        (0..names.len()).all(|i| load.live.quota(i) > 0 && load.live.approved(i) > 0)
    })
    .await;
    assert!(
        exhausted,
        "the small quota was not exhausted:\n{}",
        cluster.logs()
    );

    // The jump, and a second for the library's cache to see it.
    clock.set(before_end + 90);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let jumped = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jumped_back = Instant::now();
    clock.set(before_end);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    print_tallies("small, while a's clock was ahead", &names, &samples, |s| {
        s.kind == 0 && s.start >= jumped && s.end <= jumped_back
    });
    print_tallies("big, while a's clock was ahead", &names, &samples, |s| {
        s.kind == 1 && s.start >= jumped && s.end <= jumped_back
    });
    print_tallies("big, after a's clock jumped back", &names, &samples, |s| {
        s.kind == 1 && s.start >= settled
    });

    // a's own clock did jump: it said so in the timestamps of its log lines.
    let log = cluster.server(0).log_text();
    assert!(
        log.contains(&hour_stamp(now_s + before_end + 90 + 30)),
        "a's log shows no time in the hour after the jump:\n{log}"
    );

    let during = |i: usize, kind: usize, from: Instant, to: Instant| {
        Tally::of(
            samples
                .iter()
                .filter(|s| s.instance == i && s.kind == kind && s.start >= from && s.end <= to),
        )
    };
    for (i, name) in names.iter().enumerate() {
        let small = during(i, 0, jumped, jumped_back);
        assert_eq!(
            small.approved, 0,
            "{name} approved /small while a's clock was ahead: {small:?}"
        );
        assert!(
            small.denied.get("quota").is_some_and(|n| *n > 0),
            "{name}: {small:?}"
        );
        let big = during(i, 1, jumped, jumped_back);
        assert!(
            big.approved > 0,
            "{name} stuck denying /big while a's clock was ahead: {big:?}"
        );
        assert_eq!(
            big.denied(),
            0,
            "{name} denied /big while a's clock was ahead: {big:?}"
        );
        let after = during(i, 1, settled, Instant::now());
        assert!(
            after.approved > 0,
            "{name} stuck denying /big after a's clock jumped back: {after:?}"
        );
        assert_eq!(
            after.denied(),
            0,
            "{name} denied /big after a's clock jumped back: {after:?}"
        );
    }

    // Never more than the small quota in an hour of the database's clock, and exactly it
    // in the hour it was exhausted in (were the run to cross a real hour boundary, the
    // next hour's count may be partial); every approval a client received is recorded.
    let by_hour = approvals_by_rule_set_and_hour(&cluster.db).await;
    println!("approvals by (rule set, hour): {by_hour:?}");
    let small_hours: Vec<i64> = by_hour
        .iter()
        .filter(|((r, _), _)| *r == 0)
        .map(|(_, n)| *n)
        .collect();
    assert!(
        small_hours.iter().all(|n| *n <= SMALL_PER_HOUR),
        "more small approvals in an hour than its quota: {by_hour:?}"
    );
    assert_eq!(
        small_hours.iter().max(),
        Some(&SMALL_PER_HOUR),
        "{by_hour:?}"
    );
    let received_small = samples
        .iter()
        .filter(|s| s.kind == 0 && s.answer == Answer::Approved)
        .count();
    let recorded_small: i64 = by_hour
        .iter()
        .filter(|((r, _), _)| *r == 0)
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(i64::try_from(received_small).unwrap(), recorded_small);
    cluster.finish().await;
}

/// `YYYY-MM-DDTHH:` of `unix_s` in UTC: the start of a log line's timestamp in that hour.
fn hour_stamp(unix_s: i64) -> String {
    let t = jiff::Timestamp::from_second(unix_s).unwrap();
    t.strftime("%Y-%m-%dT%H:").to_string()
}
