//! `tripstream topics`: provision the topics of topics/ and compare them with a broker.

use std::path::Path;
use std::process::ExitCode;

use streams::kafka::topic::{self, Outcome, Target, TopicSet};
use streams::service::Brokers;

/// Subcommands of `tripstream topics`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the topics of topics/ that are missing and report how existing ones differ.
    ///
    /// Existing topics are never changed. Exits 1 when a topic is missing and cannot be created.
    Apply {
        #[command(flatten)]
        brokers: Brokers,
    },
    /// List the topic specs, with the live partition count when a broker is reachable.
    List {
        #[command(flatten)]
        brokers: Brokers,
    },
}

/// The specs of `<root>/topics`, every invalid one named in the error.
pub(crate) fn load(root: &Path) -> anyhow::Result<TopicSet> {
    TopicSet::load(&root.join("topics")).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid topic specs:\n  {}", lines.join("\n  "))
    })
}

/// Runs a `topics` subcommand.
pub async fn run(root: &Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Apply { brokers } => {
            let set = load(root)?;
            let bootstrap = brokers.resolve(root)?;
            let mut specs = set.all();
            if !specs.iter().any(|s| s.name == registry::SCHEMAS_TOPIC) {
                specs.push(registry::topic_spec(registry::SCHEMAS_TOPIC));
            }
            let reports = topic::apply(Target::Kafka(&bootstrap), &specs).await?;
            let mut missing = 0;
            for report in &reports {
                match &report.outcome {
                    Outcome::Created => println!("created   {}", report.topic),
                    Outcome::Matches => println!("ok        {}", report.topic),
                    Outcome::Differs(differences) => {
                        println!("differs   {}", report.topic);
                        for d in differences {
                            println!("            {d}");
                        }
                    }
                    Outcome::Missing(reason) => {
                        missing += 1;
                        println!("missing   {}: {reason}", report.topic);
                    }
                }
            }
            let count = |o: fn(&Outcome) -> bool| reports.iter().filter(|r| o(&r.outcome)).count();
            println!(
                "{} topics on {bootstrap}: {} created, {} ok, {} differ, {missing} missing",
                reports.len(),
                count(|o| *o == Outcome::Created),
                count(|o| *o == Outcome::Matches),
                count(|o| matches!(o, Outcome::Differs(_))),
            );
            Ok(if missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::List { brokers } => {
            let set = load(root)?;
            let live = match brokers.resolve(root) {
                Ok(bootstrap) => match topic::list(&bootstrap) {
                    Ok(live) => Some(live),
                    Err(e) => {
                        eprintln!(
                            "note: cannot read topics from {bootstrap} ({e}); showing specs only"
                        );
                        None
                    }
                },
                Err(_) => None,
            };
            println!(
                "{:<28} {:>10} {:>11} {:>9} {:>8} {:<22} {:>5}",
                "TOPIC", "PARTITIONS", "REPLICATION", "RETENTION", "CLEANUP", "DEAD LETTER", "LIVE"
            );
            for spec in set.all() {
                let live_partitions = match &live {
                    Some(live) => live
                        .iter()
                        .find(|t| t.name == spec.name)
                        .map_or_else(|| "-".to_owned(), |t| t.partitions.to_string()),
                    None => "?".to_owned(),
                };
                println!(
                    "{:<28} {:>10} {:>11} {:>9} {:>8} {:<22} {:>5}",
                    spec.name,
                    spec.partitions,
                    spec.replication_factor,
                    spec.retention,
                    spec.cleanup_policy.as_str(),
                    spec.dead_letter.as_deref().unwrap_or("-"),
                    live_partitions
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
