//! Kafka through librdkafka: embedded broker, topic specs, producer and record headers.
//!
//! The embedded broker ([`broker`]), topic specs and their provisioning ([`topic`]), the
//! producer ([`producer`]) with the headers every record carries ([`headers`]), idle
//! consumers of an embedded broker in their own process ([`idle`]), and the settings of
//! consumers that assign partitions themselves ([`reader_config`]) and where they stand
//! ([`position_in`]).

pub mod broker;
pub mod headers;
pub mod idle;
pub mod producer;
pub mod topic;

pub use headers::Metadata;
pub use producer::{Delivery, OutgoingRecord, Producer};

/// The settings of a consumer that assigns its partitions itself and never joins a group or
/// commits (a replay, a task's restore, a global table): `purpose` names it in its throw-away
/// group id, which `assign()` needs.
pub fn reader_config(bootstrap: &str, purpose: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("tripstream-{purpose}-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // These read a backlog faster than they apply it, so the fetch queue fills; past its
        // bounds librdkafka's default leaves each partition unfetched for a whole second, and
        // a restore of many tasks spent most of its time waiting on that.
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// Where a consumer stands in `topic`'s `partition`, by the `positions` its
/// `Consumer::position` gave: the offset after the last record or marker it read, `None`
/// before it read any. librdkafka moves the position past transaction markers, which it never
/// hands out, and over compaction gaps, so this, not the last record, tells how far a reader
/// of a backlog has come.
pub(crate) fn position_in(
    positions: &rdkafka::TopicPartitionList,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    positions
        .find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw())
        .filter(|at| *at >= 0)
}
