//! The reader's step for a wss:// connection: the bytes a read brought (after those kept from
//! the previous read) are decrypted into the shard's plaintext buffer, where the frame decoder
//! then reads them as it reads a plain connection's bytes from the scratch buffer. Records that
//! rustls itself sends back (a key update, an alert) go out in order with the connection's
//! other writes. Only the start of a record still arriving is kept, in the session.

use std::rc::Rc;

use super::{
    Shard,
    conn::{Conn, sealed},
    socket::Tls,
};
use crate::metrics::ErrorType;

/// What a read's records held.
pub struct Decrypted {
    /// Plaintext bytes at the start of the shard's plaintext buffer.
    pub plain: usize,
    /// The peer closed the TLS session (close_notify), or it failed: the connection ends.
    pub ended: bool,
}

/// Decrypts `input`: the session's kept bytes are moved to its start (the read went after
/// them). A TLS failure sends its alert, aborts the connection and ends it.
pub fn decrypt(conn: &Rc<Conn>, shard: &Rc<Shard>, tls: &Tls, input: &mut [u8]) -> Decrypted {
    let buffers = shard
        .tls
        .as_ref()
        .expect("TLS connections only on wss:// shards");
    let mut plain = buffers.plain.borrow_mut();
    let mut out = buffers.out.borrow_mut();
    let result = {
        let mut session = tls.borrow_mut();
        session.take_pending(input);
        session.receive(input, &mut plain, &mut out)
    };
    match result {
        Ok(rx) => {
            sealed::write_records(conn, shard, &out[..rx.out]);
            Decrypted {
                plain: rx.plain,
                ended: rx.peer_closed,
            }
        }
        Err(failure) => {
            tracing::debug!(shard = shard.id, user = %conn.user, error = %failure.error, "TLS failure");
            sealed::write_records(conn, shard, &out[..failure.out]);
            shard.stats.inc_error(ErrorType::WebsocketError);
            conn.abort();
            Decrypted {
                plain: 0,
                ended: true,
            }
        }
    }
}
