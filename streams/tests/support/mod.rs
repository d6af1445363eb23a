//! What the runtime's integration tests share: a schema registry on an embedded broker.

pub mod marker;

use std::net::SocketAddr;

use streams::codec::Codec;
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::topic::TopicSpec;
use streams::registry::Client;

/// The spec of a test topic: its dead letters go to `<topic>.dlq`.
#[allow(dead_code)] // Not every test binary that includes this module reads topics.
pub fn spec(topic: &str) -> TopicSpec {
    let text = format!(
        "name = \"{topic}\"\ndescription = \"A test topic.\"\npartitions = 1\n\
         replication_factor = 1\nretention = \"1d\"\ncleanup_policy = \"delete\"\n\
         record_types = []\ndead_letter = \"{topic}.dlq\"\n"
    );
    toml::from_str(&text).expect("a valid spec")
}

/// Starts a registry on a free port over `broker` (creating its `_schemas` topic), and a codec
/// that uses it.
pub async fn registry(broker: &EmbeddedBroker) -> (registry::Running, Codec) {
    broker
        .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
        .expect("_schemas");
    let running = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await
    .expect("registry");
    let codec = Codec::new(Client::new(&running.url()).expect("client"));
    (running, codec)
}
