//! Evaluation benchmarks: one request against one loaded policy, no I/O.
//!
//! - `rule/*`: a one-rule policy per rule type (and per form of the rule), so the cost of
//!   each rule can be read on its own; it includes the fixed cost of `Policy::evaluate`.
//! - `example-policy/*`: the example policy of `docs/policy.md` (`bench/example-policy.yml`)
//!   for the scenarios that matter: a decrypt approved by set 0 (time range + throttle,
//!   which consumes quota), a decrypt approved by set 1 once the profile's throttle is
//!   exhausted, a decrypt denied by both sets, and search approved / denied.
//!
//! Throttled benchmarks never run out of quota: requests rotate over `PROFILES` profiles
//! and the instant moves on to the next hour or day once every profile has used its share,
//! so every iteration takes the same path (a check below makes sure it does).
//!
//! Run: `cargo bench -p kss-policy --bench evaluate`; medians: `bench/criterion-medians.py`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use kss_policy::{Decision, DenyReason, MemoryQuotaStore, MetaInfo, Policy, Request, RequestType};

/// The example policy at the top of `docs/policy.md`.
const EXAMPLE_POLICY: &str = include_str!("../../../bench/example-policy.yml");

/// Distinct profiles the throttled benchmarks rotate over (and the quota store holds).
const PROFILES: usize = 1000;

/// Monday 2022-03-07 at 10:30:00 UTC: a weekday, in office hours.
const MONDAY_MORNING: i64 = 1_646_649_000;
/// The same Monday at 22:00:00 UTC: after hours.
const MONDAY_NIGHT: i64 = 1_646_690_400;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

fn load(yaml: &str) -> Policy {
    Policy::load(yaml).unwrap_or_else(|e| panic!("benchmark policy does not load: {e}\n{yaml}"))
}

fn instant(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("benchmark instant in range")
}

fn utc() -> TimeZone {
    TimeZone::UTC
}

fn paris() -> TimeZone {
    kss_policy::time_zone("Europe/Paris").expect("Europe/Paris is in the bundled tzdb")
}

fn words(text: &str) -> Vec<String> {
    text.split(' ').map(str::to_string).collect()
}

/// A decrypt request as a client sends it: a 16-byte profile id, the profile's 12
/// verification words, a device, one complete metadata entry and a key id.
fn decrypt(profile: usize, meta: &str) -> Request {
    let mut r = Request::new(RequestType::Decrypt);
    r.profile_id = profile_id(profile);
    r.profile_words = words(
        "indigo jungle report timber oyster falcon tunnel meadow ribbon hollow harbor ribbon",
    );
    r.device_id = vec![0xd5; 16];
    r.auth_meta = vec![MetaInfo {
        meta: meta.to_string(),
        complete: true,
    }];
    r.cryptographic_id = vec![0xc1; 32];
    r
}

fn profile_id(profile: usize) -> Vec<u8> {
    let mut id = vec![0x5a; 16];
    id[..8].copy_from_slice(&(profile as u64).to_be_bytes());
    id
}

fn typed(request_type: RequestType, mut r: Request) -> Request {
    r.request_type = request_type;
    r
}

fn approved_by(set: usize) -> Decision {
    Decision::Approved {
        rule_set: Some(set),
        session: None,
    }
}

/// Where the instant of iteration `i` of a throttled benchmark is: each profile gets
/// `uses` approvals per window; `windows_per_day` one-hour windows a day, from `start`.
#[derive(Clone, Copy)]
struct Schedule {
    start: i64,
    uses: u64,
    windows_per_day: u64,
}

impl Schedule {
    fn at(&self, i: u64) -> Timestamp {
        let window = i / (PROFILES as u64 * self.uses);
        let day = (window / self.windows_per_day) as i64;
        let hour = (window % self.windows_per_day) as i64;
        instant(self.start + day * DAY + hour * HOUR)
    }
}

/// Evaluates requests that consume quota without ever running out of it (see [`Schedule`]).
/// A fresh store per timed batch; every `expected` decision is checked beforehand.
fn bench_throttled(
    b: &mut Bencher<'_>,
    policy: &Policy,
    tz: &TimeZone,
    requests: &[Request],
    schedule: Schedule,
    expected: Decision,
) {
    assert_eq!(requests.len(), PROFILES);
    let store = MemoryQuotaStore::new();
    for i in 0..3 * PROFILES as u64 * schedule.uses * schedule.windows_per_day {
        let r = &requests[(i % PROFILES as u64) as usize];
        let got = policy.evaluate(r, schedule.at(i), tz, &store);
        assert_eq!(got, expected, "iteration {i} takes another path");
    }
    b.iter_custom(|iters| {
        let store = MemoryQuotaStore::new();
        let start = Instant::now();
        for i in 0..iters {
            let r = &requests[(i % PROFILES as u64) as usize];
            black_box(policy.evaluate(black_box(r), schedule.at(i), tz, &store));
        }
        start.elapsed()
    });
}

/// Evaluates requests that consume no quota (the store is only read, if at all).
fn bench_plain(
    b: &mut Bencher<'_>,
    policy: &Policy,
    tz: &TimeZone,
    store: &MemoryQuotaStore,
    requests: &[Request],
    at: Timestamp,
    expected: Decision,
) {
    for r in requests {
        assert_eq!(policy.evaluate(r, at, tz, store), expected, "{r:?}");
    }
    let mut i = 0;
    b.iter(|| {
        let r = &requests[i % requests.len()];
        i += 1;
        policy.evaluate(black_box(r), black_box(at), tz, store)
    });
}

/// One policy with one rule, evaluated for `request` (which it must decide `expected`).
fn bench_rule(
    c: &mut Criterion,
    name: &str,
    yaml: &str,
    tz: &TimeZone,
    request: Request,
    at: i64,
    expected: Decision,
) {
    let policy = load(yaml);
    let store = MemoryQuotaStore::new();
    c.bench_function(name, |b| {
        bench_plain(
            b,
            &policy,
            tz,
            &store,
            std::slice::from_ref(&request),
            instant(at),
            expected,
        )
    });
}

fn rules(c: &mut Criterion) {
    let utc = utc();
    let approve = approved_by(0);
    let deny = Decision::Denied(DenyReason::Policy);

    bench_rule(
        c,
        "rule/meta-rule/paths-1",
        "decrypt:\n  - - rule: meta-rule\n      paths: [/public]\n",
        &utc,
        decrypt(1, "public/reports/q3.pdf"),
        MONDAY_MORNING,
        approve,
    );
    // six patterns of every form; the entry matches the fourth, the inverted one is checked
    bench_rule(
        c,
        "rule/meta-rule/paths-6",
        "decrypt:\n  - - rule: meta-rule\n      paths: [/public, /shared/team, '*.pdf', \
         reports/2022, 'budget.*', '!/public/secret']\n",
        &utc,
        decrypt(1, "engineering/reports/2022/q3.xlsx"),
        MONDAY_MORNING,
        approve,
    );
    let mut three = decrypt(1, "public/a/one.pdf");
    three.auth_meta.extend(
        ["finance/q3/two.pdf", "public/three.docx"].map(|m| MetaInfo {
            meta: m.to_string(),
            complete: true,
        }),
    );
    bench_rule(
        c,
        "rule/meta-rule/paths-6-meta-3",
        "decrypt:\n  - - rule: meta-rule\n      paths: [/public, /shared/team, '*.pdf', \
         reports/2022, 'budget.*', '!/public/secret']\n",
        &utc,
        three,
        MONDAY_MORNING,
        approve,
    );
    bench_rule(
        c,
        "rule/meta-rule/regex-lookahead",
        "decrypt:\n  - - rule: meta-rule\n      regexes: ['^/(?!(?:hr|legal)/)[^/]+/.*\\.(?:pdf|docx?)$']\n",
        &utc,
        decrypt(1, "engineering/design/spec.docx"),
        MONDAY_MORNING,
        approve,
    );
    bench_rule(
        c,
        "rule/meta-rule/regex-lookahead-deny",
        "decrypt:\n  - - rule: meta-rule\n      regexes: ['^/(?!(?:hr|legal)/)[^/]+/.*\\.(?:pdf|docx?)$']\n",
        &utc,
        decrypt(1, "hr/reviews/2022/alice.docx"),
        MONDAY_MORNING,
        deny,
    );

    {
        let policy = load(
            "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_hour: 5\n      per_day: 30\n",
        );
        let requests: Vec<Request> = (0..PROFILES).map(|p| decrypt(p, "a/b.pdf")).collect();
        let schedule = Schedule {
            start: MONDAY_MORNING,
            uses: 5,
            windows_per_day: 6,
        };
        c.bench_function("rule/per-profile-throttle-rule", |b| {
            bench_throttled(b, &policy, &utc, &requests, schedule, approve)
        });
    }

    let hex_ids: Vec<String> = (0..10).map(|p| hex::encode(profile_id(p))).collect();
    bench_rule(
        c,
        "rule/profile-id-rule/hex-10",
        &format!(
            "decrypt:\n  - - rule: profile-id-rule\n      profile_ids: [{}]\n",
            hex_ids.join(", ")
        ),
        &utc,
        decrypt(7, "a/b.pdf"),
        MONDAY_MORNING,
        approve,
    );
    // ten phrases; the request's words begin with the last one (every phrase is compared)
    let phrases = [
        "apple bridge candle desert",
        "eagle forest garden harbor",
        "island jungle kettle ladder",
        "meadow needle orange pepper",
        "quartz river saddle timber",
        "umbrella valley walnut yellow",
        "zipper anchor basket cobalt",
        "dragon ember falcon glacier",
        "hollow indigo jasmine kernel lantern",
        "humble busy much cactus",
    ];
    let mut search = typed(RequestType::Search, decrypt(1, "a/b.pdf"));
    search.auth_meta.clear();
    search.profile_words =
        words("humble busy much cactus river payroll ribbon orange lantern budget hollow kettle");
    bench_rule(
        c,
        "rule/profile-id-rule/words-10",
        &format!(
            "decrypt:\n  - - rule: profile-id-rule\n      profile_ids: [{}]\n",
            phrases.join(", ")
        ),
        &utc,
        typed(RequestType::Decrypt, search.clone()),
        MONDAY_MORNING,
        approve,
    );

    let office_hours = "decrypt:\n  - - rule: time-range-rule\n      time_start: 8:00am\n      \
         time_end: 6:00pm\n      days: [0, 1, 2, 3, 4]\n      include: [2022-03-12]\n      \
         exclude: [2022-04-15]\n";
    bench_rule(
        c,
        "rule/time-range-rule/no-offset-utc",
        office_hours,
        &utc,
        decrypt(1, "a/b.pdf"),
        MONDAY_MORNING,
        approve,
    );
    bench_rule(
        c,
        "rule/time-range-rule/no-offset-europe-paris",
        office_hours,
        &paris(),
        decrypt(1, "a/b.pdf"),
        MONDAY_MORNING,
        approve,
    );
    bench_rule(
        c,
        "rule/time-range-rule/offset",
        "decrypt:\n  - - rule: time-range-rule\n      time_start: 09:00+04:00\n      \
         time_end: 17:00+04:00\n",
        &utc,
        decrypt(1, "a/b.pdf"),
        MONDAY_MORNING,
        approve,
    );

    bench_rule(
        c,
        "rule/approve-rule",
        "decrypt:\n  - - rule: approve-rule\n",
        &utc,
        decrypt(1, "a/b.pdf"),
        MONDAY_MORNING,
        approve,
    );
    bench_rule(
        c,
        "rule/reject-rule",
        "decrypt:\n  - - rule: reject-rule\n",
        &utc,
        decrypt(1, "a/b.pdf"),
        MONDAY_MORNING,
        deny,
    );

    let session_policy = load(
        "start_session:\n  - - rule: session-params-rule\n      max_request_count: 10\n      \
         max_time_seconds: 600\n      end_by_time: 5:00pm\n",
    );
    let start_session = typed(RequestType::StartSession, decrypt(1, "a/b.pdf"));
    let session = match session_policy.evaluate(
        &start_session,
        instant(MONDAY_MORNING),
        &utc,
        &MemoryQuotaStore::new(),
    ) {
        d @ Decision::Approved {
            rule_set: Some(0),
            session: Some(_),
        } => d,
        other => panic!("session-params-rule: {other:?}"),
    };
    bench_rule(
        c,
        "rule/session-params-rule",
        "start_session:\n  - - rule: session-params-rule\n      max_request_count: 10\n      \
         max_time_seconds: 600\n      end_by_time: 5:00pm\n",
        &utc,
        start_session,
        MONDAY_MORNING,
        session,
    );
}

fn example_policy(c: &mut Criterion) {
    let policy = load(EXAMPLE_POLICY);
    let utc = utc();

    // set 0: in office hours, under quota; consumes one use of the day's 30
    let private: Vec<Request> = (0..PROFILES)
        .map(|p| decrypt(p, "finance/q3/report.pdf"))
        .collect();
    let daily = Schedule {
        start: MONDAY_MORNING,
        uses: 30,
        windows_per_day: 1,
    };
    c.bench_function("example-policy/decrypt-set-0", |b| {
        bench_throttled(b, &policy, &utc, &private, daily, approved_by(0))
    });
    let paris = paris();
    c.bench_function("example-policy/decrypt-set-0-europe-paris", |b| {
        bench_throttled(b, &policy, &paris, &private, daily, approved_by(0))
    });

    // set 1: every profile has used its 30 decrypts today; the file is under /public
    let public: Vec<Request> = (0..PROFILES)
        .map(|p| decrypt(p, "public/handbook/holidays.pdf"))
        .collect();
    let exhausted = MemoryQuotaStore::new();
    let at = instant(MONDAY_MORNING);
    for r in &public {
        for _ in 0..30 {
            assert_eq!(policy.evaluate(r, at, &utc, &exhausted), approved_by(0));
        }
    }
    c.bench_function("example-policy/decrypt-set-1-quota-exhausted", |b| {
        bench_plain(b, &policy, &utc, &exhausted, &public, at, approved_by(1))
    });

    // denied: after hours (set 0) and not under /public (set 1); no quota is touched
    let empty = MemoryQuotaStore::new();
    c.bench_function("example-policy/decrypt-denied-after-hours", |b| {
        bench_plain(
            b,
            &policy,
            &utc,
            &empty,
            &private,
            instant(MONDAY_NIGHT),
            Decision::Denied(DenyReason::Policy),
        )
    });

    // search: the profile's words begin with the phrase, or do not
    let searches: Vec<Request> = (0..PROFILES)
        .map(|p| {
            let mut r = typed(RequestType::Search, decrypt(p, "x"));
            r.auth_meta.clear();
            r.profile_words = words(
                "humble busy much cactus river payroll ribbon orange lantern budget hollow kettle",
            );
            r
        })
        .collect();
    c.bench_function("example-policy/search-approved", |b| {
        bench_plain(b, &policy, &utc, &empty, &searches, at, approved_by(0))
    });
    let other_searches: Vec<Request> = (0..PROFILES)
        .map(|p| {
            let mut r = typed(RequestType::Search, decrypt(p, "x"));
            r.auth_meta.clear();
            r
        })
        .collect();
    c.bench_function("example-policy/search-denied", |b| {
        bench_plain(
            b,
            &policy,
            &utc,
            &empty,
            &other_searches,
            at,
            Decision::Denied(DenyReason::Policy),
        )
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = rules, example_policy
}
criterion_main!(benches);
