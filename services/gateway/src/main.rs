//! `tripstream-gateway`: the gateway as its own process (the same as `tripstream run gateway`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The gateway: one JSON API for web and app clients.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    service: streams::service::Args,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The auth service.
    #[arg(long, env = "TRIPSTREAM_AUTH", default_value = "http://127.0.0.1:8082")]
    auth_url: String,
    /// The token key, shared with auth (created with a random key when missing).
    #[arg(
        long,
        env = "TRIPSTREAM_TOKEN_KEY_FILE",
        default_value = ".tripstream/token.key"
    )]
    token_key_file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streams::service::main_with(&cli.service, "gateway", |service| async move {
        let tokens = auth::Signer::from_file(&cli.token_key_file, auth::token::DEFAULT_TTL)
            .map_err(|e| streams::Error::Usage(format!("token key: {e}")))?;
        let settings = gateway::Settings {
            service,
            listen: cli.listen,
            auth_url: cli.auth_url,
            tokens,
        };
        gateway::run(settings, streams::service::interrupted()).await
    })
}
