//! A hot user must not starve its shard (issue 8 §1): while one user's eight connections are
//! being served a large Redis backlog, that user's owner shard keeps firing handshake timeouts,
//! upgrading new clients, pinging and closing idle ones, and drains when asked.
//!
//! Deterministic set-up: the hot shard's deliveries are paused while a backlog of fixed-size
//! notifications is published into its ring, then released. Every check must complete *while
//! that backlog is still being worked through* (the server has written or queued fewer frames
//! than the backlog holds); a shard whose timers only run once it is idle fails, whatever the
//! machine's speed. Frames have a fixed size, so frames processed = written + queued bytes / size.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chat4all_gateway::internals::owner_shard;
use common::{redis::RedisProc, *};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::tungstenite::Message;

/// Notifications in the backlog.
const BACKLOG: usize = 150_000;
/// The hot user's connections.
const HOT_CONNS: usize = 8;
/// How long a check may wait for its condition (a starved shard would hold it until its
/// backlog is done; the backlog assertion then fails).
const CHECK_WAIT: Duration = Duration::from_secs(120);

/// The `i`-th notification: always the same length.
fn notification(i: usize) -> String {
    format!(r#"{{"type":"t","timestamp":1,"i":"{i:08}"}}"#)
}

/// Frames the gateway has written or queued for the hot user's connections so far.
async fn frames_processed(gw: &TestGateway) -> u64 {
    let frame_len = (notification(0).len() + 2) as f64;
    let sent = gw.metric("notifications_sent_total").await;
    let queued = gw.metric("websocket_outbox_bytes").await;
    (sent + (queued / frame_len).floor()) as u64
}

/// Asserts the hot shard still has part of its backlog to deliver.
async fn backlog_remains(gw: &TestGateway, after: &str) {
    let processed = frames_processed(gw).await;
    let total = (BACKLOG * HOT_CONNS) as u64;
    assert!(
        processed + (HOT_CONNS as u64) < total,
        "{after} only once the hot shard's backlog was done ({processed} of {total} frames)"
    );
}

/// A user id whose owner shard (of 2) is `shard`.
fn user_on(shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| owner_shard(u, 2) == shard)
        .unwrap()
}

under_both_drivers!(a_flooded_user_does_not_starve_its_shard);

async fn a_flooded_user_does_not_starve_its_shard(driver: &str) {
    let r = RedisProc::start();
    let port = r.port.to_string();
    let (gw, handle) = start_owned(
        driver,
        &[
            "--redis-host",
            "127.0.0.1",
            "--redis-port",
            &port,
            "--redis-subscription",
            "pattern",
            "--shard-queue-capacity",
            "262144",
            "--max-connections-per-user",
            "64",
            "--outbox-max-messages",
            "10000000",
            "--outbox-max-bytes",
            "2000000000",
            "--handshake-timeout",
            "300ms",
            "--idle-timeout",
            "300ms",
            "--close-timeout",
            "300ms",
            "--drain-period",
            "300ms",
        ],
    );
    wait_until(CHECK_WAIT, "subscribed to Redis", || async {
        gw.get("/readyz").await.0 == 200
    })
    .await;
    let hot = owner_shard("hot", 2);

    // The hot user's fast readers.
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..HOT_CONNS {
        let mut c = gw.connect("hot").await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = c.next().await {
                if m.is_text() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The backlog: published while the hot shard holds its deliveries, then released.
    handle.pause_deliveries(hot, true);
    let url = r.url();
    tokio::task::spawn_blocking(move || {
        let mut con = ::redis::Client::open(url)
            .unwrap()
            .get_connection()
            .unwrap();
        for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(5_000) {
            let mut pipe = ::redis::pipe();
            for &i in chunk {
                pipe.cmd("PUBLISH")
                    .arg("notifications:hot")
                    .arg(notification(i))
                    .ignore();
            }
            pipe.query::<()>(&mut con).unwrap();
        }
    })
    .await
    .unwrap();
    wait_until(
        CHECK_WAIT,
        "the backlog is in the hot shard's ring",
        || async { gw.metric("redis_events_consumed_total").await == BACKLOG as f64 },
    )
    .await;
    assert_eq!(
        gw.metric(r#"notifications_dropped_total{reason="queue_full"}"#)
            .await,
        0.0
    );
    handle.pause_deliveries(hot, false);

    // 1. Handshake timeouts fire: stalled handshakes (the kernel spreads them over both shards
    //    by 4-tuple, so some land on the hot one) are dropped without a response.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(gw.ws).await.unwrap();
        s.write_all(b"GET /notifications HTTP/1.1\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        let n = timeout(CHECK_WAIT, s.read(&mut buf))
            .await
            .expect("a stalled handshake must be dropped")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    backlog_remains(&gw, "handshake timeouts fired").await;

    // 2. New clients of users on the hot shard are upgraded. (How long each took is printed
    //    for docs/PERFORMANCE.md; speed is not asserted here.)
    let mut upgrades = Vec::new();
    for i in 0..8 {
        let user = user_on(hot, &format!("fresh{i}-"));
        let started = std::time::Instant::now();
        let mut c = timeout(CHECK_WAIT, gw.connect(&user))
            .await
            .expect("upgrade on the hot shard");
        upgrades.push(started.elapsed());
        let _ = c.send(Message::Close(None)).await;
    }
    upgrades.sort();
    eprintln!("{driver}: upgrades on the saturated shard took {upgrades:?}");
    backlog_remains(&gw, "new clients were upgraded").await;

    // 3. Idle clients are pinged, then closed with 1001.
    let mut idle = raw_upgraded(&gw, &user_on(hot, "idle-")).await;
    let (opcode, _) = timeout(CHECK_WAIT, read_frame(&mut idle)).await.unwrap();
    assert_eq!(opcode, 9, "expected the idle ping");
    let code = timeout(CHECK_WAIT, raw_close_code(&mut idle))
        .await
        .unwrap();
    assert_eq!(code, 1001);
    backlog_remains(&gw, "the idle timeout fired").await;

    // 4. The drain completes: the hot connections are closed and the shards stop, with part of
    //    the backlog never delivered.
    handle.begin_drain();
    for reader in readers {
        timeout(CHECK_WAIT, reader).await.expect("drained").unwrap();
    }
    let joined = tokio::task::spawn_blocking(move || handle.join());
    timeout(CHECK_WAIT, joined)
        .await
        .expect("the shards stop after the drain")
        .unwrap();
    backlog_remains(&gw, "the drain finished").await;
    eprintln!(
        "{driver}: {} of {} frames read by the hot user's connections",
        received.load(Ordering::Relaxed),
        BACKLOG * HOT_CONNS
    );
}
