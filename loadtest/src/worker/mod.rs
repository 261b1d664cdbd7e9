//! A worker process: holds a share of the connections and publishes to its own users, driven by
//! the coordinator over stdin (commands) and stdout (events), one JSON object per line.
//!
//! It runs a single-threaded tokio runtime: every task shares the worker's state on one thread.
//! Open connections have no task of their own: they sit in one epoll set read by one task
//! ([`reactor`]), so one wake-up serves many connections and each costs only its slot.

mod churn;
mod conn;
mod publisher;
mod reactor;
mod state;
mod tls;

use std::{
    io::Write,
    rc::Rc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    task::spawn_local,
    time::sleep,
};

use self::state::{Worker, now_us};
use crate::{
    proto::{BcastResult, Command, ConnectResult, Event, PhaseResult, PhaseSpec, StormResult},
    stats::{
        hist,
        pacer::Pacer,
        sysstats::{proc_sample, self_cpu_ms},
    },
};

/// A worker that cannot go on.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("reading commands: {0}")]
    Pipe(#[from] std::io::Error),
    #[error("bad command line from the coordinator: {0}")]
    Command(#[from] serde_json::Error),
    #[error("the first command must be setup")]
    NoSetup,
}

/// Runs a worker until the coordinator says shutdown or goes away; `batch_us` is the pause before
/// each wait for events (0 = none).
pub fn main(batch_us: u64) -> Result<(), WorkerError> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all();
    if batch_us > 0 {
        // Batched wake-ups: pausing before each `epoll_wait` lets readiness pile up, so one
        // wake-up serves many sockets. Latency is unaffected: it is taken from the kernel's receive
        // timestamps, not from when the worker got round to reading.
        b.on_thread_park(move || std::thread::sleep(Duration::from_micros(batch_us)));
    }
    let rt = b.build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve())
}

/// Writes one event line to stdout.
fn emit(ev: &Event) {
    let mut line = serde_json::to_vec(ev).expect("events serialize");
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    // If the coordinator is gone there is nobody to tell; the next stdin read ends the worker.
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

async fn serve() -> Result<(), WorkerError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Some(first) = lines.next_line().await? else {
        return Ok(());
    };
    let Command::Setup(plan) = serde_json::from_str(&first)? else {
        return Err(WorkerError::NoSetup);
    };
    let w = match Worker::new(*plan) {
        Ok(w) => w,
        Err(e) => {
            emit(&Event::Fatal {
                error: format!("setting up: {e}"),
            });
            return Ok(());
        }
    };
    spawn_local(reactor::run(w.clone()));
    let publish_to = (w.plan.publish_api.as_ref().map(|a| a.addr))
        .filter(|_| w.plan.redis.is_some())
        .or(w.plan.redis);
    if let Some(addr) = publish_to
        && let Err(e) = publisher::connect(&w, addr).await
    {
        emit(&Event::Fatal {
            error: format!("connecting the publisher to {addr}: {e}"),
        });
        return Ok(());
    }
    if w.plan.reconnect.is_some() {
        spawn_local(prober(w.clone()));
    }
    spawn_local(progress(w.clone()));
    emit(&Event::Ready);
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Command>(&line)? {
            Command::Setup(_) => return Err(WorkerError::NoSetup),
            Command::Connect => {
                spawn_local(ramp(w.clone()));
            }
            Command::Phase(spec) => {
                spawn_local(phase(w.clone(), spec));
            }
            Command::Ping { timeout_ms } => {
                spawn_local(ping(w.clone(), timeout_ms));
            }
            Command::Probe { timeout_ms } => {
                spawn_local(probe_all(w.clone(), timeout_ms));
            }
            Command::KeepAlive { interval_ms } => {
                let gen_ = w.keepalive_gen.get() + 1;
                w.keepalive_gen.set(gen_);
                if interval_ms > 0 {
                    spawn_local(keepalive(w.clone(), interval_ms, gen_));
                }
            }
            Command::BcastExpect { id, users } => {
                let expected = bcast_expect(&w, id, &users);
                emit(&Event::BcastReady { expected });
            }
            Command::BcastCollect { timeout_ms } => {
                spawn_local(bcast_collect(w.clone(), timeout_ms));
            }
            Command::StormStart => {
                let mut s = w.storm.borrow_mut();
                s.active = true;
                s.open_at_start = w.open.get();
            }
            Command::StormEnd => {
                let mut s = w.storm.borrow_mut();
                s.active = false;
                emit(&Event::StormDone(Box::new(StormResult {
                    open_at_start: s.open_at_start,
                    dropped: s.dropped,
                    reconnected: s.reconnected,
                    receiving: s.receiving,
                    first_drop_us: s.first_drop_us,
                    last_drop_us: s.last_drop_us,
                    first_reconnect_us: s.first_reconnect_us,
                    last_reconnect_us: s.last_reconnect_us,
                    last_receiving_us: s.last_receiving_us,
                    retry_failures: s.retry_failures.clone(),
                    handshake: hist::encode(&s.handshake),
                    probes: s.probes,
                })));
            }
            Command::Shutdown => break,
        }
    }
    w.stopping.set(true);
    let me = proc_sample("self").unwrap_or_default();
    emit(&Event::Final {
        cpu_ms: me.cpu_ms,
        rss_kb: me.rss_kb,
        tls_resumed: w.tls_resumed.get(),
    });
    // Exiting closes every socket at once; no need to unwind thousands of tasks.
    std::process::exit(0);
}

/// Sends progress counters periodically.
async fn progress(w: Rc<Worker>) {
    let every = Duration::from_millis(w.plan.progress_ms.max(50));
    loop {
        sleep(every).await;
        emit(&Event::Progress(w.progress()));
    }
}

/// Opens the worker's connections at its share of the connect rate.
async fn ramp(w: Rc<Worker>) {
    let cpu0 = self_cpu_ms();
    let n = w.conns.borrow().len();
    {
        let mut r = w.ramp.borrow_mut();
        r.attempted = n as u64;
        r.first_attempt_us = now_us();
    }
    let mut pacer = Pacer::new(w.plan.connect_rate, 1);
    let start = Instant::now();
    for id in 0..n {
        loop {
            if pacer.due(start.elapsed().as_micros() as u64) > 0 {
                break;
            }
            sleep_until_us(start, pacer.next_due_us()).await;
        }
        pacer.issue(1);
        let Ok(slot) = w.connect_slots.clone().acquire_owned().await else {
            return;
        };
        spawn_local(conn::start(w.clone(), id, slot));
    }
    if n > 0 {
        loop {
            let notified = w.ramp_done.notified();
            {
                let r = w.ramp.borrow();
                if r.done >= r.attempted {
                    break;
                }
            }
            notified.await;
        }
    }
    let r = w.ramp.borrow();
    emit(&Event::Connected(ConnectResult {
        attempted: r.attempted,
        established: r.established,
        failures: r.failures.clone(),
        handshake: hist::encode(&r.handshake),
        first_attempt_us: r.first_attempt_us,
        last_done_us: r.last_done_us,
        cpu_ms: self_cpu_ms() - cpu0,
    }));
}

async fn sleep_until_us(start: Instant, us: u64) {
    tokio::time::sleep_until((start + Duration::from_micros(us)).into()).await;
}

/// Runs one publishing phase (with churn if asked) and reports it.
async fn phase(w: Rc<Worker>, spec: PhaseSpec) {
    let wait = spec.start_us.saturating_sub(now_us());
    sleep(Duration::from_micros(wait)).await;
    let cpu0 = self_cpu_ms();
    let targets = w.begin_phase(spec.start_us);
    let duration = Duration::from_millis(spec.duration_ms);
    let churn = spec
        .churn
        .map(|c| spawn_local(churn::run(w.clone(), c, duration)));
    let published = match publisher::run(&w, &spec, &targets).await {
        Ok(p) => p,
        Err(e) => {
            emit(&Event::Fatal {
                error: format!("publishing to Redis: {e}"),
            });
            return;
        }
    };
    let churn = match churn {
        Some(h) => h.await.ok(),
        None => None,
    };
    let (counts, recovery) = w.end_phase();
    let ph = w.phase.borrow();
    emit(&Event::PhaseDone(Box::new(PhaseResult {
        step: spec.step,
        counts,
        publish_commands: ph.publish_commands,
        redis_errors: w.redis_errors.get(),
        latency: hist::encode(&ph.latency),
        timeline: ph.timeline.iter().map(hist::encode).collect(),
        start_us: spec.start_us,
        publish_end_us: published.publish_end_us,
        first_delivery_us: ph.first_delivery_us,
        last_delivery_us: ph.last_delivery_us,
        max_lag_us: published.max_lag_us,
        window_stalls: published.window_stalls,
        dropped: ph.dropped.clone(),
        cpu_ms: self_cpu_ms() - cpu0,
        churn,
        recovery,
    })));
}

/// Pings every open connection and counts the pongs.
async fn ping(w: Rc<Worker>, timeout_ms: u64) {
    w.pongs.set(0);
    let mut sent = 0;
    for id in open_ids(&w) {
        if reactor::send(&w, id, crate::wire::frame::opcode::TEXT, reactor::PING) {
            sent += 1;
        }
    }
    let end = Instant::now() + Duration::from_millis(timeout_ms);
    while w.pongs.get() < sent && Instant::now() < end {
        sleep(Duration::from_millis(10)).await;
    }
    emit(&Event::Pinged {
        sent,
        pongs: w.pongs.get(),
    });
}

/// Publishes a probe to every user with an open connection, re-sending every 250 ms, until every
/// open connection has received one or `timeout_ms` passes.
async fn probe_all(w: Rc<Worker>, timeout_ms: u64) {
    for c in w.conns.borrow_mut().iter_mut() {
        c.got_stamp = false;
    }
    let end = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let (open, receiving, waiting) = {
            let conns = w.conns.borrow();
            let open = conns.iter().filter(|c| c.sock.is_some());
            let (mut o, mut r, mut users) = (0, 0, Vec::new());
            for c in open {
                o += 1;
                if c.got_stamp {
                    r += 1;
                } else {
                    users.push(c.user as usize);
                }
            }
            users.dedup();
            (o, r, users)
        };
        if waiting.is_empty() || Instant::now() >= end {
            emit(&Event::Probed { open, receiving });
            return;
        }
        if let Err(e) = publisher::probe(&w, &waiting).await {
            emit(&Event::Fatal {
                error: format!("publishing probes: {e}"),
            });
            return;
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// Reconnect storm: probes users whose connections came back but have not received anything yet,
/// at once after a reconnect and again every 250 ms.
async fn prober(w: Rc<Worker>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(100), w.wake_prober.notified()).await;
        let now = now_us();
        let mut users: Vec<usize> = std::mem::take(&mut *w.probe_queue.borrow_mut());
        {
            let conns = w.conns.borrow();
            let all = w.users.borrow();
            users.extend(
                conns
                    .iter()
                    .filter(|c| c.sock.is_some() && c.reconnected_us != 0 && !c.got_stamp)
                    .map(|c| c.user as usize)
                    .filter(|&u| now.saturating_sub(all[u].last_probe_us) >= 250_000),
            );
        }
        users.sort_unstable();
        users.dedup();
        if !users.is_empty() && !w.phase.borrow().accounting {
            let _ = publisher::probe(&w, &users).await;
        }
    }
}

/// Ids of the open connections.
fn open_ids(w: &Worker) -> Vec<usize> {
    w.conns
        .borrow()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.sock.is_some())
        .map(|(i, _)| i)
        .collect()
}

/// Keep-alive like the Python CLI: one application ping per open connection per `interval_ms`,
/// spread over the interval in 100 ms slices, until a newer `KeepAlive` command replaces it.
async fn keepalive(w: Rc<Worker>, interval_ms: u64, gen_: u64) {
    const SLICE_MS: u64 = 100;
    let slices = (interval_ms / SLICE_MS).max(1) as usize;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(SLICE_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if w.keepalive_gen.get() != gen_ || w.stopping.get() {
            return;
        }
        let n = w.conns.borrow().len();
        let per = n.div_ceil(slices);
        let end = (next + per).min(n);
        for id in next..end {
            let open = w.conns.borrow()[id].sock.is_some();
            if open && reactor::send(&w, id, crate::wire::frame::opcode::TEXT, reactor::PING) {
                w.pings_sent.set(w.pings_sent.get() + 1);
            }
        }
        next = if end >= n { 0 } else { end };
    }
}

/// Marks the connections of `users` (global indices) that belong to this worker as expecting
/// broadcast `id`; returns how many are open, i.e. expected to receive it.
fn bcast_expect(w: &Worker, id: u32, users: &[u32]) -> u64 {
    let local: std::collections::HashMap<u32, usize> = w
        .plan
        .users
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, i))
        .collect();
    let mut want = vec![false; w.plan.users.len()];
    for g in users {
        if let Some(&i) = local.get(g) {
            want[i] = true;
        }
    }
    let mut expected = 0;
    for c in w.conns.borrow_mut().iter_mut() {
        let on = want[c.user as usize] && c.sock.is_some();
        c.bcast_id = if on { id } else { 0 };
        c.bcast_seen = 0;
        expected += u64::from(on);
    }
    let mut b = w.bcast.borrow_mut();
    *b = state::BcastState {
        id,
        expected,
        delivered: 0,
        duplicates: 0,
        unexpected: 0,
        latency: hist::new_hist(3),
        last_delivery_us: 0,
    };
    expected
}

/// Waits for the current broadcast to reach every expected connection, then reports it.
async fn bcast_collect(w: Rc<Worker>, timeout_ms: u64) {
    let end = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let done = {
            let b = w.bcast.borrow();
            b.delivered >= b.expected
        };
        if done || Instant::now() >= end {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    // Late duplicates would show up within a few ms; the broadcast stays armed until the next.
    sleep(Duration::from_millis(50)).await;
    let b = w.bcast.borrow();
    emit(&Event::BcastDone(Box::new(BcastResult {
        expected: b.expected,
        delivered: b.delivered,
        duplicates: b.duplicates,
        unexpected: b.unexpected,
        latency: hist::encode(&b.latency),
        last_delivery_us: b.last_delivery_us,
    })));
}
