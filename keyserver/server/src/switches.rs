//! What every instance follows from the database: enabled or not, and the policy version
//! in force. A watcher polls the database and swaps in a new policy without a restart;
//! a version that fails to load is logged and the one in force stays.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use kss_crypto::RowKey;
use kss_policy::Policy;
use kss_store::Store;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::db_deadline::DbDeadline;
use crate::integrity::RowChecker;
use crate::metrics::Metrics;

/// A policy version, compiled.
#[derive(Debug)]
pub struct ActivePolicy {
    /// 0: none loaded yet (only default approvals).
    pub version: u64,
    pub policy: Policy,
}

#[derive(Debug)]
pub struct Switches {
    pub enabled: bool,
    pub policy: Arc<ActivePolicy>,
    /// Whether the last poll of the database succeeded.
    pub database_ok: bool,
    /// Bumped by every revocation: cached profiles are dropped when it moves.
    pub revocation_epoch: u64,
}

/// What the policy rows are checked with.
pub struct PolicyCheck<'a> {
    pub key: &'a RowKey,
    pub checker: &'a RowChecker,
    pub metrics: &'a Metrics,
}

/// Reads the switches and compiles the policy in force (refused if its row fails its
/// integrity check).
pub async fn load(store: &dyn Store, check: &PolicyCheck<'_>) -> Result<Switches> {
    let state = store.state().await.context("reading keyserver state")?;
    let policy = load_policy(store, state.policy_version, check).await?;
    Ok(Switches {
        enabled: state.enabled,
        policy: Arc::new(policy),
        database_ok: true,
        revocation_epoch: state.revocation_epoch,
    })
}

async fn load_policy(
    store: &dyn Store,
    version: u64,
    check: &PolicyCheck<'_>,
) -> Result<ActivePolicy> {
    if version == 0 {
        return Ok(ActivePolicy {
            version,
            policy: Policy::empty(),
        });
    }
    let stored = store
        .policy(Some(version))
        .await
        .context("reading the policy")?
        .ok_or_else(|| anyhow!("policy version {version} is missing from the database"))?;
    if !check.checker.policy_ok(check.key, check.metrics, &stored) {
        return Err(anyhow!(
            "policy version {version} fails its integrity check: it was not stored by this \
             keyserver (changed in the database directly)"
        ));
    }
    let policy = Policy::load(&stored.text)
        .map_err(|e| anyhow!("policy version {version} does not load: {e}"))?;
    Ok(ActivePolicy { version, policy })
}

/// Polls the database every `interval` and publishes changes.
pub async fn watch(
    store: Arc<dyn Store>,
    tx: watch::Sender<Arc<Switches>>,
    interval: Duration,
    deadline: DbDeadline,
    metrics: Arc<Metrics>,
    key: Arc<crate::identity::KeyserverIdentity>,
) {
    let checker = RowChecker::default();
    let check = PolicyCheck {
        key: key.row_key(),
        checker: &checker,
        metrics: &metrics,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The version that last failed to load, so that it is reported once.
    let mut broken_version = None;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let current = Arc::clone(&tx.borrow());
        let state = match deadline.run("polling the state", store.state()).await {
            Ok(state) => state,
            Err(e) => {
                metrics.db_error("poll_state");
                if current.database_ok {
                    warn!(error = %e, "database unreachable: requests are denied until it returns");
                    tx.send_replace(Arc::new(Switches {
                        enabled: current.enabled,
                        policy: Arc::clone(&current.policy),
                        database_ok: false,
                        revocation_epoch: current.revocation_epoch,
                    }));
                }
                continue;
            }
        };
        let mut policy = Arc::clone(&current.policy);
        if state.policy_version != policy.version && broken_version != Some(state.policy_version) {
            let loaded = tokio::time::timeout(
                deadline.limit(),
                load_policy(store.as_ref(), state.policy_version, &check),
            )
            .await;
            let Ok(loaded) = loaded else {
                // Not the version's fault: read again at the next poll.
                metrics.db_error("poll_policy");
                warn!(
                    version = state.policy_version,
                    "reading a new policy version timed out"
                );
                continue;
            };
            match loaded {
                Ok(p) => {
                    info!(
                        version = p.version,
                        previous = policy.version,
                        "policy version applied"
                    );
                    policy = Arc::new(p);
                    broken_version = None;
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), version = state.policy_version, in_force = policy.version,
                        "new policy version not applied; the one in force stays");
                    broken_version = Some(state.policy_version);
                }
            }
        }
        if !current.database_ok {
            info!("database reachable again");
        }
        if state.enabled != current.enabled {
            info!(
                enabled = state.enabled,
                "keyserver {}",
                if state.enabled { "enabled" } else { "disabled" }
            );
        }
        if state.enabled != current.enabled
            || !Arc::ptr_eq(&policy, &current.policy)
            || !current.database_ok
            || state.revocation_epoch != current.revocation_epoch
        {
            tx.send_replace(Arc::new(Switches {
                enabled: state.enabled,
                policy,
                database_ok: true,
                revocation_epoch: state.revocation_epoch,
            }));
        }
    }
}
