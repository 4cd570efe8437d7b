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
//! | the configured keyserver, not opened by the master key | absent, or not opened by it either | any | refused: `MasterKeyMismatch` |
//! | the configured keyserver, not opened by the master key | same ID, opened by the master key, its root proven the database's | any | resealed (see below), then served |
//! | the configured keyserver, not opened by the master key | same ID, opened by the master key, its root not the database's | any | refused: `IdentityMismatch` (nothing written) |
//! | the configured keyserver, not opened by the master key | same ID, opened by the master key, nothing in the database to prove it by | any | refused: `MasterKeyMismatch` (nothing written) |
//!
//! **Reseal after a lost master key.** Neither the database nor the bootstrap file is
//! trusted to say that the file's root secret is the database's: it is proven by the
//! database's MACed rows, which only that root could have written: one profile row
//! (`RootSecret::row_key`), else the policy version in force, else the audit chain (its
//! MACed head and checkpoints, `RootSecret::audit_key`) verifying under the file's root.
//! A database with MACed rows none of which verifies is another root's (refused). A
//! database with no MACed row at all is resealed only if it holds no profile, no policy
//! version and no audit row either: then no row depends on the root, and storing the file's
//! is what bootstrapping an empty database does; rows without a MAC (a database of before
//! row MACs, or rows forged with their MAC stripped) prove nothing and are refused.
//! The new seal replaces the old one by a compare-and-swap on the old sealed bytes
//! ([`Store::reseal_identity`]): of instances resealing at once one swaps, the others
//! find the new seal and open it. The swap is recorded in the audit log (actor: the
//! server) and logged.
//!
//! The era of the new seal ([`Era`], what the seal says of the rows beside it) is always
//! [`Era::ChainStarted`], the strictest: the old seal's era cannot be read (its master key
//! is lost), and the database cannot be asked (whoever can write it could strip its chain
//! or MACs to get rows adopted or a chain restarted over edited rows). The file's own seal
//! is stored as it is when it is of that era (what the operator writes), else the root is
//! sealed anew in it. A database of before the audit chain (audit rows, no chain) then
//! fails its audit check at start-up instead of being adopted.
//!
//! A refusing instance serves no workstation; its admin API answers FAILED_PRECONDITION
//! with the [`Refusal`] (its message, and its kind as a typed `kss.v1.Refusal` detail),
//! and it checks again every [`RECHECK_INTERVAL`] (the database may be recovered, the
//! master key's Secret fixed, the bootstrap Secret created).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kss_crypto::identity::{Era, SealedIdentity};
use kss_crypto::ids::KeyserverId;
use kss_crypto::seal::MasterKey;
use kss_store::{AuditFilter, ChainVerdict, Identity, Store, StoreError};
use tracing::{error, info};

use crate::audit_log::{self, Actor, ChainKey, admin_record};
use crate::clock::now_ms;
use crate::data_dir::DataDir;
use crate::identity::{KeyserverIdentity, identity_row, sealed_of};
use crate::integrity::{policy_verifies, profile_verifies};

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
    #[error(
        "IdentityMismatch: the master key cannot open keyserver {id}'s secret in the database, \
         and the bootstrap identity {} has its ID but not its root secret: {evidence} of the \
         database, none verifies under the bootstrap identity's root; nothing was changed",
        file.display()
    )]
    BootstrapRootMismatch {
        id: KeyserverId,
        file: PathBuf,
        /// What was checked, e.g. "3 MACed profile row(s)".
        evidence: String,
    },
    #[error(
        "MasterKeyMismatch: the master key cannot open keyserver {id}'s secret in the database, \
         and nothing proves that the bootstrap identity {} holds it (the database holds \
         profiles, policy versions or audit records, none with a MAC); nothing was changed",
        file.display()
    )]
    ResealUnproven { id: KeyserverId, file: PathBuf },
}

impl Refusal {
    /// Which refusal this is, without its details (what the admin API reports as a
    /// `kss.v1.RefusalReason`, see [`crate::contracts`]).
    pub fn kind(&self) -> RefusalKind {
        match self {
            // A bootstrap file of another keyserver than the pin, or with the database's ID
            // but another root: the configured identity is not the database's.
            Refusal::IdentityMismatch { .. }
            | Refusal::BootstrapNotPinned { .. }
            | Refusal::BootstrapRootMismatch { .. } => RefusalKind::IdentityMismatch,
            Refusal::IdentityMissing => RefusalKind::IdentityMissing,
            // The database's secret stays sealed with a master key this instance lacks.
            Refusal::MasterKeyMismatch { .. } | Refusal::ResealUnproven { .. } => {
                RefusalKind::MasterKeyMismatch
            }
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
    /// This instance's name, for the audit record of a reseal.
    pub instance_id: &'a str,
}

/// Decides whether this instance serves, storing the bootstrap identity into an empty
/// database, or resealing the stored one (see the module docs). The master key and the
/// bootstrap file are read anew at every check. An error is a check that could not be
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
    // A concurrent bootstrap or reseal changes the row: compared again, a bounded number
    // of times (each change is another instance's success).
    for _ in 0..8 {
        let row = store
            .identity()
            .await
            .context("reading the keyserver identity")?;
        let step = match row {
            Some(row) => compare(store, &row, file, config, &master).await?,
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
async fn compare(
    store: &dyn Store,
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
    // The stored secret is sealed with another master key: a reseal needs a bootstrap
    // identity of the same keyserver that this master key opens.
    let Some((file, path)) = file else {
        return refuse(Refusal::MasterKeyMismatch { id });
    };
    let Ok((root, file_era)) = file.open_with_era(master) else {
        return refuse(Refusal::MasterKeyMismatch { id });
    };
    let candidate = KeyserverIdentity::new(id, root);
    let proof = match prove_root(store, &candidate).await? {
        Proof::Proven(proof) => proof,
        Proof::Against(evidence) => {
            return refuse(Refusal::BootstrapRootMismatch {
                id,
                file: path.to_path_buf(),
                evidence,
            });
        }
        Proof::Unprovable => {
            return refuse(Refusal::ResealUnproven {
                id,
                file: path.to_path_buf(),
            });
        }
    };
    // Sealed in the chain era (see the module docs): the file's own bytes if they are.
    let new_seal = match file_era {
        Era::ChainStarted => file.sealed_root.clone(),
        _ => SealedIdentity::seal(&id, candidate.root(), master).sealed_root,
    };
    let swapped = store
        .reseal_identity(&row.keyserver_id, &row.sealed_root, &new_seal)
        .await
        .context("resealing the keyserver identity")?;
    if !swapped {
        // Another instance resealed (or the row changed) first: open what it stored.
        return Ok(Step::Changed);
    }
    let identity = candidate.sealed_in(Era::ChainStarted);
    info!(
        keyserver_id = %id, proof,
        "keyserver {id}'s identity resealed with a new master key (the bootstrap identity's \
         root secret is the database's: {proof})"
    );
    store.set_audit_key(identity.chain_key());
    let record = admin_record(
        config.instance_id,
        &Actor::Server,
        "identity_reseal",
        None,
        serde_json::json!({
            "what": "identity resealed with a new master key",
            "keyserver_id": id.to_string(),
            "proof": proof,
            "bootstrap_identity": path.display().to_string(),
        }),
        0,
    );
    if let Err(e) = audit_log::record(store, record).await {
        // The reseal stands (it is what the master key's holder asked for); start-up
        // checks the audit chain next, and says what is wrong with it.
        error!(error = %e, "the identity was resealed, but its audit record could not be written");
    }
    Ok(Step::Done(Checked::Serve(identity)))
}

/// Whether the database's rows prove a root secret theirs.
#[derive(Debug)]
enum Proof {
    /// At least one MACed row verifies: which.
    Proven(&'static str),
    /// MACed rows exist and none verifies (what was checked).
    Against(String),
    /// No MACed row, but rows that would depend on the root.
    Unprovable,
}

/// Profiles read to find a MACed one.
const PROOF_PROFILES: u32 = 100;

/// Checks `candidate`'s root against the database's MACed rows: a page of profiles, the
/// policy version in force, the audit chain (see the module docs). An empty database
/// (no profile, policy version or audit row) proves nothing and loses nothing: proven.
async fn prove_root(store: &dyn Store, candidate: &KeyserverIdentity) -> Result<Proof> {
    let key = candidate.row_key();
    let profiles = store
        .list_profiles(None, PROOF_PROFILES)
        .await
        .context("reading profiles")?;
    let maced: Vec<_> = profiles.iter().filter(|p| !p.mac.is_empty()).collect();
    if maced.iter().any(|p| profile_verifies(key, p)) {
        return Ok(Proof::Proven("a profile row verifies under its root"));
    }
    let mut against = Vec::new();
    if !maced.is_empty() {
        against.push(format!("{} MACed profile row(s)", maced.len()));
    }
    let policy = store
        .policy(None)
        .await
        .context("reading the policy version in force")?;
    if let Some(policy) = policy.as_ref().filter(|p| !p.mac.is_empty()) {
        if policy_verifies(key, policy) {
            return Ok(Proof::Proven(
                "the policy version in force verifies under its root",
            ));
        }
        against.push("the MACed policy version in force".to_string());
    }
    // A chain that has not started (over rows or not) is no evidence either way here.
    store.set_audit_key(Arc::new(ChainKey {
        key: Arc::new(candidate.root().audit_key(&candidate.id)),
        started: false,
    }));
    match store
        .verify_audit()
        .await
        .context("verifying the audit chain")?
    {
        ChainVerdict::Intact(report) if report.started => {
            return Ok(Proof::Proven("the audit chain verifies under its root"));
        }
        ChainVerdict::Intact(_) => {}
        ChainVerdict::Tampered(_) => against.push("the MACed audit chain".to_string()),
    }
    if !against.is_empty() {
        return Ok(Proof::Against(against.join(", ")));
    }
    let audit_rows = store
        .audit(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .context("reading the audit log")?;
    let empty = profiles.is_empty() && policy.is_none() && audit_rows.is_empty();
    Ok(match empty {
        true => Proof::Proven("the database holds no profile, policy version or audit row"),
        false => Proof::Unprovable,
    })
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
            Refusal::BootstrapKeyMismatch {
                id: a,
                file: file.clone(),
            },
            Refusal::BootstrapRootMismatch {
                id: a,
                file: file.clone(),
                evidence: "1 MACed profile row(s)".into(),
            },
            Refusal::ResealUnproven { id: a, file },
        ];
        for r in &all {
            match r {
                Refusal::IdentityMismatch { .. }
                | Refusal::BootstrapNotPinned { .. }
                | Refusal::IdentityMissing
                | Refusal::MasterKeyMismatch { .. }
                | Refusal::BootstrapKeyMismatch { .. }
                | Refusal::BootstrapRootMismatch { .. }
                | Refusal::ResealUnproven { .. } => {}
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
