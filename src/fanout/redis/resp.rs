//! RESP2, as far as a Pub/Sub subscriber needs it: encode commands, and decode the replies and
//! messages Redis sends to a subscribed connection. Pure (no I/O) and incremental: the decoder is
//! handed whatever bytes have arrived and either returns one complete frame and how many bytes
//! it used, or says it needs more, so a read that stops in the middle of a frame (a slow or
//! stalled Redis) costs nothing and corrupts nothing: the caller keeps the bytes and calls again.
//!
//! Bounded: a frame is at most a flat array of [`MAX_ITEMS`] scalars (everything a subscribed
//! connection receives), and a bulk string longer than the caller's `max_bulk` is never
//! buffered: when it is the last item of a message (a payload), the decoder returns the items
//! before it and the number of bytes to skip; anywhere else it is a protocol error.

use smallvec::SmallVec;
use thiserror::Error;

/// Most items in one array frame (`pmessage` has four).
pub const MAX_ITEMS: usize = 8;
/// Longest header line (`*`, `$`, `:`, `+`, `-` lines), CRLF included. Error and status lines
/// are short; a longer line is a protocol error rather than a reason to buffer without bound.
pub const MAX_LINE: usize = 4096;

/// A byte stream that is not a RESP2 frame a subscriber can receive.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RespError {
    /// An unknown type byte, a malformed length, a missing CRLF, or a nested array.
    #[error("malformed RESP from Redis: {0}")]
    Malformed(&'static str),
    /// An array with more than [`MAX_ITEMS`] items, a header line over [`MAX_LINE`], or an
    /// oversized bulk string that is not a message payload.
    #[error("RESP frame from Redis over the subscriber's limits: {0}")]
    TooLarge(&'static str),
}

/// One scalar of a frame, borrowing the decoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `$n` bulk string.
    Bulk(&'a [u8]),
    /// `$-1` or `*-1`.
    Null,
    /// `+` status line.
    Status(&'a [u8]),
    /// `-` error line.
    Error(&'a [u8]),
    /// `:` integer.
    Int(i64),
}

/// A decoded frame: a scalar is a one-item frame with `array == false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Whether it came as an array.
    pub array: bool,
    /// Its items (for a scalar, exactly one).
    pub items: SmallVec<[Item<'a>; 4]>,
}

/// What [`decode`] found at the start of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, `used` bytes long.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes it occupied.
        used: usize,
    },
    /// An array whose last item is a bulk string longer than `max_bulk`: `items` holds the
    /// items before it, `used` the bytes up to the bulk's header, and the caller must discard
    /// the next `skip` bytes (the bulk and its CRLF) before decoding again.
    Oversized {
        /// The items before the oversized bulk.
        items: SmallVec<[Item<'a>; 4]>,
        /// Bytes consumed so far.
        used: usize,
        /// Bytes still to discard.
        skip: usize,
    },
    /// Not a whole frame yet: read more and call again with the same start.
    Incomplete,
}

/// Decodes one frame from the start of `buf`. Bulk strings longer than `max_bulk` are not
/// buffered (see [`Decoded::Oversized`]).
pub fn decode(buf: &[u8], max_bulk: usize) -> Result<Decoded<'_>, RespError> {
    let Some((head, mut pos)) = line(buf, 0)? else {
        return Ok(Decoded::Incomplete);
    };
    if head.first() != Some(&b'*') {
        return Ok(match scalar(buf, head, pos, max_bulk)? {
            Scalar::Item(item, used) => Decoded::Frame {
                frame: Frame {
                    array: false,
                    items: SmallVec::from_iter([item]),
                },
                used,
            },
            Scalar::Incomplete => Decoded::Incomplete,
            Scalar::Oversized(..) => return Err(RespError::TooLarge("a bulk reply")),
        });
    }
    let count = length(&head[1..])?;
    let Some(count) = count else {
        let items = SmallVec::from_iter([Item::Null]);
        let frame = Frame { array: true, items };
        return Ok(Decoded::Frame { frame, used: pos });
    };
    if count > MAX_ITEMS {
        return Err(RespError::TooLarge("an array with too many items"));
    }
    let mut items = SmallVec::new();
    for i in 0..count {
        let Some((head, after)) = line(buf, pos)? else {
            return Ok(Decoded::Incomplete);
        };
        if head.first() == Some(&b'*') {
            return Err(RespError::Malformed("nested array"));
        }
        match scalar(buf, head, after, max_bulk)? {
            Scalar::Item(item, next) => {
                items.push(item);
                pos = next;
            }
            Scalar::Incomplete => return Ok(Decoded::Incomplete),
            Scalar::Oversized(skip) if i + 1 == count => {
                return Ok(Decoded::Oversized {
                    items,
                    used: after,
                    skip,
                });
            }
            Scalar::Oversized(_) => {
                return Err(RespError::TooLarge(
                    "an oversized bulk before the last item",
                ));
            }
        }
    }
    let frame = Frame { array: true, items };
    Ok(Decoded::Frame { frame, used: pos })
}

enum Scalar<'a> {
    /// The item and the position after it.
    Item(Item<'a>, usize),
    Incomplete,
    /// A bulk longer than allowed: bytes to skip (content and CRLF) after its header.
    Oversized(usize),
}

/// Decodes the scalar whose header line is `head`, followed in `buf` by `after`.
fn scalar<'a>(
    buf: &'a [u8],
    head: &'a [u8],
    after: usize,
    max_bulk: usize,
) -> Result<Scalar<'a>, RespError> {
    let (kind, rest) = head
        .split_first()
        .ok_or(RespError::Malformed("empty line"))?;
    let item = match kind {
        b'+' => Item::Status(rest),
        b'-' => Item::Error(rest),
        b':' => Item::Int(integer(rest)?),
        b'$' => {
            let Some(len) = length(rest)? else {
                return Ok(Scalar::Item(Item::Null, after));
            };
            if len > max_bulk {
                return Ok(Scalar::Oversized(len + 2));
            }
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(Scalar::Incomplete);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string without CRLF"));
            }
            return Ok(Scalar::Item(Item::Bulk(&buf[after..end]), end + 2));
        }
        _ => return Err(RespError::Malformed("unknown type byte")),
    };
    Ok(Scalar::Item(item, after))
}

/// The line starting at `from` (without its CRLF) and the position after the CRLF; `None`
/// when the CRLF has not arrived yet.
fn line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let window = &buf[from..buf.len().min(from + MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && window[nl - 1] == b'\r' => {
            Ok(Some((&window[..nl - 1], from + nl + 1)))
        }
        Some(_) => Err(RespError::Malformed("line without CR")),
        None if window.len() == MAX_LINE => Err(RespError::TooLarge("a header line")),
        None => Ok(None),
    }
}

/// A length: `-1` is `None` (null), else a non-negative decimal.
fn length(digits: &[u8]) -> Result<Option<usize>, RespError> {
    if digits == b"-1" {
        return Ok(None);
    }
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Malformed("bad length"));
    }
    Ok(Some(
        digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    ))
}

fn integer(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Malformed("bad integer"))
}

/// Appends `args` as one RESP command (an array of bulk strings).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    push_header(out, b'*', args.len());
    for arg in args {
        let arg = arg.as_ref();
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends one command made of `name` followed by `prefix` + each of `suffixes` (e.g.
/// `SUBSCRIBE notifications:a notifications:b`), without building the channel names first.
pub fn encode_prefixed<S: AsRef<str>>(
    name: &[u8],
    prefix: &[u8],
    suffixes: &[S],
    out: &mut Vec<u8>,
) {
    push_header(out, b'*', 1 + suffixes.len());
    push_header(out, b'$', name.len());
    out.extend_from_slice(name);
    out.extend_from_slice(b"\r\n");
    for s in suffixes {
        let s = s.as_ref().as_bytes();
        push_header(out, b'$', prefix.len() + s.len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(s);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(buf: &[u8]) -> (Vec<Item<'_>>, usize) {
        match decode(buf, 1024).unwrap() {
            Decoded::Frame { frame, used } => (frame.items.to_vec(), used),
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn decodes_messages_and_replies() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nch:a\r\n$5\r\nhello\r\n";
        let (items, used) = frame(msg);
        assert_eq!(used, msg.len());
        assert_eq!(
            items,
            [
                Item::Bulk(b"message"),
                Item::Bulk(b"ch:a"),
                Item::Bulk(b"hello")
            ]
        );
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n";
        assert_eq!(frame(sub).0[2], Item::Int(1));
        assert_eq!(frame(b"+OK\r\n").0, [Item::Status(b"OK")]);
        assert_eq!(frame(b"-ERR no\r\n").0, [Item::Error(b"ERR no")]);
        assert_eq!(frame(b"$-1\r\n").0, [Item::Null]);
        assert_eq!(frame(b"*-1\r\n").0, [Item::Null]);
        assert_eq!(frame(b":-42\r\n").0, [Item::Int(-42)]);
        let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(frame(pong).0, [Item::Bulk(b"pong"), Item::Bulk(b"")]);
    }

    #[test]
    fn every_split_point_is_incomplete_then_the_same_frame() {
        let msg =
            b"*4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$3\r\np:1\r\n$12\r\nbinary\r\n\x00\xffok\r\n";
        let whole = frame(msg);
        for cut in 0..msg.len() {
            assert_eq!(
                decode(&msg[..cut], 1024).unwrap(),
                Decoded::Incomplete,
                "cut {cut}"
            );
        }
        // Two frames back to back: the first is decoded alone, the rest is left.
        let mut two = msg.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(frame(&two), whole);
    }

    #[test]
    fn oversized_payload_is_skipped_not_buffered() {
        let head = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$100\r\n";
        match decode(head, 10).unwrap() {
            Decoded::Oversized { items, used, skip } => {
                assert_eq!(items.to_vec(), [Item::Bulk(b"message"), Item::Bulk(b"ch")]);
                assert_eq!(used, head.len());
                assert_eq!(skip, 102);
            }
            other => panic!("{other:?}"),
        }
        // Anywhere but the last item it is an error: the frame cannot be resynchronised.
        let early = b"*3\r\n$7\r\nmessage\r\n$100\r\n";
        assert!(matches!(decode(early, 10), Err(RespError::TooLarge(_))));
        assert!(matches!(
            decode(b"$100\r\n", 10),
            Err(RespError::TooLarge(_))
        ));
    }

    #[test]
    fn refuses_what_a_subscriber_never_receives() {
        assert!(decode(b"*9\r\n", 10).is_err());
        assert!(decode(b"*1\r\n*1\r\n:1\r\n", 10).is_err());
        assert!(decode(b"?x\r\n", 10).is_err());
        assert!(decode(b"$3\r\nabcd\r\n", 10).is_err());
        assert!(decode(b"$x\r\n", 10).is_err());
        assert!(decode(b"+OK\n", 10).is_err());
        assert!(decode(&[b'+'; MAX_LINE + 1], 10).is_err());
        assert_eq!(
            decode(&[b'+'; MAX_LINE - 1], 10).unwrap(),
            Decoded::Incomplete
        );
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&["PING"], &mut out);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n");
        out.clear();
        encode_prefixed(b"SUBSCRIBE", b"n:", &["a", "bc"], &mut out);
        assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\nn:a\r\n$4\r\nn:bc\r\n");
    }
}
