//! Client of a Confluent-compatible schema registry, with caches both ways.
//!
//! Ids are immutable in a registry, so id → schema and (subject, schema) → id are cached
//! forever: after warm-up the hot path of encoding and decoding makes no HTTP call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::avro::compat::Level;
use crate::avro::schema::Schema;
use crate::error::{Error, Result};
use crate::sync::{read, write};

/// The subject name of a record type on a topic (Confluent's TopicRecordNameStrategy: a topic
/// carries several record types, each evolving on its own).
pub fn subject_name(topic: &str, record: &str) -> String {
    format!("{topic}-{record}")
}

/// The media type of the registry API.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A registry client. Cloning shares the caches.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    by_id: Arc<RwLock<HashMap<u32, Arc<Schema>>>>,
    by_schema: Arc<RwLock<HashMap<(String, String), u32>>>,
}

/// A version of a subject.
#[derive(Debug, Clone, Deserialize)]
pub struct Version {
    /// The subject.
    pub subject: String,
    /// The version number.
    pub version: i32,
    /// The global schema id.
    pub id: u32,
    /// The schema text.
    pub schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    message: String,
}

impl Client {
    /// A client of the registry at `url` (`http://host:port`).
    ///
    /// # Errors
    ///
    /// [`Error::RegistryUnavailable`] when the URL is not an http URL.
    pub fn new(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(Error::RegistryUnavailable {
                url: url.to_owned(),
                reason: "the registry URL must start with http://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::RegistryUnavailable {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base,
            http,
            by_id: Arc::default(),
            by_schema: Arc::default(),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            request = request
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let unavailable = |reason: String| Error::RegistryUnavailable {
            url: url.clone(),
            reason,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| unavailable(format!("the answer is not JSON: {e}")));
        }
        if status == reqwest::StatusCode::NOT_FOUND
            && let Ok(body) = serde_json::from_str::<ErrorBody>(&text)
            && (body.error_code == 40401 || body.error_code == 40402 || body.error_code == 40403)
        {
            return Ok(None);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(Error::Registry {
                status: status.as_u16(),
                code: body.error_code,
                message: body.message,
            }),
            Err(_) => Err(unavailable(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))),
        }
    }

    /// The versions of a subject, oldest first; empty when the subject does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] or [`Error::RegistryUnavailable`].
    pub async fn versions(&self, subject: &str) -> Result<Vec<Version>> {
        let path = format!("/subjects/{}/versions", encode(subject));
        let Some(numbers) = self.call(reqwest::Method::GET, &path, None).await? else {
            return Ok(Vec::new());
        };
        let numbers: Vec<i32> =
            serde_json::from_value(numbers).map_err(|e| Error::RegistryUnavailable {
                url: format!("{}{path}", self.base),
                reason: format!("unexpected answer: {e}"),
            })?;
        let mut versions = Vec::with_capacity(numbers.len());
        for n in numbers {
            let path = format!("/subjects/{}/versions/{n}", encode(subject));
            if let Some(v) = self.call(reqwest::Method::GET, &path, None).await? {
                versions.push(serde_json::from_value(v).map_err(|e| {
                    Error::RegistryUnavailable {
                        url: format!("{}{path}", self.base),
                        reason: format!("unexpected answer: {e}"),
                    }
                })?);
            }
        }
        Ok(versions)
    }

    /// The level in force for a subject (its own, else the global one).
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] or [`Error::RegistryUnavailable`].
    pub async fn level(&self, subject: &str) -> Result<Level> {
        let path = format!("/config/{}?defaultToGlobal=true", encode(subject));
        let answer = match self.call(reqwest::Method::GET, &path, None).await {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(Error::Registry { code: 40408, .. }) => self
                .call(reqwest::Method::GET, "/config", None)
                .await?
                .unwrap_or_default(),
            Err(e) => return Err(e),
        };
        let level = answer
            .get("compatibilityLevel")
            .or_else(|| answer.get("compatibility"))
            .and_then(|v| v.as_str())
            .unwrap_or("BACKWARD");
        level.parse().map_err(
            |e: crate::avro::compat::UnknownLevel| Error::RegistryUnavailable {
                url: format!("{}{path}", self.base),
                reason: e.to_string(),
            },
        )
    }

    /// Sets a subject's compatibility level.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] or [`Error::RegistryUnavailable`].
    pub async fn set_level(&self, subject: &str, level: Level) -> Result<()> {
        let path = format!("/config/{}", encode(subject));
        self.call(
            reqwest::Method::PUT,
            &path,
            Some(json!({ "compatibility": level.as_str() })),
        )
        .await?;
        Ok(())
    }

    /// Registers a schema under a subject and returns its global id (cached).
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] (for example 409 when incompatible) or
    /// [`Error::RegistryUnavailable`].
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<u32> {
        let key = (subject.to_owned(), schema.canonical().to_owned());
        if let Some(id) = read(&self.by_schema).get(&key) {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", encode(subject));
        let answer = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "schema": schema.canonical() })),
            )
            .await?
            .unwrap_or_default();
        let id = answer
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| Error::RegistryUnavailable {
                url: format!("{}{path}", self.base),
                reason: format!("the answer has no schema id: {answer}"),
            })?;
        write(&self.by_schema).insert(key, id);
        write(&self.by_id).insert(id, Arc::new(schema.clone()));
        Ok(id)
    }

    /// The schema with a global id (cached).
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] with code 40403 when no schema has that id, [`Error::Schema`] when
    /// the registry holds a schema this runtime cannot parse, or [`Error::RegistryUnavailable`].
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>> {
        if let Some(schema) = read(&self.by_id).get(&id) {
            return Ok(schema.clone());
        }
        let path = format!("/schemas/ids/{id}");
        let answer = self
            .call(reqwest::Method::GET, &path, None)
            .await?
            .ok_or_else(|| Error::Registry {
                status: 404,
                code: 40403,
                message: format!("Schema {id} not found"),
            })?;
        let text = answer
            .get("schema")
            .and_then(|s| s.as_str())
            .unwrap_or_default();
        let schema =
            Arc::new(Schema::parse(text).map_err(|e| e.in_source(format!("schema id {id}")))?);
        write(&self.by_id).insert(id, schema.clone());
        Ok(schema)
    }
}

/// Percent-encodes a path segment (subject names may hold any character).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
