//! A worker's state, shared by all its tasks on its one thread (`Rc`/`RefCell`, no locks): the
//! users it owns, its connection slots with their delivery trackers, and the counters of the
//! current phase, ramp and storm. The hot path is [`Worker::on_stamp`], called once per delivered
//! notification.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
};

use tokio::{
    net::{TcpStream, tcp::OwnedWriteHalf},
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
    },
    token::Signer,
    wire::message::Stamp,
};

/// Size of the read buffer shared by all connections of the worker.
const SCRATCH_BYTES: usize = 256 * 1024;

/// A user this worker owns.
#[derive(Debug)]
pub struct User {
    /// Redis channel, `notifications:u17`.
    pub channel: Vec<u8>,
    /// Its token.
    pub token: String,
    /// Next sequence number to publish; every number below it has been published.
    pub next_seq: u64,
    /// Its connections open now.
    pub open: u32,
    /// Last probe sent to it (reconnect storm), unix µs.
    pub last_probe_us: u64,
}

/// A connection slot.
#[derive(Debug, Default)]
pub struct Conn {
    /// Index into [`Worker::users`].
    pub user: usize,
    /// The socket while open; shared with the connection's task so pings can be written to it.
    pub stream: Option<Rc<TcpStream>>,
    /// Delivery accounting of the current phase.
    pub tracker: Tracker,
    /// Whether a notification arrived since the flag was last cleared (probe and storm checks).
    pub got_stamp: bool,
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

/// Everything one worker process shares between its tasks.
pub struct Worker {
    pub plan: WorkerPlan,
    pub signer: Signer,
    pub users: RefCell<Vec<User>>,
    pub conns: RefCell<Vec<Conn>>,
    pub phase: RefCell<PhaseState>,
    pub ramp: RefCell<RampState>,
    pub storm: RefCell<StormState>,
    /// Read buffer shared by every connection (never held across an await).
    pub scratch: RefCell<Vec<u8>>,
    pub rng: RefCell<Rng>,
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
    /// Redis error replies.
    pub redis_errors: Cell<u64>,
    /// Connections open now (ramp, churn, reconnects).
    pub open: Cell<u64>,
    /// Failed attempts (ramp, churn, reconnects).
    pub failed: Cell<u64>,
    /// Pongs received since the last ping round.
    pub pongs: Cell<u64>,
    /// Churning connections opened.
    pub churned: Cell<u64>,
    /// Set at shutdown so reconnect loops stop.
    pub stopping: Cell<bool>,
}

impl Worker {
    /// Builds the state for `plan`: users with their tokens, one slot per connection.
    #[must_use]
    pub fn new(plan: WorkerPlan) -> Rc<Self> {
        let signer = Signer::new(&plan.jwt_secret);
        let users: Vec<User> = plan
            .users
            .iter()
            .map(|&u| {
                let name = format!("{}{u}", plan.user_prefix);
                User {
                    channel: format!("notifications:{name}").into_bytes(),
                    token: signer.token(&name),
                    next_seq: 0,
                    open: 0,
                    last_probe_us: 0,
                }
            })
            .collect();
        let conns = (0..users.len())
            .flat_map(|u| {
                (0..plan.conns_per_user).map(move |_| Conn {
                    user: u,
                    ..Conn::default()
                })
            })
            .collect();
        let interval_us = plan.interval_ms * 1000;
        Rc::new(Self {
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
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            wake_publisher: Notify::new(),
            publisher_waiting: Cell::new(false),
            window_low: Cell::new(0),
            ramp_done: Notify::new(),
            wake_prober: Notify::new(),
            probe_queue: RefCell::new(Vec::new()),
            redis: RefCell::new(None),
            redis_errors: Cell::new(0),
            open: Cell::new(0),
            failed: Cell::new(0),
            pongs: Cell::new(0),
            churned: Cell::new(0),
            stopping: Cell::new(false),
            plan,
        })
    }

    /// A delivered notification on connection `id`, received at `now_us`.
    pub fn on_stamp(&self, id: usize, stamp: Stamp, now_us: u64) {
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
            return;
        }
        let published = self.users.borrow()[conn.user].next_seq;
        if let Outcome::Delivered { .. } = conn.tracker.on_seq(stamp.seq, published) {
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

    /// Connection `id` is open on `stream`.
    pub fn attach(&self, id: usize, stream: Rc<TcpStream>) {
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        let mut users = self.users.borrow_mut();
        let user = &mut users[conn.user];
        user.open += 1;
        conn.stream = Some(stream);
        // Accounting starts now if a phase is running (only reconnects attach mid-phase).
        conn.tracker = Tracker::new(user.next_seq);
        self.open.set(self.open.get() + 1);
    }

    /// Connection `id` ended with `err`.
    pub fn detach(&self, id: usize, err: &ConnError) {
        let now = now_us();
        let mut conns = self.conns.borrow_mut();
        let conn = &mut conns[id];
        if conn.stream.take().is_none() {
            return;
        }
        self.open.set(self.open.get().saturating_sub(1));
        let mut users = self.users.borrow_mut();
        let user = &mut users[conn.user];
        user.open = user.open.saturating_sub(1);
        conn.tracker.end(user.next_seq);
        conn.got_stamp = false;
        conn.reconnected_us = 0;
        let mut ph = self.phase.borrow_mut();
        if ph.accounting {
            ph.dead_lost += conn.tracker.counts(user.next_seq).lost;
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
    }

    /// Starts accounting a phase at `start_us`; returns the users with an open connection.
    pub fn begin_phase(&self, start_us: u64) -> Vec<usize> {
        let users = self.users.borrow();
        for conn in self.conns.borrow_mut().iter_mut() {
            let next = users[conn.user].next_seq;
            conn.tracker = Tracker::new(next);
            if conn.stream.is_none() {
                conn.tracker.end(next);
            }
        }
        *self.phase.borrow_mut() = PhaseState::new(start_us, self.plan.interval_ms * 1000, true);
        users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.open > 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// Stops accounting and returns the phase's delivery counts.
    pub fn end_phase(&self) -> DeliveryCounts {
        self.phase.borrow_mut().accounting = false;
        let users = self.users.borrow();
        let mut total = DeliveryCounts::default();
        for conn in self.conns.borrow().iter() {
            total.add(&conn.tracker.counts(users[conn.user].next_seq));
        }
        total
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
