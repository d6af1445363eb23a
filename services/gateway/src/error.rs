//! The gateway's one error type: what can stop it from starting or make it fail as it runs.
//!
//! Errors of a request are not here: each HTTP handler answers those itself, as a
//! [`web::ApiError`] in the one JSON error shape.

use std::fmt;

/// A `Result` whose error defaults to the gateway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop the gateway.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The runtime failed: the views' store, the producer, the codec or the views' processor.
    Runtime(streams::Error),
    /// The HTTP server could not start, or failed.
    Http(web::ServeError),
    /// The HTTP client that calls the auth service cannot be built.
    HttpClient(reqwest::Error),
    /// The task that keeps the views ended without returning (it panicked).
    Views(tokio::task::JoinError),
}

impl Error {
    /// Whether starting again later may succeed: when the runtime says so, or the address is
    /// only taken for now.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retriable(),
            Error::Http(e) => e.is_retriable(),
            Error::HttpClient(_) | Error::Views(_) => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Runtime(e) => e.fmt(f),
            Error::Http(e) => e.fmt(f),
            Error::HttpClient(e) => write!(f, "cannot build an HTTP client: {e}"),
            Error::Views(e) => write!(f, "the views failed: {e}"),
        }
    }
}

// No `source`: the cause is part of the message, so that error chains (`{:#}`) do not print
// it twice, as in the runtime's own errors.
impl std::error::Error for Error {}

impl From<streams::Error> for Error {
    fn from(e: streams::Error) -> Self {
        Error::Runtime(e)
    }
}

impl From<web::ServeError> for Error {
    fn from(e: web::ServeError) -> Self {
        Error::Http(e)
    }
}
