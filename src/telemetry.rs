//! Logging setup: `tracing` events to stderr as text or JSON lines.
//!
//! Verbosity comes from `RUST_LOG` (default `info`); the format from `LOG_FORMAT`
//! ([`LogFormat`]). Never log a token, and never a line per notification at `info`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Safe to call more than once: later calls (and calls after
/// another subscriber was installed, as in tests) are ignored.
pub fn init(format: LogFormat) {
    let (filter, bad_rust_log) = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
        },
        Err(_) => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let (Ok(()), Some(error)) = (installed, bad_rust_log) {
        let default = DEFAULT_FILTER;
        tracing::warn!(%error, default, "invalid RUST_LOG; using the default filter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        init(LogFormat::Json);
        init(LogFormat::Text);
        tracing::info!(check = true, "telemetry initialised");
    }
}
