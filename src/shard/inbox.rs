//! The shard's inbox: notifications from the dispatcher and connections handed over by other
//! shards, each on its own single-producer/single-consumer ring (`rtrb`), plus one [`Doorbell`]
//! any producer rings after pushing.

use std::{
    future::poll_fn,
    rc::Rc,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
};

use super::{
    Shard,
    conn::{SendOutcome, state::Tally},
    handoff::Handoff,
    session,
};
use crate::{
    clock,
    fanout::{Body, Delivery},
    metrics::{DropReason, RedisError},
    net::doorbell::Doorbell,
    proto::payload,
};

/// Deliveries handled before the inbox task yields to the connections' I/O tasks.
const BATCH: usize = 256;

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
        !self.deliveries.is_empty()
            || self.handoffs.iter().any(|c| !c.is_empty())
            || shard.draining()
    }

    /// Parks until a producer rings (re-checking after registering, so no push is missed).
    async fn wait(&self, shard: &Shard) {
        poll_fn(|cx| {
            self.doorbell.register(cx.waker());
            if self.has_work(shard) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Serves the inbox until the shard has drained.
pub async fn run(shard: Rc<Shard>, mut inbox: Inbox) {
    let mut drain_started = false;
    while !shard.finished.get() {
        if shard.draining() && !drain_started {
            drain_started = true;
            shard.stop_accepting();
            monoio::spawn(super::drain::run(shard.clone(), shard.shared.drain_period));
        }
        let mut handled = 0;
        // Hand-offs first: a connection must be registered before the notifications behind it.
        for ring in &mut inbox.handoffs {
            while let Ok(handoff) = ring.pop() {
                shard.stats.handoffs_in.fetch_add(1, Relaxed);
                session::adopt(&shard, handoff);
                handled += 1;
            }
        }
        while handled < BATCH {
            let Ok(delivery) = inbox.deliveries.pop() else {
                break;
            };
            deliver(&shard, delivery);
            handled += 1;
        }
        if handled == 0 {
            if drain_started {
                // Draining: poll the queues while the drain task works (it sets `finished`).
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            } else {
                inbox.wait(&shard).await;
            }
        } else if handled >= BATCH {
            yield_now().await;
        }
    }
}

/// Writes one notification to every connection of its user on this shard. Every lost copy is
/// counted once, with one reason: `not_local` only when the user has no connection here at all;
/// a connection that refuses it (closing, or overflowing) counts its own drop.
fn deliver(shard: &Rc<Shard>, delivery: Delivery) {
    let registry = shard.registry.borrow();
    let mut conns = registry.user(&delivery.user).peekable();
    let local = conns.peek().is_some();
    let frame = match delivery.body {
        Body::Frame(frame) => Some(frame),
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
                    return;
                }
            }
        }
    };
    let mut recipients = 0u32;
    if let Some(frame) = frame {
        let mut tally = Tally::default();
        for conn in conns {
            if conn.deliver(shard, &frame, delivery.received, &mut tally) != SendOutcome::Rejected {
                recipients += 1;
            }
        }
        tally.settle(&shard.stats, delivery.received);
    }
    match delivery.reply {
        // The publisher may have given up waiting; that is fine.
        Some(reply) => {
            let _ = reply.send(recipients);
        }
        // From Redis: with pattern subscriptions every gateway sees every user's traffic and
        // drops what is not for its own connections.
        None if !local => shard.stats.inc_drop(DropReason::NotLocal, 1),
        None => {}
    }
}

/// Lets other tasks on this thread run once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}
