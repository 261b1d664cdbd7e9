//! History and recovery on reconnect (issue 10), end to end: real gateways (single node and
//! with a real redis-server), real WebSocket clients, the client-facing contract exactly.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{redis::RedisProc, *};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{sleep, timeout},
};
use tokio_tungstenite::tungstenite::Message;

/// The history script as the gateway loads it (what a direct publisher calls).
const SCRIPT: &str = include_str!("../src/fanout/redis/history.lua");

/// Connects as `user`, with `since`/`epoch` when given; returns the client and `connected`.
async fn join(gw: &TestGateway, user: &str, resume: Option<(u64, &str)>) -> (Client, Value) {
    let mut url = gw.url(user);
    if let Some((since, epoch)) = resume {
        url.push_str(&format!("&since={since}&epoch={epoch}"));
    }
    let (mut ws, resp) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["userId"], user);
    (ws, hello)
}

/// [`join`] with `since`, as a client does after Redis came back: a 503 (`history_unavailable`,
/// `Retry-After`) while the gateway's history reader reconnects is retried until [`WAIT`].
async fn rejoin(gw: &TestGateway, user: &str, since: u64, epoch: &str) -> (Client, Value) {
    let url = format!("{}&since={since}&epoch={epoch}", gw.url(user));
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("connect in time")
        {
            Ok((mut ws, _)) => {
                let hello = next_json(&mut ws).await;
                assert_eq!(hello["type"], "connected", "{hello}");
                return (ws, hello);
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp))
                if resp.status() == 503 && Instant::now() < deadline =>
            {
                sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{user}: upgrade refused: {err:?}"),
        }
    }
}

/// POST /v1/publish with extra header lines; returns (status, head, body).
async fn publish_raw(gw: &TestGateway, body: &str, headers: &str) -> (u16, String, String) {
    publish_at(gw.control, body, headers).await
}

/// [`publish_raw`] to a control address.
async fn publish_at(control: SocketAddr, body: &str, headers: &str) -> (u16, String, String) {
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(control).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Publishes `payload` to `user` through the API and expects 200.
async fn publish(gw: &TestGateway, user: &str, payload: &str) {
    publish_to_addr(gw.control, user, payload).await
}

/// [`publish`] to a control address.
async fn publish_to_addr(control: SocketAddr, user: &str, payload: &str) {
    let (status, _, body) = publish_at(
        control,
        &format!(r#"{{"user_id":"{user}","payload":{payload}}}"#),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn offset(v: &Value) -> u64 {
    v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {v}"))
}

fn epoch(v: &Value) -> String {
    v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch: {v}"))
        .to_string()
}

/// Reads the next `n` notifications; returns their `n` fields and checks their offsets run
/// from `first`.
async fn expect_offsets(ws: &mut Client, first: u64, n: u64, epoch_is: &str) -> Vec<Value> {
    let mut got = Vec::new();
    for i in 0..n {
        let m = next_json(ws).await;
        assert_eq!(offset(&m), first + i, "{m}");
        assert_eq!(epoch(&m), epoch_is, "{m}");
        got.push(m);
    }
    got
}

// ---------------------------------------------------------------------------------------------
// Single node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_recovers_exactly_and_a_restart_changes_the_epoch() {
    let gw = start("io-uring", &[]);
    let (mut c, hello) = join(&gw, "sam", None).await;
    assert_eq!(offset(&hello), 0, "no history yet");
    assert!(hello.get("recovered").is_none(), "{hello}");
    let e = epoch(&hello);
    // Key order and numbers as published; the two fields right after the brace.
    publish(
        &gw,
        "sam",
        r#"{"type":"t","timestamp":5,"n":1,"a":[],"f":1.5}"#,
    )
    .await;
    let mut frame = None;
    while frame.is_none() {
        match timeout(WAIT, c.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => frame = Some(t.to_string()),
            _ => continue,
        }
    }
    assert_eq!(
        frame.unwrap(),
        format!(r#"{{"offset":1,"epoch":"{e}","type":"t","timestamp":5,"n":1,"a":[],"f":1.5}}"#)
    );
    drop(c);
    for n in 2..=4 {
        publish(&gw, "sam", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let (mut c, hello) = join(&gw, "sam", Some((1, &e))).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!((offset(&hello), epoch(&hello)), (4, e.clone()));
    let got = expect_offsets(&mut c, 2, 3, &e).await;
    assert_eq!(got[0]["n"], 2);
    publish(&gw, "sam", r#"{"n":5}"#).await;
    expect_offsets(&mut c, 5, 1, &e).await;
    // Already up to date: recovered, nothing replayed.
    let (mut d, hello) = join(&gw, "sam", Some((5, &e))).await;
    assert_eq!(hello["recovered"], true);
    assert_silent(&mut d).await;
    // Ahead of the top: not recoverable.
    let (_, hello) = join(&gw, "sam", Some((9, &e))).await;
    assert_eq!(hello["recovered"], false);
    drop((c, d));
    assert_eq!(
        gw.metric(r#"history_recoveries_total{outcome="recovered"}"#)
            .await,
        2.0
    );
    assert_eq!(gw.metric("history_replayed_notifications_total").await, 3.0);
    assert!(gw.metric("history_bytes").await > 0.0);
    drop(gw);

    // A restart lost the history: a new epoch, and the client is told to re-sync.
    let gw = start("io-uring", &[]);
    let (mut c, hello) = join(&gw, "sam", Some((5, &e))).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(offset(&hello), 0);
    let e2 = epoch(&hello);
    assert_ne!(e2, e);
    assert_silent(&mut c).await;
    publish(&gw, "sam", r#"{"n":6}"#).await;
    expect_offsets(&mut c, 1, 1, &e2).await;
    assert_eq!(
        gw.metric(r#"history_recoveries_total{outcome="epoch_changed"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_trimmed_history_is_not_recovered() {
    let gw = start("io-uring", &["--history-size", "3"]);
    let (c, hello) = join(&gw, "tim", None).await;
    let e = epoch(&hello);
    drop(c);
    for n in 1..=5 {
        publish(&gw, "tim", &format!(r#"{{"n":{n}}}"#)).await;
    }
    // Offsets 3..=5 are kept: since=2 recovers, since=1 does not.
    let (mut c, hello) = join(&gw, "tim", Some((2, &e))).await;
    assert_eq!(hello["recovered"], true);
    expect_offsets(&mut c, 3, 3, &e).await;
    let (mut c, hello) = join(&gw, "tim", Some((1, &e))).await;
    assert_eq!(hello["recovered"], false);
    assert_eq!(offset(&hello), 5);
    assert_silent(&mut c).await;
    assert_eq!(
        gw.metric(r#"history_recoveries_total{outcome="trimmed"}"#)
            .await,
        1.0
    );
}

/// Publishes race reconnecting clients: over all connections each offset arrives exactly once
/// and in order (exact accounting over many reconnects, each one racing live publishes).
async fn publishes_racing_replays(gw: &TestGateway, user: &str, total: u64) {
    let (c, hello) = join(gw, user, None).await;
    drop(c);
    let e = epoch(&hello);
    let start = offset(&hello);
    let publisher = {
        let (control, user) = (gw.control, user.to_string());
        tokio::spawn(async move {
            for n in 1..=total {
                publish_to_addr(control, &user, &format!(r#"{{"n":{n}}}"#)).await;
            }
        })
    };
    let mut last = start;
    let mut reconnects = 0;
    while last < start + total {
        let (mut c, hello) = join(gw, user, Some((last, &e))).await;
        assert_eq!(hello["recovered"], true, "{hello}");
        reconnects += 1;
        // Take a few, then drop the connection mid-stream.
        for _ in 0..3 {
            if last == start + total {
                break;
            }
            let m = next_json(&mut c).await;
            assert_eq!(offset(&m), last + 1, "no gap, no duplicate: {m}");
            assert_eq!(m["n"].as_u64().unwrap(), last + 1 - start);
            last += 1;
        }
    }
    publisher.await.unwrap();
    assert!(reconnects > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_publishes_racing_replays_neither_gap_nor_duplicate() {
    // Larger than the default 100, so a client that lags behind is still within the window.
    let gw = start("io-uring", &["--history-size", "250"]);
    publishes_racing_replays(&gw, "rita", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_since_and_epoch_are_refused_with_400() {
    let gw = start("io-uring", &[]);
    for query in [
        "&since=3",
        "&epoch=abc",
        "&since=x&epoch=abc",
        "&since=-1&epoch=abc",
        "&since=18446744073709551616&epoch=abc",
        "&since=1&epoch=",
        "&since=1&since=2&epoch=abc",
    ] {
        let url = format!("{}{query}", gw.url("ben"));
        assert_eq!(gw.refused_status(&url).await, 400, "{query}");
    }
    // The body names the problem.
    let mut s = TcpStream::connect(gw.ws).await.unwrap();
    let req = format!(
        "GET /notifications?token={}&since=5 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("ben")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("\\\"since\\\" needs \\\"epoch\\\"") || text.contains("needs"),
        "{text}"
    );
    // since=0 is valid.
    let (_, hello) = join(&gw, "ben", Some((0, &"x".repeat(10)))).await;
    assert_eq!(hello["recovered"], false, "unknown epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_with_offset_or_epoch_are_refused() {
    let gw = start("io-uring", &[]);
    for payload in [r#"{"offset":1}"#, r#"{"a":1,"epoch":"x"}"#] {
        let body = format!(r#"{{"user_id":"u","payload":{payload}}}"#);
        let (status, _, answer) = publish_raw(&gw, &body, "").await;
        assert_eq!(status, 400, "{payload}: {answer}");
        assert!(
            answer.contains("offset") || answer.contains("epoch"),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_idempotent_retries_record_once() {
    let gw = start("io-uring", &[]);
    let (mut c, _) = join(&gw, "ida", None).await;
    let body = r#"{"user_ids":["ida","ivy"],"payload":{"n":1}}"#;
    let (s1, h1, b1) = publish_raw(&gw, body, "Idempotency-Key: k-1\r\n").await;
    let (s2, h2, b2) = publish_raw(&gw, body, "Idempotency-Key: k-1\r\n").await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "the first result");
    assert!(!h1.contains("idempotent-replayed"), "{h1}");
    assert!(h2.contains("idempotent-replayed: true"), "{h2}");
    assert_eq!(offset(&next_json(&mut c).await), 1);
    assert_silent(&mut c).await;
    let (s3, ..) = publish_raw(&gw, body, "Idempotency-Key: k-2\r\n").await;
    assert_eq!(s3, 200);
    assert_eq!(offset(&next_json(&mut c).await), 2);
    let (s4, _, b4) = publish_raw(&gw, body, "Idempotency-Key: has space\r\n").await;
    assert_eq!(s4, 400, "{b4}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_off_is_as_before() {
    let gw = start("io-uring", &["--history-enabled", "false"]);
    let (mut c, hello) = join(&gw, "olga", None).await;
    assert!(
        hello.get("offset").is_none() && hello.get("epoch").is_none(),
        "{hello}"
    );
    publish(&gw, "olga", r#"{"n":1}"#).await;
    let m = next_json(&mut c).await;
    assert!(m.get("offset").is_none(), "{m}");
    // since/epoch mean nothing then; an Idempotency-Key is refused.
    let (_, hello) = join(&gw, "olga", Some((1, "e"))).await;
    assert!(hello.get("recovered").is_none());
    let body = r#"{"user_id":"olga","payload":{}}"#;
    let (status, _, answer) = publish_raw(&gw, body, "Idempotency-Key: k\r\n").await;
    assert_eq!(status, 400, "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Redis.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_across_a_gateway_restart() {
    for mode in ["pattern", "per-user"] {
        let r = RedisProc::start();
        let args = r.gateway_args(mode, &[]);
        let gw = start_with("io-uring", &args);
        gw.wait_ready().await;
        let (mut c, hello) = join(&gw, "rob", None).await;
        assert_eq!(offset(&hello), 0);
        let e = epoch(&hello);
        // Numbers as published, byte for byte (1.50, 1E2, beyond 64 bits), empty arrays too.
        let payload = r#"{"n":1,"z":[],"y":1.50,"e":1E2,"big":123456789012345678901234567890}"#;
        publish(&gw, "rob", payload).await;
        let first = loop {
            if let Message::Text(t) = timeout(WAIT, c.next()).await.unwrap().unwrap().unwrap() {
                break t.to_string();
            }
        };
        // The API normalises (type, timestamp); the script splices the two fields in front.
        assert!(
            first.starts_with(&format!(
                r#"{{"offset":1,"epoch":"{e}","type":"notification","#
            )) && first.ends_with(&payload[1..]),
            "{first}"
        );
        drop(c);
        drop(gw);
        // Published while no gateway runs: only Redis records them.
        let gw2 = start_with("io-uring", &args);
        gw2.wait_ready().await;
        for n in 2..=4 {
            publish(&gw2, "rob", &format!(r#"{{"n":{n}}}"#)).await;
        }
        let (mut c, hello) = join(&gw2, "rob", Some((1, &e))).await;
        assert_eq!(hello["recovered"], true, "{mode}: {hello}");
        assert_eq!((offset(&hello), epoch(&hello)), (4, e.clone()));
        let got = expect_offsets(&mut c, 2, 3, &e).await;
        assert_eq!(got[2]["n"], 4);
        publish(&gw2, "rob", r#"{"n":5}"#).await;
        expect_offsets(&mut c, 5, 1, &e).await;
        // A plain PUBLISH still delivers live, without the fields.
        r.publish("notifications:rob", r#"{"plain":true}"#);
        let m = next_json(&mut c).await;
        assert_eq!(m["plain"], true);
        assert!(m.get("offset").is_none(), "{m}");
        assert_eq!(
            gw2.metric(r#"history_recoveries_total{outcome="recovered"}"#)
                .await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publishes_racing_replays_neither_gap_nor_duplicate() {
    let r = RedisProc::start();
    let args = ["--history-size", "250"];
    let gw = start_with("io-uring", &r.gateway_args("pattern", &args));
    gw.wait_ready().await;
    publishes_racing_replays(&gw, "rex", 200).await;
    // Direct publishers through the script race too (faster than the API).
    let (c, hello) = join(&gw, "rex", None).await;
    drop(c);
    let e = epoch(&hello);
    let top = offset(&hello);
    let port = r.port;
    let total = 240u64;
    let publisher = tokio::task::spawn_blocking(move || {
        let mut con = ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        for n in 1..=total {
            direct_publish(&mut con, "rex", &format!(r#"{{"d":{n}}}"#)).unwrap();
        }
    });
    let mut last = top;
    while last < top + total {
        let (mut c, hello) = join(&gw, "rex", Some((last, &e))).await;
        assert_eq!(hello["recovered"], true, "{hello}");
        for _ in 0..5 {
            if last == top + total {
                break;
            }
            let m = next_json(&mut c).await;
            assert_eq!(offset(&m), last + 1, "{m}");
            assert_eq!(m["d"].as_u64().unwrap(), last + 1 - top);
            last += 1;
        }
    }
    publisher.await.unwrap();
}

/// What a backend publishing to Redis directly does: the history script, with checks on.
fn direct_publish(
    con: &mut ::redis::Connection,
    user: &str,
    payload: &str,
) -> ::redis::RedisResult<::redis::Value> {
    ::redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(3)
        .arg("")
        .arg(format!("history:{{{user}}}:s"))
        .arg(format!("history:{{{user}}}:m"))
        .arg("publish")
        .arg(payload)
        // HISTORY_SIZE of the racing test's gateway.
        .arg(250)
        .arg(300_000)
        .arg(1)
        .arg(format!("notifications:{user}"))
        .query(con)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trimmed_history_and_flushall_are_not_recovered() {
    let r = RedisProc::start();
    let gw = start_with(
        "io-uring",
        &r.gateway_args("pattern", &["--history-size", "3"]),
    );
    gw.wait_ready().await;
    let (c, hello) = join(&gw, "tess", None).await;
    drop(c);
    let e = epoch(&hello);
    for n in 1..=5 {
        publish(&gw, "tess", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let len: u64 = ::redis::cmd("XLEN")
        .arg("history:{tess}:s")
        .query(&mut r.conn())
        .unwrap();
    assert_eq!(len, 3, "trimmed exactly");
    let (mut c, hello) = join(&gw, "tess", Some((2, &e))).await;
    assert_eq!(hello["recovered"], true);
    expect_offsets(&mut c, 3, 3, &e).await;
    let (mut c, hello) = join(&gw, "tess", Some((1, &e))).await;
    assert_eq!(
        (hello["recovered"].clone(), offset(&hello)),
        (Value::Bool(false), 5)
    );
    assert_silent(&mut c).await;

    // FLUSHALL: the history is gone, the epoch changes.
    let _: () = ::redis::cmd("FLUSHALL").query(&mut r.conn()).unwrap();
    let (mut c, hello) = join(&gw, "tess", Some((5, &e))).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(offset(&hello), 0);
    let e2 = epoch(&hello);
    assert_ne!(e2, e);
    publish(&gw, "tess", r#"{"n":6}"#).await;
    expect_offsets(&mut c, 1, 1, &e2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_changes_the_epoch() {
    let mut r = RedisProc::start();
    let gw = start_with("io-uring", &r.gateway_args("pattern", &[]));
    gw.wait_ready().await;
    let (c, hello) = join(&gw, "uma", None).await;
    drop(c);
    let e = epoch(&hello);
    publish(&gw, "uma", r#"{"n":1}"#).await;
    r.restart();
    wait_until(
        Duration::from_secs(10),
        "publishes again after the restart",
        || async {
            let body = r#"{"user_id":"uma","payload":{"n":2}}"#;
            publish_raw(&gw, body, "").await.0 == 200
        },
    )
    .await;
    // Replays are served once the subscription is back (503 before: retry).
    gw.wait_ready().await;
    let (_, hello) = rejoin(&gw, "uma", 1, &e).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_ne!(epoch(&hello), e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_changes_the_epoch() {
    let mut master = RedisProc::start();
    let replica = RedisProc::replica_of(&master);
    let sentinel = RedisProc::sentinel(master.port);
    let args = vec![
        "--redis-sentinels".to_string(),
        format!("127.0.0.1:{}", sentinel.port),
        "--redis-master-name".into(),
        "mymaster".into(),
    ];
    let gw = start_with("io-uring", &args);
    gw.wait_ready().await;
    let (c, hello) = join(&gw, "vic", None).await;
    drop(c);
    let e = epoch(&hello);
    publish(&gw, "vic", r#"{"n":1}"#).await;
    // The replica has the entry: the history itself survives, but the promoted replica may
    // lack the tail in general, so the epoch must change.
    // The replica's first sync waits for the master's diskless-sync delay (5 s by default).
    wait_until(
        Duration::from_secs(30),
        "the replica has the stream",
        || async {
            ::redis::cmd("XLEN")
                .arg("history:{vic}:s")
                .query::<u64>(&mut replica.conn())
                .unwrap_or(0)
                == 1
        },
    )
    .await;
    master.kill9();
    sentinel.wait_promoted(&replica);
    wait_until(
        Duration::from_secs(15),
        "publishes through the new master",
        || async {
            let body = r#"{"user_id":"vic","payload":{"n":2}}"#;
            publish_raw(&gw, body, "").await.0 == 200
        },
    )
    .await;
    // Replays are served once the subscription is back (503 before: retry).
    gw.wait_ready().await;
    let (c, hello) = rejoin(&gw, "vic", 1, &e).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    let e2 = epoch(&hello);
    assert_ne!(e2, e);
    assert_eq!(
        offset(&hello),
        2,
        "offsets continue from the replicated history"
    );
    // The new epoch recovers from here on.
    drop(c);
    publish(&gw, "vic", r#"{"n":3}"#).await;
    let (mut c, hello) = join(&gw, "vic", Some((2, &e2))).await;
    assert_eq!(hello["recovered"], true);
    expect_offsets(&mut c, 3, 1, &e2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_offsets_epochs_and_idempotency_keys() {
    let r = RedisProc::start();
    let a = start_with("io-uring", &r.gateway_args("per-user", &[]));
    let b = start_with("io-uring", &r.gateway_args("pattern", &[]));
    a.wait_ready().await;
    b.wait_ready().await;
    let (mut ca, ha) = join(&a, "wes", None).await;
    let (mut cb, hb) = join(&b, "wes", None).await;
    assert_eq!((offset(&ha), epoch(&ha)), (offset(&hb), epoch(&hb)));
    let e = epoch(&ha);
    publish(&a, "wes", r#"{"n":1}"#).await;
    publish(&b, "wes", r#"{"n":2}"#).await;
    for c in [&mut ca, &mut cb] {
        expect_offsets(c, 1, 2, &e).await;
    }
    // The same key through either gateway: one entry, the same answer.
    let body = r#"{"user_id":"wes","payload":{"n":3}}"#;
    let (s1, h1, b1) = publish_raw(&a, body, "Idempotency-Key: retry-7\r\n").await;
    let (s2, h2, b2) = publish_raw(&b, body, "Idempotency-Key: retry-7\r\n").await;
    assert_eq!((s1, s2, b1.clone()), (200, 200, b2));
    assert!(!h1.contains("idempotent-replayed"));
    assert!(h2.contains("idempotent-replayed: true"), "{h2}");
    for c in [&mut ca, &mut cb] {
        expect_offsets(c, 3, 1, &e).await;
        assert_silent(c).await;
    }
    let len: u64 = ::redis::cmd("XLEN")
        .arg("history:{wes}:s")
        .query(&mut r.conn())
        .unwrap();
    assert_eq!(len, 3);
    // Recovered through the other gateway.
    drop(cb);
    publish(&a, "wes", r#"{"n":4}"#).await;
    let (mut cb, hb) = join(&b, "wes", Some((3, &e))).await;
    assert_eq!(hb["recovered"], true);
    expect_offsets(&mut cb, 4, 1, &e).await;
    // Refused in Redis mode too.
    let (status, ..) = publish_raw(&a, r#"{"user_id":"wes","payload":{"epoch":"1"}}"#, "").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_publishers_are_checked_by_the_script() {
    let r = RedisProc::start();
    let mut con = r.conn();
    let err = direct_publish(&mut con, "xena", r#"{"offset":3}"#).unwrap_err();
    assert!(err.to_string().contains("already has"), "{err}");
    let err = direct_publish(&mut con, "xena", "[1]").unwrap_err();
    assert!(err.to_string().contains("not a JSON object"), "{err}");
    direct_publish(&mut con, "xena", r#"{"k":1}"#).unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = ::redis::cmd("XRANGE")
        .arg("history:{xena}:s")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "1-1");
    let text = &entries[0].1[0].1;
    assert!(text.starts_with(r#"{"offset":1,"epoch":""#), "{text}");
    assert!(text.contains(r#""type":"notification""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_first_connections_get_in_and_replays_are_503() {
    let mut r = RedisProc::start();
    let gw = start_with("io-uring", &r.gateway_args("pattern", &[]));
    gw.wait_ready().await;
    let (c, hello) = join(&gw, "zoe", None).await;
    drop(c);
    let e = epoch(&hello);
    r.kill9();
    // No since: let in as without history (an outage of Redis is not one of the gateway).
    let (_c, hello) = join(&gw, "zoe", None).await;
    assert!(hello.get("epoch").is_none(), "{hello}");
    assert_eq!(gw.metric("history_unread_connections_total").await, 1.0);
    // A replay cannot be served: 503, retry with the same since.
    let url = format!("{}&since=0&epoch={e}", gw.url("zoe"));
    assert_eq!(gw.refused_status(&url).await, 503);
    assert_eq!(
        gw.metric(r#"history_recoveries_total{outcome="unavailable"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_after_a_lost_subscription_closes_established_clients_4002() {
    let r = RedisProc::start();
    let port = r.port;
    let gw = start_with("io-uring", &r.gateway_args("pattern", &[]));
    gw.wait_ready().await;
    let (mut c, hello) = join(&gw, "yan", None).await;
    let e1 = epoch(&hello);
    publish(&gw, "yan", r#"{"n":1}"#).await;
    expect_offsets(&mut c, 1, 1, &e1).await;
    // Redis restarts empty, and the gateway cannot subscribe again (PSUBSCRIBE denied) until
    // told: whatever is published meanwhile is deterministically missed by its subscription.
    drop(r);
    let r = RedisProc::start_on(
        port,
        &[
            "--user",
            "default",
            "on",
            "nopass",
            "~*",
            "&*",
            "+@all",
            "-psubscribe",
        ],
    );
    direct_publish(&mut r.conn(), "yan", r#"{"n":2}"#).unwrap();
    let _: () = ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("+psubscribe")
        .query(&mut r.conn())
        .unwrap();
    gw.wait_ready().await;
    // The next one is offset 2 of a new epoch: offset 1 of that epoch never reached this client,
    // and the gateway cannot know what else it missed, so it closes for a reconnect. (The
    // publisher's connection broke with the restart: a 504 is retried with the same key.)
    let body = r#"{"user_id":"yan","payload":{"n":3}}"#;
    wait_until(WAIT, "published", || async {
        publish_raw(&gw, body, "Idempotency-Key: yan-3\r\n").await.0 == 200
    })
    .await;
    assert_eq!(close_code(&mut c).await, 4002);
    let (mut c, hello) = rejoin(&gw, "yan", 1, &e1).await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(offset(&hello), 2);
    let e2 = epoch(&hello);
    assert_ne!(e2, e1);
    // From there on it recovers within the new epoch.
    publish(&gw, "yan", r#"{"n":4}"#).await;
    expect_offsets(&mut c, 3, 1, &e2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_clients_without_a_later_notification_are_closed_4002() {
    let mut r = RedisProc::start();
    let gw = start_with("io-uring", &r.gateway_args("pattern", &[]));
    gw.wait_ready().await;
    let (mut c, hello) = join(&gw, "ann", None).await;
    let e = epoch(&hello);
    publish(&gw, "ann", r#"{"n":1}"#).await;
    expect_offsets(&mut c, 1, 1, &e).await;
    // Redis loses everything; nothing more is published for ann. Once subscribed again the
    // gateway reads ann's history, finds another epoch, and closes for a recovery.
    r.restart();
    assert_eq!(close_code(&mut c).await, 4002);
    // Counted by the shard right after it sent the close: the client may see the close first.
    wait_until(WAIT, "history_resubscribe_closes_total 1", || async {
        gw.metric("history_resubscribe_closes_total").await == 1.0
    })
    .await;
    let (_, hello) = rejoin(&gw, "ann", 1, &e).await;
    assert_eq!(hello["recovered"], false, "{hello}");
}
