//! Recovery of missed notifications (issue 10), the pure part: what a reconnecting client asks
//! for (`since` and `epoch` in the upgrade query), the two fields a recorded notification carries
//! (`"offset"` and `"epoch"`, spliced into the JSON text right after its `{`, nothing else
//! re-encoded), the `connected` greeting that tells a client where its history stands, and the
//! one rule that decides whether a replay closes a client's gap.
//!
//! - An offset is per user and grows by exactly 1 for each recorded notification; 0 means "none
//!   yet". An epoch names one unbroken history of one user: a new epoch means the history may
//!   have been lost, so offsets from another epoch say nothing about this one.
//! - A client that saw offset `since` in epoch `epoch` is recovered when the history still holds
//!   every offset after `since` up to the top, in that same epoch: [`recoverable`].

use bytes::Bytes;

use super::{
    frame::{text_header_len, write_text_header},
    message::{escaped_len, push_escaped},
    payload::{push_u64, u64_len},
};

/// Longest `epoch` a client may send back. The gateway's own epochs are under 30 bytes; the cap
/// keeps a hostile value from travelling with the connection.
pub const MAX_EPOCH_BYTES: usize = 64;

/// What a reconnecting client asks for: everything after offset `since` of epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last offset the client received (0: none in that epoch).
    pub since: u64,
    /// The epoch that offset belongs to.
    pub epoch: Box<str>,
}

/// Why a `since`/`epoch` pair was refused (HTTP 400 before the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// `since` without `epoch`.
    #[error(
        "\"since\" needs \"epoch\": send both, the offset and the epoch of the last notification received"
    )]
    SinceWithoutEpoch,
    /// `epoch` without `since`.
    #[error(
        "\"epoch\" needs \"since\": send both, the offset and the epoch of the last notification received"
    )]
    EpochWithoutSince,
    /// `since` is not a decimal integer.
    #[error("\"since\" must be a decimal integer: the offset of the last notification received")]
    NotANumber,
    /// `since` is negative.
    #[error("\"since\" must not be negative")]
    Negative,
    /// `since` does not fit 64 bits.
    #[error("\"since\" is larger than any offset (at most 18446744073709551615)")]
    TooLarge,
    /// `epoch` is empty.
    #[error("\"epoch\" is empty")]
    EmptyEpoch,
    /// `epoch` is longer than [`MAX_EPOCH_BYTES`].
    #[error("\"epoch\" is longer than 64 bytes")]
    EpochTooLong,
    /// `since` or `epoch` appears twice.
    #[error("\"since\" and \"epoch\" may each appear once")]
    Repeated,
}

/// Reads `since` and `epoch` from an upgrade request's query string (percent-decoded). `None`
/// when neither is there.
///
/// # Errors
///
/// [`ResumeError`]: the pair is incomplete, repeated, or `since` is not an offset.
pub fn parse_resume(query: &str) -> Result<Option<Resume>, ResumeError> {
    // The common case (a first connection) pays for one scan.
    if !query.contains("since") && !query.contains("epoch") {
        return Ok(None);
    }
    let (mut since, mut epoch) = (None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "since" => &mut since,
            "epoch" => &mut epoch,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(ResumeError::Repeated);
        }
    }
    let (since, epoch) = match (since, epoch) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ResumeError::SinceWithoutEpoch),
        (None, Some(_)) => return Err(ResumeError::EpochWithoutSince),
        (Some(since), Some(epoch)) => (since, epoch),
    };
    let since = parse_offset(&since)?;
    if epoch.is_empty() {
        return Err(ResumeError::EmptyEpoch);
    }
    if epoch.len() > MAX_EPOCH_BYTES {
        return Err(ResumeError::EpochTooLong);
    }
    Ok(Some(Resume {
        since,
        epoch: epoch.into(),
    }))
}

/// A decimal offset: digits only (no sign, no spaces), at most `u64::MAX`.
fn parse_offset(text: &str) -> Result<u64, ResumeError> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = text.strip_prefix('-')
        && digits(rest)
    {
        return Err(if rest.bytes().all(|b| b == b'0') {
            ResumeError::NotANumber
        } else {
            ResumeError::Negative
        });
    }
    if !digits(text) {
        return Err(ResumeError::NotANumber);
    }
    text.parse().map_err(|_| ResumeError::TooLarge)
}

/// Where a live notification sits in its user's history: its offset and a hash of its epoch
/// (enough to tell two epochs apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The `"offset"` field.
    pub offset: u64,
    /// [`epoch_hash`] of the `"epoch"` field.
    pub epoch: u64,
}

/// The hash by which epochs are compared on the hot path.
#[must_use]
pub fn epoch_hash(epoch: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(epoch)
}

/// Whether a history holding `offsets` (ascending, the entries after `resume.since` that were
/// read), whose top is `top` in epoch `epoch`, gives `resume` every notification it missed: same
/// epoch, `since` not above the top, and every offset from `since + 1` to `top` present.
#[must_use]
pub fn recoverable(
    resume: &Resume,
    epoch: &str,
    top: u64,
    offsets: impl IntoIterator<Item = u64>,
) -> bool {
    if *resume.epoch != *epoch || resume.since > top {
        return false;
    }
    let mut next = resume.since + 1;
    for offset in offsets {
        if offset != next {
            return false;
        }
        next += 1;
    }
    next == top + 1
}

/// The text frame of a recorded notification: `text` (a JSON object, already normalised) with
/// `"offset":<offset>,"epoch":"<epoch>"` spliced in right after its opening `{`. `epoch` must need
/// no JSON escaping (the gateway's epochs are hex digits and dashes).
#[must_use]
pub fn recorded_frame(text: &[u8], offset: u64, epoch: &str) -> Bytes {
    debug_assert!(
        escaped_len(epoch) == epoch.len(),
        "an epoch needing escapes"
    );
    let brace = text
        .iter()
        .position(|&b| b == b'{')
        .expect("a normalised payload is an object");
    let (head, tail) = text.split_at(brace + 1);
    let empty = tail
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_none_or(|&b| b == b'}');
    const OFFSET: &[u8] = br#""offset":"#;
    const EPOCH: &[u8] = br#","epoch":""#;
    let added =
        OFFSET.len() + u64_len(offset) + EPOCH.len() + epoch.len() + 1 + usize::from(!empty);
    let len = text.len() + added;
    let mut out = Vec::with_capacity(text_header_len(len) + len);
    write_text_header(len, &mut out);
    out.extend_from_slice(head);
    out.extend_from_slice(OFFSET);
    push_u64(&mut out, offset);
    out.extend_from_slice(EPOCH);
    out.extend_from_slice(epoch.as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(tail);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

/// The `connected` greeting with history:
/// `{"type":"connected","userId":"<user>","timestamp":<ms>,"offset":<top>,"epoch":"<epoch>"}`,
/// plus `,"recovered":true|false` when the client asked for a replay.
#[must_use]
pub fn connected_frame(
    user_id: &str,
    now_ms: u64,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"connected","userId":""#;
    const TIME: &[u8] = br#"","timestamp":"#;
    const OFFSET: &[u8] = br#","offset":"#;
    const EPOCH: &[u8] = br#","epoch":""#;
    const RECOVERED: &[u8] = br#"","recovered":"#;
    let tail = match recovered {
        None => &b"\"}"[..],
        Some(true) => b"true}",
        Some(false) => b"false}",
    };
    let len = HEAD.len()
        + escaped_len(user_id)
        + TIME.len()
        + u64_len(now_ms)
        + OFFSET.len()
        + u64_len(offset)
        + EPOCH.len()
        + escaped_len(epoch)
        + if recovered.is_some() {
            RECOVERED.len() + tail.len()
        } else {
            tail.len()
        };
    let mut out = Vec::with_capacity(text_header_len(len) + len);
    write_text_header(len, &mut out);
    out.extend_from_slice(HEAD);
    push_escaped(&mut out, user_id);
    out.extend_from_slice(TIME);
    push_u64(&mut out, now_ms);
    out.extend_from_slice(OFFSET);
    push_u64(&mut out, offset);
    out.extend_from_slice(EPOCH);
    push_escaped(&mut out, epoch);
    if recovered.is_some() {
        out.extend_from_slice(RECOVERED);
    }
    out.extend_from_slice(tail);
    debug_assert_eq!(out.len(), out.capacity());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::proto::frame::test_util::decode_text;

    fn resume(since: u64, epoch: &str) -> Resume {
        Resume {
            since,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn resume_is_read_from_the_query() {
        assert_eq!(parse_resume("token=abc"), Ok(None));
        assert_eq!(parse_resume(""), Ok(None));
        assert_eq!(
            parse_resume("token=a&since=42&epoch=ab-cd"),
            Ok(Some(resume(42, "ab-cd")))
        );
        assert_eq!(
            parse_resume("epoch=a%20b%2Fc&since=0"),
            Ok(Some(resume(0, "a b/c")))
        );
        assert_eq!(
            parse_resume("since=18446744073709551615&epoch=e"),
            Ok(Some(resume(u64::MAX, "e")))
        );
        assert_eq!(parse_resume("since=007&epoch=e"), Ok(Some(resume(7, "e"))));
        // Other names that merely contain the words are not the fields.
        assert_eq!(parse_resume("sinced=1&epochs=2&token=since"), Ok(None));
    }

    #[test]
    fn bad_resume_values_are_refused_with_a_reason() {
        use ResumeError::*;
        for (query, err) in [
            ("since=5", SinceWithoutEpoch),
            ("token=x&epoch=e", EpochWithoutSince),
            ("since=abc&epoch=e", NotANumber),
            ("since=&epoch=e", NotANumber),
            ("since=1.5&epoch=e", NotANumber),
            ("since=+1&epoch=e", NotANumber),
            ("since=%201&epoch=e", NotANumber),
            ("since=-0&epoch=e", NotANumber),
            ("since=-1&epoch=e", Negative),
            ("since=18446744073709551616&epoch=e", TooLarge),
            ("since=99999999999999999999999&epoch=e", TooLarge),
            ("since=1&epoch=", EmptyEpoch),
            ("since=1&since=2&epoch=e", Repeated),
            ("since=1&epoch=a&epoch=b", Repeated),
        ] {
            assert_eq!(parse_resume(query), Err(err), "{query}");
        }
        let long = format!("since=1&epoch={}", "e".repeat(MAX_EPOCH_BYTES + 1));
        assert_eq!(parse_resume(&long), Err(EpochTooLong));
        let max = format!("since=1&epoch={}", "e".repeat(MAX_EPOCH_BYTES));
        assert!(parse_resume(&max).unwrap().is_some());
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_every_offset_after_since() {
        let r = resume(3, "e1");
        assert!(recoverable(&r, "e1", 5, [4, 5]));
        assert!(recoverable(&r, "e1", 3, []), "nothing missed");
        assert!(!recoverable(&r, "e2", 5, [4, 5]), "another epoch");
        assert!(!recoverable(&r, "e1", 5, [5]), "4 trimmed");
        assert!(!recoverable(&r, "e1", 5, [4]), "5 not read (byte cap)");
        assert!(!recoverable(&r, "e1", 2, []), "since above the top");
        assert!(!recoverable(&r, "e1", 6, [4, 6]), "a hole");
        assert!(recoverable(&resume(0, "e"), "e", 0, []));
        assert!(recoverable(&resume(0, "e"), "e", 2, [1, 2]));
    }

    fn text_of(frame: &[u8]) -> String {
        String::from_utf8(decode_text(frame)).unwrap()
    }

    #[test]
    fn recorded_frames_splice_the_two_fields_after_the_brace() {
        assert_eq!(
            text_of(&recorded_frame(
                br#"{"type":"x","n":[],"f":1.50}"#,
                7,
                "e-1"
            )),
            r#"{"offset":7,"epoch":"e-1","type":"x","n":[],"f":1.50}"#
        );
        assert_eq!(
            text_of(&recorded_frame(b" \n{ } ", 1, "e")),
            " \n{\"offset\":1,\"epoch\":\"e\" } "
        );
        assert_eq!(
            text_of(&recorded_frame(b"{}", u64::MAX, "e")),
            format!(r#"{{"offset":{},"epoch":"e"}}"#, u64::MAX)
        );
        let v: Value =
            serde_json::from_str(&text_of(&recorded_frame(b"{ \"a\" : 1 }", 2, "e"))).unwrap();
        assert_eq!(v, json!({"offset": 2, "epoch": "e", "a": 1}));
    }

    #[test]
    fn connected_frame_carries_the_history_position() {
        let v: Value =
            serde_json::from_str(&text_of(&connected_frame("u\"1", 5, 9, "e-1", None))).unwrap();
        assert_eq!(
            v,
            json!({"type":"connected","userId":"u\"1","timestamp":5,"offset":9,"epoch":"e-1"})
        );
        for recovered in [true, false] {
            let frame = connected_frame("u", 5, 0, "e\n", Some(recovered));
            let v: Value = serde_json::from_str(&text_of(&frame)).unwrap();
            assert_eq!(v["recovered"], recovered);
            assert_eq!(v["epoch"], "e\n");
            assert_eq!(v["offset"], 0);
        }
    }

    #[test]
    fn epochs_hash_apart() {
        assert_ne!(epoch_hash(b"a-1"), epoch_hash(b"a-2"));
        assert_eq!(epoch_hash(b"a-1"), epoch_hash(b"a-1"));
    }
}
