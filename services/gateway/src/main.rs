//! `tripstream-gateway`: the gateway as its own process (the same as `tripstream run gateway`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// The gateway: one JSON API for web and app clients.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    service: streams::service::Args,
    /// Where to listen.
    #[arg(long, default_value_t = gateway::DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    auth: gateway::AuthUrl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streams::service::main_with(&cli.service, "gateway", |service| async move {
        let settings = gateway::Settings {
            service,
            listen: cli.listen,
            auth_url: cli.auth.auth_url,
        };
        gateway::run(settings, streams::service::interrupted()).await?;
        anyhow::Ok(())
    })
}
