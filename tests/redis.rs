//! Redis fan-out end to end: a real redis-server (and sentinel), real gateways, real clients.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{redis::RedisProc, *};
use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// How many subscribers Redis counts on `user`'s channel.
fn numsub(r: &RedisProc, user: &str) -> i64 {
    let (_, n): (String, i64) = ::redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("notifications:{user}"))
        .query(&mut r.conn())
        .unwrap();
    n
}

/// Waits until Redis counts `subscribers` on `user`'s channel.
async fn wait_subscribed(r: &RedisProc, user: &str, subscribers: i64) {
    wait_until(WAIT, "per-user SUBSCRIBE/UNSUBSCRIBE", || async {
        numsub(r, user) == subscribers
    })
    .await;
}

async fn delivers_verbatim_in_order_across_shards(mode: &str) {
    let r = RedisProc::start();
    let mut args = r.gateway_args(mode, &[]);
    args.extend(["--max-connections-per-user".into(), "64".into()]);
    let gw = start_with("io-uring", &args);
    gw.wait_ready().await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(gw.connect("alice").await);
        if clients.len() >= 4 && gw.metric("websocket_handoffs_total").await >= 1.0 {
            break;
        }
    }
    let _bob = gw.connect("bob").await;
    if mode == "per-user" {
        // `connected` means subscribed: no waiting.
        assert_eq!(numsub(&r, "alice"), 1);
    }
    // Several hundred pipelined messages, each with type and timestamp: forwarded byte for byte.
    let payloads: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"type":"message","timestamp":17,"seq":{i},"text":"héllo"}}"#))
        .collect();
    let mut pipe = ::redis::pipe();
    for p in &payloads {
        pipe.cmd("PUBLISH")
            .arg("notifications:alice")
            .arg(p)
            .ignore();
    }
    pipe.query::<()>(&mut r.conn()).unwrap();
    for c in &mut clients {
        for expected in &payloads {
            let msg = timeout(WAIT, c.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(msg, Message::text(expected.clone()));
        }
    }
    // A payload without type/timestamp is normalised like the Java gateway did.
    r.publish("notifications:alice", r#"{"text":"x"}"#);
    let m = next_json(&mut clients[0]).await;
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("notification"), Some("x"))
    );
    // Garbage is dropped and counted, never delivered.
    r.publish("notifications:alice", "not json");
    r.publish("notifications:alice", "[1,2]");
    wait_until(WAIT, "message_processing errors counted", || async {
        gw.metric(r#"redis_errors_total{error_type="message_processing"}"#)
            .await
            >= 2.0
    })
    .await;
    assert_silent(&mut clients[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_mode_delivers_verbatim_in_order_across_shards() {
    delivers_verbatim_in_order_across_shards("pattern").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_mode_delivers_verbatim_in_order_across_shards() {
    delivers_verbatim_in_order_across_shards("per-user").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_per_user_mode_each_receive_only_their_users_traffic() {
    let r = RedisProc::start();
    let mut args = r.gateway_args("per-user", &[]);
    args.extend(["--redis-unsubscribe-grace".into(), "300ms".into()]);
    let gw1 = start_with("io-uring", &args);
    let gw2 = start_with("epoll", &args);
    let mut alice = gw1.connect("alice").await;
    let mut bob = gw2.connect("bob").await;
    // `connected` means subscribed: no waiting.
    assert_eq!(numsub(&r, "alice"), 1);
    assert_eq!(numsub(&r, "bob"), 1);
    for i in 0..100 {
        r.publish("notifications:alice", &format!(r#"{{"n":{i}}}"#));
        r.publish("notifications:bob", &format!(r#"{{"n":{i}}}"#));
    }
    for i in 0..100 {
        assert_eq!(next_json(&mut alice).await["n"], i);
        assert_eq!(next_json(&mut bob).await["n"], i);
    }
    assert_eq!(gw1.metric("redis_events_consumed_total").await, 100.0);
    assert_eq!(gw2.metric("redis_events_consumed_total").await, 100.0);
    // When a user leaves, its channel is released after the grace period.
    drop(alice);
    wait_subscribed(&r, "alice", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_pattern_mode_drop_other_instances_users() {
    let r = RedisProc::start();
    let gw1 = start_with("io-uring", &r.gateway_args("pattern", &[]));
    let gw2 = start_with("io-uring", &r.gateway_args("pattern", &[]));
    gw1.wait_ready().await;
    gw2.wait_ready().await;
    let mut alice = gw1.connect("alice").await;
    let mut bob = gw2.connect("bob").await;
    for i in 0..50 {
        assert_eq!(
            r.publish("notifications:alice", &format!(r#"{{"n":{i}}}"#)),
            2
        );
        r.publish("notifications:bob", &format!(r#"{{"n":{i}}}"#));
    }
    for i in 0..50 {
        assert_eq!(next_json(&mut alice).await["n"], i);
        assert_eq!(next_json(&mut bob).await["n"], i);
    }
    assert_silent(&mut alice).await;
    for gw in [&gw1, &gw2] {
        assert_eq!(gw.metric("redis_events_consumed_total").await, 100.0);
        wait_until(WAIT, "not_local drops", || async {
            gw.metric(r#"notifications_dropped_total{reason="not_local"}"#)
                .await
                == 50.0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_redis_kill9_and_restart() {
    let mut r = RedisProc::start();
    // History off: connections stay open across the restart. With history they are closed with
    // 4002 once the subscription is back, as the restart changed their users' epochs
    // (tests/history.rs).
    let mut args = r.gateway_args("pattern", &[]);
    args.extend(["--history-enabled".into(), "false".into()]);
    let gw = start_with("io-uring", &args);
    gw.wait_ready().await;
    let mut c = gw.connect("carol").await;
    r.publish("notifications:carol", r#"{"n":"before"}"#);
    assert_eq!(next_json(&mut c).await["n"], "before");

    r.kill9();
    wait_until(WAIT, "/readyz 503 while Redis is down", || async {
        gw.get("/readyz").await.0 == 503
    })
    .await;
    assert_eq!(gw.metric("redis_connected").await, 0.0);
    // Still serving clients meanwhile, and retrying.
    let _d = gw.connect("dave").await;
    wait_until(WAIT, "reconnect attempts while Redis is down", || async {
        gw.metric("redis_reconnects_total").await >= 2.0
    })
    .await;

    r.restart();
    // Delivery resumes once the gateway has resubscribed (it publishes until one arrives).
    let deadline = Instant::now() + WAIT;
    loop {
        r.publish("notifications:carol", r#"{"n":"after"}"#);
        if let Ok(Some(Ok(Message::Text(t)))) = timeout(Duration::from_millis(50), c.next()).await {
            assert!(t.contains("after"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery after Redis came back"
        );
    }
    assert!(gw.metric("redis_reconnects_total").await >= 1.0);
    assert!(
        gw.metric(r#"redis_errors_total{error_type="connection"}"#)
            .await
            >= 1.0
    );
    assert_eq!(gw.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_subscribes_when_it_appears() {
    let port = common::redis::free_port();
    let args = vec![
        "--redis-host".to_string(),
        "127.0.0.1".into(),
        "--redis-port".into(),
        port.to_string(),
    ];
    let gw = start_with("io-uring", &args);
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 503);
    let mut c = gw.connect("erin").await;
    let r = RedisProc::start_on(port, &[]);
    gw.wait_ready().await;
    let deadline = Instant::now() + WAIT;
    loop {
        r.publish("notifications:erin", r#"{"hi":1}"#);
        if let Ok(Some(Ok(Message::Text(_)))) = timeout(Duration::from_millis(50), c.next()).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery after Redis appeared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_sentinel_failover() {
    let mut master = RedisProc::start();
    let replica = RedisProc::replica_of(&master);
    let sentinel = RedisProc::sentinel(master.port);
    // History off: this is about the subscriber following the failover with connections kept
    // open. With history the promoted replica changes every user's epoch, so connected clients
    // are closed with 4002 to recover (tests/history.rs).
    let args = vec![
        "--redis-sentinels".to_string(),
        format!("127.0.0.1:{}", sentinel.port),
        "--redis-master-name".into(),
        "mymaster".into(),
        "--history-enabled".into(),
        "false".into(),
    ];
    let gw = start_with("io-uring", &args);
    gw.wait_ready().await;
    let mut c = gw.connect("frank").await;
    master.publish("notifications:frank", r#"{"n":1}"#);
    assert_eq!(next_json(&mut c).await["n"], 1);

    master.kill9();
    // Wait for the sentinel to promote the replica.
    sentinel.wait_promoted(&replica);
    // Delivery resumes through the new master.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        replica.publish("notifications:frank", r#"{"n":2}"#);
        if let Ok(Some(Ok(Message::Text(t)))) = timeout(Duration::from_millis(100), c.next()).await
        {
            assert!(t.contains("\"n\":2"));
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the failover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_shed_and_counted_while_the_gateway_stays_responsive() {
    const RING: u64 = 16;
    let r = RedisProc::start();
    let mut args = r.gateway_args("pattern", &[]);
    args.extend(
        [
            "--shard-queue-capacity",
            "16",
            "--max-connections-per-user",
            "64",
            "--outbox-max-messages",
            "100000",
            "--outbox-max-bytes",
            "100000000",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (gw, handle) = start_owned("io-uring", &args);
    gw.wait_ready().await;
    // Twenty readers of one hot user.
    let received: Vec<Arc<AtomicU64>> = (0..20).map(|_| Arc::default()).collect();
    for count in &received {
        let mut c = gw.connect("hot").await;
        let count = count.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = c.next().await {
                if m.is_text() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // The hot user's shard holds its deliveries, so its 16-slot ring fills for certain: the
    // first 16 notifications wait in it, every other one is dropped and counted.
    let hot = chat4all_gateway::internals::owner_shard("hot", 2);
    handle.pause_deliveries(hot, true);
    const FLOOD: u64 = 2_000;
    let url = r.url();
    tokio::task::spawn_blocking(move || {
        let mut con = ::redis::Client::open(url)
            .unwrap()
            .get_connection()
            .unwrap();
        let mut pipe = ::redis::pipe();
        for i in 0..FLOOD {
            pipe.cmd("PUBLISH")
                .arg("notifications:hot")
                .arg(format!(r#"{{"type":"t","timestamp":1,"i":{i}}}"#))
                .ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
    })
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "all published messages consumed",
        || async { gw.metric("redis_events_consumed_total").await == FLOOD as f64 },
    )
    .await;
    let dropped = gw
        .metric(r#"notifications_dropped_total{reason="queue_full"}"#)
        .await as u64;
    assert_eq!(
        dropped,
        FLOOD - RING,
        "exactly what did not fit in the ring"
    );
    // Released, the shard delivers what its ring held: exactly that, to every client.
    handle.pause_deliveries(hot, false);
    wait_until(
        Duration::from_secs(30),
        "clients received the rest",
        || async {
            received
                .iter()
                .all(|c| c.load(Ordering::Relaxed) == FLOOD - dropped)
        },
    )
    .await;
    // Nothing more follows: a marker published now is each client's next message.
    r.publish("notifications:hot", r#"{"type":"t","timestamp":1,"end":1}"#);
    wait_until(Duration::from_secs(30), "the marker", || async {
        received
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == FLOOD - dropped + 1)
    })
    .await;
    // Never disconnected by Redis for lagging, and still serving.
    assert_eq!(gw.metric("redis_reconnects_total").await, 0.0);
    assert_eq!(gw.get("/healthz").await.0, 200);
    let mut fresh = gw.connect("after-flood").await;
    r.publish("notifications:after-flood", r#"{"ok":1}"#);
    assert_eq!(next_json(&mut fresh).await["ok"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_api_goes_through_redis_when_configured() {
    let r = RedisProc::start();
    let gw1 = start_with("io-uring", &r.gateway_args("pattern", &[]));
    let gw2 = start_with("epoll", &r.gateway_args("pattern", &[]));
    gw1.wait_ready().await;
    gw2.wait_ready().await;
    // The user is on gw2; the publish goes to gw1's API.
    let mut g = gw2.connect("grace").await;
    let (status, body) = gw1
        .publish(r#"{"user_id":"grace","payload":{"x":1}}"#, None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Two gateway instances are subscribed to the pattern.
    assert_eq!(body, r#"{"recipients":2}"#);
    assert_eq!(next_json(&mut g).await["x"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_user_and_password() {
    for mode in ["pattern", "per-user"] {
        // `default` stays open for the test's own commands; the gateway logs in as `gw`.
        let r = RedisProc::start_on(
            common::redis::free_port(),
            &["--user", "gw", "on", ">s3cret", "~*", "&*", "+@all"],
        );
        let url = format!("redis://gw:s3cret@127.0.0.1:{}/", r.port);
        let args = ["--redis-url", url.as_str(), "--redis-subscription", mode];
        let gw = start("epoll", &args);
        gw.wait_ready().await;
        let mut c = gw.connect("ivan").await;
        assert_eq!(r.publish("notifications:ivan", r#"{"n":1}"#), 1);
        assert_eq!(next_json(&mut c).await["n"], 1);
        drop(c);
        // A wrong password is a failed session (counted, retried), never a subscription.
        let bad = format!("redis://gw:wrong@127.0.0.1:{}/", r.port);
        let gw = start("epoll", &["--redis-url", bad.as_str()]);
        wait_until(WAIT, "a failed session", || async {
            gw.metric(r#"redis_errors_total{error_type="connection"}"#)
                .await
                >= 1.0
        })
        .await;
        assert_eq!(gw.get("/readyz").await.0, 503);
    }
}
