//! `tripstream-registry`: the schema registry as its own process (same as `tripstream registry`).

use std::net::SocketAddr;

use clap::Parser;

/// A Confluent-compatible schema registry whose state lives in the `_schemas` topic.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve the REST API on.
    #[arg(
        long,
        env = "TRIPSTREAM_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: SocketAddr,
    /// Kafka bootstrap servers holding the `_schemas` topic.
    #[arg(long, env = "TRIPSTREAM_BROKERS")]
    brokers: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    streams::telemetry::init("info");
    let args = Args::parse();
    let settings = registry::Settings::new(args.listen, args.brokers);
    registry::ensure_topic(&settings.bootstrap, &settings.topic).await?;
    registry::run(settings, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
