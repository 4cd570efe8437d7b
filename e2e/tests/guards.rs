//! Guarded keys against the real control plane (run by `e2e/run.sh`): the install
//! bundle's ValidatingAdmissionPolicy lets only the operator's ServiceAccount update or
//! delete a cluster's master-key, backup-key and CA Secrets (a namespace admin is denied,
//! the break-glass group is let through), and the operator refuses a `spec.image` outside
//! its allowlist with a condition and no workload. The operator runs as a process with
//! the bundle's ServiceAccount token, as in `tests/operator.rs`; no keyserver pod needs
//! to run (the Secrets are made before the workload).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kss_e2e::harness;
use kss_operator::crd::KeyShardCluster;
use kss_operator::crd::cluster::Phase;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const OPERATOR_SA: &str = "system:serviceaccount:kss-system:kss-operator";

fn kubectl(args: &[&str]) -> Result<(bool, String)> {
    Ok(kss_e2e::kubectl::run(args)?)
}

fn kubectl_ok(args: &[&str]) -> Result<String> {
    Ok(kss_e2e::kubectl::ok(args)?)
}

fn apply(ns: &str, yaml: &str) -> Result<(bool, String)> {
    Ok(kss_e2e::kubectl::apply(ns, yaml)?)
}

/// A kubeconfig with a token of ServiceAccount `sa` in `ns` (its RBAC, nothing more).
fn operator_kubeconfig(dir: &Path, ns: &str, sa: &str) -> Result<PathBuf> {
    Ok(kss_e2e::kubectl::service_account_kubeconfig(
        dir, ns, sa, "1h",
    )?)
}

/// `kss-operator run` for one namespace, without leader election; killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(dir: &Path, ns: &str) -> Result<Operator> {
        Self::start_with(
            dir,
            ns,
            operator_kubeconfig(dir, "kss-system", "kss-operator")?,
        )
    }

    fn start_with(dir: &Path, ns: &str, kubeconfig: PathBuf) -> Result<Operator> {
        let bin = harness::kss_bin()?.with_file_name("kss-operator");
        let log = dir.join("operator.log");
        let file = std::fs::File::create(&log)?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args([
                "run",
                "--watch-namespaces",
                ns,
                "--leader-elect=false",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting kss-operator")?;
        Ok(Operator { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_yaml(name: &str, image: Option<&str>) -> String {
    let image = image.map(|i| format!("  image: {i}\n")).unwrap_or_default();
    format!(
        "apiVersion: kss.dev/v1alpha1\nkind: KeyShardCluster\nmetadata:\n  name: {name}\nspec:\n  mode: Standalone\n{image}  backup:\n    ignoreSecurityChecks: true\n    holders: []\n"
    )
}

fn condition(c: &KeyShardCluster, type_: &str) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.r#type == type_)
        .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
}

/// `kubectl <verb> secret/<name>` as `user` (with `groups`); whether it was allowed, and
/// the output.
fn as_user(ns: &str, user: &str, groups: &[&str], args: &[&str]) -> Result<(bool, String)> {
    let mut all = vec!["-n", ns, "--as", user];
    for g in groups {
        all.extend(["--as-group", g]);
    }
    all.extend(args);
    kubectl(&all)
}

fn denied_by_policy(out: &str) -> bool {
    out.contains("kss-guarded-secrets") && out.contains("only kss-operator may")
}

async fn scenario(client: kube::Client, ns: &str, operator: &Operator) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let clusters: Api<KeyShardCluster> = Api::namespaced(client.clone(), ns);
    let (ok, out) = apply(ns, &cluster_yaml("vault", None))?;
    ensure!(ok, "{out}");
    harness::poll("the guarded Secrets", WAIT, || async {
        Ok(secrets.get_opt("vault-master-key").await?.is_some()
            && secrets.get_opt("vault-backup-key").await?.is_some()
            && secrets.get_opt("vault-ca").await?.is_some())
    })
    .await
    .with_context(|| operator.log_text())?;

    // Retained Secrets: the policy's label, no GitOps tracking label.
    for name in ["vault-master-key", "vault-backup-key", "vault-ca"] {
        let labels = secrets.get(name).await?.metadata.labels.unwrap_or_default();
        ensure!(
            labels.get("kss.dev/guarded").map(String::as_str) == Some("true"),
            "{name}: {labels:?}"
        );
        ensure!(
            !labels.contains_key("app.kubernetes.io/instance"),
            "{name} carries Argo CD's tracking label: {labels:?}"
        );
    }

    // A namespace admin (the `admin` ClusterRole in the namespace).
    kubectl_ok(&[
        "create",
        "rolebinding",
        "mallory-admin",
        "--clusterrole=admin",
        "--user=mallory",
        "-n",
        ns,
    ])?;
    // RBAC lets the admin delete Secrets; the policy (a moment after its creation) not these.
    let (ok, out) = as_user(ns, "mallory", &[], &["auth", "can-i", "delete", "secrets"])?;
    ensure!(ok && out.trim() == "yes", "mallory can-i: {out}");
    // The policy is in force a moment after its creation: probe with a Secret of our own.
    let probe = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: probe\n  labels:\n    kss.dev/guarded: \"true\"\n";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ok, out) = apply(ns, probe)?;
        ensure!(ok, "probe Secret: {out}");
        let (ok, out) = as_user(ns, "mallory", &[], &["delete", "secret", "probe"])?;
        if !ok && denied_by_policy(&out) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the admission policy never came into force: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, out) = as_user(
        ns,
        "mallory",
        &[],
        &["delete", "secret", "vault-master-key"],
    )?;
    ensure!(
        !ok && denied_by_policy(&out),
        "mallory deleted the master key: {out}"
    );
    for args in [
        vec!["delete", "secret", "vault-backup-key"],
        vec!["delete", "secret", "vault-ca"],
        vec!["annotate", "secret", "vault-master-key", "x=y"],
        vec!["label", "secret", "vault-master-key", "kss.dev/guarded-"],
        vec![
            "patch",
            "secret",
            "vault-master-key",
            "-p",
            r#"{"data":{"master.key":"AAAA"}}"#,
        ],
    ] {
        let (ok, out) = as_user(ns, "mallory", &[], &args)?;
        ensure!(!ok && denied_by_policy(&out), "mallory {args:?}: {out}");
        ensure!(
            out.contains("vault") && out.contains("mallory"),
            "the denial names the Secret and the user: {out}"
        );
    }
    ensure!(secrets.get_opt("vault-master-key").await?.is_some());

    // Other Secrets are the admin's as before.
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "plain",
        "--from-literal=a=b",
        "-n",
        ns,
    ])?;
    let (ok, out) = as_user(ns, "mallory", &[], &["delete", "secret", "plain"])?;
    ensure!(ok, "an unguarded Secret: {out}");

    // The operator's ServiceAccount is let through (it patches these Secrets itself).
    let (ok, out) = as_user(
        ns,
        OPERATOR_SA,
        &[],
        &[
            "annotate",
            "secret",
            "vault-master-key",
            "kss.dev/checked=1",
        ],
    )?;
    ensure!(ok, "the operator's ServiceAccount: {out}");

    // Break-glass: the group kss:break-glass (impersonating a group needs cluster-admin).
    let (ok, out) = as_user(
        ns,
        "mallory",
        &["kss:break-glass", "system:authenticated"],
        &[
            "annotate",
            "secret",
            "vault-ca",
            "kss.dev/break-glass=ticket-42",
        ],
    )?;
    ensure!(ok, "break-glass update: {out}");
    let (ok, out) = as_user(
        ns,
        "mallory",
        &["kss:break-glass", "system:authenticated"],
        &["delete", "secret", "vault-ca"],
    )?;
    ensure!(ok, "break-glass delete: {out}");

    // An image outside the allowlist: Valid=False/ImageNotAllowed, no workload.
    let (ok, out) = apply(ns, &cluster_yaml("evil", Some("docker.io/evil/kss:1")))?;
    ensure!(ok, "{out}");
    harness::poll("evil refused", WAIT, || async {
        let c = clusters.get("evil").await?;
        Ok(
            condition(&c, "Valid").is_some_and(|x| x.0 == "False" && x.1 == "ImageNotAllowed")
                && c.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed),
        )
    })
    .await
    .with_context(|| operator.log_text())?;
    let c = clusters.get("evil").await?;
    let (_, _, message) = condition(&c, "Valid").context("Valid")?;
    ensure!(
        message.contains("docker.io/evil/kss:1") && message.contains("ghcr.io/kss-project/kss"),
        "{message}"
    );
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        sts.get_opt("evil").await?.is_none(),
        "a StatefulSet for evil"
    );
    ensure!(
        secrets.get_opt("evil-master-key").await?.is_none(),
        "Secrets for a refused cluster"
    );
    // Fixed: admitted, the workload follows.
    clusters
        .patch(
            "evil",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "ghcr.io/kss-project/kss:0.0.1-test"}})),
        )
        .await?;
    harness::poll("evil admitted", WAIT, || async {
        let c = clusters.get("evil").await?;
        Ok(condition(&c, "Valid").is_some_and(|x| x.0 == "True")
            && sts.get_opt("evil").await?.is_some())
    })
    .await
    .with_context(|| operator.log_text())?;

    // A Secret name reaching outside the namespace is refused by the API server.
    let bad = format!(
        "{}  tls:\n    secretName: kube-system/stolen\n",
        cluster_yaml("bad", None)
    );
    let (ok, out) = apply(ns, &bad)?;
    ensure!(
        !ok && out.contains("spec.tls.secretName"),
        "a Secret of another namespace: {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_admin_cannot_touch_the_keys_and_the_operator_can() {
    if !harness::enabled("a_namespace_admin_cannot_touch_the_keys_and_the_operator_can")
        .expect("e2e environment")
    {
        return;
    }
    harness::init_tracing();
    kss_e2e::kubectl::apply_bundle_without_operator().expect("install bundle");
    let client = harness::client().await.expect("client");
    let ns = harness::create_namespace(&client, "guards")
        .await
        .expect("namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = Operator::start(dir.path(), &ns).expect("operator");
    let result = scenario(client.clone(), &ns, &operator).await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.log_text());
    }
    drop(operator);
    let _ = harness::delete_namespace(&client, &ns).await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

/// `--watch-namespaces` with RBAC in that namespace only: a ServiceAccount with a Role
/// (the bundle's ClusterRole rules) and no cluster-wide rule still runs a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_namespaced_rbac_only_runs_its_namespace() {
    if !harness::enabled("an_operator_with_namespaced_rbac_only_runs_its_namespace")
        .expect("e2e environment")
    {
        return;
    }
    harness::init_tracing();
    let root = harness::workspace_root();
    kubectl_ok(&[
        "apply",
        "-f",
        &root
            .join("manifests/install/00-crds.yaml")
            .display()
            .to_string(),
    ])
    .expect("CRDs");
    let client = harness::client().await.expect("client");
    let ns = harness::create_namespace(&client, "guards-rbac")
        .await
        .expect("namespace");
    let result = namespaced(&client, &ns, &root).await;
    let _ = harness::delete_namespace(&client, &ns).await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

async fn namespaced(client: &kube::Client, ns: &str, root: &Path) -> Result<()> {
    let rbac = std::fs::read_to_string(root.join("manifests/install/20-rbac.yaml"))?;
    let cluster_role = rbac
        .split("\n---\n")
        .find(|d| d.lines().any(|l| l == "kind: ClusterRole"))
        .context("no ClusterRole in 20-rbac.yaml")?;
    let rules = &cluster_role[cluster_role.find("rules:").context("rules")?..];
    let yaml = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: op\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: op\n{rules}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: op\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: op\nsubjects:\n  - kind: ServiceAccount\n    name: op\n    namespace: {ns}\n"
    );
    let (ok, out) = apply(ns, &yaml)?;
    ensure!(ok, "{out}");
    let sa = format!("system:serviceaccount:{ns}:op");
    let (_, out) = kubectl(&["auth", "can-i", "list", "secrets", "-A", "--as", &sa])?;
    ensure!(out.trim() == "no", "cluster-wide Secrets for {sa}: {out}");
    let dir = tempfile::tempdir()?;
    let operator =
        Operator::start_with(dir.path(), ns, operator_kubeconfig(dir.path(), ns, "op")?)?;
    let (ok, out) = apply(ns, &cluster_yaml("vault", None))?;
    ensure!(ok, "{out}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    harness::poll(
        "Secrets and StatefulSet by a namespaced operator",
        WAIT,
        || async {
            Ok(secrets.get_opt("vault-master-key").await?.is_some()
                && secrets.get_opt("vault-ca").await?.is_some()
                && sts.get_opt("vault").await?.is_some())
        },
    )
    .await
    .with_context(|| operator.log_text())?;
    let log = operator.log_text();
    ensure!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the operator met a forbidden call: {log}"
    );
    Ok(())
}
