//! Server and harness resource use read from `/proc`: a process's RSS and CPU time, and the
//! kernel's socket and slab memory (system-wide, so on loopback both ends of every connection).
//!
//! CPU times in `/proc/PID/stat` are in clock ticks of `USER_HZ`, which Linux fixes at 100 for
//! user space on every architecture this runs on.

use std::{fs, io};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Milliseconds per clock tick (`USER_HZ` = 100).
const MS_PER_TICK: u64 = 10;

/// Reading `/proc` failed.
#[derive(Debug, Error)]
pub enum StatError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("unexpected format in {0}")]
    Format(String),
}

fn read(path: &str) -> Result<String, StatError> {
    fs::read_to_string(path).map_err(|source| StatError::Read {
        path: path.to_owned(),
        source,
    })
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kb: u64,
    /// User + system CPU time of all its threads, ms.
    pub cpu_ms: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat` (`pid` may be `self`).
pub fn proc_sample(pid: &str) -> Result<ProcSample, StatError> {
    let status_path = format!("/proc/{pid}/status");
    let rss_kb = kb_field(&read(&status_path)?, "VmRSS:").unwrap_or(0);
    let stat_path = format!("/proc/{pid}/stat");
    let cpu_ms = parse_stat_cpu_ms(&read(&stat_path)?).ok_or(StatError::Format(stat_path))?;
    Ok(ProcSample { rss_kb, cpu_ms })
}

/// This process's CPU time in ms (0 if `/proc` is unreadable).
#[must_use]
pub fn self_cpu_ms() -> u64 {
    proc_sample("self").map(|s| s.cpu_ms).unwrap_or(0)
}

/// This process's resident set in KiB, from `/proc/self/statm` (cheap enough to read every
/// progress tick); 0 if unreadable.
#[must_use]
pub fn self_rss_kb() -> u64 {
    fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// utime + stime (fields 14 and 15) from a `/proc/PID/stat` line, in ms. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu_ms(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * MS_PER_TICK)
}

fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// One reading of kernel memory that grows with sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSample {
    /// TCP sockets in use (`/proc/net/sockstat` `TCP: inuse`), both ends on loopback.
    pub tcp_inuse: u64,
    /// Memory of TCP socket buffers (`TCP: mem`, pages), in KiB.
    pub tcp_mem_kb: u64,
    /// Kernel slab (`/proc/meminfo` `Slab`), KiB: socket, inode, dentry and epoll objects.
    pub slab_kb: u64,
    /// Unreclaimable part of the slab (`SUnreclaim`), KiB.
    pub sunreclaim_kb: u64,
}

/// Reads `/proc/net/sockstat` and `/proc/meminfo`.
pub fn kernel_sample() -> Result<KernelSample, StatError> {
    let (tcp_inuse, tcp_mem_pages) =
        parse_sockstat(&read("/proc/net/sockstat")?).ok_or(StatError::Format("sockstat".into()))?;
    let meminfo = read("/proc/meminfo")?;
    Ok(KernelSample {
        tcp_inuse,
        tcp_mem_kb: tcp_mem_pages * 4,
        slab_kb: kb_field(&meminfo, "Slab:").unwrap_or(0),
        sunreclaim_kb: kb_field(&meminfo, "SUnreclaim:").unwrap_or(0),
    })
}

/// `(inuse, mem)` from the `TCP:` line of `/proc/net/sockstat`.
fn parse_sockstat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse::<u64>().ok()
    };
    Some((field("inuse")?, field("mem")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ms(line), Some(2810));
    }

    #[test]
    fn parses_sockstat_and_meminfo() {
        let s =
            "sockets: used 300\nTCP: inuse 42 orphan 0 tw 3 alloc 50 mem 7\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat(s), Some((42, 7)));
        assert_eq!(
            kb_field("Slab:     123456 kB\nSUnreclaim: 5 kB\n", "SUnreclaim:"),
            Some(5)
        );
    }

    #[test]
    fn reads_own_process_and_kernel() {
        let me = proc_sample("self").unwrap();
        assert!(me.rss_kb > 0);
        let k = kernel_sample().unwrap();
        assert!(k.slab_kb > 0);
    }
}
