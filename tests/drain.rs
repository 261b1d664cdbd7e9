//! Graceful drain: stop accepting, fail readiness at once, close every connection with 1001
//! spread over the drain period, then stop.
//!
//! No wall-clock bound: the spread is checked by what the drain's own counter shows while it
//! runs (some connections closed, others not yet), and the end by the shard threads joining.

mod common;

use common::*;
use tokio::time::timeout;

under_both_drivers!(drains_gradually_with_1001_then_stops);

async fn drains_gradually_with_1001_then_stops(driver: &str) {
    const CLIENTS: usize = 20;
    let (gw, handle) = start_owned(driver, &["--drain-period", "2s", "--close-timeout", "1s"]);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(gw.connect(&format!("user{i}")).await);
    }
    assert_eq!(gw.get("/readyz").await.0, 200);

    handle.begin_drain();
    // Readiness fails at once, before any connection is closed.
    assert_eq!(gw.get("/readyz").await.0, 503);
    // New connections are refused (the listeners are closed).
    let refused = timeout(WAIT, tokio_tungstenite::connect_async(gw.url("late"))).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a draining gateway must not accept"
    );

    // Gradual: while the drain runs, the count of 1001 closes passes through values strictly
    // between none and all (closes are spread over the period, not sent at once).
    let closes = r#"websocket_close_codes_sent_total{code="1001"}"#;
    let partial = std::sync::Mutex::new(Vec::new());
    wait_until(WAIT * 2, "every connection closed with 1001", || async {
        let n = gw.metric(closes).await as usize;
        if n > 0 && n < CLIENTS {
            partial.lock().unwrap().push(n);
        }
        n == CLIENTS
    })
    .await;
    let partial = partial.into_inner().unwrap();
    assert!(
        !partial.is_empty(),
        "the drain closed all {CLIENTS} connections at once"
    );
    for c in &mut clients {
        assert_eq!(close_code(c).await, 1001);
    }
    drop(clients);

    // The shards stop once their connections are gone.
    let joined = tokio::task::spawn_blocking(move || handle.join());
    timeout(WAIT * 2, joined)
        .await
        .expect("shards stop after the drain")
        .unwrap();
}
