//! Latency histograms: HDR histograms in microseconds, their percentile summary, and the text form
//! (V2 serialization, base64) in which workers send them to the coordinator for merging.

use std::io::Cursor;

use base64::{Engine, engine::general_purpose::STANDARD};
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer, V2Serializer},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A latency histogram in microseconds.
pub type Hist = Histogram<u64>;

/// Highest trackable latency: 10 minutes (larger values are clamped).
const MAX_US: u64 = 600_000_000;

/// Why a histogram sent by a worker could not be read.
#[derive(Debug, Error)]
pub enum HistError {
    #[error("histogram is not valid base64")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not deserialize: {0:?}")]
    Deserialize(hdrhistogram::serialization::DeserializeError),
    #[error("histograms do not merge: {0:?}")]
    Merge(hdrhistogram::AdditionError),
}

/// An empty histogram with `sigfig` significant digits (3 for totals, 2 for timeline buckets).
#[must_use]
pub fn new_hist(sigfig: u8) -> Hist {
    let mut h = Histogram::new_with_bounds(1, MAX_US, sigfig).expect("static bounds are valid");
    h.auto(true);
    h
}

/// Records `us`, clamped into the trackable range.
pub fn record(h: &mut Hist, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// Serializes for the worker pipe.
#[must_use]
pub fn encode(h: &Hist) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("writing to a Vec cannot fail");
    STANDARD.encode(buf)
}

/// Reads a histogram produced by [`encode`].
pub fn decode(s: &str) -> Result<Hist, HistError> {
    let bytes = STANDARD.decode(s)?;
    Deserializer::new()
        .deserialize(&mut Cursor::new(bytes))
        .map_err(HistError::Deserialize)
}

/// Adds `s` (from [`encode`]) into `into`.
pub fn merge_encoded(into: &mut Hist, s: &str) -> Result<(), HistError> {
    into.add(decode(s)?).map_err(HistError::Merge)
}

/// The percentiles a report shows, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// Summary of `h` (all zero when empty).
    #[must_use]
    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(v: u64, want: u64) -> bool {
        v.abs_diff(want) * 100 <= want // 1%: HDR with 2-3 significant digits
    }

    #[test]
    fn percentiles_of_merged_worker_histograms() {
        // Two workers: one saw 1..=5000 us, the other 5001..=10000 us.
        let (mut a, mut b) = (new_hist(3), new_hist(3));
        for v in 1..=5000 {
            record(&mut a, v);
        }
        for v in 5001..=10_000 {
            record(&mut b, v);
        }
        let mut merged = new_hist(3);
        merge_encoded(&mut merged, &encode(&a)).unwrap();
        merge_encoded(&mut merged, &encode(&b)).unwrap();
        let p = Percentiles::of(&merged);
        assert_eq!(p.count, 10_000);
        assert!(within(p.p50_us, 5000), "{p:?}");
        assert!(within(p.p90_us, 9000), "{p:?}");
        assert!(within(p.p99_us, 9900), "{p:?}");
        assert!(within(p.p999_us, 9990), "{p:?}");
        assert!(within(p.max_us, 10_000) && p.min_us == 1, "{p:?}");
        assert!((p.mean_us - 5000.5).abs() < 50.0);
    }

    #[test]
    fn tail_comes_from_the_slow_worker() {
        // 99% fast on one worker, 1% slow on the other: p99.9 must see the slow one.
        let (mut fast, mut slow) = (new_hist(2), new_hist(2));
        for _ in 0..9900 {
            record(&mut fast, 100);
        }
        for _ in 0..100 {
            record(&mut slow, 50_000);
        }
        let mut merged = new_hist(3);
        merge_encoded(&mut merged, &encode(&fast)).unwrap();
        merge_encoded(&mut merged, &encode(&slow)).unwrap();
        let p = Percentiles::of(&merged);
        assert!(within(p.p50_us, 100) && within(p.p99_us, 100), "{p:?}");
        assert!(within(p.p999_us, 50_000), "{p:?}");
    }

    #[test]
    fn clamps_and_handles_empty() {
        let mut h = new_hist(2);
        assert_eq!(Percentiles::of(&h), Percentiles::default());
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(decode("not base64!").is_err());
    }
}
