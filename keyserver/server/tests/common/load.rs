//! A few clients sending the same decrypt request one after the other, concurrently, and
//! what each request got.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kss_client::protocol::RequestSpec;
use kss_client::{KssClient, Profile};

/// How one request was answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Approved, with the audit id the response names.
    Approved(u64),
    Denied(Option<String>),
    /// An RPC error (or no answer at all within 30 s).
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    /// The same instant on the clock the store stamps leases and audit rows with.
    pub sent_ms: i64,
    pub took: Duration,
    pub answer: Answer,
}

/// One task per client, each sending `spec` again as soon as it is answered, until
/// stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(clients: Vec<KssClient>, profile: &Profile, spec: &RequestSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let workers = clients
            .into_iter()
            .map(|client| {
                let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
                let (profile, spec) = (profile.clone(), spec.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let (sent, sent_ms) = (Instant::now(), super::unix_ms());
                        let answered = tokio::time::timeout(
                            Duration::from_secs(30),
                            client.request(&profile, &spec),
                        )
                        .await;
                        let answer = match answered {
                            Ok(Ok(o)) if o.approved => {
                                assert!(!o.decryption_share.is_empty(), "approved without a share");
                                Answer::Approved(o.audit_id)
                            }
                            Ok(Ok(o)) => Answer::Denied(o.reason_name()),
                            Ok(Err(e)) => Answer::Failed(e.to_string()),
                            Err(_) => Answer::Failed("no answer within 30 s".into()),
                        };
                        let failed = matches!(answer, Answer::Failed(_));
                        samples.lock().unwrap().push(Sample {
                            sent,
                            sent_ms,
                            took: sent.elapsed(),
                            answer,
                        });
                        if failed {
                            // Not a busy loop on a server that refuses or is gone.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            workers,
        }
    }

    /// How many requests were approved so far.
    pub fn approved(&self) -> usize {
        let samples = self.samples.lock().unwrap();
        samples
            .iter()
            .filter(|s| matches!(s.answer, Answer::Approved(_)))
            .count()
    }

    /// Waits up to `timeout` until some sample satisfies `check`.
    pub async fn wait_for(&self, timeout: Duration, check: impl Fn(&Sample) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.samples.lock().unwrap().iter().any(&check) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops the clients (each finishes its request in flight); every sample.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.unwrap();
        }
        self.samples.lock().unwrap().clone()
    }
}
