use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use kss_server::cli::{
    Cli, Command, EnrollmentCommand, InstanceCommand, PolicyCommand, ProfileCommand, QuotaCommand,
};
use kss_server::commands::{
    self, admin_key, audit, cluster, create, profiles, quota, server_policy, state,
};
use kss_server::{logging, policy_cmd, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let command = match cli.command {
        // Offline: no runtime, no database.
        Command::Policy(PolicyCommand::Dump { file, current, .. }) if current || !file.exists() => {
            return block_on(async {
                let store = commands::open_store(&cli.data.data_dir()).await?;
                server_policy::dump_current(store.as_ref(), &file).await
            });
        }
        Command::Policy(PolicyCommand::Load { file, wait }) => {
            let wait = wait
                .map(|secs| {
                    std::time::Duration::try_from_secs_f64(secs)
                        .map_err(|_| anyhow::anyhow!("--wait {secs}: give seconds, 0 or more"))
                })
                .transpose();
            return block_on(async {
                let data_dir = cli.data.data_dir();
                let store = commands::open_store(&data_dir).await?;
                server_policy::load(store.as_ref(), &data_dir, &file, wait?).await
            });
        }
        Command::Policy(command) => return policy_cmd::run(command),
        Command::AdminKey(command) => return admin_key::run_admin_key(command),
        Command::Backup(command) => return admin_key::run_backup(command),
        other => other,
    };
    logging::init(&cli.log_format, matches!(command, Command::Serve(_)));
    let data_dir = cli.data.data_dir();
    block_on(async move {
        match command {
            Command::Serve(args) => serve::run(*args, &cli.data).await,
            Command::Client(command) => kss_client::cli::run(command).await,
            Command::Loadgen(args) => kss_client::loadgen::loadgen(args).await.map(drop),
            Command::Flood(args) => kss_client::flood::flood(args).await.map(drop),
            Command::Initialize => cluster::initialize(&data_dir).await,
            Command::CloneDb { new_uri } => cluster::clone_db(&data_dir, &new_uri).await,
            Command::Profile(ProfileCommand::List { json }) => {
                profiles::list(&data_dir, json).await
            }
            Command::Profile(ProfileCommand::Show { profile, json }) => {
                profiles::show(&data_dir, &profile, json).await
            }
            Command::Profile(ProfileCommand::Revoke {
                profile,
                device,
                reason,
            }) => profiles::revoke(&data_dir, &profile, device.as_deref(), &reason).await,
            Command::Enrollment(EnrollmentCommand::Create {
                uses,
                ttl,
                note,
                json,
            }) => {
                let ttl = profiles::parse_ttl(&ttl)?;
                profiles::create_enrollment(&data_dir, uses, ttl, &note, json).await
            }
            Command::Enrollment(EnrollmentCommand::List { json }) => {
                profiles::list_enrollments(&data_dir, json).await
            }
            command => {
                let store = commands::open_store(&data_dir).await?;
                let store = store.as_ref();
                match command {
                    Command::Create(args) => create::create(args, store, &data_dir).await,
                    Command::SaveBackupKey(args) => {
                        create::save_backup_key(args, store, &data_dir).await
                    }
                    Command::RecoveryIngestKey(args) => {
                        create::recovery_ingest_key(args, store, &data_dir).await
                    }
                    Command::Enable => state::set_enabled(store, &data_dir, true).await,
                    Command::Disable => state::set_enabled(store, &data_dir, false).await,
                    Command::Status { json } => state::status(store, &data_dir, json).await,
                    Command::Quota(QuotaCommand::List { all, json }) => {
                        quota::list(store, &data_dir, all, json).await
                    }
                    Command::Quota(QuotaCommand::Clear { profile }) => {
                        quota::clear(store, &data_dir, profile.as_deref()).await
                    }
                    Command::Audit(args) => audit::run(store, &data_dir, &args).await,
                    Command::Instance(InstanceCommand::List { json }) => {
                        cluster::list(store, json).await
                    }
                    _ => anyhow::bail!("unhandled command"),
                }
            }
        }
    })
}

fn block_on<F: std::future::Future<Output = Result<()>>>(future: F) -> Result<()> {
    // One TLS provider for the whole process (ring), before any TLS is set up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
