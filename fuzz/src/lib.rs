//! The properties the fuzz targets check, as plain functions over arbitrary bytes that panic when
//! a property breaks.
//!
//! One file serves three users: the cargo-fuzz targets in `fuzz_targets/` (libFuzzer, nightly),
//! the stable corpus replay in `tests/parsers/corpus.rs`, which includes this file with `#[path]`
//! and runs every committed corpus file through the same function, and the property tests in
//! `tests/parsers/`, which reuse the oracles (the tungstenite reference, the serde_json shape).
//! It depends only on the gateway's `internals` and on crates the gateway already depends on.
//!
//! Input formats (so that seeds can be written by hand; see `fuzz/README.md`):
//! - [`frame`]: `[cut_a, cut_b, limit, stream...]`: two split points (as fractions of 255) and
//!   a message-size limit selector, then the client byte stream.
//! - [`upgrade`]: `[limit_hi, limit_lo, request...]`: `0x00 0x00` is the default 8192-byte
//!   limit; anything else is a limit of `1 + (hi << 8 | lo) % 9000`.
//! - [`payload`]: the notification payload itself.
//! - [`jwt`]: `[mode, rest...]`; see [`jwt`].

use std::{
    borrow::Cow,
    fmt,
    io::{self, Read, Write},
    sync::OnceLock,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chat4all_gateway::internals::{
    Algorithm, AuthConfig, AuthError, Authenticator, Decoder, Event, HandshakeConfig, KeySource,
    Limits, Parsed, normalize_to_frame, parse_request, write_refusal,
};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use tungstenite::{
    error::{CapacityError, Error as WsError},
    protocol::{Message, Role, WebSocket, WebSocketConfig},
};

// ---------------------------------------------------------------------------------------------
// Frames

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
pub fn assert_agrees_with_tungstenite(stream: &[u8], limits: &Limits) {
    let ours = decode_split(stream, &[], limits);
    let (theirs, end) = tungstenite_read(stream, limits.max_message_bytes);
    // tungstenite reads nothing after a close; compare up to and including the first one.
    let mut events = ours.events.clone();
    if let Some(i) = events.iter().position(|e| matches!(e, Ev::Close(_))) {
        events.truncate(i + 1);
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

// ---------------------------------------------------------------------------------------------
// Upgrade requests

/// The statuses docs/protocol.md lists for a refused upgrade request (401 and 503 are decided
/// after parsing, by the caller).
pub const UPGRADE_REFUSALS: [u16; 5] = [400, 404, 405, 426, 431];

/// The handshake limits a fuzz input asks for (see the module docs).
pub fn upgrade_config(hi: u8, lo: u8) -> HandshakeConfig {
    let mut cfg = HandshakeConfig::default();
    if (hi, lo) != (0, 0) {
        cfg.max_request_bytes = 1 + (usize::from(hi) << 8 | usize::from(lo)) % 9000;
    }
    cfg
}

/// The upgrade parser never panics, never looks past `max_request_bytes`, reaches the same
/// verdict however the request is split across reads, and refuses only with a documented status
/// and a well-formed response.
pub fn upgrade(data: &[u8]) {
    let [hi, lo, request @ ..] = data else {
        return;
    };
    let cfg = upgrade_config(*hi, *lo);
    let cuts: Vec<usize> = (1..8).map(|i| request.len() * i / 8).collect();
    assert_upgrade_properties(request, &cfg, &cuts);
}

/// The properties of [`upgrade`], for one request, limit and set of read boundaries.
pub fn assert_upgrade_properties(request: &[u8], cfg: &HandshakeConfig, cuts: &[usize]) {
    let max = cfg.max_request_bytes;
    let result = parse_request(request, cfg);
    // Never reads past the limit: the verdict depends only on the first `max` bytes.
    let seen = &request[..request.len().min(max)];
    assert_eq!(
        parse_request(seen, cfg),
        result,
        "bytes past the limit changed the verdict"
    );
    // The same verdict whatever the reads: every prefix is undecided or already says the same.
    for &cut in cuts.iter().filter(|&&c| c <= request.len()) {
        let early = parse_request(&request[..cut], cfg);
        assert!(
            early == Ok(Parsed::Partial) || early == result,
            "prefix of {cut} bytes: {early:?}, whole: {result:?}"
        );
    }
    match &result {
        Ok(Parsed::Partial) => assert!(request.len() < max),
        Ok(Parsed::Complete {
            request: upgrade,
            consumed,
        }) => {
            assert!(*consumed <= seen.len());
            assert_eq!(parse_request(&request[..*consumed], cfg), result);
            assert_eq!(upgrade.accept_key.len(), 28);
            assert!(upgrade.token.as_deref().is_none_or(|t| !t.is_empty()));
        }
        Err(e) => {
            let status = e.status().code();
            assert!(
                UPGRADE_REFUSALS.contains(&status),
                "undocumented status {status}"
            );
            let mut out = Vec::new();
            write_refusal(e.status(), e.kind(), &e.to_string(), &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = response.parse(&out) else {
                panic!("refusal is not an HTTP response: {out:?}");
            };
            assert_eq!(response.code, Some(status));
            let body: serde_json::Value =
                serde_json::from_slice(&out[head..]).expect("refusal body is JSON");
            assert_eq!(body["error"], e.kind());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// The clock value the payload checks normalise with.
pub const NOW_MS: u64 = 1_700_000_000_123;

/// What serde_json says a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    /// Empty or only whitespace.
    Empty,
    /// Not a JSON text (RFC 8259, including its UTF-8 rule).
    Invalid,
    /// A JSON text that is not an object.
    NotAnObject,
    /// An object, and which of the two fields it has at the top level.
    Object {
        /// A top-level `type` key exists.
        has_type: bool,
        /// A top-level `timestamp` key exists.
        has_timestamp: bool,
        /// At least one key exists.
        non_empty: bool,
    },
}

/// The reference reading of `payload`, by serde_json. Values are skipped syntactically (serde_json
/// does that without a depth limit and without converting numbers, as JSON itself does not bound
/// them); keys are compared after unescaping.
pub fn json_shape(payload: &[u8]) -> Json {
    struct Shape;

    impl<'de> Visitor<'de> for Shape {
        type Value = Json;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
            let (mut has_type, mut has_timestamp, mut non_empty) = (false, false, false);
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                non_empty = true;
                has_type |= key == "type";
                has_timestamp |= key == "timestamp";
                map.next_value::<IgnoredAny>()?;
            }
            Ok(Json::Object {
                has_type,
                has_timestamp,
                non_empty,
            })
        }
    }

    struct Top(Json);

    impl<'de> Deserialize<'de> for Top {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Shape).map(Top)
        }
    }

    let Ok(text) = std::str::from_utf8(payload) else {
        return Json::Invalid;
    };
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.is_empty() {
        Json::Empty
    } else if !trimmed.starts_with('{') {
        match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Json::NotAnObject,
            Err(_) => Json::Invalid,
        }
    } else {
        match serde_json::from_str::<Top>(text) {
            Ok(Top(shape)) => shape,
            Err(_) => Json::Invalid,
        }
    }
}

/// The exact payload normalisation must produce for an object `payload` of this shape.
pub fn expected_payload(
    payload: &[u8],
    has_type: bool,
    has_timestamp: bool,
    non_empty: bool,
) -> Vec<u8> {
    if has_type && has_timestamp {
        return payload.to_vec();
    }
    let brace = payload.iter().position(|&b| b == b'{').expect("an object");
    let mut added = Vec::new();
    if !has_type {
        added.extend_from_slice(br#""type":"notification""#);
    }
    if !has_timestamp {
        if !has_type {
            added.push(b',');
        }
        added.extend_from_slice(format!(r#""timestamp":{NOW_MS}"#).as_bytes());
    }
    if non_empty {
        added.push(b',');
    }
    [&payload[..=brace], &added, &payload[brace + 1..]].concat()
}

/// Splits a server text frame into its payload, checking the header is a final, unmasked text
/// frame with the minimal length encoding.
pub fn server_text_payload(frame: &[u8]) -> &[u8] {
    assert_eq!(frame[0], 0x81, "final text frame");
    let (len, header) = match frame[1] {
        n @ 0..=125 => (usize::from(n), 2),
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => {
            let len = u64::from_be_bytes(frame[2..10].try_into().unwrap());
            (usize::try_from(len).unwrap(), 10)
        }
        _ => panic!("a server frame is never masked"),
    };
    let minimal = match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    assert_eq!(header, minimal, "minimal length encoding");
    assert_eq!(
        frame.len(),
        header + len,
        "length field matches the payload"
    );
    &frame[header..]
}

/// Payload normalisation: every input is either refused with one of the counted labels, or
/// becomes a text frame whose payload is valid JSON holding the original fields plus `type` and
/// `timestamp`, byte-identical when both were present; and it refuses exactly what serde_json
/// does not read as a JSON object.
pub fn payload(data: &[u8]) {
    assert_payload_properties(data, 1 << 16);
}

/// The properties of [`payload`], with the size limit `max`.
pub fn assert_payload_properties(data: &[u8], max: usize) {
    let result = normalize_to_frame(data, NOW_MS, max);
    let shape = json_shape(data);
    match (&result, shape) {
        (Err(e), _) if data.len() > max => assert_eq!(e.kind(), "too_large"),
        (Err(e), Json::Empty) => assert_eq!(e.kind(), "empty"),
        (Err(e), Json::Invalid) => {
            assert_eq!(e.kind(), "not_json", "{:?}", String::from_utf8_lossy(data))
        }
        (Err(e), Json::NotAnObject) => assert_eq!(
            e.kind(),
            "not_an_object",
            "{:?}",
            String::from_utf8_lossy(data)
        ),
        (
            Ok(frame),
            Json::Object {
                has_type,
                has_timestamp,
                non_empty,
            },
        ) if data.len() <= max => {
            let out = server_text_payload(frame);
            assert_eq!(
                out,
                &expected_payload(data, has_type, has_timestamp, non_empty)[..],
                "input {:?}",
                String::from_utf8_lossy(data)
            );
            assert_eq!(
                json_shape(out),
                Json::Object {
                    has_type: true,
                    has_timestamp: true,
                    non_empty: true
                }
            );
            // Where serde_json can hold every value, the fields are the original ones plus the two.
            if let (Ok(serde_json::Value::Object(before)), Ok(serde_json::Value::Object(after))) = (
                serde_json::from_slice(data),
                serde_json::from_slice::<serde_json::Value>(out),
            ) {
                for (key, value) in &before {
                    assert_eq!(after.get(key), Some(value), "field {key}");
                }
                if !has_type {
                    assert_eq!(after["type"], "notification");
                }
                if !has_timestamp {
                    assert_eq!(after["timestamp"], NOW_MS);
                }
                assert_eq!(
                    after.len(),
                    before.len() + usize::from(!has_type) + usize::from(!has_timestamp)
                );
            }
        }
        (result, shape) => panic!(
            "payload {:?} (limit {max}): normaliser {result:?}, serde_json {shape:?}",
            String::from_utf8_lossy(data)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// JWT

/// The shared secret of the HS256 verifier the checks use.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A P-256 public key, for an ES256 verifier (test key; protects nothing).
pub const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtoLI3bkpqtEx3NkZNiwjob6hAqQ7
gnsJA4r1xrGDVw2MOyt6lNQvkooCo5NTSPHyMSNnB+fJFAEvFiGuvnBgBQ==
-----END PUBLIC KEY-----
";

/// A 2048-bit RSA public key, for an RS256 verifier (test key; protects nothing).
pub const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtADSffQNYt2z0g6m0++1
9mtWU3TYHMIrQWI+pinuZyxdQ/CEruPwuaTW65ous4ngOrc1bW9LhgUAs5jSHYeH
HGQCzAQ1AQ0vPpEZ3emF+nfLbSuVPUse2jKjsHT85OZYoLvk79DB1kvV0ywR+rPA
JnFitkgj4Ncx0Eo9HOYdce6qCW0OLrZkPCYI8+bqkkUKHacQ3CM1CX0dM/Aon11J
kkG/DxIzQI+K5jB2vCrBz9YFEKrnP+Hyugmn4YmdaxYz1dTNYp8jbwSKKbEbdEMQ
Lx7XZzjbVJTeRkJ5wvUycVrB13MKrLH3TIEwXd+KI1kEPWsOu3RVupdSQRRzxpl2
7wIDAQAB
-----END PUBLIC KEY-----
";

/// A verifier for `algorithm` with the keys above, `exp` required, no leeway; built once.
pub fn authenticator(algorithm: Algorithm) -> &'static Authenticator {
    static CACHE: OnceLock<Vec<(Algorithm, Authenticator)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        Algorithm::ALL
            .into_iter()
            .map(|a| (a, build_authenticator(a)))
            .collect()
    });
    &all.iter()
        .find(|(a, _)| *a == algorithm)
        .expect("every algorithm")
        .1
}

fn build_authenticator(algorithm: Algorithm) -> Authenticator {
    let key = match algorithm {
        Algorithm::HS256 => KeySource::Secret(SECRET.to_vec()),
        Algorithm::HS384 => KeySource::Secret([SECRET; 2].concat()),
        Algorithm::HS512 => KeySource::Secret([SECRET; 2].concat()),
        Algorithm::RS256 => KeySource::PublicKeyPem(RSA_PUBLIC.into()),
        Algorithm::ES256 => KeySource::PublicKeyPem(EC_PUBLIC.into()),
    };
    Authenticator::new(&AuthConfig {
        algorithm,
        key,
        require_exp: true,
        leeway_seconds: 0,
    })
    .expect("valid test configuration")
}

/// `header.claims.signature` with the HS256 signature of [`SECRET`] over the first two parts.
pub fn sign_hs256(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HMAC signs anything");
    format!("{message}.{signature}")
}

/// The `alg` a token's first part declares, if it is base64url of a JSON object whose `alg` is a
/// string.
pub fn declared_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    match serde_json::from_slice::<serde_json::Value>(&json).ok()? {
        serde_json::Value::Object(map) => map.get("alg")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Token verification for every algorithm: never panics; a token is accepted only if its header
/// names the configured algorithm, and then yields a valid user id; a header naming another
/// algorithm is always refused.
pub fn assert_token_properties(auth: &Authenticator, algorithm: Algorithm, token: &str) {
    let result = auth.verify(token);
    let declared = declared_alg(token);
    if let Some(alg) = &declared
        && alg != algorithm.as_str()
    {
        assert!(
            result.is_err(),
            "accepted a token declaring {alg:?} under {algorithm}"
        );
    }
    match result {
        Ok(user) => {
            assert_eq!(
                declared.as_deref(),
                Some(algorithm.as_str()),
                "token {token:?}"
            );
            assert!(!user.is_empty() && user.len() <= 256);
            assert!(!user.chars().any(|c| c.is_whitespace() || c.is_control()));
        }
        Err(AuthError::Missing) => assert!(token.is_empty()),
        Err(e) => assert!(
            !e.to_string().contains(token) || token.len() < 8,
            "error leaks the token"
        ),
    }
}

/// JWT verification. `mode` (the first byte) picks how the rest becomes a token:
/// - 0: the rest, as (lossy) UTF-8, verified under every algorithm;
/// - 1: `header 0xFF claims`, base64url-encoded and validly signed with HS256, verified by HS256
///   (reaches the header and claims parsing past the signature check);
/// - 2: `header 0xFF claims 0xFF signature`, base64url-encoded as is, verified under every
///   algorithm.
pub fn jwt(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let (a, b, c) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    match mode % 3 {
        1 => {
            let token = sign_hs256(a, b.unwrap_or_default());
            assert_token_properties(authenticator(Algorithm::HS256), Algorithm::HS256, &token);
        }
        m => {
            let token = if m == 0 {
                String::from_utf8_lossy(rest).into_owned()
            } else {
                let encode = |p: Option<&[u8]>| URL_SAFE_NO_PAD.encode(p.unwrap_or_default());
                format!("{}.{}.{}", encode(Some(a)), encode(b), encode(c))
            };
            for algorithm in Algorithm::ALL {
                assert_token_properties(authenticator(algorithm), algorithm, &token);
            }
        }
    }
}
