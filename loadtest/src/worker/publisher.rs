//! The worker's publisher: one pipelined connection to Redis (`PUBLISH`) or to the gateway's
//! publish API (`POST /v1/publish`, keep-alive, pipelined: history is recorded only there), written
//! in batches (one `write` per batch, one clock read per batch for the payloads' `sent_us`),
//! replies counted by a reader task.
//!
//! A phase publishes either open loop (a fixed rate on an absolute schedule; the lag behind it is
//! reported) or closed loop (`rate == 0`: keep at most `window` expected deliveries in flight,
//! topping the window up whenever deliveries bring it below half). Each worker publishes only to
//! its own users, so it knows exactly what it expects back.

use std::{
    io,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::{sleep, sleep_until, timeout},
};

use super::state::{Worker, now_us};
use crate::{
    proto::{PhaseSpec, Pick},
    stats::pacer::Pacer,
    wire::{http, message, resp},
};

/// How long a closed-loop window may stay full with no delivery before it is written off.
const STALL: Duration = Duration::from_millis(500);

/// Publish API: time between reconnect attempts while it is down.
const RETRY: Duration = Duration::from_millis(100);

/// Connects the worker's publisher to Redis, or to the publish API when the plan names one.
pub async fn connect(w: &Rc<Worker>, addr: SocketAddr) -> io::Result<()> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, wr) = s.into_split();
    if w.plan.publish_api.is_some() {
        let gen_ = w.api_gen.get() + 1;
        w.api_gen.set(gen_);
        tokio::task::spawn_local(read_responses(w.clone(), r, gen_));
    } else {
        tokio::task::spawn_local(read_replies(w.clone(), r));
    }
    *w.redis.borrow_mut() = Some(wr);
    Ok(())
}

/// Matches the publish API's answers to the requests in flight (in order); anything but 2xx
/// voids its notification. When the connection ends, whatever is still unanswered on it is voided
/// too (its outcome is unknown).
async fn read_responses(w: Rc<Worker>, mut r: OwnedReadHalf, gen_: u32) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match r.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        let mut used = 0;
        loop {
            match http::next_response(&buf[used..len]) {
                Ok(Some((status, n))) => {
                    used += n;
                    let front = take_answered(&w, gen_);
                    if !(200..300).contains(&status) {
                        w.redis_errors.set(w.redis_errors.get() + 1);
                        if let Some((u, seq, _)) = front {
                            w.void(u as usize, seq);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    w.redis_errors.set(w.redis_errors.get() + 1);
                    len = 0;
                    used = 0;
                    break;
                }
            }
        }
        buf.copy_within(used..len, 0);
        len -= used;
    }
    loop {
        let front = {
            let mut q = w.inflight.borrow_mut();
            match q.front() {
                Some(&(_, _, g)) if g == gen_ => q.pop_front(),
                _ => None,
            }
        };
        let Some((u, seq, _)) = front else { break };
        w.void(u as usize, seq);
    }
}

/// The request an answer on connection `gen_` belongs to: the oldest of that connection's.
/// Requests of an older connection still queued in front of it are voided first: that
/// connection is gone and will never answer them (its reader may not have noticed yet), so
/// their outcome is unknown. Without this, answers on a new connection were matched to a dead
/// one's requests, counting them published and reporting them lost.
fn take_answered(w: &Rc<Worker>, gen_: u32) -> Option<(u32, u64, u32)> {
    loop {
        let front = w.inflight.borrow_mut().pop_front()?;
        if front.2 >= gen_ {
            return Some(front);
        }
        w.void(front.0 as usize, front.1);
    }
}

/// Publish API: a connection again after it broke, at most one attempt per call.
async fn reconnect_api(w: &Rc<Worker>) -> Option<OwnedWriteHalf> {
    let addr = w.plan.publish_api.as_ref()?.addr;
    let s = timeout(Duration::from_millis(200), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.set_nodelay(true).ok()?;
    let (r, wr) = s.into_split();
    let gen_ = w.api_gen.get() + 1;
    w.api_gen.set(gen_);
    tokio::task::spawn_local(read_responses(w.clone(), r, gen_));
    Some(wr)
}

/// Writes a batch. Through the publish API a broken connection is not fatal: the batch's requests
/// are voided by the reader when it sees the end, and the publisher reconnects.
async fn write_batch(
    w: &Rc<Worker>,
    conn: &mut Option<OwnedWriteHalf>,
    buf: &[u8],
) -> io::Result<()> {
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    match c.write_all(buf).await {
        Ok(()) => Ok(()),
        Err(_) if w.plan.publish_api.is_some() => {
            // Closing our half makes the reader see the end and void what is unanswered.
            *conn = None;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn read_replies(w: Rc<Worker>, mut r: OwnedReadHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            len = 0; // a reply line longer than the buffer: not ours to parse
        }
        match r.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        let (replies, used) = resp::scan_replies(&buf[..len]);
        w.redis_errors.set(w.redis_errors.get() + replies.errors);
        buf.copy_within(used..len, 0);
        len -= used;
    }
}

/// Chooses users for a phase.
struct Picker<'a> {
    targets: &'a [usize],
    pick: Pick,
    next: usize,
}

impl Picker<'_> {
    fn next(&mut self, w: &Worker) -> usize {
        match self.pick {
            Pick::Random => self.targets[w.rand_below(self.targets.len())],
            Pick::RoundRobin => {
                let u = self.targets[self.next % self.targets.len()];
                self.next += 1;
                u
            }
        }
    }
}

/// Reused buffers for building one notification.
#[derive(Default)]
struct Parts {
    payload: Vec<u8>,
    channel: Vec<u8>,
    body: Vec<u8>,
}

/// Appends `count` notifications to `buf`, each to a user from `picker`, stamped `now`; returns
/// the expected deliveries they add. With `min_expected`, stops early once that many are added.
/// A recovering client expects every notification to its user, open or not.
fn fill(
    w: &Worker,
    picker: &mut Picker<'_>,
    count: u64,
    min_expected: Option<u64>,
    buf: &mut Vec<u8>,
    parts: &mut Parts,
    pad: &str,
) -> (u64, u64) {
    let now = now_us();
    let mut users = w.users.borrow_mut();
    let (mut sent, mut expected) = (0, 0);
    while sent < count && min_expected.is_none_or(|m| expected < m) {
        let u = picker.next(w);
        let user = &mut users[u];
        parts.payload.clear();
        message::write_payload(&mut parts.payload, user.next_seq, now, pad);
        user.next_seq += 1;
        match &w.plan.publish_api {
            None => {
                parts.channel.clear();
                w.write_channel(u, &mut parts.channel);
                resp::write_publish(buf, &parts.channel, &parts.payload);
            }
            Some(api) => {
                parts.body.clear();
                http::write_single_body(&mut parts.body, &w.user_name(u), &parts.payload);
                http::write_post(buf, api, &parts.body);
                w.inflight
                    .borrow_mut()
                    .push_back((u as u32, user.next_seq - 1, w.api_gen.get()));
            }
        }
        expected += if w.plan.recover {
            u64::from(w.plan.conns_per_user)
        } else {
            u64::from(user.open)
        };
        sent += 1;
    }
    (sent, expected)
}

/// Outcome of the publishing part of a phase.
#[derive(Debug, Default)]
pub struct Published {
    pub publish_end_us: u64,
    pub max_lag_us: u64,
    pub window_stalls: u64,
}

/// Publishes for `spec.duration_ms` to `targets`, then waits up to `spec.drain_ms` for stragglers.
pub async fn run(w: &Rc<Worker>, spec: &PhaseSpec, targets: &[usize]) -> io::Result<Published> {
    let mut out = Published::default();
    let duration = Duration::from_millis(spec.duration_ms);
    let start = Instant::now();
    let taken = w.redis.borrow_mut().take();
    if taken.is_none() && w.plan.publish_api.is_none() {
        return Err(io::Error::other("no Redis connection"));
    }
    let mut redis = taken;
    let mut last_try = Instant::now();
    let pad = "x".repeat(w.plan.payload_bytes);
    let mut picker = Picker {
        targets,
        pick: spec.pick,
        next: 0,
    };
    let (mut buf, mut parts) = (Vec::with_capacity(1 << 16), Parts::default());
    let result: io::Result<()> = async {
        if targets.is_empty() {
            sleep(duration).await;
            return Ok(());
        }
        if spec.rate > 0.0 {
            // Open loop: batches of up to 10 ms of traffic.
            let mut pacer = Pacer::new(spec.rate, (spec.rate / 100.0).max(64.0) as u64);
            let end_us = duration.as_micros() as u64;
            loop {
                let el = start.elapsed().as_micros() as u64;
                if el >= end_us {
                    break;
                }
                let n = pacer.due(el);
                if n > 0 && redis.is_none() && last_try.elapsed() >= RETRY {
                    last_try = Instant::now();
                    redis = reconnect_api(w).await;
                }
                if n > 0 && redis.is_none() {
                    // The publish API is down: these are not published at all.
                    pacer.issue(n);
                    w.publish_skipped.set(w.publish_skipped.get() + n);
                } else if n > 0 {
                    buf.clear();
                    let (sent, expected) =
                        fill(w, &mut picker, n, None, &mut buf, &mut parts, &pad);
                    {
                        let mut ph = w.phase.borrow_mut();
                        ph.expected += expected;
                        ph.publish_commands += sent;
                    }
                    write_batch(w, &mut redis, &buf).await?;
                    pacer.issue(n);
                    out.max_lag_us = out.max_lag_us.max(pacer.lag_us(el));
                }
                let next = pacer.next_due_us().min(end_us);
                sleep_until((start + Duration::from_micros(next)).into()).await;
            }
        } else {
            // Closed loop.
            let window = spec.window.max(1);
            w.window_low.set(window / 2);
            while start.elapsed() < duration {
                let (in_flight, delivered) = {
                    let ph = w.phase.borrow();
                    (ph.in_flight(), ph.delivered)
                };
                if redis.is_none() {
                    redis = reconnect_api(w).await;
                    if redis.is_none() {
                        sleep(RETRY).await;
                        continue;
                    }
                }
                if in_flight <= window / 2 {
                    buf.clear();
                    let room = window - in_flight;
                    let (sent, expected) =
                        fill(w, &mut picker, room, Some(room), &mut buf, &mut parts, &pad);
                    {
                        let mut ph = w.phase.borrow_mut();
                        ph.expected += expected;
                        ph.publish_commands += sent;
                    }
                    write_batch(w, &mut redis, &buf).await?;
                    continue;
                }
                w.publisher_waiting.set(true);
                let left = duration.saturating_sub(start.elapsed());
                let woke = timeout(STALL.min(left), w.wake_publisher.notified())
                    .await
                    .is_ok();
                w.publisher_waiting.set(false);
                let mut ph = w.phase.borrow_mut();
                if !woke && ph.delivered == delivered && start.elapsed() < duration {
                    ph.forgiven += ph.in_flight();
                    out.window_stalls += 1;
                }
            }
        }
        Ok(())
    }
    .await;
    *w.redis.borrow_mut() = redis;
    result?;
    out.publish_end_us = now_us();
    let drain_end = Instant::now() + Duration::from_millis(spec.drain_ms);
    while !w.phase.borrow().drained() && Instant::now() < drain_end {
        sleep(Duration::from_millis(5)).await;
    }
    Ok(out)
}

/// Publishes one probe notification to each of `users` (outside any phase).
pub async fn probe(w: &Rc<Worker>, users: &[usize]) -> io::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let taken = w.redis.borrow_mut().take();
    let Some(redis) = taken else {
        return Ok(());
    }; // a phase is publishing
    let mut picker = Picker {
        targets: users,
        pick: Pick::RoundRobin,
        next: 0,
    };
    let (mut buf, mut parts) = (Vec::new(), Parts::default());
    let n = users.len() as u64;
    fill(w, &mut picker, n, None, &mut buf, &mut parts, "");
    let now = now_us();
    for &u in users {
        w.users.borrow_mut()[u].last_probe_us = now;
    }
    w.storm.borrow_mut().probes += n;
    let mut conn = Some(redis);
    let res = write_batch(w, &mut conn, &buf).await;
    *w.redis.borrow_mut() = conn;
    res
}
