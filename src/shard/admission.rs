//! Admission of one accepted socket: count it against its address's handshakes in progress
//! (`MAX_HANDSHAKES_PER_IP`, 429 beyond), reserve a connection slot, read the upgrade request
//! (within the handshake timeout and size cap), refuse it with a precise HTTP status, or verify
//! its token and return the [`Admitted`] connection for the session to establish. On the wss://
//! port the TLS handshake comes first, within the same timeout (`tls_admission`), and every
//! answer is encrypted; a plain HTTP request there gets a plaintext 400.

use std::{cell::RefCell, io, net::IpAddr, rc::Rc};

use monoio::net::TcpStream;

use super::{
    Shard, refusal,
    shared::Slot,
    socket::Socket,
    tls_admission::{self, Sniffed},
};
use crate::{
    metrics::{AuthFailure, ErrorType, HandshakeOutcome, TlsFailure},
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
    /// The client socket (with its TLS session on the wss:// port).
    pub stream: Socket,
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
    /// Plain HTTP on the wss:// port.
    PlainOnTls,
    /// Neither TLS nor HTTP on the wss:// port.
    NotTls,
}

/// Admits `stream` from `peer` (over TLS when `tls`), or refuses it (answering the client) and
/// returns `None`.
pub async fn admit(
    shard: &Rc<Shard>,
    stream: TcpStream,
    peer: IpAddr,
    tls: bool,
) -> Option<Admitted> {
    // First the address's own budget, so one address's stalled handshakes never take slots
    // from everyone else. Held until admission ends (the 101 does not depend on the client).
    let Some(_in_progress) = shard.shared.handshakes.try_enter(peer) else {
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "too many upgrades in progress from this address; retry with backoff";
        let status = Status::TooManyRequests;
        refuse_lingering(shard, stream.into(), status, "too_many_handshakes", message).await;
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
        refuse_lingering(shard, stream.into(), status, "over_capacity", message).await;
        return None;
    };
    let mut stream = Socket::from(stream);
    let limit = shard.limits.handshake_timeout;
    let request = match monoio::time::timeout(limit, open(shard, &mut stream, tls)).await {
        Err(_elapsed) => {
            if stream
                .tls
                .as_ref()
                .is_some_and(|t| t.borrow().is_handshaking())
            {
                shard.stats.inc_tls_failure(TlsFailure::TimedOut);
            }
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
        Request::PlainOnTls => {
            shard.stats.inc_error(ErrorType::BadRequest);
            shard.stats.inc_tls_failure(TlsFailure::PlaintextHttp);
            let message = "this port speaks TLS: connect with wss://, not ws://";
            let status = Status::BadRequest;
            refusal::refuse(shard, stream, status, "tls_required", message).await;
            return None;
        }
        Request::NotTls => {
            shard.stats.inc_tls_failure(TlsFailure::NotTls);
            shard.stats.inc_handshake(HandshakeOutcome::Failed);
            return None;
        }
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
/// response only within the small budget of such sockets, else it closes right after. (Before
/// any TLS handshake, so in plaintext even on the wss:// port: a capacity refusal must stay
/// cheaper than a handshake.)
async fn refuse_lingering(
    shard: &Shard,
    stream: Socket,
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

/// On the wss:// port, what the first byte says and the TLS session; then the request.
async fn open(shard: &Shard, stream: &mut Socket, tls: bool) -> io::Result<Request> {
    if tls {
        match tls_admission::sniff(&stream.tcp).await? {
            Sniffed::Tls => {}
            Sniffed::PlainHttp => return Ok(Request::PlainOnTls),
            Sniffed::NotTls => return Ok(Request::NotTls),
        }
        let acceptor = &shard
            .tls
            .as_ref()
            .expect("a wss:// port on a TLS shard")
            .acceptor;
        let session = acceptor.session().map_err(io::Error::other)?;
        stream.tls = Some(Box::new(RefCell::new(session)));
    }
    read_request(shard, stream).await
}

/// Reads until the request is complete, refused, or the stream fails.
async fn read_request(shard: &Shard, stream: &Socket) -> io::Result<Request> {
    let cfg = &shard.limits.handshake;
    // Only a request split over several reads is copied out of the shard's buffer.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let (n, buffer) = match &stream.tls {
            None => {
                stream.tcp.readable(false).await?;
                let room = cfg.max_request_bytes.saturating_sub(pending.len()).max(1);
                let mut scratch = shard.scratch.borrow_mut();
                let room = room.min(scratch.len());
                match sys::recv(sys::borrow(&stream.tcp), &mut scratch[..room]) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => (n, &shard.scratch),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Some(tls) => {
                let n = tls_admission::recv(shard, &stream.tcp, tls).await?;
                (n, &shard.tls.as_ref().expect("checked by recv").plain)
            }
        };
        // Read above without an await since; the bytes are still there.
        let scratch = buffer.borrow();
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
    // `AuthError::kind` is the one definition of the grouping; the labels are the same strings.
    let label = err.kind();
    ErrorType::ALL
        .into_iter()
        .find(|e| e.as_str() == label)
        .unwrap_or(ErrorType::JwtVerificationFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_error_has_its_labelled_error_type() {
        for (err, want) in [
            (AuthError::Missing, ErrorType::MissingToken),
            (AuthError::Malformed, ErrorType::JwtVerificationFailed),
            (AuthError::BadSignature, ErrorType::JwtVerificationFailed),
            (AuthError::WrongAlgorithm, ErrorType::JwtVerificationFailed),
            (AuthError::Expired, ErrorType::JwtVerificationFailed),
            (AuthError::NotYetValid, ErrorType::JwtVerificationFailed),
            (AuthError::MissingUserId, ErrorType::InvalidToken),
            (AuthError::InvalidUserId, ErrorType::InvalidToken),
        ] {
            assert_eq!(auth_error_type(&err), want, "{err:?}");
            assert_eq!(want.as_str(), err.kind());
        }
    }
}
