//! The booking service: the reservation saga. Requested → seats and rooms reserved in parallel
//! → the bundle charged → confirmed. Any refusal or decline → what was done is undone (release
//! room, release seat, refund) → cancelled with the reason.
//!
//! The saga is a state machine over the service's sled state, advanced by one event at a
//! time: its commands are emitted through the outbox in the same transaction as the state
//! change, so after a crash of any service every saga still reaches confirmed or cancelled.
//! Late and duplicate replies are recognised by the step they answer and change nothing. A saga
//! still waiting [`TIMEOUT`] after its request is timed out: what is held is released, what is
//! still unanswered is undone behind it, and it ends `TIMED_OUT`.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use events::{
    BookingCancelled, BookingConfirmed, BookingRequested, BookingTimedOut, CancellationReason,
    ChargePayment, Money, PaymentCharged, PaymentDeclined, PaymentRefunded, RefundPayment,
    ReleaseRooms, ReleaseSeats, ReserveRooms, ReserveSeats, RoomsRefused, RoomsReleased,
    RoomsReserved, SeatsRefused, SeatsReleased, SeatsReserved, now_millis, topics,
};
use serde::{Deserialize, Serialize};
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::service::{Data, Settings};
use streams::store::Store;

/// The service's consumer group.
pub const GROUP: &str = "booking";

/// The topics the saga reads: requests, and the answers of flight, hotel and payment.
pub const TOPICS: &[&str] = &[
    topics::BOOKINGS,
    topics::FLIGHT_EVENTS,
    topics::HOTEL_EVENTS,
    topics::PAYMENT_EVENTS,
];

/// How long a saga may take from its request before its open steps are undone.
pub const TIMEOUT: Duration = Duration::from_secs(30);

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
    let sweeper = tokio::spawn(sweep(store, producer, timeout, stopped));
    let served = streams::service::run(GROUP, TOPICS, &settings, Sagas, shutdown).await;
    let _ = stop.send(true);
    let _ = sweeper.await;
    served
}

/// How often open sagas are checked against their deadline.
const SWEEP: Duration = Duration::from_millis(500);

/// How long before a time-out that has not taken effect is announced again.
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(10);

/// Announces `BookingTimedOut` for every open saga past its deadline. The saga acts on it when
/// the event comes back through the log, so the decision is replayed like any other; an
/// announcement lost or repeated changes nothing.
async fn sweep(
    store: Store,
    producer: Producer,
    timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let mut announced: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        let open = match store.scan(OPEN.as_bytes()) {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "Cannot read open sagas");
                continue;
            }
        };
        let now = now_millis();
        announced.retain(|_, at| at.elapsed() < ANNOUNCE_AGAIN);
        for (key, value) in open {
            let booking_id = String::from_utf8_lossy(&key[OPEN.len()..]).into_owned();
            let Some((user_id, requested_at)) =
                serde_json::from_slice::<(String, i64)>(&value).ok()
            else {
                continue;
            };
            let deadline = requested_at.saturating_add(timeout_ms);
            if deadline > now || announced.contains_key(&booking_id) {
                continue;
            }
            let event = BookingTimedOut {
                booking_id: booking_id.clone(),
                user_id,
                deadline,
            };
            match producer
                .send(topics::BOOKINGS, &event, &Metadata::new(&booking_id))
                .await
            {
                Ok(_) => {
                    tracing::info!(booking_id, "Saga timed out");
                    announced.insert(booking_id, Instant::now());
                }
                Err(error) => tracing::warn!(%error, booking_id, "Cannot announce a time-out"),
            }
        }
    }
}

/// Key prefix of open sagas: booking id → (user id, requested at).
const OPEN: &str = "open/";

/// A reservation step (seats or rooms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Asked, no answer yet.
    Pending,
    /// Held at this price.
    Held(Money),
    /// Refused, with the reason.
    Refused(String),
    /// Release asked, no answer yet.
    Releasing,
    /// Given back.
    Released,
}

impl Step {
    fn settled(&self) -> bool {
        matches!(self, Step::Refused(_) | Step::Released)
    }
}

/// The payment step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payment {
    /// Not asked (yet).
    NotAsked,
    /// Charge asked, no answer yet.
    Pending,
    /// Charged.
    Charged(Money),
    /// Declined, with the reason.
    Declined(String),
    /// Refund asked, no answer yet.
    Refunding,
    /// Given back.
    Refunded,
}

impl Payment {
    fn settled(&self) -> bool {
        matches!(
            self,
            Payment::NotAsked | Payment::Declined(_) | Payment::Refunded
        )
    }
}

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Waiting for seats and rooms.
    Reserving,
    /// Waiting for the payment.
    Charging,
    /// Done: the trip is booked.
    Confirmed(Money),
    /// Undoing what was done.
    Compensating(CancellationReason, String),
    /// Done: nothing is held, nothing is charged.
    Cancelled(CancellationReason, String),
}

/// One booking's saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    /// What was asked.
    pub request: BookingRequested,
    /// Seats.
    pub seats: Step,
    /// Rooms.
    pub rooms: Step,
    /// The charge.
    pub payment: Payment,
    /// Where it stands.
    pub status: Status,
}

/// What a saga asks of other services, or tells the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// To the flight service.
    ReserveSeats(ReserveSeats),
    /// To the hotel service.
    ReserveRooms(ReserveRooms),
    /// To the payment service.
    Charge(ChargePayment),
    /// To the hotel service.
    ReleaseRooms(ReleaseRooms),
    /// To the flight service.
    ReleaseSeats(ReleaseSeats),
    /// To the payment service.
    Refund(RefundPayment),
    /// On `bookings`.
    Confirmed(BookingConfirmed),
    /// On `bookings`.
    Cancelled(BookingCancelled),
}

/// What a booking request is wrong with, if anything.
pub fn invalid(request: &BookingRequested) -> Option<String> {
    if request.flight.seats <= 0 {
        return Some(format!(
            "flight.seats must be positive, not {}",
            request.flight.seats
        ));
    }
    if request.hotel.rooms <= 0 {
        return Some(format!(
            "hotel.rooms must be positive, not {}",
            request.hotel.rooms
        ));
    }
    if request.hotel.check_out <= request.hotel.check_in {
        return Some("hotel.check_out must be after hotel.check_in".into());
    }
    if let Some(extra) = request
        .extras
        .iter()
        .find(|e| e.quantity <= 0 || e.unit_price.amount.is_sign_negative())
    {
        return Some(format!(
            "extra {} must have a positive quantity and a price of zero or more",
            extra.code
        ));
    }
    None
}

impl Saga {
    /// Starts a saga: reserve seats and rooms at once, or cancel an invalid request.
    pub fn start(request: BookingRequested) -> (Saga, Vec<Command>) {
        let mut saga = Saga {
            request,
            seats: Step::Pending,
            rooms: Step::Pending,
            payment: Payment::NotAsked,
            status: Status::Reserving,
        };
        if let Some(reason) = invalid(&saga.request) {
            saga.seats = Step::Refused(reason.clone());
            saga.rooms = Step::Refused(reason.clone());
            saga.status = Status::Compensating(CancellationReason::InvalidRequest, reason);
            let commands = saga.advance();
            return (saga, commands);
        }
        let r = &saga.request;
        let commands = vec![
            Command::ReserveSeats(ReserveSeats {
                booking_id: r.booking_id.clone(),
                flight_id: r.flight.flight_id.clone(),
                seats: r.flight.seats,
            }),
            Command::ReserveRooms(ReserveRooms {
                booking_id: r.booking_id.clone(),
                hotel_id: r.hotel.hotel_id.clone(),
                check_in: r.hotel.check_in,
                check_out: r.hotel.check_out,
                rooms: r.hotel.rooms,
            }),
        ];
        (saga, commands)
    }

    /// Whether the saga is over.
    pub fn finished(&self) -> bool {
        matches!(self.status, Status::Confirmed(_) | Status::Cancelled(..))
    }

    /// Moves the saga on after a step changed; returns what to send.
    pub fn advance(&mut self) -> Vec<Command> {
        let mut commands = Vec::new();
        if self.status == Status::Reserving {
            if let Step::Refused(detail) = &self.seats {
                self.status =
                    Status::Compensating(CancellationReason::SeatsUnavailable, detail.clone());
            } else if let Step::Refused(detail) = &self.rooms {
                self.status =
                    Status::Compensating(CancellationReason::RoomsUnavailable, detail.clone());
            } else if let (Step::Held(seats), Step::Held(rooms)) = (&self.seats, &self.rooms) {
                match self.total(seats, rooms) {
                    Some(total) => {
                        self.payment = Payment::Pending;
                        self.status = Status::Charging;
                        commands.push(Command::Charge(ChargePayment {
                            booking_id: self.request.booking_id.clone(),
                            user_id: self.request.user_id.clone(),
                            amount: total,
                        }));
                    }
                    None => {
                        self.status = Status::Compensating(
                            CancellationReason::InvalidRequest,
                            "the prices are in different currencies or overflow".into(),
                        );
                    }
                }
            }
        }
        if self.status == Status::Charging {
            match &self.payment {
                Payment::Charged(total) => {
                    self.status = Status::Confirmed(total.clone());
                    commands.push(Command::Confirmed(BookingConfirmed {
                        booking_id: self.request.booking_id.clone(),
                        user_id: self.request.user_id.clone(),
                        total: total.clone(),
                        confirmed_at: now_millis(),
                    }));
                }
                Payment::Declined(detail) => {
                    self.status =
                        Status::Compensating(CancellationReason::PaymentDeclined, detail.clone());
                }
                _ => {}
            }
        }
        if let Status::Compensating(reason, detail) = self.status.clone() {
            commands.extend(self.compensate(&detail));
            if self.seats.settled() && self.rooms.settled() && self.payment.settled() {
                self.status = Status::Cancelled(reason, detail.clone());
                commands.push(Command::Cancelled(BookingCancelled {
                    booking_id: self.request.booking_id.clone(),
                    user_id: self.request.user_id.clone(),
                    reason,
                    detail,
                    cancelled_at: now_millis(),
                }));
            }
        }
        commands
    }

    /// Undoes what is held, in reverse: room, seat, then the charge. A step still pending is
    /// waited for, since its answer may be a hold that must be released too.
    fn compensate(&mut self, why: &str) -> Vec<Command> {
        let mut commands = Vec::new();
        let booking_id = &self.request.booking_id;
        if matches!(self.rooms, Step::Held(_)) {
            self.rooms = Step::Releasing;
            commands.push(Command::ReleaseRooms(ReleaseRooms {
                booking_id: booking_id.clone(),
                hotel_id: self.request.hotel.hotel_id.clone(),
                reason: why.to_owned(),
            }));
        }
        if matches!(self.seats, Step::Held(_)) {
            self.seats = Step::Releasing;
            commands.push(Command::ReleaseSeats(ReleaseSeats {
                booking_id: booking_id.clone(),
                flight_id: self.request.flight.flight_id.clone(),
                reason: why.to_owned(),
            }));
        }
        if matches!(self.payment, Payment::Charged(_)) {
            self.payment = Payment::Refunding;
            commands.push(Command::Refund(RefundPayment {
                booking_id: booking_id.clone(),
                user_id: self.request.user_id.clone(),
                reason: why.to_owned(),
            }));
        }
        commands
    }

    /// Seats + rooms + extras, in one currency.
    fn total(&self, seats: &Money, rooms: &Money) -> Option<Money> {
        let mut total = seats.plus(rooms)?;
        for extra in &self.request.extras {
            total = total.plus(&extra.unit_price.times(i64::from(extra.quantity))?)?;
        }
        Some(total)
    }
}

/// A reply from another service, reduced to what the saga needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Seats held.
    SeatsHeld(Money),
    /// Seats refused.
    SeatsRefused(String),
    /// Seats given back.
    SeatsReleased,
    /// Rooms held.
    RoomsHeld(Money),
    /// Rooms refused.
    RoomsRefused(String),
    /// Rooms given back.
    RoomsReleased,
    /// Charged.
    Charged(Money),
    /// Declined.
    Declined(String),
    /// Refunded.
    Refunded,
}

impl Saga {
    /// Passes the deadline: every step still unanswered is undone too (a release or refund
    /// queued behind the reservation or charge it undoes), then the saga compensates as on a
    /// refusal and ends `TIMED_OUT`. `None` when the saga was no longer waiting.
    pub fn time_out(&mut self) -> Option<Vec<Command>> {
        if !matches!(self.status, Status::Reserving | Status::Charging) {
            return None;
        }
        let why = "no answer before the deadline".to_owned();
        self.status = Status::Compensating(CancellationReason::TimedOut, why.clone());
        let booking_id = self.request.booking_id.clone();
        let mut commands = Vec::new();
        if self.rooms == Step::Pending {
            self.rooms = Step::Releasing;
            commands.push(Command::ReleaseRooms(ReleaseRooms {
                booking_id: booking_id.clone(),
                hotel_id: self.request.hotel.hotel_id.clone(),
                reason: why.clone(),
            }));
        }
        if self.seats == Step::Pending {
            self.seats = Step::Releasing;
            commands.push(Command::ReleaseSeats(ReleaseSeats {
                booking_id: booking_id.clone(),
                flight_id: self.request.flight.flight_id.clone(),
                reason: why.clone(),
            }));
        }
        if self.payment == Payment::Pending {
            self.payment = Payment::Refunding;
            commands.push(Command::Refund(RefundPayment {
                booking_id,
                user_id: self.request.user_id.clone(),
                reason: why,
            }));
        }
        commands.extend(self.advance());
        Some(commands)
    }

    /// Records a reply and returns what to send, or `None` for a reply that answers no open
    /// question (late or duplicate) and changes nothing.
    pub fn reply(&mut self, reply: Reply) -> Option<Vec<Command>> {
        match reply {
            Reply::SeatsHeld(price) if self.seats == Step::Pending => {
                self.seats = Step::Held(price);
            }
            Reply::SeatsRefused(why) if self.seats == Step::Pending => {
                self.seats = Step::Refused(why);
            }
            Reply::SeatsReleased if self.seats == Step::Releasing => self.seats = Step::Released,
            Reply::RoomsHeld(price) if self.rooms == Step::Pending => {
                self.rooms = Step::Held(price);
            }
            Reply::RoomsRefused(why) if self.rooms == Step::Pending => {
                self.rooms = Step::Refused(why);
            }
            Reply::RoomsReleased if self.rooms == Step::Releasing => self.rooms = Step::Released,
            Reply::Charged(amount) if self.payment == Payment::Pending => {
                self.payment = Payment::Charged(amount);
            }
            Reply::Declined(why) if self.payment == Payment::Pending => {
                self.payment = Payment::Declined(why);
            }
            Reply::Refunded if self.payment == Payment::Refunding => {
                self.payment = Payment::Refunded;
            }
            _ => return None,
        }
        Some(self.advance())
    }
}

fn saga_key(booking_id: &str) -> String {
    format!("saga/{booking_id}")
}

/// The handler: booking requests and every reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sagas;

impl Handler for Sagas {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let (booking_id, reply) = match record.event_type() {
            Some(BookingRequested::TYPE) => {
                let request: BookingRequested = ctx.decode(record).await?;
                let key = saga_key(&request.booking_id);
                if ctx.get_json::<Saga>(&key)?.is_some() {
                    // The same booking id asked twice: the first request stands.
                    return Ok(());
                }
                let (saga, commands) = Saga::start(request);
                save(ctx, &saga);
                return send(ctx, commands).await;
            }
            Some(BookingTimedOut::TYPE) => {
                let timed_out: BookingTimedOut = ctx.decode(record).await?;
                let key = saga_key(&timed_out.booking_id);
                let Some(mut saga) = ctx.get_json::<Saga>(&key)? else {
                    return Ok(());
                };
                return match saga.time_out() {
                    Some(commands) => {
                        save(ctx, &saga);
                        send(ctx, commands).await
                    }
                    // Finished before the time-out came back: nothing to undo.
                    None => Ok(()),
                };
            }
            // The saga's own announcements, read back from `bookings`.
            Some(BookingConfirmed::TYPE | BookingCancelled::TYPE) => return Ok(()),
            Some(SeatsReserved::TYPE) => {
                let e: SeatsReserved = ctx.decode(record).await?;
                (e.booking_id, Reply::SeatsHeld(e.price))
            }
            Some(SeatsRefused::TYPE) => {
                let e: SeatsRefused = ctx.decode(record).await?;
                (e.booking_id, Reply::SeatsRefused(e.reason))
            }
            Some(SeatsReleased::TYPE) => {
                let e: SeatsReleased = ctx.decode(record).await?;
                (e.booking_id, Reply::SeatsReleased)
            }
            Some(RoomsReserved::TYPE) => {
                let e: RoomsReserved = ctx.decode(record).await?;
                (e.booking_id, Reply::RoomsHeld(e.price))
            }
            Some(RoomsRefused::TYPE) => {
                let e: RoomsRefused = ctx.decode(record).await?;
                (e.booking_id, Reply::RoomsRefused(e.reason))
            }
            Some(RoomsReleased::TYPE) => {
                let e: RoomsReleased = ctx.decode(record).await?;
                (e.booking_id, Reply::RoomsReleased)
            }
            Some(PaymentCharged::TYPE) => {
                let e: PaymentCharged = ctx.decode(record).await?;
                (e.booking_id, Reply::Charged(e.amount))
            }
            Some(PaymentDeclined::TYPE) => {
                let e: PaymentDeclined = ctx.decode(record).await?;
                (e.booking_id, Reply::Declined(e.reason))
            }
            Some(PaymentRefunded::TYPE) => {
                let e: PaymentRefunded = ctx.decode(record).await?;
                (e.booking_id, Reply::Refunded)
            }
            other => {
                return Err(HandlerError::Invalid(format!(
                    "the booking service does not handle event type {}",
                    other.unwrap_or("(none)")
                )));
            }
        };
        let key = saga_key(&booking_id);
        let Some(mut saga) = ctx.get_json::<Saga>(&key)? else {
            return Err(HandlerError::Invalid(format!(
                "a reply for booking {booking_id}, which this service never started"
            )));
        };
        match saga.reply(reply) {
            Some(commands) => {
                save(ctx, &saga);
                send(ctx, commands).await
            }
            None => {
                tracing::debug!(booking_id, "A late or duplicate reply changes nothing");
                Ok(())
            }
        }
    }
}

/// Stores a saga, and keeps the index of open sagas the time-out sweep reads.
fn save(ctx: &mut Context<'_>, saga: &Saga) {
    let booking_id = &saga.request.booking_id;
    ctx.put_json(&saga_key(booking_id), saga);
    let open = format!("{OPEN}{booking_id}");
    if saga.finished() {
        ctx.remove(open.into_bytes());
    } else {
        ctx.put_json(
            &open,
            &(saga.request.user_id.clone(), saga.request.requested_at),
        );
    }
}

async fn send(ctx: &mut Context<'_>, commands: Vec<Command>) -> Result<(), HandlerError> {
    for command in commands {
        match command {
            Command::ReserveSeats(c) => ctx.emit(topics::FLIGHT_COMMANDS, &c).await?,
            Command::ReserveRooms(c) => ctx.emit(topics::HOTEL_COMMANDS, &c).await?,
            Command::Charge(c) => ctx.emit(topics::PAYMENT_COMMANDS, &c).await?,
            Command::ReleaseRooms(c) => ctx.emit(topics::HOTEL_COMMANDS, &c).await?,
            Command::ReleaseSeats(c) => ctx.emit(topics::FLIGHT_COMMANDS, &c).await?,
            Command::Refund(c) => ctx.emit(topics::PAYMENT_COMMANDS, &c).await?,
            Command::Confirmed(e) => ctx.emit(topics::BOOKINGS, &e).await?,
            Command::Cancelled(e) => ctx.emit(topics::BOOKINGS, &e).await?,
        }
    }
    Ok(())
}

/// One booking's saga, if the service started it.
///
/// # Errors
///
/// When the store cannot be read.
pub fn saga(store: &Store, booking_id: &str) -> streams::Result<Option<Saga>> {
    store
        .get(saga_key(booking_id).as_bytes())?
        .map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| streams::Error::Store(format!("saga {booking_id}: {e}")))
        })
        .transpose()
}

/// Every saga.
///
/// # Errors
///
/// When the store cannot be read.
pub fn sagas(store: &Store) -> streams::Result<Vec<Saga>> {
    Ok(store
        .scan(b"saga/")?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{FlightSelection, HotelSelection};
    use rust_decimal::Decimal;

    fn eur(amount: i64) -> Money {
        Money::new(Decimal::new(amount, 0), "EUR")
    }

    fn started() -> Saga {
        let (saga, commands) = Saga::start(BookingRequested {
            booking_id: "b".into(),
            user_id: "u".into(),
            flight: FlightSelection {
                flight_id: "f".into(),
                seats: 1,
            },
            hotel: HotelSelection {
                hotel_id: "h".into(),
                check_in: 1,
                check_out: 2,
                rooms: 1,
            },
            extras: vec![],
            requested_at: 0,
        });
        assert_eq!(commands.len(), 2, "seats and rooms are asked at once");
        saga
    }

    #[test]
    fn a_refusal_waits_for_the_other_step_then_releases_it() {
        let mut saga = started();
        let sent = saga.reply(Reply::SeatsRefused("sold out".into()));
        assert_eq!(
            sent,
            Some(vec![]),
            "the room may still be held: wait for it"
        );
        let sent = saga
            .reply(Reply::RoomsHeld(eur(80)))
            .expect("answers a question");
        assert!(matches!(sent.as_slice(), [Command::ReleaseRooms(_)]));
        let sent = saga
            .reply(Reply::RoomsReleased)
            .expect("answers a question");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::SeatsUnavailable));
        assert!(saga.finished());
    }

    #[test]
    fn a_decline_releases_room_and_seat_and_late_or_duplicate_replies_change_nothing() {
        let mut saga = started();
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100))), Some(vec![]));
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100))), None, "a duplicate");
        let sent = saga.reply(Reply::RoomsHeld(eur(80))).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Charge(c)] if c.amount == eur(180)));
        let sent = saga
            .reply(Reply::Declined("no funds".into()))
            .expect("answers");
        assert!(matches!(
            sent.as_slice(),
            [Command::ReleaseRooms(_), Command::ReleaseSeats(_)]
        ));
        assert_eq!(saga.reply(Reply::Charged(eur(180))), None, "a late reply");
        saga.reply(Reply::SeatsReleased).expect("answers");
        let sent = saga.reply(Reply::RoomsReleased).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::PaymentDeclined));
        assert_eq!(saga.reply(Reply::RoomsReleased), None);
    }

    #[test]
    fn a_time_out_undoes_held_and_unanswered_steps_and_waits_for_both() {
        let mut saga = started();
        assert_eq!(saga.reply(Reply::RoomsHeld(eur(80))), Some(vec![]));
        let sent = saga.time_out().expect("it was waiting");
        assert!(
            matches!(
                sent.as_slice(),
                [Command::ReleaseSeats(_), Command::ReleaseRooms(_)]
            ),
            "{sent:?}"
        );
        // The late hold is undone by the release queued behind it.
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100))), None);
        assert_eq!(saga.reply(Reply::SeatsReleased), Some(vec![]));
        let sent = saga.reply(Reply::RoomsReleased).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::TimedOut));
        assert_eq!(saga.time_out(), None, "a finished saga cannot time out");
    }

    #[test]
    fn an_invalid_request_is_cancelled_at_once_without_asking_anyone() {
        let mut request = started().request;
        request.hotel.check_out = request.hotel.check_in;
        let (saga, sent) = Saga::start(request);
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::InvalidRequest));
        assert!(saga.finished());
    }
}
