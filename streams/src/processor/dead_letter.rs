//! Dead letters: where a record that can never be processed goes, and with which headers.
//!
//! It goes to its topic's dead-letter topic with the reason and where it was read in the
//! headers below (besides the record's own), before its offset moves past it.

use std::future::Future;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::Settings;
use crate::kafka::{OutgoingRecord, Producer};
use crate::store::{Batch, Effects, Store, Writers};

/// `decode`, `unknown-schema`, `invalid` or `empty`.
pub const KIND: &str = "dlq.error.kind";
/// The reason, for people.
pub const MESSAGE: &str = "dlq.error.message";
/// Where the record was read.
pub const TOPIC: &str = "dlq.original.topic";
/// Its partition.
pub const PARTITION: &str = "dlq.original.partition";
/// Its offset.
pub const OFFSET: &str = "dlq.original.offset";
/// The consumer group that refused it: each group that reads a topic dead-letters on its own.
pub const GROUP: &str = "dlq.consumer.group";

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written to the dead-letter topic, and the partition's offset moved past the record.
    Written,
    /// `shutdown` came first: the offset did not move, so the next start reads the record
    /// again (and dead-letters it again if it was written already).
    Stopped,
}

/// Writes `message` to its topic's dead-letter topic with `kind` and `reason`, then moves the
/// partition's offset past it; each step is retried until it succeeds or `shutdown` comes.
pub(crate) async fn send(
    settings: &Settings,
    store: &Store,
    producer: &Producer,
    message: &BorrowedMessage<'_>,
    kind: &'static str,
    reason: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Sent {
    let topic = message.topic();
    // `run` refuses to start without a dead-letter topic for every topic it reads.
    let dlq = settings
        .dead_letters
        .get(topic)
        .cloned()
        .unwrap_or_default();
    tracing::warn!(topic, partition = message.partition(), offset = message.offset(), kind, reason, dead_letter = %dlq, "Dead-lettering a record");
    let mut headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    headers.extend([
        (KIND.to_owned(), kind.as_bytes().to_vec()),
        (MESSAGE.to_owned(), reason.as_bytes().to_vec()),
        (TOPIC.to_owned(), topic.as_bytes().to_vec()),
        (
            PARTITION.to_owned(),
            message.partition().to_string().into_bytes(),
        ),
        (OFFSET.to_owned(), message.offset().to_string().into_bytes()),
        (GROUP.to_owned(), settings.group.as_bytes().to_vec()),
    ]);
    let entry = OutgoingRecord {
        topic: dlq,
        partition: None,
        key: message.key().unwrap_or_default().to_vec(),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
    };
    // The dead letter must be stored before the offset moves past it: nothing is lost.
    let mut backoff = Duration::from_millis(100);
    while let Err(error) = producer.send_record(&entry).await {
        tracing::warn!(%error, "Writing a dead letter failed; retrying");
        if !super::pause(&mut backoff, shutdown).await {
            return Sent::Stopped;
        }
    }
    // Through the changelog like any record of the task, so that the task's next owner moves
    // past the dead letter too.
    let mut batch = Batch::logged(settings.logged());
    batch.add(
        &super::apply::position(&settings.group, message),
        settings.scope(message.topic(), message.partition()),
        None,
        Effects::default(),
    );
    let mut backoff = Duration::from_millis(100);
    while let Err(error) = store.commit(&batch, Writers::Shared) {
        tracing::warn!(%error, "Moving past a dead letter failed; retrying");
        if !super::pause(&mut backoff, shutdown).await {
            return Sent::Stopped;
        }
    }
    Sent::Written
}
