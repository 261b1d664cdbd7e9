//! A slow Redis is not a dead Redis: stalls (`DEBUG SLEEP`) shorter than the liveness timeout
//! lose nothing, whatever the subscriber was waiting for at the time; a longer one reconnects
//! and is counted. Real redis-server, real gateways, real clients; exact counting.

mod common;

use std::time::Duration;

use common::{redis::RedisProc, *};

/// Notifications published during each stall.
const N: u32 = 200;

/// Sends, in one write on one connection, PUBLISH `{"n":i}` to `user` for each `i` of
/// `numbers`, followed by `DEBUG SLEEP stall` when given; returns at once, with a thread that
/// collects how many subscribers Redis counted for each PUBLISH (and the sleep's `OK`).
///
/// With the sleep, Redis runs the PUBLISHes (queueing the messages on the subscriber's
/// connection) and then stalls before writing them out: the subscriber receives them only
/// after the stall. Without it, sent while Redis is stalled, the PUBLISHes queue behind the
/// stall and run after it.
fn publish_numbered(
    url: String,
    user: &str,
    numbers: std::ops::RangeInclusive<u32>,
    stall: Option<Duration>,
) -> std::thread::JoinHandle<Vec<i64>> {
    let channel = format!("notifications:{user}");
    let mut con = ::redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pipe = ::redis::pipe();
    let mut replies = 0;
    for i in numbers {
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(format!(r#"{{"n":{i}}}"#));
        replies += 1;
    }
    if let Some(d) = stall {
        pipe.cmd("DEBUG").arg("SLEEP").arg(d.as_secs_f64());
        replies += 1;
    }
    con.send_packed_command(&pipe.get_packed_pipeline())
        .unwrap();
    std::thread::spawn(move || {
        (0..replies)
            .filter_map(|_| match con.recv_response().unwrap() {
                ::redis::Value::Int(n) => Some(n),
                ::redis::Value::Okay => None,
                other => panic!("unexpected reply {other:?}"),
            })
            .collect()
    })
}

/// Reads `{"n":1}`..`{"n":N}` from `c`, exactly and in order.
async fn expect_numbered(c: &mut Client) {
    for i in 1..=N {
        let m = next_json(c).await;
        assert_eq!(m["n"], i, "notification {i} of {N}: got {m}");
    }
    assert_silent(c).await;
}

/// Publishes `N` notifications to alice around a stall of `stall` (the first half queued on the
/// subscriber's connection before it, the second half queued behind it) and checks she gets
/// exactly 1..N in order on the same Redis connection (no reconnect). With `newcomer`, another
/// user connects during the stall (per-user mode: its SUBSCRIBE's reply is held up by the stall
/// too) and must be answered once the stall ends, subscribed.
async fn stall_loses_nothing(mode: &str, stall: Duration, extra: &[&str], newcomer: bool) {
    let r = RedisProc::start_debuggable();
    let gw = start_with("io-uring", &r.gateway_args(mode, extra));
    gw.wait_ready().await;
    let mut alice = gw.connect("alice").await;
    assert_eq!(r.publish("notifications:alice", r#"{"n":0}"#), 1);
    assert_eq!(next_json(&mut alice).await["n"], 0);

    let before = publish_numbered(r.url(), "alice", 1..=N / 2, Some(stall));
    let behind = publish_numbered(r.url(), "alice", N / 2 + 1..=N, None);
    let bob = newcomer.then(|| {
        let url = gw.url("bob");
        tokio::spawn(async move { tokio_tungstenite::connect_async(url).await })
    });
    let receivers = tokio::task::spawn_blocking(move || {
        let mut all = before.join().unwrap();
        all.extend(behind.join().unwrap());
        all
    })
    .await
    .unwrap();
    assert_eq!(receivers.len(), N as usize);
    // Redis counted this gateway as a receiver of every one of them...
    assert!(receivers.iter().all(|&n| n == 1), "{receivers:?}");
    // ...and it delivered every one of them, in order, without reconnecting.
    expect_numbered(&mut alice).await;
    assert_eq!(gw.metric("redis_reconnects_total").await, 0.0);
    assert_eq!(gw.metric("redis_liveness_timeouts_total").await, 0.0);
    if let Some(bob) = bob {
        let (mut bob, _) = bob.await.unwrap().expect("bob upgraded after the stall");
        assert_eq!(next_json(&mut bob).await["type"], "connected");
        assert_eq!(r.publish("notifications:bob", r#"{"hi":1}"#), 1);
        assert_eq!(next_json(&mut bob).await["hi"], 1);
    }
}

/// A 400 ms stall that the subscriber's idle PING overlaps: with a 1 s liveness timeout the
/// subscriber probes after 250 ms of silence, so its PING is always sent inside the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_stall_overlapping_the_idle_ping_loses_nothing() {
    let extra = ["--redis-liveness-timeout", "1s"];
    stall_loses_nothing("pattern", Duration::from_millis(400), &extra, false).await;
}

/// Several seconds, with the default settings: the idle PING (after 2.5 s of silence) waits
/// for its reply through the rest of the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_of_six_seconds_below_the_deadline_loses_nothing() {
    stall_loses_nothing("pattern", Duration::from_secs(6), &[], false).await;
}

/// Per-user mode: a SUBSCRIBE (a newcomer's) whose reply is held up by the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_stall_during_a_subscribe_loses_nothing() {
    let extra = ["--subscribe-wait", "20s"];
    stall_loses_nothing("per-user", Duration::from_secs(2), &extra, true).await;
}

/// Beyond the liveness timeout the connection is given up, counted, and re-made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_beyond_the_deadline_reconnects_and_is_counted() {
    let r = RedisProc::start_debuggable();
    let gw = start_with(
        "io-uring",
        &r.gateway_args("pattern", &["--redis-liveness-timeout", "1s"]),
    );
    gw.wait_ready().await;
    let mut carol = gw.connect("carol").await;
    let stalled = r.stall(Duration::from_secs(4));
    wait_until(WAIT, "the liveness timeout to fire", || async {
        gw.metric("redis_liveness_timeouts_total").await >= 1.0
    })
    .await;
    assert_eq!(gw.get("/readyz").await.0, 503);
    tokio::task::spawn_blocking(move || stalled.join().unwrap())
        .await
        .unwrap();
    gw.wait_ready().await;
    assert!(gw.metric("redis_reconnects_total").await >= 1.0);
    assert!(gw.metric("redis_unsubscribed_seconds_total").await > 0.0);
    assert_eq!(r.publish("notifications:carol", r#"{"after":1}"#), 1);
    assert_eq!(next_json(&mut carol).await["after"], 1);
}

/// Why the subscriber reads RESP itself (see `fanout/redis/link.rs`): with the `redis` crate's
/// sync `PubSub`, a reply that arrives after the read timeout makes the connection throw away
/// the next value it reads, and with RESP2 that is a published message, on a connection that
/// stayed up. If this test ever fails, the crate has changed and the choice can be revisited.
#[test]
fn the_redis_crates_pubsub_loses_a_message_after_a_late_reply() {
    let r = RedisProc::start_debuggable();
    let mut con = r.conn();
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe("c").unwrap();
    // "m1" is queued on the subscriber's connection, then Redis stalls for 500 ms.
    let stalled = {
        let mut publisher = r.conn();
        let mut pipe = ::redis::pipe();
        pipe.cmd("PUBLISH").arg("c").arg("m1");
        pipe.cmd("DEBUG").arg("SLEEP").arg(0.5);
        publisher
            .send_packed_command(&pipe.get_packed_pipeline())
            .unwrap();
        std::thread::spawn(move || {
            publisher.recv_response().unwrap();
            publisher.recv_response().unwrap();
        })
    };
    pubsub
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let ping: Result<String, _> = pubsub.ping();
    assert!(ping.unwrap_err().is_timeout());
    stalled.join().unwrap();
    r.publish("c", "m2");
    pubsub.set_read_timeout(Some(WAIT)).unwrap();
    let first: String = pubsub.get_message().unwrap().get_payload().unwrap();
    assert_eq!(first, "m2", "m1, which Redis delivered, was discarded");
}
