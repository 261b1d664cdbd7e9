//! The writes of a wss:// connection: the same decisions as a plain one ([`ConnState`]), with
//! each frame encrypted for this connection at the moment it is written.
//!
//! - Nothing queued (the common case): the frame is encrypted into the shard's output buffer
//!   (`ShardTls::out`) and sent from there with one `send(2)`; the connection keeps nothing.
//! - The kernel took only part: the rest of the ciphertext (and the rest of the frame, encrypted
//!   now) is queued as one buffer of this connection, and the writer task sends it like any
//!   queued frame. Records are encrypted in send order, so the outbox stays in sequence.
//! - Frames behind a queue: encrypted at once into their own buffer and queued (ciphertext, per
//!   connection: a frame shared by many recipients costs one copy per recipient only when that
//!   recipient is not keeping up).
//! - Our close frame is followed by close_notify in the same buffer, so the closing handshake
//!   ends the TLS session too before the write side is shut.
//!
//! The outbox caps count a queued frame by its plaintext length when it is offered and charge
//! its ciphertext (at most 64 bytes more per 16 KiB record) once queued.

use std::{cell::RefMut, io, net::Shutdown, rc::Rc, time::Instant};

use bytes::Bytes;

use super::{
    Conn, SendOutcome,
    state::{ConnState, Direct, Offer, Tally},
    writer,
};
use crate::{
    metrics::ErrorType,
    net::sys,
    shard::{Shard, socket::Tls},
    tls::session::sealed_len,
};

/// Performs what the state machine decided for `frame` on a TLS connection.
#[allow(clippy::too_many_arguments)]
pub(super) fn offer(
    conn: &Rc<Conn>,
    tls: &Tls,
    mut st: RefMut<'_, ConnState>,
    shard: &Rc<Shard>,
    offer: Offer,
    frame: &Bytes,
    born: Option<Instant>,
    tally: &mut Tally,
) -> SendOutcome {
    match offer {
        Offer::Direct => write(conn, tls, st, shard, frame, born, tally, false),
        Offer::Queued => match seal_all(tls, shard, frame, false) {
            Ok(sealed) => {
                st.enqueue(sealed, born, &shard.stats);
                SendOutcome::Queued
            }
            Err(_) => failed(conn, &mut st, shard, born),
        },
        Offer::Refused => SendOutcome::Rejected,
        Offer::Overflow(close) => {
            write_close(conn, tls, st, shard, &close);
            SendOutcome::Rejected
        }
    }
}

/// Sends our close frame and close_notify, behind anything partly written.
pub(super) fn write_close(
    conn: &Rc<Conn>,
    tls: &Tls,
    mut st: RefMut<'_, ConnState>,
    shard: &Rc<Shard>,
    close: &Bytes,
) {
    match st.offer_close() {
        Offer::Direct => {
            write(
                conn,
                tls,
                st,
                shard,
                close,
                None,
                &mut Tally::default(),
                true,
            );
        }
        Offer::Queued => match seal_all(tls, shard, close, true) {
            Ok(sealed) => st.enqueue(sealed, None, &shard.stats),
            Err(_) => {
                failed(conn, &mut st, shard, None);
            }
        },
        Offer::Refused | Offer::Overflow(_) => {}
    }
}

/// Sends records rustls produced while reading (a key update, an alert) in order with the
/// rest: directly when nothing is queued, else behind the queue. Like a close frame, they may
/// go out while the connection is closing.
pub(in crate::shard) fn write_records(conn: &Rc<Conn>, shard: &Rc<Shard>, records: &[u8]) {
    if records.is_empty() {
        return;
    }
    let mut st = conn.state.borrow_mut();
    match st.offer_close() {
        Offer::Direct => {
            let sent = match sys::send(conn.fd(), records) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    failed(conn, &mut st, shard, None);
                    return;
                }
            };
            if sent < records.len() {
                let rest = Bytes::copy_from_slice(&records[sent..]);
                queue_rest(conn, st, shard, &rest, None, &mut Tally::default());
            }
        }
        Offer::Queued => st.enqueue(Bytes::copy_from_slice(records), None, &shard.stats),
        Offer::Refused | Offer::Overflow(_) => {}
    }
}

/// The fast path: encrypt into the shard's output buffer and `send(2)` from it, piece by piece
/// for a frame larger than the buffer; what the kernel does not take is queued as ciphertext.
#[allow(clippy::too_many_arguments)]
fn write(
    conn: &Rc<Conn>,
    tls: &Tls,
    mut st: RefMut<'_, ConnState>,
    shard: &Rc<Shard>,
    frame: &Bytes,
    born: Option<Instant>,
    tally: &mut Tally,
    close_notify: bool,
) -> SendOutcome {
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    let mut out = buffers.out.borrow_mut();
    let mut session = tls.borrow_mut();
    let mut at = 0;
    loop {
        let Ok((consumed, written)) = session.seal(&frame[at..], &mut out, close_notify) else {
            return failed(conn, &mut st, shard, born);
        };
        at += consumed;
        let sent = match sys::send(conn.fd(), &out[..written]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return failed(conn, &mut st, shard, born),
        };
        if sent < written {
            let more = frame.len() - at;
            let mut rest = Vec::with_capacity(written - sent + sealed_len(more, close_notify));
            rest.extend_from_slice(&out[sent..written]);
            if at < frame.len() {
                match session.seal_all(&frame[at..], &mut out, close_notify) {
                    Ok(sealed) => rest.extend_from_slice(&sealed),
                    Err(_) => return failed(conn, &mut st, shard, born),
                }
            }
            drop((out, session));
            return queue_rest(conn, st, shard, &Bytes::from(rest), born, tally);
        }
        if at == frame.len() {
            return match st.direct_written(frame, born, frame.len(), tally, &shard.stats) {
                Direct::Complete { shutdown } => {
                    if let Some(how) = shutdown {
                        sys::shutdown(conn.fd(), how);
                    }
                    SendOutcome::Written
                }
                // Cannot happen: the whole frame was reported written.
                Direct::Queued => SendOutcome::Queued,
            };
        }
    }
}

/// Queues `rest` (ciphertext none of which is written) and starts the writer.
fn queue_rest(
    conn: &Rc<Conn>,
    mut st: RefMut<'_, ConnState>,
    shard: &Rc<Shard>,
    rest: &Bytes,
    born: Option<Instant>,
    tally: &mut Tally,
) -> SendOutcome {
    st.direct_written(rest, born, 0, tally, &shard.stats);
    if st.start_writer() {
        drop(st);
        monoio::spawn(writer(conn.clone(), shard.clone()));
    }
    SendOutcome::Queued
}

/// `frame` encrypted whole into a buffer of its own (for the outbox).
fn seal_all(
    tls: &Tls,
    shard: &Shard,
    frame: &[u8],
    close_notify: bool,
) -> Result<Bytes, crate::tls::TlsError> {
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    let mut out = buffers.out.borrow_mut();
    let sealed = tls.borrow_mut().seal_all(frame, &mut out, close_notify)?;
    Ok(Bytes::from(sealed))
}

/// The session or the socket failed: the connection is torn down, as on a plain write error.
fn failed(
    conn: &Rc<Conn>,
    st: &mut RefMut<'_, ConnState>,
    shard: &Shard,
    born: Option<Instant>,
) -> SendOutcome {
    shard.stats.inc_error(ErrorType::SendFailed);
    if st.write_failed(born, &shard.stats) {
        sys::shutdown(conn.fd(), Shutdown::Both);
    }
    SendOutcome::Rejected
}
