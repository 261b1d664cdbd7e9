//! The queues between the shards and the subscriber in per-user mode.
//!
//! - Shards -> subscriber: one bounded queue of [`Event`]s shared by all shards
//!   ([`EVENTS_PER_SHARD`] slots per shard). Policy when full: a new want is refused (the upgrade
//!   gets 503 `Retry-After`), never waited for, so a shard never blocks on it; a departure is kept
//!   by the shard and sent later (see `shard::subscription`).
//! - Subscriber -> each shard: one single-producer ring of [`Answer`]s per shard, plus a
//!   doorbell. Its capacity argument: a shard sends a want only while fewer than
//!   [`ANSWERS_PER_SHARD`] of its tickets are unanswered, and every ticket is answered exactly
//!   once, so the ring can never be full when the subscriber pushes. An answer is never dropped,
//!   whatever the load on the delivery rings (which are separate).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::membership::{Answer, Event};
use crate::net::doorbell::Doorbell;

/// Outstanding wants per shard (and the capacity of its answer ring): upgrades waiting for their
/// channel at once on one shard. Memory: 16 B per slot, 256 KiB per shard.
pub const ANSWERS_PER_SHARD: usize = 16 * 1024;
/// Event slots per shard in the shared queue towards the subscriber.
pub const EVENTS_PER_SHARD: usize = 16 * 1024;

/// A shard's ends.
pub struct ShardSide {
    /// Towards the subscriber (shared by all shards).
    pub events: mpsc::Sender<Event>,
    /// The answers to this shard's tickets.
    pub answers: rtrb::Consumer<Answer>,
    /// Rung after answers are pushed (and when the gateway starts draining).
    pub doorbell: Arc<Doorbell>,
    /// The answer ring's capacity: the most wants this shard may have unanswered.
    pub answer_capacity: usize,
}

/// The subscriber's ends.
pub struct SubscriberSide {
    /// From every shard.
    pub events: mpsc::Receiver<Event>,
    /// `answers[i]` feeds shard `i`.
    pub answers: Vec<rtrb::Producer<Answer>>,
    /// `doorbells[i]` wakes shard `i`'s answer task.
    pub doorbells: Vec<Arc<Doorbell>>,
}

impl SubscriberSide {
    /// Delivers an answer to its shard. Never fails (see the module doc for why the ring has
    /// room); a full ring would be a bug, reported and not hidden.
    pub fn answer(&mut self, shard: usize, answer: Answer) {
        if self.answers[shard].push(answer).is_err() {
            tracing::error!(
                shard,
                "answer ring full: a shard exceeded its outstanding wants"
            );
            debug_assert!(false, "answer ring full");
        }
        self.doorbells[shard].ring();
    }
}

/// Builds the queues for `shards` shards.
pub fn channels(shards: usize) -> (Vec<ShardSide>, SubscriberSide) {
    channels_sized(shards, EVENTS_PER_SHARD, ANSWERS_PER_SHARD)
}

/// [`channels`] with the given sizes (tests use small ones).
pub fn channels_sized(
    shards: usize,
    events_per_shard: usize,
    answers_per_shard: usize,
) -> (Vec<ShardSide>, SubscriberSide) {
    let (tx, rx) = mpsc::channel(events_per_shard * shards);
    let mut sides = Vec::with_capacity(shards);
    let mut producers = Vec::with_capacity(shards);
    let mut doorbells = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (p, c) = rtrb::RingBuffer::new(answers_per_shard);
        let bell = Arc::new(Doorbell::default());
        producers.push(p);
        doorbells.push(bell.clone());
        sides.push(ShardSide {
            events: tx.clone(),
            answers: c,
            doorbell: bell,
            answer_capacity: answers_per_shard,
        });
    }
    let subscriber = SubscriberSide {
        events: rx,
        answers: producers,
        doorbells,
    };
    (sides, subscriber)
}
