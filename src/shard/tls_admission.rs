//! The TLS half of admitting a connection on the wss:// port: what the first byte says (a TLS
//! handshake record starts with 0x16; a plain HTTP request with a method's capital letter), then
//! the handshake and the upgrade request's plaintext, read through the shard's buffers. All of
//! it runs inside admission's `HANDSHAKE_TIMEOUT`.
//!
//! The accepting shard completes the handshake (the user is only known once the request is
//! decrypted); the session then travels with the socket to the owner shard.

use std::io;

use monoio::net::TcpStream;

use super::{
    Shard,
    socket::{self, Tls},
};
use crate::{
    metrics::{TlsFailure, TlsVersion},
    net::sys,
    tls::TlsError,
};

/// What a connection on the wss:// port opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record.
    Tls,
    /// Something that starts like an HTTP request: answered with a plaintext 400.
    PlainHttp,
    /// Neither: closed.
    NotTls,
}

/// Looks at the first byte the client sent, without consuming it.
///
/// # Errors
///
/// The client closed (`UnexpectedEof`) or the socket failed before sending anything.
pub async fn sniff(tcp: &TcpStream) -> io::Result<Sniffed> {
    loop {
        tcp.readable(false).await?;
        let mut first = [0u8; 1];
        match sys::peek(sys::borrow(tcp), &mut first) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                return Ok(match first[0] {
                    0x16 => Sniffed::Tls,
                    b'A'..=b'Z' => Sniffed::PlainHttp,
                    _ => Sniffed::NotTls,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads until application data arrives, completing the handshake on the way (its flights are
/// sent as they are produced). Returns how many plaintext bytes are now at the start of the
/// shard's plaintext buffer (`ShardTls::plain`), for the caller to take before its next await.
/// Counts the completed handshake (version, resumed) and, while handshaking, the failure.
///
/// # Errors
///
/// End of stream, a socket error, or a TLS failure (its alert sent first, best effort; as
/// `InvalidData`).
pub async fn recv(shard: &Shard, tcp: &TcpStream, tls: &Tls) -> io::Result<usize> {
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    loop {
        let handshaking = tls.borrow().is_handshaking();
        if let Err(err) = tcp.readable(false).await {
            return Err(failed(shard, handshaking, TlsFailure::Eof, err));
        }
        let (result, unsent) = {
            let mut scratch = shard.scratch.borrow_mut();
            let mut session = tls.borrow_mut();
            let kept = session.pending();
            let n = match sys::recv(sys::borrow(tcp), &mut scratch[kept..]) {
                Ok(0) => {
                    let eof = io::ErrorKind::UnexpectedEof.into();
                    return Err(failed(shard, handshaking, TlsFailure::Eof, eof));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(failed(shard, handshaking, TlsFailure::Eof, e)),
            };
            session.take_pending(&mut scratch);
            let mut plain = buffers.plain.borrow_mut();
            let mut out = buffers.out.borrow_mut();
            let result = session.receive(&mut scratch[..kept + n], &mut plain, &mut out);
            let out_len = match &result {
                Ok(rx) => rx.out,
                Err(failure) => failure.out,
            };
            let unsent = socket::send_now(tcp, &out[..out_len]);
            (result, unsent)
        };
        let unsent = match unsent {
            Ok(unsent) => unsent,
            Err(e) => return Err(failed(shard, handshaking, TlsFailure::Eof, e)),
        };
        if !unsent.is_empty()
            && let Err(e) = socket::write_all(tcp, &unsent).await
        {
            return Err(failed(shard, handshaking, TlsFailure::Eof, e));
        }
        let rx = match result {
            Ok(rx) => rx,
            Err(failure) => {
                let reason = failure.error.failure();
                return Err(failed(shard, handshaking, reason, invalid(failure.error)));
            }
        };
        if handshaking {
            let session = tls.borrow();
            if !session.is_handshaking() {
                let version = match session.version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
                    _ => TlsVersion::Tls13,
                };
                shard.stats.inc_tls_handshake(version, session.resumed());
            }
        }
        if rx.plain > 0 {
            return Ok(rx.plain);
        }
        if rx.peer_closed {
            let eof = io::ErrorKind::UnexpectedEof.into();
            return Err(failed(
                shard,
                tls.borrow().is_handshaking(),
                TlsFailure::Eof,
                eof,
            ));
        }
    }
}

/// Encrypts `response` and a close_notify after it and sends them, as far as the socket takes
/// them at once (a refusal: the client may be gone, and nothing waits for it).
///
/// # Errors
///
/// The session cannot send, or the socket failed.
pub fn send_sealed(shard: &Shard, tcp: &TcpStream, tls: &Tls, response: &[u8]) -> io::Result<()> {
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    let mut out = buffers.out.borrow_mut();
    let (_, written) = tls
        .borrow_mut()
        .seal(response, &mut out, true)
        .map_err(invalid)?;
    sys::send(sys::borrow(tcp), &out[..written]).map(drop)
}

/// Counts a failure during the TLS handshake (not one after it) and returns `err`.
fn failed(shard: &Shard, handshaking: bool, reason: TlsFailure, err: io::Error) -> io::Error {
    if handshaking {
        shard.stats.inc_tls_failure(reason);
    }
    err
}

fn invalid(err: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}
