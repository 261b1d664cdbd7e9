//! Refusing an upgrade: an HTTP error response with a JSON body, the write side shut, and a short
//! linger so the client can read it before the socket closes (closing with unread input would
//! reset the connection and could destroy the response). On the wss:// port the response is
//! encrypted and followed by close_notify.

use std::{io, net::Shutdown, time::Duration};

use super::{Shard, socket::Socket};
use crate::{
    metrics::HandshakeOutcome,
    net::sys,
    proto::upgrade::{self, Status},
};

/// How long a refused client gets to read the response before the socket is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Reads a lingering refusal discards before it closes anyway: a client that keeps sending
/// must not keep this task (and its shard) busy.
const LINGER_READS: usize = 16;

/// Answers with an HTTP error and closes, lingering as described above.
pub async fn refuse(shard: &Shard, stream: Socket, status: Status, label: &str, message: &str) {
    refuse_with(shard, stream, status, label, message, true).await;
}

/// [`refuse`], lingering only when `linger` (else closing right after the response).
pub async fn refuse_with(
    shard: &Shard,
    stream: Socket,
    status: Status,
    label: &str,
    message: &str,
    linger: bool,
) {
    shard.stats.inc_handshake(HandshakeOutcome::Refused);
    let mut response = Vec::with_capacity(256);
    upgrade::write_refusal(status, label, message, &mut response);
    let Socket { tcp: stream, tls } = stream;
    let fd = sys::borrow(&stream);
    let sent = match &tls {
        None => sys::send(fd, &response).map(drop),
        Some(tls) => super::tls_admission::send_sealed(shard, &stream, tls, &response),
    };
    if sent.is_err() {
        return;
    }
    sys::shutdown(fd, Shutdown::Write);
    if !linger {
        return;
    }
    let _ = monoio::time::timeout(LINGER, async {
        let mut sink = [0u8; 512];
        for _ in 0..LINGER_READS {
            if stream.readable(false).await.is_err() {
                return;
            }
            match sys::recv(sys::borrow(&stream), &mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
