//! The policy language as `docs/policy.md` describes it: one or a few tests per example and
//! per rule of that reference, through the crate's public API only.

mod common;

use common::*;
use jiff::tz::TimeZone;
use kss_policy::{
    Decision, DenyReason, LoadError, LoadErrorKind, MemoryQuotaStore, Policy, QuotaStore,
    QuotaWindow, Request, RequestType, SessionParams, TimeOfDay,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Checks every location field of a load error and that its message names them.
fn assert_located(
    e: &LoadError,
    request_type: &str,
    rule_set: Option<usize>,
    rule: Option<usize>,
    argument: Option<&str>,
) {
    let loc = e.location();
    let text = e.to_string();
    assert_eq!(
        loc.request_type.as_deref(),
        Some(request_type),
        "request type of: {text}"
    );
    assert_eq!(loc.rule_set, rule_set, "rule set of: {text}");
    assert_eq!(loc.rule, rule, "rule of: {text}");
    assert_eq!(loc.argument.as_deref(), argument, "argument of: {text}");
    assert!(loc.line.is_some(), "no line in: {text}");
    assert!(
        text.starts_with(request_type),
        "message does not name the request type: {text}"
    );
    if let Some(s) = rule_set {
        assert!(
            text.contains(&format!("rule set {s}")),
            "message does not name rule set {s}: {text}"
        );
    }
    if let Some(r) = rule {
        assert!(
            text.contains(&format!(", rule {r}")),
            "message does not name rule {r}: {text}"
        );
    }
    if let Some(a) = argument {
        assert!(
            text.contains(&format!("argument '{a}'")),
            "message does not name argument {a}: {text}"
        );
    }
}

/// A policy with one decrypt rule set made of one rule (`rule_yaml` is the rule's body,
/// each line indented by 6 spaces after the first).
fn one_rule(request_type: &str, rule_yaml: &str) -> String {
    format!("{request_type}:\n  - - {rule_yaml}\n")
}

/// A decrypt meta-rule with the given flow list of paths.
fn meta_paths(paths: &str) -> Policy {
    load(&one_rule(
        "decrypt",
        &format!("rule: meta-rule\n      paths: {paths}"),
    ))
}

fn meta_regexes(regexes: &str) -> Policy {
    load(&one_rule(
        "decrypt",
        &format!("rule: meta-rule\n      regexes: {regexes}"),
    ))
}

fn window(at: jiff::Timestamp, tz: &TimeZone) -> QuotaWindow {
    QuotaWindow::of(tz.to_datetime(at))
}

// ---------------------------------------------------------------------------------------
// Shape and load errors
// ---------------------------------------------------------------------------------------

#[test]
fn spec_shape_example_loads_and_behaves() {
    let p = load(
        "
decrypt:                 # request type
  - - rule: time-range-rule        # rule set 0: every rule must approve (AND)
      time_start: 8:00am
      time_end: 6:00pm
    - rule: per-profile-throttle-rule
      per_day: 30
      persistent: true
  - - rule: meta-rule              # rule set 1
      paths: [/public]
search:
  - - rule: profile-id-rule
      profile_ids: [humble busy much cactus]
",
    );
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    // in working hours: set 0 wins (and consumes)
    let d = p.evaluate(
        &decrypt_complete("private/x"),
        monday_morning(),
        &tz,
        &store,
    );
    assert_eq!(d.rule_set(), Some(0));
    // at night: set 0 fails on its time range; set 1 approves only /public
    let night = ts("2022-03-07T23:00:00Z");
    let d = p.evaluate(&decrypt_complete("public/a.txt"), night, &tz, &store);
    assert_eq!(d.rule_set(), Some(1));
    assert!(
        !p.evaluate(&decrypt_complete("private/x"), night, &tz, &store)
            .is_approved()
    );
    // search: by profile words
    let mut s = req(RequestType::Search, b"\x01");
    s.profile_words = ["humble", "busy", "much", "cactus", "extra"]
        .map(String::from)
        .to_vec();
    assert_eq!(decide(&p, &s).rule_set(), Some(0));
    s.profile_words[3] = "cactuz".into();
    assert!(!approves(&p, &s));
    assert_eq!(p.quota_limits().len(), 1);
    assert!(p.quota_limits()[0].persistent);
    assert_eq!(p.quota_limits()[0].per_day, Some(30));
}

#[test]
fn empty_file_is_a_load_error() {
    for text in ["", "\n", "# only a comment\n", "   \n\n"] {
        let e = load_err(text);
        assert_eq!(e.kind(), &LoadErrorKind::Empty, "{text:?}: {e}");
    }
}

#[test]
fn empty_mapping_is_a_valid_policy_with_only_defaults() {
    let p = load("{}");
    assert!(p.warnings().is_empty());
    assert!(p.rule_ids().is_empty());
    for t in RequestType::ALL {
        let d = decide(&p, &req(t, b"\x01"));
        match t {
            RequestType::CreateProfile | RequestType::CreateLocation => assert_eq!(
                d,
                Decision::Approved {
                    rule_set: None,
                    session: None
                },
                "{t}"
            ),
            _ => assert_eq!(d, Decision::Denied(DenyReason::NotInPolicy), "{t}"),
        }
    }
}

#[test]
fn top_level_must_be_a_mapping() {
    for text in ["- decrypt\n", "decrypt\n", "42\n", "~\n"] {
        let e = load_err(text);
        assert!(
            matches!(e.kind(), LoadErrorKind::NotAMapping { .. }),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn null_section_is_a_load_error() {
    let e = load_err("decrypt: []\nsearch:\n");
    assert_eq!(e.kind(), &LoadErrorKind::SectionNotList { found: "null" });
    assert_located(&e, "search", None, None, None);
    assert_eq!(e.location().line, Some(2));

    let e = load_err("rename: {rule: approve-rule}\n");
    assert!(
        matches!(e.kind(), LoadErrorKind::SectionNotList { .. }),
        "{e}"
    );
    assert_located(&e, "rename", None, None, None);
}

#[test]
fn null_rule_set_is_a_load_error() {
    let e = load_err("decrypt:\n  - - rule: approve-rule\n  -\n");
    assert_eq!(e.kind(), &LoadErrorKind::RuleSetNotList { found: "null" });
    assert_located(&e, "decrypt", Some(1), None, None);

    let e = load_err("decrypt: [~]\n");
    assert_eq!(e.kind(), &LoadErrorKind::RuleSetNotList { found: "null" });
    assert_located(&e, "decrypt", Some(0), None, None);
}

#[test]
fn rule_set_that_is_not_a_list_is_a_load_error() {
    // A common mistake: one `-` too few, so the rule set is the rule itself.
    let e = load_err("search:\n  - rule: approve-rule\n");
    assert!(
        matches!(e.kind(), LoadErrorKind::RuleSetNotList { found: "mapping" }),
        "{e}"
    );
    assert_located(&e, "search", Some(0), None, None);
}

#[test]
fn rule_that_is_not_a_map_is_a_load_error() {
    let e = load_err(
        "decrypt:\n  - - rule: approve-rule\n  - - rule: approve-rule\n    - approve-rule\n",
    );
    assert!(
        matches!(e.kind(), LoadErrorKind::RuleNotMapping { .. }),
        "{e}"
    );
    assert_located(&e, "decrypt", Some(1), Some(1), None);

    let e = load_err("decrypt: [[[approve-rule]]]\n");
    assert!(
        matches!(e.kind(), LoadErrorKind::RuleNotMapping { found: "list" }),
        "{e}"
    );
    assert_located(&e, "decrypt", Some(0), Some(0), None);
}

#[test]
fn rule_without_rule_name_is_a_load_error() {
    let e = load_err(
        "
decrypt:
  - - rule: approve-rule
    - paths: [/a]
",
    );
    assert_eq!(e.kind(), &LoadErrorKind::MissingRuleName);
    assert_located(&e, "decrypt", Some(0), Some(1), None);

    // a rule name that is not a string
    let e = load_err("decrypt: [[{rule: 5}]]\n");
    assert_located(&e, "decrypt", Some(0), Some(0), Some("rule"));
}

#[test]
fn unknown_request_type_is_a_load_error() {
    let e = load_err("decrypt: []\ndecrypts:\n  - - rule: approve-rule\n");
    assert_eq!(
        e.kind(),
        &LoadErrorKind::UnknownRequestType("decrypts".into())
    );
    assert_located(&e, "decrypts", None, None, None);
    assert_eq!(e.location().line, Some(2));
    // request type names are exact
    let e = load_err("Decrypt: []\n");
    assert_eq!(
        e.kind(),
        &LoadErrorKind::UnknownRequestType("Decrypt".into())
    );
}

#[test]
fn every_documented_request_type_is_accepted() {
    let text: String = [
        "decrypt",
        "search",
        "create_profile",
        "create_location",
        "rename",
        "secure_export",
        "start_session",
        "change_profile",
    ]
    .iter()
    .map(|t| format!("{t}:\n  - - rule: approve-rule\n"))
    .collect();
    let p = load(&text);
    for t in RequestType::ALL {
        assert_eq!(decide(&p, &req(t, b"\x01")).rule_set(), Some(0), "{t}");
    }
}

#[test]
fn unknown_rule_is_a_load_error() {
    let e = load_err("search:\n  - - rule: approve-rule\n  - - rule: nope-rule\n");
    assert_eq!(e.kind(), &LoadErrorKind::UnknownRule("nope-rule".into()));
    assert_located(&e, "search", Some(1), Some(0), None);
    assert!(e.to_string().contains("nope-rule"), "{e}");
}

#[test]
fn unknown_argument_is_a_load_error_naming_it() {
    let e = load_err(
        "
decrypt:
  - - rule: approve-rule
    - rule: per-profile-throttle-rule
      per_days: 3
",
    );
    assert!(
        matches!(
            e.kind(),
            LoadErrorKind::UnknownArgument {
                rule: "per-profile-throttle-rule",
                ..
            }
        ),
        "{e}"
    );
    assert_located(&e, "decrypt", Some(0), Some(1), Some("per_days"));
    assert_eq!(e.location().line, Some(5));
    assert_eq!(
        e.location().rule_name.as_deref(),
        Some("per-profile-throttle-rule")
    );
    assert!(e.to_string().contains("per-profile-throttle-rule"), "{e}");

    // rules without arguments take none
    for rule in ["approve-rule", "reject-rule"] {
        let e = load_err(&one_rule("rename", &format!("rule: {rule}\n      x: 1")));
        assert_located(&e, "rename", Some(0), Some(0), Some("x"));
    }
    // typos in every rule
    for (rule, typo) in [
        ("meta-rule", "path: [/a]"),
        ("profile-id-rule", "profile_id: [abcd]"),
        ("time-range-rule", "day: [0]"),
        ("session-params-rule", "max_time: 30"),
    ] {
        let e = load_err(&one_rule(
            "start_session",
            &format!("rule: {rule}\n      {typo}"),
        ));
        let arg = typo.split(':').next().expect("key");
        assert_located(&e, "start_session", Some(0), Some(0), Some(arg));
    }
}

#[test]
fn bad_argument_values_are_load_errors_naming_the_argument() {
    let cases: &[(&str, &str)] = &[
        (
            "rule: per-profile-throttle-rule\n      per_day: ten",
            "per_day",
        ),
        (
            "rule: per-profile-throttle-rule\n      per_day: '10'",
            "per_day",
        ),
        (
            "rule: per-profile-throttle-rule\n      per_day: 1.5",
            "per_day",
        ),
        (
            "rule: per-profile-throttle-rule\n      per_hour: -2",
            "per_hour",
        ),
        (
            "rule: per-profile-throttle-rule\n      per_hour: yes",
            "per_hour",
        ),
        (
            "rule: per-profile-throttle-rule\n      per_hour: [1]",
            "per_hour",
        ),
        (
            "rule: per-profile-throttle-rule\n      persistent: 1",
            "persistent",
        ),
        (
            "rule: per-profile-throttle-rule\n      persistent: 'yes'",
            "persistent",
        ),
        ("rule: meta-rule\n      paths: /a", "paths"),
        ("rule: meta-rule\n      paths: [5]", "paths"),
        (
            "rule: meta-rule\n      case_sensitive: 'true'",
            "case_sensitive",
        ),
        (
            "rule: meta-rule\n      require_complete: maybe",
            "require_complete",
        ),
        (
            "rule: profile-id-rule\n      profile_ids: abcd",
            "profile_ids",
        ),
        (
            "rule: profile-id-rule\n      profile_ids: [abc]",
            "profile_ids",
        ),
        (
            "rule: profile-id-rule\n      profile_ids: [xyzw]",
            "profile_ids",
        ),
        ("rule: time-range-rule\n      days: [mon]", "days"),
        ("rule: time-range-rule\n      days: 1", "days"),
        (
            "rule: time-range-rule\n      include: 2022-03-07",
            "include",
        ),
        ("rule: time-range-rule\n      exclude: [March 7]", "exclude"),
        (
            "rule: time-range-rule\n      include: ['2022-02-30']",
            "include",
        ),
        (
            "rule: time-range-rule\n      time_start: 25:00\n      time_end: '26:00'",
            "time_start",
        ),
        (
            "rule: time-range-rule\n      time_start: noon\n      time_end: 5pm",
            "time_start",
        ),
        (
            "rule: time-range-rule\n      time_start: 9am\n      time_end: 17",
            "time_end",
        ),
        (
            "rule: session-params-rule\n      max_request_count: -1",
            "max_request_count",
        ),
        (
            "rule: session-params-rule\n      max_time_seconds: 1",
            "max_time_seconds",
        ),
        (
            "rule: session-params-rule\n      max_time_seconds: 604800",
            "max_time_seconds",
        ),
        (
            "rule: session-params-rule\n      max_time_seconds: 5m",
            "max_time_seconds",
        ),
        (
            "rule: session-params-rule\n      end_by_time: late",
            "end_by_time",
        ),
        ("rule: approve-rule\n      rule_id: [a]", "rule_id"),
    ];
    for (rule, arg) in cases {
        let text = format!(
            "start_session:\n  - - rule: approve-rule\n  - - rule: approve-rule\n    - {rule}\n"
        );
        let e = load_err(&text);
        assert_located(&e, "start_session", Some(1), Some(1), Some(arg));
    }
}

#[test]
fn incompatible_request_and_rule_combinations_are_load_errors() {
    let cases = [
        (
            "create_profile",
            "profile-id-rule\n      profile_ids: [abcd]",
        ),
        (
            "create_profile",
            "per-profile-throttle-rule\n      per_day: 3",
        ),
        ("create_profile", "meta-rule\n      paths: [/a]"),
        ("create_location", "meta-rule\n      paths: [/a]"),
        ("search", "meta-rule\n      paths: [/a]"),
    ];
    for (t, rule) in cases {
        let text = format!("decrypt: [[]]\n{t}:\n  - - rule: approve-rule\n    - rule: {rule}\n");
        let e = load_err(&text);
        assert!(
            matches!(e.kind(), LoadErrorKind::Incompatible { .. }),
            "{t}/{rule}: {e}"
        );
        assert_located(&e, t, Some(0), Some(1), None);
        let name = rule.split('\n').next().expect("name");
        assert!(e.to_string().contains(name), "{e}");
    }
    // the same rules are fine elsewhere
    load(
        "
create_profile:
  - - rule: time-range-rule
      days: [0]
create_location:
  - - rule: profile-id-rule
      profile_ids: [abcd]
    - rule: per-profile-throttle-rule
      per_day: 3
search:
  - - rule: per-profile-throttle-rule
      per_day: 3
    - rule: profile-id-rule
      profile_ids: [abcd]
decrypt:
  - - rule: meta-rule
      paths: [/a]
",
    );
}

#[test]
fn profile_phrase_of_fewer_than_four_words_is_a_load_error() {
    let e = load_err(&one_rule(
        "decrypt",
        "rule: profile-id-rule\n      profile_ids: [abcd, humble busy much]",
    ));
    assert_eq!(
        e.kind(),
        &LoadErrorKind::TooFewWords {
            phrase: "humble busy much".into(),
            count: 3
        }
    );
    assert_located(&e, "decrypt", Some(0), Some(0), Some("profile_ids"));
    load(&one_rule(
        "decrypt",
        "rule: profile-id-rule\n      profile_ids: [humble busy much cactus]",
    ));
}

#[test]
fn weekday_outside_0_to_6_is_a_load_error() {
    for (days, bad) in [("[0, 7]", 7), ("[-1]", -1), ("[6, 100]", 100)] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: time-range-rule\n      days: {days}"),
        ));
        assert_eq!(e.kind(), &LoadErrorKind::DayOutOfRange(bad), "{days}");
        assert_located(&e, "decrypt", Some(0), Some(0), Some("days"));
    }
}

#[test]
fn date_in_both_include_and_exclude_is_a_load_error() {
    let e = load_err(&one_rule(
        "decrypt",
        "rule: time-range-rule\n      include: [2022-03-05, 2022-03-12]\n      exclude: ['2022-03-12']",
    ));
    assert_eq!(
        e.kind(),
        &LoadErrorKind::IncludeExcludeOverlap(jiff::civil::date(2022, 3, 12))
    );
    let arg = e.location().argument.clone().expect("an argument");
    assert!(arg == "include" || arg == "exclude", "{e}");
    assert_located(&e, "decrypt", Some(0), Some(0), Some(&arg));
}

#[test]
fn time_start_not_before_time_end_is_a_load_error() {
    for (start, end) in [("5pm", "9am"), ("17:00", "5:00pm"), ("9:00:01", "9:00")] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: time-range-rule\n      time_start: '{start}'\n      time_end: '{end}'"),
        ));
        assert!(
            matches!(e.kind(), LoadErrorKind::StartNotBeforeEnd { .. }),
            "{start}-{end}: {e}"
        );
        let arg = e.location().argument.clone().expect("an argument");
        assert!(arg == "time_start" || arg == "time_end", "{e}");
        assert_located(&e, "decrypt", Some(0), Some(0), Some(&arg));
    }
}

#[test]
fn only_one_of_time_start_and_time_end_is_a_load_error() {
    for (present, missing) in [("time_start", "time_end"), ("time_end", "time_start")] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: time-range-rule\n      {present}: 9am"),
        ));
        assert_eq!(
            e.kind(),
            &LoadErrorKind::OnlyOneOfStartEnd {
                missing: if missing == "time_end" {
                    "time_end"
                } else {
                    "time_start"
                }
            }
        );
        // the offending argument is the one written without its partner
        assert_located(&e, "decrypt", Some(0), Some(0), Some(present));
        assert!(e.to_string().contains(missing), "{e}");
    }
}

#[test]
fn invalid_regex_is_a_load_error() {
    for bad in ["'(unclosed'", "'[a-'", "'!(?<=a+)b('", "'a{2,1}'"] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: meta-rule\n      regexes: ['^/ok', {bad}]"),
        ));
        assert!(
            matches!(e.kind(), LoadErrorKind::InvalidRegex { .. }),
            "{bad}: {e}"
        );
        assert_located(&e, "decrypt", Some(0), Some(0), Some("regexes"));
    }
}

#[test]
fn empty_pattern_is_a_load_error() {
    for (arg, list) in [
        ("paths", "['']"),
        ("paths", "[/a, '!']"),
        ("regexes", "['']"),
        ("regexes", "['!']"),
    ] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: meta-rule\n      {arg}: {list}"),
        ));
        assert_eq!(e.kind(), &LoadErrorKind::EmptyPattern, "{arg}: {list}");
        assert_located(&e, "decrypt", Some(0), Some(0), Some(arg));
    }
}

#[test]
fn one_error_rejects_the_whole_policy() {
    // valid sections before and after do not make a partially loaded policy
    let e = load_err(
        "
create_profile:
  - - rule: approve-rule
decrypt:
  - - rule: approve-rule
  - - rule: per-profile-throttle-rule
      per_day: -5
search:
  - - rule: approve-rule
",
    );
    assert_located(&e, "decrypt", Some(1), Some(0), Some("per_day"));
    assert_eq!(e.location().line, Some(7));
}

#[test]
fn invalid_yaml_is_a_load_error_with_a_line() {
    let e = load_err("decrypt:\n  - - rule: approve-rule\n  - [unclosed\n");
    assert!(matches!(e.kind(), LoadErrorKind::Yaml(_)), "{e}");
    assert!(e.location().line.is_some(), "{e}");
}

// ---------------------------------------------------------------------------------------
// YAML 1.1 typing
// ---------------------------------------------------------------------------------------

#[test]
fn yaml11_booleans_are_booleans() {
    for (word, value) in [
        ("yes", true),
        ("Yes", true),
        ("YES", true),
        ("True", true),
        ("true", true),
        ("on", true),
        ("ON", true),
        ("no", false),
        ("No", false),
        ("off", false),
        ("False", false),
        ("FALSE", false),
    ] {
        let p = load(&one_rule(
            "decrypt",
            &format!("rule: per-profile-throttle-rule\n      per_day: 3\n      persistent: {word}"),
        ));
        assert_eq!(p.quota_limits()[0].persistent, value, "{word}");
    }
}

#[test]
fn quoted_yes_is_a_string_and_so_not_a_boolean() {
    for quoted in ["'yes'", "\"yes\"", "'true'", "!!str yes"] {
        let e = load_err(&one_rule(
            "decrypt",
            &format!("rule: per-profile-throttle-rule\n      persistent: {quoted}"),
        ));
        assert!(matches!(e.kind(), LoadErrorKind::BadValue { .. }), "{e}");
        assert_located(&e, "decrypt", Some(0), Some(0), Some("persistent"));
    }
    // `yes` as a case_sensitive flag works like true
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      case_sensitive: yes\n      paths: [/A]",
    ));
    assert!(approves(&p, &decrypt_complete("A/x")));
    assert!(!approves(&p, &decrypt_complete("a/x")));
}

#[test]
fn unquoted_times_and_dates_are_accepted_where_expected() {
    // 17:00 and 9:00 are sexagesimal integers in YAML 1.1; 2022-03-12 is a date.
    let p = load(&one_rule(
        "decrypt",
        "rule: time-range-rule\n      time_start: 9:00\n      time_end: 17:00\n      days: [0]\n      include: [2022-03-12]",
    ));
    let r = decrypt_complete("a");
    assert!(approves_at(&p, &r, ts("2022-03-07T09:00:00Z")));
    assert!(approves_at(&p, &r, ts("2022-03-07T17:00:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-07T17:00:01Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-07T08:59:59Z")));
    // Saturday 2022-03-12 is included; Saturday 2022-03-19 is not
    assert!(approves_at(&p, &r, ts("2022-03-12T12:00:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-19T12:00:00Z")));
    // seconds too
    let p = load(&one_rule(
        "decrypt",
        "rule: time-range-rule\n      time_start: 17:00:30\n      time_end: 18:00",
    ));
    assert!(!approves_at(&p, &r, ts("2022-03-07T17:00:29Z")));
    assert!(approves_at(&p, &r, ts("2022-03-07T17:00:30Z")));
}

// ---------------------------------------------------------------------------------------
// Evaluation: defaults, OR in order, AND within a set
// ---------------------------------------------------------------------------------------

#[test]
fn absent_sections_default_and_present_sections_decide() {
    let p = load("decrypt:\n  - - rule: approve-rule\n");
    assert!(approves(&p, &req(RequestType::CreateProfile, b"\x01")));
    assert!(approves(&p, &req(RequestType::CreateLocation, b"\x01")));
    for t in [
        RequestType::Search,
        RequestType::Rename,
        RequestType::SecureExport,
        RequestType::StartSession,
        RequestType::ChangeProfile,
    ] {
        assert!(!approves(&p, &req(t, b"\x01")), "{t}");
    }
    // a present create_profile section decides alone
    let p = load("create_profile:\n  - - rule: reject-rule\n");
    assert!(!approves(&p, &req(RequestType::CreateProfile, b"\x01")));
    assert!(approves(&p, &req(RequestType::CreateLocation, b"\x01")));
}

#[test]
fn empty_section_denies_and_empty_rule_set_approves() {
    let p = load("create_profile: []\ncreate_location: []\ndecrypt: [[]]\nsearch:\n  - []\n");
    assert!(!approves(&p, &req(RequestType::CreateProfile, b"\x01")));
    assert!(!approves(&p, &req(RequestType::CreateLocation, b"\x01")));
    assert_eq!(
        decide(&p, &decrypt_complete("anything")),
        Decision::Approved {
            rule_set: Some(0),
            session: None
        }
    );
    assert_eq!(
        decide(&p, &req(RequestType::Search, b"\x01")).rule_set(),
        Some(0)
    );
}

#[test]
fn absent_sections_consume_no_quota() {
    let p = load("decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 1\n");
    let store = MemoryQuotaStore::new();
    let at = monday_morning();
    let tz = TimeZone::UTC;
    for _ in 0..3 {
        assert!(
            !p.evaluate(&req(RequestType::Search, b"\x01"), at, &tz, &store)
                .is_approved()
        );
        assert!(
            p.evaluate(&req(RequestType::CreateProfile, b"\x01"), at, &tz, &store)
                .is_approved()
        );
    }
    assert!(
        store
            .at_quota(p.quota_limits(), window(at, &tz))
            .expect("list")
            .is_empty()
    );
    let mut r = decrypt_complete("a");
    r.profile_id = b"\x01".to_vec();
    assert!(p.evaluate(&r, at, &tz, &store).is_approved());
    assert!(!p.evaluate(&r, at, &tz, &store).is_approved());
}

#[test]
fn rule_sets_are_tried_in_order_and_the_first_that_approves_wins() {
    let p = load(
        "
decrypt:
  - - rule: reject-rule
  - - rule: meta-rule
      paths: [/b]
  - - rule: meta-rule
      paths: [/a]
  - - rule: approve-rule
  - - rule: meta-rule
      paths: [/a]
",
    );
    assert_eq!(decide(&p, &decrypt_complete("a/x")).rule_set(), Some(2));
    assert_eq!(decide(&p, &decrypt_complete("b/x")).rule_set(), Some(1));
    assert_eq!(decide(&p, &decrypt_complete("c/x")).rule_set(), Some(3));
    let p = load("decrypt:\n  - - rule: reject-rule\n  - - rule: reject-rule\n");
    assert_eq!(
        decide(&p, &decrypt_complete("a")),
        Decision::Denied(DenyReason::Policy)
    );
}

#[test]
fn rules_of_a_set_must_all_approve() {
    let p = load(
        "
decrypt:
  - - rule: meta-rule
      paths: [/a]
    - rule: profile-id-rule
      profile_ids: ['0102']
    - rule: time-range-rule
      days: [0]
",
    );
    let monday = monday_morning();
    let tuesday = ts("2022-03-08T10:00:00Z");
    let mut r = decrypt_complete("a/x");
    assert!(approves_at(&p, &r, monday));
    assert!(!approves_at(&p, &r, tuesday));
    r.profile_id = b"\x01\x03".to_vec();
    assert!(!approves_at(&p, &r, monday));
    assert!(!approves_at(&p, &decrypt_complete("b/x"), monday));
    let p = load(
        "decrypt:\n  - - rule: approve-rule\n    - rule: reject-rule\n    - rule: approve-rule\n",
    );
    assert!(!approves(&p, &decrypt_complete("a")));
}

#[test]
fn a_rule_that_errors_denies_its_set_and_the_next_set_is_tried() {
    // Catastrophic backtracking (a back-reference forces the backtracking engine): the
    // regex engine gives up with an error.
    let evil = "'^(a|a)*\\1(?=c)'";
    let victim = decrypt_partial(&"a".repeat(64));
    // An error is not a "no match": the inverted form (which approves on no match) denies too.
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      regexes: ['!^(a|a)*\\1(?=c)']",
    ));
    assert!(
        !approves(&p, &victim),
        "an erroring inverted regex must deny"
    );
    assert!(
        approves(&p, &decrypt_partial("b")),
        "the inverted regex works otherwise"
    );
    let p = load(&format!(
        "decrypt:\n  - - rule: meta-rule\n      regexes: [{evil}]\n  - - rule: approve-rule\n"
    ));
    assert_eq!(decide(&p, &victim).rule_set(), Some(1));
}

// ---------------------------------------------------------------------------------------
// Only the winning set consumes quota
// ---------------------------------------------------------------------------------------

#[test]
fn a_set_that_fails_on_another_rule_consumes_nothing() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 1
      rule_id: first
    - rule: reject-rule
  - - rule: approve-rule
",
    );
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    for _ in 0..5 {
        let d = p.evaluate(&decrypt_complete("a"), at, &tz, &store);
        assert_eq!(d.rule_set(), Some(1));
    }
    // The counter of `first` was never touched: a policy whose only set is that throttle
    // still has its one use, through the same store.
    let q = load(
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 1\n      rule_id: first\n",
    );
    assert!(
        q.evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    assert!(
        !q.evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
}

#[test]
fn a_later_set_wins_without_consuming_the_earlier_sets_throttle() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 1
      rule_id: a
    - rule: approve-rule
  - - rule: per-profile-throttle-rule
      per_day: 3
      rule_id: b
",
    );
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    let sets: Vec<Option<usize>> = (0..5)
        .map(|_| {
            p.evaluate(&decrypt_complete("a"), at, &tz, &store)
                .rule_set()
        })
        .collect();
    assert_eq!(sets, [Some(0), Some(1), Some(1), Some(1), None]);
    assert_eq!(
        p.evaluate(&decrypt_complete("a"), at, &tz, &store),
        Decision::Denied(DenyReason::Quota)
    );
    // the profile-id set that does not match leaves the throttle of set 0 alone
    let p = load(
        "
decrypt:
  - - rule: profile-id-rule
      profile_ids: ['aa']
    - rule: per-profile-throttle-rule
      per_day: 1
      rule_id: only-aa
  - - rule: per-profile-throttle-rule
      per_day: 2
      rule_id: everyone
",
    );
    let store = MemoryQuotaStore::new();
    let mut bb = decrypt_complete("a");
    bb.profile_id = vec![0xbb];
    let mut aa = bb.clone();
    aa.profile_id = vec![0xaa];
    let seq = |r: &Request, n: usize| -> Vec<Option<usize>> {
        (0..n)
            .map(|_| p.evaluate(r, at, &tz, &store).rule_set())
            .collect()
    };
    assert_eq!(seq(&bb, 3), [Some(1), Some(1), None]);
    assert_eq!(seq(&aa, 4), [Some(0), Some(1), Some(1), None]);
}

#[test]
fn the_throttles_of_a_set_are_consumed_all_or_nothing() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 5
      rule_id: x
    - rule: per-profile-throttle-rule
      per_day: 1
      rule_id: y
",
    );
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    assert!(
        p.evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    for _ in 0..3 {
        assert!(
            !p.evaluate(&decrypt_complete("a"), at, &tz, &store)
                .is_approved()
        );
    }
    // x was consumed once only: four uses remain
    let x = load(
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 5\n      rule_id: x\n",
    );
    let n = (0..10)
        .filter(|_| {
            x.evaluate(&decrypt_complete("a"), at, &tz, &store)
                .is_approved()
        })
        .count();
    assert_eq!(n, 4);
}

/// A store that is down: the engine must deny and report it.
struct DownStore;

impl QuotaStore for DownStore {
    fn try_consume(
        &self,
        _: &[u8],
        _: &[kss_policy::QuotaLimit],
        _: QuotaWindow,
    ) -> Result<bool, kss_policy::QuotaStoreError> {
        Err(kss_policy::QuotaStoreError("database unreachable".into()))
    }
    fn at_quota(
        &self,
        _: &[kss_policy::QuotaLimit],
        _: QuotaWindow,
    ) -> Result<Vec<Vec<u8>>, kss_policy::QuotaStoreError> {
        Err(kss_policy::QuotaStoreError("database unreachable".into()))
    }
    fn clear(&self, _: Option<&[u8]>) -> Result<(), kss_policy::QuotaStoreError> {
        Err(kss_policy::QuotaStoreError("database unreachable".into()))
    }
}

#[test]
fn a_failing_quota_store_denies_fail_closed() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 5
  - - rule: approve-rule
",
    );
    let d = p.evaluate(
        &decrypt_complete("a"),
        monday_morning(),
        &TimeZone::UTC,
        &DownStore,
    );
    assert_eq!(d, Decision::Denied(DenyReason::Unavailable));
    // a set without throttles does not need the store
    let p = load("decrypt:\n  - - rule: approve-rule\n");
    assert!(
        p.evaluate(
            &decrypt_complete("a"),
            monday_morning(),
            &TimeZone::UTC,
            &DownStore
        )
        .is_approved()
    );
}

// ---------------------------------------------------------------------------------------
// meta-rule
// ---------------------------------------------------------------------------------------

#[test]
fn meta_inverted_pattern_before_normal_one() {
    let p = meta_paths("['!/taxi', '/tax*']");
    assert!(approves(&p, &decrypt_complete("taxes")));
    assert!(approves(&p, &decrypt_complete("taxes/2021/a.pdf")));
    assert!(!approves(&p, &decrypt_complete("taxi")));
    assert!(!approves(&p, &decrypt_complete("taxi/x")));
    assert!(!approves(&p, &decrypt_complete("other")));
    assert!(
        p.warnings().iter().any(|w| w.message.contains("inverted")),
        "{:?}",
        p.warnings()
    );
}

#[test]
fn meta_inverted_pattern_after_normal_one_means_the_same() {
    let p = meta_paths("['/tax*', '!/taxi']");
    assert!(approves(&p, &decrypt_complete("taxes")));
    assert!(!approves(&p, &decrypt_complete("taxi")));
    assert!(!approves(&p, &decrypt_complete("other")));
    assert!(p.warnings().iter().any(|w| w.message.contains("inverted")));
    let w = &p.warnings()[0];
    assert_eq!(w.location.request_type.as_deref(), Some("decrypt"));
    assert_eq!((w.location.rule_set, w.location.rule), (Some(0), Some(0)));
}

#[test]
fn meta_only_inverted_patterns_exclude_each() {
    let p = meta_paths("['!/a', '!/b']");
    assert!(!approves(&p, &decrypt_complete("a/x")));
    assert!(!approves(&p, &decrypt_complete("b/x")));
    assert!(approves(&p, &decrypt_complete("c/x")));
    // the original approved b/x here: a migration warning
    assert!(!p.warnings().is_empty());
    // a single inverted pattern meant the same in the original: no warning
    let p = meta_paths("['!/a']");
    assert!(!approves(&p, &decrypt_complete("a/x")));
    assert!(approves(&p, &decrypt_complete("c/x")));
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // normal patterns only: order never mattered, no warning
    let p = meta_paths("[/a, /b]");
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
}

#[test]
fn meta_inverted_regexes_and_paths_combine() {
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      regexes: ['!secret']\n      paths: [/docs]",
    ));
    assert!(approves(&p, &decrypt_complete("docs/a.txt")));
    assert!(!approves(&p, &decrypt_complete("docs/secret.txt")));
    assert!(!approves(&p, &decrypt_complete("other/a.txt")));
}

#[test]
fn meta_root_alone_matches_every_complete_entry_and_no_partial_one() {
    let p = meta_paths("[/]");
    assert!(approves(&p, &decrypt_complete("a/b")));
    assert!(approves(&p, &decrypt_complete("x")));
    assert!(!approves(&p, &decrypt_partial("a/b")));
    assert!(!approves(&p, &decrypt_partial("x")));
    assert!(
        !approves(&p, &decrypt_partial("")),
        "an empty partial entry is not rooted"
    );
}

#[test]
fn meta_leading_star_is_anchored_at_the_end() {
    let p = meta_paths("['*.pdf']");
    assert!(approves(&p, &decrypt_complete("a/b/c.pdf")));
    assert!(approves(&p, &decrypt_partial("c.pdf")));
    assert!(approves(&p, &decrypt_complete("C.PDF")));
    assert!(!approves(&p, &decrypt_complete("a.pdfx")));
    assert!(!approves(&p, &decrypt_complete("a.pdf/b")));
    assert!(!approves(&p, &decrypt_complete("a/b/cpdf")));
    // the leading * spans components
    let p = meta_paths("['*/b/c.pdf']");
    assert!(approves(&p, &decrypt_complete("x/y/b/c.pdf")));
    // migration warning for the end anchoring
    let p = meta_paths("['*.pdf']");
    let w = p
        .warnings()
        .iter()
        .find(|w| w.message.contains(".pdf"))
        .expect("a warning about *.pdf");
    assert_eq!(w.location.argument.as_deref(), Some("paths"));
}

#[test]
fn meta_rooted_prefix_matches_whole_components() {
    for pattern in ["[/root/sub]", "[/root/sub/]"] {
        let p = meta_paths(pattern);
        assert!(approves(&p, &decrypt_complete("root/sub")), "{pattern}");
        assert!(
            approves(&p, &decrypt_complete("root/sub/path/basename.ext")),
            "{pattern}"
        );
        assert!(!approves(&p, &decrypt_complete("root/subxx")), "{pattern}");
        assert!(
            !approves(&p, &decrypt_complete("root/subxx/path/b.ext")),
            "{pattern}"
        );
        assert!(!approves(&p, &decrypt_complete("rooty/sub/a")), "{pattern}");
        assert!(
            !approves(&p, &decrypt_complete("root/other/sub/a")),
            "{pattern}"
        );
        assert!(!approves(&p, &decrypt_complete("x/root/sub")), "{pattern}");
        assert!(
            !approves(&p, &decrypt_partial("root/sub")),
            "{pattern}: partial is not rooted"
        );
    }
}

#[test]
fn meta_sub_path_matches_a_run_of_whole_components() {
    let p = meta_paths("[sub/path]");
    assert!(approves(&p, &decrypt_complete("x/sub/path")));
    assert!(approves(&p, &decrypt_complete("x/sub/path/y")));
    assert!(
        approves(&p, &decrypt_complete("sub/path")),
        "the root / precedes it"
    );
    assert!(approves(&p, &decrypt_partial("x/sub/path")));
    assert!(!approves(&p, &decrypt_complete("x/sub/path.txt")));
    assert!(!approves(&p, &decrypt_complete("x/mysub/path")));
    assert!(
        !approves(&p, &decrypt_partial("sub/path")),
        "nothing precedes a partial entry"
    );
    // with a trailing slash it must be followed by /
    let p = meta_paths("[sub/]");
    assert!(approves(&p, &decrypt_complete("x/sub/y")));
    assert!(approves(&p, &decrypt_complete("sub/y")));
    assert!(!approves(&p, &decrypt_complete("x/sub")));
    assert!(!approves(&p, &decrypt_complete("x/sub2/y")));
    let p = meta_paths("['sub/co*mp']");
    assert!(approves(&p, &decrypt_complete("root/sub/co77mp/b")));
    assert!(
        !approves(&p, &decrypt_complete("root/sub/co/mp/b")),
        "* stays within a component"
    );
}

#[test]
fn meta_basename_patterns() {
    let p = meta_paths("['basename.*']");
    assert!(approves(&p, &decrypt_complete("a/basename.txt")));
    assert!(approves(&p, &decrypt_partial("basename.txt")));
    assert!(approves(&p, &decrypt_complete("basename.")));
    assert!(!approves(&p, &decrypt_complete("a/xbasename.txt")));
    assert!(!approves(&p, &decrypt_complete("basename/xxx")));
    assert!(!approves(&p, &decrypt_complete("basename.xxx/yyy")));
    let p = meta_paths("[baseonly]");
    assert!(approves(&p, &decrypt_complete("wherever/baseonly")));
    assert!(approves(&p, &decrypt_partial("baseonly")));
    assert!(!approves(&p, &decrypt_complete("wherever/baseonly2")));
    assert!(!approves(&p, &decrypt_complete("wherever/notbaseonly")));
    assert!(!approves(&p, &decrypt_complete("baseonly/child")));
}

#[test]
fn meta_star_never_crosses_a_slash_except_leading() {
    let p = meta_paths("['/a*/c']");
    assert!(approves(&p, &decrypt_complete("ab/c")));
    assert!(approves(&p, &decrypt_complete("a/c")));
    assert!(!approves(&p, &decrypt_complete("a/b/c")));
}

#[test]
fn meta_case_sensitivity() {
    let p = meta_paths("[/Root/Sub, '*.PDF']");
    assert!(approves(&p, &decrypt_complete("root/sub/x")));
    assert!(approves(&p, &decrypt_complete("ROOT/SUB")));
    assert!(approves(&p, &decrypt_complete("a/b.pdf")));
    assert!(approves(&p, &decrypt_complete("Ä/Ö.PdF")));
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      case_sensitive: true\n      paths: [/Root/Sub]\n      regexes: ['Ä$']",
    ));
    assert!(approves(&p, &decrypt_complete("Root/Sub/x")));
    assert!(!approves(&p, &decrypt_complete("root/sub/x")));
    assert!(approves(&p, &decrypt_complete("x/Ä")));
    assert!(!approves(&p, &decrypt_complete("x/ä")));
    // regexes are case-insensitive by default, also beyond ASCII
    let p = meta_regexes("['ÄÖ']");
    assert!(approves(&p, &decrypt_complete("x/äö")));
    assert!(approves(&p, &decrypt_complete("x/ÄÖ")));
}

#[test]
fn meta_require_complete() {
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      require_complete: true\n      regexes: ['.']",
    ));
    assert!(approves(&p, &decrypt_complete("a")));
    assert!(!approves(&p, &decrypt_partial("a")));
    assert!(!approves(&p, &decrypt_meta(&[("a", true), ("b", false)])));
    let p = meta_regexes("['.']");
    assert!(approves(&p, &decrypt_partial("a")));
}

#[test]
fn meta_every_entry_must_be_approved() {
    let p = meta_paths("[/a]");
    assert!(approves(&p, &decrypt_meta(&[("a/x", true), ("a/y", true)])));
    assert!(!approves(
        &p,
        &decrypt_meta(&[("a/x", true), ("b/y", true)])
    ));
    assert!(!approves(
        &p,
        &decrypt_meta(&[("b/y", true), ("a/x", true)])
    ));
    let p = meta_paths("[/a, /b]");
    assert!(approves(&p, &decrypt_meta(&[("a/x", true), ("b/y", true)])));
}

#[test]
fn meta_no_metadata_denies() {
    for p in [
        meta_paths("[/]"),
        meta_paths("['!/a']"),
        meta_regexes("['.*']"),
    ] {
        assert!(!approves(&p, &req(RequestType::Decrypt, b"\x01")));
    }
}

#[test]
fn meta_entry_starting_with_slash_is_malformed_and_denies() {
    for p in [
        meta_paths("[/]"),
        meta_paths("['*']"),
        meta_regexes("['.*']"),
        meta_paths("['!/x']"),
    ] {
        assert!(!approves(&p, &decrypt_complete("/a/b")));
        assert!(!approves(&p, &decrypt_partial("/a/b")));
        assert!(!approves(&p, &decrypt_meta(&[("a", true), ("/a", true)])));
    }
}

#[test]
fn meta_empty_entry_is_malformed_and_denies() {
    // The original engine failed on an empty entry (and so denied); an
    // empty path names nothing, so every pattern form denies it, complete or partial.
    for p in [
        meta_paths("[/]"),
        meta_paths("['*']"),
        meta_regexes("['.*']"),
        meta_paths("['!/x']"),
    ] {
        assert!(!approves(&p, &decrypt_complete("")));
        assert!(!approves(&p, &decrypt_partial("")));
        assert!(!approves(&p, &decrypt_meta(&[("a", true), ("", true)])));
        assert!(
            approves(&p, &decrypt_complete("a")),
            "the same rule approves a real path"
        );
    }
}

#[test]
fn meta_regexes_with_look_around_and_root_anchor() {
    let p = meta_regexes("['^/(?!secret)']");
    assert!(approves(&p, &decrypt_complete("public/x")));
    assert!(!approves(&p, &decrypt_complete("secret/x")));
    assert!(
        !approves(&p, &decrypt_partial("public/x")),
        "^/ anchors at the root"
    );
    let p = meta_regexes("['(?<=/docs/)report\\d+']");
    assert!(approves(&p, &decrypt_complete("a/docs/report12.txt")));
    assert!(approves(&p, &decrypt_partial("x/docs/report1")));
    assert!(!approves(&p, &decrypt_complete("a/doc/report12.txt")));
    assert!(!approves(&p, &decrypt_complete("a/docs/report")));
    let p = meta_regexes("['(?<!draft)\\.pdf$']");
    assert!(approves(&p, &decrypt_complete("a/final.pdf")));
    assert!(!approves(&p, &decrypt_complete("a/draft.pdf")));
    // searched anywhere
    let p = meta_regexes("[tax]");
    assert!(approves(&p, &decrypt_complete("a/syntax.txt")));
    assert!(!approves(&p, &decrypt_complete("a/t-a-x")));
}

#[test]
fn meta_without_patterns_denies() {
    for body in [
        "rule: meta-rule",
        "rule: meta-rule\n      paths: []",
        "rule: meta-rule\n      paths: []\n      regexes: []",
        "rule: meta-rule\n      case_sensitive: true",
    ] {
        let p = load(&one_rule("decrypt", body));
        assert!(!approves(&p, &decrypt_complete("a")), "{body}");
        assert!(!approves(&p, &decrypt_partial("a")), "{body}");
    }
}

// ---------------------------------------------------------------------------------------
// per-profile-throttle-rule
// ---------------------------------------------------------------------------------------

fn throttle(args: &str) -> Policy {
    load(&one_rule(
        "decrypt",
        &format!("rule: per-profile-throttle-rule\n      {args}"),
    ))
}

/// Which of `instants` are approved, in order, for one profile and one store.
fn run(p: &Policy, tz: &TimeZone, instants: &[&str]) -> Vec<bool> {
    let store = MemoryQuotaStore::new();
    instants
        .iter()
        .map(|t| {
            p.evaluate(&decrypt_complete("a"), ts(t), tz, &store)
                .is_approved()
        })
        .collect()
}

#[test]
fn throttle_per_hour_is_the_calendar_hour() {
    let p = throttle("per_hour: 2");
    let got = run(
        &p,
        &TimeZone::UTC,
        &[
            "2022-03-07T10:00:00Z",
            "2022-03-07T10:59:59Z",
            "2022-03-07T10:30:00Z",
            "2022-03-07T11:00:00Z",
            "2022-03-07T11:00:01Z",
            "2022-03-07T11:59:59Z",
            "2022-03-07T12:00:00Z",
        ],
    );
    assert_eq!(got, [true, true, false, true, true, false, true]);
}

#[test]
fn throttle_per_day_is_the_calendar_day() {
    let p = throttle("per_day: 2");
    let got = run(
        &p,
        &TimeZone::UTC,
        &[
            "2022-03-07T00:00:00Z",
            "2022-03-07T23:59:59Z",
            "2022-03-07T23:59:59Z",
            "2022-03-08T00:00:00Z",
            "2022-03-08T12:00:00Z",
            "2022-03-08T13:00:00Z",
            "2022-03-10T00:00:00Z",
        ],
    );
    assert_eq!(got, [true, true, false, true, true, false, true]);
}

#[test]
fn throttle_windows_are_in_the_configured_zone() {
    // Asia/Kolkata is UTC+05:30: its hours start at :30 UTC and its days at 18:30 UTC.
    let tz = zone("Asia/Kolkata");
    let got = run(
        &throttle("per_hour: 1"),
        &tz,
        &[
            "2022-03-07T10:29:59Z",
            "2022-03-07T10:30:00Z",
            "2022-03-07T11:29:59Z",
            "2022-03-07T11:30:00Z",
        ],
    );
    assert_eq!(got, [true, true, false, true]);
    let got = run(
        &throttle("per_day: 1"),
        &tz,
        &[
            "2022-03-07T18:29:59Z",
            "2022-03-07T18:30:00Z",
            "2022-03-08T18:29:59Z",
            "2022-03-08T18:30:00Z",
        ],
    );
    assert_eq!(got, [true, true, false, true]);
}

#[test]
fn throttle_days_follow_daylight_saving_time() {
    let paris = zone("Europe/Paris");
    let p = throttle("per_day: 1");
    // Summer (UTC+2): local midnight is 22:00 UTC. An offset frozen in winter (UTC+1) would
    // put 22:00 UTC on the same day as 21:59 UTC and deny.
    assert_eq!(
        run(
            &p,
            &paris,
            &["2022-07-01T21:59:59Z", "2022-07-01T22:00:00Z"]
        ),
        [true, true]
    );
    assert_eq!(
        run(
            &p,
            &paris,
            &["2022-07-01T22:00:00Z", "2022-07-01T22:59:59Z"]
        ),
        [true, false]
    );
    // Winter (UTC+1): local midnight is 23:00 UTC.
    assert_eq!(
        run(
            &p,
            &paris,
            &["2022-01-10T22:00:00Z", "2022-01-10T22:59:59Z"]
        ),
        [true, false]
    );
    assert_eq!(
        run(
            &p,
            &paris,
            &["2022-01-10T22:59:59Z", "2022-01-10T23:00:00Z"]
        ),
        [true, true]
    );
    // Across the spring transition (2022-03-27 02:00 CET -> 03:00 CEST), one store.
    let p = throttle("per_day: 2");
    let got = run(
        &p,
        &paris,
        &[
            "2022-03-26T22:30:00Z", // 23:30 CET, Mar 26
            "2022-03-26T23:30:00Z", // 00:30 CET, Mar 27
            "2022-03-27T21:30:00Z", // 23:30 CEST, Mar 27
            "2022-03-27T21:59:59Z", // 23:59:59 CEST, Mar 27: third use that day
            "2022-03-27T22:00:00Z", // 00:00 CEST, Mar 28
        ],
    );
    assert_eq!(got, [true, true, true, false, true]);
    // Hours across the spring gap: 01:59:59 CET then 03:00 CEST are different hours.
    let p = throttle("per_hour: 1");
    assert_eq!(
        run(
            &p,
            &paris,
            &["2022-03-27T00:59:59Z", "2022-03-27T01:00:00Z"]
        ),
        [true, true]
    );
}

#[test]
fn throttle_minus_one_is_unlimited_and_zero_always_denies() {
    let p = throttle("per_day: -1");
    assert_eq!(
        run(&p, &TimeZone::UTC, &["2022-03-07T10:00:00Z"; 200]),
        vec![true; 200]
    );
    let p = throttle("per_hour: -1\n      per_day: 3");
    assert_eq!(
        run(&p, &TimeZone::UTC, &["2022-03-07T10:00:00Z"; 5]),
        [true, true, true, false, false]
    );
    let p = throttle("per_hour: 1\n      per_day: -1");
    assert_eq!(
        run(
            &p,
            &TimeZone::UTC,
            &[
                "2022-03-07T10:00:00Z",
                "2022-03-07T10:00:00Z",
                "2022-03-07T11:00:00Z"
            ]
        ),
        [true, false, true]
    );
    // no limits at all: unlimited
    let p = load(&one_rule("decrypt", "rule: per-profile-throttle-rule"));
    assert_eq!(
        run(&p, &TimeZone::UTC, &["2022-03-07T10:00:00Z"; 50]),
        vec![true; 50]
    );
    for zero in [
        "per_hour: 0",
        "per_day: 0",
        "per_hour: 0\n      per_day: 10",
    ] {
        let p = throttle(zero);
        assert_eq!(
            p.evaluate(
                &decrypt_complete("a"),
                monday_morning(),
                &TimeZone::UTC,
                &MemoryQuotaStore::new()
            ),
            Decision::Denied(DenyReason::Quota),
            "{zero}"
        );
    }
}

#[test]
fn throttle_negative_or_non_integer_limits_are_load_errors() {
    for bad in ["-2", "-100", "1.0", "'5'", "five", "~", "true", "[1]"] {
        for arg in ["per_hour", "per_day"] {
            let e = load_err(&one_rule(
                "decrypt",
                &format!("rule: per-profile-throttle-rule\n      {arg}: {bad}"),
            ));
            assert_located(&e, "decrypt", Some(0), Some(0), Some(arg));
        }
    }
}

#[test]
fn throttle_persistent_flag() {
    assert!(!throttle("per_day: 1").quota_limits()[0].persistent);
    assert!(!throttle("per_day: 1\n      persistent: false").quota_limits()[0].persistent);
    assert!(throttle("per_day: 1\n      persistent: true").quota_limits()[0].persistent);
    let p = throttle("per_hour: 4\n      per_day: 9");
    assert_eq!(
        (p.quota_limits()[0].per_hour, p.quota_limits()[0].per_day),
        (Some(4), Some(9))
    );
}

#[test]
fn throttle_ignored_arguments_warn() {
    let p = throttle(
        "per_day: 3\n      expiry_secs: 90\n      db-uri: sqlite:///x\n      db-file: /tmp/x.db\n      db-table: quota",
    );
    for arg in ["expiry_secs", "db-uri", "db-file", "db-table"] {
        let w = p
            .warnings()
            .iter()
            .find(|w| w.location.argument.as_deref() == Some(arg))
            .unwrap_or_else(|| panic!("no warning for {arg}: {:?}", p.warnings()));
        assert_eq!(w.location.request_type.as_deref(), Some("decrypt"));
        assert!(w.to_string().contains(arg), "{w}");
    }
    // and they do not change the meaning
    assert_eq!(
        run(&p, &TimeZone::UTC, &["2022-03-07T10:00:00Z"; 4]),
        [true, true, true, false]
    );
}

#[test]
fn throttles_with_different_ids_count_separately() {
    // Two identical unnamed throttles get ids h and h.2: limits are additive.
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 1
  - - rule: per-profile-throttle-rule
      per_day: 1
",
    );
    let ids: Vec<String> = p.rule_ids().into_iter().map(|r| r.3).collect();
    assert_ne!(ids[0], ids[1]);
    let store = MemoryQuotaStore::new();
    let sets: Vec<Option<usize>> = (0..3)
        .map(|_| {
            p.evaluate(
                &decrypt_complete("a"),
                monday_morning(),
                &TimeZone::UTC,
                &store,
            )
            .rule_set()
        })
        .collect();
    assert_eq!(sets, [Some(0), Some(1), None]);
}

#[test]
fn throttles_with_the_same_explicit_id_share_one_counter() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 2
      rule_id: shared
  - - rule: per-profile-throttle-rule
      per_day: 2
      rule_id: shared
search:
  - - rule: per-profile-throttle-rule
      per_day: 2
      rule_id: shared
",
    );
    let dup = p
        .warnings()
        .iter()
        .filter(|w| w.message.contains("shared"))
        .count();
    assert_eq!(dup, 2, "one warning per repeated id: {:?}", p.warnings());
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    // the same profile as decrypt_complete's requests
    let s = req(RequestType::Search, b"\x01\x02");
    assert!(p.evaluate(&s, at, &tz, &store).is_approved());
    assert!(
        p.evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    // two uses of "shared" so far: both sets of decrypt and the search set are at quota
    assert!(
        !p.evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    assert!(!p.evaluate(&s, at, &tz, &store).is_approved());
    // non-persistent rules share too (the original did so only for persistent ones)
    assert!(p.quota_limits().iter().all(|l| !l.persistent));
}

#[test]
fn throttles_count_per_profile() {
    let p = throttle("per_day: 1");
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    let mut a = decrypt_complete("x");
    a.profile_id = vec![0xa];
    let mut b = a.clone();
    b.profile_id = vec![0xb];
    assert!(p.evaluate(&a, at, &tz, &store).is_approved());
    assert!(!p.evaluate(&a, at, &tz, &store).is_approved());
    assert!(p.evaluate(&b, at, &tz, &store).is_approved());
}

#[test]
fn quota_list_and_clear() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_day: 3
  - - rule: approve-rule
search:
  - - rule: per-profile-throttle-rule
      per_hour: 1
",
    );
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    let w = window(at, &tz);
    let mk = |t: RequestType, id: u8| {
        let mut r = decrypt_complete("x");
        r.request_type = t;
        r.profile_id = vec![id];
        r
    };
    // profile 1: 3 decrypts (at quota for decrypt's throttle; set 1 still approves)
    for _ in 0..4 {
        assert!(
            p.evaluate(&mk(RequestType::Decrypt, 1), at, &tz, &store)
                .is_approved()
        );
    }
    // profile 2: one search (at quota for search's throttle)
    assert!(
        p.evaluate(&mk(RequestType::Search, 2), at, &tz, &store)
            .is_approved()
    );
    // profile 3: two decrypts (not at quota)
    for _ in 0..2 {
        assert!(
            p.evaluate(&mk(RequestType::Decrypt, 3), at, &tz, &store)
                .is_approved()
        );
    }
    assert_eq!(
        store.at_quota(p.quota_limits(), w).expect("list"),
        vec![vec![1u8], vec![2u8]]
    );
    // next hour: profile 2 is no longer at quota; profile 1 still is (per day)
    let later = ts("2022-03-07T11:00:00Z");
    assert_eq!(
        store
            .at_quota(p.quota_limits(), window(later, &tz))
            .expect("list"),
        vec![vec![1u8]]
    );
    // clear one profile that is not at quota: its counters reset anyway
    store.clear(Some(&[3])).expect("clear");
    let n = (0..5)
        .filter(|_| {
            p.evaluate(&mk(RequestType::Decrypt, 3), at, &tz, &store)
                .rule_set()
                == Some(0)
        })
        .count();
    assert_eq!(n, 3, "after clear, profile 3 has its full quota again");
    // profile 1 untouched by that clear
    assert_eq!(
        p.evaluate(&mk(RequestType::Decrypt, 1), at, &tz, &store)
            .rule_set(),
        Some(1)
    );
    // clear all
    store.clear(None).expect("clear");
    assert!(
        store
            .at_quota(p.quota_limits(), w)
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        p.evaluate(&mk(RequestType::Decrypt, 1), at, &tz, &store)
            .rule_set(),
        Some(0)
    );
    assert!(
        p.evaluate(&mk(RequestType::Search, 2), at, &tz, &store)
            .is_approved()
    );
}

// ---------------------------------------------------------------------------------------
// profile-id-rule
// ---------------------------------------------------------------------------------------

fn with_profile(id: &[u8], words: &[&str]) -> Request {
    let mut r = decrypt_complete("a");
    r.profile_id = id.to_vec();
    r.profile_words = words.iter().map(|w| w.to_string()).collect();
    r
}

#[test]
fn profile_id_hex_in_any_case() {
    for written in ["d56e89af", "D56E89AF", "d56E89aF"] {
        let p = load(&one_rule(
            "decrypt",
            &format!("rule: profile-id-rule\n      profile_ids: [{written}]"),
        ));
        assert!(
            approves(&p, &with_profile(&[0xd5, 0x6e, 0x89, 0xaf], &[])),
            "{written}"
        );
        assert!(
            !approves(&p, &with_profile(&[0xd5, 0x6e, 0x89], &[])),
            "{written}"
        );
        assert!(!approves(
            &p,
            &with_profile(&[0xd5, 0x6e, 0x89, 0xaf, 0x00], &[])
        ));
    }
    // a quoted all-digit id
    let p = load(&one_rule(
        "decrypt",
        "rule: profile-id-rule\n      profile_ids: ['0102']",
    ));
    assert!(approves(&p, &with_profile(&[1, 2], &[])));
}

#[test]
fn profile_id_word_phrases_match_a_prefix_of_n_words() {
    let p = load(&one_rule(
        "decrypt",
        "rule: profile-id-rule\n      profile_ids:\n        - humble busy much cactus\n        - correct horse battery staple diamond",
    ));
    let w = ["humble", "busy", "much", "cactus", "river", "stone"];
    assert!(approves(&p, &with_profile(b"\x09", &w)));
    assert!(approves(&p, &with_profile(b"\x09", &w[..4])));
    assert!(
        !approves(&p, &with_profile(b"\x09", &w[..3])),
        "fewer words than the phrase"
    );
    assert!(
        !approves(
            &p,
            &with_profile(b"\x09", &["Humble", "busy", "much", "cactus"])
        ),
        "case-sensitive"
    );
    assert!(
        !approves(
            &p,
            &with_profile(b"\x09", &["busy", "humble", "much", "cactus"])
        ),
        "order"
    );
    assert!(
        !approves(
            &p,
            &with_profile(b"\x09", &["x", "humble", "busy", "much", "cactus"])
        ),
        "prefix only"
    );
    let five = ["correct", "horse", "battery", "staple", "diamond", "hands"];
    assert!(approves(&p, &with_profile(b"\x09", &five)));
    assert!(
        !approves(&p, &with_profile(b"\x09", &five[..4])),
        "5-word phrase needs 5 words"
    );
}

#[test]
fn profile_id_phrase_with_double_spaces_is_a_load_error() {
    let e = load_err(&one_rule(
        "decrypt",
        "rule: profile-id-rule\n      profile_ids: ['humble  busy much cactus']",
    ));
    assert_located(&e, "decrypt", Some(0), Some(0), Some("profile_ids"));
}

// ---------------------------------------------------------------------------------------
// time-range-rule
// ---------------------------------------------------------------------------------------

fn time_range(args: &str) -> Policy {
    load(&one_rule(
        "decrypt",
        &format!("rule: time-range-rule\n      {args}"),
    ))
}

fn in_range(p: &Policy, at: &str) -> bool {
    approves_at(p, &decrypt_complete("a"), ts(at))
}

#[test]
fn time_range_window_includes_both_ends_to_the_second() {
    let p = time_range("time_start: 9:00am\n      time_end: 5:00pm");
    assert!(!in_range(&p, "2022-03-07T08:59:59Z"));
    assert!(in_range(&p, "2022-03-07T09:00:00Z"));
    assert!(in_range(&p, "2022-03-07T12:00:00Z"));
    assert!(in_range(&p, "2022-03-07T17:00:00Z"));
    assert!(!in_range(&p, "2022-03-07T17:00:01Z"));
    assert!(!in_range(&p, "2022-03-07T23:00:00Z"));
}

#[test]
fn time_range_accepts_every_documented_time_format() {
    // (start, end, instant just inside at the end, instant just outside)
    for (start, end, last_in, first_out) in [
        ("9:00am", "5pm", "17:00:00", "17:00:01"),
        ("9am", "5:00pm", "17:00:00", "17:00:01"),
        ("'09:00'", "'17:00'", "17:00:00", "17:00:01"),
        ("09:00", "17:00:30", "17:00:30", "17:00:31"),
        ("'9:00'", "'17:00:30'", "17:00:30", "17:00:31"),
        ("9:00 AM", "5:00 PM", "17:00:00", "17:00:01"),
        ("09:00Z", "17:00Z", "17:00:00", "17:00:01"),
        ("'11:00+02:00'", "'19:00+02:00'", "17:00:00", "17:00:01"),
    ] {
        let p = time_range(&format!("time_start: {start}\n      time_end: {end}"));
        let at = |t: &str| format!("2022-03-07T{t}Z");
        assert!(in_range(&p, &at("09:00:00")), "{start}-{end}");
        assert!(!in_range(&p, &at("08:59:59")), "{start}-{end}");
        assert!(in_range(&p, &at(last_in)), "{start}-{end}");
        assert!(!in_range(&p, &at(first_out)), "{start}-{end}");
    }
}

#[test]
fn time_range_times_without_offset_are_in_the_keyserver_zone() {
    let paris = zone("Europe/Paris");
    let p = time_range("time_start: 9:00am\n      time_end: 5:00pm");
    let r = decrypt_complete("a");
    // summer: 07:00 UTC is 09:00 CEST
    assert!(approves_in(&p, &r, ts("2022-07-01T07:00:00Z"), &paris));
    assert!(!approves_in(&p, &r, ts("2022-07-01T06:59:59Z"), &paris));
    assert!(approves_in(&p, &r, ts("2022-07-01T15:00:00Z"), &paris));
    assert!(!approves_in(&p, &r, ts("2022-07-01T15:00:01Z"), &paris));
    // winter: 07:00 UTC is 08:00 CET
    assert!(!approves_in(&p, &r, ts("2022-01-10T07:00:00Z"), &paris));
    assert!(approves_in(&p, &r, ts("2022-01-10T08:00:00Z"), &paris));
    assert!(approves_in(
        &p,
        &r,
        local("2022-01-10T17:00:00", &paris),
        &paris
    ));
    assert!(!approves_in(
        &p,
        &r,
        local("2022-01-10T17:00:01", &paris),
        &paris
    ));
}

#[test]
fn time_range_days_zero_is_monday() {
    let r = decrypt_complete("a");
    // 2022-03-07 is a Monday, 2022-03-13 a Sunday
    let p = time_range("days: [0]");
    assert!(approves_at(&p, &r, ts("2022-03-07T00:00:00Z")));
    assert!(approves_at(&p, &r, ts("2022-03-07T23:59:59Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-08T00:00:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-13T12:00:00Z")));
    let p = time_range("days: [6]");
    assert!(approves_at(&p, &r, ts("2022-03-13T12:00:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-07T12:00:00Z")));
    let p = time_range("days: [0, 1, 2, 3, 4]");
    let weekdays: Vec<bool> = (7..14)
        .map(|d| approves_at(&p, &r, ts(&format!("2022-03-{d:02}T12:00:00Z"))))
        .collect();
    assert_eq!(weekdays, [true, true, true, true, true, false, false]);
    // default: every day
    let p = time_range("time_start: '00:00'\n      time_end: '23:59:59'");
    assert!((7..14).all(|d| approves_at(&p, &r, ts(&format!("2022-03-{d:02}T12:00:00Z")))));
}

#[test]
fn time_range_empty_days_means_none() {
    let p = time_range("days: []");
    let r = decrypt_complete("a");
    assert!((7..14).all(|d| !approves_at(&p, &r, ts(&format!("2022-03-{d:02}T12:00:00Z")))));
    // but included dates are still in range
    let p = time_range("days: []\n      include: [2022-03-09]");
    assert!(approves_at(&p, &r, ts("2022-03-09T12:00:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-10T12:00:00Z")));
}

#[test]
fn time_range_include_and_exclude() {
    let r = decrypt_complete("a");
    let p = time_range(
        "days: [0, 1, 2, 3, 4]\n      include: [2022-03-12, '2022-03-20']\n      exclude: [2022-03-08]\n      time_start: 9am\n      time_end: 5pm",
    );
    assert!(
        approves_at(&p, &r, ts("2022-03-12T10:00:00Z")),
        "included Saturday"
    );
    assert!(
        approves_at(&p, &r, ts("2022-03-20T10:00:00Z")),
        "included Sunday"
    );
    assert!(
        !approves_at(&p, &r, ts("2022-03-13T10:00:00Z")),
        "other Sunday"
    );
    assert!(
        !approves_at(&p, &r, ts("2022-03-08T10:00:00Z")),
        "excluded Tuesday"
    );
    assert!(
        approves_at(&p, &r, ts("2022-03-15T10:00:00Z")),
        "other Tuesday"
    );
    assert!(
        !approves_at(&p, &r, ts("2022-03-12T20:00:00Z")),
        "an included date keeps the time window"
    );
}

#[test]
fn time_range_date_and_weekday_are_those_of_the_keyserver_zone() {
    let tokyo = zone("Asia/Tokyo");
    let r = decrypt_complete("a");
    // Sunday 2022-03-06 20:00 UTC is Monday 2022-03-07 05:00 in Tokyo
    let at = ts("2022-03-06T20:00:00Z");
    let p = time_range("days: [0]");
    assert!(approves_in(&p, &r, at, &tokyo));
    assert!(!approves_in(&p, &r, at, &TimeZone::UTC));
    let p = time_range("exclude: [2022-03-07]");
    assert!(!approves_in(&p, &r, at, &tokyo));
    assert!(approves_in(&p, &r, at, &TimeZone::UTC));
    let p = time_range("days: []\n      include: [2022-03-07]");
    assert!(approves_in(&p, &r, at, &tokyo));
    assert!(!approves_in(&p, &r, at, &TimeZone::UTC));
}

#[test]
fn time_range_offset_window_is_compared_on_that_offsets_clock() {
    let p = time_range("time_start: 02:00+04:00\n      time_end: 06:00+04:00");
    let r = decrypt_complete("a");
    // 03:00+04:00 is 23:00 UTC the day before: on any day, in any keyserver zone
    for zone_name in ["UTC", "Europe/Paris", "America/New_York"] {
        let tz = zone(zone_name);
        for day in 1..=14 {
            let at = ts(&format!("2022-03-{day:02}T23:00:00Z"));
            assert!(approves_in(&p, &r, at, &tz), "{zone_name} day {day}");
        }
        assert!(
            approves_in(&p, &r, ts("2022-03-07T22:00:00Z"), &tz),
            "start, inclusive"
        );
        assert!(
            approves_in(&p, &r, ts("2022-03-08T02:00:00Z"), &tz),
            "end, inclusive"
        );
        assert!(!approves_in(&p, &r, ts("2022-03-08T02:00:01Z"), &tz));
        assert!(!approves_in(&p, &r, ts("2022-03-07T21:59:59Z"), &tz));
        assert!(!approves_in(&p, &r, ts("2022-03-07T12:00:00Z"), &tz));
    }
    // the original never matched this window: a migration warning
    assert!(
        p.warnings().iter().any(|w| w.message.contains("midnight")),
        "{:?}",
        p.warnings()
    );
    // a window that does not cross UTC midnight needs no warning
    let p = time_range("time_start: 09:00+04:00\n      time_end: 11:00+04:00");
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    assert!(approves_at(&p, &r, ts("2022-03-07T05:30:00Z")));
    assert!(!approves_at(&p, &r, ts("2022-03-07T09:30:00Z")));
}

// ---------------------------------------------------------------------------------------
// approve-rule, reject-rule, session-params-rule
// ---------------------------------------------------------------------------------------

#[test]
fn approve_and_reject_rules() {
    for t in RequestType::ALL {
        let p = load(&one_rule(t.as_str(), "rule: approve-rule"));
        assert_eq!(decide(&p, &req(t, b"\x01")).rule_set(), Some(0), "{t}");
        let p = load(&one_rule(t.as_str(), "rule: reject-rule"));
        assert_eq!(
            decide(&p, &req(t, b"\x01")),
            Decision::Denied(DenyReason::Policy),
            "{t}"
        );
    }
}

#[test]
fn session_params_defaults() {
    let p = load(&one_rule("start_session", "rule: session-params-rule"));
    assert_eq!(
        decide(&p, &req(RequestType::StartSession, b"\x01")),
        Decision::Approved {
            rule_set: Some(0),
            session: Some(SessionParams {
                max_request_count: 0,
                max_time_seconds: 300,
                end_by_time: None
            })
        }
    );
}

#[test]
fn session_params_from_the_original_example() {
    let p = load(
        "
start_session:
  - - rule: profile-id-rule
      profile_ids: ['01']
  - - rule: session-params-rule
      max_request_count: 100
      max_time_seconds: 28800
      end_by_time: 5:00pm EST
",
    );
    let d = decide(&p, &req(RequestType::StartSession, b"\x02"));
    assert_eq!(
        d,
        Decision::Approved {
            rule_set: Some(1),
            session: Some(SessionParams {
                max_request_count: 100,
                max_time_seconds: 28800,
                end_by_time: Some(TimeOfDay {
                    seconds: 17 * 3600,
                    offset: Some(-5 * 3600)
                })
            })
        }
    );
    // the set that wins without session params carries none
    assert_eq!(
        decide(&p, &req(RequestType::StartSession, b"\x01")),
        Decision::Approved {
            rule_set: Some(0),
            session: None
        }
    );
}

#[test]
fn session_params_bounds() {
    for ok in [
        "max_time_seconds: 2",
        "max_time_seconds: 604799",
        "max_request_count: 0",
        "max_request_count: 1",
        "end_by_time: '17:00'",
        "end_by_time: 9pm",
    ] {
        load(&one_rule(
            "start_session",
            &format!("rule: session-params-rule\n      {ok}"),
        ));
    }
    for (bad, arg) in [
        ("max_time_seconds: 1", "max_time_seconds"),
        ("max_time_seconds: 0", "max_time_seconds"),
        ("max_time_seconds: -5", "max_time_seconds"),
        ("max_time_seconds: 604800", "max_time_seconds"),
        ("max_request_count: -1", "max_request_count"),
        ("end_by_time: 25:00pm", "end_by_time"),
    ] {
        let e = load_err(&one_rule(
            "start_session",
            &format!("rule: session-params-rule\n      {bad}"),
        ));
        assert_located(&e, "start_session", Some(0), Some(0), Some(arg));
    }
    let p = load(&one_rule(
        "start_session",
        "rule: session-params-rule\n      max_time_seconds: 2",
    ));
    let Decision::Approved {
        session: Some(s), ..
    } = decide(&p, &req(RequestType::StartSession, b"\x01"))
    else {
        panic!("expected session params");
    };
    assert_eq!(s.max_time_seconds, 2);
}

// ---------------------------------------------------------------------------------------
// Rule ids, dump and reload
// ---------------------------------------------------------------------------------------

fn ids(p: &Policy) -> Vec<String> {
    p.rule_ids().into_iter().map(|(_, _, _, id)| id).collect()
}

#[test]
fn rule_id_of_the_spec_example_is_the_md5_of_its_json() {
    let json = r#"{"per_day":30,"persistent":true,"rule":"per-profile-throttle-rule"}"#;
    // Hard-coded digest computed with:
    //   python3 -c 'import hashlib;print(hashlib.md5(b"{\"per_day\":30,\"persistent\":true,\"rule\":\"per-profile-throttle-rule\"}").hexdigest())'
    let expected = "ee2739979afe7dfced36ebb407525d5b";
    assert_eq!(md5_hex(json), expected);
    for text in [
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 30\n      persistent: true\n",
        // key order and YAML 1.1 spelling do not matter: the typed entry is hashed
        "decrypt:\n  - - persistent: yes\n      per_day: 30\n      rule: per-profile-throttle-rule\n",
        "decrypt: [[{rule: per-profile-throttle-rule, persistent: True, per_day: 0x1e}]]\n",
    ] {
        let p = load(text);
        assert_eq!(ids(&p), [expected], "{text}");
        assert_eq!(&*p.quota_limits()[0].rule_id, expected);
    }
    // a different value is a different id
    let p = load(
        "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 31\n      persistent: true\n",
    );
    assert_ne!(ids(&p), [expected]);
}

#[test]
fn rule_ids_hash_yaml11_typed_values() {
    // Each expected digest was computed with PyYAML 6 and Python's json/hashlib:
    //   python3 -c 'import yaml,json,hashlib;e=yaml.safe_load(TEXT)["decrypt"][0][0];
    //     print(hashlib.md5(json.dumps(e,sort_keys=True,separators=(",",":")).encode()).hexdigest())'
    let cases = [
        // {"case_sensitive":true,"paths":["/a"],"rule":"meta-rule"}
        (
            "rule: meta-rule\n      case_sensitive: yes\n      paths: [/a]",
            "74f16ff945a003a1f0655b24f2b9bb98",
        ),
        // {"rule":"time-range-rule","time_end":1020,"time_start":540}
        (
            "rule: time-range-rule\n      time_start: 9:00\n      time_end: 17:00",
            "acaa501665487d8713a18fe91550b4ab",
        ),
        // {"rule":"time-range-rule","time_end":"17:00","time_start":"9:00"}
        (
            "rule: time-range-rule\n      time_start: '9:00'\n      time_end: '17:00'",
            "7640971cdf99708b3a8d2c392edecebc",
        ),
        // {"paths":["/caf\u00e9","\ud83d\ude00"],"rule":"meta-rule"}
        (
            "rule: meta-rule\n      paths: [/café, 😀]",
            "e2968c9aff40d8e9183293fd0a6cdd50",
        ),
        // {"rule":"approve-rule","rule_id":null}: an empty id is no id, and is hashed
        (
            "rule: approve-rule\n      rule_id: ~",
            "849839d68712e7fdca7d5195350356fe",
        ),
    ];
    for (rule, expected) in cases {
        let p = load(&one_rule("decrypt", rule));
        assert_eq!(ids(&p), [expected], "{rule}");
    }
    // the same digests from the JSON text, computed here with the md-5 crate
    assert_eq!(
        md5_hex(r#"{"paths":["/caf\u00e9","\ud83d\ude00"],"rule":"meta-rule"}"#),
        "e2968c9aff40d8e9183293fd0a6cdd50"
    );
    assert_eq!(
        md5_hex(r#"{"case_sensitive":true,"paths":["/a"],"rule":"meta-rule"}"#),
        "74f16ff945a003a1f0655b24f2b9bb98"
    );
}

#[test]
fn rule_id_numbering_runs_over_the_whole_policy_in_file_order() {
    let h = md5_hex(r#"{"rule":"approve-rule"}"#);
    let p = load(
        "
search:
  - - rule: approve-rule
decrypt:
  - - rule: approve-rule
    - rule: reject-rule
  - - rule: approve-rule
rename:
  - - rule: approve-rule
",
    );
    let r = md5_hex(r#"{"rule":"reject-rule"}"#);
    let got = p.rule_ids();
    let expected = vec![
        (RequestType::Search, 0, 0, h.clone()),
        (RequestType::Decrypt, 0, 0, format!("{h}.2")),
        (RequestType::Decrypt, 0, 1, r),
        (RequestType::Decrypt, 1, 0, format!("{h}.3")),
        (RequestType::Rename, 0, 0, format!("{h}.4")),
    ];
    assert_eq!(got, expected);
}

#[test]
fn explicit_rule_ids_count_as_occurrences() {
    let h = md5_hex(r#"{"rule":"approve-rule"}"#);
    let p = load(&format!(
        "
decrypt:
  - - rule: reject-rule
      rule_id: {h}
  - - rule: approve-rule
  - - rule: approve-rule
  - - rule: approve-rule
      rule_id: mine
  - - rule: reject-rule
      rule_id: mine
"
    ));
    assert_eq!(
        ids(&p),
        [
            h.clone(),
            format!("{h}.2"),
            format!("{h}.3"),
            "mine".to_string(),
            "mine".to_string()
        ]
    );
    assert!(
        p.warnings().iter().any(|w| w.message.contains("mine")),
        "duplicate explicit ids warn: {:?}",
        p.warnings()
    );
}

#[test]
fn rule_id_json_escapes_non_ascii_as_utf16() {
    // Computed independently: the JSON text is written by hand with \uXXXX escapes
    // (é = U+00E9; 😀 = U+1F600 = surrogates D83D DE00; 日 = U+65E5) and hashed here.
    let p = load(&one_rule(
        "decrypt",
        "rule: meta-rule\n      paths: [/日/é, '😀']\n      regexes: ['a\"b\\d']",
    ));
    let json =
        r#"{"paths":["/\u65e5/\u00e9","\ud83d\ude00"],"regexes":["a\"b\\d"],"rule":"meta-rule"}"#;
    assert_eq!(ids(&p), [md5_hex(json)]);
}

#[test]
fn dump_writes_every_rule_id_and_is_a_fixed_point() {
    let text = "
search:
  - - rule: profile-id-rule
      profile_ids: [humble busy much cactus, ABCD]
decrypt:
  - - rule: time-range-rule
      time_start: 9:00
      time_end: '17:00'
      days: [0, 1, 2]
      include: [2022-03-12]
      exclude: ['2022-03-08']
    - rule: per-profile-throttle-rule
      per_day: 30
      persistent: yes
      expiry_secs: 90
  - - rule: meta-rule
      paths: ['!/taxi', /tax*, '*.pdf', 'a: b', 'yes', '17:00', café]
      regexes: ['^/(?!secret)']
      case_sensitive: off
    - rule: approve-rule
      rule_id: explicit-id
  - []
  - - rule: approve-rule
start_session:
  - - rule: session-params-rule
      end_by_time: 5:00pm EST
      max_time_seconds: 600
rename: []
";
    let p = load(text);
    let dumped = p.dump();
    for (_, _, _, id) in p.rule_ids() {
        assert!(dumped.contains(&id), "{id} missing from:\n{dumped}");
    }
    assert_eq!(dumped.matches("rule_id:").count(), p.rule_ids().len());
    let q = load(&dumped);
    assert_eq!(
        q.rule_ids(),
        p.rule_ids(),
        "ids survive a reload:\n{dumped}"
    );
    assert_eq!(q.dump(), dumped, "dump is a fixed point");
    assert_eq!(q.quota_limits(), p.quota_limits());
    // and the meaning is kept
    for (meta, complete) in [
        ("taxes/a", true),
        ("taxi/a", true),
        ("x/a: b", true),
        ("x/yes", true),
        ("x/17:00", true),
        ("x/café", true),
        ("x/y.pdf", false),
        ("secret/x", true),
    ] {
        let r = decrypt_meta(&[(meta, complete)]);
        for at in [
            "2022-03-07T10:00:00Z",
            "2022-03-08T10:00:00Z",
            "2022-03-12T18:00:00Z",
        ] {
            assert_eq!(
                approves_at(&p, &r, ts(at)),
                approves_at(&q, &r, ts(at)),
                "{meta} at {at}"
            );
        }
    }
    // outside set 0's window, set 1 (the meta-rule) approves the quoted patterns; what it
    // does not approve falls to the empty set 2
    let evening = ts("2022-03-12T18:00:00Z");
    let set_at = |r: &Request| {
        q.evaluate(r, evening, &TimeZone::UTC, &MemoryQuotaStore::new())
            .rule_set()
    };
    for meta in ["x/yes", "x/17:00", "x/a: b", "x/café", "taxes/1"] {
        assert_eq!(set_at(&decrypt_complete(meta)), Some(1), "{meta}");
    }
    // (partial entries escape the `^/(?!secret)` regex, which approves most complete ones)
    for meta in ["x/yes", "x/17:00", "x/a: b", "x/café", "x/a.pdf"] {
        assert_eq!(set_at(&decrypt_partial(meta)), Some(1), "{meta}");
    }
    assert_eq!(set_at(&decrypt_complete("taxi/a")), Some(2));
    assert_eq!(set_at(&decrypt_complete("secret/a")), Some(2));
    for meta in ["x/other", "x/no", "x/17:01", "x/a.pdfx", "yes/x"] {
        assert_eq!(set_at(&decrypt_partial(meta)), Some(2), "{meta}");
    }
    assert_eq!(
        decide(&q, &req(RequestType::StartSession, b"\x01")),
        decide(&p, &req(RequestType::StartSession, b"\x01"))
    );
    assert!(!approves(&q, &req(RequestType::Rename, b"\x01")));
}

#[test]
fn dump_of_the_empty_policy_reloads() {
    let p = load("{}");
    let q = load(&p.dump());
    assert!(q.rule_ids().is_empty());
    assert_eq!(q.dump(), p.dump());
}

#[test]
fn persistent_counters_survive_a_reload_of_an_unchanged_rule() {
    // Counters are keyed by rule id: a reloaded (or dumped and reloaded) policy finds them.
    let text = "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 2\n      persistent: true\n";
    let store = MemoryQuotaStore::new();
    let tz = TimeZone::UTC;
    let at = monday_morning();
    let first = load(text);
    assert!(
        first
            .evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    let reloaded = load(&first.dump());
    assert!(
        reloaded
            .evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
    assert!(
        !load(text)
            .evaluate(&decrypt_complete("a"), at, &tz, &store)
            .is_approved()
    );
}

#[test]
fn rule_ids_hash_the_entry_after_yaml_anchors_and_merges() {
    // Expected ids computed with PyYAML 6 (yaml.safe_load expands `<<` and aliases) and
    // python3 json.dumps(sort_keys=True, separators=(",", ":")) + hashlib.md5:
    //   {"per_day":30,"rule":"per-profile-throttle-rule"} -> 15fb84350c0e8fd5338e8fd583eaf395
    //   {"per_day":30,"persistent":true,"rule":"per-profile-throttle-rule"} -> ee27...5d5b
    let p = load(
        "
decrypt:
  - - &t {rule: per-profile-throttle-rule, per_day: 30}
  - - <<: *t
      persistent: true
  - - *t
",
    );
    assert_eq!(
        ids(&p),
        [
            "15fb84350c0e8fd5338e8fd583eaf395",
            "ee2739979afe7dfced36ebb407525d5b",
            "15fb84350c0e8fd5338e8fd583eaf395.2"
        ]
    );
    assert!(p.quota_limits()[1].persistent);
    let q = load(&p.dump());
    assert_eq!(q.rule_ids(), p.rule_ids());
    assert_eq!(q.quota_limits(), p.quota_limits());
}

#[test]
fn unquoted_dates_load_with_a_migration_warning_quoted_ones_without() {
    let unquoted = load(
        "decrypt:\n  - - rule: time-range-rule\n      include: [2022-03-07]\n      exclude: ['2022-03-08']\n",
    );
    let dated: Vec<_> = unquoted
        .warnings()
        .iter()
        .filter(|w| w.message.contains("YAML date"))
        .collect();
    assert_eq!(dated.len(), 1, "{:?}", unquoted.warnings());
    assert_eq!(dated[0].location.argument.as_deref(), Some("include"));
    let quoted = load("decrypt:\n  - - rule: time-range-rule\n      include: ['2022-03-07']\n");
    assert!(quoted.warnings().is_empty(), "{:?}", quoted.warnings());
}

/// `prepare` evaluates a request's rules without a quota store (so that it can run before
/// the counters are read and locked); `decide` then consumes quotas as `evaluate` would:
/// the first throttled set while it lasts, then the next set that approves. A prepared
/// request is the same decision whatever the metadata rules cost.
#[test]
fn a_prepared_request_decides_as_evaluate_does() {
    let p = load(
        "
decrypt:
  - - rule: per-profile-throttle-rule
      per_hour: 2
      rule_id: first
    - rule: meta-rule
      regexes: ['^/secrets/']
  - - rule: meta-rule
      regexes: ['^/other/']
  - - rule: per-profile-throttle-rule
      per_hour: 1
      rule_id: last
",
    );
    let tz = TimeZone::UTC;
    let at = monday_morning();
    let prepared_store = MemoryQuotaStore::new();
    let evaluated_store = MemoryQuotaStore::new();
    for meta in ["secrets/a", "other/b", "nothing/c"] {
        let request = decrypt_complete(meta);
        let prepared = p.prepare(&request, at, &tz);
        for _ in 0..4 {
            assert_eq!(
                prepared.decide(&prepared_store),
                p.evaluate(&request, at, &tz, &evaluated_store),
                "{meta}"
            );
        }
    }
    // secrets/: set 0 while its 2 uses last, then set 2 (set 1 does not match) for its 1,
    // then quota.
    let request = decrypt_complete("secrets/z");
    let prepared = p.prepare(&request, at, &tz);
    let store = MemoryQuotaStore::new();
    let sets: Vec<Option<usize>> = (0..4).map(|_| prepared.decide(&store).rule_set()).collect();
    assert_eq!(sets, [Some(0), Some(0), Some(2), None]);
    assert_eq!(prepared.decide(&store), Decision::Denied(DenyReason::Quota));
}
