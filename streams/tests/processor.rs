//! The processor's guarantees on the embedded broker: partitions shared and taken over, crashes
//! between the sled and Kafka commits, relay duplicates, poison records, broker faults, replay.

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use streams::codec::{Codec, Event};
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::{Metadata, Producer};
use streams::outbox;
use streams::processor::{self, Context, Handler, HandlerError, Positions, Record, Settings};
use streams::registry::Client;
use streams::replay::{self, Start};
use streams::store::changelog::MARKER;
use streams::store::{Batch, Effects, Position, Scope, Store, Writers};
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Booked {
    booking_id: String,
    route: String,
}

impl Event for Booked {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Booked","namespace":"test","fields":[
        {"name":"booking_id","type":"string"},{"name":"route","type":"string"}]}"#;

    fn key(&self) -> String {
        self.booking_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counted {
    booking_id: String,
}

impl Event for Counted {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Counted","namespace":"test","fields":[{"name":"booking_id","type":"string"}]}"#;

    fn key(&self) -> String {
        self.booking_id.clone()
    }
}

/// Counts bookings per route; a booking without a route is invalid. Optionally emits.
#[derive(Clone)]
struct RouteCounter {
    emit_to: Option<&'static str>,
}

fn add_one(ctx: &mut Context<'_>, key: String) -> Result<(), HandlerError> {
    let current = ctx
        .get(key.as_bytes())?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    ctx.put(key.into_bytes(), (current + 1).to_string().into_bytes());
    Ok(())
}

impl Handler for RouteCounter {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let booked: Booked = ctx.decode(record).await?;
        if booked.route.is_empty() {
            return Err(HandlerError::Invalid(format!(
                "booking {} has no route",
                booked.booking_id
            )));
        }
        add_one(ctx, format!("route/{}", booked.route))?;
        if let Some(topic) = self.emit_to {
            ctx.emit(
                topic,
                &Counted {
                    booking_id: booked.booking_id,
                },
            )
            .await?;
        }
        Ok(())
    }
}

/// Counts how often each booking was seen.
struct SeenCounter;

impl Handler for SeenCounter {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let counted: Counted = ctx.decode(record).await?;
        add_one(ctx, format!("seen/{}", counted.booking_id))
    }
}

struct Harness {
    broker: EmbeddedBroker,
    registry: registry::Running,
    codec: Codec,
    producer: Producer,
}

/// One scenario at a time: each runs a broker, a registry and several consumers, and on two
/// cores parallel scenarios starve each other's group heartbeats into spurious rebalances.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn harness() -> Harness {
    harness_on(1, |_| 1).await
}

/// A harness on a cluster of `brokers`, each topic's partitions led by broker `leader(topic)`.
async fn harness_on(brokers: u16, leader: impl Fn(&str) -> i32) -> Harness {
    streams::telemetry::init("info");
    let broker = EmbeddedBroker::start(brokers).expect("broker");
    for (topic, partitions) in [
        ("bookings", 4),
        ("bookings.dlq", 1),
        ("counter.changelog", 4),
        ("counted", 2),
        ("counted.dlq", 1),
        (registry::SCHEMAS_TOPIC, 1),
    ] {
        broker.create_topic(topic, partitions, 1).expect("topic");
        if brokers > 1 {
            let mock = broker.mock();
            for partition in 0..partitions {
                mock.partition_leader(topic, partition, Some(leader(topic)))
                    .expect("leader");
            }
        }
    }
    let (running, codec) = support::registry(&broker).await;
    let producer = Producer::new(broker.bootstrap_servers(), codec.clone(), &[]).expect("producer");
    Harness {
        broker,
        registry: running,
        codec,
        producer,
    }
}

impl Harness {
    /// Stops the registry before the broker goes, so that no client of this scenario is left
    /// polling a dead broker while the next scenario runs.
    async fn shutdown(self) {
        self.registry.stop().await.expect("registry stops");
        drop(self.producer);
        drop(self.broker);
    }

    /// A consumer of every partition of `topic` from the beginning, outside any group.
    fn reader(&self, topic: &str, partitions: i32) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            // assign() needs a group id; the reader never joins nor commits.
            .set("group.id", "test-reader")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        consumer
    }

    fn settings(&self, group: &str, topic: &str) -> Settings {
        let mut settings = Settings::new(
            self.broker.bootstrap_servers(),
            group,
            &[&support::spec(topic)],
        );
        settings.consumer = vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "300".into()),
            ("fetch.wait.max.ms".into(), "20".into()),
        ];
        if let Ok(d) = std::env::var("KDEBUG") {
            settings.consumer.push(("debug".into(), d));
        }
        settings
    }

    /// Sends `count` bookings numbered from `first`, each on one of three routes; fails the
    /// test instead of hanging when the broker or registry stops answering.
    async fn book(&self, first: usize, count: usize) {
        tokio::time::timeout(Duration::from_secs(60), self.book_unbounded(first, count))
            .await
            .expect("the bookings were sent within 60 s");
    }

    async fn book_unbounded(&self, first: usize, count: usize) {
        for i in first..first + count {
            let booked = Booked {
                booking_id: format!("b{i:05}"),
                route: ["LIS-OPO", "LIS-FAO", "OPO-FAO"][i % 3].into(),
            };
            // A test producer that retries on its own: the runtime must cope with duplicates.
            loop {
                match self
                    .producer
                    .send("bookings", &booked, &Metadata::new(&booked.booking_id))
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        eprintln!("retrying a send: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    /// `bookings` replayed from the beginning into an empty store by a route counter.
    async fn replayed(&self) -> replay::Summary {
        self.replayed_from(&["bookings"]).await
    }

    /// `topics` replayed from the beginning into an empty store by a route counter.
    async fn replayed_from(&self, topics: &[&str]) -> replay::Summary {
        replay::replay(
            self.broker.bootstrap_servers(),
            replay::Inputs::tasks(topics),
            &Start::Beginning,
            &Store::temporary().expect("store"),
            &self.codec,
            &RouteCounter { emit_to: None },
            |_| {},
        )
        .await
        .expect("replay")
    }

    fn start<H: Handler>(&self, settings: Settings, store: &Store, handler: H) -> Running {
        let positions = Positions::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(processor::run(
            settings,
            store.clone(),
            self.codec.clone(),
            handler,
            positions.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Running {
            stop: Some(stop),
            task: Some(task),
            positions,
        }
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<streams::Result<()>>>,
    positions: Positions,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the processor stopped within 30 s")
                .expect("joined")
                .expect("clean stop");
        }
    }

    /// Drops the processor where it stands: no draining, no Kafka commit.
    async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn applied(&self) -> i64 {
        self.positions.snapshot().values().map(|p| p.next).sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failing test unwinds through here before its harness (declared earlier) drops the
        // broker. The processor is stopped and awaited now, while the broker still answers:
        // a consumer closed after its broker is gone blocks its close, and the test binary
        // would hang instead of reporting the failure.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    if tokio::time::timeout(Duration::from_secs(10), task)
                        .await
                        .is_err()
                    {
                        eprintln!("a processor did not stop within 10 s of the test ending");
                    }
                });
            });
        }
    }
}

/// Commits `effects` as the service "svc" applying record `offset` of partition 0 of `topic`.
fn commit_as_service(store: &Store, topic: &str, offset: i64, effects: &Effects) {
    let at = Position {
        group: "svc",
        topic,
        partition: 0,
        offset,
    };
    let mut batch = Batch::default();
    batch.add(&at, Scope::Task(0), None, effects.clone());
    store.commit(&batch, Writers::Shared).expect("commit");
}

/// The route counts of the tasks `running` holds now, from `store`.
fn owned_total(store: &Store, running: &Running) -> u64 {
    let tasks: std::collections::BTreeSet<i32> = running
        .positions
        .snapshot()
        .keys()
        .map(|(_, p)| *p)
        .collect();
    tasks
        .into_iter()
        .flat_map(|task| store.scan_in(Scope::Task(task), b"route/").expect("scan"))
        .filter_map(|(_, v)| String::from_utf8_lossy(&v).parse::<u64>().ok())
        .sum()
}

fn total(store: &Store, prefix: &str) -> u64 {
    store
        .scan(prefix.as_bytes())
        .expect("scan")
        .iter()
        .filter_map(|(_, v)| String::from_utf8_lossy(v).parse::<u64>().ok())
        .sum()
}

/// The settings of a route counter logging to `counter.changelog`; `commit_interval`
/// overrides the settings' own.
fn logged_counter(h: &Harness, commit_interval: Option<Duration>) -> Settings {
    let mut settings = h
        .settings("counter", "bookings")
        .with_changelog(&support::spec("counter.changelog"));
    if let Some(interval) = commit_interval {
        settings.commit_interval = interval;
    }
    settings
}

/// Two route counters on their own stores logging to `counter.changelog`: the first applies
/// 100 bookings alone, then the second joins and they split the tasks.
async fn split_between_two(
    h: &Harness,
    commit_interval: Option<Duration>,
) -> ((Store, Running), (Store, Running)) {
    let logged = || logged_counter(h, commit_interval);
    let counter = || RouteCounter { emit_to: None };
    let (a, b) = (
        Store::temporary().expect("store"),
        Store::temporary().expect("store"),
    );
    let first = h.start(logged(), &a, counter());
    h.book(0, 100).await;
    wait_for("the first 100 bookings", Duration::from_secs(30), || {
        total(&a, "route/") == 100
    })
    .await;
    let second = h.start(logged(), &b, counter());
    wait_for("the tasks to be split", Duration::from_secs(30), || {
        first.positions.snapshot().len() == 2 && second.positions.snapshot().len() == 2
    })
    .await;
    ((a, first), (b, second))
}

/// After 200 bookings, with the other instance gone: 100 more, and `running` on `store` holds
/// every task and every booking once.
async fn survivor_applies_the_next_100_once(h: &Harness, store: &Store, running: &Running) {
    h.book(200, 100).await;
    wait_for(
        "the survivor to hold every task",
        Duration::from_secs(30),
        || running.positions.snapshot().len() == 4,
    )
    .await;
    wait_for(
        "all 300 bookings on the survivor",
        Duration::from_secs(30),
        || owned_total(store, running) >= 300,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        total(store, "route/"),
        300,
        "every booking applied exactly once"
    );
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_that_stops_mid_stream_is_taken_over_and_every_record_applies_once() {
    // The handover with no overlap in time: the second member joins the group after the
    // first left and must resume exactly at the offsets the first stored in sled.
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let store = Store::temporary().expect("store");
    let counter = || RouteCounter { emit_to: None };
    let first = h.start(h.settings("counter", "bookings"), &store, counter());
    h.book(0, 120).await;
    wait_for("the first 120 bookings", Duration::from_secs(30), || {
        total(&store, "route/") == 120
    })
    .await;
    assert_eq!(first.applied(), 120);
    first.stop().await;

    h.book(120, 80).await;
    let second = h.start(h.settings("counter", "bookings"), &store, counter());
    wait_for("all 200 bookings", Duration::from_secs(30), || {
        total(&store, "route/") >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        total(&store, "route/"),
        200,
        "every booking applied exactly once"
    );
    let taken_over = second.positions.snapshot();
    assert_eq!(
        taken_over.len(),
        4,
        "the new member holds every partition: {taken_over:?}"
    );
    assert!(taken_over.values().all(|p| p.lag() == 0));
    second.stop().await;

    // A replay from the beginning rebuilds the same state.
    let summary = h.replayed().await;
    assert_eq!(summary.applied, 200);
    assert_eq!(summary.digest, store.digest().expect("digest"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_processor_stops_fetching_and_records_from_here_or_from_any_client_still_reach_it()
{
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let store = Store::temporary().expect("store");
    let running = h.start(
        h.settings("counter", "bookings"),
        &store,
        RouteCounter { emit_to: None },
    );
    h.book(0, 10).await;
    let idle_within = Duration::from_secs(20);
    wait_for("the first 10 bookings", Duration::from_secs(30), || {
        total(&store, "route/") == 10
    })
    .await;
    wait_for("the processor to go idle", idle_within, || {
        running.positions.is_idle()
    })
    .await;

    // A plain rdkafka producer, as a writer in another process would be: nothing here tells
    // the idle processor, which finds the records when it next looks.
    let plain: rdkafka::producer::FutureProducer =
        streams::kafka::producer::client_config(h.broker.bootstrap_servers(), &[])
            .create()
            .expect("producer");
    for i in 10..20 {
        let booked = Booked {
            booking_id: format!("b{i:05}"),
            route: "LIS-OPO".into(),
        };
        let record = streams::kafka::producer::record(
            &h.codec,
            "bookings",
            &booked,
            &Metadata::new(&booked.booking_id),
        )
        .await
        .expect("encoded");
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            });
        }
        plain
            .send(
                rdkafka::producer::FutureRecord::to("bookings")
                    .key(&record.key)
                    .payload(record.payload.as_deref().unwrap_or_default())
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
    wait_for(
        "the 10 bookings of a plain client",
        Duration::from_secs(30),
        || total(&store, "route/") == 20,
    )
    .await;

    // Idle again, then woken by a write through this process's producer.
    wait_for("the processor to go idle again", idle_within, || {
        running.positions.is_idle()
    })
    .await;
    h.book(20, 10).await;
    wait_for(
        "the 10 bookings sent from here",
        Duration::from_secs(30),
        || total(&store, "route/") == 30,
    )
    .await;
    assert_eq!(running.applied(), 30, "every booking applied once");
    running.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processors_in_one_group_split_the_partitions_and_one_takes_over_mid_stream() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    // Two workers of one service: one group, one store. Both count into the same route keys,
    // so a read-modify-write of one must not overwrite the other's (the commit checks reads).
    let store = Store::temporary().expect("store");
    let counter = || RouteCounter { emit_to: None };
    let first = h.start(h.settings("counter", "bookings"), &store, counter());
    h.book(0, 100).await;
    wait_for("the first 100 bookings", Duration::from_secs(30), || {
        total(&store, "route/") == 100
    })
    .await;

    let second = h.start(h.settings("counter", "bookings"), &store, counter());
    wait_for(
        "the partitions to be split between both",
        Duration::from_secs(30),
        || first.positions.snapshot().len() == 2 && second.positions.snapshot().len() == 2,
    )
    .await;
    h.book(100, 100).await;
    wait_for("200 bookings", Duration::from_secs(30), || {
        total(&store, "route/") >= 200
    })
    .await;
    let second_applied = second.applied();
    assert!(
        second.positions.snapshot().values().any(|p| p.next > 0),
        "the second member applied records on its own partitions"
    );

    // The first stops mid-stream: bookings keep coming while the second takes over.
    let more = async {
        h.book(200, 50).await;
        first.stop().await;
        h.book(250, 50).await;
    };
    more.await;
    wait_for(
        "the second member to hold every partition",
        Duration::from_secs(30),
        || second.positions.snapshot().len() == 4,
    )
    .await;
    wait_for("all 300 bookings", Duration::from_secs(30), || {
        total(&store, "route/") >= 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        total(&store, "route/"),
        300,
        "every booking applied exactly once"
    );
    assert!(second.applied() > second_applied);
    wait_for(
        "lag to reach 0 on every partition",
        Duration::from_secs(10),
        || {
            second
                .positions
                .snapshot()
                .values()
                .all(|p| p.lag() == 0 && p.high_watermark > 0)
        },
    )
    .await;
    second.stop().await;

    let summary = h.replayed().await;
    assert_eq!(summary.applied, 300);
    assert_eq!(summary.digest, store.digest().expect("digest"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standbys_keep_the_tasks_they_do_not_own_warm_and_a_take_over_applies_each_record_once() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let with_standby = || {
        let mut settings = logged_counter(&h, None);
        settings.standby_replicas = 1;
        settings
    };
    let counter = || RouteCounter { emit_to: None };
    let (a, b) = (
        Store::temporary().expect("store"),
        Store::temporary().expect("store"),
    );
    let first = h.start(with_standby(), &a, counter());
    let second = h.start(with_standby(), &b, counter());
    wait_for("the tasks to be split", Duration::from_secs(30), || {
        first.positions.snapshot().len() == 2 && second.positions.snapshot().len() == 2
    })
    .await;
    h.book(0, 200).await;
    // Each store holds every booking: its own tasks' and a copy of the other's.
    wait_for(
        "both stores to hold all 200 bookings",
        Duration::from_secs(30),
        || total(&a, "route/") == 200 && total(&b, "route/") == 200,
    )
    .await;
    let (mine, theirs) = (owned_total(&a, &first), owned_total(&b, &second));
    assert_eq!(mine + theirs, 200);
    assert!(
        mine > 0 && theirs > 0,
        "each owns some: {mine} and {theirs}"
    );

    // The first dies; the second takes its tasks over from the copies and goes on.
    first.kill().await;
    survivor_applies_the_next_100_once(&h, &b, &second).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_with_their_own_stores_hand_tasks_over_through_the_changelog() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    // A second instance with an empty store joins: the tasks it gets come from the changelog.
    let ((a, first), (b, second)) = split_between_two(&h, None).await;
    assert!(
        owned_total(&b, &second) > 0,
        "the joining instance restored its tasks' counts"
    );
    assert_eq!(owned_total(&a, &first) + owned_total(&b, &second), 100);
    h.book(100, 100).await;
    wait_for("200 bookings over both", Duration::from_secs(30), || {
        owned_total(&a, &first) + owned_total(&b, &second) == 200
    })
    .await;

    // The first dies where it stands; the second restores the first's tasks and goes on.
    first.kill().await;
    survivor_applies_the_next_100_once(&h, &b, &second).await;
    second.stop().await;

    // A store is disposable: a third instance with an empty store gets the same state back.
    let c = Store::temporary().expect("store");
    let third = h.start(logged_counter(&h, None), &c, RouteCounter { emit_to: None });
    wait_for("the restored store", Duration::from_secs(30), || {
        third.positions.snapshot().len() == 4 && total(&c, "route/") == 300
    })
    .await;
    third.stop().await;
    assert_eq!(c.digest().expect("digest"), b.digest().expect("digest"));
    let summary = h.replayed().await;
    assert_eq!(summary.digest, c.digest().expect("digest"));
    h.shutdown().await;
}

/// A changelog partition's records from `from` to its end: (key, value).
fn changelog_from(h: &Harness, partition: i32, from: i64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let topic = "counter.changelog";
    let consumer = h.reader(topic, 0);
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let mut next = from;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next < high {
        assert!(Instant::now() < deadline, "the changelog read within 10 s");
        // Errors about the broker that is down are reported here too.
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        next = message.offset() + 1;
        records.push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().map(<[u8]>::to_vec),
        ));
    }
    records
}

fn changelog_ends(h: &Harness) -> Vec<i64> {
    let consumer = h.reader("counter.changelog", 0);
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks("counter.changelog", p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_is_marked_whole_in_the_changelog_only_once_the_events_it_emitted_are_written() {
    let _serial = SERIAL.lock().await;
    // The events go to broker 2, everything else to broker 1.
    let h = harness_on(2, |topic| if topic == "counted" { 2 } else { 1 }).await;
    let mock = h.broker.mock();
    mock.coordinator(MockCoordinator::Group("counter".into()), 1)
        .expect("coordinator");
    let store = Store::temporary().expect("store");
    let settings = h
        .settings("counter", "bookings")
        .with_changelog(&support::spec("counter.changelog"));
    let running = h.start(
        settings,
        &store,
        RouteCounter {
            emit_to: Some("counted"),
        },
    );
    h.book(0, 20).await;
    wait_for(
        "20 bookings applied and published",
        Duration::from_secs(30),
        || total(&store, "route/") == 20 && store.outbox().is_empty(),
    )
    .await;

    // Broker 2 goes away: the next commits' events cannot be written, their changelog could.
    let before = changelog_ends(&h);
    mock.broker_down(2).expect("down");
    h.book(20, 20).await;
    wait_for("40 bookings applied", Duration::from_secs(30), || {
        total(&store, "route/") == 40
    })
    .await;
    // Sent beside the events, the commits' keys and markers would be in within moments.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        changelog_ends(&h),
        before,
        "commits were logged while their events were not written"
    );
    assert!(!store.outbox().is_empty());

    // Broker 2 is back: the events are written, then the commits' keys and markers, and the
    // changelog restores the whole state.
    mock.broker_up(2).expect("up");
    wait_for("the outbox published", Duration::from_secs(60), || {
        store.outbox().is_empty()
    })
    .await;
    let mut marked = 0;
    for (partition, from) in before.iter().enumerate() {
        let records = changelog_from(&h, partition as i32, *from);
        if let Some((key, _)) = records.last() {
            assert_eq!(
                key.as_slice(),
                MARKER,
                "task {partition} ends in its marker"
            );
            marked += 1;
        }
    }
    assert!(marked > 0, "the bookings touched some task");
    let counted = h.reader("counted", 2);
    let mut events = std::collections::HashSet::new();
    while let Some(Ok(message)) = counted.poll(Duration::from_secs(2)) {
        events.insert(message.key().unwrap_or_default().to_vec());
    }
    assert_eq!(events.len(), 40, "every booking's event was written");
    // Closed while the broker still answers: closing against a dead one waits for time-outs.
    drop(counted);
    running.stop().await;
    let restored = Store::temporary().expect("store");
    let changelog = streams::store::Changelog {
        topic: "counter.changelog".into(),
        group: "counter".into(),
        inputs: vec!["bookings".into()],
    };
    tokio::task::block_in_place(|| {
        processor::restore_tasks(h.broker.bootstrap_servers(), &changelog, &restored, 0..4)
            .expect("restored")
    });
    assert_eq!(total(&restored, "route/"), 40);
    drop(mock);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_commits_the_offsets_of_the_tasks_it_holds_only() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    // The first store keeps the offsets of every task it applied, those it gives up too.
    let ((a, first), (b, second)) = split_between_two(&h, Some(Duration::from_millis(50))).await;

    // While bookings reach both, the second's partitions' committed offsets only go forward:
    // the first, committing as it applies its own, must not set them back to where its store
    // left them.
    let theirs: Vec<(String, i32)> = second.positions.snapshot().into_keys().collect();
    let committed = || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", h.broker.bootstrap_servers())
            .set("group.id", "counter")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &theirs {
            tpl.add_partition(topic, *partition);
        }
        let offsets = reader
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        theirs
            .iter()
            .map(|(topic, partition)| {
                offsets
                    .find_partition(topic, *partition)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1)
            })
            .collect::<Vec<i64>>()
    };
    let booking = tokio::spawn({
        let producer = h.producer.clone();
        async move {
            for i in 100..400 {
                let booked = Booked {
                    booking_id: format!("b{i:05}"),
                    route: "LIS-OPO".into(),
                };
                let _ = producer
                    .send("bookings", &booked, &Metadata::new(&booked.booking_id))
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let mut last = committed();
    let mut samples = 0;
    while !booking.is_finished() {
        let now = tokio::task::block_in_place(committed);
        for ((partition, before), after) in theirs.iter().zip(&last).zip(&now) {
            assert!(
                after >= before,
                "{partition:?}: the committed offset went back from {before} to {after}"
            );
        }
        last = now;
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 10, "sampled while the bookings flowed");
    wait_for("all 400 bookings", Duration::from_secs(30), || {
        owned_total(&a, &first) + owned_total(&b, &second) == 400
    })
    .await;
    first.stop().await;
    second.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_whose_changelog_cannot_hold_its_tasks_refuses_to_start_naming_it() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    // Four task partitions, and a changelog the cluster does not have (or has with fewer).
    let settings = h
        .settings("counter", "bookings")
        .with_changelog(&support::spec("counter.nowhere"));
    let store = Store::temporary().expect("store");
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        processor::run(
            settings,
            store,
            h.codec.clone(),
            RouteCounter { emit_to: None },
            Positions::default(),
            std::future::pending(),
        ),
    )
    .await
    .expect("it answers within 60 s");
    let error = outcome.expect_err("it refuses to start").to_string();
    assert!(error.contains("counter.nowhere"), "{error}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_killed_between_its_sled_commit_and_its_kafka_commit_applies_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    h.book(0, 100).await;
    let store = Store::temporary().expect("store");
    let mut settings = h.settings("counter", "bookings");
    // Never commit to Kafka while running: every applied record is past Kafka's offset.
    settings.commit_interval = Duration::from_secs(3600);
    let first = h.start(settings.clone(), &store, RouteCounter { emit_to: None });
    wait_for("100 bookings", Duration::from_secs(30), || {
        total(&store, "route/") == 100
    })
    .await;
    first.kill().await;

    let restarted = h.start(settings, &store, RouteCounter { emit_to: None });
    h.book(100, 50).await;
    wait_for("150 bookings", Duration::from_secs(30), || {
        total(&store, "route/") >= 150
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        total(&store, "route/"),
        150,
        "the restarted processor resumed at sled's offsets"
    );
    restarted.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_crashes_after_publishing_makes_a_duplicate_that_consumers_skip() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    // A service store whose record emitted one event, still in the outbox.
    let service = Store::temporary().expect("store");
    let mut effects = Effects::default();
    let cause = Metadata::new("b00001");
    let entry = streams::kafka::producer::record(
        &h.codec,
        "counted",
        &Counted {
            booking_id: "b00001".into(),
        },
        &Metadata::caused_by(&cause),
    )
    .await
    .expect("encodes");
    effects.emit(entry);
    commit_as_service(&service, "bookings", 0, &effects);
    // The relay published it, then crashed before clearing it...
    let (_, pending) = service.outbox().oldest(1).expect("outbox").remove(0);
    h.producer.send_record(&pending).await.expect("published");
    // ...so the restarted relay publishes it again.
    assert_eq!(service.outbox().len(), 1);
    let (_stop, stopped) = tokio::sync::watch::channel(true);
    tokio::time::timeout(
        Duration::from_secs(30),
        outbox::relay(service.outbox().clone(), h.producer.clone(), None, stopped),
    )
    .await
    .expect("the relay publishes the entry and stops");
    assert!(service.outbox().oldest(10).expect("outbox").is_empty());

    let consumer_store = Store::temporary().expect("store");
    let consumer = h.start(h.settings("seen", "counted"), &consumer_store, SeenCounter);
    wait_for("both copies read", Duration::from_secs(30), || {
        consumer
            .positions
            .snapshot()
            .values()
            .map(|p| p.next)
            .sum::<i64>()
            >= 2
    })
    .await;
    assert_eq!(
        total(&consumer_store, "seen/"),
        1,
        "the duplicate was skipped"
    );
    consumer.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_publishes_every_entry_once_in_commit_order_and_drains_before_it_stops() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let service = Store::temporary().expect("store");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(outbox::relay(
        service.outbox().clone(),
        h.producer.clone(),
        None,
        stopped,
    ));
    // 2,000 events of one booking (one partition), committed while the relay runs, in
    // transactions of 1 to 7 events.
    let mut sequence = 0;
    let mut offset = 0;
    while sequence < 2_000 {
        let mut effects = Effects::default();
        for _ in 0..(offset % 7 + 1).min(2_000 - sequence) {
            let booked = Booked {
                booking_id: "b00001".into(),
                route: sequence.to_string(),
            };
            let entry = streams::kafka::producer::record(
                &h.codec,
                "bookings",
                &booked,
                &Metadata::new("b00001"),
            )
            .await
            .expect("encodes");
            effects.emit(entry);
            sequence += 1;
        }
        commit_as_service(&service, "input", offset, &effects);
        offset += 1;
    }
    // Asked to stop at once: it still publishes everything left before it returns.
    stop.send(true).expect("relay listening");
    tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("the relay drained its outbox within 30 s")
        .expect("joined");
    assert!(service.outbox().oldest(1).expect("outbox").is_empty());

    let consumer = h.reader("bookings", 4);
    let mut routes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while routes.len() < 2_000 && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let booked: Booked = h
            .codec
            .decode(message.payload().unwrap_or_default())
            .await
            .expect("decodes");
        routes.push(booked.route.parse::<usize>().expect("a number"));
    }
    let expected: Vec<usize> = (0..2_000).collect();
    assert_eq!(routes, expected, "every event once, in commit order");
    drop(consumer);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_processed_again_after_their_transactions_were_lost_emit_the_same_event_ids() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    h.book(0, 20).await;
    let mut settings = h.settings("svc", "bookings");
    // No Kafka commits: the rerun below must start from the beginning.
    settings.commit_interval = Duration::from_secs(3600);
    let emitting = || RouteCounter {
        emit_to: Some("counted"),
    };
    let published = |store: &Store| {
        total(store, "route/") == 20 && store.outbox().oldest(1).expect("outbox").is_empty()
    };
    // The service applies every booking and its relay publishes what they emitted...
    let lost = Store::temporary().expect("store");
    let first = h.start(settings.clone(), &lost, emitting());
    wait_for(
        "20 bookings applied and relayed",
        Duration::from_secs(30),
        || published(&lost),
    )
    .await;
    first.kill().await;
    // ...then a crash loses the transactions (sled had not flushed them): the service starts
    // over on a store whose durable offsets are before them (Kafka's committed offsets, which
    // the consumer's close wrote, do not count: sled's win), applies every booking again and
    // emits again.
    let rebuilt = Store::temporary().expect("store");
    for partition in 0..4 {
        let before_the_first = Position {
            group: "svc",
            topic: "bookings",
            partition,
            offset: -1,
        };
        let mut batch = Batch::default();
        batch.add(&before_the_first, Scope::Task(0), None, Effects::default());
        rebuilt.commit(&batch, Writers::Shared).expect("commit");
    }
    let second = h.start(settings, &rebuilt, emitting());
    wait_for("20 bookings applied again", Duration::from_secs(30), || {
        published(&rebuilt)
    })
    .await;
    second.stop().await;

    // Downstream sees 40 records carrying 20 event ids, and applies each once.
    let downstream = Store::temporary().expect("store");
    let consumer = h.start(h.settings("seen", "counted"), &downstream, SeenCounter);
    wait_for("all 40 records read", Duration::from_secs(30), || {
        consumer.applied() >= 40
    })
    .await;
    assert_eq!(
        total(&downstream, "seen/"),
        20,
        "the second emission of each event was skipped"
    );
    consumer.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dead_letter_topic_and_good_ones_around_them_are_applied() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let good = |id: &str| Booked {
        booking_id: id.into(),
        route: "LIS-OPO".into(),
    };
    let framed = h
        .codec
        .encode("bookings", &good("x"))
        .await
        .expect("encodes");
    let raw = |payload: Vec<u8>| streams::kafka::OutgoingRecord {
        partition: None,
        topic: "bookings".into(),
        key: b"poison".to_vec(),
        payload: Some(payload),
        headers: vec![],
    };
    h.producer
        .send("bookings", &good("b1"), &Metadata::new("b1"))
        .await
        .expect("sent");
    let poisons = [
        (raw(b"{\"not\": \"avro\"}".to_vec()), "decode"),
        (raw(vec![0, 0, 0, 3, 231, 2, 0]), "unknown-schema"),
        (raw([&framed[..5], &[0x80, 0x80, 0x80]].concat()), "decode"),
        (raw(Vec::new()), "empty"),
    ];
    for (entry, _) in &poisons {
        h.producer.send_record(entry).await.expect("sent");
    }
    let no_route = Booked {
        booking_id: "b2".into(),
        route: String::new(),
    };
    h.producer
        .send("bookings", &no_route, &Metadata::new("b2"))
        .await
        .expect("sent");
    h.producer
        .send("bookings", &good("b3"), &Metadata::new("b3"))
        .await
        .expect("sent");

    let store = Store::temporary().expect("store");
    let running = h.start(
        h.settings("counter", "bookings"),
        &store,
        RouteCounter { emit_to: None },
    );
    wait_for("the good bookings", Duration::from_secs(30), || {
        total(&store, "route/") == 2
    })
    .await;

    let dlq = h.reader("bookings.dlq", 1);
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kinds.len() < 5 && Instant::now() < deadline {
        let Some(Ok(message)) = dlq.poll(Duration::from_millis(200)) else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default()
        };
        assert_eq!(header(processor::dead_letter::TOPIC), "bookings");
        assert_eq!(header(processor::dead_letter::GROUP), "counter");
        assert!(!header(processor::dead_letter::MESSAGE).is_empty());
        assert!(
            header(processor::dead_letter::OFFSET)
                .parse::<i64>()
                .is_ok()
        );
        assert!(
            header(processor::dead_letter::PARTITION)
                .parse::<i32>()
                .is_ok()
        );
        kinds.push(header(processor::dead_letter::KIND));
    }
    kinds.sort();
    let mut expected: Vec<String> = poisons
        .iter()
        .map(|(_, k)| (*k).to_owned())
        .chain(["invalid".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(kinds, expected);
    // Closed while its broker is still up: closing against a dead one waits for time-outs.
    drop(dlq);
    running.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_faults_lose_nothing_and_apply_nothing_twice() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let store = Store::temporary().expect("store");
    let running = h.start(
        h.settings("counter", "bookings"),
        &store,
        RouteCounter {
            emit_to: Some("counted"),
        },
    );
    h.book(0, 30).await;
    let mock = h.broker.mock();
    mock.broker_round_trip_time(1, Duration::from_millis(40))
        .expect("rtt");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    h.book(30, 30).await;
    mock.broker_down(1).expect("down");
    let sender = {
        let producer = h.producer.clone();
        tokio::spawn(async move {
            for i in 60..90 {
                let booked = Booked {
                    booking_id: format!("b{i:05}"),
                    route: "LIS-OPO".into(),
                };
                while producer
                    .send("bookings", &booked, &Metadata::new(&booked.booking_id))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("up");
    sender.await.expect("sender finished");
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    wait_for("90 bookings", Duration::from_secs(60), || {
        total(&store, "route/") >= 90
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&store, "route/"), 90, "each booking applied once");

    // Every emitted event reached the output, once per booking after dedupe.
    let seen = Store::temporary().expect("store");
    let reader = h.start(h.settings("seen", "counted"), &seen, SeenCounter);
    wait_for("90 counted events", Duration::from_secs(60), || {
        seen.scan(b"seen/").map(|s| s.len()).unwrap_or(0) >= 90
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(total(&seen, "seen/"), 90);
    running.stop().await;
    reader.stop().await;
    drop(mock);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_told_to_stop_while_the_broker_is_away_keeps_its_outbox_and_returns() {
    let service = Store::temporary().expect("store");
    let mut effects = Effects::default();
    for n in 0..2u8 {
        effects.emit(streams::kafka::OutgoingRecord {
            partition: None,
            topic: "bookings".into(),
            key: vec![n],
            payload: Some(vec![0, 0, 0, 0, 1, n]),
            headers: vec![],
        });
    }
    commit_as_service(&service, "input", 0, &effects);
    // Nothing listens on port 1; each send fails after half a second.
    let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
    let producer = Producer::new(
        "127.0.0.1:1",
        codec,
        &[("message.timeout.ms".into(), "500".into())],
    )
    .expect("producer");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(outbox::relay(
        service.outbox().clone(),
        producer,
        None,
        stopped,
    ));
    stop.send(true).expect("relay listening");
    tokio::time::timeout(Duration::from_secs(20), relay)
        .await
        .expect("the relay returned on its own instead of retrying forever")
        .expect("joined");
    assert_eq!(
        service.outbox().len(),
        2,
        "nothing was cleared that was not sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_stopped_while_a_dead_letter_cannot_be_written_keeps_the_record_for_its_next_start()
 {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    let poison = streams::kafka::OutgoingRecord {
        partition: None,
        topic: "bookings".into(),
        key: b"poison".to_vec(),
        payload: Some(Vec::new()),
        headers: vec![],
    };
    let at = h.producer.send_record(&poison).await.expect("sent");
    let store = Store::temporary().expect("store");
    // The broker refuses the next writes: the dead letter cannot be written for a while.
    let mock = h.broker.mock();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 8],
    );
    let running = h.start(
        h.settings("counter", "bookings"),
        &store,
        RouteCounter { emit_to: None },
    );
    wait_for("the record to be assigned", Duration::from_secs(30), || {
        running.positions.snapshot().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    let next = store
        .next_offset("counter", "bookings", at.partition)
        .expect("offset");
    assert!(
        next.is_none_or(|next| next <= at.offset),
        "the offset stayed at the record ({next:?}, record at {})",
        at.offset
    );

    let again = h.start(
        h.settings("counter", "bookings"),
        &store,
        RouteCounter { emit_to: None },
    );
    let dlq = h.reader("bookings.dlq", 1);
    let mut dead = None;
    // The broker refuses a few more writes before it takes the dead letter.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead.is_none() && Instant::now() < deadline {
        if let Some(Ok(message)) = dlq.poll(Duration::from_millis(200)) {
            dead = Some(message.key().map(<[u8]>::to_vec));
        }
    }
    assert_eq!(
        dead,
        Some(Some(b"poison".to_vec())),
        "dead-lettered on the next start"
    );
    drop(dlq);
    again.stop().await;
    drop(mock);
    h.shutdown().await;
}

/// A replay shares its tasks out over a consumer per core, but a global table, every partition
/// of which writes the same keys, is read by one: two shares counting into one key unchecked
/// would each write their own count over the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_table_replayed_on_several_cores_loses_no_update() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    h.book_unbounded(0, 300).await;
    let both = |globals: &'static [&'static str], tasks: &'static [&'static str]| {
        let h = &h;
        async move {
            let store = Store::temporary().expect("store");
            let summary = replay::replay(
                h.broker.bootstrap_servers(),
                replay::Inputs { tasks, globals },
                &Start::Beginning,
                &store,
                &h.codec,
                &RouteCounter { emit_to: None },
                |_| {},
            )
            .await
            .expect("replay");
            (summary, store)
        }
    };

    let (summary, store) = both(&["bookings"], &[]).await;
    assert_eq!(summary.applied, 300);
    let counted: u64 = ["LIS-OPO", "LIS-FAO", "OPO-FAO"]
        .iter()
        .map(|route| {
            let value = store
                .get_in(Scope::Global, format!("route/{route}").as_bytes())
                .expect("read")
                .expect("a count per route");
            String::from_utf8(value)
                .expect("utf-8")
                .parse::<u64>()
                .expect("a count")
        })
        .sum();
    assert_eq!(
        counted, 300,
        "every booking counted once in the global table"
    );

    // Read as tasks, the same records are counted per partition, across the shares.
    let (summary, store) = both(&[], &["bookings"]).await;
    assert_eq!(summary.applied, 300);
    let per_task: u64 = (0..4)
        .flat_map(|task| {
            let store = &store;
            ["LIS-OPO", "LIS-FAO", "OPO-FAO"]
                .into_iter()
                .map(move |route| {
                    store
                        .get_in(Scope::Task(task), format!("route/{route}").as_bytes())
                        .expect("read")
                        .map_or(0, |v| {
                            String::from_utf8(v)
                                .expect("utf-8")
                                .parse::<u64>()
                                .expect("a count")
                        })
                })
        })
        .sum();
    assert_eq!(per_task, 300, "every booking counted once in its task");
    h.shutdown().await;
}

/// The records and marker offsets of every partition of `topic`: what its watermarks span.
fn offsets_in(h: &Harness, topic: &str, partitions: i32) -> i64 {
    let consumer = h.reader(topic, partitions);
    (0..partitions)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// Ends each of `topic`'s `partitions` with a transaction's commit marker, as a transactional
/// producer's commit leaves one: an offset no consumer is handed.
fn end_in_markers(h: &Harness, topic: &str, partitions: i32) {
    for partition in 0..partitions {
        support::marker::append_commit_marker(
            h.broker.bootstrap_servers(),
            topic,
            partition,
            4_000,
        );
    }
}

#[test]
fn the_markers_checksum_is_crc32c() {
    // CRC-32C's check value.
    assert_eq!(support::marker::crc32c(b"123456789"), 0xe306_9283);
}

/// A replay reads each partition to the end it had at the start; when the last offset before
/// that end is a marker, the consumer's position passing it is the end, not a record. (Without
/// that, the replay fails after 30 s without a record.) Read with a second topic, records are
/// applied in timestamp order across the two, and a partition holding only a marker ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_to_an_end_that_is_a_transaction_marker() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    h.book(0, 40).await;
    h.producer
        .send(
            "counted",
            &Counted {
                booking_id: "c1".into(),
            },
            &Metadata::new("c1"),
        )
        .await
        .expect("sent");
    end_in_markers(&h, "bookings", 4);
    end_in_markers(&h, "counted", 2);
    // Without the markers this test could not fail.
    assert_eq!(
        offsets_in(&h, "bookings", 4),
        44,
        "40 records and 4 markers"
    );
    assert_eq!(offsets_in(&h, "counted", 2), 3, "a record and 2 markers");

    let summary = h.replayed().await;
    assert_eq!((summary.applied, summary.skipped), (40, 0));

    // The route counter cannot decode the count request as a booking: skipped, as the live
    // service would dead-letter it.
    let two = h.replayed_from(&["bookings", "counted"]).await;
    assert_eq!((two.applied, two.skipped), (40, 1));
    assert_eq!(
        two.digest, summary.digest,
        "the same state from the bookings"
    );
    h.shutdown().await;
}

/// Notes, for each count request, how many LIS-OPO bookings its instance's global table held.
struct RoutesSeen;

impl Handler for RoutesSeen {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        if record.topic == "bookings" {
            let booked: Booked = ctx.decode(record).await?;
            return add_one(ctx, format!("route/{}", booked.route));
        }
        let counted: Counted = ctx.decode(record).await?;
        let held = ctx.get_global(b"route/LIS-OPO")?.unwrap_or_default();
        ctx.put(format!("seen/{}", counted.booking_id).into_bytes(), held);
        Ok(())
    }
}

/// A processor reads its global tables to their ends before any task's record; a table whose
/// partitions end in markers is read to them, and the tasks' records go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_table_ending_in_transaction_markers_is_read_and_the_tasks_go_on() {
    let _serial = SERIAL.lock().await;
    let h = harness().await;
    h.book(0, 30).await;
    end_in_markers(&h, "bookings", 4);
    assert_eq!(
        offsets_in(&h, "bookings", 4),
        34,
        "30 records and 4 markers"
    );

    let settings = h
        .settings("routes-seen", "counted")
        .with_globals(&[&support::spec("bookings")]);
    let store = Store::temporary().expect("store");
    let running = h.start(settings, &store, RoutesSeen);
    for id in ["c1", "c2"] {
        h.producer
            .send(
                "counted",
                &Counted {
                    booking_id: id.into(),
                },
                &Metadata::new(id),
            )
            .await
            .expect("sent");
    }
    let seen = |id: &str| store.get(format!("seen/{id}").as_bytes()).expect("read");
    wait_for(
        "both count requests processed",
        Duration::from_secs(60),
        || seen("c1").is_some() && seen("c2").is_some(),
    )
    .await;
    for id in ["c1", "c2"] {
        assert_eq!(
            seen(id).as_deref(),
            Some(b"10".as_slice()),
            "{id} saw the whole table"
        );
    }
    running.stop().await;
    h.shutdown().await;
}
