//! `kss policy check | dump | eval` run as a process, as an administrator would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXAMPLE: &str = "\
decrypt:
  - - rule: time-range-rule
      time_start: 8:00am
      time_end: 6:00pm
    - rule: per-profile-throttle-rule
      per_day: 2
      persistent: true
  - - rule: meta-rule
      paths: [/public]
search:
  - - rule: profile-id-rule
      profile_ids: [humble busy much cactus]
";

fn kss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kss"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kss-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("kss runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

fn eval_stdin(policy: &Path, extra: &[&str], input: &str) -> Output {
    let mut child = kss()
        .args(["policy", "eval", "--policy"])
        .arg(policy)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kss starts");
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes());
    // kss may exit before reading (e.g. on an invalid policy): a closed pipe is fine.
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write requests: {e}"
        );
    }
    child.wait_with_output().expect("kss finishes")
}

#[test]
fn check_valid_policy_prints_one_line_summary() {
    let dir = TempDir::new("check-ok");
    let policy = dir.file("keyserver.yml", EXAMPLE);
    let out = run(kss().args(["policy", "check"]).arg(&policy));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("2 request types, 3 rule sets, 4 rules"),
        "{stdout}"
    );
}

#[test]
fn check_invalid_policy_fails_with_located_error() {
    let dir = TempDir::new("check-bad");
    let policy = dir.file(
        "keyserver.yml",
        "decrypt:\n  - - rule: approve-rule\n  - - rule: per-profile-throttle-rule\n      per_days: 3\n",
    );
    let out = run(kss().args(["policy", "check"]).arg(&policy));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "decrypt: rule set 1, rule 0 (per-profile-throttle-rule), argument 'per_days' (line 4)"
        ),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn check_reports_migration_warnings_but_passes() {
    let dir = TempDir::new("check-warn");
    let policy = dir.file(
        "keyserver.yml",
        "decrypt:\n  - - rule: meta-rule\n      paths: ['!/taxi', '/tax*']\n",
    );
    let out = run(kss().args(["policy", "check"]).arg(&policy));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("warning: "), "{stderr}");
    assert!(
        stderr.contains("rule set 0, rule 0 (meta-rule)"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("1 migration warning"));
}

#[test]
fn check_missing_file_fails() {
    let out = run(kss().args(["policy", "check", "/nonexistent/keyserver.yml"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read /nonexistent/keyserver.yml"));
}

#[test]
fn dump_fills_rule_ids_and_reloads_to_the_same_text() {
    let dir = TempDir::new("dump");
    let policy = dir.file("keyserver.yml", EXAMPLE);
    let first = run(kss().args(["policy", "dump"]).arg(&policy));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let dumped = text(&first.stdout);
    assert_eq!(dumped.matches("rule_id: ").count(), 4, "{dumped}");
    // md5 of {"per_day":2,"persistent":true,"rule":"per-profile-throttle-rule"}
    // (python3: hashlib.md5(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()))
    assert!(
        dumped.contains("rule_id: 2f52674863dc3d8c2f048fe9cd0369d8"),
        "{dumped}"
    );
    let again_path = dir.0.join("dumped.yml");
    let second = run(kss()
        .args(["policy", "dump"])
        .arg(dir.file("dumped.yml", &dumped))
        .arg("-o")
        .arg(&again_path));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(
        std::fs::read_to_string(&again_path).expect("read dump"),
        dumped
    );
}

#[test]
fn eval_reads_stdin_and_answers_each_line_in_order() {
    let dir = TempDir::new("eval");
    let policy = dir.file("keyserver.yml", EXAMPLE);
    let request = |at: &str, meta: &str| {
        format!(
            r#"{{"at":"{at}","type":"decrypt","profile_id":"AA01","auth_meta":[{{"meta":"{meta}","complete":true}}]}}"#
        )
    };
    let input = [
        request("2022-03-09T09:00:00Z", "private/a"),
        request("2022-03-09T10:00:00Z", "private/a"),
        request("2022-03-09T11:00:00Z", "private/a"),
        request("2022-03-09T11:00:00Z", "public/a"),
        r#"{"op":"quota_list","at":"2022-03-09T12:00:00Z"}"#.to_string(),
        r#"{"op":"quota_clear"}"#.to_string(),
        request("2022-03-09T12:00:00Z", "private/a"),
        request("2022-03-09T19:00:00Z", "private/a"),
        r#"{"type":"search","profile_words":["humble","busy","much","cactus","extra"]}"#
            .to_string(),
        r#"{"type":"rename"}"#.to_string(),
        r#"{"type":"decrypt","at":"yesterday"}"#.to_string(),
    ]
    .join("\n");
    let out = eval_stdin(&policy, &[], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    let expected_prefix = [
        r#"{"approved":true,"rule_set":0}"#,
        r#"{"approved":true,"rule_set":0}"#,
        r#"{"approved":false,"rule_set":null}"#,
        r#"{"approved":true,"rule_set":1}"#,
        r#"{"at_quota":["aa01"]}"#,
        r#"{"ok":true}"#,
        r#"{"approved":true,"rule_set":0}"#,
        r#"{"approved":false,"rule_set":null}"#,
        r#"{"approved":true,"rule_set":0}"#,
        r#"{"approved":false,"rule_set":null}"#,
    ];
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert_eq!(&lines[..10], &expected_prefix[..]);
    assert!(
        lines[10].starts_with(r#"{"error":"\"at\" must be an RFC 3339"#),
        "{}",
        lines[10]
    );
}

#[test]
fn eval_uses_the_time_zone_for_windows() {
    let dir = TempDir::new("eval-tz");
    let policy = dir.file(
        "keyserver.yml",
        "decrypt:\n  - - rule: time-range-rule\n      time_start: 9:00am\n      time_end: 5:00pm\n",
    );
    let requests = dir.file(
        "requests.jsonl",
        "{\"type\":\"decrypt\",\"at\":\"2022-03-09T17:30:00Z\"}\n",
    );
    let utc = run(kss()
        .args(["policy", "eval", "--policy"])
        .arg(&policy)
        .arg("--requests")
        .arg(&requests));
    assert_eq!(
        text(&utc.stdout),
        "{\"approved\":false,\"rule_set\":null}\n"
    );
    let ny = run(kss()
        .args(["policy", "eval", "--tz", "America/New_York", "--policy"])
        .arg(&policy)
        .arg("--requests")
        .arg(&requests));
    assert_eq!(text(&ny.stdout), "{\"approved\":true,\"rule_set\":0}\n");
    let bad = run(kss()
        .args(["policy", "eval", "--tz", "Mars/Olympus", "--policy"])
        .arg(&policy));
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("Mars/Olympus"));
}

#[test]
fn eval_refuses_an_invalid_policy() {
    let dir = TempDir::new("eval-bad");
    let policy = dir.file("keyserver.yml", "search:\n");
    let out = eval_stdin(&policy, &[], "{\"type\":\"search\"}\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("search"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn diff_tells_which_quota_counters_survive_an_edit() {
    let dir = TempDir::new("diff");
    let throttles = |per_day: u32, burst: u32| {
        format!(
            "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: {per_day}\n      persistent: true\n  \
             - - rule: per-profile-throttle-rule\n      per_day: {burst}\n      rule_id: burst\n  \
             - - rule: meta-rule\n      paths: [/public]\n"
        )
    };
    let old = dir.file("old.yml", &throttles(30, 5));
    let same = run(kss().args(["policy", "diff"]).arg(&old).arg(&old));
    assert!(same.status.success(), "{}", text(&same.stderr));
    assert!(
        text(&same.stdout).contains("2 kept, 0 new, 0 dropped"),
        "{}",
        text(&same.stdout)
    );

    let new = dir.file("new.yml", &throttles(40, 10));
    let out = run(kss().args(["policy", "diff"]).arg(&old).arg(&new));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // the unnamed throttle's id is a hash of its arguments: editing them changes it;
    // the explicit `burst` id keeps its counters
    assert!(
        stdout.contains("kept     decrypt: rule set 1, rule 0  burst"),
        "{stdout}"
    );
    assert!(
        stdout.contains("new      decrypt: rule set 0, rule 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dropped  decrypt: rule set 0, rule 0 (old)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 kept, 1 new, 1 dropped"), "{stdout}");
    assert!(stdout.contains("hint: "), "{stdout}");
}
