//! The typed producer: idempotent, keyed by aggregate id, with event metadata in headers.
//!
//! The headers themselves are [`crate::kafka::headers`].

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::codec::{Codec, CodecError, Event};
use crate::error::{Error, Result};
use crate::kafka::headers::Metadata;

/// A record ready to send: its value already framed in the Confluent wire format. What an
/// outbox holds, and what a dead letter or a raw produce sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Destination topic.
    pub topic: String,
    /// The partition, when the writer chooses it (a changelog record goes to its task's
    /// partition); `None`: the key's partition.
    pub partition: Option<i32>,
    /// Record key (none when empty).
    pub key: Vec<u8>,
    /// Record value; `None` is a tombstone (a compacted topic forgets the key).
    pub payload: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Encodes an event into a record ready to send (or to queue in an outbox).
///
/// # Errors
///
/// As [`Codec::encode`].
pub async fn record<E: Event>(
    codec: &Codec,
    topic: &str,
    event: &E,
    metadata: &Metadata,
) -> Result<OutgoingRecord, CodecError> {
    let payload = codec.encode(topic, event).await?;
    let event_type = codec.record_name::<E>()?;
    Ok(OutgoingRecord {
        topic: topic.to_owned(),
        partition: None,
        key: event.key().into_bytes(),
        payload: Some(payload),
        headers: metadata.pairs(Some(&event_type)),
    })
}

/// How long a send waits for room in librdkafka's queue before it fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of a record handed to librdkafka.
enum Queued {
    /// Queued; the future resolves with the broker's answer.
    Sent(DeliveryFuture),
    /// Not queued yet: no room in the queue (or, for [`Producer::send`], no writer id for
    /// the topic yet); the caller takes the path that waits.
    NotYet,
    /// Refused for good (unknown topic, message too large...).
    Failed(KafkaError),
}

/// librdkafka's record (no key when `key` is empty).
fn future_record<'a, 'h>(
    topic: &'a str,
    key: &'a [u8],
    payload: &'a [u8],
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut owned = OwnedHeaders::new_with_capacity(5);
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let record = FutureRecord::to(topic).payload(payload).headers(owned);
    if key.is_empty() {
        record
    } else {
        record.key(key)
    }
}

/// librdkafka's record of an [`OutgoingRecord`]: its partition when it names one, no value
/// for a tombstone.
fn outgoing_record(entry: &OutgoingRecord) -> FutureRecord<'_, [u8], [u8]> {
    let headers = entry
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()));
    let mut record = future_record(&entry.topic, &entry.key, &[], headers);
    record.payload = entry.payload.as_deref();
    record.partition = entry.partition;
    record
}

/// Waits for a queued record's delivery report.
async fn acked(
    delivery: DeliveryFuture,
) -> std::result::Result<rdkafka::producer::future_producer::Delivery, KafkaError> {
    match delivery.await {
        Ok(answer) => answer.map_err(|(e, _)| e),
        // The sender lives in librdkafka's message until its delivery report; it is dropped
        // unanswered only when the producer goes away, which the caller's borrow prevents.
        Err(_) => Err(KafkaError::Canceled),
    }
}

fn codec_error(e: CodecError) -> Error {
    e.into()
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// An idempotent producer of typed events.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    codec: Codec,
    /// Whether the broker runs in this process, whose idle consumers each delivery wakes
    /// ([`crate::kafka::idle`]).
    local: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// The producer settings every tripstream producer uses, before `overrides`.
pub fn client_config(bootstrap: &str, overrides: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Retried internally by librdkafka for this long before a send fails.
        .set("message.timeout.ms", "60000");
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

impl Producer {
    /// A producer on `bootstrap`; `overrides` are raw librdkafka settings.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the configuration is refused.
    pub fn new(bootstrap: &str, codec: Codec, overrides: &[(String, String)]) -> Result<Self> {
        let inner = client_config(bootstrap, overrides)
            .create()
            .map_err(|e| Error::kafka("creating a producer", e))?;
        Ok(Producer {
            inner,
            codec,
            local: super::idle::is_local(bootstrap),
        })
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Encodes and sends an event, keyed by its aggregate id; returns once the broker acked.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when it cannot be encoded, [`Error::Kafka`] when the broker did not
    /// take it within the message timeout.
    pub async fn send<E: Event>(
        &self,
        topic: &str,
        event: &E,
        metadata: &Metadata,
    ) -> Result<Delivery> {
        // The hot path queues the record synchronously, so all this future holds across its
        // one await is librdkafka's delivery future: every send's future is moved into its
        // task, and one that held the encoder and the headers cost a large copy per event.
        let delivery = match self.codec.encode_known(topic, event) {
            Some(payload) => {
                let payload = payload.map_err(codec_error)?;
                let event_type = self.codec.record_name::<E>().map_err(codec_error)?;
                let headers = metadata.header_bytes(&event_type);
                self.queue(future_record(
                    topic,
                    event.key().as_bytes(),
                    &payload,
                    headers,
                ))
            }
            None => Queued::NotYet,
        };
        match delivery {
            Queued::Sent(delivery) => self.delivered(topic, acked(delivery).await),
            Queued::Failed(e) => Err(Error::kafka(format!("sending to {topic}"), e)),
            // A full queue, or the first send of the type to this topic (registers the schema).
            Queued::NotYet => Box::pin(self.send_waiting(topic, event, metadata)).await,
        }
    }

    /// [`Producer::send`] when the writer id is not known yet or the queue is full: encodes
    /// through the registry and waits for room in the queue.
    async fn send_waiting<E: Event>(
        &self,
        topic: &str,
        event: &E,
        metadata: &Metadata,
    ) -> Result<Delivery> {
        let payload = self.codec.encode(topic, event).await.map_err(codec_error)?;
        let event_type = self.codec.record_name::<E>().map_err(codec_error)?;
        let headers = metadata.header_bytes(&event_type);
        let key = event.key();
        let record = future_record(topic, key.as_bytes(), &payload, headers);
        self.delivered(
            topic,
            self.inner
                .send(record, QUEUE_TIMEOUT)
                .await
                .map_err(|(e, _)| e),
        )
    }

    /// Sends an already framed record (from an outbox, or a dead letter).
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the broker did not take it within the message timeout.
    pub async fn send_record(&self, entry: &OutgoingRecord) -> Result<Delivery> {
        match self.queue(outgoing_record(entry)) {
            Queued::Sent(delivery) => self.delivered(&entry.topic, acked(delivery).await),
            Queued::Failed(e) => Err(Error::kafka(format!("sending to {}", entry.topic), e)),
            Queued::NotYet => {
                let sent = Box::pin(self.inner.send(outgoing_record(entry), QUEUE_TIMEOUT)).await;
                self.delivered(&entry.topic, sent.map_err(|(e, _)| e))
            }
        }
    }

    /// The broker's answer as the producer's result; a local broker's idle consumers are told.
    fn delivered(
        &self,
        topic: &str,
        answer: std::result::Result<rdkafka::producer::future_producer::Delivery, KafkaError>,
    ) -> Result<Delivery> {
        let delivery = answer
            .map(|delivery| Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            })
            .map_err(|e| Error::kafka(format!("sending to {topic}"), e))?;
        if self.local {
            super::idle::wrote();
        }
        Ok(delivery)
    }

    /// Hands a record to librdkafka without waiting for room in its queue.
    fn queue(&self, record: FutureRecord<'_, [u8], [u8]>) -> Queued {
        match self.inner.send_result(record) {
            Ok(delivery) => Queued::Sent(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Queued::NotYet,
            Err((e, _)) => Queued::Failed(e),
        }
    }

    /// The underlying rdkafka producer (to flush, or for raw sends in benchmarks).
    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }
}
