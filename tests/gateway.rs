//! End-to-end behaviour of the gateway core: real gateway (two shards), real clients, both I/O
//! drivers.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};

under_both_drivers!(
    delivers_to_every_connection_of_a_user_across_shards,
    does_not_leak_to_other_users,
    preserves_per_user_order,
    refuses_bad_upgrades_with_precise_statuses,
    refuses_over_capacity_with_503,
    sockets_mid_handshake_count_against_the_cap,
    answers_json_ping_and_websocket_ping,
    unsupported_client_messages_get_an_error_and_stay_open,
    closes_1002_on_unmasked_frame,
    closes_1007_on_invalid_utf8,
    closes_1009_on_oversized_message,
    answers_client_close_handshake,
    echoes_every_valid_client_close_code,
    drops_stalled_handshakes,
    evicts_oldest_connection_beyond_per_user_cap,
    evicted_connections_free_their_slot_at_once,
    one_address_cannot_hold_every_handshake_slot,
    closes_slow_consumer_with_1013_while_others_receive,
    pings_idle_clients_and_closes_silent_ones,
    publish_api_statuses,
    publish_api_requires_key_when_set,
    payload_normalisation_matches_existing_gateway,
    serves_health_and_metrics,
);

async fn delivers_to_every_connection_of_a_user_across_shards(driver: &str) {
    let gw = start(driver, &["--max-connections-per-user", "64"]);
    // SO_REUSEPORT spreads connections over both shards by a hash of the 4-tuple; open
    // connections until at least one was accepted by the non-owner shard and handed over
    // (the chance that 32 all land on the owner is 2^-32).
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(gw.connect("alice").await);
        if clients.len() >= 4 && gw.metric("websocket_handoffs_total").await >= 1.0 {
            break;
        }
    }
    assert!(
        gw.metric("websocket_handoffs_total").await >= 1.0,
        "no hand-off happened"
    );
    let n = gw
        .publish_to("alice", r#"{"type":"message","text":"hi"}"#)
        .await;
    assert_eq!(n, clients.len() as u64);
    for c in &mut clients {
        let msg = next_json(c).await;
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["text"], "hi");
    }
    // The per-shard gauge is labelled and all connections are on one shard (the owner).
    let (_, text) = gw.get("/metrics").await;
    let per_shard: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("websocket_connections_per_shard{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 2);
    assert!(per_shard.contains(&(clients.len() as f64)) && per_shard.contains(&0.0));
}

async fn does_not_leak_to_other_users(driver: &str) {
    let gw = start(driver, &[]);
    let mut alice = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    assert_eq!(gw.publish_to("alice", r#"{"n":1}"#).await, 1);
    assert_eq!(gw.publish_to("nobody", r#"{"n":2}"#).await, 0);
    // Markers published after: each client's next message is its own marker, so nothing for
    // another user reached it before (per-user order is guaranteed).
    assert_eq!(gw.publish_to("bob", r#"{"marker":"bob"}"#).await, 1);
    assert_eq!(gw.publish_to("alice", r#"{"marker":"alice"}"#).await, 1);
    assert_eq!(next_json(&mut alice).await["n"], 1);
    assert_eq!(next_json(&mut alice).await["marker"], "alice");
    assert_eq!(next_json(&mut bob).await["marker"], "bob");
}

async fn preserves_per_user_order(driver: &str) {
    let gw = start(driver, &[]);
    let mut a = gw.connect("ordered").await;
    let mut b = gw.connect("ordered").await;
    for i in 0..300 {
        gw.publish_to("ordered", &format!(r#"{{"seq":{i}}}"#)).await;
    }
    for c in [&mut a, &mut b] {
        for i in 0..300 {
            assert_eq!(next_json(c).await["seq"], i);
        }
    }
}

async fn refuses_bad_upgrades_with_precise_statuses(driver: &str) {
    let gw = start(driver, &[]);
    let base = format!("ws://{}", gw.ws);
    // 401: missing, garbage, wrong secret, expired.
    assert_eq!(
        gw.refused_status(&format!("{base}/notifications")).await,
        401
    );
    assert_eq!(
        gw.refused_status(&format!("{base}/notifications?token=abc"))
            .await,
        401
    );
    let forged = chat4all_gateway::internals::issue_hs256(
        b"another-secret-0123456789abcdef0123456789",
        "mallory",
        3600,
    );
    assert_eq!(
        gw.refused_status(&format!("{base}/notifications?token={forged}"))
            .await,
        401
    );
    let expired = expired_token("late");
    assert_eq!(
        gw.refused_status(&format!("{base}/notifications?token={expired}"))
            .await,
        401
    );
    // 404: another path.
    assert_eq!(
        gw.refused_status(&format!("{base}/other?token={}", token("a")))
            .await,
        404
    );
    // The token also works as a Bearer header.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{base}/notifications"),
    )
    .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token("hdr")).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["userId"], "hdr");

    let raw = |extra: &str, key: &str, version: &str| {
        format!(
            "GET /notifications?token={} HTTP/1.1\r\nHost: x\r\n{extra}Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n",
            token("raw")
        )
    };
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    // 426: a plain GET, no upgrade.
    let (status, body) = http(gw.ws, raw("", "dGhlIHNhbXBsZSBub25jZQ==", "13").as_bytes()).await;
    assert_eq!(status, 426, "{body}");
    // 400: bad key, bad version, garbage request line.
    assert_eq!(
        http(gw.ws, raw(upgrade, "short", "13").as_bytes()).await.0,
        400
    );
    assert_eq!(
        http(
            gw.ws,
            raw(upgrade, "dGhlIHNhbXBsZSBub25jZQ==", "8").as_bytes()
        )
        .await
        .0,
        400
    );
    assert_eq!(http(gw.ws, b"NOT HTTP AT ALL\r\n\r\n").await.0, 400);
    // 405: not GET.
    let post = raw(upgrade, "dGhlIHNhbXBsZSBub25jZQ==", "13").replacen("GET", "POST", 1);
    assert_eq!(http(gw.ws, post.as_bytes()).await.0, 405);
    // 431: headers beyond the cap.
    let huge = format!(
        "GET /notifications HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(http(gw.ws, huge.as_bytes()).await.0, 431);
    // Refusals are counted under the existing deployment's labels.
    assert!(
        gw.metric(r#"websocket_connection_errors_total{error_type="missing_token"}"#)
            .await
            >= 1.0
    );
    assert!(
        gw.metric(r#"websocket_connection_errors_total{error_type="jwt_verification_failed"}"#)
            .await
            >= 3.0
    );
}

async fn refuses_over_capacity_with_503(driver: &str) {
    let gw = start(driver, &["--max-connections", "2"]);
    let a = gw.connect("a").await;
    let _b = gw.connect("b").await;
    assert_eq!(gw.refused_status(&gw.url("c")).await, 503);
    drop(a);
    // The slot frees once the server sees the close (a refused attempt holds no slot).
    wait_until(WAIT, "a freed slot admits a new connection", || async {
        tokio_tungstenite::connect_async(gw.url("c")).await.is_ok()
    })
    .await;
}

async fn sockets_mid_handshake_count_against_the_cap(driver: &str) {
    let gw = start(
        driver,
        &[
            "--max-connections",
            "3",
            "--max-handshakes-per-ip",
            "3",
            "--handshake-timeout",
            "3s",
        ],
    );
    // Four sockets from 127.0.0.4 that never finish a request: three are in progress, and each
    // took a connection slot when it was accepted (before any request byte was read); the
    // fourth is over the per-address cap and answered 429, which tells the test the other
    // three hold their slots.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(gw.ws).await.unwrap();
        s.write_all(b"GET /notifications HTTP/1.1\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    let refused = r#"websocket_handshakes_total{outcome="refused"}"#;
    wait_until(WAIT, "the fourth socket is answered 429", || async {
        gw.metric(refused).await == 1.0
    })
    .await;
    // So a real client is refused at once, and the control port still answers.
    assert_eq!(gw.refused_status(&gw.url("real")).await, 503);
    assert_eq!(gw.get("/healthz").await.0, 200);
    // Once the stalled handshakes time out, the slots return.
    wait_until(WAIT, "the stalled handshakes time out", || async {
        gw.metric(r#"websocket_handshakes_total{outcome="timed_out"}"#)
            .await
            >= 3.0
    })
    .await;
    let _ok = gw.connect("real").await;
    drop(idle);
}

async fn answers_json_ping_and_websocket_ping(driver: &str) {
    let gw = start(driver, &[]);
    let mut ws = gw.connect("pinger").await;
    // Exactly what the existing Python CLI sends.
    send_text(&mut ws, r#"{"type": "ping"}"#).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(pong["type"], "pong");
    assert!(pong["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    send_text(&mut ws, "{\n\t\"type\" :\"ping\" , \"extra\": [1]\n}").await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    ws.send(Message::Ping(b"abc".to_vec().into()))
        .await
        .unwrap();
    loop {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"abc");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

async fn unsupported_client_messages_get_an_error_and_stay_open(driver: &str) {
    let gw = start(driver, &[]);
    let mut ws = gw.connect("chatty").await;
    for (text, reason) in [
        ("not json", "invalid_json"),
        ("[1,2]", "not_an_object"),
        (r#"{"type":"subscribe"}"#, "unknown_type"),
    ] {
        send_text(&mut ws, text).await;
        let err = next_json(&mut ws).await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"], reason);
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["error"], "binary_not_supported");
    // Still open and receiving.
    assert_eq!(gw.publish_to("chatty", r#"{"ok":true}"#).await, 1);
    assert_eq!(next_json(&mut ws).await["ok"], true);
}

async fn closes_1002_on_unmasked_frame(driver: &str) {
    let gw = start(driver, &[]);
    let mut s = raw_upgraded(&gw, "raw").await;
    s.write_all(&client_frame(1, br#"{"type":"ping"}"#, None))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut s).await, 1002);
}

async fn closes_1007_on_invalid_utf8(driver: &str) {
    let gw = start(driver, &[]);
    let mut s = raw_upgraded(&gw, "raw").await;
    s.write_all(&client_frame(
        1,
        &[0x7b, 0xff, 0xfe, 0x7d],
        Some([1, 2, 3, 4]),
    ))
    .await
    .unwrap();
    assert_eq!(raw_close_code(&mut s).await, 1007);
}

async fn closes_1009_on_oversized_message(driver: &str) {
    let gw = start(driver, &[]);
    let mut ws = gw.connect("big").await;
    send_text(&mut ws, &format!(r#"{{"type":"{}"}}"#, "x".repeat(5000))).await;
    assert_eq!(close_code(&mut ws).await, 1009);
}

async fn answers_client_close_handshake(driver: &str) {
    let gw = start(driver, &[]);
    let mut ws = gw.connect("leaver").await;
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, 1000);
    // The server then closes the TCP connection.
    assert!(matches!(
        timeout(WAIT, ws.next()).await.unwrap(),
        None | Some(Err(_))
    ));
    wait_until(WAIT, "the connection is gone", || async {
        gw.metric("websocket_connections_active").await == 0.0
    })
    .await;
}

async fn echoes_every_valid_client_close_code(driver: &str) {
    let gw = start(driver, &[]);
    // RFC 6455 §5.5.1: the endpoint echoes the status code it received. Application codes
    // (3000-4999) included; the metric labels them as one range.
    for code in [
        1000u16, 1001, 1003, 1007, 1008, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut ws = gw.connect("closer").await;
        ws.send(Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        assert_eq!(close_code(&mut ws).await, code, "echo of {code}");
    }
    let app = gw
        .metric(r#"websocket_close_codes_sent_total{code="3000-4999"}"#)
        .await;
    assert_eq!(app, 4.0);
}

async fn drops_stalled_handshakes(driver: &str) {
    let gw = start(driver, &["--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(gw.ws).await.unwrap();
    s.write_all(b"GET /notifications HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(WAIT, s.read(&mut buf))
        .await
        .expect("the server must drop a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0, "dropped without a response");
    assert!(
        gw.metric(r#"websocket_handshakes_total{outcome="timed_out"}"#)
            .await
            >= 1.0
    );
}

async fn evicts_oldest_connection_beyond_per_user_cap(driver: &str) {
    let gw = start(driver, &["--max-connections-per-user", "2"]);
    let mut first = gw.connect("phone").await;
    let mut second = gw.connect("phone").await;
    let mut third = gw.connect("phone").await;
    assert_eq!(close_code(&mut first).await, 1008);
    assert_eq!(gw.publish_to("phone", r#"{"n":1}"#).await, 2);
    assert_eq!(next_json(&mut second).await["n"], 1);
    assert_eq!(next_json(&mut third).await["n"], 1);
}

async fn evicted_connections_free_their_slot_at_once(driver: &str) {
    let gw = start(
        driver,
        &["--max-connections", "2", "--max-connections-per-user", "1"],
    );
    // The first device is never read again, so it will not answer the 1008 close.
    let first = gw.connect("phone").await;
    let mut second = gw.connect("phone").await;
    // The evicted connection does not hold its slot through a closing handshake: another user
    // gets in at once, with the cap at 2.
    let _other = gw.connect("laptop").await;
    assert_eq!(gw.publish_to("phone", r#"{"n":1}"#).await, 1);
    assert_eq!(next_json(&mut second).await["n"], 1);
    drop(first);
}

async fn one_address_cannot_hold_every_handshake_slot(driver: &str) {
    let gw = start(
        driver,
        &[
            "--max-connections",
            "4",
            "--max-handshakes-per-ip",
            "2",
            "--handshake-timeout",
            "60s",
        ],
    );
    // A slow-loris from 127.0.0.3 opens five handshakes and never finishes them: two stay in
    // progress, the other three are answered 429 at once, without taking a connection slot.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(gw.ws).await.unwrap();
        s.write_all(b"GET /notifications HTTP/1.1\r\n")
            .await
            .unwrap();
        stalled.push((s, Vec::new()));
    }
    wait_until(WAIT, "three of the five answered", || {
        for (s, got) in stalled.iter_mut() {
            let mut buf = [0u8; 512];
            while let Ok(n) = s.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        let answered = stalled.iter().filter(|(_, got)| !got.is_empty()).count();
        async move { answered == 3 }
    })
    .await;
    for (_, got) in stalled.iter().filter(|(_, got)| !got.is_empty()) {
        let text = String::from_utf8_lossy(got);
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(text.contains("too_many_handshakes"), "{text}");
    }
    // The other two hold two slots; clients from other addresses get the remaining two.
    for i in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket.connect(gw.ws).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(gw.url(&format!("other{i}")), stream)
            .await
            .expect("a client from another address is upgraded");
        assert_eq!(next_json(&mut ws).await["type"], "connected");
    }
    assert_eq!(
        gw.metric(r#"websocket_handshakes_total{outcome="refused"}"#)
            .await,
        3.0
    );
    drop(stalled);
}

async fn closes_slow_consumer_with_1013_while_others_receive(driver: &str) {
    let gw = start(
        driver,
        &["--outbox-max-messages", "16", "--outbox-max-bytes", "65536"],
    );
    // The slow client never reads until the end; a raw socket with a small receive buffer.
    let mut slow = raw_upgraded(&gw, "slow").await;
    let mut fast = gw.connect("fast").await;
    let pad = "x".repeat(16 * 1024);
    let mut closed_at = None;
    for i in 0..2000 {
        gw.publish_to("slow", &format!(r#"{{"seq":{i},"pad":"{pad}"}}"#))
            .await;
        if i % 50 == 0 {
            assert_eq!(gw.publish_to("fast", &format!(r#"{{"seq":{i}}}"#)).await, 1);
            assert_eq!(next_json(&mut fast).await["seq"], i);
            if gw.metric("websocket_slow_consumers_closed_total").await >= 1.0 {
                closed_at = Some(i);
                break;
            }
        }
    }
    assert!(closed_at.is_some(), "the slow consumer was never closed");
    // The slow client, reading now, sees its backlog and then the 1013 close.
    assert_eq!(raw_close_code(&mut slow).await, 1013);
    // Its outbox memory was released.
    assert_eq!(gw.metric("websocket_outbox_bytes").await, 0.0);
}

async fn pings_idle_clients_and_closes_silent_ones(driver: &str) {
    let gw = start(
        driver,
        &["--idle-timeout", "300ms", "--close-timeout", "300ms"],
    );
    // A raw client that never answers: gets a ping, then the idle close.
    let mut s = raw_upgraded(&gw, "sleepy").await;
    let (opcode, _) = read_frame(&mut s).await;
    assert_eq!(opcode, 9, "expected a server ping");
    assert_eq!(raw_close_code(&mut s).await, 1001);
    // A real client library answers pings automatically and stays connected: three pings,
    // each after IDLE_TIMEOUT of silence, span longer than the 2 x IDLE_TIMEOUT after which a
    // silent client is closed.
    let mut ws = gw.connect("awake").await;
    let mut pings = 0;
    while pings < 3 {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(gw.publish_to("awake", r#"{"still":"here"}"#).await, 1);
    assert_eq!(next_json(&mut ws).await["still"], "here");
}

async fn publish_api_statuses(driver: &str) {
    let gw = start(driver, &["--max-publish-bytes", "2048"]);
    let mut a = gw.connect("u1").await;
    let mut b = gw.connect("u2").await;
    let (status, body) = gw
        .publish(r#"{"user_ids":["u1","u2","u3"],"payload":{"x":1}}"#, None)
        .await;
    assert_eq!((status, body.as_str()), (200, r#"{"recipients":2}"#));
    assert_eq!(next_json(&mut a).await["x"], 1);
    assert_eq!(next_json(&mut b).await["x"], 1);
    for bad in [
        "not json",
        r#"{"payload":{"x":1}}"#,
        r#"{"user_id":"u1","payload":[1]}"#,
        r#"{"user_id":"u1","payload":"text"}"#,
        r#"{"user_id":"u1"}"#,
        r#"{"user_id":"","payload":{}}"#,
    ] {
        let (status, body) = gw.publish(bad, None).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string() && v["message"].is_string());
    }
    let big = format!(
        r#"{{"user_id":"u1","payload":{{"p":"{}"}}}}"#,
        "x".repeat(4096)
    );
    assert_eq!(gw.publish(&big, None).await.0, 413);
    assert_eq!(gw.get("/v1/publish").await.0, 405);
    assert_eq!(gw.get("/nope").await.0, 404);
}

async fn publish_api_requires_key_when_set(driver: &str) {
    let gw = start(driver, &["--publish-api-key", "k3y"]);
    let body = r#"{"user_id":"u1","payload":{}}"#;
    assert_eq!(gw.publish(body, None).await.0, 401);
    assert_eq!(gw.publish(body, Some("wrong")).await.0, 401);
    assert_eq!(gw.publish(body, Some("k3y")).await.0, 200);
}

async fn payload_normalisation_matches_existing_gateway(driver: &str) {
    let gw = start(driver, &[]);
    let mut ws = gw.connect("norm").await;
    // Missing type/timestamp are added.
    gw.publish_to("norm", r#"{"text":"a"}"#).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "notification");
    assert!(m["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(m["text"], "a");
    // Present ones are kept as sent.
    gw.publish_to(
        "norm",
        r#"{"type":"new_message","timestamp":42,"text":"b"}"#,
    )
    .await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["timestamp"].as_u64()),
        (Some("new_message"), Some(42))
    );
}

async fn serves_health_and_metrics(driver: &str) {
    let gw = start(driver, &[]);
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
    let _c = gw.connect("m").await;
    gw.publish_to("m", "{}").await;
    let (status, text) = gw.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "websocket_connections_active 1",
        "notifications_sent_total 1",
        "websocket_connection_errors_total{error_type=\"send_failed\"} 0",
        "redis_events_consumed_total",
        "chat4all_gateway_build_info",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    assert!(text.contains(&format!(
        "driver=\"{}\"",
        if driver == "epoll" {
            "epoll"
        } else {
            "io_uring"
        }
    )));
}

fn expired_token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        serde_json::json!({"sub": user, "user_id": user, "iat": now - 7200, "exp": now - 3600});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
