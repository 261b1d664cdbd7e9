//! The dispatcher: the single producer of every shard's delivery ring. Owned by exactly one
//! thread (the local broker's dispatcher, or the Redis subscriber), which is what makes the
//! rings single-producer and lock-free.
//!
//! Overload policy: when a shard's ring is full, the dispatcher waits up to `full_wait` for the
//! shard to catch up, then drops the notification and counts it
//! (`notifications_dropped_total{reason="queue_full"}`). After such a drop the shard is
//! "shedding": further notifications for it are dropped at once, without waiting, until its ring
//! has room again. So the dispatcher never slows below the rate it can read at, because its
//! upstream (Redis) disconnects subscribers that stop reading, which would lose far more.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{Delivery, route};
use crate::{
    metrics::{DropReason, GlobalStats},
    net::doorbell::Doorbell,
};

/// Why a notification did not reach its shard.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DispatchError {
    /// The owner shard's ring stayed full for the whole wait.
    #[error("shard {0} queue is full")]
    QueueFull(usize),
}

/// Producer ends of all shards' delivery rings.
pub struct Dispatcher {
    /// `rings[i]` feeds shard `i`.
    rings: Vec<rtrb::Producer<Delivery>>,
    /// `doorbells[i]` wakes shard `i`.
    doorbells: Vec<Arc<Doorbell>>,
    /// Longest wait for room in a full ring before dropping.
    full_wait: Duration,
    /// Drop counters.
    stats: Arc<GlobalStats>,
    /// `shedding[i]`: shard `i`'s ring was full through a whole wait; drop without waiting
    /// until it has room.
    shedding: Vec<bool>,
}

impl Dispatcher {
    /// Wires the rings (indexed by shard) and their doorbells.
    pub fn new(
        rings: Vec<rtrb::Producer<Delivery>>,
        doorbells: Vec<Arc<Doorbell>>,
        full_wait: Duration,
        stats: Arc<GlobalStats>,
    ) -> Self {
        assert_eq!(rings.len(), doorbells.len());
        Self {
            shedding: vec![false; rings.len()],
            rings,
            doorbells,
            full_wait,
            stats,
        }
    }

    /// Tells every shard, in order with the notifications, that the Redis subscription was
    /// lost ([`Body::Blind`](super::Body::Blind)). Waits for room like a notification; a shard
    /// whose ring stays full misses the marker, and drops notifications anyway (counted).
    pub fn broadcast_blind(&mut self) {
        for shard in 0..self.rings.len() {
            let marker = Delivery {
                user: Box::from(""),
                body: super::Body::Blind,
                received: Instant::now(),
                reply: None,
            };
            let _ = self.push(shard, marker);
        }
    }

    /// Routes `delivery` to its user's owner shard.
    pub fn dispatch(&mut self, delivery: Delivery) -> Result<(), DispatchError> {
        let shard = route::owner_shard(&delivery.user, self.rings.len());
        self.push(shard, delivery)
    }

    /// Pushes `delivery` to shard `shard`'s ring, waiting a bounded time for room.
    fn push(&mut self, shard: usize, delivery: Delivery) -> Result<(), DispatchError> {
        let mut delivery = match self.rings[shard].push(delivery) {
            Ok(()) => {
                self.shedding[shard] = false;
                self.doorbells[shard].ring();
                return Ok(());
            }
            Err(rtrb::PushError::Full(d)) => d,
        };
        if self.shedding[shard] {
            self.stats.notifications_dropped[DropReason::QueueFull as usize].fetch_add(1, Relaxed);
            return Err(DispatchError::QueueFull(shard));
        }
        // Full: make sure the shard is awake, then wait a bounded time for room.
        self.doorbells[shard].ring();
        let deadline = Instant::now() + self.full_wait;
        let mut spins = 0u32;
        loop {
            match self.rings[shard].push(delivery) {
                Ok(()) => {
                    self.doorbells[shard].ring();
                    return Ok(());
                }
                Err(rtrb::PushError::Full(d)) => delivery = d,
            }
            if Instant::now() >= deadline {
                self.shedding[shard] = true;
                self.stats.notifications_dropped[DropReason::QueueFull as usize]
                    .fetch_add(1, Relaxed);
                return Err(DispatchError::QueueFull(shard));
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn delivery(user: &str) -> Delivery {
        Delivery {
            user: user.into(),
            body: crate::fanout::Body::Frame(Bytes::from_static(b"x")),
            received: Instant::now(),
            reply: None,
        }
    }

    #[test]
    fn routes_to_the_owner_ring_and_drops_when_full() {
        let stats = Arc::new(GlobalStats::default());
        let (p0, mut c0) = rtrb::RingBuffer::new(2);
        let (p1, mut c1) = rtrb::RingBuffer::new(2);
        let bells = vec![Arc::new(Doorbell::default()), Arc::new(Doorbell::default())];
        let mut d = Dispatcher::new(vec![p0, p1], bells, Duration::from_millis(5), stats.clone());
        let user = (0..100)
            .map(|i| format!("u{i}"))
            .find(|u| route::owner_shard(u, 2) == 1)
            .unwrap();
        d.dispatch(delivery(&user)).unwrap();
        d.dispatch(delivery(&user)).unwrap();
        assert_eq!(
            d.dispatch(delivery(&user)),
            Err(DispatchError::QueueFull(1))
        );
        assert_eq!(
            stats.notifications_dropped[DropReason::QueueFull as usize].load(Relaxed),
            1
        );
        assert!(c0.pop().is_err());
        assert_eq!(&*c1.pop().unwrap().user, user);
        // Shedding: with the ring full again, the next drop does not wait.
        d.dispatch(delivery(&user)).unwrap();
        d.dispatch(delivery(&user)).unwrap_err();
        let t = Instant::now();
        assert_eq!(
            d.dispatch(delivery(&user)),
            Err(DispatchError::QueueFull(1))
        );
        assert!(
            t.elapsed() < Duration::from_millis(5),
            "a shedding shard must not be waited for"
        );
        // Room again ends shedding.
        c1.pop().unwrap();
        d.dispatch(delivery(&user)).unwrap();
    }
}
