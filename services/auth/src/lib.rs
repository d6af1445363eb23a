//! The auth service: sign-up and login over HTTP. Passwords are hashed with argon2 in the
//! service's own store, through a gate that bounds how many hashes run (see [`hashing`]); failed
//! logins are throttled per email and per client (see [`throttle`]); login answers a JWT signed
//! with auth's newest key, whose public halves it serves at `/.well-known/jwks.json` (see
//! [`token`]); a sign-up publishes `UserRegistered` on `users` through the store's outbox, so
//! the event is never lost and never sent for a user that was not stored.

pub mod client;
pub mod hashing;
pub mod throttle;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use events::{UserRegistered, topics};
use serde::{Deserialize, Serialize};
use streams::kafka::headers::Metadata;
use streams::kafka::producer::{self, Producer};
use streams::store::{Effects, Store};
use web::{ApiError, Json};

pub use client::Proxy;
pub use hashing::Hashing;
pub use token::Issuer;

/// A `Result` whose error defaults to the auth service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop the auth service from starting, or make it fail as it runs. A request's own
/// errors are answered by its handler, in the one JSON error shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The runtime failed: the store, the producer or the codec.
    #[error(transparent)]
    Runtime(#[from] streams::Error),
    /// The HTTP server could not start, or failed.
    #[error(transparent)]
    Http(#[from] web::ServeError),
    /// The hash unknown emails are checked against cannot be made.
    #[error("cannot hash the stand-in password for unknown emails: {0}")]
    Hashing(String),
}

impl Error {
    /// Whether starting again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retriable(),
            Error::Http(e) => e.is_retriable(),
            Error::Hashing(_) => false,
        }
    }
}

/// Where auth listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8082));

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker, registry and store.
    pub service: streams::service::Settings,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Signs tokens and publishes the public keys.
    pub tokens: Issuer,
    /// The gate every password hash goes through (shared with whoever clones it).
    pub hashing: Hashing,
    /// Failed logins allowed per email and per client address.
    pub throttle: throttle::Limits,
    /// Peers whose `X-Forwarded-For` names the client (the gateway); for anyone else the peer
    /// is the client.
    pub trusted_proxies: Vec<Proxy>,
}

impl Settings {
    /// Settings with the default hashing gate, throttling and trusted proxies (loopback).
    pub fn new(service: streams::service::Settings, listen: SocketAddr, tokens: Issuer) -> Self {
        Settings {
            service,
            listen,
            tokens,
            hashing: Hashing::default(),
            throttle: throttle::Limits::default(),
            trusted_proxies: Proxy::loopback(),
        }
    }
}

/// The trusted-proxy flag of auth (`tripstream run auth` and its own binary).
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct ProxyArgs {
    /// A peer (address or network, `10.0.0.0/8`) whose X-Forwarded-For names the client, for
    /// login throttling per client; repeat for more. Others are throttled by their own address
    /// [default: 127.0.0.1 and ::1].
    #[arg(
        long = "trusted-proxy",
        env = "TRIPSTREAM_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Proxy>,
}

impl ProxyArgs {
    /// The proxies given, or loopback when none is.
    pub fn proxies(&self) -> Vec<Proxy> {
        if self.trusted_proxies.is_empty() {
            Proxy::loopback()
        } else {
            self.trusted_proxies.clone()
        }
    }
}

struct Auth {
    store: Store,
    codec: streams::codec::Codec,
    tokens: Issuer,
    hashing: Hashing,
    /// The hash an unknown email's login is checked against, so that it costs what a known
    /// one does and its answer time tells nothing.
    dummy_hash: String,
    by_email_and_address: throttle::Throttle,
    by_email: throttle::Throttle,
    by_address: throttle::Throttle,
    /// Sign-ups per client address.
    sign_ups: throttle::Throttle,
    trusted_proxies: Vec<Proxy>,
    /// Sign-ups one at a time: the email check and the insert must not interleave.
    signing_up: tokio::sync::Mutex<()>,
}

/// A running auth service.
#[derive(Debug)]
pub struct Running {
    server: web::Server,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops serving, then publishes what the outbox still holds (for up to 5 s).
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the server had failed.
    pub async fn stop(self) -> Result<()> {
        let served = self.server.stop().await;
        streams::outbox::stop_within(
            self.stop_relay,
            self.relay,
            std::time::Duration::from_secs(5),
        )
        .await;
        Ok(served?)
    }
}

/// Starts the service; it runs until [`Running::stop`].
///
/// # Errors
///
/// When the store, the producer or the listener cannot be set up.
pub async fn start(settings: Settings) -> Result<Running> {
    let store = settings.service.data.open()?;
    let codec = settings.service.codec()?;
    let producer = Producer::new(&settings.service.brokers, codec.clone(), &[])?;
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(streams::outbox::relay(
        store.outbox().clone(),
        producer,
        None,
        relay_stopped,
    ));
    let dummy_hash = settings
        .hashing
        .run(|| hash(&uuid::Uuid::new_v4().to_string()))
        .await
        .map_err(|e| Error::Hashing(e.to_string()))?
        .map_err(Error::Hashing)?;
    let limits = settings.throttle;
    let auth = Arc::new(Auth {
        store,
        codec,
        tokens: settings.tokens,
        hashing: settings.hashing,
        dummy_hash,
        by_email_and_address: throttle::Throttle::new(
            limits.per_email_and_address,
            limits.window,
            throttle::CAPACITY,
        ),
        by_email: throttle::Throttle::new(limits.per_email, limits.window, throttle::CAPACITY),
        by_address: throttle::Throttle::new(limits.per_address, limits.window, throttle::CAPACITY),
        sign_ups: throttle::Throttle::new(
            limits.sign_ups_per_address,
            limits.window,
            throttle::CAPACITY,
        ),
        trusted_proxies: settings.trusted_proxies,
        signing_up: tokio::sync::Mutex::new(()),
    });
    let router = web::api(
        Router::new()
            .route("/v1/users", post(sign_up))
            .route("/v1/sessions", post(log_in))
            .route(token::JWKS_PATH, get(jwks))
            .route("/health", get(|| async { "ok" })),
    )
    .with_state(auth);
    let server = web::Server::bind(settings.listen, router).await?;
    tracing::info!(url = %server.url(), "Auth service listening");
    Ok(Running {
        server,
        stop_relay,
        relay,
    })
}

/// Runs the service until `shutdown`.
///
/// # Errors
///
/// As [`start`].
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<()> {
    let running = start(settings).await?;
    shutdown.await;
    running.stop().await
}

/// A sign-up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignUp {
    email: String,
    password: String,
    display_name: String,
}

/// A stored user.
#[derive(Debug, Serialize, Deserialize)]
struct User {
    user_id: String,
    email: String,
    display_name: String,
    password_hash: String,
    registered_at: i64,
}

/// The public view of a user.
#[derive(Debug, Serialize)]
struct UserView {
    user_id: String,
    email: String,
    display_name: String,
}

/// A refusal: the one JSON error shape, with `Retry-After` when waiting helps (429, 503).
#[derive(Debug)]
struct Refusal {
    error: ApiError,
    retry_after: Option<Duration>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

impl From<hashing::Busy> for Refusal {
    fn from(busy: hashing::Busy) -> Self {
        Refusal {
            error: ApiError::unavailable(busy.to_string()),
            retry_after: Some(Duration::from_secs(1)),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client retrying at once would be refused again.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// 429 for `wait` more.
fn throttled(wait: Duration) -> Refusal {
    Refusal {
        error: ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many failed logins; wait before trying again",
        ),
        retry_after: Some(wait),
    }
}

/// 429 for `wait` more, for a client that signed up too often.
fn too_many_sign_ups(wait: Duration) -> Refusal {
    Refusal {
        error: ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many sign-ups from this client; wait before trying again",
        ),
        retry_after: Some(wait),
    }
}

/// Characters that make text read otherwise than it is stored: controls (Cc), format
/// characters (Cf: the bidirectional overrides, embeddings, isolates and marks of Trojan Source,
/// CVE-2021-42574, and the invisible ones, zero-width spaces and joiners, the word joiner, the
/// byte order mark, the soft hyphen) and the line and paragraph separators (Zl, Zp). By general
/// category rather than a list, so that every such character is refused, not just the known.
fn is_deceptive(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// 400 naming `field` when `text` holds a [deceptive](is_deceptive) character.
fn refuse_deceptive(field: &str, text: &str) -> Result<(), ApiError> {
    match text.chars().find(|c| is_deceptive(*c)) {
        Some(c) => Err(ApiError::invalid(
            field,
            format!(
                "must not contain control, invisible or bidirectional formatting characters \
                 (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// Checks an email address's shape (the rest is the mail system's business) and gives its one
/// spelling: NFC, so that an `é` typed as one character or as `e` and a combining accent is one
/// address, not two accounts that look the same.
fn check_email(email: &str) -> Result<String, ApiError> {
    use unicode_normalization::UnicodeNormalization as _;
    refuse_deceptive("email", email)?;
    let email = email.trim().nfc().collect::<String>().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
                && domain.matches('@').count() == 0
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid(
            "email",
            "must be an address like name@example.com, at most 254 characters",
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    if !(10..=128).contains(&length) {
        return Err(ApiError::invalid(
            "password",
            "must be 10 to 128 characters long",
        ));
    }
    if !password.chars().any(char::is_alphabetic) || !password.chars().any(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "password",
            "must contain at least one letter and one digit",
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<String, ApiError> {
    refuse_deceptive("display_name", name)?;
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > 100 {
        return Err(ApiError::invalid(
            "display_name",
            "must be 1 to 100 characters, without control characters",
        ));
    }
    Ok(name.to_owned())
}

/// An argon2 hash of `password` with a fresh salt (slow: run it through [`Hashing`]).
fn hash(password: &str) -> Result<String, String> {
    let salt =
        SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (slow: run it through [`Hashing`]).
fn matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

async fn sign_up(
    State(auth): State<Arc<Auth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<SignUp>,
) -> Result<impl IntoResponse, Refusal> {
    let email = check_email(&request.email)?;
    check_password(&request.password)?;
    let display_name = check_name(&request.display_name)?;
    // Every sign-up costs a hash, so each counts against its client whatever its outcome:
    // one client cannot fill the hashing gate with sign-ups and starve everyone's logins.
    let address = client::throttle_key(client::address(peer, &headers, &auth.trusted_proxies));
    auth.sign_ups
        .reserve(&address, Instant::now())
        .map_err(too_many_sign_ups)?
        .failed();
    let email_key = format!("email/{email}");
    // Checked before the hash too (and again below, in turn): a taken email costs no argon2.
    if taken(&auth.store, &email_key)? {
        return Err(registered(&email).into());
    }
    let password = request.password;
    let password_hash = auth
        .hashing
        .run(move || hash(&password))
        .await?
        .map_err(ApiError::internal)?;

    let _one_at_a_time = auth.signing_up.lock().await;
    if taken(&auth.store, &email_key)? {
        return Err(registered(&email).into());
    }
    let user = User {
        user_id: uuid::Uuid::new_v4().to_string(),
        email: email.clone(),
        display_name,
        password_hash,
        registered_at: events::now_millis(),
    };
    let registered = UserRegistered {
        user_id: user.user_id.clone(),
        email: user.email.clone(),
        display_name: user.display_name.clone(),
        registered_at: user.registered_at,
    };
    let entry = producer::record(
        &auth.codec,
        topics::USERS,
        &registered,
        &Metadata::new(&user.user_id),
    )
    .await
    .map_err(|e| ApiError::unavailable(format!("the schema registry is unavailable: {e}")))?;
    let mut effects = Effects::default();
    effects.put(email_key.into_bytes(), user.user_id.clone().into_bytes());
    effects.put(
        format!("user/{}", user.user_id).into_bytes(),
        serde_json::to_vec(&user).map_err(ApiError::internal)?,
    );
    effects.emit(entry);
    auth.store
        .commit_local(effects)
        .map_err(ApiError::internal)?;
    tracing::info!(user_id = %user.user_id, "User registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserView {
            user_id: user.user_id,
            email: user.email,
            display_name: user.display_name,
        }),
    ))
}

/// Whether the user key `email_key` is taken.
fn taken(store: &Store, email_key: &str) -> Result<bool, ApiError> {
    Ok(store
        .get(email_key.as_bytes())
        .map_err(ApiError::internal)?
        .is_some())
}

/// 409: `email` belongs to a user already.
fn registered(email: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("email: {email} is already registered"),
    )
}

/// A login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    email: String,
    password: String,
}

/// A session: the bearer token and when it expires.
#[derive(Debug, Serialize)]
struct Session {
    token: String,
    token_type: &'static str,
    expires_at: i64,
    user_id: String,
}

async fn log_in(
    State(auth): State<Arc<Auth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<LogIn>,
) -> Result<impl IntoResponse, Refusal> {
    let email = check_email(&request.email)?;
    let address = client::throttle_key(client::address(peer, &headers, &auth.trusted_proxies));
    let pair = format!("{email} {address}");
    let now = Instant::now();
    // Before any hash: a throttled guesser costs no argon2. Each attempt counts from here, so
    // guesses in flight at once cannot pass the limit; a success or a refusal before the
    // outcome (503, a dropped request) takes its attempt back.
    let by_pair = auth
        .by_email_and_address
        .reserve(&pair, now)
        .map_err(throttled)?;
    let by_email = auth.by_email.reserve(&email, now).map_err(throttled)?;
    let by_address = auth.by_address.reserve(&address, now).map_err(throttled)?;
    let user = match auth
        .store
        .get(format!("email/{email}").as_bytes())
        .map_err(ApiError::internal)?
    {
        None => None,
        Some(user_id) => Some(
            auth.store
                .get(&[b"user/".as_slice(), &user_id].concat())
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::internal("a user's email has no user"))
                .and_then(|bytes| {
                    serde_json::from_slice::<User>(&bytes).map_err(|e| {
                        ApiError::internal(format!("a stored user is unreadable: {e}"))
                    })
                })?,
        ),
    };
    // An unknown email is checked against the stand-in hash: the same work, the same time.
    let hash = user
        .as_ref()
        .map_or_else(|| auth.dummy_hash.clone(), |u| u.password_hash.clone());
    let password = request.password;
    let matched = auth.hashing.run(move || matches(&password, &hash)).await?;
    let Some(user) = user.filter(|_| matched) else {
        by_pair.failed();
        by_email.failed();
        by_address.failed();
        // One answer for an unknown email and a wrong password: no hint which it was.
        return Err(ApiError::unauthorized("wrong email or password").into());
    };
    drop((by_pair, by_email, by_address));
    auth.by_email_and_address.forget(&pair);
    auth.by_email.forget(&email);
    let (token, expires_at) = auth
        .tokens
        .issue(&user.user_id, token::now())
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Session {
            token,
            token_type: "Bearer",
            expires_at,
            user_id: user.user_id,
        }),
    ))
}

/// The public keys tokens are checked with (RFC 7517), every key that may have signed a token
/// still alive.
async fn jwks(State(auth): State<Arc<Auth>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(auth.tokens.jwks()),
    )
}
