//! Replay: independent consumers that rebuild a store from topics with a service's handler.
//!
//! It assigns partitions directly (no consumer group join, no offset commits), so it never
//! disturbs live groups, and reads up to the end each partition had when the replay started.
//! Records of several topics are applied in timestamp order, within each share of the tasks
//! (see `pass`). Poison records are skipped and counted (the live service already
//! dead-lettered them).
//! Replaying the same input through the same handler gives the same digest as the live store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// [`Error::Kafka`] when the topics cannot be read, [`Error::Store`] when the store fails,
/// [`Error::Timeout`] when a partition still being read sends nothing for 30 s.
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
///
/// A task's records (those of one partition number, in every topic) only touch the task's own
/// state, so the tasks are shared out over one consumer per core, each applying its share on
/// a thread of its own (on a multi-threaded runtime; one consumer otherwise), as a service's
/// live instances would apply them. Global tables all write one scope, so they are read by
/// one consumer: two shares reading and writing the same keys would lose updates.
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
    let planner = reader(bootstrap)?;
    let (readings, total) = plan(&planner, bootstrap, topics, start, store)?;
    progress(Progress { records: 0, total });
    let shared = Shared {
        topics,
        globals,
        store,
        codec,
        handler,
        total,
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let global = topics.iter().any(|t| globals.iter().any(|g| g == t));
    let consumers = if multi_threaded && !global {
        crate::sync::cores()
    } else {
        1
    };
    let mut shares = share_out(readings, consumers);
    let counts = if shares.len() <= 1 {
        let readings = shares.pop().unwrap_or_default();
        shared.read(&planner, &readings, Some(progress)).await?
    } else {
        let mut consumers = vec![planner];
        for _ in 1..shares.len() {
            consumers.push(reader(bootstrap)?);
        }
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let (shared, handle) = (&shared, &handle);
                let (readers, refused) = crate::sync::spawn_each(
                    scope,
                    "replay",
                    consumers.iter().zip(&shares),
                    move |(consumer, readings)| {
                        let _stop = StopOnPanic(&shared.stop);
                        let read = handle.block_on(shared.read(consumer, readings, None));
                        if read.is_err() {
                            // The other shares stop too: the pass fails as a whole.
                            shared.stop.store(true, Ordering::Relaxed);
                        }
                        read
                    },
                );
                if refused.is_some() {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                while !readers.iter().all(|r| r.is_finished()) {
                    progress(Progress {
                        records: shared.done.load(Ordering::Relaxed),
                        total,
                    });
                    std::thread::sleep(REPORT_EVERY);
                }
                let mut counts = (0, 0);
                for reader in readers {
                    let (applied, skipped) = crate::sync::join(reader)?;
                    counts = (counts.0 + applied, counts.1 + skipped);
                }
                refused.map_or(Ok(counts), Err)
            })
        })?
    };
    progress(Progress {
        records: counts.0 + counts.1,
        total,
    });
    Ok(counts)
}

/// A consumer polled without waiting and put to sleep only when it has nothing: a replay
/// almost always has records ready, and an async receive per record costs a timer and a
/// wake-up each.
fn reader(bootstrap: &str) -> Result<BaseConsumer> {
    crate::kafka::reader_config(bootstrap, "replay")
        .create()
        .map_err(|e| Error::kafka("creating the replay consumer", e))
}

/// One partition a pass reads: its topic's index, its number, and the offsets it is read from
/// and up to (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    topic: usize,
    partition: i32,
    from: i64,
    end: i64,
}

/// The partitions of `topics` with records to apply from `start`, and how many records that is.
fn plan(
    consumer: &BaseConsumer,
    bootstrap: &str,
    topics: &[&str],
    start: &Start,
    store: &Store,
) -> Result<(Vec<Reading>, u64)> {
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| Error::kafka("reading topic metadata", e))?;
    // The embedded broker drops a partition's oldest records past its bound without a word.
    let embedded = crate::kafka::topic::is_mock_cluster(bootstrap).unwrap_or(false);
    let mut readings = Vec::new();
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
                readings.push(Reading {
                    topic: index,
                    partition: id,
                    from,
                    end: high,
                });
            }
        }
    }
    Ok((readings, total))
}

/// `readings` in at most `shares` shares, every partition of a task (partition number) in the
/// same one, tasks dealt out in turn.
fn share_out(readings: Vec<Reading>, shares: usize) -> Vec<Vec<Reading>> {
    let mut tasks: Vec<i32> = readings.iter().map(|r| r.partition).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let count = shares.clamp(1, tasks.len().max(1));
    let mut out = vec![Vec::new(); count];
    for reading in readings {
        let turn = tasks.binary_search(&reading.partition).unwrap_or(0);
        out[turn % count].push(reading);
    }
    out
}

/// Stops the other shares when the share holding it panics (a handler's bug): they would
/// otherwise read all their tasks before the panic reaches the caller.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// How often progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// What every share of a pass applies its records with, and their common counts.
struct Shared<'a, H> {
    topics: &'a [&'a str],
    /// The topics read as global tables.
    globals: &'a [String],
    store: &'a Store,
    codec: &'a Codec,
    handler: &'a H,
    total: u64,
    /// Records read by all shares, counted every [`COUNT_EVERY`] records.
    done: AtomicU64,
    /// Set when a share failed: the others stop.
    stop: AtomicBool,
}

/// Records a share reads between two updates of the common count.
const COUNT_EVERY: u64 = 256;

impl<H: Handler> Shared<'_, H> {
    /// Applies `readings` through `consumer`, reporting to `progress` if given: (applied,
    /// skipped).
    async fn read(
        &self,
        consumer: &BaseConsumer,
        readings: &[Reading],
        mut progress: Option<&mut dyn FnMut(Progress)>,
    ) -> Result<(u64, u64)> {
        let mut assignment = TopicPartitionList::new();
        let mut ends = Ends::new(self.topics);
        for r in readings {
            ends.open(r.topic, r.partition, r.from, r.end);
            assignment
                .add_partition_offset(self.topics[r.topic], r.partition, Offset::Offset(r.from))
                .map_err(|e| Error::kafka("assigning partitions", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| Error::kafka("assigning partitions", e))?;
        // Records are committed in batches: each batch's effects and offsets are one
        // transaction, so a replay stopped midway resumes consistently, and sled's
        // per-transaction cost is paid once per batch instead of once per record.
        let mut run = Run {
            shared: self,
            batch: Batch::default(),
            applied: 0,
            skipped: 0,
            last_report: Instant::now(),
        };
        let stopped = || self.stop.load(Ordering::Relaxed);
        let mut idle = Idle::new();
        if self.topics.len() == 1 {
            // One topic: partitions are independent, so records are applied as they arrive.
            while !ends.all_read() && !stopped() {
                let Some(message) = consumer.poll(Duration::ZERO) else {
                    idle.wait(consumer, &mut ends).await?;
                    continue;
                };
                let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
                if let Some((_, true)) = ends.take(&message) {
                    idle.arrived = true;
                    run.apply(&message, &mut progress).await?;
                }
            }
        } else {
            // Several topics: a service saw their records interleaved in the order they were
            // written (a reply comes after its request), so they are applied in timestamp
            // order, the earlier topic first on a tie, taking a record only once every
            // partition still being read has one waiting.
            let mut waiting: Vec<Vec<VecDeque<OwnedMessage>>> = ends
                .open
                .iter()
                .map(|partitions| partitions.iter().map(|_| VecDeque::new()).collect())
                .collect();
            while !stopped() {
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
                        idle.arrived = true;
                        run.apply(&message, &mut progress).await?;
                    }
                    continue;
                }
                // Starved: a partition whose last offset before its end is a marker would keep
                // every other partition's records queued here until the consumer runs dry.
                idle.look(consumer, &mut ends);
                let Some(message) = consumer.poll(Duration::ZERO) else {
                    idle.wait(consumer, &mut ends).await?;
                    continue;
                };
                let message = message.map_err(|e| Error::kafka("reading records to replay", e))?;
                if let Some((t, true)) = ends.take(&message) {
                    idle.arrived = true;
                    let p = message.partition() as usize;
                    waiting[t][p].push_back(message.detach());
                }
            }
        }
        if !run.batch.is_empty() {
            self.store.commit(&run.batch, Writers::Sole)?;
        }
        Ok((run.applied, run.skipped))
    }
}

/// The partitions a replay reads, by topic index and partition number, and where each ends.
/// Looked up once per record, so by index rather than by searching names.
struct Ends<'a> {
    topics: &'a [&'a str],
    /// Per topic, per partition: where the partition is while it is still being read.
    open: Vec<Vec<Option<Open>>>,
    reading: usize,
}

/// A partition still being read: the offset after the last record read, and its end.
#[derive(Debug, Clone, Copy)]
struct Open {
    next: i64,
    end: i64,
}

impl<'a> Ends<'a> {
    fn new(topics: &'a [&'a str]) -> Self {
        Ends {
            topics,
            open: vec![Vec::new(); topics.len()],
            reading: 0,
        }
    }

    /// Reads `partition` of the `topic`-th topic from `from` up to `end` (exclusive).
    fn open(&mut self, topic: usize, partition: i32, from: i64, end: i64) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        let partitions = &mut self.open[topic];
        if partitions.len() <= p {
            partitions.resize(p + 1, None);
        }
        partitions[p] = Some(Open { next: from, end });
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
        let open = slot.as_mut()?;
        let offset = message.offset();
        let end = open.end;
        open.next = offset + 1;
        if offset + 1 >= end {
            *slot = None;
            self.reading -= 1;
        }
        Some((t, offset < end))
    }

    /// Moves each partition still being read to the consumer's position in it, and stops
    /// reading those it shows at their end: the offsets before a partition's end need not all
    /// be records (a transactional producer's commit marker takes one, never delivered, and
    /// is often a partition's last). Returns whether any partition moved.
    fn skip_to(&mut self, positions: &TopicPartitionList) -> bool {
        let mut moved = false;
        for (topic, partitions) in self.topics.iter().zip(&mut self.open) {
            for (p, slot) in partitions.iter_mut().enumerate() {
                let Some(open) = slot.as_mut() else {
                    continue;
                };
                let at = i32::try_from(p)
                    .ok()
                    .and_then(|p| crate::kafka::position_in(positions, topic, p));
                let Some(at) = at.filter(|at| *at > open.next) else {
                    continue;
                };
                moved = true;
                open.next = at;
                if at >= open.end {
                    *slot = None;
                    self.reading -= 1;
                }
            }
        }
        moved
    }

    /// The partitions still being read, with where each is, for an error.
    fn describe(&self) -> String {
        let mut waiting = Vec::new();
        for (topic, partitions) in self.topics.iter().zip(&self.open) {
            for (p, open) in partitions.iter().enumerate() {
                if let Some(open) = open {
                    waiting.push(format!("{topic}/{p} at {} of {}", open.next, open.end));
                }
            }
        }
        waiting.join(", ")
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

/// How long a share waits for a record, with none arriving and no partition moving on, before
/// it gives up rather than wait for ever: the broker gone, or a partition cut short. A replay
/// into the same store run again resumes from the offsets its commits stored.
const STALLED: Duration = Duration::from_secs(30);

/// How often a share with no record ready asks its consumer where each partition stands.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// A share's waits for records: when it last read one to apply, and when it last looked at its
/// consumer's positions. The clock is read only while the consumer has nothing ready (or a
/// partition being read has nothing waiting), not for every record.
struct Idle {
    /// Whether a record to apply came, or was applied, since the last wait (records past a
    /// partition's end, which a live topic keeps sending, do not count): a share that spent a
    /// while applying what it had queued has not stalled.
    arrived: bool,
    last_read: Instant,
    last_look: Instant,
}

impl Idle {
    fn new() -> Self {
        Idle {
            arrived: false,
            last_read: Instant::now(),
            last_look: Instant::now(),
        }
    }

    /// Closes the partitions the consumer's positions show at their end, at most every
    /// [`LOOK_EVERY`].
    fn look(&mut self, consumer: &BaseConsumer, ends: &mut Ends<'_>) {
        if self.last_look.elapsed() < LOOK_EVERY {
            return;
        }
        self.last_look = Instant::now();
        if let Ok(positions) = consumer.position()
            && ends.skip_to(&positions)
        {
            self.last_read = self.last_look;
        }
    }

    /// Waits a moment for records, first closing the partitions the consumer's positions show
    /// at their end.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming the partitions still being read, when nothing came for
    /// [`STALLED`].
    async fn wait(&mut self, consumer: &BaseConsumer, ends: &mut Ends<'_>) -> Result<()> {
        if std::mem::take(&mut self.arrived) {
            self.last_read = Instant::now();
        }
        self.look(consumer, ends);
        if !ends.all_read() && self.last_read.elapsed() >= STALLED {
            return Err(Error::Timeout {
                action: format!("replaying {}: no record came", ends.describe()),
                seconds: STALLED.as_secs(),
            });
        }
        tokio::time::sleep(IDLE).await;
        Ok(())
    }
}

/// A share's running counts and open batch.
struct Run<'s, 'a, H> {
    shared: &'s Shared<'a, H>,
    batch: Batch,
    applied: u64,
    skipped: u64,
    last_report: Instant,
}

impl<H: Handler> Run<'_, '_, H> {
    async fn apply<M: Message + Sync>(
        &mut self,
        message: &M,
        progress: &mut Option<&mut dyn FnMut(Progress)>,
    ) -> Result<()> {
        let shared = self.shared;
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        // The replay's store is its own: nothing to check at commit, no reads to record.
        let apply = Apply {
            group: GROUP,
            store: shared.store,
            codec: shared.codec,
            handler: shared.handler,
            writers: Writers::Sole,
            globals: shared.globals,
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
                Err(Failure::Retry(_)) if shared.stop.load(Ordering::Relaxed) => {
                    // Another share failed, so the pass does: the record stays unapplied,
                    // and the share's batch ends before it.
                    return Ok(());
                }
                Err(Failure::Retry(reason)) => {
                    tracing::warn!(reason, "Retrying a replayed record");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if self.batch.len() >= BATCH_RECORDS {
            shared.store.commit(&self.batch, Writers::Sole)?;
            self.batch.clear();
        }
        // The common count and the clock are touched every few hundred records, not for each.
        if (self.applied + self.skipped).is_multiple_of(COUNT_EVERY) {
            let done = shared.done.fetch_add(COUNT_EVERY, Ordering::Relaxed) + COUNT_EVERY;
            if let Some(progress) = progress
                && self.last_report.elapsed() >= REPORT_EVERY
            {
                progress(Progress {
                    records: done,
                    total: shared.total,
                });
                self.last_report = Instant::now();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(topic: usize, partition: i32, records: i64) -> Reading {
        Reading {
            topic,
            partition,
            from: 0,
            end: records,
        }
    }

    #[test]
    fn every_partition_of_a_task_goes_to_one_share_and_tasks_are_dealt_in_turn() {
        // Two topics of four partitions each; task 2 has nothing left in topic 1.
        let readings: Vec<Reading> = (0..4)
            .map(|p| reading(0, p, 10))
            .chain([0, 1, 3].map(|p| reading(1, p, 5)))
            .collect();
        let shares = share_out(readings.clone(), 2);
        let tasks = |share: &[Reading]| {
            let mut tasks: Vec<i32> = share.iter().map(|r| r.partition).collect();
            tasks.sort_unstable();
            tasks.dedup();
            tasks
        };
        assert_eq!(shares.len(), 2);
        assert_eq!(tasks(&shares[0]), [0, 2]);
        assert_eq!(tasks(&shares[1]), [1, 3]);
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), readings.len());
        for share in &shares {
            for r in share {
                let task_elsewhere = shares
                    .iter()
                    .filter(|other| !std::ptr::eq(*other, share))
                    .flatten()
                    .any(|o| o.partition == r.partition);
                assert!(!task_elsewhere, "task {} is split", r.partition);
            }
        }
    }

    #[test]
    fn a_partition_whose_position_reaches_its_end_is_read_even_without_its_last_record() {
        let topics = ["orders", "payments"];
        let mut ends = Ends::new(&topics);
        ends.open(0, 0, 0, 10);
        ends.open(0, 1, 4, 10);
        ends.open(1, 0, 0, 3);
        let positions = |at: &[(&str, i32, Offset)]| {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, offset) in at {
                tpl.add_partition_offset(topic, *partition, *offset)
                    .expect("a position");
            }
            tpl
        };
        // Nothing read yet: a partition the consumer has no position in stays open.
        assert!(!ends.skip_to(&positions(&[("orders", 1, Offset::Invalid)])));
        assert!(!ends.skip_to(&positions(&[("orders", 1, Offset::Offset(4))])));
        assert_eq!(ends.reading().count(), 3);
        // orders/0 past its last record (offset 9 a commit marker), payments/0 moved on.
        assert!(ends.skip_to(&positions(&[
            ("orders", 0, Offset::Offset(10)),
            ("payments", 0, Offset::Offset(2)),
        ])));
        assert_eq!(ends.reading().collect::<Vec<_>>(), [(0, 1), (1, 0)]);
        assert_eq!(ends.describe(), "orders/1 at 4 of 10, payments/0 at 2 of 3");
        assert!(!ends.skip_to(&positions(&[("payments", 0, Offset::Offset(2))])));
        assert!(ends.skip_to(&positions(&[("payments", 0, Offset::Offset(3))])));
        assert!(!ends.all_read());
        // A position behind where the partition is changes nothing.
        assert!(!ends.skip_to(&positions(&[("orders", 1, Offset::Offset(2))])));
        assert!(ends.skip_to(&positions(&[("orders", 1, Offset::Offset(11))])));
        assert!(ends.all_read());
    }

    #[test]
    fn there_are_never_more_shares_than_tasks_nor_fewer_than_one() {
        assert_eq!(share_out(vec![reading(0, 7, 3)], 8).len(), 1);
        assert_eq!(share_out(Vec::new(), 4), vec![Vec::<Reading>::new()]);
        assert_eq!(
            share_out(vec![reading(0, 0, 1), reading(0, 1, 1)], 0).len(),
            1
        );
    }
}
