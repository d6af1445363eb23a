//! `tripstream demo`: the whole system in one process on the embedded broker, a seeded
//! catalog and users, bookings placed through the gateway's HTTP API, then a summary and a
//! consistency report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use events::{FlightScheduled, HotelListed, Money};
use indicatif::{ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use streams::processor::Handler;
use streams::replay::{self, Start};
use streams::store::Store;
use system::{Options, System};

/// Arguments of `tripstream demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many bookings to place.
    #[arg(long, default_value_t = 500)]
    bookings: usize,
    /// How many users book (every tenth has too little money, so some payments decline).
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Bookings in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Keep running afterwards with the gateway on this address, for curl.
    #[arg(long)]
    serve: Option<SocketAddr>,
}

/// The day every demo flight flies and every stay starts, a week after the day the demo
/// started (the gateway refuses check-ins in the past), fixed for the whole run.
static TRAVEL: std::sync::LazyLock<i32> = std::sync::LazyLock::new(|| system::day_from_today(7));

/// `YYYY-MM-DD` of `after` days after the travel day.
fn travel(after: i32) -> String {
    events::date::format(TRAVEL.saturating_add(after))
}

fn eur(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), "EUR")
}

struct Demo {
    http: reqwest::Client,
    base: String,
}

impl Demo {
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        Ok((
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        Ok((
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ))
    }
}

/// One placed booking's outcome.
struct Outcome {
    status: String,
    reason: Option<String>,
    latency: Duration,
}

/// Runs the demo; exit code 1 when a consistency check fails.
pub async fn run(root: &std::path::Path, args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let started = Instant::now();
    crate::note!("Starting the embedded broker, the registry and every service...");
    let system = System::start(Options {
        gateway: args
            .serve
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        root: root.to_path_buf(),
        ..Options::default()
    })
    .await?;
    let demo = Arc::new(Demo {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: system.gateway_url(),
    });

    let catalog = Arc::new(Catalog::for_bookings(args.bookings));
    crate::note!(
        "Seeding {} flights, {} hotels and {} users...",
        catalog.flights(),
        catalog.hotels(),
        args.users
    );
    seed_catalog(&system, &catalog).await?;
    let users = seed_users(&system, &demo, args.users, args.bookings).await?;
    wait_for_catalog(&demo, &users[0].1, &catalog).await?;
    crate::note!(
        "Ready after {:.1} s; placing {} bookings through {}",
        started.elapsed().as_secs_f64(),
        args.bookings,
        system.gateway_url()
    );

    let bar = ProgressBar::new(args.bookings as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} bookings finished ({per_sec}) [{elapsed_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let placing = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.bookings);
    for i in 0..args.bookings {
        let permit = semaphore.clone().acquire_owned().await?;
        let demo = demo.clone();
        let catalog = catalog.clone();
        let token = users[i % users.len()].1.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = place(&demo, &catalog, &token, i).await;
            drop(permit);
            bar.inc(1);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let elapsed = placing.elapsed();
    bar.finish_and_clear();

    let confirmed = outcomes.iter().filter(|o| o.status == "CONFIRMED").count();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in outcomes.iter().filter(|o| o.status == "CANCELLED") {
        *reasons
            .entry(outcome.reason.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    crate::say!(
        "tripstream demo: {} bookings by {} users in {:.1} s",
        args.bookings,
        args.users,
        elapsed.as_secs_f64()
    );
    crate::say!("  confirmed              {confirmed:>6}");
    crate::say!(
        "  cancelled              {:>6}",
        reasons.values().sum::<usize>()
    );
    for (reason, count) in &reasons {
        crate::say!("    {reason:<20} {count:>6}");
    }
    if !errors.is_empty() {
        crate::say!(
            "  failed requests        {:>6}  (first: {})",
            errors.len(),
            errors[0]
        );
    }
    crate::say!(
        "  bookings per second    {:>6.0}",
        outcomes.len() as f64 / elapsed.as_secs_f64()
    );
    crate::say!(
        "  request to final status: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        percentile(0.50),
        percentile(0.95),
        percentile(0.99)
    );

    crate::say!("Consistency");
    let report = system.consistency()?;
    let mut failed = !errors.is_empty();
    let mut check = |ok: bool, what: String| {
        failed |= !ok;
        crate::say!("  {} {what}", if ok { "ok  " } else { "FAIL" });
    };
    check(
        report.unfinished == 0 && report.sagas == outcomes.len(),
        format!(
            "every saga finished: {} of {} (bookings placed: {})",
            report.sagas - report.unfinished,
            report.sagas,
            outcomes.len()
        ),
    );
    check(
        report.seat_mismatches.is_empty(),
        format!(
            "seats held equal confirmed bookings{}",
            detail(&report.seat_mismatches)
        ),
    );
    check(
        report.room_mismatches.is_empty(),
        format!(
            "rooms held equal confirmed bookings{}",
            detail(&report.room_mismatches)
        ),
    );
    check(
        report.oversold.is_empty(),
        format!("nothing oversold{}", detail(&report.oversold)),
    );
    check(
        report.charged == report.confirmed_totals,
        format!(
            "money charged ({} EUR) equals confirmed totals ({} EUR)",
            report.charged, report.confirmed_totals
        ),
    );
    let stores = &system.stores;
    // Each service's own lists of what it reads: a replay reads what the service reads.
    let replays: [(&str, &[&str], &[&str], &Store); 5] = [
        ("booking", booking::TOPICS, &[], &stores.booking),
        ("flight", flight::TOPICS, flight::GLOBALS, &stores.flight),
        ("hotel", hotel::TOPICS, hotel::GLOBALS, &stores.hotel),
        (
            "payment",
            payment::TOPICS,
            payment::GLOBALS,
            &stores.payment,
        ),
        (
            "gateway",
            gateway::TOPICS,
            gateway::GLOBALS,
            &stores.gateway,
        ),
    ];
    for (name, topics, globals, live) in replays {
        let inputs = (topics, globals);
        let (same, replayed, live_digest) = match name {
            "booking" => replay_matches(&system, inputs, live, &booking::Sagas).await?,
            "flight" => replay_matches(&system, inputs, live, &flight::Flights).await?,
            "hotel" => replay_matches(&system, inputs, live, &hotel::Hotels).await?,
            "payment" => replay_matches(&system, inputs, live, &payment::Payments).await?,
            _ => replay_matches(&system, inputs, live, &gateway::view::Views).await?,
        };
        check(
            same,
            if same {
                format!("{name}: replayed state equals live state ({live_digest})")
            } else {
                format!("{name}: replayed state {replayed} differs from live state {live_digest}")
            },
        );
    }

    if args.serve.is_some() {
        // The address bound, not the one asked for: `--serve 127.0.0.1:0` picks a free port.
        let base = system.gateway_url();
        crate::say!("");
        crate::say!("Serving the API at {base} until Ctrl-C. Try:");
        crate::say!(
            "  TOKEN=$(curl -s -X POST {base}/v1/sessions -H 'content-type: application/json' \\"
        );
        crate::say!(
            "    -d '{{\"email\":\"user0@demo.tripstream.dev\",\"password\":\"demo password 0\"}}' | jq -r .token)"
        );
        crate::say!(
            "  curl -s '{base}/v1/flights?from=LIS&to=FRA&date={}' -H \"authorization: Bearer $TOKEN\"",
            travel(0)
        );
        crate::say!(
            "  curl -s -X POST {base}/v1/bookings -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\"
        );
        crate::say!(
            "    -d '{{\"flight_id\":\"TS100\",\"seats\":1,\"hotel_id\":\"FRA-CENTRAL\",\"check_in\":\"{}\",\"check_out\":\"{}\"}}'",
            travel(0),
            travel(2)
        );
        crate::say!("  curl -s {base}/v1/bookings -H \"authorization: Bearer $TOKEN\"");
        crate::say!("  curl -s {base}/openapi.json");
        streams::service::interrupted().await;
    }
    system.stop().await?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn detail<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(": {} differ, first {:?}", items.len(), items[0])
    }
}

/// Replays a service's topics into a new store with its handler and compares digests. The
/// live service may still be applying its last records, so the comparison is retried briefly.
async fn replay_matches<H: Handler>(
    system: &System,
    (topics, globals): (&[&str], &[&str]),
    live: &Store,
    handler: &H,
) -> anyhow::Result<(bool, String, String)> {
    let mut last = (String::new(), String::new());
    for _ in 0..10 {
        let rebuilt = Store::temporary()?;
        let summary = replay::replay(
            system.broker.bootstrap_servers(),
            replay::Inputs {
                tasks: topics,
                globals,
            },
            &Start::Beginning,
            &rebuilt,
            &system.codec,
            handler,
            |_| {},
        )
        .await?;
        let live_digest = live.digest()?;
        if summary.digest == live_digest {
            return Ok((true, summary.digest, live_digest));
        }
        last = (summary.digest, live_digest);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((false, last.0, last.1))
}

/// The flight every twentieth booking asks for: too few seats, so those bookings are refused
/// and compensated (the room reserved alongside is released).
const SCARCE_FLIGHT: &str = "TS900";
/// The hotel every twenty-fifth booking asks for: too few rooms, likewise.
const SCARCE_HOTEL: &str = "FRA-TINY";
/// Seats of every flight but the scarce one.
const FLIGHT_SEATS: i32 = 400;
/// Rooms of every hotel but the scarce one.
const HOTEL_ROOMS: i32 = 500;
/// How full the busiest flight or hotel may be booked. The rest is room for seats and rooms
/// held for a moment by bookings that are then declined for want of money, so a booking that
/// has inventory waiting is not refused for a hold about to be released.
const FILL: f64 = 0.9;

/// The demo's flights and hotels with inventory to spare, sized to the bookings to be placed
/// so that a large run still confirms most of them; the scarce flight and hotel stay small
/// whatever the size. Booking `i` always asks for the same flight and hotel ([`Catalog::pick`]).
struct Catalog {
    /// Flights from Lisbon to Frankfurt, the scarce one aside.
    lis_fra: Vec<String>,
    /// Flights from Porto to Berlin.
    opo_ber: Vec<String>,
    /// Hotels in Frankfurt, the scarce one aside.
    frankfurt: Vec<String>,
    /// Hotels in Berlin.
    berlin: Vec<String>,
}

impl Catalog {
    /// The smallest catalog, growing from the one of a small demo, in which the busiest flight
    /// and the busiest hotel of `bookings` bookings are at most [`FILL`] full.
    fn for_bookings(bookings: usize) -> Catalog {
        let mut catalog = Catalog {
            lis_fra: vec!["TS100".into(), "TS102".into(), "TS104".into()],
            opo_ber: vec!["TS200".into(), "TS202".into()],
            frankfurt: vec!["FRA-CENTRAL".into()],
            berlin: vec!["BER-MITTE".into()],
        };
        let fits = |demand: &BTreeMap<&str, i64>, ids: &[String], capacity: i32| {
            ids.iter().all(|id| {
                demand.get(id.as_str()).copied().unwrap_or(0) as f64 <= f64::from(capacity) * FILL
            })
        };
        loop {
            let mut seats: BTreeMap<&str, i64> = BTreeMap::new();
            let mut rooms: BTreeMap<&str, i64> = BTreeMap::new();
            for i in 0..bookings {
                let (flight, hotel) = catalog.pick(i);
                *seats.entry(flight).or_default() += i64::from(seats_of(i));
                *rooms.entry(hotel).or_default() += 1;
            }
            let grow = [
                !fits(&seats, &catalog.lis_fra, FLIGHT_SEATS),
                !fits(&seats, &catalog.opo_ber, FLIGHT_SEATS),
                !fits(&rooms, &catalog.frankfurt, HOTEL_ROOMS),
                !fits(&rooms, &catalog.berlin, HOTEL_ROOMS),
            ];
            if grow.iter().all(|g| !g) {
                return catalog;
            }
            // Added flights fly TS1xxx from Lisbon and TS2xxx from Porto, so ids never collide.
            if grow[0] {
                let n = catalog.lis_fra.len();
                catalog.lis_fra.push(format!("TS{}", 1000 + n));
            }
            if grow[1] {
                let n = catalog.opo_ber.len();
                catalog.opo_ber.push(format!("TS{}", 2000 + n));
            }
            if grow[2] {
                let n = catalog.frankfurt.len();
                catalog.frankfurt.push(format!("FRA-{}", n + 1));
            }
            if grow[3] {
                let n = catalog.berlin.len();
                catalog.berlin.push(format!("BER-{}", n + 1));
            }
        }
    }

    /// The flight and hotel booking `i` asks for: mostly Lisbon–Frankfurt and Porto–Berlin,
    /// spread over each route's flights and each city's hotels, with the scarce flight and
    /// hotel now and then.
    fn pick(&self, i: usize) -> (&str, &str) {
        let of = |ids: &[String]| -> usize { (i / 2) % ids.len() };
        match i {
            i if i % 20 == 7 => (SCARCE_FLIGHT, &self.frankfurt[of(&self.frankfurt)]),
            i if i % 25 == 3 => (&self.lis_fra[of(&self.lis_fra)], SCARCE_HOTEL),
            i if i % 2 == 0 => (
                &self.lis_fra[of(&self.lis_fra)],
                &self.frankfurt[of(&self.frankfurt)],
            ),
            _ => (
                &self.opo_ber[of(&self.opo_ber)],
                &self.berlin[of(&self.berlin)],
            ),
        }
    }

    /// How many flights are on sale, the scarce one included.
    fn flights(&self) -> usize {
        self.lis_fra.len() + 1 + self.opo_ber.len()
    }

    /// How many hotels are on sale, the scarce one included.
    fn hotels(&self) -> usize {
        self.frankfurt.len() + 1 + self.berlin.len()
    }
}

/// Seats booking `i` asks for.
fn seats_of(i: usize) -> i32 {
    1 + (i % 2) as i32
}

/// Puts the catalog's flights and hotels on sale.
async fn seed_catalog(system: &System, catalog: &Catalog) -> anyhow::Result<()> {
    let lis_fra = catalog
        .lis_fra
        .iter()
        .map(|id| (id.as_str(), "LIS", "FRA", FLIGHT_SEATS))
        .chain([(SCARCE_FLIGHT, "LIS", "FRA", 6)]);
    let opo_ber = catalog
        .opo_ber
        .iter()
        .map(|id| (id.as_str(), "OPO", "BER", FLIGHT_SEATS));
    for (i, (id, from, to, seats)) in lis_fra.chain(opo_ber).enumerate() {
        // Hourly from 08:00 to 19:00, all on the one day the demo's bookings travel.
        let departs_at = system::millis_at(*TRAVEL, 8 + (i % 12) as i64);
        system
            .flight(&FlightScheduled {
                flight_id: id.into(),
                origin: from.into(),
                destination: to.into(),
                departs_at,
                arrives_at: departs_at + 3 * 3_600_000,
                seats,
                seat_price: eur(9_900 + (i % 6) as i64 * 1_000),
            })
            .await?;
    }
    let hotels = catalog
        .frankfurt
        .iter()
        .map(|id| (id.as_str(), "Frankfurt", HOTEL_ROOMS, 9_500))
        .chain([(SCARCE_HOTEL, "Frankfurt", 3, 6_000)])
        .chain(
            catalog
                .berlin
                .iter()
                .map(|id| (id.as_str(), "Berlin", HOTEL_ROOMS, 8_500)),
        );
    for (id, city, rooms, rate) in hotels {
        let name = match id {
            "FRA-CENTRAL" => "Central".to_owned(),
            SCARCE_HOTEL => "Tiny Inn".to_owned(),
            "BER-MITTE" => "Mitte".to_owned(),
            other => format!("{city} {}", other.rsplit('-').next().unwrap_or(other)),
        };
        system
            .hotel(&HotelListed {
                hotel_id: id.into(),
                name,
                city: city.into(),
                rooms,
                nightly_rate: eur(rate),
            })
            .await?;
    }
    Ok(())
}

/// Signs users up and logs them in through the gateway; every tenth gets too little money, the
/// others enough for their share of `bookings` (at most ~1,000 EUR each), so that a large run
/// declines payments only for the poor users.
async fn seed_users(
    system: &System,
    demo: &Demo,
    count: usize,
    bookings: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let per_user = i64::try_from(bookings.div_ceil(count.max(1))).unwrap_or(i64::MAX);
    let rich = eur(per_user.saturating_mul(100_000).max(5_000_000));
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let email = format!("user{i}@demo.tripstream.dev");
        let password = format!("demo password {i}");
        let (status, user) = demo
            .post("/v1/users", None, json!({"email": email, "password": password, "display_name": format!("Demo user {i}")}))
            .await?;
        anyhow::ensure!(
            status == 201,
            "signing up {email} answered {status}: {user}"
        );
        let (status, session) = demo
            .post(
                "/v1/sessions",
                None,
                json!({"email": email, "password": password}),
            )
            .await?;
        anyhow::ensure!(
            status == 201,
            "logging in {email} answered {status}: {session}"
        );
        let user_id = field(&user, "user_id")?;
        let balance = if i % 10 == 9 {
            eur(15_000)
        } else {
            rich.clone()
        };
        system.credit(&user_id, balance).await?;
        users.push((user_id, field(&session, "token")?));
    }
    Ok(users)
}

/// Waits until the gateway's view shows the whole catalog (it arrives through the log), so
/// that no booking asks for a flight or hotel the gateway does not know yet.
async fn wait_for_catalog(demo: &Demo, token: &str, catalog: &Catalog) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let searches = [
        (
            format!("/v1/flights?from=LIS&to=FRA&date={}", travel(0)),
            "flights",
            catalog.lis_fra.len() + 1,
        ),
        (
            format!("/v1/flights?from=OPO&to=BER&date={}", travel(0)),
            "flights",
            catalog.opo_ber.len(),
        ),
        (
            "/v1/hotels?city=Frankfurt".to_owned(),
            "hotels",
            catalog.frankfurt.len() + 1,
        ),
        (
            "/v1/hotels?city=Berlin".to_owned(),
            "hotels",
            catalog.berlin.len(),
        ),
    ];
    for (path, list, expected) in &searches {
        loop {
            let (_, found) = demo.get(path, token).await?;
            if found[list].as_array().is_some_and(|f| f.len() == *expected) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the catalog did not reach the gateway within 60 s ({path} does not show {expected} {list})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Places booking `i` (its flight, hotel and extras follow from `i`) and polls it to the end.
async fn place(demo: &Demo, catalog: &Catalog, token: &str, i: usize) -> anyhow::Result<Outcome> {
    let (flight, hotel) = catalog.pick(i);
    let extras = if i.is_multiple_of(3) {
        json!([{"code": "LUGGAGE", "quantity": 1}, {"code": "BREAKFAST", "quantity": 2}])
    } else {
        json!([])
    };
    let body = json!({
        "flight_id": flight, "seats": seats_of(i), "hotel_id": hotel,
        "check_in": travel(0), "check_out": travel(2), "rooms": 1, "extras": extras
    });
    let started = Instant::now();
    let (status, booking) = demo.post("/v1/bookings", Some(token), body).await?;
    anyhow::ensure!(status == 202, "booking {i} answered {status}: {booking}");
    let id = field(&booking, "booking_id")?;
    let deadline = started + Duration::from_secs(120);
    loop {
        let (status, view) = demo.get(&format!("/v1/bookings/{id}"), token).await?;
        anyhow::ensure!(status == 200, "booking {id} answered {status}: {view}");
        if view["status"] != "PENDING" {
            return Ok(Outcome {
                status: field(&view, "status")?,
                reason: view["reason"].as_str().map(str::to_owned),
                latency: started.elapsed(),
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "booking {id} still pending after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A text field of an answer of the gateway or auth; an answer without it is an error.
fn field(answer: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    answer[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the answer has no text field {name}: {answer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seats and rooms that `bookings` bookings ask of each flight and hotel.
    fn demand(catalog: &Catalog, bookings: usize) -> BTreeMap<String, (i64, i64)> {
        let mut asked: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for i in 0..bookings {
            let (flight, hotel) = catalog.pick(i);
            asked.entry(flight.into()).or_default().0 += i64::from(seats_of(i));
            asked.entry(hotel.into()).or_default().1 += 1;
        }
        asked
    }

    #[test]
    fn a_small_demo_keeps_the_small_catalog() {
        let catalog = Catalog::for_bookings(100);
        assert_eq!((catalog.flights(), catalog.hotels()), (6, 3));
    }

    #[test]
    fn a_large_demo_has_seats_and_rooms_for_all_but_the_scarce_flight_and_hotel() {
        let catalog = Catalog::for_bookings(20_000);
        let asked = demand(&catalog, 20_000);
        for (id, (seats, rooms)) in &asked {
            match id.as_str() {
                SCARCE_FLIGHT => assert!(*seats > 6, "the scarce flight still refuses"),
                SCARCE_HOTEL => assert!(*rooms > 3, "the scarce hotel still refuses"),
                _ => assert!(
                    *seats <= i64::from(FLIGHT_SEATS) && *rooms <= i64::from(HOTEL_ROOMS),
                    "{id} is asked for {seats} seats and {rooms} rooms"
                ),
            }
        }
    }
}
