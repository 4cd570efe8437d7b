//! Secrets the operator creates: written once and never overwritten, because each holds
//! key material that something else already depends on (a sealed database, a backup
//! held by administrators, certificates clients trust).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::error::{Error, Result};

/// A Secret of `type_` with `data` (string values).
pub fn build(meta: ObjectMeta, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta,
        type_: Some(type_.to_string()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

/// The UTF-8 value of `key`, or a clear error naming the Secret and key (never the value).
pub fn text(secret: &Secret, key: &str) -> Result<String> {
    let name = secret.name_any();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Error::Secret {
            name: name.clone(),
            problem: format!("has no key {key:?}"),
        })?;
    String::from_utf8(bytes.0.clone()).map_err(|_| Error::Secret {
        name,
        problem: format!("key {key:?} is not UTF-8 text"),
    })
}

/// Every key and text value of a Secret.
pub fn all_text(secret: &Secret) -> Result<Vec<(String, String)>> {
    let keys: Vec<String> = secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    keys.into_iter()
        .map(|k| text(secret, &k).map(|v| (k, v)))
        .collect()
}

/// Reads a Secret; `None` if it does not exist.
pub async fn get(api: &Api<Secret>, name: &str) -> Result<Option<Secret>> {
    Ok(api.get_opt(name).await?)
}

/// Creates `secret` unless one of that name exists; returns the Secret in force and
/// whether it was created now.
pub async fn create_if_missing(api: &Api<Secret>, secret: Secret) -> Result<(Secret, bool)> {
    let name = secret.name_any();
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok((existing, false));
    }
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            info!(secret = %name, "created Secret");
            Ok((created, true))
        }
        // Created concurrently (another reconcile or operator replica): use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(&name).await?;
            Ok((existing, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes a Secret if it exists.
pub async fn delete(api: &Api<Secret>, name: &str) -> Result<bool> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets or removes the owner reference of a retained Secret (master key, backup key, CA;
/// none while `retainOnDelete`), and gives it the guarded labels: the admission policy's
/// label, and not the GitOps tracking label (a Secret created by an older operator).
pub async fn set_owner(
    api: &Api<Secret>,
    secret: &Secret,
    owner: Option<OwnerReference>,
) -> Result<()> {
    let current = secret.metadata.owner_references.clone().unwrap_or_default();
    let wanted: Vec<OwnerReference> = owner.into_iter().collect();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let guarded = labels.get(crate::guards::GUARDED_LABEL).map(String::as_str) == Some("true");
    let tracked = labels.contains_key(crate::desired::RETAINED_WITHOUT);
    if current == wanted && guarded && !tracked {
        return Ok(());
    }
    let patch = json!({ "metadata": {
        "ownerReferences": wanted,
        "labels": {
            crate::guards::GUARDED_LABEL: "true",
            crate::desired::RETAINED_WITHOUT: null,
        },
    } });
    api.patch(
        &secret.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// A merge patch of `secret`: data keys set (`Some`) or removed (`None`), annotations
/// likewise; refused (409, the caller reconciles again) if the Secret changed since it
/// was read.
pub async fn patch_if_unchanged(
    api: &Api<Secret>,
    secret: &Secret,
    data: &[(&str, Option<&str>)],
    annotations: &[(&str, Option<String>)],
) -> Result<()> {
    let data: BTreeMap<&str, Option<ByteString>> = data
        .iter()
        .map(|(k, v)| (*k, v.map(|v| ByteString(v.as_bytes().to_vec()))))
        .collect();
    let annotations: BTreeMap<&str, Option<&String>> =
        annotations.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    let patch = json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "annotations": annotations,
        },
        "data": data,
    });
    api.patch(
        &secret.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Replaces the data of a Secret the operator renews (a leaf certificate and its key);
/// every other Secret is written once.
pub async fn replace_data(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let patch = json!({ "data": data });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(secret = %name, "replaced Secret data");
    Ok(())
}
