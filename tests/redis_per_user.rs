//! Per-user subscriptions (`REDIS_SUBSCRIPTION=per-user`): `connected` is sent only once the
//! user's channel is subscribed, so anything published after it arrives, as in pattern mode;
//! an upgrade that cannot be subscribed in `SUBSCRIBE_WAIT`, or meets a drain, gets 503; a
//! connect storm is subscribed in batches. Real redis-server, real gateways, real clients.

mod common;

use std::time::Duration;

use common::{redis::RedisProc, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Sends an upgrade request for `user` on a raw socket and returns the socket.
async fn send_upgrade(gw: &TestGateway, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.ws).await.unwrap();
    let req = format!(
        "GET /notifications?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(user)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads a refusal to its end (the gateway closes after it).
async fn read_refusal(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    timeout(limit, s.read_to_end(&mut out))
        .await
        .expect("a response in time")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_published_right_after_connected_arrives() {
    let r = RedisProc::start();
    let gw = start_with("io-uring", &r.gateway_args("per-user", &[]));
    // 40 users, each published to the instant its client sees `connected`.
    for i in 0..40 {
        let user = format!("u{i}");
        let mut c = gw.connect(&user).await;
        let channel = format!("notifications:{user}");
        assert_eq!(
            r.publish(&channel, r#"{"first":1}"#),
            1,
            "{user} not subscribed"
        );
        assert_eq!(next_json(&mut c).await["first"], 1);
        // Back within the grace period: still covered, answered at once.
        drop(c);
        let mut again = gw.connect(&user).await;
        assert_eq!(r.publish(&channel, r#"{"again":1}"#), 1);
        assert_eq!(next_json(&mut again).await["again"], 1);
        // A second connection of a connected user needs no wait either.
        let mut second = gw.connect(&user).await;
        assert_eq!(r.publish(&channel, r#"{"both":1}"#), 1);
        assert_eq!(next_json(&mut again).await["both"], 1);
        assert_eq!(next_json(&mut second).await["both"], 1);
    }
    let waits = |o: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(&format!(
                r#"websocket_subscribe_waits_total{{outcome="{o}"}}"#
            ))
            .await
        }
    };
    // First connections are confirmed, second ones covered; a reconnect is either (covered
    // when the gateway has not yet seen the previous connection's close).
    let (confirmed, covered) = (waits("confirmed").await, waits("covered").await);
    assert_eq!(confirmed + covered, 120.0);
    assert!(
        confirmed >= 40.0 && covered >= 40.0,
        "{confirmed} {covered}"
    );
    assert_eq!(waits("timed_out").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_subscription_is_refused_with_503_and_retry_after() {
    let mut r = RedisProc::start();
    let gw = start_with(
        "epoll",
        &r.gateway_args("per-user", &["--subscribe-wait", "300ms"]),
    );
    let _early = gw.connect("early").await;
    r.kill9();
    let mut s = send_upgrade(&gw, "late").await;
    let response = read_refusal(&mut s, WAIT).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("\r\nRetry-After: 1\r\n"), "{response}");
    assert!(
        response.contains(r#""error":"subscribe_timeout""#),
        "{response}"
    );
    assert_eq!(
        gw.metric(r#"websocket_subscribe_waits_total{outcome="timed_out"}"#)
            .await,
        1.0
    );
    assert_eq!(gw.metric("websocket_subscribe_waiting").await, 0.0);
    // Redis back: the same user connects and is subscribed.
    r.restart();
    wait_until(WAIT, "/readyz 200", || async {
        gw.get("/readyz").await.0 == 200
    })
    .await;
    let mut late = gw.connect("late").await;
    assert_eq!(r.publish("notifications:late", r#"{"ok":1}"#), 1);
    assert_eq!(next_json(&mut late).await["ok"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_waiting_upgrades_with_503() {
    let mut r = RedisProc::start();
    let args = r.gateway_args(
        "per-user",
        &["--subscribe-wait", "60s", "--drain-period", "0"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (gw, handle) = common::start_owned("io-uring", &args);
    r.kill9();
    let mut waiting = send_upgrade(&gw, "patient").await;
    wait_until(WAIT, "the upgrade to wait", || async {
        gw.metric("websocket_subscribe_waiting").await == 1.0
    })
    .await;
    handle.begin_drain();
    // Well before SUBSCRIBE_WAIT: the drain answers it.
    let response = read_refusal(&mut waiting, WAIT).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains(r#""error":"draining""#), "{response}");
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_storm_is_subscribed_in_batches() {
    const USERS: usize = 300;
    let mut r = RedisProc::start();
    // All from 127.0.0.1: lift the per-address handshake cap (64 by default).
    let args = r.gateway_args(
        "per-user",
        &["--subscribe-wait", "60s", "--max-handshakes-per-ip", "0"],
    );
    let gw = start_with("io-uring", &args);
    r.kill9();
    // Every upgrade waits while Redis is away...
    let mut clients = Vec::new();
    for i in 0..USERS {
        let url = gw.url(&format!("storm{i}"));
        clients.push(tokio::spawn(async move {
            tokio_tungstenite::connect_async(url).await
        }));
    }
    wait_until(Duration::from_secs(30), "every upgrade to wait", || async {
        gw.metric("websocket_subscribe_waiting").await == USERS as f64
    })
    .await;
    // ...and Redis back (a fresh server: fresh command counts) sees them in one SUBSCRIBE.
    r.restart();
    let mut connected = Vec::new();
    for c in clients {
        let (ws, _) = c.await.unwrap().expect("upgraded once subscribed");
        connected.push(ws);
    }
    assert_eq!(r.calls("subscribe"), 1, "one SUBSCRIBE for {USERS} users");
    for (i, ws) in connected.iter_mut().enumerate() {
        assert_eq!(next_json(ws).await["type"], "connected");
        let channel = format!("notifications:storm{i}");
        assert_eq!(r.publish(&channel, r#"{"n":1}"#), 1);
        assert_eq!(next_json(ws).await["n"], 1);
    }
}
