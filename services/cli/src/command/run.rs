//! `tripstream run <service>`: one service as its own process, against `tripstream broker` or
//! any Kafka cluster.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

/// The services `tripstream run` starts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Service {
    /// The reservation saga.
    Booking,
    /// Flight catalog and seats.
    Flight,
    /// Hotel catalog and rooms.
    Hotel,
    /// Balances, charges and refunds.
    Payment,
    /// Sign-up, login, tokens (HTTP, default 127.0.0.1:8082).
    Auth,
    /// The JSON API for clients (HTTP, default 127.0.0.1:8080).
    Gateway,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Booking => "booking",
            Service::Flight => "flight",
            Service::Hotel => "hotel",
            Service::Payment => "payment",
            Service::Auth => "auth",
            Service::Gateway => "gateway",
        }
    }
}

/// Arguments of `tripstream run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which service.
    service: Service,
    #[command(flatten)]
    flags: streams::service::Args,
    /// Where auth or the gateway listens [default: 127.0.0.1:8082 for auth, 127.0.0.1:8080 for
    /// the gateway].
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    auth: gateway::AuthUrl,
    #[command(flatten)]
    token: token::TokenArgs,
    #[command(flatten)]
    proxies: auth::ProxyArgs,
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let name = args.service.name();
    let settings = args.flags.settings(root, name)?;
    crate::note!(
        "{name}: brokers {}, registry {}, store {}",
        settings.brokers,
        settings.registry,
        settings.data
    );
    let shutdown = streams::service::interrupted();
    match args.service {
        Service::Auth => {
            let listen = args.listen.unwrap_or(auth::DEFAULT_LISTEN);
            crate::note!("auth: listening on http://{listen}");
            let mut settings = auth::Settings::new(settings, listen, args.token.issuer(root)?);
            settings.trusted_proxies = args.proxies.proxies();
            auth::run(settings, shutdown).await?;
        }
        Service::Gateway => {
            let listen = args.listen.unwrap_or(gateway::DEFAULT_LISTEN);
            crate::note!(
                "gateway: listening on http://{listen}, auth at {}",
                args.auth.auth_url
            );
            gateway::run(
                gateway::Settings {
                    service: settings,
                    listen,
                    auth_url: args.auth.auth_url,
                },
                shutdown,
            )
            .await?;
        }
        Service::Booking => booking::run(settings, shutdown).await?,
        Service::Flight => flight::run(settings, shutdown).await?,
        Service::Hotel => hotel::run(settings, shutdown).await?,
        Service::Payment => payment::run(settings, shutdown).await?,
    }
    crate::note!("{name}: stopped");
    Ok(ExitCode::SUCCESS)
}
