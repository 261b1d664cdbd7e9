//! Wall-clock time in unix microseconds: the unit of `sent_us` in payloads and of every timestamp
//! exchanged between processes (one clock for all of them on one machine).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, unix µs.
#[must_use]
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
