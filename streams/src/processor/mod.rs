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
mod global;
mod handler;
mod rebalance;
mod restore;
mod standby;
mod watchdog;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::kafka::idle::{self, Quiet};
use crate::kafka::topic::TopicSpec;
use crate::outbox::{self, Gate};
use crate::store::{Batch, Changelog, Committed, MAX_TASK, Scope, Store, Writers};

/// How long one receive waits before it is asked again (see the run loop).
const RECV_RETRY: Duration = Duration::from_millis(20);

/// How often librdkafka reports statistics, which carry each partition's high watermark (for
/// lag) without a request on the record path.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// Records waiting that a processor takes into one transaction at most.
const LIVE_BATCH: usize = 64;

/// How long a stopping processor waits for the group to take its tasks back, and then for
/// librdkafka to close the consumer.
const LEAVE_WITHIN: Duration = Duration::from_secs(10);

/// How a processor connects and what it reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Consumer group: processors with the same group share the tasks.
    pub group: String,
    /// Topics whose partitions make up the tasks: partition `n` of each is task `n`, so they
    /// must have as many partitions each.
    pub topics: Vec<String>,
    /// Topics every processor of the group reads whole, as global tables (catalogs), without
    /// the group: read to their end before any task is processed, then kept up with.
    pub globals: Vec<String>,
    /// The compacted topic the tasks' state is logged to, a partition per task; `None`: the
    /// state is not logged (a task's state then stays with the instance that built it).
    pub changelog: Option<String>,
    /// Dead-letter topic of each consumed topic (from the topic specs).
    pub dead_letters: HashMap<String, String>,
    /// Raw librdkafka consumer settings, applied last.
    pub consumer: Vec<(String, String)>,
    /// How often Kafka offsets are committed (for lag tools; sled holds the truth).
    pub commit_interval: Duration,
    /// Warm copies of tasks this instance does not own, kept up from the changelog so that a
    /// take-over reads only the latest changes (needs [`Settings::changelog`]). 0: none; any
    /// other number: every task this instance does not own (see `processor::standby`), so with two
    /// instances each task has one standby.
    pub standby_replicas: usize,
}

/// The consumer settings every processor starts from, before [`Settings::consumer`]: how long a
/// silent member keeps its tasks, and how often members say they are alive. A killed instance's
/// tasks move after at most the session timeout (librdkafka's default is 45 s, longer than a
/// saga may take), and a member that joins gets its share at the next heartbeat.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "1000"),
];

/// [`CONSUMER_DEFAULTS`] on the embedded broker, whose every rebalance of a running group also
/// waits the session timeout less 1 s before it assigns (see [`crate::kafka::broker`]): with
/// 6 s a killed member's tasks would move after 11 s, with 3 s after about 5. A real broker
/// refuses session timeouts below its `group.min.session.timeout.ms` (6 s by default).
pub const EMBEDDED_CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "3000"),
    ("heartbeat.interval.ms", "500"),
];

impl Settings {
    /// Settings reading the topics of `specs` as tasks, whose dead-letter topics the specs
    /// name; no global tables, no changelog; offsets committed to Kafka every second.
    pub fn new(
        bootstrap: impl Into<String>,
        group: impl Into<String>,
        specs: &[&TopicSpec],
    ) -> Self {
        Settings {
            bootstrap: bootstrap.into(),
            group: group.into(),
            topics: specs.iter().map(|s| s.name.clone()).collect(),
            globals: Vec::new(),
            changelog: None,
            dead_letters: HashMap::new(),
            consumer: Vec::new(),
            commit_interval: Duration::from_secs(1),
            standby_replicas: 0,
        }
        .dead_letters_of(specs)
    }

    /// These settings, also reading the topics of `specs` as global tables.
    #[must_use]
    pub fn with_globals(mut self, specs: &[&TopicSpec]) -> Self {
        self.globals.extend(specs.iter().map(|s| s.name.clone()));
        self.dead_letters_of(specs)
    }

    /// These settings, logging the tasks' state to the topic of `spec`.
    #[must_use]
    pub fn with_changelog(mut self, spec: &TopicSpec) -> Self {
        self.changelog = Some(spec.name.clone());
        self
    }

    fn dead_letters_of(mut self, specs: &[&TopicSpec]) -> Self {
        self.dead_letters.extend(
            specs
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.dead_letter.clone()?))),
        );
        self
    }

    /// The changelog as commits write it.
    pub(crate) fn logged(&self) -> Option<Arc<Changelog>> {
        self.changelog.as_ref().map(|topic| {
            Arc::new(Changelog {
                topic: topic.clone(),
                group: self.group.clone(),
                inputs: self.topics.clone(),
            })
        })
    }

    /// The state a record of `topic`'s `partition` belongs to.
    pub(crate) fn scope(&self, topic: &str, partition: i32) -> Scope {
        apply::scope_of(&self.globals, topic, partition)
    }

    /// Refuses a topic without a dead-letter topic: its poison records would have nowhere
    /// to go.
    fn check(&self) -> Result<()> {
        match self
            .topics
            .iter()
            .chain(&self.globals)
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
    let producer = Producer::new(&settings.bootstrap, codec.clone(), &[])?;
    let gate = settings
        .changelog
        .as_ref()
        .map(|topic| Gate::new(topic, store.clone()));
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(outbox::relay(
        store.outbox().clone(),
        producer.clone(),
        gate.clone(),
        relay_stopped,
    ));
    // A processor dropped where it stands (its task aborted) takes its relay with it, as a
    // killed process would: a relay left running could publish changelog entries of tasks
    // another instance has taken over.
    let _relay_guard = AbortOnDrop(relay.abort_handle());
    let apply = Apply {
        group: &settings.group,
        store: &store,
        codec: &codec,
        handler: &handler,
        writers: Writers::Shared,
        globals: &settings.globals,
    };
    tokio::pin!(shutdown);
    // The global tables first: any task's records may read them.
    let mut globals = None;
    if !settings.globals.is_empty() {
        let mut reader = global::Globals::start(&settings, &store)?;
        if !reader
            .catch_up(&apply, &settings, &producer, &mut shutdown)
            .await
        {
            outbox::stop_within(stop_relay, relay, Duration::from_secs(5)).await;
            return Ok(());
        }
        globals = Some(reader);
    }
    let mut quiet = Quiet::new(&settings.bootstrap);
    if settings.topics.is_empty() {
        // Only global tables: keep up with them until shutdown.
        if let Some(reader) = &mut globals {
            while let Some(taken) = reader
                .step(&apply, &settings, &producer, &mut shutdown)
                .await
            {
                if taken > 0 {
                    quiet.heard();
                    continue;
                }
                let idle = quiet.is_idle();
                if idle {
                    set_idle(None, Some(reader), &positions, true);
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = quiet.wait(), if idle => set_idle(None, Some(reader), &positions, false),
                    () = tokio::time::sleep(RECV_RETRY), if !idle => {}
                }
            }
        }
        outbox::stop_within(stop_relay, relay, Duration::from_secs(5)).await;
        let _ = store.flush();
        return Ok(());
    }
    let logged = settings.logged();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Co-partitioned tasks: partition n of every input topic goes to one member, which
        // `range` gives for topics with as many partitions each (checked below);
        // `cooperative-sticky` balances each topic on its own.
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    let cluster = crate::kafka::topic::cluster_id(&settings.bootstrap).unwrap_or_default();
    let embedded = crate::kafka::topic::is_mock_cluster_id(&cluster);
    let defaults = if embedded {
        EMBEDDED_CONSUMER_DEFAULTS
    } else {
        CONSUMER_DEFAULTS
    };
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    let restorer = match (&logged, &gate) {
        (Some(log), Some(gate)) => Some((
            restore::Restorer::new(&settings.bootstrap, log.clone())?,
            gate.clone(),
        )),
        _ => None,
    };
    let watermarks = Arc::new(Mutex::new(HashMap::new()));
    let revocations = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    // The embedded broker runs the group protocol's rebalances itself; other coordinators
    // may not (see `watchdog`).
    let verdicts = (!embedded).then(|| {
        let session_timeout = Duration::from_millis(
            config
                .get("session.timeout.ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(45_000),
        );
        // Tansu's default cluster id; see `watchdog` for why its rebalances need this.
        let keeps_expired_leader = cluster == "tansu_cluster";
        Arc::new(watchdog::Verdicts::new(
            session_timeout,
            keeps_expired_leader,
        ))
    });
    let consumer: StreamConsumer<ProcessorContext> = config
        .create_with_context(ProcessorContext {
            store: store.clone(),
            group: settings.group.clone(),
            positions: positions.clone(),
            watermarks: watermarks.clone(),
            revocations: revocations.clone(),
            held: held.clone(),
            restorer,
            leaving: AtomicBool::new(false),
            rejoining: AtomicBool::new(false),
            verdicts: verdicts.clone(),
        })
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let tasks = check_tasks(&consumer, &settings)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let subscribe = |consumer: &StreamConsumer<ProcessorContext>| {
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka(format!("subscribing to {}", topics.join(", ")), e))
    };
    subscribe(&consumer)?;
    let _standby = match (&logged, &gate) {
        (Some(changelog), Some(gate)) if settings.standby_replicas > 0 => {
            Some(standby::Standby::start(
                &settings.bootstrap,
                standby::Copies {
                    changelog: changelog.clone(),
                    store: store.clone(),
                    tasks,
                    held: held.clone(),
                    gate: gate.clone(),
                },
            )?)
        }
        _ => None,
    };
    let watchdog = match verdicts {
        Some(verdicts) => Some(watchdog::Watchdog::start(
            &settings.bootstrap,
            watchdog::Watched {
                group: settings.group.clone(),
                topics: settings.topics.clone(),
                tasks,
                held,
                verdicts,
            },
        )?),
        None => None,
    };

    let mut last_commit = Instant::now();
    let mut rejoining_since = None;
    let mut failed = None;
    'run: loop {
        if watchdog
            .as_ref()
            .is_some_and(watchdog::Watchdog::take_rejoin)
        {
            consumer.context().rejoining.store(true, Ordering::SeqCst);
            consumer.unsubscribe();
        }
        if consumer.context().rejoining.load(Ordering::SeqCst) {
            let since = *rejoining_since.get_or_insert_with(Instant::now);
            // Once the member id is forgotten, the unsubscription took effect: every task was
            // revoked (its offsets committed) and the group was told this member left, so the
            // subscription joins as a new member. Subscribing before that, while a rebalance
            // is under way, would replace the pending unsubscription: librdkafka then joins
            // again with the old member id, as if nobody had left.
            if member_id(&consumer).is_empty() || since.elapsed() >= LEAVE_WITHIN {
                consumer.context().rejoining.store(false, Ordering::SeqCst);
                rejoining_since = None;
                if let Err(error) = subscribe(&consumer) {
                    // Stopped as for a shutdown first: sled's offsets and the outbox's last
                    // entries still go out.
                    failed = Some(error);
                    break 'run;
                }
            }
        }
        if let Some(reader) = &mut globals {
            match reader
                .step(&apply, &settings, &producer, &mut shutdown)
                .await
            {
                None => break,
                Some(0) => {}
                Some(_) => quiet.heard(),
            }
        }
        let message = if quiet.is_idle() {
            // Nothing heard for a while from an embedded broker of this process: stop fetching
            // until a write here, or a look for other processes' writes (see `kafka::idle`).
            set_idle(Some(&consumer), globals.as_ref(), &positions, true);
            let woken = tokio::select! {
                () = &mut shutdown => break,
                () = quiet.wait() => None,
                // Still polled while paused: rebalances are served, and a record fetched
                // before the pause is taken.
                message = consumer.recv() => Some(message),
            };
            set_idle(Some(&consumer), globals.as_ref(), &positions, false);
            match woken {
                Some(message) => message,
                None => continue,
            }
        } else {
            tokio::select! {
                () = &mut shutdown => break,
                // Bounded, then asked again: a wake-up from librdkafka that the async consumer
                // misses (seen after rebalances on a busy machine) costs at most this long,
                // never a stall.
                message = tokio::time::timeout(RECV_RETRY, consumer.recv()) => match message {
                    Ok(message) => message,
                    Err(_) => continue,
                },
            }
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "Consuming failed; librdkafka retries");
                continue;
            }
        };
        quiet.heard();
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
        if let Some(reader) = &mut globals
            && !reader
                .catch_up_now(&apply, &settings, &producer, &mut shutdown)
                .await
        {
            break;
        }
        // Whole runs of records are committed together; after a refused commit (another
        // worker sharing the store got there first) the rest go one by one, their handlers
        // run again on fresh state.
        let mut next = 0;
        let mut one_by_one = false;
        let mut backoff = Duration::from_millis(100);
        while next < ready.len() {
            let take = if one_by_one { 1 } else { ready.len() - next };
            let mut batch = Batch::logged(logged.clone());
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
                        break 'run;
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
                        break 'run;
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
    finish(consumer, &store, &settings, stop_relay, relay).await;
    failed.map_or(Ok(()), Err)
}

/// Restores `tasks` of `changelog` into `store` as a processor does when it is assigned them
/// (benches and tools), together (see `Restorer::restore_all`): how many changelog records
/// were read (none for a task the store held the latest state of).
///
/// # Errors
///
/// [`Error::Kafka`] when the changelog cannot be read, [`Error::Store`] when the store fails.
pub fn restore_tasks(
    bootstrap: &str,
    changelog: &Changelog,
    store: &Store,
    tasks: impl IntoIterator<Item = i32>,
) -> Result<u64> {
    let restorer = restore::Restorer::new(bootstrap, Arc::new(changelog.clone()))?;
    let tasks: Vec<i32> = tasks.into_iter().collect();
    let restored = restorer.restore_all(store, &tasks, restore::Role::Owner)?;
    Ok(restored
        .into_iter()
        .map(|(_, restored)| match restored {
            restore::Restored::Read(read) => read,
            restore::Restored::Current => 0,
        })
        .sum())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses task topics with different partition counts (a task is one partition number of
/// each), or more partitions than the changelog or the store's keys can hold.
/// The group's number of tasks, once every input topic has as many partitions and the
/// changelog at least as many.
fn check_tasks(consumer: &impl Consumer<ProcessorContext>, settings: &Settings) -> Result<usize> {
    let timeout = Duration::from_secs(30);
    let mut counts = Vec::new();
    for topic in settings.topics.iter().chain(&settings.changelog) {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("reading the metadata of {topic}"), e))?;
        let count = metadata
            .topics()
            .iter()
            .map(|t| t.partitions().len())
            .sum::<usize>();
        counts.push((topic.as_str(), count));
    }
    if let Some((missing, _)) = counts.iter().find(|(_, n)| *n == 0) {
        return Err(Error::Usage(format!(
            "consumer group {} reads topic {missing}, which the cluster does not have: create \
             the topics of topics/ with `tripstream topics apply`",
            settings.group
        )));
    }
    let inputs = &counts[..settings.topics.len()];
    let tasks = inputs.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let listed = || {
        counts
            .iter()
            .map(|(topic, n)| format!("{topic} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let uneven = inputs.iter().any(|(_, n)| *n != tasks);
    let short_log = counts[settings.topics.len()..]
        .iter()
        .any(|(_, n)| *n < tasks);
    if uneven || short_log || tasks > MAX_TASK as usize {
        return Err(Error::Usage(format!(
            "consumer group {} cannot split its inputs into tasks: a task is one partition \
             number of every input topic, so each needs as many partitions (at most {}), and \
             its changelog at least as many; partitions: {}",
            settings.group,
            MAX_TASK + 1,
            listed()
        )));
    }
    Ok(tasks)
}

/// Stops (or restarts) fetching the tasks' and the global tables' records while idle.
fn set_idle(
    tasks: Option<&StreamConsumer<ProcessorContext>>,
    globals: Option<&global::Globals>,
    positions: &Positions,
    idle: bool,
) {
    if let Some(consumer) = tasks {
        idle::set_paused(consumer, idle);
    }
    if let Some(reader) = globals {
        reader.set_paused(idle);
    }
    positions.set_idle(idle);
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
    consumer: StreamConsumer<ProcessorContext>,
    store: &Store,
    settings: &Settings,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
) {
    outbox::stop_within(stop_relay, relay, Duration::from_secs(5)).await;
    let _ = store.flush();
    // Leaving revokes every task, and the revocation commits sled's offsets to Kafka.
    leave(consumer, &settings.group).await;
    tracing::info!(group = %settings.group, "Processor stopped");
}

/// The member id the group coordinator gave `consumer`: empty before it first joined and once
/// it has left. rust-rdkafka does not expose it.
#[allow(unsafe_code)]
fn member_id(consumer: &StreamConsumer<ProcessorContext>) -> String {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live handle `consumer` owns. librdkafka returns a copy of the id
    // (or null), which is read once and freed with `rd_kafka_mem_free`, as its header says.
    unsafe {
        let id = rdkafka_sys::rd_kafka_memberid(client);
        if id.is_null() {
            return String::new();
        }
        let owned = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rdkafka_sys::rd_kafka_mem_free(client, id.cast());
        owned
    }
}

/// Gives the tasks back to the group, then closes the consumer, each within [`LEAVE_WITHIN`].
///
/// Closing a consumer that still holds partitions makes librdkafka revoke them inside the
/// close, and a rebalance event handled once the group has closed waits for ever on a reply
/// that never comes (librdkafka #4884): seen here as a processor that never stopped. Leaving
/// first means the close has nothing to revoke; the bounded close is for whatever else
/// librdkafka may wait on. (The revocation's offset commit is not bounded: with no
/// coordinator it waits for one.)
async fn leave(consumer: StreamConsumer<ProcessorContext>, group: &str) {
    consumer.context().leaving.store(true, Ordering::SeqCst);
    consumer.unsubscribe();
    let deadline = Instant::now() + LEAVE_WITHIN;
    // The revocation runs inside a poll. Records that come meanwhile are not applied: sled's
    // offsets, which the revocation commits, are where the next owner starts.
    while consumer
        .assignment()
        .is_ok_and(|assigned| assigned.count() > 0)
        && Instant::now() < deadline
    {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let (closed, close) = tokio::sync::oneshot::channel();
    let closing = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(error) = closing {
        // The consumer went with the closure: it closed on this thread.
        tracing::warn!(%error, group, "No thread to close the consumer on");
        return;
    }
    if tokio::time::timeout(LEAVE_WITHIN, close).await.is_err() {
        // The thread is left behind: librdkafka gives no way to cut a close short.
        tracing::error!(
            group,
            "The Kafka consumer did not close within {LEAVE_WITHIN:?}; leaving it"
        );
    }
}
