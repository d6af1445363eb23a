//! Tracing setup shared by every binary: one subscriber, logs to stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `TRIPSTREAM_LOG` (or `RUST_LOG`) overrides `default_filter`,
/// e.g. `TRIPSTREAM_LOG=debug` or `TRIPSTREAM_LOG=registry=debug,info`.
///
/// Logs go to stderr so that stdout stays clean for command output (JSON lines, reports).
/// Calling it twice is harmless: the second call changes nothing.
pub fn init(default_filter: &str) {
    let filter = std::env::var("TRIPSTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
