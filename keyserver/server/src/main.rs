use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use kss_server::cli::{
    Cli, Command, EnrollmentCommand, InstanceCommand, ProfileCommand, QuotaCommand,
};
use kss_server::commands::{admin_key, audit, cluster, create, policy, profiles, quota, state};
use kss_server::data_dir::DataDir;
use kss_server::runtime::block_on;
use kss_server::{logging, serve};
use kss_store::Store;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
fn run(cli: Cli) -> Result<()> {
    let Cli {
        command,
        data,
        log_format,
    } = cli;
    logging::init(log_format, matches!(command, Command::Serve(_)));
    let data_dir = data.data_dir();
    let data_dir = &data_dir;
    match command {
        Command::Serve(args) => {
            if args.dev {
                // Quick start: `kss create` on the spot (unless there is an identity), its
                // backup key held by one generated administrator key.
                with_store(data_dir, async |store| {
                    create::create_dev_identity(store, data_dir).await
                })?;
            }
            block_on(serve::run(*args, &data))
        }
        Command::Policy(command) => policy::run(command, data_dir),
        Command::AdminKey(command) => admin_key::run_admin_key(command),
        Command::Backup(command) => admin_key::run_backup(command, data_dir),
        Command::Client(command) => block_on(kss_client::cli::run(command)),
        Command::Loadgen(args) => block_on(kss_client::loadgen::loadgen(args)).map(drop),
        Command::Flood(args) => block_on(kss_client::flood::flood(args)).map(drop),
        Command::Initialize => block_on(cluster::initialize(data_dir)),
        Command::CloneDb { new_uri } => block_on(cluster::clone_db(data_dir, &new_uri)),
        Command::Profile(ProfileCommand::List { json }) => block_on(profiles::list(data_dir, json)),
        Command::Profile(ProfileCommand::Show { profile, json }) => {
            block_on(profiles::show(data_dir, &profile, json))
        }
        Command::Profile(ProfileCommand::Revoke {
            profile,
            device,
            reason,
        }) => block_on(profiles::revoke(
            data_dir,
            &profile,
            device.as_deref(),
            &reason,
        )),
        Command::Enrollment(EnrollmentCommand::Create {
            uses,
            ttl,
            note,
            json,
        }) => {
            let ttl = profiles::parse_ttl(&ttl)?;
            block_on(profiles::create_enrollment(
                data_dir, uses, ttl, &note, json,
            ))
        }
        Command::Enrollment(EnrollmentCommand::List { json }) => {
            block_on(profiles::list_enrollments(data_dir, json))
        }
        Command::Create(args) => with_store(data_dir, async |store| {
            create::create(args, store, data_dir).await
        }),
        Command::SaveBackupKey(args) => with_store(data_dir, async |store| {
            create::save_backup_key(args, store, data_dir).await
        }),
        Command::RecoveryIngestKey(args) => with_store(data_dir, async |store| {
            create::recovery_ingest_key(args, store, data_dir).await
        }),
        Command::Enable => with_store(data_dir, async |store| {
            state::set_enabled(store, data_dir, true).await
        }),
        Command::Disable => with_store(data_dir, async |store| {
            state::set_enabled(store, data_dir, false).await
        }),
        Command::Status { json } => with_store(data_dir, async |store| {
            state::status(store, data_dir, json).await
        }),
        Command::Quota(QuotaCommand::List { all, json }) => with_store(data_dir, async |store| {
            quota::list(store, data_dir, all, json).await
        }),
        Command::Quota(QuotaCommand::Clear { profile }) => with_store(data_dir, async |store| {
            quota::clear(store, data_dir, profile.as_deref()).await
        }),
        Command::Audit(args) => with_store(data_dir, async |store| {
            audit::run(store, data_dir, &args).await
        }),
        Command::Instance(InstanceCommand::List { json }) => {
            with_store(data_dir, async |store| cluster::list(store, json).await)
        }
    }
}

/// Runs `command` on the data directory's database.
fn with_store(
    data_dir: &DataDir,
    command: impl AsyncFnOnce(&dyn Store) -> Result<()>,
) -> Result<()> {
    block_on(async {
        let store = data_dir.open_store().await?;
        command(store.as_ref()).await
    })
}
