//! The embedded SQLite database when its file system misbehaves, a standalone `kss serve`
//! approving decrypt requests under a little concurrent load each time:
//!
//! * the disk fills up: the data directory is a small ext4 file system (a loop device,
//!   `scripts/small-fs.sh`) and a filler file takes every free block;
//! * the file system hangs: the data directory is go-fuse's loopback file system
//!   (`scripts/fault-tools.sh`) and its daemon is stopped with SIGSTOP, so that every
//!   read, write and fsync waits.
//!
//! Either way the server fails closed while it lasts (an answer within 3 s, denied
//! `unavailable` or an RPC error, never an approval without its audit record), approves
//! again by itself within 5 s of the file system coming back, without a restart, and
//! leaves a database that passes `PRAGMA integrity_check` and an audit chain that
//! verifies.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::load::{Answer, Load, Sample};
use common::{DataDir, Server, text};
use kss_client::protocol::{RequestSpec, encrypt_file_key};

use kss_crypto::ids::KeyserverId;
use sqlx::Connection;

const POLICY: &str = "\
decrypt:
  - - rule: meta-rule
      paths: [/batch]
";

/// The data directory's file system: big enough for the keyserver's files and some
/// thousands of audit rows, small enough to fill in a moment.
const FS_MB: u32 = 24;
/// Concurrent clients, each sending one request after the other.
const WORKERS: usize = 4;
/// How long a fault lasts: shorter than the standalone lease (10 s by default), which a
/// server that cannot write for longer gives up (and stops).
const FAULT_FOR: Duration = Duration::from_secs(5);
/// The longest a request may wait for its answer during a fault.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// The longest until an approval again once the file system is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/small-fs.sh")
}

/// The small file system mounted on a directory; unmounted (loop device detached, image
/// deleted) when dropped, also when an assertion failed.
struct SmallFs {
    dir: PathBuf,
}

/// What `small-fs.sh` exits with when this machine cannot mount (not root, no loop
/// device, ...).
const CANNOT_MOUNT: i32 = 77;

impl SmallFs {
    /// `None` (after saying SKIPPED) when this machine cannot mount one; fails instead
    /// under `KSS_REQUIRE_MYSQL` (CI, where every fault test must run).
    fn mount(dir: &Path, size_mb: u32) -> Option<SmallFs> {
        let out = Command::new("bash")
            .arg(script())
            .arg("mount")
            .arg(dir)
            .arg(size_mb.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            return Some(SmallFs {
                dir: dir.to_path_buf(),
            });
        }
        // Whatever part of the mount happened is undone.
        drop(SmallFs {
            dir: dir.to_path_buf(),
        });
        let stderr = text(&out.stderr);
        let why = stderr
            .lines()
            .last()
            .unwrap_or("no reason given")
            .trim_start_matches("[small-fs] ")
            .to_string();
        assert_eq!(
            out.status.code(),
            Some(CANNOT_MOUNT),
            "small-fs.sh mount failed: {stderr}"
        );
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "the disk-full test cannot run ({why}) but KSS_REQUIRE_MYSQL is set"
        );
        common::skipped(&format!("the disk-full test: {why}"));
        None
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        match Command::new("bash")
            .arg(script())
            .arg("umount")
            .arg(&self.dir)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "small-fs.sh umount {} failed: {}",
                self.dir.display(),
                text(&out.stderr)
            ),
            Err(e) => eprintln!("small-fs.sh umount {}: {e}", self.dir.display()),
        }
    }
}

/// go-fuse's loopback file system mounted on a directory, mirroring another one beside
/// it; its daemon stopped with SIGSTOP hangs every call into it. Resumed, unmounted and
/// stopped when dropped, also when an assertion failed.
struct HangingFs {
    dir: PathBuf,
    daemon: std::process::Child,
}

impl HangingFs {
    /// `None` (after saying SKIPPED) without `KSS_FUSE_LOOPBACK`; fails instead under
    /// `KSS_REQUIRE_MYSQL` (CI, where every fault test must run).
    fn mount(dir: &Path) -> Option<HangingFs> {
        let Ok(loopback) = std::env::var("KSS_FUSE_LOOPBACK") else {
            assert!(
                std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
                "KSS_FUSE_LOOPBACK not set but KSS_REQUIRE_MYSQL is (eval \"$(scripts/fault-tools.sh)\")"
            );
            common::skipped(
                "the hung file system test because KSS_FUSE_LOOPBACK is not set (eval \"$(scripts/fault-tools.sh)\")",
            );
            return None;
        };
        let backing = dir.with_extension("backing");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let daemon = Command::new(loopback)
            .arg("-q")
            .arg("-directmountstrict")
            .arg(dir)
            .arg(&backing)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let fs = HangingFs {
            dir: dir.to_path_buf(),
            daemon,
        };
        let mounted = || {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mounted() {
            assert!(
                Instant::now() < deadline,
                "go-fuse's loopback did not mount {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(fs)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.daemon.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} of the FUSE daemon failed");
    }
}

impl Drop for HangingFs {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.daemon.id().to_string())
            .status();
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Writes `path` until the file system refuses a single block (ENOSPC); returns its size.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    let mut chunk = 1 << 20;
    let zeros = vec![0u8; chunk];
    while chunk >= 512 {
        match file.write(&zeros[..chunk]) {
            Ok(0) => chunk /= 2,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => chunk /= 2,
            Err(e) => panic!("writing the filler: {e}"),
        }
    }
    // Allocated already (ext4 reserves blocks at write time); the sync may itself fail.
    if let Err(e) = file.sync_all() {
        eprintln!("syncing the filler: {e}");
    }
    written
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_closed_then_the_server_recovers_by_itself() {
    // Dropped in reverse: the server first, then the file system, then the directory.
    let data = DataDir::new();
    let Some(_fs) = SmallFs::mount(&data.path(), FS_MB) else {
        return;
    };
    let filler = data.path().join("filler");
    fails_closed_and_recovers(
        &data,
        "the disk is full",
        async || {
            let filler = filler.clone();
            let started = Instant::now();
            let bytes = tokio::task::spawn_blocking(move || fill(&filler))
                .await
                .unwrap();
            println!("filler: {bytes} bytes in {:?}", started.elapsed());
        },
        async || std::fs::remove_file(&filler).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_file_system_fails_closed_then_the_server_recovers_by_itself() {
    let data = DataDir::new();
    let Some(fs) = HangingFs::mount(&data.path()) else {
        return;
    };
    fails_closed_and_recovers(
        &data,
        "the file system hangs",
        async || fs.signal("-STOP"),
        async || fs.signal("-CONT"),
    )
    .await;
}

/// Serves from `data` under load; `fault` begins the fault, which lasts `FAULT_FOR`
/// until `heal`; then checks every property of the module's list.
async fn fails_closed_and_recovers(
    data: &DataDir,
    what: &str,
    fault: impl AsyncFnOnce(),
    heal: impl AsyncFnOnce(),
) {
    let id = data.create();
    data.load_policy(POLICY);
    let mut server = Server::start(data);
    let first = server.client(data).await;
    let id: KeyserverId = id.parse().unwrap();
    let profile = first.onboard(&id, "batch@host", None).await.unwrap();
    let ciphertext = encrypt_file_key(&profile, &[9u8; 32]);
    let spec = RequestSpec::decrypt(ciphertext, &["batch/x".to_string()]);
    let mut clients = vec![first];
    for _ in 1..WORKERS {
        clients.push(server.client(data).await);
    }

    let load = Load::start(clients, &profile, &spec);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault_started = Instant::now();
    fault().await;
    tokio::time::sleep(FAULT_FOR).await;
    heal().await;
    let healed_at = Instant::now();
    let recovered = load
        .wait_for(Duration::from_secs(15), |s| {
            s.sent >= healed_at && matches!(s.answer, Answer::Approved(_))
        })
        .await;
    // A little more load after the recovery: it holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.stop().await;
    let log = server.log_text();

    // Answered before the fault: approved.
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent + s.took < fault_started)
        .collect();
    assert!(!before.is_empty());
    for s in &before {
        assert!(
            matches!(s.answer, Answer::Approved(_)),
            "before {what}: {s:?}\n{log}"
        );
    }

    // In flight during the fault: every answer within 3 s, approved (with its record,
    // checked below), denied unavailable or failed; and the fault did refuse requests.
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent < healed_at && s.sent + s.took >= fault_started)
        .collect();
    let mut refused = 0;
    let mut approved_during = 0;
    for s in &during {
        assert!(
            s.took <= ANSWER_WITHIN,
            "a request waited {:?} while {what}: {s:?}\n{log}",
            s.took
        );
        match &s.answer {
            Answer::Approved(_) => approved_during += 1,
            Answer::Denied(reason) => {
                assert_eq!(reason.as_deref(), Some("unavailable"), "{s:?}");
                refused += 1;
            }
            Answer::Failed(e) => {
                eprintln!("a request failed while {what} (acceptable): {e}");
                refused += 1;
            }
        }
    }
    let slowest = during.iter().map(|s| s.took).max().unwrap_or_default();
    println!(
        "while {what}: {} answers ({refused} refused, {approved_during} approved), \
         slowest {slowest:?}",
        during.len()
    );
    assert!(
        refused > 0,
        "no request was refused while {what}: the test did not make its point"
    );
    // Nothing hung: the last requests sent during the fault were answered too.
    let last_sent = samples.iter().map(|s| s.sent).max().unwrap();
    assert!(last_sent >= healed_at);

    // Healed: an approval within 5 s, by the same process, and only approvals once it
    // approved again.
    assert!(
        recovered,
        "no approval within 15 s of the file system coming back\n{log}"
    );
    let first_again = samples
        .iter()
        .filter(|s| s.sent >= healed_at && matches!(s.answer, Answer::Approved(_)))
        .map(|s| s.sent + s.took)
        .min()
        .unwrap();
    let recovery = first_again - healed_at;
    println!("approved again {recovery:?} after the file system came back");
    assert!(
        recovery <= RECOVER_WITHIN,
        "approved again only {recovery:?} after the file system came back\n{log}"
    );
    for s in samples.iter().filter(|s| s.sent > first_again) {
        assert!(
            matches!(s.answer, Answer::Approved(_)),
            "after the recovery: {s:?}\n{log}"
        );
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let pid = server.child.id();
    assert!(server.terminate(), "no clean exit after SIGTERM:\n{log}");

    // The database is sound.
    let db = data.path().join("kss.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let check: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    println!("integrity_check: {check:?}");
    assert_eq!(check, ["ok"]);
    let verify = data.kss_ok(&["audit", "verify"]);
    println!("audit verify: {}", verify.trim());

    // Every approval a client received has its audit record (once).
    let received: Vec<u64> = samples
        .iter()
        .filter_map(|s| match s.answer {
            Answer::Approved(id) => Some(id),
            _ => None,
        })
        .collect();
    let distinct: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), received.len(), "an audit id given twice");
    let audited: HashSet<u64> = data.audited_approvals().iter().map(|a| a.id).collect();
    let missing: Vec<u64> = distinct.difference(&audited).copied().collect();
    assert!(
        missing.is_empty(),
        "approvals clients received without an audit record: {missing:?}"
    );
    println!(
        "{} approvals received, {} audited (server pid {pid})",
        received.len(),
        audited.len()
    );
}
