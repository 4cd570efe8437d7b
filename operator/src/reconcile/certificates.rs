//! The cluster's certificates: its CA (`<name>-ca`, never mounted) and its rotation, the
//! admin API's server certificate, the workstation certificate (unless `spec.tls` names
//! one), the trust bundle in their Secrets' `ca.crt`, and `status.tls` with the
//! `TLSReady` condition.
//!
//! The rotation is decided by [`pki::rotation::decide`] (pure); this module reads the
//! Secrets, carries out the step it returns and reports.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::Context;
use super::cluster::{event, keys, retained_owner};
use crate::admin::{self, AdminTls, Probe};
use crate::crd::KeyShardCluster;
use crate::crd::cluster::{
    CaRole, CaRotationStage, CaRotationStatus, CertificateStatus, TlsStatus, TrustedCa,
};
use crate::crd::condition::reasons;
use crate::desired::{self, Names};
use crate::error::{Error, Result};
use crate::pki::rotation::{self, CaState, Decision, PodTrust, Stage, Step, Window};
use crate::pki::{self, Ca};
use crate::secrets;

/// Keys of the CA Secret besides `ca.crt` and `ca.key` (the CA that issues the leaves).
mod ca_keys {
    /// The next CA (stage Overlap): trusted, issuing once the leaves move.
    pub const NEXT_CRT: &str = "next-ca.crt";
    pub const NEXT_KEY: &str = "next-ca.key";
    /// The CA the leaves moved away from (stage LeavesMoved): trusted, its key dropped.
    pub const PREVIOUS_CRT: &str = "previous-ca.crt";
}

/// Annotations of the CA Secret recording the rotation (Unix seconds).
mod annotations {
    /// When the bundle holding the next CA was in every Secret that carries it.
    pub const PUBLISHED_AT: &str = "kss.dev/ca-bundle-published-at";
    /// Until when leaves the previous CA signed may be valid.
    pub const PREVIOUS_LEAVES_UNTIL: &str = "kss.dev/previous-ca-leaves-until";
}

/// Event reasons of the CA rotation.
pub mod events {
    pub const CA_ROTATION_STARTED: &str = "CaRotationStarted";
    pub const CA_LEAVES_MOVED: &str = "CaLeavesMoved";
    pub const CA_REMOVED: &str = "CaRemoved";
    pub const CA_REPLACED: &str = "CaReplaced";
}

/// How long the leaves' move may wait for pods past its time before `TLSReady` says so.
const STALL_SECS: i64 = 120;

/// What [`ensure_pki`] found or made, for [`tls_report`].
#[derive(Default)]
pub(super) struct Seen {
    certs: Vec<CertSeen>,
    /// The CAs of the trust bundle, in its order (the issuing one first).
    bundle: Vec<(CaRole, pki::CertInfo)>,
    /// Where the CA rotation stands after this reconcile.
    rotation: Option<Decision>,
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

/// One CA as stored: its certificate, its key (absent for the previous CA) and what its
/// certificate says.
struct StoredCa {
    cert: String,
    key: Option<Zeroizing<String>>,
    info: pki::CertInfo,
}

impl StoredCa {
    fn window(&self) -> Window {
        Window {
            not_before: self.info.not_before,
            not_after: self.info.not_after,
        }
    }

    fn issuer(&self, cluster: &str) -> Result<Ca> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::Pki("a CA without its key cannot issue".to_string()))?;
        Ca::load(cluster, &self.cert, key)
    }
}

/// The CA Secret's CAs and the rotation's recorded moments.
struct StoredCas {
    current: StoredCa,
    next: Option<StoredCa>,
    previous: Option<StoredCa>,
    published_at: Option<i64>,
    previous_leaves_until: Option<i64>,
}

impl StoredCas {
    /// Reads the CA Secret. The issuing CA must be whole; a next or previous CA that
    /// cannot be read is left out (and overwritten by the next step).
    fn read(secret: &Secret) -> Result<Self> {
        let cert = secrets::text(secret, keys::CA_CRT)?;
        let current = StoredCa {
            info: pki::inspect(&cert)?,
            key: Some(Zeroizing::new(secrets::text(secret, keys::CA_KEY)?)),
            cert,
        };
        let next = secrets::text(secret, ca_keys::NEXT_CRT)
            .ok()
            .and_then(|cert| {
                Some(StoredCa {
                    info: pki::inspect(&cert).ok()?,
                    key: Some(Zeroizing::new(
                        secrets::text(secret, ca_keys::NEXT_KEY).ok()?,
                    )),
                    cert,
                })
            });
        let previous = secrets::text(secret, ca_keys::PREVIOUS_CRT)
            .ok()
            .and_then(|cert| {
                Some(StoredCa {
                    info: pki::inspect(&cert).ok()?,
                    key: None,
                    cert,
                })
            });
        let moment = |name: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|v| v.parse::<i64>().ok())
        };
        Ok(StoredCas {
            current,
            next,
            previous,
            published_at: moment(annotations::PUBLISHED_AT),
            previous_leaves_until: moment(annotations::PREVIOUS_LEAVES_UNTIL),
        })
    }

    fn state(&self) -> CaState {
        CaState {
            current: self.current.window(),
            next: self.next.as_ref().map(StoredCa::window),
            previous: self.previous.as_ref().map(StoredCa::window),
            published_at: self.published_at,
            previous_leaves_until: self.previous_leaves_until,
        }
    }

    /// The CAs of the trust bundle, the issuing one first.
    fn trusted(&self) -> Vec<(CaRole, &StoredCa)> {
        let mut out = vec![(CaRole::Issuing, &self.current)];
        out.extend(self.next.iter().map(|c| (CaRole::Next, c)));
        out.extend(self.previous.iter().map(|c| (CaRole::Previous, c)));
        out
    }

    /// The trust bundle (PEM): what workstations and the admin API trust.
    fn bundle(&self) -> String {
        pki::bundle(self.trusted().into_iter().map(|(_, c)| c.cert.as_str()))
    }

    fn serials(&self) -> Vec<String> {
        self.trusted()
            .into_iter()
            .map(|(_, c)| c.info.serial.clone())
            .collect()
    }
}

/// Whether the pods accept client certificates of the next CA: a pod that refuses one
/// but accepts the issuing CA's has not loaded the bundle yet; a pod that answers neither
/// is down (it reads the current Secrets when it starts) and holds nothing back.
async fn pod_trust(ctx: &Context, names: &Names, cas: &StoredCas) -> Result<PodTrust> {
    let Some(next) = &cas.next else {
        return Ok(PodTrust::All);
    };
    let bundle = cas.bundle();
    let server = pki::admin_server_name(&names.cluster, &names.namespace);
    let tls_of = |ca: &StoredCa| -> Result<AdminTls> {
        let client = ca.issuer(&names.cluster)?.operator_client()?;
        Ok(AdminTls::new(&bundle, &client, &server))
    };
    let (next_tls, current_tls) = (tls_of(next)?, tls_of(&cas.current)?);
    let pods = super::cluster::pods(ctx, names).await?;
    let answers = join_all(pods.iter().map(|(pod, ip)| {
        let (next_tls, current_tls) = (&next_tls, &current_tls);
        async move {
            if !matches!(
                admin::probe(pod, ip, next_tls).await.0,
                Probe::Unreachable(_)
            ) {
                return None;
            }
            match admin::probe(pod, ip, current_tls).await.0 {
                Probe::Unreachable(_) => None,
                _ => Some(pod.clone()),
            }
        }
    }))
    .await;
    let missing: Vec<String> = answers.into_iter().flatten().collect();
    Ok(if missing.is_empty() {
        PodTrust::All
    } else {
        PodTrust::Missing(missing)
    })
}

/// Until when leaves of the issuing CA may be valid: the stored leaves' ends and the
/// operator's own client certificate, never past the CA's end.
async fn leaves_until(
    names: &Names,
    secrets_api: &Api<Secret>,
    cas: &StoredCas,
    validity: pki::Validity,
    now: i64,
) -> Result<i64> {
    let leaf = i64::try_from(validity.leaf.as_secs()).unwrap_or(i64::MAX);
    let mut until = now.saturating_add(leaf);
    for name in [names.admin_tls_secret(), names.generated_tls_secret()] {
        if let Some(s) = secrets::get(secrets_api, &name).await?
            && let Ok(info) = secrets::text(&s, keys::TLS_CRT).and_then(|p| pki::inspect(&p))
        {
            until = until.max(info.not_after);
        }
    }
    Ok(until.min(cas.current.info.not_after))
}

/// Carries out a rotation step on the CA Secret (and records it as an Event).
async fn rotate(
    ctx: &Context,
    cluster: &KeyShardCluster,
    names: &Names,
    secret: &Secret,
    cas: &StoredCas,
    step: Step,
    now: i64,
) -> Result<()> {
    let secrets_api: &Api<Secret> = &Api::namespaced(ctx.client.clone(), &names.namespace);
    let ws = names.tls_secret(cluster);
    let state = cas.state();
    match step {
        Step::Wait | Step::CheckPods => {}
        Step::Introduce => {
            let new = pki::new_ca(&names.cluster, ctx.validity.ca)?;
            let info = pki::inspect(&new.cert)?;
            secrets::patch_if_unchanged(
                secrets_api,
                secret,
                &[
                    (ca_keys::NEXT_CRT, Some(&new.cert)),
                    (ca_keys::NEXT_KEY, Some(&new.key)),
                ],
                &[(annotations::PUBLISHED_AT, None)],
            )
            .await?;
            let move_at = now
                .saturating_add(state.current.overlap())
                .min(state.current.not_after);
            info!(serial = %info.serial, not_after = info.not_after, "CA rotation started");
            event(
                ctx,
                cluster,
                false,
                events::CA_ROTATION_STARTED,
                format!(
                    "a new CA (serial {}, notAfter {}) joined the trust bundle (ca.crt of Secret \
                     {ws}) beside the current one (notAfter {}); the certificates move to it \
                     from {} once every instance trusts it: refresh the trust of workstations \
                     before then",
                    info.serial,
                    rfc3339(info.not_after),
                    rfc3339(state.current.not_after),
                    rfc3339(move_at),
                ),
            )
            .await;
        }
        Step::MoveLeaves => {
            let Some(next) = &cas.next else {
                return Ok(());
            };
            let key = next.key.as_ref().map(|k| k.as_str());
            // An expired CA protects nothing: it is not kept.
            let keep = now < cas.current.info.not_after;
            let until = if keep {
                Some(
                    leaves_until(names, secrets_api, cas, ctx.validity, now)
                        .await?
                        .to_string(),
                )
            } else {
                None
            };
            secrets::patch_if_unchanged(
                secrets_api,
                secret,
                &[
                    (keys::CA_CRT, Some(&next.cert)),
                    (keys::CA_KEY, key),
                    (
                        ca_keys::PREVIOUS_CRT,
                        keep.then_some(cas.current.cert.as_str()),
                    ),
                    (ca_keys::NEXT_CRT, None),
                    (ca_keys::NEXT_KEY, None),
                ],
                &[
                    (annotations::PUBLISHED_AT, None),
                    (annotations::PREVIOUS_LEAVES_UNTIL, until),
                ],
            )
            .await?;
            info!(serial = %next.info.serial, "certificates move to the new CA");
            event(
                ctx,
                cluster,
                false,
                events::CA_LEAVES_MOVED,
                format!(
                    "the new CA (serial {}) now issues the certificates (reissued now); the old \
                     CA (serial {}) stays in the trust bundle until it expires or its last \
                     certificate does; clients trusting only the old CA are refused",
                    next.info.serial, cas.current.info.serial
                ),
            )
            .await;
        }
        Step::RemovePrevious => {
            secrets::patch_if_unchanged(
                secrets_api,
                secret,
                &[(ca_keys::PREVIOUS_CRT, None)],
                &[(annotations::PREVIOUS_LEAVES_UNTIL, None)],
            )
            .await?;
            let serial = cas
                .previous
                .as_ref()
                .map(|p| p.info.serial.clone())
                .unwrap_or_default();
            info!(%serial, "old CA removed from the trust bundle");
            event(
                ctx,
                cluster,
                false,
                events::CA_REMOVED,
                format!("the old CA (serial {serial}) left the trust bundle (Secret {ws})"),
            )
            .await;
        }
        Step::Replace => {
            let new = pki::new_ca(&names.cluster, ctx.validity.ca)?;
            let info = pki::inspect(&new.cert)?;
            secrets::patch_if_unchanged(
                secrets_api,
                secret,
                &[
                    (keys::CA_CRT, Some(&new.cert)),
                    (keys::CA_KEY, Some(&new.key)),
                    (ca_keys::NEXT_CRT, None),
                    (ca_keys::NEXT_KEY, None),
                    (ca_keys::PREVIOUS_CRT, None),
                ],
                &[
                    (annotations::PUBLISHED_AT, None),
                    (annotations::PREVIOUS_LEAVES_UNTIL, None),
                ],
            )
            .await?;
            warn!(serial = %info.serial, "the CA expired before a successor took over: replaced");
            event(
                ctx,
                cluster,
                true,
                events::CA_REPLACED,
                format!(
                    "the CA expired before a successor could take over: a new CA (serial {}) \
                     issues every certificate now; workstations must trust the new ca.crt of \
                     Secret {ws} before they connect again",
                    info.serial
                ),
            )
            .await;
        }
    }
    Ok(())
}

/// The CA (and its rotation), the admin API's server certificate and, unless the user
/// brings one, the workstation certificate; a leaf past two thirds of its life, whose
/// names no longer match, or signed by a CA that no longer issues, is reissued (the
/// keyserver reloads its files without a restart). The leaf Secrets' `ca.crt` is the
/// trust bundle.
pub(super) async fn ensure_pki(
    ctx: &Context,
    cluster: &KeyShardCluster,
    names: &Names,
    secrets_api: &Api<Secret>,
    seen: &mut Seen,
) -> Result<Result<Ca, (String, String)>> {
    let validity = ctx.validity;
    // Workstations trust this CA: it is kept with the backup key when the resource is
    // deleted, so that a re-created cluster serves certificates they still accept.
    let retained_owner = retained_owner(cluster);
    let mut ca_secret = match secrets::get(secrets_api, &names.ca_secret()).await? {
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

    // The rotation: decide, ask the pods if the decision needs it, carry out the step.
    let now = pki::unix_now();
    let mut cas = StoredCas::read(&ca_secret)?;
    let mut decision = rotation::decide(&cas.state(), now, &PodTrust::Unchecked);
    if decision.step == Step::CheckPods {
        let trust = pod_trust(ctx, names, &cas).await?;
        decision = rotation::decide(&cas.state(), now, &trust);
    }
    if !matches!(decision.step, Step::Wait | Step::CheckPods) {
        rotate(ctx, cluster, names, &ca_secret, &cas, decision.step, now).await?;
        ca_secret = secrets::get(secrets_api, &names.ca_secret())
            .await?
            .ok_or_else(|| Error::Pki(format!("Secret {} vanished", names.ca_secret())))?;
        cas = StoredCas::read(&ca_secret)?;
        decision = rotation::decide(&cas.state(), now, &PodTrust::Unchecked);
    }
    let bundle = cas.bundle();
    let serials = cas.serials();
    let ca = cas
        .current
        .issuer(&names.cluster)?
        .with_leaf_validity(validity.leaf)
        .with_trust(bundle.clone());
    seen.certs.push(CertSeen {
        name: "ca",
        secret: names.ca_secret(),
        info: cas.current.info.clone(),
        renewed_by_operator: false,
    });
    seen.bundle = cas
        .trusted()
        .into_iter()
        .map(|(role, c)| (role, c.info.clone()))
        .collect();

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
        // A leaf that names no issuing key predates the rotation: once the leaves have
        // moved, it is the old CA's.
        let other_ca = |info: &pki::CertInfo| match ca.signed(info) {
            Some(signed) => !signed,
            None => cas.previous.is_some(),
        };
        let why = match &current {
            _ if existing.is_none() => Some("created"),
            None => Some("unreadable"),
            Some(info) if pki::renewal(now, info.not_before, info.not_after).due() => {
                Some("renewed at two thirds of its life")
            }
            Some(info) if info.names != pki::name_set(&sans) => Some("names changed"),
            Some(info) if other_ca(info) => Some("moved to the new CA"),
            Some(_) => None,
        };
        let info = match (why, current) {
            (None, Some(info)) => {
                // The certificate stays; its Secret's trust bundle follows the CAs.
                let trusted = existing
                    .as_ref()
                    .and_then(|s| secrets::text(s, keys::CA_CRT).ok())
                    .and_then(|pem| pki::inspect_bundle(&pem).ok())
                    .map(|certs| certs.into_iter().map(|c| c.serial).collect::<Vec<_>>());
                if trusted.as_ref() != Some(&serials) {
                    secrets::replace_data(secrets_api, &secret_name, &[(keys::CA_CRT, &bundle)])
                        .await?;
                    info!(
                        certificate = label,
                        secret = %secret_name,
                        cas = serials.len(),
                        "trust bundle updated"
                    );
                }
                info
            }
            (why, _) => {
                let cert = ca.server("kss keyserver", sans)?;
                let data = [
                    (keys::TLS_CRT, cert.cert.as_str()),
                    (keys::TLS_KEY, cert.key.as_str()),
                    (keys::CA_CRT, bundle.as_str()),
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
        seen.certs.push(CertSeen {
            name: label,
            secret: secret_name,
            info,
            renewed_by_operator: true,
        });
    }
    // Every Secret carries the bundle with the next CA: the overlap counts from now.
    if cas.next.is_some() && cas.published_at.is_none() {
        secrets::patch_if_unchanged(
            secrets_api,
            &ca_secret,
            &[],
            &[(annotations::PUBLISHED_AT, Some(now.to_string()))],
        )
        .await?;
        info!(
            cas = serials.len(),
            "trust bundle with the new CA published"
        );
    }
    seen.rotation = Some(decision);
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
                        seen.certs.push(CertSeen {
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
/// again (the next renewal or rotation step), from what [`ensure_pki`] saw at `now`.
pub(super) fn tls_report(
    seen: &Seen,
    now: i64,
) -> (TlsStatus, (bool, &'static str, String), Option<Duration>) {
    let mut certificates = Vec::new();
    let mut next: Option<(i64, Duration)> = None;
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    for c in &seen.certs {
        let r = pki::renewal(now, c.info.not_before, c.info.not_after);
        let label = format!("{} certificate (Secret {})", c.name, c.secret);
        if c.renewed_by_operator {
            let check = r.next_check(now);
            if next.is_none_or(|(at, _)| r.renew_at < at) {
                next = Some((r.renew_at, check));
            }
        }
        if r.stage == pki::Stage::Expired {
            problems.push((
                reasons::CERTIFICATE_EXPIRED,
                format!(
                    "{label} is not valid now (notAfter {})",
                    rfc3339(c.info.not_after)
                ),
            ));
        } else if r.due() && c.name != "ca" {
            // The CA's last third is its rotation (below).
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
            renew_at: (c.renewed_by_operator || c.name == "ca").then(|| rfc3339(r.renew_at)),
        });
    }
    let next_renewal = next.map(|(at, _)| at);
    let mut rotation_note = None;
    if let Some(d) = &seen.rotation {
        let check = Duration::from_secs(
            u64::try_from(d.next_check.saturating_sub(now))
                .unwrap_or(0)
                .max(1),
        );
        if next.is_none_or(|(_, n)| check < n) {
            next = Some((d.next_check, check));
        }
        rotation_note = match d.stage {
            Stage::Stable => None,
            Stage::Overlap => Some(format!(
                "CA rotation: a new CA is trusted; the certificates move to it from {}",
                rfc3339(d.next_step_at)
            )),
            Stage::LeavesMoved => Some(format!(
                "CA rotation: the certificates moved to the new CA; the old CA leaves the \
                 trust bundle at {}",
                rfc3339(d.next_step_at)
            )),
        };
        if d.stage == Stage::Overlap
            && !d.waiting_for.is_empty()
            && now >= d.next_step_at.saturating_add(STALL_SECS)
        {
            problems.push((
                reasons::CA_ROTATION_STALLED,
                format!(
                    "the certificates wait to move to the new CA since {}: instance(s) {} do \
                     not accept its client certificates yet (the trust bundle not loaded); \
                     they move regardless when the old CA expires",
                    rfc3339(d.next_step_at),
                    d.waiting_for.join(", ")
                ),
            ));
        }
    }
    let condition = match problems.first() {
        None => {
            let mut message = match next_renewal {
                Some(at) => format!(
                    "every certificate is valid; next renewal at {}",
                    rfc3339(at)
                ),
                None => "every certificate is valid".to_string(),
            };
            if let Some(note) = rotation_note {
                message = format!("{message}; {note}");
            }
            (true, reasons::CERTIFICATES_VALID, message)
        }
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
        next_renewal: next_renewal.map(rfc3339),
        certificates,
        trust_bundle: seen
            .bundle
            .iter()
            .map(|(role, c)| TrustedCa {
                serial: c.serial.clone(),
                role: *role,
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
            })
            .collect(),
        ca_rotation: seen.rotation.as_ref().map(|d| CaRotationStatus {
            stage: match d.stage {
                Stage::Stable => CaRotationStage::Stable,
                Stage::Overlap => CaRotationStage::Overlap,
                Stage::LeavesMoved => CaRotationStage::LeavesMoved,
            },
            next_step_at: Some(rfc3339(d.next_step_at)),
        }),
    };
    (status, condition, next.map(|(_, d)| d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(certs: Vec<CertSeen>) -> Seen {
        Seen {
            certs,
            ..Seen::default()
        }
    }

    fn info(serial: &str, not_before: i64, not_after: i64) -> pki::CertInfo {
        pki::CertInfo {
            not_before,
            not_after,
            serial: serial.to_string(),
            names: Default::default(),
            key_id: None,
            authority_key_id: None,
        }
    }

    fn seen(name: &'static str, not_before: i64, not_after: i64, renewed: bool) -> CertSeen {
        CertSeen {
            name,
            secret: format!("s-{name}"),
            info: info("01", not_before, not_after),
            renewed_by_operator: renewed,
        }
    }

    #[test]
    fn tls_status_names_each_certificate_and_the_next_renewal() {
        let certs = of(vec![
            seen("ca", 0, 3000, false),
            seen("admin", 0, 90, true),
            seen("workstation", 30, 120, true),
        ]);
        let (status, (ok, reason, message), next) = tls_report(&certs, 40);
        assert!(ok, "{message}");
        assert_eq!(reason, reasons::CERTIFICATES_VALID);
        // The admin certificate is renewed first, at 60.
        assert_eq!(next, Some(Duration::from_secs(20)));
        assert_eq!(status.next_renewal.as_deref(), Some("1970-01-01T00:01:00Z"));
        assert_eq!(status.certificates.len(), 3);
        assert_eq!(
            status.certificates[0].renew_at.as_deref(),
            Some("1970-01-01T00:33:20Z"),
            "the CA's successor is made at two thirds of its life"
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
        let (_, (ok, reason, message), _) = tls_report(&certs, 70);
        assert!(!ok);
        assert_eq!(reason, reasons::CERTIFICATE_RENEWING);
        assert!(message.contains("s-admin"), "{message}");
        let (_, (ok, reason, _), _) = tls_report(&certs, 95);
        assert!(!ok);
        assert_eq!(reason, reasons::CERTIFICATE_EXPIRED);
        // A user's Secret in its last third: expiring, not renewing.
        let theirs = of(vec![seen("workstation", 0, 90, false)]);
        let (_, (_, reason, _), next) = tls_report(&theirs, 70);
        assert_eq!(reason, reasons::CERTIFICATE_EXPIRING);
        assert_eq!(next, None, "nothing for the operator to renew");
        // The CA in its last third is no problem: it is being rotated.
        let ca = of(vec![seen("ca", 0, 3000, false)]);
        assert!(tls_report(&ca, 2001).1.0);
        let (_, (ok, reason, _), _) = tls_report(&ca, 3000);
        assert!(!ok);
        assert_eq!(reason, reasons::CERTIFICATE_EXPIRED);
    }

    /// A rotation as `status.tls` shows it: both CAs and the stage, `TLSReady` True, the
    /// next look at the rotation's next step; False only when the move is held back long.
    #[test]
    fn tls_status_shows_the_bundle_and_the_rotation_stage() {
        let old = info("aa", 0, 120);
        let new = info("bb", 80, 200);
        let state = CaState {
            current: Window {
                not_before: 0,
                not_after: 120,
            },
            next: Some(Window {
                not_before: 80,
                not_after: 200,
            }),
            previous: None,
            published_at: Some(81),
            previous_leaves_until: None,
        };
        let overlap = |now: i64, pods: &PodTrust| Seen {
            certs: vec![seen("ca", 0, 120, false), seen("admin", 90, 150, true)],
            bundle: vec![(CaRole::Issuing, old.clone()), (CaRole::Next, new.clone())],
            rotation: Some(rotation::decide(&state, now, pods)),
        };
        let (status, (ok, reason, message), next) =
            tls_report(&overlap(90, &PodTrust::Unchecked), 90);
        assert!(ok, "{message}");
        assert_eq!(reason, reasons::CERTIFICATES_VALID);
        assert!(
            message.contains("the certificates move to it from 1970-01-01T00:01:41Z"),
            "{message}"
        );
        assert_eq!(
            next,
            Some(Duration::from_secs(11)),
            "back when the move is due"
        );
        let bundle: Vec<(String, CaRole, String)> = status
            .trust_bundle
            .iter()
            .map(|c| (c.serial.clone(), c.role, c.not_after.clone()))
            .collect();
        assert_eq!(
            bundle,
            vec![
                (
                    "aa".to_string(),
                    CaRole::Issuing,
                    "1970-01-01T00:02:00Z".to_string()
                ),
                (
                    "bb".to_string(),
                    CaRole::Next,
                    "1970-01-01T00:03:20Z".to_string()
                ),
            ]
        );
        let rotation = status.ca_rotation.clone().expect("rotation");
        assert_eq!(rotation.stage, CaRotationStage::Overlap);
        assert_eq!(
            rotation.next_step_at.as_deref(),
            Some("1970-01-01T00:01:41Z")
        );

        // A pod that has not loaded the bundle yet: fine for a while, then said.
        let waiting = PodTrust::Missing(vec!["kss-0".to_string()]);
        let (_, (ok, _, _), next) = tls_report(&overlap(102, &waiting), 102);
        assert!(ok);
        assert_eq!(next, Some(Duration::from_secs(5)));
        let stalled = Seen {
            certs: vec![seen("ca", 0, 1200, false)],
            rotation: Some(rotation::decide(
                &CaState {
                    current: Window {
                        not_before: 0,
                        not_after: 1200,
                    },
                    next: Some(Window {
                        not_before: 800,
                        not_after: 2000,
                    }),
                    published_at: Some(800),
                    ..state
                },
                1200 - 1,
                &waiting,
            )),
            ..overlap(0, &waiting)
        };
        let (_, (ok, reason, message), _) = tls_report(&stalled, 1199);
        assert!(!ok);
        assert_eq!(reason, reasons::CA_ROTATION_STALLED);
        assert!(message.contains("kss-0"), "{message}");

        // Leaves moved: the old CA is still trusted, until its end.
        let moved = Seen {
            certs: vec![seen("ca", 80, 200, false), seen("admin", 101, 161, true)],
            bundle: vec![
                (CaRole::Issuing, new.clone()),
                (CaRole::Previous, old.clone()),
            ],
            rotation: Some(rotation::decide(
                &CaState {
                    current: state.next.expect("next"),
                    next: None,
                    previous: Some(state.current),
                    published_at: None,
                    previous_leaves_until: Some(120),
                },
                101,
                &PodTrust::Unchecked,
            )),
        };
        let (status, (ok, _, message), _) = tls_report(&moved, 101);
        assert!(ok, "{message}");
        assert!(
            message.contains("leaves the trust bundle at 1970-01-01T00:02:00Z"),
            "{message}"
        );
        assert_eq!(status.trust_bundle.len(), 2);
        assert_eq!(
            status.ca_rotation.map(|r| r.stage),
            Some(CaRotationStage::LeavesMoved)
        );
    }
}
