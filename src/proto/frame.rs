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

use std::{io::Cursor, mem, str};

use bytes::Bytes;
use thiserror::Error;
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{CloseCode, Control, Data, OpCode},
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

/// Incremental decoder of client->server frames for one connection.
///
/// At rest it is a single null pointer (8 bytes, no heap); see the module docs.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Present only while a frame is split across reads or a fragmented message is open.
    state: Option<Box<State>>,
}

/// The decoder's heap part, which exists only while the decoder is not idle.
#[derive(Debug, Default)]
struct State {
    /// Raw (still masked) bytes of a frame header that has not fully arrived, or of a whole
    /// control frame (at most 139 bytes) that has not; they are logically prepended to the next
    /// input. Data payloads never wait here: they go to `message` as they arrive.
    partial: Vec<u8>,
    /// The data frame whose header is in but whose payload is still arriving, if any.
    receiving: Option<Receiving>,
    /// Kind of the data message in progress (fragmented, or one frame still arriving), if any.
    open: Option<Kind>,
    /// Unmasked payload of the open message received so far.
    message: Vec<u8>,
    /// For a text message: how much of `message` is known to be valid UTF-8 ending on a
    /// character boundary. Text is checked as it arrives, so an invalid byte fails the
    /// connection at once rather than when the message ends (Autobahn 6.4.x).
    checked: usize,
}

/// A data frame whose payload is still arriving.
#[derive(Debug)]
struct Receiving {
    /// FIN bit: the message ends with this frame.
    fin: bool,
    /// Masking key.
    mask: [u8; 4],
    /// Payload bytes received so far (which is also the mask's phase for the next byte).
    received: usize,
    /// Payload bytes still to come.
    remaining: usize,
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// A validated frame header.
#[derive(Debug)]
struct Head {
    /// FIN bit.
    fin: bool,
    /// Opcode (never reserved).
    opcode: OpCode,
    /// Masking key.
    mask: [u8; 4],
    /// Header length in bytes (2 to 14).
    header_len: usize,
    /// Payload length in bytes, already checked against the limits.
    payload_len: usize,
}

impl Head {
    /// Length of the whole frame.
    fn total(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Whether this is a close, ping or pong frame.
    fn is_control(&self) -> bool {
        matches!(self.opcode, OpCode::Control(_))
    }
}

/// How much of the frame at the start of a buffer is known.
enum Extent {
    /// The header is incomplete; at least this many bytes are needed to read it.
    Header(usize),
    /// The header is complete and valid.
    Frame(Head),
}

impl Decoder {
    /// Decodes every complete frame in `input` (bytes just read from the socket), calling
    /// `on_event` for each complete message or control frame, in order.
    ///
    /// Payloads are unmasked in place in `input`, which is why it is `&mut`. Of an incomplete
    /// trailing frame, the decoder keeps (on the heap, only then) the header, a control frame's
    /// raw bytes, or a data frame's payload so far, and carries on with the next call's input.
    ///
    /// # Errors
    ///
    /// Returns the first protocol violation; events before it have been delivered. After an
    /// error the decoder must not be used again (its buffers are released).
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        let result = self.feed_inner(input, limits, &mut on_event);
        if result.is_err() {
            self.state = None;
        }
        result
    }

    /// True when no partial frame or fragmented message is buffered (and no heap is held).
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.state.is_none()
    }

    fn feed_inner(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        if let Some(state) = self.state.as_deref_mut() {
            if state.receiving.is_some() {
                pos = receive_payload(state, input, on_event)?;
            } else if !state.partial.is_empty() {
                let (used, head) = complete_partial(state, input, limits)?;
                pos = used;
                if let Some(head) = head {
                    let mut raw = mem::take(&mut state.partial);
                    if head.is_control() {
                        process_frame(&mut self.state, &head, &mut raw, on_event)?;
                    } else {
                        // Only the header was buffered: the payload starts in `input`.
                        let end = input.len().min(pos + head.payload_len);
                        data_frame(&mut self.state, &head, &mut input[pos..end], on_event)?;
                        pos = end;
                    }
                }
            }
        }
        while pos < input.len() {
            let rest = &mut input[pos..];
            let need = match frame_extent(rest, open_message(self.state.as_deref()), limits)? {
                Extent::Frame(head) if head.total() <= rest.len() => {
                    let total = head.total();
                    process_frame(&mut self.state, &head, &mut rest[..total], on_event)?;
                    pos += total;
                    continue;
                }
                Extent::Frame(head) if !head.is_control() => {
                    // A data frame whose payload has started arriving: take what is here.
                    data_frame(
                        &mut self.state,
                        &head,
                        &mut rest[head.header_len..],
                        on_event,
                    )?;
                    break;
                }
                Extent::Frame(head) => head.total(),
                Extent::Header(need) => need,
            };
            let state = self.state.get_or_insert_with(Box::default);
            state.partial.reserve_exact(need);
            state.partial.extend_from_slice(rest);
            break;
        }
        if let Some(state) = &self.state
            && state.partial.is_empty()
            && state.receiving.is_none()
            && state.open.is_none()
        {
            self.state = None;
        }
        Ok(())
    }
}

/// The open fragmented message, as (kind, bytes so far), for header validation.
fn open_message(state: Option<&State>) -> Option<(Kind, usize)> {
    let state = state?;
    state.open.map(|kind| (kind, state.message.len()))
}

/// Moves bytes from `input` into `state.partial` until it holds a complete control frame or the
/// complete header of a data frame (or `input` runs out). Returns the bytes taken and, once it
/// is complete, the header.
fn complete_partial(
    state: &mut State,
    input: &[u8],
    limits: &Limits,
) -> Result<(usize, Option<Head>), ProtocolError> {
    let mut used = 0;
    loop {
        let open = state.open.map(|kind| (kind, state.message.len()));
        let need = match frame_extent(&state.partial, open, limits)? {
            Extent::Frame(head) if !head.is_control() || head.total() <= state.partial.len() => {
                return Ok((used, Some(head)));
            }
            Extent::Frame(head) => head.total(),
            Extent::Header(need) => need,
        };
        let take = (need - state.partial.len()).min(input.len() - used);
        if take == 0 {
            return Ok((used, None));
        }
        state.partial.reserve_exact(need - state.partial.len());
        state.partial.extend_from_slice(&input[used..used + take]);
        used += take;
    }
}

/// Passes the start of `input` to the data frame whose payload is arriving, and returns how
/// many bytes it took.
fn receive_payload(
    state: &mut State,
    input: &mut [u8],
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<usize, ProtocolError> {
    let Some(rx) = state.receiving.as_mut() else {
        return Ok(0);
    };
    let take = rx.remaining.min(input.len());
    let chunk = &mut input[..take];
    unmask(chunk, rotate_mask(rx.mask, rx.received));
    rx.received += take;
    rx.remaining -= take;
    let frame_done = rx.remaining == 0;
    let message_done = frame_done && rx.fin;
    if frame_done {
        state.receiving = None;
    }
    state.message.extend_from_slice(chunk);
    message_progress(state, message_done, on_event)?;
    Ok(take)
}

/// Validates as much of the frame header at the start of `buf` as is present. Errors are
/// reported as early as possible (most from the first two bytes), and sizes are checked before
/// any payload is buffered. `open` is the fragmented message in progress, if any.
fn frame_extent(
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

/// Unmasks and dispatches one complete, validated frame held in `frame`.
fn process_frame(
    slot: &mut Option<Box<State>>,
    head: &Head,
    frame: &mut [u8],
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    let payload = &mut frame[head.header_len..head.total()];
    if !head.is_control() {
        return data_frame(slot, head, payload, on_event);
    }
    unmask(payload, head.mask);
    match head.opcode {
        OpCode::Control(Control::Ping) => on_event(Event::Ping(payload)),
        OpCode::Control(Control::Pong) => on_event(Event::Pong(payload)),
        OpCode::Control(Control::Close) => on_event(Event::Close(parse_close(payload)?)),
        OpCode::Data(Data::Reserved(code)) | OpCode::Control(Control::Reserved(code)) => {
            return Err(ProtocolError::ReservedOpcode(code));
        }
        OpCode::Data(_) => unreachable!("data frames are handled above"),
    }
    Ok(())
}

/// Handles a data frame (text, binary or continuation, its header already validated against the
/// open message by [`frame_extent`]) of which `payload`, still masked, is the part that has
/// arrived. The rest, if any, will come through [`receive_payload`].
fn data_frame(
    slot: &mut Option<Box<State>>,
    head: &Head,
    payload: &mut [u8],
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    let complete = payload.len() == head.payload_len;
    unmask(payload, head.mask);
    let kind = match head.opcode {
        OpCode::Data(Data::Text) => Some(Kind::Text),
        OpCode::Data(Data::Binary) => Some(Kind::Binary),
        _ => None,
    };
    if let (Some(kind), true, true) = (kind, head.fin, complete) {
        // The common case: a whole message in one frame, read at once. No copy.
        return emit_data(kind, payload, on_event);
    }
    let state = slot.get_or_insert_with(Box::default);
    if let Some(kind) = kind {
        state.open = Some(kind);
    }
    if complete {
        state.message.extend_from_slice(payload);
    } else {
        state.message.reserve_exact(head.payload_len);
        state.message.extend_from_slice(payload);
        state.receiving = Some(Receiving {
            fin: head.fin,
            mask: head.mask,
            received: payload.len(),
            remaining: head.payload_len - payload.len(),
        });
    }
    message_progress(state, complete && head.fin, on_event)
}

/// After payload bytes were added to the open message: checks the text received so far, and
/// emits the message once `done`.
fn message_progress(
    state: &mut State,
    done: bool,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    let Some(kind) = state.open else {
        return Ok(());
    };
    if kind == Kind::Text {
        check_utf8(&state.message, &mut state.checked, done)?;
    }
    if done {
        state.open = None;
        state.checked = 0;
        let message = mem::take(&mut state.message);
        match kind {
            Kind::Text => on_event(Event::Text(&message)),
            Kind::Binary => on_event(Event::Binary(&message)),
        }
    }
    Ok(())
}

/// Checks `text[*checked..]` as UTF-8 and advances `checked` past its last complete character.
/// A sequence cut off at the end is fine while more may follow (`!done`); a sequence no bytes
/// could complete is an error at once, so the verdict does not depend on how the text arrives.
fn check_utf8(text: &[u8], checked: &mut usize, done: bool) -> Result<(), ProtocolError> {
    match str::from_utf8(&text[*checked..]) {
        Ok(_) => {
            *checked = text.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !done => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(ProtocolError::InvalidUtf8),
    }
}

/// Emits a complete single-frame data message, validating text as UTF-8.
fn emit_data(
    kind: Kind,
    payload: &[u8],
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    match kind {
        Kind::Text => {
            str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
            on_event(Event::Text(payload));
        }
        Kind::Binary => on_event(Event::Binary(payload)),
    }
    Ok(())
}

/// Parses an unmasked close payload: nothing, or a status code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            // The reason first: with both wrong, 1007 as tungstenite says (tests/parsers).
            let reason = str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            Ok(Some((code, reason)))
        }
    }
}

/// Close codes a peer may send: 1000-1003 and 1007-1011 (RFC 6455 section 7.4.1), 1012-1014
/// (registered with IANA since: service restart, try again later, bad gateway; the gateway itself
/// sends 1013, and a client may echo it), and the registered / private ranges 3000-4999. 1004-1006
/// and 1015 may never be sent, and the rest of 1016-2999 is unassigned.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The mask as seen from payload byte `offset` on.
fn rotate_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = mask;
    rotated.rotate_left(offset % 4);
    rotated
}

/// XORs `buf` with the repeating 4-byte `mask`, eight bytes at a time.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let (chunks, tail) = buf.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide).to_ne_bytes();
    }
    // The tail starts at a multiple of 8, so the mask phase restarts at 0.
    for (byte, m) in tail.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

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

/// Helpers for other modules' tests: turn server frames into client frames and decode them.
#[cfg(test)]
pub(crate) mod test_util {
    use super::{Decoder, Event, Limits, unmask};

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
mod tests {
    use super::{test_util::to_client_frame, *};

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// An owned copy of an [`Event`], for comparing event sequences.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Event<'_>> for Ev {
        fn from(e: Event<'_>) -> Self {
            match e {
                Event::Text(t) => Ev::Text(t.to_vec()),
                Event::Binary(b) => Ev::Binary(b.to_vec()),
                Event::Ping(p) => Ev::Ping(p.to_vec()),
                Event::Pong(p) => Ev::Pong(p.to_vec()),
                Event::Close(c) => Ev::Close(c.map(|(code, r)| (code, r.to_owned()))),
            }
        }
    }

    /// A masked client frame with the given first byte (FIN/RSV/opcode) and payload.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode: OpCode::from(first & 0x0F),
            mask: Some(MASK),
        };
        header.format(payload.len() as u64, &mut out).unwrap();
        let mut masked = payload.to_vec();
        unmask(&mut masked, MASK);
        out.extend_from_slice(&masked);
        out
    }

    fn decode_with(
        dec: &mut Decoder,
        input: &[u8],
        limits: &Limits,
    ) -> Result<Vec<Ev>, ProtocolError> {
        let mut events = Vec::new();
        let mut buf = input.to_vec();
        dec.feed(&mut buf, limits, |e| events.push(Ev::from(e)))?;
        Ok(events)
    }

    fn decode(input: &[u8]) -> Result<Vec<Ev>, ProtocolError> {
        let mut dec = Decoder::default();
        let events = decode_with(&mut dec, input, &Limits::new())?;
        Ok(events)
    }

    /// Decodes `input` with a fresh decoder, expecting an error.
    fn decode_err(input: &[u8]) -> ProtocolError {
        decode(input).expect_err("expected a protocol error")
    }

    #[test]
    fn decoder_is_small_and_idle_by_default() {
        assert!(size_of::<Decoder>() <= 16);
        assert_eq!(size_of::<Decoder>(), size_of::<usize>());
        assert!(Decoder::default().is_idle());
    }

    #[test]
    fn single_text_frame() {
        assert_eq!(
            decode(&client(0x81, b"hello")),
            Ok(vec![Ev::Text(b"hello".to_vec())])
        );
    }

    #[test]
    fn single_binary_frame() {
        let payload: Vec<u8> = (0..=255).collect();
        assert_eq!(
            decode(&client(0x82, &payload)),
            Ok(vec![Ev::Binary(payload)])
        );
    }

    #[test]
    fn empty_text_frame() {
        assert_eq!(decode(&client(0x81, b"")), Ok(vec![Ev::Text(vec![])]));
    }

    #[test]
    fn ping_and_pong() {
        assert_eq!(
            decode(&client(0x89, b"abc")),
            Ok(vec![Ev::Ping(b"abc".to_vec())])
        );
        assert_eq!(decode(&client(0x8A, b"")), Ok(vec![Ev::Pong(vec![])]));
        assert_eq!(
            decode(&client(0x89, &[7; 125])),
            Ok(vec![Ev::Ping(vec![7; 125])])
        );
    }

    #[test]
    fn close_without_code() {
        assert_eq!(decode(&client(0x88, b"")), Ok(vec![Ev::Close(None)]));
    }

    #[test]
    fn close_with_code_and_reason() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        assert_eq!(
            decode(&client(0x88, &payload)),
            Ok(vec![Ev::Close(Some((1000, String::new())))])
        );
        payload.extend_from_slice("bye ü".as_bytes());
        assert_eq!(
            decode(&client(0x88, &payload)),
            Ok(vec![Ev::Close(Some((1000, "bye ü".to_owned())))])
        );
        for code in [1001, 1003, 1007, 1011, 3000, 4999] {
            let frame = client(0x88, &u16::to_be_bytes(code));
            assert_eq!(
                decode(&frame),
                Ok(vec![Ev::Close(Some((code, String::new())))])
            );
        }
    }

    /// A stream of several frames of every kind, including a fragmented text message with an
    /// interleaved ping and a 16-bit-length frame.
    fn stream() -> (Vec<u8>, Vec<Ev>) {
        let big = vec![b'x'; 300];
        let parts = [
            client(0x81, b"one"),
            client(0x89, b"p"),
            client(0x01, b"fr"),
            client(0x89, b"mid"),
            client(0x00, b"ag"),
            client(0x80, "mént".as_bytes()),
            client(0x82, &big),
            client(0x8A, b""),
            client(0x88, &[0x03, 0xE8, b'o', b'k']),
        ];
        let expected = vec![
            Ev::Text(b"one".to_vec()),
            Ev::Ping(b"p".to_vec()),
            Ev::Ping(b"mid".to_vec()),
            Ev::Text("fragmént".as_bytes().to_vec()),
            Ev::Binary(big),
            Ev::Pong(vec![]),
            Ev::Close(Some((1000, "ok".to_owned()))),
        ];
        (parts.concat(), expected)
    }

    #[test]
    fn several_frames_in_one_input() {
        let (input, expected) = stream();
        let mut dec = Decoder::default();
        assert_eq!(decode_with(&mut dec, &input, &Limits::new()), Ok(expected));
        assert!(dec.is_idle());
    }

    #[test]
    fn byte_by_byte_gives_identical_events() {
        let (input, expected) = stream();
        let mut dec = Decoder::default();
        let mut events = Vec::new();
        for &byte in &input {
            events.extend(decode_with(&mut dec, &[byte], &Limits::new()).unwrap());
        }
        assert_eq!(events, expected);
        assert!(dec.is_idle());
    }

    #[test]
    fn every_split_point_gives_identical_events() {
        let (input, expected) = stream();
        for split in 0..=input.len() {
            let mut dec = Decoder::default();
            let mut events = decode_with(&mut dec, &input[..split], &Limits::new()).unwrap();
            events.extend(decode_with(&mut dec, &input[split..], &Limits::new()).unwrap());
            assert_eq!(events, expected, "split at {split}");
            assert!(dec.is_idle(), "split at {split}");
        }
    }

    #[test]
    fn partial_frame_keeps_state_then_releases_it() {
        let frame = client(0x81, b"hello");
        let mut dec = Decoder::default();
        assert_eq!(
            decode_with(&mut dec, &frame[..4], &Limits::new()),
            Ok(vec![])
        );
        assert!(!dec.is_idle());
        assert_eq!(
            decode_with(&mut dec, &frame[4..], &Limits::new()),
            Ok(vec![Ev::Text(b"hello".to_vec())])
        );
        assert!(dec.is_idle());
    }

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let input = [
            client(0x01, b"Hel"),
            client(0x89, b"!"),
            client(0x00, b"lo, "),
            client(0x80, b"world"),
        ]
        .concat();
        assert_eq!(
            decode(&input),
            Ok(vec![
                Ev::Ping(b"!".to_vec()),
                Ev::Text(b"Hello, world".to_vec())
            ])
        );
    }

    #[test]
    fn fragmented_message_state_spans_calls() {
        let mut dec = Decoder::default();
        let limits = Limits::new();
        assert_eq!(
            decode_with(&mut dec, &client(0x02, b"ab"), &limits),
            Ok(vec![])
        );
        assert!(!dec.is_idle());
        assert_eq!(
            decode_with(&mut dec, &client(0x80, b"cd"), &limits),
            Ok(vec![Ev::Binary(b"abcd".to_vec())])
        );
        assert!(dec.is_idle());
    }

    #[test]
    fn length_forms() {
        let limits = Limits::new().with_max_message_bytes(1 << 20);
        for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let payload = vec![b'a'; len];
            let frame = client(0x82, &payload);
            assert_eq!(frame.len(), header_len + len, "len {len}");
            let mut dec = Decoder::default();
            assert_eq!(
                decode_with(&mut dec, &frame, &limits),
                Ok(vec![Ev::Binary(payload)])
            );
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for len in [0, 5, 125, 126, 1000, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = to_client_frame(&encode_text(&payload), MASK);
            assert_eq!(decode(&frame), Ok(vec![Ev::Text(payload)]), "len {len}");
        }
        let ping = to_client_frame(&encode_ping(b"tick"), MASK);
        assert_eq!(decode(&ping), Ok(vec![Ev::Ping(b"tick".to_vec())]));
        let pong = to_client_frame(&encode_pong(b"tock"), MASK);
        assert_eq!(decode(&pong), Ok(vec![Ev::Pong(b"tock".to_vec())]));
        let close = to_client_frame(&encode_close(1001, "going away"), MASK);
        assert_eq!(
            decode(&close),
            Ok(vec![Ev::Close(Some((1001, "going away".to_owned())))])
        );
    }

    #[test]
    fn exact_bytes_of_short_text_frame() {
        assert_eq!(&encode_text(b"Hi")[..], &[0x81, 0x02, b'H', b'i']);
        assert_eq!(&encode_pong(b"")[..], &[0x8A, 0x00]);
        assert_eq!(&encode_ping(b"x")[..], &[0x89, 0x01, b'x']);
        assert_eq!(&encode_close(1000, "")[..], &[0x88, 0x02, 0x03, 0xE8]);
    }

    #[test]
    fn text_header_matches_tungstenite() {
        for len in [0, 1, 125, 126, 65535, 65536, 1 << 33] {
            let mut out = Vec::new();
            write_text_header(len, &mut out);
            assert_eq!(out.len(), text_header_len(len), "len {len}");
            assert_eq!(
                out.len(),
                FrameHeader::default().len(len as u64),
                "len {len}"
            );
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        write_text_header(126, &mut out);
        assert_eq!(out, [0x81, 126, 0, 126]);
        out.clear();
        write_text_header(65536, &mut out);
        assert_eq!(out, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn close_reason_truncated_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let frame = encode_close(1000, &reason);
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert_eq!(frame[1] as usize, 2 + 122);
        let decoded = decode(&to_client_frame(&frame, MASK)).unwrap();
        assert_eq!(decoded, vec![Ev::Close(Some((1000, "é".repeat(61))))]);
        assert_eq!(encode_ping(&[1; 200]).len(), 2 + MAX_CONTROL_PAYLOAD);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        for len in 0..40 {
            let orig: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut buf = orig.clone();
            unmask(&mut buf, MASK);
            let expected: Vec<u8> = orig
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(buf, expected);
        }
    }

    fn assert_error(input: &[u8], expected: ProtocolError, code: u16) {
        let err = decode_err(input);
        assert_eq!(err, expected);
        assert_eq!(err.close_code(), code, "{err}");
    }

    #[test]
    fn error_unmasked() {
        assert_error(&[0x81, 0x02, b'h', b'i'], ProtocolError::Unmasked, 1002);
        // Detected from the first two bytes alone.
        assert_eq!(decode_err(&[0x81, 0x02]), ProtocolError::Unmasked);
    }

    #[test]
    fn error_reserved_bits() {
        for first in [0xC1, 0xA1, 0x91] {
            assert_error(&client(first, b"x"), ProtocolError::ReservedBits, 1002);
        }
    }

    #[test]
    fn error_reserved_opcodes() {
        for op in [3, 7, 0xB, 0xF] {
            assert_error(
                &client(0x80 | op, b""),
                ProtocolError::ReservedOpcode(op),
                1002,
            );
        }
    }

    #[test]
    fn error_fragmented_control() {
        assert_error(&client(0x09, b""), ProtocolError::FragmentedControl, 1002);
        assert_error(&client(0x08, b""), ProtocolError::FragmentedControl, 1002);
    }

    #[test]
    fn error_control_too_long() {
        assert_error(
            &client(0x89, &[0; 126]),
            ProtocolError::ControlTooLong(126),
            1002,
        );
        assert_error(
            &client(0x88, &[3; 200]),
            ProtocolError::ControlTooLong(126),
            1002,
        );
    }

    #[test]
    fn error_unexpected_continuation() {
        assert_error(
            &client(0x80, b"x"),
            ProtocolError::UnexpectedContinuation,
            1002,
        );
        assert_error(
            &client(0x00, b"x"),
            ProtocolError::UnexpectedContinuation,
            1002,
        );
    }

    #[test]
    fn error_data_frame_inside_fragmented_message() {
        let input = [client(0x01, b"a"), client(0x81, b"b")].concat();
        assert_error(&input, ProtocolError::ExpectedContinuation, 1002);
        let input = [client(0x02, b"a"), client(0x02, b"b")].concat();
        assert_error(&input, ProtocolError::ExpectedContinuation, 1002);
    }

    #[test]
    fn error_close_payload_of_one_byte() {
        assert_error(&client(0x88, &[3]), ProtocolError::CloseTooShort, 1002);
    }

    #[test]
    fn error_invalid_close_codes() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let frame = client(0x88, &u16::to_be_bytes(code));
            assert_error(&frame, ProtocolError::InvalidCloseCode(code), 1002);
        }
    }

    #[test]
    fn error_invalid_utf8_text() {
        assert_error(
            &client(0x81, &[0xFF, 0xFE]),
            ProtocolError::InvalidUtf8,
            1007,
        );
        // A code point split across fragments is fine; an invalid sequence after reassembly is not.
        let split = [client(0x01, &[0xC3]), client(0x80, &[0xA9])].concat();
        assert_eq!(decode(&split), Ok(vec![Ev::Text("é".as_bytes().to_vec())]));
        let bad = [client(0x01, &[0xC3]), client(0x80, b"A")].concat();
        assert_error(&bad, ProtocolError::InvalidUtf8, 1007);
        // Binary payloads are not validated.
        assert_eq!(
            decode(&client(0x82, &[0xFF])),
            Ok(vec![Ev::Binary(vec![0xFF])])
        );
    }

    #[test]
    fn registered_close_codes_1012_to_1014_are_accepted() {
        // IANA-registered after RFC 6455 (Service Restart, Try Again Later, Bad Gateway). A
        // client that echoes the gateway's own 1013 must not be failed for it.
        for code in [1012, 1013, 1014] {
            let frame = client(0x88, &u16::to_be_bytes(code));
            assert_eq!(
                decode(&frame),
                Ok(vec![Ev::Close(Some((code, String::new())))]),
                "{code}"
            );
        }
    }

    #[test]
    fn close_reason_is_checked_before_the_code() {
        // Both wrong: the reason decides (1007), as in tungstenite, the differential reference.
        let frame = client(0x88, &[0x03, 0xEC, 0xFF]); // 1004, invalid UTF-8
        assert_error(&frame, ProtocolError::InvalidCloseReason, 1007);
    }

    #[test]
    fn invalid_utf8_fails_inside_a_partly_received_text_frame() {
        // Autobahn 6.4.3/6.4.4: the frame's tail has not arrived, but no tail can make the text
        // valid, so the connection fails now.
        let frame = client(0x81, b"ok\xF5 then more text");
        let mut dec = Decoder::default();
        let err = decode_with(&mut dec, &frame[..10], &Limits::new()).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        // A character cut at the end of a read is not an error.
        let frame = client(0x81, "añb".as_bytes());
        let mut dec = Decoder::default();
        assert_eq!(
            decode_with(&mut dec, &frame[..8], &Limits::new()),
            Ok(vec![])
        );
        assert_eq!(
            decode_with(&mut dec, &frame[8..], &Limits::new()),
            Ok(vec![Ev::Text("añb".as_bytes().to_vec())])
        );
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_holds_it() {
        // Autobahn 6.4.1/6.4.2: the ping after the bad fragment is never reached.
        let input = [
            client(0x01, b"ok"),
            client(0x00, &[0xF5]),
            client(0x89, b"late"),
            client(0x80, b"end"),
        ]
        .concat();
        let mut events = Vec::new();
        let err = Decoder::default()
            .feed(&mut input.clone(), &Limits::new(), |e| {
                events.push(Ev::from(e))
            })
            .unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(events, vec![]);
    }

    #[test]
    fn error_invalid_utf8_close_reason() {
        let frame = client(0x88, &[0x03, 0xE8, 0xFF]);
        assert_error(&frame, ProtocolError::InvalidCloseReason, 1007);
    }

    #[test]
    fn error_message_too_large_single_frame() {
        let limits = Limits::new().with_max_message_bytes(10);
        let mut dec = Decoder::default();
        assert_eq!(
            decode_with(&mut dec, &client(0x81, &[b'a'; 10]), &limits),
            Ok(vec![Ev::Text(vec![b'a'; 10])])
        );
        let err = decode_with(&mut dec, &client(0x81, &[b'a'; 11]), &limits).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge { len: 11, max: 10 });
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn error_message_too_large_fragmented() {
        let limits = Limits::new().with_max_message_bytes(10);
        let input = [client(0x01, &[b'a'; 6]), client(0x80, &[b'b'; 5])].concat();
        let err = decode_with(&mut Decoder::default(), &input, &limits).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge { len: 11, max: 10 });
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn error_huge_length_detected_from_header_alone() {
        // A header announcing 2^31 bytes, with no payload: rejected without buffering.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 31).to_be_bytes());
        frame.extend_from_slice(&MASK);
        let err = decode_err(&frame);
        assert_eq!(
            err,
            ProtocolError::MessageTooLarge {
                len: 1 << 31,
                max: 4096
            }
        );
        assert_eq!(err.close_code(), 1009);
        // Same when the header itself arrives in pieces.
        let mut dec = Decoder::default();
        assert_eq!(
            decode_with(&mut dec, &frame[..5], &Limits::new()),
            Ok(vec![])
        );
        let err = decode_with(&mut dec, &frame[5..], &Limits::new()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::MessageTooLarge { .. }),
            "{err}"
        );
        assert!(dec.is_idle(), "buffers released after an error");
    }

    #[test]
    fn events_before_an_error_are_delivered() {
        let input = [client(0x81, b"ok"), client(0x80, b"x")].concat();
        let mut events = Vec::new();
        let err = Decoder::default()
            .feed(&mut input.clone(), &Limits::new(), |e| {
                events.push(Ev::from(e))
            })
            .unwrap_err();
        assert_eq!(err, ProtocolError::UnexpectedContinuation);
        assert_eq!(events, vec![Ev::Text(b"ok".to_vec())]);
    }
}
