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
        let metadata = Metadata::from_headers(message.headers());
        let id = metadata.as_ref().map(|m| m.event_id.as_bytes());
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
        let record = Record::at(&at, message, payload, metadata.as_ref());
        let fallback;
        let cause = match &metadata {
            Some(metadata) => metadata,
            None => {
                // A record from a producer that sets no headers: its effects still get
                // traceable ids.
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                fallback = Metadata {
                    event_id: format!("{}/{}/{}", at.topic, at.partition, at.offset),
                    ..Metadata::new(key)
                };
                &fallback
            }
        };
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

    /// Partition 0 of `t` at `offset`, with `event_id` in its headers when given.
    fn message(offset: i64, event_id: Option<&str>) -> OwnedMessage {
        let headers = event_id.map(|id| {
            OwnedHeaders::new().insert(Header {
                key: header::EVENT_ID,
                value: Some(id),
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
            &[message(10, None), message(11, None), message(10, None)],
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
}
