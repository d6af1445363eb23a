//! Encode and decode of a booking event: the codec's hot path against apache-avro's generic
//! `Value` path and plain `serde_avro_fast`, in the same run.
//!
//! Run with `cargo bench -p tripstream-streams --bench codec`; the last lines print the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use streams::codec::{self, Codec, Event};
use streams::kafka::broker::EmbeddedBroker;

const SCHEMA: &str = include_str!("../../schemas/tripstream.booking.BookingRequested.avsc");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FlightSelection {
    flight_id: String,
    seats: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HotelSelection {
    hotel_id: String,
    check_in: i32,
    check_out: i32,
    rooms: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    amount: apache_avro::Decimal,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extra {
    code: String,
    quantity: i32,
    unit_price: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BookingRequested {
    booking_id: String,
    user_id: String,
    flight: FlightSelection,
    hotel: HotelSelection,
    extras: Vec<Extra>,
    requested_at: i64,
}

/// The same record as apache-avro's serde bridge sees it (a separate type so that either side
/// may change its Rust mapping; the Avro bytes must stay the same, which the bench asserts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BookingRequestedGeneric {
    booking_id: String,
    user_id: String,
    flight: FlightSelection,
    hotel: HotelSelection,
    extras: Vec<Extra>,
    requested_at: i64,
}

impl Event for BookingRequested {
    const SCHEMA: &'static str = SCHEMA;

    fn key(&self) -> String {
        self.booking_id.clone()
    }
}

fn event() -> BookingRequested {
    BookingRequested {
        booking_id: "0b6f2f7e-4a57-4c1e-9d59-1f6e7b2a9c10".into(),
        user_id: "5e0c9a3b-77d2-4f0e-8a41-c2d9f1b3e6a7".into(),
        flight: FlightSelection {
            flight_id: "LH1234-2026-12-01".into(),
            seats: 2,
        },
        hotel: HotelSelection {
            hotel_id: "lisbon-alfama-7".into(),
            check_in: 20_423,
            check_out: 20_427,
            rooms: 1,
        },
        extras: Vec::new(),
        requested_at: 1_764_000_000_000,
    }
}

fn generic(event: &BookingRequested) -> BookingRequestedGeneric {
    BookingRequestedGeneric {
        booking_id: event.booking_id.clone(),
        user_id: event.user_id.clone(),
        flight: event.flight.clone(),
        hotel: event.hotel.clone(),
        extras: event.extras.clone(),
        requested_at: event.requested_at,
    }
}

fn bench(c: &mut Criterion) {
    let event = event();
    let generic_event = generic(&event);
    let fast: serde_avro_fast::Schema = SCHEMA.parse().expect("schema");
    let avro = apache_avro::Schema::parse_str(SCHEMA).expect("schema");
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&avro)
        .build()
        .expect("writer");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&avro)
        .build()
        .expect("reader");

    // The real codec, warmed up against a real registry on the embedded broker; after warm-up
    // it never calls the registry, so the timings are the codec's alone.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let broker = EmbeddedBroker::start(1).expect("broker");
    broker
        .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
        .expect("_schemas");
    let running = runtime
        .block_on(registry::start(registry::Settings::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            broker.bootstrap_servers(),
        )))
        .expect("registry");
    let codec = Codec::new(streams::registry::Client::new(&running.url()).expect("client"));
    let framed = runtime
        .block_on(codec.encode("bookings", &event))
        .expect("encodes");
    let id = codec::split(&framed).expect("framed").0;
    runtime
        .block_on(codec.decode::<BookingRequested>(&framed))
        .expect("decodes");
    let ours = |event: &BookingRequested| codec.encode_with_id(id, event).expect("encodes");
    // The processor's hot path: the writer id is known after warm-up, so no future is made.
    let decode_ours = |payload: &[u8]| {
        codec
            .decode_known::<BookingRequested>(payload)
            .expect("cached")
            .expect("decodes")
    };
    let datum = framed[codec::HEADER_LEN..].to_vec();
    let generic_datum = writer
        .write_value_to_vec(apache_avro::to_value(&generic_event).expect("value"))
        .expect("encodes");
    assert_eq!(
        datum, generic_datum,
        "both paths must write the same Avro bytes"
    );

    let mut group = c.benchmark_group("encode");
    group.bench_function("tripstream codec", |b| b.iter(|| ours(black_box(&event))));
    group.bench_function("serde_avro_fast", |b| {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&fast);
        b.iter(|| serde_avro_fast::to_datum_vec(black_box(&event), &mut config).expect("encodes"))
    });
    group.bench_function("apache-avro Value", |b| {
        b.iter(|| {
            let value = apache_avro::to_value(black_box(&generic_event)).expect("value");
            writer.write_value_to_vec(value).expect("encodes")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.bench_function("tripstream codec", |b| {
        b.iter(|| decode_ours(black_box(&framed)))
    });
    group.bench_function("serde_avro_fast", |b| {
        b.iter(|| {
            serde_avro_fast::from_datum_slice::<BookingRequested>(black_box(&datum), &fast)
                .expect("decodes")
        })
    });
    group.bench_function("apache-avro Value", |b| {
        b.iter(|| {
            let value = reader
                .read_value(&mut black_box(&datum[..]))
                .expect("value");
            apache_avro::from_value::<BookingRequestedGeneric>(&value).expect("decodes")
        })
    });
    group.finish();

    // Ratios measured here, in the same run, over the same event. Both sides of a ratio run in
    // alternating rounds of 200 ms and the best round of each counts: a shared 2-core machine
    // adds noise only upwards, and one slow second falling on one side used to swing the decode
    // ratio between 3.4x and 7x from run to run. The clock is read once per 256 calls, since on
    // this VM a read can cost as much as a decode.
    let round = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(200) {
            for _ in 0..256 {
                f();
            }
            n += 256;
        }
        start.elapsed() / n
    };
    let ratio = |ours: &mut dyn FnMut(), avro: &mut dyn FnMut()| {
        let (mut best_ours, mut best_avro) = (Duration::MAX, Duration::MAX);
        for _ in 0..8 {
            best_ours = best_ours.min(round(ours));
            best_avro = best_avro.min(round(avro));
        }
        best_avro.as_secs_f64() / best_ours.as_secs_f64()
    };
    let encode = ratio(&mut || drop(black_box(ours(&event))), &mut || {
        drop(black_box(writer.write_value_to_vec(
            apache_avro::to_value(&generic_event).expect("value"),
        )))
    });
    let decode = ratio(&mut || drop(black_box(decode_ours(&framed))), &mut || {
        let value = reader.read_value(&mut &datum[..]).expect("value");
        drop(black_box(
            apache_avro::from_value::<BookingRequestedGeneric>(&value),
        ));
    });
    drop(running);
    println!(
        "ratio: encode {encode:.1}x, decode {decode:.1}x faster than apache-avro's Value path"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
