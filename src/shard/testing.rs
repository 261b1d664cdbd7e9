//! Test support for the shard's unit tests: a real shard state (no thread, no listener) on the
//! caller's monoio runtime, and real loopback connections registered in it.

use std::{
    net::{TcpListener, TcpStream},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use super::{
    Limits, Shard,
    conn::Conn,
    handoff::Outlets,
    handshake_limit::HandshakeLimit,
    shared::{Shared, Slots, Verifier},
};
use crate::{
    metrics::Metrics,
    net::doorbell::Doorbell,
    proto::{
        frame,
        jwt::{Algorithm, AuthConfig, Authenticator, KeySource},
        upgrade::HandshakeConfig,
    },
};

/// The secret test shards verify tokens with.
pub(crate) const SECRET: &[u8] = b"shard-unit-test-secret-0123456789abcdef";

/// The gateway's default limits, with short timeouts.
pub(crate) fn limits() -> Limits {
    Limits {
        frame: frame::Limits::new(),
        outbox_max_messages: 4,
        outbox_max_bytes: 64 * 1024,
        idle_timeout: Duration::from_secs(30),
        close_timeout: Duration::from_secs(1),
        max_connections_per_user: 2,
        handshake_timeout: Duration::from_secs(1),
        handshake: HandshakeConfig {
            path: "/notifications".into(),
            max_request_bytes: 8192,
        },
        max_payload_bytes: 64 * 1024,
        token_expiry_close: false,
        jwt_leeway_secs: 0,
    }
}

/// A shard (id 0 of 1) with `limits`.
pub(crate) fn shard(limits: Limits) -> Rc<Shard> {
    let auth = Authenticator::new(&AuthConfig {
        algorithm: Algorithm::HS256,
        key: KeySource::Secret(SECRET.to_vec()),
        require_exp: true,
        leeway_seconds: 0,
    })
    .expect("valid test key");
    let metrics = Metrics::new(1, "epoll");
    let shared = Arc::new(Shared::new(
        Verifier::fixed(auth),
        Slots::new(1000, 64),
        HandshakeLimit::new(0),
        1,
        metrics,
        Duration::ZERO,
    ));
    let outlets = Outlets::new(vec![None], vec![Arc::new(Doorbell::default())]);
    Rc::new(Shard::new(0, limits, shared, outlets, None, None).expect("shard state"))
}

/// Real loopback connections: the server ends become [`Conn`]s, the client ends are kept here
/// so the sockets stay open.
pub(crate) struct Sockets {
    listener: TcpListener,
    /// Client ends, in creation order.
    pub(crate) clients: Vec<TcpStream>,
}

impl Sockets {
    pub(crate) fn new() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            clients: Vec::new(),
        }
    }

    /// The server end of a new connection, as accepted (non-blocking).
    pub(crate) fn accepted(&mut self) -> TcpStream {
        self.clients
            .push(TcpStream::connect(self.listener.local_addr().unwrap()).unwrap());
        let (server, _) = self.listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        server
    }

    /// A new connection for `user` (must be called inside a monoio runtime).
    pub(crate) fn conn(&mut self, user: &str, now_ms: u64) -> Rc<Conn> {
        let stream = monoio::net::TcpStream::from_std(self.accepted()).unwrap();
        Rc::new(Conn::new(stream, Rc::from(user), now_ms))
    }
}

/// Runs `f` to completion on a fresh monoio runtime with timers (legacy driver, which works
/// everywhere).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}
