//! The audit log beyond decisions: the chain's key (handed to the store), administrative
//! actions with their actor, the retention rule for pruning, and escaping for the listing.
//!
//! The chain itself lives in the store (`kss_store::audit_chain`), so that it is extended
//! inside each decision's transaction.

use std::sync::Arc;
use std::time::Duration;

use kss_crypto::RowKey;
use kss_store::{AuditKey, AuditRecord, Decision, PruneOutcome, Store, StoreError};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::clock::now_ms;

/// The chain's key for the store: HMAC-SHA256 under the identity's audit key
/// (`RootSecret::audit_key`, domain-separated from the row key).
pub struct ChainKey {
    pub key: Arc<RowKey>,
    /// The identity's seal says the chain has started ([`kss_crypto::identity::Era`]).
    pub started: bool,
}

impl AuditKey for ChainKey {
    fn mac(&self, domain: &str, fields: &[&[u8]]) -> [u8; 32] {
        self.key.mac(domain, fields)
    }

    fn chain_started(&self) -> bool {
        self.started
    }
}

/// Who did an administrative action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The admin API over mutual TLS: the client certificate's subject.
    Tls(String),
    /// The admin socket: the peer's uid (SO_PEERCRED).
    Socket(u32),
    /// The CLI acting on the database directly: the process's effective uid.
    Cli(u32),
    /// The server itself (periodic pruning).
    Server,
    /// A connection whose peer is not known (should not happen: both listeners know).
    Unknown,
}

impl Actor {
    /// The CLI process running now.
    pub fn cli() -> Self {
        Actor::Cli(rustix::process::geteuid().as_raw())
    }

    /// Who sent an admin API request.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        if let Some(info) = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
        {
            return match &info.peer_cred {
                Some(cred) => Actor::Socket(cred.uid()),
                None => Actor::Unknown,
            };
        }
        match request.peer_certs() {
            Some(certs) => match certs.first().and_then(|leaf| {
                x509_parser::parse_x509_certificate(leaf.as_ref())
                    .ok()
                    .map(|(_, cert)| cert.subject().to_string())
            }) {
                Some(subject) => Actor::Tls(subject),
                None => Actor::Unknown,
            },
            None => Actor::Unknown,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Tls(subject) => write!(f, "tls:{subject}"),
            Actor::Socket(uid) => write!(f, "uid:{uid} socket"),
            Actor::Cli(uid) => write!(f, "uid:{uid} cli"),
            Actor::Server => f.write_str("server"),
            Actor::Unknown => f.write_str("unknown"),
        }
    }
}

/// One administrative action, as the audit log records it: `request_type` is
/// `admin.<action>`, `meta` a JSON object of what was done (never a secret: no token, no
/// key), `decision` approved (it was done).
pub fn admin_record(
    instance_id: &str,
    actor: &Actor,
    action: &str,
    profile_id: Option<String>,
    detail: Value,
    policy_version: u64,
) -> AuditRecord {
    AuditRecord {
        at_ms: now_ms(),
        instance_id: instance_id.to_string(),
        profile_id,
        device_id: None,
        request_type: format!("admin.{action}"),
        meta: detail.to_string(),
        cryptographic_id: String::new(),
        decision: Decision::Approved,
        rule_set: None,
        reason: None,
        policy_version: (policy_version > 0).then_some(policy_version),
        nonce: None,
        ciphertext_sha256: None,
        actor: Some(actor.to_string()),
    }
}

/// Records an administrative action already done. Its own transaction: if it fails, the
/// action stands unrecorded, and the caller must say so.
pub async fn record(store: &dyn Store, record: AuditRecord) -> Result<u64, StoreError> {
    let action = record.request_type.clone();
    match store.append_audit(std::slice::from_ref(&record)).await {
        Ok(ids) => Ok(ids.first().copied().unwrap_or(0)),
        Err(e) => {
            error!(%action, error = %e, "an administrative action was done but not audited");
            Err(e)
        }
    }
}

/// The oldest stamp that pruning keeps: `before_ms`, or `now - 2 × max_clock_skew` if that
/// is earlier. A request is refused as stale beyond the skew from the server's clock, so a
/// nonce older than twice the skew (instances' clocks may differ by up to one skew) can
/// no longer be replayed; younger ones are the replay guard and stay.
pub fn prune_cutoff(before_ms: i64, max_clock_skew: Duration, now_ms: i64) -> i64 {
    let skew_ms = i64::try_from(max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    before_ms.min(now_ms.saturating_sub(skew_ms.saturating_mul(2)))
}

/// How often a retention of `retention` prunes: a tenth of it, so that the log holds at
/// most 1.1 × the retention, between every 10 s and every hour.
pub fn prune_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

/// Prunes rows older than `retention` every `every`, until `stop`. Each prune that removed
/// rows is itself recorded; a log that does not verify is left as it is (and logged).
pub async fn prune_periodically(
    store: Arc<dyn Store>,
    instance_id: String,
    retention: Duration,
    max_clock_skew: Duration,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let now = now_ms();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = prune_cutoff(now.saturating_sub(retention_ms), max_clock_skew, now);
        match store.prune_audit(cutoff).await {
            Ok(PruneOutcome::Nothing) => {}
            Ok(PruneOutcome::Pruned {
                through,
                rows,
                checkpoint,
            }) => {
                info!(through, rows, ?checkpoint, "audit log pruned");
                let detail = serde_json::json!({
                    "before_ms": cutoff, "through_id": through, "rows": rows,
                    "checkpoint": checkpoint,
                });
                let _ = record(
                    store.as_ref(),
                    admin_record(&instance_id, &Actor::Server, "audit_prune", None, detail, 0),
                )
                .await;
            }
            Ok(PruneOutcome::Refused(t)) => {
                error!(row = ?t.row, problem = %t, "audit log does not verify: not pruned");
            }
            Err(e) => warn!(error = %e, "pruning the audit log failed"),
        }
    }
}

/// An age such as `3600`, `30m`, `12h` or `90d` (seconds without a unit).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}': expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => return Err(format!("'{text}': unknown unit '{other}' (s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// `text` with every control character (and backslash) escaped, so that a listing line is
/// one line and shows what is stored: `\n`, `\t`, `\r`, `\\`, others as `\u{..}`.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_runs_every_tenth_of_the_retention_within_bounds() {
        let secs = Duration::from_secs;
        assert_eq!(prune_interval(secs(600)), secs(60));
        assert_eq!(prune_interval(secs(90 * 86_400)), secs(3600));
        assert_eq!(prune_interval(secs(30)), secs(10));
        assert_eq!(prune_interval(Duration::ZERO), secs(10));
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escape_control("plain /a/b é"), "plain /a/b é");
        assert_eq!(
            escape_control("a\nb\tc\rd\\e\u{1b}[31m\u{7f}\u{9b}"),
            "a\\nb\\tc\\rd\\\\e\\u{1b}[31m\\u{7f}\\u{9b}"
        );
    }

    #[test]
    fn pruning_keeps_twice_the_clock_skew() {
        let skew = Duration::from_secs(300);
        let now = 10_000_000;
        assert_eq!(prune_cutoff(1_000, skew, now), 1_000);
        assert_eq!(prune_cutoff(now, skew, now), now - 600_000);
        assert_eq!(prune_cutoff(i64::MAX, skew, now), now - 600_000);
    }

    #[test]
    fn ages_take_units() {
        assert_eq!(parse_age("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_age("15"), Ok(Duration::from_secs(15)));
        assert!(parse_age("3w").is_err());
        assert!(parse_age("").is_err());
    }

    #[test]
    fn actors_read_as_who_did_it() {
        assert_eq!(Actor::Socket(1000).to_string(), "uid:1000 socket");
        assert_eq!(Actor::Cli(0).to_string(), "uid:0 cli");
        assert_eq!(Actor::Tls("CN=op".into()).to_string(), "tls:CN=op");
    }
}
