//! Dead letters: a record that can never be processed goes to its topic's dead-letter topic,
//! with the reason and where it was read in the headers below (besides the record's own),
//! before its offset moves past it.

use std::future::Future;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::Settings;
use crate::error::Result;
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

/// Writes `message` to its topic's dead-letter topic with `kind` and `reason` (retrying until
/// the broker takes it, or `shutdown`), then moves the partition's offset past it.
///
/// # Errors
///
/// [`crate::Error::Store`] when the offset cannot be committed.
pub(crate) async fn send(
    settings: &Settings,
    store: &Store,
    producer: &Producer,
    message: &BorrowedMessage<'_>,
    kind: &'static str,
    reason: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<()> {
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
    ]);
    let entry = OutgoingRecord {
        topic: dlq,
        key: message.key().unwrap_or_default().to_vec(),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
    };
    // The dead letter must be stored before the offset moves past it: nothing is lost.
    let mut backoff = Duration::from_millis(100);
    loop {
        match producer.send_record(&entry).await {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, "Writing a dead letter failed; retrying");
                tokio::select! {
                    () = &mut *shutdown => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut batch = Batch::default();
    batch.add(
        &super::apply::position(&settings.group, message),
        None,
        Effects::default(),
    );
    store.commit(&batch, Writers::Shared).map(drop)
}
