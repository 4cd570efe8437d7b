//! `kss serve`: the daemon, with its flags. It runs until SIGTERM or SIGINT, then stops
//! accepting and finishes the requests in flight ([`daemon`]).

mod daemon;
mod listeners;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use kss_store::Durability;
use tonic::transport::Server;

pub use daemon::Daemon;

use crate::connections::ConnectionLimits;
use crate::data_dir::DataDirArgs;
use crate::pod::PodArgs;
use crate::tls::TlsArgs;

/// Largest HTTP/2 header list accepted (gRPC requests send a few short headers).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

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
    #[arg(long, env = "KSS_SQLITE_SYNC", value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_sync: SqliteSync,
    /// How many nice levels below the rest of the server the ciphertext verification
    /// threads run (0–19; 0: the same priority). Lower, they keep the short steps of other
    /// requests ahead of verifications; but every other process of the same scheduling
    /// group (session or cgroup) above their priority then runs ahead of them too: use it
    /// only where the server is alone in its cgroup.
    #[arg(long, env = "KSS_VERIFY_NICENESS", default_value_t = crate::requests::verifier::DEFAULT_VERIFY_NICENESS,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub verify_niceness: i32,
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

impl ServeArgs {
    /// How often the TLS files are read again.
    pub(crate) fn tls_reload_every(&self) -> Duration {
        Duration::from_secs(self.tls.tls_reload_secs)
    }
}

/// `--sqlite-sync`: when a standalone server's decision is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    /// Every commit synced.
    Full,
    /// Synced at checkpoints: survives a crash of the process, not of the host.
    Normal,
}

impl SqliteSync {
    fn durability(self) -> Durability {
        match self {
            SqliteSync::Full => Durability::Full,
            SqliteSync::Normal => Durability::Normal,
        }
    }
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
    pub(crate) fn connection_limits(&self) -> ConnectionLimits {
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
pub(crate) fn bounded_server(t: &TransportArgs) -> Server {
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

/// `kss serve`: runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs, dir: &DataDirArgs) -> Result<()> {
    match Daemon::start(args, dir).await? {
        Some(daemon) => daemon.serve().await,
        None => Ok(()),
    }
}
