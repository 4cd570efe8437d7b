//! `kss audit`: recent decisions, newest first.

use anyhow::{Result, bail};
use clap::Args;
use kss_store::{AuditFilter, Decision, Store};
use serde_json::json;

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only this profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Only approved or only denied.
    #[arg(long, value_parser = ["approved", "denied"])]
    pub decision: Option<String>,
    /// Only this request type (decrypt, search, ...).
    #[arg(long = "type")]
    pub request_type: Option<String>,
    /// Only records of the last N seconds.
    #[arg(long)]
    pub since_seconds: Option<i64>,
    /// How many records at most.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn list(store: &dyn Store, args: &AuditArgs) -> Result<()> {
    let decision = match args.decision.as_deref() {
        None => None,
        Some("approved") => Some(Decision::Approved),
        Some("denied") => Some(Decision::Denied),
        Some(other) => bail!("--decision {other}: expected approved or denied"),
    };
    let filter = AuditFilter {
        profile_id: args.profile.clone(),
        decision,
        request_type: args.request_type.clone(),
        since_ms: args
            .since_seconds
            .map(|s| jiff::Timestamp::now().as_millisecond() - s * 1000),
        before_id: None,
        limit: args.limit,
    };
    let entries = store.audit(&filter).await?;
    for e in &entries {
        let r = &e.record;
        let time = jiff::Timestamp::from_millisecond(r.at_ms)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| r.at_ms.to_string());
        if args.json {
            let meta: serde_json::Value =
                serde_json::from_str(&r.meta).unwrap_or(serde_json::Value::Null);
            println!(
                "{}",
                json!({
                    "id": e.id, "time": time, "instance": r.instance_id,
                    "profile_id": r.profile_id, "device_id": r.device_id,
                    "request_type": r.request_type, "meta": meta,
                    "cryptographic_id": r.cryptographic_id,
                    "decision": r.decision.as_str(), "rule_set": r.rule_set,
                    "reason": r.reason, "policy_version": r.policy_version,
                })
            );
        } else {
            println!(
                "{:>8}  {}  {:<8}  {:<15}  {:<32}  {}{}",
                e.id,
                time,
                r.decision.as_str(),
                r.request_type,
                r.profile_id.as_deref().unwrap_or("-"),
                r.reason.as_deref().unwrap_or(""),
                r.rule_set
                    .map(|s| format!("rule set {s}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
