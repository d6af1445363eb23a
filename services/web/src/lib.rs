//! The one JSON API shape of tripstream's HTTP services: bodies, paths and queries parsed
//! strictly with the failing field named, and every error answered as
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Router;
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

    /// 405.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this resource does not take that method",
        )
    }

    /// 413: the body is over [`MAX_BODY`].
    pub fn too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    }

    /// 415: the body is not sent as JSON.
    pub fn not_json() -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        )
    }

    /// 422: the request is well formed but contradicts what it refers to (an idempotency key
    /// reused for another request).
    pub fn unprocessable(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            format!("{field}: {message}"),
        )
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
            .is_some_and(is_json);
        if !json {
            return Err(ApiError::not_json());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::invalid("body", e.body_text())
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Whether a `Content-Type` is JSON: `application/json` or a structured `+json` type
/// (RFC 6839), with any parameters. A prefix match would take `application/jsonx` too.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|subtype| subtype.strip_suffix("+json"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// A request body as it came, up to [`MAX_BODY`] (413 in the one shape beyond): for requests
/// passed on as they are.
#[derive(Debug, Clone)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large()
                } else {
                    ApiError::invalid("body", e.body_text())
                }
            })
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
    let value: T = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| ApiError::invalid(&field_of(&e.path().to_string()), e.inner()))?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data: {e}")))?;
    Ok(value)
}

/// The field a parse error names, from serde's path: the body itself for the root, and the
/// deepest known field when the text broke off before a key was read (serde writes `?` there).
fn field_of(path: &str) -> String {
    let mut known = path;
    while let Some(parent) = known
        .strip_suffix(".?")
        .or_else(|| known.strip_suffix("[?]"))
    {
        known = parent;
    }
    match known {
        "." | "?" | "" => "body".to_owned(),
        p if p.starts_with('[') => format!("body{p}"),
        p => p.to_owned(),
    }
}

/// A path parameter parsed into `T`; a failure answers 400 naming the parameter (a segment
/// that is not UTF-8 included).
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.into_kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => {
                    ApiError::invalid(&key, "must be UTF-8 text")
                }
                ErrorKind::ParseErrorAtKey {
                    key, expected_type, ..
                } => ApiError::invalid(&key, format!("must be a {expected_type}")),
                ErrorKind::DeserializeError { key, message, .. } => {
                    ApiError::invalid(&key, message)
                }
                other => ApiError::invalid("path", other),
            }),
            Err(other) => Err(ApiError::invalid("path", other.body_text())),
        }
    }
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

/// The answer to a method a route does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// What every router of tripstream's JSON services ends with: 404 and 405 for what no route
/// takes, the body limit, and a last layer that puts any error answer not already JSON
/// (axum's own rejections, which are plain text) into the one shape.
pub fn api<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit())
        .layer(axum::middleware::map_response(one_shape))
}

/// The longest plain-text error body carried over into the message.
const MAX_MESSAGE: usize = 1024;

/// An error answer that is not JSON, answered again in the one shape, its text as the message.
async fn one_shape(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::not_json(),
        StatusCode::NOT_FOUND => ApiError::not_found("no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        // No internals: a server error says only what its status says.
        s if s.is_server_error() => ApiError::new(
            s,
            if s == StatusCode::SERVICE_UNAVAILABLE {
                "unavailable"
            } else {
                "internal"
            },
            s.canonical_reason().unwrap_or("server error"),
        ),
        _ => {
            let text = axum::body::to_bytes(response.into_body(), MAX_MESSAGE)
                .await
                .ok()
                .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
                .filter(|text| !text.trim().is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            let code = match status {
                StatusCode::BAD_REQUEST => "invalid_request",
                StatusCode::UNAUTHORIZED => "unauthorized",
                _ => "error",
            };
            ApiError::new(status, code, text)
        }
    };
    error.into_response()
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
