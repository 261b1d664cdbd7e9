//! Gateway configuration: one [`Config`] read from command-line flags and environment variables.
//!
//! Every setting has a long flag and an environment variable (the flag in SCREAMING_CASE, except
//! `--dev`/`GATEWAY_DEV` and `--drain-period`/`DRAIN_SECONDS`), a documented default, and a doc
//! comment that `--help` shows. The names are a compatibility contract with an existing
//! deployment: do not rename them.
//!
//! Startup order: [`Config::from_args_and_env`] (syntax: each value parses), then
//! [`Config::validate`] (ranges and cross-field rules), both before any socket is bound. Any
//! failure is printed as one line per problem naming the variable and the flag, and the process
//! exits with [`EXIT_CONFIG`]. `--check-config` stops after validation and prints
//! [`Config::redacted_summary`].
//!
//! Secrets (`JWT_SECRET`, `PUBLISH_API_KEY`, the password in `REDIS_URL`) never appear in `--help`,
//! in error messages, in the summary, or in `Debug` output.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::OnceLock,
    time::Duration,
};

use clap::{ArgAction, CommandFactory, Parser, ValueEnum};

use crate::proto::jwt::Algorithm;

mod history;

/// Exit code for a configuration error (`EX_USAGE` from `sysexits.h`).
pub const EXIT_CONFIG: i32 = 64;

/// Upper bound for `SHARDS`: more shards than this is a typo, not a machine.
pub const MAX_SHARDS: usize = 1024;

/// Lower bound for `FD_RESERVE`.
const MIN_FD_RESERVE: usize = 16;

/// Upper bound for `PUBLISH_MAX_USERS`.
pub const MAX_PUBLISH_USERS: usize = 10_000;

const MIB: usize = 1024 * 1024;

/// A configuration problem. `Display` is one line per problem, naming the variable and flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One setting has a bad value, or conflicts with another setting.
    #[error("invalid {var} ({flag}): {message}")]
    Invalid {
        /// Environment variable name (or the flag, for flag-only settings).
        var: &'static str,
        /// Long flag, with its leading `--`.
        flag: &'static str,
        /// What is wrong, never echoing a secret value.
        message: String,
    },
    /// A command-line problem not tied to one setting (for example an unknown flag).
    #[error("invalid command line: {message}")]
    Cli {
        /// clap's first error line, without its `error: ` prefix.
        message: String,
    },
    /// Several problems found by [`Config::validate`], each on its own line.
    #[error("{}", join_lines(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The individual problems (one element unless this is [`ConfigError::Several`]).
    pub fn problems(&self) -> &[ConfigError] {
        match self {
            ConfigError::Several(all) => all,
            single => std::slice::from_ref(single),
        }
    }
}

fn join_lines(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Which io driver the shards run on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only; startup fails if it is unavailable.
    IoUring,
    /// epoll only (the legacy driver).
    Epoll,
}

impl IoDriver {
    /// The value as written in `IO_DRIVER`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IoDriver::Auto => "auto",
            IoDriver::IoUring => "io-uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

/// How the broker subscribes to Redis.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisSubscription {
    /// One `PSUBSCRIBE <prefix>*`: constant subscription cost, every event reaches the gateway.
    Pattern,
    /// One `SUBSCRIBE <prefix><user>` per connected user: only local users' events arrive.
    PerUser,
}

impl RedisSubscription {
    /// The value as written in `REDIS_SUBSCRIPTION`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RedisSubscription::Pattern => "pattern",
            RedisSubscription::PerUser => "per-user",
        }
    }
}

/// Log line format on stderr.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// The value as written in `LOG_FORMAT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// chat4all-gateway: a thread-per-core WebSocket push gateway for Chat4All notifications.
///
/// Every option but --check-config can also be set through the environment variable shown beside
/// it; a flag wins over its variable. Durations take humantime strings such as 10s, 500ms or 1m.
#[derive(Parser, Clone)]
#[command(name = "chat4all-gateway", version, about)]
pub struct Config {
    /// Public WebSocket listen port (0 = ephemeral, for tests).
    #[arg(long, env = "WEBSOCKET_PORT", default_value_t = 8085, value_parser = parse_u16)]
    pub websocket_port: u16,

    /// A second WebSocket port serving plain ws:// while WEBSOCKET_PORT serves wss:// (needs
    /// TLS_CERT_FILE; unset: no plain port). For clients that cannot do TLS.
    #[arg(long, env = "WEBSOCKET_PLAIN_PORT", value_parser = parse_u16)]
    pub websocket_plain_port: Option<u16>,

    /// PEM certificate chain (leaf first) for wss:// on WEBSOCKET_PORT; with TLS_KEY_FILE.
    ///
    /// Unset: WEBSOCKET_PORT serves plain ws://. Re-read on SIGHUP with the key: new handshakes
    /// get the new certificate, established connections keep their session. Memory cost: about
    /// 3.7 KB more per idle connection than plain ws:// (docs/PERFORMANCE.md).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of TLS_CERT_FILE's first certificate.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Session-ticket keys shared by every process that reads this file, one per line as 64 hex
    /// digits (`openssl rand -hex 32`); the first encrypts new tickets, every listed key
    /// decrypts. Re-read on SIGHUP. Unset: random keys per process (resumption then works only
    /// with the same process).
    #[arg(long, env = "TLS_TICKET_KEY_FILE")]
    pub tls_ticket_key_file: Option<PathBuf>,

    /// Internal port for metrics, health checks and the publish API (0 = ephemeral).
    ///
    /// Kept apart from the public port so it can be firewalled off.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9095, value_parser = parse_u16)]
    pub metrics_port: u16,

    /// Address the WebSocket listener binds.
    #[arg(long, env = "BIND_HOST", value_parser = parse_ip)]
    #[arg(default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_host: IpAddr,

    /// Address the internal (metrics, health, publish) listener binds.
    ///
    /// Loopback by default: the publish API can push a notification to any user. Any other
    /// address requires PUBLISH_API_KEY.
    #[arg(long, env = "METRICS_BIND_HOST", value_parser = parse_ip)]
    #[arg(default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub metrics_bind_host: IpAddr,

    /// Concurrent connections on the internal port (4 to FD_RESERVE / 2).
    ///
    /// When full, the oldest connection not in the middle of a publish is closed to make room,
    /// so health probes and publishers always get in and the port never eats the descriptors
    /// the shards need.
    #[arg(long, env = "CONTROL_MAX_CONNECTIONS", default_value_t = 32, value_parser = parse_usize)]
    pub control_max_connections: usize,

    /// Time an internal-port client has to send its request headers, and then its whole body
    /// (at most 300s). Also closes keep-alive connections idle for this long.
    #[arg(long, env = "CONTROL_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub control_read_timeout: Duration,

    /// HTTP path clients upgrade on (starts with '/', no query, no whitespace).
    #[arg(long, env = "WS_PATH", default_value = "/notifications")]
    pub ws_path: String,

    /// HMAC secret for HS* tokens (at least 32 bytes). Required unless --dev or RS256/ES256.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HMAC secret instead of JWT_SECRET (one trailing newline is ignored).
    ///
    /// Re-read on SIGHUP, so the secret can be rotated without a restart.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Token signature algorithm: HS256, HS384, HS512, RS256 or ES256 (case-insensitive).
    ///
    /// Tokens signed with any other algorithm are refused, which blocks algorithm-confusion
    /// attacks.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256", value_parser = parse_jwt_algorithm)]
    pub jwt_algorithm: Algorithm,

    /// PEM public key file for RS256/ES256 tokens. Re-read on SIGHUP.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Refuse tokens without an `exp` claim (true/false).
    ///
    /// A token without expiry stays valid forever if it leaks.
    #[arg(long, env = "JWT_REQUIRE_EXP", default_value = "true")]
    #[arg(action = ArgAction::Set, value_name = "BOOL", value_parser = parse_bool)]
    pub jwt_require_exp: bool,

    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Close a connection (code 4001) when its token's `exp` (plus JWT_LEEWAY) passes, unless
    /// the client sent a fresh token with `{"type":"refresh","token":"..."}` (true/false).
    ///
    /// Off by default: existing clients (the Python CLI) never refresh. Checked once per sweep
    /// period (at most 1 s late). Memory when on: ~40 B per connection with an `exp`.
    #[arg(long, env = "TOKEN_EXPIRY_CLOSE", default_value = "false")]
    #[arg(action = ArgAction::Set, value_name = "BOOL", value_parser = parse_bool)]
    pub token_expiry_close: bool,

    /// Development mode: generate a random JWT secret when JWT_SECRET is unset.
    ///
    /// The generated secret is logged at startup so a developer can sign test tokens; never
    /// use in production.
    #[arg(long, env = "GATEWAY_DEV", action = ArgAction::SetTrue, value_parser = parse_bool)]
    pub dev: bool,

    /// Validate the configuration, print the effective settings and exit (0 if valid, 64 if not).
    #[arg(long)]
    pub check_config: bool,

    /// Number of shard threads [default: available parallelism, at most 1024].
    ///
    /// Each shard owns one core's connections, queue and event loop.
    #[arg(long, env = "SHARDS", value_parser = parse_usize)]
    pub shards: Option<usize>,

    /// Shard io driver: auto, io-uring or epoll.
    #[arg(long, env = "IO_DRIVER", value_enum, default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,

    /// Pin each shard thread to its own core (true/false).
    ///
    /// Keeps a shard's cache warm; turn off when sharing the machine with other busy processes.
    #[arg(long, env = "PIN_CORES", default_value = "true")]
    #[arg(action = ArgAction::Set, value_name = "BOOL", value_parser = parse_bool)]
    pub pin_cores: bool,

    /// Maximum concurrent WebSocket connections (0 = open-files limit minus FD_RESERVE).
    ///
    /// Memory cost: each connection holds its socket buffers plus up to OUTBOX_MAX_BYTES queued.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0, value_parser = parse_usize)]
    pub max_connections: usize,

    /// File descriptors kept free for listeners, Redis, logs and the internal port.
    ///
    /// Used when MAX_CONNECTIONS is 0, so accept() never exhausts the process's descriptors.
    #[arg(long, env = "FD_RESERVE", default_value_t = 64, value_parser = parse_usize)]
    pub fd_reserve: usize,

    /// Maximum concurrent connections for one user; beyond it the user's oldest connection is
    /// closed with 1008, so a reconnecting device always gets in.
    ///
    /// Bounds what one leaked token can consume.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 8, value_parser = parse_usize)]
    pub max_connections_per_user: usize,

    /// Time allowed from TCP accept to a completed, authenticated WebSocket upgrade (at most 300s).
    ///
    /// Stops slow-loris clients from holding sockets open.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Upgrades one source IP address may have in progress at once (0: no limit); more are
    /// answered 429 at once, without taking a connection slot.
    ///
    /// Stops one address (a slow-loris) from holding every MAX_CONNECTIONS slot in handshakes.
    #[arg(long, env = "MAX_HANDSHAKES_PER_IP", default_value_t = 64, value_parser = parse_usize)]
    pub max_handshakes_per_ip: usize,

    /// Silence before the server pings; a further IDLE_TIMEOUT without any frame closes.
    ///
    /// Detects dead peers that never sent a FIN.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time to wait for the peer's close frame after sending ours.
    #[arg(long, env = "CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Largest client-to-server WebSocket message, in bytes (125 to 16 MiB).
    ///
    /// Memory cost: up to this much per connection while a client message is being assembled.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4096, value_parser = parse_usize)]
    pub max_message_bytes: usize,

    /// Largest HTTP upgrade request, in bytes (1024 to 65536).
    ///
    /// Memory cost: one buffer of this size per connection during its handshake only.
    #[arg(long, env = "MAX_HANDSHAKE_BYTES", default_value_t = 8192, value_parser = parse_usize)]
    pub max_handshake_bytes: usize,

    /// Messages queued for one connection before it counts as a slow consumer and is closed.
    #[arg(long, env = "OUTBOX_MAX_MESSAGES", default_value_t = 256, value_parser = parse_usize)]
    pub outbox_max_messages: usize,

    /// Bytes queued for one connection before it counts as a slow consumer (at least 1024).
    ///
    /// Memory cost: the worst case per slow connection; total worst case is this times
    /// MAX_CONNECTIONS.
    #[arg(long, env = "OUTBOX_MAX_BYTES", default_value_t = 262_144, value_parser = parse_usize)]
    pub outbox_max_bytes: usize,

    /// Slots in each shard's inbound queue (16 to 16Mi).
    ///
    /// Memory cost: about capacity * 64 B per shard, allocated at startup. When full, new
    /// notifications for that shard are dropped and counted (reason queue_full).
    #[arg(long, env = "SHARD_QUEUE_CAPACITY", default_value_t = 65_536, value_parser = parse_usize)]
    pub shard_queue_capacity: usize,

    /// listen(2) backlog for the WebSocket port (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "LISTEN_BACKLOG", default_value_t = 65_535, value_parser = parse_u32)]
    pub listen_backlog: u32,

    /// API key the publish endpoint requires as a Bearer token (unset or empty: no check, which
    /// is allowed only while METRICS_BIND_HOST is a loopback address).
    #[arg(long, env = "PUBLISH_API_KEY", hide_env_values = true)]
    pub publish_api_key: Option<String>,

    /// Largest publish API request body, in bytes.
    ///
    /// Memory cost: about one body of this size per in-flight publish request.
    #[arg(long, env = "MAX_PUBLISH_BYTES", default_value_t = 1_048_576, value_parser = parse_usize)]
    pub max_publish_bytes: usize,

    /// Most user ids one publish request may address (1 to 10000); more is refused with 413.
    #[arg(long, env = "PUBLISH_MAX_USERS", default_value_t = 1000, value_parser = parse_usize)]
    pub publish_max_users: usize,

    /// Most bytes one publish request may fan out: payload bytes x user ids (at least
    /// MAX_PUBLISH_BYTES); more is refused with 413.
    ///
    /// With Redis, each gateway subscribed by pattern receives all of it at once in its pub/sub
    /// output buffer, which Redis cuts at 32 MB by default (client-output-buffer-limit pubsub).
    #[arg(long, env = "PUBLISH_MAX_FANOUT_BYTES", default_value_t = 8 * MIB, value_parser = parse_usize)]
    pub publish_max_fanout_bytes: usize,

    /// Body bytes all publish requests in progress may hold together (at least
    /// MAX_PUBLISH_BYTES); a request that would exceed it is refused with 429.
    ///
    /// Memory cost: bounds the publish API's memory to about this much.
    #[arg(long, env = "PUBLISH_MAX_INFLIGHT_BYTES", default_value_t = 16 * MIB, value_parser = parse_usize)]
    pub publish_max_inflight_bytes: usize,

    /// How long a publish waits for Redis's answer (or, without Redis, for the shards') before
    /// answering 504 outcome_unknown (at most 60s).
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Redis host to subscribe to (unset, with REDIS_URL and REDIS_SENTINELS unset: no Redis).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,

    /// Redis port, used with REDIS_HOST.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379, value_parser = parse_u16)]
    pub redis_port: u16,

    /// Redis URL (redis:// or rediss://), instead of REDIS_HOST; may hold a password.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Channel prefix; a user's notifications arrive on <prefix><user id>.
    #[arg(long, env = "REDIS_CHANNEL_PREFIX", default_value = "notifications:")]
    pub redis_channel_prefix: String,

    /// Subscription mode: pattern (one PSUBSCRIBE) or per-user (one SUBSCRIBE per local user).
    #[arg(long, env = "REDIS_SUBSCRIPTION", value_enum)]
    #[arg(default_value_t = RedisSubscription::Pattern)]
    pub redis_subscription: RedisSubscription,

    /// Redis Sentinel addresses, "host:port,host:port"; requires REDIS_MASTER_NAME.
    #[arg(long, env = "REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,

    /// Name of the master the sentinels watch.
    #[arg(long, env = "REDIS_MASTER_NAME")]
    pub redis_master_name: Option<String>,

    /// Password for the Redis server reached through REDIS_HOST or the sentinels (REDIS_URL
    /// carries its own).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Per-user mode: how long after a user's last connection closes before its channel is
    /// unsubscribed, so reconnect churn does not thrash Redis.
    #[arg(long, env = "REDIS_UNSUBSCRIBE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub redis_unsubscribe_grace: Duration,

    /// How long Redis may stay silent while the subscriber waits for a reply before the
    /// connection is given up and re-made (1s to 1h). Shorter stalls lose nothing.
    #[arg(long, env = "REDIS_LIVENESS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub redis_liveness_timeout: Duration,

    /// Per-user mode: how long an upgrade may wait for its user's channel subscription before
    /// it is refused with 503 and Retry-After (1ms to 60s).
    #[arg(long, env = "SUBSCRIBE_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub subscribe_wait: Duration,

    /// Record notifications per user so a reconnecting client gets what it missed (issue 10):
    /// notifications carry "offset" and "epoch", a client reconnects with since and epoch.
    /// Off: no fields, no recording, as before.
    #[arg(long, env = "HISTORY_ENABLED", default_value = "true")]
    #[arg(action = ArgAction::Set, value_name = "BOOL", value_parser = parse_bool)]
    pub history_enabled: bool,

    /// Notifications kept per user (1 to 10000). A replay is also capped at OUTBOX_MAX_BYTES
    /// (a longer gap answers recovered:false).
    ///
    /// Memory cost: with Redis, this many entries per user in Redis (see docs/operations.md);
    /// single node, in the gateway, within HISTORY_MAX_BYTES.
    #[arg(long, env = "HISTORY_SIZE", default_value_t = 100, value_parser = parse_usize)]
    pub history_size: usize,

    /// How long a user's history is kept after the last notification recorded or read for that
    /// user (1s to 7d): the window within which a reconnecting client recovers.
    #[arg(long, env = "HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// With Redis: prefix of the history keys, <prefix>{<user id>}:s (a stream) and
    /// <prefix>{<user id>}:m (a hash), and of <prefix>idem:<key> for idempotency keys.
    #[arg(long, env = "HISTORY_KEY_PREFIX", default_value = "history:")]
    pub history_key_prefix: String,

    /// Single node: bytes of history the gateway may hold for all users together (at least
    /// 1 MiB); beyond it the users written to least recently lose theirs first.
    ///
    /// Memory cost: bounds the in-memory history to about this much.
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value_t = 256 * MIB, value_parser = parse_usize)]
    pub history_max_bytes: usize,

    /// Notifications an upgrade with history may buffer while its user's history is read from
    /// Redis (1 to 65536); more and the upgrade is refused with 503 (the client retries with the
    /// same since).
    #[arg(long, env = "HISTORY_LIVE_BUFFER", default_value_t = 256, value_parser = parse_usize)]
    pub history_live_buffer: usize,

    /// With Redis: how long an upgrade may wait for its user's history to be read before it is
    /// refused with 503 and Retry-After (1ms to 60s).
    #[arg(long, env = "HISTORY_READ_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub history_read_timeout: Duration,

    /// Log format on stderr: text or json. Verbosity comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// File holding the log filter (RUST_LOG syntax), used instead of RUST_LOG and re-read on
    /// SIGHUP, so verbosity can change without a restart.
    #[arg(long, env = "LOG_FILTER_FILE")]
    pub log_filter_file: Option<PathBuf>,

    /// Time allowed on SIGTERM for connections to close before exit: seconds ("10") or a duration.
    ///
    /// Connections get a 1001 close frame; those still open at the end are dropped.
    #[arg(long = "drain-period", env = "DRAIN_SECONDS")]
    #[arg(default_value = "10s", value_parser = parse_drain)]
    pub drain_period: Duration,
}

impl Config {
    /// Parses argv + env. Help/version: print and exit 0 (clap does it). Any other parse error
    /// is one line naming the env var and flag.
    pub fn from_args_and_env() -> Result<Config, ConfigError> {
        Self::try_parse_from(std::env::args_os())
    }

    /// Like [`Config::from_args_and_env`] with explicit arguments (the first is the program
    /// name); the environment is still read. `--help`/`--version` still print and exit.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut config = <Config as Parser>::try_parse_from(args).map_err(|err| {
            use clap::error::ErrorKind;
            match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
                _ => from_clap(&err),
            }
        })?;
        config.empty_means_unset();
        Ok(config)
    }

    /// `REDIS_HOST=` (empty, as compose files render `${REDIS_HOST:-}`) means unset, for the
    /// optional settings whose absence has a meaning. `JWT_SECRET=` stays set, so validation
    /// reports it as too short rather than as missing.
    fn empty_means_unset(&mut self) {
        for field in [
            &mut self.redis_host,
            &mut self.redis_url,
            &mut self.redis_sentinels,
            &mut self.redis_master_name,
            &mut self.redis_password,
            &mut self.publish_api_key,
        ] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *field = None;
            }
        }
        for path in [
            &mut self.jwt_public_key_file,
            &mut self.jwt_secret_file,
            &mut self.log_filter_file,
            &mut self.tls_cert_file,
            &mut self.tls_key_file,
            &mut self.tls_ticket_key_file,
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
    }

    /// Cross-field and range checks, before any socket is bound. Reports every problem found,
    /// one line each, naming the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |id: &str, message: String| {
            let (var, flag) = names_of(id);
            problems.push(ConfigError::Invalid { var, flag, message });
        };
        self.validate_jwt(&mut bad);
        self.validate_tls(&mut bad);
        if self.websocket_port == self.metrics_port && self.websocket_port != 0 {
            let port = self.metrics_port;
            bad(
                "metrics_port",
                format!("{port} is also WEBSOCKET_PORT; use two different ports"),
            );
        }
        if let Err(message) = check_ws_path(&self.ws_path) {
            bad("ws_path", message);
        }
        self.validate_control(&mut bad);
        // (argument id, value, minimum, maximum)
        let ranges = [
            ("shards", self.shards.unwrap_or(1), 1, MAX_SHARDS),
            (
                "max_connections_per_user",
                self.max_connections_per_user,
                1,
                usize::MAX,
            ),
            ("max_message_bytes", self.max_message_bytes, 125, 16 * MIB),
            (
                "max_handshake_bytes",
                self.max_handshake_bytes,
                1024,
                65_536,
            ),
            (
                "outbox_max_messages",
                self.outbox_max_messages,
                1,
                usize::MAX,
            ),
            ("outbox_max_bytes", self.outbox_max_bytes, 1024, usize::MAX),
            (
                "shard_queue_capacity",
                self.shard_queue_capacity,
                16,
                16 * MIB,
            ),
            (
                "listen_backlog",
                self.listen_backlog as usize,
                1,
                usize::MAX,
            ),
            ("fd_reserve", self.fd_reserve, MIN_FD_RESERVE, usize::MAX),
            (
                "publish_max_users",
                self.publish_max_users,
                1,
                MAX_PUBLISH_USERS,
            ),
        ];
        for (id, value, min, max) in ranges {
            if value < min {
                bad(id, format!("{value} is below the minimum {min}"));
            } else if value > max {
                bad(id, format!("{value} is above the maximum {max}"));
            }
        }
        for (id, value, max) in [
            ("handshake_timeout", self.handshake_timeout, Some(300)),
            ("idle_timeout", self.idle_timeout, None),
            ("close_timeout", self.close_timeout, None),
            ("control_read_timeout", self.control_read_timeout, Some(300)),
            ("publish_timeout", self.publish_timeout, Some(60)),
        ] {
            if value.is_zero() {
                bad(id, "must be greater than 0".into());
            } else if let Some(max) = max.filter(|&m| value > Duration::from_secs(m)) {
                bad(id, format!("must be at most {max}s"));
            }
        }
        if let Some(path) = &self.log_filter_file
            && let Err(e) = std::fs::read_to_string(path)
        {
            bad(
                "log_filter_file",
                format!("cannot read '{}': {e}", path.display()),
            );
        }
        for (id, value, min, max) in [
            (
                "redis_liveness_timeout",
                self.redis_liveness_timeout,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            ),
            (
                "subscribe_wait",
                self.subscribe_wait,
                Duration::from_millis(1),
                Duration::from_secs(60),
            ),
        ] {
            duration_in_range(id, value, min, max, &mut bad);
        }
        self.validate_redis(&mut bad);
        self.validate_history(&mut bad);
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Several(problems)),
        }
    }

    /// The internal port: secure by default, and unable to take the shards' descriptors.
    fn validate_control(&self, bad: &mut impl FnMut(&str, String)) {
        let host = self.metrics_bind_host;
        if !host.to_canonical().is_loopback() && self.publish_api_key.is_none() {
            bad(
                "metrics_bind_host",
                format!(
                    "{host} is not a loopback address and PUBLISH_API_KEY (--publish-api-key) is \
                     unset: anyone who can reach METRICS_PORT could publish to any user; set \
                     PUBLISH_API_KEY, or bind METRICS_BIND_HOST to 127.0.0.1"
                ),
            );
        }
        let body = self.max_publish_bytes;
        for (id, value) in [
            ("publish_max_fanout_bytes", self.publish_max_fanout_bytes),
            (
                "publish_max_inflight_bytes",
                self.publish_max_inflight_bytes,
            ),
        ] {
            if value < body {
                bad(
                    id,
                    format!("{value} is below MAX_PUBLISH_BYTES ({body}), the largest body"),
                );
            }
        }
        let (max, reserve) = (self.control_max_connections, self.fd_reserve);
        if max < 4 {
            bad(
                "control_max_connections",
                format!("{max} is below the minimum 4"),
            );
        } else if max > reserve / 2 && reserve >= MIN_FD_RESERVE {
            // (An FD_RESERVE below its own minimum is reported once, as itself.)
            bad(
                "control_max_connections",
                format!(
                    "{max} is above half of FD_RESERVE ({reserve}): the internal port's \
                     connections must leave the descriptor reserve its share; raise FD_RESERVE \
                     (--fd-reserve) with it"
                ),
            );
        }
    }

    fn validate_jwt(&self, bad: &mut impl FnMut(&str, String)) {
        let alg = self.jwt_algorithm;
        if let (Some(_), Some(_)) = (&self.jwt_secret, &self.jwt_secret_file) {
            bad(
                "jwt_secret_file",
                "JWT_SECRET (--jwt-secret) is also set; set one, not both".into(),
            );
            return;
        }
        if let Some(min) = alg.min_secret_bytes() {
            let from_file = self.jwt_secret_file.as_ref().map(|path| {
                read_secret_file(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))
            });
            match (&self.jwt_secret, from_file) {
                (_, Some(Err(message))) => bad("jwt_secret_file", message),
                (_, Some(Ok(secret))) if secret.len() < min => bad(
                    "jwt_secret_file",
                    format!(
                        "the secret must be at least {min} bytes for {alg} \
                         (RFC 7518 section 3.2), got {}",
                        secret.len()
                    ),
                ),
                (_, Some(Ok(_))) => {}
                (None, None) if !self.dev => bad(
                    "jwt_secret",
                    format!(
                        "required for {alg} (or JWT_SECRET_FILE, or --dev / GATEWAY_DEV=true \
                         for a generated development secret)"
                    ),
                ),
                (Some(s), None) if s.len() < min => bad(
                    "jwt_secret",
                    format!(
                        "must be at least {min} bytes for {alg} \
                         (RFC 7518 section 3.2), got {}",
                        s.len()
                    ),
                ),
                _ => {}
            }
        } else {
            match &self.jwt_public_key_file {
                None => bad(
                    "jwt_public_key_file",
                    format!("required when JWT_ALGORITHM is {alg}"),
                ),
                Some(path) => {
                    let readable = std::fs::metadata(path).and_then(|m| match m.is_file() {
                        true => std::fs::File::open(path).map(drop),
                        false => Err(std::io::Error::other("not a regular file")),
                    });
                    if let Err(e) = readable {
                        bad(
                            "jwt_public_key_file",
                            format!("cannot read '{}': {e}", path.display()),
                        );
                    }
                }
            }
        }
    }

    /// The TLS files are read and checked here, before any bind, by the same code a start and
    /// a SIGHUP reload use (`tls::Credentials::load`, `tls::TicketKeys::load`).
    fn validate_tls(&self, bad: &mut impl FnMut(&str, String)) {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => {
                if self.tls_ticket_key_file.is_some() {
                    bad(
                        "tls_ticket_key_file",
                        "needs TLS_CERT_FILE and TLS_KEY_FILE (wss://)".into(),
                    );
                }
                if self.websocket_plain_port.is_some() {
                    bad(
                        "websocket_plain_port",
                        "needs TLS_CERT_FILE and TLS_KEY_FILE: without TLS, WEBSOCKET_PORT \
                         already serves ws://"
                            .into(),
                    );
                }
                return;
            }
            (Some(_), None) => bad("tls_key_file", "required when TLS_CERT_FILE is set".into()),
            (None, Some(_)) => bad("tls_cert_file", "required when TLS_KEY_FILE is set".into()),
            (Some(cert), Some(key)) => {
                if let Err(err) = crate::tls::Credentials::load(cert, key) {
                    bad(err.variable(), err.to_string());
                }
            }
        }
        if let Some(path) = &self.tls_ticket_key_file
            && let Err(err) = crate::tls::TicketKeys::load(path)
        {
            bad("tls_ticket_key_file", err.to_string());
        }
        if let Some(port) = self.websocket_plain_port
            && port != 0
            && (port == self.websocket_port || port == self.metrics_port)
        {
            bad(
                "websocket_plain_port",
                format!("{port} is also WEBSOCKET_PORT or METRICS_PORT; use its own port"),
            );
        }
    }

    fn validate_redis(&self, bad: &mut impl FnMut(&str, String)) {
        if let Some(url) = &self.redis_url {
            // The URL may hold a password: never echo it.
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                bad("redis_url", "must start with redis:// or rediss://".into());
            }
            if self.redis_host.is_some() {
                bad(
                    "redis_url",
                    "REDIS_HOST (--redis-host) is also set; set one, not both".into(),
                );
            }
        }
        if self.redis_host.is_some() && self.redis_port == 0 {
            bad("redis_port", "must not be 0 when REDIS_HOST is set".into());
        }
        if let Some(list) = &self.redis_sentinels {
            if let Err(message) = parse_sentinels(list) {
                bad("redis_sentinels", message);
            }
            if self.redis_master_name.as_deref().is_none_or(str::is_empty) {
                bad(
                    "redis_master_name",
                    "required when REDIS_SENTINELS is set".into(),
                );
            }
        }
        if self.redis_channel_prefix.contains(['*', '?', '[', ']']) {
            bad(
                "redis_channel_prefix",
                "must not contain glob characters * ? [ ]".into(),
            );
        }
    }

    /// Shard thread count: SHARDS, or the available parallelism (at most [`MAX_SHARDS`]).
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
        })
    }

    /// True when any of REDIS_HOST, REDIS_URL or REDIS_SENTINELS is set.
    pub fn redis_enabled(&self) -> bool {
        self.redis_host.is_some() || self.redis_url.is_some() || self.redis_sentinels.is_some()
    }

    /// Effective settings as (ENV NAME, value) pairs for the startup log and `--check-config`;
    /// secrets are shown as `<redacted>` (or `<unset>`).
    pub fn redacted_summary(&self) -> Vec<(&'static str, String)> {
        let n = |id: &str| names_of(id).0;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| UNSET.into());
        let secret = |v: &Option<String>| (if v.is_some() { REDACTED } else { UNSET }).to_string();
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(|| UNSET.into(), |p| p.display().to_string())
        };
        let shards = match self.shards {
            Some(s) => s.to_string(),
            None => format!("{} (available parallelism)", self.shard_count()),
        };
        let max_conn = match self.max_connections {
            0 => "0 (open-files limit minus FD_RESERVE)".to_string(),
            m => m.to_string(),
        };
        vec![
            (n("websocket_port"), self.websocket_port.to_string()),
            (
                n("websocket_plain_port"),
                self.websocket_plain_port
                    .map_or_else(|| UNSET.into(), |p| p.to_string()),
            ),
            (n("tls_cert_file"), path(&self.tls_cert_file)),
            (n("tls_key_file"), path(&self.tls_key_file)),
            (n("tls_ticket_key_file"), path(&self.tls_ticket_key_file)),
            (n("metrics_port"), self.metrics_port.to_string()),
            (n("bind_host"), self.bind_host.to_string()),
            (n("metrics_bind_host"), self.metrics_bind_host.to_string()),
            (
                n("control_max_connections"),
                self.control_max_connections.to_string(),
            ),
            (n("control_read_timeout"), dur(self.control_read_timeout)),
            (n("ws_path"), self.ws_path.clone()),
            (n("jwt_secret"), secret(&self.jwt_secret)),
            (n("jwt_secret_file"), path(&self.jwt_secret_file)),
            (n("jwt_algorithm"), self.jwt_algorithm.to_string()),
            (n("jwt_public_key_file"), path(&self.jwt_public_key_file)),
            (n("jwt_require_exp"), self.jwt_require_exp.to_string()),
            (n("jwt_leeway"), dur(self.jwt_leeway)),
            (n("token_expiry_close"), self.token_expiry_close.to_string()),
            (n("dev"), self.dev.to_string()),
            (n("shards"), shards),
            (n("io_driver"), self.io_driver.as_str().into()),
            (n("pin_cores"), self.pin_cores.to_string()),
            (n("max_connections"), max_conn),
            (n("fd_reserve"), self.fd_reserve.to_string()),
            (
                n("max_connections_per_user"),
                self.max_connections_per_user.to_string(),
            ),
            (n("handshake_timeout"), dur(self.handshake_timeout)),
            (
                n("max_handshakes_per_ip"),
                self.max_handshakes_per_ip.to_string(),
            ),
            (n("idle_timeout"), dur(self.idle_timeout)),
            (n("close_timeout"), dur(self.close_timeout)),
            (n("max_message_bytes"), self.max_message_bytes.to_string()),
            (
                n("max_handshake_bytes"),
                self.max_handshake_bytes.to_string(),
            ),
            (
                n("outbox_max_messages"),
                self.outbox_max_messages.to_string(),
            ),
            (n("outbox_max_bytes"), self.outbox_max_bytes.to_string()),
            (
                n("shard_queue_capacity"),
                self.shard_queue_capacity.to_string(),
            ),
            (n("listen_backlog"), self.listen_backlog.to_string()),
            (n("publish_api_key"), secret(&self.publish_api_key)),
            (n("max_publish_bytes"), self.max_publish_bytes.to_string()),
            (n("publish_max_users"), self.publish_max_users.to_string()),
            (
                n("publish_max_fanout_bytes"),
                self.publish_max_fanout_bytes.to_string(),
            ),
            (
                n("publish_max_inflight_bytes"),
                self.publish_max_inflight_bytes.to_string(),
            ),
            (n("publish_timeout"), dur(self.publish_timeout)),
            (n("redis_host"), opt(&self.redis_host)),
            (n("redis_port"), self.redis_port.to_string()),
            (
                n("redis_url"),
                self.redis_url
                    .as_deref()
                    .map_or_else(|| UNSET.into(), redact_url),
            ),
            (n("redis_channel_prefix"), self.redis_channel_prefix.clone()),
            (
                n("redis_subscription"),
                self.redis_subscription.as_str().into(),
            ),
            (n("redis_sentinels"), opt(&self.redis_sentinels)),
            (n("redis_master_name"), opt(&self.redis_master_name)),
            (n("redis_password"), secret(&self.redis_password)),
            (
                n("redis_unsubscribe_grace"),
                dur(self.redis_unsubscribe_grace),
            ),
            (
                n("redis_liveness_timeout"),
                dur(self.redis_liveness_timeout),
            ),
            (n("subscribe_wait"), dur(self.subscribe_wait)),
            (n("history_enabled"), self.history_enabled.to_string()),
            (n("history_size"), self.history_size.to_string()),
            (n("history_ttl"), dur(self.history_ttl)),
            (n("history_key_prefix"), self.history_key_prefix.clone()),
            (n("history_max_bytes"), self.history_max_bytes.to_string()),
            (
                n("history_live_buffer"),
                self.history_live_buffer.to_string(),
            ),
            (n("history_read_timeout"), dur(self.history_read_timeout)),
            (n("log_format"), self.log_format.as_str().into()),
            (n("log_filter_file"), path(&self.log_filter_file)),
            (n("drain_period"), dur(self.drain_period)),
        ]
    }

    /// Every environment variable the binary reads, in `--help` order (taken from clap's
    /// command definition, so it cannot drift from the parser).
    pub fn env_var_names() -> Vec<&'static str> {
        arg_names().iter().filter_map(|a| a.env).collect()
    }
}

/// Debug shows the redacted summary, so `?config` in a log line never leaks a secret.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.redacted_summary())
            .entry(&"CHECK_CONFIG", &self.check_config)
            .finish()
    }
}

const REDACTED: &str = "<redacted>";
const UNSET: &str = "<unset>";

/// Reads a `JWT_SECRET_FILE`: its bytes, without one trailing newline (`\n` or `\r\n`), so
/// that `openssl rand -base64 48 > file` works. Validation and every (re)load use this, so they
/// agree on what the secret is.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    Ok(secret)
}

/// Parses `REDIS_SENTINELS` ("host:port,host:port") into addresses.
pub fn parse_sentinels(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let parsed = item
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty() && !host.contains(char::is_whitespace))
            .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
            .filter(|(_, port)| *port != 0);
        match parsed {
            Some(addr) => out.push(addr),
            None => {
                return Err(format!(
                    "'{item}' is not host:port (expected \"host:port,host:port\")"
                ));
            }
        }
    }
    Ok(out)
}

/// Replaces a URL's credentials (everything between `://` and the last `@`) and query.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((before, _)) => format!("{before}?{REDACTED}"),
        None => rest,
    };
    match scheme {
        "" => rest,
        s => format!("{s}://{rest}"),
    }
}

fn check_ws_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' must start with '/'"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "'{path}' must not contain a query ('?') or fragment ('#')"
        ));
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{path:?} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// Names of one argument, with `'static` lifetimes so errors can carry them cheaply.
struct ArgNames {
    /// clap argument id (the field name).
    id: &'static str,
    /// Environment variable, if the argument has one.
    env: Option<&'static str>,
    /// Long flag with its leading `--`.
    flag: &'static str,
}

/// Argument names read once from clap's command. The strings are leaked once per process
/// (about 40 short strings) so that they are `'static`.
fn arg_names() -> &'static [ArgNames] {
    static NAMES: OnceLock<Vec<ArgNames>> = OnceLock::new();
    fn leak(s: &str) -> &'static str {
        Box::leak(s.to_owned().into_boxed_str())
    }
    NAMES.get_or_init(|| {
        Config::command()
            .get_arguments()
            .filter_map(|a| {
                Some(ArgNames {
                    id: leak(a.get_id().as_str()),
                    env: a.get_env().and_then(|e| e.to_str()).map(leak),
                    flag: leak(&format!("--{}", a.get_long()?)),
                })
            })
            .collect()
    })
}

/// (env var, flag) for an argument id; a flag-only argument uses its flag for both.
fn names_of(id: &str) -> (&'static str, &'static str) {
    match arg_names().iter().find(|a| a.id == id) {
        Some(a) => (a.env.unwrap_or(a.flag), a.flag),
        None => {
            debug_assert!(false, "unknown config argument id {id}");
            ("<unknown>", "<unknown>")
        }
    }
}

/// Turns a clap error into one line naming the variable and flag.
fn from_clap(err: &clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // InvalidArg looks like "--websocket-port <WEBSOCKET_PORT>".
    let names = text(ContextKind::InvalidArg)
        .and_then(|arg| arg.split_whitespace().next())
        .and_then(|flag| arg_names().iter().find(|a| a.flag == flag));
    let (Some(names), ErrorKind::ValueValidation | ErrorKind::InvalidValue) = (names, err.kind())
    else {
        let rendered = err.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
        return ConfigError::Cli { message };
    };
    let valid = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) if !valid.is_empty() => valid.join(", "),
        _ => String::new(),
    };
    let value = text(ContextKind::InvalidValue).filter(|v| !v.is_empty());
    let message = match (value, err.kind()) {
        // Flag given without a value.
        (None, ErrorKind::InvalidValue) if valid.is_empty() => "a value is required".into(),
        (None, ErrorKind::InvalidValue) => format!("a value is required (one of {valid})"),
        // Not one of a fixed set (value enums).
        (Some(value), ErrorKind::InvalidValue) => format!("'{value}' is not one of {valid}"),
        // Our value parser's message.
        _ => {
            std::error::Error::source(err).map_or_else(|| "invalid value".into(), |e| e.to_string())
        }
    };
    ConfigError::Invalid {
        var: names.env.unwrap_or(names.flag),
        flag: names.flag,
        message,
    }
}

macro_rules! uint_parser {
    ($name:ident, $t:ty, $what:expr) => {
        fn $name(s: &str) -> Result<$t, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("'{s}' is not {}", $what))
        }
    };
}
uint_parser!(parse_u16, u16, "a number in 0..=65535");
uint_parser!(parse_u32, u32, "a number in 0..=4294967295");
uint_parser!(parse_usize, usize, "a whole number (0 or more)");

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (true/false, 1/0, yes/no)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("'{s}' is not a duration (examples: 10s, 500ms, 1m)"))
}

/// DRAIN_SECONDS: a bare integer is seconds (the existing deployment's form), else humantime.
fn parse_drain(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|_| format!("'{s}' is not a number of seconds or a duration such as 10s")),
    }
}

fn parse_jwt_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse::<Algorithm>().map_err(|_| {
        let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        format!("'{s}' is not one of {}", all.join(", "))
    })
}

/// Reports `id` through `bad` when `value` is outside `min..=max` (durations shown as `1m 30s`).
fn duration_in_range(
    id: &str,
    value: Duration,
    min: Duration,
    max: Duration,
    bad: &mut impl FnMut(&str, String),
) {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if value < min {
        bad(
            id,
            format!("{} is below the minimum {}", show(value), show(min)),
        );
    } else if value > max {
        bad(
            id,
            format!("{} is above the maximum {}", show(value), show(max)),
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    use super::*;

    /// Set (to the child test's name) in the environment of a child test process.
    const CHILD_VAR: &str = "CHAT4ALL_CONFIG_TEST_CHILD";

    /// Runs test `test` of this module in a child process of this test binary whose environment
    /// is exactly `env`. Environment tests run this way because `set_var` is `unsafe` in the
    /// 2024 edition and races with other test threads reading the environment.
    fn run_in_child(test: &str, env: &[(&str, &str)]) {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        let name = format!("{module}::{test}");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--nocapture", "--test-threads", "1"])
            .env_clear()
            .env(CHILD_VAR, test)
            .envs(env.iter().copied())
            .output()
            .expect("spawn the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("test {name} ... ok")),
            "child {name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// True only inside the child process started for `test`.
    fn in_child(test: &str) -> bool {
        std::env::var(CHILD_VAR).as_deref() == Ok(test)
    }

    /// The parser with every `env` removed: flag-only parsing, immune to the test environment.
    fn flags_only(args: &[&str]) -> Result<Config, ConfigError> {
        let cmd = Config::command().mut_args(|a| a.env(None::<&'static str>));
        let argv = std::iter::once("chat4all-gateway").chain(args.iter().copied());
        let matches = cmd.try_get_matches_from(argv).map_err(|e| from_clap(&e))?;
        let mut config = Config::from_arg_matches(&matches).map_err(|e| from_clap(&e))?;
        config.empty_means_unset();
        Ok(config)
    }

    fn flags(args: &[&str]) -> Config {
        flags_only(args).unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A configuration that passes validation.
    fn valid() -> Config {
        let config = flags(&["--jwt-secret", SECRET]);
        config.validate().unwrap();
        config
    }

    fn assert_defaults(c: &Config) {
        assert_eq!(c.websocket_port, 8085);
        assert_eq!(c.metrics_port, 9095);
        assert_eq!(c.bind_host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.metrics_bind_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.control_max_connections, 32);
        assert_eq!(c.control_read_timeout, Duration::from_secs(10));
        assert_eq!(c.jwt_secret_file, None);
        assert_eq!(c.ws_path, "/notifications");
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.jwt_algorithm, Algorithm::HS256);
        assert_eq!(c.jwt_public_key_file, None);
        assert!(c.jwt_require_exp);
        assert_eq!(c.jwt_leeway, Duration::from_secs(30));
        assert!(!c.token_expiry_close);
        assert_eq!(c.max_handshakes_per_ip, 64);
        assert!(!c.dev);
        assert!(!c.check_config);
        assert_eq!(c.shards, None);
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert!(c.pin_cores);
        assert_eq!(c.max_connections, 0);
        assert_eq!(c.fd_reserve, 64);
        assert_eq!(c.max_connections_per_user, 8);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.close_timeout, Duration::from_secs(5));
        assert_eq!(c.max_message_bytes, 4096);
        assert_eq!(c.max_handshake_bytes, 8192);
        assert_eq!(c.outbox_max_messages, 256);
        assert_eq!(c.outbox_max_bytes, 262_144);
        assert_eq!(c.shard_queue_capacity, 65_536);
        assert_eq!(c.listen_backlog, 65_535);
        assert_eq!(c.publish_api_key, None);
        assert_eq!(c.max_publish_bytes, 1_048_576);
        assert_eq!(c.publish_max_users, 1000);
        assert_eq!(c.publish_max_fanout_bytes, 8 * MIB);
        assert_eq!(c.publish_max_inflight_bytes, 16 * MIB);
        assert_eq!(c.publish_timeout, Duration::from_secs(2));
        assert_eq!(c.log_filter_file, None);
        assert_eq!(c.redis_host, None);
        assert_eq!(c.redis_port, 6379);
        assert_eq!(c.redis_url, None);
        assert_eq!(c.redis_channel_prefix, "notifications:");
        assert_eq!(c.redis_subscription, RedisSubscription::Pattern);
        assert_eq!(c.redis_sentinels, None);
        assert_eq!(c.redis_master_name, None);
        assert_eq!(c.redis_liveness_timeout, Duration::from_secs(10));
        assert_eq!(c.subscribe_wait, Duration::from_secs(3));
        assert!(c.history_enabled);
        assert_eq!(c.history_size, 100);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!(c.history_key_prefix, "history:");
        assert_eq!(c.history_max_bytes, 256 * MIB);
        assert_eq!(c.history_live_buffer, 256);
        assert_eq!(c.history_read_timeout, Duration::from_secs(2));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.drain_period, Duration::from_secs(10));
        assert!(!c.redis_enabled());
    }

    #[test]
    fn clap_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults() {
        assert_defaults(&flags(&[]));
    }

    #[test]
    fn defaults_with_empty_environment() {
        run_in_child("child_defaults", &[]);
    }

    #[test]
    fn child_defaults() {
        if in_child("child_defaults") {
            assert_defaults(&Config::try_parse_from(["chat4all-gateway"]).unwrap());
        }
    }

    /// Every variable with a non-default value.
    const ENV: &[(&str, &str)] = &[
        ("WEBSOCKET_PORT", "1234"),
        ("WEBSOCKET_PLAIN_PORT", "1236"),
        ("TLS_CERT_FILE", "/etc/tls/cert.pem"),
        ("TLS_KEY_FILE", "/etc/tls/key.pem"),
        ("TLS_TICKET_KEY_FILE", "/etc/tls/tickets"),
        ("METRICS_PORT", "1235"),
        ("BIND_HOST", "127.0.0.1"),
        ("METRICS_BIND_HOST", "::1"),
        ("CONTROL_MAX_CONNECTIONS", "20"),
        ("CONTROL_READ_TIMEOUT", "3s"),
        ("WS_PATH", "/ws"),
        ("JWT_SECRET", "env-secret-0123456789abcdef0123456789"),
        ("JWT_SECRET_FILE", "/etc/jwt-secret"),
        ("JWT_ALGORITHM", "hs512"),
        ("JWT_PUBLIC_KEY_FILE", "/etc/key.pem"),
        ("JWT_REQUIRE_EXP", "no"),
        ("JWT_LEEWAY", "2s"),
        ("TOKEN_EXPIRY_CLOSE", "true"),
        ("MAX_HANDSHAKES_PER_IP", "5"),
        ("GATEWAY_DEV", "yes"),
        ("SHARDS", "3"),
        ("IO_DRIVER", "io-uring"),
        ("PIN_CORES", "0"),
        ("MAX_CONNECTIONS", "1000"),
        ("FD_RESERVE", "100"),
        ("MAX_CONNECTIONS_PER_USER", "2"),
        ("HANDSHAKE_TIMEOUT", "3s"),
        ("IDLE_TIMEOUT", "1m"),
        ("CLOSE_TIMEOUT", "500ms"),
        ("MAX_MESSAGE_BYTES", "2048"),
        ("MAX_HANDSHAKE_BYTES", "4096"),
        ("OUTBOX_MAX_MESSAGES", "16"),
        ("OUTBOX_MAX_BYTES", "65536"),
        ("SHARD_QUEUE_CAPACITY", "1024"),
        ("LISTEN_BACKLOG", "128"),
        ("PUBLISH_API_KEY", "env-publish-key"),
        ("MAX_PUBLISH_BYTES", "2048"),
        ("PUBLISH_MAX_USERS", "50"),
        ("PUBLISH_MAX_FANOUT_BYTES", "4096"),
        ("PUBLISH_MAX_INFLIGHT_BYTES", "8192"),
        ("PUBLISH_TIMEOUT", "750ms"),
        ("REDIS_HOST", "redis.internal"),
        ("REDIS_PORT", "6380"),
        ("REDIS_URL", "redis://:env-redis-password@r:6379"),
        ("REDIS_CHANNEL_PREFIX", "n:"),
        ("REDIS_SUBSCRIPTION", "per-user"),
        ("REDIS_SENTINELS", "s1:26379,s2:26379"),
        ("REDIS_MASTER_NAME", "mymaster"),
        ("REDIS_PASSWORD", "env-redis-pass"),
        ("REDIS_UNSUBSCRIBE_GRACE", "2s"),
        ("REDIS_LIVENESS_TIMEOUT", "30s"),
        ("SUBSCRIBE_WAIT", "1500ms"),
        ("HISTORY_ENABLED", "off"),
        ("HISTORY_SIZE", "10"),
        ("HISTORY_TTL", "1m"),
        ("HISTORY_KEY_PREFIX", "h:"),
        ("HISTORY_MAX_BYTES", "2097152"),
        ("HISTORY_LIVE_BUFFER", "8"),
        ("HISTORY_READ_TIMEOUT", "250ms"),
        ("LOG_FORMAT", "json"),
        ("LOG_FILTER_FILE", "/etc/log-filter"),
        ("DRAIN_SECONDS", "7"),
    ];

    #[test]
    fn every_env_var_is_read() {
        let mut names: Vec<&str> = ENV.iter().map(|(k, _)| *k).collect();
        let mut expected = Config::env_var_names();
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected, "ENV must cover every variable");
        run_in_child("child_env_reads", ENV);
    }

    #[test]
    fn child_env_reads() {
        if !in_child("child_env_reads") {
            return;
        }
        let c = Config::try_parse_from(["chat4all-gateway"]).unwrap();
        assert_eq!(c.websocket_port, 1234);
        assert_eq!(c.websocket_plain_port, Some(1236));
        assert_eq!(c.tls_cert_file, Some(PathBuf::from("/etc/tls/cert.pem")));
        assert_eq!(c.tls_key_file, Some(PathBuf::from("/etc/tls/key.pem")));
        assert_eq!(
            c.tls_ticket_key_file,
            Some(PathBuf::from("/etc/tls/tickets"))
        );
        assert_eq!(c.metrics_port, 1235);
        assert_eq!(c.bind_host.to_string(), "127.0.0.1");
        assert_eq!(c.metrics_bind_host.to_string(), "::1");
        assert_eq!(c.control_max_connections, 20);
        assert_eq!(c.control_read_timeout, Duration::from_secs(3));
        assert_eq!(c.jwt_secret_file, Some(PathBuf::from("/etc/jwt-secret")));
        assert_eq!(c.log_filter_file, Some(PathBuf::from("/etc/log-filter")));
        assert_eq!(c.publish_max_users, 50);
        assert_eq!(c.publish_max_fanout_bytes, 4096);
        assert_eq!(c.publish_max_inflight_bytes, 8192);
        assert_eq!(c.publish_timeout, Duration::from_millis(750));
        assert_eq!(c.ws_path, "/ws");
        assert_eq!(
            c.jwt_secret.as_deref(),
            Some("env-secret-0123456789abcdef0123456789")
        );
        assert_eq!(c.jwt_algorithm, Algorithm::HS512);
        assert_eq!(c.jwt_public_key_file, Some(PathBuf::from("/etc/key.pem")));
        assert!(!c.jwt_require_exp);
        assert_eq!(c.jwt_leeway, Duration::from_secs(2));
        assert!(c.token_expiry_close);
        assert_eq!(c.max_handshakes_per_ip, 5);
        assert!(c.dev);
        assert_eq!(c.shards, Some(3));
        assert_eq!(c.shard_count(), 3);
        assert_eq!(c.io_driver, IoDriver::IoUring);
        assert!(!c.pin_cores);
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.fd_reserve, 100);
        assert_eq!(c.max_connections_per_user, 2);
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.close_timeout, Duration::from_millis(500));
        assert_eq!(c.max_message_bytes, 2048);
        assert_eq!(c.max_handshake_bytes, 4096);
        assert_eq!(c.outbox_max_messages, 16);
        assert_eq!(c.outbox_max_bytes, 65536);
        assert_eq!(c.shard_queue_capacity, 1024);
        assert_eq!(c.listen_backlog, 128);
        assert_eq!(c.publish_api_key.as_deref(), Some("env-publish-key"));
        assert_eq!(c.max_publish_bytes, 2048);
        assert_eq!(c.redis_host.as_deref(), Some("redis.internal"));
        assert_eq!(c.redis_port, 6380);
        assert_eq!(
            c.redis_url.as_deref(),
            Some("redis://:env-redis-password@r:6379")
        );
        assert_eq!(c.redis_channel_prefix, "n:");
        assert_eq!(c.redis_subscription, RedisSubscription::PerUser);
        assert_eq!(c.redis_sentinels.as_deref(), Some("s1:26379,s2:26379"));
        assert_eq!(c.redis_password.as_deref(), Some("env-redis-pass"));
        assert_eq!(c.redis_unsubscribe_grace, Duration::from_secs(2));
        assert_eq!(c.redis_liveness_timeout, Duration::from_secs(30));
        assert_eq!(c.subscribe_wait, Duration::from_millis(1500));
        assert!(!c.history_enabled);
        assert_eq!(c.history_size, 10);
        assert_eq!(c.history_ttl, Duration::from_secs(60));
        assert_eq!(c.history_key_prefix, "h:");
        assert_eq!(c.history_max_bytes, 2 * MIB);
        assert_eq!(c.history_live_buffer, 8);
        assert_eq!(c.history_read_timeout, Duration::from_millis(250));
        assert_eq!(c.redis_master_name.as_deref(), Some("mymaster"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.drain_period, Duration::from_secs(7));

        // A flag wins over its variable.
        let c = Config::try_parse_from(["chat4all-gateway", "--websocket-port", "1"]).unwrap();
        assert_eq!(c.websocket_port, 1);

        // --help shows plain values but hides secrets.
        let help = Config::command().render_long_help().to_string();
        assert!(help.contains("WEBSOCKET_PORT=1234"), "{help}");
        for secret in ["env-secret", "env-publish-key", "env-redis-password"] {
            assert!(!help.contains(secret), "--help leaks {secret}");
        }
    }

    #[test]
    fn env_parse_errors_name_var_and_flag() {
        run_in_child("child_env_errors", &[("WEBSOCKET_PORT", "abc")]);
    }

    #[test]
    fn child_env_errors() {
        if in_child("child_env_errors") {
            let err = Config::try_parse_from(["chat4all-gateway"]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid WEBSOCKET_PORT (--websocket-port): 'abc' is not a number in 0..=65535"
            );
        }
    }

    #[test]
    fn empty_optional_env_means_unset() {
        let env = ["REDIS_HOST", "REDIS_URL", "PUBLISH_API_KEY", "JWT_SECRET"].map(|k| (k, ""));
        run_in_child("child_empty_env", &env);
    }

    #[test]
    fn child_empty_env() {
        if in_child("child_empty_env") {
            let c = Config::try_parse_from(["chat4all-gateway"]).unwrap();
            assert_eq!((c.redis_host, c.redis_url), (None, None));
            assert_eq!(c.publish_api_key, None);
            assert_eq!(
                c.jwt_secret.as_deref(),
                Some(""),
                "an empty secret stays set"
            );
        }
    }

    #[test]
    fn flag_parse_errors_are_one_line_naming_var_and_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--websocket-port", "abc"],
                "invalid WEBSOCKET_PORT (--websocket-port): 'abc' is not a number in 0..=65535",
            ),
            (
                &["--metrics-port", "70000"],
                "invalid METRICS_PORT (--metrics-port): '70000' is not a number in 0..=65535",
            ),
            (
                &["--bind-host", "localhost"],
                "invalid BIND_HOST (--bind-host): 'localhost'",
            ),
            (
                &["--shards=-1"],
                "invalid SHARDS (--shards): '-1' is not a whole number",
            ),
            (
                &["--idle-timeout", "10"],
                "invalid IDLE_TIMEOUT (--idle-timeout): '10'",
            ),
            (
                &["--io-driver", "kqueue"],
                "invalid IO_DRIVER (--io-driver): 'kqueue' is not one of",
            ),
            (
                &["--log-format", "xml"],
                "invalid LOG_FORMAT (--log-format): 'xml' is not one of",
            ),
            (
                &["--pin-cores", "maybe"],
                "invalid PIN_CORES (--pin-cores): 'maybe'",
            ),
            (
                &["--jwt-algorithm", "none"],
                "invalid JWT_ALGORITHM (--jwt-algorithm): 'none'",
            ),
            (
                &["--drain-period", "soon"],
                "invalid DRAIN_SECONDS (--drain-period): 'soon'",
            ),
            (
                &["--no-such-flag"],
                "invalid command line: unexpected argument '--no-such-flag'",
            ),
            (
                &["--websocket-port"],
                "invalid WEBSOCKET_PORT (--websocket-port): a value is required",
            ),
            (
                &["--io-driver"],
                "invalid IO_DRIVER (--io-driver): a value is required (one of auto, io-uring, \
                 epoll)",
            ),
        ];
        for (args, expected) in cases {
            let msg = flags_only(args).unwrap_err().to_string();
            assert!(msg.starts_with(expected), "{args:?}: got {msg:?}");
            assert!(!msg.contains('\n'), "{args:?}: not one line: {msg:?}");
        }
    }

    #[test]
    fn drain_seconds_accepts_integer_or_duration() {
        for (value, secs) in [("10", 10), ("10s", 10), ("0", 0), ("1m30s", 90)] {
            assert_eq!(
                flags(&["--drain-period", value]).drain_period.as_secs(),
                secs
            );
        }
        assert_eq!(
            flags(&["--drain-period", "250ms"]).drain_period,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn booleans_and_enums_parse() {
        for v in ["true", "1", "yes", "on", "TRUE"] {
            assert!(flags(&["--jwt-require-exp", v]).jwt_require_exp, "{v}");
        }
        for v in ["false", "0", "no", "off", "No"] {
            assert!(!flags(&["--pin-cores", v]).pin_cores, "{v}");
        }
        assert!(flags(&["--dev"]).dev);
        assert_eq!(flags(&["--io-driver", "epoll"]).io_driver, IoDriver::Epoll);
        assert_eq!(
            flags(&["--jwt-algorithm", "es256"]).jwt_algorithm,
            Algorithm::ES256
        );
        assert!(flags(&["--check-config"]).check_config);
    }

    /// Applies `mutate` to a valid config and expects exactly one problem naming `var`.
    fn expect_invalid(var: &str, fragment: &str, mutate: impl FnOnce(&mut Config)) {
        let mut c = valid();
        mutate(&mut c);
        let err = c.validate().expect_err(var);
        let msg = err.to_string();
        assert_eq!(err.problems().len(), 1, "{msg}");
        let (_, flag) = names_of(&var.to_ascii_lowercase());
        assert!(
            msg.starts_with(&format!("invalid {var} ({flag}): ")),
            "{msg}"
        );
        assert!(msg.contains(fragment), "{msg:?} lacks {fragment:?}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn validation_errors_name_their_variable() {
        let dir = env!("CARGO_MANIFEST_DIR");
        expect_invalid("JWT_SECRET", "required", |c| c.jwt_secret = None);
        expect_invalid("JWT_SECRET", "at least 32 bytes", |c| {
            c.jwt_secret = Some("short".into())
        });
        expect_invalid("JWT_SECRET", "at least 64 bytes for HS512", |c| {
            c.jwt_algorithm = Algorithm::HS512;
            c.jwt_secret = Some("x".repeat(48));
        });
        expect_invalid("JWT_PUBLIC_KEY_FILE", "required", |c| {
            c.jwt_algorithm = Algorithm::RS256
        });
        expect_invalid("JWT_PUBLIC_KEY_FILE", "cannot read", |c| {
            c.jwt_algorithm = Algorithm::ES256;
            c.jwt_public_key_file = Some(PathBuf::from("/nonexistent/key.pem"));
        });
        expect_invalid("JWT_PUBLIC_KEY_FILE", "not a regular file", |c| {
            c.jwt_algorithm = Algorithm::RS256;
            c.jwt_public_key_file = Some(PathBuf::from(dir));
        });
        expect_invalid("METRICS_PORT", "also WEBSOCKET_PORT", |c| {
            (c.websocket_port, c.metrics_port) = (9000, 9000);
        });
        expect_invalid("WS_PATH", "start with '/'", |c| c.ws_path = "ws".into());
        expect_invalid("WS_PATH", "query", |c| c.ws_path = "/ws?x=1".into());
        expect_invalid("WS_PATH", "whitespace", |c| c.ws_path = "/w s".into());
        expect_invalid("SHARDS", "minimum 1", |c| c.shards = Some(0));
        expect_invalid("SHARDS", "maximum 1024", |c| c.shards = Some(1025));
        expect_invalid("MAX_CONNECTIONS_PER_USER", "minimum", |c| {
            c.max_connections_per_user = 0
        });
        expect_invalid("HANDSHAKE_TIMEOUT", "greater than 0", |c| {
            c.handshake_timeout = Duration::ZERO;
        });
        expect_invalid("HANDSHAKE_TIMEOUT", "at most 300s", |c| {
            c.handshake_timeout = Duration::from_secs(301);
        });
        expect_invalid("IDLE_TIMEOUT", "greater than 0", |c| {
            c.idle_timeout = Duration::ZERO
        });
        expect_invalid("CLOSE_TIMEOUT", "greater than 0", |c| {
            c.close_timeout = Duration::ZERO
        });
        expect_invalid("MAX_MESSAGE_BYTES", "minimum 125", |c| {
            c.max_message_bytes = 124
        });
        expect_invalid("MAX_MESSAGE_BYTES", "maximum", |c| {
            c.max_message_bytes = 16 * MIB + 1
        });
        expect_invalid("MAX_HANDSHAKE_BYTES", "minimum", |c| {
            c.max_handshake_bytes = 1023
        });
        expect_invalid("MAX_HANDSHAKE_BYTES", "maximum", |c| {
            c.max_handshake_bytes = 65_537
        });
        expect_invalid("OUTBOX_MAX_MESSAGES", "minimum", |c| {
            c.outbox_max_messages = 0
        });
        expect_invalid("OUTBOX_MAX_BYTES", "minimum 1024", |c| {
            c.outbox_max_bytes = 1023
        });
        expect_invalid("SHARD_QUEUE_CAPACITY", "minimum", |c| {
            c.shard_queue_capacity = 15
        });
        expect_invalid("SHARD_QUEUE_CAPACITY", "maximum", |c| {
            c.shard_queue_capacity = 16 * MIB + 1;
        });
        expect_invalid("LISTEN_BACKLOG", "minimum", |c| c.listen_backlog = 0);
        expect_invalid("FD_RESERVE", "minimum 16", |c| c.fd_reserve = 15);
        expect_invalid("REDIS_URL", "redis://", |c| {
            c.redis_url = Some("http://r".into())
        });
        expect_invalid("REDIS_URL", "REDIS_HOST", |c| {
            c.redis_url = Some("redis://r".into());
            c.redis_host = Some("r".into());
        });
        expect_invalid("REDIS_PORT", "REDIS_HOST", |c| {
            c.redis_host = Some("r".into());
            c.redis_port = 0;
        });
        expect_invalid("REDIS_SENTINELS", "host:port", |c| {
            c.redis_sentinels = Some("s1:26379,s2".into());
            c.redis_master_name = Some("m".into());
        });
        expect_invalid("REDIS_MASTER_NAME", "REDIS_SENTINELS", |c| {
            c.redis_sentinels = Some("s1:26379".into());
        });
        expect_invalid("REDIS_CHANNEL_PREFIX", "glob", |c| {
            c.redis_channel_prefix = "n:*".into()
        });
        expect_invalid("CONTROL_MAX_CONNECTIONS", "minimum 4", |c| {
            c.control_max_connections = 3
        });
        expect_invalid("CONTROL_MAX_CONNECTIONS", "half of FD_RESERVE (64)", |c| {
            c.control_max_connections = 33
        });
        expect_invalid("CONTROL_READ_TIMEOUT", "greater than 0", |c| {
            c.control_read_timeout = Duration::ZERO
        });
        expect_invalid("CONTROL_READ_TIMEOUT", "at most 300s", |c| {
            c.control_read_timeout = Duration::from_secs(301)
        });
        expect_invalid("PUBLISH_TIMEOUT", "at most 60s", |c| {
            c.publish_timeout = Duration::from_secs(61)
        });
        expect_invalid("PUBLISH_MAX_USERS", "minimum 1", |c| {
            c.publish_max_users = 0
        });
        expect_invalid("PUBLISH_MAX_USERS", "maximum 10000", |c| {
            c.publish_max_users = 10_001
        });
        expect_invalid("PUBLISH_MAX_FANOUT_BYTES", "below MAX_PUBLISH_BYTES", |c| {
            c.publish_max_fanout_bytes = c.max_publish_bytes - 1
        });
        expect_invalid(
            "PUBLISH_MAX_INFLIGHT_BYTES",
            "below MAX_PUBLISH_BYTES",
            |c| c.publish_max_inflight_bytes = c.max_publish_bytes - 1,
        );
        expect_invalid("LOG_FILTER_FILE", "cannot read", |c| {
            c.log_filter_file = Some(PathBuf::from("/nonexistent/filter"))
        });
        expect_invalid("JWT_SECRET_FILE", "also set", |c| {
            c.jwt_secret_file = Some(PathBuf::from(dir).join("Cargo.toml"))
        });
        expect_invalid("JWT_SECRET_FILE", "cannot read", |c| {
            c.jwt_secret = None;
            c.jwt_secret_file = Some(PathBuf::from("/nonexistent/secret"));
        });
        expect_invalid("REDIS_LIVENESS_TIMEOUT", "minimum 1s", |c| {
            c.redis_liveness_timeout = Duration::from_millis(500)
        });
        expect_invalid("REDIS_LIVENESS_TIMEOUT", "maximum 1h", |c| {
            c.redis_liveness_timeout = Duration::from_secs(3601)
        });
        expect_invalid("SUBSCRIBE_WAIT", "minimum 1ms", |c| {
            c.subscribe_wait = Duration::ZERO
        });
        expect_invalid("SUBSCRIBE_WAIT", "maximum 1m", |c| {
            c.subscribe_wait = Duration::from_secs(61)
        });
    }

    #[test]
    fn a_non_loopback_internal_port_needs_a_publish_key() {
        for host in ["0.0.0.0", "10.1.2.3", "::", "::ffff:10.0.0.1"] {
            let mut c = valid();
            c.metrics_bind_host = host.parse().unwrap();
            let msg = c.validate().expect_err(host).to_string();
            assert!(
                msg.starts_with("invalid METRICS_BIND_HOST (--metrics-bind-host): ")
                    && msg.contains("PUBLISH_API_KEY")
                    && !msg.contains('\n'),
                "{msg}"
            );
            c.publish_api_key = Some("k".into());
            c.validate().unwrap();
        }
        for host in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let mut c = valid();
            c.metrics_bind_host = host.parse().unwrap();
            c.validate().unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn secret_file_replaces_jwt_secret_and_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("chat4all-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        let mut c = valid();
        c.jwt_secret = None;
        c.jwt_secret_file = Some(file.clone());
        std::fs::write(&file, format!("{SECRET}\r\n")).unwrap();
        assert_eq!(read_secret_file(&file).unwrap(), SECRET.as_bytes());
        c.validate().unwrap();
        // 31 bytes plus a newline is still too short for HS256.
        std::fs::write(&file, format!("{}\n", &SECRET[..31])).unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("JWT_SECRET_FILE") && msg.contains("got 31"),
            "{msg}"
        );
        assert!(
            !msg.contains(&SECRET[..31]),
            "never echoes the secret: {msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_accepts_documented_alternatives() {
        let mut c = valid();
        c.jwt_secret = None;
        c.dev = true;
        c.validate().unwrap();

        let mut c = valid();
        c.jwt_secret = None;
        c.jwt_algorithm = Algorithm::ES256;
        c.jwt_public_key_file = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        c.validate().unwrap();

        let mut c = valid();
        (c.websocket_port, c.metrics_port) = (0, 0);
        c.redis_sentinels = Some("s1:26379, [::1]:26380".into());
        c.redis_master_name = Some("mymaster".into());
        c.validate().unwrap();
        assert!(c.redis_enabled());
    }

    #[test]
    fn validation_reports_every_problem_one_line_each() {
        let mut c = valid();
        c.jwt_secret = None;
        c.fd_reserve = 0;
        c.ws_path = "x".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.problems().len(), 3);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
        for var in ["JWT_SECRET", "FD_RESERVE", "WS_PATH"] {
            assert!(text.contains(var), "{text}");
        }
    }

    #[test]
    fn errors_never_echo_secrets() {
        let mut c = valid();
        c.jwt_secret = Some("tooshort-secret".into());
        c.redis_url = Some("http://:hunter2@r".into());
        let text = c.validate().unwrap_err().to_string();
        assert!(
            !text.contains("tooshort-secret") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn redacted_summary_hides_secrets() {
        let mut c = valid();
        c.publish_api_key = Some("publish-key-value".into());
        c.redis_url = Some("rediss://user:hunter2@redis:6380/0?password=hunter3".into());
        let summary = c.redacted_summary();
        let get = |name: &str| summary.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(get("JWT_SECRET"), "<redacted>");
        assert_eq!(get("PUBLISH_API_KEY"), "<redacted>");
        assert_eq!(
            get("REDIS_URL"),
            "rediss://<redacted>@redis:6380/0?<redacted>"
        );
        assert_eq!(get("REDIS_HOST"), "<unset>");
        assert_eq!(get("DRAIN_SECONDS"), "10s");
        let all = format!("{summary:?} {c:?}");
        for secret in [SECRET, "publish-key-value", "hunter2", "hunter3"] {
            assert!(!all.contains(secret), "leaks {secret}: {all}");
        }
        c.jwt_secret = None;
        assert_eq!(
            c.redacted_summary()[11],
            ("JWT_SECRET", "<unset>".to_string())
        );

        let names: Vec<&str> = summary.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            Config::env_var_names(),
            "summary covers every variable, in order"
        );
    }

    #[test]
    fn env_var_names_complete_unique_and_match_flags() {
        let names = Config::env_var_names();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
        assert_eq!(names.len(), ENV.len());
        for a in arg_names() {
            let Some(env) = a.env else {
                assert_eq!(a.flag, "--check-config");
                continue;
            };
            let expected = match env {
                "GATEWAY_DEV" => "--dev".to_string(),
                "DRAIN_SECONDS" => "--drain-period".to_string(),
                _ => format!("--{}", env.to_ascii_lowercase().replace('_', "-")),
            };
            assert_eq!(a.flag, expected);
        }
    }

    #[test]
    fn resolved_helpers() {
        let mut c = valid();
        assert!((1..=MAX_SHARDS).contains(&c.shard_count()));
        c.shards = Some(7);
        assert_eq!(c.shard_count(), 7);
        assert!(!c.redis_enabled());
        c.redis_url = Some("redis://r".into());
        assert!(c.redis_enabled());
    }

    #[test]
    fn sentinels_and_url_redaction() {
        assert_eq!(
            parse_sentinels("a:1, b:2").unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );
        for bad in ["", "a", ":1", "a:0", "a:x", "a:1,", "a:70000"] {
            assert!(parse_sentinels(bad).is_err(), "{bad}");
        }
        assert_eq!(redact_url("redis://r:6379/0"), "redis://r:6379/0");
        assert_eq!(redact_url("redis://:p@r"), "redis://<redacted>@r");
        assert_eq!(redact_url("redis://u:p@ss@r"), "redis://<redacted>@r");
    }
}
