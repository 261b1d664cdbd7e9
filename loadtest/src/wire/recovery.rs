//! The client side of history recovery (issue 10's contract), as pure functions over bytes: the
//! fields a gateway with history adds to frames, and the reconnect query that asks for a replay.
//!
//! - Every recorded notification carries `"offset":<u64>` (per user, +1 per notification) and
//!   `"epoch":"<string>"` (names the user's history; a new one means it may have been lost).
//! - `connected` carries the user's current `offset` and `epoch`, and, after a reconnect with
//!   `since`, `"recovered":true|false`.
//! - A client reconnects with `?token=JWT&since=OFFSET&epoch=EPOCH`.

use std::sync::LazyLock;

use memchr::memmem::Finder;

static OFFSET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"offset\":"));
static EPOCH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"epoch\":"));
static RECOVERED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"recovered\":"));
static CONNECTED: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"type\":\"connected\""));

/// The recovery fields found in one text frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Marks<'a> {
    /// The frame is the `connected` greeting (`"type":"connected"`).
    pub connected: bool,
    /// `"offset"`, if present.
    pub offset: Option<u64>,
    /// `"epoch"` string contents (without quotes; the gateways never escape inside it).
    pub epoch: Option<&'a [u8]>,
    /// `"recovered"`, if present.
    pub recovered: Option<bool>,
}

/// Scans a text frame for the recovery fields (byte search, no JSON parse).
#[must_use]
pub fn scan(payload: &[u8]) -> Marks<'_> {
    let offset = OFFSET
        .find(payload)
        .and_then(|i| number_after(payload, i + 9));
    let epoch = EPOCH
        .find(payload)
        .and_then(|i| string_after(payload, i + 8));
    let recovered = RECOVERED.find(payload).and_then(|i| {
        let rest = skip_spaces(payload, i + 12);
        if payload[rest..].starts_with(b"true") {
            Some(true)
        } else if payload[rest..].starts_with(b"false") {
            Some(false)
        } else {
            None
        }
    });
    Marks {
        connected: CONNECTED.find(payload).is_some(),
        offset,
        epoch,
        recovered,
    }
}

fn skip_spaces(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i) == Some(&b' ') {
        i += 1;
    }
    i.min(buf.len())
}

fn number_after(buf: &[u8], i: usize) -> Option<u64> {
    let start = skip_spaces(buf, i);
    let mut v: u64 = 0;
    let mut j = start;
    while let Some(d @ b'0'..=b'9') = buf.get(j) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        j += 1;
    }
    (j > start).then_some(v)
}

fn string_after(buf: &[u8], i: usize) -> Option<&[u8]> {
    let start = skip_spaces(buf, i);
    if buf.get(start) != Some(&b'"') {
        return None;
    }
    let body = &buf[start + 1..];
    let end = memchr::memchr(b'"', body)?;
    Some(&body[..end])
}

/// Appends `&since=OFFSET&epoch=EPOCH` (the epoch percent-encoded) to a request target.
pub fn push_since(target: &mut String, offset: u64, epoch: &[u8]) {
    use std::fmt::Write;
    let _ = write!(target, "&since={offset}&epoch=");
    for &b in epoch {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            target.push(b as char);
        } else {
            let _ = write!(target, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_in_notifications_and_connected() {
        let n = br#"{"type":"notification","seq":4,"sent_us":9,"offset":17,"epoch":"a1:b2"}"#;
        let m = scan(n);
        assert_eq!(m.offset, Some(17));
        assert_eq!(m.epoch, Some(&b"a1:b2"[..]));
        assert!(!m.connected && m.recovered.is_none());
        let c = br#"{"type":"connected","user_id":"u1","offset":0,"epoch":"e","recovered":false}"#;
        let m = scan(c);
        assert!(m.connected);
        assert_eq!((m.offset, m.recovered), (Some(0), Some(false)));
        let plain = br#"{"type":"connected","user_id":"u1"}"#;
        let m = scan(plain);
        assert!(m.connected, "a gateway without history");
        assert_eq!((m.offset, m.epoch, m.recovered), (None, None, None));
        assert_eq!(
            scan(br#"{"recovered": true,"offset": 3}"#).recovered,
            Some(true)
        );
    }

    #[test]
    fn since_query_is_percent_encoded() {
        let mut t = String::from("/notifications?token=x");
        push_since(&mut t, 42, b"ab:c/d e");
        assert_eq!(t, "/notifications?token=x&since=42&epoch=ab%3Ac%2Fd%20e");
    }
}
