//! Ciphertext verification off the async runtime, at a lower CPU priority.
//!
//! A verification is ~1–2 ms of one core; it runs on tokio's blocking threads. Those
//! threads run at a lower priority (nice 10) than the rest of the server, so that the short
//! steps of every request (TLS, decoding, the decision task, the database) are not queued
//! behind verifications: verification fills the CPU left over, which under full load is
//! nearly all of it. Measured on 2 vCPUs at half the crypto floor: p99 latency ~60 ms
//! before, ~20–30 ms after, with flat-out throughput unchanged.

use std::cell::Cell;
use std::sync::Arc;

use kss_crypto::CryptoError;
use kss_crypto::ciphertext::{VerificationCache, VerifiedCiphertext};

/// How much lower than the rest of the server verification threads run (nice value).
const VERIFY_NICENESS: i32 = 10;

pub struct Verifier {
    cache: Arc<VerificationCache>,
}

impl Verifier {
    pub fn new(cache: VerificationCache) -> Self {
        Verifier {
            cache: Arc::new(cache),
        }
    }

    /// Verifies `bytes` (from the cache when seen before). `None`: the task failed (the
    /// runtime is shutting down).
    pub async fn verify(&self, bytes: Vec<u8>) -> Option<Result<VerifiedCiphertext, CryptoError>> {
        let cache = Arc::clone(&self.cache);
        tokio::task::spawn_blocking(move || {
            lower_priority_once();
            cache.verify(&bytes)
        })
        .await
        .ok()
    }
}

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority, once per thread (Linux keeps a nice value per
/// thread). Failing to lower it only costs latency.
fn lower_priority_once() {
    LOWERED.with(|done| {
        if !done.replace(true) {
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), VERIFY_NICENESS) {
                tracing::warn!(error = %e, "could not lower the priority of a verification thread");
            }
        }
    });
}
