//! Memory and connections over time for capacity runs: one reading of every gateway process,
//! redis-server, the workers (their own figure, sent with progress) and the kernel per period,
//! taken as progress events arrive.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::{
    proto::Progress,
    report::capacity::MemSample,
    stats::sysstats::{kernel_sample, proc_sample},
};

/// What to read, and the readings so far.
pub struct Sampler {
    pub gateway_pids: Vec<u32>,
    pub redis_pid: Option<u32>,
    pub redis: Option<SocketAddr>,
    period: Duration,
    started: Instant,
    last: Option<Instant>,
    pub samples: Vec<MemSample>,
}

impl Sampler {
    #[must_use]
    pub fn new(
        gateway_pids: Vec<u32>,
        redis_pid: Option<u32>,
        redis: Option<SocketAddr>,
        period: Duration,
    ) -> Self {
        Self {
            gateway_pids,
            redis_pid,
            redis,
            period,
            started: Instant::now(),
            last: None,
            samples: Vec::new(),
        }
    }

    /// Takes a reading if a period has passed since the last.
    pub fn maybe_sample(&mut self, t: &Progress) {
        if self.last.is_some_and(|l| l.elapsed() < self.period) {
            return;
        }
        let s = self.read(t);
        self.samples.push(s);
    }

    /// A reading now (not recorded in the timeline).
    #[must_use]
    pub fn read(&mut self, t: &Progress) -> MemSample {
        self.last = Some(Instant::now());
        let gateways_rss_kb = self
            .gateway_pids
            .iter()
            .filter_map(|p| proc_sample(&p.to_string()).ok())
            .map(|s| s.rss_kb)
            .sum();
        let redis_rss_kb = self
            .redis_pid
            .and_then(|p| proc_sample(&p.to_string()).ok())
            .map_or(0, |s| s.rss_kb);
        let k = kernel_sample().unwrap_or_default();
        MemSample {
            t_s: self.started.elapsed().as_secs_f64(),
            open: t.open,
            gateways_rss_kb,
            workers_rss_kb: t.rss_kb,
            redis_rss_kb,
            redis_used_kb: self.redis.and_then(redis_used_memory).unwrap_or(0) / 1024,
            slab_kb: k.slab_kb,
            sunreclaim_kb: k.sunreclaim_kb,
            tcp_mem_kb: k.tcp_mem_kb,
        }
    }
}

/// Redis `INFO memory` `used_memory`, bytes (blocking, 500 ms at most).
#[must_use]
pub fn redis_used_memory(addr: SocketAddr) -> Option<u64> {
    let limit = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.write_all(b"INFO memory\r\n").ok()?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(v) = field(&buf, "used_memory:") {
            return Some(v);
        }
    }
    field(&buf, "used_memory:")
}

fn field(buf: &[u8], name: &str) -> Option<u64> {
    let text = std::str::from_utf8(buf).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].trim().parse().ok()
}

/// CPU time of processes, ms (those still running).
#[must_use]
pub fn cpu_ms(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| proc_sample(&p.to_string()).ok())
        .map(|s| s.cpu_ms)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_used_memory_lines() {
        let info = b"# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(field(info, "used_memory:"), Some(1_048_576));
        assert_eq!(field(b"# Memory\r\n", "used_memory:"), None);
    }
}
