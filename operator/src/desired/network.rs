//! The Services: one for workstations, one headless for the StatefulSet's pod names.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, ports, selector_labels};
use crate::crd::KeyShardCluster;
use crate::crd::cluster::ServiceType;

fn port(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".to_string()),
        app_protocol: Some(if name == "metrics" { "http" } else { "grpc" }.to_string()),
        ..ServicePort::default()
    }
}

/// The Service workstations connect to (ready pods only).
pub fn service(cluster: &KeyShardCluster, names: &Names) -> Service {
    let spec = cluster.spec.service.clone().unwrap_or_default();
    let mut meta = owned_meta(cluster, names, names.service());
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(
                spec.r#type
                    .unwrap_or(ServiceType::ClusterIP)
                    .as_str()
                    .to_string(),
            ),
            selector: Some(selector_labels(names)),
            ports: Some(vec![port(
                "grpc",
                spec.port.unwrap_or(ports::GRPC),
                ports::GRPC,
            )]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service that gives each pod a DNS name (also while not ready, so that
/// instances are reachable by the operator before they serve).
pub fn headless_service(cluster: &KeyShardCluster, names: &Names) -> Service {
    Service {
        metadata: owned_meta(cluster, names, names.headless_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names)),
            ports: Some(vec![
                port("grpc", ports::GRPC, ports::GRPC),
                port("admin", ports::ADMIN, ports::ADMIN),
                port("metrics", ports::METRICS, ports::METRICS),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
