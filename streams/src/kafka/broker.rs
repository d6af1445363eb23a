//! The embedded broker: librdkafka's in-process mock cluster, speaking the real Kafka protocol.
//!
//! It serves the zero-setup demo and the plain test tier. Limits designed around: no admin API
//! (topics are created through the mock itself, see [`EmbeddedBroker::create_topic`]), no
//! compaction, no transactions, nothing persisted, and random ports (hence
//! [`EmbeddedBroker::bootstrap_servers`]).
//!
//! Retention: librdkafka's mock keeps at most 5 MiB of record batches or 100,000 batches per
//! partition, whichever is reached first (`max_size`/`max_cnt`, constants of
//! `rd_kafka_mock_partition_init` in librdkafka 2.12.1 with no setter and no `test.mock.*`
//! property), and beyond that drops the oldest batches without a word: the partition's log
//! start offset moves up, and a reader asking for offset 0 is moved to it. Every topic
//! [`EmbeddedBroker::create_topic`] creates has that bound raised to
//! [`DEFAULT_PARTITION_LOG_BYTES`] (or the bound given to [`EmbeddedBroker::start_with_log_bytes`]),
//! so memory is the practical limit. Topics the mock creates by itself (a producer writing to a
//! topic nobody created) keep the 5 MiB; [`ensure_nothing_dropped`] turns a dropped record into
//! an error for a reader that needs every record.

// One of the two places in the workspace that call librdkafka's C API directly (see `start`,
// `create_topics` and `raise_log_bounds`); the other is the processor's `member_id`.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_void};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};

/// librdkafka's own bound on a mock partition's log, in bytes of record batches.
pub const MOCK_PARTITION_LOG_BYTES: usize = 5 * 1024 * 1024;

/// librdkafka's own bound on a mock partition's log, in record batches.
const MOCK_PARTITION_LOG_BATCHES: usize = 100_000;

/// What each partition of a topic created by [`EmbeddedBroker::create_topic`] keeps, in bytes
/// of record batches, unless [`EmbeddedBroker::start_with_log_bytes`] says otherwise: far more
/// than a demo or a test writes, while a runaway writer still cannot take all memory.
pub const DEFAULT_PARTITION_LOG_BYTES: usize = 1024 * 1024 * 1024;

/// The librdkafka release (`RD_KAFKA_VERSION`) whose private layout [`MockPartitionHead`]
/// mirrors.
const MIRRORED_LIBRDKAFKA: c_int = 0x020c_01ff;

/// The leading fields of librdkafka 2.12.1's private `rd_kafka_mock_partition_t`
/// (`src/rdkafka_mock_int.h`), up to the log bounds, which have no setter.
#[repr(C)]
struct MockPartitionHead {
    leader_link: [*mut c_void; 2],
    id: i32,
    leader_epoch: i32,
    start_offset: i64,
    end_offset: i64,
    follower_start_offset: i64,
    follower_end_offset: i64,
    update_follower_start_offset: u8,
    update_follower_end_offset: u8,
    msgsets: [*mut c_void; 2],
    size: usize,
    cnt: usize,
    max_size: usize,
    max_cnt: usize,
}

// Internal functions of librdkafka's rdkafka_mock.c: not in its public header, but global
// symbols of the static librdkafka that rdkafka-sys builds and links.
unsafe extern "C" {
    fn rd_kafka_mock_topic_find(
        mcluster: *const rdkafka_sys::rd_kafka_mock_cluster_t,
        name: *const c_char,
    ) -> *mut c_void;
    fn rd_kafka_mock_partition_find(
        mtopic: *const c_void,
        partition: i32,
    ) -> *mut MockPartitionHead;
}

/// A running mock cluster. Dropping it stops every broker.
pub struct EmbeddedBroker {
    /// The client that owns the mock cluster: librdkafka creates the cluster inside the client
    /// configured with `test.mock.num.brokers` and destroys it with that client.
    host: BaseProducer<DefaultProducerContext>,
    bootstrap: String,
    brokers: u16,
    /// The per-partition bound in bytes that `create_topic` sets, or `None` when this
    /// librdkafka is not the one whose layout is mirrored and the mock's own bound stays.
    log_bytes: Option<usize>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .field("brokers", &self.brokers)
            .field("log_bytes", &self.partition_log_bytes())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers on 127.0.0.1, each on a random port, whose
    /// topics keep [`DEFAULT_PARTITION_LOG_BYTES`] per partition.
    ///
    /// Consumer groups join at once: the mock's default initial rebalance delay of 3 s (there
    /// to let a group's members gather) is set to zero, since tests and the demo start their
    /// members together anyway. Later rebalances of a classic group are slower than on a real
    /// broker, and nothing in the mock's API shortens them (`rdkafka_mock_cgrp.c`): a member is
    /// expired once `session.timeout.ms` has passed without a heartbeat (checked once a
    /// second), and every rebalance of a running group (a member joined, left or expired)
    /// then waits `session.timeout.ms` less 1 s for members to rejoin before it assigns, even
    /// when all of them have. Measured with cooperative-sticky and a 1 s heartbeat: a killed
    /// member's partitions moved after 11 s with a 6000 ms session timeout and 7 s with
    /// 3000 ms; a joining member got its share after 5 s and 2 s.
    ///
    /// # Errors
    ///
    /// [`Error::Embedded`] when `brokers` is zero or librdkafka cannot create the cluster.
    pub fn start(brokers: u16) -> Result<Self> {
        Self::start_with_log_bytes(brokers, DEFAULT_PARTITION_LOG_BYTES)
    }

    /// Like [`EmbeddedBroker::start`], with topics that keep `log_bytes` of record batches per
    /// partition before the oldest are dropped (at least one batch is always kept).
    ///
    /// # Errors
    ///
    /// [`Error::Embedded`] when `brokers` is zero or librdkafka cannot create the cluster.
    pub fn start_with_log_bytes(brokers: u16, log_bytes: usize) -> Result<Self> {
        if brokers == 0 {
            return Err(Error::Embedded(
                "a cluster needs at least one broker".into(),
            ));
        }
        let host: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            // The host client never sends; keep it from logging its own connection attempts.
            .set("log_level", "3")
            .create()
            .map_err(|e| Error::kafka("starting the embedded broker", e))?;
        let native = host.client().native_ptr();
        // SAFETY: `native` is a live rd_kafka_t owned by `host`, which outlives this call.
        // rd_kafka_handle_mock_cluster returns the cluster that client created (or null), and
        // rd_kafka_mock_group_initial_rebalance_delay_ms only stores an integer in it under the
        // cluster's own lock; the pointer is not kept. rd_kafka_version only reads a constant.
        let mirrored = unsafe {
            let cluster = rdkafka_sys::rd_kafka_handle_mock_cluster(native);
            if cluster.is_null() {
                return Err(Error::Embedded(
                    "librdkafka did not create a mock cluster".into(),
                ));
            }
            rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            rdkafka_sys::rd_kafka_version() == MIRRORED_LIBRDKAFKA
        };
        if !mirrored {
            tracing::warn!(
                bound = MOCK_PARTITION_LOG_BYTES,
                "This librdkafka is not 2.12.1: the embedded broker keeps its own bound of 5 MiB per partition"
            );
        }
        let bootstrap = host
            .client()
            .mock_cluster()
            .ok_or_else(|| Error::Embedded("librdkafka did not create a mock cluster".into()))?
            .bootstrap_servers();
        tracing::info!(%bootstrap, brokers, "Embedded broker started");
        super::idle::started(&bootstrap);
        Ok(EmbeddedBroker {
            host,
            bootstrap,
            brokers,
            log_bytes: mirrored.then_some(log_bytes),
        })
    }

    /// How many bytes of record batches each partition of a topic created by
    /// [`EmbeddedBroker::create_topic`] keeps before its oldest records are dropped.
    pub fn partition_log_bytes(&self) -> usize {
        self.log_bytes.unwrap_or(MOCK_PARTITION_LOG_BYTES)
    }

    /// The `bootstrap.servers` list for clients of this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// How many brokers the cluster has.
    pub fn broker_count(&self) -> u16 {
        self.brokers
    }

    /// The mock cluster, for fault injection in tests (brokers down, request errors, latency).
    ///
    /// # Panics
    ///
    /// Never: `start` has checked that the host client owns a mock cluster.
    pub fn mock(&self) -> MockCluster<'_, DefaultProducerContext> {
        #[allow(clippy::expect_used)]
        self.host
            .client()
            .mock_cluster()
            .expect("the host client was created with test.mock.num.brokers")
    }

    /// Creates a topic; an existing topic of that name is left as it is.
    ///
    /// The replication factor is capped at the number of brokers, as a real cluster would
    /// refuse more replicas than brokers. Each partition of a created topic keeps
    /// [`EmbeddedBroker::partition_log_bytes`].
    ///
    /// # Errors
    ///
    /// [`Error::Embedded`] when the mock refuses the topic or its bound cannot be raised.
    pub fn create_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<()> {
        self.create_topics(&[(name, partitions, replication)])
    }

    /// Creates topics, each `(name, partitions, replication)` as [`EmbeddedBroker::create_topic`]
    /// does, all at once: the mock's commands are issued side by side (see [`side_by_side`]).
    ///
    /// # Errors
    ///
    /// As [`EmbeddedBroker::create_topic`], for the first topic that fails.
    pub fn create_topics(&self, topics: &[(&str, i32, i32)]) -> Result<()> {
        let names = topics
            .iter()
            .map(|(name, _, _)| {
                CString::new(*name)
                    .map_err(|e| Error::Embedded(format!("cannot create topic {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let cluster = self.cluster();
        let answers = side_by_side(topics.iter().zip(&names).map(
            |((_, partitions, replication), c_name)| {
                let replication = (*replication).clamp(1, i32::from(self.brokers));
                // SAFETY: the cluster outlives this call (`host` owns it), the name is a live
                // C string, and librdkafka hands the command to the mock thread.
                move || unsafe {
                    rdkafka_sys::rd_kafka_mock_topic_create(
                        cluster.ptr(),
                        c_name.as_ptr(),
                        *partitions,
                        replication,
                    )
                }
            },
        ));
        let mut created = Vec::new();
        for ((name, partitions, _), answer) in topics.iter().zip(answers) {
            match RDKafkaErrorCode::from(answer) {
                RDKafkaErrorCode::NoError => created.push((*name, *partitions)),
                RDKafkaErrorCode::TopicAlreadyExists => {}
                code => {
                    return Err(Error::Embedded(format!(
                        "cannot create topic {name}: {code}"
                    )));
                }
            }
        }
        self.raise_log_bounds(&created)
    }

    /// The mock cluster's handle, to hand its commands to threads.
    fn cluster(&self) -> Cluster {
        // SAFETY: `start` checked that the host client owns a mock cluster; the pointer stays
        // valid while `host` does.
        Cluster(unsafe {
            rdkafka_sys::rd_kafka_handle_mock_cluster(self.host.client().native_ptr())
        })
    }

    /// Sets the log bound of every partition of `topics` (name, partitions), just created.
    ///
    /// The mock's partition state belongs to the mock's own thread, which reads the bound on
    /// every append. So each partition is first made leaderless (a command the mock thread
    /// carries out before answering), which stops appends to it; the bound is written; and
    /// the leader is given back by a second command, whose hand-over through the mock's
    /// command queue makes the new bound visible to the mock thread before its next append.
    fn raise_log_bounds(&self, topics: &[(&str, i32)]) -> Result<()> {
        let Some(bytes) = self.log_bytes else {
            return Ok(());
        };
        let fail = |name: &str, e: &dyn std::fmt::Display| {
            Error::Embedded(format!("cannot raise the log bound of topic {name}: {e}"))
        };
        // Each topic with its partitions' (id, leader), and its name for C.
        let mut partitions = Vec::new();
        let mut names = Vec::new();
        for (name, count) in topics {
            let metadata = self
                .host
                .client()
                .fetch_metadata(Some(name), Duration::from_secs(10))
                .map_err(|e| Error::kafka(format!("reading the leaders of {name}"), e))?;
            let leaders: Vec<(i32, i32)> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == *name)
                .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
                .collect();
            if leaders.len() != usize::try_from(*count).unwrap_or(0) {
                return Err(fail(
                    name,
                    &format!(
                        "the broker reports {} of its {count} partitions",
                        leaders.len()
                    ),
                ));
            }
            names.push(CString::new(*name).map_err(|e| fail(name, &e))?);
            partitions.push((*name, leaders));
        }
        // Every partition made leaderless, or given its leader back.
        let set_leaders = |leaderless: bool| -> Result<()> {
            let cluster = self.cluster();
            let calls = partitions
                .iter()
                .zip(&names)
                .flat_map(|((_, leaders), c_name)| {
                    leaders.iter().map(move |(partition, broker)| {
                        let broker = if leaderless { -1 } else { *broker };
                        // SAFETY: as in `create_topics`.
                        move || unsafe {
                            rdkafka_sys::rd_kafka_mock_partition_set_leader(
                                cluster.ptr(),
                                c_name.as_ptr(),
                                *partition,
                                broker,
                            )
                        }
                    })
                });
            let topic_of = partitions
                .iter()
                .flat_map(|(name, leaders)| leaders.iter().map(move |_| *name));
            match side_by_side(calls)
                .into_iter()
                .map(RDKafkaErrorCode::from)
                .zip(topic_of)
                .find(|(code, _)| *code != RDKafkaErrorCode::NoError)
            {
                Some((code, name)) => Err(fail(name, &code)),
                None => Ok(()),
            }
        };
        set_leaders(true)?;
        let mut unraised = None;
        for ((name, leaders), c_name) in partitions.iter().zip(&names) {
            // SAFETY: the version check in `start` makes `MockPartitionHead` the true head of
            // this librdkafka's rd_kafka_mock_partition_t, and the cluster pointer is live while
            // `host` is. rd_kafka_mock_topic_find walks the cluster's topic list up to this
            // topic, which the mock thread created before answering `create_topics`: the mock
            // only ever appends topics at the tail, so the links it reads, and the names it
            // compares, are no longer written. The partition's `id` and bounds are written only
            // here and at creation, and the mock thread reads the bounds only when appending,
            // which a leaderless partition refuses. The pointers are not kept.
            unsafe {
                let topic = rd_kafka_mock_topic_find(self.cluster().0, c_name.as_ptr());
                if topic.is_null() {
                    unraised = Some(*name);
                }
                for (partition, _) in leaders {
                    let head = rd_kafka_mock_partition_find(topic, *partition);
                    // The mock's own defaults, found where the mirrored layout puts them, are
                    // the sign that the layout is right; anything else is left untouched.
                    if head.is_null()
                        || (*head).id != *partition
                        || (*head).max_size != MOCK_PARTITION_LOG_BYTES
                        || (*head).max_cnt != MOCK_PARTITION_LOG_BATCHES
                    {
                        unraised = Some(*name);
                        continue;
                    }
                    (*head).max_size = bytes;
                    // The byte bound is the one that matters; a batch count never should.
                    (*head).max_cnt = usize::MAX;
                }
            }
        }
        set_leaders(false)?;
        match unraised {
            None => Ok(()),
            Some(name) => Err(fail(
                name,
                &"librdkafka's mock partitions are not laid out as this module expects",
            )),
        }
    }

    /// Partition count of each topic the cluster knows, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the metadata request fails.
    pub fn topics(&self) -> Result<Vec<(String, usize)>> {
        let metadata = self
            .host
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| Error::kafka("reading metadata of the embedded broker", e))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    }
}

/// The mock cluster's handle, handed to the threads of [`side_by_side`].
#[derive(Clone, Copy)]
struct Cluster(*mut rdkafka_sys::rd_kafka_mock_cluster_t);

// SAFETY: librdkafka's mock commands may be issued from any thread: each is queued to the mock
// thread, which alone touches the cluster.
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl Cluster {
    /// The pointer (a method, so that a closure captures the `Send` handle, not its field).
    fn ptr(self) -> *mut rdkafka_sys::rd_kafka_mock_cluster_t {
        self.0
    }
}

/// Runs `calls` (mock commands) each on a thread of its own, and their answers in order.
///
/// Issued one by one, each command waited for the mock thread's next wake-up: about 0.25 s
/// here, so the demo's 30-odd topics (twice per partition to raise the bounds) took 50 s to
/// set up. The mock thread serves every command queued when it wakes, so side by side they
/// cost a wake-up or two in all.
fn side_by_side<F, T>(calls: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let running: Vec<_> = calls.into_iter().map(|call| scope.spawn(call)).collect();
        running
            .into_iter()
            .map(|thread| match thread.join() {
                Ok(answer) => answer,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Nothing is sent through the host client, but flush so librdkafka shuts down quietly.
        let _ = self.host.flush(Duration::from_millis(100));
        super::idle::stopped(&self.bootstrap);
        tracing::debug!(bootstrap = %self.bootstrap, "Embedded broker stopped");
    }
}

/// Fails when a partition of the embedded broker no longer starts at offset 0.
///
/// The embedded broker deletes nothing by retention or compaction, so a log start offset (low
/// watermark) above 0 means the partition outgrew its bound and its oldest records are gone;
/// a reader asking for offset 0 would be moved past them without an error. A reader that needs
/// every record (a replay from the beginning) calls this with the partition's low watermark
/// before it reads. On a real cluster a log start above 0 is usually retention at work, so
/// the check is for the embedded broker only (see [`crate::kafka::topic::is_mock_cluster`]).
///
/// # Errors
///
/// [`Error::Embedded`] naming the partition and how many records are gone.
pub fn ensure_nothing_dropped(topic: &str, partition: i32, log_start: i64) -> Result<()> {
    if log_start > 0 {
        return Err(Error::Embedded(format!(
            "{topic}/{partition} starts at offset {log_start}: its first {log_start} records \
             were dropped when the partition outgrew its bound, so it cannot be read whole"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::BaseRecord;
    use rdkafka::{Message, Offset, TopicPartitionList};

    use super::*;

    /// Writes `count` records of `size` bytes to partition 0 of `topic`.
    fn write(broker: &EmbeddedBroker, topic: &str, count: usize, size: usize) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("compression.type", "none")
            // Small batches: the mock drops whole batches and always keeps the newest one.
            .set("batch.num.messages", "10")
            .create()
            .expect("producer");
        let payload = vec![b'x'; size];
        for i in 0..count {
            let key = i.to_string();
            let mut record = BaseRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .partition(0);
            // A full queue is emptied by polling; anything else is a failure of the test.
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        assert_eq!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::QueueFull),
                            "{e}"
                        );
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }

    fn consumer(broker: &EmbeddedBroker) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "broker-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    #[test]
    fn a_partition_holding_more_than_the_mocks_own_bound_reads_back_whole_from_offset_zero() {
        let broker = EmbeddedBroker::start(1).unwrap();
        broker.create_topic("big", 1, 1).unwrap();
        // 3,000 records of 2 KiB: about 6 MiB, past the mock's 5 MiB.
        let count = 3_000;
        write(&broker, "big", count, 2048);
        let consumer = consumer(&broker);
        let (low, high) = consumer
            .fetch_watermarks("big", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!((low, high), (0, count as i64));
        ensure_nothing_dropped("big", 0, low).unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("big", 0, Offset::Offset(0))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut next = 0;
        while next < count as i64 {
            let message = consumer
                .poll(Duration::from_secs(10))
                .expect("a record within 10 s")
                .unwrap();
            assert_eq!(
                message.offset(),
                next,
                "records are read in order, none missing"
            );
            next += 1;
        }
    }

    #[test]
    fn topics_created_together_each_keep_the_raised_bound_and_existing_ones_are_left_alone() {
        let broker = EmbeddedBroker::start(2).unwrap();
        broker.create_topic("kept", 2, 1).unwrap();
        broker
            .create_topics(&[("kept", 5, 1), ("a", 3, 1), ("b", 1, 2), ("c", 4, 1)])
            .unwrap();
        let mut topics = broker.topics().unwrap();
        topics.sort();
        assert_eq!(
            topics,
            [
                ("a".to_owned(), 3),
                ("b".to_owned(), 1),
                ("c".to_owned(), 4),
                ("kept".to_owned(), 2)
            ]
        );
        // Past the mock's own 5 MiB, nothing is dropped in a topic created with others.
        let count = 3_000;
        write(&broker, "b", count, 2048);
        let (low, high) = consumer(&broker)
            .fetch_watermarks("b", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!((low, high), (0, count as i64));
    }

    #[test]
    fn records_dropped_past_the_bound_are_reported_not_silently_skipped() {
        let broker = EmbeddedBroker::start_with_log_bytes(1, 64 * 1024).unwrap();
        assert_eq!(broker.partition_log_bytes(), 64 * 1024);
        broker.create_topic("small", 1, 1).unwrap();
        write(&broker, "small", 200, 1024);
        let (low, high) = consumer(&broker)
            .fetch_watermarks("small", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(high, 200);
        assert!(low > 0, "the oldest records are gone past 64 KiB");
        let error = ensure_nothing_dropped("small", 0, low).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("small/0 starts at offset {low}")),
            "{error}"
        );
    }
}
