//! The decoder: its state, and how a read's bytes flow through it. Whole frames are handled in
//! place in the caller's buffer; what an incomplete trailing frame leaves is kept on the heap
//! (only then): a header or a control frame raw, a data payload unmasked in the message buffer.

use std::{mem, str};

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{
    Event, Limits, ProtocolError,
    header::{Extent, Head, frame_extent},
    mask::{rotate_mask, unmask},
};

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
pub(super) enum Kind {
    Text,
    Binary,
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
