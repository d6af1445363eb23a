//! What every tripstream service process shares: where its broker, registry and store are, and
//! running its handler over its topics until shutdown.

use std::future::Future;
use std::path::PathBuf;

use crate::codec::Codec;
use crate::error::Result;
use crate::processor::{self, Handler, Positions};
use crate::registry::Client;
use crate::store::Store;

/// Where a service keeps its state.
#[derive(Debug, Clone)]
pub enum Data {
    /// A sled directory of its own (a service process).
    Dir(PathBuf),
    /// A store opened by the caller (services embedded in one process, tests).
    Store(Store),
}

impl Data {
    /// Opens the store.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Store`] when sled cannot open the directory.
    pub fn open(&self) -> Result<Store> {
        match self {
            Data::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::Store(format!("creating {}: {e}", dir.display())))?;
                Store::open(dir)
            }
            Data::Store(store) => Ok(store.clone()),
        }
    }
}

/// Settings every event-driven service takes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The schema registry's base URL.
    pub registry: String,
    /// Where the service's store lives.
    pub data: Data,
    /// Raw librdkafka consumer settings (tests shorten session timeouts with these).
    pub consumer: Vec<(String, String)>,
}

impl Settings {
    /// Settings with no consumer overrides.
    pub fn new(brokers: impl Into<String>, registry: impl Into<String>, data: Data) -> Self {
        Settings {
            brokers: brokers.into(),
            registry: registry.into(),
            data,
            consumer: Vec::new(),
        }
    }

    /// A codec on the settings' registry.
    ///
    /// # Errors
    ///
    /// [`crate::Error::RegistryUnavailable`] when the URL is unusable.
    pub fn codec(&self) -> Result<Codec> {
        Ok(Codec::new(Client::new(&self.registry)?))
    }
}

/// Runs `handler` as consumer group `group` over `topics` until `shutdown`, on the store of
/// `settings`.
///
/// # Errors
///
/// As [`processor::run`], and when the store cannot be opened.
pub async fn run<H: Handler>(
    group: &str,
    topics: &[&str],
    settings: &Settings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let store = settings.data.open()?;
    let mut processor = processor::Settings::new(&settings.brokers, group, topics);
    processor.consumer.clone_from(&settings.consumer);
    tracing::info!(group, topics = ?topics, "Service starting");
    processor::run(
        processor,
        store,
        settings.codec()?,
        handler,
        Positions::default(),
        shutdown,
    )
    .await
}
