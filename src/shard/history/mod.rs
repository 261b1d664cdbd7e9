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
//! Either way the greeting is one write: `101`, `connected` (with the user's `offset` and
//! `epoch`, and `recovered` when the client sent `since`), the replay, then the live
//! notifications the client does not have yet.

pub mod live;
pub mod remote;
pub mod store;

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;

use self::{
    live::{Live, Position, Step, Verdict, Waiter},
    remote::Reads,
    store::{Appended, Store, StoreLimits},
};
use super::{Shard, conn::Conn, conn::state::Tally, refusal, socket::Socket};
use crate::{
    clock,
    fanout::{
        Body, Delivery, Reached, Record,
        redis::history::{self as redis_history, ReadResult, ShardReads},
    },
    metrics::{DropReason, Recovery, RedisError},
    proto::{
        close::CloseCode,
        history::{Resume, connected_frame, epoch_hash, recoverable},
        payload,
        upgrade::Status,
    },
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

/// What a new connection is greeted with after the `101`.
#[derive(Default)]
pub struct Hello {
    /// `connected` with the history's position (`None`: history off, the plain one).
    pub connected: Option<Bytes>,
    /// The replay, then the live notifications kept during the read that it does not have.
    pub frames: Vec<Bytes>,
    /// How many of `frames` are replayed.
    pub replayed: u64,
    /// When each kept live notification reached the gateway (after the replayed ones).
    pub live: Vec<std::time::Instant>,
    /// Where the connection stands once greeted (Redis mode).
    pub position: Option<Position>,
}

/// Runs `then` with the greeting once `user`'s history is known: at once without history or
/// single node; with Redis after the read, in a task of its own (the shard serves the others
/// meanwhile), or answers 503 (dropping `then`, and with it the connection's slot).
pub fn when_recovered<F>(
    shard: &Rc<Shard>,
    stream: Socket,
    user: Rc<str>,
    resume: Option<Box<Resume>>,
    then: F,
) where
    F: FnOnce(Socket, Rc<str>, Hello) + 'static,
{
    let Some(history) = &shard.history else {
        return then(stream, user, Hello::default());
    };
    let (reads, live, subscribed) = match &history.kind {
        Kind::Local { store, .. } => {
            let stats = &shard.stats.history;
            let snap = store
                .borrow_mut()
                .read(&user, resume.as_deref(), shard.now_ms(), stats);
            if let Some(outcome) = snap.outcome {
                stats.inc_recovery(outcome);
            }
            let recovered = snap.outcome.map(|o| o == Recovery::Recovered);
            let hello = Hello {
                connected: Some(connected_frame(
                    &user,
                    clock::unix_ms(),
                    snap.top,
                    &snap.epoch,
                    recovered,
                )),
                replayed: snap.replay.len() as u64,
                frames: snap.replay,
                live: Vec::new(),
                position: None,
            };
            return then(stream, user, hello);
        }
        Kind::Redis {
            reads,
            live,
            subscribed,
        } => (reads, live, subscribed),
    };
    let subscribed = subscribed.load(Ordering::Acquire);
    // Registered before the read is sent: every live notification from now on is kept for it.
    let waiter = live.borrow_mut().wait(&user);
    let asked = if subscribed {
        reads.ask(&user, resume.as_deref().cloned())
    } else {
        None
    };
    let shard = shard.clone();
    monoio::spawn(async move {
        let history = shard.history.as_ref().expect("checked above");
        let started = std::time::Instant::now();
        let answer = match asked {
            None => Err(Recovery::Unavailable),
            Some(rx) => match monoio::time::timeout(history.read_timeout, rx).await {
                Ok(Ok(Ok(read))) => Ok(read),
                _ => Err(Recovery::Unavailable),
            },
        };
        let stats = &shard.stats.history;
        stats
            .read_latency
            .observe_us(started.elapsed().as_micros() as u64);
        let hello = match answer {
            Ok(read) => assemble(&shard, &user, resume.as_deref(), read, &waiter),
            // Redis unreachable or stalled: a client that asked for nothing is let in as
            // without history (the plain `connected`; it takes its position from the first
            // recorded notification), so an outage of Redis is not one of the gateway too. A
            // client that asked for a replay is refused (503): its gap is still in Redis.
            Err(Recovery::Unavailable) if resume.is_none() => {
                stats.inc_unread();
                Ok(Hello::default())
            }
            Err(outcome) => Err(outcome),
        };
        if let Kind::Redis { live, .. } = &history.kind {
            live.borrow_mut().done(&user, &waiter);
        }
        match hello {
            Ok(hello) if !shard.draining() => then(stream, user, hello),
            Ok(_) => {
                drop(then);
                let message = "the gateway is shutting down; reconnect to another instance";
                let status = Status::ServiceUnavailable;
                refusal::refuse(&shard, stream, status, "draining", message).await;
            }
            Err(outcome) => {
                drop(then);
                stats.inc_recovery(outcome);
                let message = match outcome {
                    Recovery::LiveOverflow => {
                        "too many notifications arrived while reading the history; retry with the same since"
                    }
                    _ => "the notification history could not be read in time; retry shortly",
                };
                let status = Status::ServiceUnavailable;
                refusal::refuse(&shard, stream, status, "history_unavailable", message).await;
            }
        }
    });
}

/// The greeting from a Redis read and the live notifications kept meanwhile: `connected`, the
/// replay when it closes the client's gap, then the kept ones the client does not have. A gap
/// among the kept ones (or too many of them) fails the upgrade: nothing was sent yet, so the
/// client simply retries with the same `since`.
fn assemble(
    shard: &Shard,
    user: &str,
    resume: Option<&Resume>,
    read: ReadResult,
    waiter: &Waiter,
) -> Result<Hello, Recovery> {
    let kept = waiter.take().ok_or(Recovery::LiveOverflow)?;
    let offsets = read.entries.iter().map(|(offset, _)| *offset);
    let outcome = resume.map(|r| outcome(r, &read.epoch, read.top, offsets));
    if let Some(outcome) = outcome {
        shard.stats.history.inc_recovery(outcome);
    }
    let recovered = outcome.map(|o| o == Recovery::Recovered);
    let now = clock::unix_ms();
    let mut hello = Hello {
        connected: Some(connected_frame(user, now, read.top, &read.epoch, recovered)),
        ..Hello::default()
    };
    if recovered == Some(true) {
        for (_, text) in &read.entries {
            match payload::normalize_to_frame(text, now, shard.limits.max_payload_bytes) {
                Ok(frame) => hello.frames.push(frame),
                // Recorded by a direct publisher that skipped the checks: dropped, as live.
                Err(_) => invalid_payload(shard),
            }
        }
        hello.replayed = hello.frames.len() as u64;
    }
    let mut at = Position {
        epoch: epoch_hash(read.epoch.as_bytes()),
        offset: read.top,
    };
    for k in kept {
        match at.take(k.mark) {
            Step::Send => {
                hello.frames.push(k.frame);
                hello.live.push(k.received);
            }
            Step::Skip => {}
            Step::Gap => return Err(Recovery::LiveOverflow),
        }
    }
    hello.position = Some(at);
    Ok(hello)
}

/// How a replay request ends, given what the history holds after `resume.since`: the one rule
/// ([`recoverable`]) and, when it fails, why.
pub(crate) fn outcome(
    resume: &Resume,
    epoch: &str,
    top: u64,
    offsets: impl IntoIterator<Item = u64>,
) -> Recovery {
    if recoverable(resume, epoch, top, offsets) {
        Recovery::Recovered
    } else if *resume.epoch != *epoch {
        Recovery::EpochChanged
    } else if resume.since > top {
        Recovery::SinceAhead
    } else {
        Recovery::Trimmed
    }
}

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
        if conn.deliver(shard, frame, received, &mut tally) != super::conn::SendOutcome::Rejected {
            recipients += 1;
        }
    }
    tally.settle(&shard.stats, received);
    (recipients, visited)
}

fn invalid_payload(shard: &Shard) {
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
        Kind::Redis { .. } => remote::run(shard.clone()).await,
    }
}
