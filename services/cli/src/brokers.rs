//! Which Kafka cluster a command talks to: --brokers, TRIPSTREAM_BROKERS, or the bootstrap file
//! that `tripstream broker` writes.

use std::path::{Path, PathBuf};

/// Where `tripstream broker` writes its bootstrap address by default, relative to the root.
pub const DEFAULT_BOOTSTRAP_FILE: &str = streams::service::BOOTSTRAP_FILE;

/// The default bootstrap file under a project root.
pub fn default_bootstrap_file(root: &Path) -> PathBuf {
    root.join(DEFAULT_BOOTSTRAP_FILE)
}

/// The explicit `--brokers` value (clap also reads TRIPSTREAM_BROKERS), else the address a
/// running `tripstream broker` wrote under the root.
pub fn resolve(root: &Path, explicit: Option<&str>) -> anyhow::Result<String> {
    Ok(streams::service::resolve_brokers(root, explicit)?)
}

/// The broker and registry options shared by commands that read or write events.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// Kafka bootstrap servers [default: the address `tripstream broker` wrote].
    #[arg(long, env = "TRIPSTREAM_BROKERS")]
    pub brokers: Option<String>,
    /// The schema registry.
    #[arg(
        long,
        env = "TRIPSTREAM_REGISTRY",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry: String,
}
