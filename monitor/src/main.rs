//! `monitor`: command line -> settings -> run. Everything else lives in the modules.

mod agent;
mod cli;
mod collect;
mod export;
mod model;
mod preflight;
mod probes;
mod run;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_target(false)
        .init();
    match run::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
