//! `kss audit`: recent decisions and administrative actions, newest first;
//! `kss audit verify`: checks the audit chain; `kss audit prune`: drops old rows.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use kss_store::{AuditEntry, AuditFilter, ChainVerdict, Decision, PruneOutcome, Store};
use serde_json::{Value, json};

use crate::audit_log::{self, Actor, admin_record, escape_control, parse_age, prune_cutoff};
use crate::clock::now_ms;
use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only this profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Only approved or only denied.
    #[arg(long, value_enum)]
    pub decision: Option<DecisionFilter>,
    /// Only this request type (decrypt, search, ..., admin.policy_load, ...).
    #[arg(long = "type")]
    pub request_type: Option<String>,
    /// Only records of the last N seconds.
    #[arg(long)]
    pub since_seconds: Option<i64>,
    /// How many records at most.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// One JSON object per line, fields exactly as stored.
    #[arg(long)]
    pub json: bool,
}

/// `--decision`: which records to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionFilter {
    Approved,
    Denied,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Check the audit chain: exit 0 saying what it covers, or 1 naming the first edited,
    /// deleted, inserted or moved row. Needs the master key.
    Verify {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete the oldest audit rows, after verifying them; a checkpoint stands for them,
    /// so the rest still verifies. Rows younger than twice the clock skew (the nonces that
    /// refuse replays) are always kept. Needs the master key.
    Prune {
        /// A time (2026-01-31T00:00:00Z), a day (2026-01-31, midnight UTC) or an age
        /// (90d, 12h): rows stamped before it go.
        #[arg(long)]
        before: String,
        /// The servers' --max-clock-skew (seconds).
        #[arg(long, default_value_t = 300)]
        max_clock_skew: u64,
    },
    /// After a failed `verify` has been examined: start a new chain after every row there
    /// is, so that the keyserver records (and decides) again. The old rows stay, reported
    /// as not covered; the restart is the new chain's first row, with the finding and the
    /// actor. Refused while the chain verifies. Needs the master key.
    Restart,
}

pub async fn run(store: &dyn Store, data_dir: &DataDir, args: &AuditArgs) -> Result<()> {
    match &args.command {
        None => list(store, args).await,
        Some(AuditCommand::Verify { json }) => verify(store, data_dir, *json).await,
        Some(AuditCommand::Restart) => restart(store, data_dir).await,
        Some(AuditCommand::Prune {
            before,
            max_clock_skew,
        }) => {
            prune(
                store,
                data_dir,
                before,
                Duration::from_secs(*max_clock_skew),
            )
            .await
        }
    }
}

fn time_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

pub async fn list(store: &dyn Store, args: &AuditArgs) -> Result<()> {
    let decision = args.decision.map(|d| match d {
        DecisionFilter::Approved => Decision::Approved,
        DecisionFilter::Denied => Decision::Denied,
    });
    let filter = AuditFilter {
        profile_id: args.profile.clone(),
        decision,
        request_type: args.request_type.clone(),
        since_ms: args.since_seconds.map(|s| now_ms() - s * 1000),
        before_id: None,
        limit: args.limit,
    };
    for e in &store.audit(&filter).await? {
        if args.json {
            println!("{}", entry_json(e));
        } else {
            println!("{}", entry_line(e));
        }
    }
    Ok(())
}

/// Every field as stored; `meta` as the JSON it holds (a string if it is not JSON).
fn entry_json(e: &AuditEntry) -> Value {
    let r = &e.record;
    let meta: Value =
        serde_json::from_str(&r.meta).unwrap_or_else(|_| Value::String(r.meta.clone()));
    json!({
        "id": e.id, "time": time_of(r.at_ms), "at_ms": r.at_ms, "instance": r.instance_id,
        "profile_id": r.profile_id, "device_id": r.device_id,
        "request_type": r.request_type, "meta": meta,
        "cryptographic_id": r.cryptographic_id,
        "ciphertext_sha256": r.ciphertext_sha256.as_ref().map(hex::encode),
        "decision": r.decision.as_str(), "rule_set": r.rule_set,
        "reason": r.reason, "policy_version": r.policy_version,
        "actor": r.actor, "chained": e.chain_hash.is_some(),
    })
}

/// One line, every stored text escaped (a client's metadata cannot fake lines or
/// terminal output).
fn entry_line(e: &AuditEntry) -> String {
    let r = &e.record;
    let what = match serde_json::from_str::<Value>(&r.meta) {
        // A request's metadata: its entries' texts.
        Ok(Value::Array(items)) => items
            .iter()
            .map(|m| m.get("meta").and_then(Value::as_str).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", "),
        Ok(Value::Object(detail)) if detail.is_empty() => String::new(),
        Ok(other) => other.to_string(),
        Err(_) => r.meta.clone(),
    };
    let mut line = format!(
        "{:>8}  {}  {:<8}  {:<15}  {:<32}  {}{}",
        e.id,
        time_of(r.at_ms),
        r.decision.as_str(),
        escape_control(&r.request_type),
        escape_control(r.profile_id.as_deref().unwrap_or("-")),
        escape_control(r.reason.as_deref().unwrap_or("")),
        r.rule_set
            .map(|s| format!("rule set {s}"))
            .unwrap_or_default()
    );
    if let Some(actor) = &r.actor {
        line.push_str(&format!("  by {}", escape_control(actor)));
    }
    if !what.is_empty() {
        line.push_str(&format!("  {}", escape_control(&what)));
    }
    line
}

pub async fn verify(store: &dyn Store, data_dir: &DataDir, as_json: bool) -> Result<()> {
    KeyserverIdentity::load_for_audit(store, data_dir).await?;
    match store
        .verify_audit()
        .await
        .context("verifying the audit log")?
    {
        ChainVerdict::Tampered(t) => {
            if as_json {
                println!(
                    "{}",
                    json!({"intact": false, "first_bad_row": t.row, "problem": t.what})
                );
            }
            match t.row {
                Some(row) => bail!("audit log TAMPERED at row {row}: {t}"),
                None => bail!("audit log TAMPERED: {t}"),
            }
        }
        ChainVerdict::Intact(r) if !r.started => {
            if as_json {
                println!(
                    "{}",
                    json!({"intact": true, "started": false, "rows": 0, "uncovered": r.uncovered})
                );
            } else {
                println!(
                    "audit chain not started yet: {} row(s) from before the chain are not \
                     covered (it starts at the next record written by a server or command \
                     holding the identity)",
                    r.uncovered
                );
            }
            Ok(())
        }
        ChainVerdict::Intact(r) => {
            let anchor = r
                .anchor
                .as_ref()
                .ok_or_else(|| anyhow!("an intact chain without a checkpoint"))?;
            if as_json {
                println!(
                    "{}",
                    json!({
                        "intact": true, "started": true, "rows": r.rows,
                        "first_id": r.first_id, "last_id": r.last_id,
                        "checkpoints": r.checkpoints, "uncovered": r.uncovered,
                        "anchor": {"kind": anchor.kind.as_str(), "seq": anchor.seq,
                                   "after_id": anchor.last_id, "at_ms": anchor.at_ms},
                        "head_at_ms": r.head_at_ms,
                        "head_hash": hex::encode(&r.last_hash),
                    })
                );
                return Ok(());
            }
            let rows = match (r.first_id, r.last_id) {
                (Some(a), Some(b)) => format!("{} row(s), ids {a}..={b}", r.rows),
                _ => "0 rows".to_string(),
            };
            println!(
                "audit log intact: {rows} verified in the chain, {} checkpoint(s)",
                r.checkpoints
            );
            println!(
                "  starts after row {} at {} checkpoint {} ({})",
                anchor.last_id,
                anchor.kind.as_str(),
                anchor.seq,
                time_of(anchor.at_ms)
            );
            if r.uncovered > 0 {
                println!(
                    "  {} row(s) from before the chain (ids up to {}) are not covered",
                    r.uncovered, anchor.last_id
                );
            }
            if let Some(at) = r.head_at_ms {
                println!(
                    "  head written {}; chain hash {} (record it elsewhere to detect a \
                     rollback of the whole database)",
                    time_of(at),
                    hex::encode(&r.last_hash)
                );
            }
            Ok(())
        }
    }
}

pub async fn restart(store: &dyn Store, data_dir: &DataDir) -> Result<()> {
    KeyserverIdentity::load_for_audit(store, data_dir).await?;
    let finding = match store
        .verify_audit()
        .await
        .context("verifying the audit log")?
    {
        ChainVerdict::Intact(_) => {
            bail!("the audit chain verifies: nothing to restart (nothing was changed)")
        }
        ChainVerdict::Tampered(t) => t,
    };
    let policy_version = store.state().await?.policy_version;
    let detail = json!({"finding": finding.what, "first_bad_row": finding.row});
    let record = admin_record(
        "cli",
        &Actor::cli(),
        "audit_restart",
        None,
        detail,
        policy_version,
    );
    let id = store
        .restart_audit_chain(&record)
        .await
        .context("restarting the audit chain")?;
    println!(
        "audit chain restarted at row {id} (recorded with the finding: {finding}); rows \
         before it are kept but no longer covered"
    );
    Ok(())
}

/// `--before`: a time, a day (midnight UTC) or an age.
fn parse_before(text: &str, now_ms: i64) -> Result<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(day) = text.parse::<jiff::civil::Date>() {
        let t = jiff::tz::TimeZone::UTC
            .to_timestamp(day.to_datetime(jiff::civil::Time::midnight()))
            .with_context(|| format!("--before {text}"))?;
        return Ok(t.as_millisecond());
    }
    let age = parse_age(text).map_err(|e| {
        anyhow!("--before {e}; or give a time (2026-01-31T00:00:00Z) or a day (2026-01-31)")
    })?;
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(age_ms))
}

pub async fn prune(
    store: &dyn Store,
    data_dir: &DataDir,
    before: &str,
    max_clock_skew: Duration,
) -> Result<()> {
    let now = now_ms();
    let asked = parse_before(before, now)?;
    let cutoff = prune_cutoff(asked, max_clock_skew, now);
    if cutoff < asked {
        eprintln!(
            "keeping rows since {} (twice the clock skew: their nonces still refuse replays)",
            time_of(cutoff)
        );
    }
    KeyserverIdentity::load_for_audit(store, data_dir).await?;
    match store
        .prune_audit(cutoff)
        .await
        .context("pruning the audit log")?
    {
        PruneOutcome::Nothing => {
            println!("nothing to prune: no row before {}", time_of(cutoff));
            Ok(())
        }
        PruneOutcome::Refused(t) => bail!(
            "not pruned: the rows to prune do not verify, and are kept as evidence ({}{t})",
            t.row.map(|r| format!("row {r}: ")).unwrap_or_default()
        ),
        PruneOutcome::Pruned {
            through,
            rows,
            checkpoint,
        } => {
            let policy_version = store.state().await?.policy_version;
            let detail = json!({
                "before_ms": cutoff, "through_id": through, "rows": rows, "checkpoint": checkpoint,
            });
            audit_log::record(
                store,
                admin_record(
                    "cli",
                    &Actor::cli(),
                    "audit_prune",
                    None,
                    detail,
                    policy_version,
                ),
            )
            .await
            .context("pruned, but the audit record of the prune could not be written")?;
            match checkpoint {
                Some(seq) => println!(
                    "pruned {rows} row(s), ids up to {through}; checkpoint {seq} stands for them"
                ),
                None => println!("pruned {rows} row(s) from before the chain, ids up to {through}"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn before_takes_times_days_and_ages() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_before("2026-01-31T00:00:00Z", now).unwrap(),
            1_769_817_600_000
        );
        assert_eq!(parse_before("2026-01-31", now).unwrap(), 1_769_817_600_000);
        assert_eq!(parse_before("1d", now).unwrap(), now - 86_400_000);
        assert!(parse_before("yesterday", now).is_err());
    }
}
