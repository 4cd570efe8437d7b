//! Properties of the policy engine over random inputs: quotas are never exceeded per
//! calendar hour and day, rule ids are stable across reloads, and dump is a fixed point.

mod common;

use std::collections::HashMap;
use std::fmt::Write;

use common::*;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use kss_policy::{MemoryQuotaStore, MetaInfo, Policy, Request, RequestType};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// ---------------------------------------------------------------------------------------
// (a) quotas per calendar hour and day
// ---------------------------------------------------------------------------------------

/// A limit as written: -1 (unlimited) or a small count (0 = always deny).
fn limit() -> impl Strategy<Value = i64> {
    prop_oneof![1 => Just(-1i64), 1 => Just(0i64), 6 => 1i64..6]
}

/// A step of the clock between two requests: small, large, backwards, days forward.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..120,
        3 => 0i64..5_400,
        1 => -5_400i64..0,
        1 => -2 * 86_400i64..0,
        1 => 86_400i64..3 * 86_400,
    ]
}

/// Starting points near daylight-saving transitions and other edges.
fn start() -> impl Strategy<Value = Timestamp> {
    select(vec![
        "2022-03-26T21:30:00Z", // Europe/Paris spring forward night
        "2022-10-29T22:30:00Z", // Europe/Paris fall back night
        "2022-03-13T05:30:00Z", // America/New_York spring forward
        "2022-11-06T04:30:00Z", // America/New_York fall back
        "2022-04-02T14:30:00Z", // Australia/Lord_Howe: 30-minute DST end
        "2022-03-07T18:00:00Z", // Asia/Kolkata day boundary at 18:30 UTC
        "2022-12-31T22:50:00Z", // new year
    ])
    .prop_map(ts)
}

fn zone_name() -> impl Strategy<Value = &'static str> {
    select(vec![
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
    ])
}

fn limit_yaml(name: &str, v: i64) -> String {
    format!("      {name}: {v}\n")
}

/// The effective limits of a set made of throttles: the least of each (None = unlimited).
fn least(limits: &[i64]) -> Option<u64> {
    limits.iter().filter(|l| **l >= 0).map(|l| *l as u64).min()
}

/// (profile, local date, local hour) and (profile, local date) counts of approvals.
#[derive(Default)]
struct Tally {
    hours: HashMap<(u8, Date, i8), u64>,
    days: HashMap<(u8, Date), u64>,
}

impl Tally {
    fn counts(&self, profile: u8, tz: &TimeZone, at: Timestamp) -> (u64, u64) {
        let local = tz.to_datetime(at);
        (
            *self
                .hours
                .get(&(profile, local.date(), local.hour()))
                .unwrap_or(&0),
            *self.days.get(&(profile, local.date())).unwrap_or(&0),
        )
    }

    fn record(&mut self, profile: u8, tz: &TimeZone, at: Timestamp) {
        let local = tz.to_datetime(at);
        *self
            .hours
            .entry((profile, local.date(), local.hour()))
            .or_default() += 1;
        *self.days.entry((profile, local.date())).or_default() += 1;
    }
}

/// Runs the requests; returns, per request, whether it was approved.
fn run_quota(
    per_hour: &[i64],
    per_day: &[i64],
    zone: &str,
    start: Timestamp,
    steps: &[(u8, i64)],
) -> (TimeZone, Vec<(u8, Timestamp, bool)>) {
    let mut text = String::from("decrypt:\n  - ");
    for (i, (h, d)) in per_hour.iter().zip(per_day).enumerate() {
        text.push_str(if i == 0 { "- " } else { "    - " });
        text.push_str("rule: per-profile-throttle-rule\n");
        text.push_str(&limit_yaml("per_hour", *h));
        text.push_str(&limit_yaml("per_day", *d));
    }
    let policy = load(&text);
    let tz = common::zone(zone);
    let store = MemoryQuotaStore::new();
    let mut at = start;
    let mut out = Vec::with_capacity(steps.len());
    for (profile, delta) in steps {
        at = at
            .checked_add(SignedDuration::from_secs(*delta))
            .expect("instant in range");
        let mut r = Request::new(RequestType::Decrypt);
        r.profile_id = vec![*profile];
        let approved = policy.evaluate(&r, at, &tz, &store).is_approved();
        out.push((*profile, at, approved));
    }
    (tz, out)
}

fn throttles() -> impl Strategy<Value = (Vec<i64>, Vec<i64>)> {
    (1usize..=2).prop_flat_map(|n| {
        (
            proptest::collection::vec(limit(), n),
            proptest::collection::vec(limit(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order of instants, no profile gets more approvals in a calendar hour or
    /// day (of the keyserver's zone, by the request's own instant) than the limits allow.
    #[test]
    fn approvals_never_exceed_the_limits(
        (per_hour, per_day) in throttles(),
        zone in zone_name(),
        start in start(),
        steps in proptest::collection::vec((0u8..3, step()), 1..250),
    ) {
        let (tz, results) = run_quota(&per_hour, &per_day, zone, start, &steps);
        let max_hour = least(&per_hour);
        let max_day = least(&per_day);
        let mut tally = Tally::default();
        for (profile, at, approved) in &results {
            if *approved {
                tally.record(*profile, &tz, *at);
            }
        }
        for ((p, date, hour), n) in &tally.hours {
            if let Some(max) = max_hour {
                prop_assert!(*n <= max, "profile {p}: {n} approvals in {date} hour {hour} > {max}");
            }
        }
        for ((p, date), n) in &tally.days {
            if let Some(max) = max_day {
                prop_assert!(*n <= max, "profile {p}: {n} approvals on {date} > {max}");
            }
        }
    }

    /// When the clock only moves forward, the engine approves exactly while the counts of
    /// the current calendar hour and day are under the limits (not fewer: not vacuous).
    #[test]
    fn with_a_forward_clock_approvals_are_exactly_the_quota(
        (per_hour, per_day) in throttles(),
        zone in zone_name(),
        start in start(),
        steps in proptest::collection::vec(
            (0u8..3, prop_oneof![6 => 0i64..120, 3 => 0i64..5_400, 1 => 86_400i64..2 * 86_400]),
            1..250,
        ),
    ) {
        let (tz, results) = run_quota(&per_hour, &per_day, zone, start, &steps);
        let max_hour = least(&per_hour);
        let max_day = least(&per_day);
        let mut tally = Tally::default();
        for (i, (profile, at, approved)) in results.iter().enumerate() {
            let (h, d) = tally.counts(*profile, &tz, *at);
            let expected = max_hour.is_none_or(|m| h < m) && max_day.is_none_or(|m| d < m);
            prop_assert_eq!(
                *approved, expected,
                "request {} (profile {}, {} local {}): hour count {}, day count {}",
                i, profile, at, tz.to_datetime(*at), h, d
            );
            if *approved {
                tally.record(*profile, &tz, *at);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Random valid policies
// ---------------------------------------------------------------------------------------

/// A string written as a YAML quoted scalar (single or double quotes).
fn quoted(text: &str, double: bool) -> String {
    if double || text.chars().any(char::is_control) {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// A string scalar, quoted one way or the other.
fn string_scalar(pool: Vec<&'static str>) -> impl Strategy<Value = String> {
    (select(pool), any::<bool>()).prop_map(|(s, d)| quoted(s, d))
}

/// A boolean as YAML 1.1 spells it.
fn boolean() -> impl Strategy<Value = String> {
    select(vec![
        "true", "false", "yes", "no", "True", "False", "on", "OFF", "Yes", "NO",
    ])
    .prop_map(str::to_string)
}

/// A list of scalars, as a flow list or a block list indented for an argument.
fn list(items: Vec<String>, flow: bool) -> String {
    if items.is_empty() {
        return " []\n".to_string();
    }
    if flow {
        format!(" [{}]\n", items.join(", "))
    } else {
        items
            .iter()
            .map(|i| format!("\n        - {i}"))
            .collect::<String>()
            + "\n"
    }
}

const PATHS: &[&str] = &[
    "/",
    "/tax*",
    "!/taxi",
    "*.pdf",
    "*",
    "sub/path",
    "sub/",
    "basename.*",
    "baseonly",
    "yes",
    "17:00",
    "!x",
    "a: b",
    "x #y",
    "#hash",
    "- dash",
    "café",
    "日本/文書",
    "😀.txt",
    "/a b/c",
    "'quoted'",
    "\"dq\"",
    "back\\slash",
    "tab\there",
    "[brackets]",
    "{braces}",
    "2022-03-07",
    "null",
    "~",
    "0x1f",
    "@at",
    "%pct",
    " lead",
    "trail ",
];

const REGEXES: &[&str] = &[
    "^/(?!secret)",
    "(?<=/docs/)report\\d+",
    "tax",
    "\\.pdf$",
    "!^/private",
    "[a-z]+/[0-9]{2,4}",
    "(?i)CaSe",
    "é+",
    "!(?<!draft)\\.txt$",
];

fn meta_rule() -> impl Strategy<Value = Vec<String>> {
    (
        proptest::option::of(proptest::collection::vec(
            (select(PATHS.to_vec()), any::<bool>()).prop_map(|(s, d)| quoted(s, d)),
            0..4,
        )),
        proptest::option::of(proptest::collection::vec(
            string_scalar(REGEXES.to_vec()),
            0..3,
        )),
        proptest::option::of(boolean()),
        proptest::option::of(boolean()),
        any::<bool>(),
    )
        .prop_map(|(paths, regexes, cs, rc, flow)| {
            let mut args = vec!["rule: meta-rule\n".to_string()];
            if let Some(p) = paths {
                args.push(format!("paths:{}", list(p, flow)));
            }
            if let Some(r) = regexes {
                args.push(format!("regexes:{}", list(r, !flow)));
            }
            if let Some(b) = cs {
                args.push(format!("case_sensitive: {b}\n"));
            }
            if let Some(b) = rc {
                args.push(format!("require_complete: {b}\n"));
            }
            args
        })
}

/// An integer as YAML 1.1 may spell it.
fn int_spelling(v: i64) -> impl Strategy<Value = String> {
    let mut spellings = vec![v.to_string()];
    if v > 0 {
        spellings.push(format!("{v:#x}"));
        spellings.push(format!("+{v}"));
        if v >= 1000 {
            spellings.push(format!("{}_{:03}", v / 1000, v % 1000));
        }
    }
    select(spellings)
}

fn throttle_rule() -> impl Strategy<Value = Vec<String>> {
    let limit = prop_oneof![Just(-1i64), 0i64..2000].prop_flat_map(int_spelling);
    (
        proptest::option::of(limit.clone()),
        proptest::option::of(limit),
        proptest::option::of(boolean()),
        proptest::option::of(select(vec![
            "expiry_secs: 90\n",
            "db-file: /var/lib/x.db\n",
            "db-uri: 'sqlite:///x'\n",
            "db-table: quota\n",
        ])),
    )
        .prop_map(|(h, d, p, ignored)| {
            let mut args = vec!["rule: per-profile-throttle-rule\n".to_string()];
            if let Some(h) = h {
                args.push(format!("per_hour: {h}\n"));
            }
            if let Some(d) = d {
                args.push(format!("per_day: {d}\n"));
            }
            if let Some(p) = p {
                args.push(format!("persistent: {p}\n"));
            }
            if let Some(i) = ignored {
                args.push(i.to_string());
            }
            args
        })
}

const WORDS: &[&str] = &[
    "humble", "busy", "much", "cactus", "yes", "no", "17:00", "café", "日本", "a:", "#x",
];

fn profile_id_rule() -> impl Strategy<Value = Vec<String>> {
    let hex_id = (
        proptest::collection::vec(any::<u8>(), 1..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(bytes, upper, d)| {
            let h = hex::encode(bytes);
            quoted(&if upper { h.to_uppercase() } else { h }, d)
        });
    let phrase = (
        proptest::collection::vec(select(WORDS.to_vec()), 4..7),
        any::<bool>(),
    )
        .prop_map(|(words, d)| quoted(&words.join(" "), d));
    (
        proptest::collection::vec(prop_oneof![hex_id, phrase], 0..4),
        any::<bool>(),
    )
        .prop_map(|(ids, flow)| {
            vec![
                "rule: profile-id-rule\n".to_string(),
                format!("profile_ids:{}", list(ids, flow)),
            ]
        })
}

/// A time of day (seconds) written in one of the documented formats; `offset` is appended.
fn time_text(seconds: u32, format: u8, offset: &str) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let text = match format {
        0 => format!("{h}:{m:02}:{s:02}"),
        1 => format!("{h:02}:{m:02}:{s:02}"),
        2 if s == 0 => format!("{h}:{m:02}"),
        3 if s == 0 => {
            let h12 = if h % 12 == 0 { 12 } else { h % 12 };
            let ampm = if h < 12 { "am" } else { "pm" };
            if m == 0 {
                format!("{h12}{ampm}")
            } else {
                format!("{h12}:{m:02}{ampm}")
            }
        }
        _ => format!("{h:02}:{m:02}:{s:02}"),
    };
    if format == 3 && s == 0 && !offset.is_empty() {
        format!("{text} {offset}") // `5pm +04:00`: `5pmZ` would read as a word
    } else {
        format!("{text}{offset}")
    }
}

fn time_scalar(seconds: u32, format: u8, offset: &str, quote: u8) -> String {
    let t = time_text(seconds, format, offset);
    match quote {
        0 => t, // plain: 17:00 is the integer 1020 in YAML 1.1, accepted as a time
        1 => quoted(&t, false),
        _ => quoted(&t, true),
    }
}

fn date_scalar(day: i64, quote: u8) -> String {
    let d = jiff::civil::date(2022, 1, 1)
        .checked_add(jiff::Span::new().days(day))
        .expect("date in range");
    match quote {
        0 => d.to_string(),
        1 => quoted(&d.to_string(), false),
        _ => quoted(&d.to_string(), true),
    }
}

fn time_range_rule() -> impl Strategy<Value = Vec<String>> {
    let window = proptest::option::of((
        0u32..86_399,
        1u32..86_400,
        0u8..5,
        0u8..5,
        select(vec!["", "", "+04:00", "Z", "-05:30"]),
        0u8..3,
        0u8..3,
    ));
    (
        window,
        proptest::option::of(subsequence((0..7).collect::<Vec<u8>>(), 0..=7)),
        proptest::collection::btree_set(0i64..400, 0..6),
        any::<bool>(),
        (0u8..3, any::<bool>()),
    )
        .prop_map(|(window, days, dates, flow, (date_quote, split))| {
            let mut args = vec!["rule: time-range-rule\n".to_string()];
            if let Some((a, len, fa, fb, off, qa, qb)) = window {
                let start = a;
                let end = (a + len).min(86_399);
                if end > start {
                    args.push(format!("time_start: {}\n", time_scalar(start, fa, off, qa)));
                    args.push(format!("time_end: {}\n", time_scalar(end, fb, off, qb)));
                }
            }
            if let Some(days) = days {
                args.push(format!(
                    "days:{}",
                    list(days.iter().map(u8::to_string).collect(), flow)
                ));
            }
            let dates: Vec<i64> = dates.into_iter().collect();
            let (inc, exc) = dates.split_at(if split { dates.len() / 2 } else { dates.len() });
            if !inc.is_empty() {
                args.push(format!(
                    "include:{}",
                    list(
                        inc.iter().map(|d| date_scalar(*d, date_quote)).collect(),
                        flow
                    )
                ));
            }
            if !exc.is_empty() {
                args.push(format!(
                    "exclude:{}",
                    list(
                        exc.iter()
                            .map(|d| date_scalar(*d, 2 - date_quote))
                            .collect(),
                        !flow
                    )
                ));
            }
            args
        })
}

fn session_rule() -> impl Strategy<Value = Vec<String>> {
    (
        proptest::option::of(0i64..10_000),
        proptest::option::of(2i64..604_800),
        proptest::option::of(prop_oneof![
            Just("5:00pm EST".to_string()),
            Just("'17:00'".to_string()),
            Just("17:30".to_string()),
            Just("9pm".to_string()),
            Just("'23:00+02:00'".to_string()),
        ]),
    )
        .prop_map(|(count, time, end)| {
            let mut args = vec!["rule: session-params-rule\n".to_string()];
            if let Some(c) = count {
                args.push(format!("max_request_count: {c}\n"));
            }
            if let Some(t) = time {
                args.push(format!("max_time_seconds: {t}\n"));
            }
            if let Some(e) = end {
                args.push(format!("end_by_time: {e}\n"));
            }
            args
        })
}

/// An optional `rule_id` line: explicit ids are quoted strings (some look like other types).
fn rule_id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => Just(None),
        2 => string_scalar(vec!["shared", "yes", "17:00", "a: b", "日本", "r-1", "12"])
            .prop_map(|s| Some(format!("rule_id: {s}\n"))),
        1 => Just(Some("rule_id: ~\n".to_string())),
    ]
}

/// A rule's lines (first line `rule: ...` or an argument; the rule key may come last).
fn rule_for(t: RequestType) -> BoxedStrategy<Vec<String>> {
    let mut kinds: Vec<BoxedStrategy<Vec<String>>> = vec![
        Just(vec!["rule: approve-rule\n".to_string()]).boxed(),
        Just(vec!["rule: reject-rule\n".to_string()]).boxed(),
        time_range_rule().boxed(),
        session_rule().boxed(),
    ];
    if t != RequestType::CreateProfile {
        kinds.push(throttle_rule().boxed());
        kinds.push(profile_id_rule().boxed());
    }
    if !matches!(
        t,
        RequestType::CreateProfile | RequestType::CreateLocation | RequestType::Search
    ) {
        kinds.push(meta_rule().boxed());
    }
    (
        proptest::strategy::Union::new(kinds),
        rule_id(),
        any::<bool>(),
    )
        .prop_map(|(mut lines, id, rule_last)| {
            if let Some(id) = id {
                lines.push(id);
            }
            if rule_last && lines.len() > 1 {
                lines.rotate_left(1);
            }
            lines
        })
        .boxed()
}

fn render_rule(out: &mut String, first_in_set: bool, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let prefix = match (i, first_in_set) {
            (0, true) => "  - - ",
            (0, false) => "    - ",
            _ => "      ",
        };
        out.push_str(prefix);
        out.push_str(line);
    }
}

fn section(t: RequestType) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::collection::vec(rule_for(t), 0..4), 0..4).prop_map(
        move |sets| {
            if sets.is_empty() {
                return format!("{t}: []\n");
            }
            let mut out = format!("{t}:\n");
            for set in sets {
                if set.is_empty() {
                    out.push_str("  - []\n");
                }
                for (i, rule) in set.iter().enumerate() {
                    render_rule(&mut out, i == 0, rule);
                }
            }
            out
        },
    )
}

fn policy_text() -> impl Strategy<Value = String> {
    subsequence(RequestType::ALL.to_vec(), 0..=8)
        .prop_shuffle()
        .prop_flat_map(|types| {
            types
                .into_iter()
                .map(|t| section(t).boxed())
                .collect::<Vec<_>>()
        })
        .prop_map(|sections| {
            if sections.is_empty() {
                "{}\n".to_string()
            } else {
                sections.concat()
            }
        })
}

fn must_load(text: &str) -> Result<Policy, TestCaseError> {
    Policy::load(text).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{text}")))
}

/// A few requests of every type, at a few instants, to compare two policies' decisions.
fn probes() -> Vec<(Request, Timestamp)> {
    let metas: &[&[(&str, bool)]] = &[
        &[("taxes/a.pdf", true)],
        &[("x/yes", false)],
        &[("日本/文書/a", true)],
        &[("x/a: b", true), ("sub/path/c", true)],
        &[("secret/x", true)],
    ];
    let words = ["humble", "busy", "much", "cactus", "yes"];
    let mut out = Vec::new();
    for t in RequestType::ALL {
        for (i, meta) in metas.iter().enumerate() {
            let mut r = Request::new(t);
            r.profile_id = vec![i as u8, 0xab];
            r.profile_words = words.iter().map(|w| w.to_string()).collect();
            r.auth_meta = meta
                .iter()
                .map(|(m, c)| MetaInfo {
                    meta: m.to_string(),
                    complete: *c,
                })
                .collect();
            for at in [
                "2022-03-07T10:00:00Z",
                "2022-03-12T23:30:00Z",
                "2022-07-01T03:00:00Z",
            ] {
                out.push((r.clone(), ts(at)));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// load -> dump -> load keeps every rule id (and so every quota counter).
    #[test]
    fn rule_ids_are_stable_across_reloads(text in policy_text()) {
        let first = must_load(&text)?;
        let dumped = first.dump();
        let second = must_load(&dumped)?;
        prop_assert_eq!(first.rule_ids(), second.rule_ids(), "{}\n--- dump:\n{}", text, dumped);
        prop_assert_eq!(first.quota_limits(), second.quota_limits());
        // and loading the same text twice gives the same ids
        prop_assert_eq!(first.rule_ids(), must_load(&text)?.rule_ids());
    }

    /// dump -> load -> dump is a fixed point, and the dumped policy decides alike.
    #[test]
    fn dump_is_a_fixed_point(text in policy_text()) {
        let first = must_load(&text)?;
        let dumped = first.dump();
        let second = must_load(&dumped)?;
        prop_assert_eq!(&second.dump(), &dumped, "source:\n{}", text);
        for (r, at) in probes() {
            for tz in [TimeZone::UTC, zone("Asia/Tokyo")] {
                let a = first.evaluate(&r, at, &tz, &MemoryQuotaStore::new());
                let b = second.evaluate(&r, at, &tz, &MemoryQuotaStore::new());
                prop_assert_eq!(a, b, "{:?} at {}\nsource:\n{}\ndump:\n{}", r, at, text, dumped);
            }
        }
    }
}
