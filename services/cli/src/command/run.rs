//! `tripstream run <service>`: one service as its own process, against `tripstream broker` or
//! any Kafka cluster.

use std::path::Path;
use std::process::ExitCode;

use streams::service::{Data, Settings};

use crate::brokers;

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
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Booking => "booking",
            Service::Flight => "flight",
            Service::Hotel => "hotel",
            Service::Payment => "payment",
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
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let name = args.service.name();
    let brokers = brokers::resolve(root, args.flags.brokers.as_deref())?;
    let data = args
        .flags
        .data
        .unwrap_or_else(|| root.join(".tripstream/data").join(name));
    crate::note!(
        "{name}: brokers {brokers}, registry {}, store {}",
        args.flags.registry,
        data.display()
    );
    let settings = Settings::new(brokers, args.flags.registry, Data::Dir(data));
    let shutdown = crate::interrupted();
    match args.service {
        Service::Booking => booking::run(settings, shutdown).await?,
        Service::Flight => flight::run(settings, shutdown).await?,
        Service::Hotel => hotel::run(settings, shutdown).await?,
        Service::Payment => payment::run(settings, shutdown).await?,
    }
    crate::note!("{name}: stopped");
    Ok(ExitCode::SUCCESS)
}
