//! The Confluent Schema Registry REST API, served from the replicated state.
//!
//! Bodies are bounded ([`MAX_BODY_BYTES`]), and schemas are parsed and checked on tokio's
//! blocking pool, so large schemas do not hold up the async workers that answer reads. At
//! most [`MAX_BODIES`] schema bodies are read or held at once and one schema per core is
//! parsed at a time; other requests carrying one wait with their bodies unread, so memory
//! stays bounded however many arrive at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State as Extract};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use streams::avro::compat::{self, Level};
use streams::avro::schema::Schema;
use streams::registry::CONTENT_TYPE;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::log::Log;
use crate::state::{self, Command, Mode, State};

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The state, written only by the log's applier.
    pub state: Arc<RwLock<State>>,
    /// The log, for writes.
    pub log: Arc<Log>,
    /// Permits to parse a schema, one per core.
    pub parsing: Arc<Semaphore>,
    /// Places for a schema body being read or held, [`MAX_BODIES`].
    pub bodies: Arc<Semaphore>,
}

impl App {
    /// Everything the handlers share, with one parse permit per core.
    pub fn new(state: Arc<RwLock<State>>, log: Arc<Log>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        App {
            state,
            log,
            parsing: Arc::new(Semaphore::new(cores)),
            bodies: Arc::new(Semaphore::new(MAX_BODIES)),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Only the applier writes, and `State::apply` does not panic on any command.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Answer = Result<Response, ApiError>;
type Params = Query<HashMap<String, String>>;

/// The largest request body read, in bytes: twice what a schema can take in the log
/// ([`crate::log::MAX_RECORD_BYTES`]), room for a pretty-printed one, and a bound on the
/// parse work and memory one request can cost.
pub const MAX_BODY_BYTES: usize = 2 * crate::log::MAX_RECORD_BYTES;

/// Schema bodies read or held at once at most: with [`MAX_BODY_BYTES`] each, 128 MB, however
/// many connections send one.
pub const MAX_BODIES: usize = 64;

/// The router of the whole API.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { json_response(&json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/schemas/types",
            get(|| async { json_response(&json!(["AVRO"])) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatible_with_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatible_with_one),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(get_mode).put(put_mode))
        .fallback(|uri: Uri| async move { ApiError::no_such_endpoint(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(confluent_shape))
        .with_state(app)
}

/// What axum answers itself (a path segment that is not UTF-8, a body over its limit) is
/// plain text: answered again in Confluent's error shape, with axum's text as the message.
async fn confluent_shape(response: Response) -> Response {
    let status = response.status();
    let ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == CONTENT_TYPE.as_bytes());
    if ours || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("Error");
    ApiError {
        status: status.as_u16(),
        code: i64::from(status.as_u16()),
        message: if text.trim().is_empty() {
            format!("HTTP {} {reason}", status.as_u16())
        } else {
            format!("HTTP {} {reason}: {}", status.as_u16(), text.trim())
        },
    }
    .into_response()
}

fn json_response(value: &Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], value.to_string()).into_response()
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `latest` and `-1` mean the latest version (`None`); otherwise 1..=2^31-1.
fn parse_version(text: &str) -> Result<Option<i32>, ApiError> {
    if text == "latest" || text == "-1" {
        return Ok(None);
    }
    match text.parse::<i32>() {
        Ok(v) if v >= 1 => Ok(Some(v)),
        _ => Err(ApiError::invalid_version(text)),
    }
}

fn parse_id(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| ApiError::schema_not_found(text))
}

/// Parses a JSON request body; `what` names the field the body is for, in the error.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "The request body is not a JSON object with a {what}: {e}"
        ))
    })
}

/// The bytes of a body carrying a schema: one over [`MAX_BODY_BYTES`] is 42209.
fn schema_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::schema_too_large(format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes"
            ))
        }
        other => ApiError::bad_request(format!("The request body could not be read: {other}")),
    })
}

/// How long a client may take to send a body carrying a schema.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs CPU-bound work (parsing or checking a schema) on the blocking pool once one of the
/// per-core permits is free. The permit goes with the work, so a client that hangs up does not
/// free it while the work still runs.
async fn off_workers<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = app
        .parsing
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::store("the registry is shutting down"))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::store(format!("the schema could not be processed: {e}")))?
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// Reads a request body holding a schema (within [`BODY_TIMEOUT`], before any permit is taken:
/// a client sending slowly holds its own connection only) and parses it on the blocking pool
/// once a parse permit is free. Unknown fields are accepted, as Confluent's newer clients send
/// metadata and rule sets along.
async fn schema_from_body(app: &App, request: Request) -> Result<Arc<Schema>, ApiError> {
    let (place, body) = read_schema_body(&app.bodies, request, BODY_TIMEOUT).await?;
    off_workers(app, move || {
        let _place = place;
        parse_schema_body(&body).map(Arc::new)
    })
    .await
}

/// Reads a schema body once one of the `bodies` places is free: waits `wait` for a place
/// (then 503) and [`BODY_TIMEOUT`] for the body (then 408). The place goes with the body.
async fn read_schema_body(
    bodies: &Arc<Semaphore>,
    request: Request,
    wait: std::time::Duration,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Bytes), ApiError> {
    let place = tokio::time::timeout(wait, bodies.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::busy(format!(
                "Every place for a schema body was taken for {} s; try again",
                wait.as_secs()
            ))
        })?
        .map_err(|_| ApiError::store("the registry is shutting down"))?;
    let body = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &()))
        .await
        .map_err(|_| ApiError::body_timeout(BODY_TIMEOUT))?;
    Ok((place, schema_bytes(body)?))
}

fn parse_schema_body(body: &Bytes) -> Result<Schema, ApiError> {
    let body: SchemaBody = parse_body(body, "schema")?;
    if let Some(kind) = body.schema_type.as_deref()
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(ApiError::unusable_schema(format!(
            "Schema type {kind} is not supported; this registry stores AVRO schemas."
        )));
    }
    if !body.references.is_empty() {
        return Err(ApiError::unusable_schema(
            "Schema references are not supported by this registry; inline the referenced types.",
        ));
    }
    let text = body
        .schema
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::unusable_schema("Empty schema"))?;
    Schema::parse(&text).map_err(|e| ApiError::invalid_schema(&e))
}

async fn list_subjects(Extract(app): Extract<App>, Query(params): Params) -> Answer {
    let state = app.read();
    Ok(json_response(&json!(
        state.subjects(flag(&params, "deleted"))
    )))
}

async fn list_versions(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let state = app.read();
    let deleted = flag(&params, "deleted");
    if !state.has_subject(&subject, deleted) {
        return Err(ApiError::subject_not_found(&subject));
    }
    let versions: Vec<i32> = state
        .versions(&subject, deleted)
        .iter()
        .map(|v| v.version)
        .collect();
    Ok(json_response(&json!(versions)))
}

fn version_body(
    state: &State,
    subject: &str,
    version: &str,
    deleted: bool,
) -> Result<Value, ApiError> {
    let number = parse_version(version)?;
    if !state.has_subject(subject, true) {
        return Err(ApiError::subject_not_found(subject));
    }
    let found = state
        .version(subject, number, deleted)
        .ok_or_else(|| ApiError::version_not_found(subject, number))?;
    let schema = state
        .schema(found.id)
        .ok_or_else(|| ApiError::schema_not_found(&found.id.to_string()))?;
    Ok(json!({
        "subject": subject,
        "version": found.version,
        "id": found.id,
        "schema": schema.schema.canonical(),
    }))
}

async fn get_version(
    Extract(app): Extract<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let state = app.read();
    Ok(json_response(&version_body(
        &state,
        &subject,
        &version,
        flag(&params, "deleted"),
    )?))
}

async fn get_version_schema(
    Extract(app): Extract<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let state = app.read();
    let body = version_body(&state, &subject, &version, flag(&params, "deleted"))?;
    let text = body["schema"].as_str().unwrap_or_default().to_owned();
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn referenced_by(
    Extract(app): Extract<App>,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let state = app.read();
    version_body(&state, &subject, &version, false)?;
    // References are not supported, so no schema can refer to this one.
    Ok(json_response(&json!([])))
}

async fn register(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    request: Request,
) -> Answer {
    let schema = schema_from_body(&app, request).await?;
    {
        // Re-registering is a read: answer without a round trip through the log.
        let state = app.read();
        if let Some(found) = state.find_in_subject(&subject, schema.canonical(), false) {
            return Ok(json_response(&json!({ "id": found.id })));
        }
    }
    Ok(json_response(&app.log.register(subject, schema).await?))
}

async fn lookup(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    Query(params): Params,
    request: Request,
) -> Answer {
    let schema = schema_from_body(&app, request).await?;
    let state = app.read();
    let deleted = flag(&params, "deleted");
    if !state.has_subject(&subject, deleted) {
        return Err(ApiError::subject_not_found(&subject));
    }
    let found = state
        .find_in_subject(&subject, schema.canonical(), deleted)
        .ok_or_else(|| ApiError::schema_not_found("not found under this subject;"))?;
    Ok(json_response(&json!({
        "subject": subject,
        "version": found.version,
        "id": found.id,
        "schema": schema.canonical(),
    })))
}

async fn delete_subject(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let permanent = flag(&params, "permanent");
    Ok(json_response(
        &app.log
            .propose(Command::DeleteSubject { subject, permanent })
            .await?,
    ))
}

async fn delete_version(
    Extract(app): Extract<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let version = parse_version(&version)?;
    let permanent = flag(&params, "permanent");
    let answer = app
        .log
        .propose(Command::DeleteVersion {
            subject,
            version,
            permanent,
        })
        .await?;
    Ok(json_response(&answer))
}

async fn schema_by_id(Extract(app): Extract<App>, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let body = app.read().schema(id).map(|s| s.body.clone());
    match body {
        Some(body) => {
            Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], Body::from(body)).into_response())
        }
        None => Err(ApiError::schema_not_found(&id.to_string())),
    }
}

async fn raw_schema_by_id(Extract(app): Extract<App>, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let state = app.read();
    let schema = state
        .schema(id)
        .ok_or_else(|| ApiError::schema_not_found(&id.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema.schema.canonical().to_owned(),
    )
        .into_response())
}

async fn subjects_by_id(Extract(app): Extract<App>, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let state = app.read();
    state
        .schema(id)
        .ok_or_else(|| ApiError::schema_not_found(&id.to_string()))?;
    let mut subjects: Vec<&str> = state.uses_of(id).into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    Ok(json_response(&json!(subjects)))
}

async fn versions_by_id(Extract(app): Extract<App>, Path(id): Path<String>) -> Answer {
    let id = parse_id(&id)?;
    let state = app.read();
    state
        .schema(id)
        .ok_or_else(|| ApiError::schema_not_found(&id.to_string()))?;
    let uses: Vec<Value> = state
        .uses_of(id)
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(json_response(&json!(uses)))
}

/// Checks `schema` against `against` on the blocking pool; the state's lock is not held.
async fn compatibility_answer(
    app: &App,
    level: Level,
    schema: Arc<Schema>,
    against: Vec<(i32, Arc<Schema>)>,
    verbose: bool,
) -> Answer {
    let answer = off_workers(app, move || {
        let refs: Vec<&Schema> = against.iter().map(|(_, s)| s.as_ref()).collect();
        let versions: Vec<i32> = against.iter().map(|(v, _)| *v).collect();
        let violations = compat::check(level, &schema, &refs);
        let mut answer = json!({ "is_compatible": violations.is_empty() });
        if verbose {
            answer["messages"] = json!(state::describe(&violations, &versions));
        }
        Ok(answer)
    })
    .await?;
    Ok(json_response(&answer))
}

async fn compatible_with_one(
    Extract(app): Extract<App>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    request: Request,
) -> Answer {
    let number = parse_version(&version)?;
    let schema = schema_from_body(&app, request).await?;
    let (level, against) = {
        let state = app.read();
        if !state.has_subject(&subject, false) {
            return Err(ApiError::subject_not_found(&subject));
        }
        let found = state
            .version(&subject, number, false)
            .ok_or_else(|| ApiError::version_not_found(&subject, number))?;
        let against: Vec<(i32, Arc<Schema>)> = state
            .active_schemas(&subject)
            .into_iter()
            .filter(|(v, _)| *v == found.version)
            .collect();
        (state.level_of(&subject), against)
    };
    compatibility_answer(&app, level, schema, against, flag(&params, "verbose")).await
}

async fn compatible_with_all(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    Query(params): Params,
    request: Request,
) -> Answer {
    let schema = schema_from_body(&app, request).await?;
    let (level, against) = {
        let state = app.read();
        (state.level_of(&subject), state.active_schemas(&subject))
    };
    compatibility_answer(&app, level, schema, against, flag(&params, "verbose")).await
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn level_from_body(body: &Bytes) -> Result<Level, ApiError> {
    let body: ConfigBody = parse_body(body, "compatibility")?;
    let text = body
        .compatibility
        .or(body.compatibility_level)
        .unwrap_or_default();
    text.parse().map_err(|_| ApiError::invalid_level(&text))
}

async fn get_global_config(Extract(app): Extract<App>) -> Answer {
    Ok(json_response(
        &json!({ "compatibilityLevel": app.read().global_level().as_str() }),
    ))
}

/// Proposes a config change. READONLY refuses it here, before it reaches the log, not where
/// the log is applied: a log written before this check replays as it did.
async fn set_level(app: &App, subject: Option<String>, level: Option<Level>) -> Answer {
    if app.read().mode() == Mode::Readonly {
        return Err(ApiError::read_only());
    }
    Ok(json_response(
        &app.log
            .propose(Command::SetLevel { subject, level })
            .await?,
    ))
}

async fn put_global_config(Extract(app): Extract<App>, body: Bytes) -> Answer {
    let level = level_from_body(&body)?;
    set_level(&app, None, Some(level)).await
}

async fn delete_global_config(Extract(app): Extract<App>) -> Answer {
    set_level(&app, None, None).await
}

async fn get_subject_config(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let state = app.read();
    match state.subject_level(&subject) {
        Some(level) => Ok(json_response(
            &json!({ "compatibilityLevel": level.as_str() }),
        )),
        None if flag(&params, "defaultToGlobal") => Ok(json_response(
            &json!({ "compatibilityLevel": state.global_level().as_str() }),
        )),
        None => Err(ApiError::subject_level_not_configured(&subject)),
    }
}

async fn put_subject_config(
    Extract(app): Extract<App>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    let level = level_from_body(&body)?;
    set_level(&app, Some(subject), Some(level)).await
}

async fn delete_subject_config(Extract(app): Extract<App>, Path(subject): Path<String>) -> Answer {
    // One guard: taking the lock twice in one expression could wait behind the applier's
    // write while holding the first read, which that write waits for.
    let unknown = {
        let state = app.read();
        state.subject_level(&subject).is_none() && !state.has_subject(&subject, true)
    };
    if unknown {
        return Err(ApiError::subject_not_found(&subject));
    }
    set_level(&app, Some(subject), None).await
}

async fn get_mode(Extract(app): Extract<App>) -> Answer {
    Ok(json_response(
        &json!({ "mode": app.read().mode().as_str() }),
    ))
}

#[derive(Deserialize)]
struct ModeBody {
    mode: Option<String>,
}

async fn put_mode(Extract(app): Extract<App>, body: Bytes) -> Answer {
    let body: ModeBody = parse_body(&body, "mode")?;
    let text = body.mode.unwrap_or_default();
    let mode = match text.to_ascii_uppercase().as_str() {
        "READWRITE" => Mode::Readwrite,
        "READONLY" => Mode::Readonly,
        _ => return Err(ApiError::invalid_mode(&text)),
    };
    Ok(json_response(
        &app.log.propose(Command::SetMode { mode }).await?,
    ))
}

/// Fuzz targets (bolero) for the request bodies: under `cargo test` each runs for a second on
/// random inputs; `cargo bolero test` runs one coverage-guided (README, "Fuzzing").
#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Body) -> Request {
        Request::builder()
            .method("POST")
            .uri("/subjects/s/versions")
            .body(body)
            .expect("request")
    }

    #[tokio::test]
    async fn a_schema_body_waits_for_a_place_and_is_refused_with_503_when_none_frees_in_time() {
        let bodies = Arc::new(Semaphore::new(1));
        let wait = std::time::Duration::from_millis(100);
        // A client that has sent its headers and not yet its body holds the one place.
        let (send, sent) = tokio::sync::oneshot::channel::<&'static [u8]>();
        let slow = Body::from_stream(futures::stream::once(async move {
            sent.await.map(Bytes::from_static)
        }));
        let first = tokio::spawn({
            let bodies = bodies.clone();
            async move { read_schema_body(&bodies, request(slow), wait).await }
        });
        while bodies.available_permits() > 0 {
            tokio::task::yield_now().await;
        }

        let refused = read_schema_body(&bodies, request(Body::from("{}")), wait)
            .await
            .expect_err("no place is free");
        assert_eq!(
            (refused.status, refused.code),
            (503, 503),
            "{}",
            refused.message
        );

        send.send(b"{\"schema\": \"\\\"int\\\"\"}")
            .expect("the reader waits");
        let (place, body) = first.await.expect("joined").expect("read");
        assert!(body.starts_with(b"{"));
        drop(place);
        let (_place, body) = read_schema_body(&bodies, request(Body::from("{}")), wait)
            .await
            .expect("a place is free again");
        assert_eq!(&body[..], b"{}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Every body parser answers a value or a 4xx, whatever the bytes.
    fn refused_with_a_4xx<T>(result: Result<T, ApiError>) {
        if let Err(error) = result {
            assert!(
                (400..500).contains(&error.status),
                "{} {}: {}",
                error.status,
                error.code,
                error.message
            );
        }
    }

    #[test]
    fn request_bodies_are_read_or_refused_with_a_4xx() {
        bolero::check!().for_each(|body: &[u8]| {
            let body = Bytes::copy_from_slice(body);
            refused_with_a_4xx(parse_schema_body(&body));
            refused_with_a_4xx(level_from_body(&body));
            refused_with_a_4xx(parse_body::<ModeBody>(&body, "mode"));
        });
    }

    #[test]
    fn any_schema_text_in_a_well_formed_body_is_parsed_or_refused_with_a_4xx() {
        bolero::check!().for_each(|text: &[u8]| {
            let body = serde_json::to_vec(&serde_json::json!({
                "schema": String::from_utf8_lossy(text),
            }))
            .expect("JSON");
            refused_with_a_4xx(parse_schema_body(&Bytes::from(body)));
        });
    }
}
