use std::process::ExitCode;

use clap::Parser;
use kss_server::cli::{Cli, Command};
use kss_server::policy_cmd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(command) => policy_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
