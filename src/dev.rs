//! `--dev` mode: a generated secret and a ready-to-paste token, URL and publish command, so the
//! gateway can be tried with nothing configured. Never used when `JWT_SECRET` is set.

use std::{fmt::Write, net::SocketAddr};

use crate::{config::Config, proto::jwt as auth};

/// A random 256-bit secret, hex encoded.
pub fn secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The text printed at start-up in dev mode.
pub fn banner(secret: &str, ws: SocketAddr, control: SocketAddr, cfg: &Config) -> String {
    let token = auth::issue_hs256(secret.as_bytes(), "demo", 24 * 3600);
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let key_header = cfg
        .publish_api_key
        .as_ref()
        .map(|_| " -H 'Authorization: Bearer $PUBLISH_API_KEY'")
        .unwrap_or_default();
    format!(
        "\n  chat4all-gateway dev mode (generated JWT secret; do not use in production)\n\n  \
         connect (token for user \"demo\", valid 24 h):\n    ws://{ws}{path}?token={token}\n\n  \
         publish to it:\n    curl -s -X POST http://{control}/v1/publish{key_header} \
         -H 'Content-Type: application/json' \
         -d '{{\"user_id\":\"demo\",\"payload\":{{\"text\":\"hello\"}}}}'\n",
        ws = host(ws),
        path = cfg.ws_path,
        control = host(control),
    )
}
