//! Starting a gateway: bind every socket (so bind errors surface before anything runs), build
//! the queues between threads, and start the shard, dispatcher and control threads.

use std::{
    io,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::{
    config::{Config, IoDriver, RedisSubscription},
    control::{
        api_key::ApiKey,
        budget::Budget,
        routes::{PublishLimits, State},
        server,
    },
    fanout::{
        broker::Broker,
        dispatch::Dispatcher,
        local::LocalBroker,
        redis::{
            history::{self as redis_history, HistoryReader, Keys},
            publisher::Publisher,
            requests,
            subscriber::Subscriber,
            target::{Target, TargetError},
        },
    },
    metrics::Metrics,
    net::doorbell::Doorbell,
    proto::{
        frame,
        jwt::{AuthSetupError, Authenticator},
        upgrade::HandshakeConfig,
    },
    shard::{
        self, Driver, Limits, ShardSetup,
        handoff::Outlets,
        handshake_limit::HandshakeLimit,
        history::{self, store::StoreLimits},
        inbox::Inbox,
        shared::{Shared, Slots},
        subscription::Gate,
    },
    tls::{Acceptor, acceptor::Files},
};

/// Slots of each shard-to-shard hand-off ring (connections in transit; a full ring answers 503).
/// Memory: SHARDS x (SHARDS - 1) x 512 x 96 B, e.g. 2.7 MB at 8 shards, 48 MB at 32.
const HANDOFF_RING: usize = 512;
/// How long the dispatcher waits for room in a full shard ring before dropping.
const FULL_QUEUE_WAIT: Duration = Duration::from_millis(10);

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listening socket could not be created or bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The JWT settings are unusable.
    #[error("JWT configuration: {0}")]
    Auth(#[from] AuthSetupError),
    /// A JWT key file could not be read.
    #[error("cannot read {var} {path}: {source}")]
    KeyFile {
        /// Its variable (`JWT_PUBLIC_KEY_FILE`, `JWT_SECRET_FILE`).
        var: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The TLS certificate, key or ticket keys are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The Redis settings do not describe a reachable server.
    #[error("Redis configuration: {0}")]
    Redis(#[from] TargetError),
    /// io_uring was forced but is not available here.
    #[error(
        "IO_DRIVER=io-uring but io_uring is not available on this host (blocked by seccomp or an old kernel); use IO_DRIVER=auto or epoll"
    )]
    NoIoUring,
    /// A thread could not start, or a shard failed while starting.
    #[error("starting {what}: {message}")]
    Thread {
        /// Which thread.
        what: String,
        /// Why.
        message: String,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where WebSocket clients connect (wss:// when `tls` is set).
    pub ws_addr: SocketAddr,
    /// `WEBSOCKET_PLAIN_PORT`'s address, when it is served.
    pub plain_addr: Option<SocketAddr>,
    /// The TLS configuration in force, when `WEBSOCKET_PORT` serves wss://.
    pub tls: Option<Arc<Acceptor>>,
    /// Where the control plane listens.
    pub control_addr: SocketAddr,
    /// The I/O driver the shards run.
    pub driver: Driver,
    /// Number of shards.
    pub shards: usize,
    /// Connection cap in force.
    pub max_connections: usize,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Process-wide state shared with the shards.
    pub shared: Arc<Shared>,
    /// Shard threads.
    threads: Vec<thread::JoinHandle<()>>,
    /// Each shard's doorbell, rung to make it notice the drain (it then cancels its accept).
    doorbells: Vec<Arc<Doorbell>>,
}

impl Gateway {
    /// Starts the graceful drain: `/readyz` fails at once, the listeners stop accepting, and
    /// each shard closes its connections with 1001 spread over `DRAIN_SECONDS`, then stops.
    /// Idempotent.
    pub fn begin_drain(&self) {
        if self.shared.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(
            connections = self.shared.connections(),
            period_ms = self.shared.drain_period.as_millis() as u64,
            "draining: closing connections with 1001"
        );
        for bell in &self.doorbells {
            bell.ring();
        }
    }

    /// Test-only: holds (`true`) or releases (`false`) the notifications routed to shard `shard`
    /// in its delivery ring, so tests can fill a ring or build a backlog deterministically.
    /// Never reachable from the network.
    #[doc(hidden)]
    pub fn pause_deliveries(&self, shard: usize, paused: bool) {
        self.shared.deliveries_paused[shard].store(paused, Ordering::Release);
        self.doorbells[shard].ring();
    }

    /// Blocks until the shard threads exit (after a drain).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The I/O driver `cfg` asks for, resolved against this host.
pub fn resolve_driver(cfg: &Config) -> Result<Driver, StartError> {
    let uring = monoio::utils::detect_uring();
    match cfg.io_driver {
        IoDriver::Auto if uring => Ok(Driver::IoUring),
        IoDriver::Auto | IoDriver::Epoll => Ok(Driver::Epoll),
        IoDriver::IoUring if uring => Ok(Driver::IoUring),
        IoDriver::IoUring => Err(StartError::NoIoUring),
    }
}

/// Per-connection limits from `cfg`.
pub fn limits(cfg: &Config) -> Limits {
    Limits {
        frame: frame::Limits {
            max_message_bytes: cfg.max_message_bytes,
        },
        outbox_max_messages: cfg.outbox_max_messages,
        outbox_max_bytes: cfg.outbox_max_bytes,
        idle_timeout: cfg.idle_timeout,
        close_timeout: cfg.close_timeout,
        max_connections_per_user: cfg.max_connections_per_user,
        handshake_timeout: cfg.handshake_timeout,
        handshake: HandshakeConfig {
            path: cfg.ws_path.clone(),
            max_request_bytes: cfg.max_handshake_bytes,
        },
        max_payload_bytes: cfg.max_publish_bytes,
        token_expiry_close: cfg.token_expiry_close,
        jwt_leeway_secs: cfg.jwt_leeway.as_secs(),
    }
}

/// The connection cap: `MAX_CONNECTIONS`, never above what the open-files limit allows after the
/// reserve (descriptors the gateway needs for itself, its control port and handshakes).
pub fn max_connections(cfg: &Config, nofile: u64, shards: usize) -> usize {
    let overhead = cfg.fd_reserve + shards * 8;
    let by_fds = (nofile as usize).saturating_sub(overhead).max(1);
    if cfg.max_connections == 0 {
        by_fds
    } else {
        cfg.max_connections.min(by_fds)
    }
}

/// Binds, wires and starts everything. Returns once every shard is serving.
pub fn start(cfg: &Config, auth: Authenticator) -> Result<Gateway, StartError> {
    let driver = resolve_driver(cfg)?;
    let redis = Target::from_config(cfg)?;
    // rustls needs a process-wide crypto provider for rediss://; ring avoids a C++ toolchain.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shards = cfg.shard_count();
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let max_connections = max_connections(cfg, nofile, shards);

    let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            Acceptor::new(Files {
                cert: cert.clone(),
                key: key.clone(),
                tickets: cfg.tls_ticket_key_file.clone(),
            })
            .map_err(StartError::Tls)?,
        )),
        _ => None,
    };

    let ws_listeners = bind_shard_listeners(cfg, cfg.websocket_port, shards)?;
    let ws_addr = ws_listeners[0]
        .local_addr()
        .expect("bound socket has an address");
    let mut plain_listeners = match cfg.websocket_plain_port {
        Some(port) => bind_shard_listeners(cfg, port, shards)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..shards).map(|_| None).collect::<Vec<_>>(),
    };
    let plain_addr = plain_listeners[0]
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"));
    let control_addr = SocketAddr::new(cfg.metrics_bind_host, cfg.metrics_port);
    let control = bind(control_addr, false, 1024).map_err(|source| StartError::Bind {
        what: "control port (METRICS_PORT)",
        addr: control_addr,
        source,
    })?;
    let control_addr = control.local_addr().expect("bound socket has an address");

    let metrics = Metrics::new(shards, driver.as_str());
    let shared = Arc::new(Shared::new(
        super::keys::verifier(cfg, auth),
        Slots::new(max_connections, cfg.fd_reserve),
        HandshakeLimit::new(cfg.max_handshakes_per_ip),
        shards,
        metrics.clone(),
        cfg.drain_period,
    ));
    let doorbells: Vec<Arc<Doorbell>> = (0..shards).map(|_| Arc::default()).collect();
    let mut shard_doorbells = doorbells.clone();

    // Delivery rings: dispatcher -> each shard.
    let (delivery_tx, delivery_rx): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| rtrb::RingBuffer::new(cfg.shard_queue_capacity))
        .unzip();
    // Hand-off rings: every shard -> every other shard. handoff_tx[from][to], handoff_rx[to].
    let mut handoff_tx: Vec<Vec<Option<rtrb::Producer<_>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut handoff_rx: Vec<Vec<rtrb::Consumer<_>>> = (0..shards).map(|_| Vec::new()).collect();
    for (from, row) in handoff_tx.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(HANDOFF_RING);
                *slot = Some(p);
                handoff_rx[to].push(c);
            }
        }
    }

    let cores = if cfg.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    // Per-user subscriptions: shards ask the subscriber for their users' channels and wait
    // for its answers before answering upgrades.
    let (mut gates, requests) = match (&redis, cfg.redis_subscription) {
        (Some(_), RedisSubscription::PerUser) => {
            let (sides, subscriber) = requests::channels(shards);
            // The drain must wake the answer tasks too (they refuse the waiting upgrades).
            shard_doorbells.extend(subscriber.doorbells.iter().cloned());
            let gates = sides
                .into_iter()
                .enumerate()
                .map(|(id, side)| Some(Gate::new(id, side, cfg.subscribe_wait)))
                .collect();
            (gates, Some(subscriber))
        }
        _ => ((0..shards).map(|_| None).collect::<Vec<_>>(), None),
    };
    // History: single node in each shard's memory; with Redis, read by the history thread.
    let keys = Keys {
        prefix: cfg.history_key_prefix.clone(),
        size: cfg.history_size,
        ttl: cfg.history_ttl,
        max_replay_bytes: cfg.outbox_max_bytes,
    };
    // True while the Redis subscription is in force: `/readyz`, and history reads (a history
    // read before it would miss the live notifications that follow it).
    let subscribed = Arc::new(AtomicBool::new(false));
    let (mut histories, history_reader) = match (&redis, cfg.history_enabled) {
        (_, false) => ((0..shards).map(|_| None).collect::<Vec<_>>(), None),
        (None, true) => {
            let limits = StoreLimits {
                size: cfg.history_size,
                user_bytes: cfg.outbox_max_bytes,
                budget: cfg.history_max_bytes / shards,
                ttl_ms: cfg.history_ttl.as_millis() as u64,
            };
            let setups = (0..shards)
                .map(|_| Some(history_setup(cfg, history::Backend::Local(limits))))
                .collect();
            (setups, None)
        }
        (Some(target), true) => {
            let (sides, reader) = redis_history::channels(shards, redis_history::READS_PER_SHARD);
            let setups = sides
                .into_iter()
                .map(|side| {
                    let backend = history::Backend::Redis(side, subscribed.clone());
                    Some(history_setup(cfg, backend))
                })
                .collect();
            let reader = HistoryReader::new(
                target.clone(),
                keys.clone(),
                cfg.history_read_timeout,
                reader,
            );
            (setups, Some(reader))
        }
    };
    if let Some(reader) = history_reader {
        reader.spawn().map_err(|e| StartError::Thread {
            what: "Redis history reader".into(),
            message: e.to_string(),
        })?;
    }
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let mut threads = Vec::with_capacity(shards);
    let shard_parts = ws_listeners
        .into_iter()
        .zip(delivery_rx)
        .zip(handoff_rx)
        .zip(handoff_tx);
    for (id, (((listener, deliveries), handoffs), outlets)) in shard_parts.enumerate() {
        let setup = ShardSetup {
            id,
            core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
            driver,
            listener,
            tls: tls.clone(),
            plain_listener: plain_listeners[id].take(),
            limits: limits(cfg),
            shared: shared.clone(),
            inbox: Inbox {
                deliveries,
                handoffs,
                doorbell: doorbells[id].clone(),
            },
            outlets: Outlets::new(outlets, doorbells.clone()),
            subscription: gates[id].take(),
            history: histories[id].take(),
            ready: ready_tx.clone(),
        };
        let ready = ready_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Err(err) = shard::run(setup) {
                    let _ = ready.send(Err(err.to_string()));
                    tracing::error!(shard = id, error = %err, "shard stopped");
                }
            })
            .map_err(|e| StartError::Thread {
                what: format!("shard {id}"),
                message: e.to_string(),
            })?;
        threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => {
                return Err(StartError::Thread {
                    what: "a shard".into(),
                    message,
                });
            }
            Err(_) => {
                return Err(StartError::Thread {
                    what: "a shard".into(),
                    message: "exited during start-up".into(),
                });
            }
        }
    }

    let dispatcher = Dispatcher::new(
        delivery_tx,
        doorbells,
        FULL_QUEUE_WAIT,
        metrics.global().clone(),
    );
    let broker = match redis {
        None => Broker::Local {
            broker: LocalBroker::start(dispatcher).map_err(|e| StartError::Thread {
                what: "dispatcher".into(),
                message: e.to_string(),
            })?,
            timeout: cfg.publish_timeout,
            history: cfg.history_enabled,
        },
        Some(target) => {
            Subscriber {
                target: target.clone(),
                prefix: cfg.redis_channel_prefix.clone(),
                mode: cfg.redis_subscription,
                dispatcher,
                requests,
                grace: cfg.redis_unsubscribe_grace,
                liveness: cfg.redis_liveness_timeout,
                max_payload_bytes: cfg.max_publish_bytes,
                stats: metrics.global().clone(),
                ready: subscribed.clone(),
            }
            .spawn()
            .map_err(|e| StartError::Thread {
                what: "Redis subscriber".into(),
                message: e.to_string(),
            })?;
            Broker::Redis {
                publisher: Arc::new(Publisher::new(
                    target,
                    cfg.redis_channel_prefix.clone(),
                    cfg.publish_timeout,
                    cfg.history_enabled.then_some(keys),
                )),
                subscribed,
            }
        }
    };
    server::spawn(
        control,
        State {
            metrics: metrics.clone(),
            broker,
            api_key: cfg.publish_api_key.as_deref().map(ApiKey::new),
            limits: PublishLimits {
                max_body: cfg.max_publish_bytes,
                max_users: cfg.publish_max_users,
                max_fanout: cfg.publish_max_fanout_bytes,
            },
            in_flight: Budget::new(cfg.publish_max_inflight_bytes, metrics.global().clone()),
            read_timeout: cfg.control_read_timeout,
            draining: shared.draining.clone(),
        },
        cfg.control_max_connections,
    )
    .map_err(|e| StartError::Thread {
        what: "control plane".into(),
        message: e.to_string(),
    })?;
    Ok(Gateway {
        ws_addr,
        plain_addr,
        tls,
        control_addr,
        driver,
        shards,
        max_connections,
        metrics,
        shared,
        threads,
        doorbells: shard_doorbells,
    })
}

/// A shard's history setup with `backend`.
fn history_setup(cfg: &Config, backend: history::Backend) -> history::Setup {
    history::Setup {
        backend,
        live_buffer: cfg.history_live_buffer,
        read_timeout: cfg.history_read_timeout,
    }
}

/// One listener per shard on the same address with `SO_REUSEPORT`, so the kernel spreads
/// connections across shards. With port 0 the first bind picks the port and the others join it.
fn bind_shard_listeners(
    cfg: &Config,
    port: u16,
    shards: usize,
) -> Result<Vec<StdListener>, StartError> {
    let what = if port == cfg.websocket_port {
        "WebSocket port (WEBSOCKET_PORT)"
    } else {
        "plain WebSocket port (WEBSOCKET_PLAIN_PORT)"
    };
    let mut addr = SocketAddr::new(cfg.bind_host, port);
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let l = bind(addr, true, cfg.listen_backlog).map_err(|source| StartError::Bind {
            what,
            addr,
            source,
        })?;
        addr = l.local_addr().expect("bound socket has an address");
        listeners.push(l);
    }
    Ok(listeners)
}

/// A non-blocking listening socket. The backlog is clamped by `net.core.somaxconn`.
fn bind(addr: SocketAddr, reuse_port: bool, backlog: u32) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}
