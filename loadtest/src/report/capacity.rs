//! The capacity run's part of the report (`chat4all-loadtest capacity`, bench/million.sh):
//! memory by component over time and per connection, the idle fleet's CPU, the broadcast, and the
//! storm after one gateway process is killed.

use serde::Serialize;

use super::{PhaseReport, StormReport};
use crate::stats::hist::Percentiles;

/// One reading of everything that grows with connections.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemSample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Client connections open (all workers).
    pub open: u64,
    /// RSS summed over the gateway processes still running, KiB.
    pub gateways_rss_kb: u64,
    /// RSS summed over the load generator's worker processes, KiB.
    pub workers_rss_kb: u64,
    /// redis-server RSS, KiB (0 without --redis-pid).
    pub redis_rss_kb: u64,
    /// Redis `used_memory`, KiB (its own accounting: subscriptions, clients, buffers).
    pub redis_used_kb: u64,
    /// Kernel slab, KiB (system-wide: both ends of every loopback connection).
    pub slab_kb: u64,
    /// Unreclaimable slab, KiB.
    pub sunreclaim_kb: u64,
    /// TCP buffer memory, KiB (system-wide).
    pub tcp_mem_kb: u64,
}

/// Growth from the baseline divided by open connections, bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PerConn {
    pub gateways_rss: f64,
    pub workers_rss: f64,
    pub redis_rss: f64,
    pub redis_used: f64,
    /// Both ends of a loopback pair.
    pub kernel_slab: f64,
    pub kernel_tcp_mem: f64,
    /// Everything above except `redis_used` (part of `redis_rss`).
    pub total: f64,
}

impl PerConn {
    /// `(to - from) / n` per component.
    #[must_use]
    pub fn between(from: &MemSample, to: &MemSample, n: u64) -> Self {
        if n == 0 {
            return Self::default();
        }
        let d = |a: u64, b: u64| (b as f64 - a as f64) * 1024.0 / n as f64;
        let mut p = Self {
            gateways_rss: d(from.gateways_rss_kb, to.gateways_rss_kb),
            workers_rss: d(from.workers_rss_kb, to.workers_rss_kb),
            redis_rss: d(from.redis_rss_kb, to.redis_rss_kb),
            redis_used: d(from.redis_used_kb, to.redis_used_kb),
            kernel_slab: d(from.slab_kb, to.slab_kb),
            kernel_tcp_mem: d(from.tcp_mem_kb, to.tcp_mem_kb),
            total: 0.0,
        };
        p.total = p.gateways_rss + p.workers_rss + p.redis_rss + p.kernel_slab + p.kernel_tcp_mem;
        p
    }
}

/// CPU of the idle fleet while clients send keep-alive pings.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IdleCpu {
    pub secs: f64,
    pub ping_interval_s: f64,
    pub pings_sent: u64,
    pub pongs: u64,
    pub gateways_cpu_ms: u64,
    /// Gateway CPU in cores (CPU seconds per second).
    pub gateways_cores: f64,
    /// Gateway CPU per ping answered, µs.
    pub gateways_us_per_ping: f64,
    pub redis_cpu_ms: u64,
    pub workers_cpu_ms: u64,
}

/// One notification to many users through the publish API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BroadcastReport {
    pub users: u64,
    /// Most `user_ids` per request.
    pub batch: u32,
    pub requests: u64,
    /// Requests answered with anything but 2xx (or not answered).
    pub request_errors: u64,
    pub last_status: u16,
    /// From the first request written to the last response read.
    pub publish_ms: f64,
    /// Connections expected to receive it (the users' open connections).
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    /// From the first request written to the last delivery.
    pub last_delivery_ms: Option<f64>,
    /// Request send time to arrival, per delivery.
    pub latency: Percentiles,
}

/// The whole capacity run.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub gateways: u32,
    pub baseline: MemSample,
    pub connected: MemSample,
    pub per_conn: PerConn,
    /// Redis `used_memory` growth per user (per-user subscriptions), bytes.
    pub redis_bytes_per_user: f64,
    pub idle: Option<IdleCpu>,
    pub latency: Option<PhaseReport>,
    pub broadcast: Option<BroadcastReport>,
    pub storm: Option<StormReport>,
    pub killed_pid: Option<u32>,
    /// Open descriptors of each gateway process once everything is connected, and of each
    /// survivor after the storm: how evenly SO_REUSEPORT spread the connections.
    pub fds_connected: Vec<u64>,
    pub fds_after_storm: Vec<u64>,
    pub end: MemSample,
    pub timeline: Vec<MemSample>,
}
