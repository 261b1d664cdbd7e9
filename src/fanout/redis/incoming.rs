//! What the subscriber does with what arrives: frames from Redis (messages routed to their
//! shard, replies matched to their commands, confirmed channels answered to the waiting
//! upgrades) and requests from the shards (wants and departures applied to the membership).

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use bytes::Bytes;

use super::{
    link::{LinkError, Next},
    membership::{Answer, Event, Membership, Ticket},
    replies::{Expect, Reply},
    resp::{self, Item},
    subscriber::{BATCH, EVENT_BUDGET, Session, Subscriber},
};
use crate::{
    fanout::{Body, Delivery},
    metrics::{DropReason, RedisError as RedisErrorLabel},
};

impl Subscriber {
    /// Handles one frame: a message to route, or a reply to match to its command.
    pub(super) fn on_frame(
        &mut self,
        next: Next<'_>,
        membership: &mut Membership,
        s: &mut Session,
    ) -> Result<(), LinkError> {
        let frame = match next {
            Next::Oversized => {
                // A payload larger than any shard would accept: skipped, counted.
                self.stats.redis_events_consumed.fetch_add(1, Relaxed);
                self.stats
                    .inc_redis_error(RedisErrorLabel::MessageProcessing);
                self.stats.inc_drop(DropReason::InvalidPayload, 1);
                return Ok(());
            }
            Next::Frame(frame) => frame,
        };
        let items = frame.items.as_slice();
        let reply = match items {
            [
                Item::Bulk(b"message"),
                Item::Bulk(channel),
                Item::Bulk(payload),
            ]
            | [
                Item::Bulk(b"pmessage"),
                Item::Bulk(_),
                Item::Bulk(channel),
                Item::Bulk(payload),
            ] => {
                self.on_message(channel, payload);
                return Ok(());
            }
            [Item::Bulk(b"subscribe"), Item::Bulk(channel), ..] => {
                if let Expect::Subscribe(seq) = s.inflight.on_reply(Reply::Subscribe)? {
                    let user = channel
                        .strip_prefix(self.prefix.as_bytes())
                        .unwrap_or(channel);
                    let user = std::str::from_utf8(user).unwrap_or_default();
                    let tickets = membership.confirmed(user, seq);
                    self.answer_all(tickets.into_iter().map(|t| (t, true)));
                }
                return Ok(());
            }
            [Item::Bulk(b"unsubscribe"), ..] => Reply::Unsubscribe,
            [Item::Bulk(b"psubscribe"), ..] => Reply::PSubscribe,
            [Item::Bulk(b"pong"), ..] | [Item::Status(b"PONG")] => Reply::Pong,
            [Item::Status(_)] => Reply::Status,
            [Item::Error(e)] => {
                return Err(LinkError::Refused(String::from_utf8_lossy(e).into_owned()));
            }
            _ => {
                return Err(
                    resp::RespError::Malformed("a frame a subscriber does not expect").into(),
                );
            }
        };
        if s.inflight.on_reply(reply)? == Expect::Pong {
            s.subscribed = true;
        }
        Ok(())
    }

    /// The first subscription of a connection is in force.
    pub(super) fn on_subscribed(
        &self,
        s: &Session,
        membership: &Membership,
        lost_at: &mut Option<Instant>,
    ) {
        self.stats.set_redis_connected(true);
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        if let Some(since) = lost_at.take() {
            let ms = since.elapsed().as_millis() as u64;
            self.stats.redis_unsubscribed_ms.fetch_add(ms, Relaxed);
        }
        tracing::info!(target = %self.target.describe(), master = %s.master,
            mode = self.mode.as_str(), channels = membership.len(), "subscribed to Redis");
    }

    /// Sends SUBSCRIBE for every wanted user not yet sent, in batches.
    pub(super) fn subscribe_wanted(
        &mut self,
        membership: &mut Membership,
        s: &mut Session,
        now: Instant,
    ) {
        let users = membership.take_to_subscribe();
        for batch in users.chunks(BATCH) {
            let seq = s.inflight.next_subscribe();
            resp::encode_prefixed(b"SUBSCRIBE", self.prefix.as_bytes(), batch, &mut s.out);
            membership.sent(batch, seq);
            s.inflight.sent(Expect::Subscribe(seq), batch.len(), now);
        }
    }

    /// Routes one message to its user's shard. Deliberately minimal: validation and
    /// normalisation happen on the owner shard (see [`Body::Raw`]).
    pub(super) fn on_message(&mut self, channel: &[u8], payload: &[u8]) {
        self.stats.redis_events_consumed.fetch_add(1, Relaxed);
        let user = channel
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|u| std::str::from_utf8(u).ok());
        let user = match user {
            Some(user) if !user.is_empty() => user,
            _ => {
                self.stats
                    .inc_redis_error(RedisErrorLabel::MessageProcessing);
                self.stats.inc_drop(DropReason::InvalidPayload, 1);
                return;
            }
        };
        // A full ring is counted by the dispatcher; nothing more to do here.
        let _ = self.dispatcher.dispatch(Delivery {
            user: user.into(),
            body: Body::Raw(Bytes::copy_from_slice(payload)),
            received: Instant::now(),
            reply: None,
        });
    }

    /// Applies what the shards sent, up to a budget.
    pub(super) fn drain_events(&mut self, membership: &mut Membership) {
        for _ in 0..EVENT_BUDGET {
            let Some(requests) = self.requests.as_mut() else {
                return;
            };
            match requests.events.try_recv() {
                Ok(event) => self.apply(Some(event), membership),
                Err(_) => return,
            }
        }
    }

    pub(super) fn apply(&mut self, event: Option<Event>, membership: &mut Membership) {
        let Some(event) = event else {
            // Every shard is gone (the process is stopping): nothing more will come.
            self.requests = None;
            return;
        };
        if let Some(ticket) = membership.apply(event, Instant::now()) {
            self.answer_all(std::iter::once((ticket, true)));
        }
    }

    pub(super) fn answer_all(&mut self, answers: impl Iterator<Item = (Ticket, bool)>) {
        let Some(requests) = self.requests.as_mut() else {
            return;
        };
        for (ticket, subscribed) in answers {
            requests.answer(
                ticket.shard,
                Answer {
                    id: ticket.id,
                    subscribed,
                },
            );
        }
    }
}
