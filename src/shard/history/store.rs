//! Single-node history: the recent notifications of the users a shard owns, in memory, as the
//! finished frames that went out live (a replay sends the very same bytes).
//!
//! Bounds, each with its policy:
//! - per user, at most `HISTORY_SIZE` notifications and `OUTBOX_MAX_BYTES` of frames (a whole
//!   replay must fit a connection's outbox): the oldest go first;
//! - per user, `HISTORY_TTL` after the last write or read: the whole history goes (the sweep);
//! - per shard, its share of `HISTORY_MAX_BYTES`: the users touched least recently lose their
//!   whole history first.
//!
//! A user whose history is created (first notification or first connection, or again after it
//! went) gets a new epoch: a random per-shard base drawn at start, so a restart changes every
//! epoch, and a counter, so a history dropped and created again never reuses one. Offsets are
//! given out here, on the user's owner shard, so they are unique and contiguous without a lock.
//! No I/O; the shard's clock is passed in.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    rc::Rc,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use bytes::Bytes;

use crate::{
    metrics::{Eviction, HistoryStats, Recovery},
    proto::history::{Resume, recorded_frame},
};

/// Bytes counted for one entry besides its frame (the entry, the frame's allocation header, the
/// deque slot). Measured figures are in docs/PERFORMANCE.md.
pub const ENTRY_OVERHEAD: usize = 64;
/// Bytes counted for one user's history besides its entries (map and order entries, the user id,
/// the epoch, the deque).
pub const USER_OVERHEAD: usize = 160;

/// The store's bounds.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Notifications kept per user (`HISTORY_SIZE`).
    pub size: usize,
    /// Frame bytes kept per user (`OUTBOX_MAX_BYTES`).
    pub user_bytes: usize,
    /// Bytes this shard may hold for all its users (its share of `HISTORY_MAX_BYTES`).
    pub budget: usize,
    /// `HISTORY_TTL` in milliseconds.
    pub ttl_ms: u64,
}

/// One notification kept.
struct Entry {
    /// The frame as sent live (offset and epoch included).
    frame: Bytes,
    /// The publish request's `Idempotency-Key`, if it had one.
    idempotency: Option<Arc<str>>,
    /// Connections it reached when published (the answer to a repeat of its key).
    recipients: u32,
}

/// One user's history.
struct UserHistory {
    /// Its epoch.
    epoch: Box<str>,
    /// The last offset given out (0: none).
    top: u64,
    /// The kept notifications, oldest first; the last one has offset `top`.
    entries: VecDeque<Entry>,
    /// Bytes counted against the budget (entries and overhead).
    bytes: usize,
    /// Frame bytes of the entries (bounded by `user_bytes`).
    frame_bytes: usize,
    /// Shard time of the last write or read.
    touched_ms: u64,
    /// Its key in [`Store::order`].
    touch: u64,
}

impl UserHistory {
    /// The offset of the oldest entry kept (`top + 1` when none is).
    fn first(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }
}

/// What [`Store::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Recorded with this offset; send this frame.
    New {
        /// The frame to deliver (offset and epoch spliced in).
        frame: Bytes,
        /// Its offset.
        offset: u64,
    },
    /// The idempotency key is in the user's history: nothing recorded.
    Repeated {
        /// The first publish's count.
        recipients: u32,
    },
}

/// Where a connecting client stands.
#[derive(Debug)]
pub struct Snapshot {
    /// The user's epoch.
    pub epoch: Box<str>,
    /// The user's top offset.
    pub top: u64,
    /// What to replay (empty unless recovered).
    pub replay: Vec<Bytes>,
    /// How a replay request ended (`None`: the client did not ask).
    pub outcome: Option<Recovery>,
}

/// A shard's single-node history.
pub struct Store {
    /// Bounds.
    limits: StoreLimits,
    /// Histories by user.
    users: HashMap<Rc<str>, UserHistory>,
    /// Users by last touch, least recent first (expiry and eviction order).
    order: BTreeMap<u64, Rc<str>>,
    /// The next touch number.
    next_touch: u64,
    /// Bytes counted, all users.
    bytes: usize,
    /// Random per shard and per start: every epoch begins with it.
    epoch_base: String,
    /// Numbers the epochs of histories created here.
    next_epoch: u64,
}

impl Store {
    /// An empty store whose epochs start with `epoch_base`.
    pub fn new(limits: StoreLimits, epoch_base: String) -> Self {
        Self {
            limits,
            users: HashMap::new(),
            order: BTreeMap::new(),
            next_touch: 0,
            bytes: 0,
            epoch_base,
            next_epoch: 0,
        }
    }

    /// Bytes counted for all users.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Users with a history.
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Records `text` (a normalised JSON object) for `user`: the next offset, the frame with
    /// `offset` and `epoch`; or nothing when `idempotency` is already in the user's history.
    pub fn append(
        &mut self,
        user: &str,
        text: &[u8],
        idempotency: Option<&Arc<str>>,
        now_ms: u64,
        stats: &HistoryStats,
    ) -> Appended {
        let key = self.open(user, now_ms, stats);
        let h = self.users.get_mut(&key).expect("just opened");
        if let Some(k) = idempotency
            && let Some(e) = h.entries.iter().find(|e| e.idempotency.as_ref() == Some(k))
        {
            return Appended::Repeated {
                recipients: e.recipients,
            };
        }
        h.top += 1;
        let frame = recorded_frame(text, h.top, &h.epoch);
        let cost = frame.len() + ENTRY_OVERHEAD + idempotency.map_or(0, |k| k.len());
        h.entries.push_back(Entry {
            frame: frame.clone(),
            idempotency: idempotency.cloned(),
            recipients: 0,
        });
        h.frame_bytes += frame.len();
        h.bytes += cost;
        self.bytes += cost;
        // Trim to the per-user bounds, oldest first (even the new one, if it alone is larger
        // than a replay may be: a client that missed it is told recovered:false).
        while h.entries.len() > self.limits.size || h.frame_bytes > self.limits.user_bytes {
            let old = h
                .entries
                .pop_front()
                .expect("bounds exceeded by some entry");
            let cost = old.frame.len() + ENTRY_OVERHEAD + old.idempotency.map_or(0, |k| k.len());
            h.frame_bytes -= old.frame.len();
            h.bytes -= cost;
            self.bytes -= cost;
        }
        let offset = h.top;
        self.evict_over_budget(&key, stats);
        self.publish_gauges(stats);
        Appended::New { frame, offset }
    }

    /// Records how many connections the notification at `offset` reached (the answer to a
    /// repeat of its idempotency key).
    pub fn set_recipients(&mut self, user: &str, offset: u64, recipients: u32) {
        if let Some(h) = self.users.get_mut(user)
            && offset >= h.first()
            && offset <= h.top
        {
            let index = (offset - h.first()) as usize;
            h.entries[index].recipients = recipients;
        }
    }

    /// Where a connecting client of `user` stands, and what to replay to it when it asked with
    /// `resume`. Creates the user's history when absent, so the epoch the client is told is the
    /// one its next notifications carry.
    pub fn read(
        &mut self,
        user: &str,
        resume: Option<&Resume>,
        now_ms: u64,
        stats: &HistoryStats,
    ) -> Snapshot {
        let key = self.open(user, now_ms, stats);
        let h = &self.users[&key];
        let mut snapshot = Snapshot {
            epoch: h.epoch.clone(),
            top: h.top,
            replay: Vec::new(),
            outcome: None,
        };
        if let Some(resume) = resume {
            let after = h
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (h.first() + i as u64, e))
                .filter(|(offset, _)| *offset > resume.since);
            let offsets = after.clone().map(|(offset, _)| offset);
            let outcome = super::outcome(resume, &h.epoch, h.top, offsets);
            if outcome == Recovery::Recovered {
                snapshot.replay = after.map(|(_, e)| e.frame.clone()).collect();
            }
            snapshot.outcome = Some(outcome);
        }
        self.evict_over_budget(&key, stats);
        self.publish_gauges(stats);
        snapshot
    }

    /// Drops the histories untouched for `HISTORY_TTL`. Returns how many went.
    pub fn expire(&mut self, now_ms: u64, stats: &HistoryStats) -> usize {
        let mut gone = 0;
        while let Some((_, user)) = self.order.first_key_value() {
            let h = &self.users[user];
            if h.touched_ms + self.limits.ttl_ms > now_ms {
                break;
            }
            let user = user.clone();
            self.remove(&user);
            stats.inc_eviction(Eviction::Expired);
            gone += 1;
        }
        if gone > 0 {
            self.publish_gauges(stats);
        }
        gone
    }

    /// The user's history, created (new epoch) when absent or expired, and touched now.
    fn open(&mut self, user: &str, now_ms: u64, stats: &HistoryStats) -> Rc<str> {
        let expired = self
            .users
            .get(user)
            .is_some_and(|h| h.touched_ms + self.limits.ttl_ms <= now_ms);
        if expired {
            self.remove(user);
            stats.inc_eviction(Eviction::Expired);
        }
        let touch = self.next_touch;
        self.next_touch += 1;
        if let Some((key, h)) = self.users.get_key_value(user) {
            let key = key.clone();
            let old = h.touch;
            self.order.remove(&old);
            self.order.insert(touch, key.clone());
            let h = self.users.get_mut(&key).expect("present");
            h.touch = touch;
            h.touched_ms = now_ms;
            return key;
        }
        let key: Rc<str> = Rc::from(user);
        let epoch = format!("{}-{:x}", self.epoch_base, self.next_epoch).into_boxed_str();
        self.next_epoch += 1;
        let bytes = USER_OVERHEAD + key.len() + epoch.len();
        self.users.insert(
            key.clone(),
            UserHistory {
                epoch,
                top: 0,
                entries: VecDeque::new(),
                bytes,
                frame_bytes: 0,
                touched_ms: now_ms,
                touch,
            },
        );
        self.order.insert(touch, key.clone());
        self.bytes += bytes;
        key
    }

    /// Drops whole histories, least recently touched first, until the shard is within its
    /// budget; never `keep` (the one being written or read).
    fn evict_over_budget(&mut self, keep: &Rc<str>, stats: &HistoryStats) {
        while self.bytes > self.limits.budget {
            let victim = self.order.values().find(|u| !Rc::ptr_eq(u, keep)).cloned();
            let Some(victim) = victim else {
                return;
            };
            self.remove(&victim);
            stats.inc_eviction(Eviction::Memory);
        }
    }

    fn remove(&mut self, user: &str) {
        if let Some(h) = self.users.remove(user) {
            self.order.remove(&h.touch);
            self.bytes -= h.bytes;
        }
    }

    fn publish_gauges(&self, stats: &HistoryStats) {
        stats.bytes.store(self.bytes as i64, Relaxed);
        stats.users.store(self.users.len() as i64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::test_util::decode_text;

    fn store(size: usize, user_bytes: usize, budget: usize) -> Store {
        Store::new(
            StoreLimits {
                size,
                user_bytes,
                budget,
                ttl_ms: 1000,
            },
            "base".into(),
        )
    }

    fn append(s: &mut Store, user: &str, text: &str, now: u64) -> u64 {
        match s.append(user, text.as_bytes(), None, now, &HistoryStats::default()) {
            Appended::New { offset, .. } => offset,
            other => panic!("{other:?}"),
        }
    }

    fn resume(since: u64, epoch: &str) -> Resume {
        Resume {
            since,
            epoch: epoch.into(),
        }
    }

    fn texts(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8(decode_text(f)).unwrap())
            .collect()
    }

    #[test]
    fn offsets_are_contiguous_per_user_and_replays_are_exact() {
        let stats = HistoryStats::default();
        let mut s = store(10, 1 << 20, 1 << 30);
        assert_eq!(append(&mut s, "a", "{\"n\":1}", 0), 1);
        assert_eq!(append(&mut s, "b", "{\"n\":1}", 0), 1);
        assert_eq!(append(&mut s, "a", "{\"n\":2}", 0), 2);
        let fresh = s.read("a", None, 0, &stats);
        assert_eq!((fresh.top, fresh.outcome), (2, None));
        assert!(fresh.replay.is_empty());
        let epoch = fresh.epoch.clone();
        assert_ne!(
            epoch,
            s.read("b", None, 0, &stats).epoch,
            "an epoch per history"
        );
        let back = s.read("a", Some(&resume(1, &epoch)), 0, &stats);
        assert_eq!(back.outcome, Some(Recovery::Recovered));
        assert_eq!(
            texts(&back.replay),
            [format!(r#"{{"offset":2,"epoch":"{epoch}","n":2}}"#)]
        );
        let none = s.read("a", Some(&resume(2, &epoch)), 0, &stats);
        assert_eq!(none.outcome, Some(Recovery::Recovered));
        assert!(none.replay.is_empty());
        assert_eq!(
            s.read("a", Some(&resume(3, &epoch)), 0, &stats).outcome,
            Some(Recovery::SinceAhead)
        );
        assert_eq!(
            s.read("a", Some(&resume(1, "other")), 0, &stats).outcome,
            Some(Recovery::EpochChanged)
        );
    }

    #[test]
    fn trimming_by_count_and_bytes_refuses_recovery_across_it() {
        let stats = HistoryStats::default();
        let mut s = store(2, 1 << 20, 1 << 30);
        for i in 1..=3 {
            append(&mut s, "a", &format!("{{\"n\":{i}}}"), 0);
        }
        let epoch = s.read("a", None, 0, &stats).epoch;
        assert_eq!(
            s.read("a", Some(&resume(0, &epoch)), 0, &stats).outcome,
            Some(Recovery::Trimmed),
            "offset 1 was trimmed"
        );
        let ok = s.read("a", Some(&resume(1, &epoch)), 0, &stats);
        assert_eq!(ok.replay.len(), 2);
        // Bytes: a frame larger than a replay may be is not kept at all.
        let mut s = store(10, 64, 1 << 30);
        append(&mut s, "a", "{}", 0);
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(100));
        append(&mut s, "a", &big, 0);
        let epoch = s.read("a", None, 0, &stats).epoch;
        assert_eq!(
            s.read("a", Some(&resume(1, &epoch)), 0, &stats).outcome,
            Some(Recovery::Trimmed)
        );
        assert_eq!(
            s.read("a", Some(&resume(2, &epoch)), 0, &stats).outcome,
            Some(Recovery::Recovered)
        );
    }

    #[test]
    fn idempotency_keys_repeat_the_first_result() {
        let stats = HistoryStats::default();
        let mut s = store(10, 1 << 20, 1 << 30);
        let key: Arc<str> = Arc::from("k1");
        let Appended::New { offset, .. } = s.append("a", b"{}", Some(&key), 0, &stats) else {
            panic!()
        };
        s.set_recipients("a", offset, 3);
        assert_eq!(
            s.append("a", b"{}", Some(&Arc::from("k1")), 0, &stats),
            Appended::Repeated { recipients: 3 }
        );
        assert_eq!(s.read("a", None, 0, &stats).top, 1, "nothing recorded");
        assert!(matches!(
            s.append("a", b"{}", Some(&Arc::from("k2")), 0, &stats),
            Appended::New { offset: 2, .. }
        ));
    }

    #[test]
    fn ttl_drops_whole_histories_and_a_new_one_has_a_new_epoch() {
        let stats = HistoryStats::default();
        let mut s = store(10, 1 << 20, 1 << 30);
        append(&mut s, "a", "{}", 0);
        let epoch = s.read("a", None, 100, &stats).epoch;
        append(&mut s, "b", "{}", 500);
        assert_eq!(s.expire(1099, &stats), 0);
        assert_eq!(s.expire(1100, &stats), 1, "a, touched at 100");
        assert_eq!(s.users(), 1);
        let again = s.read("a", Some(&resume(1, &epoch)), 1100, &stats);
        assert_eq!(again.outcome, Some(Recovery::EpochChanged));
        assert_eq!(again.top, 0);
        assert_ne!(again.epoch, epoch);
        assert_eq!(stats.evictions[Eviction::Expired as usize].load(Relaxed), 1);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_touched_users() {
        let stats = HistoryStats::default();
        let mut one = store(10, 1 << 20, 1 << 30);
        one.append("u0", b"{}", None, 0, &stats);
        let cost = one.bytes();
        let mut s = store(10, 1 << 20, 3 * cost + cost / 2);
        for user in ["u1", "u2", "u3", "u4"] {
            s.append(user, b"{}", None, 0, &stats);
        }
        // u1 was touched least recently: it went to make room for u4.
        assert_eq!(s.bytes(), 3 * cost);
        assert_eq!(s.users(), 3);
        assert_eq!(stats.evictions[Eviction::Memory as usize].load(Relaxed), 1);
        assert_eq!(s.read("u1", None, 0, &stats).top, 0, "u1 starts over");
        assert_eq!(stats.users.load(Relaxed), 3);
        assert_eq!(stats.bytes.load(Relaxed) as usize, s.bytes());
    }
}
