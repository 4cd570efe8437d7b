//! Reconcile of a `KssPolicy`: validate it with the keyserver's own policy engine and
//! report, per referencing `KeyShardCluster`, how far it rolled out. Storing it in a
//! keyserver's database is the cluster reconcile's job (it knows the instances).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument};

use super::{Context, digest, now_rfc3339};
use crate::crd::condition::{self, reasons, types};
use crate::crd::policy::{ClusterRollout, PolicySummary};
use crate::crd::{KeyShardCluster, KssPolicy, KssPolicyStatus};
use crate::desired::FIELD_MANAGER;
use crate::error::{Error, Result};

/// The engine's verdict on a policy text: the summary, or the located error.
pub fn validate(text: &str) -> std::result::Result<(PolicySummary, Vec<String>), String> {
    let policy = kss_policy::Policy::load(text).map_err(|e| e.to_string())?;
    let s = policy.summary();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let warnings = policy.warnings().iter().map(|w| w.to_string()).collect();
    Ok((
        PolicySummary {
            request_types: count(s.request_types),
            rule_sets: count(s.rule_sets),
            rules: count(s.rules),
            throttles: count(s.throttles),
            persistent_throttles: count(s.persistent_throttles),
        },
        warnings,
    ))
}

#[instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
pub async fn reconcile(policy: Arc<KssPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    ctx.metrics
        .observe("KssPolicy", started.elapsed(), result.as_ref().err());
    result
}

async fn reconcile_inner(policy: &KssPolicy, ctx: &Context) -> Result<Action> {
    let namespace = policy.namespace().ok_or_else(|| Error::NoNamespace {
        what: format!("KssPolicy {}", policy.name_any()),
    })?;
    let name = policy.name_any();
    let api: Api<KssPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = policy.status.clone().unwrap_or_default();
    let now = now_rfc3339();
    let text_digest = digest(&policy.spec.policy);
    let generation = policy.metadata.generation;

    let mut status = KssPolicyStatus {
        digest: Some(text_digest.clone()),
        conditions: previous.conditions.clone(),
        observed_generation: generation,
        ..KssPolicyStatus::default()
    };
    let verdict = validate(&policy.spec.policy);
    match &verdict {
        Ok((summary, warnings)) => {
            status.summary = Some(summary.clone());
            status.warnings = warnings.clone();
            condition::set(
                &mut status.conditions,
                condition::new(
                    types::VALID,
                    true,
                    reasons::VALID_POLICY,
                    format!(
                        "{} rule(s) in {} rule set(s), {} throttle(s)",
                        summary.rules, summary.rule_sets, summary.throttles
                    ),
                    generation,
                    &now,
                ),
            );
        }
        Err(message) => {
            condition::set(
                &mut status.conditions,
                condition::new(
                    types::VALID,
                    false,
                    reasons::INVALID_POLICY,
                    format!("{message}; clusters keep the policy in force"),
                    generation,
                    &now,
                ),
            );
        }
    }

    // Rollout, as each referencing cluster reported it.
    let clusters: Api<KeyShardCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    for cluster in clusters.list(&ListParams::default()).await? {
        let refers = cluster
            .spec
            .policy_ref
            .as_ref()
            .is_some_and(|r| r.name == name);
        if !refers {
            continue;
        }
        let rollout = cluster.status.as_ref().and_then(|s| s.policy.clone());
        status.clusters.push(ClusterRollout {
            cluster: cluster.name_any(),
            in_force: rollout
                .as_ref()
                .is_some_and(|r| r.digest.as_deref() == Some(text_digest.as_str())),
            version: rollout.as_ref().map(|r| r.version).unwrap_or(0),
            up_to_date: rollout.as_ref().map(|r| r.up_to_date).unwrap_or(0),
            online: rollout.as_ref().map(|r| r.online).unwrap_or(0),
        });
    }
    status.cluster_count = i32::try_from(status.clusters.len()).unwrap_or(i32::MAX);

    let was_valid = condition::find(&previous.conditions, types::VALID).map(|c| c.status.clone());
    let is_valid = verdict.is_ok();
    if was_valid.as_deref() != Some(if is_valid { "True" } else { "False" })
        || previous.digest.as_deref() != Some(text_digest.as_str())
    {
        let (type_, reason, note) = match &verdict {
            Ok(_) => (
                EventType::Normal,
                "PolicyValid",
                "policy validated".to_string(),
            ),
            Err(message) => (
                EventType::Warning,
                "PolicyInvalid",
                format!("policy rejected: {message}"),
            ),
        };
        info!(valid = is_valid, "policy validated");
        ctx.recorder
            .publish(
                &Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Validate".into(),
                    secondary: None,
                },
                &policy.object_ref(&()),
            )
            .await?;
    }

    if previous != status {
        super::apply_status(&api, policy, None, FIELD_MANAGER, &status).await?;
    }
    let rolling = status
        .clusters
        .iter()
        .any(|c| !c.in_force || c.up_to_date < c.online);
    Ok(Action::requeue(if rolling {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(300)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_locates_the_error() {
        let err = validate("decrypt:\n  - - rule: no-such-rule\n").expect_err("invalid");
        assert!(
            err.contains("no-such-rule") || err.contains("line"),
            "{err}"
        );
        let (summary, _) =
            validate("decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 2\n")
                .expect("valid");
        assert_eq!(summary.rules, 1);
        assert_eq!(summary.throttles, 1);
    }
}
