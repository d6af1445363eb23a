//! Confluent's Python client (`confluent-kafka` with its Avro extras) against this registry.
//!
//! Needs a Python with `confluent_kafka` installed (`support/python.rs` says which and what
//! happens without one).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use streams::kafka::broker::EmbeddedBroker;

#[path = "support/python.rs"]
mod python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_registers_fetches_tests_and_round_trips_records() {
    let Some(python) = python::with_confluent_kafka() else {
        return;
    };
    let broker = EmbeddedBroker::start(1).expect("embedded broker");
    broker
        .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
        .expect("_schemas");
    broker.create_topic("trips", 3, 1).expect("trips");
    let running = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await
    .expect("registry starts");
    let url = running.url();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/confluent_client.py");
    let bootstrap = broker.bootstrap_servers().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([url.as_str(), bootstrap.as_str(), "trips"])
            .output()
    })
    .await
    .expect("joined")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Confluent client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");

    // What the client did is visible through the API: the soft-deleted subject's versions.
    let versions: Value = reqwest::get(format!(
        "{}/subjects/trips-value/versions?deleted=true",
        running.url()
    ))
    .await
    .expect("GET")
    .json()
    .await
    .expect("json");
    assert_eq!(versions, serde_json::json!([1, 2]));
    running.stop().await.expect("clean stop");
}
