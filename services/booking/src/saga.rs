//! The saga's state machine: a saga and one input give its next state and what to send.
//!
//! The inputs are a request, a reply and the deadline passing, each with the time an outcome it
//! leads to is stamped with. Pure: no store, no broker, no clock. The handler reads the saga,
//! feeds it one input, stores what comes back and emits the commands in one transaction, so
//! every decision of the saga is made here and can be tested without a broker.

use events::{
    BookingCancelled, BookingConfirmed, BookingRequested, CancellationReason, ChargePayment, Money,
    RefundPayment, ReleaseRooms, ReleaseSeats, ReserveRooms, ReserveSeats,
};
use serde::{Deserialize, Serialize};

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
    /// Starts a saga: reserve seats and rooms at once, or cancel an invalid request. `now`
    /// (milliseconds since the epoch) stamps an announcement made at once.
    pub fn start(request: BookingRequested, now: i64) -> (Saga, Vec<Command>) {
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
            let commands = saga.advance(now);
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
    fn advance(&mut self, now: i64) -> Vec<Command> {
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
                        confirmed_at: now,
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
                    cancelled_at: now,
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
    /// refusal and ends `TIMED_OUT`. `None` when the saga was no longer waiting. `now` stamps
    /// the cancellation, should nothing be left to wait for.
    pub fn time_out(&mut self, now: i64) -> Option<Vec<Command>> {
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
        commands.extend(self.advance(now));
        Some(commands)
    }

    /// Records a reply and returns what to send, or `None` for a reply that answers no open
    /// question (late or duplicate) and changes nothing. `now` stamps the confirmation or
    /// cancellation the reply may finish the saga with.
    pub fn reply(&mut self, reply: Reply, now: i64) -> Option<Vec<Command>> {
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
        Some(self.advance(now))
    }
}

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
            .reply(Reply::RoomsReleased, NOW)
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
        saga.reply(Reply::SeatsReleased, NOW).expect("answers");
        let sent = saga.reply(Reply::RoomsReleased, NOW).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::PaymentDeclined));
        assert_eq!(saga.reply(Reply::RoomsReleased, NOW), None);
    }

    #[test]
    fn a_time_out_undoes_held_and_unanswered_steps_and_waits_for_both() {
        let mut saga = started();
        assert_eq!(saga.reply(Reply::RoomsHeld(eur(80)), NOW), Some(vec![]));
        let sent = saga.time_out(NOW).expect("it was waiting");
        assert!(
            matches!(
                sent.as_slice(),
                [Command::ReleaseSeats(_), Command::ReleaseRooms(_)]
            ),
            "{sent:?}"
        );
        // The late hold is undone by the release queued behind it.
        assert_eq!(saga.reply(Reply::SeatsHeld(eur(100)), NOW), None);
        assert_eq!(saga.reply(Reply::SeatsReleased, NOW), Some(vec![]));
        let sent = saga.reply(Reply::RoomsReleased, NOW).expect("answers");
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::TimedOut));
        assert_eq!(saga.time_out(NOW), None, "a finished saga cannot time out");
    }

    #[test]
    fn an_invalid_request_is_cancelled_at_once_without_asking_anyone() {
        let mut request = started().request;
        request.hotel.check_out = request.hotel.check_in;
        let (saga, sent) = Saga::start(request, NOW);
        assert!(matches!(sent.as_slice(), [Command::Cancelled(c)]
            if c.reason == CancellationReason::InvalidRequest));
        assert!(saga.finished());
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
