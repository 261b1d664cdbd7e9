//! A shard: one thread, one core, one monoio runtime, its own `SO_REUSEPORT` listener, and the
//! connections of the users that hash to it.
//!
//! Everything a shard owns stays on its thread (`Rc`, `RefCell`). Other threads reach it only
//! through its [`inbox`]: notifications from the dispatcher and connections handed over by other
//! shards, each over a lock-free single-producer queue, plus a waker to get its attention.

pub mod accept;
pub mod admission;
pub mod conn;
pub mod drain;
pub mod echo;
pub mod expiry;
pub mod handoff;
pub mod handshake_limit;
pub mod history;
pub mod inbox;
pub mod reader;
pub mod refusal;
pub mod registry;
pub mod session;
pub mod shared;
pub mod socket;
pub mod subscription;
pub mod sweep;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls_admission;
pub mod tls_reader;

use std::{
    cell::RefCell,
    io,
    net::TcpListener as StdListener,
    rc::Rc,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use self::{handoff::Outlets, inbox::Inbox, registry::Registry, shared::Shared, socket::ShardTls};
use crate::{
    metrics::ShardStats,
    net::turn::Turn,
    proto::{frame, upgrade::HandshakeConfig},
    tls::Acceptor,
};

/// Size of the shard's one read buffer, shared by all its connections (reads are synchronous
/// after readiness, so one buffer serves them all in turn).
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// Which I/O driver a shard runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring (Linux 5.6+ where not blocked by seccomp).
    IoUring,
    /// epoll, monoio's "legacy" driver.
    Epoll,
}

impl Driver {
    /// Label for logs and the build-info metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Per-connection limits and timeouts, copied onto each shard.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Client frame limits (message size cap).
    pub frame: frame::Limits,
    /// Queued frames per connection before it is closed as a slow consumer.
    pub outbox_max_messages: usize,
    /// Queued bytes per connection before it is closed as a slow consumer.
    pub outbox_max_bytes: usize,
    /// Silence before the server pings; twice this without a frame closes the connection.
    pub idle_timeout: Duration,
    /// How long a closing handshake may take before the socket is dropped.
    pub close_timeout: Duration,
    /// Connections one user may hold on this gateway; the oldest goes when exceeded.
    pub max_connections_per_user: usize,
    /// Time allowed from accept to a complete upgrade request.
    pub handshake_timeout: Duration,
    /// Upgrade request parsing rules.
    pub handshake: HandshakeConfig,
    /// Largest notification payload accepted from Redis (raw payloads are normalised here).
    pub max_payload_bytes: usize,
    /// Close connections whose token expired (`TOKEN_EXPIRY_CLOSE`).
    pub token_expiry_close: bool,
    /// `JWT_LEEWAY` in seconds, added to a token's `exp` before its connection is closed.
    pub jwt_leeway_secs: u64,
}

/// A shard's state, on its own thread.
pub struct Shard {
    /// Index of this shard (0-based), also its routing value.
    pub id: usize,
    /// Limits applied to every connection.
    pub limits: Limits,
    /// Counters this shard writes.
    pub stats: Arc<ShardStats>,
    /// The connections.
    pub registry: RefCell<Registry>,
    /// The one read buffer (see [`SCRATCH_BYTES`]).
    pub scratch: RefCell<Box<[u8]>>,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Queues to the other shards for hand-offs.
    pub outlets: RefCell<Outlets>,
    /// Per-user Redis subscriptions: upgrades wait for their channel (per-user mode only).
    pub subscription: Option<subscription::Gate>,
    /// Origin of [`Self::now_ms`].
    epoch: Instant,
    /// Set by the drain when the shard has nothing left to do; its thread then ends.
    pub finished: std::cell::Cell<bool>,
    /// Cancels the accept loop's pending accept when the drain starts (taken once).
    stop_accepting: RefCell<Option<monoio::io::Canceller>>,
    /// Where busy tasks wait for the driver's next turn (timers, I/O) after their budget.
    pub turn: Rc<Turn>,
    /// Token deadlines of the connections (only with `TOKEN_EXPIRY_CLOSE`; empty otherwise).
    pub expiries: RefCell<expiry::Expiries>,
    /// wss://: the TLS configuration and the buffers TLS connections borrow (`None` without
    /// TLS, so a plain gateway allocates nothing for it).
    pub tls: Option<ShardTls>,
    /// Notification history and recovery on reconnect (`HISTORY_ENABLED`).
    pub history: Option<history::History>,
}

impl Shard {
    /// A shard's state before it serves: empty registry, fresh scratch buffer. Must be called
    /// on the shard's monoio runtime (it starts the shard's [`Turn`] pump there).
    pub fn new(
        id: usize,
        limits: Limits,
        shared: Arc<Shared>,
        outlets: Outlets,
        subscription: Option<subscription::Gate>,
        history: Option<history::History>,
    ) -> io::Result<Self> {
        Ok(Self {
            id,
            limits,
            stats: shared.metrics.shard(id),
            registry: RefCell::new(Registry::default()),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            shared,
            outlets: RefCell::new(outlets),
            subscription,
            epoch: Instant::now(),
            finished: std::cell::Cell::new(false),
            stop_accepting: RefCell::new(None),
            turn: Turn::start()?,
            expiries: RefCell::default(),
            tls: None,
            history,
        })
    }

    /// Reports that a user's last connection on this gateway is gone (per-user mode, history).
    pub fn user_left(&self, user: &str) {
        if let Some(gate) = &self.subscription {
            gate.left(user);
        }
        history::left(self, user);
    }

    /// Monotonic milliseconds since the shard started.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the process is shutting down.
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Stops the accept loop: cancels its pending accept, after which it sees the drain flag and
    /// drops the listener. Idempotent.
    pub fn stop_accepting(&self) {
        if let Some(canceller) = self.stop_accepting.borrow_mut().take() {
            canceller.cancel();
        }
    }
}

/// Everything a shard thread is started with.
pub struct ShardSetup {
    /// Shard index.
    pub id: usize,
    /// Core to pin to, if pinning.
    pub core: Option<core_affinity::CoreId>,
    /// I/O driver to build.
    pub driver: Driver,
    /// Its bound, listening `SO_REUSEPORT` socket on `WEBSOCKET_PORT` (wss:// when `tls`).
    pub listener: StdListener,
    /// The TLS configuration when `WEBSOCKET_PORT` serves wss://.
    pub tls: Option<Arc<Acceptor>>,
    /// Its listener on `WEBSOCKET_PLAIN_PORT` (plain ws:// beside wss://), if configured.
    pub plain_listener: Option<StdListener>,
    /// Connection limits.
    pub limits: Limits,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Incoming queues.
    pub inbox: Inbox,
    /// Outgoing hand-off queues.
    pub outlets: Outlets,
    /// The per-user subscription gate (per-user Redis mode).
    pub subscription: Option<subscription::Gate>,
    /// The shard's history (`HISTORY_ENABLED`), built on the shard's thread.
    pub history: Option<history::Setup>,
    /// Told `Ok(id)` once the shard serves (or the error that stopped it).
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
}

/// Runs a shard on the current thread until shutdown.
pub fn run(setup: ShardSetup) -> io::Result<()> {
    if let Some(core) = setup.core {
        // Best effort: an unpinned shard still works, just with less cache locality.
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                shard = setup.id,
                core = core.id,
                "could not pin shard to core"
            );
        }
    }
    match setup.driver {
        Driver::IoUring => RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(8192)
            .enable_timer()
            .build()?
            .block_on(main(setup)),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(main(setup)),
    }
}

/// The shard's main future: starts its tasks and serves the inbox until shutdown.
async fn main(setup: ShardSetup) -> io::Result<()> {
    let listener = monoio::net::TcpListener::from_std(setup.listener)?;
    let plain_listener = match setup.plain_listener {
        Some(l) => Some(monoio::net::TcpListener::from_std(l)?),
        None => None,
    };
    let mut shard = Shard::new(
        setup.id,
        setup.limits,
        setup.shared,
        setup.outlets,
        setup.subscription,
        setup.history.map(|h| history::History::new(setup.id, h)),
    )?;
    let tls = setup.tls.is_some();
    shard.tls = setup.tls.map(ShardTls::new);
    let shard = Rc::new(shard);
    let _ = setup.ready.send(Ok(setup.id));
    let canceller = monoio::io::Canceller::new();
    let stop = canceller.handle();
    *shard.stop_accepting.borrow_mut() = Some(canceller);
    if let Some(plain) = plain_listener {
        monoio::spawn(accept::run(shard.clone(), plain, stop.clone(), false));
    }
    monoio::spawn(accept::run(shard.clone(), listener, stop, tls));
    monoio::spawn(sweep::run(shard.clone()));
    if shard.subscription.is_some() {
        monoio::spawn(subscription::run(shard.clone()));
    }
    if shard.history.is_some() {
        monoio::spawn(history::run(shard.clone()));
    }
    inbox::run(shard, setup.inbox).await;
    Ok(())
}
