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
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::store::changelog::{Changelog, MARKER, Marker, read_marker};
use crate::store::{Scope, Store};

/// Changes written to sled in one batch while restoring.
const CHUNK: usize = 10_000;

/// How often a long restore logs its progress.
const REPORT: Duration = Duration::from_secs(5);

/// What restores a processor's tasks.
pub(crate) struct Restorer {
    pub(crate) changelog: std::sync::Arc<Changelog>,
    consumer: BaseConsumer,
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
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // assign() needs a group handle; this group is never joined and never committed to.
            .set(
                "group.id",
                format!("tripstream-restore-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("log_level", "3")
            .create()
            .map_err(|e| Error::kafka("creating the restore consumer", e))?;
        Ok(Restorer {
            changelog,
            consumer,
        })
    }

    /// Brings the store's state of `task` up to its changelog, and sets the task's input
    /// offsets to where that state stands.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the changelog cannot be read, [`Error::Store`] when the store
    /// fails. The task's checkpoint is forgotten first, so a restore that fails midway is
    /// done again from the start.
    pub(crate) fn restore(&self, store: &Store, task: i32) -> Result<Restored> {
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
            return Ok(Restored::Current);
        }
        store.set_checkpoint(topic, task, None)?;
        let unsent = store.outbox().purge(topic, task)?;
        let from = match checkpoint {
            Some(at) if !unsent && at >= low && at < high => at,
            _ => {
                store.clear(Scope::Task(task))?;
                low
            }
        };
        tracing::info!(
            changelog = topic,
            task,
            from,
            to = high,
            "Restoring a task from its changelog"
        );
        let began = Instant::now();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, task, Offset::Offset(from))
            .map_err(|e| Error::kafka("assigning the changelog", e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assigning the changelog", e))?;
        let scope = Scope::Task(task);
        let mut read = Read::default();
        let mut last_report = Instant::now();
        let mut next = from;
        while next < high {
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else {
                // A compacted partition has gaps: its position tells how far it is.
                if let Ok(position) = self.consumer.position()
                    && let Some(at) = position
                        .find_partition(topic, task)
                        .and_then(|e| e.offset().to_raw())
                {
                    next = next.max(at);
                }
                continue;
            };
            let message = message.map_err(|e| Error::kafka(format!("reading {topic}"), e))?;
            next = message.offset() + 1;
            if message.offset() >= high {
                break;
            }
            let key = message.key().unwrap_or_default();
            if key == MARKER {
                read.marker = message.payload().and_then(read_marker);
                read.since_marker.clear();
            } else {
                let before = match read.pending.get(key) {
                    Some(value) => value.clone(),
                    None => store.get_in(scope, key)?,
                };
                read.since_marker.entry(key.to_vec()).or_insert(before);
                read.pending
                    .insert(key.to_vec(), message.payload().map(<[u8]>::to_vec));
            }
            read.records += 1;
            if read.pending.len() >= CHUNK {
                store.restore(scope, read.pending.drain())?;
            }
            if last_report.elapsed() >= REPORT {
                tracing::info!(changelog = topic, task, at = next, to = high, "Restoring");
                last_report = Instant::now();
            }
        }
        store.restore(scope, read.pending.drain())?;
        let marker = read.marker.clone().unwrap_or_default();
        if !read.since_marker.is_empty() {
            // A commit without its marker: undo it here and in the changelog.
            tracing::warn!(
                changelog = topic,
                task,
                keys = read.since_marker.len(),
                "The changelog ends in a commit without its marker; undoing it"
            );
            let mut repair: Vec<_> = read
                .since_marker
                .iter()
                .map(|(key, before)| self.changelog.change(task, key, before.as_deref()))
                .collect();
            repair.push(self.changelog.marker(task, &marker));
            store.restore(scope, read.since_marker.drain())?;
            store.outbox().queue(&repair)?;
        } else {
            store.set_checkpoint(topic, task, Some(high))?;
        }
        self.set_offsets(store, task, &marker)?;
        let elapsed = began.elapsed();
        tracing::info!(
            changelog = topic,
            task,
            records = read.records,
            seconds = elapsed.as_secs_f64(),
            per_second = (read.records as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
            "Task restored"
        );
        Ok(Restored::Read(read.records))
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

/// What a restore read so far.
#[derive(Default)]
struct Read {
    /// Changes not yet written to sled.
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys changed since the last marker, with their values before.
    since_marker: HashMap<Vec<u8>, Option<Vec<u8>>>,
    marker: Option<Marker>,
    records: u64,
}
