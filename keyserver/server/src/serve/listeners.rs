//! The listeners that run whatever the instance's state (the admin socket, `/metrics`,
//! `--health-listen`, `--admin-listen`), and the health and reflection services.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::{Context, Result};
use kss_proto::v1::admin_server::AdminServer;
use kss_proto::v1::key_server_server::KeyServerServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{info, warn};

use super::ServeArgs;
use crate::connections::{ConnectionLimits, Connections, TlsIncoming};
use crate::data_dir::DataDir;
use crate::metrics::{self, Metrics};
use crate::pod::AdminListener;
use crate::service::admin::{AdminGate, AdminMode};
use crate::service::keyserver::KeyServerService;
use crate::shutdown::Shutdown;
use crate::switches::Switches;

/// Largest message the health and reflection services accept (their requests name a
/// service or a symbol).
const SMALL_MESSAGE_BYTES: usize = 4 * 1024;

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// The always-on listeners, and what they report: health and the admin API's mode.
pub(super) struct Listeners {
    /// Readiness of `kss.v1.KeyServer`; "" is live as long as the process runs.
    pub health: HealthReporter,
    /// What the admin API answers: starting, refusing, or the service.
    pub admin_mode: watch::Sender<AdminMode>,
    health_stop: oneshot::Sender<()>,
    health_task: Option<ServerTask>,
    admin_task: ServerTask,
    admin_tls_task: Option<ServerTask>,
    metrics_task: JoinHandle<Result<()>>,
    admin_socket_inode: u64,
}

impl Listeners {
    /// Binds and starts them as `args` say (`admin_tls`: its checked `--admin-listen`);
    /// those but health stop at `shutdown`. The admin socket is the standalone server's
    /// (`standalone`, it holds the lease) or a cluster instance's.
    pub async fn start(
        args: &ServeArgs,
        admin_tls: Option<AdminListener>,
        data_dir: &DataDir,
        standalone: bool,
        metrics: &Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Result<Listeners> {
        let admin_socket = crate::admin_socket::bind(data_dir, standalone).await?;
        let admin_socket_inode = admin_socket.inode;
        let metrics_task = tokio::spawn(metrics::serve(
            args.metrics_listen,
            Arc::clone(metrics),
            shutdown.stopped(),
        ));
        let health = HealthReporter::new();
        set_ready(&health, false).await;
        // The health listener outlives the others: probes see NOT_SERVING, not a refused
        // connection, until the process exits.
        let (health_stop, health_stopped) = oneshot::channel::<()>();
        let health_task = match args.pod.health_listen {
            Some(addr) => {
                let incoming = TcpIncoming::bind(addr)
                    .with_context(|| format!("binding {addr} (--health-listen)"))?;
                info!(listen = %addr, "health probes: plaintext gRPC (grpc.health.v1)");
                Some(tokio::spawn(
                    Server::builder()
                        .add_service(health_service(&health))
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
                Arc::clone(&tls).watch(
                    args.tls_reload_every(),
                    Arc::clone(metrics),
                    shutdown.stopped(),
                );
                let server = Server::builder()
                    .add_service(health_service(&health))
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
        Ok(Listeners {
            health,
            admin_mode,
            health_stop,
            health_task,
            admin_task,
            admin_tls_task,
            metrics_task,
            admin_socket_inode,
        })
    }

    /// Waits for those that stop at the shutdown signal, then stops the health listener
    /// and removes the admin socket. The caller has stopped the server (`Shutdown`).
    pub async fn stop(self, data_dir: &DataDir) {
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

/// The health service answering from `health`.
pub(super) fn health_service(health: &HealthReporter) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(health.clone()))
        .max_decoding_message_size(SMALL_MESSAGE_BYTES)
}

/// Readiness (service `kss.v1.KeyServer`): SERVING while this instance decides requests.
pub(super) async fn set_ready(health: &HealthReporter, ready: bool) {
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
pub(super) async fn follow_readiness(
    health: HealthReporter,
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

pub(super) fn reflection_v1() -> Result<
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

pub(super) fn reflection_v1alpha() -> Result<
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
