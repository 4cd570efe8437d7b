//! One active standalone server per data: the `standalone` lease. A second server on the
//! same database waits (it does not serve) until the lease is free: released by a clean
//! stop, or expired after the holder died. The holder renews it; every decision
//! transaction checks its fencing token, so a holder that lost it (paused, cut off) cannot
//! approve anything, and it stops when it notices.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kss_store::{Lease, LeaseClaim, Store};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::shutdown::Shutdown;

pub const LEASE_NAME: &str = "standalone";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Renewals per lease period: a holder misses several before it loses the lease.
const RENEWALS_PER_TTL: u32 = 5;

/// The lease as claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    /// When the claim was sent: the store counts the lease's period from a later moment
    /// (when it ran the claim), so the lease is held for sure until `at` + the period.
    pub at: Instant,
}

/// Claims the lease for `ttl`, waiting while another server holds it (or until `shutdown`).
pub async fn acquire(
    store: &dyn Store,
    holder: &str,
    ttl: Duration,
    shutdown: &Shutdown,
) -> Result<Option<Claimed>> {
    let stopped = shutdown.stopped();
    tokio::pin!(stopped);
    let mut told = false;
    loop {
        let at = Instant::now();
        match store.claim_lease(LEASE_NAME, holder, ms(ttl)).await {
            Ok(LeaseClaim::Granted { lease, .. }) => {
                info!(token = lease.token, "standalone lease acquired");
                return Ok(Some(Claimed { lease, at }));
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
///
/// A renewal waits at most until the lease expires: a database that stalls (another
/// process holds SQLite's write lock, a disk that hangs) would otherwise hold it past the
/// expiry, and a renewal that lands late is not one made in time.
pub async fn keep(
    store: Arc<dyn Store>,
    claimed: Claimed,
    ttl: Duration,
    shutdown: Arc<Shutdown>,
    done: impl Future<Output = ()>,
) {
    let Claimed { lease, at } = claimed;
    tokio::pin!(done);
    // Until when the lease is this server's for sure: the period from the moment the last
    // successful claim or renewal was sent.
    let mut held_until = at + ttl;
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = tokio::time::sleep(ttl / RENEWALS_PER_TTL) => {}
        }
        let attempt = Instant::now();
        let renewed = tokio::time::timeout_at(held_until, store.renew_lease(&lease, ms(ttl))).await;
        let Ok(renewed) = renewed else {
            let why = format!(
                "could not renew the standalone lease before it expired: the database did not \
                 answer within {} ms",
                ms(held_until.saturating_duration_since(attempt))
            );
            error!("{why}");
            shutdown.fail(why);
            return;
        };
        match renewed {
            Ok(true) => held_until = attempt + ttl,
            Ok(false) => {
                let why = format!(
                    "lost the standalone lease (token {}): another server took over this data",
                    lease.token
                );
                error!("{why}");
                shutdown.fail(why);
                return;
            }
            Err(e) if Instant::now() >= held_until => {
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
