//! The shard's inbox: notifications from the dispatcher and connections handed over by other
//! shards, each on its own single-producer/single-consumer ring (`rtrb`), plus one [`Doorbell`]
//! any producer rings after pushing.
//!
//! Fed from outside, so it works on a budget: a turn adopts at most [`HANDOFFS_PER_TURN`]
//! connections and delivers until it has done [`WORK_PER_TURN`] units (a delivery costs one
//! plus one per connection it visits), and after at most that much work since the driver last
//! parked, the task waits for the driver's next turn ([`Turn`](crate::net::turn::Turn)), so
//! accepts, upgrades, reads, timers and the drain keep running however hot one user is.

use std::{future::poll_fn, rc::Rc, sync::Arc, task::Poll};

use super::{
    Shard,
    conn::{SendOutcome, state::Tally},
    handoff::Handoff,
    session,
};
use crate::{
    clock,
    fanout::{Body, Delivery, Reached},
    metrics::{DropReason, RedisError},
    net::doorbell::Doorbell,
    proto::payload,
};

/// Work done between two parks of the driver, at most: a delivery costs one unit plus one per
/// connection it visits (a write each), a hand-off [`HANDOFF_COST`]. With 8 recipients per
/// notification that is about 110 notifications and 900 writes, a few milliseconds.
pub(crate) const WORK_PER_TURN: usize = 1024;
/// Connections adopted per turn at most (each is registered and sent its 101 + `connected`).
pub(crate) const HANDOFFS_PER_TURN: usize = 64;
/// Work units one adopted connection counts for.
const HANDOFF_COST: usize = 8;

/// The consumer ends of a shard's queues.
pub struct Inbox {
    /// Notifications routed to this shard by the dispatcher (its only producer).
    pub deliveries: rtrb::Consumer<Delivery>,
    /// Connections handed over by each other shard (one ring per sender).
    pub handoffs: Vec<rtrb::Consumer<Handoff>>,
    /// Rung by every producer.
    pub doorbell: Arc<Doorbell>,
}

impl Inbox {
    fn has_work(&self, shard: &Shard) -> bool {
        (!self.deliveries.is_empty() && !paused(shard))
            || self.handoffs.iter().any(|c| !c.is_empty())
            || shard.draining()
    }

    /// Parks until a producer rings (re-checking after registering, so no push is missed).
    /// Returns whether the task really parked (and so the driver turned).
    async fn wait(&self, shard: &Shard) -> bool {
        let mut parked = false;
        poll_fn(|cx| {
            self.doorbell.register(cx.waker());
            if self.has_work(shard) {
                Poll::Ready(parked)
            } else {
                parked = true;
                Poll::Pending
            }
        })
        .await
    }
}

/// Serves the inbox until the shard has drained.
pub async fn run(shard: Rc<Shard>, mut inbox: Inbox) {
    let mut drain_started = false;
    // Work done since the driver last parked.
    let mut since_park = 0;
    let mut next_ring = 0;
    while !shard.finished.get() {
        if shard.draining() && !drain_started {
            drain_started = true;
            shard.stop_accepting();
            monoio::spawn(super::drain::run(shard.clone(), shard.shared.drain_period));
        }
        let work = turn(&shard, &mut inbox, &mut next_ring);
        if work == 0 {
            if drain_started {
                // Draining: poll the queues while the drain task works (it sets `finished`).
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                since_park = 0;
            } else if inbox.wait(&shard).await {
                since_park = 0;
            }
            continue;
        }
        since_park += work;
        if since_park >= WORK_PER_TURN {
            since_park = 0;
            shard.turn.next().await;
        }
    }
}

/// One turn of the inbox: hand-offs first (a connection must be registered before the
/// notifications behind it), at most [`HANDOFFS_PER_TURN`], taken from the senders' rings in
/// rotation starting at `next_ring`; then deliveries until [`WORK_PER_TURN`]. Returns the work
/// done, in units.
pub(crate) fn turn(shard: &Rc<Shard>, inbox: &mut Inbox, next_ring: &mut usize) -> usize {
    let mut work = 0;
    let rings = inbox.handoffs.len();
    let mut adopted = 0;
    for i in 0..rings {
        let ring = &mut inbox.handoffs[(*next_ring + i) % rings];
        while adopted < HANDOFFS_PER_TURN {
            let Ok(handoff) = ring.pop() else {
                break;
            };
            shard.stats.inc_handoff();
            session::adopt(shard, handoff);
            adopted += 1;
        }
    }
    if rings > 0 {
        *next_ring = (*next_ring + 1) % rings;
    }
    work += adopted * HANDOFF_COST;
    while work < WORK_PER_TURN && !paused(shard) {
        let Ok(delivery) = inbox.deliveries.pop() else {
            break;
        };
        work += 1 + deliver(shard, delivery);
    }
    work
}

/// Writes one notification to every connection of its user on this shard. Every lost copy is
/// counted once, with one reason: `not_local` only when the user has no connection here at all;
/// a connection that refuses it (closing, or overflowing) counts its own drop. Returns the
/// number of connections visited.
fn deliver(shard: &Rc<Shard>, delivery: Delivery) -> usize {
    if let Some(history) = &shard.history
        && history.takes(&delivery.body)
    {
        return super::history::deliver(shard, delivery);
    }
    let registry = shard.registry.borrow();
    let mut conns = registry.user(&delivery.user).peekable();
    let local = conns.peek().is_some();
    let frame = match delivery.body {
        Body::Frame(frame) => Some(frame),
        // Only a history records these (`History::takes`); without one there is no offset to
        // give it, and nothing sends them.
        Body::Record(record) => payload::normalize_to_frame(
            &record.text,
            clock::unix_ms(),
            shard.limits.max_payload_bytes,
        )
        .ok(),
        // Only history tracks offsets; the marker means nothing without it.
        Body::Blind => return 0,
        // From Redis: validate and normalise once, and only for a user that is here.
        Body::Raw(_) if !local => None,
        Body::Raw(raw) => {
            match payload::normalize_to_frame(
                &raw,
                clock::unix_ms(),
                shard.limits.max_payload_bytes,
            ) {
                Ok(frame) => Some(frame),
                Err(err) => {
                    tracing::debug!(shard = shard.id, error = %err, "dropping an invalid notification");
                    let global = shard.shared.metrics.global();
                    global.inc_redis_error(RedisError::MessageProcessing);
                    shard.stats.inc_drop(DropReason::InvalidPayload, 1);
                    return 0;
                }
            }
        }
    };
    let mut recipients = 0u32;
    let mut visited = 0;
    if let Some(frame) = frame {
        let mut tally = Tally::default();
        for conn in conns {
            visited += 1;
            if conn.deliver(shard, &frame, delivery.received, &mut tally) != SendOutcome::Rejected {
                recipients += 1;
            }
        }
        tally.settle(&shard.stats, delivery.received);
    }
    match delivery.reply {
        // The publisher may have given up waiting; that is fine.
        Some(reply) => {
            let _ = reply.send(Reached {
                recipients,
                repeated: false,
            });
        }
        // From Redis: with pattern subscriptions every gateway sees every user's traffic and
        // drops what is not for its own connections.
        None if !local => shard.stats.inc_drop(DropReason::NotLocal, 1),
        None => {}
    }
    visited
}

/// Whether a test holds this shard's deliveries in their ring.
fn paused(shard: &Shard) -> bool {
    shard.shared.deliveries_paused[shard.id].load(std::sync::atomic::Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering::Relaxed, time::Instant};

    use bytes::Bytes;

    use super::*;
    use crate::{
        proto::{close::CloseCode, frame::encode_text, user::UserId},
        shard::testing::{Sockets, block_on, limits, shard},
    };

    /// An inbox with one hand-off ring (from a pretend other shard) and a delivery ring, plus
    /// their producer ends.
    fn inbox() -> (Inbox, rtrb::Producer<Delivery>, rtrb::Producer<Handoff>) {
        let (dp, dc) = rtrb::RingBuffer::new(4096);
        let (hp, hc) = rtrb::RingBuffer::new(512);
        let inbox = Inbox {
            deliveries: dc,
            handoffs: vec![hc],
            doorbell: Arc::default(),
        };
        (inbox, dp, hp)
    }

    fn delivery(user: &str, frame: &Bytes) -> Delivery {
        Delivery {
            user: user.into(),
            body: Body::Frame(frame.clone()),
            received: Instant::now(),
            reply: None,
        }
    }

    #[test]
    fn adopts_at_most_a_capped_number_of_handoffs_per_turn() {
        block_on(async {
            let shard = shard(limits());
            let (mut inbox, _dp, mut hp) = inbox();
            let mut sockets = Sockets::new();
            for i in 0..100 {
                // The server end of a real connection, as another shard would hand it over.
                let handoff = Handoff {
                    fd: sockets.accepted().into(),
                    tls: None,
                    user: UserId::new(format!("user{i}")).unwrap(),
                    accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                    leftover: Vec::new(),
                    slot: shard.shared.slots.try_reserve().unwrap(),
                    expires_at: None,
                    resume: None,
                };
                assert!(hp.push(handoff).is_ok());
            }
            let mut next_ring = 0;
            let work = turn(&shard, &mut inbox, &mut next_ring);
            assert_eq!(work, HANDOFFS_PER_TURN * HANDOFF_COST);
            assert_eq!(shard.registry.borrow().len(), HANDOFFS_PER_TURN);
            assert_eq!(
                shard.stats.handoffs_in.load(Relaxed),
                HANDOFFS_PER_TURN as u64
            );
            turn(&shard, &mut inbox, &mut next_ring);
            assert_eq!(shard.registry.borrow().len(), 100);
            assert_eq!(turn(&shard, &mut inbox, &mut next_ring), 0);
        });
    }

    #[test]
    fn delivers_within_the_work_budget_per_turn() {
        block_on(async {
            let shard = shard(limits());
            let (mut inbox, mut dp, _hp) = inbox();
            let mut sockets = Sockets::new();
            shard.registry.borrow_mut().insert(sockets.conn("u", 0), 2);
            let frame = encode_text(b"{}");
            for _ in 0..2000 {
                assert!(dp.push(delivery("u", &frame)).is_ok());
            }
            let mut next_ring = 0;
            // Each delivery to a user with one connection costs two units.
            assert_eq!(turn(&shard, &mut inbox, &mut next_ring), WORK_PER_TURN);
            assert_eq!(inbox.deliveries.slots(), 2000 - WORK_PER_TURN / 2);
            assert_eq!(
                shard.stats.notifications_sent.load(Relaxed),
                (WORK_PER_TURN / 2) as u64
            );
            assert_eq!(
                shard.stats.delivery_latency.count(),
                (WORK_PER_TURN / 2) as u64
            );
        });
    }

    #[test]
    fn counts_one_reason_per_lost_delivery() {
        block_on(async {
            let shard = shard(limits());
            let (mut inbox, mut dp, _hp) = inbox();
            let mut sockets = Sockets::new();
            let conn = sockets.conn("closing", 0);
            shard.registry.borrow_mut().insert(conn.clone(), 2);
            conn.close(&shard, CloseCode::Normal1000, "");
            let frame = encode_text(b"{}");
            assert!(dp.push(delivery("nobody", &frame)).is_ok());
            assert!(dp.push(delivery("closing", &frame)).is_ok());
            turn(&shard, &mut inbox, &mut 0);
            let drops = |r: DropReason| shard.stats.notifications_dropped[r as usize].load(Relaxed);
            assert_eq!(
                drops(DropReason::NotLocal),
                1,
                "only the user with no connection"
            );
            assert_eq!(drops(DropReason::ConnectionClosing), 1);
            let total: u64 = DropReason::ALL.iter().map(|r| drops(*r)).sum();
            assert_eq!(total, 2);
        });
    }
}
