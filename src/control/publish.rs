//! Body of the internal `POST /v1/publish` API: parsing and validation, no I/O.
//!
//! ```json
//! {"user_id": "u1", "payload": {...}}
//! {"user_ids": ["u1", "u2"], "payload": {...}}
//! ```
//!
//! Exactly one of `user_id` / `user_ids` must be given (a `null` counts as absent). User ids are
//! non-empty strings of at most 256 bytes without whitespace or control
//! characters; at most `PUBLISH_MAX_USERS` per request (counted before duplicates are dropped,
//! keeping the first occurrence's order). Unknown top-level fields are ignored.
//!
//! The payload is returned as its exact JSON text from the body (`serde_json`'s `RawValue`: the
//! parser checks its syntax and copies nothing else), so keys, numbers (`1.50`, `1E2`, integers
//! beyond 64 bits), empty arrays and whitespace reach clients as published: the gateway only
//! splices `type`/`timestamp` (and, with history, `offset`/`epoch`) in after the opening brace.
//!
//! This is the control plane, not the hot path, so `serde_json` and some allocation are fine.

use std::{collections::HashSet, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, Visitor},
};
use serde_json::{Value, value::RawValue};
use thiserror::Error;

#[cfg(test)]
use crate::proto::user::MAX_USER_ID_BYTES;
use crate::proto::user::UserId;

/// A validated publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Recipients, deduplicated, in the order first given. Never empty.
    pub user_ids: Vec<UserId>,
    /// The payload object's JSON text exactly as in the body.
    pub payload: Vec<u8>,
}

/// Why a publish body was refused (HTTP 400).
#[derive(Debug, Error)]
pub enum PublishError {
    /// The body is not a JSON object, or not valid JSON.
    #[error("body is not a valid JSON object: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// Neither `user_id` nor a non-empty `user_ids` was given.
    #[error("one of \"user_id\" or a non-empty \"user_ids\" is required")]
    MissingUser,
    /// Both `user_id` and `user_ids` were given.
    #[error("give either \"user_id\" or \"user_ids\", not both")]
    BothUserFields,
    /// A user id is not a valid id.
    #[error(
        "invalid user id{}: {reason}",
        .index.map(|i| format!(" at \"user_ids\"[{i}]")).unwrap_or_default()
    )]
    InvalidUserId {
        /// Position in `user_ids`, or `None` for `user_id` or a malformed `user_ids`.
        index: Option<usize>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More user ids than `PUBLISH_MAX_USERS`.
    #[error("too many user ids: {count} given, at most {max} allowed")]
    TooManyUsers {
        /// Number of ids given (before deduplication).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// No `payload` field (or `null`).
    #[error("\"payload\" is required")]
    MissingPayload,
    /// `payload` is not a JSON object.
    #[error("\"payload\" must be a JSON object")]
    PayloadNotObject,
}

impl PublishError {
    /// Short static label for metrics and the `"error"` field of the response.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingUser => "missing_user",
            Self::BothUserFields => "both_user_fields",
            Self::InvalidUserId { .. } => "invalid_user_id",
            Self::TooManyUsers { .. } => "too_many_users",
            Self::MissingPayload => "missing_payload",
            Self::PayloadNotObject => "payload_not_object",
        }
    }
}

/// Parses and validates a publish body addressing at most `max_users` user ids.
///
/// # Errors
///
/// [`PublishError`], checked in this order: JSON, user fields, user ids, payload.
pub fn parse_publish(body: &[u8], max_users: usize) -> Result<PublishRequest, PublishError> {
    let body: Body = serde_json::from_slice(body).map_err(PublishError::InvalidJson)?;
    let user_ids = match (body.user_id, body.user_ids) {
        (Some(_), Some(_)) => return Err(PublishError::BothUserFields),
        (None, None) => return Err(PublishError::MissingUser),
        (Some(id), None) => vec![check_user_id(id, None)?],
        (None, Some(ids)) => check_user_ids(ids, max_users)?,
    };
    let payload = body.payload.ok_or(PublishError::MissingPayload)?.get();
    if !payload.starts_with('{') {
        return Err(PublishError::PayloadNotObject);
    }
    let payload = payload.as_bytes().to_vec();
    Ok(PublishRequest { user_ids, payload })
}

/// Validates one user id taken from `user_id` (`index` `None`) or `user_ids[index]`.
fn check_user_id(value: Value, index: Option<usize>) -> Result<UserId, PublishError> {
    let invalid = |reason| PublishError::InvalidUserId { index, reason };
    let Value::String(id) = value else {
        return Err(invalid("must be a string"));
    };
    UserId::new(id).map_err(|e| invalid(e.reason()))
}

/// Validates `user_ids` and removes duplicates, keeping first occurrences in order.
fn check_user_ids(value: Value, max: usize) -> Result<Vec<UserId>, PublishError> {
    let Value::Array(items) = value else {
        return Err(PublishError::InvalidUserId {
            index: None,
            reason: "\"user_ids\" must be an array of strings",
        });
    };
    if items.is_empty() {
        return Err(PublishError::MissingUser);
    }
    if items.len() > max {
        return Err(PublishError::TooManyUsers {
            count: items.len(),
            max,
        });
    }
    let mut ids = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        ids.push(check_user_id(item, Some(index))?);
    }
    let mut seen = HashSet::with_capacity(ids.len());
    let mut unique = Vec::with_capacity(ids.len());
    for id in ids {
        if seen.insert(id.clone()) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// The publish body's known fields; unknown fields are skipped.
struct Body<'a> {
    /// `user_id`, if present and not null.
    user_id: Option<Value>,
    /// `user_ids`, if present and not null.
    user_ids: Option<Value>,
    /// `payload`'s JSON text, if present and not null.
    payload: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Body<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Field names of the body.
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            UserId,
            UserIds,
            Payload,
            #[serde(other)]
            Other,
        }

        /// Accepts only a JSON object (not an array, which derived structs would accept).
        struct BodyVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for BodyVisitor<'a> {
            type Value = Body<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a publish request object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'a>, A::Error> {
                let mut body = Body {
                    user_id: None,
                    user_ids: None,
                    payload: None,
                };
                let (mut seen_id, mut seen_ids, mut seen_payload) = (false, false, false);
                while let Some(field) = map.next_key::<Field>()? {
                    let (seen, name) = match field {
                        Field::UserId => (&mut seen_id, "user_id"),
                        Field::UserIds => (&mut seen_ids, "user_ids"),
                        Field::Payload => (&mut seen_payload, "payload"),
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(seen, true) {
                        return Err(de::Error::duplicate_field(name));
                    }
                    match field {
                        Field::UserId => body.user_id = map.next_value()?,
                        Field::UserIds => body.user_ids = map.next_value()?,
                        _ => body.payload = map.next_value()?,
                    }
                }
                Ok(body)
            }
        }

        deserializer.deserialize_map(BodyVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hard upper bound of `PUBLISH_MAX_USERS`.
    const MAX_USER_IDS: usize = crate::config::MAX_PUBLISH_USERS;

    fn parse(body: &str) -> Result<PublishRequest, PublishError> {
        parse_publish(body.as_bytes(), MAX_USER_IDS)
    }

    fn kind(body: &str) -> &'static str {
        parse(body).expect_err("expected an error").kind()
    }

    fn payload_text(body: &str) -> String {
        String::from_utf8(parse(body).unwrap().payload).unwrap()
    }

    #[test]
    fn single_user_shape() {
        let req = parse(r#"{"user_id":"u1","payload":{"type":"chat","text":"hi"}}"#).unwrap();
        assert_eq!(req.user_ids, ["u1"]);
        assert_eq!(req.payload, br#"{"type":"chat","text":"hi"}"#);
    }

    #[test]
    fn many_users_shape_with_dedup_in_order() {
        let req = parse(r#"{"user_ids":["b","a","b","c","a"],"payload":{}}"#).unwrap();
        assert_eq!(req.user_ids, ["b", "a", "c"]);
        assert_eq!(req.payload, b"{}");
    }

    #[test]
    fn payload_is_kept_byte_for_byte() {
        let body = r#" { "payload" : { "z" : 1 , "a" : [ true , null , { } , [ ] ] ,
            "s" : "q\"\u00e9\n" , "n" : -5 , "f" : 1.5 , "z" : 2 } , "user_id" : "u" } "#;
        assert_eq!(
            payload_text(body),
            r#"{ "z" : 1 , "a" : [ true , null , { } , [ ] ] ,
            "s" : "q\"\u00e9\n" , "n" : -5 , "f" : 1.5 , "z" : 2 }"#
        );
    }

    #[test]
    fn payload_numbers() {
        // Numbers as published: no f64 on the way (issue 10's contract).
        let payload = r#"{"big":18446744073709551615,"neg":-9223372036854775808,"huge":123456789012345678901234567890,"e":1E2,"f":1.50,"g":1e999}"#;
        let body = format!(r#"{{"user_id":"u","payload":{payload}}}"#);
        assert_eq!(payload_text(&body), payload);
        // Syntax is still checked.
        assert_eq!(
            kind(r#"{"user_id":"u","payload":{"f":1.}}"#),
            "invalid_json"
        );
    }

    #[test]
    fn unknown_fields_ignored_and_null_means_absent() {
        let req = parse(r#"{"x":{"deep":[1]},"user_id":null,"user_ids":["u"],"payload":{"a":1}}"#)
            .unwrap();
        assert_eq!(req.user_ids, ["u"]);
        assert_eq!(req.payload, br#"{"a":1}"#);
    }

    #[test]
    fn invalid_json() {
        for body in [
            "",
            "{",
            "not json",
            r#"["u1"]"#,
            r#""text""#,
            r#"{"user_id":"u","payload":{}} x"#,
            r#"{"user_id":"u","user_id":"v","payload":{}}"#,
            r#"{"user_id":"u","payload":{},"payload":{}}"#,
        ] {
            assert_eq!(kind(body), "invalid_json", "{body:?}");
        }
        assert_eq!(
            parse_publish(b"{\"user_id\":\"\xFF\",\"payload\":{}}", 1)
                .unwrap_err()
                .kind(),
            "invalid_json"
        );
    }

    #[test]
    fn missing_user() {
        assert_eq!(kind(r#"{"payload":{}}"#), "missing_user");
        assert_eq!(kind(r#"{"user_ids":[],"payload":{}}"#), "missing_user");
        assert_eq!(kind(r#"{"user_id":null,"payload":{}}"#), "missing_user");
    }

    #[test]
    fn both_user_fields() {
        assert_eq!(
            kind(r#"{"user_id":"a","user_ids":["b"],"payload":{}}"#),
            "both_user_fields"
        );
    }

    #[test]
    fn invalid_user_ids() {
        let long = "x".repeat(MAX_USER_ID_BYTES + 1);
        for id in [
            r#""""#,
            "1",
            "true",
            r#"["u"]"#,
            r#""a b""#,
            r#""a\tb""#,
            r#""a\u0000""#,
        ] {
            let body = format!(r#"{{"user_id":{id},"payload":{{}}}}"#);
            assert_eq!(kind(&body), "invalid_user_id", "{id}");
        }
        assert_eq!(
            kind(&format!(r#"{{"user_id":"{long}","payload":{{}}}}"#)),
            "invalid_user_id"
        );
        let ok = "é".repeat(MAX_USER_ID_BYTES / 2);
        assert!(parse(&format!(r#"{{"user_id":"{ok}","payload":{{}}}}"#)).is_ok());
        assert_eq!(kind(r#"{"user_ids":"u1","payload":{}}"#), "invalid_user_id");
        let err = parse(r#"{"user_ids":["ok","bad id"],"payload":{}}"#).unwrap_err();
        assert!(matches!(
            err,
            PublishError::InvalidUserId { index: Some(1), .. }
        ));
        assert_eq!(
            err.to_string(),
            "invalid user id at \"user_ids\"[1]: must not contain whitespace or control characters"
        );
        let err = parse(r#"{"user_id":"","payload":{}}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid user id: must not be empty");
    }

    #[test]
    fn too_many_users() {
        let ids = |n: usize| {
            (0..n)
                .map(|i| format!("\"u{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let body = format!(r#"{{"user_ids":[{}],"payload":{{}}}}"#, ids(MAX_USER_IDS));
        assert_eq!(parse(&body).unwrap().user_ids.len(), MAX_USER_IDS);
        let body = format!(
            r#"{{"user_ids":[{}],"payload":{{}}}}"#,
            ids(MAX_USER_IDS + 1)
        );
        assert_eq!(kind(&body), "too_many_users");
        let three = r#"{"user_ids":["a","b","a"],"payload":{}}"#;
        assert!(parse_publish(three.as_bytes(), 3).is_ok());
        let err = parse_publish(three.as_bytes(), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "too many user ids: 3 given, at most 2 allowed"
        );
    }

    #[test]
    fn missing_payload() {
        assert_eq!(kind(r#"{"user_id":"u"}"#), "missing_payload");
        assert_eq!(kind(r#"{"user_id":"u","payload":null}"#), "missing_payload");
    }

    #[test]
    fn payload_not_object() {
        for payload in ["[]", "[{}]", "1", r#""{}""#, "true"] {
            let body = format!(r#"{{"user_id":"u","payload":{payload}}}"#);
            assert_eq!(kind(&body), "payload_not_object", "{payload}");
        }
    }
}
