//! The `kss client …` subcommands.
//!
//! Exit codes: 0 success (for `decrypt`: approved), 2 `decrypt` denied, 1 any error (the
//! caller maps an `Err` from [`run`] to 1). `request` prints the decision as JSON and exits 0
//! whether approved or denied.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kss_crypto::{KeyserverId, Zeroizing};
use kss_proto::v1::RequestType;
use rand::RngCore;

use crate::connection::{KssClient, install_crypto_provider};
use crate::profile::{Profile, create_profile_file};
use crate::protocol::{DecryptOutcome, RequestSpec, ciphertext_id, encrypt_file_key};

/// The exit code of a denied `kss client decrypt`.
pub const DENIED_EXIT_CODE: i32 = 2;

/// How to reach the keyserver.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// The keyserver's address.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:7443")]
    pub endpoint: String,
    /// PEM file of the CA that issued the keyserver's certificate (the only trusted root).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// The name the keyserver's certificate must be valid for.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
}

impl ConnectArgs {
    /// Reads the CA file and connects.
    pub async fn connect(&self) -> anyhow::Result<KssClient> {
        let ca = std::fs::read(&self.ca)
            .with_context(|| format!("reading CA file {}", self.ca.display()))?;
        Ok(KssClient::connect(&self.endpoint, &ca, Some(&self.server_name)).await?)
    }
}

/// A request type, as the policy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestKind {
    /// decrypt
    #[value(name = "decrypt")]
    Decrypt,
    /// search
    #[value(name = "search")]
    Search,
    /// create_profile
    #[value(name = "create_profile", alias = "create-profile")]
    CreateProfile,
    /// create_location
    #[value(name = "create_location", alias = "create-location")]
    CreateLocation,
    /// rename
    #[value(name = "rename")]
    Rename,
    /// secure_export
    #[value(name = "secure_export", alias = "secure-export")]
    SecureExport,
    /// start_session
    #[value(name = "start_session", alias = "start-session")]
    StartSession,
    /// change_profile
    #[value(name = "change_profile", alias = "change-profile")]
    ChangeProfile,
}

impl From<RequestKind> for RequestType {
    fn from(kind: RequestKind) -> Self {
        match kind {
            RequestKind::Decrypt => RequestType::Decrypt,
            RequestKind::Search => RequestType::Search,
            RequestKind::CreateProfile => RequestType::CreateProfile,
            RequestKind::CreateLocation => RequestType::CreateLocation,
            RequestKind::Rename => RequestType::Rename,
            RequestKind::SecureExport => RequestType::SecureExport,
            RequestKind::StartSession => RequestType::StartSession,
            RequestKind::ChangeProfile => RequestType::ChangeProfile,
        }
    }
}

/// `kss client …`: act as a workstation against a keyserver.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Show the keyserver's id, whether it is enabled and its policy version (JSON); with
    /// --profile, that profile's ids and verification words (offline), to compare with
    /// what the administrator sees (`kss profile show`).
    Info {
        /// The keyserver's address.
        #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:7443")]
        endpoint: String,
        /// PEM file of the CA that issued the keyserver's certificate (required unless
        /// --profile).
        #[arg(long, value_name = "FILE", required_unless_present = "profile")]
        ca: Option<PathBuf>,
        /// The name the keyserver's certificate must be valid for.
        #[arg(long, value_name = "NAME", default_value = "localhost")]
        server_name: String,
        /// A profile file: show its ids and words instead (no connection).
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
    },
    /// Onboard a new profile and save it to a new file (mode 0600).
    Onboard {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The keyserver's id, as its administrator published it.
        #[arg(long, value_name = "ID")]
        keyserver_id: String,
        /// Where to write the profile (must not exist).
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// Display name of the profile (default: $USER@hostname).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// An enrollment token from the keyserver's administrator (`kss enrollment create`),
        /// when the keyserver requires one. The words of the profile are derived by the
        /// keyserver from its key set and checked here; none are chosen.
        #[arg(
            long,
            env = "KSS_ENROLLMENT_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        enrollment_token: Option<String>,
    },
    /// Encrypt a fresh random 32-byte file key to a profile: prints the key (hex) and writes
    /// the ciphertext. Offline.
    Encrypt {
        /// The profile file.
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// Where to write the ciphertext (binary).
        #[arg(long, value_name = "CT_FILE")]
        out: PathBuf,
        /// Encrypt this key (hex) instead of a random one.
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
    /// Decrypt a file key: prints it (hex) and exits 0 when approved; prints
    /// "denied: REASON" and exits 2 when denied.
    Decrypt {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The profile file.
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// The ciphertext file (binary, or hex text).
        #[arg(long, value_name = "CT_FILE")]
        ciphertext: PathBuf,
        /// A path of the file (authenticated metadata); repeatable.
        #[arg(long = "path", value_name = "P")]
        paths: Vec<String>,
        /// Mark the paths as partial (not fully verified) metadata.
        #[arg(long)]
        partial: bool,
        /// Send the profile registration along (for a keyserver recovered from backup).
        #[arg(long)]
        registration: bool,
        /// Print the outcome as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Ask for approval of a request; prints the decision as JSON (exit 0 either way).
    Request {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The profile file.
        #[arg(long, value_name = "FILE")]
        profile: PathBuf,
        /// The request type.
        #[arg(long = "type", value_name = "TYPE", value_enum)]
        request_type: RequestKind,
        /// A path (authenticated metadata); repeatable.
        #[arg(long = "path", value_name = "P")]
        paths: Vec<String>,
        /// Mark the paths as partial (not fully verified) metadata.
        #[arg(long)]
        partial: bool,
        /// A ciphertext file to send (decrypt); the reply's share is printed, not used.
        #[arg(long, value_name = "CT_FILE")]
        ciphertext: Option<PathBuf>,
        /// The cryptographic id (hex) (default for decrypt: SHA-256 of the ciphertext).
        #[arg(long, value_name = "HEX")]
        cryptographic_id: Option<String>,
        /// Send the profile registration along (for a keyserver recovered from backup).
        #[arg(long)]
        registration: bool,
    },
}

/// What a command ended with, for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// Done (exit 0).
    Success,
    /// A decrypt was denied (exit [`DENIED_EXIT_CODE`]).
    Denied,
}

/// Runs a command; a denied decrypt exits the process with [`DENIED_EXIT_CODE`] after
/// printing. Use [`execute`] to get the status instead.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match execute(cmd).await? {
        CommandStatus::Success => Ok(()),
        CommandStatus::Denied => {
            let _ = std::io::stdout().flush();
            std::process::exit(DENIED_EXIT_CODE)
        }
    }
}

/// Runs a command and says how it ended.
pub async fn execute(cmd: ClientCommand) -> anyhow::Result<CommandStatus> {
    install_crypto_provider();
    match cmd {
        ClientCommand::Info {
            profile: Some(path),
            ..
        } => {
            let profile = Profile::load(&path)?;
            println!(
                "{}",
                serde_json::json!({
                    "keyserver_id": profile.keyserver_id().to_string(),
                    "profile_id": profile.profile_id().to_string(),
                    "device_id": profile.device_id().to_string(),
                    "name": profile.name(),
                    "words": profile.words(),
                })
            );
        }
        ClientCommand::Info {
            endpoint,
            ca: Some(ca),
            server_name,
            profile: None,
        } => {
            let connect = ConnectArgs {
                endpoint,
                ca,
                server_name,
            };
            let info = connect.connect().await?.info().await?;
            println!("{}", serde_json::to_string(&info)?);
        }
        ClientCommand::Info {
            ca: None,
            profile: None,
            ..
        } => anyhow::bail!("--ca is required to reach the keyserver (or give --profile)"),
        ClientCommand::Onboard {
            connect,
            keyserver_id,
            profile,
            name,
            enrollment_token,
        } => {
            let keyserver_id: KeyserverId = keyserver_id
                .parse()
                .map_err(|e| anyhow::anyhow!("--keyserver-id: {e}"))?;
            let name = name.unwrap_or_else(default_profile_name);
            // The file is created (empty, mode 0600) first: an onboarding is not lost to a
            // path that cannot be written.
            let mut file = create_profile_file(&profile)?;
            let onboarded = async {
                let client = connect.connect().await?;
                anyhow::Ok(
                    client
                        .onboard(&keyserver_id, &name, enrollment_token.as_deref())
                        .await?,
                )
            }
            .await;
            let onboarded = match onboarded {
                Ok(onboarded) => onboarded,
                Err(e) => {
                    drop(file);
                    let _ = std::fs::remove_file(&profile);
                    return Err(e);
                }
            };
            onboarded.write_into(&mut file, &profile)?;
            println!(
                "{}",
                serde_json::json!({
                    "profile_id": onboarded.profile_id().to_hex(),
                    "device_id": onboarded.device_id().to_hex(),
                    "keyserver_id": onboarded.keyserver_id().to_hex(),
                    "name": onboarded.name(),
                    "profile": profile.display().to_string(),
                })
            );
        }
        ClientCommand::Encrypt { profile, out, key } => {
            let profile = Profile::load(&profile)?;
            let key = match key {
                Some(text) => Zeroizing::new(
                    hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("--key: not hex"))?,
                ),
                None => {
                    let mut key = Zeroizing::new(vec![0u8; 32]);
                    rand::rngs::OsRng.fill_bytes(&mut key);
                    key
                }
            };
            if key.is_empty() {
                anyhow::bail!("--key: empty");
            }
            let ciphertext = encrypt_file_key(&profile, &key);
            std::fs::write(&out, &ciphertext)
                .with_context(|| format!("writing ciphertext file {}", out.display()))?;
            println!("{}", hex::encode(&*key));
        }
        ClientCommand::Decrypt {
            connect,
            profile,
            ciphertext,
            paths,
            partial,
            registration,
            json,
        } => {
            let profile = Profile::load(&profile)?;
            let ciphertext = read_ciphertext(&ciphertext)?;
            let mut spec = RequestSpec::decrypt(ciphertext, &[]);
            spec.auth_meta = paths.into_iter().map(|p| (p, !partial)).collect();
            spec.include_registration = registration;
            let client = connect.connect().await?;
            let outcome = client.decrypt_with(&profile, spec).await?;
            match &outcome {
                DecryptOutcome::Approved { file_key, audit_id } => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "decision": "approved",
                                "file_key": hex::encode(&**file_key),
                                "audit_id": audit_id,
                            })
                        );
                    } else {
                        println!("{}", hex::encode(&**file_key));
                    }
                }
                DecryptOutcome::Denied { audit_id, .. } => {
                    let reason = outcome.reason_name().unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "decision": "denied",
                                "reason": reason,
                                "audit_id": audit_id,
                            })
                        );
                    } else {
                        println!("denied: {reason}");
                    }
                    return Ok(CommandStatus::Denied);
                }
            }
        }
        ClientCommand::Request {
            connect,
            profile,
            request_type,
            paths,
            partial,
            ciphertext,
            cryptographic_id,
            registration,
        } => {
            let profile = Profile::load(&profile)?;
            let mut spec = RequestSpec::new(request_type.into());
            spec.auth_meta = paths.into_iter().map(|p| (p, !partial)).collect();
            spec.include_registration = registration;
            if let Some(path) = ciphertext {
                let ct = read_ciphertext(&path)?;
                spec.cryptographic_id = ciphertext_id(&ct).to_vec();
                spec.ciphertext = Some(ct);
            }
            if let Some(id) = cryptographic_id {
                spec.cryptographic_id = hex::decode(id.trim())
                    .map_err(|_| anyhow::anyhow!("--cryptographic-id: not hex"))?;
            }
            let client = connect.connect().await?;
            let outcome = client.request(&profile, &spec).await?;
            println!("{}", outcome.to_json());
        }
    }
    Ok(CommandStatus::Success)
}

/// Reads a ciphertext file: binary, or hex text (a binary ciphertext is never valid hex: its
/// first byte carries the point-compression flag).
pub fn read_ciphertext(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading ciphertext file {}", path.display()))?;
    if let Ok(text) = std::str::from_utf8(&bytes)
        && let Ok(decoded) = hex::decode(text.trim())
        && !decoded.is_empty()
    {
        return Ok(decoded);
    }
    Ok(bytes)
}

/// `$USER@hostname`.
pub fn default_profile_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}
