//! The seeded fault run: three instances of one keyserver on MariaDB, each reaching the
//! database through its own toxiproxy and running on its own libfaketime clock, 32 clients
//! over 8 profiles with persistent hourly and daily quotas that the demand exceeds several
//! times, distinct ciphertexts, replays of bodies already sent to other instances, and
//! policy loads that keep the throttles' rule ids, while a nemesis applies one fault at a
//! time and heals it: the database hung, restarted or killed; one instance's database
//! traffic blackholed, slowed, reset, or cut downstream only (commits land, their
//! acknowledgements are lost); one instance's clock jumped 90 s; one instance paused
//! (SIGSTOP) or killed (SIGKILL) and started again.
//!
//! Every request is recorded (invoke and complete time, instance, nonce, answer, audit
//! id, whether the share combined to the right file key), then a checker holds the
//! history against what the database recorded:
//!
//! 1. every approval a client received is the approved audit record it names;
//! 2. every received share combines with the workstation's to the file key encrypted;
//! 3. no nonce is approved twice;
//! 4. approvals per profile and quota window never exceed the limit, and equal it in
//!    every window where a request was denied for quota;
//! 5. an approved record whose client got no approval is of a request whose answer was
//!    indeterminate (failed, `unavailable`, or `replayed` after a lost acknowledgement);
//! 6. the persistent counters count exactly the audited approvals of their window;
//! 7. every request to a running instance is answered within 3 s, faults or not;
//! 8. within 5 s of each heal, every instance decides requests again;
//! 9. the audit chain verifies (`kss audit verify`): no row missing, none edited.
//!
//! `make chaos SECONDS=… SEED=…` runs it for longer or with a given seed (environment
//! `KSS_CHAOS_SECONDS`, default 120, and `KSS_CHAOS_SEED`, default from the clock); the
//! seed and the fault schedule it draws are printed first, a failing run prints the seed
//! and the first property violated, and the same seed draws the same schedule.
//!
//! Needs `KSS_TEST_MYSQL_URL` (scripts/mariadb.sh) and the fault tools
//! (scripts/fault-tools.sh); skipped without them, except where `KSS_REQUIRE_MYSQL` is set
//! (CI), which makes them required.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Launch};
use common::faults::{FakeClock, RestartDbOnDrop, Toxiproxy, db_port, mariadb_async};
use kss_client::protocol::{
    RequestSpec, build_request, combine_file_key, encrypt_file_key, sign_request, verify_ciphertext,
};
use kss_client::{ApproveOutcome, KssClient, Profile};
use kss_proto::v1::SignedMessage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use sqlx::Connection;

const INSTANCES: usize = 3;
const PROFILES: usize = 8;
const CLIENTS: usize = 32;
const DEFAULT_SECONDS: u64 = 120;

/// The longest a running instance may take to answer, fault or not (`--db-timeout-ms`
/// 2000 for all of a request's waits on the database, and the answer's grace).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How soon after a heal every instance decides requests again.
const BACK_WITHIN: Duration = Duration::from_secs(5);
/// A client gives up on an answer after this (a paused instance answers when resumed).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How far one instance's clock jumps.
const CLOCK_JUMP_S: i64 = 90;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

// ------------------------------------------------------------------------ schedule

/// One kind of fault the nemesis applies (and heals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    /// mariadbd stopped with SIGSTOP (every socket open, nothing answers), then SIGCONT.
    DatabaseHang,
    /// mariadbd stopped cleanly and started again.
    DatabaseRestart,
    /// mariadbd killed with SIGKILL (InnoDB crash recovery), started again.
    DatabaseCrash,
    /// Nothing passes between one instance and the database, no connection closes.
    Blackhole,
    /// What the database sends one instance is dropped; what it sends arrives.
    LostAcknowledgements,
    /// Every answer of the database to one instance 400 ± 300 ms late.
    Latency,
    /// Every connection of one instance to the database reset as soon as it carries data.
    ConnectionReset,
    /// One instance's wall clock 90 s ahead (then back).
    ClockJump,
    /// One instance stopped with SIGSTOP, then SIGCONT.
    InstancePause,
    /// One instance killed with SIGKILL, then started again.
    InstanceCrash,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::DatabaseHang,
        Fault::DatabaseRestart,
        Fault::DatabaseCrash,
        Fault::Blackhole,
        Fault::LostAcknowledgements,
        Fault::Latency,
        Fault::ConnectionReset,
        Fault::ClockJump,
        Fault::InstancePause,
        Fault::InstanceCrash,
    ];

    /// Whether the fault is of one instance (else of the database).
    fn of_instance(self) -> bool {
        !matches!(
            self,
            Fault::DatabaseHang | Fault::DatabaseRestart | Fault::DatabaseCrash
        )
    }
}

/// One fault of the schedule: when (after the load started), which, on which instance,
/// for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    at: Duration,
    fault: Fault,
    instance: usize,
    hold: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6.1}s {:?}", self.at.as_secs_f64(), self.fault)?;
        if self.fault.of_instance() {
            write!(f, " of {}", instance_name(self.instance))?;
        }
        write!(f, " for {:.1}s", self.hold.as_secs_f64())
    }
}

/// The faults of a run of `seconds` drawn from `seed`: after 5 s of quiet, every kind
/// once in a shuffled order, again and again, each held 1–3 s and followed by 6–7 s
/// without a fault (the time to recover in, and then some), none healed later than 5 s
/// before the end.
fn schedule(seed: u64, seconds: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end = Duration::from_secs(seconds);
    let mut at = Duration::from_secs(5);
    let mut steps = Vec::new();
    loop {
        let mut round = Fault::ALL;
        round.shuffle(&mut rng);
        for fault in round {
            let hold = Duration::from_millis(rng.gen_range(1000..3000));
            let instance = rng.gen_range(0..INSTANCES);
            if at + hold + BACK_WITHIN > end {
                return steps;
            }
            steps.push(Step {
                at,
                fault,
                instance,
                hold,
            });
            at += hold + Duration::from_millis(rng.gen_range(6000..7000));
        }
    }
}

fn instance_name(i: usize) -> String {
    char::from(b'a' + u8::try_from(i).unwrap()).to_string()
}

// ---------------------------------------------------------------------- the limits

/// Profile `p`'s quota: profiles 0–3 per hour, 4–7 per day, each its own rule set (its
/// own path) and explicit rule id, the limit smaller for higher `p`, so that the demand
/// (about 17 requests a second per profile) is from three to twelve times the limit.
fn limit(p: usize, seconds: u64) -> i64 {
    let seconds = i64::try_from(seconds).unwrap();
    (seconds * 12 / (2 + i64::try_from(p).unwrap())).max(10)
}

fn per_hour(p: usize) -> bool {
    p < PROFILES / 2
}

/// The policy; `generation` changes a rule set no request matches, so that every load is
/// a new version with the throttles' rule ids kept.
fn policy(seconds: u64, generation: u64) -> String {
    let mut yaml = String::from("decrypt:\n");
    for p in 0..PROFILES {
        let window = if per_hour(p) { "per_hour" } else { "per_day" };
        yaml.push_str(&format!(
            "  - - rule: meta-rule\n      paths: [/p{p}]\n    - rule: per-profile-throttle-rule\n      rule_id: quota-{p}\n      {window}: {}\n      persistent: true\n",
            limit(p, seconds)
        ));
    }
    yaml.push_str(&format!(
        "  - - rule: meta-rule\n      paths: [/unused-{generation}]\n"
    ));
    yaml
}

// ------------------------------------------------------------------------- history

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Approved,
    /// Denied, with the reason's name.
    Denied(String),
    /// No answer: a transport error, a gRPC status, or no answer within CLIENT_TIMEOUT.
    Failed(String),
}

impl Answer {
    /// The instance decided: approved, or denied for a reason other than `unavailable`.
    fn decided(&self) -> bool {
        match self {
            Answer::Approved => true,
            Answer::Denied(reason) => reason != "unavailable",
            Answer::Failed(_) => false,
        }
    }

    /// Whether a commit may have landed without this answer saying so.
    fn indeterminate(&self) -> bool {
        match self {
            Answer::Approved => false,
            // `replayed` too: a retry after a lost acknowledgement sees its own nonce.
            Answer::Denied(reason) => reason == "unavailable" || reason == "replayed",
            Answer::Failed(_) => true,
        }
    }
}

/// One request of the history.
#[derive(Debug, Clone)]
struct Event {
    client: usize,
    profile: usize,
    instance: usize,
    nonce: Vec<u8>,
    /// A body sent before (to another instance), sent again.
    replay: bool,
    invoked: Instant,
    completed: Instant,
    answer: Answer,
    /// The audit record the answer names (0 if none).
    audit_id: u64,
    /// For an approval: whether the share combined to the file key encrypted.
    share_ok: Option<bool>,
}

/// A body already sent, kept for replays.
#[derive(Clone)]
struct Sent {
    message: SignedMessage,
    nonce: Vec<u8>,
    instance: usize,
    ciphertext: Vec<u8>,
    file_key: [u8; 32],
}

/// One fault as applied: when it began and when it was healed.
#[derive(Debug, Clone)]
struct Applied {
    step: Step,
    began: Instant,
    healed: Instant,
}

// ---------------------------------------------------------------------------- load

/// Client `k`: profile `k % PROFILES`, requests to a random instance every 100–300 ms,
/// one in ten a replay of one of its own earlier bodies to another instance.
async fn client_loop(
    k: usize,
    seed: u64,
    profile: Profile,
    clients: Vec<KssClient>,
    stop: Arc<AtomicBool>,
) -> Vec<Event> {
    let p = k % PROFILES;
    let mut rng = StdRng::seed_from_u64(
        seed ^ (u64::try_from(k).unwrap() + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut sent: Vec<Sent> = Vec::new();
    let mut events = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let replay = !sent.is_empty() && rng.gen_bool(0.1);
        let (body, instance) = if replay {
            let earlier = sent[rng.gen_range(0..sent.len())].clone();
            let other = (earlier.instance + rng.gen_range(1..INSTANCES)) % INSTANCES;
            (earlier, other)
        } else {
            let mut file_key = [0u8; 32];
            rng.fill_bytes(&mut file_key);
            let ciphertext = encrypt_file_key(&profile, &file_key);
            let spec = RequestSpec::decrypt(ciphertext.clone(), &[format!("p{p}/file")]);
            let request = build_request(&profile, &spec);
            let instance = rng.gen_range(0..INSTANCES);
            let s = Sent {
                message: sign_request(&profile, &request),
                nonce: request.nonce,
                instance,
                ciphertext,
                file_key,
            };
            (s, instance)
        };
        let invoked = Instant::now();
        let call = clients[instance].approve_raw(body.message.clone());
        let (answer, audit_id, share_ok) = match tokio::time::timeout(CLIENT_TIMEOUT, call).await {
            Err(_) => (Answer::Failed("no answer in time".into()), 0, None),
            Ok(Err(e)) => (Answer::Failed(e.to_string()), 0, None),
            Ok(Ok(response)) => {
                let o = ApproveOutcome::from_response(response);
                if o.approved {
                    let ok = verify_ciphertext(&body.ciphertext)
                        .ok()
                        .and_then(|ct| combine_file_key(&profile, &ct, &o.decryption_share).ok())
                        .is_some_and(|key| key.as_slice() == body.file_key.as_slice());
                    (Answer::Approved, o.audit_id, Some(ok))
                } else {
                    let reason = o.reason_name().unwrap_or_else(|| "?".into());
                    (Answer::Denied(reason), o.audit_id, None)
                }
            }
        };
        let completed = Instant::now();
        events.push(Event {
            client: k,
            profile: p,
            instance,
            nonce: body.nonce.clone(),
            replay,
            invoked,
            completed,
            answer: answer.clone(),
            audit_id,
            share_ok,
        });
        if !replay {
            sent.push(body);
            if sent.len() > 64 {
                sent.remove(0);
            }
        }
        let pause = if matches!(answer, Answer::Failed(_)) {
            rng.gen_range(200..400)
        } else {
            rng.gen_range(100..300)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    events
}

/// Loads the policy (a new version, same rule ids) every 3–5 s until stopped; returns
/// how many loads succeeded and failed (a load during a database fault fails).
async fn policy_loader(
    dir: std::path::PathBuf,
    seed: u64,
    seconds: u64,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let (mut loaded, mut failed) = (0, 0);
    let mut generation = 1;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
        generation += 1;
        let file = dir.join(format!("policy-{generation}.yml"));
        std::fs::write(&file, policy(seconds, generation)).unwrap();
        let (d, f) = (dir.clone(), file.clone());
        let ok = tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::kss_bin())
                .arg("--data-dir")
                .arg(&d)
                .args(["policy", "load"])
                .arg(&f)
                .env_remove("RUST_LOG")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await
        .unwrap();
        if ok {
            loaded += 1;
        } else {
            failed += 1;
        }
    }
    (loaded, failed)
}

// ------------------------------------------------------------------------- nemesis

/// What the nemesis acts on.
struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    toxiproxy: &'a Toxiproxy,
    clocks: &'a [FakeClock],
}

fn proxy_name(i: usize) -> String {
    format!("kss-{}", instance_name(i))
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid} failed");
}

impl Nemesis<'_> {
    async fn apply(&mut self, step: &Step) {
        let (i, proxy) = (step.instance, proxy_name(step.instance));
        match step.fault {
            Fault::DatabaseHang => mariadb_async("freeze-db").await,
            Fault::DatabaseRestart => mariadb_async("stop-db").await,
            Fault::DatabaseCrash => mariadb_async("kill-db").await,
            Fault::Blackhole => self.toxiproxy.blackhole(&proxy),
            Fault::LostAcknowledgements => self.toxiproxy.cut_downstream(&proxy),
            Fault::Latency => self.toxiproxy.slow_down(&proxy, 400, 300),
            Fault::ConnectionReset => self.toxiproxy.reset_connections(&proxy),
            Fault::ClockJump => self.clocks[i].set(CLOCK_JUMP_S),
            Fault::InstancePause => signal(self.cluster.pid(i), "-STOP"),
            Fault::InstanceCrash => self.cluster.kill9(i),
        }
    }

    async fn heal(&mut self, step: &Step) {
        let (i, proxy) = (step.instance, proxy_name(step.instance));
        match step.fault {
            Fault::DatabaseHang => mariadb_async("thaw-db").await,
            Fault::DatabaseRestart | Fault::DatabaseCrash => mariadb_async("start-db").await,
            Fault::Blackhole => self.toxiproxy.heal(&proxy),
            Fault::LostAcknowledgements => self.toxiproxy.heal_downstream(&proxy),
            Fault::Latency => self.toxiproxy.remove(&proxy, &["slow"]),
            Fault::ConnectionReset => self.toxiproxy.remove(&proxy, &["reset-down", "reset-up"]),
            // Back: the clock jumps 90 s backwards.
            Fault::ClockJump => self.clocks[i].set(0),
            Fault::InstancePause => signal(self.cluster.pid(i), "-CONT"),
            Fault::InstanceCrash => tokio::task::block_in_place(|| self.cluster.restart(i)),
        }
    }
}

// ------------------------------------------------------------------------- checker

/// A decrypt record of the audit.
#[derive(Debug)]
struct Record {
    id: u64,
    at_ms: i64,
    instance: String,
    profile_id: String,
    approved: bool,
    reason: Option<String>,
    nonce: Option<Vec<u8>>,
}

/// A persistent counter row.
#[derive(Debug)]
struct CounterRow {
    rule_id: String,
    profile_id: String,
    day: String,
    hour: i64,
    hour_used: i64,
    day_used: i64,
}

/// id, at_ms, instance_id, profile_id, decision, reason, nonce.
type AuditRow = (
    i64,
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<Vec<u8>>,
);

async fn read_audit(db: &str) -> (Vec<Record>, Vec<CounterRow>) {
    let mut conn = sqlx::mysql::MySqlConnection::connect(db).await.unwrap();
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at_ms, instance_id, profile_id, decision, reason, nonce FROM audit \
             WHERE request_type = 'decrypt' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let records = rows
        .into_iter()
        .map(
            |(id, at_ms, instance, profile_id, decision, reason, nonce)| Record {
                id: u64::try_from(id).unwrap(),
                at_ms,
                instance,
                profile_id: profile_id.unwrap_or_default(),
                approved: decision == "approved",
                reason,
                nonce,
            },
        )
        .collect();
    let counters: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT rule_id, profile_id, day, hour, hour_used, day_used FROM quota_counters",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let counters = counters
        .into_iter()
        .map(
            |(rule_id, profile_id, day, hour, hour_used, day_used)| CounterRow {
                rule_id,
                profile_id,
                day,
                hour,
                hour_used,
                day_used,
            },
        )
        .collect();
    (records, counters)
}

/// The quota window (UTC: the instances run with `--time-zone UTC`) of profile `p`'s
/// limit that `at_ms` falls in.
fn window(p: usize, at_ms: i64) -> i64 {
    if per_hour(p) {
        at_ms.div_euclid(HOUR_MS)
    } else {
        at_ms.div_euclid(DAY_MS)
    }
}

/// `YYYY-MM-DD` and hour (UTC) of `at_ms`: how a counter row names its window.
fn day_and_hour(at_ms: i64) -> (String, i64) {
    let t = jiff::Timestamp::from_millisecond(at_ms).unwrap();
    let dt = jiff::tz::TimeZone::UTC.to_datetime(t);
    (dt.date().to_string(), i64::from(dt.hour()))
}

/// One property: `Err` says how the history breaks it.
type Check<'c> = fn(&Checker<'c>) -> Result<(), String>;

/// The first property of the module's list that the history breaks, if any.
struct Checker<'a> {
    seconds: u64,
    events: &'a [Event],
    applied: &'a [Applied],
    records: &'a [Record],
    counters: &'a [CounterRow],
    profile_ids: &'a [String],
    /// What `kss audit verify` said, if it did not verify.
    chain: Result<(), String>,
}

impl Checker<'_> {
    fn first_violation(&self) -> Option<String> {
        let checks: [(&str, Check<'_>); 9] = [
            (
                "1 received approvals are audited",
                Self::received_are_audited,
            ),
            ("2 shares combine to the file key", Self::shares_are_valid),
            ("3 a nonce approved at most once", Self::nonce_once),
            (
                "4 quotas: never above, exact once denied",
                Self::quotas_exact,
            ),
            (
                "5 unreceived approvals were indeterminate",
                Self::lost_only_if_indeterminate,
            ),
            ("6 counters count the audit", Self::counters_count_the_audit),
            ("7 answers within the bound", Self::answers_within_bound),
            ("8 service back after each heal", Self::back_after_heals),
            ("9 the audit chain verifies", |c| c.chain.clone()),
        ];
        for (name, check) in checks {
            if let Err(e) = check(self) {
                return Some(format!("property {name}: {e}"));
            }
        }
        None
    }

    fn profile_of(&self, profile_id: &str) -> Option<usize> {
        self.profile_ids.iter().position(|p| p == profile_id)
    }

    fn approved_records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.approved)
    }

    fn received_are_audited(&self) -> Result<(), String> {
        let by_id: HashMap<u64, &Record> = self.records.iter().map(|r| (r.id, r)).collect();
        for e in self.events.iter().filter(|e| e.answer == Answer::Approved) {
            let Some(r) = by_id.get(&e.audit_id) else {
                return Err(format!("approval without its audit record: {e:?}"));
            };
            if !r.approved
                || r.nonce.as_deref() != Some(e.nonce.as_slice())
                || r.instance != instance_name(e.instance)
                || r.profile_id != self.profile_ids[e.profile]
            {
                return Err(format!("approval {e:?} names another record: {r:?}"));
            }
        }
        Ok(())
    }

    fn shares_are_valid(&self) -> Result<(), String> {
        match self.events.iter().find(|e| e.share_ok == Some(false)) {
            Some(e) => Err(format!(
                "a share that does not combine to the file key: {e:?}"
            )),
            None => Ok(()),
        }
    }

    fn nonce_once(&self) -> Result<(), String> {
        let mut received = HashSet::new();
        for e in self.events.iter().filter(|e| e.answer == Answer::Approved) {
            if !received.insert(e.nonce.as_slice()) {
                return Err(format!("a nonce approved twice to clients: {e:?}"));
            }
        }
        let mut audited = HashSet::new();
        for r in self.records.iter().filter_map(|r| r.nonce.as_deref()) {
            if !audited.insert(r) {
                return Err(format!("a nonce recorded twice: {r:02x?}"));
            }
        }
        Ok(())
    }

    fn quotas_exact(&self) -> Result<(), String> {
        let mut approved: BTreeMap<(usize, i64), i64> = BTreeMap::new();
        for r in self.approved_records() {
            let p = self
                .profile_of(&r.profile_id)
                .ok_or_else(|| format!("an approval of no profile of the run: {r:?}"))?;
            *approved.entry((p, window(p, r.at_ms))).or_default() += 1;
        }
        for ((p, w), n) in &approved {
            if *n > limit(*p, self.seconds) {
                return Err(format!(
                    "profile {p}: {n} approvals in window {w}, limit {}",
                    limit(*p, self.seconds)
                ));
            }
        }
        for r in self
            .records
            .iter()
            .filter(|r| r.reason.as_deref() == Some("quota"))
        {
            let p = self.profile_of(&r.profile_id).unwrap();
            let w = window(p, r.at_ms);
            let n = approved.get(&(p, w)).copied().unwrap_or(0);
            if n != limit(p, self.seconds) {
                return Err(format!(
                    "profile {p} denied for quota in window {w} ({r:?}) with {n} approvals of {}",
                    limit(p, self.seconds)
                ));
            }
        }
        Ok(())
    }

    fn lost_only_if_indeterminate(&self) -> Result<(), String> {
        let mut by_nonce: HashMap<&[u8], Vec<&Event>> = HashMap::new();
        for e in self.events {
            by_nonce.entry(e.nonce.as_slice()).or_default().push(e);
        }
        for r in self.approved_records() {
            let nonce = r.nonce.as_deref().ok_or("an approval without its nonce")?;
            let Some(sent) = by_nonce.get(nonce) else {
                return Err(format!("an approved record of no request sent: {r:?}"));
            };
            if sent.iter().any(|e| e.answer == Answer::Approved) {
                continue;
            }
            if !sent.iter().any(|e| e.answer.indeterminate()) {
                return Err(format!(
                    "approved in the audit ({r:?}) but every client was told otherwise: {sent:?}"
                ));
            }
        }
        Ok(())
    }

    fn counters_count_the_audit(&self) -> Result<(), String> {
        for c in self.counters {
            let Some(p) = self.profile_of(&c.profile_id) else {
                continue;
            };
            if c.rule_id != format!("quota-{p}") {
                return Err(format!("a counter of an unexpected rule: {c:?}"));
            }
            let (mut day_used, mut hour_used) = (0, 0);
            for r in self
                .approved_records()
                .filter(|r| r.profile_id == c.profile_id)
            {
                let (day, hour) = day_and_hour(r.at_ms);
                if day == c.day {
                    day_used += 1;
                    if hour == c.hour {
                        hour_used += 1;
                    }
                }
            }
            if (day_used, hour_used) != (c.day_used, c.hour_used) {
                return Err(format!(
                    "counter {c:?}, the audit holds {day_used} approvals that day and {hour_used} that hour"
                ));
            }
        }
        Ok(())
    }

    /// Whether `e`'s instance was paused while `e` was in flight (it answers when resumed).
    fn paused_during(&self, e: &Event) -> bool {
        self.applied.iter().any(|a| {
            a.step.fault == Fault::InstancePause
                && a.step.instance == e.instance
                && e.invoked <= a.healed
                && e.completed >= a.began
        })
    }

    fn answers_within_bound(&self) -> Result<(), String> {
        for e in self.events {
            if self.paused_during(e) {
                continue;
            }
            let took = e.completed - e.invoked;
            if took > ANSWER_WITHIN {
                return Err(format!("answered in {took:?}: {e:?}"));
            }
        }
        Ok(())
    }

    fn back_after_heals(&self) -> Result<(), String> {
        for a in self.applied {
            for i in 0..INSTANCES {
                let back = self.events.iter().any(|e| {
                    e.instance == i
                        && e.invoked >= a.healed
                        && e.completed <= a.healed + BACK_WITHIN
                        && e.answer.decided()
                });
                if !back {
                    return Err(format!(
                        "instance {} decided nothing within {BACK_WITHIN:?} of healing {}",
                        instance_name(i),
                        a.step
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------- run

fn seconds_and_seed() -> (u64, u64) {
    let seconds = std::env::var("KSS_CHAOS_SECONDS")
        .ok()
        .filter(|s| !s.is_empty())
        .map_or(DEFAULT_SECONDS, |s| {
            s.parse().expect("KSS_CHAOS_SECONDS: a number of seconds")
        });
    let seed = std::env::var("KSS_CHAOS_SEED")
        .ok()
        .filter(|s| !s.is_empty())
        .map_or_else(
            || u64::try_from(common::unix_ms()).unwrap(),
            |s| s.parse().expect("KSS_CHAOS_SEED: a number"),
        );
    (seconds, seed)
}

#[test]
fn a_seed_draws_one_schedule_with_every_fault() {
    let a = schedule(7, 120);
    assert_eq!(a, schedule(7, 120));
    assert_ne!(a, schedule(8, 120));
    let kinds: HashSet<Fault> = a.iter().map(|s| s.fault).collect();
    assert_eq!(kinds.len(), Fault::ALL.len(), "{a:?}");
    for s in &a {
        assert!(
            s.at + s.hold + BACK_WITHIN <= Duration::from_secs(120),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_fault_run_keeps_every_guarantee() {
    let (seconds, seed) = seconds_and_seed();
    let steps = schedule(seed, seconds);
    println!("chaos: seed {seed}, {seconds} s, {} faults:", steps.len());
    for s in &steps {
        println!("  {s}");
    }
    let Some(toxiproxy) = Toxiproxy::start() else {
        return;
    };
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(std::env::var_os("KSS_REQUIRE_MYSQL").is_none());
        common::skipped("chaos run: KSS_TEST_MYSQL_URL not set (scripts/mariadb.sh)");
        return;
    };
    let clock_dirs: Vec<tempfile::TempDir> = (0..INSTANCES)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut clocks = Vec::new();
    for dir in &clock_dirs {
        let Some(clock) = FakeClock::new(dir.path(), 0) else {
            return;
        };
        clocks.push(clock);
    }
    let _restart_db = RestartDbOnDrop;
    let upstream = db_port(&url);
    let proxied: Vec<u16> = (0..INSTANCES)
        .map(|i| toxiproxy.proxy(&proxy_name(i), upstream))
        .collect();
    let Some(mut cluster) = Cluster::launch(INSTANCES, &policy(seconds, 1), |i, db| Launch {
        db: db.replacen(&format!(":{upstream}/"), &format!(":{}/", proxied[i]), 1),
        extra: vec!["--time-zone".into(), "UTC".into()],
        env: clocks[i].env(),
    })
    .await
    else {
        return;
    };
    let clients: Vec<KssClient> = cluster.clients().await;
    let keyserver = cluster.id.parse().unwrap();
    let mut profiles = Vec::new();
    for p in 0..PROFILES {
        let profile = clients[p % INSTANCES]
            .onboard(&keyserver, &format!("chaos-{p}@host"), None)
            .await
            .unwrap();
        profiles.push(profile);
    }
    let profile_ids: Vec<String> = profiles
        .iter()
        .map(|p| p.profile_id().to_string())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|k| {
            tokio::spawn(client_loop(
                k,
                seed,
                profiles[k % PROFILES].clone(),
                clients.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let loader = tokio::spawn(policy_loader(
        cluster.dirs[0].path(),
        seed,
        seconds,
        Arc::clone(&stop),
    ));

    let started = Instant::now();
    let mut applied = Vec::new();
    {
        let mut nemesis = Nemesis {
            cluster: &mut cluster,
            toxiproxy: &toxiproxy,
            clocks: &clocks,
        };
        for step in &steps {
            tokio::time::sleep_until((started + step.at).into()).await;
            let began = Instant::now();
            nemesis.apply(step).await;
            tokio::time::sleep(step.hold).await;
            nemesis.heal(step).await;
            let healed = Instant::now();
            println!(
                "{:>6.1}s healed {step} (held {:.1}s)",
                (healed - started).as_secs_f64(),
                (healed - began).as_secs_f64()
            );
            applied.push(Applied {
                step: step.clone(),
                began,
                healed,
            });
        }
    }
    tokio::time::sleep_until((started + Duration::from_secs(seconds)).into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut events = Vec::new();
    for w in workers {
        events.extend(w.await.unwrap());
    }
    let (loaded, load_failed) = loader.await.unwrap();

    let (records, counters) = read_audit(&cluster.db).await;
    let verify = cluster.dirs[0].kss(&["audit", "verify"]);
    let chain = if verify.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            common::text(&verify.stdout),
            common::text(&verify.stderr)
        ))
    };
    report(
        &events,
        &applied,
        &records,
        &profile_ids,
        seconds,
        loaded,
        load_failed,
    );
    let checker = Checker {
        seconds,
        events: &events,
        applied: &applied,
        records: &records,
        counters: &counters,
        profile_ids: &profile_ids,
        chain,
    };
    if let Some(violation) = checker.first_violation() {
        panic!(
            "chaos run with seed {seed} ({seconds} s) broke {violation}\n(reproduce the schedule: make chaos SECONDS={seconds} SEED={seed})\n{}",
            cluster.logs()
        );
    }
    assert!(loaded > 0, "no policy load succeeded during the run");
    println!("chaos: seed {seed}: every property holds");
    cluster.finish().await;
}

/// What happened, for the run's output.
fn report(
    events: &[Event],
    applied: &[Applied],
    records: &[Record],
    profile_ids: &[String],
    seconds: u64,
    loaded: u64,
    load_failed: u64,
) {
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let key = match &e.answer {
            Answer::Approved => "approved".to_string(),
            Answer::Denied(r) => format!("denied {r}"),
            Answer::Failed(_) => "failed".to_string(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let replays = events.iter().filter(|e| e.replay).count();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for a in applied {
        *faults.entry(format!("{:?}", a.step.fault)).or_default() += 1;
    }
    let approved = records.iter().filter(|r| r.approved).count();
    let received = events
        .iter()
        .filter(|e| e.answer == Answer::Approved)
        .count();
    let clients = events
        .iter()
        .map(|e| e.client)
        .collect::<HashSet<_>>()
        .len();
    println!(
        "chaos: {} requests ({replays} replays) by {clients} clients: {answers:?}",
        events.len()
    );
    println!("chaos: faults applied: {faults:?}");
    println!(
        "chaos: {approved} approvals audited, {received} received, {} lost with their answer; policy loaded {loaded} times ({load_failed} failed)",
        approved - received.min(approved)
    );
    for (p, id) in profile_ids.iter().enumerate() {
        let n = records
            .iter()
            .filter(|r| r.approved && &r.profile_id == id)
            .count();
        let quota = records
            .iter()
            .filter(|r| r.reason.as_deref() == Some("quota") && &r.profile_id == id)
            .count();
        println!(
            "  profile {p} ({}, limit {}): {n} approved, {quota} denied for quota",
            if per_hour(p) { "hourly" } else { "daily" },
            limit(p, seconds)
        );
    }
}
