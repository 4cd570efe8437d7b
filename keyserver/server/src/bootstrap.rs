//! Which keyserver an instance serves, decided before it serves anything.
//!
//! With `--bootstrap-identity FILE` (the operator's pods), the database is compared with
//! the identity the instance was configured for:
//!
//! | database | bootstrap file | outcome |
//! | --- | --- | --- |
//! | no identity | present | stored (after proving the master key opens it), then served |
//! | no identity | absent | refused: `IdentityMissing` |
//! | the file's keyserver | any | served (nothing written) |
//! | another keyserver | present | refused: `IdentityMismatch` (nothing written) |
//! | identity the master key cannot open | any | refused: `MasterKeyMismatch` |
//!
//! A refusing instance serves no workstation; its admin API answers FAILED_PRECONDITION
//! with the [`Refusal`] (its message, and its kind as a typed `kss.v1.Refusal` detail),
//! and it checks again every [`RECHECK_INTERVAL`] (the database may be recovered, the
//! master key's Secret fixed, the bootstrap Secret created).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kss_crypto::identity::SealedIdentity;
use kss_crypto::ids::KeyserverId;
use kss_store::{Identity, Store, StoreError};
use tracing::info;

use crate::clock::now_ms;
use crate::data_dir::DataDir;
use crate::identity::{KeyserverIdentity, identity_row, sealed_of};

/// How often a refusing instance checks again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why an instance refuses to serve. Clients read its [`RefusalKind`] (a typed detail of
/// the admin API's answer); the message starts with a stable reason word and a colon (what
/// older operators matched on) and names keyserver IDs, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "IdentityMismatch: the database holds keyserver {stored}; this instance was configured \
         for keyserver {configured}; nothing was changed"
    )]
    IdentityMismatch {
        stored: KeyserverId,
        configured: KeyserverId,
    },
    #[error(
        "IdentityMissing: the database holds no keyserver identity and no bootstrap identity \
         was given; restore it with kss recovery-ingest-key"
    )]
    IdentityMissing,
    #[error(
        "MasterKeyMismatch: the master key cannot open keyserver {id}'s secret in the database"
    )]
    MasterKeyMismatch { id: KeyserverId },
    #[error(
        "MasterKeyMismatch: the master key cannot open keyserver {id}'s secret in the bootstrap \
         identity {}; nothing was changed",
        file.display()
    )]
    BootstrapKeyMismatch { id: KeyserverId, file: PathBuf },
}

impl Refusal {
    /// Which refusal this is, without its details (what the admin API reports as a
    /// `kss.v1.RefusalReason`, see [`crate::contracts`]).
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::IdentityMismatch { .. } => RefusalKind::IdentityMismatch,
            Refusal::IdentityMissing => RefusalKind::IdentityMissing,
            Refusal::MasterKeyMismatch { .. } => RefusalKind::MasterKeyMismatch,
            Refusal::BootstrapKeyMismatch { .. } => RefusalKind::BootstrapKeyMismatch,
        }
    }

    /// The stable reason word the message starts with (and the log's `reason` field).
    pub fn reason(&self) -> &'static str {
        self.kind().word()
    }
}

/// The kinds of [`Refusal`], one per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    IdentityMismatch,
    IdentityMissing,
    MasterKeyMismatch,
    BootstrapKeyMismatch,
}

impl RefusalKind {
    /// Every kind.
    pub const ALL: [RefusalKind; 4] = [
        RefusalKind::IdentityMismatch,
        RefusalKind::IdentityMissing,
        RefusalKind::MasterKeyMismatch,
        RefusalKind::BootstrapKeyMismatch,
    ];

    /// The reason word of the message: a bootstrap identity the master key cannot open
    /// is a `MasterKeyMismatch` too (the same fix: the right master key).
    pub fn word(self) -> &'static str {
        match self {
            RefusalKind::IdentityMismatch => "IdentityMismatch",
            RefusalKind::IdentityMissing => "IdentityMissing",
            RefusalKind::MasterKeyMismatch | RefusalKind::BootstrapKeyMismatch => {
                "MasterKeyMismatch"
            }
        }
    }
}

/// The outcome of one check.
#[derive(Debug)]
pub enum Checked {
    Serve(KeyserverIdentity),
    Refuse(Refusal),
}

/// The bootstrap identity in `path`, or `None` if there is no such file (the operator
/// deletes its Secret once the cluster is bootstrapped).
pub fn read_bootstrap(path: &Path) -> Result<Option<SealedIdentity>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the bootstrap identity {}", path.display()));
        }
    };
    SealedIdentity::from_json(&text)
        .map(Some)
        .with_context(|| format!("{} (--bootstrap-identity)", path.display()))
}

/// Decides whether this instance serves, storing the bootstrap identity into an empty
/// database. The master key and the bootstrap file are read anew at every check. An error
/// is a check that could not be made (database unreachable, unreadable files).
pub async fn check(store: &dyn Store, data_dir: &DataDir, bootstrap: &Path) -> Result<Checked> {
    let master = data_dir.read_master_key()?;
    let file = read_bootstrap(bootstrap)?;
    let row = store
        .identity()
        .await
        .context("reading the keyserver identity")?;
    let row = match (row, &file) {
        (Some(row), _) => row,
        (None, None) => return Ok(Checked::Refuse(Refusal::IdentityMissing)),
        (None, Some(sealed)) => {
            let id = sealed.keyserver_id;
            let Ok((root, era)) = sealed.open_with_era(&master) else {
                return Ok(Checked::Refuse(Refusal::BootstrapKeyMismatch {
                    id,
                    file: bootstrap.to_path_buf(),
                }));
            };
            match store.create_identity(&identity_row(sealed, now_ms())).await {
                Ok(()) => {
                    info!(keyserver_id = %id, "keyserver {id} bootstrapped into the database");
                    return Ok(Checked::Serve(
                        KeyserverIdentity::new(id, root).sealed_in(era),
                    ));
                }
                // Another instance stored one first: compare with it.
                Err(StoreError::AlreadyExists(_)) => store
                    .identity()
                    .await
                    .context("reading the keyserver identity")?
                    .context("the database refused a keyserver identity but holds none")?,
                Err(e) => return Err(e).context("storing the bootstrap identity"),
            }
        }
    };
    compare(&row, file.as_ref(), &master)
}

/// The stored identity against the configured one, and the master key against both.
fn compare(
    row: &Identity,
    file: Option<&SealedIdentity>,
    master: &kss_crypto::seal::MasterKey,
) -> Result<Checked> {
    let stored = sealed_of(row)?;
    if let Some(file) = file
        && file.keyserver_id != stored.keyserver_id
    {
        return Ok(Checked::Refuse(Refusal::IdentityMismatch {
            stored: stored.keyserver_id,
            configured: file.keyserver_id,
        }));
    }
    Ok(match stored.open_with_era(master) {
        Ok((root, era)) => {
            Checked::Serve(KeyserverIdentity::new(stored.keyserver_id, root).sealed_in(era))
        }
        Err(_) => Checked::Refuse(Refusal::MasterKeyMismatch {
            id: stored.keyserver_id,
        }),
    })
}
