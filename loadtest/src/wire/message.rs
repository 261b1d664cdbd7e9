//! The notification payload the harness publishes, and the cheap scan that finds its sequence
//! number and send time in a received text frame (no JSON parse on the hot path).
//!
//! Payload: `{"type":"notification","timestamp":<ms>,"seq":<u64>,"sent_us":<unix micros>,"pad":"..."}`.
//! Frames without a `"seq"` field (the gateway's `connected` greeting, pongs) are not ours.

use std::{io::Write, sync::LazyLock};

use memchr::memmem::Finder;

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"sent_us\":"));
static PONG: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"pong\""));
static BCAST: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"bcast\":"));

/// The two fields the harness needs from a delivered notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Per-user sequence number, assigned by the publishing worker.
    pub seq: u64,
    /// Wall-clock send time, unix microseconds.
    pub sent_us: u64,
}

/// Appends one notification payload to `out`.
pub fn write_payload(out: &mut Vec<u8>, seq: u64, sent_us: u64, pad: &str) {
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"type":"notification","timestamp":{},"seq":{seq},"sent_us":{sent_us}"#,
        sent_us / 1000
    );
    if !pad.is_empty() {
        out.extend_from_slice(br#","pad":""#);
        out.extend_from_slice(pad.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// Finds `seq` and `sent_us` in a text frame; `None` if it is not one of ours.
#[must_use]
pub fn parse(payload: &[u8]) -> Option<Stamp> {
    let seq = number_after(payload, SEQ.find(payload)? + 6)?;
    let sent_us = number_after(payload, SENT.find(payload)? + 10)?;
    Some(Stamp { seq, sent_us })
}

/// A broadcast notification: one payload sent to many users through the publish API, so it carries
/// a broadcast id instead of a per-user sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bcast {
    /// Broadcast id, chosen by the coordinator.
    pub id: u64,
    /// Wall-clock send time of the request that carried it, unix microseconds.
    pub sent_us: u64,
}

/// Appends a broadcast payload (`{"type":"notification","bcast":<id>,"sent_us":<us>}`) to `out`.
pub fn write_bcast_payload(out: &mut Vec<u8>, id: u64, sent_us: u64) {
    let _ = write!(
        out,
        r#"{{"type":"notification","bcast":{id},"sent_us":{sent_us}}}"#
    );
}

/// Finds `bcast` and `sent_us` in a text frame; `None` if it is not a broadcast.
#[must_use]
pub fn parse_bcast(payload: &[u8]) -> Option<Bcast> {
    let id = number_after(payload, BCAST.find(payload)? + 8)?;
    let sent_us = number_after(payload, SENT.find(payload)? + 10)?;
    Some(Bcast { id, sent_us })
}

/// Whether a text frame is a pong (`{"type":"pong",...}`).
#[must_use]
pub fn is_pong(payload: &[u8]) -> bool {
    PONG.find(payload).is_some()
}

fn number_after(buf: &[u8], mut i: usize) -> Option<u64> {
    while buf.get(i) == Some(&b' ') {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while let Some(d @ b'0'..=b'9') = buf.get(i) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_pad() {
        for pad in ["", "xxxx"] {
            let mut v = Vec::new();
            write_payload(&mut v, 42, 1_700_000_000_123_456, pad);
            let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(json["seq"], 42);
            assert_eq!(json["timestamp"], 1_700_000_000_123u64);
            assert_eq!(
                parse(&v),
                Some(Stamp {
                    seq: 42,
                    sent_us: 1_700_000_000_123_456
                })
            );
        }
    }

    #[test]
    fn broadcast_round_trip() {
        let mut v = Vec::new();
        write_bcast_payload(&mut v, 3, 1_700_000_000_000_001);
        let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(json["bcast"], 3);
        assert_eq!(
            parse_bcast(&v),
            Some(Bcast {
                id: 3,
                sent_us: 1_700_000_000_000_001
            })
        );
        assert_eq!(parse(&v), None, "a broadcast has no sequence number");
        let mut n = Vec::new();
        write_payload(&mut n, 1, 2, "");
        assert_eq!(parse_bcast(&n), None);
    }

    #[test]
    fn ignores_foreign_messages() {
        assert_eq!(parse(br#"{"type":"connected","user_id":"u1"}"#), None);
        assert_eq!(parse(br#"{"seq":}"#), None);
        assert!(is_pong(br#"{"type":"pong"}"#));
        assert_eq!(
            parse(br#"{"seq": 7, "sent_us": 9}"#),
            Some(Stamp { seq: 7, sent_us: 9 })
        );
    }
}
