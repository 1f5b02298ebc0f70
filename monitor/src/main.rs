//! `monitor`: command line -> settings -> run. Everything else lives in the modules.

use clap::Parser as _;
use monitor::{cli, run};

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_target(false)
        .init();
    match run::run(cli) {
        Ok(status) => status,
        Err(error) => {
            log::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
