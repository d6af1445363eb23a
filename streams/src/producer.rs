//! The typed producer: idempotent, keyed by aggregate id, with event metadata in headers.
//!
//! Headers: `event_id` (unique per event, derived from its cause for events a processor emits;
//! consumers dedupe on it), `correlation_id` (the
//! booking the event belongs to), `causation_id` (the event that caused it), `event_type`
//! (the record's full name) and `traceparent` (W3C trace context, passed along).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};

use crate::codec::{Codec, CodecError, Event};
use crate::error::{Error, Result};
use crate::store::OutboxEntry;

/// Header names.
pub mod header {
    /// Unique id of the event.
    pub const EVENT_ID: &str = "event_id";
    /// The business transaction (booking) the event belongs to.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The event that caused this one.
    pub const CAUSATION_ID: &str = "causation_id";
    /// The record's full name.
    pub const EVENT_TYPE: &str = "event_type";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// An event's metadata, carried in record headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique id of this event.
    pub event_id: String,
    /// The booking (or other business transaction) it belongs to.
    pub correlation_id: String,
    /// The event that caused it, if any.
    pub causation_id: Option<String>,
    /// The record's full name, when known.
    pub event_type: Option<String>,
    /// Trace context, passed from cause to effect.
    pub traceparent: Option<String>,
}

impl Metadata {
    /// Metadata for an event that starts a business transaction.
    pub fn new(correlation_id: impl Into<String>) -> Self {
        Metadata {
            event_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: correlation_id.into(),
            causation_id: None,
            event_type: None,
            traceparent: None,
        }
    }

    /// Metadata for an event caused by `cause`: same correlation and trace, new id.
    pub fn caused_by(cause: &Metadata) -> Self {
        Metadata {
            event_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.event_id.clone()),
            event_type: None,
            traceparent: cause.traceparent.clone(),
        }
    }

    /// Metadata for the `n`-th event that `origin` (a consumer group) emits while processing
    /// `cause`. The id is derived from the three, not drawn at random: if a crash loses the
    /// transaction after the relay published its outbox, processing `cause` again emits the
    /// same ids, and consumers skip them as duplicates instead of applying them twice.
    pub fn derived_from(cause: &Metadata, origin: &str, n: usize) -> Self {
        Metadata {
            event_id: derived_id(&[
                origin.as_bytes(),
                cause.event_id.as_bytes(),
                &(n as u64).to_be_bytes(),
            ]),
            ..Metadata::caused_by(cause)
        }
    }

    /// Reads metadata from record headers; `None` without an `event_id` header.
    pub fn from_headers<H: Headers>(headers: Option<&H>) -> Option<Self> {
        let headers = headers?;
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        };
        Some(Metadata {
            event_id: get(header::EVENT_ID)?,
            correlation_id: get(header::CORRELATION_ID).unwrap_or_default(),
            causation_id: get(header::CAUSATION_ID),
            event_type: get(header::EVENT_TYPE),
            traceparent: get(header::TRACEPARENT),
        })
    }

    /// The headers, as name and value pairs.
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.pairs(None)
    }

    /// The headers as owned pairs, with `event_type` in place of the metadata's own when given.
    fn pairs(&self, event_type: Option<&str>) -> Vec<(String, Vec<u8>)> {
        self.headers(event_type)
            .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
            .collect()
    }

    /// The headers as librdkafka takes them, with `event_type` in place of the metadata's own.
    fn header_bytes<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.headers(Some(event_type))
            .map(|(name, value)| (name, value.as_bytes()))
    }

    /// The headers as (name, value), with `event_type` in place of the metadata's own when
    /// given.
    fn headers<'a>(
        &'a self,
        event_type: Option<&'a str>,
    ) -> impl Iterator<Item = (&'static str, &'a str)> {
        [
            (header::EVENT_ID, Some(self.event_id.as_str())),
            (header::CORRELATION_ID, Some(self.correlation_id.as_str())),
            (header::CAUSATION_ID, self.causation_id.as_deref()),
            (
                header::EVENT_TYPE,
                event_type.or(self.event_type.as_deref()),
            ),
            (header::TRACEPARENT, self.traceparent.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
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
) -> Result<OutboxEntry, CodecError> {
    let payload = codec.encode(topic, event).await?;
    let event_type = codec.record_name::<E>()?;
    Ok(OutboxEntry {
        topic: topic.to_owned(),
        key: event.key().into_bytes(),
        payload,
        headers: metadata.pairs(Some(&event_type)),
    })
}

/// A UUID (RFC 9562 version 8) derived from `parts`: the same parts always give the same id,
/// different parts different ids (SHA-256, parts separated by a zero byte).
pub fn derived_id(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0]);
        }
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Version 8 (custom), variant 10.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
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

/// The broker's answer as the producer's result.
fn delivered(
    topic: &str,
    answer: std::result::Result<rdkafka::producer::future_producer::Delivery, KafkaError>,
) -> Result<Delivery> {
    answer
        .map(|delivery| Delivery {
            partition: delivery.partition,
            offset: delivery.offset,
        })
        .map_err(|e| Error::kafka(format!("sending to {topic}"), e))
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
    Error::Codec(Box::new(e))
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
        Ok(Producer { inner, codec })
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
                self.queue(topic, event.key().as_bytes(), &payload, headers)
            }
            None => Queued::NotYet,
        };
        match delivery {
            Queued::Sent(delivery) => delivered(topic, acked(delivery).await),
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
        delivered(
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
    pub async fn send_record(&self, entry: &OutboxEntry) -> Result<Delivery> {
        let headers = || {
            entry
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
        };
        match self.queue(&entry.topic, &entry.key, &entry.payload, headers()) {
            Queued::Sent(delivery) => delivered(&entry.topic, acked(delivery).await),
            Queued::Failed(e) => Err(Error::kafka(format!("sending to {}", entry.topic), e)),
            Queued::NotYet => {
                let record = future_record(&entry.topic, &entry.key, &entry.payload, headers());
                let sent = Box::pin(self.inner.send(record, QUEUE_TIMEOUT)).await;
                delivered(&entry.topic, sent.map_err(|(e, _)| e))
            }
        }
    }

    /// Hands a record to librdkafka without waiting for room in its queue.
    fn queue<'h>(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> Queued {
        match self
            .inner
            .send_result(future_record(topic, key, payload, headers))
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_repeat_for_the_same_cause_and_differ_otherwise() {
        let cause = Metadata::new("b1");
        let id = |origin: &str, n| Metadata::derived_from(&cause, origin, n).event_id;
        assert_eq!(id("flight", 0), id("flight", 0));
        assert_ne!(id("flight", 0), id("flight", 1));
        assert_ne!(id("flight", 0), id("hotel", 0));
        assert_ne!(
            id("flight", 0),
            Metadata::derived_from(&Metadata::new("b1"), "flight", 0).event_id
        );
        let parsed = uuid::Uuid::parse_str(&id("flight", 0)).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 8);
        let derived = Metadata::derived_from(&cause, "flight", 0);
        assert_eq!(
            derived.causation_id.as_deref(),
            Some(cause.event_id.as_str())
        );
        assert_eq!(derived.correlation_id, "b1");
        // Parts are separated, so moving bytes between them changes the id.
        assert_ne!(derived_id(&[b"ab", b"c"]), derived_id(&[b"a", b"bc"]));
    }
}
