//! One connection's TLS session over buffers the shard lends it (rustls's unbuffered API), with
//! no I/O: the shard reads ciphertext into its scratch buffer and calls [`Session::receive`],
//! which decrypts into the shard's plaintext buffer and encodes what rustls wants to send
//! (handshake flights, alerts, a key update) into the shard's output buffer; to send, the shard
//! calls [`Session::seal`], which encrypts into the output buffer, and writes that.
//!
//! What a session keeps between calls: rustls's state (keys, sequence numbers, the state
//! machine) and [`Session::pending`], the received bytes rustls could not use yet (the start of
//! a record still arriving, or handshake fragments it reassembles in place). Between records
//! that is empty and holds no heap. rustls's own queues are drained by every call, so no
//! plaintext or ciphertext stays in the session.
//!
//! The rustls contract honoured here (`UnbufferedStatus::discard`): after each state is
//! handled, the first `discard` bytes are dropped, and the next call gets exactly the bytes that
//! follow. Even a call only meant to encrypt gets [`Session::pending`] (not an empty slice),
//! because rustls may hold positions into it.

use std::sync::Arc;

use rustls::{
    HandshakeKind, ProtocolVersion, ServerConfig,
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
};

use super::TlsError;

/// The largest TLS plaintext record (RFC 8446 §5.1): [`Session::seal`] encrypts at most this
/// much per record.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// An upper bound of what a record adds to its plaintext: 5 header bytes, an 8-byte explicit
/// nonce (TLS 1.2 AES-GCM), a 16-byte tag, the content type (TLS 1.3), with room to spare.
pub const RECORD_OVERHEAD: usize = 64;
/// The most received bytes a session keeps between reads: one record still arriving (at most
/// 16 KiB + 256 + 5 bytes) or a fragmented handshake message. More is refused, so that the
/// pending bytes plus a read always fit the shard's 64 KiB scratch buffer.
pub const MAX_PENDING: usize = 32 * 1024;

/// What one [`Session::receive`] produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Application data decrypted into the plaintext buffer, from its start.
    pub plain: usize,
    /// Bytes rustls wants sent, encoded into the output buffer from its start (a handshake
    /// flight, new session tickets, a key update, an alert); send them before anything else.
    pub out: usize,
    /// The peer sent close_notify: nothing more will come.
    pub peer_closed: bool,
}

/// A receive that failed: why, and the alert to send (`out` bytes at the start of the output
/// buffer, possibly none) before closing.
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: TlsError,
    /// Bytes of the alert in the output buffer.
    pub out: usize,
}

/// One server-side TLS session. `Send`, so a shard can hand it to another with its socket.
pub struct Session {
    /// rustls's state for this connection.
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not consumed yet; empty (no heap) between records.
    pending: Vec<u8>,
}

impl Session {
    /// A session that will handshake with `config`.
    ///
    /// # Errors
    ///
    /// rustls could not start a session with this configuration.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            pending: Vec::new(),
        })
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The negotiated version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether the session was resumed from a ticket (a handshake without certificate).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Received bytes kept until the rest of their record arrives.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Moves the kept bytes to the start of `buf` (the shard's read buffer, which must be
    /// larger than [`MAX_PENDING`]); returns how many. The next read appends after them, and
    /// [`Self::receive`] gets both.
    pub fn take_pending(&mut self, buf: &mut [u8]) -> usize {
        let n = self.pending.len();
        buf[..n].copy_from_slice(&self.pending);
        self.pending = Vec::new();
        n
    }

    /// Processes the received bytes in `input` (kept bytes first, see [`Self::take_pending`]):
    /// decrypts application data into `plain`, encodes what rustls wants to send into `out`,
    /// and keeps what it could not use yet. `plain` must be at least as long as `input`.
    ///
    /// # Errors
    ///
    /// The peer sent something rustls refuses (or too large a record): the session is dead;
    /// [`Failed::out`] bytes of `out` hold the alert to send, if any, before closing.
    pub fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut [u8],
        out: &mut [u8],
    ) -> Result<Received, Failed> {
        let mut rx = Received::default();
        let mut at = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut input[at..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    at += discard;
                    let out = rx.out + alert(&mut self.conn, &mut input[at..], &mut out[rx.out..]);
                    return Err(Failed {
                        error: error.into(),
                        out,
                    });
                }
            };
            let mut extra = 0;
            let step = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    let mut step = Ok(true);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                extra += record.discard;
                                let payload = record.payload;
                                match plain.get_mut(rx.plain..rx.plain + payload.len()) {
                                    Some(to) => to.copy_from_slice(payload),
                                    None => {
                                        step = Err(TlsError::TooLarge(plain.len()));
                                        break;
                                    }
                                }
                                rx.plain += payload.len();
                            }
                            Err(error) => {
                                step = Err(error.into());
                                break;
                            }
                        }
                    }
                    step
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    match encode.encode(&mut out[rx.out..]) {
                        Ok(n) => {
                            rx.out += n;
                            Ok(true)
                        }
                        Err(EncodeError::InsufficientSize(_)) => Err(TlsError::TooLarge(out.len())),
                        // Encoded once only; cannot happen.
                        Err(EncodeError::AlreadyEncoded) => Ok(true),
                    }
                }
                // Sent by the caller, in order, with everything else in `out`.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    Ok(true)
                }
                ConnectionState::PeerClosed => {
                    rx.peer_closed = true;
                    Ok(true)
                }
                ConnectionState::Closed => {
                    rx.peer_closed = true;
                    Ok(false)
                }
                // Nothing more to do with what arrived.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => Ok(false),
                ConnectionState::ReadEarlyData(_) => Err(TlsError::EarlyData),
                _ => Err(TlsError::NotWritable),
            };
            at += discard + extra;
            match step {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    return Err(Failed { error, out: rx.out });
                }
            }
        }
        let rest = &input[at..];
        if rest.len() > MAX_PENDING {
            return Err(Failed {
                error: TlsError::TooLarge(MAX_PENDING),
                out: rx.out,
            });
        }
        self.pending = rest.to_vec();
        Ok(rx)
    }

    /// Encrypts the start of `plain` into `out`, in whole records of at most
    /// [`MAX_RECORD_PLAINTEXT`], as much as fits (anything rustls itself must send first, such
    /// as a key update, goes before it). With `close_notify`, and once all of `plain` is in,
    /// a close_notify alert follows. Returns (plaintext bytes consumed, bytes written to `out`);
    /// call again with the rest of `plain` after sending `out`.
    ///
    /// # Errors
    ///
    /// The session cannot carry application data (handshake unfinished, closed, keys
    /// exhausted).
    pub fn seal(
        &mut self,
        plain: &[u8],
        out: &mut [u8],
        close_notify: bool,
    ) -> Result<(usize, usize), TlsError> {
        let mut written = 0;
        let mut pending = std::mem::take(&mut self.pending);
        let result = loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut pending);
            let done = match state {
                Err(error) => Some(Err(error.into())),
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    match encode.encode(&mut out[written..]) {
                        Ok(n) => {
                            written += n;
                            None
                        }
                        Err(_) => Some(Err(TlsError::TooLarge(out.len()))),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => None,
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let mut consumed = 0;
                    let mut result = Ok(());
                    while consumed < plain.len() {
                        let take = (plain.len() - consumed).min(MAX_RECORD_PLAINTEXT);
                        if out.len() - written < take + RECORD_OVERHEAD {
                            break;
                        }
                        match traffic
                            .encrypt(&plain[consumed..consumed + take], &mut out[written..])
                        {
                            Ok(n) => written += n,
                            Err(error) => {
                                result = Err(encrypt_error(error, out.len()));
                                break;
                            }
                        }
                        consumed += take;
                    }
                    if result.is_ok() && close_notify && consumed == plain.len() {
                        match traffic.queue_close_notify(&mut out[written..]) {
                            Ok(n) => written += n,
                            Err(error) => result = Err(encrypt_error(error, out.len())),
                        }
                    }
                    Some(result.map(|()| (consumed, written)))
                }
                Ok(_) => Some(Err(TlsError::NotWritable)),
            };
            pending.drain(..discard);
            if let Some(result) = done {
                break result;
            }
        };
        self.pending = pending;
        result
    }

    /// Encrypts all of `plain` (and a close_notify after it, if asked) into a new buffer of
    /// exactly the ciphertext's size, using `out` as scratch: for what waits in an outbox.
    ///
    /// # Errors
    ///
    /// As [`Self::seal`].
    pub fn seal_all(
        &mut self,
        plain: &[u8],
        out: &mut [u8],
        close_notify: bool,
    ) -> Result<Vec<u8>, TlsError> {
        let mut sealed = Vec::with_capacity(sealed_len(plain.len(), close_notify));
        let mut at = 0;
        loop {
            let (consumed, written) = self.seal(&plain[at..], out, close_notify)?;
            sealed.extend_from_slice(&out[..written]);
            at += consumed;
            if at == plain.len() {
                return Ok(sealed);
            }
        }
    }
}

/// An upper bound of the ciphertext for `n` plaintext bytes (and a close_notify).
pub fn sealed_len(n: usize, close_notify: bool) -> usize {
    let records = n.div_ceil(MAX_RECORD_PLAINTEXT) + usize::from(close_notify);
    n + records * RECORD_OVERHEAD
}

/// After a failure: encodes the alert rustls queued, if any, into `out`; returns its length.
fn alert(conn: &mut UnbufferedServerConnection, input: &mut [u8], out: &mut [u8]) -> usize {
    let mut written = 0;
    // An alert is one record; a few rounds are enough to drain what rustls queued.
    for _ in 0..4 {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(input);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                match encode.encode(&mut out[written..]) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            _ => break,
        }
    }
    written
}

fn encrypt_error(error: EncryptError, room: usize) -> TlsError {
    match error {
        EncryptError::InsufficientSize(_) => TlsError::TooLarge(room),
        EncryptError::EncryptExhausted => TlsError::NotWritable,
    }
}
