//! `tripstream bench failover`: two instances of each service under steady load, one of each
//! killed: how long until its tasks are processed again, the latency through the fail-over,
//! restoring from the changelog against a raw consumer reading it, and confirmed bookings per
//! second with one and with two instances, all in one run on the embedded broker.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use events::topics;
use streams::store::{Changelog, Store};
use system::{Instance, Options, System};

use super::saga_bench::{percentile, print_consistency, seed, send, stages};

/// The services that run as two instances, with how many partitions each reads as tasks.
const SCALED: [(&str, usize); 4] = [("booking", 24), ("flight", 6), ("hotel", 6), ("payment", 6)];

/// Runs the bench: `bookings` sent at once on one and then two instances of each service,
/// then `seconds` at `rate` bookings/s with one instance of each killed a third of the way in;
/// every instance keeps `standby_replicas` warm copies. Whether every consistency check held
/// after it.
pub async fn run(
    bookings: usize,
    seconds: u64,
    rate: f64,
    standby_replicas: usize,
) -> anyhow::Result<bool> {
    anyhow::ensure!(bookings > 0, "--bookings must be at least 1");
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "--rate must be a positive number of bookings per second"
    );
    anyhow::ensure!(seconds >= 3, "--seconds must be at least 3");
    let system = System::start(Options {
        standby_replicas,
        ..Options::default()
    })
    .await?;
    let users = seed(&system).await?;
    eprintln!("Warming up...");
    let mut sent = 0;
    sent += send(&system, 200, &users, None).await?.len();
    wait_finished(&system, sent, Duration::from_secs(120)).await?;

    eprintln!("One instance each: {bookings} bookings sent at once...");
    let started = Instant::now();
    sent += send(&system, bookings, &users, None).await?.len();
    wait_finished(&system, sent, Duration::from_secs(600)).await?;
    let one = bookings as f64 / started.elapsed().as_secs_f64();

    eprintln!("Starting a second instance of each service...");
    let mut second = Vec::new();
    for (name, _) in SCALED {
        second.push((name, system.start_instance(name, &Store::temporary()?)?));
    }
    wait_split(&system, &second, Duration::from_secs(60)).await?;
    eprintln!("Two instances each: {bookings} bookings sent at once...");
    let started = Instant::now();
    sent += send(&system, bookings, &users, None).await?.len();
    wait_finished(&system, sent, Duration::from_secs(600)).await?;
    let two = bookings as f64 / started.elapsed().as_secs_f64();
    // Every booking has ended; the gateway's views and the relays finish what is left of the
    // burst (`System::settle` would wait on the tasks its own instances gave up, for ever).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let count = ((rate * seconds as f64) as usize).max(1);
    eprintln!(
        "Fail-over: {count} bookings at {rate:.0}/s, the second instances killed after {} s...",
        seconds / 3
    );
    let load = {
        let system = &system;
        let users = &users;
        async move { send(system, count, users, Some(rate)).await }
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
        let killed_at = Instant::now();
        for (_, instance) in second.drain(..) {
            instance.kill().await;
        }
        takeover(&system, killed_at, Duration::from_secs(60)).await
    };
    let (sent_at, takeovers) = tokio::join!(load, kill);
    let (sent_at, takeovers) = (sent_at?, takeovers?);
    sent += sent_at.len();
    wait_finished(&system, sent, Duration::from_secs(600)).await?;
    let latencies = stages(&system, &sent_at)?
        .into_iter()
        .find(|(kind, _)| kind == events::BookingConfirmed::TYPE)
        .map(|(_, latencies)| latencies)
        .unwrap_or_default();
    let outcomes = outcomes(&system, &sent_at)?;

    eprintln!("Restoring booking's state from its changelog...");
    let (restored, restore_rate) = restore_rate(&system)?;
    let bootstrap = system.broker.bootstrap_servers().to_owned();
    let started = Instant::now();
    let counted = tokio::task::spawn_blocking(move || {
        super::bench::count_raw(&bootstrap, topics::BOOKING_CHANGELOG)
    })
    .await??;
    let raw_rate = counted as f64 / started.elapsed().as_secs_f64();
    let report = system.consistency()?;
    system.stop().await?;

    println!("standby replicas per instance: {standby_replicas}");
    println!(
        "confirmed bookings/s, {bookings} sent at once: one instance each {one:.0}/s, two instances each {two:.0}/s"
    );
    for (name, took) in &takeovers {
        println!(
            "{name:<8} killed instance's tasks processed again after {:.1} s",
            took.as_secs_f64()
        );
    }
    println!(
        "through the fail-over at {rate:.0}/s: p50 {} ms, p99 {} ms, max {} ms ({} confirmed of {count}; {})",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len(),
        outcomes
            .iter()
            .map(|(outcome, n)| format!("{n} {outcome}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "restore from booking.changelog: {restore_rate:>9.0} records/s ({restored} records); raw consumer counting it: {raw_rate:>9.0} records/s; ratio {:.2}",
        restore_rate / raw_rate
    );
    Ok(print_consistency(&report))
}

/// Waits until the gateway's view shows `count` bookings finished (it sees every instance's).
async fn wait_finished(system: &System, count: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let views = system.stores.gateway.scan(b"booking/")?;
        let finished = views
            .iter()
            .filter(|(_, v)| !v.windows(9).any(|w| w == b"\"PENDING\""))
            .count();
        if finished >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{finished} of {count} bookings finished after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until each service's two instances hold half of its task partitions each.
async fn wait_split(
    system: &System,
    second: &[(&str, Instance)],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let split = SCALED
            .iter()
            .zip(second)
            .all(|((name, partitions), (_, b))| {
                let a = system.positions(name).map_or(0, |p| p.snapshot().len());
                a == partitions / 2 && b.positions.snapshot().len() == partitions / 2
            });
        if split {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the instances did not split the tasks within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long after `killed_at` each service's surviving instance held every task again (its
/// partitions are assigned once their tasks are restored).
async fn takeover(
    system: &System,
    killed_at: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let mut took = Vec::new();
    let mut waiting: Vec<(&str, usize)> = SCALED.to_vec();
    while !waiting.is_empty() {
        anyhow::ensure!(killed_at.elapsed() < limit, "no takeover within {limit:?}");
        waiting.retain(|(name, partitions)| {
            let held = system.positions(name).map_or(0, |p| p.snapshot().len());
            if held == *partitions {
                took.push((*name, killed_at.elapsed()));
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(took)
}

/// How the bookings of `sent_at` ended, as the gateway shows them: status or reason → count.
fn outcomes(
    system: &System,
    sent_at: &HashMap<String, i64>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut outcomes = BTreeMap::new();
    for id in sent_at.keys() {
        let Some(view) = system
            .stores
            .gateway
            .get(format!("booking/{id}").as_bytes())?
        else {
            continue;
        };
        let view: serde_json::Value = serde_json::from_slice(&view)?;
        let outcome = match view["reason"].as_str() {
            Some(reason) => reason.to_owned(),
            None => view["status"].as_str().unwrap_or("?").to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    Ok(outcomes)
}

/// Restores every task of booking's changelog into an empty store: (records, records/s).
fn restore_rate(system: &System) -> anyhow::Result<(u64, f64)> {
    let changelog = Changelog {
        topic: topics::BOOKING_CHANGELOG.into(),
        group: booking::GROUP.into(),
        inputs: booking::TOPICS.iter().map(|t| (*t).to_owned()).collect(),
    };
    let store = Store::temporary()?;
    let started = Instant::now();
    let records = streams::processor::restore_tasks(
        system.broker.bootstrap_servers(),
        &changelog,
        &store,
        0..6,
    )?;
    Ok((records, records as f64 / started.elapsed().as_secs_f64()))
}
