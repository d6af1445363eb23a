//! `tripstream consume`: records of a topic as JSON lines, decoded through the registry.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use streams::codec::Codec;
use streams::registry::Client;

/// Arguments of `tripstream consume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// Read as this consumer group (committing offsets); without it the command reads every
    /// partition on its own and disturbs no group.
    #[arg(long)]
    group: Option<String>,
    /// Start at the oldest record instead of the end.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    #[command(flatten)]
    connection: streams::service::Connection,
}

/// Prints one JSON line per record until interrupted or `--max` is reached. A record that
/// cannot be decoded prints its error in place of the value, and the command goes on.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let bootstrap = args.connection.brokers.resolve(root)?;
    let codec = Codec::new(Client::new(&args.connection.registry)?);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .set("enable.partition.eof", "false");
    match &args.group {
        Some(group) => config
            .set("group.id", group)
            .set("enable.auto.commit", "true"),
        // assign() needs a group handle; this one is never joined and never committed to.
        None => config
            .set(
                "group.id",
                format!("tripstream-consume-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false"),
    };
    let consumer: StreamConsumer = config.create().context("cannot create a consumer")?;
    if args.group.is_some() {
        consumer
            .subscribe(&[&args.topic])
            .context("cannot subscribe")?;
    } else {
        let metadata = consumer
            .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read metadata of {}", args.topic))?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len())
            .with_context(|| format!("topic {} does not exist", args.topic))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            let start = if args.from_beginning {
                Offset::Beginning
            } else {
                Offset::End
            };
            tpl.add_partition_offset(&args.topic, p, start)?;
        }
        consumer.assign(&tpl)?;
    }
    let mut count = 0u64;
    let interrupted = streams::service::interrupted();
    tokio::pin!(interrupted);
    while args.max.is_none_or(|max| count < max) {
        let message = tokio::select! {
            () = &mut interrupted => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                crate::note!("warning: {e}");
                continue;
            }
        };
        let headers: serde_json::Map<String, serde_json::Value> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            json!(String::from_utf8_lossy(h.value.unwrap_or_default())),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp": message.timestamp().to_millis(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
        });
        match codec
            .decode_json(message.payload().unwrap_or_default())
            .await
        {
            Ok((id, record, value)) => {
                line["schema_id"] = json!(id);
                line["type"] = json!(record);
                line["value"] = value;
            }
            Err(e) => line["error"] = json!(e.to_string()),
        }
        crate::say!("{line}");
        count += 1;
    }
    Ok(ExitCode::SUCCESS)
}
