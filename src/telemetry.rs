//! Logging setup: `tracing` events to stderr as text or JSON lines.
//!
//! Verbosity comes from `LOG_FILTER_FILE` when set (re-read on SIGHUP through [`FilterReload`]),
//! else from `RUST_LOG` (read once; default `info`); the format from `LOG_FORMAT`
//! ([`LogFormat`]). Never log a token, and never a line per notification at `info`.

use std::path::{Path, PathBuf};

use tracing_subscriber::{
    EnvFilter, Registry, filter::ParseError, fmt, layer::SubscriberExt, reload,
    util::SubscriberInitExt,
};

use crate::{
    config::LogFormat,
    reload::{Outcome, Reload},
};

/// Filter used when `RUST_LOG` is unset or invalid, or the filter file is empty.
const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Safe to call more than once: later calls (and calls after
/// another subscriber was installed, as in tests) are ignored and return `Ok(None)`.
///
/// # Errors
///
/// `filter_file` cannot be read or does not hold a valid filter: one line naming
/// `LOG_FILTER_FILE`, for the caller to print before exiting 64.
pub fn init(format: LogFormat, filter_file: Option<&Path>) -> Result<Option<FilterReload>, String> {
    let (filter, bad_rust_log) = match filter_file {
        Some(path) => (
            read_filter(path)
                .map_err(|e| format!("invalid LOG_FILTER_FILE (--log-filter-file): {e}"))?
                .0,
            None,
        ),
        None => filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` also routes `log` records (rustls, redis) into `tracing`.
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    if installed.is_err() {
        return Ok(None);
    }
    if let Some(error) = bad_rust_log {
        let default = DEFAULT_FILTER;
        tracing::warn!(%error, default, "invalid RUST_LOG; using the default filter");
    }
    Ok(Some(FilterReload {
        handle,
        path: filter_file.map(Path::to_path_buf),
    }))
}

/// Reads a filter file: lines in `RUST_LOG` syntax, `#` comments and blank lines ignored, the
/// rest joined with commas; empty means [`DEFAULT_FILTER`]. Returns the filter and its text.
fn read_filter(path: &Path) -> Result<(EnvFilter, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    let spec: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let spec = match spec.join(",") {
        s if s.is_empty() => DEFAULT_FILTER.to_string(),
        s => s,
    };
    let filter = EnvFilter::try_new(&spec)
        .map_err(|e| format!("'{}' holds an invalid filter {spec:?}: {e}", path.display()))?;
    Ok((filter, spec))
}

/// The log filter as a [`Reload`] part: SIGHUP re-reads `LOG_FILTER_FILE`.
pub struct FilterReload {
    /// Swaps the filter of the installed subscriber.
    handle: reload::Handle<EnvFilter, Registry>,
    /// `LOG_FILTER_FILE`, if set.
    path: Option<PathBuf>,
}

impl Reload for FilterReload {
    fn name(&self) -> &'static str {
        "log filter"
    }

    fn reload(&self) -> Result<Outcome, String> {
        let Some(path) = &self.path else {
            return Ok(Outcome::Fixed(
                "RUST_LOG is read once at start; set LOG_FILTER_FILE to change the filter on SIGHUP",
            ));
        };
        let (filter, spec) = read_filter(path)?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot install the new filter: {e}"))?;
        Ok(Outcome::Applied(spec))
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
        let _ = init(LogFormat::Json, None);
        assert!(
            tracing::dispatcher::has_been_set(),
            "a global subscriber is installed"
        );
        assert!(init(LogFormat::Text, None).unwrap().is_none());
        assert!(tracing::dispatcher::has_been_set());
    }

    #[test]
    fn filter_files_join_lines_skip_comments_and_default_when_empty() {
        let dir = std::env::temp_dir().join(format!("chat4all-filter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("filter");
        std::fs::write(&file, "# verbosity\nwarn\n\n chat4all_gateway=debug \n").unwrap();
        assert_eq!(read_filter(&file).unwrap().1, "warn,chat4all_gateway=debug");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert_eq!(read_filter(&file).unwrap().1, "info");
        std::fs::write(&file, "chat4all_gateway=loud").unwrap();
        assert!(read_filter(&file).unwrap_err().contains("invalid filter"));
        assert!(
            read_filter(&dir.join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
