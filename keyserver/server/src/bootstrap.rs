//! Which keyserver an instance serves, decided before it serves anything.
//!
//! With `--bootstrap-identity FILE` (the operator's pods) and/or `--keyserver-id ID` (the
//! pin, env `KSS_KEYSERVER_ID`), the database is compared with the identity the instance
//! was configured for. A pinned instance never serves another keyserver than the pinned
//! one, whatever the database or the bootstrap file hold:
//!
//! | database | bootstrap file | pin | outcome |
//! | --- | --- | --- | --- |
//! | no identity | present, the pinned ID (or no pin) | | stored (after proving the master key opens it), then served |
//! | no identity | present, another ID than the pin | set | refused: `IdentityMismatch` (nothing written) |
//! | no identity | absent | any | refused: `IdentityMissing` |
//! | another keyserver than the pin | any | set | refused: `IdentityMismatch` (nothing written) |
//! | another keyserver than the file's | present | any | refused: `IdentityMismatch` (nothing written) |
//! | the configured keyserver, opened by the master key | any | any | served (nothing written) |
//! | the configured keyserver, not opened by the master key | any | any | refused: `MasterKeyMismatch` |
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
use kss_crypto::seal::MasterKey;
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
        "IdentityMismatch: the bootstrap identity {} is of keyserver {found}; this instance is \
         pinned to keyserver {pinned} (--keyserver-id); nothing was changed",
        file.display()
    )]
    BootstrapNotPinned {
        pinned: KeyserverId,
        found: KeyserverId,
        file: PathBuf,
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
            // A bootstrap file of another keyserver than the pin: not the database's.
            Refusal::IdentityMismatch { .. } | Refusal::BootstrapNotPinned { .. } => {
                RefusalKind::IdentityMismatch
            }
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

/// What an instance was configured to serve.
#[derive(Debug, Clone, Copy)]
pub struct Configured<'a> {
    /// `--bootstrap-identity`: the file (it may be absent).
    pub bootstrap: Option<&'a Path>,
    /// `--keyserver-id`: the only keyserver this instance serves.
    pub pin: Option<KeyserverId>,
    /// This instance's name.
    pub instance_id: &'a str,
}

/// Decides whether this instance serves, storing the bootstrap identity into an empty
/// database. The master key and the bootstrap file are read anew at every check. An error is a check that could not be
/// made (database unreachable, unreadable files).
pub async fn check(
    store: &dyn Store,
    data_dir: &DataDir,
    config: Configured<'_>,
) -> Result<Checked> {
    let master = data_dir.read_master_key()?;
    let file = match config.bootstrap {
        Some(path) => read_bootstrap(path)?.map(|sealed| (sealed, path)),
        None => None,
    };
    let file = file.as_ref().map(|(sealed, path)| (sealed, *path));
    // A concurrent bootstrap changes the row: compared again, a bounded number
    // of times (each change is another instance's success).
    for _ in 0..8 {
        let row = store
            .identity()
            .await
            .context("reading the keyserver identity")?;
        let step = match row {
            Some(row) => compare(&row, file, config, &master)?,
            None => bootstrap_empty(store, file, config.pin, &master).await?,
        };
        if let Step::Done(checked) = step {
            return Ok(checked);
        }
    }
    anyhow::bail!("the keyserver identity kept changing while it was checked")
}

/// One comparison: decided, or the stored row changed under it (compare again).
enum Step {
    Done(Checked),
    Changed,
}

/// An empty database: the bootstrap identity is stored (if the master key opens it, and it
/// is the pinned keyserver's).
async fn bootstrap_empty(
    store: &dyn Store,
    file: Option<(&SealedIdentity, &Path)>,
    pin: Option<KeyserverId>,
    master: &MasterKey,
) -> Result<Step> {
    let Some((sealed, path)) = file else {
        return Ok(Step::Done(Checked::Refuse(Refusal::IdentityMissing)));
    };
    let id = sealed.keyserver_id;
    if let Some(pinned) = pin
        && pinned != id
    {
        return Ok(Step::Done(Checked::Refuse(Refusal::BootstrapNotPinned {
            pinned,
            found: id,
            file: path.to_path_buf(),
        })));
    }
    let Ok((root, era)) = sealed.open_with_era(master) else {
        return Ok(Step::Done(Checked::Refuse(Refusal::BootstrapKeyMismatch {
            id,
            file: path.to_path_buf(),
        })));
    };
    match store.create_identity(&identity_row(sealed, now_ms())).await {
        Ok(()) => {
            info!(keyserver_id = %id, "keyserver {id} bootstrapped into the database");
            Ok(Step::Done(Checked::Serve(
                KeyserverIdentity::new(id, root).sealed_in(era),
            )))
        }
        // Another instance stored one first: compare with it.
        Err(StoreError::AlreadyExists(_)) => Ok(Step::Changed),
        Err(e) => Err(e).context("storing the bootstrap identity"),
    }
}

/// The stored identity against the configured one, and the master key against both.
fn compare(
    row: &Identity,
    file: Option<(&SealedIdentity, &Path)>,
    config: Configured<'_>,
    master: &MasterKey,
) -> Result<Step> {
    let stored = sealed_of(row)?;
    let id = stored.keyserver_id;
    let refuse = |refusal| Ok(Step::Done(Checked::Refuse(refusal)));
    if let Some(pinned) = config.pin
        && pinned != id
    {
        return refuse(Refusal::IdentityMismatch {
            stored: id,
            configured: pinned,
        });
    }
    if let Some((file, _)) = file
        && file.keyserver_id != id
    {
        return refuse(Refusal::IdentityMismatch {
            stored: id,
            configured: file.keyserver_id,
        });
    }
    if let Ok((root, era)) = stored.open_with_era(master) {
        return Ok(Step::Done(Checked::Serve(
            KeyserverIdentity::new(id, root).sealed_in(era),
        )));
    }
    Ok(Step::Done(Checked::Refuse(Refusal::MasterKeyMismatch {
        id,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One refusal of every variant (the match fails to compile when one is added).
    fn one_of_each() -> Vec<Refusal> {
        let (a, b) = (KeyserverId::random(), KeyserverId::random());
        let file = PathBuf::from("/bootstrap/identity.json");
        let all = vec![
            Refusal::IdentityMismatch {
                stored: a,
                configured: b,
            },
            Refusal::BootstrapNotPinned {
                pinned: a,
                found: b,
                file: file.clone(),
            },
            Refusal::IdentityMissing,
            Refusal::MasterKeyMismatch { id: a },
            Refusal::BootstrapKeyMismatch { id: a, file },
        ];
        for r in &all {
            match r {
                Refusal::IdentityMismatch { .. }
                | Refusal::BootstrapNotPinned { .. }
                | Refusal::IdentityMissing
                | Refusal::MasterKeyMismatch { .. }
                | Refusal::BootstrapKeyMismatch { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_refusal_starts_with_its_reason_word_and_says_nothing_changed() {
        for refusal in one_of_each() {
            let message = refusal.to_string();
            assert!(
                message.starts_with(&format!("{}: ", refusal.reason())),
                "{message}"
            );
            if !matches!(
                refusal,
                Refusal::IdentityMissing | Refusal::MasterKeyMismatch { .. }
            ) {
                assert!(message.ends_with("nothing was changed"), "{message}");
            }
        }
    }
}
