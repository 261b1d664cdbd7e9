//! Notification payload validation and normalisation, with the rules of the Java gateway.
//!
//! A payload published for a user must be a JSON object. When it lacks a top-level `"type"` it
//! gets `"type":"notification"`; when it lacks a top-level `"timestamp"` it gets the current time
//! in milliseconds. Presence is what counts, not the value (`"type":null` is kept as is), and
//! keys of nested objects do not count. Added fields go right after the opening `{`; every other
//! byte is kept verbatim, so a payload that already has both fields goes out byte for byte.
//!
//! The result is the finished server->client text frame, built in one exact-size allocation so
//! that fan-out to many connections only clones a [`Bytes`] handle.
//!
//! Validation uses simd-json on a thread-local scratch copy (with the padding simd-json wants)
//! and a reused tape, so a steady stream of payloads allocates nothing but the output frame.
//!
//! With history (issue 10) the same single parse also reports a recorded notification's place
//! in its user's history ([`normalize_marked`]), and the publish API refuses payloads that
//! already carry the `"offset"` or `"epoch"` the gateway sets ([`normalize_for_history`]).

use std::{borrow::Cow, cell::RefCell};

use bytes::Bytes;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Tape, prelude::ValueAsScalar};
use thiserror::Error;

use super::{
    frame::{text_header_len, write_text_header},
    history::{Mark, epoch_hash},
};

/// Why a payload was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload is empty or only whitespace.
    #[error("payload is empty")]
    Empty,
    /// The payload is longer than the configured maximum.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The payload is not valid JSON.
    #[error("payload is not valid JSON")]
    NotJson,
    /// The payload is valid JSON but not an object.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// The payload already has a top-level `"offset"` or `"epoch"`, which the gateway sets on
    /// every recorded notification.
    #[error("payload already has \"offset\" or \"epoch\", which the gateway sets")]
    ReservedField,
}

impl PayloadError {
    /// Short static label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::NotJson => "not_json",
            Self::NotAnObject => "not_an_object",
            Self::ReservedField => "reserved_field",
        }
    }
}

/// Per-thread parser state reused across calls.
struct Parser {
    /// Padded copy of the payload; simd-json rewrites strings in place, so it needs its own.
    scratch: Vec<u8>,
    /// simd-json's stage 1/2 buffers.
    buffers: Buffers,
    /// The tape, emptied after each use (hence `'static`).
    tape: Tape<'static>,
}

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(Parser {
        scratch: Vec::new(),
        buffers: Buffers::default(),
        tape: Tape(Vec::new()),
    });
}

/// What validation found about a payload object.
#[derive(Default)]
struct Shape {
    /// A top-level `"type"` key exists.
    has_type: bool,
    /// A top-level `"timestamp"` key exists.
    has_timestamp: bool,
    /// The object has at least one key.
    non_empty: bool,
    /// Looked for only when asked (history on): a top-level `"offset"` or `"epoch"` exists.
    has_reserved: bool,
    /// Looked for only when asked: an unsigned integer `"offset"` and a string `"epoch"`.
    mark: Option<Mark>,
}

/// Parses `payload` and reports its top-level shape; `history` also looks for the two fields
/// of a recorded notification.
fn inspect(payload: &[u8], history: bool) -> Result<Shape, PayloadError> {
    PARSER.with_borrow_mut(|parser| {
        let Parser {
            scratch,
            buffers,
            tape,
        } = parser;
        scratch.clear();
        scratch.extend_from_slice(payload);
        scratch.resize(payload.len() + INPUT_PADDING, b' ');
        let mut local = std::mem::replace(tape, Tape(Vec::new())).reset();
        let result = match simd_json::fill_tape_padded(scratch, payload.len(), buffers, &mut local)
        {
            Ok(()) => local
                .as_value()
                .as_object()
                .map(|object| {
                    let mut shape = Shape {
                        has_type: object.get("type").is_some(),
                        has_timestamp: object.get("timestamp").is_some(),
                        non_empty: !object.is_empty(),
                        ..Shape::default()
                    };
                    if history {
                        let (offset, epoch) = (object.get("offset"), object.get("epoch"));
                        shape.has_reserved = offset.is_some() || epoch.is_some();
                        let epoch =
                            epoch.and_then(|e| e.as_str().map(|s| epoch_hash(s.as_bytes())));
                        shape.mark = offset
                            .and_then(|o| o.as_u64())
                            .zip(epoch)
                            .map(|(offset, epoch)| Mark { offset, epoch });
                    }
                    shape
                })
                .ok_or(PayloadError::NotAnObject),
            // Numbers outside the i64/u64/f64 range (which JSON allows): rare, take the slow path.
            Err(e) if matches!(e.error(), ErrorType::InvalidNumber) => inspect_slow(payload),
            Err(_) => Err(PayloadError::NotJson),
        };
        *tape = local.reset();
        result
    })
}

/// Slow-path [`inspect`] with `serde_json`, which accepts any syntactically valid number (simd-json
/// rejects integers beyond 64 bits, as Jackson in the Java gateway does not). Values are skipped,
/// not materialised, so no number is ever converted.
fn inspect_slow(payload: &[u8]) -> Result<Shape, PayloadError> {
    /// Records the top-level keys of an object.
    struct ShapeVisitor;

    impl<'de> Visitor<'de> for ShapeVisitor {
        type Value = Shape;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut shape = Shape::default();
            let (mut offset, mut epoch) = (None, None);
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                shape.non_empty = true;
                shape.has_type |= key == "type";
                shape.has_timestamp |= key == "timestamp";
                match &*key {
                    "offset" => offset = Some(map.next_value::<Scalar>()?),
                    "epoch" => epoch = Some(map.next_value::<Scalar>()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            shape.has_reserved = offset.is_some() || epoch.is_some();
            if let (Some(Scalar::U64(offset)), Some(Scalar::Str(epoch))) = (offset, epoch) {
                shape.mark = Some(Mark { offset, epoch });
            }
            Ok(shape)
        }
    }

    /// A field value, as far as a [`Mark`] cares: an unsigned integer, a string (hashed), or
    /// anything else (skipped without materialising it).
    enum Scalar {
        U64(u64),
        Str(u64),
        Other,
    }

    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ScalarVisitor;
            impl<'de> Visitor<'de> for ScalarVisitor {
                type Value = Scalar;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar::U64(v))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_unit<E>(self) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar::Str(epoch_hash(v.as_bytes())))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Scalar, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Scalar::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Scalar::Other)
                }
            }
            deserializer.deserialize_any(ScalarVisitor)
        }
    }

    /// Wrapper so the visitor can be driven by `serde_json::from_slice` (which checks for
    /// trailing characters).
    struct Top(Shape);

    impl<'de> Deserialize<'de> for Top {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(ShapeVisitor).map(Top)
        }
    }

    // Anything but an object is only checked for syntax: a top-level 1e999 is valid JSON that is
    // not an object, where converting it (as `deserialize_any` would) fails as out of range.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return match serde_json::from_slice::<IgnoredAny>(payload) {
            Ok(_) => Err(PayloadError::NotAnObject),
            Err(_) => Err(PayloadError::NotJson),
        };
    }
    serde_json::from_slice::<Top>(payload)
        .map(|Top(shape)| shape)
        .map_err(|_| PayloadError::NotJson)
}

/// Validates that `payload` is a JSON object of at most `max_bytes` bytes and adds
/// `"type":"notification"` and/or `"timestamp":<now_ms>` when missing.
///
/// When both are present the payload bytes are kept unchanged (byte for byte, no reformatting).
/// When fields are added they are inserted right after the opening `{` (after any leading
/// whitespace), keeping the rest verbatim; the frame may then exceed `max_bytes` by the added
/// fields (at most 55 bytes).
///
/// Returns the finished server->client text frame (header and payload in one allocation).
///
/// # Errors
///
/// [`PayloadError`] when the payload is too large, empty, not JSON or not an object.
pub fn normalize_to_frame(
    payload: &[u8],
    now_ms: u64,
    max_bytes: usize,
) -> Result<Bytes, PayloadError> {
    let (shape, brace) = check(payload, max_bytes, false)?;
    Ok(frame(payload, brace, &shape, now_ms))
}

/// [`normalize_to_frame`] for a gateway with history: also returns where the notification sits
/// in its user's history when it carries an unsigned integer `"offset"` and a string `"epoch"`
/// at the top level (everything recorded does; a plain `PUBLISH` does not). Same parse, same
/// frame.
///
/// # Errors
///
/// As [`normalize_to_frame`].
pub fn normalize_marked(
    payload: &[u8],
    now_ms: u64,
    max_bytes: usize,
) -> Result<(Bytes, Option<Mark>), PayloadError> {
    let (shape, brace) = check(payload, max_bytes, true)?;
    Ok((frame(payload, brace, &shape, now_ms), shape.mark))
}

/// The publish API's check with history on: the payload normalised as in
/// [`normalize_to_frame`], returned as JSON text (the offset and epoch are spliced in later,
/// per user), and refused when it already has either field the gateway sets.
///
/// # Errors
///
/// As [`normalize_to_frame`], plus [`PayloadError::ReservedField`].
pub fn normalize_for_history(
    payload: &[u8],
    now_ms: u64,
    max_bytes: usize,
) -> Result<Vec<u8>, PayloadError> {
    let (shape, brace) = check(payload, max_bytes, true)?;
    if shape.has_reserved {
        return Err(PayloadError::ReservedField);
    }
    let len = payload.len() + added_len(&shape, now_ms);
    let mut out = Vec::with_capacity(len);
    write_normalized(payload, brace, &shape, now_ms, &mut out);
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// Size, emptiness and JSON checks; the shape and the position of the opening `{`.
fn check(payload: &[u8], max_bytes: usize, history: bool) -> Result<(Shape, usize), PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::TooLarge {
            len: payload.len(),
            max: max_bytes,
        });
    }
    let Some(brace) = payload.iter().position(|b| !is_json_whitespace(*b)) else {
        return Err(PayloadError::Empty);
    };
    Ok((inspect(payload, history)?, brace))
}

/// Bytes the normalisation adds.
fn added_len(shape: &Shape, now_ms: u64) -> usize {
    let mut added = 0;
    if !shape.has_type {
        added += TYPE_FIELD.len();
    }
    if !shape.has_timestamp {
        added += TIMESTAMP_KEY.len() + u64_len(now_ms);
    }
    if !shape.has_type && !shape.has_timestamp {
        added += 1; // the comma between the two
    }
    if added > 0 && shape.non_empty {
        added += 1; // the comma before the existing fields
    }
    added
}

/// The finished text frame of a checked payload, in one exact-size allocation.
fn frame(payload: &[u8], brace: usize, shape: &Shape, now_ms: u64) -> Bytes {
    let body_len = payload.len() + added_len(shape, now_ms);
    let mut out = Vec::with_capacity(text_header_len(body_len) + body_len);
    write_text_header(body_len, &mut out);
    write_normalized(payload, brace, shape, now_ms, &mut out);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

/// Appends the normalised payload: the missing fields right after the `{` at `brace`.
fn write_normalized(payload: &[u8], brace: usize, shape: &Shape, now_ms: u64, out: &mut Vec<u8>) {
    if shape.has_type && shape.has_timestamp {
        out.extend_from_slice(payload);
        return;
    }
    // A valid object starts with `{` after whitespace.
    let (head, tail) = payload.split_at(brace + 1);
    out.extend_from_slice(head);
    if !shape.has_type {
        out.extend_from_slice(TYPE_FIELD);
        if !shape.has_timestamp {
            out.push(b',');
        }
    }
    if !shape.has_timestamp {
        out.extend_from_slice(TIMESTAMP_KEY);
        push_u64(out, now_ms);
    }
    if shape.non_empty {
        out.push(b',');
    }
    out.extend_from_slice(tail);
}

/// The field added when `"type"` is missing.
const TYPE_FIELD: &[u8] = br#""type":"notification""#;

/// The key (and colon) added when `"timestamp"` is missing.
const TIMESTAMP_KEY: &[u8] = br#""timestamp":"#;

/// JSON insignificant whitespace (RFC 8259).
fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Number of decimal digits of `n`.
pub(crate) fn u64_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::test_util::decode_text;

    const NOW: u64 = 1_700_000_000_123;
    const MAX: usize = 64 * 1024;

    /// Normalises and returns the payload part of the frame, checked through the decoder.
    fn norm(payload: &str) -> Result<String, PayloadError> {
        let frame = normalize_to_frame(payload.as_bytes(), NOW, MAX)?;
        Ok(String::from_utf8(decode_text(&frame)).unwrap())
    }

    #[test]
    fn passthrough_is_byte_for_byte() {
        for payload in [
            r#"{"type":"x","timestamp":1}"#,
            " \n\t{ \"timestamp\" : 5 ,\r\n \"type\" : null, \"n\": 1.50e3 }  \n",
            r#"{"timestamp":"later","z":[1,2,{"a":{}}],"type":{"deep":true}}"#,
            r#"{"typ\u0065":"escaped key","timestamp":0}"#,
        ] {
            assert_eq!(norm(payload).unwrap(), payload);
        }
    }

    #[test]
    fn inserts_both_fields() {
        assert_eq!(
            norm(r#"{"a":1}"#).unwrap(),
            r#"{"type":"notification","timestamp":1700000000123,"a":1}"#
        );
    }

    #[test]
    fn inserts_type_only() {
        assert_eq!(
            norm(r#"{"timestamp":7, "a":1}"#).unwrap(),
            r#"{"type":"notification","timestamp":7, "a":1}"#
        );
    }

    #[test]
    fn inserts_timestamp_only() {
        assert_eq!(
            norm(r#"{"type":"chat"}"#).unwrap(),
            r#"{"timestamp":1700000000123,"type":"chat"}"#
        );
    }

    #[test]
    fn empty_object() {
        assert_eq!(
            norm("{}").unwrap(),
            r#"{"type":"notification","timestamp":1700000000123}"#
        );
        assert_eq!(
            norm("{ \n }").unwrap(),
            "{\"type\":\"notification\",\"timestamp\":1700000000123 \n }"
        );
    }

    #[test]
    fn leading_and_trailing_whitespace_kept() {
        let out = norm(" \r\n\t{ \"a\" : 1 } \n").unwrap();
        assert_eq!(
            out,
            " \r\n\t{\"type\":\"notification\",\"timestamp\":1700000000123, \"a\" : 1 } \n"
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["type"], "notification");
        assert_eq!(value["timestamp"], NOW);
        assert_eq!(value["a"], 1);
    }

    #[test]
    fn nested_type_does_not_count() {
        let out = norm(r#"{"data":{"type":"inner","timestamp":1}}"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["type"], "notification");
        assert_eq!(value["timestamp"], NOW);
        assert_eq!(value["data"]["type"], "inner");
    }

    #[test]
    fn timestamp_zero_and_max() {
        let frame = normalize_to_frame(b"{}", 0, MAX).unwrap();
        assert_eq!(
            decode_text(&frame),
            br#"{"type":"notification","timestamp":0}"#
        );
        let frame = normalize_to_frame(b"{}", u64::MAX, MAX).unwrap();
        let expected = format!(r#"{{"type":"notification","timestamp":{}}}"#, u64::MAX);
        assert_eq!(decode_text(&frame), expected.as_bytes());
    }

    #[test]
    fn rejects_non_objects() {
        for payload in ["[1,2]", "[]", r#""text""#, "42", "-1.5e3", "true", "null"] {
            assert_eq!(norm(payload), Err(PayloadError::NotAnObject), "{payload}");
        }
    }

    #[test]
    fn rejects_invalid_json() {
        for payload in [
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{'a':1}",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "not json",
            "{\"a\":\"\u{1}\"}",
        ] {
            assert_eq!(norm(payload), Err(PayloadError::NotJson), "{payload:?}");
        }
        assert_eq!(
            normalize_to_frame(b"{\"a\":\"\xFF\"}", NOW, MAX),
            Err(PayloadError::NotJson)
        );
    }

    #[test]
    fn numbers_beyond_64_bits_are_valid_json() {
        // simd-json rejects these; the serde_json slow path accepts them, as Jackson does.
        let passthrough = r#"{"type":"t","timestamp":123456789012345678901234567890,"f":1e999}"#;
        assert_eq!(norm(passthrough).unwrap(), passthrough);
        assert_eq!(
            norm(r#"{"n":-123456789012345678901234567890, "m":{"type":1}}"#).unwrap(),
            r#"{"type":"notification","timestamp":1700000000123,"n":-123456789012345678901234567890, "m":{"type":1}}"#
        );
        // Escaped keys are compared unescaped, as on the fast path.
        assert_eq!(
            norm(r#"{"typ\u0065":1,"n":1e999}"#).unwrap(),
            r#"{"timestamp":1700000000123,"typ\u0065":1,"n":1e999}"#
        );
        assert_eq!(
            norm(" {\"n\":1e999 } ").unwrap(),
            r#" {"type":"notification","timestamp":1700000000123,"n":1e999 } "#
        );
        assert_eq!(
            norm("[18446744073709551616]"),
            Err(PayloadError::NotAnObject)
        );
        assert_eq!(norm("18446744073709551616"), Err(PayloadError::NotAnObject));
        // Found by the fuzzer: a number beyond f64 at the top level is valid JSON, so the label
        // is not_an_object, not not_json.
        assert_eq!(norm("1234567890e9990"), Err(PayloadError::NotAnObject));
        assert_eq!(norm(" -1e999 "), Err(PayloadError::NotAnObject));
        assert_eq!(norm("1e999 x"), Err(PayloadError::NotJson));
        // Malformed numbers are still rejected by the slow path.
        for payload in [
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":-}"#,
            r#"{"n":1e}"#,
            r#"{"n":1e999} x"#,
        ] {
            assert_eq!(norm(payload), Err(PayloadError::NotJson), "{payload}");
        }
    }

    #[test]
    fn rejects_empty() {
        for payload in ["", " ", "\n\t\r "] {
            assert_eq!(norm(payload), Err(PayloadError::Empty), "{payload:?}");
        }
    }

    #[test]
    fn rejects_too_large() {
        let payload = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            normalize_to_frame(payload.as_bytes(), NOW, 100),
            Err(PayloadError::TooLarge {
                len: payload.len(),
                max: 100
            })
        );
        assert!(normalize_to_frame(payload.as_bytes(), NOW, payload.len()).is_ok());
    }

    #[test]
    fn marks_come_from_the_same_parse() {
        let recorded = br#"{"offset":12,"epoch":"e-1","type":"t","timestamp":1}"#;
        let (frame, mark) = normalize_marked(recorded, NOW, MAX).unwrap();
        assert_eq!(
            decode_text(&frame),
            recorded,
            "passed through byte for byte"
        );
        assert_eq!(
            mark,
            Some(Mark {
                offset: 12,
                epoch: epoch_hash(b"e-1")
            })
        );
        // A plain PUBLISH, or fields of the wrong type, carry no mark.
        for payload in [
            &br#"{"a":1}"#[..],
            br#"{"offset":-1,"epoch":"e"}"#,
            br#"{"offset":1.5,"epoch":"e"}"#,
            br#"{"offset":1,"epoch":2}"#,
            br#"{"offset":1}"#,
            br#"{"data":{"offset":1,"epoch":"e"}}"#,
        ] {
            assert_eq!(normalize_marked(payload, NOW, MAX).unwrap().1, None);
        }
        // The slow path (numbers beyond 64 bits) finds them too.
        let big = br#"{"epoch":"e-1","n":1e999,"offset":12,"x":{"offset":3}}"#;
        assert_eq!(
            normalize_marked(big, NOW, MAX).unwrap().1,
            Some(Mark {
                offset: 12,
                epoch: epoch_hash(b"e-1")
            })
        );
    }

    #[test]
    fn history_refuses_payloads_with_the_reserved_fields() {
        assert_eq!(
            normalize_for_history(br#"{"a":1}"#, NOW, MAX).unwrap(),
            br#"{"type":"notification","timestamp":1700000000123,"a":1}"#
        );
        assert_eq!(
            normalize_for_history(br#" {"type":"t","timestamp":2} "#, NOW, MAX).unwrap(),
            br#" {"type":"t","timestamp":2} "#
        );
        for payload in [
            &br#"{"offset":1}"#[..],
            br#"{"epoch":"x"}"#,
            br#"{"offset":null}"#,
            br#"{"a":1,"epoch":{}}"#,
            br#"{"offs\u0065t":1}"#,
            br#"{"n":1e999,"epoch":1}"#,
        ] {
            assert_eq!(
                normalize_for_history(payload, NOW, MAX),
                Err(PayloadError::ReservedField),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // Nested ones are the publisher's business.
        assert!(normalize_for_history(br#"{"data":{"offset":1}}"#, NOW, MAX).is_ok());
        assert_eq!(
            normalize_for_history(b"[1]", NOW, MAX),
            Err(PayloadError::NotAnObject)
        );
    }

    #[test]
    fn error_kinds() {
        assert_eq!(PayloadError::Empty.kind(), "empty");
        assert_eq!(
            PayloadError::TooLarge { len: 2, max: 1 }.kind(),
            "too_large"
        );
        assert_eq!(PayloadError::NotJson.kind(), "not_json");
        assert_eq!(PayloadError::NotAnObject.kind(), "not_an_object");
        assert_eq!(PayloadError::ReservedField.kind(), "reserved_field");
    }

    /// A payload with both fields, padded to exactly `len` bytes.
    fn sized_payload(len: usize) -> Vec<u8> {
        let prefix = r#"{"type":"t","timestamp":1,"pad":""#;
        let pad = len - prefix.len() - 2;
        format!("{prefix}{}\"}}", "x".repeat(pad)).into_bytes()
    }

    #[test]
    fn frame_headers_for_length_forms() {
        let cases: [(usize, &[u8]); 3] = [
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, header) in cases {
            let payload = sized_payload(len);
            assert_eq!(payload.len(), len);
            let frame = normalize_to_frame(&payload, NOW, 1 << 20).unwrap();
            assert_eq!(&frame[..header.len()], header, "len {len}");
            assert_eq!(&frame[header.len()..], &payload[..], "len {len}");
            assert_eq!(decode_text(&frame), payload);
        }
    }

    #[test]
    fn scratch_reuse_across_calls() {
        // A big payload then a small one: stale scratch bytes must not leak into validation.
        let big = sized_payload(5000);
        assert!(normalize_to_frame(&big, NOW, MAX).is_ok());
        assert_eq!(norm("{}").unwrap().len(), 49);
        assert_eq!(norm("[").unwrap_err(), PayloadError::NotJson);
    }

    #[test]
    fn number_formatting() {
        for n in [0, 9, 10, 99, 100, 12345, u64::MAX / 10, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(u64_len(n), out.len());
        }
    }
}
