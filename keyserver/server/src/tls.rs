//! TLS for the gRPC listener: a certificate and key from files, or (quick start) a
//! self-signed CA and server certificate kept in the data directory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::data_dir::{DataDir, write_new, write_private};
use crate::reloading_tls::TlsFiles;

#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// The server certificate chain (PEM).
    #[arg(long, env = "KSS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, env = "KSS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Create (once) a self-signed CA and a server certificate in `<data-dir>/tls` and use
    /// them; clients trust `<data-dir>/tls/ca.pem`.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_signed_tls: bool,
    /// Extra DNS names or IP addresses for the self-signed certificate (besides
    /// localhost, 127.0.0.1 and ::1).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,
    /// How often (seconds) the TLS files (--tls-cert/--tls-key, and the admin listener's)
    /// are checked for changes: a renewed certificate is used for new connections without
    /// a restart; a changed file that is not valid is logged and the certificate in use
    /// stays.
    #[arg(long, env = "KSS_TLS_RELOAD_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_reload_secs: u64,
}

/// The workstation listener's TLS files, and where the CA is when it was generated here.
pub fn server_files(args: &TlsArgs, data_dir: &DataDir) -> Result<(TlsFiles, Option<PathBuf>)> {
    let (cert, key, ca) = match (&args.tls_cert, &args.tls_key, args.self_signed_tls) {
        (Some(cert), Some(key), false) => (cert.clone(), key.clone(), None),
        (None, None, true) => {
            let files = self_signed(&data_dir.tls_dir(), &args.tls_sans)?;
            (files.cert, files.key, Some(files.ca))
        }
        _ => bail!(
            "TLS is required: give --tls-cert and --tls-key, or --self-signed-tls for a quick start"
        ),
    };
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    Ok((files, ca))
}

pub struct SelfSignedFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a CA and a server certificate signed by it, unless they exist. The CA's key is
/// not kept: nothing else can be signed with it.
pub fn self_signed(dir: &Path, extra_sans: &[String]) -> Result<SelfSignedFiles> {
    let files = SelfSignedFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    for stale in [&files.ca, &files.cert, &files.key] {
        if stale.exists() {
            fs::remove_file(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kss self-signed CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    sans.extend(extra_sans.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kss keyserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    write_new(&files.ca, ca.pem().as_bytes())?;
    write_new(&files.cert, cert.pem().as_bytes())?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    Ok(files)
}
