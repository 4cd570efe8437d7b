//! A "process kubelet" for kwok pods: kwok marks pods Running but runs nothing, so the
//! runner starts each selected pod's first container as a local `kss` process, configured
//! exactly as the pod spec says (arguments, environment, volumes), on the pod's own IP
//! (the control plane hands out pod IPs from a loopback range).
//!
//! - Program: always the runner's `kss_bin`; the image is ignored. With a `command`,
//!   `command[0]` stands for the image's program and is replaced by `kss_bin`;
//!   `command[1..]` then `args` are the arguments.
//! - `$(VAR)` in `command`/`args` and in literal `env` values is expanded as by the
//!   kubelet (`$$` escapes); `env` supports literals, `fieldRef` (metadata.name,
//!   metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'],
//!   spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s)),
//!   `secretKeyRef`, `configMapKeyRef` (with `optional`); `envFrom` secrets and
//!   configmaps (with `prefix`). The process gets only that environment, plus `PATH`
//!   (the runner's), `HOSTNAME` (the pod's) and [`PodRunnerConfig::extra_env`].
//! - Volumes become host directories: `secret`, `configMap`, `projected` (secret,
//!   configMap and downwardAPI sources) and `downwardAPI` files are written with the
//!   volume's `defaultMode` / item `mode` (default 0644) under
//!   `<state>/<ns>/<pod>/<uid[..8]>/v/<volume>` and refreshed every
//!   [`PodRunnerConfig::refresh_interval`] (an optional Secret that is deleted → its
//!   files disappear; a required one that is deleted → the old files stay, as with the
//!   kubelet); `emptyDir` is fresh per pod UID; `persistentVolumeClaim` is its bound
//!   PersistentVolume's `hostPath` (see [`crate::provisioner`]), so a StatefulSet's
//!   `data-<pod>` claim keeps its data when the pod is replaced; `hostPath` is used as is.
//!   Every argument, env value and `workingDir` that contains a `mountPath` (+`subPath`)
//!   as a path prefix is rewritten to the host directory.
//! - Network: every process shares the host's network, so `0.0.0.0:<port>` and
//!   `[::]:<port>` in arguments and env values become `<pod IP>:<port>` (what they mean
//!   inside a pod); listeners must not rely on a program's built-in wildcard default.
//! - Output: `<state>/<ns>/<pod>/<uid>.log` (stdout and stderr, appended across
//!   restarts of the same pod UID); the pid of the current process in
//!   `<state>/<ns>/<pod>/pid`.
//! - A pod whose configuration is incomplete (a required Secret, ConfigMap or key missing,
//!   a claim not bound) gets no process until it is; the runner tries every second.
//! - Lifecycle: restartPolicy Always (the default; OnFailure and Never are honoured)
//!   restarts an exited process after 1 s, 2 s, 4 s, 8 s, then every 10 s (back to 1 s
//!   once a process ran 10 s). A pod deleted, terminating or replaced (new UID) → SIGTERM,
//!   SIGKILL after `terminationGracePeriodSeconds` (capped at
//!   [`PodRunnerConfig::max_grace`]), then the new pod's process starts.
//! - Not done: init containers, other containers than the first, probes (kwok reports
//!   pods Ready at once, whatever the process does), pod status updates (restart counts),
//!   resource limits, users and security contexts (the process runs as the current user).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::podspec::{self, Launch, Objects, PodDirs};
use crate::provisioner;

/// Everything the runner needs; [`PodRunnerConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct PodRunnerConfig {
    pub namespace: String,
    /// Label selector of the pods to run (`app=kss,role=x`; empty: every pod).
    pub selector: String,
    /// The program every container runs.
    pub kss_bin: PathBuf,
    /// Root of pod directories, logs, pid files and provisioned volumes.
    pub state_dir: PathBuf,
    /// Extra environment for every process (e.g. `RUST_LOG`), below the container's own.
    pub extra_env: BTreeMap<String, String>,
    /// Create hostPath PersistentVolumes for the namespace's Pending claims (default on).
    pub provision_volumes: bool,
    /// Upper bound of `terminationGracePeriodSeconds` (default 10 s).
    pub max_grace: Duration,
    /// How often secret/configMap volumes are re-read (default 2 s).
    pub refresh_interval: Duration,
    /// Start processes through `setpriv --pdeathsig KILL` when `setpriv` (util-linux)
    /// is installed, so that they die with the runner's thread even if it is killed
    /// (default on). The pid is the kss process's own (setpriv execs it).
    pub parent_death_signal: bool,
    /// Rewrite `0.0.0.0:<port>` and `[::]:<port>` in arguments and env values to
    /// `<pod IP>:<port>` (default on): every pod shares the host's network here, so a
    /// wildcard listener would take the port on all pod IPs at once.
    pub bind_any_to_pod_ip: bool,
}

impl PodRunnerConfig {
    pub fn new(
        namespace: &str,
        selector: &str,
        kss_bin: PathBuf,
        state_dir: PathBuf,
    ) -> PodRunnerConfig {
        PodRunnerConfig {
            namespace: namespace.to_string(),
            selector: selector.to_string(),
            kss_bin,
            state_dir,
            extra_env: BTreeMap::new(),
            provision_volumes: true,
            max_grace: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(2),
            parent_death_signal: true,
            bind_any_to_pod_ip: true,
        }
    }
}

/// A pod's current process, as the runner last started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// The pod IP it was started for.
    pub pod_ip: String,
    pub pid: u32,
    /// stdout and stderr of every process of this pod UID.
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// How many processes were started for this pod UID (1: the first).
    pub starts: u32,
    /// Runner-wide start counter: a process started later has a larger value.
    pub seq: u64,
    /// (mount path, host path) of the container's volume mounts, longest first.
    pub mounts: Vec<(String, PathBuf)>,
}

impl Process {
    /// Whether the process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// The host path standing for an in-pod path under one of the container's mounts.
    pub fn host_path(&self, pod_path: &str) -> Option<PathBuf> {
        crate::expand::MountMap::new(self.mounts.iter().cloned()).host_path(pod_path)
    }

    /// The log so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Whether `/proc/<pid>` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

struct Shared {
    /// Current processes by pod name.
    procs: watch::Sender<BTreeMap<String, Process>>,
    seq: AtomicU64,
}

struct Ctx {
    client: Client,
    cfg: PodRunnerConfig,
    shared: Arc<Shared>,
    setpriv: Option<PathBuf>,
}

/// Runs the selected pods of a namespace as local processes until
/// [`PodRunner::shutdown`] (graceful) or drop (SIGKILL).
pub struct PodRunner {
    client: Client,
    shared: Arc<Shared>,
    cancel: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    cfg: PodRunnerConfig,
}

impl PodRunner {
    /// Starts watching pods matching `selector` in `namespace` (a Tokio task: call it
    /// inside a runtime) with the default configuration.
    pub fn start(
        client: Client,
        namespace: &str,
        selector: &str,
        kss_bin: PathBuf,
        state_dir: PathBuf,
    ) -> PodRunner {
        PodRunner::with_config(
            client,
            PodRunnerConfig::new(namespace, selector, kss_bin, state_dir),
        )
    }

    pub fn with_config(client: Client, mut cfg: PodRunnerConfig) -> PodRunner {
        // A relative program path would be resolved against each pod's working dir.
        if cfg.kss_bin.components().count() > 1
            && let Ok(absolute) = fs::canonicalize(&cfg.kss_bin)
        {
            cfg.kss_bin = absolute;
        }
        let setpriv = if cfg.parent_death_signal {
            find_in_path("setpriv")
        } else {
            None
        };
        let shared = Arc::new(Shared {
            procs: watch::Sender::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
        });
        let (cancel, cancel_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            cfg: cfg.clone(),
            shared: Arc::clone(&shared),
            setpriv,
        });
        info!(namespace = %cfg.namespace, selector = %cfg.selector, kss = %cfg.kss_bin.display(),
            state = %cfg.state_dir.display(), "pod runner started");
        let task = tokio::spawn(run(ctx, cancel_rx));
        PodRunner {
            client,
            shared,
            cancel,
            task: Some(task),
            cfg,
        }
    }

    pub fn config(&self) -> &PodRunnerConfig {
        &self.cfg
    }

    /// The current process of a pod (by pod name), if one runs.
    pub fn process(&self, pod: &str) -> Option<Process> {
        self.shared.procs.borrow().get(pod).cloned()
    }

    /// All current processes, by pod name.
    pub fn processes(&self) -> BTreeMap<String, Process> {
        self.shared.procs.borrow().clone()
    }

    /// `<state>/<namespace>/<pod>`: the pod's log(s) and pid file.
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join(&self.cfg.namespace).join(pod)
    }

    /// The host directory of a bound claim of the namespace (its PV's hostPath).
    pub async fn claim_dir(&self, claim: &str) -> Result<Option<PathBuf>> {
        podspec::claim_host_dir(&self.client, &self.cfg.namespace, claim).await
    }

    /// Waits until `pred` holds for the set of current processes.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&BTreeMap<String, Process>) -> bool,
    ) -> Result<BTreeMap<String, Process>> {
        let mut rx = self.shared.procs.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|procs| pred(procs))).await {
            Ok(Ok(procs)) => Ok(procs.clone()),
            Ok(Err(_)) => Err(Error::Setup("the pod runner has stopped".to_string())),
            Err(_) => Err(Error::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
            }),
        }
    }

    /// Waits until the pod has a process.
    pub async fn wait_started(&self, pod: &str, timeout: Duration) -> Result<Process> {
        self.wait_started_after(pod, None, timeout).await
    }

    /// Waits until the pod has a process started after `after` (a restart, or the
    /// process of a replacement pod): its `seq` is larger.
    pub async fn wait_started_after(
        &self,
        pod: &str,
        after: Option<&Process>,
        timeout: Duration,
    ) -> Result<Process> {
        let min_seq = after.map_or(0, |p| p.seq);
        let procs = self
            .wait_until(&format!("a new process of pod {pod}"), timeout, |procs| {
                procs.get(pod).is_some_and(|p| p.seq > min_seq)
            })
            .await?;
        procs
            .get(pod)
            .cloned()
            .ok_or_else(|| Error::Setup(format!("process of {pod} vanished")))
    }

    /// Waits until the pod has no process (it was stopped, or exited and not restarted).
    pub async fn wait_stopped(&self, pod: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("pod {pod} to have no process"), timeout, |procs| {
            !procs.contains_key(pod)
        })
        .await
        .map(drop)
    }

    /// Stops every process gracefully (SIGTERM, SIGKILL after the grace period) and
    /// the watches.
    pub async fn shutdown(mut self) {
        let _ = self.cancel.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            warn!(error = %e, "pod runner task failed");
        }
        info!(namespace = %self.cfg.namespace, "pod runner stopped");
    }
}

impl Drop for PodRunner {
    /// Without [`PodRunner::shutdown`]: SIGKILL every process now, stop the tasks.
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
            for process in self.shared.procs.borrow().values() {
                signal(process.pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether the runner should have a process for this pod: scheduled, Running, with an
/// IP, not terminating.
fn runnable(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && pod.metadata.uid.is_some()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty())
}

type Desired = Option<Arc<Pod>>;

/// The watch loop: one supervisor task per pod name.
async fn run(ctx: Arc<Ctx>, mut cancel: watch::Receiver<bool>) {
    // A JoinSet aborts its tasks when dropped, also when this task is aborted.
    let mut aux = JoinSet::new();
    if ctx.cfg.provision_volumes {
        aux.spawn(provisioner::run(
            ctx.client.clone(),
            ctx.cfg.namespace.clone(),
            ctx.cfg.state_dir.clone(),
        ));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.cfg.namespace);
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&ctx.cfg.selector);
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    futures::pin_mut!(stream);
    let mut supervisors: HashMap<String, watch::Sender<Desired>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    break;
                }
            }
            event = stream.next() => match event {
                None => break,
                Some(Err(e)) => {
                    warn!(namespace = %ctx.cfg.namespace, error = %e, "pod watch error (retrying)");
                }
                Some(Ok(_)) => dispatch(&ctx, &reader, &mut supervisors, &mut tasks),
            },
        }
    }
    // Graceful stop: a supervisor whose sender is gone stops its process and returns.
    drop(supervisors);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "pod supervisor failed");
        }
    }
    aux.abort_all();
}

fn dispatch(
    ctx: &Arc<Ctx>,
    reader: &Store<Pod>,
    supervisors: &mut HashMap<String, watch::Sender<Desired>>,
    tasks: &mut JoinSet<()>,
) {
    let pods: HashMap<String, Arc<Pod>> = reader
        .state()
        .into_iter()
        .filter_map(|pod| Some((pod.metadata.name.clone()?, pod)))
        .collect();
    for (name, pod) in &pods {
        if runnable(pod) && !supervisors.contains_key(name) {
            let (tx, rx) = watch::channel(None);
            supervisors.insert(name.clone(), tx);
            tasks.spawn(supervise(Arc::clone(ctx), name.clone(), rx));
        }
    }
    for (name, tx) in supervisors.iter() {
        let want = pods.get(name).filter(|pod| runnable(pod)).cloned();
        tx.send_if_modified(|current| {
            let same = match (current.as_ref(), want.as_ref()) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.metadata.uid == b.metadata.uid
                        && a.metadata.resource_version == b.metadata.resource_version
                }
                _ => false,
            };
            if !same {
                *current = want.clone();
            }
            !same
        });
    }
}

/// The process of the current pod UID of one pod name.
struct Running {
    child: Child,
    pid: u32,
    started: Instant,
}

/// The supervisor's state for one pod UID.
struct Incarnation {
    uid: String,
    pod: Arc<Pod>,
    dirs: PodDirs,
    running: Option<Running>,
    launch: Option<Launch>,
    starts: u32,
    failures: u32,
    next_start: Instant,
    /// The restart policy says not to start again.
    finished: bool,
    last_refresh_error: Option<String>,
    last_start_error: Option<String>,
}

enum Wake {
    Desired,
    Closed,
    Exited(std::io::Result<ExitStatus>),
    Retry,
    Refresh,
}

async fn wait_child(running: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Keeps the process of pod `name` in line with the pod object it is sent.
async fn supervise(ctx: Arc<Ctx>, name: String, mut desired: watch::Receiver<Desired>) {
    let mut current: Option<Incarnation> = None;
    let mut closed = false;
    let mut refresh = tokio::time::interval(ctx.cfg.refresh_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let want: Desired = if closed {
            None
        } else {
            desired.borrow_and_update().clone()
        };
        let want_uid = want.as_ref().and_then(|p| p.metadata.uid.clone());
        if current.as_ref().map(|c| &c.uid) != want_uid.as_ref() {
            if let Some(old) = current.take() {
                let reason = match (&want_uid, closed) {
                    (_, true) => "runner shutting down",
                    (Some(_), _) => "pod replaced (new UID)",
                    (None, _) => "pod deleted or terminating",
                };
                old.stop(&ctx, reason).await;
            }
            if let (Some(pod), Some(uid)) = (&want, want_uid) {
                current = Some(Incarnation::new(&ctx, &name, uid, Arc::clone(pod)));
            }
        } else if let (Some(cur), Some(pod)) = (current.as_mut(), &want) {
            cur.pod = Arc::clone(pod);
        }
        if closed && current.is_none() {
            return;
        }
        let Some(cur) = current.as_mut() else {
            if desired.changed().await.is_err() {
                closed = true;
            }
            continue;
        };
        if cur.running.is_none() && !cur.finished && cur.next_start <= Instant::now() {
            cur.start(&ctx).await;
        }
        let next_start = cur.next_start;
        let waiting = cur.running.is_none() && !cur.finished;
        let wake = tokio::select! {
            changed = desired.changed() => if changed.is_err() { Wake::Closed } else { Wake::Desired },
            status = wait_child(&mut cur.running) => Wake::Exited(status),
            _ = tokio::time::sleep_until(next_start), if waiting => Wake::Retry,
            _ = refresh.tick() => Wake::Refresh,
        };
        match wake {
            Wake::Desired | Wake::Retry => {}
            Wake::Closed => closed = true,
            Wake::Exited(status) => cur.exited(&ctx, status),
            Wake::Refresh => cur.refresh(&ctx).await,
        }
    }
}

/// Restart delay after `failures` quick exits: 1 s, 2 s, 4 s, 8 s, then 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(4)).min(10))
}

/// A process that ran at least this long resets the backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// Retry interval while a process cannot be started (its configuration is incomplete).
const START_RETRY: Duration = Duration::from_secs(1);

impl Incarnation {
    fn new(ctx: &Ctx, name: &str, uid: String, pod: Arc<Pod>) -> Incarnation {
        let dirs = PodDirs::new(&ctx.cfg.state_dir, &ctx.cfg.namespace, name, &uid);
        Incarnation {
            uid,
            pod,
            dirs,
            running: None,
            launch: None,
            starts: 0,
            failures: 0,
            next_start: Instant::now(),
            finished: false,
            last_refresh_error: None,
            last_start_error: None,
        }
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn pod_ip(&self) -> String {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    }

    /// Starts the process; if that is not possible yet (a Secret or claim missing, the
    /// binary absent), tries again every second, logging each new reason once.
    async fn start(&mut self, ctx: &Ctx) {
        match self.try_start(ctx).await {
            Ok(()) => self.last_start_error = None,
            Err(e) => {
                self.next_start = Instant::now() + START_RETRY;
                let text = e.to_string();
                if self.last_start_error.as_deref() != Some(text.as_str()) {
                    warn!(pod = %self.name(), uid = %self.uid, error = %text,
                        "cannot start the pod's process yet; retrying every second");
                    self.last_start_error = Some(text);
                }
            }
        }
    }

    async fn try_start(&mut self, ctx: &Ctx) -> Result<()> {
        let launch = podspec::prepare(
            &ctx.client,
            &self.pod,
            &self.dirs,
            &ctx.cfg.extra_env,
            ctx.cfg.bind_any_to_pod_ip,
        )
        .await?;
        let pod_dir = &self.dirs.pod_dir;
        fs::create_dir_all(pod_dir).map_err(|e| Error::io(pod_dir, e))?;
        let log_path = self.dirs.log(&self.uid);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        {
            use std::io::Write;
            let _ = writeln!(
                log,
                "=== kss-e2e podrunner: start {} of pod {} uid {} ip {} ===",
                self.starts + 1,
                self.name(),
                self.uid,
                self.pod_ip()
            );
        }
        let log_err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
        let mut command = match &ctx.setpriv {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&ctx.cfg.kss_bin);
                c
            }
            None => Command::new(&ctx.cfg.kss_bin),
        };
        command
            .args(&launch.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| Error::io(&ctx.cfg.kss_bin, e))?;
        let pid = child.id().unwrap_or_default();
        let pid_file = self.dirs.pid_file();
        fs::write(&pid_file, format!("{pid}\n")).map_err(|e| Error::io(&pid_file, e))?;
        self.starts += 1;
        let seq = ctx.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let process = Process {
            namespace: ctx.cfg.namespace.clone(),
            pod: self.name().to_string(),
            uid: self.uid.clone(),
            pod_ip: self.pod_ip(),
            pid,
            log: log_path,
            pid_file,
            starts: self.starts,
            seq,
            mounts: launch
                .mounts
                .entries()
                .map(|(m, h)| (m.to_string(), h.to_path_buf()))
                .collect(),
        };
        info!(pod = %self.name(), uid = %self.uid, pid, ip = %process.pod_ip, start = self.starts,
            log = %process.log.display(), "started the pod's process");
        ctx.shared.procs.send_modify(|procs| {
            procs.insert(process.pod.clone(), process);
        });
        self.running = Some(Running {
            child,
            pid,
            started: Instant::now(),
        });
        self.launch = Some(launch);
        self.last_refresh_error = None;
        Ok(())
    }

    fn forget_process(&self, ctx: &Ctx, pid: u32) {
        let name = self.name().to_string();
        ctx.shared.procs.send_if_modified(|procs| {
            if procs.get(&name).is_some_and(|p| p.pid == pid) {
                procs.remove(&name);
                true
            } else {
                false
            }
        });
        let pid_file = self.dirs.pid_file();
        if fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid.to_string()) {
            let _ = fs::remove_file(&pid_file);
        }
    }

    fn exited(&mut self, ctx: &Ctx, status: std::io::Result<ExitStatus>) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.forget_process(ctx, running.pid);
        let ran = running.started.elapsed();
        let success = status.as_ref().is_ok_and(|s| s.success());
        let status_text = match &status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always");
        let restart = match policy {
            "Never" => false,
            "OnFailure" => !success,
            _ => true,
        };
        if !restart {
            self.finished = true;
            info!(pod = %self.name(), uid = %self.uid, pid = running.pid, status = %status_text,
                restart_policy = policy, "process exited; not restarted");
            return;
        }
        if ran >= BACKOFF_RESET {
            self.failures = 0;
        }
        let delay = backoff(self.failures);
        self.failures += 1;
        self.next_start = Instant::now() + delay;
        warn!(pod = %self.name(), uid = %self.uid, pid = running.pid, status = %status_text,
            ran_ms = ran.as_millis() as u64, restart_in_s = delay.as_secs(),
            "process exited; restarting after backoff");
    }

    async fn refresh(&mut self, ctx: &Ctx) {
        if self.running.is_none() {
            return;
        }
        let Some(launch) = &self.launch else {
            return;
        };
        let mut objects = Objects::new(&ctx.client, &ctx.cfg.namespace);
        let name = self.name().to_string();
        for volume in &launch.file_volumes {
            match podspec::refresh(&mut objects, &self.pod, volume).await {
                Ok(true) => {
                    info!(pod = %name, uid = %self.uid, volume = %volume.volume.name,
                        "volume files updated");
                    self.last_refresh_error = None;
                }
                Ok(false) => {}
                Err(e) => {
                    let text = e.to_string();
                    if self.last_refresh_error.as_deref() != Some(text.as_str()) {
                        warn!(pod = %name, uid = %self.uid, volume = %volume.volume.name,
                            error = %text, "volume not refreshed (old files kept)");
                        self.last_refresh_error = Some(text);
                    }
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after the grace period.
    async fn stop(mut self, ctx: &Ctx, reason: &str) {
        let Some(mut running) = self.running.take() else {
            info!(pod = %self.name(), uid = %self.uid, reason, "pod gone; no process was running");
            return;
        };
        let grace_secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        let grace = Duration::from_secs(grace_secs).min(ctx.cfg.max_grace);
        info!(pod = %self.name(), uid = %self.uid, pid = running.pid, reason,
            grace_s = grace.as_secs(), "stopping the process (SIGTERM)");
        signal(running.pid, rustix::process::Signal::TERM);
        match tokio::time::timeout(grace, running.child.wait()).await {
            Ok(status) => {
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                info!(pod = %self.name(), uid = %self.uid, pid = running.pid, status = %status,
                    "process stopped");
            }
            Err(_) => {
                warn!(pod = %self.name(), uid = %self.uid, pid = running.pid,
                    "process still running after the grace period: SIGKILL");
                let _ = running.child.kill().await;
            }
        }
        self.forget_process(ctx, running.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let secs: Vec<u64> = (0..7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10, 10]);
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
