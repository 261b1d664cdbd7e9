//! The gateway binary as a child process, for what only a process has: exit codes, signals, an
//! open-files limit, its own memory. Every process started here is stopped by PID (SIGKILL, then
//! reaped) when its [`Proc`] drops, whatever the test's outcome; tests wait for log lines and
//! other conditions, never for time.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// The gateway binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_chat4all-gateway");

/// How long a test waits for something a healthy gateway does at once (a hang guard, not a
/// speed requirement).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How to start the binary.
pub struct Spawn {
    /// Its environment (nothing else is inherited but PATH).
    env: Vec<(String, String)>,
    /// Its arguments.
    args: Vec<String>,
    /// `ulimit -n` to start it under.
    nofile: Option<u32>,
}

/// The log lines a process wrote on stderr, as they arrive.
#[derive(Default)]
struct Log {
    /// Every line so far, and whether stderr has closed.
    lines: Mutex<(Vec<String>, bool)>,
    /// Notified on every new line and on close.
    grew: Condvar,
}

/// A running gateway process.
pub struct Proc {
    /// The process.
    child: Child,
    /// Its stderr.
    log: Arc<Log>,
    /// Its WebSocket port (0 until it reported it).
    pub ws: u16,
    /// Its internal port (0 until it reported it).
    pub control: u16,
    /// The "gateway listening" line's fields.
    pub listening: serde_json::Value,
}

impl Default for Spawn {
    fn default() -> Self {
        Self::new()
    }
}

impl Spawn {
    /// Ephemeral loopback ports, JSON logs at `info`, the test secret.
    pub fn new() -> Self {
        Self {
            env: vec![
                ("JWT_SECRET".into(), super::SECRET.into()),
                ("LOG_FORMAT".into(), "json".into()),
                ("RUST_LOG".into(), "info".into()),
            ],
            args: ["--websocket-port", "0", "--metrics-port", "0"]
                .into_iter()
                .chain(["--bind-host", "127.0.0.1"])
                .map(String::from)
                .collect(),
            nofile: None,
        }
    }

    /// Sets (or, with an empty value, clears) an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        if !value.is_empty() {
            self.env.push((key.into(), value.into()));
        }
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs it under `ulimit -n nofile`.
    pub fn nofile(mut self, nofile: u32) -> Self {
        self.nofile = Some(nofile);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = match self.nofile {
            // `exec` keeps the PID, so the handle still stops the gateway itself.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs it to completion: (exit code, stdout, stderr).
    pub fn run(&self) -> (i32, String, String) {
        let out = self.command().output().expect("the binary runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts it and waits for its "gateway listening" line.
    pub fn start(&self) -> Proc {
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped");
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                writer.lines.lock().unwrap().0.push(line);
                writer.grew.notify_all();
            }
            writer.lines.lock().unwrap().1 = true;
            writer.grew.notify_all();
        });
        let mut proc = Proc {
            child,
            log,
            ws: 0,
            control: 0,
            listening: serde_json::Value::Null,
        };
        let line = proc.wait_log("gateway listening");
        let fields = line["fields"].clone();
        proc.ws = port_of(&fields, "websocket");
        proc.control = port_of(&fields, "control");
        proc.listening = fields;
        proc
    }
}

/// The port of an address field ("127.0.0.1:8085") of a log line.
fn port_of(fields: &serde_json::Value, key: &str) -> u16 {
    let addr = fields[key].as_str().expect("an address field");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

impl Proc {
    /// Waits for the first JSON log line (from the start) whose message is `message` and
    /// returns it; panics with the log if it does not come.
    pub fn wait_log(&self, message: &str) -> serde_json::Value {
        self.wait_log_where(message, |_| true)
    }

    /// Like [`Self::wait_log`], for the first such line whose fields satisfy `pred`.
    pub fn wait_log_where(
        &self,
        message: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        let mut guard = self.log.lines.lock().unwrap();
        loop {
            let found = guard.0.iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == message && pred(&v["fields"])).then_some(v)
            });
            if let Some(v) = found {
                return v;
            }
            let now = Instant::now();
            assert!(
                now < deadline && !guard.1,
                "no log line {message:?}; stderr so far:\n{}",
                guard.0.join("\n")
            );
            guard = self.log.grew.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// How many JSON log lines so far have the message `message`.
    pub fn count_log(&self, message: &str) -> usize {
        let guard = self.log.lines.lock().unwrap();
        guard
            .0
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .count()
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lines.lock().unwrap().0.join("\n")
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for it to exit and returns its exit code (`None`: killed by a signal); panics if it
    /// is still running after [`PATIENCE`].
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "still running; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A value from its `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request with `Connection: close` to `127.0.0.1:port`: (status, body).
pub fn http(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// The value of a metric sample (`name{labels}` exactly as exposed) on `port`.
pub fn metric(port: u16, series: &str) -> f64 {
    let (_, text) = http(port, "GET", "/metrics", &[], "");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Polls `cond` until it holds; panics after [`PATIENCE`] with `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
