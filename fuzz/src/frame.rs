//! The frame decoder's properties: split invariance, and agreement with tungstenite.

use std::{
    fmt,
    io::{self, Read, Write},
};

use chat4all_gateway::internals::{Decoder, Event, Limits};
use tungstenite::{
    error::{CapacityError, Error as WsError},
    protocol::{Message, Role, WebSocket, WebSocketConfig},
};

/// One decoded client event, owned, in a form both decoders can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// A complete text message.
    Text(Vec<u8>),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A pong and its payload.
    Pong(Vec<u8>),
    /// A close frame: no status, or a code and a reason.
    Close(Option<(u16, String)>),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Text(t) => Ev::Text(t.to_vec()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Close(c) => Ev::Close(c.map(|(code, reason)| (code, reason.to_owned()))),
        }
    }
}

/// What the gateway's decoder made of a whole stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every event delivered, in order.
    pub events: Vec<Ev>,
    /// `Err((close code, error))` for the first protocol violation; decoding stopped there.
    pub verdict: Result<(), (u16, String)>,
    /// Whether the decoder held no partial frame or open message at the end.
    pub idle: bool,
}

/// Decodes `stream` with a fresh decoder, fed in pieces that end at each of `cuts` (positions
/// past the end are ignored; repeated and unsorted cuts are fine).
pub fn decode_split(stream: &[u8], cuts: &[usize], limits: &Limits) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    let mut start = 0;
    for end in cuts {
        let mut piece = stream[start..end].to_vec();
        start = end;
        if let Err(e) = decoder.feed(&mut piece, limits, |ev| events.push(Ev::from(ev))) {
            return Outcome {
                events,
                verdict: Err((e.close_code(), format!("{e:?}"))),
                idle: decoder.is_idle(),
            };
        }
    }
    Outcome {
        events,
        verdict: Ok(()),
        idle: decoder.is_idle(),
    }
}

/// Frame size cap given to tungstenite: it reserves a frame's announced length before reading
/// it, so without a cap a header announcing 2^63 bytes would abort the process. Larger than any
/// message limit the checks use, so the gateway refuses every frame tungstenite refuses for it.
pub const REFERENCE_FRAME_CAP: usize = 1 << 20;

/// How tungstenite's reading of a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefEnd {
    /// It returned a close frame (and reads nothing after it).
    Closed,
    /// It failed the connection; the close code its error corresponds to.
    Failed(u16),
    /// It needs more bytes to finish the current frame.
    Incomplete,
    /// A frame header announced more than [`REFERENCE_FRAME_CAP`].
    OverFrameCap,
}

/// The reference: messages tungstenite (as a server) reads from `stream`, and how it stopped.
pub fn tungstenite_read(stream: &[u8], max_message_bytes: usize) -> (Vec<Ev>, RefEnd) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(REFERENCE_FRAME_CAP));
    let io = MemoryStream {
        input: stream,
        pos: 0,
    };
    let mut ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
    let mut events = Vec::new();
    loop {
        let end = match ws.read() {
            Ok(Message::Text(t)) => {
                events.push(Ev::Text(t.as_bytes().to_vec()));
                continue;
            }
            Ok(Message::Binary(b)) => {
                events.push(Ev::Binary(b.to_vec()));
                continue;
            }
            Ok(Message::Ping(p)) => {
                events.push(Ev::Ping(p.to_vec()));
                continue;
            }
            Ok(Message::Pong(p)) => {
                events.push(Ev::Pong(p.to_vec()));
                continue;
            }
            Ok(Message::Close(close)) => {
                let close = close.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                events.push(Ev::Close(close));
                RefEnd::Closed
            }
            Ok(Message::Frame(_)) => unreachable!("tungstenite never reads raw frames"),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => RefEnd::Incomplete,
            Err(WsError::Capacity(CapacityError::MessageTooLong { max_size, .. }))
                if max_size == REFERENCE_FRAME_CAP =>
            {
                RefEnd::OverFrameCap
            }
            Err(WsError::Capacity(_)) => RefEnd::Failed(1009),
            Err(WsError::Utf8(_)) => RefEnd::Failed(1007),
            Err(WsError::Protocol(_)) => RefEnd::Failed(1002),
            Err(other) => panic!("unexpected tungstenite error {other:?}"),
        };
        return (events, end);
    }
}

/// An in-memory socket: reads `input` then would block; swallows writes (pongs, close replies).
struct MemoryStream<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Read for MemoryStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for MemoryStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reason tungstenite puts in place of a close code it does not allow.
const REPLACED_REASON: &str = "Protocol violation";

/// Asserts that the gateway's decoder agrees with tungstenite on `stream`: the same messages up
/// to the first close, and the same close code when the connection fails.
///
/// Where they legitimately differ, the difference is accepted here and nowhere else:
/// - The gateway judges a frame from its header as soon as it arrives (and text as it arrives);
///   tungstenite only once the whole frame is in. When tungstenite still waits for bytes, the
///   gateway may already have failed the connection, after the same messages.
/// - tungstenite refuses a frame over [`REFERENCE_FRAME_CAP`] (a cap of this harness); the
///   gateway's message limit is lower, so it must have failed the connection too.
/// - tungstenite turns a close frame with a code that may not be sent into a close with 1002
///   "Protocol violation"; the gateway fails the connection with 1002 instead.
/// - 1014 (Bad Gateway) was registered with IANA after tungstenite's table was written: the
///   gateway accepts it (as it does 1012 and 1013), tungstenite replaces it as above.
/// - A control frame whose length uses the 16- or 64-bit form breaks RFC 6455 §5.2 (minimal
///   encoding) and §5.5 (control frames are at most 125 bytes, so the 7-bit form): the gateway
///   fails it with 1002 from its second byte; tungstenite reads it when the length it holds is at
///   most 125. Found by the fuzzer (fuzz/corpus/frame/regression-control-frame-64-bit-length).
pub fn assert_agrees_with_tungstenite(stream: &[u8], limits: &Limits) {
    let ours = decode_split(stream, &[], limits);
    let (theirs, end) = tungstenite_read(stream, limits.max_message_bytes);
    // tungstenite reads nothing after a close; compare up to and including the first one.
    let mut events = ours.events.clone();
    if let Some(i) = events.iter().position(|e| matches!(e, Ev::Close(_))) {
        events.truncate(i + 1);
    }
    if let Err((1002, e)) = &ours.verdict
        && (e == "ControlTooLong(126)" || e == "ControlTooLong(127)")
    {
        assert!(
            theirs.starts_with(&events),
            "events before the long-form control frame differ: {}",
            Context {
                stream,
                ours: &ours,
                theirs: &theirs,
                end
            }
        );
        return;
    }
    let closed_by_us = matches!(events.last(), Some(Ev::Close(_)));
    let context = Context {
        stream,
        ours: &ours,
        theirs: &theirs,
        end,
    };
    match end {
        RefEnd::Closed => {
            let (Some(Ev::Close(their_close)), Some(their_prefix)) =
                (theirs.last(), theirs.get(..theirs.len() - 1))
            else {
                unreachable!()
            };
            let replaced = *their_close == Some((1002, REPLACED_REASON.to_owned()));
            if closed_by_us {
                let Some(Ev::Close(our_close)) = events.last() else {
                    unreachable!()
                };
                assert_eq!(&events[..events.len() - 1], their_prefix, "{context}");
                let same =
                    our_close == their_close || (replaced && matches!(our_close, Some((1014, _))));
                assert!(same, "close frames differ: {context}");
            } else {
                assert!(
                    replaced,
                    "tungstenite closed, the gateway did not: {context}"
                );
                assert_eq!(events, their_prefix, "{context}");
                assert!(
                    matches!(&ours.verdict, Err((1002, e)) if e.starts_with("InvalidCloseCode")),
                    "{context}"
                );
            }
        }
        RefEnd::Failed(code) => {
            assert_eq!(events, theirs, "{context}");
            assert!(!closed_by_us, "{context}");
            assert_eq!(
                ours.verdict.as_ref().map_err(|e| e.0),
                Err(code),
                "{context}"
            );
        }
        RefEnd::Incomplete => {
            assert_eq!(events, theirs, "{context}");
            assert!(!closed_by_us, "{context}");
        }
        RefEnd::OverFrameCap => {
            assert_eq!(events, theirs, "{context}");
            assert!(ours.verdict.is_err(), "{context}");
        }
    }
}

/// Everything about one comparison, printed when it fails.
struct Context<'a> {
    stream: &'a [u8],
    ours: &'a Outcome,
    theirs: &'a [Ev],
    end: RefEnd,
}

impl fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n  stream: {:02x?}\n  gateway: {:?}\n  tungstenite: {:?} then {:?}",
            self.stream, self.ours, self.theirs, self.end
        )
    }
}

/// The frame decoder: its events and verdict do not depend on how the stream is split, and it
/// agrees with tungstenite (see [`assert_agrees_with_tungstenite`]).
pub fn frame(data: &[u8]) {
    let [a, b, limit, stream @ ..] = data else {
        return;
    };
    let limits = Limits::new().with_max_message_bytes(match limit % 4 {
        0 => 0,
        1 => 125,
        2 => 4096,
        _ => 65536,
    });
    let whole = decode_split(stream, &[], &limits);
    let n = stream.len();
    let cut_a = usize::from(*a) * n / 255;
    let cut_b = cut_a + usize::from(*b) * (n - cut_a) / 255;
    assert_eq!(
        decode_split(stream, &[cut_a, cut_b], &limits),
        whole,
        "cuts {cut_a}, {cut_b}"
    );
    if n <= 1024 {
        let every: Vec<usize> = (1..n).collect();
        assert_eq!(decode_split(stream, &every, &limits), whole, "byte by byte");
    }
    assert_agrees_with_tungstenite(stream, &limits);
}
