//! The one error type of the streaming runtime, and whether a retry can help.
//!
//! It names no other module's types: a module with an error of its own (schemas, the codec)
//! converts it into [`Error`] where it is defined, so this module sits below all the others.

use std::path::PathBuf;

/// A module's own error, kept whole inside [`Error`].
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// A `Result` whose error defaults to the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the streaming runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka client call failed.
    // The librdkafka error is part of the message rather than a `source`, so that error
    // chains (`{:#}`) do not print it twice.
    #[error("Kafka {action} failed: {cause}")]
    Kafka {
        /// What the runtime was doing, e.g. "creating a producer".
        action: String,
        /// The librdkafka error.
        cause: rdkafka::error::KafkaError,
    },
    /// An Avro schema is not valid (the source is an [`crate::avro::schema::SchemaError`],
    /// which names the location).
    #[error("{0}")]
    Schema(Source),
    /// A topic spec under `topics/` is not valid.
    #[error("{file}: field `{field}`: {reason}")]
    TopicSpec {
        /// The spec file.
        file: PathBuf,
        /// The offending field, or `-` for the whole file.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The schema registry answered with an error.
    #[error("schema registry refused the request ({status}, error code {code}): {message}")]
    Registry {
        /// HTTP status.
        status: u16,
        /// Confluent `error_code`.
        code: i64,
        /// The registry's message.
        message: String,
    },
    /// The schema registry could not be reached or answered nonsense.
    #[error("schema registry at {url} is unavailable: {reason}")]
    RegistryUnavailable {
        /// The URL that was called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The embedded broker could not do what was asked.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// An event could not be encoded or decoded (the source is a
    /// [`crate::codec::CodecError`]).
    #[error("{source}")]
    Codec {
        /// What the codec said.
        source: Source,
        /// Whether the codec's error may pass (the registry was down, say).
        retriable: bool,
    },
    /// The local sled store failed.
    #[error("local store: {0}")]
    Store(String),
    /// A broker operation gave up after its deadline.
    #[error("timed out after {seconds} s while {action}")]
    Timeout {
        /// What the runtime was doing.
        action: String,
        /// How long it waited.
        seconds: u64,
    },
    /// A setting is missing or unusable; the message says which and how to give it.
    #[error("{0}")]
    Usage(String),
    /// The operating system would not start another thread (a restore or replay reads on one
    /// per core).
    #[error("starting a thread to {purpose} failed: {source}")]
    Thread {
        /// What the thread was for.
        purpose: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    ///
    /// Bad input (schemas, specs, refusals by the registry) never becomes good by waiting;
    /// outages of the broker or the registry may end.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka { cause, .. } => cause.rdkafka_error_code().is_none_or(|code| {
                !matches!(code, rdkafka::types::RDKafkaErrorCode::InvalidConfig)
            }),
            Error::Registry { status, .. } => *status >= 500,
            Error::Codec { retriable, .. } => *retriable,
            // Threads run out while others hold them; they end.
            Error::RegistryUnavailable { .. } | Error::Timeout { .. } | Error::Thread { .. } => {
                true
            }
            Error::Schema(_)
            | Error::TopicSpec { .. }
            | Error::Io { .. }
            | Error::Embedded(_)
            | Error::Store(_)
            | Error::Usage(_) => false,
        }
    }

    pub(crate) fn kafka(action: impl Into<String>, cause: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            action: action.into(),
            cause,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
