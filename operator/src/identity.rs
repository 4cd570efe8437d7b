//! The keyserver identity the operator creates, backs up and recovers. The secrets never
//! leave Kubernetes Secrets and this process's memory; errors never quote them.
//!
//! Order on first reconcile (each step "create if missing", so a crash between steps is
//! resumed): master key → bootstrap identity (the root secret sealed with the master key)
//! → backup key derived from the bootstrap identity. The first instance stores the
//! bootstrap identity in its empty database; once an instance confirms the ID, the
//! operator deletes the bootstrap Secret, so that afterwards only the backup key (with
//! its holders' approvals) can restore the identity.

use std::str::FromStr;

use kss_crypto::backup::{self, AdminKey, AdminPublicKey, Approval, BackupKey};
use kss_crypto::identity::SealedIdentity;
use kss_crypto::ids::KeyserverId;
use kss_crypto::root::RootSecret;
use kss_crypto::seal::MasterKey;
use zeroize::Zeroizing;

use crate::crd::cluster::BackupSpec;
use crate::error::{Error, Result};

/// A fresh master key, as the hex text of the `master.key` file.
pub fn new_master_key() -> Zeroizing<String> {
    MasterKey::generate().to_hex()
}

fn master(master_hex: &str) -> Result<MasterKey> {
    MasterKey::from_hex(master_hex)
        .map_err(|e| Error::Identity(format!("the master-key Secret is not a master key: {e}")))
}

/// A fresh keyserver identity sealed with the master key: (ID, bootstrap JSON).
pub fn new_bootstrap(master_hex: &str) -> Result<(String, Zeroizing<String>)> {
    let master = master(master_hex)?;
    let id = KeyserverId::random();
    let sealed = SealedIdentity::seal(&id, &RootSecret::generate(), &master);
    Ok((id.to_string(), Zeroizing::new(sealed.to_json())))
}

/// The keyserver ID of a bootstrap identity.
pub fn bootstrap_keyserver_id(bootstrap_json: &str) -> Result<String> {
    let sealed = SealedIdentity::from_json(bootstrap_json)
        .map_err(|e| Error::Identity(format!("bootstrap identity: {e}")))?;
    Ok(sealed.keyserver_id.to_string())
}

/// Whether `master_hex` opens the bootstrap identity in `bootstrap_json`.
pub fn bootstrap_opens(bootstrap_json: &str, master_hex: &str) -> bool {
    let Ok(master) = master(master_hex) else {
        return false;
    };
    SealedIdentity::from_json(bootstrap_json).is_ok_and(|sealed| sealed.open(&master).is_ok())
}

/// What a serving instance is asked to issue a backup key for (`IssueBackupKey`).
pub struct BackupRequest {
    /// (name, public key hex) of each holder.
    pub holders: Vec<(String, String)>,
    pub threshold: u32,
    /// Fewer than 5 holders or a threshold below 3 (`ignoreSecurityChecks`).
    pub allow_weak: bool,
    /// Only with `ignoreSecurityChecks` and no holders: the administrator key generated
    /// here for the one holder (kept beside the backup key; demos and tests only).
    pub generated_admin_key: Option<Zeroizing<String>>,
}

/// The holders and threshold of `spec` as an `IssueBackupKey` request.
pub fn backup_request(spec: &BackupSpec) -> Result<BackupRequest> {
    let mut holders: Vec<(String, String)> = spec
        .holders
        .iter()
        .map(|h| {
            AdminPublicKey::from_hex(&h.public_key)
                .map(|key| (h.name.clone(), key.to_hex()))
                .map_err(|e| {
                    Error::Identity(format!("backup holder {:?}: public key: {e}", h.name))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut threshold = u32::try_from(spec.threshold).unwrap_or(0);
    let mut generated_admin_key = None;
    if holders.is_empty() {
        if !spec.ignore_security_checks {
            return Err(no_holders());
        }
        let key = AdminKey::generate();
        holders.push(("generated".to_string(), key.public().to_hex()));
        generated_admin_key = Some(key.to_hex());
        threshold = 1;
    }
    Ok(BackupRequest {
        holders,
        threshold,
        allow_weak: spec.ignore_security_checks,
        generated_admin_key,
    })
}

fn no_holders() -> Error {
    Error::Identity(
        "spec.backup.holders is empty: give at least 5 administrators' public keys \
         (kss admin-key generate), or set ignoreSecurityChecks for a demo"
            .into(),
    )
}

/// What goes into the backup-key Secret.
pub struct BackupMaterial {
    pub keyserver_id: String,
    pub backup_json: String,
    pub holders: usize,
    pub threshold: usize,
    /// Only with `ignoreSecurityChecks` and no holders: the one generated administrator
    /// key (kept beside the backup key; demos and tests only).
    pub generated_admin_key: Option<Zeroizing<String>>,
}

/// The backup key of the identity in `bootstrap_json`, for the holders of `spec`.
pub fn backup_from_bootstrap(
    bootstrap_json: &str,
    master_hex: &str,
    spec: &BackupSpec,
) -> Result<BackupMaterial> {
    let master = master(master_hex)?;
    let sealed = SealedIdentity::from_json(bootstrap_json)
        .map_err(|e| Error::Identity(format!("bootstrap identity: {e}")))?;
    let root = sealed.open(&master).map_err(|e| {
        Error::Identity(format!(
            "the master key does not open the bootstrap identity: {e}"
        ))
    })?;
    let mut holders = spec
        .holders
        .iter()
        .map(|h| {
            AdminPublicKey::from_hex(&h.public_key)
                .map(|key| (h.name.clone(), key))
                .map_err(|e| {
                    Error::Identity(format!("backup holder {:?}: public key: {e}", h.name))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut generated_admin_key = None;
    let mut threshold = usize::try_from(spec.threshold).unwrap_or(0);
    if holders.is_empty() {
        if !spec.ignore_security_checks {
            return Err(no_holders());
        }
        let key = AdminKey::generate();
        holders.push(("generated".to_string(), key.public()));
        generated_admin_key = Some(key.to_hex());
        threshold = 1;
    }
    let backup = backup::create_backup(&root, &sealed.keyserver_id, &holders, threshold)
        .map_err(|e| Error::Identity(format!("creating the backup key: {e}")))?;
    Ok(BackupMaterial {
        keyserver_id: sealed.keyserver_id.to_string(),
        backup_json: backup.to_json(),
        holders: holders.len(),
        threshold,
        generated_admin_key,
    })
}

/// Reads a backup key.
pub fn parse_backup(backup_json: &str) -> Result<BackupKey> {
    BackupKey::from_json(backup_json)
        .map_err(|e| Error::Identity(format!("the backup-key Secret is not a backup key: {e}")))
}

/// Recovery: the root secret from the backup key and its holders' approvals, sealed again
/// (same keyserver ID) as a bootstrap identity for an empty database.
pub fn recover_bootstrap(
    backup: &BackupKey,
    approvals: &[(String, String)],
    master_hex: &str,
) -> Result<Zeroizing<String>> {
    let master = master(master_hex)?;
    let approvals = approvals
        .iter()
        .map(|(key, text)| {
            Approval::from_json(text).map_err(|e| {
                Error::Identity(format!("approval {key:?} is not a backup approval: {e}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let root = backup::recover(backup, &approvals)
        .map_err(|e| Error::Identity(format!("recovering from the backup key: {e}")))?;
    let sealed = SealedIdentity::seal(backup.keyserver_id(), &root, &master);
    Ok(Zeroizing::new(sealed.to_json()))
}

/// Whether `text` is a well-formed keyserver ID.
pub fn is_keyserver_id(text: &str) -> bool {
    KeyserverId::from_str(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::cluster::BackupHolder;

    fn spec_with(keys: &[AdminKey], threshold: i32) -> BackupSpec {
        BackupSpec {
            holders: keys
                .iter()
                .enumerate()
                .map(|(i, k)| BackupHolder {
                    name: format!("admin{i}"),
                    public_key: k.public().to_hex(),
                })
                .collect(),
            threshold,
            ..BackupSpec::default()
        }
    }

    #[test]
    fn backup_then_recovery_gives_back_the_same_identity() {
        let master = new_master_key();
        let (id, bootstrap) = new_bootstrap(&master).expect("bootstrap");
        assert_eq!(bootstrap_keyserver_id(&bootstrap).expect("id"), id);
        let admins: Vec<AdminKey> = (0..5).map(|_| AdminKey::generate()).collect();
        let material =
            backup_from_bootstrap(&bootstrap, &master, &spec_with(&admins, 3)).expect("backup");
        assert_eq!(material.keyserver_id, id);
        assert!(material.generated_admin_key.is_none());
        assert!(!material.backup_json.contains(master.as_str()));
        let backup = parse_backup(&material.backup_json).expect("parse");
        let approvals: Vec<(String, String)> = admins[1..4]
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let approval = backup::approve(&backup, a).expect("approve");
                (format!("a{i}"), approval.to_json())
            })
            .collect();
        // A new master key (the old one may be lost too): same ID, same root.
        let new_master = new_master_key();
        let recovered = recover_bootstrap(&backup, &approvals, &new_master).expect("recover");
        assert_eq!(bootstrap_keyserver_id(&recovered).expect("id"), id);
        let original = SealedIdentity::from_json(&bootstrap)
            .expect("json")
            .open(&MasterKey::from_hex(&master).expect("hex"))
            .expect("open");
        let again = SealedIdentity::from_json(&recovered)
            .expect("json")
            .open(&MasterKey::from_hex(&new_master).expect("hex"))
            .expect("open");
        assert_eq!(original.expose_bytes(), again.expose_bytes());
        // Two approvals are not enough.
        assert!(recover_bootstrap(&backup, &approvals[..2], &new_master).is_err());
    }

    #[test]
    fn no_holders_needs_ignore_security_checks_and_then_generates_one_key() {
        let master = new_master_key();
        let (_, bootstrap) = new_bootstrap(&master).expect("bootstrap");
        let err = backup_from_bootstrap(&bootstrap, &master, &BackupSpec::default())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("holders is empty"), "{err}");
        let spec = BackupSpec {
            ignore_security_checks: true,
            ..BackupSpec::default()
        };
        let material = backup_from_bootstrap(&bootstrap, &master, &spec).expect("backup");
        assert_eq!((material.holders, material.threshold), (1, 1));
        assert!(material.generated_admin_key.is_some());
    }

    #[test]
    fn a_wrong_master_key_is_an_error_that_quotes_no_secret() {
        let master = new_master_key();
        let (_, bootstrap) = new_bootstrap(&master).expect("bootstrap");
        let other = new_master_key();
        let spec = BackupSpec {
            ignore_security_checks: true,
            ..BackupSpec::default()
        };
        let err = backup_from_bootstrap(&bootstrap, &other, &spec)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("does not open"), "{err}");
        assert!(!err.contains(other.as_str()) && !err.contains(master.as_str()));
    }
}
