//! Global tables: topics every instance of a service reads whole, outside its consumer group.
//!
//! A catalog (flights, hotels) is needed by every task, whatever partition its records come
//! from, so each instance keeps all of it in the global scope of its store. It is read to the
//! end it had at start before any task is processed, then kept up with between the tasks'
//! records. It needs no changelog: the topic is compacted, so it is its own.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::apply::{Apply, Failure};
use super::{Handler, Settings, dead_letter, pause};
use crate::error::{Error, Result};
use crate::kafka::{Producer, position_in};
use crate::store::{Batch, Store, Writers};

/// Records applied in one transaction at most.
const BATCH: usize = 512;

/// The reader of a processor's global tables.
pub(crate) struct Globals {
    consumer: BaseConsumer,
    /// Every partition read.
    partitions: Vec<(String, i32)>,
    /// Per (topic, partition): the end to reach before tasks are processed.
    ends: HashMap<(String, i32), i64>,
    /// When the broker was last asked for the tables' ends.
    checked: Option<Instant>,
}

/// How often at most the broker is asked for the global tables' ends before task records are
/// applied: a round trip per partition, so not once per batch under load.
const CHECK_EVERY: Duration = Duration::from_millis(100);

impl Globals {
    /// Assigns every partition of the global topics from the offsets in `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when a topic cannot be read.
    pub(crate) fn start(settings: &Settings, store: &Store) -> Result<Self> {
        let consumer: BaseConsumer = crate::kafka::reader_config(&settings.bootstrap, "global")
            .set("auto.offset.reset", "earliest")
            // A catalog entry reaches the table within this of being written, not 500 ms. On
            // the embedded broker it is also how often a reader with nothing to do asks again
            // (that broker answers an empty fetch only when the wait is over), unless it is
            // idle and paused (`kafka::idle`).
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| Error::kafka("creating the global tables' consumer", e))?;
        let timeout = Duration::from_secs(30);
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        let mut read = Vec::new();
        for topic in &settings.globals {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| Error::kafka(format!("reading the metadata of {topic}"), e))?;
            let partitions = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<_>>();
            if partitions.is_empty() {
                return Err(Error::kafka(
                    format!("reading global table {topic}"),
                    rdkafka::error::KafkaError::MetadataFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopic,
                    ),
                ));
            }
            for partition in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(|e| Error::kafka(format!("reading the end of {topic}"), e))?;
                let next = store
                    .next_offset(&settings.group, topic, partition)?
                    .unwrap_or(low)
                    .max(low);
                if next < high {
                    ends.insert((topic.clone(), partition), high);
                }
                tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                    .map_err(|e| Error::kafka("assigning the global tables", e))?;
                read.push((topic.clone(), partition));
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assigning the global tables", e))?;
        if !ends.is_empty() {
            tracing::info!(group = %settings.group, tables = ?settings.globals, "Reading the global tables");
        }
        Ok(Globals {
            consumer,
            partitions: read,
            ends,
            checked: None,
        })
    }

    /// Pauses (or resumes) reading the tables, while the processor is idle.
    pub(crate) fn set_paused(&self, paused: bool) {
        crate::kafka::idle::set_paused(&self.consumer, paused);
    }

    /// Reads every global table to its end now, before task records are applied: a catalog
    /// entry written before a command was sent is then seen by the command, as it would be
    /// if both were read by one consumer. Asks the broker for each partition's end (a round
    /// trip each), at most every [`CHECK_EVERY`]: an entry written less than that before a
    /// command may still be applied after it. False if `shutdown` came first.
    pub(crate) async fn catch_up_now<H: Handler>(
        &mut self,
        apply: &Apply<'_, H>,
        settings: &Settings,
        producer: &Producer,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        if self.checked.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return true;
        }
        self.checked = Some(Instant::now());
        let positions = self.consumer.position().ok();
        for (topic, partition) in &self.partitions {
            let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(topic, *partition, Duration::from_secs(5))
            else {
                // Unknown now: the records are applied as they come.
                continue;
            };
            let applied = apply
                .store
                .next_offset(&settings.group, topic, *partition)
                .ok()
                .flatten()
                .unwrap_or(0);
            let read = positions
                .as_ref()
                .and_then(|p| position_in(p, topic, *partition));
            let next = applied.max(read.unwrap_or(0));
            if next < high {
                self.ends.insert((topic.clone(), *partition), high);
            }
        }
        self.catch_up(apply, settings, producer, shutdown).await
    }

    /// Reads every global table to the ends noted (at start, or by [`Globals::catch_up_now`]);
    /// false if `shutdown` came first.
    pub(crate) async fn catch_up<H: Handler>(
        &mut self,
        apply: &Apply<'_, H>,
        settings: &Settings,
        producer: &Producer,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        while !self.ends.is_empty() {
            match self.step(apply, settings, producer, shutdown).await {
                None => return false,
                Some(0) => {
                    self.drop_reached_ends();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(_) => {}
            }
        }
        true
    }

    /// Forgets the ends the consumer's position shows reached: the offsets before a
    /// partition's end need not all be records (a transactional producer's commit marker
    /// takes one, never delivered, and is often a partition's last), so waiting for the record
    /// before the end would wait for ever.
    fn drop_reached_ends(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        self.ends.retain(|(topic, partition), end| {
            position_in(&positions, topic, *partition).is_none_or(|at| at < *end)
        });
    }

    /// Applies the records ready now, up to [`BATCH`]: how many (`None`: `shutdown` came).
    pub(crate) async fn step<H: Handler>(
        &mut self,
        apply: &Apply<'_, H>,
        settings: &Settings,
        producer: &Producer,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<usize> {
        let mut taken = 0;
        let mut backoff = Duration::from_millis(100);
        while taken < BATCH {
            let Some(message) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "Reading a global table failed; librdkafka retries");
                    break;
                }
            };
            loop {
                let mut batch = Batch::default();
                let outcome = match apply.record(&mut batch, &message).await {
                    Ok(()) => apply
                        .store
                        .commit(&batch, Writers::Shared)
                        .map(drop)
                        .map_err(|e| Failure::Retry(e.to_string())),
                    Err(failure) => Err(failure),
                };
                match outcome {
                    Ok(()) => break,
                    Err(Failure::Retry(reason)) => {
                        tracing::warn!(reason, topic = message.topic(), "Retrying a record");
                        if !pause(&mut backoff, shutdown).await {
                            return None;
                        }
                    }
                    Err(Failure::Poison(kind, reason)) => {
                        let sent = dead_letter::send(
                            settings,
                            apply.store,
                            producer,
                            &message,
                            kind,
                            &reason,
                            shutdown,
                        )
                        .await;
                        if sent == dead_letter::Sent::Stopped {
                            return None;
                        }
                        break;
                    }
                }
            }
            let key = (message.topic().to_owned(), message.partition());
            if self
                .ends
                .get(&key)
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                self.ends.remove(&key);
            }
            taken += 1;
        }
        Some(taken)
    }
}
