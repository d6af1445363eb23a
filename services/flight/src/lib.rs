//! The flight service: the flight catalog and seat inventory. Reserves and releases seats per
//! booking, idempotently, and never sells more seats than a flight has.
//!
//! Seat commands are keyed by flight id, so one flight's inventory has one writer: a partition
//! is applied one record at a time, each in one sled transaction with its offset, which is why
//! concurrent bookings for the last seats cannot oversell.

use std::future::Future;

use events::{
    FlightScheduled, Money, ReleaseSeats, ReserveSeats, SeatsRefused, SeatsReleased, SeatsReserved,
    topics,
};
use serde::{Deserialize, Serialize};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::service::Settings;
use streams::store::Store;

/// The service's consumer group.
pub const GROUP: &str = "flight";

/// The topics whose partitions make up flight's tasks: its commands, keyed by flight id.
pub const TOPICS: &[&str] = &[topics::FLIGHT_COMMANDS];

/// The catalog every instance reads whole (a global table).
pub const GLOBALS: &[&str] = &[topics::FLIGHTS];

/// Runs the flight service until `shutdown`.
///
/// # Errors
///
/// When the store cannot be opened or the broker cannot be reached at start.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> streams::Result<()> {
    streams::service::run(
        GROUP,
        &topics::service_topics(TOPICS, GLOBALS, topics::FLIGHT_CHANGELOG)?,
        &settings,
        Flights,
        shutdown,
    )
    .await
}

/// What the service holds for one booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Hold {
    /// Seats held, at this price in all.
    Held {
        /// The flight.
        flight_id: String,
        /// How many.
        seats: i32,
        /// Their price.
        price: Money,
    },
    /// Refused, with the reason.
    Refused(String),
    /// Given back (or released before anything was held).
    Released {
        /// The flight.
        flight_id: String,
        /// How many were given back.
        seats: i32,
    },
}

fn flight_key(flight_id: &str) -> String {
    format!("flight/{flight_id}")
}

fn held_key(flight_id: &str) -> String {
    format!("held/{flight_id}")
}

fn hold_key(booking_id: &str) -> String {
    format!("hold/{booking_id}")
}

/// The handler: catalog entries and seat commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flights;

impl Handler for Flights {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        match record.event_type() {
            Some(FlightScheduled::TYPE) => {
                let flight: FlightScheduled = ctx.decode(record).await?;
                if flight.seats < 0 || flight.seat_price.amount.is_sign_negative() {
                    return Err(HandlerError::Invalid(format!(
                        "flight {} has {} seats at {}",
                        flight.flight_id, flight.seats, flight.seat_price
                    )));
                }
                ctx.put_json(&flight_key(&flight.flight_id), &flight)?;
                Ok(())
            }
            Some(ReserveSeats::TYPE) => reserve(ctx, ctx.decode(record).await?).await,
            Some(ReleaseSeats::TYPE) => release(ctx, ctx.decode(record).await?).await,
            other => Err(HandlerError::unhandled("flight", other)),
        }
    }
}

async fn reserve(ctx: &mut Context<'_>, command: ReserveSeats) -> Result<(), HandlerError> {
    let key = hold_key(&command.booking_id);
    // A repeated command gets the same answer again, never a second hold.
    let hold = match ctx.get_json::<Hold>(&key)? {
        Some(hold) => hold,
        None => {
            let hold = decide(ctx, &command)?;
            if let Hold::Held { seats, .. } = &hold {
                add_held(ctx, &command.flight_id, i64::from(*seats))?;
            }
            ctx.put_json(&key, &hold)?;
            hold
        }
    };
    match hold {
        Hold::Held {
            flight_id,
            seats,
            price,
        } => {
            let reserved = SeatsReserved {
                booking_id: command.booking_id,
                flight_id,
                seats,
                price,
            };
            ctx.emit(topics::FLIGHT_EVENTS, &reserved).await
        }
        Hold::Refused(reason) => {
            let refused = SeatsRefused {
                booking_id: command.booking_id,
                flight_id: command.flight_id,
                reason,
            };
            ctx.emit(topics::FLIGHT_EVENTS, &refused).await
        }
        Hold::Released { .. } => {
            let refused = SeatsRefused {
                booking_id: command.booking_id,
                flight_id: command.flight_id,
                reason: "the booking's seats were already released".into(),
            };
            ctx.emit(topics::FLIGHT_EVENTS, &refused).await
        }
    }
}

/// Whether the seats can be held, and at what price.
fn decide(ctx: &Context<'_>, command: &ReserveSeats) -> Result<Hold, HandlerError> {
    let Some(flight) = ctx.global_json::<FlightScheduled>(&flight_key(&command.flight_id))? else {
        return Ok(Hold::Refused(format!(
            "flight {} is not for sale",
            command.flight_id
        )));
    };
    if command.seats <= 0 {
        return Ok(Hold::Refused(format!(
            "{} seats cannot be reserved",
            command.seats
        )));
    }
    let held = ctx
        .get_json::<i64>(&held_key(&command.flight_id))?
        .unwrap_or(0);
    let left = i64::from(flight.seats) - held;
    if i64::from(command.seats) > left {
        return Ok(Hold::Refused(format!(
            "sold out: {} seats asked, {left} left on {}",
            command.seats, command.flight_id
        )));
    }
    let Some(price) = flight.seat_price.times(i64::from(command.seats)) else {
        return Ok(Hold::Refused("the price overflows".into()));
    };
    Ok(Hold::Held {
        flight_id: command.flight_id.clone(),
        seats: command.seats,
        price,
    })
}

fn add_held(ctx: &mut Context<'_>, flight_id: &str, seats: i64) -> Result<(), HandlerError> {
    let key = held_key(flight_id);
    let held = ctx.get_json::<i64>(&key)?.unwrap_or(0);
    ctx.put_json(&key, &(held + seats))?;
    Ok(())
}

async fn release(ctx: &mut Context<'_>, command: ReleaseSeats) -> Result<(), HandlerError> {
    let key = hold_key(&command.booking_id);
    let seats = match ctx.get_json::<Hold>(&key)? {
        Some(Hold::Held {
            flight_id, seats, ..
        }) => {
            add_held(ctx, &flight_id, -i64::from(seats))?;
            seats
        }
        Some(Hold::Released { seats, .. }) => seats,
        // Nothing held: remember the release, so that a late reserve is refused.
        Some(Hold::Refused(_)) | None => 0,
    };
    ctx.put_json(
        &key,
        &Hold::Released {
            flight_id: command.flight_id.clone(),
            seats,
        },
    )?;
    let released = SeatsReleased {
        booking_id: command.booking_id,
        flight_id: command.flight_id,
        seats,
        cancellation: command.cancellation,
    };
    ctx.emit(topics::FLIGHT_EVENTS, &released).await
}

/// Seats of a flight: (for sale, held), or `None` for a flight not in the catalog. No seat held
/// yet is 0 held.
///
/// # Errors
///
/// When the store cannot be read, or the flight or its count of held seats does not decode.
pub fn inventory(store: &Store, flight_id: &str) -> streams::Result<Option<(i32, i64)>> {
    let read = |key: String| -> streams::Result<Option<Vec<u8>>> { store.get(key.as_bytes()) };
    let Some(flight) = read(flight_key(flight_id))? else {
        return Ok(None);
    };
    let flight: FlightScheduled = serde_json::from_slice(&flight)
        .map_err(|e| streams::Error::Store(format!("flight {flight_id}: {e}")))?;
    let held = read(held_key(flight_id))?
        .map(|v| {
            serde_json::from_slice::<i64>(&v).map_err(|e| {
                streams::Error::Store(format!("held seats of flight {flight_id}: {e}"))
            })
        })
        .transpose()?
        .unwrap_or(0);
    Ok(Some((flight.seats, held)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::Money;
    use rust_decimal::Decimal;

    fn store_with(entries: &[(String, Vec<u8>)]) -> Store {
        Store::temporary_with(entries.iter().cloned()).expect("store")
    }

    fn scheduled() -> Vec<u8> {
        serde_json::to_vec(&FlightScheduled {
            flight_id: "LH1".into(),
            origin: "FRA".into(),
            destination: "LIS".into(),
            departs_at: 0,
            arrives_at: 1,
            seats: 10,
            seat_price: Money::new(Decimal::new(100, 0), "EUR"),
        })
        .expect("a flight encodes")
    }

    #[test]
    fn no_seats_held_yet_is_zero_held() {
        let store = store_with(&[(flight_key("LH1"), scheduled())]);
        assert_eq!(inventory(&store, "LH1").expect("read"), Some((10, 0)));
        assert_eq!(inventory(&store, "LH2").expect("read"), None);
    }

    #[test]
    fn an_unreadable_count_of_held_seats_is_an_error_not_zero() {
        let store = store_with(&[
            (flight_key("LH1"), scheduled()),
            (held_key("LH1"), b"three".to_vec()),
        ]);
        let error = inventory(&store, "LH1").expect_err("the count does not decode");
        assert!(error.to_string().contains("flight LH1"), "{error}");
    }
}
