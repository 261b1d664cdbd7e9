//! The reader task of a connection: waits for readiness, reads into the shard's scratch buffer,
//! decodes frames and answers them. It owns the connection's life: when it exits, the connection
//! is unregistered and torn down.

use std::{io, rc::Rc, sync::atomic::Ordering::Relaxed};

use super::{
    Shard,
    conn::{Conn, Phase},
    shared::Slot,
};
use crate::{
    clock,
    metrics::ErrorType,
    net::sys,
    proto::{
        close::CloseCode,
        frame::{self, Decoder, Event},
        message::{self, ClientMessage},
    },
};

/// What decoding a batch of bytes asks the reader to do next.
enum Next {
    /// Keep reading.
    Continue,
    /// The closing handshake is complete (or the connection failed): tear down now.
    Finish,
}

/// Runs until the connection ends. `leftover` holds bytes that arrived with the upgrade request;
/// `slot` is the connection's slot against `MAX_CONNECTIONS`, given back when the reader ends.
pub async fn run(conn: Rc<Conn>, shard: Rc<Shard>, mut leftover: Vec<u8>, slot: Slot) {
    let mut decoder = Some(Decoder::default());
    let mut next = Next::Continue;
    if !leftover.is_empty() {
        next = on_bytes(&conn, &shard, &mut decoder, &mut leftover);
    }
    drop(leftover);
    'conn: while let Next::Continue = next {
        if conn.phase() == Phase::Closed || conn.stream.readable(false).await.is_err() {
            break;
        }
        loop {
            let mut scratch = shard.scratch.borrow_mut();
            let cap = scratch.len();
            match sys::recv(conn.fd(), &mut scratch) {
                Ok(0) => break 'conn,
                Ok(n) => {
                    conn.touch(shard.now_ms());
                    next = on_bytes(&conn, &shard, &mut decoder, &mut scratch[..n]);
                    if n < cap || !matches!(next, Next::Continue) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    shard.stats.inc_error(ErrorType::WebsocketError);
                    break 'conn;
                }
            }
        }
    }
    if shard.registry.borrow_mut().remove(&conn) {
        shard.user_left(&conn.user);
    }
    conn.finish(&shard);
    tracing::debug!(shard = shard.id, user = %conn.user, "disconnected");
    shard.stats.connections_active.fetch_sub(1, Relaxed);
    drop(slot);
}

/// Decodes and handles one batch of bytes.
fn on_bytes(
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
        next = on_event(conn, shard, event);
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
fn on_event(conn: &Rc<Conn>, shard: &Rc<Shard>, event: Event<'_>) -> Next {
    let open = conn.phase() == Phase::Open;
    match event {
        Event::Text(text) if open => {
            let mut copy = text.to_vec();
            let reply = match message::classify_text(&mut copy) {
                ClientMessage::Ping => message::pong_frame(clock::unix_ms()),
                ClientMessage::Unsupported(reason) => {
                    message::error_frame(reason, clock::unix_ms())
                }
            };
            conn.send(shard, reply);
        }
        Event::Binary(_) if open => {
            conn.send(
                shard,
                message::error_frame("binary_not_supported", clock::unix_ms()),
            );
        }
        Event::Ping(payload) if open => {
            conn.send(shard, frame::encode_pong(payload));
        }
        Event::Close(status) => {
            if open {
                // Echo the client's code (RFC 6455 §5.5.1); no code means a normal closure.
                let code = status
                    .and_then(|(code, _)| CloseCode::from_code(code))
                    .unwrap_or(CloseCode::Normal1000);
                conn.close(shard, code, "");
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

    /// Every idle connection holds one `Conn` and one reader task: guard their sizes, since the
    /// idle-memory budget (<= 1 KiB per connection, measured in docs/PERFORMANCE.md) depends on
    /// them.
    #[test]
    fn per_connection_state_stays_small() {
        fn future_size<F: std::future::Future>(_: &F) -> usize {
            size_of::<F>()
        }
        assert!(
            size_of::<Conn>() <= 208,
            "Conn grew to {}",
            size_of::<Conn>()
        );
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            a.set_nonblocking(true).unwrap();
            let stream = monoio::net::TcpStream::from_std(a).unwrap();
            let conn = Rc::new(Conn::new(stream, Rc::from("u"), 0));
            let shard_size = size_of::<Rc<Shard>>();
            // The reader future without spawning it (it needs a shard): its own size is what
            // `run` holds across its await point plus the readiness future.
            let readable = future_size(&conn.stream.readable(false));
            assert!(
                readable + shard_size <= 160,
                "readiness future grew to {readable}"
            );
        });
    }
}
