//! wss:// on the shards: the TLS handshake in the accepting shard, the session handed to the
//! owner shard with the socket, notifications encrypted per connection, the closing handshake
//! with close_notify, and the refusals of what is not a proper TLS client. Every case runs on
//! both I/O drivers; certificates are generated per test.

mod common;

use common::{tls::*, *};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

under_both_drivers!(
    wss_delivers_across_shards_and_closes_cleanly,
    tls12_clients_are_served_too,
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
        let got = next_json_tls(ws).await;
        assert_eq!(got["n"], i);
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
        assert_eq!(next_json_tls(ws).await["type"], "pong");
    }
    // A notification larger than one TLS record (and than the shard's output buffer).
    let big = "x".repeat(200_000);
    assert_eq!(
        gw.publish_to("tls0", &format!(r#"{{"big":"{big}"}}"#))
            .await,
        1
    );
    assert_eq!(
        next_json_tls(&mut clients[0]).await["big"]
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
    assert_eq!(next_json_tls(&mut ws).await["v"], 12);
    assert_eq!(
        gw.metric(r#"websocket_tls_handshakes_total{version="1.2"}"#)
            .await,
        1.0
    );
}
