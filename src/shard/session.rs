//! Establishing a session: an admitted connection goes to the shard that owns its user (handed
//! over when another shard accepted it), is registered there, and only then gets its `101` and
//! `connected`, so every notification published after the client saw `connected` reaches it.
//! With history, `connected` says where the user's history stands and is followed, in the same
//! write, by the replay the client asked for ([`history`]).

use std::{rc::Rc, sync::atomic::Ordering::Relaxed};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::{
    Shard,
    admission::Admitted,
    conn::Conn,
    expiry,
    handoff::Handoff,
    history::{self, Hello},
    reader, refusal,
    shared::Slot,
    socket::Socket,
    subscription,
};
use crate::{
    clock,
    fanout::route,
    metrics::{ErrorType, HandshakeOutcome},
    net::sys,
    proto::{history::Resume, message, upgrade, upgrade::Status},
};

/// Opens the session of an admitted connection: here when this shard owns the user, else on the
/// owner shard through a hand-off (503 when the owner's hand-off ring is full).
pub async fn open(shard: &Rc<Shard>, admitted: Admitted) {
    let owner = route::owner_shard(&admitted.user, shard.shared.shard_count);
    if owner == shard.id {
        let Admitted {
            stream,
            user,
            accept_key,
            leftover,
            slot,
            expires_at,
            resume,
        } = admitted;
        let session = Session {
            accept_key,
            leftover,
            slot,
            expires_at,
            resume,
        };
        establish(shard, stream, Rc::from(user.as_str()), session);
        return;
    }
    if !shard.outlets.borrow().has_room(owner) {
        drop(admitted.slot);
        shard.stats.inc_error(ErrorType::OverCapacity);
        let message = "the gateway is overloaded; retry with backoff";
        let status = Status::ServiceUnavailable;
        refusal::refuse(shard, admitted.stream, status, "overloaded", message).await;
        return;
    }
    let handoff = Handoff {
        fd: sys::into_owned(admitted.stream.tcp),
        tls: admitted.stream.tls,
        user: admitted.user,
        accept_key: admitted.accept_key,
        leftover: admitted.leftover,
        slot: admitted.slot,
        expires_at: admitted.expires_at,
        resume: admitted.resume,
    };
    if shard.outlets.borrow_mut().send(owner, handoff).is_err() {
        // Unreachable in practice (room was checked and this shard is the ring's only
        // producer); the dropped hand-off closes the socket and gives its slot back.
        shard.stats.inc_error(ErrorType::InternalError);
    }
}

/// Takes over a connection handed over by another shard.
pub fn adopt(shard: &Rc<Shard>, handoff: Handoff) {
    let std_stream = std::net::TcpStream::from(handoff.fd);
    let stream = std_stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std_stream));
    match stream {
        Ok(tcp) => {
            let session = Session {
                accept_key: handoff.accept_key,
                leftover: handoff.leftover,
                slot: handoff.slot,
                expires_at: handoff.expires_at,
                resume: handoff.resume,
            };
            let stream = Socket {
                tcp,
                tls: handoff.tls,
            };
            establish(shard, stream, Rc::from(handoff.user.as_str()), session);
        }
        Err(err) => {
            shard.stats.inc_error(ErrorType::InternalError);
            tracing::warn!(shard = shard.id, error = %err, "could not adopt a handed-over socket");
        }
    }
}

/// What a connection brings to its session besides its socket and user.
struct Session {
    /// `Sec-WebSocket-Accept` for the 101.
    accept_key: String,
    /// Bytes the client sent after the upgrade request.
    leftover: Vec<u8>,
    /// Its slot against `MAX_CONNECTIONS`.
    slot: Slot,
    /// The token's `exp`.
    expires_at: Option<u64>,
    /// What the client asked to recover.
    resume: Option<Box<Resume>>,
}

/// [`greet`]s the connection once its user's Redis channel is subscribed (per-user mode; may
/// wait in a task of its own, or refuse with 503) and its history is read (history with Redis;
/// likewise), else at once.
fn establish(shard: &Rc<Shard>, stream: Socket, user: Rc<str>, session: Session) {
    let owner = shard.clone();
    subscription::when_subscribed(shard, user, stream, move |stream, user| {
        let Session {
            accept_key,
            leftover,
            slot,
            expires_at,
            resume,
        } = session;
        let shard = owner.clone();
        history::when_recovered(&owner, stream, user, resume, move |stream, user, hello| {
            greet(
                &shard,
                stream,
                user,
                &accept_key,
                leftover,
                slot,
                expires_at,
                hello,
            );
        });
    });
}

/// Registers the connection, answers the upgrade with `101`, `connected` and (history) the
/// replay, and starts its reader (which owns the slot from now on). Registration comes first,
/// so every notification that follows reaches the client after `connected`.
#[allow(clippy::too_many_arguments)]
fn greet(
    shard: &Rc<Shard>,
    stream: Socket,
    user: Rc<str>,
    accept_key: &str,
    leftover: Vec<u8>,
    slot: Slot,
    expires_at: Option<u64>,
    hello: Hello,
) {
    // Small writes: disable Nagle so a notification leaves at once.
    let _ = stream.tcp.set_nodelay(true);
    let conn = Rc::new(Conn::new(stream, user, shard.now_ms()));
    let inserted = shard
        .registry
        .borrow_mut()
        .insert(conn.clone(), shard.limits.max_connections_per_user);
    expiry::track(shard, &conn, expires_at);
    history::joined(shard, &conn, hello.position);
    // The evicted connection gives its slot back before this client can see `connected`, so a
    // client that connects next never finds it still taken.
    if let Some(old) = inserted.evicted {
        old.evict(shard);
    }
    shard.stats.connections_active.fetch_add(1, Relaxed);
    shard.stats.inc_handshake(HandshakeOutcome::Accepted);
    tracing::debug!(shard = shard.id, user = %conn.user, "connected");
    let connected = hello
        .connected
        .unwrap_or_else(|| message::connected_frame(&conn.user, clock::unix_ms()));
    let extra: usize = hello.frames.iter().map(|f| f.len()).sum();
    let mut greeting = Vec::with_capacity(160 + connected.len() + extra);
    upgrade::write_switching_protocols(accept_key, &mut greeting);
    greeting.extend_from_slice(&connected);
    for frame in &hello.frames {
        greeting.extend_from_slice(frame);
    }
    if hello.replayed > 0 {
        shard.stats.history.add_replayed(hello.replayed);
    }
    for received in &hello.live {
        // Live notifications kept during the history read: sent now, in the greeting.
        shard.stats.add_sent(1);
        let us = received.elapsed().as_micros() as u64;
        shard.stats.delivery_latency.observe_us(us);
    }
    conn.hold(slot);
    conn.send(shard, Bytes::from(greeting));
    monoio::spawn(reader::run::<reader::GatewayMessages>(
        conn,
        shard.clone(),
        leftover,
    ));
}
