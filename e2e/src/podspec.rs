//! Turns a pod's first container into a local process launch, as the kubelet would
//! configure the container: environment (`env`, `envFrom`, `valueFrom`), `$(VAR)`
//! expansion of the arguments, and volumes materialised as host directories whose paths
//! replace the in-pod mount paths.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::{Api, Client};

use crate::error::{Error, Result};
use crate::expand::{MountMap, bind_to_pod_ip, expand};
use crate::volumes::{FileEntry, sync_dir};

/// Default mode of secret, configMap, projected and downwardAPI volume files.
const DEFAULT_MODE: i32 = 0o644;

/// Everything needed to start (and keep configured) the process of one pod UID.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// Arguments after the program (the program is always the runner's kss binary).
    pub args: Vec<String>,
    /// The container's environment, mount paths rewritten.
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub mounts: MountMap,
    /// Volumes whose files come from API objects, refreshed while the pod runs.
    pub file_volumes: Vec<FileVolume>,
}

/// A `secret`, `configMap`, `projected` or `downwardAPI` volume and its host directory.
#[derive(Debug, Clone)]
pub(crate) struct FileVolume {
    pub volume: Volume,
    pub dir: PathBuf,
}

/// Where a pod's files go: `<state>/<namespace>/<pod>/` for the log and pid file,
/// `<state>/<namespace>/<pod>/<uid[..8]>/` for its volumes and working directory (kept
/// short: a Unix socket path in a volume must stay under 108 bytes).
#[derive(Debug, Clone)]
pub(crate) struct PodDirs {
    pub pod_dir: PathBuf,
    pub uid_dir: PathBuf,
}

impl PodDirs {
    pub fn new(state_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PodDirs {
        let pod_dir = state_dir.join(namespace).join(pod);
        let short: String = uid.chars().take(8).collect();
        let uid_dir = pod_dir.join(short);
        PodDirs { pod_dir, uid_dir }
    }

    pub fn log(&self, uid: &str) -> PathBuf {
        self.pod_dir.join(format!("{uid}.log"))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.pod_dir.join("pid")
    }

    fn volume(&self, name: &str) -> PathBuf {
        self.uid_dir.join("v").join(name)
    }
}

/// Key-value data of Secrets and ConfigMaps, fetched at most once per launch.
pub(crate) struct Objects {
    client: Client,
    namespace: String,
    secrets: HashMap<String, Data>,
    config_maps: HashMap<String, Data>,
}

/// The key-value data of a Secret or ConfigMap, None when it does not exist.
type Data = Option<Arc<BTreeMap<String, Vec<u8>>>>;

impl Objects {
    pub fn new(client: &Client, namespace: &str) -> Objects {
        Objects {
            client: client.clone(),
            namespace: namespace.to_string(),
            secrets: HashMap::new(),
            config_maps: HashMap::new(),
        }
    }

    /// A Secret's data (None if it does not exist).
    pub async fn secret(&mut self, name: &str) -> Result<Data> {
        if let Some(data) = self.secrets.get(name) {
            return Ok(data.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let data = api.get_opt(name).await?.map(|secret| {
            Arc::new(
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            )
        });
        self.secrets.insert(name.to_string(), data.clone());
        Ok(data)
    }

    /// A ConfigMap's `data` and `binaryData` (None if it does not exist).
    pub async fn config_map(&mut self, name: &str) -> Result<Data> {
        if let Some(data) = self.config_maps.get(name) {
            return Ok(data.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let data = api.get_opt(name).await?.map(|cm| {
            let mut all: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                all.insert(k, v.0);
            }
            Arc::new(all)
        });
        self.config_maps.insert(name.to_string(), data.clone());
        Ok(data)
    }
}

/// The value of a downward-API field path (`fieldRef.fieldPath`).
pub(crate) fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let quoted_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        let rest = rest.strip_prefix("['")?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    let format_map = |map: &Option<BTreeMap<String, String>>| -> String {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|ip| ip.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.hostIPs" => status
            .and_then(|s| s.host_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|ip| ip.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => {
            if let Some(key) = quoted_key("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = quoted_key("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The pod's first container (the one the runner runs).
pub(crate) fn first_container(pod: &Pod) -> Result<&Container> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or_else(|| Error::pod(&pod_name(pod), "has no container"))
}

/// Resolves the pod's first container into a [`Launch`]: creates and fills its volume
/// directories, resolves the environment, expands and rewrites the arguments.
pub(crate) async fn prepare(
    client: &Client,
    pod: &Pod,
    dirs: &PodDirs,
    extra_env: &BTreeMap<String, String>,
    bind_any_to_pod_ip: bool,
) -> Result<Launch> {
    let name = pod_name(pod);
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let container = first_container(pod)?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::pod(&name, "has no spec"))?;
    let mut objects = Objects::new(client, &namespace);

    // Volumes: a host directory for each.
    let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
    let mut file_volumes = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = dirs.volume(&volume.name);
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            volume_dirs.insert(volume.name.clone(), dir);
        } else if volume.secret.is_some()
            || volume.config_map.is_some()
            || volume.projected.is_some()
            || volume.downward_api.is_some()
        {
            let file_volume = FileVolume {
                volume: volume.clone(),
                dir: dir.clone(),
            };
            refresh(&mut objects, pod, &file_volume).await?;
            file_volumes.push(file_volume);
            volume_dirs.insert(volume.name.clone(), dir);
        } else if let Some(pvc) = &volume.persistent_volume_claim {
            let host = claim_host_dir(client, &namespace, &pvc.claim_name)
                .await?
                .ok_or_else(|| {
                    Error::pod(
                        &name,
                        format!(
                            "claim {} is not bound to a hostPath volume yet",
                            pvc.claim_name
                        ),
                    )
                })?;
            std::fs::create_dir_all(&host).map_err(|e| Error::io(&host, e))?;
            volume_dirs.insert(volume.name.clone(), host);
        } else if let Some(host_path) = &volume.host_path {
            let path = PathBuf::from(&host_path.path);
            if host_path.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
            volume_dirs.insert(volume.name.clone(), path);
        } else {
            tracing::warn!(pod = %name, volume = %volume.name,
                "unsupported volume type: given an empty directory");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            volume_dirs.insert(volume.name.clone(), dir);
        }
    }

    // Environment: envFrom first, then env in order (later names win), as the kubelet.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(secret) = &source.secret_ref {
            (
                objects.secret(&secret.name).await?,
                format!("secret {}", secret.name),
                secret.optional.unwrap_or(false),
            )
        } else if let Some(cm) = &source.config_map_ref {
            (
                objects.config_map(&cm.name).await?,
                format!("configmap {}", cm.name),
                cm.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data.iter() {
                    let var = format!("{prefix}{key}");
                    if var.is_empty() || var.contains('=') {
                        tracing::warn!(pod = %name, variable = %var, "invalid env name from envFrom skipped");
                        continue;
                    }
                    env.insert(var, String::from_utf8_lossy(value).into_owned());
                }
            }
            None if optional => {}
            None => return Err(Error::pod(&name, format!("envFrom: {what} not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                Some(field_value(pod, &field.field_path).ok_or_else(|| {
                    Error::pod(
                        &name,
                        format!(
                            "env {}: unsupported fieldPath {}",
                            var.name, field.field_path
                        ),
                    )
                })?)
            } else if let Some(sel) = &from.secret_key_ref {
                let data = objects.secret(&sel.name).await?;
                let optional = sel.optional.unwrap_or(false);
                key_ref_value(
                    &name, &var.name, "secret", &sel.name, &sel.key, optional, data,
                )?
            } else if let Some(sel) = &from.config_map_key_ref {
                let data = objects.config_map(&sel.name).await?;
                let optional = sel.optional.unwrap_or(false);
                key_ref_value(
                    &name,
                    &var.name,
                    "configmap",
                    &sel.name,
                    &sel.key,
                    optional,
                    data,
                )?
            } else {
                return Err(Error::pod(
                    &name,
                    format!(
                        "env {}: only fieldRef, secretKeyRef and configMapKeyRef are supported",
                        var.name
                    ),
                ));
            }
        } else {
            // Literal values may refer to variables defined before them.
            let literal = var.value.clone().unwrap_or_default();
            Some(expand(&literal, |n| env.get(n).cloned()))
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }

    // Mounts (subPathExpr expands with the container's environment).
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let base = volume_dirs.get(&mount.name).ok_or_else(|| {
            Error::pod(
                &name,
                format!("volumeMount of unknown volume {}", mount.name),
            )
        })?;
        let sub = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => Some(sub.clone()),
            (_, Some(expr)) if !expr.is_empty() => Some(expand(expr, |n| env.get(n).cloned())),
            _ => None,
        };
        let host = match sub {
            Some(sub) => base.join(sub.trim_start_matches('/')),
            None => base.clone(),
        };
        mounts.push((mount.mount_path.clone(), host));
    }
    let mounts = MountMap::new(mounts);

    // Arguments: command[0] is the image's program, replaced by the kss binary.
    let raw_args = container
        .command
        .iter()
        .flatten()
        .skip(1)
        .chain(container.args.iter().flatten());
    let pod_ip = if bind_any_to_pod_ip {
        field_value(pod, "status.podIP").unwrap_or_default()
    } else {
        String::new()
    };
    let finish = |value: &str| bind_to_pod_ip(&mounts.rewrite(value), &pod_ip);
    let args = raw_args
        .map(|arg| finish(&expand(arg, |n| env.get(n).cloned())))
        .collect();

    let mut final_env: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(path) = std::env::var("PATH") {
        final_env.insert("PATH".to_string(), path);
    }
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    final_env.insert("HOSTNAME".to_string(), hostname);
    for (k, v) in extra_env {
        final_env.insert(k.clone(), v.clone());
    }
    for (k, v) in &env {
        final_env.insert(k.clone(), finish(v));
    }

    let cwd = match container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => mounts
            .host_path(dir)
            .unwrap_or_else(|| dirs.uid_dir.join("cwd")),
        _ => dirs.uid_dir.join("cwd"),
    };
    std::fs::create_dir_all(&cwd).map_err(|e| Error::io(&cwd, e))?;

    Ok(Launch {
        args,
        env: final_env,
        cwd,
        mounts,
        file_volumes,
    })
}

/// The host directory of a bound claim: its PersistentVolume's `hostPath`.
pub(crate) async fn claim_host_dir(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> Result<Option<PathBuf>> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(pvc) = claims.get_opt(claim).await? else {
        return Ok(None);
    };
    let Some(volume_name) = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let Some(pv) = volumes.get_opt(&volume_name).await? else {
        return Ok(None);
    };
    Ok(pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| PathBuf::from(h.path)))
}

/// Brings a file volume's directory up to date with its Secrets and ConfigMaps.
/// Returns whether any file changed.
pub(crate) async fn refresh(objects: &mut Objects, pod: &Pod, volume: &FileVolume) -> Result<bool> {
    let name = pod_name(pod);
    let v = &volume.volume;
    let mut files = Vec::new();
    if let Some(secret) = &v.secret {
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let mode = secret.default_mode.unwrap_or(DEFAULT_MODE);
        let data = objects.secret(&secret_name).await?;
        let optional = secret.optional.unwrap_or(false);
        project(
            &name,
            &format!("secret {secret_name}"),
            data,
            secret.items.as_deref(),
            mode,
            optional,
            &mut files,
        )?;
    } else if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.unwrap_or(DEFAULT_MODE);
        let data = objects.config_map(&cm.name).await?;
        let optional = cm.optional.unwrap_or(false);
        project(
            &name,
            &format!("configmap {}", cm.name),
            data,
            cm.items.as_deref(),
            mode,
            optional,
            &mut files,
        )?;
    } else if let Some(projected) = &v.projected {
        let mode = projected.default_mode.unwrap_or(DEFAULT_MODE);
        for source in projected.sources.iter().flatten() {
            if let Some(secret) = &source.secret {
                let data = objects.secret(&secret.name).await?;
                let optional = secret.optional.unwrap_or(false);
                let what = format!("secret {}", secret.name);
                project(
                    &name,
                    &what,
                    data,
                    secret.items.as_deref(),
                    mode,
                    optional,
                    &mut files,
                )?;
            } else if let Some(cm) = &source.config_map {
                let data = objects.config_map(&cm.name).await?;
                let optional = cm.optional.unwrap_or(false);
                let what = format!("configmap {}", cm.name);
                project(
                    &name,
                    &what,
                    data,
                    cm.items.as_deref(),
                    mode,
                    optional,
                    &mut files,
                )?;
            } else if let Some(downward) = &source.downward_api {
                downward_files(pod, downward.items.as_deref(), mode, &mut files)?;
            } else {
                tracing::debug!(pod = %name, volume = %v.name,
                    "projected source other than secret/configMap/downwardAPI ignored");
            }
        }
    } else if let Some(downward) = &v.downward_api {
        let mode = downward.default_mode.unwrap_or(DEFAULT_MODE);
        downward_files(pod, downward.items.as_deref(), mode, &mut files)?;
    }
    sync_dir(&volume.dir, &files)
}

/// The files of one Secret or ConfigMap (all keys, or the listed items).
fn project(
    pod: &str,
    what: &str,
    data: Data,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    files: &mut Vec<FileEntry>,
) -> Result<()> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(Error::pod(pod, format!("{what} not found")));
    };
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) & 0o7777) as u32;
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => files.push(FileEntry {
                        rel: item.path.clone(),
                        data: value.clone(),
                        mode: mode(item.mode),
                    }),
                    None if optional => {}
                    None => return Err(Error::pod(pod, format!("{what} has no key {}", item.key))),
                }
            }
        }
        _ => {
            for (key, value) in data.iter() {
                files.push(FileEntry {
                    rel: key.clone(),
                    data: value.clone(),
                    mode: mode(None),
                });
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Pod,
    items: Option<&[k8s_openapi::api::core::v1::DownwardAPIVolumeFile]>,
    default_mode: i32,
    files: &mut Vec<FileEntry>,
) -> Result<()> {
    for item in items.into_iter().flatten() {
        let Some(field) = &item.field_ref else {
            return Err(Error::pod(
                &pod_name(pod),
                format!("downwardAPI {}: only fieldRef is supported", item.path),
            ));
        };
        let value = field_value(pod, &field.field_path).ok_or_else(|| {
            Error::pod(
                &pod_name(pod),
                format!(
                    "downwardAPI {}: unsupported fieldPath {}",
                    item.path, field.field_path
                ),
            )
        })?;
        files.push(FileEntry {
            rel: item.path.clone(),
            data: value.into_bytes(),
            mode: (item.mode.unwrap_or(default_mode) & 0o7777) as u32,
        });
    }
    Ok(())
}

/// The value of an env var's `secretKeyRef` / `configMapKeyRef`: `None` when it is
/// optional and absent (the kubelet leaves the variable unset), an error otherwise.
fn key_ref_value(
    pod: &str,
    var: &str,
    kind: &str,
    source: &str,
    key: &str,
    optional: bool,
    data: Data,
) -> Result<Option<String>> {
    match data {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(Error::pod(
                pod,
                format!("env {var}: {kind} {source} has no key {key}"),
            )),
        },
        None if optional => Ok(None),
        None => Err(Error::pod(
            pod,
            format!("env {var}: {kind} {source} not found"),
        )),
    }
}
