//! `kss.v1.Admin`: what only the running server knows (uptime, in-memory throttle
//! counters), and policy loading, for the `kss` CLI on the same host (a Unix socket, mode
//! 0600) and for the operator (`--admin-listen`, mutual TLS). [`AdminGate`] is what the
//! listeners serve: it answers FAILED_PRECONDITION while the instance refuses to serve.

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

use crate::commands::server_policy::{PolicyLoadError, store_policy};
use crate::decider::MemoryCounters;
use crate::identity::KeyserverIdentity;
use crate::switches::Switches;

/// `StatusResponse.mode`.
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
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("database: {e}"))
}

impl AdminService {
    fn lock_memory(&self) -> std::sync::MutexGuard<'_, MemoryCounters> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
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
        let profiles = self.store.profile_count().await.map_err(unavailable)?;
        let (approvals, denials) = self.store.audit_counts().await.map_err(unavailable)?;
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
                    .map(|(p, r, c)| (p, r, c, false)),
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
        let profile = request.into_inner().profile_id;
        let profile = Some(profile.as_str()).filter(|p| !p.is_empty());
        let cleared = self.lock_memory().clear(profile);
        info!(
            profile = profile.unwrap_or("*"),
            cleared, "in-memory quota counters cleared"
        );
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
        let source = request.into_inner().source;
        let stored = store_policy(self.store.as_ref(), &source)
            .await
            .map_err(|e| match e {
                PolicyLoadError::Invalid(e) => {
                    Status::invalid_argument(format!("{e}; the policy in force is unchanged"))
                }
                PolicyLoadError::Store(e) => unavailable(e),
            })?;
        for w in &stored.warnings {
            warn!(warning = %w, "policy migration warning");
        }
        if stored.changed {
            info!(version = stored.version, summary = %stored.summary, "policy version stored");
        }
        Ok(Response::new(pb::LoadPolicyResponse {
            version: stored.version,
            changed: stored.changed,
            rules: u32::try_from(stored.summary.rules).unwrap_or(u32::MAX),
        }))
    }
}

/// What the admin listeners answer with.
#[derive(Clone)]
pub enum AdminMode {
    /// The identity is not checked yet: UNAVAILABLE.
    Starting,
    /// The instance refuses to serve: FAILED_PRECONDITION with this message (it starts
    /// with the reason word and a colon).
    Refusing(Arc<str>),
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
            AdminMode::Refusing(why) => Err(Status::failed_precondition(why.to_string())),
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
}
