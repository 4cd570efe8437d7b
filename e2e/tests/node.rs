//! The kss image on a real kubelet: run by `e2e/run.sh` inside the namespaces of
//! `e2e/node-e2e.sh`, which sets `KSS_E2E_NODE=real`.
//!
//! A Pod of `ghcr.io/kss-project/kss:0.1.0` (the image `e2e/images.sh` assembled from
//! the Dockerfile) with the operator's security context becomes Ready through its gRPC
//! readiness probe, which only the kubelet evaluates; its process, looked up through
//! containerd, runs as 65532 on a read-only root filesystem. Anywhere else (plain
//! `cargo test --workspace`) the test prints why it skips and passes.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, GRPCAction,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecurityContext,
    Volume, VolumeMount,
};
use kss_e2e::harness;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

const IMAGE: &str = "ghcr.io/kss-project/kss:0.1.0";
const HEALTH: i32 = 8444;

fn on_real_node(test: &str) -> bool {
    if std::env::var("KSS_E2E_NODE").as_deref() != Ok("real") {
        use std::io::Write;
        let why =
            format!("{test}: no real node (KSS_E2E_NODE=real); run it through e2e/node-e2e.sh");
        let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
        // Counted in the run's skip summary (scripts/test.sh).
        if let Some(log) = std::env::var_os("KSS_SKIP_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log)
        {
            let _ = f.write_all(format!("{why}\n").as_bytes());
        }
        return false;
    }
    true
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn grpc_probe(service: &str, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: HEALTH,
            service: Some(service.to_string()),
        }),
        period_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn kss_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("kss".to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "kss".to_string(),
                image: Some(IMAGE.to_string()),
                image_pull_policy: Some("Never".to_string()),
                args: Some(vec![
                    "serve".to_string(),
                    "--dev".to_string(),
                    "--listen=$(POD_IP):8443".to_string(),
                    format!("--health-listen=$(POD_IP):{HEALTH}"),
                    "--metrics-listen=$(POD_IP):9464".to_string(),
                ]),
                env: Some(vec![field_env("POD_IP", "status.podIP")]),
                ports: Some(vec![ContainerPort {
                    name: Some("health".to_string()),
                    container_port: HEALTH,
                    ..ContainerPort::default()
                }]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "data".to_string(),
                    mount_path: "/var/lib/kss".to_string(),
                    ..VolumeMount::default()
                }]),
                startup_probe: Some(grpc_probe("", 30)),
                readiness_probe: Some(grpc_probe("kss.v1.KeyServer", 2)),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_string()]),
                        add: None,
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn scenario(client: &Client, ns: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &kss_pod()).await?;
    harness::poll(
        "pod kss Ready (gRPC readiness probe)",
        Duration::from_secs(120),
        || async { Ok(is_ready(&pods.get("kss").await?)) },
    )
    .await?;
    let pod = pods.get("kss").await?;
    let status = pod.status.context("pod status")?;
    let cs = status
        .container_statuses
        .as_ref()
        .and_then(|v| v.first())
        .context("container status")?;
    ensure!(cs.ready && cs.restart_count == 0, "container status {cs:?}");
    ensure!(
        cs.image == IMAGE || cs.image.ends_with(IMAGE),
        "image {}",
        cs.image
    );
    let ip = status.pod_ip.context("pod IP")?;
    ensure!(
        ip.starts_with("10.244."),
        "pod IP {ip} not on the node's bridge"
    );

    let pid = kss_e2e::node::task_pid(cs.container_id.as_deref().context("container id")?)?;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = proc_status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("Uid line")?;
    ensure!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "kss runs as {uid}"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?;
    ensure!(
        cmdline.starts_with("/usr/local/bin/kss\0serve\0"),
        "cmdline {cmdline:?}"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let opts = |path: &str| -> Option<String> {
        mountinfo
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .rfind(|f| f.get(4) == Some(&path))
            .and_then(|f| f.get(5).map(|s| s.to_string()))
    };
    let root = opts("/").context("no / in mountinfo")?;
    ensure!(root.split(',').any(|o| o == "ro"), "root mounted {root}");
    let data = opts("/var/lib/kss").context("no /var/lib/kss in mountinfo")?;
    ensure!(
        data.split(',').any(|o| o == "rw"),
        "/var/lib/kss mounted {data}"
    );
    eprintln!("kss pod {ip}: pid {pid}, {uid}, root {root}, /var/lib/kss {data}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kss_image_runs_on_a_real_kubelet() {
    const TEST: &str = "kss_image_runs_on_a_real_kubelet";
    // Without the e2e environment this skips like every e2e test; with it but no real
    // node (a control plane brought up by hand with kwok) the skip is counted.
    if !harness::enabled(TEST).expect("e2e environment") || !on_real_node(TEST) {
        return;
    }
    let Some((client, ns)) = harness::start_in_namespace(TEST, "node")
        .await
        .expect("e2e start")
    else {
        return;
    };
    let outcome = scenario(&client, &ns).await;
    if outcome.is_ok() {
        harness::delete_namespace(&client, &ns)
            .await
            .expect("delete namespace");
    }
    if let Err(e) = outcome {
        panic!("{e:#}");
    }
}
