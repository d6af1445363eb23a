//! `tripstream bench saga`: sustained confirmed bookings per second through the whole saga on
//! the embedded broker, the latency distribution at half that load, and raw rdkafka's message
//! rate on the same broker in the same run as the baseline.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use events::{
    BookingRequested, Extra, FlightScheduled, FlightSelection, HotelListed, HotelSelection, Money,
    topics,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use streams::kafka::headers::{Metadata, header};
use system::{Consistency, Options, System};

/// Messages one confirmed booking puts through the broker: the request, two reservations and
/// their answers, the charge and its answer, the confirmation.
const MESSAGES_PER_BOOKING: f64 = 8.0;

fn eur(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), "EUR")
}

fn request(i: usize, users: &[String]) -> BookingRequested {
    BookingRequested {
        booking_id: uuid::Uuid::new_v4().to_string(),
        user_id: users[i % users.len()].clone(),
        flight: FlightSelection {
            flight_id: format!("BENCH{}", i % 8),
            seats: 1,
        },
        hotel: HotelSelection {
            hotel_id: format!("HOTEL{}", i % 4),
            check_in: 20_788,
            check_out: 20_790,
            rooms: 1,
        },
        extras: vec![Extra {
            code: "LUGGAGE".into(),
            quantity: 1,
            unit_price: eur(3_000),
        }],
        requested_at: events::now_millis(),
    }
}

/// Runs the bench: throughput with `bookings` sent at once, then latency at `rate` (half the
/// measured rate if not given) for `latency_seconds`. Whether every consistency check held
/// after it.
pub async fn run(bookings: usize, latency_seconds: u64, rate: Option<f64>) -> anyhow::Result<bool> {
    anyhow::ensure!(bookings > 0, "--bookings must be at least 1");
    anyhow::ensure!(
        rate.is_none_or(|rate| rate.is_finite() && rate > 0.0),
        "--rate must be a positive number of bookings per second"
    );
    let system = System::start(Options::default()).await?;
    let users = seed(&system).await?;
    // Warm-up: registers every schema, joins every group, fills every cache.
    eprintln!("Warming up...");
    send(&system, 200, &users, None).await?;
    wait_finished(&system, 200, Duration::from_secs(120)).await?;

    eprintln!("Throughput: {bookings} bookings sent at once...");
    let started = Instant::now();
    send(&system, bookings, &users, None).await?;
    wait_finished(&system, 200 + bookings, Duration::from_secs(600)).await?;
    let throughput = bookings as f64 / started.elapsed().as_secs_f64();

    // The latency run starts once the throughput run's backlog is gone (the gateway's views,
    // outboxes): half load, not half load on top of a queue.
    system.settle(Duration::from_secs(120)).await?;
    let pace = rate.unwrap_or((throughput / 2.0).max(1.0));
    let count = ((pace * latency_seconds as f64) as usize).max(1);
    eprintln!("Latency: {count} bookings at {pace:.0}/s...");
    let sent_at = send(&system, count, &users, Some(pace)).await?;
    wait_finished(&system, 200 + bookings + count, Duration::from_secs(600)).await?;
    let stages = stages(&system, &sent_at)?;
    let latencies = stages
        .iter()
        .find(|(kind, _)| kind == events::BookingConfirmed::TYPE)
        .map(|(_, latencies)| latencies.as_slice())
        .unwrap_or_default();

    let raw = raw_rate(&system, 50_000).await?;
    let report = system.consistency()?;
    // Stopped before the report, so that the services' shutdown logs do not follow it.
    system.stop().await?;
    println!(
        "saga, sent at once:        {throughput:>10.0} confirmed bookings/s ({bookings} bookings)"
    );
    println!(
        "saga at {pace:.0}/s:            p50 {} ms, p95 {} ms, p99 {} ms, max {} ms ({} confirmed of {count})",
        percentile(latencies, 0.50),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    println!("  where the time goes (ms from request to each event written, p50 / p99):");
    for (kind, latencies) in &stages {
        println!(
            "    {:<40} {:>5} / {:>5}",
            kind.strip_prefix("tripstream.").unwrap_or(kind),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99)
        );
    }
    println!("raw rdkafka, pre-encoded:  {raw:>10.0} messages/s on the same broker");
    let held = print_consistency(&report);
    println!(
        "ratio: {:.2} of raw (each booking is {MESSAGES_PER_BOOKING} messages: {:.0} messages/s)",
        throughput * MESSAGES_PER_BOOKING / raw,
        throughput * MESSAGES_PER_BOOKING
    );
    Ok(held)
}

/// Prints a bench's consistency line, with the failing report when a check fails: whether
/// every check held.
pub(crate) fn print_consistency(report: &Consistency) -> bool {
    if report.holds() {
        println!("consistency: every check holds");
    } else {
        println!("consistency: FAILED: {report:?}");
    }
    report.holds()
}

/// Puts the bench's catalog on sale (flights and hotels that never run out) and funds its 64
/// users; returns the users.
pub(crate) async fn seed(system: &System) -> anyhow::Result<Vec<String>> {
    for i in 0..8 {
        system
            .flight(&FlightScheduled {
                flight_id: format!("BENCH{i}"),
                origin: "LIS".into(),
                destination: "FRA".into(),
                departs_at: 1_796_112_000_000,
                arrives_at: 1_796_122_000_000,
                seats: i32::MAX,
                seat_price: eur(10_000),
            })
            .await?;
    }
    for i in 0..4 {
        system
            .hotel(&HotelListed {
                hotel_id: format!("HOTEL{i}"),
                name: format!("Hotel {i}"),
                city: "Frankfurt".into(),
                rooms: i32::MAX,
                nightly_rate: eur(8_000),
            })
            .await?;
    }
    let users: Vec<String> = (0..64).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for user in &users {
        system.credit(user, eur(100_000_000_000)).await?;
    }
    Ok(users)
}

/// Sends `count` requests, at `per_second` if given; returns each booking's send time (ms).
pub(crate) async fn send(
    system: &System,
    count: usize,
    users: &[String],
    per_second: Option<f64>,
) -> anyhow::Result<HashMap<String, i64>> {
    let started = Instant::now();
    let mut sent_at = HashMap::with_capacity(count);
    let mut pending = Vec::new();
    for i in 0..count {
        if let Some(rate) = per_second {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let request = request(i, users);
        sent_at.insert(request.booking_id.clone(), request.requested_at);
        let producer = system.producer.clone();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    topics::BOOKINGS,
                    &request,
                    &Metadata::new(&request.booking_id),
                )
                .await
        }));
        if pending.len() >= 1_000 {
            for sent in pending.drain(..) {
                sent.await??;
            }
        }
    }
    for sent in pending {
        sent.await??;
    }
    Ok(sent_at)
}

async fn wait_finished(system: &System, sagas: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        // Counted, not copied: this runs while the services work, on the same two cores.
        let open = system.stores.booking.count(b"open/")?;
        let started = system.stores.booking.count(b"saga/")?;
        if open == 0 && started >= sagas {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{open} sagas still open, {started} of {sagas} started, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The topics a booking's saga goes through.
const SAGA_TOPICS: [&str; 7] = [
    topics::BOOKINGS,
    topics::FLIGHT_COMMANDS,
    topics::HOTEL_COMMANDS,
    topics::FLIGHT_EVENTS,
    topics::HOTEL_EVENTS,
    topics::PAYMENT_COMMANDS,
    topics::PAYMENT_EVENTS,
];

/// For each event type a saga of `sent_at` wrote, when it was written: its broker timestamp
/// minus the request's send time, in ms, sorted; the stages in the order they happen (by p50).
pub(crate) fn stages(
    system: &System,
    sent_at: &HashMap<String, i64>,
) -> anyhow::Result<Vec<(String, Vec<i64>)>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", system.broker.bootstrap_servers())
        // assign() needs a group handle; this reader never joins the group nor commits.
        .set("group.id", "tripstream-bench-latency")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for topic in SAGA_TOPICS {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for partition in metadata
            .topics()
            .first()
            .map(|t| t.partitions())
            .unwrap_or_default()
        {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
            remaining += high - low;
            tpl.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let value = |message: &BorrowedMessage<'_>, name: &str| {
        message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    let mut by_type: HashMap<String, Vec<i64>> = HashMap::new();
    // An event published twice (a relay killed between publishing and clearing its outbox)
    // counts once, at its first copy: consumers skip the second by its id.
    let mut ids = HashSet::new();
    while remaining > 0 {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            anyhow::bail!("reading the saga topics stalled with {remaining} records left");
        };
        let message = message?;
        remaining -= 1;
        let (Some(kind), Some(booking), Some(at)) = (
            value(&message, header::EVENT_TYPE),
            value(&message, header::CORRELATION_ID),
            message.timestamp().to_millis(),
        ) else {
            continue;
        };
        if let Some(sent) = sent_at.get(&booking)
            && value(&message, header::EVENT_ID).is_none_or(|id| ids.insert(id))
        {
            by_type.entry(kind).or_default().push(at - sent);
        }
    }
    let mut stages: Vec<(String, Vec<i64>)> = by_type.into_iter().collect();
    for (_, latencies) in &mut stages {
        latencies.sort_unstable();
    }
    stages.sort_by_key(|(_, latencies)| percentile(latencies, 0.5));
    Ok(stages)
}

/// The `p` quantile of sorted `values` (0 when empty).
pub(crate) fn percentile(values: &[i64], p: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    let i = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

/// Raw rdkafka sending pre-encoded bytes of the same size: messages/s.
async fn raw_rate(system: &System, count: usize) -> anyhow::Result<f64> {
    system.broker.create_topic("bench.raw", 6, 1)?;
    let producer: FutureProducer =
        streams::kafka::producer::client_config(system.broker.bootstrap_servers(), &[]).create()?;
    let payload = system
        .codec
        .encode(topics::BOOKINGS, &request(0, &["u".to_owned()]))
        .await?;
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let sends = chunk.iter().map(|i| {
            let key = i.to_string();
            let producer = &producer;
            let payload = &payload;
            async move {
                producer
                    .send(
                        FutureRecord::to("bench.raw").key(&key).payload(payload),
                        Duration::from_secs(30),
                    )
                    .await
            }
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
