//! Tokens on established connections (issue 8 §7): with `TOKEN_EXPIRY_CLOSE` a connection is
//! closed with 4001 when its token expires, unless the client sent a fresh token with
//! `{"type":"refresh","token":...}`; every refresh outcome gets a clear answer.

mod common;

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user` expiring at `exp` (Unix seconds), signed with `secret`.
fn token_until(user: &str, exp: u64, secret: &str) -> String {
    let claims = serde_json::json!({"sub": user, "iat": now(), "exp": exp});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Connects as `user` with `token` and consumes the greeting.
async fn connect_with(gw: &TestGateway, user: &str, token: &str) -> Client {
    let url = format!("ws://{}/notifications?token={token}", gw.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .expect("upgrade accepted");
    let hello = next_json(&mut ws).await;
    assert_eq!(
        (hello["type"].as_str(), hello["userId"].as_str()),
        (Some("connected"), Some(user))
    );
    ws
}

under_both_drivers!(
    expired_tokens_close_with_4001_unless_refreshed,
    every_refresh_outcome_is_answered,
);

async fn expired_tokens_close_with_4001_unless_refreshed(driver: &str) {
    let gw = start(
        driver,
        &[
            "--token-expiry-close",
            "true",
            "--jwt-leeway",
            "0s",
            "--idle-timeout",
            "4s",
        ],
    );
    // Two connections whose tokens expire in the same second; one refreshes. (The idle
    // timeout only sets the sweep period, 1 s; neither client is silent that long.)
    let exp = now() + 2;
    let mut stays = connect_with(&gw, "keeper", &token_until("keeper", exp, SECRET)).await;
    let mut goes = connect_with(&gw, "leaver", &token_until("leaver", exp, SECRET)).await;
    let fresh = now() + 3600;
    send_text(
        &mut stays,
        &format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            token_until("keeper", fresh, SECRET)
        ),
    )
    .await;
    let answer = next_json(&mut stays).await;
    assert_eq!(answer["type"], "refreshed");
    assert_eq!(answer["expiresAt"], fresh);
    // The other is closed with 4001 once its token expires...
    assert_eq!(close_code(&mut goes).await, 4001);
    assert_eq!(
        gw.metric(r#"websocket_close_codes_sent_total{code="4001"}"#)
            .await,
        1.0
    );
    // ...by the same sweep that would have closed the first: it is still open.
    assert_eq!(gw.publish_to("keeper", r#"{"still":"here"}"#).await, 1);
    assert_eq!(next_json(&mut stays).await["still"], "here");
}

async fn every_refresh_outcome_is_answered(driver: &str) {
    let gw = start(driver, &["--token-expiry-close", "true"]);
    let mut ws = gw.connect("refresher").await;
    let later = now() + 7200;
    let cases = [
        (r#"{"type":"refresh"}"#.to_string(), "missing_token"),
        (
            r#"{"type":"refresh","token":"garbage"}"#.to_string(),
            "invalid_token",
        ),
        (
            format!(
                r#"{{"type":"refresh","token":"{}"}}"#,
                token_until("refresher", now() - 120, SECRET)
            ),
            "invalid_token",
        ),
        (
            format!(
                r#"{{"type":"refresh","token":"{}"}}"#,
                token_until("refresher", later, "another-secret-0123456789abcdef0123")
            ),
            "invalid_token",
        ),
        (
            format!(
                r#"{{"type":"refresh","token":"{}"}}"#,
                token_until("mallory", later, SECRET)
            ),
            "wrong_user",
        ),
    ];
    for (message, error) in cases {
        send_text(&mut ws, &message).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["type"], "error", "{message}");
        assert_eq!(answer["error"], error, "{message}");
        assert!(answer["message"].as_str().unwrap().len() > 10);
    }
    send_text(
        &mut ws,
        &format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            token_until("refresher", later, SECRET)
        ),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["expiresAt"], later);
    // The connection stayed open through all of it.
    assert_eq!(gw.publish_to("refresher", r#"{"ok":1}"#).await, 1);
    assert_eq!(next_json(&mut ws).await["ok"], 1);
}
