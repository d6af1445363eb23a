//! `tripstream replay`: rebuild a store from a topic with a built-in handler, with progress.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use streams::codec::Codec;
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::registry::Client;
use streams::replay::{self, Start};
use streams::store::Store;

/// The handlers `replay` can rebuild a store with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerName {
    /// The latest record per key: a table of the topic (`latest/<key>` → payload).
    Latest,
    /// How many records of each event type (`count/<type>` → n), per partition.
    Count,
}

/// Arguments of `tripstream replay`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("start").args(["from_beginning", "offset", "timestamp"])))]
pub struct Args {
    /// The topic to replay.
    #[arg(long)]
    topic: String,
    /// Start at the oldest record (the default).
    #[arg(long)]
    from_beginning: bool,
    /// Start partition P at offset O; repeat for several partitions.
    #[arg(long, value_name = "P:O", value_parser = parse_offset)]
    offset: Vec<(i32, i64)>,
    /// Start at the first record at or after this time (milliseconds since the epoch).
    #[arg(long, value_name = "MS")]
    timestamp: Option<i64>,
    /// The directory of the store to build (created; must not hold another store).
    #[arg(long, value_name = "DIR")]
    into: PathBuf,
    /// What the store holds.
    #[arg(long, value_enum)]
    handler: HandlerName,
    #[command(flatten)]
    connection: streams::service::Connection,
}

fn parse_offset(text: &str) -> Result<(i32, i64), String> {
    let (p, o) = text
        .split_once(':')
        .ok_or("expected PARTITION:OFFSET, e.g. 0:42")?;
    let p = p
        .parse()
        .map_err(|_| format!("'{p}' is not a partition number"))?;
    let o = o.parse().map_err(|_| format!("'{o}' is not an offset"))?;
    Ok((p, o))
}

struct Latest;

impl Handler for Latest {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let key = [b"latest/".as_slice(), record.key.unwrap_or_default()].concat();
        ctx.put(key, record.payload.to_vec());
        Ok(())
    }
}

struct Count;

impl Handler for Count {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let key = format!("count/{}", record.event_type().unwrap_or("unknown"));
        // The count is stored as its decimal text, which is also its JSON.
        let n = ctx.get_json::<u64>(&key)?.unwrap_or(0);
        ctx.put(key.into_bytes(), (n + 1).to_string().into_bytes());
        Ok(())
    }
}

/// Rebuilds the store and prints its digest.
pub async fn run(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let bootstrap = args.connection.brokers.resolve(root)?;
    let store = Store::open(&args.into)
        .with_context(|| format!("cannot open a store in {}", args.into.display()))?;
    if !store.digest()?.starts_with("0:") {
        bail!(
            "{} already holds a store; replay into an empty directory",
            args.into.display()
        );
    }
    let codec = Codec::new(Client::new(&args.connection.registry)?);
    let start = match (args.offset.is_empty(), args.timestamp) {
        (false, _) => Start::Offsets(args.offset.clone()),
        (true, Some(ms)) => Start::Timestamp(ms),
        (true, None) => Start::Beginning,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {pos}/{len} records ({per_sec}, lag {msg}) [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |p: replay::Progress| {
        bar.set_length(p.total);
        bar.set_position(p.records);
        bar.set_message((p.total - p.records.min(p.total)).to_string());
    };
    let topics = [args.topic.as_str()];
    let summary = match args.handler {
        HandlerName::Latest => {
            replay::replay(
                &bootstrap,
                replay::Inputs::tasks(&topics),
                &start,
                &store,
                &codec,
                &Latest,
                progress,
            )
            .await?
        }
        HandlerName::Count => {
            replay::replay(
                &bootstrap,
                replay::Inputs::tasks(&topics),
                &start,
                &store,
                &codec,
                &Count,
                progress,
            )
            .await?
        }
    };
    bar.finish();
    crate::say!(
        "Replayed {} records of {} into {} in {:.1} s ({} poison records skipped).",
        summary.applied,
        args.topic,
        args.into.display(),
        summary.elapsed.as_secs_f64(),
        summary.skipped
    );
    crate::say!("digest {}", summary.digest);
    Ok(ExitCode::SUCCESS)
}
