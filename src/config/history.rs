//! Validation of the history settings (issue 10), beside the rest of [`Config::validate`].

use std::time::Duration;

use super::{Config, MIB, duration_in_range};

/// Most entries `HISTORY_SIZE` may keep per user.
pub const MAX_HISTORY_SIZE: usize = 10_000;

impl Config {
    /// The history settings' ranges. A replay needs no rule against the outbox: it goes out as
    /// one write with `connected`, and its bytes are capped at `OUTBOX_MAX_BYTES` (a longer one
    /// answers `recovered:false`), so existing outbox settings stay valid.
    pub(super) fn validate_history(&self, bad: &mut impl FnMut(&str, String)) {
        if self.history_size == 0 || self.history_size > MAX_HISTORY_SIZE {
            bad(
                "history_size",
                format!("{} is not in 1..={MAX_HISTORY_SIZE}", self.history_size),
            );
        }
        for (id, value, min, max) in [
            (
                "history_ttl",
                self.history_ttl,
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            ),
            (
                "history_read_timeout",
                self.history_read_timeout,
                Duration::from_millis(1),
                Duration::from_secs(60),
            ),
        ] {
            duration_in_range(id, value, min, max, bad);
        }
        if self.history_max_bytes < MIB {
            bad(
                "history_max_bytes",
                format!("{} is below the minimum {MIB}", self.history_max_bytes),
            );
        }
        if !(1..=65_536).contains(&self.history_live_buffer) {
            bad(
                "history_live_buffer",
                format!("{} is not in 1..=65536", self.history_live_buffer),
            );
        }
        let prefix = &self.history_key_prefix;
        if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            bad(
                "history_key_prefix",
                format!("{prefix:?} must be non-empty, without whitespace or control characters"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> Config {
        let mut args = vec!["gw", "--jwt-secret", "0123456789abcdef0123456789abcdef"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("parses")
    }

    /// The one line validation prints for `extra`, which must be invalid.
    fn problem(extra: &[&str]) -> String {
        cfg(extra).validate().expect_err("invalid").to_string()
    }

    #[test]
    fn history_settings_are_validated_one_line_each() {
        assert!(cfg(&[]).validate().is_ok());
        for (args, var, fragment) in [
            (
                &["--history-size", "0"][..],
                "HISTORY_SIZE",
                "not in 1..=10000",
            ),
            (
                &["--history-size", "10001"],
                "HISTORY_SIZE",
                "not in 1..=10000",
            ),
            (
                &["--history-ttl", "500ms"],
                "HISTORY_TTL",
                "below the minimum 1s",
            ),
            (
                &["--history-ttl", "8d"],
                "HISTORY_TTL",
                "above the maximum 7days",
            ),
            (
                &["--history-max-bytes", "1000"],
                "HISTORY_MAX_BYTES",
                "below the minimum",
            ),
            (
                &["--history-live-buffer", "0"],
                "HISTORY_LIVE_BUFFER",
                "not in 1..=65536",
            ),
            (
                &["--history-read-timeout", "0s"],
                "HISTORY_READ_TIMEOUT",
                "below the minimum",
            ),
            (
                &["--history-read-timeout", "2m"],
                "HISTORY_READ_TIMEOUT",
                "above the maximum",
            ),
            (
                &["--history-key-prefix", "a b"],
                "HISTORY_KEY_PREFIX",
                "whitespace",
            ),
            (
                &["--history-key-prefix", ""],
                "HISTORY_KEY_PREFIX",
                "non-empty",
            ),
        ] {
            let line = problem(args);
            assert!(
                line.starts_with(&format!("invalid {var} (")) && line.contains(fragment),
                "{args:?}: {line}"
            );
            assert_eq!(line.lines().count(), 1, "{line}");
        }
        // A small outbox does not constrain the history (the replay is one write).
        let small_outbox = cfg(&["--history-size", "300", "--outbox-max-messages", "16"]);
        assert!(small_outbox.validate().is_ok());
    }
}
