//! Replay: an independent consumer that rebuilds a store from topics with a service's handler.
//!
//! It assigns partitions directly (no consumer group join, no offset commits), so it never
//! disturbs live groups, and reads up to the end each partition had when the replay started.
//! Records of several topics are applied in timestamp order (see [`replay`]). Poison records
//! are skipped and counted (the live service already dead-lettered them).
//! Replaying the same input through the same handler gives the same digest as the live store.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::processor::{Failure, Handler, process};
use crate::store::{Batch, Effects, Position, Store};

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

/// Records per transaction.
const BATCH_RECORDS: usize = 1_000;

/// How long the replay sleeps when the consumer has no record ready.
const IDLE: Duration = Duration::from_millis(2);

/// The offsets group name a replay stores under, so replayed stores can be replayed further.
pub const GROUP: &str = "replay";

/// Rebuilds `store` from `topics` with `handler`, calling `progress` now and then.
///
/// # Errors
///
/// [`Error::Kafka`] when the topics cannot be read, [`Error::Store`] when the store fails.
pub async fn replay<H: Handler>(
    bootstrap: &str,
    topics: &[&str],
    start: &Start,
    store: &Store,
    codec: &Codec,
    handler: &H,
    mut progress: impl FnMut(Progress),
) -> Result<Summary> {
    let began = Instant::now();
    // Polled without waiting and put to sleep only when it has nothing: a replay almost always
    // has records ready, and an async receive per record costs a timer and a wake-up each.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // assign() needs a group handle; this group is never joined and never committed to.
        .set(
            "group.id",
            format!("tripstream-replay-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| Error::kafka("creating the replay consumer", e))?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| Error::kafka("reading topic metadata", e))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: Vec<(String, i32, i64)> = Vec::new();
    let mut total = 0u64;
    for topic in topics {
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
                ends.push(((*topic).to_owned(), id, high));
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
        batch: Batch::for_run(store)?,
        applied: 0,
        skipped: 0,
        total,
        last_report: Instant::now(),
    };
    progress(Progress { records: 0, total });
    if topics.len() == 1 {
        // One topic: partitions are independent, so records are applied as they arrive.
        while !ends.is_empty() {
            let Some(message) = consumer.poll(Duration::ZERO) else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
            if let Some(end) = reached(&mut ends, &message) {
                if end {
                    run.apply(store, codec, handler, &message, &mut progress)
                        .await?;
                }
                close(&mut ends, &message);
            }
        }
    } else {
        // Several topics: a service saw their records interleaved in the order they were
        // written (a reply comes after its request), so they are applied in timestamp order,
        // the earlier topic first on a tie, taking a record only once every partition still
        // being read has one waiting.
        let rank = |topic: &str| {
            topics
                .iter()
                .position(|t| *t == topic)
                .unwrap_or(usize::MAX)
        };
        let mut waiting: HashMap<(String, i32), VecDeque<OwnedMessage>> = HashMap::new();
        loop {
            let starved = ends
                .iter()
                .any(|(t, p, _)| waiting.get(&(t.clone(), *p)).is_none_or(VecDeque::is_empty));
            if !starved {
                let earliest = waiting
                    .iter()
                    .filter_map(|(key, queue)| {
                        queue.front().map(|m| {
                            let at = m.timestamp().to_millis().unwrap_or(0);
                            (at, rank(&key.0), key.1, key.clone())
                        })
                    })
                    .min();
                let Some((.., key)) = earliest else {
                    break;
                };
                if let Some(message) = waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                    run.apply(store, codec, handler, &message, &mut progress)
                        .await?;
                }
                continue;
            }
            let Some(message) = consumer.poll(Duration::ZERO) else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
            if let Some(end) = reached(&mut ends, &message) {
                if end {
                    waiting
                        .entry((message.topic().to_owned(), message.partition()))
                        .or_default()
                        .push_back(message.detach());
                }
                close(&mut ends, &message);
            }
        }
    }
    if !run.batch.is_empty() {
        store.commit_batch(&run.batch)?;
    }
    progress(Progress {
        records: run.applied + run.skipped,
        total,
    });
    store.flush()?;
    Ok(Summary {
        applied: run.applied,
        skipped: run.skipped,
        digest: store.digest()?,
        elapsed: began.elapsed(),
    })
}

/// Whether a record belongs to a partition still being read (`Some`), and if so whether it is
/// before that partition's end (`Some(true)`: apply it).
fn reached(ends: &mut [(String, i32, i64)], message: &impl Message) -> Option<bool> {
    ends.iter()
        .find(|(t, p, _)| t == message.topic() && *p == message.partition())
        .map(|(_, _, end)| message.offset() < *end)
}

/// Stops reading a partition once its last record before the end was read.
fn close(ends: &mut Vec<(String, i32, i64)>, message: &impl Message) {
    if let Some(i) = ends.iter().position(|(t, p, end)| {
        t == message.topic() && *p == message.partition() && message.offset() + 1 >= *end
    }) {
        ends.swap_remove(i);
    }
}

/// A replay's running counts and open batch.
struct Run {
    batch: Batch,
    applied: u64,
    skipped: u64,
    total: u64,
    last_report: Instant,
}

impl Run {
    async fn apply<H: Handler, M: Message + Sync>(
        &mut self,
        store: &Store,
        codec: &Codec,
        handler: &H,
        message: &M,
        progress: &mut impl FnMut(Progress),
    ) -> Result<()> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let mut backoff = Duration::from_millis(100);
        loop {
            match process(GROUP, store, codec, handler, message, Some(&mut self.batch)).await {
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
                    self.batch.add(&at, None, Effects::default());
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
            store.commit_batch(&self.batch)?;
            self.batch.committed();
        }
        if self.last_report.elapsed() >= Duration::from_millis(100) {
            progress(Progress {
                records: self.applied + self.skipped,
                total: self.total,
            });
            self.last_report = Instant::now();
        }
        Ok(())
    }
}
