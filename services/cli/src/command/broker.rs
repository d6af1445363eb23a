//! `tripstream broker`: the embedded broker as a standalone process other processes can share.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::topic::{self, Outcome, Target, TopicSpec};

/// Arguments of `tripstream broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of brokers in the cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    brokers: u16,
    /// File to write the bootstrap address to [default: .tripstream/bootstrap under --root].
    #[arg(long)]
    bootstrap_file: Option<PathBuf>,
}

/// The topics to create on a fresh embedded broker: every spec of `<root>/topics` plus the
/// registry's `_schemas`. Without a topics/ directory, only `_schemas`.
pub fn project_topics(root: &Path) -> anyhow::Result<Vec<TopicSpec>> {
    let dir = root.join("topics");
    let mut specs = if dir.is_dir() {
        crate::command::topics::load(root)?.all()
    } else {
        tracing::warn!(dir = %dir.display(), "No topics directory; creating only the registry's topic");
        Vec::new()
    };
    if !specs.iter().any(|s| s.name == registry::SCHEMAS_TOPIC) {
        specs.push(registry::topic_spec(registry::SCHEMAS_TOPIC));
    }
    Ok(specs)
}

/// Starts an embedded broker with the project's topics.
pub async fn start_embedded(root: &Path, count: u16) -> anyhow::Result<EmbeddedBroker> {
    let specs = project_topics(root)?;
    let broker = EmbeddedBroker::start(count)?;
    let reports = topic::apply(Target::Embedded(&broker), &specs).await?;
    let created = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Created)
        .count();
    tracing::info!(created, "Topics created on the embedded broker");
    Ok(broker)
}

/// Runs the broker until interrupted.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let broker = start_embedded(root, args.brokers).await?;
    let file = args
        .bootstrap_file
        .unwrap_or_else(|| root.join(streams::service::BOOTSTRAP_FILE));
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // Written whole then renamed, so a reader never sees half an address.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, format!("{}\n", broker.bootstrap_servers()))
        .and_then(|()| std::fs::rename(&partial, &file))
        .with_context(|| format!("cannot write the bootstrap address to {}", file.display()))?;
    crate::say!("{}", broker.bootstrap_servers());
    crate::note!(
        "Embedded broker ({} broker{}) at {}; address written to {}. Ctrl-C stops it (its data is not kept).",
        args.brokers,
        if args.brokers == 1 { "" } else { "s" },
        broker.bootstrap_servers(),
        file.display()
    );
    streams::service::interrupted().await;
    // Remove the file only if it still names this broker; another may have started since.
    if std::fs::read_to_string(&file).is_ok_and(|t| t.trim() == broker.bootstrap_servers()) {
        let _ = std::fs::remove_file(&file);
    }
    crate::note!("Embedded broker stopped.");
    Ok(ExitCode::SUCCESS)
}
