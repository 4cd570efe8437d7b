//! The process kubelet against the real control plane (run by `e2e/run.sh`): a
//! StatefulSet of two `kss serve --dev` pods becomes two real keyserver processes on their
//! pod IPs; a killed process is restarted, a deleted pod's replacement keeps its volume's
//! data, a scale-down stops the extra process, secret volumes follow their Secret.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, Container, EnvVar, EnvVarSource, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodSpec, PodTemplateSpec, Secret,
    SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kss_e2e::harness;
use kss_e2e::{PodRunner, Process};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LABEL: (&str, &str) = ("app", "kss-e2e-podrunner");
const MASTER_KEY: &str = "8f1c3a5e7b9d0f2468ace13579bdf02468ace13579bdf02468ace13579bdf024";
const START: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podrunner_runs_a_statefulset_as_kss_processes() {
    let Some((client, ns)) =
        harness::start_in_namespace("podrunner_runs_a_statefulset_as_kss_processes", "podrunner")
            .await
            .expect("e2e start")
    else {
        return;
    };
    let kss = harness::kss_bin().expect("kss binary");
    let state = harness::state_dir("pr").expect("state dir");
    let runner = PodRunner::start(
        client.clone(),
        &ns,
        &format!("{}={}", LABEL.0, LABEL.1),
        kss,
        state,
    );
    let outcome = scenario(&client, &ns, &runner).await;
    if let Err(e) = &outcome {
        eprintln!("FAILED: {e:#}");
        dump(&runner);
    }
    let pids: Vec<u32> = runner.processes().values().map(|p| p.pid).collect();
    runner.shutdown().await;
    for pid in pids {
        assert!(
            !kss_e2e::podrunner::pid_alive(pid),
            "pid {pid} still alive after shutdown"
        );
    }
    harness::delete_namespace(&client, &ns)
        .await
        .expect("delete namespace");
    outcome.expect("podrunner scenario");
}

fn dump(runner: &PodRunner) {
    for (pod, process) in runner.processes() {
        eprintln!("--- {pod}: {process:?}\n{}", process.log_text());
    }
}

async fn scenario(client: &Client, ns: &str, runner: &PodRunner) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &secret("kss-master-key", "master.key", MASTER_KEY),
        )
        .await
        .context("creating the master key Secret")?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("kss-config".to_string()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([("tz".to_string(), "UTC".to_string())])),
                ..ConfigMap::default()
            },
        )
        .await
        .context("creating the ConfigMap")?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.create(&PostParams::default(), &stateful_set(2))
        .await
        .context("creating the StatefulSet")?;

    // Two real keyservers, each on its own pod IP.
    let p0 = runner.wait_started("kss-0", START).await?;
    let p1 = runner.wait_started("kss-1", START).await?;
    ensure!(
        p0.pod_ip != p1.pod_ip,
        "distinct pod IPs: {} {}",
        p0.pod_ip,
        p1.pod_ip
    );
    for p in [&p0, &p1] {
        ensure!(
            p.pod_ip.starts_with("127."),
            "loopback pod IP, got {}",
            p.pod_ip
        );
        wait_serving(p).await?;
        let pid_file = std::fs::read_to_string(&p.pid_file)?;
        ensure!(
            pid_file.trim() == p.pid.to_string(),
            "pid file {pid_file:?} vs {}",
            p.pid
        );
    }
    // The master key came through the secret volume, mode 0400, path rewritten.
    let key_file = p0
        .host_path("/etc/kss/secret/master.key")
        .context("master key mount")?;
    let mode = std::fs::metadata(&key_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o400, "secret file mode {mode:o}");
    ensure!(std::fs::read_to_string(&key_file)? == MASTER_KEY);
    let data0 = p0
        .host_path("/var/lib/kss")
        .context("data mount of kss-0")?;
    let data1 = p1
        .host_path("/var/lib/kss")
        .context("data mount of kss-1")?;
    ensure!(data0 != data1, "each pod has its own claim");
    ensure!(
        data0.join("kss.db").is_file(),
        "no kss.db in {}",
        data0.display()
    );
    let id0 = keyserver_id(runner, &data0).await?;
    let id1 = keyserver_id(runner, &data1).await?;
    ensure!(id0 != id1, "two dev identities");
    eprintln!(
        "kss-0 {} pid {} id {id0}; kss-1 {} pid {} id {id1}",
        p0.pod_ip, p0.pid, p1.pod_ip, p1.pid
    );

    // An optional secret volume follows its Secret: absent, created, changed, deleted.
    let extra = p0.host_path("/etc/kss/extra").context("extra mount")?;
    ensure!(
        std::fs::read_dir(&extra)?.count() == 0,
        "absent optional secret: empty dir"
    );
    secrets
        .create(&PostParams::default(), &secret("kss-extra", "token", "one"))
        .await?;
    wait_file(&extra.join("token"), Some("one")).await?;
    secrets
        .replace(
            "kss-extra",
            &PostParams::default(),
            &secret("kss-extra", "token", "two"),
        )
        .await?;
    wait_file(&extra.join("token"), Some("two")).await?;
    secrets
        .delete("kss-extra", &DeleteParams::default())
        .await?;
    wait_file(&extra.join("token"), None).await?;

    // kill -9: the same pod's process is restarted and serves again.
    let status = std::process::Command::new("kill")
        .args(["-9", &p0.pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -9 {}", p0.pid);
    let p0b = runner
        .wait_started_after("kss-0", Some(&p0), Duration::from_secs(20))
        .await?;
    ensure!(
        p0b.uid == p0.uid && p0b.pid != p0.pid && p0b.starts == 2,
        "restart: {p0b:?}"
    );
    wait_serving(&p0b).await?;
    ensure!(keyserver_id(runner, &data0).await? == id0);

    // Delete a pod: the StatefulSet recreates it (new UID); the old process is stopped,
    // the new one runs on the same claim, so the identity is the same.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete("kss-1", &DeleteParams::default()).await?;
    let p1b = runner.wait_started_after("kss-1", Some(&p1), START).await?;
    ensure!(p1b.uid != p1.uid, "replacement pod has a new UID");
    ensure!(!p1.is_alive(), "old process {} still alive", p1.pid);
    wait_serving(&p1b).await?;
    let data1b = p1b.host_path("/var/lib/kss").context("data mount")?;
    ensure!(
        data1b == data1,
        "claim dir changed: {} vs {}",
        data1b.display(),
        data1.display()
    );
    ensure!(
        runner.claim_dir("data-kss-1").await?.as_ref() == Some(&data1),
        "claim_dir(data-kss-1)"
    );
    ensure!(
        keyserver_id(runner, &data1b).await? == id1,
        "data survived the pod"
    );

    // Scale to 1: kss-1's process is stopped, kss-0's keeps running.
    sets.patch(
        "kss",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
    )
    .await?;
    runner
        .wait_stopped("kss-1", Duration::from_secs(30))
        .await?;
    ensure!(
        !p1b.is_alive(),
        "scaled-down process {} still alive",
        p1b.pid
    );
    let p0c = runner.process("kss-0").context("kss-0 process")?;
    ensure!(
        p0c.pid == p0b.pid && p0c.is_alive(),
        "kss-0 untouched: {p0c:?}"
    );
    Ok(())
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(source),
        ..EnvVar::default()
    }
}

fn field(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_string(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

fn stateful_set(replicas: i32) -> StatefulSet {
    let labels = BTreeMap::from([(LABEL.0.to_string(), LABEL.1.to_string())]);
    let container = Container {
        name: "kss".to_string(),
        image: Some("kss:e2e".to_string()),
        args: Some(
            [
                "serve",
                "--dev",
                "--listen=$(POD_IP):8443",
                "--metrics-listen=$(POD_IP):9464",
                "--standalone-lease-secs=3",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![
            env_from("POD_IP", field("status.podIP")),
            env_from("KSS_INSTANCE_NAME", field("metadata.name")),
            env_from(
                "KSS_TIME_ZONE",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "kss-config".to_string(),
                        key: "tz".to_string(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                },
            ),
            env("KSS_DATA_DIR", "/var/lib/kss"),
            env("KSS_MASTER_KEY_FILE", "/etc/kss/secret/master.key"),
            env("KSS_ADVERTISE_ENDPOINT", "https://$(POD_IP):8443"),
        ]),
        volume_mounts: Some(vec![
            mount("data", "/var/lib/kss"),
            mount("master-key", "/etc/kss/secret"),
            mount("extra", "/etc/kss/extra"),
        ]),
        ..Container::default()
    };
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("kss".to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some("kss".to_string()),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(5),
                    volumes: Some(vec![
                        Volume {
                            name: "master-key".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some("kss-master-key".to_string()),
                                default_mode: Some(0o400),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "extra".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some("kss-extra".to_string()),
                                optional: Some(true),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity("16Mi".to_string()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Waits until the process answers `GET /metrics` on its pod IP and accepts TCP on the
/// gRPC port.
async fn wait_serving(p: &Process) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let last = match metrics(&p.pod_ip).await {
            Ok(()) => break,
            Err(e) => format!("{e:#}"),
        };
        if !p.is_alive() {
            bail!("pod {} process {} died: {last}", p.pod, p.pid);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("pod {} ({}) not serving /metrics: {last}", p.pod, p.pod_ip);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::net::TcpStream::connect((p.pod_ip.as_str(), 8443))
        .await
        .with_context(|| format!("gRPC port of {}", p.pod))?;
    Ok(())
}

async fn metrics(ip: &str) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect((ip, 9464)).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    ensure!(status.contains(" 200"), "status line {status:?}");
    Ok(())
}

/// `kss status --json` on a data dir: the keyserver ID.
async fn keyserver_id(runner: &PodRunner, data_dir: &Path) -> Result<String> {
    let output = tokio::process::Command::new(&runner.config().kss_bin)
        .args(["status", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "kss status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    value["keyserver_id"]
        .as_str()
        .map(String::from)
        .context("keyserver_id in kss status")
}

/// Waits (up to 15 s) until `path` has `content`, or is absent for None.
async fn wait_file(path: &Path, content: Option<&str>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = std::fs::read_to_string(path).ok();
        if now.as_deref() == content {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{}: {now:?}, wanted {content:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The runner configures a process as the kubelet configures a container: here the
/// program is `/bin/sh` (any binary can stand in for kss), and the script records what
/// it was given into its emptyDir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podrunner_configures_processes_like_the_kubelet() {
    let Some((client, ns)) = harness::start_in_namespace(
        "podrunner_configures_processes_like_the_kubelet",
        "podrunner-cfg",
    )
    .await
    .expect("e2e start") else {
        return;
    };
    let state = harness::state_dir("cfg").expect("state dir");
    let runner = PodRunner::start(client.clone(), &ns, "app=probe", "/bin/sh".into(), state);
    let outcome = configuration_scenario(&client, &ns, &runner).await;
    if let Err(e) = &outcome {
        eprintln!("FAILED: {e:#}");
        dump(&runner);
    }
    runner.shutdown().await;
    harness::delete_namespace(&client, &ns)
        .await
        .expect("delete namespace");
    outcome.expect("configuration scenario");
}

async fn configuration_scenario(client: &Client, ns: &str, runner: &PodRunner) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut creds = secret("creds", "user", "alice");
    if let Some(data) = creds.data.as_mut() {
        data.insert("pass".to_string(), ByteString(b"s3cret".to_vec()));
    }
    secrets.create(&PostParams::default(), &creds).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "cfg"},
                "data": {"a": "1", "file.txt": "hello"},
            }))?,
        )
        .await?;
    let script = "printf '%s\\n' \"$@\" > /data/args; env | sort > /data/env; \
                  cat /etc/app.txt > /data/app; pwd > /data/pwd; exec sleep 600";
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "containers": [{
                "name": "probe",
                "image": "ignored",
                "command": ["/image/entrypoint", "-c"],
                "args": [script, "sh", "$(POD_IP)", "$$(POD_IP)", "$(MISSING)",
                         "--app=/etc/app.txt", "/data", "/database", "--listen=0.0.0.0:8443"],
                "workingDir": "/data/work",
                "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "S_"}],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "LBL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
                    {"name": "U", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                    {"name": "OPT", "valueFrom": {"secretKeyRef":
                        {"name": "absent", "key": "x", "optional": true}}},
                    {"name": "COMBINED", "value": "ip=$(POD_IP) $$(NS) $(LATER)"},
                    {"name": "LATER", "value": "later"},
                    {"name": "DATA", "value": "/data/sub"},
                ],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "cfg", "mountPath": "/etc/app.txt", "subPath": "file.txt"},
                    {"name": "proj", "mountPath": "/etc/proj"},
                ],
            }],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "proj", "projected": {"defaultMode": 0o440, "sources": [
                    {"secret": {"name": "creds", "items": [{"key": "user", "path": "c/user"}]}},
                    {"downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                ]}},
            ],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await?;
    let p = runner.wait_started("probe", START).await?;
    let data = p.host_path("/data").context("data mount")?;
    wait_file_exists(&data.join("pwd")).await?;
    let app = p.host_path("/etc/app.txt").context("subPath mount")?;
    let args: Vec<String> = std::fs::read_to_string(data.join("args"))?
        .lines()
        .map(String::from)
        .collect();
    let expected_args = [
        p.pod_ip.clone(),
        "$(POD_IP)".to_string(),
        "$(MISSING)".to_string(),
        format!("--app={}", app.display()),
        data.display().to_string(),
        "/database".to_string(),
        format!("--listen={}:8443", p.pod_ip),
    ];
    ensure!(
        args == expected_args,
        "args {args:?}, wanted {expected_args:?}"
    );
    let env: BTreeMap<String, String> = std::fs::read_to_string(data.join("env"))?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let want = |k: &str, v: &str| -> Result<()> {
        ensure!(
            env.get(k).map(String::as_str) == Some(v),
            "env {k}={:?}, wanted {v:?}",
            env.get(k)
        );
        Ok(())
    };
    want("POD_IP", &p.pod_ip)?;
    want("NS", ns)?;
    want("UID", &p.uid)?;
    want("NODE", "kwok-node-0")?;
    want("LBL", "probe")?;
    want("A", "1")?;
    want("U", "alice")?;
    want("S_user", "alice")?;
    want("S_pass", "s3cret")?;
    want("COMBINED", &format!("ip={} $(NS) $(LATER)", p.pod_ip))?;
    want("DATA", &data.join("sub").display().to_string())?;
    want("HOSTNAME", "probe")?;
    ensure!(
        !env.contains_key("OPT"),
        "optional absent secret: no variable"
    );
    ensure!(
        !env.contains_key("KUBECONFIG"),
        "the runner's environment leaked"
    );
    ensure!(env.contains_key("PATH"));
    ensure!(std::fs::read_to_string(data.join("app"))? == "hello");
    let pwd = std::fs::read_to_string(data.join("pwd"))?;
    ensure!(
        pwd.trim() == data.join("work").display().to_string(),
        "workingDir {pwd:?}"
    );
    let proj = p.host_path("/etc/proj").context("projected mount")?;
    ensure!(std::fs::read_to_string(proj.join("c/user"))? == "alice");
    ensure!(std::fs::read_to_string(proj.join("name"))? == "probe");
    let mode = std::fs::metadata(proj.join("c/user"))?.permissions().mode() & 0o777;
    ensure!(mode == 0o440, "projected mode {mode:o}");

    // Deleting the pod stops the process (SIGTERM).
    pods.delete("probe", &DeleteParams::default()).await?;
    runner
        .wait_stopped("probe", Duration::from_secs(20))
        .await?;
    ensure!(!p.is_alive(), "process {} survived its pod", p.pid);
    Ok(())
}

async fn wait_file_exists(path: &Path) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        if tokio::time::Instant::now() >= deadline {
            bail!("{} never appeared", path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
