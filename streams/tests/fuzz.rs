//! Fuzz targets (bolero): the wire-format split, the schema parser and the compatibility
//! checker. Under `cargo test` each runs for a second on random inputs and replays the inputs
//! saved under `tests/__fuzz__/`; `cargo bolero test --engine libfuzzer` runs one
//! coverage-guided (README, "Fuzzing").

use streams::avro::compat::{self, Level};
use streams::avro::schema::Schema;
use streams::codec;

/// The contract's schemas: starting points the fuzzer edits.
const SCHEMAS: [&str; 4] = [
    include_str!("../../schemas/tripstream.booking.BookingRequested.avsc"),
    include_str!("../../schemas/tripstream.flight.FlightScheduled.avsc"),
    include_str!("../../schemas/tripstream.payment.PaymentDeclined.avsc"),
    include_str!("../../schemas/tripstream.hotel.RoomsRefused.avsc"),
];

/// `SCHEMAS[pick]` with each `(position, byte)` written over it: mostly invalid JSON or Avro,
/// sometimes a schema that differs from the original in one place.
fn edited(pick: u8, edits: &[(u16, u8)]) -> String {
    let mut text = SCHEMAS[usize::from(pick) % SCHEMAS.len()]
        .as_bytes()
        .to_vec();
    for (position, byte) in edits {
        let at = usize::from(*position) % text.len();
        text[at] = *byte;
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// `SCHEMAS` parsed, once per process: parsing is most of an edited-schema run's work.
fn originals() -> &'static [Schema] {
    static PARSED: std::sync::OnceLock<Vec<Schema>> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|text| Schema::parse(text).expect("the contract parses"))
            .collect()
    })
}

#[test]
fn the_wire_format_split_takes_any_bytes() {
    bolero::check!().for_each(|payload: &[u8]| {
        if let Ok((id, body)) = codec::split(payload) {
            let mut framed = Vec::new();
            codec::write_header(&mut framed, id);
            framed.extend_from_slice(body);
            assert_eq!(framed, payload, "split and write_header are inverses");
        }
    });
}

#[test]
fn the_schema_parser_takes_any_text() {
    bolero::check!().for_each(|text: &[u8]| {
        if let Ok(schema) = Schema::parse(&String::from_utf8_lossy(text)) {
            let again = Schema::parse(schema.canonical()).expect("a canonical text parses");
            assert_eq!(again.canonical(), schema.canonical());
        }
    });
}

#[test]
fn edited_schemas_parse_or_fail_and_check_against_the_original_at_every_level() {
    bolero::check!()
        .with_type::<(u8, Vec<(u16, u8)>)>()
        .for_each(|(pick, edits)| {
            let original = &originals()[usize::from(*pick) % SCHEMAS.len()];
            let Ok(schema) = Schema::parse(&edited(*pick, edits)) else {
                return;
            };
            for level in Level::ALL {
                assert!(
                    compat::check(level, &schema, &[&schema]).is_empty(),
                    "a schema is {level:?}-compatible with itself"
                );
                let _ = compat::check(level, &schema, &[original, &schema]);
                let _ = compat::check(level, original, &[&schema]);
            }
        });
}
