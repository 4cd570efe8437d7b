//! Certificates the operator issues for a cluster: one CA per `KeyShardCluster` (kept in
//! the Secret `<name>-ca`, never mounted into pods), the workstation server certificate
//! (unless the user brings one), the admin API's server certificate, and the operator's
//! own client certificate for the admin API (made fresh, held in memory only).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub mod rotation;

/// Default validity of a cluster's CA: 10 years.
pub const DEFAULT_CA_VALIDITY_SECS: u64 = 3650 * 24 * 3600;
/// Default validity of the leaf certificates (workstation, admin API, operator client):
/// 90 days.
pub const DEFAULT_LEAF_VALIDITY_SECS: u64 = 90 * 24 * 3600;

/// How long the certificates the operator issues are valid, counted from their issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub ca: Duration,
    pub leaf: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            ca: Duration::from_secs(DEFAULT_CA_VALIDITY_SECS),
            leaf: Duration::from_secs(DEFAULT_LEAF_VALIDITY_SECS),
        }
    }
}

/// The seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `not_before`/`not_after` for a certificate issued `now` and valid for `validity`.
fn window(now: i64, validity: Duration) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let secs = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    let end = now.saturating_add(secs.max(1));
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| Error::Pki(format!("certificate validity out of range: {e}")))
    };
    Ok((at(now)?, at(end)?))
}

/// Where a certificate stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Within the first two thirds of its life.
    Valid,
    /// In its last third: to be renewed.
    RenewalDue,
    /// Past `notAfter` (or not yet valid).
    Expired,
}

/// The renewal decision for a certificate valid from `not_before` to `not_after`
/// (seconds since the epoch), seen at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub stage: Stage,
    /// Two thirds into its life: when it is renewed.
    pub renew_at: i64,
}

impl Renewal {
    /// Whether the certificate should be replaced now.
    pub fn due(&self) -> bool {
        self.stage != Stage::Valid
    }

    /// How long until the next look at this certificate (its renewal moment; at least
    /// one second).
    pub fn next_check(&self, now: i64) -> Duration {
        Duration::from_secs(
            u64::try_from(self.renew_at.saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        )
    }
}

/// Renewal at two thirds of the certificate's life.
pub fn renewal(now: i64, not_before: i64, not_after: i64) -> Renewal {
    let life = not_after.saturating_sub(not_before).max(0);
    let renew_at = not_before.saturating_add(life / 3 * 2 + (life % 3) * 2 / 3);
    let stage = if now >= not_after || now < not_before {
        Stage::Expired
    } else if now >= renew_at {
        Stage::RenewalDue
    } else {
        Stage::Valid
    };
    Renewal { stage, renew_at }
}

/// What the operator reads back from a stored certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    /// Hex, colon-separated.
    pub serial: String,
    /// Its DNS names and IP addresses (subject alternative names).
    pub names: BTreeSet<String>,
    /// Its subject key identifier (hex), if it carries one.
    pub key_id: Option<String>,
    /// The key identifier of the CA that signed it (hex), if it carries one.
    pub authority_key_id: Option<String>,
}

/// Parses every certificate of a PEM text (a trust bundle), in order; at least one.
pub fn inspect_bundle(pem: &str) -> Result<Vec<CertInfo>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|der| {
            der.map_err(|e| Error::Pki(format!("not a PEM certificate: {e}")))
                .and_then(|der| inspect_der(der.as_ref()))
        })
        .collect::<Result<Vec<_>>>()?;
    if certs.is_empty() {
        return Err(Error::Pki("no certificate in the bundle".to_string()));
    }
    Ok(certs)
}

/// A trust bundle: the certificates' PEM texts, one after the other.
pub fn bundle<'a>(pems: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for pem in pems {
        out.push_str(pem.trim_end());
        out.push('\n');
    }
    out
}

/// Parses the first certificate of a PEM text.
pub fn inspect(pem: &str) -> Result<CertInfo> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Pki(format!("not a PEM certificate: {e}")))?;
    inspect_der(der.as_ref())
}

/// Parses a DER certificate (e.g. one a server presented).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Pki(format!("unreadable certificate: {e}")))?;
    let validity = cert.validity();
    let mut key_id = None;
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                key_id = Some(hex::encode(id.0));
            }
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| hex::encode(id.0));
            }
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    names.insert(n.to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        serial: cert.raw_serial_as_string(),
        names,
        key_id,
        authority_key_id,
    })
}

/// The names as a certificate carries them (IP addresses in canonical form), to compare
/// with [`CertInfo::names`].
pub fn name_set(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => n.clone(),
        })
        .collect()
}

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
    Ok(params)
}

/// A new CA for `cluster`, valid for `validity` from now.
pub fn new_ca(cluster: &str, validity: Duration) -> Result<CertPem> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = ca_params(cluster)?;
    (params.not_before, params.not_after) = window(unix_now(), validity)?;
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok(CertPem {
        cert: cert.pem(),
        key: Zeroizing::new(key.serialize_pem()),
    })
}

/// Issues certificates with a stored CA key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// Its notAfter: no leaf it issues outlives it.
    not_after: i64,
    /// Its subject key identifier (hex).
    key_id: Option<String>,
    /// What clients of its leaves trust: this CA, and during a rotation the other one.
    trust_pem: String,
    /// Validity of the leaf certificates it issues.
    leaf_validity: Duration,
}

impl Ca {
    pub fn load(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_err)?;
        let info = inspect(cert_pem)?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(cluster)?, key),
            cert_pem: cert_pem.to_string(),
            not_after: info.not_after,
            key_id: info.key_id,
            trust_pem: cert_pem.to_string(),
            leaf_validity: Duration::from_secs(DEFAULT_LEAF_VALIDITY_SECS),
        })
    }

    /// The certificates clients of this CA's leaves trust (PEM): by default this CA.
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// Whether this CA signed `leaf`, by key identifier: `None` when the leaf names no
    /// issuing key (issued before leaves carried one) or the CA carries no identifier.
    pub fn signed(&self, leaf: &CertInfo) -> Option<bool> {
        Some(leaf.authority_key_id.as_ref()? == self.key_id.as_ref()?)
    }

    /// The same CA, its leaves' clients trusting `bundle` (which holds it).
    pub fn with_trust(mut self, bundle: String) -> Self {
        self.trust_pem = bundle;
        self
    }

    /// The same CA issuing leaf certificates valid for `validity`.
    pub fn with_leaf_validity(mut self, validity: Duration) -> Self {
        self.leaf_validity = validity;
        self
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
        // Names its CA by key: CAs of one cluster share their subject.
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        // Never past the CA's own end (a leaf renewed late in the CA's life is shorter).
        let left = u64::try_from(self.not_after.saturating_sub(now)).unwrap_or(0);
        (params.not_before, params.not_after) =
            window(now, self.leaf_validity.min(Duration::from_secs(left)))?;
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
        let ca_pem = new_ca("demo", Duration::from_secs(3600)).expect("ca");
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

    #[test]
    fn a_certificate_is_renewed_at_two_thirds_of_its_life() {
        // 90 s of life from t=1000: renewed from t=1060.
        let r = renewal(1000, 1000, 1090);
        assert_eq!(r.renew_at, 1060);
        assert_eq!(r.stage, Stage::Valid);
        assert!(!r.due());
        assert_eq!(r.next_check(1000), Duration::from_secs(60));
        assert_eq!(renewal(1059, 1000, 1090).stage, Stage::Valid);
        assert_eq!(
            renewal(1059, 1000, 1090).next_check(1059),
            Duration::from_secs(1)
        );
        let due = renewal(1060, 1000, 1090);
        assert_eq!(due.stage, Stage::RenewalDue);
        assert!(due.due());
        // Past its renewal moment: look again soon, never with a zero delay.
        assert_eq!(due.next_check(1070), Duration::from_secs(1));
        assert_eq!(renewal(1090, 1000, 1090).stage, Stage::Expired);
        assert_eq!(renewal(999, 1000, 1090).stage, Stage::Expired);
        // 90 days: renewed after 60.
        let day = 24 * 3600;
        let r = renewal(0, 0, 90 * day);
        assert_eq!(r.renew_at, 60 * day);
        assert_eq!(r.next_check(0), Duration::from_secs(60 * day as u64));
        // A life not divisible by three; no overflow at the extremes.
        assert_eq!(renewal(0, 0, 100).renew_at, 66);
        assert_eq!(renewal(0, 0, i64::MAX).stage, Stage::Valid);
        assert_eq!(renewal(0, 10, 5).stage, Stage::Expired);
    }

    #[test]
    fn issued_certificates_carry_their_validity_and_names() {
        let ca_pem = new_ca("demo", Duration::from_secs(10 * 365 * 24 * 3600)).expect("ca");
        let ca_info = inspect(&ca_pem.cert).expect("ca info");
        assert_eq!(ca_info.not_after - ca_info.not_before, 10 * 365 * 24 * 3600);
        assert!((ca_info.not_before - unix_now()).abs() < 60);
        let ca = Ca::load("demo", &ca_pem.cert, &ca_pem.key)
            .expect("load")
            .with_leaf_validity(Duration::from_secs(30));
        let names = vec![
            "kss.example.com".to_string(),
            "203.0.113.7".to_string(),
            "2001:db8::0:1".to_string(),
        ];
        let a = ca.server("kss", names.clone()).expect("leaf");
        let b = ca.server("kss", names.clone()).expect("leaf");
        let (ia, ib) = (inspect(&a.cert).expect("a"), inspect(&b.cert).expect("b"));
        assert_eq!(ia.not_after - ia.not_before, 30);
        assert_ne!(ia.serial, ib.serial, "each issue has its own serial");
        assert_eq!(ia.names, name_set(&names));
        assert!(ia.names.contains("2001:db8::1"), "{:?}", ia.names);
        assert!(inspect("not a certificate").is_err());
    }

    fn verifier(bundle: &str) -> std::sync::Arc<rustls::client::WebPkiServerVerifier> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(der.expect("pem")).expect("root");
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier")
    }

    #[test]
    fn a_bundle_of_two_cas_of_one_subject_verifies_the_leaves_of_either() {
        let old_pem = new_ca("demo", Duration::from_secs(3600)).expect("ca");
        let new_pem = new_ca("demo", Duration::from_secs(3600)).expect("ca");
        let old = Ca::load("demo", &old_pem.cert, &old_pem.key).expect("load");
        let new = Ca::load("demo", &new_pem.cert, &new_pem.key).expect("load");
        let both = bundle([old_pem.cert.as_str(), new_pem.cert.as_str()]);
        let only_old = bundle([old_pem.cert.as_str()]);
        let name =
            rustls::pki_types::ServerName::try_from(admin_server_name("demo", "ns")).expect("name");
        let verify = |bundle: &str, leaf: &CertPem| {
            verifier(bundle).verify_server_cert(
                &rustls_pemfile_der(&leaf.cert),
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        let old_leaf = old
            .server("kss", service_names("demo", "ns"))
            .expect("leaf");
        let new_leaf = new
            .server("kss", service_names("demo", "ns"))
            .expect("leaf");
        verify(&both, &old_leaf).expect("the old CA's leaf verifies against the bundle");
        verify(&both, &new_leaf).expect("the new CA's leaf verifies against the bundle");
        verify(&only_old, &old_leaf).expect("old leaf, old CA");
        assert!(
            verify(&only_old, &new_leaf).is_err(),
            "a client trusting only the old CA refuses the new CA's leaf"
        );
        // Each leaf names its CA by key: the subjects are the same.
        let (oi, ni) = (
            inspect(&old_leaf.cert).expect("old"),
            inspect(&new_leaf.cert).expect("new"),
        );
        assert_eq!(old.signed(&oi), Some(true));
        assert_eq!(old.signed(&ni), Some(false));
        assert_eq!(new.signed(&ni), Some(true));
        let unnamed = CertInfo {
            authority_key_id: None,
            ..ni.clone()
        };
        assert_eq!(new.signed(&unnamed), None);
    }

    #[test]
    fn a_bundle_is_parsed_in_order_and_never_empty() {
        let a = new_ca("demo", Duration::from_secs(100)).expect("ca");
        let b = new_ca("demo", Duration::from_secs(200)).expect("ca");
        let text = bundle([a.cert.as_str(), b.cert.as_str()]);
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(!text.contains("PRIVATE KEY"));
        let certs = inspect_bundle(&text).expect("bundle");
        let lives: Vec<i64> = certs.iter().map(|c| c.not_after - c.not_before).collect();
        assert_eq!(lives, vec![100, 200]);
        assert!(certs.iter().all(|c| c.key_id.is_some()));
        assert_ne!(certs[0].key_id, certs[1].key_id);
        // One certificate is a bundle too; the bundle of a bundle is the same text.
        assert_eq!(inspect_bundle(&a.cert).expect("one").len(), 1);
        assert_eq!(bundle([text.as_str()]), text);
        assert!(inspect_bundle("").is_err());
        assert!(inspect_bundle("no PEM here").is_err());
        let broken = format!(
            "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            a.cert
        );
        assert!(
            inspect_bundle(&broken).is_err(),
            "one bad certificate spoils the bundle"
        );
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let ca_pem = new_ca("demo", Duration::from_secs(50)).expect("ca");
        let ca = Ca::load("demo", &ca_pem.cert, &ca_pem.key)
            .expect("load")
            .with_leaf_validity(Duration::from_secs(90));
        let leaf = inspect(&ca.operator_client().expect("leaf").cert).expect("leaf");
        let ca_info = inspect(&ca_pem.cert).expect("ca");
        assert_eq!(leaf.not_after, ca_info.not_after);
        assert!(leaf.not_after - leaf.not_before <= 50);
    }

    use rustls::client::danger::ServerCertVerifier;

    fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }
}
