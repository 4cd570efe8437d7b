//! The StatefulSet of keyserver instances.
//!
//! Every instance gets its configuration from the pod spec alone: arguments, environment
//! and mounted Secrets (master key, TLS, admin TLS, the transient bootstrap identity, and
//! the database's CA certificate when one is named).
//! Listeners bind the pod's IP (`$(POD_IP)`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, GRPCAction,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Names, labels, owned_meta, ports, selector_labels};
use crate::crd::KeyShardCluster;
use crate::crd::cluster::{CaSecretKeyRef, DatabaseSpec, SecretKeyRef};

/// The keyserver image this operator release deploys by default (what the Dockerfile
/// builds and tags).
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kss-project/kss:", env!("CARGO_PKG_VERSION"));

/// The unprivileged user of the keyserver image.
const USER: i64 = 65532;

/// Mount points inside the container.
mod paths {
    pub const DATA: &str = "/var/lib/kss";
    pub const MASTER_KEY: &str = "/etc/kss/master-key";
    pub const BOOTSTRAP: &str = "/etc/kss/bootstrap";
    pub const TLS: &str = "/etc/kss/tls";
    pub const ADMIN_TLS: &str = "/etc/kss/admin-tls";
    pub const DB_CA: &str = "/etc/kss/db-ca";
    pub const DB_URI: &str = "/etc/kss/db-uri";
    /// The file, in [`DB_URI`], that holds the database's address.
    pub const DB_URI_FILE: &str = "uri";
}

/// The readiness probe's service: SERVING only while the instance can decide requests.
pub const READY_SERVICE: &str = "kss.v1.KeyServer";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_volume(name: &str, secret: String, optional: bool) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o400),
            optional: optional.then_some(true),
            items: None,
        }),
        ..Volume::default()
    }
}

/// A volume of one key of a Secret, as the file `path`. A whole volume, not a `subPath`,
/// so that a renewed value reaches the running pods.
fn one_key_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    let mut volume = secret_volume(name, secret.to_string(), false);
    if let Some(source) = volume.secret.as_mut() {
        source.items = Some(vec![KeyToPath {
            key: key.to_string(),
            path: path.to_string(),
            mode: None,
        }]);
    }
    volume
}

/// The database's CA certificate: only its key of the Secret (which may also hold the
/// database address), as a file of the same name.
fn db_ca_volume(ca: &CaSecretKeyRef) -> Volume {
    one_key_volume("db-ca", &ca.name, &ca.key, &ca.key)
}

/// The database's address: only its key of the Secret (which may also hold the CA), as
/// the file `uri`. A file and not an environment variable, so that the password is not in
/// the process's environment (`/proc/<pid>/environ`, crash reports, child processes).
fn db_uri_volume(uri: &SecretKeyRef) -> Volume {
    one_key_volume("db-uri", &uri.name, &uri.key, paths::DB_URI_FILE)
}

/// The shared database, in mode Cluster only (a standalone keyserver has no MySQL).
fn shared_database(cluster: &KeyShardCluster) -> Option<&DatabaseSpec> {
    cluster
        .spec
        .database
        .as_ref()
        .filter(|_| cluster.is_cluster())
}

/// The database's address, in mode Cluster only.
fn db_uri(cluster: &KeyShardCluster) -> Option<&SecretKeyRef> {
    shared_database(cluster).map(|db| &db.secret_ref)
}

/// The database's CA, in mode Cluster only.
fn db_ca(cluster: &KeyShardCluster) -> Option<&CaSecretKeyRef> {
    shared_database(cluster).and_then(|db| db.ca_secret_ref.as_ref())
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(!path.starts_with(paths::DATA)),
        ..VolumeMount::default()
    }
}

fn grpc_probe(service: &str, period: i32, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: ports::HEALTH,
            service: Some(service.to_string()),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("128Mi".to_string())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".to_string()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn container(cluster: &KeyShardCluster, names: &Names, default_image: &str) -> Container {
    let spec = &cluster.spec;
    let mut args = vec![
        "serve".to_string(),
        format!("--listen=$(POD_IP):{}", ports::GRPC),
        format!("--health-listen=$(POD_IP):{}", ports::HEALTH),
        format!("--admin-listen=$(POD_IP):{}", ports::ADMIN),
        format!("--metrics-listen=$(POD_IP):{}", ports::METRICS),
        format!("--tls-cert={}/tls.crt", paths::TLS),
        format!("--tls-key={}/tls.key", paths::TLS),
        format!("--admin-tls-cert={}/tls.crt", paths::ADMIN_TLS),
        format!("--admin-tls-key={}/tls.key", paths::ADMIN_TLS),
        format!("--admin-client-ca={}/ca.crt", paths::ADMIN_TLS),
        "--log-format=json".to_string(),
    ];
    if let Some(ca) = db_ca(cluster) {
        args.push(format!("--db-ca-file={}/{}", paths::DB_CA, ca.key));
    }
    if let Some(enrollment) = &spec.enrollment {
        if enrollment.require_token {
            args.push("--require-enrollment-token".to_string());
        }
        if let Some(n) = enrollment.max_per_minute {
            args.push(format!("--max-onboard-per-minute={n}"));
        }
    }
    let mut volume_mounts = vec![
        mount("data", paths::DATA),
        mount("master-key", paths::MASTER_KEY),
        mount("bootstrap", paths::BOOTSTRAP),
        mount("tls", paths::TLS),
        mount("admin-tls", paths::ADMIN_TLS),
    ];
    if db_ca(cluster).is_some() {
        volume_mounts.push(mount("db-ca", paths::DB_CA));
    }
    if db_uri(cluster).is_some() {
        volume_mounts.push(mount("db-uri", paths::DB_URI));
    }
    let mut env_vars = vec![
        field_env("POD_IP", "status.podIP"),
        field_env("KSS_INSTANCE_NAME", "metadata.name"),
        env(
            "KSS_ADVERTISE_ENDPOINT",
            format!(
                "$(KSS_INSTANCE_NAME).{}.{}.svc:{}",
                names.headless_service(),
                names.namespace,
                ports::GRPC
            ),
        ),
        env("KSS_DATA_DIR", paths::DATA),
        env(
            "KSS_MASTER_KEY_FILE",
            format!("{}/master.key", paths::MASTER_KEY),
        ),
        env(
            "KSS_BOOTSTRAP_IDENTITY",
            format!("{}/identity.json", paths::BOOTSTRAP),
        ),
        env(
            "KSS_TIME_ZONE",
            spec.time_zone.clone().unwrap_or_else(|| "UTC".to_string()),
        ),
    ];
    // The pinned keyserver: the instance refuses a database of any other.
    if let Some(id) = &spec.bootstrap.keyserver_id {
        env_vars.push(env("KSS_KEYSERVER_ID", id.clone()));
    }
    if db_uri(cluster).is_some() {
        env_vars.push(env(
            "KSS_DB_URI_FILE",
            format!("{}/{}", paths::DB_URI, paths::DB_URI_FILE),
        ));
    }
    Container {
        name: "kss".to_string(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| default_image.to_string()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(args),
        env: Some(env_vars),
        ports: Some(vec![
            container_port("grpc", ports::GRPC),
            container_port("admin", ports::ADMIN),
            container_port("health", ports::HEALTH),
            container_port("metrics", ports::METRICS),
        ]),
        volume_mounts: Some(volume_mounts),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        startup_probe: Some(grpc_probe("", 2, 30)),
        liveness_probe: Some(grpc_probe("", 10, 3)),
        readiness_probe: Some(grpc_probe(READY_SERVICE, 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(USER),
            run_as_group: Some(USER),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// The StatefulSet: `replicas` instances; standalone keeps its SQLite database on a
/// claim per pod (retained when the StatefulSet is deleted or scaled down: a keyserver's
/// data is never deleted automatically), cluster instances keep only scratch files.
/// The pods' topology spread: as given in `spec.scheduling`; else, in mode Cluster and
/// without an affinity of the user's, spread over nodes where possible (`ScheduleAnyway`:
/// a cluster with fewer nodes than instances still runs them all).
fn spread(cluster: &KeyShardCluster, names: &Names) -> Option<Vec<TopologySpreadConstraint>> {
    let scheduling = cluster.spec.scheduling.as_ref();
    if let Some(given) = scheduling.map(|s| &s.topology_spread_constraints)
        && !given.is_empty()
    {
        return Some(given.clone());
    }
    if !cluster.is_cluster() || scheduling.is_some_and(|s| s.affinity.is_some()) {
        return None;
    }
    Some(vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".to_string(),
        when_unsatisfiable: "ScheduleAnyway".to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(names)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }])
}

pub fn statefulset(cluster: &KeyShardCluster, names: &Names, default_image: &str) -> StatefulSet {
    let spec = &cluster.spec;
    let scheduling = spec.scheduling.as_ref();
    let mut volumes = vec![
        secret_volume("master-key", names.master_key_secret(), false),
        secret_volume("bootstrap", names.bootstrap_secret(), true),
        secret_volume("tls", names.tls_secret(cluster), false),
        secret_volume("admin-tls", names.admin_tls_secret(), false),
    ];
    volumes.extend(db_ca(cluster).map(db_ca_volume));
    volumes.extend(db_uri(cluster).map(db_uri_volume));
    let claims = if cluster.is_cluster() {
        volumes.push(Volume {
            name: "data".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        None
    } else {
        let storage = spec.storage.clone();
        let size = storage
            .as_ref()
            .and_then(|s| s.size.clone())
            .unwrap_or_else(|| "1Gi".to_string());
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_string()),
                labels: Some(labels(names)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                storage_class_name: storage.and_then(|s| s.storage_class_name),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }])
    };
    StatefulSet {
        metadata: owned_meta(cluster, names, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless_service()),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(names)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(cluster, names, default_image)],
                    node_selector: scheduling
                        .as_ref()
                        .map(|s| s.node_selector.clone())
                        .filter(|n| !n.is_empty()),
                    tolerations: scheduling
                        .as_ref()
                        .map(|s| s.tolerations.clone())
                        .filter(|t| !t.is_empty()),
                    affinity: scheduling.as_ref().and_then(|s| s.affinity.clone()),
                    topology_spread_constraints: spread(cluster, names),
                    priority_class_name: scheduling
                        .as_ref()
                        .and_then(|s| s.priority_class_name.clone()),
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(USER),
                        run_as_group: Some(USER),
                        fs_group: Some(USER),
                        fs_group_change_policy: Some("OnRootMismatch".to_string()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::cluster::Mode;
    use crate::desired::fixtures::{cluster, names};

    #[test]
    fn cluster_mode_shares_the_database_and_keeps_no_claim() {
        let c = cluster(
            "mode: Cluster\nreplicas: 3\ndatabase: {secretRef: {name: db}}\nbackup: {ignoreSecurityChecks: true}\n",
        );
        assert_eq!(c.spec.mode, Mode::Cluster);
        let sts = statefulset(&c, &names(), DEFAULT_IMAGE);
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.expect("pod");
        let env = pod.containers[0].env.clone().expect("env");
        // The address is a file of the Secret's one key, not an environment variable.
        assert!(env.iter().all(|e| e.name != "KSS_DB_URI"));
        let file = env
            .iter()
            .find(|e| e.name == "KSS_DB_URI_FILE")
            .expect("db env");
        assert_eq!(file.value.as_deref(), Some("/etc/kss/db-uri/uri"));
        let volume = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == "db-uri"))
            .and_then(|v| v.secret.clone())
            .expect("db-uri volume");
        assert_eq!(volume.secret_name.as_deref(), Some("db"));
        let items = volume.items.expect("items");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("uri", "uri")
        );
        assert_eq!(volume.default_mode, Some(0o400));
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "db-uri" && m.mount_path == "/etc/kss/db-uri")
        );
        assert_eq!(
            sts.metadata.owner_references.expect("owner")[0].controller,
            Some(true)
        );
    }

    fn pod_of(yaml: &str) -> PodSpec {
        let sts = statefulset(&cluster(yaml), &names(), DEFAULT_IMAGE);
        sts.spec.expect("spec").template.spec.expect("pod")
    }

    const CLUSTER: &str = "mode: Cluster\nreplicas: 3\ndatabase: {secretRef: {name: db}}\nbackup: {ignoreSecurityChecks: true}\n";

    #[test]
    fn cluster_instances_spread_over_nodes_by_default() {
        let pod = pod_of(CLUSTER);
        let spread = pod.topology_spread_constraints.expect("spread");
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(spread[0].max_skew, 1);
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(selector_labels(&names()))
        );
        assert!(pod.affinity.is_none() && pod.node_selector.is_none());
        // One standalone instance has nothing to spread.
        let standalone = pod_of("mode: Standalone\nbackup: {ignoreSecurityChecks: true}\n");
        assert!(standalone.topology_spread_constraints.is_none());
    }

    #[test]
    fn scheduling_is_copied_into_the_pods_and_replaces_the_default_spread() {
        let pod = pod_of(&format!(
            "{CLUSTER}scheduling:\n  nodeSelector: {{pool: keys}}\n  tolerations: [{{key: dedicated, operator: Equal, value: kss, effect: NoSchedule}}]\n  priorityClassName: critical\n  topologySpreadConstraints: [{{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}}]\n"
        ));
        assert_eq!(
            pod.node_selector,
            Some(BTreeMap::from([("pool".to_string(), "keys".to_string())]))
        );
        let tolerations = pod.tolerations.expect("tolerations");
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
        let spread = pod.topology_spread_constraints.expect("spread");
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");

        // An affinity of the user's replaces the default spread too.
        let pod = pod_of(&format!(
            "{CLUSTER}scheduling:\n  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        - topologyKey: kubernetes.io/hostname\n          labelSelector: {{matchLabels: {{app: x}}}}\n"
        ));
        assert!(pod.topology_spread_constraints.is_none());
        let anti = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .expect("anti-affinity");
        assert_eq!(anti[0].topology_key, "kubernetes.io/hostname");
    }

    #[test]
    fn pods_run_unprivileged_with_a_read_only_root() {
        let c = cluster("mode: Standalone\nbackup: {ignoreSecurityChecks: true}\n");
        let sts = statefulset(&c, &names(), "img:1");
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.volume_claim_templates.expect("claims").len(), 1);
        let pod = spec.template.spec.expect("pod");
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("img:1"));
        let sc = container
            .security_context
            .clone()
            .expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        // No secret value is inlined into the pod spec: secrets come from volumes.
        let env = container.env.clone().expect("env");
        assert!(env.iter().all(|e| e.name != "KSS_DB_URI"));
        let ready = container.readiness_probe.clone().expect("probe");
        assert_eq!(
            ready.grpc.expect("grpc").service.as_deref(),
            Some(READY_SERVICE)
        );
    }

    fn args_of(pod: &PodSpec) -> Vec<String> {
        pod.containers[0].args.clone().unwrap_or_default()
    }

    const DB_CA: &str = "mode: Cluster\nreplicas: 3\ndatabase:\n  secretRef: {name: db}\n  caSecretRef: {name: db, key: mysql-ca.pem}\nbackup: {ignoreSecurityChecks: true}\n";

    #[test]
    fn the_database_ca_is_one_read_only_key_of_its_secret() {
        let pod = pod_of(DB_CA);
        let args = args_of(&pod);
        assert!(
            args.contains(&"--db-ca-file=/etc/kss/db-ca/mysql-ca.pem".to_string()),
            "{args:?}"
        );
        let volume = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == "db-ca"))
            .and_then(|v| v.secret.clone())
            .expect("db-ca volume");
        assert_eq!(volume.secret_name.as_deref(), Some("db"));
        assert_eq!(volume.optional, None, "the pods need it");
        // Only the CA's key: the Secret may also hold the database address.
        let items = volume.items.expect("items");
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("mysql-ca.pem", "mysql-ca.pem")
        );
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        let mount = mounts
            .iter()
            .find(|m| m.name == "db-ca")
            .expect("db-ca mount");
        assert_eq!(mount.mount_path, "/etc/kss/db-ca");
        assert_eq!(mount.read_only, Some(true));
        // A subPath mount would never see a renewed certificate.
        assert_eq!(mount.sub_path, None);
        assert_eq!(mount.sub_path_expr, None);
    }

    #[test]
    fn without_a_database_ca_nothing_is_mounted_or_passed() {
        for yaml in [
            CLUSTER,
            // A standalone keyserver has no MySQL: a database given anyway is ignored.
            "mode: Standalone\ndatabase:\n  secretRef: {name: db}\n  caSecretRef: {name: db}\nbackup: {ignoreSecurityChecks: true}\n",
        ] {
            let pod = pod_of(yaml);
            assert!(
                !args_of(&pod).iter().any(|a| a.starts_with("--db-ca-file")),
                "{yaml}"
            );
            assert!(
                pod.volumes
                    .unwrap_or_default()
                    .iter()
                    .all(|v| v.name != "db-ca")
            );
            assert!(
                pod.containers[0]
                    .volume_mounts
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .all(|m| m.name != "db-ca")
            );
        }
    }

    #[test]
    fn enrollment_becomes_the_keyserver_flags() {
        let onboarding = |args: &[String]| -> Vec<String> {
            args.iter()
                .filter(|a| {
                    a.starts_with("--require-enrollment-token")
                        || a.starts_with("--max-onboard-per-minute")
                })
                .cloned()
                .collect()
        };
        // Absent: the keyserver's defaults.
        assert!(onboarding(&args_of(&pod_of(CLUSTER))).is_empty());
        assert!(onboarding(&args_of(&pod_of(&format!("{CLUSTER}enrollment: {{}}\n")))).is_empty());
        assert_eq!(
            onboarding(&args_of(&pod_of(&format!(
                "{CLUSTER}enrollment: {{requireToken: true, maxPerMinute: 10}}\n"
            )))),
            ["--require-enrollment-token", "--max-onboard-per-minute=10"]
        );
        // 0: no onboarding at all; a token not required is no flag.
        assert_eq!(
            onboarding(&args_of(&pod_of(&format!(
                "{CLUSTER}enrollment: {{requireToken: false, maxPerMinute: 0}}\n"
            )))),
            ["--max-onboard-per-minute=0"]
        );
        // Standalone keyservers onboard too.
        assert_eq!(
            onboarding(&args_of(&pod_of(
                "mode: Standalone\nenrollment: {requireToken: true}\nbackup: {ignoreSecurityChecks: true}\n"
            ))),
            ["--require-enrollment-token"]
        );
    }
}
