//! State shared by every shard of the process: the token verifier, the drain flag, the metrics,
//! and the connection slots that enforce `MAX_CONNECTIONS` across shards.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::handshake_limit::HandshakeLimit;
use crate::{metrics::Metrics, proto::jwt::Authenticator};

/// State shared by all shards of the process (read-mostly, thread-safe).
pub struct Shared {
    /// Verifies client tokens.
    pub auth: Authenticator,
    /// Connection slots against `MAX_CONNECTIONS`.
    pub slots: Arc<Slots>,
    /// Upgrades in progress per source address, against `MAX_HANDSHAKES_PER_IP`.
    pub handshakes: Arc<HandshakeLimit>,
    /// Number of shards; the routing modulus.
    pub shard_count: usize,
    /// Set once on shutdown: stop accepting, close connections (also fails `/readyz`).
    pub draining: Arc<AtomicBool>,
    /// How long the drain spreads its closes over.
    pub drain_period: Duration,
    /// Metrics registry (per-shard stats live inside).
    pub metrics: Arc<Metrics>,
    /// Per shard: deliveries are held in its ring, not served (test-only pause, reachable only
    /// through a hidden method of `gateway::Gateway`; hand-offs are still served).
    pub deliveries_paused: Box<[AtomicBool]>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        auth: Authenticator,
        slots: Slots,
        handshakes: HandshakeLimit,
        shard_count: usize,
        metrics: Arc<Metrics>,
        drain_period: Duration,
    ) -> Self {
        Self {
            auth,
            slots: Arc::new(slots),
            handshakes: Arc::new(handshakes),
            shard_count,
            draining: Arc::new(AtomicBool::new(false)),
            drain_period,
            metrics,
            deliveries_paused: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Connections currently counted against the cap.
    pub fn connections(&self) -> usize {
        self.slots.connections.load(Ordering::Acquire)
    }
}

/// The process-wide connection count and its cap.
pub struct Slots {
    /// Sockets established or mid-handshake, across all shards.
    connections: AtomicUsize,
    /// Refuse upgrades (503) beyond this many connections.
    max: usize,
    /// Over-capacity refusals currently lingering (each holds a descriptor briefly).
    lingering: AtomicUsize,
    /// At most this many over-capacity refusals linger at once; beyond it they close at once.
    max_lingering: usize,
}

impl Slots {
    /// `max` slots; a quarter of the descriptor reserve (at least 4) for lingering refusals.
    pub fn new(max: usize, fd_reserve: usize) -> Self {
        Self {
            connections: AtomicUsize::new(0),
            max,
            lingering: AtomicUsize::new(0),
            max_lingering: (fd_reserve / 4).max(4),
        }
    }

    /// Reserves a connection slot for a socket just accepted; `None` when the process holds
    /// `max` sockets (established or mid-handshake). Reserving at accept time, not after
    /// authentication, is what keeps the descriptor reserve out of reach of a flood of
    /// connections that never finish their handshake.
    pub fn try_reserve(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            slots: self.clone(),
        })
    }

    /// Takes one of the few descriptors over-capacity refusals may hold while the client reads
    /// the 503; `false` means close at once instead.
    pub fn try_linger(&self) -> bool {
        if self.lingering.fetch_add(1, Ordering::AcqRel) >= self.max_lingering {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Ends a linger started with [`Self::try_linger`].
    pub fn end_linger(&self) {
        self.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One reserved connection slot. It travels with the connection (through a hand-off to the
/// owner shard, then into its reader task) and is given back when dropped, whatever path the
/// connection ends on.
pub struct Slot {
    /// Where to give it back.
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back_on_drop() {
        let slots = Arc::new(Slots::new(2, 16));
        let a = slots.try_reserve().unwrap();
        let b = slots.try_reserve().unwrap();
        assert!(slots.try_reserve().is_none());
        drop(a);
        let c = slots.try_reserve().unwrap();
        assert_eq!(slots.connections.load(Ordering::Acquire), 2);
        drop((b, c));
        assert_eq!(slots.connections.load(Ordering::Acquire), 0);
    }

    #[test]
    fn lingering_is_bounded() {
        let slots = Slots::new(1, 16);
        assert!((0..4).all(|_| slots.try_linger()));
        assert!(!slots.try_linger());
        slots.end_linger();
        assert!(slots.try_linger());
    }
}
