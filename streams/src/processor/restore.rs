//! Restoring a task's state from its changelog partition before the task is processed.
//!
//! The local store is a cache of the changelog: a task whose changelog this store wrote last
//! (its checkpoint equals the partition's end) is used as it is; otherwise what the store holds
//! of the task is stale, and the task is read back from the changelog, from the checkpoint on
//! when the store has one and nothing unsent, else from the start. The keys after the last
//! marker are a commit whose writer died while publishing it: they are undone locally and in
//! the changelog (a repair that writes the keys' values back, then a marker), so the task's
//! state and offsets are those of its last whole commit and its records after it are applied
//! again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::store::changelog::{Changelog, MARKER, Marker, read_marker};
use crate::store::{Scope, Store};

/// Changes written to sled in one batch while restoring.
const CHUNK: usize = 10_000;

/// How long a restore waits for the changelog's next record before it gives up.
const STALLED: Duration = Duration::from_secs(30);

/// How often a long restore logs its progress.
const REPORT: Duration = Duration::from_secs(5);

/// What restores a processor's tasks.
pub(crate) struct Restorer {
    pub(crate) changelog: std::sync::Arc<Changelog>,
    bootstrap: String,
    consumer: BaseConsumer,
    /// More consumers, to read many tasks' changelogs on every core (see
    /// [`Restorer::restore_all`]); made at the first restore of several tasks.
    extra: std::sync::OnceLock<Vec<BaseConsumer>>,
}

/// A consumer reading changelogs.
fn new_consumer(bootstrap: &str) -> Result<BaseConsumer> {
    crate::kafka::reader_config(bootstrap, "restore")
        // A consumer restores one assignment after another: a fetch left waiting on the
        // partitions before must not hold up the next read for the default 500 ms.
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3")
        .create()
        .map_err(|e| Error::kafka("creating the restore consumer", e))
}

/// Who restores a task, which decides what it may do with a commit the changelog ends in
/// without its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The task's new owner: the commit's writer is gone, so the commit is undone here and in
    /// the changelog.
    Owner,
    /// A standby keeping a warm copy of a task another instance owns: the commit may be one
    /// its owner is publishing right now, so it is undone here only, and the next catch-up
    /// reads it again from the last marker.
    Standby,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restored {
    /// The store held the task's latest state already.
    Current,
    /// The task was read from the changelog: this many records.
    Read(u64),
}

impl Restorer {
    /// A restorer reading `changelog` on `bootstrap`.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the consumer cannot be created.
    pub(crate) fn new(bootstrap: &str, changelog: std::sync::Arc<Changelog>) -> Result<Self> {
        Ok(Restorer {
            changelog,
            bootstrap: bootstrap.to_owned(),
            consumer: new_consumer(bootstrap)?,
            extra: std::sync::OnceLock::new(),
        })
    }

    /// Brings the store's state of `task` up to its changelog, and sets the task's input
    /// offsets to where that state stands.
    ///
    /// # Errors
    ///
    /// As [`Restorer::restore_all`].
    pub(crate) fn restore(&self, store: &Store, task: i32, role: Role) -> Result<Restored> {
        let restored = self.restore_all(store, &[task], role)?;
        // One task in, its one result out.
        Ok(restored
            .into_iter()
            .next()
            .map_or(Restored::Current, |(_, r)| r))
    }

    /// Brings the store's state of each of `tasks` up to its changelog, and sets each task's
    /// input offsets to where its state stands. The changelogs of the tasks behind are read
    /// together (no task's read waits for another's to end), split over one consumer per
    /// core, each on a thread of its own that also writes its tasks to sled (which takes
    /// writes from several threads at once): reading and writing on one thread was most of
    /// a restore's time.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the changelog cannot be read, [`Error::Store`] when the store
    /// fails. Each task's checkpoint is forgotten first, so a restore that fails midway is
    /// done again from the start.
    pub(crate) fn restore_all(
        &self,
        store: &Store,
        tasks: &[i32],
        role: Role,
    ) -> Result<Vec<(i32, Restored)>> {
        let mut done = Vec::with_capacity(tasks.len());
        let mut behind = Vec::new();
        for &task in tasks {
            match self.prepare(store, task, role)? {
                None => done.push((task, Restored::Current)),
                Some(reading) => behind.push(reading),
            }
        }
        let consumers = self.consumers(behind.len());
        if consumers.len() <= 1 {
            done.extend(self.read_and_finish(&self.consumer, behind, store, role)?);
            return Ok(done);
        }
        let mut shares: Vec<Vec<Reading>> = consumers.iter().map(|_| Vec::new()).collect();
        for (i, reading) in behind.into_iter().enumerate() {
            shares[i % consumers.len()].push(reading);
        }
        std::thread::scope(|scope| {
            let (readers, refused) = crate::sync::spawn_each(
                scope,
                "restore",
                consumers.into_iter().zip(shares),
                |(consumer, share)| self.read_and_finish(consumer, share, store, role),
            );
            for reader in readers {
                done.extend(crate::sync::join(reader)?);
            }
            // Refused a thread, the shares started still finish; a rebalance does the rest
            // again, task by task.
            refused.map_or(Ok(done), Err)
        })
    }

    /// The consumers to read `tasks` tasks' changelogs with: one per core, at most one per
    /// task; the first is the restorer's own, the others made when first needed.
    fn consumers(&self, tasks: usize) -> Vec<&BaseConsumer> {
        if tasks <= 1 {
            return vec![&self.consumer];
        }
        let cores = crate::sync::cores();
        let wanted = cores.min(tasks).saturating_sub(1);
        let extra = self.extra.get_or_init(|| {
            (1..cores)
                .map_while(|_| match new_consumer(&self.bootstrap) {
                    Ok(consumer) => Some(consumer),
                    Err(error) => {
                        // Restores read on fewer cores, not fail.
                        tracing::warn!(%error, "Creating another restore consumer failed");
                        None
                    }
                })
                .collect()
        });
        std::iter::once(&self.consumer)
            .chain(extra.iter().take(wanted))
            .collect()
    }

    /// Reads the changelogs of `tasks` with `consumer` to their ends, and unassigns them:
    /// left assigned, whether the read ended or failed, the consumer would go on fetching the
    /// live changelog into its queue (up to librdkafka's 64 MiB) until the next restore.
    fn read(
        &self,
        consumer: &BaseConsumer,
        tasks: Vec<Reading>,
        store: &Store,
        role: Role,
    ) -> Result<Vec<Reading>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let read = self.read_assigned(consumer, tasks, store, role);
        let unassigned = consumer
            .unassign()
            .map_err(|e| Error::kafka("unassigning the changelog", e));
        let read = read?;
        unassigned?;
        Ok(read)
    }

    fn read_assigned(
        &self,
        consumer: &BaseConsumer,
        tasks: Vec<Reading>,
        store: &Store,
        role: Role,
    ) -> Result<Vec<Reading>> {
        let topic = self.changelog.topic.as_str();
        let mut tpl = TopicPartitionList::new();
        for reading in &tasks {
            tpl.add_partition_offset(topic, reading.task, Offset::Offset(reading.next))
                .map_err(|e| Error::kafka("assigning the changelog", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assigning the changelog", e))?;
        // librdkafka keeps a partition paused through an unassignment: one this consumer
        // paused at the end of an earlier restore would never be fetched.
        consumer
            .resume(&tpl)
            .map_err(|e| Error::kafka("resuming the changelog", e))?;
        let mut reading: FastMap<i32, Reading> = tasks.into_iter().map(|r| (r.task, r)).collect();
        let mut read = Vec::with_capacity(reading.len());
        let mut last_report = Instant::now();
        let mut last_read = Instant::now();
        // Whether a record of a task being read came since the consumer last had none ready:
        // the clock is read only then, and every 1,024 records for the progress report, not
        // twice for each record.
        let mut arrived = false;
        let mut records = 0u64;
        while !reading.is_empty() {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                if std::mem::take(&mut arrived) {
                    last_read = Instant::now();
                }
                // A compacted partition has gaps: its position tells how far it is.
                if let Ok(position) = consumer.position() {
                    for (task, behind) in &mut reading {
                        if let Some(at) = crate::kafka::position_in(&position, topic, *task)
                            && at > behind.next
                        {
                            behind.next = at;
                            last_read = Instant::now();
                        }
                    }
                }
                let ended: Vec<i32> = reading
                    .iter()
                    .filter(|(_, b)| b.next >= b.high)
                    .map(|(task, _)| *task)
                    .collect();
                for task in ended {
                    end(consumer, topic, task, &mut reading, &mut read);
                }
                if role == Role::Owner && last_report.elapsed() >= REPORT {
                    report(topic, &reading);
                    last_report = Instant::now();
                }
                if last_read.elapsed() >= STALLED && !reading.is_empty() {
                    // The caller tries again (or, for a standby, at its next look); a restore
                    // that waits for ever would hold the rebalance, and the stop, with it.
                    let mut waiting: Vec<String> = reading
                        .values()
                        .map(|b| format!("{topic}/{} at {} of {}", b.task, b.next, b.high))
                        .collect();
                    waiting.sort();
                    return Err(Error::Timeout {
                        action: format!("restoring {}: no record", waiting.join(", ")),
                        seconds: STALLED.as_secs(),
                    });
                }
                continue;
            };
            let message = message.map_err(|e| Error::kafka(format!("reading {topic}"), e))?;
            let task = message.partition();
            let Some(behind) = reading.get_mut(&task).filter(|_| message.topic() == topic) else {
                // Fetched for a task read to its end already (paused since), or for one
                // restored before, before this assignment replaced it: no progress.
                continue;
            };
            arrived = true;
            records += 1;
            behind.next = message.offset() + 1;
            if message.offset() < behind.high {
                behind.take(store, &message)?;
            }
            if behind.next >= behind.high {
                end(consumer, topic, task, &mut reading, &mut read);
            }
            if role == Role::Owner
                && records.is_multiple_of(1_024)
                && last_report.elapsed() >= REPORT
            {
                report(topic, &reading);
                last_report = Instant::now();
            }
        }
        Ok(read)
    }

    /// Reads `tasks` with `consumer` in two halves, writing the first half's tasks to sled
    /// on a thread of its own while the second half is read (a reader spends much of its
    /// time waiting on fetches), then finishes them all.
    fn read_and_finish(
        &self,
        consumer: &BaseConsumer,
        mut tasks: Vec<Reading>,
        store: &Store,
        role: Role,
    ) -> Result<Vec<(i32, Restored)>> {
        let finish = |read: Vec<Reading>| -> Result<Vec<(i32, Restored)>> {
            read.into_iter()
                .map(|behind| Ok((behind.task, self.finish(store, behind, role)?)))
                .collect()
        };
        if tasks.len() < 2 {
            return finish(self.read(consumer, tasks, store, role)?);
        }
        let second = tasks.split_off(tasks.len() / 2);
        let first = self.read(consumer, tasks, store, role)?;
        std::thread::scope(|scope| {
            let name = std::thread::current()
                .name()
                .unwrap_or("restore")
                .to_owned();
            // Refused a thread, the restore fails like a failed read (a rebalance then does it
            // again task by task, on its own thread).
            let writing =
                crate::sync::spawn_scoped(scope, format!("{name}-w"), "restore", || finish(first))?;
            let second = self.read(consumer, second, store, role);
            let mut done = crate::sync::join(writing)?;
            done.extend(finish(second?)?);
            Ok(done)
        })
    }

    /// Decides where `task`'s restore reads from, clearing what the store holds of the task
    /// when that is stale: `None` when the store holds the task's latest state.
    fn prepare(&self, store: &Store, task: i32, role: Role) -> Result<Option<Reading>> {
        let topic = self.changelog.topic.as_str();
        // Short: a rebalance waits for it, and a failed restore is tried again.
        let timeout = Duration::from_secs(10);
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, task, timeout)
            .map_err(|e| Error::kafka(format!("reading the end of {topic}/{task}"), e))?;
        let checkpoint = store.checkpoint(topic, task)?;
        if checkpoint == Some(high) || (checkpoint.is_none() && high <= low) {
            // This store wrote the changelog's last commit of the task (what it has not sent
            // yet follows it), or nobody logged the task yet.
            return Ok(None);
        }
        store.set_checkpoint(topic, task, None)?;
        // The records after the changelog's last marker are applied again: ids this store
        // applied them with before must not make them look like duplicates.
        store.forget_marks(Scope::Task(task))?;
        let unsent = store.outbox().purge(topic, task)?;
        // From the checkpoint, the task's offsets stand where the store's state does, until a
        // marker read says otherwise; from the start, at no record read yet.
        let (from, reached) = match checkpoint {
            Some(at) if !unsent && at >= low && at < high => {
                (at, self.stored_offsets(store, task)?)
            }
            _ => {
                store.clear(Scope::Task(task))?;
                (low, Marker::default())
            }
        };
        if role == Role::Owner {
            tracing::info!(
                changelog = topic,
                task,
                from,
                to = high,
                "Restoring a task from its changelog"
            );
        }
        Ok(Some(Reading {
            task,
            next: from,
            high,
            began: Instant::now(),
            read: Read {
                marker: Some(reached),
                whole_at: (from > low).then_some(from),
                ..Read::default()
            },
        }))
    }

    /// Ends a task's restore once its changelog is read: undoes a commit the changelog ends
    /// in without its marker, and sets the task's checkpoint and input offsets.
    fn finish(&self, store: &Store, behind: Reading, role: Role) -> Result<Restored> {
        let topic = self.changelog.topic.as_str();
        let Reading {
            task,
            mut read,
            began,
            high,
            ..
        } = behind;
        let scope = Scope::Task(task);
        read.flush(store, scope)?;
        let marker = read.marker.clone().unwrap_or_default();
        if role == Role::Standby && !read.since_marker.is_empty() {
            let before = read.take_before();
            store.restore(scope, before)?;
            store.set_checkpoint(topic, task, read.whole_at)?;
        } else if !read.since_marker.is_empty() {
            // A commit without its marker: undo it here and in the changelog.
            tracing::warn!(
                changelog = topic,
                task,
                keys = read.since_marker.len(),
                "The changelog ends in a commit without its marker; undoing it"
            );
            let before = read.take_before();
            let mut repair: Vec<_> = before
                .iter()
                .map(|(key, value)| self.changelog.change(task, key, value.as_deref()))
                .collect();
            repair.push(self.changelog.marker(task, &marker));
            store.restore(scope, before)?;
            store.outbox().queue(&repair)?;
        } else {
            store.set_checkpoint(topic, task, Some(high))?;
        }
        self.set_offsets(store, task, &marker)?;
        let elapsed = began.elapsed();
        let per_second = (read.records as f64 / elapsed.as_secs_f64().max(1e-6)) as u64;
        if role == Role::Owner {
            tracing::info!(
                changelog = topic,
                task,
                records = read.records,
                seconds = elapsed.as_secs_f64(),
                per_second,
                "Task restored"
            );
        } else {
            tracing::debug!(
                changelog = topic,
                task,
                records = read.records,
                seconds = elapsed.as_secs_f64(),
                per_second,
                "Standby copy caught up"
            );
        }
        Ok(Restored::Read(read.records))
    }

    /// The task's input offsets as the store holds them.
    fn stored_offsets(&self, store: &Store, task: i32) -> Result<Marker> {
        Ok(store
            .offsets(&self.changelog.group)?
            .into_iter()
            .filter(|(topic, partition, _)| {
                *partition == task && self.changelog.inputs.contains(topic)
            })
            .map(|(topic, _, next)| (topic, next))
            .collect())
    }

    /// The task's input offsets as its last marker says; an input it names not (never read
    /// by the task) starts at its beginning.
    fn set_offsets(&self, store: &Store, task: i32, marker: &Marker) -> Result<()> {
        let offsets = self.changelog.inputs.iter().map(|topic| {
            (
                topic.as_str(),
                task,
                Some(marker.get(topic).copied().unwrap_or(0)),
            )
        });
        store.set_offsets(&self.changelog.group, offsets)
    }
}

/// Moves a task read to its end from `reading` to `read`, and stops fetching it: records
/// appended meanwhile are not its restore's.
fn end(
    consumer: &BaseConsumer,
    topic: &str,
    task: i32,
    reading: &mut FastMap<i32, Reading>,
    read: &mut Vec<Reading>,
) {
    let Some(behind) = reading.remove(&task) else {
        return;
    };
    read.push(behind);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, task);
    if let Err(error) = consumer.pause(&tpl) {
        tracing::debug!(%error, changelog = topic, task, "Pausing a restored task's changelog failed");
    }
}

/// Logs how far a consumer's share of a restore is.
fn report(topic: &str, reading: &FastMap<i32, Reading>) {
    let left: i64 = reading.values().map(|b| b.high - b.next).sum();
    let tasks: Vec<i32> = reading.keys().copied().collect();
    tracing::info!(changelog = topic, ?tasks, records_left = left, "Restoring");
}

/// A task whose changelog is being read.
struct Reading {
    task: i32,
    /// The changelog offset of the next record to read.
    next: i64,
    /// The changelog's end when the restore began.
    high: i64,
    began: Instant,
    read: Read,
}

impl Reading {
    /// Takes in one record of the task's changelog.
    fn take(&mut self, store: &Store, message: &impl Message) -> Result<()> {
        let read = &mut self.read;
        let key = message.key().unwrap_or_default();
        if key == MARKER {
            read.marker = message.payload().and_then(read_marker);
            read.whole_at = Some(self.next);
            read.commit_ended();
        } else {
            read.change(key, message.payload());
        }
        read.records += 1;
        if read.pending.len() >= CHUNK {
            read.flush(store, Scope::Task(self.task))?;
        }
        Ok(())
    }
}

/// What a restore read so far.
#[derive(Default)]
struct Read {
    /// Changes not yet written to sled.
    pending: FastMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys changed since the last marker, with their values before.
    since_marker: FastMap<Vec<u8>, Before>,
    marker: Option<Marker>,
    /// The changelog offset after the last marker read (or where a read from a checkpoint
    /// began): the state up to there is a whole commit's.
    whole_at: Option<i64>,
    records: u64,
}

/// A key's value before its first change since the last marker.
enum Before {
    /// A value read earlier in this restore (`None`: absent).
    Known(Option<Vec<u8>>),
    /// What the store holds: read only when pending changes are about to overwrite it, since
    /// nearly every restore ends in a marker and never needs it (a sled read per record was
    /// most of a restore's cost).
    Stored,
}

impl Read {
    /// Takes in the change of `key` to `value` (`None`: removed).
    fn change(&mut self, key: &[u8], value: Option<&[u8]>) {
        let value = value.map(<[u8]>::to_vec);
        let earlier = match self.pending.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                self.pending.insert(key.to_vec(), value);
                None
            }
        };
        if !self.since_marker.contains_key(key) {
            let before = earlier.map_or(Before::Stored, Before::Known);
            self.since_marker.insert(key.to_vec(), before);
        }
    }

    /// Takes in a marker: the changes read so far are whole commits.
    fn commit_ended(&mut self) {
        self.since_marker.clear();
    }

    /// Writes the pending changes to the store, first reading what they overwrite of the keys
    /// changed since the last marker.
    fn flush(&mut self, store: &Store, scope: Scope) -> Result<()> {
        for (key, before) in &mut self.since_marker {
            if let Before::Stored = before {
                *before = Before::Known(store.get_in(scope, key)?);
            }
        }
        // In key order: each insert still walks sled's tree from its root, but through the
        // nodes the last one touched, where keys in hash order each went somewhere else
        // (restores ran ~30% faster).
        let mut changes: Vec<_> = self.pending.drain().collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        store.restore(scope, changes)
    }

    /// The keys changed since the last marker with their values before, taken out; after a
    /// [`Read::flush`], which has read every value that was left in the store.
    fn take_before(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.since_marker
            .drain()
            .map(|(key, before)| match before {
                Before::Known(value) => (key, value),
                // Not after a flush; absent is what an unread key of a cleared task holds.
                Before::Stored => (key, None),
            })
            .collect()
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::codec::Codec;
    use crate::kafka::broker::EmbeddedBroker;
    use crate::kafka::{OutgoingRecord, Producer};
    use crate::registry::Client;

    const TOPIC: &str = "t.changelog";

    fn changelog() -> Arc<Changelog> {
        Arc::new(Changelog {
            topic: TOPIC.into(),
            group: "g".into(),
            inputs: vec!["in".into()],
        })
    }

    /// Task 0's changes as a commit logs them; `Some(n)` after a batch: its marker, with input
    /// offset `n`.
    fn log(changes: &[(&str, Option<&str>)], marker: Option<i64>) -> Vec<OutgoingRecord> {
        let log = changelog();
        let mut records: Vec<_> = changes
            .iter()
            .map(|(key, value)| log.change(0, key.as_bytes(), value.map(str::as_bytes)))
            .collect();
        if let Some(next) = marker {
            records.push(log.marker(0, &Marker::from([("in".to_owned(), next)])));
        }
        records
    }

    /// A broker with the changelog topic, and a producer to write it (nothing it sends is
    /// encoded, so the registry is never called).
    fn changelog_broker() -> (EmbeddedBroker, Producer) {
        let broker = EmbeddedBroker::start(1).expect("broker");
        broker.create_topic(TOPIC, 1, 1).expect("topic");
        let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
        let producer = Producer::new(broker.bootstrap_servers(), codec, &[]).expect("producer");
        (broker, producer)
    }

    async fn send(producer: &Producer, records: &[OutgoingRecord]) {
        for record in records {
            producer.send_record(record).await.expect("sent");
        }
    }

    fn state(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.scan_in(Scope::Task(0), b"").expect("scan")
    }

    fn pair(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    /// A change as the changelog holds it: key and value (`None`: removed).
    type Change = (Vec<u8>, Option<Vec<u8>>);

    /// The repair a restore queued: its changes in key order, and whether a marker ends it.
    fn repair(store: &Store) -> (Vec<Change>, bool) {
        let mut queued: Vec<_> = store
            .outbox()
            .oldest(100)
            .expect("outbox")
            .into_iter()
            .map(|(_, r)| (r.key, r.payload))
            .collect();
        let marker = queued.pop().is_some_and(|(key, _)| key == MARKER);
        queued.sort();
        (queued, marker)
    }

    /// Any run of changes, markers and flushes leaves the store holding each key's last value,
    /// and the values before the last commit as they were when it began.
    #[test]
    fn flushes_anywhere_keep_last_values_and_the_values_before_the_last_commit() {
        // One store for every case, each in a task of its own.
        let store = std::panic::AssertUnwindSafe(Store::temporary().expect("store"));
        let case = std::sync::atomic::AtomicI32::new(0);
        bolero::check!().for_each(|ops: &[u8]| {
            let store = &*store;
            let scope = Scope::Task(case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let key = |k: u8| format!("k{}", k % 5).into_bytes();
            // What the store held before the restore: keys 0 to 2.
            let mut state: BTreeMap<Vec<u8>, Vec<u8>> =
                (0..3).map(|k| (key(k), b"held".to_vec())).collect();
            let held = state.iter().map(|(k, v)| (k.clone(), Some(v.clone())));
            store.restore(scope, held).expect("held");
            let mut before: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            let mut read = Read::default();
            for (at, op) in ops.iter().enumerate() {
                match op & 7 {
                    4 | 5 => {
                        read.commit_ended();
                        before.clear();
                    }
                    6 => read.flush(store, scope).expect("flushed"),
                    _ => {
                        let k = key(op >> 3);
                        let value = (op >> 6 != 3).then(|| format!("v{at}").into_bytes());
                        before
                            .entry(k.clone())
                            .or_insert_with(|| state.get(&k).cloned());
                        match &value {
                            Some(v) => state.insert(k.clone(), v.clone()),
                            None => state.remove(&k),
                        };
                        read.change(&k, value.as_deref());
                    }
                }
            }
            read.flush(store, scope).expect("flushed");
            let stored: BTreeMap<_, _> = store
                .scan_in(scope, b"")
                .expect("scan")
                .into_iter()
                .collect();
            assert_eq!(stored, state);
            let taken: BTreeMap<_, _> = read.take_before().into_iter().collect();
            assert_eq!(taken, before);
        });
    }

    #[tokio::test]
    async fn tasks_restored_together_each_get_their_own_state_offsets_and_repair() {
        let broker = EmbeddedBroker::start(1).expect("broker");
        let tasks = 6;
        broker.create_topic(TOPIC, tasks, 1).expect("topic");
        let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
        let producer = Producer::new(broker.bootstrap_servers(), codec, &[]).expect("producer");
        let log = changelog();
        // Task t: key "k" set to t, then to t + 100 with its input at 10 + t; task 5 also
        // logs a commit without its marker, and task 4 logs nothing.
        for task in (0..tasks).filter(|t| *t != 4) {
            let first = task.to_string();
            let second = (task + 100).to_string();
            let mut records = vec![
                log.change(task, b"k", Some(first.as_bytes())),
                log.change(task, b"k", Some(second.as_bytes())),
                log.marker(
                    task,
                    &Marker::from([("in".to_owned(), 10 + i64::from(task))]),
                ),
            ];
            if task == 5 {
                records.push(log.change(task, b"k", Some(b"torn")));
            }
            send(&producer, &records).await;
        }
        let restorer = Restorer::new(broker.bootstrap_servers(), changelog()).expect("restorer");
        let store = Store::temporary().expect("store");
        let all: Vec<i32> = (0..tasks).collect();
        let mut restored = restorer
            .restore_all(&store, &all, Role::Owner)
            .expect("restored");
        restored.sort_by_key(|(task, _)| *task);
        let expected: Vec<_> = (0..tasks)
            .map(|task| match task {
                4 => (task, Restored::Current),
                5 => (task, Restored::Read(4)),
                _ => (task, Restored::Read(3)),
            })
            .collect();
        assert_eq!(restored, expected);
        for task in (0..tasks).filter(|t| *t != 4) {
            let value = (task + 100).to_string();
            assert_eq!(
                store.scan_in(Scope::Task(task), b"").expect("scan"),
                vec![(b"k".to_vec(), value.into_bytes())],
                "task {task}"
            );
            assert_eq!(
                store.next_offset("g", "in", task).expect("offset"),
                Some(10 + i64::from(task))
            );
            let checkpoint = store.checkpoint(TOPIC, task).expect("checkpoint");
            assert_eq!(checkpoint, (task != 5).then_some(3), "task {task}");
        }
        // Only the torn commit of task 5 is written back: its key's value before, and a marker.
        let queued: Vec<_> = store
            .outbox()
            .oldest(100)
            .expect("outbox")
            .into_iter()
            .map(|(_, r)| (r.partition, r.key, r.payload))
            .collect();
        assert_eq!(queued.len(), 2, "{queued:?}");
        assert_eq!(queued[0], (Some(5), b"k".to_vec(), Some(b"105".to_vec())));
        assert_eq!(queued[1].1, MARKER.to_vec());
    }

    #[tokio::test]
    async fn a_commit_without_its_marker_is_undone_to_the_last_marker_here_and_in_the_changelog() {
        let (broker, producer) = changelog_broker();
        // A restore from the start, of a log whose writer died while publishing a commit.
        send(
            &producer,
            &log(&[("a", Some("1")), ("b", Some("2"))], Some(5)),
        )
        .await;
        send(
            &producer,
            &log(&[("a", Some("3")), ("b", None), ("c", Some("4"))], None),
        )
        .await;
        let restorer = Restorer::new(broker.bootstrap_servers(), changelog()).expect("restorer");
        let store = Store::temporary().expect("store");
        assert_eq!(
            restorer.restore(&store, 0, Role::Owner).expect("restored"),
            Restored::Read(6)
        );
        assert_eq!(state(&store), vec![pair("a", "1"), pair("b", "2")]);
        assert_eq!(store.next_offset("g", "in", 0).expect("offset"), Some(5));
        let undone = vec![
            (b"a".to_vec(), Some(b"1".to_vec())),
            (b"b".to_vec(), Some(b"2".to_vec())),
            (b"c".to_vec(), None),
        ];
        assert_eq!(repair(&store), (undone, true));
        assert_eq!(store.checkpoint(TOPIC, 0).expect("checkpoint"), None);
    }

    #[tokio::test]
    async fn a_standby_leaves_a_commit_still_being_published_to_its_owner_and_reads_it_once_whole()
    {
        let (broker, producer) = changelog_broker();
        send(
            &producer,
            &log(&[("a", Some("1")), ("b", Some("2"))], Some(5)),
        )
        .await;
        // The owner has published part of its next commit, not its marker yet.
        send(&producer, &log(&[("a", Some("3")), ("b", None)], None)).await;
        let restorer = Restorer::new(broker.bootstrap_servers(), changelog()).expect("restorer");
        let store = Store::temporary().expect("store");
        assert_eq!(
            restorer
                .restore(&store, 0, Role::Standby)
                .expect("caught up"),
            Restored::Read(5)
        );
        assert_eq!(state(&store), vec![pair("a", "1"), pair("b", "2")]);
        assert_eq!(store.next_offset("g", "in", 0).expect("offset"), Some(5));
        assert_eq!(
            repair(&store),
            (Vec::new(), false),
            "the owner's log is left alone"
        );
        assert_eq!(
            store.checkpoint(TOPIC, 0).expect("checkpoint"),
            Some(3),
            "the next catch-up starts after the last marker"
        );
        // The rest of the commit and its marker.
        send(&producer, &log(&[("c", Some("4"))], Some(8))).await;
        assert_eq!(
            restorer
                .restore(&store, 0, Role::Standby)
                .expect("caught up"),
            Restored::Read(4)
        );
        assert_eq!(state(&store), vec![pair("a", "3"), pair("c", "4")]);
        assert_eq!(store.next_offset("g", "in", 0).expect("offset"), Some(8));
        assert_eq!(store.checkpoint(TOPIC, 0).expect("checkpoint"), Some(7));
        assert_eq!(
            restorer.restore(&store, 0, Role::Owner).expect("current"),
            Restored::Current,
            "a take-over reads nothing"
        );
    }

    #[tokio::test]
    async fn a_commit_without_its_marker_after_the_checkpoint_is_undone_to_what_the_store_held() {
        let (broker, producer) = changelog_broker();
        send(
            &producer,
            &log(&[("a", Some("1")), ("b", Some("2"))], Some(5)),
        )
        .await;
        let restorer = Restorer::new(broker.bootstrap_servers(), changelog()).expect("restorer");
        let store = Store::temporary().expect("store");
        assert_eq!(
            restorer.restore(&store, 0, Role::Owner).expect("restored"),
            Restored::Read(3)
        );
        assert_eq!(store.checkpoint(TOPIC, 0).expect("checkpoint"), Some(3));
        assert_eq!(
            restorer.restore(&store, 0, Role::Owner).expect("current"),
            Restored::Current
        );

        // Read on from the checkpoint: what the unfinished commit overwrote is in the store,
        // not among the changes read.
        send(&producer, &log(&[("a", Some("3")), ("c", Some("4"))], None)).await;
        assert_eq!(
            restorer.restore(&store, 0, Role::Owner).expect("restored"),
            Restored::Read(2)
        );
        assert_eq!(state(&store), vec![pair("a", "1"), pair("b", "2")]);
        // The task stands where its last whole commit left it, not at the start of its input.
        assert_eq!(store.next_offset("g", "in", 0).expect("offset"), Some(5));
        let undone = vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"c".to_vec(), None)];
        assert_eq!(repair(&store), (undone, true));
        let (_, marker) = store
            .outbox()
            .oldest(100)
            .expect("outbox")
            .pop()
            .expect("a marker");
        assert_eq!(
            marker.payload.as_deref().and_then(read_marker),
            Some(Marker::from([("in".to_owned(), 5)])),
            "the repair's marker keeps the task's offsets"
        );
    }

    #[tokio::test]
    async fn records_applied_after_the_last_marker_are_not_taken_for_duplicates_when_applied_again()
    {
        let (broker, producer) = changelog_broker();
        send(&producer, &log(&[("a", Some("1"))], Some(5))).await;
        let restorer = Restorer::new(broker.bootstrap_servers(), changelog()).expect("restorer");
        let store = Store::temporary().expect("store");
        restorer.restore(&store, 0, Role::Owner).expect("restored");
        // The store applies the record at offset 5 (event e5); its commit's marker never
        // reaches the changelog, which another owner then writes on from the old marker.
        let mut batch = crate::store::Batch::default();
        let at = crate::store::Position {
            group: "g",
            topic: "in",
            partition: 0,
            offset: 5,
        };
        let mut effects = crate::store::Effects::default();
        effects.put(b"a".to_vec(), b"2".to_vec());
        batch.add(&at, Scope::Task(0), Some(b"e5"), effects);
        store
            .commit(&batch, crate::store::Writers::Shared)
            .expect("commit");
        assert!(store.seen(b"e5"));
        send(&producer, &log(&[("b", Some("1"))], Some(5))).await;

        // The task comes back: offset 5 is applied again, so e5 is no duplicate.
        restorer.restore(&store, 0, Role::Owner).expect("restored");
        assert_eq!(store.next_offset("g", "in", 0).expect("offset"), Some(5));
        assert!(!store.seen(b"e5"));
        assert_eq!(
            store
                .commit(&batch, crate::store::Writers::Shared)
                .expect("commit"),
            crate::store::Committed::Applied
        );
    }
}
