//! `tripstream produce`: JSON lines from stdin to Avro events on a topic, through the registry.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use streams::codec::Codec;
use streams::contract::load_schema_file;
use streams::kafka::OutgoingRecord;
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::kafka::topic::TopicSet;
use streams::registry::Client;

/// Arguments of `tripstream produce`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The topic to write to.
    #[arg(long)]
    topic: String,
    /// The record's full name; its schema is schemas/<RECORD>.avsc.
    #[arg(long = "type", value_name = "RECORD")]
    record: String,
    /// The field whose value is the record key [default: the record's first field].
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    connection: streams::service::Connection,
}

/// Reads JSON lines from stdin and produces one event per line. Lines that are not JSON or do
/// not fit the schema are reported on stderr with their line number and skipped; the exit code
/// is then 1.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let schema_path = root.join("schemas").join(format!("{}.avsc", args.record));
    let file = load_schema_file(&schema_path)?;
    if let Ok(topics) = TopicSet::load(&root.join("topics"))
        && let Some(spec) = topics.get(&args.topic)
        && !spec.record_types.is_empty()
        && !spec.record_types.contains(&args.record)
    {
        bail!(
            "topic {} does not carry {} (its topics/ spec allows {})",
            args.topic,
            args.record,
            spec.record_types.join(", ")
        );
    }
    let key_field = match args.key {
        Some(key) => key,
        None => {
            first_field(&file.schema).context("the record has no fields to key by; pass --key")?
        }
    };
    let bootstrap = args.connection.brokers.resolve(root)?;
    let codec = Codec::new(Client::new(&args.connection.registry)?);
    let producer = Producer::new(&bootstrap, codec.clone(), &[])?;
    let (mut produced, mut rejected) = (0u64, 0u64);
    let stdin = std::io::stdin();
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let outcome: anyhow::Result<()> = async {
            let value: serde_json::Value = serde_json::from_str(&line).context("not JSON")?;
            let key = match value.get(&key_field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => bail!("no field '{key_field}' to key the record by"),
            };
            let payload = codec.encode_json(&args.topic, &file.schema, &value).await?;
            let mut metadata = Metadata::new(key.clone());
            metadata.event_type = Some(args.record.clone());
            producer
                .send_record(&OutgoingRecord {
                    topic: args.topic.clone(),
                    partition: None,
                    key: key.into_bytes(),
                    payload: Some(payload),
                    headers: metadata.to_pairs(),
                })
                .await?;
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => produced += 1,
            Err(e) => {
                rejected += 1;
                eprintln!("line {}: {e:#}", number + 1);
            }
        }
    }
    eprintln!(
        "Produced {produced} records to {} ({rejected} rejected).",
        args.topic
    );
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn first_field(schema: &streams::avro::schema::Schema) -> Option<String> {
    match schema.root() {
        streams::avro::schema::Type::Named(i) => match &schema.named(*i).kind {
            streams::avro::schema::NamedKind::Record { fields } => {
                fields.first().map(|f| f.name.clone())
            }
            _ => None,
        },
        _ => None,
    }
}
