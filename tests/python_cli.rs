//! The existing Python CLI's WebSocket library (`websocket-client`) against the real gateway,
//! with a token shaped like the API service's (`sub`, `iat`, `exp`; no `user_id`).

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_works_unchanged() {
    let gw = start("io-uring", &[]);
    let url = format!("ws://{}/notifications", gw.ws);
    run_cli_compat(&gw, url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_over_wss_with_a_ca_file() {
    for driver in ["io-uring", "epoll"] {
        let certs = common::tls::Certs::new("python");
        let flags = certs.flags();
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let gw = start(driver, &args);
        // The name the certificate is for: Python checks it against the CA-signed chain.
        let url = format!("wss://localhost:{}/notifications", gw.ws.port());
        run_cli_compat(&gw, url, Some(certs.ca.display().to_string())).await;
        assert_eq!(
            gw.metric(r#"websocket_tls_handshakes_total{version="1.3"}"#)
                .await,
            1.0
        );
    }
}

/// Runs tests/python/cli_compat.py against `url` (without the token), trusting `ca` for
/// wss://, and checks what it received.
async fn run_cli_compat(gw: &TestGateway, url: String, ca: Option<String>) {
    let token = api_service_token("pyuser");
    let url = format!("{url}?token={token}");
    let publish = format!("http://{}/v1/publish", gw.control);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/cli_compat.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &url, &publish, "pyuser"])
            .args(ca)
            .output()
            .expect("python3 runs (apt-get install python3; scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (pip install websocket-client; scripts/test.sh installs it):\n{stdout}\n{stderr}"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines[0]["recipients"], 1, "{stdout}");
    let types: Vec<&str> = lines[1..]
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["connected", "pong", "notification"], "{stdout}");
    assert_eq!(lines[1]["userId"], "pyuser");
    assert_eq!(lines[3]["text"], "hi from the backend");
}

/// A token with exactly the claims the existing API service issues.
fn api_service_token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": user, "iat": now, "exp": now + 3600 });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
