//! The gateway's token checks when auth cannot be reached: it holds no key of its own, so a
//! token it cannot check answers 503 (retry later), never 401 (log in again) nor a pass.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::topic::{Target, TopicSet};
use streams::service::{Data, Settings};
use streams::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_gateway_cannot_fetch_keys_for_answers_503() {
    streams::telemetry::init("warn");
    let broker = EmbeddedBroker::start(1).expect("broker");
    let set = TopicSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topics"))
        .expect("topics/ is valid");
    streams::kafka::topic::apply(Target::Embedded(&broker), &set.all())
        .await
        .expect("topics");
    let registry = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await
    .expect("registry");
    // Nothing listens on port 1: auth, and so its keys, are unreachable.
    let gateway = gateway::start(gateway::Settings {
        service: Settings::new(
            broker.bootstrap_servers(),
            registry.url(),
            Data::Store(Store::temporary().expect("store")),
        ),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        auth_url: "http://127.0.0.1:1".into(),
    })
    .await
    .expect("gateway starts");
    let token = token::Issuer::random(Duration::from_secs(60))
        .expect("key")
        .issue("u1", token::now())
        .expect("token")
        .0;
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/bookings", gateway.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(answer.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{:?}",
        answer.headers()
    );
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(message, "the token cannot be checked now; retry later");
    for internal in ["127.0.0.1", "jwks", "error sending request"] {
        assert!(!message.contains(internal), "{body}");
    }
    gateway.stop().await.expect("gateway stops");
    registry.stop().await.expect("registry stops");
}
