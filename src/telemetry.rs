//! Logging setup: `tracing` events to stderr as text or JSON lines.
//!
//! Verbosity comes from `RUST_LOG` (default `info`); the format from `LOG_FORMAT`
//! ([`LogFormat`]). Never log a token, and never a line per notification at `info`.

use tracing_subscriber::{EnvFilter, filter::ParseError};

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Safe to call more than once: later calls (and calls after
/// another subscriber was installed, as in tests) are ignored.
pub fn init(format: LogFormat) {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let (filter, bad_rust_log) = filter(spec.as_deref());
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

/// The filter for a `RUST_LOG` value: the value itself when it parses, else [`DEFAULT_FILTER`]
/// together with the parse error (to be logged once the subscriber is up).
fn filter(spec: Option<&str>) -> (EnvFilter, Option<ParseError>) {
    match spec.map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
        None => (EnvFilter::new(DEFAULT_FILTER), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_used_when_valid_and_replaced_when_not() {
        let (valid, error) = filter(Some("warn,chat4all_gateway=debug"));
        assert!(error.is_none());
        assert_eq!(valid.to_string(), "chat4all_gateway=debug,warn");
        let (fallback, error) = filter(Some("chat4all_gateway=[bad"));
        assert!(error.is_some(), "an unparsable filter is reported");
        assert_eq!(fallback.to_string(), DEFAULT_FILTER);
        let (unset, error) = filter(None);
        assert!(error.is_none());
        assert_eq!(unset.to_string(), DEFAULT_FILTER);
    }

    #[test]
    fn init_installs_a_subscriber_and_tolerates_a_second_call() {
        init(LogFormat::Json);
        assert!(
            tracing::dispatcher::has_been_set(),
            "a global subscriber is installed"
        );
        init(LogFormat::Text);
        assert!(tracing::dispatcher::has_been_set());
    }
}
