//! `kss.v1.Admin`: what only the running server knows (uptime, in-memory throttle
//! counters), and policy loading, for the `kss` CLI on the same host (a Unix socket, mode
//! 0600) and for the operator (`--admin-listen`, mutual TLS). [`AdminGate`] is what the
//! listeners serve: it answers FAILED_PRECONDITION (with a typed `kss.v1.Refusal`) while
//! the instance refuses to serve.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kss_policy::{QuotaWindow, counter_at_quota};
use kss_proto::v1 as pb;
use kss_proto::v1::admin_server::Admin;
use kss_store::Store;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::audit_log::{self, Actor, admin_record};
use crate::backup_key::{self, BackupRequestError, IssueError};
use crate::bootstrap::Refusal;
use crate::clock::now_ms;
use crate::contracts;
use crate::decider::MemoryCounters;
use crate::identity::KeyserverIdentity;
use crate::integrity::RowChecker;
use crate::metrics::Metrics;
use crate::policy_store::{PolicyLoadError, store_policy};
use crate::requests::onboarding::{new_token, token_digest};
use crate::switches::Switches;
use kss_crypto::ids::{DeviceId, ProfileId};
use kss_crypto::words::profile_words;
use kss_crypto::{ProfilePublicKeys, WorkstationPublicShare};
use kss_store::{Enrollment, Profile, Revocation, StoreError};

/// `StatusResponse.mode`.
/// How long `Status` waits for its counts before it answers without them.
const STATUS_COUNTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The data directory's SQLite database.
    Standalone,
    /// A shared MySQL/MariaDB database.
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        }
    }
}

pub struct AdminService {
    pub identity: Arc<KeyserverIdentity>,
    pub store: Arc<dyn Store>,
    pub switches: watch::Receiver<Arc<Switches>>,
    pub memory: Arc<Mutex<MemoryCounters>>,
    pub started: Instant,
    pub instance_id: String,
    pub time_zone: TimeZone,
    pub mode: Mode,
    pub metrics: Arc<Metrics>,
    pub checker: RowChecker,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("database: {e}"))
}

/// A canonical id field, or INVALID_ARGUMENT naming it.
fn id_field<T>(field: &str, text: &str) -> Result<T, Status>
where
    T: std::str::FromStr<Err = kss_crypto::CryptoError>,
{
    text.parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Largest page of `ListProfiles`.
const MAX_PROFILE_PAGE: u32 = 1000;
/// Longest enrollment token validity.
const MAX_ENROLLMENT_TTL_SECONDS: u64 = 366 * 24 * 3600;

impl AdminService {
    /// Records an administrative action that was done, with who did it. If the record
    /// cannot be written the answer says so (the action stands).
    async fn audited(
        &self,
        actor: &Actor,
        action: &str,
        profile_id: Option<String>,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        let version = self.switches.borrow().policy.version;
        let record = admin_record(
            &self.instance_id,
            actor,
            action,
            profile_id,
            detail,
            version,
        );
        audit_log::record(self.store.as_ref(), record)
            .await
            .map(drop)
            .map_err(|e| {
                Status::unavailable(format!(
                    "done, but its audit record could not be written: {e}"
                ))
            })
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, MemoryCounters> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A profile as the admin API shows it: derived words, revocations, integrity.
    fn profile_info(&self, row: &Profile, revocations: &[Revocation]) -> pb::ProfileInfo {
        let intact = self
            .checker
            .profile_ok(self.identity.row_key(), &self.metrics, row);
        let words = match (
            row.profile_id.parse::<ProfileId>(),
            WorkstationPublicShare::from_bytes(&row.workstation_share),
        ) {
            (Ok(id), Ok(ws)) if intact => {
                let keys =
                    ProfilePublicKeys::from_shares(&ws, &self.identity.profile_share(&id).public());
                profile_words(&self.identity.id, &id, &keys)
            }
            _ => Vec::new(),
        };
        pb::ProfileInfo {
            profile_id: row.profile_id.clone(),
            device_id: row.device_id.clone(),
            name: row.name.clone(),
            words,
            created_at_ms: row.created_at_ms,
            revocations: revocations
                .iter()
                .filter(|r| r.profile_id == row.profile_id)
                .map(|r| pb::Revocation {
                    device_id: r.device_id.clone().unwrap_or_default(),
                    revoked_at_ms: r.revoked_at_ms,
                    reason: r.reason.clone(),
                })
                .collect(),
            intact,
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[instrument(skip_all, fields(rpc = "Admin.Status"))]
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let switches = Arc::clone(&self.switches.borrow());
        // Answered whether the database is there or not (the operator reports an outage
        // from it): the counts only while it answers, within a bound.
        let counts = async {
            let profiles = self.store.profile_count().await?;
            let (approvals, denials) = self.store.audit_counts().await?;
            Ok::<_, kss_store::StoreError>((profiles, approvals, denials))
        };
        let counts = match switches.database_ok {
            true => tokio::time::timeout(STATUS_COUNTS_WITHIN, counts)
                .await
                .ok()
                .and_then(Result::ok),
            false => None,
        };
        let (profiles, approvals, denials) = counts.unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            keyserver_id: self.identity.id.to_string(),
            enabled: switches.enabled,
            policy_version: switches.policy.version,
            uptime_seconds: self.started.elapsed().as_secs(),
            profiles,
            approvals,
            denials,
            instance_id: self.instance_id.clone(),
            mode: self.mode.as_str().to_string(),
            kss_version: env!("CARGO_PKG_VERSION").to_string(),
            database_reachable: counts.is_some(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.ListQuotas"))]
    async fn list_quotas(
        &self,
        _request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let switches = Arc::clone(&self.switches.borrow());
        let limits = switches.policy.policy.quota_limits();
        let window = QuotaWindow::of(self.time_zone.to_datetime(Timestamp::now()));
        let persistent = self.store.counters(None).await.map_err(unavailable)?;
        let mut entries: Vec<pb::QuotaEntry> = persistent
            .into_iter()
            .map(|c| (c.profile_id, c.rule_id, c.counter, true))
            .chain(
                self.lock_memory()
                    .list()
                    .into_iter()
                    .map(|(p, r, c)| (p.to_string(), r, c, false)),
            )
            .map(|(profile_id, rule_id, counter, persistent)| {
                let (hour_used, day_used) = counter
                    .usage_at(window)
                    .unwrap_or((counter.hour_used, counter.day_used));
                pb::QuotaEntry {
                    at_quota: counter_at_quota(limits, &rule_id, &counter, window),
                    profile_id,
                    rule_id,
                    hour_used,
                    day_used,
                    persistent,
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.profile_id, &a.rule_id).cmp(&(&b.profile_id, &b.rule_id)));
        Ok(Response::new(pb::ListQuotasResponse { entries }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.ClearQuotas"))]
    async fn clear_quotas(
        &self,
        request: Request<pb::ClearQuotasRequest>,
    ) -> Result<Response<pb::ClearQuotasResponse>, Status> {
        let actor = Actor::of(&request);
        let profile = request.into_inner().profile_id;
        let profile: Option<ProfileId> = match profile.as_str() {
            "" => None,
            text => Some(id_field("profile_id", text)?),
        };
        let cleared = self.lock_memory().clear(profile.as_ref());
        info!(
            profile = profile.map_or_else(|| "*".to_string(), |p| p.to_string()),
            cleared, %actor, "in-memory quota counters cleared"
        );
        self.audited(
            &actor,
            "quota_clear",
            profile.map(|p| p.to_string()),
            serde_json::json!({"counters": "memory", "cleared": cleared}),
        )
        .await?;
        Ok(Response::new(pb::ClearQuotasResponse { cleared }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.ListInstances"))]
    async fn list_instances(
        &self,
        _request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let report = crate::rollout::instances(self.store.as_ref())
            .await
            .map_err(unavailable)?;
        Ok(Response::new(report))
    }

    #[instrument(skip_all, fields(rpc = "Admin.LoadPolicy"))]
    async fn load_policy(
        &self,
        request: Request<pb::LoadPolicyRequest>,
    ) -> Result<Response<pb::LoadPolicyResponse>, Status> {
        let actor = Actor::of(&request);
        let source = request.into_inner().source;
        let stored = store_policy(self.store.as_ref(), self.identity.row_key(), &source)
            .await
            .map_err(|e| match e {
                PolicyLoadError::Invalid(e) => contracts::policy_rejected_status(&e),
                PolicyLoadError::Store(e) => unavailable(e),
            })?;
        for w in &stored.warnings {
            warn!(warning = %w, "policy migration warning");
        }
        if stored.changed {
            info!(version = stored.version, summary = %stored.summary, %actor, "policy version stored");
        }
        self.audited(
            &actor,
            "policy_load",
            None,
            serde_json::json!({
                "version": stored.version, "changed": stored.changed,
                "sha256": stored.sha256, "rules": stored.summary.rules,
            }),
        )
        .await?;
        Ok(Response::new(pb::LoadPolicyResponse {
            version: stored.version,
            changed: stored.changed,
            rules: u32::try_from(stored.summary.rules).unwrap_or(u32::MAX),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.ListProfiles"))]
    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let request = request.into_inner();
        let after: Option<ProfileId> = match request.after.as_str() {
            "" => None,
            text => Some(id_field("after", text)?),
        };
        let limit = match request.limit {
            0 => 100,
            n => n.min(MAX_PROFILE_PAGE),
        };
        let after = after.map(|p| p.to_string());
        let rows = self
            .store
            .list_profiles(after.as_deref(), limit)
            .await
            .map_err(unavailable)?;
        let revocations = self.store.revocations(None).await.map_err(unavailable)?;
        Ok(Response::new(pb::ListProfilesResponse {
            profiles: rows
                .iter()
                .map(|row| self.profile_info(row, &revocations))
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.GetProfile"))]
    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::ProfileInfo>, Status> {
        let id: ProfileId = id_field("profile_id", &request.into_inner().profile_id)?;
        let key = id.to_string();
        let row = self
            .store
            .profile(&key)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found(format!("profile {id} is not onboarded here")))?;
        let revocations = self
            .store
            .revocations(Some(&key))
            .await
            .map_err(unavailable)?;
        Ok(Response::new(self.profile_info(&row, &revocations)))
    }

    #[instrument(skip_all, fields(rpc = "Admin.RevokeProfile"))]
    async fn revoke_profile(
        &self,
        request: Request<pb::RevokeProfileRequest>,
    ) -> Result<Response<pb::RevokeProfileResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let id: ProfileId = id_field("profile_id", &request.profile_id)?;
        let device: Option<DeviceId> = match request.device_id.as_str() {
            "" => None,
            text => Some(id_field("device_id", text)?),
        };
        if request.reason.len() > 1024 {
            return Err(Status::invalid_argument(
                "reason: more than the limit of 1024 bytes",
            ));
        }
        // A profile this keyserver never onboarded can still be revoked (its token must
        // never register it, e.g. after a recovery into a new database).
        let changed = self
            .store
            .revoke(&Revocation {
                profile_id: id.to_string(),
                device_id: device.map(|d| d.to_string()),
                revoked_at_ms: now_ms(),
                reason: request.reason.clone(),
            })
            .await
            .map_err(unavailable)?;
        info!(profile = %id, device = ?device, changed, %actor, "profile revoked");
        self.audited(
            &actor,
            "revoke",
            Some(id.to_string()),
            serde_json::json!({
                "device_id": device.map(|d| d.to_string()), "reason": request.reason,
                "changed": changed,
            }),
        )
        .await?;
        Ok(Response::new(pb::RevokeProfileResponse { changed }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.CreateEnrollment"))]
    async fn create_enrollment(
        &self,
        request: Request<pb::CreateEnrollmentRequest>,
    ) -> Result<Response<pb::CreateEnrollmentResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        if request.uses == 0 {
            return Err(Status::invalid_argument("uses: must be at least 1"));
        }
        if request.ttl_seconds == 0 || request.ttl_seconds > MAX_ENROLLMENT_TTL_SECONDS {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: must be between 1 and {MAX_ENROLLMENT_TTL_SECONDS}"
            )));
        }
        if request.note.len() > 1024 {
            return Err(Status::invalid_argument(
                "note: more than the limit of 1024 bytes",
            ));
        }
        let (id, token) = new_token();
        let now = now_ms();
        let ttl_ms = i64::try_from(request.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let expires_at_ms = now.saturating_add(ttl_ms);
        self.store
            .create_enrollment(&Enrollment {
                id: id.clone(),
                token_sha256: token_digest(&token).to_vec(),
                uses_total: request.uses,
                uses_left: request.uses,
                expires_at_ms,
                created_at_ms: now,
                note: request.note.clone(),
            })
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(_) => Status::aborted("token collision: try again"),
                e => unavailable(e),
            })?;
        info!(enrollment = %id, uses = request.uses, expires_at_ms, %actor, "enrollment token created");
        // The token's public id only: the token itself is never recorded.
        self.audited(
            &actor,
            "enrollment_create",
            None,
            serde_json::json!({
                "enrollment_id": id, "uses": request.uses, "expires_at_ms": expires_at_ms,
                "note": request.note,
            }),
        )
        .await?;
        Ok(Response::new(pb::CreateEnrollmentResponse {
            id,
            token,
            expires_at_ms,
        }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.ListEnrollments"))]
    async fn list_enrollments(
        &self,
        _request: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        let rows = self.store.enrollments().await.map_err(unavailable)?;
        Ok(Response::new(pb::ListEnrollmentsResponse {
            enrollments: rows
                .into_iter()
                .map(|e| pb::Enrollment {
                    id: e.id,
                    uses_total: e.uses_total,
                    uses_left: e.uses_left,
                    expires_at_ms: e.expires_at_ms,
                    created_at_ms: e.created_at_ms,
                    note: e.note,
                })
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "Admin.IssueBackupKey"))]
    async fn issue_backup_key(
        &self,
        request: Request<pb::IssueBackupKeyRequest>,
    ) -> Result<Response<pb::IssueBackupKeyResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let invalid = |e: BackupRequestError| Status::invalid_argument(e.to_string());
        // Bounded before anything is decoded.
        if request.holders.len() > backup_key::MAX_HOLDERS {
            return Err(invalid(BackupRequestError::TooManyHolders {
                count: request.holders.len(),
            }));
        }
        let holders = request
            .holders
            .into_iter()
            .enumerate()
            .map(|(index, h)| {
                if h.name.len() > backup_key::MAX_HOLDER_NAME {
                    return Err(BackupRequestError::NameTooLong {
                        index,
                        len: h.name.len(),
                    });
                }
                Ok((h.name, backup_key::parse_holder_key(index, &h.public_key)?))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let threshold = usize::try_from(request.threshold).unwrap_or(usize::MAX);
        let backup =
            backup_key::issue_backup(&self.identity, &holders, threshold, request.allow_weak)
                .map_err(|e| match e {
                    IssueError::Invalid(e) => invalid(e),
                    IssueError::Crypto(e) => {
                        Status::internal(format!("creating the backup key: {e}"))
                    }
                })?;
        let names: Vec<&str> = holders.iter().map(|(name, _)| name.as_str()).collect();
        info!(
            keyserver_id = %self.identity.id, holders = holders.len(), threshold,
            allow_weak = request.allow_weak, %actor, "backup key issued"
        );
        // Names, public keys and threshold: nothing secret (the key itself is not recorded).
        self.audited(
            &actor,
            "backup_key_issue",
            None,
            serde_json::json!({
                "keyserver_id": self.identity.id.to_string(),
                "holders": names,
                "public_keys": holders.iter().map(|(_, k)| k.to_hex()).collect::<Vec<_>>(),
                "threshold": threshold,
                "allow_weak": request.allow_weak,
            }),
        )
        .await?;
        Ok(Response::new(pb::IssueBackupKeyResponse {
            keyserver_id: self.identity.id.to_string(),
            backup_json: backup.to_json(),
            holders: u32::try_from(holders.len()).unwrap_or(u32::MAX),
            threshold: request.threshold,
        }))
    }
}

/// What the admin listeners answer with.
#[derive(Clone)]
pub enum AdminMode {
    /// The identity is not checked yet: UNAVAILABLE.
    Starting,
    /// The instance refuses to serve: FAILED_PRECONDITION with this refusal's message and
    /// its typed reason (see [`contracts::refusal_status`]).
    Refusing(Arc<Refusal>),
    Serving(Arc<AdminService>),
}

/// The `Admin` service the listeners serve, whatever the instance's state: it passes
/// calls to the [`AdminService`] once the instance serves.
pub struct AdminGate {
    pub mode: watch::Receiver<AdminMode>,
}

impl AdminGate {
    fn service(&self) -> Result<Arc<AdminService>, Status> {
        match &*self.mode.borrow() {
            AdminMode::Serving(service) => Ok(Arc::clone(service)),
            AdminMode::Refusing(why) => Err(contracts::refusal_status(why)),
            AdminMode::Starting => Err(Status::unavailable(
                "the keyserver is starting: its identity is not checked yet",
            )),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminGate {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.service()?.status(request).await
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        self.service()?.list_quotas(request).await
    }

    async fn clear_quotas(
        &self,
        request: Request<pb::ClearQuotasRequest>,
    ) -> Result<Response<pb::ClearQuotasResponse>, Status> {
        self.service()?.clear_quotas(request).await
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        self.service()?.list_instances(request).await
    }

    async fn load_policy(
        &self,
        request: Request<pb::LoadPolicyRequest>,
    ) -> Result<Response<pb::LoadPolicyResponse>, Status> {
        self.service()?.load_policy(request).await
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        self.service()?.list_profiles(request).await
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::ProfileInfo>, Status> {
        self.service()?.get_profile(request).await
    }

    async fn revoke_profile(
        &self,
        request: Request<pb::RevokeProfileRequest>,
    ) -> Result<Response<pb::RevokeProfileResponse>, Status> {
        self.service()?.revoke_profile(request).await
    }

    async fn create_enrollment(
        &self,
        request: Request<pb::CreateEnrollmentRequest>,
    ) -> Result<Response<pb::CreateEnrollmentResponse>, Status> {
        self.service()?.create_enrollment(request).await
    }

    async fn list_enrollments(
        &self,
        request: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        self.service()?.list_enrollments(request).await
    }

    async fn issue_backup_key(
        &self,
        request: Request<pb::IssueBackupKeyRequest>,
    ) -> Result<Response<pb::IssueBackupKeyResponse>, Status> {
        self.service()?.issue_backup_key(request).await
    }
}
