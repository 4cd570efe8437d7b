//! Running in a Kubernetes pod: a plaintext gRPC health listener for the kubelet's probes
//! (they cannot do TLS), the admin API over mutual TLS for the operator, and the bootstrap
//! identity (see [`bootstrap`](crate::bootstrap)).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use kss_crypto::ids::KeyserverId;

use crate::reloading_tls::{ReloadingTls, TlsFiles};

#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    /// Address of a plaintext gRPC listener that serves only `grpc.health.v1.Health`, for
    /// Kubernetes' gRPC probes: service "" is live, service "kss.v1.KeyServer" is ready
    /// (SERVING only while this instance can decide requests).
    #[arg(long, env = "KSS_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
    /// Address of a listener that serves the admin API (`kss.v1.Admin`, as on the admin
    /// socket) and health over mutual TLS. Needs --admin-tls-cert, --admin-tls-key and
    /// --admin-client-ca.
    #[arg(long, env = "KSS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// The admin listener's certificate chain (PEM).
    #[arg(long, env = "KSS_ADMIN_TLS_CERT", value_name = "FILE")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The admin listener's private key (PEM).
    #[arg(long, env = "KSS_ADMIN_TLS_KEY", value_name = "FILE")]
    pub admin_tls_key: Option<PathBuf>,
    /// The CA (PEM) that admin clients' certificates must chain to; a client without
    /// such a certificate is refused during the TLS handshake.
    #[arg(long, env = "KSS_ADMIN_CLIENT_CA", value_name = "FILE")]
    pub admin_client_ca: Option<PathBuf>,
    /// A bootstrap identity (JSON, `kss-bootstrap-identity/v1`: the keyserver ID and its
    /// root secret sealed with the master key). If the database holds no identity, this one
    /// is stored; if it holds another, this instance refuses to serve. An absent file is
    /// ignored (the operator deletes it after bootstrap). Refusing: no workstation
    /// listener, not ready, the admin API answers FAILED_PRECONDITION with the reason;
    /// checked again every 2 s.
    #[arg(
        long,
        env = "KSS_BOOTSTRAP_IDENTITY",
        value_name = "FILE",
        conflicts_with = "dev"
    )]
    pub bootstrap_identity: Option<PathBuf>,
    /// The only keyserver this instance serves (32 lower-case hex characters, the
    /// canonical form): a database holding another one, or an empty database and a
    /// bootstrap identity of another one, is refused (IdentityMismatch) and nothing is
    /// written. Same refusing mode as --bootstrap-identity.
    #[arg(
        long,
        env = "KSS_KEYSERVER_ID",
        value_name = "ID",
        value_parser = parse_keyserver_id,
        conflicts_with = "dev"
    )]
    pub keyserver_id: Option<KeyserverId>,
}

/// A keyserver ID in its one canonical form (what `kss create` prints).
fn parse_keyserver_id(text: &str) -> Result<KeyserverId, String> {
    text.parse()
        .map_err(|e: kss_crypto::CryptoError| e.to_string())
}

/// The admin listener's address and TLS: mutual TLS, a client certificate chaining to
/// `--admin-client-ca` required (a client without one fails the handshake).
pub struct AdminListener {
    pub addr: SocketAddr,
    pub tls: Arc<ReloadingTls>,
}

impl PodArgs {
    /// The admin listener, if asked for; its files are read (and checked) now, so that a
    /// misconfiguration stops `kss serve` at once.
    pub fn admin_listener(&self) -> Result<Option<AdminListener>> {
        let files = [
            ("--admin-tls-cert", &self.admin_tls_cert),
            ("--admin-tls-key", &self.admin_tls_key),
            ("--admin-client-ca", &self.admin_client_ca),
        ];
        let Some(addr) = self.admin_listen else {
            if let Some((flag, _)) = files.iter().find(|(_, f)| f.is_some()) {
                bail!("{flag} is given without --admin-listen (the admin listener it is for)");
            }
            return Ok(None);
        };
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        let (Some(cert), Some(key), Some(ca)) = (
            &self.admin_tls_cert,
            &self.admin_tls_key,
            &self.admin_client_ca,
        ) else {
            bail!(
                "--admin-listen serves the admin API over mutual TLS: it needs --admin-tls-cert, \
                 --admin-tls-key and --admin-client-ca (missing: {})",
                missing.join(", ")
            );
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(ca.clone()),
        };
        Ok(Some(AdminListener {
            addr,
            tls: ReloadingTls::load("admin", files)?,
        }))
    }
}
