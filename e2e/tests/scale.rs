//! The operator at scale, a benchmark (ignored by the suite, so it never times anything in
//! a test run): `N` KeyShardClusters (default 100, `KSS_SCALE_CLUSTERS`) in ten namespaces,
//! whose pods kwok keeps Running on a fake node beside the real one (the fake node is
//! tainted and labelled, and only these clusters select and tolerate it), and one
//! `kss-operator run` process with the install bundle's ServiceAccount, watching every
//! namespace. Their keyservers never answer, so every one of them stays Initializing:
//! the operator's worst steady state. Printed: the time until each cluster has a status,
//! the operator's RSS (now and peak), reconciles per second and their p50/p99 (from its
//! histogram), requests to the API server per reconcile and status writes per minute
//! (from `kss_operator_api_requests_total`), over a window of `KSS_SCALE_WINDOW_SECS`
//! (60); then the time from `kubectl apply` to `Ready` of one more cluster, the example
//! standalone one, whose pod runs on the real node under that load.
//!
//! ```sh
//! bench/operator-scale.sh        # = e2e/run.sh --test scale -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kss_e2e::{harness, kubectl, provisioner};
use kss_operator::crd::KeyShardCluster;
use kss_operator::crd::cluster::Phase;
use kube::Api;

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// kwok for a fake node `kss-scale-fake` (label `kss.dev/node=fake`, taint
/// `kss.dev/fake:NoSchedule`), with the control plane's kwok kubeconfig and stages.
fn start_kwok(state: &Path) -> Result<Process> {
    let bin = PathBuf::from(std::env::var("KSS_E2E_BIN").context("KSS_E2E_BIN")?);
    let log = std::fs::File::create(state.join("logs/kwok-scale.log"))?;
    let child = Command::new(bin.join("kwok"))
        .arg(format!(
            "--kubeconfig={}",
            state.join("kwok.kubeconfig").display()
        ))
        .arg(format!(
            "--config={}",
            state.join("kwok-stages.yaml").display()
        ))
        .args([
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            "--node-ip=127.0.0.1",
            "--cidr=10.245.0.1/16",
        ])
        .arg(format!("--server-address=127.0.0.1:{}", free_port()?))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kwok")?;
    kubectl::apply(
        "default",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: kss-scale-fake\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: kss-scale-fake\n    kss.dev/node: fake\nspec:\n  taints:\n  - {key: kss.dev/fake, value: \"true\", effect: NoSchedule}\nstatus:\n  allocatable: {cpu: \"64\", memory: 512Gi, pods: \"1000\"}\n  capacity: {cpu: \"64\", memory: 512Gi, pods: \"1000\"}\n",
    )
    .map(drop)?;
    Ok(Process(child))
}

/// The operator, with the bundle's ServiceAccount, watching every namespace.
fn start_operator(dir: &Path, metrics_port: u16) -> Result<(Process, u32)> {
    let kubeconfig = kubectl::service_account_kubeconfig(dir, "kss-system", "kss-operator", "2h")?;
    let bin = harness::kss_bin()?.with_file_name("kss-operator");
    let log = std::fs::File::create(dir.join("operator.log"))?;
    let child = Command::new(bin)
        .args([
            "run",
            "--lease-namespace",
            "kss-system",
            "--lease-name",
            "kss-scale",
            "--identity",
            "scale",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kss-operator")?;
    let pid = child.id();
    Ok((Process(child), pid))
}

/// `GET /metrics`: every sample, by its name and labels as printed.
fn metrics(port: u16) -> Result<BTreeMap<String, f64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .lines()
        .filter(|l| l.starts_with("kss_operator_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// The sum of the samples whose name starts with `prefix` and contains every `part`.
fn sum(m: &BTreeMap<String, f64>, prefix: &str, parts: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

/// The `q` quantile (upper bucket bound) of the KeyShardCluster reconciles between two
/// samples of the histogram.
fn quantile(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, q: f64) -> String {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with("kss_operator_reconcile_duration_seconds_bucket")
                && k.contains("kind=\"KeyShardCluster\"")
        })
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    match buckets.iter().find(|(_, count)| *count >= q * total) {
        Some((bound, _)) if bound.is_finite() => format!("≤ {:.0} ms", bound * 1000.0),
        Some(_) => "> 10 s".to_string(),
        None => "no reconciles".to_string(),
    }
}

fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok((
        field("VmRSS:").context("VmRSS")?,
        field("VmHWM:").context("VmHWM")?,
    ))
}

fn fake_cluster(name: &str) -> String {
    format!(
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: {name}\nspec:\n  mode: Cluster\n  replicas: 1\n  database:\n    secretRef: {{name: db}}\n  policyRef: {{name: p}}\n  scheduling:\n    nodeSelector: {{kss.dev/node: fake}}\n    tolerations:\n    - {{key: kss.dev/fake, operator: Exists, effect: NoSchedule}}\n  backup:\n    ignoreSecurityChecks: true\n"
    )
}

const POLICY: &str = "apiVersion: kss.dev/v1alpha1\nkind: KssPolicy\nmetadata:\n  name: p\nspec:\n  policy: |\n    decrypt:\n      - - rule: meta-rule\n          paths: [/public]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/operator-scale.sh (e2e/run.sh --test scale -- --ignored --nocapture)"]
async fn operator_scale() {
    if !harness::enabled("operator_scale").expect("e2e environment") {
        return;
    }
    harness::init_tracing();
    if let Err(e) = scale().await {
        panic!("{e:#}");
    }
}

async fn scale() -> Result<()> {
    let clusters = env_number("KSS_SCALE_CLUSTERS", 100)?;
    let window = Duration::from_secs(env_number("KSS_SCALE_WINDOW_SECS", 60)?);
    let state = PathBuf::from(std::env::var("KSS_E2E_STATE").context("KSS_E2E_STATE")?);
    let client = harness::client().await?;
    let dir = tempfile::tempdir()?;
    kubectl::apply_bundle_without_operator()?;
    let _kwok = start_kwok(&state)?;
    let port = free_port()?;
    let (_operator, pid) = start_operator(dir.path(), port)?;

    let namespaces: Vec<String> = (0..10).map(|i| format!("scale-{i}")).collect();
    let started = Instant::now();
    for ns in &namespaces {
        kubectl::ok(&["create", "namespace", ns])?;
    }
    let mut names = Vec::new();
    for i in 0..clusters {
        let ns = &namespaces[usize::try_from(i % 10)?];
        if i < 10 {
            kubectl::apply(ns, POLICY)?;
            kubectl::apply(
                ns,
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  uri: mysql://kss:unused@192.0.2.1:3306/kss?ssl-mode=DISABLED\n",
            )?;
        }
        let name = format!("c{i}");
        let (applied, out) = kubectl::apply(ns, &fake_cluster(&name))?;
        ensure!(applied, "applying {name}: {out}");
        names.push((ns.clone(), name));
    }
    let all: Api<KeyShardCluster> = Api::all(client.clone());
    harness::poll(
        "every cluster has a status",
        Duration::from_secs(600),
        || async {
            let list = all.list(&Default::default()).await?;
            Ok(list
                .items
                .iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase).is_some())
                .count()
                >= names.len())
        },
    )
    .await?;
    let first_status = started.elapsed();

    // Steady state: every cluster waits for an instance that never answers.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = metrics(port)?;
    let (rss_before, _) = rss_kib(pid)?;
    tokio::time::sleep(window).await;
    let after = metrics(port)?;
    let (rss, peak) = rss_kib(pid)?;
    let delta =
        |prefix: &str, parts: &[&str]| sum(&after, prefix, parts) - sum(&before, prefix, parts);
    let reconciles = delta(
        "kss_operator_reconciles_total",
        &["kind=\"KeyShardCluster\""],
    );
    let requests = delta("kss_operator_api_requests_total", &[]);
    let status_writes = delta(
        "kss_operator_api_requests_total",
        &["verb=\"PATCH\"", "subresource=\"status\""],
    );
    let secs = window.as_secs_f64();
    let per_verb: Vec<String> = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .map(|v| {
            format!(
                "{v} {:.1}",
                delta(
                    "kss_operator_api_requests_total",
                    &[&format!("verb=\"{v}\"")]
                ) / reconciles.max(1.0)
            )
        })
        .collect();

    // One more cluster, on the real node, under that load.
    kubectl::ok(&["create", "namespace", "scale-extra"])?;
    let volumes = tokio::spawn(provisioner::run(
        client.clone(),
        "scale-extra".to_string(),
        harness::state_dir("scale-extra")?,
    ));
    let examples = harness::workspace_root().join("manifests/examples");
    let applied_at = Instant::now();
    for file in ["policy.yaml", "standalone.yaml"] {
        let yaml = std::fs::read_to_string(examples.join(file))?;
        let (ok, out) = kubectl::apply("scale-extra", &yaml)?;
        ensure!(ok, "{file}: {out}");
    }
    let extra: Api<KeyShardCluster> = Api::namespaced(client.clone(), "scale-extra");
    harness::poll(
        "kss-demo Ready under load",
        Duration::from_secs(300),
        || async {
            Ok(extra
                .get_opt("kss-demo")
                .await?
                .and_then(|c| c.status)
                .and_then(|s| s.phase)
                == Some(Phase::Ready))
        },
    )
    .await?;
    let to_ready = applied_at.elapsed();
    volumes.abort();

    println!(
        "operator scale: {clusters} KeyShardClusters (pods on a kwok node, never answering), one operator (debug build)"
    );
    println!(
        "  every cluster has a status after {:.1} s",
        first_status.as_secs_f64()
    );
    println!(
        "  RSS {} MiB in the window (start {} MiB), peak {} MiB",
        rss / 1024,
        rss_before / 1024,
        peak / 1024
    );
    println!(
        "  reconciles: {:.1}/s; p50 {}, p99 {}",
        reconciles / secs,
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99)
    );
    println!(
        "  API requests: {:.1}/s, {:.1} per reconcile ({})",
        requests / secs,
        requests / reconciles.max(1.0),
        per_verb.join(", ")
    );
    println!(
        "  status writes: {:.1}/min ({:.2} per reconcile)",
        status_writes / secs * 60.0,
        status_writes / reconciles.max(1.0)
    );
    println!(
        "  one more cluster (standalone, real node): kubectl apply → Ready in {:.1} s",
        to_ready.as_secs_f64()
    );
    for ns in namespaces
        .iter()
        .chain(std::iter::once(&"scale-extra".to_string()))
    {
        let _ = harness::delete_namespace(&client, ns).await;
    }
    Ok(())
}
