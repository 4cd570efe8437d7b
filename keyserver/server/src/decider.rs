//! Decides requests in batches, one transaction per batch.
//!
//! Every decision goes through one task: it evaluates every rule but the quotas for each
//! request (before the transaction, so that no lock is held meanwhile), reads the
//! persistent throttle counters of the batch's profiles and the nonces already accepted,
//! decides each request's quotas in arrival order (counters in memory for the batch),
//! then writes the counters and one audit record per request and commits. Only then are
//! the outcomes returned: an approval never leaves without its quota use and its audit
//! record committed. If the database fails, every request of the batch is denied as
//! unavailable and nothing is consumed (in-memory counters are only updated after the
//! commit).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kss_crypto::ids::{DeviceId, ProfileId};
use kss_policy::{
    Counter, Decision, Prepared, QuotaLimit, QuotaStore, QuotaStoreError, QuotaWindow, Request,
    fits, uses_per_rule,
};
use kss_store::{AuditRecord, EnrollmentUse, Lease, Profile, Store, StoreError, StoredCounter};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::db_deadline::{ANSWER_GRACE, DbDeadline};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::switches::Switches;
use crate::verdict::{Reason, Verdict};

/// What the audit log records of a request besides the decision.
#[derive(Debug, Clone, Default)]
pub struct AuditDraft {
    /// Canonical, and only once the request named it in canonical form.
    pub profile_id: Option<ProfileId>,
    pub device_id: Option<DeviceId>,
    pub request_type: String,
    /// JSON array of `{"meta", "complete"}`.
    pub meta: String,
    pub cryptographic_id: String,
    /// Set only once the request's signature verified.
    pub nonce: Option<Vec<u8>>,
    /// SHA-256 of the ciphertext verified (decrypts).
    pub ciphertext_sha256: Option<[u8; 32]>,
}

/// One request for a decision.
#[derive(Debug)]
pub enum Job {
    /// Evaluate the policy; `register` first records a profile re-presented with a valid
    /// token (after the database was recovered).
    Evaluate {
        /// The proven profile: the key of its counters and locks.
        profile: ProfileId,
        request: Request,
        register: Option<Profile>,
        audit: AuditDraft,
    },
    /// Onboarding: use up the enrollment token (if any), evaluate `create_profile` and
    /// record the profile if approved.
    Onboard {
        request: Request,
        profile: Profile,
        /// SHA-256 of the enrollment token given.
        enrollment: Option<[u8; 32]>,
        audit: AuditDraft,
    },
    /// Denied before the policy (bad signature, stale, ...): only recorded.
    Deny { reason: Reason, audit: AuditDraft },
}

impl Job {
    fn audit(&self) -> &AuditDraft {
        match self {
            Job::Evaluate { audit, .. } | Job::Onboard { audit, .. } | Job::Deny { audit, .. } => {
                audit
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The audit record; `None` only when the database failed (the request was denied).
    pub audit_id: Option<u64>,
}

impl Outcome {
    /// Denied without a decision: the database or the decision task is unavailable.
    const UNAVAILABLE: Outcome = Outcome {
        verdict: Verdict::Denied(Reason::Unavailable),
        audit_id: None,
    };
}

const MAX_BATCH: usize = 512;
/// Tries of a batch whose transaction failed before it is denied as unavailable.
const BATCH_ATTEMPTS: usize = 3;

/// Throttle counters that live in memory (non-persistent throttles), by profile then rule.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    /// Bumped by every clear, so that a batch computed before it does not write back.
    epoch: u64,
    by_profile: HashMap<ProfileId, HashMap<String, Counter>>,
}

impl MemoryCounters {
    /// Every counter: (profile, rule id, counter).
    pub fn list(&self) -> Vec<(ProfileId, String, Counter)> {
        let mut out: Vec<_> = self
            .by_profile
            .iter()
            .flat_map(|(p, rules)| rules.iter().map(move |(r, c)| (*p, r.clone(), *c)))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Forgets the counters of one profile or all; returns how many were dropped.
    pub fn clear(&mut self, profile_id: Option<&ProfileId>) -> u64 {
        self.epoch += 1;
        let dropped = match profile_id {
            Some(p) => self.by_profile.remove(p).map_or(0, |m| m.len()),
            None => {
                let n = self.by_profile.values().map(HashMap::len).sum();
                self.by_profile.clear();
                n
            }
        };
        dropped as u64
    }
}

/// Submits jobs to the decision task.
#[derive(Clone)]
pub struct Decider {
    jobs: mpsc::Sender<Queued>,
    /// How long a request waits for its decision (queueing included) when it names no
    /// deadline of its own.
    wait: DbDeadline,
}

/// A request with less time than this left is answered `UNAVAILABLE` undecided.
const MIN_BATCH_TIME: Duration = Duration::from_millis(200);

/// A job, where to answer it, and when its request stops waiting.
type Queued = (Job, oneshot::Sender<Outcome>, Instant);

impl Decider {
    /// Starts the decision task. It ends when every `Decider` clone is dropped, after
    /// deciding what was queued.
    pub fn start(task: DecisionTask) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let wait = task.deadline;
        let handle = tokio::spawn(task.run(rx));
        (Decider { jobs: tx, wait }, handle)
    }

    /// Decides one job (waits for its batch to commit). A job not decided within the
    /// deadline is answered `UNAVAILABLE`: its batch may still commit it (an approval then
    /// recorded that its client never received: fail closed, and the nonce is used up).
    pub async fn decide(&self, job: Job) -> Outcome {
        self.decide_by(job, self.wait.from_now()).await
    }

    /// [`Decider::decide`], for a request that stops waiting at `deadline`: its batch's
    /// transaction ends by then (committed or rolled back), and the request waits
    /// [`ANSWER_GRACE`] more for the batch's answer.
    pub async fn decide_by(&self, job: Job, deadline: Instant) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let decided = async {
            if self.jobs.send((job, reply, deadline)).await.is_err() {
                return Ok(Outcome::UNAVAILABLE);
            }
            Ok(answer.await.unwrap_or(Outcome::UNAVAILABLE))
        };
        let waited = self
            .wait
            .run_until(deadline + ANSWER_GRACE, "waiting for a decision", decided)
            .await;
        match waited {
            Ok(outcome) => outcome,
            Err(e) => {
                debug!(error = %e, "no decision in time: denied as unavailable");
                Outcome::UNAVAILABLE
            }
        }
    }
}

/// What the decision task works with.
pub struct DecisionTask {
    pub store: Arc<dyn Store>,
    /// The policy in force and the enabled switch.
    pub switches: watch::Receiver<Arc<Switches>>,
    /// Counters of non-persistent throttles (shared with the admin service).
    pub memory: Arc<Mutex<MemoryCounters>>,
    /// The zone of quota hours and days.
    pub time_zone: TimeZone,
    /// Recorded in every audit record.
    pub instance_id: String,
    pub metrics: Arc<Metrics>,
    /// The standalone lease every decision transaction checks (none in cluster mode).
    pub fence: Option<Lease>,
    /// Stopped when the lease turns out to be lost.
    pub shutdown: Arc<Shutdown>,
    /// How long a batch's transaction (its retries included) and a request's wait for its
    /// decision may take.
    pub deadline: DbDeadline,
}

impl DecisionTask {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // A request with almost no time left is not decided (its nonce is not used):
            // it would cut short the transaction of the whole batch.
            let now = Instant::now();
            let (late, on_time): (Vec<Queued>, Vec<Queued>) = batch
                .drain(..)
                .partition(|(_, _, deadline)| *deadline < now + MIN_BATCH_TIME);
            for (_, reply, _) in late {
                self.metrics.db_error("decide_late");
                let _ = reply.send(Outcome::UNAVAILABLE);
            }
            batch = on_time;
            if batch.is_empty() {
                continue;
            }
            // The batch's transaction ends when its most pressed request stops waiting.
            let deadline = batch
                .iter()
                .map(|(_, _, d)| *d)
                .min()
                .unwrap_or_else(|| self.deadline.from_now());
            let (jobs, replies): (Vec<Job>, Vec<_>) =
                batch.drain(..).map(|(job, reply, _)| (job, reply)).unzip();
            let started = Instant::now();
            let span = info_span!("decide_batch", size = jobs.len());
            let outcomes = self
                .decide_isolating(&jobs, deadline)
                .instrument(span)
                .await;
            self.metrics.batch_done(jobs.len(), started.elapsed());
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The requester may have gone (client cancelled): the decision stands.
                let _ = reply.send(outcome);
            }
        }
    }

    /// Decides a batch so that one request's failure is its own: when the batch's
    /// transaction is refused for something one of its rows did (a nonce another instance
    /// committed in the meantime, a profile inserted twice), the batch is split in halves,
    /// each decided on its own, in arrival order, down to the one request that fails. That
    /// request alone is answered: a duplicate nonce as replayed (decided again, it sees
    /// the other instance's record), anything else as unavailable. A database that is down
    /// or a lost lease still denies the whole batch.
    async fn decide_isolating(&self, jobs: &[Job], deadline: Instant) -> Vec<Outcome> {
        let decided = self
            .deadline
            .run_until(deadline, "deciding a batch", self.decide_with_retries(jobs))
            .await;
        match decided {
            Ok(outcomes) => outcomes,
            Err(StoreError::Fenced(why)) => {
                self.metrics.db_error("decide");
                error!(%why, requests = jobs.len(), "this server lost the standalone lease: batch denied, stopping");
                self.shutdown.fail(format!("fenced off: {why}"));
                vec![Outcome::UNAVAILABLE; jobs.len()]
            }
            Err(StoreError::Unavailable(e)) => {
                self.metrics.db_error("decide");
                warn!(error = %e, requests = jobs.len(), "database failed: batch denied as unavailable");
                vec![Outcome::UNAVAILABLE; jobs.len()]
            }
            Err(e) if jobs.len() > 1 => {
                self.metrics.db_error("decide_split");
                debug!(error = %e, requests = jobs.len(), "a row of the batch was refused: deciding its halves apart");
                let (first, second) = jobs.split_at(jobs.len() / 2);
                let mut outcomes = Box::pin(self.decide_isolating(first, deadline)).await;
                outcomes.extend(Box::pin(self.decide_isolating(second, deadline)).await);
                outcomes
            }
            Err(e) => vec![self.decide_alone_after(&jobs[0], e).await],
        }
    }

    /// The answer to one request whose own transaction was refused with `error`.
    async fn decide_alone_after(&self, job: &Job, error: StoreError) -> Outcome {
        // A nonce that another instance committed while this one decided: decided again,
        // the request finds it and is denied as replayed, with its own record.
        if matches!(error, StoreError::AlreadyExists(_)) && job.audit().nonce.is_some() {
            match self.decide_with_retries(std::slice::from_ref(job)).await {
                Ok(mut outcomes) if outcomes.len() == 1 => return outcomes.remove(0),
                Ok(_) => {}
                Err(again) => {
                    warn!(error = %again, "a request was refused twice by the database: denied as unavailable");
                    self.metrics.db_error("decide");
                    return Outcome::UNAVAILABLE;
                }
            }
        }
        self.metrics.db_error("decide");
        warn!(error = %error, "the database refused one request's record: that request denied as unavailable");
        Outcome::UNAVAILABLE
    }

    /// A batch whose transaction failed changed nothing (in-memory counters move only
    /// after a commit), so it is tried again: a shared database may refuse a transaction
    /// that raced another instance's (deadlock, lock wait timeout). If a commit did land
    /// but its acknowledgement was lost, the retry sees its nonces and denies them as
    /// replayed: over-counting, never an approval without its record.
    async fn decide_with_retries(&self, jobs: &[Job]) -> Result<Vec<Outcome>, StoreError> {
        let mut backoff = Duration::from_millis(5);
        for _ in 1..BATCH_ATTEMPTS {
            // While the database is known to be down (the switches poller found it so),
            // deny at once instead of queueing requests behind connection timeouts; the
            // poller flips this back within a poll interval of the database returning.
            if !self.switches.borrow().database_ok {
                return Err(StoreError::Unavailable(
                    "the database is unreachable".into(),
                ));
            }
            match self.decide_batch(jobs).await {
                Err(StoreError::Unavailable(e)) => {
                    self.metrics.db_error("decide_retry");
                    debug!(error = %e, "decision batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                }
                other => return other,
            }
        }
        self.decide_batch(jobs).await
    }

    async fn decide_batch(&self, jobs: &[Job]) -> Result<Vec<Outcome>, StoreError> {
        let switches = Arc::clone(&self.switches.borrow());
        let policy = &switches.policy;
        let mut tx = self.store.begin_decisions(self.fence.as_ref()).await?;
        // One clock for the whole batch, the database's in cluster mode: an instance whose
        // own clock jumped still counts into the windows the others count into.
        let clock_ms = tx.clock_ms().await?;
        let now = Timestamp::from_millisecond(clock_ms).map_err(|e| {
            StoreError::Corrupt(format!("the database's clock reads {clock_ms} ms: {e}"))
        })?;
        // Every rule but the quotas, before any counter is read or row locked: regular
        // expressions over client-supplied metadata run without holding a counter's lock.
        let prepared: Vec<Option<Prepared<'_>>> = jobs
            .iter()
            .map(|job| match job {
                Job::Evaluate { request, .. } | Job::Onboard { request, .. } => {
                    Some(policy.policy.prepare(request, now, &self.time_zone))
                }
                Job::Deny { .. } => None,
            })
            .collect();

        // Replays: nonces already accepted, or twice in this batch.
        let nonces: Vec<&[u8]> = jobs
            .iter()
            .filter_map(|j| j.audit().nonce.as_deref())
            .collect();
        let mut seen: HashSet<Vec<u8>> = if nonces.is_empty() {
            HashSet::new()
        } else {
            tx.seen_nonces(&nonces).await?.into_iter().collect()
        };

        // Counters of the batch's profiles: persistent ones from the database (as of this
        // transaction), the others from memory. Keyed by the proven, canonical profile id.
        let profiles: Vec<ProfileId> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Evaluate { profile, .. } => Some(*profile),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let has_persistent = policy.policy.quota_limits().iter().any(|l| l.persistent);
        let db_counters = if has_persistent && !profiles.is_empty() {
            let keys: Vec<String> = profiles.iter().map(ProfileId::to_string).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            tx.counters_for(&keys).await?
        } else {
            Vec::new()
        };
        let (memory_epoch, memory_counters) = {
            let memory = lock(&self.memory);
            let snapshot: HashMap<(String, ProfileId), Counter> = profiles
                .iter()
                .filter_map(|p| memory.by_profile.get(p).map(|rules| (*p, rules)))
                .flat_map(|(p, rules)| rules.iter().map(move |(r, c)| ((r.clone(), p), *c)))
                .collect();
            (memory.epoch, snapshot)
        };
        let mut database = HashMap::with_capacity(db_counters.len());
        for c in db_counters {
            // A row under a non-canonical id (written by an older version) is not ours.
            if let Ok(p) = c.profile_id.parse::<ProfileId>() {
                database.insert((c.rule_id, p), c.counter);
            }
        }
        let quotas = BatchQuotas {
            inner: Mutex::new(BatchCounters {
                database,
                memory: memory_counters,
                changed: HashMap::new(),
            }),
        };

        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (job, prepared) in jobs.iter().zip(&prepared) {
            let decide = || match prepared {
                Some(prepared) => verdict_of(prepared.decide(&quotas)),
                // A job without a request is a denial already.
                None => Verdict::Denied(Reason::Unavailable),
            };
            let mut audit = job.audit().clone();
            let replayed = match &audit.nonce {
                Some(n) => !seen.insert(n.clone()),
                None => false,
            };
            let verdict = match job {
                Job::Deny { reason, .. } => Verdict::Denied(*reason),
                _ if replayed => Verdict::Denied(Reason::Replayed),
                _ if !switches.enabled => Verdict::Denied(Reason::Disabled),
                Job::Evaluate { register, .. } => {
                    if let Some(profile) = register {
                        tx.insert_profile(profile).await?;
                    }
                    decide()
                }
                Job::Onboard {
                    profile,
                    enrollment,
                    ..
                } => {
                    let enrolled = match enrollment {
                        None => true,
                        Some(digest) => matches!(
                            tx.use_enrollment(digest, now.as_millisecond()).await?,
                            EnrollmentUse::Used { .. }
                        ),
                    };
                    let verdict = if enrolled {
                        decide()
                    } else {
                        Verdict::Denied(Reason::Enrollment)
                    };
                    if matches!(verdict, Verdict::Approved { .. })
                        && !tx.insert_profile(profile).await?
                    {
                        return Err(StoreError::AlreadyExists(format!(
                            "profile {}",
                            profile.profile_id
                        )));
                    }
                    verdict
                }
            };
            if replayed {
                // The nonce belongs to the earlier request's record.
                audit.nonce = None;
            }
            records.push(audit_record(
                audit,
                verdict,
                now,
                &self.instance_id,
                policy.version,
            ));
            outcomes.push(verdict);
        }

        let changed = quotas.into_changes();
        let persistent: Vec<StoredCounter> = changed
            .iter()
            .filter(|(_, (_, persistent))| *persistent)
            .map(|((rule_id, profile_id), (counter, _))| StoredCounter {
                rule_id: rule_id.clone(),
                profile_id: profile_id.to_string(),
                counter: *counter,
            })
            .collect();
        if !persistent.is_empty() {
            tx.save_counters(&persistent).await?;
        }
        let ids = tx.append_audit(&records).await?;
        tx.commit().await?;

        // Committed: now the in-memory counters may count these approvals.
        {
            let mut memory = lock(&self.memory);
            if memory.epoch == memory_epoch {
                for ((rule_id, profile_id), (counter, persistent)) in changed {
                    if !persistent {
                        memory
                            .by_profile
                            .entry(profile_id)
                            .or_default()
                            .insert(rule_id, counter);
                    }
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .zip(ids)
            .map(|(verdict, id)| Outcome {
                verdict,
                audit_id: Some(id),
            })
            .collect())
    }
}

fn verdict_of(decision: Decision) -> Verdict {
    match decision {
        Decision::Approved { rule_set, session } => Verdict::Approved { rule_set, session },
        Decision::Denied(reason) => Verdict::Denied(Reason::from_policy(reason)),
    }
}

fn audit_record(
    audit: AuditDraft,
    verdict: Verdict,
    now: Timestamp,
    instance_id: &str,
    policy_version: u64,
) -> AuditRecord {
    let (decision, rule_set, reason) = match verdict {
        Verdict::Approved { rule_set, .. } => (
            kss_store::Decision::Approved,
            rule_set.and_then(|r| u32::try_from(r).ok()),
            None,
        ),
        Verdict::Denied(reason) => (
            kss_store::Decision::Denied,
            None,
            Some(reason.as_str().to_string()),
        ),
    };
    AuditRecord {
        at_ms: now.as_millisecond(),
        instance_id: instance_id.to_string(),
        profile_id: audit.profile_id.map(|p| p.to_string()),
        device_id: audit.device_id.map(|d| d.to_string()),
        request_type: audit.request_type,
        meta: audit.meta,
        cryptographic_id: audit.cryptographic_id,
        decision,
        rule_set,
        reason,
        policy_version: (policy_version > 0).then_some(policy_version),
        nonce: audit.nonce,
        ciphertext_sha256: audit.ciphertext_sha256.map(|d| d.to_vec()),
        actor: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Updates under this lock are whole-value writes: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters for one batch: what the database and memory held at its start, and what the
/// batch's approvals changed (key: rule id, profile id).
struct BatchCounters {
    database: HashMap<(String, ProfileId), Counter>,
    memory: HashMap<(String, ProfileId), Counter>,
    changed: HashMap<(String, ProfileId), (Counter, bool)>,
}

struct BatchQuotas {
    inner: Mutex<BatchCounters>,
}

impl BatchQuotas {
    fn into_changes(self) -> HashMap<(String, ProfileId), (Counter, bool)> {
        self.inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .changed
    }
}

fn is_persistent(limits: &[QuotaLimit], rule_id: &str) -> bool {
    limits
        .iter()
        .any(|l| l.persistent && &*l.rule_id == rule_id)
}

impl BatchCounters {
    fn current(&self, limits: &[QuotaLimit], rule_id: &str, profile: ProfileId) -> Option<Counter> {
        let key = (rule_id.to_string(), profile);
        if let Some((c, _)) = self.changed.get(&key) {
            return Some(*c);
        }
        if is_persistent(limits, rule_id) {
            self.database.get(&key).copied()
        } else {
            self.memory.get(&key).copied()
        }
    }
}

impl QuotaStore for BatchQuotas {
    fn try_consume(
        &self,
        profile_id: &[u8],
        limits: &[QuotaLimit],
        window: QuotaWindow,
    ) -> Result<bool, QuotaStoreError> {
        let profile = ProfileId::from_slice(profile_id)
            .map_err(|e| QuotaStoreError(format!("profile id: {e}")))?;
        let mut counters = lock(&self.inner);
        if !fits(limits, window, |rule| {
            counters.current(limits, rule, profile)
        }) {
            return Ok(false);
        }
        for (rule_id, uses) in uses_per_rule(limits) {
            let before = counters.current(limits, rule_id, profile);
            let after = Counter::after_uses(before, window, uses);
            counters.changed.insert(
                (rule_id.to_string(), profile),
                (after, is_persistent(limits, rule_id)),
            );
        }
        Ok(true)
    }

    fn at_quota(
        &self,
        _limits: &[QuotaLimit],
        _window: QuotaWindow,
    ) -> Result<Vec<Vec<u8>>, QuotaStoreError> {
        Err(QuotaStoreError(
            "a decision batch does not list quotas".into(),
        ))
    }

    fn clear(&self, _profile_id: Option<&[u8]>) -> Result<(), QuotaStoreError> {
        Err(QuotaStoreError(
            "a decision batch does not clear quotas".into(),
        ))
    }
}
