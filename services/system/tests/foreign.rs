//! Producers other than tripstream's: a `FlightScheduled` written by Confluent's own Python
//! producer (`AvroSerializer`, topic-record subject names, none of tripstream's headers) is
//! applied by the flight service, and nothing is dead-lettered.
//!
//! Needs a Python with `confluent_kafka` (`services/registry/tests/support/python.rs` says
//! which and what happens without one).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use system::{Options, System};

#[path = "../../registry/tests/support/python.rs"]
mod python;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_from_confluents_python_producer_is_applied_like_our_own() {
    let Some(python) = python::with_confluent_kafka() else {
        return;
    };
    streams::telemetry::init("warn");
    let system = System::start(Options::default()).await.expect("system");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(python)
        .arg(root.join("services/system/tests/foreign/confluent_producer.py"))
        .arg(system.registry_url())
        .arg(system.broker.bootstrap_servers())
        .arg(root.join("schemas/tripstream.flight.FlightScheduled.avsc"))
        .arg("PY1")
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "the Confluent producer failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The flight service holds its inventory, from the record's schema id alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inventory = flight::inventory(&system.stores.flight, "PY1").expect("readable");
        if inventory.is_some() {
            assert_eq!(inventory, Some((7, 0)), "7 seats, none held");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flight service never applied the record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", system.broker.bootstrap_servers())
        .create()
        .expect("consumer");
    let partitions = consumer
        .fetch_metadata(Some("flights.dlq"), Duration::from_secs(5))
        .expect("metadata")
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    assert!(partitions > 0, "flights.dlq exists");
    for partition in 0..partitions {
        let partition = i32::try_from(partition).expect("few partitions");
        let (low, high) = consumer
            .fetch_watermarks("flights.dlq", partition, Duration::from_secs(5))
            .expect("watermarks");
        assert_eq!(
            high - low,
            0,
            "nothing dead-lettered on partition {partition}"
        );
    }
    system.stop().await.expect("stopped");
}
