//! The saga's state machine: a saga and one input give its next state and what to send.
//!
//! The inputs are a request, a reply and the time-out, each with the time an outcome it leads
//! to is stamped with. Pure: no store, no broker, no clock. The handler reads the saga, feeds it
//! one input, stores what comes back and emits the commands in one transaction, so every
//! decision of the saga is made here and can be tested without a broker.
//!
//! Replies come on three topics and the time-out on a fourth, so live they reach the saga in
//! whatever order the consumer polls them, and a replay merges them by timestamp. The saga
//! therefore stores facts (what each service answered, what was asked to be given back, whether
//! the time-out came) and derives everything else from them in [`Saga::settle`]: the status,
//! the reason (a fixed priority over every failure known, never the first one seen) and what
//! to send next. Inputs of different topics then commute: the saga stored after a run's
//! inputs is the same in every order of them (the tests in `saga/interleavings.rs` check each
//! order). The rules:
//!
//! - Seats and rooms are asked at once; the charge once both are held and no failure is known.
//! - A failure is a refusal, a decline, an invalid request (or prices that do not add up), or
//!   the time-out while the charge is not asked yet. Once the charge is asked, its answer
//!   decides: a time-out racing it cannot turn a booking charged into one cancelled.
//! - On a failure, whatever is held is given back, once; on the time-out, a step still
//!   unanswered is released too, queued behind its reservation. A reply after that still
//!   records what it says.
//! - Finished: confirmed once charged; cancelled once every step is answered and everything
//!   held is given back.
//! - A release or refund says what cancellation it is for, and its reply echoes it. A saga
//!   that reads a step given back for a failure outranking every one it knows (a replay, or a
//!   take-over from a changelog that was behind) waits for that failure's own record, which
//!   is further on in the log, and announces nothing before it.

use events::{
    BookingCancelled, BookingConfirmed, BookingRequested, CancellationReason, ChargePayment, Money,
    RefundPayment, ReleaseRooms, ReleaseSeats, ReserveRooms, ReserveSeats,
};
use serde::{Deserialize, Serialize};

/// What a reservation's service answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hold {
    /// Not asked: the request was invalid.
    NotAsked,
    /// Asked, no answer yet.
    Pending,
    /// Held at this price.
    Held(Money),
    /// Refused, with the reason.
    Refused(String),
}

/// Giving a step back: a release or a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Undo {
    /// Not asked.
    NotAsked,
    /// Asked, no answer yet.
    Asked,
    /// The service answered that it gave back what it held (possibly nothing).
    Done,
}

/// A reservation step (seats or rooms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The answer to the reservation.
    pub hold: Hold,
    /// The release.
    pub release: Undo,
}

impl Step {
    fn asked() -> Step {
        Step {
            hold: Hold::Pending,
            release: Undo::NotAsked,
        }
    }

    fn settled(&self) -> bool {
        match self.hold {
            Hold::NotAsked | Hold::Refused(_) => true,
            Hold::Held(_) => self.release == Undo::Done,
            Hold::Pending => false,
        }
    }

    /// Whether a release is to be asked now. A release asked of a step that turned out refused
    /// is dropped: it gives back nothing, it is not waited for, and whether it was asked at all
    /// depends on whether the time-out came before the refusal.
    fn needs_release(&mut self, time_out: bool) -> bool {
        match self.hold {
            Hold::NotAsked | Hold::Refused(_) => {
                if self.release == Undo::Asked {
                    self.release = Undo::NotAsked;
                }
                false
            }
            Hold::Held(_) => self.release == Undo::NotAsked,
            // Queued behind the reservation, so that a hold answered after all is given back.
            Hold::Pending => time_out && self.release == Undo::NotAsked,
        }
    }
}

/// What the payment service answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Charge {
    /// Not asked (yet).
    NotAsked,
    /// Asked, no answer yet.
    Pending,
    /// Charged.
    Charged(Money),
    /// Declined, with the reason.
    Declined(String),
}

/// The payment step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The answer to the charge.
    pub charge: Charge,
    /// The refund.
    pub refund: Undo,
}

impl Payment {
    fn settled(&self) -> bool {
        match self.charge {
            Charge::NotAsked | Charge::Declined(_) => true,
            Charge::Charged(_) => self.refund == Undo::Done,
            Charge::Pending => false,
        }
    }
}

/// Where a saga stands, derived from its steps.
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
    /// Whether the time-out came, whenever it came (it applies only while the charge is not
    /// asked).
    pub timed_out: bool,
    /// The cancellation a reply that gave a step back says it was asked for, of highest
    /// priority among those read: the run that asked it had failed so. Read again before the
    /// failure itself (see [`Saga::settle`]), it keeps the saga from announcing a lesser one.
    #[serde(default)]
    pub given_back_for: Option<CancellationReason>,
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

/// A reply from another service, reduced to what the saga needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Seats held.
    SeatsHeld(Money),
    /// Seats refused.
    SeatsRefused(String),
    /// Seats given back, for the cancellation the release said, if any.
    SeatsReleased(Option<CancellationReason>),
    /// Rooms held.
    RoomsHeld(Money),
    /// Rooms refused.
    RoomsRefused(String),
    /// Rooms given back, for the cancellation the release said, if any.
    RoomsReleased(Option<CancellationReason>),
    /// Charged.
    Charged(Money),
    /// Declined.
    Declined(String),
    /// Refunded, for the cancellation the refund said, if any.
    Refunded(Option<CancellationReason>),
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

/// The detail of a cancellation by the time-out.
const TIMED_OUT: &str = "no answer before the deadline";

/// The detail of a saga that read a step given back before the failure it was given back for.
const WAITING: &str = "a step was given back before the reason was read";

/// A failure's priority in [`Saga::failure`]'s order: the higher wins.
fn rank(reason: CancellationReason) -> u8 {
    match reason {
        CancellationReason::InvalidRequest => 5,
        CancellationReason::SeatsUnavailable => 4,
        CancellationReason::RoomsUnavailable => 3,
        CancellationReason::PaymentDeclined => 2,
        CancellationReason::TimedOut => 1,
        CancellationReason::Unknown => 0,
    }
}

impl Saga {
    /// Starts a saga: reserve seats and rooms at once, or cancel an invalid request. `now`
    /// (milliseconds since the epoch) stamps an announcement made at once.
    pub fn start(request: BookingRequested, now: i64) -> (Saga, Vec<Command>) {
        let valid = invalid(&request).is_none();
        let step = || {
            if valid {
                Step::asked()
            } else {
                Step {
                    hold: Hold::NotAsked,
                    release: Undo::NotAsked,
                }
            }
        };
        let mut saga = Saga {
            seats: step(),
            rooms: step(),
            request,
            payment: Payment {
                charge: Charge::NotAsked,
                refund: Undo::NotAsked,
            },
            timed_out: false,
            given_back_for: None,
            status: Status::Reserving,
        };
        let mut commands = Vec::new();
        if valid {
            let r = &saga.request;
            commands.push(Command::ReserveSeats(ReserveSeats {
                booking_id: r.booking_id.clone(),
                flight_id: r.flight.flight_id.clone(),
                seats: r.flight.seats,
            }));
            commands.push(Command::ReserveRooms(ReserveRooms {
                booking_id: r.booking_id.clone(),
                hotel_id: r.hotel.hotel_id.clone(),
                check_in: r.hotel.check_in,
                check_out: r.hotel.check_out,
                rooms: r.hotel.rooms,
            }));
        }
        commands.extend(saga.settle(now));
        (saga, commands)
    }

    /// Whether the saga is over.
    pub fn finished(&self) -> bool {
        matches!(self.status, Status::Confirmed(_) | Status::Cancelled(..))
    }

    /// Whether the time-out would still change anything: the saga waits for seats or rooms
    /// with no failure known. Once the charge is asked or the saga cancels, the deadline no
    /// longer matters, and the sweep need not announce it.
    pub fn awaits_deadline(&self) -> bool {
        self.status == Status::Reserving
    }

    /// Records a reply and returns what to send, or `None` for a reply that tells nothing new
    /// (a duplicate, or an answer to a question never asked) and changes nothing. A late reply
    /// (after the saga cancelled) is recorded all the same. `now` stamps the confirmation or
    /// cancellation the reply may finish the saga with.
    pub fn reply(&mut self, reply: Reply, now: i64) -> Option<Vec<Command>> {
        let cause = match &reply {
            Reply::SeatsReleased(cause) | Reply::RoomsReleased(cause) | Reply::Refunded(cause) => {
                *cause
            }
            _ => None,
        };
        // A cause of higher priority is news even on a step already given back.
        let raised = cause.is_some_and(|cause| {
            self.given_back_for
                .is_none_or(|known| rank(cause) > rank(known))
        });
        if raised {
            self.given_back_for = cause;
        }
        let new = match reply {
            Reply::SeatsHeld(price) => answer(&mut self.seats.hold, Hold::Held(price)),
            Reply::SeatsRefused(why) => answer(&mut self.seats.hold, Hold::Refused(why)),
            Reply::SeatsReleased(_) => given_back(&mut self.seats.release),
            Reply::RoomsHeld(price) => answer(&mut self.rooms.hold, Hold::Held(price)),
            Reply::RoomsRefused(why) => answer(&mut self.rooms.hold, Hold::Refused(why)),
            Reply::RoomsReleased(_) => given_back(&mut self.rooms.release),
            // Recorded even when this saga has not asked (a replay that met the time-out
            // before the holds the live run met first): the answer says the charge was asked.
            Reply::Charged(amount) => charged(&mut self.payment.charge, Charge::Charged(amount)),
            Reply::Declined(why) => charged(&mut self.payment.charge, Charge::Declined(why)),
            Reply::Refunded(_) => given_back(&mut self.payment.refund),
        };
        (new || raised).then(|| self.settle(now))
    }

    /// Records that the deadline passed; returns what to send, or `None` when it was known
    /// already. The time-out is a fact like any reply: see [`Saga::settle`] for what it does.
    /// `now` stamps the cancellation, should nothing be left to wait for.
    pub fn time_out(&mut self, now: i64) -> Option<Vec<Command>> {
        if self.timed_out {
            return None;
        }
        self.timed_out = true;
        Some(self.settle(now))
    }

    /// The failure a cancellation is for, by a fixed priority over every failure known: an
    /// invalid request (it could never succeed), then seats, rooms and payment, in the order
    /// they are asked, then the time-out last. Last, because it is the one failure that can
    /// still come after the saga finished (the sweep races the last reply), and the reason
    /// must not change once announced; every other is an answer the saga waits for first.
    fn failure(&self) -> Option<(CancellationReason, String)> {
        if let Some(why) = invalid(&self.request) {
            return Some((CancellationReason::InvalidRequest, why));
        }
        if let (Hold::Held(seats), Hold::Held(rooms)) = (&self.seats.hold, &self.rooms.hold)
            && self.total(seats, rooms).is_none()
        {
            return Some((
                CancellationReason::InvalidRequest,
                "the prices are in different currencies or overflow".into(),
            ));
        }
        if let Hold::Refused(why) = &self.seats.hold {
            return Some((CancellationReason::SeatsUnavailable, why.clone()));
        }
        if let Hold::Refused(why) = &self.rooms.hold {
            return Some((CancellationReason::RoomsUnavailable, why.clone()));
        }
        if let Charge::Declined(why) = &self.payment.charge {
            return Some((CancellationReason::PaymentDeclined, why.clone()));
        }
        if self.time_out_applies() {
            return Some((CancellationReason::TimedOut, TIMED_OUT.into()));
        }
        None
    }

    /// The time-out counts only while the charge is not asked: after that, the payment's answer
    /// decides, whichever of the two the consumer happens to read first.
    fn time_out_applies(&self) -> bool {
        self.timed_out && self.payment.charge == Charge::NotAsked
    }

    /// Whether the fact of failure `cause` has been read (for `None` or `Unknown`: never
    /// known, so always waited for).
    fn knows(&self, cause: Option<CancellationReason>) -> bool {
        match cause {
            Some(CancellationReason::InvalidRequest) => self
                .failure()
                .is_some_and(|(reason, _)| reason == CancellationReason::InvalidRequest),
            Some(CancellationReason::SeatsUnavailable) => {
                matches!(self.seats.hold, Hold::Refused(_))
            }
            Some(CancellationReason::RoomsUnavailable) => {
                matches!(self.rooms.hold, Hold::Refused(_))
            }
            Some(CancellationReason::PaymentDeclined) => {
                matches!(self.payment.charge, Charge::Declined(_))
            }
            Some(CancellationReason::TimedOut) => self.timed_out,
            Some(CancellationReason::Unknown) | None => false,
        }
    }

    /// Derives the status from the facts and returns what they call for that was not asked yet.
    /// Idempotent: settling again sends nothing.
    fn settle(&mut self, now: i64) -> Vec<Command> {
        let given_back =
            [self.seats.release, self.rooms.release, self.payment.refund].contains(&Undo::Done);
        // Live, nothing is given back while the charge is pending: the charge is asked only
        // when no failure is known, and after that only the payment's answer can be one. So a
        // step given back means the run this log comes from never asked the charge; a replay
        // that believed otherwise (it met the holds before the time-out) forgets it.
        if given_back && self.payment.charge == Charge::Pending {
            self.payment.charge = Charge::NotAsked;
        }
        let mut commands = Vec::new();
        let failure = self.failure();
        // A reply that gave a step back for a failure outranking every one known (or for none
        // known): a replay, or an instance that took the task over from a changelog that was
        // behind and reads the topics again in another order than the first owner did. While
        // that failure's own fact is missing, its record is still to come in the log (it came
        // before the step was given back), so it is waited for: announcing now could only say
        // less. Never over a charge taken (it is refunded), and never once cancelled.
        let outranked = match (&failure, self.given_back_for) {
            (None, _) => given_back,
            (Some((known, _)), Some(cause)) => rank(cause) > rank(*known),
            (Some(_), None) => false,
        };
        let wait = outranked
            && !self.knows(self.given_back_for)
            && !matches!(self.payment.charge, Charge::Charged(_))
            && !matches!(self.status, Status::Cancelled(..));
        match failure {
            _ if wait => {
                self.status = Status::Compensating(
                    self.given_back_for.unwrap_or(CancellationReason::Unknown),
                    WAITING.into(),
                );
            }
            None if given_back => {
                // Given back for a failure whose fact is known but no longer applies (a
                // time-out after a charge this owner asked, which the first owner never did):
                // the first owner cancelled for it.
                let reason = self.given_back_for.unwrap_or(CancellationReason::Unknown);
                self.compensate(reason, WAITING.into(), now, &mut commands);
            }
            None => self.proceed(now, &mut commands),
            Some((reason, detail)) => self.compensate(reason, detail, now, &mut commands),
        }
        commands
    }

    /// No failure known: charge once both are held, confirm once charged.
    fn proceed(&mut self, now: i64, commands: &mut Vec<Command>) {
        // An undo asked while a failure seemed known that the facts no longer show: a replay
        // that met the time-out before the holds, where the payment's answer says the live run
        // had asked the charge (so the time-out did not apply). Live, nothing sent is taken
        // back: no failure known is ever forgotten.
        for undo in [
            &mut self.seats.release,
            &mut self.rooms.release,
            &mut self.payment.refund,
        ] {
            if *undo == Undo::Asked {
                *undo = Undo::NotAsked;
            }
        }
        let (Hold::Held(seats), Hold::Held(rooms)) = (&self.seats.hold, &self.rooms.hold) else {
            self.status = match self.payment.charge {
                // Only in a replay that reads the payment's answer before a hold.
                Charge::Pending | Charge::Charged(_) => Status::Charging,
                _ => Status::Reserving,
            };
            return;
        };
        match &self.payment.charge {
            Charge::NotAsked => {
                // Always computes here: a total that does not is a failure (see `failure`).
                if let Some(total) = self.total(seats, rooms) {
                    self.payment.charge = Charge::Pending;
                    commands.push(Command::Charge(ChargePayment {
                        booking_id: self.request.booking_id.clone(),
                        user_id: self.request.user_id.clone(),
                        amount: total,
                    }));
                }
                self.status = Status::Charging;
            }
            Charge::Charged(total) => {
                let total = total.clone();
                if !matches!(self.status, Status::Confirmed(_)) {
                    commands.push(Command::Confirmed(BookingConfirmed {
                        booking_id: self.request.booking_id.clone(),
                        user_id: self.request.user_id.clone(),
                        total: total.clone(),
                        confirmed_at: now,
                    }));
                }
                self.status = Status::Confirmed(total);
            }
            Charge::Pending | Charge::Declined(_) => self.status = Status::Charging,
        }
    }

    /// A failure known: give back what is held, in reverse (room, seat, then the charge), and
    /// cancel once every step is answered and given back. A step still unanswered is waited
    /// for, since its answer may be a hold that must be given back too; on the time-out its
    /// release is asked at once, queued behind the reservation.
    fn compensate(
        &mut self,
        reason: CancellationReason,
        detail: String,
        now: i64,
        commands: &mut Vec<Command>,
    ) {
        let time_out = self.time_out_applies();
        let booking_id = &self.request.booking_id;
        if self.rooms.needs_release(time_out) {
            self.rooms.release = Undo::Asked;
            commands.push(Command::ReleaseRooms(ReleaseRooms {
                booking_id: booking_id.clone(),
                hotel_id: self.request.hotel.hotel_id.clone(),
                reason: detail.clone(),
                cancellation: reason.as_str().into(),
            }));
        }
        if self.seats.needs_release(time_out) {
            self.seats.release = Undo::Asked;
            commands.push(Command::ReleaseSeats(ReleaseSeats {
                booking_id: booking_id.clone(),
                flight_id: self.request.flight.flight_id.clone(),
                reason: detail.clone(),
                cancellation: reason.as_str().into(),
            }));
        }
        // Never live (a charge is asked only with no failure known, and its answer is then
        // the only failure that can come), kept so that nothing charged is ever left so.
        if matches!(self.payment.charge, Charge::Charged(_))
            && self.payment.refund == Undo::NotAsked
        {
            self.payment.refund = Undo::Asked;
            commands.push(Command::Refund(RefundPayment {
                booking_id: booking_id.clone(),
                user_id: self.request.user_id.clone(),
                reason: detail.clone(),
                cancellation: reason.as_str().into(),
            }));
        }
        if self.seats.settled() && self.rooms.settled() && self.payment.settled() {
            if !matches!(self.status, Status::Cancelled(..)) {
                commands.push(Command::Cancelled(BookingCancelled {
                    booking_id: booking_id.clone(),
                    user_id: self.request.user_id.clone(),
                    reason,
                    detail: detail.clone(),
                    cancelled_at: now,
                }));
            }
            self.status = Status::Cancelled(reason, detail);
        } else {
            self.status = Status::Compensating(reason, detail);
        }
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

/// Records a reservation's answer; the first one stands (a later one is a duplicate, or the
/// refusal of a reservation asked again after its release).
fn answer(hold: &mut Hold, answer: Hold) -> bool {
    let new = *hold == Hold::Pending;
    if new {
        *hold = answer;
    }
    new
}

/// Records the payment's answer; the first one stands.
fn charged(charge: &mut Charge, answer: Charge) -> bool {
    let new = matches!(charge, Charge::NotAsked | Charge::Pending);
    if new {
        *charge = answer;
    }
    new
}

/// Records that a step was given back, whether or not this saga asked it: the service says so.
fn given_back(undo: &mut Undo) -> bool {
    let new = *undo != Undo::Done;
    *undo = Undo::Done;
    new
}

#[cfg(test)]
mod interleavings;

#[cfg(test)]
mod tests {
    use super::*;
    use events::{FlightSelection, HotelSelection};
    use rust_decimal::Decimal;

    /// The time every test decides at: no clock is read inside the state machine.
    const NOW: i64 = 1_700_000_000_000;

    fn eur(amount: i64) -> Money {
        Money::new(Decimal::new(amount, 0), "EUR")
    }

    fn started() -> Saga {
        let (saga, commands) = Saga::start(
            BookingRequested {
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
            },
            NOW,
        );
        assert_eq!(commands.len(), 2, "seats and rooms are asked at once");
        saga
    }

    #[test]
    fn a_refusal_waits_for_the_other_step_then_releases_it() {
        let mut saga = started();
        let sent = saga.reply(Reply::SeatsRefused("sold out".into()), NOW);
        assert_eq!(
            sent,
            Some(vec![]),
            "the room may still be held: wait for it"
        );
        let sent = saga
            .reply(Reply::RoomsHeld(eur(80)), NOW)
            .expect("answers a question");
        assert!(matches!(sent.as_slice(), [Command::ReleaseRooms(_)]));
        let sent = saga
            .reply(
                Reply::RoomsReleased(Some(CancellationReason::SeatsUnavailable)),
                NOW,
            )
            .expect("answers a question");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::SeatsUnavailable));
        assert!(saga.finished());
    }

    #[test]
    fn a_decline_releases_room_and_seat_and_late_or_duplicate_replies_change_nothing() {
        let mut saga = started();
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100)), NOW), Some(vec![]));
        assert_eq!(
            saga.reply(Reply::SeatsHeld(eur(100)), NOW),
            None,
            "a duplicate"
        );
        let sent = saga.reply(Reply::RoomsHeld(eur(80)), NOW).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Charge(c)] if c.amount == eur(180)));
        let sent = saga
            .reply(Reply::Declined("no funds".into()), NOW)
            .expect("answers");
        assert!(matches!(
            sent.as_slice(),
            [Command::ReleaseRooms(_), Command::ReleaseSeats(_)]
        ));
        assert_eq!(
            saga.reply(Reply::Charged(eur(180)), NOW),
            None,
            "a late reply"
        );
        saga.reply(
            Reply::SeatsReleased(Some(CancellationReason::PaymentDeclined)),
            NOW,
        )
        .expect("answers");
        let sent = saga
            .reply(
                Reply::RoomsReleased(Some(CancellationReason::PaymentDeclined)),
                NOW,
            )
            .expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::PaymentDeclined));
        assert_eq!(
            saga.reply(
                Reply::RoomsReleased(Some(CancellationReason::PaymentDeclined)),
                NOW
            ),
            None
        );
    }

    #[test]
    fn a_time_out_undoes_held_and_unanswered_steps_and_waits_for_both() {
        let mut saga = started();
        assert_eq!(saga.reply(Reply::RoomsHeld(eur(80)), NOW), Some(vec![]));
        assert!(saga.awaits_deadline());
        let sent = saga.time_out(NOW).expect("it was waiting");
        assert!(
            matches!(
                sent.as_slice(),
                [Command::ReleaseRooms(_), Command::ReleaseSeats(_)]
            ),
            "{sent:?}"
        );
        assert!(!saga.awaits_deadline(), "a time-out applies once");
        // The late hold is recorded, and undone by the release queued behind it.
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100)), NOW), Some(vec![]));
        assert_eq!(saga.seats.hold, Hold::Held(eur(100)));
        assert_eq!(
            saga.reply(
                Reply::SeatsReleased(Some(CancellationReason::TimedOut)),
                NOW
            ),
            Some(vec![])
        );
        let sent = saga
            .reply(
                Reply::RoomsReleased(Some(CancellationReason::TimedOut)),
                NOW,
            )
            .expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::TimedOut));
        assert_eq!(saga.time_out(NOW), None, "a time-out known already");
    }

    #[test]
    fn a_step_given_back_for_a_failure_not_read_yet_waits_for_it() {
        // A take-over from a changelog that was behind: the new owner read the holds, then
        // the releases the first owner asked on the decline, and the time-out, before the
        // decline itself.
        let mut saga = started();
        saga.reply(Reply::SeatsHeld(eur(100)), NOW)
            .expect("answers");
        saga.reply(Reply::RoomsHeld(eur(80)), NOW).expect("answers");
        let declined = Some(CancellationReason::PaymentDeclined);
        for early in [
            Reply::SeatsReleased(declined),
            Reply::RoomsReleased(declined),
        ] {
            assert_eq!(saga.reply(early, NOW), Some(vec![]), "{saga:?}");
        }
        assert_eq!(
            saga.time_out(NOW),
            Some(vec![]),
            "the time-out is outranked"
        );
        assert!(!saga.finished() && !saga.awaits_deadline(), "{saga:?}");
        let sent = saga
            .reply(Reply::Declined("no funds".into()), NOW)
            .expect("answers");
        assert!(
            matches!(sent.as_slice(), [Command::Cancelled(c)]
                if c.reason == CancellationReason::PaymentDeclined && c.detail == "no funds"),
            "{sent:?}"
        );
        // From a producer older than the echo, a step given back says no reason: wait too.
        let mut saga = started();
        saga.reply(Reply::SeatsHeld(eur(100)), NOW)
            .expect("answers");
        assert_eq!(saga.reply(Reply::SeatsReleased(None), NOW), Some(vec![]));
        let sent = saga
            .reply(Reply::RoomsRefused("full".into()), NOW)
            .expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::RoomsUnavailable));
    }

    #[test]
    fn a_charge_taken_over_a_step_given_back_is_refunded_not_waited_on() {
        // A take-over that read both holds (and so asked a charge the first owner never did)
        // before the release the first owner asked on its time-out, and the charge's answer
        // before the time-out.
        let mut saga = started();
        saga.reply(Reply::SeatsHeld(eur(100)), NOW)
            .expect("answers");
        let sent = saga.reply(Reply::RoomsHeld(eur(80)), NOW).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Charge(_)]));
        let timed_out = Some(CancellationReason::TimedOut);
        assert_eq!(
            saga.reply(Reply::SeatsReleased(timed_out), NOW),
            Some(vec![])
        );
        let sent = saga.reply(Reply::Charged(eur(180)), NOW).expect("answers");
        assert!(
            sent.iter().any(|c| matches!(c, Command::Refund(_))),
            "the charge is given back: {sent:?}"
        );
        assert_eq!(saga.time_out(NOW), Some(vec![]));
        saga.reply(Reply::RoomsReleased(timed_out), NOW)
            .expect("answers");
        let sent = saga
            .reply(Reply::Refunded(timed_out), NOW)
            .expect("answers");
        assert!(
            matches!(sent.as_slice(), [Command::Cancelled(c)]
                if c.reason == CancellationReason::TimedOut),
            "{sent:?}"
        );
    }

    #[test]
    fn the_reason_is_the_same_whichever_refusal_comes_first() {
        let refusals = [
            Reply::SeatsRefused("sold out".into()),
            Reply::RoomsRefused("full".into()),
        ];
        for first in 0..2 {
            let mut saga = started();
            saga.reply(refusals[first].clone(), NOW).expect("answers");
            let sent = saga
                .reply(refusals[1 - first].clone(), NOW)
                .expect("answers");
            assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
                if c.reason == CancellationReason::SeatsUnavailable && c.detail == "sold out"));
        }
    }

    #[test]
    fn once_the_charge_is_asked_a_time_out_leaves_the_decision_to_the_payment() {
        let mut saga = started();
        saga.reply(Reply::SeatsHeld(eur(100)), NOW)
            .expect("answers");
        saga.reply(Reply::RoomsHeld(eur(80)), NOW).expect("answers");
        assert!(!saga.awaits_deadline(), "the payment decides now");
        assert_eq!(saga.time_out(NOW), Some(vec![]), "recorded, nothing undone");
        let sent = saga.reply(Reply::Charged(eur(180)), NOW).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Confirmed(_)]));
        assert!(saga.timed_out && saga.finished());
    }

    #[test]
    fn an_invalid_request_is_cancelled_at_once_without_asking_anyone() {
        let mut request = started().request;
        request.hotel.check_out = request.hotel.check_in;
        let (saga, sent) = Saga::start(request, NOW);
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::InvalidRequest));
        assert!(saga.finished());
        assert_eq!(saga.seats.hold, Hold::NotAsked);
    }

    #[test]
    fn the_outcome_is_stamped_with_the_time_of_the_input_that_decides_it() {
        let mut saga = started();
        saga.reply(Reply::SeatsHeld(eur(100)), NOW)
            .expect("answers");
        saga.reply(Reply::RoomsHeld(eur(80)), NOW).expect("answers");
        let sent = saga
            .reply(Reply::Charged(eur(180)), NOW + 7)
            .expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Confirmed(c)]
            if c.confirmed_at == NOW + 7 && c.total == eur(180)));
        assert_eq!(saga.status, Status::Confirmed(eur(180)));

        let mut request = started().request;
        request.flight.seats = 0;
        let (_, sent) = Saga::start(request, NOW + 9);
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.cancelled_at == NOW + 9 && c.detail == "flight.seats must be positive, not 0"));
    }
}
