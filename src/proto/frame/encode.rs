//! Server->client frames: final and unmasked, each built in one exact-size allocation.

use bytes::Bytes;
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

use super::MAX_CONTROL_PAYLOAD;

/// Length of the header of an unmasked server frame carrying `len` payload bytes (2, 4 or 10).
#[must_use]
pub const fn text_header_len(len: usize) -> usize {
    if len <= 125 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Writes a final, unmasked text-frame header for a payload of `len` bytes into `out`, so
/// callers can build header and payload in one buffer without a copy. Writes exactly
/// [`text_header_len`]`(len)` bytes.
pub fn write_text_header(len: usize, out: &mut Vec<u8>) {
    write_header(OpCode::Data(Data::Text), len, out);
}

/// Writes a final, unmasked header with `opcode` for a payload of `len` bytes.
fn write_header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// Builds one final, unmasked frame in a single exact-size allocation.
fn encode(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(text_header_len(len) + len);
    write_header(opcode, len, &mut out);
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// One final, unmasked text frame (header and payload in one allocation). The caller guarantees
/// `payload` is UTF-8.
#[must_use]
pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), &[payload])
}

/// One final, unmasked binary frame (header and payload in one allocation).
#[must_use]
pub fn encode_binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), &[payload])
}

/// A close frame with `code` and `reason`, the reason truncated on a char boundary so the payload
/// stays within 125 bytes. The caller picks a code that is valid to send.
#[must_use]
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode(
        OpCode::Control(Control::Close),
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    )
}

/// A ping frame; `payload` is truncated to 125 bytes.
#[must_use]
pub fn encode_ping(payload: &[u8]) -> Bytes {
    let end = payload.len().min(MAX_CONTROL_PAYLOAD);
    encode(OpCode::Control(Control::Ping), &[&payload[..end]])
}

/// A pong frame; `payload` (normally the ping's) is truncated to 125 bytes.
#[must_use]
pub fn encode_pong(payload: &[u8]) -> Bytes {
    let end = payload.len().min(MAX_CONTROL_PAYLOAD);
    encode(OpCode::Control(Control::Pong), &[&payload[..end]])
}
