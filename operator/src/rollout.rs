//! Whether the StatefulSet's rolling update is stuck: a pod of the new revision has not
//! turned Ready within the progress deadline. The StatefulSet controller then waits
//! forever (it updates one pod at a time, highest ordinal first, and only moves on once
//! that pod is Ready), so the pods of the previous revision keep serving; what the
//! cluster's status must say is that the rollout stopped, which pod holds it and why.
//! A pure function of the StatefulSet's status, its pods and the time.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::api::core::v1::Pod;

/// Default for `--rollout-deadline-secs`: as a Deployment's `progressDeadlineSeconds`.
pub const DEFAULT_DEADLINE_SECS: u64 = 600;

/// The label the StatefulSet controller puts on each pod: its revision.
const REVISION_LABEL: &str = "controller-revision-hash";

/// A rollout held up by one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub pod: String,
    pub revision: String,
    /// How long the pod has been not Ready.
    pub for_secs: u64,
    /// What the kubelet says about its container (waiting reason, restarts), if anything.
    pub detail: String,
}

impl Stall {
    pub fn message(&self, previous_revision_pods: usize) -> String {
        format!(
            "rolling update stopped: pod {} of revision {} not Ready for {} s{}; the \
             StatefulSet waits for it, {} pod(s) of the previous revision keep serving \
             (fix spec.image or the pod's cause, or roll back)",
            self.pod,
            self.revision,
            self.for_secs,
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            },
            previous_revision_pods
        )
    }
}

/// What the rollout looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// No new revision is being rolled out.
    Settled,
    /// Rolling out; if nothing changes, it is stalled in `left` (re-check then).
    InProgress { left: Duration },
    /// Stalled: the pod, and how many pods still run the previous revision.
    Stalled {
        stall: Stall,
        previous_revision_pods: usize,
    },
}

/// The rollout's state at `now` (Unix seconds), with a stall declared after `deadline`.
pub fn assess(status: &StatefulSetStatus, pods: &[Pod], now: i64, deadline: Duration) -> Rollout {
    let (Some(current), Some(update)) = (&status.current_revision, &status.update_revision) else {
        return Rollout::Settled;
    };
    if current == update {
        return Rollout::Settled;
    }
    let revision = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            .cloned()
    };
    let previous_revision_pods = pods
        .iter()
        .filter(|p| revision(p).as_ref() != Some(update))
        .count();
    let mut soonest: Option<Duration> = None;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| revision(p).as_ref() == Some(update))
    {
        let Some(since) = not_ready_since(pod) else {
            continue;
        };
        let for_secs = u64::try_from(now.saturating_sub(since)).unwrap_or(0);
        if for_secs >= deadline.as_secs() {
            return Rollout::Stalled {
                stall: Stall {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    revision: update.clone(),
                    for_secs,
                    detail: container_detail(pod),
                },
                previous_revision_pods,
            };
        }
        let left = Duration::from_secs(deadline.as_secs() - for_secs);
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    Rollout::InProgress {
        // No pod of the new revision yet, or all Ready: look again within the deadline.
        left: soonest.unwrap_or(deadline),
    }
}

/// Since when (Unix seconds) the pod has not been Ready; `None` if it is Ready.
fn not_ready_since(pod: &Pod) -> Option<i64> {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.as_second())
            .or_else(|| created(pod)),
        None => created(pod),
    }
}

fn created(pod: &Pod) -> Option<i64> {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

/// The kubelet's word on the pod's containers: waiting reasons and restarts.
fn container_detail(pod: &Pod) -> String {
    let Some(statuses) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
    else {
        return String::new();
    };
    statuses
        .iter()
        .filter(|c| !c.ready)
        .map(|c| {
            let state = match c.state.as_ref() {
                Some(s) if s.waiting.is_some() => s
                    .waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .unwrap_or_else(|| "waiting".to_string()),
                Some(s) if s.running.is_some() => "running, readiness probe failing".to_string(),
                Some(s) if s.terminated.is_some() => "terminated".to_string(),
                _ => "no state".to_string(),
            };
            format!(
                "container {}: {state}, {} restart(s)",
                c.name, c.restart_count
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    const NOW: i64 = 1_800_000_000;
    const DEADLINE: Duration = Duration::from_secs(60);

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn pod(name: &str, revision: &str, ready: Option<(bool, i64)>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some([(REVISION_LABEL.to_string(), revision.to_string())].into()),
                creation_timestamp: Some(time(created)),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: ready.map(|(ok, at)| {
                    vec![PodCondition {
                        type_: "Ready".to_string(),
                        status: if ok { "True" } else { "False" }.to_string(),
                        last_transition_time: Some(time(at)),
                        ..PodCondition::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    name: "kss".to_string(),
                    ready: ready.is_some_and(|(ok, _)| ok),
                    restart_count: 2,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning::default()),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn rolling(current: &str, update: &str) -> StatefulSetStatus {
        StatefulSetStatus {
            current_revision: Some(current.to_string()),
            update_revision: Some(update.to_string()),
            replicas: 3,
            ..StatefulSetStatus::default()
        }
    }

    #[test]
    fn no_new_revision_is_settled_whatever_the_pods() {
        let pods = [pod("c-0", "a", Some((false, NOW - 3600)), NOW - 3600)];
        assert_eq!(
            assess(&rolling("a", "a"), &pods, NOW, DEADLINE),
            Rollout::Settled
        );
        assert_eq!(
            assess(&StatefulSetStatus::default(), &pods, NOW, DEADLINE),
            Rollout::Settled
        );
    }

    #[test]
    fn a_new_pod_not_ready_past_the_deadline_stalls_the_rollout() {
        let pods = [
            pod("c-0", "a", Some((true, NOW - 900)), NOW - 900),
            pod("c-1", "a", Some((true, NOW - 900)), NOW - 900),
            pod("c-2", "b", Some((false, NOW - 61)), NOW - 70),
        ];
        let Rollout::Stalled {
            stall,
            previous_revision_pods,
        } = assess(&rolling("a", "b"), &pods, NOW, DEADLINE)
        else {
            panic!("not stalled");
        };
        assert_eq!(previous_revision_pods, 2);
        assert_eq!(stall.pod, "c-2");
        assert_eq!(stall.revision, "b");
        assert_eq!(stall.for_secs, 61);
        let message = stall.message(previous_revision_pods);
        assert!(
            message.contains("pod c-2 of revision b not Ready for 61 s"),
            "{message}"
        );
        assert!(
            message.contains("readiness probe failing, 2 restart(s)"),
            "{message}"
        );
        assert!(
            message.contains("2 pod(s) of the previous revision"),
            "{message}"
        );
    }

    #[test]
    fn within_the_deadline_it_is_in_progress_and_says_when_to_look_again() {
        let pods = [
            pod("c-0", "a", Some((true, NOW - 900)), NOW - 900),
            pod("c-2", "b", Some((false, NOW - 45)), NOW - 50),
        ];
        assert_eq!(
            assess(&rolling("a", "b"), &pods, NOW, DEADLINE),
            Rollout::InProgress {
                left: Duration::from_secs(15)
            }
        );
    }

    #[test]
    fn ready_new_pods_do_not_stall_and_the_wait_restarts_per_pod() {
        // c-2 turned Ready; c-1 was just recreated at the new revision.
        let pods = [
            pod("c-0", "a", Some((true, NOW - 900)), NOW - 900),
            pod("c-1", "b", None, NOW - 5),
            pod("c-2", "b", Some((true, NOW - 100)), NOW - 300),
        ];
        assert_eq!(
            assess(&rolling("a", "b"), &pods, NOW, DEADLINE),
            Rollout::InProgress {
                left: Duration::from_secs(55)
            }
        );
    }

    #[test]
    fn a_pod_without_a_ready_condition_counts_from_its_creation() {
        let mut stuck = pod("c-2", "b", None, NOW - 120);
        if let Some(cs) = stuck
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            cs[0].state = Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ErrImageNeverPull".to_string()),
                    ..ContainerStateWaiting::default()
                }),
                ..ContainerState::default()
            });
        }
        let Rollout::Stalled { stall, .. } = assess(&rolling("a", "b"), &[stuck], NOW, DEADLINE)
        else {
            panic!("not stalled");
        };
        assert_eq!(stall.for_secs, 120);
        assert_eq!(
            stall.detail,
            "container kss: ErrImageNeverPull, 2 restart(s)"
        );
    }

    #[test]
    fn a_terminating_pod_does_not_count() {
        let mut going = pod("c-2", "b", Some((false, NOW - 600)), NOW - 600);
        going.metadata.deletion_timestamp = Some(time(NOW - 1));
        assert!(matches!(
            assess(&rolling("a", "b"), &[going], NOW, DEADLINE),
            Rollout::InProgress { .. }
        ));
    }
}
