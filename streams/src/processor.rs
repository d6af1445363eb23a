//! The consumer-group runner a service plugs its handler into.
//!
//! Delivery guarantee: **effects effectively-once, outputs at-least-once with consumer-side
//! dedupe.** For each record, the handler's changes to the service's sled state, the record's
//! offset, its event-id dedupe mark and the events it emits (the outbox) are written in one
//! sled transaction. On assignment the processor starts each partition at the offset stored in
//! sled, not at Kafka's committed offset, so a crash between the sled commit and the Kafka
//! commit replays nothing. A relay publishes the outbox and clears each entry after the broker
//! acked it; a crash between the two publishes the entry again with the same event id, which
//! consumers skip. Kafka offsets are committed too (periodically, on revocation and on
//! shutdown), but only for tools that show lag: correctness rests on sled.
//!
//! Workers of one group may share a store. The transaction then commits only if nobody applied
//! the record yet and every state key the handler read is unchanged; otherwise the handler runs
//! again on fresh state (see [`Store::commit`]), so concurrent read-modify-writes lose nothing.
//!
//! Poison records (undecodable, unknown schema id, rejected by the handler as invalid) go to
//! the topic's dead-letter topic with the reason in headers, and processing goes on. Retriable
//! failures (broker or registry down) are retried with backoff and never skip a record.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::codec::{Codec, CodecError, Event};
use crate::error::{Error, Result};
use crate::producer::{self, Delivery, Metadata, Producer};
use crate::store::{Batch, Committed, Effects, OutboxEntry, Position, Reads, Store};

/// How long one receive waits before it is asked again (see the run loop).
pub(crate) const RECV_RETRY: Duration = Duration::from_millis(20);

/// How often librdkafka reports statistics, which carry each partition's high watermark (for
/// lag) without a request on the record path.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// Headers a dead letter carries besides the original record's own.
pub mod dead_letter {
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
}

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

/// A consumed record, as a handler sees it.
#[derive(Debug)]
pub struct Record<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value (Confluent-framed Avro).
    pub payload: &'a [u8],
    /// Metadata from headers, when the producer set them.
    pub metadata: Option<&'a Metadata>,
}

impl<'a> Record<'a> {
    fn at(
        at: &Position<'a>,
        message: &'a impl Message,
        payload: &'a [u8],
        metadata: Option<&'a Metadata>,
    ) -> Self {
        Record {
            topic: at.topic,
            partition: at.partition,
            offset: at.offset,
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
    /// Earlier records not yet committed (a replay's batch).
    overlay: Option<&'a Batch>,
    codec: &'a Codec,
    cause: &'a Metadata,
    effects: Effects,
    /// What the handler read from the store, checked again at commit (live records only: a
    /// replay has the store to itself). A lock, not a `RefCell`, so handlers may hold
    /// `&Context` across an await on a multi-threaded runtime.
    reads: Mutex<Reads>,
    record_reads: bool,
}

impl<'a> Context<'a> {
    fn new(
        group: &'a str,
        store: &'a Store,
        overlay: Option<&'a Batch>,
        codec: &'a Codec,
        cause: &'a Metadata,
        record_reads: bool,
    ) -> Self {
        Context {
            group,
            store,
            overlay,
            codec,
            cause,
            effects: Effects::default(),
            reads: Mutex::new(Vec::new()),
            record_reads,
        }
    }

    /// The record's effects, conditional on what it read.
    fn finish(self) -> Effects {
        let mut effects = self.effects;
        let reads = self
            .reads
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, value) in reads {
            effects.expect(key, value);
        }
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

    /// Reads a business-state key, seeing this record's own writes.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Store`] on an I/O failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, HandlerError> {
        let pending = self
            .effects
            .pending(key)
            .or_else(|| self.overlay.and_then(|o| o.pending(key)));
        match pending {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => {
                let value = self.store.get(key)?;
                if self.record_reads {
                    crate::sync::lock(&self.reads).push((key.to_vec(), value.clone()));
                }
                Ok(value)
            }
        }
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
        self.get(key.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    HandlerError::Store(Error::Store(format!("state {key} is unreadable: {e}")))
                })
            })
            .transpose()
    }

    /// Sets a business-state key to `value` as JSON: readable with `tripstream` tools and
    /// stable across runs, so digests of replayed stores match.
    pub fn put_json<T: serde::Serialize>(&mut self, key: &str, value: &T) {
        // Serializing plain data types into a Vec cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.effects.put(key.as_bytes().to_vec(), bytes);
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
        let metadata = Metadata::derived_from(self.cause, self.group, self.effects.emitted().len());
        let entry = producer::record(self.codec, topic, event, &metadata).await?;
        self.effects.emit(entry);
        Ok(())
    }
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

/// How a processor connects and what it reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Consumer group: processors with the same group share the partitions.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Dead-letter topic of each consumed topic (from the topic specs).
    pub dead_letters: HashMap<String, String>,
    /// Raw librdkafka consumer settings, applied last.
    pub consumer: Vec<(String, String)>,
    /// How often Kafka offsets are committed (for lag tools; sled holds the truth).
    pub commit_interval: Duration,
}

impl Settings {
    /// Settings with defaults: commit every second, `<topic>.dlq` dead letters.
    pub fn new(bootstrap: impl Into<String>, group: impl Into<String>, topics: &[&str]) -> Self {
        Settings {
            bootstrap: bootstrap.into(),
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            dead_letters: topics
                .iter()
                .map(|t| ((*t).to_owned(), format!("{t}.dlq")))
                .collect(),
            consumer: Vec::new(),
            commit_interval: Duration::from_secs(1),
        }
    }
}

/// Where a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The next offset this processor will apply.
    pub next: i64,
    /// The partition's high watermark when last read.
    pub high_watermark: i64,
}

impl PartitionPosition {
    /// Records not yet applied.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.next).max(0)
    }
}

/// Per-partition positions of a running processor, for metrics and tests: the partitions it
/// holds (from assignment on) and, once records flow, how far it is.
#[derive(Debug, Clone, Default)]
pub struct Positions(Arc<Mutex<BTreeMap<(String, i32), PartitionPosition>>>);

impl Positions {
    /// A snapshot: (topic, partition) → position.
    pub fn snapshot(&self) -> BTreeMap<(String, i32), PartitionPosition> {
        crate::sync::lock(&self.0).clone()
    }

    fn set(&self, topic: &str, partition: i32, position: PartitionPosition) {
        crate::sync::lock(&self.0).insert((topic.to_owned(), partition), position);
    }

    fn remove(&self, topic: &str, partition: i32) {
        crate::sync::lock(&self.0).remove(&(topic.to_owned(), partition));
    }
}

/// Starts partitions at sled's offsets and commits sled's offsets to Kafka before giving
/// partitions up.
struct ProcessorContext {
    store: Store,
    group: String,
    positions: Positions,
    /// High watermarks from the last statistics report, by (topic, partition).
    watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// Partitions revoked so far: the poll loop checks it to drop records it holds for
    /// partitions it no longer owns.
    revocations: Arc<AtomicU64>,
}

impl ClientContext for ProcessorContext {
    /// Keeps only the high watermark of each partition; the full statistics are large and their
    /// typed form fails on fields the mock cluster leaves out.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(topics) = stats.get("topics").and_then(serde_json::Value::as_object) else {
            return;
        };
        let mut watermarks = crate::sync::lock(&self.watermarks);
        for (topic, t) in topics {
            let Some(partitions) = t.get("partitions").and_then(serde_json::Value::as_object)
            else {
                continue;
            };
            for (partition, p) in partitions {
                let partition = partition.parse::<i32>().unwrap_or(-1);
                let high = p.get("hi_offset").and_then(serde_json::Value::as_i64);
                // Partition -1 is librdkafka's internal "unassigned" queue; -1001 means unknown.
                if let Some(high) = high.filter(|h| *h >= 0)
                    && partition >= 0
                {
                    watermarks.insert((topic.clone(), partition), high);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for (topic, partition) in partitions {
                    match self.store.next_offset(&self.group, &topic, partition) {
                        Ok(stored) => {
                            if let Some(next) = stored {
                                let _ = tpl.set_partition_offset(
                                    &topic,
                                    partition,
                                    Offset::Offset(next),
                                );
                            }
                            let next = stored.unwrap_or(0);
                            let position = PartitionPosition {
                                next,
                                high_watermark: next,
                            };
                            self.positions.set(&topic, partition, position);
                        }
                        Err(error) => {
                            tracing::error!(%error, topic, partition, "Cannot read the stored offset")
                        }
                    }
                }
                tracing::info!(group = %self.group, partitions = tpl.count(), "Partitions assigned");
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(error) = assigned {
                    tracing::error!(%error, "Assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revocations.fetch_add(1, Ordering::SeqCst);
                // Records are processed one at a time inside the poll loop, so nothing is in
                // flight here: sled already holds every applied offset.
                commit_from_store(
                    consumer,
                    &self.store,
                    &self.group,
                    Some(tpl),
                    CommitMode::Sync,
                );
                for element in tpl.elements() {
                    self.positions.remove(element.topic(), element.partition());
                }
                tracing::info!(group = %self.group, partitions = tpl.count(), "Partitions revoked");
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = unassigned {
                    tracing::error!(%error, "Unassigning partitions failed");
                }
            }
            other => tracing::warn!(error = ?other, "Rebalance error"),
        }
    }
}

fn commit_from_store<C: Consumer<ProcessorContext>>(
    consumer: &C,
    store: &Store,
    group: &str,
    only: Option<&TopicPartitionList>,
    mode: CommitMode,
) {
    let Ok(offsets) = store.offsets(group) else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        let wanted = only.is_none_or(|only| only.find_partition(&topic, partition).is_some());
        if wanted {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
    }
    if tpl.count() > 0
        && let Err(error) = consumer.commit(&tpl, mode)
    {
        tracing::debug!(%error, "Committing offsets to Kafka failed; sled keeps them");
    }
}

/// Why one attempt at a record failed.
pub(crate) enum Failure {
    /// Retry the same record later.
    Retry(String),
    /// Dead-letter it with this kind and reason.
    Poison(&'static str, String),
}

/// A running processor's handles.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Positions and lag per partition.
    pub positions: Positions,
}

/// Runs `handler` over `settings.topics` until `shutdown` completes, with the relay that
/// publishes its outbox. On shutdown it finishes the current record, publishes what the outbox
/// holds (for up to 5 s), commits offsets to Kafka synchronously and returns.
///
/// # Errors
///
/// [`Error::Kafka`] when the consumer cannot be created or subscribed.
pub async fn run<H: Handler>(
    settings: Settings,
    store: Store,
    codec: Codec,
    handler: H,
    positions: Positions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Members joining or leaving move only the partitions that change owner; the others
        // keep flowing through a rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    let watermarks = Arc::new(Mutex::new(HashMap::new()));
    let revocations = Arc::new(AtomicU64::new(0));
    let consumer: StreamConsumer<ProcessorContext> = config
        .create_with_context(ProcessorContext {
            store: store.clone(),
            group: settings.group.clone(),
            positions: positions.clone(),
            watermarks: watermarks.clone(),
            revocations: revocations.clone(),
        })
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| Error::kafka(format!("subscribing to {}", topics.join(", ")), e))?;
    let producer = Producer::new(&settings.bootstrap, codec.clone(), &[])?;

    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(relay(store.clone(), producer.clone(), relay_stopped));

    tokio::pin!(shutdown);
    let mut last_commit = Instant::now();
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            // Bounded, then asked again: a wake-up from librdkafka that the async consumer misses
            // (seen after rebalances on a busy machine) costs at most this long, never a stall.
            message = tokio::time::timeout(RECV_RETRY, consumer.recv()) => match message {
                Ok(message) => message,
                Err(_) => continue,
            },
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "Consuming failed; librdkafka retries");
                continue;
            }
        };
        // Records already waiting are applied together, in one sled transaction (a
        // transaction costs ~40 µs here, most of a record's cost): under load the processor
        // catches up in batches, while a lone record is committed at once as before.
        let revoked_before = revocations.load(Ordering::SeqCst);
        let mut ready = vec![message];
        while ready.len() < LIVE_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => ready.push(message),
                _ => break,
            }
        }
        if revocations.load(Ordering::SeqCst) != revoked_before {
            // A rebalance ran inside one of those polls: records of partitions given up go
            // to their new owner, which starts at the offsets just committed.
            let held = positions.snapshot();
            ready.retain(|m| held.contains_key(&(m.topic().to_owned(), m.partition())));
            if ready.is_empty() {
                continue;
            }
        }
        let done = if ready.len() > 1 {
            process_ready(&settings.group, &store, &codec, &handler, &ready)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "Committing records together failed; one by one");
                    0
                })
        } else {
            0
        };
        for message in &ready[..done] {
            record_position(&positions, &watermarks, message);
        }
        for message in &ready[done..] {
            let mut backoff = Duration::from_millis(100);
            loop {
                match process(&settings.group, &store, &codec, &handler, message, None).await {
                    Ok(()) => break,
                    Err(Failure::Retry(reason)) => {
                        tracing::warn!(
                            reason,
                            topic = message.topic(),
                            partition = message.partition(),
                            offset = message.offset(),
                            "Retrying a record"
                        );
                        tokio::select! {
                            () = &mut shutdown => {
                                finish(&consumer, &store, &settings, stop_relay, relay).await;
                                return Ok(());
                            }
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(Failure::Poison(kind, reason)) => {
                        dead_letter(
                            &settings,
                            &store,
                            &producer,
                            message,
                            kind,
                            &reason,
                            &mut shutdown,
                        )
                        .await?;
                        break;
                    }
                }
            }
            record_position(&positions, &watermarks, message);
        }
        if last_commit.elapsed() >= settings.commit_interval {
            commit_from_store(&consumer, &store, &settings.group, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    finish(&consumer, &store, &settings, stop_relay, relay).await;
    Ok(())
}

/// Where `message` came from, as the store keys it.
fn position<'a>(group: &'a str, message: &'a impl Message) -> Position<'a> {
    Position {
        group,
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// Records waiting that a processor takes into one transaction at most.
const LIVE_BATCH: usize = 64;

/// Notes an applied record's position and the partition's lag.
fn record_position(
    positions: &Positions,
    watermarks: &Mutex<HashMap<(String, i32), i64>>,
    message: &impl Message,
) {
    let (topic, partition) = (message.topic(), message.partition());
    let high = crate::sync::lock(watermarks)
        .get(&(topic.to_owned(), partition))
        .copied()
        .unwrap_or(0);
    positions.set(
        topic,
        partition,
        PartitionPosition {
            next: message.offset() + 1,
            high_watermark: high.max(message.offset() + 1),
        },
    );
}

/// Applies the leading records of `ready` in one checked transaction and returns how many it
/// applied. It stops before the first record that needs the one-record path (a duplicate, one
/// below sled's offset, an empty one, a handler error) and returns 0 if the commit is refused
/// (another worker sharing the store got there first): the caller takes the rest one by one,
/// running their handlers again.
async fn process_ready<H: Handler>(
    group: &str,
    store: &Store,
    codec: &Codec,
    handler: &H,
    ready: &[BorrowedMessage<'_>],
) -> Result<usize> {
    let mut batch = Batch::default();
    let mut firsts: Vec<Position<'_>> = Vec::new();
    let mut reads: Reads = Vec::new();
    let mut taken = 0;
    for message in ready {
        let at = position(group, message);
        let first_of_partition = !firsts
            .iter()
            .any(|f| f.partition == at.partition && f.topic == at.topic);
        if first_of_partition
            && store
                .next_offset(group, at.topic, at.partition)?
                .is_some_and(|next| at.offset < next)
        {
            break;
        }
        let metadata = Metadata::from_headers(message.headers());
        let Some(cause) = metadata.as_ref() else {
            break;
        };
        let id = cause.event_id.as_bytes();
        let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
            break;
        };
        if batch.seen(id) || store.seen(id) {
            break;
        }
        let record = Record::at(&at, message, payload, metadata.as_ref());
        let mut ctx = Context::new(group, store, Some(&batch), codec, cause, true);
        let outcome = handler.handle(&mut ctx, &record).await;
        let effects = ctx.finish();
        if outcome.is_err() {
            break;
        }
        for (key, value) in &effects.reads {
            if !reads.iter().any(|(k, _)| k == key) {
                reads.push((key.clone(), value.clone()));
            }
        }
        if first_of_partition {
            firsts.push(at.clone());
        }
        batch.add(&at, Some(id), effects);
        taken += 1;
    }
    if taken == 0 {
        return Ok(0);
    }
    Ok(match store.commit_checked(&batch, &firsts, &reads)? {
        Committed::Applied => taken,
        Committed::AlreadyApplied | Committed::Stale => 0,
    })
}

async fn finish(
    consumer: &StreamConsumer<ProcessorContext>,
    store: &Store,
    settings: &Settings,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
) {
    stop_relay_within(stop_relay, relay, Duration::from_secs(5)).await;
    commit_from_store(consumer, store, &settings.group, None, CommitMode::Sync);
    let _ = store.flush();
    tracing::info!(group = %settings.group, "Processor stopped");
}

/// Applies one record: committed at once, or added to `batch` when one is given (the caller
/// then skips records below sled's offset itself).
pub(crate) async fn process<H: Handler, M: Message + Sync>(
    group: &str,
    store: &Store,
    codec: &Codec,
    handler: &H,
    message: &M,
    batch: Option<&mut Batch>,
) -> Result<(), Failure> {
    let at = position(group, message);
    let store_error = |e: Error| Failure::Retry(e.to_string());
    // Already applied (the partition restarted below sled's offset): nothing to do. A replay
    // (a batch) starts each partition at sled's offset itself and never goes back.
    if batch.is_none()
        && store
            .next_offset(at.group, at.topic, at.partition)
            .map_err(store_error)?
            .is_some_and(|next| at.offset < next)
    {
        return Ok(());
    }
    let metadata = Metadata::from_headers(message.headers());
    let id = metadata.as_ref().map(|m| m.event_id.as_bytes());
    if let Some(id) = id
        && (batch.as_ref().is_some_and(|b| b.seen(id)) || store.seen(id))
    {
        tracing::debug!(event_id = %String::from_utf8_lossy(id), "Skipping a duplicate event");
        return match batch {
            Some(batch) => {
                batch.add(&at, None, Effects::default());
                Ok(())
            }
            None => store
                .commit(&at, None, &Effects::default())
                .map(drop)
                .map_err(store_error),
        };
    }
    let Some(payload) = message.payload().filter(|p| !p.is_empty()) else {
        return Err(Failure::Poison("empty", "the record has no value".into()));
    };
    let record = Record::at(&at, message, payload, metadata.as_ref());
    let fallback;
    let cause = match &metadata {
        Some(metadata) => metadata,
        None => {
            // A record from a producer that sets no headers: its effects still get traceable
            // ids.
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            fallback = Metadata {
                event_id: format!("{}/{}/{}", at.topic, at.partition, at.offset),
                ..Metadata::new(key)
            };
            &fallback
        }
    };
    let Some(batch) = batch else {
        // Live: another worker sharing the store may write a key this handler read between
        // the read and the commit; the commit then refuses and the handler runs again on
        // fresh state (optimistic concurrency: workers rarely touch the same keys at once).
        loop {
            let mut ctx = Context::new(group, store, None, codec, cause, true);
            let outcome = handler.handle(&mut ctx, &record).await;
            let effects = ctx.finish();
            if let Err(e) = outcome {
                return Err(failure(e));
            }
            match store.commit(&at, id, &effects).map_err(store_error)? {
                Committed::Applied | Committed::AlreadyApplied => return Ok(()),
                Committed::Stale => {
                    tracing::debug!(
                        topic = at.topic,
                        partition = at.partition,
                        offset = at.offset,
                        "State changed under the handler; running it again"
                    );
                }
            }
        }
    };
    let mut ctx = Context::new(group, store, Some(batch), codec, cause, false);
    let outcome = handler.handle(&mut ctx, &record).await;
    let effects = ctx.finish();
    match outcome {
        Ok(()) => {
            batch.add(&at, id, effects);
            Ok(())
        }
        Err(e) => Err(failure(e)),
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

async fn dead_letter(
    settings: &Settings,
    store: &Store,
    producer: &Producer,
    message: &BorrowedMessage<'_>,
    kind: &'static str,
    reason: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<()> {
    let topic = message.topic();
    let dlq = settings
        .dead_letters
        .get(topic)
        .cloned()
        .unwrap_or_else(|| format!("{topic}.dlq"));
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
        (dead_letter::KIND.to_owned(), kind.as_bytes().to_vec()),
        (dead_letter::MESSAGE.to_owned(), reason.as_bytes().to_vec()),
        (dead_letter::TOPIC.to_owned(), topic.as_bytes().to_vec()),
        (
            dead_letter::PARTITION.to_owned(),
            message.partition().to_string().into_bytes(),
        ),
        (
            dead_letter::OFFSET.to_owned(),
            message.offset().to_string().into_bytes(),
        ),
    ]);
    let entry = OutboxEntry {
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
    let at = Position {
        group: &settings.group,
        topic,
        partition: message.partition(),
        offset: message.offset(),
    };
    store.commit(&at, None, &Effects::default()).map(drop)
}

/// Outbox entries a relay keeps in flight (sent, not yet acked) at most.
const RELAY_WINDOW: usize = 512;

/// Publishes `store`'s outbox until `stopped` turns true and the outbox is empty (whatever is
/// left when the caller gives up waiting stays for the next start). Services that emit events
/// outside a processor (from HTTP requests, say) run this beside their server.
///
/// Entries are sent as soon as they are committed, without waiting for earlier ones to be
/// acked (librdkafka keeps each partition's order), and cleared in send order as acks come
/// back. A failed send clears nothing after it: the relay waits for what is in flight, backs
/// off, and republishes from the oldest entry left, so nothing is skipped (a republished entry
/// keeps its event id, and consumers skip it).
pub async fn relay(
    store: Store,
    producer: Producer,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt as _;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut sent = std::collections::HashSet::new();
    // New entries are looked for after the newest one sent; from the start again whenever
    // nothing is in flight or the periodic tick fires, for an entry whose id was taken before
    // a concurrent writer's but committed after it (workers sharing a store).
    let mut from = 0;
    let mut failed = false;
    let mut stopping = *stopped.borrow();
    loop {
        if !failed && in_flight.len() < RELAY_WINDOW {
            if in_flight.is_empty() {
                from = 0;
            }
            match store.outbox_unsent(RELAY_WINDOW - in_flight.len(), from, &sent) {
                Ok(entries) => {
                    for (id, entry) in entries {
                        sent.insert(id);
                        from = from.max(id + 1);
                        in_flight.push_back(publish(producer.clone(), id, entry));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Reading the outbox failed; retrying");
                    failed = true;
                }
            }
        }
        if in_flight.is_empty() {
            if failed && stopping {
                // The broker is not taking entries while the service stops: they stay in the
                // outbox for the next start rather than holding the shutdown.
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
                failed = false;
                continue;
            }
            if stopping && store.outbox(1).is_ok_and(|left| left.is_empty()) {
                return;
            }
        }
        tokio::select! {
            Some(first) = in_flight.next() => {
                // The acks already in are cleared together: one sled batch, not one write each.
                let mut acked = Vec::new();
                let mut next = Some(first);
                while let Some((id, result)) = next {
                    match result {
                        Ok(_) if !failed => acked.push(id),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "Publishing the outbox failed; retrying");
                            failed = true;
                        }
                    }
                    next = in_flight.next().now_or_never().flatten();
                }
                for id in &acked {
                    sent.remove(id);
                }
                if let Err(error) = store.clear_outbox_all(&acked) {
                    tracing::warn!(%error, "Clearing published outbox entries failed");
                    failed = true;
                }
            }
            // A dropped sender counts as a stop.
            changed = stopped.changed(), if !stopping => {
                stopping = changed.is_err() || *stopped.borrow();
            }
            () = store.outbox_changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => from = 0,
        }
        if failed && in_flight.is_empty() {
            // Everything after the failure is sent again, from the oldest entry left.
            sent.clear();
        }
    }
}

/// Asks a [`relay`] to stop and waits up to `limit` for it to publish what is left; after
/// that it is aborted (what it did not publish stays in the outbox for the next start).
pub async fn stop_relay_within(
    stop: tokio::sync::watch::Sender<bool>,
    mut relay: tokio::task::JoinHandle<()>,
    limit: Duration,
) {
    let _ = stop.send(true);
    if tokio::time::timeout(limit, &mut relay).await.is_err() {
        tracing::warn!(
            "The relay did not publish its outbox in time; the rest waits for the next start"
        );
        relay.abort();
    }
}

/// Sends one outbox entry; the answer names the entry.
async fn publish(producer: Producer, id: u64, entry: OutboxEntry) -> (u64, Result<Delivery>) {
    let result = producer.send_record(&entry).await;
    (id, result)
}

/// Publishes up to `max` outbox entries and clears them; returns how many.
///
/// # Errors
///
/// [`Error::Kafka`] when a send fails (the entry stays for the next attempt), or
/// [`Error::Store`].
pub async fn relay_once(store: &Store, producer: &Producer, max: usize) -> Result<usize> {
    let entries = store.outbox(max)?;
    let sends = entries.iter().map(|(_, entry)| producer.send_record(entry));
    let results = futures::future::join_all(sends).await;
    // Entries are cleared in order and only up to the first failure, so that a later attempt
    // republishes from there rather than leaving a hole.
    let mut published = Vec::new();
    let mut failure = None;
    for ((id, _), result) in entries.iter().zip(results) {
        if let Err(error) = result {
            failure = Some(error);
            break;
        }
        published.push(*id);
    }
    store.clear_outbox_all(&published)?;
    failure.map_or(Ok(published.len()), Err)
}
