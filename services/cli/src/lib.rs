//! The `tripstream` command line: argument definitions and dispatch to one module per command.

mod command;
mod git;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use command::schemas::Format;

/// Exit code for input that cannot be used (bad files, unreachable services, wrong arguments).
pub const EXIT_UNUSABLE: u8 = 2;

/// tripstream: a Kafka event-streaming platform for a travel-booking system.
///
/// Exit codes: 0 success, 1 the check found problems (incompatible schemas), 2 an input could
/// not be used (invalid file, bad arguments, unreachable broker or registry).
#[derive(Debug, Parser)]
#[command(
    name = "tripstream",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). TRIPSTREAM_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The project directory holding topics/ and schemas/.
    #[arg(long, global = true, env = "TRIPSTREAM_ROOT", default_value = ".")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The default log filter for the chosen verbosity.
    pub fn log_filter(&self) -> &'static str {
        match self.verbose {
            // The demo's own report is the output; the parts it runs speak up only on trouble.
            0 if matches!(self.command, Command::Demo(_)) => "error",
            // So are a bench's figures: a restore of 64 tasks alone logged 128 lines a round.
            0 if matches!(self.command, Command::Bench(_)) => "warn",
            0 => "warn,tripstream_cli=info,registry=info,streams=info",
            1 => "info,registry=debug,streams=debug",
            _ => "debug",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system in one process: broker, registry, every service, a load of bookings
    /// through the HTTP API, then a summary and a consistency report.
    Demo(command::demo::Args),
    /// Run the embedded Kafka-protocol broker as a standalone process on 127.0.0.1.
    Broker(command::broker::Args),
    /// Run the schema registry (on an embedded broker unless --brokers is given).
    Registry(command::registry::Args),
    /// Provision and list the topics of topics/.
    #[command(subcommand)]
    Topics(command::topics::Command),
    /// Check, compare and register the Avro schemas of schemas/.
    #[command(subcommand)]
    Schemas(command::schemas::Command),
    /// Write JSON lines from stdin to a topic as Avro events.
    Produce(command::produce::Args),
    /// Print a topic's records as JSON lines.
    Consume(command::consume::Args),
    /// Rebuild a store from a topic with a built-in handler and print its digest.
    Replay(command::replay::Args),
    /// Run one service (booking, flight, hotel, payment, auth, gateway) as its own process.
    Run(command::run::Args),
    /// Measure whole-system figures on the embedded broker against same-run baselines.
    #[command(subcommand)]
    Bench(command::bench::Command),
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNUSABLE);
        }
    };
    let root = cli.root;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => command::demo::run(&root, args).await,
            Command::Broker(args) => command::broker::run(&root, args).await,
            Command::Registry(args) => command::registry::run(&root, args).await,
            Command::Topics(command) => command::topics::run(&root, command).await,
            Command::Schemas(command) => command::schemas::run(&root, command).await,
            Command::Produce(args) => command::produce::run(&root, args).await,
            Command::Consume(args) => command::consume::run(&root, args).await,
            Command::Replay(args) => command::replay::run(&root, args).await,
            Command::Run(args) => command::run::run(&root, args).await,
            Command::Bench(command) => command::bench::run(command).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

/// Prints a line for people from a long-running command. Unlike `println!`, a closed stdout
/// (a reader that went away) or stderr does not panic: a server must not die because whoever
/// started it stopped listening to its banner.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// As [`say!`], on stderr.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn every_command_definition_is_consistent() {
        // clap checks names, groups and defaults of every subcommand only when it parses that
        // subcommand; this checks them all at once.
        super::Cli::command().debug_assert();
    }

    #[test]
    fn reports_keep_the_runtime_quiet_unless_asked_and_services_log_what_they_do() {
        use clap::Parser as _;
        let filter = |args: &[&str]| {
            let cli = super::Cli::try_parse_from(
                std::iter::once("tripstream").chain(args.iter().copied()),
            )
            .expect("parsed");
            cli.log_filter()
        };
        assert_eq!(filter(&["demo"]), "error");
        assert_eq!(filter(&["bench", "replay"]), "warn");
        assert_eq!(
            filter(&["-v", "bench", "replay"]),
            "info,registry=debug,streams=debug"
        );
        assert!(filter(&["run", "booking"]).contains("streams=info"));
    }
}
