//! What a service writes: a [`Handler`], given a [`Record`] and a [`Context`].
//!
//! The context is what the handler reads and writes state and emits events through.

use std::future::Future;
use std::sync::Mutex;

use rdkafka::message::Message;

use crate::codec::{Codec, CodecError, Event};
use crate::error::Error;
use crate::kafka::Metadata;
use crate::kafka::producer;
use crate::store::{Batch, Effects, Position, Reads, Scope, Store, Writers};

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be processed (bad content): it goes to the dead-letter topic.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// Something outside is down: the same record is retried after a pause.
    #[error("temporary failure: {0}")]
    Retry(String),
    /// Decoding or encoding failed; its own `is_retriable` decides.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store failed: retried, since sled errors are I/O errors.
    #[error(transparent)]
    Store(#[from] Error),
}

impl HandlerError {
    /// A record of a type the `service` does not handle (`None`: a record without an
    /// `event_type` header): it goes to the dead-letter topic.
    pub fn unhandled(service: &str, event_type: Option<&str>) -> Self {
        HandlerError::Invalid(format!(
            "the {service} service does not handle event type {}",
            event_type.unwrap_or("(none)")
        ))
    }
}

/// A consumed record, as a handler sees it.
#[derive(Debug)]
pub struct Record<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record's timestamp (milliseconds since the epoch), as the log holds it: what a
    /// handler that needs "now" uses, so that a replay decides as the live run did.
    pub timestamp: Option<i64>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value (Confluent-framed Avro).
    pub payload: &'a [u8],
    /// Metadata from headers, when the producer set them.
    pub metadata: Option<&'a Metadata>,
}

impl<'a> Record<'a> {
    pub(crate) fn at(
        at: &Position<'a>,
        message: &'a impl Message,
        payload: &'a [u8],
        metadata: Option<&'a Metadata>,
    ) -> Self {
        Record {
            topic: at.topic,
            partition: at.partition,
            offset: at.offset,
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            payload,
            metadata,
        }
    }

    /// The record's full name from its `event_type` header, if any.
    pub fn event_type(&self) -> Option<&str> {
        self.metadata.and_then(|m| m.event_type.as_deref())
    }
}

/// What a handler reads and writes while processing one record.
pub struct Context<'a> {
    /// The consumer group processing the record: part of the ids of the events it emits.
    group: &'a str,
    store: &'a Store,
    /// The state the record belongs to: its task's, or a global table's.
    scope: Scope,
    /// Earlier records of the same batch, not yet committed: the handler sees their writes.
    overlay: &'a Batch,
    codec: &'a Codec,
    cause: &'a Metadata,
    effects: Effects,
    /// What the handler read from the store (sled keys, scope included), checked again at
    /// commit when other workers may write the store ([`Writers::Shared`]). A lock, not a `RefCell`, so handlers may hold
    /// `&Context` across an await on a multi-threaded runtime.
    reads: Mutex<Reads>,
    writers: Writers,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        group: &'a str,
        store: &'a Store,
        scope: Scope,
        overlay: &'a Batch,
        codec: &'a Codec,
        cause: &'a Metadata,
        writers: Writers,
    ) -> Self {
        Context {
            group,
            store,
            scope,
            overlay,
            codec,
            cause,
            effects: Effects::default(),
            reads: Mutex::new(Vec::new()),
            writers,
        }
    }

    /// The record's effects, conditional on what it read.
    pub(crate) fn finish(self) -> Effects {
        let mut effects = self.effects;
        let reads = self
            .reads
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        effects.scoped_reads = reads;
        effects
    }

    /// Decodes the record into `E` (any registered version of its schema).
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`].
    pub async fn decode<E: Event>(&self, record: &Record<'_>) -> Result<E, HandlerError> {
        // `Codec::decode` answers from its cache without a registry call once the writer id
        // is known, which after warm-up is every record.
        Ok(self.codec.decode(record.payload).await?)
    }

    /// Reads a business-state key of the record's own task (or, for a record of a global
    /// table, of that table), seeing this record's own writes.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Store`] on an I/O failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HandlerError> {
        if let Some(value) = self.effects.pending(key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        self.read(self.scope, key)
    }

    /// Reads a key of the global tables (a catalog every instance holds whole), whatever task
    /// the record belongs to.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Store`] on an I/O failure.
    pub fn get_global(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HandlerError> {
        if self.scope == Scope::Global
            && let Some(value) = self.effects.pending(key)
        {
            return Ok(value.map(<[u8]>::to_vec));
        }
        self.read(Scope::Global, key)
    }

    /// A key of `scope` as earlier records of the batch left it, else as the store holds it.
    fn read(&self, scope: Scope, key: &[u8]) -> Result<Option<Vec<u8>>, HandlerError> {
        if let Some(value) = self.overlay.pending(scope, key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        let value = self.store.get_in(scope, key)?;
        if self.writers == Writers::Shared {
            crate::sync::lock(&self.reads).push((scope.key(key), value.clone()));
        }
        Ok(value)
    }

    /// Reads a business-state key holding JSON (see [`Context::put_json`]).
    ///
    /// # Errors
    ///
    /// [`HandlerError::Store`] on an I/O failure or a value that is not a `T`.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, HandlerError> {
        json(key, self.get(key.as_bytes())?)
    }

    /// Reads a key of the global tables holding JSON (see [`Context::get_global`]).
    ///
    /// # Errors
    ///
    /// As [`Context::get_json`].
    pub fn global_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, HandlerError> {
        json(key, self.get_global(key.as_bytes())?)
    }

    /// Sets a business-state key to `value` as JSON: readable with `tripstream` tools and
    /// stable across runs, so digests of replayed stores match.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Invalid`] for a value JSON cannot hold (a map with keys that are not
    /// strings): the record goes to the dead-letter topic with the reason, rather than
    /// leaving state nobody can read.
    pub fn put_json<T: serde::Serialize>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            HandlerError::Invalid(format!("state {key} cannot be written as JSON: {e}"))
        })?;
        self.effects.put(key.as_bytes().to_vec(), bytes);
        Ok(())
    }

    /// The metadata of the record being processed.
    pub fn cause(&self) -> &Metadata {
        self.cause
    }

    /// Sets a business-state key (applied with the record's offset).
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.effects.put(key, value);
    }

    /// Removes a business-state key (applied with the record's offset).
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.effects.remove(key);
    }

    /// Emits an event caused by this record; published after the record's transaction.
    ///
    /// # Errors
    ///
    /// As [`Codec::encode`].
    pub async fn emit<E: Event>(&mut self, topic: &str, event: &E) -> Result<(), HandlerError> {
        let n = self.effects.emitted().len();
        self.emit_caused_by(self.cause, n, topic, event).await
    }

    /// Emits an event as the `n`-th effect of an earlier record, whose metadata is `cause`: a
    /// record kept in state and applied now gets the ids it would have got when it was read,
    /// so consumers dedupe a copy emitted before.
    ///
    /// # Errors
    ///
    /// As [`Codec::encode`].
    pub async fn emit_caused_by<E: Event>(
        &mut self,
        cause: &Metadata,
        n: usize,
        topic: &str,
        event: &E,
    ) -> Result<(), HandlerError> {
        let metadata = Metadata::derived_from(cause, self.group, n);
        let record = producer::record(self.codec, topic, event, &metadata).await?;
        self.effects.emit(record);
        Ok(())
    }
}

/// A stored JSON value as a `T`.
fn json<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: Option<Vec<u8>>,
) -> Result<Option<T>, HandlerError> {
    bytes
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                HandlerError::Store(Error::Store(format!("state {key} is unreadable: {e}")))
            })
        })
        .transpose()
}

/// A service's logic: what one record does.
pub trait Handler: Send + Sync + 'static {
    /// Processes one record: read state, write state, emit events through `ctx`.
    fn handle(
        &self,
        ctx: &mut Context<'_>,
        record: &Record<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}
