//! The two pieces of the Redis protocol (RESP) the publisher needs: encoding a pipelined
//! `PUBLISH channel payload`, and counting the replies. Pure functions over byte slices, no I/O.

use std::io::Write;

/// Appends `PUBLISH <channel> <payload>` as a RESP array to `out`.
pub fn write_publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*3\r\n$7\r\nPUBLISH\r\n${}\r\n", channel.len());
    out.extend_from_slice(channel);
    let _ = write!(out, "\r\n${}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Replies counted by [`scan_replies`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replies {
    /// Integer replies (`:N`), one per PUBLISH.
    pub ok: u64,
    /// Error replies (`-ERR ...`).
    pub errors: u64,
    /// Sum of the integers: how many subscribers Redis handed the messages to.
    pub receivers: u64,
}

/// Counts the complete single-line replies in `buf`; returns the counts and the bytes consumed
/// (a trailing partial line is left for the next read).
#[must_use]
pub fn scan_replies(buf: &[u8]) -> (Replies, usize) {
    let mut r = Replies::default();
    let mut used = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[used..]) {
        let line = &buf[used..used + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b':') => {
                r.ok += 1;
                r.receivers += std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            Some(b'-') => r.errors += 1,
            _ => {}
        }
        used += nl + 1;
    }
    (r, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_encoding() {
        let mut v = Vec::new();
        write_publish(&mut v, b"notifications:u1", b"{}");
        assert_eq!(
            v,
            b"*3\r\n$7\r\nPUBLISH\r\n$16\r\nnotifications:u1\r\n$2\r\n{}\r\n"
        );
    }

    #[test]
    fn counts_replies_across_partial_reads() {
        let (r, used) = scan_replies(b":1\r\n:0\r\n-ERR x\r\n:2");
        assert_eq!(
            r,
            Replies {
                ok: 2,
                errors: 1,
                receivers: 1
            }
        );
        assert_eq!(used, 16);
    }
}
