//! The Redis subscriber thread: owns the subscription and routes every message to its user's
//! owner shard through the [`Dispatcher`] (it is the single producer of every shard's ring).
//!
//! It reads Redis as fast as Redis sends, always: a full shard ring costs a bounded wait once and
//! then immediate, counted drops (see `dispatch`), because Redis disconnects a subscriber whose
//! output buffer outgrows `client-output-buffer-limit pubsub`, which would lose far more.
//!
//! Faults: any connection error ends the session; the thread reconnects with exponential backoff
//! and full jitter (50 ms doubling to 1 s), re-discovers the master (Sentinel), resubscribes
//! everything, and `/readyz` reports not ready meanwhile. Idle connections are pinged so a dead
//! peer is noticed; under Sentinel the master's address is re-checked every few seconds, so a
//! failover that leaves the old master alive as a replica is followed too.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use redis::{RedisError, RedisResult};

use super::{
    membership::{Event, Membership},
    target::Target,
};
use bytes::Bytes;

use crate::{
    config::RedisSubscription,
    fanout::{Body, Delivery, dispatch::Dispatcher},
    metrics::{DropReason, GlobalStats, RedisError as RedisErrorLabel},
};

/// Read timeout: how often an idle subscriber wakes to apply subscription changes. Bounds the
/// delay before a newly connected user's channel is subscribed in per-user mode.
const POLL: Duration = Duration::from_millis(20);
/// Messages handled between checks for subscription changes while traffic flows.
const CHECK_EVERY: u32 = 256;
/// Silence after which the subscriber pings Redis to detect a dead connection.
const PING_AFTER: Duration = Duration::from_secs(5);
/// How often the master's address is re-checked with the sentinels.
const SENTINEL_CHECK: Duration = Duration::from_secs(2);
/// Connect and write timeout towards Redis.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Nice value asked for the subscriber thread (needs CAP_SYS_NICE; ignored without it).
const SUBSCRIBER_NICE: i32 = -10;
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 1000;
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
    /// Users joining/leaving this gateway (per-user mode).
    pub events: Option<mpsc::Receiver<Event>>,
    /// Per-user unsubscribe grace period.
    pub grace: Duration,
    /// Redis counters.
    pub stats: Arc<GlobalStats>,
    /// True while subscribed (drives `/readyz`).
    pub ready: Arc<AtomicBool>,
}

impl Subscriber {
    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        // Shards can shed load (bounded rings, counted drops); the subscriber cannot: if it
        // falls behind, Redis disconnects it and far more is lost. Where permitted, let the
        // scheduler favour it over the shards.
        if let Err(err) = crate::net::sys::raise_thread_priority(SUBSCRIBER_NICE) {
            tracing::debug!(error = %err, "could not raise the subscriber's priority");
        }
        let mut membership = Membership::new(self.grace);
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        loop {
            let started = Instant::now();
            let (err, subscribed) = self.session(&mut membership);
            if subscribed {
                // This outage is a new one: warn about it once.
                logged_down = false;
            }
            self.ready.store(false, Ordering::Release);
            self.stats.set_redis_connected(false);
            self.stats.inc_redis_error(RedisErrorLabel::Connection);
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
            let pause = jitter(backoff);
            let until = Instant::now() + pause;
            while Instant::now() < until {
                // Keep the membership current while disconnected.
                self.drain_events(&mut membership);
                thread::sleep((until - Instant::now()).min(POLL));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.stats
                .redis_reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// One connection's life: connect, subscribe, read until an error. Also says whether it got
    /// as far as subscribing.
    fn session(&mut self, membership: &mut Membership) -> (RedisError, bool) {
        match self.try_session(membership) {
            Ok(never) => match never {},
            Err(e) => (e, self.ready.load(Ordering::Acquire)),
        }
    }

    fn try_session(
        &mut self,
        membership: &mut Membership,
    ) -> RedisResult<std::convert::Infallible> {
        let client = self.target.client()?;
        let master = client.get_connection_info().addr().to_string();
        let mut con = client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut pubsub = con.as_pubsub();
        pubsub.set_read_timeout(Some(POLL))?;
        match self.mode {
            RedisSubscription::Pattern => pubsub.psubscribe(format!("{}*", self.prefix))?,
            RedisSubscription::PerUser => {
                self.drain_events(membership);
                // Everything current is resubscribed below, so pending changes are moot.
                let _ = membership.take_changes(Instant::now());
                let all: Vec<String> = membership
                    .all()
                    .map(|u| format!("{}{u}", self.prefix))
                    .collect();
                for batch in all.chunks(BATCH) {
                    pubsub.subscribe(batch)?;
                }
            }
        }
        self.stats.set_redis_connected(true);
        self.ready.store(true, Ordering::Release);
        tracing::info!(target = %self.target.describe(), master = %master,
            mode = self.mode.as_str(), channels = membership.len(), "subscribed to Redis");

        let mut since_check = 0u32;
        let mut last_traffic = Instant::now();
        let mut last_sentinel_check = Instant::now();
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                    since_check += 1;
                    last_traffic = Instant::now();
                }
                Err(e) if e.is_timeout() => {
                    since_check = CHECK_EVERY;
                    if last_traffic.elapsed() >= PING_AFTER {
                        let _: redis::Value = pubsub.ping()?;
                        last_traffic = Instant::now();
                    }
                }
                Err(e) => return Err(e),
            }
            if since_check < CHECK_EVERY {
                continue;
            }
            since_check = 0;
            if self.mode == RedisSubscription::PerUser {
                self.drain_events(membership);
                let changes = membership.take_changes(Instant::now());
                let channels = |users: Vec<Box<str>>| -> Vec<String> {
                    users
                        .iter()
                        .map(|u| format!("{}{u}", self.prefix))
                        .collect()
                };
                for batch in channels(changes.subscribe).chunks(BATCH) {
                    pubsub.subscribe(batch)?;
                }
                for batch in channels(changes.unsubscribe).chunks(BATCH) {
                    pubsub.unsubscribe(batch)?;
                }
            }
            if matches!(self.target, Target::Sentinel { .. })
                && last_sentinel_check.elapsed() >= SENTINEL_CHECK
            {
                last_sentinel_check = Instant::now();
                // Only a definite answer naming another master ends the session; a sentinel
                // that does not answer right now is not a reason to drop a working connection.
                if let Ok(now) = self.target.client() {
                    let now = now.get_connection_info().addr().to_string();
                    if now != master {
                        return Err(RedisError::from(std::io::Error::other(format!(
                            "the sentinels moved the master from {master} to {now}"
                        ))));
                    }
                }
            }
        }
    }

    /// Routes one message to its user's shard. Deliberately minimal: validation and
    /// normalisation happen on the owner shard (see [`Body::Raw`]).
    fn on_message(&mut self, channel: &str, payload: &[u8]) {
        self.stats
            .redis_events_consumed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = match channel.strip_prefix(self.prefix.as_str()) {
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

    fn drain_events(&mut self, membership: &mut Membership) {
        if let Some(events) = &self.events {
            let now = Instant::now();
            while let Ok(event) = events.try_recv() {
                membership.apply(event, now);
            }
        }
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
