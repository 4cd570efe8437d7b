//! The rollout view: every registered instance, online or not, and whether it applied the
//! policy version in force. Served by the admin API (`ListInstances`) and printed by
//! `kss instance list` and `kss status`.

use kss_proto::v1 as pb;
use kss_store::{Store, StoreError};

/// Reads the registry and the version in force.
pub async fn instances(store: &dyn Store) -> Result<pb::ListInstancesResponse, StoreError> {
    let state = store.state().await?;
    let list = store.instances().await?;
    let instances: Vec<pb::InstanceStatus> = list
        .instances
        .iter()
        .map(|i| pb::InstanceStatus {
            online: i.online(list.now_ms),
            name: i.info.name.clone(),
            endpoint: i.info.endpoint.clone(),
            hostname: i.info.hostname.clone(),
            kss_version: i.info.kss_version.clone(),
            applied_policy_version: i.applied_policy_version,
            applied_at_ms: i.applied_at_ms,
            heartbeat_ms: i.heartbeat_ms,
            started_at_ms: i.info.started_at_ms,
            stopped_at_ms: i.stopped_at_ms.unwrap_or(0),
        })
        .collect();
    let online = instances.iter().filter(|i| i.online).count();
    let up_to_date = instances
        .iter()
        .filter(|i| i.online && i.applied_policy_version == state.policy_version)
        .count();
    Ok(pb::ListInstancesResponse {
        policy_version: state.policy_version,
        now_ms: list.now_ms,
        instances,
        up_to_date: u32::try_from(up_to_date).unwrap_or(u32::MAX),
        online: u32::try_from(online).unwrap_or(u32::MAX),
    })
}

/// One instance as a JSON object (for `--json` output).
pub fn instance_json(i: &pb::InstanceStatus, now_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "online": i.online,
        "applied_policy_version": i.applied_policy_version,
        "applied_at_ms": i.applied_at_ms,
        "heartbeat_at_ms": i.heartbeat_ms,
        "heartbeat_age_ms": now_ms - i.heartbeat_ms,
        "endpoint": i.endpoint,
        "hostname": i.hostname,
        "kss_version": i.kss_version,
        "started_at_ms": i.started_at_ms,
        "stopped_at_ms": (i.stopped_at_ms != 0).then_some(i.stopped_at_ms),
    })
}

/// The instances as a table, one line each.
pub fn instance_table(r: &pb::ListInstancesResponse) -> String {
    let mut out = format!(
        "{:<32} {:<8} {:>8} {:>10}  {}\n",
        "NAME", "STATE", "APPLIED", "HEARTBEAT", "ENDPOINT"
    );
    for i in &r.instances {
        let state = if i.online { "online" } else { "offline" };
        let age = format!("{:.1}s ago", (r.now_ms - i.heartbeat_ms) as f64 / 1000.0);
        out.push_str(&format!(
            "{:<32} {:<8} {:>8} {:>10}  {}\n",
            i.name, state, i.applied_policy_version, age, i.endpoint
        ));
    }
    out
}
