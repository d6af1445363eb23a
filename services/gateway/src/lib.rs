//! The gateway: the one JSON API for web and app clients.
//!
//! Reads (booking status, catalog) come from views the gateway builds from the log in its own
//! store (see [`view`]); a booking is a `BookingRequested` event, answered 202 at once. Sign-up
//! and login are forwarded to the auth service; every other request needs a bearer token (a JWT
//! auth signed), which the gateway checks itself with the public keys auth publishes at
//! `/.well-known/jwks.json`: it holds no key that could mint one. Every error has one shape:
//! `{"error": {"code": "...", "message": "..."}}`.

pub mod accepted;
pub mod claim;
pub mod error;
pub mod id;
pub mod view;

pub use error::{Error, Result};

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use events::{
    BookingRequested, Extra, FlightScheduled, FlightSelection, HotelListed, HotelSelection, Money,
    date, topics,
};
use id::{BookingId, FlightId, HotelId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use streams::kafka::headers::Metadata;
use streams::kafka::producer::Producer;
use streams::store::Store;
use token::{TokenError, Verifier};
use view::BookingView;
use web::{ApiError, Json, Query};

/// The name the gateway's views keep their offsets under (they join no consumer group).
pub const GROUP: &str = "gateway";

/// The gateway reads no topic as tasks: every instance answers for every booking.
pub const TOPICS: &[&str] = &[];

/// The topics the views are built from, each read whole by every gateway instance.
pub const GLOBALS: &[&str] = &[topics::BOOKINGS, topics::FLIGHTS, topics::HOTELS];

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Extras on sale, with their unit price in EUR.
pub const EXTRAS: [(&str, i64); 3] = [("LUGGAGE", 3000), ("INSURANCE", 2500), ("BREAKFAST", 1500)];

/// Where the gateway listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// The auth service the gateway forwards sign-up and login to (`tripstream run gateway` and the
/// gateway's own binary).
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct AuthUrl {
    /// The auth service, for the gateway: sign-up and login are forwarded there, and tokens
    /// are checked with the public keys at <URL>/.well-known/jwks.json.
    #[arg(long, env = "TRIPSTREAM_AUTH", default_value = "http://127.0.0.1:8082")]
    pub auth_url: String,
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker, registry and the views' store.
    pub service: streams::service::Settings,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The auth service's base URL: sign-up and login go there, and the token keys come from
    /// its `/.well-known/jwks.json`.
    pub auth_url: String,
}

struct Gateway {
    store: Store,
    producer: Producer,
    tokens: Verifier,
    auth_url: String,
    http: reqwest::Client,
    /// Bookings accepted but not yet in the view, so that a client polling right after its 202
    /// sees PENDING, not 404.
    accepted: Mutex<accepted::Accepted>,
    /// The booking ids whose `Idempotency-Key` request is being looked up and sent now: one
    /// request per key at a time, so a second one sees what the first did.
    claims: Arc<claim::Claims>,
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    server: web::Server,
    stop_views: tokio::sync::watch::Sender<bool>,
    views: tokio::task::JoinHandle<streams::Result<()>>,
}

impl Running {
    /// The base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops serving, then stops the views.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] or [`Error::Views`] when the server or the views' task had failed,
    /// [`Error::Runtime`] when the views' processor had.
    pub async fn stop(self) -> Result<()> {
        let served = self.server.stop().await;
        let _ = self.stop_views.send(true);
        let views = self.views.await;
        served?;
        Ok(views.map_err(Error::Views)??)
    }
}

/// Starts the gateway; it runs until [`Running::stop`].
///
/// # Errors
///
/// [`Error::Runtime`] when the store or the producer cannot be set up, [`Error::Http`] when
/// the address cannot be bound, [`Error::HttpClient`] when the HTTP client cannot be built.
pub async fn start(settings: Settings) -> Result<Running> {
    let store = settings.service.data.open()?;
    let codec = settings.service.codec()?;
    let producer = Producer::new(&settings.service.brokers, codec, &[])?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(Error::HttpClient)?;
    let (stop_views, mut views_stopped) = tokio::sync::watch::channel(false);
    let mut service = settings.service.clone();
    service.data = streams::service::Data::Store(store.clone());
    let views = tokio::spawn(async move {
        let topics = streams::service::Topics {
            globals: topics::specs_of(GLOBALS)?,
            ..streams::service::Topics::default()
        };
        streams::service::run(GROUP, &topics, &service, view::Views, async move {
            let _ = views_stopped.wait_for(|s| *s).await;
        })
        .await
    });
    let auth_url = settings.auth_url.trim_end_matches('/').to_owned();
    let gateway = Arc::new(Gateway {
        store,
        producer,
        tokens: Verifier::new(format!("{auth_url}{}", token::JWKS_PATH), http.clone()),
        auth_url,
        http,
        accepted: Mutex::new(accepted::Accepted::default()),
        claims: Arc::default(),
    });
    let router = web::api(
        Router::new()
            .route("/v1/users", post(forward_to_auth))
            .route("/v1/sessions", post(forward_to_auth))
            .route("/v1/flights", get(search_flights))
            .route("/v1/hotels", get(search_hotels))
            .route("/v1/bookings", post(book).get(list_bookings))
            .route("/v1/bookings/{id}", get(get_booking))
            .route(
                "/openapi.json",
                get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
            )
            .route("/health", get(|| async { "ok" })),
    )
    .with_state(gateway);
    let server = web::Server::bind(settings.listen, router).await?;
    tracing::info!(url = %server.url(), "Gateway listening");
    Ok(Running {
        server,
        stop_views,
        views,
    })
}

/// Runs the gateway until `shutdown`.
///
/// # Errors
///
/// As [`start`] and [`Running::stop`].
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<()> {
    let running = start(settings).await?;
    shutdown.await;
    running.stop().await
}

/// The user a request's bearer token names.
struct User(String);

impl FromRequestParts<Arc<Gateway>> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("send Authorization: Bearer <token>").into_response()
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer <token>")
                    .into_response()
            })?;
        match gateway.tokens.verify(token.trim(), token::now()).await {
            Ok(user) => Ok(User(user)),
            Err(TokenError::Expired) => {
                Err(ApiError::unauthorized("the token has expired; log in again").into_response())
            }
            Err(TokenError::Unavailable(detail)) => {
                // The detail names auth's internal address and the transport's error: for the
                // log (the verifier warns once per failed fetch), not for the client.
                tracing::debug!(%detail, "A token cannot be checked");
                let mut response =
                    ApiError::unavailable("the token cannot be checked now; retry later")
                        .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(response)
            }
            Err(e) => Err(ApiError::unauthorized(e.to_string()).into_response()),
        }
    }
}

/// Sign-up and login belong to the auth service: the request goes there as it is, with the
/// client's address in `X-Forwarded-For` (replacing any the client sent) for auth's
/// per-client throttling, and its answer comes back as it is.
async fn forward_to_auth(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    web::Body(body): web::Body,
) -> Result<Response, ApiError> {
    let mut request = gateway
        .http
        .post(format!("{}{}", gateway.auth_url, uri.path()))
        .header("x-forwarded-for", client.ip().to_canonical().to_string())
        .body(body);
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("the auth service is unavailable: {e}")))?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let body = answer
        .bytes()
        .await
        .map_err(|e| ApiError::unavailable(format!("the auth service broke off: {e}")))?;
    let mut response = (status, body).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    if let Some(retry_after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after);
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Ok(response)
}

fn airport(field: &str, code: &str) -> Result<String, ApiError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(ApiError::invalid(
            field,
            "must be a 3-letter IATA airport code",
        ))
    }
}

fn day(field: &str, text: &str) -> Result<i32, ApiError> {
    date::parse(text).ok_or_else(|| ApiError::invalid(field, "must be a date as YYYY-MM-DD"))
}

/// The longest stay booked or searched, in nights.
pub const MAX_NIGHTS: i32 = 30;

/// How many days a hotel's check-in may be from the flight's arrival day, either way.
pub const ARRIVAL_SLACK: i32 = 1;

const DAY_MILLIS: i64 = 86_400_000;

/// Today (UTC), in days since 1970-01-01.
fn today() -> i32 {
    i32::try_from(events::now_millis().div_euclid(DAY_MILLIS)).unwrap_or(i32::MAX)
}

/// The nights of a stay, checked: `check_in` today or later, `check_out` 1 to [`MAX_NIGHTS`]
/// nights after it.
fn stay(check_in: &str, check_out: &str) -> Result<(i32, i32), ApiError> {
    let (check_in, check_out) = (day("check_in", check_in)?, day("check_out", check_out)?);
    let today = today();
    if check_in < today {
        return Err(ApiError::invalid(
            "check_in",
            format!("must be today ({}) or later", date::format(today)),
        ));
    }
    if !(1..=MAX_NIGHTS).contains(&(check_out - check_in)) {
        return Err(ApiError::invalid(
            "check_out",
            format!("must be 1 to {MAX_NIGHTS} nights after check_in"),
        ));
    }
    Ok((check_in, check_out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlightSearch {
    from: String,
    to: String,
    date: Option<String>,
}

#[derive(Debug, Serialize)]
struct FlightView {
    flight_id: String,
    origin: String,
    destination: String,
    departs_at: String,
    arrives_at: String,
    seats: i32,
    seat_price: Money,
}

async fn search_flights(
    State(gateway): State<Arc<Gateway>>,
    _user: User,
    Query(search): Query<FlightSearch>,
) -> Result<impl IntoResponse, ApiError> {
    let (from, to) = (airport("from", &search.from)?, airport("to", &search.to)?);
    let on = search.date.as_deref().map(|d| day("date", d)).transpose()?;
    let mut flights: Vec<FlightScheduled> =
        view::scan(&gateway.store, "flight/").map_err(ApiError::internal)?;
    flights.retain(|f| {
        f.origin == from
            && f.destination == to
            && on.is_none_or(|on| i64::from(on) == f.departs_at.div_euclid(86_400_000))
    });
    flights.sort_by_key(|f| f.departs_at);
    let flights: Vec<FlightView> = flights
        .into_iter()
        .map(|f| FlightView {
            departs_at: date::format_millis(f.departs_at),
            arrives_at: date::format_millis(f.arrives_at),
            flight_id: f.flight_id,
            origin: f.origin,
            destination: f.destination,
            seats: f.seats,
            seat_price: f.seat_price,
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "flights": flights })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HotelSearch {
    city: String,
    check_in: Option<String>,
    check_out: Option<String>,
}

async fn search_hotels(
    State(gateway): State<Arc<Gateway>>,
    _user: User,
    Query(search): Query<HotelSearch>,
) -> Result<impl IntoResponse, ApiError> {
    let city = search.city.trim();
    if city.is_empty() || city.len() > 100 {
        return Err(ApiError::invalid("city", "must be 1 to 100 characters"));
    }
    let nights = match (search.check_in.as_deref(), search.check_out.as_deref()) {
        (None, None) => None,
        (Some(check_in), Some(check_out)) => Some(stay(check_in, check_out)?),
        (Some(_), None) => return Err(ApiError::invalid("check_out", "goes with check_in")),
        (None, Some(_)) => return Err(ApiError::invalid("check_in", "goes with check_out")),
    };
    let mut hotels: Vec<HotelListed> =
        view::scan(&gateway.store, "hotel/").map_err(ApiError::internal)?;
    hotels.retain(|h| h.city.eq_ignore_ascii_case(city));
    if let Some((check_in, check_out)) = nights {
        // Rooms free every night of the stay, as far as the view knows (confirmed bookings).
        let mut free = Vec::with_capacity(hotels.len());
        for hotel in hotels {
            let mut full = false;
            for night in check_in..check_out {
                let booked = view::rooms_booked(&gateway.store, &hotel.hotel_id, night)
                    .map_err(ApiError::internal)?;
                if booked >= i64::from(hotel.rooms) {
                    full = true;
                    break;
                }
            }
            if !full {
                free.push(hotel);
            }
        }
        hotels = free;
    }
    hotels.sort_by(|a, b| a.hotel_id.cmp(&b.hotel_id));
    Ok(axum::Json(serde_json::json!({ "hotels": hotels })))
}

/// A booking request from a client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookingBody {
    flight_id: FlightId,
    seats: i32,
    hotel_id: HotelId,
    check_in: String,
    check_out: String,
    #[serde(default = "one")]
    rooms: i32,
    #[serde(default)]
    extras: Vec<ExtraBody>,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraBody {
    code: String,
    quantity: i32,
}

/// Checks a booking body against the rules and the catalog; returns the event to send.
fn request(
    gateway: &Gateway,
    user: String,
    body: BookingBody,
) -> Result<BookingRequested, ApiError> {
    if !(1..=9).contains(&body.seats) {
        return Err(ApiError::invalid("seats", "must be 1 to 9"));
    }
    if !(1..=9).contains(&body.rooms) {
        return Err(ApiError::invalid("rooms", "must be 1 to 9"));
    }
    let (check_in, check_out) = stay(&body.check_in, &body.check_out)?;
    let Some(flight) =
        view::read::<FlightScheduled>(&gateway.store, &view::flight_key(body.flight_id.as_str()))
            .map_err(ApiError::internal)?
    else {
        return Err(ApiError::invalid("flight_id", "no such flight"));
    };
    let arrival = i32::try_from(flight.arrives_at.div_euclid(DAY_MILLIS)).unwrap_or(i32::MAX);
    if (i64::from(check_in) - i64::from(arrival)).abs() > i64::from(ARRIVAL_SLACK) {
        return Err(ApiError::invalid(
            "check_in",
            format!(
                "must be within {ARRIVAL_SLACK} day of the flight's arrival on {}",
                date::format(arrival)
            ),
        ));
    }
    let hotel_known = gateway
        .store
        .get(view::hotel_key(body.hotel_id.as_str()).as_bytes())
        .map_err(ApiError::internal)?
        .is_some();
    if !hotel_known {
        return Err(ApiError::invalid("hotel_id", "no such hotel"));
    }
    if body.extras.len() > 10 {
        return Err(ApiError::invalid("extras", "at most 10 extras"));
    }
    let mut extras = Vec::new();
    for (i, extra) in body.extras.into_iter().enumerate() {
        let Some((code, cents)) = EXTRAS.iter().find(|(code, _)| *code == extra.code) else {
            let codes: Vec<&str> = EXTRAS.iter().map(|(code, _)| *code).collect();
            return Err(ApiError::invalid(
                &format!("extras[{i}].code"),
                format!("must be one of {}", codes.join(", ")),
            ));
        };
        if !(1..=10).contains(&extra.quantity) {
            return Err(ApiError::invalid(
                &format!("extras[{i}].quantity"),
                "must be 1 to 10",
            ));
        }
        extras.push(Extra {
            code: (*code).to_owned(),
            quantity: extra.quantity,
            unit_price: Money::new(Decimal::new(*cents, 2), "EUR"),
        });
    }
    Ok(BookingRequested {
        booking_id: uuid::Uuid::new_v4().to_string(),
        user_id: user,
        flight: FlightSelection {
            flight_id: body.flight_id.into_string(),
            seats: body.seats,
        },
        hotel: HotelSelection {
            hotel_id: body.hotel_id.into_string(),
            check_in,
            check_out,
            rooms: body.rooms,
        },
        extras,
        requested_at: events::now_millis(),
    })
}

/// The booking id an `Idempotency-Key` stands for: the same user and key always give the same
/// id, so a retried request names the same booking, which the saga and the views take once.
fn idempotent_id(user: &str, key: &str) -> String {
    streams::kafka::headers::derived_id(&[user.as_bytes(), key.as_bytes()])
}

async fn book(
    State(gateway): State<Arc<Gateway>>,
    User(user): User,
    headers: HeaderMap,
    Json(body): Json<BookingBody>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Idempotency-Key",
                        "must be 1 to 200 visible ASCII characters",
                    )
                })?
                .to_owned(),
        ),
    };
    let mut request = request(&gateway, user, body)?;
    let Some(key) = key else {
        return send(&gateway, &request).await;
    };
    request.booking_id = idempotent_id(&request.user_id, &key);
    // Looking up and sending are one step per key: a second request with the key waits here
    // and then finds what the first one sent.
    let _claim = gateway.claims.take(&request.booking_id).await;
    match lookup(&gateway, &request.booking_id)? {
        Some(existing) if existing.user_id == request.user_id => {
            if same_request(&existing, &BookingView::pending(&request)) {
                Ok(accepted(existing))
            } else {
                Err(ApiError::unprocessable(
                    "Idempotency-Key",
                    format!(
                        "was used for booking {} with another request; send a new key for a new booking",
                        existing.booking_id
                    ),
                ))
            }
        }
        _ => send(&gateway, &request).await,
    }
}

/// Whether two bookings ask for the same trip (what a client sends, not when or its status).
fn same_request(a: &BookingView, b: &BookingView) -> bool {
    a.flight == b.flight && a.hotel == b.hotel && a.extras == b.extras
}

/// Sends `BookingRequested` and holds the pending booking until the view has it.
async fn send(gateway: &Gateway, request: &BookingRequested) -> Result<Response, ApiError> {
    gateway
        .producer
        .send(
            topics::BOOKINGS,
            request,
            &Metadata::new(&request.booking_id),
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("the booking could not be sent: {e}")))?;
    let pending = BookingView::pending(request);
    let store = &gateway.store;
    streams::sync::lock(&gateway.accepted).insert(
        pending.clone(),
        std::time::Instant::now(),
        |id| matches!(store.get(view::booking_key(id).as_bytes()), Ok(Some(_))),
    );
    Ok(accepted(pending))
}

/// 202 with the booking and its `Location`.
fn accepted(view: BookingView) -> Response {
    let location = format!("/v1/bookings/{}", view.booking_id);
    let mut response = (StatusCode::ACCEPTED, axum::Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn lookup(gateway: &Gateway, booking_id: &str) -> Result<Option<BookingView>, ApiError> {
    match view::read::<BookingView>(&gateway.store, &view::booking_key(booking_id))
        .map_err(ApiError::internal)?
    {
        Some(view) => {
            streams::sync::lock(&gateway.accepted).remove(booking_id);
            Ok(Some(view))
        }
        None => Ok(streams::sync::lock(&gateway.accepted)
            .get(booking_id)
            .cloned()),
    }
}

async fn get_booking(
    State(gateway): State<Arc<Gateway>>,
    User(user): User,
    web::Path(booking_id): web::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let booking_id = BookingId::parse(booking_id).map_err(|e| ApiError::invalid("id", e))?;
    // Another user's booking answers exactly as a missing one: ids reveal nothing.
    match lookup(&gateway, booking_id.as_str())? {
        Some(view) if view.user_id == user => Ok(axum::Json(view)),
        _ => Err(ApiError::not_found(format!("no booking {booking_id}"))),
    }
}

async fn list_bookings(
    State(gateway): State<Arc<Gateway>>,
    User(user): User,
) -> Result<impl IntoResponse, ApiError> {
    let prefix = view::user_prefix(&user);
    let ids: Vec<String> = gateway
        .store
        .scan(prefix.as_bytes())
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
        .collect();
    let mut bookings = Vec::new();
    for id in &ids {
        if let Some(view) = lookup(&gateway, id)? {
            bookings.push(view);
        }
    }
    let seen: std::collections::HashSet<&String> = ids.iter().collect();
    bookings.extend(
        streams::sync::lock(&gateway.accepted)
            .values()
            .filter(|v| v.user_id == user && !seen.contains(&v.booking_id))
            .cloned(),
    );
    bookings.sort_by_key(|b| std::cmp::Reverse(b.requested_at));
    Ok(axum::Json(serde_json::json!({ "bookings": bookings })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_address_is_a_listen_error_that_a_retry_may_cure() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = taken.local_addr().expect("bound");
        let nowhere = "127.0.0.1:1";
        let settings = Settings {
            service: streams::service::Settings::new(
                nowhere,
                format!("http://{nowhere}"),
                streams::service::Data::Store(Store::temporary().expect("store")),
            ),
            listen: addr,
            auth_url: format!("http://{nowhere}"),
        };
        let error = start(settings).await.expect_err("the address is taken");
        assert!(
            matches!(&error, Error::Http(web::ServeError::Listen { addr: a, .. }) if *a == addr),
            "{error}"
        );
        assert!(error.is_retriable(), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{error}"
        );
    }
}

/// Fuzz targets (bolero) for the gateway's request parsing: under `cargo test` each runs for a
/// second on random inputs; `cargo bolero test` runs one coverage-guided (README, "Fuzzing").
#[cfg(test)]
mod fuzz {
    use super::*;

    fn refused_with_a_4xx<T>(result: Result<T, ApiError>) {
        if let Err(error) = result {
            assert!(error.status.is_client_error(), "{error:?}");
        }
    }

    #[test]
    fn booking_bodies_are_read_or_refused_with_a_4xx() {
        bolero::check!().for_each(|bytes: &[u8]| {
            let parsed = web::parse::<BookingBody>(bytes);
            if let Ok(body) = &parsed {
                refused_with_a_4xx(stay(&body.check_in, &body.check_out));
            }
            refused_with_a_4xx(parsed);
        });
    }

    #[test]
    fn search_parameters_are_read_or_refused_with_a_4xx() {
        bolero::check!()
            .with_type::<(String, String)>()
            .for_each(|(a, b)| {
                refused_with_a_4xx(airport("from", a));
                refused_with_a_4xx(day("date", a));
                refused_with_a_4xx(stay(a, b));
            });
    }
}
