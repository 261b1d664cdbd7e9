//! History with Redis, on the shard: what the live notifications of a user mean for its
//! connections, given that a connection's history is read from Redis while notifications keep
//! arriving.
//!
//! - **Waiting upgrades** ([`Waiter`]): an upgrade with history is registered here *before* its
//!   read is sent, so every live notification of its user arriving meanwhile is kept for it (at
//!   most `HISTORY_LIVE_BUFFER`, else it is refused with 503). When the read answers, the
//!   connection gets `connected`, the replay, then the kept notifications it does not have
//!   ([`Position::take`]), and is registered in the same step: nothing can slip in between.
//! - **Established users** ([`Track`]): per user with connections here, the epoch and offset of
//!   the last recorded notification they were sent. Redis hands every notification of a channel
//!   to a subscriber once and in order, so the next one must be `offset + 1`: a larger offset
//!   in the same epoch means some were lost on the way (the subscriber was disconnected, or a
//!   full shard ring dropped them), and the user's connections are closed with 4002 so their
//!   clients reconnect at once with `since` and get them from history. A new epoch starts a new
//!   count. A connection that joined knowing more than the others (its read saw notifications
//!   still on their way here) is marked [`Ahead`] until they arrive, so it does not get them
//!   twice.
//!
//! Memory: one [`Track`] per user with connections on this shard (~56 B with its map entry);
//! waiting upgrades hold their kept notifications (shared frames) until answered.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    time::Instant,
};

use bytes::Bytes;

use crate::{proto::history::Mark, shard::conn::Conn};

/// Capacity above which an emptied map is given back.
pub const SHRINK_ABOVE: usize = 1024;

/// A live notification kept for a waiting upgrade.
pub struct Kept {
    /// The frame as delivered live.
    pub frame: Bytes,
    /// Its place in history (none: a plain PUBLISH, not recorded).
    pub mark: Option<Mark>,
    /// When the gateway received it (delivery latency).
    pub received: Instant,
}

/// An upgrade waiting for its history.
#[derive(Default)]
pub struct Waiter {
    /// Live notifications that arrived meanwhile, in order.
    kept: RefCell<Vec<Kept>>,
    /// More arrived than may be kept: the upgrade is refused.
    overflowed: Cell<bool>,
}

impl Waiter {
    /// Takes what was kept; `None` when it overflowed.
    pub fn take(&self) -> Option<Vec<Kept>> {
        (!self.overflowed.get()).then(|| std::mem::take(&mut *self.kept.borrow_mut()))
    }
}

/// Where a connection stands in its user's history: the last notification it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Epoch hash.
    pub epoch: u64,
    /// Offset.
    pub offset: u64,
}

/// What taking a live notification into a [`Position`] means.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send it.
    Send,
    /// Already sent (by a replay): skip it.
    Skip,
    /// Some notifications before it are missing.
    Gap,
}

impl Position {
    /// Takes a live notification: a plain one (no mark) is always sent; a recorded one is sent
    /// when it is the next offset or starts another epoch, skipped when not newer.
    pub fn take(&mut self, mark: Option<Mark>) -> Step {
        let Some(m) = mark else {
            return Step::Send;
        };
        if m.epoch != self.epoch {
            *self = Position {
                epoch: m.epoch,
                offset: m.offset,
            };
            return Step::Send;
        }
        if m.offset <= self.offset {
            return Step::Skip;
        }
        if m.offset == self.offset + 1 {
            self.offset = m.offset;
            return Step::Send;
        }
        Step::Gap
    }
}

/// A connection that knows more than its user's [`Track`]: skip what it has.
struct Ahead {
    /// The connection (held, so its identity cannot be reused while marked).
    conn: Rc<Conn>,
    /// What it has.
    at: Position,
}

/// The established connections of one user.
struct Track {
    /// The last recorded notification sent to them.
    at: Position,
    /// The Redis subscription was lost since: the next recorded notification must be exactly
    /// the next offset of the same epoch, else some may have been missed (a new epoch included:
    /// what the old one still had is unknown).
    suspect: bool,
    /// Connections that have more (usually none).
    ahead: Vec<Ahead>,
}

/// What to do with a live notification for a user's established connections.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to every connection (`check_ahead`: except those [`Live::has`] says have it).
    Send {
        /// Some connections may already have it.
        check_ahead: bool,
    },
    /// Nobody needs it.
    Skip,
    /// Notifications before it were lost: close the user's connections with 4002.
    Gap,
}

/// A shard's live state of history (Redis mode).
#[derive(Default)]
pub struct Live {
    /// Waiting upgrades by user.
    waiting: HashMap<Rc<str>, Vec<Rc<Waiter>>>,
    /// Users with connections here.
    tracks: HashMap<Rc<str>, Track>,
}

impl Live {
    /// Registers an upgrade of `user` that is about to ask for its history.
    pub fn wait(&mut self, user: &Rc<str>) -> Rc<Waiter> {
        let waiter = Rc::new(Waiter::default());
        self.waiting
            .entry(user.clone())
            .or_default()
            .push(waiter.clone());
        waiter
    }

    /// The upgrade is answered (or refused): stop keeping notifications for it.
    pub fn done(&mut self, user: &str, waiter: &Rc<Waiter>) {
        if let Some(list) = self.waiting.get_mut(user) {
            list.retain(|w| !Rc::ptr_eq(w, waiter));
            if list.is_empty() {
                self.waiting.remove(user);
            }
        }
        // A reconnect storm leaves the map sized for every upgrade that waited at once; give it
        // back once they are all answered (idle connections must not pay for the storm).
        if self.waiting.is_empty() && self.waiting.capacity() > SHRINK_ABOVE {
            self.waiting = HashMap::new();
        }
    }

    /// Whether an upgrade of `user` waits (cheap when none does).
    pub fn is_waiting(&self, user: &str) -> bool {
        !self.waiting.is_empty() && self.waiting.contains_key(user)
    }

    /// Keeps a live notification for every waiting upgrade of `user` (at most `cap` each).
    pub fn keep(
        &self,
        user: &str,
        frame: &Bytes,
        mark: Option<Mark>,
        received: Instant,
        cap: usize,
    ) {
        for w in self.waiting.get(user).into_iter().flatten() {
            if w.overflowed.get() {
                continue;
            }
            let mut kept = w.kept.borrow_mut();
            if kept.len() >= cap {
                w.overflowed.set(true);
                *kept = Vec::new();
                continue;
            }
            kept.push(Kept {
                frame: frame.clone(),
                mark,
                received,
            });
        }
    }

    /// A connection of `user` was established at `at`.
    pub fn joined(&mut self, user: &Rc<str>, conn: &Rc<Conn>, at: Position) {
        match self.tracks.get_mut(user) {
            None => {
                self.tracks.insert(
                    user.clone(),
                    Track {
                        at,
                        suspect: false,
                        ahead: Vec::new(),
                    },
                );
            }
            Some(track) if track.at.epoch == at.epoch && at.offset <= track.at.offset => {}
            Some(track) => track.ahead.push(Ahead {
                conn: conn.clone(),
                at,
            }),
        }
    }

    /// A live notification for `user`, who has connections here.
    pub fn on_live(&mut self, user: &str, mark: Option<Mark>) -> Verdict {
        let Some(track) = self.tracks.get_mut(user) else {
            // Connections without a track cannot be (they are made when one joins): start one.
            if let Some(m) = mark {
                let at = Position {
                    epoch: m.epoch,
                    offset: m.offset,
                };
                self.tracks.insert(
                    Rc::from(user),
                    Track {
                        at,
                        suspect: false,
                        ahead: Vec::new(),
                    },
                );
            }
            return Verdict::Send { check_ahead: false };
        };
        let before = track.at;
        let mut step = track.at.take(mark);
        if track.suspect
            && let Some(m) = mark
        {
            if step != Step::Skip {
                track.suspect = false;
            }
            if step == Step::Send && m.epoch != before.epoch {
                step = Step::Gap;
            }
        }
        let verdict = match step {
            Step::Send => Verdict::Send {
                check_ahead: mark.is_some() && !track.ahead.is_empty(),
            },
            Step::Skip => Verdict::Skip,
            Step::Gap => {
                let m = mark.expect("only a recorded notification leaves a gap");
                track.at = Position {
                    epoch: m.epoch,
                    offset: m.offset,
                };
                Verdict::Gap
            }
        };
        let at = track.at;
        track.ahead.retain(|a| {
            let caught_up = a.at.epoch == at.epoch && a.at.offset <= at.offset;
            !caught_up && a.conn.phase() != crate::shard::conn::Phase::Closed
        });
        verdict
    }

    /// The Redis subscription was lost: notifications may be missing after every user's
    /// position. Established users check their next offset strictly; waiting upgrades are
    /// refused (503, retry with the same `since`) since what they kept may have a hole.
    pub fn blind(&mut self) {
        for track in self.tracks.values_mut() {
            track.suspect = true;
        }
        for waiter in self.waiting.values().flatten() {
            waiter.overflowed.set(true);
            waiter.kept.borrow_mut().clear();
        }
    }

    /// Users whose position is suspect since a lost subscription.
    pub fn suspects(&self) -> Vec<Rc<str>> {
        self.tracks
            .iter()
            .filter(|(_, t)| t.suspect)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Checks a suspect user's position against its history as read from Redis (`None`: could
    /// not be read). Returns whether its connections must be closed to recover: the history
    /// moved past (or away from) what they were sent. Clears the suspicion either way; a user
    /// no longer suspect (a notification settled it meanwhile) is left alone.
    pub fn verify(&mut self, user: &str, read: Option<Position>) -> bool {
        let Some(track) = self.tracks.get_mut(user) else {
            return false;
        };
        if !track.suspect {
            return false;
        }
        track.suspect = false;
        read != Some(track.at)
    }

    /// Whether `conn` (marked ahead) already has the notification at `mark`.
    pub fn has(&self, user: &str, conn: &Rc<Conn>, mark: Mark) -> bool {
        self.tracks.get(user).is_some_and(|t| {
            t.ahead.iter().any(|a| {
                Rc::ptr_eq(&a.conn, conn) && a.at.epoch == mark.epoch && mark.offset <= a.at.offset
            })
        })
    }

    /// Where the user's established connections stand, if it has any here.
    #[cfg(test)]
    pub fn position(&self, user: &str) -> Option<Position> {
        self.tracks.get(user).map(|t| t.at)
    }

    /// The user's last connection here is gone.
    pub fn left(&mut self, user: &str) {
        self.tracks.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(epoch: u64, offset: u64) -> Option<Mark> {
        Some(Mark { offset, epoch })
    }

    #[test]
    fn a_position_sends_the_next_skips_the_known_and_sees_gaps() {
        let mut p = Position {
            epoch: 1,
            offset: 5,
        };
        assert_eq!(p.take(None), Step::Send, "plain PUBLISH");
        assert_eq!(p.take(mark(1, 4)), Step::Skip);
        assert_eq!(p.take(mark(1, 5)), Step::Skip);
        assert_eq!(p.take(mark(1, 6)), Step::Send);
        assert_eq!(p.offset, 6);
        assert_eq!(p.take(mark(1, 8)), Step::Gap);
        assert_eq!(p.offset, 6, "a gap does not move the position");
        assert_eq!(p.take(mark(2, 1)), Step::Send, "another epoch starts over");
        assert_eq!(
            p,
            Position {
                epoch: 2,
                offset: 1
            }
        );
        assert_eq!(p.take(mark(2, 2)), Step::Send);
    }

    #[test]
    fn waiters_keep_live_notifications_up_to_their_cap() {
        let mut live = Live::default();
        let user: Rc<str> = Rc::from("u");
        assert!(!live.is_waiting("u"));
        let w = live.wait(&user);
        assert!(live.is_waiting("u"));
        let f = Bytes::from_static(b"x");
        live.keep("u", &f, mark(1, 1), Instant::now(), 2);
        live.keep("u", &f, None, Instant::now(), 2);
        live.keep("other", &f, None, Instant::now(), 2);
        let kept = w.take().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].mark, mark(1, 1));
        for _ in 0..3 {
            live.keep("u", &f, None, Instant::now(), 2);
        }
        assert!(w.take().is_none(), "overflowed");
        live.done("u", &w);
        assert!(!live.is_waiting("u"));
    }

    #[test]
    fn established_users_get_each_offset_once_and_gaps_are_seen() {
        let mut live = Live::default();
        live.tracks.insert(
            Rc::from("u"),
            Track {
                at: Position {
                    epoch: 1,
                    offset: 3,
                },
                suspect: false,
                ahead: Vec::new(),
            },
        );
        let send = Verdict::Send { check_ahead: false };
        assert_eq!(live.on_live("u", mark(1, 4)), send);
        assert_eq!(live.on_live("u", None), send);
        assert_eq!(live.on_live("u", mark(1, 4)), Verdict::Skip);
        assert_eq!(live.on_live("u", mark(1, 6)), Verdict::Gap);
        assert_eq!(live.on_live("u", mark(1, 7)), send, "counting from the gap");
        assert_eq!(live.on_live("u", mark(9, 1)), send, "a new epoch");
        live.left("u");
        assert_eq!(live.position("u"), None);
    }

    #[test]
    fn after_a_lost_subscription_the_next_offset_is_checked_strictly() {
        let mut live = Live::default();
        let start = |live: &mut Live| {
            live.tracks.insert(
                Rc::from("u"),
                Track {
                    at: Position {
                        epoch: 1,
                        offset: 3,
                    },
                    suspect: false,
                    ahead: Vec::new(),
                },
            );
        };
        let send = Verdict::Send { check_ahead: false };
        // Without a loss, a new epoch is simply followed (the history expired meanwhile).
        start(&mut live);
        assert_eq!(live.on_live("u", mark(2, 1)), send);
        // After a loss, a new epoch may hide lost notifications: a gap.
        start(&mut live);
        live.blind();
        assert_eq!(
            live.on_live("u", None),
            send,
            "plain PUBLISH: still suspect"
        );
        assert_eq!(
            live.on_live("u", mark(1, 3)),
            Verdict::Skip,
            "old: still suspect"
        );
        assert_eq!(live.on_live("u", mark(2, 1)), Verdict::Gap);
        assert_eq!(live.on_live("u", mark(2, 2)), send, "checked once");
        // After a loss, the very next offset of the same epoch clears it.
        start(&mut live);
        live.blind();
        assert_eq!(live.on_live("u", mark(1, 4)), send);
        assert_eq!(live.on_live("u", mark(5, 1)), send);
        // The check after the subscription is back: equal positions clear it, others close.
        start(&mut live);
        live.blind();
        assert_eq!(live.suspects().len(), 1);
        let same = Position {
            epoch: 1,
            offset: 3,
        };
        assert!(!live.verify("u", Some(same)));
        assert!(live.suspects().is_empty());
        live.blind();
        assert!(live.verify("u", None), "unreadable: close");
        live.blind();
        assert!(live.verify(
            "u",
            Some(Position {
                epoch: 1,
                offset: 4
            })
        ));
        assert!(!live.verify("u", None), "no longer suspect");
        // Waiting upgrades are refused.
        let w = live.wait(&Rc::from("v"));
        live.blind();
        assert!(w.take().is_none());
    }
}
