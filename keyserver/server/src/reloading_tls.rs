//! TLS listeners whose certificate files are read again when they change: a certificate
//! rotated on disk (cert-manager renewing a Secret that Kubernetes updates in the pod's
//! volume, or an administrator replacing the files) is served to new connections without a
//! restart; connections already open keep the certificate they were made with.
//!
//! The files are checked every `--tls-reload-secs`. New contents are taken only whole
//! and valid: a certificate chain, the private key that matches it and, for mutual TLS,
//! the client CA. Anything else (a half-written file, a key from another certificate) is
//! logged, naming the file, and the certificate in use stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::metrics::Metrics;

/// The files one listener's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The leaf certificate's private key (PEM).
    pub key: PathBuf,
    /// For mutual TLS: the CA (PEM) that clients' certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS configuration, replaced when its files change.
pub struct ReloadingTls {
    pub(crate) listener: &'static str,
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// Digests of the contents in use, and of the last contents refused (so that a bad
    /// file is reported once, not at every check).
    seen: Mutex<Seen>,
}

/// A configuration in use, and when its certificate expires.
#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, in Unix seconds.
    not_after: i64,
}

struct Seen {
    in_use: [u8; 32],
    refused: Option<[u8; 32]>,
}

/// What one check of the files found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but do not make a valid configuration; the old one stays.
    Refused,
}

impl ReloadingTls {
    /// Reads and checks the files now, so that a misconfiguration stops the server at once.
    /// `listener` names the listener in logs and errors ("workstation", "admin").
    pub fn load(listener: &'static str, files: TlsFiles) -> Result<Arc<Self>> {
        let contents = read_files(&files)
            .and_then(|contents| Ok((build_config(&files, &contents)?, contents)))
            .with_context(|| format!("the {listener} listener's TLS files"));
        let (loaded, contents) = contents?;
        info!(
            listener,
            cert = %files.cert.display(),
            expires = %expiry(loaded.not_after),
            "TLS certificate loaded"
        );
        Ok(Arc::new(Self {
            listener,
            seen: Mutex::new(Seen {
                in_use: contents.digest(),
                refused: None,
            }),
            files,
            current: RwLock::new(loaded),
        }))
    }

    fn loaded(&self) -> Loaded {
        match self.current.read() {
            Ok(loaded) => loaded.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The configuration new connections are accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.loaded().config
    }

    /// When the certificate in use expires (its notAfter, Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.loaded().not_after
    }

    /// Reads the files and, when they changed and make a valid configuration, uses them
    /// for new connections.
    pub fn reload_if_changed(&self) -> Reload {
        let listener = self.listener;
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A file that cannot be read is reported at every check (it may be mid-update, or
        // gone); contents that were read but refused are reported once.
        let contents = match read_files(&self.files) {
            Ok(contents) => contents,
            Err(e) => {
                warn!(
                    listener,
                    error = format!("{e:#}"),
                    "TLS files cannot be read: the certificate in use stays"
                );
                return Reload::Refused;
            }
        };
        let digest = contents.digest();
        if digest == seen.in_use || Some(digest) == seen.refused {
            return Reload::Unchanged;
        }
        match build_config(&self.files, &contents) {
            Ok(loaded) => {
                let expires = expiry(loaded.not_after);
                match self.current.write() {
                    Ok(mut current) => *current = loaded,
                    Err(poisoned) => *poisoned.into_inner() = loaded,
                }
                seen.in_use = digest;
                seen.refused = None;
                info!(
                    listener,
                    cert = %self.files.cert.display(),
                    %expires,
                    "TLS files changed: new connections use the new certificate"
                );
                Reload::Reloaded
            }
            Err(e) => {
                seen.refused = Some(digest);
                warn!(
                    listener,
                    error = format!("{e:#}"),
                    "TLS files changed but cannot be used: the certificate in use stays"
                );
                Reload::Refused
            }
        }
    }

    /// Checks the files every `every` until `stop` completes; the certificate's expiry
    /// and the reloads are in `metrics`.
    pub fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<Metrics>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        metrics.tls_certificate(self.listener, self.not_after());
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = ticks.tick() => {}
                }
                let tls = Arc::clone(&self);
                // File reads are blocking; a check is rare and small.
                match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                    Ok(Reload::Unchanged) => {}
                    Ok(Reload::Reloaded) => {
                        metrics.tls_reload(self.listener, "reloaded");
                        metrics.tls_certificate(self.listener, self.not_after());
                    }
                    Ok(Reload::Refused) => metrics.tls_reload(self.listener, "refused"),
                    Err(e) => {
                        warn!(listener = self.listener, error = %e, "TLS reload check failed");
                    }
                }
            }
        })
    }
}

/// The files' contents. The key's bytes are wiped when dropped.
struct Contents {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [
            Some(self.cert.as_slice()),
            Some(self.key.as_slice()),
            self.client_ca.as_deref(),
        ] {
            let part = part.unwrap_or_default();
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

fn read_files(files: &TlsFiles) -> Result<Contents> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    Ok(Contents {
        cert: read(&files.cert, "TLS certificate")?,
        key: Zeroizing::new(read(&files.key, "TLS key")?),
        client_ca: match &files.client_ca {
            Some(path) => Some(read(path, "client CA")?),
            None => None,
        },
    })
}

/// A notAfter for logs: the time, or the number if it is out of range.
fn expiry(not_after: i64) -> String {
    jiff::Timestamp::from_second(not_after)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| not_after.to_string())
}

/// The leaf certificate's notAfter (Unix seconds).
fn leaf_not_after(leaf: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A rustls server configuration for gRPC (ALPN h2) from the files' contents; every error
/// names the file at fault and never quotes a key.
fn build_config(files: &TlsFiles, contents: &Contents) -> Result<Loaded> {
    let cert_path = files.cert.display();
    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{cert_path}: not a PEM certificate chain"))?;
    let Some(leaf) = chain.first() else {
        bail!("{cert_path}: no certificate in the file");
    };
    let not_after = leaf_not_after(leaf)
        .with_context(|| format!("{cert_path}: the first certificate is not valid X.509"))?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|_| {
        anyhow::anyhow!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(ca_path), Some(ca_pem)) => {
            let ca_path = ca_path.display();
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(ca_pem) {
                let der = der.with_context(|| format!("{ca_path}: not a PEM certificate"))?;
                roots.add(der).with_context(|| {
                    format!("{ca_path}: a certificate that cannot be a trust anchor")
                })?;
            }
            if roots.is_empty() {
                bail!("{ca_path}: no certificate in the client CA file");
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .with_context(|| format!("{ca_path}: the client CA"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{cert_path} with {}: the key does not fit the certificate, or is not usable",
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tls::self_signed;

    /// Server files in `dir/<name>`, of a CA of their own.
    fn issue(dir: &Path, name: &str) -> TlsFiles {
        let files = self_signed(&dir.join(name), &[]).unwrap();
        TlsFiles {
            cert: files.cert,
            key: files.key,
            client_ca: Some(files.ca),
        }
    }

    fn copy(from: &TlsFiles, to: &TlsFiles) {
        std::fs::copy(&from.cert, &to.cert).unwrap();
        std::fs::copy(&from.key, &to.key).unwrap();
    }

    #[test]
    fn changed_files_replace_the_configuration_and_unchanged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let live = issue(dir.path(), "live");
        let next = issue(dir.path(), "next");
        let tls = ReloadingTls::load("test", live.clone()).unwrap();
        let first = tls.config();
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);

        copy(&next, &live);
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        let second = tls.config();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&second, &tls.config()));
    }

    #[test]
    fn invalid_files_are_refused_once_and_the_configuration_in_use_stays() {
        let dir = tempfile::tempdir().unwrap();
        let live = issue(dir.path(), "live");
        let next = issue(dir.path(), "next");
        let tls = ReloadingTls::load("test", live.clone()).unwrap();
        let first = tls.config();

        // Another certificate with the old key.
        std::fs::copy(&next.cert, &live.cert).unwrap();
        assert_eq!(tls.reload_if_changed(), Reload::Refused);
        assert!(Arc::ptr_eq(&first, &tls.config()));
        // The same refused contents are not taken up (nor reported) again.
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));

        // A missing file: refused at every check, as it may come back.
        std::fs::remove_file(&live.key).unwrap();
        assert_eq!(tls.reload_if_changed(), Reload::Refused);
        assert_eq!(tls.reload_if_changed(), Reload::Refused);
        assert!(Arc::ptr_eq(&first, &tls.config()));

        // The key arrives: the pair is whole and valid.
        std::fs::copy(&next.key, &live.key).unwrap();
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        assert!(!Arc::ptr_eq(&first, &tls.config()));
    }

    /// A client CA of one subject ("kss demo CA"), as the operator makes each CA of a
    /// cluster, and a client certificate it issued.
    fn client_ca() -> (
        String,
        rustls::pki_types::CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kss");
        params
            .distinguished_name
            .push(DnType::CommonName, "kss demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "kss-operator");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        (ca.pem(), cert.der().clone(), key)
    }

    /// A TLS handshake in memory between the listener's configuration and a client that
    /// trusts `server_ca` and presents `client`.
    fn handshake(
        server: Arc<ServerConfig>,
        server_ca: &Path,
        client: (CertificateDer<'static>, PrivateKeyDer<'static>),
    ) -> std::result::Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(server_ca).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client.0], client.1)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not end");
    }

    /// During a CA rotation the client CA file is a bundle of two CAs with the same
    /// subject: clients of either are accepted, of neither refused; a reload that drops
    /// one refuses its clients from then on.
    #[test]
    fn a_client_ca_bundle_accepts_clients_of_each_ca() {
        let dir = tempfile::tempdir().unwrap();
        let live = issue(dir.path(), "live");
        // The server's own CA, kept aside: the client CA file is replaced below.
        let server_ca = dir.path().join("server-ca.pem");
        std::fs::copy(live.client_ca.as_ref().unwrap(), &server_ca).unwrap();
        let (old_ca, old_cert, old_key) = client_ca();
        let (new_ca, new_cert, new_key) = client_ca();
        let (_, stranger_cert, stranger_key) = client_ca();
        let client_ca_file = live.client_ca.clone().unwrap();
        std::fs::write(&client_ca_file, format!("{old_ca}{new_ca}")).unwrap();
        let tls = ReloadingTls::load("admin", live.clone()).unwrap();
        let config = tls.config();
        handshake(
            config.clone(),
            &server_ca,
            (old_cert.clone(), old_key.clone_key()),
        )
        .expect("a client of the old CA");
        handshake(
            config.clone(),
            &server_ca,
            (new_cert.clone(), new_key.clone_key()),
        )
        .expect("a client of the new CA");
        assert!(
            handshake(config, &server_ca, (stranger_cert, stranger_key)).is_err(),
            "a client of another CA with the same subject"
        );

        // The old CA leaves the bundle: reloaded, its clients are refused.
        std::fs::write(&client_ca_file, &new_ca).unwrap();
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        let config = tls.config();
        handshake(config.clone(), &server_ca, (new_cert, new_key)).expect("new CA");
        assert!(handshake(config, &server_ca, (old_cert, old_key)).is_err());
    }

    #[test]
    fn the_expiry_of_the_certificate_in_use_is_known() {
        use rcgen::{CertificateParams, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let live = issue(dir.path(), "live");
        let tls = ReloadingTls::load("test", live.clone()).unwrap();
        // `self_signed` certificates end on 2036-01-01.
        assert_eq!(tls.not_after(), 2_082_758_400);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(&live.cert, cert.pem()).unwrap();
        std::fs::write(&live.key, key.serialize_pem()).unwrap();
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        assert_eq!(tls.not_after(), 1_935_792_000); // 2031-05-06T00:00:00Z
    }

    #[test]
    fn load_errors_name_the_listener_and_the_file_and_never_quote_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(dir.path(), "a");
        let b = issue(dir.path(), "b");
        let error = |files: &TlsFiles| {
            format!(
                "{:#}",
                ReloadingTls::load("admin", files.clone())
                    .err()
                    .expect("refused")
            )
        };
        let key_pem = std::fs::read_to_string(&a.key).unwrap();
        let key_body = key_pem.lines().nth(1).unwrap();

        let mismatched = TlsFiles {
            key: b.key.clone(),
            ..a.clone()
        };
        let e = error(&mismatched);
        assert!(e.starts_with("the admin listener's TLS files: "), "{e}");
        assert!(e.contains("the key does not fit the certificate"), "{e}");

        let key_as_cert = TlsFiles {
            cert: a.key.clone(),
            ..a.clone()
        };
        let e = error(&key_as_cert);
        assert!(
            e.contains(&format!("{}: no certificate", a.key.display())),
            "{e}"
        );
        assert!(!e.contains(key_body), "{e}");

        let cert_as_key = TlsFiles {
            key: a.cert.clone(),
            ..a.clone()
        };
        let e = error(&cert_as_key);
        assert!(
            e.contains(&format!("{}: no PEM private key", a.cert.display())),
            "{e}"
        );

        let key_as_ca = TlsFiles {
            client_ca: Some(a.key.clone()),
            ..a.clone()
        };
        let e = error(&key_as_ca);
        assert!(e.contains("no certificate in the client CA file"), "{e}");
        assert!(!e.contains(key_body), "{e}");

        let missing = TlsFiles {
            cert: dir.path().join("absent.pem"),
            ..a.clone()
        };
        let e = error(&missing);
        assert!(
            e.contains("reading the TLS certificate") && e.contains("absent.pem"),
            "{e}"
        );
    }
}
