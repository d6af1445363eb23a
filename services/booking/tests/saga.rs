//! The booking saga end to end on the embedded broker, with the flight, hotel and payment
//! services running beside it: confirmed, declined and compensated, sold out, invalid, many
//! bookings racing for the last seats, and time-outs (each announced once).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use booking::{Hold, Saga, Status, Undo};
use events::{
    AccountCredited, BookingRequested, BookingTimedOut, CancellationReason, Extra, FlightScheduled,
    FlightSelection, HotelListed, HotelSelection, Money, topics,
};
use payment::Charge;
use rust_decimal::Decimal;
use streams::codec::Codec;
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::kafka::topic::{Target, TopicSet};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::registry::Client;
use streams::replay::Start;
use streams::service::{Data, Settings};
use streams::store::Store;
use tokio::sync::watch;

fn eur(amount: i64) -> Money {
    Money::new(Decimal::new(amount * 100, 2), "EUR")
}

struct System {
    broker: EmbeddedBroker,
    registry: registry::Running,
    producer: Producer,
    stores: [Store; 4],
    stop: watch::Sender<bool>,
    services: Vec<tokio::task::JoinHandle<streams::Result<()>>>,
}

/// One system at a time: two on two cores starve each other's consumer groups.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn settings(broker: &EmbeddedBroker, registry: &registry::Running, store: &Store) -> Settings {
    let mut settings = Settings::new(
        broker.bootstrap_servers(),
        registry.url(),
        Data::Store(store.clone()),
    );
    settings.consumer = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "300".into()),
        ("fetch.wait.max.ms".into(), "10".into()),
    ];
    settings
}

async fn start() -> System {
    start_with(booking::TIMEOUT, true).await
}

/// Starts a broker with the topics, the registry, and a producer: no service yet.
async fn infrastructure() -> (EmbeddedBroker, registry::Running, Producer) {
    streams::telemetry::init("warn");
    let broker = EmbeddedBroker::start(1).expect("broker");
    let set = TopicSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topics"))
        .expect("topics/ is valid");
    streams::kafka::topic::apply(Target::Embedded(&broker), &set.all())
        .await
        .expect("topics");
    let registry = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await
    .expect("registry");
    let codec = Codec::new(Client::new(&registry.url()).expect("client"));
    let producer = Producer::new(broker.bootstrap_servers(), codec, &[]).expect("producer");
    (broker, registry, producer)
}

/// Starts booking (sagas timing out after `timeout`), hotel, payment, and flight if asked.
async fn start_with(timeout: Duration, with_flight: bool) -> System {
    let (broker, registry, producer) = infrastructure().await;
    let stores = [(); 4].map(|()| Store::temporary().expect("store"));
    let (stop, _) = watch::channel(false);
    let mut services = vec![
        tokio::spawn(booking::run_with(
            settings(&broker, &registry, &stores[0]),
            timeout,
            until(&stop),
        )),
        tokio::spawn(hotel::run(
            settings(&broker, &registry, &stores[2]),
            until(&stop),
        )),
        tokio::spawn(payment::run(
            settings(&broker, &registry, &stores[3]),
            until(&stop),
        )),
    ];
    if with_flight {
        services.push(tokio::spawn(flight::run(
            settings(&broker, &registry, &stores[1]),
            until(&stop),
        )));
    }
    System {
        broker,
        registry,
        producer,
        stores,
        stop,
        services,
    }
}

fn until(stop: &watch::Sender<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut stopped = stop.subscribe();
    async move {
        let _ = stopped.wait_for(|s| *s).await;
    }
}

impl System {
    fn start_flight(&mut self) {
        self.services.push(tokio::spawn(flight::run(
            settings(&self.broker, &self.registry, &self.stores[1]),
            until(&self.stop),
        )));
    }

    async fn send<E: streams::codec::Event>(&self, topic: &str, event: &E) {
        self.producer
            .send(topic, event, &Metadata::new(event.key()))
            .await
            .expect("sent");
    }

    async fn flight(&self, id: &str, seats: i32, price: i64) {
        let flight = FlightScheduled {
            flight_id: id.into(),
            origin: "LIS".into(),
            destination: "FRA".into(),
            departs_at: 1_796_000_000_000,
            arrives_at: 1_796_010_000_000,
            seats,
            seat_price: eur(price),
        };
        self.send(topics::FLIGHTS, &flight).await;
    }

    async fn hotel(&self, id: &str, rooms: i32, rate: i64) {
        let hotel = HotelListed {
            hotel_id: id.into(),
            name: format!("Hotel {id}"),
            city: "Frankfurt".into(),
            rooms,
            nightly_rate: eur(rate),
        };
        self.send(topics::HOTELS, &hotel).await;
    }

    async fn credit(&self, user: &str, amount: i64) {
        let credit = AccountCredited {
            user_id: user.into(),
            amount: eur(amount),
            note: "seed".into(),
        };
        self.send(topics::PAYMENT_COMMANDS, &credit).await;
    }

    async fn book(&self, booking: &str, user: &str, flight: &str, seats: i32, hotel: &str) {
        let request = request(booking, user, flight, seats, hotel);
        self.send(topics::BOOKINGS, &request).await;
    }

    /// Waits until every listed booking's saga is finished.
    async fn finished(&self, bookings: &[String]) -> Vec<Saga> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sagas: Vec<Saga> = bookings
                .iter()
                .filter_map(|b| booking::saga(&self.stores[0], b).expect("read"))
                .collect();
            if sagas.len() == bookings.len() && sagas.iter().all(Saga::finished) {
                return sagas;
            }
            assert!(
                Instant::now() < deadline,
                "sagas not finished within 60 s: {:?}",
                sagas
                    .iter()
                    .filter(|s| !s.finished())
                    .map(|s| (
                        &s.request.booking_id,
                        &s.status,
                        &s.seats,
                        &s.rooms,
                        &s.payment
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for service in self.services {
            tokio::time::timeout(Duration::from_secs(30), service)
                .await
                .expect("a service stopped within 30 s")
                .expect("joined")
                .expect("clean stop");
        }
        self.registry.stop().await.expect("registry stops");
        drop(self.producer);
        drop(self.broker);
    }
}

fn request(booking: &str, user: &str, flight: &str, seats: i32, hotel: &str) -> BookingRequested {
    BookingRequested {
        booking_id: booking.into(),
        user_id: user.into(),
        flight: FlightSelection {
            flight_id: flight.into(),
            seats,
        },
        hotel: HotelSelection {
            hotel_id: hotel.into(),
            check_in: 20_800,
            check_out: 20_802,
            rooms: 1,
        },
        extras: vec![Extra {
            code: "LUGGAGE".into(),
            quantity: 1,
            unit_price: eur(20),
        }],
        requested_at: events::now_millis(),
    }
}

fn cancelled(saga: &Saga) -> Option<CancellationReason> {
    match &saga.status {
        Status::Cancelled(reason, _) => Some(*reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_confirm_compensate_and_never_oversell() {
    let _serial = SERIAL.lock().await;
    let system = start().await;
    system.flight("LH1", 10, 100).await;
    system.flight("LH2", 1, 100).await;
    system.flight("LH3", 5, 50).await;
    system.hotel("H1", 50, 80).await;
    system.credit("rich", 100_000).await;
    system.credit("poor", 50).await;
    // The catalog and balances are on other topics than the commands: let them land first.
    tokio::time::sleep(Duration::from_secs(2)).await;

    system.book("b-ok", "rich", "LH1", 2, "H1").await;
    system.book("b-declined", "poor", "LH1", 1, "H1").await;
    system.book("b-sold-out", "rich", "LH2", 2, "H1").await;
    system.book("b-invalid", "rich", "LH1", 0, "H1").await;
    let first = ["b-ok", "b-declined", "b-sold-out", "b-invalid"].map(String::from);
    let sagas = system.finished(&first).await;

    // 2 seats at 100 + 1 room for 2 nights at 80 + luggage at 20.
    assert_eq!(sagas[0].status, Status::Confirmed(eur(380)));
    assert_eq!(
        cancelled(&sagas[1]),
        Some(CancellationReason::PaymentDeclined)
    );
    assert_eq!(
        cancelled(&sagas[2]),
        Some(CancellationReason::SeatsUnavailable)
    );
    assert_eq!(
        cancelled(&sagas[3]),
        Some(CancellationReason::InvalidRequest)
    );
    let payments = &system.stores[3];
    assert_eq!(
        payment::balance(payments, "rich", "EUR").expect("balance"),
        Decimal::new(100_000 - 380, 0)
    );
    assert_eq!(
        payment::balance(payments, "poor", "EUR").expect("balance"),
        Decimal::new(50, 0),
        "a declined payment takes nothing"
    );
    let charges = payment::charges(payments).expect("charges");
    assert!(
        !charges.iter().any(|(b, _)| b == "b-sold-out"),
        "a sold-out flight is never charged: {charges:?}"
    );
    // The declined booking's seat and room were given back: only b-ok holds anything.
    assert_eq!(
        flight::inventory(&system.stores[1], "LH1").expect("flight"),
        Some((10, 2))
    );
    assert_eq!(
        hotel::inventory(&system.stores[2], "H1", 20_800).expect("hotel"),
        Some((50, 1))
    );

    // Twenty bookings race for the last five seats of LH3.
    let racing: Vec<String> = (0..20).map(|i| format!("race-{i:02}")).collect();
    futures::future::join_all(
        racing
            .iter()
            .map(|b| system.book(b, "rich", "LH3", 1, "H1")),
    )
    .await;
    let raced = system.finished(&racing).await;
    let confirmed = raced
        .iter()
        .filter(|s| matches!(s.status, Status::Confirmed(_)))
        .count();
    assert_eq!(confirmed, 5, "exactly the seats there were");
    assert!(
        raced
            .iter()
            .filter(|s| !matches!(s.status, Status::Confirmed(_)))
            .all(|s| cancelled(s) == Some(CancellationReason::SeatsUnavailable))
    );
    assert_eq!(
        flight::inventory(&system.stores[1], "LH3").expect("flight"),
        Some((5, 5))
    );
    assert_eq!(
        hotel::inventory(&system.stores[2], "H1", 20_801).expect("hotel"),
        Some((50, 6)),
        "rooms held equal confirmed bookings"
    );
    // Money charged equals the confirmed totals.
    let charged: Decimal = payment::charges(payments)
        .expect("charges")
        .iter()
        .filter_map(|(_, c)| match c {
            Charge::Charged { amount, .. } => Some(amount.amount),
            _ => None,
        })
        .sum();
    let confirmed_totals: Decimal = booking::sagas(&system.stores[0])
        .expect("sagas")
        .iter()
        .filter_map(|s| match &s.status {
            Status::Confirmed(total) => Some(total.amount),
            _ => None,
        })
        .sum();
    assert_eq!(charged, confirmed_totals);
    assert_eq!(confirmed_totals, Decimal::new(380 + 5 * (50 + 160 + 20), 0));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_whose_flight_service_is_down_times_out_and_ends_once_it_is_back() {
    let _serial = SERIAL.lock().await;
    let mut system = start_with(Duration::from_secs(2), false).await;
    system.flight("LH1", 10, 100).await;
    system.hotel("H1", 50, 80).await;
    system.credit("rich", 100_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.book("b-late", "rich", "LH1", 2, "H1").await;

    // The hotel answers, the flight service is down: after the deadline the room is released
    // and a release of the seats is queued behind their reservation.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let saga = booking::saga(&system.stores[0], "b-late").expect("read");
        if let Some(saga) = &saga
            && matches!(
                saga.status,
                Status::Compensating(CancellationReason::TimedOut, _)
            )
            && saga.rooms.release == Undo::Done
        {
            assert_eq!(
                (&saga.seats.hold, saga.seats.release),
                (&Hold::Pending, Undo::Asked),
                "waits for the flight service"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no time-out: {saga:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The flight service comes back: it answers the reservation, then releases, and the saga
    // ends. Back, it may read the reservation before its catalog and refuse it: a refusal
    // outranks the time-out, whichever came first.
    system.start_flight();
    let sagas = system.finished(&["b-late".to_owned()]).await;
    let reason = match sagas[0].seats.hold {
        Hold::Refused(_) => CancellationReason::SeatsUnavailable,
        _ => CancellationReason::TimedOut,
    };
    assert_eq!(cancelled(&sagas[0]), Some(reason), "{:?}", sagas[0]);
    assert_eq!(
        flight::inventory(&system.stores[1], "LH1").expect("flight"),
        Some((10, 0)),
        "the late reservation was released"
    );
    assert_eq!(
        hotel::inventory(&system.stores[2], "H1", 20_800).expect("hotel"),
        Some((50, 0))
    );
    assert_eq!(
        payment::balance(&system.stores[3], "rich", "EUR").expect("balance"),
        Decimal::new(100_000, 0),
        "nothing was charged"
    );
    system.stop().await;
}

/// Every record of `topic`, as (event type, key, event id), in log order per partition: read
/// through a replay into a store of its own.
async fn read_back(
    broker: &EmbeddedBroker,
    registry: &registry::Running,
    topic: &str,
) -> Vec<(String, String, String)> {
    let collect = Collect(Default::default());
    let codec = Codec::new(Client::new(&registry.url()).expect("client"));
    streams::replay::replay(
        broker.bootstrap_servers(),
        streams::replay::Inputs::tasks(&[topic]),
        &Start::Beginning,
        &Store::temporary().expect("store"),
        &codec,
        &collect,
        |_| {},
    )
    .await
    .expect("read back");
    collect.0.into_inner().expect("not poisoned")
}

/// What [`read_back`] returns, gathered record by record.
struct Collect(std::sync::Mutex<Vec<(String, String, String)>>);

impl Handler for Collect {
    async fn handle(&self, _: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        if let Some(metadata) = record.metadata {
            self.0.lock().expect("not poisoned").push((
                metadata.event_type.clone().unwrap_or_default(),
                String::from_utf8_lossy(record.key.unwrap_or_default()).into_owned(),
                metadata.event_id.clone(),
            ));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_time_out_is_announced_once_even_by_a_restarted_service() {
    let _serial = SERIAL.lock().await;
    // Booking alone: no flight or hotel service, so the sagas stay compensating (open) after
    // their time-out, waiting for the answers.
    let (broker, registry, producer) = infrastructure().await;
    let store = Store::temporary().expect("store");
    let run = |stop: &watch::Sender<bool>| {
        tokio::spawn(booking::run_with(
            settings(&broker, &registry, &store),
            booking::TIMEOUT,
            until(stop),
        ))
    };
    let (stop, _) = watch::channel(false);
    let first = run(&stop);
    // Requested a minute ago: past the deadline as soon as they are read.
    let ids = ["t-1", "t-2"].map(String::from);
    for id in &ids {
        let mut request = request(id, "rich", "LH1", 1, "H1");
        request.requested_at -= 60_000;
        producer
            .send(topics::BOOKINGS, &request, &Metadata::new(id))
            .await
            .expect("sent");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ids.iter().all(|id| {
        booking::saga(&store, id).expect("read").is_some_and(|s| {
            matches!(
                s.status,
                Status::Compensating(CancellationReason::TimedOut, _)
            )
        })
    }) {
        assert!(Instant::now() < deadline, "no time-out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Some sweeps of the running service, then a restart: its sweep starts with no note of
    // what was announced, and must not announce the sagas again either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    first.await.expect("joined").expect("clean stop");
    let (stop, _) = watch::channel(false);
    let second = run(&stop);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(true);
    second.await.expect("joined").expect("clean stop");

    let mut announced = std::collections::BTreeMap::<String, usize>::new();
    for (kind, key, _) in read_back(&broker, &registry, topics::BOOKINGS).await {
        if kind == BookingTimedOut::TYPE {
            *announced.entry(key).or_default() += 1;
        }
    }
    assert_eq!(
        announced,
        ids.iter().map(|id| (id.clone(), 1)).collect(),
        "announcements per saga"
    );
    registry.stop().await.expect("registry stops");
    drop(producer);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_read_before_their_request_are_applied_after_it_with_their_own_ids() {
    let _serial = SERIAL.lock().await;
    // As a task taken over from a killed instance reads them again: the request's replies,
    // from their own topics, before the request. Booking alone, so nothing else replies.
    let (broker, registry, producer) = infrastructure().await;
    let store = Store::temporary().expect("store");
    let (stop, _) = watch::channel(false);
    let service = tokio::spawn(booking::run_with(
        settings(&broker, &registry, &store),
        booking::TIMEOUT,
        until(&stop),
    ));
    let request = request("e-1", "rich", "LH1", 2, "H1");
    let seats = events::SeatsReserved {
        booking_id: "e-1".into(),
        flight_id: "LH1".into(),
        seats: 2,
        price: eur(300),
    };
    let rooms = events::RoomsReserved {
        booking_id: "e-1".into(),
        hotel_id: "H1".into(),
        nights: 2,
        rooms: 1,
        price: eur(200),
    };
    let (seats_meta, rooms_meta) = (Metadata::new("e-1"), Metadata::new("e-1"));
    producer
        .send(topics::FLIGHT_EVENTS, &seats, &seats_meta)
        .await
        .expect("sent");
    producer
        .send(topics::HOTEL_EVENTS, &rooms, &rooms_meta)
        .await
        .expect("sent");
    let deadline = Instant::now() + Duration::from_secs(60);
    while store
        .scan(b"early/e-1")
        .expect("read")
        .first()
        .is_none_or(|(_, v)| {
            serde_json::from_slice::<Vec<serde_json::Value>>(v).map_or(0, |l| l.len()) < 2
        })
    {
        assert!(
            Instant::now() < deadline,
            "the replies were not kept for their request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    producer
        .send(topics::BOOKINGS, &request, &Metadata::new("e-1"))
        .await
        .expect("sent");
    // Both holds applied: the saga charges, as the charge the rooms' reply caused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let saga = loop {
        if let Some(saga) = booking::saga(&store, "e-1").expect("read")
            && matches!(saga.payment.charge, booking::Charge::Pending)
        {
            break saga;
        }
        assert!(Instant::now() < deadline, "the saga never charged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        store.scan(b"early/").expect("read").is_empty(),
        "kept replies are dropped once applied"
    );
    assert!(!saga.finished(), "the saga waits for the payment");
    let _ = stop.send(true);
    service.await.expect("joined").expect("clean stop");

    let charges: Vec<(String, String)> = read_back(&broker, &registry, topics::PAYMENT_COMMANDS)
        .await
        .into_iter()
        .map(|(kind, _, id)| (kind, id))
        .collect();
    let expected = Metadata::derived_from(&rooms_meta, booking::GROUP, 0).event_id;
    assert_eq!(
        charges,
        vec![("tripstream.payment.ChargePayment".to_owned(), expected)],
        "one charge, with the id the rooms' reply gives it in log order"
    );
    registry.stop().await.expect("registry stops");
    drop(producer);
    drop(broker);
}
