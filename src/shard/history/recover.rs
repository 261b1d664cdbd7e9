//! A connecting client's greeting with history: the position of its user's history, the replay
//! it asked for (`since` + `epoch`), and the live notifications kept while the history was read;
//! read from the shard's memory (single node) or from Redis through the reader thread.

use std::{rc::Rc, sync::atomic::Ordering};

use bytes::Bytes;

use super::{
    Kind,
    live::{Position, Step, Waiter},
};
use crate::{
    clock,
    fanout::redis::history::ReadResult,
    metrics::Recovery,
    proto::{
        history::{Resume, connected_frame, epoch_hash, recoverable},
        payload,
        upgrade::Status,
    },
    shard::{Shard, refusal, socket::Socket},
};

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
                Err(_) => super::invalid_payload(shard),
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
