//! Registry errors, each with the HTTP status and Confluent `error_code` clients expect.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use streams::avro::schema::SchemaError;

/// An error answered to an HTTP client as `{"error_code": N, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {code})")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// Confluent's `error_code`.
    pub code: i64,
    /// A human sentence.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        ApiError {
            status: status.as_u16(),
            code,
            message: message.into(),
        }
    }

    /// 40401
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    /// 40402
    pub fn version_not_found(subject: &str, version: Option<i32>) -> Self {
        let which = version.map_or_else(|| "latest".to_owned(), |v| v.to_string());
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {which} not found for subject '{subject}'."),
        )
    }

    /// 40403
    pub fn schema_not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {what} not found."),
        )
    }

    /// 40404
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently."
            ),
        )
    }

    /// 40405
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted."),
        )
    }

    /// 40406
    pub fn version_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40406,
            format!(
                "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently."
            ),
        )
    }

    /// 40407
    pub fn version_not_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40407,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted."
            ),
        )
    }

    /// 40408
    pub fn subject_level_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured."),
        )
    }

    /// 409
    pub fn incompatible(subject: &str, details: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                details.join("; ")
            ),
        )
    }

    /// 42201
    pub fn invalid_schema(error: &SchemaError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {error}"),
        )
    }

    /// 42201 for requests that carry no usable schema at all.
    pub fn unusable_schema(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, reason)
    }

    /// 42202
    pub fn invalid_version(text: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{text}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    /// 42203
    pub fn invalid_level(text: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level '{text}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL and FULL_TRANSITIVE"
            ),
        )
    }

    /// 42204
    pub fn invalid_mode(text: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
            format!("Invalid mode '{text}'. Valid values are READWRITE and READONLY"),
        )
    }

    /// 42205
    pub fn read_only() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            "The registry is in READONLY mode; set the mode to READWRITE to make changes.",
        )
    }

    /// 42209, as Confluent's registry answers a schema its log cannot hold.
    pub fn schema_too_large(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42209,
            format!("Schema too large: {reason}"),
        )
    }

    /// 408 for a body not sent in full within `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            408,
            format!("The request body was not sent within {} s", limit.as_secs()),
        )
    }

    /// 503 when every place for a schema body is taken for longer than a request waits.
    pub fn busy(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, 503, reason)
    }

    /// 400 for bodies that are not JSON of the expected shape.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 400, reason)
    }

    /// 404 for paths the API does not have.
    pub fn no_such_endpoint(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            404,
            format!("HTTP 404 Not Found: {path}"),
        )
    }

    /// 405 for a method a path does not accept.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            405,
            "HTTP 405 Method Not Allowed",
        )
    }

    /// 50001
    pub fn store(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {reason}"),
        )
    }

    /// 50002
    pub fn timeout(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50002,
            format!("Operation timed out: {reason}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "error_code": self.code, "message": self.message }).to_string();
        (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                streams::registry::CONTENT_TYPE,
            )],
            body,
        )
            .into_response()
    }
}
