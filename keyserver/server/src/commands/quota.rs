//! `kss quota list` and `kss quota clear`.

use anyhow::{Context, Result};
use kss_proto::v1::{ClearQuotasRequest, ListQuotasRequest, QuotaEntry};
use kss_store::Store;
use serde_json::json;

use super::admin_client;
use crate::audit_log::{self, Actor, admin_record};
use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;

pub async fn list(store: &dyn Store, data_dir: &DataDir, all: bool, as_json: bool) -> Result<()> {
    // A running server knows every counter (in-memory ones too) and which are at quota.
    let entries: Vec<QuotaEntry> = match admin_client::connect(data_dir).await {
        Some(mut admin) => {
            admin
                .list_quotas(ListQuotasRequest {})
                .await?
                .into_inner()
                .entries
        }
        None => {
            eprintln!("(server not running: persistent counters only)");
            store
                .counters(None)
                .await?
                .into_iter()
                .map(|c| QuotaEntry {
                    profile_id: c.profile_id,
                    rule_id: c.rule_id,
                    hour_used: c.counter.hour_used,
                    day_used: c.counter.day_used,
                    persistent: true,
                    at_quota: false,
                })
                .collect()
        }
    };
    let shown = entries.iter().filter(|e| all || e.at_quota);
    if as_json {
        for e in shown {
            println!(
                "{}",
                json!({"profile_id": e.profile_id, "rule_id": e.rule_id, "hour_used": e.hour_used,
                       "day_used": e.day_used, "persistent": e.persistent, "at_quota": e.at_quota})
            );
        }
        return Ok(());
    }
    println!(
        "{:<32}  {:<40}  {:>9}  {:>9}  {:<10}  at quota",
        "profile", "rule", "this hour", "today", "counter"
    );
    for e in shown {
        println!(
            "{:<32}  {:<40}  {:>9}  {:>9}  {:<10}  {}",
            e.profile_id,
            e.rule_id,
            e.hour_used,
            e.day_used,
            if e.persistent { "persistent" } else { "memory" },
            if e.at_quota { "yes" } else { "no" }
        );
    }
    Ok(())
}

pub async fn clear(store: &dyn Store, data_dir: &DataDir, profile: Option<&str>) -> Result<()> {
    // Counters are keyed by the canonical id: another spelling would clear nothing.
    let profile = profile
        .map(|p| {
            p.parse::<kss_crypto::ProfileId>()
                .map(|id| id.to_string())
                .map_err(|e| anyhow::anyhow!("--profile: {e}"))
        })
        .transpose()?;
    let profile = profile.as_deref();
    KeyserverIdentity::load_for_audit(store, data_dir).await?;
    let persistent = store.clear_counters(profile).await?;
    let policy_version = store.state().await?.policy_version;
    audit_log::record(
        store,
        admin_record(
            "cli",
            &Actor::cli(),
            "quota_clear",
            profile.map(str::to_string),
            json!({"counters": "persistent", "cleared": persistent}),
            policy_version,
        ),
    )
    .await
    .context("counters cleared, but the audit record could not be written")?;
    let in_memory = match admin_client::connect(data_dir).await {
        Some(mut admin) => {
            admin
                .clear_quotas(ClearQuotasRequest {
                    profile_id: profile.unwrap_or_default().to_string(),
                })
                .await?
                .into_inner()
                .cleared
        }
        None => 0,
    };
    println!(
        "cleared {persistent} persistent and {in_memory} in-memory counter(s) of {}",
        profile.map_or("every profile".to_string(), |p| format!("profile {p}"))
    );
    Ok(())
}
