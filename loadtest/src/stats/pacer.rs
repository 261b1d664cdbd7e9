//! Open-loop rate limiting: how many operations are due by now at a fixed rate.
//!
//! The schedule is absolute (operation `k` is due at `k / rate` seconds), so a caller that wakes
//! late catches up instead of silently running slow; each wake-up may issue at most `max_batch`
//! (one pipelined write), and how far behind schedule it fell is reported as `lag`.

/// A fixed-rate schedule started at time zero.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Operations per second; 0 means unlimited.
    rate: f64,
    /// Operations already issued.
    issued: u64,
    /// Cap on one batch.
    max_batch: u64,
}

impl Pacer {
    /// A schedule at `rate` per second (0 = unlimited) issuing at most `max_batch` at once.
    #[must_use]
    pub fn new(rate: f64, max_batch: u64) -> Self {
        Self {
            rate: rate.max(0.0),
            issued: 0,
            max_batch: max_batch.max(1),
        }
    }

    /// Number of operations due `elapsed_us` after the start and not yet issued, capped at
    /// `max_batch`; the caller issues them and reports that with [`Pacer::issue`].
    #[must_use]
    pub fn due(&self, elapsed_us: u64) -> u64 {
        if self.rate == 0.0 {
            return self.max_batch;
        }
        // Float to int truncation is the floor here (both are non-negative).
        let target = (elapsed_us as f64 * self.rate / 1e6) as u64;
        target.saturating_sub(self.issued).min(self.max_batch)
    }

    /// Records that `n` operations were issued.
    pub fn issue(&mut self, n: u64) {
        self.issued += n;
    }

    /// Operations issued so far.
    #[must_use]
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Microseconds after the start at which the next operation is due (0 if unlimited).
    #[must_use]
    pub fn next_due_us(&self) -> u64 {
        if self.rate == 0.0 {
            return 0;
        }
        ((self.issued + 1) as f64 * 1e6 / self.rate).ceil() as u64
    }

    /// How far behind schedule the issued count is at `elapsed_us`, in microseconds.
    #[must_use]
    pub fn lag_us(&self, elapsed_us: u64) -> u64 {
        if self.rate == 0.0 {
            return 0;
        }
        elapsed_us.saturating_sub(self.next_due_us())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule() {
        let mut p = Pacer::new(1000.0, 1_000_000);
        assert_eq!(p.due(0), 0);
        assert_eq!(p.next_due_us(), 1000);
        assert_eq!(p.due(999), 0);
        assert_eq!(p.due(1000), 1);
        assert_eq!(p.due(10_500), 10);
        p.issue(10);
        assert_eq!(p.due(10_500), 0);
        assert_eq!(p.next_due_us(), 11_000);
        assert_eq!(p.due(1_000_000), 990);
    }

    #[test]
    fn caps_batches_and_catches_up() {
        let mut p = Pacer::new(10_000.0, 16);
        let mut t = 0;
        while p.issued() < 10_000 {
            t += 1000;
            let n = p.due(t);
            p.issue(n);
        }
        // 16 per millisecond is more than 10 per millisecond, so the schedule holds.
        assert!(t <= 1_000_000, "finished at {t} us");
        let mut slow = Pacer::new(100_000.0, 16);
        slow.issue(slow.due(10_000));
        assert_eq!(slow.issued(), 16);
        assert!(slow.lag_us(10_000) > 9_000);
        assert_eq!(slow.due(10_000), 16);
    }

    #[test]
    fn unlimited_rate_gives_full_batches() {
        let p = Pacer::new(0.0, 64);
        assert_eq!(p.due(0), 64);
        assert_eq!(p.next_due_us(), 0);
        assert_eq!(p.lag_us(5), 0);
    }
}
