//! Prometheus metrics: hot counters per shard, summed at scrape time.
//!
//! Each shard thread owns one [`ShardStats`] and is its only writer: plain atomics with
//! `Relaxed` ordering, cache-line aligned so two shards never share a line. Broker and
//! control-plane counters live in [`GlobalStats`]. Nothing on the hot path takes a lock or
//! allocates; a scrape ([`Metrics::render`]) reads every shard's atomics once and sums them in a
//! custom [`Collector`].
//!
//! Label values come from the small fixed enums below (`ALL` lists every value, `as_str` gives
//! the label), and every value is rendered even when its count is 0, so dashboards see a
//! complete label set from the first scrape. No label ever carries a user id.
//!
//! The output is the OpenMetrics text format (`prometheus_client::encoding::text`): counter
//! families are declared without `_total` and their samples carry it, and the body ends with
//! `# EOF`. Serve it with [`CONTENT_TYPE`]. Family names are a compatibility contract with an
//! existing deployment.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::proto::close::CloseCode;

/// `Content-Type` for the body [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label enum: its label key and every value (implemented by `label_enum!`).
pub trait Label: Copy + 'static {
    /// Label key, e.g. `error_type`.
    const KEY: &'static str;
    /// Every value, index = `value as usize`.
    const VALUES: &'static [Self];
    /// The label value as rendered.
    fn label(self) -> &'static str;
}

/// Defines a label enum with `N`, `ALL`, `as_str` and its [`Label`] impl.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident($key:literal) {
        $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Number of values (the length of per-value counter arrays).
            pub const N: usize = [$($label),+].len();
            /// Every value, in declaration order (index = `value as usize`).
            pub const ALL: [Self; Self::N] = [$(Self::$variant),+];

            /// The label value as rendered.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }

        impl Label for $name {
            const KEY: &'static str = $key;
            const VALUES: &'static [Self] = &Self::ALL;
            fn label(self) -> &'static str {
                self.as_str()
            }
        }
    };
}

label_enum! {
    /// Why a connection attempt or connection failed (`error_type` label).
    ErrorType("error_type") {
        /// No token in the upgrade request.
        MissingToken => "missing_token",
        /// Token verified but carries no usable user id (`user_id`/`sub` missing or invalid).
        InvalidToken => "invalid_token",
        /// Signature, algorithm or claim checks failed.
        JwtVerificationFailed => "jwt_verification_failed",
        /// Not a valid WebSocket upgrade request.
        BadRequest => "bad_request",
        /// Upgrade not completed within HANDSHAKE_TIMEOUT.
        HandshakeTimeout => "handshake_timeout",
        /// Refused with 503: MAX_CONNECTIONS reached, hand-off queue full, or draining.
        OverCapacity => "over_capacity",
        /// Protocol error on an established connection.
        WebsocketError => "websocket_error",
        /// Writing to the socket failed.
        SendFailed => "send_failed",
        /// A bug or unexpected condition in the gateway.
        InternalError => "internal_error",
    }
}

label_enum! {
    /// How an upgrade attempt ended (`outcome` label).
    HandshakeOutcome("outcome") {
        /// Upgraded and authenticated.
        Accepted => "accepted",
        /// Answered with an HTTP error (bad request, auth, capacity).
        Refused => "refused",
        /// HANDSHAKE_TIMEOUT expired.
        TimedOut => "timed_out",
        /// The socket failed mid-handshake.
        Failed => "failed",
    }
}

label_enum! {
    /// Why token authentication failed (`reason` label).
    AuthFailure("reason") {
        /// No token supplied.
        Missing => "missing",
        /// Not a well-formed JWT.
        Malformed => "malformed",
        /// Signature does not verify.
        BadSignature => "bad_signature",
        /// Header algorithm differs from JWT_ALGORITHM.
        WrongAlgorithm => "wrong_algorithm",
        /// `exp` in the past (beyond JWT_LEEWAY).
        Expired => "expired",
        /// `nbf` in the future (beyond JWT_LEEWAY).
        NotYetValid => "not_yet_valid",
        /// No user id claim.
        MissingUserId => "missing_user_id",
        /// User id claim present but unusable.
        InvalidUserId => "invalid_user_id",
    }
}

pub(crate) mod history;

pub use self::history::{Eviction, HistoryStats, Recovery};

impl Label for CloseCode {
    const KEY: &'static str = "code";
    const VALUES: &'static [Self] = &Self::ALL;
    fn label(self) -> &'static str {
        self.as_str()
    }
}

label_enum! {
    /// Why a notification was not delivered (`reason` label).
    DropReason("reason") {
        /// Not a valid notification (bad JSON, missing user id).
        InvalidPayload => "invalid_payload",
        /// A shard's inbound queue was full.
        QueueFull => "queue_full",
        /// The connection's outbox was over its limits; the connection is closed.
        SlowConsumer => "slow_consumer",
        /// No connection for that user on this gateway.
        NotLocal => "not_local",
        /// Arrived during shutdown, or queued on a connection the drain closed.
        ShuttingDown => "shutting_down",
        /// The recipient connection was closing or gone (client close, eviction, idle or token
        /// timeout, protocol error, dead peer) when it arrived or while it waited in the outbox.
        ConnectionClosing => "connection_closing",
    }
}

label_enum! {
    /// How a per-user-mode upgrade's wait for its channel subscription ended (`outcome` label).
    SubscribeWait("outcome") {
        /// The user already had a connection on this gateway: no wait.
        Covered => "covered",
        /// Redis confirmed the channel (or it was still subscribed in its grace period).
        Confirmed => "confirmed",
        /// Not confirmed within SUBSCRIBE_WAIT: refused with 503.
        TimedOut => "timed_out",
        /// Too many upgrades waiting on this shard, or the queue to the subscriber full: 503.
        Full => "full",
        /// The gateway started draining during the wait: 503.
        Draining => "draining",
    }
}

label_enum! {
    /// Why a TLS handshake on the wss:// port failed (`reason` label).
    TlsFailure("reason") {
        /// A plain HTTP request on the TLS port: answered with a plaintext 400.
        PlaintextHttp => "plaintext_http",
        /// Neither TLS nor HTTP: closed.
        NotTls => "not_tls",
        /// The client offered no version the gateway speaks (TLS 1.0/1.1, SSL).
        ProtocolVersion => "protocol_version",
        /// No cipher suite, group or signature scheme in common.
        Incompatible => "incompatible",
        /// The client offered ALPN protocols without http/1.1.
        Alpn => "alpn",
        /// The client sent an alert (for example it refused the certificate).
        PeerAlert => "peer_alert",
        /// Malformed or unexpected TLS messages.
        BadMessage => "bad_message",
        /// The client closed or reset the connection mid-handshake.
        Eof => "eof",
        /// HANDSHAKE_TIMEOUT expired during the TLS handshake.
        TimedOut => "timed_out",
        /// Anything else.
        Other => "other",
    }
}

label_enum! {
    /// The TLS version of a completed handshake (`version` label).
    TlsVersion("version") {
        /// TLS 1.2.
        Tls12 => "1.2",
        /// TLS 1.3.
        Tls13 => "1.3",
    }
}

label_enum! {
    /// accept(2) failures (`error` label).
    AcceptError("error") {
        /// Out of file descriptors (EMFILE/ENFILE); the accept loop backs off.
        Emfile => "emfile",
        /// Any other accept error.
        Other => "other",
    }
}

label_enum! {
    /// Redis failures (`error_type` label, the existing deployment's values).
    RedisError("error_type") {
        /// Connecting, subscribing or a dropped connection.
        Connection => "connection",
        /// A received message could not be processed.
        MessageProcessing => "message_processing",
    }
}

label_enum! {
    /// Why the internal port closed a connection itself (`reason` label).
    ControlDrop("reason") {
        /// No complete request headers, or no complete body, within CONTROL_READ_TIMEOUT.
        ReadTimeout => "read_timeout",
        /// Closed to make room for a new connection at CONTROL_MAX_CONNECTIONS.
        Evicted => "evicted",
        /// A new connection refused (503) because every open one was busy publishing.
        Refused => "refused",
    }
}

label_enum! {
    /// The status of a `POST /v1/publish` answer (`status` label).
    PublishStatus("status") {
        /// Published.
        Ok => "200",
        /// The body is malformed.
        BadRequest => "400",
        /// Missing or wrong API key.
        Unauthorized => "401",
        /// The body did not arrive within CONTROL_READ_TIMEOUT.
        Timeout => "408",
        /// Body, user ids or fan-out over their caps.
        TooLarge => "413",
        /// PUBLISH_MAX_INFLIGHT_BYTES in use by other requests.
        TooMany => "429",
        /// Redis refused some channels and published the others.
        Partial => "502",
        /// Not delivered (overloaded, or Redis unreachable or refusing): retry is safe.
        NotDelivered => "503",
        /// Redis did not answer in time: it may or may not have been published.
        Unknown => "504",
    }
}

/// Delivery latency histogram upper bounds, in microseconds (plus an implicit `+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Fixed-bucket latency histogram on atomics; one writer, read at scrape time.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`. The total count is their
    /// sum, so `_count` always equals the `+Inf` bucket. 14 x 8 B.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of all observations in microseconds, for `_sum`.
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; 14],
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one observation.
    #[inline]
    pub fn observe_us(&self, us: u64) {
        // First bound >= us (Prometheus `le` semantics); past the end is `+Inf`.
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Records `n` observations of the same value (one per connection a notification was
    /// written to at once), with the cost of one.
    #[inline]
    pub fn observe_n_us(&self, us: u64, n: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Sum of observations in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// Per-bucket (non-cumulative) counts, `+Inf` last.
    pub fn bucket_counts(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }
}

/// Counters one shard thread writes (its only writer). Aligned to 128 B (two cache lines, for
/// the adjacent-line prefetcher) so shards never share a line. Under 1 KiB per shard.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Open WebSocket connections on this shard.
    pub connections_active: AtomicI64,
    /// Notifications written whole to a client connection (one per connection).
    pub notifications_sent: AtomicU64,
    /// Connection errors by [`ErrorType`].
    pub connection_errors: [AtomicU64; ErrorType::N],
    /// Upgrade attempts by [`HandshakeOutcome`].
    pub handshakes: [AtomicU64; HandshakeOutcome::N],
    /// Authentication failures by [`AuthFailure`].
    pub auth_failures: [AtomicU64; AuthFailure::N],
    /// Close frames sent by [`CloseCode`].
    pub close_codes_sent: [AtomicU64; CloseCode::N],
    /// Notifications dropped on this shard by [`DropReason`].
    pub notifications_dropped: [AtomicU64; DropReason::N],
    /// Connections closed for exceeding their outbox limits.
    pub slow_consumers_closed: AtomicU64,
    /// Bytes queued in this shard's connection outboxes (memory the gateway holds for clients).
    pub outbox_bytes: AtomicI64,
    /// accept(2) failures by [`AcceptError`].
    pub accept_errors: [AtomicU64; AcceptError::N],
    /// Connections handed to this shard by another shard's acceptor.
    pub handoffs_in: AtomicU64,
    /// Time from a notification's arrival at the gateway to its complete write into a client
    /// socket, one observation per connection written to.
    pub delivery_latency: LatencyHistogram,
    /// Per-user mode: upgrades' waits for their channel by [`SubscribeWait`].
    pub subscribe_waits: [AtomicU64; SubscribeWait::N],
    /// Per-user mode: upgrades waiting for their channel now.
    pub subscribe_waiting: AtomicI64,
    /// wss:// handshakes that failed, by [`TlsFailure`].
    pub tls_failures: [AtomicU64; TlsFailure::N],
    /// wss:// handshakes completed, by [`TlsVersion`].
    pub tls_handshakes: [AtomicU64; TlsVersion::N],
    /// Of those, the ones resumed from a session ticket.
    pub tls_resumed: AtomicU64,
    /// History and recovery (issue 10).
    pub history: HistoryStats,
}

impl ShardStats {
    /// Counts a connection error.
    #[inline]
    pub fn inc_error(&self, e: ErrorType) {
        self.connection_errors[e as usize].fetch_add(1, Relaxed);
    }

    /// Counts an upgrade attempt's outcome.
    #[inline]
    pub fn inc_handshake(&self, o: HandshakeOutcome) {
        self.handshakes[o as usize].fetch_add(1, Relaxed);
    }

    /// Counts an authentication failure.
    #[inline]
    pub fn inc_auth_failure(&self, r: AuthFailure) {
        self.auth_failures[r as usize].fetch_add(1, Relaxed);
    }

    /// Counts a close frame sent.
    #[inline]
    pub fn inc_close(&self, c: CloseCode) {
        self.close_codes_sent[c as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` dropped notifications.
    #[inline]
    pub fn inc_drop(&self, r: DropReason, n: u64) {
        self.notifications_dropped[r as usize].fetch_add(n, Relaxed);
    }

    /// Counts an accept(2) failure.
    #[inline]
    pub fn inc_accept_error(&self, e: AcceptError) {
        self.accept_errors[e as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` notifications written to clients.
    #[inline]
    pub fn add_sent(&self, n: u64) {
        self.notifications_sent.fetch_add(n, Relaxed);
    }

    /// A connection was established on this shard.
    #[inline]
    pub fn connection_opened(&self) {
        self.connections_active.fetch_add(1, Relaxed);
    }

    /// A connection on this shard ended.
    #[inline]
    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    /// A slow consumer was closed.
    #[inline]
    pub fn inc_slow_consumer_closed(&self) {
        self.slow_consumers_closed.fetch_add(1, Relaxed);
    }

    /// Outbox bytes changed by `delta` (positive when queued, negative when written or freed).
    #[inline]
    pub fn add_outbox_bytes(&self, delta: i64) {
        self.outbox_bytes.fetch_add(delta, Relaxed);
    }

    /// Counts how a wait for a channel subscription ended.
    #[inline]
    pub fn inc_subscribe_wait(&self, w: SubscribeWait) {
        self.subscribe_waits[w as usize].fetch_add(1, Relaxed);
    }

    /// A connection arrived from another shard.
    #[inline]
    pub fn inc_handoff(&self) {
        self.handoffs_in.fetch_add(1, Relaxed);
    }

    /// Counts a failed TLS handshake.
    #[inline]
    pub fn inc_tls_failure(&self, r: TlsFailure) {
        self.tls_failures[r as usize].fetch_add(1, Relaxed);
    }

    /// Counts a completed TLS handshake.
    #[inline]
    pub fn inc_tls_handshake(&self, v: TlsVersion, resumed: bool) {
        self.tls_handshakes[v as usize].fetch_add(1, Relaxed);
        if resumed {
            self.tls_resumed.fetch_add(1, Relaxed);
        }
    }

    /// Adds this shard's values into `total` (scrape time only).
    fn add_into(&self, total: &ShardStats) {
        let u = |to: &AtomicU64, from: &AtomicU64| _ = to.fetch_add(from.load(Relaxed), Relaxed);
        let i = |to: &AtomicI64, from: &AtomicI64| _ = to.fetch_add(from.load(Relaxed), Relaxed);
        i(&total.connections_active, &self.connections_active);
        i(&total.outbox_bytes, &self.outbox_bytes);
        i(&total.subscribe_waiting, &self.subscribe_waiting);
        u(&total.notifications_sent, &self.notifications_sent);
        u(&total.slow_consumers_closed, &self.slow_consumers_closed);
        u(&total.handoffs_in, &self.handoffs_in);
        u(&total.tls_resumed, &self.tls_resumed);
        u(
            &total.delivery_latency.sum_us,
            &self.delivery_latency.sum_us,
        );
        let arrays: [(&[AtomicU64], &[AtomicU64]); 10] = [
            (&total.tls_failures, &self.tls_failures),
            (&total.tls_handshakes, &self.tls_handshakes),
            (&total.subscribe_waits, &self.subscribe_waits),
            (&total.connection_errors, &self.connection_errors),
            (&total.handshakes, &self.handshakes),
            (&total.auth_failures, &self.auth_failures),
            (&total.close_codes_sent, &self.close_codes_sent),
            (&total.notifications_dropped, &self.notifications_dropped),
            (&total.accept_errors, &self.accept_errors),
            (
                &total.delivery_latency.buckets,
                &self.delivery_latency.buckets,
            ),
        ];
        for (to, from) in arrays {
            to.iter().zip(from).for_each(|(t, f)| u(t, f));
        }
        self.history.add_into(&total.history);
    }
}

/// Counters outside the shards: Redis broker and control plane. Written by one or two threads.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// Messages received from Redis.
    pub redis_events_consumed: AtomicU64,
    /// Redis failures by [`RedisError`].
    pub redis_errors: [AtomicU64; RedisError::N],
    /// 1 while subscribed to Redis, else 0.
    pub redis_connected: AtomicI64,
    /// Redis reconnections after a failure.
    pub redis_reconnects: AtomicU64,
    /// Subscriber connections given up because Redis stayed silent for REDIS_LIVENESS_TIMEOUT
    /// while a reply was due.
    pub redis_liveness_timeouts: AtomicU64,
    /// Milliseconds between the last byte of a lost subscribed connection and the confirmation
    /// of the next one, summed.
    pub redis_unsubscribed_ms: AtomicU64,
    /// Notifications dropped before reaching a shard, by [`DropReason`].
    pub notifications_dropped: [AtomicU64; DropReason::N],
    /// Requests to the publish API.
    pub publish_requests: AtomicU64,
    /// Publish API answers by [`PublishStatus`].
    pub publish_responses: [AtomicU64; PublishStatus::N],
    /// Body bytes publish requests in progress hold (their share of
    /// `PUBLISH_MAX_INFLIGHT_BYTES`; the budget's own counter).
    pub publish_inflight_bytes: AtomicI64,
    /// Open connections on the internal port.
    pub control_connections: AtomicI64,
    /// Internal-port connections closed by the gateway, by [`ControlDrop`].
    pub control_drops: [AtomicU64; ControlDrop::N],
    /// Publish requests answered with the first result of their Idempotency-Key.
    pub history_repeats: AtomicU64,
    /// Readiness for the health endpoint (not exported as a metric).
    pub ready: AtomicBool,
}

impl GlobalStats {
    /// Counts a Redis failure.
    #[inline]
    pub fn inc_redis_error(&self, e: RedisError) {
        self.redis_errors[e as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` notifications dropped before reaching a shard.
    #[inline]
    pub fn inc_drop(&self, r: DropReason, n: u64) {
        self.notifications_dropped[r as usize].fetch_add(n, Relaxed);
    }

    /// Counts a publish API answer.
    #[inline]
    pub fn inc_publish_response(&self, s: PublishStatus) {
        self.publish_responses[s as usize].fetch_add(1, Relaxed);
    }

    /// Counts an internal-port connection the gateway closed itself.
    #[inline]
    pub fn inc_control_drop(&self, r: ControlDrop) {
        self.control_drops[r as usize].fetch_add(1, Relaxed);
    }

    /// Sets the `redis_connected` gauge.
    pub fn set_redis_connected(&self, connected: bool) {
        self.redis_connected.store(i64::from(connected), Relaxed);
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// Current readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

/// The metrics of one gateway process.
#[derive(Debug)]
pub struct Metrics {
    /// One per shard, indexed by shard id; each also held by its shard thread.
    shards: Vec<Arc<ShardStats>>,
    /// Broker and control-plane counters.
    global: Arc<GlobalStats>,
    /// Holds the [`GatewayCollector`]; encoded on each scrape.
    registry: Registry,
}

impl Metrics {
    /// Metrics for `shard_count` shards on io driver `driver` ("io_uring" or "epoll").
    pub fn new(shard_count: usize, driver: &str) -> Arc<Self> {
        let shards: Vec<Arc<ShardStats>> = (0..shard_count)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        let global = Arc::new(GlobalStats::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(GatewayCollector {
            shards: shards.clone(),
            global: global.clone(),
            driver: driver.to_string(),
        }));
        Arc::new(Self {
            shards,
            global,
            registry,
        })
    }

    /// Shard `i`'s counters, for that shard's thread. Panics if `i` is out of range.
    pub fn shard(&self, i: usize) -> Arc<ShardStats> {
        self.shards[i].clone()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Broker and control-plane counters.
    pub fn global(&self) -> &Arc<GlobalStats> {
        &self.global
    }

    /// The scrape body (OpenMetrics text; serve with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

/// Sums the shards into metric families at scrape time.
#[derive(Debug)]
struct GatewayCollector {
    /// Same shards as [`Metrics::shards`].
    shards: Vec<Arc<ShardStats>>,
    /// Same as [`Metrics::global`].
    global: Arc<GlobalStats>,
    /// `driver` label of the build info.
    driver: String,
}

/// A family's name as in `# HELP`/`# TYPE` (counters without `_total`) and its help text.
type Family = (&'static str, &'static str);

const CONNECTIONS_ACTIVE: Family = (
    "websocket_connections_active",
    "Open WebSocket connections.",
);
const PER_SHARD: Family = (
    "websocket_connections_per_shard",
    "Open connections per shard.",
);
const SENT: Family = (
    "notifications_sent",
    "Notifications written whole to client connections, one per connection.",
);
const ERRORS: Family = ("websocket_connection_errors", "Connection errors by type.");
const HANDSHAKES: Family = (
    "websocket_handshakes",
    "WebSocket upgrade attempts by outcome.",
);
const AUTH: Family = (
    "websocket_auth_failures",
    "Token authentication failures by reason.",
);
const CLOSES: Family = (
    "websocket_close_codes_sent",
    "Close frames sent, by close code.",
);
const DROPPED: Family = (
    "notifications_dropped",
    "Notifications not delivered, by reason.",
);
const SLOW: Family = (
    "websocket_slow_consumers_closed",
    "Connections closed as slow consumers.",
);
const OUTBOX: Family = (
    "websocket_outbox_bytes",
    "Bytes queued in connection outboxes.",
);
const ACCEPT: Family = ("websocket_accept_errors", "accept() failures by error.");
const HANDOFFS: Family = ("websocket_handoffs", "Connections handed between shards.");
const LATENCY: Family = (
    "notification_delivery_latency_seconds",
    "Time from a notification's arrival at the gateway to its complete write into a client socket, one observation per connection written to.",
);
const TLS_FAILURES: Family = (
    "websocket_tls_handshake_failures",
    "wss:// handshakes that failed, by reason.",
);
const TLS_HANDSHAKES: Family = (
    "websocket_tls_handshakes",
    "wss:// handshakes completed, by TLS version.",
);
const TLS_RESUMED: Family = (
    "websocket_tls_resumed_handshakes",
    "wss:// handshakes resumed from a session ticket (no certificate sent).",
);
const REDIS_EVENTS: Family = ("redis_events_consumed", "Messages received from Redis.");
const REDIS_ERRORS: Family = ("redis_errors", "Redis failures by type.");
const REDIS_CONNECTED: Family = ("redis_connected", "1 while subscribed to Redis, else 0.");
const REDIS_RECONNECTS: Family = ("redis_reconnects", "Redis reconnections after a failure.");
const REDIS_LIVENESS: Family = (
    "redis_liveness_timeouts",
    "Subscriber connections given up after REDIS_LIVENESS_TIMEOUT of silence while a reply was due.",
);
const REDIS_UNSUBSCRIBED: Family = (
    "redis_unsubscribed_seconds",
    "Time not subscribed after losing a subscribed connection; notifications published then may be lost.",
);
const SUBSCRIBE_WAITS: Family = (
    "websocket_subscribe_waits",
    "Per-user mode: how upgrades' waits for their channel subscription ended.",
);
const SUBSCRIBE_WAITING: Family = (
    "websocket_subscribe_waiting",
    "Per-user mode: upgrades waiting for their channel subscription now.",
);
const PUBLISH: Family = ("publish_requests", "Requests to the publish API.");
const PUBLISH_RESPONSES: Family = ("publish_responses", "Publish API answers by HTTP status.");
const PUBLISH_INFLIGHT: Family = (
    "publish_inflight_bytes",
    "Body bytes held by publish requests in progress.",
);
const CONTROL_CONNECTIONS: Family = (
    "control_connections_active",
    "Open connections on the internal port.",
);
const CONTROL_DROPS: Family = (
    "control_connections_dropped",
    "Internal-port connections closed by the gateway, by reason.",
);
const BUILD: Family = (
    "chat4all_gateway_build_info",
    "Build and runtime information; always 1.",
);

fn counter(e: &mut DescriptorEncoder, (name, help): Family, v: &AtomicU64) -> fmt::Result {
    let v = v.load(Relaxed);
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder, (name, help): Family, v: &AtomicI64) -> fmt::Result {
    let v = v.load(Relaxed);
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter family with one sample per label value, `values` indexed by `L as usize`.
fn labelled<L: Label>(e: &mut DescriptorEncoder, f: Family, values: &[AtomicU64]) -> fmt::Result {
    let mut family = e.encode_descriptor(f.0, f.1, None, MetricType::Counter)?;
    for (label, v) in L::VALUES.iter().zip(values) {
        let label_set = [(L::KEY, label.label())];
        let v = v.load(Relaxed);
        family
            .encode_family(&label_set)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (e, g) = (&mut enc, &self.global);
        let t = ShardStats::default();
        for shard in &self.shards {
            shard.add_into(&t);
        }
        for (reason, n) in DropReason::ALL.into_iter().zip(&g.notifications_dropped) {
            t.inc_drop(reason, n.load(Relaxed));
        }
        gauge(e, CONNECTIONS_ACTIVE, &t.connections_active)?;
        let mut family = e.encode_descriptor(PER_SHARD.0, PER_SHARD.1, None, MetricType::Gauge)?;
        for (i, shard) in self.shards.iter().enumerate() {
            let id = i.to_string();
            let active = shard.connections_active.load(Relaxed);
            family
                .encode_family(&[("shard", id.as_str())])?
                .encode_gauge(&active)?;
        }
        counter(e, SENT, &t.notifications_sent)?;
        labelled::<ErrorType>(e, ERRORS, &t.connection_errors)?;
        labelled::<HandshakeOutcome>(e, HANDSHAKES, &t.handshakes)?;
        labelled::<AuthFailure>(e, AUTH, &t.auth_failures)?;
        labelled::<CloseCode>(e, CLOSES, &t.close_codes_sent)?;
        labelled::<DropReason>(e, DROPPED, &t.notifications_dropped)?;
        counter(e, SLOW, &t.slow_consumers_closed)?;
        gauge(e, OUTBOX, &t.outbox_bytes)?;
        labelled::<AcceptError>(e, ACCEPT, &t.accept_errors)?;
        counter(e, HANDOFFS, &t.handoffs_in)?;
        labelled::<TlsFailure>(e, TLS_FAILURES, &t.tls_failures)?;
        labelled::<TlsVersion>(e, TLS_HANDSHAKES, &t.tls_handshakes)?;
        counter(e, TLS_RESUMED, &t.tls_resumed)?;
        let h = &t.delivery_latency;
        let bounds = LATENCY_BUCKETS_US.iter().map(|&us| us as f64 / 1e6);
        let buckets: Vec<(f64, u64)> = bounds
            .chain([f64::INFINITY])
            .zip(h.bucket_counts())
            .collect();
        e.encode_descriptor(LATENCY.0, LATENCY.1, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(h.sum_us() as f64 / 1e6, h.count(), &buckets, None)?;
        counter(e, REDIS_EVENTS, &g.redis_events_consumed)?;
        labelled::<RedisError>(e, REDIS_ERRORS, &g.redis_errors)?;
        gauge(e, REDIS_CONNECTED, &g.redis_connected)?;
        counter(e, REDIS_RECONNECTS, &g.redis_reconnects)?;
        counter(e, REDIS_LIVENESS, &g.redis_liveness_timeouts)?;
        let unsubscribed = g.redis_unsubscribed_ms.load(Relaxed) as f64 / 1000.0;
        e.encode_descriptor(
            REDIS_UNSUBSCRIBED.0,
            REDIS_UNSUBSCRIBED.1,
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&unsubscribed, None)?;
        labelled::<SubscribeWait>(e, SUBSCRIBE_WAITS, &t.subscribe_waits)?;
        gauge(e, SUBSCRIBE_WAITING, &t.subscribe_waiting)?;
        counter(e, PUBLISH, &g.publish_requests)?;
        labelled::<PublishStatus>(e, PUBLISH_RESPONSES, &g.publish_responses)?;
        gauge(e, PUBLISH_INFLIGHT, &g.publish_inflight_bytes)?;
        gauge(e, CONTROL_CONNECTIONS, &g.control_connections)?;
        labelled::<ControlDrop>(e, CONTROL_DROPS, &g.control_drops)?;
        history::encode(e, &t.history, g.history_repeats.load(Relaxed))?;
        let shards = self.shards.len().to_string();
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("driver", self.driver.as_str()),
            ("shards", shards.as_str()),
        ];
        e.encode_descriptor(BUILD.0, BUILD.1, None, MetricType::Gauge)?
            .encode_family(&build)?
            .encode_gauge(&1i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (family name as in `# HELP`/`# TYPE`, type) for every exported family.
    const FAMILIES: [(&str, &str); 30] = [
        ("websocket_connections_active", "gauge"),
        ("websocket_connections_per_shard", "gauge"),
        ("notifications_sent", "counter"),
        ("websocket_connection_errors", "counter"),
        ("websocket_handshakes", "counter"),
        ("websocket_auth_failures", "counter"),
        ("websocket_close_codes_sent", "counter"),
        ("notifications_dropped", "counter"),
        ("websocket_slow_consumers_closed", "counter"),
        ("websocket_outbox_bytes", "gauge"),
        ("websocket_accept_errors", "counter"),
        ("websocket_handoffs", "counter"),
        ("websocket_tls_handshake_failures", "counter"),
        ("websocket_tls_handshakes", "counter"),
        ("websocket_tls_resumed_handshakes", "counter"),
        ("notification_delivery_latency_seconds", "histogram"),
        ("redis_events_consumed", "counter"),
        ("redis_errors", "counter"),
        ("redis_connected", "gauge"),
        ("redis_reconnects", "counter"),
        ("redis_liveness_timeouts", "counter"),
        ("redis_unsubscribed_seconds", "counter"),
        ("websocket_subscribe_waits", "counter"),
        ("websocket_subscribe_waiting", "gauge"),
        ("publish_requests", "counter"),
        ("publish_responses", "counter"),
        ("publish_inflight_bytes", "gauge"),
        ("control_connections_active", "gauge"),
        ("control_connections_dropped", "counter"),
        ("chat4all_gateway_build_info", "gauge"),
    ];

    /// Parsed sample: (name, labels as written between braces, value).
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.strip_suffix('}').expect(line)),
                    None => (series, ""),
                };
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect(line),
                };
                (name.to_string(), labels.to_string(), value)
            })
            .collect()
    }

    /// The value of the one sample named `name` with exactly `labels`.
    fn value(text: &str, name: &str, labels: &str) -> f64 {
        let found: Vec<f64> = samples(text)
            .into_iter()
            .filter(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
            .collect();
        assert_eq!(found.len(), 1, "{name}{{{labels}}} in\n{text}");
        found[0]
    }

    #[test]
    fn every_family_once_with_help_and_type() {
        let text = Metrics::new(1, "epoll").render();
        for (name, kind) in FAMILIES.into_iter().chain(history::FAMILIES) {
            let help = format!("# HELP {name} ");
            let help_lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&help)).collect();
            assert_eq!(help_lines.len(), 1, "{name}");
            assert!(
                help_lines[0].len() > help.len() + 3,
                "{name} has empty HELP"
            );
            let ty = format!("# TYPE {name} {kind}");
            assert_eq!(text.lines().filter(|l| *l == ty).count(), 1, "{ty}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            families,
            FAMILIES.len() + history::FAMILIES.len(),
            "no unexpected families"
        );
    }

    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::new(3, "io_uring");
        m.shard(2).delivery_latency.observe_us(700);
        let text = m.render();
        assert!(text.ends_with("# EOF\n"));
        let valid_name = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
                continue;
            }
            if line.starts_with("# HELP ") || line == "# EOF" {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
            let suffix = name.strip_prefix(family.as_str()).expect(line);
            assert!(
                ["", "_total", "_bucket", "_sum", "_count"].contains(&suffix),
                "{line}"
            );
            if let Some((_, labels)) = series.split_once('{') {
                let labels = labels.strip_suffix('}').expect(line);
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(valid_name(k), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
        }
    }

    #[test]
    fn label_sets_complete_even_at_zero() {
        let text = Metrics::new(2, "epoll").render();
        let check = |name: &str, key: &str, values: &[&str]| {
            for v in values {
                assert_eq!(value(&text, name, &format!("{key}=\"{v}\"")), 0.0);
            }
            let n = samples(&text).iter().filter(|(s, _, _)| s == name).count();
            assert_eq!(n, values.len(), "{name}");
        };
        check(
            "websocket_connection_errors_total",
            "error_type",
            &[
                "missing_token",
                "invalid_token",
                "jwt_verification_failed",
                "bad_request",
                "handshake_timeout",
                "over_capacity",
                "websocket_error",
                "send_failed",
                "internal_error",
            ],
        );
        check(
            "websocket_handshakes_total",
            "outcome",
            &["accepted", "refused", "timed_out", "failed"],
        );
        check(
            "websocket_auth_failures_total",
            "reason",
            &[
                "missing",
                "malformed",
                "bad_signature",
                "wrong_algorithm",
                "expired",
                "not_yet_valid",
                "missing_user_id",
                "invalid_user_id",
            ],
        );
        check(
            "websocket_close_codes_sent_total",
            "code",
            &[
                "1000",
                "1001",
                "1002",
                "1007",
                "1008",
                "1009",
                "1011",
                "1013",
                "1003",
                "1010",
                "4001",
                "4002",
                "3000-4999",
            ],
        );
        check(
            "notifications_dropped_total",
            "reason",
            &[
                "invalid_payload",
                "queue_full",
                "slow_consumer",
                "not_local",
                "shutting_down",
                "connection_closing",
            ],
        );
        check(
            "websocket_accept_errors_total",
            "error",
            &["emfile", "other"],
        );
        check(
            "redis_errors_total",
            "error_type",
            &["connection", "message_processing"],
        );
        check("websocket_connections_per_shard", "shard", &["0", "1"]);
        assert_eq!(
            value(
                &text,
                "chat4all_gateway_build_info",
                &format!(
                    "version=\"{}\",driver=\"epoll\",shards=\"2\"",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
    }

    #[test]
    fn shards_are_summed_and_global_added() {
        let m = Metrics::new(2, "epoll");
        let (a, b) = (m.shard(0), m.shard(1));
        a.connection_opened();
        a.connection_opened();
        b.connection_opened();
        b.connection_opened();
        b.connection_closed();
        a.add_sent(5);
        b.add_sent(7);
        a.inc_error(ErrorType::OverCapacity);
        b.inc_error(ErrorType::OverCapacity);
        a.inc_handshake(HandshakeOutcome::Accepted);
        b.inc_auth_failure(AuthFailure::Expired);
        a.inc_close(CloseCode::TryAgain1013);
        b.inc_close(CloseCode::from_code(1013).unwrap());
        a.inc_drop(DropReason::SlowConsumer, 3);
        m.global().inc_drop(DropReason::SlowConsumer, 4);
        m.global().inc_drop(DropReason::NotLocal, 1);
        a.inc_slow_consumer_closed();
        a.add_outbox_bytes(100);
        b.add_outbox_bytes(50);
        a.add_outbox_bytes(-30);
        b.inc_accept_error(AcceptError::Emfile);
        b.inc_handoff();
        let g = m.global();
        g.redis_events_consumed.fetch_add(9, Relaxed);
        g.inc_redis_error(RedisError::MessageProcessing);
        g.set_redis_connected(true);
        g.redis_reconnects.fetch_add(2, Relaxed);
        g.publish_requests.fetch_add(6, Relaxed);

        let t = m.render();
        assert_eq!(value(&t, "websocket_connections_active", ""), 3.0);
        assert_eq!(
            value(&t, "websocket_connections_per_shard", "shard=\"0\""),
            2.0
        );
        assert_eq!(
            value(&t, "websocket_connections_per_shard", "shard=\"1\""),
            1.0
        );
        assert_eq!(value(&t, "notifications_sent_total", ""), 12.0);
        let over = "error_type=\"over_capacity\"";
        assert_eq!(value(&t, "websocket_connection_errors_total", over), 2.0);
        assert_eq!(
            value(&t, "websocket_handshakes_total", "outcome=\"accepted\""),
            1.0
        );
        assert_eq!(
            value(&t, "websocket_auth_failures_total", "reason=\"expired\""),
            1.0
        );
        assert_eq!(
            value(&t, "websocket_close_codes_sent_total", "code=\"1013\""),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "notifications_dropped_total",
                "reason=\"slow_consumer\""
            ),
            7.0
        );
        assert_eq!(
            value(&t, "notifications_dropped_total", "reason=\"not_local\""),
            1.0
        );
        assert_eq!(value(&t, "websocket_slow_consumers_closed_total", ""), 1.0);
        assert_eq!(value(&t, "websocket_outbox_bytes", ""), 120.0);
        assert_eq!(
            value(&t, "websocket_accept_errors_total", "error=\"emfile\""),
            1.0
        );
        assert_eq!(value(&t, "websocket_handoffs_total", ""), 1.0);
        assert_eq!(value(&t, "redis_events_consumed_total", ""), 9.0);
        let mp = "error_type=\"message_processing\"";
        assert_eq!(value(&t, "redis_errors_total", mp), 1.0);
        assert_eq!(value(&t, "redis_connected", ""), 1.0);
        assert_eq!(value(&t, "redis_reconnects_total", ""), 2.0);
        assert_eq!(value(&t, "publish_requests_total", ""), 6.0);
    }

    #[test]
    fn histogram_buckets_cumulative_and_correct() {
        let m = Metrics::new(2, "epoll");
        // Boundaries are inclusive (`le`): 50 lands in the 50 us bucket, 51 in the next.
        for us in [0, 50, 51, 1_000, 1_000_000] {
            m.shard(0).delivery_latency.observe_us(us);
        }
        m.shard(1).delivery_latency.observe_us(1_000_001);
        m.shard(1).delivery_latency.observe_us(300);
        let t = m.render();
        let name = "notification_delivery_latency_seconds";
        let buckets: Vec<(f64, f64)> = samples(&t)
            .into_iter()
            .filter(|(n, _, _)| *n == format!("{name}_bucket"))
            .map(|(_, l, v)| {
                let le = l.strip_prefix("le=\"").unwrap().strip_suffix('"').unwrap();
                (
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    },
                    v,
                )
            })
            .collect();
        let bounds: Vec<f64> = buckets.iter().map(|(le, _)| *le).collect();
        let mut expected: Vec<f64> = LATENCY_BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .collect();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected);
        let counts: Vec<f64> = buckets.iter().map(|(_, c)| *c).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(at(0.00005), 2.0);
        assert_eq!(at(0.0001), 3.0);
        assert_eq!(at(0.0005), 4.0);
        assert_eq!(at(0.001), 5.0);
        assert_eq!(at(1.0), 6.0);
        assert_eq!(at(f64::INFINITY), 7.0);
        assert_eq!(value(&t, &format!("{name}_count"), ""), 7.0);
        let sum = value(&t, &format!("{name}_sum"), "");
        assert!((sum - 2.001402).abs() < 1e-9, "{sum}");
        assert_eq!(m.shard(0).delivery_latency.count(), 5);
    }

    #[test]
    fn label_enums_are_consistent() {
        for (i, c) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
            if c != CloseCode::Application {
                assert_eq!(c.as_str(), c.code().to_string());
                assert_eq!(CloseCode::from_code(c.code()), Some(c));
            }
        }
        assert_eq!(CloseCode::from_code(1006), None);
        assert!(
            ErrorType::ALL
                .into_iter()
                .enumerate()
                .all(|(i, e)| e as usize == i)
        );
        assert!(
            DropReason::ALL
                .into_iter()
                .enumerate()
                .all(|(i, e)| e as usize == i)
        );
        assert_eq!(std::mem::align_of::<ShardStats>(), 128);
        assert!(
            std::mem::size_of::<ShardStats>() <= 1024,
            "documented as under 1 KiB: {}",
            std::mem::size_of::<ShardStats>()
        );
        let g = GlobalStats::default();
        assert!(!g.is_ready());
        g.set_ready(true);
        assert!(g.is_ready());
    }
}
