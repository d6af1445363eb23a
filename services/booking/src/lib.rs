//! The booking service: the reservation saga. Requested → seats and rooms reserved in parallel
//! → the bundle charged → confirmed. Any refusal or decline → what was done is undone (release
//! room, release seat, refund) → cancelled with the reason.
//!
//! The saga is a state machine ([`saga`]) over the service's sled state, advanced by one event
//! at a time ([`handler`]): its commands are emitted through the outbox in the same transaction
//! as the state change, so after a crash of any service every saga still reaches confirmed or
//! cancelled. It stores what each service answered, not the order the answers came in, so the
//! saga a replay rebuilds equals the live one however the replies of different topics
//! interleave; duplicates change nothing, and a late reply is recorded like any other. A saga
//! still waiting for seats or rooms [`TIMEOUT`] after its request is timed out ([`timeout`]):
//! what is held is released, what is still unanswered is undone behind it, and it ends
//! `TIMED_OUT`; once the charge is asked, the payment's answer decides. The read side is in
//! [`query`].

pub mod handler;
pub mod query;
pub mod saga;
pub mod timeout;

use std::future::Future;
use std::time::Duration;

use events::topics;
use streams::kafka::Producer;
use streams::service::{Data, Settings};

pub use handler::Sagas;
pub use query::{saga, sagas};
pub use saga::{Charge, Command, Hold, Payment, Reply, Saga, Status, Step, Undo, invalid};
pub use timeout::TIMEOUT;

/// The service's consumer group.
pub const GROUP: &str = "booking";

/// The topics the saga reads: requests, and the answers of flight, hotel and payment.
pub const TOPICS: &[&str] = &[
    topics::BOOKINGS,
    topics::FLIGHT_EVENTS,
    topics::HOTEL_EVENTS,
    topics::PAYMENT_EVENTS,
];

/// Runs the booking service until `shutdown`, with the default [`TIMEOUT`].
///
/// # Errors
///
/// When the store cannot be opened or the broker cannot be reached at start.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> streams::Result<()> {
    run_with(settings, TIMEOUT, shutdown).await
}

/// Runs the booking service until `shutdown`; sagas unfinished `timeout` after their request
/// are timed out.
///
/// # Errors
///
/// When the store cannot be opened or the broker cannot be reached at start.
pub async fn run_with(
    mut settings: Settings,
    timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> streams::Result<()> {
    let store = settings.data.open()?;
    settings.data = Data::Store(store.clone());
    let producer = Producer::new(&settings.brokers, settings.codec()?, &[])?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let topics = topics::service_topics(TOPICS, &[], topics::BOOKING_CHANGELOG)?;
    // Beside the processor in this future, not spawned: a service dropped where it stands (a
    // killed instance in the benches) takes its sweep with it.
    let sweep = timeout::sweep(
        store,
        producer,
        timeout,
        settings.positions.clone(),
        stopped,
    );
    let serve = async {
        let served = streams::service::run(GROUP, &topics, &settings, Sagas, shutdown).await;
        let _ = stop.send(true);
        served
    };
    let (served, ()) = tokio::join!(serve, sweep);
    served
}
