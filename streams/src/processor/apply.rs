//! The one path that applies a consumed record to a store, for the live processor and for
//! replay alike: dedupe, the handler, and the record's effects added to a [`Batch`].
//!
//! What differs between the two is a value, not a mode: [`Writers`] says whether other
//! workers may write the store (then handlers' reads are recorded and the commit checks them),
//! and the caller decides how many records one commit takes.

use rdkafka::message::Message;

use super::handler::{Context, Handler, HandlerError, Record};
use crate::codec::{Codec, CodecError};
use crate::kafka::Metadata;
use crate::store::{Batch, Effects, Position, Store, Writers};

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
}

impl<H: Handler> Apply<'_, H> {
    /// Adds `message` to `batch`: its handler's effects, its offset and its event id. A record
    /// the store already applied (its partition restarted below the stored offset) adds
    /// nothing; a duplicate event (its id applied before) adds only its offset.
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
        let store_error = |e: crate::Error| Failure::Retry(e.to_string());
        // Within a batch a partition's records follow each other, so only its first one can
        // lie below the stored offset.
        if !batch.holds_partition(&at)
            && self
                .store
                .next_offset(at.group, at.topic, at.partition)
                .map_err(store_error)?
                .is_some_and(|next| at.offset < next)
        {
            return Ok(());
        }
        let metadata = Metadata::from_headers(message.headers());
        let id = metadata.as_ref().map(|m| m.event_id.as_bytes());
        if let Some(id) = id
            && (batch.seen(id) || self.store.seen(id))
        {
            tracing::debug!(event_id = %String::from_utf8_lossy(id), "Skipping a duplicate event");
            batch.add(&at, None, Effects::default());
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
            batch,
            self.codec,
            cause,
            self.writers,
        );
        let outcome = self.handler.handle(&mut ctx, &record).await;
        let effects = ctx.finish();
        outcome.map_err(failure)?;
        batch.add(&at, id, effects);
        Ok(())
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
