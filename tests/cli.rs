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
    let _ = child.kill();
    let _ = child.wait();
    let url = url.expect("a ws:// URL is printed");
    assert!(url.contains("/notifications?token="), "{url}");
    let curl = curl.expect("a curl command is printed");
    assert!(
        curl.contains("/v1/publish") && curl.contains("\"user_id\":\"demo\""),
        "{curl}"
    );
}
