//! `tripstream`: the command line of the tripstream platform.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tripstream_cli::Cli::parse();
    streams::telemetry::init(cli.log_filter());
    tripstream_cli::run(cli)
}
