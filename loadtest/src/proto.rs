//! What the coordinator and its worker processes say to each other: one JSON object per line,
//! commands on the worker's stdin, events on its stdout. Histograms travel as base64 V2 blobs
//! ([`crate::stats::hist::encode`]).

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    stats::{accounting::DeliveryCounts, failure::Failures, recovery::RecoveryCounts},
    wire::http::ApiTarget,
};

/// Everything a worker needs to know, sent once as its first command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// Worker index, for user names of churning clients.
    pub worker: u32,
    /// Target `host:port` for the Host header.
    pub host: String,
    /// Target address.
    pub addr: SocketAddr,
    /// Upgrade path, e.g. `/notifications`.
    pub path: String,
    /// Token secret.
    pub jwt_secret: String,
    /// User id prefix (`u` gives u0, u1, ...).
    pub user_prefix: String,
    /// Global indices of the users this worker owns: it holds all their connections and is the
    /// only one publishing to them, so their sequence numbers are local.
    pub users: Vec<u32>,
    /// Connections per user.
    pub conns_per_user: u32,
    /// Source addresses to bind client sockets to, used round robin.
    pub source_ips: Vec<Ipv4Addr>,
    /// Explicit source ports: connection `g` (global index) binds
    /// `source_ips[g / ports % len] : lo + g % ports`. `None`: the kernel picks the port.
    #[serde(default)]
    pub source_ports: Option<(u16, u16)>,
    /// This worker's share of the connect rate (0 = unlimited).
    pub connect_rate: f64,
    /// This worker's share of the handshakes in flight.
    pub connect_concurrency: u32,
    /// Timeout of TCP connect and of the upgrade, each, ms.
    pub connect_timeout_ms: u64,
    /// Redis to publish to, if the scenario publishes.
    pub redis: Option<SocketAddr>,
    /// Publish through the gateway's `POST /v1/publish` instead of Redis `PUBLISH` (history is
    /// recorded only there).
    pub publish_api: Option<ApiTarget>,
    /// `wss://`: how to verify the server.
    pub tls: Option<TlsPlan>,
    /// Clients track offsets and epochs and reconnect with `since` (issue 10).
    pub recover: bool,
    /// Payload padding bytes.
    pub payload_bytes: usize,
    /// Reconnect with backoff when a connection drops (reconnect storm), else count it as dropped.
    pub reconnect: Option<Backoff>,
    /// Timeline bucket, ms.
    pub interval_ms: u64,
    /// How often to send progress, ms.
    pub progress_ms: u64,
    /// PRNG seed.
    pub seed: u64,
}

/// TLS settings of a `wss://` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsPlan {
    /// PEM file of the CA (or certificate) to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// Trust any certificate (benchmarks only).
    pub insecure: bool,
    /// SNI and the name the certificate must carry.
    pub server_name: String,
}

/// Reconnect delays: `min_ms` doubling up to `max_ms`, each jittered in [d/2, d].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
}

/// How a publishing phase picks users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// Uniformly random connected user.
    Random,
    /// Every connected user in turn.
    RoundRobin,
}

/// One publishing phase (a fanout run, one ramp step, the churn run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseSpec {
    /// Step number (ramp), 0 otherwise.
    pub step: u32,
    /// This worker's PUBLISH rate per second; 0 = closed loop.
    pub rate: f64,
    /// Closed loop: this worker's most expected deliveries in flight.
    pub window: u64,
    /// Publishing time, ms.
    pub duration_ms: u64,
    /// Longest wait for stragglers after publishing, ms.
    pub drain_ms: u64,
    /// User choice.
    pub pick: Pick,
    /// Common start, unix µs, so all workers' timelines line up.
    pub start_us: u64,
    /// Churn alongside the notifications.
    pub churn: Option<ChurnSpec>,
}

/// Churn during a phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// This worker's connects per second.
    pub rate: f64,
    /// Lifetime of each churning connection, ms.
    pub lifetime_ms: u64,
    /// Close with RST instead of close frame + FIN.
    pub abrupt: bool,
}

/// Coordinator to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// First line: the plan.
    Setup(Box<WorkerPlan>),
    /// Open the worker's connections at its ramp rate; answered by [`Event::Connected`].
    Connect,
    /// Run a publishing phase; answered by [`Event::PhaseDone`].
    Phase(PhaseSpec),
    /// Send one ping per open connection, wait for the pongs; answered by [`Event::Pinged`].
    Ping { timeout_ms: u64 },
    /// Publish one probe per user and wait until every open connection has received one;
    /// answered by [`Event::Probed`].
    Probe { timeout_ms: u64 },
    /// Start sending an application ping on every open connection once per `interval_ms`,
    /// spread evenly (the Python CLI's keep-alive); `0` stops.
    KeepAlive { interval_ms: u64 },
    /// Expect broadcast `id` on every connection of these users (global indices; each worker
    /// takes its own); answered by [`Event::BcastReady`].
    BcastExpect { id: u32, users: Vec<u32> },
    /// Wait until every expected connection has the broadcast or `timeout_ms` passes; answered by
    /// [`Event::BcastDone`].
    BcastCollect { timeout_ms: u64 },
    /// Start timing drops and reconnections (reconnect storm).
    StormStart,
    /// Stop timing; answered by [`Event::StormDone`].
    StormEnd,
    /// Close everything and exit after [`Event::Final`].
    Shutdown,
}

/// Worker to coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Setup done (tokens made, Redis connected).
    Ready,
    /// Periodic counters.
    Progress(Progress),
    Connected(ConnectResult),
    PhaseDone(Box<PhaseResult>),
    Pinged {
        sent: u64,
        pongs: u64,
    },
    Probed {
        open: u64,
        receiving: u64,
    },
    StormDone(Box<StormResult>),
    BcastReady {
        expected: u64,
    },
    BcastDone(Box<BcastResult>),
    Final {
        cpu_ms: u64,
        rss_kb: u64,
        /// `wss://` handshakes that resumed a session.
        #[serde(default)]
        tls_resumed: u64,
    },
    /// The worker cannot go on.
    Fatal {
        error: String,
    },
}

/// Running totals of one worker (summed by the coordinator for the live display).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Connections open now.
    pub open: u64,
    /// Connection attempts that failed (ramp, churn and reconnects).
    pub failed: u64,
    /// Notifications delivered in the current phase.
    pub delivered: u64,
    /// PUBLISH commands sent in the current phase.
    pub published: u64,
    /// Connections that dropped since the storm started.
    pub dropped: u64,
    /// Connections reconnected since the storm started.
    pub reconnected: u64,
    /// Reconnected connections that have received a notification again.
    pub receiving: u64,
    /// Churning connections opened so far.
    pub churned: u64,
    /// p99 of the last complete timeline bucket, µs.
    pub recent_p99_us: u64,
    /// The worker's resident memory, KiB.
    pub rss_kb: u64,
    /// Keep-alive pings sent and pongs received, in total.
    pub pings_sent: u64,
    pub pongs: u64,
    /// Connections that received the current broadcast.
    pub bcast_delivered: u64,
}

/// Result of [`Command::Connect`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectResult {
    pub attempted: u64,
    pub established: u64,
    pub failures: Failures,
    /// Handshake latency (TCP connect through 101), base64 histogram.
    pub handshake: String,
    /// First attempt and last completion, unix µs.
    pub first_attempt_us: u64,
    pub last_done_us: u64,
    /// Worker CPU during the ramp, ms.
    pub cpu_ms: u64,
}

/// Result of [`Command::Phase`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub step: u32,
    pub counts: DeliveryCounts,
    /// PUBLISH commands sent.
    pub publish_commands: u64,
    /// Redis error replies.
    pub redis_errors: u64,
    /// End-to-end latency of every delivery, base64 histogram.
    pub latency: String,
    /// One histogram per timeline bucket from `start_us`.
    pub timeline: Vec<String>,
    pub start_us: u64,
    /// When publishing stopped, unix µs.
    pub publish_end_us: u64,
    /// First and last delivery, unix µs (0 if none).
    pub first_delivery_us: u64,
    pub last_delivery_us: u64,
    /// Worst lag of the open-loop publisher behind its schedule, µs.
    pub max_lag_us: u64,
    /// Closed loop: times the window stopped draining for 500 ms and was written off.
    pub window_stalls: u64,
    /// Connections that died during the phase, by cause.
    pub dropped: Failures,
    /// Worker CPU during the phase, ms.
    pub cpu_ms: u64,
    pub churn: Option<ChurnResult>,
    /// Recovery runs: what the clients' offset bookkeeping saw.
    #[serde(default)]
    pub recovery: Option<RecoveryCounts>,
}

/// Result of a broadcast on one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BcastResult {
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    /// Request send time to arrival, base64 histogram.
    pub latency: String,
    /// Last arrival, unix µs (0 if none).
    pub last_delivery_us: u64,
}

/// Churn outcome of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnResult {
    pub attempted: u64,
    pub established: u64,
    pub closed: u64,
    pub failures: Failures,
    pub handshake: String,
}

/// Result of a reconnect storm on one worker; times are unix µs, 0 when it did not happen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormResult {
    /// Connections open when the storm started.
    pub open_at_start: u64,
    pub dropped: u64,
    pub reconnected: u64,
    pub receiving: u64,
    pub first_drop_us: u64,
    pub last_drop_us: u64,
    pub first_reconnect_us: u64,
    pub last_reconnect_us: u64,
    pub last_receiving_us: u64,
    /// Failed reconnect attempts by cause (refused while the server is down is expected).
    pub retry_failures: Failures,
    /// Handshake latency of successful reconnects.
    pub handshake: String,
    /// Probe notifications published.
    pub probes: u64,
}
