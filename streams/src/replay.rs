//! Replay: an independent consumer that rebuilds a store from topics with a service's handler.
//!
//! It assigns partitions directly (no consumer group join, no offset commits), so it never
//! disturbs live groups, and reads up to the end each partition had when the replay started.
//! Records of several topics are applied in timestamp order (see [`replay`]). Poison records
//! are skipped and counted (the live service already dead-lettered them).
//! Replaying the same input through the same handler gives the same digest as the live store.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::processor::{Apply, Failure, Handler};
use crate::store::{Batch, Effects, Position, Store, Writers};

/// Where the replay starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The oldest retained record.
    Beginning,
    /// Given offsets, as (partition, offset); partitions not listed start at the beginning.
    Offsets(Vec<(i32, i64)>),
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

/// How far a replay has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records read so far.
    pub records: u64,
    /// Records to read in all (from the start offsets to the end at the start of the replay).
    pub total: u64,
}

/// What a finished replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records applied.
    pub applied: u64,
    /// Poison records skipped.
    pub skipped: u64,
    /// Digest of the rebuilt store.
    pub digest: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// Records per transaction. Each commit writes every key its batch touched and the first read
/// of a key in a batch goes to sled, both several microseconds: with hot keys (a count per
/// flight) larger batches pay that once for many records. Memory grows with it (the batch's
/// event ids and touched keys), a few MiB at this size.
const BATCH_RECORDS: usize = 50_000;

/// How long the replay sleeps when the consumer has no record ready.
const IDLE: Duration = Duration::from_millis(2);

/// The offsets group name a replay stores under, so replayed stores can be replayed further.
pub const GROUP: &str = "replay";

/// The topics a replay reads, as the service it stands in for reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// Topics whose records belong to the task of their partition.
    pub tasks: &'a [&'a str],
    /// A service's global tables: read first and whole, as the live service reads them before
    /// processing.
    pub globals: &'a [&'a str],
}

impl<'a> Inputs<'a> {
    /// Topics read as tasks, with no global table.
    pub fn tasks(tasks: &'a [&'a str]) -> Self {
        Inputs {
            tasks,
            globals: &[],
        }
    }
}

/// Rebuilds `store` from `inputs` with `handler`, calling `progress` now and then.
///
/// # Errors
///
/// [`Error::Kafka`] when the topics cannot be read, [`Error::Store`] when the store fails.
pub async fn replay<H: Handler>(
    bootstrap: &str,
    inputs: Inputs<'_>,
    start: &Start,
    store: &Store,
    codec: &Codec,
    handler: &H,
    mut progress: impl FnMut(Progress),
) -> Result<Summary> {
    let began = Instant::now();
    let scoped: Vec<String> = inputs.globals.iter().map(|g| (*g).to_owned()).collect();
    let mut counts = (0, 0);
    if !inputs.globals.is_empty() {
        let (applied, skipped) = pass(
            bootstrap,
            inputs.globals,
            &Start::Beginning,
            &scoped,
            store,
            codec,
            handler,
            &mut progress,
        )
        .await?;
        counts = (applied, skipped);
    }
    let (applied, skipped) = pass(
        bootstrap,
        inputs.tasks,
        start,
        &scoped,
        store,
        codec,
        handler,
        &mut progress,
    )
    .await?;
    store.flush()?;
    Ok(Summary {
        applied: counts.0 + applied,
        skipped: counts.1 + skipped,
        digest: store.digest()?,
        elapsed: began.elapsed(),
    })
}

/// Applies `topics` from `start` to their current end: (applied, skipped).
#[allow(clippy::too_many_arguments)]
async fn pass<H: Handler>(
    bootstrap: &str,
    topics: &[&str],
    start: &Start,
    globals: &[String],
    store: &Store,
    codec: &Codec,
    handler: &H,
    progress: &mut impl FnMut(Progress),
) -> Result<(u64, u64)> {
    // Polled without waiting and put to sleep only when it has nothing: a replay almost always
    // has records ready, and an async receive per record costs a timer and a wake-up each.
    let consumer: BaseConsumer = crate::kafka::reader_config(bootstrap, "replay")
        .create()
        .map_err(|e| Error::kafka("creating the replay consumer", e))?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| Error::kafka("reading topic metadata", e))?;
    // The embedded broker drops a partition's oldest records past its bound without a word.
    let embedded = crate::kafka::topic::is_mock_cluster(bootstrap).unwrap_or(false);
    let mut assignment = TopicPartitionList::new();
    let mut ends = Ends::new(topics);
    let mut total = 0u64;
    for (index, topic) in topics.iter().enumerate() {
        let Some(found) = metadata.topics().iter().find(|t| t.name() == *topic) else {
            return Err(Error::kafka(
                format!("replaying {topic}"),
                rdkafka::error::KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopic,
                ),
            ));
        };
        for partition in found.partitions() {
            let id = partition.id();
            let (low, high) = consumer
                .fetch_watermarks(topic, id, Duration::from_secs(30))
                .map_err(|e| Error::kafka(format!("reading the end of {topic}/{id}"), e))?;
            if embedded && *start == Start::Beginning {
                // Rebuilt from the beginning, a store missing the first records would differ
                // from the live one without a word.
                crate::kafka::broker::ensure_nothing_dropped(topic, id, low)?;
            }
            let from = match start {
                Start::Beginning => low,
                Start::Offsets(offsets) => offsets
                    .iter()
                    .find(|(p, _)| *p == id)
                    .map_or(low, |(_, o)| (*o).clamp(low, high)),
                Start::Timestamp(ms) => {
                    let mut query = TopicPartitionList::new();
                    let _ = query.add_partition_offset(topic, id, Offset::Offset(*ms));
                    consumer
                        .offsets_for_times(query, Duration::from_secs(30))
                        .ok()
                        .and_then(|found| found.find_partition(topic, id).map(|e| e.offset()))
                        .and_then(|o| o.to_raw())
                        .filter(|o| *o >= 0)
                        .unwrap_or(high)
                }
            };
            // Records below the store's own offset were applied by an earlier replay into it.
            let stored = store.next_offset(GROUP, topic, id)?.unwrap_or(low);
            let from = from.max(stored);
            if from < high {
                total += (high - from) as u64;
                ends.open(index, id, high);
                assignment
                    .add_partition_offset(topic, id, Offset::Offset(from))
                    .map_err(|e| Error::kafka("assigning partitions", e))?;
            }
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka("assigning partitions", e))?;
    // Records are committed in batches: each batch's effects and offsets are one transaction,
    // so a replay stopped midway resumes consistently, and sled's per-transaction cost is paid
    // once per batch instead of once per record.
    let mut run = Run {
        globals,
        batch: Batch::default(),
        applied: 0,
        skipped: 0,
        total,
        last_report: Instant::now(),
    };
    progress(Progress { records: 0, total });
    if topics.len() == 1 {
        // One topic: partitions are independent, so records are applied as they arrive.
        while !ends.all_read() {
            let Some(message) = consumer.poll(Duration::ZERO) else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
            if let Some((_, true)) = ends.take(&message) {
                run.apply(store, codec, handler, &message, progress).await?;
            }
        }
    } else {
        // Several topics: a service saw their records interleaved in the order they were
        // written (a reply comes after its request), so they are applied in timestamp order,
        // the earlier topic first on a tie, taking a record only once every partition still
        // being read has one waiting.
        let mut waiting: Vec<Vec<VecDeque<OwnedMessage>>> = ends
            .open
            .iter()
            .map(|partitions| partitions.iter().map(|_| VecDeque::new()).collect())
            .collect();
        loop {
            let starved = ends.reading().any(|(t, p)| waiting[t][p].is_empty());
            if !starved {
                let earliest = waiting
                    .iter()
                    .enumerate()
                    .flat_map(|(t, partitions)| {
                        partitions.iter().enumerate().filter_map(move |(p, queue)| {
                            let at = queue.front()?.timestamp().to_millis().unwrap_or(0);
                            Some((at, t, p))
                        })
                    })
                    .min();
                let Some((_, t, p)) = earliest else {
                    break;
                };
                if let Some(message) = waiting[t][p].pop_front() {
                    run.apply(store, codec, handler, &message, progress).await?;
                }
                continue;
            }
            let Some(message) = consumer.poll(Duration::ZERO) else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
            if let Some((t, true)) = ends.take(&message) {
                let p = message.partition() as usize;
                waiting[t][p].push_back(message.detach());
            }
        }
    }
    if !run.batch.is_empty() {
        store.commit(&run.batch, Writers::Sole)?;
    }
    progress(Progress {
        records: run.applied + run.skipped,
        total,
    });
    Ok((run.applied, run.skipped))
}

/// The partitions a replay reads, by topic index and partition number, and where each ends.
/// Looked up once per record, so by index rather than by searching names.
struct Ends<'a> {
    topics: &'a [&'a str],
    /// Per topic, per partition: the end offset while the partition is still being read.
    open: Vec<Vec<Option<i64>>>,
    reading: usize,
}

impl<'a> Ends<'a> {
    fn new(topics: &'a [&'a str]) -> Self {
        Ends {
            topics,
            open: vec![Vec::new(); topics.len()],
            reading: 0,
        }
    }

    /// Reads `partition` of the `topic`-th topic up to `end` (exclusive).
    fn open(&mut self, topic: usize, partition: i32, end: i64) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        let partitions = &mut self.open[topic];
        if partitions.len() <= p {
            partitions.resize(p + 1, None);
        }
        partitions[p] = Some(end);
        self.reading += 1;
    }

    /// Where a record belongs: its topic's index and whether it is before its partition's
    /// end (apply it); `None` for a partition not being read. Stops reading a partition once
    /// its last record before the end arrived.
    fn take(&mut self, message: &impl Message) -> Option<(usize, bool)> {
        let topic = message.topic();
        let t = self.topics.iter().position(|name| *name == topic)?;
        let p = usize::try_from(message.partition()).ok()?;
        let slot = self.open[t].get_mut(p)?;
        let end = (*slot)?;
        let offset = message.offset();
        if offset + 1 >= end {
            *slot = None;
            self.reading -= 1;
        }
        Some((t, offset < end))
    }

    /// The partitions still being read, as (topic index, partition).
    fn reading(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.open.iter().enumerate().flat_map(|(t, partitions)| {
            partitions
                .iter()
                .enumerate()
                .filter(|(_, end)| end.is_some())
                .map(move |(p, _)| (t, p))
        })
    }

    fn all_read(&self) -> bool {
        self.reading == 0
    }
}

/// A replay's running counts and open batch.
struct Run<'g> {
    /// The topics read as global tables.
    globals: &'g [String],
    batch: Batch,
    applied: u64,
    skipped: u64,
    total: u64,
    last_report: Instant,
}

impl Run<'_> {
    async fn apply<H: Handler, M: Message + Sync>(
        &mut self,
        store: &Store,
        codec: &Codec,
        handler: &H,
        message: &M,
        progress: &mut impl FnMut(Progress),
    ) -> Result<()> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        // The replay's store is its own: nothing to check at commit, no reads to record.
        let apply = Apply {
            group: GROUP,
            store,
            codec,
            handler,
            writers: Writers::Sole,
            globals: self.globals,
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match apply.record(&mut self.batch, message).await {
                Ok(()) => {
                    self.applied += 1;
                    break;
                }
                Err(Failure::Poison(kind, reason)) => {
                    tracing::debug!(
                        topic,
                        partition,
                        offset,
                        kind,
                        reason,
                        "Skipping a poison record"
                    );
                    let at = Position {
                        group: GROUP,
                        topic,
                        partition,
                        offset,
                    };
                    self.batch
                        .add(&at, apply.scope(topic, partition), None, Effects::default());
                    self.skipped += 1;
                    break;
                }
                Err(Failure::Retry(reason)) => {
                    tracing::warn!(reason, "Retrying a replayed record");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if self.batch.len() >= BATCH_RECORDS {
            store.commit(&self.batch, Writers::Sole)?;
            self.batch.clear();
        }
        // The clock is read every 256 records, not for each.
        if (self.applied + self.skipped).is_multiple_of(256)
            && self.last_report.elapsed() >= Duration::from_millis(100)
        {
            progress(Progress {
                records: self.applied + self.skipped,
                total: self.total,
            });
            self.last_report = Instant::now();
        }
        Ok(())
    }
}
