//! End-to-end smoke run of every scenario against a real target: a private `redis-server` and
//! the gateway started on free loopback ports, a few hundred connections for a few seconds each.
//! Each test checks that the JSON report is complete and consistent (`delivered + lost ==
//! published`), not performance.
//!
//! The target is this workspace's `chat4all-gateway` binary (newest of `target/release` and
//! `target/debug`, or `$CHAT4ALL_GATEWAY_BIN`); it must be built first (`cargo build -p
//! chat4all-gateway`) — if none exists it is built once into `target/smoke-gateway`. Any server
//! speaking the same protocol and env (WEBSOCKET_PORT, METRICS_PORT, REDIS_HOST, REDIS_PORT,
//! JWT_SECRET, BIND_HOST) can stand in through `$CHAT4ALL_GATEWAY_BIN`. Needs `redis-server` on
//! PATH.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

mod support {
    pub mod gateway_bin;
}

use serde_json::Value;
use support::gateway_bin::gateway_bin;

/// Long enough for gateways that require 256-bit HS256 keys.
const SECRET: &str = "smoke-test-secret-0123456789abcdef0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let end = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "{what} did not open port {port} within {limit:?}"
        );
        sleep(Duration::from_millis(20));
    }
}

/// A private redis-server, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port, "redis-server", Duration::from_secs(10));
        Self { child, port }
    }

    /// Raw `CLIENT LIST` output.
    fn client_list(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"CLIENT LIST\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0; 65536];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a server under test: program, environment, ports.
#[derive(Debug, Clone)]
struct Target {
    program: PathBuf,
    env: Vec<(String, String)>,
    ws_port: u16,
    metrics_port: u16,
}

impl Target {
    /// This workspace's gateway, on free ports, subscribed to `redis`.
    fn gateway(redis: &Redis) -> Self {
        let ws_port = free_port();
        let metrics_port = free_port();
        let env = [
            ("WEBSOCKET_PORT", ws_port.to_string()),
            ("METRICS_PORT", metrics_port.to_string()),
            ("BIND_HOST", "127.0.0.1".into()),
            ("METRICS_BIND_HOST", "127.0.0.1".into()),
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", redis.port.to_string()),
            ("JWT_SECRET", SECRET.into()),
            // The load generator's handshakes all come from loopback addresses.
            ("MAX_HANDSHAKES_PER_IP", "0".into()),
        ];
        Self {
            program: gateway_bin().to_path_buf(),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ws_port,
            metrics_port,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/notifications", self.ws_port)
    }

    /// A shell command that starts the target in the background and records its PID.
    fn start_cmd(&self, pidfile: &Path) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        format!(
            "env {} '{}' >/dev/null 2>&1 </dev/null & echo $! > '{}'",
            env.join(" "),
            self.program.display(),
            pidfile.display()
        )
    }

    /// Starts it and waits until it accepts connections and has subscribed to Redis.
    fn start(&self, redis: &Redis, dir: &Path) -> Running {
        let pidfile = dir.join("target.pid");
        let st = Command::new("sh")
            .arg("-c")
            .arg(self.start_cmd(&pidfile))
            .status()
            .unwrap();
        assert!(st.success());
        let running = Running { pidfile };
        wait_for_port(self.ws_port, "the target", Duration::from_secs(20));
        wait_for_port(
            self.metrics_port,
            "the target's metrics",
            Duration::from_secs(20),
        );
        // The target's subscriber shows up in CLIENT LIST with sub= or psub= above zero.
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let list = redis.client_list();
            let subscribed = |l: &&str| {
                l.starts_with("id=") && !(l.contains(" sub=0 ") && l.contains(" psub=0 "))
            };
            if list.lines().any(|l| subscribed(&l)) {
                break;
            }
            sleep(Duration::from_millis(50));
        }
        running
    }
}

/// A started target, killed on drop (by the PID in its pidfile, which a restart rewrites).
struct Running {
    pidfile: PathBuf,
}

impl Running {
    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A shell command that kills the target and starts it again.
    fn restart_cmd(&self, t: &Target) -> String {
        format!(
            "kill $(cat '{p}'); while kill -0 $(cat '{p}') 2>/dev/null; do sleep 0.05; done; {}",
            t.start_cmd(&self.pidfile),
            p = self.pidfile.display()
        )
    }
}

impl Running {
    /// Kills the current process (the pidfile names the latest after a restart).
    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scenario run: a fresh Redis and target, the harness, the parsed report.
struct Run {
    dir: PathBuf,
    redis: Redis,
    target: Target,
    running: Running,
}

impl Run {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lt-smoke-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = Redis::start();
        let target = Target::gateway(&redis);
        let running = target.start(&redis, &dir);
        Self {
            dir,
            redis,
            target,
            running,
        }
    }

    /// Runs `chat4all-loadtest <scenario> <args>` with the common flags; returns the report.
    fn harness(&self, scenario: &str, args: &[&str]) -> Value {
        let report = self.dir.join("report.json");
        let plot = self.dir.join("plot.svg");
        let url = self.target.url();
        let redis = format!("127.0.0.1:{}", self.redis.port);
        let pid = self.running.pid().to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat4all-loadtest"));
        cmd.arg(scenario)
            .args(["--url", &url, "--jwt-secret", SECRET, "--redis", &redis])
            .args(["--max-run-secs", "50", "--seed", "7"])
            .arg("--report")
            .arg(&report)
            .args(args);
        if scenario != "reconnect-storm" {
            cmd.args(["--server-pid", &pid]);
        }
        if matches!(scenario, "fanout" | "ramp" | "churn") {
            cmd.arg("--plot").arg(&plot);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{scenario} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("chat4all-loadtest {scenario}")),
            "summary: {stdout}"
        );
        if matches!(scenario, "fanout" | "ramp" | "churn") {
            let svg = std::fs::read_to_string(&plot).unwrap();
            assert!(svg.starts_with("<svg"), "plot is not an SVG");
        }
        let raw = std::fs::read_to_string(&report).unwrap();
        assert!(
            !raw.contains(SECRET),
            "the report must not carry the token secret"
        );
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["scenario"], scenario);
        assert_eq!(v["consistent"], true, "{v:#}");
        v
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Before the directory (and the pidfile in it) goes away.
        self.running.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// All connections opened with no failure.
fn assert_connected(r: &Value, n: u64) {
    let c = &r["connect"];
    assert_eq!(u(&c["requested"]), n, "{c:#}");
    assert_eq!(u(&c["established"]), n, "{c:#}");
    assert_eq!(u(&c["failed"]), 0, "{c:#}");
    assert!(f(&c["connects_per_s"]) > 0.0);
    assert_eq!(u(&c["handshake"]["count"]), n);
}

/// A phase report that adds up and delivered nearly everything.
fn assert_phase(p: &Value) {
    let d = &p["deliveries"];
    let (published, delivered, lost) = (u(&d["published"]), u(&d["delivered"]), u(&d["lost"]));
    assert!(published > 0, "nothing published: {p:#}");
    assert_eq!(delivered + lost, published, "{p:#}");
    assert_eq!(p["consistent"], true);
    assert!(lost * 1000 <= published, "more than 0.1% lost: {d:#}");
    assert_eq!(u(&p["latency"]["count"]), delivered);
    let lat = &p["latency"];
    assert!(u(&lat["p50_us"]) <= u(&lat["p99_us"]) && u(&lat["p99_us"]) <= u(&lat["max_us"]));
    let buckets: u64 = p["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u(&b["delivered"]))
        .sum();
    assert_eq!(
        buckets, delivered,
        "timeline buckets must add up to the deliveries"
    );
    assert!(f(&p["delivered_per_s"]) > 0.0);
    assert!(p["server_cpu_ms_per_1k"].is_number(), "{p:#}");
    assert!(f(&p["harness_cpu_ms_per_1k"]) >= 0.0);
}

#[test]
fn idle_holds_and_measures_memory() {
    let run = Run::new("idle");
    let r = run.harness("idle", &["--conns", "300", "--hold", "1"]);
    assert_connected(&r, 300);
    let i = &r["idle"];
    assert_eq!(u(&i["pinged"]), 300);
    assert_eq!(u(&i["pongs"]), 300, "every held connection answers a ping");
    assert!(f(&i["per_conn"]["server_rss_bytes"]).is_finite());
    assert!(u(&i["kernel_end"]["tcp_inuse"]) > 0);
}

#[test]
fn fanout_open_and_closed_loop() {
    let run = Run::new("fanout");
    let r = run.harness(
        "fanout",
        &[
            "--conns",
            "300",
            "--conns-per-user",
            "2",
            "--rate",
            "2000",
            "--duration",
            "2",
        ],
    );
    assert_connected(&r, 300);
    let p = &r["fanout"];
    assert_phase(p);
    // Each PUBLISH goes to a user with two connections.
    assert_eq!(
        u(&p["deliveries"]["published"]),
        2 * u(&p["publish_commands"])
    );
    let r = run.harness(
        "fanout",
        &[
            "--conns",
            "200",
            "--rate",
            "0",
            "--window",
            "400",
            "--duration",
            "1.5",
            "--drain",
            "1",
        ],
    );
    assert_eq!(r["fanout"]["closed_loop"], true);
    assert_phase(&r["fanout"]);
}

#[test]
fn ramp_steps_up() {
    let run = Run::new("ramp");
    let r = run.harness(
        "ramp",
        &[
            "--conns",
            "200",
            "--start-rate",
            "500",
            "--step-rate",
            "500",
            "--max-rate",
            "1000",
            "--step-secs",
            "1",
            "--drain",
            "1",
            "--p99-bound",
            "1000",
            "--keep-going",
        ],
    );
    assert_connected(&r, 200);
    let steps = r["ramp"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert_phase(&s["phase"]);
    }
    assert!(r["ramp"]["best_rate"].is_number(), "{:#}", r["ramp"]);
}

#[test]
fn reconnect_storm_comes_back() {
    let run = Run::new("storm");
    let restart = run.running.restart_cmd(&run.target);
    let r = run.harness(
        "reconnect-storm",
        &[
            "--conns",
            "300",
            "--restart-cmd",
            &restart,
            "--timeout",
            "20",
        ],
    );
    assert_connected(&r, 300);
    let s = &r["storm"];
    assert_eq!(u(&s["receiving_before"]), 300, "{s:#}");
    assert_eq!(s["all_back"], true, "{s:#}");
    assert_eq!(s["restart_cmd_exit"], 0);
    assert_eq!(u(&s["dropped"]), 300);
    assert!(u(&s["receiving"]) >= 300);
    let (answering, back) = (f(&s["first_reconnect_ms"]), f(&s["all_receiving_ms"]));
    assert!(
        answering <= back && f(&s["back_after_answering_ms"]) >= 0.0,
        "{s:#}"
    );
}

#[test]
fn churn_while_notifications_flow() {
    let run = Run::new("churn");
    let r = run.harness(
        "churn",
        &[
            "--conns",
            "200",
            "--churn-rate",
            "100",
            "--lifetime-ms",
            "300",
            "--rate",
            "500",
            "--duration",
            "2",
            "--drain",
            "1",
        ],
    );
    assert_connected(&r, 200);
    let c = &r["churn"];
    assert!(u(&c["attempted"]) >= 150, "{c:#}");
    assert_eq!(u(&c["established"]), u(&c["attempted"]), "{c:#}");
    assert_eq!(u(&c["closed"]), u(&c["established"]));
    assert_eq!(u(&c["handshake"]["count"]), u(&c["established"]));
    assert_phase(&c["stable"]);
}

#[test]
fn recover_counts_a_restart_exactly() {
    // Against the gateway with history in Redis (the default): every client saw an epoch, so
    // every reconnect asks for a replay, and Redis kept the history across the gateway's
    // restart, so every one is recovered: nothing published (answered 2xx) is lost, nothing is
    // delivered twice.
    let run = Run::new("recover");
    // SIGKILL: the clients must drop at once, not over a drain.
    let restart = run
        .running
        .restart_cmd(&run.target)
        .replacen("kill ", "kill -9 ", 1);
    let api = format!("http://127.0.0.1:{}/v1/publish", run.target.metrics_port);
    let r = run.harness(
        "recover",
        &[
            "--conns",
            "200",
            "--rate",
            "300",
            "--duration",
            "6",
            "--drain",
            "2",
            "--publish-url",
            &api,
            "--restart-cmd",
            &restart,
        ],
    );
    assert_connected(&r, 200);
    let rc = &r["recovery"];
    let c = &rc["counts"];
    let d = &rc["phase"]["deliveries"];
    assert_eq!(rc["restart_cmd_exit"], 0, "{rc:#}");
    assert!(u(&d["published"]) > 0 && u(&d["delivered"]) > 0, "{d:#}");
    assert_eq!(u(&d["delivered"]) + u(&d["lost"]), u(&d["published"]));
    assert_eq!(
        u(&c["lost_resync"]) + u(&c["lost_unexplained"]),
        u(&d["lost"]),
        "every loss is either told or a gap: {rc:#}"
    );
    assert!(
        u(&c["sessions"]) >= 400,
        "every client came back once: {c:#}"
    );
    assert!(u(&c["asked"]) >= 200, "every client asked: {c:#}");
    assert_eq!(
        u(&c["recovered_true"]),
        u(&c["asked"]),
        "Redis kept the history: {c:#}"
    );
    assert_eq!(u(&d["lost"]), 0, "no gaps: {rc:#}");
    assert!(
        u(&c["replayed"]) > 0,
        "some were missed and replayed: {c:#}"
    );
    assert_eq!(u(&d["duplicates"]), 0);
}
