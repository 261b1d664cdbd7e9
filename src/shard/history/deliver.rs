//! Live notifications with history: recorded and numbered on the owner shard (single node), or
//! checked for gaps against each user's position (Redis: a gap closes the user's connections
//! with 4002 so they recover at once), then sent to the user's connections.

use std::{cell::RefCell, rc::Rc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;

use super::{
    History, Kind,
    live::{Live, Position, Verdict},
    store::{Appended, Store},
};
use crate::{
    clock,
    fanout::{Body, Delivery, Reached, Record, redis::history as redis_history},
    metrics::{DropReason, RedisError},
    proto::{close::CloseCode, history::epoch_hash, payload},
    shard::{
        Shard,
        conn::{Conn, state::Tally},
    },
};

/// A connection was registered after its greeting.
pub fn joined(shard: &Shard, conn: &Rc<Conn>, hello_position: Option<Position>) {
    if let (Some(history), Some(at)) = (&shard.history, hello_position)
        && let Kind::Redis { live, .. } = &history.kind
    {
        live.borrow_mut().joined(&conn.user, conn, at);
    }
}

/// The user's last connection here is gone.
pub fn left(shard: &Shard, user: &str) {
    if let Some(history) = &shard.history
        && let Kind::Redis { live, .. } = &history.kind
    {
        live.borrow_mut().left(user);
    }
}

/// Delivers a notification that history records (single node) or tracks (Redis). Returns the
/// number of connections visited.
pub fn deliver(shard: &Rc<Shard>, delivery: Delivery) -> usize {
    let history = shard.history.as_ref().expect("only called with history");
    let Delivery {
        user,
        body,
        received,
        reply,
    } = delivery;
    match (&history.kind, body) {
        (Kind::Local { store, .. }, Body::Record(record)) => {
            let reached = record_and_send(shard, store, &user, &record, received);
            let visited = reached.as_ref().map_or(0, |(_, v)| *v);
            if let Some(reply) = reply {
                let _ = reply.send(reached.map_or(
                    Reached {
                        recipients: 0,
                        repeated: false,
                    },
                    |(r, _)| r,
                ));
            }
            visited
        }
        (Kind::Redis { live, .. }, Body::Raw(raw)) => {
            track_and_send(shard, history, live, &user, &raw, received)
        }
        (Kind::Redis { live, .. }, Body::Blind) => {
            live.borrow_mut().blind();
            monoio::spawn(verify_after_blind(shard.clone()));
            0
        }
        _ => unreachable!("`History::takes` chose the bodies"),
    }
}

/// Single node: records `record` for `user` and sends it to the user's connections here.
fn record_and_send(
    shard: &Rc<Shard>,
    store: &RefCell<Store>,
    user: &str,
    record: &Record,
    received: std::time::Instant,
) -> Option<(Reached, usize)> {
    let stats = &shard.stats.history;
    let appended = store.borrow_mut().append(
        user,
        &record.text,
        record.idempotency.as_ref(),
        shard.now_ms(),
        stats,
    );
    match appended {
        Appended::Repeated { recipients } => {
            let reached = Reached {
                recipients,
                repeated: true,
            };
            Some((reached, 0))
        }
        Appended::New { frame, offset } => {
            let (recipients, visited) = send_all(shard, user, &frame, received, |_| false);
            store.borrow_mut().set_recipients(user, offset, recipients);
            let reached = Reached {
                recipients,
                repeated: false,
            };
            Some((reached, visited))
        }
    }
}

/// Redis: a live notification for `user`: kept for the user's waiting upgrades, checked
/// against the user's position, sent to its connections (or, after a gap, their connections
/// closed with 4002).
fn track_and_send(
    shard: &Rc<Shard>,
    history: &History,
    live: &RefCell<Live>,
    user: &str,
    raw: &[u8],
    received: std::time::Instant,
) -> usize {
    let local = shard.registry.borrow().user(user).next().is_some();
    let waiting = live.borrow().is_waiting(user);
    if !local && !waiting {
        // Pattern subscriptions: every gateway sees every user's traffic.
        shard.stats.inc_drop(DropReason::NotLocal, 1);
        return 0;
    }
    let max = shard.limits.max_payload_bytes;
    let (frame, mark) = match payload::normalize_marked(raw, clock::unix_ms(), max) {
        Ok(normalised) => normalised,
        Err(err) => {
            tracing::debug!(shard = shard.id, error = %err, "dropping an invalid notification");
            invalid_payload(shard);
            return 0;
        }
    };
    if waiting {
        live.borrow()
            .keep(user, &frame, mark, received, history.live_buffer);
    }
    if !local {
        return 0;
    }
    let verdict = live.borrow_mut().on_live(user, mark);
    match verdict {
        Verdict::Send { check_ahead: false } => {
            send_all(shard, user, &frame, received, |_| false).1
        }
        Verdict::Send { check_ahead: true } => {
            let mark = mark.expect("only a recorded notification is checked");
            let live = live.borrow();
            send_all(shard, user, &frame, received, |c| live.has(user, c, mark)).1
        }
        Verdict::Skip => 0,
        Verdict::Gap => {
            let visited = close_to_recover(shard, user);
            // They get it from history when they reconnect.
            shard
                .stats
                .inc_drop(DropReason::ConnectionClosing, visited as u64);
            visited
        }
    }
}

/// Closes every connection of `user` here with 4002: it may have missed notifications, and
/// reconnecting with `since` recovers them (or tells it to re-sync). Returns how many.
fn close_to_recover(shard: &Rc<Shard>, user: &str) -> usize {
    let registry = shard.registry.borrow();
    let mut visited = 0;
    for conn in registry.user(user) {
        visited += 1;
        let reason = "notifications were missed; reconnect with since to get them";
        conn.close(shard, CloseCode::Recover4002, reason);
    }
    visited
}

/// After the Redis subscription was lost: once it is back, compares every suspect user's
/// position with its history in Redis (batched reads) and closes with 4002 those that differ
/// (or cannot be read). Without it, a user whose next notification never comes would not learn
/// of the ones lost in the blind window. A notification already on its way when the read is
/// taken may make the check close a connection that lost nothing: it reconnects and recovers.
async fn verify_after_blind(shard: Rc<Shard>) {
    let Some(history) = &shard.history else {
        return;
    };
    let Kind::Redis {
        reads,
        live,
        subscribed,
    } = &history.kind
    else {
        return;
    };
    while !subscribed.load(Ordering::Acquire) {
        if shard.finished.get() {
            return;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let users = live.borrow().suspects();
    for chunk in users.chunks(redis_history::BATCH) {
        let asked: Vec<_> = chunk.iter().map(|u| reads.ask(u, None)).collect();
        for (user, rx) in chunk.iter().zip(asked) {
            let read = match rx {
                Some(rx) => match monoio::time::timeout(history.read_timeout, rx).await {
                    Ok(Ok(Ok(read))) => Some(Position {
                        epoch: epoch_hash(read.epoch.as_bytes()),
                        offset: read.top,
                    }),
                    _ => None,
                },
                None => None,
            };
            if live.borrow_mut().verify(user, read) {
                let closed = close_to_recover(&shard, user);
                shard.stats.history.inc_unread_gap(closed as u64);
            }
        }
    }
}

/// Sends `frame` to every connection of `user` here that `skip` does not exclude. Returns
/// (connections that took it, connections visited).
fn send_all(
    shard: &Rc<Shard>,
    user: &str,
    frame: &Bytes,
    received: std::time::Instant,
    skip: impl Fn(&Rc<Conn>) -> bool,
) -> (u32, usize) {
    let registry = shard.registry.borrow();
    let mut tally = Tally::default();
    let (mut recipients, mut visited) = (0u32, 0);
    for conn in registry.user(user) {
        visited += 1;
        if skip(conn) {
            continue;
        }
        if conn.deliver(shard, frame, received, &mut tally)
            != crate::shard::conn::SendOutcome::Rejected
        {
            recipients += 1;
        }
    }
    tally.settle(&shard.stats, received);
    (recipients, visited)
}

pub(super) fn invalid_payload(shard: &Shard) {
    let global = shard.shared.metrics.global();
    global.inc_redis_error(RedisError::MessageProcessing);
    shard.stats.inc_drop(DropReason::InvalidPayload, 1);
}

/// The shard's history task: drops expired histories (single node), or hands read answers to
/// the waiting upgrades (Redis). Runs until the shard stops.
pub async fn run(shard: Rc<Shard>) {
    let Some(history) = &shard.history else {
        return;
    };
    match &history.kind {
        Kind::Local { store, sweep } => loop {
            monoio::time::sleep(*sweep).await;
            store
                .borrow_mut()
                .expire(shard.now_ms(), &shard.stats.history);
        },
        Kind::Redis { .. } => super::remote::run(shard.clone()).await,
    }
}
