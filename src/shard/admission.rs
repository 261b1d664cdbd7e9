//! Admission of one accepted socket: count it against its address's handshakes in progress
//! (`MAX_HANDSHAKES_PER_IP`, 429 beyond), reserve a connection slot, read the upgrade request
//! (within the handshake timeout and size cap), refuse it with a precise HTTP status, or verify
//! its token and return the [`Admitted`] connection for the session to establish.

use std::{io, net::IpAddr, rc::Rc};

use monoio::net::TcpStream;

use super::{Shard, refusal, shared::Slot};
use crate::{
    metrics::{AuthFailure, ErrorType, HandshakeOutcome},
    net::sys,
    proto::{
        history::{Resume, ResumeError},
        jwt::AuthError,
        upgrade::{self, HandshakeError, Parsed, Status},
        user::UserId,
    },
};

/// A connection that passed admission: a valid upgrade request with a valid token. Its upgrade
/// is not answered yet.
pub struct Admitted {
    /// The client socket.
    pub stream: TcpStream,
    /// The authenticated user.
    pub user: UserId,
    /// `Sec-WebSocket-Accept` for the 101 response.
    pub accept_key: String,
    /// Bytes the client sent after the upgrade request (usually none).
    pub leftover: Vec<u8>,
    /// The connection's slot against `MAX_CONNECTIONS`.
    pub slot: Slot,
    /// The token's `exp` (Unix seconds), if it has one.
    pub expires_at: Option<u64>,
    /// What the client asked to recover (`since` + `epoch`; history only).
    pub resume: Option<Box<Resume>>,
}

/// What reading the request produced.
enum Request {
    /// A well-formed upgrade request.
    Upgrade {
        token: Option<String>,
        accept_key: String,
        leftover: Vec<u8>,
        resume: Result<Option<Resume>, ResumeError>,
    },
    /// A request to refuse.
    Refuse(HandshakeError),
}

/// Admits `stream` from `peer`, or refuses it (answering the client) and returns `None`.
pub async fn admit(shard: &Rc<Shard>, stream: TcpStream, peer: IpAddr) -> Option<Admitted> {
    // First the address's own budget, so one address's stalled handshakes never take slots
    // from everyone else. Held until admission ends (the 101 does not depend on the client).
    let Some(_in_progress) = shard.shared.handshakes.try_enter(peer) else {
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "too many upgrades in progress from this address; retry with backoff";
        let status = Status::TooManyRequests;
        refuse_lingering(shard, stream, status, "too_many_handshakes", message).await;
        return None;
    };
    let slot = if shard.draining() {
        None
    } else {
        shard.shared.slots.try_reserve()
    };
    let Some(slot) = slot else {
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "the gateway is at capacity or shutting down; retry with backoff";
        let status = Status::ServiceUnavailable;
        refuse_lingering(shard, stream, status, "over_capacity", message).await;
        return None;
    };
    let request =
        match monoio::time::timeout(shard.limits.handshake_timeout, read_request(shard, &stream))
            .await
        {
            Err(_elapsed) => {
                shard.stats.inc_handshake(HandshakeOutcome::TimedOut);
                shard.stats.inc_error(ErrorType::HandshakeTimeout);
                return None;
            }
            Ok(Err(_io)) => {
                shard.stats.inc_handshake(HandshakeOutcome::Failed);
                return None;
            }
            Ok(Ok(request)) => request,
        };
    let (token, accept_key, leftover, resume) = match request {
        Request::Refuse(err) => {
            shard.stats.inc_error(ErrorType::BadRequest);
            let message = err.to_string();
            refusal::refuse(shard, stream, err.status(), err.kind(), &message).await;
            return None;
        }
        Request::Upgrade {
            token,
            accept_key,
            leftover,
            resume,
        } => (token, accept_key, leftover, resume),
    };
    // Without history `since` and `epoch` mean nothing, as any other unknown parameter.
    let resume = match resume {
        _ if shard.history.is_none() => None,
        Ok(resume) => resume.map(Box::new),
        Err(err) => {
            shard.stats.inc_error(ErrorType::BadRequest);
            let message = err.to_string();
            refusal::refuse(shard, stream, Status::BadRequest, "bad_since", &message).await;
            return None;
        }
    };
    let verified = match token {
        None => Err(AuthError::Missing),
        Some(token) => shard.shared.auth.verify_claims(&token),
    };
    match verified {
        Ok(verified) => Some(Admitted {
            stream,
            user: verified.user,
            accept_key,
            leftover,
            slot,
            expires_at: verified.expires_at,
            resume,
        }),
        Err(err) => {
            shard.stats.inc_auth_failure(auth_failure(&err));
            shard.stats.inc_error(auth_error_type(&err));
            let message = err.to_string();
            refusal::refuse(shard, stream, Status::Unauthorized, err.kind(), &message).await;
            None
        }
    }
}

/// Refuses a socket that holds no connection slot: it lingers for the client to read the
/// response only within the small budget of such sockets, else it closes right after.
async fn refuse_lingering(
    shard: &Shard,
    stream: TcpStream,
    status: Status,
    label: &str,
    message: &str,
) {
    let slots = &shard.shared.slots;
    let linger = slots.try_linger();
    refusal::refuse_with(shard, stream, status, label, message, linger).await;
    if linger {
        slots.end_linger();
    }
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
        let n = match sys::recv(sys::borrow(stream), &mut scratch[..room]) {
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
        match upgrade::parse_request(buf, cfg) {
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
                    resume: request.resume,
                });
            }
            Err(err) => return Ok(Request::Refuse(err)),
        }
    }
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
