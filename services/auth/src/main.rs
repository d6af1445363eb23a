//! `tripstream-auth`: the auth service as its own process (the same as `tripstream run auth`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The auth service: sign-up, login, signed expiring tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    service: streams::service::Args,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The token key, shared with the gateway (created with a random key when missing).
    #[arg(
        long,
        env = "TRIPSTREAM_TOKEN_KEY_FILE",
        default_value = ".tripstream/token.key"
    )]
    token_key_file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streams::service::main_with(&cli.service, "auth", |service| async move {
        let tokens = auth::Signer::from_file(&cli.token_key_file, auth::token::DEFAULT_TTL)
            .map_err(|e| streams::Error::Usage(format!("token key: {e}")))?;
        let settings = auth::Settings {
            service,
            listen: cli.listen,
            tokens,
        };
        auth::run(settings, streams::service::interrupted()).await
    })
}
