//! The daemon's life: [`Daemon::start`] (the store, the standalone lease, the always-on
//! listeners), [`Daemon::serve`] (the identity, then the workstation API until the
//! signal), and one way down, [`Daemon::stop`], whatever ended it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jiff::tz::TimeZone;
use kss_crypto::ciphertext::VerificationCache;
use kss_proto::v1::key_server_server::KeyServerServer;
use kss_store::{InstanceInfo, Lease, Store};
use rand::RngCore;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, instrument, warn};

use super::listeners::{self, Listeners};
use super::{ServeArgs, bounded_server};
use crate::bootstrap::{self, Checked, RECHECK_INTERVAL};
use crate::connections::{Connections, HandshakeThread, TlsIncoming, TrackRequests};
use crate::data_dir::{DataDir, DataDirArgs};
use crate::db_deadline::DbDeadline;
use crate::decider::{Decider, DecisionTask, MemoryCounters};
use crate::identity::KeyserverIdentity;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::reloading_tls::ReloadingTls;
use crate::requests::Keyserver;
use crate::requests::onboarding::OnboardingGate;
use crate::requests::profiles::ProfileCache;
use crate::requests::shares::ShareCache;
use crate::requests::verifier::Verifier;
use crate::service::admin::{AdminMode, AdminService, Mode};
use crate::service::keyserver::KeyServerService;
use crate::shutdown::Shutdown;
use crate::standalone;
use crate::switches;

/// Largest gRPC message accepted (a decrypt request is well under 2 KiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Verified ciphertext digests remembered.
const VERIFIED_CIPHERTEXTS: usize = 100_000;

/// A started daemon: what runs whatever the instance's state.
pub struct Daemon {
    args: ServeArgs,
    data_dir: DataDir,
    mode: Mode,
    time_zone: TimeZone,
    store: Arc<dyn Store>,
    shutdown: Arc<Shutdown>,
    info: InstanceInfo,
    /// The standalone lease (none in cluster mode), kept by `lease_keeper` until
    /// `decided_all` says the last decision is made.
    lease: Option<Lease>,
    lease_keeper: Option<JoinHandle<()>>,
    decided_all: oneshot::Sender<()>,
    metrics: Arc<Metrics>,
    listeners: Listeners,
    workstation_tls: Arc<ReloadingTls>,
    /// The CA of `--self-signed-tls`, for clients to trust.
    generated_ca: Option<PathBuf>,
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// What serves beside the gRPC server, until it has drained.
struct Serving {
    handshake_thread: HandshakeThread,
    decider_task: JoinHandle<()>,
    watcher: JoinHandle<()>,
    readiness: JoinHandle<()>,
    membership: JoinHandle<()>,
}

impl Daemon {
    /// Opens the store, takes the standalone lease (waiting while another server holds
    /// it), and starts the always-on listeners. `None`: stopped while waiting for the
    /// lease (nothing else was started).
    pub async fn start(args: ServeArgs, dir: &DataDirArgs) -> Result<Option<Daemon>> {
        let data_dir = dir.data_dir();
        data_dir.ensure()?;
        let time_zone = kss_policy::time_zone(&args.time_zone).map_err(anyhow::Error::msg)?;
        let mode = if data_dir.shared_db_uri()?.is_some() {
            Mode::Cluster
        } else {
            Mode::Standalone
        };
        // Listener configurations are checked before anything else happens.
        let admin_tls = args.pod.admin_listener()?;
        let store = data_dir
            .open_store_with(args.sqlite_sync.durability())
            .await?;
        // Read now so that a missing key stops the server at once (it is read again at
        // every identity check).
        drop(data_dir.read_master_key()?);
        let mut tls_args = args.tls.clone();
        tls_args.self_signed_tls |= args.dev && tls_args.tls_cert.is_none();
        let (tls_files, generated_ca) = crate::tls::server_files(&tls_args, &data_dir)?;
        let workstation_tls = ReloadingTls::load("workstation", tls_files)?;

        let shutdown = Arc::new(Shutdown::default());
        tokio::spawn({
            let shutdown = Arc::clone(&shutdown);
            async move {
                wait_for_signal().await;
                info!("shutting down: no new requests; finishing those in flight");
                shutdown.stop();
            }
        });
        let info = instance_info(&args);
        let lease_ttl = Duration::from_secs(args.standalone_lease_secs.max(1));
        // Standalone (the data directory's SQLite file): one active server, by lease.
        let claimed = match mode {
            Mode::Cluster => None,
            Mode::Standalone => {
                let holder = format!("{}/{}", info.name, info.incarnation);
                match standalone::acquire(store.as_ref(), &holder, lease_ttl, &shutdown).await? {
                    Some(claimed) => Some(claimed),
                    None => {
                        store.close().await;
                        return Ok(None);
                    }
                }
            }
        };
        let lease = claimed.as_ref().map(|c| c.lease.clone());
        // The lease is released only once the last decision is made (not at the signal),
        // so a server taking over never fences off requests this one is finishing.
        let (decided_all, decided_all_rx) = oneshot::channel::<()>();
        let lease_keeper = claimed.map(|claimed| {
            tokio::spawn(standalone::keep(
                Arc::clone(&store),
                claimed,
                lease_ttl,
                Arc::clone(&shutdown),
                async move {
                    let _ = decided_all_rx.await;
                },
            ))
        });
        let metrics = Arc::new(Metrics::new());
        let listeners = Listeners::start(
            &args,
            admin_tls,
            &data_dir,
            lease.is_some(),
            &metrics,
            &shutdown,
        )
        .await;
        let listeners = match listeners {
            Ok(listeners) => listeners,
            Err(e) => {
                shutdown.stop();
                let_lease_go(decided_all, lease_keeper).await;
                store.close().await;
                return Err(e);
            }
        };
        Ok(Some(Daemon {
            args,
            data_dir,
            mode,
            time_zone,
            store,
            shutdown,
            info,
            lease,
            lease_keeper,
            decided_all,
            metrics,
            listeners,
            workstation_tls,
            generated_ca,
        }))
    }

    /// Serves until the shutdown signal (or a failure), then stops: the identity first
    /// (with `--bootstrap-identity` the instance may refuse to serve until it checks out,
    /// see [`bootstrap`]), then the workstation listener.
    pub async fn serve(self) -> Result<()> {
        let identity = match self.identity().await {
            Ok(Some(identity)) => Arc::new(identity),
            // Stopped while refusing (nothing was served), or nothing to serve.
            other => return self.stop(None, other.map(drop)).await,
        };
        match self.start_serving(identity).await {
            Ok((server, serving)) => {
                let served = match server.await {
                    Ok(served) => served.context("serving gRPC"),
                    Err(e) => Err(anyhow::Error::new(e).context("the gRPC server's task")),
                };
                if let Err(e) = &served {
                    error!(error = %format!("{e:#}"), "gRPC server failed");
                }
                self.stop(Some(serving), served).await
            }
            Err(e) => self.stop(None, Err(e)).await,
        }
    }

    /// The identity to serve: the stored one, or with `--bootstrap-identity` or
    /// `--keyserver-id` the one that checks out. `None`: stopped while refusing.
    async fn identity(&self) -> Result<Option<KeyserverIdentity>> {
        let pod = &self.args.pod;
        if pod.bootstrap_identity.is_none() && pod.keyserver_id.is_none() {
            let master = self.data_dir.read_master_key()?;
            return KeyserverIdentity::load(self.store.as_ref(), &master)
                .await
                .map(Some);
        }
        let configured = bootstrap::Configured {
            bootstrap: pod.bootstrap_identity.as_deref(),
            pin: pod.keyserver_id,
            instance_id: &self.info.name,
        };
        wait_for_identity(
            self.store.as_ref(),
            &self.data_dir,
            configured,
            &self.listeners.admin_mode,
            &self.shutdown,
        )
        .await
    }

    /// Prepares the database for `identity` (legacy rows' MACs, the audit chain), starts
    /// the decision task, the policy watcher and the registry, and serves workstations:
    /// the gRPC server's task (it ends at the shutdown signal) and what serves with it.
    async fn start_serving(
        &self,
        identity: Arc<KeyserverIdentity>,
    ) -> Result<(ServerTask, Serving)> {
        let (args, store, metrics, shutdown) =
            (&self.args, &self.store, &self.metrics, &self.shutdown);
        // Bound before "serving" is announced, so that a client told so can connect.
        let connections = Connections::new(
            args.transport.connection_limits(),
            Some(Arc::clone(metrics)),
        );
        let handshake_thread = HandshakeThread::start()?;
        let incoming = TlsIncoming::new(
            Arc::clone(&self.workstation_tls),
            TcpIncoming::bind(args.listen)
                .with_context(|| format!("binding {}", args.listen))?
                .with_nodelay(Some(true)),
            Arc::clone(&connections),
        )
        .handshakes_on(&handshake_thread);
        Arc::clone(&self.workstation_tls).watch(
            args.tls_reload_every(),
            Arc::clone(metrics),
            shutdown.stopped(),
        );
        let instance_id = self.info.name.clone();
        let master = self.data_dir.read_master_key()?;
        crate::integrity::adopt_legacy_rows(store.as_ref(), &identity, &master).await?;
        // The audit chain's key; a database from before the chain gets its genesis now,
        // and the identity's seal records from then on that the chain has started.
        store.set_audit_key(identity.chain_key());
        store
            .append_audit(&[])
            .await
            .context("starting the audit chain")?;
        crate::integrity::seal_chain_started(store.as_ref(), &identity, &master).await?;
        drop(master);
        if let Some(retention) = args.audit_retention {
            tokio::spawn(crate::audit_log::prune_periodically(
                Arc::clone(store),
                instance_id.clone(),
                retention,
                Duration::from_secs(args.max_clock_skew),
                crate::audit_log::prune_interval(retention),
                shutdown.stopped(),
            ));
        }
        let initial = switches::load(
            store.as_ref(),
            &switches::PolicyCheck {
                key: identity.row_key(),
                checker: &crate::integrity::RowChecker::default(),
                metrics,
            },
        )
        .await?;
        let policy_version = initial.policy.version;
        let (switches_tx, switches_rx) = watch::channel(Arc::new(initial));
        let db_deadline = DbDeadline::new(Duration::from_millis(args.db_timeout_ms));
        let watcher = tokio::spawn(switches::watch(
            Arc::clone(store),
            switches_tx,
            Duration::from_millis(args.poll_interval_ms.max(50)),
            db_deadline,
            Arc::clone(metrics),
            Arc::clone(&identity),
        ));
        let membership = Membership {
            store: Arc::clone(store),
            info: self.info.clone(),
            switches: switches_rx.clone(),
            metrics: Arc::clone(metrics),
        };
        membership.register().await;
        let membership = tokio::spawn(membership.run(shutdown.stopped()));
        let memory = Arc::new(Mutex::new(MemoryCounters::default()));
        let (decider, decider_task) = Decider::start(DecisionTask {
            store: Arc::clone(store),
            switches: switches_rx.clone(),
            memory: Arc::clone(&memory),
            time_zone: self.time_zone.clone(),
            instance_id: instance_id.clone(),
            metrics: Arc::clone(metrics),
            fence: self.lease.clone(),
            shutdown: Arc::clone(shutdown),
            deadline: db_deadline,
        });

        let keyserver = KeyServerService {
            connections: Some(Arc::clone(&connections)),
            core: Arc::new(Keyserver {
                identity: Arc::clone(&identity),
                store: Arc::clone(store),
                decider,
                switches: switches_rx.clone(),
                profiles: ProfileCache::new(
                    Arc::clone(&identity),
                    Arc::clone(store),
                    Arc::clone(metrics),
                    db_deadline,
                ),
                verifier: Verifier::new(
                    VerificationCache::new(VERIFIED_CIPHERTEXTS),
                    Arc::clone(metrics),
                )
                .with_niceness(args.verify_niceness),
                shares: ShareCache::default(),
                metrics: Arc::clone(metrics),
                onboarding: OnboardingGate::new(
                    args.require_enrollment_token,
                    args.max_onboard_per_minute,
                ),
                max_clock_skew: Duration::from_secs(args.max_clock_skew),
                reject_log: Default::default(),
                db_deadline,
            }),
        };
        self.listeners
            .admin_mode
            .send_replace(AdminMode::Serving(Arc::new(AdminService {
                identity: Arc::clone(&identity),
                store: Arc::clone(store),
                switches: switches_rx.clone(),
                memory,
                started: Instant::now(),
                instance_id: instance_id.clone(),
                time_zone: self.time_zone.clone(),
                mode: self.mode,
                metrics: Arc::clone(metrics),
                checker: crate::integrity::RowChecker::default(),
            })));

        let health = &self.listeners.health;
        listeners::set_ready(health, switches_rx.borrow().database_ok).await;
        let readiness = tokio::spawn(listeners::follow_readiness(
            health.clone(),
            switches_rx.clone(),
            shutdown.stopped(),
        ));

        info!(
            keyserver_id = %identity.id,
            listen = %args.listen,
            metrics = %args.metrics_listen,
            policy_version,
            instance = %instance_id,
            mode = self.mode.as_str(),
            "kss keyserver serving"
        );
        println!(
            "kss keyserver {} serving on https://{}",
            identity.id, args.listen
        );
        if let Some(ca) = &self.generated_ca {
            println!("clients trust the CA in {}", ca.display());
        }

        // The service (and with it the decider) is dropped when the server ends.
        let server = tokio::spawn(
            bounded_server(&args.transport)
                .layer(TrackRequests::new(connections))
                .add_service(listeners::health_service(health))
                .add_service(listeners::reflection_v1()?)
                .add_service(listeners::reflection_v1alpha()?)
                .add_service(
                    KeyServerServer::new(keyserver).max_decoding_message_size(MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, shutdown.stopped()),
        );
        Ok((
            server,
            Serving {
                handshake_thread,
                decider_task,
                watcher,
                readiness,
                membership,
            },
        ))
    }

    /// The one way down: stops what still runs (when `serving`, after its last
    /// decision), lets the lease go, removes the admin socket, closes the store; then
    /// `outcome`, or the failure that stopped the server.
    async fn stop(self, serving: Option<Serving>, outcome: Result<()>) -> Result<()> {
        self.shutdown.stop();
        if let Some(serving) = serving {
            serving.drain().await;
        }
        let_lease_go(self.decided_all, self.lease_keeper).await;
        self.listeners.stop(&self.data_dir).await;
        self.store.close().await;
        info!("stopped");
        outcome?;
        match self.shutdown.failure() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }
}

/// Tells the lease keeper that the last decision is made, and waits until it has
/// released the standalone lease.
async fn let_lease_go(decided_all: oneshot::Sender<()>, keeper: Option<JoinHandle<()>>) {
    let _ = decided_all.send(());
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
}

impl Serving {
    /// Once the gRPC server has ended: waits until the decision task has decided every
    /// request still holding it, then stops the rest.
    async fn drain(self) {
        drop(self.handshake_thread);
        if self.decider_task.await.is_err() {
            warn!("decision task ended abnormally");
        }
        self.watcher.abort();
        let _ = self.readiness.await;
        // Marks this instance stopped in the registry.
        let _ = self.membership.await;
    }
}

/// With --bootstrap-identity or --keyserver-id: checks (and bootstraps or reseals) the
/// identity; while this instance
/// must refuse to serve, says why on the admin API and in the log, and checks again every
/// [`RECHECK_INTERVAL`]. `None`: stopped (SIGTERM) while refusing. An error: the first
/// check could not be made.
#[instrument(skip_all, fields(
    bootstrap_identity = ?configured.bootstrap,
    keyserver_id = ?configured.pin.map(|id| id.to_string()),
))]
async fn wait_for_identity(
    store: &dyn Store,
    data_dir: &DataDir,
    configured: bootstrap::Configured<'_>,
    admin_mode: &watch::Sender<AdminMode>,
    shutdown: &Shutdown,
) -> Result<Option<KeyserverIdentity>> {
    let stopped = shutdown.stopped();
    tokio::pin!(stopped);
    let mut refused = false;
    loop {
        match bootstrap::check(store, data_dir, configured).await {
            Ok(Checked::Serve(identity)) => {
                if refused {
                    info!(keyserver_id = %identity.id, "the identity checks out now: serving");
                }
                return Ok(Some(identity));
            }
            Ok(Checked::Refuse(refusal)) => {
                error!(reason = refusal.reason(), "{refusal}");
                refused = true;
                admin_mode.send_replace(AdminMode::Refusing(refusal.into()));
            }
            Err(e) if !refused => return Err(e).context("checking the keyserver identity"),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot check the keyserver identity again yet; still refusing");
            }
        }
        tokio::select! {
            _ = &mut stopped => return Ok(None),
            _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
        }
    }
}

/// This process's entry in the registry.
fn instance_info(args: &ServeArgs) -> InstanceInfo {
    let host = hostname();
    let mut incarnation = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut incarnation);
    InstanceInfo {
        name: args
            .instance_name
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        incarnation: hex::encode(incarnation),
        endpoint: args
            .advertise_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{host}:{}", args.listen.port())),
        hostname: host,
        kss_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: crate::clock::now_ms(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C can stop us.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kss".to_string())
}
