//! The byte budget all publish requests in progress share (`PUBLISH_MAX_INFLIGHT_BYTES`): a
//! request takes its declared body size (or the largest allowed, when it does not declare one)
//! before reading its body, and gives it back when it ends, however it ends. A request that does
//! not fit is refused at once (429) rather than queued: a publisher retrying later is cheaper
//! than a gateway holding bodies it cannot afford.
//!
//! The bytes in use are the `publish_inflight_bytes` gauge itself, so what operators see is what
//! the budget enforces.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use crate::metrics::GlobalStats;

/// The shared budget.
pub struct Budget {
    /// Holds the bytes in use (`publish_inflight_bytes`).
    stats: Arc<GlobalStats>,
    /// Bytes available in all.
    max: i64,
}

/// Bytes taken from a [`Budget`], given back on drop.
pub struct Taken {
    /// Where they came from.
    budget: Arc<Budget>,
    /// How many.
    bytes: i64,
}

impl Budget {
    /// A budget of `max` bytes, counted in `stats`.
    pub fn new(max: usize, stats: Arc<GlobalStats>) -> Arc<Self> {
        Arc::new(Self {
            stats,
            max: i64::try_from(max).unwrap_or(i64::MAX),
        })
    }

    fn used(&self) -> &AtomicI64 {
        &self.stats.publish_inflight_bytes
    }

    /// Takes `bytes` if they fit.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Taken> {
        let bytes = i64::try_from(bytes).ok()?;
        self.used()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .ok()?;
        Some(Taken {
            budget: self.clone(),
            bytes,
        })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.budget.used().fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_gets_it_back_on_drop() {
        let stats = Arc::new(GlobalStats::default());
        let used = || stats.publish_inflight_bytes.load(Ordering::Acquire);
        let budget = Budget::new(100, stats.clone());
        let a = budget.try_take(60).unwrap();
        assert!(budget.try_take(41).is_none());
        let b = budget.try_take(40).unwrap();
        assert_eq!(used(), 100);
        assert!(budget.try_take(1).is_none());
        drop(a);
        assert!(budget.try_take(usize::MAX).is_none(), "no overflow");
        let c = budget.try_take(60).unwrap();
        drop((b, c));
        assert_eq!(used(), 0);
    }
}
