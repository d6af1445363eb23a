//! The `_schemas` log: proposing commands, and applying the log in order to the state.
//!
//! A write is answered only once this instance has read it back from the log and applied it,
//! so the answer is exactly what every other instance computes for the same record. Delivery:
//! a proposal is produced at least once (idempotent producer); applying is deterministic, so
//! a command that reached the log is applied by every instance exactly once per replay.
//!
//! Records are applied on tokio's blocking pool: parsing and checking a large schema is CPU
//! work, and on the async workers it would hold up every request, reads included. A record
//! proposed here reuses the schema its HTTP handler parsed, and a schema known by its text is
//! not parsed again, so neither a write nor a replay pays the parse twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use streams::avro::schema::Schema;
use streams::kafka::idle::{self, Quiet};
use tokio::sync::{oneshot, watch};

use crate::Error;
use crate::error::ApiError;
use crate::state::{Command, State};

/// How long a proposer waits for the broker's ack and then for the record to come back.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest record the registry writes to its log, key and framing included: librdkafka's
/// default `message.max.bytes`, set on the producer so that this check and the producer agree.
/// Kafka's default topic limit (`max.message.bytes`, 1,048,588 bytes) is above it.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// What librdkafka adds to a record's key and payload when it sizes it against
/// [`MAX_RECORD_BYTES`] (record batch and record headers, well under this).
const RECORD_FRAMING_BYTES: usize = 1_024;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    request: String,
    command: Command,
}

/// A proposer waiting for its record to come back, with the schema it already parsed.
struct Waiter {
    answer: oneshot::Sender<Result<Value, ApiError>>,
    schema: Option<Arc<Schema>>,
}

type Waiters = Arc<Mutex<HashMap<String, Waiter>>>;

/// The writing half: proposes commands and waits for their outcome.
pub struct Log {
    producer: FutureProducer,
    topic: String,
    waiters: Waiters,
    /// Whether the broker runs in this process, whose idle readers a write wakes
    /// (`streams::kafka::idle`).
    local: bool,
}

impl Log {
    /// Connects to the log, replays it into `state` up to its current end, and starts tailing.
    ///
    /// Returns once the replay is complete, so a registry never serves a partial state.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the broker cannot be reached or the topic does not exist.
    pub async fn open(
        bootstrap: &str,
        topic: &str,
        state: Arc<RwLock<State>>,
        stop: watch::Receiver<bool>,
    ) -> Result<(Log, tokio::task::JoinHandle<()>), Error> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
            .create()
            .map_err(|e| Error::kafka("creating the registry's producer", e))?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // librdkafka's assign() needs a group handle, but this reader never joins the
            // group nor commits: it always replays from the beginning.
            .set(
                "group.id",
                format!("tripstream-registry-reader-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Writes wait for their own record to come back: keep the fetch short.
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(|e| Error::kafka("creating the registry's log reader", e))?;
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(30))
            .map_err(|e| Error::kafka(format!("reading the end of {topic}"), e))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
        let waiters: Waiters = Arc::default();
        let mut applied = 0u64;
        if high > low {
            tracing::info!(topic, records = high - low, "Replaying the schema log");
            loop {
                let message = tokio::time::timeout(PROPOSAL_TIMEOUT, consumer.recv())
                    .await
                    .map_err(|_| {
                        Error::Timeout(format!("replaying {topic}: no record arrived for 30 s"))
                    })?
                    .map_err(|e| Error::kafka(format!("replaying {topic}"), e))?;
                let (payload, offset) = (message.payload().map(<[u8]>::to_vec), message.offset());
                drop(message);
                apply_off_workers(&state, &waiters, payload, offset).await;
                applied += 1;
                if offset >= high - 1 {
                    break;
                }
            }
        }
        tracing::info!(topic, applied, "Schema log replayed");
        let quiet = Quiet::new(bootstrap);
        let tail = tokio::spawn(tail(consumer, quiet, state, waiters.clone(), stop));
        Ok((
            Log {
                producer,
                topic: topic.to_owned(),
                waiters,
                local: idle::is_local(bootstrap),
            },
            tail,
        ))
    }

    /// Appends a command to the log and returns its outcome once applied here.
    ///
    /// # Errors
    ///
    /// The command's own refusal (e.g. 409), or 50001/50002 when the log cannot be written
    /// or the record does not come back in time.
    pub async fn propose(&self, command: Command) -> Result<Value, ApiError> {
        self.propose_with(command, None).await
    }

    /// Proposes registering `schema` under `subject`; the applier here uses this parse of it.
    ///
    /// # Errors
    ///
    /// As [`Log::propose`]; 42209 when the schema is too large for a record of the log.
    pub async fn register(&self, subject: String, schema: Arc<Schema>) -> Result<Value, ApiError> {
        let command = Command::Register {
            subject,
            schema: schema.canonical().to_owned(),
        };
        self.propose_with(command, Some(schema)).await
    }

    async fn propose_with(
        &self,
        command: Command,
        schema: Option<Arc<Schema>>,
    ) -> Result<Value, ApiError> {
        let request = uuid::Uuid::new_v4().to_string();
        let payload = serde_json::to_string(&Envelope {
            request: request.clone(),
            command,
        })
        .map_err(ApiError::store)?;
        // Refused here with the reason, rather than by the producer as a store error.
        let size = request.len() + payload.len();
        if size + RECORD_FRAMING_BYTES > MAX_RECORD_BYTES {
            return Err(ApiError::schema_too_large(format!(
                "as a record of {} it takes {size} bytes, and the log holds records of at most {} bytes",
                self.topic,
                MAX_RECORD_BYTES - RECORD_FRAMING_BYTES
            )));
        }
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(
            request.clone(),
            Waiter {
                answer: sender,
                schema,
            },
        );
        let record = FutureRecord::to(&self.topic)
            .key(&request)
            .payload(&payload);
        if let Err((e, _)) = self.producer.send(record, PROPOSAL_TIMEOUT).await {
            lock(&self.waiters).remove(&request);
            // A broker whose topic limit is below ours refuses the record itself.
            if let KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) = e {
                return Err(ApiError::schema_too_large(format!(
                    "the broker refused its record in {} as too large",
                    self.topic
                )));
            }
            return Err(ApiError::store(format!(
                "cannot write to {}: {e}",
                self.topic
            )));
        }
        if self.local {
            idle::wrote();
        }
        match tokio::time::timeout(PROPOSAL_TIMEOUT, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::store("the registry is shutting down")),
            Err(_) => {
                lock(&self.waiters).remove(&request);
                Err(ApiError::timeout(format!(
                    "the write reached {} but was not read back within {} s; it will still take effect",
                    self.topic,
                    PROPOSAL_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

async fn tail(
    consumer: StreamConsumer,
    mut quiet: Quiet,
    state: Arc<RwLock<State>>,
    waiters: Waiters,
    mut stop: watch::Receiver<bool>,
) {
    let mut paused = false;
    loop {
        // Idle on an embedded broker of this process: stop fetching until a write here (this
        // registry's own, for one) or a look for other processes' writes.
        let idle = quiet.is_idle();
        if idle != paused {
            idle::set_paused(&consumer, idle);
            paused = idle;
        }
        // Bounded and asked again: a wake-up the async consumer misses must not stall writes.
        // Idle, the wait for a write or a look ends first.
        let recv_for = if idle {
            idle::LOOK_EVERY * 2
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = stop.changed() => break,
            () = quiet.wait(), if idle => {}
            message = tokio::time::timeout(recv_for, consumer.recv()) => match message {
                Err(_) => {}
                Ok(Ok(message)) => {
                    quiet.heard();
                    let (payload, offset) = (message.payload().map(<[u8]>::to_vec), message.offset());
                    drop(message);
                    apply_off_workers(&state, &waiters, payload, offset).await;
                }
                // librdkafka reconnects by itself; the error is worth a line, not a stop.
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Reading the schema log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    // Wake every waiting proposer with an error rather than leaving it to time out.
    lock(&waiters).clear();
}

/// Applies one record on the blocking pool (see the module's notes).
async fn apply_off_workers(
    state: &Arc<RwLock<State>>,
    waiters: &Waiters,
    payload: Option<Vec<u8>>,
    offset: i64,
) {
    let (state, waiters) = (state.clone(), waiters.clone());
    let applied =
        tokio::task::spawn_blocking(move || apply(&state, &waiters, payload.as_deref(), offset));
    if let Err(error) = applied.await {
        // `apply` does not panic on any record; a failure here is the runtime shutting down.
        tracing::error!(offset, %error, "Applying a record of the schema log did not finish");
    }
}

fn apply(state: &RwLock<State>, waiters: &Waiters, payload: Option<&[u8]>, offset: i64) {
    let envelope: Envelope = match payload.map(serde_json::from_slice) {
        Some(Ok(envelope)) => envelope,
        // Skipped identically by every instance, so the state stays the same everywhere.
        Some(Err(error)) => {
            tracing::warn!(offset, %error, "Skipping a record of the schema log that is not a registry command");
            return;
        }
        None => return,
    };
    let waiter = lock(waiters).remove(&envelope.request);
    let parsed = waiter.as_ref().and_then(|w| w.schema.clone());
    // The costly part under the read lock, which readers share; the write lock only for the
    // change. This applier is the only writer, so nothing changes in between.
    let prepared = state
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .prepare(envelope.command, parsed);
    let outcome = state
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .commit(prepared);
    tracing::debug!(offset, request = %envelope.request, ok = outcome.is_ok(), "Applied a schema log record");
    if let Some(waiter) = waiter {
        let _ = waiter.answer.send(outcome);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map holds only senders; a panic elsewhere cannot leave it half-updated.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
