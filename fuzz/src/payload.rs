//! Payload normalisation against serde_json.

use std::{borrow::Cow, fmt};

use chat4all_gateway::internals::normalize_to_frame;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

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
