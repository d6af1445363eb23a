//! What a processor holds and how it hands partitions over.
//!
//! Positions and lag per partition, and the rebalance callbacks: a task assigned is restored
//! from its changelog when the store is behind it (see [`super::restore`]), then its partitions
//! start at sled's offsets; sled's offsets are committed to Kafka before partitions are given
//! up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::restore::{Restored, Restorer, Role};
use super::watchdog::Verdicts;
use crate::outbox::Gate;
use crate::store::Store;

/// How often a task's restore is tried on assignment before the task is left unassigned (each
/// try may wait up to 30 s for the broker).
const RESTORE_ATTEMPTS: u32 = 3;

/// Where a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The next offset this processor will apply.
    pub next: i64,
    /// The partition's high watermark when last read.
    pub high_watermark: i64,
}

impl PartitionPosition {
    /// Records not yet applied.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.next).max(0)
    }
}

/// Per-partition positions of a running processor, for metrics and tests: the partitions it
/// holds (from assignment on) and, once records flow, how far it is; and whether it is idle.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    held: Arc<Mutex<BTreeMap<(String, i32), PartitionPosition>>>,
    idle: Arc<AtomicBool>,
}

impl Positions {
    /// A snapshot: (topic, partition) → position.
    pub fn snapshot(&self) -> BTreeMap<(String, i32), PartitionPosition> {
        crate::sync::lock(&self.held).clone()
    }

    /// Whether the processor has stopped fetching for now, idle on an embedded broker of its
    /// own process ([`crate::kafka::idle`]).
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    pub(crate) fn set(&self, topic: &str, partition: i32, position: PartitionPosition) {
        crate::sync::lock(&self.held).insert((topic.to_owned(), partition), position);
    }

    pub(crate) fn remove(&self, topic: &str, partition: i32) {
        crate::sync::lock(&self.held).remove(&(topic.to_owned(), partition));
    }

    pub(crate) fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
    }
}

/// Starts partitions at sled's offsets and commits sled's offsets to Kafka before giving
/// partitions up.
pub(crate) struct ProcessorContext {
    pub(crate) store: Store,
    pub(crate) group: String,
    pub(crate) positions: Positions,
    /// High watermarks from the last statistics report, by (topic, partition).
    pub(crate) watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// Partitions revoked so far: the poll loop checks it to drop records it holds for
    /// partitions it no longer owns.
    pub(crate) revocations: Arc<AtomicU64>,
    /// The tasks assigned to this member, restoring or processing (for [`super::watchdog`]).
    pub(crate) held: Arc<Mutex<BTreeSet<i32>>>,
    /// Restores tasks from the changelog, and lets the relay publish a task's changelog
    /// entries while the task is owned, when the state is logged.
    pub(crate) restorer: Option<(Restorer, Gate)>,
    /// Set when the processor stops: tasks assigned from then on are declined, not restored.
    pub(crate) leaving: AtomicBool,
    /// Set while the processor leaves the group to join again as a new member (see
    /// [`super::watchdog`]): tasks assigned meanwhile are declined, and the run loop subscribes
    /// again once the unsubscription has taken effect.
    pub(crate) rejoining: AtomicBool,
    /// The group watchdog's findings, on brokers that need one.
    pub(crate) verdicts: Option<Arc<Verdicts>>,
}

impl ProcessorContext {
    /// Restores `tasks` before their partitions are assigned, reading their changelogs
    /// together: the tasks left to restore one by one (all of them, if reading failed).
    fn restore_all(&self, (restorer, gate): &(Restorer, Gate), tasks: &BTreeSet<i32>) -> Vec<i32> {
        let tasks: Vec<i32> = tasks.iter().copied().collect();
        // Standbys catch up on none of these meanwhile.
        let rewriting = gate.rewriting();
        let restored = restorer.restore_all(&self.store, &tasks, Role::Owner);
        drop(rewriting);
        match restored {
            Ok(restored) => {
                for (task, restored) in restored {
                    self.owned(gate, task, restored);
                }
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, group = %self.group, "Restoring the assigned tasks failed; restoring them one by one");
                tasks
            }
        }
    }

    /// Lets the relay publish `task`'s changelog entries, now that its state is restored.
    fn owned(&self, gate: &Gate, task: i32, restored: Restored) {
        if restored == Restored::Current {
            tracing::debug!(group = %self.group, task, "The store holds the task's latest state");
        }
        gate.own(task);
    }

    /// Restores `task` before its partitions are assigned, a few times if it fails: false if
    /// it could not. Processing a task on state that is not its latest would decide wrongly,
    /// and retrying for ever inside the rebalance would keep the processor from stopping.
    fn restore(&self, (restorer, gate): &(Restorer, Gate), task: i32) -> bool {
        let mut backoff = std::time::Duration::from_millis(200);
        for attempt in 1..=RESTORE_ATTEMPTS {
            // One task's catch-up by the standby at most is waited for.
            let rewriting = gate.rewriting();
            let restored = restorer.restore(&self.store, task, Role::Owner);
            drop(rewriting);
            match restored {
                Ok(restored) => {
                    self.owned(gate, task, restored);
                    return true;
                }
                Err(error) => {
                    tracing::warn!(%error, group = %self.group, task, attempt, "Restoring a task failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        false
    }
}

impl ClientContext for ProcessorContext {
    /// Keeps only the high watermark of each partition; the full statistics are large and
    /// rdkafka's typed form of them fails on fields the mock cluster leaves out.
    fn stats_raw(&self, statistics: &[u8]) {
        let highs = high_watermarks(statistics);
        let mut watermarks = crate::sync::lock(&self.watermarks);
        watermarks.extend(highs);
    }
}

/// The part of librdkafka's statistics that lag needs. Only these fields are typed, so the rest
/// of the text (most of it: brokers, queues, counters) is skipped instead of built into maps:
/// parsed as a `serde_json::Value` it was a fifth of the tokio workers' samples in an idle demo.
#[derive(serde::Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(serde::Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(serde::Deserialize)]
struct PartitionStatistics {
    #[serde(default)]
    hi_offset: Option<i64>,
}

/// Each partition's high watermark in a statistics report; none when it does not parse.
fn high_watermarks(statistics: &[u8]) -> Vec<((String, i32), i64)> {
    let Ok(stats) = serde_json::from_slice::<Statistics>(statistics) else {
        return Vec::new();
    };
    let mut highs = Vec::new();
    for (topic, t) in stats.topics {
        for (partition, p) in t.partitions {
            let partition = partition.parse::<i32>().unwrap_or(-1);
            // Partition -1 is librdkafka's internal "unassigned" queue; -1001 means unknown.
            if let Some(high) = p.hi_offset.filter(|h| *h >= 0)
                && partition >= 0
            {
                highs.push(((topic.clone(), partition), high));
            }
        }
    }
    highs
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if consumer.closed() {
            // librdkafka no longer answers calls about a closed group: a stale event handled
            // now would wait for ever in assign() or rebalance_protocol() (librdkafka #4884).
            tracing::debug!(group = %self.group, error = ?err, "Rebalance event after close; ignored");
            return;
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
                if self.leaving.load(Ordering::SeqCst) || self.rejoining.load(Ordering::SeqCst) =>
            {
                // Stopping, or leaving to join again: answer the assignment with nothing, so
                // the group moves on.
                let nothing = TopicPartitionList::new();
                let declined = if cooperative {
                    consumer.incremental_assign(&nothing)
                } else {
                    consumer.assign(&nothing)
                };
                if let Err(error) = declined {
                    tracing::warn!(%error, "Declining partitions while stopping failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let tasks: BTreeSet<i32> = partitions.iter().map(|(_, p)| *p).collect();
                crate::sync::lock(&self.held).clone_from(&tasks);
                let mut unrestored = BTreeSet::new();
                if let Some(restorer) = &self.restorer {
                    for task in self.restore_all(restorer, &tasks) {
                        if !self.restore(restorer, task) {
                            unrestored.insert(task);
                        }
                    }
                }
                if !unrestored.is_empty() {
                    // Not processed here until a later rebalance assigns them again (another
                    // member joining or leaving): better stalled than wrong.
                    tracing::error!(group = %self.group, tasks = ?unrestored, "Tasks left unassigned: their state could not be restored");
                    let mut kept = TopicPartitionList::new();
                    for (topic, partition) in
                        partitions.iter().filter(|(_, p)| !unrestored.contains(p))
                    {
                        kept.add_partition(topic, *partition);
                    }
                    *tpl = kept;
                    crate::sync::lock(&self.held).retain(|task| !unrestored.contains(task));
                }
                let partitions: Vec<(String, i32)> = partitions
                    .into_iter()
                    .filter(|(_, p)| !unrestored.contains(p))
                    .collect();
                for (topic, partition) in partitions {
                    match self.store.next_offset(&self.group, &topic, partition) {
                        Ok(stored) => {
                            if let Some(next) = stored {
                                let _ = tpl.set_partition_offset(
                                    &topic,
                                    partition,
                                    Offset::Offset(next),
                                );
                            }
                            let next = stored.unwrap_or(0);
                            let position = PartitionPosition {
                                next,
                                high_watermark: next,
                            };
                            self.positions.set(&topic, partition, position);
                        }
                        Err(error) => {
                            tracing::error!(%error, topic, partition, "Cannot read the stored offset")
                        }
                    }
                }
                tracing::info!(group = %self.group, partitions = tpl.count(), "Partitions assigned");
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(error) = assigned {
                    tracing::error!(%error, "Assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revocations.fetch_add(1, Ordering::SeqCst);
                // This callback runs inside a poll of the run loop, and the loop commits every
                // record it applies before it polls again: sled holds every applied offset.
                // Records polled but not applied yet are dropped by the loop (see
                // `revocations`), and the new owner reads them from these offsets.
                // Only what this member held: a revocation after a declined assignment (see
                // `rejoining`) names partitions it never started, whose offsets in sled may be
                // far behind their owner's.
                let held_now = crate::sync::lock(&self.held).clone();
                let mut mine = TopicPartitionList::new();
                for element in tpl.elements() {
                    if held_now.contains(&element.partition()) {
                        mine.add_partition(element.topic(), element.partition());
                    }
                }
                commit_from_store(
                    consumer,
                    &self.store,
                    &self.group,
                    Some(&mine),
                    CommitMode::Sync,
                );
                let mut held = crate::sync::lock(&self.held);
                for element in tpl.elements() {
                    held.remove(&element.partition());
                    self.positions.remove(element.topic(), element.partition());
                    if let Some((_, gate)) = &self.restorer {
                        // Its changelog entries not sent yet wait: the task may come back.
                        gate.release(element.partition());
                    }
                }
                drop(held);
                let rejoin = !self.leaving.load(Ordering::SeqCst)
                    && !self.rejoining.load(Ordering::SeqCst)
                    && self
                        .verdicts
                        .as_ref()
                        .is_some_and(|verdicts| verdicts.rejoin_on_revocation(Instant::now()));
                if rejoin {
                    tracing::warn!(
                        group = %self.group,
                        "A rebalance began while records waited in tasks nobody here holds (their \
                         owner expired?): leaving the group and joining again as a new member"
                    );
                    self.rejoining.store(true, Ordering::SeqCst);
                    // Before the unassignment below: librdkafka keeps the unsubscription until
                    // the revocation is done and then leaves the group instead of sending the
                    // join it would send (see `super::watchdog`). The run loop subscribes again.
                    consumer.unsubscribe();
                }
                tracing::info!(group = %self.group, partitions = tpl.count(), "Partitions revoked");
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = unassigned {
                    tracing::error!(%error, "Unassigning partitions failed");
                }
            }
            other => tracing::warn!(error = ?other, "Rebalance error"),
        }
    }
}

/// Commits sled's offsets to Kafka for the partitions of `only`, or of the assignment.
pub(crate) fn commit_from_store<C: Consumer<ProcessorContext>>(
    consumer: &C,
    store: &Store,
    group: &str,
    only: Option<&TopicPartitionList>,
    mode: CommitMode,
) {
    let Ok(offsets) = store.offsets(group) else {
        return;
    };
    // Only partitions this member holds: sled keeps the offsets of tasks it gave up, and
    // committing those would set their new owner's committed offsets back.
    let assigned;
    let only = match only {
        Some(only) => only,
        None => match consumer.assignment() {
            Ok(assignment) => {
                assigned = assignment;
                &assigned
            }
            Err(_) => return,
        },
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        if only.find_partition(&topic, partition).is_some() {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
    }
    if tpl.count() > 0
        && let Err(error) = consumer.commit(&tpl, mode)
    {
        tracing::debug!(%error, "Committing offsets to Kafka failed; sled keeps them");
    }
}

/// Notes an applied record's position and the partition's lag.
pub(crate) fn record_position(
    positions: &Positions,
    watermarks: &Mutex<HashMap<(String, i32), i64>>,
    message: &impl Message,
) {
    let (topic, partition) = (message.topic(), message.partition());
    let high = crate::sync::lock(watermarks)
        .get(&(topic.to_owned(), partition))
        .copied()
        .unwrap_or(0);
    positions.set(
        topic,
        partition,
        PartitionPosition {
            next: message.offset() + 1,
            high_watermark: high.max(message.offset() + 1),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_watermarks_come_from_each_real_partition_of_the_statistics_and_the_rest_is_skipped() {
        let statistics = br#"{
            "name": "rdkafka#consumer-1", "ts": 1, "brokers": {"b": {"rtt": {"avg": 1.5}}},
            "topics": {
                "bookings": {"topic": "bookings", "partitions": {
                    "0": {"partition": 0, "hi_offset": 42, "lo_offset": 0, "txbytes": 7},
                    "1": {"partition": 1, "hi_offset": -1001},
                    "-1": {"partition": -1, "hi_offset": 5},
                    "2": {"partition": 2}
                }},
                "flights": {"topic": "flights"}
            }
        }"#;
        let mut highs = high_watermarks(statistics);
        highs.sort();
        assert_eq!(highs, vec![(("bookings".to_owned(), 0), 42)]);
        assert!(high_watermarks(b"not json").is_empty());
        assert!(high_watermarks(br#"{"name": "no topics"}"#).is_empty());
    }
}
