//! Every event on the codec's hot path: the schema compiles, the compiled encoder writes each
//! event itself (a field order that differs from the schema would send every event the slow
//! way), its bytes are `serde_avro_fast`'s, and they decode back.

use events::*;
use rust_decimal::Decimal;
use serde_avro_fast::schema::SchemaMut;
use streams::avro::program::Program;
use streams::codec::Event;

fn check<E: Event + PartialEq + std::fmt::Debug>(event: &E) {
    let name = std::any::type_name::<E>();
    let schema: SchemaMut = E::SCHEMA.parse().expect("schema");
    let program = Program::compile(&schema).expect("compiles");
    let mut ours = Vec::new();
    program
        .encode(event, &mut ours)
        .unwrap_or_else(|_| panic!("{name} left to serde_avro_fast"));
    let fast = schema.freeze().expect("schema");
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&fast);
    let theirs = serde_avro_fast::to_datum_vec(event, &mut config).expect("encodes");
    assert_eq!(ours, theirs, "{name}");
    assert_eq!(
        &program.decode::<E>(&ours).expect("decodes"),
        event,
        "{name}"
    );
}

fn eur(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), "EUR")
}

#[test]
fn every_event_takes_the_compiled_encoder() {
    let booking = "7d4f3c5e-1f0b-4a4e-9c55-2b1f0c9a6d11".to_owned();
    let user = "5e0c9a3b-77d2-4f0e-8a41-c2d9f1b3e6a7".to_owned();
    check(&BookingRequested {
        booking_id: booking.clone(),
        user_id: user.clone(),
        flight: FlightSelection {
            flight_id: "LH1234-2026-12-01".into(),
            seats: 2,
        },
        hotel: HotelSelection {
            hotel_id: "lisbon-1".into(),
            check_in: 20_788,
            check_out: 20_791,
            rooms: 1,
        },
        extras: vec![Extra {
            code: "LUGGAGE".into(),
            quantity: 2,
            unit_price: eur(3_500),
        }],
        requested_at: 1_796_000_000_000,
    });
    check(&ReserveSeats {
        booking_id: booking.clone(),
        flight_id: "LH1234-2026-12-01".into(),
        seats: 2,
    });
    check(&SeatsReserved {
        booking_id: booking.clone(),
        flight_id: "LH1234-2026-12-01".into(),
        seats: 2,
        price: eur(41_998),
    });
    check(&ReserveRooms {
        booking_id: booking.clone(),
        hotel_id: "lisbon-1".into(),
        check_in: 20_788,
        check_out: 20_791,
        rooms: 1,
    });
    check(&RoomsReserved {
        booking_id: booking.clone(),
        hotel_id: "lisbon-1".into(),
        nights: 3,
        rooms: 1,
        price: eur(-1),
    });
    check(&ChargePayment {
        booking_id: booking.clone(),
        user_id: user.clone(),
        amount: eur(1_000_000_000),
    });
    check(&PaymentCharged {
        booking_id: booking.clone(),
        user_id: user.clone(),
        amount: eur(0),
    });
    check(&BookingConfirmed {
        booking_id: booking.clone(),
        user_id: user.clone(),
        total: eur(52_998),
        confirmed_at: 1_796_000_000_500,
    });
    check(&BookingCancelled {
        booking_id: booking.clone(),
        user_id: user.clone(),
        reason: CancellationReason::PaymentDeclined,
        detail: "insufficient funds".into(),
        cancelled_at: 1_796_000_000_500,
    });
    check(&BookingTimedOut {
        booking_id: booking.clone(),
        user_id: user.clone(),
        deadline: 1_796_000_030_000,
    });
    check(&FlightScheduled {
        flight_id: "LH1234-2026-12-01".into(),
        origin: "FRA".into(),
        destination: "LIS".into(),
        departs_at: 1_796_000_000_000,
        arrives_at: 1_796_010_800_000,
        seats: 180,
        seat_price: eur(20_999),
    });
    check(&ReleaseSeats {
        booking_id: booking.clone(),
        flight_id: "LH1234-2026-12-01".into(),
        reason: "payment declined".into(),
        cancellation: "PAYMENT_DECLINED".into(),
    });
    check(&SeatsRefused {
        booking_id: booking.clone(),
        flight_id: "LH1234-2026-12-01".into(),
        reason: "sold out".into(),
    });
    check(&SeatsReleased {
        booking_id: booking.clone(),
        flight_id: "LH1234-2026-12-01".into(),
        seats: 2,
        cancellation: "PAYMENT_DECLINED".into(),
    });
    check(&HotelListed {
        hotel_id: "lisbon-1".into(),
        name: "Casa Ünïcode".into(),
        city: "Lisbon".into(),
        rooms: 40,
        nightly_rate: eur(8_900),
    });
    check(&ReleaseRooms {
        booking_id: booking.clone(),
        hotel_id: "lisbon-1".into(),
        reason: "seats refused".into(),
        cancellation: "SEATS_UNAVAILABLE".into(),
    });
    check(&RoomsRefused {
        booking_id: booking.clone(),
        hotel_id: "lisbon-1".into(),
        reason: "full".into(),
    });
    check(&RoomsReleased {
        booking_id: booking.clone(),
        hotel_id: "lisbon-1".into(),
        rooms: 1,
        cancellation: "SEATS_UNAVAILABLE".into(),
    });
    check(&AccountCredited {
        user_id: user.clone(),
        amount: eur(500_000),
        note: "demo seed".into(),
    });
    check(&RefundPayment {
        booking_id: booking.clone(),
        user_id: user.clone(),
        reason: "rooms refused".into(),
        cancellation: String::new(),
    });
    check(&PaymentDeclined {
        booking_id: booking.clone(),
        user_id: user.clone(),
        amount: eur(999_999),
        reason: "insufficient funds".into(),
    });
    check(&PaymentRefunded {
        booking_id: booking,
        user_id: user.clone(),
        amount: eur(52_998),
        cancellation: String::new(),
    });
    check(&UserRegistered {
        user_id: user,
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
        registered_at: 1_796_000_000_000,
    });
}
