//! A client's socket before it becomes a [`Conn`](super::conn::Conn): the TCP stream and, on
//! the wss:// port, its TLS session, which travel together through admission, a hand-off to the
//! owner shard, the per-user subscription wait and a refusal. Plus what a shard lends its TLS
//! sessions: the configuration in force and two buffers shared by all of them.

use std::{cell::RefCell, io, sync::Arc};

use monoio::net::TcpStream;

use super::SCRATCH_BYTES;
use crate::{
    net::sys,
    tls::{Acceptor, Session},
};

/// A connection's TLS session. Boxed, so a plain connection pays one pointer for it, and so it
/// can move between shards with its socket; in a `RefCell` because sending (any task of the
/// shard) and reading (the reader) both advance it, never at the same time.
pub type Tls = Box<RefCell<Session>>;

/// A client socket: TCP, and TLS on the wss:// port.
pub struct Socket {
    /// The stream.
    pub tcp: TcpStream,
    /// Its TLS session, when it came in on the wss:// port.
    pub tls: Option<Tls>,
}

impl From<TcpStream> for Socket {
    fn from(tcp: TcpStream) -> Self {
        Self { tcp, tls: None }
    }
}

/// A shard's share of wss://: the configuration new handshakes start from, and the buffers every
/// TLS connection of the shard borrows in turn (reads and writes are synchronous after
/// readiness, as with the scratch buffer), so that no connection owns one.
pub struct ShardTls {
    /// The server configuration in force (swapped on SIGHUP).
    pub acceptor: Arc<Acceptor>,
    /// Where records read into the scratch buffer are decrypted to (64 KiB: a read's records
    /// never hold more plaintext than the read brought).
    pub plain: RefCell<Box<[u8]>>,
    /// Where frames are encrypted before `send(2)`, and rustls's own records are encoded
    /// (64 KiB + room for four records' overhead).
    pub out: RefCell<Box<[u8]>>,
}

impl ShardTls {
    /// The buffers for a shard serving wss:// with `acceptor`.
    pub fn new(acceptor: Arc<Acceptor>) -> Self {
        let out = SCRATCH_BYTES + 4 * crate::tls::session::RECORD_OVERHEAD;
        Self {
            acceptor,
            plain: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            out: RefCell::new(vec![0; out].into_boxed_slice()),
        }
    }
}

/// Writes all of `bytes`, waiting for writability when the kernel takes only part (a TLS
/// handshake flight or alert; small, so this is rare). `bytes` must not be borrowed from a
/// shard buffer across the wait: the caller passes what the first `send` left, copied.
pub async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::send(sys::borrow(tcp), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `bytes` now as far as the kernel takes them; returns what it did not take (empty in
/// the common case), copied out so the caller can release the buffer `bytes` lives in before
/// waiting with [`write_all`].
pub fn send_now(tcp: &TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let sent = match sys::send(sys::borrow(tcp), bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok(bytes[sent..].to_vec())
}
