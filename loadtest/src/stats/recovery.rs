//! Recovery bookkeeping (issue 10): what one logical client — a connection slot across all its
//! sessions — saw of its user's history.
//!
//! In recovery mode a connection's [`Tracker`] is not reset when it drops: the client is the same,
//! so every notification published to its user during the phase is expected on it, and a
//! reconnect that asks for a replay (`since` + `epoch`) must close the gap with no duplicate. The
//! gateway answers each such reconnect with `recovered:true` (then replays) or `recovered:false`
//! (the client must re-sync; what it missed before that point is forfeit, and counted apart as
//! `lost_resync`). Whatever else is missing is `lost_unexplained`: a real gap.

use serde::{Deserialize, Serialize};

use super::accounting::Tracker;

/// Counts of one client, a worker or a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCounts {
    /// Sessions opened (first connect and every reconnect).
    pub sessions: u64,
    /// Reconnects that asked for a replay (`since` + `epoch`).
    pub asked: u64,
    /// `connected` answered `recovered:true`.
    pub recovered_true: u64,
    /// `connected` answered `recovered:false` (history lost, trimmed or unknown epoch).
    pub recovered_false: u64,
    /// A replay was asked for and `connected` said nothing about it (a gateway without history).
    pub unsupported: u64,
    /// Notifications that arrived on a session although they were published before that session's
    /// `connected`: filled in by the replay.
    pub replayed: u64,
    /// Expected notifications never received that the client was told about (`recovered:false`).
    pub lost_resync: u64,
    /// Expected notifications never received and never explained: gaps.
    pub lost_unexplained: u64,
}

impl RecoveryCounts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Self) {
        self.sessions += o.sessions;
        self.asked += o.asked;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.unsupported += o.unsupported;
        self.replayed += o.replayed;
        self.lost_resync += o.lost_resync;
        self.lost_unexplained += o.lost_unexplained;
    }
}

/// Recovery state of one client.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Last offset seen, from `connected` or a notification.
    pub offset: Option<u64>,
    /// The epoch seen with it, interned by the worker (0 = none yet).
    pub epoch: u32,
    /// The current session asked for a replay.
    asked: bool,
    /// Sequence numbers below this that arrive on the current session are replayed ones.
    replay_below: u64,
    /// Everything below this sequence number that had not arrived was written off by a
    /// `recovered:false`.
    excused_below: u64,
    pub counts: RecoveryCounts,
}

impl Resume {
    /// What to reconnect with: `(since, epoch id)` once an offset and an epoch are known.
    #[must_use]
    pub fn since(&self) -> Option<(u64, u32)> {
        (self.epoch != 0).then_some(())?;
        Some((self.offset?, self.epoch))
    }

    /// A session is being opened; `asked` says whether its request carries `since`.
    pub fn on_session(&mut self, asked: bool) {
        self.counts.sessions += 1;
        self.asked = asked;
        self.replay_below = 0;
        if asked {
            self.counts.asked += 1;
        }
    }

    /// The session's `connected` arrived with `offset`/`epoch` (interned, 0 = absent) and
    /// `recovered`; `next_seq` is the user's next sequence number now (everything below it was
    /// published before this point).
    pub fn on_connected(
        &mut self,
        offset: Option<u64>,
        epoch: u32,
        recovered: Option<bool>,
        next_seq: u64,
    ) {
        let replaying = self.asked && recovered == Some(true);
        if self.asked {
            match recovered {
                Some(true) => self.counts.recovered_true += 1,
                Some(false) => {
                    self.counts.recovered_false += 1;
                    self.excused_below = self.excused_below.max(next_seq);
                }
                None => self.counts.unsupported += 1,
            }
        }
        if replaying {
            // Keep our own offset: the replay starts from it, and if this session drops mid-replay
            // the next one must ask from where we really are.
            self.replay_below = next_seq;
        } else {
            if offset.is_some() {
                self.offset = offset;
            }
            if epoch != 0 {
                self.epoch = epoch;
            }
        }
        self.asked = false;
    }

    /// A notification with sequence number `seq` arrived carrying `offset`/`epoch`; `new` says
    /// whether it was a first arrival of an expected number.
    pub fn on_notification(&mut self, seq: u64, offset: Option<u64>, epoch: u32, new: bool) {
        if let Some(o) = offset {
            self.offset = Some(o);
        }
        if epoch != 0 {
            self.epoch = epoch;
        }
        if new && seq < self.replay_below {
            self.counts.replayed += 1;
        }
    }

    /// Splits the tracker's losses into told (`recovered:false`) and unexplained, at the end of a
    /// phase; `published` is the user's next sequence number then.
    pub fn finish(&mut self, tracker: &Tracker, published: u64) {
        let lost = tracker.counts(published).lost;
        let resync = tracker.unseen_below(self.excused_below, published);
        self.counts.lost_resync = resync;
        self.counts.lost_unexplained = lost - resync;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::accounting::Outcome;

    /// Delivers `seq` on `t` and tells `r`, as the worker does.
    fn deliver(t: &mut Tracker, r: &mut Resume, seq: u64, published: u64, offset: u64) {
        let new = matches!(t.on_seq(seq, published), Outcome::Delivered { .. });
        r.on_notification(seq, Some(offset), 1, new);
    }

    #[test]
    fn replay_closes_the_gap_without_duplicates() {
        let (mut t, mut r) = (Tracker::new(0), Resume::default());
        r.on_session(false);
        r.on_connected(Some(100), 1, None, 0);
        assert_eq!(r.since(), Some((100, 1)));
        for s in 0..3 {
            deliver(&mut t, &mut r, s, 3, 101 + s);
        }
        // Dropped; 3..6 published meanwhile; the reconnect asks from offset 103.
        assert_eq!(r.since(), Some((103, 1)));
        r.on_session(true);
        r.on_connected(Some(106), 1, Some(true), 6);
        assert_eq!(
            r.since(),
            Some((103, 1)),
            "our offset, not the top, until replayed"
        );
        for s in 3..7 {
            deliver(&mut t, &mut r, s, 7, 101 + s);
        }
        deliver(&mut t, &mut r, 6, 7, 107); // a live duplicate of the last replayed one
        r.finish(&t, 7);
        let c = t.counts(7);
        assert_eq!(
            (c.published, c.delivered, c.lost, c.duplicates),
            (7, 7, 0, 1)
        );
        assert_eq!(r.counts.replayed, 3);
        assert_eq!(
            (r.counts.recovered_true, r.counts.asked, r.counts.sessions),
            (1, 1, 2)
        );
        assert_eq!((r.counts.lost_resync, r.counts.lost_unexplained), (0, 0));
    }

    #[test]
    fn recovered_false_excuses_what_came_before_only() {
        let (mut t, mut r) = (Tracker::new(0), Resume::default());
        r.on_session(false);
        r.on_connected(Some(0), 1, None, 0);
        deliver(&mut t, &mut r, 0, 1, 1);
        r.on_session(true);
        // History lost (new epoch 2): 1..4 are forfeit, the client is told so.
        r.on_connected(Some(0), 2, Some(false), 4);
        assert_eq!(r.since(), Some((0, 2)), "restart from the new history");
        deliver(&mut t, &mut r, 4, 6, 1);
        // 5 never arrives: a real gap.
        r.finish(&t, 6);
        assert_eq!(t.counts(6).lost, 4);
        assert_eq!(r.counts.recovered_false, 1);
        assert_eq!((r.counts.lost_resync, r.counts.lost_unexplained), (3, 1));
        assert_eq!(r.counts.replayed, 0);
    }

    #[test]
    fn a_gateway_without_history_is_counted_as_unsupported() {
        let mut r = Resume::default();
        r.on_session(false);
        r.on_connected(None, 0, None, 0);
        assert_eq!(r.since(), None, "nothing to recover from");
        r.epoch = 1;
        r.offset = Some(5);
        r.on_session(true);
        r.on_connected(None, 0, None, 9);
        assert_eq!(r.counts.unsupported, 1);
        let mut total = RecoveryCounts::default();
        total.add(&r.counts);
        total.add(&r.counts);
        assert_eq!(total.sessions, 4);
    }
}
