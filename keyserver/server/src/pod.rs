//! Running in a Kubernetes pod: a plaintext gRPC health listener for the kubelet's probes
//! (they cannot do TLS), the admin API over mutual TLS for the operator, and the bootstrap
//! identity (see [`bootstrap`](crate::bootstrap)).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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
}

/// The admin listener's address and TLS configuration.
pub struct AdminListener {
    pub addr: SocketAddr,
    pub tls: ServerTlsConfig,
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
        Ok(Some(AdminListener {
            addr,
            tls: mutual_tls(cert, key, ca)?,
        }))
    }
}

/// A server TLS configuration that requires a client certificate chaining to `client_ca`
/// (rustls' `WebPkiClientVerifier`; a client without one fails the handshake).
pub fn mutual_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    let cert_pem = read(cert, "admin TLS certificate")?;
    let key_pem = read(key, "admin TLS key")?;
    let ca_pem = read(client_ca, "admin client CA")?;
    // What tonic builds from the CA, built here first so that a bad file is named.
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca_pem) {
        let der = der.with_context(|| format!("{}: not a PEM certificate", client_ca.display()))?;
        roots.add(der).with_context(|| {
            format!(
                "{}: a certificate that cannot be a trust anchor",
                client_ca.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!(
            "{}: no certificate in the admin client CA file",
            client_ca.display()
        );
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .with_context(|| format!("{}: the admin client CA", client_ca.display()))?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem)))
}
