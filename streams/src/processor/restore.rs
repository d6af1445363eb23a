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
    consumer: BaseConsumer,
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
        let consumer: BaseConsumer = crate::kafka::reader_config(bootstrap, "restore")
            // One consumer restores task after task: a fetch left waiting on the partition
            // before must not hold up the next one for the default 500 ms.
            .set("fetch.wait.max.ms", "10")
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
    pub(crate) fn restore(&self, store: &Store, task: i32, role: Role) -> Result<Restored> {
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
        let began = Instant::now();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, task, Offset::Offset(from))
            .map_err(|e| Error::kafka("assigning the changelog", e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assigning the changelog", e))?;
        let scope = Scope::Task(task);
        let mut read = Read {
            marker: Some(reached),
            whole_at: (from > low).then_some(from),
            ..Read::default()
        };
        let mut last_report = Instant::now();
        let mut last_read = Instant::now();
        let mut next = from;
        while next < high {
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else {
                // A compacted partition has gaps: its position tells how far it is.
                if let Ok(position) = self.consumer.position()
                    && let Some(at) = position
                        .find_partition(topic, task)
                        .and_then(|e| e.offset().to_raw())
                    && at > next
                {
                    next = at;
                    last_read = Instant::now();
                }
                if last_read.elapsed() >= STALLED {
                    // The caller tries again (or, for a standby, at its next look); a restore
                    // that waits for ever would hold the rebalance, and the stop, with it.
                    return Err(Error::Timeout {
                        action: format!("restoring {topic}/{task}: no record at {next} of {high}"),
                        seconds: STALLED.as_secs(),
                    });
                }
                continue;
            };
            last_read = Instant::now();
            let message = message.map_err(|e| Error::kafka(format!("reading {topic}"), e))?;
            if message.partition() != task || message.topic() != topic {
                // Fetched for a task restored before, before this assignment replaced it.
                continue;
            }
            next = message.offset() + 1;
            if message.offset() >= high {
                break;
            }
            let key = message.key().unwrap_or_default();
            if key == MARKER {
                read.marker = message.payload().and_then(read_marker);
                read.whole_at = Some(next);
                read.since_marker.clear();
            } else {
                read.change(key, message.payload());
            }
            read.records += 1;
            if read.pending.len() >= CHUNK {
                read.flush(store, scope)?;
            }
            if role == Role::Owner && last_report.elapsed() >= REPORT {
                tracing::info!(changelog = topic, task, at = next, to = high, "Restoring");
                last_report = Instant::now();
            }
        }
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

    /// Writes the pending changes to the store, first reading what they overwrite of the keys
    /// changed since the last marker.
    fn flush(&mut self, store: &Store, scope: Scope) -> Result<()> {
        for (key, before) in &mut self.since_marker {
            if let Before::Stored = before {
                *before = Before::Known(store.get_in(scope, key)?);
            }
        }
        store.restore(scope, self.pending.drain())
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
