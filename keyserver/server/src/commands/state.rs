//! `kss enable`, `kss disable`, `kss status`.

use anyhow::{Context, Result};
use kss_proto::v1::{Refusal, RefusalReason, StatusRequest};
use kss_store::Store;
use serde_json::json;

use super::admin_client;
use crate::audit_log::{self, Actor, admin_record};
use crate::data_dir::DataDir;
use crate::identity::KeyserverIdentity;

pub async fn set_enabled(store: &dyn Store, data_dir: &DataDir, enabled: bool) -> Result<()> {
    store
        .identity()
        .await?
        .context("this data directory has no keyserver identity: run `kss create` first")?;
    KeyserverIdentity::load_for_audit(store, data_dir).await?;
    store.set_enabled(enabled).await?;
    let policy_version = store.state().await?.policy_version;
    let action = if enabled { "enable" } else { "disable" };
    audit_log::record(
        store,
        admin_record(
            "cli",
            &Actor::cli(),
            action,
            None,
            json!({}),
            policy_version,
        ),
    )
    .await
    .with_context(|| format!("{action}d, but its audit record could not be written"))?;
    if enabled {
        println!("keyserver enabled: requests are decided by the policy");
    } else {
        println!(
            "keyserver disabled: every request is denied (reason: disabled) until `kss enable`"
        );
    }
    Ok(())
}

pub async fn status(store: &dyn Store, data_dir: &DataDir, as_json: bool) -> Result<()> {
    let identity = store
        .identity()
        .await?
        .context("this data directory has no keyserver identity: run `kss create` first")?;
    let state = store.state().await?;
    let profiles = store.profile_count().await?;
    let (approvals, denials) = store.audit_counts().await?;
    let instances = crate::rollout::instances(store).await?;
    // A server that refuses to serve says why (FAILED_PRECONDITION with a typed
    // `kss.v1.Refusal`, see `kss serve --bootstrap-identity`).
    let (running, refusing) = match admin_client::connect(data_dir).await {
        Some(mut admin) => match admin.status(StatusRequest {}).await {
            Ok(r) => (Some(r.into_inner()), None),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => (
                None,
                Some(kss_proto::details::find::<Refusal>(&s).unwrap_or(Refusal {
                    reason: RefusalReason::Unspecified as i32,
                    message: s.message().to_string(),
                    kss_version: String::new(),
                })),
            ),
            Err(_) => (None, None),
        },
        None => (None, None),
    };
    if as_json {
        let value = json!({
            "keyserver_id": identity.keyserver_id,
            "enabled": state.enabled,
            "policy_version": state.policy_version,
            "running": running.is_some(),
            "refusing": refusing.as_ref().map(|r| r.message.clone()),
            "refusal_reason": refusing.as_ref().map(|r| r.reason().as_str_name()),
            "applied_policy_version": running.as_ref().map(|r| r.policy_version),
            "uptime_seconds": running.as_ref().map(|r| r.uptime_seconds),
            "instance_id": running.as_ref().map(|r| r.instance_id.clone()),
            "profiles": profiles,
            "approvals": approvals,
            "denials": denials,
            "instances": instances
                .instances
                .iter()
                .map(|i| crate::rollout::instance_json(i, instances.now_ms))
                .collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    println!("keyserver id:    {}", identity.keyserver_id);
    println!(
        "enabled:         {}",
        if state.enabled { "yes" } else { "no" }
    );
    println!(
        "policy version:  {}",
        if state.policy_version == 0 {
            "none loaded".to_string()
        } else {
            state.policy_version.to_string()
        }
    );
    match &running {
        Some(r) => {
            println!("server:          running (instance {})", r.instance_id);
            println!("applied version: {}", r.policy_version);
            println!("uptime:          {}s", r.uptime_seconds);
        }
        None => match &refusing {
            Some(why) => println!("server:          refusing to serve: {}", why.message),
            None => println!("server:          not running"),
        },
    }
    println!("profiles:        {profiles}");
    println!("approvals:       {approvals}");
    println!("denials:         {denials}");
    println!(
        "instances:       {} online, {} applied version {}",
        instances.online, instances.up_to_date, instances.policy_version
    );
    if !instances.instances.is_empty() {
        print!("{}", crate::rollout::instance_table(&instances));
    }
    Ok(())
}
