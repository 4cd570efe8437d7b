//! Ciphertext verification off the async runtime, in batches, at a lower CPU priority;
//! the onboarding pairing check runs on the same threads, in the same bounded queue.
//!
//! Requests put their ciphertext in a queue; at most one verification thread per core
//! (tokio's blocking threads) works on it. A thread takes its equal share of what is
//! waiting, at most [`MAX_BATCH`], and checks it with one batched pairing equation
//! ([`VerificationCache::verify_batch`]): idle, a ciphertext is verified alone at once;
//! under load the batches grow and each ciphertext costs less (figures in the README's
//! benchmarks).
//!
//! The queue is bounded ([`MAX_WAITING`]): when it is full a request is refused at once
//! ([`NotVerified::QueueFull`], denied as unavailable) instead of waiting behind seconds of
//! work, so a flood of signed decrypts cannot grow memory or latency without bound.
//!
//! The verification threads can run at a lower priority than the rest of the server
//! (`kss serve --verify-niceness N`: N nice levels below its main thread), so that the
//! short steps of every request (TLS, decoding, the decision task, the database) are not
//! queued behind verifications. By default they run at the server's own priority: a nice
//! value also weighs against every other process of the same scheduling group (on Linux
//! with autogroups, the same session; in a container, its cgroup), and at 10 levels below,
//! a build at nice 5 or a load generator at nice 0 beside the server got the cores first
//! while verifications queued for seconds (figures in the README's benchmarks, issue 22).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kss_crypto::CryptoError;
use kss_crypto::ciphertext::{VerificationCache, VerifiedCiphertext};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// How many nice levels below the server's main thread verification threads run by
/// default: none (it was 10 before issue 22).
pub const DEFAULT_VERIFY_NICENESS: i32 = 0;

/// The most ciphertexts verified in one batch (~14 ms of one core).
pub const MAX_BATCH: usize = 16;

/// The most ciphertexts waiting for a verification thread: about 2 s of work for two
/// cores in full batches.
pub const MAX_WAITING: usize = 4_096;

type Verdict = Result<VerifiedCiphertext, CryptoError>;

/// Why a ciphertext got no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotVerified {
    /// [`MAX_WAITING`] ciphertexts are waiting already.
    QueueFull,
    /// The runtime is shutting down: the verification could not run.
    ShuttingDown,
}

impl NotVerified {
    /// For the client: why the keyserver could not check its request now.
    pub fn as_str(self) -> &'static str {
        match self {
            NotVerified::QueueFull => "the keyserver is busy verifying: try again later",
            NotVerified::ShuttingDown => "shutting down",
        }
    }
}

pub struct Verifier {
    cache: Arc<VerificationCache>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Nice levels below the server's main thread for the verification threads.
    niceness: i32,
}

/// Work waiting for a verification thread.
enum Waiting {
    /// A ciphertext, verified in a batch with the others waiting.
    Ciphertext {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Verdict>,
    },
    /// Another check (the onboarding pairing check), run alone; it sends its own reply.
    Check(Box<dyn FnOnce() + Send>),
}

struct Queue {
    waiting: Mutex<Vec<Waiting>>,
    /// Verification threads running now.
    threads: AtomicUsize,
    max_threads: usize,
    max_waiting: usize,
}

impl Verifier {
    /// A verifier with one verification thread per core at most.
    pub fn new(cache: VerificationCache, metrics: Arc<Metrics>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(cache, cores, metrics)
    }

    /// A verifier with at most `max_threads` verification threads (at least one).
    pub fn with_threads(
        cache: VerificationCache,
        max_threads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_limits(cache, max_threads, MAX_WAITING, metrics)
    }

    /// A verifier with at most `max_threads` verification threads (at least one) and
    /// `max_waiting` ciphertexts waiting for them.
    fn with_limits(
        cache: VerificationCache,
        max_threads: usize,
        max_waiting: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Verifier {
            metrics,
            niceness: DEFAULT_VERIFY_NICENESS,
            cache: Arc::new(cache),
            queue: Arc::new(Queue {
                waiting: Mutex::new(Vec::new()),
                threads: AtomicUsize::new(0),
                max_threads: max_threads.max(1),
                max_waiting,
            }),
        }
    }

    /// Runs the verification threads `niceness` nice levels below the server's main thread
    /// (0: at its priority; at most nice 19).
    pub fn with_niceness(mut self, niceness: i32) -> Self {
        self.niceness = niceness.max(0);
        self
    }

    /// Verifies `bytes` (from the cache when seen before).
    pub async fn verify(&self, bytes: Vec<u8>) -> Result<Verdict, NotVerified> {
        // A repeat is answered here: a hash and a lookup, no thread hand-off.
        if let Some(verified) = self.cache.cached(&bytes) {
            return Ok(Ok(verified));
        }
        let (reply, verdict) = oneshot::channel();
        self.enqueue(Waiting::Ciphertext { bytes, reply })?;
        verdict.await.map_err(|_| NotVerified::ShuttingDown)
    }

    /// Runs `check` (CPU-bound: a pairing check) on a verification thread, in the same
    /// bounded queue as the ciphertexts.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NotVerified> {
        let (reply, result) = oneshot::channel();
        self.enqueue(Waiting::Check(Box::new(move || {
            // The requester may have gone (client cancelled).
            let _ = reply.send(check());
        })))?;
        result.await.map_err(|_| NotVerified::ShuttingDown)
    }

    /// Queues `item` (refused when the queue is full) and starts a verification thread if
    /// fewer than the most are running.
    fn enqueue(&self, item: Waiting) -> Result<(), NotVerified> {
        {
            let mut waiting = self.queue.lock();
            if waiting.len() >= self.queue.max_waiting {
                self.metrics.verify_queue_full();
                return Err(NotVerified::QueueFull);
            }
            waiting.push(item);
        }
        if self.queue.claim_thread() {
            let queue = Arc::clone(&self.queue);
            let cache = Arc::clone(&self.cache);
            let metrics = Arc::clone(&self.metrics);
            let niceness = self.niceness;
            // If the runtime is shutting down the task never runs: `reply` is dropped and
            // this request answers `ShuttingDown`.
            drop(tokio::task::spawn_blocking(move || {
                lower_priority_once(niceness);
                work(&queue, &cache, &metrics);
            }));
        }
        Ok(())
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // A plain list: a panic elsewhere cannot leave it inconsistent.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more verification thread, unless there are enough already.
    fn claim_thread(&self) -> bool {
        self.threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_threads).then_some(n + 1)
            })
            .is_ok()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// This thread's share of what is waiting: an equal part for every verification
    /// thread (so that they work in parallel rather than one on a long batch), at most
    /// [`MAX_BATCH`].
    fn take_batch(&self) -> Vec<Waiting> {
        let mut waiting = self.lock();
        let n = waiting.len().div_ceil(self.max_threads).min(MAX_BATCH);
        waiting.drain(..n).collect()
    }
}

/// A counted verification thread; uncounted when dropped (also if verification panics).
struct ThreadSlot<'a>(&'a Queue);

impl Drop for ThreadSlot<'_> {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The body of a verification thread (counted by `claim_thread` before it was started):
/// verifies batches until the queue is empty.
fn work(queue: &Queue, cache: &VerificationCache, metrics: &Metrics) {
    loop {
        let slot = ThreadSlot(queue);
        loop {
            let batch = queue.take_batch();
            if batch.is_empty() {
                break;
            }
            let mut ciphertexts = Vec::with_capacity(batch.len());
            for waiting in batch {
                match waiting {
                    Waiting::Ciphertext { bytes, reply } => ciphertexts.push((bytes, reply)),
                    Waiting::Check(check) => check(),
                }
            }
            if ciphertexts.is_empty() {
                continue;
            }
            let items: Vec<&[u8]> = ciphertexts.iter().map(|(b, _)| b.as_slice()).collect();
            let verdicts = cache.verify_batch(&items);
            metrics.verify_batch_done(items.len());
            for ((_, reply), verdict) in ciphertexts.into_iter().zip(verdicts) {
                // The requester may have gone (client cancelled).
                let _ = reply.send(verdict);
            }
        }
        drop(slot);
        // A request that queued after the last look, while every thread was counted,
        // started none: look once more now that this one is uncounted.
        if queue.is_empty() || !queue.claim_thread() {
            return;
        }
    }
}

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the calling thread's nice value to `niceness` more than the main thread's, once
/// per thread (Linux keeps a nice value per thread). Failing only costs latency.
fn lower_priority_once(niceness: i32) {
    LOWERED.with(|done| {
        if niceness == 0 || done.replace(true) {
            return;
        }
        let base = rustix::process::getpriority_process(Some(rustix::process::getpid()));
        let lowered = base.and_then(|base| {
            let tid = rustix::thread::gettid();
            rustix::process::setpriority_process(Some(tid), (base + niceness).min(19))
        });
        if let Err(e) = lowered {
            tracing::warn!(error = %e, "could not lower the priority of a verification thread");
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kss_crypto::blsttc::SecretKey;

    use super::*;

    fn ciphertexts(n: usize) -> Vec<Vec<u8>> {
        let key = SecretKey::random().public_key();
        (0..n)
            .map(|i| key.encrypt([i as u8; 32]).to_bytes())
            .collect()
    }

    /// Many requests at once (batches form): each gets its own verdict, and every
    /// verification thread is uncounted once the queue is empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_get_their_own_verdict() {
        let metrics = Arc::new(Metrics::new());
        let verifier = Arc::new(Verifier::with_threads(
            VerificationCache::new(0),
            2,
            Arc::clone(&metrics),
        ));
        let valid = ciphertexts(24);
        for round in 0..3 {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, ct) in valid.iter().enumerate() {
                let mut bytes = ct.clone();
                let tampered = (i + round) % 5 == 0;
                if tampered {
                    bytes[160] ^= 1; // in V: decodes, fails the pairing check
                }
                let verifier = Arc::clone(&verifier);
                tasks.spawn(async move {
                    let verdict = verifier.verify(bytes.clone()).await.unwrap();
                    match verdict {
                        Ok(v) => {
                            assert!(!tampered, "a tampered ciphertext passed");
                            assert_eq!(v.to_bytes(), bytes);
                        }
                        Err(e) => {
                            assert!(tampered, "a valid ciphertext failed: {e}");
                            assert_eq!(e, CryptoError::CiphertextInvalid);
                        }
                    }
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.unwrap();
            }
            assert!(verifier.queue.is_empty());
            // The threads uncount themselves just after their last reply.
            for _ in 0..1_000 {
                if verifier.queue.threads.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(verifier.queue.threads.load(Ordering::SeqCst), 0);
        }
        // Every ciphertext went through exactly one batch (nothing is cached here).
        let text = metrics.encode();
        assert!(
            text.lines().any(|l| l == "kss_verify_batch_size_sum 72.0"),
            "{text}"
        );
    }

    #[test]
    fn each_thread_takes_its_share_of_the_queue() {
        let verifier =
            Verifier::with_threads(VerificationCache::new(0), 2, Arc::new(Metrics::new()));
        let push = |n: usize| {
            for _ in 0..n {
                let (reply, _) = oneshot::channel();
                verifier.queue.lock().push(Waiting::Ciphertext {
                    bytes: Vec::new(),
                    reply,
                });
            }
        };
        push(1);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        push(5);
        assert_eq!(verifier.queue.take_batch().len(), 3);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        assert!(verifier.queue.take_batch().is_empty());
        push(100);
        assert_eq!(verifier.queue.take_batch().len(), MAX_BATCH);
    }

    fn main_thread_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::process::getpid())).unwrap()
    }

    /// The nice value of the thread a check runs on.
    async fn nice_of_a_verification_thread(verifier: &Verifier) -> i32 {
        verifier
            .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap())
            .await
            .unwrap()
    }

    /// By default verification threads keep the server's priority; `--verify-niceness 10`
    /// runs them 10 levels below its main thread. (The default first: a blocking thread,
    /// once lowered, stays lowered when the runtime reuses it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verification_threads_run_at_the_niceness_asked_for() {
        let verifier =
            Verifier::with_threads(VerificationCache::new(0), 1, Arc::new(Metrics::new()));
        assert_eq!(
            nice_of_a_verification_thread(&verifier).await,
            main_thread_nice()
        );
        let verifier =
            Verifier::with_threads(VerificationCache::new(0), 1, Arc::new(Metrics::new()))
                .with_niceness(10);
        assert_eq!(
            nice_of_a_verification_thread(&verifier).await,
            (main_thread_nice() + 10).min(19)
        );
    }

    /// A check (the onboarding pairing check) runs on a verification thread, at its lower
    /// priority when one is asked for, among ciphertexts; and a full queue refuses it as
    /// it refuses them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_share_the_threads_and_the_bound_of_ciphertexts() {
        let metrics = Arc::new(Metrics::new());
        let verifier = Arc::new(
            Verifier::with_limits(VerificationCache::new(0), 1, 8, Arc::clone(&metrics))
                .with_niceness(3),
        );
        let here = std::thread::current().id();
        let cts = ciphertexts(4);
        let mut tasks = tokio::task::JoinSet::new();
        for ct in cts {
            let verifier = Arc::clone(&verifier);
            tasks.spawn(async move { assert!(verifier.verify(ct).await.unwrap().is_ok()) });
        }
        let (thread, nice) = verifier
            .run(|| {
                let tid = rustix::thread::gettid();
                (
                    std::thread::current().id(),
                    rustix::process::getpriority_process(Some(tid)).unwrap(),
                )
            })
            .await
            .unwrap();
        assert_ne!(thread, here);
        assert_eq!(nice, (main_thread_nice() + 3).min(19));
        while tasks.join_next().await.is_some() {}

        while !verifier.queue.claim_thread() {
            tokio::task::yield_now().await;
        }
        for _ in 0..8 {
            let (reply, _) = oneshot::channel();
            verifier.queue.lock().push(Waiting::Ciphertext {
                bytes: Vec::new(),
                reply,
            });
        }
        let refused = tokio::time::timeout(std::time::Duration::from_secs(30), verifier.run(|| 1))
            .await
            .expect("queued behind a full queue instead of refused");
        assert_eq!(refused.unwrap_err(), NotVerified::QueueFull);
        verifier.queue.lock().clear();
        drop(ThreadSlot(&verifier.queue));
        assert_eq!(verifier.run(|| 7).await.unwrap(), 7);
    }

    /// A full queue refuses at once, and counts it; a repeat is still answered from the
    /// cache; once the queue drains, ciphertexts are verified again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once() {
        let metrics = Arc::new(Metrics::new());
        let verifier =
            Verifier::with_limits(VerificationCache::new(64), 1, 3, Arc::clone(&metrics));
        let cts = ciphertexts(3);
        assert!(verifier.verify(cts[0].clone()).await.unwrap().is_ok());
        // Wait until the only verification thread is uncounted, then hold its slot so
        // nothing drains the queue.
        while !verifier.queue.claim_thread() {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let (reply, _) = oneshot::channel();
            verifier.queue.lock().push(Waiting::Ciphertext {
                bytes: Vec::new(),
                reply,
            });
        }
        // Refused, not queued: queued, it would wait forever (nothing drains the queue).
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            verifier.verify(cts[1].clone()),
        )
        .await
        .expect("queued behind a full queue instead of refused");
        assert_eq!(refused.unwrap_err(), NotVerified::QueueFull);
        assert!(verifier.verify(cts[0].clone()).await.unwrap().is_ok());
        assert!(
            metrics
                .encode()
                .lines()
                .any(|l| l == "kss_verify_queue_full_total 1"),
            "{}",
            metrics.encode()
        );
        // Drained, and the slot given back: verified again.
        verifier.queue.lock().clear();
        drop(ThreadSlot(&verifier.queue));
        assert!(verifier.verify(cts[2].clone()).await.unwrap().is_ok());
    }

    #[test]
    fn threads_are_counted_up_to_the_limit() {
        let verifier =
            Verifier::with_threads(VerificationCache::new(0), 2, Arc::new(Metrics::new()));
        assert!(verifier.queue.claim_thread());
        assert!(verifier.queue.claim_thread());
        assert!(!verifier.queue.claim_thread());
        drop(ThreadSlot(&verifier.queue));
        assert!(verifier.queue.claim_thread());
    }
}
