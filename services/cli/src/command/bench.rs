//! `tripstream bench`: whole-system figures on the embedded broker, each against a baseline
//! measured in the same run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use streams::codec::{Codec, Event};
use streams::kafka::OutgoingRecord;
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::replay::{self, Start};
use streams::store::Store;
use streams::store::changelog::{Changelog, MARKER};

/// Subcommands of `tripstream bench`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Typed events through the whole produce path against raw rdkafka sending the same
    /// pre-encoded bytes, on the same embedded broker.
    Produce {
        /// How many events each side sends per round (fewer make the rounds noisier).
        #[arg(long, default_value_t = 500_000)]
        events: usize,
    },
    /// Rebuilding a store from a topic, then restoring tasks from a changelog of as many
    /// records, each against a raw consumer that only counts the same records.
    Replay {
        /// How many events the topic holds.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Confirmed bookings per second through the whole saga (every service in one process),
    /// then the latency at half that rate, against raw rdkafka's message rate.
    /// Exits 1 if a consistency check fails after it.
    Saga {
        /// Bookings sent at once for the throughput figure.
        #[arg(long, default_value_t = 10_000)]
        bookings: usize,
        /// How long the latency run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bookings per second in the latency run [default: half the measured throughput].
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Two instances of each service under steady load, one of each killed: time until its
    /// tasks are processed again, latency through the fail-over, restore speed against a raw
    /// consumer, and confirmed bookings/s with one and with two instances.
    /// Exits 1 if a consistency check fails after it.
    Failover {
        /// Bookings sent at once for each throughput figure.
        #[arg(long, default_value_t = 5_000)]
        bookings: usize,
        /// How long the steady load lasts; the kill comes a third of the way in.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Bookings per second of the steady load.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Warm copies every instance keeps of the tasks the other owns, so the survivor of
        /// the kill has the dead instance's state already (0: it restores from changelogs).
        #[arg(long, default_value_t = 0)]
        standby_replicas: usize,
    },
}

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
    const SCHEMA: &'static str =
        include_str!("../../../../schemas/tripstream.booking.BookingRequested.avsc");

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

/// Counts bookings per flight: a store rebuilt with real decoding and state writes.
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

struct Bench {
    broker: EmbeddedBroker,
    registry: registry::Running,
    codec: Codec,
}

async fn setup(partitions: i32) -> anyhow::Result<Bench> {
    let broker = EmbeddedBroker::start(1)?;
    broker.create_topic(registry::SCHEMAS_TOPIC, 1, 1)?;
    // Many partitions: the mock keeps only a few MiB per partition.
    broker.create_topic("bench.typed", partitions, 1)?;
    broker.create_topic("bench.raw", partitions, 1)?;
    let registry = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await?;
    let codec = Codec::new(streams::registry::Client::new(&registry.url())?);
    Ok(Bench {
        broker,
        registry,
        codec,
    })
}

/// Sends ready-made events through the typed producer (encode, headers, idempotent send),
/// 5,000 in flight at a time; returns events/s.
async fn produce_typed(
    producer: &Producer,
    events: &[(BookingRequested, Metadata)],
) -> anyhow::Result<f64> {
    let start = Instant::now();
    for chunk in events.chunks(5_000) {
        let sends = chunk.iter().map(|(event, metadata)| async move {
            producer.send("bench.typed", event, metadata).await
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
    }
    Ok(events.len() as f64 / start.elapsed().as_secs_f64())
}

/// An event with the metadata a caller hands the producer along with it.
fn booking_with_metadata(i: usize) -> (BookingRequested, Metadata) {
    let event = booking(i);
    let metadata = Metadata::new(event.booking_id.as_str());
    (event, metadata)
}

/// Writes `count` generated events through the typed producer, a chunk at a time.
async fn produce_generated(producer: &Producer, count: usize) -> anyhow::Result<()> {
    for first in (0..count).step_by(50_000) {
        let events: Vec<_> = (first..count.min(first + 50_000))
            .map(booking_with_metadata)
            .collect();
        produce_typed(producer, &events).await?;
    }
    Ok(())
}

/// Sends pre-encoded bytes with the same headers through raw rdkafka, the fastest way it
/// offers (queue a chunk without waiting, then await the acks); returns events/s.
async fn produce_raw(raw: &FutureProducer, payloads: &[OutgoingRecord]) -> anyhow::Result<f64> {
    let start = Instant::now();
    for chunk in payloads.chunks(5_000) {
        let sends = chunk.iter().map(
            |OutgoingRecord {
                 key,
                 payload,
                 headers,
                 ..
             }| {
                let mut owned = OwnedHeaders::new_with_capacity(headers.len());
                for (k, v) in headers {
                    owned = owned.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                raw.send_result(
                    FutureRecord::to("bench.raw")
                        .key(key)
                        .payload(payload.as_deref().unwrap_or_default())
                        .headers(owned),
                )
                .map_err(|(e, _)| e)
            },
        );
        let sends: Vec<_> = sends.collect::<Result<_, _>>()?;
        for result in futures::future::join_all(sends).await {
            result?.map_err(|(e, _)| e)?;
        }
    }
    Ok(payloads.len() as f64 / start.elapsed().as_secs_f64())
}

fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Rounds of `bench produce`, raw and typed in turn.
const PRODUCE_ROUNDS: usize = 5;

/// Runs a bench and prints its figures; the last line is the ratio.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Produce { events } => {
            let bench = setup(16).await?;
            let producer =
                Producer::new(bench.broker.bootstrap_servers(), bench.codec.clone(), &[])?;
            // Warm-up: registers the schema and fills the codec's caches.
            produce_generated(&producer, 1_000).await?;
            let id = bench
                .codec
                .writer_id::<BookingRequested>("bench.typed")
                .await?;
            let payloads: Vec<_> = (0..events)
                .map(|i| {
                    let event = booking(i);
                    let payload = bench
                        .codec
                        .encode_with_id(id, &event)
                        .map_err(anyhow::Error::from)?;
                    let mut metadata = Metadata::new(event.booking_id.clone());
                    metadata.event_type = Some("tripstream.booking.BookingRequested".into());
                    Ok(OutgoingRecord {
                        partition: None,
                        topic: "bench.raw".into(),
                        key: event.booking_id.into_bytes(),
                        payload: Some(payload),
                        headers: metadata.to_pairs(),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            // Both sides start from ready input: raw from encoded records with their headers,
            // typed from events with their metadata (event ids drawn beforehand, as the raw
            // side's were).
            let typed: Vec<_> = (0..events).map(booking_with_metadata).collect();
            let raw: FutureProducer =
                streams::kafka::producer::client_config(bench.broker.bootstrap_servers(), &[])
                    .create()?;
            // Warm-up, as the typed side had: connections, producer id, partition leaders.
            produce_raw(&raw, &payloads[..payloads.len().min(1_000)]).await?;
            // Rounds alternate so both sides see the same moments of a shared machine; each
            // side's best round counts (what the code can do, not what a neighbour allowed).
            let (mut raw_best, mut typed_best) = (0f64, 0f64);
            for round in 1..=PRODUCE_ROUNDS {
                let raw_rate = produce_raw(&raw, &payloads).await?;
                let typed_rate = produce_typed(&producer, &typed).await?;
                println!(
                    "round {round}: raw rdkafka {raw_rate:>9.0} events/s, typed {typed_rate:>9.0} events/s ({:.2})",
                    typed_rate / raw_rate
                );
                raw_best = raw_best.max(raw_rate);
                typed_best = typed_best.max(typed_rate);
            }
            println!("raw rdkafka, pre-encoded: {raw_best:>10.0} events/s (best round)");
            println!(
                "tripstream typed produce: {typed_best:>10.0} events/s (best round; encode + headers + idempotent send)"
            );
            println!("ratio: {:.2} of raw", typed_best / raw_best);
            bench.registry.stop().await?;
        }
        Command::Saga {
            bookings,
            seconds,
            rate,
        } => {
            if !super::saga_bench::run(bookings, seconds, rate).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Failover {
            bookings,
            seconds,
            rate,
            standby_replicas,
        } => {
            if !super::failover_bench::run(bookings, seconds, rate, standby_replicas).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Replay { events } => {
            let bench = setup(REPLAY_PARTITIONS).await?;
            let producer =
                Producer::new(bench.broker.bootstrap_servers(), bench.codec.clone(), &[])?;
            eprintln!("Writing {events} events...");
            produce_generated(&producer, events).await?;
            eprintln!("Writing a changelog of {events} changes...");
            bench.broker.create_topic(CHANGELOG, REPLAY_PARTITIONS, 1)?;
            write_changelog(&producer, events / REPLAY_PARTITIONS as usize).await?;
            let bootstrap = bench.broker.bootstrap_servers().to_owned();

            // Each round reads with the raw consumer and then with tripstream, so each ratio
            // compares two reads a few seconds apart on this shared machine; the raw consumer
            // alone swung 2x between rounds minutes apart.
            let (mut replays, mut restores) = (Vec::new(), Vec::new());
            let mut digest = None;
            for round in 1..=REPLAY_ROUNDS {
                eprintln!("Round {round} of {REPLAY_ROUNDS}...");
                let raw = read_raw(&bootstrap, "bench.typed").await?;
                let (replayed, replay_digest) = replay_once(&bench).await?;
                if *digest.get_or_insert_with(|| replay_digest.clone()) != replay_digest {
                    anyhow::bail!(
                        "round {round}'s replay has digest {replay_digest}, an earlier one had {}",
                        digest.unwrap_or_default()
                    );
                }
                let raw_log = read_raw(&bootstrap, CHANGELOG).await?;
                let restored = {
                    let bootstrap = bootstrap.clone();
                    tokio::task::spawn_blocking(move || restore_all(&bootstrap)).await??
                };
                println!(
                    "round {round}: replay {} vs raw {} ({:.2}); restore {} vs raw {} ({:.2})",
                    replayed.describe(),
                    raw.describe(),
                    replayed.rate() / raw.rate(),
                    restored.describe(),
                    raw_log.describe(),
                    restored.rate() / raw_log.rate(),
                );
                replays.push((raw, replayed));
                restores.push((raw_log, restored));
            }
            let records =
                |pairs: &[(Read, Read)]| pairs.first().map_or(0, |(_, ours)| ours.records);
            println!(
                "tripstream replay:  {} records into sled, digest {}",
                records(&replays),
                digest.unwrap_or_default()
            );
            println!(
                "tripstream restore: {} changelog records, {REPLAY_PARTITIONS} tasks read together",
                records(&restores)
            );
            if let Some(peak) = peak_memory_mib() {
                println!(
                    "peak memory of the process (broker, registry, consumers, stores): {peak:.0} MiB"
                );
            }
            println!(
                "ratio: replay {:.2} of raw, restore {:.2} of raw (medians of {REPLAY_ROUNDS} rounds)",
                median_ratio(&replays),
                median_ratio(&restores)
            );
            bench.registry.stop().await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Partitions of `bench replay`'s topics: the embedded broker keeps only a few MiB of each.
const REPLAY_PARTITIONS: i32 = 64;

/// The changelog `bench replay` restores from.
const CHANGELOG: &str = "bench.changelog";

/// Changed keys per commit in `bench replay`'s changelog, each commit closed by a marker.
const COMMIT_KEYS: usize = 64;

/// A task's changelog as a processor's commits write it: `changes` changes cycling over 4,096
/// keys (so each key is changed a few times, as a saga's state is), every 16th a removal, and
/// a marker after every [`COMMIT_KEYS`] changes.
fn changelog_records(task: i32, changes: usize) -> Vec<OutgoingRecord> {
    let record = |key: Vec<u8>, payload: Option<Vec<u8>>| OutgoingRecord {
        topic: CHANGELOG.into(),
        partition: Some(task),
        key,
        payload,
        headers: Vec::new(),
    };
    let mut records = Vec::with_capacity(changes + changes / COMMIT_KEYS + 1);
    for i in 0..changes {
        let key = format!("saga/{task:04}-{:05}", i % 4_096).into_bytes();
        let value = (i % 16 != 15)
            .then(|| format!(r#"{{"status":"reserved","seats":{},"at":{i}}}"#, i % 7).into_bytes());
        records.push(record(key, value));
        if (i + 1) % COMMIT_KEYS == 0 || i + 1 == changes {
            let marker = serde_json::json!({ "bench.typed": i + 1 });
            records.push(record(
                MARKER.to_vec(),
                Some(marker.to_string().into_bytes()),
            ));
        }
    }
    records
}

/// Writes every task's changelog with the tasks' commits interleaved, as a processor's relay
/// publishes them. (Each partition written whole in turn makes message sets that the embedded
/// broker serves about half as fast, to the raw consumer too.)
async fn write_changelog(producer: &Producer, changes_per_task: usize) -> anyhow::Result<()> {
    let logs: Vec<_> = (0..REPLAY_PARTITIONS)
        .map(|task| changelog_records(task, changes_per_task))
        .collect();
    let commit = COMMIT_KEYS + 1;
    let longest = logs.iter().map(Vec::len).max().unwrap_or(0);
    // 16 commits of each task in flight at a time, about 66,000 records.
    for first in (0..longest).step_by(commit * 16) {
        let last = longest.min(first + commit * 16);
        let sends = (first..last)
            .step_by(commit)
            .flat_map(|at| {
                logs.iter()
                    .flat_map(move |log| log.iter().skip(at).take(commit))
            })
            .map(|record| producer.send_record(record));
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
    }
    Ok(())
}

/// Restores every task of [`CHANGELOG`] into one empty store, as an instance assigned them all
/// does.
fn restore_all(bootstrap: &str) -> anyhow::Result<Read> {
    let changelog = Changelog {
        topic: CHANGELOG.into(),
        group: "bench".into(),
        inputs: vec!["bench.typed".into()],
    };
    let store = Store::temporary()?;
    let timer = Timer::start();
    let records =
        streams::processor::restore_tasks(bootstrap, &changelog, &store, 0..REPLAY_PARTITIONS)?;
    Ok(timer.done(records))
}

/// Replays `bench.typed` into an empty store: what was read, and the store's digest.
async fn replay_once(bench: &Bench) -> anyhow::Result<(Read, String)> {
    let store = Store::temporary()?;
    let timer = Timer::start();
    let summary = replay::replay(
        bench.broker.bootstrap_servers(),
        replay::Inputs::tasks(&["bench.typed"]),
        &Start::Beginning,
        &store,
        &bench.codec,
        &PerFlight,
        |_| {},
    )
    .await?;
    let mut read = timer.done(summary.applied);
    // Every record read costs CPU, applied or skipped as a duplicate.
    read.cpu_records = summary.applied + summary.skipped;
    Ok((read, summary.digest))
}

/// Rounds of `bench replay`, each a raw read and a tripstream read of the same topic.
const REPLAY_ROUNDS: usize = 3;

/// Reads every record of `topic` with the raw counting consumer.
async fn read_raw(bootstrap: &str, topic: &'static str) -> anyhow::Result<Read> {
    let bootstrap = bootstrap.to_owned();
    let timer = Timer::start();
    let counted = tokio::task::spawn_blocking(move || count_raw(&bootstrap, topic)).await??;
    Ok(timer.done(counted))
}

/// A read being timed: when it started and the process's CPU time then.
struct Timer {
    started: Instant,
    cpu: Cpu,
}

impl Timer {
    fn start() -> Self {
        Timer {
            started: Instant::now(),
            cpu: Cpu::start(),
        }
    }

    /// The read is over, with `records` read.
    fn done(self, records: u64) -> Read {
        Read {
            records,
            cpu_records: records,
            elapsed: self.started.elapsed(),
            cpu: self.cpu.used(),
        }
    }
}

/// One read of a topic: records, time taken and the CPU time the whole process used.
struct Read {
    records: u64,
    /// The records the CPU time is shared over.
    cpu_records: u64,
    elapsed: Duration,
    cpu: Option<Duration>,
}

impl Read {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// `N records/s (M µs CPU per record)`.
    fn describe(&self) -> String {
        let per_record = self
            .cpu
            .and_then(|cpu| Some(cpu / u32::try_from(self.cpu_records.max(1)).ok()?));
        let cpu = per_record.map_or_else(String::new, |cpu| {
            format!(" ({:.2} µs CPU per record)", cpu.as_secs_f64() * 1e6)
        });
        format!("{:.0} records/s{cpu}", self.rate())
    }
}

/// The median of the rounds' ratios, tripstream's rate over the raw consumer's.
fn median_ratio(pairs: &[(Read, Read)]) -> f64 {
    let mut ratios: Vec<f64> = pairs
        .iter()
        .map(|(raw, ours)| ours.rate() / raw.rate())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied().unwrap_or(0.0)
}

/// The CPU time the whole process used from a point on, every thread counted (the embedded
/// broker's too). Unlike a rate, it hardly depends on how the threads of a pipeline happen to
/// share this machine's cores, which swung the raw consumer's rate 2.5x between runs.
struct Cpu(Option<Duration>);

impl Cpu {
    fn start() -> Self {
        Cpu(process_cpu())
    }

    /// The CPU time used since the start.
    fn used(&self) -> Option<Duration> {
        process_cpu()?.checked_sub(self.0?)
    }
}

/// User and system time of the process so far, from `/proc/self/stat` (Linux; in the kernel's
/// user-visible clock ticks, 100 a second).
fn process_cpu() -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis,
    // from the state (field 3); utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1000 / TICKS_PER_SECOND,
    ))
}

/// Reads every record of `topic` with a bare consumer, counting them.
pub(crate) fn count_raw(bootstrap: &str, topic: &str) -> anyhow::Result<u64> {
    // The fetch settings of tripstream's own backlog readers, so that the ratio compares the
    // work done per record, not two fetch configurations (librdkafka's default backs off a
    // whole second whenever the fetch queue fills, which swung this baseline 3x).
    let consumer: BaseConsumer = streams::kafka::reader_config(bootstrap, "bench-raw").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        remaining += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut counted = 0u64;
    while remaining > 0 {
        if let Some(message) = consumer.poll(Duration::from_secs(5)) {
            message?;
            counted += 1;
            remaining -= 1;
        } else {
            anyhow::bail!("the raw consumer stalled with {remaining} records left");
        }
    }
    Ok(counted)
}
