//! Backup keys of the keyserver's root secret, for `kss create`, `kss save-backup-key` and
//! the admin API's `IssueBackupKey`: one set of checks on holders and threshold, one way
//! to build the key.

use kss_crypto::CryptoError;
use kss_crypto::backup::{self, AdminPublicKey, BackupKey};

use crate::identity::KeyserverIdentity;

/// Holders and threshold the product requires unless weak setups are allowed
/// (`--ignore-security-checks`, `allow_weak`).
pub const MIN_HOLDERS: usize = 5;
pub const MIN_THRESHOLD: usize = 3;
/// Most holders of one backup key.
pub const MAX_HOLDERS: usize = 64;
/// Longest holder name, in bytes.
pub const MAX_HOLDER_NAME: usize = 256;

/// What is wrong with a backup key's holders or threshold. The message names the field
/// (`holders`, `holders[i].name`, `holders[i].public_key`, `threshold`) and echoes no more
/// than a bounded holder name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupRequestError {
    #[error("holders: none given (a backup key needs at least one holder)")]
    NoHolders,
    #[error("holders: {count} given, at most {MAX_HOLDERS} allowed")]
    TooManyHolders { count: usize },
    #[error("holders[{index}].name: empty")]
    EmptyName { index: usize },
    #[error("holders[{index}].name: {len} bytes, at most {MAX_HOLDER_NAME} allowed")]
    NameTooLong { index: usize, len: usize },
    #[error("holders[{index}].name: {name:?} is also the name of holders[{first}]")]
    DuplicateName {
        index: usize,
        first: usize,
        name: String,
    },
    #[error("holders[{index}].public_key: the same administrator key as holders[{first}]")]
    DuplicateKey { index: usize, first: usize },
    #[error("holders[{index}].public_key: not an administrator public key ({why})")]
    BadKey { index: usize, why: String },
    #[error("threshold: {threshold} needs between 1 and {holders} (the number of holders)")]
    BadThreshold { threshold: usize, holders: usize },
    #[error(
        "refusing a weak backup key: {holders} holder(s) with threshold {threshold}. The backup \
         key restores every profile's keyserver share, so it must need {MIN_THRESHOLD} \
         approvals out of at least {MIN_HOLDERS} administrators, so that no one person and no \
         two together can restore it"
    )]
    Weak { holders: usize, threshold: usize },
}

/// A holder's public key as `kss admin-key generate` writes it (96 hex characters).
pub fn parse_holder_key(index: usize, hex: &str) -> Result<AdminPublicKey, BackupRequestError> {
    AdminPublicKey::from_hex(hex).map_err(|e| BackupRequestError::BadKey {
        index,
        why: e.to_string(),
    })
}

/// Checks holders and threshold: at least one and at most [`MAX_HOLDERS`] holders, names
/// non-empty, at most [`MAX_HOLDER_NAME`] bytes and distinct, keys distinct, a threshold
/// between 1 and the number of holders, and unless `allow_weak` at least [`MIN_HOLDERS`]
/// holders and a threshold of [`MIN_THRESHOLD`].
pub fn check_holders(
    holders: &[(String, AdminPublicKey)],
    threshold: usize,
    allow_weak: bool,
) -> Result<(), BackupRequestError> {
    let count = holders.len();
    if count == 0 {
        return Err(BackupRequestError::NoHolders);
    }
    if count > MAX_HOLDERS {
        return Err(BackupRequestError::TooManyHolders { count });
    }
    for (index, (name, key)) in holders.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(BackupRequestError::EmptyName { index });
        }
        if name.len() > MAX_HOLDER_NAME {
            return Err(BackupRequestError::NameTooLong {
                index,
                len: name.len(),
            });
        }
        if let Some(first) = holders[..index].iter().position(|(n, _)| n == name) {
            return Err(BackupRequestError::DuplicateName {
                index,
                first,
                name: name.clone(),
            });
        }
        if let Some(first) = holders[..index].iter().position(|(_, k)| k == key) {
            return Err(BackupRequestError::DuplicateKey { index, first });
        }
    }
    if threshold == 0 || threshold > count {
        return Err(BackupRequestError::BadThreshold {
            threshold,
            holders: count,
        });
    }
    if !allow_weak && (count < MIN_HOLDERS || threshold < MIN_THRESHOLD) {
        return Err(BackupRequestError::Weak {
            holders: count,
            threshold,
        });
    }
    Ok(())
}

/// Why no backup key was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Invalid(#[from] BackupRequestError),
    #[error("creating the backup key: {0}")]
    Crypto(#[from] CryptoError),
}

/// A new backup key of `identity`'s root secret for `holders`, after [`check_holders`]:
/// any `threshold` of them recover the same keyserver ID and root secret.
pub fn issue_backup(
    identity: &KeyserverIdentity,
    holders: &[(String, AdminPublicKey)],
    threshold: usize,
    allow_weak: bool,
) -> Result<BackupKey, IssueError> {
    check_holders(holders, threshold, allow_weak)?;
    Ok(backup::create_backup(
        identity.root(),
        &identity.id,
        holders,
        threshold,
    )?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kss_crypto::backup::AdminKey;

    fn holders(n: usize) -> Vec<(String, AdminPublicKey)> {
        (0..n)
            .map(|i| (format!("admin-{i}"), AdminKey::generate().public()))
            .collect()
    }

    #[test]
    fn every_rule_names_what_is_wrong() {
        use BackupRequestError as E;
        let five = holders(5);
        assert_eq!(check_holders(&five, 3, false), Ok(()));
        assert_eq!(check_holders(&[], 1, true), Err(E::NoHolders));
        assert_eq!(
            check_holders(&holders(MAX_HOLDERS + 1), 3, false),
            Err(E::TooManyHolders {
                count: MAX_HOLDERS + 1
            })
        );
        assert_eq!(check_holders(&holders(MAX_HOLDERS), 3, false), Ok(()));
        let mut named = five.clone();
        named[2].0 = " ".into();
        assert_eq!(
            check_holders(&named, 3, false),
            Err(E::EmptyName { index: 2 })
        );
        named[2].0 = "x".repeat(MAX_HOLDER_NAME + 1);
        assert_eq!(
            check_holders(&named, 3, false),
            Err(E::NameTooLong {
                index: 2,
                len: MAX_HOLDER_NAME + 1
            })
        );
        named[2].0 = "x".repeat(MAX_HOLDER_NAME);
        assert_eq!(check_holders(&named, 3, false), Ok(()));
        named[3].0 = named[1].0.clone();
        assert!(matches!(
            check_holders(&named, 3, false),
            Err(E::DuplicateName {
                index: 3,
                first: 1,
                ..
            })
        ));
        let mut keyed = five.clone();
        keyed[4].1 = keyed[0].1;
        assert_eq!(
            check_holders(&keyed, 3, false),
            Err(E::DuplicateKey { index: 4, first: 0 })
        );
        for threshold in [0, 6] {
            assert_eq!(
                check_holders(&five, threshold, true),
                Err(E::BadThreshold {
                    threshold,
                    holders: 5
                })
            );
        }
        assert_eq!(
            check_holders(&five, 2, false),
            Err(E::Weak {
                holders: 5,
                threshold: 2
            })
        );
        assert_eq!(
            check_holders(&holders(4), 3, false),
            Err(E::Weak {
                holders: 4,
                threshold: 3
            })
        );
        assert_eq!(check_holders(&holders(1), 1, true), Ok(()));
        let e = parse_holder_key(1, "00".repeat(48).as_str()).unwrap_err();
        assert!(
            e.to_string().starts_with("holders[1].public_key: not an"),
            "{e}"
        );
        assert!(parse_holder_key(0, "zz").is_err());
        assert_eq!(parse_holder_key(0, &five[0].1.to_hex()).unwrap(), five[0].1);
    }

    #[test]
    fn an_issued_key_recovers_the_identity() {
        let identity = KeyserverIdentity::generate();
        let keys: Vec<AdminKey> = (0..3).map(|_| AdminKey::generate()).collect();
        let holders: Vec<(String, AdminPublicKey)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("h{i}"), k.public()))
            .collect();
        let backup = issue_backup(&identity, &holders, 2, true).unwrap();
        assert_eq!(backup.keyserver_id(), &identity.id);
        let approvals: Vec<_> = keys[1..]
            .iter()
            .map(|k| backup::approve(&backup, k).unwrap())
            .collect();
        let root = backup::recover(&backup, &approvals).unwrap();
        assert_eq!(root.expose_bytes(), identity.root().expose_bytes());
        assert!(matches!(
            issue_backup(&identity, &holders, 2, false),
            Err(IssueError::Invalid(BackupRequestError::Weak { .. }))
        ));
    }
}
