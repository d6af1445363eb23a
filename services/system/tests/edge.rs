//! The gateway's edge against hostile or careless clients, over HTTP on the embedded broker:
//! one Idempotency-Key raced with two bodies books one trip and refuses the other body; dates
//! in the past, overlong stays and stays off the flight's arrival are refused naming the field;
//! hotel search leaves out hotels full on a night asked; and every error of the gateway and of
//! auth, also those axum answers itself, is in the one JSON shape.

use std::time::{Duration, Instant};

use events::{FlightScheduled, HotelListed, Money};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use system::{Options, System, day_from_today, millis_at};

/// One system at a time: two on two cores starve each other's consumer groups.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Days from today of the flights' arrival: every stay here is counted from it.
const TRAVEL: i32 = 7;

/// `YYYY-MM-DD` of `after` days after the travel day (negative: before).
fn travel(after: i32) -> String {
    events::date::format(day_from_today(TRAVEL + after))
}

fn eur(amount: i64) -> Money {
    Money::new(Decimal::new(amount * 100, 2), "EUR")
}

struct Edge {
    system: System,
    http: reqwest::Client,
    token: String,
}

impl Edge {
    /// The system with flight LH1 (10 seats, arriving on the travel day), hotels H1 (20 rooms)
    /// and TINY (1 room) in Frankfurt, and one funded user, logged in, who sees the catalog.
    async fn start() -> Edge {
        streams::telemetry::init("warn");
        let system = System::start(Options::default()).await.expect("system");
        system
            .flight(&FlightScheduled {
                flight_id: "LH1".into(),
                origin: "LIS".into(),
                destination: "FRA".into(),
                departs_at: millis_at(day_from_today(TRAVEL), 5),
                arrives_at: millis_at(day_from_today(TRAVEL), 8),
                seats: 10,
                seat_price: eur(100),
            })
            .await
            .expect("flight");
        for (id, rooms) in [("H1", 20), ("TINY", 1)] {
            system
                .hotel(&HotelListed {
                    hotel_id: id.into(),
                    name: id.into(),
                    city: "Frankfurt".into(),
                    rooms,
                    nightly_rate: eur(80),
                })
                .await
                .expect("hotel");
        }
        let http = reqwest::Client::new();
        let gateway = system.gateway_url();
        let password = "correct horse 42";
        let user: Value = http
            .post(format!("{gateway}/v1/users"))
            .json(&json!({"email": "edge@example.com", "password": password, "display_name": "E"}))
            .send()
            .await
            .expect("sign-up")
            .json()
            .await
            .expect("json");
        let session: Value = http
            .post(format!("{gateway}/v1/sessions"))
            .json(&json!({"email": "edge@example.com", "password": password}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        let user_id = user["user_id"].as_str().expect("user id");
        system.credit(user_id, eur(100_000)).await.expect("credit");
        let edge = Edge {
            system,
            http,
            token: session["token"].as_str().expect("token").to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, flights) = edge.get("/v1/flights?from=LIS&to=FRA").await;
            let (_, hotels) = edge.get("/v1/hotels?city=Frankfurt").await;
            if flights["flights"].as_array().is_some_and(|f| f.len() == 1)
                && hotels["hotels"].as_array().is_some_and(|h| h.len() == 2)
            {
                return edge;
            }
            assert!(Instant::now() < deadline, "the catalog never showed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.system.gateway_url())
    }

    async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/json");
        let text = response.text().await.expect("a body");
        let body = if json {
            serde_json::from_str(&text).expect("JSON as it says")
        } else {
            Value::String(format!("not JSON: {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        Edge::answer(self.http.get(self.url(path)).bearer_auth(&self.token)).await
    }

    async fn book(&self, body: &Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url("/v1/bookings"))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        Edge::answer(request).await
    }

    async fn until_finished(&self, booking: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, view) = self.get(&format!("/v1/bookings/{booking}")).await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if view["status"] != "PENDING" {
                return view;
            }
            assert!(Instant::now() < deadline, "booking {booking} still pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn trip(seats: i32, hotel: &str, check_in: i32, check_out: i32) -> Value {
    json!({
        "flight_id": "LH1", "seats": seats, "hotel_id": hotel,
        "check_in": travel(check_in), "check_out": travel(check_out)
    })
}

fn assert_error(answer: &(StatusCode, Value), expected: StatusCode, code: &str, mentions: &str) {
    let (status, body) = answer;
    assert_eq!(*status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mentions), "`{mentions}` in {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_raced_with_two_bodies_books_one_trip_and_the_other_body_is_422() {
    let _serial = SERIAL.lock().await;
    let edge = std::sync::Arc::new(Edge::start().await);
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let edge = edge.clone();
            let seats = 1 + i % 2;
            tokio::spawn(async move {
                let answer = edge.book(&trip(seats, "H1", 0, 2), Some("race-1")).await;
                (seats, answer)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for racer in racers {
        answers.push(racer.await.expect("a racer"));
    }
    let booked: Vec<&(i32, (StatusCode, Value))> = answers
        .iter()
        .filter(|(_, (status, _))| *status == StatusCode::ACCEPTED)
        .collect();
    let (winner, (_, first)) = booked.first().expect("one body is booked");
    let booking_id = first["booking_id"].as_str().expect("id").to_owned();
    for (seats, answer) in &answers {
        if seats == winner {
            let (status, body) = answer;
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["booking_id"], booking_id.as_str(), "{body}");
            // The answer describes the booking made, which is the body sent.
            assert_eq!(body["flight"]["seats"], *winner, "{body}");
        } else {
            assert_error(
                answer,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Idempotency-Key",
            );
        }
    }
    let view = edge.until_finished(&booking_id).await;
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    assert_eq!(view["flight"]["seats"], *winner, "{view}");
    // A late retry with the same body gets the original booking; with the other, still 422.
    let (status, again) = edge.book(&trip(*winner, "H1", 0, 2), Some("race-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["booking_id"], booking_id.as_str());
    assert_eq!(again["status"], "CONFIRMED");
    let other = 3 - *winner;
    let answer = edge.book(&trip(other, "H1", 0, 2), Some("race-1")).await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
        &booking_id,
    );
    let (_, mine) = edge.get("/v1/bookings").await;
    assert_eq!(mine["bookings"].as_array().map(Vec::len), Some(1), "{mine}");
    let edge = std::sync::Arc::into_inner(edge).expect("the racers are done");
    edge.system.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_check_ins_long_stays_and_stays_off_the_flights_arrival_are_refused_naming_the_field()
{
    let _serial = SERIAL.lock().await;
    let edge = Edge::start().await;
    let yesterday = events::date::format(day_from_today(-1));
    let past = json!({
        "flight_id": "LH1", "seats": 1, "hotel_id": "H1",
        "check_in": yesterday, "check_out": travel(0)
    });
    let answer = edge.book(&past, None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "check_in: must be today",
    );
    let ancient = json!({
        "flight_id": "LH1", "seats": 1, "hotel_id": "H1",
        "check_in": "0001-01-01", "check_out": "0001-01-03"
    });
    let answer = edge.book(&ancient, None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "check_in",
    );
    let answer = edge.book(&trip(1, "H1", 0, 31), None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "check_out: must be 1 to 30 nights",
    );
    for off in [2, -2, 20] {
        let answer = edge.book(&trip(1, "H1", off, off + 1), None).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "check_in: must be within 1 day of the flight's arrival on {}",
                travel(0)
            ),
        );
    }
    // A day either side of the arrival, and 30 nights, are fine.
    for (check_in, check_out) in [(-1, 1), (1, 2), (0, 30)] {
        let (status, body) = edge.book(&trip(1, "H1", check_in, check_out), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    edge.system.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hotel_search_leaves_out_hotels_without_a_room_free_on_a_night_asked() {
    let _serial = SERIAL.lock().await;
    let edge = Edge::start().await;
    // TINY's one room, taken for nights 0 and 1.
    let (status, booked) = edge.book(&trip(1, "TINY", 0, 2), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{booked}");
    let view = edge
        .until_finished(booked["booking_id"].as_str().expect("id"))
        .await;
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    let listed = |(check_in, check_out): (i32, i32)| {
        let edge = &edge;
        async move {
            let (status, found) = edge
                .get(&format!(
                    "/v1/hotels?city=Frankfurt&check_in={}&check_out={}",
                    travel(check_in),
                    travel(check_out)
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{found}");
            found["hotels"]
                .as_array()
                .expect("hotels")
                .iter()
                .map(|h| h["hotel_id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    for nights in [(0, 1), (1, 3), (-1, 1), (0, 2)] {
        assert_eq!(listed(nights).await, ["H1"], "nights {nights:?}");
    }
    for nights in [(2, 3), (-1, 0), (2, 20)] {
        assert_eq!(listed(nights).await, ["H1", "TINY"], "nights {nights:?}");
    }
    // Without dates, every hotel of the city.
    let (_, all) = edge.get("/v1/hotels?city=Frankfurt").await;
    assert_eq!(all["hotels"].as_array().map(Vec::len), Some(2), "{all}");
    for (query, field) in [
        (format!("check_in={}", travel(0)), "check_out"),
        (format!("check_out={}", travel(0)), "check_in"),
        (
            format!("check_in={}&check_out={}", travel(0), travel(31)),
            "check_out",
        ),
        (
            format!(
                "check_in={}&check_out={}",
                events::date::format(day_from_today(-1)),
                travel(0)
            ),
            "check_in",
        ),
    ] {
        let answer = edge
            .get(&format!("/v1/hotels?city=Frankfurt&{query}"))
            .await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{field}: "),
        );
    }
    edge.system.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_of_the_gateway_and_of_auth_is_in_the_one_json_shape() {
    let _serial = SERIAL.lock().await;
    let edge = Edge::start().await;
    let http = &edge.http;
    // A path segment that is not UTF-8.
    let answer = edge.get("/v1/bookings/%FF%FE").await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "id: must be UTF-8",
    );
    // A body cut short names the body, not `?`.
    let answer = Edge::answer(
        http.post(edge.url("/v1/bookings"))
            .bearer_auth(&edge.token)
            .header("content-type", "application/json")
            .body(r#"{"flight_id": "LH1", "se"#),
    )
    .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "body: EOF",
    );
    // Not JSON by its media type, though the text is.
    let answer = Edge::answer(
        http.post(edge.url("/v1/bookings"))
            .bearer_auth(&edge.token)
            .header("content-type", "application/jsonx")
            .body(trip(1, "H1", 0, 2).to_string()),
    )
    .await;
    assert_error(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    let huge =
        json!({"email": "x@example.com", "password": "x".repeat(70_000), "display_name": "X"})
            .to_string();
    let auth = edge.system.auth_url();
    // Sign-up and login through the gateway, and auth itself.
    for base in [edge.system.gateway_url(), auth.clone()] {
        for path in ["/v1/users", "/v1/sessions"] {
            let answer = Edge::answer(
                http.post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            )
            .await;
            assert_error(
                &answer,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "larger than 65536 bytes",
            );
            let answer = Edge::answer(
                http.post(format!("{base}{path}"))
                    .header("content-type", "application/jsonx")
                    .body(r#"{"email": "x@example.com", "password": "long enough 1"}"#),
            )
            .await;
            assert_error(
                &answer,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "application/json",
            );
        }
        let answer = Edge::answer(http.delete(format!("{base}/v1/users"))).await;
        assert_error(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method",
        );
        let answer = Edge::answer(http.get(format!("{base}/v1/nowhere/%FF"))).await;
        assert_error(
            &answer,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource",
        );
    }
    edge.system.stop().await.expect("stops");
}
