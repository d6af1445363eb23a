//! `tripstream-auth`: the auth service as its own process (the same as `tripstream run auth`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

/// The auth service: sign-up, login, signed expiring tokens (JWT).
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
    #[command(flatten)]
    proxies: auth::ProxyArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streams::service::main_with(&cli.service, "auth", |service| async move {
        let mut settings =
            auth::Settings::new(service, cli.listen, cli.token.issuer(Path::new("."))?);
        settings.trusted_proxies = cli.proxies.proxies();
        auth::run(settings, streams::service::interrupted()).await?;
        anyhow::Ok(())
    })
}
