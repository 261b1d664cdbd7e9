//! The publish API's `Idempotency-Key` header (issue 10), checked without I/O.
//!
//! With history, a publish that carries a key already used within `HISTORY_TTL` records and
//! sends nothing and answers the first publish's result, with `Idempotent-Replayed: true`: a
//! publisher may retry after `504 outcome_unknown` (or a lost connection) without creating a
//! second notification. The key names the request, whatever its users; it is remembered with
//! what it recorded (single node: in each user's history, as long as the entry is kept; Redis:
//! `<HISTORY_KEY_PREFIX>idem:<key>` for `HISTORY_TTL`).

use std::sync::Arc;

use thiserror::Error;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a repeat.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 128;

/// Why an `Idempotency-Key` was refused (400).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not 1 to [`MAX_KEY_BYTES`] visible ASCII characters.
    #[error("Idempotency-Key must be 1 to 128 visible ASCII characters (no spaces)")]
    Malformed,
    /// History is off: there is nothing to remember the key with.
    #[error("Idempotency-Key needs the notification history (HISTORY_ENABLED=true)")]
    Unsupported,
}

impl KeyError {
    /// The `error` label of the answer.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyError::Malformed => "bad_idempotency_key",
            KeyError::Unsupported => "idempotency_unsupported",
        }
    }
}

/// The request's key, if it sent one.
///
/// # Errors
///
/// [`KeyError`]: malformed, or sent to a gateway without history.
pub fn key(value: Option<&[u8]>, history: bool) -> Result<Option<Arc<str>>, KeyError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if value.is_empty() || value.len() > MAX_KEY_BYTES || !value.iter().all(visible) {
        return Err(KeyError::Malformed);
    }
    if !history {
        return Err(KeyError::Unsupported);
    }
    let text = std::str::from_utf8(value).expect("visible ASCII is UTF-8");
    Ok(Some(Arc::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_and_need_history() {
        assert_eq!(key(None, true), Ok(None));
        assert_eq!(key(None, false), Ok(None));
        assert_eq!(
            key(Some(b"order-42:a/b"), true).unwrap().as_deref(),
            Some("order-42:a/b")
        );
        let long = vec![b'k'; MAX_KEY_BYTES];
        assert!(key(Some(&long), true).is_ok());
        for bad in [
            &b""[..],
            b"a b",
            b"\xc3\xa9",
            b"tab\t",
            &[b'k'; MAX_KEY_BYTES + 1],
        ] {
            assert_eq!(key(Some(bad), true), Err(KeyError::Malformed), "{bad:?}");
        }
        assert_eq!(key(Some(b"k"), false), Err(KeyError::Unsupported));
    }
}
