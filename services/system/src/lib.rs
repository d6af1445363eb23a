//! The whole tripstream system in one process, each service with its own store: the embedded
//! broker, the registry, booking, flight, hotel, payment, auth and the gateway. The demo, the
//! saga bench and the end-to-end tests start it; it also checks the system's invariants.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use booking::{Saga, Status};
use events::{AccountCredited, FlightScheduled, HotelListed, Money, topics};
use payment::Charge;
use rdkafka::producer::Producer as _;
use rust_decimal::Decimal;
use streams::codec::{Codec, Event};
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::kafka::topic::{Target, TopicSet};
use streams::processor::Positions;
use streams::registry::Client;
use streams::service::{Data, Settings};
use streams::store::Store;
use tokio::sync::watch;

/// The day `ahead` days after today (UTC), in days since 1970-01-01. The gateway refuses a
/// check-in before today, so the demo and the tests travel on days counted from today.
pub fn day_from_today(ahead: i32) -> i32 {
    let today = events::now_millis().div_euclid(86_400_000);
    i32::try_from(today)
        .unwrap_or(i32::MAX)
        .saturating_add(ahead)
}

/// Milliseconds since the epoch at `hour`:00 UTC of `day` (days since 1970-01-01).
pub fn millis_at(day: i32, hour: i64) -> i64 {
    i64::from(day) * 86_400_000 + hour * 3_600_000
}

/// How the system is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the gateway listens.
    pub gateway: SocketAddr,
    /// The project root holding `topics/`.
    pub root: std::path::PathBuf,
    /// How long tokens live.
    pub token_ttl: Duration,
    /// Warm copies each instance of booking, flight, hotel and payment keeps of the tasks
    /// other instances own (`--standby-replicas`); 0, the default, keeps none.
    pub standby_replicas: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
            token_ttl: token::DEFAULT_TTL,
            standby_replicas: 0,
        }
    }
}

/// Records not yet applied plus outbox entries not yet published, over every store, with the
/// high watermarks seen. Every partition of every topic a service reads counts, also one it
/// never read from (from its low watermark then): a partition's first record leaves no stored
/// offset to compare with.
fn behind(stores: &Stores, producer: &Producer) -> anyhow::Result<(i64, Vec<i64>)> {
    let client = producer.inner().client();
    let timeout = Duration::from_secs(10);
    let readers: [(&Store, &str, &[&str]); 8] = [
        (&stores.booking, booking::GROUP, booking::TOPICS),
        (&stores.flight, flight::GROUP, flight::TOPICS),
        (&stores.flight, flight::GROUP, flight::GLOBALS),
        (&stores.hotel, hotel::GROUP, hotel::TOPICS),
        (&stores.hotel, hotel::GROUP, hotel::GLOBALS),
        (&stores.payment, payment::GROUP, payment::TOPICS),
        (&stores.gateway, gateway::GROUP, gateway::TOPICS),
        (&stores.gateway, gateway::GROUP, gateway::GLOBALS),
    ];
    let mut behind = 0;
    let mut watermarks = Vec::new();
    for store in stores.all() {
        behind += i64::try_from(store.outbox().len())?;
    }
    for (store, group, topics) in readers {
        for topic in topics {
            let metadata = client.fetch_metadata(Some(topic), timeout)?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) = client.fetch_watermarks(topic, partition.id(), timeout)?;
                let next = store
                    .next_offset(group, topic, partition.id())?
                    .unwrap_or(low);
                behind += (high - next).max(0);
                watermarks.push(high);
            }
        }
    }
    Ok((behind, watermarks))
}

/// Each service's store.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The saga.
    pub booking: Store,
    /// Seats.
    pub flight: Store,
    /// Rooms.
    pub hotel: Store,
    /// Money.
    pub payment: Store,
    /// Views.
    pub gateway: Store,
    /// Users.
    pub auth: Store,
}

impl Stores {
    /// Every store.
    pub fn all(&self) -> [&Store; 6] {
        [
            &self.booking,
            &self.flight,
            &self.hotel,
            &self.payment,
            &self.gateway,
            &self.auth,
        ]
    }
}

/// The running system.
pub struct System {
    /// The broker.
    pub broker: EmbeddedBroker,
    registry: registry::Running,
    auth: auth::Running,
    gateway: gateway::Running,
    /// Each service's store.
    pub stores: Stores,
    /// A producer for seeding.
    pub producer: Producer,
    /// The codec on the system's registry.
    pub codec: Codec,
    /// Auth's token issuer (its signing keys): tests mint and rotate with it.
    pub tokens: token::Issuer,
    stop: watch::Sender<bool>,
    services: Vec<(&'static str, tokio::task::JoinHandle<streams::Result<()>>)>,
    /// What each of the services above holds: (service, its positions).
    positions: Vec<(&'static str, Positions)>,
    /// [`Options::standby_replicas`], for instances started later too.
    standby_replicas: usize,
}

/// One more instance of a service, started beside the system's own (scale-out benches and
/// tests): it joins the service's consumer group and takes its share of the tasks.
pub struct Instance {
    /// The partitions it holds and how far it is.
    pub positions: Positions,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<streams::Result<()>>,
}

impl Instance {
    /// Drops it where it stands, as a killed process would go: no draining, no commit.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops it cleanly.
    ///
    /// # Errors
    ///
    /// When it had failed, or does not stop within 30 s.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .map_err(|_| anyhow::anyhow!("an instance did not stop within 30 s"))??
            .map_err(|e| anyhow::anyhow!("an instance failed: {e}"))
    }
}

/// The settings of a service instance of the system, on `store`.
fn instance_settings(
    broker: &EmbeddedBroker,
    registry: &str,
    store: &Store,
    standby_replicas: usize,
) -> Settings {
    let mut settings = Settings::new(
        broker.bootstrap_servers(),
        registry,
        Data::Store(store.clone()),
    );
    settings.consumer = fast_consumer();
    settings.standby_replicas = standby_replicas;
    settings
}

/// The event-driven service `name`, running until `shutdown`.
fn run_service(
    name: &str,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = streams::Result<()>> + Send>> {
    match name {
        "booking" => Box::pin(booking::run(settings, shutdown)),
        "flight" => Box::pin(flight::run(settings, shutdown)),
        "hotel" => Box::pin(hotel::run(settings, shutdown)),
        _ => Box::pin(payment::run(settings, shutdown)),
    }
}

/// Consumer settings for one process on the embedded broker: short fetch waits, so records
/// move quickly (session timeouts are the processor's defaults for the embedded broker).
///
/// The embedded broker answers a fetch that finds nothing after this wait, never sooner (it
/// does not wake waiting fetches when records arrive), so the wait is the latency of a record
/// that arrives while a consumer waits, at every hop of a saga: with 20 ms, `bench saga`'s p50
/// at half load was 217–270 ms against 107–124 ms with 5 ms, and its p99 314–453 ms. It is
/// also how often a consumer with nothing to do asks again, which idle consumers of a broker
/// in this process avoid by pausing (`streams::kafka::idle`).
pub fn fast_consumer() -> Vec<(String, String)> {
    vec![("fetch.wait.max.ms".into(), FETCH_WAIT_MS.into())]
}

/// The fetch wait of [`fast_consumer`], in milliseconds.
pub const FETCH_WAIT_MS: &str = "5";

impl System {
    /// Starts everything and waits until each service holds its partitions.
    ///
    /// # Errors
    ///
    /// When a part cannot start.
    pub async fn start(options: Options) -> anyhow::Result<System> {
        let broker = EmbeddedBroker::start(1)?;
        let set = TopicSet::load(&options.root.join("topics")).map_err(|errors| {
            anyhow::anyhow!(
                "topics/ is invalid: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        streams::kafka::topic::apply(Target::Embedded(&broker), &set.all()).await?;
        let registry = registry::start(registry::Settings::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            broker.bootstrap_servers(),
        ))
        .await?;
        let codec = Codec::new(Client::new(&registry.url())?);
        let producer = Producer::new(broker.bootstrap_servers(), codec.clone(), &[])?;
        let stores = Stores {
            booking: Store::temporary()?,
            flight: Store::temporary()?,
            hotel: Store::temporary()?,
            payment: Store::temporary()?,
            gateway: Store::temporary()?,
            auth: Store::temporary()?,
        };
        let settings = |store: &Store, standby_replicas| {
            instance_settings(&broker, &registry.url(), store, standby_replicas)
        };
        let (stop, stopped) = watch::channel(false);
        let until = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut services = Vec::new();
        let mut positions = Vec::new();
        for (name, store) in [
            ("booking", &stores.booking),
            ("flight", &stores.flight),
            ("hotel", &stores.hotel),
            ("payment", &stores.payment),
        ] {
            let settings = settings(store, options.standby_replicas);
            positions.push((name, settings.positions.clone()));
            services.push((name, tokio::spawn(run_service(name, settings, until()))));
        }
        let tokens = token::Issuer::random(options.token_ttl)?;
        let mut auth_settings = auth::Settings::new(
            settings(&stores.auth, 0),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens.clone(),
        );
        // Every client of the one-process system shares one address (the demo signs up
        // thousands of users from it); failures stay counted per email and address.
        auth_settings.throttle.sign_ups_per_address = u32::MAX;
        let auth = auth::start(auth_settings).await?;
        let gateway = gateway::start(gateway::Settings {
            service: settings(&stores.gateway, 0),
            listen: options.gateway,
            auth_url: auth.url(),
        })
        .await?;
        Ok(System {
            broker,
            registry,
            auth,
            gateway,
            stores,
            producer,
            codec,
            tokens,
            stop,
            services,
            positions,
            standby_replicas: options.standby_replicas,
        })
    }

    /// What the system's own instance of `service` holds (`None` for a service it does not
    /// run as a processor).
    pub fn positions(&self, service: &str) -> Option<&Positions> {
        self.positions
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, positions)| positions)
    }

    /// Starts another instance of `service` (booking, flight, hotel or payment) on `store`.
    ///
    /// # Errors
    ///
    /// When `service` is not one of those.
    pub fn start_instance(&self, service: &str, store: &Store) -> anyhow::Result<Instance> {
        anyhow::ensure!(
            ["booking", "flight", "hotel", "payment"].contains(&service),
            "{service} does not run as several instances here"
        );
        let settings = instance_settings(
            &self.broker,
            &self.registry.url(),
            store,
            self.standby_replicas,
        );
        let positions = settings.positions.clone();
        let (stop, mut stopped) = watch::channel(false);
        let until = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(run_service(service, settings, until));
        Ok(Instance {
            positions,
            stop,
            task,
        })
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> String {
        self.gateway.url()
    }

    /// The auth service's base URL.
    pub fn auth_url(&self) -> String {
        self.auth.url()
    }

    /// The registry's base URL.
    pub fn registry_url(&self) -> String {
        self.registry.url()
    }

    /// Sends one event, keyed by its aggregate.
    ///
    /// # Errors
    ///
    /// When the broker or registry refuses it.
    pub async fn send<E: Event>(&self, topic: &str, event: &E) -> anyhow::Result<()> {
        self.producer
            .send(topic, event, &Metadata::new(event.key()))
            .await?;
        Ok(())
    }

    /// Puts a flight on sale.
    ///
    /// # Errors
    ///
    /// As [`System::send`].
    pub async fn flight(&self, flight: &FlightScheduled) -> anyhow::Result<()> {
        self.send(topics::FLIGHTS, flight).await
    }

    /// Puts a hotel on sale.
    ///
    /// # Errors
    ///
    /// As [`System::send`].
    pub async fn hotel(&self, hotel: &HotelListed) -> anyhow::Result<()> {
        self.send(topics::HOTELS, hotel).await
    }

    /// Adds money to a user's balance.
    ///
    /// # Errors
    ///
    /// As [`System::send`].
    pub async fn credit(&self, user_id: &str, amount: Money) -> anyhow::Result<()> {
        let credit = AccountCredited {
            user_id: user_id.into(),
            amount,
            note: "seed".into(),
        };
        self.send(topics::PAYMENT_COMMANDS, &credit).await
    }

    /// Whether every service is still running (none has returned or panicked).
    pub fn services_running(&self) -> bool {
        self.services.iter().all(|(_, task)| !task.is_finished())
    }

    /// Stops everything, gateway first, broker last.
    ///
    /// # Errors
    ///
    /// When a part had failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        self.auth.stop().await?;
        let _ = self.stop.send(true);
        for (name, task) in self.services {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .map_err(|_| anyhow::anyhow!("{name} did not stop within 30 s"))?
                .map_err(|e| anyhow::anyhow!("{name} panicked: {e}"))?
                .map_err(|e| anyhow::anyhow!("{name} failed: {e}"))?;
        }
        self.registry.stop().await?;
        drop(self.producer);
        drop(self.broker);
        Ok(())
    }

    /// Waits until the system is idle: every service applied every record of the partitions it
    /// reads (its stored offsets reach the high watermarks) and published its whole outbox, seen
    /// twice in a row with no high watermark moved.
    ///
    /// # Errors
    ///
    /// When it is not idle within `limit`, or a store or the broker cannot be read.
    pub async fn settle(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut idle_at = None;
        loop {
            let (stores, producer) = (self.stores.clone(), self.producer.clone());
            // Watermark requests block; they run off the async workers.
            let (behind, watermarks) =
                tokio::task::spawn_blocking(move || behind(&stores, &producer)).await??;
            // One look reads stores and watermarks one after another, so an entry can move from
            // an outbox (read first) to a topic (read later) in between. Idle twice in a row
            // with no watermark moved means nothing was in flight during either look.
            if behind > 0 {
                idle_at = None;
            } else if idle_at.as_ref() == Some(&watermarks) {
                return Ok(());
            } else {
                idle_at = Some(watermarks);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the services are still {behind} records or outbox entries behind after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks the system's invariants on the services' stores.
    ///
    /// # Errors
    ///
    /// When a store cannot be read.
    pub fn consistency(&self) -> anyhow::Result<Consistency> {
        consistency(&self.stores)
    }
}

/// The invariants, each with what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistency {
    /// Sagas started.
    pub sagas: usize,
    /// Sagas not confirmed or cancelled.
    pub unfinished: usize,
    /// Flights whose held seats differ from their confirmed bookings' seats:
    /// (flight, held, confirmed).
    pub seat_mismatches: Vec<(String, i64, i64)>,
    /// Hotel nights whose booked rooms differ from confirmed bookings' rooms:
    /// (hotel, day, booked, confirmed).
    pub room_mismatches: Vec<(String, i32, i64, i64)>,
    /// Flights or nights sold beyond what they have.
    pub oversold: Vec<String>,
    /// Money held by charges (charged, not refunded).
    pub charged: Decimal,
    /// The sum of confirmed totals.
    pub confirmed_totals: Decimal,
}

impl Consistency {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.unfinished == 0
            && self.seat_mismatches.is_empty()
            && self.room_mismatches.is_empty()
            && self.oversold.is_empty()
            && self.charged == self.confirmed_totals
    }
}

/// Checks the invariants: every saga finished; seats and rooms held equal confirmed bookings;
/// nothing oversold; money charged equals confirmed totals.
///
/// # Errors
///
/// When a store cannot be read.
pub fn consistency(stores: &Stores) -> anyhow::Result<Consistency> {
    let sagas = booking::sagas(&stores.booking)?;
    let confirmed: Vec<&Saga> = sagas
        .iter()
        .filter(|s| matches!(s.status, Status::Confirmed(_)))
        .collect();
    let mut seats: BTreeMap<String, i64> = BTreeMap::new();
    let mut nights: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for saga in &sagas {
        let r = &saga.request;
        seats.entry(r.flight.flight_id.clone()).or_default();
        for day in r.hotel.check_in..r.hotel.check_out.min(r.hotel.check_in.saturating_add(60)) {
            nights.entry((r.hotel.hotel_id.clone(), day)).or_default();
        }
    }
    for saga in &confirmed {
        let r = &saga.request;
        *seats.entry(r.flight.flight_id.clone()).or_default() += i64::from(r.flight.seats);
        for day in r.hotel.check_in..r.hotel.check_out {
            *nights.entry((r.hotel.hotel_id.clone(), day)).or_default() += i64::from(r.hotel.rooms);
        }
    }
    let mut report = Consistency {
        sagas: sagas.len(),
        unfinished: sagas.iter().filter(|s| !s.finished()).count(),
        seat_mismatches: Vec::new(),
        room_mismatches: Vec::new(),
        oversold: Vec::new(),
        charged: Decimal::ZERO,
        confirmed_totals: Decimal::ZERO,
    };
    for (flight_id, expected) in seats {
        if let Some((capacity, held)) = flight::inventory(&stores.flight, &flight_id)? {
            if held != expected {
                report
                    .seat_mismatches
                    .push((flight_id.clone(), held, expected));
            }
            if held > i64::from(capacity) || held < 0 {
                report
                    .oversold
                    .push(format!("{flight_id}: {held} of {capacity} seats"));
            }
        }
    }
    for ((hotel_id, day), expected) in nights {
        if let Some((capacity, booked)) = hotel::inventory(&stores.hotel, &hotel_id, day)? {
            if booked != expected {
                report
                    .room_mismatches
                    .push((hotel_id.clone(), day, booked, expected));
            }
            if booked > i64::from(capacity) || booked < 0 {
                report.oversold.push(format!(
                    "{hotel_id} day {day}: {booked} of {capacity} rooms"
                ));
            }
        }
    }
    report.charged = payment::charges(&stores.payment)?
        .iter()
        .filter_map(|(_, c)| match c {
            Charge::Charged { amount, .. } => Some(amount.amount),
            _ => None,
        })
        .sum();
    report.confirmed_totals = confirmed
        .iter()
        .filter_map(|s| match &s.status {
            Status::Confirmed(total) => Some(total.amount),
            _ => None,
        })
        .sum();
    Ok(report)
}
