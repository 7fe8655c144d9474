//! Tracing setup: human-readable logs on stderr, filtered by `RUST_LOG` or the configured filter.

use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing),
/// so tests and the binary can share code paths.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}
