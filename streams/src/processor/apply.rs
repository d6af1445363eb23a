//! The one path that applies a consumed record, for the live processor and replay alike.
//!
//! Dedupe, the handler, and the record's effects added to a [`Batch`].
//!
//! What differs between the two is a value, not a mode: [`Writers`] says whether other
//! workers may write the store (then handlers' reads are recorded and the commit checks them),
//! and the caller decides how many records one commit takes.

use rdkafka::message::Message;

use super::handler::{Context, Handler, HandlerError, Record};
use crate::codec::{Codec, CodecError};
use crate::kafka::Metadata;
use crate::store::{Batch, Effects, Position, Scope, Store, Writers};

/// Why one attempt at a record failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retry the same record later.
    Retry(String),
    /// Dead-letter it with this kind and reason.
    Poison(&'static str, String),
}

/// What records are applied with.
pub(crate) struct Apply<'a, H> {
    /// The consumer group (or replay name) the offsets are stored under.
    pub(crate) group: &'a str,
    pub(crate) store: &'a Store,
    pub(crate) codec: &'a Codec,
    pub(crate) handler: &'a H,
    pub(crate) writers: Writers,
    /// Topics read whole as global tables; a record of any other topic belongs to the task of
    /// its partition number.
    pub(crate) globals: &'a [String],
}

impl<H: Handler> Apply<'_, H> {
    /// Adds `message` to `batch`: its handler's effects, its offset and its event id. A record
    /// below the offset the batch or the store is at adds nothing; a duplicate event (its id
    /// applied before) adds only its offset.
    ///
    /// # Errors
    ///
    /// The [`Failure`] of the record: the batch is left as it was.
    pub(crate) async fn record<M: Message + Sync>(
        &self,
        batch: &mut Batch,
        message: &M,
    ) -> Result<(), Failure> {
        let at = position(self.group, message);
        let scope = self.scope(at.topic, at.partition);
        let store_error = |e: crate::Error| Failure::Retry(e.to_string());
        // A record the batch or the store already moved past: a partition taken back after a
        // rebalance is read again from the committed offset, which may repeat records.
        let next = match batch.next_offset(&at) {
            Some(next) => Some(next),
            None => self
                .store
                .next_offset(at.group, at.topic, at.partition)
                .map_err(store_error)?,
        };
        if next.is_some_and(|next| at.offset < next) {
            return Ok(());
        }
        let headers = Metadata::from_headers(message.headers());
        let id = headers.as_ref().map(|m| m.event_id.as_bytes());
        if let Some(id) = id
            && (batch.seen(id) || self.store.seen(id))
        {
            tracing::debug!(event_id = %String::from_utf8_lossy(id), "Skipping a duplicate event");
            batch.add(&at, scope, None, Effects::default());
            return Ok(());
        }
        let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
            return Err(Failure::Poison("empty", "the record has no value".into()));
        };
        let filled;
        let cause = match &headers {
            Some(metadata) if metadata.event_type.is_some() => metadata,
            // A record from a producer that does not set tripstream's headers (any Kafka
            // client with a registry client): what it is comes from its schema id.
            _ => {
                let event_type = self
                    .codec
                    .writer_name(payload)
                    .await
                    .map_err(|e| failure(HandlerError::Codec(e)))?;
                filled = foreign(headers.as_ref(), &at, message.key(), event_type);
                &filled
            }
        };
        let record = Record::at(&at, message, payload, Some(cause));
        let mut ctx = Context::new(
            self.group,
            self.store,
            scope,
            batch,
            self.codec,
            cause,
            self.writers,
        );
        let outcome = self.handler.handle(&mut ctx, &record).await;
        let effects = ctx.finish();
        outcome.map_err(failure)?;
        batch.add(&at, scope, id, effects);
        Ok(())
    }

    /// The state a record of `topic`'s `partition` belongs to.
    pub(crate) fn scope(&self, topic: &str, partition: i32) -> Scope {
        scope_of(self.globals, topic, partition)
    }
}

/// The state a record of `topic`'s `partition` belongs to, when `globals` are read as global
/// tables: a global table's, or the task of its partition number.
pub(crate) fn scope_of(globals: &[String], topic: &str, partition: i32) -> Scope {
    if globals.iter().any(|g| g == topic) {
        Scope::Global
    } else {
        Scope::Task(partition)
    }
}

/// The metadata of a record whose headers do not say its type (`event_type`, the writer
/// schema's full name, is given): the headers' own when it has an event id, else an id derived
/// from where it was read (the same on every read, so its effects get the same ids on a
/// replay) and its key as the correlation id.
fn foreign(
    headers: Option<&Metadata>,
    at: &Position<'_>,
    key: Option<&[u8]>,
    event_type: String,
) -> Metadata {
    let mut metadata = headers.cloned().unwrap_or_else(|| Metadata {
        event_id: crate::kafka::headers::derived_id(&[
            at.topic.as_bytes(),
            &at.partition.to_be_bytes(),
            &at.offset.to_be_bytes(),
        ]),
        ..Metadata::new(String::from_utf8_lossy(key.unwrap_or_default()))
    });
    metadata.event_type = Some(event_type);
    metadata
}

/// Where `message` came from, as the store keys it.
pub(crate) fn position<'a>(group: &'a str, message: &'a impl Message) -> Position<'a> {
    Position {
        group,
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// What a handler's error means for the record.
fn failure(error: HandlerError) -> Failure {
    match error {
        HandlerError::Invalid(reason) => Failure::Poison("invalid", reason),
        HandlerError::Retry(reason) => Failure::Retry(reason),
        HandlerError::Store(e) => Failure::Retry(e.to_string()),
        HandlerError::Codec(e) if e.is_retriable() => Failure::Retry(e.to_string()),
        HandlerError::Codec(e) => {
            let kind = match e {
                CodecError::UnknownSchema { .. } => "unknown-schema",
                _ => "decode",
            };
            Failure::Poison(kind, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;
    use crate::kafka::headers::header;
    use crate::registry::Client;

    /// Counts the records it is run for in state key `n`.
    struct Counter;

    impl Handler for Counter {
        async fn handle(
            &self,
            ctx: &mut Context<'_>,
            _record: &Record<'_>,
        ) -> Result<(), HandlerError> {
            let n = ctx.get_json::<u64>("n")?.unwrap_or(0);
            ctx.put_json("n", &(n + 1))?;
            Ok(())
        }
    }

    /// Partition 0 of `t` at `offset`, as tripstream's producers write it (`event_id` and
    /// `event_type` headers) when `event_id` is given, else with no headers.
    fn message(offset: i64, event_id: Option<&str>) -> OwnedMessage {
        let headers = event_id.map(|id| {
            OwnedHeaders::new()
                .insert(Header {
                    key: header::EVENT_ID,
                    value: Some(id),
                })
                .insert(Header {
                    key: header::EVENT_TYPE,
                    value: Some("t.T"),
                })
        });
        OwnedMessage::new(
            Some(b"x".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            headers,
        )
    }

    async fn apply_all(store: &Store, messages: &[OwnedMessage]) -> Batch {
        // Nothing here decodes, so the registry is never called.
        let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
        let apply = Apply {
            group: "g",
            store,
            codec: &codec,
            handler: &Counter,
            writers: Writers::Shared,
            globals: &[],
        };
        let mut batch = Batch::default();
        for message in messages {
            apply.record(&mut batch, message).await.expect("applied");
        }
        batch
    }

    fn count(store: &Store) -> Option<Vec<u8>> {
        store.get(b"n").expect("get")
    }

    #[tokio::test]
    async fn a_record_repeated_within_a_batch_is_applied_once_and_the_offset_never_goes_back() {
        let store = Store::temporary().expect("store");
        // A partition taken back in a rebalance is read again from its committed offset.
        let batch = apply_all(
            &store,
            &[
                message(10, Some("e10")),
                message(11, Some("e11")),
                message(10, Some("e10")),
            ],
        )
        .await;
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.pending(Scope::Task(0), b"n"), Some(Some(&b"2"[..])));
        store.commit(&batch, Writers::Shared).expect("commit");
        assert_eq!(store.next_offset("g", "t", 0).expect("offset"), Some(12));
    }

    #[tokio::test]
    async fn a_duplicate_event_moves_only_the_offset_and_a_record_behind_the_store_adds_nothing() {
        let store = Store::temporary().expect("store");
        let batch = apply_all(&store, &[message(0, Some("e1")), message(1, Some("e1"))]).await;
        assert_eq!(batch.len(), 2, "both offsets move");
        assert_eq!(
            batch.pending(Scope::Task(0), b"n"),
            Some(Some(&b"1"[..])),
            "the handler ran once"
        );
        store.commit(&batch, Writers::Shared).expect("commit");
        assert_eq!(count(&store), Some(b"1".to_vec()));

        let behind = apply_all(&store, &[message(1, Some("e2"))]).await;
        assert!(behind.is_empty(), "offset 1 is applied already");
        let ahead = apply_all(&store, &[message(2, Some("e2"))]).await;
        assert_eq!(ahead.len(), 1);
    }

    #[tokio::test]
    async fn a_record_without_headers_is_typed_by_its_schema_id_and_unframed_bytes_say_so() {
        let store = Store::temporary().expect("store");
        let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
        let apply = Apply {
            group: "g",
            store: &store,
            codec: &codec,
            handler: &Counter,
            writers: Writers::Shared,
            globals: &[],
        };
        // Not the "does not handle event type (none)" of a handler: the payload is read for
        // its schema id, and `x` is no Confluent frame.
        let failure = apply
            .record(&mut Batch::default(), &message(0, None))
            .await
            .expect_err("unframed");
        assert!(
            matches!(&failure, Failure::Poison("decode", reason) if reason.contains("bytes")),
            "{failure:?}"
        );
    }

    #[test]
    fn a_foreign_records_event_id_is_derived_from_where_it_was_read() {
        let at = |offset| Position {
            group: "g",
            topic: "flights",
            partition: 2,
            offset,
        };
        let first = foreign(
            None,
            &at(7),
            Some(b"LH1"),
            "tripstream.flight.FlightScheduled".into(),
        );
        let again = foreign(None, &at(7), Some(b"LH1"), "x".into());
        let next = foreign(None, &at(8), Some(b"LH1"), "x".into());
        assert_eq!(first.event_id, again.event_id, "the same on every read");
        assert_ne!(first.event_id, next.event_id);
        assert_eq!(first.correlation_id, "LH1");
        assert_eq!(
            first.event_type.as_deref(),
            Some("tripstream.flight.FlightScheduled")
        );
        let own = Metadata::new("b1");
        assert_eq!(
            foreign(Some(&own), &at(7), None, "x".into()).event_id,
            own.event_id
        );
    }
}
