//! The run report: what the JSON file holds, how worker results are merged into it ([`merge`]),
//! the human summary ([`summary`]) and the latency plot ([`plot`]).
//!
//! Units are in the field names (`_us`, `_ms`, `_kb`, `_bytes`, `_per_s`). Kernel figures come from
//! system-wide counters, so on loopback they include the client end of every connection too.

pub mod capacity;
mod capacity_plot;
pub mod merge;
pub mod plot;
pub mod summary;

use serde::Serialize;

use crate::stats::{
    accounting::DeliveryCounts,
    failure::Failures,
    hist::Percentiles,
    recovery::RecoveryCounts,
    sysstats::{KernelSample, ProcSample},
};

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `idle`, `fanout`, `ramp`, `reconnect-storm` or `churn`.
    pub scenario: String,
    pub harness_version: String,
    pub started_unix_s: u64,
    /// The command line.
    pub command: Vec<String>,
    pub machine: Machine,
    pub target: Target,
    pub workers: u32,
    pub connect: ConnectReport,
    pub idle: Option<IdleReport>,
    pub capacity: Option<capacity::CapacityReport>,
    pub recovery: Option<RecoveryReport>,
    pub fanout: Option<PhaseReport>,
    pub ramp: Option<RampReport>,
    pub storm: Option<StormReport>,
    pub churn: Option<ChurnReport>,
    pub server: Option<ServerReport>,
    pub harness: HarnessReport,
    /// Every delivery invariant holds (`delivered + lost == published` in every phase).
    pub consistent: bool,
    /// Conditions that make the numbers doubtful (harness lagging, connections failing, ...).
    pub warnings: Vec<String>,
}

impl Report {
    /// Latency over time for the plot: the publishing phase, or the ramp's steps end to end.
    #[must_use]
    pub fn timeline(&self) -> Vec<TimelinePoint> {
        if let Some(p) = &self.fanout {
            return p.timeline.clone();
        }
        if let Some(c) = &self.churn {
            return c.stable.timeline.clone();
        }
        let mut out = Vec::new();
        let mut offset = 0.0;
        for s in self.ramp.iter().flat_map(|r| &r.steps) {
            out.extend(s.phase.timeline.iter().map(|p| TimelinePoint {
                t_s: p.t_s + offset,
                ..*p
            }));
            offset += s
                .phase
                .timeline
                .last()
                .map_or(s.phase.duration_s, |p| p.t_s + 1.0);
        }
        out
    }
}

/// Where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub nproc: usize,
    pub cpu_model: String,
}

impl Machine {
    /// Reads `/proc` for this machine.
    #[must_use]
    pub fn detect() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Self {
            kernel,
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
        }
    }
}

/// What was tested.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub url: String,
    pub redis: String,
    pub server_pid: Option<u32>,
}

/// The initial ramp.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectReport {
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    /// Failed attempts by cause: refused, timeout, reset, emfile, addr_unavailable,
    /// http_<status>, protocol, other.
    pub failures: Failures,
    /// First attempt to last completion.
    pub duration_s: f64,
    /// Established connections per second over `duration_s`.
    pub connects_per_s: f64,
    /// TCP connect through HTTP 101, per connection.
    pub handshake: Percentiles,
    /// Harness CPU spent on the ramp.
    pub harness_cpu_ms: u64,
    /// Server CPU spent on the ramp (with --server-pid).
    pub server_cpu_ms: Option<u64>,
}

/// The idle scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub hold_s: f64,
    /// Connections pinged at the end of the hold, and pongs back (`None` with --no-verify).
    pub pinged: Option<u64>,
    pub pongs: Option<u64>,
    /// Memory per established connection, from a baseline taken before connecting.
    pub per_conn: Option<MemoryPerConn>,
    pub kernel_baseline: KernelSample,
    pub kernel_end: KernelSample,
}

/// Memory growth divided by established connections.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryPerConn {
    /// Server RSS growth per connection (with --server-pid).
    pub server_rss_bytes: Option<f64>,
    /// TCP socket buffer memory growth per connection (both ends, system-wide).
    pub kernel_tcp_mem_bytes: f64,
    /// Slab growth per connection (both ends, system-wide).
    pub kernel_slab_bytes: f64,
    /// Unreclaimable slab growth per connection (both ends, system-wide).
    pub kernel_sunreclaim_bytes: f64,
}

/// One publishing phase, merged over workers.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Requested PUBLISH/s (0 = closed loop).
    pub rate: f64,
    pub closed_loop: bool,
    /// Closed loop: expected deliveries allowed in flight.
    pub window: u64,
    pub duration_s: f64,
    pub publish_commands: u64,
    /// Achieved PUBLISH/s over the publishing time.
    pub publish_per_s: f64,
    /// `published` counts expected deliveries; `delivered + lost == published`.
    pub deliveries: DeliveryCounts,
    pub consistent: bool,
    pub loss_ratio: f64,
    /// Deliveries per second, from phase start to the last delivery.
    pub delivered_per_s: f64,
    /// End-to-end latency: publisher's clock at PUBLISH to the client's read of the frame.
    pub latency: Percentiles,
    pub timeline: Vec<TimelinePoint>,
    /// Worst lag of an open-loop publisher behind its schedule; large values mean the harness
    /// could not publish at the asked rate.
    pub max_publish_lag_ms: f64,
    pub window_stalls: u64,
    pub redis_errors: u64,
    /// Connections that died during the phase, by cause.
    pub dropped: Failures,
    pub server_cpu_ms: Option<u64>,
    pub server_cpu_ms_per_1k: Option<f64>,
    pub harness_cpu_ms: u64,
    /// Harness CPU (all workers, publishing and receiving) per 1,000 deliveries.
    pub harness_cpu_ms_per_1k: f64,
    pub server_rss_kb_end: Option<u64>,
}

/// Latency of the deliveries received in one timeline bucket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    /// Bucket start, seconds from the phase start.
    pub t_s: f64,
    pub delivered: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The ramp scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    pub p99_bound_ms: f64,
    pub steps: Vec<RampStep>,
    /// Highest rate with zero loss and p99 within the bound.
    pub best_rate: Option<f64>,
    pub best_delivered_per_s: Option<f64>,
}

/// One ramp step.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub passed: bool,
    pub phase: PhaseReport,
}

/// The reconnect storm; times in ms from the moment the restart command was started.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub restart_cmd: String,
    pub restart_cmd_exit: Option<i32>,
    pub restart_cmd_ms: f64,
    pub open_at_start: u64,
    pub dropped: u64,
    pub reconnected: u64,
    pub receiving: u64,
    /// Whether every connection dropped, came back and received a probe before the timeout.
    pub all_back: bool,
    pub first_drop_ms: Option<f64>,
    pub last_drop_ms: Option<f64>,
    /// First successful reconnect: the server answers again.
    pub first_reconnect_ms: Option<f64>,
    pub all_reconnected_ms: Option<f64>,
    pub all_receiving_ms: Option<f64>,
    /// From the server answering again to the last client receiving again.
    pub back_after_answering_ms: Option<f64>,
    pub retry_failures: Failures,
    pub reconnect_handshake: Percentiles,
    pub probes: u64,
    /// Connections that received the warm-up probe before the restart.
    pub receiving_before: u64,
}

/// The churn scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub churn_rate: f64,
    pub lifetime_ms: u64,
    pub abrupt: bool,
    pub attempted: u64,
    pub established: u64,
    pub closed: u64,
    pub failures: Failures,
    /// Handshake latency of churning connections.
    pub handshake: Percentiles,
    /// Achieved churn connects per second.
    pub connects_per_s: f64,
    /// Delivery to the stable connections meanwhile.
    pub stable: PhaseReport,
}

/// The server's process readings (with --server-pid).
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    pub baseline: ProcSample,
    pub after_connect: Option<ProcSample>,
    pub end: Option<ProcSample>,
}

/// The harness's own cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HarnessReport {
    pub workers: u32,
    /// CPU of all workers over the whole run, ms.
    pub workers_cpu_ms: u64,
    /// CPU of the coordinator, ms.
    pub coordinator_cpu_ms: u64,
    /// RSS of all workers at the end, KiB.
    pub workers_rss_kb: u64,
    /// `wss://` handshakes that resumed a TLS session.
    pub tls_resumed: u64,
}

/// The recovery scenario: delivery while the gateway restarts, with replay on reconnect.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub restart_cmd: String,
    pub restart_cmd_exit: Option<i32>,
    /// When the restart command started, seconds into the publishing.
    pub restart_at_s: f64,
    /// Delivery over the whole phase (each client expects every notification to its user).
    pub phase: PhaseReport,
    /// What the clients' offset bookkeeping saw.
    pub counts: RecoveryCounts,
}
