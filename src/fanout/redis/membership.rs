//! Per-user subscription bookkeeping for `REDIS_SUBSCRIPTION=per-user` (pure logic, no I/O).
//!
//! Shards report when a user gets its first connection on this gateway (`Joined`) and when its
//! last one goes (`Left`). The subscriber subscribes joined users at once (batched) and
//! unsubscribes a user only after it has been gone for a grace period, so a phone that
//! reconnects every few seconds does not thrash Redis with SUBSCRIBE/UNSUBSCRIBE pairs.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// A change in the set of users connected to this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The user's first connection was registered.
    Joined(Box<str>),
    /// The user's last connection was removed.
    Left(Box<str>),
}

/// State of one user's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// Connected here and subscribed (or about to be).
    Wanted,
    /// Gone since this instant; unsubscribed when the grace period ends unless it rejoins.
    Leaving(Instant),
}

/// What the subscriber should change on its Redis connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Users to SUBSCRIBE.
    pub subscribe: Vec<Box<str>>,
    /// Users to UNSUBSCRIBE.
    pub unsubscribe: Vec<Box<str>>,
}

/// The users this gateway holds and the channels it keeps subscribed.
pub struct Membership {
    /// Subscribed (or to-be-subscribed) users.
    users: HashMap<Box<str>, Channel>,
    /// Joined since the last [`Self::take_changes`].
    to_subscribe: Vec<Box<str>>,
    /// Users that left, in leave order (entries may be stale if they rejoined).
    leaving: VecDeque<(Instant, Box<str>)>,
    /// How long a departed user's channel is kept.
    grace: Duration,
}

impl Membership {
    /// Empty bookkeeping with the given unsubscribe grace period.
    pub fn new(grace: Duration) -> Self {
        Self {
            users: HashMap::new(),
            to_subscribe: Vec::new(),
            leaving: VecDeque::new(),
            grace,
        }
    }

    /// Applies one shard event.
    pub fn apply(&mut self, event: Event, now: Instant) {
        match event {
            Event::Joined(user) => match self.users.insert(user.clone(), Channel::Wanted) {
                // Already subscribed (it was only leaving): nothing to send.
                Some(_) => {}
                None => self.to_subscribe.push(user),
            },
            Event::Left(user) => {
                if let Some(state) = self.users.get_mut(&user) {
                    *state = Channel::Leaving(now);
                    self.leaving.push_back((now, user));
                }
            }
        }
    }

    /// The subscriptions to change now: every newly joined user, and users whose grace period
    /// has run out.
    pub fn take_changes(&mut self, now: Instant) -> Changes {
        let mut changes = Changes {
            subscribe: std::mem::take(&mut self.to_subscribe),
            unsubscribe: Vec::new(),
        };
        while let Some((since, _)) = self.leaving.front() {
            if now.duration_since(*since) < self.grace {
                break;
            }
            let (since, user) = self.leaving.pop_front().expect("front exists");
            // Only if it is still leaving from that very departure (not rejoined since).
            if self.users.get(&user) == Some(&Channel::Leaving(since)) {
                self.users.remove(&user);
                changes.unsubscribe.push(user);
            }
        }
        changes
    }

    /// Every user whose channel should be subscribed (after a reconnect).
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|u| &**u)
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

    #[test]
    fn subscribes_on_join_and_unsubscribes_after_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut m = Membership::new(grace);
        m.apply(Event::Joined(u("a")), t0);
        m.apply(Event::Joined(u("b")), t0);
        assert_eq!(m.take_changes(t0).subscribe, vec![u("a"), u("b")]);
        assert_eq!(m.take_changes(t0), Changes::default());
        m.apply(Event::Left(u("a")), t0);
        assert_eq!(
            m.take_changes(t0 + Duration::from_secs(4)),
            Changes::default()
        );
        let later = m.take_changes(t0 + grace);
        assert_eq!(later.unsubscribe, vec![u("a")]);
        assert_eq!(m.all().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn rejoin_within_grace_keeps_the_subscription_without_commands() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(5));
        m.apply(Event::Joined(u("a")), t0);
        m.take_changes(t0);
        m.apply(Event::Left(u("a")), t0);
        m.apply(Event::Joined(u("a")), t0 + Duration::from_secs(1));
        assert_eq!(
            m.take_changes(t0 + Duration::from_secs(10)),
            Changes::default()
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn leaving_twice_counts_from_the_last_departure() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(5));
        m.apply(Event::Joined(u("a")), t0);
        m.apply(Event::Left(u("a")), t0);
        m.apply(Event::Joined(u("a")), t0 + Duration::from_secs(3));
        m.apply(Event::Left(u("a")), t0 + Duration::from_secs(4));
        m.take_changes(t0);
        assert!(
            m.take_changes(t0 + Duration::from_secs(6))
                .unsubscribe
                .is_empty()
        );
        assert_eq!(
            m.take_changes(t0 + Duration::from_secs(9)).unsubscribe,
            vec![u("a")]
        );
    }

    #[test]
    fn left_for_unknown_user_is_ignored() {
        let mut m = Membership::new(Duration::ZERO);
        m.apply(Event::Left(u("ghost")), Instant::now());
        assert_eq!(m.len(), 0);
        assert_eq!(m.take_changes(Instant::now()), Changes::default());
    }
}
