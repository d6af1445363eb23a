//! The Confluent wire format (byte 0, 4-byte big-endian schema id, Avro binary) and typed
//! events: encoding with the registered writer schema, decoding any registered version.
//!
//! Encoding and decoding go through the schema compiled by [`crate::avro::program`], or through
//! `serde_avro_fast` for the few schemas it does not compile and the values it does not write.
//! A record written with the reader's own schema (same Parsing Canonical Form) decodes straight
//! into the Rust type. A record written with another version is first rewritten by
//! [`crate::avro::resolve`] (Avro's schema resolution: defaults filled, promotions applied, removed
//! fields skipped) and then decoded the same way, so old events replay into new code with the
//! reader's defaults. (`apache-avro` 0.22's own resolution refuses small bytes-backed decimals
//! such as our money amounts, hence our own.)
//! Every malformed payload is an error value, never a panic.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::avro::program::Program;
use crate::avro::schema::Schema;
use crate::registry::{Client, subject_name};
use crate::sync::{read, write};

/// The first byte of every Confluent-framed payload.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer bytes than the header.
    #[error("the payload has {len} bytes, fewer than the 5-byte Confluent header")]
    Short {
        /// The payload's length.
        len: usize,
    },
    /// The first byte is not the magic byte.
    #[error("the payload starts with byte {found:#04x}, not the Confluent magic byte 0x00")]
    Magic {
        /// The byte found.
        found: u8,
    },
    /// The registry has no schema with that id.
    #[error("schema id {id} is not known to the registry")]
    UnknownSchema {
        /// The id in the payload.
        id: u32,
    },
    /// The body does not decode with the writer's schema into the reader's type.
    #[error("the payload does not decode with schema id {id}: {reason}")]
    Decode {
        /// The writer's schema id.
        id: u32,
        /// The decoder's reason.
        reason: String,
    },
    /// The event does not fit its own schema.
    #[error("a {record} does not encode with its schema: {reason}")]
    Encode {
        /// The record's full name.
        record: String,
        /// The encoder's reason.
        reason: String,
    },
    /// The event type's schema is itself invalid (a programming error caught at first use).
    #[error("the schema of {record} is invalid: {reason}")]
    BadSchema {
        /// The record's full name.
        record: String,
        /// Why.
        reason: String,
    },
    /// The registry could not be asked or refused a registration.
    #[error(transparent)]
    Registry(crate::Error),
}

impl CodecError {
    /// Whether a retry may succeed: only a registry outage passes. Everything else is about
    /// the bytes or the types, which waiting does not change.
    pub fn is_retriable(&self) -> bool {
        matches!(self, CodecError::Registry(e) if e.is_retriable())
    }
}

impl From<CodecError> for crate::Error {
    fn from(error: CodecError) -> Self {
        crate::Error::Codec {
            retriable: error.is_retriable(),
            source: Box::new(error),
        }
    }
}

/// A typed event with its Avro schema.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema's text: usually `include_str!` of `schemas/<full name>.avsc`.
    const SCHEMA: &'static str;

    /// The aggregate id the event is keyed by, so one aggregate's events stay in order.
    fn key(&self) -> String;
}

/// Splits a framed payload into its schema id and Avro body.
///
/// # Errors
///
/// [`CodecError::Short`] or [`CodecError::Magic`].
pub fn split(payload: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match payload {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [found, _, _, _, _, ..] => Err(CodecError::Magic { found: *found }),
        _ => Err(CodecError::Short { len: payload.len() }),
    }
}

/// Writes the header for a schema id.
pub fn write_header(out: &mut Vec<u8>, id: u32) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

/// A reader type's compiled schema, built once per type.
struct Local {
    /// Shared: every send puts it in a header.
    name: Arc<str>,
    parsed: Schema,
    fast: serde_avro_fast::Schema,
    /// The compiled decoder and encoder; `None` for schemas it does not compile, which `fast`
    /// decodes and encodes instead.
    program: Option<Program>,
    /// The largest datum encoded so far (up to [`MAX_SIZE_HINT`]): the next buffer starts at
    /// that size instead of growing (and copying) on the way.
    size_hint: AtomicUsize,
    fingerprint: String,
}

impl Local {
    fn build<E: Event>() -> Result<Local, CodecError> {
        let bad = |reason: String| CodecError::BadSchema {
            record: std::any::type_name::<E>().to_owned(),
            reason,
        };
        let parsed = Schema::parse(E::SCHEMA).map_err(|e| bad(e.to_string()))?;
        let safe: serde_avro_fast::schema::SchemaMut = parsed
            .canonical()
            .parse()
            .map_err(|e| bad(format!("{e}")))?;
        let program = Program::compile(&safe);
        let fast = safe.freeze().map_err(|e| bad(format!("{e}")))?;
        let fingerprint = apache_avro::Schema::parse_str(parsed.canonical())
            .map_err(|e| bad(e.to_string()))?
            .canonical_form();
        Ok(Local {
            name: parsed
                .full_name()
                .unwrap_or(std::any::type_name::<E>())
                .into(),
            parsed,
            fast,
            program,
            size_hint: AtomicUsize::new(128),
            fingerprint,
        })
    }
}

/// How to decode a given writer id into a given reader type.
struct Plan {
    local: Arc<Local>,
    /// `None`: same binary layout, decode directly. `Some`: another version, resolve from
    /// this writer schema first.
    writer: Option<Arc<Schema>>,
}

impl Plan {
    fn decode<E: Event>(&self, id: u32, body: &[u8]) -> Result<E, CodecError> {
        match &self.writer {
            None => decode_direct(&self.local, id, body),
            Some(writer) => {
                let resolved = crate::avro::resolve::transcode(writer, &self.local.parsed, body)
                    .map_err(|e| CodecError::Decode {
                        id,
                        reason: e.to_string(),
                    })?;
                decode_direct(&self.local, id, &resolved)
            }
        }
    }
}

/// Buffers start no larger than this, however large an event once was.
const MAX_SIZE_HINT: usize = 64 * 1024;

fn encode_local<E: Event>(local: &Local, id: u32, event: &E) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(local.size_hint.load(Ordering::Relaxed));
    write_header(&mut out, id);
    // The compiled encoder writes the same bytes as serde_avro_fast at a fraction of the cost;
    // what it does not write itself (and every error) is left to serde_avro_fast.
    if let Some(program) = &local.program {
        if program.encode(event, &mut out).is_ok() {
            if out.len() > local.size_hint.load(Ordering::Relaxed) {
                local
                    .size_hint
                    .store(out.len().min(MAX_SIZE_HINT), Ordering::Relaxed);
            }
            return Ok(out);
        }
        out.truncate(HEADER_LEN);
    }
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&local.fast);
    serde_avro_fast::to_datum(event, out, &mut config).map_err(|e| CodecError::Encode {
        record: local.name.to_string(),
        reason: e.to_string(),
    })
}

/// A hasher for the codec's small integer keys (type ids, schema ids): SipHash's protection
/// against chosen keys buys nothing here and costs a third of a cached decode.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A cache shared by clones of the codec.
type Cache<K, V> = Arc<RwLock<HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>>>;

/// Encodes and decodes typed events, with the registry's ids. Cloning shares every cache.
#[derive(Clone)]
pub struct Codec {
    registry: Client,
    locals: Cache<TypeId, Arc<Local>>,
    /// Per type, the id by topic (foldhash: the topic is hashed on every encode).
    writer_ids: Cache<TypeId, HashMap<String, u32, foldhash::fast::RandomState>>,
    plans: Cache<(TypeId, u32), Arc<Plan>>,
    generic: Cache<u32, Arc<(Option<String>, serde_avro_fast::Schema)>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry.url())
            .finish()
    }
}

impl Codec {
    /// A codec using the given registry.
    pub fn new(registry: Client) -> Self {
        Codec {
            registry,
            locals: Arc::default(),
            writer_ids: Arc::default(),
            plans: Arc::default(),
            generic: Arc::default(),
        }
    }

    /// The registry client.
    pub fn registry(&self) -> &Client {
        &self.registry
    }

    fn local<E: Event>(&self) -> Result<Arc<Local>, CodecError> {
        if let Some(local) = read(&self.locals).get(&TypeId::of::<E>()) {
            return Ok(local.clone());
        }
        self.build_local::<E>()
    }

    #[cold]
    fn build_local<E: Event>(&self) -> Result<Arc<Local>, CodecError> {
        let local = Arc::new(Local::build::<E>()?);
        write(&self.locals).insert(TypeId::of::<E>(), local.clone());
        Ok(local)
    }

    /// The record full name of `E`, from its schema.
    ///
    /// # Errors
    ///
    /// [`CodecError::BadSchema`] when `E::SCHEMA` is invalid.
    pub fn record_name<E: Event>(&self) -> Result<Arc<str>, CodecError> {
        Ok(self.local::<E>()?.name.clone())
    }

    /// The schema id events of type `E` carry on `topic`, registering the schema under the
    /// subject `<topic>-<record>` on first use.
    ///
    /// # Errors
    ///
    /// [`CodecError::Registry`] when the registry is down or refuses the schema.
    pub async fn writer_id<E: Event>(&self, topic: &str) -> Result<u32, CodecError> {
        if let Some(id) = self.known_writer_id::<E>(topic) {
            return Ok(id);
        }
        let local = self.local::<E>()?;
        let subject = subject_name(topic, &local.name);
        let id = self
            .registry
            .register(&subject, &local.parsed)
            .await
            .map_err(CodecError::Registry)?;
        write(&self.writer_ids)
            .entry(TypeId::of::<E>())
            .or_default()
            .insert(topic.to_owned(), id);
        Ok(id)
    }

    /// The writer id of `E` on `topic` if it is registered already. Looked up by borrowed
    /// topic: the hot path allocates nothing.
    fn known_writer_id<E: Event>(&self, topic: &str) -> Option<u32> {
        read(&self.writer_ids)
            .get(&TypeId::of::<E>())
            .and_then(|by_topic| by_topic.get(topic))
            .copied()
    }

    /// Encodes without waiting when `E`'s schema is registered for `topic` already (after
    /// warm-up, every event): no future, no registry. `None` when it must be registered first,
    /// which [`Codec::encode`] does.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the value does not fit its schema.
    pub fn encode_known<E: Event>(
        &self,
        topic: &str,
        event: &E,
    ) -> Option<Result<Vec<u8>, CodecError>> {
        let id = self.known_writer_id::<E>(topic)?;
        Some(self.encode_with_id(id, event))
    }

    /// Encodes an event for `topic` in the Confluent wire format.
    ///
    /// # Errors
    ///
    /// [`CodecError::Registry`] on first use when the registry cannot register the schema;
    /// [`CodecError::Encode`] when the value does not fit its schema.
    pub async fn encode<E: Event>(&self, topic: &str, event: &E) -> Result<Vec<u8>, CodecError> {
        let id = self.writer_id::<E>(topic).await?;
        self.encode_with_id(id, event)
    }

    /// Encodes with a known writer id (from [`Codec::writer_id`]); never calls the registry.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when the value does not fit its schema.
    pub fn encode_with_id<E: Event>(&self, id: u32, event: &E) -> Result<Vec<u8>, CodecError> {
        {
            // The read guard is held while encoding instead of cloning the entry's Arc.
            let locals = read(&self.locals);
            if let Some(local) = locals.get(&TypeId::of::<E>()) {
                return encode_local(local, id, event);
            }
        }
        encode_local(&*self.build_local::<E>()?, id, event)
    }

    /// Decodes a payload written with any registered version into `E`.
    ///
    /// # Errors
    ///
    /// [`CodecError::Short`], [`CodecError::Magic`], [`CodecError::UnknownSchema`] and
    /// [`CodecError::Decode`] for bad bytes (poison: never retry), [`CodecError::Registry`]
    /// when the registry is unreachable (retry).
    pub async fn decode<E: Event>(&self, payload: &[u8]) -> Result<E, CodecError> {
        if let Some(decoded) = self.decode_known::<E>(payload) {
            return decoded;
        }
        let (id, body) = split(payload)?;
        // Boxed: the registry call's state is large, and unboxed it would make every decode's
        // future that large, to be moved on each call even when the cache answers.
        Box::pin(self.decode_uncached::<E>(id, body)).await
    }

    /// Decodes without waiting when the payload's writer id is already known for `E` (after
    /// warm-up, every payload): no future, no registry. `None` when the registry must be asked
    /// first, which [`Codec::decode`] does.
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`], less [`CodecError::Registry`] and [`CodecError::UnknownSchema`].
    pub fn decode_known<E: Event>(&self, payload: &[u8]) -> Option<Result<E, CodecError>> {
        match split(payload) {
            Ok((id, body)) => self.decode_cached::<E>(id, body),
            Err(e) => Some(Err(e)),
        }
    }

    async fn decode_uncached<E: Event>(&self, id: u32, body: &[u8]) -> Result<E, CodecError> {
        let local = self.local::<E>()?;
        let plan = self.plan::<E>(id, &local).await?;
        plan.decode(id, body)
    }

    /// Encodes a JSON value with a schema registered for `topic` (for command-line producers
    /// and other programs without Rust types): objects are records, strings are enum symbols
    /// and decimals, `null` picks a union's null branch.
    ///
    /// # Errors
    ///
    /// [`CodecError::Registry`] when the schema cannot be registered, [`CodecError::Encode`]
    /// when the value does not fit it.
    pub async fn encode_json(
        &self,
        topic: &str,
        schema: &Schema,
        value: &serde_json::Value,
    ) -> Result<Vec<u8>, CodecError> {
        let record = schema.full_name().unwrap_or("schema").to_owned();
        let id = self
            .registry
            .register(&subject_name(topic, &record), schema)
            .await
            .map_err(CodecError::Registry)?;
        let fast: serde_avro_fast::Schema =
            schema
                .canonical()
                .parse()
                .map_err(|e| CodecError::BadSchema {
                    record: record.clone(),
                    reason: format!("{e}"),
                })?;
        let mut out = Vec::with_capacity(128);
        write_header(&mut out, id);
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&fast);
        serde_avro_fast::to_datum(value, out, &mut config).map_err(|e| CodecError::Encode {
            record,
            reason: e.to_string(),
        })
    }

    /// Decodes any payload into JSON with its writer's schema: returns the schema id, the
    /// record's full name and the value.
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`].
    pub async fn decode_json(
        &self,
        payload: &[u8],
    ) -> Result<(u32, Option<String>, serde_json::Value), CodecError> {
        let (id, body) = split(payload)?;
        let entry = self.writer(id).await?;
        let value =
            serde_avro_fast::from_datum_slice(body, &entry.1).map_err(|e| CodecError::Decode {
                id,
                reason: e.to_string(),
            })?;
        Ok((id, entry.0.clone(), value))
    }

    /// The full name of the record a payload was written with, from its schema id: what a
    /// record from a producer that sets no `event_type` header is.
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`]; [`CodecError::Decode`] when the writer's schema names no record.
    pub async fn writer_name(&self, payload: &[u8]) -> Result<String, CodecError> {
        let (id, _) = split(payload)?;
        self.writer(id)
            .await?
            .0
            .clone()
            .ok_or_else(|| CodecError::Decode {
                id,
                reason: "the writer's schema is not a named record".into(),
            })
    }

    /// The writer's schema of `id` for generic decoding, and its full name: from the cache,
    /// else from the registry.
    async fn writer(
        &self,
        id: u32,
    ) -> Result<Arc<(Option<String>, serde_avro_fast::Schema)>, CodecError> {
        if let Some(entry) = read(&self.generic).get(&id).cloned() {
            return Ok(entry);
        }
        let writer = match self.registry.schema(id).await {
            Ok(writer) => writer,
            Err(crate::Error::Registry { code: 40403, .. }) => {
                return Err(CodecError::UnknownSchema { id });
            }
            Err(e) => return Err(CodecError::Registry(e)),
        };
        let fast: serde_avro_fast::Schema =
            writer.canonical().parse().map_err(|e| CodecError::Decode {
                id,
                reason: format!("the registry's schema is unusable: {e}"),
            })?;
        let entry = Arc::new((writer.full_name().map(str::to_owned), fast));
        write(&self.generic).insert(id, entry.clone());
        Ok(entry)
    }

    /// The hot path: one lookup, no await, no registry.
    fn decode_cached<E: Event>(&self, id: u32, body: &[u8]) -> Option<Result<E, CodecError>> {
        let plans = read(&self.plans);
        plans
            .get(&(TypeId::of::<E>(), id))
            .map(|plan| plan.decode(id, body))
    }

    async fn plan<E: Event>(&self, id: u32, local: &Arc<Local>) -> Result<Arc<Plan>, CodecError> {
        let key = (TypeId::of::<E>(), id);
        if let Some(plan) = read(&self.plans).get(&key) {
            return Ok(plan.clone());
        }
        let writer = match self.registry.schema(id).await {
            Ok(writer) => writer,
            Err(crate::Error::Registry { code: 40403, .. }) => {
                return Err(CodecError::UnknownSchema { id });
            }
            Err(crate::Error::Schema(e)) => {
                return Err(CodecError::Decode {
                    id,
                    reason: format!("the registry's schema is unusable: {e}"),
                });
            }
            Err(e) => return Err(CodecError::Registry(e)),
        };
        let fingerprint = apache_avro::Schema::parse_str(writer.canonical())
            .map_err(|e| CodecError::Decode {
                id,
                reason: format!("the registry's schema is unusable: {e}"),
            })?
            .canonical_form();
        // The same Parsing Canonical Form means the same binary layout.
        let plan = Arc::new(Plan {
            local: local.clone(),
            writer: (fingerprint != local.fingerprint).then_some(writer),
        });
        write(&self.plans).insert(key, plan.clone());
        Ok(plan)
    }
}

fn decode_direct<E: Event>(local: &Local, id: u32, body: &[u8]) -> Result<E, CodecError> {
    let decoded = match &local.program {
        Some(program) => program.decode::<E>(body).map_err(|e| e.to_string()),
        None => {
            serde_avro_fast::from_datum_slice::<E>(body, &local.fast).map_err(|e| e.to_string())
        }
    };
    decoded.map_err(|reason| CodecError::Decode { id, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rejects_short_and_foreign_payloads_without_panicking() {
        assert!(matches!(split(&[]), Err(CodecError::Short { len: 0 })));
        assert!(matches!(
            split(&[0, 0, 0, 1]),
            Err(CodecError::Short { len: 4 })
        ));
        assert!(matches!(
            split(b"{\"json\": true}"),
            Err(CodecError::Magic { found: b'{' })
        ));
        assert_eq!(split(&[0, 0, 0, 1, 2, 9]).ok(), Some((258, &[9u8][..])));
        assert_eq!(split(&[0, 0, 0, 0, 7]).ok(), Some((7, &[][..])));
    }

    #[test]
    fn the_header_is_the_magic_byte_and_a_big_endian_id() {
        let mut out = Vec::new();
        write_header(&mut out, 0x0102_0304);
        assert_eq!(out, [0, 1, 2, 3, 4]);
    }
}
