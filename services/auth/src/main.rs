//! `tripstream-auth`: the auth service as its own process (the same as `tripstream run auth`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

/// The auth service: sign-up, login, signed expiring tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    service: streams::service::Args,
    /// Where to listen.
    #[arg(long, default_value_t = auth::DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    token: token::TokenArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streams::service::main_with(&cli.service, "auth", |service| async move {
        let tokens = cli.token.signer(Path::new("."))?;
        let settings = auth::Settings {
            service,
            listen: cli.listen,
            tokens,
        };
        auth::run(settings, streams::service::interrupted()).await?;
        anyhow::Ok(())
    })
}
