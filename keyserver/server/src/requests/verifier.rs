//! Ciphertext verification off the async runtime, in batches, at a lower CPU priority;
//! the onboarding pairing check runs on the same threads, in the same bounded queue.
//!
//! Requests put their ciphertext in a queue; at most one verification thread per core
//! (tokio's blocking threads) works on it. A thread takes its equal share of what is
//! waiting (shared with the other threads running), at most [`MAX_BATCH`], and checks it
//! with one batched pairing equation ([`VerificationCache::verify_batch`]): idle, a
//! ciphertext is verified alone at once; under load the batches grow and each ciphertext
//! costs less (figures in the README's benchmarks). While one thread works, another one
//! starts only once [`PARALLEL_AT`] ciphertexts wait: below that the waiting ones form the
//! working thread's next batch, which costs less CPU than verifying them one by one in
//! parallel (a lone verification costs ~1.7 × a ciphertext's share of a batch of 16).
//!
//! A batch with one invalid ciphertext fails whole, and each of its ciphertexts is then
//! checked alone: one invalid ciphertext costs the server a batch's worth of lone checks
//! (~50 ms of a core for a batch of 64). So a sender whose ciphertext failed (a profile:
//! requests reach the verifier only once their signature is verified) is a suspect for
//! [`SUSPECT_FOR`]: its ciphertexts taken from the queue after that are checked alone,
//! never in a batch with others', and a client sending invalid ciphertexts spoils only the
//! batches taken before its first one failed.
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
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kss_crypto::CryptoError;
use kss_crypto::ciphertext::{VerificationCache, VerifiedCiphertext};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// How many nice levels below the server's main thread verification threads run by
/// default: none (it was 10 before issue 22).
pub const DEFAULT_VERIFY_NICENESS: i32 = 0;

/// The most ciphertexts verified in one batch (~40 ms of one core). Batches this large form
/// only from a long queue (each thread takes its share of what waits): flat out they cost
/// ~5 % less per ciphertext than batches of 16, which is what the limit L assumes (figures
/// in the README's benchmarks, issue 22).
pub const MAX_BATCH: usize = 64;

/// While a verification thread works, another one starts only once this many ciphertexts
/// wait (at 4 a batch costs ~0.7 × per ciphertext what a lone verification does).
pub const PARALLEL_AT: usize = 4;

/// The most ciphertexts waiting for a verification thread: about 2 s of work for two
/// cores in full batches.
pub const MAX_WAITING: usize = 4_096;

/// How long a sender whose ciphertext failed has its ciphertexts checked alone.
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);

/// The most suspects remembered; past it the one suspected longest ago is forgotten.
pub const MAX_SUSPECTS: usize = 4_096;

type Verdict = Result<VerifiedCiphertext, CryptoError>;

/// Who sent a ciphertext: an authenticated profile's id.
type Sender = Vec<u8>;

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
    /// A ciphertext, verified in a batch with the others waiting unless its sender is a
    /// suspect when a thread takes it.
    Ciphertext {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Verdict>,
        sender: Vec<u8>,
    },
    /// Another check (the onboarding pairing check), run alone; it sends its own reply.
    Check(Box<dyn FnOnce() + Send>),
}

struct Queue {
    waiting: Mutex<Vec<Waiting>>,
    suspects: Mutex<Suspects>,
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
                suspects: Mutex::new(Suspects::default()),
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

    /// Verifies `bytes` (from the cache when seen before), sent by `sender` (an
    /// authenticated profile: a suspect once one of its ciphertexts fails).
    pub async fn verify(&self, sender: &[u8], bytes: Vec<u8>) -> Result<Verdict, NotVerified> {
        // A repeat is answered here: a hash and a lookup, no thread hand-off.
        if let Some(verified) = self.cache.cached(&bytes) {
            return Ok(Ok(verified));
        }
        let (reply, verdict) = oneshot::channel();
        self.enqueue(Waiting::Ciphertext {
            bytes,
            reply,
            sender: sender.to_vec(),
        })?;
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

    /// Queues `item` (refused when the queue is full) and starts a verification thread
    /// when [`Queue::claim_thread`] asks for one.
    fn enqueue(&self, item: Waiting) -> Result<(), NotVerified> {
        let waiting = {
            let mut waiting = self.queue.lock();
            if waiting.len() >= self.queue.max_waiting {
                self.metrics.verify_queue_full();
                return Err(NotVerified::QueueFull);
            }
            waiting.push(item);
            waiting.len()
        };
        if self.queue.claim_thread(waiting) {
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

    /// Counts one more verification thread for `waiting` items: the first one always;
    /// another one, up to the most, only once [`PARALLEL_AT`] items wait (fewer are the
    /// next batch of a thread already working).
    fn claim_thread(&self, waiting: usize) -> bool {
        self.threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                let wanted = n == 0 || waiting >= PARALLEL_AT;
                (wanted && n < self.max_threads).then_some(n + 1)
            })
            .is_ok()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn suspects(&self) -> std::sync::MutexGuard<'_, Suspects> {
        // A map of expiries: a panic elsewhere cannot leave it inconsistent.
        self.suspects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This thread's share of what is waiting: an equal part for every verification
    /// thread running (so that they work in parallel rather than one on a long batch), at
    /// most [`MAX_BATCH`].
    fn take_batch(&self) -> Vec<Waiting> {
        let running = self.threads.load(Ordering::SeqCst).max(1);
        let mut waiting = self.lock();
        let n = waiting.len().div_ceil(running).min(MAX_BATCH);
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
            let mut together = Vec::with_capacity(batch.len());
            let now = Instant::now();
            for waiting in batch {
                match waiting {
                    Waiting::Ciphertext {
                        bytes,
                        reply,
                        sender,
                    } if queue.suspects().is_suspect(&sender, now) => {
                        verify_batch(queue, cache, metrics, vec![(bytes, reply, sender)]);
                    }
                    Waiting::Ciphertext {
                        bytes,
                        reply,
                        sender,
                    } => together.push((bytes, reply, sender)),
                    Waiting::Check(check) => check(),
                }
            }
            verify_batch(queue, cache, metrics, together);
        }
        drop(slot);
        // A request that queued after the last look, while every thread was counted,
        // started none: look once more now that this one is uncounted.
        let waiting = queue.len();
        if waiting == 0 || !queue.claim_thread(waiting) {
            return;
        }
    }
}

/// Verifies `ciphertexts` in one batch and sends each its verdict; the sender of an
/// invalid one becomes a suspect.
fn verify_batch(
    queue: &Queue,
    cache: &VerificationCache,
    metrics: &Metrics,
    ciphertexts: Vec<(Vec<u8>, oneshot::Sender<Verdict>, Sender)>,
) {
    if ciphertexts.is_empty() {
        return;
    }
    let items: Vec<&[u8]> = ciphertexts.iter().map(|(b, _, _)| b.as_slice()).collect();
    let verdicts = cache.verify_batch(&items);
    metrics.verify_batch_done(items.len());
    for ((_, reply, sender), verdict) in ciphertexts.into_iter().zip(verdicts) {
        if verdict.is_err() {
            queue.suspects().suspect(sender, Instant::now());
        }
        // The requester may have gone (client cancelled).
        let _ = reply.send(verdict);
    }
}

/// Senders whose ciphertexts are checked alone, each until its expiry.
#[derive(Default)]
struct Suspects {
    until: HashMap<Vec<u8>, Instant>,
}

impl Suspects {
    fn is_suspect(&self, sender: &[u8], now: Instant) -> bool {
        self.until.get(sender).is_some_and(|until| *until > now)
    }

    /// `sender` is a suspect for [`SUSPECT_FOR`] from `now`. Past [`MAX_SUSPECTS`] the
    /// expired ones are forgotten, then the one suspected longest ago.
    fn suspect(&mut self, sender: Vec<u8>, now: Instant) {
        if self.until.len() >= MAX_SUSPECTS && !self.until.contains_key(&sender) {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_SUSPECTS {
                let oldest = self
                    .until
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(s, _)| s.clone());
                if let Some(oldest) = oldest {
                    self.until.remove(&oldest);
                }
            }
        }
        self.until.insert(sender, now + SUSPECT_FOR);
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
                    let verdict = verifier.verify(&[i as u8], bytes.clone()).await.unwrap();
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
            assert_eq!(verifier.queue.len(), 0);
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
                    sender: Vec::new(),
                });
            }
        };
        // One thread running: it takes everything waiting, up to a batch.
        assert!(verifier.queue.claim_thread(1));
        push(1);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        push(5);
        assert_eq!(verifier.queue.take_batch().len(), 5);
        push(100);
        assert_eq!(verifier.queue.take_batch().len(), MAX_BATCH);
        verifier.queue.lock().clear();
        // Two running: each takes half.
        assert!(verifier.queue.claim_thread(PARALLEL_AT));
        push(5);
        assert_eq!(verifier.queue.take_batch().len(), 3);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        assert_eq!(verifier.queue.take_batch().len(), 1);
        assert!(verifier.queue.take_batch().is_empty());
    }

    /// The verification batches counted so far, and the ciphertexts in them.
    fn batch_sizes(m: &Metrics) -> (f64, f64) {
        let text = m.encode();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse::<f64>().unwrap())
                .unwrap_or(0.0)
        };
        (
            value("kss_verify_batch_size_count"),
            value("kss_verify_batch_size_sum"),
        )
    }

    /// Holds a verification thread with a check until the sender is used (or dropped);
    /// returns once the check runs.
    async fn hold_a_thread(
        verifier: &Arc<Verifier>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let verifier = Arc::clone(verifier);
        let check = tokio::spawn(async move {
            verifier
                .run(move || {
                    let _ = started.send(());
                    let _ = held.recv();
                })
                .await
                .unwrap()
        });
        running.await.unwrap();
        (release, check)
    }

    /// While a thread works, ciphertexts arriving one by one wait for it and form its next
    /// batch; a second thread starts only once PARALLEL_AT of them wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_thread_starts_only_for_a_queue_worth_a_batch() {
        let metrics = Arc::new(Metrics::new());
        let verifier = Arc::new(Verifier::with_threads(
            VerificationCache::new(0),
            2,
            Arc::clone(&metrics),
        ));
        let cts = ciphertexts(PARALLEL_AT - 1 + PARALLEL_AT);
        // The first thread is held by a check until released.
        let (release, check) = hold_a_thread(&verifier).await;
        let verify_all = |cts: &[Vec<u8>]| {
            let mut tasks = tokio::task::JoinSet::new();
            for ct in cts {
                let (verifier, ct) = (Arc::clone(&verifier), ct.clone());
                tasks.spawn(
                    async move { assert!(verifier.verify(b"p", ct).await.unwrap().is_ok()) },
                );
            }
            tasks
        };
        // Until n wait (at most 10 s: a second thread may be draining them).
        let wait_queued = |n: usize| {
            let verifier = Arc::clone(&verifier);
            async move {
                for _ in 0..5_000 {
                    if verifier.queue.len() >= n {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        };
        // Fewer than PARALLEL_AT: no second thread, nothing verified while the first is held.
        let mut first = verify_all(&cts[..PARALLEL_AT - 1]);
        wait_queued(PARALLEL_AT - 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(verifier.queue.threads.load(Ordering::SeqCst), 1);
        assert_eq!(batch_sizes(&metrics), (0.0, 0.0));
        // Released: they are the first thread's next batch, all of them at once.
        release.send(()).unwrap();
        check.await.unwrap();
        while first.join_next().await.is_some() {}
        assert_eq!(batch_sizes(&metrics), (1.0, (PARALLEL_AT - 1) as f64));

        // Held again: PARALLEL_AT waiting start a second thread, which verifies them.
        let (release, check) = hold_a_thread(&verifier).await;
        let mut second = verify_all(&cts[PARALLEL_AT - 1..]);
        while second.join_next().await.is_some() {}
        let (batches, verified) = batch_sizes(&metrics);
        assert!(batches >= 2.0, "{batches}");
        assert_eq!(verified, (2 * PARALLEL_AT - 1) as f64);
        release.send(()).unwrap();
        check.await.unwrap();
    }

    /// A sender whose ciphertext failed a batch has its next ones checked alone: the
    /// batch of the others passes at once instead of failing again and being re-checked
    /// one by one. Other senders still share batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sender_of_an_invalid_ciphertext_no_longer_shares_a_batch() {
        let metrics = Arc::new(Metrics::new());
        let verifier = Arc::new(Verifier::with_threads(
            VerificationCache::new(0),
            1,
            Arc::clone(&metrics),
        ));
        let cts = ciphertexts(8);
        // Alice's three valid ciphertexts and one of Mallory's, tampered, all queued while
        // the only thread is held, then verified as one batch.
        let round = |alices: &[Vec<u8>], mallorys: &Vec<u8>| {
            let verifier = Arc::clone(&verifier);
            let (alices, mut mallorys) = (alices.to_vec(), mallorys.clone());
            mallorys[160] ^= 1; // in V: decodes, fails the pairing check
            async move {
                let (release, check) = hold_a_thread(&verifier).await;
                let mut tasks = tokio::task::JoinSet::new();
                for ct in alices {
                    let verifier = Arc::clone(&verifier);
                    tasks.spawn(async move { verifier.verify(b"alice", ct).await.unwrap() });
                }
                let v = Arc::clone(&verifier);
                let mallory = tokio::spawn(async move { v.verify(b"mallory", mallorys).await });
                while verifier.queue.len() < 4 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                release.send(()).unwrap();
                check.await.unwrap();
                while let Some(verdict) = tasks.join_next().await {
                    assert!(verdict.unwrap().is_ok(), "a valid ciphertext failed");
                }
                let mallory = mallory.await.unwrap().unwrap();
                assert_eq!(mallory.unwrap_err(), CryptoError::CiphertextInvalid);
            }
        };
        round(&cts[..3], &cts[3]).await;
        // One batch of four, failed, its ciphertexts then checked alone (not counted as
        // batches).
        assert_eq!(batch_sizes(&metrics), (1.0, 4.0));
        assert!(
            verifier
                .queue
                .suspects()
                .is_suspect(b"mallory", Instant::now())
        );
        assert!(
            !verifier
                .queue
                .suspects()
                .is_suspect(b"alice", Instant::now())
        );
        round(&cts[4..7], &cts[7]).await;
        // Alice's three in one batch, Mallory's alone: two more.
        assert_eq!(batch_sizes(&metrics), (3.0, 8.0));
    }

    #[test]
    fn suspects_expire_and_are_bounded() {
        let now = Instant::now();
        let mut suspects = Suspects::default();
        suspects.suspect(b"mallory".to_vec(), now);
        assert!(suspects.is_suspect(b"mallory", now + SUSPECT_FOR / 2));
        assert!(!suspects.is_suspect(b"mallory", now + SUSPECT_FOR));
        assert!(!suspects.is_suspect(b"alice", now));
        // Full: the one suspected longest ago goes first, the newest stays.
        for i in 1..MAX_SUSPECTS {
            suspects.suspect(
                format!("s{i}").into_bytes(),
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(suspects.until.len(), MAX_SUSPECTS);
        let later = now + Duration::from_secs(1);
        suspects.suspect(b"eve".to_vec(), later);
        assert_eq!(suspects.until.len(), MAX_SUSPECTS);
        assert!(!suspects.is_suspect(b"mallory", later));
        assert!(suspects.is_suspect(b"s1", later) && suspects.is_suspect(b"eve", later));
        // Past their expiry they are all forgotten at once when room is needed.
        let expired = later + SUSPECT_FOR + Duration::from_secs(5);
        suspects.suspect(b"trudy".to_vec(), expired);
        assert_eq!(suspects.until.len(), 1);
        assert!(suspects.is_suspect(b"trudy", expired));
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
            tasks.spawn(async move { assert!(verifier.verify(b"p", ct).await.unwrap().is_ok()) });
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

        while !verifier.queue.claim_thread(1) {
            tokio::task::yield_now().await;
        }
        for _ in 0..8 {
            let (reply, _) = oneshot::channel();
            verifier.queue.lock().push(Waiting::Ciphertext {
                bytes: Vec::new(),
                reply,
                sender: Vec::new(),
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
        assert!(verifier.verify(b"p", cts[0].clone()).await.unwrap().is_ok());
        // Wait until the only verification thread is uncounted, then hold its slot so
        // nothing drains the queue.
        while !verifier.queue.claim_thread(1) {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let (reply, _) = oneshot::channel();
            verifier.queue.lock().push(Waiting::Ciphertext {
                bytes: Vec::new(),
                reply,
                sender: Vec::new(),
            });
        }
        // Refused, not queued: queued, it would wait forever (nothing drains the queue).
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            verifier.verify(b"p", cts[1].clone()),
        )
        .await
        .expect("queued behind a full queue instead of refused");
        assert_eq!(refused.unwrap_err(), NotVerified::QueueFull);
        assert!(verifier.verify(b"p", cts[0].clone()).await.unwrap().is_ok());
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
        assert!(verifier.verify(b"p", cts[2].clone()).await.unwrap().is_ok());
    }

    #[test]
    fn threads_are_counted_up_to_the_limit() {
        let verifier =
            Verifier::with_threads(VerificationCache::new(0), 2, Arc::new(Metrics::new()));
        // The first thread for anything waiting; another one only for a batch's worth.
        assert!(verifier.queue.claim_thread(1));
        assert!(!verifier.queue.claim_thread(PARALLEL_AT - 1));
        assert!(verifier.queue.claim_thread(PARALLEL_AT));
        assert!(!verifier.queue.claim_thread(MAX_WAITING));
        drop(ThreadSlot(&verifier.queue));
        assert!(verifier.queue.claim_thread(PARALLEL_AT));
    }
}
