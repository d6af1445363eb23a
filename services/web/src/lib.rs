//! The one JSON API shape of tripstream's HTTP services: bodies and queries parsed strictly
//! with the failing field named, and every error answered as
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// An error answer: status, a stable code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, snake_case.
    pub code: &'static str,
    /// Says what is wrong and, for input, which field.
    pub message: String,
}

impl ApiError {
    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or a value is invalid.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {message}"),
        )
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: a dependency (broker, registry, another service) is unavailable; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500, logged; the client sees no internals.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "Internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body parsed into `T`; a failure answers 400 naming the field (`flight.seats`), or 413
/// or 415.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is larger than {MAX_BODY} bytes"),
                )
            } else {
                ApiError::invalid("body", e.body_text())
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// The layer that caps request bodies at [`MAX_BODY`]; every router adds it.
pub fn body_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(MAX_BODY)
}

/// Parses JSON strictly: the error names the field path and the position.
///
/// # Errors
///
/// 400 with the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = match path.as_str() {
            "." => "body".to_owned(),
            p if p.starts_with('[') => format!("body{p}"),
            _ => path,
        };
        ApiError::invalid(&field, e.inner())
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data: {e}")))?;
    Ok(value)
}

/// A query string parsed into `T`; a failure answers 400 naming the parameter.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::invalid("query", e.body_text()))
    }
}

/// The answer to a path no route has.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

/// Why an HTTP server could not start, or failed as it ran.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address cannot be bound.
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server failed.
    Serve(std::io::Error),
}

impl ServeError {
    /// Whether starting again later may succeed: only when the address is taken for now.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ServeError::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Serve(e) => write!(f, "serving failed: {e}"),
        }
    }
}

// No `source`: the cause is part of the message, so that error chains (`{:#}`) do not print
// it twice.
impl std::error::Error for ServeError {}

/// A running HTTP server.
#[derive(Debug)]
pub struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How long a stopping server waits for requests in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Server {
    /// Binds `addr` and serves `router` there until [`Server::stop`].
    ///
    /// # Errors
    ///
    /// [`ServeError::Listen`] when the address cannot be bound.
    pub async fn bind(
        addr: std::net::SocketAddr,
        router: axum::Router,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        Server::start(listener, router).map_err(ServeError::Serve)
    }

    /// Serves `router` on `listener` until [`Server::stop`].
    ///
    /// # Errors
    ///
    /// When the listener's address cannot be read.
    pub fn start(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // With the peer's address, for handlers that throttle per client (auth's login).
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        });
        Ok(Server { addr, stop, task })
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: requests in flight get a moment to finish, idle connections are closed.
    ///
    /// # Errors
    ///
    /// [`ServeError::Serve`] when the server had failed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(DRAIN, &mut self.task).await {
            Ok(Ok(served)) => served.map_err(ServeError::Serve),
            Ok(Err(e)) => Err(ServeError::Serve(std::io::Error::other(e))),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}
