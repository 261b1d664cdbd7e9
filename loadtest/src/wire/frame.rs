//! WebSocket frames as a client sees them (RFC 6455 section 5): decoding the server's unmasked
//! frames and encoding the client's masked ones. Pure functions over byte slices, no I/O.
//!
//! Only what a push client needs: text/binary data frames (fragmented messages are reassembled by
//! [`Assembler`]), ping (answered by the caller), pong and close. Extensions are never negotiated,
//! so RSV bits must be zero.

use thiserror::Error;

/// Largest frame payload accepted from a server (16 MiB): a guard against a corrupt length field,
/// not a protocol limit.
pub const MAX_PAYLOAD: u64 = 16 << 20;

/// Frame opcodes (RFC 6455 section 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Why a server's byte stream is not valid WebSocket framing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("server frame is masked")]
    Masked,
    #[error("reserved bits set")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(u64),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    #[error(
        "continuation frame without a message in progress, or a new message before the last ended"
    )]
    Fragmentation,
}

impl FrameError {
    /// Metric-style label for failure counts.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        "protocol"
    }
}

/// One decoded frame, borrowing its payload from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// One of [`opcode`].
    pub opcode: u8,
    /// Payload (servers never mask, so this is the application data).
    pub payload: &'a [u8],
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, or `Ok(Some((frame, consumed)))`.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    if !matches!(op, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::Opcode(op));
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if op >= 0x8 && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    // Bounded by MAX_PAYLOAD above, so the cast cannot truncate.
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            opcode: op,
            payload: &buf[header..end],
        },
        end,
    )))
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_masked(op: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        // Fits in 7 bits by the branch condition.
        out.push(0x80 | len as u8);
    } else if let Ok(l16) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Reassembles fragmented data messages; unfragmented ones pass through without copying.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Payload of a fragmented message so far; empty when none is in progress.
    partial: Vec<u8>,
    /// Whether a fragmented message is in progress (its first frame may have been empty).
    in_progress: bool,
}

/// What a caller does with a frame after [`Assembler::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// A complete data message (text or binary).
    Message(&'a [u8]),
    /// A fragment was buffered; nothing to do yet.
    Pending,
    /// A control frame, returned as is.
    Control(Frame<'a>),
}

impl Assembler {
    /// Whether a fragmented message is in progress.
    #[must_use]
    pub fn in_progress(&self) -> bool {
        self.in_progress
    }

    /// Feeds one decoded frame.
    pub fn push<'a>(&'a mut self, frame: Frame<'a>) -> Result<Delivery<'a>, FrameError> {
        match frame.opcode {
            opcode::TEXT | opcode::BINARY => {
                if self.in_progress {
                    return Err(FrameError::Fragmentation);
                }
                if frame.fin {
                    return Ok(Delivery::Message(frame.payload));
                }
                self.in_progress = true;
                self.partial.clear();
                self.partial.extend_from_slice(frame.payload);
                Ok(Delivery::Pending)
            }
            opcode::CONTINUATION => {
                if !self.in_progress {
                    return Err(FrameError::Fragmentation);
                }
                self.partial.extend_from_slice(frame.payload);
                if frame.fin {
                    self.in_progress = false;
                    Ok(Delivery::Message(&self.partial))
                } else {
                    Ok(Delivery::Pending)
                }
            }
            _ => Ok(Delivery::Control(frame)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 0xFFFF => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_all_length_forms_and_partial_input() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let bytes = server_frame(true, opcode::TEXT, &payload);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                if cut < bytes.len() {
                    assert_eq!(decode(&bytes[..cut]).unwrap(), None, "len {len} cut {cut}");
                }
            }
            let (f, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(f.payload.len(), len);
            assert!(f.fin);
        }
    }

    #[test]
    fn rejects_masked_reserved_and_bad_control() {
        assert_eq!(decode(&[0x81, 0x80, 0, 0, 0, 0]), Err(FrameError::Masked));
        assert_eq!(decode(&[0xC1, 0x00]), Err(FrameError::Reserved));
        assert_eq!(decode(&[0x83, 0x00]), Err(FrameError::Opcode(3)));
        assert_eq!(decode(&[0x09, 0x00]), Err(FrameError::BadControl));
        let mut big_ping = vec![0x89, 126, 0, 126];
        big_ping.extend_from_slice(&[0; 126]);
        assert_eq!(decode(&big_ping), Err(FrameError::BadControl));
    }

    #[test]
    fn masked_encoding_round_trips() {
        let mut out = Vec::new();
        let mask = [1, 2, 3, 4];
        encode_masked(opcode::TEXT, br#"{"type":"ping"}"#, mask, &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 15);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(unmasked, br#"{"type":"ping"}"#);
        let mut long = Vec::new();
        encode_masked(opcode::BINARY, &[0; 200], mask, &mut long);
        assert_eq!(&long[1..4], &[0x80 | 126, 0, 200]);
    }

    #[test]
    fn assembles_fragments_and_passes_control_frames() {
        let mut a = Assembler::default();
        let f1 = server_frame(false, opcode::TEXT, b"ab");
        let f2 = server_frame(false, opcode::CONTINUATION, b"cd");
        let ping = server_frame(true, opcode::PING, b"p");
        let f3 = server_frame(true, opcode::CONTINUATION, b"e");
        assert_eq!(
            a.push(decode(&f1).unwrap().unwrap().0),
            Ok(Delivery::Pending)
        );
        assert_eq!(
            a.push(decode(&f2).unwrap().unwrap().0),
            Ok(Delivery::Pending)
        );
        assert!(matches!(
            a.push(decode(&ping).unwrap().unwrap().0),
            Ok(Delivery::Control(_))
        ));
        assert_eq!(
            a.push(decode(&f3).unwrap().unwrap().0),
            Ok(Delivery::Message(b"abcde"))
        );
        assert_eq!(
            a.push(decode(&f3).unwrap().unwrap().0),
            Err(FrameError::Fragmentation)
        );
    }
}
