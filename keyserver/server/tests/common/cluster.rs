//! A keyserver's instances on one MariaDB database, as `kss serve` processes.

use std::path::PathBuf;
use std::process::Command;

use kss_client::{KssClient, Profile};
use kss_crypto::ids::KeyserverId;
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{DataDir, Server};

/// What the health service reports on: the keyserver's gRPC service.
pub const KEYSERVER_SERVICE: &str = "kss.v1.KeyServer";

/// A decrypt policy: paths under `/batch`, a persistent daily quota per profile.
pub fn policy(per_day: u64) -> String {
    format!(
        "decrypt:\n  - - rule: meta-rule\n      paths: [/batch]\n    - rule: per-profile-throttle-rule\n      per_day: {per_day}\n      persistent: true\n"
    )
}

/// How one instance is started: its database address, more flags, more environment.
#[derive(Default)]
pub struct Launch {
    pub db: String,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// How an instance was started, to start it again the same way.
struct Started {
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    metrics_port: u16,
}

impl Started {
    fn start(&self, dir: &DataDir) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Server::start_on(dir, &args, &self.env, self.port, self.metrics_port)
    }
}

/// Instances named a, b, c, ... of one keyserver on a fresh database.
pub struct Cluster {
    pub dirs: Vec<DataDir>,
    /// `None` once killed.
    pub servers: Vec<Option<Server>>,
    launches: Vec<Started>,
    pub names: Vec<String>,
    pub id: String,
    pub db: String,
    pub db_name: String,
}

impl Cluster {
    /// `None`: no test database (the test is skipped).
    pub async fn start(instances: usize, per_day: u64) -> Option<Cluster> {
        Cluster::start_via(instances, per_day, |_, db| db.to_string()).await
    }

    /// As [`Cluster::start`], instance `i` serving from the database address
    /// `serve_db(i, db)` (through a proxy, say).
    pub async fn start_via(
        instances: usize,
        per_day: u64,
        serve_db: impl Fn(usize, &str) -> String,
    ) -> Option<Cluster> {
        Cluster::launch(instances, &policy(per_day), |i, db| Launch {
            db: serve_db(i, db),
            ..Launch::default()
        })
        .await
    }

    /// Instances on a fresh database with `policy`, instance `i` started as
    /// `launch(i, db)` says.
    pub async fn launch(
        instances: usize,
        policy: &str,
        launch: impl Fn(usize, &str) -> Launch,
    ) -> Option<Cluster> {
        let (db, db_name) = super::fresh_database().await?;
        let dirs: Vec<DataDir> = (0..instances).map(|_| DataDir::new()).collect();
        let names: Vec<String> = (0..instances)
            .map(|i| char::from(b'a' + u8::try_from(i).unwrap()).to_string())
            .collect();
        let id = dirs[0]
            .kss_ok(&[
                "--db-uri",
                &db,
                "create",
                "--ignore-security-checks",
                "--threshold",
                "1",
            ])
            .trim()
            .to_string();
        dirs[0].load_policy(policy);
        let launches: Vec<Started> = (0..instances)
            .map(|i| {
                let how = launch(i, &db);
                let mut args = vec![
                    "--db-uri".to_string(),
                    how.db,
                    "--instance-name".to_string(),
                    names[i].clone(),
                ];
                args.extend(how.extra);
                Started {
                    args,
                    env: how.env,
                    port: super::free_port(),
                    metrics_port: super::free_port(),
                }
            })
            .collect();
        // The first start generates the self-signed TLS files the others share.
        let mut servers = vec![Some(launches[0].start(&dirs[0]))];
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            super::share_master_key(&dirs[0], dir);
            dir.kss_ok(&["--db-uri", &db, "initialize"]);
            super::share_tls(&dirs[0], dir);
            servers.push(Some(launches[i].start(dir)));
        }
        Some(Cluster {
            dirs,
            servers,
            launches,
            names,
            id,
            db,
            db_name,
        })
    }

    pub fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().unwrap()
    }

    pub async fn clients(&self) -> Vec<KssClient> {
        let mut clients = Vec::new();
        for i in 0..self.servers.len() {
            clients.push(self.server(i).client(&self.dirs[0]).await);
        }
        clients
    }

    pub async fn onboard(&self, client: &KssClient) -> Profile {
        client
            .onboard(&self.id.parse::<KeyserverId>().unwrap(), "batch@host", None)
            .await
            .unwrap()
    }

    /// A health client per instance.
    pub async fn health_clients(&self) -> Vec<HealthClient<tonic::transport::Channel>> {
        let ca = self.dirs[0].ca_pem();
        let mut out = Vec::new();
        for i in 0..self.servers.len() {
            let channel =
                kss_client::connect_channel(&self.server(i).endpoint(), &ca, Some("localhost"))
                    .await
                    .unwrap();
            out.push(HealthClient::new(channel));
        }
        out
    }

    pub fn kill9(&mut self, i: usize) {
        self.servers[i].take().unwrap().kill9();
    }

    /// Starts instance `i` again (after [`Cluster::kill9`]) as it was first started, on
    /// the same ports; returns when it serves.
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "instance {i} is running");
        self.servers[i] = Some(self.launches[i].start(&self.dirs[i]));
    }

    /// The process id of instance `i` (running).
    pub fn pid(&self, i: usize) -> u32 {
        self.server(i).child.id()
    }

    /// Instance `i`'s gRPC address, running or not.
    pub fn endpoint(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.launches[i].port)
    }

    /// The server logs of the instances still running (for failure messages).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .zip(&self.names)
            .filter_map(|(s, n)| s.as_ref().map(|s| format!("--- {n}:\n{}", s.log_text())))
            .collect()
    }

    pub async fn finish(self) {
        let name = self.db_name.clone();
        drop(self);
        super::drop_database(&name).await;
    }
}

pub async fn health(client: &HealthClient<tonic::transport::Channel>) -> Option<ServingStatus> {
    let response = client
        .clone()
        .check(HealthCheckRequest {
            service: KEYSERVER_SERVICE.to_string(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// `kss instance list --json` through `dir`, off the runtime's threads.
pub async fn instance_list(dir: PathBuf) -> Value {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(super::kss_bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(["instance", "list", "--json"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kss instance list failed: {}",
            super::text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

pub fn instance_online(list: &Value, name: &str) -> bool {
    let found = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {list}"));
    found["online"].as_bool().unwrap()
}
