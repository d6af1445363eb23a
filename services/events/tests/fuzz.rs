//! Fuzz target (bolero): the Avro decoder of every event type against arbitrary bytes. The
//! compiled decoder the codec runs never panics, what it decodes encodes back to the same
//! event, and where `serde_avro_fast` decodes the same bytes too the two agree. Under `cargo
//! test` it runs for a second on random inputs and replays the inputs saved under
//! `tests/__fuzz__/`; `cargo bolero test --engine libfuzzer` runs it coverage-guided (README,
//! "Fuzzing").

use events::*;
use serde_avro_fast::schema::SchemaMut;
use streams::avro::program::Program;
use streams::codec::Event;

fn decode<E: Event + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let name = std::any::type_name::<E>();
    let schema: SchemaMut = E::SCHEMA.parse().expect("schema");
    let program = Program::compile(&schema).expect("compiles");
    let ours = program.decode::<E>(body);
    let fast = schema.freeze().expect("schema");
    let theirs = serde_avro_fast::from_datum_slice::<E>(body, &fast);
    if let Ok(event) = &ours {
        let mut again = Vec::new();
        program.encode(event, &mut again).expect("re-encodes");
        assert_eq!(
            &program.decode::<E>(&again).expect("decodes"),
            event,
            "{name}"
        );
        if let Ok(other) = &theirs {
            assert_eq!(event, other, "{name}: both decoders read {body:?}");
        }
    }
}

/// Calls `decode::<T>` for the `n`-th of the types listed (modulo their number).
macro_rules! decode_nth {
    ($n:expr, $body:expr, [$($event:ty),* $(,)?]) => {{
        let decoders: &[fn(&[u8])] = &[$(decode::<$event>),*];
        decoders[usize::from($n) % decoders.len()]($body)
    }};
}

#[test]
fn every_event_types_decoder_takes_any_bytes() {
    bolero::check!()
        .with_type::<(u8, Vec<u8>)>()
        .for_each(|(pick, body)| {
            decode_nth!(
                *pick,
                body,
                [
                    AccountCredited,
                    BookingCancelled,
                    BookingConfirmed,
                    BookingRequested,
                    BookingTimedOut,
                    ChargePayment,
                    FlightScheduled,
                    HotelListed,
                    PaymentCharged,
                    PaymentDeclined,
                    PaymentRefunded,
                    RefundPayment,
                    ReleaseRooms,
                    ReleaseSeats,
                    ReserveRooms,
                    ReserveSeats,
                    RoomsRefused,
                    RoomsReleased,
                    RoomsReserved,
                    SeatsRefused,
                    SeatsReleased,
                    SeatsReserved,
                    UserRegistered,
                ]
            )
        });
}
