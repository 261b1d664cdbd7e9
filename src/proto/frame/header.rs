//! Frame header validation: every rule that the first bytes of a frame can break is checked as
//! soon as those bytes are in, and sizes before any payload is buffered.

use std::io::Cursor;

use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

use super::{Limits, MAX_CONTROL_PAYLOAD, ProtocolError, decode::Kind};

/// A validated frame header.
#[derive(Debug)]
pub(super) struct Head {
    /// FIN bit.
    pub(super) fin: bool,
    /// Opcode (never reserved).
    pub(super) opcode: OpCode,
    /// Masking key.
    pub(super) mask: [u8; 4],
    /// Header length in bytes (2 to 14).
    pub(super) header_len: usize,
    /// Payload length in bytes, already checked against the limits.
    pub(super) payload_len: usize,
}

impl Head {
    /// Length of the whole frame.
    pub(super) fn total(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Whether this is a close, ping or pong frame.
    pub(super) fn is_control(&self) -> bool {
        matches!(self.opcode, OpCode::Control(_))
    }
}

/// How much of the frame at the start of a buffer is known.
pub(super) enum Extent {
    /// The header is incomplete; at least this many bytes are needed to read it.
    Header(usize),
    /// The header is complete and valid.
    Frame(Head),
}

/// Validates as much of the frame header at the start of `buf` as is present. Errors are
/// reported as early as possible (most from the first two bytes), and sizes are checked before
/// any payload is buffered. `open` is the fragmented message in progress, if any.
pub(super) fn frame_extent(
    buf: &[u8],
    open: Option<(Kind, usize)>,
    limits: &Limits,
) -> Result<Extent, ProtocolError> {
    let Some(&b0) = buf.first() else {
        return Ok(Extent::Header(2));
    };
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let code = b0 & 0x0F;
    let opcode = OpCode::from(code);
    match opcode {
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(ProtocolError::ReservedOpcode(code));
        }
        OpCode::Control(_) if !fin => return Err(ProtocolError::FragmentedControl),
        OpCode::Data(Data::Continue) if open.is_none() => {
            return Err(ProtocolError::UnexpectedContinuation);
        }
        OpCode::Data(Data::Text | Data::Binary) if open.is_some() => {
            return Err(ProtocolError::ExpectedContinuation);
        }
        _ => {}
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(Extent::Header(2));
    };
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    let is_control = matches!(opcode, OpCode::Control(_));
    if is_control && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(ProtocolError::ControlTooLong(u64::from(len7)));
    }
    let header_len =
        2 + match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        } + 4;
    if buf.len() < header_len {
        return Ok(Extent::Header(header_len));
    }
    // Complete, so `parse` returns a header; its only error is a reserved opcode, ruled out above.
    let Ok(Some((header, len))) = FrameHeader::parse(&mut Cursor::new(&buf[..header_len])) else {
        return Err(ProtocolError::ReservedOpcode(code));
    };
    let mask = header.mask.ok_or(ProtocolError::Unmasked)?;
    if !is_control {
        let so_far = match open {
            Some((_, n)) if opcode == OpCode::Data(Data::Continue) => n as u64,
            _ => 0,
        };
        let total = so_far.saturating_add(len);
        if total > limits.max_message_bytes as u64 {
            return Err(ProtocolError::MessageTooLarge {
                len: total,
                max: limits.max_message_bytes,
            });
        }
    }
    Ok(Extent::Frame(Head {
        fin,
        opcode,
        mask,
        header_len,
        // Bounded by the limit above or by MAX_CONTROL_PAYLOAD, so it fits.
        payload_len: len as usize,
    }))
}
