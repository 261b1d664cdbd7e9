//! A small `wss://` server for the TLS client tests (tokio-rustls, ring, TLS 1.3 session tickets,
//! ALPN `http/1.1`): upgrades any `GET` with a token, greets with `connected`, answers the
//! application ping with a pong and a WebSocket ping with a pong, and can drop every connection at
//! once. It counts full and resumed handshakes. Test certificates: `tests/tls/` (a test CA valid
//! until 2126, a server certificate for `localhost` and 127.0.0.1, and an unrelated CA).

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::{
    HandshakeKind, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

/// The test certificates' directory.
pub fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("tls")
}

/// A running server; dropping it stops accepting and drops every connection.
pub struct WssServer {
    pub addr: SocketAddr,
    /// TLS handshakes completed in full, and resumed.
    pub full: Arc<AtomicU64>,
    pub resumed: Arc<AtomicU64>,
    /// Upgraded connections open now.
    pub open: Arc<AtomicU64>,
    /// Client addresses of every accepted connection, in order.
    pub peers: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    /// Bumped to drop every connection.
    kick: watch::Sender<u64>,
}

impl WssServer {
    /// Starts on 127.0.0.1 on a free port, on the current runtime.
    pub async fn start() -> Self {
        let dir = tls_dir();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kick, kicked) = watch::channel(0u64);
        let server = Self {
            addr,
            full: Arc::default(),
            resumed: Arc::default(),
            open: Arc::default(),
            peers: Arc::default(),
            kick,
        };
        let (full, resumed, open, peers) = (
            server.full.clone(),
            server.resumed.clone(),
            server.open.clone(),
            server.peers.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                peers.lock().unwrap().push(peer);
                let (acceptor, full, resumed, open) = (
                    acceptor.clone(),
                    full.clone(),
                    resumed.clone(),
                    open.clone(),
                );
                // Only kicks from now on concern this connection.
                let mut kicked = kicked.clone();
                kicked.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                        resumed.fetch_add(1, Ordering::SeqCst);
                    } else {
                        full.fetch_add(1, Ordering::SeqCst);
                    }
                    if upgrade(&mut tls).await.is_none() {
                        return;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = serve(&mut tls) => {}
                        _ = kicked.changed() => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    /// Drops every open connection (the clients see a reset or EOF).
    pub fn drop_all(&self) {
        self.kick.send_modify(|g| *g += 1);
    }
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Reads the upgrade request and answers 101 plus a `connected` frame.
async fn upgrade(tls: &mut Tls) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 8192 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    if !head.contains("token=") {
        tls.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
            .await
            .ok()?;
        return None;
    }
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    })?;
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = STANDARD.encode(h.finalize());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let mut out = resp.into_bytes();
    out.extend_from_slice(&text_frame(br#"{"type":"connected","user_id":"t"}"#));
    tls.write_all(&out).await.ok()?;
    Some(())
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// Answers pings until the client goes away.
async fn serve(tls: &mut Tls) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = tls.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Client frames: masked, short (< 126 bytes) in these tests.
        while buf.len() >= 6 {
            let len = (buf[1] & 0x7F) as usize;
            if buf.len() < 6 + len {
                break;
            }
            let op = buf[0] & 0x0F;
            let mask = [buf[2], buf[3], buf[4], buf[5]];
            let payload: Vec<u8> = buf[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            buf.drain(..6 + len);
            let reply = match op {
                0x1 if payload.windows(6).any(|w| w == b"\"ping\"") => {
                    text_frame(br#"{"type":"pong"}"#)
                }
                0x9 => {
                    let mut f = vec![0x8A, payload.len() as u8];
                    f.extend_from_slice(&payload);
                    f
                }
                0x8 => return,
                _ => continue,
            };
            if tls.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}
