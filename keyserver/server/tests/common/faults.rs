//! Fault injectors for the tests: the test database stopped, hung and killed
//! (`scripts/mariadb.sh`), toxiproxy between an instance and the database, libfaketime
//! for one process's clock (`scripts/fault-tools.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub const MARIADB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/mariadb.sh");

/// Runs `scripts/mariadb.sh <command>`; panics if it fails.
pub fn mariadb(command: &str) {
    let out = Command::new("bash")
        .arg(MARIADB_SH)
        .arg(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb.sh {command} failed: {}{}",
        super::text(&out.stdout),
        super::text(&out.stderr)
    );
}

/// [`mariadb`] off the runtime's threads; returns when the script has.
pub async fn mariadb_async(command: &'static str) {
    tokio::task::spawn_blocking(move || mariadb(command))
        .await
        .unwrap();
}

/// Thaws and starts the database again when dropped, whatever happened (no-ops if it
/// runs).
pub struct RestartDbOnDrop;

impl Drop for RestartDbOnDrop {
    fn drop(&mut self) {
        for command in ["thaw-db", "start-db"] {
            match Command::new("bash").arg(MARIADB_SH).arg(command).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("mariadb.sh {command} failed: {}", super::text(&out.stderr)),
                Err(e) => eprintln!("mariadb.sh {command} failed: {e}"),
            }
        }
    }
}

/// A toxiproxy server (`scripts/fault-tools.sh`), stopped when dropped.
pub struct Toxiproxy {
    child: std::process::Child,
    api: String,
    cli: String,
}

impl Toxiproxy {
    /// `None` (the test is skipped, said on stderr) without `KSS_TOXIPROXY_SERVER`, unless
    /// `KSS_REQUIRE_MYSQL` is set (CI), which makes it required.
    pub fn start() -> Option<Toxiproxy> {
        let (Ok(server), Ok(cli)) = (
            std::env::var("KSS_TOXIPROXY_SERVER"),
            std::env::var("KSS_TOXIPROXY_CLI"),
        ) else {
            assert!(
                std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
                "KSS_TOXIPROXY_SERVER not set but KSS_REQUIRE_MYSQL is (eval \"$(scripts/fault-tools.sh)\")"
            );
            super::skipped(
                "toxiproxy test: KSS_TOXIPROXY_SERVER not set (eval \"$(scripts/fault-tools.sh)\")",
            );
            return None;
        };
        let port = super::free_port();
        let child = Command::new(server)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let proxy = Toxiproxy {
            child,
            api: format!("http://127.0.0.1:{port}"),
            cli,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proxy.try_cli(&["list"]) {
            assert!(Instant::now() < deadline, "toxiproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(proxy)
    }

    pub fn try_cli(&self, args: &[&str]) -> bool {
        Command::new(&self.cli)
            .arg("--host")
            .arg(&self.api)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn cli(&self, args: &[&str]) {
        assert!(self.try_cli(args), "toxiproxy-cli {args:?} failed");
    }

    /// A proxy named `name` to `127.0.0.1:upstream`; returns its port.
    pub fn proxy(&self, name: &str, upstream: u16) -> u16 {
        let port = super::free_port();
        self.cli(&[
            "create",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &format!("127.0.0.1:{upstream}"),
            name,
        ]);
        port
    }

    /// A `timeout` toxic named `toxic` that holds everything, closing nothing, in one
    /// direction: from the database (downstream) or to it (`upstream`).
    fn hold(&self, name: &str, toxic: &str, upstream: bool) {
        let mut args = vec!["toxic", "add", "-t", "timeout", "-a", "timeout=0"];
        if upstream {
            args.push("-u");
        }
        args.extend(["-n", toxic, name]);
        self.cli(&args);
    }

    /// Nothing passes either way, and no connection is closed (a network that drops).
    pub fn blackhole(&self, name: &str) {
        self.hold(name, "down", false);
        self.hold(name, "up", true);
    }

    /// Nothing comes back from the database; what the instance sends still reaches it
    /// (a commit lands, its acknowledgement never arrives).
    pub fn cut_downstream(&self, name: &str) {
        self.hold(name, "down", false);
    }

    pub fn heal_downstream(&self, name: &str) {
        self.remove(name, &["down"]);
    }

    /// Every answer from the database delayed by `ms` (± `jitter_ms`).
    pub fn slow_down(&self, name: &str, ms: u32, jitter_ms: u32) {
        self.cli(&[
            "toxic",
            "add",
            "-t",
            "latency",
            "-a",
            &format!("latency={ms}"),
            "-a",
            &format!("jitter={jitter_ms}"),
            "-n",
            "slow",
            name,
        ]);
    }

    /// Every connection that carries data is reset (TCP RST), both ways.
    pub fn reset_connections(&self, name: &str) {
        for (direction, toxic) in [("", "reset-down"), ("-u", "reset-up")] {
            let mut args = vec!["toxic", "add", "-t", "reset_peer", "-a", "timeout=0"];
            if !direction.is_empty() {
                args.push(direction);
            }
            args.extend(["-n", toxic, name]);
            self.cli(&args);
        }
    }

    /// Removes the toxics named `toxics` from the proxy `name`.
    pub fn remove(&self, name: &str, toxics: &[&str]) {
        for toxic in toxics {
            self.cli(&["toxic", "remove", "-n", toxic, name]);
        }
    }

    /// Undoes [`Toxiproxy::blackhole`].
    pub fn heal(&self, name: &str) {
        self.remove(name, &["down", "up"]);
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of a `mysql://…@host:port/…` address.
pub fn db_port(url: &str) -> u16 {
    let authority = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

/// A process clock moved by libfaketime (`scripts/fault-tools.sh`): the offset from the
/// real clock is read from a file the test rewrites while the process runs.
pub struct FakeClock {
    file: PathBuf,
    lib: String,
}

impl FakeClock {
    /// `None` (the test is skipped, said on stderr) without `KSS_FAKETIME_LIB`, unless
    /// `KSS_REQUIRE_MYSQL` is set (CI), which makes it required.
    pub fn new(dir: &std::path::Path, offset_s: i64) -> Option<FakeClock> {
        let Ok(lib) = std::env::var("KSS_FAKETIME_LIB") else {
            assert!(
                std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
                "KSS_FAKETIME_LIB not set but KSS_REQUIRE_MYSQL is (eval \"$(scripts/fault-tools.sh)\")"
            );
            super::skipped(
                "clock test: KSS_FAKETIME_LIB not set (eval \"$(scripts/fault-tools.sh)\")",
            );
            return None;
        };
        let clock = FakeClock {
            file: dir.join("faketime.rc"),
            lib,
        };
        clock.set(offset_s);
        Some(clock)
    }

    /// From now on (within the library's one-second cache), the process's wall clock
    /// reads the real one plus `offset_s`.
    pub fn set(&self, offset_s: i64) {
        std::fs::write(&self.file, format!("{offset_s:+}\n")).unwrap();
    }

    /// The environment that puts a process on this clock. Only the wall clock moves:
    /// timers and deadlines run on the monotonic clock, which a host's clock jump does
    /// not move either.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", self.lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", super::path_of(&self.file)),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}
