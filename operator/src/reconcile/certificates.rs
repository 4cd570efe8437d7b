//! The cluster's certificates: its CA (`<name>-ca`, never mounted), the admin API's
//! server certificate, the workstation certificate (unless `spec.tls` names one) and
//! `status.tls` with the `TLSReady` condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::info;

use super::Context;
use super::cluster::{keys, retained_owner};
use crate::crd::KeyShardCluster;
use crate::crd::cluster::{CertificateStatus, TlsStatus};
use crate::crd::condition::reasons;
use crate::desired::{self, Names};
use crate::error::Result;
use crate::pki::{self, Ca};
use crate::secrets;

/// What [`ensure_pki`] found or made, for [`tls_report`].
#[derive(Default)]
pub(super) struct Seen {
    certs: Vec<CertSeen>,
}

/// One certificate as this reconcile found or made it.
struct CertSeen {
    /// `ca`, `workstation` or `admin`.
    name: &'static str,
    secret: String,
    info: pki::CertInfo,
    /// The operator renews it (at two thirds of its life).
    renewed_by_operator: bool,
}

/// The CA, the admin API's server certificate and, unless the user brings one, the
/// workstation certificate; a leaf past two thirds of its life, or whose names no longer
/// match, is reissued by the same CA (the keyserver reloads its files without a restart).
pub(super) async fn ensure_pki(
    ctx: &Context,
    cluster: &KeyShardCluster,
    names: &Names,
    secrets_api: &Api<Secret>,
    seen: &mut Seen,
) -> Result<Result<Ca, (String, String)>> {
    let validity = ctx.validity;
    let seen = &mut seen.certs;
    // Workstations trust this CA: it is kept with the backup key when the resource is
    // deleted, so that a re-created cluster serves certificates they still accept.
    let retained_owner = retained_owner(cluster);
    let ca_secret = match secrets::get(secrets_api, &names.ca_secret()).await? {
        Some(s) => {
            secrets::set_owner(secrets_api, &s, retained_owner).await?;
            s
        }
        None => {
            let ca = pki::new_ca(&names.cluster, validity.ca)?;
            let mut meta = desired::retained_meta(names, names.ca_secret());
            meta.owner_references = retained_owner.map(|o| vec![o]);
            let secret = secrets::build(
                meta,
                "Opaque",
                &[(keys::CA_CRT, &ca.cert), (keys::CA_KEY, &ca.key)],
            );
            secrets::create_if_missing(secrets_api, secret).await?.0
        }
    };
    let ca_pem = secrets::text(&ca_secret, keys::CA_CRT)?;
    let ca = Ca::load(
        &names.cluster,
        &ca_pem,
        &secrets::text(&ca_secret, keys::CA_KEY)?,
    )?
    .with_leaf_validity(validity.leaf);
    if let Ok(info) = pki::inspect(&ca_pem) {
        seen.push(CertSeen {
            name: "ca",
            secret: names.ca_secret(),
            info,
            renewed_by_operator: false,
        });
    }
    let server_names = pki::service_names(&names.cluster, &names.namespace);
    let mut workstation_names = server_names.clone();
    if let Some(extra) = &cluster.spec.certificate {
        workstation_names.extend(extra.extra_dns_names.iter().cloned());
        workstation_names.extend(extra.extra_ip_addresses.iter().cloned());
    }
    for (label, secret_name, wanted, sans) in [
        ("admin", names.admin_tls_secret(), true, server_names),
        (
            "workstation",
            names.generated_tls_secret(),
            cluster.spec.tls.is_none(),
            workstation_names,
        ),
    ] {
        if !wanted {
            continue;
        }
        let existing = secrets::get(secrets_api, &secret_name).await?;
        let current = existing
            .as_ref()
            .and_then(|s| secrets::text(s, keys::TLS_CRT).ok())
            .and_then(|pem| pki::inspect(&pem).ok());
        let now = pki::unix_now();
        let why = match &current {
            _ if existing.is_none() => Some("created"),
            None => Some("unreadable"),
            Some(info) if pki::renewal(now, info.not_before, info.not_after).due() => {
                Some("renewed at two thirds of its life")
            }
            Some(info) if info.names != pki::name_set(&sans) => Some("names changed"),
            Some(_) => None,
        };
        let info = match (why, current) {
            (None, Some(info)) => info,
            (why, _) => {
                let cert = ca.server("kss keyserver", sans)?;
                let data = [
                    (keys::TLS_CRT, cert.cert.as_str()),
                    (keys::TLS_KEY, cert.key.as_str()),
                    (keys::CA_CRT, ca.cert_pem.as_str()),
                ];
                if existing.is_some() {
                    secrets::replace_data(secrets_api, &secret_name, &data).await?;
                } else {
                    let secret = secrets::build(
                        desired::owned_meta(cluster, names, secret_name.clone()),
                        "kubernetes.io/tls",
                        &data,
                    );
                    secrets::create_if_missing(secrets_api, secret).await?;
                }
                let info = pki::inspect(&cert.cert)?;
                info!(
                    certificate = label,
                    secret = %secret_name,
                    reason = why.unwrap_or_default(),
                    serial = %info.serial,
                    not_after = info.not_after,
                    "issued certificate"
                );
                info
            }
        };
        seen.push(CertSeen {
            name: label,
            secret: secret_name,
            info,
            renewed_by_operator: true,
        });
    }
    if let Some(tls) = &cluster.spec.tls {
        let problem = match secrets::get(secrets_api, &tls.secret_name).await? {
            None => Some(format!("TLS Secret {} not found", tls.secret_name)),
            Some(s) => match [keys::TLS_CRT, keys::TLS_KEY]
                .iter()
                .find(|k| secrets::text(&s, k).is_err())
            {
                Some(k) => Some(format!("TLS Secret {} has no {k}", tls.secret_name)),
                None => {
                    if let Ok(info) =
                        secrets::text(&s, keys::TLS_CRT).and_then(|pem| pki::inspect(&pem))
                    {
                        seen.push(CertSeen {
                            name: "workstation",
                            secret: tls.secret_name.clone(),
                            info,
                            renewed_by_operator: false,
                        });
                    }
                    None
                }
            },
        };
        if let Some(message) = problem {
            return Ok(Err((reasons::TLS_SECRET_INVALID.to_string(), message)));
        }
    }
    Ok(Ok(ca))
}

/// RFC 3339 of seconds since the epoch.
fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `status.tls`, the `TLSReady` condition (status, reason, message) and when to look
/// again (the next renewal), from the certificates seen at `now`.
pub(super) fn tls_report(
    seen: &Seen,
    validity: pki::Validity,
    now: i64,
) -> (TlsStatus, (bool, &'static str, String), Option<Duration>) {
    let mut certificates = Vec::new();
    let mut next: Option<(i64, Duration)> = None;
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    for c in &seen.certs {
        let r = pki::renewal(now, c.info.not_before, c.info.not_after);
        if c.renewed_by_operator {
            let check = r.next_check(now);
            if next.is_none_or(|(at, _)| r.renew_at < at) {
                next = Some((r.renew_at, check));
            }
        }
        let label = format!("{} certificate (Secret {})", c.name, c.secret);
        if r.stage == pki::Stage::Expired {
            problems.push((
                reasons::CERTIFICATE_EXPIRED,
                format!(
                    "{label} is not valid now (notAfter {})",
                    rfc3339(c.info.not_after)
                ),
            ));
        } else if c.name == "ca" {
            // The operator does not renew the CA: warn once less than a third of the
            // configured CA validity is left.
            let third = i64::try_from(validity.ca.as_secs() / 3).unwrap_or(i64::MAX);
            if c.info.not_after.saturating_sub(now) < third {
                problems.push((
                    reasons::CA_EXPIRING,
                    format!(
                        "{label} expires at {}; it is not renewed automatically",
                        rfc3339(c.info.not_after)
                    ),
                ));
            }
        } else if r.due() {
            let reason = if c.renewed_by_operator {
                reasons::CERTIFICATE_RENEWING
            } else {
                reasons::CERTIFICATE_EXPIRING
            };
            problems.push((
                reason,
                format!(
                    "{label} is in the last third of its life (notAfter {})",
                    rfc3339(c.info.not_after)
                ),
            ));
        }
        certificates.push(CertificateStatus {
            name: c.name.to_string(),
            secret_name: c.secret.clone(),
            serial: c.info.serial.clone(),
            not_before: rfc3339(c.info.not_before),
            not_after: rfc3339(c.info.not_after),
            renew_at: c.renewed_by_operator.then(|| rfc3339(r.renew_at)),
        });
    }
    let condition = match problems.first() {
        None => (
            true,
            reasons::CERTIFICATES_VALID,
            match next {
                Some((at, _)) => format!(
                    "every certificate is valid; next renewal at {}",
                    rfc3339(at)
                ),
                None => "every certificate is valid".to_string(),
            },
        ),
        Some((reason, _)) => (
            false,
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let status = TlsStatus {
        next_renewal: next.map(|(at, _)| rfc3339(at)),
        certificates,
    };
    (status, condition, next.map(|(_, d)| d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(certs: Vec<CertSeen>) -> Seen {
        Seen { certs }
    }

    fn seen(name: &'static str, not_before: i64, not_after: i64, renewed: bool) -> CertSeen {
        CertSeen {
            name,
            secret: format!("s-{name}"),
            info: pki::CertInfo {
                not_before,
                not_after,
                serial: "01".to_string(),
                names: Default::default(),
            },
            renewed_by_operator: renewed,
        }
    }

    #[test]
    fn tls_status_names_each_certificate_and_the_next_renewal() {
        let validity = pki::Validity {
            ca: Duration::from_secs(3000),
            leaf: Duration::from_secs(90),
        };
        let certs = of(vec![
            seen("ca", 0, 3000, false),
            seen("admin", 0, 90, true),
            seen("workstation", 30, 120, true),
        ]);
        let (status, (ok, reason, message), next) = tls_report(&certs, validity, 40);
        assert!(ok, "{message}");
        assert_eq!(reason, reasons::CERTIFICATES_VALID);
        // The admin certificate is renewed first, at 60.
        assert_eq!(next, Some(Duration::from_secs(20)));
        assert_eq!(status.next_renewal.as_deref(), Some("1970-01-01T00:01:00Z"));
        assert_eq!(status.certificates.len(), 3);
        assert_eq!(
            status.certificates[0].renew_at, None,
            "the CA is not renewed"
        );
        assert_eq!(
            status.certificates[2].not_after, "1970-01-01T00:02:00Z",
            "{:?}",
            status.certificates[2]
        );
        assert!(
            message.contains("next renewal at 1970-01-01T00:01:00Z"),
            "{message}"
        );

        // A leaf past two thirds (a renewal that did not happen) or expired.
        let (_, (ok, reason, message), _) = tls_report(&certs, validity, 70);
        assert!(!ok);
        assert_eq!(reason, reasons::CERTIFICATE_RENEWING);
        assert!(message.contains("s-admin"), "{message}");
        let (_, (ok, reason, _), _) = tls_report(&certs, validity, 95);
        assert!(!ok);
        assert_eq!(reason, reasons::CERTIFICATE_EXPIRED);
        // A user's Secret in its last third: expiring, not renewing.
        let theirs = of(vec![seen("workstation", 0, 90, false)]);
        let (_, (_, reason, _), next) = tls_report(&theirs, validity, 70);
        assert_eq!(reason, reasons::CERTIFICATE_EXPIRING);
        assert_eq!(next, None, "nothing for the operator to renew");
        // The CA: warned once less than a third of the CA validity is left.
        let ca = of(vec![seen("ca", 0, 3000, false)]);
        assert!(tls_report(&ca, validity, 1999).1.0);
        let (_, (ok, reason, message), _) = tls_report(&ca, validity, 2001);
        assert!(!ok);
        assert_eq!(reason, reasons::CA_EXPIRING);
        assert!(message.contains("not renewed automatically"), "{message}");
    }
}
