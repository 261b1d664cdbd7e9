//! RFC 6455 framing: a decoder for client->server frames and encoders for server->client frames.
//!
//! Pure byte-slice code, no I/O: the connection task reads bytes from the socket and hands them
//! to [`Decoder::feed`], which calls back once per complete message or control frame.
//!
//! Memory is the design constraint. A gateway holds about a million idle connections, so a
//! [`Decoder`] at rest is one pointer (`Option<Box<_>>`, 8 bytes) and owns no heap. Heap is used
//! only while a frame is split across reads or a fragmented message is open, and it is freed as
//! soon as the decoder is idle again. Frame and message sizes are checked from the header, before
//! any payload is buffered, so a client announcing a 2 GB frame costs nothing.
//!
//! Frames that arrive whole in one read are unmasked in place in the caller's buffer and handed
//! out as slices of it: the common path copies nothing. A data payload split across reads goes,
//! unmasked, into the message buffer as it arrives, and text is checked as UTF-8 as it arrives
//! too: the first byte no continuation could make valid fails the connection (1007) at once,
//! whether it sits in a fragment or in a frame still arriving. Events and verdicts do not depend on
//! how the stream is split into reads (property-tested in tests/parsers, with tungstenite as the
//! reference).
//!
//! No extensions are negotiated, so any RSV bit is a protocol error.
//!
//! Files: `decode` (the [`Decoder`]: its state, and how a read's bytes flow through it),
//! `header` (frame header rules, checked as early as the bytes allow), `mask` (unmasking) and
//! `encode` (the server's frames).

use thiserror::Error;
use tungstenite::protocol::frame::coding::CloseCode;

mod decode;
mod encode;
mod header;
mod mask;

pub use decode::Decoder;
pub use encode::{
    encode_binary, encode_close, encode_ping, encode_pong, encode_text, text_header_len,
    write_text_header,
};

/// Default for [`Limits::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;

/// Largest payload a control frame (close, ping, pong) may carry (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Limits applied while decoding client frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest client data message accepted, summed over all its fragments. A message (or a
    /// single frame) announcing more is rejected with close code 1009 before its payload is
    /// buffered. Memory cost: up to this many bytes per connection, only while a message is split
    /// across reads or fragmented. Default [`DEFAULT_MAX_MESSAGE_BYTES`] (4096).
    pub max_message_bytes: usize,
}

impl Limits {
    /// Limits with the documented defaults.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Sets [`Limits::max_message_bytes`].
    #[must_use]
    pub const fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

/// One decoded client message or control frame. Slices borrow either the caller's input buffer
/// (already unmasked) or the decoder's reassembly buffer; they are valid only during the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (reassembled if fragmented), validated as UTF-8.
    Text(&'a [u8]),
    /// A complete binary message (reassembled if fragmented).
    Binary(&'a [u8]),
    /// A ping; its payload (at most 125 bytes) should be echoed in a pong.
    Ping(&'a [u8]),
    /// An unsolicited or answering pong.
    Pong(&'a [u8]),
    /// A close frame: `None` when it carried no status code, else the code (already checked to
    /// be valid on the wire) and the UTF-8 reason.
    Close(Option<(u16, &'a str)>),
}

/// A violation of RFC 6455 by the client. The connection must be failed with
/// [`ProtocolError::close_code`]; the decoder that returned it must not be used again.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Client frames must be masked (RFC 6455 section 5.1).
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1-3 set although no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A close, ping or pong frame without the FIN bit.
    #[error("control frame is fragmented")]
    FragmentedControl,
    /// A control frame announcing more than 125 payload bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(u64),
    /// A continuation frame while no fragmented message is open.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A close frame whose payload is exactly one byte (half a status code).
    #[error("close frame payload of one byte")]
    CloseTooShort,
    /// A close status code that may not be sent on the wire (e.g. 1005, 1006, 999, 2000).
    #[error("close code {0} is not valid on the wire")]
    InvalidCloseCode(u16),
    /// Text that is not valid UTF-8: reported at the first byte that cannot be part of valid
    /// text, or at the end of a message that stops mid-character.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close reason that is not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// A message (summed over its fragments) larger than [`Limits::max_message_bytes`].
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Bytes announced so far, including the offending frame.
        len: u64,
        /// The configured limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The close code to send when failing the connection (1002, 1007 or 1009).
    #[must_use]
    pub fn close_code(&self) -> u16 {
        let code = match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason => CloseCode::Invalid,
            Self::MessageTooLarge { .. } => CloseCode::Size,
            _ => CloseCode::Protocol,
        };
        code.into()
    }
}

/// Helpers for other modules' tests: turn server frames into client frames and decode them.
#[cfg(test)]
pub(crate) mod test_util {
    use super::{Decoder, Event, Limits, mask::unmask};

    /// Re-encodes one unmasked server frame as a masked client frame with `mask`.
    pub(crate) fn to_client_frame(server_frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
        assert_eq!(server_frame[1] & 0x80, 0, "server frame must be unmasked");
        let header_len = 2 + match server_frame[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mut out = server_frame[..header_len].to_vec();
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut payload = server_frame[header_len..].to_vec();
        unmask(&mut payload, mask);
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes one server text frame through [`Decoder`] and returns its payload.
    pub(crate) fn decode_text(server_frame: &[u8]) -> Vec<u8> {
        let mut input = to_client_frame(server_frame, [0xA5, 0x01, 0x7E, 0xC3]);
        let mut texts = Vec::new();
        let limits = Limits::new().with_max_message_bytes(usize::MAX);
        Decoder::default()
            .feed(&mut input, &limits, |event| match event {
                Event::Text(t) => texts.push(t.to_vec()),
                other => panic!("expected a text frame, got {other:?}"),
            })
            .expect("valid frame");
        assert_eq!(texts.len(), 1, "exactly one complete frame");
        texts.pop().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
