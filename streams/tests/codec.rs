//! The codec against a real registry on the embedded broker: round trips, old versions read by
//! new code, malformed payloads, and no registry calls after warm-up.

mod support;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use streams::codec::{Codec, CodecError, Event, split};
use streams::kafka::broker::EmbeddedBroker;
use streams::registry::Client;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    amount: Decimal,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Reason {
    #[serde(rename = "SOLD_OUT")]
    SoldOut,
    #[serde(rename = "DECLINED")]
    Declined,
}

/// Version 1 of a trip event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TripV1 {
    trip_id: String,
    nights: i32,
    price: Money,
}

impl Event for TripV1 {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Trip","namespace":"test","fields":[
        {"name":"trip_id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"nights","type":"int"},
        {"name":"price","type":{"type":"record","name":"Money","fields":[
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
            {"name":"currency","type":"string"}]}}]}"#;

    fn key(&self) -> String {
        self.trip_id.clone()
    }
}

/// Version 2: `nights` widened to long, a city with a default, tags, an optional reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TripV2 {
    trip_id: String,
    nights: i64,
    price: Money,
    city: String,
    tags: Vec<String>,
    reason: Option<Reason>,
    booked_at: i64,
}

impl Event for TripV2 {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Trip","namespace":"test","fields":[
        {"name":"trip_id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"nights","type":"long"},
        {"name":"price","type":{"type":"record","name":"Money","fields":[
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
            {"name":"currency","type":"string"}]}},
        {"name":"city","type":"string","default":"Lisbon"},
        {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
        {"name":"reason","type":["null",{"type":"enum","name":"Reason","symbols":["SOLD_OUT","DECLINED"]}],"default":null},
        {"name":"booked_at","type":{"type":"long","logicalType":"timestamp-millis"},"default":0}]}"#;

    fn key(&self) -> String {
        self.trip_id.clone()
    }
}

struct Setup {
    _broker: EmbeddedBroker,
    registry: Option<registry::Running>,
    codec: Codec,
}

async fn setup() -> Setup {
    let broker = EmbeddedBroker::start(1).expect("broker");
    let (running, codec) = support::registry(&broker).await;
    Setup {
        _broker: broker,
        registry: Some(running),
        codec,
    }
}

fn trip_v1() -> TripV1 {
    TripV1 {
        trip_id: "7d4f3c5e-1f0b-4a4e-9c55-2b1f0c9a6d11".into(),
        nights: 3,
        price: Money {
            amount: Decimal::new(123_450, 2),
            currency: "EUR".into(),
        },
    }
}

#[tokio::test]
async fn an_event_round_trips_through_the_wire_format() {
    let s = setup().await;
    let event = TripV2 {
        trip_id: "7d4f3c5e-1f0b-4a4e-9c55-2b1f0c9a6d11".into(),
        nights: 4,
        price: Money {
            amount: Decimal::new(99_999, 2),
            currency: "USD".into(),
        },
        city: "Porto".into(),
        tags: vec!["family".into(), "sea".into()],
        reason: Some(Reason::Declined),
        booked_at: 1_764_000_000_000,
    };
    let payload = s.codec.encode("trips", &event).await.expect("encodes");
    let (id, _) = split(&payload).expect("framed");
    assert_eq!(id, s.codec.writer_id::<TripV2>("trips").await.expect("id"));
    let decoded: TripV2 = s.codec.decode(&payload).await.expect("decodes");
    assert_eq!(decoded, event);
    // Registered under the TopicRecordNameStrategy subject.
    let versions = s
        .codec
        .registry()
        .versions("trips-test.Trip")
        .await
        .expect("versions");
    assert_eq!(versions.len(), 1);
}

#[tokio::test]
async fn an_event_written_with_an_old_version_is_read_by_new_code_with_defaults() {
    let s = setup().await;
    let old = s
        .codec
        .encode("trips", &trip_v1())
        .await
        .expect("v1 encodes");
    // The new version registers as version 2 (it is backward compatible).
    let new_id = s
        .codec
        .writer_id::<TripV2>("trips")
        .await
        .expect("v2 registers");
    assert_ne!(split(&old).expect("framed").0, new_id);
    let read: TripV2 = s.codec.decode(&old).await.expect("v1 data decodes as v2");
    assert_eq!(
        read,
        TripV2 {
            trip_id: trip_v1().trip_id,
            nights: 3,
            price: trip_v1().price,
            city: "Lisbon".into(),
            tags: vec![],
            reason: None,
            booked_at: 0,
        }
    );
    // The other way round is not forward compatible (nights widened to long): old code gets
    // an error naming the reason, not a wrong value.
    let new = s
        .codec
        .encode(
            "trips",
            &TripV2 {
                city: "Faro".into(),
                ..read.clone()
            },
        )
        .await
        .expect("v2 encodes");
    let error = s
        .codec
        .decode::<TripV1>(&new)
        .await
        .expect_err("long does not narrow to int");
    assert!(
        error
            .to_string()
            .contains("the writer's long cannot be read as the reader's int"),
        "{error}"
    );
    assert!(!error.is_retriable());
}

#[tokio::test]
async fn malformed_payloads_are_errors_that_say_not_to_retry() {
    let s = setup().await;
    let good = s.codec.encode("trips", &trip_v1()).await.expect("encodes");
    let (id, _) = split(&good).expect("framed");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "fewer than the 5-byte"),
        (vec![0, 0, 0], "fewer than the 5-byte"),
        (b"{\"trip\": 1}".to_vec(), "not the Confluent magic byte"),
        (vec![0, 0, 0, 0, 99, 1, 2], "schema id 99 is not known"),
        (
            [&good[..5], &[0xff, 0xff, 0xff]].concat(),
            "does not decode",
        ),
        (good[..good.len() - 2].to_vec(), "does not decode"),
    ];
    for (payload, expected) in cases {
        let error = s
            .codec
            .decode::<TripV1>(&payload)
            .await
            .expect_err("malformed");
        assert!(error.to_string().contains(expected), "{payload:?}: {error}");
        assert!(!error.is_retriable(), "{error}");
    }
    // Every truncation of a good payload is an error, never a panic or a wrong value.
    for cut in 0..good.len() {
        assert!(
            s.codec.decode::<TripV1>(&good[..cut]).await.is_err(),
            "cut at {cut} of {id}"
        );
    }
}

#[tokio::test]
async fn after_warm_up_encoding_and_decoding_need_no_registry() {
    let mut s = setup().await;
    let payload = s.codec.encode("trips", &trip_v1()).await.expect("encodes");
    let _: TripV1 = s.codec.decode(&payload).await.expect("decodes");
    s.registry
        .take()
        .expect("running")
        .stop()
        .await
        .expect("stops");
    let again = s
        .codec
        .encode("trips", &trip_v1())
        .await
        .expect("cached id");
    assert_eq!(again, payload);
    let decoded: TripV1 = s.codec.decode(&again).await.expect("cached schema");
    assert_eq!(decoded, trip_v1());
    assert_eq!(
        s.codec.encode_known("trips", &trip_v1()).map(Result::ok),
        Some(Some(payload.clone()))
    );
    assert!(s.codec.encode_known("other", &trip_v1()).is_none());
    // The synchronous path answers for the known id only, and for a bad frame at once.
    assert_eq!(
        s.codec.decode_known::<TripV1>(&again).map(Result::ok),
        Some(Some(trip_v1()))
    );
    assert!(s.codec.decode_known::<TripV2>(&again).is_none());
    assert!(
        s.codec
            .decode_known::<TripV1>(&[0, 0, 0, 0, 42, 0])
            .is_none()
    );
    assert!(matches!(
        s.codec.decode_known::<TripV1>(&[1, 2]),
        Some(Err(CodecError::Short { len: 2 }))
    ));
    // A schema id never seen needs the registry, which is down: that one is worth a retry.
    let unknown = [0, 0, 0, 0, 42, 0];
    let error = s
        .codec
        .decode::<TripV1>(&unknown)
        .await
        .expect_err("registry down");
    assert!(
        matches!(error, CodecError::Registry(_)) && error.is_retriable(),
        "{error}"
    );
}

#[test]
fn codec_futures_can_be_spawned() {
    fn send<T: Send>(_: &T) {}
    let codec = Codec::new(Client::new("http://127.0.0.1:1").expect("client"));
    send(&codec.decode::<TripV1>(&[]));
    send(&codec.encode("trips", &trip_v1()));
}
