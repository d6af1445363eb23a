//! The whole system over HTTP on the embedded broker: sign up, log in, search, book, poll to
//! the end; declines and sold-out flights compensate; users see only their own bookings;
//! tokens are checked; bad input gets one error shape, and garbage on the command topics is
//! dead-lettered while the services keep running; settling waits for all work sent.

use std::time::{Duration, Instant};

use events::{FlightScheduled, HotelListed, Money, topics};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use streams::kafka::OutgoingRecord;
use system::{Options, System};

/// The day every test flight flies, a week from today: the gateway refuses check-ins in the
/// past, so fixed dates would stop working.
fn travel(after: i32) -> String {
    events::date::format(system::day_from_today(7 + after))
}

fn eur(amount: i64) -> Money {
    Money::new(Decimal::new(amount * 100, 2), "EUR")
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: &'static [u8],
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn sign_up_and_log_in(&self, email: &str) -> (String, String) {
        let (status, user) = self
            .call(
                reqwest::Method::POST,
                "/v1/users",
                None,
                Some(
                    json!({"email": email, "password": "correct horse 42", "display_name": "Ana"}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let (status, session) = self
            .call(
                reqwest::Method::POST,
                "/v1/sessions",
                None,
                Some(json!({"email": email, "password": "correct horse 42"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{session}");
        (
            user["user_id"].as_str().expect("id").to_owned(),
            session["token"].as_str().expect("token").to_owned(),
        )
    }

    async fn book(&self, token: &str, flight: &str, seats: i32) -> String {
        let (status, booking) = self
            .call(
                reqwest::Method::POST,
                "/v1/bookings",
                Some(token),
                Some(json!({
                    "flight_id": flight, "seats": seats, "hotel_id": "H1",
                    "check_in": travel(0), "check_out": travel(2),
                    "extras": [{"code": "LUGGAGE", "quantity": 1}]
                })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{booking}");
        assert_eq!(booking["status"], "PENDING");
        booking["booking_id"].as_str().expect("id").to_owned()
    }

    async fn until_finished(&self, token: &str, booking: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, view) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/bookings/{booking}"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if view["status"] != "PENDING" {
                return view;
            }
            assert!(Instant::now() < deadline, "booking {booking} still pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        body["error"]["code"].is_string() && message.contains(mentions),
        "one error shape naming `{mentions}`: {body}"
    );
}

/// One system at a time: two on two cores starve each other's consumer groups.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn seeded() -> (System, Client) {
    streams::telemetry::init("warn");
    let system = System::start(Options::default()).await.expect("system");
    for (id, seats) in [("LH1", 10), ("LH2", 1)] {
        system
            .flight(&FlightScheduled {
                flight_id: id.into(),
                origin: "LIS".into(),
                destination: "FRA".into(),
                departs_at: system::millis_at(system::day_from_today(7), 5),
                arrives_at: system::millis_at(system::day_from_today(7), 8),
                seats,
                seat_price: eur(100),
            })
            .await
            .expect("flight");
    }
    system
        .hotel(&HotelListed {
            hotel_id: "H1".into(),
            name: "Main".into(),
            city: "Frankfurt".into(),
            rooms: 20,
            nightly_rate: eur(80),
        })
        .await
        .expect("hotel");
    let client = Client {
        http: reqwest::Client::new(),
        base: system.gateway_url(),
    };
    (system, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trip_is_booked_over_http_and_failures_compensate() {
    let _serial = SERIAL.lock().await;
    let (system, client) = seeded().await;
    let get = reqwest::Method::GET;
    let (ana, ana_token) = client.sign_up_and_log_in("ana@example.com").await;
    let (bo, bo_token) = client.sign_up_and_log_in("bo@example.com").await;
    system.credit(&ana, eur(10_000)).await.expect("credit");
    system.credit(&bo, eur(50)).await.expect("credit");

    // The catalog reaches the gateway's view through the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let flights = loop {
        let (status, found) = client
            .call(
                get.clone(),
                &format!("/v1/flights?from=LIS&to=FRA&date={}", travel(0)),
                Some(&ana_token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        if found["flights"].as_array().is_some_and(|f| f.len() == 2) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never showed: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(flights["flights"][0]["seat_price"]["amount"], "100.00");
    let (status, hotels) = client
        .call(
            get.clone(),
            &format!(
                "/v1/hotels?city=frankfurt&check_in={}&check_out={}",
                travel(0),
                travel(2)
            ),
            Some(&ana_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hotels["hotels"][0]["hotel_id"], "H1");

    // Confirmed: 2 seats at 100, 2 nights at 80, luggage at 30.
    let confirmed = client.book(&ana_token, "LH1", 2).await;
    let view = client.until_finished(&ana_token, &confirmed).await;
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    assert_eq!(view["total"]["amount"], "390.00");

    // Declined: seat and room released, cancelled with the reason, nothing taken.
    let declined = client.book(&bo_token, "LH1", 1).await;
    let view = client.until_finished(&bo_token, &declined).await;
    assert_eq!(view["status"], "CANCELLED");
    assert_eq!(view["reason"], "PAYMENT_DECLINED");
    assert!(
        view["detail"]
            .as_str()
            .expect("detail")
            .contains("insufficient funds")
    );
    assert_eq!(
        payment::balance(&system.stores.payment, &bo, "EUR").expect("balance"),
        Decimal::new(50, 0)
    );

    // Sold out: cancelled without a charge.
    let sold_out = client.book(&ana_token, "LH2", 2).await;
    let view = client.until_finished(&ana_token, &sold_out).await;
    assert_eq!(view["reason"], "SEATS_UNAVAILABLE");
    assert!(
        payment::charges(&system.stores.payment)
            .expect("charges")
            .iter()
            .all(|(b, _)| *b != sold_out)
    );

    // Each user sees only their own bookings; another user's id answers as a missing one.
    let (status, body) = client
        .call(
            get.clone(),
            &format!("/v1/bookings/{confirmed}"),
            Some(&bo_token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no booking");
    // A malformed id is refused at the edge, in the one error shape.
    for bad in ["not%20an%20id", &"x".repeat(65)] {
        let (status, body) = client
            .call(
                get.clone(),
                &format!("/v1/bookings/{bad}"),
                Some(&bo_token),
                None,
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "id: must");
    }
    let (status, mine) = client
        .call(get.clone(), "/v1/bookings", Some(&ana_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mine: Vec<&str> = mine["bookings"]
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["booking_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.contains(&confirmed.as_str()) && mine.contains(&sold_out.as_str()));

    // A request retried with the same Idempotency-Key names the same booking, booked once.
    let keyed = |key: &'static str| {
        client
            .http
            .post(format!("{}/v1/bookings", client.base))
            .bearer_auth(&ana_token)
            .header("idempotency-key", key)
            .json(&json!({
                "flight_id": "LH1", "seats": 1, "hotel_id": "H1",
                "check_in": travel(0), "check_out": travel(1)
            }))
            .send()
    };
    let first: Value = keyed("trip-42")
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let again = keyed("trip-42").await.expect("sent");
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["booking_id"], again["booking_id"]);
    let keyed_id = first["booking_id"].as_str().expect("id").to_owned();
    let view = client.until_finished(&ana_token, &keyed_id).await;
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    let after: Value = keyed("trip-42")
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        after["status"], "CONFIRMED",
        "a late retry sees the outcome"
    );
    let (_, mine) = client
        .call(get.clone(), "/v1/bookings", Some(&ana_token), None)
        .await;
    assert_eq!(
        mine["bookings"].as_array().map(Vec::len),
        Some(3),
        "booked once"
    );
    let bad = client
        .http
        .post(format!("{}/v1/bookings", client.base))
        .bearer_auth(&ana_token)
        .header("idempotency-key", "")
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Tokens: none, malformed, forged, expired.
    let (status, body) = client.call(get.clone(), "/v1/bookings", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "Bearer");
    let (status, body) = client
        .call(get.clone(), "/v1/bookings", Some("garbage"), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "malformed");
    // Signed by a key auth does not publish: the gateway fetches auth's keys again, and refuses.
    let forged = token::Issuer::random(Duration::from_secs(60))
        .expect("key")
        .issue(&ana, token::now())
        .expect("token")
        .0;
    let (status, body) = client
        .call(get.clone(), "/v1/bookings", Some(&forged), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "signature");
    let expired = system
        .tokens
        .issue(&ana, token::now() - 7_200)
        .expect("token")
        .0;
    let (status, body) = client
        .call(get.clone(), "/v1/bookings", Some(&expired), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "expired");
    let (status, body) = client
        .call(
            reqwest::Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "ana@example.com", "password": "wrong password 1"})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "wrong email or password",
    );
    // Ten failures for one email, then auth throttles it; the gateway passes the 429 on with
    // its Retry-After.
    for i in 1..=10 {
        let (status, _) = client
            .call(
                reqwest::Method::POST,
                "/v1/sessions",
                None,
                Some(json!({"email": "bo@example.com", "password": format!("wrong password {i}")})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let throttled = client
        .http
        .post(format!("{}/v1/sessions", client.base))
        .json(&json!({"email": "bo@example.com", "password": "correct horse 42"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        throttled
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{:?}",
        throttled.headers()
    );

    assert!(system.consistency().expect("consistency").holds());
    system.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_one_error_shape_and_garbage_on_command_topics_is_dead_lettered() {
    let _serial = SERIAL.lock().await;
    let (system, client) = seeded().await;
    let (_, token) = client.sign_up_and_log_in("cy@example.com").await;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    // Sign-up.
    for (body, field) in [
        (
            json!({"email": "not-an-address", "password": "long enough 1", "display_name": "C"}),
            "email",
        ),
        (
            json!({"email": "d@example.com", "password": "short1", "display_name": "C"}),
            "password",
        ),
        (
            json!({"email": "d@example.com", "password": "no digits at all", "display_name": "C"}),
            "password",
        ),
        (
            json!({"email": "d@example.com", "password": "long enough 1", "display_name": ""}),
            "display_name",
        ),
        (
            json!({"email": "d@example.com", "password": "long enough 1"}),
            "display_name",
        ),
        (
            json!({"email": "d@example.com", "password": 42, "display_name": "C"}),
            "password",
        ),
        (
            json!({"email": "d@example.com", "password": "long enough 1", "display_name": "C", "admin": true}),
            "admin",
        ),
    ] {
        let (status, answer) = client
            .call(post.clone(), "/v1/users", None, Some(body))
            .await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, field);
    }
    let (status, answer) = client
        .call(post.clone(), "/v1/users", None, Some(json!({"email": "CY@example.com", "password": "long enough 1", "display_name": "C"})))
        .await;
    assert_error(status, &answer, StatusCode::CONFLICT, "already registered");

    // Bookings.
    let valid = || json!({"flight_id": "LH1", "seats": 1, "hotel_id": "H1", "check_in": travel(0), "check_out": travel(2)});
    let with = |field: &str, value: Value| {
        let mut body = valid();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("seats", json!("two")), "seats"),
        (with("seats", json!(0)), "seats"),
        (with("seats", json!(4_000_000_000_i64)), "seats"),
        (with("check_in", json!("2026-02-30")), "check_in"),
        (with("check_out", json!(travel(-1))), "check_out"),
        (with("flight_id", json!("XX999")), "flight_id"),
        (with("flight_id", json!("x".repeat(10_000))), "flight_id"),
        (
            with("extras", json!([{"code": "CAVIAR", "quantity": 1}])),
            "extras[0].code",
        ),
        (
            with("extras", json!([{"code": "LUGGAGE", "quantity": 99}])),
            "extras[0].quantity",
        ),
        (with("surprise", json!(1)), "surprise"),
        (json!({"seats": 1}), "flight_id"),
        (json!([1, 2, 3]), "body"),
    ] {
        let (status, answer) = client
            .call(post.clone(), "/v1/bookings", Some(&token), Some(body))
            .await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, field);
    }
    for garbage in [
        &b"{\"flight_id\": "[..],
        b"\xff\xfe\x00garbage",
        b"",
        b"null",
    ] {
        let (status, answer) = client.raw("/v1/bookings", Some(&token), garbage).await;
        // The message says where parsing stopped.
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "line 1");
    }
    let huge = Box::leak(
        format!("{{\"flight_id\": \"{}\"}}", "x".repeat(100_000))
            .into_bytes()
            .into_boxed_slice(),
    );
    let (status, answer) = client.raw("/v1/bookings", Some(&token), huge).await;
    assert_error(status, &answer, StatusCode::PAYLOAD_TOO_LARGE, "larger");
    let (status, answer) = client
        .call(
            get.clone(),
            "/v1/flights?from=LISBON&to=FRA",
            Some(&token),
            None,
        )
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "from");
    let (status, answer) = client
        .call(get.clone(), "/v1/flights?to=FRA", Some(&token), None)
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "from");
    let (status, answer) = client
        .call(
            get.clone(),
            &format!(
                "/v1/hotels?city=Frankfurt&check_in={}&check_out={}",
                travel(2),
                travel(0)
            ),
            Some(&token),
            None,
        )
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "check_out");
    let (status, answer) = client
        .call(get.clone(), "/v1/nowhere", Some(&token), None)
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "no such resource");
    let (status, answer) = client
        .call(reqwest::Method::DELETE, "/v1/bookings", Some(&token), None)
        .await;
    assert_error(status, &answer, StatusCode::METHOD_NOT_ALLOWED, "method");
    let (status, spec) = client.call(get.clone(), "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["paths"]["/v1/bookings"]["post"].is_object());

    // Garbage straight onto every command topic: dead-lettered, the services keep going.
    let command_topics = [
        topics::BOOKINGS,
        topics::FLIGHT_COMMANDS,
        topics::HOTEL_COMMANDS,
        topics::PAYMENT_COMMANDS,
    ];
    for topic in command_topics {
        for payload in [
            b"not avro".to_vec(),
            vec![0, 0, 0, 0, 99, 1],
            vec![0, 0, 0, 0, 1, 0xff, 0xff],
        ] {
            let entry = OutgoingRecord {
                topic: topic.into(),
                partition: None,
                key: b"garbage".to_vec(),
                payload: Some(payload),
                headers: vec![],
            };
            system.producer.send_record(&entry).await.expect("sent");
        }
    }
    let booked = client.book(&token, "LH1", 1).await;
    let view = client.until_finished(&token, &booked).await;
    // No money for this user: the saga ran all the way to the payment and back.
    assert_eq!(view["reason"], "PAYMENT_DECLINED", "{view}");
    assert!(system.services_running());
    // `bookings` has two readers (the saga and the gateway's views), and each reports its own.
    let expected = 3 * 2 + 3 * 3;
    let dead_letters = count_dead_letters(&system, &command_topics, expected).await;
    assert_eq!(
        dead_letters, expected,
        "every garbage record was dead-lettered"
    );
    system.stop().await.expect("stops");
}

/// Records in the dead-letter topics of `topics`, waiting up to 30 s for `expected`.
async fn count_dead_letters(system: &System, topics: &[&str], expected: i64) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", system.broker.bootstrap_servers())
        .create()
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut total = 0;
        for topic in topics {
            let dlq = format!("{topic}.dlq");
            let metadata = consumer
                .fetch_metadata(Some(&dlq), Duration::from_secs(5))
                .expect("metadata");
            let partitions = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len());
            for partition in 0..partitions {
                let (low, high) = consumer
                    .fetch_watermarks(
                        &dlq,
                        i32::try_from(partition).unwrap_or(0),
                        Duration::from_secs(5),
                    )
                    .expect("watermarks");
                total += high - low;
            }
        }
        if total >= expected || Instant::now() >= deadline {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settling_waits_until_every_service_has_finished_the_work_sent() {
    let _serial = SERIAL.lock().await;
    let (system, _) = seeded().await;
    system.credit("u1", eur(1_000_000)).await.expect("credit");
    // 30 requests for a flight with 10 seats: 10 confirm, 20 cancel, all without waiting.
    let ids: Vec<String> = (0..30).map(|i| format!("settle-{i:02}")).collect();
    for id in &ids {
        let request = events::BookingRequested {
            booking_id: id.clone(),
            user_id: "u1".into(),
            flight: events::FlightSelection {
                flight_id: "LH1".into(),
                seats: 1,
            },
            hotel: events::HotelSelection {
                hotel_id: "H1".into(),
                check_in: 20_788,
                check_out: 20_789,
                rooms: 1,
            },
            extras: vec![],
            requested_at: events::now_millis(),
        };
        system.send(topics::BOOKINGS, &request).await.expect("sent");
    }
    system
        .settle(Duration::from_secs(60))
        .await
        .expect("settles");
    // No waiting from here: each saga ended, the gateway's view shows it, nothing is queued.
    let stores = &system.stores;
    assert!(stores.booking.scan(b"open/").expect("scan").is_empty());
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let view: gateway::view::BookingView = stores
            .gateway
            .get(format!("booking/{id}").as_bytes())
            .expect("read")
            .map(|bytes| serde_json::from_slice(&bytes).expect("a view"))
            .unwrap_or_else(|| panic!("booking {id} is in the gateway's view"));
        *statuses.entry(view.status.to_string()).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [("CANCELLED".to_owned(), 20), ("CONFIRMED".to_owned(), 10)].into()
    );
    for store in stores.all() {
        assert!(store.outbox().oldest(1).expect("outbox").is_empty());
    }
    assert!(system.consistency().expect("consistency").holds());
    system.stop().await.expect("stops");
}
