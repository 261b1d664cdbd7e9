//! Handing an admitted connection to the shard that owns its user, so that all of a user's
//! connections live on one shard and a notification touches exactly one shard.
//!
//! The accepting shard has parsed the upgrade request and verified the token; it passes the
//! socket, the user id, the computed `Sec-WebSocket-Accept`, any bytes read past the request and
//! the connection's slot to the owner over a dedicated single-producer ring, then rings the
//! owner's doorbell. The owner answers the upgrade, so a connection is registered before its
//! client sees `connected`.

use std::{os::fd::OwnedFd, sync::Arc};

use super::{shared::Slot, socket::Tls};
use crate::{
    net::doorbell::Doorbell,
    proto::{history::Resume, user::UserId},
};

/// A connection in transit between shards.
pub struct Handoff {
    /// The client socket, upgrade not yet answered.
    pub fd: OwnedFd,
    /// Its TLS session (wss://: the accepting shard did the handshake), moving with it.
    pub tls: Option<Tls>,
    /// The authenticated user.
    pub user: UserId,
    /// `Sec-WebSocket-Accept` for the 101 response.
    pub accept_key: String,
    /// Bytes the client sent after the upgrade request (usually none).
    pub leftover: Vec<u8>,
    /// The connection's slot against `MAX_CONNECTIONS`, travelling with it.
    pub slot: Slot,
    /// The token's `exp` (Unix seconds), if it has one.
    pub expires_at: Option<u64>,
    /// What the client asked to recover (`since` + `epoch`), boxed: rare, and 8 bytes here.
    pub resume: Option<Box<Resume>>,
}

/// A shard's producer ends towards every other shard.
pub struct Outlets {
    /// `rings[i]` feeds shard `i` (`None` for the shard itself).
    rings: Vec<Option<rtrb::Producer<Handoff>>>,
    /// `doorbells[i]` wakes shard `i`.
    doorbells: Vec<Arc<Doorbell>>,
}

impl Outlets {
    /// Wires the producers (indexed by destination shard) and every shard's doorbell.
    pub fn new(rings: Vec<Option<rtrb::Producer<Handoff>>>, doorbells: Vec<Arc<Doorbell>>) -> Self {
        Self { rings, doorbells }
    }

    /// Whether shard `to` can take one more hand-off now. This shard is the ring's only
    /// producer, so room seen here is still there for the following [`Self::send`].
    pub fn has_room(&self, to: usize) -> bool {
        self.rings[to].as_ref().is_some_and(|r| r.slots() > 0)
    }

    /// Sends `handoff` to shard `to` and wakes it. Gives the hand-off back when the ring is full
    /// (or `to` is this shard).
    pub fn send(&mut self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        let Some(ring) = self.rings[to].as_mut() else {
            return Err(handoff);
        };
        match ring.push(handoff) {
            Ok(()) => {
                self.doorbells[to].ring();
                Ok(())
            }
            Err(rtrb::PushError::Full(h)) => Err(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-off rings' memory (docs/architecture.md) is 512 slots of this per shard pair.
    #[test]
    fn handoff_slot_size() {
        let size = std::mem::size_of::<Handoff>();
        eprintln!("Handoff {size} B");
        assert!(
            size <= 112,
            "Handoff grew to {size} B; update docs/architecture.md"
        );
    }
}
