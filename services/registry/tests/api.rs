//! The registry's REST API over HTTP, on an embedded broker: every endpoint and error code.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use registry::{Running, Settings};
use serde_json::{Value, json};
use streams::kafka::broker::EmbeddedBroker;

struct Harness {
    broker: EmbeddedBroker,
    registry: Option<Running>,
    http: reqwest::Client,
}

const V1: &str =
    r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"id","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"age","type":"int","default":0}]}"#;
const V3_BREAKING: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Harness {
    async fn start() -> Harness {
        let broker = EmbeddedBroker::start(1).expect("embedded broker");
        broker
            .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
            .expect("_schemas topic");
        let registry = registry::start(Settings::new(any_port(), broker.bootstrap_servers()))
            .await
            .expect("registry starts");
        Harness {
            broker,
            registry: Some(registry),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self) -> String {
        self.registry.as_ref().expect("running").url()
    }

    async fn restart(&mut self) {
        if let Some(running) = self.registry.take() {
            running.stop().await.expect("clean stop");
        }
        let settings = Settings::new(any_port(), self.broker.bootstrap_servers());
        self.registry = Some(registry::start(settings).await.expect("registry restarts"));
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.http, &self.url(), method, path, body).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/subjects/{subject}/versions"),
            Some(json!({ "schema": schema })),
        )
        .await
    }
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert_eq!(
        content_type, "application/vnd.schemaregistry.v1+json",
        "{path}"
    );
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn code(answer: &(u16, Value)) -> (u16, i64) {
    (
        answer.0,
        answer.1["error_code"].as_i64().unwrap_or_default(),
    )
}

#[tokio::test]
async fn ids_are_global_shared_across_subjects_and_stable_when_registering_again() {
    let h = Harness::start().await;
    assert_eq!(h.register("a-value", V1).await, (200, json!({"id": 1})));
    assert_eq!(h.register("b-value", V1).await, (200, json!({"id": 1})));
    assert_eq!(h.register("a-value", V1).await, (200, json!({"id": 1})));
    // White space is not part of a schema's identity.
    let spaced = V1.replace(',', ", ");
    assert_eq!(
        h.register("a-value", &spaced).await,
        (200, json!({"id": 1}))
    );
    assert_eq!(h.register("a-value", V2).await, (200, json!({"id": 2})));
    assert_eq!(
        h.call("GET", "/subjects", None).await,
        (200, json!(["a-value", "b-value"]))
    );
    assert_eq!(
        h.call("GET", "/subjects/a-value/versions", None).await,
        (200, json!([1, 2]))
    );
}

#[tokio::test]
async fn versions_are_served_by_number_and_latest_with_the_right_errors() {
    let h = Harness::start().await;
    h.register("s", V1).await;
    h.register("s", V2).await;
    let (status, body) = h.call("GET", "/subjects/s/versions/1", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["subject"].as_str(),
            body["version"].as_i64(),
            body["id"].as_i64()
        ),
        (Some("s"), Some(1), Some(1))
    );
    assert_eq!(body["schema"].as_str(), Some(V1));
    let (_, latest) = h.call("GET", "/subjects/s/versions/latest", None).await;
    assert_eq!(latest["version"], 2);
    let (_, minus_one) = h.call("GET", "/subjects/s/versions/-1", None).await;
    assert_eq!(minus_one["version"], 2);
    let (status, raw) = h.call("GET", "/subjects/s/versions/2/schema", None).await;
    assert_eq!(
        (status, raw),
        (200, serde_json::from_str::<Value>(V2).expect("json"))
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/s/versions/3", None).await),
        (404, 40402)
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/s/versions/0", None).await),
        (422, 42202)
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/s/versions/two", None).await),
        (422, 42202)
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/nobody/versions", None).await),
        (404, 40401)
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/nobody/versions/1", None).await),
        (404, 40401)
    );
    assert_eq!(
        h.call("GET", "/subjects/s/versions/1/referencedby", None)
            .await,
        (200, json!([]))
    );
}

#[tokio::test]
async fn a_schema_is_looked_up_under_its_subject() {
    let h = Harness::start().await;
    h.register("s", V1).await;
    let (status, body) = h
        .call("POST", "/subjects/s", Some(json!({ "schema": V1 })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["version"].as_i64(), body["id"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        code(
            &h.call("POST", "/subjects/s", Some(json!({ "schema": V2 })))
                .await
        ),
        (404, 40403)
    );
    assert_eq!(
        code(
            &h.call("POST", "/subjects/other", Some(json!({ "schema": V1 })))
                .await
        ),
        (404, 40401)
    );
}

#[tokio::test]
async fn schemas_are_served_by_id_with_their_subjects_and_versions() {
    let h = Harness::start().await;
    h.register("a", V1).await;
    h.register("b", V1).await;
    assert_eq!(
        h.call("GET", "/schemas/ids/1", None).await,
        (200, json!({ "schema": V1 }))
    );
    assert_eq!(
        h.call("GET", "/schemas/ids/1/schema", None).await,
        (200, serde_json::from_str::<Value>(V1).expect("json"))
    );
    assert_eq!(
        h.call("GET", "/schemas/ids/1/subjects", None).await,
        (200, json!(["a", "b"]))
    );
    assert_eq!(
        h.call("GET", "/schemas/ids/1/versions", None).await,
        (
            200,
            json!([{"subject": "a", "version": 1}, {"subject": "b", "version": 1}])
        )
    );
    assert_eq!(
        code(&h.call("GET", "/schemas/ids/99", None).await),
        (404, 40403)
    );
    assert_eq!(
        code(&h.call("GET", "/schemas/ids/abc", None).await),
        (404, 40403)
    );
    assert_eq!(
        h.call("GET", "/schemas/types", None).await,
        (200, json!(["AVRO"]))
    );
}

#[tokio::test]
async fn bad_registrations_get_confluent_error_codes_with_reasons() {
    let h = Harness::start().await;
    h.register("s", V1).await;
    let incompatible = h.register("s", V3_BREAKING).await;
    assert_eq!(code(&incompatible), (409, 409));
    let message = incompatible.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("TYPE_MISMATCH") && message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{message}"
    );

    let invalid = h
        .register(
            "s",
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Nope"}]}"#,
        )
        .await;
    assert_eq!(code(&invalid), (422, 42201));
    let message = invalid.1["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/fields/0/type") && message.contains("unknown type name 'Nope'"),
        "{message}"
    );

    assert_eq!(code(&h.register("s", "not json").await), (422, 42201));
    assert_eq!(
        code(
            &h.call("POST", "/subjects/s/versions", Some(json!({})))
                .await
        ),
        (422, 42201)
    );
    assert_eq!(
        code(
            &h.call(
                "POST",
                "/subjects/s/versions",
                Some(json!({"schema": V2, "schemaType": "PROTOBUF"}))
            )
            .await
        ),
        (422, 42201)
    );
    assert_eq!(
        code(
            &h.call("POST", "/subjects/s/versions", Some(json!("just a string")))
                .await
        ),
        (400, 400)
    );
    // Nothing refused was stored.
    assert_eq!(
        h.call("GET", "/subjects/s/versions", None).await,
        (200, json!([1]))
    );
}

#[tokio::test]
async fn compatibility_is_tested_against_one_version_or_all_with_reasons_when_verbose() {
    let h = Harness::start().await;
    h.register("s", V1).await;
    h.register("s", V2).await;
    let path = "/compatibility/subjects/s/versions/latest";
    assert_eq!(
        h.call("POST", path, Some(json!({ "schema": V2 }))).await,
        (200, json!({"is_compatible": true}))
    );
    assert_eq!(
        h.call("POST", path, Some(json!({ "schema": V3_BREAKING })))
            .await,
        (200, json!({"is_compatible": false}))
    );
    let (_, verbose) = h
        .call(
            "POST",
            &format!("{path}?verbose=true"),
            Some(json!({ "schema": V3_BREAKING })),
        )
        .await;
    let messages = verbose["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0]
            .as_str()
            .unwrap_or_default()
            .contains("/fields/0/type")
    );
    let (_, all) = h
        .call(
            "POST",
            "/compatibility/subjects/s/versions?verbose=true",
            Some(json!({ "schema": V3_BREAKING })),
        )
        .await;
    assert_eq!(all["is_compatible"], false);
    assert_eq!(
        h.call(
            "POST",
            "/compatibility/subjects/new/versions",
            Some(json!({ "schema": V1 }))
        )
        .await,
        (200, json!({"is_compatible": true}))
    );
    assert_eq!(
        code(
            &h.call(
                "POST",
                "/compatibility/subjects/new/versions/latest",
                Some(json!({ "schema": V1 }))
            )
            .await
        ),
        (404, 40401)
    );
    assert_eq!(
        code(
            &h.call(
                "POST",
                "/compatibility/subjects/s/versions/7",
                Some(json!({ "schema": V1 }))
            )
            .await
        ),
        (404, 40402)
    );
}

#[tokio::test]
async fn config_is_global_or_per_subject_and_governs_registration() {
    let h = Harness::start().await;
    assert_eq!(
        h.call("GET", "/config", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        h.call("PUT", "/config", Some(json!({"compatibility": "FULL"})))
            .await,
        (200, json!({"compatibility": "FULL"}))
    );
    assert_eq!(
        h.call("GET", "/config", None).await,
        (200, json!({"compatibilityLevel": "FULL"}))
    );
    assert_eq!(
        code(
            &h.call("PUT", "/config", Some(json!({"compatibility": "SIDEWAYS"})))
                .await
        ),
        (422, 42203)
    );
    assert_eq!(
        h.call("DELETE", "/config", None).await,
        (200, json!({"compatibilityLevel": "FULL"}))
    );
    assert_eq!(
        h.call("GET", "/config", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );

    assert_eq!(code(&h.call("GET", "/config/s", None).await), (404, 40408));
    assert_eq!(
        h.call("GET", "/config/s?defaultToGlobal=true", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    h.call("PUT", "/config/s", Some(json!({"compatibility": "NONE"})))
        .await;
    assert_eq!(
        h.call("GET", "/config/s", None).await,
        (200, json!({"compatibilityLevel": "NONE"}))
    );
    // At NONE the breaking change goes through.
    h.register("s", V1).await;
    assert_eq!(h.register("s", V3_BREAKING).await.0, 200);
    assert_eq!(
        h.call("DELETE", "/config/s", None).await,
        (200, json!({"compatibilityLevel": "NONE"}))
    );
    assert_eq!(
        code(&h.call("DELETE", "/config/nobody", None).await),
        (404, 40401)
    );
}

#[tokio::test]
async fn read_only_mode_refuses_writes() {
    let h = Harness::start().await;
    assert_eq!(
        h.call("GET", "/mode", None).await,
        (200, json!({"mode": "READWRITE"}))
    );
    assert_eq!(
        h.call("PUT", "/mode", Some(json!({"mode": "READONLY"})))
            .await,
        (200, json!({"mode": "READONLY"}))
    );
    assert_eq!(code(&h.register("s", V1).await), (422, 42205));
    assert_eq!(
        code(
            &h.call("PUT", "/mode", Some(json!({"mode": "SOMETIMES"})))
                .await
        ),
        (422, 42204)
    );
    h.call("PUT", "/mode", Some(json!({"mode": "READWRITE"})))
        .await;
    assert_eq!(h.register("s", V1).await.0, 200);
}

#[tokio::test]
async fn deletes_are_soft_first_then_permanent() {
    let h = Harness::start().await;
    h.register("s", V1).await;
    h.register("s", V2).await;
    assert_eq!(
        code(&h.call("DELETE", "/subjects/s?permanent=true", None).await),
        (404, 40405)
    );
    assert_eq!(
        h.call("DELETE", "/subjects/s/versions/2", None).await,
        (200, json!(2))
    );
    assert_eq!(
        code(&h.call("DELETE", "/subjects/s/versions/2", None).await),
        (404, 40406)
    );
    assert_eq!(
        code(
            &h.call("DELETE", "/subjects/s/versions/1?permanent=true", None)
                .await
        ),
        (404, 40407)
    );
    assert_eq!(
        h.call("GET", "/subjects/s/versions", None).await,
        (200, json!([1]))
    );
    assert_eq!(
        h.call("GET", "/subjects/s/versions?deleted=true", None)
            .await,
        (200, json!([1, 2]))
    );
    assert_eq!(
        code(&h.call("GET", "/subjects/s/versions/2", None).await),
        (404, 40402)
    );
    assert_eq!(
        h.call("GET", "/subjects/s/versions/2?deleted=true", None)
            .await
            .0,
        200
    );
    assert_eq!(
        h.call("DELETE", "/subjects/s/versions/2?permanent=true", None)
            .await,
        (200, json!(2))
    );

    assert_eq!(
        h.call("DELETE", "/subjects/s", None).await,
        (200, json!([1]))
    );
    assert_eq!(
        code(&h.call("DELETE", "/subjects/s", None).await),
        (404, 40404)
    );
    assert_eq!(h.call("GET", "/subjects", None).await, (200, json!([])));
    assert_eq!(
        h.call("GET", "/subjects?deleted=true", None).await,
        (200, json!(["s"]))
    );
    assert_eq!(
        h.call("DELETE", "/subjects/s?permanent=true", None).await,
        (200, json!([1]))
    );
    assert_eq!(
        h.call("GET", "/subjects?deleted=true", None).await,
        (200, json!([]))
    );
    assert_eq!(
        code(&h.call("GET", "/schemas/ids/1", None).await),
        (404, 40403)
    );
    assert_eq!(
        code(&h.call("DELETE", "/subjects/s", None).await),
        (404, 40401)
    );
    // A schema registered again after a hard delete keeps its id.
    assert_eq!(h.register("s", V1).await, (200, json!({"id": 1})));
}

#[tokio::test]
async fn a_restarted_registry_serves_the_same_ids_from_the_log() {
    let mut h = Harness::start().await;
    h.register("a", V1).await;
    h.register("a", V2).await;
    h.register("b", V2).await;
    h.call("PUT", "/config/b", Some(json!({"compatibility": "FULL"})))
        .await;
    h.call("DELETE", "/subjects/a/versions/1", None).await;
    let before = (
        h.call("GET", "/subjects?deleted=true", None).await,
        h.call("GET", "/subjects/a/versions?deleted=true", None)
            .await,
        h.call("GET", "/schemas/ids/2", None).await,
        h.call("GET", "/config/b", None).await,
    );
    h.restart().await;
    let after = (
        h.call("GET", "/subjects?deleted=true", None).await,
        h.call("GET", "/subjects/a/versions?deleted=true", None)
            .await,
        h.call("GET", "/schemas/ids/2", None).await,
        h.call("GET", "/config/b", None).await,
    );
    assert_eq!(before, after);
    // A new schema continues the id sequence instead of reusing one.
    assert_eq!(h.register("c", V3_BREAKING).await, (200, json!({"id": 3})));
}

#[tokio::test]
async fn two_instances_on_one_log_agree_on_every_id() {
    let h = Harness::start().await;
    let second = registry::start(Settings::new(any_port(), h.broker.bootstrap_servers()))
        .await
        .expect("second instance");
    let second_url = second.url();
    // Unrelated record types in one subject: only level NONE lets them follow each other.
    h.call("PUT", "/config", Some(json!({"compatibility": "NONE"})))
        .await;
    let schemas: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"type":"record","name":"R{i}","fields":[]}}"#))
        .collect();
    // Both instances register the same schemas at the same time under different subjects.
    let first_ids = futures::future::join_all(schemas.iter().map(|s| h.register("one", s)));
    let second_ids = futures::future::join_all(schemas.iter().map(|s| {
        call(
            &h.http,
            &second_url,
            "POST",
            "/subjects/two/versions",
            Some(json!({ "schema": s })),
        )
    }));
    let (first_ids, second_ids) = tokio::join!(first_ids, second_ids);
    assert_eq!(
        first_ids, second_ids,
        "the same schema must get the same id on both instances"
    );
    let mut ids: Vec<i64> = first_ids
        .iter()
        .map(|(_, b)| b["id"].as_i64().unwrap_or_default())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<i64>>());
    // Each instance sees the other's writes once it has read them from the log.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = call(&h.http, &second_url, "GET", "/subjects", None).await.1;
        if seen == json!(["one", "two"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, json!(["one", "two"]));
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_foreign_record_in_the_log_is_skipped_and_the_registry_goes_on() {
    let mut h = Harness::start().await;
    h.register("s", V1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", h.broker.bootstrap_servers())
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(registry::SCHEMAS_TOPIC)
                .key("junk")
                .payload(&[0xff, 0x00, 0x13][..]),
            Duration::from_secs(5),
        )
        .await
        .expect("garbage written");
    assert_eq!(h.register("s", V2).await, (200, json!({"id": 2})));
    h.restart().await;
    assert_eq!(
        h.call("GET", "/subjects/s/versions", None).await,
        (200, json!([1, 2]))
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_in_the_error_shape() {
    let h = Harness::start().await;
    assert_eq!(code(&h.call("GET", "/nowhere", None).await), (404, 404));
    assert_eq!(code(&h.call("PATCH", "/subjects", None).await), (405, 405));
    assert_eq!(h.call("GET", "/", None).await, (200, json!({})));
}

#[tokio::test]
async fn read_only_mode_refuses_config_changes() {
    let h = Harness::start().await;
    h.call("PUT", "/config/s", Some(json!({"compatibility": "FULL"})))
        .await;
    h.call("PUT", "/mode", Some(json!({"mode": "READONLY"})))
        .await;
    let none = Some(json!({"compatibility": "NONE"}));
    assert_eq!(
        code(&h.call("PUT", "/config", none.clone()).await),
        (422, 42205)
    );
    assert_eq!(
        code(&h.call("PUT", "/config/s", none.clone()).await),
        (422, 42205)
    );
    assert_eq!(code(&h.call("DELETE", "/config", None).await), (422, 42205));
    assert_eq!(
        code(&h.call("DELETE", "/config/s", None).await),
        (422, 42205)
    );
    // Nothing changed, and the mode itself may still be changed back.
    assert_eq!(
        h.call("GET", "/config", None).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        h.call("GET", "/config/s", None).await,
        (200, json!({"compatibilityLevel": "FULL"}))
    );
    h.call("PUT", "/mode", Some(json!({"mode": "READWRITE"})))
        .await;
    assert_eq!(h.call("PUT", "/config", none).await.0, 200);
}

/// A record of `fields` int fields named `f0`, `f1`, …: about 31 bytes of canonical text each.
fn wide_record(fields: usize) -> String {
    let fields: Vec<Value> = (0..fields)
        .map(|i| json!({"name": format!("f{i}"), "type": "int"}))
        .collect();
    json!({"type": "record", "name": "User", "namespace": "t", "fields": fields}).to_string()
}

#[tokio::test]
async fn a_schema_too_large_for_the_log_is_refused_with_42209_and_a_larger_body_unread() {
    let h = Harness::start().await;
    h.call("PUT", "/config", Some(json!({"compatibility": "NONE"})))
        .await;
    // Valid, and under the body limit, but too large for one record of `_schemas`.
    let large = wide_record(36_000);
    assert!(json!({ "schema": large }).to_string().len() < registry::api::MAX_BODY_BYTES);
    assert!(large.len() > registry::log::MAX_RECORD_BYTES);
    let (status, body) = h.register("s", &large).await;
    assert_eq!((status, body["error_code"].as_i64()), (422, Some(42209)));
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most")),
        "{body}"
    );
    // A body over the limit is refused before it is parsed.
    let huge = wide_record(80_000);
    assert!(huge.len() > registry::api::MAX_BODY_BYTES);
    for path in [
        "/subjects/s/versions",
        "/subjects/s",
        "/compatibility/subjects/s/versions",
    ] {
        let answer = h.call("POST", path, Some(json!({ "schema": huge }))).await;
        assert_eq!(code(&answer), (422, 42209), "{path}");
    }
    // The registry goes on, and a schema that fits is registered.
    let fits = wide_record(5_000);
    assert_eq!(h.register("s", &fits).await, (200, json!({"id": 1})));
    assert_eq!(h.call("GET", "/subjects", None).await, (200, json!(["s"])));
}

/// Sends one HTTP/1.1 request from a thread of its own over a plain socket, and returns once
/// the whole request has been handed to the connection, with the response's status to come.
async fn send_raw(addr: SocketAddr, path: &str, body: &str) -> tokio::sync::oneshot::Receiver<u16> {
    use std::io::{Read, Write};
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (sent, is_sent) = tokio::sync::oneshot::channel();
    let (status, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connects");
        stream.write_all(request.as_bytes()).expect("request sent");
        stream.flush().expect("flushed");
        let _ = sent.send(());
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let _ = status.send(code);
    });
    is_sent.await.expect("the request was sent");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_answered_while_large_schemas_are_being_parsed_and_checked() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let h = Harness::start().await;
    assert_eq!(h.register("small", V1).await, (200, json!({"id": 1})));
    let addr = h.registry.as_ref().expect("running").local_addr();
    // Each takes the registry about a second of CPU to parse and check (in a debug build), and
    // there are more of them than the runtime has workers: were they parsed on the workers,
    // nothing else could be answered until some of them were done.
    let body = json!({ "schema": wide_record(40_000) }).to_string();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut large = Vec::new();
    for _ in 0..6 {
        let answer = send_raw(addr, "/compatibility/subjects/small/versions", &body).await;
        let finished = finished.clone();
        large.push(tokio::spawn(async move {
            let status = answer.await.expect("answered");
            finished.fetch_add(1, Ordering::SeqCst);
            status
        }));
    }
    // Every large request is now with the registry.
    let read = h.call("GET", "/schemas/ids/1", None).await;
    let done_before_the_read = finished.load(Ordering::SeqCst);
    assert_eq!(read, (200, json!({"schema": V1})));
    assert_eq!(
        done_before_the_read, 0,
        "the read waited for large schemas to be parsed"
    );
    for request in large {
        assert_eq!(request.await.expect("finished"), 200);
    }
}

#[tokio::test]
async fn schemas_the_parser_refuses_are_42201_with_the_location() {
    let h = Harness::start().await;
    for (schema, location) in [
        (
            r#"{"type":"record","name":"R","fields":[{"name":"self","type":"R"}]}"#,
            "/fields/0/type",
        ),
        (r#"{"type":"enum","name":"E","symbols":[]}"#, "/symbols"),
        (
            r#"{"type":"bytes","logicalType":"decimal","precision":0}"#,
            "/precision",
        ),
        (
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","order":"up"}]}"#,
            "/fields/0/order",
        ),
    ] {
        let answer = h.register("s", schema).await;
        assert_eq!(code(&answer), (422, 42201), "{schema}");
        let message = answer.1["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("at {location}:")), "{message}");
    }
    assert_eq!(h.call("GET", "/subjects", None).await, (200, json!([])));
}
