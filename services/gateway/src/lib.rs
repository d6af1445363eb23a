//! The gateway: the one JSON API for web and app clients.
//!
//! Reads (booking status, catalog) come from views the gateway builds from the log in its own
//! store (see [`view`]); a booking is a `BookingRequested` event, answered 202 at once. Sign-up
//! and login are forwarded to the auth service; every other request needs a bearer token (a JWT
//! auth signed), which the gateway checks itself with the public keys auth publishes at
//! `/.well-known/jwks.json`: it holds no key that could mint one. Every error has one shape:
//! `{"error": {"code": "...", "message": "..."}}`.

pub mod error;
pub mod id;
pub mod view;

pub use error::{Error, Result};

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
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
    accepted: Mutex<HashMap<String, BookingView>>,
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
        accepted: Mutex::new(HashMap::new()),
    });
    let router = Router::new()
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
        .route("/health", get(|| async { "ok" }))
        .fallback(web::not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not take that method",
            )
        })
        .layer(web::body_limit())
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
    body: Bytes,
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
    let check_in = search
        .check_in
        .as_deref()
        .map(|d| day("check_in", d))
        .transpose()?;
    let check_out = search
        .check_out
        .as_deref()
        .map(|d| day("check_out", d))
        .transpose()?;
    if let (Some(check_in), Some(check_out)) = (check_in, check_out)
        && check_out <= check_in
    {
        return Err(ApiError::invalid("check_out", "must be after check_in"));
    }
    let mut hotels: Vec<HotelListed> =
        view::scan(&gateway.store, "hotel/").map_err(ApiError::internal)?;
    hotels.retain(|h| h.city.eq_ignore_ascii_case(city));
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
    let check_in = day("check_in", &body.check_in)?;
    let check_out = day("check_out", &body.check_out)?;
    if !(1..=30).contains(&(check_out - check_in)) {
        return Err(ApiError::invalid(
            "check_out",
            "must be 1 to 30 nights after check_in",
        ));
    }
    let known = |key: String| -> Result<bool, ApiError> {
        Ok(gateway
            .store
            .get(key.as_bytes())
            .map_err(ApiError::internal)?
            .is_some())
    };
    if !known(view::flight_key(body.flight_id.as_str()))? {
        return Err(ApiError::invalid("flight_id", "no such flight"));
    }
    if !known(view::hotel_key(body.hotel_id.as_str()))? {
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
    if let Some(key) = &key {
        request.booking_id = idempotent_id(&request.user_id, key);
        // Asked before: the first request stands, whatever this one says.
        if let Some(existing) = lookup(&gateway, &request.booking_id)?
            && existing.user_id == request.user_id
        {
            return Ok(accepted(existing));
        }
    }
    let booking_id = request.booking_id.clone();
    gateway
        .producer
        .send(topics::BOOKINGS, &request, &Metadata::new(&booking_id))
        .await
        .map_err(|e| ApiError::unavailable(format!("the booking could not be sent: {e}")))?;
    let pending = BookingView::pending(&request);
    streams::sync::lock(&gateway.accepted).insert(booking_id, pending.clone());
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
    Path(booking_id): Path<String>,
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
