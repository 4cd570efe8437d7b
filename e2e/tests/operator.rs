//! The operator against the real control plane and a real node (run by `e2e/run.sh`):
//! `kss-operator` runs as a process with the install bundle's ServiceAccount and RBAC; the
//! kubelet runs the StatefulSet's keyserver pods from the `kss` image (containerd, runc),
//! with the configuration the operator generated, on real MariaDB for cluster mode.
//! Workstations are real `kss client` processes over TLS, to pod IPs and to the Service's
//! ClusterIP (kube-proxy).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kss_e2e::node::{self, RunningContainer};
use kss_e2e::{harness, provisioner};
use kss_operator::crd::cluster::Phase;
use kss_operator::crd::{KeyShardCluster, KssPolicy};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

const POLICY_V1: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/public]\n";
const POLICY_V2: &str = "decrypt:\n  - - rule: meta-rule\n      paths: [/public]\n    - rule: per-profile-throttle-rule\n      per_day: 100\n      persistent: true\n";
const POLICY_INVALID: &str = "decrypt:\n  - - rule: meta-rule\n      pathz: [/public]\n";

fn root() -> PathBuf {
    harness::workspace_root()
}

/// `<target>/debug/kss-operator`, next to the `kss` binary.
fn operator_bin() -> Result<PathBuf> {
    let kss = harness::kss_bin()?;
    let bin = kss.with_file_name("kss-operator");
    ensure!(
        bin.exists(),
        "{} missing: cargo build -p kss-operator",
        bin.display()
    );
    Ok(bin)
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl(args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.args(args);
    cmd
}

/// `kubectl apply -f -` of `yaml` in `ns`; whether it succeeded and the combined output.
fn apply_yaml(ns: &str, yaml: &str) -> Result<(bool, String)> {
    Ok(kss_e2e::kubectl::apply(ns, yaml)?)
}

fn apply_ok(ns: &str, yaml: &str) -> Result<()> {
    let (success, output) = apply_yaml(ns, yaml)?;
    ensure!(success, "kubectl apply failed: {output}");
    Ok(())
}

/// A kubeconfig for the operator's ServiceAccount (the install bundle's RBAC, nothing
/// more).
fn operator_kubeconfig(dir: &Path) -> Result<PathBuf> {
    Ok(kss_e2e::kubectl::service_account_kubeconfig(
        dir,
        "kss-system",
        "kss-operator",
        "2h",
    )?)
}

/// One `kss-operator run` process (killed on drop).
struct Operator {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
}

impl Operator {
    fn start(dir: &Path, ns: &str, lease: &str, identity: &str) -> Result<Operator> {
        Self::start_with(dir, ns, lease, identity, &[])
    }

    /// [`Operator::start`] with more `run` flags.
    fn start_with(
        dir: &Path,
        ns: &str,
        lease: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Operator> {
        let kubeconfig = operator_kubeconfig(dir)?;
        let log = dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log)?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(operator_bin()?)
            .args([
                "run",
                // As the bundle's Deployment says who the operator's pods are. The node's
                // network plugin does not enforce NetworkPolicies, so this process, outside
                // the cluster, still reaches the admin ports.
                "--pod-namespace",
                "kss-system",
                "--pod-selector",
                "app.kubernetes.io/name=kss-operator",
                "--watch-namespace",
                ns,
                "--lease-namespace",
                "kss-system",
                "--lease-name",
                lease,
                "--identity",
                identity,
                "--lease-duration-secs",
                "6",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kss_operator=debug,kube=warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting kss-operator")?;
        Ok(Operator {
            child,
            log,
            metrics_port,
        })
    }

    /// The body of `GET /metrics`.
    fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        ensure!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "metrics: {response}"
        );
        Ok(response)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test namespace with its volume provisioner and operator; the real node runs its
/// pods.
struct Scene {
    client: Client,
    ns: String,
    provisioner: tokio::task::JoinHandle<()>,
    operator: Operator,
    dir: tempfile::TempDir,
}

impl Scene {
    async fn new(name: &str) -> Result<Scene> {
        let client = harness::client().await?;
        // The kubectl install bundle but its Deployment: CRDs, namespace, ServiceAccount
        // and RBAC the operator process runs with (idempotent).
        kss_e2e::kubectl::apply_bundle_without_operator()?;
        let ns = harness::create_namespace(&client, name).await?;
        let provisioner = tokio::spawn(provisioner::run(
            client.clone(),
            ns.clone(),
            harness::state_dir(name)?,
        ));
        let dir = tempfile::tempdir()?;
        let operator = Operator::start(dir.path(), &ns, &format!("kss-op-{ns}"), "op-a")?;
        Ok(Scene {
            client,
            ns,
            provisioner,
            operator,
            dir,
        })
    }

    fn clusters(&self) -> Api<KeyShardCluster> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn cluster(&self, name: &str) -> Result<KeyShardCluster> {
        Ok(self.clusters().get(name).await?)
    }

    /// Waits until cluster `name` has `IdentityReady=False` with `reason`, and checks that
    /// the condition's message names `named` and the phase is Failed.
    async fn wait_identity_refused(&self, name: &str, reason: &str, named: &str) -> Result<()> {
        let cluster = self
            .wait_cluster(name, &format!("IdentityReady=False {reason}"), |c| {
                condition(c, "IdentityReady").is_some_and(|x| x.1 == reason)
            })
            .await?;
        let (_, _, message) = condition(&cluster, "IdentityReady").context("condition")?;
        ensure!(
            message.contains(named),
            "{name}: the IdentityReady message does not name {named}: {message}"
        );
        ensure!(status(&cluster).phase == Some(Phase::Failed));
        Ok(())
    }

    /// Waits until the cluster satisfies `pred`; on timeout reports its status and the
    /// operator's last log lines.
    async fn wait_cluster(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&KeyShardCluster) -> bool,
    ) -> Result<KeyShardCluster> {
        wait_cluster_within(self, name, what, WAIT, pred).await
    }

    async fn wait_ready(&self, name: &str) -> Result<KeyShardCluster> {
        self.wait_cluster(name, "phase Ready", |c| {
            status(c).phase == Some(Phase::Ready)
        })
        .await
    }

    async fn secret_text(&self, name: &str, key: &str) -> Result<String> {
        let secret = self.secrets().get(name).await?;
        let bytes = secret
            .data
            .and_then(|d| d.get(key).cloned())
            .with_context(|| format!("Secret {name} has no {key}"))?;
        Ok(String::from_utf8(bytes.0)?)
    }

    /// A merge patch of cluster `name`'s spec.
    async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.clusters()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
        Ok(())
    }

    /// The keyserver container of `pod`, once it runs.
    async fn keyserver(&self, pod: &str) -> Result<RunningContainer> {
        Ok(node::wait_running(&self.client, &self.ns, pod, "kss", WAIT).await?)
    }

    /// The log of the keyserver container's current run.
    async fn keyserver_log(&self, pod: &str) -> Result<String> {
        Ok(node::log(&self.client, &self.ns, pod, "kss").await?)
    }

    /// Fails if `pod`'s keyserver is no longer the process `before` was.
    async fn ensure_not_restarted(&self, before: &RunningContainer) -> Result<()> {
        let now = self.keyserver(&before.pod).await?;
        ensure!(
            before.same_process(&now),
            "the keyserver was restarted (container {} → {}, restarts {} → {})",
            before.id,
            now.id,
            before.restarts,
            now.restarts
        );
        Ok(())
    }

    fn file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    async fn finish(mut self, result: Result<()>) {
        if result.is_err() {
            eprintln!(
                "operator log:\n{}",
                self.operator
                    .log_text()
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        self.operator.kill();
        self.provisioner.abort();
        let _ = harness::delete_namespace(&self.client, &self.ns).await;
        if let Err(e) = result {
            panic!("{e:#}");
        }
    }
}

fn status(c: &KeyShardCluster) -> kss_operator::crd::KeyShardClusterStatus {
    c.status.clone().unwrap_or_default()
}

fn condition(c: &KeyShardCluster, type_: &str) -> Option<(String, String, String)> {
    status(c)
        .conditions
        .iter()
        .find(|x| x.r#type == type_)
        .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
}

fn policy_yaml(name: &str, text: &str) -> String {
    let body: String = text.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: kss.dev/v1alpha1\nkind: KssPolicy\nmetadata:\n  name: {name}\nspec:\n  policy: |\n{body}"
    )
}

/// A workstation: a profile onboarded through one instance.
struct Workstation {
    profile: PathBuf,
    ca: PathBuf,
    server_name: String,
    ciphertext: PathBuf,
    key: String,
}

impl Workstation {
    fn kss() -> Result<Command> {
        Ok(Command::new(harness::kss_bin()?))
    }

    async fn onboard(
        scene: &Scene,
        cluster: &str,
        keyserver_id: &str,
        ip: &str,
        enrollment_token: Option<&str>,
    ) -> Result<Self> {
        let ca = scene.file(
            &format!("{cluster}-ca.crt"),
            &scene
                .secret_text(&format!("{cluster}-tls"), "ca.crt")
                .await?,
        )?;
        let profile = scene.dir.path().join(format!("{cluster}-profile.json"));
        let server_name = format!("{cluster}.{}.svc", scene.ns);
        let mut onboard = Self::kss()?;
        if let Some(token) = enrollment_token {
            onboard.args(["client", "onboard", "--enrollment-token", token]);
        } else {
            onboard.args(["client", "onboard"]);
        }
        ok(onboard.args([
            "--endpoint",
            &format!("https://{ip}:8443"),
            "--ca",
            &ca.display().to_string(),
            "--server-name",
            &server_name,
            "--keyserver-id",
            keyserver_id,
            "--profile",
            &profile.display().to_string(),
        ]))?;
        let ciphertext = scene.dir.path().join(format!("{cluster}-file.ct"));
        let key = ok(Self::kss()?.args([
            "client",
            "encrypt",
            "--profile",
            &profile.display().to_string(),
            "--out",
            &ciphertext.display().to_string(),
        ]))?
        .trim()
        .to_string();
        Ok(Workstation {
            profile,
            ca,
            server_name,
            ciphertext,
            key,
        })
    }

    /// Decrypts through the instance at `ip`; the printed key or the denial.
    fn decrypt(&self, ip: &str, path: &str, registration: bool) -> Result<Output> {
        let mut cmd = Self::kss()?;
        cmd.args([
            "client",
            "decrypt",
            "--endpoint",
            &format!("https://{ip}:8443"),
            "--ca",
            &self.ca.display().to_string(),
            "--server-name",
            &self.server_name,
            "--profile",
            &self.profile.display().to_string(),
            "--ciphertext",
            &self.ciphertext.display().to_string(),
            "--path",
            path,
        ]);
        if registration {
            cmd.arg("--registration");
        }
        run(&mut cmd)
    }

    fn decrypts(&self, ip: &str, registration: bool) -> Result<()> {
        let out = self.decrypt(ip, "public/report.pdf", registration)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.trim() == self.key,
            "decrypt through {ip} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Workstation {
    /// Decrypts from a pod of the `kss` image, through the Service's DNS name (CoreDNS,
    /// then kube-proxy): the workstation's files come in a Secret volume.
    async fn decrypts_in_a_pod(&self, scene: &Scene, host: &str) -> Result<()> {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::{
            Container, PodSecurityContext, PodSpec, SecretVolumeSource, Volume, VolumeMount,
        };
        let name = format!(
            "ws-{}",
            scene.secrets().list(&Default::default()).await?.items.len()
        );
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}", p.display()));
        let files = [
            ("ca.crt", read(&self.ca)?),
            ("profile.json", read(&self.profile)?),
            ("file.ct", read(&self.ciphertext)?),
        ];
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            data: Some(
                files
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v)))
                    .collect(),
            ),
            ..Default::default()
        };
        scene.secrets().create(&Default::default(), &secret).await?;
        let args = [
            "client",
            "decrypt",
            "--endpoint",
            &format!("https://{host}:8443"),
            "--ca",
            "/ws/ca.crt",
            "--server-name",
            &self.server_name,
            "--profile",
            "/ws/profile.json",
            "--ciphertext",
            "/ws/file.ct",
            "--path",
            "public/report.pdf",
        ];
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".to_string()),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    fs_group: Some(65532),
                    ..Default::default()
                }),
                containers: vec![Container {
                    name: "workstation".to_string(),
                    image: Some(KSS_IMAGE.to_string()),
                    image_pull_policy: Some("Never".to_string()),
                    args: Some(args.iter().map(|a| a.to_string()).collect()),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "ws".to_string(),
                        mount_path: "/ws".to_string(),
                        read_only: Some(true),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                volumes: Some(vec![Volume {
                    name: "ws".to_string(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(name.clone()),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.ns);
        pods.create(&Default::default(), &pod).await?;
        let mut phase = String::new();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            phase = pods
                .get(&name)
                .await?
                .status
                .and_then(|s| s.phase)
                .unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let log = node::log(&scene.client, &scene.ns, &name, "workstation").await?;
        ensure!(
            phase == "Succeeded" && log.lines().any(|l| l.trim() == self.key),
            "workstation pod through {host}: phase {phase}, log {log}"
        );
        Ok(())
    }
}

async fn pod_ips(scene: &Scene, cluster: &str) -> Result<Vec<(String, String)>> {
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.ns);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("app.kubernetes.io/instance={cluster}")),
        )
        .await?;
    let mut out: Vec<(String, String)> = list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
        .collect();
    out.sort();
    Ok(out)
}

/// A scratch database on the MariaDB of `scripts/mariadb.sh`, and its address.
fn scratch_database(tag: &str) -> Result<String> {
    let url = std::env::var("KSS_TEST_MYSQL_URL")
        .context("KSS_TEST_MYSQL_URL not set: run scripts/mariadb.sh up (e2e/run.sh does)")?;
    let rest = url.strip_prefix("mysql://").context("mysql:// URL")?;
    let (userpass, hostdb) = rest.split_once('@').context("user@host")?;
    let (user, pass) = userpass.split_once(':').context("user:pass")?;
    let (hostport, db) = hostdb.split_once('/').context("host/db")?;
    let (host, port) = hostport.split_once(':').context("host:port")?;
    // The test server's URL asks for plaintext (kss verifies TLS unless told otherwise);
    // the scratch database's address keeps that query.
    let query = db.split_once('?').map_or("ssl-mode=DISABLED", |(_, q)| q);
    let name = format!(
        "kss_e2e_{tag}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    mariadb(host, port, user, pass, &format!("CREATE DATABASE {name}"))?;
    Ok(format!("mysql://{user}:{pass}@{hostport}/{name}?{query}"))
}

fn mariadb(host: &str, port: &str, user: &str, pass: &str, sql: &str) -> Result<String> {
    let client = ["mariadb", "mysql"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .context("no mariadb/mysql client")?;
    ok(Command::new(client)
        .args(["-h", host, "-P", port, "-u", user, "-N", "-B", "-e", sql])
        .env("MYSQL_PWD", pass))
}

/// Runs `sql` against the database of `uri` (scratch databases only).
fn sql_on(uri: &str, sql: &str) -> Result<String> {
    let rest = uri.strip_prefix("mysql://").context("mysql:// URL")?;
    let (userpass, hostdb) = rest.split_once('@').context("user@host")?;
    let (user, pass) = userpass.split_once(':').context("user:pass")?;
    let (hostport, _) = hostdb.split_once('/').context("host/db")?;
    let (host, port) = hostport.split_once(':').context("host:port")?;
    mariadb(host, port, user, pass, sql)
}

fn database_name(uri: &str) -> &str {
    let path = uri.rsplit('/').next().unwrap_or_default();
    path.split_once('?').map_or(path, |(name, _)| name)
}

fn example(name: &str) -> Result<String> {
    Ok(std::fs::read_to_string(
        root().join("manifests/examples").join(name),
    )?)
}

fn enabled(test: &str) -> bool {
    harness::enabled(test).expect("e2e environment")
}

/// A test that runs `scenario` in a fresh [`Scene`] (namespace, volume provisioner, operator)
/// against the e2e control plane, or reports itself skipped without one.
macro_rules! scene_test {
    ($name:ident, $prefix:literal, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !enabled(stringify!($name)) {
                return;
            }
            harness::init_tracing();
            let mut scene = Scene::new($prefix).await.expect("scene");
            let result = $scenario(&mut scene).await;
            scene.finish(result).await;
        }
    };
}

// ---------------------------------------------------------------------------------------

/// The API server's own schema rejects invalid resources, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_rejected_by_the_api_server() {
    let Some((client, ns)) = harness::start_in_namespace(
        "invalid_resources_are_rejected_by_the_api_server",
        "invalid",
    )
    .await
    .expect("e2e start") else {
        return;
    };
    let cases = [
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: a}\nspec:\n  mode: Standalone\n  replicas: 3\n  backup: {ignoreSecurityChecks: true}\n",
            "mode Standalone runs exactly one instance",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: b}\nspec:\n  mode: Cluster\n  replicas: 3\n  backup: {ignoreSecurityChecks: true}\n",
            "mode Cluster needs spec.database.secretRef",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: c}\nspec:\n  mode: Sharded\n  backup: {ignoreSecurityChecks: true}\n",
            "Unsupported value: \"Sharded\"",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: d}\nspec:\n  mode: Cluster\n  replicas: 40\n  database: {secretRef: {name: db}}\n  backup: {ignoreSecurityChecks: true}\n",
            "spec.replicas: Invalid value: 40",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: e}\nspec:\n  mode: Standalone\n  backup:\n    threshold: 2\n    holders: [{name: a, publicKey: zz}]\n",
            "threshold >= 3 of at least 5 holders",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: f}\nspec:\n  replicas: 1\n",
            "spec.mode: Required value",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KssPolicy\nmetadata: {name: g}\nspec: {}\n",
            "spec.policy: Required value",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: i}\nspec:\n  mode: Standalone\n  backup: {ignoreSecurityChecks: true}\n  scheduling:\n    tolerations: {key: dedicated}\n",
            "spec.scheduling.tolerations",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: j}\nspec:\n  mode: Standalone\n  backup: {ignoreSecurityChecks: true}\n  scheduling:\n    topologySpreadConstraints: [{topologyKey: kubernetes.io/hostname}]\n",
            "spec.scheduling.topologySpreadConstraints[0].maxSkew: Required value",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: k}\nspec:\n  mode: Cluster\n  database:\n    secretRef: {name: db}\n    caSecretRef: {name: db, key: ../ca.crt}\n  backup: {ignoreSecurityChecks: true}\n",
            "spec.database.caSecretRef.key: Invalid value: \"../ca.crt\"",
        ),
        (
            "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: l}\nspec:\n  mode: Standalone\n  enrollment: {maxPerMinute: -1}\n  backup: {ignoreSecurityChecks: true}\n",
            "spec.enrollment.maxPerMinute: Invalid value: -1",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, expected) in cases {
        let (success, output) = apply_yaml(&ns, yaml).expect("kubectl");
        if success || !output.contains(expected) {
            failures.push(format!(
                "expected rejection with {expected:?}, got: {output}"
            ));
        }
    }
    // Mode cannot change once created.
    apply_ok(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: h}\nspec:\n  mode: Standalone\n  backup: {ignoreSecurityChecks: true}\n",
    )
    .expect("valid cluster");
    let (success, output) = apply_yaml(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: h}\nspec:\n  mode: Cluster\n  database: {secretRef: {name: db}}\n  backup: {ignoreSecurityChecks: true}\n",
    )
    .expect("kubectl");
    if success || !output.contains("mode cannot change after creation") {
        failures.push(format!("mode change accepted: {output}"));
    }
    // Nor its storage: neither changed, nor added, nor removed.
    apply_ok(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: s}\nspec:\n  mode: Standalone\n  storage: {size: 1Gi}\n  backup: {ignoreSecurityChecks: true}\n",
    )
    .expect("valid cluster");
    for storage in ["  storage: {size: 2Gi}\n", ""] {
        let (success, output) = apply_yaml(
            &ns,
            &format!("apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {{name: s}}\nspec:\n  mode: Standalone\n{storage}  backup: {{ignoreSecurityChecks: true}}\n"),
        )
        .expect("kubectl");
        if success || !output.contains("storage cannot change after creation") {
            failures.push(format!("storage change {storage:?} accepted: {output}"));
        }
    }
    let (success, output) = apply_yaml(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: h}\nspec:\n  mode: Standalone\n  storage: {size: 1Gi}\n  backup: {ignoreSecurityChecks: true}\n",
    )
    .expect("kubectl");
    if success || !output.contains("storage cannot change after creation") {
        failures.push(format!("storage added after creation: {output}"));
    }
    let _ = harness::delete_namespace(&client, &ns).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// The standalone example: identity, backup key, objects, policy, a workstation decrypts;
// no secret in status, Events or the operator's log; deletion cascades but keeps the
// backup key, and re-creating the resource adopts the same keyserver.
scene_test!(
    standalone_example_serves_and_deletion_keeps_the_backup_key,
    "standalone",
    standalone
);

async fn standalone(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    apply_ok(ns, &example("policy.yaml")?)?;
    apply_ok(ns, &example("standalone.yaml")?)?;
    let c = scene.wait_ready("kss-demo").await?;
    let st = status(&c);
    let id = st.keyserver_id.clone().context("keyserver ID in status")?;
    ensure!(id.len() == 32, "keyserver ID {id}");
    for t in [
        "Ready",
        "Available",
        "IdentityReady",
        "BackupKeyReady",
        "PolicyApplied",
        "DatabaseReachable",
        "Synced",
    ] {
        let (s, reason, message) = condition(&c, t).with_context(|| format!("condition {t}"))?;
        ensure!(s == "True", "{t} is {s}: {reason} {message}");
    }
    ensure!(condition(&c, "Degraded").map(|x| x.0) == Some("False".into()));
    // What `kubectl wait`, Flux and Argo CD look at.
    ok(&mut kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "--timeout=30s",
        "keyshardcluster/kss-demo",
    ]))?;
    let backup = st.backup.clone().context("backup status")?;
    ensure!(
        (backup.holders, backup.threshold) == (5, 3),
        "backup {backup:?}"
    );
    ensure!(
        st.policy_version == Some(1),
        "policy version {:?}",
        st.policy_version
    );
    ensure!(st.instances.len() == 1 && st.instances[0].online);
    ensure!(st.instances[0].name == "kss-demo-0");
    // The pod's own answer: the keyserver it serves, its version, its database.
    ensure!(
        st.instances[0].keyserver_id.as_deref() == Some(id.as_str())
            && st.instances[0].refusal_reason.is_none()
            && st.instances[0].kss_version.as_deref() == Some(env!("CARGO_PKG_VERSION"))
            && st.instances[0].database_reachable == Some(true),
        "instance {:?}",
        st.instances[0]
    );
    ensure!(
        st.instances[0].applied_policy_version == 1,
        "instance applied {:?}",
        st.instances
    );
    for cond in &st.conditions {
        ensure!(cond.observed_generation == c.metadata.generation);
    }
    // The kubelet enforces the operator's security context: the keyserver runs as 65532
    // and can write only to its data volume; the image's files are on a read-only root
    // and the Secret volumes (master key, TLS) are mounted read-only.
    let keyserver = scene.keyserver("kss-demo-0").await?;
    let confined = node::confinement(
        &keyserver,
        &[
            "/",
            "/etc",
            "/usr/local/bin",
            "/home/nonroot",
            "/etc/kss/master-key",
            "/etc/kss/tls",
            "/var/lib/kss",
        ],
    )?;
    ensure!(
        confined.uids == vec![65532; 4],
        "keyserver uids {:?}",
        confined.uids
    );
    for (path, error) in &confined.writes {
        let writable = error.is_none();
        ensure!(
            writable == (path == "/var/lib/kss"),
            "{path}: writable {writable} ({error:?})"
        );
        if let Some(error) = error {
            ensure!(error.contains("Read-only file system"), "{path}: {error}");
        }
    }

    // Objects, owned by the resource; pods locked down.
    let sts: StatefulSet = Api::namespaced(scene.client.clone(), ns)
        .get("kss-demo")
        .await?;
    let owner = sts.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owner.len() == 1 && owner[0].kind == "KeyShardCluster" && owner[0].controller == Some(true)
    );
    let pod = sts
        .spec
        .clone()
        .context("sts spec")?
        .template
        .spec
        .context("pod spec")?;
    let sc = pod.containers[0]
        .security_context
        .clone()
        .context("security context")?;
    ensure!(sc.read_only_root_filesystem == Some(true) && sc.run_as_non_root == Some(true));
    ensure!(sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".to_string()]));
    ensure!(
        pod.containers[0]
            .readiness_probe
            .as_ref()
            .and_then(|p| p.grpc.as_ref())
            .is_some()
    );
    let _svc: Service = Api::namespaced(scene.client.clone(), ns)
        .get("kss-demo")
        .await?;
    let _pdb: PodDisruptionBudget = Api::namespaced(scene.client.clone(), ns)
        .get("kss-demo")
        .await?;
    // The pods' NetworkPolicy, as the API server stored it: their four ports only, the
    // admin API from the operator's pods only. (The node's network plugin does not enforce
    // NetworkPolicies: what it admits is checked here as declared, not as enforced.)
    let policies: Api<NetworkPolicy> = Api::namespaced(scene.client.clone(), ns);
    let admitted = |policy: &NetworkPolicy| -> Vec<(i32, bool)> {
        let rules = policy
            .spec
            .clone()
            .and_then(|s| s.ingress)
            .unwrap_or_default();
        rules
            .iter()
            .flat_map(|r| {
                let from_anywhere = r.from.as_ref().is_none_or(|f| f.is_empty());
                r.ports
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| {
                        let port = match p.port {
                            Some(IntOrString::Int(port)) => port,
                            _ => -1,
                        };
                        (port, from_anywhere)
                    })
            })
            .collect()
    };
    let policy = policies.get("kss-demo").await?;
    ensure!(
        admitted(&policy) == [(8443, true), (8081, true), (9464, true), (9443, false)],
        "NetworkPolicy admits {:?}",
        admitted(&policy)
    );
    let admin_from = policy
        .spec
        .clone()
        .and_then(|s| s.ingress)
        .and_then(|rules| {
            rules
                .into_iter()
                .find_map(|r| r.from.filter(|f| !f.is_empty()))
        })
        .unwrap_or_default();
    let peer = serde_json::to_value(&admin_from)?;
    ensure!(
        peer == json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kss-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kss-operator"}},
        }]),
        "admin port admitted from {peer}"
    );
    // Disabled, it is deleted; enabled again, it is back; edited by hand, restored.
    scene
        .patch_spec("kss-demo", json!({"networkPolicy": {"enabled": false}}))
        .await?;
    harness::poll("NetworkPolicy deleted", WAIT, || async {
        Ok(policies.get_opt("kss-demo").await?.is_none())
    })
    .await?;
    scene
        .patch_spec("kss-demo", json!({"networkPolicy": null}))
        .await?;
    harness::poll("NetworkPolicy re-created", WAIT, || async {
        Ok(policies.get_opt("kss-demo").await?.is_some())
    })
    .await?;
    policies
        .patch(
            "kss-demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": [{}]}})),
        )
        .await?;
    harness::poll("NetworkPolicy restored after an edit", WAIT, || async {
        let policy = policies.get("kss-demo").await?;
        Ok(admitted(&policy).len() == 4)
    })
    .await?;
    // The bootstrap copy of the root secret is gone once an instance confirmed the ID.
    ensure!(
        scene
            .secrets()
            .get_opt("kss-demo-bootstrap")
            .await?
            .is_none(),
        "bootstrap Secret still present"
    );
    let policy: KssPolicy = Api::namespaced(scene.client.clone(), ns)
        .get("batch-decrypt")
        .await?;
    let pst = policy.status.clone().context("policy status")?;
    ensure!(pst.clusters.len() == 1 && pst.clusters[0].cluster == "kss-demo");

    // A workstation onboards and decrypts through the instance the operator configured.
    let ips = pod_ips(scene, "kss-demo").await?;
    let ip = &ips.first().context("pod IP")?.1;
    // The example policy approves /public paths (rule set 1).
    let ws = Workstation::onboard(scene, "kss-demo", &id, ip, None).await?;
    ws.decrypts(ip, false)?;

    // No secret material in status, Events or the operator's log.
    let master = scene
        .secret_text("kss-demo-master-key", "master.key")
        .await?;
    let ca_key = scene.secret_text("kss-demo-ca", "ca.key").await?;
    let ca_key_line = ca_key.lines().nth(1).unwrap_or_default().to_string();
    let backup_json = scene
        .secret_text("kss-demo-backup-key", "backup-key.json")
        .await?;
    let backup_value: serde_json::Value = serde_json::from_str(&backup_json)?;
    let wrapped = backup_value.to_string();
    let status_json = serde_json::to_string(&scene.cluster("kss-demo").await?.status)?;
    let events = ok(&mut kubectl(&["get", "events", "-n", ns, "-o", "json"]))?;
    let log = scene.operator.log_text();
    for (what, haystack) in [
        ("status", &status_json),
        ("events", &events),
        ("operator log", &log),
    ] {
        ensure!(!haystack.contains(master.trim()), "master key in {what}");
        ensure!(!haystack.contains(&ca_key_line), "CA key in {what}");
        ensure!(
            !haystack.contains(&wrapped[..wrapped.len().min(200)]),
            "backup key in {what}"
        );
    }
    ensure!(
        events.contains("IdentityCreated"),
        "no IdentityCreated event"
    );

    // Prometheus metrics of the reconciles, and the leader gauge.
    let metrics = scene.operator.metrics()?;
    for line in [
        "kss_operator_reconciles_total{kind=\"KeyShardCluster\",result=\"ok\"}",
        "kss_operator_reconcile_duration_seconds_count{kind=\"KssPolicy\"}",
        "kss_operator_leader 1",
    ] {
        ensure!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }

    // Deletion cascades; the backup key and master key stay; re-creating adopts them.
    let clusters = scene.clusters();
    clusters
        .delete("kss-demo", &DeleteParams::foreground())
        .await?;
    harness::poll("owned objects garbage-collected", WAIT, || async {
        let sts: Api<StatefulSet> = Api::namespaced(scene.client.clone(), ns);
        let svc: Api<Service> = Api::namespaced(scene.client.clone(), ns);
        Ok::<bool, kss_e2e::Error>(
            sts.get_opt("kss-demo").await?.is_none()
                && svc.get_opt("kss-demo").await?.is_none()
                && scene.secrets().get_opt("kss-demo-tls").await?.is_none()
                && clusters.get_opt("kss-demo").await?.is_none(),
        )
    })
    .await?;
    ensure!(
        scene
            .secrets()
            .get_opt("kss-demo-backup-key")
            .await?
            .is_some(),
        "backup key deleted"
    );
    ensure!(
        scene
            .secrets()
            .get_opt("kss-demo-master-key")
            .await?
            .is_some(),
        "master key deleted"
    );
    apply_ok(ns, &example("standalone.yaml")?)?;
    let again = scene.wait_ready("kss-demo").await?;
    ensure!(
        status(&again).keyserver_id.as_deref() == Some(id.as_str()),
        "re-created cluster has another ID: {:?}",
        status(&again).keyserver_id
    );
    let ips = pod_ips(scene, "kss-demo").await?;
    let ip = &ips.first().context("pod IP")?.1;
    ws.decrypts(ip, false)?;
    Ok(())
}

// Cluster mode on MariaDB: 3 instances, policy rollout per instance, an invalid policy
// rejected with the old one in force, scaling up and down, crash and pod deletion.
scene_test!(
    cluster_rolls_out_policies_scales_and_fails_over,
    "cluster",
    cluster_scenario
);

fn all_at(c: &KeyShardCluster, n: usize, version: i64) -> bool {
    let st = status(c);
    let online: Vec<_> = st.instances.iter().filter(|i| i.online).collect();
    online.len() == n
        && online.iter().all(|i| i.applied_policy_version == version)
        && st
            .policy
            .as_ref()
            .is_some_and(|p| p.version == version && p.up_to_date == n as i32)
}

async fn cluster_scenario(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let uri = scratch_database("cluster")?;
    // The keyservers reach the scratch database over TLS by the example's Service name
    // (mysql.databases.svc:3306, which e2e/run-inside.sh points at the host's MariaDB),
    // verified against the example's CA (VERIFY_IDENTITY): the TLS-only user, the same
    // database; the plaintext address stays for the test's own SQL.
    let service = std::env::var("KSS_E2E_MYSQL_SERVICE")
        .context("KSS_E2E_MYSQL_SERVICE not set: run e2e/run.sh")?;
    let hostport = uri
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hostport, _)| hostport)
        .context("host:port in the test database address")?;
    let tls_uri = uri
        .replacen("mysql://kss:", "mysql://kss_tls:", 1)
        .replacen(&format!("@{hostport}/"), &format!("@{service}/"), 1)
        .replace("?ssl-mode=DISABLED", "?ssl-mode=VERIFY_IDENTITY");
    ensure!(
        tls_uri.starts_with("mysql://kss_tls:")
            && tls_uri.contains(&format!("@{service}/"))
            && tls_uri.ends_with("?ssl-mode=VERIFY_IDENTITY"),
        "unexpected test database address"
    );
    let yaml = example("cluster.yaml")?.replace(
        "mysql://kss:change-me@mysql.databases.svc:3306/kss?ssl-mode=VERIFY_IDENTITY",
        &tls_uri,
    );
    ensure!(
        yaml.contains(&tls_uri),
        "example database address not found"
    );
    // The example's CA placeholder: the test MariaDB's CA, as a YAML block.
    let ca_file = std::env::var("KSS_TEST_MYSQL_CA")
        .context("KSS_TEST_MYSQL_CA not set: run scripts/mariadb.sh up")?;
    let ca: String = std::fs::read_to_string(&ca_file)?
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let placeholder = "    -----BEGIN CERTIFICATE-----\n    (the CA certificate of your MySQL server, PEM)\n    -----END CERTIFICATE-----\n";
    ensure!(
        yaml.contains(placeholder),
        "example CA placeholder not found"
    );
    let yaml = yaml.replace(placeholder, &ca);
    apply_ok(ns, &policy_yaml("batch-decrypt", POLICY_V1))?;
    apply_ok(ns, &yaml)?;
    let c = scene
        .wait_cluster("kss-prod", "3 instances at policy version 1", |c| {
            status(c).phase == Some(Phase::Ready) && all_at(c, 3, 1)
        })
        .await?;
    let id = status(&c).keyserver_id.context("ID")?;
    let stored = sql_on(
        &uri,
        &format!("SELECT keyserver_id FROM {}.identity", database_name(&uri)),
    )
    .unwrap_or_default();
    ensure!(
        stored.contains(&id) || stored.is_empty(),
        "database holds {stored}, status {id}"
    );
    let ips = pod_ips(scene, "kss-prod").await?;
    ensure!(ips.len() == 3, "pods {ips:?}");
    // The example's scheduling, as the API server stored it in the pod template.
    let sts: StatefulSet = Api::namespaced(scene.client.clone(), ns)
        .get("kss-prod")
        .await?;
    let pod = sts
        .spec
        .and_then(|s| s.template.spec)
        .context("pod template")?;
    let keys: Vec<String> = pod
        .topology_spread_constraints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.topology_key)
        .collect();
    ensure!(
        keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"],
        "topology spread {keys:?}"
    );
    let tolerations = pod.tolerations.unwrap_or_default();
    ensure!(
        tolerations.len() == 1 && tolerations[0].value.as_deref() == Some("key-services"),
        "tolerations {tolerations:?}"
    );
    // The example's enrollment and database CA: flags, and the CA's key of the Secret as
    // a read-only volume (no subPath, so that a renewed CA reaches the pods).
    let container = pod.containers.first().context("container")?;
    let args = container.args.clone().unwrap_or_default();
    for flag in [
        "--db-ca-file=/etc/kss/db-ca/ca.crt",
        "--require-enrollment-token",
        "--max-onboard-per-minute=20",
    ] {
        ensure!(args.iter().any(|a| a == flag), "args {args:?} lack {flag}");
    }
    let ca_volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "db-ca")
        .and_then(|v| v.secret)
        .context("db-ca volume")?;
    let items: Vec<(String, String)> = ca_volume
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.key, i.path))
        .collect();
    ensure!(
        ca_volume.secret_name.as_deref() == Some("kss-prod-db")
            && items == [("ca.crt".to_string(), "ca.crt".to_string())],
        "db-ca volume {:?} items {items:?}",
        ca_volume.secret_name
    );
    let ca_mount = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == "db-ca")
        .context("db-ca mount")?;
    ensure!(
        ca_mount.mount_path == "/etc/kss/db-ca"
            && ca_mount.read_only == Some(true)
            && ca_mount.sub_path.is_none(),
        "db-ca mount {ca_mount:?}"
    );
    // The database's address reaches the keyservers as a file of the Secret's one key,
    // not as an environment variable: its password is in neither the process's
    // environment nor its arguments.
    ensure!(
        container.env.clone().unwrap_or_default().iter().all(|e| e
            .value_from
            .as_ref()
            .is_none_or(|v| v.secret_key_ref.is_none())),
        "a Secret's value in the container's environment: {:?}",
        container.env
    );
    let password = tls_uri
        .trim_start_matches("mysql://kss_tls:")
        .split_once('@')
        .map(|(password, _)| password)
        .context("password in the test database address")?;
    let keyserver = scene.keyserver("kss-prod-0").await?;
    let (cmdline, environ) = node::arguments_and_environment(&keyserver)?;
    ensure!(
        !cmdline.contains(password) && !environ.contains(password),
        "the database password is in the keyserver's arguments or environment"
    );
    ensure!(
        environ
            .split('\0')
            .any(|v| v == "KSS_DB_URI_FILE=/etc/kss/db-uri/uri"),
        "KSS_DB_URI_FILE not in the keyserver's environment"
    );
    // Onboarding needs a token (requireToken): one without is refused, one made with
    // `kss enrollment create` on an instance's admin socket (as `kubectl exec` would) works
    // once.
    let refused = Workstation::onboard(scene, "kss-prod", &id, &ips[0].1, None).await;
    ensure!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("requires an enrollment token")),
        "onboarding without a token: {:?}",
        refused.err()
    );
    // As an administrator would: in the keyserver's container, on its data volume.
    let token = node::exec(
        ns,
        "kss-prod-0",
        "kss",
        &[
            "kss",
            "enrollment",
            "create",
            "--data-dir",
            "/var/lib/kss",
            "--uses",
            "1",
            "--ttl",
            "10m",
            "--note",
            "e2e",
        ],
    )?
    .trim()
    .to_string();
    let ws = Workstation::onboard(scene, "kss-prod", &id, &ips[0].1, Some(&token)).await?;
    let second_profile = scene.dir.path().join("kss-prod-second-profile.json");
    let again = run(Workstation::kss()?.args([
        "client",
        "onboard",
        "--enrollment-token",
        &token,
        "--endpoint",
        &format!("https://{}:8443", ips[1].1),
        "--ca",
        &ws.ca.display().to_string(),
        "--server-name",
        &ws.server_name,
        "--keyserver-id",
        &id,
        "--profile",
        &second_profile.display().to_string(),
    ]))?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.contains("unknown, expired or used up"),
        "a single-use token onboarded twice: {stderr}"
    );
    ensure!(
        !second_profile.exists(),
        "a refused onboarding left a profile file"
    );
    for (_, ip) in &ips {
        ws.decrypts(ip, false)?;
    }

    // A policy change becomes version 2 on every instance.
    apply_ok(ns, &policy_yaml("batch-decrypt", POLICY_V2))?;
    scene
        .wait_cluster("kss-prod", "every instance at version 2", |c| {
            all_at(c, 3, 2) && condition(c, "PolicyApplied").is_some_and(|x| x.0 == "True")
        })
        .await?;

    // An invalid policy: Valid=False with the located error; version 2 stays in force.
    apply_ok(ns, &policy_yaml("batch-decrypt", POLICY_INVALID))?;
    let policies: Api<KssPolicy> = Api::namespaced(scene.client.clone(), ns);
    harness::poll("KssPolicy Valid=False", WAIT, || async {
        let p = policies.get("batch-decrypt").await?;
        Ok::<bool, kss_e2e::Error>(p.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Valid" && c.status == "False" && c.message.contains("pathz"))
        }))
    })
    .await?;
    let c = scene
        .wait_cluster("kss-prod", "PolicyApplied=False PolicyInvalid", |c| {
            condition(c, "PolicyApplied").is_some_and(|x| x.1 == "PolicyInvalid")
        })
        .await?;
    ensure!(
        all_at(&c, 3, 2),
        "instances moved off version 2: {:?}",
        status(&c).instances
    );
    ws.decrypts(&ips[1].1, false)?;
    apply_ok(ns, &policy_yaml("batch-decrypt", POLICY_V2))?;

    // Scale up to 5, then down to 2.
    scene.patch_spec("kss-prod", json!({"replicas": 5})).await?;
    scene
        .wait_cluster("kss-prod", "5 instances online", |c| {
            status(c).phase == Some(Phase::Ready) && all_at(c, 5, 2)
        })
        .await?;
    scene.patch_spec("kss-prod", json!({"replicas": 2})).await?;
    let c = scene
        .wait_cluster("kss-prod", "2 instances online", |c| {
            status(c).phase == Some(Phase::Ready)
                && all_at(c, 2, 2)
                && status(c).ready.as_deref() == Some("2/2")
        })
        .await?;
    ensure!(status(&c).instances.iter().filter(|i| !i.online).count() >= 3);
    let victim = scene.keyserver("kss-prod-0").await?;
    scene.keyserver("kss-prod-1").await?;

    // A crashed instance is restarted by the kubelet and rejoins; a deleted pod is
    // replaced and rejoins.
    node::kill(&victim)?;
    harness::poll("kss-prod-0 restarted by the kubelet", WAIT, || async {
        let now = scene.keyserver("kss-prod-0").await;
        Ok::<bool, kss_e2e::Error>(now.is_ok_and(|now| {
            now.pod_uid == victim.pod_uid && now.id != victim.id && now.restarts > victim.restarts
        }))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), ns);
    let old_uid = pods.get("kss-prod-1").await?.metadata.uid;
    pods.delete("kss-prod-1", &DeleteParams::default()).await?;
    harness::poll("kss-prod-1 replaced", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(pods.get_opt("kss-prod-1").await?.is_some_and(|p| {
            p.metadata.uid != old_uid && p.status.and_then(|s| s.pod_ip).is_some()
        }))
    })
    .await?;
    scene
        .wait_cluster("kss-prod", "both instances back online", |c| {
            status(c).phase == Some(Phase::Ready) && all_at(c, 2, 2)
        })
        .await?;
    let ips = pod_ips(scene, "kss-prod").await?;
    for (_, ip) in &ips {
        harness::poll("decrypt after failover", WAIT, || async {
            Ok::<bool, kss_e2e::Error>(ws.decrypts(ip, false).is_ok())
        })
        .await?;
    }
    let _ = sql_on(&uri, &format!("DROP DATABASE {}", database_name(&uri)));
    Ok(())
}

// A second cluster pointed at the first one's database: its instances refuse, its status
// says IdentityMismatch, and the database still holds the first keyserver.
scene_test!(
    a_database_of_another_keyserver_is_refused,
    "mismatch",
    mismatch
);

fn cluster_yaml(name: &str, replicas: u32, db_secret: &str, extra: &str) -> String {
    format!(
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: {name}\nspec:\n  mode: Cluster\n  replicas: {replicas}\n  database:\n    secretRef: {{name: {db_secret}}}\n  policyRef: {{name: p}}\n  backup:\n{extra}"
    )
}

fn db_secret_yaml(name: &str, uri: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  uri: {uri}\n")
}

async fn mismatch(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let uri = scratch_database("mismatch")?;
    apply_ok(ns, &db_secret_yaml("db", &uri))?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        ns,
        &cluster_yaml("first", 1, "db", "    ignoreSecurityChecks: true\n"),
    )?;
    let first = scene.wait_ready("first").await?;
    let first_id = status(&first).keyserver_id.context("ID")?;
    apply_ok(
        ns,
        &cluster_yaml("second", 1, "db", "    ignoreSecurityChecks: true\n"),
    )?;
    scene
        .wait_identity_refused("second", "IdentityMismatch", &first_id)
        .await?;
    // The refusing pod is in status.instances with its reason (it never registers).
    let second = scene.cluster("second").await?;
    let refusing = status(&second)
        .instances
        .into_iter()
        .find(|i| i.name == "second-0")
        .context("second-0 in status.instances")?;
    ensure!(
        refusing.refusal_reason.as_deref() == Some("IdentityMismatch")
            && refusing.keyserver_id.is_none()
            && !refusing.online
            && refusing.kss_version.as_deref() == Some(env!("CARGO_PKG_VERSION")),
        "second-0: {refusing:?}"
    );
    ensure!(
        condition(&second, "Ready").map(|c| c.0) == Some("False".into()),
        "a refusing cluster is not Ready"
    );
    let stored = sql_on(
        &uri,
        &format!("SELECT keyserver_id FROM {}.identity", database_name(&uri)),
    )?;
    ensure!(
        stored.trim() == first_id,
        "database identity changed: {stored}"
    );
    let first = scene.cluster("first").await?;
    ensure!(status(&first).phase == Some(Phase::Ready));

    // Holders whose keys pass the schema's pattern but are not public keys: no identity
    // is made, and the status says why.
    let bad_key = "f".repeat(96);
    let holders: String = (0..5)
        .map(|i| format!("      - {{name: admin{i}, publicKey: {bad_key}}}\n"))
        .collect();
    apply_ok(
        ns,
        &cluster_yaml(
            "bad-keys",
            1,
            "db",
            &format!("    threshold: 3\n    holders:\n{holders}"),
        ),
    )?;
    scene
        .wait_identity_refused("bad-keys", "IdentityFailed", "admin0")
        .await?;
    ensure!(
        scene
            .secrets()
            .get_opt("bad-keys-master-key")
            .await?
            .is_some()
    );
    ensure!(
        scene
            .secrets()
            .get_opt("bad-keys-backup-key")
            .await?
            .is_none()
    );
    let _ = sql_on(&uri, &format!("DROP DATABASE {}", database_name(&uri)));
    Ok(())
}

// The database is lost: instances restarted on an empty database refuse; the holders'
// approvals in a Secret let the operator restore the same keyserver ID from the
// backup-key Secret; the workstation onboarded before decrypts again.
scene_test!(
    a_lost_database_is_recovered_from_the_backup_key,
    "recovery",
    recovery
);

/// Administrator keys for `names` (made in the scene's directory unless there already)
/// and the `spec.backup` lines naming them as holders, threshold 3.
fn holders_yaml(scene: &Scene, names: &[&str]) -> Result<String> {
    let kss = harness::kss_bin()?;
    let mut holders = String::from("    threshold: 3\n    holders:\n");
    for name in names {
        let prefix = scene.dir.path().join(name);
        if !prefix.with_extension("pub").exists() {
            ok(Command::new(&kss).args([
                "admin-key",
                "generate",
                "--out",
                &prefix.display().to_string(),
                "--name",
                name,
            ]))?;
        }
        let public: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("pub"))?)?;
        holders.push_str(&format!(
            "      - name: {name}\n        publicKey: {}\n",
            public["public_key"].as_str().context("public_key")?
        ));
    }
    Ok(holders)
}

/// A Secret `secret` holding the approvals of `names` (holders' keys made by
/// [`holders_yaml`]) for the backup key `backup_json`; `Err` if one cannot approve it.
fn approvals_yaml(
    scene: &Scene,
    secret: &str,
    backup_json: &str,
    names: &[&str],
) -> Result<String> {
    let kss = harness::kss_bin()?;
    let backup = scene.file(&format!("{secret}-backup-key.json"), backup_json)?;
    let mut approvals =
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\nstringData:\n");
    for name in names {
        let out = scene.dir.path().join(format!("{secret}-{name}.approval"));
        ok(Command::new(&kss).args([
            "backup",
            "approve",
            "--backup",
            &backup.display().to_string(),
            "--admin-key",
            &scene
                .dir
                .path()
                .join(format!("{name}.key"))
                .display()
                .to_string(),
            "--out",
            &out.display().to_string(),
        ]))?;
        let text = std::fs::read_to_string(&out)?;
        approvals.push_str(&format!(
            "  {name}.json: '{}'\n",
            text.replace('\n', " ").replace('\'', "''")
        ));
    }
    Ok(approvals)
}

/// Deletes a guarded Secret as an administrator in the break-glass group (the admission
/// policy denies it to everyone else but the operator).
fn break_glass_delete(ns: &str, secret: &str) -> Result<()> {
    ok(&mut kubectl(&[
        "delete",
        "secret",
        secret,
        "-n",
        ns,
        "--as",
        "e2e-incident",
        "--as-group",
        "kss:break-glass",
        "--as-group",
        "system:masters",
    ]))?;
    Ok(())
}

/// Waits until `status.recovery` of `cluster` records recovery `id` as completed.
async fn wait_recovery_completed(
    scene: &Scene,
    cluster: &str,
    id: &str,
) -> Result<KeyShardCluster> {
    scene
        .wait_cluster(cluster, &format!("recovery {id} completed"), |c| {
            status(c).recovery.is_some_and(|r| {
                r.id == id && r.state == kss_operator::crd::cluster::RecoveryState::Completed
            })
        })
        .await
}

/// Asks for recovery `id` with the approvals in Secret `secret`.
async fn request_recovery(scene: &Scene, cluster: &str, id: &str, secret: &str) -> Result<()> {
    scene
        .patch_spec(
            cluster,
            json!({"recovery": {"id": id, "approvalsSecretName": secret}}),
        )
        .await
}

/// Empties the database of `uri` and restarts the pods of `cluster` (all, or `only`).
async fn lose_database(scene: &Scene, cluster: &str, uri: &str, only: Option<&str>) -> Result<()> {
    let db = database_name(uri).to_string();
    sql_on(uri, &format!("DROP DATABASE {db}; CREATE DATABASE {db}"))?;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.ns);
    for (pod, _) in pod_ips(scene, cluster).await? {
        if only.is_none_or(|o| o == pod) {
            pods.delete(&pod, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

async fn recovery(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let holders = holders_yaml(scene, &["alice", "bob", "carol", "dave", "erin"])?;
    let uri = scratch_database("recovery")?;
    apply_ok(ns, &db_secret_yaml("db", &uri))?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(ns, &cluster_yaml("vault", 2, "db", &holders))?;
    let c = scene.wait_ready("vault").await?;
    let id = status(&c).keyserver_id.context("ID")?;
    let ips = pod_ips(scene, "vault").await?;
    let ws = Workstation::onboard(scene, "vault", &id, &ips[0].1, None).await?;
    ws.decrypts(&ips[1].1, false)?;

    // Lose the database: drop it, create it empty, restart the instances.
    let db = database_name(&uri).to_string();
    lose_database(scene, "vault", &uri, None).await?;
    scene
        .wait_cluster("vault", "IdentityReady=False IdentityMissing", |c| {
            condition(c, "IdentityReady").is_some_and(|x| x.1 == "IdentityMissing")
        })
        .await?;

    // Three holders approve the backup key from its Secret.
    let backup = scene
        .secret_text("vault-backup-key", "backup-key.json")
        .await?;
    let approvals = approvals_yaml(scene, "approvals", &backup, &["alice", "carol", "erin"])?;
    apply_ok(ns, &approvals)?;
    request_recovery(scene, "vault", "lost-db-1", "approvals").await?;
    let c = scene.wait_ready("vault").await?;
    ensure!(status(&c).keyserver_id.as_deref() == Some(id.as_str()));
    // The request is recorded as completed; its approvals (with the backup key, the root
    // secret) are deleted.
    let c = wait_recovery_completed(scene, "vault", "lost-db-1").await?;
    ensure!(
        condition(&c, "RecoveryRequested").map(|x| (x.0, x.1))
            == Some(("False".into(), "RecoveryCompleted".into())),
        "RecoveryRequested: {:?}",
        condition(&c, "RecoveryRequested")
    );
    harness::poll("approvals Secret deleted", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(
            scene
                .secrets()
                .get_opt("approvals")
                .await
                .ok()
                .flatten()
                .is_none(),
        )
    })
    .await?;
    let stored = sql_on(&uri, &format!("SELECT keyserver_id FROM {db}.identity"))?;
    ensure!(stored.trim() == id, "recovered database holds {stored}");
    // The profile is re-registered with its registration token, then decrypts again.
    let ips = pod_ips(scene, "vault").await?;
    let ip = &ips[0].1;
    harness::poll("workstation decrypts after recovery", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(ws.decrypts(ip, true).is_ok())
    })
    .await?;
    ws.decrypts(&ips[1].1, false)?;
    ensure!(
        scene.secrets().get_opt("vault-bootstrap").await?.is_none(),
        "bootstrap Secret kept after recovery"
    );

    // The request left in spec does not re-arm: the database emptied again (even with the
    // approvals put back) is not restored, and the resource says why.
    apply_ok(ns, &approvals)?;
    lose_database(scene, "vault", &uri, None).await?;
    scene
        .wait_cluster(
            "vault",
            "IdentityReady=False RecoveryFailed (ran once)",
            |c| {
                condition(c, "IdentityReady")
                    .is_some_and(|x| x.1 == "RecoveryFailed" && x.2.contains("runs once"))
            },
        )
        .await?;
    ensure!(
        scene.secrets().get_opt("vault-bootstrap").await?.is_none(),
        "a bootstrap identity was made again"
    );
    let stored =
        sql_on(&uri, &format!("SELECT COUNT(*) FROM {db}.identity")).unwrap_or_else(|_| "0".into());
    ensure!(
        stored.trim() == "0",
        "the emptied database was restored: {stored}"
    );
    let _ = sql_on(&uri, &format!("DROP DATABASE {db}"));
    Ok(())
}

// The keyserver ID is pinned in spec (immutable by CEL) and given to every pod. The
// master-key Secret is deleted: the operator makes a new one, restarted instances refuse
// (MasterKeyMismatch), and the holders' approvals re-seal the identity in the same
// database: same ID, and the workstation onboarded before decrypts without re-registering.
scene_test!(
    a_lost_master_key_is_recovered_into_the_same_database,
    "masterkey",
    lost_master_key
);

async fn lost_master_key(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let holders = holders_yaml(scene, &["alice", "bob", "carol", "dave", "erin"])?;
    let uri = scratch_database("masterkey")?;
    apply_ok(ns, &db_secret_yaml("db", &uri))?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(ns, &cluster_yaml("vault", 2, "db", &holders))?;
    let c = scene.wait_ready("vault").await?;
    let id = status(&c).keyserver_id.context("ID")?;

    // Pinned: in spec, in every pod, and immutable.
    ensure!(
        c.spec.bootstrap.keyserver_id.as_deref() == Some(id.as_str()),
        "spec.bootstrap: {:?}",
        c.spec.bootstrap
    );
    let sts: Api<StatefulSet> = Api::namespaced(scene.client.clone(), ns);
    let sts = sts.get("vault").await?;
    let env = sts
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        env.iter()
            .any(|e| e.name == "KSS_KEYSERVER_ID" && e.value.as_deref() == Some(id.as_str())),
        "KSS_KEYSERVER_ID not given to the pods: {env:?}"
    );
    for patch in [
        json!({"spec": {"bootstrap": {"keyserverId": "0".repeat(32)}}}),
        json!({"spec": {"bootstrap": {"keyserverId": null}}}),
    ] {
        let err = scene
            .clusters()
            .patch("vault", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .err()
            .context("the pinned keyserverId changed")?;
        ensure!(
            err.to_string().contains("cannot change"),
            "not the CEL rule: {err}"
        );
    }

    let ips = pod_ips(scene, "vault").await?;
    let ws = Workstation::onboard(scene, "vault", &id, &ips[0].1, None).await?;
    ws.decrypts(&ips[1].1, false)?;

    // The master key is lost.
    let old_master = scene.secret_text("vault-master-key", "master.key").await?;
    break_glass_delete(ns, "vault-master-key")?;
    harness::poll("a new master key", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(
            scene
                .secret_text("vault-master-key", "master.key")
                .await
                .is_ok_and(|m| m != old_master),
        )
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), ns);
    for (pod, _) in &ips {
        pods.delete(pod, &DeleteParams::default()).await?;
    }
    scene
        .wait_cluster("vault", "IdentityReady=False MasterKeyMismatch", |c| {
            condition(c, "IdentityReady").is_some_and(|x| x.1 == "MasterKeyMismatch")
        })
        .await?;

    // The holders' approvals: the identity re-sealed with the new master key.
    let backup = scene
        .secret_text("vault-backup-key", "backup-key.json")
        .await?;
    apply_ok(
        ns,
        &approvals_yaml(scene, "approvals", &backup, &["bob", "dave", "erin"])?,
    )?;
    request_recovery(scene, "vault", "new-master-1", "approvals").await?;
    let c = scene.wait_ready("vault").await?;
    ensure!(status(&c).keyserver_id.as_deref() == Some(id.as_str()));
    wait_recovery_completed(scene, "vault", "new-master-1").await?;
    let db = database_name(&uri).to_string();
    let stored = sql_on(
        &uri,
        &format!("SELECT COUNT(*), MIN(keyserver_id) FROM {db}.identity"),
    )?;
    ensure!(
        stored.split_whitespace().collect::<Vec<_>>() == ["1", id.as_str()],
        "identity rows: {stored}"
    );
    // Same database, same profiles: no re-registration.
    let ips = pod_ips(scene, "vault").await?;
    let ip = ips[0].1.clone();
    harness::poll(
        "workstation decrypts with the re-sealed identity",
        WAIT,
        || async { Ok::<bool, kss_e2e::Error>(ws.decrypts(&ip, false).is_ok()) },
    )
    .await?;
    ws.decrypts(&ips[1].1, false)?;
    let _ = sql_on(&uri, &format!("DROP DATABASE {db}"));
    Ok(())
}

// The backup key follows its holders: a deleted backup-key Secret is re-issued by a
// serving instance; changed holders get a new backup key (status and Secret follow); a pod
// restarted onto an emptied database shows its refusal while the other serves; approvals
// made for the old backup key fail, the new holders' approvals recover the same ID.
scene_test!(
    the_backup_key_is_reissued_and_follows_its_holders,
    "holders",
    holders_change
);

async fn holders_change(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let old = ["alice", "bob", "carol", "dave", "erin"];
    let holders = holders_yaml(scene, &old)?;
    let uri = scratch_database("holders")?;
    apply_ok(ns, &db_secret_yaml("db", &uri))?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(ns, &cluster_yaml("vault", 2, "db", &holders))?;
    let c = scene.wait_ready("vault").await?;
    let id = status(&c).keyserver_id.context("ID")?;

    // Lost backup-key Secret: re-issued for the same holders, same keyserver.
    let first = scene
        .secret_text("vault-backup-key", "backup-key.json")
        .await?;
    break_glass_delete(ns, "vault-backup-key")?;
    harness::poll("backup key re-issued", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(
            scene
                .secret_text("vault-backup-key", "backup-key.json")
                .await
                .is_ok_and(|b| b != first),
        )
    })
    .await?;
    ensure!(
        scene
            .secret_text("vault-backup-key", "keyserver-id")
            .await?
            == id
    );
    let reissued = scene
        .secret_text("vault-backup-key", "backup-key.json")
        .await?;
    // Its holders can approve it.
    approvals_yaml(scene, "check", &reissued, &["alice"])?;

    // Approvals for this backup key, kept by someone, before the holders change.
    let stale = approvals_yaml(scene, "stale", &reissued, &["alice", "bob", "carol"])?;

    // New holders: frank and grace replace alice and bob.
    let new = ["carol", "dave", "erin", "frank", "grace"];
    let holders = holders_yaml(scene, &new)?;
    apply_ok(ns, &cluster_yaml("vault", 2, "db", &holders))?;
    harness::poll("a backup key for the new holders", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(
            scene
                .secret_text("vault-backup-key", "backup-key.json")
                .await
                .is_ok_and(|b| b != reissued && b.contains("frank") && !b.contains("alice")),
        )
    })
    .await?;
    let c = scene
        .wait_cluster("vault", "BackupKeyReady=True", |c| {
            condition(c, "BackupKeyReady").is_some_and(|x| x.0 == "True")
        })
        .await?;
    ensure!(
        status(&c)
            .backup
            .is_some_and(|b| (b.holders, b.threshold) == (5, 3))
    );
    let current = scene
        .secret_text("vault-backup-key", "backup-key.json")
        .await?;
    ensure!(
        approvals_yaml(scene, "gone", &current, &["alice"]).is_err(),
        "a removed holder approved the new backup key"
    );
    ensure!(
        scene
            .secret_text("vault-backup-key", "keyserver-id")
            .await?
            == id
    );

    // One pod restarted onto an emptied database: its refusal shows beside the serving one.
    let ips = pod_ips(scene, "vault").await?;
    let (restarted, serving) = (ips[1].0.clone(), ips[0].0.clone());
    lose_database(scene, "vault", &uri, Some(&restarted)).await?;
    scene
        .wait_cluster("vault", "one instance refusing, one serving", |c| {
            let st = status(c);
            let by = |name: &str| st.instances.iter().find(|i| i.name == name).cloned();
            by(&restarted).is_some_and(|i| i.refusal_reason.as_deref() == Some("IdentityMissing"))
                && by(&serving).is_some_and(|i| i.keyserver_id.as_deref() == Some(id.as_str()))
        })
        .await?;
    lose_database(scene, "vault", &uri, None).await?;
    scene
        .wait_cluster("vault", "IdentityReady=False IdentityMissing", |c| {
            condition(c, "IdentityReady").is_some_and(|x| x.1 == "IdentityMissing")
        })
        .await?;

    // The old approvals do not open the new backup key.
    apply_ok(ns, &stale)?;
    request_recovery(scene, "vault", "with-old-approvals", "stale").await?;
    scene
        .wait_cluster("vault", "IdentityReady=False RecoveryFailed", |c| {
            condition(c, "IdentityReady")
                .is_some_and(|x| x.1 == "RecoveryFailed" && x.2.contains("with-old-approvals"))
        })
        .await?;
    ensure!(scene.secrets().get_opt("vault-bootstrap").await?.is_none());

    // The new holders' approvals do.
    apply_ok(
        ns,
        &approvals_yaml(scene, "fresh", &current, &["erin", "frank", "grace"])?,
    )?;
    request_recovery(scene, "vault", "with-new-holders", "fresh").await?;
    let c = scene.wait_ready("vault").await?;
    ensure!(status(&c).keyserver_id.as_deref() == Some(id.as_str()));
    let db = database_name(&uri).to_string();
    let stored = sql_on(&uri, &format!("SELECT keyserver_id FROM {db}.identity"))?;
    ensure!(stored.trim() == id, "recovered database holds {stored}");
    let _ = sql_on(&uri, &format!("DROP DATABASE {db}"));
    Ok(())
}

// Two clusters name one backup-key Secret: the second is refused and writes nothing to
// it; deleting the first keeps the Secret (retained), and the second stays refused.
scene_test!(
    a_second_cluster_cannot_take_the_first_ones_backup_key,
    "shared-backup",
    shared_backup
);

async fn shared_backup(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let first_uri = scratch_database("sharedfirst")?;
    let second_uri = scratch_database("sharedsecond")?;
    apply_ok(ns, &db_secret_yaml("db1", &first_uri))?;
    apply_ok(ns, &db_secret_yaml("db2", &second_uri))?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        ns,
        &cluster_yaml("first", 1, "db1", "    ignoreSecurityChecks: true\n"),
    )?;
    let first = scene.wait_ready("first").await?;
    let first_id = status(&first).keyserver_id.context("ID")?;
    let before = scene.secrets().get("first-backup-key").await?;

    apply_ok(
        ns,
        &cluster_yaml(
            "second",
            1,
            "db2",
            "    ignoreSecurityChecks: true\n    secretName: first-backup-key\n",
        ),
    )?;
    let second = scene
        .wait_cluster("second", "BackupKeyReady=False BackupKeyInvalid", |c| {
            condition(c, "BackupKeyReady").is_some_and(|x| x.1 == "BackupKeyInvalid")
        })
        .await?;
    let (_, _, message) = condition(&second, "BackupKeyReady").context("condition")?;
    ensure!(
        message.contains("cluster first") && message.contains(&first_id),
        "message: {message}"
    );
    ensure!(
        second.spec.bootstrap.keyserver_id.is_none(),
        "second pinned"
    );
    for name in ["second-master-key", "second-bootstrap"] {
        ensure!(
            scene.secrets().get_opt(name).await?.is_none(),
            "{name} was created"
        );
    }
    let after = scene.secrets().get("first-backup-key").await?;
    ensure!(
        after.metadata.resource_version == before.metadata.resource_version,
        "the first cluster's backup-key Secret was written"
    );

    // Deleting the first keeps its retained Secret; the second is still refused.
    scene
        .clusters()
        .delete("first", &DeleteParams::default())
        .await?;
    harness::poll("first deleted", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(
            scene
                .clusters()
                .get_opt("first")
                .await
                .ok()
                .flatten()
                .is_none(),
        )
    })
    .await?;
    let kept = scene.secrets().get_opt("first-backup-key").await?;
    ensure!(
        kept.is_some_and(|k| k.data == before.data),
        "the backup-key Secret did not survive deleting its cluster"
    );
    let second = scene.cluster("second").await?;
    ensure!(
        condition(&second, "BackupKeyReady").is_some_and(|x| x.1 == "BackupKeyInvalid"),
        "second: {:?}",
        condition(&second, "BackupKeyReady")
    );
    for uri in [first_uri, second_uri] {
        let _ = sql_on(&uri, &format!("DROP DATABASE {}", database_name(&uri)));
    }
    Ok(())
}

// Two operator replicas: one holds the Lease and reconciles; when it dies, the other
// takes over and reconciles a new cluster.
scene_test!(two_operator_replicas_elect_one_leader, "leader", leader);

async fn leader(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let lease_name = format!("kss-op-{ns}");
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), "kss-system");
    let holder = || async {
        leases
            .get_opt(&lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    // op-a (the scene's operator) leads before op-b starts, so which one wins the
    // free Lease is not a race between two process starts.
    harness::poll("op-a to lead", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(holder().await.as_deref() == Some("op-a"))
    })
    .await?;
    let mut second = Operator::start(scene.dir.path(), ns, &lease_name, "op-b")?;
    // op-b running beside it does not take the Lease from a live leader.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first_holder = holder().await.context("holder")?;
    ensure!(
        first_holder == "op-a",
        "op-b took the Lease from a live op-a: held by {first_holder}"
    );
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: one}\nspec:\n  mode: Standalone\n  policyRef: {name: p}\n  backup: {ignoreSecurityChecks: true}\n",
    )?;
    scene.wait_ready("one").await?;
    ensure!(
        !second.log_text().contains("reconciling object"),
        "the follower reconciled"
    );
    // The leader dies; the follower takes the Lease and reconciles.
    scene.operator.kill();
    harness::poll("op-b leads", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(holder().await.as_deref() == Some("op-b"))
    })
    .await?;
    apply_ok(
        ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata: {name: two}\nspec:\n  mode: Standalone\n  policyRef: {name: p}\n  backup: {ignoreSecurityChecks: true}\n",
    )?;
    scene.wait_ready("two").await?;
    ensure!(second.log_text().contains("leading"), "op-b never led");
    second.kill();
    Ok(())
}

// The workstation certificate is the user's own (`spec.tls.secretName`, as cert-manager
// keeps one) and is renewed under a new CA: the running keyserver serves it to new
// connections without a restart; workstations that trust only the old CA are refused.
scene_test!(
    a_renewed_tls_secret_is_served_without_a_restart,
    "tlsrenew",
    tls_renewal
);

/// A `kubernetes.io/tls` Secret of a new CA and a certificate for `server_name`, and the
/// CA's certificate.
fn tls_secret_yaml(name: &str, server_name: &str, ca_name: &str) -> Result<(String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![server_name.to_string()])?.signed_by(&key, &ca)?;
    let block = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        block(&cert.pem()),
        block(&key.serialize_pem()),
        block(&ca.pem())
    );
    Ok((yaml, ca.pem()))
}

async fn tls_renewal(scene: &mut Scene) -> Result<()> {
    let ns = &scene.ns;
    let server_name = format!("renew.{ns}.svc");
    let (first, _) = tls_secret_yaml("renew-tls", &server_name, "first CA")?;
    apply_ok(ns, &first)?;
    apply_ok(ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: renew\nspec:\n  mode: Standalone\n  policyRef: {name: p}\n  tls: {secretName: renew-tls}\n  backup:\n    ignoreSecurityChecks: true\n",
    )?;
    let cluster = scene.wait_ready("renew").await?;
    let id = status(&cluster).keyserver_id.context("keyserver ID")?;
    let ips = pod_ips(scene, "renew").await?;
    let ip = &ips.first().context("pod IP")?.1;
    let process = scene.keyserver("renew-0").await?;
    // Onboards with the CA of the Secret (ca.crt): the first CA.
    let old = Workstation::onboard(scene, "renew", &id, ip, None).await?;
    old.decrypts(ip, false)?;

    let (renewed, new_ca) = tls_secret_yaml("renew-tls", &server_name, "second CA")?;
    apply_ok(ns, &renewed)?;
    let new = Workstation {
        ca: scene.file("renew-new-ca.crt", &new_ca)?,
        profile: old.profile.clone(),
        server_name: old.server_name.clone(),
        ciphertext: old.ciphertext.clone(),
        key: old.key.clone(),
    };
    harness::poll(
        "a workstation trusting the new CA decrypts",
        WAIT,
        || async { Ok::<bool, kss_e2e::Error>(new.decrypts(ip, false).is_ok()) },
    )
    .await?;
    let refused = old.decrypt(ip, "public/report.pdf", false)?;
    ensure!(
        !refused.status.success(),
        "a workstation trusting only the old CA still connects"
    );
    scene.ensure_not_restarted(&process).await?;
    let log = scene.keyserver_log("renew-0").await?;
    ensure!(
        log.contains("TLS files changed: new connections use the new certificate"),
        "no reload in the keyserver's log"
    );
    ensure!(
        !log.contains("PRIVATE KEY"),
        "key material in the keyserver's log"
    );
    ensure!(status(&scene.cluster("renew").await?).phase == Some(Phase::Ready));
    Ok(())
}

// The operator issues 90-second leaf certificates (`--leaf-validity-secs`): the
// workstation certificate is renewed at two thirds of its life into the same Secret, status
// follows, the running keyserver serves the new certificate without a restart and a
// workstation keeps decrypting; an extra DNS name from `spec.certificate` verifies.
scene_test!(
    a_short_lived_leaf_is_renewed_and_served_without_a_restart,
    "leafrenew",
    leaf_renewal
);

/// The certificate the server at `ip:8443` presents, verified against `ca_pem` for
/// `server_name`.
fn served_certificate(
    ip: &str,
    ca_pem: &str,
    server_name: &str,
) -> Result<kss_operator::pki::CertInfo> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(server_name.to_string())?,
    )?;
    let mut sock = std::net::TcpStream::connect((ip, 8443))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?;
    Ok(kss_operator::pki::inspect_der(leaf.as_ref())?)
}

/// The `workstation` entry of `status.tls`.
fn workstation_cert_status(
    c: &KeyShardCluster,
) -> Option<kss_operator::crd::cluster::CertificateStatus> {
    status(c)
        .tls?
        .certificates
        .into_iter()
        .find(|x| x.name == "workstation")
}

async fn leaf_renewal(scene: &mut Scene) -> Result<()> {
    scene.operator.kill();
    scene.operator = Operator::start_with(
        scene.dir.path(),
        &scene.ns,
        &format!("kss-op-{}", scene.ns),
        "op-a",
        &["--leaf-validity-secs", "90"],
    )?;
    let ns = scene.ns.clone();
    apply_ok(&ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: short\nspec:\n  mode: Standalone\n  policyRef: {name: p}\n  certificate:\n    extraDnsNames: [kss.external.example]\n    extraIpAddresses: [203.0.113.7]\n  backup:\n    ignoreSecurityChecks: true\n",
    )?;
    let cluster = scene.wait_ready("short").await?;
    let id = status(&cluster).keyserver_id.context("keyserver ID")?;
    let (s, reason, message) = condition(&cluster, "TLSReady").context("TLSReady")?;
    ensure!(
        s == "True" && reason == "CertificatesValid",
        "TLSReady {s} {reason}: {message}"
    );

    let first_status = workstation_cert_status(&cluster).context("status.tls workstation")?;
    let first_pem = scene.secret_text("short-tls", "tls.crt").await?;
    let first = kss_operator::pki::inspect(&first_pem)?;
    ensure!(
        first.not_after - first.not_before == 90,
        "leaf validity {} s",
        first.not_after - first.not_before
    );
    ensure!(
        first.names.contains("kss.external.example") && first.names.contains("203.0.113.7"),
        "extra names missing: {:?}",
        first.names
    );
    let ips = pod_ips(scene, "short").await?;
    let ip = ips.first().context("pod IP")?.1.clone();
    let process = scene.keyserver("short-0").await?;
    let ws = Workstation::onboard(scene, "short", &id, &ip, None).await?;
    ws.decrypts(&ip, false)?;
    // The external name verifies too.
    let external = Workstation {
        server_name: "kss.external.example".to_string(),
        profile: ws.profile.clone(),
        ca: ws.ca.clone(),
        ciphertext: ws.ciphertext.clone(),
        key: ws.key.clone(),
    };
    external.decrypts(&ip, false)?;
    let ca_pem = std::fs::read_to_string(&ws.ca)?;

    // Renewed at two thirds of 90 s (60 s after issue): a new serial, a later notAfter.
    let secrets = scene.secrets();
    harness::poll("the workstation certificate is renewed", WAIT * 2, || {
        let secrets = secrets.clone();
        let first = first.clone();
        async move {
            let Some(secret) = secrets
                .get_opt("short-tls")
                .await
                .map_err(kss_e2e::Error::from)?
            else {
                return Ok(false);
            };
            let pem = secret
                .data
                .and_then(|d| d.get("tls.crt").cloned())
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            Ok(kss_operator::pki::inspect(&pem)
                .is_ok_and(|i| i.serial != first.serial && i.not_after > first.not_after))
        }
    })
    .await?;
    // Status shows a certificate newer than the first.
    let renewed = scene
        .wait_cluster("short", "status.tls shows the renewed certificate", |c| {
            workstation_cert_status(c).is_some_and(|w| {
                // RFC 3339 in one format: later sorts after.
                w.serial != first.serial
                    && w.renew_at.is_some()
                    && w.not_after > first_status.not_after
            })
        })
        .await?;
    ensure!(
        status(&renewed).tls.and_then(|t| t.next_renewal).is_some(),
        "status.tls.nextRenewal missing"
    );
    // The running keyserver serves a renewed certificate (it reloads its files).
    let served = std::sync::Mutex::new(None);
    harness::poll("the keyserver serves a renewed certificate", WAIT, || {
        let got = served_certificate(&ip, &ca_pem, &ws.server_name);
        let renewed = got
            .as_ref()
            .is_ok_and(|i| i.serial != first.serial && i.not_after > first.not_after);
        if let Ok(i) = got
            && renewed
            && let Ok(mut s) = served.lock()
        {
            *s = Some(i);
        }
        async move { Ok::<bool, kss_e2e::Error>(renewed) }
    })
    .await?;
    let served = served
        .into_inner()
        .ok()
        .flatten()
        .context("served certificate")?;
    ensure!(
        served.names.contains("kss.external.example"),
        "{:?}",
        served.names
    );
    ws.decrypts(&ip, false)?;
    external.decrypts(&ip, false)?;
    scene.ensure_not_restarted(&process).await?;
    let c = scene.cluster("short").await?;
    ensure!(status(&c).phase == Some(Phase::Ready));
    let (s, reason, message) = condition(&c, "TLSReady").context("TLSReady")?;
    ensure!(s == "True", "TLSReady {s} {reason}: {message}");
    Ok(())
}

// The operator runs with a 120-second CA and 60-second leaves (`--ca-validity-secs`,
// `--leaf-validity-secs`): at two thirds of the CA's life (80 s) a new CA joins the trust
// bundle (the `ca.crt` of `<name>-tls` and `<name>-admin-tls`); a sixth of its life later
// (20 s), once the keyserver accepts client certificates of the new CA, the leaves move to
// it; the old CA leaves the bundle when it expires (120 s). A workstation that refreshed
// its trust from the bundle during the overlap keeps decrypting, with no keyserver
// restart; one that trusts only the old CA is refused once the leaves moved (expected:
// the README tells workstation operators to refresh within the overlap). The operator's
// admin calls keep working (a new policy version is stored after the move).
scene_test!(
    the_ca_is_rotated_with_an_overlap_and_refreshed_workstations_keep_decrypting,
    "carotate",
    ca_rotation
);

/// The certificates of a PEM bundle.
fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The CA rotation stage and the serials of the trust bundle in `status.tls`.
fn ca_rotation_of(
    c: &KeyShardCluster,
) -> (
    Option<kss_operator::crd::cluster::CaRotationStage>,
    Vec<String>,
) {
    let tls = status(c).tls.unwrap_or_default();
    (
        tls.ca_rotation.map(|r| r.stage),
        tls.trust_bundle.into_iter().map(|c| c.serial).collect(),
    )
}

/// [`Scene::wait_cluster`] with its own deadline.
async fn wait_cluster_within(
    scene: &Scene,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&KeyShardCluster) -> bool,
) -> Result<KeyShardCluster> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cluster = scene.clusters().get_opt(name).await?;
        if let Some(c) = cluster.as_ref().filter(|c| pred(c)) {
            return Ok(c.clone());
        }
        if tokio::time::Instant::now() > deadline {
            let log = scene.operator.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "timed out waiting for {name}: {what}\nstatus: {}\noperator log (newest first):\n{}",
                serde_json::to_string_pretty(&cluster.and_then(|c| c.status)).unwrap_or_default(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ca_rotation(scene: &mut Scene) -> Result<()> {
    use kss_operator::crd::cluster::CaRotationStage;
    scene.operator.kill();
    scene.operator = Operator::start_with(
        scene.dir.path(),
        &scene.ns,
        &format!("kss-op-{}", scene.ns),
        "op-a",
        &["--ca-validity-secs", "120", "--leaf-validity-secs", "60"],
    )?;
    let ns = scene.ns.clone();
    apply_ok(&ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        &ns,
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: rot\nspec:\n  mode: Standalone\n  policyRef: {name: p}\n  backup:\n    ignoreSecurityChecks: true\n",
    )?;
    let cluster = scene.wait_ready("rot").await?;
    let started = std::time::Instant::now();
    let id = status(&cluster).keyserver_id.context("keyserver ID")?;
    let first_ca = scene.secret_text("rot-ca", "ca.crt").await?;
    let first_ca_key = scene.secret_text("rot-ca", "ca.key").await?;
    let first = kss_operator::pki::inspect(&first_ca)?;
    ensure!(
        first.not_after - first.not_before == 120,
        "CA validity {} s",
        first.not_after - first.not_before
    );
    let (stage, bundle) = ca_rotation_of(&cluster);
    ensure!(
        stage == Some(CaRotationStage::Stable) && bundle == vec![first.serial.clone()],
        "before the rotation: {stage:?} {bundle:?}"
    );
    let ips = pod_ips(scene, "rot").await?;
    let ip = ips.first().context("pod IP")?.1.clone();
    let process = scene.keyserver("rot-0").await?;
    // Onboarded with the bundle of one CA; this copy of it is never refreshed.
    let stale = Workstation::onboard(scene, "rot", &id, &ip, None).await?;
    stale.decrypts(&ip, false)?;

    // Overlap: both CAs trusted, the leaves still the old CA's.
    let c = wait_cluster_within(
        scene,
        "rot",
        "CA rotation stage Overlap with two CAs in status.tls",
        WAIT * 2,
        |c| {
            let (stage, bundle) = ca_rotation_of(c);
            stage == Some(CaRotationStage::Overlap) && bundle.len() == 2
        },
    )
    .await?;
    let overlap_after = started.elapsed();
    let (s, reason, message) = condition(&c, "TLSReady").context("TLSReady")?;
    ensure!(
        s == "True",
        "TLSReady during the overlap: {s} {reason}: {message}"
    );
    let second_serial = ca_rotation_of(&c).1[1].clone();
    for secret in ["rot-tls", "rot-admin-tls"] {
        let pem = scene.secret_text(secret, "ca.crt").await?;
        ensure!(
            pem_count(&pem) == 2,
            "{secret} ca.crt holds {} CAs",
            pem_count(&pem)
        );
        ensure!(!pem.contains("PRIVATE KEY"), "a key in {secret} ca.crt");
    }
    // The CA keys stay in the CA Secret, which no pod mounts.
    let sts: Api<StatefulSet> = Api::namespaced(scene.client.clone(), &ns);
    let sts = serde_json::to_string(&sts.get("rot").await?.spec)?;
    ensure!(!sts.contains("rot-ca\""), "a pod mounts the CA Secret");
    let second_ca_key = scene.secret_text("rot-ca", "next-ca.key").await?;
    // A workstation refreshes its trust from the published bundle.
    let fresh = Workstation {
        ca: scene.file(
            "rot-bundle.crt",
            &scene.secret_text("rot-tls", "ca.crt").await?,
        )?,
        profile: stale.profile.clone(),
        server_name: stale.server_name.clone(),
        ciphertext: stale.ciphertext.clone(),
        key: stale.key.clone(),
    };
    fresh.decrypts(&ip, false)?;
    stale.decrypts(&ip, false)?;

    // The leaves move to the new CA.
    let c = wait_cluster_within(scene, "rot", "CA rotation stage LeavesMoved", WAIT, |c| {
        ca_rotation_of(c).0 == Some(CaRotationStage::LeavesMoved)
    })
    .await?;
    let moved_after = started.elapsed();
    ensure!(
        ca_rotation_of(&c).1.len() == 2,
        "both CAs stay trusted after the move: {:?}",
        ca_rotation_of(&c).1
    );
    let second_ca = scene.secret_text("rot-ca", "ca.crt").await?;
    let second = kss_operator::pki::inspect(&second_ca)?;
    ensure!(second.serial == second_serial, "the next CA issues now");
    // The running keyserver serves a certificate of the new CA (it reloads its files).
    harness::poll(
        "the keyserver serves the new CA's certificate",
        WAIT,
        || {
            let served = served_certificate(&ip, &second_ca, &stale.server_name).is_ok();
            async move { Ok::<bool, kss_e2e::Error>(served) }
        },
    )
    .await?;
    fresh.decrypts(&ip, false)?;
    let refused = stale.decrypt(&ip, "public/report.pdf", false)?;
    ensure!(
        !refused.status.success(),
        "a workstation trusting only the old CA still connects after the move"
    );
    // The operator's admin calls work with its client certificate of the new CA: a new
    // policy version is stored and rolled out.
    apply_ok(&ns, &policy_yaml("p", POLICY_V2))?;
    let c = wait_cluster_within(
        scene,
        "rot",
        "policy version 2 rolled out after the move",
        WAIT,
        |c| all_at(c, 1, 2) && status(c).phase == Some(Phase::Ready),
    )
    .await?;
    ensure!(
        status(&c).instances.iter().any(|i| i.online),
        "no instance online in status"
    );
    let (s, reason, message) = condition(&c, "TLSReady").context("TLSReady")?;
    ensure!(
        s == "True",
        "TLSReady after the move: {s} {reason}: {message}"
    );

    // The old CA leaves the bundle at its end.
    let c = wait_cluster_within(
        scene,
        "rot",
        "CA rotation stage Stable with the new CA alone",
        WAIT,
        |c| {
            let (stage, bundle) = ca_rotation_of(c);
            stage == Some(CaRotationStage::Stable) && bundle == vec![second.serial.clone()]
        },
    )
    .await?;
    let removed_after = started.elapsed();
    let (s, reason, message) = condition(&c, "TLSReady").context("TLSReady")?;
    ensure!(
        s == "True",
        "TLSReady after the rotation: {s} {reason}: {message}"
    );
    for secret in ["rot-tls", "rot-admin-tls"] {
        let pem = scene.secret_text(secret, "ca.crt").await?;
        let serials: Vec<String> = kss_operator::pki::inspect_bundle(&pem)?
            .into_iter()
            .map(|c| c.serial)
            .collect();
        ensure!(
            serials == vec![second.serial.clone()],
            "{secret} ca.crt: {serials:?}"
        );
    }
    fresh.decrypts(&ip, false)?;
    let renewed = Workstation {
        ca: scene.file(
            "rot-bundle-2.crt",
            &scene.secret_text("rot-tls", "ca.crt").await?,
        )?,
        profile: stale.profile.clone(),
        server_name: stale.server_name.clone(),
        ciphertext: stale.ciphertext.clone(),
        key: stale.key.clone(),
    };
    renewed.decrypts(&ip, false)?;
    scene.ensure_not_restarted(&process).await?;

    // Events of each step; no CA key in status, Events or logs.
    let events = ok(&mut kubectl(&["get", "events", "-n", &ns, "-o", "json"]))?;
    for reason in ["CaRotationStarted", "CaLeavesMoved", "CaRemoved"] {
        ensure!(events.contains(reason), "no {reason} event");
    }
    let status_json = serde_json::to_string(&c.status)?;
    let keyserver_log = scene.keyserver_log("rot-0").await?;
    let operator_log = scene.operator.log_text();
    for key in [&first_ca_key, &second_ca_key] {
        let line = key.lines().nth(1).unwrap_or_default();
        ensure!(!line.is_empty(), "a CA key without a body");
        for (what, haystack) in [
            ("status", &status_json),
            ("events", &events),
            ("operator log", &operator_log),
            ("keyserver log", &keyserver_log),
        ] {
            ensure!(!haystack.contains(line), "a CA key in the {what}");
        }
    }
    ensure!(
        !operator_log.contains("PRIVATE KEY") && !keyserver_log.contains("PRIVATE KEY"),
        "key material in a log"
    );
    eprintln!(
        "CA rotation after Ready: overlap at {} s, leaves moved at {} s, old CA removed at {} s",
        overlap_after.as_secs(),
        moved_after.as_secs(),
        removed_after.as_secs()
    );
    Ok(())
}

// A rolling update to an image that never turns ready (the pause image: it runs, but
// nothing answers the gRPC probes) stops at the first pod it replaces: the StatefulSet
// controller waits for it, the two pods of the previous revision keep running (the same
// containers) and serving, the Service's endpoints list only the Ready pods, and a
// workstation decrypts through the ClusterIP (kube-proxy) throughout. Past the progress
// deadline (20 s here) the cluster is Degraded with reason RolloutStalled naming the
// pod, and a Warning event says so. Back on the default image the rollout completes.
scene_test!(
    a_rolling_update_to_a_never_ready_image_halts_and_the_service_follows_readiness,
    "stall",
    rollout_stall
);

const NEVER_READY_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The keyserver image `e2e/images.sh` imported into the node's containerd.
const KSS_IMAGE: &str = concat!("ghcr.io/kss-project/kss:", env!("CARGO_PKG_VERSION"));

/// The Service's endpoints: (pod name, ready) from its EndpointSlices.
async fn service_endpoints(scene: &Scene, service: &str) -> Result<Vec<(String, bool)>> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(scene.client.clone(), &scene.ns);
    let mut out: Vec<(String, bool)> = slices
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("kubernetes.io/service-name={service}")),
        )
        .await?
        .items
        .into_iter()
        .flat_map(|s| s.endpoints.into_iter().flatten())
        .filter_map(|e| {
            let pod = e.target_ref?.name?;
            let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
            Some((pod, ready))
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn rollout_stall(scene: &mut Scene) -> Result<()> {
    scene.operator.kill();
    scene.operator = Operator::start_with(
        scene.dir.path(),
        &scene.ns,
        &format!("kss-op-{}", scene.ns),
        "op-a",
        &[
            "--rollout-deadline-secs",
            "20",
            "--allowed-images",
            &format!("ghcr.io/kss-project/kss,{NEVER_READY_IMAGE}"),
        ],
    )?;
    let ns = scene.ns.clone();
    let uri = scratch_database("stall")?;
    apply_ok(&ns, &db_secret_yaml("db", &uri))?;
    apply_ok(&ns, &policy_yaml("p", POLICY_V1))?;
    apply_ok(
        &ns,
        &cluster_yaml("stall", 3, "db", "    ignoreSecurityChecks: true\n"),
    )?;
    let cluster = scene
        .wait_cluster("stall", "3/3 ready", |c| {
            status(c).phase == Some(Phase::Ready) && status(c).ready.as_deref() == Some("3/3")
        })
        .await?;
    let id = status(&cluster).keyserver_id.context("keyserver ID")?;
    let services: Api<Service> = Api::namespaced(scene.client.clone(), &ns);
    let cluster_ip = services
        .get("stall")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("ClusterIP of Service stall")?;
    let ips = pod_ips(scene, "stall").await?;
    let ws = Workstation::onboard(scene, "stall", &id, &ips[0].1, None).await?;
    harness::poll("decrypt through the ClusterIP", WAIT, || async {
        Ok::<bool, kss_e2e::Error>(ws.decrypts(&cluster_ip, false).is_ok())
    })
    .await?;
    ws.decrypts_in_a_pod(scene, &format!("stall.{ns}.svc.cluster.local"))
        .await?;
    let before = [
        scene.keyserver("stall-0").await?,
        scene.keyserver("stall-1").await?,
    ];
    let all_ready: Vec<(String, bool)> = ["stall-0", "stall-1", "stall-2"]
        .iter()
        .map(|p| (p.to_string(), true))
        .collect();
    ensure!(
        service_endpoints(scene, "stall").await? == all_ready,
        "endpoints before the update: {:?}",
        service_endpoints(scene, "stall").await?
    );

    scene
        .patch_spec("stall", json!({"image": NEVER_READY_IMAGE}))
        .await?;
    let stalled = scene
        .wait_cluster("stall", "Progressing=False RolloutStalled", |c| {
            condition(c, "Progressing").is_some_and(|x| x.0 == "False" && x.1 == "RolloutStalled")
        })
        .await?;
    let (_, _, message) = condition(&stalled, "Progressing").context("Progressing")?;
    ensure!(
        message.contains("pod stall-2") && message.contains("2 pod(s) of the previous revision"),
        "Progressing message: {message}"
    );
    ensure!(
        status(&stalled).phase == Some(Phase::Degraded)
            && condition(&stalled, "Degraded").is_some_and(|d| d.1 == "RolloutStalled"),
        "status while stalled: {:?}",
        stalled.status
    );
    let statefulsets: Api<StatefulSet> = Api::namespaced(scene.client.clone(), &ns);
    let sts = statefulsets.get("stall").await?.status.unwrap_or_default();
    ensure!(
        sts.updated_replicas == Some(1) && sts.current_revision != sts.update_revision,
        "StatefulSet status while stalled: {sts:?}"
    );
    // The previous revision's pods were not touched, and only they are endpoints.
    for old in &before {
        scene.ensure_not_restarted(old).await?;
    }
    let endpoints = service_endpoints(scene, "stall").await?;
    ensure!(
        endpoints
            == vec![
                ("stall-0".to_string(), true),
                ("stall-1".to_string(), true),
                ("stall-2".to_string(), false)
            ],
        "endpoints while stalled: {endpoints:?}"
    );
    // kube-proxy sends every connection to a Ready pod.
    for _ in 0..10 {
        ws.decrypts(&cluster_ip, false)?;
    }
    let events = ok(&mut kubectl(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "reason=RolloutStalled,type=Warning",
        "-o",
        "name",
    ]))?;
    ensure!(!events.trim().is_empty(), "no RolloutStalled Warning event");

    // Rolled back to the default image: the rollout completes.
    scene.patch_spec("stall", json!({"image": null})).await?;
    scene
        .wait_cluster("stall", "Ready 3/3 after the rollback", |c| {
            status(c).phase == Some(Phase::Ready)
                && status(c).ready.as_deref() == Some("3/3")
                && condition(c, "Progressing").is_some_and(|x| x.1 != "RolloutStalled")
        })
        .await?;
    harness::poll("all three endpoints Ready again", WAIT, || async {
        let endpoints = service_endpoints(scene, "stall").await;
        Ok::<bool, kss_e2e::Error>(endpoints.is_ok_and(|e| e == all_ready))
    })
    .await?;
    let ips = pod_ips(scene, "stall").await?;
    ws.decrypts(&ips[2].1, false)?;
    let _ = sql_on(&uri, &format!("DROP DATABASE {}", database_name(&uri)));
    Ok(())
}

// The kubectl install bundle as a platform team applies it: the operator runs as the
// bundle's Deployment (two replicas, its ServiceAccount's token, the kss-operator image)
// on the real node, reaches the API server through the `kubernetes` Service, and turns
// the example standalone cluster Ready; its keyserver pod is the StatefulSet's, Ready
// through the kubelet's gRPC probes. The Deployment is removed again afterwards, so that
// the other scenes' operator processes are alone.
scene_test!(
    the_install_bundle_runs_the_operator_as_a_deployment,
    "bundle",
    bundle_operator
);

async fn bundle_operator(scene: &mut Scene) -> Result<()> {
    scene.operator.kill();
    let deployment_file = root().join("manifests/install/30-operator.yaml");
    let deployment_file = deployment_file.display().to_string();
    ok(&mut kubectl(&["apply", "-f", &deployment_file]))?;
    let result = bundle_operator_serves(scene).await;
    let removed = ok(&mut kubectl(&[
        "delete",
        "-f",
        &deployment_file,
        "--wait=true",
        "--timeout=60s",
    ]));
    result?;
    removed?;
    Ok(())
}

async fn bundle_operator_serves(scene: &Scene) -> Result<()> {
    ok(&mut kubectl(&[
        "-n",
        "kss-system",
        "rollout",
        "status",
        "deployment/kss-operator",
        "--timeout=120s",
    ]))?;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), "kss-system");
    let operators = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=kss-operator"))
        .await?
        .items;
    let running: Vec<&Pod> = operators
        .iter()
        .filter(|p| node::running(p, "operator").is_some())
        .collect();
    ensure!(
        running.len() == 2,
        "operator pods running: {:?}",
        operators
            .iter()
            .map(|p| (p.metadata.name.clone(), p.status.clone()))
            .collect::<Vec<_>>()
    );
    for pod in &running {
        let spec = pod.spec.as_ref().context("pod spec")?;
        ensure!(
            spec.service_account_name.as_deref() == Some("kss-operator"),
            "operator pod's ServiceAccount {:?}",
            spec.service_account_name
        );
    }
    let ns = &scene.ns;
    apply_ok(ns, &example("policy.yaml")?)?;
    apply_ok(ns, &example("standalone.yaml")?)?;
    let c = scene.wait_ready("kss-demo").await?;
    ensure!(status(&c).ready.as_deref() == Some("1/1"), "{:?}", c.status);
    let keyserver = scene.keyserver("kss-demo-0").await?;
    ensure!(
        node::confinement(&keyserver, &[])?.uids == vec![65532; 4],
        "keyserver uid"
    );
    Ok(())
}
