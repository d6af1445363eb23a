//! The hotel service: the hotel catalog and room inventory per night. Reserves and releases
//! rooms for a date range per booking, idempotently, and never books a night beyond the rooms a
//! hotel has.
//!
//! Room commands are keyed by hotel id, so one hotel's nights have one writer (see the flight
//! service for why that rules out overbooking).

use std::future::Future;

use events::{
    HotelListed, Money, ReleaseRooms, ReserveRooms, RoomsRefused, RoomsReleased, RoomsReserved,
    topics,
};
use serde::{Deserialize, Serialize};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::service::Settings;
use streams::store::Store;

/// The service's consumer group.
pub const GROUP: &str = "hotel";

/// The topics whose partitions make up hotel's tasks: its commands, keyed by hotel id.
pub const TOPICS: &[&str] = &[topics::HOTEL_COMMANDS];

/// The catalog every instance reads whole (a global table).
pub const GLOBALS: &[&str] = &[topics::HOTELS];

/// The longest stay one booking can hold, in nights.
pub const MAX_NIGHTS: i32 = 30;

/// Runs the hotel service until `shutdown`.
///
/// # Errors
///
/// When the store cannot be opened or the broker cannot be reached at start.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> streams::Result<()> {
    streams::service::run(
        GROUP,
        &topics::service_topics(TOPICS, GLOBALS, topics::HOTEL_CHANGELOG)?,
        &settings,
        Hotels,
        shutdown,
    )
    .await
}

/// What the service holds for one booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Hold {
    /// Rooms held for the nights `check_in..check_out`.
    Held {
        /// The hotel.
        hotel_id: String,
        /// First night.
        check_in: i32,
        /// Day of departure.
        check_out: i32,
        /// Rooms per night.
        rooms: i32,
        /// Price in all.
        price: Money,
    },
    /// Refused, with the reason.
    Refused(String),
    /// Given back (or released before anything was held).
    Released {
        /// The hotel.
        hotel_id: String,
        /// Rooms given back per night.
        rooms: i32,
    },
}

fn hotel_key(hotel_id: &str) -> String {
    format!("hotel/{hotel_id}")
}

fn night_key(hotel_id: &str, day: i32) -> String {
    format!("night/{hotel_id}/{day}")
}

fn hold_key(booking_id: &str) -> String {
    format!("hold/{booking_id}")
}

/// The handler: catalog entries and room commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hotels;

impl Handler for Hotels {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        match record.event_type() {
            Some(HotelListed::TYPE) => {
                let hotel: HotelListed = ctx.decode(record).await?;
                if hotel.rooms < 0 || hotel.nightly_rate.amount.is_sign_negative() {
                    return Err(HandlerError::Invalid(format!(
                        "hotel {} has {} rooms at {}",
                        hotel.hotel_id, hotel.rooms, hotel.nightly_rate
                    )));
                }
                ctx.put_json(&hotel_key(&hotel.hotel_id), &hotel)?;
                Ok(())
            }
            Some(ReserveRooms::TYPE) => reserve(ctx, ctx.decode(record).await?).await,
            Some(ReleaseRooms::TYPE) => release(ctx, ctx.decode(record).await?).await,
            other => Err(HandlerError::unhandled("hotel", other)),
        }
    }
}

async fn reserve(ctx: &mut Context<'_>, command: ReserveRooms) -> Result<(), HandlerError> {
    let key = hold_key(&command.booking_id);
    // A repeated command gets the same answer again, never a second hold.
    let hold = match ctx.get_json::<Hold>(&key)? {
        Some(hold) => hold,
        None => {
            let hold = decide(ctx, &command)?;
            if let Hold::Held { rooms, .. } = &hold {
                book_nights(ctx, &command, i64::from(*rooms))?;
            }
            ctx.put_json(&key, &hold)?;
            hold
        }
    };
    let booking_id = command.booking_id;
    match hold {
        Hold::Held {
            hotel_id,
            check_in,
            check_out,
            rooms,
            price,
        } => {
            let reserved = RoomsReserved {
                booking_id,
                hotel_id,
                nights: check_out - check_in,
                rooms,
                price,
            };
            ctx.emit(topics::HOTEL_EVENTS, &reserved).await
        }
        Hold::Refused(reason) => {
            let refused = RoomsRefused {
                booking_id,
                hotel_id: command.hotel_id,
                reason,
            };
            ctx.emit(topics::HOTEL_EVENTS, &refused).await
        }
        Hold::Released { .. } => {
            let refused = RoomsRefused {
                booking_id,
                hotel_id: command.hotel_id,
                reason: "the booking's rooms were already released".into(),
            };
            ctx.emit(topics::HOTEL_EVENTS, &refused).await
        }
    }
}

/// Whether every night has the rooms, and at what price.
fn decide(ctx: &Context<'_>, command: &ReserveRooms) -> Result<Hold, HandlerError> {
    let Some(hotel) = ctx.global_json::<HotelListed>(&hotel_key(&command.hotel_id))? else {
        return Ok(Hold::Refused(format!(
            "hotel {} is not for sale",
            command.hotel_id
        )));
    };
    let nights = command.check_out.saturating_sub(command.check_in);
    if nights <= 0 || nights > MAX_NIGHTS {
        return Ok(Hold::Refused(format!(
            "a stay must be 1 to {MAX_NIGHTS} nights, not {nights}"
        )));
    }
    if command.rooms <= 0 {
        return Ok(Hold::Refused(format!(
            "{} rooms cannot be reserved",
            command.rooms
        )));
    }
    for day in command.check_in..command.check_out {
        let booked = ctx
            .get_json::<i64>(&night_key(&command.hotel_id, day))?
            .unwrap_or(0);
        let left = i64::from(hotel.rooms) - booked;
        if i64::from(command.rooms) > left {
            return Ok(Hold::Refused(format!(
                "no vacancy: {} rooms asked, {left} left on day {day} at {}",
                command.rooms, command.hotel_id
            )));
        }
    }
    let Some(price) = hotel
        .nightly_rate
        .times(i64::from(nights) * i64::from(command.rooms))
    else {
        return Ok(Hold::Refused("the price overflows".into()));
    };
    Ok(Hold::Held {
        hotel_id: command.hotel_id.clone(),
        check_in: command.check_in,
        check_out: command.check_out,
        rooms: command.rooms,
        price,
    })
}

fn book_nights(ctx: &mut Context<'_>, stay: &ReserveRooms, rooms: i64) -> Result<(), HandlerError> {
    for day in stay.check_in..stay.check_out {
        let key = night_key(&stay.hotel_id, day);
        let booked = ctx.get_json::<i64>(&key)?.unwrap_or(0);
        ctx.put_json(&key, &(booked + rooms))?;
    }
    Ok(())
}

async fn release(ctx: &mut Context<'_>, command: ReleaseRooms) -> Result<(), HandlerError> {
    let key = hold_key(&command.booking_id);
    let rooms = match ctx.get_json::<Hold>(&key)? {
        Some(Hold::Held {
            hotel_id,
            check_in,
            check_out,
            rooms,
            ..
        }) => {
            let stay = ReserveRooms {
                booking_id: command.booking_id.clone(),
                hotel_id,
                check_in,
                check_out,
                rooms,
            };
            book_nights(ctx, &stay, -i64::from(rooms))?;
            rooms
        }
        Some(Hold::Released { rooms, .. }) => rooms,
        // Nothing held: remember the release, so that a late reserve is refused.
        Some(Hold::Refused(_)) | None => 0,
    };
    ctx.put_json(
        &key,
        &Hold::Released {
            hotel_id: command.hotel_id.clone(),
            rooms,
        },
    )?;
    let released = RoomsReleased {
        booking_id: command.booking_id,
        hotel_id: command.hotel_id,
        rooms,
        cancellation: command.cancellation,
    };
    ctx.emit(topics::HOTEL_EVENTS, &released).await
}

/// Rooms of a hotel on one night: (for sale, booked), or `None` for a hotel not in the catalog.
/// No room booked that night yet is 0 booked.
///
/// # Errors
///
/// When the store cannot be read, or the hotel or its count of booked rooms does not decode.
pub fn inventory(store: &Store, hotel_id: &str, day: i32) -> streams::Result<Option<(i32, i64)>> {
    let Some(hotel) = store.get(hotel_key(hotel_id).as_bytes())? else {
        return Ok(None);
    };
    let hotel: HotelListed = serde_json::from_slice(&hotel)
        .map_err(|e| streams::Error::Store(format!("hotel {hotel_id}: {e}")))?;
    let booked = store
        .get(night_key(hotel_id, day).as_bytes())?
        .map(|v| {
            serde_json::from_slice::<i64>(&v).map_err(|e| {
                streams::Error::Store(format!(
                    "rooms booked at hotel {hotel_id} on day {day}: {e}"
                ))
            })
        })
        .transpose()?
        .unwrap_or(0);
    Ok(Some((hotel.rooms, booked)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::Money;
    use rust_decimal::Decimal;

    fn store_with(entries: &[(String, Vec<u8>)]) -> Store {
        Store::temporary_with(entries.iter().cloned()).expect("store")
    }

    fn listed() -> Vec<u8> {
        serde_json::to_vec(&HotelListed {
            hotel_id: "H1".into(),
            name: "Hotel".into(),
            city: "Lisbon".into(),
            rooms: 5,
            nightly_rate: Money::new(Decimal::new(80, 0), "EUR"),
        })
        .expect("a hotel encodes")
    }

    #[test]
    fn no_rooms_booked_that_night_is_zero_booked() {
        let store = store_with(&[(hotel_key("H1"), listed())]);
        assert_eq!(inventory(&store, "H1", 20_000).expect("read"), Some((5, 0)));
        assert_eq!(inventory(&store, "H2", 20_000).expect("read"), None);
    }

    #[test]
    fn an_unreadable_count_of_booked_rooms_is_an_error_not_zero() {
        let store = store_with(&[
            (hotel_key("H1"), listed()),
            (night_key("H1", 20_000), b"two".to_vec()),
        ]);
        let error = inventory(&store, "H1", 20_000).expect_err("the count does not decode");
        assert!(error.to_string().contains("hotel H1"), "{error}");
    }
}
