//! Confluent's Python client (`confluent-kafka` with its Avro extras) against this registry.
//!
//! Needs a Python with `confluent_kafka` installed: `TRIPSTREAM_PYTHON`, else `.venv/bin/python`
//! at the repository root (what `scripts/test` creates), else `python3`. When none has it the
//! test fails if `TRIPSTREAM_INTEROP=required` (as in `scripts/test` and CI) and otherwise says
//! it was skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use streams::kafka::broker::EmbeddedBroker;

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("TRIPSTREAM_PYTHON").map(PathBuf::from),
        Some(root.join(".venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|python| {
        Command::new(python)
            .args(["-c", "import confluent_kafka.schema_registry.avro"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_registers_fetches_tests_and_round_trips_records() {
    let Some(python) = python() else {
        let required = std::env::var("TRIPSTREAM_INTEROP").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "no Python with confluent-kafka found; run scripts/test, or pip install 'confluent-kafka[avro,schemaregistry]'"
        );
        eprintln!("SKIPPED: no Python with confluent-kafka; run scripts/test to include this test");
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
