//! Which Kafka cluster a command talks to: --brokers, TRIPSTREAM_BROKERS, or the bootstrap file
//! that `tripstream broker` writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where `tripstream broker` writes its bootstrap address by default, relative to the root.
pub const DEFAULT_BOOTSTRAP_FILE: &str = ".tripstream/bootstrap";

/// The default bootstrap file under a project root.
pub fn default_bootstrap_file(root: &Path) -> PathBuf {
    root.join(DEFAULT_BOOTSTRAP_FILE)
}

/// The explicit `--brokers` value (clap also reads TRIPSTREAM_BROKERS), else the address a
/// running `tripstream broker` wrote under the root.
pub fn resolve(root: &Path, explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(brokers) = explicit {
        return Ok(brokers.to_owned());
    }
    let file = default_bootstrap_file(root);
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => bail!(
            "{} is empty; restart `tripstream broker` or pass --brokers",
            file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no broker given: pass --brokers HOST:PORT, set TRIPSTREAM_BROKERS, or start `tripstream broker` (which writes {})",
            file.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
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
