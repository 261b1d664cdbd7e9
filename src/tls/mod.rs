//! wss:// on the shards: TLS 1.3 and 1.2 terminated in the gateway itself, at close to the cost
//! of a plain idle connection.
//!
//! - [`credentials`]: the certificate chain and key from `TLS_CERT_FILE`/`TLS_KEY_FILE` (PEM),
//!   checked before any bind (readable, a certificate, a key that matches it; an expired or not
//!   yet valid certificate is a warning); [`validity`] reads the dates (pure DER).
//! - [`tickets`]: session-ticket keys from `TLS_TICKET_KEY_FILE`, shared by every process that
//!   reads the file, as rustls's `ProducesTickets` over an AEAD from `ring`.
//! - [`acceptor`]: the server configuration in force (ALPN `http/1.1`, TLS 1.3 and 1.2, tickets,
//!   no early data, no session cache), swapped on SIGHUP for new handshakes only.
//! - [`session`]: one connection's TLS state over caller-owned buffers (rustls's unbuffered
//!   API): decrypts what a read brought into the shard's scratch buffers, encrypts a frame at
//!   send time into the shard's output buffer. No I/O; the shard does the reads and writes.
//!
//! Why the unbuffered API: rustls's buffered `ServerConnection` keeps a plaintext and a
//! ciphertext buffer per connection (about 20 KiB at C10k measured by others), which is what a
//! TLS proxy in front of the gateway costs. Here an idle TLS connection keeps only rustls's
//! session state (keys, sequence numbers, the handshake state machine) in one box, and no bytes:
//! the start of a record still arriving is kept per connection only until the rest arrives, as
//! the frame decoder does for a partial frame, and ciphertext only when the kernel did not take
//! it (the outbox). docs/architecture.md has the trade-offs, docs/PERFORMANCE.md the figures.
//!
//! This layer depends on `metrics` (failure labels) and `reload` only; the shards drive it.

pub mod acceptor;
pub mod credentials;
pub mod session;
pub mod tickets;
pub mod validity;

pub use self::{
    acceptor::{Acceptor, TlsReload},
    credentials::Credentials,
    session::Session,
    tickets::TicketKeys,
};
use crate::metrics::TlsFailure;

/// Why a TLS session failed. Allocation-free, so the hot path can return it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// rustls refused what the peer sent, or could not go on.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A record or handshake message larger than the buffers the shard lends a session.
    #[error("TLS: a record or handshake message is larger than {0} bytes")]
    TooLarge(usize),
    /// The session is not in a state that can carry application data (still handshaking,
    /// or closed both ways).
    #[error("TLS: the session cannot send application data now")]
    NotWritable,
    /// Early data (0-RTT) arrived although the server never offers it.
    #[error("TLS: unexpected early data")]
    EarlyData,
}

impl TlsError {
    /// The `reason` label of `websocket_tls_handshake_failures_total` for a failure during the
    /// handshake.
    pub fn failure(&self) -> TlsFailure {
        use rustls::{Error as E, PeerIncompatible as P};
        match self {
            // A TLS 1.1 or older ClientHello has no signature_algorithms extension (TLS 1.2
            // added it), and rustls checks that before the version: so that is how an old
            // client shows up first (answered handshake_failure; protocol_version when it did
            // send the extension).
            TlsError::Rustls(E::PeerIncompatible(
                P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::Tls13RequiredForQuic
                | P::SupportedVersionsExtensionRequired
                | P::SignatureAlgorithmsExtensionRequired,
            )) => TlsFailure::ProtocolVersion,
            TlsError::Rustls(E::PeerIncompatible(_)) => TlsFailure::Incompatible,
            TlsError::Rustls(E::NoApplicationProtocol) => TlsFailure::Alpn,
            TlsError::Rustls(E::AlertReceived(_)) => TlsFailure::PeerAlert,
            TlsError::Rustls(
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::PeerMisbehaved(_)
                | E::DecryptError,
            )
            | TlsError::TooLarge(_)
            | TlsError::EarlyData => TlsFailure::BadMessage,
            _ => TlsFailure::Other,
        }
    }
}
