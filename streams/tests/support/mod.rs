//! What the runtime's integration tests share: a schema registry on an embedded broker.

use std::net::SocketAddr;

use streams::broker::EmbeddedBroker;
use streams::codec::Codec;
use streams::registry::Client;

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
