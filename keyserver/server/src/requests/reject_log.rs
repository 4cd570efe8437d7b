//! A rate-limited sample of the requests refused before they were authenticated. They are
//! counted in full (`kss_rejected_total{reason}`) and never stored; the log shows at most
//! [`LINES_PER_SECOND`] of them a second, each line saying how many were left out since
//! the last one, so that a flood of junk neither fills the disk nor hides what it is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// Lines logged per second at most.
pub const LINES_PER_SECOND: u32 = 5;

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    left_out: u64,
}

/// The sampler; one per keyserver.
#[derive(Debug)]
pub struct RejectLog {
    window: Mutex<Window>,
}

impl Default for RejectLog {
    fn default() -> Self {
        RejectLog {
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                left_out: 0,
            }),
        }
    }
}

impl RejectLog {
    /// Notes one refused request: `reason` is the metric label, `detail` says what was
    /// wrong (never a secret: field names and sizes, not values). Returns whether it was
    /// logged.
    pub fn note(&self, rpc: &'static str, reason: &'static str, detail: &str) -> bool {
        let left_out = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now.duration_since(w.started) >= Duration::from_secs(1) {
                w.started = now;
                w.logged = 0;
            }
            if w.logged >= LINES_PER_SECOND {
                w.left_out += 1;
                return false;
            }
            w.logged += 1;
            std::mem::take(&mut w.left_out)
        };
        warn!(
            rpc,
            reason,
            detail,
            left_out,
            "request refused before authentication (sampled; left_out counts the refusals not logged since the last line)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_flood_is_logged_a_few_lines_a_second() {
        let log = RejectLog::default();
        let logged = (0..1000)
            .filter(|_| log.note("Approve", "signature", "test"))
            .count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        let left_out = log.window.lock().unwrap().left_out;
        assert_eq!(left_out, 1000 - u64::from(LINES_PER_SECOND));
        // The next window logs again, carrying the count of what was left out.
        log.window.lock().unwrap().started -= Duration::from_secs(1);
        assert!(log.note("Approve", "signature", "test"));
        assert_eq!(log.window.lock().unwrap().left_out, 0);
    }
}
