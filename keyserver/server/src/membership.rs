//! This instance in the registry: registered at start, a heartbeat every second carrying
//! the policy version it applied (written at once when it applies a new one, so a rollout
//! shows within a poll interval), marked stopped on a clean stop. One instance at a time,
//! under the `maintenance` lease, forgets instances offline for a day.

use std::sync::Arc;
use std::time::Duration;

use kss_store::{InstanceInfo, Lease, LeaseClaim, Store};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::switches::Switches;

/// How often an instance reports.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Registry rows offline this long are deleted.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often the maintenance lease is tried.
const MAINTENANCE_EVERY: u32 = 60;
const MAINTENANCE_LEASE: &str = "maintenance";

pub struct Membership {
    pub store: Arc<dyn Store>,
    pub info: InstanceInfo,
    pub switches: watch::Receiver<Arc<Switches>>,
    pub metrics: Arc<Metrics>,
}

impl Membership {
    fn applied(&self) -> u64 {
        self.switches.borrow().policy.version
    }

    /// Registers, retrying until the database answers.
    pub async fn register(&self) {
        loop {
            match self
                .store
                .register_instance(&self.info, self.applied())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.db_error("register");
                    warn!(error = %e, "cannot register this instance yet; retrying");
                    tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                }
            }
        }
    }

    /// Heartbeats until `stopped` resolves, then marks the instance stopped.
    pub async fn run(mut self, stopped: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = ticker.tick() => {}
                changed = self.switches.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            self.beat().await;
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(MAINTENANCE_EVERY) {
                self.maintain().await;
            }
        }
        if let Err(e) = self
            .store
            .mark_stopped(&self.info.name, &self.info.incarnation)
            .await
        {
            warn!(error = %e, "could not mark this instance stopped; it shows offline once its heartbeat is stale");
        }
    }

    async fn beat(&self) {
        let applied = self.applied();
        match self
            .store
            .heartbeat(&self.info.name, &self.info.incarnation, applied)
            .await
        {
            Ok(true) => debug!(applied, "heartbeat"),
            Ok(false) => {
                // Another process registered under this name (a misconfiguration, or this
                // process was cut off long enough for its replacement to start).
                warn!(name = %self.info.name, "another process took over this instance name; registering again");
                self.register().await;
            }
            Err(e) => {
                self.metrics.db_error("heartbeat");
                debug!(error = %e, "heartbeat failed");
            }
        }
    }

    async fn maintain(&self) {
        let holder = format!("{}/{}", self.info.name, self.info.incarnation);
        let lease: Lease = match self
            .store
            .claim_lease(MAINTENANCE_LEASE, &holder, 30_000)
            .await
        {
            Ok(LeaseClaim::Granted { lease, .. }) => lease,
            Ok(LeaseClaim::HeldBy { .. }) => return,
            Err(e) => {
                debug!(error = %e, "maintenance lease unavailable");
                return;
            }
        };
        match self.store.forget_instances(&lease, FORGET_AFTER_MS).await {
            Ok(0) => {}
            Ok(n) => info!(forgotten = n, "forgot instances offline for a day"),
            Err(e) => debug!(error = %e, "forgetting old instances failed"),
        }
        let _ = self.store.release_lease(&lease).await;
    }
}
