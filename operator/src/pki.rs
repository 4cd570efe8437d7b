//! Certificates the operator issues for a cluster: one CA per `KeyShardCluster` (kept in
//! the Secret `<name>-ca`, never mounted into pods), the workstation server certificate
//! (unless the user brings one), the admin API's server certificate, and the operator's
//! own client certificate for the admin API (made fresh, held in memory only).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A certificate and its private key, PEM.
pub struct CertPem {
    pub cert: String,
    pub key: Zeroizing<String>,
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::Pki(e.to_string())
}

/// The CA's subject: fixed per cluster, so that the issuer can be rebuilt from the stored
/// key alone.
fn ca_name(cluster: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kss");
    dn.push(DnType::CommonName, format!("kss {cluster} CA"));
    dn
}

fn ca_params(cluster: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params.distinguished_name = ca_name(cluster);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    Ok(params)
}

/// A new CA for `cluster`.
pub fn new_ca(cluster: &str) -> Result<CertPem> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = ca_params(cluster)?.self_signed(&key).map_err(pki_err)?;
    Ok(CertPem {
        cert: cert.pem(),
        key: Zeroizing::new(key.serialize_pem()),
    })
}

/// Issues certificates with a stored CA key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl Ca {
    pub fn load(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_err)?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(cluster)?, key),
            cert_pem: cert_pem.to_string(),
        })
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertPem> {
        let mut params = CertificateParams::new(sans).map_err(pki_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_err)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, common_name: &str, names: Vec<String>) -> Result<CertPem> {
        self.issue(common_name, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// The operator's client certificate for the admin API.
    pub fn operator_client(&self) -> Result<CertPem> {
        self.issue(
            "kss-operator",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// DNS names a cluster's server certificates carry: the Service, the headless Service and
/// each pod behind it, short and fully qualified.
pub fn service_names(cluster: &str, namespace: &str) -> Vec<String> {
    let headless = format!("{cluster}-headless");
    let mut names = Vec::new();
    for svc in [cluster, headless.as_str()] {
        names.push(svc.to_string());
        names.push(format!("{svc}.{namespace}"));
        names.push(format!("{svc}.{namespace}.svc"));
        names.push(format!("{svc}.{namespace}.svc.cluster.local"));
    }
    names.push(format!("*.{headless}.{namespace}.svc"));
    names.push(format!("*.{headless}.{namespace}.svc.cluster.local"));
    names.push("localhost".to_string());
    names
}

/// The name the operator verifies the admin API's certificate against.
pub fn admin_server_name(cluster: &str, namespace: &str) -> String {
    format!("{cluster}-headless.{namespace}.svc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_it() {
        let ca_pem = new_ca("demo").expect("ca");
        let ca = Ca::load("demo", &ca_pem.cert, &ca_pem.key).expect("load");
        let server = ca
            .server("kss", service_names("demo", "ns"))
            .expect("server cert");
        assert!(server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key.contains("PRIVATE KEY"));
        // rustls verifies the chain for the admin server name.
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pemfile_der(&ca_pem.cert);
        roots.add(der).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let leaf = rustls_pemfile_der(&server.cert);
        let name =
            rustls::pki_types::ServerName::try_from(admin_server_name("demo", "ns")).expect("name");
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("the admin name verifies");
        let other = rustls::pki_types::ServerName::try_from("other.ns.svc").expect("name");
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }

    use rustls::client::danger::ServerCertVerifier;

    fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }
}
