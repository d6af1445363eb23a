//! `tripstream registry`: the schema registry, on an embedded broker unless --brokers is given.

use std::path::Path;
use std::process::ExitCode;

use streams::contract::Contract;

use crate::command::broker::start_embedded;

/// Arguments of `tripstream registry`.
#[derive(Debug, clap::Args)]
// The broker flag is the one every command takes, but without it this command starts a broker
// of its own instead of reading the bootstrap file.
#[command(mut_arg("brokers", |arg| arg.help(
    "Kafka bootstrap servers holding `_schemas`; without it an embedded broker is started in \
     this process and the registry's state lasts as long as the process"
)))]
pub struct Args {
    #[command(flatten)]
    listen: registry::Listen,
    #[command(flatten)]
    brokers: streams::service::Brokers,
    /// Do not register the project's schemas/ when starting on an embedded broker.
    #[arg(long)]
    no_schemas: bool,
}

/// Runs the registry until interrupted.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let (embedded, bootstrap) = match args.brokers.explicit {
        Some(brokers) => {
            registry::ensure_topic(&brokers, registry::SCHEMAS_TOPIC).await?;
            (None, brokers)
        }
        None => {
            let broker = start_embedded(root, 1).await?;
            let bootstrap = broker.bootstrap_servers().to_owned();
            (Some(broker), bootstrap)
        }
    };
    let running = registry::start(registry::Settings::new(
        args.listen.listen,
        bootstrap.clone(),
    ))
    .await?;
    let url = running.url();
    crate::say!(
        "Schema registry at {url} (log: {} on {bootstrap})",
        registry::SCHEMAS_TOPIC
    );
    if embedded.is_some() && !args.no_schemas && root.join("schemas").is_dir() {
        match Contract::load(root) {
            Ok(contract) => {
                let (registered, failed) =
                    crate::command::schemas::register_all(&contract, &url, false).await?;
                crate::say!(
                    "Registered {registered} subjects from {}/schemas ({failed} failed).",
                    root.display()
                );
            }
            Err(errors) => {
                for e in errors {
                    crate::note!("warning: {e}");
                }
                crate::note!("warning: the project's schemas were not registered");
            }
        }
    }
    crate::say!("Try: curl {url}/subjects    (Ctrl-C stops the registry)");
    running.run_until(streams::service::interrupted()).await?;
    drop(embedded);
    crate::note!("Schema registry stopped.");
    Ok(ExitCode::SUCCESS)
}
