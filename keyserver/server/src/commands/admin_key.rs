//! Administrator keys, which hold the backup key: generate one, and approve a recovery.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kss_crypto::backup::{self, AdminKey, AdminPublicKey, BackupKey};
use serde::{Deserialize, Serialize};

use kss_proto::v1 as pb;

use super::admin_client;
use crate::data_dir::{DataDir, check_private, write_new, write_private};

#[derive(Debug, Subcommand)]
pub enum AdminKeyCommand {
    /// Create an administrator key pair: PREFIX.key (secret, keep it offline) and
    /// PREFIX.pub (give it to whoever runs `kss create` / `kss save-backup-key`).
    Generate {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
        /// The holder's name, recorded in the backup key.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Issue a new backup key of the running keyserver (through its admin socket; the
    /// admin API's IssueBackupKey): for a lost backup key, or new holders or threshold.
    /// Backup keys issued before stay valid for their own holders.
    Issue(IssueArgs),
    /// As an administrator, approve recovering a keyserver from its backup key: writes
    /// an approval (a decryption share; it reveals neither your key nor your share).
    Approve {
        /// The backup key file.
        #[arg(long)]
        backup: PathBuf,
        /// Your administrator key (PREFIX.key).
        #[arg(long)]
        admin_key: PathBuf,
        /// Where to write the approval.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// A holder: NAME=HEX, the public key as `kss admin-key generate` writes it in
    /// PREFIX.pub. Repeat for each holder.
    #[arg(long = "holder", value_name = "NAME=HEX")]
    pub holders: Vec<String>,
    /// A holder's public key file (PREFIX.pub), as `kss save-backup-key --admin-key`.
    #[arg(long = "admin-key", value_name = "FILE")]
    pub admin_keys: Vec<PathBuf>,
    /// How many holders must approve a recovery (3 at least, unless --allow-weak).
    #[arg(long, default_value_t = crate::backup_key::MIN_THRESHOLD as u32)]
    pub threshold: u32,
    /// Allow fewer than 5 holders or a threshold below 3.
    #[arg(long)]
    pub allow_weak: bool,
    /// Where to write the backup key (must not exist).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: PathBuf,
}

/// `kss backup issue`: the running server builds the backup key from its root secret.
pub async fn issue(args: IssueArgs, data_dir: &DataDir) -> Result<()> {
    let mut holders = args
        .holders
        .iter()
        .map(|h| {
            let (name, key) = h
                .split_once('=')
                .with_context(|| format!("--holder {h:?}: expected NAME=HEX"))?;
            Ok(pb::BackupHolder {
                name: name.to_string(),
                public_key: key.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for path in &args.admin_keys {
        let (name, key) = read_admin_public(path)?;
        holders.push(pb::BackupHolder {
            name,
            public_key: key.to_hex(),
        });
    }
    if args.out.exists() {
        bail!("{} exists already; nothing was issued", args.out.display());
    }
    let mut admin = admin_client::connect(data_dir).await.ok_or_else(|| {
        anyhow::anyhow!(
            "no keyserver is running on {} (its admin socket answers nothing): start `kss \
             serve`, or use `kss save-backup-key` with the master key",
            data_dir.root.display()
        )
    })?;
    let issued = admin
        .issue_backup_key(pb::IssueBackupKeyRequest {
            holders,
            threshold: args.threshold,
            allow_weak: args.allow_weak,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    write_new(&args.out, issued.backup_json.as_bytes())?;
    println!(
        "backup key of keyserver {} written to {} ({} of {} holders restore it)",
        issued.keyserver_id,
        args.out.display(),
        issued.threshold,
        issued.holders
    );
    Ok(())
}

/// The public half of an administrator key, as a file.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminPublicFile {
    pub format: String,
    pub name: String,
    pub public_key: String,
}

const PUBLIC_FORMAT: &str = "kss-admin-public-key/v1";

pub fn run_admin_key(cmd: AdminKeyCommand) -> Result<()> {
    match cmd {
        AdminKeyCommand::Generate { out, name } => {
            let key = AdminKey::generate();
            let secret = with_suffix(&out, "key");
            let public = with_suffix(&out, "pub");
            let file = AdminPublicFile {
                format: PUBLIC_FORMAT.into(),
                name,
                public_key: key.public().to_hex(),
            };
            write_private(&secret, key.to_hex().as_bytes())?;
            write_new(&public, serde_json::to_string_pretty(&file)?.as_bytes())?;
            println!("secret key: {} (keep it offline)", secret.display());
            println!("public key: {}", public.display());
            Ok(())
        }
    }
}

pub fn run_backup(cmd: BackupCommand, data_dir: &DataDir) -> Result<()> {
    match cmd {
        BackupCommand::Issue(args) => crate::runtime::block_on(issue(args, data_dir)),
        BackupCommand::Approve {
            backup,
            admin_key,
            out,
        } => {
            let backup = read_backup(&backup)?;
            let key = read_admin_key(&admin_key)?;
            let approval = backup::approve(&backup, &key)
                .with_context(|| format!("approving with {}", admin_key.display()))?;
            write_new(&out, approval.to_json().as_bytes())?;
            println!(
                "approval written to {} (keyserver {}, {} approvals needed)",
                out.display(),
                backup.keyserver_id(),
                backup.threshold()
            );
            Ok(())
        }
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

pub fn read_backup(path: &Path) -> Result<BackupKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    BackupKey::from_json(&text)
        .with_context(|| format!("{} is not a kss backup key", path.display()))
}

pub fn read_admin_key(path: &Path) -> Result<AdminKey> {
    check_private(path)?;
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    AdminKey::from_hex(text.trim())
        .with_context(|| format!("{} is not an administrator key", path.display()))
}

/// Reads a holder's public key file.
pub fn read_admin_public(path: &Path) -> Result<(String, AdminPublicKey)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: AdminPublicFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an administrator public key file", path.display()))?;
    if file.format != PUBLIC_FORMAT {
        anyhow::bail!(
            "{}: format '{}', expected '{PUBLIC_FORMAT}'",
            path.display(),
            file.format
        );
    }
    let key = AdminPublicKey::from_hex(&file.public_key)
        .with_context(|| format!("{}: public_key", path.display()))?;
    Ok((file.name, key))
}
