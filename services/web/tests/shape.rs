//! The one error shape over real HTTP: a small router with the `web` extractors, served on
//! port 0, answers every malformed request (media type, truncated body, a path segment that is
//! not UTF-8, an oversized body, unknown paths and methods) as `{"error": {...}}`.

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read by serde only: the tests look at what parsing refuses.
struct Booking {
    flight_id: String,
    seats: i32,
}

async fn serve() -> web::Server {
    let router = web::api(
        Router::new()
            .route(
                "/bookings",
                post(|web::Json(_): web::Json<Booking>| async { "ok" }),
            )
            .route(
                "/bookings/{id}",
                get(|web::Path(id): web::Path<String>| async move { id }),
            )
            .route(
                "/raw",
                post(|web::Body(body): web::Body| async move { body.len().to_string() }),
            ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    web::Server::start(listener, router).expect("serves")
}

/// Sends a request; answers the status, the content type and the body as JSON (`Null` when
/// it is not JSON).
async fn send(request: reqwest::RequestBuilder) -> (u16, String, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.expect("a body");
    (
        status,
        content_type,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn assert_shape(answer: &(u16, String, Value), status: u16, code: &str, mentions: &str) {
    let (got, content_type, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(content_type, "application/json", "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mentions), "`{mentions}` in {body}");
}

#[tokio::test]
async fn a_body_sent_as_another_media_type_than_json_is_415() {
    let server = serve().await;
    let http = reqwest::Client::new();
    let body = r#"{"flight_id": "LH1", "seats": 1}"#;
    for media_type in [
        "application/jsonx",
        "application/json-seq",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/+json",
    ] {
        let answer = send(
            http.post(format!("{}/bookings", server.url()))
                .header("content-type", media_type)
                .body(body),
        )
        .await;
        assert_shape(&answer, 415, "unsupported_media_type", "application/json");
    }
    for media_type in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let (status, _, answer) = send(
            http.post(format!("{}/bookings", server.url()))
                .header("content-type", media_type)
                .body(body),
        )
        .await;
        assert_eq!(status, 200, "{media_type}: {answer}");
    }
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn a_body_cut_short_names_the_body_or_the_last_field_read_never_a_question_mark() {
    let server = serve().await;
    let http = reqwest::Client::new();
    for (truncated, field) in [
        (r#"{"flight_id": "LH1", "se"#, "body: "),
        (r#"{"flight_id": "LH1", "#, "body: "),
        (r#"{"flight_id": "LH"#, "flight_id: "),
        ("{", "body: "),
    ] {
        let answer = send(
            http.post(format!("{}/bookings", server.url()))
                .header("content-type", "application/json")
                .body(truncated),
        )
        .await;
        assert_shape(&answer, 400, "invalid_request", field);
        let message = answer.2["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{truncated}: {message}");
        assert!(!message.contains('?'), "{truncated}: {message}");
    }
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_names_the_parameter() {
    let server = serve().await;
    let http = reqwest::Client::new();
    let answer = send(http.get(format!("{}/bookings/%FF%FE", server.url()))).await;
    assert_shape(&answer, 400, "invalid_request", "id: must be UTF-8");
    let (status, _, _) = send(http.get(format!("{}/bookings/b-1", server.url()))).await;
    assert_eq!(status, 200);
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn what_axum_answers_itself_is_in_the_one_shape_too() {
    let server = serve().await;
    let http = reqwest::Client::new();
    let huge = vec![b'x'; web::MAX_BODY + 1];
    let answer = send(http.post(format!("{}/raw", server.url())).body(huge)).await;
    assert_shape(&answer, 413, "too_large", "larger than 65536 bytes");
    let (status, _, _) = send(http.post(format!("{}/raw", server.url())).body("small")).await;
    assert_eq!(status, 200);
    let answer = send(http.get(format!("{}/nowhere", server.url()))).await;
    assert_shape(&answer, 404, "not_found", "no such resource");
    let answer = send(http.delete(format!("{}/bookings", server.url()))).await;
    assert_shape(&answer, 405, "method_not_allowed", "method");
    server.stop().await.expect("stops");
}

#[test]
fn json_is_application_json_or_a_structured_json_type_with_any_parameters() {
    for yes in [
        "application/json",
        "application/json;charset=utf-8",
        " APPLICATION/JSON ",
        "application/problem+json",
    ] {
        assert!(web::is_json(yes), "{yes}");
    }
    for no in [
        "application/jsonx",
        "application/json5",
        "application/+json",
        "text/json+json/x",
        "text/plain",
        "",
    ] {
        assert!(!web::is_json(no), "{no}");
    }
}
