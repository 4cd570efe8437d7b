//! Deadlines on the database path. A database that stops answering without closing its
//! sockets (a hung server, a network that drops packets) must fail a request within a
//! bounded time, never hold it: every wait of a request on the database, the decision
//! batch's transaction and the poller's reads run under a [`DbDeadline`], and what misses
//! it is [`StoreError::Unavailable`] (the request is denied `UNAVAILABLE`; the poller marks
//! the database unreachable, health turns NOT_SERVING, and requests are then denied at
//! once until a poll succeeds again).

use std::future::Future;
use std::time::Duration;

use kss_store::StoreError;
use tokio::time::Instant;

/// `kss serve --db-timeout-ms`'s default: all of a request's waits on the database (a
/// profile not in memory, then its decision batch) end within it, so that a request is
/// answered within about 2 s of the database hanging.
pub const DEFAULT_DB_TIMEOUT_MS: u64 = 2000;

/// How much longer than its deadline a request waits for its batch's answer: the batch's
/// transaction ends at the earliest deadline of its requests (rolled back if it has not
/// committed), so the batch answers first unless the database lost a commit's
/// acknowledgement.
pub const ANSWER_GRACE: Duration = Duration::from_millis(250);

/// How long one operation may wait on the database.
#[derive(Debug, Clone, Copy)]
pub struct DbDeadline {
    limit: Duration,
}

impl DbDeadline {
    pub fn new(limit: Duration) -> Self {
        DbDeadline {
            limit: limit.max(Duration::from_millis(1)),
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The instant the limit ends, from now: one deadline for all of a request's waits.
    pub fn from_now(&self) -> Instant {
        Instant::now() + self.limit
    }

    /// As [`DbDeadline::run`], ending at `deadline`.
    pub async fn run_until<T>(
        &self,
        deadline: Instant,
        what: &str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout_at(deadline, op).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: the database did not answer within {} ms",
                self.limit.as_millis()
            ))),
        }
    }

    /// `op`'s result, or `Unavailable` naming `what` if it has not finished within the
    /// limit (it is then dropped: sqlx rolls back what it had begun).
    pub async fn run<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.run_until(self.from_now(), what, op).await
    }
}

impl Default for DbDeadline {
    fn default() -> Self {
        DbDeadline::new(Duration::from_millis(DEFAULT_DB_TIMEOUT_MS))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_operation_that_never_answers_is_unavailable_at_the_limit() {
        let deadline = DbDeadline::new(Duration::from_millis(1500));
        let started = tokio::time::Instant::now();
        let err = deadline
            .run(
                "reading a profile",
                std::future::pending::<Result<(), StoreError>>(),
            )
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("reading a profile") && m.contains("1500 ms")),
            "{err:?}"
        );
        // What answers in time is passed through, errors included.
        assert_eq!(deadline.run("x", async { Ok(7) }).await.unwrap(), 7);
        let refused = deadline
            .run::<()>("x", async {
                Err(StoreError::AlreadyExists("nonce".into()))
            })
            .await;
        assert!(matches!(refused, Err(StoreError::AlreadyExists(_))));
    }
}
