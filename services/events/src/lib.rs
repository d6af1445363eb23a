//! The typed events of tripstream's contract: one Rust type per schema in `schemas/`, each
//! keyed as its topic's spec says.
//!
//! The schema text is the file itself (`include_str!`), so a type and its registered writer
//! schema cannot drift apart unnoticed: a field that does not fit fails the round-trip test.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use streams::codec::Event;

/// Implements [`Event`] for `$name` with the schema `schemas/$full.avsc`, keyed by `$key`.
macro_rules! event {
    ($name:ident, $full:literal, $key:ident) => {
        impl Event for $name {
            const SCHEMA: &'static str = include_str!(concat!("../../../schemas/", $full, ".avsc"));

            fn key(&self) -> String {
                self.$key.clone()
            }
        }

        impl $name {
            /// The record's full name, as the `event_type` header carries it.
            pub const TYPE: &'static str = $full;
        }
    };
}

/// Topic names and specs, generated from `topics/*.toml` by the build script: one constant
/// per topic (internal topics, whose names start with `_`, have none) and the text of every
/// spec file, so a service knows its topics' specs without a `topics/` directory at hand.
pub mod topics {
    use std::sync::OnceLock;

    use streams::kafka::topic::TopicSpec;

    include!(concat!(env!("OUT_DIR"), "/topics.rs"));

    /// One file of `topics/`, embedded when the crate is built.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SpecFile {
        /// The file name, `<topic>.toml`.
        pub file: &'static str,
        /// The file's text.
        pub text: &'static str,
    }

    /// Every spec of `topics/`, internal topics included, sorted by name (the declared specs;
    /// each one's dead-letter topic is [`TopicSpec::dead_letter_spec`]).
    ///
    /// # Panics
    ///
    /// Never: the specs are the files of `topics/` built into the program, and the crate's tests
    /// check that each one is valid.
    pub fn specs() -> &'static [TopicSpec] {
        static SPECS: OnceLock<Vec<TopicSpec>> = OnceLock::new();
        SPECS.get_or_init(|| {
            FILES
                .iter()
                .map(|file| {
                    // The text is fixed when the crate is built, and the crate's tests check
                    // that every file parses and validates.
                    let path = std::path::Path::new("topics").join(file.file);
                    TopicSpec::parse(&path, file.text).expect("a spec of topics/ is valid")
                })
                .collect()
        })
    }

    /// The spec of a topic of `topics/`, if there is one.
    pub fn spec(name: &str) -> Option<&'static TopicSpec> {
        specs().iter().find(|spec| spec.name == name)
    }

    /// The specs of `names`, in order (what a processor reading them needs).
    ///
    /// # Errors
    ///
    /// [`streams::Error::TopicSpec`] naming a topic `topics/` does not declare.
    pub fn specs_of(names: &[&str]) -> streams::Result<Vec<&'static TopicSpec>> {
        names
            .iter()
            .map(|name| {
                spec(name).ok_or_else(|| streams::Error::TopicSpec {
                    file: std::path::Path::new("topics").join(format!("{name}.toml")),
                    field: "-".into(),
                    reason: "no such spec was built into this program".into(),
                })
            })
            .collect()
    }

    /// What a service reads, from topic names: the specs of its task topics, of its global
    /// tables and of its changelog.
    ///
    /// # Errors
    ///
    /// As [`specs_of`].
    pub fn service_topics(
        tasks: &[&str],
        globals: &[&str],
        changelog: &str,
    ) -> streams::Result<streams::service::Topics<'static>> {
        Ok(streams::service::Topics {
            tasks: specs_of(tasks)?,
            globals: specs_of(globals)?,
            changelog: Some(specs_of(&[changelog])?[0]),
        })
    }
}

/// An amount of money in one currency (`tripstream.common.Money`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// The amount, two decimal places.
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
}

impl Money {
    /// `amount` in `currency`.
    pub fn new(amount: Decimal, currency: impl Into<String>) -> Self {
        Money {
            amount,
            currency: currency.into(),
        }
    }

    /// Nothing, in `currency`.
    pub fn zero(currency: impl Into<String>) -> Self {
        Money::new(Decimal::ZERO, currency)
    }

    /// This amount times `n`, or `None` on overflow.
    pub fn times(&self, n: i64) -> Option<Money> {
        Some(Money::new(
            self.amount.checked_mul(Decimal::from(n))?,
            &self.currency,
        ))
    }

    /// The sum, or `None` when the currencies differ or it overflows.
    pub fn plus(&self, other: &Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.amount.checked_add(other.amount))
            .flatten()
            .map(|amount| Money::new(amount, &self.currency))
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

/// The flight part of a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightSelection {
    /// The flight.
    pub flight_id: String,
    /// How many seats.
    pub seats: i32,
}

/// The hotel part of a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotelSelection {
    /// The hotel.
    pub hotel_id: String,
    /// First night, days since the epoch.
    pub check_in: i32,
    /// Day of departure, days since the epoch.
    pub check_out: i32,
    /// How many rooms.
    pub rooms: i32,
}

/// An extra bought with the booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    /// What it is, e.g. `LUGGAGE`.
    pub code: String,
    /// How many.
    pub quantity: i32,
    /// Price of one.
    pub unit_price: Money,
}

/// A customer asked for a flight, a hotel and extras in one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRequested {
    /// The booking.
    pub booking_id: String,
    /// Who booked.
    pub user_id: String,
    /// Seats wanted.
    pub flight: FlightSelection,
    /// Rooms wanted.
    pub hotel: HotelSelection,
    /// Extras.
    pub extras: Vec<Extra>,
    /// When, milliseconds since the epoch.
    pub requested_at: i64,
}
event!(
    BookingRequested,
    "tripstream.booking.BookingRequested",
    booking_id
);

/// Seat, room and payment all succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingConfirmed {
    /// The booking.
    pub booking_id: String,
    /// Who booked.
    pub user_id: String,
    /// What was charged.
    pub total: Money,
    /// When.
    pub confirmed_at: i64,
}
event!(
    BookingConfirmed,
    "tripstream.booking.BookingConfirmed",
    booking_id
);

/// Why a booking was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancellationReason {
    /// The flight could not hold the seats.
    SeatsUnavailable,
    /// The hotel could not hold the rooms.
    RoomsUnavailable,
    /// The payment was declined.
    PaymentDeclined,
    /// A step did not answer in time.
    TimedOut,
    /// The request itself was invalid.
    InvalidRequest,
    /// A reason this version does not know.
    Unknown,
}

impl CancellationReason {
    /// The symbol, as the schema spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CancellationReason::SeatsUnavailable => "SEATS_UNAVAILABLE",
            CancellationReason::RoomsUnavailable => "ROOMS_UNAVAILABLE",
            CancellationReason::PaymentDeclined => "PAYMENT_DECLINED",
            CancellationReason::TimedOut => "TIMED_OUT",
            CancellationReason::InvalidRequest => "INVALID_REQUEST",
            CancellationReason::Unknown => "UNKNOWN",
        }
    }

    /// The reason a symbol spells; `None` for one this version does not know (or "").
    pub fn from_symbol(symbol: &str) -> Option<CancellationReason> {
        [
            CancellationReason::SeatsUnavailable,
            CancellationReason::RoomsUnavailable,
            CancellationReason::PaymentDeclined,
            CancellationReason::TimedOut,
            CancellationReason::InvalidRequest,
            CancellationReason::Unknown,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == symbol)
    }
}

/// The booking ended without a trip; everything done on the way was undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingCancelled {
    /// The booking.
    pub booking_id: String,
    /// Who booked.
    pub user_id: String,
    /// Why, for programs.
    pub reason: CancellationReason,
    /// Why, for people.
    pub detail: String,
    /// When.
    pub cancelled_at: i64,
}
event!(
    BookingCancelled,
    "tripstream.booking.BookingCancelled",
    booking_id
);

/// A saga passed its deadline unfinished (the booking service tells itself through the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingTimedOut {
    /// The booking.
    pub booking_id: String,
    /// Who booked.
    pub user_id: String,
    /// The deadline that passed.
    pub deadline: i64,
}
event!(
    BookingTimedOut,
    "tripstream.booking.BookingTimedOut",
    booking_id
);

/// A flight offered for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightScheduled {
    /// The flight.
    pub flight_id: String,
    /// Departure airport.
    pub origin: String,
    /// Arrival airport.
    pub destination: String,
    /// Departure, milliseconds since the epoch.
    pub departs_at: i64,
    /// Arrival, milliseconds since the epoch.
    pub arrives_at: i64,
    /// Seats for sale.
    pub seats: i32,
    /// Price of one seat.
    pub seat_price: Money,
}
event!(
    FlightScheduled,
    "tripstream.flight.FlightScheduled",
    flight_id
);

/// Command: hold seats for a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveSeats {
    /// The booking.
    pub booking_id: String,
    /// The flight.
    pub flight_id: String,
    /// How many.
    pub seats: i32,
}
event!(ReserveSeats, "tripstream.flight.ReserveSeats", flight_id);

/// Command: give back a booking's seats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSeats {
    /// The booking.
    pub booking_id: String,
    /// The flight.
    pub flight_id: String,
    /// Why.
    pub reason: String,
    /// Why the booking is cancelled, for programs: a [`CancellationReason`] symbol, echoed on
    /// the reply ("" from producers older than the field).
    pub cancellation: String,
}
event!(ReleaseSeats, "tripstream.flight.ReleaseSeats", flight_id);

/// Seats held for a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsReserved {
    /// The booking.
    pub booking_id: String,
    /// The flight.
    pub flight_id: String,
    /// How many.
    pub seats: i32,
    /// Their price in all.
    pub price: Money,
}
event!(SeatsReserved, "tripstream.flight.SeatsReserved", booking_id);

/// Seats could not be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsRefused {
    /// The booking.
    pub booking_id: String,
    /// The flight.
    pub flight_id: String,
    /// Why.
    pub reason: String,
}
event!(SeatsRefused, "tripstream.flight.SeatsRefused", booking_id);

/// A booking's seats were given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsReleased {
    /// The booking.
    pub booking_id: String,
    /// The flight.
    pub flight_id: String,
    /// How many.
    pub seats: i32,
    /// The command's `cancellation`, echoed: a saga reading this reply again knows why the
    /// step was given back.
    pub cancellation: String,
}
event!(SeatsReleased, "tripstream.flight.SeatsReleased", booking_id);

/// A hotel offered for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotelListed {
    /// The hotel.
    pub hotel_id: String,
    /// Its name.
    pub name: String,
    /// Its city.
    pub city: String,
    /// Rooms for sale each night.
    pub rooms: i32,
    /// Price of one room for one night.
    pub nightly_rate: Money,
}
event!(HotelListed, "tripstream.hotel.HotelListed", hotel_id);

/// Command: hold rooms for a date range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRooms {
    /// The booking.
    pub booking_id: String,
    /// The hotel.
    pub hotel_id: String,
    /// First night, days since the epoch.
    pub check_in: i32,
    /// Day of departure.
    pub check_out: i32,
    /// How many rooms.
    pub rooms: i32,
}
event!(ReserveRooms, "tripstream.hotel.ReserveRooms", hotel_id);

/// Command: give back a booking's rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRooms {
    /// The booking.
    pub booking_id: String,
    /// The hotel.
    pub hotel_id: String,
    /// Why.
    pub reason: String,
    /// Why the booking is cancelled, for programs: a [`CancellationReason`] symbol, echoed on
    /// the reply ("" from producers older than the field).
    pub cancellation: String,
}
event!(ReleaseRooms, "tripstream.hotel.ReleaseRooms", hotel_id);

/// Rooms held for a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsReserved {
    /// The booking.
    pub booking_id: String,
    /// The hotel.
    pub hotel_id: String,
    /// Nights.
    pub nights: i32,
    /// Rooms.
    pub rooms: i32,
    /// Their price in all.
    pub price: Money,
}
event!(RoomsReserved, "tripstream.hotel.RoomsReserved", booking_id);

/// Rooms could not be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsRefused {
    /// The booking.
    pub booking_id: String,
    /// The hotel.
    pub hotel_id: String,
    /// Why.
    pub reason: String,
}
event!(RoomsRefused, "tripstream.hotel.RoomsRefused", booking_id);

/// A booking's rooms were given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsReleased {
    /// The booking.
    pub booking_id: String,
    /// The hotel.
    pub hotel_id: String,
    /// Rooms.
    pub rooms: i32,
    /// The command's `cancellation`, echoed: a saga reading this reply again knows why the
    /// step was given back.
    pub cancellation: String,
}
event!(RoomsReleased, "tripstream.hotel.RoomsReleased", booking_id);

/// Money added to a user's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCredited {
    /// The user.
    pub user_id: String,
    /// How much.
    pub amount: Money,
    /// Why.
    pub note: String,
}
event!(
    AccountCredited,
    "tripstream.payment.AccountCredited",
    user_id
);

/// Command: charge a booking's total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargePayment {
    /// The booking.
    pub booking_id: String,
    /// Who pays.
    pub user_id: String,
    /// How much.
    pub amount: Money,
}
event!(ChargePayment, "tripstream.payment.ChargePayment", user_id);

/// Command: give a booking's charge back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    /// The booking.
    pub booking_id: String,
    /// Who paid.
    pub user_id: String,
    /// Why.
    pub reason: String,
    /// Why the booking is cancelled, for programs: a [`CancellationReason`] symbol, echoed on
    /// the reply ("" from producers older than the field).
    pub cancellation: String,
}
event!(RefundPayment, "tripstream.payment.RefundPayment", user_id);

/// A booking's total was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCharged {
    /// The booking.
    pub booking_id: String,
    /// Who paid.
    pub user_id: String,
    /// How much.
    pub amount: Money,
}
event!(
    PaymentCharged,
    "tripstream.payment.PaymentCharged",
    booking_id
);

/// A charge was declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// The booking.
    pub booking_id: String,
    /// Who would have paid.
    pub user_id: String,
    /// How much was asked.
    pub amount: Money,
    /// Why.
    pub reason: String,
}
event!(
    PaymentDeclined,
    "tripstream.payment.PaymentDeclined",
    booking_id
);

/// A charge was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The booking.
    pub booking_id: String,
    /// Who paid.
    pub user_id: String,
    /// How much.
    pub amount: Money,
    /// The command's `cancellation`, echoed: a saga reading this reply again knows why the
    /// step was given back.
    pub cancellation: String,
}
event!(
    PaymentRefunded,
    "tripstream.payment.PaymentRefunded",
    booking_id
);

/// A user signed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// The user.
    pub user_id: String,
    /// Their email.
    pub email: String,
    /// Their name, as shown.
    pub display_name: String,
    /// When.
    pub registered_at: i64,
}
event!(UserRegistered, "tripstream.auth.UserRegistered", user_id);

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Calendar dates as the schemas carry them (`date`: days since 1970-01-01) and as people write
/// them (`YYYY-MM-DD`), in the proleptic Gregorian calendar.
pub mod date {
    /// Days since 1970-01-01 of `YYYY-MM-DD`, or `None` if it is not a real date.
    pub fn parse(text: &str) -> Option<i32> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<i64> {
            let part = text.get(range)?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        i32::try_from(days_from_civil(year, month, day)).ok()
    }

    /// `YYYY-MM-DD` of a day since 1970-01-01.
    pub fn format(days: i32) -> String {
        let (year, month, day) = civil_from_days(i64::from(days));
        format!("{year:04}-{month:02}-{day:02}")
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` of milliseconds since the epoch.
    pub fn format_millis(millis: i64) -> String {
        let seconds = millis.div_euclid(1000);
        let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )
    }

    fn days_in_month(year: i64, month: i64) -> i64 {
        match month {
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    // Howard Hinnant's algorithms: eras of 400 years, March-based years.
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn dates_round_trip_and_impossible_ones_are_refused() {
            assert_eq!(super::parse("1970-01-01"), Some(0));
            assert_eq!(super::parse("2026-12-01"), Some(20_788));
            for days in [-1, 0, 59, 60, 11_016, 20_788, 36_524] {
                assert_eq!(super::parse(&super::format(days)), Some(days));
            }
            assert_eq!(super::format(11_016), "2000-02-29");
            for bad in [
                "2026-02-29",
                "2026-13-01",
                "2026-1-01",
                "26-01-01",
                "2026-01-32",
                "x",
            ] {
                assert_eq!(super::parse(bad), None, "{bad}");
            }
            assert_eq!(
                super::format_millis(1_796_000_000_000),
                "2026-11-30T00:53:20Z"
            );
        }
    }
}
