//! `kss serve`: wires the store, the decision task and the gRPC services, and runs them
//! until SIGTERM or SIGINT (then stops accepting and finishes in-flight requests).

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
use kss_store::{Durability, InstanceInfo};
use rand::RngCore;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, warn};

use crate::data_dir::{DataDir, DataDirArgs};
use crate::decider::{Decider, DecisionTask, MemoryCounters};
use crate::identity::KeyserverIdentity;
use crate::membership::Membership;
use crate::metrics::{self, Metrics};
use crate::service::admin::AdminService;
use crate::service::keyserver::KeyServerService;
use crate::service::profiles::ProfileCache;
use crate::service::verifier::Verifier;
use crate::shutdown::Shutdown;
use crate::standalone;
use crate::switches::{self, Switches};
use crate::tls::{self, TlsArgs};

/// Largest gRPC message accepted (a decrypt request is well under 2 KiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
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
    let store = crate::commands::open_store_with(&data_dir, durability).await?;
    if args.dev && store.identity().await?.is_none() {
        crate::commands::create::create_dev_identity(store.as_ref(), &data_dir).await?;
    }
    let master = data_dir.read_master_key()?;
    let identity = Arc::new(KeyserverIdentity::load(store.as_ref(), &master).await?);
    drop(master);
    let mut tls_args = args.tls.clone();
    tls_args.self_signed_tls |= args.dev && tls_args.tls_cert.is_none();
    let (tls_config, generated_ca) = tls::server_config(&tls_args, &data_dir)?;

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
    let lease = if shared {
        None
    } else {
        let holder = format!("{}/{}", info.name, info.incarnation);
        let ttl = Duration::from_secs(args.standalone_lease_secs.max(1));
        match standalone::acquire(store.as_ref(), &holder, ttl, &shutdown).await? {
            Some(lease) => Some(lease),
            None => {
                store.close().await;
                return Ok(());
            }
        }
    };

    let (admin_listener, admin_socket_inode) =
        bind_admin_socket(&data_dir, lease.is_some()).await?;
    // Bound before "serving" is announced, so that a client told so can connect.
    let incoming = TcpIncoming::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?
        .with_nodelay(Some(true));
    let instance_id = info.name.clone();
    let metrics = Arc::new(Metrics::new());
    let initial = switches::load(store.as_ref()).await?;
    let policy_version = initial.policy.version;
    let (switches_tx, switches_rx) = watch::channel(Arc::new(initial));
    let watcher = tokio::spawn(switches::watch(
        Arc::clone(&store),
        switches_tx,
        Duration::from_millis(args.poll_interval_ms.max(50)),
        Arc::clone(&metrics),
    ));
    // The lease is released only once the last decision is made (not at the signal), so
    // a server taking over never fences off requests this one is finishing.
    let (decided_all, decided_all_rx) = tokio::sync::oneshot::channel::<()>();
    let lease_keeper = lease.clone().map(|lease| {
        tokio::spawn(standalone::keep(
            Arc::clone(&store),
            lease,
            Duration::from_secs(args.standalone_lease_secs.max(1)),
            Arc::clone(&shutdown),
            async move {
                let _ = decided_all_rx.await;
            },
        ))
    });
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
    });

    let keyserver = Arc::new(KeyServerService {
        identity: Arc::clone(&identity),
        store: Arc::clone(&store),
        decider,
        switches: switches_rx.clone(),
        profiles: ProfileCache::new(Arc::clone(&identity), Arc::clone(&store)),
        verifier: Verifier::new(VerificationCache::new(VERIFIED_CIPHERTEXTS)),
        metrics: Arc::clone(&metrics),
        max_clock_skew: Duration::from_secs(args.max_clock_skew),
    });
    let admin = AdminService {
        identity: Arc::clone(&identity),
        store: Arc::clone(&store),
        switches: switches_rx.clone(),
        memory,
        started: Instant::now(),
        instance_id: instance_id.clone(),
        time_zone,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<KeyServerServer<KeyServerService>>()
        .await;
    let health_task = tokio::spawn(follow_health(health, switches_rx.clone()));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kss_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kss_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    let metrics_task = tokio::spawn(metrics::serve(
        args.metrics_listen,
        Arc::clone(&metrics),
        shutdown.stopped(),
    ));
    let admin_task = tokio::spawn(
        Server::builder()
            .add_service(AdminServer::new(admin))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(admin_listener),
                shutdown.stopped(),
            ),
    );

    info!(
        keyserver_id = %identity.id,
        listen = %args.listen,
        metrics = %args.metrics_listen,
        policy_version,
        instance = %instance_id,
        "kss keyserver serving"
    );
    println!(
        "kss keyserver {} serving on https://{}",
        identity.id, args.listen
    );
    if let Some(ca) = &generated_ca {
        println!("clients trust the CA in {}", ca.display());
    }

    let served = Server::builder()
        .tls_config(tls_config)
        .context("TLS configuration")?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            KeyServerServer::from_arc(Arc::clone(&keyserver))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.stopped())
        .await;
    drop(keyserver);
    if let Err(e) = &served {
        error!(error = %e, "gRPC server failed");
    }
    // The decision task ends once every request holding a Decider is done.
    if decider_task.await.is_err() {
        warn!("decision task ended abnormally");
    }
    let _ = decided_all.send(());
    watcher.abort();
    health_task.abort();
    // Marks this instance stopped, and releases the standalone lease.
    let _ = membership.await;
    if let Some(keeper) = lease_keeper {
        let _ = keeper.await;
    }
    if let Ok(Err(e)) = admin_task.await {
        warn!(error = %e, "admin socket server failed");
    }
    if let Ok(Err(e)) = metrics_task.await {
        warn!(error = %format!("{e:#}"), "metrics server failed");
    }
    // Only our own socket: a server that took over since may have bound a new one.
    let socket = data_dir.admin_socket();
    if std::fs::metadata(&socket).is_ok_and(|m| m.ino() == admin_socket_inode) {
        let _ = std::fs::remove_file(&socket);
    }
    store.close().await;
    info!("stopped");
    served.with_context(|| format!("serving gRPC on {}", args.listen))?;
    match shutdown.failure() {
        Some(why) => bail!("{why}"),
        None => Ok(()),
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
        started_at_ms: crate::identity::now_ms(),
    }
}

/// Binds `<data-dir>/admin.sock` (mode 0600). A server holding the standalone lease takes
/// the path over (a previous holder is gone or fenced off); otherwise it refuses if a
/// server already answers on it.
/// Returns the listener and the socket file's inode (to remove only our own at exit).
async fn bind_admin_socket(data_dir: &DataDir, holds_lease: bool) -> Result<(UnixListener, u64)> {
    let path = data_dir.admin_socket();
    if path.exists() {
        if !holds_lease && tokio::net::UnixStream::connect(&path).await.is_ok() {
            bail!(
                "another kss server is running on {} (its admin socket answers)",
                data_dir.root.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    restrict(&path)?;
    let inode = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino();
    Ok((listener, inode))
}

fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// Reports NOT_SERVING while the database is unreachable.
async fn follow_health(
    health: tonic_health::server::HealthReporter,
    mut switches: watch::Receiver<Arc<Switches>>,
) {
    let mut serving = true;
    while switches.changed().await.is_ok() {
        let ok = switches.borrow().database_ok;
        if ok != serving {
            serving = ok;
            if ok {
                health
                    .set_serving::<KeyServerServer<KeyServerService>>()
                    .await;
            } else {
                health
                    .set_not_serving::<KeyServerServer<KeyServerService>>()
                    .await;
            }
        }
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
