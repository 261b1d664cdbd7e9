//! Real Redis servers for tests: `redis-server` (and `redis-sentinel`) on free loopback ports,
//! stopped by PID when dropped.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A private redis-server (or sentinel) process.
pub struct RedisProc {
    /// Its port.
    pub port: u16,
    args: Vec<String>,
    sentinel_conf: Option<PathBuf>,
    child: Option<Child>,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{binary} is not installed: `apt-get install -y redis-server redis-sentinel` (scripts/test.sh does)"
    );
}

impl RedisProc {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port(), &[])
    }

    /// Starts a server on `port` with extra arguments (e.g. `--replicaof`).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        require("redis-server");
        // A directory of its own: a replica writes the RDB of its first sync to its working
        // directory, and any server started there later would load it (state leaking from one
        // test into the next).
        let dir = std::env::temp_dir().join(format!("chat4all-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = [
            "--dir",
            &dir.display().to_string(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Self {
            port,
            args,
            sentinel_conf: None,
            child: None,
        };
        p.spawn();
        p
    }

    /// Gateway flags for this server in `mode` (`pattern` or `per-user`), then `extra`.
    pub fn gateway_args(&self, mode: &str, extra: &[&str]) -> Vec<String> {
        let port = self.port.to_string();
        [
            "--redis-host",
            "127.0.0.1",
            "--redis-port",
            &port,
            "--redis-subscription",
            mode,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts a replica of `master` on a free port.
    pub fn replica_of(master: &RedisProc) -> Self {
        Self::start_on(
            free_port(),
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        )
    }

    /// On a sentinel: blocks until it names `replica` as `mymaster` (panics after 30 s).
    pub fn wait_promoted(&self, replica: &RedisProc) {
        let mut conn = self.conn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let addr: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query(&mut conn)
                .unwrap();
            if addr.is_some_and(|(_, p)| p == replica.port.to_string()) {
                return;
            }
            assert!(Instant::now() < deadline, "sentinel did not fail over");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a sentinel monitoring `master_port` as `mymaster` with quorum 1 and fast timeouts.
    pub fn sentinel(master_port: u16) -> Self {
        require("redis-sentinel");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("chat4all-sentinel-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\nloglevel warning\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n"
            ),
        )
        .unwrap();
        let mut p = Self {
            port,
            args: vec![conf.display().to_string()],
            sentinel_conf: Some(conf),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let bin = if self.sentinel_conf.is_some() {
            "redis-sentinel"
        } else {
            "redis-server"
        };
        let child = Command::new(bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Blocks until the server answers PING.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis on port {} did not start", self.port);
    }

    /// Whether the server answers PING now.
    pub fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// PUBLISHes `payload` on `channel`; returns the receiver count.
    pub fn publish(&self, channel: &str, payload: &str) -> u32 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.conn())
            .unwrap()
    }

    /// Starts a server on a free port that accepts `DEBUG SLEEP` from loopback.
    pub fn start_debuggable() -> Self {
        Self::start_on(free_port(), &["--enable-debug-command", "local"])
    }

    /// Stalls the server for `d` with `DEBUG SLEEP` (it answers nobody meanwhile) from a thread
    /// of its own; join the handle to wait for the end of the stall.
    pub fn stall(&self, d: Duration) -> std::thread::JoinHandle<()> {
        let mut con = self.conn();
        con.set_read_timeout(Some(d + Duration::from_secs(30)))
            .unwrap();
        // Written before returning, so whatever the caller sends next queues behind it.
        let command = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(d.as_secs_f64())
            .get_packed_command();
        con.send_packed_command(&command).unwrap();
        std::thread::spawn(move || {
            let reply = con.recv_response().unwrap();
            assert_eq!(reply, redis::Value::Okay);
        })
    }

    /// How many times the server has run `command` (lowercase), from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// `kill -9` the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill9();
        if let Some(conf) = &self.sentinel_conf {
            let _ = std::fs::remove_dir_all(conf.parent().unwrap());
        } else {
            let dir = std::env::temp_dir().join(format!("chat4all-redis-{}", self.port));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
