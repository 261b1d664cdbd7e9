//! What the connection state machine ([`super::state::ConnState`]) tells its shell to do, and
//! the per-delivery tally of direct writes: the vocabulary between the pure state and the I/O.

use std::{net::Shutdown, time::Instant};

use bytes::Bytes;

use crate::metrics::ShardStats;

/// The outbox caps of a connection.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Queued frames before the connection is closed as a slow consumer.
    pub max_messages: usize,
    /// Queued bytes before the connection is closed as a slow consumer.
    pub max_bytes: usize,
}

/// What the shell should do with a frame it offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Nothing is queued: write it straight from the shared frame, then report
    /// [`ConnState::direct_written`](super::state::ConnState::direct_written).
    Direct,
    /// Queued behind frames already waiting; the running writer will send it.
    Queued,
    /// Refused because the connection is closing or closed; a notification was counted as
    /// dropped with the reason the connection is closing for.
    Refused,
    /// Refused because the outbox is over its caps: the connection is now closing with 1013, the
    /// notification was counted as a `slow_consumer` drop, and the returned close frame must be
    /// sent (see [`ConnState::close`](super::state::ConnState::close)).
    Overflow(Bytes),
}

/// What a direct write left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direct {
    /// Fully written; `shutdown` says whether the socket must now be shut (the frame was our
    /// close frame).
    Complete {
        /// How to shut the socket, if at all.
        shutdown: Option<Shutdown>,
    },
    /// Only partly written: the rest is queued and the shell must start a writer.
    Queued,
}

/// What a queued write left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Bytes remain; wait for writability again.
    More,
    /// The outbox is empty; the writer ends. `shutdown` says whether to shut the socket.
    Empty {
        /// How to shut the socket, if at all.
        shutdown: Option<Shutdown>,
    },
}

/// Counts of notifications written directly during one delivery, settled in one go by
/// [`Tally::settle`] so the hot path touches the shared counters once per notification rather
/// than once per recipient.
#[derive(Debug, Default)]
pub struct Tally {
    /// Recipients that took the whole frame at once.
    pub written: u64,
}

impl Tally {
    /// Adds the written count to `notifications_sent` and records that many latency samples.
    pub fn settle(&self, stats: &ShardStats, born: Instant) {
        if self.written > 0 {
            stats.add_sent(self.written);
            let us = born.elapsed().as_micros() as u64;
            stats.delivery_latency.observe_n_us(us, self.written);
        }
    }
}
