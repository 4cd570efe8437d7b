//! Throughput of `kss policy eval`: the CLI's own [`Evaluator`] (JSON lines in, JSON lines
//! out, quota counters in memory) over an in-memory request log, against the example
//! policy of docs/policy.md (`bench/example-policy.yml`), in UTC.
//!
//! The log is built here by a port of `bench/gen-requests.py` and is byte-identical to
//! `bench/gen-requests.py --lines 100000` (set `KSS_BENCH_WRITE_LOG=<file>` to write it out
//! instead of benchmarking, and compare). Each iteration evaluates the whole log with a
//! fresh quota store, as one `kss policy eval` run does; output goes to `io::sink()`.
//! Criterion prints the throughput in lines (elements) per second.
//!
//! Run: `cargo bench -p kss-server --bench policy_eval`. The same log through the real
//! binary, 1,000,000 lines: `bench/policy-eval.sh`.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use jiff::tz::TimeZone;
use kss_policy::{MemoryQuotaStore, Policy};
use kss_server::commands::policy::eval::Evaluator;

/// The first example policy of docs/policy.md.
const EXAMPLE_POLICY: &str = include_str!("../../../bench/example-policy.yml");

/// Lines evaluated per iteration.
const LINES: u64 = 100_000;

fn main() {
    let log = request_log(LINES, SEED);
    if let Some(path) = std::env::var_os("KSS_BENCH_WRITE_LOG") {
        std::fs::write(&path, &log).expect("write the request log");
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    policy_eval(&mut criterion, &log);
    criterion.final_summary();
}

fn policy_eval(c: &mut Criterion, log: &str) {
    let policy = Policy::load(EXAMPLE_POLICY).expect("the example policy loads");
    let tz = TimeZone::UTC;

    // the log must evaluate cleanly: one output line per input line and no errors
    let mut out = Vec::new();
    Evaluator::new(&policy, &tz, &MemoryQuotaStore::new())
        .run(log.as_bytes(), &mut out)
        .expect("evaluation runs");
    let out = String::from_utf8(out).expect("output is UTF-8");
    assert_eq!(out.lines().count() as u64, LINES);
    assert!(
        !out.contains("\"error\""),
        "the log has lines the evaluator rejects"
    );

    let mut group = c.benchmark_group("policy-eval");
    group.throughput(Throughput::Elements(LINES));
    group.bench_function("example-policy/100k-lines", |b| {
        b.iter_batched_ref(
            MemoryQuotaStore::new,
            |store| {
                Evaluator::new(&policy, &tz, store)
                    .run(log.as_bytes(), io::sink())
                    .expect("evaluation runs")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

// ---- The request log: a port of bench/gen-requests.py (keep the two in step). ----

const SEED: u64 = 0x6B7373;

const WORDS: [&str; 64] = [
    "humble", "busy", "much", "cactus", "apple", "bridge", "candle", "desert", "eagle", "forest",
    "garden", "harbor", "island", "jungle", "kettle", "ladder", "meadow", "needle", "orange",
    "pepper", "quartz", "river", "saddle", "timber", "umbrella", "valley", "walnut", "yellow",
    "zipper", "anchor", "basket", "cobalt", "dragon", "ember", "falcon", "glacier", "hollow",
    "indigo", "jasmine", "kernel", "lantern", "marble", "nectar", "oyster", "pillow", "quiver",
    "ribbon", "silver", "tunnel", "velvet", "willow", "xenon", "yonder", "zephyr", "report",
    "budget", "invoice", "contract", "payroll", "roadmap", "design", "minutes", "summary", "draft",
];
const PHRASE: [&str; 4] = ["humble", "busy", "much", "cactus"];
const PROFILES: u64 = 2000;
const PROFILE_WORDS: usize = 12;

const TYPES: [(&str, u64); 8] = [
    ("decrypt", 700),
    ("search", 200),
    ("start_session", 30),
    ("create_profile", 20),
    ("rename", 20),
    ("secure_export", 10),
    ("change_profile", 10),
    ("create_location", 10),
];
const META_COUNTS: [(usize, u64); 3] = [(1, 80), (2, 15), (3, 5)];
const TOPS: [(&str, u64); 6] = [
    ("public", 30),
    ("finance", 20),
    ("hr", 10),
    ("engineering", 25),
    ("legal", 5),
    ("home", 10),
];
const EXTS: [&str; 5] = ["pdf", "docx", "xlsx", "txt", "png"];
const COMPLETE_PERCENT: u64 = 85;

/// 2022-03-07T00:00:00Z, a Monday.
const START: i64 = 1_646_611_200;
const DAYS: usize = 28;
const WEEKDAY_HOURS: [u64; 24] = [
    1, 1, 1, 1, 1, 1, 2, 5, 10, 10, 10, 10, 8, 10, 10, 10, 10, 8, 5, 3, 2, 2, 1, 1,
];
const WEEKEND_HOURS: [u64; 24] = [1; 24];

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.below(WORDS.len() as u64) as usize]
    }

    fn hex(&mut self, bytes: usize) -> String {
        let mut out = String::with_capacity(bytes * 2);
        for _ in 0..bytes / 8 {
            let _ = write!(out, "{:016x}", self.next());
        }
        out
    }

    /// An index drawn with the weights whose running sums are `cumulative`.
    fn pick(&mut self, cumulative: &[u64]) -> usize {
        let r = self.below(*cumulative.last().expect("weights"));
        cumulative.partition_point(|&c| c <= r)
    }
}

fn running(weights: impl IntoIterator<Item = u64>) -> Vec<u64> {
    weights
        .into_iter()
        .scan(0, |total, w| {
            *total += w;
            Some(*total)
        })
        .collect()
}

struct Profile {
    id: String,
    device: String,
    words: String,
}

fn profiles(seed: u64) -> Vec<Profile> {
    (0..PROFILES)
        .map(|i| {
            let mut rng = Rng(seed ^ (0x5EED_0000 + i));
            let id = rng.hex(16);
            let device = rng.hex(16);
            let mut words: Vec<&str> = (0..PROFILE_WORDS).map(|_| rng.word()).collect();
            if i % 10 == 3 {
                words[..PHRASE.len()].copy_from_slice(&PHRASE);
            }
            let words = words
                .iter()
                .map(|w| format!("\"{w}\""))
                .collect::<Vec<_>>()
                .join(",");
            Profile { id, device, words }
        })
        .collect()
}

/// The instant of line n of `lines`: in order, denser in office hours on weekdays.
struct Clock {
    lines: u64,
    weights: Vec<u64>,
    cumulative: Vec<u64>,
}

impl Clock {
    fn new(lines: u64) -> Self {
        let weights: Vec<u64> = (0..DAYS)
            .flat_map(|day| {
                if day % 7 < 5 {
                    WEEKDAY_HOURS
                } else {
                    WEEKEND_HOURS
                }
            })
            .collect();
        let cumulative = running(weights.iter().map(|w| w * 3600));
        Clock {
            lines,
            weights,
            cumulative,
        }
    }

    fn at(&self, n: u64) -> String {
        let total = *self.cumulative.last().expect("hours");
        let position = n * total / self.lines;
        let slot = self.cumulative.partition_point(|&c| c <= position);
        let before = if slot > 0 {
            self.cumulative[slot - 1]
        } else {
            0
        };
        let second = START + slot as i64 * 3600 + ((position - before) / self.weights[slot]) as i64;
        jiff::Timestamp::from_second(second)
            .expect("instant in range")
            .to_string()
    }
}

fn request_log(lines: u64, seed: u64) -> String {
    let people = profiles(seed);
    let zipf = running((0..PROFILES).map(|rank| 1_000_000 / (rank + 10)));
    let types = running(TYPES.map(|(_, w)| w));
    let meta_counts = running(META_COUNTS.map(|(_, w)| w));
    let tops = running(TOPS.map(|(_, w)| w));
    let clock = Clock::new(lines);
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(lines as usize * 400);
    for n in 0..lines {
        let p = &people[rng.pick(&zipf)];
        let request_type = TYPES[rng.pick(&types)].0;
        let _ = write!(
            out,
            r#"{{"type":"{request_type}","profile_id":"{}","profile_words":[{}],"device_id":"{}""#,
            p.id, p.words, p.device
        );
        if request_type == "decrypt" {
            let count = META_COUNTS[rng.pick(&meta_counts)].0;
            let mut metas = Vec::with_capacity(count);
            for _ in 0..count {
                let mut path = vec![TOPS[rng.pick(&tops)].0];
                if path[0] == "home" {
                    path.push(rng.word());
                }
                for _ in 0..rng.below(3) {
                    path.push(rng.word());
                }
                let name = rng.word();
                let ext = EXTS[rng.below(EXTS.len() as u64) as usize];
                let complete = rng.below(100) < COMPLETE_PERCENT;
                metas.push(format!(
                    r#"{{"meta":"{}/{name}.{ext}","complete":{complete}}}"#,
                    path.join("/")
                ));
            }
            let _ = write!(
                out,
                r#","auth_meta":[{}],"cryptographic_id":"{}""#,
                metas.join(","),
                rng.hex(32)
            );
        }
        let _ = writeln!(out, r#","at":"{}"}}"#, clock.at(n));
    }
    out
}
