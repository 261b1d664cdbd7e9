//! Command-line interface: one subcommand per scenario, the shared connection/target flags, and
//! their validation (bad flags exit with code 64 before anything starts).

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

/// Load-test harness for chat4all-gateway and its peers (any server speaking the same protocol).
///
/// Clients connect to `ws://HOST:PORT/PATH?token=JWT` (HS256 tokens made from --jwt-secret for users
/// u0..uN-1); notifications are published to Redis channels `notifications:{user}` and must come
/// back as text frames. Clients are spread over worker processes (re-executions of this binary)
/// and over many 127.x.y.z source addresses. Every run stops by itself.
#[derive(Debug, Parser)]
#[command(name = "chat4all-loadtest", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N connections at a bounded rate, hold them, report connect rate, failures by cause and
    /// the server's memory per connection.
    Idle(IdleArgs),
    /// N connections plus a pipelined Redis publisher at --rate for --duration: latency
    /// percentiles, delivered msg/s, loss, reordering, CPU per 1,000 deliveries.
    Fanout(FanoutArgs),
    /// Raise the publish rate step by step; report the highest rate with zero loss and p99 under
    /// --p99-bound.
    Ramp(RampArgs),
    /// Connect N, run --restart-cmd, and time until every client is reconnected and receiving.
    ReconnectStorm(StormArgs),
    /// Connect and disconnect at --churn-rate while notifications flow to N stable clients.
    Churn(ChurnArgs),
    /// A capacity run over several gateway processes (bench/million.sh): connect all, idle with
    /// keep-alive pings, latency at a fixed rate, a broadcast through the publish API, and a
    /// reconnect storm after one gateway process is killed; memory and connections over time.
    Capacity(CapacityArgs),
    /// Recovery (issue 10): clients track offsets and reconnect with `since`; the gateway is
    /// restarted while notifications are published through the publish API.
    Recover(RecoverArgs),
    /// Internal: one worker process, driven over stdin/stdout by the coordinator.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Flags of the internal worker subcommand.
#[derive(Debug, Clone, Copy, Args)]
pub struct WorkerArgs {
    /// Pause before each wait for events, µs.
    #[arg(long, default_value_t = 0)]
    pub batch_us: u64,
}

/// Flags every scenario shares: the target, the clients, the outputs.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// WebSocket endpoint, `ws://` or `wss://` (the token is appended as `?token=`).
    #[arg(long, default_value = "ws://127.0.0.1:8085/notifications")]
    pub url: String,
    /// `wss://`: PEM file with the CA (or self-signed certificate) to trust.
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
    /// `wss://`: accept ANY server certificate. For benchmarks on loopback only: nothing is
    /// verified, so never point this at a server you do not run.
    #[arg(long)]
    pub tls_insecure: bool,
    /// `wss://`: the name sent as SNI and checked in the certificate (default: the URL's host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Clients track `offset`/`epoch` and reconnect with `since` (issue 10's recovery).
    #[arg(long)]
    pub recover: bool,
    /// HS256 secret the target verifies tokens with.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: String,
    /// Number of client connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub conns: u32,
    /// Connections per user (users are u0..u{conns/M - 1}, each with M connections; --conns is
    /// rounded up to a multiple of M).
    #[arg(long, default_value_t = 1)]
    pub conns_per_user: u32,
    /// Prefix of user ids.
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Connection attempts per second over all workers (0 = as fast as --connect-concurrency
    /// allows).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Handshakes in flight at once over all workers. Above the target's listen backlog (128 for
    /// a Rust std/tokio listener) SYNs get dropped and retried after a second.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: u32,
    /// Seconds allowed for TCP connect and for the HTTP upgrade, each.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Client source addresses: a range `127.0.1.1-127.0.1.16` or a comma list.
    #[arg(long, default_value = "127.0.1.1-127.0.1.16")]
    pub source_ips: String,
    /// Give every connection its own source port from this range (`1024-32767`), assigned from
    /// its global index over all source addresses, instead of letting the kernel search for a
    /// free ephemeral port. Past ~50% occupancy of an address's ports that search dominates the
    /// load generator's CPU (`__inet_check_established`): at a million connections, use this.
    /// Needs `--conns` <= addresses x ports.
    #[arg(long)]
    pub source_ports: Option<String>,
    /// Worker processes (default: enough for --conns-per-worker, at least one).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Most connections one worker holds (each process may open at most 20,000 descriptors).
    #[arg(long, default_value_t = 10_000)]
    pub conns_per_worker: u32,
    /// Redis the target subscribes to, for publishing (`host:port`).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// PID of the server, for its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write an SVG plot of latency percentiles over time here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Timeline bucket for latency over time, ms.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Hard cap on the whole run, seconds: whatever happens, the harness stops by then.
    #[arg(long, default_value_t = 900.0)]
    pub max_run_secs: f64,
    /// Workers pause this many µs before each wait for socket events, so one wake-up serves many
    /// sockets (context switches are the harness's main cost). Delivery latency is unaffected
    /// (kernel receive timestamps); handshake latency may read up to this much high. 0 = off.
    #[arg(long, default_value_t = 200)]
    pub batch_us: u64,
    /// Seed for user picks and jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Flags of the publisher.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Bytes of padding in each payload (`"pad":"xxx..."`).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Publish to every user in turn (round robin) instead of random users.
    #[arg(long)]
    pub all_users: bool,
    /// Seconds to wait after publishing stops for messages still in flight.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Closed loop (--rate 0): most expected deliveries in flight at once, over all workers.
    #[arg(long, default_value_t = 4000)]
    pub window: u64,
    /// Publish through the gateway's API (`http://HOST:PORT/v1/publish`, one request per
    /// notification, pipelined) instead of Redis `PUBLISH`.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Bearer key for the publish API.
    #[arg(long, env = "PUBLISH_API_KEY", hide_env_values = true)]
    pub publish_api_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds to hold the connections after the ramp.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Skip the final ping/pong check that every held connection is still alive.
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Notifications (PUBLISH commands) per second; 0 = closed loop, as fast as the target
    /// delivers with --window in flight.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Debug, Clone, Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// First rate, PUBLISH/s.
    #[arg(long, default_value_t = 5000.0)]
    pub start_rate: f64,
    /// Added per step.
    #[arg(long, default_value_t = 5000.0)]
    pub step_rate: f64,
    /// Last rate tried.
    #[arg(long, default_value_t = 200_000.0)]
    pub max_rate: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// A step passes with zero loss and p99 at most this many ms.
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound: f64,
    /// Keep going after the first failing step (default: stop there).
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Shell command (run with `sh -c`) that restarts the target; it should return once the new
    /// server is started (background it).
    #[arg(long)]
    pub restart_cmd: String,
    /// Seconds to wait for every client to be back and receiving.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// First reconnect delay, ms (doubles per failure; each wait is jittered uniformly in
    /// [delay/2, delay]).
    #[arg(long, default_value_t = 50)]
    pub backoff_min_ms: u64,
    /// Largest reconnect delay, ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Churning connections opened (and as many closed) per second.
    #[arg(long, default_value_t = 200.0)]
    pub churn_rate: f64,
    /// How long each churning connection stays open, ms.
    #[arg(long, default_value_t = 1000)]
    pub lifetime_ms: u64,
    /// Close churning connections with a TCP reset instead of a close frame and FIN.
    #[arg(long)]
    pub abrupt: bool,
    /// Notifications per second to the stable connections.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PIDs of every gateway process sharing the port, comma separated (RSS and CPU summed).
    #[arg(long, value_delimiter = ',', required = true)]
    pub server_pids: Vec<u32>,
    /// PID of redis-server, for its RSS and CPU.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// One gateway's publish API, `http://127.0.0.1:PORT/v1/publish`, for the broadcast.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Bearer key for the publish API.
    #[arg(long, env = "PUBLISH_API_KEY", hide_env_values = true)]
    pub publish_api_key: Option<String>,
    /// Users the broadcast goes to (0 = no broadcast).
    #[arg(long, default_value_t = 10_000)]
    pub broadcast_users: u32,
    /// Most `user_ids` per publish request (the API's cap).
    #[arg(long, default_value_t = 1000)]
    pub broadcast_batch: u32,
    /// Seconds to wait for the broadcast to arrive everywhere.
    #[arg(long, default_value_t = 60.0)]
    pub broadcast_timeout: f64,
    /// Seconds of idle with keep-alive pings (CPU of the idle fleet); 0 skips.
    #[arg(long, default_value_t = 60.0)]
    pub idle_secs: f64,
    /// Keep-alive interval per connection, seconds (the Python CLI pings every 30 s).
    #[arg(long, default_value_t = 30.0)]
    pub ping_interval: f64,
    /// Notifications per second to random users in the latency phase (0 skips it).
    #[arg(long, default_value_t = 1000.0)]
    pub latency_rate: f64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 20.0)]
    pub latency_secs: f64,
    /// Gateway process to SIGKILL for the reconnect storm (one of --server-pids; none: no storm).
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Seconds to wait for the killed process's clients to be back and receiving.
    #[arg(long, default_value_t = 120.0)]
    pub storm_timeout: f64,
    /// First reconnect delay, ms (doubles per failure, jittered in [d/2, d]).
    #[arg(long, default_value_t = 100)]
    pub backoff_min_ms: u64,
    /// Largest reconnect delay, ms.
    #[arg(long, default_value_t = 5000)]
    pub backoff_max_ms: u64,
    /// Memory/connections sample period for the timeline, ms.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Notifications per second (through the publish API) while the gateway restarts.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of publishing; the restart starts after a third of it.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Shell command that restarts the gateway (returns once the new one is started).
    #[arg(long)]
    pub restart_cmd: String,
    /// First reconnect delay, ms.
    #[arg(long, default_value_t = 50)]
    pub backoff_min_ms: u64,
    /// Largest reconnect delay, ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_max_ms: u64,
}

/// A flag value that makes no sense.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--url must look like ws://HOST:PORT/PATH or wss://HOST:PORT/PATH, got {0:?}")]
    Url(String),
    #[error("cannot resolve {0:?}")]
    Resolve(String),
    #[error("--source-ips: {0}")]
    SourceIps(String),
    #[error("{0}")]
    Invalid(String),
}

/// The parsed `--url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `wss://`.
    pub tls: bool,
    /// `host:port` as written, for the Host header.
    pub host: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Path without query, e.g. `/notifications`.
    pub path: String,
}

/// Parses `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH`.
pub fn parse_url(url: &str) -> Result<Endpoint, ConfigError> {
    let (tls, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(ConfigError::Url(url.into())),
    };
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    if host.is_empty() || path.contains('?') {
        return Err(ConfigError::Url(url.into()));
    }
    let host_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{}", if tls { 443 } else { 80 })
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|_| ConfigError::Resolve(host_port.clone()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| ConfigError::Resolve(host_port.clone()))?;
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(Endpoint {
        tls,
        host: host.to_owned(),
        addr,
        path,
    })
}

/// Parses `--source-ips`: `A-B` (inclusive IPv4 range) or `A,B,C`.
pub fn parse_source_ips(spec: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    let bad = |m: &str| ConfigError::SourceIps(format!("{m} in {spec:?}"));
    let ip = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("not an IPv4 address"))
    };
    let ips: Vec<Ipv4Addr> = if let Some((a, b)) = spec.split_once('-') {
        let (a, b) = (u32::from(ip(a)?), u32::from(ip(b)?));
        if b < a || b - a >= 65_536 {
            return Err(bad("empty or too large range"));
        }
        (a..=b).map(Ipv4Addr::from).collect()
    } else {
        spec.split(',').map(ip).collect::<Result<_, _>>()?
    };
    if ips.is_empty() {
        return Err(bad("no address"));
    }
    Ok(ips)
}

/// Parses `--source-ports`: `A-B`, inclusive, 1024 <= A <= B.
pub fn parse_port_range(spec: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "--source-ports must be A-B with 1024 <= A <= B, got {spec:?}"
        ))
    };
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a < 1024 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// Parses `host:port` for Redis.
pub fn parse_redis(spec: &str) -> Result<SocketAddr, ConfigError> {
    spec.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .ok_or_else(|| ConfigError::Resolve(spec.into()))
}

impl CommonArgs {
    /// Checks the flags that do not need the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.conns == 0 {
            return invalid("--conns must be at least 1");
        }
        if self.conns_per_user == 0 || self.conns_per_user > self.conns {
            return invalid("--conns-per-user must be between 1 and --conns");
        }
        if self.connect_rate < 0.0 || self.connect_concurrency == 0 {
            return invalid("--connect-rate must be >= 0 and --connect-concurrency >= 1");
        }
        if self.conns_per_worker == 0 || self.conns_per_worker > 19_000 {
            return invalid(
                "--conns-per-worker must be 1..=19000 (20,000 descriptors per process)",
            );
        }
        if self.workers == Some(0) {
            return invalid("--workers must be at least 1");
        }
        if self.interval_ms < 10 {
            return invalid("--interval-ms must be at least 10");
        }
        if self.batch_us > 10_000 {
            return invalid("--batch-us must be at most 10000");
        }
        if self.connect_timeout <= 0.0 || self.max_run_secs <= 0.0 {
            return invalid("--connect-timeout and --max-run-secs must be positive");
        }
        let ips = parse_source_ips(&self.source_ips)?;
        if let Some(spec) = &self.source_ports {
            let (a, b) = parse_port_range(spec)?;
            let room = ips.len() as u64 * (u64::from(b - a) + 1);
            if u64::from(self.users()) * u64::from(self.conns_per_user) > room {
                return Err(ConfigError::Invalid(format!(
                    "--source-ports: {} addresses x {} ports = {room} < --conns",
                    ips.len(),
                    b - a + 1
                )));
            }
        }
        let ep = parse_url(&self.url)?;
        if !ep.tls && (self.tls_insecure || self.tls_ca_file.is_some()) {
            return invalid("--tls-ca-file/--tls-insecure need a wss:// --url");
        }
        if ep.tls && !self.tls_insecure && self.tls_ca_file.is_none() {
            return invalid(
                "a wss:// --url needs --tls-ca-file (or --tls-insecure for benchmarks)",
            );
        }
        Ok(())
    }

    /// The TLS plan for a `wss://` URL.
    pub fn tls_plan(&self) -> Result<Option<crate::proto::TlsPlan>, ConfigError> {
        let ep = parse_url(&self.url)?;
        if !ep.tls {
            return Ok(None);
        }
        let host = ep
            .host
            .rsplit_once(':')
            .map_or(ep.host.as_str(), |(h, _)| h);
        Ok(Some(crate::proto::TlsPlan {
            ca_file: self.tls_ca_file.clone(),
            insecure: self.tls_insecure,
            server_name: self
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host.to_owned()),
        }))
    }

    /// Users in the run.
    #[must_use]
    pub fn users(&self) -> u32 {
        self.conns.div_ceil(self.conns_per_user)
    }

    /// Worker processes to start.
    #[must_use]
    pub fn worker_count(&self) -> u32 {
        self.workers
            .unwrap_or_else(|| self.conns.div_ceil(self.conns_per_worker))
            .min(self.users())
    }
}

/// Checks a rate/duration pair.
pub fn validate_run(rate: f64, duration: f64) -> Result<(), ConfigError> {
    if rate < 0.0 || duration <= 0.0 {
        return Err(ConfigError::Invalid(
            "--rate must be >= 0 and --duration > 0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_ranges() {
        let e = parse_url("ws://127.0.0.1:8085/notifications").unwrap();
        assert_eq!(
            (e.host.as_str(), e.path.as_str()),
            ("127.0.0.1:8085", "/notifications")
        );
        assert_eq!(e.addr.port(), 8085);
        assert!(parse_url("http://x/y").is_err());
        let s = parse_url("wss://127.0.0.1/n").unwrap();
        assert!(s.tls && s.addr.port() == 443);
        assert!(parse_url("ws://127.0.0.1:1/a?b").is_err());
        let ips = parse_source_ips("127.0.1.1-127.0.1.16").unwrap();
        assert_eq!(ips.len(), 16);
        assert_eq!(ips[15], Ipv4Addr::new(127, 0, 1, 16));
        assert_eq!(parse_source_ips("127.0.0.1,127.0.0.2").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
        assert_eq!(parse_port_range("1024-32767").unwrap(), (1024, 32767));
        assert!(parse_port_range("80-90").is_err() && parse_port_range("9-").is_err());
    }

    #[test]
    fn sizes_workers_and_users() {
        let cli = Cli::parse_from([
            "x",
            "idle",
            "--jwt-secret",
            "s",
            "--conns",
            "19500",
            "--conns-per-user",
            "2",
        ]);
        let Command::Idle(a) = cli.command else {
            panic!()
        };
        a.common.validate().unwrap();
        assert_eq!(a.common.users(), 9750);
        assert_eq!(a.common.worker_count(), 2);
    }
}
