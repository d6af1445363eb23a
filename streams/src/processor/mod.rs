//! The consumer-group runner a service plugs its handler into.
//!
//! Delivery guarantee: **effects effectively-once, outputs at-least-once with consumer-side
//! dedupe.** The handler's changes to the service's sled state, the records' offsets, their
//! event-id dedupe marks and the events they emit (the outbox) are written in one sled
//! transaction; records already waiting are taken together, up to 64 a transaction. On
//! assignment the processor starts each partition at the offset stored in sled, not at Kafka's
//! committed offset, so a crash between the sled commit and the Kafka commit replays nothing.
//! A relay publishes the outbox and clears each entry after the broker acked it; a crash
//! between the two publishes the entry again with the same event id, which consumers skip.
//! Kafka offsets are committed too (periodically, on revocation and on shutdown), but only for
//! tools that show lag: correctness rests on sled.
//!
//! Workers of one group may share a store. The transaction then commits only if nobody applied
//! the records yet and every state key the handlers read is unchanged; otherwise the handlers
//! run again on fresh state, one record at a time (see [`crate::store::Store::commit`]), so
//! concurrent read-modify-writes lose nothing.
//!
//! Poison records (undecodable, unknown schema id, rejected by the handler as invalid) go to
//! the topic's dead-letter topic with the reason in headers, and processing goes on. Retriable
//! failures (broker or registry down) are retried with backoff and never skip a record.

mod apply;
pub mod dead_letter;
mod handler;
mod rebalance;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;

pub(crate) use apply::{Apply, Failure};
pub use handler::{Context, Handler, HandlerError, Record};
pub use rebalance::{PartitionPosition, Positions};
use rebalance::{ProcessorContext, commit_from_store, record_position};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::kafka::Producer;
use crate::kafka::topic::TopicSpec;
use crate::outbox;
use crate::store::{Batch, Committed, Store, Writers};

/// How long one receive waits before it is asked again (see the run loop).
const RECV_RETRY: Duration = Duration::from_millis(20);

/// How often librdkafka reports statistics, which carry each partition's high watermark (for
/// lag) without a request on the record path.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// Records waiting that a processor takes into one transaction at most.
const LIVE_BATCH: usize = 64;

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
    /// Settings reading the topics of `specs`, whose dead-letter topics the specs name;
    /// offsets committed to Kafka every second.
    pub fn new(
        bootstrap: impl Into<String>,
        group: impl Into<String>,
        specs: &[&TopicSpec],
    ) -> Self {
        Settings {
            bootstrap: bootstrap.into(),
            group: group.into(),
            topics: specs.iter().map(|s| s.name.clone()).collect(),
            dead_letters: specs
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.dead_letter.clone()?)))
                .collect(),
            consumer: Vec::new(),
            commit_interval: Duration::from_secs(1),
        }
    }

    /// Refuses a topic without a dead-letter topic: its poison records would have nowhere
    /// to go.
    fn check(&self) -> Result<()> {
        match self
            .topics
            .iter()
            .find(|t| !self.dead_letters.contains_key(t.as_str()))
        {
            None => Ok(()),
            Some(topic) => Err(Error::TopicSpec {
                file: format!("topics/{topic}.toml").into(),
                field: "dead_letter".into(),
                reason: format!(
                    "consumer group {} reads {topic}, which names no dead-letter topic for \
                     the records it cannot process",
                    self.group
                ),
            }),
        }
    }
}

/// Runs `handler` over `settings.topics` until `shutdown` completes, with the relay that
/// publishes its outbox. On shutdown it finishes the records it took from the consumer (or
/// stops waiting to retry one), publishes what the outbox holds (for up to 5 s), commits
/// offsets to Kafka synchronously and returns.
///
/// # Errors
///
/// [`Error::TopicSpec`] when a topic has no dead-letter topic, [`Error::Kafka`] when the consumer
/// cannot be created or subscribed.
pub async fn run<H: Handler>(
    settings: Settings,
    store: Store,
    codec: Codec,
    handler: H,
    positions: Positions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    settings.check()?;
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
    let relay = tokio::spawn(outbox::relay(
        store.outbox().clone(),
        producer.clone(),
        relay_stopped,
    ));
    let apply = Apply {
        group: &settings.group,
        store: &store,
        codec: &codec,
        handler: &handler,
        writers: Writers::Shared,
    };

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
        // catches up in batches, while a lone record is committed at once.
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
        // Whole runs of records are committed together; after a refused commit (another
        // worker sharing the store got there first) the rest go one by one, their handlers
        // run again on fresh state.
        let mut next = 0;
        let mut one_by_one = false;
        let mut backoff = Duration::from_millis(100);
        while next < ready.len() {
            let take = if one_by_one { 1 } else { ready.len() - next };
            let mut batch = Batch::default();
            let mut applied = 0;
            let mut failure = None;
            for message in &ready[next..next + take] {
                match apply.record(&mut batch, message).await {
                    Ok(()) => applied += 1,
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
            if applied > 0 {
                // Records all below the stored offset leave the batch empty: nothing to write.
                let committed = if batch.is_empty() {
                    Ok(Committed::Applied)
                } else {
                    store.commit(&batch, Writers::Shared)
                };
                let advance = match committed {
                    Ok(Committed::Applied) => true,
                    Ok(Committed::AlreadyApplied) if applied == 1 => {
                        tracing::debug!("Another worker applied the record; skipping it");
                        true
                    }
                    Ok(Committed::Stale) if applied == 1 => {
                        let message = &ready[next];
                        tracing::debug!(
                            topic = message.topic(),
                            partition = message.partition(),
                            offset = message.offset(),
                            "State changed under the handler; running it again"
                        );
                        continue;
                    }
                    Ok(_) => {
                        one_by_one = true;
                        continue;
                    }
                    Err(error) if applied > 1 => {
                        tracing::warn!(%error, "Committing records together failed; one by one");
                        one_by_one = true;
                        continue;
                    }
                    Err(error) => {
                        failure = Some(Failure::Retry(error.to_string()));
                        false
                    }
                };
                if advance {
                    for message in &ready[next..next + applied] {
                        record_position(&positions, &watermarks, message);
                    }
                    next += applied;
                    backoff = Duration::from_millis(100);
                }
            }
            let Some(failure) = failure else {
                continue;
            };
            let message = &ready[next];
            match failure {
                Failure::Retry(reason) => {
                    tracing::warn!(
                        reason,
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "Retrying a record"
                    );
                    if !pause(&mut backoff, &mut shutdown).await {
                        finish(&consumer, &store, &settings, stop_relay, relay).await;
                        return Ok(());
                    }
                    one_by_one = true;
                }
                Failure::Poison(kind, reason) => {
                    let sent = dead_letter::send(
                        &settings,
                        &store,
                        &producer,
                        message,
                        kind,
                        &reason,
                        &mut shutdown,
                    )
                    .await;
                    if sent == dead_letter::Sent::Stopped {
                        finish(&consumer, &store, &settings, stop_relay, relay).await;
                        return Ok(());
                    }
                    record_position(&positions, &watermarks, message);
                    next += 1;
                    backoff = Duration::from_millis(100);
                }
            }
        }
        if last_commit.elapsed() >= settings.commit_interval {
            commit_from_store(&consumer, &store, &settings.group, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    finish(&consumer, &store, &settings, stop_relay, relay).await;
    Ok(())
}

/// Waits `backoff` (then doubles it, up to 5 s); false if `shutdown` came first.
async fn pause(backoff: &mut Duration, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
    tokio::select! {
        () = &mut *shutdown => return false,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

async fn finish(
    consumer: &StreamConsumer<ProcessorContext>,
    store: &Store,
    settings: &Settings,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
) {
    outbox::stop_within(stop_relay, relay, Duration::from_secs(5)).await;
    commit_from_store(consumer, store, &settings.group, None, CommitMode::Sync);
    let _ = store.flush();
    tracing::info!(group = %settings.group, "Processor stopped");
}
