//! The reader task of a connection: waits for readiness, reads into the shard's scratch buffer,
//! decodes frames and answers them. It owns the connection's life: when it exits, the connection
//! is unregistered and torn down.
//!
//! A client sending flat out gets [`READS_PER_TURN`] full reads, then waits for the driver's
//! next turn (see `net::turn`), like every other loop fed from outside.
//!
//! What a complete data message means is the one thing that differs between the gateway (JSON
//! ping, anything else an error) and the conformance echo server (echo it): that is the
//! [`Messages`] seam, a type parameter, so the gateway's reader is monomorphised with no
//! indirect call and no extra state per connection.

use std::{io, rc::Rc, sync::atomic::Ordering::Relaxed};

use super::{
    Shard,
    conn::{Conn, Phase},
    expiry,
    socket::Tls,
    tls_reader,
};
use crate::{
    clock,
    metrics::{DropReason, ErrorType},
    net::sys,
    proto::{
        close::CloseCode,
        frame::{self, Decoder, Event},
        message::{self, ClientMessage},
    },
};

/// Full scratch-buffer reads (64 KiB each) one connection may do before the rest of the shard
/// gets a turn of the driver: a client sending flat out must not starve the others.
const READS_PER_TURN: usize = 4;

/// What a connection does with a complete client data message. Implemented by zero-sized
/// types; the reader calls them statically.
pub trait Messages: 'static {
    /// A complete text message (valid UTF-8, reassembled if it was fragmented).
    fn text(conn: &Rc<Conn>, shard: &Rc<Shard>, text: &[u8]);
    /// A complete binary message.
    fn binary(conn: &Rc<Conn>, shard: &Rc<Shard>, data: &[u8]);
}

/// The gateway's client protocol (`docs/protocol.md`): `{"type":"ping"}` is answered with a
/// pong, anything else with an error frame; the connection stays open.
pub struct GatewayMessages;

impl Messages for GatewayMessages {
    fn text(conn: &Rc<Conn>, shard: &Rc<Shard>, text: &[u8]) {
        let mut copy = text.to_vec();
        let reply = match message::classify_text(&mut copy) {
            ClientMessage::Ping => message::pong_frame(clock::unix_ms()),
            ClientMessage::Refresh(token) => return expiry::refresh(conn, shard, &token),
            ClientMessage::Unsupported(reason) => message::error_frame(reason, clock::unix_ms()),
        };
        conn.send(shard, reply);
    }

    fn binary(conn: &Rc<Conn>, shard: &Rc<Shard>, _data: &[u8]) {
        let reason = message::reason::BINARY_NOT_SUPPORTED;
        conn.send(shard, message::error_frame(reason, clock::unix_ms()));
    }
}

/// What decoding a batch of bytes asks the reader to do next.
enum Next {
    /// Keep reading.
    Continue,
    /// The closing handshake is complete (or the connection failed): tear down now.
    Finish,
}

/// Runs until the connection ends. `leftover` holds bytes that arrived with the upgrade request.
/// The connection's slot (held by `conn`) is given back when the reader ends, if eviction has
/// not given it back already.
pub async fn run<M: Messages>(conn: Rc<Conn>, shard: Rc<Shard>, mut leftover: Vec<u8>) {
    let mut decoder = Some(Decoder::default());
    let mut next = Next::Continue;
    if !leftover.is_empty() {
        next = on_bytes::<M>(&conn, &shard, &mut decoder, &mut leftover);
    }
    drop(leftover);
    'conn: while let Next::Continue = next {
        if conn.phase() == Phase::Closed || conn.stream.readable(false).await.is_err() {
            break;
        }
        let mut reads = 0;
        loop {
            let full = {
                let mut scratch = shard.scratch.borrow_mut();
                // wss://: the start of a record kept from the last read goes first.
                let kept = conn.tls.as_ref().map_or(0, |tls| tls.borrow().pending());
                match sys::recv(conn.fd(), &mut scratch[kept..]) {
                    Ok(0) => break 'conn,
                    Ok(n) => {
                        conn.touch(shard.now_ms());
                        let input = &mut scratch[..kept + n];
                        next = match &conn.tls {
                            None => on_bytes::<M>(&conn, &shard, &mut decoder, input),
                            Some(tls) => on_records::<M>(&conn, &shard, tls, &mut decoder, input),
                        };
                        kept + n == scratch.len()
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        shard.stats.inc_error(ErrorType::WebsocketError);
                        break 'conn;
                    }
                }
            };
            if !full || !matches!(next, Next::Continue) {
                break;
            }
            reads += 1;
            if reads == READS_PER_TURN {
                // A client sending flat out: the rest of the shard runs first.
                reads = 0;
                shard.turn.next().await;
                if conn.phase() == Phase::Closed {
                    break 'conn;
                }
            }
        }
    }
    if shard.limits.token_expiry_close {
        shard.expiries.borrow_mut().remove(conn.key.get());
    }
    if shard.registry.borrow_mut().remove(&conn) {
        shard.user_left(&conn.user);
    }
    conn.finish(&shard);
    tracing::debug!(shard = shard.id, user = %conn.user, "disconnected");
    shard.stats.connections_active.fetch_sub(1, Relaxed);
    conn.release_slot();
}

/// Decrypts a wss:// connection's bytes, then decodes and handles the plaintext.
fn on_records<M: Messages>(
    conn: &Rc<Conn>,
    shard: &Rc<Shard>,
    tls: &Tls,
    decoder: &mut Option<Decoder>,
    input: &mut [u8],
) -> Next {
    let got = tls_reader::decrypt(conn, shard, tls, input);
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    let next = on_bytes::<M>(
        conn,
        shard,
        decoder,
        &mut buffers.plain.borrow_mut()[..got.plain],
    );
    if got.ended { Next::Finish } else { next }
}

/// Decodes and handles one batch of bytes.
fn on_bytes<M: Messages>(
    conn: &Rc<Conn>,
    shard: &Rc<Shard>,
    decoder: &mut Option<Decoder>,
    bytes: &mut [u8],
) -> Next {
    // After a protocol error the stream is garbage: discard until the peer closes.
    let Some(dec) = decoder.as_mut() else {
        return Next::Continue;
    };
    let mut next = Next::Continue;
    let result = dec.feed(bytes, &shard.limits.frame, |event| {
        if let Next::Finish = next {
            return;
        }
        next = on_event::<M>(conn, shard, event);
    });
    if let Err(err) = result {
        *decoder = None;
        shard.stats.inc_error(ErrorType::WebsocketError);
        let code = CloseCode::from_code(err.close_code()).unwrap_or(CloseCode::Protocol1002);
        conn.close(shard, code, &err.to_string());
    }
    next
}

/// Handles one decoded client frame or message.
fn on_event<M: Messages>(conn: &Rc<Conn>, shard: &Rc<Shard>, event: Event<'_>) -> Next {
    let open = conn.phase() == Phase::Open;
    match event {
        Event::Text(text) if open => M::text(conn, shard, text),
        Event::Binary(data) if open => M::binary(conn, shard, data),
        Event::Ping(payload) if open => {
            conn.send(shard, frame::encode_pong(payload));
        }
        Event::Close(status) => {
            if open {
                // Echo the client's code as sent (RFC 6455 §5.5.1; the decoder admitted only
                // codes a client may send); no code means a normal closure.
                let wire = status.map_or(1000, |(code, _)| code);
                let label = CloseCode::for_echo(wire).unwrap_or(CloseCode::Normal1000);
                let drops = DropReason::ConnectionClosing;
                conn.close_with(shard, wire, label, "", drops);
            }
            // Both close frames exchanged once ours is out: then the server closes TCP first.
            if conn.peer_closed() {
                return Next::Finish;
            }
        }
        // Pongs only prove liveness (already recorded); data after our close is ignored.
        _ => {}
    }
    Next::Continue
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::shard::testing::{Sockets, block_on, limits, shard};

    /// Every idle connection holds one `Conn` and one reader task: guard their sizes, since the
    /// idle-memory budget (~0.8 KiB per connection, measured in docs/PERFORMANCE.md) depends on
    /// them. `Conn` is 192 B since wss:// added its TLS pointer (184 before): in its `Rc` that is
    /// 208 B, still mimalloc's 224 B size class, so a plain connection's memory did not grow.
    #[test]
    fn per_connection_state_stays_small() {
        fn future_size<F: std::future::Future>(_: &F) -> usize {
            size_of::<F>()
        }
        block_on(async {
            let shard = shard(limits());
            let mut sockets = Sockets::new();
            let conn = sockets.conn("u", 0);
            conn.hold(shard.shared.slots.try_reserve().unwrap());
            let reader = run::<GatewayMessages>(conn, shard, Vec::new());
            let (conn_size, reader_size) = (size_of::<Conn>(), future_size(&reader));
            eprintln!("Conn {conn_size} B, reader future {reader_size} B");
            assert!(conn_size <= 192, "Conn grew to {conn_size}");
            assert!(
                reader_size <= 224,
                "the reader future grew to {reader_size}"
            );
        });
    }
}
