//! State shared by every shard of the process: the token verifier, the drain flag, the metrics,
//! and the connection slots that enforce `MAX_CONNECTIONS` across shards.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;

use super::handshake_limit::HandshakeLimit;
use crate::{
    metrics::Metrics,
    proto::{
        jwt::{AuthError, Authenticator, Verified},
        user::UserId,
    },
};

/// State shared by all shards of the process (read-mostly, thread-safe).
pub struct Shared {
    /// Verifies client tokens; replaced when SIGHUP reloads the JWT key.
    pub auth: Verifier,
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
        auth: Verifier,
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

/// The token verifier in force. A key from a source that cannot change (`JWT_SECRET`, `--dev`)
/// is [`Verifier::fixed`] and costs nothing more than the verification itself. A key from a file
/// is [`Verifier::reloadable`]: a reload swaps in a new verifier for the next handshakes, while a
/// handshake in progress finishes with the one it loaded. Loading it takes no lock and writes no
/// shared cache line (tens of nanoseconds, against microseconds for a verification), so shards
/// verifying in parallel do not contend.
pub struct Verifier(Source);

/// Where a [`Verifier`] keeps its authenticator. (One per process: its size does not matter,
/// and boxing the fixed one would add an indirection to every handshake.)
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Never replaced.
    Fixed(Authenticator),
    /// Replaced on reload.
    Reloadable(ArcSwap<Authenticator>),
}

impl Verifier {
    /// A verifier that is never replaced.
    pub fn fixed(auth: Authenticator) -> Self {
        Self(Source::Fixed(auth))
    }

    /// A verifier that [`Self::replace`] can swap.
    pub fn reloadable(auth: Authenticator) -> Self {
        Self(Source::Reloadable(ArcSwap::from_pointee(auth)))
    }

    /// Verifies `token` with the verifier in force.
    ///
    /// # Errors
    ///
    /// Why the token is refused ([`Authenticator::verify`]).
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_claims(token).map(|v| v.user)
    }

    /// [`Self::verify`], also returning when the token expires.
    ///
    /// # Errors
    ///
    /// As [`Self::verify`].
    pub fn verify_claims(&self, token: &str) -> Result<Verified, AuthError> {
        match &self.0 {
            Source::Fixed(auth) => auth.verify_claims(token),
            Source::Reloadable(swap) => swap.load().verify_claims(token),
        }
    }

    /// Puts `auth` in force for every later handshake; `false` (and no change) for a fixed
    /// verifier.
    pub fn replace(&self, auth: Authenticator) -> bool {
        match &self.0 {
            Source::Fixed(_) => false,
            Source::Reloadable(swap) => {
                swap.store(Arc::new(auth));
                true
            }
        }
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
