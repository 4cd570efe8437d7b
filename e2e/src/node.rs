//! The pods' containers on the real node (`e2e/node-e2e.sh`): which container of a pod
//! is running now, its process in the node's PID namespace (through containerd), its
//! log (through the kubelet), a command run in it (`kubectl exec`), and killing it as a
//! crash would.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::{Api, Client};

use crate::error::{Error, Result};

/// A pod's container as the kubelet reports it while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    pub pod: String,
    pub pod_uid: String,
    pub pod_ip: String,
    /// containerd's ID (`containerd://` stripped): a restart gives a new one.
    pub id: String,
    pub restarts: i32,
}

impl RunningContainer {
    /// Whether `later` is this very process (same pod, same container, no restart).
    pub fn same_process(&self, later: &RunningContainer) -> bool {
        (self.pod_uid.as_str(), self.id.as_str()) == (later.pod_uid.as_str(), later.id.as_str())
    }
}

/// The running container `container` of `pod`, if the kubelet reports one.
pub fn running(pod: &Pod, container: &str) -> Option<RunningContainer> {
    let status = pod.status.as_ref()?;
    let cs = status
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?;
    cs.state.as_ref()?.running.as_ref()?;
    Some(RunningContainer {
        pod: pod.metadata.name.clone()?,
        pod_uid: pod.metadata.uid.clone()?,
        pod_ip: status.pod_ip.clone()?,
        id: cs
            .container_id
            .as_deref()?
            .trim_start_matches("containerd://")
            .to_string(),
        restarts: cs.restart_count,
    })
}

/// Waits until `pod` exists and its container `container` runs.
pub async fn wait_running(
    client: &Client,
    ns: &str,
    pod: &str,
    container: &str,
    timeout: Duration,
) -> Result<RunningContainer> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = pods
            .get_opt(pod)
            .await?
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .and_then(|p| running(&p, container))
        {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("container {container} of pod {ns}/{pod} running"),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The log of the container's current run (the kubelet's, through the API server).
pub async fn log(client: &Client, ns: &str, pod: &str, container: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .logs(
            pod,
            &LogParams {
                container: Some(container.to_string()),
                ..LogParams::default()
            },
        )
        .await?)
}

/// Runs `args` in the container (`kubectl exec`); its stdout, or an error with stderr.
pub fn exec(ns: &str, pod: &str, container: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(["-n", ns, "exec", pod, "-c", container, "--"])
        .args(args)
        .output()
        .map_err(|e| Error::io("kubectl", e))?;
    if !out.status.success() {
        return Err(Error::pod(
            pod,
            format!(
                "exec {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's state dir and `ctr` binary, as `e2e/node.sh` records them.
fn ctr() -> Result<Command> {
    let state = PathBuf::from(
        std::env::var("KSS_E2E_STATE").unwrap_or_else(|_| "/tmp/kss-node-e2e".to_string()),
    );
    let file = state.join("node-bin-dir");
    let bin = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let mut cmd = Command::new(PathBuf::from(bin.trim()).join("ctr"));
    cmd.arg("--address")
        .arg(state.join("node/containerd/containerd.sock"))
        .args(["-n", "k8s.io"]);
    Ok(cmd)
}

/// The PID, in the node's PID namespace (which the tests share), of a container's task.
pub fn task_pid(container_id: &str) -> Result<u32> {
    let out = ctr()?
        .args(["tasks", "ls"])
        .output()
        .map_err(|e| Error::io("ctr", e))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "ctr tasks ls: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let id = container_id.trim_start_matches("containerd://");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut f = line.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
        .ok_or_else(|| Error::Setup(format!("task {id} not in `ctr tasks ls`")))
}

/// The container's process's arguments and environment, as `/proc/<pid>/cmdline` and
/// `/proc/<pid>/environ` hold them (NUL-separated), for what must not be in them.
pub fn arguments_and_environment(container: &RunningContainer) -> Result<(String, String)> {
    let pid = task_pid(&container.id)?;
    let read = |what: &str| {
        let path = PathBuf::from(format!("/proc/{pid}/{what}"));
        std::fs::read(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| Error::io(&path, e))
    };
    Ok((read("cmdline")?, read("environ")?))
}

/// Kills the container's process with SIGKILL, as a crash (or the OOM killer) would;
/// the kubelet restarts it.
pub fn kill(container: &RunningContainer) -> Result<()> {
    let pid = task_pid(&container.id)?;
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| Error::Setup(format!("pid {pid}")))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .map_err(|e| Error::io(format!("/proc/{}", pid.as_raw_nonzero()), e.into()))
}

/// What the container's process is confined to, read from the node: its uids (real,
/// effective, saved, filesystem) and, for each path inside the container, whether a file
/// can be created there. The write goes through `/proc/<pid>/root`, so it meets the
/// container's own mounts (a read-only root fails with EROFS even for root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub uids: Vec<u32>,
    /// (path in the container, the error creating a file there, if any)
    pub writes: Vec<(String, Option<String>)>,
}

/// Probes `paths` of the container's filesystem, leaving nothing behind.
pub fn confinement(container: &RunningContainer, paths: &[&str]) -> Result<Confinement> {
    let pid = task_pid(&container.id)?;
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&status_path).map_err(|e| Error::io(&status_path, e))?;
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let writes = paths
        .iter()
        .map(|path| {
            let probe = PathBuf::from(format!(
                "/proc/{pid}/root{}/.kss-e2e-write-probe",
                path.trim_end_matches('/')
            ));
            let outcome = std::fs::File::create(&probe).map(drop);
            let _ = std::fs::remove_file(&probe);
            (path.to_string(), outcome.err().map(|e| e.to_string()))
        })
        .collect();
    Ok(Confinement { uids, writes })
}
