//! The NetworkPolicy of the keyserver pods: only their four ports are reachable, the
//! admin API only from the operator's pods.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, ports, selector_labels};
use crate::crd::KeyShardCluster;

/// The label every namespace has, its name (Kubernetes sets it).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The operator's own pods: its namespace and the labels that select them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl OperatorPods {
    fn peer(&self) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    self.namespace.clone(),
                )])),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(self.labels.clone()),
                ..LabelSelector::default()
            }),
            ip_block: None,
        }
    }
}

/// Whether the cluster wants its NetworkPolicy (the default).
pub fn network_policy_enabled(cluster: &KeyShardCluster) -> bool {
    cluster
        .spec
        .network_policy
        .as_ref()
        .and_then(|p| p.enabled)
        .unwrap_or(true)
}

/// A rule admitting TCP to `port` from `from` (empty: any source).
fn rule(port: i32, from: Vec<NetworkPolicyPeer>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            end_port: None,
        }]),
        from: (!from.is_empty()).then_some(from),
    }
}

/// The NetworkPolicy: ingress to the keyserver pods on their ports only. gRPC from
/// `spec.networkPolicy.clientsFrom`, metrics from `metricsFrom` (each empty: any
/// source), health from any source (the kubelet's probes), admin from `operator`'s pods
/// (any source when `None`: the operator runs outside the cluster or was not told its
/// labels). `None` when the cluster disables it.
pub fn network_policy(
    cluster: &KeyShardCluster,
    names: &Names,
    operator: Option<&OperatorPods>,
) -> Option<NetworkPolicy> {
    if !network_policy_enabled(cluster) {
        return None;
    }
    let spec = cluster.spec.network_policy.clone().unwrap_or_default();
    let admin_from = operator.map(OperatorPods::peer).into_iter().collect();
    Some(NetworkPolicy {
        metadata: owned_meta(cluster, names, names.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                rule(ports::GRPC, spec.clients_from),
                rule(ports::HEALTH, Vec::new()),
                rule(ports::METRICS, spec.metrics_from),
                rule(ports::ADMIN, admin_from),
            ]),
            egress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::{cluster, names};

    fn operator() -> OperatorPods {
        OperatorPods {
            namespace: "kss-system".to_string(),
            labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "kss-operator".to_string(),
            )]),
        }
    }

    const SPEC: &str = "mode: Standalone\nbackup: {ignoreSecurityChecks: true}\n";

    /// (port, who may reach it: None for any source) of each ingress rule.
    fn admitted(policy: &NetworkPolicy) -> Vec<(i32, Option<Vec<NetworkPolicyPeer>>)> {
        let spec = policy.spec.clone().expect("spec");
        spec.ingress
            .expect("ingress")
            .into_iter()
            .map(|r| {
                let ports = r.ports.expect("ports");
                assert_eq!(ports.len(), 1);
                assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
                let Some(IntOrString::Int(port)) = ports[0].port else {
                    panic!("port {:?}", ports[0].port);
                };
                (port, r.from)
            })
            .collect()
    }

    #[test]
    fn by_default_only_the_four_ports_are_admitted_and_admin_only_from_the_operator() {
        let policy = network_policy(&cluster(SPEC), &names(), Some(&operator())).expect("policy");
        assert_eq!(policy.metadata.name.as_deref(), Some("demo"));
        assert_eq!(policy.metadata.namespace.as_deref(), Some("ns"));
        assert!(policy.metadata.owner_references.is_some());
        let spec = policy.spec.clone().expect("spec");
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(selector_labels(&names()))
        );
        // Ingress only: the database may be anywhere, egress stays open.
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let admitted = admitted(&policy);
        assert_eq!(
            admitted,
            vec![
                (ports::GRPC, None),
                (ports::HEALTH, None),
                (ports::METRICS, None),
                (ports::ADMIN, Some(vec![operator().peer()])),
            ]
        );
        // The operator's pods, in the operator's namespace (not any namespace's pods
        // with the same labels).
        let peer = operator().peer();
        assert_eq!(
            peer.namespace_selector.and_then(|s| s.match_labels),
            Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "kss-system".to_string()
            )]))
        );
    }

    #[test]
    fn peers_of_the_spec_restrict_clients_and_metrics() {
        let spec = "mode: Standalone\nbackup: {ignoreSecurityChecks: true}\nnetworkPolicy:\n  clientsFrom:\n  - ipBlock: {cidr: 10.1.0.0/16}\n  metricsFrom:\n  - namespaceSelector: {matchLabels: {team: monitoring}}\n";
        let policy = network_policy(&cluster(spec), &names(), None).expect("policy");
        let admitted = admitted(&policy);
        let grpc = admitted[0].1.clone().expect("clients");
        assert_eq!(
            grpc[0].ip_block.as_ref().map(|b| b.cidr.as_str()),
            Some("10.1.0.0/16")
        );
        let metrics = admitted[2].1.clone().expect("metrics");
        assert_eq!(
            metrics[0]
                .namespace_selector
                .clone()
                .and_then(|s| s.match_labels),
            Some(BTreeMap::from([(
                "team".to_string(),
                "monitoring".to_string()
            )]))
        );
        // The operator's pods unknown: admin from any source (its mTLS still holds).
        assert_eq!(admitted[3], (ports::ADMIN, None));
    }

    #[test]
    fn a_disabled_policy_is_not_made() {
        let spec = "mode: Standalone\nbackup: {ignoreSecurityChecks: true}\nnetworkPolicy: {enabled: false}\n";
        assert!(network_policy(&cluster(spec), &names(), Some(&operator())).is_none());
        assert!(network_policy(&cluster(SPEC), &names(), None).is_some());
    }
}
