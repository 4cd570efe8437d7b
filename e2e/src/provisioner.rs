//! A tiny volume provisioner: nothing else provisions volumes on the e2e control plane,
//! and kube-scheduler does not schedule a pod whose claim is unbound. For every Pending
//! PersistentVolumeClaim of the namespace (all of them, whatever their labels) it creates
//! a `hostPath` PersistentVolume pre-bound to the claim (`claimRef`); the PV controller
//! of kube-controller-manager then binds them. A PV it made is deleted once its claim is
//! gone; the host directory stays (the test's state dir is thrown away as a whole).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Label on every PersistentVolume the provisioner creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kss-e2e";

/// The uid and gid of the kss images' user, owner of every provisioned directory.
pub const VOLUME_OWNER: u32 = 65532;

/// The name of the PersistentVolume provisioned for a claim (by its UID).
pub fn volume_name(claim_uid: &str) -> String {
    format!("kss-e2e-{claim_uid}")
}

/// The host directory of that volume.
pub fn volume_dir(state_dir: &Path, claim_uid: &str) -> PathBuf {
    state_dir.join("pv").join(volume_name(claim_uid))
}

/// Watches the namespace's claims until the stream ends (never, in practice).
pub async fn run(client: Client, namespace: String, state_dir: PathBuf) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let stream = watcher::watcher(claims, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let result = match event {
            Ok(Event::Apply(pvc) | Event::InitApply(pvc)) => {
                provision(&client, &state_dir, &pvc).await
            }
            Ok(Event::Delete(pvc)) => release(&client, &pvc).await,
            Ok(Event::Init | Event::InitDone) => Ok(()),
            Err(e) => {
                tracing::warn!(namespace = %namespace, error = %e, "claim watch error (retrying)");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(namespace = %namespace, error = %e, "provisioner");
        }
    }
}

async fn provision(client: &Client, state_dir: &Path, pvc: &PersistentVolumeClaim) -> Result<()> {
    let (Some(name), Some(namespace), Some(uid)) = (
        pvc.metadata.name.as_deref(),
        pvc.metadata.namespace.as_deref(),
        pvc.metadata.uid.as_deref(),
    ) else {
        return Ok(());
    };
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || phase.is_some_and(|p| p != "Pending")
    {
        return Ok(());
    }
    let dir = volume_dir(state_dir, uid);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The kubelet applies no fsGroup to hostPath volumes: the directory belongs to the
    // images' user, as a storage class's would be writable by the pod's fsGroup.
    std::os::unix::fs::chown(&dir, Some(VOLUME_OWNER), Some(VOLUME_OWNER))
        .map_err(|e| Error::io(&dir, e))?;
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".to_string()));
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()]);
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(uid)),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                "kss-e2e/claim".to_string(),
                format!("{namespace}/{name}"),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), storage)])),
            access_modes: Some(access_modes),
            host_path: Some(HostPathVolumeSource {
                path: dir.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
                uid: Some(uid.to_string()),
                ..ObjectReference::default()
            }),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            persistent_volume_reclaim_policy: Some("Retain".to_string()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    match volumes.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(namespace, claim = name, volume = %volume_name(uid), dir = %dir.display(),
                "provisioned a hostPath volume");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn release(client: &Client, pvc: &PersistentVolumeClaim) -> Result<()> {
    let Some(uid) = pvc.metadata.uid.as_deref() else {
        return Ok(());
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let name = volume_name(uid);
    match volumes.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(volume = %name, "claim deleted: volume removed (its directory is kept)");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
