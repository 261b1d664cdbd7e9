//! `chat4all-loadtest` over `wss://` end to end: the binary against the small tokio-rustls server
//! in `tests/support/wss_server.rs`, idle scenario (connect, hold, ping every connection over TLS).

mod support {
    pub mod wss_server;
}

use std::process::Command;

use serde_json::Value;
use support::wss_server::{WssServer, tls_dir};

const SECRET: &str = "wss-test-secret-0123456789abcdef0123456789";

/// Runs `idle` with `tls_args` against `server`; returns the report.
fn idle(server: &WssServer, conns: u32, tls_args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("lt-wss-{}-{conns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_chat4all-loadtest"))
        .arg("idle")
        .args([
            "--url",
            &format!("wss://localhost:{}/notifications", server.addr.port()),
        ])
        .args([
            "--jwt-secret",
            SECRET,
            "--conns",
            &conns.to_string(),
            "--hold",
            "0.2",
        ])
        .args(["--connect-rate", "0", "--max-run-secs", "60"])
        .args(tls_args)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_over_wss_with_a_ca_file() {
    let server = WssServer::start().await;
    let ca = tls_dir().join("ca.pem");
    let ca = ca.to_str().unwrap().to_owned();
    let report = tokio::task::block_in_place(|| idle(&server, 300, &["--tls-ca-file", &ca]));
    assert_eq!(
        report["connect"]["established"], 300,
        "{:#}",
        report["connect"]
    );
    assert_eq!(
        report["idle"]["pongs"], 300,
        "every connection answered over TLS"
    );
    let wrong = tls_dir().join("other-ca.pem");
    let report = tokio::task::block_in_place(|| {
        idle(&server, 20, &["--tls-ca-file", wrong.to_str().unwrap()])
    });
    assert_eq!(report["connect"]["established"], 0);
    assert_eq!(
        report["connect"]["failures"]["tls"], 20,
        "{:#}",
        report["connect"]
    );
    let report = tokio::task::block_in_place(|| idle(&server, 20, &["--tls-insecure"]));
    assert_eq!(report["connect"]["established"], 20);
}

#[test]
fn wss_needs_a_ca_or_the_insecure_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat4all-loadtest"))
        .args([
            "idle",
            "--url",
            "wss://localhost:1/n",
            "--jwt-secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca-file"));
}
