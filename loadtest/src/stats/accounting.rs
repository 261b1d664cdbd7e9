//! Loss, duplicate and reorder accounting from per-user sequence numbers.
//!
//! Each user's notifications carry consecutive sequence numbers, assigned by the one worker that
//! owns the user and publishes to it. Every connection of that user should see every number
//! published while it was connected, so each connection keeps a [`Tracker`]: a bitset of the numbers
//! it has seen since accounting started. At the end of a phase, the numbers published in its window
//! are its *expected* deliveries; the distinct ones it saw are *delivered*; the rest are *lost*. So
//! `delivered + lost == published` holds by construction, and duplicates and late arrivals are
//! counted apart instead of inflating `delivered`.

use serde::{Deserialize, Serialize};

/// What one received sequence number meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First arrival of an expected number; `reordered` if a higher number had already arrived.
    Delivered { reordered: bool },
    /// Seen before on this connection.
    Duplicate,
    /// Published before this connection's accounting window (a previous phase's straggler).
    Stale,
    /// Not published to this user in the window (never sent, or sent after the connection died).
    Unexpected,
}

/// Accounting state of one connection for one phase.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// First sequence number published to the user after accounting started.
    first_seq: u64,
    /// The user's next sequence number when the connection ended, if it ended: numbers from here
    /// on were never expected on this connection.
    end_seq: Option<u64>,
    /// Bit `i` set when `first_seq + i` has been delivered. Grows with the numbers seen: one bit per
    /// notification published to the user.
    seen: Vec<u64>,
    /// Highest number delivered, for reorder detection.
    max_seen: Option<u64>,
    /// Distinct expected numbers seen.
    delivered: u64,
    /// Arrivals that were a duplicate of an earlier one.
    duplicates: u64,
    /// Arrivals below the highest number already seen.
    reordered: u64,
    /// Arrivals that skipped at least one number (a gap opened; it may close later).
    gaps: u64,
    /// Arrivals of numbers from before the window.
    stale: u64,
    /// Arrivals of numbers never expected here.
    unexpected: u64,
    /// Numbers whose publish failed or whose outcome is unknown (the publish API answered an
    /// error or the connection to it broke): not expected, not lost; an arrival is counted apart.
    voided: Vec<u64>,
    /// Arrivals of voided numbers (published after all: the outcome was unknown, not failed).
    voided_arrived: u64,
}

impl Tracker {
    /// Starts accounting at `first_seq`, the user's next sequence number now.
    #[must_use]
    pub fn new(first_seq: u64) -> Self {
        Self {
            first_seq,
            ..Self::default()
        }
    }

    /// Records the arrival of `seq`; `published` is the user's next sequence number now (every
    /// number below it has been published).
    pub fn on_seq(&mut self, seq: u64, published: u64) -> Outcome {
        if seq < self.first_seq {
            self.stale += 1;
            return Outcome::Stale;
        }
        if seq >= self.end_seq.unwrap_or(published) {
            self.unexpected += 1;
            return Outcome::Unexpected;
        }
        if !self.voided.is_empty() && self.voided.contains(&seq) {
            self.voided_arrived += 1;
            return Outcome::Unexpected;
        }
        let idx = seq - self.first_seq;
        // The index is below the number of notifications published, which fits in memory as bits.
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.delivered += 1;
        let reordered = self.max_seen.is_some_and(|m| seq < m);
        let prev = self.max_seen.map_or(self.first_seq, |m| m + 1);
        if seq > prev && !reordered {
            self.gaps += 1;
        }
        if reordered {
            self.reordered += 1;
        } else {
            self.max_seen = Some(seq);
        }
        Outcome::Delivered { reordered }
    }

    /// Takes `seq` out of the expected numbers (its publish failed or its outcome is unknown),
    /// unless it already arrived.
    pub fn void(&mut self, seq: u64) {
        if seq < self.first_seq || self.end_seq.is_some_and(|e| seq >= e) {
            return;
        }
        let idx = seq - self.first_seq;
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        let seen = self.seen.get(word).is_some_and(|w| w & (1 << bit) != 0);
        if !seen && !self.voided.contains(&seq) {
            self.voided.push(seq);
        }
    }

    /// Marks the connection ended; `published` is the user's next sequence number now.
    pub fn end(&mut self, published: u64) {
        self.end_seq.get_or_insert(published);
    }

    /// Whether [`Tracker::end`] was called.
    #[must_use]
    pub fn ended(&self) -> bool {
        self.end_seq.is_some()
    }

    /// Expected numbers below `below` (and below `published`, the user's next sequence number)
    /// that never arrived.
    #[must_use]
    pub fn unseen_below(&self, below: u64, published: u64) -> u64 {
        let hi = below.min(self.end_seq.unwrap_or(published));
        if hi <= self.first_seq {
            return 0;
        }
        let n = hi - self.first_seq;
        let (full, rest) = ((n / 64) as usize, n % 64);
        let word = |i: usize| self.seen.get(i).copied().unwrap_or(0);
        let mut seen: u64 = (0..full).map(|i| u64::from(word(i).count_ones())).sum();
        if rest > 0 {
            seen += u64::from((word(full) & ((1u64 << rest) - 1)).count_ones());
        }
        let voided = self.voided.iter().filter(|&&v| v < hi).count() as u64;
        n - seen - voided
    }

    /// Final counts, given the user's next sequence number at the end of the phase.
    #[must_use]
    pub fn counts(&self, published: u64) -> DeliveryCounts {
        let end = self.end_seq.unwrap_or(published);
        let voided = self.voided.iter().filter(|&&v| v < end).count() as u64;
        let expected = end.saturating_sub(self.first_seq) - voided;
        DeliveryCounts {
            published: expected,
            delivered: self.delivered,
            lost: expected - self.delivered,
            duplicates: self.duplicates,
            reordered: self.reordered,
            gaps: self.gaps,
            stale: self.stale,
            unexpected: self.unexpected + self.voided_arrived,
            voided,
        }
    }
}

/// Delivery counts of a connection, a worker or a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    /// Expected deliveries: for each notification, the connections its user had while it was
    /// published. Not the number of PUBLISH commands.
    pub published: u64,
    /// Distinct expected notifications received.
    pub delivered: u64,
    /// Expected but never received (`published - delivered`).
    pub lost: u64,
    /// Repeated arrivals (not counted in `delivered`).
    pub duplicates: u64,
    /// Arrivals after a higher number (late arrivals; counted in `delivered`).
    pub reordered: u64,
    /// Arrivals that skipped numbers (a gap opened, possibly closed later by a late arrival).
    pub gaps: u64,
    /// Arrivals from before the accounting window (not counted).
    pub stale: u64,
    /// Arrivals never expected on that connection (not counted).
    pub unexpected: u64,
    /// Notifications not expected because their publish failed or its outcome is unknown
    /// (publish API errors or a broken connection to it); not in `published`.
    #[serde(default)]
    pub voided: u64,
}

impl DeliveryCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.gaps += other.gaps;
        self.stale += other.stale;
        self.unexpected += other.unexpected;
        self.voided += other.voided;
    }

    /// The report invariant: every expected delivery was either delivered or lost.
    #[must_use]
    pub fn consistent(&self) -> bool {
        self.delivered + self.lost == self.published
    }

    /// Lost share of expected deliveries (0 when nothing was expected).
    #[must_use]
    pub fn loss_ratio(&self) -> f64 {
        if self.published == 0 {
            0.0
        } else {
            self.lost as f64 / self.published as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivery_has_no_loss() {
        let mut t = Tracker::new(10);
        for s in 10..20 {
            assert_eq!(t.on_seq(s, 20), Outcome::Delivered { reordered: false });
        }
        let c = t.counts(20);
        assert_eq!(
            (c.published, c.delivered, c.lost, c.gaps, c.reordered),
            (10, 10, 0, 0, 0)
        );
        assert!(c.consistent());
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates() {
        let mut t = Tracker::new(0);
        t.on_seq(0, 10);
        t.on_seq(3, 10); // gap: 1, 2 missing
        assert_eq!(t.on_seq(1, 10), Outcome::Delivered { reordered: true });
        assert_eq!(t.on_seq(1, 10), Outcome::Duplicate);
        assert_eq!(t.on_seq(3, 10), Outcome::Duplicate);
        t.on_seq(200, 300); // far jump grows the bitset
        let c = t.counts(300);
        assert_eq!(c.published, 300);
        assert_eq!(c.delivered, 4);
        assert_eq!(c.lost, 296);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.gaps, 2);
        assert!(c.consistent());
    }

    #[test]
    fn stale_unexpected_and_ended_connections() {
        let mut t = Tracker::new(5);
        assert_eq!(t.on_seq(4, 6), Outcome::Stale);
        assert_eq!(t.on_seq(6, 6), Outcome::Unexpected);
        t.on_seq(5, 8);
        t.end(8);
        assert!(t.ended());
        assert_eq!(t.on_seq(8, 9), Outcome::Unexpected);
        let c = t.counts(50); // numbers published after the end are not expected
        assert_eq!(
            (c.published, c.delivered, c.lost, c.stale, c.unexpected),
            (3, 1, 2, 1, 2)
        );
        assert!(c.consistent());
    }

    #[test]
    fn voided_numbers_are_neither_expected_nor_lost() {
        let mut t = Tracker::new(0);
        t.on_seq(0, 4);
        t.void(0); // already arrived: stays delivered
        t.void(1);
        t.void(1);
        t.void(2);
        assert_eq!(
            t.on_seq(2, 4),
            Outcome::Unexpected,
            "outcome was unknown, it came after all"
        );
        let c = t.counts(4);
        assert_eq!((c.published, c.delivered, c.lost, c.voided), (2, 1, 1, 2));
        assert_eq!(c.unexpected, 1);
        assert!(c.consistent());
    }

    #[test]
    fn unseen_below_counts_missing_numbers_in_a_prefix() {
        let mut t = Tracker::new(10);
        for s in (10..200).filter(|s| s % 3 != 0) {
            t.on_seq(s, 200);
        }
        let missing = |hi: u64| (10..hi).filter(|s| s % 3 == 0).count() as u64;
        for hi in [0, 10, 11, 64, 74, 75, 150, 200, 500] {
            assert_eq!(t.unseen_below(hi, 200), missing(hi.min(200)), "below {hi}");
        }
    }

    #[test]
    fn merged_counts_keep_the_invariant() {
        let mut total = DeliveryCounts::default();
        for k in 0..50u64 {
            let mut t = Tracker::new(k);
            for s in (k..k + 100).filter(|s| s % 7 != 0) {
                t.on_seq(s, k + 100);
                if s % 11 == 0 {
                    t.on_seq(s, k + 100);
                }
            }
            total.add(&t.counts(k + 100));
        }
        assert_eq!(total.published, 5000);
        assert!(total.consistent());
        assert!(total.lost > 0 && total.duplicates > 0);
        assert!((total.loss_ratio() - total.lost as f64 / 5000.0).abs() < 1e-12);
        assert_eq!(DeliveryCounts::default().loss_ratio(), 0.0);
    }
}
