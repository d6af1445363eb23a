//! The auth service: sign-up and login over HTTP. Passwords are hashed with argon2 in the
//! service's own store; login answers a signed, expiring token (see [`token`]); a sign-up
//! publishes `UserRegistered` on `users` through the store's outbox, so the event is never lost
//! and never sent for a user that was not stored.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Router, response::IntoResponse};
use events::{UserRegistered, topics};
use serde::{Deserialize, Serialize};
use streams::kafka::headers::Metadata;
use streams::kafka::producer::{self, Producer};
use streams::store::{Effects, Store};
use web::{ApiError, Json};

pub use token::Signer;

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
}

impl Error {
    /// Whether starting again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retriable(),
            Error::Http(e) => e.is_retriable(),
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
    /// The token key, shared with the gateway.
    pub tokens: Signer,
}

struct Auth {
    store: Store,
    codec: streams::codec::Codec,
    tokens: Signer,
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
    let auth = Arc::new(Auth {
        store,
        codec,
        tokens: settings.tokens,
        signing_up: tokio::sync::Mutex::new(()),
    });
    let router = web::api(
        Router::new()
            .route("/v1/users", post(sign_up))
            .route("/v1/sessions", post(log_in))
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

/// Checks an email address's shape (the rest is the mail system's business).
fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_ascii_lowercase();
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
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "display_name",
            "must be 1 to 100 characters, without control characters",
        ));
    }
    Ok(name.to_owned())
}

async fn sign_up(
    State(auth): State<Arc<Auth>>,
    Json(request): Json<SignUp>,
) -> Result<impl IntoResponse, ApiError> {
    let email = check_email(&request.email)?;
    check_password(&request.password)?;
    let display_name = check_name(&request.display_name)?;
    let password = request.password;
    // Hashing is deliberately slow: off the async workers.
    let password_hash = tokio::task::spawn_blocking(move || {
        let salt =
            SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes()).map_err(|e| e.to_string())?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;

    let _one_at_a_time = auth.signing_up.lock().await;
    let email_key = format!("email/{email}");
    if auth
        .store
        .get(email_key.as_bytes())
        .map_err(ApiError::internal)?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("email: {email} is already registered"),
        ));
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
    Json(request): Json<LogIn>,
) -> Result<impl IntoResponse, ApiError> {
    // One answer for an unknown email and a wrong password: no hint which it was.
    let refused = || ApiError::unauthorized("wrong email or password");
    let email = request.email.trim().to_ascii_lowercase();
    let Some(user_id) = auth
        .store
        .get(format!("email/{email}").as_bytes())
        .map_err(ApiError::internal)?
    else {
        return Err(refused());
    };
    let user: User = auth
        .store
        .get(&[b"user/".as_slice(), &user_id].concat())
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("a user's email has no user"))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::internal(format!("a stored user is unreadable: {e}")))
        })?;
    let hash = user.password_hash.clone();
    let password = request.password;
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .map_err(ApiError::internal)?;
    if !matches {
        return Err(refused());
    }
    let (token, expires_at) = auth.tokens.issue(&user.user_id, token::now());
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
