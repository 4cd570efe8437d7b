//! One active standalone server per data: the `standalone` lease. A second server on the
//! same database waits (it does not serve) until the lease is free: released by a clean
//! stop, or expired after the holder died. The holder renews it; every decision
//! transaction checks its fencing token, so a holder that lost it (paused, cut off) cannot
//! approve anything, and it stops when it notices.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kss_store::{Lease, LeaseClaim, Store};
use tracing::{error, info, warn};

use crate::shutdown::Shutdown;

pub const LEASE_NAME: &str = "standalone";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Renewals per lease period: a holder misses several before it loses the lease.
const RENEWALS_PER_TTL: u32 = 5;

/// Claims the lease for `ttl`, waiting while another server holds it (or until `shutdown`).
pub async fn acquire(
    store: &dyn Store,
    holder: &str,
    ttl: Duration,
    shutdown: &Shutdown,
) -> Result<Option<Lease>> {
    let stopped = shutdown.stopped();
    tokio::pin!(stopped);
    let mut told = false;
    loop {
        match store.claim_lease(LEASE_NAME, holder, ms(ttl)).await {
            Ok(LeaseClaim::Granted { lease, .. }) => {
                info!(token = lease.token, "standalone lease acquired");
                return Ok(Some(lease));
            }
            Ok(LeaseClaim::HeldBy {
                holder: other,
                expires_in_ms,
            }) => {
                if !told {
                    let msg = format!(
                        "another kss server ({other}) is active on this data; waiting until it \
                         stops (its lease expires in {:.1}s unless renewed)",
                        expires_in_ms as f64 / 1000.0
                    );
                    warn!("{msg}");
                    eprintln!("{msg}");
                    told = true;
                }
            }
            Err(e) => warn!(error = %e, "cannot claim the standalone lease yet"),
        }
        tokio::select! {
            _ = &mut stopped => return Ok(None),
            _ = tokio::time::sleep(ttl / RENEWALS_PER_TTL) => {}
        }
    }
}

/// Renews the lease (for `ttl` each time) until `done` resolves (the server has decided
/// its last request), then releases it. If it is lost (another server took it over) or
/// cannot be renewed before it expires, the server stops with an error.
pub async fn keep(
    store: Arc<dyn Store>,
    lease: Lease,
    ttl: Duration,
    shutdown: Arc<Shutdown>,
    done: impl Future<Output = ()>,
) {
    tokio::pin!(done);
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = tokio::time::sleep(ttl / RENEWALS_PER_TTL) => {}
        }
        match store.renew_lease(&lease, ms(ttl)).await {
            Ok(true) => renewed_at = tokio::time::Instant::now(),
            Ok(false) => {
                let why = format!(
                    "lost the standalone lease (token {}): another server took over this data",
                    lease.token
                );
                error!("{why}");
                shutdown.fail(why);
                return;
            }
            Err(e) if renewed_at.elapsed() >= ttl => {
                let why = format!("could not renew the standalone lease before it expired: {e}");
                error!("{why}");
                shutdown.fail(why);
                return;
            }
            Err(e) => warn!(error = %e, "renewing the standalone lease failed; retrying"),
        }
    }
    if let Err(e) = store.release_lease(&lease).await {
        warn!(error = %e, "could not release the standalone lease; it expires by itself");
    }
}
