//! Payload normalisation (`proto::payload`) against serde_json: for any input the result is a
//! counted refusal exactly when serde_json does not read a JSON object, and otherwise valid JSON
//! with the original fields plus `type` and `timestamp`, byte-identical when both were present.

use proptest::{collection::vec, prelude::*, sample::select};
use serde_json::{Map, Value};

use crate::checks::payload::assert_payload_properties;

/// Keys, including the two the normaliser looks for, escaped spellings of them, and nested ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,6}",
        2 => select(vec!["type", "timestamp", "Type", "TIMESTAMP", "typ", "type ", ""]).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Any JSON value, nested a few levels, with numbers of every kind.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object's text: compact, pretty, or with extra whitespace, and sometimes with keys
/// written with `\u` escapes or repeated, or with a raw number JSON allows but f64 does not hold.
fn object_text() -> impl Strategy<Value = String> {
    (
        vec((key(), value()), 0..6),
        select(vec!["", " ", "\n", "\t", "\r\n  "]),
        0u8..4,
    )
        .prop_map(|(fields, ws, style)| {
            let map: Map<String, Value> = fields.iter().cloned().collect();
            match style {
                0 => serde_json::to_string(&map).unwrap(),
                1 => serde_json::to_string_pretty(&map).unwrap(),
                2 => {
                    // Hand-written: whitespace everywhere, duplicates kept, `type` spelled escaped.
                    let body: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| {
                            let k = if k == "type" {
                                r#""typ\u0065""#.to_owned()
                            } else {
                                serde_json::to_string(k).unwrap()
                            };
                            format!("{ws}{k}{ws}:{ws}{v}{ws}")
                        })
                        .collect();
                    format!("{ws}{{{}}}{ws}", body.join(","))
                }
                _ => {
                    let mut text = serde_json::to_string(&map).unwrap();
                    text.insert_str(1, r#""big":123456789012345678901234567890,"huge":1e999"#);
                    if !map.is_empty() {
                        text.insert(text.find("1e999").unwrap() + 5, ',');
                    }
                    text
                }
            }
        })
}

proptest! {
    /// JSON objects of every shape are normalised exactly.
    #[test]
    fn objects_are_normalised_exactly(text in object_text()) {
        assert_payload_properties(text.as_bytes(), 1 << 16);
    }

    /// Any JSON value, and any text at all: refused exactly when serde_json says it is not an
    /// object, with the label a metric counts.
    #[test]
    fn any_value_is_refused_or_normalised(value in value()) {
        assert_payload_properties(value.to_string().as_bytes(), 1 << 16);
    }

    /// Arbitrary bytes, and objects with one byte changed (mostly invalid JSON).
    #[test]
    fn damaged_input_is_refused_with_a_label(
        text in object_text(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        noise in vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = text.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        assert_payload_properties(&bytes, 1 << 16);
        assert_payload_properties(&noise, 1 << 16);
    }

    /// The size limit: one byte over is refused as `too_large`, whatever the content.
    #[test]
    fn size_limit_is_exact(text in object_text()) {
        let bytes = text.as_bytes();
        assert_payload_properties(bytes, bytes.len());
        if !bytes.is_empty() {
            assert_payload_properties(bytes, bytes.len() - 1);
        }
    }
}
