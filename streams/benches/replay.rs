//! Replay and changelog restore against raw consumers reading the same records, each measured
//! on a thread of its own so that a profiler can tell them apart.
//!
//! Run with `cargo bench -p tripstream-streams --bench replay [-- EVENTS]` (default 200,000
//! events and as many changelog records). For instruction counts per record, run the built
//! binary under `valgrind --tool=callgrind --separate-threads=yes` with a smaller count: the
//! threads named `replay`, `restore`, `raw-replay` and `raw-restore` hold the measured work.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use streams::codec::{Codec, Event};
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::{Metadata, OutgoingRecord, Producer};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::replay::{self, Start};
use streams::store::Store;
use streams::store::changelog::{Changelog, MARKER};

const SCHEMA: &str = include_str!("../../schemas/tripstream.booking.BookingRequested.avsc");
const EVENTS: &str = "bench.events";
const CHANGELOG: &str = "bench.changelog";
/// As `tripstream bench replay`: the mock keeps only a few MiB per partition.
const PARTITIONS: i32 = 64;
/// Changelog keys per commit, each commit followed by its marker.
const COMMIT_KEYS: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FlightSelection {
    flight_id: String,
    seats: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HotelSelection {
    hotel_id: String,
    check_in: i32,
    check_out: i32,
    rooms: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BookingRequested {
    booking_id: String,
    user_id: String,
    flight: FlightSelection,
    hotel: HotelSelection,
    extras: Vec<serde_json::Value>,
    requested_at: i64,
}

impl Event for BookingRequested {
    const SCHEMA: &'static str = SCHEMA;

    fn key(&self) -> String {
        self.booking_id.clone()
    }
}

fn booking(i: usize) -> BookingRequested {
    BookingRequested {
        booking_id: format!("{i:08x}-4a57-4c1e-9d59-1f6e7b2a9c10"),
        user_id: "5e0c9a3b-77d2-4f0e-8a41-c2d9f1b3e6a7".into(),
        flight: FlightSelection {
            flight_id: format!("LH{}", 1000 + i % 50),
            seats: 1 + (i % 3) as i32,
        },
        hotel: HotelSelection {
            hotel_id: format!("hotel-{}", i % 40),
            check_in: 20_423,
            check_out: 20_426,
            rooms: 1,
        },
        extras: Vec::new(),
        requested_at: 1_764_000_000_000 + i as i64,
    }
}

/// Counts bookings per flight, as `tripstream bench replay`'s handler does.
struct PerFlight;

impl Handler for PerFlight {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let booking: BookingRequested = ctx.decode(record).await?;
        let key = format!("flight/{}", booking.flight.flight_id);
        let n = match ctx.get(key.as_bytes())? {
            None => 0,
            Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| {
                HandlerError::Store(streams::Error::Store(format!("{key} is not a count")))
            })?),
        };
        ctx.put(key, (n + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

/// Runs `f` on a new thread called `name` (what the profiler's per-thread output is named by).
fn on_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    #[allow(clippy::expect_used)] // A bench: a failure to start a thread ends it.
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("thread")
        .join()
        .expect("the measured thread panicked")
}

/// Reads every record of `topic` with a bare consumer, counting them: records/s.
///
/// Each `measure_` function is one measured phase, never inlined, so that callgrind can dump
/// its counts on its own (`--dump-before='*measure_*' --dump-after='*measure_*'`).
#[inline(never)]
fn measure_raw(bootstrap: &str, topic: &str) -> f64 {
    #[allow(clippy::expect_used)] // A bench: a broker that cannot be read ends it.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let began = Instant::now();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..PARTITIONS {
        #[allow(clippy::expect_used)]
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        remaining += high - low;
        #[allow(clippy::expect_used)]
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    #[allow(clippy::expect_used)]
    consumer.assign(&tpl).expect("assign");
    let total = remaining;
    while remaining > 0 {
        #[allow(clippy::expect_used)]
        consumer
            .poll(Duration::from_secs(5))
            .expect("the raw consumer stalled")
            .expect("a record");
        remaining -= 1;
    }
    total as f64 / began.elapsed().as_secs_f64()
}

/// Replays [`EVENTS`] into an empty store: records/s.
#[inline(never)]
#[allow(clippy::expect_used)] // A bench: any failure ends it.
fn measure_replay(bootstrap: &str, codec: &Codec) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Store::temporary().expect("store");
    let summary = runtime
        .block_on(replay::replay(
            bootstrap,
            replay::Inputs::tasks(&[EVENTS]),
            &Start::Beginning,
            &store,
            codec,
            &PerFlight,
            |_| {},
        ))
        .expect("replayed");
    summary.applied as f64 / summary.elapsed.as_secs_f64()
}

/// Restores every task of [`CHANGELOG`] into an empty store: records/s.
#[inline(never)]
#[allow(clippy::expect_used)] // A bench: any failure ends it.
fn measure_restore(bootstrap: &str) -> f64 {
    let changelog = Changelog {
        topic: CHANGELOG.into(),
        group: "bench".into(),
        inputs: vec![EVENTS.into()],
    };
    let store = Store::temporary().expect("store");
    let began = Instant::now();
    let records = streams::processor::restore_tasks(bootstrap, &changelog, &store, 0..PARTITIONS)
        .expect("restored");
    records as f64 / began.elapsed().as_secs_f64()
}

/// A task's changelog as commits write it: `records` changes of keys cycling over a few
/// thousand, every 16th a tombstone, a marker after every [`COMMIT_KEYS`].
fn changelog_records(task: i32, records: usize) -> Vec<OutgoingRecord> {
    let record = |key: Vec<u8>, payload: Option<Vec<u8>>| OutgoingRecord {
        topic: CHANGELOG.into(),
        partition: Some(task),
        key,
        payload,
        headers: Vec::new(),
    };
    let mut out = Vec::with_capacity(records + records / COMMIT_KEYS + 1);
    for i in 0..records {
        let key = format!("saga/{task:04}-{:05}", i % 4_096).into_bytes();
        let value = (i % 16 != 15)
            .then(|| format!(r#"{{"status":"reserved","seats":{},"at":{i}}}"#, i % 7).into_bytes());
        out.push(record(key, value));
        if (i + 1) % COMMIT_KEYS == 0 || i + 1 == records {
            let marker = format!(r#"{{"bench.events":{}}}"#, i + 1).into_bytes();
            out.push(record(MARKER.to_vec(), Some(marker)));
        }
    }
    out
}

#[allow(clippy::expect_used)] // A bench: any failure ends it.
fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let broker = EmbeddedBroker::start(1).expect("broker");
    broker
        .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
        .expect("_schemas");
    broker.create_topic(EVENTS, PARTITIONS, 1).expect("topic");
    broker
        .create_topic(CHANGELOG, PARTITIONS, 1)
        .expect("topic");
    let running = runtime
        .block_on(registry::start(registry::Settings::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            broker.bootstrap_servers(),
        )))
        .expect("registry");
    let codec = Codec::new(streams::registry::Client::new(&running.url()).expect("client"));
    let bootstrap = broker.bootstrap_servers().to_owned();
    let producer = Producer::new(&bootstrap, codec.clone(), &[]).expect("producer");
    eprintln!("Writing {events} events and {events} changelog records...");
    runtime.block_on(async {
        // The first send registers the schema; the rest go 5,000 at a time.
        let first = booking(0);
        producer
            .send(EVENTS, &first, &Metadata::new(first.booking_id.as_str()))
            .await
            .expect("sent");
        for chunk in (1..events).collect::<Vec<_>>().chunks(5_000) {
            let sends = chunk.iter().map(|i| {
                let event = booking(*i);
                let producer = &producer;
                async move {
                    let metadata = Metadata::new(event.booking_id.as_str());
                    producer.send(EVENTS, &event, &metadata).await
                }
            });
            for sent in futures::future::join_all(sends).await {
                sent.expect("sent");
            }
        }
        let per_task = events / PARTITIONS as usize;
        let logs: Vec<_> = (0..PARTITIONS)
            .map(|task| changelog_records(task, per_task))
            .collect();
        // Interleaved, a commit of each task in turn, as a processor's relay publishes them.
        let longest = logs.iter().map(Vec::len).max().unwrap_or(0);
        let step = COMMIT_KEYS + 1;
        for first in (0..longest).step_by(step * 16) {
            let sends = (first..(first + step * 16).min(longest))
                .step_by(step)
                .flat_map(|at| {
                    logs.iter()
                        .flat_map(move |log| log.iter().skip(at).take(step))
                });
            let sends = sends.map(|r| producer.send_record(r));
            for sent in futures::future::join_all(sends).await {
                sent.expect("sent");
            }
        }
    });

    let raw = {
        let bootstrap = bootstrap.clone();
        on_thread("raw-replay", move || measure_raw(&bootstrap, EVENTS))
    };
    let rate = {
        let (bootstrap, codec) = (bootstrap.clone(), codec.clone());
        on_thread("replay", move || measure_replay(&bootstrap, &codec))
    };
    println!("replay:  raw {raw:>9.0} records/s, replay  {rate:>9.0} records/s");
    let replay_ratio = rate / raw;

    let raw = {
        let bootstrap = bootstrap.clone();
        on_thread("raw-restore", move || measure_raw(&bootstrap, CHANGELOG))
    };
    let rate = on_thread("restore", move || measure_restore(&bootstrap));
    println!("restore: raw {raw:>9.0} records/s, restore {rate:>9.0} records/s");
    drop(running);
    println!(
        "ratio: replay {replay_ratio:.2} of raw, restore {:.2} of raw",
        rate / raw
    );
}
