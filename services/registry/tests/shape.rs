//! Errors axum answers itself (a path segment that is not UTF-8, a body over its limit) come
//! in Confluent's error shape too, like every other error of the registry.

use std::net::SocketAddr;

use serde_json::Value;
use streams::kafka::broker::EmbeddedBroker;

#[tokio::test]
async fn a_non_utf8_path_segment_and_an_oversized_body_answer_in_confluents_shape() {
    let broker = EmbeddedBroker::start(1).expect("embedded broker");
    broker
        .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
        .expect("_schemas topic");
    let registry = registry::start(registry::Settings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        broker.bootstrap_servers(),
    ))
    .await
    .expect("registry starts");
    let http = reqwest::Client::new();
    let huge = format!("{{\"schema\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    for (request, status) in [
        (
            http.get(format!("{}/subjects/%FF/versions", registry.url())),
            400,
        ),
        (
            // A schema body that large is the registry's own 42209; a config body is axum's 413.
            http.put(format!("{}/config", registry.url()))
                .header("content-type", "application/json")
                .body(huge),
            413,
        ),
    ] {
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(streams::registry::CONTENT_TYPE)
        );
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error_code"], status, "{body}");
        assert!(body["message"].is_string(), "{body}");
    }
    registry.stop().await.expect("stops");
}
