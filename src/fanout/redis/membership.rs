//! Per-user subscription bookkeeping for `REDIS_SUBSCRIPTION=per-user` (pure logic, no I/O).
//!
//! A shard asks for a user's channel before it answers that user's first upgrade ([`Event::Want`],
//! with a [`Ticket`] to answer), and reports when the user's last connection is gone
//! ([`Event::Left`]). The subscriber SUBSCRIBEs wanted users in batches and answers each ticket
//! once Redis has confirmed the channel, at once when the channel is already active (also
//! during its unsubscribe grace period). A channel is unsubscribed only after its user has been
//! gone for the grace period, so a phone that reconnects every few seconds does not thrash
//! Redis with SUBSCRIBE/UNSUBSCRIBE pairs.
//!
//! Every ticket is answered exactly once: subscribed when its channel is confirmed, not
//! subscribed when the user's entry is dropped before that (it left and its grace ran out while
//! Redis was unreachable). Shards bound their outstanding tickets by that.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use smallvec::SmallVec;

/// Identifies one waiting upgrade: which shard waits, and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The waiting shard.
    pub shard: usize,
    /// The shard's number for this wait.
    pub id: u64,
}

/// The subscriber's answer to a [`Ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// [`Ticket::id`].
    pub id: u64,
    /// Whether the user's channel is subscribed and confirmed by Redis.
    pub subscribed: bool,
}

/// A change in the set of users connected to this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection of this user waits for its channel (its first one on this gateway, or
    /// another one while the first still waits). Answer `ticket` once subscribed.
    Want {
        /// The user.
        user: Box<str>,
        /// Where to answer.
        ticket: Ticket,
    },
    /// The user has no connection and no waiting upgrade left on this gateway.
    Left(Box<str>),
}

/// A channel's subscription on the current Redis connection, in 8 bytes (one per connected
/// user): to be sent, sent in the SUBSCRIBE command numbered so and not confirmed yet, or
/// confirmed by Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sub(u64);

impl Sub {
    const PENDING: Sub = Sub(0);
    const ACTIVE: Sub = Sub(u64::MAX);

    /// Sent in SUBSCRIBE number `seq` (numbers start at 1 and never reach `u64::MAX`).
    fn sent(seq: u64) -> Sub {
        debug_assert!(seq != 0 && seq != u64::MAX);
        Sub(seq)
    }
}

/// One user's channel (24 bytes; the tickets of waiting upgrades are kept apart, only while
/// there are any, so that an idle user costs no more than this and its id).
#[derive(Debug)]
struct Entry {
    sub: Sub,
    /// Gone since then (no connection left); unsubscribed when the grace period ends.
    leaving: Option<Instant>,
}

/// Users whose channel is now confirmed, or given up, with the tickets to answer.
pub type Answers = Vec<(Ticket, bool)>;

/// The users this gateway holds and the channels it keeps subscribed.
pub struct Membership {
    /// Every user with a channel (wanted, or leaving within its grace period).
    users: HashMap<Box<str>, Entry>,
    /// Tickets to answer when a user's channel is confirmed (users not yet confirmed only).
    waiters: HashMap<Box<str>, SmallVec<[Ticket; 1]>>,
    /// Users in [`Sub::Pending`], in arrival order (entries may be stale).
    to_subscribe: Vec<Box<str>>,
    /// Users that left, in leave order (entries may be stale if they came back).
    leaving: VecDeque<(Instant, Box<str>)>,
    /// How long a departed user's channel is kept.
    grace: Duration,
}

impl Membership {
    /// Empty bookkeeping with the given unsubscribe grace period.
    pub fn new(grace: Duration) -> Self {
        Self {
            users: HashMap::new(),
            waiters: HashMap::new(),
            to_subscribe: Vec::new(),
            leaving: VecDeque::new(),
            grace,
        }
    }

    /// Applies one shard event. Returns a ticket that can be answered "subscribed" at once
    /// (its channel is active).
    pub fn apply(&mut self, event: Event, now: Instant) -> Option<Ticket> {
        match event {
            Event::Want { user, ticket } => {
                let entry = match self.users.get_mut(&user) {
                    Some(entry) => entry,
                    None => {
                        self.to_subscribe.push(user.clone());
                        self.users.entry(user.clone()).or_insert(Entry {
                            sub: Sub::PENDING,
                            leaving: None,
                        })
                    }
                };
                entry.leaving = None;
                if entry.sub == Sub::ACTIVE {
                    return Some(ticket);
                }
                self.waiters.entry(user).or_default().push(ticket);
                None
            }
            Event::Left(user) => {
                if let Some(entry) = self.users.get_mut(&user) {
                    entry.leaving = Some(now);
                    self.leaving.push_back((now, user));
                }
                None
            }
        }
    }

    /// Takes the users to SUBSCRIBE now (batch them, then report each batch with
    /// [`Self::sent`]).
    pub fn take_to_subscribe(&mut self) -> Vec<Box<str>> {
        let mut users = std::mem::take(&mut self.to_subscribe);
        let mut seen = std::collections::HashSet::with_capacity(users.len());
        users.retain(|u| {
            self.users.get(u).is_some_and(|e| e.sub == Sub::PENDING) && seen.insert(u.clone())
        });
        users
    }

    /// Records that `users` were sent in the SUBSCRIBE command numbered `seq`.
    pub fn sent(&mut self, users: &[Box<str>], seq: u64) {
        for user in users {
            if let Some(entry) = self.users.get_mut(user) {
                entry.sub = Sub::sent(seq);
            }
        }
    }

    /// Redis confirmed `user`'s channel in reply to SUBSCRIBE number `seq`: the tickets to
    /// answer. A confirmation for an older command (the user was unsubscribed and wanted again
    /// since) changes nothing.
    pub fn confirmed(&mut self, user: &str, seq: u64) -> SmallVec<[Ticket; 1]> {
        match self.users.get_mut(user) {
            Some(entry) if entry.sub == Sub::sent(seq) => {
                entry.sub = Sub::ACTIVE;
                self.waiters.remove(user).unwrap_or_default()
            }
            _ => SmallVec::new(),
        }
    }

    /// The users whose grace period has run out: drop them (UNSUBSCRIBE those that were sent),
    /// and answer their remaining tickets "not subscribed".
    pub fn take_expired(&mut self, now: Instant) -> (Vec<Box<str>>, Answers) {
        let mut unsubscribe = Vec::new();
        let mut answers = Vec::new();
        while let Some((since, _)) = self.leaving.front() {
            if now.duration_since(*since) < self.grace {
                break;
            }
            let (since, user) = self.leaving.pop_front().expect("front exists");
            // Only if it is still leaving from that very departure (not back since).
            let current = self.users.get(&user).and_then(|e| e.leaving);
            if current != Some(since) {
                continue;
            }
            let entry = self.users.remove(&user).expect("checked above");
            let waiters = self.waiters.remove(&user).unwrap_or_default();
            answers.extend(waiters.into_iter().map(|t| (t, false)));
            if entry.sub != Sub::PENDING {
                unsubscribe.push(user);
            }
        }
        (unsubscribe, answers)
    }

    /// The connection to Redis is gone: no channel is subscribed any more. Every user is to be
    /// subscribed again, and wants arriving meanwhile wait for that.
    pub fn connection_lost(&mut self) {
        self.to_subscribe.clear();
        for (user, entry) in &mut self.users {
            entry.sub = Sub::PENDING;
            self.to_subscribe.push(user.clone());
        }
    }

    /// Number of channels held.
    pub fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Box<str> {
        s.into()
    }

    fn t(id: u64) -> Ticket {
        Ticket { shard: 0, id }
    }

    fn want(m: &mut Membership, user: &str, id: u64, now: Instant) -> Option<Ticket> {
        m.apply(
            Event::Want {
                user: u(user),
                ticket: t(id),
            },
            now,
        )
    }

    #[test]
    fn answers_once_confirmed_and_unsubscribes_after_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut m = Membership::new(grace);
        assert_eq!(want(&mut m, "a", 1, t0), None);
        assert_eq!(want(&mut m, "b", 2, t0), None);
        assert_eq!(want(&mut m, "a", 3, t0), None);
        let batch = m.take_to_subscribe();
        assert_eq!(batch, vec![u("a"), u("b")]);
        m.sent(&batch, 7);
        assert!(m.take_to_subscribe().is_empty());
        assert!(
            m.confirmed("a", 6).is_empty(),
            "an older command confirms nothing"
        );
        assert_eq!(m.confirmed("a", 7).to_vec(), vec![t(1), t(3)]);
        assert_eq!(m.confirmed("b", 7).to_vec(), vec![t(2)]);
        // Active: answered at once.
        assert_eq!(want(&mut m, "a", 4, t0), Some(t(4)));
        m.apply(Event::Left(u("a")), t0);
        assert_eq!(
            m.take_expired(t0 + Duration::from_secs(4)).0,
            Vec::<Box<str>>::new()
        );
        // Within the grace period the channel still covers a new connection.
        m.apply(Event::Left(u("b")), t0);
        let (unsub, answers) = m.take_expired(t0 + grace);
        assert_eq!(unsub, vec![u("a"), u("b")]);
        assert!(answers.is_empty());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn coming_back_within_grace_keeps_the_channel_without_commands() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(5));
        want(&mut m, "a", 1, t0);
        let batch = m.take_to_subscribe();
        m.sent(&batch, 1);
        m.confirmed("a", 1);
        m.apply(Event::Left(u("a")), t0);
        assert_eq!(
            want(&mut m, "a", 2, t0 + Duration::from_secs(1)),
            Some(t(2))
        );
        assert!(m.take_to_subscribe().is_empty());
        assert_eq!(m.take_expired(t0 + Duration::from_secs(10)).0.len(), 0);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn leaving_twice_counts_from_the_last_departure() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(5));
        want(&mut m, "a", 1, t0);
        m.apply(Event::Left(u("a")), t0);
        want(&mut m, "a", 2, t0 + Duration::from_secs(3));
        m.apply(Event::Left(u("a")), t0 + Duration::from_secs(4));
        assert!(m.take_expired(t0 + Duration::from_secs(6)).0.is_empty());
        // Never sent: nothing to UNSUBSCRIBE, but both tickets are answered.
        let (unsub, answers) = m.take_expired(t0 + Duration::from_secs(9));
        assert!(unsub.is_empty());
        assert_eq!(answers, vec![(t(1), false), (t(2), false)]);
        assert!(
            m.take_to_subscribe().is_empty(),
            "a dropped user is not subscribed"
        );
    }

    #[test]
    fn a_lost_connection_resubscribes_everyone_and_wants_wait_for_it() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(5));
        want(&mut m, "a", 1, t0);
        let batch = m.take_to_subscribe();
        m.sent(&batch, 1);
        m.confirmed("a", 1);
        m.connection_lost();
        assert_eq!(
            want(&mut m, "a", 2, t0),
            None,
            "not active on the new connection yet"
        );
        let batch = m.take_to_subscribe();
        assert_eq!(batch, vec![u("a")]);
        m.sent(&batch, 1);
        assert_eq!(m.confirmed("a", 1).to_vec(), vec![t(2)]);
    }

    #[test]
    fn an_unsubscribe_racing_a_new_want_is_not_mistaken_for_its_confirmation() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::ZERO);
        want(&mut m, "a", 1, t0);
        let batch = m.take_to_subscribe();
        m.sent(&batch, 1);
        m.apply(Event::Left(u("a")), t0);
        // Gone before its confirmation: its ticket is answered, the channel unsubscribed.
        assert_eq!(m.take_expired(t0), (vec![u("a")], vec![(t(1), false)]));
        want(&mut m, "a", 2, t0);
        let batch = m.take_to_subscribe();
        m.sent(&batch, 3);
        assert!(
            m.confirmed("a", 1).is_empty(),
            "the old SUBSCRIBE's late reply"
        );
        assert_eq!(m.confirmed("a", 3).to_vec(), vec![t(2)]);
    }

    #[test]
    fn left_for_unknown_user_is_ignored() {
        let mut m = Membership::new(Duration::ZERO);
        m.apply(Event::Left(u("ghost")), Instant::now());
        assert_eq!(m.len(), 0);
        assert_eq!(m.take_expired(Instant::now()), (vec![], vec![]));
    }
}
