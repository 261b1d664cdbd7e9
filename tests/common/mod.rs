//! Test support: a real gateway on loopback port 0 with two shards, real WebSocket clients
//! (tokio-tungstenite), and raw TCP for what a well-behaved client never sends.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use chat4all_gateway::{config::Config, gateway, internals::issue_hs256};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

pub mod process;
pub mod redis;
pub mod tls;

/// The JWT secret every test gateway uses.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// How long a test waits for something that should happen within milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

/// A WebSocket client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway running inside the test process. When it owns the gateway ([`start`]), dropping
/// it drains the gateway and waits for its shard threads to end, so no test leaves shards (and
/// their io_uring rings and sockets) running behind it.
pub struct TestGateway {
    /// WebSocket address.
    pub ws: SocketAddr,
    /// Control-plane address.
    pub control: SocketAddr,
    /// `WEBSOCKET_PLAIN_PORT`'s address, when served.
    pub plain: Option<SocketAddr>,
    /// The gateway, when this value owns it.
    gateway: Option<gateway::Gateway>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.begin_drain();
            gw.join();
        }
    }
}

/// Starts a gateway with two shards on `driver` ("io-uring" or "epoll") plus extra flags. It
/// is drained and its shards stopped when the returned value drops (with `DRAIN_SECONDS` 0
/// unless `extra` sets `--drain-period`).
pub fn start(driver: &str, extra: &[&str]) -> TestGateway {
    let (mut test, gw) = start_owned(driver, extra);
    test.gateway = Some(gw);
    test
}

/// [`start`] with owned arguments (as [`redis::RedisProc::gateway_args`] builds them).
pub fn start_with(driver: &str, args: &[String]) -> TestGateway {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(driver, &args)
}

/// Like [`start`], but hands back the gateway so the test can drain it itself.
pub fn start_owned(driver: &str, extra: &[&str]) -> (TestGateway, gateway::Gateway) {
    let mut args = vec![
        "chat4all-gateway",
        "--websocket-port",
        "0",
        "--metrics-port",
        "0",
        "--bind-host",
        "127.0.0.1",
        "--metrics-bind-host",
        "127.0.0.1",
        "--shards",
        "2",
        "--pin-cores",
        "false",
        "--io-driver",
        driver,
        "--jwt-secret",
        SECRET,
    ];
    if !extra.contains(&"--drain-period") {
        args.extend_from_slice(&["--drain-period", "0s"]);
    }
    args.extend_from_slice(extra);
    let cfg = Config::try_parse_from(args).expect("test config parses");
    cfg.validate().expect("test config is valid");
    let auth = gateway::authenticator(&cfg, None).expect("authenticator");
    let gw = gateway::start(&cfg, auth).expect("gateway starts");
    let (ws, control) = (gw.ws_addr, gw.control_addr);
    let test = TestGateway {
        ws,
        control,
        plain: gw.plain_addr,
        gateway: None,
    };
    (test, gw)
}

/// Waits until `cond` holds, polling it every 20 ms, and panics naming `what` after `limit`.
/// For conditions that should hold soon; the limit only turns a hang into a failure.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    issue_hs256(SECRET.as_bytes(), user, 3600)
}

impl TestGateway {
    /// The client URL for `user`.
    pub fn url(&self, user: &str) -> String {
        format!("ws://{}/notifications?token={}", self.ws, token(user))
    }

    /// Connects as `user` and consumes the `connected` greeting (checking it).
    pub async fn connect(&self, user: &str) -> Client {
        let (mut ws, resp) = timeout(WAIT, tokio_tungstenite::connect_async(self.url(user)))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        assert_eq!(resp.status(), 101);
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["userId"], user);
        assert!(hello["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        ws
    }

    /// Tries an upgrade with a custom request; returns the HTTP status of a refusal.
    pub async fn refused_status(&self, url: &str) -> u16 {
        let req = url.into_client_request().unwrap();
        match timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("answer in time")
        {
            Ok(_) => panic!("upgrade unexpectedly accepted for {url}"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error for {url}: {e}"),
        }
    }

    /// Publishes through the control API; returns (status, body).
    pub async fn publish(&self, body: &str, api_key: Option<&str>) -> (u16, String) {
        let auth = api_key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        http(self.control, req.as_bytes()).await
    }

    /// Publishes `payload` (JSON text) to `user` and returns the recipient count.
    pub async fn publish_to(&self, user: &str, payload: &str) -> u64 {
        let (status, body) = self
            .publish(
                &format!(r#"{{"user_id":"{user}","payload":{payload}}}"#),
                None,
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["recipients"].as_u64().unwrap()
    }

    /// Waits (10 s at most) until `/readyz` answers 200: Redis reached and subscribed.
    pub async fn wait_ready(&self) {
        wait_until(Duration::from_secs(10), "/readyz 200", || async {
            self.get("/readyz").await.0 == 200
        })
        .await;
    }

    /// GET on the control port; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        http(self.control, req.as_bytes()).await
    }

    /// The value of an unlabelled metric, or of the first sample whose line starts with
    /// `series` (e.g. `websocket_handoffs_total`).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }
}

/// Sends raw bytes to `addr` and reads the whole response (until the server closes).
pub async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The next text message, parsed as JSON (skipping pings), over any client stream: plain,
/// `MaybeTlsStream` or rustls.
pub async fn next_json<S>(ws: &mut WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON text"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until a close frame arrives; returns its code.
pub async fn close_code(ws: &mut Client) -> u16 {
    loop {
        match timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Asserts nothing arrives on `ws` for a short while.
pub async fn assert_silent(ws: &mut Client) {
    if let Ok(msg) = timeout(Duration::from_millis(200), ws.next()).await {
        panic!("expected silence, got {msg:?}");
    }
}

/// Sends a text message.
pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// A raw TCP connection that has completed the upgrade as `user` (greeting consumed), for
/// sending frames no real client library would send.
pub async fn raw_upgraded(gw: &TestGateway, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.ws).await.unwrap();
    let req = format!(
        "GET /notifications?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(user)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 response headers, then the connected frame.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        timeout(WAIT, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        buf.push(byte[0]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let (opcode, payload) = read_frame(&mut s).await;
    assert_eq!(opcode, 1);
    assert!(String::from_utf8(payload).unwrap().contains("connected"));
    s
}

/// Reads one unmasked server frame: (opcode, payload).
pub async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("frame in time")
        .expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are unmasked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// Encodes one client frame; `mask` None sends it unmasked (a protocol violation).
pub fn client_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads server frames until a close frame; returns its code.
pub async fn raw_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(s).await;
        if opcode == 8 {
            assert!(payload.len() >= 2, "close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Runs each listed `async fn(driver: &str)` case under both I/O drivers.
#[macro_export]
macro_rules! under_both_drivers {
    ($($case:ident),* $(,)?) => {
        mod io_uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case("io-uring").await
                }
            )*
        }
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case("epoll").await
                }
            )*
        }
    };
}
