//! The handshake task of one accepted socket: read the upgrade request (within the handshake
//! timeout and size cap), refuse it with a precise HTTP status, or authenticate it and establish
//! the WebSocket on the user's owner shard.

use std::{
    io,
    os::fd::{AsRawFd, IntoRawFd},
    rc::Rc,
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::{
    auth::AuthError,
    handoff::Handoff,
    handshake::{self, HandshakeError, Parsed, Status},
};
use crate::{
    clock,
    fanout::route,
    metrics::{AuthFailure, ErrorType, HandshakeOutcome},
    shard::{
        Shard,
        conn::Conn,
        reader,
        sys::{self, Shutdown},
    },
    ws::message,
};

/// How long a refused client gets to read the response before the socket is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// What the request reading produced.
enum Request {
    /// A well-formed upgrade request.
    Upgrade {
        token: Option<String>,
        accept_key: String,
        leftover: Vec<u8>,
    },
    /// A request to refuse.
    Refuse(HandshakeError),
}

/// Serves one accepted socket until it is upgraded (here or on its owner shard) or refused.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let slot = if shard.draining() {
        None
    } else {
        shard.shared.try_reserve()
    };
    let Some(slot) = slot else {
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "the gateway is at capacity or shutting down; retry with backoff";
        // This socket holds no slot, so its linger comes from a small budget of its own.
        let linger = shard.shared.try_linger();
        refuse_with(
            &shard,
            stream,
            Status::ServiceUnavailable,
            "over_capacity",
            message,
            linger,
        )
        .await;
        if linger {
            shard.shared.end_linger();
        }
        return;
    };
    let request = match monoio::time::timeout(
        shard.limits.handshake_timeout,
        read_request(&shard, &stream),
    )
    .await
    {
        Err(_elapsed) => {
            shard.stats.inc_handshake(HandshakeOutcome::TimedOut);
            shard.stats.inc_error(ErrorType::HandshakeTimeout);
            return;
        }
        Ok(Err(_io)) => {
            shard.stats.inc_handshake(HandshakeOutcome::Failed);
            return;
        }
        Ok(Ok(request)) => request,
    };
    let (token, accept_key, leftover) = match request {
        Request::Refuse(err) => {
            shard.stats.inc_error(ErrorType::BadRequest);
            return refuse(&shard, stream, err.status(), err.kind(), &err.to_string()).await;
        }
        Request::Upgrade {
            token,
            accept_key,
            leftover,
        } => (token, accept_key, leftover),
    };
    let user = match token {
        None => Err(AuthError::Missing),
        Some(token) => shard.shared.auth.verify(&token),
    };
    let user = match user {
        Ok(user) => user,
        Err(err) => {
            shard.stats.inc_auth_failure(auth_failure(&err));
            shard.stats.inc_error(auth_error_type(&err));
            return refuse(
                &shard,
                stream,
                Status::Unauthorized,
                err.kind(),
                &err.to_string(),
            )
            .await;
        }
    };
    let owner = route::owner_shard(&user, shard.shared.shard_count);
    if owner == shard.id {
        slot.keep();
        establish(&shard, stream, user.into(), &accept_key, leftover);
        return;
    }
    if !shard.outlets.borrow().has_room(owner) {
        drop(slot);
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "the gateway is overloaded; retry with backoff";
        return refuse(
            &shard,
            stream,
            Status::ServiceUnavailable,
            "overloaded",
            message,
        )
        .await;
    }
    let fd = stream.into_raw_fd();
    let handoff = Handoff {
        // SAFETY: `into_raw_fd` released the descriptor from the monoio stream (and from the
        // epoll driver), so this is its only owner.
        fd: unsafe { sys::owned_fd(fd) },
        user: user.into_boxed_str(),
        accept_key,
        leftover,
    };
    if shard.outlets.borrow_mut().send(owner, handoff).is_err() {
        // Unreachable in practice (room was checked and this shard is the ring's only
        // producer); the dropped hand-off closes the socket and `slot` is given back.
        shard.stats.inc_error(ErrorType::InternalError);
        return;
    }
    // The slot travels with the connection to its owner shard.
    slot.keep();
}

/// Takes over a connection handed over by another shard.
pub fn adopt(shard: &Rc<Shard>, handoff: Handoff) {
    let std_stream = std::net::TcpStream::from(handoff.fd);
    let stream = std_stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std_stream));
    match stream {
        Ok(stream) => establish(
            shard,
            stream,
            Rc::from(handoff.user),
            &handoff.accept_key,
            handoff.leftover,
        ),
        Err(err) => {
            shard.shared.release_connection();
            shard.stats.inc_error(ErrorType::InternalError);
            tracing::warn!(shard = shard.id, error = %err, "could not adopt a handed-over socket");
        }
    }
}

/// Registers the connection, answers the upgrade with `101` and `connected`, and starts its
/// reader. Registration comes first, so every notification that follows reaches the client after
/// `connected`.
fn establish(
    shard: &Rc<Shard>,
    stream: TcpStream,
    user: Rc<str>,
    accept_key: &str,
    leftover: Vec<u8>,
) {
    // Small writes: disable Nagle so a notification leaves at once.
    let _ = stream.set_nodelay(true);
    let conn = Rc::new(Conn::new(stream, user, shard.now_ms()));
    let inserted = shard
        .registry
        .borrow_mut()
        .insert(conn.clone(), shard.limits.max_connections_per_user);
    if inserted.first_for_user {
        shard.user_joined(&conn.user);
    }
    shard.stats.connections_active.fetch_add(1, Relaxed);
    shard.stats.inc_handshake(HandshakeOutcome::Accepted);
    tracing::debug!(shard = shard.id, user = %conn.user, "connected");
    let connected = message::connected_frame(&conn.user, clock::unix_ms());
    let mut greeting = Vec::with_capacity(160 + connected.len());
    handshake::write_switching_protocols(accept_key, &mut greeting);
    greeting.extend_from_slice(&connected);
    conn.send(shard, Bytes::from(greeting));
    if let Some(old) = inserted.evicted {
        old.close(
            shard,
            crate::metrics::CloseCode::Policy1008,
            "too many connections for this user; closing the oldest",
        );
    }
    monoio::spawn(reader::run(conn, shard.clone(), leftover));
}

/// Reads until the request is complete, refused, or the stream fails.
async fn read_request(shard: &Shard, stream: &TcpStream) -> io::Result<Request> {
    let cfg = &shard.limits.handshake;
    // Only a request split over several reads is copied out of the shard's scratch buffer.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        stream.readable(false).await?;
        let mut scratch = shard.scratch.borrow_mut();
        let room = cfg.max_request_bytes.saturating_sub(pending.len()).max(1);
        let room = room.min(scratch.len());
        let n = match sys::recv(stream.as_raw_fd(), &mut scratch[..room]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let buf: &[u8] = if pending.is_empty() {
            &scratch[..n]
        } else {
            pending.extend_from_slice(&scratch[..n]);
            &pending
        };
        match handshake::parse_request(buf, cfg) {
            Ok(Parsed::Partial) => {
                if pending.is_empty() {
                    pending.extend_from_slice(&scratch[..n]);
                }
            }
            Ok(Parsed::Complete { request, consumed }) => {
                return Ok(Request::Upgrade {
                    token: request.token.map(|t| t.into_owned()),
                    accept_key: request.accept_key,
                    leftover: buf[consumed..].to_vec(),
                });
            }
            Err(err) => return Ok(Request::Refuse(err)),
        }
    }
}

/// Answers with an HTTP error and closes: the response is written, the write side shut, and the
/// client given a moment to read it before the socket is dropped (closing with unread input
/// would reset the connection and could destroy the response).
async fn refuse(shard: &Shard, stream: TcpStream, status: Status, label: &str, message: &str) {
    refuse_with(shard, stream, status, label, message, true).await;
}

/// [`refuse`], lingering only when `linger` (else closing right after the response).
async fn refuse_with(
    shard: &Shard,
    stream: TcpStream,
    status: Status,
    label: &str,
    message: &str,
    linger: bool,
) {
    shard.stats.inc_handshake(HandshakeOutcome::Refused);
    let mut response = Vec::with_capacity(256);
    handshake::write_refusal(status, label, message, &mut response);
    let fd = stream.as_raw_fd();
    if sys::send(fd, &response).is_err() {
        return;
    }
    sys::shutdown(fd, Shutdown::Write);
    if !linger {
        return;
    }
    let _ = monoio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 512];
        loop {
            if stream.readable(false).await.is_err() {
                return;
            }
            match sys::recv(fd, &mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// The metrics label for an authentication failure.
fn auth_failure(err: &AuthError) -> AuthFailure {
    match err {
        AuthError::Missing => AuthFailure::Missing,
        AuthError::Malformed => AuthFailure::Malformed,
        AuthError::BadSignature => AuthFailure::BadSignature,
        AuthError::WrongAlgorithm => AuthFailure::WrongAlgorithm,
        AuthError::Expired => AuthFailure::Expired,
        AuthError::NotYetValid => AuthFailure::NotYetValid,
        AuthError::MissingUserId => AuthFailure::MissingUserId,
        AuthError::InvalidUserId => AuthFailure::InvalidUserId,
    }
}

/// The existing deployment's `error_type` label for an authentication failure.
fn auth_error_type(err: &AuthError) -> ErrorType {
    match err {
        AuthError::Missing => ErrorType::MissingToken,
        AuthError::MissingUserId | AuthError::InvalidUserId => ErrorType::InvalidToken,
        _ => ErrorType::JwtVerificationFailed,
    }
}
