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

/// The route and date every demo flight flies.
const DAY: &str = "2026-12-01";
const DEPARTS: i64 = 1_796_112_000_000; // 2026-12-01T08:00:00Z

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

    crate::note!("Seeding the catalog and {} users...", args.users);
    let flights = seed_catalog(&system).await?;
    let users = seed_users(&system, &demo, args.users).await?;
    wait_for_catalog(&demo, &users[0].1, flights).await?;
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
        let token = users[i % users.len()].1.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = place(&demo, &token, i).await;
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
            "  curl -s '{base}/v1/flights?from=LIS&to=FRA&date={DAY}' -H \"authorization: Bearer $TOKEN\""
        );
        crate::say!(
            "  curl -s -X POST {base}/v1/bookings -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\"
        );
        crate::say!(
            "    -d '{{\"flight_id\":\"TS100\",\"seats\":1,\"hotel_id\":\"FRA-CENTRAL\",\"check_in\":\"{DAY}\",\"check_out\":\"2026-12-03\"}}'"
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

/// Puts flights and hotels on sale; returns how many flights fly LIS to FRA.
async fn seed_catalog(system: &System) -> anyhow::Result<usize> {
    let mut lis_fra = 0;
    for (i, (id, from, to, seats)) in [
        ("TS100", "LIS", "FRA", 400),
        ("TS102", "LIS", "FRA", 400),
        ("TS104", "LIS", "FRA", 400),
        ("TS900", "LIS", "FRA", 6),
        ("TS200", "OPO", "BER", 400),
        ("TS202", "OPO", "BER", 400),
    ]
    .into_iter()
    .enumerate()
    {
        let departs_at = DEPARTS + i as i64 * 3_600_000;
        system
            .flight(&FlightScheduled {
                flight_id: id.into(),
                origin: from.into(),
                destination: to.into(),
                departs_at,
                arrives_at: departs_at + 3 * 3_600_000,
                seats,
                seat_price: eur(9_900 + i as i64 * 1_000),
            })
            .await?;
        if from == "LIS" {
            lis_fra += 1;
        }
    }
    for (id, name, city, rooms, rate) in [
        ("FRA-CENTRAL", "Central", "Frankfurt", 500, 9_500),
        ("FRA-TINY", "Tiny Inn", "Frankfurt", 3, 6_000),
        ("BER-MITTE", "Mitte", "Berlin", 500, 8_500),
    ] {
        system
            .hotel(&HotelListed {
                hotel_id: id.into(),
                name: name.into(),
                city: city.into(),
                rooms,
                nightly_rate: eur(rate),
            })
            .await?;
    }
    Ok(lis_fra)
}

/// Signs users up and logs them in through the gateway; every tenth gets too little money.
async fn seed_users(
    system: &System,
    demo: &Demo,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
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
            eur(5_000_000)
        };
        system.credit(&user_id, balance).await?;
        users.push((user_id, field(&session, "token")?));
    }
    Ok(users)
}

/// Waits until the gateway's view shows the catalog (it arrives through the log).
async fn wait_for_catalog(demo: &Demo, token: &str, flights: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, found) = demo
            .get(&format!("/v1/flights?from=LIS&to=FRA&date={DAY}"), token)
            .await?;
        let hotels = demo.get("/v1/hotels?city=Berlin", token).await?.1;
        if found["flights"]
            .as_array()
            .is_some_and(|f| f.len() == flights)
            && hotels["hotels"].as_array().is_some_and(|h| !h.is_empty())
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the catalog did not reach the gateway within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Places booking `i` (its flight, hotel and extras follow from `i`) and polls it to the end.
async fn place(demo: &Demo, token: &str, i: usize) -> anyhow::Result<Outcome> {
    let (flight, hotel) = match i {
        i if i % 20 == 7 => ("TS900", "FRA-CENTRAL"),
        i if i % 25 == 3 => ("TS102", "FRA-TINY"),
        i if i % 2 == 0 => (["TS100", "TS102", "TS104"][i % 3], "FRA-CENTRAL"),
        i => (["TS200", "TS202"][i % 2], "BER-MITTE"),
    };
    let extras = if i.is_multiple_of(3) {
        json!([{"code": "LUGGAGE", "quantity": 1}, {"code": "BREAKFAST", "quantity": 2}])
    } else {
        json!([])
    };
    let body = json!({
        "flight_id": flight, "seats": 1 + i % 2, "hotel_id": hotel,
        "check_in": DAY, "check_out": "2026-12-03", "rooms": 1, "extras": extras
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
