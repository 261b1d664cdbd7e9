//! A worker's state, shared by all its tasks on its one thread (`Rc`/`RefCell`, no locks): the
//! users it owns, its connection slots with their delivery trackers, and the counters of the
//! current phase, ramp and storm. The hot path is [`Worker::on_stamp`], called once per delivered
//! notification.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
};

use std::net::TcpStream;

use rustls::ClientConnection;
use tokio::{
    net::tcp::OwnedWriteHalf,
    sync::{Notify, Semaphore},
};

pub use crate::clock::now_us;
use crate::{
    proto::{Progress, WorkerPlan},
    rng::Rng,
    stats::{
        accounting::{DeliveryCounts, Outcome, Tracker},
        failure::{ConnError, Failures},
        hist::{self, Hist},
        recovery::{RecoveryCounts, Resume},
    },
    token::Signer,
    wire::{
        frame::Assembler,
        message::{Bcast, Stamp},
        recovery::Marks,
    },
};

use super::reactor::Reactor;

/// Size of the read buffer shared by all connections of the worker.
const SCRATCH_BYTES: usize = 256 * 1024;

/// A user this worker owns. Its name, token and channel are derived when needed instead of being
/// stored: at a million connections every byte per user counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct User {
    /// Next sequence number to publish; every number below it has been published.
    pub next_seq: u64,
    /// Its connections open now.
    pub open: u32,
    /// Last probe sent to it (reconnect storm), unix µs.
    pub last_probe_us: u64,
}

/// Read state a connection needs only while a frame or a fragmented message spans reads.
#[derive(Debug, Default)]
pub struct ReadState {
    /// Bytes of an incomplete frame carried to the next read.
    pub pending: Vec<u8>,
    /// Fragmented-message reassembly.
    pub asm: Assembler,
}

/// A connection slot: one logical client, across its sessions. Kept small (about 170 bytes): an
/// open connection has no task, no buffer and no runtime registration of its own; its socket is
/// in the worker's epoll set ([`super::reactor`]).
#[derive(Debug, Default)]
pub struct Conn {
    /// Index into [`Worker::users`].
    pub user: u32,
    /// The socket while open (non-blocking, registered with the reactor).
    pub sock: Option<TcpStream>,
    /// TLS state for `wss://` (`None` for `ws://`).
    pub tls: Option<Box<ClientConnection>>,
    /// Partial frame or fragmented message; `None` almost always.
    pub rd: Option<Box<ReadState>>,
    /// Delivery accounting of the current phase.
    pub tracker: Tracker,
    /// Recovery bookkeeping (`--recover` runs only).
    pub resume: Option<Box<Resume>>,
    /// Whether a notification arrived since the flag was last cleared (probe and storm checks).
    pub got_stamp: bool,
    /// Broadcast this connection is expected to receive (0 = none), and how often it arrived.
    pub bcast_id: u32,
    pub bcast_seen: u16,
    /// When the connection was re-established during a storm, unix µs (0 = not reconnected).
    pub reconnected_us: u64,
}

/// Counters of the current publishing phase.
#[derive(Debug)]
pub struct PhaseState {
    /// Whether deliveries are being accounted.
    pub accounting: bool,
    /// Phase start (shared by all workers), unix µs; timeline buckets count from here.
    pub start_us: u64,
    /// Timeline bucket width, µs.
    pub interval_us: u64,
    /// Latency of every delivery.
    pub latency: Hist,
    /// Latency per timeline bucket.
    pub timeline: Vec<Hist>,
    /// Distinct expected deliveries so far.
    pub delivered: u64,
    /// Expected deliveries issued by the publisher (each PUBLISH adds the user's open
    /// connections).
    pub expected: u64,
    /// Expected deliveries written off because their connection died.
    pub dead_lost: u64,
    /// Closed loop: in-flight deliveries written off after a stall.
    pub forgiven: u64,
    pub first_delivery_us: u64,
    pub last_delivery_us: u64,
    /// Connections that died in the phase, by cause.
    pub dropped: Failures,
    /// PUBLISH commands written.
    pub publish_commands: u64,
}

impl PhaseState {
    fn new(start_us: u64, interval_us: u64, accounting: bool) -> Self {
        Self {
            accounting,
            start_us,
            interval_us,
            latency: hist::new_hist(3),
            timeline: Vec::new(),
            delivered: 0,
            expected: 0,
            dead_lost: 0,
            forgiven: 0,
            first_delivery_us: 0,
            last_delivery_us: 0,
            dropped: Failures::new(),
            publish_commands: 0,
        }
    }

    /// Expected deliveries neither delivered nor written off.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.expected
            .saturating_sub(self.delivered + self.dead_lost + self.forgiven)
    }

    /// Whether everything published has arrived or is known lost.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.delivered + self.dead_lost >= self.expected
    }
}

/// Counters of the initial ramp.
#[derive(Debug)]
pub struct RampState {
    pub attempted: u64,
    pub done: u64,
    pub established: u64,
    pub failures: Failures,
    pub handshake: Hist,
    pub first_attempt_us: u64,
    pub last_done_us: u64,
}

/// Counters of a reconnect storm.
#[derive(Debug)]
pub struct StormState {
    /// Timing since [`crate::proto::Command::StormStart`].
    pub active: bool,
    pub open_at_start: u64,
    pub dropped: u64,
    pub reconnected: u64,
    pub receiving: u64,
    pub first_drop_us: u64,
    pub last_drop_us: u64,
    pub first_reconnect_us: u64,
    pub last_reconnect_us: u64,
    pub last_receiving_us: u64,
    pub retry_failures: Failures,
    pub handshake: Hist,
    pub probes: u64,
}

impl StormState {
    fn new() -> Self {
        Self {
            active: false,
            open_at_start: 0,
            dropped: 0,
            reconnected: 0,
            receiving: 0,
            first_drop_us: 0,
            last_drop_us: 0,
            first_reconnect_us: 0,
            last_reconnect_us: 0,
            last_receiving_us: 0,
            retry_failures: Failures::new(),
            handshake: hist::new_hist(3),
            probes: 0,
        }
    }
}

/// Counters of the current broadcast (a notification to many users through the publish API).
#[derive(Debug)]
pub struct BcastState {
    /// Broadcast id being collected (0 = none).
    pub id: u32,
    /// Connections expected to receive it.
    pub expected: u64,
    /// Distinct connections that received it.
    pub delivered: u64,
    /// Repeated arrivals.
    pub duplicates: u64,
    /// Arrivals on connections that were not expected to get it.
    pub unexpected: u64,
    /// Send time to arrival, per delivery.
    pub latency: Hist,
    pub last_delivery_us: u64,
}

/// Everything one worker process shares between its tasks.
pub struct Worker {
    pub plan: WorkerPlan,
    pub signer: Signer,
    pub users: RefCell<Vec<User>>,
    pub conns: RefCell<Vec<Conn>>,
    pub phase: RefCell<PhaseState>,
    pub ramp: RefCell<RampState>,
    pub storm: RefCell<StormState>,
    pub bcast: RefCell<BcastState>,
    /// Read buffers shared by every connection (never held across an await): socket bytes, and
    /// decrypted bytes for `wss://`.
    pub scratch: RefCell<Vec<u8>>,
    pub plain: RefCell<Vec<u8>>,
    pub rng: RefCell<Rng>,
    /// The epoll set holding every open connection.
    pub reactor: Reactor,
    /// `wss://`: the client TLS configuration (shared session ticket pool) and the server name.
    pub tls: Option<super::tls::Client>,
    /// Interned epochs seen from the gateway (recovery); index 0 is "none".
    pub epochs: RefCell<Vec<Box<[u8]>>>,
    /// Bounds handshakes in flight (ramp and reconnects).
    pub connect_slots: Arc<Semaphore>,
    /// Wakes the closed-loop publisher when the window has room.
    pub wake_publisher: Notify,
    /// Set while the closed-loop publisher waits for room.
    pub publisher_waiting: Cell<bool>,
    /// Closed loop: in-flight level at which to wake the publisher.
    pub window_low: Cell<u64>,
    /// Wakes the ramp when the last attempt finished.
    pub ramp_done: Notify,
    /// Wakes the storm prober.
    pub wake_prober: Notify,
    /// Users to probe now (reconnect storm).
    pub probe_queue: RefCell<Vec<usize>>,
    /// The Redis connection's write side, taken by whoever publishes.
    pub redis: RefCell<Option<OwnedWriteHalf>>,
    /// Redis (or publish API) error replies.
    pub redis_errors: Cell<u64>,
    /// Publish API: requests written and not answered yet, oldest first, as (user, seq,
    /// connection generation); a failed or unanswered one is voided.
    pub inflight: RefCell<std::collections::VecDeque<(u32, u64, u32)>>,
    /// Publish API: connection generation (bumped at each reconnect).
    pub api_gen: Cell<u32>,
    /// Publish API: notifications not sent because the API was unreachable.
    pub publish_skipped: Cell<u64>,
    /// Connections open now (ramp, churn, reconnects).
    pub open: Cell<u64>,
    /// Failed attempts (ramp, churn, reconnects).
    pub failed: Cell<u64>,
    /// Pongs received since the last ping round, and in total.
    pub pongs: Cell<u64>,
    pub pongs_total: Cell<u64>,
    /// Keep-alive pings sent in total.
    pub pings_sent: Cell<u64>,
    /// Churning connections opened.
    pub churned: Cell<u64>,
    /// TLS handshakes that resumed a session (`wss://`).
    pub tls_resumed: Cell<u64>,
    /// Generation of the keep-alive task; a new `KeepAlive` command retires the old task.
    pub keepalive_gen: Cell<u64>,
    /// Set at shutdown so reconnect loops stop.
    pub stopping: Cell<bool>,
}

impl Worker {
    /// Builds the state for `plan`: users, one slot per connection, the reactor. Must run inside
    /// the worker's runtime.
    pub fn new(plan: WorkerPlan) -> std::io::Result<Rc<Self>> {
        let signer = Signer::new(&plan.jwt_secret);
        let users = vec![User::default(); plan.users.len()];
        let recover = plan.recover;
        let mut conns = Vec::with_capacity(users.len() * plan.conns_per_user as usize);
        for u in 0..users.len() {
            for _ in 0..plan.conns_per_user {
                conns.push(Conn {
                    user: u as u32,
                    resume: recover.then(Box::default),
                    ..Conn::default()
                });
            }
        }
        let tls = match &plan.tls {
            Some(t) => {
                Some(super::tls::Client::new(t, conns.len()).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let interval_us = plan.interval_ms * 1000;
        Ok(Rc::new(Self {
            rng: RefCell::new(Rng::new(
                plan.seed ^ u64::from(plan.worker).wrapping_mul(0x9E37),
            )),
            connect_slots: Arc::new(Semaphore::new(plan.connect_concurrency.max(1) as usize)),
            signer,
            users: RefCell::new(users),
            conns: RefCell::new(conns),
            phase: RefCell::new(PhaseState::new(0, interval_us, false)),
            ramp: RefCell::new(RampState {
                attempted: 0,
                done: 0,
                established: 0,
                failures: Failures::new(),
                handshake: hist::new_hist(3),
                first_attempt_us: 0,
                last_done_us: 0,
            }),
            storm: RefCell::new(StormState::new()),
            bcast: RefCell::new(BcastState {
                id: 0,
                expected: 0,
                delivered: 0,
                duplicates: 0,
                unexpected: 0,
                latency: hist::new_hist(3),
                last_delivery_us: 0,
            }),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            plain: RefCell::new(if tls.is_some() {
                vec![0; SCRATCH_BYTES]
            } else {
                Vec::new()
            }),
            reactor: Reactor::new()?,
            tls,
            epochs: RefCell::new(vec![Box::default()]),
            wake_publisher: Notify::new(),
            publisher_waiting: Cell::new(false),
            window_low: Cell::new(0),
            ramp_done: Notify::new(),
            wake_prober: Notify::new(),
            probe_queue: RefCell::new(Vec::new()),
            redis: RefCell::new(None),
            redis_errors: Cell::new(0),
            inflight: RefCell::default(),
            api_gen: Cell::new(0),
            publish_skipped: Cell::new(0),
            open: Cell::new(0),
            failed: Cell::new(0),
            pongs: Cell::new(0),
            pongs_total: Cell::new(0),
            pings_sent: Cell::new(0),
            churned: Cell::new(0),
            tls_resumed: Cell::new(0),
            keepalive_gen: Cell::new(0),
            stopping: Cell::new(false),
            plan,
        }))
    }

    /// User id of local user `u` (`u17`).
    #[must_use]
    pub fn user_name(&self, u: usize) -> String {
        format!("{}{}", self.plan.user_prefix, self.plan.users[u])
    }

    /// Appends the Redis channel of local user `u` (`notifications:u17`) to `out`.
    pub fn write_channel(&self, u: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "notifications:{}{}",
            self.plan.user_prefix, self.plan.users[u]
        );
    }

    /// The token of local user `u` (signed when needed: ~3 µs, cheaper than keeping ~200 bytes
    /// per user).
    #[must_use]
    pub fn token(&self, u: usize) -> String {
        self.signer.token(&self.user_name(u))
    }

    /// Interns an epoch string; returns its id (never 0).
    pub fn intern_epoch(&self, e: &[u8]) -> u32 {
        let mut t = self.epochs.borrow_mut();
        if let Some(i) = t.iter().rposition(|x| &x[..] == e)
            && i > 0
        {
            return i as u32;
        }
        t.push(e.into());
        (t.len() - 1) as u32
    }

    /// A delivered notification on connection `id`, received at `now_us`; `marks` are its
    /// recovery fields (recovery runs only).
    pub fn on_stamp(&self, id: usize, stamp: Stamp, now_us: u64, marks: Option<Marks<'_>>) {
        let epoch = marks
            .and_then(|m| m.epoch)
            .map_or(0, |e| self.intern_epoch(e));
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        if !conn.got_stamp {
            conn.got_stamp = true;
            if conn.reconnected_us != 0 {
                let mut storm = self.storm.borrow_mut();
                if storm.active {
                    storm.receiving += 1;
                    storm.last_receiving_us = now_us;
                }
            }
        }
        let mut ph = self.phase.borrow_mut();
        if !ph.accounting {
            if let (Some(r), Some(m)) = (conn.resume.as_deref_mut(), marks) {
                r.on_notification(stamp.seq, m.offset, epoch, false);
            }
            return;
        }
        let published = self.users.borrow()[conn.user as usize].next_seq;
        let outcome = conn.tracker.on_seq(stamp.seq, published);
        let new = matches!(outcome, Outcome::Delivered { .. });
        if let (Some(r), Some(m)) = (conn.resume.as_deref_mut(), marks) {
            r.on_notification(stamp.seq, m.offset, epoch, new);
        }
        if new {
            ph.delivered += 1;
            let lat = now_us.saturating_sub(stamp.sent_us);
            hist::record(&mut ph.latency, lat);
            let bucket = (now_us.saturating_sub(ph.start_us) / ph.interval_us) as usize;
            if bucket >= ph.timeline.len() {
                ph.timeline.resize_with(bucket + 1, || hist::new_hist(2));
            }
            hist::record(&mut ph.timeline[bucket], lat);
            if ph.first_delivery_us == 0 {
                ph.first_delivery_us = now_us;
            }
            ph.last_delivery_us = now_us;
            if self.publisher_waiting.get() && ph.in_flight() <= self.window_low.get() {
                self.publisher_waiting.set(false);
                self.wake_publisher.notify_one();
            }
        }
    }

    /// A `connected` greeting on connection `id` with its recovery fields.
    pub fn on_connected(&self, id: usize, m: Marks<'_>) {
        let epoch = m.epoch.map_or(0, |e| self.intern_epoch(e));
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        let next = self.users.borrow()[conn.user as usize].next_seq;
        if let Some(r) = conn.resume.as_deref_mut() {
            r.on_connected(m.offset, epoch, m.recovered, next);
        }
    }

    /// A broadcast notification on connection `id`.
    pub fn on_bcast(&self, id: usize, b: Bcast, now_us: u64) {
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        let mut st = self.bcast.borrow_mut();
        if st.id == 0 || u64::from(st.id) != b.id || conn.bcast_id != st.id {
            st.unexpected += 1;
            return;
        }
        conn.bcast_seen = conn.bcast_seen.saturating_add(1);
        if conn.bcast_seen > 1 {
            st.duplicates += 1;
            return;
        }
        st.delivered += 1;
        hist::record(&mut st.latency, now_us.saturating_sub(b.sent_us));
        st.last_delivery_us = st.last_delivery_us.max(now_us);
    }

    /// Takes notification `seq` of local user `u` out of every expectation: its publish failed or
    /// its outcome is unknown.
    pub fn void(&self, u: usize, seq: u64) {
        let per = self.plan.conns_per_user as usize;
        let mut conns = self.conns.borrow_mut();
        for c in &mut conns[u * per..(u + 1) * per] {
            c.tracker.void(seq);
        }
        let mut ph = self.phase.borrow_mut();
        ph.expected = ph.expected.saturating_sub(per as u64);
    }

    /// Connection `id` is open on `sock` (already registered with the reactor by the caller);
    /// `asked` says whether its request asked for a replay.
    pub fn attach(
        &self,
        id: usize,
        sock: TcpStream,
        tls: Option<Box<ClientConnection>>,
        asked: bool,
    ) {
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        let mut users = self.users.borrow_mut();
        let user = &mut users[conn.user as usize];
        user.open += 1;
        conn.sock = Some(sock);
        conn.tls = tls;
        conn.rd = None;
        // Accounting starts now if a phase is running (only reconnects attach mid-phase); a
        // recovering client keeps its tracker: it is the same client, and the replay must fill
        // what it missed.
        match conn.resume.as_deref_mut() {
            Some(r) => r.on_session(asked),
            None => conn.tracker = Tracker::new(user.next_seq),
        }
        self.open.set(self.open.get() + 1);
    }

    /// Connection `id` ended with `err`; returns whether it was open (its socket is closed here).
    pub fn detach(&self, id: usize, err: &ConnError) -> bool {
        let now = now_us();
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        let Some(sock) = conn.sock.take() else {
            return false;
        };
        self.reactor.remove(&sock);
        drop(sock);
        conn.tls = None;
        conn.rd = None;
        self.open.set(self.open.get().saturating_sub(1));
        let mut users = self.users.borrow_mut();
        let user = &mut users[conn.user as usize];
        user.open = user.open.saturating_sub(1);
        conn.got_stamp = false;
        conn.reconnected_us = 0;
        let mut ph = self.phase.borrow_mut();
        if conn.resume.is_none() {
            conn.tracker.end(user.next_seq);
            if ph.accounting {
                ph.dead_lost += conn.tracker.counts(user.next_seq).lost;
            }
        }
        if ph.accounting {
            *ph.dropped.entry(err.kind()).or_default() += 1;
        }
        let mut storm = self.storm.borrow_mut();
        if storm.active {
            storm.dropped += 1;
            if storm.first_drop_us == 0 {
                storm.first_drop_us = now;
            }
            storm.last_drop_us = now;
        }
        true
    }

    /// Starts accounting a phase at `start_us`; returns the users with an open connection.
    pub fn begin_phase(&self, start_us: u64) -> Vec<usize> {
        let users = self.users.borrow();
        for conn in self.conns.borrow_mut().iter_mut() {
            let next = users[conn.user as usize].next_seq;
            conn.tracker = Tracker::new(next);
            if conn.sock.is_none() && conn.resume.is_none() {
                conn.tracker.end(next);
            }
        }
        *self.phase.borrow_mut() = PhaseState::new(start_us, self.plan.interval_ms * 1000, true);
        users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.open > 0 || self.plan.recover)
            .map(|(i, _)| i)
            .collect()
    }

    /// Stops accounting and returns the phase's delivery counts, and the recovery counts of a
    /// recovery run.
    pub fn end_phase(&self) -> (DeliveryCounts, Option<RecoveryCounts>) {
        self.phase.borrow_mut().accounting = false;
        let users = self.users.borrow();
        let mut total = DeliveryCounts::default();
        let mut rec = self.plan.recover.then(RecoveryCounts::default);
        for conn in self.conns.borrow_mut().iter_mut() {
            let published = users[conn.user as usize].next_seq;
            total.add(&conn.tracker.counts(published));
            if let (Some(r), Some(acc)) = (conn.resume.as_deref_mut(), rec.as_mut()) {
                r.finish(&conn.tracker, published);
                acc.add(&r.counts);
            }
        }
        (total, rec)
    }

    /// Current counters for the live display.
    #[must_use]
    pub fn progress(&self) -> Progress {
        let ph = self.phase.borrow();
        let bucket = (now_us().saturating_sub(ph.start_us) / ph.interval_us) as usize;
        let recent_p99_us = bucket
            .checked_sub(1)
            .and_then(|b| ph.timeline.get(b))
            .map_or(0, |h| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.99)
                }
            });
        let storm = self.storm.borrow();
        Progress {
            open: self.open.get(),
            failed: self.failed.get(),
            delivered: ph.delivered,
            published: ph.publish_commands,
            dropped: storm.dropped,
            reconnected: storm.reconnected,
            receiving: storm.receiving,
            churned: self.churned.get(),
            recent_p99_us,
            rss_kb: crate::stats::sysstats::self_rss_kb(),
            pings_sent: self.pings_sent.get(),
            pongs: self.pongs_total.get(),
            bcast_delivered: self.bcast.borrow().delivered,
        }
    }

    /// Uniform random index below `n`.
    pub fn rand_below(&self, n: usize) -> usize {
        self.rng.borrow_mut().below(n as u64) as usize
    }

    /// 128 random bits.
    pub fn rand_u128(&self) -> u128 {
        let mut r = self.rng.borrow_mut();
        (u128::from(r.next_u64()) << 64) | u128::from(r.next_u64())
    }
}
