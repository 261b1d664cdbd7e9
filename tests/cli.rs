//! The binary's configuration contract: `--check-config`, exit code 64 with one clear line for
//! bad configuration, a secure default for the internal port, the shipped configurations, `--dev`
//! start-up, and the descriptor reserve. Every process a test starts is stopped by PID.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::process::{BIN, PATIENCE, Spawn, http, metric, wait_until};

const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";

/// Kills (by PID) and reaps a child when dropped, whatever the test's outcome.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// wss:// files are checked before anything binds: an unreadable file or a key that does not
/// belong to the certificate is a configuration error (64, one line naming the variable); an
/// expired certificate starts, with a warning (clients will refuse it, the operator must know).
#[test]
fn tls_files_are_checked_before_binding() {
    let certs = common::tls::Certs::new("cli");
    let cert = certs.cert.display().to_string();
    let other_key = certs.dir.join("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let missing = certs.dir.join("missing.pem").display().to_string();
    let other_key = other_key.display().to_string();
    let key = certs.key.display().to_string();
    let cases = [
        (missing.as_str(), key.as_str(), "TLS_CERT_FILE"),
        (cert.as_str(), missing.as_str(), "TLS_KEY_FILE"),
        (cert.as_str(), other_key.as_str(), "TLS_KEY_FILE"),
    ];
    for (cert_file, key_file, var) in cases {
        let (code, _, stderr) = run(gateway()
            .arg("--check-config")
            .env("JWT_SECRET", SECRET)
            .env("TLS_CERT_FILE", cert_file)
            .env("TLS_KEY_FILE", key_file));
        assert_eq!(code, 64, "{cert_file} {key_file}: {stderr}");
        assert!(stderr.contains(var), "must name {var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // Expired: self-signed, valid for a day in 2020.
    let expired_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    let expired = params.self_signed(&expired_key).unwrap();
    let (expired_cert, expired_key_file) = (certs.dir.join("old.pem"), certs.dir.join("old.key"));
    std::fs::write(&expired_cert, expired.pem()).unwrap();
    std::fs::write(&expired_key_file, expired_key.serialize_pem()).unwrap();
    let gw = Spawn::new()
        .env("TLS_CERT_FILE", &expired_cert.display().to_string())
        .env("TLS_KEY_FILE", &expired_key_file.display().to_string())
        .start();
    let warning = gw.wait_log("the TLS certificate is expired: clients will refuse it");
    assert_eq!(warning["level"], "WARN", "{warning}");
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
    let mut child = Reaped(
        gateway()
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
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + PATIENCE;
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
    drop(child);
    assert!(delivered.contains(r#""text":"hello""#), "{delivered}");
}

#[test]
fn the_internal_port_binds_loopback_by_default() {
    let gw = Spawn::new().start();
    let control = gw.listening["control"].as_str().unwrap();
    assert!(control.starts_with("127.0.0.1:"), "{control}");
}

#[test]
fn a_public_internal_port_without_a_publish_key_refuses_to_start() {
    for host in ["0.0.0.0", "::"] {
        for check_only in [true, false] {
            let mut spawn = Spawn::new().env("METRICS_BIND_HOST", host);
            if check_only {
                spawn = spawn.args(&["--check-config"]);
            }
            let (code, _, stderr) = spawn.run();
            assert_eq!(code, 64, "{host}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains("METRICS_BIND_HOST") && stderr.contains("PUBLISH_API_KEY"),
                "names both variables: {stderr}"
            );
        }
        // With a key it starts, and the key is never printed.
        let (code, stdout, stderr) = Spawn::new()
            .env("METRICS_BIND_HOST", host)
            .env("PUBLISH_API_KEY", "a-publish-key-0123456789")
            .args(&["--check-config"])
            .run();
        assert_eq!(code, 0, "{stderr}");
        assert!(!stdout.contains("a-publish-key-0123456789"));
    }
}

/// The `KEY=VALUE` lines of an env file, ignoring comments.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The `environment:` block of the gateway service in docker-compose.yml, with `${VAR:-default}`
/// taking its default and `${VAR:?message}` (a variable the operator must set) a test value.
fn compose_env(text: &str) -> Vec<(String, String)> {
    let block = text
        .split("\n    environment:\n")
        .nth(1)
        .expect("an environment block");
    block
        .lines()
        .take_while(|l| l.starts_with("      "))
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"');
            let v = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(expr) => match expr.split_once(":-") {
                    Some((_, default)) => default.to_string(),
                    None => "required-value-0123456789abcdef0123456789".to_string(),
                },
                None => v.to_string(),
            };
            (k.to_string(), v)
        })
        .collect()
}

/// The `ENV` settings of the Dockerfile (`ENV A=1 \\ B=2`).
fn dockerfile_env(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_shipped_configurations_pass_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |rel: &str| std::fs::read_to_string(format!("{root}/{rel}")).unwrap();
    let mut dockerfile = dockerfile_env(&read("Dockerfile"));
    assert!(dockerfile.iter().any(|(k, _)| k == "METRICS_BIND_HOST"));
    // `docker run` must pass JWT_SECRET and, for a reachable internal port, PUBLISH_API_KEY.
    dockerfile.push(("JWT_SECRET".into(), SECRET.into()));
    dockerfile.push(("PUBLISH_API_KEY".into(), "a-publish-key-0123456789".into()));
    let cases = [
        ("tuning/env.example", env_file(&read("tuning/env.example"))),
        (
            "docker-compose.yml",
            compose_env(&read("docker-compose.yml")),
        ),
        ("Dockerfile", dockerfile),
    ];
    for (name, env) in cases {
        assert!(env.len() > 5, "{name}: parsed {env:?}");
        let mut cmd = gateway();
        cmd.arg("--check-config");
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let (code, stdout, stderr) = run(&mut cmd);
        assert_eq!(code, 0, "{name} fails --check-config: {stderr}");
        assert!(stdout.contains("configuration OK"), "{name}");
    }
}

#[test]
fn at_the_descriptor_limit_the_control_port_keeps_working_and_the_gateway_recovers() {
    use std::{io::Read, net::TcpStream};
    // 128 descriptors: MAX_CONNECTIONS becomes 128 - FD_RESERVE(32) - 2 shards x 8 = 80.
    let gw = Spawn::new()
        .env("FD_RESERVE", "32")
        .env("CONTROL_MAX_CONNECTIONS", "16")
        .env("SHARDS", "2")
        .env("HANDSHAKE_TIMEOUT", "2s")
        // Every socket here comes from 127.0.0.1: lift the per-address handshake cap, which
        // would answer most of them 429 before the connection cap is reached.
        .env("MAX_HANDSHAKES_PER_IP", "0")
        .nofile(128)
        .start();
    assert_eq!(gw.listening["max_connections"], 80);
    // 300 connections that never send a request: far more than descriptors allow.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", gw.ws)).ok())
        .collect();
    // The internal port still answers (the reserve was never touched), and the excess is
    // refused with 503.
    let refused = "websocket_connection_errors_total{error_type=\"over_capacity\"}";
    wait_until("the excess to be refused", || {
        metric(gw.control, refused) >= 200.0
    });
    // Some of the excess got their 503 response.
    let got_503 = flood.iter().skip(100).any(|s| {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 32];
        matches!(s.read(&mut buf), Ok(n) if n > 12 && buf.starts_with(b"HTTP/1.1 503"))
    });
    assert!(got_503, "refused sockets should read a 503 response");
    drop(flood);
    // Once the stalled handshakes time out, real clients get in again.
    let url = format!(
        "ws://127.0.0.1:{}/notifications?token={}",
        gw.ws,
        common::token("back")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    wait_until("a client to get in again", || {
        let connect = tokio_tungstenite::connect_async(url.as_str());
        let limit = Duration::from_secs(5);
        let attempt = rt.block_on(async { tokio::time::timeout(limit, connect).await });
        matches!(attempt, Ok(Ok(_)))
    });
    assert_eq!(http(gw.control, "GET", "/healthz", &[], "").0, 200);
}
