//! A WebSocket echo server on the gateway's own connection code, for conformance testing with
//! Autobahn|Testsuite (`examples/autobahn_echo.rs`, `scripts/autobahn.sh`). Never started by
//! the gateway: only the example reaches it, through the hidden `internals` module.
//!
//! It runs one shard on the current thread with the gateway's accept loop budget, the pure
//! upgrade parser (any path, no token), [`Conn`] and its state machine for every write and the
//! closing handshake, and the gateway's reader with an [`Echo`] message handler: every text and
//! binary message is sent back as received. Message and outbox limits come from the caller
//! (the suite sends messages up to 16 MiB).

use std::{io, net::TcpListener as StdListener, rc::Rc, sync::Arc, time::Duration};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::{
    Driver, Limits, Shard,
    conn::Conn,
    handoff::Outlets,
    handshake_limit::HandshakeLimit,
    reader::{self, Messages},
    refusal,
    shared::{Shared, Slots, Verifier},
};
use crate::{
    metrics::Metrics,
    net::{doorbell::Doorbell, sys},
    proto::{
        frame,
        jwt::{Algorithm, AuthConfig, Authenticator, KeySource},
        upgrade::{self, HandshakeConfig, Parsed},
    },
};

/// Largest upgrade request read.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Echoes every complete message.
pub struct Echo;

impl Messages for Echo {
    fn text(conn: &Rc<Conn>, shard: &Rc<Shard>, text: &[u8]) {
        conn.send(shard, frame::encode_text(text));
    }

    fn binary(conn: &Rc<Conn>, shard: &Rc<Shard>, data: &[u8]) {
        conn.send(shard, frame::encode_binary(data));
    }
}

/// Serves the echo endpoint on `listener` until the process ends, on `driver`, with client
/// messages up to `max_message_bytes`.
pub fn serve(listener: StdListener, driver: Driver, max_message_bytes: usize) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    match driver {
        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()?
            .block_on(run(listener, max_message_bytes)),
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(run(listener, max_message_bytes)),
    }
}

/// The echo shard's accept loop.
async fn run(listener: StdListener, max_message_bytes: usize) -> io::Result<()> {
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let shard = Rc::new(shard(max_message_bytes)?);
    let mut accepted = 0;
    loop {
        if accepted == 64 {
            accepted = 0;
            shard.turn.next().await;
        }
        let (stream, _) = listener.accept().await?;
        accepted += 1;
        monoio::spawn(serve_one(shard.clone(), stream));
    }
}

/// A shard state for the echo server: generous limits, no token (its verifier is never used).
fn shard(max_message_bytes: usize) -> io::Result<Shard> {
    let secret = getrandom_secret();
    let auth = Authenticator::new(&AuthConfig {
        algorithm: Algorithm::HS256,
        key: KeySource::Secret(secret),
        require_exp: true,
        leeway_seconds: 0,
    })
    .map_err(io::Error::other)?;
    let shared = Arc::new(Shared::new(
        Verifier::fixed(auth),
        Slots::new(100_000, 64),
        HandshakeLimit::new(0),
        1,
        Metrics::new(1, "echo"),
        Duration::ZERO,
    ));
    let limits = Limits {
        frame: frame::Limits::new().with_max_message_bytes(max_message_bytes),
        outbox_max_messages: 1_000_000,
        outbox_max_bytes: max_message_bytes.saturating_mul(4).max(64 * 1024 * 1024),
        idle_timeout: Duration::from_secs(3600),
        close_timeout: Duration::from_secs(5),
        max_connections_per_user: usize::MAX,
        handshake_timeout: Duration::from_secs(10),
        handshake: HandshakeConfig {
            path: "/".into(),
            max_request_bytes: MAX_REQUEST_BYTES,
        },
        max_payload_bytes: max_message_bytes,
        token_expiry_close: false,
        jwt_leeway_secs: 0,
    };
    let outlets = Outlets::new(vec![None], vec![Arc::new(Doorbell::default())]);
    Shard::new(0, limits, shared, outlets, None, None)
}

/// A random secret for the unused token verifier.
fn getrandom_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    let _ = getrandom::fill(&mut secret);
    secret
}

/// Upgrades one connection (any path, no token) and runs its reader with [`Echo`].
async fn serve_one(shard: Rc<Shard>, stream: TcpStream) {
    let Ok(Some((stream, accept_key, leftover))) = read_upgrade(&shard, stream).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let conn = Rc::new(Conn::new(stream, Rc::from("echo"), shard.now_ms()));
    let mut response = Vec::with_capacity(160);
    upgrade::write_switching_protocols(&accept_key, &mut response);
    conn.send(&shard, Bytes::from(response));
    reader::run::<Echo>(conn, shard, leftover).await;
}

/// Reads the upgrade request; answers a bad one with its status and returns `None`.
async fn read_upgrade(
    shard: &Rc<Shard>,
    stream: TcpStream,
) -> io::Result<Option<(TcpStream, String, Vec<u8>)>> {
    let mut buf = Vec::new();
    loop {
        stream.readable(false).await?;
        let mut chunk = [0u8; 4096];
        match sys::recv(sys::borrow(&stream), &mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        // Any path: parse with the request's own path as the expected one.
        let cfg = HandshakeConfig {
            path: request_path(&buf).unwrap_or("/").to_string(),
            max_request_bytes: MAX_REQUEST_BYTES,
        };
        match upgrade::parse_request(&buf, &cfg) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete { request, consumed }) => {
                let (key, leftover) = (request.accept_key, buf[consumed..].to_vec());
                return Ok(Some((stream, key, leftover)));
            }
            Err(err) => {
                let (status, label, message) = (err.status(), err.kind(), err.to_string());
                refusal::refuse(shard, stream.into(), status, label, &message).await;
                return Ok(None);
            }
        }
    }
}

/// The path of the request line in `buf`, once the line is complete.
fn request_path(buf: &[u8]) -> Option<&str> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let target = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_path_of_the_request_line() {
        assert_eq!(request_path(b"GET /a/b?x=1 HTTP/1.1\r\n"), Some("/a/b"));
        assert_eq!(request_path(b"GET / HTTP/1.1\r\nHost: x\r\n"), Some("/"));
        assert_eq!(request_path(b"GET"), None);
    }
}
