//! The `_schemas` log: proposing commands, and applying the log in order to the state.
//!
//! A write is answered only once this instance has read it back from the log and applied it,
//! so the answer is exactly what every other instance computes for the same record. Delivery:
//! a proposal is produced at least once (idempotent producer); applying is deterministic, so
//! a command that reached the log is applied by every instance exactly once per replay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::Error;
use crate::error::ApiError;
use crate::state::{Command, State};

/// How long a proposer waits for the broker's ack and then for the record to come back.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    request: String,
    command: Command,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, ApiError>>>>>;

/// The writing half: proposes commands and waits for their outcome.
pub struct Log {
    producer: FutureProducer,
    topic: String,
    waiters: Waiters,
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
                apply(&state, &waiters, message.payload(), message.offset());
                applied += 1;
                if message.offset() >= high - 1 {
                    break;
                }
            }
        }
        tracing::info!(topic, applied, "Schema log replayed");
        let tail = tokio::spawn(tail(consumer, state, waiters.clone(), stop));
        Ok((
            Log {
                producer,
                topic: topic.to_owned(),
                waiters,
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
        let request = uuid::Uuid::new_v4().to_string();
        let payload = serde_json::to_string(&Envelope {
            request: request.clone(),
            command,
        })
        .map_err(ApiError::store)?;
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(request.clone(), sender);
        let record = FutureRecord::to(&self.topic)
            .key(&request)
            .payload(&payload);
        if let Err((e, _)) = self.producer.send(record, PROPOSAL_TIMEOUT).await {
            lock(&self.waiters).remove(&request);
            return Err(ApiError::store(format!(
                "cannot write to {}: {e}",
                self.topic
            )));
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
    state: Arc<RwLock<State>>,
    waiters: Waiters,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            // Bounded and asked again: a wake-up the async consumer misses must not stall writes.
            message = tokio::time::timeout(Duration::from_millis(250), consumer.recv()) => match message {
                Err(_) => {}
                Ok(Ok(message)) => apply(&state, &waiters, message.payload(), message.offset()),
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
    let outcome = state
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .apply(&envelope.command);
    tracing::debug!(offset, request = %envelope.request, ok = outcome.is_ok(), "Applied a schema log record");
    if let Some(waiter) = lock(waiters).remove(&envelope.request) {
        let _ = waiter.send(outcome);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map holds only senders; a panic elsewhere cannot leave it half-updated.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
