//! The Redis subscriber thread: owns the subscription and routes every message to its user's
//! owner shard through the [`Dispatcher`] (it is the single producer of every shard's ring).
//!
//! It reads Redis as fast as Redis sends, always: a full shard ring costs a bounded wait once and
//! then immediate, counted drops (see `dispatch`), because Redis disconnects a subscriber whose
//! output buffer outgrows `client-output-buffer-limit pubsub`, which would lose far more.
//!
//! A slow Redis is not a dead Redis: the connection is kept while it is open, and given up only
//! when a reply has been due and nothing at all arrived for `REDIS_LIVENESS_TIMEOUT` (see
//! [`replies`](super::replies)); reads never time out in the middle of anything (see
//! [`link`](super::link)). So a stall shorter than that loses nothing: what Redis queued for
//! this connection arrives when it wakes. Commands are pipelined: the thread never waits for a
//! reply while messages are due, and matches replies to commands as they come.
//!
//! Per-user mode: shards ask for a user's channel before answering its upgrade; wants are
//! batched into SUBSCRIBE commands of up to [`BATCH`] channels (a connect storm costs one round
//! trip per batch, not per user), and each is answered once Redis confirms its channel.
//!
//! Faults: any connection error ends the session; the thread reconnects with exponential backoff
//! and full jitter (50 ms doubling to 1 s), re-discovers the master (Sentinel), resubscribes
//! everything, and `/readyz` reports not ready meanwhile. Under Sentinel the master's address is
//! re-checked every few seconds, so a failover that leaves the old master alive as a replica is
//! followed too. The time between the last byte of a lost connection and the confirmation of the
//! next one is counted: notifications published in it may have been lost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    link::{Link, LinkError},
    membership::{Event, Membership},
    replies::{Expect, InFlight, Liveness, Verdict},
    requests::SubscriberSide,
    resp,
    target::Target,
};
use crate::{
    config::RedisSubscription,
    fanout::dispatch::Dispatcher,
    metrics::{GlobalStats, RedisError as RedisErrorLabel},
};

/// How often timers (liveness, grace periods, Sentinel) are looked at when nothing arrives.
const TICK: Duration = Duration::from_millis(50);
/// How often the master's address is re-checked with the sentinels.
const SENTINEL_CHECK: Duration = Duration::from_secs(2);
/// Connect (and TLS handshake, and AUTH) timeout towards Redis.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Nice value asked for the subscriber thread (needs CAP_SYS_NICE; ignored without it).
const SUBSCRIBER_NICE: i32 = -10;
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
pub const BATCH: usize = 1000;
/// Shard events handled per turn of the loop, between reads.
pub(super) const EVENT_BUDGET: usize = 4096;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Everything the subscriber thread owns.
pub struct Subscriber {
    /// Where Redis is.
    pub target: Target,
    /// Channel prefix (`notifications:`).
    pub prefix: String,
    /// Pattern or per-user subscriptions.
    pub mode: RedisSubscription,
    /// Producer of every shard ring.
    pub dispatcher: Dispatcher,
    /// Wants and departures from the shards, answers back (per-user mode).
    pub requests: Option<SubscriberSide>,
    /// Per-user unsubscribe grace period.
    pub grace: Duration,
    /// How long Redis may stay silent while a reply is due (`REDIS_LIVENESS_TIMEOUT`).
    pub liveness: Duration,
    /// Largest payload buffered; longer messages are skipped and counted (`MAX_PUBLISH_BYTES`).
    pub max_payload_bytes: usize,
    /// Redis counters.
    pub stats: Arc<GlobalStats>,
    /// True while subscribed (drives `/readyz`).
    pub ready: Arc<AtomicBool>,
}

/// One connection's state besides the socket.
pub(super) struct Session {
    /// Commands awaiting replies.
    pub(super) inflight: InFlight,
    /// Commands to write at the end of this turn.
    pub(super) out: Vec<u8>,
    /// The first PING's reply arrived: everything sent before it is in force.
    pub(super) subscribed: bool,
    /// The master's address, for logs and the Sentinel check.
    pub(super) master: String,
}

impl Subscriber {
    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || runtime.block_on(self.run()))
    }

    async fn run(mut self) {
        // Shards can shed load (bounded rings, counted drops); the subscriber cannot: if it
        // falls behind, Redis disconnects it and far more is lost. Where permitted, let the
        // scheduler favour it over the shards.
        if let Err(err) = crate::net::sys::raise_thread_priority(SUBSCRIBER_NICE) {
            tracing::debug!(error = %err, "could not raise the subscriber's priority");
        }
        let mut membership = Membership::new(self.grace);
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        // The last byte of the last subscribed connection, while not subscribed again.
        let mut lost_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let (err, last_rx) = self.session(&mut membership, &mut lost_at).await;
            membership.connection_lost();
            if let Some(last_rx) = last_rx {
                // This outage is a new one: warn about it once.
                logged_down = false;
                lost_at = Some(last_rx);
                // Behind everything the lost connection delivered, before anything the next
                // one will: the shards' history checks the next offsets strictly.
                self.dispatcher.broadcast_blind();
            }
            self.ready
                .store(false, std::sync::atomic::Ordering::Release);
            self.stats.set_redis_connected(false);
            self.stats.inc_redis_error(RedisErrorLabel::Connection);
            if matches!(err, LinkError::Silent(_)) {
                self.stats.redis_liveness_timeouts.fetch_add(1, Relaxed);
            }
            if !logged_down {
                tracing::warn!(target = %self.target.describe(), error = %err,
                    "Redis connection lost; reconnecting with backoff");
                logged_down = true;
            } else {
                tracing::debug!(error = %err, "Redis reconnect failed");
            }
            // A session that lasted a while was healthy: start the backoff over.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            self.pause(jitter(backoff), &mut membership).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.stats.redis_reconnects.fetch_add(1, Relaxed);
        }
    }

    /// Waits `pause` while keeping the membership current (wants wait for the next
    /// connection; users whose grace ran out are dropped).
    async fn pause(&mut self, pause: Duration, membership: &mut Membership) {
        let until = tokio::time::Instant::now() + pause;
        loop {
            self.drain_events(membership);
            let (_, answers) = membership.take_expired(Instant::now());
            self.answer_all(answers.into_iter());
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + TICK)).await;
        }
    }

    /// One connection's life: connect, subscribe, read until an error. Also returns when the
    /// last byte arrived if it got as far as being subscribed.
    async fn session(
        &mut self,
        membership: &mut Membership,
        lost_at: &mut Option<Instant>,
    ) -> (LinkError, Option<Instant>) {
        let mut link = None;
        let mut subscribed = false;
        let err = match self
            .try_session(membership, lost_at, &mut link, &mut subscribed)
            .await
        {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let last_rx = link.filter(|_| subscribed).map(|l: Link| l.last_rx);
        (err, last_rx)
    }

    async fn try_session(
        &mut self,
        membership: &mut Membership,
        lost_at: &mut Option<Instant>,
        link_slot: &mut Option<Link>,
        subscribed: &mut bool,
    ) -> Result<std::convert::Infallible, LinkError> {
        let client = self.target.client()?;
        let info = client.get_connection_info().clone();
        let link =
            link_slot.insert(Link::connect(&info, self.max_payload_bytes, IO_TIMEOUT).await?);
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => {
                    link.command_ok(&["AUTH", user, password], IO_TIMEOUT)
                        .await?
                }
                None => link.command_ok(&["AUTH", password], IO_TIMEOUT).await?,
            }
        }
        let mut s = Session {
            inflight: InFlight::default(),
            out: Vec::with_capacity(4096),
            subscribed: false,
            master: info.addr().to_string(),
        };
        let now = Instant::now();
        match self.mode {
            RedisSubscription::Pattern => {
                let pattern = format!("{}*", self.prefix);
                resp::encode_command(&["PSUBSCRIBE", pattern.as_str()], &mut s.out);
                s.inflight.sent(Expect::PSubscribe, 1, now);
            }
            RedisSubscription::PerUser => {
                self.drain_events(membership);
                self.subscribe_wanted(membership, &mut s, now);
            }
        }
        // Replies come in order: once this PING is answered, every subscription above is in
        // force.
        resp::encode_command(&["PING"], &mut s.out);
        s.inflight.sent(Expect::Pong, 1, now);
        let live = Liveness {
            timeout: self.liveness,
        };
        let mut last_sentinel_check = Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the last wake-up was the ticker's: the socket had nothing to read then (the
        // read is polled first), so silence is real and not this thread being late.
        let mut ticked = false;
        loop {
            // Everything received so far.
            while let Some(next) = link.next()? {
                self.on_frame(next, membership, &mut s)?;
            }
            if s.subscribed && !*subscribed {
                *subscribed = true;
                self.on_subscribed(&s, membership, lost_at);
            }
            let now = Instant::now();
            if self.mode == RedisSubscription::PerUser {
                self.drain_events(membership);
                let (leaving, answers) = membership.take_expired(now);
                self.answer_all(answers.into_iter());
                for batch in leaving.chunks(BATCH) {
                    resp::encode_prefixed(
                        b"UNSUBSCRIBE",
                        self.prefix.as_bytes(),
                        batch,
                        &mut s.out,
                    );
                    s.inflight.sent(Expect::Unsubscribe, batch.len(), now);
                }
                self.subscribe_wanted(membership, &mut s, now);
            }
            match live.check(&s.inflight, link.last_rx, now) {
                Verdict::Alive => {}
                Verdict::Probe => {
                    resp::encode_command(&["PING"], &mut s.out);
                    s.inflight.sent(Expect::Pong, 1, now);
                }
                Verdict::Dead if ticked => return Err(LinkError::Silent(self.liveness)),
                Verdict::Dead => {}
            }
            if matches!(self.target, Target::Sentinel { .. })
                && last_sentinel_check.elapsed() >= SENTINEL_CHECK
            {
                last_sentinel_check = Instant::now();
                // Only a definite answer naming another master ends the session; a sentinel
                // that does not answer right now is not a reason to drop a working connection.
                if let Ok(now) = self.target.client() {
                    let now = now.get_connection_info().addr().to_string();
                    if now != s.master {
                        return Err(LinkError::Moved {
                            from: s.master,
                            to: now,
                        });
                    }
                }
            }
            if !s.out.is_empty() {
                link.send(&s.out, self.liveness).await?;
                s.out.clear();
            }
            let events = self.requests.as_mut().map(|r| &mut r.events);
            let woke = tokio::select! {
                biased;
                read = link.fill() => Wake::Read(read),
                _ = ticker.tick() => Wake::Tick,
                event = next_event(events) => Wake::Event(event),
            };
            ticked = matches!(woke, Wake::Tick);
            match woke {
                Wake::Read(read) => read?,
                Wake::Event(event) => self.apply(event, membership),
                Wake::Tick => {}
            }
        }
    }
}

/// What woke the session.
enum Wake {
    Read(Result<(), LinkError>),
    Event(Option<Event>),
    Tick,
}

/// The next shard event; never resolves without a queue.
async fn next_event(events: Option<&mut tokio::sync::mpsc::Receiver<Event>>) -> Option<Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// "Full jitter": a uniformly random pause in `[0, cap]`, so gateways that lost Redis together
/// do not come back in lockstep.
fn jitter(cap: Duration) -> Duration {
    let mut b = [0u8; 8];
    let r = getrandom::fill(&mut b).map_or(u64::MAX / 2, |()| u64::from_le_bytes(b));
    cap.mul_f64(r as f64 / u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_cap() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(100)) <= Duration::from_millis(100));
        }
    }
}
