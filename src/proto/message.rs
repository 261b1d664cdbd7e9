//! The gateway's client protocol: what a client text message means, and the JSON frames the
//! gateway sends on its own behalf (connected, pong, error).
//!
//! Clients send `{"type":"ping"}` (any JSON whitespace, extra fields ignored), which the gateway
//! answers with `{"type":"pong","timestamp":<ms>}`, and `{"type":"refresh","token":"<JWT>"}`,
//! which extends the connection's token (answered with [`refreshed_frame`] or an error). The `type` value is
//! matched case-sensitively: `"PING"` is an unknown type. Anything else is classified as
//! [`ClientMessage::Unsupported`] with a reason label (see [`reason`]) that the connection task
//! reports with [`error_frame`].
//!
//! Parsing uses simd-json's tape API with per-thread reused buffers, so classifying a message
//! allocates nothing in steady state. Output frames are built in one exact-size allocation.

use std::cell::RefCell;

use bytes::Bytes;
use simd_json::{Buffers, Tape, prelude::ValueAsScalar};

use super::{
    frame::{text_header_len, write_text_header},
    payload::{push_u64, u64_len},
};

/// Reason labels of [`ClientMessage::Unsupported`], also sent as `"error"` by [`error_frame`].
pub mod reason {
    /// The text is not valid JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// The JSON is not an object.
    pub const NOT_AN_OBJECT: &str = "not_an_object";
    /// The object has no `type` field.
    pub const MISSING_TYPE: &str = "missing_type";
    /// The `type` field is not a known string (matching is case-sensitive).
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// The client sent a binary message; the protocol is text only.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// A `refresh` message without a string `token`.
    pub const MISSING_TOKEN: &str = "missing_token";
    /// A `refresh` token that does not verify (bad signature, expired, wrong algorithm...).
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// A `refresh` token for another user than the connection's.
    pub const WRONG_USER: &str = "wrong_user";
}

/// What one complete client text message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"ping"}`: answer with [`pong_frame`].
    Ping,
    /// `{"type":"refresh","token":"<JWT>"}`: verify the token and extend the connection.
    Refresh(Box<str>),
    /// Anything else, with a reason label from [`reason`].
    Unsupported(&'static str),
}

/// Per-thread simd-json state reused across calls.
struct Parser {
    /// simd-json's stage 1/2 buffers (they hold the padded copy of the input).
    buffers: Buffers,
    /// The tape, emptied after each use (hence `'static`).
    tape: Tape<'static>,
}

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(Parser {
        buffers: Buffers::default(),
        tape: Tape(Vec::new()),
    });
}

/// Classifies one complete client text message. `text` is a mutable copy simd-json may scribble
/// on (it unescapes strings in place).
///
/// `{"type":"ping"}` with any JSON whitespace and any extra fields is [`ClientMessage::Ping`];
/// the match on `"ping"` is case-sensitive. A non-string `type` is `unknown_type`. Numbers
/// outside the i64/u64/f64 range, which simd-json rejects, make the message `invalid_json`
/// (no client of this protocol sends them; `text` may already be rewritten, so there is no
/// second parse).
#[must_use]
pub fn classify_text(text: &mut [u8]) -> ClientMessage {
    PARSER.with_borrow_mut(|parser| {
        let mut tape = std::mem::replace(&mut parser.tape, Tape(Vec::new())).reset();
        let message = match simd_json::fill_tape(text, &mut parser.buffers, &mut tape) {
            Err(_) => ClientMessage::Unsupported(reason::INVALID_JSON),
            Ok(()) => match tape.as_value().as_object() {
                None => ClientMessage::Unsupported(reason::NOT_AN_OBJECT),
                Some(object) => match object.get("type") {
                    None => ClientMessage::Unsupported(reason::MISSING_TYPE),
                    Some(kind) if kind.as_str() == Some("ping") => ClientMessage::Ping,
                    Some(kind) if kind.as_str() == Some("refresh") => {
                        match object
                            .get("token")
                            .map(|t| t.as_str().map(Box::<str>::from))
                        {
                            Some(Some(token)) => ClientMessage::Refresh(token),
                            _ => ClientMessage::Unsupported(reason::MISSING_TOKEN),
                        }
                    }
                    Some(_) => ClientMessage::Unsupported(reason::UNKNOWN_TYPE),
                },
            },
        };
        parser.tape = tape.reset();
        message
    })
}

/// The text frame `{"type":"pong","timestamp":<now_ms>}`.
#[must_use]
pub fn pong_frame(now_ms: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"pong","timestamp":"#;
    text_frame(HEAD.len() + u64_len(now_ms) + 1, |out| {
        out.extend_from_slice(HEAD);
        push_u64(out, now_ms);
        out.push(b'}');
    })
}

/// The text frame `{"type":"refreshed","expiresAt":<unix seconds or null>,"timestamp":<now_ms>}`:
/// the connection now lives until `expires_at` (no expiry: `null`).
#[must_use]
pub fn refreshed_frame(expires_at: Option<u64>, now_ms: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"refreshed","expiresAt":"#;
    const MID: &[u8] = br#","timestamp":"#;
    let exp_len = expires_at.map_or(4, u64_len);
    text_frame(
        HEAD.len() + exp_len + MID.len() + u64_len(now_ms) + 1,
        |out| {
            out.extend_from_slice(HEAD);
            match expires_at {
                Some(exp) => push_u64(out, exp),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(MID);
            push_u64(out, now_ms);
            out.push(b'}');
        },
    )
}

/// The text frame `{"type":"connected","userId":"<user_id>","timestamp":<now_ms>}`, with the
/// user id JSON-escaped.
#[must_use]
pub fn connected_frame(user_id: &str, now_ms: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"connected","userId":""#;
    const MID: &[u8] = br#"","timestamp":"#;
    let len = HEAD.len() + escaped_len(user_id) + MID.len() + u64_len(now_ms) + 1;
    text_frame(len, |out| {
        out.extend_from_slice(HEAD);
        push_escaped(out, user_id);
        out.extend_from_slice(MID);
        push_u64(out, now_ms);
        out.push(b'}');
    })
}

/// The text frame
/// `{"type":"error","error":"<reason>","message":"<sentence>","timestamp":<now_ms>}`, where
/// the sentence explains `reason` (one of [`reason`]; others get a generic sentence).
#[must_use]
pub fn error_frame(reason: &str, now_ms: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"error","error":""#;
    const MID: &[u8] = br#"","message":""#;
    const TAIL: &[u8] = br#"","timestamp":"#;
    let message = human_message(reason);
    let len = HEAD.len()
        + escaped_len(reason)
        + MID.len()
        + escaped_len(message)
        + TAIL.len()
        + u64_len(now_ms)
        + 1;
    text_frame(len, |out| {
        out.extend_from_slice(HEAD);
        push_escaped(out, reason);
        out.extend_from_slice(MID);
        push_escaped(out, message);
        out.extend_from_slice(TAIL);
        push_u64(out, now_ms);
        out.push(b'}');
    })
}

/// The sentence sent with an error `reason`.
fn human_message(reason: &str) -> &'static str {
    match reason {
        reason::INVALID_JSON => "Message is not valid JSON.",
        reason::NOT_AN_OBJECT => "Message must be a JSON object.",
        reason::MISSING_TYPE => "Message must have a \"type\" field.",
        reason::UNKNOWN_TYPE => "Unknown message type; \"ping\" and \"refresh\" are supported.",
        reason::BINARY_NOT_SUPPORTED => "Binary messages are not supported; send JSON text.",
        reason::MISSING_TOKEN => "A refresh message needs a \"token\" string.",
        reason::INVALID_TOKEN => {
            "The refresh token could not be verified; the old one still applies."
        }
        reason::WRONG_USER => "The refresh token is for another user; the old one still applies.",
        _ => "Message not supported.",
    }
}

/// Builds a text frame whose payload of exactly `len` bytes is written by `body`.
fn text_frame(len: usize, body: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(text_header_len(len) + len);
    write_text_header(len, &mut out);
    body(&mut out);
    debug_assert_eq!(
        out.len(),
        out.capacity(),
        "payload length precomputed wrongly"
    );
    Bytes::from(out)
}

/// Length of `s` once escaped as the inside of a JSON string.
pub(crate) fn escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0C => 2,
            0..=0x1F => 6,
            _ => 1,
        })
        .sum()
}

/// Appends `s` escaped as the inside of a JSON string (quotes, backslashes and control
/// characters; other characters verbatim).
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0C => b'f',
            0..=0x1F => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short == 0 {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)]]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::proto::frame::test_util::decode_text;

    fn classify(text: &str) -> ClientMessage {
        classify_text(&mut text.as_bytes().to_vec())
    }

    fn unsupported(reason: &'static str) -> ClientMessage {
        ClientMessage::Unsupported(reason)
    }

    /// Decodes a frame through the decoder and parses its payload with serde_json.
    fn frame_json(frame: &[u8]) -> Value {
        serde_json::from_slice(&decode_text(frame)).expect("valid JSON")
    }

    #[test]
    fn ping_with_any_whitespace() {
        for text in [
            r#"{"type":"ping"}"#,
            r#"{"type": "ping"}"#,
            " {\n\t\"type\" :\r\n\"ping\" } \n",
        ] {
            assert_eq!(classify(text), ClientMessage::Ping, "{text:?}");
        }
    }

    #[test]
    fn ping_with_extra_fields() {
        assert_eq!(
            classify(r#"{"id":1,"type":"ping","data":{"type":"x"},"n":[1,2]}"#),
            ClientMessage::Ping
        );
        // An escaped spelling of "ping" is still "ping" once unescaped.
        assert_eq!(classify(r#"{"type":"p\u0069ng"}"#), ClientMessage::Ping);
    }

    #[test]
    fn type_is_case_sensitive() {
        assert_eq!(
            classify(r#"{"type":"PING"}"#),
            unsupported(reason::UNKNOWN_TYPE)
        );
        assert_eq!(
            classify(r#"{"type":"Ping"}"#),
            unsupported(reason::UNKNOWN_TYPE)
        );
        assert_eq!(
            classify(r#"{"TYPE":"ping"}"#),
            unsupported(reason::MISSING_TYPE)
        );
    }

    #[test]
    fn unknown_and_non_string_types() {
        for text in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":""}"#,
            r#"{"type":1}"#,
            r#"{"type":null}"#,
            r#"{"type":["ping"]}"#,
            r#"{"type":{"ping":true}}"#,
        ] {
            assert_eq!(classify(text), unsupported(reason::UNKNOWN_TYPE), "{text}");
        }
    }

    #[test]
    fn missing_type() {
        assert_eq!(classify("{}"), unsupported(reason::MISSING_TYPE));
        assert_eq!(
            classify(r#"{"data":{"type":"ping"}}"#),
            unsupported(reason::MISSING_TYPE),
            "nested type does not count"
        );
    }

    #[test]
    fn not_json() {
        for text in [
            "ping",
            "",
            "{",
            r#"{"type":"ping""#,
            r#"{"type":"ping"} x"#,
            "{type:1}",
        ] {
            assert_eq!(
                classify(text),
                unsupported(reason::INVALID_JSON),
                "{text:?}"
            );
        }
    }

    #[test]
    fn not_an_object() {
        for text in [
            r#"["ping"]"#,
            r#""ping""#,
            "1",
            "null",
            "[]",
            r#"[{"type":"ping"}]"#,
        ] {
            assert_eq!(classify(text), unsupported(reason::NOT_AN_OBJECT), "{text}");
        }
    }

    #[test]
    fn nested_and_huge_numbers() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(classify(&deep), unsupported(reason::NOT_AN_OBJECT));
        let nested = format!(
            r#"{{"type":"ping","x":{}1{}}}"#,
            "[".repeat(50),
            "]".repeat(50)
        );
        assert_eq!(classify(&nested), ClientMessage::Ping);
        let big = r#"{"type":"ping","n":18446744073709551615,"i":-9223372036854775808,"f":1e308}"#;
        assert_eq!(classify(big), ClientMessage::Ping);
        // Beyond 64 bits / f64 range: simd-json rejects, documented as invalid_json.
        for huge in [
            r#"{"type":"ping","n":123456789012345678901234567890}"#,
            r#"{"type":"ping","f":1e999}"#,
        ] {
            assert_eq!(classify(huge), unsupported(reason::INVALID_JSON), "{huge}");
        }
    }

    #[test]
    fn pong_frame_json() {
        assert_eq!(
            frame_json(&pong_frame(1_700_000_000_123)),
            json!({"type": "pong", "timestamp": 1_700_000_000_123u64})
        );
        assert_eq!(&pong_frame(0)[2..], br#"{"type":"pong","timestamp":0}"#);
        assert_eq!(
            frame_json(&pong_frame(u64::MAX)),
            json!({"type": "pong", "timestamp": u64::MAX})
        );
    }

    #[test]
    fn connected_frame_json() {
        assert_eq!(
            &connected_frame("u1", 5)[2..],
            br#"{"type":"connected","userId":"u1","timestamp":5}"#
        );
        for user in [
            "alice",
            "qu\"ote\\back",
            "ctl\n\t\r\u{8}\u{c}\u{1}\u{1f}",
            "ünï ☃ 😀",
        ] {
            assert_eq!(
                frame_json(&connected_frame(user, 42)),
                json!({"type": "connected", "userId": user, "timestamp": 42}),
                "{user:?}"
            );
        }
        let long = "x".repeat(300);
        assert_eq!(
            frame_json(&connected_frame(&long, 1))["userId"],
            long.as_str()
        );
    }

    #[test]
    fn error_frame_json() {
        for (reason, message) in [
            (reason::INVALID_JSON, "Message is not valid JSON."),
            (reason::NOT_AN_OBJECT, "Message must be a JSON object."),
            (reason::MISSING_TYPE, "Message must have a \"type\" field."),
            (
                reason::UNKNOWN_TYPE,
                "Unknown message type; \"ping\" and \"refresh\" are supported.",
            ),
            (
                reason::BINARY_NOT_SUPPORTED,
                "Binary messages are not supported; send JSON text.",
            ),
            ("something \"else\"", "Message not supported."),
        ] {
            assert_eq!(
                frame_json(&error_frame(reason, 9)),
                json!({"type": "error", "error": reason, "message": message, "timestamp": 9})
            );
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        let all: String = (0u8..0x80).map(char::from).chain("é☃😀".chars()).collect();
        let mut out = Vec::new();
        push_escaped(&mut out, &all);
        assert_eq!(out.len(), escaped_len(&all));
        let quoted = format!("\"{}\"", String::from_utf8(out).unwrap());
        assert_eq!(serde_json::from_str::<String>(&quoted).unwrap(), all);
        assert_eq!(quoted, serde_json::to_string(&all).unwrap());
    }

    #[test]
    fn refresh_carries_its_token() {
        assert_eq!(
            classify(r#"{"type":"refresh","token":"a.b.c"}"#),
            ClientMessage::Refresh("a.b.c".into())
        );
        assert_eq!(
            classify(r#"{"type":"refresh"}"#),
            ClientMessage::Unsupported(reason::MISSING_TOKEN)
        );
        assert_eq!(
            classify(r#"{"type":"refresh","token":7}"#),
            ClientMessage::Unsupported(reason::MISSING_TOKEN)
        );
    }

    #[test]
    fn refreshed_frame_is_json() {
        for (exp, expected) in [
            (Some(1_700_000_000u64), json!(1_700_000_000u64)),
            (None, Value::Null),
        ] {
            let frame = refreshed_frame(exp, 1_234);
            let v: Value = serde_json::from_slice(&decode_text(&frame)).unwrap();
            assert_eq!(
                v,
                json!({"type": "refreshed", "expiresAt": expected, "timestamp": 1_234})
            );
        }
    }
}
