//! `kss serve`: wires the store, the decision task and the gRPC services, and runs them
//! until SIGTERM or SIGINT (then stops accepting and finishes in-flight requests).
//!
//! Order: the store, the standalone lease, the listeners that run in every state (admin
//! socket, metrics, `--health-listen`, `--admin-listen`), then the identity (with
//! `--bootstrap-identity`, the instance may refuse to serve until it checks out, see
//! [`bootstrap`](crate::bootstrap)), and only then the workstation listener.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kss_crypto::ciphertext::VerificationCache;
use kss_proto::v1::admin_server::AdminServer;
use kss_proto::v1::key_server_server::KeyServerServer;
use kss_store::{Durability, InstanceInfo, Store};
use rand::RngCore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, instrument, warn};

use crate::bootstrap::{self, Checked, RECHECK_INTERVAL};
use crate::connections::{
    ConnectionLimits, Connections, HandshakeThread, TlsIncoming, TrackRequests,
};
use crate::data_dir::{DataDir, DataDirArgs};
use crate::db_deadline::DbDeadline;
use crate::decider::{Decider, DecisionTask, MemoryCounters};
use crate::identity::KeyserverIdentity;
use crate::membership::Membership;
use crate::metrics::{self, Metrics};
use crate::pod::{AdminListener, PodArgs};
use crate::reloading_tls::ReloadingTls;
use crate::requests::Keyserver;
use crate::requests::onboarding::OnboardingGate;
use crate::requests::profiles::ProfileCache;
use crate::requests::shares::ShareCache;
use crate::requests::verifier::Verifier;
use crate::service::admin::{AdminGate, AdminMode, AdminService, Mode};
use crate::service::keyserver::KeyServerService;
use crate::shutdown::Shutdown;
use crate::standalone;
use crate::switches::{self, Switches};
use crate::tls::{self, TlsArgs};

/// Largest gRPC message accepted (a decrypt request is well under 2 KiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message the health and reflection services accept (their requests name a
/// service or a symbol).
const SMALL_MESSAGE_BYTES: usize = 4 * 1024;
/// Largest HTTP/2 header list accepted (gRPC requests send a few short headers).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Verified ciphertext digests remembered.
const VERIFIED_CIPHERTEXTS: usize = 100_000;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the gRPC listener (TLS).
    #[arg(long, env = "KSS_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Address of the Prometheus `/metrics` listener (plain HTTP).
    #[arg(long, env = "KSS_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// The keyserver's time zone (IANA name): calendar hours and days of quotas, dates,
    /// weekdays and times of the policy.
    #[arg(long, env = "KSS_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// How far (seconds) a request's timestamp may be from this server's clock.
    #[arg(long, default_value_t = 300)]
    pub max_clock_skew: u64,
    /// How often (milliseconds) the database is polled for a new policy version and the
    /// enabled switch.
    #[arg(long, default_value_t = 500)]
    pub poll_interval_ms: u64,
    /// How long (milliseconds) a request, a decision batch or a poll may wait on the
    /// database: past it, the request is denied `unavailable` (a database that hangs
    /// without closing its connections does not hold requests).
    #[arg(long, env = "KSS_DB_TIMEOUT_MS", default_value_t = crate::db_deadline::DEFAULT_DB_TIMEOUT_MS)]
    pub db_timeout_ms: u64,
    /// When a decision is on disk before it is returned: `full` syncs every commit (an
    /// approval survives a power loss); `normal` survives a crash of the process but not
    /// of the host, for lower latency.
    #[arg(long, env = "KSS_SQLITE_SYNC", value_parser = ["full", "normal"], default_value = "full")]
    pub sqlite_sync: String,
    /// This instance's name in the registry (`kss instance list`): stable across restarts
    /// where the platform gives one (a StatefulSet pod's name). Default: host name and
    /// process id.
    #[arg(long, env = "KSS_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// The address workstations reach this instance at, as shown in the registry.
    /// Default: https://<host name>:<listen port>.
    #[arg(long, env = "KSS_ADVERTISE_ENDPOINT")]
    pub advertise_endpoint: Option<String>,
    /// Standalone mode: how long (seconds) the lease that makes this the one active server
    /// on its data lasts without renewal; a server that died is replaced after this long.
    #[arg(long, default_value_t = 10)]
    pub standalone_lease_secs: u64,
    /// Quick start: self-signed TLS, and create a keyserver identity if there is none,
    /// with a backup key held by one generated administrator key (NOT for production).
    #[arg(long)]
    pub dev: bool,
    /// Onboarding requires an enrollment token (`kss enrollment create`). Without it, the
    /// policy's create_profile section alone decides (approved when it is absent).
    #[arg(long, env = "KSS_REQUIRE_ENROLLMENT_TOKEN")]
    pub require_enrollment_token: bool,
    /// Onboardings this instance admits per minute (also the burst); 0: none.
    #[arg(long, env = "KSS_MAX_ONBOARD_PER_MINUTE", default_value_t = 60)]
    pub max_onboard_per_minute: u32,
    /// Prune audit rows older than this (90d, 12h, ...) every tenth of it (at least every
    /// hour, at most every 10 s); rows younger than twice --max-clock-skew are always
    /// kept. Default: keep every row.
    #[arg(long, env = "KSS_AUDIT_RETENTION", value_parser = crate::audit_log::parse_age)]
    pub audit_retention: Option<Duration>,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// Bounds on what a client can hold of the workstation listener.
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// TLS handshakes run at once at most; past it, new connections wait in the backlog
    /// (`kss_transport_limited_total{limit="handshakes"}`).
    #[arg(long, env = "KSS_MAX_HANDSHAKES", default_value_t = 32)]
    pub max_handshakes: usize,
    /// HTTP/2 streams (requests in flight) one connection may have open at once.
    #[arg(long, env = "KSS_MAX_STREAMS_PER_CONNECTION", default_value_t = 64)]
    pub max_streams_per_connection: u32,
    /// Seconds a request may take before it is answered DEADLINE_EXCEEDED.
    #[arg(long, env = "KSS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds between HTTP/2 pings on a quiet connection; a peer that does not answer
    /// within 20 s is dropped (also TCP keepalive). 0: no pings.
    #[arg(long, env = "KSS_KEEPALIVE_SECS", default_value_t = 60)]
    pub keepalive_secs: u64,
    /// Seconds a connection may live; it is then closed gracefully (30 s for its requests
    /// in flight) and the client reconnects. Bounds what an idle client holds. 0: no limit.
    #[arg(long, env = "KSS_MAX_CONNECTION_AGE_SECS", default_value_t = 3600)]
    pub max_connection_age_secs: u64,
    /// Connections open at once; one more is closed at once
    /// (`kss_transport_limited_total{limit="connections"}`). 0: no limit.
    #[arg(long, env = "KSS_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv4 address, an IPv6 /64);
    /// one more is closed at once (`limit="connections_per_address"`). Workstations behind
    /// one NAT share an address: size it for them. 0: no limit.
    #[arg(long, env = "KSS_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,
    /// Seconds a connection may stay open with no request in flight before it is closed
    /// (`limit="idle_timeout"`; the client reconnects when it next sends). 0: never.
    #[arg(long, env = "KSS_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Requests from one client address (an IPv4 address, an IPv6 /64) that may be refused
    /// before authentication in a burst (refilled at a tenth of it per second); while it is
    /// spent, each request from the address waits 1 s before it is looked at
    /// (`limit="refusals"`), so that a flood of made-up requests costs its sender time
    /// rather than the keyserver work, over however many connections. 0: no limit.
    #[arg(long, env = "KSS_REFUSALS_PER_ADDRESS", default_value_t = 32)]
    pub refusals_per_address: u32,
}

impl TransportArgs {
    fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_total: self.max_connections,
            max_per_address: self.max_connections_per_address,
            max_handshakes: self.max_handshakes,
            idle_timeout: (self.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(self.idle_timeout_secs)),
            refusals_per_address: self.refusals_per_address,
        }
    }
}

/// The workstation listener's HTTP/2 server with the transport bounds.
fn bounded_server(t: &TransportArgs) -> Server {
    let keepalive = (t.keepalive_secs > 0).then(|| Duration::from_secs(t.keepalive_secs));
    let mut server = Server::builder()
        .max_concurrent_streams(t.max_streams_per_connection.max(1))
        .timeout(Duration::from_secs(t.request_timeout_secs.max(1)))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(keepalive)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024));
    if t.max_connection_age_secs > 0 {
        server = server
            .max_connection_age(Duration::from_secs(t.max_connection_age_secs))
            .max_connection_age_grace(Duration::from_secs(30));
    }
    server
}

pub async fn run(args: ServeArgs, dir: &DataDirArgs) -> Result<()> {
    let data_dir = dir.data_dir();
    data_dir.ensure()?;
    let time_zone = kss_policy::time_zone(&args.time_zone).map_err(anyhow::Error::msg)?;
    let durability = if args.sqlite_sync == "normal" {
        Durability::Normal
    } else {
        Durability::Full
    };
    let shared = data_dir.shared_db_uri()?.is_some();
    let mode = if shared {
        Mode::Cluster
    } else {
        Mode::Standalone
    };
    // Listener configurations are checked before anything else happens.
    let admin_tls = args.pod.admin_listener()?;
    let store = crate::commands::open_store_with(&data_dir, durability).await?;
    if args.dev && store.identity().await?.is_none() {
        crate::commands::create::create_dev_identity(store.as_ref(), &data_dir).await?;
    }
    // Read now so that a missing key stops the server at once (it is read again at every
    // identity check).
    drop(data_dir.read_master_key()?);
    let mut tls_args = args.tls.clone();
    tls_args.self_signed_tls |= args.dev && tls_args.tls_cert.is_none();
    let (tls_files, generated_ca) = tls::server_files(&tls_args, &data_dir)?;
    let workstation_tls = ReloadingTls::load("workstation", tls_files)?;
    let tls_reload_every = Duration::from_secs(args.tls.tls_reload_secs);

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
    // Standalone (the data directory's SQLite file): one active server, by lease.
    let claimed = if shared {
        None
    } else {
        let holder = format!("{}/{}", info.name, info.incarnation);
        let ttl = Duration::from_secs(args.standalone_lease_secs.max(1));
        match standalone::acquire(store.as_ref(), &holder, ttl, &shutdown).await? {
            Some(claimed) => Some(claimed),
            None => {
                store.close().await;
                return Ok(());
            }
        }
    };
    let lease = claimed.as_ref().map(|c| c.lease.clone());
    // The lease is released only once the last decision is made (not at the signal), so
    // a server taking over never fences off requests this one is finishing.
    let (decided_all, decided_all_rx) = tokio::sync::oneshot::channel::<()>();
    let lease_keeper = claimed.map(|claimed| {
        tokio::spawn(standalone::keep(
            Arc::clone(&store),
            claimed,
            Duration::from_secs(args.standalone_lease_secs.max(1)),
            Arc::clone(&shutdown),
            async move {
                let _ = decided_all_rx.await;
            },
        ))
    });

    let admin_socket = crate::admin_socket::bind(&data_dir, lease.is_some()).await?;
    let admin_socket_inode = admin_socket.inode;
    let metrics = Arc::new(Metrics::new());
    let metrics_task = tokio::spawn(metrics::serve(
        args.metrics_listen,
        Arc::clone(&metrics),
        shutdown.stopped(),
    ));
    // Health: "" is live from now on; kss.v1.KeyServer is ready only while this instance
    // decides requests.
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_service = health_service.max_decoding_message_size(SMALL_MESSAGE_BYTES);
    set_ready(&health, false).await;
    // The health listener outlives the others: probes see NOT_SERVING, not a refused
    // connection, until the process exits.
    let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_task = match args.pod.health_listen {
        Some(addr) => {
            let incoming = TcpIncoming::bind(addr)
                .with_context(|| format!("binding {addr} (--health-listen)"))?;
            info!(listen = %addr, "health probes: plaintext gRPC (grpc.health.v1)");
            Some(tokio::spawn(
                Server::builder()
                    .add_service(health_service.clone())
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = health_stopped.await;
                    }),
            ))
        }
        None => None,
    };
    let (admin_mode, admin_mode_rx) = watch::channel(AdminMode::Starting);
    let admin_task = tokio::spawn(
        Server::builder()
            .add_service(AdminServer::new(AdminGate {
                mode: admin_mode_rx.clone(),
            }))
            .serve_with_incoming_shutdown(
                crate::admin_socket::connections(admin_socket.listener),
                shutdown.stopped(),
            ),
    );
    let admin_tls_task = match admin_tls {
        Some(AdminListener { addr, tls }) => {
            let tcp = TcpIncoming::bind(addr)
                .with_context(|| format!("binding {addr} (--admin-listen)"))?;
            let incoming = TlsIncoming::new(
                Arc::clone(&tls),
                tcp,
                Connections::new(ConnectionLimits::unlimited(), None),
            );
            Arc::clone(&tls).watch(tls_reload_every, Arc::clone(&metrics), shutdown.stopped());
            let server = Server::builder()
                .add_service(health_service.clone())
                .add_service(reflection_v1()?)
                .add_service(AdminServer::new(AdminGate {
                    mode: admin_mode_rx,
                }));
            info!(listen = %addr, "admin API: gRPC over mutual TLS");
            Some(tokio::spawn(
                server.serve_with_incoming_shutdown(incoming, shutdown.stopped()),
            ))
        }
        None => None,
    };
    let listeners = Listeners {
        health_stop,
        health_task,
        admin_task,
        admin_tls_task,
        metrics_task,
        admin_socket_inode,
    };

    let identity = match args.pod.bootstrap_identity.as_deref() {
        Some(bootstrap) => {
            wait_for_identity(store.as_ref(), &data_dir, bootstrap, &admin_mode, &shutdown).await
        }
        None => load_identity(store.as_ref(), &data_dir).await.map(Some),
    };
    let identity = match identity {
        Ok(Some(identity)) => Arc::new(identity),
        // Stopped while refusing (nothing was served), or nothing to serve.
        other => {
            shutdown.stop();
            let _ = decided_all.send(());
            if let Some(keeper) = lease_keeper {
                let _ = keeper.await;
            }
            listeners.stop(&data_dir).await;
            store.close().await;
            info!("stopped");
            other?;
            return match shutdown.failure() {
                Some(why) => bail!("{why}"),
                None => Ok(()),
            };
        }
    };

    // Bound before "serving" is announced, so that a client told so can connect.
    let connections = Connections::new(
        args.transport.connection_limits(),
        Some(Arc::clone(&metrics)),
    );
    let handshake_thread = HandshakeThread::start()?;
    let incoming = TlsIncoming::new(
        Arc::clone(&workstation_tls),
        TcpIncoming::bind(args.listen)
            .with_context(|| format!("binding {}", args.listen))?
            .with_nodelay(Some(true)),
        Arc::clone(&connections),
    )
    .handshakes_on(&handshake_thread);
    Arc::clone(&workstation_tls).watch(tls_reload_every, Arc::clone(&metrics), shutdown.stopped());
    let instance_id = info.name.clone();
    let master = data_dir.read_master_key()?;
    crate::integrity::adopt_legacy_rows(store.as_ref(), &identity, &master).await?;
    // The audit chain's key; a database from before the chain gets its genesis now, and
    // the identity's seal records from then on that the chain has started.
    store.set_audit_key(identity.chain_key());
    store
        .append_audit(&[])
        .await
        .context("starting the audit chain")?;
    crate::integrity::seal_chain_started(store.as_ref(), &identity, &master).await?;
    drop(master);
    if let Some(retention) = args.audit_retention {
        tokio::spawn(crate::audit_log::prune_periodically(
            Arc::clone(&store),
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
            metrics: &metrics,
        },
    )
    .await?;
    let policy_version = initial.policy.version;
    let (switches_tx, switches_rx) = watch::channel(Arc::new(initial));
    let db_deadline = DbDeadline::new(Duration::from_millis(args.db_timeout_ms));
    let watcher = tokio::spawn(switches::watch(
        Arc::clone(&store),
        switches_tx,
        Duration::from_millis(args.poll_interval_ms.max(50)),
        db_deadline,
        Arc::clone(&metrics),
        Arc::clone(&identity),
    ));
    let membership = Membership {
        store: Arc::clone(&store),
        info,
        switches: switches_rx.clone(),
        metrics: Arc::clone(&metrics),
    };
    membership.register().await;
    let membership = tokio::spawn(membership.run(shutdown.stopped()));
    let memory = Arc::new(Mutex::new(MemoryCounters::default()));
    let (decider, decider_task) = Decider::start(DecisionTask {
        store: Arc::clone(&store),
        switches: switches_rx.clone(),
        memory: Arc::clone(&memory),
        time_zone: time_zone.clone(),
        instance_id: instance_id.clone(),
        metrics: Arc::clone(&metrics),
        fence: lease,
        shutdown: Arc::clone(&shutdown),
        deadline: db_deadline,
    });

    let keyserver = Arc::new(KeyServerService {
        connections: Some(Arc::clone(&connections)),
        core: Arc::new(Keyserver {
            identity: Arc::clone(&identity),
            store: Arc::clone(&store),
            decider,
            switches: switches_rx.clone(),
            profiles: ProfileCache::new(
                Arc::clone(&identity),
                Arc::clone(&store),
                Arc::clone(&metrics),
                db_deadline,
            ),
            verifier: Verifier::new(
                VerificationCache::new(VERIFIED_CIPHERTEXTS),
                Arc::clone(&metrics),
            ),
            shares: ShareCache::default(),
            metrics: Arc::clone(&metrics),
            onboarding: OnboardingGate::new(
                args.require_enrollment_token,
                args.max_onboard_per_minute,
            ),
            max_clock_skew: Duration::from_secs(args.max_clock_skew),
            reject_log: Default::default(),
            db_deadline,
        }),
    });
    admin_mode.send_replace(AdminMode::Serving(Arc::new(AdminService {
        identity: Arc::clone(&identity),
        store: Arc::clone(&store),
        switches: switches_rx.clone(),
        memory,
        started: Instant::now(),
        instance_id: instance_id.clone(),
        time_zone,
        mode,
        metrics: Arc::clone(&metrics),
        checker: crate::integrity::RowChecker::default(),
    })));

    set_ready(&health, switches_rx.borrow().database_ok).await;
    let readiness = tokio::spawn(follow_readiness(
        health,
        switches_rx.clone(),
        shutdown.stopped(),
    ));

    info!(
        keyserver_id = %identity.id,
        listen = %args.listen,
        metrics = %args.metrics_listen,
        policy_version,
        instance = %instance_id,
        mode = mode.as_str(),
        "kss keyserver serving"
    );
    println!(
        "kss keyserver {} serving on https://{}",
        identity.id, args.listen
    );
    if let Some(ca) = &generated_ca {
        println!("clients trust the CA in {}", ca.display());
    }

    let served = bounded_server(&args.transport)
        .layer(TrackRequests::new(connections))
        .add_service(health_service)
        .add_service(reflection_v1()?)
        .add_service(reflection_v1alpha()?)
        .add_service(
            KeyServerServer::from_arc(Arc::clone(&keyserver))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.stopped())
        .await;
    drop(handshake_thread);
    drop(keyserver);
    if let Err(e) = &served {
        error!(error = %e, "gRPC server failed");
        shutdown.stop();
    }
    // The decision task ends once every request holding a Decider is done.
    if decider_task.await.is_err() {
        warn!("decision task ended abnormally");
    }
    let _ = decided_all.send(());
    watcher.abort();
    let _ = readiness.await;
    // Marks this instance stopped, and releases the standalone lease.
    let _ = membership.await;
    if let Some(keeper) = lease_keeper {
        let _ = keeper.await;
    }
    listeners.stop(&data_dir).await;
    store.close().await;
    info!("stopped");
    served.with_context(|| format!("serving gRPC on {}", args.listen))?;
    match shutdown.failure() {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// Without --bootstrap-identity: the stored identity, or the error that stops the server.
async fn load_identity(store: &dyn Store, data_dir: &DataDir) -> Result<KeyserverIdentity> {
    let master = data_dir.read_master_key()?;
    KeyserverIdentity::load(store, &master).await
}

/// With --bootstrap-identity: checks (and bootstraps) the identity; while this instance
/// must refuse to serve, says why on the admin API and in the log, and checks again every
/// [`RECHECK_INTERVAL`]. `None`: stopped (SIGTERM) while refusing. An error: the first
/// check could not be made.
#[instrument(skip_all, fields(bootstrap_identity = %bootstrap.display()))]
async fn wait_for_identity(
    store: &dyn Store,
    data_dir: &DataDir,
    bootstrap: &Path,
    admin_mode: &watch::Sender<AdminMode>,
    shutdown: &Shutdown,
) -> Result<Option<KeyserverIdentity>> {
    let stopped = shutdown.stopped();
    tokio::pin!(stopped);
    let mut refused = false;
    loop {
        match bootstrap::check(store, data_dir, bootstrap).await {
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

/// The listeners that run whatever the instance's state.
struct Listeners {
    health_stop: tokio::sync::oneshot::Sender<()>,
    health_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    admin_task: JoinHandle<Result<(), tonic::transport::Error>>,
    admin_tls_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    metrics_task: JoinHandle<Result<()>>,
    admin_socket_inode: u64,
}

impl Listeners {
    /// Waits for those that stop at the shutdown signal, then stops the health listener
    /// and removes the admin socket. The caller has stopped the server (`Shutdown`).
    async fn stop(self, data_dir: &DataDir) {
        if let Ok(Err(e)) = self.admin_task.await {
            warn!(error = %e, "admin socket server failed");
        }
        if let Some(task) = self.admin_tls_task
            && let Ok(Err(e)) = task.await
        {
            warn!(error = %e, "admin listener failed");
        }
        if let Ok(Err(e)) = self.metrics_task.await {
            warn!(error = %format!("{e:#}"), "metrics server failed");
        }
        let _ = self.health_stop.send(());
        if let Some(task) = self.health_task
            && let Ok(Err(e)) = task.await
        {
            warn!(error = %e, "health listener failed");
        }
        // Only our own socket: a server that took over since may have bound a new one.
        let socket = data_dir.admin_socket();
        if std::fs::metadata(&socket).is_ok_and(|m| m.ino() == self.admin_socket_inode) {
            let _ = std::fs::remove_file(&socket);
        }
    }
}

fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kss_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map(|s| s.max_decoding_message_size(SMALL_MESSAGE_BYTES))
        .context("building the reflection service")
}

fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kss_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map(|s| s.max_decoding_message_size(SMALL_MESSAGE_BYTES))
        .context("building the reflection service")
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
        started_at_ms: crate::identity::now_ms(),
    }
}

/// Readiness (service `kss.v1.KeyServer`): SERVING while this instance decides requests.
async fn set_ready(health: &tonic_health::server::HealthReporter, ready: bool) {
    if ready {
        health
            .set_serving::<KeyServerServer<KeyServerService>>()
            .await;
    } else {
        health
            .set_not_serving::<KeyServerServer<KeyServerService>>()
            .await;
    }
}

/// Ready while the database is reachable; not ready from the shutdown signal on.
async fn follow_readiness(
    health: tonic_health::server::HealthReporter,
    mut switches: watch::Receiver<Arc<Switches>>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut ready = switches.borrow_and_update().database_ok;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            changed = switches.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let ok = switches.borrow_and_update().database_ok;
        if ok != ready {
            ready = ok;
            set_ready(&health, ok).await;
        }
    }
    set_ready(&health, false).await;
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
