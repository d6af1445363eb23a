//! The gateway's views, built from the log: each booking's status and the rooms confirmed
//! bookings hold per hotel and night (from `bookings`), and the flight and hotel catalogs
//! (from `flights` and `hotels`).

use std::fmt;

use events::{
    BookingCancelled, BookingConfirmed, BookingRequested, BookingTimedOut, CancellationReason,
    FlightScheduled, HotelListed, Money, date,
};
use serde::{Deserialize, Serialize};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::store::Store;

/// A booking as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingView {
    /// The booking.
    pub booking_id: String,
    /// Whose.
    pub user_id: String,
    /// Where it stands.
    pub status: BookingStatus,
    /// Seats asked.
    pub flight: FlightPart,
    /// Rooms asked.
    pub hotel: HotelPart,
    /// Extras.
    pub extras: Vec<ExtraPart>,
    /// What was charged, once confirmed.
    pub total: Option<Money>,
    /// Why it was cancelled, once cancelled.
    pub reason: Option<CancellationReason>,
    /// The cancellation's explanation.
    pub detail: Option<String>,
    /// When it was asked, milliseconds since the epoch.
    pub requested_at: i64,
    /// When it was confirmed or cancelled.
    pub finished_at: Option<i64>,
}

/// Where a booking stands, as clients see it: on the wire `PENDING`, `CONFIRMED` or
/// `CANCELLED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    /// Asked, not decided yet.
    Pending,
    /// Booked.
    Confirmed,
    /// Ended without a trip.
    Cancelled,
}

impl BookingStatus {
    /// The status as the JSON API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Pending => "PENDING",
            BookingStatus::Confirmed => "CONFIRMED",
            BookingStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The flight part of a booking view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlightPart {
    /// The flight.
    pub flight_id: String,
    /// Seats.
    pub seats: i32,
}

/// The hotel part of a booking view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotelPart {
    /// The hotel.
    pub hotel_id: String,
    /// First night, `YYYY-MM-DD`.
    pub check_in: String,
    /// Day of departure, `YYYY-MM-DD`.
    pub check_out: String,
    /// Rooms.
    pub rooms: i32,
}

/// An extra in a booking view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraPart {
    /// What.
    pub code: String,
    /// How many.
    pub quantity: i32,
    /// Price of one.
    pub unit_price: Money,
}

impl BookingView {
    /// The view of a request not yet decided.
    pub fn pending(request: &BookingRequested) -> Self {
        BookingView {
            booking_id: request.booking_id.clone(),
            user_id: request.user_id.clone(),
            status: BookingStatus::Pending,
            flight: FlightPart {
                flight_id: request.flight.flight_id.clone(),
                seats: request.flight.seats,
            },
            hotel: HotelPart {
                hotel_id: request.hotel.hotel_id.clone(),
                check_in: date::format(request.hotel.check_in),
                check_out: date::format(request.hotel.check_out),
                rooms: request.hotel.rooms,
            },
            extras: request
                .extras
                .iter()
                .map(|e| ExtraPart {
                    code: e.code.clone(),
                    quantity: e.quantity,
                    unit_price: e.unit_price.clone(),
                })
                .collect(),
            total: None,
            reason: None,
            detail: None,
            requested_at: request.requested_at,
            finished_at: None,
        }
    }

    /// Whether it is confirmed or cancelled.
    pub fn finished(&self) -> bool {
        self.status != BookingStatus::Pending
    }
}

pub(crate) fn booking_key(booking_id: &str) -> String {
    format!("booking/{booking_id}")
}

pub(crate) fn user_prefix(user_id: &str) -> String {
    format!("by-user/{user_id}/")
}

/// Rooms confirmed bookings hold in a hotel on one night.
fn night_key(hotel_id: &str, night: i32) -> String {
    format!("night/{hotel_id}/{night}")
}

/// Rooms that confirmed bookings hold in `hotel_id` on `night` (days since 1970-01-01).
///
/// # Errors
///
/// When the store cannot be read or the count stored does not decode.
pub(crate) fn rooms_booked(store: &Store, hotel_id: &str, night: i32) -> streams::Result<i64> {
    Ok(read::<i64>(store, &night_key(hotel_id, night))?.unwrap_or(0))
}

pub(crate) fn flight_key(flight_id: &str) -> String {
    format!("flight/{flight_id}")
}

pub(crate) fn hotel_key(hotel_id: &str) -> String {
    format!("hotel/{hotel_id}")
}

/// The handler that keeps the views.
#[derive(Debug, Clone, Copy, Default)]
pub struct Views;

impl Handler for Views {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        match record.event_type() {
            Some(BookingRequested::TYPE) => {
                let request: BookingRequested = ctx.decode(record).await?;
                let key = booking_key(&request.booking_id);
                if ctx.get_json::<BookingView>(&key)?.is_none() {
                    ctx.put_json(&key, &BookingView::pending(&request))?;
                    ctx.put(
                        format!("{}{}", user_prefix(&request.user_id), request.booking_id),
                        Vec::new(),
                    );
                }
                Ok(())
            }
            Some(BookingConfirmed::TYPE) => {
                let confirmed: BookingConfirmed = ctx.decode(record).await?;
                let (before, view) = finish(ctx, &confirmed.booking_id, |view| {
                    view.status = BookingStatus::Confirmed;
                    view.total = Some(confirmed.total.clone());
                    view.finished_at = Some(confirmed.confirmed_at);
                })?;
                if before != BookingStatus::Confirmed {
                    hold_rooms(ctx, &view.hotel)?;
                }
                Ok(())
            }
            Some(BookingCancelled::TYPE) => {
                let cancelled: BookingCancelled = ctx.decode(record).await?;
                finish(ctx, &cancelled.booking_id, |view| {
                    view.status = BookingStatus::Cancelled;
                    view.reason = Some(cancelled.reason);
                    view.detail = Some(cancelled.detail.clone());
                    view.finished_at = Some(cancelled.cancelled_at);
                })
                .map(drop)
            }
            // The saga's note to itself; the outcome follows as a cancellation.
            Some(BookingTimedOut::TYPE) => Ok(()),
            Some(FlightScheduled::TYPE) => {
                let flight: FlightScheduled = ctx.decode(record).await?;
                ctx.put_json(&flight_key(&flight.flight_id), &flight)?;
                Ok(())
            }
            Some(HotelListed::TYPE) => {
                let hotel: HotelListed = ctx.decode(record).await?;
                ctx.put_json(&hotel_key(&hotel.hotel_id), &hotel)?;
                Ok(())
            }
            other => Err(HandlerError::Invalid(format!(
                "the gateway's views do not use event type {}",
                other.unwrap_or("(none)")
            ))),
        }
    }
}

/// Applies an outcome to a booking's view: its status before, and the view after.
fn finish(
    ctx: &mut Context<'_>,
    booking_id: &str,
    change: impl FnOnce(&mut BookingView),
) -> Result<(BookingStatus, BookingView), HandlerError> {
    let key = booking_key(booking_id);
    // One booking's events share a partition, so its request is always read first.
    let Some(mut view) = ctx.get_json::<BookingView>(&key)? else {
        return Err(HandlerError::Invalid(format!(
            "an outcome for booking {booking_id}, whose request was never read"
        )));
    };
    let before = view.status;
    change(&mut view);
    ctx.put_json(&key, &view)?;
    Ok((before, view))
}

/// Counts a confirmed booking's rooms on each night of its stay, for hotel searches.
fn hold_rooms(ctx: &mut Context<'_>, hotel: &HotelPart) -> Result<(), HandlerError> {
    let (Some(check_in), Some(check_out)) =
        (date::parse(&hotel.check_in), date::parse(&hotel.check_out))
    else {
        // Only a request from outside the gateway (years past 9999) has such dates; its booking
        // stands, its nights are just not counted.
        tracing::warn!(hotel = %hotel.hotel_id, check_in = %hotel.check_in, "Not counting the rooms of a stay with unreadable dates");
        return Ok(());
    };
    // The gateway refuses longer stays; a request from elsewhere is counted for as many nights.
    for night in check_in..check_out.min(check_in.saturating_add(crate::MAX_NIGHTS)) {
        let key = night_key(&hotel.hotel_id, night);
        let booked = ctx.get_json::<i64>(&key)?.unwrap_or(0);
        ctx.put_json(&key, &(booked + i64::from(hotel.rooms)))?;
    }
    Ok(())
}

/// Reads a JSON view; `None` when there is none.
///
/// # Errors
///
/// When the store cannot be read or the view stored does not decode.
pub(crate) fn read<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> streams::Result<Option<T>> {
    store
        .get(key.as_bytes())?
        .map(|bytes| decode(key, &bytes))
        .transpose()
}

/// Every JSON view under a prefix.
///
/// # Errors
///
/// When the store cannot be read or any view under the prefix does not decode.
pub(crate) fn scan<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
) -> streams::Result<Vec<T>> {
    store
        .scan(prefix.as_bytes())?
        .into_iter()
        .map(|(key, bytes)| decode(&String::from_utf8_lossy(&key), &bytes))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> streams::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| streams::Error::Store(format!("the view {key} is unreadable: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn store_with(entries: &[(&str, &[u8])]) -> Store {
        Store::temporary_with(entries.iter().copied()).expect("store")
    }

    /// The view of a new booking `id` of LH1 and H1: what the gateway's tests start from.
    pub(crate) fn pending_booking(id: &str) -> BookingView {
        BookingView::pending(&BookingRequested {
            booking_id: id.into(),
            user_id: "u".into(),
            flight: events::FlightSelection {
                flight_id: "LH1".into(),
                seats: 1,
            },
            hotel: events::HotelSelection {
                hotel_id: "H1".into(),
                check_in: 20_000,
                check_out: 20_002,
                rooms: 1,
            },
            extras: vec![],
            requested_at: 7,
        })
    }

    #[test]
    fn a_view_on_the_wire_spells_status_and_reason_as_the_api_always_has() {
        let mut view = pending_booking("b-1");
        let json = serde_json::to_string(&view).expect("encodes");
        assert!(json.contains(r#""status":"PENDING""#), "{json}");
        assert!(json.contains(r#""reason":null"#), "{json}");
        view.status = BookingStatus::Cancelled;
        view.reason = Some(CancellationReason::TimedOut);
        let json = serde_json::to_string(&view).expect("encodes");
        assert_eq!(
            json,
            r#"{"booking_id":"b-1","user_id":"u","status":"CANCELLED","flight":{"flight_id":"LH1","seats":1},"hotel":{"hotel_id":"H1","check_in":"2024-10-04","check_out":"2024-10-06","rooms":1},"extras":[],"total":null,"reason":"TIMED_OUT","detail":null,"requested_at":7,"finished_at":null}"#
        );
        assert_eq!(
            serde_json::from_str::<BookingView>(&json).expect("decodes"),
            view
        );
        for status in [
            BookingStatus::Pending,
            BookingStatus::Confirmed,
            BookingStatus::Cancelled,
        ] {
            assert_eq!(
                serde_json::to_string(&status).expect("encodes"),
                format!("\"{status}\"")
            );
        }
    }

    #[test]
    fn an_absent_view_is_none_and_an_unreadable_one_is_an_error() {
        let store = store_with(&[("flight/LH1", b"{\"flight_id\": 1")]);
        assert_eq!(
            read::<FlightScheduled>(&store, "flight/LH2").expect("absent"),
            None
        );
        let error = read::<FlightScheduled>(&store, "flight/LH1").expect_err("unreadable");
        assert!(error.to_string().contains("flight/LH1"), "{error}");
    }

    #[test]
    fn a_scan_with_one_unreadable_view_is_an_error_not_a_shorter_list() {
        let store = store_with(&[("hotel/H1", b"[]"), ("hotel/H2", b"not json")]);
        let error = scan::<HotelListed>(&store, "hotel/").expect_err("unreadable");
        assert!(error.to_string().contains("hotel/H1"), "{error}");
        assert!(
            scan::<HotelListed>(&store, "flight/")
                .expect("none")
                .is_empty()
        );
    }
}
