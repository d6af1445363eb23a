//! `tripstream-registry`: the schema registry as its own process (same as `tripstream registry`).

use std::path::Path;

use clap::Parser;

/// A Confluent-compatible schema registry whose state lives in the `_schemas` topic.
#[derive(Parser)]
#[command(version)]
// The broker flag every command takes, required here: this binary starts no broker of its own.
#[command(mut_arg("brokers", |arg| arg
    .required(true)
    .help("Kafka bootstrap servers holding the `_schemas` topic")))]
struct Args {
    #[command(flatten)]
    listen: registry::Listen,
    #[command(flatten)]
    brokers: streams::service::Brokers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    streams::telemetry::init("info");
    let args = Args::parse();
    // Required above, so this is the flag's value; the bootstrap file is never read.
    let brokers = args.brokers.resolve(Path::new("."))?;
    let settings = registry::Settings::new(args.listen.listen, brokers);
    registry::ensure_topic(&settings.bootstrap, &settings.topic).await?;
    registry::run(settings, streams::service::interrupted()).await?;
    Ok(())
}
