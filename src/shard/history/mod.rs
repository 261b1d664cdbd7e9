//! History on the shard (issue 10): what a connecting client is greeted with, and what a
//! published notification does to its user's history and connections.
//!
//! - **Single node** ([`store`]): the owner shard records every notification of its users as it
//!   delivers it (offset and epoch given out here) and reads a connecting client's replay from
//!   memory, in the same step that registers the connection, so nothing can fall between.
//! - **Redis** ([`live`], [`remote`]): notifications are recorded by the history script when
//!   published; the shard reads a connecting client's history from Redis through the reader
//!   thread, keeping the user's live notifications for it meanwhile, and checks the live stream
//!   of each user for gaps (then closes with 4002 so the clients recover at once).
//!
//! The greeting is built in [`recover`], live notifications go through [`deliver`]. Either
//! way the greeting is one write: `101`, `connected` (with the user's `offset` and
//! `epoch`, and `recovered` when the client sent `since`), the replay, then the live
//! notifications the client does not have yet.

mod deliver;
pub mod live;
mod recover;
pub mod remote;
pub mod store;

pub use self::{
    deliver::{deliver, joined, left, run},
    recover::{Hello, when_recovered},
};

use std::{
    cell::RefCell,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use self::{
    deliver::invalid_payload,
    live::Live,
    recover::outcome,
    remote::Reads,
    store::{Store, StoreLimits},
};
use crate::{
    clock,
    fanout::{Body, redis::history::ShardReads},
};

/// Where a shard's history lives, as wired at start.
pub enum Backend {
    /// Single node: in memory, within these bounds.
    Local(StoreLimits),
    /// Redis: read through the reader thread, while the subscription is in force (the flag).
    Redis(ShardReads, Arc<AtomicBool>),
}

/// A shard's history as wired at start (sent to the shard thread, which builds its
/// [`History`] there).
pub struct Setup {
    /// Where it lives.
    pub backend: Backend,
    /// `HISTORY_LIVE_BUFFER`.
    pub live_buffer: usize,
    /// `HISTORY_READ_TIMEOUT`.
    pub read_timeout: Duration,
}

/// A shard's history.
pub struct History {
    /// Live notifications one waiting upgrade may keep (`HISTORY_LIVE_BUFFER`).
    live_buffer: usize,
    /// How long an upgrade waits for its read (`HISTORY_READ_TIMEOUT`).
    read_timeout: Duration,
    /// Where it lives.
    kind: Kind,
}

enum Kind {
    Local {
        /// The users' histories.
        store: RefCell<Store>,
        /// How often expired histories are dropped.
        sweep: Duration,
    },
    Redis {
        /// Reads in flight.
        reads: Reads,
        /// True while the Redis subscription is in force. A read taken before it would be
        /// followed by live notifications this gateway never receives (at start, or between a
        /// lost connection and the next): none is taken then.
        subscribed: Arc<AtomicBool>,
        /// Waiting upgrades and established users.
        live: RefCell<Live>,
    },
}

impl History {
    /// Shard `shard`'s history.
    pub fn new(shard: usize, setup: Setup) -> Self {
        let Setup {
            backend,
            live_buffer,
            read_timeout,
        } = setup;
        let kind = match backend {
            Backend::Local(limits) => {
                let mut random = [0u8; 8];
                // A restart must change every epoch; without entropy, time and the shard still
                // make this start's base unlike the last one's.
                if getrandom::fill(&mut random).is_err() {
                    random = (clock::unix_ms() ^ (shard as u64) << 56).to_le_bytes();
                }
                let base = format!("{:016x}", u64::from_le_bytes(random));
                let sweep = Duration::from_millis(limits.ttl_ms / 8)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                Kind::Local {
                    store: RefCell::new(Store::new(limits, base)),
                    sweep,
                }
            }
            Backend::Redis(side, subscribed) => Kind::Redis {
                reads: Reads::new(shard, side),
                subscribed,
                live: RefCell::default(),
            },
        };
        Self {
            live_buffer,
            read_timeout,
            kind,
        }
    }

    /// The reads of a Redis-mode history.
    fn reads(&self) -> Option<&Reads> {
        match &self.kind {
            Kind::Redis { reads, .. } => Some(reads),
            Kind::Local { .. } => None,
        }
    }

    /// Whether [`deliver`] handles this body (the forms history records or tracks).
    pub fn takes(&self, body: &Body) -> bool {
        matches!(
            (&self.kind, body),
            (Kind::Local { .. }, Body::Record(_))
                | (Kind::Redis { .. }, Body::Raw(_) | Body::Blind)
        )
    }
}
