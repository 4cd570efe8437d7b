//! Runs real `kss` processes for the tests: a keyserver on a data directory with
//! self-signed TLS, and the admin CLI.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kss_client::KssClient;
use sqlx::Connection;

pub mod cluster;
pub mod faults;
pub mod load;

pub fn kss_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kss")
}

/// An approved decrypt of the audit log.
#[derive(Debug, Clone)]
pub struct AuditedApproval {
    pub id: u64,
    pub instance: String,
    pub at_ms: i64,
}

/// A temporary data directory.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    pub fn new() -> Self {
        DataDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Runs `kss --data-dir <dir> args...`.
    pub fn kss(&self, args: &[&str]) -> Output {
        Command::new(kss_bin())
            .arg("--data-dir")
            .arg(self.path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn kss_ok(&self, args: &[&str]) -> String {
        let out = self.kss(args);
        assert!(
            out.status.success(),
            "kss {args:?} failed: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `kss create` with a one-holder backup key; returns the keyserver ID.
    pub fn create(&self) -> String {
        let out = self.kss_ok(&["create", "--ignore-security-checks", "--threshold", "1"]);
        out.trim().to_string()
    }

    pub fn load_policy(&self, yaml: &str) -> String {
        let p = self.file("policy.yml", yaml);
        self.kss_ok(&["policy", "load", p.to_str().unwrap()])
    }

    /// The approved decrypts of the audit log, read with the CLI: (audit id, instance,
    /// decided at in ms).
    pub fn audited_approvals(&self) -> Vec<AuditedApproval> {
        let audit = self.kss_ok(&[
            "audit",
            "--json",
            "--decision",
            "approved",
            "--type",
            "decrypt",
            "--limit",
            "1000000",
        ]);
        audit
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                AuditedApproval {
                    id: v["id"].as_u64().unwrap(),
                    instance: v["instance"].as_str().unwrap_or_default().to_string(),
                    at_ms: v["at_ms"].as_i64().unwrap(),
                }
            })
            .collect()
    }

    /// Another connection to the data directory's SQLite database holding its write lock
    /// (`BEGIN EXCLUSIVE`) until it is rolled back or dropped: every write of the server
    /// waits.
    pub async fn hold_write_lock(&self) -> sqlx::SqliteConnection {
        let db = self.path().join("kss.db");
        let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .await
            .unwrap();
        holder
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path().join("tls/ca.pem")).unwrap()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback port for a server process to bind later. It is below Linux's ephemeral
/// range (32768–60999), so no client connection takes it between this pick and the
/// server's bind, and it is never handed out twice in one test process (tests run in
/// parallel threads). The test MariaDB's port is skipped.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const FIRST: u16 = 20_000;
    const COUNT: u64 = 12_000;
    let mut handed_out = HANDED_OUT.lock().unwrap();
    for _ in 0..1_000 {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_usize(handed_out.len());
        let port = FIRST + u16::try_from(random.finish() % COUNT).unwrap();
        if port == 23306 || handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free loopback port in {FIRST}..{}",
        u64::from(FIRST) + COUNT
    );
}

/// A `kss serve` process just started: stdout piped, stderr to `log`.
pub struct Spawned {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

/// A fixed-offset time zone in which it is now between 11:30 and 12:30, so a test's
/// `per_day`/`per_hour` windows never roll over while it runs (a CI run may span
/// midnight UTC). A flag in `extra` still wins: clap takes the flag over the environment.
pub fn near_noon_time_zone() -> String {
    let minutes = (unix_ms() / 60_000).rem_euclid(24 * 60);
    let hour = (minutes + 30) / 60 % 24;
    match 12 - hour {
        0 => "UTC".to_string(),
        // Etc/GMT's sign is inverted (POSIX): Etc/GMT-3 is three hours ahead of UTC.
        ahead if ahead > 0 => format!("Etc/GMT-{ahead}"),
        behind => format!("Etc/GMT+{}", -behind),
    }
}

/// Starts `kss serve` on the data directory with self-signed TLS, on free loopback ports,
/// polling every 100 ms, in [`near_noon_time_zone`]; does not wait for it to serve.
pub fn spawn_serve(data: &DataDir, extra: &[&str]) -> Spawned {
    spawn_serve_env(data, extra, &[])
}

/// [`spawn_serve`] with more environment variables for the process (`LD_PRELOAD` of
/// libfaketime, say).
pub fn spawn_serve_env(data: &DataDir, extra: &[&str], env: &[(String, String)]) -> Spawned {
    spawn_serve_on(data, extra, env, free_port(), free_port())
}

/// [`spawn_serve_env`] on given ports (a restarted instance keeps its address).
pub fn spawn_serve_on(
    data: &DataDir,
    extra: &[&str],
    env: &[(String, String)],
    port: u16,
    metrics_port: u16,
) -> Spawned {
    let log = data.dir.path().join(format!("server-{port}.log"));
    let child = Command::new(kss_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["serve", "--self-signed-tls", "--poll-interval-ms", "100"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(extra)
        .env("KSS_TIME_ZONE", near_noon_time_zone())
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The server sees no address the tests were given (they hold the password).
        .env_clear_prefixed("KSS_TEST_")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Spawned {
        child,
        port,
        metrics_port,
        log,
    }
}

/// Removes from a command's environment every variable of this process whose name starts
/// with a prefix.
trait EnvClearPrefixed {
    fn env_clear_prefixed(&mut self, prefix: &str) -> &mut Self;
}

impl EnvClearPrefixed for Command {
    fn env_clear_prefixed(&mut self, prefix: &str) -> &mut Self {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with(prefix) {
                self.env_remove(name);
            }
        }
        self
    }
}

/// A running `kss serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Server {
    pub fn start(data: &DataDir) -> Server {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &DataDir, extra: &[&str]) -> Server {
        Self::start_env(data, extra, &[])
    }

    /// [`Server::start_with`], the process given more environment variables.
    pub fn start_env(data: &DataDir, extra: &[&str], env: &[(String, String)]) -> Server {
        Self::start_on(data, extra, env, free_port(), free_port())
    }

    /// [`Server::start_env`] on given ports.
    pub fn start_on(
        data: &DataDir,
        extra: &[&str],
        env: &[(String, String)],
        port: u16,
        metrics_port: u16,
    ) -> Server {
        let Spawned {
            child,
            port,
            metrics_port,
            log,
        } = spawn_serve_on(data, extra, env, port, metrics_port);
        let mut server = Server {
            child,
            port,
            metrics_port,
            log,
        };
        server.wait_serving();
        server
    }

    fn wait_serving(&mut self) {
        let stdout = self.child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) if line.contains("serving on") => {
                    // Keep draining stdout so the server never blocks on it.
                    std::thread::spawn(move || for _ in lines {});
                    return;
                }
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        panic!("kss serve did not start:\n{}", self.log_text());
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self, data: &DataDir) -> KssClient {
        kss_client::install_crypto_provider();
        KssClient::connect(&self.endpoint(), &data.ca_pem(), Some("localhost"))
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output();
        match out {
            Ok(o) => text(&o.stdout),
            Err(_) => String::new(),
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds since the Unix epoch (the clock the store stamps heartbeats with).
pub fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// How long after `killed_at_ms` the registry shows an instance offline (one object of
/// `kss instance list --json`): from its last heartbeat plus `OFFLINE_AFTER_MS`, whenever
/// anyone asks. This is the registry's answer, not the delay of whoever polls it.
pub fn shown_offline_after(instance: &serde_json::Value, killed_at_ms: i64) -> Duration {
    let last_heartbeat = instance["heartbeat_at_ms"].as_i64().unwrap();
    let offline_from = last_heartbeat + kss_store::OFFLINE_AFTER_MS + 1;
    Duration::from_millis(u64::try_from(offline_from - killed_at_ms).unwrap_or(0))
}

/// Waits until `check` holds, or panics after `timeout` with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub fn path_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sends `n` decrypt requests at once, round-robin over `clients`; every one must be
/// approved or denied for quota. Returns how many were approved.
pub async fn concurrent_decrypts(
    clients: &[KssClient],
    profile: &kss_client::Profile,
    ciphertext: &[u8],
    path: &str,
    n: usize,
) -> usize {
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = clients[i % clients.len()].clone();
        let (profile, spec) = (
            profile.clone(),
            kss_client::protocol::RequestSpec::decrypt(ciphertext.to_vec(), &[path.to_string()]),
        );
        tasks.push(tokio::spawn(async move {
            client.request(&profile, &spec).await.unwrap()
        }));
    }
    let mut approved = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        if outcome.approved {
            approved += 1;
        } else {
            assert_eq!(outcome.reason_name().as_deref(), Some("quota"));
        }
    }
    approved
}

// ------------------------------------------------------------------ cluster mode

/// A fresh database on the test server; dropped by `drop_database`.
pub async fn fresh_database() -> Option<(String, String)> {
    let Ok(url) = std::env::var("KSS_TEST_MYSQL_URL") else {
        assert!(
            std::env::var_os("KSS_REQUIRE_MYSQL").is_none(),
            "KSS_TEST_MYSQL_URL not set but KSS_REQUIRE_MYSQL is"
        );
        skipped("cluster test: KSS_TEST_MYSQL_URL not set (scripts/mariadb.sh up)");
        return None;
    };
    let name = format!(
        "kss_cluster_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut conn = sqlx::mysql::MySqlConnection::connect(&url).await.unwrap();
    // The name is ours: digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), ""), |(b, q)| (b, q));
    let prefix = &base[..base.rfind('/').unwrap()];
    let db_url = if query.is_empty() {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}?{query}")
    };
    Some((db_url, name))
}

pub async fn drop_database(name: &str) {
    let url = std::env::var("KSS_TEST_MYSQL_URL").unwrap();
    let mut conn = sqlx::mysql::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Gives `to` the self-signed TLS files of `from` (same CA and server certificate), so that
/// one client configuration reaches every instance of a cluster.
pub fn share_tls(from: &DataDir, to: &DataDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["ca.pem", "server.pem", "server.key"] {
        let target = dir.join(name);
        std::fs::copy(from.path().join("tls").join(name), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Copies `from`'s master key into `to`'s data directory (mode 0600): what an
/// administrator does before `kss initialize` (the operator mounts a Secret instead).
pub fn share_master_key(from: &DataDir, to: &DataDir) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.path()).unwrap();
    let target = to.path().join("master.key");
    std::fs::copy(from.path().join("master.key"), &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Says on stderr that a test skipped a part, and why, and appends the line to
/// `$KSS_SKIP_LOG` (scripts/test.sh counts them in its last lines).
pub fn skipped(what: &str) {
    eprintln!("SKIPPED {what}");
    if let Some(log) = std::env::var_os("KSS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            // One write per line: O_APPEND keeps concurrent tests' lines whole.
            let _ = f.write_all(format!("{what}\n").as_bytes());
        }
    }
}
