//! What the operator refuses to act on, before it touches a cluster's workload: an
//! image outside the allowlist (`--allowed-images`) and Secret names that could reach
//! outside the cluster's namespace. A refused cluster gets `Valid=False` (reason
//! [`IMAGE_NOT_ALLOWED`] or [`SECRET_REF_INVALID`]), phase Failed and a Warning event;
//! its StatefulSet, Services and Secrets stay as they were.
//!
//! Also the labels of the guarded Secrets (master key, backup key, CA): the admission
//! policy `kss-guarded-secrets` (bundle and chart) matches [`GUARDED_LABEL`].

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use tracing::{instrument, warn};

use crate::crd::cluster::Phase;
use crate::crd::condition::{self, Condition, types};
use crate::crd::{KeyShardCluster, KeyShardClusterStatus};
use crate::desired::FIELD_MANAGER;
use crate::error::Result;
use crate::reconcile::Context;

/// Label on the Secrets the admission policy guards (master key, backup key, CA); its
/// value says which one.
pub const GUARDED_LABEL: &str = "kss.dev/guarded";
/// `Valid=False` reason: `spec.image` is not in the operator's allowlist.
pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
/// `Valid=False` reason: a Secret named in the spec is not a plain Secret name.
pub const SECRET_REF_INVALID: &str = "SecretRefInvalid";
/// `Valid=True` reason once nothing is refused.
pub const ADMITTED: &str = "SpecAdmitted";

/// Images a KeyShardCluster may name in `spec.image`.
///
/// Each entry is one of: `*` (any image); a repository path ending in `/` (any image
/// under it: `registry.example/team/`); a repository (`ghcr.io/kss-project/kss`: that
/// repository at any tag or digest, not `ghcr.io/kss-project/kss-other`); or a full
/// reference with a tag or digest (exactly that image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAllowlist {
    entries: Vec<String>,
}

impl ImageAllowlist {
    /// The allowlist of `entries` (empty entries dropped); with none, the repository of
    /// `default_image` only.
    pub fn new(entries: &[String], default_image: &str) -> Self {
        let entries: Vec<String> = entries
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            ImageAllowlist {
                entries: vec![repository(default_image).to_string()],
            }
        } else {
            ImageAllowlist { entries }
        }
    }

    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether `image` is allowed.
    pub fn allows(&self, image: &str) -> bool {
        let repo = repository(image);
        self.entries.iter().any(|entry| {
            if entry == "*" {
                true
            } else if entry.ends_with('/') {
                repo.starts_with(entry.as_str())
            } else if repository(entry) != entry {
                // A full reference: exactly that image.
                entry == image
            } else {
                entry == repo
            }
        })
    }
}

/// The repository of an image reference: without `@digest` and without `:tag` (a `:`
/// after the last `/` is a tag; one before it is a registry port).
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Whether `name` is a Secret name (a DNS-1123 subdomain): nothing that could name a
/// Secret of another namespace or another path of the API.
pub fn is_secret_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// The CRD schema's pattern for Secret names (the same rule as [`is_secret_name`]).
pub const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Every Secret the spec names, with the field naming it.
pub fn secret_refs(cluster: &KeyShardCluster) -> Vec<(&'static str, &str)> {
    let spec = &cluster.spec;
    let mut refs = Vec::new();
    if let Some(db) = &spec.database {
        refs.push(("spec.database.secretRef.name", db.secret_ref.name.as_str()));
        if let Some(ca) = &db.ca_secret_ref {
            refs.push(("spec.database.caSecretRef.name", ca.name.as_str()));
        }
    }
    if let Some(tls) = &spec.tls {
        refs.push(("spec.tls.secretName", tls.secret_name.as_str()));
    }
    if let Some(name) = &spec.backup.secret_name {
        refs.push(("spec.backup.secretName", name.as_str()));
    }
    if let Some(recovery) = &spec.recovery {
        refs.push((
            "spec.recovery.approvalsSecretName",
            recovery.approvals_secret_name.as_str(),
        ));
    }
    refs
}

/// What the operator refuses in `cluster`: `(reason, message)`, or `None`.
pub fn refusal(cluster: &KeyShardCluster, images: &ImageAllowlist) -> Option<(String, String)> {
    if let Some(image) = cluster.spec.image.as_deref()
        && !images.allows(image)
    {
        return Some((
            IMAGE_NOT_ALLOWED.to_string(),
            format!(
                "spec.image {image} is not allowed by the operator (--allowed-images: {}); \
                 nothing was deployed or changed",
                images.entries().join(",")
            ),
        ));
    }
    for (field, name) in secret_refs(cluster) {
        if !is_secret_name(name) {
            return Some((
                SECRET_REF_INVALID.to_string(),
                format!(
                    "{field} {name:?} is not a Secret name in the cluster's namespace \
                     (lowercase letters, digits, '-' and '.'); nothing was deployed or changed"
                ),
            ));
        }
    }
    None
}

/// `previous` conditions with a refusal of ours replaced by `Valid=True`, for a
/// reconcile that refused nothing (so that a fixed spec clears the condition).
pub fn admitted(
    mut conditions: Vec<Condition>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let refused = condition::find(&conditions, types::VALID)
        .is_some_and(|c| c.reason == IMAGE_NOT_ALLOWED || c.reason == SECRET_REF_INVALID);
    if refused {
        condition::set(
            &mut conditions,
            condition::new(
                types::VALID,
                true,
                ADMITTED,
                "the spec passes the operator's checks",
                generation,
                now,
            ),
        );
    }
    conditions
}

/// `previous` conditions with the refusal set: `Valid=False` and `Progressing=False`.
pub fn refused(
    mut conditions: Vec<Condition>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    for type_ in [types::VALID, types::PROGRESSING] {
        condition::set(
            &mut conditions,
            condition::new(type_, false, reason, message, generation, now),
        );
    }
    conditions
}

/// Records a refusal: `Valid=False` and `Progressing=False` with `reason`, phase Failed,
/// a Warning event; requeued in a minute (a spec change reconciles at once).
#[instrument(skip_all, fields(reason = %refusal.0))]
pub async fn refuse(
    ctx: &Context,
    cluster: &KeyShardCluster,
    api: &Api<KeyShardCluster>,
    previous: &KeyShardClusterStatus,
    refusal: (String, String),
    now: &str,
) -> Result<Action> {
    let (reason, message) = refusal;
    warn!(%message, "refusing the KeyShardCluster");
    let generation = cluster.metadata.generation;
    let mut status = previous.clone();
    status.conditions = refused(status.conditions, &reason, &message, generation, now);
    status.phase = Some(Phase::Failed);
    status.observed_generation = generation;
    if status != *previous {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            note: Some(message),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
            warn!(error = %e, "could not record an event");
        }
        crate::reconcile::apply_status(api, cluster, None, FIELD_MANAGER, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KeyShardClusterSpec;

    fn list(entries: &[&str]) -> ImageAllowlist {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        ImageAllowlist::new(&entries, "ghcr.io/kss-project/kss:1.0.0")
    }

    #[test]
    fn repository_strips_tag_and_digest_not_the_port() {
        assert_eq!(
            repository("ghcr.io/kss-project/kss:1.2"),
            "ghcr.io/kss-project/kss"
        );
        assert_eq!(repository("reg:5000/kss@sha256:ab"), "reg:5000/kss");
        assert_eq!(repository("reg:5000/kss:v1@sha256:ab"), "reg:5000/kss");
        assert_eq!(repository("reg:5000/kss"), "reg:5000/kss");
        assert_eq!(repository("kss"), "kss");
    }

    #[test]
    fn the_default_allows_the_default_repository_only() {
        let l = list(&[]);
        assert_eq!(l.entries(), ["ghcr.io/kss-project/kss"]);
        assert!(l.allows("ghcr.io/kss-project/kss:9.9.9"));
        assert!(l.allows("ghcr.io/kss-project/kss@sha256:00"));
        assert!(l.allows("ghcr.io/kss-project/kss"));
        assert!(!l.allows("ghcr.io/kss-project/kss-evil:1"));
        assert!(!l.allows("ghcr.io/kss-project/kssx"));
        assert!(!l.allows("evil.example/ghcr.io/kss-project/kss:1"));
        assert!(!l.allows("docker.io/library/busybox"));
    }

    #[test]
    fn entries_are_repositories_prefixes_exact_images_or_any() {
        let l = list(&[
            "registry.example/team/",
            " reg:5000/kss ",
            "other/kss:1.0",
            "",
        ]);
        assert_eq!(l.entries().len(), 3);
        assert!(l.allows("registry.example/team/kss:2"));
        assert!(l.allows("registry.example/team/sub/kss@sha256:00"));
        assert!(!l.allows("registry.example/teamx/kss:2"));
        assert!(l.allows("reg:5000/kss:7"));
        assert!(!l.allows("reg:5000/kss2:7"));
        assert!(l.allows("other/kss:1.0"));
        assert!(!l.allows("other/kss:1.1"));
        assert!(
            !l.allows("ghcr.io/kss-project/kss:1.0.0"),
            "the default is replaced"
        );
        assert!(list(&["*"]).allows("anything/at:all"));
    }

    #[test]
    fn secret_names_cannot_leave_the_namespace() {
        for ok in ["db", "kss-demo-backup-key", "a.b-c", "x1"] {
            assert!(is_secret_name(ok), "{ok}");
        }
        for bad in [
            "",
            "other-ns/secret",
            "../../kube-system/secrets/x",
            "Db",
            "-db",
            "db-",
            "a..b",
            "db?watch=1",
            "db%2Fx",
            &"a".repeat(254),
        ] {
            assert!(!is_secret_name(bad), "{bad}");
        }
    }

    fn cluster(mut spec: serde_json::Value) -> KeyShardCluster {
        for (k, v) in [
            ("mode", serde_json::json!("Standalone")),
            ("replicas", serde_json::json!(1)),
            ("backup", serde_json::json!({})),
        ] {
            if spec.get(k).is_none() {
                spec[k] = v;
            }
        }
        let spec: KeyShardClusterSpec = serde_json::from_value(spec).expect("spec");
        KeyShardCluster::new("kss-demo", spec)
    }

    #[test]
    fn refusal_names_the_image_or_the_field() {
        let images = list(&[]);
        let ok = cluster(serde_json::json!({
            "mode": "Cluster", "replicas": 3,
            "database": {"secretRef": {"name": "db"}, "caSecretRef": {"name": "db-ca"}},
            "tls": {"secretName": "tls"},
            "backup": {"secretName": "bk", "holders": [], "ignoreSecurityChecks": true},
            "recovery": {"id": "r1", "approvalsSecretName": "approvals"},
            "image": "ghcr.io/kss-project/kss:2.0.0",
        }));
        assert_eq!(refusal(&ok, &images), None);
        assert_eq!(secret_refs(&ok).len(), 5);

        let image = cluster(serde_json::json!({"image": "docker.io/evil/kss:1"}));
        let (reason, message) = refusal(&image, &images).expect("refused");
        assert_eq!(reason, IMAGE_NOT_ALLOWED);
        assert!(
            message.contains("docker.io/evil/kss:1") && message.contains("ghcr.io/kss-project/kss")
        );

        for (field, spec) in [
            (
                "spec.database.secretRef.name",
                serde_json::json!({"mode": "Cluster", "replicas": 3, "database": {"secretRef": {"name": "kube-system/db"}}}),
            ),
            (
                "spec.database.caSecretRef.name",
                serde_json::json!({"mode": "Cluster", "replicas": 3, "database": {"secretRef": {"name": "db"}, "caSecretRef": {"name": "../x"}}}),
            ),
            (
                "spec.tls.secretName",
                serde_json::json!({"tls": {"secretName": "a/b"}}),
            ),
            (
                "spec.backup.secretName",
                serde_json::json!({"backup": {"secretName": "A"}}),
            ),
            (
                "spec.recovery.approvalsSecretName",
                serde_json::json!({"recovery": {"id": "r1", "approvalsSecretName": "x/y"}}),
            ),
        ] {
            let (reason, message) = refusal(&cluster(spec), &images).expect(field);
            assert_eq!(reason, SECRET_REF_INVALID);
            assert!(message.starts_with(field), "{message}");
        }
    }

    #[test]
    fn every_secret_name_in_the_crd_schema_has_the_pattern() {
        let crd =
            serde_json::to_value(<KeyShardCluster as kube::CustomResourceExt>::crd()).expect("crd");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for path in [
            &spec["database"]["properties"]["secretRef"]["properties"]["name"],
            &spec["database"]["properties"]["caSecretRef"]["properties"]["name"],
            &spec["tls"]["properties"]["secretName"],
            &spec["backup"]["properties"]["secretName"],
            &spec["recovery"]["properties"]["approvalsSecretName"],
        ] {
            assert_eq!(path["pattern"], SECRET_NAME_PATTERN, "{path}");
        }
    }

    #[test]
    fn retained_secrets_are_guarded_and_not_tracked_by_gitops() {
        let mut c = cluster(serde_json::json!({}));
        c.metadata.namespace = Some("ns".into());
        // Labels a GitOps tool puts on the KeyShardCluster are not copied.
        c.metadata.labels = Some(
            [
                ("app.kubernetes.io/instance", "kss-demo"),
                ("kustomize.toolkit.fluxcd.io/name", "apps"),
                ("argocd.argoproj.io/instance", "kss-demo"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let names = crate::desired::Names::of(&c).expect("names");
        let meta = crate::desired::retained_meta(&names, names.master_key_secret());
        let labels = meta.labels.expect("labels");
        assert_eq!(labels.get(GUARDED_LABEL).map(String::as_str), Some("true"));
        assert_eq!(
            labels.get("kss.dev/cluster").map(String::as_str),
            Some("kss-demo")
        );
        for key in labels.keys() {
            assert!(
                key != "app.kubernetes.io/instance"
                    && !key.starts_with("kustomize.toolkit.fluxcd.io/")
                    && !key.starts_with("argocd.argoproj.io/"),
                "{key}"
            );
        }
        assert!(meta.owner_references.is_none() && meta.annotations.is_none());
        // Owned (deleted with the cluster) objects keep the selector label.
        let owned = crate::desired::owned_meta(&c, &names, "x".into());
        assert!(
            owned
                .labels
                .expect("labels")
                .contains_key("app.kubernetes.io/instance")
        );
    }

    #[test]
    fn a_fixed_spec_clears_the_refusal_only() {
        let c = refused(Vec::new(), IMAGE_NOT_ALLOWED, "m", Some(1), "t1");
        assert!(!condition::is_true(&c, types::VALID));
        let c = admitted(c, Some(2), "t2");
        assert!(condition::is_true(&c, types::VALID));
        // Another Valid=False (not ours) is left alone.
        let other = vec![condition::new(types::VALID, false, "Other", "", None, "t")];
        assert!(!condition::is_true(
            &admitted(other, None, "t"),
            types::VALID
        ));
    }
}
