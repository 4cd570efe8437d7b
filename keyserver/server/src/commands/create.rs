//! `kss create`, `kss save-backup-key`, `kss recovery-ingest-key`: the keyserver's
//! identity and its backup key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use kss_crypto::backup::{self, AdminKey, AdminPublicKey, Approval};
use kss_store::{Store, StoreError};

use super::admin_key::{read_admin_public, read_backup};
use crate::audit_log::{self, Actor, admin_record};
use crate::backup_key::{BackupRequestError, check_holders, issue_backup};
use crate::clock::now_ms;
use crate::data_dir::{DataDir, write_new, write_private};
use crate::identity::KeyserverIdentity;

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// An administrator's public key file (from `kss admin-key generate`); one per
    /// holder of the backup key. 5 holders at least, unless --ignore-security-checks.
    #[arg(long = "admin-key", value_name = "FILE")]
    pub admin_keys: Vec<PathBuf>,
    /// How many holders must approve a recovery (3 at least, unless
    /// --ignore-security-checks).
    #[arg(long, default_value_t = crate::backup_key::MIN_THRESHOLD)]
    pub threshold: usize,
    /// Allow fewer than 5 holders or a threshold below 3 (e.g. for a test setup). With no
    /// --admin-key at all, one administrator key is generated beside the backup key.
    #[arg(long)]
    pub ignore_security_checks: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Where to write the backup key (default: <data-dir>/backup-key.json). Copy it off
    /// this machine: with the holders' approvals it restores this keyserver.
    #[arg(long)]
    pub backup_path: Option<PathBuf>,
    #[command(flatten)]
    pub backup: BackupArgs,
}

/// The backup's holders from their public key files, after the checks of
/// [`check_holders`].
fn holders(args: &BackupArgs, backup_path: &Path) -> Result<Vec<(String, AdminPublicKey)>> {
    let mut holders = args
        .admin_keys
        .iter()
        .map(|p| read_admin_public(p))
        .collect::<Result<Vec<_>>>()?;
    if holders.is_empty() && !args.ignore_security_checks {
        // No --admin-key at all: the weak-setup refusal, which says what to give.
        return Err(weak_hint(BackupRequestError::Weak {
            holders: 0,
            threshold: args.threshold,
        }));
    }
    if holders.is_empty() {
        let key = AdminKey::generate();
        let mut path = backup_path.as_os_str().to_owned();
        path.push(".admin.key");
        let path = PathBuf::from(path);
        write_private(&path, key.to_hex().as_bytes())?;
        eprintln!(
            "warning: --ignore-security-checks without --admin-key: one administrator key \
             was generated at {}; it alone can restore this keyserver from the backup key",
            path.display()
        );
        holders.push(("generated".into(), key.public()));
    }
    check_holders(&holders, args.threshold, args.ignore_security_checks).map_err(weak_hint)?;
    Ok(holders)
}

/// The CLI's wording of a refused setup: how to give holders, or to accept a weak one.
fn weak_hint(e: BackupRequestError) -> anyhow::Error {
    match e {
        BackupRequestError::Weak { .. } => anyhow::anyhow!(
            "{e} (give five --admin-key files, made with `kss admin-key generate`). Pass \
             --ignore-security-checks to accept a weaker setup."
        ),
        BackupRequestError::BadThreshold { .. } => anyhow::anyhow!("--{e}"),
        e => anyhow::anyhow!("--admin-key: {e}"),
    }
}

fn write_backup(
    identity: &KeyserverIdentity,
    holders: &[(String, AdminPublicKey)],
    args: &BackupArgs,
    path: &Path,
) -> Result<()> {
    let backup = issue_backup(
        identity,
        holders,
        args.threshold,
        args.ignore_security_checks,
    )
    .context("creating the backup key")?;
    write_new(path, backup.to_json().as_bytes())
}

pub async fn create(args: CreateArgs, store: &dyn Store, data_dir: &DataDir) -> Result<()> {
    if let Some(existing) = store.identity().await? {
        bail!(
            "{} already holds keyserver {}; nothing was changed",
            data_dir.root.display(),
            existing.keyserver_id
        );
    }
    let backup_path = args
        .backup_path
        .clone()
        .unwrap_or_else(|| data_dir.root.join("backup-key.json"));
    let holders = holders(&args.backup, &backup_path)?;
    let master = data_dir.read_or_create_master_key()?;
    let identity = KeyserverIdentity::generate();
    // The backup first: an identity must never exist without one.
    write_backup(&identity, &holders, &args.backup, &backup_path)?;
    store_identity(store, data_dir, &identity, &master).await?;
    // The chain starts here, with the creation as its first row.
    audit_cli(
        store,
        &identity,
        "create",
        serde_json::json!({"keyserver_id": identity.id.to_string(),
                           "backup_threshold": args.backup.threshold,
                           "backup_holders": holders.len()}),
    )
    .await?;
    println!("{}", identity.id);
    eprintln!(
        "keyserver {} created; backup key at {} ({} of {} holders restore it). \
         Onboard workstations with --keyserver-id {}",
        identity.id,
        backup_path.display(),
        args.backup.threshold,
        holders.len(),
        identity.id
    );
    Ok(())
}

/// Records an administrative action of the CLI, keyed by `identity`.
async fn audit_cli(
    store: &dyn Store,
    identity: &KeyserverIdentity,
    action: &str,
    detail: serde_json::Value,
) -> Result<()> {
    store.set_audit_key(identity.chain_key());
    let record = admin_record("cli", &Actor::cli(), action, None, detail, 0);
    audit_log::record(store, record)
        .await
        .with_context(|| format!("{action}: done, but its audit record could not be written"))?;
    Ok(())
}

/// Stores the sealed identity; with --db-uri, saves the database address in the data
/// directory for later commands.
async fn store_identity(
    store: &dyn Store,
    data_dir: &DataDir,
    identity: &KeyserverIdentity,
    master: &kss_crypto::seal::MasterKey,
) -> Result<()> {
    match store
        .create_identity(&identity.sealed(master, now_ms()))
        .await
    {
        Ok(()) => match &data_dir.db_uri {
            Some(uri) => data_dir.save_db_uri(uri),
            None => Ok(()),
        },
        Err(StoreError::AlreadyExists(_)) => {
            bail!("the database already holds a keyserver identity; nothing was changed")
        }
        Err(e) => Err(e).context("storing the identity"),
    }
}

/// `kss serve --dev`: unless the database holds an identity, one whose backup key is held
/// by one generated administrator key, in the data directory.
pub async fn create_dev_identity(store: &dyn Store, data_dir: &DataDir) -> Result<()> {
    if store.identity().await?.is_some() {
        return Ok(());
    }
    let args = CreateArgs {
        backup_path: Some(data_dir.root.join("backup-key.json")),
        backup: BackupArgs {
            admin_keys: Vec::new(),
            threshold: 1,
            ignore_security_checks: true,
        },
    };
    create(args, store, data_dir).await
}

#[derive(Debug, Clone, Args)]
pub struct SaveBackupArgs {
    /// Where to write the new backup key (must not exist).
    pub path: PathBuf,
    #[command(flatten)]
    pub backup: BackupArgs,
}

pub async fn save_backup_key(
    args: SaveBackupArgs,
    store: &dyn Store,
    data_dir: &DataDir,
) -> Result<()> {
    let master = data_dir.read_master_key()?;
    let identity = KeyserverIdentity::load(store, &master).await?;
    let holders = holders(&args.backup, &args.path)?;
    write_backup(&identity, &holders, &args.backup, &args.path)?;
    audit_cli(
        store,
        &identity,
        "backup_key_save",
        serde_json::json!({"path": args.path.display().to_string(),
                           "backup_threshold": args.backup.threshold,
                           "backup_holders": holders.len()}),
    )
    .await?;
    println!(
        "backup key of keyserver {} written to {} ({} of {} holders restore it)",
        identity.id,
        args.path.display(),
        args.backup.threshold,
        holders.len()
    );
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct RecoveryArgs {
    /// The backup key file.
    pub path: PathBuf,
    /// Approvals from the backup key's holders (`kss backup approve`); as many as its
    /// threshold.
    #[arg(long = "approval", value_name = "FILE", required = true)]
    pub approvals: Vec<PathBuf>,
}

/// Restores the identity into an empty database: same keyserver ID, same root secret, so
/// every profile's keyserver share is derived again.
pub async fn recovery_ingest_key(
    args: RecoveryArgs,
    store: &dyn Store,
    data_dir: &DataDir,
) -> Result<()> {
    let backup = read_backup(&args.path)?;
    if let Some(existing) = store.identity().await? {
        bail!(
            "the database already holds keyserver {}; recovery restores into an empty \
             database only (nothing was changed)",
            existing.keyserver_id
        );
    }
    let approvals = args
        .approvals
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Approval::from_json(&text)
                .with_context(|| format!("{} is not a backup approval", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let root = backup::recover(&backup, &approvals).context("recovering the root secret")?;
    let identity = KeyserverIdentity::new(*backup.keyserver_id(), root);
    let master = data_dir.read_or_create_master_key()?;
    store_identity(store, data_dir, &identity, &master).await?;
    audit_cli(
        store,
        &identity,
        "recovery",
        serde_json::json!({"keyserver_id": identity.id.to_string(),
                           "approvals": approvals.len()}),
    )
    .await?;
    println!("{}", identity.id);
    eprintln!(
        "keyserver {} recovered from {}. Load the policy (`kss policy load`); onboarded \
         workstations re-register themselves with their profile tokens.",
        identity.id,
        args.path.display()
    );
    Ok(())
}
