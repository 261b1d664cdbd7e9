//! Graceful drain: stop accepting, fail readiness at once, close every connection with 1001
//! spread over the drain period, then stop.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::time::timeout;

under_both_drivers!(drains_gradually_with_1001_then_stops);

async fn drains_gradually_with_1001_then_stops(driver: &str) {
    let (gw, handle) = start_owned(driver, &["--drain-period", "1s", "--close-timeout", "1s"]);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(gw.connect(&format!("user{i}")).await);
    }
    assert_eq!(gw.get("/readyz").await.0, 200);

    let started = Instant::now();
    handle.begin_drain();
    // Readiness fails at once, before any connection is closed.
    assert_eq!(gw.get("/readyz").await.0, 503);
    // New connections are refused (the listeners are closed).
    let refused = timeout(WAIT, tokio_tungstenite::connect_async(gw.url("late"))).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a draining gateway must not accept"
    );

    let mut closes = Vec::new();
    for c in &mut clients {
        assert_eq!(close_code(c).await, 1001);
        closes.push(started.elapsed());
    }
    let first = closes.iter().min().unwrap();
    let last = closes.iter().max().unwrap();
    // Spread over the period, not all at once (20 closes over 1 s: one every ~50 ms).
    assert!(
        *last - *first >= Duration::from_millis(500),
        "closes not spread: first {first:?}, last {last:?}"
    );
    assert!(*last <= Duration::from_millis(2500), "drain took {last:?}");

    // The shards stop once their connections are gone.
    let joined = tokio::task::spawn_blocking(move || handle.join());
    timeout(Duration::from_secs(5), joined)
        .await
        .expect("shards stop after the drain")
        .unwrap();
}
