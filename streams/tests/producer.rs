//! The typed producer on the embedded broker: every send lands, also when librdkafka's queue
//! is full and when the schema is not registered yet, with the metadata in its headers.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};
use streams::codec::Event;
use streams::kafka::OutgoingRecord;
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::headers::{Metadata, header};
use streams::kafka::producer::Producer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    id: String,
    n: i32,
}

impl Event for Ping {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Ping","namespace":"test","fields":[
        {"name":"id","type":"string"},{"name":"n","type":"int"}]}"#;

    fn key(&self) -> String {
        self.id.clone()
    }
}

/// More concurrent sends than the queue holds: the ones refused for room wait and land.
#[tokio::test]
async fn sends_beyond_a_full_queue_all_land_with_their_headers() {
    let broker = EmbeddedBroker::start(1).expect("broker");
    broker.create_topic("pings", 2, 1).expect("topic");
    let (registry, codec) = support::registry(&broker).await;
    // Room for 10 records; the linger keeps them queued while the rest arrive.
    let producer = Producer::new(
        broker.bootstrap_servers(),
        codec.clone(),
        &[
            ("queue.buffering.max.messages".into(), "10".into()),
            ("linger.ms".into(), "20".into()),
        ],
    )
    .expect("producer");

    let events: Vec<_> = (0..60)
        .map(|n| {
            let ping = Ping {
                id: format!("p{}", n % 7),
                n,
            };
            let metadata = Metadata::new(ping.id.clone());
            (ping, metadata)
        })
        .collect();
    // The first send registers the schema; the rest of the typed sends race for the queue.
    let sends = events
        .iter()
        .map(|(ping, metadata)| producer.send("pings", ping, metadata));
    let typed = futures::future::join_all(sends).await;
    let entries: Vec<_> = (0..40u8)
        .map(|n| OutgoingRecord {
            topic: "pings".into(),
            key: vec![n],
            partition: None,
            payload: Some(vec![0, 0, 0, 0, 1, n]),
            headers: vec![("origin".into(), b"outbox".to_vec())],
        })
        .collect();
    let framed =
        futures::future::join_all(entries.iter().map(|entry| producer.send_record(entry))).await;

    let mut positions = HashSet::new();
    for delivery in typed.into_iter().chain(framed) {
        let delivery = delivery.expect("every send lands");
        assert!(
            positions.insert((delivery.partition, delivery.offset)),
            "two sends reported the same position {delivery:?}"
        );
    }
    assert_eq!(positions.len(), 100);

    // On the broker: 100 records; typed ones decode and carry their metadata.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "producer-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["pings"]).expect("subscribe");
    let (mut typed_seen, mut framed_seen) = (HashSet::new(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while typed_seen.len() + framed_seen < 100 && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("a record");
        let headers = message.headers().expect("headers");
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(<[u8]>::to_vec)
        };
        if get("origin").is_some() {
            framed_seen += 1;
            continue;
        }
        let ping: Ping = codec
            .decode(message.payload().expect("payload"))
            .await
            .expect("decodes");
        let (_, metadata) = &events[ping.n as usize];
        assert_eq!(message.key(), Some(ping.id.as_bytes()));
        assert_eq!(
            get(header::EVENT_ID),
            Some(metadata.event_id.clone().into())
        );
        assert_eq!(get(header::EVENT_TYPE), Some(b"test.Ping".to_vec()));
        typed_seen.insert(ping.n);
    }
    assert_eq!((typed_seen.len(), framed_seen), (60, 40));
    registry.stop().await.expect("registry stops");
}
