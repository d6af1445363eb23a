//! A Confluent-compatible schema registry whose state lives in the `_schemas` topic.
//!
//! Writes are commands appended to the one-partition `_schemas` topic; every instance applies
//! the log in order (see [`state`]), so ids agree across instances and survive restarts.
//! Several instances may run against one broker: each accepts writes, the log orders them, and
//! each answers a write once it has applied it. Reads on another instance see a write as soon
//! as that instance has read it from the log (milliseconds).

pub mod api;
pub mod error;
pub mod log;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use streams::avro::compat::Level;
use streams::kafka::topic::TopicSpec;
use tokio::sync::watch;

/// The default name of the registry's topic, as in Confluent's registry.
pub const SCHEMAS_TOPIC: &str = "_schemas";

/// The registry's `--listen` flag, for `tripstream registry` and `tripstream-registry`.
#[derive(Debug, Clone, clap::Args)]
pub struct Listen {
    /// Address to serve the REST API on (port 0 picks a free one).
    #[arg(
        long,
        env = "TRIPSTREAM_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
}

/// How long a stopping registry waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// Everything the registry needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to serve HTTP; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `bootstrap.servers` of the cluster holding the log.
    pub bootstrap: String,
    /// The log topic.
    pub topic: String,
    /// The global compatibility level of a new registry, and after `DELETE /config`.
    pub default_level: Level,
}

impl Settings {
    /// Defaults for a registry on `bootstrap`, listening on `listen`.
    pub fn new(listen: SocketAddr, bootstrap: impl Into<String>) -> Self {
        Settings {
            listen,
            bootstrap: bootstrap.into(),
            topic: SCHEMAS_TOPIC.into(),
            default_level: Level::Backward,
        }
    }
}

/// Why the registry could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka call failed.
    #[error("Kafka {action} failed: {cause}")]
    Kafka {
        /// What the registry was doing.
        action: String,
        /// The client's error (in the message, not a `source`, so chains print it once).
        cause: rdkafka::error::KafkaError,
    },
    /// The log did not answer in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// The registry's topic is missing and cannot be created.
    #[error("{0}")]
    Topic(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

impl Error {
    pub(crate) fn kafka(action: impl Into<String>, cause: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            action: action.into(),
            cause,
        }
    }
}

/// The registry's topic as `topics/_schemas.toml` declares it, embedded so that a registry
/// started anywhere provisions the same topic.
const SCHEMAS_SPEC: &str = include_str!("../../../topics/_schemas.toml");

/// The spec of the registry's topic, named `topic`: `topics/_schemas.toml` (one partition so
/// that the log totally orders writes, kept forever, compacted on brokers that compact; keys
/// are unique per write, so compaction never drops a command).
///
/// # Panics
///
/// Never: the spec is `topics/_schemas.toml` built into the program, and the test
/// `the_registry_provisions_exactly_the_spec_in_topics` checks that it is valid.
pub fn topic_spec(topic: &str) -> TopicSpec {
    // The text is fixed when the crate is built, and the test
    // `the_registry_provisions_exactly_the_spec_in_topics` checks that it is valid and equals
    // what `TopicSet::load` reads.
    let mut spec = TopicSpec::parse(std::path::Path::new("topics/_schemas.toml"), SCHEMAS_SPEC)
        .expect("topics/_schemas.toml is valid");
    topic.clone_into(&mut spec.name);
    spec
}

/// Creates the registry's topic where it is missing, with [`topic_spec`].
///
/// # Errors
///
/// [`Error::Topic`] when the broker cannot be reached or cannot create it (a `tripstream
/// broker` process creates the topics of `topics/` only when it starts).
pub async fn ensure_topic(bootstrap: &str, topic: &str) -> Result<(), Error> {
    let reports = streams::kafka::topic::apply(
        streams::kafka::topic::Target::Kafka(bootstrap),
        &[topic_spec(topic)],
    )
    .await
    .map_err(|e| Error::Topic(e.to_string()))?;
    for report in reports {
        if let streams::kafka::topic::Outcome::Missing(reason) = report.outcome {
            return Err(Error::Topic(format!(
                "topic {} is missing: {reason}",
                report.topic
            )));
        }
    }
    Ok(())
}

/// A started registry: the log is replayed and the listener bound.
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    tail: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then stops: in-flight requests finish first.
    ///
    /// # Errors
    ///
    /// [`Error::Serve`] when the HTTP server fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        shutdown.await;
        self.stop().await
    }

    /// Stops serving and reading the log.
    ///
    /// # Errors
    ///
    /// [`Error::Serve`] when the HTTP server had failed.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        // In-flight requests get a moment to finish; idle keep-alive connections would
        // otherwise hold the graceful shutdown open until their clients drop them.
        let served = match tokio::time::timeout(DRAIN, &mut self.server).await {
            Ok(served) => served,
            Err(_) => {
                self.server.abort();
                Ok(Ok(()))
            }
        };
        let _ = self.tail.await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Serve(e)),
            Err(e) => Err(Error::Serve(std::io::Error::other(e))),
        }
    }
}

/// Replays the log, binds the listener and starts serving.
///
/// The topic must exist: `tripstream broker`, `tripstream topics apply` or the caller's
/// provisioning creates it (see [`topic_spec`]).
///
/// # Errors
///
/// [`Error::Kafka`] when the log cannot be read, [`Error::Bind`] when the address is taken.
pub async fn start(settings: Settings) -> Result<Running, Error> {
    let state = Arc::new(RwLock::new(state::State::new(settings.default_level)));
    let (stop, stopped) = watch::channel(false);
    let (log, tail) = log::Log::open(
        &settings.bootstrap,
        &settings.topic,
        state.clone(),
        stopped.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: settings.listen,
        source,
    })?;
    let app = api::router(api::App::new(state, Arc::new(log)));
    let mut stopped_http = stopped;
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped_http.changed().await;
            })
            .await
    });
    tracing::info!(%addr, topic = %settings.topic, "Schema registry listening");
    Ok(Running {
        addr,
        stop,
        server,
        tail,
    })
}

/// Runs the registry until `shutdown` completes.
///
/// # Errors
///
/// As [`start`] and [`Running::run_until`].
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    start(settings).await?.run_until(shutdown).await
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use streams::kafka::topic::{TopicSet, TopicSpec};

    #[test]
    fn the_registry_provisions_exactly_the_spec_in_topics() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topics");
        let set = TopicSet::load(&dir).expect("topics/ is valid");
        let declared = set
            .get(super::SCHEMAS_TOPIC)
            .expect("topics/ declares _schemas");
        assert_eq!(super::topic_spec(super::SCHEMAS_TOPIC), declared);
        let renamed = super::topic_spec("other._schemas");
        assert_eq!(renamed.name, "other._schemas");
        assert_eq!(
            TopicSpec {
                name: declared.name.clone(),
                ..renamed
            },
            declared
        );
    }
}
