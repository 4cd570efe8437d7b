//! Command-line interface of `kss`.

use clap::{Parser, Subcommand};

use crate::commands::admin_key::{AdminKeyCommand, BackupCommand};
use crate::commands::audit::AuditArgs;
use crate::commands::create::{CreateArgs, RecoveryArgs, SaveBackupArgs};
use crate::commands::policy::PolicyCommand;
use crate::data_dir::DataDirArgs;
use crate::logging::LogFormat;
use crate::serve::ServeArgs;

/// kss — a key shard server: approves M-of-N requests automatically, as a YAML policy allows.
#[derive(Debug, Parser)]
#[command(name = "kss", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Log format of `kss serve` (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the keyserver: gRPC over TLS for workstations, /metrics, an admin socket.
    Serve(Box<ServeArgs>),
    /// Create the keyserver's identity (its ID is printed) and write its backup key.
    Create(CreateArgs),
    /// Join this data directory to an existing cluster (--db-uri) as one more instance of
    /// its keyserver. Needs the cluster's master key (--master-key-file, or
    /// <data-dir>/master.key), copied from the first instance or mounted from a secret.
    Initialize,
    /// Copy this standalone keyserver into an empty cluster database (same ID, profiles,
    /// policy versions, quotas, audit); this data directory then uses it. Stop the server
    /// first.
    CloneDb {
        /// The cluster database: mysql://user:pass@host:port/db or
        /// mysql:host=H,port=P,user=U,password=W,database=D.
        new_uri: String,
    },
    /// Instances of this keyserver.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Write a fresh backup key of this keyserver.
    SaveBackupKey(SaveBackupArgs),
    /// Restore a keyserver's identity from its backup key and its holders' approvals
    /// into an empty database (same keyserver ID).
    RecoveryIngestKey(RecoveryArgs),
    /// Let the policy decide requests again.
    Enable,
    /// Deny every request (reason: disabled) until `kss enable`.
    Disable,
    /// Keyserver ID, enabled, policy version, server uptime, counts.
    Status {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Policy files, and the policy in the keyserver's database.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Throttle counters.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// The audit log: recent decisions and administrative actions (newest first);
    /// `verify` checks its chain, `prune` drops old rows.
    Audit(AuditArgs),
    /// Onboarded profiles: list, show (with their verification words), revoke.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Enrollment tokens: what onboarding needs with `kss serve --require-enrollment-token`.
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Administrator keys (holders of the backup key).
    #[command(subcommand)]
    AdminKey(AdminKeyCommand),
    /// Backup keys: issue one through the running server, approve a recovery.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// A workstation client: onboard, encrypt, decrypt, request.
    #[command(subcommand)]
    Client(kss_client::cli::ClientCommand),
    /// Drive signed decrypt requests at a keyserver and report throughput and latency.
    Loadgen(kss_client::loadgen::LoadgenArgs),
    /// Send hostile traffic (TLS handshakes, or refused requests at the stream limits) at a
    /// keyserver, to check its transport bounds from outside.
    Flood(kss_client::flood::FloodArgs),
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Every instance: online or offline (no heartbeat for 5 s, or stopped), the policy
    /// version it applied, its endpoint.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Every onboarded profile: id, device, state (active, revoked, TAMPERED), name.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One profile, with its verification words (derived from its key set).
    Show {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a profile, or one device of it: its requests are denied (REVOKED) on every
    /// instance within the poll interval, and its registration token never re-registers it.
    Revoke {
        profile: String,
        #[arg(long)]
        device: Option<String>,
        /// Recorded with the revocation.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Create an enrollment token (printed once on standard output; only its SHA-256 is
    /// stored).
    Create {
        /// How many onboardings it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 3600, 30m, 12h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        json: bool,
    },
    /// Every enrollment token: uses left, expiry (never the token).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Profiles at quota (with --all: every counter).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Reset throttle counters to zero, of one profile or of all.
    Clear {
        #[arg(long)]
        profile: Option<String>,
    },
}
