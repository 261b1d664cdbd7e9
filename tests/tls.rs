//! wss:// on the shards: the TLS handshake in the accepting shard, the session handed to the
//! owner shard with the socket, notifications encrypted per connection, the closing handshake
//! with close_notify, and the refusals of what is not a proper TLS client. Every case runs on
//! both I/O drivers; certificates are generated per test.

mod common;

use common::{tls::*, *};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

under_both_drivers!(
    wss_delivers_across_shards_and_closes_cleanly,
    tls12_clients_are_served_too,
    plain_http_on_the_tls_port_gets_a_plaintext_400,
    tls10_and_garbage_are_refused_and_counted,
    a_stalled_tls_handshake_times_out,
    drain_sends_1001_then_close_notify,
    a_slow_tls_consumer_is_closed_and_gets_every_record_in_order,
    the_plain_port_serves_ws_beside_wss,
);

/// Starts a gateway serving `certs` over wss://, with `extra` flags.
fn start_tls(driver: &str, certs: &Certs, extra: &[&str]) -> TestGateway {
    let flags = certs.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    start(driver, &args)
}

async fn wss_delivers_across_shards_and_closes_cleanly(driver: &str) {
    let certs = Certs::new("e2e");
    let gw = start_tls(driver, &certs, &[]);
    let cfg = certs.client();
    // Enough users that some hash to the shard that did not accept them: those sessions were
    // handed over mid-TLS (the accepting shard did the handshake).
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(wss_connect(gw.ws, cfg.clone(), &format!("tls{i}")).await);
    }
    assert!(
        gw.metric("websocket_handoffs_total").await > 0.0,
        "no hand-off happened"
    );
    assert_eq!(
        gw.metric(r#"websocket_tls_handshakes_total{version="1.3"}"#)
            .await,
        12.0
    );
    for (i, ws) in clients.iter_mut().enumerate() {
        let user = format!("tls{i}");
        assert_eq!(gw.publish_to(&user, &format!(r#"{{"n":{i}}}"#)).await, 1);
        let got = next_json(ws).await;
        assert_eq!(got["n"], i);
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
        assert_eq!(next_json(ws).await["type"], "pong");
    }
    // A notification larger than one TLS record (and than the shard's output buffer).
    let big = "x".repeat(200_000);
    assert_eq!(
        gw.publish_to("tls0", &format!(r#"{{"big":"{big}"}}"#))
            .await,
        1
    );
    assert_eq!(
        next_json(&mut clients[0]).await["big"]
            .as_str()
            .unwrap()
            .len(),
        big.len()
    );

    // The client closes: its code is echoed, then the server ends TLS and TCP.
    let mut ws = clients.pop().unwrap();
    ws.close(None).await.unwrap();
    assert_eq!(close_code_tls(&mut ws).await, 1000);
    assert!(
        tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("end in time")
            .is_none(),
        "the stream ends after the closing handshake"
    );
    wait_until(WAIT, "the connection is gone", || async {
        gw.metric("websocket_connections_active").await == 11.0
    })
    .await;
}

async fn tls12_clients_are_served_too(driver: &str) {
    let certs = Certs::new("tls12");
    let gw = start_tls(driver, &certs, &[]);
    let mut ws = wss_connect(gw.ws, certs.client_tls12(), "old").await;
    assert_eq!(gw.publish_to("old", r#"{"v":12}"#).await, 1);
    assert_eq!(next_json(&mut ws).await["v"], 12);
    assert_eq!(
        gw.metric(r#"websocket_tls_handshakes_total{version="1.2"}"#)
            .await,
        1.0
    );
}

async fn plain_http_on_the_tls_port_gets_a_plaintext_400(driver: &str) {
    let certs = Certs::new("plain400");
    let gw = start_tls(driver, &certs, &[]);
    let req = format!(
        "GET /notifications?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("plain")
    );
    let (status, body) = http(gw.ws, req.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("tls_required") && body.contains("wss://"),
        "{body}"
    );
    let failures = r#"websocket_tls_handshake_failures_total{reason="plaintext_http"}"#;
    assert_eq!(gw.metric(failures).await, 1.0);
}

/// A TLS 1.0 ClientHello (legacy version 3.1, no supported_versions extension).
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two RSA/AES suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

/// Sends `bytes`, then reads until the server closes: what it answered.
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // A reset after the answer is also a close.
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the server did not close"),
    }
    out
}

async fn tls10_and_garbage_are_refused_and_counted(driver: &str) {
    let certs = Certs::new("refused");
    let gw = start_tls(driver, &certs, &[]);
    let failures =
        |reason: &str| format!("websocket_tls_handshake_failures_total{{reason=\"{reason}\"}}");

    // TLS 1.0: a fatal alert (handshake_failure: a TLS 1.0 hello has no signature_algorithms,
    // which rustls checks before the version), then closed.
    let answer = answer_to(gw.ws, &tls10_client_hello()).await;
    assert_eq!(&answer[..1], &[0x15], "an alert record: {answer:?}");
    assert_eq!(
        &answer[5..7],
        &[2, 40],
        "fatal handshake_failure: {answer:?}"
    );
    assert_eq!(gw.metric(&failures("protocol_version")).await, 1.0);

    // Neither TLS nor HTTP: closed without an answer.
    let answer = answer_to(gw.ws, b"\x00\x01\x02 not tls").await;
    assert!(answer.is_empty(), "{answer:?}");
    assert_eq!(gw.metric(&failures("not_tls")).await, 1.0);

    // A handshake record holding an empty ClientHello: a fatal decode_error alert, closed.
    let answer = answer_to(gw.ws, b"\x16\x03\x01\x00\x04\x01\x00\x00\x00").await;
    assert_eq!(answer, [0x15, 3, 3, 0, 2, 2, 50], "fatal decode_error");
    assert_eq!(gw.metric(&failures("bad_message")).await, 1.0);

    // A handshake record announcing a 6 MB message: closed at once (rustls refuses it before
    // any state exists to answer with an alert), not waited for.
    let answer = answer_to(gw.ws, b"\x16\x03\x01\x00\x05hello").await;
    assert!(answer.is_empty(), "{answer:?}");
    assert_eq!(gw.metric(&failures("bad_message")).await, 2.0);

    // The gateway still serves proper clients.
    let mut ws = wss_connect(gw.ws, certs.client(), "after").await;
    assert_eq!(gw.publish_to("after", "{}").await, 1);
    next_json(&mut ws).await;
    assert_eq!(gw.metric("websocket_connections_active").await, 1.0);
}

async fn a_stalled_tls_handshake_times_out(driver: &str) {
    let certs = Certs::new("stall");
    let gw = start_tls(driver, &certs, &["--handshake-timeout", "300ms"]);
    // Half a ClientHello, then silence.
    let hello = tls10_client_hello();
    let answer = answer_to(gw.ws, &hello[..20]).await;
    assert!(answer.is_empty(), "{answer:?}");
    let timed_out = r#"websocket_tls_handshake_failures_total{reason="timed_out"}"#;
    assert_eq!(gw.metric(timed_out).await, 1.0);
    assert_eq!(
        gw.metric(r#"websocket_handshakes_total{outcome="timed_out"}"#)
            .await,
        1.0
    );
}

/// A wss:// client speaking raw frames over rustls: upgraded, greeting read.
async fn raw_wss(
    gw: &TestGateway,
    certs: &Certs,
    user: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls_connect(gw.ws, certs.client()).await;
    let req = format!(
        "GET /notifications?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(user)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (opcode, payload) = frame(&mut s).await;
    assert_eq!(opcode, 1);
    assert!(String::from_utf8(payload).unwrap().contains("connected"));
    s
}

/// One unmasked server frame: (opcode, payload).
async fn frame(s: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("frame in time")
        .expect("frame header");
    let len = match head[1] & 0x7f {
        126 => usize::from(s.read_u16().await.unwrap()),
        127 => s.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

async fn drain_sends_1001_then_close_notify(driver: &str) {
    let certs = Certs::new("drain");
    let flags = certs.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--drain-period", "500ms", "--close-timeout", "2s"]);
    let (gw, handle) = start_owned(driver, &args);
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(raw_wss(&gw, &certs, &format!("d{i}")).await);
    }
    handle.begin_drain();
    for s in &mut clients {
        let (opcode, payload) = frame(s).await;
        assert_eq!(opcode, 8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
        // Then close_notify: the TLS stream ends cleanly (rustls reports a truncation, an
        // end without close_notify, as an UnexpectedEof error).
        let mut rest = Vec::new();
        let end = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("end in time");
        assert!(
            end.is_ok(),
            "the TLS session ended without close_notify: {end:?}"
        );
        assert!(rest.is_empty(), "{rest:?}");
    }
    drop(clients);
    let joined = tokio::task::spawn_blocking(move || handle.join());
    tokio::time::timeout(WAIT * 2, joined)
        .await
        .expect("shards stop")
        .unwrap();
}

async fn a_slow_tls_consumer_is_closed_and_gets_every_record_in_order(driver: &str) {
    let certs = Certs::new("slow");
    let gw = start_tls(driver, &certs, &["--outbox-max-bytes", "262144"]);
    let mut s = raw_wss(&gw, &certs, "slow").await;
    // The client reads nothing while 60 KB notifications pile up: the kernel's buffers fill,
    // then the outbox (ciphertext), then the connection is closed 1013.
    let pad = "p".repeat(60_000);
    let mut n = 0;
    while gw.metric("websocket_slow_consumers_closed_total").await == 0.0 {
        assert!(n < 2_000, "never closed as a slow consumer");
        gw.publish_to("slow", &format!(r#"{{"seq":{n},"pad":"{pad}"}}"#))
            .await;
        n += 1;
    }
    // Everything that was sent decrypts, in order, up to the close frame.
    let mut expected = 0;
    loop {
        let (opcode, payload) = frame(&mut s).await;
        if opcode == 8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1013);
            break;
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v["seq"], expected,
            "in order, none missing before the close"
        );
        expected += 1;
    }
    assert!(expected > 0 && expected < n, "{expected} of {n}");
}

async fn the_plain_port_serves_ws_beside_wss(driver: &str) {
    let certs = Certs::new("plainport");
    let gw = start_tls(driver, &certs, &["--websocket-plain-port", "0"]);
    let mut wss = wss_connect(gw.ws, certs.client(), "both").await;
    let plain = gw.plain.expect("a plain port");
    let url = format!("ws://{plain}/notifications?token={}", token("both"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    assert_eq!(gw.publish_to("both", r#"{"to":"both"}"#).await, 2);
    assert_eq!(next_json(&mut wss).await["to"], "both");
    assert_eq!(next_json(&mut ws).await["to"], "both");
}
