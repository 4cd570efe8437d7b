//! The Helm chart `charts/kss-operator` against the real control plane (run by
//! `e2e/run.sh`, which puts `helm` and `kubectl` on PATH; the CRDs are installed from
//! `crds/` before the tests): what `helm template` renders is accepted by the API server
//! (`kubectl apply --dry-run=server`) for the default values, the cluster-mode CI values
//! and the other switches, with the install bundle's images, rules and security
//! settings; `helm install --wait` of the CI values into a namespace enforcing the
//! "restricted" Pod Security Standard creates the operator and the resources of the
//! values, `helm upgrade --wait` of a changed pod template rolls the operator's pods,
//! `helm uninstall --wait` removes the operator and keeps the KssPolicy and
//! KeyShardCluster (helm.sh/resource-policy: keep).
//!
//! The release's cluster-scoped objects (ClusterRole, ClusterRoleBinding) are named after
//! the release (`<release>-kss-operator`), so they never collide with the install
//! bundle's `kss-operator` ClusterRole that other tests apply. The real node's kubelet
//! runs the operator's pods from the `kss-operator` image with the chart's security
//! context, so `--wait` means their probes pass.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kss_e2e::harness;
use kss_operator::crd::{KeyShardCluster, KssPolicy};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const RESTRICTED: &str = "pod-security.kubernetes.io/enforce";
/// How long the kubelet may take to roll the operator's pods.
const WAIT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    harness::workspace_root()
}

fn chart() -> PathBuf {
    root().join("charts/kss-operator")
}

fn cluster_values() -> String {
    chart().join("ci/cluster-values.yaml").display().to_string()
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// Runs `cmd` with `stdin` (if any); its output.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{what}` (helm and kubectl come from PATH)"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to `{what}`"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("running `{what}`"))
}

/// Runs `cmd`; its stdout, or an error with both outputs.
fn ok(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let what = describe(cmd);
    let out = run(cmd, stdin)?;
    ensure!(
        out.status.success(),
        "`{what}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm` with its cache, configuration and data in a temporary directory.
struct Helm {
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Result<Helm> {
        Ok(Helm {
            home: tempfile::tempdir().context("helm home")?,
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("helm");
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        cmd.args(args);
        cmd
    }

    /// `helm template <release> <chart> -n <ns> <args>`.
    fn template(&self, release: &str, ns: &str, args: &[&str]) -> Result<String> {
        let chart = chart().display().to_string();
        let mut all = vec!["template", release, &chart, "--namespace", ns];
        all.extend_from_slice(args);
        ok(&mut self.cmd(&all), None)
    }
}

fn kubectl(args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.args(args);
    cmd
}

/// The objects of `kubectl apply -o json` (a List, or one object).
fn objects(json_text: &str) -> Result<Vec<Value>> {
    let value: Value = serde_json::from_str(json_text).context("kubectl -o json output")?;
    Ok(if value["kind"] == "List" {
        value["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![value]
    })
}

/// `kubectl apply --dry-run=server -o json -f -`: what the API server would store.
fn server_dry_run(yaml: &str) -> Result<Vec<Value>> {
    objects(&ok(
        &mut kubectl(&["apply", "--dry-run=server", "-o", "json", "-f", "-"]),
        Some(yaml),
    )?)
}

/// A file of the install bundle as JSON objects (client-side, no server involved).
fn bundle(file: &str) -> Result<Vec<Value>> {
    let path = root().join("manifests/install").join(file);
    objects(&ok(
        &mut kubectl(&[
            "apply",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &path.display().to_string(),
        ]),
        None,
    )?)
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(str::to_string))
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"] == n))
        .with_context(|| format!("no {kind} {}", name.unwrap_or_default()))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn env<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    container(deployment)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The rendered operator Deployment has the install bundle's images, environment,
/// probes and security settings.
fn check_deployment(deployment: &Value, bundle_deployment: &Value) -> Result<()> {
    let c = container(deployment);
    let b = container(bundle_deployment);
    ensure!(
        c["image"] == b["image"],
        "operator image {} (the install bundle deploys {})",
        c["image"],
        b["image"]
    );
    let keyserver = env(deployment, "KSS_KEYSERVER_IMAGE").map(|e| e["value"].clone());
    ensure!(
        keyserver == Some(json!(kss_operator::desired::DEFAULT_IMAGE)),
        "KSS_KEYSERVER_IMAGE {keyserver:?}, not DEFAULT_IMAGE {}",
        kss_operator::desired::DEFAULT_IMAGE
    );
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let path = env(deployment, var).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone());
        ensure!(
            path == Some(json!(field)),
            "{var} must come from the downward API ({field}): {path:?}"
        );
    }
    // The keyservers admit their admin port from the pods this selector names: it must
    // name the operator's own pods, in the chart as in the bundle.
    for (what, d) in [("chart", deployment), ("bundle", bundle_deployment)] {
        let selector = env(d, "KSS_OPERATOR_POD_SELECTOR")
            .and_then(|e| e["value"].as_str())
            .with_context(|| format!("{what}: no KSS_OPERATOR_POD_SELECTOR"))?;
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for pair in selector.split(',') {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("{what}: selector {selector:?}"))?;
            ensure!(
                labels[key] == value,
                "{what}: KSS_OPERATOR_POD_SELECTOR {selector:?} does not select the operator's \
                 pods (labels {labels})"
            );
        }
    }
    ensure!(
        args(deployment).first().map(String::as_str) == Some("run"),
        "args {:?} do not start with `run`",
        args(deployment)
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        ensure!(
            c[probe]["httpGet"]["path"] == "/healthz" && c[probe]["httpGet"]["port"] == "metrics",
            "{probe}: {}",
            c[probe]
        );
    }
    ensure!(
        c["ports"][0]["containerPort"] == 8080,
        "metrics port {}",
        c["ports"]
    );
    let sc = &c["securityContext"];
    ensure!(
        sc["runAsNonRoot"] == true
            && sc["readOnlyRootFilesystem"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["capabilities"]["drop"] == json!(["ALL"]),
        "container securityContext {sc}"
    );
    let pod_sc = &deployment["spec"]["template"]["spec"]["securityContext"];
    ensure!(
        pod_sc["runAsNonRoot"] == true
            && pod_sc["runAsUser"] == 65532
            && pod_sc["seccompProfile"]["type"] == "RuntimeDefault",
        "pod securityContext {pod_sc}"
    );
    ensure!(
        c["resources"] == b["resources"],
        "resources {} (the bundle's: {})",
        c["resources"],
        b["resources"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_templates_are_accepted_by_the_api_server() {
    let Some((client, ns)) =
        harness::start_in_namespace("helm_templates_are_accepted_by_the_api_server", "helm-tpl")
            .await
            .expect("e2e start")
    else {
        return;
    };
    let outcome = templates(&ns).await;
    harness::delete_namespace(&client, &ns)
        .await
        .expect("delete namespace");
    outcome.expect("helm template scenario");
}

async fn templates(ns: &str) -> Result<()> {
    let helm = Helm::new()?;
    let release = "kss-e2e-tpl";
    let fullname = format!("{release}-kss-operator");
    let bundle_deployment = bundle("30-operator.yaml")?
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .context("30-operator.yaml: no Deployment")?;
    let rbac = bundle("20-rbac.yaml")?;
    let bundle_rules = &find(&rbac, "ClusterRole", None)?["rules"];
    let bundle_leader_rules = &find(&rbac, "Role", None)?["rules"];

    // Default values: the operator cluster-wide, with leader election.
    let yaml = helm.template(release, ns, &[])?;
    let objects = server_dry_run(&yaml)?;
    ensure!(
        kinds(&objects)
            == [
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "NetworkPolicy",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding"
            ],
        "default values render {:?}",
        kinds(&objects)
    );
    let deployment = find(&objects, "Deployment", Some(&fullname))?;
    check_deployment(deployment, &bundle_deployment)?;
    ensure!(
        deployment["spec"]["replicas"] == 2,
        "replicas {}",
        deployment["spec"]["replicas"]
    );
    let operator_args = args(deployment);
    for expected in [
        "--leader-elect=true".to_string(),
        format!("--lease-name={fullname}-leader"),
    ] {
        ensure!(
            operator_args.contains(&expected),
            "args {operator_args:?} lack {expected}"
        );
    }
    ensure!(
        !operator_args
            .iter()
            .any(|a| a.starts_with("--watch-namespace")),
        "args {operator_args:?}"
    );
    let cluster_role = find(&objects, "ClusterRole", Some(&fullname))?;
    ensure!(
        &cluster_role["rules"] == bundle_rules,
        "ClusterRole rules {} differ from the install bundle's {bundle_rules}",
        cluster_role["rules"]
    );
    let binding = find(&objects, "ClusterRoleBinding", Some(&fullname))?;
    ensure!(
        binding["subjects"][0]["name"] == fullname.as_str()
            && binding["subjects"][0]["namespace"] == ns,
        "ClusterRoleBinding subjects {}",
        binding["subjects"]
    );
    let leader = find(
        &objects,
        "Role",
        Some(&format!("{fullname}-leader-election")),
    )?;
    ensure!(
        &leader["rules"] == bundle_leader_rules && leader["metadata"]["namespace"] == ns,
        "leader-election Role {leader}"
    );
    // The guarded-Secrets policy: the bundle's, for the release's ServiceAccount.
    let guarded = format!("{fullname}-guarded-secrets");
    let policy = find(&objects, "ValidatingAdmissionPolicy", Some(&guarded))?;
    let admission = bundle("40-admission.yaml")?;
    let bundle_policy = find(&admission, "ValidatingAdmissionPolicy", None)?;
    let expression = policy["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap_or_default();
    let bundle_expression = bundle_policy["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap_or_default()
        .replace(
            "system:serviceaccount:kss-system:kss-operator",
            &format!("system:serviceaccount:{ns}:{fullname}"),
        );
    let rules = |p: &Value| p["spec"]["matchConstraints"]["resourceRules"][0].clone();
    ensure!(
        expression == bundle_expression
            && policy["spec"]["matchConditions"] == bundle_policy["spec"]["matchConditions"]
            && rules(policy)["operations"] == rules(bundle_policy)["operations"]
            && rules(policy)["resources"] == rules(bundle_policy)["resources"],
        "guarded-Secrets policy {policy} differs from the bundle's {bundle_policy}"
    );
    let policy_binding = find(&objects, "ValidatingAdmissionPolicyBinding", Some(&guarded))?;
    ensure!(
        policy_binding["spec"]["policyName"] == guarded.as_str()
            && policy_binding["spec"].get("matchResources").is_none(),
        "guarded-Secrets binding {policy_binding}"
    );
    let service = find(&objects, "Service", Some(&format!("{fullname}-metrics")))?;
    ensure!(
        service["spec"]["ports"][0]["port"] == 8080
            && service["spec"]["selector"]["app.kubernetes.io/instance"] == release,
        "metrics Service {}",
        service["spec"]
    );

    // The cluster-mode CI values: also a KssPolicy and a KeyShardCluster that uses it.
    let values = cluster_values();
    let objects = server_dry_run(&helm.template(release, ns, &["-f", &values])?)?;
    let policy = find(&objects, "KssPolicy", Some("batch-decrypt"))?;
    let text = policy["spec"]["policy"].as_str().unwrap_or_default();
    ensure!(
        text.starts_with("decrypt:\n") && text.contains("rule: time-range-rule"),
        "KssPolicy text {text:?}"
    );
    let cluster = find(&objects, "KeyShardCluster", Some("kss-prod"))?;
    let spec = &cluster["spec"];
    ensure!(
        spec["mode"] == "Cluster"
            && spec["replicas"] == 3
            && spec["database"]["secretRef"]["name"] == "kss-prod-db"
            && spec["policyRef"]["name"] == "batch-decrypt"
            && spec["backup"]["holders"].as_array().map(Vec::len) == Some(5),
        "KeyShardCluster spec {spec}"
    );
    ensure!(
        cluster["metadata"]["namespace"] == ns
            && cluster["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "KeyShardCluster metadata {}",
        cluster["metadata"]
    );

    // One namespace watched: a Role there instead of the ClusterRole.
    let watch = format!("watchNamespace={ns}");
    let objects = server_dry_run(&helm.template(release, ns, &["--set", &watch])?)?;
    ensure!(
        !kinds(&objects).iter().any(|k| k.starts_with("Cluster")),
        "watchNamespace renders {:?}",
        kinds(&objects)
    );
    let role = find(&objects, "Role", Some(&fullname))?;
    ensure!(
        &role["rules"] == bundle_rules && role["metadata"]["namespace"] == ns,
        "the namespaced Role {role}"
    );
    find(&objects, "RoleBinding", Some(&fullname))?;
    let deployment = find(&objects, "Deployment", Some(&fullname))?;
    ensure!(
        args(deployment).contains(&format!("--watch-namespace={ns}")),
        "args {:?}",
        args(deployment)
    );

    // Several namespaces watched: a Role and RoleBinding in each, the policy bound there.
    let objects = server_dry_run(&helm.template(
        release,
        ns,
        &["--set", &format!("watchNamespaces={{{ns},default}}")],
    )?)?;
    ensure!(
        !kinds(&objects).iter().any(|k| k.starts_with("Cluster")),
        "watchNamespaces renders {:?}",
        kinds(&objects)
    );
    for namespace in [ns, "default"] {
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == "Role"
                    && o["metadata"]["name"] == fullname.as_str()
                    && o["metadata"]["namespace"] == namespace
            })
            .with_context(|| format!("no Role in {namespace}"))?;
        ensure!(
            &role["rules"] == bundle_rules,
            "Role in {namespace}: {role}"
        );
        ensure!(
            objects.iter().any(|o| o["kind"] == "RoleBinding"
                && o["metadata"]["name"] == fullname.as_str()
                && o["metadata"]["namespace"] == namespace),
            "no RoleBinding in {namespace}"
        );
    }
    let deployment = find(&objects, "Deployment", Some(&fullname))?;
    ensure!(
        args(deployment).contains(&format!("--watch-namespaces={ns},default")),
        "args {:?}",
        args(deployment)
    );
    let policy_binding = find(&objects, "ValidatingAdmissionPolicyBinding", Some(&guarded))?;
    ensure!(
        policy_binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"]
            == json!([ns, "default"]),
        "guarded-Secrets binding {policy_binding}"
    );

    // No leader election: one replica, no Lease Role.
    let objects = server_dry_run(&helm.template(
        release,
        ns,
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=1",
        ],
    )?)?;
    ensure!(
        find(
            &objects,
            "Role",
            Some(&format!("{fullname}-leader-election"))
        )
        .is_err(),
        "a leader-election Role without leader election"
    );
    let deployment = find(&objects, "Deployment", Some(&fullname))?;
    let operator_args = args(deployment);
    ensure!(
        operator_args.contains(&"--leader-elect=false".to_string())
            && !operator_args.iter().any(|a| a.starts_with("--lease-name")),
        "args {operator_args:?}"
    );
    // ... and several replicas without it are refused.
    let refused = run(
        &mut helm.cmd(&[
            "template",
            release,
            &chart().display().to_string(),
            "--set",
            "leaderElection.enabled=false",
        ]),
        None,
    )?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("set replicaCount to 1"),
        "2 replicas without leader election rendered: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // fullnameOverride names everything, the cluster-scoped objects too.
    let objects = server_dry_run(&helm.template(
        release,
        ns,
        &["--set", "fullnameOverride=kss-e2e-renamed"],
    )?)?;
    for object in &objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(
            name.starts_with("kss-e2e-renamed"),
            "{} {name} does not follow fullnameOverride",
            object["kind"]
        );
    }

    // The monitoring objects only on request; then accepted by the API server under the
    // Prometheus Operator's own CRDs (run.sh installs them from its Go module).
    let plain = helm.template(release, ns, &[])?;
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        ensure!(
            !plain.contains(&format!("kind: {kind}")),
            "a {kind} by default"
        );
    }
    let monitored = server_dry_run(&helm.template(
        release,
        ns,
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.certificateExpiryDays=21",
        ],
    )?)?;
    let service_monitor = find(&monitored, "ServiceMonitor", None)?;
    ensure!(service_monitor["spec"]["endpoints"][0]["port"] == "metrics");
    let pod_monitor = find(&monitored, "PodMonitor", None)?;
    ensure!(
        pod_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "kss"
            && pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
            && pod_monitor["spec"]["namespaceSelector"]["any"] == true,
        "PodMonitor {pod_monitor}"
    );
    let rule = find(&monitored, "PrometheusRule", None)?;
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .context("PrometheusRule rules")?;
    let expiry = rules
        .iter()
        .find(|r| r["alert"] == "KssTlsCertificateExpiresSoon")
        .context("the certificate expiry alert")?;
    ensure!(
        expiry["expr"].as_str().is_some_and(|e| e
            .contains("kss_tls_certificate_not_after_timestamp_seconds")
            && e.contains("21 * 86400")),
        "expiry alert {expiry}"
    );
    // The alerts' templates reach Prometheus as templates, not rendered by Helm.
    ensure!(
        expiry["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("{{ $labels.listener }}")),
        "expiry alert annotations {expiry}"
    );
    // With watchNamespace, the PodMonitor looks in that namespace only.
    let scoped = server_dry_run(&helm.template(
        release,
        ns,
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            &format!("watchNamespace={ns}"),
        ],
    )?)?;
    let pod_monitor = find(&scoped, "PodMonitor", None)?;
    ensure!(
        pod_monitor["spec"]["namespaceSelector"]["matchNames"][0] == *ns,
        "PodMonitor {pod_monitor}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_uninstall_with_cluster_values() {
    let Some((client, ns)) =
        harness::start_in_namespace("helm_install_and_uninstall_with_cluster_values", "helm")
            .await
            .expect("e2e start")
    else {
        return;
    };
    let helm = Helm::new().expect("helm home");
    // A release name of its own: its ClusterRole is <release>-kss-operator.
    let release = format!("kss-e2e-{}", ns.rsplit('-').next().unwrap_or("x"));
    let outcome = install(&client, &helm, &ns, &release).await;
    if outcome.is_err() {
        // Leave no cluster-scoped object behind (the namespace takes the rest).
        let _ = run(
            &mut helm.cmd(&["uninstall", &release, "--namespace", &ns, "--wait"]),
            None,
        );
        let name = format!("{release}-kss-operator");
        for kind in ["clusterrolebinding", "clusterrole"] {
            let _ = run(
                &mut kubectl(&["delete", kind, &name, "--ignore-not-found"]),
                None,
            );
        }
    }
    harness::delete_namespace(&client, &ns)
        .await
        .expect("delete namespace");
    outcome.expect("helm install scenario");
}

async fn install(client: &Client, helm: &Helm, ns: &str, release: &str) -> Result<()> {
    let fullname = format!("{release}-kss-operator");
    // The operator's pods must pass the "restricted" Pod Security Standard.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {RESTRICTED: "restricted"}}})),
        )
        .await
        .context("labelling the namespace")?;

    let chart = chart().display().to_string();
    let values = cluster_values();
    let installed = ok(
        &mut helm.cmd(&[
            "install",
            release,
            &chart,
            "--namespace",
            ns,
            "-f",
            &values,
            "--wait",
            "--timeout",
            "60s",
        ]),
        None,
    )?;
    ensure!(
        installed.contains("STATUS: deployed") && installed.contains("kubectl -n"),
        "helm install output (with the chart's NOTES):\n{installed}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get(&fullname).await.context("Deployment")?;
    let status = deployment.status.unwrap_or_default();
    ensure!(
        status.ready_replicas == Some(2),
        "Deployment {fullname}: {status:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={release}");
    let running = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    ensure!(
        running == 2,
        "{running} operator pods Running (namespace enforces restricted)"
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts.get(&fullname).await.context("ServiceAccount")?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_role = cluster_roles.get(&fullname).await.context("ClusterRole")?;
    let labels = cluster_role.metadata.labels.unwrap_or_default();
    ensure!(
        labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(release),
        "ClusterRole {fullname} labels {labels:?}"
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = bindings
        .get(&fullname)
        .await
        .context("ClusterRoleBinding")?;
    let subject = binding.subjects.unwrap_or_default();
    ensure!(
        subject.len() == 1
            && subject[0].name == fullname
            && subject[0].namespace.as_deref() == Some(ns),
        "ClusterRoleBinding subjects {subject:?}"
    );
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .get(&format!("{fullname}-leader-election"))
        .await
        .context("leader-election Role")?;
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    role_bindings
        .get(&format!("{fullname}-leader-election"))
        .await
        .context("leader-election RoleBinding")?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = services
        .get(&format!("{fullname}-metrics"))
        .await
        .context("metrics Service")?;
    let port = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().map(|p| p.port));
    ensure!(port == Some(8080), "metrics Service port {port:?}");
    let policies: Api<KssPolicy> = Api::namespaced(client.clone(), ns);
    let policy = policies
        .get("batch-decrypt")
        .await
        .context("KssPolicy batch-decrypt")?;
    ensure!(
        policy.spec.policy.contains("per-profile-throttle-rule"),
        "KssPolicy text {:?}",
        policy.spec.policy
    );
    let clusters: Api<KeyShardCluster> = Api::namespaced(client.clone(), ns);
    let cluster = clusters
        .get("kss-prod")
        .await
        .context("KeyShardCluster kss-prod")?;
    ensure!(
        cluster.spec.replicas == 3
            && cluster.spec.policy_ref.as_ref().map(|r| r.name.as_str()) == Some("batch-decrypt"),
        "KeyShardCluster spec {:?}",
        cluster.spec
    );

    let status: Value = serde_json::from_str(&ok(
        &mut helm.cmd(&["status", release, "--namespace", ns, "-o", "json"]),
        None,
    )?)
    .context("helm status -o json")?;
    ensure!(
        status["info"]["status"] == "deployed",
        "helm status: {}",
        status["info"]
    );

    // `helm upgrade` rolls the operator: a changed pod template gives a new ReplicaSet,
    // the kubelet starts its pods and --wait returns once they are Ready; the old pods
    // are gone and the Deployment reports only the new revision.
    let operator_pods = |list: Vec<Pod>| -> Vec<String> {
        let mut names: Vec<String> = list
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    };
    let operator_selector = format!("{selector},app.kubernetes.io/name=kss-operator");
    let before = operator_pods(
        pods.list(&ListParams::default().labels(&operator_selector))
            .await?
            .items,
    );
    ensure!(
        before.len() == 2,
        "operator pods before the upgrade: {before:?}"
    );
    let upgraded = ok(
        &mut helm.cmd(&[
            "upgrade",
            release,
            &chart,
            "--namespace",
            ns,
            "--reuse-values",
            "--set",
            "podAnnotations.kss\\.dev/e2e-upgrade=1",
            "--wait",
            "--timeout",
            "120s",
        ]),
        None,
    )?;
    ensure!(
        upgraded.contains("STATUS: deployed") && upgraded.contains("REVISION: 2"),
        "helm upgrade output:\n{upgraded}"
    );
    harness::poll("the upgraded operator pods alone Running", WAIT, || async {
        let now = operator_pods(
            pods.list(&ListParams::default().labels(&operator_selector))
                .await?
                .items,
        );
        Ok::<bool, kss_e2e::Error>(now.len() == 2 && now.iter().all(|p| !before.contains(p)))
    })
    .await?;
    let rolled = deployments.get(&fullname).await?;
    let rolled_status = rolled.status.clone().unwrap_or_default();
    ensure!(
        rolled_status.observed_generation == rolled.metadata.generation
            && rolled_status.updated_replicas == Some(2)
            && rolled_status.ready_replicas == Some(2)
            && rolled_status.replicas == Some(2),
        "Deployment {fullname} after the upgrade: {rolled_status:?}"
    );
    let annotations = rolled
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    ensure!(
        annotations.get("kss.dev/e2e-upgrade").map(String::as_str) == Some("1"),
        "pod template annotations after the upgrade: {annotations:?}"
    );

    ok(
        &mut helm.cmd(&[
            "uninstall",
            release,
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            "60s",
        ]),
        None,
    )?;
    ensure!(
        deployments.get_opt(&fullname).await?.is_none(),
        "Deployment left after uninstall"
    );
    ensure!(
        accounts.get_opt(&fullname).await?.is_none(),
        "ServiceAccount left after uninstall"
    );
    ensure!(
        cluster_roles.get_opt(&fullname).await?.is_none(),
        "ClusterRole left after uninstall"
    );
    ensure!(
        bindings.get_opt(&fullname).await?.is_none(),
        "ClusterRoleBinding left after uninstall"
    );
    // helm.sh/resource-policy: keep (the chart's default for both).
    ensure!(
        policies.get_opt("batch-decrypt").await?.is_some(),
        "KssPolicy deleted by uninstall"
    );
    ensure!(
        clusters.get_opt("kss-prod").await?.is_some(),
        "KeyShardCluster deleted by uninstall"
    );
    let releases = ok(&mut helm.cmd(&["list", "--namespace", ns, "-q"]), None)?;
    if !releases.trim().is_empty() {
        bail!("releases left: {releases}");
    }
    Ok(())
}
