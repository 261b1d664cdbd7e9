//! The binary's configuration contract: `--check-config`, exit code 64 with one clear line for
//! bad configuration, and `--dev` start-up.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_chat4all-gateway");
const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";

/// The binary with a clean environment (no inherited gateway variables).
fn gateway() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_valid_configuration_and_binds_nothing() {
    let (code, stdout, stderr) = run(gateway()
        .env("JWT_SECRET", SECRET)
        .env("WEBSOCKET_PORT", "1")
        .arg("--check-config"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configuration OK"));
    assert!(stdout.contains("WEBSOCKET_PORT=1"), "{stdout}");
    // The secret is never printed.
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
}

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("JWT_SECRET", SECRET), ("WEBSOCKET_PORT", "http")],
            "WEBSOCKET_PORT",
        ),
        (
            &[("JWT_SECRET", SECRET), ("METRICS_PORT", "70000")],
            "METRICS_PORT",
        ),
        (&[], "JWT_SECRET"),
        (&[("JWT_SECRET", "short")], "JWT_SECRET"),
        (
            &[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "none")],
            "JWT_ALGORITHM",
        ),
        (
            &[("JWT_SECRET", SECRET), ("IDLE_TIMEOUT", "soon")],
            "IDLE_TIMEOUT",
        ),
        (&[("JWT_SECRET", SECRET), ("SHARDS", "0")], "SHARDS"),
        (
            &[("JWT_SECRET", SECRET), ("WS_PATH", "no-slash")],
            "WS_PATH",
        ),
    ];
    for (env, var) in cases {
        let mut cmd = gateway();
        cmd.arg("--check-config");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let (code, _, stderr) = run(&mut cmd);
        assert_eq!(code, 64, "{env:?}: {stderr}");
        assert!(
            stderr.contains(var),
            "{env:?}: message must name {var}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn dev_mode_starts_and_prints_a_working_url_and_publish_command() {
    let mut child = gateway()
        .args(["--dev", "--websocket-port", "0", "--metrics-port", "0"])
        .args([
            "--bind-host",
            "127.0.0.1",
            "--metrics-bind-host",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut url, mut curl) = (None, None);
    while Instant::now() < deadline && (url.is_none() || curl.is_none()) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let line = line.trim().to_string();
            if line.starts_with("ws://") {
                url = Some(line);
            } else if line.starts_with("curl ") {
                curl = Some(line);
            }
        }
    }
    let url = url.expect("a ws:// URL is printed");
    assert!(url.contains("/notifications?token="), "{url}");
    let curl = curl.expect("a curl command is printed");
    assert!(
        curl.contains("/v1/publish") && curl.contains("\"user_id\":\"demo\""),
        "{curl}"
    );
    // Use them as a person would: connect with the URL, publish with the curl command.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let delivered = rt.block_on(async {
        use futures_util::StreamExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(hello.contains(r#""userId":"demo""#), "{hello}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{curl} -s"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            r#"{"recipients":1}"#,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(delivered.contains(r#""text":"hello""#), "{delivered}");
}

/// Starts the binary on ephemeral ports and returns it with its WebSocket and control ports
/// (read from the startup log).
fn spawn_gateway(drain: &str) -> (std::process::Child, u16, u16) {
    let mut child = gateway()
        .env("JWT_SECRET", SECRET)
        .env("DRAIN_SECONDS", drain)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .args(["--websocket-port", "0", "--metrics-port", "0"])
        .args([
            "--bind-host",
            "127.0.0.1",
            "--metrics-bind-host",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fields = listening_fields(&mut child);
    (
        child,
        port_of(&fields, "websocket"),
        port_of(&fields, "control"),
    )
}

/// Waits (up to 10 s) for the JSON "gateway listening" line on the child's stderr and returns its
/// fields. Keeps draining stderr afterwards so the child never blocks on a full pipe.
fn listening_fields(child: &mut std::process::Child) -> serde_json::Value {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if line.contains("gateway listening") {
            std::thread::spawn(move || while rx.recv().is_ok() {});
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            return v["fields"].clone();
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway did not report its ports");
}

/// The port of an address field ("127.0.0.1:8085") of the listening log line.
fn port_of(fields: &serde_json::Value, key: &str) -> u16 {
    let addr = fields[key].as_str().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn token(user: &str) -> String {
    chat4all_gateway::internals::issue_hs256(SECRET.as_bytes(), user, 3600)
}

#[test]
fn sigterm_drains_with_1001_and_exits_zero() {
    use futures_util::StreamExt;
    let (mut child, ws_port, _) = spawn_gateway("1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let url = format!(
            "ws://127.0.0.1:{ws_port}/notifications?token={}",
            token("sig")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.next().await.unwrap().unwrap(); // connected
        signal(&child, libc::SIGTERM);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))))) => {
                    break u16::from(f.code);
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    assert_eq!(code, 1001);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
}

#[test]
fn second_signal_exits_at_once() {
    use futures_util::StreamExt;
    let (mut child, ws_port, _) = spawn_gateway("30");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _ws = rt.block_on(async {
        let url = format!(
            "ws://127.0.0.1:{ws_port}/notifications?token={}",
            token("sig2")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws
    });
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining after one signal"
    );
    signal(&child, libc::SIGTERM);
    // Exits long before its 30 s drain would end.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(3)), Some(1));
}

#[test]
fn at_the_descriptor_limit_the_control_port_keeps_working_and_the_gateway_recovers() {
    use std::{io::Read, net::TcpStream};
    // 128 descriptors: MAX_CONNECTIONS becomes 128 - FD_RESERVE(32) - 2 shards x 8 = 80.
    let mut child = spawn_with_nofile(
        128,
        &[
            ("JWT_SECRET", SECRET),
            ("FD_RESERVE", "32"),
            ("SHARDS", "2"),
            ("HANDSHAKE_TIMEOUT", "2s"),
            // Every socket here comes from 127.0.0.1: lift the per-address handshake cap, which
            // would answer most of them 429 before the connection cap is reached.
            ("MAX_HANDSHAKES_PER_IP", "0"),
            ("RUST_LOG", "info"),
            ("LOG_FORMAT", "json"),
        ],
    );
    let fields = listening_fields(&mut child);
    assert_eq!(fields["max_connections"], 80);
    let (ws, control) = (port_of(&fields, "websocket"), port_of(&fields, "control"));
    // 300 connections that never send a request: far more than descriptors allow.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", ws)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The internal port still answers: the reserve was never touched.
    let metrics = http_get(control, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("websocket_connection_errors_total{error_type=\"over_capacity\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        refused >= 200.0,
        "the excess was refused with 503: {refused}"
    );
    // Some of the excess got their 503 response.
    let got_503 = flood.iter().take(300).skip(100).any(|s| {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 32];
        matches!(s.read(&mut buf), Ok(n) if n > 12 && buf.starts_with(b"HTTP/1.1 503"))
    });
    assert!(got_503, "refused sockets should read a 503 response");
    drop(flood);
    // After the stalled handshakes time out, real clients get in again.
    std::thread::sleep(Duration::from_millis(2500));
    let url = format!("ws://127.0.0.1:{ws}/notifications?token={}", token("back"));
    let ok = tungstenite_connect(&url);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "the gateway must recover once descriptors free up");
}

/// A plain HTTP GET returning the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn tungstenite_connect(url: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { tokio_tungstenite::connect_async(url).await.is_ok() })
}

/// Starts the gateway on ephemeral loopback ports through `sh -c 'ulimit -n N; exec ...'`, so
/// it runs with a low open-files limit, with only `env` (and PATH) in its environment.
fn spawn_with_nofile(nofile: u32, env: &[(&str, &str)]) -> std::process::Child {
    let mut sh = Command::new("sh");
    sh.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        sh.env(k, v);
    }
    sh.arg("-c")
        .arg(format!(
            "ulimit -n {nofile} && exec {BIN} --websocket-port 0 --metrics-port 0 \
             --bind-host 127.0.0.1 --metrics-bind-host 127.0.0.1"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
